//! The provider simulator: Hunter.io's Email Finder, People Data Labs' Person Enrichment,
//! Prospeo's Enrich Person, FullEnrich's bulk contact enrichment and Dropcontact's batch
//! enrichment on loopback, speaking their wire formats (see the adapters in
//! `enrichment::providers` for the documented shapes), answering from a fixture of known people.
//!
//! Routes, so that the base URLs are `http://127.0.0.1:PORT/hunter`, `.../pdl`, `.../prospeo`,
//! `.../fullenrich` and `.../dropcontact`:
//!
//! - `GET /hunter/v2/email-finder?domain=&first_name=&last_name=` with `X-API-KEY` (or
//!   `api_key`) (also `full_name`, `company`, `linkedin_handle`). Found: 200 with `data.email`;
//!   anyone else: 200 with `data.email: null`, Hunter's no match.
//! - `GET /pdl/v5/person/enrich` with `X-Api-Key` (or `api_key`) and `profile`, or
//!   `first_name` + `last_name` + `company` (name or domain), and `required`. Found: 200 with
//!   `status`, `likelihood`, `data`; anyone else (or a record without the `required` fields):
//!   404 `not_found`.
//! - `POST /prospeo/enrich-person` with `X-KEY` and `{"data": {...}, "enrich_mobile": ...}`.
//!   Found: 200 with `person.email` / `person.mobile` (the mobile revealed only when
//!   `enrich_mobile` or `only_verified_mobile` is set, masked otherwise); anyone else, or a
//!   person without the verified value `only_verified_*` asks for: 400 `NO_MATCH`.
//! - `POST /fullenrich/api/v2/contact/enrich/bulk` with `Authorization: Bearer KEY` answers an
//!   `enrichment_id`; `GET /fullenrich/api/v2/contact/enrich/bulk/{id}` answers 400
//!   `error.enrichment.in_progress` the first time, then 200 `FINISHED` with each contact's
//!   `contact_info` (empty for people FullEnrich does not know).
//! - `POST /dropcontact/v1/enrich/all` with `X-Access-Token` answers a `request_id`;
//!   `GET /dropcontact/v1/enrich/all/{request_id}` answers `success: false` ("not ready") the
//!   first time, then `success: true` with the records (without `email` for unknown people).
//!
//! The asynchronous providers' jobs live in the router's state, in memory.
//!
//! The simulator counts the requests each provider receives (see [`RequestStats`]):
//! `GET /stats` answers them as JSON, `POST /stats/reset` answers them and starts again from
//! zero.
//!
//! A person matches by LinkedIn URL (scheme, `www.`, query, trailing slash and case ignored), or
//! by full name (case-insensitive) and company domain (or company name). Any API key is
//! accepted except an empty one, which gets the provider's 401. A provider record can also slow
//! the answer (`simulate.delay_ms`) or fail it (`simulate.fail_status`, with
//! `simulate.retry_after_seconds` for 403/429), to show latency, errors and rate limiting for
//! one person.
//!
//! Simulator-wide, a [`SimulatorConfig`] gives each provider a latency and rates of misses,
//! server errors and rate limiting ([`ProviderBehavior`]), drawn deterministically from a hash
//! of the seed, the provider and the person a request asks about: the same person always gets
//! the same draw, so runs are reproducible. See [`router_with`].

mod dropcontact;
mod fullenrich;
mod prospeo;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use enrichment::identity::{bare_domain, linkedin_profile, text_key};
use enrichment::providers::{
    dropcontact as dropcontact_api, fullenrich as fullenrich_api, hunter as hunter_api,
    pdl as pdl_api, prospeo as prospeo_api,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The providers the simulator speaks, by their configuration names.
pub const PROVIDERS: [&str; 5] = [
    hunter_api::NAME,
    pdl_api::NAME,
    prospeo_api::NAME,
    fullenrich_api::NAME,
    dropcontact_api::NAME,
];

/// One person the simulated providers know, and what each of them knows about that person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownPerson {
    /// Given name, matched case-insensitively.
    pub first_name: String,
    /// Family name, matched case-insensitively.
    pub last_name: String,
    /// Employer's name (PDL's `company` may name it).
    #[serde(default)]
    pub company_name: Option<String>,
    /// Employer's domain (`northwind.example`).
    #[serde(default)]
    pub company_domain: Option<String>,
    /// LinkedIn profile URL, in any usual writing.
    #[serde(default)]
    pub linkedin_url: Option<String>,
    /// What Hunter's Email Finder answers for this person; `None`: Hunter finds nothing.
    #[serde(default)]
    pub hunter: Option<HunterRecord>,
    /// What PDL's Person Enrichment answers for this person; `None`: PDL finds nothing.
    #[serde(default)]
    pub pdl: Option<PdlRecord>,
    /// What Prospeo's Enrich Person answers for this person; `None`: Prospeo finds nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prospeo: Option<ProspeoRecord>,
    /// What FullEnrich's enrichment finds for this person; `None`: nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fullenrich: Option<FullEnrichRecord>,
    /// What Dropcontact's enrichment finds for this person; `None`: no email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropcontact: Option<DropcontactRecord>,
}

impl KnownPerson {
    /// Whether some provider knows this person.
    pub fn has_provider_record(&self) -> bool {
        self.hunter.is_some()
            || self.pdl.is_some()
            || self.prospeo.is_some()
            || self.fullenrich.is_some()
            || self.dropcontact.is_some()
    }
}

/// Hunter's Email Finder result for a known person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HunterRecord {
    /// The address found.
    pub email: String,
    /// Hunter's confidence, 0-100.
    #[serde(default = "default_score")]
    pub score: u8,
    /// `verification.status`: `valid`, `accept_all`, `unknown`...
    #[serde(default)]
    pub verification_status: Option<String>,
    /// Job title.
    #[serde(default)]
    pub position: Option<String>,
    /// Latency and failures of this provider for this person.
    #[serde(default, skip_serializing_if = "Behavior::is_plain")]
    pub simulate: Behavior,
}

/// PDL's Person Enrichment record for a known person (contact fields of PDL's person schema).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PdlRecord {
    /// `work_email`; also listed in `emails` as `current_professional`.
    #[serde(default)]
    pub work_email: Option<String>,
    /// `personal_emails`; also listed in `emails` as `personal`.
    #[serde(default)]
    pub personal_emails: Vec<String>,
    /// `mobile_phone`, written as the provider writes it.
    #[serde(default)]
    pub mobile_phone: Option<String>,
    /// `phone_numbers`, written as the provider writes them.
    #[serde(default)]
    pub phone_numbers: Vec<String>,
    /// PDL's match confidence, 1-10.
    #[serde(default = "default_likelihood")]
    pub likelihood: u8,
    /// Latency and failures of this provider for this person.
    #[serde(default, skip_serializing_if = "Behavior::is_plain")]
    pub simulate: Behavior,
}

/// Prospeo's Enrich Person record for a known person (`person.email`, `person.mobile`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProspeoRecord {
    /// The verified work email; `None`: `email.status` is `UNAVAILABLE`.
    #[serde(default)]
    pub email: Option<String>,
    /// The verified mobile in E.164; `None`: `mobile.status` is `UNAVAILABLE`.
    #[serde(default)]
    pub mobile: Option<String>,
    /// `current_job_title`.
    #[serde(default)]
    pub job_title: Option<String>,
    /// Latency and failures of this provider for this person. `fail_status` 402 is answered
    /// the way Prospeo signals it, a 400 `INSUFFICIENT_CREDITS`.
    #[serde(default, skip_serializing_if = "Behavior::is_plain")]
    pub simulate: Behavior,
}

/// What FullEnrich's waterfall finds for a known person (`contact_info`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullEnrichRecord {
    /// `work_emails`, the first also as `most_probable_work_email`.
    #[serde(default)]
    pub work_emails: Vec<String>,
    /// The grade of the work emails: `DELIVERABLE`, `HIGH_PROBABILITY`, `CATCH_ALL`...
    #[serde(default = "default_deliverable")]
    pub email_status: String,
    /// `personal_emails` (sent only when `contact.personal_emails` is asked for).
    #[serde(default)]
    pub personal_emails: Vec<String>,
    /// `phones`, as FullEnrich writes them, the first also as `most_probable_phone`.
    #[serde(default)]
    pub phones: Vec<String>,
    /// Latency and failures of this provider for this person. `fail_status` 402 ends the
    /// enrichment as `CREDITS_INSUFFICIENT` (its result answers 402); other statuses fail the
    /// start request.
    #[serde(default, skip_serializing_if = "Behavior::is_plain")]
    pub simulate: Behavior,
}

/// What Dropcontact finds for a known person.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropcontactRecord {
    /// The output record's `email` list.
    #[serde(default)]
    pub emails: Vec<DropcontactEmail>,
    /// The output record's `phone`: the company's number.
    #[serde(default)]
    pub phone: Option<String>,
    /// Latency and failures of this provider for this person (403: not enough credits).
    #[serde(default, skip_serializing_if = "Behavior::is_plain")]
    pub simulate: Behavior,
}

