//! Least privilege, derived from the code. The emulators have no IAM, so nothing else here would
//! notice a function whose role misses an action it uses (or holds one it never uses).
//!
//! Every AWS request the functions make is recorded by an SDK interceptor on their DynamoDB, SQS,
//! Step Functions and Secrets Manager clients, while each function's scenarios run through the
//! same code as the Lambdas ([`Enrichments::trigger`], [`Enrichments::status`],
//! [`Enrichments::query`], [`Enrichments::enrich_batch`], [`Enrichments::enrich_bulk`],
//! [`Enrichments::cancel`], [`People`], [`Credits`], [`Worker::handle`], [`resolve_api_keys`],
//! the webhook settings of [`Webhooks`], [`Webhooks::relay_stream`], [`Webhooks::deliver_batch`])
//! against a private local stack. Each request is mapped
//! to the IAM actions that authorize it and to the template resource it touched ([`permissions`]).
//! `template.yaml` is then read for what each function's role allows, once per orchestrator
//! (`Orchestrator=sqs`, the default, and `stepfunctions`), and the two must agree both ways:
//! every action a scenario used is allowed, and nothing is allowed beyond what the scenarios used
//! plus the few needs the code does not make itself ([`platform_needs`]).
//!
//! Adding a scenario: write an `async fn(env: &Env)` that runs the function under test through
//! `env` (its clients are the recorded ones) and add one line to [`scenarios`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::dynamodb::Event as StreamEvent;
use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use enrichment::auth::Principal;
use enrichment::batch::{BulkFilters, Selection};
use enrichment::credits::{Credits, parse_history};
use enrichment::domain::Job;
use enrichment::domain::{CacheUse, Enrichment, Field, Person, Status};
use enrichment::enrichment::{ENQUEUE_FAILED_MESSAGE, Enrichments};
use enrichment::error::ApiError;
use enrichment::identity::fingerprint;
use enrichment::people::People;
use enrichment::providers::cascade::Cascade;
use enrichment::providers::{PersonQuery, Provider, ProviderAnswer, ProviderError, RawContact};
use enrichment::queue::{JobQueue, QueueError, SqsJobQueue, StepFunctionsJobQueue};
use enrichment::secrets::{SECRET_SUFFIX, SecretsClient, resolve_api_keys};
use enrichment::store::{CHUNK, CacheLease, OUTBOX_SK_PREFIX, Store, TIMEOUT_MESSAGE, org_pk};
use enrichment::webhooks::{
    DeliveryMessage, DeliveryQueue, Webhook, WebhookConfig, Webhooks, new_secret,
};
use enrichment::worker::{GAVE_UP_MESSAGE, Worker, WorkerEvent};
use local_stack::{Options, Stack, dynamodb_config, sdk_config, sqs_config};
use serde_json::{Value as Json, json};
use serde_yaml::Value as Yaml;
use uuid::Uuid;

// ------------------------------------------------------------------ the functions and scenarios

/// The Lambda functions of `template.yaml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Function {
    Trigger,
    Status,
    Worker,
    People,
    Batch,
    Credits,
    Cancel,
    WebhookSettings,
    OutboxRelay,
    WebhookDelivery,
}

impl Function {
    const ALL: [Function; 10] = [
        Function::Trigger,
        Function::Status,
        Function::Worker,
        Function::People,
        Function::Batch,
        Function::Credits,
        Function::Cancel,
        Function::WebhookSettings,
        Function::OutboxRelay,
        Function::WebhookDelivery,
    ];

    fn name(self) -> &'static str {
        match self {
            Function::Trigger => "trigger",
            Function::Status => "status",
            Function::Worker => "worker",
            Function::People => "people",
            Function::Batch => "batch",
            Function::Credits => "credits",
            Function::Cancel => "cancel",
            Function::WebhookSettings => "webhook-settings",
            Function::OutboxRelay => "outbox-relay",
            Function::WebhookDelivery => "webhook-delivery",
        }
    }

    /// Its logical id in `template.yaml`.
    fn logical_id(self) -> &'static str {
        match self {
            Function::Trigger => "TriggerFunction",
            Function::Status => "StatusFunction",
            Function::Worker => "WorkerFunction",
            Function::People => "PeopleFunction",
            Function::Batch => "BatchFunction",
            Function::Credits => "CreditsFunction",
            Function::Cancel => "CancelFunction",
            Function::WebhookSettings => "WebhookSettingsFunction",
            Function::OutboxRelay => "OutboxRelayFunction",
            Function::WebhookDelivery => "WebhookDeliveryFunction",
        }
    }
}

/// The template's `Orchestrator` parameter: what runs the worker, and what the trigger and the
/// batch function start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Orchestrator {
    /// The default: the trigger sends to the jobs queue and the batch function to the bulk jobs
    /// queue, whose event source mappings feed the worker (`QUEUE_URL`, `BULK_QUEUE_URL`).
    Sqs,
    /// The trigger and the batch function start one execution per enrichment
    /// (`STATE_MACHINE_ARN`); the state machine invokes the worker with the job (no queue).
    StepFunctions,
}

impl Orchestrator {
    const ALL: [Orchestrator; 2] = [Orchestrator::Sqs, Orchestrator::StepFunctions];

    /// The parameter value in `template.yaml`.
    fn parameter(self) -> &'static str {
        match self {
            Orchestrator::Sqs => "sqs",
            Orchestrator::StepFunctions => "stepfunctions",
        }
    }
}

type Run = for<'a> fn(&'a Env) -> Pin<Box<dyn Future<Output = ()> + 'a>>;

/// One thing a function does, run as the Lambda runs it.
struct Scenario {
    function: Function,
    name: &'static str,
    /// The deployments it applies to (both unless it depends on how the worker is fed).
    orchestrators: &'static [Orchestrator],
    run: Run,
}

impl Scenario {
    fn new(function: Function, name: &'static str, run: Run) -> Self {
        Scenario {
            function,
            name,
            orchestrators: &Orchestrator::ALL,
            run,
        }
    }

    /// Only for the SQS-fed worker (receive counts, receipt handles, the queue a record came
    /// from).
    fn sqs_only(mut self) -> Self {
        self.orchestrators = &[Orchestrator::Sqs];
        self
    }
}

/// Every scenario, one line each. A scenario runs once per orchestrator it applies to, in an
/// org of its own.
fn scenarios() -> Vec<Scenario> {
    use Function::{
        Batch, Cancel, Credits, OutboxRelay, People, Status, Trigger, WebhookDelivery,
        WebhookSettings, Worker,
    };
    vec![
        Scenario::new(WebhookSettings, "register and read an endpoint", |env| {
            Box::pin(webhook_register(env))
        }),
        Scenario::new(WebhookSettings, "remove the endpoint", |env| {
            Box::pin(webhook_remove(env))
        }),
        Scenario::new(WebhookSettings, "deliveries log", |env| {
            Box::pin(webhook_deliveries(env))
        }),
        Scenario::new(OutboxRelay, "outbox event relayed", |env| {
            Box::pin(relay_outbox_event(env))
        }),
        Scenario::new(OutboxRelay, "org without an endpoint: skipped", |env| {
            Box::pin(relay_without_endpoint(env))
        }),
        Scenario::new(WebhookDelivery, "attempt delivered", |env| {
            Box::pin(delivery_delivered(env))
        }),
        Scenario::new(WebhookDelivery, "attempt failed: next one queued", |env| {
            Box::pin(delivery_retried(env))
        }),
        Scenario::new(WebhookDelivery, "endpoint removed: not delivered", |env| {
            Box::pin(delivery_without_endpoint(env))
        }),
        Scenario::new(
            Cancel,
            "cancel a pending one: refunded, then again",
            |env| Box::pin(cancel_pending(env)),
        ),
        Scenario::new(Cancel, "cancel an ended one: conflict", |env| {
            Box::pin(cancel_ended(env))
        }),
        Scenario::new(Cancel, "cancel a stale pending one: timed out", |env| {
            Box::pin(cancel_stale(env))
        }),
        Scenario::new(Cancel, "cancel without an enrichment", |env| {
            Box::pin(cancel_not_found(env))
        }),
        Scenario::new(Credits, "balance of an org that never had credits", |env| {
            Box::pin(credits_balance_none(env))
        }),
        Scenario::new(Credits, "balance of an org with credits", |env| {
            Box::pin(credits_balance(env))
        }),
        Scenario::new(Credits, "history page of a date range", |env| {
            Box::pin(credits_history_range(env))
        }),
        Scenario::new(Credits, "history pages by offset", |env| {
            Box::pin(credits_history_offset(env))
        }),
        Scenario::new(Batch, "query with a stale pending: refunded", |env| {
            Box::pin(batch_query(env))
        }),
        Scenario::new(Batch, "batch of new enrichments, two chunks", |env| {
            Box::pin(batch_new(env))
        }),
        Scenario::new(Batch, "batch replay: all existing", |env| {
            Box::pin(batch_replay(env))
        }),
        Scenario::new(Batch, "batch with a stale pending: replaced", |env| {
            Box::pin(batch_replaces_stale_pending(env))
        }),
        Scenario::new(Batch, "batch insufficient credits", |env| {
            Box::pin(batch_insufficient_credits(env))
        }),
        Scenario::new(Batch, "batch unknown person", |env| {
            Box::pin(batch_unknown_person(env))
        }),
        Scenario::new(
            Batch,
            "batch's later chunk fails: written chunk undone",
            |env| Box::pin(batch_undone(env)),
        ),
        Scenario::new(Batch, "bulk of a listed selection", |env| {
            Box::pin(bulk_listed(env))
        }),
        Scenario::new(Batch, "bulk of a manual selection", |env| {
            Box::pin(bulk_manual(env))
        }),
        Scenario::new(People, "create one", |env| Box::pin(people_create(env))),
        Scenario::new(People, "create a batch", |env| Box::pin(people_batch(env))),
        Scenario::new(People, "failed batch undone", |env| {
            Box::pin(people_batch_undone(env))
        }),
        Scenario::new(People, "read", |env| Box::pin(people_read(env))),
        Scenario::new(People, "list a page", |env| Box::pin(people_list(env))),
        Scenario::new(
            People,
            "delete with a pending enrichment: refunded",
            |env| Box::pin(people_delete(env)),
        ),
        Scenario::new(Trigger, "new enrichment", |env| Box::pin(trigger_new(env))),
        Scenario::new(Trigger, "replay", |env| Box::pin(trigger_replay(env))),
        Scenario::new(Trigger, "insufficient credits", |env| {
            Box::pin(trigger_insufficient_credits(env))
        }),
        Scenario::new(Trigger, "unknown person", |env| {
            Box::pin(trigger_unknown_person(env))
        }),
        Scenario::new(Trigger, "stale pending replaced", |env| {
            Box::pin(trigger_replaces_stale_pending(env))
        }),
        Scenario::new(Trigger, "enqueue keeps failing: refunded", |env| {
            Box::pin(trigger_enqueue_fails(env))
        }),
        Scenario::new(Status, "read", |env| Box::pin(status_read(env))),
        Scenario::new(Status, "not found", |env| Box::pin(status_not_found(env))),
        Scenario::new(Status, "lazy timeout with refund", |env| {
            Box::pin(status_lazy_timeout(env))
        }),
        Scenario::new(Worker, "found: person and cache written", |env| {
            Box::pin(worker_found(env))
        }),
        Scenario::new(Worker, "global cache hit", |env| {
            Box::pin(worker_cache_hit(env))
        }),
        Scenario::new(Worker, "no match: miss cached", |env| {
            Box::pin(worker_no_match(env))
        }),
        Scenario::new(Worker, "no match with REFUND_MISSES: refunded", |env| {
            Box::pin(worker_no_match_refunded(env))
        }),
        Scenario::new(Worker, "cached miss with REFUND_MISSES: refunded", |env| {
            Box::pin(worker_cached_miss_refunded(env))
        }),
        Scenario::new(Worker, "providers failed: refunded", |env| {
            Box::pin(worker_providers_failed(env))
        }),
        Scenario::new(Worker, "past maximum age: timed out", |env| {
            Box::pin(worker_past_max_age(env))
        }),
        Scenario::new(Worker, "duplicate delivery dropped", |env| {
            Box::pin(worker_duplicate(env))
        }),
        Scenario::new(Worker, "same person running: deferred", |env| {
            Box::pin(worker_deferred(env))
        }),
        Scenario::new(Worker, "store fails: retried later", |env| {
            Box::pin(worker_retried(env))
        }),
        Scenario::new(Worker, "last receive fails: refunded", |env| {
            Box::pin(worker_gives_up(env))
        })
        .sqs_only(),
        Scenario::new(Worker, "API keys from Secrets Manager", |env| {
            Box::pin(worker_secrets(env))
        }),
        Scenario::new(Worker, "held bulk job found", |env| {
            Box::pin(worker_bulk_found(env))
        }),
        Scenario::new(Worker, "bulk job, same person running: deferred", |env| {
            Box::pin(worker_bulk_deferred(env))
        })
        .sqs_only(),
        Scenario::new(Worker, "a bulk's held jobs fanned out", |env| {
            Box::pin(worker_bulk_fan_out(env))
        })
        .sqs_only(),
    ]
}

// ------------------------------------------------------------------------------- batch

async fn batch_query(env: &Env) {
    let person = env.person("Ada");
    env.pending_job(&person).await;
    let stale = env.config_with_max_age(Duration::ZERO);
    let found = Enrichments::new(env.h.store(None), stale)
        .query(
            &env.principal(),
            &[(person.id, Field::Emails), (person.id, Field::Phones)],
        )
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].status, Status::Timeout);
    env.assert_ledger().await;
}

/// One more person than a chunk holds: two creating transactions.
async fn batch_new(env: &Env) {
    let people = env.add_people(CHUNK + 1).await;
    let cost = env.config().cost(Field::Emails);
    env.grant(cost * people.len() as i64).await;
    let created = env.batch(env.config(), None, &ids(&people)).await.unwrap();
    assert_eq!(created.len(), people.len());
    assert!(created.iter().all(|e| e.status == Status::Pending));
    assert_eq!(env.balance().await, 0);
    env.assert_ledger().await;
}

