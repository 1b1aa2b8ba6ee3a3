//! The providers' shared rate limits and circuits (see [`crate::limiter`]): one item per
//! provider, `PROVIDER#{name}` / `LIMIT`, with
//!
//! - `next`: Unix milliseconds, the earliest start of the next reserved call (a GCRA's
//!   theoretical arrival time: the queue);
//! - `secondIndex` / `secondUsed` and `minuteIndex` / `minuteUsed`: the calendar second (minute)
//!   since the epoch calls last started in, and how many did (the gate);
//! - `openUntil`: Unix milliseconds, until when the circuit is open; `failures`: the openings
//!   since the provider's last good answer (the backoff's exponent).
//!
//! Every write is one conditional `UpdateItem` on that item. Each exists in a few forms (idle or
//! queued, same window or a new one), exclusive by their conditions: the caller's
//! [`ProviderState`] (what the item held at its last write) picks the form, and a failed
//! condition returns the item as it is (`ReturnValuesOnConditionCheckFailure`), which picks
//! the right one for the next try.

use super::*;

const LIMIT_SK: &str = "LIMIT";

/// How many forms an update tries before it gives up (each failure returns the item as it is,
/// so a second try fails only when another worker wrote in between).
const TRIES: usize = 6;

fn limit_key(provider: &str) -> Item {
    Store::key(format!("PROVIDER#{provider}"), LIMIT_SK)
}

/// A provider's `LIMIT` item, as last read or written by this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProviderState {
    /// `next`, Unix milliseconds.
    pub next_ms: Option<i64>,
    /// `openUntil`, Unix milliseconds.
    pub open_until_ms: Option<i64>,
    /// `failures`.
    pub failures: u32,
    /// `secondIndex`, `secondUsed`.
    pub second: Option<(i64, u32)>,
    /// `minuteIndex`, `minuteUsed`.
    pub minute: Option<(i64, u32)>,
}

/// The `LIMIT` item's attributes as stored; each is written by its own kind of update, so any
/// may be missing.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LimitItem {
    next: Option<i64>,
    open_until: Option<i64>,
    #[serde(default)]
    failures: u32,
    second_index: Option<i64>,
    #[serde(default)]
    second_used: u32,
    minute_index: Option<i64>,
    #[serde(default)]
    minute_used: u32,
}

impl ProviderState {
    /// The state of the item DynamoDB returned (none: the item does not exist yet).
    ///
    /// Errors: an attribute of another type than the updates write ([`StoreError::Shape`]).
    fn read(item: Option<Item>) -> Result<Self, StoreError> {
        let Some(item) = item else {
            return Ok(Self::default());
        };
        let item: LimitItem = serde_dynamo::from_item(item).map_err(shape_error)?;
        Ok(Self {
            next_ms: item.next,
            open_until_ms: item.open_until,
            failures: item.failures,
            second: item.second_index.map(|index| (index, item.second_used)),
            minute: item.minute_index.map(|index| (index, item.minute_used)),
        })
    }

    /// The circuit's end when it is open at `now_ms`.
    fn open_at(&self, now_ms: i64) -> Option<i64> {
        self.open_until_ms.filter(|until| *until > now_ms)
    }
}

/// A calendar window of a provider's limit: a second or a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Calendar seconds (`<NAME>_RATE_PER_SECOND`).
    Second,
    /// Calendar minutes (`<NAME>_RATE_PER_MINUTE`).
    Minute,
}

impl Window {
    /// The window's length in milliseconds.
    pub fn span_ms(self) -> i64 {
        match self {
            Window::Second => 1_000,
            Window::Minute => 60_000,
        }
    }

    fn names(self) -> (&'static str, &'static str) {
        match self {
            Window::Second => ("secondIndex", "secondUsed"),
            Window::Minute => ("minuteIndex", "minuteUsed"),
        }
    }

    fn of(self, state: &ProviderState) -> Option<(i64, u32)> {
        match self {
            Window::Second => state.second,
            Window::Minute => state.minute,
        }
    }

    fn set(self, state: &mut ProviderState, value: (i64, u32)) {
        match self {
            Window::Second => state.second = Some(value),
            Window::Minute => state.minute = Some(value),
        }
    }
}

