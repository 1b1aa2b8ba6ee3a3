//! The enrichment items: creation with its debit (one transaction), the worker's claim and
//! journal, the outcome, and the transaction that ends a pending enrichment with a refund.

use super::*;

impl Store {
    /// Creates `enrichment` (status `pending`) and charges `cost` credits in ONE
    /// `TransactWriteItems`: (0) put the enrichment unless a `pending` or `finished` one exists,
    /// returning the old item on conflict (`ALL_OLD`),
    /// (1) check the person exists, (2) decrement the org's balance on condition it covers `cost`,
    /// (3) write the credit transaction `enrichment.credit_transaction_id`.
    ///
    /// With a [`RateLimit`], (4) increments the org's counter of the current minute on condition
    /// it is below the limit.
    ///
    /// A replay costs exactly this one call (spec, "Idempotency").
    pub async fn create_enrichment(
        &self,
        enrichment: &Enrichment,
        cost: i64,
        rate_limit: RateLimit,
    ) -> Result<CreateOutcome, StoreError> {
        let pk = org_pk(&enrichment.org_id);
        let put_enrichment = Put::builder()
            .table_name(&self.table)
            .set_item(Some(Self::enrichment_item(enrichment, cost, &[])?))
            .condition_expression(
                "attribute_not_exists(pk) OR #status IN (:failed, :timeout, :cancelled)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":failed", s(Status::Failed.as_str()))
            .expression_attribute_values(":timeout", s(Status::Timeout.as_str()))
            .expression_attribute_values(":cancelled", s(Status::Cancelled.as_str()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(build_error)?;
        let person_exists = self.person_exists(enrichment)?;
        let debit = self.debit_balance(&enrichment.org_id, cost)?;
        let transaction = self.debit_transaction(enrichment, cost)?;
        let mut items = vec![
            TransactWriteItem::builder().put(put_enrichment).build(),
            TransactWriteItem::builder()
                .condition_check(person_exists)
                .build(),
            TransactWriteItem::builder().update(debit).build(),
            TransactWriteItem::builder().put(transaction).build(),
        ];
        let now_unix = chrono::DateTime::parse_from_rfc3339(&enrichment.created_at)
            .map(|at| at.timestamp())
            .map_err(|e| StoreError::Shape(format!("createdAt: {e}")))?;
        let minute = now_unix.div_euclid(60);
        if rate_limit.per_minute > 0 {
            let counter = Update::builder()
                .table_name(&self.table)
                .key("pk", s(pk.clone()))
                .key("sk", s(format!("RATE#{minute}")))
                .update_expression("ADD #count :one SET expiresAt = :expires")
                .condition_expression("attribute_not_exists(#count) OR #count < :limit")
                .expression_attribute_names("#count", "count")
                .expression_attribute_values(":one", n(1))
                .expression_attribute_values(":limit", n(i64::from(rate_limit.per_minute)))
                .expression_attribute_values(":expires", n((minute + 2) * 60))
                .build()
                .map_err(build_error)?;
            items.push(TransactWriteItem::builder().update(counter).build());
        }
        match self.transact(items).await? {
            None => {
                crate::metrics::started(enrichment.field, 1, cost);
                Ok(CreateOutcome::Created)
            }
            Some(reasons) => {
                let failed = |i: usize| reasons.get(i).is_some_and(|r| r.failed);
                if failed(0) {
                    let old = reasons[0].item.clone().ok_or_else(|| {
                        StoreError::Shape("conflict without the old enrichment".into())
                    })?;
                    Ok(CreateOutcome::Existing(Box::new(record_from_item(old)?)))
                } else if failed(1) {
                    Ok(CreateOutcome::PersonNotFound)
                } else if failed(4) {
                    Ok(CreateOutcome::RateLimited {
                        retry_after_seconds: (60 - now_unix.rem_euclid(60)).unsigned_abs(),
                    })
                } else if failed(2) {
                    Ok(CreateOutcome::InsufficientCredits)
                } else {
                    Err(cancelled("enrichment creation", &reasons))
                }
            }
        }
    }

    /// Marks a `pending` enrichment `failed` with `error` and gives `cost` credits back with a
    /// `refund` credit transaction, in one `TransactWriteItems`. Used when the job could not be
    /// queued after the enrichment was created, and when a job is given up on its last receive.
    /// Returns the enrichment as stored; an error if it was no longer pending.
    pub async fn fail_and_refund(
        &self,
        enrichment: &Enrichment,
        cost: i64,
        error: &str,
        now: &str,
    ) -> Result<Enrichment, StoreError> {
        self.end_pending(enrichment, cost, Status::Failed, error, now)
            .await?
            .map_err(|_| StoreError::Dynamo {
                operation: "TransactWriteItems",
                message: "refund cancelled: the enrichment is no longer pending".into(),
            })
    }

    /// Ends a `pending` enrichment as `status` with `error` and gives its `charged` credits back
    /// (a `refund` credit transaction), with its webhook event in the outbox
    /// ([`Store::outbox_put`]), in one `TransactWriteItems`. Returns the ended enrichment, or `Err(current)` when it was no longer pending (nothing written; the
    /// current item comes back from the same call, `ALL_OLD`).
    pub(super) async fn end_pending(
        &self,
        enrichment: &Enrichment,
        charged: i64,
        status: Status,
        error: &str,
        now: &str,
    ) -> Result<Result<Enrichment, Enrichment>, StoreError> {
        let end = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::key_of(enrichment)))
            .update_expression(
                "SET #status = :status, #error = :error, updatedAt = :now \
                 REMOVE claimToken, claimUntil, providersAnswered, providerJobs, providersFailed",
            )
            .condition_expression("id = :id AND #status = :pending")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#error", "error")
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":pending", s(Status::Pending.as_str()))
            .expression_attribute_values(":error", s(error))
            .expression_attribute_values(":now", s(now))
            .expression_attribute_values(":id", s(enrichment.id.to_string()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(build_error)?;
        let ended = Enrichment {
            status,
            error: Some(error.to_string()),
            updated_at: now.to_string(),
            ..enrichment.clone()
        };
        let mut items = vec![TransactWriteItem::builder().update(end).build()];
        items.extend(self.refund_items(enrichment, charged, now)?);
        items.extend(self.outbox_put(&ended, now)?);
        match self.transact(items).await? {
            None => Ok(Ok({
                crate::metrics::ended(enrichment.field, status, None, charged);
                ended
            })),
            Some(mut reasons) if reasons.first().is_some_and(|r| r.failed) => {
                match reasons.swap_remove(0).item {
                    Some(current) => Ok(Err(enrichment_from_item(current)?)),
                    None => Err(StoreError::Shape("the enrichment disappeared".into())),
                }
            }
            Some(reasons) => Err(cancelled(status.as_str(), &reasons)),
        }
    }

    /// The current enrichment of (org, person, field), read consistently; `None` if none.
    pub async fn get_enrichment(
        &self,
        org_id: &str,
        person_id: Uuid,
        field: Field,
    ) -> Result<Option<EnrichmentRecord>, StoreError> {
        self.get_consistent(Self::enrichment_key(org_id, person_id, field))
            .await?
            .map(record_from_item)
            .transpose()
    }

    /// The current enrichments of `keys` ((person, field) of the org), read consistently with
    /// `BatchGetItem`, 100 keys a call (its limit), unprocessed keys asked again; the ones that
    /// exist, in no particular order.
    ///
    /// Errors: DynamoDB failures, or keys still unprocessed after a few tries.
    pub async fn get_enrichments(
        &self,
        org_id: &str,
        keys: &[(Uuid, Field)],
    ) -> Result<Vec<EnrichmentRecord>, StoreError> {
        let wanted = keys
            .iter()
            .map(|(person_id, field)| Self::enrichment_key(org_id, *person_id, *field))
            .collect();
        let mut records = Vec::with_capacity(keys.len());
        for item in self.batch_get(wanted, None).await? {
            records.push(record_from_item(item)?);
        }
        Ok(records)
    }

    /// Marks a `pending` enrichment `timeout` (spec, "Timeout Handling") and gives its credits
    /// back (a `refund` credit transaction), in one `TransactWriteItems`. If it is no longer
    /// pending (a worker just finished it), nothing is written and it comes back as it now is,
    /// from the same call (`ReturnValuesOnConditionCheckFailure = ALL_OLD`).
    pub async fn mark_timeout(
        &self,
        record: &EnrichmentRecord,
        now: &str,
    ) -> Result<Enrichment, StoreError> {
        let ended = self
            .end_pending(
                &record.enrichment,
                record.credits_charged,
                Status::Timeout,
                TIMEOUT_MESSAGE,
                now,
            )
            .await?;
        Ok(ended.unwrap_or_else(|current| current))
    }

    /// Claims a job for one worker until `until` (ISO 8601): sets `claimToken` and `claimUntil`
    /// on the job's enrichment if it is still `pending` and unclaimed, or its claim lapsed
    /// before `now` (a worker that died). One conditional `UpdateItem`; on conflict the item
    /// comes back in the same call (`ALL_OLD`) and tells whether a live worker holds the job
    /// ([`Claim::Busy`]) or the job is no longer to run ([`Claim::Gone`]: a duplicate of a
    /// finished job, a replaced or ended enrichment).
    pub async fn claim(
        &self,
        job: &Job,
        token: &str,
        now: &str,
        until: &str,
    ) -> Result<Claim, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::enrichment_key(
                &job.org_id,
                job.person_id,
                job.field,
            )))
            .update_expression("SET claimToken = :token, claimUntil = :until")
            .condition_expression(
                "id = :id AND #status = :pending \
                 AND (attribute_not_exists(claimToken) OR attribute_not_exists(claimUntil) \
                      OR claimUntil < :now)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":pending", s(Status::Pending.as_str()))
            .expression_attribute_values(":id", s(job.enrichment_id.to_string()))
            .expression_attribute_values(":token", s(token))
            .expression_attribute_values(":now", s(now))
            .expression_attribute_values(":until", s(until))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match conditional_update(result)? {
            Ok(output) => Ok(Claim::Claimed(Box::new(record_from_item(
                output.attributes.unwrap_or_default(),
            )?))),
            Err(Some(current)) => {
                let current: EnrichmentItem =
                    serde_dynamo::from_item(current).map_err(shape_error)?;
                let live = current.enrichment.id == job.enrichment_id
                    && current.enrichment.status == Status::Pending;
                match current.claim_until {
                    Some(until) if live => Ok(Claim::Busy { until }),
                    _ => Ok(Claim::Gone),
                }
            }
            Err(None) => Ok(Claim::Gone),
        }
    }

