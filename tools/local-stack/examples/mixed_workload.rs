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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use enrichment::config::Vars;
use enrichment::domain::{Enrichment, Person, Status};
use enrichment::providers::normalize::{normalize_email, normalize_phone};
use local_stack::simulator::{
    DropcontactEmail, DropcontactRecord, FullEnrichRecord, HunterRecord, KnownPerson,
    MAX_JOB_SECONDS, PdlRecord, ProspeoRecord, ProviderBehavior, RequestStats, SimulatorConfig,
};
use local_stack::{Options, Stack};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use uuid::Uuid;

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

const PROVIDERS: [&str; 5] = ["hunter", "pdl", "prospeo", "fullenrich", "dropcontact"];
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

/// The visibility timeout of the run's queue and pollers (the local stack's default).
const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(60);

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

/// SplitMix64: a small deterministic generator, so that a seed always gives the same people.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const FIRST: [&str; 40] = [
    "Alva", "Bram", "Cosima", "Dario", "Edda", "Fenn", "Gilda", "Hollis", "Ines", "Jorah",
    "Kestra", "Lorcan", "Mira", "Nils", "Odile", "Pim", "Quilla", "Rafe", "Saoirse", "Tobin",
    "Ulla", "Vesper", "Wren", "Xavi", "Yara", "Zeno", "Anouk", "Basil", "Clio", "Dov", "Elska",
    "Ferris", "Greer", "Hale", "Ilse", "Joss", "Kai", "Liesel", "Marek", "Noor",
];

const LAST: [&str; 40] = [
    "Ashgrove",
    "Brindle",
    "Calloway",
    "Dunmore",
    "Everhart",
    "Fairweather",
    "Galloway",
    "Holloway",
    "Ironside",
    "Jessup",
    "Kilbride",
    "Larkspur",
    "Merriwether",
    "Northcott",
    "Oakhurst",
    "Pennywhistle",
    "Quennell",
    "Rookwood",
    "Starling",
    "Thistlewood",
    "Underhill",
    "Vantongeren",
    "Whitlock",
    "Yarborough",
    "Zabriskie",
    "Amberley",
    "Blackwood",
    "Coldwell",
    "Driscoll",
    "Emberton",
    "Foxley",
    "Greaves",
    "Harrowgate",
    "Ingleby",
    "Juniper",
    "Kettering",
    "Lockhart",
    "Marchbanks",
    "Nettleship",
    "Ormsby",
];

const COMPANY_FIRST: [&str; 12] = [
    "Amber", "Birch", "Cobalt", "Drift", "Ember", "Flint", "Granite", "Heron", "Indigo", "Juniper",
    "Kelp", "Lumen",
];

const COMPANY_SECOND: [&str; 8] = [
    "Harbor",
    "Works",
    "Labs",
    "Freight",
    "Analytics",
    "Systems",
    "Studio",
    "Robotics",
];

const AREA_CODES: [&str; 6] = ["212", "646", "415", "312", "617", "206"];

/// One synthetic person: who they are, and what the simulated providers know about them.
struct Synthetic {
    first_name: String,
    last_name: String,
    company_name: String,
    company_domain: String,
    linkedin_url: Option<String>,
    /// `None`: no provider knows this person.
    known: Option<KnownPerson>,
    /// Whether the run asks for this person's phones too.
    wants_phones: bool,
}

impl Synthetic {
    fn person(&self) -> Person {
        Person {
            id: Uuid::new_v4(),
            first_name: Some(self.first_name.clone()),
            last_name: Some(self.last_name.clone()),
            company_name: Some(self.company_name.clone()),
            company_domain: Some(self.company_domain.clone()),
            linkedin_url: self.linkedin_url.clone(),
            ..Person::default()
        }
    }
}

fn phone(rng: &mut Rng) -> String {
    // 555-0100 to 555-0199: the numbers reserved for fiction.
    format!("+1 {} 555 01{:02}", rng.pick(&AREA_CODES), rng.below(100))
}

