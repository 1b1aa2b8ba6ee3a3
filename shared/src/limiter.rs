//! Providers' rate limits shared by every worker, and their circuits.
//!
//! **Rate.** A provider with a limit (`<NAME>_RATE_PER_SECOND`, `<NAME>_RATE_PER_MINUTE`) is
//! called within it by every worker together, through one DynamoDB item per provider (see
//! [`crate::store`]'s `limits`), in two steps:
//!
//! 1. **Queue** ([`Limiter::admit`], [`Store::reserve_provider_slot`]): a call reserves a
//!    slot, a generic cell rate algorithm (GCRA) whose theoretical arrival time is shared.
//!    Slots are spaced evenly, [`SPACING_MARGIN`] wider than the rate, so a calendar second
//!    holds no more slots than the limit, and a call may start anywhere in its slot's second
//!    ([`start_of_second`]). A second that starts less than [`MAX_SLEEP`] away is waited for
//!    in the worker; a later one defers the job: sent back to the queue with the whole
//!    seconds of `DelaySeconds` that bring it back inside that second ([`deferral`]) and the
//!    slot in its message, so no Lambda waits, and the job does not reserve again when it
//!    comes back. (Coming back at the slot itself would take up to a second more.)
//! 2. **Gate** ([`Limiter::gate`], [`Store::pass_provider_gate`]): right before the request
//!    leaves (after the claim's renewal), the call is counted in its calendar second (and
//!    minute) on condition the window holds fewer than the limit and the circuit is closed.
//!    The queue spreads the jobs so that about one window's worth comes back per window, but
//!    a job may come back late: the gate is what keeps each window within the limit, whenever
//!    the calls come. A full window defers the job to the next one, with that as its slot. A
//!    call is counted in the window [`WINDOW_GUARD`] ahead of the clock and, when that is the
//!    next second, waits for it to start: a request leaving in a second's last milliseconds
//!    would reach the provider in the next one, where it was not counted. A reservation whose
//!    slot starts in the current second counts the call in its windows in the same update
//!    ([`Admission::Counted`]), and the gate then passes it without one of its own while the
//!    call starts in those windows.
//!
//! **Circuit.** A limited provider that cannot answer (429, 5xx, time-out, connection error)
//! opens its circuit, unless it is open already (the failures of calls that were under way
//! count once): no call passes the gate, and no slot is given, before its `Retry-After` or,
//! without one, a backoff that doubles with each opening since the last good answer
//! ([`backoff`]: 2 s to 60 s). A job that meets the open circuit, at its reservation or at
//! the gate with a slot it held from before, is deferred to a slot after it, not failed; the
//! first slot after it is the half-open probe, and a good answer resets the backoff. Only the
//! maximum age ends an enrichment that waits on a provider (`timeout`, refunded).
//!
//! **Cost.** A call whose slot starts in the current second makes one `UpdateItem` on the
//! item (the reservation, counted); one whose slot is in the next second, two (reservation and
//! gate); a deferred job's call, two (the reservation before its deferral, the gate when it
//! comes back). A job that comes back to a full window adds one per window it finds full; a
//! form guessed wrong from this process's last view of the item adds one; an opening and a
//! reset of the circuit add one each.
//!
//! **Fairness.** A bulk enrichment's jobs ([`Lane::Bulk`]) take slots only while the
//! queue's end is within [`BULK_HORIZON`] of the clock. Past it, a bulk's job takes a ticket in
//! the bulks' own line (`bulkNext`, spaced as the slots are, starting at the queue's end) and is
//! deferred to it without a slot, to reserve again then, when the calls queued before it are
//! done. A bulk thus comes into the queue at the provider's rate as it empties, and a single or
//! a batch that comes later waits behind at most the horizon of bulk calls, not behind the
//! whole bulk. The queues' fair mode (one message group per org) keeps one org's jobs from
//! holding the workers; this keeps them from holding the provider slots. A bulk's job that
//! finds its window full at the gate (it came back after its slot's second, and another late
//! job took the window) tries again a horizon later, where an interactive one tries the next
//! window ([`full_window_retry`]): the windows late jobs leave go first to the interactive jobs.
//! A bulk's call costs one `UpdateItem` more per ticket it takes.
//!
//! A provider without a limit is called as before: its failures are the cascade's errors.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::store::{Count, Gate, ProviderState, Reservation, Store, StoreError, Window};

