//! A Lambda Runtime API emulator on loopback, and [`FunctionProcess`], which runs a function
//! binary of the workspace against it: the real bootstraps (`target/debug/trigger`, `status`,
//! `worker`) get their events one at a time, under a deadline, as in the Lambda service, and a
//! process that overruns its timeout is killed, as Lambda does.
//!
//! The paths, headers and status codes follow the AWS Lambda runtime API reference of the
//! Lambda developer guide ("Using the Lambda runtime API for custom runtimes",
//! <https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html>), API version
//! `2018-06-01`, as the `lambda_runtime` crate (1.5) calls them:
//!
//! - `GET /2018-06-01/runtime/invocation/next`: a long poll; answers the next queued event with
//!   `Lambda-Runtime-Aws-Request-Id`, `Lambda-Runtime-Deadline-Ms` (Unix epoch milliseconds:
//!   the hand-out time plus the function's timeout), `Lambda-Runtime-Invoked-Function-Arn` and
//!   `Lambda-Runtime-Trace-Id`. (`lambda_runtime` panics without the first two headers.)
//! - `POST /2018-06-01/runtime/invocation/{AwsRequestId}/response`: the result; `202`, or `400`
//!   (`InvalidRequestID`) for an id that is not in flight, `413` past 6 MB.
//! - `POST /2018-06-01/runtime/invocation/{AwsRequestId}/error`: an invocation error
//!   (`{"errorType", "errorMessage"}`, header `Lambda-Runtime-Function-Error-Type`); `202` or
//!   `400` as above.
//! - `POST /2018-06-01/runtime/init/error`: an init error; `202`.
//!
//! Not emulated: SnapStart (`/runtime/restore/*`), response streaming as a stream (a streamed
//! body is collected whole), the optional `Lambda-Runtime-Client-Context` and
//! `Lambda-Runtime-Cognito-Identity` headers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::{OnceCell, mpsc, oneshot, watch};
use tokio::time::Instant;
use uuid::Uuid;

/// The path prefix of the runtime API version the emulator serves.
pub const API_PREFIX: &str = "/2018-06-01/runtime";

/// The largest response or error body a function may send: 6 MB, Lambda's quota for a
/// synchronous invocation's response payload ("Lambda quotas", developer guide).
pub const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;

/// How long a runtime has to ask for an event (its init phase): 10 s, Lambda's init limit for
/// on-demand functions ("Lambda execution environment lifecycle", developer guide).
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The memory size (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, MB) [`FunctionProcess`] declares: the
/// functions' `MemorySize` in `template.yaml`.
pub const MEMORY_SIZE_MB: u32 = 128;

/// How long [`function_binary`] lets `cargo build` run: 20 minutes (a cold debug build of the
/// workspace on a small machine).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// An error a runtime posted: an invocation's (`/invocation/{id}/error`) or its init's
/// (`/init/error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeError {
    /// The `Lambda-Runtime-Function-Error-Type` header, if sent (`lambda_runtime` sends
    /// `unhandled` for invocation errors).
    pub error_type: Option<String>,
    /// The body as sent: `{"errorType": ..., "errorMessage": ...}` from `lambda_runtime`.
    pub body: Vec<u8>,
}

impl RuntimeError {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The runtime posted a response: its body as sent (JSON for a buffered response; for
    /// `lambda_http`, the API Gateway response `{"statusCode", "headers", "body", ...}`).
    Response(Vec<u8>),
    /// The runtime posted an invocation error.
    Error(RuntimeError),
    /// Nothing came back before the deadline (hand-out time plus the timeout).
    TimedOut,
    /// No runtime asked for the event within [`INIT_TIMEOUT`]: none running, stuck in its init,
    /// or dead.
    NotPickedUp,
    /// The runtime posted an init error while the event waited for it.
    InitError(RuntimeError),
    /// The function's process exited while the event was pending or in flight
    /// ([`FunctionProcess::invoke`] only); `None` if its status could not be read.
    Exited(Option<ExitStatus>),
}

/// The result of one invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The `Lambda-Runtime-Aws-Request-Id` the event was handed out with.
    pub request_id: String,
    /// How it ended.
    pub outcome: Outcome,
    /// From the hand-out of the event (`/next` answered) to the outcome; zero if the event was
    /// never handed out.
    pub elapsed: Duration,
}

