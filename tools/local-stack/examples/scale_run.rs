//! A scale run through a private local stack: thousands of enrichments from many orgs against
//! providers with real rate limits and an outage. One org enriches a thousand people with one
//! bulk request; the others send single POSTs and batches spread over time. Run it "before"
//! (`--limiter off`: no `<NAME>_RATE_PER_*`, each worker calling on its own) and "after" (the
//! default: the providers' limits shared by every worker through DynamoDB, set equal to the
//! simulator's).
//!
//! ```sh
//! cargo run --release -p local-stack --example scale_run -- [--limiter on|off]
//!     [--enrichments 3000] [--orgs 20] [--bulk 1000] [--spread-seconds 180] [--bulk-at 30]
//!     [--workers 50] [--bulk-workers 50] [--outage 60,120 | --outage none] [--seed 7]
//!     [--max-wait-seconds 900] [--idle-baseline] [--timeline]
//! ```
//!
//! - `--enrichments`: all the enrichments of the run; `--bulk` of them (at most 1000) are the
//!   bulk org's, one `POST /api/v1/operations/enrichment/bulk` (manual selection, emails) sent
//!   `--bulk-at` seconds after the run starts.
//! - `--orgs`: the bulk org and `orgs - 1` small orgs sharing the rest: their people's emails
//!   (and every eighth person's phones), each as a single POST or, about 30% of the emails, in
//!   batches of 10 (`POST .../enrichment/batch`), at times drawn uniformly over the first
//!   `--spread-seconds` of the run.
//! - `--workers`: jobs at once from the jobs queue (single POSTs; `Options::worker_concurrency`,
//!   the template's `WorkerMaxConcurrency`); `--bulk-workers` (default: the same): jobs at once
//!   from the bulk queue (batches and bulks; `Options::bulk_concurrency`,
//!   `WorkerBulkMaxConcurrency`, whose template default is 2). Each is a separate event source.
//! - `--outage FROM,TO`: Prospeo answers 500 to everything in that span of the run (seconds
//!   after its start); `none`: no outage.
//! - `--idle-baseline`: the small orgs alone, the same people at the same times, without the
//!   bulk: their time to `finished` to compare with the same figures during the bulk.
//! - `--max-wait-seconds`: the bound on the run from its start; what is still pending then is
//!   reported as such.
//! - `--timeline`: also print, per 10 s of the run, the enrichments ended, each provider's
//!   requests, rate-limited answers, 500s and circuits opened, and how far ahead each
//!   provider's next free slot was; then each circuit opening (when, its wait, the failures
//!   the caller's slot had seen); and the small orgs' time to `finished` by when they were
//!   sent (per 30 s of the spread).
//!
//! A request answered 503 or 429 is sent again after 2, 4, 8, 16, 32 s (as a client would);
//! its enrichments' time counts from the first send.
//!
//! The simulator limits Hunter to 15 requests a calendar second, PDL to 10, Prospeo to 5 and
//! FullEnrich to 1 (its submits; its polls are not counted, though FullEnrich's documented
//! limit and the limiter count them), each answering in 100 to 300 ms, and knows every person
//! through one provider of the cascade (`EMAIL_PROVIDERS=hunter,pdl,prospeo,fullenrich`,
//! `PHONE_PROVIDERS=pdl,prospeo,fullenrich`, `PROVIDER_TIMEOUT_SECONDS=10`,
//! `PROVIDER_POLL_SECONDS=5` unless the environment sets them; the rates are always the
//! run's). It prints:
//!
//! - enrichments by outcome, and finished per minute (mean, and the best 60 s);
//! - per provider: requests per second, peak (per calendar second, sampling `GET /stats` 5 ms
//!   after each) and mean (first to last second with requests), against its limit; requests,
//!   rate-limited answers (the simulator's `rate_limited`) and 500s;
//! - the time from POST to `finished` (p50/p95/max; from the request's send to the
//!   enrichment's `updatedAt`) for the bulk org, the small orgs, and the small orgs' requests
//!   sent while the bulk was worked (with `--idle-baseline`: sent from `--bulk-at` to the end of
//!   the spread, the same requests);
//! - the failed and timed-out enrichments (and refused requests) by `error`;
//! - the worker: invocations and handler seconds (`Stack::worker_usage`, what Lambda bills);
//!   the seconds its jobs waited in the process for a provider slot (`Stack::slot_waits`) and
//!   slept before asking a provider again (the cascade's retry events); its deferrals by cause
//!   (a slot more than a second away, a full calendar window, a provider unavailable, another
//!   worker); the mean time from a limited call's admission to its answer;
//! - the limiter's `UpdateItem`s on `PROVIDER#` items by kind (reserve, reserve and count,
//!   gate, circuit open, close), per provider request and per enrichment, and every DynamoDB
//!   request by operation (the run's own reads left out): counted from the DynamoDB
//!   emulator's trace events, exact, conditional failures included;
//! - the emulators under the load: SQS and DynamoDB round trips and the queues' depths every
//!   10 s, the limiter items' `next` (how far ahead the next free slot is) every second.
//!
//! Needs moto's server in `.local/venv` (`make setup`). Everything listens on 127.0.0.1; the
//! state lives in a temporary directory removed at the end. `RUST_LOG=warn` shows the stack's
//! logs on stderr; progress goes to stderr every 10 s, the report to stdout at the end, after
//! the worker's metrics (one EMF JSON line per event, as a Lambda writes them: `| grep -v '^{'`
//! leaves the report alone).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use enrichment::config::Vars;
use enrichment::domain::{Enrichment, Field, Person, Status};
use enrichment::providers::registry::REGISTRY;
use local_stack::Stack;
use local_stack::simulator::{KnownPerson, ProviderBehavior, RequestStats, SimulatorConfig};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use uuid::Uuid;

#[path = "support/workload.rs"]
mod workload;
use workload::{
    Api, Identities, Identity, Rng, describe, describe_fixture, fullenrich_record, hunter_record,
    pdl_record, percentile, phone, private_options, prospeo_record, request_stats,
    reset_request_stats,
};

/// Each limited provider's requests per second: the simulator's limit, and with the limiter on
/// its `<NAME>_RATE_PER_SECOND`.
const LIMITS: [(&str, u32); 4] = [
    ("hunter", 15),
    ("pdl", 10),
    ("prospeo", 5),
    ("fullenrich", 1),
];

/// Each provider's answer time in the simulator.
const LATENCY_MS: [(&str, u64); 4] = [
    ("hunter", 100),
    ("pdl", 200),
    ("prospeo", 150),
    ("fullenrich", 300),
];

/// The provider that has the outage.
const OUTAGE_PROVIDER: &str = "prospeo";

/// The cascade of the run, unless the environment sets it.
const CASCADE_DEFAULTS: [(&str, &str); 4] = [
    ("EMAIL_PROVIDERS", "hunter,pdl,prospeo,fullenrich"),
    ("PHONE_PROVIDERS", "pdl,prospeo,fullenrich"),
    ("PROVIDER_TIMEOUT_SECONDS", "10"),
    ("PROVIDER_POLL_SECONDS", "5"),
];

/// Who first finds a person's emails, in the email cascade's order, and how often: the
/// providers before it know nothing, so each provider's share of the load is the sum of its
/// own and the later ones' (hunter 100%, pdl 38%, prospeo 14%, fullenrich 2.5%).
const EMAIL_FINDERS: [(&str, f64); 5] = [
    ("hunter", 0.62),
    ("pdl", 0.24),
    ("prospeo", 0.115),
    ("fullenrich", 0.015),
    ("nobody", 0.01),
];

/// The same for phones, in the phone cascade's order.
const PHONE_FINDERS: [(&str, f64); 4] = [
    ("pdl", 0.6),
    ("prospeo", 0.37),
    ("fullenrich", 0.02),
    ("nobody", 0.01),
];

/// Every eighth person of a small org is also asked for phones.
const PHONES_EVERY: usize = 8;
/// The size of a small org's batch, and the chance that a small org's next email enrichments
/// go as one (about 30% of its emails then go in batches).
const BATCH_SIZE: usize = 10;
const BATCH_CHANCE: f64 = 0.04;

const USER: &str = "user_scale";
const BULK_ORG: &str = "org_scale_bulk";
const CREDITS: i64 = 1_000_000;

/// From the simulator's start to the run's: the setup (people, credits) happens in between,
/// and the outage is placed in the run's time.
const LEAD: Duration = Duration::from_secs(15);
/// How often the run reads the enrichments it waits for.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// A request answered 503 (it could not write everything before its deadline) or 429 (the
/// org's enrichments per minute) is sent again, as the API asks, up to this many times in all,
/// after 2, 4, 8, 16, 32 seconds (62 s in all: past any 429's `Retry-After`, at most the rest of
/// the minute).
const ATTEMPTS: u32 = 6;

const BATCH_PATH: &str = "/api/v1/operations/enrichment/batch";
const BULK_PATH: &str = "/api/v1/operations/enrichment/bulk";

