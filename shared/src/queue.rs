//! The jobs queue: what the trigger sends and the worker receives.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{ConfigError, QueueSettings, Vars};
use crate::domain::{Job, JobBatch, TimeoutCheck};
use crate::limiter::ProviderSlot;

/// A failed enqueue, after the SDK's own retries.
#[derive(Debug, thiserror::Error)]
#[error("enqueue failed: {0}")]
pub struct QueueError(pub String);

/// Where jobs go: [`SqsJobQueue`], or [`StepFunctionsJobQueue`] with the optional orchestrator.
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Sends one job, to run at once.
    async fn enqueue(&self, job: &Job) -> Result<(), QueueError>;

    /// Sends `jobs`, none to run before `not_before` (the batch and bulk routes send their
    /// jobs before writing the enrichments, held until the request can no longer write: see
    /// [`crate::batch`]). SQS: the jobs go in [`JobBatch`] messages that the worker turns into
    /// one message per job once the hold ends.
    ///
    /// Errors: a job could not be sent after the SDK's retries (some may have been sent: a job
    /// whose enrichment does not exist when it runs is dropped by the worker).
    async fn enqueue_held(&self, jobs: &[Job], not_before: DateTime<Utc>)
    -> Result<(), QueueError>;
}

/// A job with the time before which it must not run: the Step Functions execution input
/// (`{"enrichmentId", "orgId", "personId", "field", "notBefore"}`), which the state machine's
/// `Hold` state waits for (`template.yaml`); the worker ignores `notBefore`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HeldJob<'a> {
    #[serde(flatten)]
    job: &'a Job,
    not_before: String,
}

/// Whole seconds from now until `not_before`, rounded up, within SQS's `DelaySeconds` range
/// (0 to 900).
fn delay_seconds(not_before: DateTime<Utc>) -> i32 {
    let millis = (not_before - Utc::now()).num_milliseconds().max(0);
    let seconds = (millis + 999) / 1000;
    i32::try_from(seconds.min(crate::budget::MAX_SQS_DELAY.as_secs() as i64)).unwrap_or(900)
}

/// How many `SendMessageBatch` (or `StartExecution`) calls a fan-out has in flight at once.
pub const SEND_CONCURRENCY: usize = 10;

/// The most jobs one [`JobBatch`] message holds: 500 jobs of at most about 250 bytes each
/// (an org id is at most 128 characters) stay well within SQS's 256 KiB message.
pub const JOBS_PER_MESSAGE: usize = 500;

/// Runs `sends`, at most [`SEND_CONCURRENCY`] at once.
///
/// Errors: the first failure met; the sends still in flight are then aborted.
async fn in_flight<F>(sends: Vec<F>) -> Result<(), QueueError>
where
    F: std::future::Future<Output = Result<(), QueueError>> + Send + 'static,
{
    let mut running = tokio::task::JoinSet::new();
    for send in sends {
        if running.len() == SEND_CONCURRENCY
            && let Some(done) = running.join_next().await
        {
            done.map_err(|e| QueueError(e.to_string()))??;
        }
        running.spawn(send);
    }
    while let Some(done) = running.join_next().await {
        done.map_err(|e| QueueError(e.to_string()))??;
    }
    Ok(())
}

/// How many times `SendMessageBatch` entries that failed (a partial batch failure) are sent
/// again before the send is given up.
const BATCH_SEND_ATTEMPTS: u32 = 3;

/// The SQS jobs queue: what the trigger sends jobs to (`SendMessage`), and what the worker uses
/// to keep, defer and retry the messages it was handed (`ChangeMessageVisibility`,
/// `SendMessage` with `DelaySeconds`; AWS docs, "Amazon SQS API Reference" and "Amazon SQS
/// visibility timeout").
#[derive(Debug, Clone)]
pub struct SqsJobQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    retry_base: Duration,
    timeout_check: Option<Duration>,
}

/// How long after an enrichment's maximum age its [`TimeoutCheck`] is delivered: well within
/// the minute the spec allows for noticing a timeout nobody polls (operations-api, "Webhooks").
pub const TIMEOUT_CHECK_MARGIN: Duration = Duration::from_secs(5);

impl SqsJobQueue {
    /// The longest delay before a failed job's retry: 15 minutes.
    pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(900);