impl Invocation {
    /// The response body as JSON, if the runtime posted a JSON response.
    pub fn response_json(&self) -> Option<Value> {
        match &self.outcome {
            Outcome::Response(body) => serde_json::from_slice(body).ok(),
            _ => None,
        }
    }

    /// The invocation error, if the runtime posted one.
    pub fn error(&self) -> Option<&RuntimeError> {
        match &self.outcome {
            Outcome::Error(error) => Some(error),
            _ => None,
        }
    }
}

/// An event waiting for a runtime's `/next`.
struct Queued {
    request_id: String,
    payload: Bytes,
    timeout: Duration,
    /// Told the hand-out instant; closed when the invoker gave up waiting.
    handed: oneshot::Sender<Instant>,
    answer: oneshot::Sender<Outcome>,
}

struct ApiState {
    function_arn: String,
    queue: mpsc::UnboundedSender<Queued>,
    next: tokio::sync::Mutex<mpsc::UnboundedReceiver<Queued>>,
    /// Invocations handed out and not answered, by request id.
    in_flight: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    /// Every init error posted, in order.
    init_errors: watch::Sender<Vec<RuntimeError>>,
    /// How many `/next` requests arrived.
    polls: watch::Sender<u64>,
}

impl ApiState {
    fn take_in_flight(&self, request_id: &str) -> Option<oneshot::Sender<Outcome>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(request_id)
    }
}