/// One entry of a Dropcontact output record's `email`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropcontactEmail {
    /// The address.
    pub email: String,
    /// `local@domain` qualification: `nominative@pro`, `catch_all@pro`, `generic@pro`...
    #[serde(default = "default_qualification")]
    pub qualification: String,
}

/// Latency and failures a simulated provider shows for one person (fixture key `simulate`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Behavior {
    /// Milliseconds to wait before answering.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub delay_ms: u64,
    /// Answer this HTTP status, with the provider's error body, instead of the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_status: Option<u16>,
    /// `Retry-After` (seconds) sent with `fail_status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
}

impl Behavior {
    /// No delay and no failure.
    pub fn is_plain(&self) -> bool {
        *self == Behavior::default()
    }
}

fn default_score() -> u8 {
    90
}

fn default_likelihood() -> u8 {
    9
}

fn default_deliverable() -> String {
    "DELIVERABLE".into()
}

fn default_qualification() -> String {
    "nominative@pro".into()
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// Reads a fixture: a JSON array of [`KnownPerson`]. Errors (as text naming the file): the file
/// cannot be read, is not such an array, or a person has a blank name or no provider record.
pub fn load_fixture(path: impl AsRef<Path>) -> Result<Vec<KnownPerson>, String> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read fixture {}: {e}", path.display()))?;
    let people: Vec<KnownPerson> = serde_json::from_str(&text).map_err(|e| {
        format!(
            "fixture {} is not a list of known people: {e}",
            path.display()
        )
    })?;
    for (index, person) in people.iter().enumerate() {
        if person.first_name.trim().is_empty() || person.last_name.trim().is_empty() {
            return Err(format!(
                "fixture {}: person #{index} needs a first and a last name",
                path.display()
            ));
        }
        if !person.has_provider_record() {
            return Err(format!(
                "fixture {}: {} {} has no provider record (hunter, pdl, prospeo, fullenrich or dropcontact)",
                path.display(),
                person.first_name,
                person.last_name
            ));
        }
    }
    Ok(people)
}

// ---------------------------------------------------------------------------------------------
// Simulator-wide behaviour

/// Simulator-wide behaviour of the providers, read from JSON:
///
/// ```json
/// { "seed": 7,
///   "providers": {
///     "hunter":     { "latency_ms": 120, "miss_rate": 0.2, "error_rate": 0.05 },
///     "fullenrich": { "rate_limit_rate": 0.1, "retry_after_seconds": 30 } } }
/// ```
///
/// A provider without an entry behaves as its fixture records say. For one with an entry, each
/// request first waits `latency_ms`, then draws a number in `[0, 1)` from a hash of `seed`, the
/// provider's name and the person the request asks about (its LinkedIn profile, or its name
/// and company): below `rate_limit_rate` the provider answers its rate-limit error, then (up to
/// `rate_limit_rate + error_rate`) a 500, then (up to `... + miss_rate`) its no match, and
/// otherwise from the fixture. The same person always draws the same number for a provider and
/// seed, so a run is reproducible; over many people the shares approach the rates. For the
/// asynchronous providers the draw is made when the job is submitted (a miss is a job that
/// finishes without data); the latency applies to every request, polls included.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorConfig {
    /// The seed mixed into every draw.
    #[serde(default)]
    pub seed: u64,
    /// Behaviour per provider name (`hunter`, `pdl`, `prospeo`, `fullenrich`, `dropcontact`).
    #[serde(default)]
    pub providers: HashMap<String, ProviderBehavior>,
}

/// How one simulated provider behaves for every request (see [`SimulatorConfig`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderBehavior {
    /// Milliseconds to wait before each answer.
    #[serde(default)]
    pub latency_ms: u64,
    /// Share of requests answered with the provider's no match, in `[0, 1]`.
    #[serde(default)]
    pub miss_rate: f64,
    /// Share of requests answered with a 500, in `[0, 1]`.
    #[serde(default)]
    pub error_rate: f64,
    /// Share of requests answered with the provider's rate-limit error, in `[0, 1]`.
    #[serde(default)]
    pub rate_limit_rate: f64,
    /// `Retry-After` (seconds) sent with the rate-limit error; none when unset.
    #[serde(default)]
    pub retry_after_seconds: Option<u64>,
}

impl SimulatorConfig {
    /// Reads and checks a configuration (see [`SimulatorConfig::validate`]).
    pub fn from_json(text: &str) -> Result<Self, String> {
        let config: SimulatorConfig = serde_json::from_str(text)
            .map_err(|e| format!("not a simulator configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    /// Errors (as text): a provider the simulator does not speak, a rate outside `[0, 1]`, or
    /// rates of one provider adding up to more than 1.
    pub fn validate(&self) -> Result<(), String> {
        for (name, behavior) in &self.providers {
            if !PROVIDERS.contains(&name.as_str()) {
                return Err(format!(
                    "unknown provider {name:?} (known: {})",
                    PROVIDERS.join(", ")
                ));
            }
            let rates = [
                ("miss_rate", behavior.miss_rate),
                ("error_rate", behavior.error_rate),
                ("rate_limit_rate", behavior.rate_limit_rate),
            ];
            for (field, rate) in rates {
                if !(0.0..=1.0).contains(&rate) {
                    return Err(format!("{name}.{field}: {rate} is not within [0, 1]"));
                }
            }
            let total: f64 = rates.iter().map(|(_, rate)| rate).sum();
            if total > 1.0 + 1e-9 {
                return Err(format!(
                    "{name}: miss_rate + error_rate + rate_limit_rate is {total}, more than 1"
                ));
            }
        }
        Ok(())
    }

    /// What `provider` does with a request about `person_key`, without the latency.
    fn draw(&self, provider: &str, person_key: &str) -> Plan {
        let Some(behavior) = self.providers.get(provider) else {
            return Plan::Answer;
        };
        let roll = unit_hash(self.seed, provider, person_key);
        let mut bound = behavior.rate_limit_rate;
        if roll < bound {
            return Plan::RateLimit {
                retry_after_seconds: behavior.retry_after_seconds,
            };
        }
        bound += behavior.error_rate;
        if roll < bound {
            return Plan::Fail;
        }
        bound += behavior.miss_rate;
        if roll < bound {
            return Plan::Miss;
        }
        Plan::Answer
    }
}

/// Reads a [`SimulatorConfig`] from a JSON file. Errors (as text naming the file): unreadable,
/// not a configuration, or invalid.
pub fn load_config(path: impl AsRef<Path>) -> Result<SimulatorConfig, String> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read simulator configuration {}: {e}",
            path.display()
        )
    })?;
    SimulatorConfig::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// What the configuration makes a provider do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Answer from the fixture.
    Answer,
    /// Answer the provider's no match.
    Miss,
    /// Answer a 500.
    Fail,
    /// Answer the provider's rate-limit error.
    RateLimit { retry_after_seconds: Option<u64> },
}

/// A number in `[0, 1)` from FNV-1a over the seed, provider and key, mixed by SplitMix64's
/// finalizer: stable across runs, platforms and Rust versions.
fn unit_hash(seed: u64, provider: &str, key: &str) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = seed
        .to_le_bytes()
        .into_iter()
        .chain(provider.bytes())
        .chain([0xff])
        .chain(key.bytes());
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// The person a request asks about, as the key of the configured draws: the LinkedIn profile
/// when given, else the lower-cased name and company.
fn person_key(
    profile: Option<&str>,
    names: Option<&(String, String)>,
    company: Option<&str>,
) -> String {
    if let Some(key) = profile.and_then(linkedin_profile) {
        return key;
    }
    let (first, last) = names.cloned().unwrap_or_default();
    let company = company
        .map(|c| bare_domain(c).unwrap_or_else(|| text_key(c)))
        .unwrap_or_default();
    format!("{first} {last} @ {company}")
}

// ---------------------------------------------------------------------------------------------
// Request counters

/// The requests the simulator received, per provider name (all of [`PROVIDERS`], zero when
/// never asked), as `GET /stats` answers them:
///
/// ```json
/// { "hunter":     { "requests": 12, "statuses": { "200": 11, "500": 1 } },
///   "fullenrich": { "requests": 9, "submits": 3, "polls": 6, "statuses": { "200": 6, "400": 3 } },
///   ... }
/// ```
pub type RequestStats = BTreeMap<String, ProviderStats>;

/// The requests one simulated provider received.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderStats {
    /// Every HTTP request under the provider's path, counted on arrival (refused ones too).
    pub requests: u64,
    /// Jobs submitted (`POST`), for the asynchronous providers (FullEnrich, Dropcontact) only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submits: Option<u64>,
    /// Results fetched (`GET` of a job), for the asynchronous providers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polls: Option<u64>,
    /// Answered requests by HTTP status (`"200"`, `"429"`...), counted when answered.
    #[serde(default)]
    pub statuses: BTreeMap<String, u64>,
}

