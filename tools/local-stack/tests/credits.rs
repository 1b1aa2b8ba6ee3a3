//! The credits routes through the local gateway, which calls the credits function's handler
//! (spec operations-api, "Credits"): the balance, the history's shape, order, paging and date
//! range, and each refund appearing once in it.

use std::time::Duration;

use enrichment::config::Vars;
use enrichment::domain::Field;
use enrichment::store::{CreditSource, Grant, GrantOutcome};
use local_stack::Stack;
use serde_json::{Value, json};
use uuid::Uuid;

mod helpers;
use helpers::{known_person, ledger, private_options};

const ORG: &str = "org_credits";
const HISTORY: &str = "/api/v1/operations/credits/history";
const BALANCE: &str = "/api/v1/operations/credits/balance";

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(stack: &Stack, org: &str) -> Self {
        Api {
            http: reqwest::Client::new(),
            base: stack.info.gateway_url.clone(),
            token: stack
                .token("user_c", org, Duration::from_secs(600))
                .unwrap(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path).await
    }

    async fn enrich(&self, person: Uuid, field: &str) -> Value {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/operations/enrichment/{person}?field={field}"),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn history(&self, query: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("{HISTORY}{query}")).await;
        assert_eq!(status, 200, "{body}");
        let transactions = body["transactions"].as_array().unwrap().clone();
        assert_eq!(body["count"], json!(transactions.len()));
        transactions
    }
}

async fn stack(max_age: Duration, worker: bool, vars: &[(&str, &str)]) -> Stack {
    let mut options = private_options();
    options.max_age = max_age;
    options.local_worker = worker;
    if !vars.is_empty() {
        options.vars = Vars::from_pairs(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .or(Vars::env());
    }
    Stack::start(options).await.expect("local stack starts")
}

/// The refunds of `enrichment_id` in `history`.
fn refunds_of<'a>(history: &'a [Value], enrichment_id: &Value) -> Vec<&'a Value> {
    history
        .iter()
        .filter(|t| t["source"] == "refund" && t["referenceId"] == *enrichment_id)
        .collect()
}

