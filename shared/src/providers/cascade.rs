//! The waterfall: asks the providers configured for a field one after another until one finds
//! data (design, "What it is" and "Rules that are easy to get wrong").
//!
//! Outcome rules, decided here precisely:
//!
//! - **Found**: the first provider whose answer is non-empty *after normalization* wins, and no
//!   later provider is asked. A provider whose values all fail normalization counts as a no match.
//! - **NoMatch**: every provider that could search answered "no match" (or none had the inputs
//!   to search at all): a complete answer, which the global cache may keep.
//! - **Failed**: no provider found anything and at least one could not answer (it errored,
//!   timed out, or was not started because the deadline was too near). The search is
//!   incomplete: the enrichment ends `failed` (refunded, and a new POST may try again) with an
//!   `error` naming the failures, rather than a `dataFound: false` that would hide them.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use phonenumber::country::Id;
use tokio::time::Instant;

use crate::config::{ConfigError, Vars};
use crate::domain::{ContactPoint, Field, timestamp};
use crate::limiter::ProviderLimit;
use crate::metrics::{self, ProviderOutcome};
use crate::providers::normalize::normalize;
use crate::providers::registry;
use crate::providers::{
    JobPoll, MatchBasis, PersonQuery, Provider, ProviderAnswer, ProviderError, ProviderJobs,
};

/// The region of national phone numbers when none is configured (`PHONE_DEFAULT_REGION`).
pub const DEFAULT_PHONE_REGION: Id = Id::US;

/// The error text recorded for a provider not started because the deadline was too near.
pub const NO_TIME_LEFT: &str = "not started: too close to the deadline";

/// What the cascade found for one field of one person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CascadeOutcome {
    /// A provider found data; `contacts` is normalized and never empty.
    Found {
        /// The provider that found it (`hunter`, `pdl`).
        provider: String,
        /// The normalized values, each recording `provider` and when it was found.
        contacts: Vec<ContactPoint>,
        /// What the provider's search matched on ([`Provider::match_basis`]).
        basis: MatchBasis,
    },
    /// Every provider that was asked answered no match (or none could search).
    NoMatch,
    /// No provider found anything and at least one could not answer (errored / out of time).
    Failed {
        /// `(provider, error text)` per provider that could search, in cascade order.
        errors: Vec<(String, String)>,
    },
    /// The journal said to stop before a provider call (the worker lost its claim on the job):
    /// nothing is to be written.
    Stopped,
    /// An asynchronous provider is working on the job recorded in the journal: the enrichment
    /// is to be looked at again after `delay` (nothing is to be written; no worker waits).
    Waiting {
        /// The provider whose job runs.
        provider: String,
        /// When to poll it: the cascade's poll delay, or the provider's longer `Retry-After`.
        delay: Duration,
    },
}

impl CascadeOutcome {
    /// The enrichment's `error` for this outcome: for [`CascadeOutcome::Failed`],
    /// `"All providers failed: hunter: rate limited; pdl: HTTP 503"`; `None` otherwise.
    pub fn error_message(&self) -> Option<String> {
        let CascadeOutcome::Failed { errors } = self else {
            return None;
        };
        let details: Vec<String> = errors
            .iter()
            .map(|(provider, error)| format!("{provider}: {error}"))
            .collect();
        Some(format!("All providers failed: {}", details.join("; ")))
    }
}

/// The provider waterfall of each field. Build once per process and share.
pub struct Cascade {
    emails: Vec<Arc<dyn Provider>>,
    phones: Vec<Arc<dyn Provider>>,
    provider_timeout: Duration,
    retries: u32,
    budgets: std::collections::HashMap<String, Budget>,
    default_region: Id,
    poll_delay: Duration,
    limits: std::collections::HashMap<String, ProviderLimit>,
}

/// One provider's time and retry budget, overriding the cascade's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The bound on each call, and the least time left before the deadline to start one.
    pub timeout: Duration,
    /// How many times the provider is asked again after a short `Retry-After` or a 5xx.
    pub retries: u32,
}

impl Budget {
    /// The longest one provider call can take: every attempt and every wait between them
    /// (at most [`MAX_RETRY_WAIT`] each).
    pub fn span(&self) -> Duration {
        self.timeout * (self.retries + 1) + MAX_RETRY_WAIT * self.retries
    }
}

/// The longest `Retry-After` the cascade waits out before asking a rate-limited provider again;
/// a longer one moves on to the next provider.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);

/// The wait before asking again a provider that answered with a 5xx status.
pub const SERVER_ERROR_RETRY_WAIT: Duration = Duration::from_millis(500);

/// Retries per provider call when unset ([`Cascade::with_retries`]).
pub const DEFAULT_RETRIES: u32 = 1;

/// The wait between two polls of an asynchronous provider's job when unset
/// ([`Cascade::with_poll_delay`]): FullEnrich documents 30 to 90 s per contact, answers "try
/// again in 30 seconds" while it works, and counts polls in its 60 calls a minute.
pub const DEFAULT_POLL_DELAY: Duration = Duration::from_secs(20);

/// The longest wait between two polls: SQS's longest `DelaySeconds` (AWS docs, "Amazon SQS
/// delay queues").
pub const MAX_POLL_DELAY: Duration = Duration::from_secs(900);

/// Where the cascade keeps, per enrichment, which providers already answered "no match", so that
/// a redelivered job (SQS at-least-once delivery, or a worker that died mid-cascade) does not ask
/// them again.
#[async_trait::async_trait]
pub trait CascadeJournal: Send + Sync {
    /// The providers that answered "no match" in earlier attempts of this job.
    fn answered(&self) -> &[String];
    /// Records that `provider` answered "no match". A failure to record is the journal's to log:
    /// the cascade goes on either way.
    async fn record_no_match(&self, provider: &str);
    /// Called before `provider` is asked, with the longest the call can take
    /// ([`Budget::span`]): the worker renews its claim and leases for that long. `false` stops
    /// the cascade ([`CascadeOutcome::Stopped`]) without asking the provider.
    async fn before_call(&self, provider: &str, span: Duration) -> bool;
    /// Whether the journal keeps asynchronous providers' jobs between attempts
    /// ([`CascadeJournal::record_job`]): then such a provider is submitted once and polled
    /// once per attempt ([`CascadeOutcome::Waiting`] in between); otherwise it is polled
    /// inside its call. Default: no.
    fn keeps_jobs(&self) -> bool {
        false
    }
    /// The job `provider` was given for this enrichment in an earlier attempt.
    fn job_of(&self, _provider: &str) -> Option<&str> {
        None
    }
    /// The error `provider` failed with in an earlier attempt of a journal that keeps jobs
    /// (an attempt that ended waiting on an asynchronous provider): it is not asked again.
    fn failed_before(&self, _provider: &str) -> Option<&str> {
        None
    }
    /// Records that `provider` failed with `error` (only when the journal keeps jobs). A
    /// failure to record is the journal's to log.
    async fn record_failure(&self, _provider: &str, _error: &str) {}
    /// Records that `provider` was given job `job_id`, so that no later attempt submits again.
    /// `false`: it could not be recorded (the claim was lost); the cascade stops.
    async fn record_job(&self, _provider: &str, _job_id: &str) -> bool {
        true
    }
    /// A job another enrichment of the same person gave `provider` and left running (it was
    /// cancelled or timed out meanwhile), now this one's to continue instead of submitting a
    /// second paid job; recorded as this journal's own when returned. Default: none.
    async fn inherited_job(&self, _provider: &str) -> Option<String> {
        None
    }
    /// Whether `provider`'s calls go through a shared rate limit and circuit
    /// ([`crate::limiter`]): then it is asked without in-process retries, after
    /// [`CascadeJournal::admit`] and, once [`CascadeJournal::before_call`] is done,
    /// [`CascadeJournal::gate`]; a 429, 5xx, time-out or connection error defers the job
    /// ([`CascadeJournal::unavailable`]) instead of failing it. Default: no.
    fn limits(&self, _provider: &str) -> bool {
        false
    }
    /// Before a call to a limited provider, its place in the provider's queue: `Ok(())` to go
    /// on, or `Err(delay)` to defer the job that long (its slot is later, or the limit could
    /// not be read).
    async fn admit(&self, _provider: &str) -> Result<(), Duration> {
        Ok(())
    }
    /// Right before the request to a limited provider leaves: `Ok(failures)` to send it (the
    /// provider's circuit openings since its last good answer), or `Err(delay)` to defer the
    /// job that long (the window is full or the circuit open).
    async fn gate(&self, _provider: &str) -> Result<u32, Duration> {
        Ok(0)
    }
    /// A limited provider could not answer (`retry_after`: its own wait, when it said one):
    /// opens its circuit and returns how long to defer the job.
    async fn unavailable(
        &self,
        _provider: &str,
        _failures: u32,
        _retry_after: Option<Duration>,
    ) -> Duration {
        Duration::from_secs(1)
    }
    /// A limited provider answered on a slot that saw `failures`: closes its circuit.
    async fn available(&self, _provider: &str, _failures: u32) {}
}