/// The longest wait for a slot inside the worker; a later slot defers the job. SQS delays are
/// whole seconds, so a shorter deferral would not be shorter.
pub const MAX_SLEEP: Duration = Duration::from_secs(1);

/// How far ahead of the clock the gate counts a call ([`Limiter::gate`]): more than a
/// request takes to reach the provider once it leaves.
pub const WINDOW_GUARD: Duration = Duration::from_millis(25);

/// When a call about to leave is counted in its windows: the clock, [`WINDOW_GUARD`] ahead,
/// Unix milliseconds.
fn counting_clock() -> i64 {
    Utc::now().timestamp_millis() + WINDOW_GUARD.as_millis() as i64
}

/// The start of the calendar second that holds `at_ms` (Unix milliseconds).
pub fn start_of_second(at_ms: i64) -> i64 {
    at_ms - at_ms.rem_euclid(Window::Second.span_ms())
}

/// How long from `now_ms` until the calendar second that holds `at_ms` starts; zero once it
/// has.
fn until_second_of(at_ms: i64, now_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(start_of_second(at_ms) - now_ms).unwrap_or(0))
}

/// The `DelaySeconds` (whole seconds, as SQS takes them) that bring a job sent back at `now_ms`
/// inside the calendar second of its slot `at_ms`: never before that second starts, less
/// than a second after.
pub fn deferral(at_ms: i64, now_ms: i64) -> Duration {
    let wait = until_second_of(at_ms, now_ms);
    Duration::from_secs(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
}

/// The circuit's first backoff, doubled per failure since the last good answer.
pub const BACKOFF_BASE: Duration = Duration::from_secs(2);

/// The circuit's longest backoff, and the longest `Retry-After` honoured at once (a longer one
/// is probed again then).
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// How much wider than the configured rate calls are spaced (5%): two calls a slot apart never
/// reach the provider inside one of its windows for the jitter of their requests.
pub const SPACING_MARGIN: f64 = 1.05;

/// How far ahead of the clock a bulk's job may take a provider call slot ([`Lane::Bulk`]): at
/// most this much of bulk calls is queued ahead of an interactive job that comes later.
pub const BULK_HORIZON: Duration = Duration::from_secs(4);

/// Which line a job joins in a provider's call queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Lane {
    /// Singles and batches: a slot at the queue's end.
    #[default]
    Interactive,
    /// A bulk enrichment's jobs ([`crate::domain::Job::bulk`]): a slot only within
    /// [`BULK_HORIZON`] of the clock, else a ticket in the bulks' own line and the job tries
    /// again then.
    Bulk,
}

/// A provider's configured rate: `per_second` and/or `per_minute` calls, each at least 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProviderLimit {
    /// `<NAME>_RATE_PER_SECOND` (0 or unset: none).
    pub per_second: Option<u32>,
    /// `<NAME>_RATE_PER_MINUTE` (0 or unset: none).
    pub per_minute: Option<u32>,
}

impl ProviderLimit {
    /// The spacing of calls that keeps within both rates, [`SPACING_MARGIN`] wider, in whole
    /// milliseconds rounded up; `None` without a limit.
    pub fn interval(&self) -> Option<Duration> {
        let second = self
            .per_second
            .filter(|n| *n > 0)
            .map(|n| 1000.0 / f64::from(n));
        let minute = self
            .per_minute
            .filter(|n| *n > 0)
            .map(|n| 60_000.0 / f64::from(n));
        let millis = match (second, minute) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b)?,
        };
        Some(Duration::from_millis(
            (millis * SPACING_MARGIN).ceil() as u64
        ))
    }
}

/// When a job that found its window full tries again, the next window starting at `until_ms`:
/// then for a single's or a batch's job; [`BULK_HORIZON`] after the full one for a bulk's, so
/// that the windows of calls whose job came back late go first to the interactive jobs waiting
/// on the provider, which try every window, and to the bulk's when there are none.
pub fn full_window_retry(until_ms: i64, lane: Lane) -> i64 {
    match lane {
        Lane::Interactive => until_ms,
        Lane::Bulk => until_ms - Window::Second.span_ms() + BULK_HORIZON.as_millis() as i64,
    }
}

/// The calendar windows `limit` limits, each with its limit.
fn windows(limit: &ProviderLimit) -> Vec<(Window, u32)> {
    [
        (Window::Second, limit.per_second),
        (Window::Minute, limit.per_minute),
    ]
    .into_iter()
    .filter_map(|(window, n)| Some((window, n.filter(|n| *n > 0)?)))
    .collect()
}