struct Args {
    limiter: bool,
    enrichments: usize,
    orgs: usize,
    bulk: usize,
    spread: Duration,
    bulk_at: Duration,
    workers: usize,
    bulk_workers: Option<usize>,
    outage: Option<[f64; 2]>,
    seed: u64,
    max_wait: Duration,
    idle_baseline: bool,
    timeline: bool,
}

const USAGE: &str = "usage: scale_run [--limiter on|off (on)] [--enrichments N (3000)] \
                     [--orgs N (20)] [--bulk N (1000, at most 1000)] [--spread-seconds N (180)] \
                     [--bulk-at SECONDS (30)] [--workers N (50)] [--bulk-workers N (= workers)] \
                     [--outage FROM,TO | none (60,120)] [--seed N (7)] \
                     [--max-wait-seconds N (900)] [--idle-baseline] [--timeline]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        limiter: true,
        enrichments: 3000,
        orgs: 20,
        bulk: 1000,
        spread: Duration::from_secs(180),
        bulk_at: Duration::from_secs(30),
        workers: 50,
        bulk_workers: None,
        outage: Some([60.0, 120.0]),
        seed: 7,
        max_wait: Duration::from_secs(900),
        idle_baseline: false,
        timeline: false,
    };
    let mut rest = std::env::args().skip(1);
    while let Some(flag) = rest.next() {
        match flag.as_str() {
            "--help" | "-h" => return Err(USAGE.into()),
            "--idle-baseline" => {
                args.idle_baseline = true;
                continue;
            }
            "--timeline" => {
                args.timeline = true;
                continue;
            }
            _ => {}
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
            "--limiter" => {
                args.limiter = match value.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("--limiter: expected on or off, got {value:?}")),
                }
            }
            "--enrichments" => args.enrichments = number(2, 20_000)? as usize,
            "--orgs" => args.orgs = number(2, 200)? as usize,
            "--bulk" => args.bulk = number(1, enrichment::batch::MAX_BULK_PEOPLE as u64)? as usize,
            "--spread-seconds" => args.spread = Duration::from_secs(number(1, 3_600)?),
            "--bulk-at" => args.bulk_at = Duration::from_secs(number(0, 3_600)?),
            "--workers" => args.workers = number(1, 200)? as usize,
            "--bulk-workers" => args.bulk_workers = Some(number(1, 200)? as usize),
            "--outage" => args.outage = outage(&value)?,
            "--seed" => {
                args.seed = value
                    .parse()
                    .map_err(|_| format!("--seed: expected a number, got {value:?}"))?
            }
            "--max-wait-seconds" => args.max_wait = Duration::from_secs(number(10, 7_200)?),
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    if args.bulk >= args.enrichments {
        return Err(format!(
            "--bulk {} leaves no enrichment to the small orgs (--enrichments {})",
            args.bulk, args.enrichments
        ));
    }
    Ok(args)
}

/// `FROM,TO` seconds of the run, or `none`.
fn outage(value: &str) -> Result<Option<[f64; 2]>, String> {
    if value == "none" {
        return Ok(None);
    }
    let bounds: Vec<Option<f64>> = value.split(',').map(|b| b.trim().parse().ok()).collect();
    match bounds[..] {
        [Some(from), Some(to)] if 0.0 <= from && from <= to => Ok(Some([from, to])),
        _ => Err(format!(
            "--outage: expected FROM,TO seconds with 0 <= FROM <= TO, or none; got {value:?}"
        )),
    }
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let counts = Arc::new(Mutex::new(Counts::default()));
    install_tracing(counts.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(message) = runtime.block_on(run(args, counts)) {
        eprintln!("scale_run: {message}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// What the stack's events tell

/// What the run reads from the stack's tracing events: the DynamoDB emulator's requests
/// (`dynoxide::server`, its `request` and `request body` events) and the worker's (the
/// cascade's outcome per provider, its retry sleeps, the limiter's and the worker's
/// deferrals).
#[derive(Debug, Clone, Default)]
struct Counts {
    /// DynamoDB requests received, by operation.
    dynamodb: BTreeMap<String, u64>,
    /// `UpdateItem` requests on the limiter's items, by provider and kind
    /// ([`LIMITER_KINDS`]).
    limiter_updates: BTreeMap<(String, &'static str), u64>,
    /// The cascade's events by provider and `outcome`.
    outcomes: BTreeMap<(String, String), u64>,
    /// The cascade's sleeps before asking a provider again (after a short 429 or a 5xx), in
    /// milliseconds, per provider.
    retry_sleep_ms: BTreeMap<String, u64>,
    /// The limiter's events by provider: `window full`, `circuit opened`, `circuit closed`.
    limiter_events: BTreeMap<(String, &'static str), u64>,
    /// Jobs deferred because another worker held them or was enriching the same person.
    busy_deferrals: u64,
    /// Per provider: the calls the cascade timed (`latency_ms`, from before the limiter's
    /// admission to the answer) and their milliseconds in all.
    call_ms: BTreeMap<String, (u64, u64)>,
    /// The circuits opened: when (Unix milliseconds), the provider, the wait (seconds) and the
    /// failures the caller's slot had seen.
    circuit_opens: Vec<(i64, String, u64, u64)>,
}

/// The fields of one event the run looks at.
#[derive(Default)]
struct Fields {
    message: String,
    operation: Option<String>,
    provider: Option<String>,
    outcome: Option<String>,
    wait_ms: Option<u64>,
    latency_ms: Option<u64>,
    wait_s: Option<u64>,
    failures: Option<u64>,
    body: Option<String>,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let slot = match field.name() {
            "message" => {
                self.message = value.to_string();
                return;
            }
            "operation" => &mut self.operation,
            "provider" => &mut self.provider,
            "outcome" => &mut self.outcome,
            _ => return,
        };
        *slot = Some(value.to_string());
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        let slot = match field.name() {
            "wait_ms" => &mut self.wait_ms,
            "latency_ms" => &mut self.latency_ms,
            "wait_s" => &mut self.wait_s,
            "failures" => &mut self.failures,
            _ => return,
        };
        *slot = Some(value);
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            // `message` comes first in an event's fields, then the others in order: only the
            // bodies of UpdateItem requests are read.
            "body"
                if self.message == "request body"
                    && self.operation.as_deref() == Some("UpdateItem") =>
            {
                self.body = Some(format!("{value:?}"));
            }
            _ => {}
        }
    }
}

/// The kinds of limiter `UpdateItem`s ([`limiter_update`]): a reservation, a reservation that
/// also counts its call, a gate, a circuit's opening and its close.
const RESERVE: &str = "reserve";
const RESERVE_AND_COUNT: &str = "reserve+count";
const GATE: &str = "gate";
const OPEN: &str = "open";
const CLOSE: &str = "close";

/// The same, in the report's order.
const LIMITER_KINDS: [&str; 5] = [RESERVE, RESERVE_AND_COUNT, GATE, OPEN, CLOSE];

/// The kind of a limiter `UpdateItem` (see `enrichment::store` limits): `provider` and kind,
/// or `None` for any other request.
fn limiter_update(body: &str) -> Option<(String, &'static str)> {
    if !body.contains("PROVIDER#") {
        return None;
    }
    let request: Value = serde_json::from_str(body).ok()?;
    let provider = request["Key"]["pk"]["S"]
        .as_str()?
        .strip_prefix("PROVIDER#")?
        .to_string();
    let expression = request["UpdateExpression"].as_str().unwrap_or_default();
    let names = request["ExpressionAttributeNames"].to_string();
    let counts = names.contains("secondUsed") || names.contains("minuteUsed");
    let kind = if counts && names.contains("\"next\"") {
        RESERVE_AND_COUNT
    } else if counts {
        GATE
    } else if expression.contains("ADD failures") {
        OPEN
    } else if expression.contains("REMOVE failures") {
        CLOSE
    } else {
        RESERVE
    };
    Some((provider, kind))
}

struct Counter(Arc<Mutex<Counts>>);

impl<S: tracing::Subscriber> Layer<S> for Counter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if event.metadata().target() == "dynoxide::server" {
            if fields.message == "request"
                && let Some(operation) = fields.operation
            {
                *counts.dynamodb.entry(operation).or_default() += 1;
            }
            if let Some(key) = fields.body.as_deref().and_then(limiter_update) {
                *counts.limiter_updates.entry(key).or_default() += 1;
            }
            return;
        }
        let provider = fields.provider.clone().unwrap_or_default();
        let limiter_event = match fields.message.as_str() {
            "asking the provider again" => {
                *counts.retry_sleep_ms.entry(provider.clone()).or_default() +=
                    fields.wait_ms.unwrap_or(0);
                None
            }
            "provider's window full: deferred to the next" => Some("window full"),
            "provider unavailable: circuit open" => {
                counts.circuit_opens.push((
                    Utc::now().timestamp_millis(),
                    provider.clone(),
                    fields.wait_s.unwrap_or(0),
                    fields.failures.unwrap_or(0),
                ));
                Some("circuit opened")
            }
            "provider answered: circuit closed" => Some("circuit closed"),
            "job held by a live worker; deferred"
            | "another job is enriching this person; deferred" => {
                counts.busy_deferrals += 1;
                None
            }
            _ => None,
        };
        if let Some(kind) = limiter_event {
            *counts
                .limiter_events
                .entry((provider.clone(), kind))
                .or_default() += 1;
        }
        if let (Some(provider), Some(outcome)) = (fields.provider, fields.outcome) {
            if let Some(ms) = fields.latency_ms.filter(|_| outcome != "skipped_no_time") {
                let timed = counts.call_ms.entry(provider.clone()).or_default();
                *timed = (timed.0 + 1, timed.1 + ms);
            }
            *counts.outcomes.entry((provider, outcome)).or_default() += 1;
        }
    }
}

/// The run's counting layer (the worker's events at `info`, the DynamoDB emulator's at
/// `trace`), and with `RUST_LOG` the stack's logs on stderr.
fn install_tracing(counts: Arc<Mutex<Counts>>) {
    use tracing_subscriber::filter::{EnvFilter, Targets};
    let counted = Targets::new()
        .with_target("enrichment", tracing::Level::INFO)
        .with_target("dynoxide::server", tracing::Level::TRACE);
    let logs = std::env::var_os("RUST_LOG").is_some().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(EnvFilter::from_default_env())
    });
    let _ = tracing_subscriber::registry()
        .with(Counter(counts).with_filter(counted))
        .with(logs)
        .try_init();
}

