//! The global cache's single-flight lease: taken, renewed before each provider call, given up.

use super::*;

impl Store {
    /// Single flight across orgs: takes the lease on the global cache item of (fingerprint,
    /// field) for `owner` (an enrichment id, so that a redelivery of the same job takes its own
    /// lease back) until `until_unix` (seconds), unless the item holds a fresh entry or another
    /// owner's unexpired lease. One conditional `UpdateItem`; on conflict the item comes back in
    /// the same call (`ALL_OLD`) and tells which.
    pub async fn acquire_cache_lease(
        &self,
        fingerprint: &str,
        field: Field,
        owner: &str,
        now_unix: i64,
        until_unix: i64,
    ) -> Result<CacheLease, StoreError> {
        let (pk, sk) = cache_key(fingerprint, field);
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .update_expression("SET leaseOwner = :owner, leaseUntil = :until")
            .condition_expression(
                "(attribute_not_exists(contacts) OR expiresAt <= :now) \
                 AND (attribute_not_exists(leaseUntil) OR leaseUntil <= :now OR leaseOwner = :owner)",
            )
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":until", n(until_unix))
            .expression_attribute_values(":now", n(now_unix))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match conditional_update(result)? {
            Ok(_) => Ok(CacheLease::Acquired),
            Err(current) => {
                let until_unix = current
                    .as_ref()
                    .and_then(|item| item.get("leaseUntil"))
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(now_unix);
                match current
                    .map(|item| cache_entry(item, now_unix))
                    .transpose()?
                {
                    Some(Some(entry)) => Ok(CacheLease::Cached(Box::new(entry))),
                    _ => Ok(CacheLease::Busy { until_unix }),
                }
            }
        }
    }

    /// The fresh entry of the global cache item of (key, field) at `now_unix`, if any: one
    /// `GetItem` (eventually consistent: an entry is written once and read for days).
    ///
    /// Errors: DynamoDB failures.
    pub async fn cache_entry_at(
        &self,
        key: &str,
        field: Field,
        now_unix: i64,
    ) -> Result<Option<CacheEntry>, StoreError> {
        let (pk, sk) = cache_key(key, field);
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .send()
            .await
            .map_err(dynamo_error("GetItem"))?;
        Ok(match output.item {
            Some(item) => cache_entry(item, now_unix)?,
            None => None,
        })
    }

    /// Records on the global cache item of (fingerprint, field), on condition `owner` holds its
    /// lease, that `provider` was given job `job_id` for this person, usable until
    /// `until_unix` (seconds): a job that outlives its enrichment (cancelled, timed out) is
    /// continued by the next lease holder rather than submitted again (`leaseJobs`, as
    /// `{provider}:{until}:{job_id}`; a found entry replaces the item and them). Returns `false`
    /// when the lease is no longer `owner`'s.
    pub async fn record_lease_job(
        &self,
        fingerprint: &str,
        field: Field,
        owner: &str,
        (provider, job_id): (&str, &str),
        until_unix: i64,
    ) -> Result<bool, StoreError> {
        let (pk, sk) = cache_key(fingerprint, field);
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .update_expression("SET leaseJobs = list_append(if_not_exists(leaseJobs, :none), :job)")
            .condition_expression("leaseOwner = :owner")
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":none", AttributeValue::L(Vec::new()))
            .expression_attribute_values(
                ":job",
                AttributeValue::L(vec![s(format!("{provider}:{until_unix}:{job_id}"))]),
            )
            .send()
            .await;
        Ok(conditional_update(result)?.is_ok())
    }

    /// The job a lease holder of (fingerprint, field) gave `provider` that is still usable at
    /// `now_unix` ([`Store::record_lease_job`]): one consistent `GetItem`.
    ///
    /// Errors: DynamoDB failures.
    pub async fn lease_job(
        &self,
        fingerprint: &str,
        field: Field,
        provider: &str,
        now_unix: i64,
    ) -> Result<Option<String>, StoreError> {
        let (pk, sk) = cache_key(fingerprint, field);
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .projection_expression("leaseJobs")
            .send()
            .await
            .map_err(dynamo_error("GetItem"))?;
        let jobs = output
            .item
            .and_then(|mut item| item.remove("leaseJobs"))
            .and_then(|jobs| jobs.as_l().ok().cloned())
            .unwrap_or_default();
        Ok(jobs.iter().rev().find_map(|entry| {
            let (name, rest) = entry.as_s().ok()?.split_once(':')?;
            let (until, job_id) = rest.split_once(':')?;
            let usable = name == provider && until.parse::<i64>().ok()? > now_unix;
            usable.then(|| job_id.to_string())
        }))
    }

    /// Extends `owner`'s lease on the global cache item of (fingerprint, field) to `until_unix`
    /// (seconds) before a provider call. Returns `false` when the lease is no longer `owner`'s
    /// (it lapsed and another worker took it): the caller goes on without it.
    pub async fn renew_cache_lease(
        &self,
        fingerprint: &str,
        field: Field,
        owner: &str,
        until_unix: i64,
    ) -> Result<bool, StoreError> {
        let (pk, sk) = cache_key(fingerprint, field);
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .update_expression("SET leaseUntil = :until")
            .condition_expression("leaseOwner = :owner")
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":until", n(until_unix))
            .send()
            .await;
        Ok(conditional_update(result)?.is_ok())
    }

    /// Gives the cache lease up (the providers found nothing, or failed), so that a waiting
    /// worker runs them itself. A lease that is no longer `owner`'s is left alone.
    pub async fn release_cache_lease(
        &self,
        fingerprint: &str,
        field: Field,
        owner: &str,
    ) -> Result<(), StoreError> {
        let (pk, sk) = cache_key(fingerprint, field);
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .update_expression("REMOVE leaseOwner, leaseUntil")
            .condition_expression("leaseOwner = :owner")
            .expression_attribute_values(":owner", s(owner))
            .send()
            .await;
        // A claim or lease already taken over by another owner is theirs to keep.
        let _not_ours = conditional_update(result)?;
        Ok(())
    }
}
