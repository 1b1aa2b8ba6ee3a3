//! The HTTP edge shared by the trigger and status Lambdas and the local gateway:
//! API Gateway HTTP API request in (via lambda_http), spec response or error envelope out.

use std::collections::HashMap;

use lambda_http::http::{Method, StatusCode, header};
use lambda_http::{Body, Request, RequestExt, Response};
use uuid::Uuid;

use crate::auth::{Authenticator, Principal};
use crate::domain::{Enrichment, Field};
use crate::enrichment::Enrichments;
use crate::error::{ApiError, FIELD_MESSAGE};
use crate::queue::JobQueue;

/// The route both functions serve: `/api/v1/operations/enrichment/{personId}`.
pub const ROUTE: &str = "/api/v1/operations/enrichment/{personId}";

/// The validated inputs of a request: the `personId` path parameter and `field` query
/// parameter (spec, "Path Parameters" and "Query Parameters").
fn parse(req: &Request) -> Result<(Uuid, Field), ApiError> {
    let person_id = req
        .path_parameters_ref()
        .and_then(|p| p.first("personId"))
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(|| ApiError::Validation("personId path parameter must be a UUID".into()))?;
    let field = req
        .query_string_parameters_ref()
        .and_then(|q| q.first("field"))
        .and_then(|f| f.parse::<Field>().ok())
        .ok_or_else(|| ApiError::Validation(FIELD_MESSAGE.into()))?;
    Ok((person_id, field))
}

fn authorization(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

fn json(status: u16, body: String) -> Response<Body> {
    let mut response = Response::new(Body::Text(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn respond(result: Result<Enrichment, ApiError>) -> Response<Body> {
    match result
        .and_then(|e| serde_json::to_string(&e).map_err(|e| ApiError::Internal(e.to_string())))
    {
        Ok(body) => json(200, body),
        Err(error) => {
            if let ApiError::Internal(detail) = &error {
                tracing::error!(detail = %detail, "internal error");
            }
            json(error.status_code(), error.to_json())
        }
    }
}

/// The trigger function: `POST` of [`ROUTE`] (spec, "Trigger Enrichment").
/// Authentication comes first, then validation (401 before 400); another method is 405.
pub async fn handle_post(
    req: Request,
    auth: &Authenticator,
    enrichments: &Enrichments,
    queue: &dyn JobQueue,
) -> Response<Body> {
    let result = async {
        let (principal, person_id, field) = accept(&req, Method::POST, auth).await?;
        enrichments
            .trigger(queue, &principal, person_id, field)
            .await
    };
    respond(result.await)
}

/// The status function: `GET` of [`ROUTE`] (spec, "Get Enrichment Status").
/// Authentication comes first, then validation (401 before 400); another method is 405.
pub async fn handle_get(
    req: Request,
    auth: &Authenticator,
    enrichments: &Enrichments,
) -> Response<Body> {
    let result = async {
        let (principal, person_id, field) = accept(&req, Method::GET, auth).await?;
        enrichments.status(&principal, person_id, field).await
    };
    respond(result.await)
}

async fn accept(
    req: &Request,
    method: Method,
    auth: &Authenticator,
) -> Result<(Principal, Uuid, Field), ApiError> {
    if req.method() != method {
        return Err(ApiError::MethodNotAllowed);
    }
    let principal = auth.authenticate(authorization(req)).await?;
    let (person_id, field) = parse(req)?;
    Ok((principal, person_id, field))
}

/// Builds the lambda_http request an API Gateway HTTP API would hand the function for
/// `method` on `/api/v1/operations/enrichment/{person_id}?{query}`: the local gateway and the
/// tests use it, so that they go through exactly the same parsing as the deployed functions.
pub fn api_request(
    method: Method,
    person_id: &str,
    query: &[(String, String)],
    authorization: Option<&str>,
) -> Request {
    let uri = format!("/api/v1/operations/enrichment/{person_id}");
    let mut builder = lambda_http::http::Request::builder()
        .method(method)
        .uri(uri);
    if let Some(value) = authorization {
        builder = builder.header(header::AUTHORIZATION, value);
    }
    let request: Request = builder.body(Body::Empty).unwrap_or_default();
    let mut query_map: HashMap<String, Vec<String>> = HashMap::new();
    for (key, value) in query {
        query_map
            .entry(key.clone())
            .or_default()
            .push(value.clone());
    }
    request
        .with_path_parameters(HashMap::from([(
            "personId".to_string(),
            person_id.to_string(),
        )]))
        .with_query_string_parameters(query_map)
}