#[tokio::test]
async fn the_history_shows_each_grant_charge_and_refund_once_newest_first() {
    // A maximum age of a second: a pending enrichment read after it is timed out and refunded.
    let stack = stack(Duration::from_secs(1), false, &[]).await;
    let api = Api::new(&stack, ORG);
    let (status, body) = api.get(BALANCE).await;
    assert_eq!(
        (status, body),
        (200, json!({"balance": 0, "organizationId": ORG})),
        "an org that never had credits"
    );
    let granted = stack
        .store
        .grant(
            ORG,
            &Grant {
                amount: 100,
                source: CreditSource::StripePurchase,
                description: Some("Starter pack".into()),
                metadata: Some(json!({"invoice": "in_123"})),
                idempotency_key: Some("in_123".into()),
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        granted,
        GrantOutcome::Granted { balance: 100, .. }
    ));
    // The same grant again (a retried webhook): nothing added.
    let again = stack
        .store
        .grant(
            ORG,
            &Grant {
                amount: 100,
                source: CreditSource::StripePurchase,
                description: None,
                metadata: None,
                idempotency_key: Some("in_123".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(again, GrantOutcome::AlreadyGranted { balance: 100 });

    let (timed_out, failed) = (known_person(), known_person());
    for person in [&timed_out, &failed] {
        helpers::add_person(&stack, ORG, person).await;
    }
    let first = api.enrich(timed_out.id, "emails").await;
    let second = api.enrich(failed.id, "phones").await;
    // The phones enrichment fails (its job given up), refunded in the same transaction.
    let record = stack
        .store
        .get_enrichment(ORG, failed.id, Field::Phones)
        .await
        .unwrap()
        .unwrap();
    stack
        .store
        .fail_and_refund(
            &record.enrichment,
            20,
            "providers down",
            &enrichment::domain::timestamp(chrono::Utc::now()),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, ended) = api
        .get(&format!(
            "/api/v1/operations/enrichment/{}?field=emails",
            timed_out.id
        ))
        .await;
    assert_eq!((status, ended["status"].clone()), (200, json!("timeout")));
    // Reading it again refunds nothing more.
    let _ = api
        .get(&format!(
            "/api/v1/operations/enrichment/{}?field=emails",
            timed_out.id
        ))
        .await;

    let (status, body) = api.get(BALANCE).await;
    assert_eq!((status, body["balance"].clone()), (200, json!(100)));
    assert_eq!(
        ledger(&stack.store, ORG, 100).await,
        (100, vec![-20, -5, 5, 20])
    );

    let history = api.history("").await;
    assert_eq!(history.len(), 5, "{history:#?}");
    let times: Vec<&str> = history
        .iter()
        .map(|t| t["createdAt"].as_str().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "newest first");
    for t in &history {
        assert_eq!(t.as_object().unwrap().len(), 11, "{t}");
        assert_eq!(t["organizationId"], ORG);
        assert!(t["amount"].as_i64().unwrap() > 0);
        assert_eq!(t["createdAt"], t["updatedAt"]);
    }
    let grant = history.last().unwrap();
    assert_eq!(grant["type"], "credit_added");
    assert_eq!(grant["source"], "stripe_purchase");
    assert_eq!(grant["description"], "Starter pack");
    assert_eq!(grant["metadata"], json!({"invoice": "in_123"}));
    assert_eq!(
        (grant["operationType"].clone(), grant["referenceId"].clone()),
        (Value::Null, Value::Null)
    );
    for (enrichment, cost, operation) in [
        (&first, 5, "enrichment_email"),
        (&second, 20, "enrichment_phone"),
    ] {
        let debit = history
            .iter()
            .find(|t| t["id"] == enrichment["creditTransactionId"])
            .expect("the debit's id is the enrichment's creditTransactionId");
        assert_eq!(debit["type"], "credit_consumed");
        assert_eq!(debit["amount"], cost);
        assert_eq!(debit["operationType"], operation);
        assert_eq!(debit["referenceId"], enrichment["id"]);
        assert_eq!(debit["source"], Value::Null);
        let refunds = refunds_of(&history, &enrichment["id"]);
        assert_eq!(refunds.len(), 1, "one refund of {}", enrichment["id"]);
        assert_eq!(refunds[0]["type"], "credit_added");
        assert_eq!(refunds[0]["amount"], cost);
        assert_eq!(refunds[0]["operationType"], operation);
    }

    // Paging: the same order, `offset` skipped, `limit` taken.
    let page = api.history("?limit=2&offset=1").await;
    assert_eq!(page, history[1..3].to_vec());
    assert!(api.history("?offset=5").await.is_empty());
    // Date ranges: inclusive days, an empty one before and after.
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(
        api.history(&format!("?startDate={today}&endDate={today}"))
            .await,
        history
    );
    assert!(api.history("?endDate=2020-01-01").await.is_empty());
    assert!(api.history("?startDate=2999-01-01").await.is_empty());
    let after_grant = chrono::DateTime::parse_from_rfc3339(grant["createdAt"].as_str().unwrap())
        .unwrap()
        + chrono::Duration::milliseconds(1);
    let after = api
        .history(&format!(
            "?startDate={}",
            after_grant.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ))
        .await;
    assert_eq!(
        after,
        history[..4].to_vec(),
        "a time range starts at its millisecond"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn bad_history_queries_are_400_naming_the_parameter() {
    let stack = stack(Duration::from_secs(800), false, &[]).await;
    let api = Api::new(&stack, ORG);
    for (query, field) in [
        ("?startDate=yesterday", "startDate"),
        ("?endDate=2026-02-30", "endDate"),
        ("?startDate=2026-12-02&endDate=2026-12-01", "startDate"),
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?offset=-1", "offset"),
        ("?limit=5&limit=6", "limit"),
    ] {
        let (status, body) = api.get(&format!("{HISTORY}{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["details"]["field"], field, "{query}");
    }
    let (status, body) = api.call(reqwest::Method::POST, BALANCE).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (405, json!("METHOD_NOT_ALLOWED"))
    );
    let anonymous = reqwest::get(format!("{}{BALANCE}", stack.info.gateway_url))
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    stack.shutdown().await;
}

#[tokio::test]
async fn with_refund_misses_a_search_without_data_is_refunded_once_cache_hit_too() {
    let stack = stack(Duration::from_secs(800), true, &[("REFUND_MISSES", "true")]).await;
    let (api, other) = (Api::new(&stack, ORG), Api::new(&stack, "org_credits_b"));
    stack.store.grant_credits(ORG, 50).await.unwrap();
    stack
        .store
        .grant_credits("org_credits_b", 50)
        .await
        .unwrap();
    // Nobody knows this person: every provider answers "no match".
    let unknown = enrichment::domain::Person {
        id: Uuid::new_v4(),
        first_name: Some("Nobody".into()),
        last_name: Some("Known".into()),
        company_domain: Some("nowhere.example".into()),
        ..Default::default()
    };
    let known = known_person();
    helpers::add_person(&stack, ORG, &unknown).await;
    helpers::add_person(&stack, ORG, &known).await;
    let twin = enrichment::domain::Person {
        id: Uuid::new_v4(),
        ..unknown.clone()
    };
    helpers::add_person(&stack, "org_credits_b", &twin).await;

    let missed = api.enrich(unknown.id, "emails").await;
    let found = api.enrich(known.id, "emails").await;
    for (client, person) in [(&api, unknown.id), (&api, known.id)] {
        wait_finished(client, person).await;
    }
    // The other org's twin is served from the global cache's miss: refunded too.
    let cached = other.enrich(twin.id, "emails").await;
    let ended = wait_finished(&other, twin.id).await;
    assert_eq!(ended["dataFound"], false);

    let history = api.history("").await;
    assert_eq!(refunds_of(&history, &missed["id"]).len(), 1);
    assert!(
        refunds_of(&history, &found["id"]).is_empty(),
        "data found: kept"
    );
    assert_eq!(ledger(&stack.store, ORG, 50).await, (45, vec![-5, -5, 5]));
    let history = other.history("").await;
    assert_eq!(refunds_of(&history, &cached["id"]).len(), 1);
    assert_eq!(
        ledger(&stack.store, "org_credits_b", 50).await,
        (50, vec![-5, 5])
    );
    stack.shutdown().await;
}

async fn wait_finished(api: &Api, person: Uuid) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = api
            .get(&format!(
                "/api/v1/operations/enrichment/{person}?field=emails"
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        if body["status"] != "pending" {
            assert_eq!(body["status"], "finished", "{body}");
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "still pending");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_page_of_100_transactions_costs_a_few_read_units() {
    let stack = stack(Duration::from_secs(800), false, &[]).await;
    for i in 0..120 {
        stack
            .store
            .grant(
                ORG,
                &Grant {
                    amount: 1,
                    source: CreditSource::Manual,
                    description: Some(format!("grant {i}")),
                    metadata: None,
                    idempotency_key: None,
                },
            )
            .await
            .unwrap();
    }
    let page = stack
        .store
        .credit_history(ORG, "0000", "9999", 0, 100)
        .await
        .unwrap();
    assert_eq!(page.transactions.len(), 100);
    assert_eq!(
        page.transactions[0].description.as_deref(),
        Some("grant 119")
    );
    // A strongly consistent Query costs 1 read unit per 4 KB read (AWS docs, "Read
    // consumption for queries"); an item is about 300 bytes here.
    let item_bytes = serde_json::to_string(&page.transactions[0]).unwrap().len();
    let estimated = (100.0 * item_bytes as f64 / 4096.0).ceil();
    println!(
        "a page of 100: {} read units reported, {estimated} estimated ({item_bytes} bytes per item)",
        page.read_units
    );
    assert!(estimated <= 10.0, "{estimated}");
    if page.read_units > 0.0 {
        assert!(page.read_units <= 10.0, "{}", page.read_units);
    }
    assert_eq!(ledger(&stack.store, ORG, 120).await, (120, vec![]));
    stack.shutdown().await;
}