// ---------------------------------------------------------------------------------------------
// The orgs, their people, and when they ask

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Single,
    Batch,
    Bulk,
}

/// One enrichment of the run.
struct Item {
    org: usize,
    person: Uuid,
    field: Field,
}

/// One request of the run: its time after the run's start and its enrichments (indices of
/// [`Plan::items`], all of one org and one field).
struct Request {
    at: Duration,
    kind: Kind,
    items: Vec<usize>,
}

struct Plan {
    /// Org ids; the bulk org, when there is one, is the last.
    orgs: Vec<String>,
    people: Vec<Vec<Person>>,
    items: Vec<Item>,
    requests: Vec<Request>,
    known: Vec<KnownPerson>,
    bulk_org: Option<usize>,
}

/// The provider of `finders` drawn with their shares.
fn draw(rng: &mut Rng, finders: &[(&'static str, f64)]) -> &'static str {
    let roll = rng.unit();
    let mut bound = 0.0;
    for (name, share) in finders {
        bound += share;
        if roll < bound {
            return name;
        }
    }
    finders[finders.len() - 1].0
}

/// What the providers know of `who`: their emails only `email` knows, their phones only `phone`
/// (the providers before them in the cascade know nothing; "nobody": no one).
fn records(rng: &mut Rng, who: &Identity, email: &str, phone_finder: &str) -> Option<KnownPerson> {
    let mut known = who.known();
    if email == "hunter" {
        known.hunter = Some(hunter_record(rng, who));
    }
    if email == "pdl" || phone_finder == "pdl" {
        let mut record = pdl_record(rng, who);
        record.work_email = (email == "pdl").then(|| who.email.clone());
        record.mobile_phone = (phone_finder == "pdl").then(|| phone(rng));
        known.pdl = Some(record);
    }
    if email == "prospeo" || phone_finder == "prospeo" {
        let mut record = prospeo_record(rng, who);
        record.email = (email == "prospeo").then(|| who.email.clone());
        record.mobile = (phone_finder == "prospeo").then(|| phone(rng).replace(' ', ""));
        known.prospeo = Some(record);
    }
    if email == "fullenrich" || phone_finder == "fullenrich" {
        let mut record = fullenrich_record(rng, who);
        record.work_emails = if email == "fullenrich" {
            vec![who.email.clone()]
        } else {
            Vec::new()
        };
        record.phones = if phone_finder == "fullenrich" {
            vec![phone(rng)]
        } else {
            Vec::new()
        };
        known.fullenrich = Some(record);
    }
    known.has_provider_record().then_some(known)
}

/// The run's orgs, people and requests from the seed: the small orgs first (the same with and
/// without the bulk), then the bulk org unless `--idle-baseline`.
fn plan(args: &Args) -> Plan {
    let mut identities = Identities::new(args.seed);
    let mut schedule = Rng(args.seed ^ 0x7363_616c_655f_7275);
    let mut plan = Plan {
        orgs: Vec::new(),
        people: Vec::new(),
        items: Vec::new(),
        requests: Vec::new(),
        known: Vec::new(),
        bulk_org: None,
    };
    let person = |identities: &mut Identities, known: &mut Vec<KnownPerson>| {
        let identity = identities.next_identity();
        let rng = &mut identities.rng;
        let email = draw(rng, &EMAIL_FINDERS);
        let phone = draw(rng, &PHONE_FINDERS);
        known.extend(records(rng, &identity, email, phone));
        identity.person()
    };
    let small_orgs = args.orgs - 1;
    let small_total = args.enrichments - args.bulk;
    for org in 0..small_orgs {
        let quota = small_total / small_orgs + usize::from(org < small_total % small_orgs);
        let mut people = Vec::new();
        let mut emails = Vec::new();
        let mut phones = Vec::new();
        while emails.len() + phones.len() < quota {
            let p = person(&mut identities, &mut plan.known);
            let index = plan.items.len();
            plan.items.push(Item {
                org,
                person: p.id,
                field: Field::Emails,
            });
            emails.push(index);
            if people.len() % PHONES_EVERY == 0 && emails.len() + phones.len() < quota {
                plan.items.push(Item {
                    org,
                    person: p.id,
                    field: Field::Phones,
                });
                phones.push(index + 1);
            }
            people.push(p);
        }
        let at = |rng: &mut Rng| Duration::from_secs_f64(rng.unit() * args.spread.as_secs_f64());
        let mut rest = emails.as_slice();
        while !rest.is_empty() {
            let size = if schedule.chance(BATCH_CHANCE) {
                BATCH_SIZE.min(rest.len())
            } else {
                1
            };
            let (taken, left) = rest.split_at(size);
            plan.requests.push(Request {
                at: at(&mut schedule),
                kind: if size == 1 { Kind::Single } else { Kind::Batch },
                items: taken.to_vec(),
            });
            rest = left;
        }
        for index in phones {
            plan.requests.push(Request {
                at: at(&mut schedule),
                kind: Kind::Single,
                items: vec![index],
            });
        }
        plan.orgs.push(format!("org_scale_{:02}", org + 1));
        plan.people.push(people);
    }
    if !args.idle_baseline {
        let org = plan.orgs.len();
        let mut people = Vec::new();
        let mut items = Vec::new();
        for _ in 0..args.bulk {
            let p = person(&mut identities, &mut plan.known);
            items.push(plan.items.len());
            plan.items.push(Item {
                org,
                person: p.id,
                field: Field::Emails,
            });
            people.push(p);
        }
        plan.requests.push(Request {
            at: args.bulk_at,
            kind: Kind::Bulk,
            items,
        });
        plan.orgs.push(BULK_ORG.to_string());
        plan.people.push(people);
        plan.bulk_org = Some(org);
    }
    plan.requests.sort_by_key(|r| r.at);
    plan
}

/// The simulator of the run: the limits, the latencies, the outage `lead` seconds later than
/// the run's time says (the simulator counts from its own start).
fn simulator_config(args: &Args, lead: f64) -> SimulatorConfig {
    let providers = LIMITS
        .iter()
        .map(|&(name, per_second)| {
            let latency_ms = LATENCY_MS
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |(_, ms)| *ms);
            let behavior = ProviderBehavior {
                latency_ms,
                rate_limit_per_second: Some(per_second),
                outage_seconds: args
                    .outage
                    .filter(|_| name == OUTAGE_PROVIDER)
                    .map(|[from, to]| [from + lead, to + lead]),
                ..Default::default()
            };
            (name.to_string(), behavior)
        })
        .collect();
    SimulatorConfig {
        seed: args.seed,
        providers,
    }
}

/// The functions' settings: the rates (with the limiter, [`LIMITS`]; without, none: every
/// `<NAME>_RATE_PER_*` is 0 whatever the environment says), over the environment, over the
/// run's cascade.
fn vars(limiter: bool) -> Vars<'static> {
    let rates: Vec<(&str, String)> = REGISTRY
        .iter()
        .flat_map(|entry| {
            let per_second = LIMITS
                .iter()
                .find(|(name, _)| *name == entry.name)
                .filter(|_| limiter)
                .map_or(0, |(_, n)| *n);
            [
                (entry.rate_per_second_var, per_second.to_string()),
                (entry.rate_per_minute_var, "0".to_string()),
            ]
        })
        .collect();
    Vars::from_pairs(rates)
        .or(Vars::env())
        .or(Vars::from_pairs(CASCADE_DEFAULTS))
}

// ---------------------------------------------------------------------------------------------
// The run

/// Where one enrichment of the run stands.
#[derive(Debug, Clone, Default)]
struct Track {
    /// When its request was sent.
    posted: Option<DateTime<Utc>>,
    /// The last state read (the request's answer, then the table's).
    enrichment: Option<Enrichment>,
    /// The request's refusal (status and body, or the transport error).
    refused: Option<String>,
    /// How many times its request was sent.
    attempts: u32,
}

impl Track {
    fn pending(&self) -> bool {
        self.enrichment
            .as_ref()
            .is_some_and(|e| e.status == Status::Pending)
    }

    fn ended(&self) -> bool {
        self.refused.is_some()
            || self
                .enrichment
                .as_ref()
                .is_some_and(|e| e.status != Status::Pending)
    }

    /// Seconds from the request's send to the enrichment's last update, once it ended.
    fn seconds(&self) -> Option<f64> {
        let e = self
            .enrichment
            .as_ref()
            .filter(|e| e.status != Status::Pending)?;
        let updated = DateTime::parse_from_rfc3339(&e.updated_at).ok()?;
        let posted = self.posted?;
        Some((updated.with_timezone(&Utc) - posted).num_milliseconds() as f64 / 1000.0)
    }

    fn ended_at(&self) -> Option<DateTime<Utc>> {
        let e = self
            .enrichment
            .as_ref()
            .filter(|e| e.status != Status::Pending)?;
        Some(
            DateTime::parse_from_rfc3339(&e.updated_at)
                .ok()?
                .with_timezone(&Utc),
        )
    }
}

type Tracks = Arc<Mutex<Vec<Track>>>;

fn lock(tracks: &Tracks) -> std::sync::MutexGuard<'_, Vec<Track>> {
    tracks.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a run measured, for the report.
struct Measured {
    tracks: Vec<Track>,
    /// `GET /stats` every second: seconds since the run's start, the counters since it.
    samples: Vec<(f64, RequestStats)>,
    /// The limiter's items every second ([`sample_horizons`]).
    horizons: Vec<(f64, [(f64, u64); 4])>,
    run_started: DateTime<Utc>,
    wall: Duration,
    worker: (u64, Duration),
    slot_waits: Duration,
    counts: Counts,
    /// The run's own reads of the table (`BatchGetItem`), left out of the DynamoDB figures.
    own_reads: u64,
    /// The emulators at each progress line.
    probes: Vec<Probe>,
    /// The bulk request: seconds to its answer, and when it was sent (after the run's start).
    bulk: Option<(f64, f64)>,
    /// Where the outage fell in the run's time.
    outage: Option<[f64; 2]>,
}

async fn run(args: Args, counts: Arc<Mutex<Counts>>) -> Result<(), String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let state_dir =
        std::env::temp_dir().join(format!("scale-run-{}-{}", std::process::id(), args.seed));
    std::fs::create_dir_all(&state_dir).map_err(|e| e.to_string())?;
    let result = run_in(&args, &root, &state_dir, counts).await;
    let _ = std::fs::remove_dir_all(&state_dir);
    result
}