/// The circuit's wait after `failures` earlier failures: [`BACKOFF_BASE`] × 2^failures, at most
/// [`BACKOFF_MAX`].
pub fn backoff(failures: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(BACKOFF_MAX)
}

/// A slot reserved for a job that was deferred to it: the job calls `provider` when it comes
/// back, without reserving again. Carried in the job's message (`slot`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderSlot {
    /// The provider the slot is for.
    pub provider: String,
    /// When the call may start, Unix milliseconds.
    pub at_ms: i64,
}

/// A call the queue counted in its provider's windows with its slot
/// ([`Reservation::Counted`]): the gate passes it without an update of its own while the call
/// starts in those windows. Kept by the job between [`Limiter::admit`] and [`Limiter::gate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountedCall {
    /// The provider the call was counted for.
    pub provider: String,
    /// When it was counted: the gate's clock, [`WINDOW_GUARD`] ahead, Unix milliseconds.
    pub at_ms: i64,
    /// The provider's circuit openings since its last good answer, as the reservation saw them.
    pub failures: u32,
}

/// What the limiter says before a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Go on: call now (the gate), or go on to the gate (the queue).
    Go {
        /// The provider's circuit openings since its last good answer, as the gate saw them
        /// (a good answer then resets them); 0 from the queue.
        failures: u32,
    },
    /// From the queue: go on, the call counted in its windows already (one `UpdateItem` for
    /// both); hand it to the gate.
    Counted(CountedCall),
    /// Defer the job to the slot.
    Defer(ProviderSlot),
    /// Defer the job without a slot, to reserve again at `at_ms` (Unix milliseconds): a bulk's
    /// ticket ([`Lane::Bulk`]).
    Retry {
        /// Unix milliseconds.
        at_ms: i64,
    },
}

/// The shared limits of the providers that have one. Build once per process.
pub struct Limiter {
    store: Store,
    limits: HashMap<String, (ProviderLimit, Duration)>,
    /// Per provider: its item as this process last saw it (which form of an update to try
    /// first).
    seen: Mutex<HashMap<String, ProviderState>>,
    slept_micros: AtomicU64,
}

impl Limiter {
    /// The limiter of the providers of `limits` that have a rate.
    pub fn new<'a>(
        store: Store,
        limits: impl IntoIterator<Item = (&'a str, ProviderLimit)>,
    ) -> Self {
        let limits = limits
            .into_iter()
            .filter_map(|(name, limit)| Some((name.to_string(), (limit, limit.interval()?))))
            .collect();
        Self {
            store,
            limits,
            seen: Mutex::default(),
            slept_micros: AtomicU64::new(0),
        }
    }

    /// Whether `provider` has a limit.
    pub fn limits(&self, provider: &str) -> bool {
        self.limits.contains_key(provider)
    }

    /// Time spent in this process waiting for slots ([`MAX_SLEEP`] at most each) and for the
    /// gate's window to start ([`WINDOW_GUARD`] at most each).
    pub fn slept(&self) -> Duration {
        Duration::from_micros(self.slept_micros.load(Ordering::Relaxed))
    }

    /// The queue, before a call to `provider`: with `held`, the slot this job was deferred to
    /// (no DynamoDB call); otherwise a new slot is reserved in `lane` (one `UpdateItem`). A
    /// new slot that starts in the current calendar second is counted in the gate's windows by
    /// the same update ([`Admission::Counted`]: no update at the gate). The job is to be
    /// deferred to a slot whose calendar second starts more than [`MAX_SLEEP`] away, and waits
    /// here for a nearer one to start; a bulk's job that got a ticket instead is to be
    /// deferred to it ([`Admission::Retry`]). A provider without a limit is always
    /// [`Admission::Go`].
    ///
    /// Errors: DynamoDB failures (the job is given again by its event source).
    pub async fn admit(
        &self,
        provider: &str,
        held: Option<&ProviderSlot>,
        lane: Lane,
    ) -> Result<Admission, StoreError> {
        let Some((limit, interval)) = self.limits.get(provider) else {
            return Ok(Admission::Go { failures: 0 });
        };
        let slot = match held.filter(|slot| slot.provider == provider) {
            Some(held) => held.at_ms,
            None => {
                let windows = windows(limit);
                let counted_at = counting_clock();
                let count = Count {
                    windows: &windows,
                    at_ms: counted_at,
                };
                match self.reserve(provider, *interval, lane, Some(count)).await? {
                    (Reservation::Slot(slot), _) => slot,
                    (Reservation::Counted(_), failures) => {
                        self.sleep(until_second_of(counted_at, Utc::now().timestamp_millis()))
                            .await;
                        return Ok(Admission::Counted(CountedCall {
                            provider: provider.to_string(),
                            at_ms: counted_at,
                            failures,
                        }));
                    }
                    (Reservation::Ticket(at_ms), _) => return Ok(Admission::Retry { at_ms }),
                }
            }
        };
        let wait = until_second_of(slot, Utc::now().timestamp_millis());
        if wait > MAX_SLEEP {
            return Ok(Admission::Defer(ProviderSlot {
                provider: provider.to_string(),
                at_ms: slot,
            }));
        }
        self.sleep(wait).await;
        Ok(Admission::Go { failures: 0 })
    }

