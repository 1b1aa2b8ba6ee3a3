//! The whole backend on loopback, without an AWS account or Docker: DynamoDB (dynoxide,
//! embedded), SQS (moto's server mode, a child process), the provider simulator, an HTTP
//! gateway that serves the API routes by calling the same handler code as the Lambdas, pollers
//! that feed SQS messages to the worker and to the webhook delivery as the Lambda event source
//! mappings would, and a reader of the table's stream that feeds outbox events to the webhook
//! relay as its DynamoDB stream event source mapping would.
//!
//! `make run` starts it through the `local-stack` binary; the integration tests start a private
//! one per test with [`Stack::start`].

pub mod devkey;
pub mod gateway;
pub mod outbox;
pub mod poller;
pub mod runtime_api;
pub mod simulator;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region, SharedCredentialsProvider};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::QueueAttributeName;
use enrichment::auth::Authenticator;
use enrichment::config::{Config, Vars, http_client};
use enrichment::domain::Job;
use enrichment::domain::{Field, Status};
use enrichment::enrichment::Enrichments;
use enrichment::people::People;
use enrichment::providers::cascade::Cascade;
use enrichment::providers::registry::{self, REGISTRY};
use enrichment::queue::{JobQueue, SqsJobQueue};
use enrichment::store::Store;
use enrichment::webhooks::{DeliveryMessage, DeliveryQueue, WebhookConfig, Webhooks};
use enrichment::worker::Worker;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use uuid::Uuid;

/// Installs the local stack's tracing subscriber on stderr: `RUST_LOG` filter (default `info`),
/// plain text, colours only when stderr is a terminal (never in a file or a pipe). Without
/// `RUST_LOG`, the DynamoDB emulator's warning for each 4xx it answers is left out
/// ([`ExpectedEmulatorErrors`]). The Lambda functions use `lambda_runtime`'s own subscriber
/// instead.
pub fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env().ok();
    let quiet = filter.is_none().then_some(ExpectedEmulatorErrors);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter.unwrap_or_else(|| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .finish()
        .with(quiet)
        .try_init();
}

/// Leaves out dynoxide's `WARN dynoxide::server: error response ... status=400 Bad Request`
/// (dynoxide-rs 3.2.0, `src/server/mod.rs`: every error answer is a warning). A 4xx is the
/// answer the product asks for on every replay (the creating `TransactWriteItems` cancelled on
/// its condition, the old item returned), a cancel race or a claim another worker holds; the
/// code that gets one it did not expect logs it itself. A 5xx is still a warning; `RUST_LOG`
/// (e.g. `RUST_LOG=info`) shows everything again.
pub struct ExpectedEmulatorErrors;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ExpectedEmulatorErrors {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        if event.metadata().target() != "dynoxide::server" {
            return true;
        }
        let mut status = ClientErrorStatus(false);
        event.record(&mut status);
        !status.0
    }
}

/// Whether an event's `status` field is a 4xx status (`400 Bad Request`).
struct ClientErrorStatus(bool);

impl tracing::field::Visit for ClientErrorStatus {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "status" {
            self.0 = format!("{value:?}").starts_with('4');
        }
    }
}

/// The region and credentials the emulators are reached with.
pub const LOCAL_REGION: &str = "us-east-1";
/// The table name of the local stack.
pub const TABLE_NAME: &str = "enrichment-local";
/// The jobs queue name of the local stack.
pub const QUEUE_NAME: &str = "enrichment-jobs-local";
/// The bulk jobs queue name of the local stack (batch and bulk enrichments).
pub const BULK_QUEUE_NAME: &str = "enrichment-bulk-jobs-local";
/// The dead-letter queue name of the local stack.
pub const DLQ_NAME: &str = "enrichment-jobs-dlq-local";
/// The webhook queue name of the local stack: the delivery attempts.
pub const WEBHOOK_QUEUE_NAME: &str = "enrichment-webhooks-local";
/// The webhook queue's dead-letter queue name.
pub const WEBHOOK_DLQ_NAME: &str = "enrichment-webhooks-dlq-local";
/// Messages per invocation of the webhook delivery (its event source mapping's batch size).
pub const WEBHOOK_BATCH_SIZE: i32 = 10;
/// Receives before a job goes to the DLQ, as in `template.yaml`.
pub const MAX_RECEIVE_COUNT: u32 = 5;
/// The `kid` of the local dev signing key.
pub const DEV_KID: &str = "local-dev";

