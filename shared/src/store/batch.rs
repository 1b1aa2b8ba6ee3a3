//! The writes of a batch or bulk enrichment (spec operations-api, "Batch enrichment" and "Bulk
//! enrichment"): many enrichments created and charged in chunks, each chunk one
//! `TransactWriteItems` that holds every rule of the single POST, and the undo of the chunks
//! already written when a later one is refused.
//!
//! A transaction holds at most 100 items (AWS docs, `TransactWriteItems`). A chunk of `k`
//! enrichments is `3k + 1` items: per enrichment the `Put` of the enrichment (on condition that
//! the item is still what the batch read), the `ConditionCheck` of its person and the `Put` of
//! its `credit_consumed` transaction; then one `Update` of the balance by `k × cost` on
//! condition it covers it. So [`CHUNK`] is 33, and the balance equals grants − debits +
//! refunds after every chunk, as after every single POST.

use std::collections::HashSet;

use super::*;

/// Enrichments per creating transaction: `3 × 33 + 1 = 100` items, the transaction limit.
pub const CHUNK: usize = 33;

/// One enrichment a batch creates, and the item it replaces.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedEnrichment {
    /// The new `pending` enrichment, with its `creditTransactionId`.
    pub enrichment: Enrichment,
    /// The ended (`failed`, `timeout`, `cancelled`) enrichment of the same person and field it
    /// replaces, as the batch read it; `None` when there was none. The creating `Put` is
    /// conditioned on it, and an undo puts it back.
    pub replaces: Option<EnrichmentRecord>,
}

/// What happened to one chunk's transaction. Except for [`ChunkOutcome::Created`], nothing of
/// the chunk was written.
#[derive(Debug, Clone, PartialEq)]
pub enum ChunkOutcome {
    /// Every enrichment of the chunk was created and charged.
    Created,
    /// The items of these enrichments (by position in the chunk) changed since the batch read
    /// them: their current item, `None` when there is none (another request created, ended or
    /// deleted one meanwhile).
    Changed(Vec<(usize, Option<EnrichmentRecord>)>),
    /// These people no longer exist in the org.
    PersonNotFound(Vec<Uuid>),
    /// The balance does not cover the chunk.
    InsufficientCredits,
}