    /// Extends a worker's claim to `until` (ISO 8601) before a provider call. Returns `false`
    /// when the claim is no longer `token`'s or the enrichment is no longer `pending` (it timed
    /// out, was replaced, or another worker took the job over): the worker must stop.
    pub async fn renew_claim(
        &self,
        enrichment: &Enrichment,
        token: &str,
        until: &str,
    ) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key_of(enrichment)))
            .update_expression("SET claimUntil = :until")
            .condition_expression("claimToken = :token AND #status = :pending")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":pending", s(Status::Pending.as_str()))
            .expression_attribute_values(":token", s(token))
            .expression_attribute_values(":until", s(until))
            .send()
            .await;
        Ok(conditional_update(result)?.is_ok())
    }

    /// Gives a claim up so that a redelivery can run the job again at once. A claim that is no
    /// longer `token`'s is left alone.
    pub async fn release_claim(
        &self,
        enrichment: &Enrichment,
        token: &str,
    ) -> Result<(), StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key_of(enrichment)))
            .update_expression("REMOVE claimToken, claimUntil")
            .condition_expression("claimToken = :token")
            .expression_attribute_values(":token", s(token))
            .send()
            .await;
        // A claim or lease already taken over by another owner is theirs to keep.
        let _not_ours = conditional_update(result)?;
        Ok(())
    }

    /// Records on a claimed enrichment that `provider` answered "no match", so that a redelivery
    /// of the job does not ask it again. Returns `false` when the claim is no longer `token`'s.
    pub async fn record_no_match(
        &self,
        enrichment: &Enrichment,
        token: &str,
        provider: &str,
    ) -> Result<bool, StoreError> {
        self.journal_append(enrichment, token, "providersAnswered", provider)
            .await
    }

    /// Records on a claimed enrichment that the asynchronous `provider` was given job `job_id`
    /// (`providerJobs`, as `{provider}:{job_id}`), so that no later attempt submits again: the
    /// cascade journal of [`crate::providers::cascade::CascadeJournal::record_job`]. Returns
    /// `false` when the claim is no longer `token`'s.
    pub async fn record_provider_job(
        &self,
        enrichment: &Enrichment,
        token: &str,
        provider: &str,
        job_id: &str,
    ) -> Result<bool, StoreError> {
        let entry = format!("{provider}:{job_id}");
        self.journal_append(enrichment, token, "providerJobs", &entry)
            .await
    }

    /// Records on a claimed enrichment that `provider` failed with `error` (`providersFailed`, as
    /// `{provider}:{error}`): the cascade journal of
    /// [`crate::providers::cascade::CascadeJournal::record_failure`]. Returns `false` when the
    /// claim is no longer `token`'s.
    pub async fn record_provider_failure(
        &self,
        enrichment: &Enrichment,
        token: &str,
        provider: &str,
        error: &str,
    ) -> Result<bool, StoreError> {
        let entry = format!("{provider}:{error}");
        self.journal_append(enrichment, token, "providersFailed", &entry)
            .await
    }

    /// Appends `value` to the journal list `attribute` of a claimed enrichment: one conditional
    /// `UpdateItem`; `false` when the claim is no longer `token`'s.
    async fn journal_append(
        &self,
        enrichment: &Enrichment,
        token: &str,
        attribute: &str,
        value: &str,
    ) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key_of(enrichment)))
            .update_expression("SET #list = list_append(if_not_exists(#list, :none), :value)")
            .condition_expression("claimToken = :token")
            .expression_attribute_names("#list", attribute)
            .expression_attribute_values(":none", AttributeValue::L(Vec::new()))
            .expression_attribute_values(":value", AttributeValue::L(vec![s(value)]))
            .expression_attribute_values(":token", s(token))
            .send()
            .await;
        Ok(conditional_update(result)?.is_ok())
    }

    /// Writes a worker's outcome in one `TransactWriteItems`: the enrichment (on condition it is
    /// still `pending` and claimed by `token`), the person's merged contacts and the new global
    /// cache entry; an enrichment that ends `failed` (or finishes without data, with
    /// [`Completion::refund_miss`]) gives its credits back in the same transaction (a `refund`
    /// credit transaction). With [`Completion::held`] values, their holder items and a check
    /// that none of their keys is suppressed ([`Store::suppress`]). The webhook event of the
    /// outcome goes to the outbox in the same transaction ([`Store::outbox_put`]). Returns `false` when the
    /// claim was lost (the enrichment timed out or was replaced meanwhile): nothing is written
    /// then.
    ///
    /// Errors: [`StoreError::Suppressed`] when a key was suppressed since the worker checked
    /// (nothing written); DynamoDB failures.
    pub async fn complete(
        &self,
        record: &EnrichmentRecord,
        token: &str,
        completion: &Completion,
        now: &str,
    ) -> Result<bool, StoreError> {
        let enrichment = &record.enrichment;
        let mut update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::key_of(enrichment)))
            .update_expression(
                "SET #status = :status, dataFound = :dataFound, #error = :error, \
                 globalEnrichmentId = :global, updatedAt = :now REMOVE claimToken, claimUntil, providersAnswered, providerJobs, providersFailed",
            )
            .condition_expression("id = :id AND #status = :pending AND claimToken = :token")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#error", "error")
            .expression_attribute_values(":status", s(completion.status.as_str()))
            .expression_attribute_values(":pending", s(Status::Pending.as_str()))
            .expression_attribute_values(":id", s(enrichment.id.to_string()))
            .expression_attribute_values(":token", s(token))
            .expression_attribute_values(":now", s(now));
        update = update
            .expression_attribute_values(
                ":dataFound",
                completion
                    .data_found
                    .map_or(AttributeValue::Null(true), AttributeValue::Bool),
            )
            .expression_attribute_values(
                ":error",
                completion
                    .error
                    .clone()
                    .map_or(AttributeValue::Null(true), s),
            )
            .expression_attribute_values(
                ":global",
                completion
                    .global_enrichment_id
                    .map_or(AttributeValue::Null(true), |id| s(id.to_string())),
            );
        let mut items = vec![
            TransactWriteItem::builder()
                .update(update.build().map_err(build_error)?)
                .build(),
        ];
        let mut checks = 0..0;
        if let Some(contacts) = &completion.person_contacts {
            let person = Update::builder()
                .table_name(&self.table)
                .key("pk", s(org_pk(&enrichment.org_id)))
                .key("sk", s(person_sk(enrichment.entity_id)))
                .update_expression("SET #field = :contacts, updatedAt = :now")
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_names("#field", enrichment.field.as_str())
                .expression_attribute_values(":now", s(now))
                .expression_attribute_values(
                    ":contacts",
                    serde_dynamo::to_attribute_value(contacts).map_err(shape_error)?,
                )
                .build()
                .map_err(build_error)?;
            items.push(TransactWriteItem::builder().update(person).build());
            if let Some(held) = &completion.held {
                items.extend(self.holder_puts(
                    &enrichment.org_id,
                    enrichment.entity_id,
                    enrichment.field,
                    held,
                )?);
                let first = items.len();
                items.extend(self.unsuppressed_checks(held)?);
                checks = first..items.len();
            }
        }
        if let Some((fingerprint, entry)) = &completion.cache {
            let (pk, sk) = cache_key(fingerprint, enrichment.field);
            let item: Item = serde_dynamo::to_item(CacheItem {
                pk,
                sk,
                entry: entry.clone(),
            })
            .map_err(shape_error)?;
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .build()
                .map_err(build_error)?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        if completion.refunds() {
            items.extend(self.refund_items(enrichment, record.credits_charged, now)?);
        }
        let ended = Enrichment {
            status: completion.status,
            data_found: completion.data_found,
            error: completion.error.clone(),
            global_enrichment_id: completion.global_enrichment_id,
            updated_at: now.to_string(),
            ..enrichment.clone()
        };
        items.extend(self.outbox_put(&ended, now)?);
        match self.transact(items).await? {
            None => {
                let refunded = if completion.refunds() {
                    record.credits_charged
                } else {
                    0
                };
                let (status, found) = (completion.status, completion.data_found);
                crate::metrics::ended(enrichment.field, status, found, refunded);
                Ok(true)
            }
            Some(reasons) if reasons.first().is_some_and(|r| r.failed) => Ok(false),
            Some(reasons)
                if reasons
                    .get(checks)
                    .is_some_and(|checked| checked.iter().any(|r| r.failed)) =>
            {
                Err(StoreError::Suppressed)
            }
            Some(reasons) => Err(cancelled("completion", &reasons)),
        }
    }
}
