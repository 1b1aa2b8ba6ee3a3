//! The trigger Lambda: `POST /api/v1/operations/enrichment/{personId}?field=` behind an API
//! Gateway HTTP API. Clients and configuration are built once per process, outside the handler.

use enrichment::auth::Authenticator;
use enrichment::config::{Config, aws_sdk_config, http_client, init_tracing};
use enrichment::enrichment::Enrichments;
use enrichment::queue::SqsJobQueue;
use enrichment::store::Store;
use lambda_http::{Error, Request, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let config = Config::from_env()?;
    let queue_url = std::env::var("QUEUE_URL").map_err(|_| "QUEUE_URL is not set")?;
    let sdk = aws_sdk_config().await;
    let auth = Authenticator::from_env(http_client())?;
    let queue = SqsJobQueue::from_sdk(&sdk, queue_url);
    let enrichments = Enrichments::new(Store::from_sdk(&sdk, &config.table_name), config);
    let (auth, enrichments, queue) = (&auth, &enrichments, &queue);
    run(service_fn(move |req: Request| async move {
        Ok::<_, Error>(enrichment::http::handle_post(req, auth, enrichments, queue).await)
    }))
    .await
}
