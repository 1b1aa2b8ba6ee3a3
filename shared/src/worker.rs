//! The worker use case: run one enrichment job, and an SQS batch of them with partial batch
//! failures (AWS docs, "Handling errors for an SQS event source in Lambda":
//! `ReportBatchItemFailures`).

use std::time::Duration;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::Utc;
use serde::Deserialize;
use tokio::time::Instant;
use uuid::Uuid;

use crate::budget;
use crate::config::Config;
use crate::domain::{
    CacheUse, ContactPoint, Enrichment, Field, Job, JobBatch, Person, Status, TimeoutCheck,
    timestamp, timestamp_before,
};
use crate::identity::{IdentityKeys, email_key};
use crate::limiter::{Admission, CountedCall, Lane, Limiter, ProviderSlot};
use crate::providers::PersonQuery;
use crate::providers::cascade::{Cascade, CascadeJournal, CascadeOutcome};
use crate::queue::SqsJobQueue;
use crate::store::{
    CacheEntry, CacheLease, Claim, Completion, EnrichmentRecord, HeldValues, Store, StoreError,
};

/// The `error` of an enrichment whose job failed on every delivery (its credits are refunded).
pub const GAVE_UP_MESSAGE: &str =
    "The enrichment could not be processed; its credits were refunded";

/// The `error` of an enrichment whose person was deleted before the job ran.
pub const PERSON_GONE_MESSAGE: &str = "Person not found";

/// What became of one job.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    /// Not this worker's to run (duplicate delivery, replaced, already done, or the claim was
    /// lost): acknowledged without a provider call or a write.
    Dropped,
    /// The outcome was written; the enrichment as the client will now see it.
    Completed(Box<Enrichment>),
    /// Another worker holds the job or is running the providers for the same person (nothing
    /// was written and no provider asked), or an asynchronous provider works on the job
    /// recorded in its journal: the job is to run again after `delay`.
    Deferred {
        /// When to look at the job again: when the other worker's lease lapses, at most
        /// [`budget::MAX_DEFER`].
        delay: Duration,
        /// The provider call slot the job was deferred to ([`crate::limiter`]): it comes back
        /// with the job, which then calls without reserving again.
        slot: Option<ProviderSlot>,
    },
}

/// What the worker function is invoked with: an SQS batch from the event source mapping (the
/// default), or one job from the Step Functions orchestrator's Task state (the execution input).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum WorkerEvent {
    /// `{"Records": [...]}`.
    Sqs(SqsEvent),
    /// `{"enrichmentId", "orgId", "personId", "field"}`.
    Job(Job),
}

/// Why a job must be retried (the message is reported as a batch item failure).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The message body is not a [`Job`]: it goes to the DLQ after the queue's receive limit.
    #[error("message body is not a job: {0}")]
    BadMessage(String),
    /// DynamoDB failed; the claim was given up so that a redelivery can run the job.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A batch's jobs could not all be sent on: the message is retried (a job sent twice runs
    /// once).
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    /// A deferred job from SQS could not be sent back with its delay: the message is reported
    /// failed and comes back after the retry delay.
    #[error("job deferred for {0:?} could not be sent back")]
    Deferred(Duration),
}

fn query_of(person: &Person) -> PersonQuery {
    PersonQuery {
        first_name: person.first_name.clone(),
        last_name: person.last_name.clone(),
        company_name: person.company_name.clone(),
        company_domain: person.company_domain.clone(),
        linkedin_url: person.linkedin_url.clone(),
    }
}

/// What single flight decided for a job.
enum SingleFlight {
    /// Another job's fresh result: no provider call.
    Cached(CacheEntry),
    /// This job runs the providers and holds the lease.
    Leased,
    /// Another worker runs the providers for this person; its lease lapses at `until_unix`.
    Busy { until_unix: i64 },
}

/// The SQS message a job came in, when it came from the event source mapping: the worker keeps
/// it invisible while it holds the job (a heartbeat), so that it comes back soon after a crash.
struct Delivery<'a> {
    queue: &'a SqsJobQueue,
    receipt_handle: &'a str,
}

/// A claimed job's journal and heartbeat, kept on the enrichment item: which providers answered
/// "no match", and before each provider call the renewal of the claim, of the global cache
/// lease and of the message's visibility.
struct Journal<'a> {
    store: &'a Store,
    record: &'a EnrichmentRecord,
    token: &'a str,
    lease: Option<(&'a str, &'a str)>,
    delivery: Option<&'a Delivery<'a>>,
    lease_margin: Duration,
    /// How long a provider job stays usable by the next lease holder: the maximum age.
    max_age: Duration,
    /// The providers' shared rate limits.
    limiter: &'a Limiter,
    /// The call slot the job came back for, if it was deferred to one.
    held: Option<&'a ProviderSlot>,
    /// The job's line in the providers' call queues: the bulks' for a bulk enrichment's job.
    lane: Lane,
    /// The slot the job is now deferred to (set by [`CascadeJournal::admit`]).
    deferred_to: std::sync::Mutex<Option<ProviderSlot>>,
    /// The call the queue counted in its windows with its slot, for the gate (set by
    /// [`CascadeJournal::admit`], taken by [`CascadeJournal::gate`]).
    counted: std::sync::Mutex<Option<CountedCall>>,
}

