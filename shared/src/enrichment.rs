//! The two API use cases: trigger an enrichment (POST) and read its status (GET).
//! Rules: spec sections "Trigger Enrichment", "Idempotency", "Timeout Handling" and
//! "Credit Consumption".

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use uuid::Uuid;

use crate::auth::Principal;
use crate::budget;
use crate::config::Config;
use crate::domain::{CacheUse, Enrichment, Field, Job, Status, timestamp, timestamp_before};
use crate::error::ApiError;
use crate::queue::JobQueue;
use crate::store::{CreateOutcome, RateLimit, Store, StoreError};

/// The `error` of an enrichment that was accepted but could not be queued (its credits were
/// given back).
pub const ENQUEUE_FAILED_MESSAGE: &str =
    "The enrichment could not be queued; its credits were refunded";

/// How many times the trigger sends a job, each after the SDK's own retries, before it gives the
/// enrichment up and refunds it; fewer when the invocation's deadline comes first.
const ENQUEUE_ATTEMPTS: u32 = 3;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable { .. } => ApiError::Unavailable(e.to_string()),
            _ => ApiError::Internal(e.to_string()),
        }
    }
}

/// The POST and GET use cases over the table. Build once per process.
pub struct Enrichments {
    pub(crate) store: Store,
    pub(crate) config: Config,
}

impl Enrichments {
    /// The use cases over `store`, with costs and maximum age from `config`.
    pub fn new(store: Store, config: Config) -> Self {
        Self { store, config }
    }

    /// POST: returns the current `pending`/`finished` enrichment of (org, person, field) without
    /// charge, or creates a new `pending` one, charges its cost and queues its job; with
    /// [`CacheUse::Fresh`] (`?cache=false`) its job asks the providers whatever the global cache
    /// holds.
    ///
    /// DynamoDB calls: one `TransactWriteItems` for a new enrichment and for a replay; one SQS
    /// `SendMessage` for a new one.
    ///
    /// The job is sent before `deadline` (the invocation's) with [`budget::REFUND_RESERVE`] and
    /// [`budget::RESPONSE_MARGIN`] kept back: each attempt is bounded by the time left, and when
    /// the queue cannot take the job in that time the enrichment is marked `failed` and
    /// refunded in one transaction before the deadline.
    ///
    /// Errors: 404 `Person not found` (nothing charged), 402 when the balance does not cover the
    /// cost (nothing written), 429 when the org created its limit of enrichments this minute
    /// (nothing written; `Retry-After` says when the minute ends), 503 when DynamoDB does not answer in time or the job cannot be
    /// queued (then the enrichment is `failed` and refunded; a new POST may try again), 500 on
    /// any other store failure.
    pub async fn trigger(
        &self,
        queue: &dyn JobQueue,
        principal: &Principal,
        person_id: Uuid,
        field: Field,
        cache: CacheUse,
        deadline: Instant,
    ) -> Result<Enrichment, ApiError> {
        let now = Utc::now();
        let enrichment = self.new_pending(principal, person_id, field, &timestamp(now));
        let cost = self.config.cost(field);
        let mut outcome = self
            .store
            .create_enrichment(&enrichment, cost, self.rate_limit())
            .await?;
        if let CreateOutcome::Existing(existing) = &outcome
            && self.is_stale(&existing.enrichment, now)
        {
            // A stale pending enrichment counts as timed out on POST as on GET: time it out
            // (refunding it) through the one rule, then create the new one.
            self.store.mark_timeout(existing, &timestamp(now)).await?;
            outcome = self
                .store
                .create_enrichment(&enrichment, cost, self.rate_limit())
                .await?;
        }
        match outcome {
            CreateOutcome::Existing(existing) => Ok(existing.enrichment),
            CreateOutcome::PersonNotFound => Err(ApiError::NotFound("Person not found".into())),
            CreateOutcome::RateLimited {
                retry_after_seconds,
            } => Err(ApiError::RateLimited {
                retry_after_seconds,
            }),
            CreateOutcome::InsufficientCredits => Err(ApiError::InsufficientCredits {
                operation_type: field.operation_type(),
                count: 1,
                required: cost,
                bulk: false,
            }),
            CreateOutcome::Created => {
                self.enqueue(queue, &enrichment, cost, cache, deadline)
                    .await?;
                Ok(enrichment)
            }
        }
    }

