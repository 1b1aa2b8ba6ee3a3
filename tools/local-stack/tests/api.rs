//! Whole flows against a private local stack per test: dynoxide for DynamoDB (faithful under
//! concurrency), moto's server for SQS, the provider simulator, the HTTP gateway and the worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::QueueAttributeName;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use enrichment::auth::Principal;
use enrichment::domain::Job;
use enrichment::domain::{CacheUse, Field, Person, Status};
use enrichment::enrichment::{ENQUEUE_FAILED_MESSAGE, Enrichments};
use enrichment::providers::cascade::Cascade;
use enrichment::providers::{PersonQuery, Provider, ProviderAnswer, ProviderError, RawContact};
use enrichment::queue::{JobQueue, QueueError, SqsJobQueue};
use enrichment::store::{Store, TIMEOUT_MESSAGE};
use enrichment::worker::{JobOutcome, Worker};
use local_stack::{Stack, dynamodb_config, sqs_config};
use serde_json::{Value, json};
use uuid::Uuid;

mod helpers;
use helpers::{add_person, known_person, ledger, private_options};

const ORG: &str = "org_acme";
const USER: &str = "user_alice";

async fn start(max_age: Duration, local_worker: bool) -> Stack {
    let mut options = private_options();
    options.max_age = max_age;
    options.local_worker = local_worker;
    options.visibility_timeout = Duration::from_secs(30);
    Stack::start(options).await.expect("local stack starts")
}

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
            token: stack.token(USER, org, Duration::from_secs(300)).unwrap(),
        }
    }

    async fn call(&self, method: reqwest::Method, person: &str, query: &str) -> (u16, Value) {
        let url = format!("{}/api/v1/operations/enrichment/{person}{query}", self.base);
        let response = self
            .http
            .request(method, url)
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, person: Uuid, field: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            &person.to_string(),
            &format!("?field={field}"),
        )
        .await
    }

    async fn get(&self, person: Uuid, field: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::GET,
            &person.to_string(),
            &format!("?field={field}"),
        )
        .await
    }
}