/// A Lambda Runtime API on `127.0.0.1` (a free port) for one function; the server stops when
/// this is dropped.
pub struct RuntimeApi {
    address: SocketAddr,
    state: Arc<ApiState>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl RuntimeApi {
    /// Starts the API for the function `function_name` (its ARN,
    /// `arn:aws:lambda:us-east-1:123456789012:function:<name>`, goes in
    /// `Lambda-Runtime-Invoked-Function-Arn`).
    ///
    /// Errors: no loopback port can be bound.
    pub async fn start(function_name: &str) -> Result<RuntimeApi, String> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        let (queue, next) = mpsc::unbounded_channel();
        let state = Arc::new(ApiState {
            function_arn: format!(
                "arn:aws:lambda:{}:123456789012:function:{function_name}",
                crate::LOCAL_REGION
            ),
            queue,
            next: tokio::sync::Mutex::new(next),
            in_flight: Mutex::new(HashMap::new()),
            init_errors: watch::Sender::new(Vec::new()),
            polls: watch::Sender::new(0),
        });
        let router = Router::new()
            .route(&format!("{API_PREFIX}/invocation/next"), get(next_event))
            .route(
                &format!("{API_PREFIX}/invocation/{{request_id}}/response"),
                post(invocation_response),
            )
            .route(
                &format!("{API_PREFIX}/invocation/{{request_id}}/error"),
                post(invocation_error),
            )
            .route(&format!("{API_PREFIX}/init/error"), post(init_error))
            .fallback(unknown_path)
            // Bodies are measured against MAX_RESPONSE_BYTES in the handlers, so that an
            // oversized response still ends its invocation.
            .layer(DefaultBodyLimit::disable())
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "the Lambda Runtime API emulator stopped");
            }
        });
        Ok(RuntimeApi {
            address,
            state,
            server,
        })
    }

    /// The API's address, `127.0.0.1:PORT`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The value of `AWS_LAMBDA_RUNTIME_API` for a runtime: `127.0.0.1:PORT` (no scheme).
    pub fn endpoint(&self) -> String {
        self.address.to_string()
    }

    /// The ARN the events are handed out with.
    pub fn function_arn(&self) -> &str {
        &self.state.function_arn
    }

    /// The init errors posted so far, in order.
    pub fn init_errors(&self) -> Vec<RuntimeError> {
        self.state.init_errors.borrow().clone()
    }

    /// How many `/next` requests have arrived.
    pub fn polls(&self) -> u64 {
        *self.state.polls.borrow()
    }

    /// Waits until a runtime asks for an event (`/next`), at most `limit`; whether one did.
    pub async fn wait_for_poll(&self, limit: Duration) -> bool {
        let mut polls = self.state.polls.subscribe();
        tokio::time::timeout(limit, polls.wait_for(|count| *count > 0))
            .await
            .is_ok_and(|seen| seen.is_ok())
    }

    /// Invokes the function with `event` (serialized as JSON) and a timeout of `timeout`: the
    /// event is queued for the next `/next`, its deadline is the hand-out time plus `timeout`,
    /// and the outcome is what the runtime posted by then, [`Outcome::TimedOut`] after it, or
    /// [`Outcome::NotPickedUp`] if no runtime asked for it within [`INIT_TIMEOUT`].
    ///
    /// On a time-out the invocation is forgotten (a late answer gets `400`); the process is left
    /// running: [`FunctionProcess::invoke`] kills it, as Lambda does.
    pub async fn invoke(&self, event: &Value, timeout: Duration) -> Invocation {
        self.invoke_raw(event.to_string().into_bytes(), timeout)
            .await
    }

    /// [`RuntimeApi::invoke`] with a payload sent as is (it need not be JSON).
    pub async fn invoke_raw(&self, payload: Vec<u8>, timeout: Duration) -> Invocation {
        self.invoke_with_id(Uuid::new_v4().to_string(), payload.into(), timeout)
            .await
    }

    async fn invoke_with_id(
        &self,
        request_id: String,
        payload: Bytes,
        timeout: Duration,
    ) -> Invocation {
        let ended = |outcome, elapsed| Invocation {
            request_id: request_id.clone(),
            outcome,
            elapsed,
        };
        let (handed, mut handed_out) = oneshot::channel();
        let (answer, answered) = oneshot::channel();
        let mut init_errors = self.state.init_errors.subscribe();
        let known_init_errors = init_errors.borrow_and_update().len();
        let queued = Queued {
            request_id: request_id.clone(),
            payload,
            timeout,
            handed,
            answer,
        };
        if self.state.queue.send(queued).is_err() {
            return ended(Outcome::NotPickedUp, Duration::ZERO);
        }
        let handed_at = tokio::select! {
            at = &mut handed_out => match at {
                Ok(at) => at,
                Err(_) => return ended(Outcome::NotPickedUp, Duration::ZERO),
            },
            () = tokio::time::sleep(INIT_TIMEOUT) => {
                return ended(Outcome::NotPickedUp, Duration::ZERO);
            }
            errors = init_errors.wait_for(|errors| errors.len() > known_init_errors) => {
                let error = errors.ok().and_then(|errors| errors.last().cloned());
                return match error {
                    Some(error) => ended(Outcome::InitError(error), Duration::ZERO),
                    None => ended(Outcome::NotPickedUp, Duration::ZERO),
                };
            }
        };
        match tokio::time::timeout_at(handed_at + timeout, answered).await {
            Ok(Ok(outcome)) => ended(outcome, handed_at.elapsed()),
            // The sender is only dropped with the server's state: nothing can answer any more.
            Ok(Err(_)) => ended(Outcome::TimedOut, handed_at.elapsed()),
            Err(_) => {
                self.state.take_in_flight(&request_id);
                ended(Outcome::TimedOut, handed_at.elapsed())
            }
        }
    }
}

fn epoch_millis(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// An X-Ray trace header as Lambda passes it: `Root=1-<8 hex epoch s>-<24 hex>;Parent=<16
/// hex>;Sampled=0`.
fn trace_id() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let random = Uuid::new_v4().simple().to_string();
    format!(
        "Root=1-{seconds:08x}-{};Parent={};Sampled=0",
        &random[..24],
        &random[16..]
    )
}

fn api_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"errorType": error_type, "errorMessage": message}).to_string(),
    )
        .into_response()
}

fn accepted() -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"status": "OK"}).to_string(),
    )
        .into_response()
}

