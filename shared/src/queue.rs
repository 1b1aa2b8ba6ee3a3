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
