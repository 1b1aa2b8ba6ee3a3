//! The local HTTP gateway: serves the API routes as API Gateway would, by building the same
//! lambda_http request and calling the same handlers as the trigger and status functions.
//!
//! Every answer of the API paths is JSON: a request the routes do not match gets the error
//! envelope (`404 NOT_FOUND` "Route not found"; the enrichment path without a personId goes to
//! the handlers, which answer 401 or 400 `VALIDATION_ERROR`), and a path segment that is not
//! UTF-8 once decoded reaches the handlers still encoded, so that they reject it.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{OriginalUri, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use enrichment::auth::Authenticator;
use enrichment::enrichment::Enrichments;
use enrichment::error::ApiError;
use enrichment::http::{api_request, handle_get, handle_post};
use enrichment::queue::SqsJobQueue;

/// Where the gateway serves the dev JWKS.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// The enrichment route without its `{personId}` segment.
const ENRICHMENT_PREFIX: &str = "/api/v1/operations/enrichment";

/// The longest request target (path and query) the gateway takes; a longer one gets
/// `414 URI_TOO_LONG` in the envelope. (Past 64 KiB the HTTP server itself answers a bare 414.)
pub const MAX_URI_BYTES: usize = 8 * 1024;

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

/// The routes: the enrichment route (any method; the handlers answer 405 themselves), the same
/// path without a personId (the handlers answer 401 or 400), the dev JWKS, and the envelope for
/// anything else.
pub fn router(state: Arc<Gateway>) -> Router {
    Router::new()
        .route(
            &format!("{ENRICHMENT_PREFIX}/{{personId}}"),
            any(enrichment),
        )
        .route(ENRICHMENT_PREFIX, any(enrichment_without_id))
        .route(&format!("{ENRICHMENT_PREFIX}/"), any(enrichment_without_id))
        .route(JWKS_PATH, get(jwks))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(limit_uri_length))
        .with_state(state)
}

/// An API error as a response: its status and its JSON envelope.
fn error_response(error: &ApiError) -> Response {
    let status =
        StatusCode::from_u16(error.status_code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        error.to_json(),
    )
        .into_response()
}

async fn route_not_found() -> Response {
    error_response(&ApiError::NotFound("Route not found".into()))
}

async fn method_not_allowed() -> Response {
    error_response(&ApiError::MethodNotAllowed)
}

async fn limit_uri_length(request: Request, next: Next) -> Response {
    let length = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if length > MAX_URI_BYTES {
        let body = serde_json::json!({"error": {
            "code": "URI_TOO_LONG",
            "message": format!("Request URI longer than {MAX_URI_BYTES} bytes"),
        }});
        return (
            StatusCode::URI_TOO_LONG,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    next.run(request).await
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
    OriginalUri(uri): OriginalUri,
    person_id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    // A segment that does not decode to UTF-8 (`%FF`) goes to the handlers as received, still
    // encoded: not a UUID either way.
    let person_id = match person_id {
        Ok(Path(id)) => id,
        Err(_) => uri
            .path()
            .strip_prefix(ENRICHMENT_PREFIX)
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
    };
    call_handler(&state, method, &person_id, query, &headers).await
}

async fn enrichment_without_id(
    State(state): State<Arc<Gateway>>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    call_handler(&state, method, "", query, &headers).await
}

async fn call_handler(
    state: &Gateway,
    method: Method,
    person_id: &str,
    query: Option<String>,
    headers: &HeaderMap,
) -> Response {
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let is_post = method == Method::POST;
    let request = match api_request(method, person_id, &query, authorization) {
        Ok(request) => request,
        Err(error) => return error_response(&error),
    };
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
