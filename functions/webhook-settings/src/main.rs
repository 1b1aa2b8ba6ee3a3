//! The webhook settings Lambda: `PUT`, `GET` and `DELETE /api/v1/settings/webhook` (the org's
//! completion webhook endpoint, its signing secret shown once by the `PUT`) and
//! `GET /api/v1/settings/webhook/deliveries` (the org's recent deliveries) behind an API Gateway
//! HTTP API (spec operations-api, "Webhooks"). Clients and configuration are built once per
//! process, outside the handler.

use enrichment::auth::Authenticator;
use enrichment::config::{Config, Vars, aws_sdk_config, http_client};
use enrichment::store::Store;
use enrichment::webhooks::{WebhookConfig, Webhooks};
use lambda_http::{Error, Request, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    // JSON lines with the request id when the function's log format is JSON (template.yaml),
    // level from AWS_LAMBDA_LOG_LEVEL or RUST_LOG.
    lambda_http::tracing::init_default_subscriber();
    // Every setting is read and checked here, before the first request: a bad one stops the
    // function with an error naming it.
    let vars = Vars::env();
    let config = Config::from_vars(&vars)?;
    let auth = Authenticator::from_vars(&vars, http_client())?;
    let webhook_config = WebhookConfig::from_vars(&vars)?;
    let sdk = aws_sdk_config().await;
    // The settings routes queue nothing: no delivery queue.
    let webhooks = Webhooks::new(
        Store::from_sdk(&sdk, &config.table_name),
        webhook_config,
        None,
    );
    let (auth, webhooks) = (&auth, &webhooks);
    run(service_fn(move |req: Request| async move {
        Ok::<_, Error>(enrichment::http::handle_webhook_settings(req, auth, webhooks).await)
    }))
    .await
}
