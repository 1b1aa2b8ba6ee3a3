//! The local HTTP gateway: serves the API routes as API Gateway would, by building the same
//! lambda_http request and calling the same handlers as the trigger and status functions.
//!
//! Every answer of the API paths is JSON: a request the routes do not match gets the error
//! envelope (`404 NOT_FOUND` "Route not found"; the enrichment path without a personId goes to
//! the handlers, which answer 401 or 400 `VALIDATION_ERROR`), and a path segment that is not
//! UTF-8 once decoded reaches the handlers still encoded, so that they reject it.
//!
//! So does every rejection of the HTTP layer: [`serve`] reads and checks each request head
//! before hyper sees it, with hyper's own rules (httparse, `http::Uri`, `Content-Length` and
//! `Transfer-Encoding`), and answers what hyper would have rejected with an empty `400`, `414`
//! or `431` with the envelope instead (see [`check_head`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{OriginalUri, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use enrichment::auth::Authenticator;
use enrichment::credits::Credits;
use enrichment::enrichment::Enrichments;
use enrichment::error::ApiError;
use enrichment::http::{
    BATCH_QUERY_ROUTE, BATCH_ROUTE, BULK_ROUTE, CANCEL_ROUTE, CREDITS_PREFIX, MAX_BODY_BYTES,
    PEOPLE_PREFIX, WEBHOOK_SETTINGS_PATH, api_request, handle_batch, handle_cancel, handle_credits,
    handle_get, handle_people, handle_post, handle_webhook_settings, http_api_request,
};
use enrichment::people::People;
use enrichment::queue::SqsJobQueue;
use enrichment::webhooks::Webhooks;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Where the gateway serves the dev JWKS.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// Where the gateway serves the API's OpenAPI document (no authentication).
pub const OPENAPI_PATH: &str = "/openapi.yaml";

/// The API's OpenAPI 3.1 document (`openapi.yaml` at the repository root), compiled in.
pub const OPENAPI_DOCUMENT: &str = include_str!("../../../openapi.yaml");

/// The enrichment route without its `{personId}` segment.
const ENRICHMENT_PREFIX: &str = "/api/v1/operations/enrichment";

/// The longest request target (path and query) the gateway takes; a longer one gets
/// `414 URI_TOO_LONG` in the envelope, however long (hyper alone would answer a bare `414` past
/// 64 KiB).
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// The most header fields a request may have: hyper's default; one more gets
/// `400 VALIDATION_ERROR` in the envelope (hyper alone: a bare `431`).
pub const MAX_HEADERS: usize = 100;

/// The largest request head (request line and header fields, in bytes); a larger one gets
/// `413 PAYLOAD_TOO_LARGE` in the envelope. Below hyper's own read buffer limit (about
/// 400 KiB), so that hyper never answers a bare `431` for a head [`serve`] let through.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How long a client has to send a whole request head; then the connection is closed without
/// an answer (nothing was asked yet).
pub const HEAD_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client has to send a request body once its head arrived; then the request is
/// answered 400.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What the gateway's routes share.
pub struct Gateway {
    /// Verifies tokens against the dev JWKS.
    pub auth: Authenticator,
    /// The POST and GET use cases.
    pub enrichments: Enrichments,
    /// The people use cases.
    pub people: People,
    /// The credits use cases.
    pub credits: Credits,
    /// The jobs queue.
    pub queue: SqsJobQueue,
    /// The bulk jobs queue, where batch and bulk enrichments send their jobs.
    pub bulk_queue: SqsJobQueue,
    /// The webhook settings use cases.
    pub webhooks: Arc<Webhooks>,
    /// The dev JWKS document.
    pub jwks: String,
}