/// What a running stack tells its clients (`enrichctl`), written to `<state>/stack.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StackInfo {
    /// The gateway's base URL (`http://127.0.0.1:3000`), also the tokens' issuer.
    pub gateway_url: String,
    /// The DynamoDB emulator's endpoint.
    pub dynamodb_url: String,
    /// The SQS emulator's endpoint.
    pub sqs_url: String,
    /// The table name.
    pub table_name: String,
    /// The jobs queue URL.
    pub queue_url: String,
    /// The bulk jobs queue URL (batch and bulk enrichments).
    #[serde(default)]
    pub bulk_queue_url: String,
    /// The dead-letter queue URL.
    pub dlq_url: String,
    /// The webhook queue URL (the delivery attempts).
    #[serde(default)]
    pub webhook_queue_url: String,
    /// The webhook queue's dead-letter queue URL.
    #[serde(default)]
    pub webhook_dlq_url: String,
    /// The dev private key (PEM) that `enrichctl token` signs with.
    pub dev_key_path: PathBuf,
    /// The provider simulator's base URL: the worker's `HUNTER_BASE_URL` is `<this>/hunter`,
    /// its `PDL_BASE_URL` `<this>/pdl`.
    #[serde(default)]
    pub simulator_url: String,
}

/// How to start a stack.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the dev key, the DynamoDB file and `stack.json` live (`.local`).
    pub state_dir: PathBuf,
    /// Keep DynamoDB data in `<state>/dynamodb.sqlite` (else in memory).
    pub persist: bool,
    /// The gateway's port (0: any free port).
    pub port: u16,
    /// `ENRICHMENT_MAX_AGE_SECONDS` of the API and the worker. Given as is, not read through
    /// [`Options::vars`]: tests run with a maximum age of a second, below the template's 60.
    pub max_age: Duration,
    /// Run the SQS pollers (`LOCAL_WORKER=off` leaves jobs queued).
    pub local_worker: bool,
    /// How many jobs run at once (`LOCAL_WORKER_CONCURRENCY`): invocations of one message each,
    /// as the event source mapping runs batches of 1 up to the worker's maximum concurrency in
    /// `template.yaml` (default 5).
    pub worker_concurrency: usize,
    /// How many bulk jobs run at once (`LOCAL_BULK_CONCURRENCY`): the invocations on the bulk
    /// queue, as its event source mapping's maximum concurrency in `template.yaml` (default 2),
    /// on top of [`Options::worker_concurrency`].
    pub bulk_concurrency: usize,
    /// The SQS visibility timeout the poller receives with.
    pub visibility_timeout: Duration,
    /// Run the outbox relay, the reader of the table's stream that queues the webhook events
    /// (`LOCAL_OUTBOX_RELAY=off` leaves the ended enrichments' events in the outbox, as a relay
    /// that is down would; the next start with it relays them).
    pub outbox_relay: bool,
    /// Keep the table's stream (`LOCAL_TABLE_STREAM`, on). The embedded emulator keeps every
    /// stream record and numbers each new one by reading them all (no index), so a write costs
    /// more the more writes came before (0.4 ms after 1,000, 13 ms after 50,000): a stack that
    /// takes many thousands of writes and needs no webhooks (the Schemathesis check, a
    /// benchmark) runs faster without it. Off, there is no stream and no relay: webhook events
    /// stay in the outbox.
    pub table_stream: bool,
    /// How many invocations on the webhook queue deliver at once (`LOCAL_WEBHOOK_CONCURRENCY`),
    /// as its event source mapping's maximum concurrency in `template.yaml` (default 5), each
    /// of [`WEBHOOK_BATCH_SIZE`] messages, delivered concurrently; 0: none.
    pub webhook_concurrency: usize,
    /// The Python of moto's virtual environment (`.local/venv/bin/python`), which runs moto's
    /// server through `moto_sqs.py` (its SQS's per-message costs made constant).
    pub moto_python: PathBuf,
    /// The known-people fixture the provider simulator answers from.
    pub fixture: PathBuf,
    /// The simulator's per-provider latency, misses, errors and rate limits (JSON, see
    /// [`simulator::SimulatorConfig`]); none: every provider answers from the fixture at once.
    pub simulator_config: Option<PathBuf>,
    /// Where the functions' settings (README, "Configuration") are read, through the same
    /// reader and rules as in AWS: credit costs, cache lifetimes, the org rate limit, the
    /// clock leeway, the worker's cascade. The stack's own values are given over them: the
    /// table, the queue's receive count, the gateway's dev JWKS as the only key source and
    /// the gateway as issuer, the simulator as every provider's API with a dummy key, and
    /// [`Options::max_age`]. The webhooks' `WEBHOOK_RETRY_SCHEDULE` is read from them too;
    /// `http://127.0.0.1:<port>/…` endpoints are always accepted
    /// (`WEBHOOK_ALLOW_LOOPBACK_HTTP`). Default: the process environment.
    pub vars: Vars<'static>,
}

impl Options {
    /// Defaults for the repository at `root`: state in `root/.local`, gateway on 3000, maximum
    /// age [`enrichment::budget::DEFAULT_MAX_AGE`] (800 s), worker and outbox relay on, five
    /// webhook pollers, settings from the process environment.
    pub fn for_repo(root: &Path) -> Self {
        Self {
            state_dir: root.join(".local"),
            persist: true,
            port: 3000,
            max_age: enrichment::budget::DEFAULT_MAX_AGE,
            local_worker: true,
            worker_concurrency: 5,
            bulk_concurrency: 2,
            visibility_timeout: Duration::from_secs(60),
            outbox_relay: true,
            table_stream: true,
            webhook_concurrency: 5,
            moto_python: root.join(".local/venv/bin/python"),
            fixture: root.join("tools/local-stack/fixtures/known-people.json"),
            simulator_config: None,
            vars: Vars::env(),
        }
    }
}