async fn run_in(
    args: &Args,
    root: &Path,
    state_dir: &Path,
    counts: Arc<Mutex<Counts>>,
) -> Result<(), String> {
    let plan = plan(args);
    let config = simulator_config(args, LEAD.as_secs_f64());
    let vars = vars(args.limiter);
    let env = |name: &'static str| vars.string(name).unwrap_or_default();
    let bulk_workers = args.bulk_workers.unwrap_or(args.workers);
    let count = |kind: Kind| plan.requests.iter().filter(|r| r.kind == kind).count();
    let bulk = plan.bulk_org.map_or(0, |org| plan.people[org].len());
    println!(
        "scale run: limiter {}; {} enrichments from {} orgs: {} small orgs with {} ({} single POSTs, \
         {} batches of {BATCH_SIZE}, over {} s){}; {} + {} workers (jobs + bulk queue)",
        if args.limiter {
            "on (the providers' limits shared through DynamoDB)"
        } else {
            "off (each worker on its own)"
        },
        plan.items.len(),
        plan.orgs.len(),
        args.orgs - 1,
        plan.items.len() - bulk,
        count(Kind::Single),
        count(Kind::Batch),
        args.spread.as_secs(),
        if bulk > 0 {
            format!(
                ", the bulk org with a bulk of {bulk} at {} s",
                args.bulk_at.as_secs()
            )
        } else {
            " (idle baseline: no bulk)".into()
        },
        args.workers,
        bulk_workers,
    );
    println!(
        "cascade: emails {} | phones {} | {} s per provider call, polls every {} s",
        env("EMAIL_PROVIDERS"),
        env("PHONE_PROVIDERS"),
        env("PROVIDER_TIMEOUT_SECONDS"),
        env("PROVIDER_POLL_SECONDS"),
    );
    let rates: Vec<String> = REGISTRY
        .iter()
        .filter_map(|e| {
            let value = vars.string(e.rate_per_second_var)?;
            (value != "0").then(|| format!("{}={value}", e.rate_per_second_var))
        })
        .collect();
    println!(
        "limiter: {}",
        if rates.is_empty() {
            "none".to_string()
        } else {
            rates.join(" ")
        }
    );
    println!(
        "simulator (outage times from its start, {} s before the run's): {}",
        LEAD.as_secs(),
        describe(&config)
    );
    println!("{}", describe_fixture(&plan.known, plan.items.len()));

    let mut options = private_options(root, state_dir, &plan.known, &config, vars)?;
    options.worker_concurrency = args.workers;
    options.bulk_concurrency = bulk_workers;
    // No webhooks here: without the table's stream the embedded DynamoDB's writes keep their
    // cost through the run's tens of thousands (`Options::table_stream`).
    options.table_stream = false;
    let stack = Stack::start(options).await?;
    let simulator_started = Instant::now();
    let result = tokio::select! {
        result = drive(args, &stack, &plan, simulator_started, counts) => result,
        reason = stack.failure() => Err(format!("the stack stopped: {reason}")),
        _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
        _ = terminated() => Err("terminated".to_string()),
    };
    if tokio::time::timeout(Duration::from_secs(60), stack.shutdown())
        .await
        .is_err()
    {
        eprintln!("the stack did not stop within 60 s");
    }
    let measured = result?;
    print_report(args, &plan, &measured);
    Ok(())
}