/// The routes: the enrichment route (any method; the handlers answer 405 themselves), the same
/// path without a personId (the handlers answer 401 or 400), its `/cancel`, the batch, people,
/// credits and webhook settings routes (any method each), the dev JWKS, the OpenAPI document,
/// and the envelope for anything else.
pub fn router(state: Arc<Gateway>) -> Router {
    Router::new()
        .route(
            &format!("{ENRICHMENT_PREFIX}/{{personId}}"),
            any(enrichment),
        )
        .route(ENRICHMENT_PREFIX, any(enrichment_without_id))
        .route(&format!("{ENRICHMENT_PREFIX}/"), any(enrichment_without_id))
        .route(CANCEL_ROUTE, any(cancel))
        .route(BATCH_QUERY_ROUTE, any(batch))
        .route(BATCH_ROUTE, any(batch))
        .route(BULK_ROUTE, any(batch))
        .route(&format!("{CREDITS_PREFIX}/balance"), any(credits))
        .route(&format!("{CREDITS_PREFIX}/history"), any(credits))
        .route(WEBHOOK_SETTINGS_PATH, any(webhook_settings))
        .route(
            &format!("{WEBHOOK_SETTINGS_PATH}/deliveries"),
            any(webhook_settings),
        )
        .route(PEOPLE_PREFIX, any(people))
        .route(&format!("{PEOPLE_PREFIX}/{{*rest}}"), any(people))
        .route(JWKS_PATH, get(jwks))
        .route(OPENAPI_PATH, get(openapi))
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
        return Rejection::uri_too_long().into_response();
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

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/yaml")],
        OPENAPI_DOCUMENT,
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

/// The batch routes, through the batch function's handler.
async fn batch(
    State(state): State<Arc<Gateway>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    match lambda_request(method, &uri, query, &headers, body).await {
        Ok(request) => into_axum(
            handle_batch(request, &state.auth, &state.enrichments, &state.bulk_queue).await,
        ),
        Err(error) => error_response(&error),
    }
}

/// The lambda_http request an API Gateway HTTP API would hand a function for this request; the
/// body is read up to [`MAX_BODY_BYTES`] (and one more byte, to tell a larger one: 413).
async fn lambda_request(
    method: Method,
    uri: &axum::http::Uri,
    query: Option<String>,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<lambda_http::Request, ApiError> {
    let too_large = ApiError::PayloadTooLarge {
        limit: MAX_BODY_BYTES,
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES) {
        return Err(too_large);
    }
    let read = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        axum::body::to_bytes(body, MAX_BODY_BYTES + 1),
    )
    .await;
    let body = match read {
        Ok(Ok(bytes)) => bytes.to_vec(),
        // Without a declared length, the read stops at the limit.
        Ok(Err(_)) if declared.is_none() => return Err(too_large),
        Ok(Err(_)) | Err(_) => {
            return Err(ApiError::invalid(
                "body",
                "the request body was cut short or not sent in time",
            ));
        }
    };
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    http_api_request(method, uri.path(), &query, authorization, body)
}

/// Every people route, through the people function's handler.
async fn people(
    State(state): State<Arc<Gateway>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    match lambda_request(method, &uri, query, &headers, body).await {
        Ok(request) => into_axum(handle_people(request, &state.auth, &state.people).await),
        Err(error) => error_response(&error),
    }
}

/// The cancel route, through the cancel function's handler: the request API Gateway would
/// hand it, with its `personId` path parameter. A segment that does not decode to UTF-8 goes to
/// the handler as received, still encoded: not a UUID either way.
async fn cancel(
    State(state): State<Arc<Gateway>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    person_id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let person_id = match person_id {
        Ok(Path(id)) => id,
        Err(_) => uri
            .path()
            .strip_prefix(ENRICHMENT_PREFIX)
            .and_then(|rest| rest.strip_suffix("/cancel"))
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
    };
    match lambda_request(method, &uri, query, &headers, body).await {
        Ok(request) => {
            let request = lambda_http::RequestExt::with_path_parameters(
                request,
                std::collections::HashMap::from([("personId".to_string(), person_id)]),
            );
            into_axum(handle_cancel(request, &state.auth, &state.enrichments).await)
        }
        Err(error) => error_response(&error),
    }
}

/// The credits routes, through the credits function's handler.
async fn credits(
    State(state): State<Arc<Gateway>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    match lambda_request(method, &uri, query, &headers, body).await {
        Ok(request) => into_axum(handle_credits(request, &state.auth, &state.credits).await),
        Err(error) => error_response(&error),
    }
}

/// The webhook settings routes, through the webhook settings function's handler.
async fn webhook_settings(
    State(state): State<Arc<Gateway>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    match lambda_request(method, &uri, query, &headers, body).await {
        Ok(request) => {
            into_axum(handle_webhook_settings(request, &state.auth, &state.webhooks).await)
        }
        Err(error) => error_response(&error),
    }
}

fn into_axum(response: lambda_http::Response<lambda_http::Body>) -> Response {
    let (parts, body) = response.into_parts();
    let body = match body {
        lambda_http::Body::Empty => axum::body::Body::empty(),
        lambda_http::Body::Text(text) => axum::body::Body::from(text),
        lambda_http::Body::Binary(bytes) => axum::body::Body::from(bytes),
        _ => axum::body::Body::empty(),
    };
    Response::from_parts(parts, body)
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
    into_axum(if is_post {
        handle_post(request, &state.auth, &state.enrichments, &state.queue).await
    } else {
        handle_get(request, &state.auth, &state.enrichments).await
    })
}

/// A request the gateway refuses before routing it: a status and the error envelope
/// (`{"error": {"code", "message"}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `400`, `413` or `414`.
    pub status: StatusCode,
    /// `VALIDATION_ERROR`, `PAYLOAD_TOO_LARGE` or `URI_TOO_LONG`.
    pub code: &'static str,
    /// What is wrong, for the client.
    pub message: String,
}