    /// Waits `wait` (none when zero) and counts it in [`Limiter::slept`].
    async fn sleep(&self, wait: Duration) {
        if wait.is_zero() {
            return;
        }
        tokio::time::sleep(wait).await;
        let micros = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
        self.slept_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The gate, right before the request to `provider` leaves: the call is counted in its
    /// calendar windows [`WINDOW_GUARD`] ahead (one `UpdateItem`), and waits for them to start
    /// when they are the next ones; a call the queue `counted` for this provider in those same
    /// windows passes without it. A full window defers the job to the next one (its slot; a
    /// bulk's, [`full_window_retry`]); an open circuit, to a slot reserved in `lane` after it
    /// (one `UpdateItem` more). A provider without a limit is always [`Admission::Go`].
    ///
    /// Errors: DynamoDB failures.
    pub async fn gate(
        &self,
        provider: &str,
        lane: Lane,
        counted: Option<&CountedCall>,
    ) -> Result<Admission, StoreError> {
        let Some((limit, interval)) = self.limits.get(provider) else {
            return Ok(Admission::Go { failures: 0 });
        };
        let windows = windows(limit);
        let counted_at = counting_clock();
        let same_windows = |call: &&CountedCall| {
            call.provider == provider
                && windows.iter().all(|(window, _)| {
                    let span = window.span_ms();
                    call.at_ms.div_euclid(span) == counted_at.div_euclid(span)
                })
        };
        if let Some(call) = counted.filter(same_windows) {
            self.sleep(until_second_of(call.at_ms, Utc::now().timestamp_millis()))
                .await;
            return Ok(Admission::Go {
                failures: call.failures,
            });
        }
        let mut state = self.seen(provider);
        let gate = self
            .store
            .pass_provider_gate(provider, &windows, counted_at, &mut state)
            .await;
        self.remember(provider, state);
        let at_ms = match gate? {
            Gate::Pass { failures } => {
                self.sleep(until_second_of(counted_at, Utc::now().timestamp_millis()))
                    .await;
                return Ok(Admission::Go { failures });
            }
            Gate::Full { until_ms } => {
                tracing::info!(provider, "provider's window full: deferred to the next");
                full_window_retry(until_ms, lane)
            }
            Gate::Open { until_ms } => {
                tracing::info!(
                    provider,
                    until_ms,
                    "provider's circuit open: deferred past it"
                );
                match self.reserve(provider, *interval, lane, None).await?.0 {
                    Reservation::Slot(slot) | Reservation::Counted(slot) => slot,
                    Reservation::Ticket(at_ms) => return Ok(Admission::Retry { at_ms }),
                }
            }
        };
        Ok(Admission::Defer(ProviderSlot {
            provider: provider.to_string(),
            at_ms,
        }))
    }

    /// `provider` could not answer (`retry_after`: its own wait, when it said one): opens its
    /// circuit for that wait, or [`backoff`] of its `failures` so far, at most
    /// [`BACKOFF_MAX`], rounded up to a whole second, unless it is open already; returns how
    /// long until it closes, after which the job is to run again.
    pub async fn unavailable(
        &self,
        provider: &str,
        failures: u32,
        retry_after: Option<Duration>,
    ) -> Duration {
        let wait = retry_after
            .unwrap_or_else(|| backoff(failures))
            .clamp(Duration::from_secs(1), BACKOFF_MAX);
        let now = Utc::now().timestamp_millis();
        // Ends on a second's start, so that jobs brought back inside the second of the first
        // slot after it ([`deferral`]) never come back before it.
        let until =
            start_of_second(now + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 4) + 999);
        let until = match self.store.open_provider_circuit(provider, until, now).await {
            Ok(until) => until,
            Err(e) => {
                tracing::warn!(provider, error = %e, "could not open the provider's circuit");
                until
            }
        };
        let wait = Duration::from_millis(u64::try_from(until - now).unwrap_or(0))
            .max(Duration::from_secs(1));
        tracing::warn!(
            provider,
            wait_s = wait.as_secs(),
            failures,
            "provider unavailable: circuit open"
        );
        wait
    }

