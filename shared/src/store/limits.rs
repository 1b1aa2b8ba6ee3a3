//! The providers' shared rate limits and circuits (see [`crate::limiter`]): one item per
//! provider, `PROVIDER#{name}` / `LIMIT`, with
//!
//! - `next`: Unix milliseconds, the earliest start of the next reserved call (a GCRA's
//!   theoretical arrival time: the queue);
//! - `bulkNext`: Unix milliseconds, the next ticket of the bulks' own line, for when the queue
//!   runs too far ahead for a bulk's job to join it (see [`crate::limiter`], fairness);
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

use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;

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
    /// `bulkNext`, Unix milliseconds.
    pub bulk_next_ms: Option<i64>,
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
    bulk_next: Option<i64>,
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
            bulk_next_ms: item.bulk_next,
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

    /// When the next reservation's slot would be: after the queued calls and the open circuit
    /// (`None`: now, nothing queued).
    fn queue_end(&self) -> Option<i64> {
        self.next_ms.max(self.open_until_ms)
    }
}

/// What a reservation got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// A call slot: the call may start in its calendar second (Unix milliseconds).
    Slot(i64),
    /// A call slot in the calendar windows of the reservation's [`Count`], and the call
    /// counted in them by the same update: the gate passes it without another while it starts
    /// in those windows.
    Counted(i64),
    /// A bulk's job found the queue running past its horizon: no slot, but a ticket in the
    /// bulks' own line (Unix milliseconds), spaced by the same interval, when it is to try
    /// again.
    Ticket(i64),
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

/// A call counted in a provider's calendar windows: each window with its limit, at `at_ms`
/// (Unix milliseconds; the gate's clock, [`crate::limiter::WINDOW_GUARD`] ahead).
#[derive(Debug, Clone, Copy)]
pub struct Count<'a> {
    /// The limited windows and their limits (calls per window).
    pub windows: &'a [(Window, u32)],
    /// When the call is counted, Unix milliseconds.
    pub at_ms: i64,
}

/// The parts of an update that count a call: its conditions (each window holds fewer than its
/// limit), `SET` clauses (a window this process saw end starts again at one) and `ADD` clauses.
struct Counting {
    conditions: Vec<String>,
    sets: Vec<String>,
    adds: Vec<String>,
}

impl Count<'_> {
    /// Adds the counting's names and values to `update` (`:one` included) and returns its
    /// parts, in the form `state` calls for: the same window or a new one.
    fn parts(
        &self,
        mut update: UpdateItemFluentBuilder,
        state: &ProviderState,
    ) -> (UpdateItemFluentBuilder, Counting) {
        let mut counting = Counting {
            conditions: Vec::new(),
            sets: Vec::new(),
            adds: Vec::new(),
        };
        update = update.expression_attribute_values(":one", n(1));
        for (window, limit) in self.windows {
            let (index_name, used_name) = window.names();
            let (i, u) = (format!("#{index_name}"), format!("#{used_name}"));
            let (vi, vl) = (format!(":{index_name}"), format!(":{used_name}Limit"));
            let index = self.at_ms.div_euclid(window.span_ms());
            update = update
                .expression_attribute_names(&i, index_name)
                .expression_attribute_names(&u, used_name)
                .expression_attribute_values(&vi, n(index));
            if window.of(state).is_some_and(|(seen, _)| seen == index) {
                counting
                    .conditions
                    .push(format!("{i} = {vi} AND {u} < {vl}"));
                update = update.expression_attribute_values(&vl, n(i64::from(*limit)));
                counting.adds.push(format!("{u} :one"));
            } else {
                counting
                    .conditions
                    .push(format!("(attribute_not_exists({i}) OR {i} < {vi})"));
                counting.sets.push(format!("{i} = {vi}, {u} = :one"));
            }
        }
        (update, counting)
    }

    /// `state` (the item before the update) with the call counted.
    fn counted(&self, state: &mut ProviderState) {
        for (window, _) in self.windows {
            let index = self.at_ms.div_euclid(window.span_ms());
            let used = window
                .of(state)
                .filter(|(seen, _)| *seen == index)
                .map_or(0, |(_, used)| used);
            window.set(state, (index, used + 1));
        }
    }

    /// When the next window starts, if `state` has a window of the count full (or started
    /// by a worker whose clock is ahead).
    fn full_until(&self, state: &ProviderState) -> Option<i64> {
        self.windows
            .iter()
            .filter_map(|(window, limit)| {
                let index = self.at_ms.div_euclid(window.span_ms());
                let (seen, used) = window.of(state)?;
                ((seen == index && used >= *limit) || seen > index)
                    .then(|| (seen + 1) * window.span_ms())
            })
            .max()
    }

    /// The end of the calendar second the call is counted in: a slot before it starts now.
    fn second_end(&self) -> i64 {
        (self.at_ms.div_euclid(Window::Second.span_ms()) + 1) * Window::Second.span_ms()
    }
}