async fn next_event(State(state): State<Arc<ApiState>>) -> Response {
    state.polls.send_modify(|count| *count += 1);
    let mut queue = state.next.lock().await;
    loop {
        let Some(queued) = queue.recv().await else {
            return api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                "the invocation queue is closed",
            );
        };
        if queued.handed.is_closed() {
            // Its invoker stopped waiting.
            continue;
        }
        let deadline = epoch_millis(SystemTime::now() + queued.timeout);
        state
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(queued.request_id.clone(), queued.answer);
        if queued.handed.send(Instant::now()).is_err() {
            state.take_in_flight(&queued.request_id);
            continue;
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in [
            ("lambda-runtime-aws-request-id", queued.request_id.clone()),
            ("lambda-runtime-deadline-ms", deadline.to_string()),
            (
                "lambda-runtime-invoked-function-arn",
                state.function_arn.clone(),
            ),
            ("lambda-runtime-trace-id", trace_id()),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        return (StatusCode::OK, headers, queued.payload).into_response();
    }
}

fn too_large(state: &ApiState, request_id: &str, body: &Bytes) -> Option<Response> {
    if body.len() <= MAX_RESPONSE_BYTES {
        return None;
    }
    let message = format!(
        "Response payload size ({} bytes) exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes).",
        body.len()
    );
    if let Some(answer) = state.take_in_flight(request_id) {
        let _ = answer.send(Outcome::Error(RuntimeError {
            error_type: Some("Function.ResponseSizeTooLarge".into()),
            body: json!({"errorType": "Function.ResponseSizeTooLarge", "errorMessage": message})
                .to_string()
                .into_bytes(),
        }));
    }
    Some(api_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
        &message,
    ))
}

fn invalid_request_id(request_id: &str) -> Response {
    api_error(
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
        &format!("no invocation {request_id} is in flight"),
    )
}

async fn invocation_response(
    State(state): State<Arc<ApiState>>,
    UrlPath(request_id): UrlPath<String>,
    body: Bytes,
) -> Response {
    if let Some(rejection) = too_large(&state, &request_id, &body) {
        return rejection;
    }
    match state.take_in_flight(&request_id) {
        Some(answer) => {
            let _ = answer.send(Outcome::Response(body.to_vec()));
            accepted()
        }
        None => invalid_request_id(&request_id),
    }
}

fn posted_error(headers: &HeaderMap, body: &Bytes) -> RuntimeError {
    RuntimeError {
        error_type: headers
            .get("lambda-runtime-function-error-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: body.to_vec(),
    }
}

async fn invocation_error(
    State(state): State<Arc<ApiState>>,
    UrlPath(request_id): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(rejection) = too_large(&state, &request_id, &body) {
        return rejection;
    }
    match state.take_in_flight(&request_id) {
        Some(answer) => {
            let _ = answer.send(Outcome::Error(posted_error(&headers, &body)));
            accepted()
        }
        None => invalid_request_id(&request_id),
    }
}

async fn init_error(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let error = posted_error(&headers, &body);
    state.init_errors.send_modify(|errors| errors.push(error));
    accepted()
}

async fn unknown_path() -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "InvalidRequest",
        "not a path of the Lambda Runtime API 2018-06-01",
    )
}

/// The workspace root (`/.../main`), from this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace root when relative)
/// or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// The debug binary of the workspace package `name` (`<target>/debug/<name>`), built first with
/// `cargo build -q --workspace --bins` (the `CARGO` of the running test, else `cargo`), once per process
/// and package: cargo rebuilds it if it is missing or older than its sources, and does nothing
/// otherwise.
///
/// Errors: the build fails or takes longer than [`BUILD_TIMEOUT`] (with cargo's output), or no
/// binary is there afterwards.
pub async fn function_binary(name: &str) -> Result<PathBuf, String> {
    type Builds = Mutex<HashMap<String, Arc<OnceCell<Result<PathBuf, String>>>>>;
    static BUILDS: OnceLock<Builds> = OnceLock::new();
    let cell = BUILDS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(name.to_string())
        .or_default()
        .clone();
    cell.get_or_init(|| build(name)).await.clone()
}

