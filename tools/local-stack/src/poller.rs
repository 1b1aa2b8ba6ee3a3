//! Feeds SQS messages to a function's handler as the Lambda event source mapping does (AWS
//! docs, "Using Lambda with Amazon SQS"): a few pollers long-poll up to 10 messages at a time,
//! invoke the handler once per batch of [`Poller::batch_size`], up to the mapping's maximum
//! concurrency at once, delete the records that succeeded and leave the reported batch item
//! failures to come back after the visibility timeout (and to the DLQ after the queue's maximum
//! receive count). The worker's queues and the webhook queue are polled alike; only the
//! handler differs ([`Handler`]).
//!
//! A few receivers instead of one per concurrent invocation matters to the emulator: moto's
//! `ReceiveMessage` walks the whole queue, and every `SendMessage` wakes every waiting long
//! poll to walk it again, so fifty long-pollers on a queue of thousands of delayed messages
//! spend its time scanning.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsMessage};
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
use enrichment::webhooks::Webhooks;
use enrichment::worker::Worker;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The most messages one `ReceiveMessage` returns (SQS API reference, `MaxNumberOfMessages`).
const MAX_RECEIVE: usize = 10;

/// The most receivers of one queue, however high the concurrency: Lambda's event source
/// mapping starts with five (AWS docs, "Configuring scaling behavior for SQS event source
/// mappings").
const MAX_RECEIVERS: usize = 5;

/// One event source mapping: a queue and the handler it feeds, [`Poller::batch_size`] messages
/// per invocation, at most [`Poller::concurrency`] invocations at once.
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
    /// The most invocations at once (the mapping's `ScalingConfig.MaximumConcurrency`); 0 runs
    /// one, as 1 does.
    pub concurrency: usize,
    /// The function invoked with each batch, shared by the receivers.
    pub handler: Handler,
    /// Invocations and handler time, shared by the receivers.
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
    /// Polls until `stop` turns true, then drops the invocations under way (as a stopped
    /// process would; their messages come back after the visibility timeout).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let poller = Arc::new(self);
        let invocations = Arc::new(Semaphore::new(poller.concurrency.max(1)));
        let receivers = poller.concurrency.clamp(1, MAX_RECEIVERS);
        let mut tasks = JoinSet::new();
        for _ in 0..receivers {
            tasks.spawn(poller.clone().receive_loop(invocations.clone()));
        }
        let _ = stop.wait_for(|s| *s).await;
        tasks.shutdown().await;
    }

    fn batch_size(&self) -> i32 {
        self.batch_size.clamp(1, MAX_RECEIVE as i32)
    }

    /// One receiver: waits for a free invocation, receives as many messages as the free
    /// invocations take (at most 10) and invokes the handler on each batch in its own task.
    async fn receive_loop(self: Arc<Self>, invocations: Arc<Semaphore>) {
        let mut running = JoinSet::new();
        loop {
            while running.try_join_next().is_some() {}
            let Ok(first) = invocations.clone().acquire_owned().await else {
                return;
            };
            let mut permits = vec![first];
            let per_invocation = self.batch_size() as usize;
            while (permits.len() + 1) * per_invocation <= MAX_RECEIVE {
                match invocations.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            let messages = self.receive(permits.len() * per_invocation).await;
            // Invocations the messages did not fill are given back as `permits` drops.
            for (batch, permit) in messages.chunks(per_invocation).zip(permits) {
                let poller = self.clone();
                let batch = batch.to_vec();
                running.spawn(async move { poller.invoke(batch, permit).await });
            }
        }
    }

    /// One `ReceiveMessage` of up to `count` messages (long poll of 1 s); none on an error,
    /// after a second's pause.
    async fn receive(&self, count: usize) -> Vec<aws_sdk_sqs::types::Message> {
        let received = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(count.clamp(1, MAX_RECEIVE) as i32)
            .wait_time_seconds(1)
            .visibility_timeout(self.visibility_timeout.as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await;
        match received {
            Ok(output) => output.messages.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %DisplayErrorContext(&e), "ReceiveMessage failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                Vec::new()
            }
        }
    }

    /// Invokes the handler with one batch, holding one of the mapping's invocations, and
    /// deletes the messages it did not report as failures.
    async fn invoke(
        &self,
        messages: Vec<aws_sdk_sqs::types::Message>,
        _invocation: OwnedSemaphorePermit,
    ) {
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
    }
}
