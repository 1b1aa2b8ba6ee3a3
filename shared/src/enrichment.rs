//! The two API use cases: trigger an enrichment (POST) and read its status (GET).
//! Rules: spec sections "Trigger Enrichment", "Idempotency", "Timeout Handling" and
//! "Credit Consumption".

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::auth::Principal;
use crate::config::Config;
use crate::domain::{Enrichment, Field, Status, timestamp, timestamp_before};
use crate::error::ApiError;
use crate::queue::{Job, JobQueue};
use crate::store::{CreateOutcome, Store, StoreError};

/// The `error` of an enrichment that was accepted but could not be queued (its credits were
/// given back).
pub const ENQUEUE_FAILED_MESSAGE: &str =
    "The enrichment could not be queued; its credits were refunded";

/// How many times the trigger sends a job, each after the SDK's own retries, before it gives the
/// enrichment up and refunds it.
const ENQUEUE_ATTEMPTS: u32 = 3;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failure");
        ApiError::Internal(e.to_string())
    }
}

/// The POST and GET use cases over the table. Build once per process.
pub struct Enrichments {
    store: Store,
    config: Config,
}

impl Enrichments {
    /// The use cases over `store`, with costs and maximum age from `config`.
    pub fn new(store: Store, config: Config) -> Self {
        Self { store, config }
    }

    /// POST: returns the current `pending`/`finished` enrichment of (org, person, field) without
    /// charge, or creates a new `pending` one, charges its cost and queues its job.
    ///
    /// DynamoDB calls: one `TransactWriteItems` for a new enrichment and for a replay; one SQS
    /// `SendMessage` for a new one.
    ///
    /// Errors: 404 `Person not found` (nothing charged), 402 when the balance does not cover the
    /// cost (nothing written), 500 when the store fails or the job cannot be queued (then the
    /// enrichment is marked `failed` and refunded in one transaction).
    pub async fn trigger(
        &self,
        queue: &dyn JobQueue,
        principal: &Principal,
        person_id: Uuid,
        field: Field,
    ) -> Result<Enrichment, ApiError> {
        let now = Utc::now();
        let at = timestamp(now);
        let enrichment = Enrichment {
            id: Uuid::new_v4(),
            created_at: at.clone(),
            updated_at: at,
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
        };
        let cost = self.config.cost(field);
        let mut outcome = self.store.create_enrichment(&enrichment, cost).await?;
        if let CreateOutcome::Existing(existing) = &outcome
            && self.is_stale(&existing.enrichment, now)
        {
            // A stale pending enrichment counts as timed out on POST as on GET: time it out
            // (refunding it) through the one rule, then create the new one.
            self.store.mark_timeout(existing, &timestamp(now)).await?;
            outcome = self.store.create_enrichment(&enrichment, cost).await?;
        }
        match outcome {
            CreateOutcome::Existing(existing) => Ok(existing.enrichment),
            CreateOutcome::PersonNotFound => Err(ApiError::NotFound("Person not found".into())),
            CreateOutcome::InsufficientCredits => Err(ApiError::InsufficientCredits {
                operation_type: field.operation_type(),
                required: cost,
            }),
            CreateOutcome::Created => {
                self.enqueue(queue, &enrichment, cost).await?;
                Ok(enrichment)
            }
        }
    }

    async fn enqueue(
        &self,
        queue: &dyn JobQueue,
        enrichment: &Enrichment,
        cost: i64,
    ) -> Result<(), ApiError> {
        let job = Job::from(enrichment);
        let mut last_error = None;
        for attempt in 1..=ENQUEUE_ATTEMPTS {
            match queue.enqueue(&job).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(enrichment_id = %enrichment.id, attempt, error = %e, "enqueue failed");
                    last_error = Some(e);
                    if attempt < ENQUEUE_ATTEMPTS {
                        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                    }
                }
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
        Err(ApiError::Internal(format!(
            "enqueue failed: {}",
            last_error.map(|e| e.to_string()).unwrap_or_default()
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

    /// Whether `enrichment` is `pending` and older than the maximum age (spec, "Timeout
    /// Handling").
    fn is_stale(&self, enrichment: &Enrichment, now: DateTime<Utc>) -> bool {
        enrichment.status == Status::Pending
            && enrichment.created_at < timestamp_before(now, self.config.max_age)
    }
}