async fn batch_replay(env: &Env) {
    let people = env.add_people(2).await;
    env.grant(2 * env.config().cost(Field::Emails)).await;
    let first = env.batch(env.config(), None, &ids(&people)).await.unwrap();
    let replay = env.batch(env.config(), None, &ids(&people)).await.unwrap();
    assert_eq!(ids_of(&replay), ids_of(&first));
    assert_eq!(env.balance().await, 0, "a replay costs nothing");
    env.assert_ledger().await;
}

async fn batch_replaces_stale_pending(env: &Env) {
    let person = env.person("Ada");
    let stale = env.pending_job(&person).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let fresh = env
        .batch(env.config_with_max_age(Duration::ZERO), None, &[person.id])
        .await
        .unwrap();
    assert_ne!(fresh[0].id, stale.enrichment_id);
    assert_eq!(fresh[0].status, Status::Pending);
    assert_eq!(
        env.balance().await,
        0,
        "the stale one refunded, the new one charged"
    );
    env.assert_ledger().await;
}

async fn batch_insufficient_credits(env: &Env) {
    let people = env.add_people(2).await;
    env.grant(env.config().cost(Field::Emails)).await;
    let error = env
        .batch(env.config(), None, &ids(&people))
        .await
        .unwrap_err();
    assert_eq!(error.status_code(), 402);
    env.assert_nothing_written(&people).await;
    assert_eq!(env.balance().await, env.config().cost(Field::Emails));
    env.assert_ledger().await;
}

async fn batch_unknown_person(env: &Env) {
    let people = env.add_people(1).await;
    env.grant(10).await;
    let error = env
        .batch(env.config(), None, &[people[0].id, Uuid::new_v4()])
        .await
        .unwrap_err();
    assert_eq!(error.status_code(), 404);
    env.assert_nothing_written(&people).await;
    assert_eq!(env.balance().await, 10);
    env.assert_ledger().await;
}

/// The second chunk's transaction fails (an outage): the first chunk is undone before the
/// answer, its new enrichments deleted and the stale one it replaced put back (the undo's
/// `Delete` and `Put`), the balance credited back.
async fn batch_undone(env: &Env) {
    let first = env.person("Ada");
    let stale = env.pending_job(&first).await;
    let mut people = vec![first];
    people.extend(env.add_people(CHUNK).await);
    let cost = env.config().cost(Field::Emails);
    env.grant(cost * people.len() as i64).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    // The lazy timeout of the stale one, the first chunk, then the second chunk fails.
    let fail = Fail::nth("TransactWriteItems", 3);
    let error = env
        .batch(
            env.config_with_max_age(Duration::ZERO),
            Some(fail),
            &ids(&people),
        )
        .await
        .unwrap_err();
    assert!(error.status_code() >= 500, "{error:?}");
    let put_back = env.enrichment(people[0].id).await;
    assert_eq!(
        (put_back.id, put_back.status),
        (stale.enrichment_id, Status::Timeout)
    );
    env.assert_nothing_written(&people[1..]).await;
    assert_eq!(
        env.balance().await,
        cost * people.len() as i64 + cost,
        "only the stale one's refund is left"
    );
    env.assert_ledger().await;
}

/// A `bulk` selection: the people list read from the creation-order index (`Query`).
async fn bulk_listed(env: &Env) {
    let people = env.add_people(3).await;
    env.grant(2 * env.config().cost(Field::Emails)).await;
    let selection = Selection::Bulk {
        start_index: 0,
        target_count: 5,
        excluded: HashSet::from([people[1].id]),
        filters: BulkFilters {
            company_domain: Some(env.domain()),
            ..BulkFilters::default()
        },
    };
    let created = env.bulk(&selection).await.unwrap();
    let selected: HashSet<Uuid> = created.iter().map(|e| e.entity_id).collect();
    assert_eq!(selected, HashSet::from([people[0].id, people[2].id]));
    assert_eq!(env.balance().await, 0);
    env.assert_ledger().await;
}

async fn bulk_manual(env: &Env) {
    let people = env.add_people(3).await;
    env.grant(2 * env.config().cost(Field::Emails)).await;
    let selection = Selection::Manual {
        included: ids(&people),
        excluded: HashSet::from([people[2].id]),
    };
    let created = env.bulk(&selection).await.unwrap();
    let selected: Vec<Uuid> = created.iter().map(|e| e.entity_id).collect();
    assert_eq!(selected, [people[0].id, people[1].id]);
    assert_eq!(env.balance().await, 0);
    env.assert_ledger().await;
}

fn ids(people: &[Person]) -> Vec<Uuid> {
    people.iter().map(|p| p.id).collect()
}

fn ids_of(enrichments: &[Enrichment]) -> Vec<Uuid> {
    enrichments.iter().map(|e| e.id).collect()
}

// ------------------------------------------------------------------------------ cancel

/// The cancel function as its Lambda builds it: `POST .../cancel` for emails of `person_id`,
/// the use case over the recorded store.
async fn cancel_emails(
    env: &Env,
    config: enrichment::config::Config,
    person_id: Uuid,
) -> Result<Enrichment, ApiError> {
    Enrichments::new(env.h.store(None), config)
        .cancel(&env.principal(), person_id, Field::Emails)
        .await
}

/// Read, then one transaction: the enrichment and the balance updated, the refund's credit
/// transaction put. Cancelled again: read only.
async fn cancel_pending(env: &Env) {
    let person = env.person("Ada");
    env.pending_job(&person).await;
    let cancelled = cancel_emails(env, env.config(), person.id).await.unwrap();
    assert_eq!(cancelled.status, Status::Cancelled);
    assert_eq!(env.balance().await, 5, "refunded");
    let again = cancel_emails(env, env.config(), person.id).await.unwrap();
    assert_eq!(again, cancelled);
    assert_eq!(env.balance().await, 5, "refunded once");
    env.assert_ledger().await;
}

async fn cancel_ended(env: &Env) {
    let person = env.person("Ada");
    env.pending_job(&person).await;
    let failed = env.enrichment(person.id).await;
    let now = enrichment::domain::timestamp(chrono::Utc::now());
    env.h
        .stack
        .store
        .fail_and_refund(&failed, 5, "providers down", &now)
        .await
        .unwrap();
    let error = cancel_emails(env, env.config(), person.id)
        .await
        .unwrap_err();
    assert_eq!(
        error,
        ApiError::Conflict("Enrichment is already failed".into())
    );
    env.assert_ledger().await;
}

/// A pending enrichment past the maximum age is timed out (and refunded) as GET does.
async fn cancel_stale(env: &Env) {
    let person = env.person("Ada");
    env.pending_job(&person).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let error = cancel_emails(env, env.config_with_max_age(Duration::ZERO), person.id)
        .await
        .unwrap_err();
    assert_eq!(error.status_code(), 409, "{error:?}");
    assert_eq!(env.enrichment(person.id).await.status, Status::Timeout);
    assert_eq!(env.balance().await, 5);
    env.assert_ledger().await;
}

async fn cancel_not_found(env: &Env) {
    let error = cancel_emails(env, env.config(), Uuid::new_v4())
        .await
        .unwrap_err();
    assert_eq!(error.status_code(), 404);
}

// ----------------------------------------------------------------------------- credits

/// The credits function as its Lambda builds it: the use cases over the recorded store.
fn credits_api(env: &Env) -> Credits {
    Credits::new(env.h.store(None))
}

/// No credits item yet: the balance is 0, not an error.
async fn credits_balance_none(env: &Env) {
    let balance = credits_api(env).balance(&env.principal()).await.unwrap();
    assert_eq!(
        (balance.balance, balance.organization_id.as_str()),
        (0, env.org.as_str())
    );
}

async fn credits_balance(env: &Env) {
    env.grant(100).await;
    let balance = credits_api(env).balance(&env.principal()).await.unwrap();
    assert_eq!(balance.balance, 100);
    env.assert_ledger().await;
}

/// A grant and an enrichment's debit, read back through a date range around today (days
/// either side, so that midnight between the writes and the read changes nothing), newest
/// first; a range that ends before them finds none.
async fn credits_history_range(env: &Env) {
    env.grant(100).await;
    env.pending_job(&env.person("Ada")).await;
    let today = chrono::Utc::now().date_naive();
    let day = |days: i64| (today + chrono::Duration::days(days)).to_string();
    let query = parse_history(Some(&day(-1)), Some(&day(1)), Some("10"), None).unwrap();
    let history = credits_api(env)
        .history(&env.principal(), &query)
        .await
        .unwrap();
    // 100, then the job's own grant of one emails enrichment, then its debit.
    let amounts: Vec<i64> = history
        .transactions
        .iter()
        .map(|t| t.signed_amount())
        .collect();
    let cost = env.config().cost(Field::Emails);
    assert_eq!(amounts, [-cost, cost, 100]);
    assert_eq!(history.count, 3);
    let before = parse_history(Some("2001-01-01"), Some(&day(-2)), None, None).unwrap();
    let none = credits_api(env)
        .history(&env.principal(), &before)
        .await
        .unwrap();
    assert_eq!(none.count, 0);
    env.assert_ledger().await;
}

/// Five grants, read as pages of two: the second page skips the two newest, the third holds the
/// oldest alone.
async fn credits_history_offset(env: &Env) {
    for amount in 1..=5 {
        env.grant(amount).await;
        // Distinct creation times, so that newest first is one order.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let page = |offset: &'static str| async move {
        let query = parse_history(None, None, Some("2"), Some(offset)).unwrap();
        credits_api(env)
            .history(&env.principal(), &query)
            .await
            .unwrap()
            .transactions
            .iter()
            .map(|t| t.amount)
            .collect::<Vec<_>>()
    };
    assert_eq!(page("0").await, [5, 4]);
    assert_eq!(page("2").await, [3, 2]);
    assert_eq!(page("4").await, [1]);
    env.assert_ledger().await;
}

// ------------------------------------------------------------------------------ people

fn people_api(env: &Env) -> People {
    People::new(env.h.store(None))
}

async fn people_create(env: &Env) {
    let body = json!({"firstName": "Ada", "lastName": "Quill", "companyDomain": env.domain()});
    let created = people_api(env)
        .create(&env.principal(), &body)
        .await
        .unwrap();
    assert_eq!(created.first_name.as_deref(), Some("Ada"));
}

async fn people_batch(env: &Env) {
    let body = json!({"persons": [{"firstName": "Ada", "lastName": "Quill"},
                                  {"firstName": "Bruno", "lastName": "Okafor"}]});
    let created = people_api(env)
        .create_batch(&env.principal(), &body)
        .await
        .unwrap();
    assert_eq!(created.len(), 2);
}

/// A batch whose second group of 100 fails (an id that exists) is undone: the people function's
/// write path deletes the first group (`BatchWriteItem`).
async fn people_batch_undone(env: &Env) {
    let people: Vec<Person> = (0..150).map(|i| env.person(&format!("P{i}"))).collect();
    env.add_person(&people[120]).await;
    assert!(
        env.h
            .store(None)
            .create_people(&env.org, &people)
            .await
            .is_err()
    );
    assert!(
        env.h
            .stack
            .store
            .get_person(&env.org, people[0].id)
            .await
            .unwrap()
            .is_none()
    );
}

async fn people_read(env: &Env) {
    let person = env.person("Ada");
    env.add_person(&person).await;
    let read = people_api(env)
        .get(&env.principal(), person.id)
        .await
        .unwrap();
    assert_eq!(read.id, person.id);
}

async fn people_list(env: &Env) {
    let body = json!({"persons": [{"firstName": "Ada", "lastName": "Quill"}]});
    people_api(env)
        .create_batch(&env.principal(), &body)
        .await
        .unwrap();
    let page = people_api(env)
        .list(&env.principal(), Some("10"), None)
        .await
        .unwrap();
    assert_eq!(page.persons.len(), 1);
}

async fn people_delete(env: &Env) {
    let person = env.person("Ada");
    env.pending_job(&person).await;
    people_api(env)
        .delete(&env.principal(), person.id)
        .await
        .unwrap();
    assert_eq!(env.balance().await, env.config().cost(Field::Emails));
    env.assert_ledger().await;
}

// ----------------------------------------------------------------------------- trigger

async fn trigger_new(env: &Env) {
    let person = env.person("Ada");
    env.add_person(&person).await;
    env.grant(100).await;
    let created = env.post(person.id).await.unwrap();
    assert_eq!(created.status, Status::Pending);
    assert_eq!(env.balance().await, 95);
    env.assert_ledger().await;
}

async fn trigger_replay(env: &Env) {
    let person = env.person("Ada");
    env.add_person(&person).await;
    env.grant(100).await;
    let first = env.post(person.id).await.unwrap();
    let replay = env.post(person.id).await.unwrap();
    assert_eq!(replay.id, first.id);
    assert_eq!(env.balance().await, 95, "a replay costs nothing");
    env.assert_ledger().await;
}

async fn trigger_insufficient_credits(env: &Env) {
    let person = env.person("Ada");
    env.add_person(&person).await;
    env.grant(4).await;
    assert_eq!(env.post(person.id).await.unwrap_err().status_code(), 402);
    assert_eq!(env.balance().await, 4);
    env.assert_ledger().await;
}

async fn trigger_unknown_person(env: &Env) {
    env.grant(10).await;
    assert_eq!(
        env.post(Uuid::new_v4()).await.unwrap_err().status_code(),
        404
    );
    assert_eq!(env.balance().await, 10);
    env.assert_ledger().await;
}

async fn trigger_replaces_stale_pending(env: &Env) {
    let person = env.person("Ada");
    let stale = env.pending_job(&person).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let fresh = env
        .trigger(
            env.config_with_max_age(Duration::ZERO),
            env.job_queue(None),
            person.id,
        )
        .await
        .unwrap();
    assert_ne!(fresh.id, stale.enrichment_id);
    assert_eq!(fresh.status, Status::Pending);
    assert_eq!(
        env.balance().await,
        0,
        "the stale one refunded, the new one charged"
    );
    env.assert_ledger().await;
}