/// `count` distinct people from `seed`: about 12% known to no provider, the others to one or
/// more of them, each provider with its own share and its own mix of emails and phones.
fn synthesize(count: usize, seed: u64) -> Vec<Synthetic> {
    let mut rng = Rng(seed ^ 0x6d69_7865_645f_776b);
    let companies: Vec<(String, String)> = (0..40)
        .map(|i| {
            let first = COMPANY_FIRST[i % COMPANY_FIRST.len()];
            let second = COMPANY_SECOND[(i / COMPANY_FIRST.len() + i) % COMPANY_SECOND.len()];
            let domain = format!("{}{}.example", first, second).to_lowercase();
            (format!("{first} {second}"), domain)
        })
        .collect();
    let mut taken = HashSet::new();
    let mut people = Vec::with_capacity(count);
    while people.len() < count {
        let first = rng.pick(&FIRST).to_string();
        let last = rng.pick(&LAST).to_string();
        let (company_name, company_domain) = companies[rng.below(companies.len())].clone();
        if !taken.insert(format!("{first} {last} {company_domain}")) {
            continue;
        }
        let index = people.len();
        let local = format!("{}.{}", first, last).to_lowercase();
        let email = format!("{local}@{company_domain}");
        let linkedin_url = rng.chance(0.8).then(|| {
            format!(
                "https://www.linkedin.com/in/{}-{}-{:04x}",
                first.to_lowercase(),
                last.to_lowercase(),
                rng.next() & 0xffff
            )
        });
        let mut known = KnownPerson {
            first_name: first.clone(),
            last_name: last.clone(),
            company_name: Some(company_name.clone()),
            company_domain: Some(company_domain.clone()),
            linkedin_url: linkedin_url.clone(),
            hunter: None,
            pdl: None,
            prospeo: None,
            fullenrich: None,
            dropcontact: None,
        };
        let nobody = rng.chance(0.12);
        if !nobody {
            if rng.chance(0.5) {
                known.hunter = Some(HunterRecord {
                    email: email.clone(),
                    score: 70 + rng.below(30) as u8,
                    verification_status: Some(
                        if rng.chance(0.8) {
                            "valid"
                        } else {
                            "accept_all"
                        }
                        .into(),
                    ),
                    position: None,
                    simulate: Default::default(),
                });
            }
            if rng.chance(0.35) {
                known.prospeo = Some(ProspeoRecord {
                    email: rng.chance(0.8).then(|| email.clone()),
                    mobile: rng.chance(0.5).then(|| phone(&mut rng).replace(' ', "")),
                    job_title: None,
                    simulate: Default::default(),
                });
            }
            if rng.chance(0.3) {
                let address = if rng.chance(0.7) {
                    email.clone()
                } else {
                    format!("{}{}@{company_domain}", &local[..1], last.to_lowercase())
                };
                known.dropcontact = Some(DropcontactRecord {
                    emails: vec![DropcontactEmail {
                        email: address,
                        qualification: "nominative@pro".into(),
                    }],
                    phone: None,
                    simulate: Default::default(),
                });
            }
            if rng.chance(0.45) {
                known.pdl = Some(PdlRecord {
                    work_email: rng.chance(0.8).then(|| email.clone()),
                    personal_emails: Vec::new(),
                    mobile_phone: rng.chance(0.55).then(|| phone(&mut rng)),
                    phone_numbers: Vec::new(),
                    likelihood: 6 + rng.below(5) as u8,
                    simulate: Default::default(),
                });
            }
            if rng.chance(0.4) || !known.has_provider_record() {
                known.fullenrich = Some(FullEnrichRecord {
                    work_emails: if rng.chance(0.85) {
                        vec![email.clone()]
                    } else {
                        Vec::new()
                    },
                    email_status: "DELIVERABLE".into(),
                    personal_emails: Vec::new(),
                    phones: if rng.chance(0.55) {
                        vec![phone(&mut rng)]
                    } else {
                        Vec::new()
                    },
                    simulate: Default::default(),
                });
            }
        }
        people.push(Synthetic {
            first_name: first,
            last_name: last,
            company_name,
            company_domain,
            linkedin_url,
            known: (!nobody && known.has_provider_record()).then_some(known),
            wants_phones: index % PHONES_EVERY == 0,
        });
    }
    people
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

fn describe(config: &SimulatorConfig) -> String {
    PROVIDERS
        .iter()
        .filter_map(|name| {
            let b = config.providers.get(*name)?;
            let mut parts = Vec::new();
            if b.latency_ms > 0 {
                parts.push(format!("{} ms per request", b.latency_ms));
            }
            if b.error_rate > 0.0 {
                parts.push(format!("{:.0}% 500s", b.error_rate * 100.0));
            }
            if b.rate_limit_rate > 0.0 {
                let after = b
                    .retry_after_seconds
                    .map(|s| format!(" (come back in {s} s)"))
                    .unwrap_or_default();
                parts.push(format!(
                    "{:.0}% rate limited{after}",
                    b.rate_limit_rate * 100.0
                ));
            }
            if b.miss_rate > 0.0 {
                parts.push(format!("{:.0}% misses", b.miss_rate * 100.0));
            }
            if let Some([min, max]) = b.job_seconds {
                parts.push(format!("jobs of {min} to {max} s"));
            }
            Some(format!("{name} {}", parts.join(" + ")))
        })
        .collect::<Vec<_>>()
        .join("; ")
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

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        person: Uuid,
        field: &str,
    ) -> Result<(u16, String), String> {
        let url = format!(
            "{}/api/v1/operations/enrichment/{person}?field={field}",
            self.base
        );
        let response = self
            .http
            .request(method, url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("gateway: {e}"))?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| e.to_string())?;
        Ok((status, body))
    }
}