/// A running stack. Dropping it kills moto; call [`Stack::shutdown`] to stop the rest cleanly.
///
/// If moto exits on its own, the stack stops (every server and the poller) and
/// [`Stack::failure`] tells why.
pub struct Stack {
    /// Endpoints and names.
    pub info: StackInfo,
    /// The table, through a client of the emulator.
    pub store: Store,
    /// An SQS client of the emulator.
    pub sqs: aws_sdk_sqs::Client,
    /// The provider simulator's base URL (`http://127.0.0.1:N`).
    pub simulator_url: String,
    /// The configuration the API and the worker run with.
    pub config: Config,
    /// How many `pending` enrichments found in the table at start-up were queued again (the SQS
    /// emulator keeps its messages in memory: a restart loses them).
    pub requeued: usize,
    /// How many webhook deliveries with an attempt still to come were queued again at start-up,
    /// for the same reason.
    pub requeued_deliveries: usize,
    /// The local worker's invocations and handler time (none without a local worker).
    pub worker_usage: Arc<poller::WorkerUsage>,
    /// The webhook delivery's invocations and handler time.
    pub webhook_usage: Arc<poller::WorkerUsage>,
    /// The local worker (none without one), for [`Stack::slot_waits`].
    worker: Option<Arc<Worker>>,
    shutdown: watch::Sender<bool>,
    failure: watch::Receiver<Option<String>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The AWS SDK configuration of a local emulator: its endpoint, [`LOCAL_REGION`], dummy
/// credentials, and a 30 s bound on each call. Every service client of the local stack and its
/// tests derives from it. Not the functions' own 3 s budget (`enrichment::budget`): moto
/// answers its first requests slowly on a busy machine, and the functions' budgets are tested
/// on their real bootstraps (`tests/faults.rs`).
pub fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(30))
                .build(),
        )
        .region(Region::new(LOCAL_REGION))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "local", "local", None, None, "local",
        )))
        .endpoint_url(endpoint)
        .build()
}

/// A DynamoDB client config for a local endpoint (see [`sdk_config`]), open to more settings
/// such as interceptors.
pub fn dynamodb_config(endpoint: &str) -> aws_sdk_dynamodb::config::Builder {
    aws_sdk_dynamodb::config::Builder::from(&sdk_config(endpoint))
}

/// An SQS client config for a local endpoint (see [`sdk_config`]).
pub fn sqs_config(endpoint: &str) -> aws_sdk_sqs::config::Builder {
    aws_sdk_sqs::config::Builder::from(&sdk_config(endpoint))
}

async fn loopback_listener(port: u16) -> Result<(TcpListener, SocketAddr), String> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    Ok((listener, addr))
}

async fn free_port() -> Result<u16, String> {
    Ok(loopback_listener(0).await?.1.port())
}

/// moto's server with its SQS's per-message costs made constant (see the file's docs).
const MOTO_SQS: &str = include_str!("moto_sqs.py");

