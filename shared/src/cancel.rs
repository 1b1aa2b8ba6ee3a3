//! The cancel use case: `POST /api/v1/operations/enrichment/{personId}/cancel?field=` (spec
//! operations-api, "Cancel").

use chrono::Utc;
use uuid::Uuid;

use crate::auth::Principal;
use crate::domain::{Enrichment, Field, Status, timestamp};
use crate::enrichment::Enrichments;
use crate::error::ApiError;

/// How many times a cancel reads the enrichment again when it changed between its read and its
/// write (a worker's outcome, another request) before it answers `503`.
const CANCEL_ATTEMPTS: u32 = 3;

/// The message of the `404` when (org, person, field) has no enrichment.
const NOT_FOUND_MESSAGE: &str = "Enrichment not found";

impl Enrichments {
    /// Cancels the current enrichment of (org, person, field) (spec operations-api, "Cancel"):
    ///
    /// - `pending`: it becomes `cancelled` and its `credits_charged` are given back (a `refund`
    ///   credit transaction) in one `TransactWriteItems` ([`crate::store::Store::cancel_pending`]);
    ///   the enrichment is returned with status `cancelled`. Its worker, if one is running the
    ///   cascade, starts no further provider call and its outcome is not written.
    /// - already `cancelled`: returned as it is, nothing more refunded (two racing cancels
    ///   refund once: the write is conditioned on `pending`).
    /// - a `pending` one older than the maximum age has timed out (spec, "Timeout Handling"):
    ///   it is marked `timeout` and refunded as GET does, then answered as `timeout` below.
    ///
    /// A later POST creates a new enrichment (a `cancelled` one may be replaced).
    ///
    /// DynamoDB calls: one consistent `GetItem`, then one `TransactWriteItems` for a `pending`
    /// one; when the enrichment changed in between, the write's answer (`ALL_OLD`) is decided
    /// on again, at most three times.
    ///
    /// Errors: 404 `Enrichment not found` (none, or another org's); 409 `CONFLICT` `Enrichment
    /// is already <status>` for `finished`, `failed` and `timeout`; 503 when DynamoDB does not
    /// answer in time or the enrichment kept changing; 500 on any other store failure.
    pub async fn cancel(
        &self,
        principal: &Principal,
        person_id: Uuid,
        field: Field,
    ) -> Result<Enrichment, ApiError> {
        let not_found = || ApiError::NotFound(NOT_FOUND_MESSAGE.into());
        let mut current = self
            .store
            .get_enrichment(&principal.org_id, person_id, field)
            .await?;
        for _ in 0..CANCEL_ATTEMPTS {
            let record = current.take().ok_or_else(not_found)?;
            let now = Utc::now();
            let settled = match record.enrichment.status {
                Status::Pending if self.is_stale(&record.enrichment, now) => {
                    self.store.mark_timeout(&record, &timestamp(now)).await?
                }
                Status::Pending => match self.store.cancel_pending(&record, &timestamp(now)).await?
                {
                    Ok(cancelled) => {
                        tracing::info!(enrichment_id = %cancelled.id, refunded = record.credits_charged, "enrichment cancelled");
                        return Ok(cancelled);
                    }
                    // It changed since it was read: decide again on what it is now.
                    Err(changed) => {
                        current = changed;
                        continue;
                    }
                },
                _ => record.enrichment,
            };
            match settled.status {
                Status::Cancelled => return Ok(settled),
                // Timed out and replaced by a new one meanwhile: read the new one.
                Status::Pending => {
                    current = self
                        .store
                        .get_enrichment(&principal.org_id, person_id, field)
                        .await?;
                }
                ended => {
                    return Err(ApiError::Conflict(format!(
                        "Enrichment is already {}",
                        ended.as_str()
                    )));
                }
            }
        }
        Err(ApiError::Unavailable(format!(
            "the enrichment of {person_id} ({field}) changed {CANCEL_ATTEMPTS} times while it was cancelled"
        )))
    }
}
