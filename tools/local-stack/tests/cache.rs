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
        let url = format!(
            "{}/api/v1/operations/enrichment/{person}?field=emails",
            self.base
        );
        let response = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{}", self.org);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
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