impl Store {
    /// Creates the enrichments of `chunk` (at most [`CHUNK`]), each charged `cost` credits,
    /// in one `TransactWriteItems` (see the module's documentation). A cancellation tells
    /// which rule refused it; a transaction conflict is tried again.
    ///
    /// Errors: DynamoDB failures; a chunk larger than [`CHUNK`] or with a new enrichment
    /// without its credit transaction id (`Shape`).
    pub async fn create_enrichments(
        &self,
        chunk: &[PlannedEnrichment],
        cost: i64,
    ) -> Result<ChunkOutcome, StoreError> {
        if chunk.is_empty() {
            return Ok(ChunkOutcome::Created);
        }
        if chunk.len() > CHUNK {
            return Err(StoreError::Shape(format!(
                "a chunk holds at most {CHUNK} enrichments, not {}",
                chunk.len()
            )));
        }
        let org_id = &chunk[0].enrichment.org_id;
        let mut items = Vec::with_capacity(3 * chunk.len() + 1);
        for planned in chunk {
            let enrichment = &planned.enrichment;
            if &enrichment.org_id != org_id {
                return Err(StoreError::Shape("a chunk belongs to one org".into()));
            }
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(Self::enrichment_item(enrichment, cost, &[])?))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            let put = match &planned.replaces {
                None => put.condition_expression("attribute_not_exists(pk)"),
                Some(old) => put
                    .condition_expression(
                        "id = :old AND #status IN (:failed, :timeout, :cancelled)",
                    )
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":old", s(old.enrichment.id.to_string()))
                    .expression_attribute_values(":failed", s(Status::Failed.as_str()))
                    .expression_attribute_values(":timeout", s(Status::Timeout.as_str()))
                    .expression_attribute_values(":cancelled", s(Status::Cancelled.as_str())),
            };
            let person_exists = self.person_exists(enrichment)?;
            let transaction = self.debit_transaction(enrichment, cost)?;
            items.push(
                TransactWriteItem::builder()
                    .put(put.build().map_err(build_error)?)
                    .build(),
            );
            items.push(
                TransactWriteItem::builder()
                    .condition_check(person_exists)
                    .build(),
            );
            items.push(TransactWriteItem::builder().put(transaction).build());
        }
        let debit = self.debit_balance(org_id, cost * chunk.len() as i64)?;
        items.push(TransactWriteItem::builder().update(debit).build());
        let Some(reasons) = self.transact(items).await? else {
            return Ok(ChunkOutcome::Created);
        };
        let failed = |i: usize| reasons.get(i).is_some_and(|r| r.failed);
        let mut changed = Vec::new();
        let mut gone = Vec::new();
        for (position, planned) in chunk.iter().enumerate() {
            if failed(3 * position) {
                let current = reasons[3 * position]
                    .item
                    .clone()
                    .map(record_from_item)
                    .transpose()?;
                changed.push((position, current));
            }
            if failed(3 * position + 1) {
                gone.push(planned.enrichment.entity_id);
            }
        }
        if !gone.is_empty() {
            Ok(ChunkOutcome::PersonNotFound(gone))
        } else if !changed.is_empty() {
            Ok(ChunkOutcome::Changed(changed))
        } else if failed(3 * chunk.len()) {
            Ok(ChunkOutcome::InsufficientCredits)
        } else {
            Err(cancelled("batch enrichment creation", &reasons))
        }
    }

    /// Undoes a chunk that [`Store::create_enrichments`] created, before its jobs can run: in
    /// one `TransactWriteItems`, each enrichment is deleted (or the one it replaced put back)
    /// on condition it is still the new, unclaimed `pending` one, its credit transaction is
    /// deleted, and the balance gets `cost × len` back. Afterwards it is as if the chunk had
    /// never been written: no charge, no refund in the history.
    ///
    /// Errors: DynamoDB failures, or a condition that failed (a worker claimed one: the batch
    /// must not have let its jobs run).
    pub async fn undo_enrichments(
        &self,
        chunk: &[PlannedEnrichment],
        cost: i64,
    ) -> Result<(), StoreError> {
        let Some(first) = chunk.first() else {
            return Ok(());
        };
        let pk = org_pk(&first.enrichment.org_id);
        let mut items = Vec::with_capacity(2 * chunk.len() + 1);
        let mut seen = HashSet::new();
        for planned in chunk {
            let enrichment = &planned.enrichment;
            if !seen.insert((enrichment.entity_id, enrichment.field)) {
                return Err(StoreError::Shape("a person twice in one undo".into()));
            }
            let condition = "id = :new AND #status = :pending AND attribute_not_exists(claimToken)";
            let item = match &planned.replaces {
                None => TransactWriteItem::builder()
                    .delete(
                        Delete::builder()
                            .table_name(&self.table)
                            .set_key(Some(Self::key_of(enrichment)))
                            .condition_expression(condition)
                            .expression_attribute_names("#status", "status")
                            .expression_attribute_values(":new", s(enrichment.id.to_string()))
                            .expression_attribute_values(":pending", s(Status::Pending.as_str()))
                            .build()
                            .map_err(build_error)?,
                    )
                    .build(),
                Some(old) => {
                    let item = Self::enrichment_item(
                        &old.enrichment,
                        old.credits_charged,
                        &old.providers_answered,
                    )?;
                    TransactWriteItem::builder()
                        .put(
                            Put::builder()
                                .table_name(&self.table)
                                .set_item(Some(item))
                                .condition_expression(condition)
                                .expression_attribute_names("#status", "status")
                                .expression_attribute_values(":new", s(enrichment.id.to_string()))
                                .expression_attribute_values(
                                    ":pending",
                                    s(Status::Pending.as_str()),
                                )
                                .build()
                                .map_err(build_error)?,
                        )
                        .build()
                }
            };
            items.push(item);
            items.push(
                TransactWriteItem::builder()
                    .delete(
                        Delete::builder()
                            .table_name(&self.table)
                            .set_key(Some(Self::debit_key(enrichment)?))
                            .condition_expression("attribute_exists(pk)")
                            .build()
                            .map_err(build_error)?,
                    )
                    .build(),
            );
        }
        let give_back = Update::builder()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(CREDITS_SK))
            .update_expression("SET balance = balance + :total")
            .expression_attribute_values(":total", n(cost * chunk.len() as i64))
            .build()
            .map_err(build_error)?;
        items.push(TransactWriteItem::builder().update(give_back).build());
        match self.transact(items).await? {
            None => Ok(()),
            Some(reasons) => Err(cancelled("batch enrichment undo", &reasons)),
        }
    }

    /// Which of `person_ids` are people of the org: one consistent `BatchGetItem` per 100 ids,
    /// reading only the keys.
    ///
    /// Errors: DynamoDB failures.
    pub async fn existing_people(
        &self,
        org_id: &str,
        person_ids: &[Uuid],
    ) -> Result<HashSet<Uuid>, StoreError> {
        let keys = person_ids
            .iter()
            .map(|id| {
                HashMap::from([
                    ("pk".to_string(), s(org_pk(org_id))),
                    ("sk".to_string(), s(person_sk(*id))),
                ])
            })
            .collect();
        let mut found = HashSet::with_capacity(person_ids.len());
        for item in self.batch_get(keys, Some("sk")).await? {
            let id = item
                .get("sk")
                .and_then(|sk| sk.as_s().ok())
                .and_then(|sk| sk.strip_prefix("PERSON#"))
                .and_then(|id| Uuid::try_parse(id).ok())
                .ok_or_else(|| StoreError::Shape(format!("person key {item:?}")))?;
            found.insert(id);
        }
        Ok(found)
    }
}