async fn trigger_enqueue_fails(env: &Env) {
    let person = env.person("Ada");
    env.add_person(&person).await;
    env.grant(5).await;
    let operation = match env.orchestrator {
        Orchestrator::Sqs => "SendMessage",
        Orchestrator::StepFunctions => "StartExecution",
    };
    let error = env
        .trigger(
            env.config(),
            env.job_queue(Some(Fail::always(operation))),
            person.id,
        )
        .await
        .unwrap_err();
    assert!(error.status_code() >= 500, "{error:?}");
    let failed = env.enrichment(person.id).await;
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(failed.error.as_deref(), Some(ENQUEUE_FAILED_MESSAGE));
    assert_eq!(env.balance().await, 5);
    env.assert_ledger().await;
}

// ------------------------------------------------------------------------------ status

async fn status_read(env: &Env) {
    let person = env.person("Ada");
    let job = env.pending_job(&person).await;
    let read = env.status(env.config(), person.id).await.unwrap();
    assert_eq!((read.id, read.status), (job.enrichment_id, Status::Pending));
    env.assert_ledger().await;
}

async fn status_not_found(env: &Env) {
    let error = env.status(env.config(), Uuid::new_v4()).await.unwrap_err();
    assert_eq!(error.status_code(), 404);
}

async fn status_lazy_timeout(env: &Env) {
    let person = env.person("Ada");
    env.pending_job(&person).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let read = env
        .status(env.config_with_max_age(Duration::ZERO), person.id)
        .await
        .unwrap();
    assert_eq!(read.status, Status::Timeout);
    assert_eq!(read.error.as_deref(), Some(TIMEOUT_MESSAGE));
    assert_eq!(env.balance().await, 5, "a timeout gives the credits back");
    env.assert_ledger().await;
}

// ------------------------------------------------------------------------------ worker

async fn worker_found(env: &Env) {
    let person = env.person("Ada");
    let job = env.pending_job(&person).await;
    let email = env.email("ada");
    let provider = Scripted::new(Answer::Found(email.clone()));
    let worker = env.worker(env.config(), vec![provider.clone()], None);
    assert_eq!(env.deliver(&worker, &job, 1).await, Delivered::Acknowledged);
    let done = env.enrichment(person.id).await;
    assert_eq!(
        (done.status, done.data_found),
        (Status::Finished, Some(true))
    );
    assert!(
        done.global_enrichment_id.is_some(),
        "the cache entry was written"
    );
    let stored = env.stored_person(person.id).await;
    assert_eq!(stored.emails[0].value, email);
    assert_eq!(provider.calls(), 1);
    env.assert_ledger().await;
}

async fn worker_cache_hit(env: &Env) {
    // Two people of the org that are the same real person: the first one's run fills the
    // global cache (set-up, not recorded), the second one is served from it.
    let first = env.person("Ada");
    let second = Person {
        id: Uuid::new_v4(),
        ..first.clone()
    };
    let first_job = env.pending_job(&first).await;
    let provider = Scripted::new(Answer::Found(env.email("ada")));
    env.setup_worker(vec![provider.clone()])
        .run(&first_job, deadline())
        .await
        .unwrap();
    let job = env.pending_job(&second).await;
    let unused = Scripted::new(Answer::Fails);
    let worker = env.worker(env.config(), vec![unused.clone()], None);
    assert_eq!(env.deliver(&worker, &job, 1).await, Delivered::Acknowledged);
    let done = env.enrichment(second.id).await;
    assert_eq!(done.data_found, Some(true));
    assert_eq!(
        done.global_enrichment_id,
        env.enrichment(first.id).await.global_enrichment_id
    );
    assert_eq!(unused.calls(), 0);
    assert_eq!(env.stored_person(second.id).await.emails.len(), 1);
    env.assert_ledger().await;
}

async fn worker_no_match(env: &Env) {
    let person = env.person("Nobody");
    let job = env.pending_job(&person).await;
    let worker = env.worker(env.config(), vec![Scripted::new(Answer::NoMatch)], None);
    assert_eq!(env.deliver(&worker, &job, 1).await, Delivered::Acknowledged);
    let done = env.enrichment(person.id).await;
    assert_eq!(
        (done.status, done.data_found),
        (Status::Finished, Some(false))
    );
    assert!(done.global_enrichment_id.is_some(), "the miss is cached");
    env.assert_ledger().await;
}

/// `REFUND_MISSES` on: the outcome transaction that finishes the enrichment without data also
/// credits the balance and puts the refund's credit transaction.
async fn worker_no_match_refunded(env: &Env) {
    let person = env.person("Nobody");
    let job = env.pending_job(&person).await;
    let worker = env.worker(
        env.config_refunding_misses(),
        vec![Scripted::new(Answer::NoMatch)],
        None,
    );
    assert_eq!(env.deliver(&worker, &job, 1).await, Delivered::Acknowledged);
    let done = env.enrichment(person.id).await;
    assert_eq!(
        (done.status, done.data_found),
        (Status::Finished, Some(false))
    );
    assert_eq!(
        env.balance().await,
        env.config().cost(Field::Emails),
        "refunded"
    );
    env.assert_ledger().await;
}

/// `REFUND_MISSES` on and the person a known miss of the global cache (another run of the same
/// real person found nothing; set-up, not recorded): served from the cache, no provider asked,
/// and refunded in the transaction that finishes it.
async fn worker_cached_miss_refunded(env: &Env) {
    let first = env.person("Nobody");
    let second = Person {
        id: Uuid::new_v4(),
        ..first.clone()
    };
    let first_job = env.pending_job(&first).await;
    env.setup_worker(vec![Scripted::new(Answer::NoMatch)])
        .run(&first_job, deadline())
        .await
        .unwrap();
    let job = env.pending_job(&second).await;
    let unused = Scripted::new(Answer::Fails);
    let worker = env.worker(env.config_refunding_misses(), vec![unused.clone()], None);
    assert_eq!(env.deliver(&worker, &job, 1).await, Delivered::Acknowledged);
    let done = env.enrichment(second.id).await;
    assert_eq!(
        (done.status, done.data_found),
        (Status::Finished, Some(false))
    );
    assert_eq!(unused.calls(), 0);
    // The first run (REFUND_MISSES off) kept its charge; the second was refunded.
    assert_eq!(env.balance().await, env.config().cost(Field::Emails));
    env.assert_ledger().await;
}

async fn worker_providers_failed(env: &Env) {
    let person = env.person("Ada");
    let job = env.pending_job(&person).await;
    let worker = env.worker(env.config(), vec![Scripted::new(Answer::Fails)], None);
    assert_eq!(env.deliver(&worker, &job, 1).await, Delivered::Acknowledged);
    assert_eq!(env.enrichment(person.id).await.status, Status::Failed);
    assert_eq!(env.balance().await, 5, "refunded");
    env.assert_ledger().await;
}

async fn worker_past_max_age(env: &Env) {
    let person = env.person("Ada");
    let job = env.pending_job(&person).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let provider = Scripted::new(Answer::Found(env.email("ada")));
    let config = env.config_with_max_age(Duration::ZERO);
    let worker = env.worker(config, vec![provider.clone()], None);
    assert_eq!(env.deliver(&worker, &job, 1).await, Delivered::Acknowledged);
    assert_eq!(env.enrichment(person.id).await.status, Status::Timeout);
    assert_eq!(provider.calls(), 0);
    assert_eq!(env.balance().await, 5, "refunded");
    env.assert_ledger().await;
}

async fn worker_duplicate(env: &Env) {
    let person = env.person("Ada");
    let job = env.pending_job(&person).await;
    let provider = Scripted::new(Answer::Found(env.email("ada")));
    env.setup_worker(vec![provider.clone()])
        .run(&job, deadline())
        .await
        .unwrap();
    let worker = env.worker(env.config(), vec![provider.clone()], None);
    assert_eq!(env.deliver(&worker, &job, 2).await, Delivered::Acknowledged);
    assert_eq!(provider.calls(), 1, "the duplicate asked no provider");
    env.assert_ledger().await;
}

async fn worker_deferred(env: &Env) {
    let person = env.person("Ada");
    let job = env.pending_job(&person).await;
    // Another org's job for the same real person holds the global cache lease.
    let now = chrono::Utc::now().timestamp();
    let lease = env
        .h
        .stack
        .store
        .acquire_cache_lease(
            &fingerprint(&person).unwrap(),
            Field::Emails,
            "another-enrichment",
            now,
            now + 120,
        )
        .await
        .unwrap();
    assert!(matches!(lease, CacheLease::Acquired));
    let provider = Scripted::new(Answer::Found(env.email("ada")));
    let worker = env.worker(env.config(), vec![provider.clone()], None);
    let delivered = env.deliver(&worker, &job, 1).await;
    // SQS: sent again with a delay, this delivery is done. Step Functions: handed back as
    // "deferred", the state machine waits and runs it again.
    assert_eq!(delivered, Delivered::Acknowledged);
    assert_eq!(provider.calls(), 0);
    assert_eq!(env.enrichment(person.id).await.status, Status::Pending);
    env.assert_ledger().await;
}

async fn worker_retried(env: &Env) {
    let person = env.person("Ada");
    let job = env.pending_job(&person).await;
    let provider = Scripted::new(Answer::Found(env.email("ada")));
    let worker = env.worker(
        env.config(),
        vec![provider],
        Some(Fail::first("TransactWriteItems")),
    );
    assert_eq!(env.deliver(&worker, &job, 1).await, Delivered::Retried);
    assert_eq!(env.enrichment(person.id).await.status, Status::Pending);
    env.assert_ledger().await;
}

async fn worker_gives_up(env: &Env) {
    let person = env.person("Ada");
    let job = env.pending_job(&person).await;
    let provider = Scripted::new(Answer::Found(env.email("ada")));
    let config = env.config();
    let last = config.max_receives;
    let worker = env.worker(
        config,
        vec![provider],
        Some(Fail::first("TransactWriteItems")),
    );
    assert_eq!(env.deliver(&worker, &job, last).await, Delivered::Retried);
    let failed = env.enrichment(person.id).await;
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(failed.error.as_deref(), Some(GAVE_UP_MESSAGE));
    assert_eq!(env.balance().await, 5, "refunded");
    env.assert_ledger().await;
}

async fn worker_secrets(env: &Env) {
    // One secret per `*_API_KEY_SECRET_ARN` variable the template gives the worker.
    let variables = env.h.template.secret_variables(env.orchestrator);
    assert!(!variables.is_empty());
    let mut vars = Vec::new();
    for (variable, parameter) in &variables {
        let arn = env
            .h
            .secrets_admin
            .create_secret()
            .name(format!("{}/{variable}", env.org))
            .secret_string(format!("key-{variable}"))
            .send()
            .await
            .unwrap()
            .arn
            .unwrap();
        env.h.name(&arn, parameter);
        vars.push((variable.clone(), arn));
    }
    let keys = resolve_api_keys(&env.h.secrets(), vars).await.unwrap();
    assert_eq!(keys.len(), variables.len());
    for variable in variables.keys() {
        let name = variable.strip_suffix(SECRET_SUFFIX).unwrap();
        assert_eq!(keys[&format!("{name}_API_KEY")], format!("key-{variable}"));
    }
}

/// A batch's job, delivered from the bulk jobs queue (SQS: its heartbeat goes to that queue)
/// or as the held execution input, `notBefore` included (Step Functions).
async fn worker_bulk_found(env: &Env) {
    let person = env.person("Ada");
    let job = env.pending_job(&person).await;
    let provider = Scripted::new(Answer::Found(env.email("ada")));
    let worker = env.worker(env.config(), vec![provider.clone()], None);
    assert_eq!(
        env.deliver_held(&worker, &job).await,
        Delivered::Acknowledged
    );
    let done = env.enrichment(person.id).await;
    assert_eq!(
        (done.status, done.data_found),
        (Status::Finished, Some(true))
    );
    assert_eq!(provider.calls(), 1);
    env.assert_ledger().await;
}

/// A bulk job deferred while another org's job holds the same real person: sent again to the
/// bulk jobs queue, not the jobs queue.
async fn worker_bulk_deferred(env: &Env) {
    let person = env.person("Ada");
    let job = env.pending_job(&person).await;
    let now = chrono::Utc::now().timestamp();
    let lease = env
        .h
        .stack
        .store
        .acquire_cache_lease(
            &fingerprint(&person).unwrap(),
            Field::Emails,
            "another-enrichment",
            now,
            now + 120,
        )
        .await
        .unwrap();
    assert!(matches!(lease, CacheLease::Acquired));
    let provider = Scripted::new(Answer::Found(env.email("ada")));
    let worker = env.worker(env.config(), vec![provider.clone()], None);
    assert_eq!(
        env.deliver_held(&worker, &job).await,
        Delivered::Acknowledged
    );
    assert_eq!(provider.calls(), 0);
    assert_eq!(env.enrichment(person.id).await.status, Status::Pending);
    env.assert_ledger().await;
}