    /// A queue at `queue_url` (`QUEUE_URL`), retrying failed jobs after 30 s, 60 s, ...
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
            retry_base: Duration::from_secs(30),
            timeout_check: None,
        }
    }

    /// The same queue sending, with each job (or held batch of jobs), in the same
    /// `SendMessageBatch`, a [`TimeoutCheck`] delayed until `max_age` (the enrichments'
    /// maximum age) plus [`TIMEOUT_CHECK_MARGIN`] after the job may run, at most 900 s (SQS's
    /// longest `DelaySeconds`; a check that comes early is sent on by the worker).
    pub fn with_timeout_check(mut self, max_age: Duration) -> Self {
        self.timeout_check = Some(max_age);
        self
    }

    /// The `DelaySeconds` of the timeout check of a message delayed by `delay` seconds.
    fn check_delay(&self, delay: i32) -> Option<i32> {
        let after = self.timeout_check? + TIMEOUT_CHECK_MARGIN;
        let seconds = i64::from(delay).saturating_add(after.as_secs() as i64);
        Some(
            i32::try_from(seconds.min(crate::budget::MAX_SQS_DELAY.as_secs() as i64))
                .unwrap_or(900),
        )
    }

    /// Sends `body` delayed by `delay` seconds, with the timeout check of `jobs` when the queue
    /// sends them: one `SendMessageBatch` of two entries (else one `SendMessage`). A check that
    /// SQS refuses is logged, not an error: the lazy timeout of GET and POST remains.
    ///
    /// Errors: the call failed, or SQS refused `body`'s entry.
    async fn send_with_check(
        &self,
        body: String,
        delay: i32,
        jobs: &[Job],
    ) -> Result<(), QueueError> {
        let Some(check_delay) = self.check_delay(delay) else {
            return self.send_body(body, delay, fair_group(jobs)).await;
        };
        let check = serde_json::to_string(&TimeoutCheck {
            timeout_check: jobs.to_vec(),
        })
        .map_err(|e| QueueError(e.to_string()))?;
        let group = fair_group(jobs);
        let entry = |id: &str, body: String, delay: i32| {
            SendMessageBatchRequestEntry::builder()
                .id(id)
                .message_body(body)
                .delay_seconds(delay)
                .set_message_group_id(group.clone())
                .build()
                .map_err(|e| QueueError(e.to_string()))
        };
        let output = self
            .client
            .send_message_batch()
            .queue_url(&self.queue_url)
            .entries(entry("job", body, delay)?)
            .entries(entry("check", check, check_delay)?)
            .send()
            .await
            .map_err(|e| QueueError(DisplayErrorContext(&e).to_string()))?;
        for failed in output.failed() {
            if failed.id() == "job" {
                return Err(QueueError(format!(
                    "SQS refused the job: {} {}",
                    failed.code(),
                    failed.message().unwrap_or_default()
                )));
            }
            tracing::warn!(
                code = failed.code(),
                "SQS refused the timeout check; the lazy timeout remains"
            );
        }
        Ok(())
    }

    /// A queue at `queue_url` with a client of the process's SDK configuration.
    pub fn from_sdk(sdk: &aws_config::SdkConfig, queue_url: impl Into<String>) -> Self {
        Self::new(aws_sdk_sqs::Client::new(sdk), queue_url)
    }

    /// The queue's name: the last segment of its URL (`enrichment-jobs-prod`), as the end of its
    /// ARN.
    pub fn name(&self) -> &str {
        self.queue_url.rsplit('/').next().unwrap_or_default()
    }

    /// The same queue with another first retry delay (whole seconds; at least 1 s).
    pub fn with_retry_base(mut self, base: Duration) -> Self {
        self.retry_base = base;
        self
    }

    /// The delay before the next delivery of a failed message received `receives` times:
    /// `base × 2^(receives − 1)`, capped at [`SqsJobQueue::MAX_RETRY_DELAY`]. It brings a failed
    /// job back sooner than the queue's visibility timeout (six times the worker's timeout,
    /// 84 minutes); the DLQ still takes it after the queue's maximum receive count.
    pub fn retry_delay(&self, receives: u32) -> Duration {
        let factor = 2u32.saturating_pow(receives.saturating_sub(1).min(16));
        self.retry_base
            .max(Duration::from_secs(1))
            .saturating_mul(factor)
            .min(Self::MAX_RETRY_DELAY)
    }

    /// Makes the failed message with `receipt_handle` visible again after
    /// [`SqsJobQueue::retry_delay`]. A failure is logged: the message then comes back after the
    /// queue's visibility timeout.
    pub async fn retry_later(&self, receipt_handle: &str, receives: u32) {
        self.set_visibility(receipt_handle, self.retry_delay(receives))
            .await;
    }

    /// Keeps the message with `receipt_handle` invisible for `duration` from now (whole seconds,
    /// at most 12 hours): the worker's heartbeat, so that the message of a job whose worker died
    /// comes back when the worker's claim lapses, not after the queue's 84-minute visibility
    /// timeout. A failure is logged: the claim still protects the job.
    pub async fn set_visibility(&self, receipt_handle: &str, duration: Duration) {
        let seconds = i32::try_from(duration.as_secs().max(1))
            .unwrap_or(43_200)
            .min(43_200);
        let result = self
            .client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds)
            .send()
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %DisplayErrorContext(&e), "ChangeMessageVisibility failed");
        }
    }

    /// Sends `job` again, to be delivered after `delay` (whole seconds, 1 to 900: SQS's
    /// `DelaySeconds` range): a job deferred while another worker holds it or runs the same
    /// person.
    ///
    /// Errors: the send failed (the caller reports the message as failed, so it comes back).
    /// With `slot`, the job carries the provider call slot it was deferred to (`"slot"`, see
    /// [`crate::limiter`]).
    pub async fn send_later(
        &self,
        job: &Job,
        slot: Option<&ProviderSlot>,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let seconds = delay
            .as_secs()
            .clamp(1, crate::budget::MAX_SQS_DELAY.as_secs());
        let body = serde_json::to_string(&DeferredJob { job, slot })
            .map_err(|e| QueueError(e.to_string()))?;
        let group = fair_group(std::slice::from_ref(job));
        self.send_body(body, i32::try_from(seconds).unwrap_or(900), group)
            .await
    }

    /// Sends a message carrying a [`TimeoutCheck`] of `jobs`, delivered after `delay`: a check
    /// that came before its enrichments' maximum age.
    ///
    /// Errors: the send failed.
    pub async fn send_check_later(&self, jobs: &[Job], delay: Duration) -> Result<(), QueueError> {
        let body = serde_json::to_string(&TimeoutCheck {
            timeout_check: jobs.to_vec(),
        })
        .map_err(|e| QueueError(e.to_string()))?;
        let seconds = delay
            .as_secs()
            .clamp(1, crate::budget::MAX_SQS_DELAY.as_secs());
        self.send_body(
            body,
            i32::try_from(seconds).unwrap_or(900),
            fair_group(jobs),
        )
        .await
    }

    async fn send_body(
        &self,
        body: String,
        delay_seconds: i32,
        group: Option<String>,
    ) -> Result<(), QueueError> {
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .delay_seconds(delay_seconds)
            .set_message_group_id(group)
            .send()
            .await
            .map_err(|e| QueueError(DisplayErrorContext(&e).to_string()))?;
        Ok(())
    }
}