impl Rejection {
    fn validation(message: impl Into<String>) -> Self {
        Rejection {
            status: StatusCode::BAD_REQUEST,
            code: "VALIDATION_ERROR",
            message: message.into(),
        }
    }

    fn uri_too_long() -> Self {
        Rejection {
            status: StatusCode::URI_TOO_LONG,
            code: "URI_TOO_LONG",
            message: format!("Request URI longer than {MAX_URI_BYTES} bytes"),
        }
    }

    fn head_too_large() -> Self {
        Rejection {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "PAYLOAD_TOO_LARGE",
            message: format!("Request line and headers larger than {MAX_HEAD_BYTES} bytes"),
        }
    }

    /// The envelope, as JSON text.
    pub fn body(&self) -> String {
        json!({"error": {"code": self.code, "message": self.message}}).to_string()
    }

    /// The whole HTTP/1.1 response, closing the connection.
    fn to_http(&self) -> Vec<u8> {
        let body = self.body();
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            body.len(),
        )
        .into_bytes()
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body(),
        )
            .into_response()
    }
}

/// Checks the request head at the start of `buf` (possibly followed by body bytes) as hyper's
/// HTTP/1 server parses it (hyper 1.x, `proto/h1/role.rs`, `Server::parse`): httparse with
/// [`MAX_HEADERS`] fields, the method, the target as an `http::Uri`, and the framing headers
/// (`Content-Length` a number, the same in every field; `Transfer-Encoding` only in HTTP/1.1 and
/// ending with `chunked`). Adds the gateway's own limits: [`MAX_URI_BYTES`] and
/// [`MAX_HEAD_BYTES`].
///
/// Returns whether the head is complete (`false`: more bytes are needed), or the rejection of a
/// head hyper would refuse with an empty answer or that breaks a limit.
pub fn check_head(buf: &[u8]) -> Result<bool, Rejection> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    let parsed = request.parse(buf);
    if request.path.is_some_and(|path| path.len() > MAX_URI_BYTES) {
        return Err(Rejection::uri_too_long());
    }
    let length = match parsed {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => {
            if request.path.is_none() && request_line_target_length(buf) > MAX_URI_BYTES {
                return Err(Rejection::uri_too_long());
            }
            if buf.len() > MAX_HEAD_BYTES {
                return Err(Rejection::head_too_large());
            }
            return Ok(false);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Rejection::validation(format!(
                "Request has more than {MAX_HEADERS} header fields"
            )));
        }
        Err(httparse::Error::Token) if request.method.is_none() => {
            return Err(Rejection::validation("Malformed request method"));
        }
        Err(httparse::Error::Token) => {
            return Err(Rejection::validation(
                "Request target contains a character that is not allowed (a control byte or a space)",
            ));
        }
        Err(httparse::Error::Version) => {
            return Err(Rejection::validation(
                "Malformed or unsupported HTTP version",
            ));
        }
        Err(_) => return Err(Rejection::validation("Malformed header field")),
    };
    if length > MAX_HEAD_BYTES {
        return Err(Rejection::head_too_large());
    }
    let method = request.method.unwrap_or_default();
    if Method::from_bytes(method.as_bytes()).is_err() {
        return Err(Rejection::validation("Malformed request method"));
    }
    if Uri::try_from(request.path.unwrap_or_default()).is_err() {
        return Err(Rejection::validation(
            "Request target is not a valid URI (a character that must be percent-encoded, or bytes that are not UTF-8)",
        ));
    }
    check_framing(request.version == Some(1), request.headers)?;
    Ok(true)
}

