//! A mixed workload through a private local stack: N synthetic people, a simulator with slow,
//! failing, rate-limited and missing providers, every person enriched in org A, then the same
//! people in org B (who should be served by the global cache).
//!
//! ```sh
//! cargo run --release -p local-stack --example mixed_workload -- [--people 200] [--seed 7]
//!     [--workers 5] [--concurrency 20] [--max-wait-seconds 900] [--fullenrich-job-seconds 30,90]
//! ```
//!
//! `--workers` sets how many jobs the local stack runs at once (`LOCAL_WORKER_CONCURRENCY`; 5 as
//! `make run` starts it, the template's default maximum concurrency of the SQS event source).
//! `--fullenrich-job-seconds MIN,MAX` makes each FullEnrich job take that long (drawn per
//! person; FullEnrich documents 30 to 90 s per contact), instead of being done on its second
//! poll.
//!
//! Needs moto's server in `.local/venv` (`make setup`). Everything listens on 127.0.0.1; the
//! state (dev key, fixture, simulator configuration) lives in a temporary directory removed at
//! the end. The cascade comes from `EMAIL_PROVIDERS`, `PHONE_PROVIDERS` and
//! `PROVIDER_TIMEOUT_SECONDS` when set, else from the defaults below. `RUST_LOG=warn` shows the
//! stack's logs on stderr.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use enrichment::config::Vars;
use enrichment::domain::{Enrichment, Person, Status};
use local_stack::Stack;
use local_stack::simulator::{
    KnownPerson, MAX_JOB_SECONDS, ProviderBehavior, RequestStats, SimulatorConfig,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use uuid::Uuid;

#[path = "support/workload.rs"]
mod workload;
use workload::{
    Api, Identities, Identity, PROVIDERS, delta, describe, describe_fixture, dropcontact_record,
    fullenrich_record, hunter_record, pdl_record, percentile, private_options, prospeo_record,
    request_stats, reset_request_stats,
};

/// The cascade of the run, unless the environment sets it (given to the stack under the
/// process environment, see [`Options::vars`]).
const CASCADE_DEFAULTS: [(&str, &str); 3] = [
    (
        "EMAIL_PROVIDERS",
        "hunter,prospeo,dropcontact,pdl,fullenrich",
    ),
    ("PHONE_PROVIDERS", "pdl,prospeo,fullenrich"),
    ("PROVIDER_TIMEOUT_SECONDS", "10"),
];

const ORG_A: &str = "org_mixed_a";
const ORG_B: &str = "org_mixed_b";
const USER: &str = "user_mixed";
/// Every third person is also asked for phones.
const PHONES_EVERY: usize = 3;

struct Args {
    people: usize,
    seed: u64,
    workers: usize,
    concurrency: usize,
    max_wait: Duration,
    /// FullEnrich's `job_seconds` in the simulator: `[min, max]`.
    fullenrich_job_seconds: Option<[f64; 2]>,
}

const USAGE: &str = "usage: mixed_workload [--people N (200)] [--seed N (7)] [--workers N (5)] \
                     [--concurrency N (20)] [--max-wait-seconds N (900)] \
                     [--fullenrich-job-seconds MIN,MAX (none: done on the second poll)]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        people: 200,
        seed: 7,
        workers: 5,
        concurrency: 20,
        max_wait: Duration::from_secs(900),
        fullenrich_job_seconds: None,
    };
    let mut rest = std::env::args().skip(1);
    while let Some(flag) = rest.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.into());
        }
        let value = rest
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = |max: u64| {
            value
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| format!("{flag}: expected a number from 1 to {max}, got {value:?}"))
        };
        match flag.as_str() {
            "--people" => args.people = number(5_000)? as usize,
            "--seed" => {
                args.seed = value
                    .parse()
                    .map_err(|_| format!("--seed: expected a number, got {value:?}"))?
            }
            "--workers" => args.workers = number(50)? as usize,
            "--concurrency" => args.concurrency = number(200)? as usize,
            "--max-wait-seconds" => args.max_wait = Duration::from_secs(number(3_600)?),
            "--fullenrich-job-seconds" => {
                args.fullenrich_job_seconds = Some(job_seconds(&value).ok_or_else(|| {
                    format!(
                        "--fullenrich-job-seconds: expected MIN,MAX seconds with 0 <= MIN <= MAX <= {MAX_JOB_SECONDS}, got {value:?}"
                    )
                })?)
            }
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

/// `MIN,MAX` (or one number for both) as a `job_seconds` range, when it is one.
fn job_seconds(value: &str) -> Option<[f64; 2]> {
    let mut bounds = value.split(',').map(|b| b.trim().parse::<f64>().ok());
    let min = bounds.next()??;
    let max = bounds.next().unwrap_or(Some(min))?;
    let fits = |s: f64| (0.0..=MAX_JOB_SECONDS).contains(&s);
    (bounds.next().is_none() && fits(min) && fits(max) && min <= max).then_some([min, max])
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(message) = runtime.block_on(run(args)) {
        eprintln!("mixed_workload: {message}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Synthetic people

/// One synthetic person: who they are, and what the simulated providers know about them.
struct Synthetic {
    identity: Identity,
    /// `None`: no provider knows this person.
    known: Option<KnownPerson>,
    /// Whether the run asks for this person's phones too.
    wants_phones: bool,
}

/// `count` distinct people from `seed`: about 12% known to no provider, the others to one or
/// more of them, each provider with its own share and its own mix of emails and phones.
fn synthesize(count: usize, seed: u64) -> Vec<Synthetic> {
    let mut identities = Identities::new(seed);
    (0..count)
        .map(|index| {
            let identity = identities.next_identity();
            let rng = &mut identities.rng;
            let mut known = identity.known();
            let nobody = rng.chance(0.12);
            if !nobody {
                if rng.chance(0.5) {
                    known.hunter = Some(hunter_record(rng, &identity));
                }
                if rng.chance(0.35) {
                    known.prospeo = Some(prospeo_record(rng, &identity));
                }
                if rng.chance(0.3) {
                    known.dropcontact = Some(dropcontact_record(rng, &identity));
                }
                if rng.chance(0.45) {
                    known.pdl = Some(pdl_record(rng, &identity));
                }
                if rng.chance(0.4) || !known.has_provider_record() {
                    known.fullenrich = Some(fullenrich_record(rng, &identity));
                }
            }
            Synthetic {
                known: (!nobody && known.has_provider_record()).then_some(known),
                identity,
                wants_phones: index % PHONES_EVERY == 0,
            }
        })
        .collect()
}

/// The mixed simulator behaviour of the run, FullEnrich's jobs taking `fullenrich_job_seconds`.
fn simulator_config(seed: u64, fullenrich_job_seconds: Option<[f64; 2]>) -> SimulatorConfig {
    SimulatorConfig {
        seed,
        providers: HashMap::from([
            (
                "hunter".to_string(),
                ProviderBehavior {
                    error_rate: 0.05,
                    ..Default::default()
                },
            ),
            (
                "pdl".to_string(),
                ProviderBehavior {
                    latency_ms: 300,
                    rate_limit_rate: 0.10,
                    retry_after_seconds: Some(1),
                    ..Default::default()
                },
            ),
            (
                "prospeo".to_string(),
                ProviderBehavior {
                    error_rate: 0.20,
                    ..Default::default()
                },
            ),
            (
                "fullenrich".to_string(),
                ProviderBehavior {
                    latency_ms: 1_000,
                    job_seconds: fullenrich_job_seconds,
                    ..Default::default()
                },
            ),
            (
                "dropcontact".to_string(),
                ProviderBehavior {
                    miss_rate: 0.30,
                    ..Default::default()
                },
            ),
        ]),
    }
}

// ---------------------------------------------------------------------------------------------
// Running one org

/// What became of one enrichment of the run.
#[derive(Debug, Clone)]
struct Outcome {
    person: usize,
    field: &'static str,
    /// The last enrichment the API answered; `None` when the POST was refused.
    enrichment: Option<Enrichment>,
    /// The refused POST's status and body.
    refused: Option<(u16, String)>,
}

impl Outcome {
    fn status(&self) -> Option<Status> {
        self.enrichment.as_ref().map(|e| e.status)
    }

    fn seconds(&self) -> Option<f64> {
        let e = self.enrichment.as_ref()?;
        if e.status == Status::Pending {
            return None;
        }
        let created = DateTime::parse_from_rfc3339(&e.created_at).ok()?;
        let updated = DateTime::parse_from_rfc3339(&e.updated_at).ok()?;
        Some((updated - created).num_milliseconds() as f64 / 1000.0)
    }
}

struct OrgRun {
    outcomes: Vec<Outcome>,
    requests: RequestStats,
    wall: Duration,
    /// Worker invocations and their handler time during the run (what Lambda bills).
    worker: (u64, Duration),
}

/// Posts every enrichment of `people` in `org` (at most `concurrency` at a time), then polls
/// them until none is pending or `max_wait` has passed.
async fn run_org(
    stack: &Stack,
    http: &reqwest::Client,
    org: &str,
    people: &[(Person, bool)],
    concurrency: usize,
    max_wait: Duration,
) -> Result<OrgRun, String> {
    let api = Api {
        http: http.clone(),
        base: stack.info.gateway_url.clone(),
        token: stack.token(USER, org, Duration::from_secs(4 * 3600))?,
    };
    // Zeroed per org, so that `max_submits_per_person` is this org's.
    reset_request_stats(http, &stack.simulator_url).await?;
    let before = request_stats(http, &stack.simulator_url).await?;
    let usage_before = stack.worker_usage.get();
    let started = Instant::now();
    let limit = Arc::new(Semaphore::new(concurrency));

    let mut jobs: Vec<(usize, Uuid, &'static str)> = Vec::new();
    for (index, (person, wants_phones)) in people.iter().enumerate() {
        jobs.push((index, person.id, "emails"));
        if *wants_phones {
            jobs.push((index, person.id, "phones"));
        }
    }
    let mut outcomes: Vec<Outcome> = jobs
        .iter()
        .map(|&(person, _, field)| Outcome {
            person,
            field,
            enrichment: None,
            refused: None,
        })
        .collect();

    // POST everything.
    let mut set = JoinSet::new();
    for (slot, &(_, id, field)) in jobs.iter().enumerate() {
        let api = api.clone();
        let limit = limit.clone();
        set.spawn(async move {
            let _permit = limit.acquire_owned().await;
            (slot, api.call(reqwest::Method::POST, id, field).await)
        });
    }
    while let Some(joined) = set.join_next().await {
        let (slot, result) = joined.map_err(|e| e.to_string())?;
        let (status, body) = result?;
        match serde_json::from_str::<Enrichment>(&body) {
            Ok(enrichment) if status == 200 => outcomes[slot].enrichment = Some(enrichment),
            _ => outcomes[slot].refused = Some((status, body)),
        }
    }
    let posted = started.elapsed();
    eprintln!(
        "  {org}: {} enrichments posted in {:.1} s, polling",
        jobs.len(),
        posted.as_secs_f64()
    );

    // Poll until nothing is pending.
    let deadline = started + max_wait;
    let mut last_report = Instant::now();
    loop {
        let pending: Vec<usize> = outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| o.status() == Some(Status::Pending))
            .map(|(slot, _)| slot)
            .collect();
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(30) {
            eprintln!(
                "  {org}: {} pending after {:.0} s",
                pending.len(),
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut set = JoinSet::new();
        for slot in pending {
            let (_, id, field) = jobs[slot];
            let api = api.clone();
            let limit = limit.clone();
            set.spawn(async move {
                let _permit = limit.acquire_owned().await;
                (slot, api.call(reqwest::Method::GET, id, field).await)
            });
        }
        while let Some(joined) = set.join_next().await {
            let (slot, result) = joined.map_err(|e| e.to_string())?;
            let (status, body) = result?;
            if status != 200 {
                return Err(format!("GET answered {status}: {body}"));
            }
            let enrichment: Enrichment =
                serde_json::from_str(&body).map_err(|e| format!("GET body {body}: {e}"))?;
            outcomes[slot].enrichment = Some(enrichment);
        }
    }
    let wall = started.elapsed();
    let after = request_stats(http, &stack.simulator_url).await?;
    let usage_after = stack.worker_usage.get();
    Ok(OrgRun {
        outcomes,
        requests: delta(&after, &before),
        wall,
        worker: (
            usage_after.0 - usage_before.0,
            usage_after.1.saturating_sub(usage_before.1),
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// Report

struct Summary {
    enrichments: usize,
    found: usize,
    not_found: usize,
    failed: usize,
    timeout: usize,
    pending: usize,
    refused: usize,
    requests: BTreeMap<String, u64>,
    total_requests: u64,
    /// Requests without the polls of the asynchronous providers: one per provider call,
    /// retries included.
    calls: u64,
    durations: Vec<f64>,
    slowest: Option<(f64, usize, &'static str, Status)>,
    /// Time between one completion and the previous (or the enrichment's creation, if later):
    /// the worker's time on the job when a single poller runs one job at a time.
    worker_times: Vec<f64>,
    errors: BTreeMap<String, usize>,
    wall: Duration,
    /// Submits of the asynchronous providers (paid jobs started).
    submits: u64,
    /// Per asynchronous provider, the most jobs created for one person and field.
    max_submits_per_person: BTreeMap<String, u64>,
    worker: (u64, Duration),
}

fn summarize(run: &OrgRun) -> Summary {
    let count =
        |wanted: &dyn Fn(&Outcome) -> bool| run.outcomes.iter().filter(|o| wanted(o)).count();
    let found = |o: &Outcome| {
        o.status() == Some(Status::Finished)
            && o.enrichment.as_ref().and_then(|e| e.data_found) == Some(true)
    };
    let mut durations: Vec<f64> = run.outcomes.iter().filter_map(Outcome::seconds).collect();
    durations.sort_by(f64::total_cmp);
    let slowest = run
        .outcomes
        .iter()
        .filter_map(|o| Some((o.seconds()?, o.person, o.field, o.status()?)))
        .max_by(|a, b| a.0.total_cmp(&b.0));

    let mut done: Vec<(DateTime<Utc>, DateTime<Utc>)> = run
        .outcomes
        .iter()
        .filter_map(|o| {
            let e = o.enrichment.as_ref()?;
            if !matches!(e.status, Status::Finished | Status::Failed) {
                return None;
            }
            let created = DateTime::parse_from_rfc3339(&e.created_at).ok()?;
            let updated = DateTime::parse_from_rfc3339(&e.updated_at).ok()?;
            Some((created.with_timezone(&Utc), updated.with_timezone(&Utc)))
        })
        .collect();
    done.sort_by_key(|(_, updated)| *updated);
    let mut worker_times = Vec::new();
    let mut previous: Option<DateTime<Utc>> = None;
    for (created, updated) in done {
        let start = previous.map_or(created, |p| p.max(created));
        worker_times.push((updated - start).num_milliseconds().max(0) as f64 / 1000.0);
        previous = Some(updated);
    }
    worker_times.sort_by(f64::total_cmp);

    let mut errors = BTreeMap::new();
    for o in &run.outcomes {
        if let Some(e) = &o.enrichment
            && matches!(e.status, Status::Failed | Status::Timeout)
        {
            *errors
                .entry(e.error.clone().unwrap_or_else(|| "(no error)".into()))
                .or_default() += 1;
        }
        if let Some((status, body)) = &o.refused {
            *errors.entry(format!("POST {status}: {body}")).or_default() += 1;
        }
    }

    let requests: BTreeMap<String, u64> = run
        .requests
        .iter()
        .map(|(name, s)| (name.clone(), s.requests))
        .collect();
    let total_requests = requests.values().sum();
    let calls = run
        .requests
        .values()
        .map(|s| s.requests - s.polls.unwrap_or(0))
        .sum();
    Summary {
        enrichments: run.outcomes.len(),
        found: count(&found),
        not_found: count(&|o| {
            o.status() == Some(Status::Finished)
                && o.enrichment.as_ref().and_then(|e| e.data_found) == Some(false)
        }),
        failed: count(&|o| o.status() == Some(Status::Failed)),
        timeout: count(&|o| o.status() == Some(Status::Timeout)),
        pending: count(&|o| o.status() == Some(Status::Pending)),
        refused: count(&|o| o.refused.is_some()),
        requests,
        total_requests,
        calls,
        durations,
        slowest,
        worker_times,
        errors,
        wall: run.wall,
        submits: run.requests.values().filter_map(|s| s.submits).sum(),
        max_submits_per_person: run
            .requests
            .iter()
            .filter_map(|(name, s)| Some((name.clone(), s.max_submits_per_person?)))
            .collect(),
        worker: run.worker,
    }
}

fn ratio(numerator: u64, denominator: usize) -> String {
    if denominator == 0 {
        "-".into()
    } else {
        format!("{:.2}", numerator as f64 / denominator as f64)
    }
}

fn seconds(value: Option<f64>) -> String {
    value.map_or("-".into(), |s| format!("{s:.1} s"))
}

/// `single_poller`: one job ran at a time, so the gaps between completions are the worker's
/// time per job (printed only then).
fn print_report(
    a: &Summary,
    b: &Summary,
    cache_hits: usize,
    b_found_in_a: usize,
    single_poller: bool,
) {
    let row = |label: &str, x: String, y: String| println!("{label:<38}{x:>14}{y:>14}");
    row("", "org A".into(), "org B".into());
    row(
        "enrichments",
        a.enrichments.to_string(),
        b.enrichments.to_string(),
    );
    row(
        "  finished, dataFound true",
        a.found.to_string(),
        b.found.to_string(),
    );
    row(
        "  finished, dataFound false",
        a.not_found.to_string(),
        b.not_found.to_string(),
    );
    row("  failed", a.failed.to_string(), b.failed.to_string());
    row("  timeout", a.timeout.to_string(), b.timeout.to_string());
    if a.pending + b.pending > 0 {
        row(
            "  still pending at the end",
            a.pending.to_string(),
            b.pending.to_string(),
        );
    }
    if a.refused + b.refused > 0 {
        row(
            "  POST refused",
            a.refused.to_string(),
            b.refused.to_string(),
        );
    }
    println!("provider requests (simulator /stats)");
    for name in PROVIDERS {
        let get = |s: &Summary| s.requests.get(name).copied().unwrap_or(0).to_string();
        row(&format!("  {name}"), get(a), get(b));
    }
    row(
        "  total",
        a.total_requests.to_string(),
        b.total_requests.to_string(),
    );
    row(
        "  calls (total without async polls)",
        a.calls.to_string(),
        b.calls.to_string(),
    );
    row(
        "provider requests per found contact",
        ratio(a.total_requests, a.found),
        ratio(b.total_requests, b.found),
    );
    row(
        "provider calls per found contact",
        ratio(a.calls, a.found),
        ratio(b.calls, b.found),
    );
    row(
        "async provider submits (paid jobs)",
        a.submits.to_string(),
        b.submits.to_string(),
    );
    for name in a.max_submits_per_person.keys() {
        let get = |s: &Summary| {
            s.max_submits_per_person
                .get(name)
                .map_or("-".to_string(), u64::to_string)
        };
        row(&format!("  max per person+field: {name}"), get(a), get(b));
    }
    let per_enrichment = |s: &Summary, value: f64| {
        if s.enrichments == 0 {
            "-".to_string()
        } else {
            format!("{:.2}", value / s.enrichments as f64)
        }
    };
    row(
        "worker invocations per enrichment",
        per_enrichment(a, a.worker.0 as f64),
        per_enrichment(b, b.worker.0 as f64),
    );
    row(
        "worker Lambda-seconds per enrichment",
        per_enrichment(a, a.worker.1.as_secs_f64()),
        per_enrichment(b, b.worker.1.as_secs_f64()),
    );
    row(
        "global cache hits (same id as in A)",
        "-".into(),
        format!("{cache_hits}/{b_found_in_a}"),
    );
    row(
        "enrichment duration p50",
        seconds(percentile(&a.durations, 50.0)),
        seconds(percentile(&b.durations, 50.0)),
    );
    row(
        "enrichment duration p95",
        seconds(percentile(&a.durations, 95.0)),
        seconds(percentile(&b.durations, 95.0)),
    );
    row(
        "enrichment duration max (slowest)",
        seconds(a.durations.last().copied()),
        seconds(b.durations.last().copied()),
    );
    if single_poller {
        row(
            "worker time per job p50",
            seconds(percentile(&a.worker_times, 50.0)),
            seconds(percentile(&b.worker_times, 50.0)),
        );
        row(
            "worker time per job p95",
            seconds(percentile(&a.worker_times, 95.0)),
            seconds(percentile(&b.worker_times, 95.0)),
        );
        row(
            "worker time per job max",
            seconds(a.worker_times.last().copied()),
            seconds(b.worker_times.last().copied()),
        );
    }
    row(
        "wall time",
        format!("{:.1} s", a.wall.as_secs_f64()),
        format!("{:.1} s", b.wall.as_secs_f64()),
    );
    for (org, summary) in [("A", a), ("B", b)] {
        if let Some((secs, person, field, status)) = summary.slowest {
            println!(
                "slowest in org {org}: person #{person} {field}, {} after {secs:.1} s",
                status.as_str()
            );
        }
    }
    for (org, summary) in [("A", a), ("B", b)] {
        for (error, count) in &summary.errors {
            println!("org {org}: {count} x {error}");
        }
    }
}

// ---------------------------------------------------------------------------------------------

async fn run(args: Args) -> Result<(), String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let state_dir = std::env::temp_dir().join(format!(
        "mixed-workload-{}-{}",
        std::process::id(),
        args.seed
    ));
    std::fs::create_dir_all(&state_dir).map_err(|e| e.to_string())?;
    let result = run_in(&args, &root, &state_dir).await;
    let _ = std::fs::remove_dir_all(&state_dir);
    result
}

async fn run_in(
    args: &Args,
    root: &std::path::Path,
    state_dir: &std::path::Path,
) -> Result<(), String> {
    let people = synthesize(args.people, args.seed);
    let known: Vec<KnownPerson> = people.iter().filter_map(|p| p.known.clone()).collect();
    let config = simulator_config(args.seed, args.fullenrich_job_seconds);

    // The stack reads the functions' settings from the environment, over the run's cascade.
    let vars = Vars::env().or(Vars::from_pairs(CASCADE_DEFAULTS));
    let env = |name: &'static str| vars.string(name).unwrap_or_default();
    let phones = people.iter().filter(|p| p.wants_phones).count();
    println!(
        "mixed workload: {} people (seed {}), emails for all, phones for {phones}; \
         {} requests in flight; {} SQS poller(s) of one message each",
        people.len(),
        args.seed,
        args.concurrency,
        args.workers
    );
    println!(
        "cascade: emails {} | phones {} | {} s per provider call",
        env("EMAIL_PROVIDERS"),
        env("PHONE_PROVIDERS"),
        env("PROVIDER_TIMEOUT_SECONDS")
    );
    println!("simulator: {}", describe(&config));
    println!("{}", describe_fixture(&known, people.len()));

    let mut options = private_options(root, state_dir, &known, &config, vars)?;
    options.worker_concurrency = args.workers;
    let stack = Stack::start(options).await?;
    let result = run_orgs(args, &stack, &people).await;
    stack.shutdown().await;
    result
}

async fn run_orgs(args: &Args, stack: &Stack, people: &[Synthetic]) -> Result<(), String> {
    let http = reqwest::Client::new();
    let mut runs = Vec::new();
    for org in [ORG_A, ORG_B] {
        let persons: Vec<(Person, bool)> = people
            .iter()
            .map(|p| (p.identity.person(), p.wants_phones))
            .collect();
        let all: Vec<Person> = persons.iter().map(|(p, _)| p.clone()).collect();
        stack
            .store
            .create_people(org, &all)
            .await
            .map_err(|e| e.to_string())?;
        stack
            .store
            .grant_credits(org, 1_000_000)
            .await
            .map_err(|e| e.to_string())?;
        eprintln!("{org}: {} people imported", all.len());
        let run = run_org(stack, &http, org, &persons, args.concurrency, args.max_wait).await?;
        runs.push(run);
    }
    let (a, b) = (&runs[0], &runs[1]);
    // B's enrichments served from A's global cache entries: the same globalEnrichmentId.
    let ids_in_a: HashMap<(usize, &str), Uuid> = a
        .outcomes
        .iter()
        .filter_map(|o| {
            let id = o.enrichment.as_ref()?.global_enrichment_id?;
            Some(((o.person, o.field), id))
        })
        .collect();
    let cache_hits = b
        .outcomes
        .iter()
        .filter(|o| {
            let id = o.enrichment.as_ref().and_then(|e| e.global_enrichment_id);
            id.is_some() && id == ids_in_a.get(&(o.person, o.field)).copied()
        })
        .count();
    println!();
    print_report(
        &summarize(a),
        &summarize(b),
        cache_hits,
        ids_in_a.len(),
        args.workers == 1,
    );
    Ok(())
}
