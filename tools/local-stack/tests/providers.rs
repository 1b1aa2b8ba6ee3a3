//! Asynchronous providers as the worker runs them from the jobs queue: one submit, the job
//! recorded in the enrichment's cascade journal, the enrichment deferred on the queue between
//! polls (no worker waits), and the provider's answer written when its job is done; and one
//! provider taken off the simulator. Whole flow: the gateway, SQS (moto), the worker's pollers
//! and the provider simulator.

use std::time::Duration;

use enrichment::config::Vars;
use local_stack::Stack;
use serde_json::{Value, json};

mod helpers;
use helpers::{ledger, private_options, simulator_stats};

const ORG: &str = "org_async";

const BRUNO: &str = r#"{"firstName": "Bruno", "lastName": "Okafor", "companyDomain": "tidewater.test",
                       "linkedinUrl": "https://www.linkedin.com/in/bruno-okafor-demo/"}"#;

/// A stack whose worker reads the jobs queue, with `vars` over the environment and the
/// simulator `profile` (`SIMULATOR_CONFIG`); `ORG` holds 10 credits.
async fn stack(vars: &[(&'static str, String)], profile: Value) -> Stack {
    let mut options = private_options();
    options.local_worker = true;
    std::fs::create_dir_all(&options.state_dir).unwrap();
    let simulator = options.state_dir.join("simulator.json");
    std::fs::write(&simulator, profile.to_string()).unwrap();
    options.simulator_config = Some(simulator);
    options.vars = Vars::from_pairs(vars.iter().cloned()).or(Vars::env());
    let stack = Stack::start(options).await.expect("local stack starts");
    stack.store.grant_credits(ORG, 10).await.unwrap();
    stack
}

/// Creates `person` (JSON) in the org of `token`: its id.
async fn create_person(stack: &Stack, token: &str, person: &str) -> String {
    let created: Value = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/entities/persons",
            stack.info.gateway_url
        ))
        .bearer_auth(token)
        .json(&serde_json::from_str::<Value>(person).unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    created["id"].as_str().unwrap().to_string()
}

/// Polls the enrichment at `url` (with its `?field=`) until it is no longer `pending`, within
/// 60 s: its body.
async fn ended(url: &str, token: &str) -> Value {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let body: Value = http
            .get(url)
            .bearer_auth(token)
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
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates `person` in `ORG`, enriches its emails, and waits for the outcome: the enrichment
/// and the person as the API shows them.
async fn enrich(stack: &Stack, person: &str) -> (Value, Value) {
    let http = reqwest::Client::new();
    let token = stack
        .token("user_async", ORG, Duration::from_secs(600))
        .unwrap();
    let base = &stack.info.gateway_url;
    let id = create_person(stack, &token, person).await;
    let url = format!("{base}/api/v1/operations/enrichment/{id}?field=emails");
    let accepted = http.post(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(accepted.status().as_u16(), 200);
    let done = ended(&url, &token).await;
    let person: Value = http
        .get(format!("{base}/api/v1/entities/persons/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (done, person)
}

#[tokio::test]
async fn a_fullenrich_hit_is_submitted_once_deferred_between_polls_and_finished_with_data() {
    // FullEnrich's job takes 4 s of the simulator's time (30 to 90 s on the real service);
    // the worker polls every second, each poll a job back from the queue.
    let stack = stack(
        &[
            ("EMAIL_PROVIDERS", "fullenrich".into()),
            ("PROVIDER_POLL_SECONDS", "1".into()),
        ],
        json!({"providers": {"fullenrich": {"job_seconds": [4, 4]}}}),
    )
    .await;
    let started = std::time::Instant::now();
    let (done, person) = enrich(&stack, BRUNO).await;
    assert_eq!(done["status"], "finished", "{done}");
    assert_eq!(done["dataFound"], true, "{done}");
    assert!(started.elapsed() >= Duration::from_secs(4));
    assert_eq!(
        person["emailDetails"][0]["provider"], "fullenrich",
        "{person}"
    );
    let stats = simulator_stats(&stack).await;
    assert_eq!(stats["fullenrich"]["submits"], 1, "{stats}");
    assert_eq!(stats["fullenrich"]["max_submits_per_person"], 1, "{stats}");
    let polls = stats["fullenrich"]["polls"].as_u64().unwrap();
    assert!((3..=8).contains(&polls), "{stats}");
    // The worker was invoked once per poll and never waited on the provider: its handler time
    // is a fraction of the job's.
    let (invocations, busy) = stack.worker_usage.get();
    assert!(
        invocations > polls,
        "{invocations} invocations, {polls} polls"
    );
    assert!(busy < Duration::from_secs(3), "worker busy {busy:?}");
    assert_eq!(ledger(&stack.store, ORG, 10).await, (5, vec![-5]));
    stack.shutdown().await;
}

#[tokio::test]
async fn one_provider_goes_off_the_simulator_with_its_own_base_url_and_key() {
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    // A recorded FullEnrich: the submit, then the finished result.
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v2/contact/enrich/bulk"))
        .and(header("authorization", "Bearer recorded-key"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"enrichment_id": "rec-1"})))
        .expect(1)
        .mount(&fake)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v2/contact/enrich/bulk/rec-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "rec-1", "status": "FINISHED", "cost": {"credits": 1},
            "data": [{"contact_info": {"work_emails": [
                {"email": "bruno@recorded.test", "status": "DELIVERABLE"}]}}]
        })))
        .mount(&fake)
        .await;
    let stack = stack(
        &[
            ("EMAIL_PROVIDERS", "fullenrich".into()),
            ("PROVIDER_POLL_SECONDS", "1".into()),
            ("FULLENRICH_BASE_URL", fake.uri()),
            ("FULLENRICH_API_KEY", "recorded-key".into()),
        ],
        json!({}),
    )
    .await;
    let (done, person) = enrich(&stack, BRUNO).await;
    assert_eq!(done["dataFound"], true, "{done}");
    assert_eq!(person["emails"], json!(["bruno@recorded.test"]), "{person}");
    let stats = simulator_stats(&stack).await;
    assert_eq!(stats["fullenrich"]["requests"], 0, "{stats}");
    ledger(&stack.store, ORG, 10).await;
    stack.shutdown().await;

    // Half a setting is refused at start, naming what is missing.
    let mut options = private_options();
    options.vars = Vars::from_pairs([("PDL_API_KEY", "k")]);
    let refused = Stack::start(options).await.err().expect("refused");
    assert!(refused.contains("PDL_BASE_URL"), "{refused}");
}