/// What the gate said of a call about to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Counted in its windows: call now. `failures`: the circuit's openings since the last good
    /// answer, as they were.
    Pass {
        /// The provider's `failures`.
        failures: u32,
    },
    /// A window is full: nothing counted; the next window starts at `until_ms`.
    Full {
        /// Unix milliseconds.
        until_ms: i64,
    },
    /// The circuit is open until `until_ms`: nothing counted.
    Open {
        /// Unix milliseconds.
        until_ms: i64,
    },
}

/// The reservation's three forms, exclusive by their conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    /// No call queued and the circuit closed: the slot is now.
    Idle,
    /// Calls queued (`next` at or after now and after the circuit): the slot is `next`.
    Queued,
    /// The circuit open past `next`: the slot is `openUntil`, the probe's.
    AfterCircuit,
}

impl Queue {
    fn of(state: &ProviderState, now_ms: i64) -> Self {
        match (state.next_ms, state.open_at(now_ms)) {
            (Some(next), None) if next >= now_ms => Queue::Queued,
            (_, None) => Queue::Idle,
            (Some(next), Some(until)) if next >= until => Queue::Queued,
            (_, Some(_)) => Queue::AfterCircuit,
        }
    }
}

const CIRCUIT_CLOSED: &str = "(attribute_not_exists(#open) OR #open <= :now)";