/// A bulk's held message of jobs, delivered from the bulk jobs queue once its hold ended: the
/// live job is sent on to the bulk queue (`SendMessageBatch`), the job of an enrichment that
/// was never written is not.
async fn worker_bulk_fan_out(env: &Env) {
    let person = env.person("Ada");
    let live = env.pending_job(&person).await;
    let never_written = Job {
        enrichment_id: Uuid::new_v4(),
        person_id: Uuid::new_v4(),
        ..live.clone()
    };
    let body = serde_json::to_string(&enrichment::domain::JobBatch {
        jobs: vec![live.clone(), never_written],
    })
    .unwrap();
    let queue = env.h.stack.info.bulk_queue_url.clone();
    let record = env.receive_body(body, 1, &queue).await;
    let receipt = record.receipt_handle.clone().unwrap();
    let worker = env.worker(env.config(), vec![], None);
    let mut event = SqsEvent::default();
    event.records = vec![record];
    let response = worker
        .handle(WorkerEvent::Sqs(event), deadline())
        .await
        .unwrap();
    assert_eq!(response["batchItemFailures"], serde_json::json!([]));
    env.h
        .sqs_admin
        .delete_message()
        .queue_url(&queue)
        .receipt_handle(receipt)
        .send()
        .await
        .unwrap();
    let sent = env
        .h
        .sqs_admin
        .receive_message()
        .queue_url(&queue)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    let jobs: Vec<Job> = sent
        .iter()
        .map(|m| serde_json::from_str(m.body().unwrap()).unwrap())
        .collect();
    assert_eq!(jobs, vec![live]);
    for message in sent {
        env.h
            .sqs_admin
            .delete_message()
            .queue_url(&queue)
            .receipt_handle(message.receipt_handle.unwrap_or_default())
            .send()
            .await
            .unwrap();
    }
    env.assert_ledger().await;
}

// ---------------------------------------------------------------------------- webhooks

/// An endpoint no scenario calls: a public IP literal, accepted without a DNS lookup.
const PUBLIC_ENDPOINT: &str = "https://93.184.216.34/hooks/enrichment";

/// The webhook settings function as its Lambda builds it: the use cases over the recorded
/// store, the deployed settings (no loopback endpoints), no queue.
fn webhook_settings(env: &Env) -> Webhooks {
    Webhooks::new(env.h.store(None), env.webhook_config(false), None)
}

async fn webhook_register(env: &Env) {
    let settings = webhook_settings(env);
    let body = json!({"url": PUBLIC_ENDPOINT});
    let registered = settings.register(&env.principal(), &body).await.unwrap();
    assert!(registered.secret.starts_with("whsec_"));
    let read = settings.get(&env.principal()).await.unwrap();
    assert_eq!(read.url, registered.url);
    // Replaced: a new secret.
    let again = settings.register(&env.principal(), &body).await.unwrap();
    assert_ne!(again.secret, registered.secret);
}

async fn webhook_remove(env: &Env) {
    env.register_endpoint(PUBLIC_ENDPOINT).await;
    let settings = webhook_settings(env);
    settings.remove(&env.principal()).await.unwrap();
    let error = settings.get(&env.principal()).await.unwrap_err();
    assert_eq!(error.status_code(), 404);
}

/// One event relayed (set-up), read back from the deliveries log (`Query` of the org's
/// partition).
async fn webhook_deliveries(env: &Env) {
    env.register_endpoint(PUBLIC_ENDPOINT).await;
    let event = env.ended_enrichment_event().await;
    env.setup_relay(&event).await;
    let deliveries = webhook_settings(env)
        .deliveries(&env.principal(), Some("10"))
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].attempts, 0);
    assert!(!deliveries[0].delivered);
}

/// The outbox relay as its Lambda builds it: the recorded store and webhook queue
/// (`WEBHOOK_QUEUE_URL`).
fn relay(env: &Env) -> Webhooks {
    env.webhooks(env.h.store(None), env.h.sqs(None), false)
}

/// A cancelled enrichment's outbox event, as the stream gives it: the org's endpoint read, the
/// delivery written, attempt 1 queued.
async fn relay_outbox_event(env: &Env) {
    env.register_endpoint(PUBLIC_ENDPOINT).await;
    let event = env.ended_enrichment_event().await;
    let response = relay(env).relay_stream(&event).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let message = env.take_webhook_message().await;
    assert_eq!(message.attempt, 1);
    let (delivery, _, done) = env.delivery(&message).await;
    assert_eq!((delivery.attempts, done), (0, false));
}

/// No endpoint: the event is skipped after the endpoint's `GetItem`.
async fn relay_without_endpoint(env: &Env) {
    let event = env.ended_enrichment_event().await;
    let response = relay(env).relay_stream(&event).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
}

/// The webhook delivery as its Lambda builds it: the recorded store and webhook queue, with
/// loopback endpoints accepted (the scenarios' receiver listens on 127.0.0.1).
fn delivery(env: &Env) -> Webhooks {
    env.webhooks(env.h.store(None), env.h.sqs(None), true)
}

/// The receiver answers 204: delivery and endpoint read, the attempt recorded delivered.
async fn delivery_delivered(env: &Env) {
    let receiver = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(204))
        .expect(1)
        .mount(&receiver)
        .await;
    let message = env.relayed_to(&format!("{}/hook", receiver.uri())).await;
    let response = env.deliver_webhook(&delivery(env), &message).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let requests = receiver.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let headers = &requests[0].headers;
    assert_eq!(
        headers.get("webhook-id").and_then(|v| v.to_str().ok()),
        Some(message.event_id.to_string().as_str())
    );
    assert!(
        headers
            .get("webhook-signature")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("v1,"))
    );
    let (delivery, _, done) = env.delivery(&message).await;
    assert_eq!(
        (
            delivery.attempts,
            delivery.last_status,
            delivery.delivered,
            done
        ),
        (1, Some(204), true, true)
    );
}

/// The receiver answers 500: the next attempt queued (`SendMessage`) before this one is
/// recorded.
async fn delivery_retried(env: &Env) {
    let receiver = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(500))
        .mount(&receiver)
        .await;
    let message = env.relayed_to(&format!("{}/hook", receiver.uri())).await;
    let response = env.deliver_webhook(&delivery(env), &message).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let (delivery, _, done) = env.delivery(&message).await;
    assert_eq!(
        (
            delivery.attempts,
            delivery.last_status,
            delivery.delivered,
            done
        ),
        (1, Some(500), false, false)
    );
}

/// The endpoint was removed after the event was relayed: the attempt is recorded not
/// delivered, with no call and no further attempt.
async fn delivery_without_endpoint(env: &Env) {
    let message = env.relayed_to(PUBLIC_ENDPOINT).await;
    env.h.stack.store.delete_webhook(&env.org).await.unwrap();
    let response = env.deliver_webhook(&delivery(env), &message).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let (delivery, _, done) = env.delivery(&message).await;
    assert_eq!(
        (delivery.attempts, delivery.delivered, done),
        (1, false, true)
    );
}

/// An item of the table as a stream record's image carries it (DynamoDB JSON).
fn stream_image(item: &HashMap<String, aws_sdk_dynamodb::types::AttributeValue>) -> Json {
    use aws_sdk_dynamodb::types::AttributeValue as Av;
    fn value(v: &Av) -> Json {
        match v {
            Av::S(s) => json!({"S": s}),
            Av::N(n) => json!({"N": n}),
            Av::Bool(b) => json!({"BOOL": b}),
            Av::Null(_) => json!({"NULL": true}),
            Av::M(m) => json!({"M": stream_image(m)}),
            Av::L(l) => json!({"L": l.iter().map(value).collect::<Vec<_>>()}),
            Av::Ss(ss) => json!({"SS": ss}),
            other => panic!("no stream form for {other:?} in iam.rs"),
        }
    }
    Json::Object(item.iter().map(|(k, v)| (k.clone(), value(v))).collect())
}

// ------------------------------------------------------------------- the test

#[tokio::test]
async fn iam_policies_grant_each_function_exactly_what_its_code_uses() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let harness = Arc::new(Harness::start().await);
        let mut used = Used::default();
        let mut targets = BTreeSet::new();
        for orchestrator in Orchestrator::ALL {
            for (index, scenario) in scenarios().iter().enumerate() {
                if !scenario.orchestrators.contains(&orchestrator) {
                    continue;
                }
                let label = format!(
                    "{} / {} [{}]",
                    scenario.function.name(),
                    scenario.name,
                    orchestrator.parameter()
                );
                eprintln!("scenario {label}");
                let env = Env::new(harness.clone(), orchestrator, index);
                harness.recorder.take();
                (scenario.run)(&env).await;
                let calls = harness.recorder.take();
                assert!(!calls.is_empty(), "{label}: no recorded AWS request");
                for call in &calls {
                    targets.insert(call.target.clone());
                    for permission in permissions(call, &harness.names()) {
                        used.add(orchestrator, scenario.function, permission, scenario.name);
                    }
                }
            }
        }
        // The targets the Step Functions and Secrets Manager clients send, as mapped above.
        eprintln!("X-Amz-Target values sent: {targets:?}");
        for target in [
            "AWSStepFunctions.StartExecution",
            "secretsmanager.GetSecretValue",
        ] {
            assert!(targets.contains(target), "no {target} among {targets:?}");
        }
        let problems = compare(&harness.template, &used);
        assert!(
            problems.is_empty(),
            "template.yaml does not grant exactly what the functions use:\n  {}",
            problems.join("\n  ")
        );
        Arc::try_unwrap(harness)
            .ok()
            .expect("the scenarios keep no harness")
            .stack
            .shutdown()
            .await;
    })
    .await
    .expect("the IAM scenarios finish within 5 minutes");
}

#[test]
fn iam_actions_of_requests_follow_the_service_authorization_reference() {
    let names = HashMap::from([
        (
            "enrichment-local".to_string(),
            "EnrichmentTable".to_string(),
        ),
        ("http://q/jobs".to_string(), "JobsQueue".to_string()),
    ]);
    let call = |target: &str, body: Json| Call {
        target: target.into(),
        body,
    };
    let listed = |call: &Call| {
        permissions(call, &names)
            .into_iter()
            .map(|p| format!("{} {}", p.action, p.resource))
            .collect::<Vec<_>>()
    };
    let transaction = call(
        "DynamoDB_20120810.TransactWriteItems",
        json!({"TransactItems": [
            {"Put": {"TableName": "enrichment-local"}},
            {"ConditionCheck": {"TableName": "enrichment-local"}},
            {"Update": {"TableName": "enrichment-local"}},
            {"Delete": {"TableName": "other"}}
        ]}),
    );
    assert_eq!(
        listed(&transaction),
        [
            "dynamodb:PutItem EnrichmentTable",
            "dynamodb:ConditionCheckItem EnrichmentTable",
            "dynamodb:UpdateItem EnrichmentTable",
            "dynamodb:DeleteItem ?other",
        ]
    );
    let batch = call(
        "DynamoDB_20120810.BatchGetItem",
        json!({"RequestItems": {"enrichment-local": {"Keys": []}}}),
    );
    assert_eq!(listed(&batch), ["dynamodb:BatchGetItem EnrichmentTable"]);
    let query = call(
        "DynamoDB_20120810.Query",
        json!({"TableName": "enrichment-local"}),
    );
    assert_eq!(listed(&query), ["dynamodb:Query EnrichmentTable"]);
    let index = call(
        "DynamoDB_20120810.Query",
        json!({"TableName": "enrichment-local", "IndexName": "byStatus"}),
    );
    assert_eq!(
        listed(&index),
        ["dynamodb:Query EnrichmentTable/index/byStatus"]
    );
    let sub: Yaml = serde_yaml::from_str("!Sub \"${EnrichmentTable.Arn}/index/byStatus\"").unwrap();
    assert_eq!(resource_name(&sub), "EnrichmentTable/index/byStatus");
    let send = call(
        "AmazonSQS.SendMessageBatch",
        json!({"QueueUrl": "http://q/jobs"}),
    );
    assert_eq!(listed(&send), ["sqs:SendMessage JobsQueue"]);
    let start = call("AWSStepFunctions.StartExecution", json!({}));
    assert_eq!(listed(&start), ["states:StartExecution ?"]);
}

#[test]
fn iam_template_policies_follow_the_orchestrator() {
    let template = Template::load();
    let sends = |function: Function, orchestrator: Orchestrator| {
        let allowed = template.allowed(function, orchestrator);
        (
            allowed.contains_key(&Permission::new("sqs:SendMessage", "JobsQueue")),
            allowed.contains_key(&Permission::new(
                "states:StartExecution",
                "CascadeStateMachine",
            )),
        )
    };
    assert_eq!(sends(Function::Trigger, Orchestrator::Sqs), (true, false));
    assert_eq!(
        sends(Function::Trigger, Orchestrator::StepFunctions),
        (false, true)
    );
    let sends_bulk = |orchestrator: Orchestrator| {
        let allowed = template.allowed(Function::Batch, orchestrator);
        (
            allowed.contains_key(&Permission::new("sqs:SendMessage", "BulkJobsQueue")),
            allowed.contains_key(&Permission::new(
                "states:StartExecution",
                "CascadeStateMachine",
            )),
        )
    };
    assert_eq!(sends_bulk(Orchestrator::Sqs), (true, false));
    assert_eq!(sends_bulk(Orchestrator::StepFunctions), (false, true));
    let polls = |orchestrator, queue: &str| {
        platform_needs(&template, Function::Worker, orchestrator)
            .contains_key(&Permission::new("sqs:ReceiveMessage", queue))
    };
    for queue in ["JobsQueue", "BulkJobsQueue"] {
        assert!(polls(Orchestrator::Sqs, queue), "{queue}");
        assert!(!polls(Orchestrator::StepFunctions, queue), "{queue}");
    }
}