/// Whether `error` is a provider's passing unavailability (a rate limit, a 5xx, a time-out, a
/// connection error) rather than an answer about the request; with its own wait, when it said
/// one.
fn unavailability(error: &ProviderError) -> Option<Option<Duration>> {
    match error {
        ProviderError::RateLimited { retry_after } => Some(*retry_after),
        ProviderError::Timeout | ProviderError::Transport(_) => Some(None),
        ProviderError::Status(status) if *status >= 500 => Some(None),
        _ => None,
    }
}

/// What one step of an asynchronous provider's job came to.
enum JobStep {
    /// An answer, as a synchronous call's.
    Answer(Result<ProviderAnswer, ProviderError>),
    /// The job runs on: poll again after this delay.
    Wait(Duration),
    /// The job could not be recorded: stop.
    Stop,
}

/// The journal of a job run once: nothing answered before, nothing kept.
pub struct NoJournal;

#[async_trait::async_trait]
impl CascadeJournal for NoJournal {
    fn answered(&self) -> &[String] {
        &[]
    }
    async fn record_no_match(&self, _provider: &str) {}
    async fn before_call(&self, _provider: &str, _span: Duration) -> bool {
        true
    }
}

impl Cascade {
    /// A cascade asking `emails` (for [`Field::Emails`]) and `phones` (for [`Field::Phones`]) in
    /// the given order, each call bounded by `provider_timeout`. Phone numbers without an
    /// international prefix are read as [`DEFAULT_PHONE_REGION`] numbers; see
    /// [`Cascade::with_default_region`].
    pub fn new(
        emails: Vec<Arc<dyn Provider>>,
        phones: Vec<Arc<dyn Provider>>,
        provider_timeout: Duration,
    ) -> Self {
        Self {
            emails,
            phones,
            provider_timeout,
            retries: DEFAULT_RETRIES,
            budgets: std::collections::HashMap::new(),
            default_region: DEFAULT_PHONE_REGION,
            poll_delay: DEFAULT_POLL_DELAY,
            limits: std::collections::HashMap::new(),
        }
    }

    /// The same cascade, waiting `delay` (at most [`MAX_POLL_DELAY`]) between two polls of an
    /// asynchronous provider's job.
    pub fn with_poll_delay(mut self, delay: Duration) -> Self {
        self.poll_delay = delay.min(MAX_POLL_DELAY);
        self
    }

    /// The same cascade, with `provider`'s own time and retry budget.
    pub fn with_budget(mut self, provider: &str, budget: Budget) -> Self {
        self.budgets.insert(provider.to_string(), budget);
        self
    }

    /// The same cascade with `provider`'s shared rate limit ([`crate::limiter`]), which the
    /// worker's [`crate::limiter::Limiter`] enforces.
    pub fn with_limit(mut self, provider: &str, limit: ProviderLimit) -> Self {
        if limit.interval().is_some() {
            self.limits.insert(provider.to_string(), limit);
        }
        self
    }

    /// The providers that have a rate limit, with it.
    pub fn limits(&self) -> impl Iterator<Item = (&str, ProviderLimit)> {
        self.limits
            .iter()
            .map(|(name, limit)| (name.as_str(), *limit))
    }

    /// The budget of `provider`: its own, or the cascade's defaults.
    pub fn budget(&self, provider: &str) -> Budget {
        self.budgets.get(provider).copied().unwrap_or(Budget {
            timeout: self.provider_timeout,
            retries: self.retries,
        })
    }

    /// The same cascade, asking a provider again up to `retries` times after a 429 whose
    /// `Retry-After` is at most [`MAX_RETRY_WAIT`] or after a 5xx, while the deadline allows.
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The same cascade, reading national phone numbers as numbers of `region`.
    pub fn with_default_region(mut self, region: Id) -> Self {
        self.default_region = region;
        self
    }

    /// The bound on each provider call; also the least time left before the deadline for a
    /// call to be started.
    pub fn provider_timeout(&self) -> Duration {
        self.provider_timeout
    }

    /// The cascade configured by the variables that `var` returns (`None`: unset), read
    /// through [`Vars`]: [`registry::cascade`], whose [`registry::CascadeSettings`] documents
    /// every variable, its default and its range.
    ///
    /// Errors: those of [`registry::CascadeSettings::from_vars`] (an unknown or repeated
    /// provider name, a listed provider without its key, a value that does not parse or is out
    /// of its range).
    pub fn from_vars(
        http: reqwest::Client,
        var: impl Fn(&str) -> Option<String> + Send + Sync,
    ) -> Result<Self, ConfigError> {
        registry::cascade(http, &Vars::from_fn(var))
    }

    /// Asks the providers of `field` in order for `person`'s values, stopping at the first that
    /// finds some. See the module docs for the outcome rules.
    ///
    /// - A provider that [`Provider::can_search`] says cannot search is skipped without a call.
    /// - A call is not started when less than the provider timeout is left before `deadline`;
    ///   the provider is recorded with the error [`NO_TIME_LEFT`].
    /// - Each call is bounded by the provider timeout ([`ProviderError::Timeout`]).
    /// - Found values are normalized ([`normalize`]) with the time of the answer.
    ///
    /// Logs one `tracing` event per provider with `provider`, `field`, `outcome` (`found`,
    /// `no_match`, `unusable`, `error`, `skipped_inputs`, `skipped_no_time`) and `latency_ms`,
    /// and for each call that ended the provider's turn (`found`, `no_match`, `unusable`,
    /// `error`) one metrics line ([`metrics::provider_call`]).
    pub async fn run(
        &self,
        field: Field,
        person: &PersonQuery,
        deadline: Instant,
    ) -> CascadeOutcome {
        self.run_with(field, person, deadline, &NoJournal).await
    }

