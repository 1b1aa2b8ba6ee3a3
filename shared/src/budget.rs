//! Every time budget of the product in one place: the functions' timeouts in `template.yaml`,
//! the AWS SDK timeouts, the margins kept before a Lambda deadline, the worker's claim and
//! global-cache leases, and the jobs queue's visibility timeout. The relations between them are
//! tested below and, against the template itself, by the local stack's template test.
//!
//! Rules (AWS docs): a function is killed at its timeout, so every call it makes must end before
//! it with time left to write the outcome and answer ("Configure Lambda function timeout"); the
//! visibility timeout of a Lambda event source queue is at least six times the function's
//! timeout ("Using Lambda with Amazon SQS"); an SQS message delay is 0 to 900 s (`SendMessage`,
//! `DelaySeconds`).

use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

/// `Timeout` of the API functions (trigger, status, people, batch, credits) in `template.yaml`:
/// 10 s.
pub const API_FUNCTION_TIMEOUT: Duration = Duration::from_secs(10);

/// `Timeout` of the worker function in `template.yaml`: the maximum age (800 s) plus a margin
/// to write the outcome.
pub const WORKER_FUNCTION_TIMEOUT: Duration = Duration::from_secs(840);

/// `VisibilityTimeout` of the jobs queue in `template.yaml`: six times the worker's timeout.
pub const JOBS_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(6 * 840);

/// The default maximum age of a `pending` enrichment (spec, "Timeout Handling"): 800 s.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(800);

/// The SDK's connect timeout to an AWS endpoint.
pub const SDK_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The SDK's timeout of one attempt of an AWS call (DynamoDB and SQS answer in milliseconds).
pub const SDK_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// The SDK's timeout of one AWS call, its retries included: the longest any one DynamoDB, SQS,
/// Step Functions or Secrets Manager call can take.
pub const SDK_OPERATION_TIMEOUT: Duration = Duration::from_secs(3);

/// Time kept before an API function's deadline to answer the client with the envelope.
pub const RESPONSE_MARGIN: Duration = Duration::from_millis(500);

/// Time the trigger keeps, after giving up on the queue, to fail and refund the enrichment it
/// created (one transaction).
pub const REFUND_RESERVE: Duration = SDK_OPERATION_TIMEOUT;

/// Time kept back from the worker's deadline for writing the outcome after the cascade (one
/// transaction, then releasing a lease).
pub const WRITE_MARGIN: Duration = Duration::from_secs(5);

/// The claim a worker takes on a job before its first provider call: long enough to read the
/// person and take the global cache lease (a few SDK calls). Renewed before every provider call
/// by [`lease_for`].
pub const INITIAL_CLAIM_LEASE: Duration = Duration::from_secs(30);

/// Added to a provider call's budget when a claim or lease is renewed for it: the time to record
/// the provider's answer and renew again.
pub const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// The longest a deferred job waits before it is looked at again: a job waiting for another
/// worker's run of the same person, or a duplicate delivery of a job that a live worker holds.
pub const MAX_DEFER: Duration = Duration::from_secs(10);

/// The longest delay SQS accepts on a message (`DelaySeconds`, 900 s).
pub const MAX_SQS_DELAY: Duration = Duration::from_secs(900);

/// How long after its request's deadline a batch or bulk job becomes visible to the worker: an
/// SDK call in flight when the invocation ends (at most [`SDK_OPERATION_TIMEOUT`]) has been
/// answered or abandoned by then. Jobs are sent before the enrichments are written and held
/// until the request can no longer write, so a job never runs against a write that may still
/// be undone, and a crash at any point leaves no written enrichment without its job
/// ([`crate::batch`]).
pub const HOLD_MARGIN: Duration = SDK_OPERATION_TIMEOUT;

/// The time before which the jobs of a request with `deadline` must not run: the deadline plus
/// [`HOLD_MARGIN`], as a wall-clock time (what SQS `DelaySeconds` and a Step Functions `Wait`
/// take).
pub fn held_until(deadline: Instant) -> chrono::DateTime<Utc> {
    let left = deadline.saturating_duration_since(Instant::now()) + HOLD_MARGIN;
    Utc::now() + chrono::Duration::from_std(left).unwrap_or(chrono::Duration::MAX)
}

/// The lease (claim, global cache lease, message visibility) a worker takes before a provider
/// call that may take `call_budget` (every attempt and retry wait): the call's budget plus
/// [`LEASE_MARGIN`]. A worker that dies during the call loses its lease that much later, so its
/// job is resumed within about one provider budget.
pub fn lease_for(call_budget: Duration) -> Duration {
    call_budget + LEASE_MARGIN
}