/// The length of the request target on a request line still arriving: the bytes after the
/// first space (after any leading empty lines), up to the next space or line end.
fn request_line_target_length(buf: &[u8]) -> usize {
    let line = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .map_or(&[][..], |start| &buf[start..]);
    let line = line.split(|b| *b == b'\n').next().unwrap_or_default();
    line.splitn(3, |b| *b == b' ')
        .nth(1)
        .map_or(0, |target| target.len())
}

/// hyper's framing rules for a request (RFC 9112, section 6).
fn check_framing(is_http_11: bool, headers: &[httparse::Header<'_>]) -> Result<(), Rejection> {
    let mut content_length = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    for field in headers {
        if field.name.eq_ignore_ascii_case("transfer-encoding") {
            if !is_http_11 {
                return Err(Rejection::validation(
                    "Transfer-Encoding is not allowed in HTTP/1.0",
                ));
            }
            transfer_encoding = true;
            // The last coding of this field decides, as in hyper.
            chunked = field
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if field.name.eq_ignore_ascii_case("content-length") && !transfer_encoding {
            let length = parse_content_length(field.value)
                .ok_or_else(|| Rejection::validation("Malformed Content-Length"))?;
            if content_length.is_some_and(|previous| previous != length) {
                return Err(Rejection::validation("Content-Length fields that disagree"));
            }
            if length >= u64::MAX - 1 {
                return Err(Rejection::validation("Content-Length out of range"));
            }
            content_length = Some(length);
        }
    }
    if transfer_encoding && !chunked {
        return Err(Rejection::validation(
            "Transfer-Encoding must end with chunked",
        ));
    }
    Ok(())
}

/// A `Content-Length` value: one or more comma-separated decimal numbers, all equal.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for item in value.split(|b| *b == b',') {
        let digits = item.trim_ascii();
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let parsed = std::str::from_utf8(digits).ok()?.parse::<u64>().ok()?;
        if length.is_some_and(|previous| previous != parsed) {
            return None;
        }
        length = Some(parsed);
    }
    length
}

/// Serves `router` on `listener` until `signal` resolves, then lets the requests in progress
/// finish.
///
/// Each connection carries one request (keep-alive off): its head is read and checked with
/// [`check_head`] first, a rejection is answered with the envelope, and a valid request is
/// served by hyper's HTTP/1 server from the bytes already read. With one request per
/// connection, every request head goes through the check, which hyper offers no hook for.
pub async fn serve<F>(listener: TcpListener, router: Router, signal: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, router.clone(), stopping.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "gateway: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut signal => break,
        }
    }
    drop(listener);
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
}

