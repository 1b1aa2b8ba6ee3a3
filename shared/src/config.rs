//! Configuration read once per process from the environment, and the AWS clients built from it.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

use crate::budget;
use crate::domain::Field;

/// Settings shared by the three functions. Every value has a default except the table name.
#[derive(Debug, Clone)]
pub struct Config {
    /// `TABLE_NAME`: the single DynamoDB table (see `template.yaml`).
    pub table_name: String,
    /// `ENRICHMENT_MAX_AGE_SECONDS` (default 800, the spec's maximum execution time): a `pending`
    /// enrichment older than this is timed out (spec, "Timeout Handling").
    pub max_age: Duration,
    /// `CREDIT_COST_EMAIL` (default 5): credits an `enrichment_email` costs.
    pub cost_email: i64,
    /// `CREDIT_COST_PHONE` (default 20): credits an `enrichment_phone` costs.
    pub cost_phone: i64,
    /// `GLOBAL_CACHE_TTL_DAYS` (default 90): how long found data is served from the global cache.
    pub cache_ttl: Duration,
    /// `GLOBAL_CACHE_MISS_TTL_DAYS` (default 7; 0: never): how long "no provider knows this
    /// person" is served from the global cache (an answer from every provider asked).
    pub cache_miss_ttl: Duration,
    /// Added to a provider call's budget when the worker renews its claim and global cache lease
    /// before the call ([`crate::budget::LEASE_MARGIN`]; not read from the environment): a dead
    /// worker's job is resumed that long after its provider call's budget ran out.
    pub lease_margin: Duration,
    /// `ORG_ENRICHMENTS_PER_MINUTE` (default 600; 0: no limit): new enrichments one org may
    /// create per minute before POST answers `429 RATE_LIMITED` (see [`crate::store::RateLimit`]).
    pub org_enrichments_per_minute: u32,
    /// `WORKER_MAX_RECEIVES` (default 5, the jobs queue's `maxReceiveCount` in `template.yaml`):
    /// on a job's last receive, a worker that still fails marks the enrichment `failed` and
    /// refunds it before the message goes to the DLQ.
    pub max_receives: u32,
}

/// A missing or unparsable setting.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn number(name: &str, default: i64) -> Result<i64, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|n: &i64| *n >= 0)
            .ok_or_else(|| {
                ConfigError(format!("{name} must be a non-negative integer, got {v:?}"))
            }),
    }
}

impl Config {
    /// Reads the settings documented on each field.
    ///
    /// Errors: `TABLE_NAME` unset, or a number that does not parse.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            table_name: var("TABLE_NAME")
                .ok_or_else(|| ConfigError("TABLE_NAME is not set".into()))?,
            max_age: Duration::from_secs(number(
                "ENRICHMENT_MAX_AGE_SECONDS",
                budget::DEFAULT_MAX_AGE.as_secs() as i64,
            )? as u64),
            cost_email: number("CREDIT_COST_EMAIL", 5)?,
            cost_phone: number("CREDIT_COST_PHONE", 20)?,
            cache_ttl: Duration::from_secs(number("GLOBAL_CACHE_TTL_DAYS", 90)? as u64 * 86_400),
            cache_miss_ttl: Duration::from_secs(
                number("GLOBAL_CACHE_MISS_TTL_DAYS", 7)? as u64 * 86_400,
            ),
            lease_margin: budget::LEASE_MARGIN,
            org_enrichments_per_minute: u32::try_from(number("ORG_ENRICHMENTS_PER_MINUTE", 600)?)
                .map_err(|_| {
                ConfigError("ORG_ENRICHMENTS_PER_MINUTE is too large".into())
            })?,
            max_receives: u32::try_from(number("WORKER_MAX_RECEIVES", 5)?)
                .map_err(|_| ConfigError("WORKER_MAX_RECEIVES is too large".into()))?,
        })
    }

    /// Credits an enrichment of `field` costs.
    pub fn cost(&self, field: Field) -> i64 {
        match field {
            Field::Emails => self.cost_email,
            Field::Phones => self.cost_phone,
        }
    }
}

/// Loads the AWS SDK configuration the standard way (region, credentials and
/// `AWS_ENDPOINT_URL*` from the environment), with the timeouts of [`sdk_timeouts`]: the SDK
/// sets none by default, and a server that never answers would otherwise hold the call until
/// the Lambda dies.
pub async fn aws_sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(sdk_timeouts())
        .load()
        .await
}

/// The AWS SDK timeouts of every function: connect, attempt and operation timeouts from
/// [`crate::budget`], so that any one AWS call ends well before the function's timeout.
pub fn sdk_timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(budget::SDK_CONNECT_TIMEOUT)
        .operation_attempt_timeout(budget::SDK_ATTEMPT_TIMEOUT)
        .operation_timeout(budget::SDK_OPERATION_TIMEOUT)
        .build()
}

/// The HTTP client for providers and JWKS: rustls, bounded connect time. Per-call timeouts are
/// set by the caller.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}
