//! Feeds SQS messages to a function's handler as the Lambda event source mapping does (AWS
//! docs, "Using Lambda with Amazon SQS"): long-poll a batch, invoke the handler with an SQS
//! event, delete the records that succeeded and leave the reported batch item failures to come
//! back after the visibility timeout (and to the DLQ after the queue's maximum receive count).
//! The worker's queues and the webhook queue are polled alike; only the handler differs
//! ([`Handler`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsMessage};
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
use enrichment::webhooks::Webhooks;
use enrichment::worker::Worker;
use tokio::sync::watch;
use tokio::time::Instant;

/// One event source poller: a queue and the handler it feeds, [`Poller::batch_size`] messages
/// at a time. Run several clones for concurrency.
#[derive(Clone)]
pub struct Poller {
    /// SQS client of the emulator.
    pub sqs: aws_sdk_sqs::Client,
    /// The queue polled.
    pub queue_url: String,
    /// The visibility timeout messages are received with.
    pub visibility_timeout: Duration,
    /// The most messages per invocation (SQS's `MaxNumberOfMessages`, 1 to 10): the event
    /// source mapping's `BatchSize` (the worker's 1, the webhook delivery's 10).
    pub batch_size: i32,
    /// The function invoked with each batch, shared by the pollers.
    pub handler: Handler,
    /// Invocations and handler time, shared by the pollers.
    pub usage: Arc<WorkerUsage>,
}

/// The function an event source mapping invokes, with the use case its handler runs.
#[derive(Clone)]
pub enum Handler {
    /// The worker (`Worker::run_batch`, within the worker function's timeout).
    Worker(Arc<Worker>),
    /// The webhook delivery function (`Webhooks::deliver_batch`).
    WebhookDelivery(Arc<Webhooks>),
}

impl Handler {
    /// Invokes the handler with `records`, as Lambda would with an SQS event.
    pub async fn invoke(&self, records: &[SqsMessage], started: Instant) -> SqsBatchResponse {
        match self {
            Handler::Worker(worker) => {
                worker
                    .run_batch(
                        records,
                        started + enrichment::budget::WORKER_FUNCTION_TIMEOUT,
                    )
                    .await
            }
            Handler::WebhookDelivery(webhooks) => webhooks.deliver_batch(records).await,
        }
    }
}

/// What a handler was invoked for: what Lambda would bill (AWS docs, "Lambda pricing":
/// duration from the handler's start to its return, per invocation). The stack keeps one for
/// the worker and one for the webhook delivery.
#[derive(Debug, Default)]
pub struct WorkerUsage {
    invocations: AtomicU64,
    busy_micros: AtomicU64,
}

impl WorkerUsage {
    /// Invocations so far, and their handler time in all.
    pub fn get(&self) -> (u64, Duration) {
        (
            self.invocations.load(Ordering::Relaxed),
            Duration::from_micros(self.busy_micros.load(Ordering::Relaxed)),
        )
    }

    fn add(&self, busy: Duration) {
        self.invocations.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(busy.as_micros()).unwrap_or(u64::MAX);
        self.busy_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

impl Poller {
    /// Polls until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = self.poll_once() => {}
            }
        }
    }

    /// Receives one batch (long poll of 1 s), runs it and deletes what succeeded. Returns the
    /// number of messages received.
    pub async fn poll_once(&self) -> usize {
        let received = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(self.batch_size.clamp(1, 10))
            .wait_time_seconds(1)
            .visibility_timeout(self.visibility_timeout.as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await;
        let messages = match received {
            Ok(output) => output.messages.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %DisplayErrorContext(&e), "ReceiveMessage failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return 0;
            }
        };
        if messages.is_empty() {
            return 0;
        }
        let records: Vec<SqsMessage> = messages
            .iter()
            .map(|m| {
                let mut record = SqsMessage::default();
                record.message_id = m.message_id.clone();
                record.receipt_handle = m.receipt_handle.clone();
                record.body = m.body.clone();
                record.attributes = m
                    .attributes
                    .as_ref()
                    .map(|a| {
                        a.iter()
                            .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_else(HashMap::new);
                record.event_source = Some("aws:sqs".into());
                record.event_source_arn = Some(format!(
                    "arn:aws:sqs:{}:000000000000:{}",
                    crate::LOCAL_REGION,
                    self.queue_url.rsplit('/').next().unwrap_or_default()
                ));
                record
            })
            .collect();
        let started = Instant::now();
        let response = self.handler.invoke(&records, started).await;
        self.usage.add(started.elapsed());
        let failed: Vec<&str> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        let entries: Vec<DeleteMessageBatchRequestEntry> = messages
            .iter()
            .enumerate()
            .filter(|(_, m)| !failed.contains(&m.message_id.as_deref().unwrap_or_default()))
            .filter_map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .set_receipt_handle(m.receipt_handle.clone())
                    .build()
                    .ok()
            })
            .collect();
        if !entries.is_empty()
            && let Err(e) = self
                .sqs
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
        {
            tracing::warn!(error = %DisplayErrorContext(&e), "DeleteMessageBatch failed; the messages will be redelivered");
        }
        messages.len()
    }
}
