//! Metrics as CloudWatch embedded metric format (EMF) lines: one JSON object per event, alone on
//! its own line of stdout. Lambda sends a function's stdout to CloudWatch Logs, which extracts
//! the metrics of every log event that follows the format (AWS docs, "Using the embedded metric
//! format with Lambda"; "Specification: Embedded metric format").
//!
//! A line is the root object the specification describes: `_aws` holds `Timestamp` (Unix epoch
//! milliseconds) and `CloudWatchMetrics`, one directive with the `Namespace` ([`NAMESPACE`]),
//! `Dimensions` (one dimension set of one dimension) and `Metrics` (`Name`, `Unit`); the
//! dimension's value and each metric's value are members of the root object, named after them.
//!
//! The families (README, "Metrics"):
//!
//! - per provider call of the cascade, dimension `Provider`: `Calls`, `Hits`, `Misses`,
//!   `Errors`, `RateLimited` (Count, 0 or 1) and `Latency` (Milliseconds);
//! - per field, dimension `Field`: `EnrichmentsStarted` and `CreditsConsumed` when enrichments
//!   are created and charged; `Found`, `NotFound`, `Failed`, `TimedOut`, `Cancelled` and
//!   `CreditsRefunded` when one ends; `CacheHits` when the global cache answered a job.
//!
//! Each is written after the write it counts succeeded, so that a conditional write that lost
//! its race counts nothing. The line is written with one `write_all` on the locked stdout, as
//! the `tracing` JSON subscriber writes each of its lines: the two never share a line.

use std::io::Write;

use serde_json::{Map, Value, json};

use crate::domain::{Field, Status};

/// The CloudWatch namespace of every metric.
pub const NAMESPACE: &str = "Enrichment";

/// A metric's unit, as the specification's `Unit` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// `Count`.
    Count,
    /// `Milliseconds`.
    Milliseconds,
}

impl Unit {
    /// The specification's name of the unit.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
        }
    }
}

/// How one provider call of the cascade ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderOutcome {
    /// The provider found values that normalize.
    Hit,
    /// The provider answered without a usable value ("no match", or only values that do not
    /// normalize).
    Miss,
    /// The provider failed; `rate_limited` for its rate-limit signal (a 429 for most).
    Error {
        /// The failure was [`crate::providers::ProviderError::RateLimited`].
        rate_limited: bool,
    },
}

/// The EMF line (without its newline) of `metrics` under the single dimension
/// `(name, value)`, at `timestamp_ms` (Unix epoch milliseconds). A metric name given twice
/// keeps its last value.
pub fn line(dimension: (&str, &str), metrics: &[(&str, Unit, u64)], timestamp_ms: i64) -> String {
    let definitions: Vec<Value> = metrics
        .iter()
        .map(|(name, unit, _)| json!({"Name": name, "Unit": unit.as_str()}))
        .collect();
    let mut root = Map::new();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [[dimension.0]],
                "Metrics": definitions,
            }],
        }),
    );
    root.insert(dimension.0.into(), Value::from(dimension.1));
    for (name, _, value) in metrics {
        root.insert((*name).into(), Value::from(*value));
    }
    Value::Object(root).to_string()
}

/// Writes [`line`] at the current time, with its newline, to stdout. A write that fails is
/// ignored: a metric never fails the work it counts.
fn emit(dimension: (&str, &str), metrics: &[(&str, Unit, u64)]) {
    let mut text = line(dimension, metrics, chrono::Utc::now().timestamp_millis());
    text.push('\n');
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// One provider call of the cascade that ended with `outcome` after `latency_ms`.
pub fn provider_call(provider: &str, outcome: ProviderOutcome, latency_ms: u64) {
    let (hit, miss, error, rate_limited) = match outcome {
        ProviderOutcome::Hit => (1, 0, 0, 0),
        ProviderOutcome::Miss => (0, 1, 0, 0),
        ProviderOutcome::Error { rate_limited } => (0, 0, 1, u64::from(rate_limited)),
    };
    emit(
        ("Provider", provider),
        &[
            ("Calls", Unit::Count, 1),
            ("Hits", Unit::Count, hit),
            ("Misses", Unit::Count, miss),
            ("Errors", Unit::Count, error),
            ("RateLimited", Unit::Count, rate_limited),
            ("Latency", Unit::Milliseconds, latency_ms),
        ],
    );
}

/// `count` enrichments of `field` created, each charged `cost` credits.
pub fn started(field: Field, count: usize, cost: i64) {
    if count == 0 {
        return;
    }
    let count = u64::try_from(count).unwrap_or(u64::MAX);
    let cost = u64::try_from(cost).unwrap_or(0);
    emit(
        ("Field", field.as_str()),
        &[
            ("EnrichmentsStarted", Unit::Count, count),
            ("CreditsConsumed", Unit::Count, count.saturating_mul(cost)),
        ],
    );
}

/// An enrichment of `field` ended as `status` (`finished` with `data_found`, `failed`,
/// `timeout`, `cancelled`), `refunded` credits given back (0: none).
pub fn ended(field: Field, status: Status, data_found: Option<bool>, refunded: i64) {
    let name = match (status, data_found) {
        (Status::Finished, Some(true)) => "Found",
        (Status::Finished, _) => "NotFound",
        (Status::Failed, _) => "Failed",
        (Status::Timeout, _) => "TimedOut",
        (Status::Cancelled, _) => "Cancelled",
        (Status::Pending, _) => return,
    };
    let mut metrics = vec![(name, Unit::Count, 1)];
    if refunded > 0 {
        metrics.push(("CreditsRefunded", Unit::Count, refunded.unsigned_abs()));
    }
    emit(("Field", field.as_str()), &metrics);
}

/// A job of `field` answered from the global cache, without a provider call.
pub fn cache_hit(field: Field) {
    emit(("Field", field.as_str()), &[("CacheHits", Unit::Count, 1)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_emf_document_with_its_dimension_and_values_at_the_root() {
        let text = line(
            ("Provider", "hunter"),
            &[
                ("Calls", Unit::Count, 1),
                ("Latency", Unit::Milliseconds, 42),
            ],
            1_764_676_800_000,
        );
        assert!(!text.contains('\n'), "{text}");
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            json!({
                "_aws": {
                    "Timestamp": 1_764_676_800_000_i64,
                    "CloudWatchMetrics": [{
                        "Namespace": "Enrichment",
                        "Dimensions": [["Provider"]],
                        "Metrics": [
                            {"Name": "Calls", "Unit": "Count"},
                            {"Name": "Latency", "Unit": "Milliseconds"},
                        ],
                    }],
                },
                "Provider": "hunter",
                "Calls": 1,
                "Latency": 42,
            })
        );
    }

    #[test]
    fn a_dimension_value_is_escaped_as_json() {
        let text = line(("Provider", "a\"b\nc"), &[("Calls", Unit::Count, 1)], 0);
        assert!(!text.contains('\n'), "{text}");
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["Provider"], "a\"b\nc");
    }
}