    /// [`Cascade::run`], skipping the providers `journal` says already answered "no match" (they
    /// count as answered) and recording each new "no match" in it.
    pub async fn run_with(
        &self,
        field: Field,
        person: &PersonQuery,
        deadline: Instant,
        journal: &dyn CascadeJournal,
    ) -> CascadeOutcome {
        let providers = match field {
            Field::Emails => &self.emails,
            Field::Phones => &self.phones,
        };
        let mut errors: Vec<(String, String)> = Vec::new();
        for provider in providers {
            let name = provider.name();
            if journal.answered().iter().any(|answered| answered == name) {
                tracing::info!(provider = name, field = %field, outcome = "answered_before", latency_ms = 0u64, "provider not asked again: it answered no match in an earlier attempt");
                continue;
            }
            if let Some(error) = journal.failed_before(name) {
                // Asked again at every poll of a later asynchronous provider, a failing
                // provider would be paid for each time: its earlier failure stands.
                tracing::info!(provider = name, field = %field, outcome = "failed_before", latency_ms = 0u64, "provider not asked again: it failed in an earlier attempt");
                errors.push((name.to_string(), error.to_string()));
                continue;
            }
            if !provider.can_search(field, person) {
                tracing::info!(provider = name, field = %field, outcome = "skipped_inputs", latency_ms = 0u64, "provider skipped: missing inputs");
                continue;
            }
            let started = Instant::now();
            let budget = self.budget(name);
            if deadline.saturating_duration_since(started) < budget.timeout {
                tracing::warn!(provider = name, field = %field, outcome = "skipped_no_time", latency_ms = 0u64, "provider not started: too close to the deadline");
                errors.push((name.to_string(), NO_TIME_LEFT.to_string()));
                continue;
            }
            let limited = journal.limits(name);
            if limited && let Err(delay) = journal.admit(name).await {
                tracing::info!(provider = name, field = %field, outcome = "rate_limited_wait", delay_s = delay.as_secs(), "no call slot yet: deferred");
                return CascadeOutcome::Waiting {
                    provider: name.to_string(),
                    delay,
                };
            }
            // A limited provider's retries would take no slot: the circuit and the deferral
            // stand for them.
            let budget = if limited {
                Budget {
                    retries: 0,
                    ..budget
                }
            } else {
                budget
            };
            if !journal.before_call(name, budget.span()).await {
                tracing::info!(provider = name, field = %field, "cascade stopped before the provider call");
                return CascadeOutcome::Stopped;
            }
            // Counted in the provider's window last, so that the renewals above cannot move
            // the request into a later window than the one it was counted in.
            let mut failures_before = 0;
            if limited {
                match journal.gate(name).await {
                    Ok(failures) => failures_before = failures,
                    Err(delay) => {
                        tracing::info!(provider = name, field = %field, outcome = "rate_limited_wait", delay_s = delay.as_secs(), "provider's window full or circuit open: deferred");
                        return CascadeOutcome::Waiting {
                            provider: name.to_string(),
                            delay,
                        };
                    }
                }
            }
            let answer = match provider.jobs().filter(|_| journal.keeps_jobs()) {
                Some(jobs) => match self
                    .step_job(jobs, name, budget, field, person, journal)
                    .await
                {
                    JobStep::Answer(answer) => answer,
                    JobStep::Wait(delay) => {
                        tracing::info!(provider = name, field = %field, outcome = "waiting", delay_s = delay.as_secs(), "provider job running: deferred");
                        return CascadeOutcome::Waiting {
                            provider: name.to_string(),
                            delay,
                        };
                    }
                    JobStep::Stop => return CascadeOutcome::Stopped,
                },
                None => {
                    self.ask(provider.as_ref(), budget, field, person, deadline)
                        .await
                }
            };
            let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            if limited {
                match answer.as_ref().err().and_then(unavailability) {
                    Some(retry_after) => {
                        let error = answer.as_ref().err().map(ToString::to_string);
                        let rate_limited = matches!(answer, Err(ProviderError::RateLimited { .. }));
                        metrics::provider_call(
                            name,
                            ProviderOutcome::Error { rate_limited },
                            latency_ms,
                        );
                        let delay = journal
                            .unavailable(name, failures_before, retry_after)
                            .await;
                        tracing::warn!(provider = name, field = %field, outcome = "unavailable", latency_ms, error = error.unwrap_or_default(), delay_s = delay.as_secs(), "provider unavailable: deferred");
                        return CascadeOutcome::Waiting {
                            provider: name.to_string(),
                            delay,
                        };
                    }
                    None => journal.available(name, failures_before).await,
                }
            }
            match answer {
                Ok(ProviderAnswer::Found(raw)) => {
                    let found_at = timestamp(Utc::now());
                    let contacts = normalize(field, name, &raw, &found_at, self.default_region);
                    if contacts.is_empty() {
                        tracing::info!(provider = name, field = %field, outcome = "unusable", latency_ms, raw_count = raw.len(), "provider found only values that do not normalize");
                        metrics::provider_call(name, ProviderOutcome::Miss, latency_ms);
                        continue;
                    }
                    tracing::info!(provider = name, field = %field, outcome = "found", latency_ms, count = contacts.len(), "provider found data");
                    metrics::provider_call(name, ProviderOutcome::Hit, latency_ms);
                    return CascadeOutcome::Found {
                        provider: name.to_string(),
                        contacts,
                        basis: provider.match_basis(),
                    };
                }
                Ok(ProviderAnswer::NoMatch) => {
                    tracing::info!(provider = name, field = %field, outcome = "no_match", latency_ms, "provider has no match");
                    metrics::provider_call(name, ProviderOutcome::Miss, latency_ms);
                    journal.record_no_match(name).await;
                }
                Err(error) => {
                    tracing::warn!(provider = name, field = %field, outcome = "error", latency_ms, error = %error, "provider failed");
                    let rate_limited = matches!(error, ProviderError::RateLimited { .. });
                    metrics::provider_call(
                        name,
                        ProviderOutcome::Error { rate_limited },
                        latency_ms,
                    );
                    if journal.keeps_jobs() {
                        journal.record_failure(name, &error.to_string()).await;
                    }
                    errors.push((name.to_string(), error.to_string()));
                }
            }
        }
        if errors.is_empty() {
            CascadeOutcome::NoMatch
        } else {
            CascadeOutcome::Failed { errors }
        }
    }

    /// One step of an asynchronous provider's job, bounded by the provider timeout: the submit
    /// when the journal has no job for it (recorded before anything else happens; a rate-limited
    /// submit created none and is tried again after the wait), else one poll. A poll that is
    /// rate limited, times out or meets a 5xx or a transport error waits and polls again later:
    /// it never submits again.
    async fn step_job(
        &self,
        jobs: &dyn ProviderJobs,
        name: &str,
        budget: Budget,
        field: Field,
        person: &PersonQuery,
        journal: &dyn CascadeJournal,
    ) -> JobStep {
        let job_id = match journal.job_of(name) {
            Some(own) => Some(own.to_string()),
            None => journal.inherited_job(name).await,
        };
        let Some(job_id) = job_id else {
            let submitted = tokio::time::timeout(budget.timeout, jobs.submit_job(field, person))
                .await
                .unwrap_or(Err(ProviderError::Timeout));
            return match submitted {
                Ok(None) => JobStep::Answer(Ok(ProviderAnswer::NoMatch)),
                Ok(Some(job_id)) if journal.record_job(name, &job_id).await => {
                    JobStep::Wait(self.poll_delay)
                }
                Ok(Some(_)) => JobStep::Stop,
                // No job was created: submitting again after the wait is safe.
                Err(ProviderError::RateLimited { retry_after }) => {
                    JobStep::Wait(self.rate_limited_wait(retry_after))
                }
                Err(error) => JobStep::Answer(Err(error)),
            };
        };
        let polled = tokio::time::timeout(budget.timeout, jobs.poll_job(field, &job_id))
            .await
            .unwrap_or(Err(ProviderError::Timeout));
        match polled {
            Ok(JobPoll::Pending) => JobStep::Wait(self.poll_delay),
            Ok(JobPoll::Done(raw)) if raw.is_empty() => {
                JobStep::Answer(Ok(ProviderAnswer::NoMatch))
            }
            Ok(JobPoll::Done(raw)) => JobStep::Answer(Ok(ProviderAnswer::Found(raw))),
            Err(ProviderError::RateLimited { retry_after }) => {
                JobStep::Wait(self.rate_limited_wait(retry_after))
            }
            Err(ProviderError::Timeout | ProviderError::Transport(_)) => {
                JobStep::Wait(self.poll_delay)
            }
            Err(ProviderError::Status(status)) if status >= 500 => JobStep::Wait(self.poll_delay),
            Err(error) => JobStep::Answer(Err(error)),
        }
    }

    /// The wait after an asynchronous provider's rate limit: its own signal, at least the poll
    /// delay, at most [`MAX_POLL_DELAY`].
    fn rate_limited_wait(&self, retry_after: Option<Duration>) -> Duration {
        retry_after
            .unwrap_or_default()
            .clamp(self.poll_delay, MAX_POLL_DELAY)
    }

