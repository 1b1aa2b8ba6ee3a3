//! The worker Lambda: SQS event source with `ReportBatchItemFailures` (or, with the optional
//! orchestrator, one job per Step Functions Task); runs each job's provider cascade within the
//! invocation's deadline. Clients and configuration are built once per
//! process, outside the handler.

use enrichment::budget::{WORKER_FUNCTION_TIMEOUT, deadline_from_epoch_millis};
use enrichment::config::{Config, QueueSettings, Vars, aws_sdk_config, http_client};
use enrichment::providers::registry;
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
    // Every setting is read and checked here, before the first job: a bad one stops the
    // function with an error naming it.
    let vars = Vars::env();
    let config = Config::from_vars(&vars)?;
    let queue = QueueSettings::from_vars(&vars);
    let sdk = aws_sdk_config().await;
    let secrets = SecretsClient::new(&sdk);
    // In AWS the API keys come from Secrets Manager (`<NAME>_API_KEY_SECRET_ARN`); they are
    // read as `<NAME>_API_KEY`, over the environment.
    let keys = resolve_api_keys(&secrets, registry::api_key_secrets(&vars)).await?;
    let cascade = registry::cascade(http_client(), &Vars::from_pairs(keys).or(vars))?;
    let mut worker = Worker::new(Store::from_sdk(&sdk, &config.table_name), cascade, config);
    if let Some(queue_url) = queue.queue_url {
        worker = worker.with_queue(SqsJobQueue::from_sdk(&sdk, queue_url));
    }
    if let Some(queue_url) = queue.bulk_queue_url {
        worker = worker.with_bulk_queue(SqsJobQueue::from_sdk(&sdk, queue_url));
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
