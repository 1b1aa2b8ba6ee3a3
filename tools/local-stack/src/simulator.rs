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
//!   `first_name` + `last_name` + `company` (name or domain), `required` and `min_likelihood`.
//!   Found: 200 with `status`, `likelihood`, `data`; anyone else (or a record without the
//!   `required` fields, or whose `likelihood` is below `min_likelihood`): 404 `not_found`.
//! - `POST /prospeo/enrich-person` with `X-KEY` and `{"data": {...}, "enrich_mobile": ...}`.
//!   Found: 200 with `person.email` / `person.mobile` (the mobile revealed only when
//!   `enrich_mobile` or `only_verified_mobile` is set, masked otherwise); anyone else, or a
//!   person without the verified value `only_verified_*` asks for: 400 `NO_MATCH`.
//! - `POST /fullenrich/api/v2/contact/enrich/bulk` with `Authorization: Bearer KEY` answers an
//!   `enrichment_id`; `GET /fullenrich/api/v2/contact/enrich/bulk/{id}` answers 400
//!   `error.enrichment.in_progress` while the job runs (the first poll, or until its
//!   `job_seconds` have passed), then 200 `FINISHED` with each contact's `contact_info` (empty
//!   for people FullEnrich does not know).
//! - `POST /dropcontact/v1/enrich/all` with `X-Access-Token` answers a `request_id`;
//!   `GET /dropcontact/v1/enrich/all/{request_id}` answers `success: false` ("not ready") while
//!   the job runs (likewise), then `success: true` with the records (without `email` for
//!   unknown people).
//!
//! The asynchronous providers' jobs live in the router's state, in memory.
//!
//! Rate-limit answers carry the signal each provider documents: PDL's `x-ratelimit-reset` and
//! `x-ratelimit-remaining`, Prospeo's `x-minute-request-left` and `x-minute-reset-seconds`,
//! nothing for Hunter (its 403), FullEnrich and Dropcontact, which document no header
//! (`retry_after_seconds` then sends a `Retry-After`); see [`SimulatorConfig`].
//!
//! The simulator counts the requests each provider receives (see [`RequestStats`]), and for
//! the asynchronous ones the most jobs created for one person and field
//! (`max_submits_per_person`, which a test reads to prove no paid job was started twice):
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
//! Simulator-wide, a [`SimulatorConfig`] gives each provider a latency, rates of misses,
//! server errors and rate limiting, and for the asynchronous ones how long a job takes
//! ([`ProviderBehavior`]), drawn deterministically from a hash
//! of the seed, the provider and the person a request asks about: the same person always gets
//! the same draw, so runs are reproducible. See [`router_with`].

mod config;
mod dropcontact;
mod fullenrich;
mod hunter;
mod pdl;
mod prospeo;
mod stats;

pub use config::*;
use hunter::*;
use pdl::*;
pub use stats::*;

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
    /// Dropcontact's qualification, passed through as written: `local@domain`
    /// (`nominative@pro`, `catch-all@pro`, `generic@pro`, `invalid@pro`...) or a whole-address
    /// label (`invalid domain`, `Do_Not_Contact`).
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

