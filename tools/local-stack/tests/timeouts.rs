//! A timeout nobody polls is noticed all the same: each job goes with a delayed check (one
//! `SendMessageBatch`), delivered shortly after the enrichment's maximum age, which times out
//! and refunds an enrichment still `pending` then. Whole flow: the gateway, SQS (moto), the
//! worker's pollers and a provider slower than the maximum age.

use std::time::Duration;

use enrichment::config::Vars;
use enrichment::domain::{Field, Status};
use local_stack::Stack;
use serde_json::{Value, json};

mod helpers;
use helpers::{ledger, private_options};

const ORG: &str = "org_timeouts";

#[tokio::test]
async fn a_pending_enrichment_nobody_polls_times_out_and_is_refunded_by_its_check() {
    // Hunter takes 15 s; the maximum age is 3 s: the check comes at about 8 s, while the
    // worker still waits on Hunter.
    let mut options = private_options();
    options.local_worker = true;
    options.max_age = Duration::from_secs(3);
    std::fs::create_dir_all(&options.state_dir).unwrap();
    let simulator = options.state_dir.join("simulator.json");
    let profile = json!({"providers": {"hunter": {"latency_ms": 15_000}}});
    std::fs::write(&simulator, profile.to_string()).unwrap();
    options.simulator_config = Some(simulator);
    options.vars = Vars::from_pairs([
        ("EMAIL_PROVIDERS", "hunter"),
        ("PROVIDER_TIMEOUT_SECONDS", "20"),
    ])
    .or(Vars::env());
    let stack = Stack::start(options).await.expect("local stack starts");
    stack.store.grant_credits(ORG, 10).await.unwrap();
    let http = reqwest::Client::new();
    let token = stack
        .token("user_timeouts", ORG, Duration::from_secs(600))
        .unwrap();
    let base = &stack.info.gateway_url;
    let created: Value = http
        .post(format!("{base}/api/v1/entities/persons"))
        .bearer_auth(&token)
        .json(&json!({"firstName": "Ada", "lastName": "Quill",
                      "companyDomain": "northwind.example"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let person = created["id"].as_str().unwrap().parse().unwrap();
    let accepted = http
        .post(format!(
            "{base}/api/v1/operations/enrichment/{person}?field=emails"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status().as_u16(), 200);

    // Nobody polls: the table is read directly (a GET would time it out itself).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let ended = loop {
        let record = stack
            .store
            .get_enrichment(ORG, person, Field::Emails)
            .await
            .unwrap()
            .unwrap();
        if record.enrichment.status != Status::Pending {
            break record.enrichment;
        }
        assert!(tokio::time::Instant::now() < deadline, "still pending");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(ended.status, Status::Timeout, "{ended:?}");
    assert_eq!(ledger(&stack.store, ORG, 10).await, (10, vec![-5, 5]));
    // The worker's late answer does not overwrite it, nor refund again.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let record = stack
        .store
        .get_enrichment(ORG, person, Field::Emails)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.enrichment.status, Status::Timeout);
    assert_eq!(ledger(&stack.store, ORG, 10).await, (10, vec![-5, 5]));
    stack.shutdown().await;
}
