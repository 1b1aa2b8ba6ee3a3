//! The worker Lambda: SQS event source with `ReportBatchItemFailures` (or, with the optional
//! orchestrator, one job per Step Functions Task); runs each job's provider cascade within the
//! invocation's deadline. Clients and configuration are built once per
//! process, outside the handler.

use enrichment::budget::{WORKER_FUNCTION_TIMEOUT, deadline_from_epoch_millis};
use enrichment::config::{Config, aws_sdk_config, http_client};
use enrichment::providers::cascade::Cascade;
use enrichment::queue::SqsJobQueue;
use enrichment::secrets::{SecretsClient, resolve_api_keys};
use enrichment::store::Store;
use enrichment::worker::{Worker, WorkerEvent};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    // JSON lines with the request id when the function's log format is JSON (template.yaml),
    // level from AWS_LAMBDA_LOG_LEVEL or RUST_LOG.
    lambda_runtime::tracing::init_default_subscriber();
    let config = Config::from_env()?;
    let sdk = aws_sdk_config().await;
    let secrets = SecretsClient::new(&sdk);
    let keys = resolve_api_keys(&secrets, std::env::vars()).await?;
    let cascade = Cascade::from_vars(http_client(), |name| {
        keys.get(name).cloned().or_else(|| std::env::var(name).ok())
    })?;
    let mut worker = Worker::new(Store::from_sdk(&sdk, &config.table_name), cascade, config);
    if let Ok(queue_url) = std::env::var("QUEUE_URL") {
        worker = worker.with_queue(SqsJobQueue::from_sdk(&sdk, queue_url));
    }
    let worker = &worker;
    run(service_fn(
        move |event: LambdaEvent<WorkerEvent>| async move {
            let deadline =
                deadline_from_epoch_millis(event.context.deadline, WORKER_FUNCTION_TIMEOUT);
            Ok::<_, Error>(worker.handle(event.payload, deadline).await?)
        },
    ))
    .await
}
