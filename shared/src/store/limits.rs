//! The providers' shared rate limits (see [`crate::limiter`]), in the partition
//! `PROVIDER#{name}`:
//!
//! - `LIMIT`: `next` (Unix milliseconds: the earliest time the next call may start, a GCRA's
//!   theoretical arrival time, where calls queue) and `failures` (the provider's unavailable
//!   answers since its last good one, for the circuit's backoff);
//! - `S#{unix second}` and `M#{unix minute}`: `used`, the calls started in that calendar second
//!   or minute (the gate each call passes), expiring an hour later.

use super::*;

const LIMIT_SK: &str = "LIMIT";

fn limit_key(provider: &str) -> Item {
    Store::key(format!("PROVIDER#{provider}"), LIMIT_SK)
}

/// A reserved call slot: when the call may start and the provider's failure count as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// The provider's unavailable answers since its last good one.
    pub failures: u32,
}

fn number(item: Option<&Item>, name: &str) -> Option<i64> {
    match item?.get(name)? {
        AttributeValue::N(n) => n.parse().ok(),
        _ => None,
    }
}

impl Store {
    /// Reserves the next call slot of `provider`, `interval_ms` after the one before it: one
    /// conditional `UpdateItem` while calls queue up (`next = next + interval` on condition
    /// `next >= now`, the slot being the old `next`), or when the provider is idle
    /// (`next = now + interval` on condition `next < now` or no item, the slot being `now`).
    /// `busy` says which to try first (what the last reservation found); the other follows
    /// when its condition fails, and the two are tried again (three rounds at most) when
    /// another worker moved `next` in between.
    ///
    /// Errors: DynamoDB failures, or `next` kept moving.
    pub async fn reserve_provider_slot(
        &self,
        provider: &str,
        interval_ms: i64,
        now_ms: i64,
        busy: bool,
    ) -> Result<Slot, StoreError> {
        let mut queued = busy;
        for _ in 0..6 {
            let update = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(limit_key(provider)))
                .expression_attribute_names("#next", "next")
                .expression_attribute_values(":now", n(now_ms))
                .return_values(ReturnValue::AllOld);
            let update = if queued {
                update
                    .update_expression("SET #next = #next + :interval")
                    .condition_expression("#next >= :now")
                    .expression_attribute_values(":interval", n(interval_ms))
            } else {
                update
                    .update_expression("SET #next = :after")
                    .condition_expression("attribute_not_exists(#next) OR #next < :now")
                    .expression_attribute_values(":after", n(now_ms + interval_ms))
            };
            if let Ok(output) = conditional_update(update.send().await)? {
                let old = output.attributes.as_ref();
                let failures = number(old, "failures").unwrap_or(0).clamp(0, 1_000) as u32;
                let at_ms = if queued {
                    number(old, "next").unwrap_or(now_ms)
                } else {
                    now_ms
                };
                return Ok(Slot { at_ms, failures });
            }
            queued = !queued;
        }
        Err(StoreError::Dynamo {
            operation: "UpdateItem",
            message: format!("the rate limit of {provider} kept moving"),
        })
    }

    /// Opens `provider`'s circuit until `until_ms`: no slot is reserved before then (`next`
    /// moves there unless it is later already) and `failures` counts one more. One
    /// `UpdateItem`; a later `next` is left as it is.
    ///
    /// Errors: DynamoDB failures.
    pub async fn open_provider_circuit(
        &self,
        provider: &str,
        until_ms: i64,
    ) -> Result<(), StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(limit_key(provider)))
            .update_expression("SET #next = :until ADD failures :one")
            .condition_expression("attribute_not_exists(#next) OR #next < :until")
            .expression_attribute_names("#next", "next")
            .expression_attribute_values(":until", n(until_ms))
            .expression_attribute_values(":one", n(1))
            .send()
            .await;
        conditional_update(result).map(|_| ())
    }

    /// Closes `provider`'s circuit after a good answer: `failures` back to none. One
    /// `UpdateItem`, made only when the caller's slot saw failures.
    ///
    /// Errors: DynamoDB failures.
    pub async fn close_provider_circuit(&self, provider: &str) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(limit_key(provider)))
            .update_expression("REMOVE failures")
            .send()
            .await
            .map_err(dynamo_error("UpdateItem"))?;
        Ok(())
    }

    /// Counts a call to `provider` in the calendar `window` (`S` seconds or `M` minutes, its
    /// `index` since the epoch) on condition fewer than `limit` were counted there: one
    /// conditional `UpdateItem` (`ADD used :one`). `false` when the window is full (nothing
    /// counted).
    ///
    /// Errors: DynamoDB failures.
    pub async fn count_provider_call(
        &self,
        provider: &str,
        (window, index): (char, i64),
        limit: u32,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("PROVIDER#{provider}")))
            .key("sk", s(format!("{window}#{index}")))
            .update_expression("ADD used :one SET expiresAt = :expires")
            .condition_expression("attribute_not_exists(used) OR used < :limit")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":limit", n(i64::from(limit)))
            .expression_attribute_values(":expires", n(expires_at))
            .send()
            .await;
        Ok(conditional_update(result)?.is_ok())
    }
}