/// Resolves on SIGTERM (`timeout`, `kill`), so that the stack, moto with it, is stopped.
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            terminate.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// Creates the orgs' people and credits, then sends the requests at their times and follows
/// every enrichment until none is pending or `--max-wait-seconds` have passed.
async fn drive(
    args: &Args,
    stack: &Stack,
    plan: &Plan,
    simulator_started: Instant,
    counts: Arc<Mutex<Counts>>,
) -> Result<Measured, String> {
    for (org, people) in plan.orgs.iter().zip(&plan.people) {
        stack
            .store
            .create_people(org, people)
            .await
            .map_err(|e| format!("creating {org}'s people: {e}"))?;
        stack
            .store
            .grant_credits(org, CREDITS)
            .await
            .map_err(|e| format!("granting {org} credits: {e}"))?;
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| e.to_string())?;
    let apis: Vec<Api> = plan
        .orgs
        .iter()
        .map(|org| {
            Ok(Api {
                http: http.clone(),
                base: stack.info.gateway_url.clone(),
                token: stack.token(USER, org, Duration::from_secs(4 * 3600))?,
            })
        })
        .collect::<Result<_, String>>()?;

    // The run starts LEAD after the simulator (where its outage times count from).
    let setup = simulator_started.elapsed();
    if setup > LEAD {
        eprintln!(
            "setup took {:.1} s, more than the {} s planned: the outage falls that much earlier",
            setup.as_secs_f64(),
            LEAD.as_secs()
        );
    }
    tokio::time::sleep_until(simulator_started + LEAD).await;
    reset_request_stats(&http, &stack.simulator_url).await?;
    let started = Instant::now();
    let run_started = Utc::now();
    let lead = (started - simulator_started).as_secs_f64() - LEAD.as_secs_f64();
    let outage = args.outage.map(|[from, to]| [from - lead, to - lead]);
    let counts_before = lock_counts(&counts).clone();
    let usage_before = stack.worker_usage.get();
    let waits_before = stack.slot_waits();
    let tracks: Tracks = Arc::new(Mutex::new(vec![Track::default(); plan.items.len()]));

    // Every second, the simulator's counters.
    let (stop, stopped) = watch::channel(false);
    let sampler = tokio::spawn(sample_stats(
        http.clone(),
        stack.simulator_url.clone(),
        started,
        stopped.clone(),
    ));
    // The run's own client of the table, for the limiter's items (its reads are left out).
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        local_stack::dynamodb_config(&stack.info.dynamodb_url).build(),
    );
    let horizon_sampler = tokio::spawn(sample_horizons(
        dynamodb.clone(),
        stack.info.table_name.clone(),
        started,
        stopped,
    ));

    // The requests, each at its time.
    let bulk_answer: Arc<Mutex<Option<(f64, f64)>>> = Arc::default();
    let mut sent = JoinSet::new();
    for request in &plan.requests {
        let org = plan.items[request.items[0]].org;
        let api = apis[org].clone();
        let ids: Vec<Uuid> = request
            .items
            .iter()
            .map(|&i| plan.items[i].person)
            .collect();
        let field = plan.items[request.items[0]].field;
        let (items, kind, at) = (request.items.clone(), request.kind, request.at);
        let (tracks, bulk_answer) = (tracks.clone(), bulk_answer.clone());
        sent.spawn(async move {
            tokio::time::sleep_until(started + at).await;
            let posted = Utc::now();
            for &i in &items {
                lock(&tracks)[i].posted = Some(posted);
            }
            let sent_at = Instant::now();
            let (answer, attempts) = send_until_accepted(&api, kind, &ids, field).await;
            if kind == Kind::Bulk {
                *bulk_answer.lock().unwrap_or_else(|p| p.into_inner()) = Some((
                    sent_at.elapsed().as_secs_f64(),
                    (sent_at - started).as_secs_f64(),
                ));
            }
            let mut tracks = lock(&tracks);
            for &i in &items {
                tracks[i].attempts = attempts;
            }
            match answer {
                Ok(enrichments) => {
                    let by_person: HashMap<Uuid, Enrichment> =
                        enrichments.into_iter().map(|e| (e.entity_id, e)).collect();
                    for (&i, id) in items.iter().zip(&ids) {
                        match by_person.get(id) {
                            Some(e) => tracks[i].enrichment = Some(e.clone()),
                            None => tracks[i].refused = Some("not in the answer".into()),
                        }
                    }
                }
                Err(refusal) => {
                    for &i in &items {
                        tracks[i].refused = Some(refusal.clone());
                    }
                }
            }
        });
    }

    // Follow the enrichments until none is pending.
    let index: HashMap<(usize, Uuid, Field), usize> = plan
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| ((item.org, item.person, item.field), i))
        .collect();
    let deadline = started + args.max_wait;
    let mut own_reads = 0;
    let mut probes = Vec::new();
    let mut next_progress = started + PROGRESS_EVERY;
    loop {
        while sent.try_join_next().is_some() {}
        let all_sent = sent.is_empty();
        let (pending, ended) = {
            let tracks = lock(&tracks);
            let mut pending: BTreeMap<usize, Vec<(Uuid, Field)>> = BTreeMap::new();
            for (i, track) in tracks.iter().enumerate() {
                if track.pending() {
                    let item = &plan.items[i];
                    pending
                        .entry(item.org)
                        .or_default()
                        .push((item.person, item.field));
                }
            }
            (pending, tracks.iter().filter(|t| t.ended()).count())
        };
        let now = Instant::now();
        if now >= next_progress {
            let probed = (plan.orgs[0].as_str(), plan.people[0][0].id);
            let clients = (&http, &dynamodb);
            let probe = progress(clients, stack, started, (plan.items.len(), ended), probed);
            probes.push(probe.await);
            next_progress += PROGRESS_EVERY;
        }
        if (all_sent && pending.is_empty()) || now >= deadline {
            break;
        }
        tokio::time::sleep(REFRESH_EVERY).await;
        for (org, keys) in pending {
            own_reads += keys.len().div_ceil(100) as u64;
            let records = stack
                .store
                .get_enrichments(&plan.orgs[org], &keys)
                .await
                .map_err(|e| format!("reading {}'s enrichments: {e}", plan.orgs[org]))?;
            let mut tracks = lock(&tracks);
            for record in records {
                let e = record.enrichment;
                if let Some(&i) = index.get(&(org, e.entity_id, e.field)) {
                    tracks[i].enrichment = Some(e);
                }
            }
        }
    }
    let wall = started.elapsed();
    sent.abort_all();
    let _ = stop.send(true);
    let samples = sampler.await.map_err(|e| e.to_string())?;
    let horizons = horizon_sampler.await.map_err(|e| e.to_string())?;
    let usage_after = stack.worker_usage.get();
    let counts_after = lock_counts(&counts).clone();
    let tracks = lock(&tracks).clone();
    let bulk = *bulk_answer.lock().unwrap_or_else(|p| p.into_inner());
    Ok(Measured {
        tracks,
        samples,
        horizons,
        run_started,
        wall,
        worker: (
            usage_after.0 - usage_before.0,
            usage_after.1.saturating_sub(usage_before.1),
        ),
        slot_waits: stack.slot_waits().saturating_sub(waits_before),
        counts: since(&counts_after, &counts_before),
        own_reads,
        probes,
        bulk,
        outage,
    })
}

fn lock_counts(counts: &Arc<Mutex<Counts>>) -> std::sync::MutexGuard<'_, Counts> {
    counts.lock().unwrap_or_else(|p| p.into_inner())
}

/// What was counted between two readings.
fn since(after: &Counts, before: &Counts) -> Counts {
    fn minus<K: Ord + Clone>(a: &BTreeMap<K, u64>, b: &BTreeMap<K, u64>) -> BTreeMap<K, u64> {
        a.iter()
            .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect()
    }
    Counts {
        dynamodb: minus(&after.dynamodb, &before.dynamodb),
        limiter_updates: minus(&after.limiter_updates, &before.limiter_updates),
        outcomes: minus(&after.outcomes, &before.outcomes),
        retry_sleep_ms: minus(&after.retry_sleep_ms, &before.retry_sleep_ms),
        limiter_events: minus(&after.limiter_events, &before.limiter_events),
        busy_deferrals: after.busy_deferrals - before.busy_deferrals,
        call_ms: after
            .call_ms
            .iter()
            .map(|(k, (n, ms))| {
                let (n0, ms0) = before.call_ms.get(k).copied().unwrap_or_default();
                (k.clone(), (n - n0, ms - ms0))
            })
            .collect(),
        circuit_opens: after.circuit_opens[before.circuit_opens.len()..].to_vec(),
    }
}

/// Sends one request of the run until it is accepted (see [`ATTEMPTS`]); what [`send`]
/// answered last, and how many times it was sent.
async fn send_until_accepted(
    api: &Api,
    kind: Kind,
    ids: &[Uuid],
    field: Field,
) -> (Result<Vec<Enrichment>, String>, u32) {
    let mut attempt = 1;
    loop {
        let (answer, again) = send(api, kind, ids, field).await;
        if !again || attempt >= ATTEMPTS {
            return (answer, attempt);
        }
        tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
        attempt += 1;
    }
}

/// Sends one request of the run: the enrichments it answered, or why it was refused, and
/// whether it is to be sent again (a 503, a 429).
async fn send(
    api: &Api,
    kind: Kind,
    ids: &[Uuid],
    field: Field,
) -> (Result<Vec<Enrichment>, String>, bool) {
    let sent = match kind {
        Kind::Single => {
            api.call(reqwest::Method::POST, ids[0], field.as_str())
                .await
        }
        Kind::Batch => {
            let body = json!({"personIds": ids, "field": field.as_str()});
            api.send(reqwest::Method::POST, BATCH_PATH, Some(body.to_string()))
                .await
        }
        Kind::Bulk => {
            let body = json!({"selection": {"mode": "manual", "includedIds": ids},
                              "field": field.as_str()});
            api.send(reqwest::Method::POST, BULK_PATH, Some(body.to_string()))
                .await
        }
    };
    let (status, body) = match sent {
        Ok(sent) => sent,
        Err(e) => return (Err(e), false),
    };
    if status != 200 {
        let again = matches!(status, 429 | 503);
        return (Err(format!("{status} {}", shorten(&body))), again);
    }
    let parsed = match kind {
        Kind::Single => serde_json::from_str::<Enrichment>(&body).map(|e| vec![e]),
        Kind::Batch | Kind::Bulk => serde_json::from_str::<Vec<Enrichment>>(&body),
    };
    let answer =
        parsed.map_err(|e| format!("200 with an unreadable body ({e}): {}", shorten(&body)));
    (answer, false)
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= 200 {
        text.to_string()
    } else {
        format!("{}...", text.chars().take(200).collect::<String>())
    }
}

/// `GET /stats` right after each calendar second (5 ms past it) until `stop`: the seconds
/// since `started` and the counters.
async fn sample_stats(
    http: reqwest::Client,
    simulator: String,
    started: Instant,
    mut stop: watch::Receiver<bool>,
) -> Vec<(f64, RequestStats)> {
    let mut samples = Vec::new();
    loop {
        let into_second = Utc::now().timestamp_subsec_millis();
        let wait = Duration::from_millis(u64::from(1005 - into_second.min(999)));
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return samples,
            _ = tokio::time::sleep(wait) => {}
        }
        if let Ok(stats) = request_stats(&http, &simulator).await {
            samples.push((started.elapsed().as_secs_f64(), stats));
        }
    }
}