/// Starts moto's server ([`MOTO_SQS`], run by `python`) on a free loopback port and waits
/// until it answers.
async fn start_moto(python: &Path) -> Result<(Child, String), String> {
    let port = free_port().await?;
    let child = Command::new(python)
        .args(["-c", MOTO_SQS, "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // A process group of its own: a Ctrl-C in the terminal, or a signal to `make run`'s
        // group, reaches the stack alone, which then stops moto itself (rather than racing it
        // and reporting moto's exit as a failure).
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {} (run `make setup`): {e}", python.display()))?;
    let url = format!("http://127.0.0.1:{port}");
    let http = http_client();
    for _ in 0..1200 {
        if http.get(format!("{url}/moto-api/")).send().await.is_ok() {
            return Ok((child, url));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("moto server did not start within 60 s".into())
}

/// The local stack's queues.
#[derive(Debug, Clone)]
pub struct Queues {
    /// The jobs queue ([`QUEUE_NAME`]).
    pub jobs: String,
    /// The bulk jobs queue ([`BULK_QUEUE_NAME`]).
    pub bulk: String,
    /// Their DLQ ([`DLQ_NAME`]).
    pub dlq: String,
    /// The webhook queue ([`WEBHOOK_QUEUE_NAME`]).
    pub webhooks: String,
    /// Its DLQ ([`WEBHOOK_DLQ_NAME`]).
    pub webhook_dlq: String,
}

/// Creates the jobs queue, the bulk jobs queue and their DLQ with the redrive policy of
/// `template.yaml`, and the webhook queue with its own DLQ and the same policy.
pub async fn create_queues(
    sqs: &aws_sdk_sqs::Client,
    visibility: Duration,
) -> Result<Queues, String> {
    let dlq = create_queue(sqs, DLQ_NAME, None).await?;
    let webhook_dlq = create_queue(sqs, WEBHOOK_DLQ_NAME, None).await?;
    let redrive = |arn: String| {
        let policy =
            serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": MAX_RECEIVE_COUNT});
        Some((visibility, policy.to_string()))
    };
    let jobs_redrive = redrive(queue_arn(sqs, &dlq).await?);
    let jobs = create_queue(sqs, QUEUE_NAME, jobs_redrive.clone()).await?;
    let bulk = create_queue(sqs, BULK_QUEUE_NAME, jobs_redrive).await?;
    let webhook_redrive = redrive(queue_arn(sqs, &webhook_dlq).await?);
    let webhooks = create_queue(sqs, WEBHOOK_QUEUE_NAME, webhook_redrive).await?;
    Ok(Queues {
        jobs,
        bulk,
        dlq,
        webhooks,
        webhook_dlq,
    })
}

/// Creates the queue `name`, with a visibility timeout and a redrive policy (JSON) when given;
/// returns its URL.
async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    source: Option<(Duration, String)>,
) -> Result<String, String> {
    let mut request = sqs.create_queue().queue_name(name);
    if let Some((visibility, redrive)) = source {
        request = request
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                visibility.as_secs().to_string(),
            )
            .attributes(QueueAttributeName::RedrivePolicy, redrive);
    }
    let output = request.send().await.map_err(|e| {
        format!(
            "CreateQueue {name}: {}",
            aws_sdk_sqs::error::DisplayErrorContext(&e)
        )
    })?;
    Ok(output.queue_url.unwrap_or_default())
}

/// The ARN of the queue at `url`.
async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<String, String> {
    let output = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| {
            format!(
                "GetQueueAttributes: {}",
                aws_sdk_sqs::error::DisplayErrorContext(&e)
            )
        })?;
    Ok(output
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .unwrap_or_default())
}

/// The worker's cascade in the local stack, configured by `vars` exactly as in AWS
/// (`EMAIL_PROVIDERS`, `PHONE_PROVIDERS`, `PROVIDER_TIMEOUT_SECONDS`...; see
/// [`registry::CascadeSettings`]), except that every provider's base URL is the simulator's
/// (`{simulator}/hunter`, `{simulator}/pdl`...) and its API key a dummy, but for the providers
/// [`off_simulator`] names, which keep their own.
///
/// Errors: the text of the [`enrichment::config::ConfigError`] of a bad setting, or of
/// [`off_simulator`].
pub fn simulator_cascade(simulator_url: &str, vars: &Vars<'static>) -> Result<Cascade, String> {
    let own = off_simulator(vars)?;
    let simulator = REGISTRY
        .iter()
        .filter(|entry| !own.contains(&entry.name))
        .flat_map(|entry| {
            [
                (
                    entry.base_url_var,
                    format!("{simulator_url}/{}", entry.name),
                ),
                (entry.key_var, "local".to_string()),
            ]
        });
    for name in &own {
        tracing::info!(
            provider = name,
            "provider off the simulator: its own base URL and key"
        );
    }
    registry::cascade(http_client(), &Vars::from_pairs(simulator).or(vars.clone()))
        .map_err(|e| e.to_string())
}

/// The providers whose `<NAME>_BASE_URL` and `<NAME>_API_KEY` are both set in `vars`: the local
/// stack sends them to that address (a recorded fake, or the real service) with that key, one
/// provider at a time, the others staying on the simulator.
///
/// Errors: a provider with only one of the two set (which one is missing is named).
pub fn off_simulator(vars: &Vars<'static>) -> Result<Vec<&'static str>, String> {
    let mut own = Vec::new();
    for entry in &REGISTRY {
        match (vars.string(entry.base_url_var), vars.string(entry.key_var)) {
            (Some(_), Some(_)) => own.push(entry.name),
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                return Err(format!(
                    "{} off the simulator needs both {} and {}",
                    entry.name, entry.base_url_var, entry.key_var
                ));
            }
        }
    }
    Ok(own)
}

/// The configuration of the stack's API and worker: [`Config::from_vars`] over `vars`, with
/// the stack's table and its queue's receive count given, and its maximum age.
///
/// Errors: the text of the [`enrichment::config::ConfigError`] of a bad setting.
pub fn local_config(vars: &Vars<'static>, max_age: Duration) -> Result<Config, String> {
    let local = Vars::from_pairs([
        ("TABLE_NAME", TABLE_NAME.to_string()),
        ("WORKER_MAX_RECEIVES", MAX_RECEIVE_COUNT.to_string()),
    ]);
    let mut config = Config::from_vars(&local.or(vars.clone())).map_err(|e| e.to_string())?;
    config.max_age = max_age;
    Ok(config)
}

/// The webhook settings of the stack's relay, delivery and settings routes:
/// [`WebhookConfig::from_vars`] over `vars` (`WEBHOOK_RETRY_SCHEDULE` as deployed), with
/// `http://127.0.0.1:<port>/…` endpoints accepted (`WEBHOOK_ALLOW_LOOPBACK_HTTP`, which only the
/// local stack turns on) and `queue_url` as the webhook queue.
///
/// Errors: the text of the [`enrichment::config::ConfigError`] of a bad setting.
pub fn local_webhook_config(
    vars: &Vars<'static>,
    queue_url: Option<&str>,
) -> Result<WebhookConfig, String> {
    let mut config = WebhookConfig::from_vars(vars).map_err(|e| e.to_string())?;
    config.allow_loopback_http = true;
    config.queue_url = queue_url.map(str::to_string);
    Ok(config)
}

/// Turns the table's stream of new images on (a persisted table created before the outbox, see
/// [`Store::create_table`]) or, with `enabled` false, off ([`Options::table_stream`]), unless
/// it already is.
async fn set_stream(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    enabled: bool,
) -> Result<(), String> {
    use aws_sdk_dynamodb::types::{StreamSpecification, StreamViewType};
    let described = dynamodb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| {
            format!(
                "DescribeTable: {}",
                aws_sdk_dynamodb::error::DisplayErrorContext(&e)
            )
        })?;
    let current = described
        .table()
        .and_then(|t| t.stream_specification())
        .is_some_and(|spec| spec.stream_enabled());
    if current == enabled {
        return Ok(());
    }
    let mut spec = StreamSpecification::builder().stream_enabled(enabled);
    if enabled {
        spec = spec.stream_view_type(StreamViewType::NewImage);
    }
    let spec = spec.build().map_err(|e| e.to_string())?;
    dynamodb
        .update_table()
        .table_name(table)
        .stream_specification(spec)
        .send()
        .await
        .map_err(|e| {
            format!(
                "UpdateTable (stream): {}",
                aws_sdk_dynamodb::error::DisplayErrorContext(&e)
            )
        })?;
    if enabled {
        tracing::info!(table, "stream of new images turned on for the outbox relay");
    } else {
        tracing::info!(table, "no table stream: webhook events stay in the outbox");
    }
    Ok(())
}