/// The smallest `Lambda-Runtime-Deadline-Ms` read as a Unix time (September 2001): below it, a
/// value is a duration. `cargo lambda watch` 1.9.2 sends the function's timeout there
/// (`600000`), where Lambda sends an epoch time.
const EPOCH_MILLIS_FLOOR: u64 = 1_000_000_000_000;

/// The deadline of an invocation as a monotonic instant, from the Lambda context's deadline
/// (`Lambda-Runtime-Deadline-Ms`, Unix milliseconds). A deadline already past is now; a missing
/// one (0, as a request built outside Lambda has) is `fallback` from now; a value too small to
/// be a Unix time is a duration from now (see [`EPOCH_MILLIS_FLOOR`]).
pub fn deadline_from_epoch_millis(deadline_ms: u64, fallback: Duration) -> Instant {
    if deadline_ms == 0 {
        return Instant::now() + fallback;
    }
    if deadline_ms < EPOCH_MILLIS_FLOOR {
        return Instant::now() + Duration::from_millis(deadline_ms);
    }
    let now_ms = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
    Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms))
}

/// The time left before `deadline` once `reserve` is kept back; zero when none is.
pub fn left_before(deadline: Instant, reserve: Duration) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .saturating_sub(reserve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_post_fits_the_api_timeout_even_when_sqs_never_answers() {
        // Create (one transaction), at least one whole enqueue attempt, the refund, the answer.
        let worst =
            SDK_OPERATION_TIMEOUT + SDK_OPERATION_TIMEOUT + REFUND_RESERVE + RESPONSE_MARGIN;
        assert!(worst <= API_FUNCTION_TIMEOUT, "{worst:?}");
        // A GET: the read and the lazy timeout's transaction.
        assert!(2 * SDK_OPERATION_TIMEOUT + RESPONSE_MARGIN <= API_FUNCTION_TIMEOUT);
        assert!(SDK_ATTEMPT_TIMEOUT <= SDK_OPERATION_TIMEOUT);
        assert!(SDK_CONNECT_TIMEOUT <= SDK_ATTEMPT_TIMEOUT);
    }

    #[test]
    fn the_worker_writes_its_outcome_before_its_deadline_and_within_the_maximum_age() {
        assert!(WRITE_MARGIN >= SDK_OPERATION_TIMEOUT);
        assert!(DEFAULT_MAX_AGE + WRITE_MARGIN <= WORKER_FUNCTION_TIMEOUT);
        assert!(JOBS_VISIBILITY_TIMEOUT >= 6 * WORKER_FUNCTION_TIMEOUT);
    }

    #[test]
    fn a_dead_workers_leases_lapse_long_before_the_maximum_age() {
        // A 20 s provider asked twice with a 5 s wait between: its lease is 50 s.
        let lease = lease_for(Duration::from_secs(45));
        assert_eq!(lease, Duration::from_secs(50));
        assert!(INITIAL_CLAIM_LEASE < DEFAULT_MAX_AGE / 4);
        assert!(lease < DEFAULT_MAX_AGE / 4);
        assert!(MAX_DEFER <= MAX_SQS_DELAY);
    }

    #[test]
    fn held_jobs_wait_out_the_request_and_fit_one_sqs_delay() {
        let deadline = Instant::now() + API_FUNCTION_TIMEOUT;
        let wait = held_until(deadline) - Utc::now();
        assert!(
            wait >= chrono::Duration::from_std(API_FUNCTION_TIMEOUT + HOLD_MARGIN).unwrap()
                - chrono::Duration::milliseconds(50)
        );
        assert!(API_FUNCTION_TIMEOUT + HOLD_MARGIN <= MAX_SQS_DELAY);
    }

    #[test]
    fn a_missing_or_past_deadline_is_handled() {
        let fallback = Duration::from_secs(10);
        let missing = deadline_from_epoch_millis(0, fallback);
        assert!(missing > Instant::now() + Duration::from_secs(9));
        let past = deadline_from_epoch_millis(EPOCH_MILLIS_FLOOR + 1, fallback);
        assert!(past <= Instant::now());
        // cargo lambda watch's 600000: ten minutes from now.
        let relative = deadline_from_epoch_millis(600_000, fallback);
        assert!(relative > Instant::now() + Duration::from_secs(599));
        assert_eq!(left_before(past, Duration::from_secs(1)), Duration::ZERO);
    }
}