/// Whether the provider answers through jobs that are submitted, then polled.
fn is_asynchronous(provider: &str) -> bool {
    provider == fullenrich_api::NAME || provider == dropcontact_api::NAME
}

/// Every provider at zero.
fn empty_stats() -> RequestStats {
    PROVIDERS
        .iter()
        .map(|&name| {
            let asynchronous = is_asynchronous(name).then_some(0);
            let stats = ProviderStats {
                submits: asynchronous,
                polls: asynchronous,
                ..ProviderStats::default()
            };
            (name.to_string(), stats)
        })
        .collect()
}

/// The provider a request path is for (`/hunter/...`: `hunter`).
fn provider_of(path: &str) -> Option<&'static str> {
    let first = path.trim_start_matches('/').split('/').next()?;
    PROVIDERS.iter().copied().find(|name| *name == first)
}

impl Sim {
    fn lock_stats(&self) -> std::sync::MutexGuard<'_, RequestStats> {
        self.stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Counts each request to a provider on arrival, and its status once answered.
async fn count_requests(State(sim): State<Shared>, request: Request, next: Next) -> Response {
    let Some(provider) = provider_of(request.uri().path()) else {
        return next.run(request).await;
    };
    let method = request.method().clone();
    {
        let mut all = sim.lock_stats();
        let stats = all.entry(provider.to_string()).or_default();
        stats.requests += 1;
        if is_asynchronous(provider) {
            let counter = if method == Method::POST {
                &mut stats.submits
            } else {
                &mut stats.polls
            };
            *counter.get_or_insert(0) += 1;
        }
    }
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    *sim.lock_stats()
        .entry(provider.to_string())
        .or_default()
        .statuses
        .entry(status)
        .or_default() += 1;
    response
}

/// `GET /stats`: the requests received so far.
async fn get_stats(State(sim): State<Shared>) -> Response {
    axum::Json(sim.lock_stats().clone()).into_response()
}

/// `POST /stats/reset`: the requests received so far; the counters start again from zero.
async fn reset_stats(State(sim): State<Shared>) -> Response {
    let before = std::mem::replace(&mut *sim.lock_stats(), empty_stats());
    axum::Json(before).into_response()
}

// ---------------------------------------------------------------------------------------------
// Router and state

/// The router's state: the fixture, the configuration and the asynchronous providers' jobs.
struct Sim {
    people: Vec<KnownPerson>,
    config: SimulatorConfig,
    jobs: Mutex<HashMap<String, Job>>,
    stats: Mutex<RequestStats>,
}

/// A submitted FullEnrich enrichment or Dropcontact request.
struct Job {
    provider: &'static str,
    polls: u32,
    status: StatusCode,
    body: Value,
}

/// What a poll of a job finds.
enum JobState {
    /// No such job for this provider.
    Unknown,
    /// Still in progress (the first poll).
    Pending,
    /// Done: the answer's status and body.
    Done(StatusCode, Value),
}

type Shared = Arc<Sim>;

impl Sim {
    /// Waits the provider's configured latency.
    async fn wait(&self, provider: &str) {
        let latency = self
            .config
            .providers
            .get(provider)
            .map_or(0, |b| b.latency_ms);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
    }

    /// Waits the provider's latency, then draws what it does for `person_key`.
    async fn plan(&self, provider: &str, person_key: &str) -> Plan {
        self.wait(provider).await;
        let plan = self.config.draw(provider, person_key);
        if plan != Plan::Answer {
            tracing::debug!(provider, person_key, ?plan, "simulated behaviour");
        }
        plan
    }

    /// Stores a job that will answer `status` and `body` once done.
    fn add_job(&self, provider: &'static str, id: &str, status: StatusCode, body: Value) {
        let job = Job {
            provider,
            polls: 0,
            status,
            body,
        };
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(id.to_string(), job);
    }

    /// Polls a job: the first poll finds it in progress, the next ones done.
    fn poll_job(&self, provider: &str, id: &str) -> JobState {
        let mut jobs = self
            .jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(job) = jobs.get_mut(id).filter(|job| job.provider == provider) else {
            return JobState::Unknown;
        };
        job.polls += 1;
        if job.polls == 1 {
            JobState::Pending
        } else {
            JobState::Done(job.status, job.body.clone())
        }
    }
}

/// The simulator's routes (see the module docs) over `people`, each provider answering from the
/// fixture only (no simulator-wide behaviour).
pub fn router(people: Vec<KnownPerson>) -> Router {
    router_with(people, SimulatorConfig::default())
}

/// The simulator's routes over `people`, with the simulator-wide behaviour of `config` (see
/// [`SimulatorConfig`]). Each router keeps its own asynchronous jobs and request counters.
pub fn router_with(people: Vec<KnownPerson>, config: SimulatorConfig) -> Router {
    let sim = Arc::new(Sim {
        people,
        config,
        jobs: Mutex::new(HashMap::new()),
        stats: Mutex::new(empty_stats()),
    });
    Router::new()
        .route("/hunter/v2/email-finder", get(hunter_email_finder))
        .route("/pdl/v5/person/enrich", get(pdl_person_enrich))
        .route("/prospeo/enrich-person", post(prospeo::enrich_person))
        .route(
            "/fullenrich/api/v2/contact/enrich/bulk",
            post(fullenrich::start),
        )
        .route(
            "/fullenrich/api/v2/contact/enrich/bulk/{enrichment_id}",
            get(fullenrich::result),
        )
        .route("/dropcontact/v1/enrich/all", post(dropcontact::send))
        .route(
            "/dropcontact/v1/enrich/all/{request_id}",
            get(dropcontact::fetch),
        )
        .route("/stats", get(get_stats))
        .route("/stats/reset", post(reset_stats))
        .layer(middleware::from_fn_with_state(sim.clone(), count_requests))
        .with_state(sim)
}

type Params = HashMap<String, String>;

fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// The first and last name of a request: `first_name` and `last_name`, or `full_name` split at
/// its first space.
fn names(params: &Params) -> Option<(String, String)> {
    names_of(
        param(params, "first_name"),
        param(params, "last_name"),
        param(params, "full_name").or(param(params, "name")),
    )
}

/// The first and last name from separate names, or from a full name split at its first space.
fn names_of(
    first: Option<&str>,
    last: Option<&str>,
    full: Option<&str>,
) -> Option<(String, String)> {
    fn non_blank(value: Option<&str>) -> Option<&str> {
        value.map(str::trim).filter(|v| !v.is_empty())
    }
    match (non_blank(first), non_blank(last)) {
        (Some(first), Some(last)) => Some((text_key(first), text_key(last))),
        _ => {
            let full = text_key(non_blank(full)?);
            let (first, last) = full.split_once(' ')?;
            Some((first.to_string(), last.to_string()))
        }
    }
}

fn same_name(person: &KnownPerson, names: &(String, String)) -> bool {
    text_key(&person.first_name) == names.0 && text_key(&person.last_name) == names.1
}

fn same_domain(person: &KnownPerson, domain: &str) -> bool {
    person
        .company_domain
        .as_deref()
        .and_then(bare_domain)
        .as_deref()
        == bare_domain(domain).as_deref()
}

fn same_company_name(person: &KnownPerson, company: &str) -> bool {
    person
        .company_name
        .as_deref()
        .is_some_and(|name| text_key(name) == text_key(company))
}

fn same_profile(person: &KnownPerson, url: &str) -> bool {
    let wanted = linkedin_profile(url);
    wanted.is_some() && person.linkedin_url.as_deref().and_then(linkedin_profile) == wanted
}

/// What a request identifies a person by.
#[derive(Debug, Default)]
struct Identity<'a> {
    profile: Option<&'a str>,
    names: Option<(String, String)>,
    domain: Option<&'a str>,
    company: Option<&'a str>,
}

impl Identity<'_> {
    /// Whether it names someone: a profile, or a name with a company (domain or name).
    fn is_searchable(&self) -> bool {
        self.profile.is_some()
            || (self.names.is_some() && (self.domain.is_some() || self.company.is_some()))
    }

    /// The key of the configured draws.
    fn key(&self) -> String {
        person_key(
            self.profile,
            self.names.as_ref(),
            self.domain.or(self.company),
        )
    }

    /// The first of `people` that `known` keeps and that this identity names: by profile
    /// first, then by name with the company's domain or name.
    fn find<'p>(
        &self,
        people: &'p [KnownPerson],
        known: impl Fn(&KnownPerson) -> bool,
    ) -> Option<&'p KnownPerson> {
        let candidates = || people.iter().filter(|p| known(p));
        let by_profile = self
            .profile
            .and_then(|url| candidates().find(|p| same_profile(p, url)));
        by_profile.or_else(|| {
            let names = self.names.as_ref()?;
            candidates().find(|p| {
                same_name(p, names)
                    && (self.domain.is_some_and(|d| same_domain(p, d))
                        || self.company.is_some_and(|c| same_company_name(p, c)))
            })
        })
    }
}