/// Each function gets the queue or state machine its code sends to or is fed by, under each
/// orchestrator: the trigger `QUEUE_URL` (jobs queue), the batch function `BULK_QUEUE_URL` (bulk
/// jobs queue), both `STATE_MACHINE_ARN` instead under Step Functions; the SQS-fed worker both
/// queues, so that it keeps, defers and retries a record on the queue it came from; the outbox
/// relay and the webhook delivery `WEBHOOK_QUEUE_URL` (webhook queue) under both.
#[test]
fn iam_template_queue_variables_follow_the_orchestrator() {
    let template = Template::load();
    let queue_variables = |function: Function, orchestrator: Orchestrator| {
        let properties = template
            .properties(function.logical_id(), orchestrator)
            .unwrap();
        properties["Environment"]["Variables"]
            .as_mapping()
            .map(|variables| {
                variables
                    .iter()
                    .filter_map(|(name, value)| {
                        let name = name.as_str()?;
                        [
                            "QUEUE_URL",
                            "BULK_QUEUE_URL",
                            "STATE_MACHINE_ARN",
                            "WEBHOOK_QUEUE_URL",
                        ]
                        .contains(&name)
                        .then(|| (name.to_string(), reference(value).unwrap_or_default()))
                    })
                    .collect::<BTreeMap<_, _>>()
            })
            .unwrap_or_default()
    };
    let expect = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    use Orchestrator::{Sqs, StepFunctions};
    let machine = [("STATE_MACHINE_ARN", "CascadeStateMachine")];
    let mut checked = BTreeSet::new();
    for (function, sqs, step_functions) in [
        (
            Function::Trigger,
            expect(&[("QUEUE_URL", "JobsQueue")]),
            expect(&machine),
        ),
        (
            Function::Batch,
            expect(&[("BULK_QUEUE_URL", "BulkJobsQueue")]),
            expect(&machine),
        ),
        (
            Function::Worker,
            expect(&[
                ("QUEUE_URL", "JobsQueue"),
                ("BULK_QUEUE_URL", "BulkJobsQueue"),
            ]),
            expect(&[]),
        ),
        (Function::Status, expect(&[]), expect(&[])),
        (Function::People, expect(&[]), expect(&[])),
        (Function::Credits, expect(&[]), expect(&[])),
        (Function::Cancel, expect(&[]), expect(&[])),
        (Function::WebhookSettings, expect(&[]), expect(&[])),
        (
            Function::OutboxRelay,
            expect(&[("WEBHOOK_QUEUE_URL", "WebhookQueue")]),
            expect(&[("WEBHOOK_QUEUE_URL", "WebhookQueue")]),
        ),
        (
            Function::WebhookDelivery,
            expect(&[("WEBHOOK_QUEUE_URL", "WebhookQueue")]),
            expect(&[("WEBHOOK_QUEUE_URL", "WebhookQueue")]),
        ),
    ] {
        assert_eq!(queue_variables(function, Sqs), sqs, "{function:?}");
        assert_eq!(
            queue_variables(function, StepFunctions),
            step_functions,
            "{function:?}"
        );
        checked.insert(function);
    }
    assert_eq!(checked, BTreeSet::from(Function::ALL));
}

/// The functions checked here are the template's: every `AWS::Serverless::Function` is one of
/// [`Function::ALL`] (so a new function's role cannot go unchecked), and each has scenarios
/// under both orchestrators.
#[test]
fn iam_every_template_function_has_scenarios() {
    let template = Template::load();
    let declared: BTreeSet<String> = template.0["Resources"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, resource)| resource["Type"].as_str() == Some("AWS::Serverless::Function"))
        .map(|(id, _)| id.as_str().unwrap().to_string())
        .collect();
    let known: BTreeSet<String> = Function::ALL
        .iter()
        .map(|f| f.logical_id().to_string())
        .collect();
    assert_eq!(declared, known, "template.yaml functions vs Function::ALL");
    let scenarios = scenarios();
    for function in Function::ALL {
        for orchestrator in Orchestrator::ALL {
            assert!(
                scenarios
                    .iter()
                    .any(|s| s.function == function && s.orchestrators.contains(&orchestrator)),
                "{} has no scenario under Orchestrator={}",
                function.name(),
                orchestrator.parameter()
            );
        }
    }
}

// ------------------------------------------------------ requests and their IAM actions

/// One AWS request as it was sent: its `X-Amz-Target` header and its JSON body. The four
/// clients speak JSON protocols (`awsJson1_0`/`1_1`): DynamoDB (`DynamoDB_20120810.GetItem`),
/// SQS (`AmazonSQS.SendMessage`), Step Functions (`AWSStepFunctions.StartExecution`) and Secrets
/// Manager (`secretsmanager.GetSecretValue`).
#[derive(Clone, Debug)]
struct Call {
    target: String,
    body: Json,
}

impl Call {
    fn service_and_operation(&self) -> (&str, &str) {
        self.target.split_once('.').unwrap_or_else(|| {
            panic!(
                "X-Amz-Target {:?} is not <service>.<operation>",
                self.target
            )
        })
    }
}

/// Records every request the clients it is installed on send (retries included).
#[derive(Clone, Debug, Default)]
struct Recorder(Arc<Mutex<Vec<Call>>>);

impl Recorder {
    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl Intercept for Recorder {
    fn name(&self) -> &'static str {
        "Recorder"
    }
    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        let target = request
            .headers()
            .get("x-amz-target")
            .ok_or("a request without X-Amz-Target: not a JSON protocol, map it in iam.rs")?
            .to_string();
        let body = request
            .body()
            .bytes()
            .filter(|bytes| !bytes.is_empty())
            .map(serde_json::from_slice)
            .transpose()?
            .unwrap_or(Json::Null);
        self.0.lock().unwrap().push(Call { target, body });
        Ok(())
    }
}

/// Fails the requests of one operation (as an outage would), after the [`Recorder`] saw them.
#[derive(Clone, Debug)]
struct Fail {
    operation: &'static str,
    /// How many more to let through before failing.
    pass: Arc<AtomicUsize>,
    /// How many more to fail.
    left: Arc<AtomicUsize>,
}

impl Fail {
    fn new(operation: &'static str, pass: usize, fail: usize) -> Self {
        Fail {
            operation,
            pass: Arc::new(AtomicUsize::new(pass)),
            left: Arc::new(AtomicUsize::new(fail)),
        }
    }

    fn always(operation: &'static str) -> Self {
        Fail::new(operation, 0, usize::MAX)
    }

    fn first(operation: &'static str) -> Self {
        Fail::new(operation, 0, 1)
    }

    /// Only the `n`-th request (from 1).
    fn nth(operation: &'static str, n: usize) -> Self {
        Fail::new(operation, n.saturating_sub(1), 1)
    }
}

impl Intercept for Fail {
    fn name(&self) -> &'static str {
        "Fail"
    }
    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let target = context.request().headers().get("x-amz-target");
        let matches = target.and_then(|t| t.rsplit('.').next()) == Some(self.operation);
        let take = |count: &AtomicUsize| {
            count
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        };
        if matches && !take(&self.pass) && take(&self.left) {
            return Err(format!("injected {} failure", self.operation).into());
        }
        Ok(())
    }
}

/// An IAM action on a resource of the template (its logical id, a parameter name for a secret
/// ARN, `*`, or `?<name>` for something that is not the stack's).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Permission {
    action: String,
    resource: String,
}

impl Permission {
    fn new(action: impl Into<String>, resource: impl Into<String>) -> Self {
        Permission {
            action: action.into(),
            resource: resource.into(),
        }
    }
}

/// The IAM actions that authorize `call`, each on the resource it touches (`names` maps the
/// stack's table name, queue URL, state machine ARN and secret ARNs to the template's names).
///
/// Per the Service Authorization Reference (docs.aws.amazon.com/service-authorization/latest/
/// reference/): an operation is authorized by the action of the same name
/// (`list_amazondynamodb.html`, `list_amazonsqs.html`, `list_awsstepfunctions.html`,
/// `list_awssecretsmanager.html`), except:
/// - DynamoDB `TransactWriteItems`/`TransactGetItems` are not IAM actions: each item is
///   authorized by the action of its kind, `Put` by `dynamodb:PutItem`, `Update` by
///   `dynamodb:UpdateItem`, `Delete` by `dynamodb:DeleteItem`, `ConditionCheck` by
///   `dynamodb:ConditionCheckItem`, `Get` by `dynamodb:GetItem` (Amazon DynamoDB Developer
///   Guide, "Using IAM with DynamoDB transactions",
///   docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis-iam.html);
/// - DynamoDB `BatchGetItem`/`BatchWriteItem` are authorized by `dynamodb:BatchGetItem`/
///   `dynamodb:BatchWriteItem` on each table of `RequestItems`;
/// - SQS `SendMessageBatch`, `DeleteMessageBatch` and `ChangeMessageVisibilityBatch` are
///   authorized by `sqs:SendMessage`, `sqs:DeleteMessage` and `sqs:ChangeMessageVisibility`
///   (Amazon SQS Developer Guide, "Amazon SQS API permissions: Actions and resource reference",
///   docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/
///   sqs-api-permissions-reference.html);
/// - Secrets Manager `BatchGetSecretValue` also needs `secretsmanager:GetSecretValue` for each
///   secret (Secrets Manager API Reference, `BatchGetSecretValue`).
fn permissions(call: &Call, names: &HashMap<String, String>) -> Vec<Permission> {
    let name = |physical: Option<&Json>| {
        let physical = physical.and_then(Json::as_str).unwrap_or_default();
        names
            .get(physical)
            .cloned()
            .unwrap_or_else(|| format!("?{physical}"))
    };
    let body = &call.body;
    let (service, operation) = call.service_and_operation();
    match service {
        "DynamoDB_20120810" => match operation {
            "TransactWriteItems" | "TransactGetItems" => body["TransactItems"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|item| {
                    let (kind, detail) = item
                        .as_object()
                        .and_then(|item| item.iter().next())
                        .unwrap_or_else(|| panic!("{operation}: an empty item in {body}"));
                    let action = match kind.as_str() {
                        "Put" => "dynamodb:PutItem",
                        "Update" => "dynamodb:UpdateItem",
                        "Delete" => "dynamodb:DeleteItem",
                        "ConditionCheck" => "dynamodb:ConditionCheckItem",
                        "Get" => "dynamodb:GetItem",
                        other => panic!("{operation}: unknown item kind {other:?}"),
                    };
                    Permission::new(action, name(detail.get("TableName")))
                })
                .collect(),
            "BatchGetItem" | "BatchWriteItem" => body["RequestItems"]
                .as_object()
                .map(|tables| {
                    tables
                        .keys()
                        .map(|table| {
                            Permission::new(
                                format!("dynamodb:{operation}"),
                                name(Some(&Json::String(table.clone()))),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            "ExecuteStatement" | "BatchExecuteStatement" | "ExecuteTransaction" => {
                panic!("PartiQL ({operation}) is authorized per statement: map it in iam.rs")
            }
            // A Query or Scan of an index is authorized on the index (`{table ARN}/index/{name}`).
            _ => {
                let table = name(body.get("TableName"));
                let resource = match body.get("IndexName").and_then(Json::as_str) {
                    Some(index) => format!("{table}/index/{index}"),
                    None => table,
                };
                vec![Permission::new(format!("dynamodb:{operation}"), resource)]
            }
        },
        "AmazonSQS" => {
            let action = match operation {
                "SendMessageBatch" => "SendMessage",
                "DeleteMessageBatch" => "DeleteMessage",
                "ChangeMessageVisibilityBatch" => "ChangeMessageVisibility",
                other => other,
            };
            vec![Permission::new(
                format!("sqs:{action}"),
                name(body.get("QueueUrl")),
            )]
        }
        "AWSStepFunctions" => vec![Permission::new(
            format!("states:{operation}"),
            name(body.get("stateMachineArn")),
        )],
        "secretsmanager" => match operation {
            "BatchGetSecretValue" => {
                let mut listed = vec![Permission::new("secretsmanager:BatchGetSecretValue", "*")];
                for secret in body["SecretIdList"].as_array().into_iter().flatten() {
                    listed.push(Permission::new(
                        "secretsmanager:GetSecretValue",
                        name(Some(secret)),
                    ));
                }
                listed
            }
            _ => vec![Permission::new(
                format!("secretsmanager:{operation}"),
                name(body.get("SecretId")),
            )],
        },
        other => panic!(
            "X-Amz-Target {:?}: unknown service {other:?}, map it in iam.rs",
            call.target
        ),
    }
}

// ------------------------------------------------------------------ the template's policies

/// `template.yaml`, with what each function's role allows under each orchestrator.
struct Template(Yaml);

impl Template {
    fn load() -> Self {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml");
        Template(serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap())
    }

    /// The parameter values of a deployment: the defaults, `Orchestrator`, and every provider's
    /// API key secret set (each one adds a statement to the worker's role).
    fn parameters(&self, orchestrator: Orchestrator) -> HashMap<String, String> {
        let mut values = HashMap::new();
        for (name, parameter) in self.0["Parameters"].as_mapping().unwrap() {
            let name = name.as_str().unwrap().to_string();
            let value = if name == "Orchestrator" {
                orchestrator.parameter().to_string()
            } else if name.ends_with("ApiKeySecretArn") {
                format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:{name}")
            } else {
                scalar(&parameter["Default"]).unwrap_or_default()
            };
            values.insert(name, value);
        }
        values
    }

    fn condition(&self, name: &str, parameters: &HashMap<String, String>) -> bool {
        let condition = &self.0["Conditions"][name];
        assert!(!condition.is_null(), "no condition {name:?}");
        self.truth(condition, parameters)
    }

    /// A condition function: `!Equals`, `!Not`, `!And`, `!Or`, `!Condition`.
    fn truth(&self, value: &Yaml, parameters: &HashMap<String, String>) -> bool {
        let Yaml::Tagged(tagged) = value else {
            panic!("unsupported condition {value:?}")
        };
        let args = || tagged.value.as_sequence().unwrap().iter();
        match tag(tagged).as_str() {
            "Equals" => {
                let values: Vec<_> = args().map(|v| self.string(v, parameters)).collect();
                values[0] == values[1]
            }
            "Not" => !self.truth(args().next().unwrap(), parameters),
            "And" => args().all(|v| self.truth(v, parameters)),
            "Or" => args().any(|v| self.truth(v, parameters)),
            "Condition" => self.condition(tagged.value.as_str().unwrap(), parameters),
            other => panic!("unsupported condition function !{other}"),
        }
    }

    fn string(&self, value: &Yaml, parameters: &HashMap<String, String>) -> String {
        match value {
            Yaml::Tagged(tagged) if tag(tagged) == "Ref" => {
                let name = tagged.value.as_str().unwrap();
                parameters
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| panic!("!Ref {name}: not a parameter"))
            }
            other => scalar(other).unwrap_or_else(|| panic!("not a scalar: {other:?}")),
        }
    }

    /// `value` with every `!If` replaced by the branch that applies and every
    /// `!Ref AWS::NoValue` removed (`None` when `value` itself is removed).
    fn resolve(&self, value: &Yaml, parameters: &HashMap<String, String>) -> Option<Yaml> {
        match value {
            Yaml::Tagged(tagged) if tag(tagged) == "If" => {
                let args = tagged.value.as_sequence().unwrap();
                let branch = if self.condition(args[0].as_str().unwrap(), parameters) {
                    &args[1]
                } else {
                    &args[2]
                };
                self.resolve(branch, parameters)
            }
            Yaml::Tagged(tagged)
                if tag(tagged) == "Ref" && tagged.value.as_str() == Some("AWS::NoValue") =>
            {
                None
            }
            Yaml::Mapping(mapping) => Some(Yaml::Mapping(
                mapping
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), self.resolve(v, parameters)?)))
                    .collect(),
            )),
            Yaml::Sequence(items) => Some(Yaml::Sequence(
                items
                    .iter()
                    .filter_map(|v| self.resolve(v, parameters))
                    .collect(),
            )),
            other => Some(other.clone()),
        }
    }

    /// A resource's `Properties` as deployed, or `None` when its `Condition` is false.
    fn properties(&self, logical_id: &str, orchestrator: Orchestrator) -> Option<Yaml> {
        let parameters = self.parameters(orchestrator);
        let resource = &self.0["Resources"][logical_id];
        assert!(!resource.is_null(), "no resource {logical_id:?}");
        if let Some(condition) = resource["Condition"].as_str()
            && !self.condition(condition, &parameters)
        {
            return None;
        }
        self.resolve(&resource["Properties"], &parameters)
    }

    /// Every (action, resource) the function's role allows, with the statement that allows it.
    /// A function with its own `Role` gets that role's inline policies; otherwise SAM builds its
    /// role from `Policies` (inline policy documents; SAM also attaches the managed
    /// `AWSLambdaBasicExecutionRole`, and `AWSXrayWriteOnlyAccess` when tracing is on, which are
    /// not counted here).
    fn allowed(
        &self,
        function: Function,
        orchestrator: Orchestrator,
    ) -> BTreeMap<Permission, String> {
        let properties = self
            .properties(function.logical_id(), orchestrator)
            .unwrap();
        let documents: Vec<Yaml> = match reference(&properties["Role"]) {
            Some(role) => {
                let role = self.properties(&role, orchestrator).unwrap();
                assert!(
                    role["ManagedPolicyArns"].is_null(),
                    "{}: managed policies are not read by iam.rs",
                    function.name()
                );
                sequence(&role["Policies"])
                    .iter()
                    .map(|policy| policy["PolicyDocument"].clone())
                    .collect()
            }
            None => sequence(&properties["Policies"])
                .iter()
                .map(|policy| {
                    assert!(
                        policy.get("Statement").is_some(),
                        "{}: only inline policy documents are read by iam.rs, not {policy:?}",
                        function.name()
                    );
                    policy.clone()
                })
                .collect(),
        };
        let mut allowed = BTreeMap::new();
        for (index, statement) in documents
            .iter()
            .flat_map(|document| sequence(&document["Statement"]))
            .enumerate()
        {
            assert_eq!(
                statement["Effect"].as_str(),
                Some("Allow"),
                "{}: only Allow statements are read by iam.rs",
                function.name()
            );
            let sid = statement["Sid"]
                .as_str()
                .map_or_else(|| format!("#{index}"), str::to_string);
            for action in sequence(&statement["Action"]) {
                for resource in sequence(&statement["Resource"]) {
                    allowed.insert(
                        Permission::new(action.as_str().unwrap(), resource_name(&resource)),
                        sid.clone(),
                    );
                }
            }
        }
        allowed
    }

    /// The worker's `*_API_KEY_SECRET_ARN` variables and the parameter each one names.
    fn secret_variables(&self, orchestrator: Orchestrator) -> BTreeMap<String, String> {
        let properties = self
            .properties(Function::Worker.logical_id(), orchestrator)
            .unwrap();
        properties["Environment"]["Variables"]
            .as_mapping()
            .unwrap()
            .iter()
            .filter_map(|(name, value)| {
                let name = name.as_str()?;
                name.ends_with(SECRET_SUFFIX)
                    .then(|| (name.to_string(), reference(value).unwrap()))
            })
            .collect()
    }
}

