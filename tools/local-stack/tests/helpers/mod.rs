//! Helpers shared by the whole-flow tests: API Gateway events and answers for the real function
//! binaries, and the ledger check every test that moves credits makes.
#![allow(dead_code)]

use std::path::PathBuf;

use enrichment::domain::Person;
use enrichment::store::Store;
use local_stack::runtime_api::{FunctionProcess, Invocation};
use local_stack::{Options, Stack};
use serde_json::{Value, json};
use uuid::Uuid;

/// An API Gateway HTTP API (payload format 2.0) event for `POST` of the enrichment route.
pub fn post_event(person_id: &str, raw_query: &str, authorization: Option<&str>) -> Value {
    api_event("POST", person_id, raw_query, authorization)
}

/// An API Gateway HTTP API (payload format 2.0) event for `method` on the enrichment route,
/// `field=emails` in its query parameters (as API Gateway parses a well-formed `raw_query`).
pub fn api_event(
    method: &str,
    person_id: &str,
    raw_query: &str,
    authorization: Option<&str>,
) -> Value {
    let path = format!("/api/v1/operations/enrichment/{person_id}");
    let mut headers = json!({
        "content-length": "0",
        "host": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
        "x-forwarded-proto": "https",
    });
    if let Some(token) = authorization {
        headers["authorization"] = json!(format!("Bearer {token}"));
    }
    json!({
        "version": "2.0",
        "routeKey": format!("{method} /api/v1/operations/enrichment/{{personId}}"),
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": headers,
        "queryStringParameters": {"field": "emails"},
        "pathParameters": {"personId": person_id},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "a1b2c3d4e5",
            "domainName": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "a1b2c3d4e5",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.42",
                "userAgent": "test"
            },
            "requestId": "dJ3kQhR2IAMEVxg=",
            "routeKey": format!("{method} /api/v1/operations/enrichment/{{personId}}"),
            "stage": "$default",
            "time": "29/Nov/2026:15:48:12 +0000",
            "timeEpoch": 1795967292417_u64
        },
        "isBase64Encoded": false
    })
}

/// The status and JSON body of an API Gateway response the function posted.
pub fn http_answer(invocation: &Invocation, function: &FunctionProcess) -> (u64, Value) {
    let response = invocation.response_json().unwrap_or_else(|| {
        panic!(
            "expected a response, got {:?}; function output:\n{}",
            invocation.outcome,
            function.logs()
        )
    });
    let status = response["statusCode"].as_u64().unwrap_or_default();
    let body = response["body"]
        .as_str()
        .and_then(|body| serde_json::from_str(body).ok())
        .unwrap_or(Value::Null);
    (status, body)
}

/// The signed amounts of the debits and refunds of `org` (a debit is negative), sorted, and its
/// balance; asserts the ledger's invariant ([`Store::check_ledger`]: balance = added −
/// consumed, each enrichment charged and refunded at most once) and that the grants add up to
/// `granted`.
pub async fn ledger(store: &Store, org: &str, granted: i64) -> (i64, Vec<i64>) {
    let check = store
        .check_ledger(org)
        .await
        .unwrap_or_else(|broken| panic!("the ledger of {org}: {broken}"));
    assert_eq!(check.granted, granted, "the grants of {org}");
    let mut amounts = check.enrichment_amounts;
    amounts.sort();
    (check.balance, amounts)
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Options of a private stack for one test: state in a fresh temporary folder, DynamoDB in
/// memory, the gateway on any free port, the worker off.
pub fn private_options() -> Options {
    let mut options = Options::for_repo(&repo_root());
    options.state_dir = std::env::temp_dir().join(format!("enrichment-test-{}", Uuid::new_v4()));
    options.persist = false;
    options.port = 0;
    options.local_worker = false;
    options
}

/// A person the simulator knows (Hunter finds her email by name and domain), with a new id.
pub fn known_person() -> Person {
    Person {
        id: Uuid::new_v4(),
        first_name: Some("Ada".into()),
        last_name: Some("Lovelace".into()),
        company_name: Some("Analytical Engines".into()),
        company_domain: Some("analytical-engines.test".into()),
        ..Person::default()
    }
}

/// Adds `person` to `org` on the stack's table.
pub async fn add_person(stack: &Stack, org: &str, person: &Person) {
    stack
        .store
        .create_people(org, std::slice::from_ref(person))
        .await
        .unwrap();
}

/// The provider simulator's request counters (`GET /stats`).
pub async fn simulator_stats(stack: &Stack) -> Value {
    reqwest::get(format!("{}/stats", stack.simulator_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The providers asked at least once in `stats` ([`simulator_stats`]), with their request
/// counts.
pub fn provider_requests(stats: &Value) -> Value {
    let asked: serde_json::Map<String, Value> = stats
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, s)| s["requests"].as_u64().unwrap_or(0) > 0)
        .map(|(name, s)| (name.clone(), s["requests"].clone()))
        .collect();
    Value::Object(asked)
}

/// Answers `provider` gave so far in `stats` ([`simulator_stats`]), whatever their status.
pub fn answered(stats: &Value, provider: &str) -> u64 {
    stats[provider]["statuses"]
        .as_object()
        .map_or(0, |statuses| {
            statuses.values().filter_map(Value::as_u64).sum()
        })
}
