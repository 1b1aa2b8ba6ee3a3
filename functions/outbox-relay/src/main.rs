//! The outbox relay Lambda: the DynamoDB stream of the table (new images), filtered by its event
//! source mapping on the inserts of outbox events (`template.yaml`, `OutboxRelayFunction`), with
//! `ReportBatchItemFailures`. For an org with a webhook endpoint each event's delivery is
//! written and its first attempt sent to the webhook queue (spec operations-api, "Webhooks");
//! a failure names the first record to give again. Clients and configuration are built once per
//! process, outside the handler.

use aws_lambda_events::dynamodb::Event;
use aws_lambda_events::streams::DynamoDbEventResponse;
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
    // function with an error naming it. The relay sends every first attempt to the webhook
    // queue, so WEBHOOK_QUEUE_URL is required.
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
    run(service_fn(move |event: LambdaEvent<Event>| async move {
        Ok::<DynamoDbEventResponse, Error>(webhooks.relay_stream(&event.payload).await)
    }))
    .await
}