fn tag(tagged: &serde_yaml::value::TaggedValue) -> String {
    tagged.tag.to_string().trim_start_matches('!').to_string()
}

fn scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A list, or one value as a list of one.
fn sequence(value: &Yaml) -> Vec<Yaml> {
    match value {
        Yaml::Null => Vec::new(),
        Yaml::Sequence(items) => items.clone(),
        other => vec![other.clone()],
    }
}

/// The logical id or parameter a `!Ref X` or `!GetAtt X.Attr` names.
fn reference(value: &Yaml) -> Option<String> {
    let Yaml::Tagged(tagged) = value else {
        return None;
    };
    match (tag(tagged).as_str(), &tagged.value) {
        ("Ref", Yaml::String(name)) => Some(name.clone()),
        ("GetAtt", Yaml::String(path)) => path.split('.').next().map(str::to_string),
        ("GetAtt", Yaml::Sequence(parts)) => {
            parts.first().and_then(Yaml::as_str).map(str::to_string)
        }
        _ => None,
    }
}

/// The attribute a `!GetAtt X.Attr` names (`Arn`, `StreamArn`...).
fn attribute(value: &Yaml) -> Option<String> {
    let Yaml::Tagged(tagged) = value else {
        return None;
    };
    match (tag(tagged).as_str(), &tagged.value) {
        ("GetAtt", Yaml::String(path)) => path.split_once('.').map(|(_, a)| a.to_string()),
        ("GetAtt", Yaml::Sequence(parts)) => {
            parts.get(1).and_then(Yaml::as_str).map(str::to_string)
        }
        _ => None,
    }
}

/// A statement's resource as a [`Permission`] resource: the logical id or parameter it refers
/// to, `*`, `X/index/name` for `!Sub "${X.Arn}/index/name"`, or the text of anything else
/// (which then matches no request).
fn resource_name(value: &Yaml) -> String {
    reference(value).unwrap_or_else(|| match value {
        Yaml::String(s) => s.clone(),
        Yaml::Tagged(tagged)
            if tag(tagged) == "Sub"
                && let Some(text) = tagged.value.as_str()
                && let Some((id, rest)) =
                    text.strip_prefix("${").and_then(|t| t.split_once(".Arn}"))
                && !rest.contains("${") =>
        {
            format!("{id}{rest}")
        }
        Yaml::Tagged(tagged) => format!("!{} {:?}", tag(tagged), tagged.value),
        other => format!("{other:?}"),
    })
}

/// What a function's role must allow although its code makes no such request, with why. Only
/// for a function with its own `Role` (SAM gives the others logs and X-Ray through managed
/// policies):
/// - its event source mappings on SQS queues: `sqs:ReceiveMessage`, `sqs:DeleteMessage`,
///   `sqs:GetQueueAttributes` on the queue (AWS Lambda Developer Guide, "Using Lambda with
///   Amazon SQS", execution role permissions: docs.aws.amazon.com/lambda/latest/dg/with-sqs.html);
/// - its event source mappings on a table's stream (`!GetAtt Table.StreamArn`):
///   `dynamodb:DescribeStream`, `dynamodb:GetRecords`, `dynamodb:GetShardIterator`,
///   `dynamodb:ListStreams` on the table's streams, `Table/stream/*` (Amazon DynamoDB Developer
///   Guide, "IAM policy to allow an AWS Lambda function to access DynamoDB stream records":
///   docs.aws.amazon.com/amazondynamodb/latest/developerguide/
///   iam-policy-example-lamda-process-dynamodb-streams.html);
/// - a mapping's on-failure destination on an SQS queue: `sqs:SendMessage` on it (the event
///   source mapping sends with the function's role; AWS Lambda Developer Guide, "Retaining
///   discarded batches for a DynamoDB event source in Lambda");
/// - its log group: `logs:CreateLogStream`, `logs:PutLogEvents` (the group itself is a resource
///   of the template, so no `logs:CreateLogGroup`; AWS Lambda Developer Guide, "Sending Lambda
///   function logs to CloudWatch Logs": docs.aws.amazon.com/lambda/latest/dg/
///   monitoring-cloudwatchlogs.html);
/// - X-Ray when tracing is on: `xray:PutTraceSegments`, `xray:PutTelemetryRecords` on `*`
///   (X-Ray has no resource-level permissions; AWS Lambda Developer Guide, "Visualize Lambda
///   function invocations using AWS X-Ray": docs.aws.amazon.com/lambda/latest/dg/
///   services-xray.html).
fn platform_needs(
    template: &Template,
    function: Function,
    orchestrator: Orchestrator,
) -> BTreeMap<Permission, &'static str> {
    let mut needs = BTreeMap::new();
    let properties = template
        .properties(function.logical_id(), orchestrator)
        .unwrap();
    if reference(&properties["Role"]).is_none() {
        return needs;
    }
    for (id, resource) in template.0["Resources"].as_mapping().unwrap() {
        let id = id.as_str().unwrap();
        if resource["Type"].as_str() != Some("AWS::Lambda::EventSourceMapping") {
            continue;
        }
        let Some(mapping) = template.properties(id, orchestrator) else {
            continue;
        };
        if reference(&mapping["FunctionName"]).as_deref() != Some(function.logical_id()) {
            continue;
        }
        let source = reference(&mapping["EventSourceArn"]).unwrap();
        let kind = template.0["Resources"][&source]["Type"].as_str();
        match (kind, attribute(&mapping["EventSourceArn"]).as_deref()) {
            (Some("AWS::SQS::Queue"), _) => {
                for action in [
                    "sqs:ReceiveMessage",
                    "sqs:DeleteMessage",
                    "sqs:GetQueueAttributes",
                ] {
                    needs.insert(Permission::new(action, &source), "SQS event source mapping");
                }
            }
            (Some("AWS::DynamoDB::Table"), Some("StreamArn")) => {
                for action in [
                    "dynamodb:DescribeStream",
                    "dynamodb:GetRecords",
                    "dynamodb:GetShardIterator",
                    "dynamodb:ListStreams",
                ] {
                    needs.insert(
                        Permission::new(action, format!("{source}/stream/*")),
                        "DynamoDB stream event source mapping",
                    );
                }
            }
            _ => panic!("{id}: only SQS and DynamoDB stream event sources are read by iam.rs"),
        }
        let on_failure = &mapping["DestinationConfig"]["OnFailure"]["Destination"];
        if let Some(destination) = reference(on_failure) {
            assert_eq!(
                template.0["Resources"][&destination]["Type"].as_str(),
                Some("AWS::SQS::Queue"),
                "{id}: only SQS on-failure destinations are read by iam.rs"
            );
            needs.insert(
                Permission::new("sqs:SendMessage", &destination),
                "on-failure destination",
            );
        }
    }
    if let Some(group) = reference(&properties["LoggingConfig"]["LogGroup"]) {
        for action in ["logs:CreateLogStream", "logs:PutLogEvents"] {
            needs.insert(Permission::new(action, &group), "Lambda logs");
        }
    }
    let parameters = template.parameters(orchestrator);
    let tracing = template
        .resolve(&template.0["Globals"]["Function"]["Tracing"], &parameters)
        .map(|mode| template.string(&mode, &parameters));
    let tracing = scalar(&properties["Tracing"]).or(tracing);
    if tracing.is_some_and(|mode| mode != "Disabled") {
        for action in ["xray:PutTraceSegments", "xray:PutTelemetryRecords"] {
            needs.insert(Permission::new(action, "*"), "X-Ray tracing");
        }
    }
    needs
}

// ------------------------------------------------------------------- comparison and table

/// Per orchestrator and function: each permission the scenarios used, with the scenarios.
#[derive(Default)]
struct Used(BTreeMap<(Orchestrator, Function), BTreeMap<Permission, BTreeSet<&'static str>>>);

impl Used {
    fn add(
        &mut self,
        orchestrator: Orchestrator,
        function: Function,
        permission: Permission,
        scenario: &'static str,
    ) {
        self.0
            .entry((orchestrator, function))
            .or_default()
            .entry(permission)
            .or_default()
            .insert(scenario);
    }
}

/// Prints the table (function, action, resource, needed by, allowed by) per orchestrator and
/// returns every disagreement between the template and the needs.
fn compare(template: &Template, used: &Used) -> Vec<String> {
    let mut problems = Vec::new();
    for orchestrator in Orchestrator::ALL {
        let mut rows = vec![[
            "function".to_string(),
            "action".to_string(),
            "resource".to_string(),
            "needed by".to_string(),
            "allowed by".to_string(),
        ]];
        for function in Function::ALL {
            let allowed = template.allowed(function, orchestrator);
            let platform = platform_needs(template, function, orchestrator);
            let empty = BTreeMap::new();
            let scenarios = used.0.get(&(orchestrator, function)).unwrap_or(&empty);
            let mut needed: BTreeMap<Permission, String> = scenarios
                .iter()
                .map(|(p, s)| (p.clone(), s.iter().copied().collect::<Vec<_>>().join(", ")))
                .collect();
            // The table names at most two scenarios per row; a failure names them all.
            let short = |permission: &Permission, by: &String| match scenarios.get(permission) {
                Some(all) if all.len() > 2 => {
                    let first: Vec<_> = all.iter().take(2).copied().collect();
                    format!("{} +{} more", first.join(", "), all.len() - 2)
                }
                _ => by.clone(),
            };
            for (permission, why) in &platform {
                let entry = needed.entry(permission.clone()).or_default();
                if entry.is_empty() {
                    *entry = format!("({why})");
                }
            }
            let all: BTreeSet<&Permission> = needed.keys().chain(allowed.keys()).collect();
            for permission in all {
                let by = needed.get(permission);
                let sid = allowed.get(permission);
                match (by, sid) {
                    (Some(by), None) => problems.push(format!(
                        "[Orchestrator={}] {} needs {} on {} ({by}) but template.yaml does not allow it",
                        orchestrator.parameter(),
                        function.name(),
                        permission.action,
                        permission.resource,
                    )),
                    (None, Some(sid)) => problems.push(format!(
                        "[Orchestrator={}] {} is allowed {} on {} (statement {sid}) but no scenario used it and it is no platform need",
                        orchestrator.parameter(),
                        function.name(),
                        permission.action,
                        permission.resource,
                    )),
                    _ => {}
                }
                rows.push([
                    function.name().to_string(),
                    permission.action.clone(),
                    permission.resource.clone(),
                    by.map_or_else(|| "-".into(), |by| short(permission, by)),
                    sid.cloned().unwrap_or_else(|| "NOT ALLOWED".into()),
                ]);
            }
        }
        let widths: Vec<usize> = (0..4)
            .map(|i| rows.iter().map(|row| row[i].len()).max().unwrap_or(0))
            .collect();
        println!(
            "\nIAM permissions, template.yaml with Orchestrator={}:",
            orchestrator.parameter()
        );
        for row in &rows {
            println!(
                "  {:w0$}  {:w1$}  {:w2$}  {:w3$}  {}",
                row[0],
                row[1],
                row[2],
                row[3],
                row[4],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3],
            );
        }
    }
    problems
}

