//! The cancel route through the local gateway, which calls the cancel function's handler (spec
//! operations-api, "Cancel"): a pending enrichment is cancelled and refunded once, an ended one
//! is a conflict, and a worker in the middle of the cascade stops before its next provider call
//! and never writes its outcome over `cancelled`. Every test that moves credits checks the
//! ledger ([`enrichment::store::Store::check_ledger`]).

use std::time::Duration;

use enrichment::config::Vars;
use enrichment::domain::{Enrichment, Field, Job, Person, timestamp};
use enrichment::error::FIELD_MESSAGE;
use enrichment::http::PERSON_ID_MESSAGE;
use enrichment::store::{Claim, Completion};
use enrichment::worker::{JobOutcome, Worker};
use local_stack::Stack;
use reqwest::Method;
use reqwest::header::{ALLOW, HeaderMap};
use serde_json::{Value, json};
use tokio::time::Instant;
use uuid::Uuid;

mod helpers;
use helpers::{add_person, answered, ledger, private_options, provider_requests};

const ORG: &str = "org_cancel";

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
                .token("user_cancel", org, Duration::from_secs(600))
                .unwrap(),
        }
    }

    /// `method` on `path` (with its query), with this org's token or none.
    async fn send(&self, method: Method, path: &str, token: bool) -> (u16, HeaderMap, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if token {
            request = request.bearer_auth(&self.token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (
            status,
            headers,
            response.json().await.unwrap_or(Value::Null),
        )
    }

    async fn cancel(&self, person: Uuid, field: &str) -> (u16, Value) {
        let path = format!("/api/v1/operations/enrichment/{person}/cancel?field={field}");
        let (status, _, body) = self.send(Method::POST, &path, true).await;
        (status, body)
    }

    async fn enrich(&self, person: Uuid, field: &str) -> Value {
        let path = format!("/api/v1/operations/enrichment/{person}?field={field}");
        let (status, _, body) = self.send(Method::POST, &path, true).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn status(&self, person: Uuid, field: &str) -> Value {
        let path = format!("/api/v1/operations/enrichment/{person}?field={field}");
        let (status, _, body) = self.send(Method::GET, &path, true).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// The org's credit transactions that refund `enrichment`.
    async fn refunds_of(&self, enrichment: &Value) -> Vec<Value> {
        let (status, _, body) = self
            .send(Method::GET, "/api/v1/operations/credits/history", true)
            .await;
        assert_eq!(status, 200, "{body}");
        body["transactions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["source"] == "refund" && t["referenceId"] == enrichment["id"])
            .cloned()
            .collect()
    }
}

/// A private stack; `max_age` is the enrichments' maximum age, `worker` runs the jobs.
async fn stack(max_age: Duration, worker: bool) -> Stack {
    let mut options = private_options();
    options.max_age = max_age;
    options.local_worker = worker;
    Stack::start(options).await.expect("local stack starts")
}

/// A person of `org` whom no simulated provider knows, with a new id.
async fn new_person(stack: &Stack, org: &str, first_name: &str) -> Person {
    let person = Person {
        id: Uuid::new_v4(),
        first_name: Some(first_name.into()),
        last_name: Some("Nobody".into()),
        company_domain: Some("cancel.example".into()),
        ..Person::default()
    };
    add_person(stack, org, &person).await;
    person
}

/// The job of an enrichment as the API answered it.
fn job_of(enrichment: &Value) -> Job {
    let enrichment: Enrichment = serde_json::from_value(enrichment.clone()).unwrap();
    Job::from(&enrichment)
}

fn assert_cancelled(body: &Value, created: &Value) {
    assert_eq!(body["status"], "cancelled", "{body}");
    assert_eq!(
        body.as_object().unwrap().len(),
        13,
        "the Enrichment object: {body}"
    );
    for same in [
        "id",
        "createdAt",
        "entityId",
        "entityType",
        "field",
        "createdBy",
        "orgId",
        "creditTransactionId",
    ] {
        assert_eq!(body[same], created[same], "{same}");
    }
    assert_eq!(
        (
            &body["error"],
            &body["dataFound"],
            &body["globalEnrichmentId"]
        ),
        (&Value::Null, &Value::Null, &Value::Null)
    );
}

#[tokio::test]
async fn a_pending_enrichment_is_cancelled_and_refunded_once_however_often_it_is_cancelled() {
    let stack = stack(Duration::from_secs(800), false).await;
    let api = Api::new(&stack, ORG);
    stack.store.grant_credits(ORG, 100).await.unwrap();
    let person = new_person(&stack, ORG, "Cara").await;

    let created = api.enrich(person.id, "emails").await;
    assert_eq!(created["status"], "pending");
    assert_eq!(ledger(&stack.store, ORG, 100).await, (95, vec![-5]));

    let (status, cancelled) = api.cancel(person.id, "emails").await;
    assert_eq!(status, 200, "{cancelled}");
    assert_cancelled(&cancelled, &created);
    assert!(cancelled["updatedAt"].as_str() >= created["updatedAt"].as_str());
    assert_eq!(
        api.status(person.id, "emails").await,
        cancelled,
        "GET agrees"
    );
    assert_eq!(ledger(&stack.store, ORG, 100).await, (100, vec![-5, 5]));
    let refunds = api.refunds_of(&created).await;
    assert_eq!(refunds.len(), 1, "{refunds:#?}");
    assert_eq!(
        (&refunds[0]["type"], &refunds[0]["amount"]),
        (&json!("credit_added"), &json!(5))
    );
    assert_eq!(refunds[0]["operationType"], "enrichment_email");

    // Again: the same enrichment as it is, nothing more refunded.
    let (status, again) = api.cancel(person.id, "emails").await;
    assert_eq!((status, &again), (200, &cancelled));
    assert_eq!(api.refunds_of(&created).await.len(), 1);
    assert_eq!(ledger(&stack.store, ORG, 100).await, (100, vec![-5, 5]));

    // Two cancels racing: both answer `cancelled`, the condition refunds once.
    let phones = api.enrich(person.id, "phones").await;
    assert_eq!(ledger(&stack.store, ORG, 100).await, (80, vec![-20, -5, 5]));
    let (a, b) = tokio::join!(
        api.cancel(person.id, "phones"),
        api.cancel(person.id, "phones")
    );
    for (status, body) in [&a, &b] {
        assert_eq!(*status, 200, "{body}");
        assert_cancelled(body, &phones);
    }
    assert_eq!(api.refunds_of(&phones).await.len(), 1);
    assert_eq!(
        ledger(&stack.store, ORG, 100).await,
        (100, vec![-20, -5, 5, 20])
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_post_after_a_cancel_creates_a_new_enrichment_charged_once_more() {
    let stack = stack(Duration::from_secs(800), false).await;
    let api = Api::new(&stack, ORG);
    stack.store.grant_credits(ORG, 100).await.unwrap();
    let person = new_person(&stack, ORG, "Dora").await;
    let first = api.enrich(person.id, "emails").await;
    let (status, _) = api.cancel(person.id, "emails").await;
    assert_eq!(status, 200);

    let second = api.enrich(person.id, "emails").await;
    assert_eq!(second["status"], "pending");
    assert_ne!(second["id"], first["id"]);
    assert_ne!(second["creditTransactionId"], first["creditTransactionId"]);
    // A replay of the new one is free.
    assert_eq!(api.enrich(person.id, "emails").await["id"], second["id"]);
    assert_eq!(api.status(person.id, "emails").await["id"], second["id"]);
    assert_eq!(ledger(&stack.store, ORG, 100).await, (95, vec![-5, -5, 5]));
    // The new one can be cancelled too: its own refund.
    let (status, cancelled) = api.cancel(person.id, "emails").await;
    assert_eq!(status, 200);
    assert_cancelled(&cancelled, &second);
    assert_eq!(api.refunds_of(&second).await.len(), 1);
    assert_eq!(
        ledger(&stack.store, ORG, 100).await,
        (100, vec![-5, -5, 5, 5])
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn an_ended_enrichment_is_a_conflict_and_bad_requests_are_refused() {
    // A maximum age of a second: a pending enrichment cancelled after it has timed out.
    let stack = stack(Duration::from_secs(1), false).await;
    let api = Api::new(&stack, ORG);
    stack.store.grant_credits(ORG, 100).await.unwrap();
    let now = || timestamp(chrono::Utc::now());

    // finished (written as the worker writes it), failed (refunded), timeout (refunded).
    let finished = new_person(&stack, ORG, "Finn").await;
    let job = job_of(&api.enrich(finished.id, "emails").await);
    let Claim::Claimed(record) = stack
        .store
        .claim(&job, "worker-a", &now(), "2999-01-01T00:00:00.000Z")
        .await
        .unwrap()
    else {
        panic!("the job is claimed")
    };
    let done = Completion::searched(None, None);
    assert!(
        stack
            .store
            .complete(&record, "worker-a", &done, &now())
            .await
            .unwrap()
    );
    let failed = new_person(&stack, ORG, "Fay").await;
    api.enrich(failed.id, "emails").await;
    let record = stack
        .store
        .get_enrichment(ORG, failed.id, Field::Emails)
        .await
        .unwrap()
        .unwrap();
    stack
        .store
        .fail_and_refund(&record.enrichment, 5, "providers down", &now())
        .await
        .unwrap();
    let timed_out = new_person(&stack, ORG, "Tim").await;
    let stale = api.enrich(timed_out.id, "emails").await;
    assert_eq!(
        ledger(&stack.store, ORG, 100).await,
        (90, vec![-5, -5, -5, 5])
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;

    for (person, status) in [
        (&timed_out, "timeout"),
        (&finished, "finished"),
        (&failed, "failed"),
        (&timed_out, "timeout"),
    ] {
        let (code, body) = api.cancel(person.id, "emails").await;
        assert_eq!(
            (code, body),
            (
                409,
                json!({"error": {"code": "CONFLICT",
                                 "message": format!("Enrichment is already {status}")}})
            )
        );
        assert_eq!(api.status(person.id, "emails").await["status"], status);
    }
    // The stale pending one was timed out by the first cancel, and refunded once.
    assert_eq!(api.refunds_of(&stale).await.len(), 1);
    assert_eq!(
        ledger(&stack.store, ORG, 100).await,
        (95, vec![-5, -5, -5, 5, 5])
    );

    // None: no enrichment of that field, no such person, another org's enrichment.
    let other_org = Api::new(&stack, "org_cancel_other");
    for (client, person, field) in [
        (&api, finished.id, "phones"),
        (&api, Uuid::new_v4(), "emails"),
        (&other_org, finished.id, "emails"),
    ] {
        let (code, body) = client.cancel(person, field).await;
        assert_eq!(
            (code, body),
            (
                404,
                json!({"error": {"code": "NOT_FOUND", "message": "Enrichment not found"}})
            ),
            "{person} {field}"
        );
    }

    // Bad input: 400 as on the single-person route; without a token 401 first.
    let id = finished.id;
    for (path, message) in [
        (
            "not-a-uuid/cancel?field=emails".to_string(),
            PERSON_ID_MESSAGE,
        ),
        (format!("{{{id}}}/cancel?field=emails"), PERSON_ID_MESSAGE),
        (format!("{id}/cancel"), FIELD_MESSAGE),
        (format!("{id}/cancel?field=fax"), FIELD_MESSAGE),
        (
            format!("{id}/cancel?field=emails&field=phones"),
            FIELD_MESSAGE,
        ),
    ] {
        let path = format!("/api/v1/operations/enrichment/{path}");
        let (code, _, body) = api.send(Method::POST, &path, true).await;
        assert_eq!(
            (code, body),
            (
                400,
                json!({"error": {"code": "VALIDATION_ERROR", "message": message}})
            ),
            "{path}"
        );
        let (code, _, body) = api.send(Method::POST, &path, false).await;
        assert_eq!(
            (code, &body["error"]["code"]),
            (401, &json!("UNAUTHORIZED"))
        );
    }
    // Another method: 405 with `Allow: POST`.
    let path = format!("/api/v1/operations/enrichment/{id}/cancel?field=emails");
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let (code, headers, body) = api.send(method.clone(), &path, true).await;
        assert_eq!(code, 405, "{method}");
        assert_eq!(body["error"]["code"], "METHOD_NOT_ALLOWED");
        assert_eq!(headers.get(ALLOW).unwrap(), "POST");
    }
    // Nothing above moved a credit.
    assert_eq!(
        ledger(&stack.store, ORG, 100).await,
        (95, vec![-5, -5, -5, 5, 5])
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_worker_holding_the_job_can_neither_go_on_nor_write_its_outcome_once_cancelled() {
    let stack = stack(Duration::from_secs(800), false).await;
    let api = Api::new(&stack, ORG);
    stack.store.grant_credits(ORG, 100).await.unwrap();
    let person = new_person(&stack, ORG, "Hal").await;
    let created = api.enrich(person.id, "emails").await;
    let job = job_of(&created);
    let now = || timestamp(chrono::Utc::now());
    let Claim::Claimed(record) = stack
        .store
        .claim(&job, "worker-a", &now(), "2999-01-01T00:00:00.000Z")
        .await
        .unwrap()
    else {
        panic!("the job is claimed")
    };

    let (status, cancelled) = api.cancel(person.id, "emails").await;
    assert_eq!(status, 200, "{cancelled}");
    // What the worker does before its next provider call (`Journal::before_call`): refused.
    let enrichment = &record.enrichment;
    let until = "2999-01-01T00:00:00.000Z";
    assert!(
        !stack
            .store
            .renew_claim(enrichment, "worker-a", until)
            .await
            .unwrap()
    );
    // Its outcome, found data or failed (which would refund): not written.
    for outcome in [
        Completion::searched(None, None),
        Completion::failed("providers down"),
    ] {
        assert!(
            !stack
                .store
                .complete(&record, "worker-a", &outcome, &now())
                .await
                .unwrap()
        );
    }
    // A delivery of the job after the cancel: dropped without a provider call.
    stack_stats(&stack, true).await;
    let worker = Worker::new(
        stack.store.clone(),
        local_stack::simulator_cascade(&stack.simulator_url, &Vars::env()).unwrap(),
        stack.config.clone(),
    );
    let outcome = worker
        .run(&job, Instant::now() + Duration::from_secs(60))
        .await
        .unwrap();
    assert!(matches!(outcome, JobOutcome::Dropped), "{outcome:?}");
    assert_eq!(
        provider_requests(&stack_stats(&stack, false).await),
        json!({})
    );

    assert_eq!(api.status(person.id, "emails").await, cancelled);
    assert_eq!(api.refunds_of(&created).await.len(), 1);
    assert_eq!(ledger(&stack.store, ORG, 100).await, (100, vec![-5, 5]));
    stack.shutdown().await;
}

/// The simulator's request counters (`GET /stats`, or `POST /stats/reset` with `reset`).
async fn stack_stats(stack: &Stack, reset: bool) -> Value {
    let http = reqwest::Client::new();
    let request = if reset {
        http.post(format!("{}/stats/reset", stack.simulator_url))
    } else {
        http.get(format!("{}/stats", stack.simulator_url))
    };
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn a_cancel_during_the_cascade_stops_it_before_the_next_provider() {
    // Hunter answers "no match" to everyone, after 4 s: the cascade would go on to PDL.
    let latency = Duration::from_secs(4);
    let mut options = private_options();
    options.local_worker = true;
    std::fs::create_dir_all(&options.state_dir).unwrap();
    let simulator = options.state_dir.join("simulator.json");
    let profile = json!({"providers": {"hunter": {
        "latency_ms": latency.as_millis() as u64, "miss_rate": 1.0}}});
    std::fs::write(&simulator, profile.to_string()).unwrap();
    options.simulator_config = Some(simulator);
    options.vars = Vars::from_pairs([
        ("EMAIL_PROVIDERS", "hunter,pdl"),
        ("PROVIDER_TIMEOUT_SECONDS", "10"),
    ])
    .or(Vars::env());
    let stack = Stack::start(options).await.expect("local stack starts");
    let api = Api::new(&stack, ORG);
    stack.store.grant_credits(ORG, 100).await.unwrap();
    // Two people nobody knows: one cancelled, one left to run as the control.
    let cancelled_person = new_person(&stack, ORG, "Cass").await;
    let control = new_person(&stack, ORG, "Kit").await;
    stack_stats(&stack, true).await;

    let created = api.enrich(cancelled_person.id, "emails").await;
    // Its worker is in its Hunter call (counted on arrival, answered after `latency`).
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack_stats(&stack, false).await["hunter"]["requests"] != 1 {
        assert!(Instant::now() < deadline, "the worker never asked Hunter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    api.enrich(control.id, "emails").await;
    let (status, cancelled) = api.cancel(cancelled_person.id, "emails").await;
    assert_eq!(status, 200, "{cancelled}");
    assert_cancelled(&cancelled, &created);
    let stats = stack_stats(&stack, false).await;
    assert_eq!(
        answered(&stats, "hunter"),
        0,
        "cancelled while Hunter had not answered yet: {stats}"
    );

    // The control goes on to PDL and finishes, after the cancelled one's Hunter call ended.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = api.status(control.id, "emails").await;
        if body["status"] != "pending" {
            assert_eq!(
                (&body["status"], &body["dataFound"]),
                (&json!("finished"), &json!(false)),
                "{body}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the control is still pending");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = stack_stats(&stack, false).await;
    assert_eq!(answered(&stats, "hunter"), 2, "{stats}");
    assert_eq!(
        provider_requests(&stats),
        json!({"hunter": 2, "pdl": 1}),
        "PDL asked for the control only"
    );
    // The cancelled enrichment stays cancelled, refunded once.
    assert_eq!(api.status(cancelled_person.id, "emails").await, cancelled);
    assert_eq!(api.refunds_of(&created).await.len(), 1);
    assert_eq!(ledger(&stack.store, ORG, 100).await, (95, vec![-5, -5, 5]));
    stack.shutdown().await;
}