async fn build(name: &str) -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // The whole workspace's binaries, as `make test` builds them before the tests: building one
    // package alone resolves other features for the shared dependencies and rebuilds them all.
    let run = Command::new(&cargo)
        .args(["build", "-q", "--workspace", "--bins"])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(BUILD_TIMEOUT, run)
        .await
        .map_err(|_| {
            format!("`cargo build --workspace --bins` took longer than {BUILD_TIMEOUT:?}")
        })?
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if !output.status.success() {
        return Err(format!(
            "`cargo build --workspace --bins` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let binary = target_dir().join("debug").join(name);
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(format!("no binary at {} after the build", binary.display()))
    }
}

/// A function binary running against its own [`RuntimeApi`], as in a Lambda execution
/// environment. Its stdout and stderr go to a log file ([`FunctionProcess::logs`]); it is killed
/// when this is dropped.
pub struct FunctionProcess {
    name: String,
    api: RuntimeApi,
    child: Child,
    log_path: PathBuf,
}

impl FunctionProcess {
    /// Builds the workspace binary `name` if needed ([`function_binary`]) and starts it as the
    /// function `name`; see [`FunctionProcess::start_binary`].
    pub async fn start(name: &str, env: &[(&str, &str)]) -> Result<FunctionProcess, String> {
        let binary = function_binary(name).await?;
        Self::start_binary(&binary, name, env).await
    }

    /// Starts `binary` as the function `function_name` with an empty environment except for
    /// Lambda's reserved variables (`AWS_LAMBDA_RUNTIME_API` = its API,
    /// `AWS_LAMBDA_FUNCTION_NAME`, `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` = [`MEMORY_SIZE_MB`],
    /// `AWS_LAMBDA_FUNCTION_VERSION` = `$LATEST`, `AWS_LAMBDA_LOG_STREAM_NAME`,
    /// `AWS_LAMBDA_LOG_GROUP_NAME`, `AWS_LAMBDA_LOG_FORMAT` = `JSON` as Lambda sets it for the
    /// template's `LoggingConfig: LogFormat: JSON`, `TZ`, `LANG`, `PATH`) and `env`, which comes
    /// last and wins.
    /// Returns once the runtime asks for its first event.
    ///
    /// Errors: the process cannot start, exits, or does not ask for an event within
    /// [`INIT_TIMEOUT`] (then it is killed); the message holds its output.
    pub async fn start_binary(
        binary: &Path,
        function_name: &str,
        env: &[(&str, &str)],
    ) -> Result<FunctionProcess, String> {
        let api = RuntimeApi::start(function_name).await?;
        let log_path = std::env::temp_dir().join(format!(
            "lambda-{function_name}-{}.log",
            Uuid::new_v4().simple()
        ));
        let stdout = std::fs::File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let stderr = stdout
            .try_clone()
            .map_err(|e| format!("cannot share {}: {e}", log_path.display()))?;
        let today = chrono::Utc::now().format("%Y/%m/%d");
        let log_stream = format!("{today}/[$LATEST]{}", Uuid::new_v4().simple());
        let child = Command::new(binary)
            .env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", api.endpoint())
            .env("AWS_LAMBDA_FUNCTION_NAME", function_name)
            .env(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                MEMORY_SIZE_MB.to_string(),
            )
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", log_stream)
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{function_name}"),
            )
            .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
            .env("TZ", ":UTC")
            .env("LANG", "en_US.UTF-8")
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut function = FunctionProcess {
            name: function_name.to_string(),
            api,
            child,
            log_path,
        };
        let started = tokio::select! {
            polled = function.api.wait_for_poll(INIT_TIMEOUT) => {
                if polled { Ok(()) } else { Err(format!("did not ask for an event within {INIT_TIMEOUT:?}")) }
            }
            status = function.child.wait() => Err(match status {
                Ok(status) => format!("exited during its init ({status})"),
                Err(e) => format!("cannot be waited for: {e}"),
            }),
        };
        match started {
            Ok(()) => Ok(function),
            Err(reason) => {
                function.kill().await;
                Err(format!(
                    "{} {reason}; its output:\n{}",
                    function.name,
                    function.logs()
                ))
            }
        }
    }

    /// Invokes the function ([`RuntimeApi::invoke`]). If it times out, the process is killed,
    /// as Lambda ends an execution environment at its function's timeout; if the process exits
    /// meanwhile, the outcome is [`Outcome::Exited`].
    pub async fn invoke(&mut self, event: &Value, timeout: Duration) -> Invocation {
        self.invoke_raw(event.to_string().into_bytes(), timeout)
            .await
    }

    /// [`FunctionProcess::invoke`] with a payload sent as is (it need not be JSON).
    pub async fn invoke_raw(&mut self, payload: Vec<u8>, timeout: Duration) -> Invocation {
        let request_id = Uuid::new_v4().to_string();
        let started = Instant::now();
        let invocation = tokio::select! {
            invocation = self.api.invoke_with_id(request_id.clone(), payload.into(), timeout) => invocation,
            status = self.child.wait() => Invocation {
                request_id,
                outcome: Outcome::Exited(status.ok()),
                elapsed: started.elapsed(),
            },
        };
        if invocation.outcome == Outcome::TimedOut {
            self.kill().await;
        }
        invocation
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process's peak resident memory so far, in KiB (`VmHWM` of `/proc/<pid>/status`,
    /// Linux): what Lambda holds against the function's memory size. `None` once it exited.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// The process's exit status, if it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills the process (SIGKILL) and waits for it, at most 5 s.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }

    /// The function's Runtime API.
    pub fn api(&self) -> &RuntimeApi {
        &self.api
    }

    /// The file that holds the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// What the process wrote to stdout and stderr so far (lossy UTF-8; empty if unreadable).
    pub fn logs(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime loop as `lambda_runtime` runs it: `/next`, then `answer` for the event
    /// (`echo`: the event as the response; `error`: an invocation error; else no answer).
    async fn fake_runtime(endpoint: String, answer: &'static str) {
        let http = reqwest::Client::new();
        let base = format!("http://{endpoint}/2018-06-01/runtime/invocation");
        loop {
            let Ok(next) = http.get(format!("{base}/next")).send().await else {
                return;
            };
            let header = |name: &str| {
                next.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            let id = header("lambda-runtime-aws-request-id");
            let deadline: u128 = header("lambda-runtime-deadline-ms").parse().unwrap();
            assert!(deadline > epoch_millis(SystemTime::now()));
            assert!(header("lambda-runtime-invoked-function-arn").ends_with(":function:f"));
            assert!(header("lambda-runtime-trace-id").starts_with("Root=1-"));
            let event = next.bytes().await.unwrap();
            let posted = match answer {
                "echo" => http.post(format!("{base}/{id}/response")).body(event),
                "error" => http
                    .post(format!("{base}/{id}/error"))
                    .header("lambda-runtime-function-error-type", "unhandled")
                    .body(r#"{"errorType":"E","errorMessage":"m"}"#),
                _ => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
            };
            assert_eq!(posted.send().await.unwrap().status(), 202);
        }
    }

    #[tokio::test]
    async fn responses_errors_and_timeouts() {
        let test = async {
            let api = RuntimeApi::start("f").await.unwrap();
            let runtime = tokio::spawn(fake_runtime(api.endpoint(), "echo"));
            for n in 0..3 {
                let event = json!({"n": n});
                let invocation = api.invoke(&event, Duration::from_secs(5)).await;
                assert_eq!(invocation.response_json(), Some(event));
            }
            runtime.abort();

            let api = RuntimeApi::start("f").await.unwrap();
            let runtime = tokio::spawn(fake_runtime(api.endpoint(), "error"));
            let invocation = api.invoke(&json!({}), Duration::from_secs(5)).await;
            let error = invocation.error().unwrap();
            assert_eq!(error.error_type.as_deref(), Some("unhandled"));
            assert_eq!(error.json().unwrap()["errorType"], "E");
            runtime.abort();

            let api = RuntimeApi::start("f").await.unwrap();
            let runtime = tokio::spawn(fake_runtime(api.endpoint(), "hang"));
            let invocation = api.invoke(&json!({}), Duration::from_millis(300)).await;
            assert_eq!(invocation.outcome, Outcome::TimedOut);
            assert!(invocation.elapsed >= Duration::from_millis(300));
            runtime.abort();
            // A late answer is refused.
            let late = reqwest::Client::new()
                .post(format!(
                    "http://{}/2018-06-01/runtime/invocation/{}/response",
                    api.endpoint(),
                    invocation.request_id
                ))
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(late.status(), 400);
            let body: Value = late.json().await.unwrap();
            assert_eq!(body["errorType"], "InvalidRequestID");
        };
        tokio::time::timeout(Duration::from_secs(30), test)
            .await
            .expect("bounded");
    }
}
