//! Completion webhooks through the local stack (spec operations-api, "Webhooks"): the settings
//! routes through the gateway, which calls the settings function's handler; an enrichment's
//! ending written with its outbox event, relayed from the table's stream to the webhook queue
//! and delivered, signed, to an endpoint on loopback, retried on `WEBHOOK_RETRY_SCHEDULE`. The
//! endpoint is a recording server of the test's own, and the signature is checked with an
//! HMAC-SHA256 of the test's own. Every test that moves credits checks the ledger
//! ([`enrichment::store::Store::check_ledger`]).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use enrichment::config::Vars;
use enrichment::domain::Person;
use hmac::{Hmac, KeyInit, Mac};
use local_stack::{Options, Stack};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::time::Instant;
use uuid::Uuid;

mod helpers;
use helpers::{
    add_person, answered, known_person, ledger, private_options, provider_requests, simulator_stats,
};

const ORG: &str = "org_webhooks";
const SETTINGS: &str = "/api/v1/settings/webhook";
const DELIVERIES: &str = "/api/v1/settings/webhook/deliveries";

/// Runs a test's body within `limit`.
async fn bounded<T>(limit: Duration, body: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, body)
        .await
        .unwrap_or_else(|_| panic!("the test did not end within {limit:?}"))
}

/// A request the endpoint received.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header: {:?}", self.headers))
            .to_str()
            .unwrap()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

#[derive(Clone)]
struct ReceiverState {
    requests: Arc<Mutex<Vec<Received>>>,
    failures: usize,
}

