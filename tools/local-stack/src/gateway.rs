//! The local HTTP gateway: serves the API routes as API Gateway would, by building the same
//! lambda_http request and calling the same handlers as the trigger and status functions.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use enrichment::auth::Authenticator;
use enrichment::enrichment::Enrichments;
use enrichment::http::{api_request, handle_get, handle_post};
use enrichment::queue::SqsJobQueue;

/// Where the gateway serves the dev JWKS.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// What the gateway's routes share.
pub struct Gateway {
    /// Verifies tokens against the dev JWKS.
    pub auth: Authenticator,
    /// The POST and GET use cases.
    pub enrichments: Enrichments,
    /// The jobs queue.
    pub queue: SqsJobQueue,
    /// The dev JWKS document.
    pub jwks: String,
}

/// The routes: the enrichment route (any method; the handlers answer 405 themselves) and the
/// dev JWKS.
pub fn router(state: Arc<Gateway>) -> Router {
    Router::new()
        .route("/api/v1/operations/enrichment/{personId}", any(enrichment))
        .route(JWKS_PATH, get(jwks))
        .with_state(state)
}

async fn jwks(State(state): State<Arc<Gateway>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.jwks.clone(),
    )
        .into_response()
}

async fn enrichment(
    State(state): State<Arc<Gateway>>,
    method: Method,
    Path(person_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let is_post = method == Method::POST;
    let request = api_request(method, &person_id, &query, authorization);
    let response = if is_post {
        handle_post(request, &state.auth, &state.enrichments, &state.queue).await
    } else {
        handle_get(request, &state.auth, &state.enrichments).await
    };
    let (parts, body) = response.into_parts();
    let body = match body {
        lambda_http::Body::Empty => axum::body::Body::empty(),
        lambda_http::Body::Text(text) => axum::body::Body::from(text),
        lambda_http::Body::Binary(bytes) => axum::body::Body::from(bytes),
        _ => axum::body::Body::empty(),
    };
    Response::from_parts(parts, body)
}