    /// One provider call bounded by the provider timeout, asked again (up to the retry budget)
    /// after a short `Retry-After` or a 5xx when the deadline still leaves a whole call's time.
    async fn ask(
        &self,
        provider: &dyn Provider,
        budget: Budget,
        field: Field,
        person: &PersonQuery,
        deadline: Instant,
    ) -> Result<ProviderAnswer, ProviderError> {
        let mut attempt = 0;
        loop {
            let answer = tokio::time::timeout(budget.timeout, provider.find(field, person))
                .await
                .unwrap_or(Err(ProviderError::Timeout));
            let wait = match &answer {
                Err(ProviderError::RateLimited { retry_after }) => {
                    retry_after.unwrap_or(Duration::from_secs(1))
                }
                Err(ProviderError::Status(status)) if *status >= 500 => SERVER_ERROR_RETRY_WAIT,
                _ => return answer,
            };
            let fits = deadline.saturating_duration_since(Instant::now()) >= wait + budget.timeout;
            if attempt >= budget.retries || wait > MAX_RETRY_WAIT || !fits {
                return answer;
            }
            attempt += 1;
            tracing::info!(provider = provider.name(), field = %field, wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), attempt, "asking the provider again");
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::providers::RawContact;

    const TIMEOUT: Duration = Duration::from_secs(20);

    /// A fake provider answering the same thing every time, counting its calls.
    struct Fake {
        name: &'static str,
        can_search: bool,
        delay: Option<Duration>,
        answer: Result<ProviderAnswer, ProviderError>,
        calls: AtomicUsize,
    }

    impl Fake {
        fn new(name: &'static str, answer: Result<ProviderAnswer, ProviderError>) -> Arc<Self> {
            Arc::new(Self {
                name,
                can_search: true,
                delay: None,
                answer,
                calls: AtomicUsize::new(0),
            })
        }

        fn found(name: &'static str, values: &[&str]) -> Arc<Self> {
            let raw = values
                .iter()
                .map(|v| RawContact {
                    value: v.to_string(),
                    kind: None,
                    status: None,
                    confidence: None,
                })
                .collect();
            Self::new(name, Ok(ProviderAnswer::Found(raw)))
        }

        fn miss(name: &'static str) -> Arc<Self> {
            Self::new(name, Ok(ProviderAnswer::NoMatch))
        }

        fn failing(name: &'static str, error: ProviderError) -> Arc<Self> {
            Self::new(name, Err(error))
        }

        fn unable(name: &'static str) -> Arc<Self> {
            Arc::new(Self {
                can_search: false,
                ..Arc::into_inner(Self::miss(name)).unwrap()
            })
        }

        fn hanging(name: &'static str) -> Arc<Self> {
            Arc::new(Self {
                delay: Some(Duration::from_secs(3600)),
                ..Arc::into_inner(Self::found(name, &["late@example.com"])).unwrap()
            })
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl Provider for Fake {
        fn name(&self) -> &'static str {
            self.name
        }

        fn can_search(&self, _field: Field, _person: &PersonQuery) -> bool {
            self.can_search
        }

        async fn find(
            &self,
            _field: Field,
            _person: &PersonQuery,
        ) -> Result<ProviderAnswer, ProviderError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if let Some(delay) = self.delay {
                tokio::time::sleep(delay).await;
            }
            self.answer.clone()
        }
    }

    fn email_cascade(providers: &[Arc<Fake>]) -> Cascade {
        let providers = providers
            .iter()
            .map(|p| Arc::clone(p) as Arc<dyn Provider>)
            .collect();
        Cascade::new(providers, Vec::new(), TIMEOUT)
    }

    fn far_deadline() -> Instant {
        Instant::now() + Duration::from_secs(800)
    }

    fn person() -> PersonQuery {
        PersonQuery {
            first_name: Some("Ada".into()),
            last_name: Some("Quill".into()),
            company_domain: Some("northwind.example".into()),
            ..PersonQuery::default()
        }
    }

    fn values(outcome: &CascadeOutcome) -> Vec<&str> {
        match outcome {
            CascadeOutcome::Found { contacts, .. } => {
                contacts.iter().map(|c| c.value.as_str()).collect()
            }
            _ => Vec::new(),
        }
    }

    #[tokio::test]
    async fn providers_are_asked_in_order_and_the_first_hit_stops_the_cascade() {
        let first = Fake::miss("first");
        let second = Fake::found("second", &["Ada.Quill@Northwind.Example "]);
        let third = Fake::found("third", &["other@northwind.example"]);
        let cascade = email_cascade(&[first.clone(), second.clone(), third.clone()]);

        let outcome = cascade.run(Field::Emails, &person(), far_deadline()).await;

        let CascadeOutcome::Found {
            provider, contacts, ..
        } = &outcome
        else {
            panic!("expected Found, got {outcome:?}");
        };
        assert_eq!(provider, "second");
        assert_eq!(values(&outcome), vec!["ada.quill@northwind.example"]);
        assert!(
            contacts
                .iter()
                .all(|c| c.provider == "second" && c.found_at.ends_with('Z'))
        );
        assert_eq!((first.calls(), second.calls(), third.calls()), (1, 1, 0));
        assert_eq!(outcome.error_message(), None);
    }

    #[tokio::test]
    async fn a_provider_without_its_inputs_is_skipped_without_a_call() {
        let unable = Fake::unable("unable");
        let able = Fake::found("able", &["ada@northwind.example"]);
        let cascade = email_cascade(&[unable.clone(), able.clone()]);

        let outcome = cascade.run(Field::Emails, &person(), far_deadline()).await;

        assert!(matches!(&outcome, CascadeOutcome::Found { provider, .. } if provider == "able"));
        assert_eq!((unable.calls(), able.calls()), (0, 1));
    }

    #[tokio::test]
    async fn all_misses_are_no_match() {
        let a = Fake::miss("a");
        let b = Fake::miss("b");
        let outcome = email_cascade(&[a.clone(), b.clone()])
            .run(Field::Emails, &person(), far_deadline())
            .await;
        assert_eq!(outcome, CascadeOutcome::NoMatch);
        assert_eq!((a.calls(), b.calls()), (1, 1));
        assert_eq!(outcome.error_message(), None);
    }

    #[tokio::test]
    async fn no_provider_able_to_search_is_no_match() {
        let a = Fake::unable("a");
        let outcome = email_cascade(std::slice::from_ref(&a))
            .run(Field::Emails, &person(), far_deadline())
            .await;
        assert_eq!(outcome, CascadeOutcome::NoMatch);
        assert_eq!(a.calls(), 0);
        let none = email_cascade(&[])
            .run(Field::Emails, &person(), far_deadline())
            .await;
        assert_eq!(none, CascadeOutcome::NoMatch);
    }

    #[tokio::test]
    async fn all_errors_are_failed_with_every_reason() {
        let a = Fake::failing("hunter", ProviderError::RateLimited { retry_after: None });
        let b = Fake::failing("pdl", ProviderError::Status(503));
        let outcome = email_cascade(&[a, b])
            .run(Field::Emails, &person(), far_deadline())
            .await;
        assert_eq!(
            outcome,
            CascadeOutcome::Failed {
                errors: vec![
                    ("hunter".into(), "rate limited".into()),
                    ("pdl".into(), "HTTP 503".into()),
                ]
            }
        );
        assert_eq!(
            outcome.error_message().as_deref(),
            Some("All providers failed: hunter: rate limited; pdl: HTTP 503")
        );
    }

    #[tokio::test]
    async fn a_miss_among_errors_is_an_incomplete_search() {
        let a = Fake::failing("a", ProviderError::Unauthorized);
        let b = Fake::miss("b");
        let c = Fake::failing("c", ProviderError::QuotaExhausted);
        let outcome = email_cascade(&[a, b, c.clone()])
            .run(Field::Emails, &person(), far_deadline())
            .await;
        assert_eq!(
            outcome.error_message().as_deref(),
            Some("All providers failed: a: unauthorized (bad API key); c: quota exhausted")
        );
        assert_eq!(c.calls(), 1);
    }

    #[tokio::test]
    async fn an_error_moves_on_to_the_next_provider() {
        let a = Fake::failing("a", ProviderError::Malformed("bad".into()));
        let b = Fake::found("b", &["ada@northwind.example"]);
        let outcome = email_cascade(&[a.clone(), b])
            .run(Field::Emails, &person(), far_deadline())
            .await;
        assert!(matches!(&outcome, CascadeOutcome::Found { provider, .. } if provider == "b"));
        assert_eq!(a.calls(), 1);
    }

    #[tokio::test]
    async fn found_values_that_do_not_normalize_count_as_a_miss() {
        let a = Fake::found("a", &["not an email", "  "]);
        let b = Fake::found("b", &["ada@northwind.example", "ADA@northwind.example"]);
        let outcome = email_cascade(&[a.clone(), b])
            .run(Field::Emails, &person(), far_deadline())
            .await;
        assert_eq!(values(&outcome), vec!["ada@northwind.example"]);

        let only_bad = Fake::found("a", &["not an email"]);
        let outcome = email_cascade(&[only_bad])
            .run(Field::Emails, &person(), far_deadline())
            .await;
        assert_eq!(outcome, CascadeOutcome::NoMatch);
    }

    #[tokio::test]
    async fn an_email_its_provider_marks_invalid_is_not_stored_and_the_next_provider_is_asked() {
        let invalid = Fake::new(
            "a",
            Ok(ProviderAnswer::Found(vec![RawContact {
                value: "ada@northwind.example".into(),
                kind: None,
                status: Some("invalid".into()),
                confidence: None,
            }])),
        );
        let next = Fake::found("b", &["ada.quill@northwind.example"]);
        let outcome = email_cascade(&[invalid.clone(), next.clone()])
            .run(Field::Emails, &person(), far_deadline())
            .await;
        assert_eq!(values(&outcome), vec!["ada.quill@northwind.example"]);
        assert!(
            matches!(&outcome, CascadeOutcome::Found { provider, .. } if provider == "b"),
            "{outcome:?}"
        );
        assert_eq!((invalid.calls(), next.calls()), (1, 1));
    }

    /// An asynchronous provider answering each poll from a script.
    struct FakeJobs {
        submits: AtomicUsize,
        /// Submits answered with a rate limit before one is taken.
        refused: AtomicUsize,
        polls: AtomicUsize,
        script: std::sync::Mutex<std::collections::VecDeque<Result<JobPoll, ProviderError>>>,
    }

    impl FakeJobs {
        fn new(script: Vec<Result<JobPoll, ProviderError>>) -> Arc<Self> {
            Arc::new(Self {
                submits: AtomicUsize::new(0),
                refused: AtomicUsize::new(0),
                polls: AtomicUsize::new(0),
                script: std::sync::Mutex::new(script.into()),
            })
        }

        fn counts(&self) -> (usize, usize) {
            (
                self.submits.load(Ordering::SeqCst),
                self.polls.load(Ordering::SeqCst),
            )
        }
    }

    #[async_trait]
    impl Provider for FakeJobs {
        fn name(&self) -> &'static str {
            "async"
        }
        fn can_search(&self, _field: Field, _person: &PersonQuery) -> bool {
            true
        }
        async fn find(
            &self,
            _field: Field,
            _person: &PersonQuery,
        ) -> Result<ProviderAnswer, ProviderError> {
            panic!("a journal that keeps jobs never calls find on an asynchronous provider")
        }
        fn jobs(&self) -> Option<&dyn ProviderJobs> {
            Some(self)
        }
    }

