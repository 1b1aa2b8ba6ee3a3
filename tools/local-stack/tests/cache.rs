//! The global cache never hands one person's contact to another: an entry is served only to a
//! person with every identity key its provider matched on (README, "Global cache"). Whole flow:
//! the gateway, the worker and the provider simulator.

use std::time::Duration;

use enrichment::config::Vars;
use local_stack::Stack;
use serde_json::{Value, json};
use uuid::Uuid;

mod helpers;
use helpers::{ledger, private_options};

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
    org: String,
}

impl Api {
    fn new(stack: &Stack, org: &str) -> Self {
        Api {
            http: reqwest::Client::new(),
            base: stack.info.gateway_url.clone(),
            token: stack
                .token("user_cache", org, Duration::from_secs(600))
                .unwrap(),
            org: org.into(),
        }
    }

    async fn create(&self, person: Value) -> Uuid {
        let response = self
            .http
            .post(format!("{}/api/v1/entities/persons", self.base))
            .bearer_auth(&self.token)
            .json(&person)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().parse().unwrap()
    }

    /// Enriches the person's emails and waits for the outcome.
    async fn enrich(&self, person: Uuid) -> Value {
        self.enrich_with(person, "").await
    }

    /// As [`Api::enrich`], with `query` added to the POST's (`&cache=false`).
    async fn enrich_with(&self, person: Uuid, query: &str) -> Value {
        let url = format!(
            "{}/api/v1/operations/enrichment/{person}?field=emails",
            self.base
        );
        let response = self
            .http
            .post(format!("{url}{query}"))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{}", self.org);
        self.ended(person).await
    }