    async fn enqueue(
        &self,
        queue: &dyn JobQueue,
        enrichment: &Enrichment,
        cost: i64,
        cache: CacheUse,
        deadline: Instant,
    ) -> Result<(), ApiError> {
        let job = Job::from(enrichment).with_cache(cache);
        let reserve = budget::REFUND_RESERVE + budget::RESPONSE_MARGIN;
        let mut last_error = String::from("no time left before the deadline");
        for attempt in 1..=ENQUEUE_ATTEMPTS {
            let left = budget::left_before(deadline, reserve);
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, queue.enqueue(&job)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = format!("no answer within {left:?}"),
            }
            tracing::warn!(enrichment_id = %enrichment.id, attempt, error = %last_error, "enqueue failed");
            let pause = Duration::from_millis(100 * u64::from(attempt));
            if attempt < ENQUEUE_ATTEMPTS && budget::left_before(deadline, reserve) > pause {
                tokio::time::sleep(pause).await;
            }
        }
        tracing::error!(enrichment_id = %enrichment.id, "giving the enrichment up and refunding it");
        self.store
            .fail_and_refund(
                enrichment,
                cost,
                ENQUEUE_FAILED_MESSAGE,
                &timestamp(Utc::now()),
            )
            .await?;
        Err(ApiError::Unavailable(format!(
            "enqueue failed: {last_error}"
        )))
    }

    /// GET: the current enrichment of (org, person, field), read consistently. A `pending` one
    /// older than the maximum age is marked `timeout` first (spec, "Timeout Handling").
    ///
    /// DynamoDB calls: one `GetItem`; one more `TransactWriteItems` (timeout and refund) when it
    /// marks a timeout.
    ///
    /// Errors: 404 `Enrichment not found` (also for another org's enrichment), 500 on store
    /// failure.
    pub async fn status(
        &self,
        principal: &Principal,
        person_id: Uuid,
        field: Field,
    ) -> Result<Enrichment, ApiError> {
        let record = self
            .store
            .get_enrichment(&principal.org_id, person_id, field)
            .await?
            .ok_or_else(|| ApiError::NotFound("Enrichment not found".into()))?;
        let now = Utc::now();
        if self.is_stale(&record.enrichment, now) {
            return Ok(self.store.mark_timeout(&record, &timestamp(now)).await?);
        }
        Ok(record.enrichment)
    }

    /// `POST /api/v1/operations/enrichment/batch/query` (spec operations-api, "Batch query"):
    /// the enrichments that exist for `tasks` (person, field), in task order, a repeated task
    /// once, the others left out; a stale `pending` one is marked `timeout` and refunded first,
    /// as GET does. No credits are used. One `BatchGetItem` per 100 tasks, plus one
    /// transaction per stale enrichment.
    ///
    /// Errors: 503/500 when the table fails.
    pub async fn query(
        &self,
        principal: &Principal,
        tasks: &[(Uuid, Field)],
    ) -> Result<Vec<Enrichment>, ApiError> {
        let mut distinct: Vec<(Uuid, Field)> = Vec::with_capacity(tasks.len());
        for task in tasks {
            if !distinct.contains(task) {
                distinct.push(*task);
            }
        }
        let mut found = self
            .store
            .get_enrichments(&principal.org_id, &distinct)
            .await?;
        let now = Utc::now();
        let mut answer = Vec::with_capacity(found.len());
        for (person_id, field) in distinct {
            let Some(position) = found
                .iter()
                .position(|r| r.enrichment.entity_id == person_id && r.enrichment.field == field)
            else {
                continue;
            };
            let record = found.swap_remove(position);
            answer.push(if self.is_stale(&record.enrichment, now) {
                self.store.mark_timeout(&record, &timestamp(now)).await?
            } else {
                record.enrichment
            });
        }
        Ok(answer)
    }

    /// A new `pending` enrichment of `person_id` created by `principal` at `at`, with the id of
    /// the credit transaction that will charge it (spec operations-api, Decision 6).
    pub(crate) fn new_pending(
        &self,
        principal: &Principal,
        person_id: Uuid,
        field: Field,
        at: &str,
    ) -> Enrichment {
        Enrichment {
            id: Uuid::new_v4(),
            created_at: at.to_string(),
            updated_at: at.to_string(),
            entity_id: person_id,
            entity_type: "person".into(),
            field,
            status: Status::Pending,
            error: None,
            data_found: None,
            created_by: principal.user_id.clone(),
            org_id: principal.org_id.clone(),
            global_enrichment_id: None,
            credit_transaction_id: Some(Uuid::new_v4()),
        }
    }

    fn rate_limit(&self) -> RateLimit {
        RateLimit {
            per_minute: self.config.org_enrichments_per_minute,
        }
    }

    /// Whether `enrichment` is `pending` and older than the maximum age (spec, "Timeout
    /// Handling").
    pub(crate) fn is_stale(&self, enrichment: &Enrichment, now: DateTime<Utc>) -> bool {
        enrichment.status == Status::Pending
            && enrichment.created_at < timestamp_before(now, self.config.max_age)
    }
}