async fn reset_request_stats(http: &reqwest::Client, simulator: &str) -> Result<(), String> {
    http.post(format!("{simulator}/stats/reset"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map(drop)
        .map_err(|e| format!("simulator /stats/reset: {e}"))
}

async fn request_stats(http: &reqwest::Client, simulator: &str) -> Result<RequestStats, String> {
    http.get(format!("{simulator}/stats"))
        .send()
        .await
        .map_err(|e| format!("simulator /stats: {e}"))?
        .json()
        .await
        .map_err(|e| format!("simulator /stats: {e}"))
}

fn delta(after: &RequestStats, before: &RequestStats) -> RequestStats {
    after
        .iter()
        .map(|(name, a)| {
            let b = before.get(name).cloned().unwrap_or_default();
            let minus = |x: Option<u64>, y: Option<u64>| x.map(|x| x - y.unwrap_or(0));
            let mut stats = a.clone();
            stats.requests = a.requests - b.requests;
            stats.submits = minus(a.submits, b.submits);
            stats.polls = minus(a.polls, b.polls);
            for (status, count) in &mut stats.statuses {
                *count -= b.statuses.get(status).copied().unwrap_or(0);
            }
            stats.statuses.retain(|_, count| *count > 0);
            (name.clone(), stats)
        })
        .collect()
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

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

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
    check_fixture(&known)?;
    let fixture = state_dir.join("known-people.json");
    let config = simulator_config(args.seed, args.fullenrich_job_seconds);
    config.validate()?;
    let config_path = state_dir.join("simulator.json");
    let write = |path: &std::path::Path, value: String| {
        std::fs::write(path, value).map_err(|e| format!("{}: {e}", path.display()))
    };
    write(
        &fixture,
        serde_json::to_string_pretty(&known).map_err(|e| e.to_string())?,
    )?;
    write(
        &config_path,
        serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?,
    )?;

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
    let knows = |has: fn(&KnownPerson) -> bool| known.iter().filter(|k| has(k)).count();
    println!(
        "fixture: {} of {} known to some provider (hunter {}, pdl {}, prospeo {}, fullenrich {}, dropcontact {})",
        known.len(),
        people.len(),
        knows(|k| k.hunter.is_some()),
        knows(|k| k.pdl.is_some()),
        knows(|k| k.prospeo.is_some()),
        knows(|k| k.fullenrich.is_some()),
        knows(|k| k.dropcontact.is_some()),
    );

    let mut options = Options::for_repo(root);
    options.state_dir = state_dir.to_path_buf();
    options.persist = false;
    options.port = 0;
    options.local_worker = true;
    options.fixture = fixture;
    options.simulator_config = Some(config_path);
    options.visibility_timeout = VISIBILITY_TIMEOUT;
    options.worker_concurrency = args.workers;
    options.vars = vars;
    let stack = Stack::start(options).await?;
    let result = run_orgs(args, &stack, &people).await;
    stack.shutdown().await;
    result
}

/// The synthetic values must survive the cascade's normalization, or a "found" would be a miss.
fn check_fixture(known: &[KnownPerson]) -> Result<(), String> {
    for k in known {
        let mut emails: Vec<&String> = Vec::new();
        let mut phones: Vec<&String> = Vec::new();
        if let Some(r) = &k.hunter {
            emails.push(&r.email);
        }
        if let Some(r) = &k.pdl {
            emails.extend(&r.work_email);
            phones.extend(&r.mobile_phone);
        }
        if let Some(r) = &k.prospeo {
            emails.extend(&r.email);
            phones.extend(&r.mobile);
        }
        if let Some(r) = &k.fullenrich {
            emails.extend(&r.work_emails);
            phones.extend(&r.phones);
        }
        if let Some(r) = &k.dropcontact {
            emails.extend(r.emails.iter().map(|e| &e.email));
        }
        for email in emails {
            normalize_email(email)
                .ok_or(format!("synthetic email {email:?} does not normalize"))?;
        }
        for phone in phones {
            normalize_phone(phone, phonenumber::country::Id::US)
                .ok_or(format!("synthetic phone {phone:?} does not normalize"))?;
        }
    }
    Ok(())
}

async fn run_orgs(args: &Args, stack: &Stack, people: &[Synthetic]) -> Result<(), String> {
    let http = reqwest::Client::new();
    let mut runs = Vec::new();
    for org in [ORG_A, ORG_B] {
        let persons: Vec<(Person, bool)> = people
            .iter()
            .map(|p| (p.person(), p.wants_phones))
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