/// Each limiter item's state ([`limiter_state`], [`LIMITS`] order) every second until `stop`,
/// half a second after each calendar second: the seconds since `started` and the states.
async fn sample_horizons(
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
    started: Instant,
    mut stop: watch::Receiver<bool>,
) -> Vec<(f64, [(f64, u64); 4])> {
    let mut samples = Vec::new();
    loop {
        let into_second = Utc::now().timestamp_subsec_millis();
        let wait = Duration::from_millis(u64::from((1500 - into_second.min(999)) % 1000).max(1));
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return samples,
            _ = tokio::time::sleep(wait) => {}
        }
        let mut states = [(0.0, 0); 4];
        for (state, (name, _)) in states.iter_mut().zip(LIMITS) {
            *state = limiter_state(&dynamodb, &table, name).await;
        }
        samples.push((started.elapsed().as_secs_f64(), states));
    }
}

/// The emulators as one progress line saw them.
#[derive(Debug, Clone, Copy, Default)]
struct Probe {
    /// One `GetQueueAttributes` of the jobs queue to moto, round trip in milliseconds.
    sqs_ms: f64,
    /// One `GetItem` (a person) to the DynamoDB emulator, round trip in milliseconds.
    dynamodb_ms: f64,
    /// The jobs and the bulk queue's messages: visible, in flight, delayed.
    queues: [[u64; 3]; 2],
    /// Per limited provider ([`LIMITS`] order): how far ahead its next free slot is (the
    /// limiter's `next` less now, in seconds; 0 when idle), and its failure count.
    horizon: [(f64, u64); 4],
}

/// The limiter's item of `provider` (`PROVIDER#{name}` / `LIMIT`): seconds from now to its
/// next free slot (0 when it is past), and its failures since the last good answer.
async fn limiter_state(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    provider: &str,
) -> (f64, u64) {
    use aws_sdk_dynamodb::types::AttributeValue;
    let item = dynamodb
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(format!("PROVIDER#{provider}")))
        .key("sk", AttributeValue::S("LIMIT".into()))
        .consistent_read(true)
        .send()
        .await
        .ok()
        .and_then(|answer| answer.item);
    let number = |name: &str| -> i64 {
        item.as_ref()
            .and_then(|item| item.get(name)?.as_n().ok()?.parse().ok())
            .unwrap_or(0)
    };
    let ahead = (number("next") - Utc::now().timestamp_millis()).max(0);
    (ahead as f64 / 1000.0, number("failures").max(0) as u64)
}