async fn serve_connection(
    mut stream: TcpStream,
    router: Router,
    mut stopping: watch::Receiver<bool>,
) {
    let head = tokio::select! {
        head = tokio::time::timeout(HEAD_READ_TIMEOUT, read_head(&mut stream)) => head,
        _ = stopping.wait_for(|stop| *stop) => return,
    };
    let buffered = match head {
        Ok(Ok(Ok(buffered))) => buffered,
        Ok(Ok(Err(rejection))) => {
            reject(stream, &rejection).await;
            return;
        }
        // Closed, failed or too slow before a whole head: nothing to answer.
        Ok(Err(_)) | Err(_) => return,
    };
    let service = TowerToHyperService::new(router);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(false).max_headers(MAX_HEADERS);
    let connection = http.serve_connection(
        TokioIo::new(Prefixed {
            prefix: buffered,
            position: 0,
            stream,
        }),
        service,
    );
    tokio::pin!(connection);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "gateway: connection ended with an error");
                }
                return;
            }
            _ = stopping.wait_for(|stop| *stop), if !shutting_down => {
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Reads until `buf` holds a whole request head that passes [`check_head`] (returned with any
/// bytes read after it), or one that does not (its rejection).
async fn read_head(stream: &mut TcpStream) -> io::Result<Result<Vec<u8>, Rejection>> {
    let mut buf = Vec::with_capacity(8 * 1024);
    let mut chunk = [0_u8; 8 * 1024];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..read]);
        match check_head(&buf) {
            Ok(true) => return Ok(Ok(buf)),
            Ok(false) => {}
            Err(rejection) => return Ok(Err(rejection)),
        }
    }
}

/// Answers `rejection` and closes the connection: the write side first, then whatever the
/// client still sends is read and dropped for up to 2 s, so that closing with unread bytes does
/// not reset the connection before the client reads the answer.
async fn reject(mut stream: TcpStream, rejection: &Rejection) {
    if stream.write_all(&rejection.to_http()).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0_u8; 8 * 1024];
    let drain = async {
        while let Ok(read) = stream.read(&mut sink).await {
            if read == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

/// A TCP stream whose first bytes were already read: they are read again first.
struct Prefixed {
    prefix: Vec<u8>,
    position: usize,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.position < this.prefix.len() {
            let rest = &this.prefix[this.position..];
            let count = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..count]);
            this.position += count;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(head: &[u8]) -> Result<bool, &'static str> {
        check_head(head).map_err(|rejection| rejection.code)
    }

    #[test]
    fn heads_are_checked_as_hyper_parses_them() {
        assert_eq!(code(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Ok(true));
        assert_eq!(code(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(false));
        assert_eq!(code(b"GET /a%00b HTTP/1.1\r\n\r\n"), Ok(true));
        for bad in [
            &b"GET /a\0b HTTP/1.1\r\n\r\n"[..],
            b"GET /a\x01 HTTP/1.1\r\n\r\n",
            b"GET /a\x7f HTTP/1.1\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
            b"GET /?q=\"x\" HTTP/1.1\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(
                code(bad),
                Err("VALIDATION_ERROR"),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            code(b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Ok(true)
        );
    }

    #[test]
    fn limits_are_rejected_even_before_the_head_is_complete() {
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_URI_BYTES));
        assert_eq!(code(long.as_bytes()), Err("URI_TOO_LONG"));
        let partial = format!("GET /{}", "a".repeat(MAX_URI_BYTES));
        assert_eq!(code(partial.as_bytes()), Err("URI_TOO_LONG"));
        assert_eq!(code(&partial.as_bytes()[..MAX_URI_BYTES]), Ok(false));
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for n in 0..=MAX_HEADERS {
            many.push_str(&format!("x-{n}: v\r\n"));
        }
        assert_eq!(code(many.as_bytes()), Err("VALIDATION_ERROR"));
        let large = format!(
            "GET / HTTP/1.1\r\nx: {}\r\n\r\n",
            "v".repeat(MAX_HEAD_BYTES)
        );
        assert_eq!(code(large.as_bytes()), Err("PAYLOAD_TOO_LARGE"));
        assert_eq!(
            code(&large.as_bytes()[..MAX_HEAD_BYTES + 1]),
            Err("PAYLOAD_TOO_LARGE")
        );
    }
}