/// A webhook endpoint on 127.0.0.1: records every request and answers `500` to the first
/// `failures` of them, `200` afterwards.
struct Receiver {
    url: String,
    requests: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(failures: usize) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/enrichment", listener.local_addr().unwrap());
        let state = ReceiverState {
            requests: Arc::default(),
            failures,
        };
        let requests = state.requests.clone();
        let app = axum::Router::new()
            .route("/hooks/enrichment", axum::routing::any(receive))
            .with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, requests }
    }

    fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    /// How many requests came, once 2 s more passed for any late one (an attempt that should
    /// not come).
    async fn settled(&self) -> usize {
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.requests().len()
    }

    /// Waits until `count` requests came, within `limit`; returns them.
    async fn wait_for(&self, count: usize, limit: Duration) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let requests = self.requests();
            if requests.len() >= count {
                return requests;
            }
            assert!(
                Instant::now() < deadline,
                "{} request(s) after {limit:?}, expected {count}: {requests:#?}",
                requests.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn receive(
    State(state): State<ReceiverState>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    assert_eq!(method, axum::http::Method::POST);
    let mut requests = state.requests.lock().unwrap();
    requests.push(Received { headers, body });
    if requests.len() <= state.failures {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

/// Checks the Standard Webhooks signature of `received` with `secret` (`whsec_<base64>`): one
/// of the space-separated `v1,<base64>` of `webhook-signature` is the HMAC-SHA256 of
/// `"{webhook-id}.{webhook-timestamp}.{body}"` keyed with the decoded secret. Also checks that
/// the timestamp is now (within a minute) and that `webhook-id` is the body's `id`.
fn assert_signed(received: &Received, secret: &str) {
    let id = received.header("webhook-id");
    let timestamp = received.header("webhook-timestamp");
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{}", received.body).as_bytes());
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    let signatures = received.header("webhook-signature");
    assert!(
        signatures.split(' ').any(|s| s == expected),
        "{signatures} is not {expected}"
    );
    let sent: i64 = timestamp.parse().unwrap();
    assert!(
        (chrono::Utc::now().timestamp() - sent).abs() < 60,
        "webhook-timestamp {sent}"
    );
    assert_eq!(id, received.json()["id"].as_str().unwrap());
    assert_eq!(received.header("content-type"), "application/json");
}

/// A client of the stack's gateway for one org.
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
                .token("user_webhooks", org, Duration::from_secs(600))
                .unwrap(),
        }
    }

    /// `method` on `path` (with its query) with `body`, with this org's token or none.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        token: bool,
    ) -> (u16, HeaderMap, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if token {
            request = request.bearer_auth(&self.token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, headers, body)
    }

    /// Registers `url`; returns the answer, checked: `{"url", "secret", "createdAt"}`.
    async fn register(&self, url: &str) -> Value {
        let body = json!({ "url": url }).to_string();
        let (status, _, answer) = self.send(Method::PUT, SETTINGS, Some(&body), true).await;
        assert_eq!(status, 200, "{answer}");
        let object = answer.as_object().unwrap();
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["createdAt", "secret", "url"], "{answer}");
        assert_eq!(answer["url"], url);
        let secret = answer["secret"].as_str().unwrap();
        let key = STANDARD
            .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
            .unwrap();
        assert_eq!(key.len(), 32);
        chrono::DateTime::parse_from_rfc3339(answer["createdAt"].as_str().unwrap()).unwrap();
        answer
    }

    /// The org's deliveries log.
    async fn deliveries(&self) -> Vec<Value> {
        let (status, _, body) = self.send(Method::GET, DELIVERIES, None, true).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
        body["deliveries"].as_array().unwrap().clone()
    }

    /// Waits until the log's entry for `event_id` satisfies `done`, within `limit`; returns the
    /// whole log then.
    async fn wait_delivery(
        &self,
        event_id: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.deliveries().await;
            if log.iter().any(|d| d["eventId"] == event_id && done(d)) {
                return log;
            }
            assert!(Instant::now() < deadline, "after {limit:?}: {log:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn enrich(&self, person: Uuid, field: &str) -> Value {
        let path = format!("/api/v1/operations/enrichment/{person}?field={field}");
        let (status, _, body) = self.send(Method::POST, &path, None, true).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn status(&self, person: Uuid, field: &str) -> Value {
        let path = format!("/api/v1/operations/enrichment/{person}?field={field}");
        let (status, _, body) = self.send(Method::GET, &path, None, true).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Polls the enrichment until it is no longer `pending`, within `limit`.
    async fn ended(&self, person: Uuid, field: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let body = self.status(person, field).await;
            if body["status"] != "pending" {
                return body;
            }
            assert!(Instant::now() < deadline, "still pending: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A private stack: `vars` over the environment, the worker as asked, the outbox relay and the
/// webhook delivery on.
async fn stack(vars: &[(&'static str, &'static str)], worker: bool) -> Stack {
    let mut options = private_options();
    options.local_worker = worker;
    options.vars = with_vars(vars);
    Stack::start(options).await.expect("local stack starts")
}

fn with_vars(vars: &[(&'static str, &'static str)]) -> Vars<'static> {
    Vars::from_pairs(vars.iter().copied()).or(Vars::env())
}

/// Options whose simulator answers as `profile` says (JSON, see the simulator's config).
fn with_simulator(mut options: Options, profile: Value) -> Options {
    std::fs::create_dir_all(&options.state_dir).unwrap();
    let path = options.state_dir.join("simulator.json");
    std::fs::write(&path, profile.to_string()).unwrap();
    options.simulator_config = Some(path);
    options
}

/// The event of `received`, checked: `{"id", "type", "createdAt", "data"}` of type `kind`,
/// made when its enrichment `data` ended.
fn event_of(received: &Received, kind: &str) -> Value {
    let event = received.json();
    let mut keys: Vec<&str> = event
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(keys, ["createdAt", "data", "id", "type"], "{event}");
    assert_eq!(event["type"], kind, "{event}");
    Uuid::parse_str(event["id"].as_str().unwrap()).unwrap();
    assert_eq!(event["createdAt"], event["data"]["updatedAt"], "{event}");
    event
}

/// The log entry of `event_id`, checked for the spec's fields.
fn entry<'a>(log: &'a [Value], event_id: &Value) -> &'a Value {
    let found = log
        .iter()
        .find(|d| &d["eventId"] == event_id)
        .unwrap_or_else(|| panic!("no delivery of {event_id}: {log:#?}"));
    let mut keys: Vec<&str> = found
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "attempts",
            "delivered",
            "enrichmentId",
            "eventId",
            "lastAttemptAt",
            "lastStatus",
            "type"
        ]
    );
    found
}