    /// `provider` answered on a call whose gate saw `failures`: resets them when there were
    /// any (one `UpdateItem`, only then).
    pub async fn available(&self, provider: &str, failures: u32) {
        if failures == 0 {
            return;
        }
        let now = Utc::now().timestamp_millis();
        match self.store.close_provider_circuit(provider, now).await {
            Ok(()) => tracing::info!(provider, "provider answered: circuit closed"),
            Err(e) => {
                tracing::warn!(provider, error = %e, "could not close the provider's circuit")
            }
        }
    }

    /// A reservation ([`Store::reserve_provider_slot`]) and the provider's `failures` as it
    /// saw them.
    async fn reserve(
        &self,
        provider: &str,
        interval: Duration,
        lane: Lane,
        count: Option<Count<'_>>,
    ) -> Result<(Reservation, u32), StoreError> {
        let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX / 2);
        let horizon_ms = (lane == Lane::Bulk).then(|| BULK_HORIZON.as_millis() as i64);
        let mut state = self.seen(provider);
        let slot = self
            .store
            .reserve_provider_slot(
                provider,
                interval_ms,
                Utc::now().timestamp_millis(),
                horizon_ms,
                count,
                &mut state,
            )
            .await;
        self.remember(provider, state);
        Ok((slot?, state.failures))
    }

    fn seen(&self, provider: &str) -> ProviderState {
        self.seen
            .lock()
            .map(|seen| seen.get(provider).copied().unwrap_or_default())
            .unwrap_or_default()
    }

    fn remember(&self, provider: &str, state: ProviderState) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(provider.to_string(), state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_keeps_within_both_rates() {
        let limit = |s, m| ProviderLimit {
            per_second: s,
            per_minute: m,
        };
        let ms = Duration::from_millis;
        assert_eq!(limit(None, None).interval(), None);
        assert_eq!(limit(Some(0), Some(0)).interval(), None);
        // 1000 / 15 = 66.7 ms, 5% wider, rounded up: never faster than the rate.
        assert_eq!(limit(Some(15), None).interval(), Some(ms(71)));
        assert_eq!(limit(Some(3), None).interval(), Some(ms(350)));
        assert_eq!(limit(None, Some(60)).interval(), Some(ms(1050)));
        // 10 a second but 120 a minute: one every 500 ms, 525 with the margin.
        assert_eq!(limit(Some(10), Some(120)).interval(), Some(ms(525)));
    }

    #[test]
    fn a_deferred_job_comes_back_inside_its_slots_second() {
        let s = Duration::from_secs;
        // Sent back at 10.400 s for a slot at 12.300 s: 2 s brings it to 12.400 s, inside the
        // slot's second (rounding the 1.9 s up from the slot itself would give 13.400 s).
        assert_eq!(deferral(12_300, 10_400), s(2));
        // For a slot at 12.700 s: 2 s too, 300 ms before it but in its second.
        assert_eq!(deferral(12_700, 10_400), s(2));
        // Never before the slot's second starts.
        assert_eq!(deferral(12_000, 10_400), s(2));
        assert_eq!(deferral(11_999, 10_400), s(1));
        // A slot in the current second or gone: no delay.
        assert_eq!(deferral(10_900, 10_400), s(0));
        assert_eq!(deferral(9_000, 10_400), s(0));
        assert_eq!(start_of_second(12_999), 12_000);
        assert_eq!(start_of_second(-1), -1_000);
    }

    #[test]
    fn the_backoff_doubles_up_to_a_minute() {
        let seconds: Vec<u64> = [0, 1, 2, 3, 4, 5, 40]
            .map(|f| backoff(f).as_secs())
            .to_vec();
        assert_eq!(seconds, [2, 4, 8, 16, 32, 60, 60]);
    }
}