/// The update expression of `sets` and `adds`.
fn expression(sets: &[String], adds: &[String]) -> String {
    let mut expression = String::new();
    if !sets.is_empty() {
        expression = format!("SET {}", sets.join(", "));
    }
    if !adds.is_empty() {
        expression = format!("{expression} ADD {}", adds.join(", "));
    }
    expression.trim().to_string()
}

/// The reservation's forms, exclusive by their conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    /// No call queued and the circuit closed: the slot is now.
    Idle,
    /// Calls queued (`next` at or after now and after the circuit): the slot is `next`.
    Queued,
    /// The circuit open past `next`: the slot is `openUntil`, the probe's.
    AfterCircuit,
    /// A bulk's job, the queue's end past its horizon: a ticket at `base` (the queue's end:
    /// when the calls queued now are done), the bulks' line being idle until then.
    TicketIdle { base: i64 },
    /// The same, the bulks' line (`bulkNext`) at or after `base`: the ticket is `bulkNext`.
    TicketQueued { base: i64 },
}

impl Queue {
    /// The form `state` calls for at `now_ms`; `horizon_ms`: a bulk's job's horizon.
    fn of(state: &ProviderState, now_ms: i64, horizon_ms: Option<i64>) -> Self {
        if let (Some(horizon), Some(base)) = (horizon_ms, state.queue_end())
            && base > now_ms + horizon
        {
            return match state.bulk_next_ms {
                Some(bulk) if bulk >= base => Queue::TicketQueued { base },
                _ => Queue::TicketIdle { base },
            };
        }
        match (state.next_ms, state.open_at(now_ms)) {
            (Some(next), None) if next >= now_ms => Queue::Queued,
            (_, None) => Queue::Idle,
            (Some(next), Some(until)) if next >= until => Queue::Queued,
            (_, Some(_)) => Queue::AfterCircuit,
        }
    }
}

const CIRCUIT_CLOSED: &str = "(attribute_not_exists(#open) OR #open <= :now)";

/// The queue's end (after its calls and the circuit) is within a bulk's horizon.
const WITHIN_HORIZON: &str = "(attribute_not_exists(#next) OR #next <= :horizon) AND (attribute_not_exists(#open) OR #open <= :horizon)";

/// The queue's end is past a bulk's horizon.
const PAST_HORIZON: &str = "(#next > :horizon OR #open > :horizon)";