#[async_trait]
impl JobQueue for SqsJobQueue {
    /// One `SendMessage`, or with [`SqsJobQueue::with_timeout_check`] one `SendMessageBatch` of
    /// the job and its timeout check.
    async fn enqueue(&self, job: &Job) -> Result<(), QueueError> {
        let body = serde_json::to_string(job).map_err(|e| QueueError(e.to_string()))?;
        self.send_with_check(body, 0, std::slice::from_ref(job))
            .await
    }

    /// One `SendMessage` per [`JOBS_PER_MESSAGE`] jobs, a [`JobBatch`] held with
    /// `DelaySeconds` until `not_before` (with [`SqsJobQueue::with_timeout_check`], one
    /// `SendMessageBatch` of it and its timeout check): a bulk of 1000 is two calls on the
    /// request's path.
    async fn enqueue_held(
        &self,
        jobs: &[Job],
        not_before: DateTime<Utc>,
    ) -> Result<(), QueueError> {
        let delay = delay_seconds(not_before);
        for group in jobs.chunks(JOBS_PER_MESSAGE) {
            let body = serde_json::to_string(&JobBatch {
                jobs: group.to_vec(),
            })
            .map_err(|e| QueueError(e.to_string()))?;
            self.send_with_check(body, delay, group).await?;
        }
        Ok(())
    }
}