impl Journal<'_> {
    /// Keeps `slot` for the job's message and returns the delay that brings the job back
    /// inside the slot's calendar second ([`crate::limiter::deferral`]).
    fn defer_to(&self, slot: ProviderSlot) -> Duration {
        let delay = crate::limiter::deferral(slot.at_ms, Utc::now().timestamp_millis());
        if let Ok(mut deferred) = self.deferred_to.lock() {
            *deferred = Some(slot);
        }
        delay
    }

    /// The job's answer to the limiter's `admission` (of a call to `provider`): `Ok(failures)`
    /// to go on, or the delay to defer the job (`failed`: what could not be done, on a
    /// DynamoDB error, after which the job comes back in a second).
    fn admitted(
        &self,
        provider: &str,
        admission: Result<Admission, StoreError>,
        failed: &str,
    ) -> Result<u32, Duration> {
        match admission {
            Ok(Admission::Go { failures }) => Ok(failures),
            Ok(Admission::Counted(call)) => {
                let failures = call.failures;
                if let Ok(mut counted) = self.counted.lock() {
                    *counted = Some(call);
                }
                Ok(failures)
            }
            Ok(Admission::Defer(slot)) => Err(self.defer_to(slot)),
            Ok(Admission::Retry { at_ms }) => Err(crate::limiter::deferral(
                at_ms,
                Utc::now().timestamp_millis(),
            )
            .max(Duration::from_secs(1))),
            Err(e) => {
                tracing::warn!(provider, error = %e, "could not {failed}; deferred");
                Err(Duration::from_secs(1))
            }
        }
    }
}

#[async_trait::async_trait]
impl CascadeJournal for Journal<'_> {
    fn answered(&self) -> &[String] {
        &self.record.providers_answered
    }

    async fn record_no_match(&self, provider: &str) {
        if let Err(e) = self
            .store
            .record_no_match(&self.record.enrichment, self.token, provider)
            .await
        {
            tracing::warn!(provider, error = %e, "could not record the provider's no match");
        }
    }

    async fn before_call(&self, provider: &str, span: Duration) -> bool {
        let lease = span + self.lease_margin;
        let enrichment = &self.record.enrichment;
        match self
            .store
            .renew_claim(enrichment, self.token, &timestamp_after(lease))
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(enrichment_id = %enrichment.id, provider, "claim lost: the enrichment ended or another worker took the job");
                return false;
            }
            Err(e) => {
                // The claim is still ours for a while: go on rather than waste the work done.
                tracing::warn!(enrichment_id = %enrichment.id, error = %e, "could not renew the claim");
            }
        }
        if let Some((fingerprint, owner)) = self.lease {
            let until = Utc::now().timestamp().saturating_add(secs(lease));
            if let Err(e) = self
                .store
                .renew_cache_lease(fingerprint, enrichment.field, owner, until)
                .await
            {
                tracing::warn!(error = %e, "could not renew the global cache lease");
            }
        }
        if let Some(delivery) = self.delivery {
            delivery
                .queue
                .set_visibility(delivery.receipt_handle, lease)
                .await;
        }
        true
    }

    /// Jobs are kept on the enrichment item: a waiting enrichment is sent back to the queue
    /// with a delay, or (Step Functions) handed back to the state machine to wait.
    fn keeps_jobs(&self) -> bool {
        true
    }

    fn job_of(&self, provider: &str) -> Option<&str> {
        self.record.provider_job(provider)
    }

    async fn inherited_job(&self, provider: &str) -> Option<String> {
        let (fingerprint, _) = self.lease?;
        let field = self.record.enrichment.field;
        let now = Utc::now().timestamp();
        let job_id = match self
            .store
            .lease_job(fingerprint, field, provider, now)
            .await
        {
            Ok(job) => job?,
            Err(e) => {
                tracing::warn!(provider, error = %e, "could not read the cache lease's jobs");
                return None;
            }
        };
        tracing::info!(
            provider,
            job_id,
            "continuing the job another enrichment of this person left running"
        );
        let recorded = self
            .store
            .record_provider_job(&self.record.enrichment, self.token, provider, &job_id)
            .await;
        matches!(recorded, Ok(true)).then_some(job_id)
    }

    fn failed_before(&self, provider: &str) -> Option<&str> {
        self.record.provider_failure(provider)
    }

    fn limits(&self, provider: &str) -> bool {
        self.limiter.limits(provider)
    }

    async fn admit(&self, provider: &str) -> Result<(), Duration> {
        let admission = self.limiter.admit(provider, self.held, self.lane).await;
        self.admitted(provider, admission, "reserve a call slot")
            .map(|_| ())
    }

    async fn gate(&self, provider: &str) -> Result<u32, Duration> {
        let counted = self
            .counted
            .lock()
            .ok()
            .and_then(|mut counted| counted.take());
        let admission = self
            .limiter
            .gate(provider, self.lane, counted.as_ref())
            .await;
        self.admitted(provider, admission, "count the call in its window")
    }

    async fn unavailable(
        &self,
        provider: &str,
        failures: u32,
        retry_after: Option<Duration>,
    ) -> Duration {
        self.limiter
            .unavailable(provider, failures, retry_after)
            .await
    }

    async fn available(&self, provider: &str, failures: u32) {
        self.limiter.available(provider, failures).await
    }

    async fn record_failure(&self, provider: &str, error: &str) {
        if let Err(e) = self
            .store
            .record_provider_failure(&self.record.enrichment, self.token, provider, error)
            .await
        {
            tracing::warn!(provider, error = %e, "could not record the provider's failure");
        }
    }

    async fn record_job(&self, provider: &str, job_id: &str) -> bool {
        if let Some((fingerprint, owner)) = self.lease {
            // For the next lease holder, should this enrichment end before the job does.
            let until = Utc::now().timestamp().saturating_add(secs(self.max_age));
            let field = self.record.enrichment.field;
            if let Err(e) = self
                .store
                .record_lease_job(fingerprint, field, owner, (provider, job_id), until)
                .await
            {
                tracing::warn!(provider, error = %e, "could not record the job on the cache lease");
            }
        }
        match self
            .store
            .record_provider_job(&self.record.enrichment, self.token, provider, job_id)
            .await
        {
            Ok(recorded) => recorded,
            Err(e) => {
                // Unrecorded, a later attempt would submit again (and pay twice): stop, and let
                // the redelivery find the provider's job lost instead.
                tracing::error!(provider, job_id, error = %e, "could not record the provider's job");
                false
            }
        }
    }
}