/// A non-blank string field of a JSON object.
fn json_str<'a>(object: &'a Value, name: &str) -> Option<&'a str> {
    object
        .get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// A non-blank header value.
fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

async fn apply_delay(behavior: &Behavior) {
    if behavior.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(behavior.delay_ms)).await;
    }
}

fn with_retry_after(response: Response, behavior: &Behavior) -> Response {
    with_retry_after_seconds(response, behavior.retry_after_seconds)
}

fn with_retry_after_seconds(mut response: Response, seconds: Option<u64>) -> Response {
    if let Some(seconds) = seconds {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn status_of(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

// ---------------------------------------------------------------------------------------------
// Hunter

fn hunter_error(status: StatusCode, id: &str, details: &str) -> Response {
    let body = json!({ "errors": [ { "id": id, "code": status.as_u16(), "details": details } ] });
    (status, axum::Json(body)).into_response()
}

/// Hunter takes the key in the `X-API-KEY` header or the `api_key` query parameter
/// (<https://hunter.io/api-documentation/v2#authentication>); a blank one is no key, a 401.
async fn hunter_email_finder(
    State(sim): State<Shared>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Response {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .or_else(|| param(&params, "api_key"));
    if key.is_none() {
        return hunter_error(
            StatusCode::UNAUTHORIZED,
            "authentication_failed",
            "No user found for the API key supplied",
        );
    }
    let domain = param(&params, "domain");
    let company = param(&params, "company");
    let handle = param(&params, "linkedin_handle");
    let names = names(&params);
    if handle.is_none() && domain.is_none() && company.is_none() {
        return hunter_error(
            StatusCode::BAD_REQUEST,
            "wrong_params",
            "You are missing the domain parameter",
        );
    }
    if handle.is_none() && names.is_none() {
        return hunter_error(
            StatusCode::BAD_REQUEST,
            "wrong_params",
            "You are missing the first_name or last_name parameter",
        );
    }
    let profile = handle.map(|h| format!("linkedin.com/in/{h}"));
    let key = person_key(profile.as_deref(), names.as_ref(), domain.or(company));
    let plan = sim.plan(hunter_api::NAME, &key).await;
    match plan {
        // Hunter's rate limit is its 403 (its 429 is the usage limit).
        Plan::RateLimit {
            retry_after_seconds,
        } => {
            return with_retry_after_seconds(
                hunter_error(
                    StatusCode::FORBIDDEN,
                    "rate_limit",
                    "You have reached the rate limit",
                ),
                retry_after_seconds,
            );
        }
        Plan::Fail => {
            return hunter_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "Something went wrong on Hunter's end",
            );
        }
        Plan::Miss | Plan::Answer => {}
    }
    let found = sim
        .people
        .iter()
        .filter(|_| plan == Plan::Answer)
        .find(|person| {
            let by_handle = handle.is_some_and(|h| {
                person
                    .linkedin_url
                    .as_deref()
                    .and_then(linkedin_profile)
                    .is_some_and(|key| key == format!("linkedin.com/in/{}", h.to_lowercase()))
            });
            let by_name = names.as_ref().is_some_and(|n| same_name(person, n))
                && (domain.is_some_and(|d| same_domain(person, d))
                    || company.is_some_and(|c| same_company_name(person, c)));
            person.hunter.is_some() && (by_handle || by_name)
        });

    let meta = json!({ "params": {
        "first_name": param(&params, "first_name"), "last_name": param(&params, "last_name"),
        "full_name": param(&params, "full_name"), "domain": domain, "company": company,
        "max_duration": param(&params, "max_duration"),
    }});
    let Some((person, record)) = found.and_then(|p| p.hunter.as_ref().map(|r| (p, r))) else {
        tracing::debug!(?names, ?domain, "simulated hunter: no match");
        let (first, last) = names.unwrap_or_default();
        let data = json!({
            "first_name": first, "last_name": last, "email": null, "score": null,
            "domain": domain.and_then(bare_domain), "accept_all": null, "position": null,
            "twitter": null, "linkedin_url": null, "phone_number": null, "company": company,
            "sources": [], "verification": { "date": null, "status": null },
        });
        return (
            StatusCode::OK,
            axum::Json(json!({ "data": data, "meta": meta })),
        )
            .into_response();
    };
    apply_delay(&record.simulate).await;
    if let Some(code) = record.simulate.fail_status {
        let status = status_of(code);
        let (id, details) = match code {
            403 => ("rate_limit", "You have reached the rate limit"),
            429 => ("too_many_requests", "You have reached your usage limit"),
            _ => ("server_error", "Something went wrong on Hunter's end"),
        };
        return with_retry_after(hunter_error(status, id, details), &record.simulate);
    }
    tracing::debug!(email = %record.email, "simulated hunter: found");
    let data = json!({
        "first_name": person.first_name, "last_name": person.last_name,
        "email": record.email, "score": record.score,
        "domain": person.company_domain.as_deref().and_then(bare_domain),
        "accept_all": record.verification_status.as_deref() == Some("accept_all"),
        "position": record.position, "twitter": null, "linkedin_url": person.linkedin_url,
        "phone_number": null, "company": person.company_name,
        "sources": [ {
            "domain": person.company_domain.as_deref().and_then(bare_domain),
            "uri": format!("https://{}/team", person.company_domain.as_deref().and_then(bare_domain).unwrap_or_default()),
            "extracted_on": "2024-01-10", "last_seen_on": "2024-06-01", "still_on_page": true,
        } ],
        "verification": { "date": "2024-06-01", "status": record.verification_status },
    });
    (
        StatusCode::OK,
        axum::Json(json!({ "data": data, "meta": meta })),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// People Data Labs

fn pdl_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({ "status": status.as_u16(), "error": { "type": kind, "message": message } });
    (status, axum::Json(body)).into_response()
}

fn pdl_not_found() -> Response {
    pdl_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "No records were found matching your request",
    )
}

/// PDL's `data` object for a record (fields without data are `null`, as PDL sends them).
fn pdl_data(person: &KnownPerson, record: &PdlRecord) -> Value {
    let mut emails: Vec<Value> = Vec::new();
    if let Some(work) = &record.work_email {
        emails.push(json!({ "address": work, "type": "current_professional" }));
    }
    for personal in &record.personal_emails {
        emails.push(json!({ "address": personal, "type": "personal" }));
    }
    let list = |values: &Vec<String>| {
        if values.is_empty() {
            Value::Null
        } else {
            json!(values)
        }
    };
    let first = text_key(&person.first_name);
    let last = text_key(&person.last_name);
    json!({
        "id": format!("sim_{first}_{last}").replace(' ', "_"),
        "full_name": format!("{first} {last}"),
        "first_name": first,
        "last_name": last,
        "linkedin_url": person.linkedin_url.as_deref().and_then(linkedin_profile),
        "job_company_name": person.company_name.as_deref().map(text_key),
        "job_company_website": person.company_domain.as_deref().and_then(bare_domain),
        "work_email": record.work_email,
        "personal_emails": list(&record.personal_emails),
        "emails": if emails.is_empty() { Value::Null } else { json!(emails) },
        "mobile_phone": record.mobile_phone,
        "phone_numbers": list(&record.phone_numbers),
    })
}

/// Whether `data` satisfies PDL's `required` expression: field names joined by `AND` / `OR`
/// (`AND` binds tighter); a field counts when it is neither `null` nor empty.
fn meets_required(data: &Value, required: Option<&str>) -> bool {
    let Some(required) = required else {
        return true;
    };
    let present = |name: &str| match data.get(name.trim()) {
        None | Some(Value::Null) => false,
        Some(Value::Array(items)) => !items.is_empty(),
        Some(Value::String(text)) => !text.is_empty(),
        Some(_) => true,
    };
    required
        .split(" OR ")
        .any(|all| all.split(" AND ").all(present))
}

async fn pdl_person_enrich(
    State(sim): State<Shared>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Response {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .or_else(|| param(&params, "api_key"));
    if key.is_none() {
        return pdl_error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "Request contained a missing or invalid key",
        );
    }
    let profile = param(&params, "profile");
    let names = names(&params);
    let company = param(&params, "company");
    if profile.is_none() && (names.is_none() || company.is_none()) {
        return pdl_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "Request needs a profile, or a name with a company",
        );
    }
    let by_profile = |p: &&KnownPerson| profile.is_some_and(|url| same_profile(p, url));
    let by_name = |p: &&KnownPerson| {
        names.as_ref().is_some_and(|n| same_name(p, n))
            && company.is_some_and(|c| same_domain(p, c) || same_company_name(p, c))
    };
    let plan = sim
        .plan(pdl_api::NAME, &person_key(profile, names.as_ref(), company))
        .await;
    match plan {
        Plan::RateLimit {
            retry_after_seconds,
        } => {
            return with_retry_after_seconds(
                pdl_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "An error occurred due to requests hitting the API too quick",
                ),
                retry_after_seconds,
            );
        }
        Plan::Fail => {
            return pdl_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "The server encountered an unexpected condition",
            );
        }
        Plan::Miss => return pdl_not_found(),
        Plan::Answer => {}
    }
    let known = sim.people.iter().filter(|p| p.pdl.is_some());
    let found = known
        .clone()
        .find(by_profile)
        .or_else(|| known.clone().find(by_name));
    let Some((person, record)) = found.and_then(|p| p.pdl.as_ref().map(|r| (p, r))) else {
        tracing::debug!(?profile, ?names, ?company, "simulated pdl: no match");
        return pdl_not_found();
    };
    apply_delay(&record.simulate).await;
    if let Some(code) = record.simulate.fail_status {
        let status = status_of(code);
        let (kind, message) = match code {
            401 => (
                "authentication_error",
                "Request contained a missing or invalid key",
            ),
            402 => (
                "payment_required",
                "You have hit your account maximum (all matches used)",
            ),
            429 => (
                "rate_limit_error",
                "An error occurred due to requests hitting the API too quick",
            ),
            400..=499 => (
                "invalid_request_error",
                "Request contained either missing or invalid parameters",
            ),
            _ => (
                "api_error",
                "The server encountered an unexpected condition",
            ),
        };
        return with_retry_after(pdl_error(status, kind, message), &record.simulate);
    }
    let data = pdl_data(person, record);
    if !meets_required(&data, param(&params, "required")) {
        tracing::debug!(person = %data["full_name"], "simulated pdl: record lacks the required fields");
        return pdl_not_found();
    }
    let body = json!({ "status": 200, "likelihood": record.likelihood, "data": data });
    (StatusCode::OK, axum::Json(body)).into_response()
}

