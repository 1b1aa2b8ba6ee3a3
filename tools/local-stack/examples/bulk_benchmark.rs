//! Batch and bulk enrichment measured on private local stacks: the AWS calls each request
//! makes, the time a 1000-person bulk takes to answer, and whether one org's bulk slows another
//! org's single enrichments down.
//!
//! ```sh
//! cargo run -p local-stack --example bulk_benchmark -- [--workers 5] [--bulk-workers 2]
//!     [--singles 20] [--latency-ms 300] [--runs 3] [--max-seconds 600]
//! ```
//!
//! - `--workers`: jobs at once from the jobs queue, where single POSTs send their jobs
//!   (`Options::worker_concurrency`, `LOCAL_WORKER_CONCURRENCY`; 5 as `make run` starts it).
//! - `--bulk-workers`: jobs at once from the bulk queue, where batch and bulk requests send theirs
//!   (`Options::bulk_concurrency`; 2, the bulk event source mapping's maximum concurrency).
//! - `--singles`: single POSTs sent in each half of the fairness section (one every 500 ms).
//! - `--latency-ms`: the simulated providers' latency per request in the fairness section.
//! - `--runs`: runs of each wall-time measurement (median and max are printed).
//! - `--max-seconds`: the bound on the whole run; past it the benchmark prints what it has
//!   measured and exits with status 1.
//!
//! It prints three sections:
//!
//! 1. **Calls**: the DynamoDB and SQS requests of one batch or bulk request, by operation,
//!    counted by interceptors on SDK clients pointed at the stack's emulators (the use cases
//!    called in process, as the batch function calls them), next to the minimum the issue
//!    names: `ceil(n/25)` batch writes (or `n` conditional writes) plus `ceil(n/10)`
//!    `SendMessageBatch` for `n` new enrichments.
//! 2. **Wall time**: a 1000-person bulk and a 100-person batch answered over HTTP by the local
//!    gateway, each run in a fresh org whose people were created beforehand.
//! 3. **Fairness**: the time to `finished` of org B's single POSTs on an idle stack, then while
//!    org A's 1000-person bulk is being worked, and the ratio of their 95th percentiles (the
//!    goal is at most 2×).
//!
//! Sections 1 and 2 run on a stack whose worker is off (nothing but the measured request
//! touches the emulators); section 3 on a second stack with the worker on and slow providers.
//! Needs moto's server in `.local/venv` (`make setup`). Everything listens on 127.0.0.1; the
//! state (dev keys, fixture, simulator configuration) lives in a temporary directory removed
//! at the end. `RUST_LOG=warn` shows the stacks' logs on stderr.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::sqs::SqsMessage;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use enrichment::auth::Principal;
use enrichment::batch::{BulkFilters, Selection};
use enrichment::budget;
use enrichment::config::Vars;
use enrichment::domain::{CacheUse, Enrichment, Field, Job, JobBatch, Person, Status, timestamp};
use enrichment::enrichment::Enrichments;
use enrichment::queue::{JOBS_PER_MESSAGE, SqsJobQueue};
use enrichment::store::Store;
use enrichment::worker::Worker;
use local_stack::simulator::{
    HunterRecord, KnownPerson, ProviderBehavior, RequestStats, SimulatorConfig,
};
use local_stack::{Options, Stack};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

const BATCH: &str = "/api/v1/operations/enrichment/batch";
const BULK: &str = "/api/v1/operations/enrichment/bulk";
const PEOPLE_BATCH: &str = "/api/v1/entities/persons/batch";
const USER: &str = "user_bulk_benchmark";
/// Credits granted to every org of the run: far more than it spends.
const CREDITS: i64 = 1_000_000;
/// The size of a full bulk and of a full batch (spec operations-api).
const BULK_SIZE: usize = enrichment::batch::MAX_BULK_PEOPLE;
const BATCH_SIZE: usize = enrichment::batch::MAX_BATCH_PEOPLE;
/// The fairness section's orgs: A runs the bulk, B the single POSTs.
const ORG_A: &str = "org_bulk_a";
const ORG_B: &str = "org_single_b";
/// How often a single POST is sent, and how often its enrichment is polled.
const SINGLE_EVERY: Duration = Duration::from_millis(500);
const POLL_EVERY: Duration = Duration::from_millis(100);
/// A single POST's enrichment not finished after this counts as unfinished.
const SINGLE_LIMIT: Duration = Duration::from_secs(120);
/// How long the fairness section waits for the bulk's first job to call a provider (its hold
/// is the request's deadline, 10 s, plus 3 s).
const JOBS_START_LIMIT: Duration = Duration::from_secs(90);
/// The cascade of the fairness section, unless the environment sets it: the product's default
/// email cascade, every provider answering within its timeout.
const CASCADE_DEFAULTS: [(&str, &str); 3] = [
    ("EMAIL_PROVIDERS", "hunter,pdl"),
    ("PHONE_PROVIDERS", "pdl"),
    ("PROVIDER_TIMEOUT_SECONDS", "10"),
];

struct Args {
    workers: usize,
    bulk_workers: usize,
    singles: usize,
    latency_ms: u64,
    runs: usize,
    max_total: Duration,
}