// ------------------------------------------------------------------------ the harness

/// The private stack, the recorder on every client the functions under test get, and the
/// names of the stack's resources in the template.
struct Harness {
    stack: Stack,
    template: Template,
    recorder: Recorder,
    /// Physical name (table name, queue URL, ARN) -> template name.
    names: Mutex<HashMap<String, String>>,
    state_machine_arn: String,
    /// Unrecorded set-up clients.
    sqs_admin: aws_sdk_sqs::Client,
    secrets_admin: SecretsClient,
}

impl Harness {
    async fn start() -> Harness {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut options = Options::for_repo(&root);
        options.state_dir = std::env::temp_dir().join(format!("enrichment-iam-{}", Uuid::new_v4()));
        options.persist = false;
        options.port = 0;
        options.local_worker = false;
        // The scenarios relay and deliver the webhook events themselves.
        options.outbox_relay = false;
        options.webhook_concurrency = 0;
        let stack = Stack::start(options).await.expect("local stack starts");
        let aws = sdk_config(&stack.info.sqs_url);
        let sfn = aws_sdk_sfn::Client::new(&aws);
        let definition =
            json!({"StartAt": "Enrich", "States": {"Enrich": {"Type": "Pass", "End": true}}});
        let state_machine_arn = sfn
            .create_state_machine()
            .name("enrichment-cascade-local")
            .definition(definition.to_string())
            .role_arn("arn:aws:iam::123456789012:role/enrichment-cascade")
            .send()
            .await
            .unwrap()
            .state_machine_arn;
        let names = HashMap::from([
            (stack.info.table_name.clone(), "EnrichmentTable".to_string()),
            (stack.info.queue_url.clone(), "JobsQueue".to_string()),
            (
                stack.info.bulk_queue_url.clone(),
                "BulkJobsQueue".to_string(),
            ),
            (state_machine_arn.clone(), "CascadeStateMachine".to_string()),
            (
                stack.info.webhook_queue_url.clone(),
                "WebhookQueue".to_string(),
            ),
            (
                stack.info.webhook_dlq_url.clone(),
                "WebhookDeadLetterQueue".to_string(),
            ),
        ]);
        Harness {
            sqs_admin: stack.sqs.clone(),
            secrets_admin: SecretsClient::new(&aws),
            template: Template::load(),
            recorder: Recorder::default(),
            names: Mutex::new(names),
            state_machine_arn,
            stack,
        }
    }

    fn names(&self) -> HashMap<String, String> {
        self.names.lock().unwrap().clone()
    }

    fn name(&self, physical: &str, template_name: &str) {
        self.names
            .lock()
            .unwrap()
            .insert(physical.to_string(), template_name.to_string());
    }

    fn store(&self, fail: Option<Fail>) -> Store {
        let mut config =
            dynamodb_config(&self.stack.info.dynamodb_url).interceptor(self.recorder.clone());
        if let Some(fail) = fail {
            config = config.interceptor(fail);
        }
        Store::new(
            aws_sdk_dynamodb::Client::from_conf(config.build()),
            self.stack.store.table(),
        )
    }

    fn sqs(&self, fail: Option<Fail>) -> aws_sdk_sqs::Client {
        let mut config = sqs_config(&self.stack.info.sqs_url).interceptor(self.recorder.clone());
        if let Some(fail) = fail {
            config = config.interceptor(fail);
        }
        aws_sdk_sqs::Client::from_conf(config.build())
    }

    fn sfn(&self, fail: Option<Fail>) -> aws_sdk_sfn::Client {
        let mut config = aws_sdk_sfn::config::Builder::from(&sdk_config(&self.stack.info.sqs_url))
            .interceptor(self.recorder.clone());
        if let Some(fail) = fail {
            config = config.interceptor(fail);
        }
        aws_sdk_sfn::Client::from_conf(config.build())
    }

    fn secrets(&self) -> SecretsClient {
        let config =
            aws_sdk_secretsmanager::config::Builder::from(&sdk_config(&self.stack.info.sqs_url))
                .interceptor(self.recorder.clone());
        SecretsClient::from_conf(config.build())
    }
}

/// How a delivery to the worker ended, as its orchestrator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivered {
    /// SQS: no batch item failure (the event source mapping deletes the message); Step
    /// Functions: the task succeeded.
    Acknowledged,
    /// SQS: a batch item failure (the message comes back); Step Functions: the task failed and
    /// the state machine retries it.
    Retried,
}

/// What one scenario runs in: an org of its own and the function under test's recorded clients,
/// built as the Lambdas build them under the orchestrator. Set-up goes through unrecorded
/// clients (`setup_*`, `pending_job`, `add_person`, `grant`).
struct Env {
    h: Arc<Harness>,
    orchestrator: Orchestrator,
    org: String,
    granted: AtomicI64,
}

impl Env {
    fn new(h: Arc<Harness>, orchestrator: Orchestrator, index: usize) -> Self {
        let org = format!("org_iam_{}_{index}", orchestrator.parameter());
        Env {
            h,
            orchestrator,
            org,
            granted: AtomicI64::new(0),
        }
    }

    fn config(&self) -> enrichment::config::Config {
        self.h.stack.config.clone()
    }

    fn config_with_max_age(&self, max_age: Duration) -> enrichment::config::Config {
        let mut config = self.config();
        config.max_age = max_age;
        config
    }

    /// The configuration with `REFUND_MISSES=true` (the template's `RefundMisses`).
    fn config_refunding_misses(&self) -> enrichment::config::Config {
        enrichment::config::Config {
            refund_misses: true,
            ..self.config()
        }
    }

    fn principal(&self) -> Principal {
        Principal {
            user_id: "user_iam".into(),
            org_id: self.org.clone(),
        }
    }

    fn domain(&self) -> String {
        format!("{}.test", self.org.replace('_', "-"))
    }

    fn email(&self, local: &str) -> String {
        format!("{local}@{}", self.domain())
    }

    /// A person of this org, the same real person for the global cache as every other person of
    /// this org with this first name.
    fn person(&self, first_name: &str) -> Person {
        Person {
            id: Uuid::new_v4(),
            first_name: Some(first_name.into()),
            last_name: Some("Quill".into()),
            company_name: Some("Northwind".into()),
            company_domain: Some(self.domain()),
            ..Person::default()
        }
    }

    // ---- set-up (not recorded)

    async fn add_person(&self, person: &Person) {
        self.h
            .stack
            .store
            .create_people(&self.org, std::slice::from_ref(person))
            .await
            .unwrap();
    }

    /// `count` people of this org, added in one go, each a different real person, with their
    /// creation time (so in the people list, as the people function creates them).
    async fn add_people(&self, count: usize) -> Vec<Person> {
        let created_at = enrichment::domain::timestamp(chrono::Utc::now());
        let people: Vec<Person> = (0..count)
            .map(|i| Person {
                created_at: Some(created_at.clone()),
                ..self.person(&format!("P{i}"))
            })
            .collect();
        self.h
            .stack
            .store
            .create_people(&self.org, &people)
            .await
            .unwrap();
        people
    }

    async fn grant(&self, amount: i64) {
        self.h
            .stack
            .store
            .grant_credits(&self.org, amount)
            .await
            .unwrap();
        self.granted.fetch_add(amount, Ordering::SeqCst);
    }

    /// Adds `person` and grants the cost of one emails enrichment, then creates it (`pending`):
    /// its job.
    async fn pending_job(&self, person: &Person) -> Job {
        self.add_person(person).await;
        self.grant(self.config().cost(Field::Emails)).await;
        let created = Enrichments::new(self.h.stack.store.clone(), self.config())
            .trigger(
                &Accepted,
                &self.principal(),
                person.id,
                Field::Emails,
                CacheUse::Allowed,
                api_deadline(),
            )
            .await
            .unwrap();
        Job::from(&created)
    }

    /// A worker over unrecorded clients, as set-up for another delivery.
    fn setup_worker(&self, providers: Vec<Arc<Scripted>>) -> Worker {
        Worker::new(
            self.h.stack.store.clone(),
            cascade(providers),
            self.config(),
        )
    }

    async fn balance(&self) -> i64 {
        self.h.stack.store.credit_balance(&self.org).await.unwrap()
    }

    async fn enrichment(&self, person_id: Uuid) -> Enrichment {
        self.h
            .stack
            .store
            .get_enrichment(&self.org, person_id, Field::Emails)
            .await
            .unwrap()
            .expect("an enrichment")
            .enrichment
    }

    /// A refused batch left no enrichment of `people`.
    async fn assert_nothing_written(&self, people: &[Person]) {
        for person in people {
            let found = self
                .h
                .stack
                .store
                .get_enrichment(&self.org, person.id, Field::Emails)
                .await
                .unwrap();
            assert!(found.is_none(), "{}: {found:?}", person.id);
        }
    }

    async fn stored_person(&self, person_id: Uuid) -> Person {
        self.h
            .stack
            .store
            .get_person(&self.org, person_id)
            .await
            .unwrap()
            .expect("the person")
    }

    /// The org's ledger holds ([`Store::check_ledger`]: balance = added − consumed, each
    /// enrichment charged and refunded at most once), and its grants are the scenario's.
    async fn assert_ledger(&self) {
        let check = self
            .h
            .stack
            .store
            .check_ledger(&self.org)
            .await
            .unwrap_or_else(|broken| panic!("{}: {broken}", self.org));
        assert_eq!(
            check.granted,
            self.granted.load(Ordering::SeqCst),
            "{}: grants",
            self.org
        );
    }

    // ---- webhooks (set-up unrecorded)

    /// The webhook settings of the scenarios: the default retry schedule, the webhook queue,
    /// loopback endpoints accepted only when `loopback` (the local receiver).
    fn webhook_config(&self, loopback: bool) -> WebhookConfig {
        WebhookConfig {
            allow_loopback_http: loopback,
            queue_url: Some(self.h.stack.info.webhook_queue_url.clone()),
            ..WebhookConfig::from_vars(&enrichment::config::Vars::from_pairs([("X", "y")])).unwrap()
        }
    }

    /// The relay's and the delivery's use cases over `store`, sending to the webhook queue
    /// through `sqs`.
    fn webhooks(&self, store: Store, sqs: aws_sdk_sqs::Client, loopback: bool) -> Webhooks {
        let queue = DeliveryQueue::new(sqs, self.h.stack.info.webhook_queue_url.clone());
        Webhooks::new(store, self.webhook_config(loopback), Some(queue))
    }

    /// Registers the org's endpoint at `url` (no check: the scenario's receiver is on
    /// loopback).
    async fn register_endpoint(&self, url: &str) {
        let webhook = Webhook {
            url: url.to_string(),
            secret: new_secret().unwrap(),
            created_at: enrichment::domain::timestamp(chrono::Utc::now()),
        };
        self.h
            .stack
            .store
            .put_webhook(&self.org, &webhook)
            .await
            .unwrap();
    }

    /// Ends an enrichment (a pending one cancelled: its transaction puts the outbox event) and
    /// wraps the outbox item, read from the table, as the stream's insert record, as the relay's
    /// event source mapping hands it over.
    async fn ended_enrichment_event(&self) -> StreamEvent {
        let person = self.person("Ada");
        self.pending_job(&person).await;
        Enrichments::new(self.h.stack.store.clone(), self.config())
            .cancel(&self.principal(), person.id, Field::Emails)
            .await
            .unwrap();
        let dynamodb = aws_sdk_dynamodb::Client::from_conf(
            dynamodb_config(&self.h.stack.info.dynamodb_url).build(),
        );
        let items = dynamodb
            .query()
            .table_name(self.h.stack.store.table())
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(
                ":pk",
                aws_sdk_dynamodb::types::AttributeValue::S(org_pk(&self.org)),
            )
            .expression_attribute_values(
                ":prefix",
                aws_sdk_dynamodb::types::AttributeValue::S(OUTBOX_SK_PREFIX.into()),
            )
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .items
            .unwrap_or_default();
        assert_eq!(items.len(), 1, "one outbox event per ending: {items:?}");
        let image = stream_image(&items[0]);
        let keys = json!({"pk": image["pk"], "sk": image["sk"]});
        serde_json::from_value(json!({"Records": [{
            "eventID": Uuid::new_v4().simple().to_string(),
            "eventName": "INSERT",
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": "us-east-1",
            "dynamodb": {
                "ApproximateCreationDateTime": chrono::Utc::now().timestamp() as f64,
                "Keys": keys,
                "NewImage": image,
                "SequenceNumber": "4421584500000000017450439091",
                "SizeBytes": 1024,
                "StreamViewType": "NEW_IMAGE"
            },
            "eventSourceARN": format!(
                "arn:aws:dynamodb:us-east-1:123456789012:table/{}/stream/2026-12-01T00:00:00.000",
                self.h.stack.store.table()
            )
        }]}))
        .unwrap()
    }