/// The messages of `queue_url`: visible, in flight, delayed; and the round trip.
async fn queue_depth(stack: &Stack, queue_url: &str) -> ([u64; 3], Duration) {
    use aws_sdk_sqs::types::QueueAttributeName as Name;
    let sent = Instant::now();
    let answer = stack
        .sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(Name::All)
        .send()
        .await;
    let elapsed = sent.elapsed();
    let attributes = answer.ok().and_then(|a| a.attributes).unwrap_or_default();
    let count = |name: Name| {
        attributes
            .get(&name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let depth = [
        count(Name::ApproximateNumberOfMessages),
        count(Name::ApproximateNumberOfMessagesNotVisible),
        count(Name::ApproximateNumberOfMessagesDelayed),
    ];
    (depth, elapsed)
}

/// One line on stderr: the run's time, its enrichments ended, the providers' requests so far,
/// the queues and the emulators' round trips (probing `person` of `org`).
async fn progress(
    (http, dynamodb): (&reqwest::Client, &aws_sdk_dynamodb::Client),
    stack: &Stack,
    started: Instant,
    (total, ended): (usize, usize),
    (org, person): (&str, Uuid),
) -> Probe {
    let stats = request_stats(http, &stack.simulator_url)
        .await
        .unwrap_or_default();
    let providers: Vec<String> = LIMITS
        .iter()
        .map(|(name, _)| {
            let s = stats.get(*name).cloned().unwrap_or_default();
            format!("{name} {} ({} limited)", s.requests, s.rate_limited)
        })
        .collect();
    let (jobs, sqs) = queue_depth(stack, &stack.info.queue_url).await;
    let (bulk, _) = queue_depth(stack, &stack.info.bulk_queue_url).await;
    let read = Instant::now();
    let _ = stack.store.get_person(org, person).await;
    let dynamodb_ms = read.elapsed().as_secs_f64() * 1000.0;
    let mut horizon = [(0.0, 0); 4];
    for (state, (name, _)) in horizon.iter_mut().zip(LIMITS) {
        *state = limiter_state(dynamodb, &stack.info.table_name, name).await;
    }
    let probe = Probe {
        sqs_ms: sqs.as_secs_f64() * 1000.0,
        dynamodb_ms,
        queues: [jobs, bulk],
        horizon,
    };
    let depth =
        |[visible, in_flight, delayed]: [u64; 3]| format!("{visible}/{in_flight}/{delayed}");
    let ahead: Vec<String> = LIMITS
        .iter()
        .zip(&probe.horizon)
        .map(|((name, _), (seconds, failures))| format!("{name} {seconds:.0} s/{failures}"))
        .collect();
    eprintln!(
        "  {:>4.0} s: {ended}/{total} ended; provider requests: {}; next free slot/failures: {}; \
         jobs, bulk queue (visible/in flight/delayed) {}, {}; round trips SQS {:.0} ms, \
         DynamoDB {:.0} ms",
        started.elapsed().as_secs_f64(),
        providers.join(", "),
        ahead.join(", "),
        depth(jobs),
        depth(bulk),
        probe.sqs_ms,
        probe.dynamodb_ms,
    );
    probe
}

// ---------------------------------------------------------------------------------------------
// The report

fn seconds(value: Option<f64>) -> String {
    value.map_or("-".into(), |s| format!("{s:.1} s"))
}

/// A provider's requests (FullEnrich's polls included: its documented 60 a minute counts
/// them, and so does the limiter, though the simulator's window counts its submits only).
fn limited_count(stats: &RequestStats, provider: &str) -> u64 {
    stats.get(provider).map_or(0, |s| s.requests)
}

/// Per provider: the most requests counted in one sampled second, and the mean per second
/// from its first to its last second with requests.
fn rates(samples: &[(f64, RequestStats)], provider: &str) -> (u64, f64) {
    let mut previous = (0.0, 0);
    let mut peak = 0;
    let mut active: Option<(f64, f64)> = None;
    for (at, stats) in samples {
        let count = limited_count(stats, provider);
        let new = count.saturating_sub(previous.1);
        if new > 0 {
            peak = peak.max(new);
            let from = active.map_or(previous.0, |(from, _)| from);
            active = Some((from, *at));
        }
        previous = (*at, count);
    }
    let total = previous.1;
    let mean = active.map_or(0.0, |(from, to)| total as f64 / (to - from).max(1.0));
    (peak, mean)
}

/// The sorted times to `finished` of the tracks `wanted` keeps.
fn durations(tracks: &[Track], wanted: impl Fn(usize, &Track) -> bool) -> Vec<f64> {
    let mut values: Vec<f64> = tracks
        .iter()
        .enumerate()
        .filter(|(i, t)| wanted(*i, t))
        .filter(|(_, t)| t.enrichment.as_ref().map(|e| e.status) == Some(Status::Finished))
        .filter_map(|(_, t)| t.seconds())
        .collect();
    values.sort_by(f64::total_cmp);
    values
}

fn print_report(args: &Args, plan: &Plan, m: &Measured) {
    let status = |s: Status| {
        m.tracks
            .iter()
            .filter(|t| t.enrichment.as_ref().map(|e| e.status) == Some(s))
            .count()
    };
    let found = m
        .tracks
        .iter()
        .filter(|t| {
            t.enrichment
                .as_ref()
                .is_some_and(|e| e.status == Status::Finished && e.data_found == Some(true))
        })
        .count();
    let finished = status(Status::Finished);
    let refused = m.tracks.iter().filter(|t| t.refused.is_some()).count();
    let total = m.tracks.len();
    println!();
    let row = |label: &str, value: String| println!("{label:<52}{value}");
    row("enrichments", total.to_string());
    row(
        "  finished, dataFound true / false",
        format!("{found} / {}", finished - found),
    );
    row(
        "  failed (refunded) / timeout",
        format!("{} / {}", status(Status::Failed), status(Status::Timeout)),
    );
    row(
        "  still pending at the end / request refused",
        format!("{} / {refused}", status(Status::Pending)),
    );
    row("run wall time", format!("{:.1} s", m.wall.as_secs_f64()));

    // Throughput: finished ones from the run's start to the last one's end.
    let mut ends: Vec<DateTime<Utc>> = m
        .tracks
        .iter()
        .filter(|t| t.enrichment.as_ref().map(|e| e.status) == Some(Status::Finished))
        .filter_map(Track::ended_at)
        .collect();
    ends.sort();
    if let Some(last) = ends.last() {
        let span = (*last - m.run_started).num_milliseconds().max(1) as f64 / 1000.0;
        let mut peak = 0;
        let mut from = 0;
        for (to, end) in ends.iter().enumerate() {
            while (*end - ends[from]).num_milliseconds() >= 60_000 {
                from += 1;
            }
            peak = peak.max(to + 1 - from);
        }
        row(
            "enrichments finished per minute",
            format!(
                "{:.0} (mean over {span:.0} s, run start to last end); peak 60 s: {peak}",
                finished as f64 * 60.0 / span
            ),
        );
    }

    let last = m.samples.last().map(|(_, s)| s.clone()).unwrap_or_default();
    println!();
    println!(
        "{:<12}{:>8}{:>10}{:>10}{:>11}{:>14}{:>8}",
        "provider", "limit/s", "peak/s", "mean/s", "requests", "rate-limited", "500s"
    );
    for (name, limit) in LIMITS {
        let (peak, mean) = rates(&m.samples, name);
        let s = last.get(name).cloned().unwrap_or_default();
        let requests = match (s.submits, s.polls) {
            (Some(submits), Some(polls)) => format!("{submits}+{polls}p"),
            _ => s.requests.to_string(),
        };
        println!(
            "{name:<12}{limit:>8}{peak:>10}{mean:>10.1}{requests:>11}{:>14}{:>8}",
            s.rate_limited,
            s.statuses.get("500").copied().unwrap_or(0)
        );
    }
    println!(
        "  (per second: the requests counted between two samples of GET /stats, taken 5 ms after \
         each calendar second, so a peak may be off by the requests of those 5 ms; rate-limited: \
         refused by the simulator's calendar-second windows; fullenrich: submits+polls, both \
         counted by FullEnrich's limit and the limiter, only the submits by the simulator's)"
    );
    if let Some([from, to]) = m.outage {
        println!("  {OUTAGE_PROVIDER} outage: {from:.0} s to {to:.0} s of the run");
    }

    println!();
    println!(
        "{:<44}{:>9}{:>9}{:>9}{:>7}",
        "time from POST to finished", "p50", "p95", "max", "n"
    );
    let bulk_org = plan.bulk_org;
    let small = |i: usize| Some(plan.items[i].org) != bulk_org;
    let mut groups: Vec<(String, Vec<f64>)> = Vec::new();
    if let Some(org) = bulk_org {
        groups.push((
            "bulk org (one bulk request)".into(),
            durations(&m.tracks, |i, _| plan.items[i].org == org),
        ));
    }
    groups.push((
        "small orgs (singles and batches)".into(),
        durations(&m.tracks, |i, _| small(i)),
    ));
    // The small orgs' requests sent from the bulk's time on, until the bulk's last end (without
    // a bulk: until the end of the spread): what the bulk may slow down.
    let window_start = m.run_started
        + chrono::Duration::from_std(args.bulk_at).unwrap_or_else(|_| chrono::Duration::zero());
    let window_end = match bulk_org {
        Some(org) => m
            .tracks
            .iter()
            .enumerate()
            .filter(|(i, _)| plan.items[*i].org == org)
            .filter_map(|(_, t)| t.ended_at())
            .max(),
        None => Some(
            m.run_started
                + chrono::Duration::from_std(args.spread)
                    .unwrap_or_else(|_| chrono::Duration::zero()),
        ),
    };
    if let Some(end) = window_end {
        groups.push((
            format!(
                "small orgs, sent {:.0} s to {:.0} s{}",
                args.bulk_at.as_secs_f64(),
                (end - m.run_started).num_milliseconds() as f64 / 1000.0,
                if bulk_org.is_some() {
                    " (during the bulk)"
                } else {
                    ""
                }
            ),
            durations(&m.tracks, |i, t| {
                small(i) && t.posted.is_some_and(|p| p >= window_start && p <= end)
            }),
        ));
    }
    if args.timeline {
        // Where the small orgs' tail is: their time to `finished` by when they were sent.
        for from in (0..args.spread.as_secs() as i64).step_by(30) {
            groups.push((
                format!("  small orgs, sent {from} s to {} s", from + 30),
                durations(&m.tracks, |i, t| {
                    let sent = t.posted.map(|p| (p - m.run_started).num_seconds());
                    small(i) && sent.is_some_and(|s| s >= from && s < from + 30)
                }),
            ));
        }
    }
    for (label, values) in &groups {
        println!(
            "{label:<44}{:>9}{:>9}{:>9}{:>7}",
            seconds(percentile(values, 50.0)),
            seconds(percentile(values, 95.0)),
            seconds(values.last().copied()),
            values.len()
        );
    }
    if let Some((answer, sent)) = m.bulk {
        let attempts = bulk_org
            .and_then(|org| {
                let i = plan.items.iter().position(|item| item.org == org)?;
                Some(m.tracks[i].attempts)
            })
            .unwrap_or(1);
        println!(
            "  the bulk request: first sent at {sent:.1} s, answered in {answer:.2} s \
             (the last of {attempts} attempts)"
        );
    }
    let sent_again: Vec<u32> = plan
        .requests
        .iter()
        .map(|r| m.tracks[r.items[0]].attempts)
        .filter(|a| *a > 1)
        .collect();
    if !sent_again.is_empty() {
        println!(
            "  requests answered 503 or 429 and sent again: {} (up to {} attempts); their time \
             counts from the first",
            sent_again.len(),
            sent_again.iter().max().copied().unwrap_or(0)
        );
    }

    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for t in &m.tracks {
        if let Some(e) = &t.enrichment
            && matches!(e.status, Status::Failed | Status::Timeout)
        {
            let error = e.error.clone().unwrap_or_else(|| "(no error)".into());
            *errors
                .entry(format!("{}: {error}", e.status.as_str()))
                .or_default() += 1;
        }
        if let Some(refusal) = &t.refused {
            *errors.entry(format!("refused: {refusal}")).or_default() += 1;
        }
    }
    println!();
    if errors.is_empty() {
        println!("failed or timed out: none");
    } else {
        println!("failed or timed out, by error:");
        let mut by_count: Vec<_> = errors.into_iter().collect();
        by_count.sort_by_key(|b| std::cmp::Reverse(b.1));
        for (error, count) in by_count {
            println!("  {count:>5} x {error}");
        }
    }

    println!();
    let (invocations, busy) = m.worker;
    let per = |value: f64| value / total.max(1) as f64;
    row(
        "worker invocations",
        format!(
            "{invocations} ({:.2} per enrichment)",
            per(invocations as f64)
        ),
    );
    row(
        "worker Lambda-seconds (handler time)",
        format!(
            "{:.0} s ({:.3} per enrichment)",
            busy.as_secs_f64(),
            per(busy.as_secs_f64())
        ),
    );
    row(
        "  waiting in-process for a provider slot",
        format!("{:.1} s", m.slot_waits.as_secs_f64()),
    );
    let retry_sleep: u64 = m.counts.retry_sleep_ms.values().sum();
    row(
        "  sleeping before asking a provider again",
        if retry_sleep == 0 {
            "0 s".to_string()
        } else {
            format!(
                "{:.1} s ({})",
                retry_sleep as f64 / 1000.0,
                join(
                    m.counts
                        .retry_sleep_ms
                        .iter()
                        .map(|(p, ms)| format!("{p} {:.1} s", *ms as f64 / 1000.0))
                )
            )
        },
    );
    let outcome = |provider: &str, outcome: &str| {
        m.counts
            .outcomes
            .get(&(provider.to_string(), outcome.to_string()))
            .copied()
            .unwrap_or(0)
    };
    let per_provider = |f: &dyn Fn(&str) -> u64| {
        let parts = LIMITS
            .iter()
            .map(|(name, _)| (name, f(name)))
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name} {n}"));
        let text = join(parts);
        if text.is_empty() {
            "0".to_string()
        } else {
            text
        }
    };
    row(
        "jobs deferred: no provider slot within 1 s",
        per_provider(&|p| {
            outcome(p, "rate_limited_wait").saturating_sub(
                m.counts
                    .limiter_events
                    .get(&(p.to_string(), "window full"))
                    .copied()
                    .unwrap_or(0),
            )
        }),
    );
    row(
        "  the provider's calendar window full",
        per_provider(&|p| {
            m.counts
                .limiter_events
                .get(&(p.to_string(), "window full"))
                .copied()
                .unwrap_or(0)
        }),
    );
    row(
        "  the provider unavailable (circuit opened)",
        per_provider(&|p| outcome(p, "unavailable")),
    );
    row(
        "  another worker on the job or the person",
        m.counts.busy_deferrals.to_string(),
    );
    row(
        "provider calls ended in error (cascade goes on)",
        per_provider(&|p| outcome(p, "error")),
    );
    let timed = LIMITS.iter().filter_map(|(name, _)| {
        let (n, ms) = m.counts.call_ms.get(*name).copied()?;
        let latency = LATENCY_MS.iter().find(|(p, _)| p == name)?.1;
        Some(format!(
            "{name} {:.0} ms ({latency})",
            ms as f64 / n.max(1) as f64
        ))
    });
    row("mean call, admission to answer (simulated)", join(timed));
    for (name, _) in LIMITS {
        let opens: Vec<&(i64, String, u64, u64)> = m
            .counts
            .circuit_opens
            .iter()
            .filter(|(_, p, _, _)| p == name)
            .collect();
        if opens.is_empty() {
            continue;
        }
        let at = |ms: i64| (ms - m.run_started.timestamp_millis()) as f64 / 1000.0;
        row(
            &format!("  {name}: circuit opened"),
            format!(
                "{} times, {:.0} s to {:.0} s of the run; waits up to {} s, slots up to {} failures",
                opens.len(),
                at(opens[0].0),
                at(opens[opens.len() - 1].0),
                opens.iter().map(|o| o.2).max().unwrap_or(0),
                opens.iter().map(|o| o.3).max().unwrap_or(0),
            ),
        );
    }

    println!();
    let updates = &m.counts.limiter_updates;
    // Each kind's count, as the report prints it, and their sum.
    let by_kind = |of: &dyn Fn(&str) -> u64| -> (u64, String) {
        let counts = LIMITER_KINDS.map(|kind| (kind, of(kind)));
        let listed: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
        (counts.iter().map(|(_, n)| n).sum(), listed.join(", "))
    };
    let (limiter_total, listed) = by_kind(&|kind| {
        updates
            .iter()
            .filter(|((_, k), _)| *k == kind)
            .map(|(_, n)| n)
            .sum()
    });
    let provider_requests: u64 = LIMITS
        .iter()
        .map(|(name, _)| last.get(*name).map_or(0, |s| s.requests))
        .sum();
    row(
        "limiter UpdateItems on PROVIDER# items",
        format!("{limiter_total}: {listed}"),
    );
    for (name, _) in LIMITS {
        let (all, listed) =
            by_kind(&|kind| updates.get(&(name.to_string(), kind)).copied().unwrap_or(0));
        if all == 0 {
            continue;
        }
        let requests = last.get(name).map_or(0, |s| s.requests);
        row(
            &format!("  {name}"),
            format!(
                "{all} ({:.2} per request to it): {listed}",
                all as f64 / requests.max(1) as f64
            ),
        );
    }
    if limiter_total > 0 {
        row(
            "  per provider request / per 1M enrichments",
            format!(
                "{:.2} / {:.2} M",
                limiter_total as f64 / provider_requests.max(1) as f64,
                limiter_total as f64 / total.max(1) as f64
            ),
        );
    }
    if !m.probes.is_empty() {
        let sorted = |f: fn(&Probe) -> f64| {
            let mut values: Vec<f64> = m.probes.iter().map(f).collect();
            values.sort_by(f64::total_cmp);
            values
        };
        let (sqs, dynamodb) = (sorted(|p| p.sqs_ms), sorted(|p| p.dynamodb_ms));
        let most = |queue: usize, kind: usize| {
            m.probes
                .iter()
                .map(|p| p.queues[queue][kind])
                .max()
                .unwrap_or(0)
        };
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0} ms"));
        row(
            "emulator round trips, every 10 s: SQS, DynamoDB",
            format!(
                "p50 {} max {}; p50 {} max {} ({} probes)",
                ms(percentile(&sqs, 50.0)),
                ms(sqs.last().copied()),
                ms(percentile(&dynamodb, 50.0)),
                ms(dynamodb.last().copied()),
                m.probes.len()
            ),
        );
        let horizons = LIMITS.iter().enumerate().map(|(i, (name, _))| {
            let most = m.horizons.iter().map(|h| h.1[i].0).fold(0.0, f64::max);
            let failures = m.horizons.iter().map(|h| h.1[i].1).max().unwrap_or(0);
            format!("{name} {most:.0} s/{failures}")
        });
        row(
            "limiter items, most: next slot ahead/failures",
            join(horizons),
        );
        row(
            "most messages seen: jobs queue, bulk queue",
            format!(
                "{} visible / {} in flight / {} delayed; {} / {} / {}",
                most(0, 0),
                most(0, 1),
                most(0, 2),
                most(1, 0),
                most(1, 1),
                most(1, 2)
            ),
        );
    }
    let mut dynamodb = m.counts.dynamodb.clone();
    if let Some(n) = dynamodb.get_mut("BatchGetItem") {
        *n = n.saturating_sub(m.own_reads);
    }
    // Each progress line read a person and each limiter item, and so did the sampler each
    // second.
    let own_gets = (m.probes.len() as u64 * (1 + LIMITS.len() as u64))
        + m.horizons.len() as u64 * LIMITS.len() as u64;
    if let Some(n) = dynamodb.get_mut("GetItem") {
        *n = n.saturating_sub(own_gets);
    }
    dynamodb.retain(|_, n| *n > 0);
    let dynamodb_total: u64 = dynamodb.values().sum();
    row(
        "DynamoDB requests (API and worker)",
        format!(
            "{dynamodb_total} ({:.2} per enrichment): {}",
            per(dynamodb_total as f64),
            join(dynamodb.iter().map(|(op, n)| format!("{op} {n}")))
        ),
    );
    row(
        "  left out: the run's own reads of its enrichments",
        format!("BatchGetItem {}, GetItem {own_gets}", m.own_reads),
    );
    if args.timeline {
        print_timeline(m);
    }
}