const USAGE: &str = "usage: bulk_benchmark [--workers N (5)] [--bulk-workers N (2)] \
                     [--singles N (20)] [--latency-ms N (300)] [--runs N (3)] \
                     [--max-seconds N (600)]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        workers: 5,
        bulk_workers: 2,
        singles: 20,
        latency_ms: 300,
        runs: 3,
        max_total: Duration::from_secs(600),
    };
    let mut rest = std::env::args().skip(1);
    while let Some(flag) = rest.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.into());
        }
        let value = rest
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = |min: u64, max: u64| {
            value
                .parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| {
                    format!("{flag}: expected a number from {min} to {max}, got {value:?}")
                })
        };
        match flag.as_str() {
            "--workers" => args.workers = number(1, 50)? as usize,
            "--bulk-workers" => args.bulk_workers = number(1, 50)? as usize,
            "--singles" => args.singles = number(1, 500)? as usize,
            "--latency-ms" => args.latency_ms = number(0, 10_000)?,
            "--runs" => args.runs = number(1, 20)? as usize,
            "--max-seconds" => args.max_total = Duration::from_secs(number(10, 7_200)?),
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    if std::env::var_os("RUST_LOG").is_some() {
        local_stack::init_tracing();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bulk_benchmark: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(run(&args));
    // The stacks are shut down by now; do not wait for stray tasks (a poller mid-job).
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Err(message) = result {
        eprintln!("bulk_benchmark: {message}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Counting the AWS calls

/// Counts the requests of the SDK clients it is installed on, by operation: the last part of
/// the `X-Amz-Target` header (`DynamoDB_20120810.BatchGetItem`, `AmazonSQS.SendMessage`; both
/// SDKs speak JSON protocols, and moto answers SQS's). Installed as `read_before_transmit`, it
/// sees every HTTP attempt, SDK retries included: the figure is what the service would bill.
#[derive(Debug, Clone, Default)]
struct Calls(Arc<Mutex<BTreeMap<String, u64>>>);

impl Calls {
    /// The counts since the last take, and a fresh start.
    fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Intercept for Calls {
    fn name(&self) -> &'static str {
        "Calls"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = context
            .request()
            .headers()
            .get("x-amz-target")
            .and_then(|target| target.rsplit('.').next())
            .unwrap_or("(no X-Amz-Target)")
            .to_string();
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(operation)
            .or_default() += 1;
        Ok(())
    }
}

/// The DynamoDB and SQS calls of one measured request.
#[derive(Debug, Clone, Default)]
struct Counted {
    dynamodb: BTreeMap<String, u64>,
    sqs: BTreeMap<String, u64>,
}

/// DynamoDB operations that write (the issue's minimum counts writes, not reads).
const WRITES: [&str; 5] = [
    "TransactWriteItems",
    "BatchWriteItem",
    "PutItem",
    "UpdateItem",
    "DeleteItem",
];
/// SQS operations that send messages.
const SENDS: [&str; 2] = ["SendMessage", "SendMessageBatch"];

impl Counted {
    fn dynamodb_total(&self) -> u64 {
        self.dynamodb.values().sum()
    }

    fn sqs_total(&self) -> u64 {
        self.sqs.values().sum()
    }

    fn total(&self) -> u64 {
        self.dynamodb_total() + self.sqs_total()
    }

    fn of(map: &BTreeMap<String, u64>, names: &[&str]) -> u64 {
        names.iter().filter_map(|n| map.get(*n)).sum()
    }

    /// Writes and sends: what the issue's minimum is made of.
    fn writes_and_sends(&self) -> u64 {
        Self::of(&self.dynamodb, &WRITES) + Self::of(&self.sqs, &SENDS)
    }

    fn plus(&self, other: &Counted) -> Counted {
        let add = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| {
            let mut sum = a.clone();
            for (name, n) in b {
                *sum.entry(name.clone()).or_default() += n;
            }
            sum
        };
        Counted {
            dynamodb: add(&self.dynamodb, &other.dynamodb),
            sqs: add(&self.sqs, &other.sqs),
        }
    }

    fn describe(&self) -> String {
        let list = |map: &BTreeMap<String, u64>| {
            if map.is_empty() {
                "none".to_string()
            } else {
                map.iter()
                    .map(|(name, n)| format!("{name} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        format!(
            "DynamoDB: {}; SQS: {}",
            list(&self.dynamodb),
            list(&self.sqs)
        )
    }
}

/// The counting interceptors of section 1, one per service.
struct Counters {
    dynamodb: Calls,
    sqs: Calls,
    /// When the measured request started.
    since: Mutex<Instant>,
}

impl Counters {
    /// Forgets what was counted so far and restarts the clock.
    fn reset(&self) {
        self.take();
        *self.since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// The calls since the last reset and the seconds since then.
    fn take(&self) -> (Counted, f64) {
        let since = *self.since.lock().unwrap_or_else(|p| p.into_inner());
        (
            Counted {
                dynamodb: self.dynamodb.take(),
                sqs: self.sqs.take(),
            },
            since.elapsed().as_secs_f64(),
        )
    }
}

fn div_ceil(n: usize, d: usize) -> u64 {
    n.div_ceil(d) as u64
}

/// One row of section 1.
struct CallRow {
    label: &'static str,
    /// Enrichments created (for the fan-out: jobs sent on).
    new: usize,
    counted: Counted,
    /// Seconds the measured calls took, in process against the emulators.
    seconds: f64,
    /// The issue's minimum with batch writes: `ceil(n/25)` writes + `ceil(n/10)` sends.
    minimum: u64,
    /// The same with one conditional write per enrichment: `n` + `ceil(n/10)`.
    minimum_conditional: u64,
}

impl CallRow {
    /// A request creating `new` enrichments: it must write them and send their jobs.
    fn request(label: &'static str, new: usize, (counted, seconds): (Counted, f64)) -> Self {
        let sends = div_ceil(new, 10);
        CallRow {
            label,
            new,
            counted,
            seconds,
            minimum: div_ceil(new, 25) + sends,
            minimum_conditional: new as u64 + sends,
        }
    }

    /// The worker's fan-out of `jobs` jobs: nothing to write, `ceil(n/10)` sends.
    fn fan_out(label: &'static str, jobs: usize, (counted, seconds): (Counted, f64)) -> Self {
        CallRow {
            label,
            new: jobs,
            counted,
            seconds,
            minimum: div_ceil(jobs, 10),
            minimum_conditional: div_ceil(jobs, 10),
        }
    }
}

fn ratio(calls: u64, minimum: u64) -> String {
    if minimum == 0 {
        "-".into()
    } else {
        format!("{:.2}", calls as f64 / minimum as f64)
    }
}

fn print_calls(rows: &[CallRow]) {
    if rows.is_empty() {
        return;
    }
    println!();
    println!("1. Calls per request (DynamoDB and SQS requests, SDK retries included)");
    println!(
        "   n: enrichments created (fan-out: jobs sent on). minimum: the issue's ceil(n/25) batch \
         writes + ceil(n/10) SendMessageBatch;"
    );
    println!(
        "   min (cond.): n conditional writes + ceil(n/10) SendMessageBatch. ratio: all calls, \
         reads included, / minimum; w+s: writes and sends only / minimum."
    );
    println!(
        "   (s): the calls' time in process against the emulators (dynoxide, moto), for scale \
         only: moto's SendMessage slows down as a queue fills."
    );
    println!(
        "{:<36}{:>6}{:>10}{:>6}{:>7}{:>9}{:>7}{:>6}{:>13}{:>7}",
        "", "n", "DynamoDB", "SQS", "total", "minimum", "ratio", "w+s", "min (cond.)", "ratio"
    );
    for row in rows {
        let c = &row.counted;
        println!(
            "{:<36}{:>6}{:>10}{:>6}{:>7}{:>9}{:>7}{:>6}{:>13}{:>7}",
            row.label,
            row.new,
            c.dynamodb_total(),
            c.sqs_total(),
            c.total(),
            row.minimum,
            ratio(c.total(), row.minimum),
            ratio(c.writes_and_sends(), row.minimum),
            row.minimum_conditional,
            ratio(c.total(), row.minimum_conditional),
        );
        println!("    {} ({:.2} s)", c.describe(), row.seconds);
    }
}

// ---------------------------------------------------------------------------------------------
// Section 1: calls, in process with counted clients

fn principal(org: &str) -> Principal {
    Principal {
        user_id: USER.into(),
        org_id: org.into(),
    }
}

/// The deadline the batch function's handler gives a request outside Lambda: the API
/// functions' timeout (10 s) from now. The jobs are held until it has passed, plus 3 s.
fn request_deadline() -> Instant {
    Instant::now() + budget::API_FUNCTION_TIMEOUT
}

/// `count` new people of `org`, written straight to the table (not counted), and credits for
/// far more than the run spends.
async fn seed_people(
    stack: &Stack,
    org: &str,
    count: usize,
    prefix: &str,
) -> Result<Vec<Uuid>, String> {
    // Creation times a millisecond apart, as the people API gives a batch: the people list
    // (what a mode "bulk" selection reads) is ordered by them, and leaves out a person without.
    let now = chrono::Utc::now();
    let people: Vec<Person> = (0..count)
        .map(|i| {
            let created = timestamp(now + chrono::Duration::milliseconds(i as i64));
            Person {
                id: Uuid::new_v4(),
                first_name: Some(format!("{prefix}{i}")),
                last_name: Some("Benchmark".into()),
                company_domain: Some(format!("{}.example", prefix.to_lowercase())),
                created_at: Some(created.clone()),
                updated_at: Some(created),
                ..Person::default()
            }
        })
        .collect();
    stack
        .store
        .create_people(org, &people)
        .await
        .map_err(|e| format!("creating {count} people in {org}: {e}"))?;
    stack
        .store
        .grant_credits(org, CREDITS)
        .await
        .map_err(|e| format!("granting credits to {org}: {e}"))?;
    Ok(people.iter().map(|p| p.id).collect())
}

/// Checks that a use case answered one enrichment per person.
fn check_answer(what: &str, answer: &[Enrichment], expected: usize) -> Result<(), String> {
    if answer.len() != expected {
        return Err(format!(
            "{what}: {} enrichments answered, {expected} expected",
            answer.len()
        ));
    }
    Ok(())
}

/// Section 1: each request through the use cases the batch function calls, on a `Store` and an
/// `SqsJobQueue` whose clients count their calls; then the worker's fan-out of the manual
/// bulk's two `JobBatch` messages. `rows` receives each figure as it is measured.
async fn calls_section(
    stack: &Stack,
    vars: &Vars<'static>,
    rows: &mut Vec<CallRow>,
) -> Result<(), String> {
    let counters = Counters {
        dynamodb: Calls::default(),
        sqs: Calls::default(),
        since: Mutex::new(Instant::now()),
    };
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        local_stack::dynamodb_config(&stack.info.dynamodb_url)
            .interceptor(counters.dynamodb.clone())
            .build(),
    );
    let sqs = aws_sdk_sqs::Client::from_conf(
        local_stack::sqs_config(&stack.info.sqs_url)
            .interceptor(counters.sqs.clone())
            .build(),
    );
    let store = Store::new(dynamodb, stack.store.table());
    let enrichments = Enrichments::new(store.clone(), stack.config.clone());
    let queue = SqsJobQueue::new(sqs.clone(), stack.info.bulk_queue_url.clone());
    let fail = |what: &str| {
        let what = what.to_string();
        move |e: enrichment::error::ApiError| format!("{what}: {e} ({e:?})")
    };

    // A batch of 100 people without enrichments: 100 created, charged and queued.
    let org = "org_calls_batch";
    let ids = seed_people(stack, org, BATCH_SIZE, "CallsBatch").await?;
    counters.reset();
    let answer = enrichments
        .enrich_batch(
            &queue,
            &principal(org),
            &ids,
            Field::Emails,
            CacheUse::Allowed,
            request_deadline(),
        )
        .await
        .map_err(fail("batch of 100"))?;
    check_answer("batch of 100", &answer, BATCH_SIZE)?;
    rows.push(CallRow::request(
        "batch of 100, all new",
        BATCH_SIZE,
        counters.take(),
    ));

    // The same batch again: every enrichment exists (pending), reused free: reads only.
    counters.reset();
    let answer = enrichments
        .enrich_batch(
            &queue,
            &principal(org),
            &ids,
            Field::Emails,
            CacheUse::Allowed,
            request_deadline(),
        )
        .await
        .map_err(fail("batch of 100 replayed"))?;
    check_answer("batch of 100 replayed", &answer, BATCH_SIZE)?;
    rows.push(CallRow::request(
        "same batch replayed (all exist)",
        0,
        counters.take(),
    ));

    // A manual bulk of 1000 new people.
    let org = "org_calls_manual";
    let ids = seed_people(stack, org, BULK_SIZE, "CallsManual").await?;
    let selection = Selection::Manual {
        included: ids,
        excluded: Default::default(),
    };
    counters.reset();
    let manual = enrichments
        .enrich_bulk(
            &queue,
            &principal(org),
            &selection,
            Field::Emails,
            CacheUse::Allowed,
            request_deadline(),
        )
        .await
        .map_err(fail("manual bulk of 1000"))?;
    check_answer("manual bulk of 1000", &manual, BULK_SIZE)?;
    let manual_calls = counters.take();
    rows.push(CallRow::request(
        "bulk (manual) of 1000, all new",
        BULK_SIZE,
        manual_calls.clone(),
    ));

    // A bulk of the org's whole people list (mode "bulk", no filter): the list is read with
    // Query instead of checking the ids with BatchGetItem.
    let org = "org_calls_listed";
    seed_people(stack, org, BULK_SIZE, "CallsListed").await?;
    let selection = Selection::Bulk {
        start_index: 0,
        target_count: BULK_SIZE,
        excluded: Default::default(),
        filters: BulkFilters::default(),
    };
    counters.reset();
    let listed = enrichments
        .enrich_bulk(
            &queue,
            &principal(org),
            &selection,
            Field::Emails,
            CacheUse::Allowed,
            request_deadline(),
        )
        .await
        .map_err(fail("bulk (mode bulk) of 1000"))?;
    check_answer("bulk (mode bulk) of 1000", &listed, BULK_SIZE)?;
    rows.push(CallRow::request(
        "bulk (mode bulk) of 1000, all new",
        BULK_SIZE,
        counters.take(),
    ));

    // The worker's side of the manual bulk: its jobs were sent as two held JobBatch messages of
    // 500; once the hold ends, the worker receives each and sends its jobs on, one message per
    // job (SendMessageBatch, 10 a call). Here the worker's own `run_batch` is handed those two
    // messages as the bulk queue's event source would hand them, with a counted bulk queue.
    // (Stack 1's worker is off: the jobs sent on stay queued, nothing runs them.)
    let cascade = local_stack::simulator_cascade(&stack.simulator_url, vars)?;
    let worker = Worker::new(store.clone(), cascade, stack.config.clone()).with_bulk_queue(
        SqsJobQueue::new(sqs.clone(), stack.info.bulk_queue_url.clone()),
    );
    let bulk_queue_name = stack
        .info
        .bulk_queue_url
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let jobs: Vec<Job> = manual.iter().map(Job::from).collect();
    let mut records = Vec::new();
    for (i, group) in jobs.chunks(JOBS_PER_MESSAGE).enumerate() {
        let body = serde_json::to_string(&JobBatch {
            jobs: group.to_vec(),
        })
        .map_err(|e| format!("JobBatch body: {e}"))?;
        let mut record = SqsMessage::default();
        record.message_id = Some(format!("job-batch-{i}"));
        record.body = Some(body);
        record.event_source = Some("aws:sqs".into());
        record.event_source_arn = Some(format!(
            "arn:aws:sqs:{}:000000000000:{bulk_queue_name}",
            local_stack::LOCAL_REGION
        ));
        records.push(record);
    }
    counters.reset();
    let response = worker
        .run_batch(&records, Instant::now() + budget::WORKER_FUNCTION_TIMEOUT)
        .await;
    if !response.batch_item_failures.is_empty() {
        return Err(format!(
            "the worker could not fan {} of the {} JobBatch messages out (RUST_LOG=warn tells why)",
            response.batch_item_failures.len(),
            records.len()
        ));
    }
    let fan_out = counters.take();
    rows.push(CallRow::fan_out(
        "worker fan-out of the 1000 jobs",
        jobs.len(),
        fan_out.clone(),
    ));
    // The whole of a bulk's cost in calls: its request, then its fan-out. The fan-out's
    // SendMessageBatch calls are the minimum's ceil(n/10); the request's own SendMessage calls
    // (the held JobBatch messages) come on top.
    rows.push(CallRow::request(
        "bulk (manual) 1000 + its fan-out",
        BULK_SIZE,
        (manual_calls.0.plus(&fan_out.0), manual_calls.1 + fan_out.1),
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTTP client of the gateway

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(stack: &Stack, org: &str) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Api {
            http,
            base: stack.info.gateway_url.clone(),
            token: stack.token(USER, org, Duration::from_secs(4 * 3600))?,
        })
    }

    /// Sends a request with an optional JSON body (already serialized) and returns the status
    /// and the whole body once received.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, String), String> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| format!("{method} {path}: reading the body: {e}"))?;
        Ok((status, text))
    }

    /// Creates `count` people over the people API (1000 at most a call) and returns their ids.
    async fn create_people(&self, count: usize, prefix: &str) -> Result<Vec<Uuid>, String> {
        let mut ids = Vec::with_capacity(count);
        let domain = format!("{}.example", prefix.to_lowercase());
        for start in (0..count).step_by(enrichment::people::MAX_BATCH) {
            let end = (start + enrichment::people::MAX_BATCH).min(count);
            let persons: Vec<Value> = (start..end)
                .map(|i| {
                    json!({"firstName": format!("{prefix}{i}"), "lastName": "Benchmark",
                           "companyDomain": domain})
                })
                .collect();
            let body = json!({ "persons": persons }).to_string();
            let (status, text) = self
                .send(reqwest::Method::POST, PEOPLE_BATCH, Some(body))
                .await?;
            if status != 201 {
                return Err(format!("POST {PEOPLE_BATCH} answered {status}: {text}"));
            }
            let answer: Value = serde_json::from_str(&text)
                .map_err(|e| format!("POST {PEOPLE_BATCH}: not JSON ({e})"))?;
            for person in answer["persons"].as_array().into_iter().flatten() {
                let id = person["id"]
                    .as_str()
                    .and_then(|id| id.parse().ok())
                    .ok_or_else(|| format!("POST {PEOPLE_BATCH}: a person without id: {person}"))?;
                ids.push(id);
            }
        }
        if ids.len() != count {
            return Err(format!("{} people created, {count} asked", ids.len()));
        }
        Ok(ids)
    }

    /// POSTs `body` to `path` and returns the seconds from the send until the whole answer was
    /// received, after checking that it is a 200 with `expected` enrichments.
    async fn timed_post(&self, path: &str, body: &Value, expected: usize) -> Result<f64, String> {
        let body = body.to_string();
        let started = Instant::now();
        let (status, text) = self.send(reqwest::Method::POST, path, Some(body)).await?;
        let seconds = started.elapsed().as_secs_f64();
        if status != 200 {
            return Err(format!(
                "POST {path} answered {status} after {seconds:.2} s: {}",
                shorten(&text)
            ));
        }
        let answer: Vec<Value> = serde_json::from_str(&text)
            .map_err(|e| format!("POST {path}: not an array ({e}): {}", shorten(&text)))?;
        if answer.len() != expected {
            return Err(format!(
                "POST {path}: {} enrichments answered, {expected} expected",
                answer.len()
            ));
        }
        Ok(seconds)
    }
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= 300 {
        text.to_string()
    } else {
        format!("{}...", text.chars().take(300).collect::<String>())
    }
}

fn manual_bulk_body(ids: &[Uuid]) -> Value {
    json!({"selection": {"mode": "manual", "includedIds": ids, "excludedIds": []},
           "field": "emails"})
}

// ---------------------------------------------------------------------------------------------
// Section 2: wall time over HTTP

/// One row of section 2: the seconds of each run.
struct WallRow {
    label: &'static str,
    seconds: Vec<f64>,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

fn seconds(value: Option<f64>) -> String {
    value.map_or("-".into(), |s| format!("{s:.2} s"))
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    values
}

fn print_walls(rows: &[WallRow], runs: usize) {
    if rows.iter().all(|r| r.seconds.is_empty()) {
        return;
    }
    println!();
    println!(
        "2. Wall time of the answer over HTTP (local gateway; clock around the POST only; each run \
         a fresh org, people created beforehand)"
    );
    let mut header = format!("{:<36}", "");
    for run in 1..=runs {
        header.push_str(&format!("{:>10}", format!("run {run}")));
    }
    header.push_str(&format!("{:>10}{:>10}", "median", "max"));
    println!("{header}");
    for row in rows {
        let mut line = format!("{:<36}", row.label);
        for run in 0..runs {
            line.push_str(&format!("{:>10}", seconds(row.seconds.get(run).copied())));
        }
        let all = sorted(&row.seconds);
        line.push_str(&format!(
            "{:>10}{:>10}",
            seconds(percentile(&all, 50.0)),
            seconds(all.last().copied())
        ));
        println!("{line}");
    }
    println!(
        "   (the gateway's deadline is the API functions' {} s timeout; past it less 0.5 s a request \
         answers 503)",
        budget::API_FUNCTION_TIMEOUT.as_secs()
    );
}

/// Section 2: `runs` times each of a manual bulk of 1000, a mode "bulk" bulk of 1000 and a
/// batch of 100, each in a fresh org with its people created over the people API first.
async fn wall_section(stack: &Stack, runs: usize, rows: &mut Vec<WallRow>) -> Result<(), String> {
    rows.extend([
        WallRow {
            label: "bulk (manual) of 1000, all new",
            seconds: Vec::new(),
        },
        WallRow {
            label: "bulk (mode bulk) of 1000, all new",
            seconds: Vec::new(),
        },
        WallRow {
            label: "batch of 100, all new",
            seconds: Vec::new(),
        },
    ]);
    for run in 0..runs {
        let org = format!("org_wall_manual_{run}");
        let api = Api::new(stack, &org)?;
        let ids = api.create_people(BULK_SIZE, "WallManual").await?;
        grant(stack, &org).await?;
        let s = api
            .timed_post(BULK, &manual_bulk_body(&ids), BULK_SIZE)
            .await?;
        rows[0].seconds.push(s);

        let org = format!("org_wall_listed_{run}");
        let api = Api::new(stack, &org)?;
        api.create_people(BULK_SIZE, "WallListed").await?;
        grant(stack, &org).await?;
        let body = json!({"selection": {"mode": "bulk", "startIndex": 0, "targetCount": BULK_SIZE,
                                        "excludedIds": [], "filters": {}},
                          "field": "emails"});
        let s = api.timed_post(BULK, &body, BULK_SIZE).await?;
        rows[1].seconds.push(s);

        let org = format!("org_wall_batch_{run}");
        let api = Api::new(stack, &org)?;
        let ids = api.create_people(BATCH_SIZE, "WallBatch").await?;
        grant(stack, &org).await?;
        let body = json!({"personIds": ids, "field": "emails"});
        let s = api.timed_post(BATCH, &body, BATCH_SIZE).await?;
        rows[2].seconds.push(s);
        eprintln!("  wall time: run {} of {runs} done", run + 1);
    }
    Ok(())
}

async fn grant(stack: &Stack, org: &str) -> Result<(), String> {
    stack
        .store
        .grant_credits(org, CREDITS)
        .await
        .map(|_| ())
        .map_err(|e| format!("granting credits to {org}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Section 3: fairness

/// What became of one single POST.
#[derive(Debug, Clone)]
enum Sample {
    /// Seconds from the POST's send to the first poll answer that showed `finished` or
    /// `failed`.
    Done { seconds: f64, status: String },
    /// Still pending after [`SINGLE_LIMIT`].
    Unfinished,
    /// The POST was refused (status and body).
    Refused(u16, String),
}

/// The measurements of section 3, filled as they arrive so that a run stopped by
/// `--max-seconds` can still print them.
#[derive(Default)]
struct Fairness {
    idle: Arc<Mutex<Vec<Sample>>>,
    busy: Arc<Mutex<Vec<Sample>>>,
    /// The seconds org A's bulk POST took to answer.
    bulk_answer: Option<f64>,
    /// Seconds from the bulk's answer until its jobs called the providers.
    jobs_started_after: Option<f64>,
    /// Org A's enrichments by status once the last busy single was done.
    bulk_progress: Option<BTreeMap<String, usize>>,
    /// Provider requests during the busy half, by provider.
    busy_provider_requests: Option<BTreeMap<String, u64>>,
}

/// The known people of the fairness section: `2 × singles` distinct identities, each found by
/// Hunter (its first provider) by name and domain. Distinct names matter: the global cache
/// serves a second person with the same name and domain without a provider call, which would
/// make the figure meaningless.
fn single_identities(singles: usize) -> Vec<KnownPerson> {
    ["Idle", "Busy"]
        .iter()
        .flat_map(|half| {
            (0..singles).map(move |i| {
                let first = "Quinn".to_string();
                let last = format!("{half}{i:03}");
                let domain = "fairness-b.example".to_string();
                KnownPerson {
                    hunter: Some(HunterRecord {
                        email: format!("{}.{}@{domain}", first, last).to_lowercase(),
                        score: 95,
                        verification_status: Some("valid".into()),
                        position: None,
                        simulate: Default::default(),
                    }),
                    first_name: first,
                    last_name: last,
                    company_name: Some("Fairness B".into()),
                    company_domain: Some(domain),
                    linkedin_url: None,
                    pdl: None,
                    prospeo: None,
                    fullenrich: None,
                    dropcontact: None,
                }
            })
        })
        .collect()
}

/// Every provider answers after `latency_ms`: a bulk job for a person nobody knows asks each
/// provider of the cascade in turn, so the bulk takes minutes with a few bulk pollers.
fn simulator_config(latency_ms: u64) -> SimulatorConfig {
    SimulatorConfig {
        seed: 1,
        providers: local_stack::simulator::PROVIDERS
            .iter()
            .map(|name| {
                (
                    name.to_string(),
                    ProviderBehavior {
                        latency_ms,
                        ..Default::default()
                    },
                )
            })
            .collect(),
    }
}

async fn request_stats(simulator: &str) -> Result<RequestStats, String> {
    reqwest::Client::new()
        .get(format!("{simulator}/stats"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("simulator /stats: {e}"))?
        .json()
        .await
        .map_err(|e| format!("simulator /stats: {e}"))
}

fn requests_since(after: &RequestStats, before: &RequestStats) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(name, a)| {
            let b = before.get(name).map_or(0, |b| b.requests);
            (name.clone(), a.requests.saturating_sub(b))
        })
        .collect()
}

/// POSTs a single enrichment of `person` (emails) and polls it every [`POLL_EVERY`] until it
/// is `finished` or `failed`: the time to finished is measured from the POST's send to the
/// arrival of the first poll answer that shows it.
async fn time_to_finished(api: &Api, person: Uuid) -> Result<Sample, String> {
    let path = format!("/api/v1/operations/enrichment/{person}?field=emails");
    let sent = Instant::now();
    let (status, text) = api.send(reqwest::Method::POST, &path, None).await?;
    if status != 200 {
        return Ok(Sample::Refused(status, shorten(&text)));
    }
    let mut text = text;
    loop {
        let enrichment: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{path}: not JSON ({e}): {}", shorten(&text)))?;
        let status = enrichment["status"].as_str().unwrap_or_default();
        if status == Status::Finished.as_str() || status == Status::Failed.as_str() {
            return Ok(Sample::Done {
                seconds: sent.elapsed().as_secs_f64(),
                status: status.to_string(),
            });
        }
        if status != Status::Pending.as_str() {
            return Err(format!(
                "{path}: unexpected status {status:?}: {enrichment}"
            ));
        }
        if sent.elapsed() >= SINGLE_LIMIT {
            return Ok(Sample::Unfinished);
        }
        tokio::time::sleep(POLL_EVERY).await;
        let (code, body) = api.send(reqwest::Method::GET, &path, None).await?;
        if code != 200 {
            return Err(format!("GET {path} answered {code}: {}", shorten(&body)));
        }
        text = body;
    }
}

/// Sends one single POST per person of `people`, one every [`SINGLE_EVERY`], each followed
/// to its end; the samples go to `samples` as they come.
async fn singles_phase(
    api: &Api,
    people: &[Uuid],
    samples: Arc<Mutex<Vec<Sample>>>,
) -> Result<(), String> {
    let start = Instant::now();
    let mut set = JoinSet::new();
    for (i, person) in people.iter().enumerate() {
        let (api, person, samples) = (api.clone(), *person, samples.clone());
        let at = start + SINGLE_EVERY * i as u32;
        set.spawn(async move {
            tokio::time::sleep_until(at).await;
            let sample = time_to_finished(&api, person).await?;
            samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(sample);
            Ok::<(), String>(())
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.map_err(|e| format!("a single POST's task: {e}"))??;
    }
    Ok(())
}

/// Section 3 on a stack with the worker on and slow providers: org B's singles on the idle
/// stack, then org A's 1000-person bulk, then (once the bulk's jobs call the providers) org
/// B's singles again.
async fn fairness_section(
    stack: &Stack,
    args: &Args,
    identities: &[KnownPerson],
    fairness: &mut Fairness,
) -> Result<(), String> {
    // Org B: one person per known identity, the first half for the idle stack.
    let people: Vec<Person> = identities
        .iter()
        .map(|k| Person {
            id: Uuid::new_v4(),
            first_name: Some(k.first_name.clone()),
            last_name: Some(k.last_name.clone()),
            company_name: k.company_name.clone(),
            company_domain: k.company_domain.clone(),
            created_at: Some(timestamp(chrono::Utc::now())),
            ..Person::default()
        })
        .collect();
    stack
        .store
        .create_people(ORG_B, &people)
        .await
        .map_err(|e| format!("creating org B's people: {e}"))?;
    grant(stack, ORG_B).await?;
    let ids: Vec<Uuid> = people.iter().map(|p| p.id).collect();
    let (idle_ids, busy_ids) = ids.split_at(args.singles);
    // Org A: 1000 people no provider knows, each asked of every provider of the cascade.
    let bulk_ids = seed_people(stack, ORG_A, BULK_SIZE, "BulkA").await?;
    let a = Api::new(stack, ORG_A)?;
    let b = Api::new(stack, ORG_B)?;

    eprintln!("  fairness: {} singles on the idle stack", args.singles);
    singles_phase(&b, idle_ids, fairness.idle.clone()).await?;

    eprintln!("  fairness: org A's bulk of {BULK_SIZE}");
    let before = request_stats(&stack.simulator_url).await?;
    fairness.bulk_answer = Some(
        a.timed_post(BULK, &manual_bulk_body(&bulk_ids), BULK_SIZE)
            .await?,
    );
    // Wait until the bulk's jobs run: its JobBatch messages are held until the request's
    // deadline + 3 s, then fanned out; a job's first provider call shows in the simulator's
    // counters (nothing else calls the providers meanwhile).
    let answered = Instant::now();
    loop {
        let now = request_stats(&stack.simulator_url).await?;
        let calls: u64 = requests_since(&now, &before).values().sum();
        if calls >= args.bulk_workers as u64 {
            break;
        }
        if answered.elapsed() > JOBS_START_LIMIT {
            return Err(format!(
                "org A's bulk jobs made {calls} provider calls within {} s of its answer",
                JOBS_START_LIMIT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fairness.jobs_started_after = Some(answered.elapsed().as_secs_f64());

    eprintln!(
        "  fairness: {} singles while the bulk is worked",
        args.singles
    );
    let busy_before = request_stats(&stack.simulator_url).await?;
    singles_phase(&b, busy_ids, fairness.busy.clone()).await?;
    let busy_after = request_stats(&stack.simulator_url).await?;
    fairness.busy_provider_requests = Some(requests_since(&busy_after, &busy_before));

    // Where the bulk stood when the singles were done: it must still have been running for
    // the busy figures to mean anything.
    let keys: Vec<(Uuid, Field)> = bulk_ids.iter().map(|id| (*id, Field::Emails)).collect();
    let records = stack
        .store
        .get_enrichments(ORG_A, &keys)
        .await
        .map_err(|e| format!("reading org A's enrichments: {e}"))?;
    let mut progress = BTreeMap::new();
    for record in records {
        *progress
            .entry(record.enrichment.status.as_str().to_string())
            .or_default() += 1;
    }
    fairness.bulk_progress = Some(progress);
    Ok(())
}

struct Summary {
    sent: usize,
    done: usize,
    failed: usize,
    unfinished: usize,
    refused: Vec<(u16, String)>,
    /// Sorted seconds of the done ones.
    seconds: Vec<f64>,
}

fn summarize(samples: &Mutex<Vec<Sample>>) -> Summary {
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner());
    let mut summary = Summary {
        sent: samples.len(),
        done: 0,
        failed: 0,
        unfinished: 0,
        refused: Vec::new(),
        seconds: Vec::new(),
    };
    for sample in samples.iter() {
        match sample {
            Sample::Done { seconds, status } => {
                summary.done += 1;
                if status == Status::Failed.as_str() {
                    summary.failed += 1;
                }
                summary.seconds.push(*seconds);
            }
            Sample::Unfinished => summary.unfinished += 1,
            Sample::Refused(status, body) => summary.refused.push((*status, body.clone())),
        }
    }
    summary.seconds.sort_by(f64::total_cmp);
    summary
}

fn print_fairness(fairness: &Fairness, args: &Args, complete: bool) {
    let idle = summarize(&fairness.idle);
    let busy = summarize(&fairness.busy);
    if idle.sent + busy.sent == 0 && fairness.bulk_answer.is_none() {
        return;
    }
    println!();
    println!(
        "3. Fairness: time to finished of org B's single POSTs (emails, one every {} ms, polled \
         every {} ms; providers {} ms per request){}",
        SINGLE_EVERY.as_millis(),
        POLL_EVERY.as_millis(),
        args.latency_ms,
        if complete { "" } else { " (partial)" }
    );
    let row = |label: &str, x: String, y: String| println!("{label:<36}{x:>14}{y:>22}");
    row("", "idle stack".into(), "during org A's bulk".into());
    row(
        "single POSTs measured",
        idle.sent.to_string(),
        busy.sent.to_string(),
    );
    row(
        "  finished or failed",
        idle.done.to_string(),
        busy.done.to_string(),
    );
    if idle.failed + busy.failed > 0 {
        row(
            "    of which failed",
            idle.failed.to_string(),
            busy.failed.to_string(),
        );
    }
    if idle.unfinished + busy.unfinished > 0 {
        row(
            &format!("  unfinished after {} s", SINGLE_LIMIT.as_secs()),
            idle.unfinished.to_string(),
            busy.unfinished.to_string(),
        );
    }
    if !idle.refused.is_empty() || !busy.refused.is_empty() {
        row(
            "  POST refused",
            idle.refused.len().to_string(),
            busy.refused.len().to_string(),
        );
    }
    for (label, p) in [("p50", 50.0), ("p95", 95.0)] {
        row(
            &format!("time to finished {label}"),
            seconds(percentile(&idle.seconds, p)),
            seconds(percentile(&busy.seconds, p)),
        );
    }
    row(
        "time to finished max",
        seconds(idle.seconds.last().copied()),
        seconds(busy.seconds.last().copied()),
    );
    match (
        percentile(&idle.seconds, 95.0),
        percentile(&busy.seconds, 95.0),
    ) {
        (Some(i), Some(b)) if i > 0.0 => {
            let r = b / i;
            println!(
                "p95(busy) / p95(idle): {r:.2}x (goal <= 2x: {})",
                if r <= 2.0 { "met" } else { "NOT met" }
            );
        }
        _ => println!("p95(busy) / p95(idle): -"),
    }
    if let Some(s) = fairness.bulk_answer {
        println!("org A's bulk of {BULK_SIZE} (people no provider knows): answered in {s:.2} s");
        if let Some(t) = fairness.jobs_started_after {
            // The jobs are held until the request's deadline (10 s after it arrived) + 3 s,
            // in whole seconds of DelaySeconds; then the bulk pollers fan the two JobBatch
            // messages out (100 SendMessageBatch) before the first job runs.
            let hold = (budget::API_FUNCTION_TIMEOUT + budget::HOLD_MARGIN).as_secs_f64() - s;
            println!(
                "  its hold ended about {hold:.1} s after the answer; its jobs called the providers \
                 {t:.1} s after the answer (the rest: the fan-out, on moto)"
            );
        }
    }
    if let Some(requests) = &fairness.busy_provider_requests {
        let list: Vec<String> = requests
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        println!(
            "provider requests during the busy half (bulk jobs and singles): {}",
            if list.is_empty() {
                "none".to_string()
            } else {
                list.join(", ")
            }
        );
    }
    if let Some(progress) = &fairness.bulk_progress {
        let list: Vec<String> = progress.iter().map(|(s, n)| format!("{n} {s}")).collect();
        println!(
            "org A's bulk when the last single was done: {}",
            list.join(", ")
        );
    }
    for (half, summary) in [("idle", &idle), ("busy", &busy)] {
        for (status, body) in &summary.refused {
            println!("{half}: POST refused {status}: {body}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running it all

/// `work`, unless the run's deadline comes first: then an error naming `what`.
async fn bounded<T>(
    deadline: Instant,
    args: &Args,
    what: &str,
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "stopped by --max-seconds {} during {what}; the figures above are what it measured",
                args.max_total.as_secs()
            ))
        })
}

/// Stops a stack, waiting at most 30 s (the remaining bulk work is abandoned).
async fn stop(stack: Stack) {
    let _ = tokio::time::timeout(Duration::from_secs(30), stack.shutdown()).await;
}

fn stack_options(root: &Path, state_dir: PathBuf, vars: Vars<'static>) -> Options {
    let mut options = Options::for_repo(root);
    options.state_dir = state_dir;
    options.persist = false;
    options.port = 0;
    options.vars = vars;
    options
}

async fn run(args: &Args) -> Result<(), String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let scratch = std::env::temp_dir().join(format!("bulk-benchmark-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let result = run_in(args, &root, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn run_in(args: &Args, root: &Path, scratch: &Path) -> Result<(), String> {
    let started = Instant::now();
    let deadline = started + args.max_total;
    let vars = Vars::env().or(Vars::from_pairs(CASCADE_DEFAULTS));
    let env = |name: &'static str| vars.string(name).unwrap_or_default();
    println!(
        "bulk benchmark ({} build): {} job pollers, {} bulk pollers; cascade: emails {} | {} s per \
         provider call; bound {} s",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        args.workers,
        args.bulk_workers,
        env("EMAIL_PROVIDERS"),
        env("PROVIDER_TIMEOUT_SECONDS"),
        args.max_total.as_secs()
    );

    // Stack 1, worker off: sections 1 and 2. Nothing runs in the background, so each figure
    // is the measured request's alone.
    let mut options = stack_options(root, scratch.join("stack-1"), vars.clone());
    options.local_worker = false;
    let stack = bounded(
        deadline,
        args,
        "the start of stack 1",
        Stack::start(options),
    )
    .await?;
    let mut call_rows = Vec::new();
    let outcome = bounded(
        deadline,
        args,
        "section 1 (calls)",
        calls_section(&stack, &vars, &mut call_rows),
    )
    .await;
    print_calls(&call_rows);
    let outcome = match outcome {
        Ok(()) => {
            let mut wall_rows = Vec::new();
            let outcome = bounded(
                deadline,
                args,
                "section 2 (wall time)",
                wall_section(&stack, args.runs, &mut wall_rows),
            )
            .await;
            print_walls(&wall_rows, args.runs);
            outcome
        }
        error => error,
    };
    stop(stack).await;
    outcome?;

    // Stack 2, worker on, every provider slow: section 3.
    let identities = single_identities(args.singles);
    let fixture = scratch.join("fairness-people.json");
    let config_path = scratch.join("fairness-simulator.json");
    let write = |path: &Path, value: String| {
        std::fs::write(path, value).map_err(|e| format!("{}: {e}", path.display()))
    };
    write(
        &fixture,
        serde_json::to_string_pretty(&identities).map_err(|e| e.to_string())?,
    )?;
    write(
        &config_path,
        serde_json::to_string_pretty(&simulator_config(args.latency_ms))
            .map_err(|e| e.to_string())?,
    )?;
    let mut options = stack_options(root, scratch.join("stack-2"), vars.clone());
    options.local_worker = true;
    options.worker_concurrency = args.workers;
    options.bulk_concurrency = args.bulk_workers;
    options.fixture = fixture;
    options.simulator_config = Some(config_path);
    let stack = bounded(
        deadline,
        args,
        "the start of stack 2",
        Stack::start(options),
    )
    .await?;
    let mut fairness = Fairness::default();
    let outcome = bounded(
        deadline,
        args,
        "section 3 (fairness)",
        fairness_section(&stack, args, &identities, &mut fairness),
    )
    .await;
    print_fairness(&fairness, args, outcome.is_ok());
    // Shutting the stack down stops org A's remaining bulk jobs.
    stop(stack).await;
    println!();
    println!("total time {:.0} s", started.elapsed().as_secs_f64());
    outcome
}