/// The value index entries of a person with `keys` whose `field` list becomes `contacts` (what
/// it held and what was added): under each identity key and each email's key, pointing at the
/// cache item `cache_key` (see [`Store::suppress`]).
fn held(
    keys: &IdentityKeys,
    field: Field,
    contacts: &[ContactPoint],
    cache_key: Option<&str>,
) -> HeldValues {
    let mut index = keys.all();
    if field == Field::Emails {
        index.extend(contacts.iter().filter_map(|c| email_key(&c.value)));
    }
    HeldValues {
        keys: index,
        values: contacts.iter().map(|c| c.value.clone()).collect(),
        cache_key: cache_key.map(str::to_string),
    }
}

/// Whole seconds of `d`, saturated.
fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The ISO 8601 time `d` from now.
fn timestamp_after(d: Duration) -> String {
    timestamp(Utc::now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
}

/// How long a deferred job waits: until the other worker's lease lapses, within 1 s and
/// [`budget::MAX_DEFER`].
fn defer_delay(until_unix: i64) -> Duration {
    let left = until_unix.saturating_sub(Utc::now().timestamp()).max(1);
    Duration::from_secs(left.unsigned_abs()).min(budget::MAX_DEFER)
}

/// The provider call slot a deferred job's message carries (`"slot"`, beside the job's fields).
#[derive(Deserialize)]
struct HeldSlot {
    slot: Option<ProviderSlot>,
}

/// Runs enrichment jobs. Build once per process.
pub struct Worker {
    store: Store,
    cascade: Cascade,
    limiter: Limiter,
    config: Config,
    queue: Option<SqsJobQueue>,
    bulk_queue: Option<SqsJobQueue>,
}

impl Worker {
    /// A worker over the table and the provider cascade.
    pub fn new(store: Store, cascade: Cascade, config: Config) -> Self {
        Self {
            limiter: Limiter::new(store.clone(), cascade.limits()),
            store,
            cascade,
            config,
            queue: None,
            bulk_queue: None,
        }
    }

    /// Time this process's jobs waited in the worker for a provider call slot (each wait at
    /// most [`crate::limiter::MAX_SLEEP`]; a later slot defers the job instead).
    pub fn slot_waits(&self) -> Duration {
        self.limiter.slept()
    }

    /// The same worker fed by the SQS jobs queue: it keeps the messages it works on invisible
    /// while it holds them, sends deferred jobs back with a delay, and brings failed records
    /// back after a growing delay instead of the queue's visibility timeout.
    pub fn with_queue(mut self, queue: SqsJobQueue) -> Self {
        self.queue = Some(queue);
        self
    }

    /// The same worker fed by the bulk queue too (`BULK_QUEUE_URL`): a record that came from it
    /// (its `eventSourceARN` names the bulk queue) is kept, deferred and retried there, so that
    /// a bulk's jobs stay behind the bulk queue's own concurrency limit.
    pub fn with_bulk_queue(mut self, queue: SqsJobQueue) -> Self {
        self.bulk_queue = Some(queue);
        self
    }

    /// The queue `record` came from: the bulk queue when its `eventSourceARN` ends with the bulk
    /// queue's name, else the jobs queue.
    fn queue_of(&self, record: &SqsMessage) -> Option<&SqsJobQueue> {
        let from_bulk = self.bulk_queue.as_ref().filter(|bulk| {
            record
                .event_source_arn
                .as_deref()
                .and_then(|arn| arn.rsplit(':').next())
                .is_some_and(|name| name == bulk.name())
        });
        from_bulk.or(self.queue.as_ref())
    }

    /// Runs one job handed over directly (Step Functions, tests) before `deadline`: see
    /// [`Worker::run_delivered`].
    pub async fn run(&self, job: &Job, deadline: Instant) -> Result<JobOutcome, JobError> {
        self.run_delivered(job, deadline, None, None).await
    }

    /// Runs one job before `deadline` (the Lambda's): claims it, serves it from the global cache
    /// or runs the cascade, and writes the outcome, the person's merged contacts and the cache
    /// entry in one transaction. A `pending` enrichment past the maximum age is timed out and
    /// refunded instead (the status function's rule). A job that a live worker holds, or whose
    /// person another worker is enriching, is [`JobOutcome::Deferred`].
    ///
    /// The claim (and the global cache lease, and the message's visibility when the job came
    /// from SQS) lasts [`budget::INITIAL_CLAIM_LEASE`], then is renewed before each provider call
    /// for that call's budget: a worker that dies is replaced within about one provider budget,
    /// and the replacement resumes after the providers that already answered.
    ///
    /// Every line it logs is in the span `job` with the field `enrichment_id` (under the Lambda
    /// runtime's span with the `requestId`).
    #[tracing::instrument(name = "job", skip_all, fields(enrichment_id = %job.enrichment_id))]
    async fn run_delivered(
        &self,
        job: &Job,
        deadline: Instant,
        delivery: Option<&Delivery<'_>>,
        held_slot: Option<&ProviderSlot>,
    ) -> Result<JobOutcome, JobError> {
        let token = Uuid::new_v4().to_string();
        let now = Utc::now();
        let claimed = match self
            .store
            .claim(
                job,
                &token,
                &timestamp(now),
                &timestamp_after(budget::INITIAL_CLAIM_LEASE),
            )
            .await?
        {
            Claim::Claimed(record) => record,
            Claim::Busy { until } => {
                let until_unix = chrono::DateTime::parse_from_rfc3339(&until)
                    .map(|at| at.timestamp())
                    .unwrap_or_else(|_| now.timestamp());
                tracing::info!(enrichment_id = %job.enrichment_id, until = %until, "job held by a live worker; deferred");
                return Ok(JobOutcome::Deferred {
                    delay: defer_delay(until_unix),
                    slot: held_slot.cloned(),
                });
            }
            Claim::Gone => {
                tracing::info!(enrichment_id = %job.enrichment_id, "job dropped: not pending");
                return Ok(JobOutcome::Dropped);
            }
        };
        if let Some(delivery) = delivery {
            delivery
                .queue
                .set_visibility(delivery.receipt_handle, budget::INITIAL_CLAIM_LEASE)
                .await;
        }
        if claimed.enrichment.created_at < timestamp_before(now, self.config.max_age) {
            let ended = self.store.mark_timeout(&claimed, &timestamp(now)).await?;
            tracing::warn!(enrichment_id = %ended.id, status = %ended.status.as_str(), "job ran past the maximum age");
            return Ok(JobOutcome::Completed(Box::new(ended)));
        }
        match self
            .run_claimed(&claimed, job, &token, deadline, delivery, held_slot)
            .await
        {
            Ok(JobOutcome::Completed(done)) => Ok(JobOutcome::Completed(done)),
            Ok(other) => {
                self.release_claim(&claimed, &token).await;
                Ok(other)
            }
            Err(e) => {
                self.release_claim(&claimed, &token).await;
                Err(e.into())
            }
        }
    }

    async fn release_claim(&self, claimed: &EnrichmentRecord, token: &str) {
        if let Err(release) = self.store.release_claim(&claimed.enrichment, token).await {
            tracing::error!(error = %release, "could not release the claim; it lapses by itself");
        }
    }

    async fn run_claimed(
        &self,
        claimed: &EnrichmentRecord,
        job: &Job,
        token: &str,
        deadline: Instant,
        delivery: Option<&Delivery<'_>>,
        held_slot: Option<&ProviderSlot>,
    ) -> Result<JobOutcome, StoreError> {
        let (cache, bulk) = (job.cache, job.bulk);
        let enrichment = &claimed.enrichment;
        let field = enrichment.field;
        let Some(person) = self
            .store
            .get_person(&enrichment.org_id, enrichment.entity_id)
            .await?
        else {
            return self
                .complete(claimed, token, Completion::failed(PERSON_GONE_MESSAGE))
                .await;
        };
        let cascade_deadline = deadline
            .checked_sub(budget::WRITE_MARGIN)
            .unwrap_or(deadline);
        let keys = IdentityKeys::of(&person);
        // Before the cache and any provider: a suppressed identity or email ends the job.
        let mut identity = keys.all();
        identity.extend(person.emails.iter().filter_map(|c| email_key(&c.value)));
        if self.is_suppressed(enrichment, &identity).await? {
            return self
                .complete(claimed, token, Completion::suppressed())
                .await;
        }
        let fingerprint = keys.primary().map(str::to_string);
        let owner = enrichment.id.to_string();
        let mut leased = false;
        // A fresh request skips single flight: its answer replaces the entry in any case.
        if let Some(fp) = fingerprint.as_ref().filter(|_| cache == CacheUse::Allowed) {
            match self.single_flight(fp, field, &owner).await? {
                SingleFlight::Cached(entry) if !self.servable(&entry, &keys, field).await? => {
                    // Found for an identity this person does not fully share: the providers
                    // are asked (without the lease: the item holds a fresh entry), and their
                    // answer replaces it.
                    tracing::warn!(enrichment_id = %enrichment.id, global_enrichment_id = %entry.id, "global cache entry not served: the person's identity disagrees with what it was found with");
                }
                SingleFlight::Cached(entry) => {
                    tracing::info!(enrichment_id = %enrichment.id, global_enrichment_id = %entry.id, data_found = !entry.contacts.is_empty(), "global cache hit");
                    let contacts = (!entry.contacts.is_empty())
                        .then(|| person.merged_contacts(field, &entry.contacts));
                    let completion = Completion {
                        held: contacts
                            .as_deref()
                            .map(|merged| held(&keys, field, merged, Some(fp))),
                        ..Completion::from_cache(&entry, contacts)
                    };
                    let done = self.complete(claimed, token, completion).await;
                    if let Ok(JobOutcome::Completed(_)) = &done {
                        crate::metrics::cache_hit(field);
                    }
                    return done;
                }
                SingleFlight::Leased => leased = true,
                SingleFlight::Busy { until_unix } => {
                    tracing::info!(enrichment_id = %enrichment.id, fingerprint = %fp, "another job is enriching this person; deferred");
                    return Ok(JobOutcome::Deferred {
                        delay: defer_delay(until_unix),
                        slot: held_slot.cloned(),
                    });
                }
            }
        }
        let journal = Journal {
            store: &self.store,
            record: claimed,
            token,
            lease: fingerprint
                .as_deref()
                .filter(|_| leased)
                .map(|fp| (fp, owner.as_str())),
            delivery,
            lease_margin: self.config.lease_margin,
            max_age: self.config.max_age,
            limiter: &self.limiter,
            held: held_slot,
            lane: if bulk { Lane::Bulk } else { Lane::Interactive },
            deferred_to: std::sync::Mutex::new(None),
            counted: std::sync::Mutex::new(None),
        };
        let outcome = self
            .cascade
            .run_with(field, &query_of(&person), cascade_deadline, &journal)
            .await;
        let now = Utc::now();
        let cache_entry = |contacts: Vec<ContactPoint>,
                           provider: String,
                           ttl: Duration,
                           matched_on: Vec<String>| {
            fingerprint.clone().map(|fp| {
                let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
                let entry = CacheEntry {
                    id: Uuid::new_v4(),
                    contacts,
                    provider,
                    found_at: timestamp(now),
                    expires_at: now.timestamp().saturating_add(ttl),
                    matched_on,
                };
                (fp, entry)
            })
        };
        let completion = match outcome {
            CascadeOutcome::Found {
                provider,
                contacts,
                basis,
            } => {
                let found: Vec<String> = contacts
                    .iter()
                    .filter(|_| field == Field::Emails)
                    .filter_map(|c| email_key(&c.value))
                    .collect();
                if self.is_suppressed(enrichment, &found).await? {
                    // The address found is a suppressed person's: neither stored nor cached.
                    if leased && let Some(fp) = &fingerprint {
                        self.release_cache_lease(fp, field, &owner).await;
                    }
                    return self
                        .complete(claimed, token, Completion::suppressed())
                        .await;
                }
                let merged = person.merged_contacts(field, &contacts);
                let index = held(&keys, field, &merged, fingerprint.as_deref());
                let cache = cache_entry(
                    contacts,
                    provider,
                    self.config.cache_ttl,
                    keys.matched_by(basis),
                );
                Completion {
                    held: Some(index),
                    ..Completion::searched(Some(merged), cache)
                }
            }
            CascadeOutcome::NoMatch => {
                // Every provider asked answered: "nobody knows this person" is worth keeping.
                // Each provider searched with what the person carried: the miss holds for
                // people with every one of those keys.
                let cache = (!self.config.cache_miss_ttl.is_zero())
                    .then(|| {
                        cache_entry(
                            Vec::new(),
                            String::new(),
                            self.config.cache_miss_ttl,
                            keys.all(),
                        )
                    })
                    .flatten();
                Completion::searched(None, cache)
            }
            failed @ CascadeOutcome::Failed { .. } => {
                Completion::failed(failed.error_message().unwrap_or_default())
            }
            CascadeOutcome::Stopped => {
                if leased && let Some(fp) = &fingerprint {
                    self.release_cache_lease(fp, field, &owner).await;
                }
                return Ok(JobOutcome::Dropped);
            }
            CascadeOutcome::Waiting { delay, .. } => {
                // No worker waits on the provider: the job comes back after `delay`, and the
                // cache lease outlives it so that another org's job for the same person waits
                // for this answer rather than submitting a second paid job.
                if leased && let Some(fp) = &fingerprint {
                    let until = Utc::now()
                        .timestamp()
                        .saturating_add(secs(delay + self.config.lease_margin));
                    if let Err(e) = self.store.renew_cache_lease(fp, field, &owner, until).await {
                        tracing::warn!(error = %e, "could not extend the global cache lease");
                    }
                }
                let slot = journal.deferred_to.lock().ok().and_then(|mut s| s.take());
                return Ok(JobOutcome::Deferred { delay, slot });
            }
        };
        let caches = completion.cache.is_some();
        let result = self.complete(claimed, token, completion).await;
        // The lease goes with the cache entry written in the same transaction; otherwise it is
        // given up at once so that workers waiting on it do not wait for it to expire.
        let cached = caches && matches!(result, Ok(JobOutcome::Completed(_)));
        if leased
            && !cached
            && let Some(fp) = &fingerprint
        {
            self.release_cache_lease(fp, field, &owner).await;
        }
        result
    }

    /// Whether one of `keys` is suppressed (README, "Suppression and erasure"): one
    /// `BatchGetItem`, none for no keys.
    async fn is_suppressed(
        &self,
        enrichment: &Enrichment,
        keys: &[String],
    ) -> Result<bool, StoreError> {
        let suppressed = self.store.suppressed(keys).await?;
        if !suppressed.is_empty() {
            tracing::info!(enrichment_id = %enrichment.id, "person suppressed: finished without data, refunded");
        }
        Ok(!suppressed.is_empty())
    }

    async fn release_cache_lease(&self, fingerprint: &str, field: Field, owner: &str) {
        if let Err(e) = self
            .store
            .release_cache_lease(fingerprint, field, owner)
            .await
        {
            tracing::warn!(error = %e, "could not release the cache lease; it lapses by itself");
        }
    }

    /// Single flight across orgs for one real person and field: the fresh global cache entry,
    /// the lease to run the providers (for [`budget::INITIAL_CLAIM_LEASE`], renewed before each
    /// provider call), or, while another live job holds the lease, when it lapses. One
    /// conditional `UpdateItem`: a waiting job is deferred, never held polling.
    async fn single_flight(
        &self,
        fingerprint: &str,
        field: Field,
        owner: &str,
    ) -> Result<SingleFlight, StoreError> {
        let now = Utc::now().timestamp();
        let until = now.saturating_add(secs(budget::INITIAL_CLAIM_LEASE));
        Ok(
            match self
                .store
                .acquire_cache_lease(fingerprint, field, owner, now, until)
                .await?
            {
                CacheLease::Acquired => SingleFlight::Leased,
                CacheLease::Cached(entry) => SingleFlight::Cached(*entry),
                CacheLease::Busy { until_unix } => SingleFlight::Busy { until_unix },
            },
        )
    }

    /// Whether a fresh cache `entry` (found under the person's primary key) may be served to a
    /// person with `keys` (README, "Global cache"): the person has every key the entry was found
    /// with, and the person's other key does not hold a different identity's entry. One more
    /// `GetItem` only for a person with both keys served an entry matched on one.
    async fn servable(
        &self,
        entry: &CacheEntry,
        keys: &IdentityKeys,
        field: Field,
    ) -> Result<bool, StoreError> {
        if !keys.agrees_with(&entry.matched_on) {
            return Ok(false);
        }
        let Some(other) = keys
            .all()
            .into_iter()
            .find(|key| !entry.matched_on.contains(key))
        else {
            return Ok(true);
        };
        let now = Utc::now().timestamp();
        Ok(match self.store.cache_entry_at(&other, field, now).await? {
            Some(elsewhere) => elsewhere.id == entry.id,
            None => true,
        })
    }

    async fn complete(
        &self,
        record: &EnrichmentRecord,
        token: &str,
        mut completion: Completion,
    ) -> Result<JobOutcome, StoreError> {
        let enrichment = &record.enrichment;
        let now = timestamp(Utc::now());
        completion.refund_miss = self.config.refund_misses;
        let written = match self.store.complete(record, token, &completion, &now).await {
            Err(StoreError::Suppressed) => {
                // Suppressed between the check and the write: nothing of it is kept.
                tracing::info!(enrichment_id = %enrichment.id, "person suppressed meanwhile: finished without data, refunded");
                completion = Completion {
                    refund_miss: self.config.refund_misses,
                    ..Completion::suppressed()
                };
                self.store
                    .complete(record, token, &completion, &now)
                    .await?
            }
            other => other?,
        };
        if !written {
            tracing::warn!(enrichment_id = %enrichment.id, "claim lost before the outcome was written");
            return Ok(JobOutcome::Dropped);
        }
        let done = Enrichment {
            status: completion.status,
            data_found: completion.data_found,
            error: completion.error,
            global_enrichment_id: completion.global_enrichment_id,
            updated_at: now,
            ..enrichment.clone()
        };
        tracing::info!(enrichment_id = %done.id, status = %done.status.as_str(), data_found = ?done.data_found, "enrichment completed");
        Ok(JobOutcome::Completed(Box::new(done)))
    }

    /// Handles one invocation: an SQS batch answers with its batch item failures; a Step
    /// Functions job answers `{"enrichmentId", "outcome"}` (`dropped`, or the status it ended
    /// with), or for a deferred job the job itself with `"outcome": "deferred"` and
    /// `"delaySeconds"`, which the state machine waits before handing it back (`template.yaml`,
    /// `Deferred`/`WaitToRetry`); it fails otherwise, so that its retry policy runs it again.
    pub async fn handle(
        &self,
        event: WorkerEvent,
        deadline: Instant,
    ) -> Result<serde_json::Value, JobError> {
        match event {
            WorkerEvent::Sqs(event) => {
                let response = self.run_batch(&event.records, deadline).await;
                serde_json::to_value(response).map_err(|e| JobError::BadMessage(e.to_string()))
            }
            WorkerEvent::Job(job) => {
                let outcome = match self.run(&job, deadline).await? {
                    JobOutcome::Dropped => "dropped".to_string(),
                    JobOutcome::Completed(e) => e.status.as_str().to_string(),
                    JobOutcome::Deferred { delay, .. } => {
                        // The slot is not handed to the state machine: the job reserves
                        // again when it comes back.
                        let mut deferred = serde_json::to_value(&job)
                            .map_err(|e| JobError::BadMessage(e.to_string()))?;
                        deferred["outcome"] = "deferred".into();
                        deferred["delaySeconds"] = delay.as_secs().max(1).into();
                        return Ok(deferred);
                    }
                };
                Ok(serde_json::json!({"enrichmentId": job.enrichment_id, "outcome": outcome}))
            }
        }
    }

    /// Sends each job of a batch or bulk's [`JobBatch`] on as its own message of the queue it
    /// came from, now that its hold has ended (see [`crate::batch`]): only the jobs whose
    /// enrichment exists and is still `pending` (one `BatchGetItem` per 100 jobs), so that the
    /// jobs of a request that was refused or undone, or that lost a race to another request,
    /// never queue up in front of others.
    async fn fan_out(&self, batch: &JobBatch, queue: Option<&SqsJobQueue>) -> Result<(), JobError> {
        let queue = queue.ok_or_else(|| {
            JobError::BadMessage("a job batch came without a queue to send its jobs to".into())
        })?;
        let live: Vec<Job> = self
            .pending(&batch.jobs)
            .await?
            .into_iter()
            .map(|(job, _)| job)
            .collect();
        queue.enqueue_all(&live).await?;
        tracing::info!(
            jobs = batch.jobs.len(),
            sent = live.len(),
            "sent a batch's live jobs on"
        );
        Ok(())
    }

    /// The jobs of `jobs` whose enrichment exists and is still `pending`, with it: one
    /// `BatchGetItem` per org and 100 jobs.
    async fn pending(&self, jobs: &[Job]) -> Result<Vec<(Job, EnrichmentRecord)>, StoreError> {
        let mut found = Vec::with_capacity(jobs.len());
        let mut orgs: Vec<&str> = jobs.iter().map(|j| j.org_id.as_str()).collect();
        orgs.sort_unstable();
        orgs.dedup();
        for org in orgs {
            let keys: Vec<(Uuid, Field)> = jobs
                .iter()
                .filter(|j| j.org_id == org)
                .map(|j| (j.person_id, j.field))
                .collect();
            for record in self.store.get_enrichments(org, &keys).await? {
                let job = jobs
                    .iter()
                    .find(|j| j.org_id == org && j.enrichment_id == record.enrichment.id);
                if let Some(job) = job
                    && record.enrichment.status == Status::Pending
                {
                    found.push((job.clone(), record));
                }
            }
        }
        Ok(found)
    }

    /// A [`TimeoutCheck`]: the enrichments of its jobs still `pending` past the maximum age are
    /// timed out, refunded ([`Store::mark_timeout`], the status function's rule), so that a
    /// timeout nobody polls is noticed within [`crate::queue::TIMEOUT_CHECK_MARGIN`] of the
    /// maximum age; those not yet at it (a maximum age beyond SQS's longest delay) get a new
    /// check when they are due. One `BatchGetItem` per org and 100 jobs.
    ///
    /// Errors: DynamoDB or SQS failures (the message is retried).
    async fn check_timeouts(
        &self,
        check: &TimeoutCheck,
        queue: Option<&SqsJobQueue>,
    ) -> Result<(), JobError> {
        let now = Utc::now();
        let oldest = timestamp_before(now, self.config.max_age);
        let mut early = Vec::new();
        let mut due_in = Duration::ZERO;
        for (job, record) in self.pending(&check.timeout_check).await? {
            if record.enrichment.created_at < oldest {
                let ended = self.store.mark_timeout(&record, &timestamp(now)).await?;
                tracing::warn!(enrichment_id = %ended.id, status = %ended.status.as_str(), "pending past the maximum age: timed out by its check");
                continue;
            }
            let created = chrono::DateTime::parse_from_rfc3339(&record.enrichment.created_at)
                .map(|at| at.with_timezone(&Utc))
                .unwrap_or(now);
            let due = (created - now).to_std().unwrap_or_default() + self.config.max_age;
            due_in = due_in.max(due);
            early.push(job);
        }
        if let (false, Some(queue)) = (early.is_empty(), queue) {
            queue
                .send_check_later(&early, due_in + crate::queue::TIMEOUT_CHECK_MARGIN)
                .await?;
        }
        Ok(())
    }

    /// The last receive of a job failed too: its message goes to the DLQ (and raises the alarm),
    /// so the enrichment, if still pending, ends `failed` with its credits refunded rather than
    /// waiting for the lazy timeout. Best effort: a store that still fails leaves that to the
    /// timeout.
    async fn give_up(&self, job: &Job) {
        let result = async {
            let Some(record) = self
                .store
                .get_enrichment(&job.org_id, job.person_id, job.field)
                .await?
            else {
                return Ok(());
            };
            if record.enrichment.id != job.enrichment_id
                || record.enrichment.status != Status::Pending
            {
                return Ok(());
            }
            self.store
                .fail_and_refund(
                    &record.enrichment,
                    record.credits_charged,
                    GAVE_UP_MESSAGE,
                    &timestamp(Utc::now()),
                )
                .await
                .map(|_| ())
        };
        match result.await {
            Ok(()) => {
                tracing::warn!(enrichment_id = %job.enrichment_id, "gave the job up; it goes to the DLQ")
            }
            Err(e) => {
                tracing::error!(enrichment_id = %job.enrichment_id, error = %e, "could not give the job up")
            }
        }
    }

    /// Runs an SQS batch one record at a time and reports the records to retry as batch item
    /// failures (by `messageId`); the others are deleted by the event source mapping. A deferred
    /// job is sent again with a delay (`SendMessage`, `DelaySeconds`) and its record deleted, so
    /// that waiting never counts against the queue's maximum receive count; when that send
    /// fails, the record is reported failed and comes back after the retry delay. A record
    /// holding a batch or bulk's [`JobBatch`] is fanned out to one message per job on the queue
    /// it came from; when that keeps failing, its last receive ends the jobs' enrichments
    /// `failed`, refunded, as for a job.
    pub async fn run_batch(&self, records: &[SqsMessage], deadline: Instant) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for record in records {
            let message_id = record.message_id.clone().unwrap_or_default();
            let queue = self.queue_of(record);
            let delivery =
                queue
                    .zip(record.receipt_handle.as_deref())
                    .map(|(queue, receipt_handle)| Delivery {
                        queue,
                        receipt_handle,
                    });
            let body = record.body.as_deref().unwrap_or_default();
            let result = serde_json::from_str::<Job>(body);
            let held_slot = serde_json::from_str::<HeldSlot>(body)
                .ok()
                .and_then(|h| h.slot);
            let receives: u32 = record
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|count| count.parse().ok())
                .unwrap_or(1);
            if let (Err(_), Ok(check)) = (&result, serde_json::from_str::<TimeoutCheck>(body)) {
                if let Err(e) = self.check_timeouts(&check, queue).await {
                    tracing::error!(message_id = %message_id, receives, error = %e, "could not check a job's timeout");
                    if let Some(delivery) = &delivery {
                        delivery
                            .queue
                            .retry_later(delivery.receipt_handle, receives)
                            .await;
                    }
                    response.add_failure(message_id);
                }
                continue;
            }
            if let (Err(_), Ok(batch)) = (&result, serde_json::from_str::<JobBatch>(body)) {
                if let Err(e) = self.fan_out(&batch, queue).await {
                    tracing::error!(message_id = %message_id, receives, error = %e, "could not send a batch's jobs on");
                    if receives >= self.config.max_receives {
                        // The message goes to the DLQ: its enrichments end `failed`, refunded.
                        for job in &batch.jobs {
                            self.give_up(job).await;
                        }
                    } else if let Some(delivery) = &delivery {
                        delivery
                            .queue
                            .retry_later(delivery.receipt_handle, receives)
                            .await;
                    }
                    response.add_failure(message_id);
                }
                continue;
            }
            let result = result.map_err(|e| JobError::BadMessage(e.to_string()));
            let (job, result) = match result {
                Ok(job) => {
                    let result = self
                        .run_delivered(&job, deadline, delivery.as_ref(), held_slot.as_ref())
                        .await;
                    (Some(job), result)
                }
                Err(e) => (None, Err(e)),
            };
            let result = match (result, &job, queue) {
                (Ok(JobOutcome::Deferred { delay, slot }), Some(job), Some(queue)) => queue
                    .send_later(job, slot.as_ref(), delay)
                    .await
                    .map(|()| JobOutcome::Deferred { delay, slot })
                    .map_err(|e| {
                        tracing::warn!(error = %e, "could not defer the job");
                        JobError::Deferred(delay)
                    }),
                (Ok(JobOutcome::Deferred { delay, .. }), _, None) => Err(JobError::Deferred(delay)),
                (result, _, _) => result,
            };
            if let Err(e) = result {
                let enrichment_id = job
                    .as_ref()
                    .map(|j| tracing::field::display(j.enrichment_id));
                tracing::error!(message_id = %message_id, enrichment_id, receives, error = %e, "job failed");
                if let Some(job) = job.filter(|_| receives >= self.config.max_receives) {
                    self.give_up(&job).await;
                } else if let Some(delivery) = &delivery {
                    delivery
                        .queue
                        .retry_later(delivery.receipt_handle, receives)
                        .await;
                }
                response.add_failure(message_id);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_takes_an_sqs_batch_or_a_step_functions_job() {
        let batch: WorkerEvent =
            serde_json::from_str(include_str!("../../events/worker-sqs-batch.json")).unwrap();
        let WorkerEvent::Sqs(batch) = batch else {
            panic!("an SQS batch was read as a job")
        };
        assert_eq!(batch.records.len(), 2);
        let job: WorkerEvent = serde_json::from_str(
            r#"{"enrichmentId": "a1b2c3d4-e5f6-7890-abcd-ef1234567890", "orgId": "org_1",
                "personId": "550e8400-e29b-41d4-a716-446655440000", "field": "phones"}"#,
        )
        .unwrap();
        let WorkerEvent::Job(job) = job else {
            panic!("a job was read as an SQS batch")
        };
        assert_eq!(job.field, crate::domain::Field::Phones);
        assert!(serde_json::from_str::<WorkerEvent>(r#"{"field": "phones"}"#).is_err());
    }
}