async fn queued_jobs(stack: &Stack) -> usize {
    let attributes = stack
        .sqs
        .get_queue_attributes()
        .queue_url(&stack.info.queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap_or_default();
    let count = |name| {
        attributes
            .get(&name)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
    };
    count(QueueAttributeName::ApproximateNumberOfMessages)
        + count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
}

fn principal(org: &str) -> Principal {
    Principal {
        user_id: USER.into(),
        org_id: org.into(),
    }
}

#[tokio::test]
async fn new_post_is_pending_and_replay_returns_it_without_charge() {
    let stack = start(Duration::from_secs(800), false).await;
    let person = known_person();
    add_person(&stack, ORG, &person).await;
    stack.store.grant_credits(ORG, 100).await.unwrap();
    let api = Api::new(&stack, ORG);

    let (status, first) = api.post(person.id, "emails").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "pending");
    assert_eq!(first["entityId"], person.id.to_string());
    assert_eq!(first["entityType"], "person");
    assert_eq!(first["field"], "emails");
    assert_eq!(first["createdBy"], USER);
    assert_eq!(first["orgId"], ORG);
    assert_eq!(first["dataFound"], Value::Null);
    assert_eq!(first["error"], Value::Null);
    assert!(first["creditTransactionId"].is_string());
    assert_eq!(stack.store.credit_balance(ORG).await.unwrap(), 95);

    let (status, replay) = api.post(person.id, "emails").await;
    assert_eq!(status, 200);
    assert_eq!(replay, first);
    assert_eq!(stack.store.credit_balance(ORG).await.unwrap(), 95);
    assert_eq!(queued_jobs(&stack).await, 1);

    let (status, phones) = api.post(person.id, "phones").await;
    assert_eq!(status, 200);
    assert_ne!(phones["id"], first["id"]);
    assert_eq!(stack.store.credit_balance(ORG).await.unwrap(), 75);

    let (status, polled) = api.get(person.id, "emails").await;
    assert_eq!((status, polled), (200, first));
    ledger(&stack.store, ORG, 100).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn insufficient_credits_is_402_and_writes_nothing() {
    let stack = start(Duration::from_secs(800), false).await;
    let person = known_person();
    add_person(&stack, ORG, &person).await;
    stack.store.grant_credits(ORG, 19).await.unwrap();
    let api = Api::new(&stack, ORG);

    let (status, body) = api.post(person.id, "phones").await;
    assert_eq!(status, 402);
    assert_eq!(
        body,
        json!({"error": {
            "code": "INSUFFICIENT_CREDITS",
            "message": "Insufficient credits for enrichment_phone. Required: 20 credits.",
            "details": {"operationType": "enrichment_phone", "count": 1, "required": 20}
        }})
    );
    assert_eq!(stack.store.credit_balance(ORG).await.unwrap(), 19);
    assert_eq!(api.get(person.id, "phones").await.0, 404);
    assert_eq!(queued_jobs(&stack).await, 0);

    // An org that never had credits is refused the same way.
    let other = Api::new(&stack, "org_empty");
    add_person(&stack, "org_empty", &person).await;
    assert_eq!(other.post(person.id, "emails").await.0, 402);
    ledger(&stack.store, ORG, 19).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn unknown_person_and_other_orgs_person_are_404_and_cost_nothing() {
    let stack = start(Duration::from_secs(800), false).await;
    let person = known_person();
    add_person(&stack, ORG, &person).await;
    stack.store.grant_credits(ORG, 50).await.unwrap();
    stack.store.grant_credits("org_other", 50).await.unwrap();
    let api = Api::new(&stack, ORG);
    let other = Api::new(&stack, "org_other");

    let (status, body) = api.post(Uuid::new_v4(), "emails").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "NOT_FOUND");
    assert_eq!(stack.store.credit_balance(ORG).await.unwrap(), 50);

    // Org A's enrichment is invisible to org B, and B cannot enrich A's person.
    assert_eq!(api.post(person.id, "emails").await.0, 200);
    let (status, body) = other.get(person.id, "emails").await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({"error": {"code": "NOT_FOUND", "message": "Enrichment not found"}})
    );
    assert_eq!(other.post(person.id, "emails").await.0, 404);
    assert_eq!(stack.store.credit_balance("org_other").await.unwrap(), 50);
    ledger(&stack.store, ORG, 50).await;
    ledger(&stack.store, "org_other", 50).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_the_spec_envelope() {
    let stack = start(Duration::from_secs(800), false).await;
    let api = Api::new(&stack, ORG);
    let person = Uuid::new_v4().to_string();
    let field_error = json!({"error": {
        "code": "VALIDATION_ERROR",
        "message": "Field query parameter is required and must be \"phones\" or \"emails\""
    }});
    for query in [
        "",
        "?field=",
        "?field=fax",
        "?field=EMAILS",
        "?field=emails&field=phones",
    ] {
        let (status, body) = api.call(reqwest::Method::POST, &person, query).await;
        assert_eq!((status, &body), (400, &field_error), "query {query:?}");
    }
    let id = Uuid::new_v4();
    for bad in [
        "not-a-uuid".to_string(),
        format!("{{{id}}}"),
        format!("urn:uuid:{id}"),
        id.simple().to_string(),
    ] {
        let (status, body) = api.call(reqwest::Method::GET, &bad, "?field=emails").await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(
            body,
            json!({"error": {"code": "VALIDATION_ERROR", "message": "personId path parameter is required and must be a UUID"}})
        );
    }
    let (status, _) = api
        .call(
            reqwest::Method::GET,
            &id.to_string().to_uppercase(),
            "?field=emails",
        )
        .await;
    assert_eq!(status, 404, "an uppercase UUID is a UUID");

    let url = format!(
        "{}/api/v1/operations/enrichment/{person}?field=emails",
        api.base
    );
    let response = api.http.post(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    let response = api
        .http
        .get(&url)
        .bearer_auth("not.a.jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response = api
        .http
        .delete(&url)
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["allow"], "GET, POST");
    stack.shutdown().await;
}

#[tokio::test]
async fn concurrent_posts_create_one_enrichment_one_debit_one_job() {
    let stack = start(Duration::from_secs(800), false).await;
    let person = known_person();
    add_person(&stack, ORG, &person).await;
    stack.store.grant_credits(ORG, 1000).await.unwrap();
    let api = Arc::new(Api::new(&stack, ORG));

    let posts: Vec<_> = (0..25)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move { api.post(person.id, "emails").await })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for post in posts {
        let (status, body) = post.await.unwrap();
        assert_eq!(status, 200, "{body}");
        ids.insert(body["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(stack.store.credit_balance(ORG).await.unwrap(), 995);
    assert_eq!(queued_jobs(&stack).await, 1);
    ledger(&stack.store, ORG, 1000).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn stale_pending_times_out_with_a_refund_on_get_and_on_post() {
    let stack = start(Duration::from_secs(1), false).await;
    let person = known_person();
    add_person(&stack, ORG, &person).await;
    stack.store.grant_credits(ORG, 100).await.unwrap();
    let api = Api::new(&stack, ORG);

    let (_, first) = api.post(person.id, "emails").await;
    assert_eq!(api.get(person.id, "emails").await.1["status"], "pending");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let (status, timed_out) = api.get(person.id, "emails").await;
    assert_eq!(status, 200);
    assert_eq!(timed_out["id"], first["id"]);
    assert_eq!(timed_out["status"], "timeout");
    assert_eq!(timed_out["error"], TIMEOUT_MESSAGE);
    assert_eq!(api.get(person.id, "emails").await.1["status"], "timeout");
    assert_eq!(
        stack.store.credit_balance(ORG).await.unwrap(),
        100,
        "a timeout gives the credits back"
    );

    let (status, second) = api.post(person.id, "emails").await;
    assert_eq!(status, 200);
    assert_eq!(second["status"], "pending");
    assert_ne!(second["id"], first["id"]);
    assert_eq!(stack.store.credit_balance(ORG).await.unwrap(), 95);

    // A stale pending enrichment is replaced by POST directly too, without a GET first.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, third) = api.post(person.id, "emails").await;
    assert_ne!(third["id"], second["id"]);
    assert_eq!(third["status"], "pending");
    assert_eq!(
        stack.store.credit_balance(ORG).await.unwrap(),
        95,
        "refunded the stale one, charged the new one"
    );
    ledger(&stack.store, ORG, 100).await;
    stack.shutdown().await;
}

struct BrokenQueue;

#[async_trait]
impl JobQueue for BrokenQueue {
    async fn enqueue(&self, _: &Job) -> Result<(), QueueError> {
        Err(QueueError("connection refused".into()))
    }

    async fn enqueue_held(
        &self,
        _: &[Job],
        _: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), QueueError> {
        Err(QueueError("connection refused".into()))
    }
}

#[tokio::test]
async fn failed_enqueue_marks_failed_and_refunds_then_a_new_post_is_charged_again() {
    let stack = start(Duration::from_secs(800), false).await;
    let person = known_person();
    add_person(&stack, ORG, &person).await;
    stack.store.grant_credits(ORG, 10).await.unwrap();
    let enrichments = Enrichments::new(stack.store.clone(), stack.config.clone());

    let error = enrichments
        .trigger(
            &BrokenQueue,
            &principal(ORG),
            person.id,
            Field::Emails,
            CacheUse::Allowed,
            api_deadline(),
        )
        .await
        .unwrap_err();
    assert_eq!((error.status_code(), error.code()), (503, "UNAVAILABLE"));
    assert_eq!(stack.store.credit_balance(ORG).await.unwrap(), 10);
    let failed = stack
        .store
        .get_enrichment(ORG, person.id, Field::Emails)
        .await
        .unwrap()
        .unwrap()
        .enrichment;
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(failed.error.as_deref(), Some(ENQUEUE_FAILED_MESSAGE));

    let api = Api::new(&stack, ORG);
    let (status, retried) = api.post(person.id, "emails").await;
    assert_eq!(status, 200);
    assert_eq!(retried["status"], "pending");
    assert_ne!(retried["id"], failed.id.to_string());
    assert_eq!(stack.store.credit_balance(ORG).await.unwrap(), 5);
    ledger(&stack.store, ORG, 10).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn an_org_over_its_enrichments_per_minute_gets_429_and_pays_nothing_for_it() {
    let stack = start(Duration::from_secs(800), false).await;
    let people: Vec<Person> = (0..3).map(|_| known_person()).collect();
    for person in &people {
        add_person(&stack, ORG, person).await;
    }
    stack.store.grant_credits(ORG, 100).await.unwrap();
    let mut config = stack.config.clone();
    config.org_enrichments_per_minute = 2;
    let enrichments = Enrichments::new(stack.store.clone(), config);
    let queue = SqsJobQueue::new(stack.sqs.clone(), stack.info.queue_url.clone());
    // Three POSTs in the same minute.
    let second = chrono::Utc::now().timestamp().rem_euclid(60);
    if second > 50 {
        tokio::time::sleep(Duration::from_secs((61 - second).unsigned_abs())).await;
    }
    let mut answers = Vec::new();
    for person in &people {
        answers.push(
            enrichments
                .trigger(
                    &queue,
                    &principal(ORG),
                    person.id,
                    Field::Emails,
                    CacheUse::Allowed,
                    api_deadline(),
                )
                .await,
        );
    }
    assert!(answers[0].is_ok() && answers[1].is_ok());
    let limited = answers[2].clone().unwrap_err();
    assert_eq!(
        (limited.status_code(), limited.code()),
        (429, "RATE_LIMITED")
    );
    let retry_after = limited.retry_after_seconds().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // A replay is no new enrichment: it is answered, not limited.
    let replay = enrichments
        .trigger(
            &queue,
            &principal(ORG),
            people[0].id,
            Field::Emails,
            CacheUse::Allowed,
            api_deadline(),
        )
        .await
        .unwrap();
    assert_eq!(Some(replay.id), answers[0].as_ref().ok().map(|e| e.id));
    assert_eq!(stack.store.credit_balance(ORG).await.unwrap(), 90);
    assert!(
        stack
            .store
            .get_enrichment(ORG, people[2].id, Field::Emails)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(queued_jobs(&stack).await, 2);
    ledger(&stack.store, ORG, 100).await;
    stack.shutdown().await;
}

/// A scripted provider that counts its calls: it finds `email` (or answers no match when
/// `None`) after `delay`.
struct FakeProvider {
    name: &'static str,
    /// Found (`Some`), no match (`None`), or `Some("503")`: the provider fails with HTTP 503.
    email: Option<&'static str>,
    delay: Duration,
    calls: AtomicUsize,
}

impl FakeProvider {
    fn new(name: &'static str, email: Option<&'static str>, delay: Duration) -> Arc<Self> {
        Arc::new(FakeProvider {
            name,
            email,
            delay,
            calls: AtomicUsize::new(0),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Provider for FakeProvider {
    fn name(&self) -> &'static str {
        self.name
    }
    fn can_search(&self, _: Field, _: &PersonQuery) -> bool {
        true
    }
    async fn find(&self, _: Field, _: &PersonQuery) -> Result<ProviderAnswer, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        Ok(match self.email {
            Some("503") => return Err(ProviderError::Status(503)),
            Some(email) => ProviderAnswer::Found(vec![RawContact {
                value: email.into(),
                kind: Some("work".into()),
                status: None,
                confidence: None,
            }]),
            None => ProviderAnswer::NoMatch,
        })
    }
}

fn worker_with(
    stack: &Stack,
    providers: Vec<Arc<FakeProvider>>,
    config: enrichment::config::Config,
) -> Worker {
    worker_on(stack.store.clone(), providers, config)
}

/// A worker over `store` (e.g. a store whose client fails on purpose) with `providers` for emails.
fn worker_on(
    store: Store,
    providers: Vec<Arc<FakeProvider>>,
    config: enrichment::config::Config,
) -> Worker {
    let providers = providers
        .into_iter()
        .map(|p| p as Arc<dyn Provider>)
        .collect();
    Worker::new(
        store,
        Cascade::new(providers, vec![], Duration::from_secs(5)),
        config,
    )
}

/// An SQS record as the event source mapping hands it to the worker.
fn sqs_record(
    message_id: &str,
    receipt_handle: Option<String>,
    body: &str,
    receives: u32,
) -> aws_lambda_events::sqs::SqsMessage {
    let mut record = aws_lambda_events::sqs::SqsMessage::default();
    record.message_id = Some(message_id.into());
    record.receipt_handle = receipt_handle;
    record.body = Some(body.into());
    record
        .attributes
        .insert("ApproximateReceiveCount".into(), receives.to_string());
    record
}

async fn pending_job(stack: &Stack, org: &str, person: &Person) -> Job {
    if stack
        .store
        .get_person(org, person.id)
        .await
        .unwrap()
        .is_none()
    {
        add_person(stack, org, person).await;
    }
    stack.store.grant_credits(org, 5).await.unwrap();
    let (status, body) = Api::new(stack, org).post(person.id, "emails").await;
    assert_eq!(status, 200, "{body}");
    Job {
        enrichment_id: body["id"].as_str().unwrap().parse().unwrap(),
        org_id: org.into(),
        person_id: person.id,
        field: Field::Emails,
        cache: Default::default(),
        bulk: false,
    }
}

/// An API function's deadline, as Lambda gives the trigger.
fn api_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + enrichment::budget::API_FUNCTION_TIMEOUT
}

fn soon() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(60)
}

fn completed(outcome: JobOutcome) -> enrichment::domain::Enrichment {
    match outcome {
        JobOutcome::Completed(e) => *e,
        other => panic!("the job was not completed: {other:?}"),
    }
}

#[tokio::test]
async fn a_person_known_to_the_global_cache_costs_another_org_no_provider_call() {
    let stack = start(Duration::from_secs(800), false).await;
    let person = known_person();
    let provider = FakeProvider::new("fake", Some("ada@analytical-engines.test"), Duration::ZERO);
    let worker = worker_with(&stack, vec![provider.clone()], stack.config.clone());

    let job_a = pending_job(&stack, ORG, &person).await;
    let first = completed(worker.run(&job_a, soon()).await.unwrap());
    let job_b = pending_job(&stack, "org_other", &person).await;
    let second = completed(worker.run(&job_b, soon()).await.unwrap());

    assert_eq!(provider.calls(), 1);
    assert_eq!(second.data_found, Some(true));
    assert!(first.global_enrichment_id.is_some());
    assert_eq!(second.global_enrichment_id, first.global_enrichment_id);
    let stored = stack
        .store
        .get_person("org_other", person.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.emails[0].value, "ada@analytical-engines.test");
    ledger(&stack.store, ORG, 5).await;
    ledger(&stack.store, "org_other", 5).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn an_expired_cache_entry_is_not_served() {
    let stack = start(Duration::from_secs(800), false).await;
    let person = known_person();
    let provider = FakeProvider::new("fake", Some("ada@analytical-engines.test"), Duration::ZERO);
    let mut config = stack.config.clone();
    config.cache_ttl = Duration::ZERO;
    let worker = worker_with(&stack, vec![provider.clone()], config);

    let first = completed(
        worker
            .run(&pending_job(&stack, ORG, &person).await, soon())
            .await
            .unwrap(),
    );
    let second = completed(
        worker
            .run(&pending_job(&stack, "org_other", &person).await, soon())
            .await
            .unwrap(),
    );
    assert_eq!(provider.calls(), 2);
    assert_ne!(second.global_enrichment_id, first.global_enrichment_id);
    ledger(&stack.store, ORG, 5).await;
    ledger(&stack.store, "org_other", 5).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn two_orgs_enriching_the_same_person_at_once_run_the_providers_once() {
    let stack = start(Duration::from_secs(800), false).await;
    let person = known_person();
    let provider = FakeProvider::new(
        "fake",
        Some("ada@analytical-engines.test"),
        Duration::from_millis(800),
    );
    let worker = worker_with(&stack, vec![provider.clone()], stack.config.clone());
    let job_a = pending_job(&stack, ORG, &person).await;
    let job_b = pending_job(&stack, "org_other", &person).await;

    // B waits for A's run without holding a worker: deferred until A's lease would lapse.
    let (a, b) = tokio::join!(worker.run(&job_a, soon()), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        worker.run(&job_b, soon()).await
    });
    let a = completed(a.unwrap());
    let JobOutcome::Deferred { delay, .. } = b.unwrap() else {
        panic!("B was not deferred")
    };
    assert!(
        delay >= Duration::from_secs(1) && delay <= enrichment::budget::MAX_DEFER,
        "{delay:?}"
    );
    // B comes back (SQS delays its message) and is served A's result.
    let b = completed(worker.run(&job_b, soon()).await.unwrap());
    assert_eq!(provider.calls(), 1);
    assert_eq!((a.data_found, b.data_found), (Some(true), Some(true)));
    assert_eq!(a.global_enrichment_id, b.global_enrichment_id);
    ledger(&stack.store, ORG, 5).await;
    ledger(&stack.store, "org_other", 5).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn a_redelivered_job_does_not_ask_again_a_provider_that_answered() {
    let stack = start(Duration::from_secs(800), false).await;
    let person = known_person();
    let job = pending_job(&stack, ORG, &person).await;
    let miss = FakeProvider::new("miss", None, Duration::ZERO);
    let hang = FakeProvider::new(
        "hang",
        Some("ada@analytical-engines.test"),
        Duration::from_secs(3600),
    );
    let mut config = stack.config.clone();
    config.lease_margin = Duration::from_millis(1);
    // A 1 s provider budget: the claim renewed before each call lapses 1 s after it.
    let worker = |providers: Vec<Arc<FakeProvider>>| {
        let providers = providers
            .into_iter()
            .map(|p| p as Arc<dyn Provider>)
            .collect();
        Worker::new(
            stack.store.clone(),
            Cascade::new(providers, vec![], Duration::from_secs(1)).with_retries(0),
            config.clone(),
        )
    };

    // The first attempt dies while the second provider hangs (as a Lambda that is killed).
    let first = worker(vec![miss.clone(), hang.clone()]);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), first.run(&job, soon()))
            .await
            .is_err()
    );
    assert_eq!((miss.calls(), hang.calls()), (1, 1));

    // A redelivery while the dead worker's claim still runs is deferred, not dropped...
    let found = FakeProvider::new("hang", Some("ada@analytical-engines.test"), Duration::ZERO);
    let second = worker(vec![miss.clone(), found.clone()]);
    assert!(matches!(
        second.run(&job, soon()).await.unwrap(),
        JobOutcome::Deferred { .. }
    ));
    // ...and once it has lapsed, resumes after the provider that already answered.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let done = completed(second.run(&job, soon()).await.unwrap());
    assert_eq!(done.status, Status::Finished);
    assert_eq!(done.data_found, Some(true));
    assert_eq!((miss.calls(), found.calls()), (1, 1));
    ledger(&stack.store, ORG, 5).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn duplicate_delivery_runs_the_providers_once() {
    let stack = start(Duration::from_secs(800), false).await;
    let person = known_person();
    add_person(&stack, ORG, &person).await;
    stack.store.grant_credits(ORG, 10).await.unwrap();
    let (_, body) = Api::new(&stack, ORG).post(person.id, "emails").await;

    let provider = FakeProvider::new("fake", Some("Ada@Analytical-Engines.test"), Duration::ZERO);
    let worker = worker_with(&stack, vec![provider.clone()], stack.config.clone());
    let job = Job {
        enrichment_id: body["id"].as_str().unwrap().parse().unwrap(),
        org_id: ORG.into(),
        person_id: person.id,
        field: Field::Emails,
        cache: Default::default(),
        bulk: false,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (a, b) = tokio::join!(worker.run(&job, deadline), worker.run(&job, deadline));
    let outcomes = [a.unwrap(), b.unwrap()];
    // The second delivery finds the job held by a live worker: deferred, no provider call.
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, JobOutcome::Deferred { .. }))
            .count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        worker.run(&job, deadline).await.unwrap(),
        JobOutcome::Dropped
    );
    assert_eq!(provider.calls(), 1);

    let done = stack
        .store
        .get_enrichment(ORG, person.id, Field::Emails)
        .await
        .unwrap()
        .unwrap()
        .enrichment;
    assert_eq!(done.status, Status::Finished);
    assert_eq!(done.data_found, Some(true));
    let stored = stack
        .store
        .get_person(ORG, person.id)
        .await
        .unwrap()
        .unwrap();
    let emails: Vec<_> = stored.emails.iter().map(|e| e.value.as_str()).collect();
    assert_eq!(emails, ["ada@analytical-engines.test"]);
    ledger(&stack.store, ORG, 10).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn full_run_finishes_with_data_and_updates_the_person() {
    let stack = start(Duration::from_secs(800), true).await;
    let person = known_person();
    add_person(&stack, ORG, &person).await;
    stack.store.grant_credits(ORG, 10).await.unwrap();
    let api = Api::new(&stack, ORG);

    let (status, pending) = api.post(person.id, "emails").await;
    assert_eq!((status, pending["status"].as_str()), (200, Some("pending")));
    let mut finished = Value::Null;
    for _ in 0..150 {
        let (_, body) = api.get(person.id, "emails").await;
        if body["status"] != "pending" {
            finished = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(finished["status"], "finished", "{finished}");
    assert_eq!(finished["dataFound"], true);
    assert_eq!(finished["id"], pending["id"]);
    assert!(finished["globalEnrichmentId"].is_string());
    let stored = stack
        .store
        .get_person(ORG, person.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.emails.len(), 1, "{stored:?}");
    assert!(stored.emails[0].value.ends_with("@analytical-engines.test"));
    assert_eq!(stored.emails[0].provider, "hunter");
    assert_eq!(queued_jobs(&stack).await, 0);
    ledger(&stack.store, ORG, 10).await;
    stack.shutdown().await;
}

/// The operation of an SDK request: the `X-Amz-Target` header of the DynamoDB and SQS JSON
/// protocols without its service prefix (`DynamoDB_20120810.GetItem` -> `GetItem`).
fn operation<'a>(context: &'a BeforeTransmitInterceptorContextRef<'_>) -> &'a str {
    let target = context
        .request()
        .headers()
        .get("x-amz-target")
        .unwrap_or("unknown");
    target.rsplit('.').next().unwrap_or(target)
}

/// Counts the requests an SDK client sends, by operation (the `X-Amz-Target` header of the
/// DynamoDB and SQS JSON protocols, `DynamoDB_20120810.GetItem` -> `GetItem`), retries included.
#[derive(Clone, Debug, Default)]
struct CallCounter(Arc<std::sync::Mutex<Vec<String>>>);

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "CallCounter"
    }
    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.lock().unwrap().push(operation(context).to_string());
        Ok(())
    }
}

impl CallCounter {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[tokio::test]
async fn a_new_post_makes_one_dynamodb_and_one_sqs_call_a_replay_one_and_get_one() {
    let stack = start(Duration::from_secs(1), false).await;
    let person = known_person();
    add_person(&stack, ORG, &person).await;
    stack.store.grant_credits(ORG, 100).await.unwrap();
    let dynamodb_calls = CallCounter::default();
    let sqs_calls = CallCounter::default();
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        dynamodb_config(&stack.info.dynamodb_url)
            .interceptor(dynamodb_calls.clone())
            .build(),
    );
    let sqs = aws_sdk_sqs::Client::from_conf(
        sqs_config(&stack.info.sqs_url)
            .interceptor(sqs_calls.clone())
            .build(),
    );
    let enrichments = Enrichments::new(
        Store::new(dynamodb, stack.store.table()),
        stack.config.clone(),
    );
    let queue = SqsJobQueue::new(sqs, stack.info.queue_url.clone());
    let caller = principal(ORG);

    enrichments
        .trigger(
            &queue,
            &caller,
            person.id,
            Field::Emails,
            CacheUse::Allowed,
            api_deadline(),
        )
        .await
        .unwrap();
    assert_eq!(dynamodb_calls.take(), ["TransactWriteItems"]);
    assert_eq!(sqs_calls.take(), ["SendMessage"]);

    enrichments
        .trigger(
            &queue,
            &caller,
            person.id,
            Field::Emails,
            CacheUse::Allowed,
            api_deadline(),
        )
        .await
        .unwrap();
    assert_eq!(dynamodb_calls.take(), ["TransactWriteItems"]);
    assert!(sqs_calls.take().is_empty());

    enrichments
        .status(&caller, person.id, Field::Emails)
        .await
        .unwrap();
    assert_eq!(dynamodb_calls.take(), ["GetItem"]);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let timed_out = enrichments
        .status(&caller, person.id, Field::Emails)
        .await
        .unwrap();
    assert_eq!(timed_out.status, Status::Timeout);
    assert_eq!(dynamodb_calls.take(), ["GetItem", "TransactWriteItems"]);
    ledger(&stack.store, ORG, 100).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn provider_keys_are_read_from_the_secrets_the_template_names() {
    let stack = start(Duration::from_secs(800), false).await;
    let client = aws_sdk_secretsmanager::Client::new(&local_stack::sdk_config(&stack.info.sqs_url));
    let arn = client
        .create_secret()
        .name("enrichment/hunter")
        .secret_string(" hunter-key-123\n")
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    let vars = [
        ("HUNTER_API_KEY_SECRET_ARN".to_string(), arn.clone()),
        ("PDL_API_KEY_SECRET_ARN".to_string(), String::new()),
        ("TABLE_NAME".to_string(), "t".to_string()),
    ];
    let keys = enrichment::secrets::resolve_api_keys(&client, vars)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys["HUNTER_API_KEY"], "hunter-key-123");

    let missing = [("PDL_API_KEY_SECRET_ARN".to_string(), format!("{arn}-gone"))];
    let error = enrichment::secrets::resolve_api_keys(&client, missing)
        .await
        .unwrap_err();
    assert_eq!(error.variable, "PDL_API_KEY_SECRET_ARN");
    stack.shutdown().await;
}

#[tokio::test]
async fn the_step_functions_orchestrator_starts_one_execution_per_enrichment() {
    let stack = start(Duration::from_secs(800), false).await;
    let person = known_person();
    add_person(&stack, ORG, &person).await;
    stack.store.grant_credits(ORG, 10).await.unwrap();
    let sfn = aws_sdk_sfn::Client::new(&local_stack::sdk_config(&stack.info.sqs_url));
    let definition =
        json!({"StartAt": "Enrich", "States": {"Enrich": {"Type": "Pass", "End": true}}});
    let arn = sfn
        .create_state_machine()
        .name("enrichment-cascade-local")
        .definition(definition.to_string())
        .role_arn("arn:aws:iam::123456789012:role/enrichment-cascade")
        .send()
        .await
        .unwrap()
        .state_machine_arn;
    let queue = enrichment::queue::StepFunctionsJobQueue::new(sfn.clone(), arn.clone());
    let enrichments = Enrichments::new(stack.store.clone(), stack.config.clone());

    let created = enrichments
        .trigger(
            &queue,
            &principal(ORG),
            person.id,
            Field::Emails,
            CacheUse::Allowed,
            api_deadline(),
        )
        .await
        .unwrap();
    // A retry of the same job (as after a lost response) does not start a second execution.
    queue.enqueue(&Job::from(&created)).await.unwrap();
    let executions = sfn
        .list_executions()
        .state_machine_arn(&arn)
        .send()
        .await
        .unwrap();
    let names: Vec<_> = executions
        .executions()
        .iter()
        .map(|e| e.name().to_string())
        .collect();
    assert_eq!(names, [created.id.to_string()]);
    let execution = sfn
        .describe_execution()
        .execution_arn(executions.executions()[0].execution_arn())
        .send()
        .await
        .unwrap();
    let input: Job = serde_json::from_str(execution.input().unwrap()).unwrap();
    assert_eq!(input, Job::from(&created));
    assert_eq!(stack.store.credit_balance(ORG).await.unwrap(), 5);
    ledger(&stack.store, ORG, 10).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn a_failed_record_comes_back_after_the_backoff_not_the_visibility_timeout() {
    let stack = start(Duration::from_secs(800), false).await;
    let queue = &stack.info.queue_url;
    stack
        .sqs
        .send_message()
        .queue_url(queue)
        .message_body("not a job")
        .send()
        .await
        .unwrap();
    let receive = || async {
        stack
            .sqs
            .receive_message()
            .queue_url(queue)
            .visibility_timeout(60)
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
            )
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default()
    };
    let received = receive().await;
    assert_eq!(received.len(), 1);
    let record = sqs_record(
        received[0].message_id().unwrap(),
        received[0].receipt_handle.clone(),
        received[0].body().unwrap(),
        1,
    );

    let jobs =
        SqsJobQueue::new(stack.sqs.clone(), queue.clone()).with_retry_base(Duration::from_secs(1));
    let worker = worker_with(&stack, vec![], stack.config.clone()).with_queue(jobs);
    let response = worker.run_batch(&[record], soon()).await;
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(
        response.batch_item_failures[0].item_identifier,
        received[0].message_id.clone().unwrap()
    );

    assert!(
        receive().await.is_empty(),
        "visible again before the backoff"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let again = receive().await;
    assert_eq!(
        again.len(),
        1,
        "not back after the 1 s backoff (the visibility timeout was 60 s)"
    );
    assert_eq!(again[0].message_id, received[0].message_id);
    stack.shutdown().await;
}

#[tokio::test]
async fn an_enrichment_that_fails_gives_its_credits_back() {
    let stack = start(Duration::from_secs(800), false).await;
    let person = known_person();
    let job = pending_job(&stack, ORG, &person).await;
    assert_eq!(stack.store.credit_balance(ORG).await.unwrap(), 0);
    let down = FakeProvider::new("down", Some("503"), Duration::ZERO);
    let failed = completed(
        worker_with(&stack, vec![down.clone()], stack.config.clone())
            .run(&job, soon())
            .await
            .unwrap(),
    );
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(
        failed.error.as_deref(),
        Some("All providers failed: down: HTTP 503")
    );
    assert_eq!(down.calls(), 2, "one call and one retry after the 5xx");
    assert_eq!(stack.store.credit_balance(ORG).await.unwrap(), 5);
    let (_, body) = Api::new(&stack, ORG).get(person.id, "emails").await;
    assert_eq!(body["status"], "failed");
    ledger(&stack.store, ORG, 5).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn nobody_knowing_a_person_is_cached_but_a_miss_next_to_a_failure_is_failed() {
    let stack = start(Duration::from_secs(800), false).await;
    let person = known_person();
    let miss = FakeProvider::new("miss", None, Duration::ZERO);
    let worker = worker_with(&stack, vec![miss.clone()], stack.config.clone());
    let a = completed(
        worker
            .run(&pending_job(&stack, ORG, &person).await, soon())
            .await
            .unwrap(),
    );
    let b = completed(
        worker
            .run(&pending_job(&stack, "org_other", &person).await, soon())
            .await
            .unwrap(),
    );
    assert_eq!((a.data_found, b.data_found), (Some(false), Some(false)));
    assert_eq!(
        miss.calls(),
        1,
        "the second org's enrichment came from the cached miss"
    );
    assert!(a.global_enrichment_id.is_some());
    assert_eq!(b.global_enrichment_id, a.global_enrichment_id);

    // A miss next to a provider that failed is an incomplete search: failed, refunded, not
    // kept, so the next org (or a new POST) asks again.
    let other = Person {
        id: Uuid::new_v4(),
        first_name: Some("Grace".into()),
        last_name: Some("Hopper".into()),
        company_domain: Some("navy.test".into()),
        ..Person::default()
    };
    let miss = FakeProvider::new("miss", None, Duration::ZERO);
    let down = FakeProvider::new("down", Some("503"), Duration::ZERO);
    let worker = worker_with(
        &stack,
        vec![miss.clone(), down.clone()],
        stack.config.clone(),
    );
    let balance = stack.store.credit_balance(ORG).await.unwrap();
    let a = completed(
        worker
            .run(&pending_job(&stack, ORG, &other).await, soon())
            .await
            .unwrap(),
    );
    let b = completed(
        worker
            .run(&pending_job(&stack, "org_other", &other).await, soon())
            .await
            .unwrap(),
    );
    assert_eq!((a.status, b.status), (Status::Failed, Status::Failed));
    assert_eq!(
        a.error.as_deref(),
        Some("All providers failed: down: HTTP 503")
    );
    assert_eq!(a.global_enrichment_id, None);
    assert_eq!(miss.calls(), 2);
    assert_eq!(
        stack.store.credit_balance(ORG).await.unwrap(),
        balance + 5,
        "granted 5, charged 5, refunded 5"
    );
    ledger(&stack.store, ORG, 10).await;
    ledger(&stack.store, "org_other", 10).await;
    stack.shutdown().await;
}

/// A worker whose DynamoDB client fails its first `TransactWriteItems`, finding emails with
/// `provider`.
fn worker_failing_first_transaction(stack: &Stack, provider: Arc<FakeProvider>) -> Worker {
    let failing = aws_sdk_dynamodb::Client::from_conf(
        dynamodb_config(&stack.info.dynamodb_url)
            .interceptor(FailFirstTransaction::default())
            .build(),
    );
    worker_on(
        Store::new(failing, stack.store.table()),
        vec![provider],
        stack.config.clone(),
    )
}

/// Fails the first `TransactWriteItems` request a client sends (as a DynamoDB outage would).
#[derive(Clone, Debug, Default)]
struct FailFirstTransaction(Arc<AtomicUsize>);

impl Intercept for FailFirstTransaction {
    fn name(&self) -> &'static str {
        "FailFirstTransaction"
    }
    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if operation(context) == "TransactWriteItems" && self.0.fetch_add(1, Ordering::SeqCst) == 0
        {
            return Err("injected DynamoDB failure".into());
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_job_failing_on_its_last_receive_ends_failed_and_refunded() {
    let stack = start(Duration::from_secs(800), false).await;
    let person = known_person();
    let job = pending_job(&stack, ORG, &person).await;
    assert_eq!(stack.store.credit_balance(ORG).await.unwrap(), 0);
    let provider = FakeProvider::new("fake", Some("ada@analytical-engines.test"), Duration::ZERO);
    let worker = worker_failing_first_transaction(&stack, provider.clone());
    let body = serde_json::to_string(&job).unwrap();
    let response = worker
        .run_batch(&[sqs_record("m-1", None, &body, 5)], soon())
        .await;
    assert_eq!(
        response.batch_item_failures.len(),
        1,
        "the message still goes to the DLQ"
    );
    let (_, body) = Api::new(&stack, ORG).get(person.id, "emails").await;
    assert_eq!(body["status"], "failed");
    assert_eq!(body["error"], enrichment::worker::GAVE_UP_MESSAGE);
    assert_eq!(stack.store.credit_balance(ORG).await.unwrap(), 5);
    ledger(&stack.store, ORG, 5).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn a_job_failing_before_its_last_receive_stays_pending_for_the_retry() {
    let stack = start(Duration::from_secs(800), false).await;
    let person = known_person();
    let job = pending_job(&stack, ORG, &person).await;
    let provider = FakeProvider::new("fake", Some("ada@analytical-engines.test"), Duration::ZERO);
    let worker = worker_failing_first_transaction(&stack, provider.clone());
    let record = sqs_record("m-1", None, &serde_json::to_string(&job).unwrap(), 1);

    assert_eq!(
        worker
            .run_batch(std::slice::from_ref(&record), soon())
            .await
            .batch_item_failures
            .len(),
        1
    );
    assert_eq!(
        Api::new(&stack, ORG).get(person.id, "emails").await.1["status"],
        "pending"
    );
    // The retry runs at once: the failed attempt gave its claim up.
    assert!(
        worker
            .run_batch(&[record], soon())
            .await
            .batch_item_failures
            .is_empty()
    );
    assert_eq!(
        Api::new(&stack, ORG).get(person.id, "emails").await.1["status"],
        "finished"
    );
    assert_eq!(
        provider.calls(),
        2,
        "the failed attempt wrote nothing, so the retry asks again"
    );
    ledger(&stack.store, ORG, 5).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn batch_query_answers_the_existing_enrichments_in_task_order_without_credits() {
    let stack = start(Duration::from_secs(800), false).await;
    let (ada, bruno) = (known_person(), known_person());
    add_person(&stack, ORG, &ada).await;
    add_person(&stack, ORG, &bruno).await;
    stack.store.grant_credits(ORG, 100).await.unwrap();
    let api = Api::new(&stack, ORG);
    let (_, ada_phones) = api.post(ada.id, "phones").await;
    let (_, bruno_emails) = api.post(bruno.id, "emails").await;
    let url = format!(
        "{}/api/v1/operations/enrichment/batch/query",
        stack.info.gateway_url
    );
    let query = |tasks: Value| {
        let request = reqwest::Client::new()
            .post(&url)
            .bearer_auth(&api.token)
            .json(&json!({ "tasks": tasks }));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, found) = query(json!([
        {"entityId": bruno.id, "field": "emails"},
        {"entityId": ada.id, "field": "emails"},
        {"entityId": ada.id, "field": "phones", "entityType": "person"},
        {"entityId": bruno.id, "field": "emails"},
        {"entityId": ada.id, "field": "summary"},
        {"entityId": ada.id, "field": "emails", "entityType": "company"},
    ]))
    .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found, json!([bruno_emails, ada_phones]));
    for (tasks, field) in [
        (json!([]), "tasks"),
        (
            json!(
                (0..201)
                    .map(|_| json!({"entityId": ada.id, "field": "emails"}))
                    .collect::<Vec<_>>()
            ),
            "tasks",
        ),
        (
            json!([{"entityId": ada.id, "field": "emails"}, {"entityId": "nope", "field": "emails"}]),
            "tasks[1].entityId",
        ),
        (
            json!([{"entityId": ada.id, "field": "fax"}]),
            "tasks[0].field",
        ),
        (
            json!([{"entityId": ada.id, "field": "emails", "entityType": "planet"}]),
            "tasks[0].entityType",
        ),
    ] {
        let (status, answer) = query(tasks).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["details"]["field"], field, "{answer}");
    }
    ledger(&stack.store, ORG, 100).await;
    assert_eq!(
        stack.store.credit_balance(ORG).await.unwrap(),
        75,
        "queries cost nothing"
    );

    // Past the maximum age, a query times the pending ones out and refunds them, as GET does.
    let mut config = stack.config.clone();
    config.max_age = Duration::ZERO;
    let timed_out = Enrichments::new(stack.store.clone(), config)
        .query(
            &principal(ORG),
            &[(ada.id, Field::Phones), (bruno.id, Field::Emails)],
        )
        .await
        .unwrap();
    assert_eq!(
        timed_out.iter().map(|e| e.status).collect::<Vec<_>>(),
        [Status::Timeout, Status::Timeout]
    );
    assert_eq!(
        ledger(&stack.store, ORG, 100).await,
        (100, vec![-20, -5, 5, 20])
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_job_goes_to_its_orgs_fair_queue_group() {
    let stack = start(Duration::from_secs(800), false).await;
    let person = known_person();
    add_person(&stack, ORG, &person).await;
    stack.store.grant_credits(ORG, 100).await.unwrap();
    let (status, _) = Api::new(&stack, ORG).post(person.id, "emails").await;
    assert_eq!(status, 200);

    let received = stack
        .sqs
        .receive_message()
        .queue_url(&stack.info.queue_url)
        .max_number_of_messages(10)
        .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    // The job (the timeout check is delayed until the maximum age).
    assert_eq!(received.len(), 1);
    let group = received[0]
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId));
    assert_eq!(group.map(String::as_str), Some(ORG));
    let job: Job = serde_json::from_str(received[0].body().unwrap()).unwrap();
    assert_eq!((job.org_id.as_str(), job.person_id), (ORG, person.id));
    ledger(&stack.store, ORG, 100).await;
    stack.shutdown().await;
}
