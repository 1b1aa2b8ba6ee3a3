//! The HTTP edge shared by the API Lambdas and the local gateway:
//! API Gateway HTTP API request in (via lambda_http), spec response or error envelope out.

use std::collections::HashMap;

use lambda_http::http::{Method, StatusCode, header};
use lambda_http::{Body, Request, RequestExt, Response};
use tokio::time::Instant;
use uuid::Uuid;

use crate::auth::{Authenticator, Principal};
use crate::budget;
use crate::domain::{CacheUse, Enrichment, Field};
use crate::enrichment::Enrichments;
use crate::error::{ApiError, FIELD_MESSAGE};
use crate::people::People;
use crate::queue::JobQueue;

/// The message of a missing or invalid `personId`.
pub const PERSON_ID_MESSAGE: &str = "personId path parameter is required and must be a UUID";

/// The route both functions serve: `/api/v1/operations/enrichment/{personId}`.
pub const ROUTE: &str = "/api/v1/operations/enrichment/{personId}";

/// The validated inputs of a request: the `personId` path parameter and `field` query
/// parameter (spec, "Path Parameters" and "Query Parameters").
fn parse(req: &Request) -> Result<(Uuid, Field), ApiError> {
    // Only the canonical hyphenated form (`550e8400-e29b-41d4-a716-446655440000`, either case)
    // is a personId: the braced, URN and simple forms `Uuid::parse_str` also takes are not.
    let person_id = req
        .path_parameters_ref()
        .and_then(|p| p.first("personId"))
        .filter(|id| id.len() == 36)
        .and_then(|id| Uuid::try_parse(id).ok())
        .ok_or_else(|| ApiError::Validation(PERSON_ID_MESSAGE.into()))?;
    // Exactly one `field`: a repeated one is ambiguous.
    let field = match req
        .query_string_parameters_ref()
        .and_then(|q| q.all("field"))
    {
        Some(values) if values.len() == 1 => values[0].parse::<Field>().ok(),
        _ => None,
    }
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

/// The spec's error envelope for `error`, with `Retry-After` on a 429 or 503. An internal or
/// unavailable error's detail is logged here, once, and never sent.
pub fn error_response(error: &ApiError) -> Response<Body> {
    match error {
        ApiError::Internal(detail) => tracing::error!(detail = %detail, "internal error"),
        ApiError::Unavailable(detail) => {
            tracing::error!(detail = %detail, "dependency unavailable")
        }
        _ => {}
    }
    let mut response = json(error.status_code(), error.to_json());
    if let Some(seconds) = error.retry_after_seconds() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
    }
    response
}

fn respond(result: Result<Enrichment, ApiError>) -> Response<Body> {
    answer(result.map(|e| json_of(200, &e)), "GET, POST")
}

/// The invocation's deadline: the Lambda context's (`Lambda-Runtime-Deadline-Ms`), or
/// [`budget::API_FUNCTION_TIMEOUT`] from now for a request built outside Lambda (the local
/// gateway), as the template gives the API functions.
pub fn deadline(req: &Request) -> Instant {
    budget::deadline_from_epoch_millis(
        req.lambda_context_ref()
            .map_or(0, |context| context.deadline),
        budget::API_FUNCTION_TIMEOUT,
    )
}

/// Runs `work` until [`budget::RESPONSE_MARGIN`] before `deadline`; past that, the client gets
/// `503 UNAVAILABLE` in the envelope rather than API Gateway's bare error when Lambda kills the
/// function. The use cases bound their own calls well before (see [`crate::budget`]): this is
/// the last line.
async fn within<T>(
    deadline: Instant,
    work: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let until = deadline
        .checked_sub(budget::RESPONSE_MARGIN)
        .unwrap_or(deadline);
    tokio::time::timeout_at(until, work)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::Unavailable(
                "the invocation's deadline came".into(),
            ))
        })
}

