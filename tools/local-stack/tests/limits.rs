//! Providers' shared rate limits and circuits as the worker runs them from the jobs queue: the
//! simulator enforcing a real limit counts what went past it (`rate_limited`), and an outage
//! defers jobs rather than failing them. Whole flow: the gateway, SQS (moto), the worker's
//! pollers, DynamoDB (the limiter's item) and the provider simulator.

use std::time::Duration;

use enrichment::config::Vars;
use enrichment::domain::Person;
use local_stack::Stack;
use serde_json::{Value, json};
use uuid::Uuid;

mod helpers;
use helpers::{add_person, ledger, private_options, simulator_stats};

const ORG: &str = "org_limits";

/// A stack whose worker reads the jobs queue and the bulk queue (8 pollers each), with `vars`
/// over the environment and the simulator `profile`; `ORG` holds `credits`.
async fn stack(vars: &[(&'static str, &str)], profile: Value, credits: i64) -> Stack {
    let mut options = private_options();
    options.local_worker = true;
    options.worker_concurrency = 8;
    options.bulk_concurrency = 8;
    std::fs::create_dir_all(&options.state_dir).unwrap();
    let simulator = options.state_dir.join("simulator.json");
    std::fs::write(&simulator, profile.to_string()).unwrap();
    options.simulator_config = Some(simulator);
    let vars: Vec<(&'static str, String)> = vars.iter().map(|(k, v)| (*k, v.to_string())).collect();
    options.vars = Vars::from_pairs(vars).or(Vars::env());
    let stack = Stack::start(options).await.expect("local stack starts");
    stack.store.grant_credits(ORG, credits).await.unwrap();
    stack
}

/// `count` new people of `org`, unknown to the simulator (Hunter's no match), named after
/// `org` (no two orgs' people share a fingerprint, and so a global cache entry).
async fn unknown_people(stack: &Stack, org: &str, count: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 0..count {
        let person = Person {
            id: Uuid::new_v4(),
            first_name: Some(format!("Person{i}")),
            last_name: Some(format!("Limited {org}")),
            company_domain: Some("ratelimit.test".into()),
            ..Person::default()
        };
        add_person(stack, org, &person).await;
        ids.push(person.id);
    }
    ids
}

/// The enrichment URL (`field=emails`) of each of `people`.
fn email_urls(stack: &Stack, people: &[Uuid]) -> Vec<String> {
    people
        .iter()
        .map(|id| {
            format!(
                "{}/api/v1/operations/enrichment/{id}?field=emails",
                stack.info.gateway_url
            )
        })
        .collect()
}

/// The status of each enrichment of `urls` (`GET`).
async fn statuses(http: &reqwest::Client, token: &str, urls: &[String]) -> Vec<String> {
    let mut statuses = Vec::new();
    for url in urls {
        let body: Value = http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        statuses.push(body["status"].as_str().unwrap_or_default().to_string());
    }
    statuses
}

/// The statuses of `urls`, read every 200 ms until `done` holds of them (within `within`).
async fn poll_until(
    http: &reqwest::Client,
    token: &str,
    urls: &[String],
    within: Duration,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let statuses = statuses(http, token, urls).await;
        if done(&statuses) {
            return statuses;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not there within {within:?}: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `count` people of `ORG` (unknown to the simulator: Hunter's no match), their emails
/// enriched at once; waits (within `within`) until none is pending and returns the statuses.
async fn enrich_many(stack: &Stack, count: usize, within: Duration) -> Vec<String> {
    let http = reqwest::Client::new();
    let token = stack
        .token("user_limits", ORG, Duration::from_secs(600))
        .unwrap();
    let people = unknown_people(stack, ORG, count).await;
    let urls = email_urls(stack, &people);
    for url in &urls {
        let accepted = http.post(url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(accepted.status().as_u16(), 200);
    }
    poll_until(&http, &token, &urls, within, |statuses| {
        statuses.iter().all(|s| s != "pending")
    })
    .await
}

#[tokio::test]
async fn workers_share_a_providers_rate_limit_and_never_go_past_it() {
    // Hunter accepts 3 requests a calendar second; 15 enrichments start at once on 8 pollers.
    let profile = json!({"providers": {"hunter": {"rate_limit_per_second": 3}}});
    let cascade = [("EMAIL_PROVIDERS", "hunter"), ("PROVIDER_RETRIES", "0")];

    // Without the shared limit each worker calls at once: the simulator refuses some.
    let unlimited = stack(&cascade, profile.clone(), 100).await;
    enrich_many(&unlimited, 15, Duration::from_secs(60)).await;
    let stats = simulator_stats(&unlimited).await;
    assert!(
        stats["hunter"]["rate_limited"].as_u64().unwrap() > 0,
        "{stats}"
    );
    unlimited.shutdown().await;

    // With it (the provider's rate, shared through DynamoDB): every call within the limit,
    // every enrichment finished (none failed for the rate), one call each.
    let mut vars = cascade.to_vec();
    vars.push(("HUNTER_RATE_PER_SECOND", "3"));
    let limited = stack(&vars, profile, 100).await;
    let started = std::time::Instant::now();
    let statuses = enrich_many(&limited, 15, Duration::from_secs(60)).await;
    assert!(statuses.iter().all(|s| s == "finished"), "{statuses:?}");
    let stats = simulator_stats(&limited).await;
    assert_eq!(stats["hunter"]["rate_limited"], 0, "{stats}");
    assert_eq!(stats["hunter"]["requests"], 15, "{stats}");
    // 15 calls at 3 a calendar second span five seconds: more than 3 s from the first.
    assert!(started.elapsed() > Duration::from_secs(3));
    // Charged 15 × 5, nothing refunded (a miss is not refunded by default).
    assert_eq!(ledger(&limited.store, ORG, 100).await.0, 25);
    limited.shutdown().await;
}

#[tokio::test]
async fn an_outage_defers_the_jobs_of_a_limited_provider_until_it_answers_again() {
    // PDL answers 500 for its first 6 s; with a limit it has a circuit: the job waits.
    let profile = json!({"providers": {"pdl": {"outage_seconds": [0, 6]}}});
    let vars = [("EMAIL_PROVIDERS", "pdl"), ("PDL_RATE_PER_SECOND", "10")];
    let stack = stack(&vars, profile, 100).await;
    let statuses = enrich_many(&stack, 3, Duration::from_secs(60)).await;
    assert_eq!(statuses, ["finished", "finished", "finished"]);
    let stats = simulator_stats(&stack).await;
    let pdl = &stats["pdl"]["statuses"];
    assert!(pdl["500"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(
        pdl["404"], 3,
        "each person asked once after the outage: {stats}"
    );
    assert_eq!(ledger(&stack.store, ORG, 100).await.0, 85);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_single_and_a_batch_wait_behind_a_few_seconds_of_a_bulk_not_the_whole_bulk() {
    // Hunter at 1 call a second (the simulator's limit too): a bulk of 40 takes about 42 s.
    let profile = json!({"providers": {"hunter": {"rate_limit_per_second": 1}}});
    let vars = [
        ("EMAIL_PROVIDERS", "hunter"),
        ("PROVIDER_RETRIES", "0"),
        ("HUNTER_RATE_PER_SECOND", "1"),
    ];
    let stack = stack(&vars, profile, 300).await;
    const OTHER_ORG: &str = "org_limits_other";
    stack.store.grant_credits(OTHER_ORG, 30).await.unwrap();
    let http = reqwest::Client::new();
    let bulk_token = stack
        .token("user_bulk", ORG, Duration::from_secs(600))
        .unwrap();
    let other_token = stack
        .token("user_other", OTHER_ORG, Duration::from_secs(600))
        .unwrap();
    let bulk_people = unknown_people(&stack, ORG, 40).await;
    // The other org's single (the first) and batch of 3.
    let other_people = unknown_people(&stack, OTHER_ORG, 4).await;
    let (bulk_urls, other_urls) = (
        email_urls(&stack, &bulk_people),
        email_urls(&stack, &other_people),
    );
    let post = |path: &str, token: &str, body: Value| {
        http.post(format!("{}{path}", stack.info.gateway_url))
            .bearer_auth(token)
            .json(&body)
            .send()
    };

    let bulk = post(
        "/api/v1/operations/enrichment/bulk",
        &bulk_token,
        json!({"selection": {"mode": "manual", "includedIds": bulk_people}, "field": "emails"}),
    )
    .await
    .unwrap();
    assert_eq!(bulk.status().as_u16(), 200);
    // The bulk's jobs start once its hold ends: the others are sent when its first has ended,
    // every job of the bulk by then in the bulk queue and Hunter's queue.
    let started = |statuses: &[String]| statuses.iter().any(|s| s != "pending");
    poll_until(
        &http,
        &bulk_token,
        &bulk_urls,
        Duration::from_secs(60),
        started,
    )
    .await;
    let single = http
        .post(&other_urls[0])
        .bearer_auth(&other_token)
        .send()
        .await
        .unwrap();
    assert_eq!(single.status().as_u16(), 200);
    let batch = post(
        "/api/v1/operations/enrichment/batch",
        &other_token,
        json!({"personIds": other_people[1..], "field": "emails"}),
    )
    .await
    .unwrap();
    assert_eq!(batch.status().as_u16(), 200);
    let ended = |statuses: &[String]| statuses.iter().all(|s| s != "pending");
    poll_until(
        &http,
        &other_token,
        &other_urls,
        Duration::from_secs(60),
        ended,
    )
    .await;
    // Behind all 40 they would end with the bulk. Behind the horizon's few seconds of it
    // (`BULK_HORIZON`: 4 s, 4 calls), they end, the batch after its hold (13 s), with half the
    // bulk still to run.
    let bulk_left = statuses(&http, &bulk_token, &bulk_urls)
        .await
        .iter()
        .filter(|s| *s == "pending")
        .count();
    assert!(
        bulk_left >= 10,
        "{bulk_left} of the bulk's 40 still pending"
    );
    assert_eq!(
        statuses(&http, &other_token, &other_urls).await,
        ["finished"; 4]
    );

    // The bulk ends too, every call within the limit, each person asked once.
    let statuses = poll_until(
        &http,
        &bulk_token,
        &bulk_urls,
        Duration::from_secs(120),
        ended,
    )
    .await;
    assert!(statuses.iter().all(|s| s == "finished"), "{statuses:?}");
    let stats = simulator_stats(&stack).await;
    assert_eq!(stats["hunter"]["rate_limited"], 0, "{stats}");
    assert_eq!(stats["hunter"]["requests"], 44, "{stats}");
    // Each enrichment charged once (5 credits), none refunded (a miss is not).
    assert_eq!(ledger(&stack.store, ORG, 300).await.0, 300 - 40 * 5);
    assert_eq!(ledger(&stack.store, OTHER_ORG, 30).await, (10, vec![-5; 4]));
    stack.shutdown().await;
}