impl Store {
    /// Reserves `provider`'s next call slot, `interval_ms` after the one before it, and
    /// returns it (Unix milliseconds): now when no call is queued, else `next`, and never
    /// before an open circuit's end. A bulk's job (`horizon_ms`: how far ahead of `now_ms` it
    /// may take a slot) gets one only while the queue's end is within its horizon; past it, a
    /// [`Reservation::Ticket`] in the bulks' own line, which starts at the queue's end (when
    /// the calls queued now are done), so that the queue never holds more than the horizon of
    /// bulk calls ahead of a later interactive one, and a ticket's job finds a slot near when
    /// it comes back. With `count`, a slot that starts before the end of the count's calendar
    /// second, with the circuit closed and room in the count's windows, also counts the call
    /// there ([`Reservation::Counted`]): the gate's update folded into this one. One
    /// conditional `UpdateItem` when `state` is current, one more per form it guessed wrong;
    /// `state` is left as the item is after the write.
    ///
    /// Errors: DynamoDB failures, or the item kept changing under [`TRIES`] tries.
    pub async fn reserve_provider_slot(
        &self,
        provider: &str,
        interval_ms: i64,
        now_ms: i64,
        horizon_ms: Option<i64>,
        count: Option<Count<'_>>,
        state: &mut ProviderState,
    ) -> Result<Reservation, StoreError> {
        for _ in 0..TRIES {
            let form = Queue::of(state, now_ms, horizon_ms);
            // Counted only where the slot starts in the count's second and nothing this
            // process saw refuses it: else the plain form, and the gate counts the call.
            let count = count.filter(|count| {
                let near = match form {
                    Queue::Idle => true,
                    Queue::Queued => state.next_ms.is_some_and(|next| next < count.second_end()),
                    _ => false,
                };
                near && state.open_at(count.at_ms).is_none() && count.full_until(state).is_none()
            });
            let mut update = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(limit_key(provider)))
                .expression_attribute_names("#next", "next")
                .expression_attribute_names("#open", "openUntil")
                .return_values(ReturnValue::AllOld)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            if let Some(horizon) = horizon_ms {
                update = update.expression_attribute_values(":horizon", n(now_ms + horizon));
            }
            let is_ticket = matches!(form, Queue::TicketIdle { .. } | Queue::TicketQueued { .. });
            update = match form {
                Queue::Idle => {
                    update.expression_attribute_values(":after", n(now_ms + interval_ms))
                }
                Queue::Queued | Queue::AfterCircuit => {
                    update.expression_attribute_values(":interval", n(interval_ms))
                }
                Queue::TicketIdle { base } => update
                    .expression_attribute_values(":base", n(base))
                    .expression_attribute_values(":after", n(base + interval_ms)),
                Queue::TicketQueued { base } => update
                    .expression_attribute_values(":base", n(base))
                    .expression_attribute_values(":interval", n(interval_ms)),
            };
            update = if is_ticket {
                update.expression_attribute_names("#bulk", "bulkNext")
            } else {
                update.expression_attribute_values(":now", n(now_ms))
            };
            let (set, condition) = match form {
                Queue::Idle => (
                    "#next = :after",
                    format!("(attribute_not_exists(#next) OR #next < :now) AND {CIRCUIT_CLOSED}"),
                ),
                Queue::Queued => (
                    "#next = #next + :interval",
                    "#next >= :now AND (attribute_not_exists(#open) OR #open <= #next)".to_string(),
                ),
                Queue::AfterCircuit => (
                    "#next = #open + :interval",
                    "#open > :now AND (attribute_not_exists(#next) OR #next < #open)".to_string(),
                ),
                Queue::TicketIdle { .. } => (
                    "#bulk = :after",
                    format!("{PAST_HORIZON} AND (attribute_not_exists(#bulk) OR #bulk < :base)"),
                ),
                Queue::TicketQueued { .. } => (
                    "#bulk = #bulk + :interval",
                    format!("{PAST_HORIZON} AND #bulk >= :base"),
                ),
            };
            let mut conditions = vec![condition];
            // A bulk's job takes a slot on condition the queue's end is within its horizon
            // (the idle form's own condition implies it, but every value given must be used).
            if horizon_ms.is_some() && !is_ticket {
                conditions.push(WITHIN_HORIZON.to_string());
            }
            let (mut sets, mut adds) = (vec![set.to_string()], Vec::new());
            if let Some(count) = &count {
                let (counting_update, counting) = count.parts(update, state);
                update = counting_update;
                conditions.extend(counting.conditions);
                if form == Queue::Queued {
                    // The slot starts before the count's second ends, the circuit closed then
                    // (the idle form's slot is now, the circuit closed now).
                    update = update
                        .expression_attribute_values(":slotEnd", n(count.second_end()))
                        .expression_attribute_values(":countAt", n(count.at_ms));
                    conditions.push(
                        "#next < :slotEnd AND (attribute_not_exists(#open) OR #open <= :countAt)"
                            .to_string(),
                    );
                }
                sets.extend(counting.sets);
                adds.extend(counting.adds);
            }
            let update = update
                .update_expression(expression(&sets, &adds))
                .condition_expression(conditions.join(" AND "));
            match conditional_update(update.send().await)? {
                Ok(output) => {
                    *state = ProviderState::read(output.attributes)?;
                    let slot = match form {
                        Queue::Idle => now_ms,
                        Queue::Queued => state.next_ms.unwrap_or(now_ms),
                        Queue::AfterCircuit => state.open_until_ms.unwrap_or(now_ms),
                        Queue::TicketIdle { base } => {
                            state.bulk_next_ms = Some(base + interval_ms);
                            return Ok(Reservation::Ticket(base));
                        }
                        Queue::TicketQueued { base } => {
                            let ticket = state.bulk_next_ms.unwrap_or(base);
                            state.bulk_next_ms = Some(ticket + interval_ms);
                            return Ok(Reservation::Ticket(ticket));
                        }
                    };
                    state.next_ms = Some(slot + interval_ms);
                    return Ok(match count {
                        Some(count) => {
                            count.counted(state);
                            Reservation::Counted(slot)
                        }
                        None => Reservation::Slot(slot),
                    });
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
        let count = Count {
            windows,
            at_ms: now_ms,
        };
        for _ in 0..TRIES {
            let update = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(limit_key(provider)))
                .expression_attribute_names("#open", "openUntil")
                .expression_attribute_values(":now", n(now_ms))
                .return_values(ReturnValue::AllOld)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            let (update, counting) = count.parts(update, state);
            let mut conditions = vec![CIRCUIT_CLOSED.to_string()];
            conditions.extend(counting.conditions);
            let update = update
                .update_expression(expression(&counting.sets, &counting.adds))
                .condition_expression(conditions.join(" AND "));
            match conditional_update(update.send().await)? {
                Ok(output) => {
                    *state = ProviderState::read(output.attributes)?;
                    let failures = state.failures;
                    count.counted(state);
                    return Ok(Gate::Pass { failures });
                }
                Err(item) => {
                    *state = ProviderState::read(item)?;
                    if let Some(until_ms) = state.open_at(now_ms) {
                        return Ok(Gate::Open { until_ms });
                    }
                    // A full window, or one a worker whose clock is ahead already started:
                    // wait for the one after it.
                    if let Some(until_ms) = count.full_until(state) {
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
