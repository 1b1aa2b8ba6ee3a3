//! The webhook delivery Lambda: SQS event source on the webhook queue with
//! `ReportBatchItemFailures`. Each message is one attempt of an event's delivery: the stored
//! body signed (Standard Webhooks) and posted to the org's endpoint, the next attempt queued on
//! `WEBHOOK_RETRY_SCHEDULE` when it fails, the attempt recorded in the deliveries log (spec
//! operations-api, "Webhooks"); the messages of a batch are delivered concurrently. Clients and
//! configuration are built once per process, outside the handler.

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use enrichment::config::{Config, Vars, aws_sdk_config};
use enrichment::store::Store;
use enrichment::webhooks::{DeliveryQueue, WebhookConfig, Webhooks};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    // JSON lines with the request id when the function's log format is JSON (template.yaml),
    // level from AWS_LAMBDA_LOG_LEVEL or RUST_LOG.
    lambda_runtime::tracing::init_default_subscriber();
    // Every setting is read and checked here, before the first batch: a bad one stops the
    // function with an error naming it. Retries (and the rest of a wait longer than SQS's
    // longest delay) go back to the webhook queue, so WEBHOOK_QUEUE_URL is required.
    let vars = Vars::env();
    let config = Config::from_vars(&vars)?;
    let webhook_config = WebhookConfig::from_vars(&vars)?;
    let queue_url = webhook_config.required_queue_url()?.to_string();
    let sdk = aws_sdk_config().await;
    let webhooks = Webhooks::new(
        Store::from_sdk(&sdk, &config.table_name),
        webhook_config,
        Some(DeliveryQueue::from_sdk(&sdk, queue_url)),
    );
    let webhooks = &webhooks;
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, Error>(webhooks.deliver_batch(&event.payload.records).await)
    }))
    .await
}