/// The stack's authenticator: [`Authenticator::from_vars`] over `vars`, with the gateway's dev
/// JWKS as the only key source, the gateway as the issuer, and no `azp` check.
///
/// Errors: the text of the [`enrichment::config::ConfigError`] of a bad setting.
pub fn local_authenticator(
    vars: &Vars<'static>,
    gateway_url: &str,
) -> Result<Authenticator, String> {
    let local = Vars::from_pairs([
        ("AUTH_JWT_KEY", String::new()),
        (
            "AUTH_JWKS_URL",
            format!("{gateway_url}{}", gateway::JWKS_PATH),
        ),
        ("AUTH_ISSUER", gateway_url.to_string()),
        ("AUTH_AUTHORIZED_PARTIES", String::new()),
    ]);
    Authenticator::from_vars(&local.or(vars.clone()), http_client()).map_err(|e| e.to_string())
}

/// Waits for moto to exit. On its own, it is a failure: reported on `failure`, which stops the
/// stack. On `stop`, moto is killed.
async fn watch_moto(
    mut moto: Child,
    failure: watch::Sender<Option<String>>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::select! {
        status = moto.wait() => {
            let reason = match status {
                Ok(status) => format!("the SQS emulator (moto) exited unexpectedly ({status})"),
                Err(e) => format!("lost the SQS emulator (moto): {e}"),
            };
            tracing::error!(reason = %reason, "stopping the local stack");
            let _ = failure.send(Some(reason));
        }
        _ = stop => {
            let _ = moto.kill().await;
        }
    }
}

/// The Scan page size of [`requeue_pending`] at start-up.
const REQUEUE_PAGE_SIZE: i32 = 500;

/// Sends a job for every `pending` enrichment of `table` (a paginated Scan of the `ENRICHMENT#`
/// items, `page_size` items read per page) and returns how many were sent. A job whose
/// enrichment is already running or queued is harmless: the worker's claim drops duplicates.
/// An item without the job's attributes is skipped with a warning.
///
/// Local stack only: in AWS the queue is durable, and nothing is lost on a restart.
pub async fn requeue_pending(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    queue: &dyn JobQueue,
    page_size: i32,
) -> Result<usize, String> {
    let items = scan_all(
        dynamodb,
        table,
        page_size,
        "the pending enrichments",
        |scan| {
            scan.filter_expression("begins_with(sk, :prefix) AND #status = :pending")
                .projection_expression("id, orgId, entityId, #field")
                .expression_attribute_names("#status", "status")
                .expression_attribute_names("#field", "field")
                .expression_attribute_values(":prefix", AttributeValue::S("ENRICHMENT#".into()))
                .expression_attribute_values(
                    ":pending",
                    AttributeValue::S(Status::Pending.as_str().into()),
                )
        },
    )
    .await?;
    let mut sent = 0;
    for item in &items {
        let Some(job) = pending_job(item) else {
            tracing::warn!(item = ?item, "a pending enrichment without its job's attributes");
            continue;
        };
        queue
            .enqueue(&job)
            .await
            .map_err(|e| format!("re-queueing enrichment {}: {e}", job.enrichment_id))?;
        sent += 1;
    }
    Ok(sent)
}

