//! The credits Lambda: `GET /api/v1/operations/credits/balance` and `/history` (the org's
//! balance and ledger) behind an API Gateway HTTP API. Clients and configuration are built once
//! per process, outside the handler.

use enrichment::auth::Authenticator;
use enrichment::config::{Config, Vars, aws_sdk_config, http_client};
use enrichment::credits::Credits;
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
    let credits = Credits::new(Store::from_sdk(&sdk, &config.table_name));
    let (auth, credits) = (&auth, &credits);
    run(service_fn(move |req: Request| async move {
        Ok::<_, Error>(enrichment::http::handle_credits(req, auth, credits).await)
    }))
    .await
}
