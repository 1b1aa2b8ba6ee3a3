//! The worker Lambda: SQS event source with `ReportBatchItemFailures`; runs each job's provider
//! cascade within the invocation's deadline. Clients and configuration are built once per
//! process, outside the handler.

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use enrichment::config::{Config, aws_sdk_config, http_client, init_tracing};
use enrichment::providers::cascade::Cascade;
use enrichment::store::Store;
use enrichment::worker::{Worker, deadline_from_epoch_millis};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let config = Config::from_env()?;
    let sdk = aws_sdk_config().await;
    let cascade = Cascade::from_env(http_client())?;
    let worker = Worker::new(Store::from_sdk(&sdk, &config.table_name), cascade, config);
    let worker = &worker;
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let deadline = deadline_from_epoch_millis(event.context.deadline);
        Ok::<SqsBatchResponse, Error>(worker.run_batch(&event.payload.records, deadline).await)
    }))
    .await
}