/// The ISO 3166 region of a phone number as the fixture writes it (read in `US` when written
/// nationally), as FullEnrich's `region` and Prospeo's `mobile_country_code` give it; `None`
/// when it is not a valid number.
fn phone_region(number: &str) -> Option<String> {
    enrichment::providers::normalize::phone_region(
        number,
        enrichment::providers::cascade::DEFAULT_PHONE_REGION,
    )
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
// Router and state

/// The router's state: the fixture, the configuration and the asynchronous providers' jobs.
struct Sim {
    people: Vec<KnownPerson>,
    config: SimulatorConfig,
    jobs: Mutex<HashMap<String, Job>>,
    stats: Mutex<RequestStats>,
    /// Jobs created per provider and per person and field asked for, since the last reset.
    jobs_per_person: Mutex<HashMap<(&'static str, String), u64>>,
    /// When the simulator started (`outage_seconds` counts from it).
    started: std::time::Instant,
    /// Per provider: the current calendar second and minute and the requests counted in each.
    windows: Mutex<HashMap<String, Windows>>,
}

/// A provider's request counts in the current calendar second and minute.
#[derive(Default)]
struct Windows {
    second: u64,
    in_second: u32,
    minute: u64,
    in_minute: u32,
}

/// A submitted FullEnrich enrichment or Dropcontact request.
struct Job {
    provider: &'static str,
    polls: u32,
    /// When it is done, with the provider's `job_seconds`; `None`: on the second poll.
    done_at: Option<tokio::time::Instant>,
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

    /// The provider's outage and rate limits for a request arriving now: a 500 during its
    /// `outage_seconds`, its rate-limit error (with the wait to the window's end) past
    /// `rate_limit_per_second` or `rate_limit_per_minute`, counted as `rate_limited`; `None`
    /// otherwise (the request counts in the windows).
    fn limits(&self, provider: &str) -> Option<Plan> {
        let behavior = self.config.providers.get(provider)?;
        if let Some([from, to]) = behavior.outage_seconds {
            let elapsed = self.started.elapsed().as_secs_f64();
            if (from..to).contains(&elapsed) {
                return Some(Plan::Fail);
            }
        }
        if behavior.rate_limit_per_second.is_none() && behavior.rate_limit_per_minute.is_none() {
            return None;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let (second, minute) = (now.as_secs(), now.as_secs() / 60);
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let w = windows.entry(provider.to_string()).or_default();
        if w.second != second {
            (w.second, w.in_second) = (second, 0);
        }
        if w.minute != minute {
            (w.minute, w.in_minute) = (minute, 0);
        }
        let refused = if behavior
            .rate_limit_per_second
            .is_some_and(|n| w.in_second >= n)
        {
            Some(1)
        } else if behavior
            .rate_limit_per_minute
            .is_some_and(|n| w.in_minute >= n)
        {
            Some((minute + 1) * 60 - now.as_secs())
        } else {
            None
        };
        if let Some(seconds) = refused {
            drop(windows);
            self.lock_stats()
                .entry(provider.to_string())
                .or_default()
                .rate_limited += 1;
            return Some(Plan::RateLimit {
                retry_after_seconds: Some(seconds),
            });
        }
        w.in_second += 1;
        w.in_minute += 1;
        None
    }

    /// Applies the provider's outage and rate limits ([`Sim::limits`]), waits its latency,
    /// then draws what it does for `person_key`.
    async fn plan(&self, provider: &str, person_key: &str) -> Plan {
        let limited = self.limits(provider);
        self.wait(provider).await;
        if let Some(plan) = limited {
            tracing::debug!(
                provider,
                person_key,
                ?plan,
                "simulated outage or rate limit"
            );
            return plan;
        }
        let plan = self.config.draw(provider, person_key);
        if plan != Plan::Answer {
            tracing::debug!(provider, person_key, ?plan, "simulated behaviour");
        }
        plan
    }

    /// Stores a job for `person_key` that will answer `status` and `body` once done (after
    /// the provider's `job_seconds` drawn for `person_key`, else on its second poll), and
    /// counts it for `person_key` and `fields` (the field(s) asked for).
    fn add_job(
        &self,
        provider: &'static str,
        id: &str,
        (person_key, fields): (&str, &str),
        status: StatusCode,
        body: Value,
    ) {
        let duration = self.config.job_duration(provider, person_key);
        let job = Job {
            provider,
            polls: 0,
            done_at: duration.map(|d| tokio::time::Instant::now() + d),
            status,
            body,
        };
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(id.to_string(), job);
        *self
            .lock_jobs_per_person()
            .entry((provider, format!("{person_key} [{fields}]")))
            .or_default() += 1;
    }

    fn lock_jobs_per_person(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(&'static str, String), u64>> {
        self.jobs_per_person
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Polls a job: in progress until its time has passed (without `job_seconds`: the first
    /// poll finds it in progress, the next ones done).
    fn poll_job(&self, provider: &str, id: &str) -> JobState {
        let mut jobs = self
            .jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(job) = jobs.get_mut(id).filter(|job| job.provider == provider) else {
            return JobState::Unknown;
        };
        job.polls += 1;
        let done = match job.done_at {
            Some(at) => tokio::time::Instant::now() >= at,
            None => job.polls > 1,
        };
        if done {
            JobState::Done(job.status, job.body.clone())
        } else {
            JobState::Pending
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
        jobs_per_person: Mutex::new(HashMap::new()),
        started: std::time::Instant::now(),
        windows: Mutex::new(HashMap::new()),
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

/// `response`, a rate-limit error of `provider`, with the provider's documented signal of when
/// to come back, announcing a wait of `seconds` (see [`SimulatorConfig`]):
///
/// - `pdl`: `x-ratelimit-reset`, the UTC time the window resets (RFC 3339, whole seconds,
///   rounded up), `seconds` from now or else the next minute's start; `x-ratelimit-remaining`
///   `{"minute": 0, "day": null, "month": null}` and `x-ratelimit-limit` alike.
/// - `prospeo`: `x-minute-request-left: 0` and `x-minute-reset-seconds` (`seconds`, or else
///   the seconds to the next minute), with the daily counts (requests left, a day to reset)
///   and the plan's limits.
/// - `hunter`, `fullenrich`, `dropcontact` (no documented header): `Retry-After: seconds` when
///   given, else nothing.
fn rate_limited(provider: &str, mut response: Response, seconds: Option<u64>) -> Response {
    let now = chrono::Utc::now();
    let to_next_minute = || 60 - u64::from(chrono::Timelike::second(&now));
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    match provider {
        pdl_api::NAME => {
            let wait = seconds.unwrap_or_else(to_next_minute);
            let reset = now
                + chrono::Duration::seconds(i64::try_from(wait).unwrap_or(i64::MAX / 1000))
                + chrono::Duration::milliseconds(999);
            set(
                pdl_api::RATE_LIMIT_RESET,
                reset.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
            set(
                pdl_api::RATE_LIMIT_REMAINING,
                r#"{"minute": 0, "day": null, "month": null}"#.into(),
            );
            set(
                "x-ratelimit-limit",
                r#"{"minute": 100, "day": null, "month": null}"#.into(),
            );
        }
        prospeo_api::NAME => {
            set(prospeo_api::MINUTE_REQUESTS_LEFT, "0".into());
            set(
                prospeo_api::MINUTE_RESET_SECONDS,
                seconds.unwrap_or_else(to_next_minute).to_string(),
            );
            set(prospeo_api::DAILY_REQUESTS_LEFT, "1700".into());
            set(prospeo_api::DAILY_RESET_SECONDS, "86400".into());
            set("x-second-rate-limit", "5".into());
            set("x-minute-rate-limit", "300".into());
            set("x-daily-rate-limit", "2000".into());
        }
        _ => {
            if let Some(seconds) = seconds {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
        }
    }
    response
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
mod tests;