impl SqsJobQueue {
    /// Sends each of `jobs` as its own message, to run at once: `SendMessageBatch`, 10 jobs a
    /// call (its limit), [`SEND_CONCURRENCY`] calls in flight; the entries of a partial batch
    /// failure are sent again, up to [`BATCH_SEND_ATTEMPTS`] times (AWS docs,
    /// `SendMessageBatch`). The worker's fan-out of a [`JobBatch`].
    ///
    /// Errors: a call failed, or entries were still refused after the last attempt (some jobs
    /// may have been sent: a job sent twice runs once, its claim sees to it).
    pub async fn enqueue_all(&self, jobs: &[Job]) -> Result<(), QueueError> {
        let mut sends = Vec::with_capacity(jobs.len().div_ceil(10));
        for group in jobs.chunks(10) {
            let entries = group
                .iter()
                .enumerate()
                .map(|(i, job)| {
                    let body = serde_json::to_string(job).map_err(|e| QueueError(e.to_string()))?;
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .message_group_id(&job.org_id)
                        .build()
                        .map_err(|e| QueueError(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            sends.push(self.clone().send_batch(entries));
        }
        in_flight(sends).await
    }

    /// One `SendMessageBatch` of `entries`, its failed entries sent again.
    async fn send_batch(
        self,
        mut entries: Vec<SendMessageBatchRequestEntry>,
    ) -> Result<(), QueueError> {
        for attempt in 1..=BATCH_SEND_ATTEMPTS {
            let output = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries.clone()))
                .send()
                .await
                .map_err(|e| QueueError(DisplayErrorContext(&e).to_string()))?;
            let failed: Vec<&str> = output.failed().iter().map(|f| f.id()).collect();
            if failed.is_empty() {
                return Ok(());
            }
            if attempt == BATCH_SEND_ATTEMPTS {
                return Err(QueueError(format!(
                    "SendMessageBatch left {} jobs unsent: {:?}",
                    failed.len(),
                    output.failed()
                )));
            }
            entries.retain(|entry| failed.contains(&entry.id()));
        }
        Ok(())
    }
}

/// The optional Step Functions orchestrator: each job starts one execution of the cascade state
/// machine, named after the enrichment id (AWS docs, `StartExecution`: a name is unique per state
/// machine for 90 days), so a retried trigger cannot start the same enrichment twice.
#[derive(Debug, Clone)]
pub struct StepFunctionsJobQueue {
    client: aws_sdk_sfn::Client,
    state_machine_arn: String,
}

impl StepFunctionsJobQueue {
    /// Executions of `state_machine_arn` (`STATE_MACHINE_ARN`).
    pub fn new(client: aws_sdk_sfn::Client, state_machine_arn: impl Into<String>) -> Self {
        Self {
            client,
            state_machine_arn: state_machine_arn.into(),
        }
    }

    /// Executions of `state_machine_arn` with a client of the process's SDK configuration.
    pub fn from_sdk(sdk: &aws_config::SdkConfig, state_machine_arn: impl Into<String>) -> Self {
        Self::new(aws_sdk_sfn::Client::new(sdk), state_machine_arn)
    }

    /// Starts the execution `{enrichmentId}` with `input`; one that already exists (a retry)
    /// counts as started.
    async fn start(&self, job: &Job, input: String) -> Result<(), QueueError> {
        let result = self
            .client
            .start_execution()
            .state_machine_arn(&self.state_machine_arn)
            .name(job.enrichment_id.to_string())
            .input(input)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_execution_already_exists()) =>
            {
                Ok(())
            }
            Err(e) => Err(QueueError(
                aws_sdk_sfn::error::DisplayErrorContext(&e).to_string(),
            )),
        }
    }
}

#[async_trait]
impl JobQueue for StepFunctionsJobQueue {
    /// Starts the execution `{enrichmentId}` with the job as input; one that already exists
    /// (a retry) counts as started.
    async fn enqueue(&self, job: &Job) -> Result<(), QueueError> {
        let input = serde_json::to_string(job).map_err(|e| QueueError(e.to_string()))?;
        self.start(job, input).await
    }