    #[async_trait]
    impl ProviderJobs for FakeJobs {
        async fn submit_job(
            &self,
            _field: Field,
            _person: &PersonQuery,
        ) -> Result<Option<String>, ProviderError> {
            if self
                .refused
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(ProviderError::RateLimited {
                    retry_after: Some(Duration::from_secs(40)),
                });
            }
            let n = self.submits.fetch_add(1, Ordering::SeqCst);
            Ok(Some(format!("job-{n}")))
        }
        async fn poll_job(&self, _field: Field, job_id: &str) -> Result<JobPoll, ProviderError> {
            assert_eq!(job_id, "job-0", "only the recorded job is polled");
            self.polls.fetch_add(1, Ordering::SeqCst);
            self.script
                .lock()
                .unwrap()
                .pop_front()
                .expect("a scripted poll")
        }
    }

    /// One attempt's journal over what earlier attempts recorded, as the worker's is over the
    /// enrichment item it claimed.
    #[derive(Default)]
    struct Attempt {
        answered: Vec<String>,
        jobs: Vec<(String, String)>,
        failed: Vec<(String, String)>,
        recorded: std::sync::Mutex<Vec<(String, String)>>,
        no_match: std::sync::Mutex<Vec<String>>,
        failures: std::sync::Mutex<Vec<(String, String)>>,
    }

    impl Attempt {
        /// The next attempt: this one's records and what it read.
        fn next(self) -> Self {
            let mut jobs = self.jobs;
            jobs.extend(self.recorded.into_inner().unwrap());
            let mut answered = self.answered;
            answered.extend(self.no_match.into_inner().unwrap());
            let mut failed = self.failed;
            failed.extend(self.failures.into_inner().unwrap());
            Self {
                answered,
                jobs,
                failed,
                ..Self::default()
            }
        }
    }

    #[async_trait]
    impl CascadeJournal for Attempt {
        fn answered(&self) -> &[String] {
            &self.answered
        }
        async fn record_no_match(&self, provider: &str) {
            self.no_match.lock().unwrap().push(provider.to_string());
        }
        async fn before_call(&self, _provider: &str, _span: Duration) -> bool {
            true
        }
        fn keeps_jobs(&self) -> bool {
            true
        }
        fn job_of(&self, provider: &str) -> Option<&str> {
            self.jobs
                .iter()
                .find(|(name, _)| name == provider)
                .map(|(_, id)| id.as_str())
        }
        fn failed_before(&self, provider: &str) -> Option<&str> {
            self.failed
                .iter()
                .find(|(name, _)| name == provider)
                .map(|(_, error)| error.as_str())
        }
        async fn record_failure(&self, provider: &str, error: &str) {
            self.failures
                .lock()
                .unwrap()
                .push((provider.to_string(), error.to_string()));
        }
        async fn record_job(&self, provider: &str, job_id: &str) -> bool {
            self.recorded
                .lock()
                .unwrap()
                .push((provider.to_string(), job_id.to_string()));
            true
        }
    }

    /// A journal whose provider `limited` goes through a shared limit: `admit` answers `slot`,
    /// `gate` answers `gate`, `unavailable` defers 7 s; what they were told, and in which
    /// order the steps before a call came, is recorded.
    struct Limited {
        slot: Result<(), Duration>,
        gate: Result<u32, Duration>,
        steps: std::sync::Mutex<Vec<&'static str>>,
        unavailable: std::sync::Mutex<Vec<(u32, Option<Duration>)>>,
        available: std::sync::Mutex<Vec<u32>>,
    }

    impl Limited {
        fn new(slot: Result<(), Duration>, gate: Result<u32, Duration>) -> Self {
            Self {
                slot,
                gate,
                steps: Default::default(),
                unavailable: Default::default(),
                available: Default::default(),
            }
        }

        fn step(&self, step: &'static str) {
            self.steps.lock().unwrap().push(step);
        }
    }

    #[async_trait]
    impl CascadeJournal for Limited {
        fn answered(&self) -> &[String] {
            &[]
        }
        async fn record_no_match(&self, _provider: &str) {}
        async fn before_call(&self, _provider: &str, _span: Duration) -> bool {
            self.step("before_call");
            true
        }
        fn keeps_jobs(&self) -> bool {
            true
        }
        fn limits(&self, provider: &str) -> bool {
            provider == "limited"
        }
        async fn admit(&self, _provider: &str) -> Result<(), Duration> {
            self.step("admit");
            self.slot
        }
        async fn gate(&self, _provider: &str) -> Result<u32, Duration> {
            self.step("gate");
            self.gate
        }
        async fn unavailable(
            &self,
            _provider: &str,
            failures: u32,
            retry_after: Option<Duration>,
        ) -> Duration {
            self.unavailable
                .lock()
                .unwrap()
                .push((failures, retry_after));
            Duration::from_secs(7)
        }
        async fn available(&self, _provider: &str, failures: u32) {
            self.available.lock().unwrap().push(failures);
        }
    }

    #[tokio::test]
    async fn a_limited_provider_defers_the_job_instead_of_failing_or_retrying() {
        let limited_waiting = |seconds| CascadeOutcome::Waiting {
            provider: "limited".into(),
            delay: Duration::from_secs(seconds),
        };
        let run = |providers: Vec<Arc<Fake>>, journal: Limited| async move {
            let cascade = email_cascade(&providers).with_retries(3);
            let outcome = cascade
                .run_with(Field::Emails, &person(), far_deadline(), &journal)
                .await;
            (outcome, journal)
        };
        // No slot yet: deferred by the journal's wait, no call, nothing renewed.
        let limited = Fake::found("limited", &["ada@northwind.example"]);
        let (outcome, journal) = run(
            vec![limited.clone()],
            Limited::new(Err(Duration::from_secs(3)), Ok(0)),
        )
        .await;
        assert_eq!(outcome, limited_waiting(3));
        assert_eq!(limited.calls(), 0);
        assert_eq!(*journal.steps.lock().unwrap(), ["admit"]);

        // A slot, but the window is full (or the circuit open) at the gate, which comes after
        // the renewals: deferred by the gate's wait, no call.
        let (outcome, journal) = run(
            vec![limited.clone()],
            Limited::new(Ok(()), Err(Duration::from_secs(1))),
        )
        .await;
        assert_eq!(outcome, limited_waiting(1));
        assert_eq!(limited.calls(), 0);
        assert_eq!(
            *journal.steps.lock().unwrap(),
            ["admit", "before_call", "gate"]
        );

        // A 429, a 503, a time-out, a connection error: one call each (no in-process retry),
        // the circuit told with the provider's own wait, the job deferred, the next provider
        // not asked and nothing counted as failed.
        for (error, retry_after) in [
            (
                ProviderError::RateLimited {
                    retry_after: Some(Duration::from_secs(30)),
                },
                Some(Duration::from_secs(30)),
            ),
            (ProviderError::Status(503), None),
            (ProviderError::Timeout, None),
            (ProviderError::Transport("reset".into()), None),
        ] {
            let limited = Fake::failing("limited", error);
            let next = Fake::found("next", &["other@northwind.example"]);
            let (outcome, journal) = run(
                vec![limited.clone(), next.clone()],
                Limited::new(Ok(()), Ok(2)),
            )
            .await;
            assert_eq!(outcome, limited_waiting(7));
            assert_eq!((limited.calls(), next.calls()), (1, 0));
            assert_eq!(*journal.unavailable.lock().unwrap(), [(2, retry_after)]);
            assert!(journal.available.lock().unwrap().is_empty());
        }

        // An answer about the request (a 400) is the cascade's error as before.
        let limited = Fake::failing("limited", ProviderError::Status(400));
        let (outcome, journal) = run(vec![limited.clone()], Limited::new(Ok(()), Ok(0))).await;
        assert!(
            matches!(outcome, CascadeOutcome::Failed { .. }),
            "{outcome:?}"
        );
        assert_eq!(*journal.available.lock().unwrap(), [0]);

        // A good answer after failures closes the circuit; an unlimited provider is not
        // admitted and keeps its retries.
        let limited = Fake::found("limited", &["ada@northwind.example"]);
        let (outcome, journal) = run(vec![limited.clone()], Limited::new(Ok(()), Ok(4))).await;
        assert_eq!(values(&outcome), ["ada@northwind.example"]);
        assert_eq!(
            *journal.steps.lock().unwrap(),
            ["admit", "before_call", "gate"]
        );
        assert_eq!(*journal.available.lock().unwrap(), [4]);
        let free = Fake::failing("free", ProviderError::Status(503));
        let (outcome, journal) = run(
            vec![free.clone()],
            Limited::new(Err(Duration::from_secs(3)), Err(Duration::from_secs(3))),
        )
        .await;
        assert!(
            matches!(outcome, CascadeOutcome::Failed { .. }),
            "{outcome:?}"
        );
        assert_eq!(free.calls(), 4, "one call and three retries");
        assert!(journal.unavailable.lock().unwrap().is_empty());
    }

    fn async_cascade(first: &Arc<FakeJobs>, then: &Arc<Fake>) -> Cascade {
        let providers: Vec<Arc<dyn Provider>> = vec![
            Arc::clone(first) as Arc<dyn Provider>,
            Arc::clone(then) as Arc<dyn Provider>,
        ];
        Cascade::new(providers, Vec::new(), TIMEOUT).with_poll_delay(Duration::from_secs(20))
    }

    fn waiting(delay: u64) -> CascadeOutcome {
        CascadeOutcome::Waiting {
            provider: "async".into(),
            delay: Duration::from_secs(delay),
        }
    }

    async fn run_attempt(cascade: &Cascade, attempt: &Attempt) -> CascadeOutcome {
        cascade
            .run_with(Field::Emails, &person(), far_deadline(), attempt)
            .await
    }

    #[tokio::test]
    async fn an_asynchronous_provider_is_submitted_once_and_polled_across_attempts() {
        let provider = FakeJobs::new(vec![
            Ok(JobPoll::Pending),
            Err(ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(60)),
            }),
            Err(ProviderError::Status(503)),
            Err(ProviderError::Timeout),
            Ok(JobPoll::Done(vec![RawContact {
                value: "ada@northwind.example".into(),
                kind: None,
                status: None,
                confidence: None,
            }])),
        ]);
        let next = Fake::found("next", &["other@northwind.example"]);
        let cascade = async_cascade(&provider, &next);
        // Submitted and recorded: deferred by the poll delay.
        let mut attempt = Attempt::default();
        assert_eq!(run_attempt(&cascade, &attempt).await, waiting(20));
        assert_eq!(provider.counts(), (1, 0));
        // Still running; then a 429 on a poll waits its Retry-After; a 503 and a timeout poll
        // again later: none of them submits again.
        for expected in [20, 60, 20, 20] {
            attempt = attempt.next();
            assert_eq!(run_attempt(&cascade, &attempt).await, waiting(expected));
        }
        assert_eq!(provider.counts(), (1, 4));
        attempt = attempt.next();
        assert_eq!(
            values(&run_attempt(&cascade, &attempt).await),
            vec!["ada@northwind.example"]
        );
        assert_eq!(provider.counts(), (1, 5), "one submit in all");
        assert_eq!(next.calls(), 0);
    }

    #[tokio::test]
    async fn a_rate_limited_submit_waits_and_submits_once_after_the_wait() {
        let provider = FakeJobs::new(vec![Ok(JobPoll::Done(vec![RawContact {
            value: "ada@northwind.example".into(),
            ..RawContact::default()
        }]))]);
        provider.refused.store(1, Ordering::SeqCst);
        let next = Fake::found("next", &["other@northwind.example"]);
        let cascade = async_cascade(&provider, &next);
        let mut attempt = Attempt::default();
        // Refused: no job was created, nothing recorded; the next attempt submits.
        assert_eq!(run_attempt(&cascade, &attempt).await, waiting(40));
        assert!(attempt.recorded.lock().unwrap().is_empty());
        attempt = attempt.next();
        assert_eq!(run_attempt(&cascade, &attempt).await, waiting(20));
        attempt = attempt.next();
        assert_eq!(
            values(&run_attempt(&cascade, &attempt).await),
            vec!["ada@northwind.example"]
        );
        assert_eq!(provider.counts(), (1, 1));
        assert_eq!(next.calls(), 0, "a rate limit is waited out, not a failure");
    }

    #[tokio::test]
    async fn a_provider_that_failed_before_a_job_is_not_asked_again_at_each_poll() {
        let failing = Fake::failing("failing", ProviderError::Status(500));
        let provider = FakeJobs::new(vec![Ok(JobPoll::Pending), Ok(JobPoll::Done(Vec::new()))]);
        let providers: Vec<Arc<dyn Provider>> = vec![
            Arc::clone(&failing) as Arc<dyn Provider>,
            Arc::clone(&provider) as Arc<dyn Provider>,
        ];
        let cascade = Cascade::new(providers, Vec::new(), TIMEOUT)
            .with_retries(0)
            .with_poll_delay(Duration::from_secs(20));
        let mut attempt = Attempt::default();
        assert_eq!(run_attempt(&cascade, &attempt).await, waiting(20));
        attempt = attempt.next();
        assert_eq!(run_attempt(&cascade, &attempt).await, waiting(20));
        attempt = attempt.next();
        // The job ends without data: the search is incomplete, with the earlier failure.
        let outcome = run_attempt(&cascade, &attempt).await;
        assert!(
            matches!(&outcome, CascadeOutcome::Failed { errors } if errors[0] == ("failing".to_string(), "HTTP 500".to_string())),
            "{outcome:?}"
        );
        assert_eq!(failing.calls(), 1, "asked once in three attempts");
        assert_eq!(provider.counts(), (1, 2));
    }

    #[tokio::test]
    async fn a_job_that_ends_without_data_or_with_a_lasting_error_moves_on_without_a_new_submit() {
        let missed = FakeJobs::new(vec![Ok(JobPoll::Done(Vec::new()))]);
        let next = Fake::found("next", &["other@northwind.example"]);
        let cascade = async_cascade(&missed, &next);
        let attempt = Attempt::default();
        cascade
            .run_with(Field::Emails, &person(), far_deadline(), &attempt)
            .await;
        let attempt = attempt.next();
        let outcome = cascade
            .run_with(Field::Emails, &person(), far_deadline(), &attempt)
            .await;
        assert_eq!(values(&outcome), vec!["other@northwind.example"]);
        assert_eq!(*attempt.no_match.lock().unwrap(), vec!["async".to_string()]);
        assert_eq!(missed.counts(), (1, 1));

        let refused = FakeJobs::new(vec![Err(ProviderError::Unauthorized)]);
        let next = Fake::miss("next");
        let cascade = async_cascade(&refused, &next);
        let attempt = Attempt::default();
        cascade
            .run_with(Field::Emails, &person(), far_deadline(), &attempt)
            .await;
        let outcome = cascade
            .run_with(Field::Emails, &person(), far_deadline(), &attempt.next())
            .await;
        assert!(
            matches!(&outcome, CascadeOutcome::Failed { errors } if errors[0].0 == "async"),
            "{outcome:?}"
        );
        assert_eq!((refused.counts(), next.calls()), ((1, 1), 1));
    }

    #[tokio::test]
    async fn phones_use_the_phone_providers_and_the_default_region() {
        let email = Fake::found("email-only", &["ada@northwind.example"]);
        let phone = Fake::found("phones", &["020 7946 0958", "+1 (555) 010-0199"]);
        let cascade = Cascade::new(
            vec![email.clone() as Arc<dyn Provider>],
            vec![phone.clone() as Arc<dyn Provider>],
            TIMEOUT,
        )
        .with_default_region(Id::GB);
        let outcome = cascade.run(Field::Phones, &person(), far_deadline()).await;
        assert_eq!(values(&outcome), vec!["+442079460958"]);
        assert_eq!((email.calls(), phone.calls()), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_provider_is_cut_off_by_its_timeout() {
        let hanging = Fake::hanging("slow");
        let next = Fake::found("next", &["ada@northwind.example"]);
        let cascade = email_cascade(&[hanging.clone(), next.clone()]);
        let started = Instant::now();

        let outcome = cascade.run(Field::Emails, &person(), far_deadline()).await;

        assert!(matches!(&outcome, CascadeOutcome::Found { provider, .. } if provider == "next"));
        assert_eq!(started.elapsed(), TIMEOUT);
        assert_eq!((hanging.calls(), next.calls()), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_hanging_provider_fails_with_a_timeout() {
        let outcome = email_cascade(&[Fake::hanging("slow")])
            .run(Field::Emails, &person(), far_deadline())
            .await;
        assert_eq!(
            outcome.error_message().as_deref(),
            Some("All providers failed: slow: timed out")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_call_is_started_when_the_deadline_is_too_near() {
        let a = Fake::found("a", &["ada@northwind.example"]);
        let b = Fake::miss("b");
        let deadline = Instant::now() + TIMEOUT - Duration::from_millis(1);

        let outcome = email_cascade(&[a.clone(), b.clone()])
            .run(Field::Emails, &person(), deadline)
            .await;

        assert_eq!((a.calls(), b.calls()), (0, 0));
        assert_eq!(
            outcome,
            CascadeOutcome::Failed {
                errors: vec![
                    ("a".into(), NO_TIME_LEFT.into()),
                    ("b".into(), NO_TIME_LEFT.into()),
                ]
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_stops_the_cascade_after_a_slow_provider() {
        let slow = Fake::hanging("slow");
        let next = Fake::found("next", &["ada@northwind.example"]);
        // Room for one full provider timeout, not two.
        let deadline = Instant::now() + TIMEOUT + TIMEOUT / 2;

        let outcome = email_cascade(&[slow.clone(), next.clone()])
            .run(Field::Emails, &person(), deadline)
            .await;

        assert_eq!((slow.calls(), next.calls()), (1, 0));
        assert_eq!(
            outcome.error_message().as_deref(),
            Some(
                "All providers failed: slow: timed out; next: not started: too close to the deadline"
            )
        );
        assert!(Instant::now() <= deadline);
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn names(providers: &[Arc<dyn Provider>]) -> Vec<&'static str> {
        providers.iter().map(|p| p.name()).collect()
    }

    #[test]
    fn from_vars_uses_the_defaults() {
        let cascade = Cascade::from_vars(
            reqwest::Client::new(),
            vars(&[("HUNTER_API_KEY", "h"), ("PDL_API_KEY", "p")]),
        )
        .unwrap();
        assert_eq!(names(&cascade.emails), vec!["hunter", "pdl"]);
        assert_eq!(names(&cascade.phones), vec!["pdl"]);
        assert_eq!(cascade.provider_timeout(), Duration::from_secs(20));
        assert_eq!(cascade.default_region, Id::US);
    }

    #[test]
    fn from_vars_reads_lists_timeout_and_region() {
        let cascade = Cascade::from_vars(
            reqwest::Client::new(),
            vars(&[
                ("EMAIL_PROVIDERS", " PDL , hunter "),
                ("PHONE_PROVIDERS", ""),
                ("HUNTER_API_KEY", "h"),
                ("PDL_API_KEY", "p"),
                ("HUNTER_BASE_URL", "http://127.0.0.1:4010/hunter"),
                ("PDL_BASE_URL", "http://127.0.0.1:4010/pdl/"),
                ("PROVIDER_TIMEOUT_SECONDS", "2.5"),
                ("PHONE_DEFAULT_REGION", "gb"),
            ]),
        )
        .unwrap();
        assert_eq!(names(&cascade.emails), vec!["pdl", "hunter"]);
        assert!(cascade.phones.is_empty());
        assert_eq!(cascade.provider_timeout(), Duration::from_millis(2500));
        assert_eq!(cascade.default_region, Id::GB);
    }

    #[test]
    fn from_vars_needs_keys_only_for_listed_providers() {
        let cascade = Cascade::from_vars(
            reqwest::Client::new(),
            vars(&[("EMAIL_PROVIDERS", "pdl"), ("PDL_API_KEY", "p")]),
        )
        .unwrap();
        assert_eq!(names(&cascade.emails), vec!["pdl"]);

        let error = Cascade::from_vars(reqwest::Client::new(), vars(&[("PDL_API_KEY", "p")]))
            .err()
            .unwrap();
        assert_eq!(
            error,
            ConfigError::MissingApiKey {
                provider: "hunter",
                var: "HUNTER_API_KEY"
            }
        );
        let blank = Cascade::from_vars(
            reqwest::Client::new(),
            vars(&[("HUNTER_API_KEY", " "), ("PDL_API_KEY", "p")]),
        );
        assert!(matches!(blank, Err(ConfigError::MissingApiKey { .. })));
    }

    #[test]
    fn from_vars_rejects_bad_values() {
        let keys = [("HUNTER_API_KEY", "h"), ("PDL_API_KEY", "p")];
        let with = |extra: (&str, &str)| {
            let mut pairs = keys.to_vec();
            pairs.push(extra);
            Cascade::from_vars(reqwest::Client::new(), vars(&pairs)).err()
        };
        assert_eq!(
            with(("EMAIL_PROVIDERS", "hunter,clearbit")),
            Some(ConfigError::UnknownProvider {
                var: "EMAIL_PROVIDERS",
                name: "clearbit".into()
            })
        );
        assert_eq!(
            with(("PHONE_PROVIDERS", "pdl,PDL")),
            Some(ConfigError::DuplicateProvider {
                var: "PHONE_PROVIDERS",
                name: "pdl".into()
            })
        );
        for bad in ["0", "-3", "soon", "inf"] {
            assert!(
                matches!(
                    with(("PROVIDER_TIMEOUT_SECONDS", bad)),
                    Some(ConfigError::Invalid {
                        var: "PROVIDER_TIMEOUT_SECONDS",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            with(("PHONE_DEFAULT_REGION", "USA")),
            Some(ConfigError::Invalid {
                var: "PHONE_DEFAULT_REGION",
                ..
            })
        ));
        assert!(matches!(
            with(("PDL_BASE_URL", "api.peopledatalabs.com")),
            Some(ConfigError::Invalid {
                var: "PDL_BASE_URL",
                ..
            })
        ));
        let message = with(("EMAIL_PROVIDERS", "zoominfo")).unwrap().to_string();
        assert_eq!(
            message,
            "EMAIL_PROVIDERS: unknown provider \"zoominfo\" (known: hunter, pdl, prospeo, fullenrich, dropcontact)"
        );
    }

    #[test]
    fn from_vars_builds_prospeo_fullenrich_and_dropcontact() {
        let cascade = Cascade::from_vars(
            reqwest::Client::new(),
            vars(&[
                ("EMAIL_PROVIDERS", "Prospeo, dropcontact ,fullenrich,hunter"),
                ("PHONE_PROVIDERS", "fullenrich,prospeo,pdl"),
                ("HUNTER_API_KEY", "h"),
                ("PDL_API_KEY", "p"),
                ("PROSPEO_API_KEY", "pr"),
                ("FULLENRICH_API_KEY", "fe"),
                ("DROPCONTACT_API_KEY", "dc"),
                ("PROSPEO_BASE_URL", "http://127.0.0.1:4010/prospeo"),
                ("FULLENRICH_BASE_URL", "http://127.0.0.1:4010/fullenrich/"),
                ("DROPCONTACT_BASE_URL", "http://127.0.0.1:4010/dropcontact"),
            ]),
        )
        .unwrap();
        assert_eq!(
            names(&cascade.emails),
            vec!["prospeo", "dropcontact", "fullenrich", "hunter"]
        );
        assert_eq!(names(&cascade.phones), vec!["fullenrich", "prospeo", "pdl"]);
        // One instance per provider, shared by both lists.
        assert!(Arc::ptr_eq(&cascade.emails[0], &cascade.phones[1]));
        assert!(Arc::ptr_eq(&cascade.emails[2], &cascade.phones[0]));
    }

    #[test]
    fn new_providers_need_their_keys_and_valid_base_urls() {
        for (name, key_var, base_var) in [
            ("prospeo", "PROSPEO_API_KEY", "PROSPEO_BASE_URL"),
            ("fullenrich", "FULLENRICH_API_KEY", "FULLENRICH_BASE_URL"),
            ("dropcontact", "DROPCONTACT_API_KEY", "DROPCONTACT_BASE_URL"),
        ] {
            let missing = Cascade::from_vars(
                reqwest::Client::new(),
                vars(&[("EMAIL_PROVIDERS", name), ("PHONE_PROVIDERS", "")]),
            )
            .err();
            assert!(
                matches!(missing, Some(ConfigError::MissingApiKey { provider, var }) if provider == name && var == key_var),
                "{name}"
            );
            let bad_url = Cascade::from_vars(
                reqwest::Client::new(),
                vars(&[
                    ("EMAIL_PROVIDERS", name),
                    ("PHONE_PROVIDERS", ""),
                    (key_var, "k"),
                    (base_var, "ftp://example.test"),
                ]),
            )
            .err();
            assert!(
                matches!(bad_url, Some(ConfigError::Invalid { var, .. }) if var == base_var),
                "{name}"
            );
            let defaults = Cascade::from_vars(
                reqwest::Client::new(),
                vars(&[
                    ("EMAIL_PROVIDERS", name),
                    ("PHONE_PROVIDERS", ""),
                    (key_var, "k"),
                ]),
            )
            .unwrap();
            assert_eq!(names(&defaults.emails), vec![name]);
        }
        // Unlisted, they need nothing; the default lists stay hunter,pdl / pdl.
        let cascade = Cascade::from_vars(
            reqwest::Client::new(),
            vars(&[("HUNTER_API_KEY", "h"), ("PDL_API_KEY", "p")]),
        )
        .unwrap();
        assert_eq!(names(&cascade.emails), vec!["hunter", "pdl"]);
        assert_eq!(names(&cascade.phones), vec!["pdl"]);
    }

    /// Rate limited on its first `limited` calls, then finds one email.
    struct Flaky {
        limited: usize,
        retry_after: Option<Duration>,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Provider for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }

        fn can_search(&self, _field: Field, _person: &PersonQuery) -> bool {
            true
        }

        async fn find(
            &self,
            _field: Field,
            _person: &PersonQuery,
        ) -> Result<ProviderAnswer, ProviderError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.limited {
                return Err(ProviderError::RateLimited {
                    retry_after: self.retry_after,
                });
            }
            Ok(ProviderAnswer::Found(vec![RawContact {
                value: "ok@example.com".into(),
                kind: None,
                status: None,
                confidence: None,
            }]))
        }
    }

    fn flaky(limited: usize, retry_after: Option<Duration>) -> Arc<Flaky> {
        Arc::new(Flaky {
            limited,
            retry_after,
            calls: AtomicUsize::new(0),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_retry_after_is_waited_out_and_the_provider_asked_again() {
        let provider = flaky(1, Some(Duration::from_secs(2)));
        let cascade = Cascade::new(vec![provider.clone()], vec![], TIMEOUT);
        let started = Instant::now();
        let outcome = cascade.run(Field::Emails, &person(), far_deadline()).await;
        assert!(
            matches!(outcome, CascadeOutcome::Found { .. }),
            "{outcome:?}"
        );
        assert_eq!(provider.calls.load(Ordering::SeqCst), 2);
        assert!(started.elapsed() >= Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_retry_after_or_a_spent_budget_moves_on() {
        let long = flaky(1, Some(Duration::from_secs(30)));
        let next = Fake::found("next", &["next@example.com"]);
        let cascade = Cascade::new(vec![long.clone(), next.clone()], vec![], TIMEOUT);
        let outcome = cascade.run(Field::Emails, &person(), far_deadline()).await;
        assert_eq!(values(&outcome), ["next@example.com"]);
        assert_eq!((long.calls.load(Ordering::SeqCst), next.calls()), (1, 1));

        let stubborn = flaky(5, None);
        let cascade = Cascade::new(vec![stubborn.clone()], vec![], TIMEOUT).with_retries(2);
        let outcome = cascade.run(Field::Emails, &person(), far_deadline()).await;
        assert_eq!(
            outcome.error_message().as_deref(),
            Some("All providers failed: flaky: rate limited")
        );
        assert_eq!(stubborn.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_wait_runs_past_the_deadline() {
        let provider = flaky(1, Some(Duration::from_secs(2)));
        let cascade = Cascade::new(vec![provider.clone()], vec![], TIMEOUT);
        let deadline = Instant::now() + TIMEOUT + Duration::from_secs(1);
        let outcome = cascade.run(Field::Emails, &person(), deadline).await;
        assert!(
            matches!(outcome, CascadeOutcome::Failed { .. }),
            "{outcome:?}"
        );
        assert_eq!(provider.calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn from_vars_reads_per_provider_budgets() {
        let cascade = Cascade::from_vars(
            reqwest::Client::new(),
            vars(&[
                ("HUNTER_API_KEY", "h"),
                ("PDL_API_KEY", "p"),
                ("PROVIDER_TIMEOUT_SECONDS", "10"),
                ("PROVIDER_RETRIES", "2"),
                ("PDL_TIMEOUT_SECONDS", "3.5"),
                ("HUNTER_RETRIES", "0"),
            ]),
        )
        .unwrap();
        let budget = |timeout: f64, retries| Budget {
            timeout: Duration::from_secs_f64(timeout),
            retries,
        };
        assert_eq!(cascade.budget("pdl"), budget(3.5, 2));
        assert_eq!(cascade.budget("hunter"), budget(10.0, 0));
        assert_eq!(cascade.budget("prospeo"), budget(10.0, 2));
        let error = Cascade::from_vars(
            reqwest::Client::new(),
            vars(&[
                ("HUNTER_API_KEY", "h"),
                ("PDL_API_KEY", "p"),
                ("PDL_RETRIES", "many"),
            ]),
        );
        assert!(matches!(
            error,
            Err(ConfigError::Invalid {
                var: "PDL_RETRIES",
                ..
            })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn each_provider_is_cut_off_by_its_own_timeout() {
        let slow = Fake::hanging("slow");
        let next = Fake::found("next", &["next@example.com"]);
        let cascade = Cascade::new(vec![slow.clone(), next.clone()], vec![], TIMEOUT).with_budget(
            "slow",
            Budget {
                timeout: Duration::from_secs(2),
                retries: 0,
            },
        );
        let started = Instant::now();
        let outcome = cascade.run(Field::Emails, &person(), far_deadline()).await;
        assert_eq!(values(&outcome), ["next@example.com"]);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!((slow.calls(), next.calls()), (1, 1));
    }
}