/// The trigger function: `POST` of [`ROUTE`] (spec, "Trigger Enrichment").
/// Authentication comes first, then validation (401 before 400); another method is 405.
/// Answers before the invocation's [`deadline`] (503 when a dependency did not answer in time).
pub async fn handle_post(
    req: Request,
    auth: &Authenticator,
    enrichments: &Enrichments,
    queue: &dyn JobQueue,
) -> Response<Body> {
    let deadline = deadline(&req);
    let result = within(deadline, async {
        let (principal, person_id, field) = accept(&req, Method::POST, auth).await?;
        let cache = cache_use(&req)?;
        enrichments
            .trigger(queue, &principal, person_id, field, cache, deadline)
            .await
    });
    respond(result.await)
}

/// The status function: `GET` of [`ROUTE`] (spec, "Get Enrichment Status").
/// Authentication comes first, then validation (401 before 400); another method is 405.
/// Answers before the invocation's [`deadline`] (503 when a dependency did not answer in time).
pub async fn handle_get(
    req: Request,
    auth: &Authenticator,
    enrichments: &Enrichments,
) -> Response<Body> {
    let result = within(deadline(&req), async {
        let (principal, person_id, field) = accept(&req, Method::GET, auth).await?;
        enrichments.status(&principal, person_id, field).await
    });
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
///
/// `person_id` is the decoded path segment, whatever it holds (a space, `<`, a newline, NUL...):
/// it is percent-encoded into the URI and passed as is in the `personId` path parameter, so the
/// handler authenticates the request and then rejects a bad id with its 400.
///
/// Errors: the request cannot be built (an `authorization` value that is no header value), as
/// the error the client gets.
pub fn api_request(
    method: Method,
    person_id: &str,
    query: &[(String, String)],
    authorization: Option<&str>,
) -> Result<Request, ApiError> {
    let mut url = url::Url::parse("http://localhost/api/v1/operations/enrichment")
        .map_err(|e| ApiError::Internal(format!("route URL: {e}")))?;
    url.path_segments_mut()
        .map_err(|()| ApiError::Internal("the route URL has no path".into()))?
        .push(person_id);
    let mut builder = lambda_http::http::Request::builder()
        .method(method)
        .uri(url.path());
    if let Some(value) = authorization {
        let value = header::HeaderValue::from_str(value).map_err(|_| {
            ApiError::Unauthorized("Authorization header must be 'Bearer <token>'".into())
        })?;
        builder = builder.header(header::AUTHORIZATION, value);
    }
    let request: Request = builder
        .body(Body::Empty)
        .map_err(|e| ApiError::Internal(format!("cannot build the API request: {e}")))?;
    let mut query_map: HashMap<String, Vec<String>> = HashMap::new();
    for (key, value) in query {
        query_map
            .entry(key.clone())
            .or_default()
            .push(value.clone());
    }
    Ok(request
        .with_path_parameters(HashMap::from([(
            "personId".to_string(),
            person_id.to_string(),
        )]))
        .with_query_string_parameters(query_map))
}

/// The people routes' prefix (spec operations-api, "People").
pub const PEOPLE_PREFIX: &str = "/api/v1/entities/persons";

/// The largest request body the API reads, in bytes: Lambda's 6 MB synchronous payload limit
/// (a larger one is `413 PAYLOAD_TOO_LARGE`).
pub const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

/// The largest body of `POST /api/v1/entities/persons/batch`, in bytes: its answer repeats each
/// person with its id and times (about 200 bytes more each), and must stay within Lambda's
/// 6 MiB response limit.
pub const MAX_PEOPLE_BATCH_BYTES: usize = 5 * 1024 * 1024;

/// The body of `req` as JSON, at most `limit` bytes.
///
/// Errors: 413 over `limit`; 400 (`details.field` `body`) when it is not JSON.
fn json_body_within(req: &Request, limit: usize) -> Result<serde_json::Value, ApiError> {
    let bytes: &[u8] = match req.body() {
        Body::Empty => b"",
        Body::Text(text) => text.as_bytes(),
        Body::Binary(bytes) => bytes,
        _ => b"",
    };
    if bytes.len() > limit {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    serde_json::from_slice(bytes)
        .map_err(|_| ApiError::invalid("body", "the request body must be a JSON object"))
}

/// The body of `req` as JSON, at most [`MAX_BODY_BYTES`].
///
/// Errors: 413 over [`MAX_BODY_BYTES`]; 400 (`details.field` `body`) when it is not JSON.
fn json_body(req: &Request) -> Result<serde_json::Value, ApiError> {
    json_body_within(req, MAX_BODY_BYTES)
}

/// A JSON answer with `status`, or the envelope when `value` does not serialize.
fn json_of(status: u16, value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_string(value) {
        Ok(body) => json(status, body),
        Err(e) => error_response(&ApiError::Internal(e.to_string())),
    }
}

/// The response of a route's handler, or its error's envelope; a 405 carries `Allow: allow`
/// (spec operations-api, "Common rules").
fn answer(result: Result<Response<Body>, ApiError>, allow: &'static str) -> Response<Body> {
    result.unwrap_or_else(|error| {
        let mut response = error_response(&error);
        if error == ApiError::MethodNotAllowed {
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static(allow));
        }
        response
    })
}

/// The query parameter `name` of `req`, when given.
///
/// Errors: 400 naming it when it is given more than once: which one would count is ambiguous.
fn query_once(req: &Request, name: &str) -> Result<Option<String>, ApiError> {
    match req.query_string_parameters_ref().and_then(|q| q.all(name)) {
        None => Ok(None),
        Some(values) if values.len() == 1 => Ok(Some(values[0].to_string())),
        Some(_) => Err(ApiError::invalid(name, format!("{name} may be given once"))),
    }
}

/// The `cache` query flag of an enrichment request (README, "Global cache"): absent or `true`
/// allows the global cache, `false` asks for fresh data.
///
/// Errors: 400 naming `cache` for another value or a repeated flag.
fn cache_use(req: &Request) -> Result<CacheUse, ApiError> {
    match query_once(req, "cache")? {
        None => Ok(CacheUse::Allowed),
        Some(value) => CacheUse::from_query(&value)
            .ok_or_else(|| ApiError::invalid("cache", "cache must be true or false")),
    }
}

/// A canonical, hyphenated UUID (either case) as a path's `personId`.
fn person_id(text: &str) -> Result<Uuid, ApiError> {
    Some(text)
        .filter(|id| id.len() == 36)
        .and_then(|id| Uuid::try_parse(id).ok())
        .ok_or_else(|| ApiError::invalid("personId", PERSON_ID_MESSAGE))
}

/// The people function: every route under [`PEOPLE_PREFIX`] (spec operations-api, "People"):
/// `POST` (201), `POST /batch` (201), `GET` (a page), `GET /{personId}`, `DELETE /{personId}`
/// (204). Authentication comes first (401 before 400); a method a path does not serve is 405
/// with the envelope and an `Allow` header. Answers before the invocation's [`deadline`].
pub async fn handle_people(req: Request, auth: &Authenticator, people: &People) -> Response<Body> {
    let rest = req
        .uri()
        .path()
        .strip_prefix(PEOPLE_PREFIX)
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_string();
    let allow = match rest.as_str() {
        "" => "GET, POST",
        "/batch" => "POST",
        _ => "GET, DELETE",
    };
    let method = req.method().clone();
    let result = within(deadline(&req), async {
        let principal = auth.authenticate(authorization(&req)).await?;
        // A parameter given twice is ambiguous: 400, as for `field` on the enrichment route.
        let one = |name: &str| query_once(&req, name);
        Ok(match (method.clone(), rest.as_str()) {
            (Method::POST, "") => {
                json_of(201, &people.create(&principal, &json_body(&req)?).await?)
            }
            (Method::POST, "/batch") => {
                let body = json_body_within(&req, MAX_PEOPLE_BATCH_BYTES)?;
                let created = people.create_batch(&principal, &body).await?;
                json_of(201, &serde_json::json!({ "persons": created }))
            }
            (Method::GET, "") => json_of(
                200,
                &people
                    .list(
                        &principal,
                        one("limit")?.as_deref(),
                        one("cursor")?.as_deref(),
                    )
                    .await?,
            ),
            (Method::GET, id) if !id.is_empty() && id != "/batch" => {
                let id = person_id(id.trim_start_matches('/'))?;
                json_of(200, &people.get(&principal, id).await?)
            }
            (Method::DELETE, id) if !id.is_empty() && id != "/batch" => {
                people
                    .delete(&principal, person_id(id.trim_start_matches('/'))?)
                    .await?;
                let mut response = Response::new(Body::Empty);
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
            }
            _ => return Err(ApiError::MethodNotAllowed),
        })
    })
    .await;
    answer(result, allow)
}

/// Builds the lambda_http request an API Gateway HTTP API would hand a function for `method`
/// on `path` (raw, percent-encoded) with `query`, `authorization` and `body`: the local gateway
/// uses it for the people routes, so that they go through the same handler as the deployed
/// function.
///
/// Errors: the request cannot be built (an `authorization` value that is no header value, a
/// path that is no URI path), as the error the client gets.
pub fn http_api_request(
    method: Method,
    path: &str,
    query: &[(String, String)],
    authorization: Option<&str>,
    body: Vec<u8>,
) -> Result<Request, ApiError> {
    let mut builder = lambda_http::http::Request::builder()
        .method(method)
        .uri(path);
    if let Some(value) = authorization {
        let value = header::HeaderValue::from_str(value).map_err(|_| {
            ApiError::Unauthorized("Authorization header must be 'Bearer <token>'".into())
        })?;
        builder = builder.header(header::AUTHORIZATION, value);
    }
    let body = if body.is_empty() {
        Body::Empty
    } else {
        match String::from_utf8(body) {
            Ok(text) => Body::Text(text),
            Err(e) => Body::Binary(e.into_bytes()),
        }
    };
    let request: Request = builder
        .body(body)
        .map_err(|_| ApiError::Validation("the request path is not a valid URI path".into()))?;
    let mut query_map: HashMap<String, Vec<String>> = HashMap::new();
    for (key, value) in query {
        query_map
            .entry(key.clone())
            .or_default()
            .push(value.clone());
    }
    Ok(request.with_query_string_parameters(query_map))
}

/// The batch query route (spec operations-api, "Batch query").
pub const BATCH_QUERY_ROUTE: &str = "/api/v1/operations/enrichment/batch/query";

/// The most tasks one batch query takes.
pub const MAX_QUERY_TASKS: usize = 200;

/// The (person, field) tasks of a batch query body, `{"tasks": [{"entityId", "field",
/// "entityType"?}]}`: 1 to [`MAX_QUERY_TASKS`]; `field` `phones`, `emails` or `summary`,
/// `entityType` `person` (default) or `company`. Tasks this product does not enrich
/// (`summary`, `company`) are valid and left out.
///
/// Errors: 400 naming the first bad value (`tasks[3].entityId`).
fn query_tasks(body: &serde_json::Value) -> Result<Vec<(Uuid, Field)>, ApiError> {
    let tasks = body
        .get("tasks")
        .and_then(serde_json::Value::as_array)
        .filter(|tasks| (1..=MAX_QUERY_TASKS).contains(&tasks.len()))
        .ok_or_else(|| {
            ApiError::invalid(
                "tasks",
                format!("tasks must be an array of 1 to {MAX_QUERY_TASKS} tasks"),
            )
        })?;
    let mut wanted = Vec::with_capacity(tasks.len());
    for (index, task) in tasks.iter().enumerate() {
        let bad = |field: &str, message: &str| ApiError::InvalidField {
            message: message.to_string(),
            field: format!("tasks[{index}].{field}"),
            index: Some(index),
        };
        let entity_id = task
            .get("entityId")
            .and_then(serde_json::Value::as_str)
            .filter(|id| id.len() == 36)
            .and_then(|id| Uuid::try_parse(id).ok())
            .ok_or_else(|| bad("entityId", "entityId must be a UUID"))?;
        let field =
            match task.get("field").and_then(serde_json::Value::as_str) {
                Some("summary") => None,
                Some(other) => Some(other.parse::<Field>().map_err(|()| {
                    bad("field", r#"field must be "phones", "emails" or "summary""#)
                })?),
                None => {
                    return Err(bad(
                        "field",
                        r#"field must be "phones", "emails" or "summary""#,
                    ));
                }
            };
        let person = match task.get("entityType") {
            None | Some(serde_json::Value::Null) => true,
            Some(kind) => match kind.as_str() {
                Some("person") => true,
                Some("company") => false,
                _ => {
                    return Err(bad(
                        "entityType",
                        r#"entityType must be "person" or "company""#,
                    ));
                }
            },
        };
        if let (Some(field), true) = (field, person) {
            wanted.push((entity_id, field));
        }
    }
    Ok(wanted)
}

/// The batch enrichment route (spec operations-api, "Batch enrichment").
pub const BATCH_ROUTE: &str = "/api/v1/operations/enrichment/batch";

/// The bulk enrichment route (spec operations-api, "Bulk enrichment").
pub const BULK_ROUTE: &str = "/api/v1/operations/enrichment/bulk";

/// The batch function's routes, each `POST` only (405 with `Allow: POST` otherwise):
/// [`BATCH_ROUTE`] and [`BULK_ROUTE`] answer a bare array of enrichments in input order, their
/// new jobs sent to `queue` (the bulk queue); [`BATCH_QUERY_ROUTE`] a bare array of the
/// enrichments that exist, in task order. Authentication first. Answers before the
/// invocation's [`deadline`].
pub async fn handle_batch(
    req: Request,
    auth: &Authenticator,
    enrichments: &Enrichments,
    queue: &dyn JobQueue,
) -> Response<Body> {
    let deadline = deadline(&req);
    let path = req.uri().path().trim_end_matches('/').to_string();
    let result = within(deadline, async {
        let principal = auth.authenticate(authorization(&req)).await?;
        if req.method() != Method::POST {
            return Err(ApiError::MethodNotAllowed);
        }
        let answer = match path.as_str() {
            BATCH_QUERY_ROUTE => {
                let tasks = query_tasks(&json_body(&req)?)?;
                enrichments.query(&principal, &tasks).await?
            }
            BATCH_ROUTE => {
                let (ids, field) = crate::batch::parse_batch(&json_body(&req)?)?;
                let cache = cache_use(&req)?;
                enrichments
                    .enrich_batch(queue, &principal, &ids, field, cache, deadline)
                    .await?
            }
            BULK_ROUTE => {
                let (selection, field) = crate::batch::parse_bulk(&json_body(&req)?)?;
                let cache = cache_use(&req)?;
                enrichments
                    .enrich_bulk(queue, &principal, &selection, field, cache, deadline)
                    .await?
            }
            _ => return Err(ApiError::MethodNotAllowed),
        };
        Ok(json_of(200, &answer))
    })
    .await;
    answer(result, "POST")
}

/// The credits routes' prefix (spec operations-api, "Credits").
pub const CREDITS_PREFIX: &str = "/api/v1/operations/credits";

/// The credits function: `GET` [`CREDITS_PREFIX`]`/balance` and `/history` (query `startDate`,
/// `endDate`, `limit`, `offset`, each at most once). Authentication first; another method is
/// 405 with `Allow: GET`. Answers before the invocation's [`deadline`].
pub async fn handle_credits(
    req: Request,
    auth: &Authenticator,
    credits: &crate::credits::Credits,
) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let result = within(deadline(&req), async {
        let principal = auth.authenticate(authorization(&req)).await?;
        if req.method() != Method::GET {
            return Err(ApiError::MethodNotAllowed);
        }
        let one = |name: &str| query_once(&req, name);
        match path.strip_prefix(CREDITS_PREFIX) {
            Some("/balance") => Ok(json_of(200, &credits.balance(&principal).await?)),
            Some("/history") => {
                let query = crate::credits::parse_history(
                    one("startDate")?.as_deref(),
                    one("endDate")?.as_deref(),
                    one("limit")?.as_deref(),
                    one("offset")?.as_deref(),
                )?;
                Ok(json_of(200, &credits.history(&principal, &query).await?))
            }
            _ => Err(ApiError::MethodNotAllowed),
        }
    })
    .await;
    answer(result, "GET")
}

/// The cancel route (spec operations-api, "Cancel").
pub const CANCEL_ROUTE: &str = "/api/v1/operations/enrichment/{personId}/cancel";

/// The cancel function: `POST` of [`CANCEL_ROUTE`]`?field=emails|phones` (spec operations-api,
/// "Cancel"), its `personId` path parameter and `field` query parameter read and checked as on
/// [`ROUTE`]. Answers `200` with the enrichment (the API object), now or already `cancelled`;
/// `409 CONFLICT` `Enrichment is already <status>` when it ended otherwise; `404 NOT_FOUND`
/// `Enrichment not found`. Another method is 405 with `Allow: POST`; authentication comes
/// before validation (401 before 400). Answers before the invocation's [`deadline`].
pub async fn handle_cancel(
    req: Request,
    auth: &Authenticator,
    enrichments: &Enrichments,
) -> Response<Body> {
    let result = within(deadline(&req), async {
        let (principal, person_id, field) = accept(&req, Method::POST, auth).await?;
        let enrichment = enrichments.cancel(&principal, person_id, field).await?;
        Ok(json_of(200, &enrichment))
    });
    answer(result.await, "POST")
}

/// The webhook settings routes' prefix (spec operations-api, "Webhooks").
pub const WEBHOOK_SETTINGS_PATH: &str = "/api/v1/settings/webhook";

/// The webhook settings function (spec operations-api, "Webhooks"): `PUT`
/// [`WEBHOOK_SETTINGS_PATH`] with `{"url"}` (200 `{"url", "secret", "createdAt"}`, the secret
/// shown this once), `GET` (200 `{"url", "createdAt"}`, 404 `Webhook not found`), `DELETE`
/// (204), and `GET` [`WEBHOOK_SETTINGS_PATH`]`/deliveries?limit=` (200 `{"deliveries": [...]}`,
/// newest first). Authentication first; another method is 405 with `Allow`. Answers before the
/// invocation's [`deadline`].
pub async fn handle_webhook_settings(
    req: Request,
    auth: &Authenticator,
    webhooks: &crate::webhooks::Webhooks,
) -> Response<Body> {
    let rest = req
        .uri()
        .path()
        .strip_prefix(WEBHOOK_SETTINGS_PATH)
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_string();
    let allow = match rest.as_str() {
        "/deliveries" => "GET",
        _ => "GET, PUT, DELETE",
    };
    let method = req.method().clone();
    let result = within(deadline(&req), async {
        let principal = auth.authenticate(authorization(&req)).await?;
        Ok(match (method, rest.as_str()) {
            (Method::PUT, "") => {
                let webhook = webhooks.register(&principal, &json_body(&req)?).await?;
                json_of(200, &webhook)
            }
            (Method::GET, "") => json_of(200, &webhooks.get(&principal).await?),
            (Method::DELETE, "") => {
                webhooks.remove(&principal).await?;
                let mut response = Response::new(Body::Empty);
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
            }
            (Method::GET, "/deliveries") => {
                let limit = query_once(&req, "limit")?;
                let deliveries = webhooks.deliveries(&principal, limit.as_deref()).await?;
                json_of(200, &serde_json::json!({ "deliveries": deliveries }))
            }
            _ => return Err(ApiError::MethodNotAllowed),
        })
    })
    .await;
    answer(result, allow)
}