    /// Relays `event` through unrecorded clients (its attempt 1 left on the webhook queue).
    async fn setup_relay(&self, event: &StreamEvent) {
        let relay = self.webhooks(self.h.stack.store.clone(), self.h.sqs_admin.clone(), true);
        let response = relay.relay_stream(event).await;
        assert!(response.batch_item_failures.is_empty(), "{response:?}");
    }

    /// The org's endpoint registered at `url`, an enrichment ended and its event relayed
    /// (set-up): attempt 1's message, taken from the webhook queue.
    async fn relayed_to(&self, url: &str) -> DeliveryMessage {
        self.register_endpoint(url).await;
        let event = self.ended_enrichment_event().await;
        self.setup_relay(&event).await;
        self.take_webhook_message().await
    }

    /// The org's next message on the webhook queue, deleted; the other orgs' are dropped.
    async fn take_webhook_message(&self) -> DeliveryMessage {
        let queue = &self.h.stack.info.webhook_queue_url;
        for _ in 0..50 {
            let messages = self
                .h
                .sqs_admin
                .receive_message()
                .queue_url(queue)
                .max_number_of_messages(10)
                .send()
                .await
                .unwrap()
                .messages
                .unwrap_or_default();
            let mut found = None;
            for message in messages {
                self.h
                    .sqs_admin
                    .delete_message()
                    .queue_url(queue)
                    .receipt_handle(message.receipt_handle.clone().unwrap_or_default())
                    .send()
                    .await
                    .unwrap();
                let body: DeliveryMessage =
                    serde_json::from_str(message.body().unwrap_or_default()).unwrap();
                if body.org_id == self.org && found.is_none() {
                    found = Some(body);
                }
            }
            if let Some(body) = found {
                return body;
            }
        }
        panic!("no webhook message of {} on the webhook queue", self.org)
    }

    /// Invokes the delivery `webhooks` with `message` as its event source mapping would: an SQS
    /// batch of one record, received from the webhook queue.
    async fn deliver_webhook(
        &self,
        webhooks: &Webhooks,
        message: &DeliveryMessage,
    ) -> aws_lambda_events::sqs::SqsBatchResponse {
        let queue = self.h.stack.info.webhook_queue_url.clone();
        let record = self
            .receive_body(serde_json::to_string(message).unwrap(), 1, &queue)
            .await;
        let receipt = record.receipt_handle.clone().unwrap();
        let response = webhooks.deliver_batch(std::slice::from_ref(&record)).await;
        self.h
            .sqs_admin
            .delete_message()
            .queue_url(&queue)
            .receipt_handle(receipt)
            .send()
            .await
            .unwrap();
        response
    }

    /// The delivery `message` is an attempt of, as stored: with its body and whether an
    /// attempt is still to come.
    async fn delivery(
        &self,
        message: &DeliveryMessage,
    ) -> (enrichment::webhooks::Delivery, String, bool) {
        self.h
            .stack
            .store
            .get_delivery(&self.org, &message.created_at, message.event_id)
            .await
            .unwrap()
            .expect("the delivery")
    }

    // ---- the functions under test (recorded)

    /// The trigger's job queue under this orchestrator (`QUEUE_URL` or `STATE_MACHINE_ARN`).
    fn job_queue(&self, fail: Option<Fail>) -> Box<dyn JobQueue> {
        match self.orchestrator {
            Orchestrator::Sqs => Box::new(SqsJobQueue::new(
                self.h.sqs(fail),
                self.h.stack.info.queue_url.clone(),
            )),
            Orchestrator::StepFunctions => Box::new(StepFunctionsJobQueue::new(
                self.h.sfn(fail),
                self.h.state_machine_arn.clone(),
            )),
        }
    }

    /// The batch function's job queue under this orchestrator (`BULK_QUEUE_URL` or
    /// `STATE_MACHINE_ARN`).
    fn bulk_queue(&self) -> Box<dyn JobQueue> {
        match self.orchestrator {
            Orchestrator::Sqs => Box::new(SqsJobQueue::new(
                self.h.sqs(None),
                self.h.stack.info.bulk_queue_url.clone(),
            )),
            Orchestrator::StepFunctions => Box::new(StepFunctionsJobQueue::new(
                self.h.sfn(None),
                self.h.state_machine_arn.clone(),
            )),
        }
    }

    /// The batch function: `POST .../enrichment/batch` for emails of `person_ids`, its store
    /// failing as `fail` says.
    async fn batch(
        &self,
        config: enrichment::config::Config,
        fail: Option<Fail>,
        person_ids: &[Uuid],
    ) -> Result<Vec<Enrichment>, ApiError> {
        Enrichments::new(self.h.store(fail), config)
            .enrich_batch(
                self.bulk_queue().as_ref(),
                &self.principal(),
                person_ids,
                Field::Emails,
                CacheUse::Allowed,
                api_deadline(),
            )
            .await
    }

    /// The batch function: `POST .../enrichment/bulk` for emails of `selection`.
    async fn bulk(&self, selection: &Selection) -> Result<Vec<Enrichment>, ApiError> {
        Enrichments::new(self.h.store(None), self.config())
            .enrich_bulk(
                self.bulk_queue().as_ref(),
                &self.principal(),
                selection,
                Field::Emails,
                CacheUse::Allowed,
                api_deadline(),
            )
            .await
    }

    /// The trigger: POST for emails of `person_id`.
    async fn trigger(
        &self,
        config: enrichment::config::Config,
        queue: Box<dyn JobQueue>,
        person_id: Uuid,
    ) -> Result<Enrichment, ApiError> {
        Enrichments::new(self.h.store(None), config)
            .trigger(
                queue.as_ref(),
                &self.principal(),
                person_id,
                Field::Emails,
                CacheUse::Allowed,
                api_deadline(),
            )
            .await
    }

    async fn post(&self, person_id: Uuid) -> Result<Enrichment, ApiError> {
        self.trigger(self.config(), self.job_queue(None), person_id)
            .await
    }

    /// The status function: GET for emails of `person_id`.
    async fn status(
        &self,
        config: enrichment::config::Config,
        person_id: Uuid,
    ) -> Result<Enrichment, ApiError> {
        Enrichments::new(self.h.store(None), config)
            .status(&self.principal(), person_id, Field::Emails)
            .await
    }

    /// The worker as its Lambda builds it: fed by the jobs queue and the bulk jobs queue
    /// (`with_queue`, `with_bulk_queue`) when the template gives it `QUEUE_URL` and
    /// `BULK_QUEUE_URL`, i.e. under the SQS orchestrator.
    fn worker(
        &self,
        config: enrichment::config::Config,
        providers: Vec<Arc<Scripted>>,
        fail: Option<Fail>,
    ) -> Worker {
        let worker = Worker::new(self.h.store(fail), cascade(providers), config);
        match self.orchestrator {
            Orchestrator::Sqs => worker
                .with_queue(SqsJobQueue::new(
                    self.h.sqs(None),
                    self.h.stack.info.queue_url.clone(),
                ))
                .with_bulk_queue(SqsJobQueue::new(
                    self.h.sqs(None),
                    self.h.stack.info.bulk_queue_url.clone(),
                )),
            Orchestrator::StepFunctions => worker,
        }
    }

    /// Invokes `worker` with `job` as its orchestrator would: an SQS batch of one record, the
    /// job's message received `receives` times (sent and received through the real queue for
    /// its receipt handle), or the job itself as a Step Functions task's input.
    async fn deliver(&self, worker: &Worker, job: &Job, receives: u32) -> Delivered {
        match self.orchestrator {
            Orchestrator::Sqs => {
                let queue = self.h.stack.info.queue_url.clone();
                self.deliver_sqs(worker, job, receives, &queue).await
            }
            Orchestrator::StepFunctions => {
                self.deliver_task(worker, WorkerEvent::Job(job.clone()))
                    .await
            }
        }
    }

    /// Invokes `worker` with a batch or bulk enrichment's `job`, received once, as its
    /// orchestrator would: an SQS record from the bulk jobs queue (its `eventSourceARN` names
    /// that queue), or the held execution input (the job and its `notBefore`, as
    /// `StepFunctionsJobQueue::enqueue_held` sends it) passed on by the state machine.
    async fn deliver_held(&self, worker: &Worker, job: &Job) -> Delivered {
        match self.orchestrator {
            Orchestrator::Sqs => {
                let queue = self.h.stack.info.bulk_queue_url.clone();
                self.deliver_sqs(worker, job, 1, &queue).await
            }
            Orchestrator::StepFunctions => {
                let mut input = serde_json::to_value(job).unwrap();
                input["notBefore"] = json!(enrichment::domain::timestamp(chrono::Utc::now()));
                let event: WorkerEvent = serde_json::from_value(input).unwrap();
                assert!(matches!(event, WorkerEvent::Job(_)), "{event:?}");
                self.deliver_task(worker, event).await
            }
        }
    }

    /// An SQS batch of one record: `job` sent to `queue` and received `receives` times.
    async fn deliver_sqs(
        &self,
        worker: &Worker,
        job: &Job,
        receives: u32,
        queue: &str,
    ) -> Delivered {
        let record = self.receive(job, receives, queue).await;
        let receipt = record.receipt_handle.clone().unwrap();
        let mut event = SqsEvent::default();
        event.records = vec![record];
        let response = worker
            .handle(WorkerEvent::Sqs(event), deadline())
            .await
            .unwrap();
        // Leave the queue empty for the next delivery, whatever the outcome.
        let _ = self
            .h
            .sqs_admin
            .delete_message()
            .queue_url(queue)
            .receipt_handle(receipt)
            .send()
            .await;
        let failures = response["batchItemFailures"].as_array().map_or(0, Vec::len);
        if failures == 0 {
            Delivered::Acknowledged
        } else {
            Delivered::Retried
        }
    }

    /// A Step Functions task: the state machine retries it when it fails.
    async fn deliver_task(&self, worker: &Worker, event: WorkerEvent) -> Delivered {
        match worker.handle(event, deadline()).await {
            Ok(_) => Delivered::Acknowledged,
            Err(_) => Delivered::Retried,
        }
    }

    /// Sends `job` to `queue` and receives it (deleting anything else found there: jobs the
    /// trigger scenarios queued, deferred ones), as the event source mapping hands it over:
    /// with the queue's ARN as `eventSourceARN`.
    async fn receive(&self, job: &Job, receives: u32, queue: &str) -> SqsMessage {
        self.receive_body(serde_json::to_string(job).unwrap(), receives, queue)
            .await
    }

    /// Sends `body` to `queue` and receives it, as [`Env::receive`] does for a job.
    async fn receive_body(&self, body: String, receives: u32, queue: &str) -> SqsMessage {
        let sqs = &self.h.sqs_admin;
        let arn = sqs
            .get_queue_attributes()
            .queue_url(queue)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes
            .and_then(|mut a| a.remove(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
            .expect("the queue's ARN");
        let sent = sqs
            .send_message()
            .queue_url(queue)
            .message_body(body)
            .send()
            .await
            .unwrap()
            .message_id
            .unwrap();
        for _ in 0..50 {
            let messages = sqs
                .receive_message()
                .queue_url(queue)
                .max_number_of_messages(10)
                .visibility_timeout(300)
                .send()
                .await
                .unwrap()
                .messages
                .unwrap_or_default();
            for message in messages {
                if message.message_id.as_deref() == Some(sent.as_str()) {
                    let mut record = SqsMessage::default();
                    record.message_id = message.message_id;
                    record.receipt_handle = message.receipt_handle;
                    record.body = message.body;
                    record.event_source = Some("aws:sqs".into());
                    record.event_source_arn = Some(arn);
                    record
                        .attributes
                        .insert("ApproximateReceiveCount".into(), receives.to_string());
                    return record;
                }
                sqs.delete_message()
                    .queue_url(queue)
                    .receipt_handle(message.receipt_handle.unwrap_or_default())
                    .send()
                    .await
                    .unwrap();
            }
        }
        panic!("the job's message never came back from the queue")
    }
}

/// A worker invocation's deadline.
fn deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(60)
}

/// An API function invocation's deadline (its `Timeout` in `template.yaml`).
fn api_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + enrichment::budget::API_FUNCTION_TIMEOUT
}

/// A queue that takes every job without sending it anywhere: set-up enrichments, whose jobs the
/// worker scenarios deliver themselves.
struct Accepted;

#[async_trait]
impl JobQueue for Accepted {
    async fn enqueue(&self, _: &Job) -> Result<(), QueueError> {
        Ok(())
    }

    async fn enqueue_held(
        &self,
        _: &[Job],
        _: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), QueueError> {
        Ok(())
    }
}

fn cascade(providers: Vec<Arc<Scripted>>) -> Cascade {
    let providers = providers
        .into_iter()
        .map(|p| p as Arc<dyn Provider>)
        .collect();
    Cascade::new(providers, vec![], Duration::from_secs(5))
}

/// What a [`Scripted`] provider answers.
#[derive(Clone, Debug)]
enum Answer {
    Found(String),
    NoMatch,
    /// HTTP 503, every time.
    Fails,
}

/// A provider that answers the same every time and counts its calls.
struct Scripted {
    answer: Answer,
    calls: AtomicUsize,
}

impl Scripted {
    fn new(answer: Answer) -> Arc<Self> {
        Arc::new(Scripted {
            answer,
            calls: AtomicUsize::new(0),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Provider for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn can_search(&self, _: Field, _: &PersonQuery) -> bool {
        true
    }
    async fn find(&self, _: Field, _: &PersonQuery) -> Result<ProviderAnswer, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match &self.answer {
            Answer::Found(email) => Ok(ProviderAnswer::Found(vec![RawContact {
                value: email.clone(),
                kind: Some("work".into()),
                ..RawContact::default()
            }])),
            Answer::NoMatch => Ok(ProviderAnswer::NoMatch),
            Answer::Fails => Err(ProviderError::Status(503)),
        }
    }
}