#[cfg(test)]
mod test_support {
    use std::net::SocketAddr;

    use enrichment::providers::{PersonQuery, ProviderAnswer};

    use super::{SimulatorConfig, load_fixture, router_with};

    pub(super) const FIXTURE: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/known-people.json");

    /// A simulator over the fixture, without simulator-wide behaviour, on a loopback port.
    pub(super) async fn start() -> SocketAddr {
        start_with(SimulatorConfig::default()).await
    }

    /// A simulator over the fixture with `config`, on a loopback port.
    pub(super) async fn start_with(config: SimulatorConfig) -> SocketAddr {
        let people = load_fixture(FIXTURE).expect("fixture loads");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router_with(people, config)).await });
        address
    }

    pub(super) fn query(
        first: &str,
        last: &str,
        company: Option<&str>,
        domain: Option<&str>,
        linkedin: Option<&str>,
    ) -> PersonQuery {
        PersonQuery {
            first_name: Some(first.into()),
            last_name: Some(last.into()),
            company_name: company.map(str::to_string),
            company_domain: domain.map(str::to_string),
            linkedin_url: linkedin.map(str::to_string),
        }
    }

    pub(super) fn values(answer: &ProviderAnswer) -> Vec<&str> {
        match answer {
            ProviderAnswer::Found(found) => found.iter().map(|c| c.value.as_str()).collect(),
            ProviderAnswer::NoMatch => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use enrichment::domain::Field;
    use enrichment::providers::hunter::HunterProvider;
    use enrichment::providers::normalize::{normalize_email, normalize_phone};
    use enrichment::providers::pdl::PdlProvider;
    use enrichment::providers::{PersonQuery, Provider, ProviderAnswer, ProviderError, RawContact};

    use super::*;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/known-people.json");
    const WALKTHROUGH_CSV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/people.csv");

    async fn start() -> SocketAddr {
        let people = load_fixture(FIXTURE).expect("fixture loads");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(people)).await });
        address
    }

    fn hunter(address: SocketAddr, key: &str) -> HunterProvider {
        HunterProvider::new(
            reqwest::Client::new(),
            format!("http://{address}/hunter"),
            key,
        )
    }

    fn pdl(address: SocketAddr, key: &str) -> PdlProvider {
        PdlProvider::new(reqwest::Client::new(), format!("http://{address}/pdl"), key)
    }

    fn query(
        first: &str,
        last: &str,
        company: Option<&str>,
        domain: Option<&str>,
        linkedin: Option<&str>,
    ) -> PersonQuery {
        PersonQuery {
            first_name: Some(first.into()),
            last_name: Some(last.into()),
            company_name: company.map(str::to_string),
            company_domain: domain.map(str::to_string),
            linkedin_url: linkedin.map(str::to_string),
        }
    }

    fn values(answer: &ProviderAnswer) -> Vec<&str> {
        match answer {
            ProviderAnswer::Found(found) => found.iter().map(|c| c.value.as_str()).collect(),
            ProviderAnswer::NoMatch => Vec::new(),
        }
    }

    #[tokio::test]
    async fn hunter_finds_a_known_person_by_name_and_domain() {
        let address = start().await;
        let person = query(
            "ada",
            "QUILL",
            None,
            Some("https://www.northwind.example/"),
            None,
        );
        let answer = hunter(address, "local")
            .find(Field::Emails, &person)
            .await
            .unwrap();
        assert_eq!(
            answer,
            ProviderAnswer::Found(vec![RawContact {
                value: "ada.quill@northwind.example".into(),
                kind: Some("work".into()),
                status: Some("valid".into()),
            }])
        );
    }

    #[tokio::test]
    async fn pdl_finds_a_known_person_by_linkedin_in_another_writing() {
        let address = start().await;
        let person = PersonQuery {
            linkedin_url: Some("http://LinkedIn.com/in/Bruno-Okafor-Demo".into()),
            ..PersonQuery::default()
        };
        let provider = pdl(address, "local");
        let phones = provider.find(Field::Phones, &person).await.unwrap();
        assert_eq!(
            values(&phones),
            vec!["+44 (0)20 7946 0321", "020 7946 0321"]
        );
        let emails = provider.find(Field::Emails, &person).await.unwrap();
        assert_eq!(
            values(&emails),
            vec![
                "bruno.okafor@tidewater.test",
                "bruno.okafor@tidewater.test",
                "bruno.okafor.home@mailbox.example",
                "bruno.okafor.home@mailbox.example",
            ]
        );
    }

    #[tokio::test]
    async fn pdl_finds_a_known_person_by_name_and_domain_or_company_name() {
        let address = start().await;
        let provider = pdl(address, "local");
        let by_domain = query("Greta", "Solberg", None, Some("fjordline.example"), None);
        let answer = provider.find(Field::Phones, &by_domain).await.unwrap();
        assert_eq!(values(&answer), vec!["+1-646-555-0199"]);
        let by_name = query("greta", "solberg", Some("Fjordline  Robotics"), None, None);
        assert_eq!(
            provider.find(Field::Phones, &by_name).await.unwrap(),
            answer
        );
    }

    #[tokio::test]
    async fn unknown_people_are_each_providers_documented_miss() {
        let address = start().await;
        let nobody = query(
            "Nora",
            "Penhallow",
            Some("Velvet Anchor Studio"),
            Some("velvetanchor.example"),
            Some("https://www.linkedin.com/in/nora-penhallow-demo"),
        );
        assert_eq!(
            hunter(address, "local").find(Field::Emails, &nobody).await,
            Ok(ProviderAnswer::NoMatch)
        );
        assert_eq!(
            pdl(address, "local").find(Field::Emails, &nobody).await,
            Ok(ProviderAnswer::NoMatch)
        );
        // Right name, wrong company: not the same person.
        let namesake = query("Ada", "Quill", None, Some("other.example"), None);
        assert_eq!(
            hunter(address, "local")
                .find(Field::Emails, &namesake)
                .await,
            Ok(ProviderAnswer::NoMatch)
        );
    }

    #[tokio::test]
    async fn each_provider_finds_only_whom_it_knows() {
        let address = start().await;
        let hunter_only = query(
            "Chiara",
            "Vasquez-Lind",
            None,
            Some("bellwether-analytics.example"),
            None,
        );
        assert_eq!(
            values(
                &hunter(address, "k")
                    .find(Field::Emails, &hunter_only)
                    .await
                    .unwrap()
            ),
            vec!["chiara@bellwether-analytics.example"]
        );
        assert_eq!(
            pdl(address, "k").find(Field::Emails, &hunter_only).await,
            Ok(ProviderAnswer::NoMatch)
        );

        let pdl_only = query("Bruno", "Okafor", None, Some("tidewater.test"), None);
        assert_eq!(
            hunter(address, "k").find(Field::Emails, &pdl_only).await,
            Ok(ProviderAnswer::NoMatch)
        );

        // PDL knows Katya but has no phone for her: `required` makes it a 404.
        let no_phone = query("Katya", "Orlov", None, Some("gridline.example"), None);
        assert_eq!(
            pdl(address, "k").find(Field::Phones, &no_phone).await,
            Ok(ProviderAnswer::NoMatch)
        );
        assert!(matches!(
            pdl(address, "k").find(Field::Emails, &no_phone).await,
            Ok(ProviderAnswer::Found(_))
        ));
    }

    #[tokio::test]
    async fn an_empty_api_key_is_refused_as_the_providers_do() {
        let address = start().await;
        let person = query("Ada", "Quill", None, Some("northwind.example"), None);
        assert_eq!(
            hunter(address, "").find(Field::Emails, &person).await,
            Err(ProviderError::Unauthorized)
        );
        assert_eq!(
            pdl(address, "").find(Field::Emails, &person).await,
            Err(ProviderError::Unauthorized)
        );
    }

    #[tokio::test]
    async fn hunter_takes_the_key_in_its_header_or_in_the_query() {
        let address = start().await;
        let http = reqwest::Client::new();
        let url = format!(
            "http://{address}/hunter/v2/email-finder?domain=northwind.example&first_name=Ada&last_name=Quill"
        );
        let status = |response: reqwest::Response| response.status().as_u16();
        let by_header = http.get(&url).header("X-API-KEY", "k").send().await;
        assert_eq!(by_header.map(status).unwrap(), 200);
        let by_query = http.get(format!("{url}&api_key=k")).send().await;
        assert_eq!(by_query.map(status).unwrap(), 200);
        let without = http.get(&url).send().await.unwrap();
        assert_eq!(without.status(), 401);
        let body: Value = without.json().await.unwrap();
        assert_eq!(body["errors"][0]["id"], "authentication_failed");
        let blank = http.get(&url).header("X-API-KEY", " ").send().await;
        assert_eq!(blank.map(status).unwrap(), 401);
    }

    #[tokio::test]
    async fn configured_failures_come_back_as_provider_errors() {
        let address = start().await;
        let limited = query("Hiro", "Tanabe", None, Some("kestrel-dynamics.test"), None);
        assert_eq!(
            hunter(address, "k").find(Field::Emails, &limited).await,
            Err(ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(30))
            })
        );
        let broken = query("Imani", "Cole", None, Some("saltmarsh.example"), None);
        assert_eq!(
            pdl(address, "k").find(Field::Phones, &broken).await,
            Err(ProviderError::Status(503))
        );
    }

    #[tokio::test]
    async fn bad_requests_get_the_providers_400() {
        let address = start().await;
        let http = reqwest::Client::new();
        let response = http
            .get(format!(
                "http://{address}/hunter/v2/email-finder?first_name=Ada&last_name=Quill"
            ))
            .header("X-API-KEY", "k")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errors"][0]["id"], "wrong_params");
        let response = http
            .get(format!(
                "http://{address}/pdl/v5/person/enrich?first_name=Ada"
            ))
            .header("X-Api-Key", "k")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }

    #[tokio::test]
    async fn the_configured_cascade_runs_against_the_simulator() {
        use enrichment::providers::cascade::{Cascade, CascadeOutcome};

        let address = start().await;
        let vars: HashMap<&str, String> = HashMap::from([
            ("HUNTER_API_KEY", "local".to_string()),
            ("PDL_API_KEY", "local".to_string()),
            ("HUNTER_BASE_URL", format!("http://{address}/hunter")),
            ("PDL_BASE_URL", format!("http://{address}/pdl")),
            ("PROVIDER_TIMEOUT_SECONDS", "5".to_string()),
        ]);
        let cascade =
            Cascade::from_vars(reqwest::Client::new(), |name| vars.get(name).cloned()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);

        // Hunter is rate limited for Hiro: PDL answers.
        let hiro = query("Hiro", "Tanabe", None, Some("kestrel-dynamics.test"), None);
        match cascade.run(Field::Emails, &hiro, deadline).await {
            CascadeOutcome::Found { provider, contacts } => {
                assert_eq!(provider, "pdl");
                let values: Vec<&str> = contacts.iter().map(|c| c.value.as_str()).collect();
                assert_eq!(values, vec!["hiro.tanabe@kestrel-dynamics.test"]);
            }
            other => panic!("expected Found, got {other:?}"),
        }

        // Bruno's UK numbers, written two ways, become one E.164 number (the national writing
        // means nothing under the default region US and is dropped).
        let bruno = PersonQuery {
            linkedin_url: Some("https://www.linkedin.com/in/bruno-okafor-demo".into()),
            ..PersonQuery::default()
        };
        match cascade.run(Field::Phones, &bruno, deadline).await {
            CascadeOutcome::Found { contacts, .. } => {
                assert_eq!(contacts.len(), 1);
                assert_eq!(contacts[0].value, "+442079460321");
                assert_eq!(contacts[0].kind.as_deref(), Some("mobile"));
            }
            other => panic!("expected Found, got {other:?}"),
        }

        // PDL, the only phone provider, fails for Imani.
        let imani = query("Imani", "Cole", None, Some("saltmarsh.example"), None);
        let failed = cascade.run(Field::Phones, &imani, deadline).await;
        assert_eq!(
            failed.error_message().as_deref(),
            Some("All providers failed: pdl: HTTP 503")
        );

        // Nobody knows Otis.
        let otis = query(
            "Otis",
            "Brandvold",
            Some("Pinecrest Logistics"),
            Some("pinecrest.test"),
            None,
        );
        assert_eq!(
            cascade.run(Field::Emails, &otis, deadline).await,
            CascadeOutcome::NoMatch
        );
    }

    #[test]
    fn every_fixture_value_is_a_valid_contact() {
        let people = load_fixture(FIXTURE).unwrap();
        assert!(people.len() >= 10, "about a dozen people");
        let region = phonenumber::country::Id::US;
        for person in &people {
            let name = format!("{} {}", person.first_name, person.last_name);
            let mut emails: Vec<&String> = Vec::new();
            let mut phones: Vec<&String> = Vec::new();
            if let Some(record) = &person.hunter {
                emails.push(&record.email);
            }
            if let Some(record) = &person.pdl {
                emails.extend(record.work_email.iter().chain(&record.personal_emails));
                phones.extend(record.mobile_phone.iter().chain(&record.phone_numbers));
            }
            if let Some(record) = &person.prospeo {
                emails.extend(&record.email);
                phones.extend(&record.mobile);
            }
            if let Some(record) = &person.fullenrich {
                emails.extend(record.work_emails.iter().chain(&record.personal_emails));
                phones.extend(&record.phones);
            }
            if let Some(record) = &person.dropcontact {
                emails.extend(record.emails.iter().map(|e| &e.email));
                phones.extend(&record.phone);
            }
            for email in emails {
                assert!(normalize_email(email).is_some(), "{name}: {email:?}");
            }
            for phone in phones {
                // National UK writings are kept on purpose: PDL writes numbers as it found them.
                let region = if phone.starts_with("020") {
                    phonenumber::country::Id::GB
                } else {
                    region
                };
                assert!(
                    normalize_phone(phone, region).is_some(),
                    "{name}: {phone:?}"
                );
            }
        }
        let hunter_only = people
            .iter()
            .filter(|p| p.hunter.is_some() && p.pdl.is_none())
            .count();
        let pdl_only = people
            .iter()
            .filter(|p| p.pdl.is_some() && p.hunter.is_none())
            .count();
        assert!(
            hunter_only >= 2 && pdl_only >= 2,
            "some people only one provider knows"
        );
    }

    #[test]
    fn the_walkthrough_csv_mixes_known_and_unknown_people() {
        let people = load_fixture(FIXTURE).unwrap();
        let text = std::fs::read_to_string(WALKTHROUGH_CSV).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("first_name,last_name,company_name,company_domain,linkedin_url")
        );
        let (mut known, mut unknown) = (0, 0);
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let cells: Vec<&str> = line.split(',').collect();
            assert_eq!(cells.len(), 5, "{line}");
            let names = (text_key(cells[0]), text_key(cells[1]));
            match people.iter().find(|p| same_name(p, &names)) {
                Some(person) => {
                    known += 1;
                    assert!(
                        same_domain(person, cells[3]) || same_company_name(person, cells[2]),
                        "{line}"
                    );
                    if !cells[4].is_empty() {
                        assert!(same_profile(person, cells[4]), "{line}");
                    }
                }
                None => unknown += 1,
            }
        }
        assert_eq!((known, unknown), (6, 2));
    }

    #[test]
    fn load_fixture_reports_what_is_wrong() {
        let missing = load_fixture("/nonexistent/known-people.json").unwrap_err();
        assert!(
            missing.contains("/nonexistent/known-people.json"),
            "{missing}"
        );
        let path = std::env::temp_dir().join(format!("known-people-{}.json", std::process::id()));
        std::fs::write(&path, r#"[{"first_name": "Solo", "last_name": "Nobody"}]"#).unwrap();
        let empty = load_fixture(&path).unwrap_err();
        assert!(empty.contains("has no provider record"), "{empty}");
        std::fs::write(
            &path,
            r#"[{"first_name": "Solo", "last_name": "Prospect", "prospeo": {"email": "solo@prospect.example"}}]"#,
        )
        .unwrap();
        assert_eq!(load_fixture(&path).unwrap().len(), 1);
        std::fs::write(&path, r#"{"people": []}"#).unwrap();
        assert!(load_fixture(&path).unwrap_err().contains("not a list"));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn required_expressions_follow_pdls_and_or() {
        let data = json!({"emails": [{"address": "a@b.example"}], "mobile_phone": null, "phone_numbers": []});
        assert!(meets_required(&data, None));
        assert!(meets_required(&data, Some("emails")));
        assert!(!meets_required(
            &data,
            Some("mobile_phone OR phone_numbers")
        ));
        assert!(meets_required(&data, Some("mobile_phone OR emails")));
        assert!(!meets_required(&data, Some("emails AND mobile_phone")));
    }

    #[test]
    fn the_new_providers_each_know_some_fixture_people() {
        let people = load_fixture(FIXTURE).unwrap();
        let count = |known: fn(&KnownPerson) -> bool| people.iter().filter(|p| known(p)).count();
        assert!(count(|p| p.prospeo.is_some()) >= 3);
        assert!(count(|p| p.fullenrich.is_some()) >= 3);
        assert!(count(|p| p.dropcontact.is_some()) >= 3);
        // Otis stays unknown to everyone: the walkthrough's no-match example.
        assert!(!people.iter().any(|p| p.last_name == "Brandvold"));
    }

    fn config(json: &str) -> SimulatorConfig {
        SimulatorConfig::from_json(json).expect("valid configuration")
    }

    fn all_providers(behavior: &str) -> SimulatorConfig {
        let entries: Vec<String> = PROVIDERS
            .iter()
            .map(|name| format!("\"{name}\": {behavior}"))
            .collect();
        config(&format!("{{\"providers\": {{{}}}}}", entries.join(", ")))
    }

    /// Every adapter against a simulator configured with `config`, asking for Ada Quill.
    async fn ask_every_provider(
        config: SimulatorConfig,
    ) -> Vec<(&'static str, Result<ProviderAnswer, ProviderError>)> {
        use enrichment::providers::dropcontact::DropcontactProvider;
        use enrichment::providers::fullenrich::FullEnrichProvider;
        use enrichment::providers::prospeo::ProspeoProvider;

        let address = super::test_support::start_with(config).await;
        let fast = Duration::from_millis(5);
        let base = |name: &str| format!("http://{address}/{name}");
        let http = reqwest::Client::new();
        let providers: Vec<Box<dyn Provider>> = vec![
            Box::new(HunterProvider::new(http.clone(), base("hunter"), "k")),
            Box::new(PdlProvider::new(http.clone(), base("pdl"), "k")),
            Box::new(ProspeoProvider::new(http.clone(), base("prospeo"), "k")),
            Box::new(
                FullEnrichProvider::new(http.clone(), base("fullenrich"), "k")
                    .with_poll_interval(fast),
            ),
            Box::new(
                DropcontactProvider::new(http.clone(), base("dropcontact"), "k")
                    .with_poll_interval(fast),
            ),
        ];
        let ada = query(
            "Ada",
            "Quill",
            Some("Northwind Labs"),
            Some("northwind.example"),
            None,
        );
        let mut answers = Vec::new();
        for provider in providers {
            answers.push((provider.name(), provider.find(Field::Emails, &ada).await));
        }
        answers
    }

    #[tokio::test]
    async fn every_provider_finds_ada_without_configuration() {
        for (name, answer) in ask_every_provider(SimulatorConfig::default()).await {
            assert!(
                matches!(&answer, Ok(ProviderAnswer::Found(found)) if found[0].value == "ada.quill@northwind.example"),
                "{name}: {answer:?}"
            );
        }
    }

    #[tokio::test]
    async fn error_rate_one_makes_every_call_a_server_error() {
        for (name, answer) in ask_every_provider(all_providers(r#"{"error_rate": 1.0}"#)).await {
            assert_eq!(answer, Err(ProviderError::Status(500)), "{name}");
        }
    }

    #[tokio::test]
    async fn miss_rate_one_makes_every_call_the_providers_no_match() {
        for (name, answer) in ask_every_provider(all_providers(r#"{"miss_rate": 1.0}"#)).await {
            assert_eq!(answer, Ok(ProviderAnswer::NoMatch), "{name}");
        }
    }

    #[tokio::test]
    async fn rate_limit_rate_one_uses_each_providers_rate_limit_signal() {
        let answers = ask_every_provider(all_providers(
            r#"{"rate_limit_rate": 1.0, "retry_after_seconds": 17}"#,
        ))
        .await;
        for (name, answer) in answers {
            assert_eq!(
                answer,
                Err(ProviderError::RateLimited {
                    retry_after: Some(Duration::from_secs(17))
                }),
                "{name}"
            );
        }
    }

    /// Hunter's answers to 100 distinct people under `config`: the indexes of the 5xx ones.
    async fn hunter_failures_over_100_people(config: SimulatorConfig) -> Vec<usize> {
        let address = super::test_support::start_with(config).await;
        let provider = hunter(address, "k");
        let mut failed = Vec::new();
        for index in 0..100 {
            let person = query(
                "Person",
                &format!("Number{index}"),
                None,
                Some("crowd.example"),
                None,
            );
            match provider.find(Field::Emails, &person).await {
                Err(ProviderError::Status(500)) => failed.push(index),
                Ok(ProviderAnswer::NoMatch) => {}
                other => panic!("#{index}: {other:?}"),
            }
        }
        failed
    }

    #[tokio::test]
    async fn half_an_error_rate_fails_about_half_of_100_people_reproducibly() {
        let half = || config(r#"{"seed": 1, "providers": {"hunter": {"error_rate": 0.5}}}"#);
        let failed = hunter_failures_over_100_people(half()).await;
        assert!(
            (35..=65).contains(&failed.len()),
            "{} of 100 failed",
            failed.len()
        );
        // The same seed fails the same people; another seed, others.
        assert_eq!(hunter_failures_over_100_people(half()).await, failed);
        let other_seed = config(r#"{"seed": 2, "providers": {"hunter": {"error_rate": 0.5}}}"#);
        assert_ne!(hunter_failures_over_100_people(other_seed).await, failed);
    }

    #[tokio::test]
    async fn rates_partition_the_draw() {
        let mixed = config(
            r#"{"seed": 9, "providers": {"pdl": {"rate_limit_rate": 0.2, "error_rate": 0.3, "miss_rate": 0.5}}}"#,
        );
        let (mut limited, mut failed, mut missed) = (0, 0, 0);
        for index in 0..400 {
            match mixed.draw("pdl", &format!("person {index} @ crowd.example")) {
                Plan::RateLimit { .. } => limited += 1,
                Plan::Fail => failed += 1,
                Plan::Miss => missed += 1,
                Plan::Answer => panic!("the rates add up to 1"),
            }
        }
        assert!((50..=110).contains(&limited), "{limited}");
        assert!((90..=150).contains(&failed), "{failed}");
        assert!((160..=240).contains(&missed), "{missed}");
        // Providers without an entry always answer from the fixture.
        assert_eq!(mixed.draw("hunter", "anyone"), Plan::Answer);
    }

    #[tokio::test]
    async fn latency_delays_every_answer() {
        let slow = config(r#"{"providers": {"pdl": {"latency_ms": 150}}}"#);
        let address = super::test_support::start_with(slow).await;
        let started = std::time::Instant::now();
        let greta = query("Greta", "Solberg", None, Some("fjordline.example"), None);
        assert!(matches!(
            pdl(address, "k").find(Field::Phones, &greta).await,
            Ok(ProviderAnswer::Found(_))
        ));
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    async fn stats_of(http: &reqwest::Client, address: SocketAddr) -> RequestStats {
        let response = http
            .get(format!("http://{address}/stats"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    fn answered(statuses: &[(&str, u64)]) -> BTreeMap<String, u64> {
        statuses
            .iter()
            .map(|(status, count)| (status.to_string(), *count))
            .collect()
    }

    #[tokio::test]
    async fn requests_are_counted_per_provider_until_reset() {
        use enrichment::providers::dropcontact::DropcontactProvider;
        use enrichment::providers::fullenrich::FullEnrichProvider;

        let limited =
            config(r#"{"providers": {"pdl": {"rate_limit_rate": 1.0, "retry_after_seconds": 3}}}"#);
        let address = super::test_support::start_with(limited).await;
        let http = reqwest::Client::new();
        let zero = stats_of(&http, address).await;
        assert_eq!(zero, empty_stats());
        assert_eq!(zero["hunter"].submits, None, "synchronous: no submits");
        assert_eq!(zero["fullenrich"].polls, Some(0));

        let ada = query(
            "Ada",
            "Quill",
            Some("Northwind Labs"),
            Some("northwind.example"),
            None,
        );
        let fast = Duration::from_millis(5);
        let base = |name: &str| format!("http://{address}/{name}");
        assert!(matches!(
            hunter(address, "k").find(Field::Emails, &ada).await,
            Ok(ProviderAnswer::Found(_))
        ));
        assert_eq!(
            hunter(address, "").find(Field::Emails, &ada).await,
            Err(ProviderError::Unauthorized)
        );
        assert!(matches!(
            pdl(address, "k").find(Field::Emails, &ada).await,
            Err(ProviderError::RateLimited { .. })
        ));
        let fullenrich =
            FullEnrichProvider::new(http.clone(), base("fullenrich"), "k").with_poll_interval(fast);
        assert!(matches!(
            fullenrich.find(Field::Emails, &ada).await,
            Ok(ProviderAnswer::Found(_))
        ));
        let dropcontact = DropcontactProvider::new(http.clone(), base("dropcontact"), "k")
            .with_poll_interval(fast);
        assert!(matches!(
            dropcontact.find(Field::Emails, &ada).await,
            Ok(ProviderAnswer::Found(_))
        ));
        // Not a provider: not counted.
        let _ = http.get(format!("http://{address}/nowhere")).send().await;

        let counted = stats_of(&http, address).await;
        let expected = RequestStats::from([
            (
                "hunter".to_string(),
                ProviderStats {
                    requests: 2,
                    statuses: answered(&[("200", 1), ("401", 1)]),
                    ..ProviderStats::default()
                },
            ),
            (
                "pdl".to_string(),
                ProviderStats {
                    requests: 1,
                    statuses: answered(&[("429", 1)]),
                    ..ProviderStats::default()
                },
            ),
            ("prospeo".to_string(), ProviderStats::default()),
            // Submitted, polled while in progress (FullEnrich's 400), polled when finished.
            (
                "fullenrich".to_string(),
                ProviderStats {
                    requests: 3,
                    submits: Some(1),
                    polls: Some(2),
                    statuses: answered(&[("200", 2), ("400", 1)]),
                },
            ),
            (
                "dropcontact".to_string(),
                ProviderStats {
                    requests: 3,
                    submits: Some(1),
                    polls: Some(2),
                    statuses: answered(&[("200", 3)]),
                },
            ),
        ]);
        assert_eq!(counted, expected);
        let wire: Value = http
            .get(format!("http://{address}/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(wire["pdl"], json!({"requests": 1, "statuses": {"429": 1}}));
        assert_eq!(wire["dropcontact"]["polls"], 2);

        let reset = http
            .post(format!("http://{address}/stats/reset"))
            .send()
            .await
            .unwrap();
        assert_eq!(reset.status(), 200);
        assert_eq!(reset.json::<RequestStats>().await.unwrap(), expected);
        assert_eq!(stats_of(&http, address).await, empty_stats());
    }

    #[test]
    fn requests_are_attributed_by_their_first_path_segment() {
        assert_eq!(provider_of("/hunter/v2/email-finder"), Some("hunter"));
        assert_eq!(
            provider_of("/fullenrich/api/v2/contact/enrich/bulk/abc"),
            Some("fullenrich")
        );
        assert_eq!(provider_of("/stats"), None);
        assert_eq!(provider_of("/hunterx/v2"), None);
        assert_eq!(provider_of("/"), None);
    }

    #[test]
    fn unit_hash_is_stable_and_spread() {
        let a = unit_hash(1, "hunter", "ada quill @ northwind.example");
        assert_eq!(a, unit_hash(1, "hunter", "ada quill @ northwind.example"));
        assert_ne!(a, unit_hash(2, "hunter", "ada quill @ northwind.example"));
        assert_ne!(a, unit_hash(1, "pdl", "ada quill @ northwind.example"));
        let draws: Vec<f64> = (0..10_000)
            .map(|i| unit_hash(0, "hunter", &format!("person {i}")))
            .collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let below_half = draws.iter().filter(|d| **d < 0.5).count();
        assert!((4_800..=5_200).contains(&below_half), "{below_half}");
    }

    #[test]
    fn person_keys_ignore_writing_and_prefer_the_profile() {
        let names = ("ada".to_string(), "quill".to_string());
        assert_eq!(
            person_key(None, Some(&names), Some("https://www.Northwind.example/")),
            "ada quill @ northwind.example"
        );
        assert_eq!(
            person_key(
                Some("https://www.linkedin.com/in/ada-quill-nw/"),
                Some(&names),
                None
            ),
            "linkedin.com/in/ada-quill-nw"
        );
    }

    #[test]
    fn configurations_are_checked() {
        let parsed = config(
            r#"{"seed": 3, "providers": {"prospeo": {"latency_ms": 20, "miss_rate": 0.25, "retry_after_seconds": 5}}}"#,
        );
        assert_eq!(parsed.seed, 3);
        assert_eq!(
            parsed.providers["prospeo"],
            ProviderBehavior {
                latency_ms: 20,
                miss_rate: 0.25,
                retry_after_seconds: Some(5),
                ..ProviderBehavior::default()
            }
        );
        let error = |json: &str| SimulatorConfig::from_json(json).unwrap_err();
        assert!(error(r#"{"providers": {"clearbit": {}}}"#).contains("unknown provider"));
        assert!(error(r#"{"providers": {"pdl": {"error_rate": 1.5}}}"#).contains("error_rate"));
        assert!(error(r#"{"providers": {"pdl": {"miss_rate": -0.1}}}"#).contains("miss_rate"));
        assert!(
            error(r#"{"providers": {"pdl": {"miss_rate": 0.6, "error_rate": 0.6}}}"#)
                .contains("more than 1")
        );
        assert!(error(r#"{"providers": {"pdl": {"eror_rate": 0.1}}}"#).contains("eror_rate"));

        let path = std::env::temp_dir().join(format!("simulator-{}.json", std::process::id()));
        std::fs::write(&path, r#"{"providers": {"hunter": {"error_rate": 0.1}}}"#).unwrap();
        assert_eq!(
            load_config(&path).unwrap().providers["hunter"].error_rate,
            0.1
        );
        std::fs::write(&path, r#"{"providers": {"hunter": {"error_rate": 2}}}"#).unwrap();
        let invalid = load_config(&path).unwrap_err();
        assert!(invalid.contains(&path.display().to_string()), "{invalid}");
        let _ = std::fs::remove_file(&path);
        assert!(load_config("/nonexistent/simulator.json").is_err());
    }

    #[tokio::test]
    async fn the_cascade_runs_the_new_providers_against_the_simulator() {
        use enrichment::providers::cascade::{Cascade, CascadeOutcome};

        let address = start().await;
        let vars: HashMap<&str, String> = HashMap::from([
            ("EMAIL_PROVIDERS", "prospeo,dropcontact,hunter".to_string()),
            ("PHONE_PROVIDERS", "prospeo,fullenrich".to_string()),
            ("HUNTER_API_KEY", "local".to_string()),
            ("PROSPEO_API_KEY", "local".to_string()),
            ("FULLENRICH_API_KEY", "local".to_string()),
            ("DROPCONTACT_API_KEY", "local".to_string()),
            ("HUNTER_BASE_URL", format!("http://{address}/hunter")),
            ("PROSPEO_BASE_URL", format!("http://{address}/prospeo")),
            (
                "FULLENRICH_BASE_URL",
                format!("http://{address}/fullenrich"),
            ),
            (
                "DROPCONTACT_BASE_URL",
                format!("http://{address}/dropcontact"),
            ),
            ("PROVIDER_TIMEOUT_SECONDS", "10".to_string()),
        ]);
        let cascade =
            Cascade::from_vars(reqwest::Client::new(), |name| vars.get(name).cloned()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);

        // Prospeo knows Ada: the first provider answers.
        let ada = query("Ada", "Quill", None, Some("northwind.example"), None);
        match cascade.run(Field::Emails, &ada, deadline).await {
            CascadeOutcome::Found { provider, contacts } => {
                assert_eq!(provider, "prospeo");
                assert_eq!(contacts[0].value, "ada.quill@northwind.example");
            }
            other => panic!("expected Found, got {other:?}"),
        }

        // Prospeo has no mobile for Bruno; FullEnrich's enrichment finds his UK mobile.
        let bruno = PersonQuery {
            linkedin_url: Some("https://www.linkedin.com/in/bruno-okafor-demo".into()),
            ..PersonQuery::default()
        };
        match cascade.run(Field::Phones, &bruno, deadline).await {
            CascadeOutcome::Found { provider, contacts } => {
                assert_eq!(provider, "fullenrich");
                let values: Vec<&str> = contacts.iter().map(|c| c.value.as_str()).collect();
                assert_eq!(values, vec!["+442079460321"]);
            }
            other => panic!("expected Found, got {other:?}"),
        }
    }
}