/// Queues the next attempt of every webhook delivery of `table` that has one still to come (a
/// paginated Scan of the `DELIVERY#` items not `done`, `page_size` items read per page), due
/// when the schedule of `config` puts it after the last attempt (the first attempt: now), and
/// returns how many were sent. A delivery whose message is still queued somewhere gets a
/// duplicate, which finds its attempt made and is dropped.
///
/// Local stack only: in AWS the queue is durable, and nothing is lost on a restart.
pub async fn requeue_deliveries(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    queue: &DeliveryQueue,
    config: &WebhookConfig,
    page_size: i32,
) -> Result<usize, String> {
    let now = chrono::Utc::now();
    let items = scan_all(
        dynamodb,
        table,
        page_size,
        "the webhook deliveries",
        |scan| {
            scan.filter_expression("begins_with(sk, :prefix) AND #done = :false")
                .expression_attribute_names("#done", "done")
                .projection_expression("orgId, eventId, createdAt, attempts, lastAttemptAt")
                .expression_attribute_values(":prefix", AttributeValue::S("DELIVERY#".into()))
                .expression_attribute_values(":false", AttributeValue::Bool(false))
        },
    )
    .await?;
    let mut sent = 0;
    for item in &items {
        let Some(message) = next_attempt(item, config, now) else {
            tracing::warn!(item = ?item, "a webhook delivery without its message's attributes");
            continue;
        };
        queue
            .send(&message, now)
            .await
            .map_err(|e| format!("re-queueing webhook event {}: {e}", message.event_id))?;
        sent += 1;
    }
    Ok(sent)
}

/// Every item of `table` the `filter` keeps, read consistently `page_size` per page of a
/// paginated `Scan` (a local stack's table: small); `what` names them in the error.
async fn scan_all(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    page_size: i32,
    what: &str,
    filter: impl Fn(
        aws_sdk_dynamodb::operation::scan::builders::ScanFluentBuilder,
    ) -> aws_sdk_dynamodb::operation::scan::builders::ScanFluentBuilder,
) -> Result<Vec<HashMap<String, AttributeValue>>, String> {
    let mut items = Vec::new();
    let mut start_key = None;
    loop {
        let page = filter(dynamodb.scan().table_name(table))
            .consistent_read(true)
            .limit(page_size)
            .set_exclusive_start_key(start_key)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "Scan of {what}: {}",
                    aws_sdk_dynamodb::error::DisplayErrorContext(&e)
                )
            })?;
        items.extend(page.items().iter().cloned());
        start_key = page.last_evaluated_key;
        if start_key.as_ref().is_none_or(|key| key.is_empty()) {
            return Ok(items);
        }
    }
}

/// The message of a delivery item's next attempt (`orgId`, `eventId`, `createdAt`, `attempts`,
/// `lastAttemptAt`).
fn next_attempt(
    item: &HashMap<String, AttributeValue>,
    config: &WebhookConfig,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<DeliveryMessage> {
    let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok());
    let attempts: u32 = item.get("attempts")?.as_n().ok()?.parse().ok()?;
    let last = text("lastAttemptAt")
        .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
        .map(|at| at.timestamp());
    let due_at = match (last, config.retry_after(attempts)) {
        (Some(last), Some(wait)) => last + wait.as_secs() as i64,
        _ => now.timestamp(),
    };
    Some(DeliveryMessage {
        org_id: text("orgId")?.clone(),
        event_id: Uuid::parse_str(text("eventId")?).ok()?,
        created_at: text("createdAt")?.clone(),
        attempt: attempts + 1,
        due_at,
    })
}

/// The job of an enrichment item (`id`, `orgId`, `entityId`, `field`).
fn pending_job(item: &HashMap<String, AttributeValue>) -> Option<Job> {
    let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok());
    Some(Job {
        enrichment_id: Uuid::parse_str(text("id")?).ok()?,
        org_id: text("orgId")?.clone(),
        person_id: Uuid::parse_str(text("entityId")?).ok()?,
        field: text("field")?.parse::<Field>().ok()?,
        cache: Default::default(),
        bulk: false,
    })
}

/// The stack described by `<state_dir>/stack.json`, if that file exists and its gateway
/// answers (a stack that stopped without removing the file does not).
pub async fn running_stack(state_dir: &Path) -> Option<StackInfo> {
    let text = std::fs::read_to_string(state_dir.join("stack.json")).ok()?;
    let info: StackInfo = serde_json::from_str(&text).ok()?;
    gateway_answers(&info.gateway_url).await.then_some(info)
}

