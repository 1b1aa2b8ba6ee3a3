//! Cancelling a pending enrichment: its status and its refund in one transaction (spec
//! operations-api, "Cancel").

use super::*;

impl Store {
    /// Cancels `record`'s enrichment and gives its credits back in ONE `TransactWriteItems`:
    /// (0) the enrichment becomes `cancelled` (`updatedAt` = `now`, the worker's claim and
    /// journal removed) on condition it is still the same enrichment (`id`) and `pending`,
    /// (1) the org's balance is credited with `record.credits_charged`, (2) the `refund` credit
    /// transaction is written (items 1 and 2 are `Store::refund_items`, the refund of every
    /// other ending; none when nothing was charged), (3) the `enrichment.cancelled` webhook
    /// event goes to the outbox (`Store::outbox_put`).
    ///
    /// The condition makes the refund happen once: of two cancels racing, or a cancel racing the
    /// worker's outcome or a timeout, one write wins and the others change nothing. A worker
    /// still running the job finds the claim gone: it renews it on condition the enrichment is
    /// `pending` before each provider call and writes its outcome on the same condition, so it
    /// starts no further call and its outcome is not written (`Store::renew_claim`,
    /// `Store::complete`).
    ///
    /// Returns `Ok(cancelled)`, the enrichment as now stored; or `Err(current)` when the
    /// condition failed (nothing written): the item as it now is, from the same call
    /// (`ReturnValuesOnConditionCheckFailure = ALL_OLD`), `None` when there is none any more.
    ///
    /// Errors: DynamoDB failures, or a transaction cancelled for another reason.
    pub async fn cancel_pending(
        &self,
        record: &EnrichmentRecord,
        now: &str,
    ) -> Result<Result<Enrichment, Option<EnrichmentRecord>>, StoreError> {
        let enrichment = &record.enrichment;
        let cancel = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::key_of(enrichment)))
            .update_expression(
                "SET #status = :cancelled, updatedAt = :now \
                 REMOVE claimToken, claimUntil, providersAnswered, providerJobs, providersFailed",
            )
            .condition_expression("id = :id AND #status = :pending")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":cancelled", s(Status::Cancelled.as_str()))
            .expression_attribute_values(":pending", s(Status::Pending.as_str()))
            .expression_attribute_values(":now", s(now))
            .expression_attribute_values(":id", s(enrichment.id.to_string()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(build_error)?;
        let cancelled_enrichment = Enrichment {
            status: Status::Cancelled,
            updated_at: now.to_string(),
            ..enrichment.clone()
        };
        let mut items = vec![TransactWriteItem::builder().update(cancel).build()];
        items.extend(self.refund_items(enrichment, record.credits_charged, now)?);
        items.extend(self.outbox_put(&cancelled_enrichment, now)?);
        match self.transact(items).await? {
            None => Ok(Ok({
                let charged = record.credits_charged;
                crate::metrics::ended(enrichment.field, Status::Cancelled, None, charged);
                cancelled_enrichment
            })),
            Some(mut reasons) if reasons.first().is_some_and(|r| r.failed) => {
                let current = reasons.swap_remove(0).item;
                Ok(Err(current.map(record_from_item).transpose()?))
            }
            Some(reasons) => Err(cancelled("cancellation", &reasons)),
        }
    }
}