impl Store {
    /// Reserves `provider`'s next call slot, `interval_ms` after the one before it, and
    /// returns it (Unix milliseconds): now when no call is queued, else `next`, and never
    /// before an open circuit's end. One conditional `UpdateItem` when `state` is current, one
    /// more per form it guessed wrong; `state` is left as the item is after the write.
    ///
    /// Errors: DynamoDB failures, or the item kept changing under [`TRIES`] tries.
    pub async fn reserve_provider_slot(
        &self,
        provider: &str,
        interval_ms: i64,
        now_ms: i64,
        state: &mut ProviderState,
    ) -> Result<i64, StoreError> {
        for _ in 0..TRIES {
            let form = Queue::of(state, now_ms);
            let update = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(limit_key(provider)))
                .expression_attribute_names("#next", "next")
                .expression_attribute_names("#open", "openUntil")
                .expression_attribute_values(":now", n(now_ms))
                .return_values(ReturnValue::AllOld)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            let update = match form {
                Queue::Idle => update
                    .update_expression("SET #next = :after")
                    .condition_expression(format!(
                        "(attribute_not_exists(#next) OR #next < :now) AND {CIRCUIT_CLOSED}"
                    ))
                    .expression_attribute_values(":after", n(now_ms + interval_ms)),
                Queue::Queued => update
                    .update_expression("SET #next = #next + :interval")
                    .condition_expression(
                        "#next >= :now AND (attribute_not_exists(#open) OR #open <= #next)",
                    )
                    .expression_attribute_values(":interval", n(interval_ms)),
                Queue::AfterCircuit => update
                    .update_expression("SET #next = #open + :interval")
                    .condition_expression(
                        "#open > :now AND (attribute_not_exists(#next) OR #next < #open)",
                    )
                    .expression_attribute_values(":interval", n(interval_ms)),
            };
            match conditional_update(update.send().await)? {
                Ok(output) => {
                    *state = ProviderState::read(output.attributes)?;
                    let slot = match form {
                        Queue::Idle => now_ms,
                        Queue::Queued => state.next_ms.unwrap_or(now_ms),
                        Queue::AfterCircuit => state.open_until_ms.unwrap_or(now_ms),
                    };
                    state.next_ms = Some(slot + interval_ms);
                    return Ok(slot);
                }
                Err(item) => *state = ProviderState::read(item)?,
            }
        }
        Err(StoreError::Dynamo {
            operation: "UpdateItem",
            message: format!("the call queue of {provider} kept moving"),
        })
    }

    /// The gate right before a call to `provider` starts: counts it in the calendar windows
    /// of `now_ms` on condition each holds fewer than its limit and the circuit is closed.
    /// One conditional `UpdateItem` when `state` is current (a window it last saw is still the
    /// window), one more per form it guessed wrong; `state` is left as the item is.
    ///
    /// Errors: DynamoDB failures, or the item kept changing under [`TRIES`] tries.
    pub async fn pass_provider_gate(
        &self,
        provider: &str,
        windows: &[(Window, u32)],
        now_ms: i64,
        state: &mut ProviderState,
    ) -> Result<Gate, StoreError> {
        for _ in 0..TRIES {
            let mut update = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(limit_key(provider)))
                .expression_attribute_names("#open", "openUntil")
                .expression_attribute_values(":now", n(now_ms))
                .expression_attribute_values(":one", n(1))
                .return_values(ReturnValue::AllOld)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            let mut conditions = vec![CIRCUIT_CLOSED.to_string()];
            let (mut sets, mut adds) = (Vec::new(), Vec::new());
            for (window, limit) in windows {
                let (index_name, used_name) = window.names();
                let (i, u) = (format!("#{index_name}"), format!("#{used_name}"));
                let (vi, vl) = (format!(":{index_name}"), format!(":{used_name}Limit"));
                let index = now_ms.div_euclid(window.span_ms());
                update = update
                    .expression_attribute_names(&i, index_name)
                    .expression_attribute_names(&u, used_name)
                    .expression_attribute_values(&vi, n(index));
                if window.of(state).is_some_and(|(seen, _)| seen == index) {
                    conditions.push(format!("{i} = {vi} AND {u} < {vl}"));
                    update = update.expression_attribute_values(&vl, n(i64::from(*limit)));
                    adds.push(format!("{u} :one"));
                } else {
                    conditions.push(format!("(attribute_not_exists({i}) OR {i} < {vi})"));
                    sets.push(format!("{i} = {vi}, {u} = :one"));
                }
            }
            let mut expression = String::new();
            if !sets.is_empty() {
                expression = format!("SET {}", sets.join(", "));
            }
            if !adds.is_empty() {
                expression = format!("{expression} ADD {}", adds.join(", "));
            }
            let update = update
                .update_expression(expression.trim())
                .condition_expression(conditions.join(" AND "));
            match conditional_update(update.send().await)? {
                Ok(output) => {
                    *state = ProviderState::read(output.attributes)?;
                    let failures = state.failures;
                    for (window, _) in windows {
                        let index = now_ms.div_euclid(window.span_ms());
                        let used = window
                            .of(state)
                            .filter(|(seen, _)| *seen == index)
                            .map_or(0, |(_, used)| used);
                        window.set(state, (index, used + 1));
                    }
                    return Ok(Gate::Pass { failures });
                }
                Err(item) => {
                    *state = ProviderState::read(item)?;
                    if let Some(until_ms) = state.open_at(now_ms) {
                        return Ok(Gate::Open { until_ms });
                    }
                    // A full window, or one a worker whose clock is ahead already started:
                    // wait for the one after it.
                    let full = windows.iter().filter_map(|(window, limit)| {
                        let index = now_ms.div_euclid(window.span_ms());
                        let (seen, used) = window.of(state)?;
                        ((seen == index && used >= *limit) || seen > index)
                            .then(|| (seen + 1) * window.span_ms())
                    });
                    if let Some(until_ms) = full.max() {
                        return Ok(Gate::Full { until_ms });
                    }
                }
            }
        }
        Err(StoreError::Dynamo {
            operation: "UpdateItem",
            message: format!("the windows of {provider} kept moving"),
        })
    }

    /// Opens `provider`'s circuit until `until_ms` unless it is open at `now_ms` already, and
    /// then counts one more failure: the failures of a round of calls that were already under
    /// way count once. Returns when the circuit closes (this opening's end, or the one it
    /// found). One conditional `UpdateItem`.
    ///
    /// Errors: DynamoDB failures.
    pub async fn open_provider_circuit(
        &self,
        provider: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(limit_key(provider)))
            .update_expression("SET #open = :until ADD failures :one")
            .condition_expression(CIRCUIT_CLOSED)
            .expression_attribute_names("#open", "openUntil")
            .expression_attribute_values(":until", n(until_ms))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":one", n(1))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        Ok(match conditional_update(result)? {
            Ok(_) => until_ms,
            Err(item) => ProviderState::read(item)?.open_until_ms.unwrap_or(until_ms),
        })
    }

    /// Resets `provider`'s failures after a good answer at `now_ms`, on condition the
    /// circuit is closed (a failure that opened it again meanwhile keeps its count). One
    /// conditional `UpdateItem`, made only when the gate saw failures.
    ///
    /// Errors: DynamoDB failures.
    pub async fn close_provider_circuit(
        &self,
        provider: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(limit_key(provider)))
            .update_expression("REMOVE failures")
            .condition_expression(CIRCUIT_CLOSED)
            .expression_attribute_names("#open", "openUntil")
            .expression_attribute_values(":now", n(now_ms))
            .send()
            .await;
        conditional_update(result).map(|_| ())
    }
}