#[tokio::test]
async fn a_job_left_running_by_a_cancelled_enrichment_is_continued_by_another_orgs() {
    // Org Z's enrichment submits FullEnrich's job (6 s) for a person; org W's enrichment of the
    // same person waits on Z's cache lease; Z is cancelled while the job runs.
    let stack = stack(
        &[
            ("EMAIL_PROVIDERS", "fullenrich".into()),
            ("PROVIDER_POLL_SECONDS", "1".into()),
        ],
        json!({"providers": {"fullenrich": {"job_seconds": [6, 6]}}}),
    )
    .await;
    let http = reqwest::Client::new();
    let base = stack.info.gateway_url.clone();
    let mut urls = Vec::new();
    let mut tokens = Vec::new();
    for org in ["org_async_z", "org_async_w"] {
        stack.store.grant_credits(org, 10).await.unwrap();
        let token = stack
            .token("user_async", org, Duration::from_secs(600))
            .unwrap();
        let id = create_person(&stack, &token, BRUNO).await;
        let url = format!("{base}/api/v1/operations/enrichment/{id}");
        let accepted = http
            .post(format!("{url}?field=emails"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(accepted.status().as_u16(), 200);
        urls.push(url);
        tokens.push(token);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cancelled: Value = http
        .post(format!("{}/cancel?field=emails", urls[0]))
        .bearer_auth(&tokens[0])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");

    let done = ended(&format!("{}?field=emails", urls[1]), &tokens[1]).await;
    assert_eq!(done["status"], "finished", "{done}");
    assert_eq!(done["dataFound"], true, "{done}");
    let stats = simulator_stats(&stack).await;
    assert_eq!(stats["fullenrich"]["submits"], 1, "{stats}");
    assert_eq!(stats["fullenrich"]["max_submits_per_person"], 1, "{stats}");
    assert_eq!(
        ledger(&stack.store, "org_async_z", 10).await,
        (10, vec![-5, 5])
    );
    assert_eq!(ledger(&stack.store, "org_async_w", 10).await, (5, vec![-5]));
    stack.shutdown().await;
}

#[tokio::test]
async fn under_step_functions_a_waiting_job_goes_back_to_the_state_machine_with_its_delay() {
    use enrichment::worker::{Worker, WorkerEvent};

    // No local worker: the test is the state machine, handing the job to the handler.
    let vars = Vars::from_pairs([
        ("EMAIL_PROVIDERS", "fullenrich"),
        ("PROVIDER_POLL_SECONDS", "7"),
    ])
    .or(Vars::env());
    let mut options = private_options();
    options.vars = vars.clone();
    let stack = Stack::start(options).await.expect("local stack starts");
    stack.store.grant_credits(ORG, 10).await.unwrap();
    let http = reqwest::Client::new();
    let token = stack
        .token("user_async", ORG, Duration::from_secs(600))
        .unwrap();
    let base = &stack.info.gateway_url;
    let person = create_person(&stack, &token, BRUNO).await;
    let pending: Value = http
        .post(format!(
            "{base}/api/v1/operations/enrichment/{person}?field=emails"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let worker = Worker::new(
        stack.store.clone(),
        local_stack::simulator_cascade(&stack.simulator_url, &vars).unwrap(),
        stack.config.clone(),
    );
    let mut input = json!({"enrichmentId": pending["id"], "orgId": ORG, "personId": person,
                           "field": "emails"});
    let mut outputs = Vec::new();
    for _ in 0..3 {
        let event: WorkerEvent = serde_json::from_value(input.clone()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let output = worker.handle(event, deadline).await.unwrap();
        outputs.push(output["outcome"].clone());
        if output["outcome"] != "deferred" {
            break;
        }
        // What the state machine's WaitToRetry hands back to RunCascade: the output itself.
        assert_eq!(output["delaySeconds"], 7, "{output}");
        assert_eq!(output["enrichmentId"], pending["id"], "{output}");
        input = output;
    }
    // Submitted, then polled while in progress, then done: one submit in all.
    assert_eq!(
        outputs,
        [json!("deferred"), json!("deferred"), json!("finished")]
    );
    let stats = simulator_stats(&stack).await;
    assert_eq!(stats["fullenrich"]["submits"], 1, "{stats}");
    assert_eq!(stats["fullenrich"]["polls"], 2, "{stats}");
    assert_eq!(ledger(&stack.store, ORG, 10).await, (5, vec![-5]));
    stack.shutdown().await;
}