/// Whether a local stack's gateway answers at `gateway_url` (its JWKS, within 2 s).
pub async fn gateway_answers(gateway_url: &str) -> bool {
    let probe = http_client()
        .get(format!("{gateway_url}{}", gateway::JWKS_PATH))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    probe.is_ok_and(|response| response.status().is_success())
}

impl Stack {
    /// Starts everything on loopback and returns once the gateway accepts requests.
    pub async fn start(options: Options) -> Result<Stack, String> {
        std::fs::create_dir_all(&options.state_dir)
            .map_err(|e| format!("cannot create {}: {e}", options.state_dir.display()))?;
        let dev_key = devkey::ensure(&options.state_dir)?;
        // `shutdown` is Stack::shutdown's (or dropping the stack); `failure` is moto's watcher's.
        // Either turns `shutdown_rx`, which every server and the poller watch, to true.
        let (shutdown, shutdown_requested) = watch::channel(false);
        let (failure_tx, failure) = watch::channel(None::<String>);
        let (halt, shutdown_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let mut tasks = Vec::new();
        let mut requested = shutdown_requested;
        let mut failed = failure.clone();
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                _ = requested.wait_for(|stop| *stop) => {}
                _ = failed.wait_for(|reason| reason.is_some()) => {}
            }
            let _ = halt.send(true);
        }));

        // What can fail on the user's input fails first, before any server or child process.
        let people = simulator::load_fixture(&options.fixture)?;
        let simulator_config = match &options.simulator_config {
            Some(path) => simulator::load_config(path)?,
            None => simulator::SimulatorConfig::default(),
        };
        let (gateway_listener, gateway_addr) = loopback_listener(options.port).await?;
        let (simulator_listener, simulator_addr) = loopback_listener(0).await?;
        let gateway_url = format!("http://{gateway_addr}");
        let simulator_url = format!("http://{simulator_addr}");
        let config = local_config(&options.vars, options.max_age)?;
        let auth = local_authenticator(&options.vars, &gateway_url)?;
        let cascade = simulator_cascade(&simulator_url, &options.vars)?;
        let mut webhook_config = local_webhook_config(&options.vars, None)?;

        // DynamoDB: dynoxide, embedded.
        let db = if options.persist {
            let path = options.state_dir.join("dynamodb.sqlite");
            dynoxide::Database::new(&path.to_string_lossy())
                .map_err(|e| format!("DynamoDB file: {e}"))?
        } else {
            dynoxide::Database::memory().map_err(|e| format!("DynamoDB: {e}"))?
        };
        // The outbox relay reads the table's stream from the same database.
        let stream_db = db.clone();
        let (listener, addr) = loopback_listener(0).await?;
        let dynamodb_url = format!("http://{addr}");
        let signal = stopped(shutdown_rx.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = dynoxide::server::serve_with_shutdown(listener, db, signal).await {
                tracing::error!(error = %e, "DynamoDB emulator stopped");
            }
        }));
        let dynamodb = aws_sdk_dynamodb::Client::from_conf(dynamodb_config(&dynamodb_url).build());
        Store::new(dynamodb.clone(), TABLE_NAME)
            .create_table()
            .await
            .map_err(|e| e.to_string())?;
        set_stream(&dynamodb, TABLE_NAME, options.table_stream).await?;

        // SQS: moto.
        let (moto, sqs_url) = start_moto(&options.moto_python).await?;
        tasks.push(tokio::spawn(watch_moto(
            moto,
            failure_tx,
            stopped(shutdown_rx.clone()),
        )));
        let sqs = aws_sdk_sqs::Client::from_conf(sqs_config(&sqs_url).build());
        let queues = create_queues(&sqs, options.visibility_timeout).await?;
        let (queue_url, bulk_queue_url, dlq_url) = (queues.jobs, queues.bulk, queues.dlq);
        let (webhook_queue_url, webhook_dlq_url) = (queues.webhooks, queues.webhook_dlq);
        webhook_config.queue_url = Some(webhook_queue_url.clone());
        let delivery_queue = DeliveryQueue::new(sqs.clone(), webhook_queue_url.clone());

        // moto's queues live in memory: queue again what a previous run left pending.
        let requeued = requeue_pending(
            &dynamodb,
            TABLE_NAME,
            &SqsJobQueue::new(sqs.clone(), queue_url.clone()),
            REQUEUE_PAGE_SIZE,
        )
        .await?;
        let requeued_deliveries = requeue_deliveries(
            &dynamodb,
            TABLE_NAME,
            &delivery_queue,
            &webhook_config,
            REQUEUE_PAGE_SIZE,
        )
        .await?;

        // Provider simulator.
        let listener = simulator_listener;
        let signal = stopped(shutdown_rx.clone());
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, simulator::router_with(people, simulator_config))
                .with_graceful_shutdown(signal)
                .await;
        }));

        // API gateway.
        let listener = gateway_listener;
        let store = Store::new(dynamodb, TABLE_NAME);
        let webhooks = Arc::new(Webhooks::new(
            store.clone(),
            webhook_config,
            Some(delivery_queue),
        ));
        let state = Arc::new(gateway::Gateway {
            auth,
            enrichments: Enrichments::new(store.clone(), config.clone()),
            people: People::new(store.clone()),
            credits: enrichment::credits::Credits::new(store.clone()),
            queue: SqsJobQueue::new(sqs.clone(), queue_url.clone())
                .with_timeout_check(config.max_age),
            bulk_queue: SqsJobQueue::new(sqs.clone(), bulk_queue_url.clone())
                .with_timeout_check(config.max_age),
            webhooks: webhooks.clone(),
            jwks: devkey::jwks(&dev_key)?,
        });
        let signal = stopped(shutdown_rx.clone());
        tasks.push(tokio::spawn(async move {
            gateway::serve(listener, gateway::router(state), signal).await;
        }));

        // SQS event source for the worker.
        let worker_usage = Arc::new(poller::WorkerUsage::default());
        let mut local_worker = None;
        if options.local_worker {
            let worker = Worker::new(store.clone(), cascade, config.clone())
                .with_queue(
                    SqsJobQueue::new(sqs.clone(), queue_url.clone())
                        .with_retry_base(Duration::from_secs(2)),
                )
                .with_bulk_queue(
                    SqsJobQueue::new(sqs.clone(), bulk_queue_url.clone())
                        .with_retry_base(Duration::from_secs(2)),
                );
            let worker = Arc::new(worker);
            local_worker = Some(worker.clone());
            // One event source mapping per queue, each with its own concurrency, as in
            // template.yaml: a bulk's backlog never stands in front of single jobs.
            for (url, concurrency) in [
                (&queue_url, options.worker_concurrency),
                (&bulk_queue_url, options.bulk_concurrency),
            ] {
                let poller = poller::Poller {
                    sqs: sqs.clone(),
                    queue_url: url.clone(),
                    visibility_timeout: options.visibility_timeout,
                    batch_size: 1,
                    concurrency,
                    handler: poller::Handler::Worker(worker.clone()),
                    usage: worker_usage.clone(),
                };
                tasks.push(tokio::spawn(poller.run(shutdown_rx.clone())));
            }
        }

        // The webhooks: the relay on the table's stream, the delivery on the webhook queue.
        if options.outbox_relay && options.table_stream {
            let relay = outbox::OutboxRelay {
                db: stream_db,
                table: TABLE_NAME.into(),
                webhooks: webhooks.clone(),
                checkpoint: options
                    .persist
                    .then(|| options.state_dir.join(outbox::CHECKPOINT_FILE)),
            };
            tasks.push(tokio::spawn(relay.run(shutdown_rx.clone())));
        }
        let webhook_usage = Arc::new(poller::WorkerUsage::default());
        let delivery = poller::Poller {
            sqs: sqs.clone(),
            queue_url: webhook_queue_url.clone(),
            visibility_timeout: options.visibility_timeout,
            batch_size: WEBHOOK_BATCH_SIZE,
            concurrency: options.webhook_concurrency,
            handler: poller::Handler::WebhookDelivery(webhooks),
            usage: webhook_usage.clone(),
        };
        if options.webhook_concurrency > 0 {
            tasks.push(tokio::spawn(delivery.run(shutdown_rx.clone())));
        }

        let info = StackInfo {
            gateway_url,
            dynamodb_url,
            sqs_url,
            table_name: TABLE_NAME.into(),
            queue_url,
            bulk_queue_url,
            dlq_url,
            webhook_queue_url,
            webhook_dlq_url,
            dev_key_path: dev_key,
            simulator_url: simulator_url.clone(),
        };
        Ok(Stack {
            info,
            store,
            sqs,
            simulator_url,
            config,
            requeued,
            requeued_deliveries,
            worker_usage,
            webhook_usage,
            worker: local_worker,
            shutdown,
            failure,
            tasks,
        })
    }

    /// Waits until a part of the stack dies on its own (today: moto exits) and returns why;
    /// the rest of the stack is stopping by then. Never returns while the stack is healthy.
    pub async fn failure(&self) -> String {
        let mut failure = self.failure.clone();
        match failure.wait_for(|reason| reason.is_some()).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }

    /// Time the local worker's jobs waited in the process for a provider call slot
    /// ([`Worker::slot_waits`]); zero without a local worker.
    pub fn slot_waits(&self) -> Duration {
        self.worker
            .as_ref()
            .map_or(Duration::ZERO, |worker| worker.slot_waits())
    }

    /// Signs a dev token for `user_id` in `org_id`, valid for `expires_in`.
    pub fn token(
        &self,
        user_id: &str,
        org_id: &str,
        expires_in: Duration,
    ) -> Result<String, String> {
        devkey::sign(
            &self.info.dev_key_path,
            &self.info.gateway_url,
            user_id,
            org_id,
            expires_in,
        )
    }

    /// Stops the servers and the poller, and waits for them.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}
