//! The jobs queue: what the trigger sends and the worker receives.

use async_trait::async_trait;
use aws_sdk_sqs::error::DisplayErrorContext;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{Enrichment, Field};

/// One enrichment job: the SQS message body, as JSON
/// (`{"enrichmentId", "orgId", "personId", "field"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    /// The enrichment to run; a job whose enrichment was replaced is dropped.
    pub enrichment_id: Uuid,
    /// The org that owns it.
    pub org_id: String,
    /// The person to enrich.
    pub person_id: Uuid,
    /// `emails` or `phones`.
    pub field: Field,
}

impl From<&Enrichment> for Job {
    fn from(e: &Enrichment) -> Self {
        Job {
            enrichment_id: e.id,
            org_id: e.org_id.clone(),
            person_id: e.entity_id,
            field: e.field,
        }
    }
}

/// A failed enqueue, after the SDK's own retries.
#[derive(Debug, thiserror::Error)]
#[error("enqueue failed: {0}")]
pub struct QueueError(pub String);

/// Where jobs go. One production implementation: [`SqsJobQueue`].
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Sends one job.
    async fn enqueue(&self, job: &Job) -> Result<(), QueueError>;
}

/// The SQS jobs queue (`SendMessage`, AWS docs "Amazon SQS API Reference").
#[derive(Debug, Clone)]
pub struct SqsJobQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsJobQueue {
    /// A queue at `queue_url` (`QUEUE_URL`).
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }

    /// A queue at `queue_url` with a client of the process's SDK configuration.
    pub fn from_sdk(sdk: &aws_config::SdkConfig, queue_url: impl Into<String>) -> Self {
        Self::new(aws_sdk_sqs::Client::new(sdk), queue_url)
    }
}

#[async_trait]
impl JobQueue for SqsJobQueue {
    async fn enqueue(&self, job: &Job) -> Result<(), QueueError> {
        let body = serde_json::to_string(job).map_err(|e| QueueError(e.to_string()))?;
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| QueueError(DisplayErrorContext(&e).to_string()))?;
        Ok(())
    }
}

/// Brings a failed job back sooner than the queue's visibility timeout (six times the worker's
/// timeout, so 84 minutes in `template.yaml`): the worker sets the failed message's visibility to
/// `base × 2^(receives − 1)`, capped at [`RetryBackoff::MAX`], with `ChangeMessageVisibility`
/// (AWS docs, "Amazon SQS visibility timeout"). The DLQ still takes it after the queue's maximum
/// receive count.
#[derive(Debug, Clone)]
pub struct RetryBackoff {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    base: std::time::Duration,
}

impl RetryBackoff {
    /// The longest delay before a retry: 15 minutes.
    pub const MAX: std::time::Duration = std::time::Duration::from_secs(900);

    /// Backoff on the queue at `queue_url`, starting at `base` (whole seconds; at least 1 s).
    pub fn new(
        client: aws_sdk_sqs::Client,
        queue_url: impl Into<String>,
        base: std::time::Duration,
    ) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
            base,
        }
    }

    /// Backoff on the queue at `queue_url` with a client of the process's SDK configuration and a
    /// 30 s base.
    pub fn from_sdk(sdk: &aws_config::SdkConfig, queue_url: impl Into<String>) -> Self {
        Self::new(
            aws_sdk_sqs::Client::new(sdk),
            queue_url,
            std::time::Duration::from_secs(30),
        )
    }

    /// The delay before the next delivery of a message received `receives` times.
    pub fn delay(&self, receives: u32) -> std::time::Duration {
        let factor = 2u32.saturating_pow(receives.saturating_sub(1).min(16));
        self.base
            .max(std::time::Duration::from_secs(1))
            .saturating_mul(factor)
            .min(Self::MAX)
    }

    /// Makes the message with `receipt_handle` visible again after [`RetryBackoff::delay`].
    /// A failure is logged: the message then comes back after the queue's visibility timeout.
    pub async fn defer(&self, receipt_handle: &str, receives: u32) {
        let delay = self.delay(receives);
        let result = self
            .client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(i32::try_from(delay.as_secs()).unwrap_or(i32::MAX))
            .send()
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %DisplayErrorContext(&e), "ChangeMessageVisibility failed");
        }
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
}

#[async_trait]
impl JobQueue for StepFunctionsJobQueue {
    /// Starts the execution `{enrichmentId}` with the job as input; one that already exists
    /// (a retry) counts as started.
    async fn enqueue(&self, job: &Job) -> Result<(), QueueError> {
        let input = serde_json::to_string(job).map_err(|e| QueueError(e.to_string()))?;
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

/// The job queue the configuration chooses: Step Functions when `STATE_MACHINE_ARN` is set,
/// else SQS at `QUEUE_URL`.
///
/// Errors: neither is set.
pub fn from_env(sdk: &aws_config::SdkConfig) -> Result<Box<dyn JobQueue>, QueueError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if let Some(arn) = var("STATE_MACHINE_ARN") {
        Ok(Box::new(StepFunctionsJobQueue::from_sdk(sdk, arn)))
    } else if let Some(url) = var("QUEUE_URL") {
        Ok(Box::new(SqsJobQueue::from_sdk(sdk, url)))
    } else {
        Err(QueueError(
            "set QUEUE_URL (SQS worker) or STATE_MACHINE_ARN (Step Functions)".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn retry_backoff_doubles_per_receive_up_to_fifteen_minutes() {
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .build();
        let backoff = RetryBackoff::new(
            aws_sdk_sqs::Client::from_conf(config),
            "q",
            Duration::from_secs(30),
        );
        let delays: Vec<u64> = [0, 1, 2, 3, 5, 6, 40]
            .iter()
            .map(|n| backoff.delay(*n).as_secs())
            .collect();
        assert_eq!(delays, [30, 30, 60, 120, 480, 900, 900]);
    }
}
