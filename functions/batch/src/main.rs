//! The batch Lambda behind an API Gateway HTTP API: `POST /api/v1/operations/enrichment/batch`
//! and `/bulk` (many people enriched at once, their jobs sent to the bulk queue) and
//! `/batch/query` (the enrichments of many people, no credits). Clients and configuration are
//! built once per process, outside the handler.

use enrichment::auth::Authenticator;
use enrichment::config::{Config, Vars, aws_sdk_config, http_client};
use enrichment::enrichment::Enrichments;
use enrichment::store::Store;
use lambda_http::{Error, Request, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    // JSON lines with the request id when the function's log format is JSON (template.yaml),
    // level from AWS_LAMBDA_LOG_LEVEL or RUST_LOG.
    lambda_http::tracing::init_default_subscriber();
    // Every setting is read and checked here, before the first request.
    let vars = Vars::env();
    let config = Config::from_vars(&vars)?;
    let auth = Authenticator::from_vars(&vars, http_client())?;
    let sdk = aws_sdk_config().await;
    let queue = enrichment::queue::bulk_from_vars(&sdk, &vars, config.max_age)?;
    let enrichments = Enrichments::new(Store::from_sdk(&sdk, &config.table_name), config);
    let (auth, enrichments, queue) = (&auth, &enrichments, queue.as_ref());
    run(service_fn(move |req: Request| async move {
        Ok::<_, Error>(enrichment::http::handle_batch(req, auth, enrichments, queue).await)
    }))
    .await
}