    /// One `StartExecution` per job (Step Functions has no batch start), [`SEND_CONCURRENCY`]
    /// in flight, each input carrying `notBefore`, which the state machine's `Hold` state
    /// waits for.
    async fn enqueue_held(
        &self,
        jobs: &[Job],
        not_before: DateTime<Utc>,
    ) -> Result<(), QueueError> {
        // A Wait state reads whole seconds (AWS docs, "Wait workflow state"): rounded up, so the
        // hold never ends early.
        let millis = not_before.timestamp_subsec_millis();
        let not_before = crate::domain::timestamp(
            not_before + chrono::Duration::milliseconds(i64::from((1000 - millis) % 1000)),
        );
        let mut starts = Vec::with_capacity(jobs.len());
        for job in jobs {
            let input = serde_json::to_string(&HeldJob {
                job,
                not_before: not_before.clone(),
            })
            .map_err(|e| QueueError(e.to_string()))?;
            let (queue, job) = (self.clone(), job.clone());
            starts.push(async move { queue.start(&job, input).await });
        }
        in_flight(starts).await
    }
}

/// The job queue [`QueueSettings`] chooses for single enrichments, read from `vars`: Step
/// Functions when `STATE_MACHINE_ARN` is set, else SQS at `QUEUE_URL`.
///
/// Errors: [`ConfigError::MissingEither`] when neither is set.
pub fn from_vars(
    sdk: &aws_config::SdkConfig,
    vars: &Vars,
    max_age: Duration,
) -> Result<Box<dyn JobQueue>, ConfigError> {
    let settings = QueueSettings::from_vars(vars);
    chosen(
        sdk,
        settings.state_machine_arn,
        settings.queue_url,
        "QUEUE_URL",
        max_age,
    )
}

/// The job queue [`QueueSettings`] chooses for batch and bulk enrichments, read from `vars`:
/// Step Functions when `STATE_MACHINE_ARN` is set, else SQS at `BULK_QUEUE_URL`, the queue
/// whose event source mapping has its own maximum concurrency, so that a bulk never holds every
/// worker (spec operations-api, "Bulk enrichment").
///
/// Errors: [`ConfigError::MissingEither`] when neither is set.
pub fn bulk_from_vars(
    sdk: &aws_config::SdkConfig,
    vars: &Vars,
    max_age: Duration,
) -> Result<Box<dyn JobQueue>, ConfigError> {
    let settings = QueueSettings::from_vars(vars);
    chosen(
        sdk,
        settings.state_machine_arn,
        settings.bulk_queue_url,
        "BULK_QUEUE_URL",
        max_age,
    )
}

/// Step Functions, or SQS sending each job with its timeout check after `max_age`
/// ([`SqsJobQueue::with_timeout_check`]).
fn chosen(
    sdk: &aws_config::SdkConfig,
    state_machine_arn: Option<String>,
    queue_url: Option<String>,
    queue_variable: &'static str,
    max_age: Duration,
) -> Result<Box<dyn JobQueue>, ConfigError> {
    if let Some(arn) = state_machine_arn {
        Ok(Box::new(StepFunctionsJobQueue::from_sdk(sdk, arn)))
    } else if let Some(url) = queue_url {
        Ok(Box::new(
            SqsJobQueue::from_sdk(sdk, url).with_timeout_check(max_age),
        ))
    } else {
        Err(ConfigError::MissingEither {
            first: queue_variable,
            second: "STATE_MACHINE_ARN",
            why: "jobs go to an SQS queue of the worker or start Step Functions executions",
        })
    }
}

/// A deferred job's message: the job, and the provider call slot it was deferred to.
#[derive(Serialize)]
struct DeferredJob<'a> {
    #[serde(flatten)]
    job: &'a Job,
    #[serde(skip_serializing_if = "Option::is_none")]
    slot: Option<&'a ProviderSlot>,
}

/// The `MessageGroupId` of messages carrying `jobs` (one org's): the org. On a standard queue it
/// turns on SQS fair queues (AWS docs, "Amazon SQS fair queues"): when one org's backlog grows (a
/// bulk of 1000), consumers are given the other orgs' messages first, so an org's single request
/// does not wait behind another org's bulk. Ordering and throughput of a standard queue are
/// unchanged.
fn fair_group(jobs: &[Job]) -> Option<String> {
    jobs.first().map(|job| job.org_id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_per_receive_up_to_fifteen_minutes() {
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .build();
        let queue = SqsJobQueue::new(aws_sdk_sqs::Client::from_conf(config), "q");
        let delays: Vec<u64> = [0, 1, 2, 3, 5, 6, 40]
            .iter()
            .map(|n| queue.retry_delay(*n).as_secs())
            .collect();
        assert_eq!(delays, [30, 30, 60, 120, 480, 900, 900]);
    }
}