    /// Waits until the enrichment of `person` (emails) has ended: its GET body.
    async fn ended(&self, person: Uuid) -> Value {
        let url = format!(
            "{}/api/v1/operations/enrichment/{person}?field=emails",
            self.base
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let body: Value = self
                .http
                .get(&url)
                .bearer_auth(&self.token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if body["status"] != "pending" {
                return body;
            }
            assert!(tokio::time::Instant::now() < deadline, "still pending");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn emails(&self, person: Uuid) -> Vec<String> {
        let body: Value = self
            .http
            .get(format!("{}/api/v1/entities/persons/{person}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["emails"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_string())
            .collect()
    }

    /// Status and body of a `POST` of `path` (under the gateway) with a JSON body.
    async fn post_json(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }
}

async fn stack(email_providers: &str) -> Stack {
    let mut options = private_options();
    options.local_worker = true;
    options.vars = Vars::from_pairs([("EMAIL_PROVIDERS", email_providers)]).or(Vars::env());
    Stack::start(options).await.expect("local stack starts")
}

/// Requests the simulator received per provider since the last call (it resets them).
async fn provider_requests(stack: &Stack) -> Value {
    let stats: Value = reqwest::Client::new()
        .post(format!("{}/stats/reset", stack.simulator_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let requests = |provider: &str| stats[provider]["requests"].as_u64().unwrap_or(0);
    json!({"hunter": requests("hunter"), "pdl": requests("pdl")})
}

async fn orgs(stack: &Stack) -> (Api, Api) {
    for org in ["org_cache_a", "org_cache_b"] {
        stack.store.grant_credits(org, 100).await.unwrap();
    }
    (
        Api::new(stack, "org_cache_a"),
        Api::new(stack, "org_cache_b"),
    )
}

const ADA: &str = "ada.quill@northwind.example";
const BRUNO: &str = "bruno.okafor@tidewater.test";
const BRUNO_LINKEDIN: &str = "https://www.linkedin.com/in/bruno-okafor-demo/";
const ADA_LINKEDIN: &str = "https://www.linkedin.com/in/ada-quill-nw/";

#[tokio::test]
async fn a_mismatched_import_in_one_org_never_plants_data_for_another() {
    let stack = stack("hunter,pdl").await;
    let (a, b) = orgs(&stack).await;
    // Org B imports Ada Quill's name and domain with Bruno's LinkedIn URL. Hunter searches by
    // name and domain: it finds Ada's email, which is cached under Bruno's LinkedIn key.
    let mixed = b
        .create(json!({"firstName": "Ada", "lastName": "Quill",
                       "companyDomain": "northwind.example", "linkedinUrl": BRUNO_LINKEDIN}))
        .await;
    let planted = b.enrich(mixed).await;
    assert_eq!(planted["dataFound"], true);
    assert_eq!(b.emails(mixed).await, vec![ADA]);
    provider_requests(&stack).await;

    // Org A enriches the real Bruno: the entry was found by Ada's name and domain, which Bruno
    // does not have: not served. The providers are asked, and find Bruno's own email.
    let bruno = a
        .create(json!({"firstName": "Bruno", "lastName": "Okafor",
                       "companyDomain": "tidewater.test", "linkedinUrl": BRUNO_LINKEDIN}))
        .await;
    let found = a.enrich(bruno).await;
    assert_eq!(found["status"], "finished");
    assert_ne!(found["globalEnrichmentId"], planted["globalEnrichmentId"]);
    let emails = a.emails(bruno).await;
    assert!(!emails.contains(&ADA.to_string()), "{emails:?}");
    assert!(emails.contains(&BRUNO.to_string()), "{emails:?}");
    assert_eq!(
        provider_requests(&stack).await,
        json!({"hunter": 1, "pdl": 1}),
        "asked, not served from the cache"
    );

    // The real Ada (no LinkedIn) is not served the planted entry either: it lives under
    // Bruno's key. Her own search finds her email.
    let ada = a
        .create(json!({"firstName": "Ada", "lastName": "Quill",
                       "companyDomain": "northwind.example"}))
        .await;
    a.enrich(ada).await;
    assert_eq!(a.emails(ada).await, vec![ADA]);
    assert_eq!(provider_requests(&stack).await["hunter"], 1);
    ledger(&stack.store, "org_cache_a", 100).await;
    ledger(&stack.store, "org_cache_b", 100).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn the_same_name_and_domain_with_another_linkedin_is_no_hit() {
    let stack = stack("hunter,pdl").await;
    let (a, b) = orgs(&stack).await;
    let first = a
        .create(json!({"firstName": "Ada", "lastName": "Quill",
                       "companyDomain": "northwind.example", "linkedinUrl": ADA_LINKEDIN}))
        .await;
    a.enrich(first).await;
    provider_requests(&stack).await;
    let other = b
        .create(
            json!({"firstName": "Ada", "lastName": "Quill", "companyDomain": "northwind.example",
                       "linkedinUrl": "https://www.linkedin.com/in/another-ada-quill/"}),
        )
        .await;
    b.enrich(other).await;
    assert_eq!(
        provider_requests(&stack).await["hunter"],
        1,
        "the providers were asked"
    );
    // The same person again, in another org: a hit (same keys), no provider call.
    let twin = b
        .create(json!({"firstName": "ada", "lastName": "QUILL", "companyDomain": "www.northwind.example",
                       "linkedinUrl": "HTTPS://LinkedIn.com/in/Ada-Quill-NW?trk=x"}))
        .await;
    let served = b.enrich(twin).await;
    assert_eq!(served["dataFound"], true);
    assert_eq!(
        provider_requests(&stack).await,
        json!({"hunter": 0, "pdl": 0})
    );
    assert_eq!(
        ledger(&stack.store, "org_cache_a", 100).await,
        (95, vec![-5])
    );
    assert_eq!(
        ledger(&stack.store, "org_cache_b", 100).await,
        (90, vec![-5, -5])
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_profile_match_serves_the_same_linkedin_whatever_the_names_spelling_unless_it_conflicts()
{
    // PDL first: a profile lookup, matched on the LinkedIn profile.
    let stack = stack("pdl,hunter").await;
    let (a, b) = orgs(&stack).await;
    let bruno = a
        .create(json!({"firstName": "Bruno", "lastName": "Okafor",
                       "companyDomain": "tidewater.test", "linkedinUrl": BRUNO_LINKEDIN}))
        .await;
    let first = a.enrich(bruno).await;
    assert_eq!(first["dataFound"], true);
    provider_requests(&stack).await;

    let respelled = b
        .create(json!({"firstName": "Bruno", "lastName": "Okafor-Adeyemi",
                       "companyDomain": "tidewater.test", "linkedinUrl": BRUNO_LINKEDIN}))
        .await;
    let served = b.enrich(respelled).await;
    assert_eq!(served["globalEnrichmentId"], first["globalEnrichmentId"]);
    assert_eq!(b.emails(respelled).await[0], BRUNO);
    assert_eq!(
        provider_requests(&stack).await,
        json!({"hunter": 0, "pdl": 0})
    );

    // A person whose LinkedIn points at Bruno's entry and whose name and domain point at
    // another identity's entry (Ada's, found by name and domain): two identities, no hit.
    let ada = a
        .create(json!({"firstName": "Ada", "lastName": "Quill",
                       "companyDomain": "northwind.example"}))
        .await;
    a.enrich(ada).await;
    provider_requests(&stack).await;
    let conflicting = b
        .create(json!({"firstName": "Ada", "lastName": "Quill",
                       "companyDomain": "northwind.example", "linkedinUrl": BRUNO_LINKEDIN}))
        .await;
    let asked = b.enrich(conflicting).await;
    assert_ne!(asked["globalEnrichmentId"], first["globalEnrichmentId"]);
    assert_eq!(
        provider_requests(&stack).await["pdl"],
        1,
        "the providers were asked"
    );
    ledger(&stack.store, "org_cache_a", 100).await;
    ledger(&stack.store, "org_cache_b", 100).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn cache_false_asks_the_providers_at_full_cost_on_the_single_post_and_the_batch() {
    let stack = stack("hunter,pdl").await;
    let (a, b) = orgs(&stack).await;
    let ada = json!({"firstName": "Ada", "lastName": "Quill", "companyDomain": "northwind.example",
                     "linkedinUrl": ADA_LINKEDIN});
    let first = a.create(ada.clone()).await;
    let found = a.enrich(first).await;
    assert_eq!(found["dataFound"], true);
    provider_requests(&stack).await;

    // The same person in org B, opting out of the cache: the providers are asked, org B pays,
    // and the fresh answer replaces the entry.
    let twin = b.create(ada.clone()).await;
    let fresh = b.enrich_with(twin, "&cache=false").await;
    assert_eq!(fresh["dataFound"], true);
    assert_ne!(fresh["globalEnrichmentId"], found["globalEnrichmentId"]);
    assert_eq!(provider_requests(&stack).await["hunter"], 1);
    assert_eq!(b.emails(twin).await, vec![ADA]);

    // `cache=true` (the default) is served from the entry the fresh run wrote.
    let third = b.create(ada.clone()).await;
    let served = b.enrich_with(third, "&cache=true").await;
    assert_eq!(served["globalEnrichmentId"], fresh["globalEnrichmentId"]);
    assert_eq!(
        provider_requests(&stack).await,
        json!({"hunter": 0, "pdl": 0})
    );

    // A batch and a bulk with `?cache=false`: asked again.
    let batch_person = b.create(ada.clone()).await;
    let (status, answer) = b
        .post_json(
            "/api/v1/operations/enrichment/batch?cache=false",
            json!({"personIds": [batch_person], "field": "emails"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let done = b.ended(batch_person).await;
    assert_ne!(done["globalEnrichmentId"], fresh["globalEnrichmentId"]);
    let bulk_person = b.create(ada.clone()).await;
    let (status, answer) = b
        .post_json(
            "/api/v1/operations/enrichment/bulk?cache=false",
            json!({"selection": {"mode": "manual", "includedIds": [bulk_person]},
                   "field": "emails"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    b.ended(bulk_person).await;
    assert_eq!(provider_requests(&stack).await["hunter"], 2);

    // A flag that is neither true nor false is a 400 naming it, and charges nothing.
    let (status, body) = b
        .post_json(
            "/api/v1/operations/enrichment/batch?cache=no",
            json!({"personIds": [batch_person], "field": "emails"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("cache"),
        "{body}"
    );
    assert_eq!(
        ledger(&stack.store, "org_cache_a", 100).await,
        (95, vec![-5])
    );
    assert_eq!(
        ledger(&stack.store, "org_cache_b", 100).await,
        (80, vec![-5, -5, -5, -5])
    );
    stack.shutdown().await;
}

/// The suppression key of Ada Quill's name at her domain, as `enrichctl suppress --name
/// "Ada Quill" --domain northwind.example` writes it.
fn ada_by_name() -> String {
    enrichment::identity::name_domain_key("Ada Quill", "northwind.example").unwrap()
}

#[tokio::test]
async fn a_suppressed_person_is_refused_before_any_provider_call_and_refunded() {
    let stack = stack("hunter,pdl").await;
    let (a, _) = orgs(&stack).await;
    let report = stack
        .store
        .suppress(&ada_by_name(), false, "2026-12-02T10:00:00.000Z")
        .await
        .unwrap();
    assert_eq!(report.holders, 0);
    let ada = a
        .create(json!({"firstName": "ada", "lastName": "QUILL",
                       "companyDomain": "https://www.northwind.example/"}))
        .await;
    let outcome = a.enrich(ada).await;
    assert_eq!(outcome["status"], "finished");
    assert_eq!(outcome["dataFound"], false);
    assert!(a.emails(ada).await.is_empty());
    assert_eq!(
        provider_requests(&stack).await,
        json!({"hunter": 0, "pdl": 0})
    );
    // Charged, then refunded in the outcome's transaction.
    assert_eq!(
        ledger(&stack.store, "org_cache_a", 100).await,
        (100, vec![-5, 5])
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_suppression_after_the_cache_entry_exists_deletes_it_and_refuses_the_next_org() {
    let stack = stack("hunter,pdl").await;
    let (a, b) = orgs(&stack).await;
    let ada =
        json!({"firstName": "Ada", "lastName": "Quill", "companyDomain": "northwind.example"});
    let first = a.create(ada.clone()).await;
    assert_eq!(a.enrich(first).await["dataFound"], true);
    let cache_key = ada_by_name();
    let now = chrono::Utc::now().timestamp();
    let cached = stack
        .store
        .cache_entry_at(&cache_key, enrichment::domain::Field::Emails, now);
    assert!(cached.await.unwrap().is_some());
    provider_requests(&stack).await;

    let report = stack
        .store
        .suppress(&cache_key, false, "2026-12-02T10:00:00.000Z")
        .await
        .unwrap();
    assert_eq!(report.holders, 1, "{report:?}");
    assert!(report.cache_items_cleared >= 1, "{report:?}");
    let cached = stack
        .store
        .cache_entry_at(&cache_key, enrichment::domain::Field::Emails, now);
    assert!(cached.await.unwrap().is_none(), "the entry is gone");
    // A suppression alone leaves org A's record as it was (an erasure removes it).
    assert_eq!(a.emails(first).await, vec![ADA]);

    let again = b.create(ada).await;
    let outcome = b.enrich(again).await;
    assert_eq!(outcome["dataFound"], false);
    assert!(outcome["globalEnrichmentId"].is_null(), "{outcome}");
    assert!(b.emails(again).await.is_empty());
    assert_eq!(
        provider_requests(&stack).await,
        json!({"hunter": 0, "pdl": 0})
    );
    assert_eq!(
        ledger(&stack.store, "org_cache_a", 100).await,
        (95, vec![-5])
    );
    assert_eq!(
        ledger(&stack.store, "org_cache_b", 100).await,
        (100, vec![-5, 5])
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_suppressed_email_found_by_a_provider_is_neither_stored_nor_charged() {
    let stack = stack("hunter,pdl").await;
    let (a, _) = orgs(&stack).await;
    let key = enrichment::identity::email_key(" Ada.Quill@Northwind.Example ").unwrap();
    stack
        .store
        .suppress(&key, false, "2026-12-02T10:00:00.000Z")
        .await
        .unwrap();
    // Nothing in the person's identity is suppressed: the providers are asked, and what they
    // find is the suppressed address.
    let ada = a
        .create(
            json!({"firstName": "Ada", "lastName": "Quill", "companyDomain": "northwind.example"}),
        )
        .await;
    let outcome = a.enrich(ada).await;
    assert_eq!(outcome["dataFound"], false);
    assert!(a.emails(ada).await.is_empty());
    assert_eq!(provider_requests(&stack).await["hunter"], 1);
    let now = chrono::Utc::now().timestamp();
    let cached = stack
        .store
        .cache_entry_at(&ada_by_name(), enrichment::domain::Field::Emails, now)
        .await
        .unwrap();
    assert!(cached.is_none(), "not cached: {cached:?}");
    assert_eq!(
        ledger(&stack.store, "org_cache_a", 100).await,
        (100, vec![-5, 5])
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn an_erasure_removes_the_values_from_every_orgs_records_and_the_cache() {
    let stack = stack("hunter,pdl").await;
    let (a, b) = orgs(&stack).await;
    let ada = json!({"firstName": "Ada", "lastName": "Quill", "companyDomain": "northwind.example",
                     "linkedinUrl": ADA_LINKEDIN});
    // Org A's search finds Ada's email; org B is served it from the cache.
    let in_a = a.create(ada.clone()).await;
    a.enrich(in_a).await;
    let in_b = b.create(ada.clone()).await;
    b.enrich(in_b).await;
    assert_eq!(a.emails(in_a).await, vec![ADA]);
    assert_eq!(b.emails(in_b).await, vec![ADA]);
    // An unrelated person keeps its data.
    let bruno = a
        .create(json!({"firstName": "Bruno", "lastName": "Okafor",
                       "companyDomain": "tidewater.test", "linkedinUrl": BRUNO_LINKEDIN}))
        .await;
    a.enrich(bruno).await;
    let bruno_emails = a.emails(bruno).await;
    assert!(bruno_emails.contains(&BRUNO.to_string()));

    let key = enrichment::identity::email_key(ADA).unwrap();
    let report = stack
        .store
        .suppress(&key, true, "2026-12-02T10:00:00.000Z")
        .await
        .unwrap();
    assert_eq!(
        (report.holders, report.people_updated, report.values_removed),
        (2, 2, 2),
        "{report:?}"
    );
    // No scan: the suppression, one query of the value index, the cache items, and per holder
    // a read and a conditional write, then the holder items.
    let calls: Vec<(&str, u32)> = report.calls.iter().map(|(op, n)| (*op, *n)).collect();
    assert_eq!(
        calls,
        [
            ("BatchWriteItem", 2),
            ("GetItem", 2),
            ("PutItem", 1),
            ("Query", 1),
            ("UpdateItem", 2)
        ]
    );
    assert!(a.emails(in_a).await.is_empty());
    assert!(b.emails(in_b).await.is_empty());
    assert_eq!(a.emails(bruno).await, bruno_emails);
    let now = chrono::Utc::now().timestamp();
    let linkedin = enrichment::identity::linkedin_key(ADA_LINKEDIN).unwrap();
    let cached = stack
        .store
        .cache_entry_at(&linkedin, enrichment::domain::Field::Emails, now)
        .await
        .unwrap();
    assert!(cached.is_none(), "{cached:?}");
    // Run again, it finds nothing left to do.
    let again = stack
        .store
        .suppress(&key, true, "2026-12-02T10:01:00.000Z")
        .await
        .unwrap();
    assert_eq!((again.holders, again.values_removed), (0, 0), "{again:?}");
    // A new enrichment of Ada (whose record still holds no email): asked, the address found
    // is suppressed, refunded.
    provider_requests(&stack).await;
    let later = b.create(ada).await;
    assert_eq!(b.enrich(later).await["dataFound"], false);
    assert!(b.emails(later).await.is_empty());
    ledger(&stack.store, "org_cache_a", 100).await;
    assert_eq!(
        ledger(&stack.store, "org_cache_b", 100).await,
        (95, vec![-5, -5, 5])
    );
    // No copy is left under the person's other keys: her only email gone, the value index
    // under her LinkedIn and name holds nothing of it.
    assert!(
        report.related_keys.contains(&linkedin),
        "{:?}",
        report.related_keys
    );
    for other in [linkedin.clone(), ada_by_name()] {
        let left = stack
            .store
            .suppress(&other, false, "2026-12-02T10:02:00.000Z")
            .await
            .unwrap();
        assert_eq!(left.holders, 0, "{left:?}");
    }
    stack.shutdown().await;
}