/// Waits until `provider` answered `count` requests, within `limit`.
async fn wait_answered(stack: &Stack, provider: &str, count: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let stats = simulator_stats(stack).await;
        if answered(&stats, provider) >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{provider} did not answer: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Grants `ORG` 100 credits, adds a person the simulator knows and enriches her emails: the
/// person and the `pending` enrichment.
async fn enrich_known(stack: &Stack, api: &Api) -> (Person, Value) {
    stack.store.grant_credits(ORG, 100).await.unwrap();
    let person = known_person();
    add_person(stack, ORG, &person).await;
    let created = api.enrich(person.id, "emails").await;
    (person, created)
}

/// A person of `org` whom no simulated provider knows, with a new id.
async fn unknown_person(stack: &Stack, org: &str, first_name: &str) -> Person {
    let person = Person {
        id: Uuid::new_v4(),
        first_name: Some(first_name.into()),
        last_name: Some("Nobody".into()),
        company_domain: Some("webhooks.example".into()),
        ..Person::default()
    };
    add_person(stack, org, &person).await;
    person
}

#[tokio::test]
async fn a_registered_endpoint_gets_one_signed_finished_event_and_the_log_shows_it_delivered() {
    bounded(Duration::from_secs(60), async {
        let stack = stack(&[], true).await;
        let api = Api::new(&stack, ORG);
        let receiver = Receiver::start(0).await;

        let registered = api.register(&receiver.url).await;
        let (status, _, shown) = api.send(Method::GET, SETTINGS, None, true).await;
        assert_eq!(status, 200, "{shown}");
        assert_eq!(
            shown,
            json!({"url": receiver.url, "createdAt": registered["createdAt"]}),
            "no secret"
        );

        let (person, created) = enrich_known(&stack, &api).await;
        assert_eq!(created["status"], "pending");
        let ended = api
            .ended(person.id, "emails", Duration::from_secs(20))
            .await;
        assert_eq!(
            (&ended["status"], &ended["dataFound"]),
            (&json!("finished"), &json!(true))
        );

        let received = receiver.wait_for(1, Duration::from_secs(15)).await;
        let event = event_of(&received[0], "enrichment.finished");
        assert_eq!(event["data"], ended, "the enrichment as GET shows it");
        assert_signed(&received[0], registered["secret"].as_str().unwrap());

        let log = api
            .wait_delivery(
                event["id"].as_str().unwrap(),
                Duration::from_secs(10),
                |d| d["delivered"] == true,
            )
            .await;
        assert_eq!(log.len(), 1, "{log:#?}");
        let delivery = entry(&log, &event["id"]);
        assert_eq!(
            (
                &delivery["type"],
                &delivery["enrichmentId"],
                &delivery["attempts"],
                &delivery["lastStatus"],
                &delivery["delivered"]
            ),
            (
                &json!("enrichment.finished"),
                &ended["id"],
                &json!(1),
                &json!(200),
                &json!(true)
            )
        );
        chrono::DateTime::parse_from_rfc3339(delivery["lastAttemptAt"].as_str().unwrap()).unwrap();
        // Once: nothing more comes.
        assert_eq!(receiver.settled().await, 1);
        assert_eq!(ledger(&stack.store, ORG, 100).await, (95, vec![-5]));
        stack.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_endpoint_that_fails_twice_gets_the_same_event_three_times_and_it_is_delivered() {
    bounded(Duration::from_secs(60), async {
        let stack = stack(&[("WEBHOOK_RETRY_SCHEDULE", "1,1,1")], true).await;
        let api = Api::new(&stack, ORG);
        let receiver = Receiver::start(2).await;
        let registered = api.register(&receiver.url).await;
        let (person, _) = enrich_known(&stack, &api).await;

        let received = receiver.wait_for(3, Duration::from_secs(30)).await;
        let event = event_of(&received[0], "enrichment.finished");
        for attempt in &received {
            assert_eq!(attempt.header("webhook-id"), event["id"].as_str().unwrap());
            assert_eq!(attempt.body, received[0].body, "the same body every time");
            assert_signed(attempt, registered["secret"].as_str().unwrap());
        }
        let log = api
            .wait_delivery(
                event["id"].as_str().unwrap(),
                Duration::from_secs(10),
                |d| d["delivered"] == true,
            )
            .await;
        let delivery = entry(&log, &event["id"]);
        assert_eq!(
            (
                &delivery["attempts"],
                &delivery["lastStatus"],
                &delivery["delivered"]
            ),
            (&json!(3), &json!(200), &json!(true))
        );
        assert_eq!(receiver.settled().await, 3, "no attempt after the delivery");
        assert_eq!(event["data"], api.status(person.id, "emails").await);
        assert_eq!(ledger(&stack.store, ORG, 100).await, (95, vec![-5]));
        stack.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_endpoint_that_always_fails_gets_one_attempt_more_than_the_schedule_and_no_more() {
    bounded(Duration::from_secs(60), async {
        let stack = stack(&[("WEBHOOK_RETRY_SCHEDULE", "1,1")], true).await;
        let api = Api::new(&stack, ORG);
        let receiver = Receiver::start(usize::MAX).await;
        api.register(&receiver.url).await;
        enrich_known(&stack, &api).await;

        let received = receiver.wait_for(3, Duration::from_secs(30)).await;
        let event = event_of(&received[0], "enrichment.finished");
        let log = api
            .wait_delivery(
                event["id"].as_str().unwrap(),
                Duration::from_secs(10),
                |d| d["attempts"] == 3,
            )
            .await;
        let delivery = entry(&log, &event["id"]);
        assert_eq!(
            (
                &delivery["attempts"],
                &delivery["lastStatus"],
                &delivery["delivered"]
            ),
            (&json!(3), &json!(500), &json!(false))
        );
        // Past the end of the schedule: no fourth attempt.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let received = receiver.requests();
        assert_eq!(received.len(), 3, "{received:#?}");
        assert!(
            received
                .iter()
                .all(|r| r.header("webhook-id") == event["id"].as_str().unwrap())
        );
        assert_eq!(entry(&api.deliveries().await, &event["id"])["attempts"], 3);
        assert_eq!(ledger(&stack.store, ORG, 100).await, (95, vec![-5]));
        stack.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_event_written_while_the_relay_is_down_is_delivered_once_after_a_restart() {
    bounded(Duration::from_secs(90), async {
        let mut options = private_options();
        options.persist = true;
        options.local_worker = true;
        options.outbox_relay = false;
        let receiver = Receiver::start(0).await;

        // The ending is written (with its outbox event), the relay is down: nothing is sent.
        let stack = Stack::start(options.clone()).await.unwrap();
        let api = Api::new(&stack, ORG);
        let registered = api.register(&receiver.url).await;
        let (person, _) = enrich_known(&stack, &api).await;
        let ended = api
            .ended(person.id, "emails", Duration::from_secs(20))
            .await;
        assert_eq!(ended["status"], "finished", "{ended}");
        assert_eq!(receiver.settled().await, 0);
        assert_eq!(api.deliveries().await, Vec::<Value>::new());
        stack.shutdown().await;

        // A start with the relay on the same state: the event goes, once.
        options.outbox_relay = true;
        let stack = Stack::start(options.clone()).await.unwrap();
        let api = Api::new(&stack, ORG);
        let received = receiver.wait_for(1, Duration::from_secs(15)).await;
        let event = event_of(&received[0], "enrichment.finished");
        assert_eq!(event["data"], ended);
        assert_signed(&received[0], registered["secret"].as_str().unwrap());
        let log = api
            .wait_delivery(
                event["id"].as_str().unwrap(),
                Duration::from_secs(10),
                |d| d["delivered"] == true,
            )
            .await;
        assert_eq!(log.len(), 1);
        assert_eq!(entry(&log, &event["id"])["attempts"], 1);
        assert_eq!(receiver.settled().await, 1);
        stack.shutdown().await;

        // And again: nothing is sent twice.
        let stack = Stack::start(options).await.unwrap();
        let api = Api::new(&stack, ORG);
        assert_eq!(stack.requeued_deliveries, 0);
        assert_eq!(receiver.settled().await, 1);
        assert_eq!(api.deliveries().await.len(), 1);
        assert_eq!(ledger(&stack.store, ORG, 100).await, (95, vec![-5]));
        stack.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_event_the_relay_cannot_queue_is_given_again_until_it_is_queued_once() {
    bounded(Duration::from_secs(60), async {
        let stack = stack(&[], true).await;
        let api = Api::new(&stack, ORG);
        let receiver = Receiver::start(0).await;
        api.register(&receiver.url).await;
        // The webhook queue is gone: the relay writes the delivery, then fails to queue it.
        stack
            .sqs
            .delete_queue()
            .queue_url(&stack.info.webhook_queue_url)
            .send()
            .await
            .unwrap();
        let (person, _) = enrich_known(&stack, &api).await;
        let ended = api
            .ended(person.id, "emails", Duration::from_secs(20))
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let log = loop {
            let log = api.deliveries().await;
            if !log.is_empty() {
                break log;
            }
            assert!(Instant::now() < deadline, "the relay wrote no delivery");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(log.len(), 1, "{log:#?}");
        assert_eq!(
            (
                &log[0]["enrichmentId"],
                &log[0]["attempts"],
                &log[0]["lastStatus"],
                &log[0]["lastAttemptAt"],
                &log[0]["delivered"]
            ),
            (
                &ended["id"],
                &json!(0),
                &Value::Null,
                &Value::Null,
                &json!(false)
            ),
            "no attempt yet"
        );
        // The records are given again (every second) meanwhile.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(receiver.requests().len(), 0);

        // The queue is back: the event goes, once.
        let url = stack
            .sqs
            .create_queue()
            .queue_name(local_stack::WEBHOOK_QUEUE_NAME)
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        assert_eq!(url, stack.info.webhook_queue_url);
        let received = receiver.wait_for(1, Duration::from_secs(15)).await;
        let event = event_of(&received[0], "enrichment.finished");
        assert_eq!(event["data"], ended);
        assert_eq!(event["id"], log[0]["eventId"]);
        api.wait_delivery(
            event["id"].as_str().unwrap(),
            Duration::from_secs(10),
            |d| d["delivered"] == true && d["attempts"] == 1,
        )
        .await;
        assert_eq!(receiver.settled().await, 1);
        assert_eq!(ledger(&stack.store, ORG, 100).await, (95, vec![-5]));
        stack.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_table_kept_from_before_the_outbox_gets_its_stream_at_start() {
    bounded(Duration::from_secs(60), async {
        let mut options = private_options();
        options.persist = true;
        let stack = Stack::start(options.clone()).await.unwrap();
        let dynamodb = aws_sdk_dynamodb::Client::from_conf(
            local_stack::dynamodb_config(&stack.info.dynamodb_url).build(),
        );
        // A table as a stack made it before the outbox: no stream.
        dynamodb
            .update_table()
            .table_name(local_stack::TABLE_NAME)
            .stream_specification(
                aws_sdk_dynamodb::types::StreamSpecification::builder()
                    .stream_enabled(false)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
        let described = dynamodb
            .describe_table()
            .table_name(local_stack::TABLE_NAME)
            .send()
            .await
            .unwrap();
        let spec = described.table().unwrap().stream_specification();
        assert!(!spec.is_some_and(|s| s.stream_enabled()), "{spec:?}");
        stack.shutdown().await;

        let stack = Stack::start(options).await.unwrap();
        let dynamodb = aws_sdk_dynamodb::Client::from_conf(
            local_stack::dynamodb_config(&stack.info.dynamodb_url).build(),
        );
        let described = dynamodb
            .describe_table()
            .table_name(local_stack::TABLE_NAME)
            .send()
            .await
            .unwrap();
        let spec = described.table().unwrap().stream_specification().unwrap();
        assert!(spec.stream_enabled());
        assert_eq!(
            spec.stream_view_type(),
            Some(&aws_sdk_dynamodb::types::StreamViewType::NewImage)
        );
        // And its events are relayed: a cancel, without a worker.
        let api = Api::new(&stack, ORG);
        let receiver = Receiver::start(0).await;
        api.register(&receiver.url).await;
        stack.store.grant_credits(ORG, 100).await.unwrap();
        let person = unknown_person(&stack, ORG, "Old").await;
        api.enrich(person.id, "emails").await;
        let path = format!(
            "/api/v1/operations/enrichment/{}/cancel?field=emails",
            person.id
        );
        let (status, _, cancelled) = api.send(Method::POST, &path, None, true).await;
        assert_eq!(status, 200, "{cancelled}");
        let received = receiver.wait_for(1, Duration::from_secs(15)).await;
        assert_eq!(
            event_of(&received[0], "enrichment.cancelled")["data"],
            cancelled
        );
        assert_eq!(ledger(&stack.store, ORG, 100).await, (100, vec![-5, 5]));
        stack.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_retry_queued_before_a_restart_is_made_after_it() {
    bounded(Duration::from_secs(90), async {
        let mut options = private_options();
        options.persist = true;
        options.local_worker = true;
        options.vars = with_vars(&[("WEBHOOK_RETRY_SCHEDULE", "5")]);
        let receiver = Receiver::start(1).await;

        let stack = Stack::start(options.clone()).await.unwrap();
        let api = Api::new(&stack, ORG);
        api.register(&receiver.url).await;
        enrich_known(&stack, &api).await;
        let received = receiver.wait_for(1, Duration::from_secs(20)).await;
        let event = event_of(&received[0], "enrichment.finished");
        let id = event["id"].as_str().unwrap();
        api.wait_delivery(id, Duration::from_secs(10), |d| d["attempts"] == 1)
            .await;
        // The SQS emulator loses the queued retry with the stack.
        stack.shutdown().await;
        assert_eq!(receiver.requests().len(), 1);

        let stack = Stack::start(options).await.unwrap();
        let api = Api::new(&stack, ORG);
        assert_eq!(stack.requeued_deliveries, 1);
        let received = receiver.wait_for(2, Duration::from_secs(20)).await;
        assert_eq!(received[1].header("webhook-id"), id);
        assert_eq!(received[1].body, received[0].body);
        let log = api
            .wait_delivery(id, Duration::from_secs(10), |d| d["delivered"] == true)
            .await;
        let delivery = entry(&log, &event["id"]);
        assert_eq!(
            (&delivery["attempts"], &delivery["lastStatus"]),
            (&json!(2), &json!(200))
        );
        assert_eq!(ledger(&stack.store, ORG, 100).await, (95, vec![-5]));
        stack.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_cancel_during_a_slow_cascade_sends_cancelled_and_no_provider_is_called_after_it() {
    bounded(Duration::from_secs(60), async {
        // Hunter answers "no match" to everyone, after 4 s: the cascade would go on to PDL.
        let mut options = with_simulator(
            private_options(),
            json!({"providers": {"hunter": {"latency_ms": 4000, "miss_rate": 1.0}}}),
        );
        options.local_worker = true;
        options.vars = with_vars(&[
            ("EMAIL_PROVIDERS", "hunter,pdl"),
            ("PROVIDER_TIMEOUT_SECONDS", "10"),
        ]);
        let stack = Stack::start(options).await.unwrap();
        let api = Api::new(&stack, ORG);
        let receiver = Receiver::start(0).await;
        let registered = api.register(&receiver.url).await;
        stack.store.grant_credits(ORG, 100).await.unwrap();
        let person = unknown_person(&stack, ORG, "Cass").await;

        api.enrich(person.id, "emails").await;
        // Its worker is in its Hunter call.
        let deadline = Instant::now() + Duration::from_secs(20);
        while simulator_stats(&stack).await["hunter"]["requests"] != 1 {
            assert!(Instant::now() < deadline, "the worker never asked Hunter");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let path = format!(
            "/api/v1/operations/enrichment/{}/cancel?field=emails",
            person.id
        );
        let (status, _, cancelled) = api.send(Method::POST, &path, None, true).await;
        assert_eq!(status, 200, "{cancelled}");
        assert_eq!(cancelled["status"], "cancelled");
        assert_eq!(answered(&simulator_stats(&stack).await, "hunter"), 0);

        let received = receiver.wait_for(1, Duration::from_secs(15)).await;
        let event = event_of(&received[0], "enrichment.cancelled");
        assert_eq!(event["data"], cancelled);
        assert_signed(&received[0], registered["secret"].as_str().unwrap());

        // Hunter's answer comes after the cancel: no further provider is asked, no other event.
        wait_answered(&stack, "hunter", 1, Duration::from_secs(15)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            provider_requests(&simulator_stats(&stack).await),
            json!({"hunter": 1})
        );
        assert_eq!(receiver.requests().len(), 1);
        assert_eq!(api.status(person.id, "emails").await, cancelled);
        let log = api
            .wait_delivery(
                event["id"].as_str().unwrap(),
                Duration::from_secs(10),
                |d| d["delivered"] == true,
            )
            .await;
        assert_eq!(entry(&log, &event["id"])["type"], "enrichment.cancelled");
        assert_eq!(ledger(&stack.store, ORG, 100).await, (100, vec![-5, 5]));
        stack.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_timeout_nobody_polls_sends_a_timeout_event() {
    bounded(Duration::from_secs(60), async {
        // Hunter takes 15 s; the maximum age is 3 s: the enrichment's check comes at about 8 s,
        // while the worker still waits on Hunter.
        let mut options = with_simulator(
            private_options(),
            json!({"providers": {"hunter": {"latency_ms": 15_000}}}),
        );
        options.local_worker = true;
        options.max_age = Duration::from_secs(3);
        options.vars = with_vars(&[
            ("EMAIL_PROVIDERS", "hunter"),
            ("PROVIDER_TIMEOUT_SECONDS", "20"),
        ]);
        let stack = Stack::start(options).await.unwrap();
        let api = Api::new(&stack, ORG);
        let receiver = Receiver::start(0).await;
        let registered = api.register(&receiver.url).await;
        stack.store.grant_credits(ORG, 10).await.unwrap();
        let person = known_person();
        add_person(&stack, ORG, &person).await;
        let started = Instant::now();
        let created = api.enrich(person.id, "emails").await;

        // Nobody polls: the event says it.
        let received = receiver.wait_for(1, Duration::from_secs(30)).await;
        let noticed = started.elapsed();
        let event = event_of(&received[0], "enrichment.timeout");
        assert_signed(&received[0], registered["secret"].as_str().unwrap());
        assert_eq!(event["data"]["id"], created["id"]);
        assert_eq!(event["data"]["status"], "timeout");
        assert!(
            noticed < Duration::from_secs(20),
            "noticed after {noticed:?}"
        );
        assert_eq!(ledger(&stack.store, ORG, 10).await, (10, vec![-5, 5]));

        // The worker's late answer writes nothing and sends nothing.
        wait_answered(&stack, "hunter", 1, Duration::from_secs(20)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(receiver.requests().len(), 1);
        assert_eq!(api.status(person.id, "emails").await, event["data"]);
        assert_eq!(ledger(&stack.store, ORG, 10).await, (10, vec![-5, 5]));
        stack.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn the_settings_routes_refuse_what_the_spec_refuses() {
    bounded(Duration::from_secs(60), async {
        let stack = stack(&[], false).await;
        let api = Api::new(&stack, ORG);
        let receiver = Receiver::start(0).await;

        // Without a token: 401 on every route and method.
        for (method, path) in [
            (Method::GET, SETTINGS),
            (Method::PUT, SETTINGS),
            (Method::DELETE, SETTINGS),
            (Method::GET, DELIVERIES),
        ] {
            let body = json!({ "url": receiver.url }).to_string();
            let (status, _, answer) = api.send(method.clone(), path, Some(&body), false).await;
            assert_eq!(
                (status, &answer["error"]["code"]),
                (401, &json!("UNAUTHORIZED")),
                "{method} {path}"
            );
        }

        // Refused endpoints and bodies: 400 naming the field.
        let refused = [
            json!({"url": "http://example.com/x"}).to_string(),
            json!({"url": "https://127.0.0.1/x"}).to_string(),
            json!({"url": "https://169.254.169.254/latest/meta-data"}).to_string(),
            json!({"url": "https://10.0.0.1/x"}).to_string(),
            json!({"url": "https://localhost/x"}).to_string(),
            json!({"url": "http://127.0.0.1/x"}).to_string(),
            json!({"url": "https://user:secret@example.com/x"}).to_string(),
            json!({"url": "not a url"}).to_string(),
            json!({"url": 42}).to_string(),
            json!({}).to_string(),
        ];
        for body in &refused {
            let (status, _, answer) = api.send(Method::PUT, SETTINGS, Some(body), true).await;
            assert_eq!(status, 400, "{body}: {answer}");
            assert_eq!(answer["error"]["code"], "VALIDATION_ERROR", "{body}");
            assert_eq!(
                answer["error"]["details"]["field"], "url",
                "{body}: {answer}"
            );
        }
        for body in ["not json", "[1, 2]", "\"https://example.com/x\"", ""] {
            let (status, _, answer) = api.send(Method::PUT, SETTINGS, Some(body), true).await;
            assert_eq!(status, 400, "{body:?}: {answer}");
            assert_eq!(answer["error"]["code"], "VALIDATION_ERROR", "{body:?}");
            assert_eq!(
                answer["error"]["details"]["field"], "body",
                "{body:?}: {answer}"
            );
        }
        // Nothing was registered.
        let (status, _, answer) = api.send(Method::GET, SETTINGS, None, true).await;
        assert_eq!(
            (status, &answer["error"]["code"]),
            (404, &json!("NOT_FOUND"))
        );

        // Another method: 405 with `Allow`.
        for (method, path, allow) in [
            (Method::POST, SETTINGS, "GET, PUT, DELETE"),
            (Method::PATCH, SETTINGS, "GET, PUT, DELETE"),
            (Method::POST, DELIVERIES, "GET"),
            (Method::PUT, DELIVERIES, "GET"),
            (Method::DELETE, DELIVERIES, "GET"),
        ] {
            let (status, headers, answer) = api.send(method.clone(), path, None, true).await;
            assert_eq!(status, 405, "{method} {path}");
            assert_eq!(answer["error"]["code"], "METHOD_NOT_ALLOWED");
            assert_eq!(headers.get("allow").unwrap(), allow, "{method} {path}");
        }

        // The log's `limit`: 1 to 100.
        for limit in ["0", "101", "-1", "ten", "1.5"] {
            let path = format!("{DELIVERIES}?limit={limit}");
            let (status, _, answer) = api.send(Method::GET, &path, None, true).await;
            assert_eq!(status, 400, "{limit}: {answer}");
            assert_eq!(answer["error"]["details"]["field"], "limit", "{limit}");
        }
        let path = format!("{DELIVERIES}?limit=1&limit=2");
        assert_eq!(api.send(Method::GET, &path, None, true).await.0, 400);
        for limit in ["1", "100"] {
            let path = format!("{DELIVERIES}?limit={limit}");
            let (status, _, answer) = api.send(Method::GET, &path, None, true).await;
            assert_eq!((status, answer), (200, json!({"deliveries": []})));
        }

        // Registered, replaced (a new secret), removed.
        let first = api.register(&receiver.url).await;
        let other = format!("{}/other", receiver.url);
        let second = api.register(&other).await;
        assert_ne!(first["secret"], second["secret"]);
        let (status, _, shown) = api.send(Method::GET, SETTINGS, None, true).await;
        assert_eq!(
            (status, shown),
            (200, json!({"url": other, "createdAt": second["createdAt"]}))
        );
        let (status, _, answer) = api.send(Method::DELETE, SETTINGS, None, true).await;
        assert_eq!((status, answer), (204, Value::Null));
        let (status, _, answer) = api.send(Method::GET, SETTINGS, None, true).await;
        assert_eq!(
            (status, answer),
            (
                404,
                json!({"error": {"code": "NOT_FOUND", "message": "Webhook not found"}})
            )
        );
        let (status, _, _) = api.send(Method::DELETE, SETTINGS, None, true).await;
        assert_eq!(status, 204, "removing none is no error");
        stack.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn each_org_gets_and_sees_only_its_own_deliveries() {
    bounded(Duration::from_secs(60), async {
        let stack = stack(&[], true).await;
        let orgs = ["org_webhooks_a", "org_webhooks_b", "org_webhooks_c"];
        let apis: Vec<Api> = orgs.iter().map(|org| Api::new(&stack, org)).collect();
        let receivers = [Receiver::start(0).await, Receiver::start(0).await];
        // a and b have an endpoint each, c none.
        apis[0].register(&receivers[0].url).await;
        apis[1].register(&receivers[1].url).await;
        let mut people = Vec::new();
        for (org, api) in orgs.iter().zip(&apis) {
            stack.store.grant_credits(org, 100).await.unwrap();
            let person = known_person();
            add_person(&stack, org, &person).await;
            api.enrich(person.id, "emails").await;
            people.push(person);
        }
        let mut ended = Vec::new();
        for (person, api) in people.iter().zip(&apis) {
            ended.push(
                api.ended(person.id, "emails", Duration::from_secs(20))
                    .await,
            );
        }
        for (i, receiver) in receivers.iter().enumerate() {
            let received = receiver.wait_for(1, Duration::from_secs(15)).await;
            let event = event_of(&received[0], "enrichment.finished");
            assert_eq!(event["data"], ended[i], "{}'s own enrichment", orgs[i]);
            apis[i]
                .wait_delivery(
                    event["id"].as_str().unwrap(),
                    Duration::from_secs(10),
                    |d| d["delivered"] == true,
                )
                .await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (i, receiver) in receivers.iter().enumerate() {
            assert_eq!(receiver.requests().len(), 1, "{}", orgs[i]);
            let log = apis[i].deliveries().await;
            assert_eq!(log.len(), 1, "{}: {log:#?}", orgs[i]);
            assert_eq!(log[0]["enrichmentId"], ended[i]["id"]);
        }
        assert_eq!(apis[2].deliveries().await, Vec::<Value>::new());

        // a removes its endpoint: its next ending is sent nowhere and logged nowhere.
        let (status, _, _) = apis[0].send(Method::DELETE, SETTINGS, None, true).await;
        assert_eq!(status, 204);
        let later = unknown_person(&stack, orgs[0], "Lou").await;
        apis[0].enrich(later.id, "emails").await;
        let last = apis[0]
            .ended(later.id, "emails", Duration::from_secs(20))
            .await;
        assert_eq!(last["status"], "finished", "{last}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(receivers[0].requests().len(), 1);
        assert_eq!(apis[0].deliveries().await.len(), 1);

        assert_eq!(ledger(&stack.store, orgs[0], 100).await, (90, vec![-5, -5]));
        for org in &orgs[1..] {
            assert_eq!(ledger(&stack.store, org, 100).await, (95, vec![-5]));
        }
        stack.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_bad_retry_schedule_stops_the_start_naming_it() {
    bounded(Duration::from_secs(30), async {
        for bad in ["0", "5,abc", "1,1,1,1,1,1,1,1,1,1,1", "86401"] {
            let mut options = private_options();
            options.vars = Vars::from_pairs([("WEBHOOK_RETRY_SCHEDULE", bad)]).or(Vars::env());
            let error = Stack::start(options).await.err().expect("refused");
            assert!(error.contains("WEBHOOK_RETRY_SCHEDULE"), "{bad}: {error}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_stack_without_the_table_stream_keeps_the_events_in_the_outbox() {
    bounded(Duration::from_secs(60), async {
        let mut options = private_options();
        options.local_worker = true;
        options.table_stream = false;
        let stack = Stack::start(options).await.unwrap();
        let dynamodb = aws_sdk_dynamodb::Client::from_conf(
            local_stack::dynamodb_config(&stack.info.dynamodb_url).build(),
        );
        let described = dynamodb
            .describe_table()
            .table_name(stack.store.table())
            .send()
            .await
            .unwrap();
        let enabled = described
            .table()
            .and_then(|t| t.stream_specification())
            .is_some_and(|s| s.stream_enabled());
        assert!(!enabled, "no stream");
        let api = Api::new(&stack, ORG);
        let receiver = Receiver::start(0).await;
        api.register(&receiver.url).await;
        let (person, _) = enrich_known(&stack, &api).await;
        let ended = api
            .ended(person.id, "emails", Duration::from_secs(20))
            .await;
        assert_eq!(ended["status"], "finished", "{ended}");
        assert_eq!(receiver.settled().await, 0);
        assert_eq!(api.deliveries().await, Vec::<Value>::new());
        assert_eq!(ledger(&stack.store, ORG, 100).await, (95, vec![-5]));
        stack.shutdown().await;
    })
    .await;
}