/// Per 10 s of the run: enrichments ended, and per provider requests / rate-limited / 500s,
/// circuits opened.
fn print_timeline(m: &Measured) {
    const BUCKET: f64 = 10.0;
    let buckets = (m.wall.as_secs_f64() / BUCKET).ceil() as usize;
    let mut ended = vec![0usize; buckets.max(1)];
    for t in &m.tracks {
        if let Some(at) = t.ended_at() {
            let s = (at - m.run_started).num_milliseconds() as f64 / 1000.0;
            let last = ended.len() - 1;
            ended[((s / BUCKET) as usize).min(last)] += 1;
        }
    }
    // The counters at the end of each bucket (the last sample taken within it).
    let at_end = |bucket: usize| -> RequestStats {
        m.samples
            .iter()
            .take_while(|(at, _)| *at < (bucket + 1) as f64 * BUCKET)
            .last()
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    };
    println!();
    print!("{:>8}{:>7}", "run s", "ended");
    for (name, _) in LIMITS {
        print!("{:>24}", format!("{name} req/429/500/open"));
    }
    println!("  next free slot ahead, most (s)");
    let mut before = RequestStats::default();
    for (bucket, ended) in ended.iter().enumerate() {
        let now = at_end(bucket);
        print!(
            "{:>8}{ended:>7}",
            format!("{}-{}", bucket * 10, bucket * 10 + 10)
        );
        for (name, _) in LIMITS {
            let get = |s: &RequestStats| s.get(name).cloned().unwrap_or_default();
            let (a, b) = (get(&now), get(&before));
            let status = |s: &local_stack::simulator::ProviderStats| {
                s.statuses.get("500").copied().unwrap_or(0)
            };
            let opens = m
                .counts
                .circuit_opens
                .iter()
                .filter(|(at, p, _, _)| {
                    let s = (*at - m.run_started.timestamp_millis()) as f64 / 1000.0;
                    p == name && (s / BUCKET) as usize == bucket
                })
                .count();
            print!(
                "{:>24}",
                format!(
                    "{}/{}/{}/{opens}",
                    a.requests.saturating_sub(b.requests),
                    a.rate_limited.saturating_sub(b.rate_limited),
                    status(&a).saturating_sub(status(&b))
                )
            );
        }
        let ahead = LIMITS.iter().enumerate().map(|(i, (name, _))| {
            let most = m
                .horizons
                .iter()
                .filter(|(at, _)| (at / BUCKET) as usize == bucket)
                .map(|(_, h)| h[i].0)
                .fold(0.0, f64::max);
            format!("{name} {most:.0}")
        });
        println!("  {}", join(ahead));
        before = now;
    }
    for (name, _) in LIMITS {
        let opens: Vec<String> = m
            .counts
            .circuit_opens
            .iter()
            .filter(|(_, p, _, _)| p == name)
            .map(|(at, _, wait, failures)| {
                let s = (*at - m.run_started.timestamp_millis()) as f64 / 1000.0;
                format!("{s:.0}:{wait}/{failures}")
            })
            .collect();
        if !opens.is_empty() {
            println!(
                "{name} circuit opened (run s:wait s/failures its slot saw): {}",
                opens.join(" ")
            );
        }
    }
}

fn join(parts: impl Iterator<Item = String>) -> String {
    parts.collect::<Vec<_>>().join(", ")
}
