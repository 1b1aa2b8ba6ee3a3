//! Configuration: one reader of settings ([`Vars`]) with one rule set and one error type
//! ([`ConfigError`]), the settings it reads, and the AWS clients built from them.
//!
//! Every variable the functions read is documented once, on the field that holds it:
//! [`Config`] (every function), [`AuthSettings`] (the API functions), [`QueueSettings`]
//! (trigger, batch, worker) here, and [`CascadeSettings`](crate::providers::registry::CascadeSettings)
//! (worker) next to the provider adapters. README's "Configuration" table is written from these
//! doc comments. Each reader is called once at start-up: a bad value stops the function with a
//! [`ConfigError`] naming the variable, the value and what is allowed; nothing falls back to a
//! default silently.

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

use crate::budget;
use crate::domain::Field;
use crate::store::MAX_BALANCE;

/// Seconds in a day, for the `*_DAYS` settings.
const DAY: u64 = 86_400;

/// Where settings are read from: the process environment ([`Vars::env`]), a fixed set of
/// values ([`Vars::from_pairs`]), any lookup ([`Vars::from_fn`]), or one source over another
/// ([`Vars::or`]).
///
/// A source answers `None` for an unset variable and `Some(value)` for a set one, blank or
/// not. The typed accessors share one rule set:
///
/// - a value is trimmed, and a blank one (empty or only whitespace) counts as unset: the
///   default applies. The one exception is [`Vars::list`], where a set but blank list is empty
///   (`EMAIL_PROVIDERS=` means "no provider", as a blank template parameter does);
/// - a number is whole (except [`Vars::positive_seconds`]) and must lie in its allowed range;
/// - anything else is a [`ConfigError::Invalid`] naming the variable, its value and what is
///   allowed, e.g. `AUTH_CLOCK_LEEWAY_SECONDS="abc": expected whole seconds from 0 to 300`.
#[derive(Clone)]
pub struct Vars<'a> {
    lookup: Arc<Lookup<'a>>,
}

/// A source of [`Vars`]: `None` for an unset variable.
type Lookup<'a> = dyn Fn(&str) -> Option<String> + Send + Sync + 'a;

impl std::fmt::Debug for Vars<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vars").finish_non_exhaustive()
    }
}

impl Vars<'static> {
    /// The process environment. A value that is not UTF-8 is read lossily, so that it fails
    /// its accessor's rule rather than passing for unset.
    pub fn env() -> Self {
        Self::from_fn(|name| {
            std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
        })
    }

    /// Fixed values: `(name, value)` pairs; a name not among them is unset.
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        let map: std::collections::HashMap<String, String> = pairs
            .into_iter()
            .map(|(name, value)| (name.into(), value.into()))
            .collect();
        Self::from_fn(move |name| map.get(name).cloned())
    }
}

impl<'a> Vars<'a> {
    /// The values `lookup` gives (`None`: unset).
    pub fn from_fn(lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'a) -> Self {
        Self {
            lookup: Arc::new(lookup),
        }
    }

    /// These values over `fallback`: a variable this source sets (even to a blank value) is
    /// read here, any other from `fallback`.
    pub fn or(self, fallback: Vars<'a>) -> Vars<'a> {
        Self::from_fn(move |name| (self.lookup)(name).or_else(|| (fallback.lookup)(name)))
    }

    /// The value of `name` as the source gives it, untrimmed; `None` when unset.
    pub fn raw(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
    }

    /// The trimmed value of `name`; `None` when unset or blank.
    pub fn string(&self, name: &'static str) -> Option<String> {
        self.raw(name)
            .map(|value| value.trim().to_string())
            .filter(|value| !value.is_empty())
    }

    /// The trimmed value of `name`.
    ///
    /// Errors: [`ConfigError::Missing`] when it is unset or blank.
    pub fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.string(name).ok_or(ConfigError::Missing { var: name })
    }

    /// The comma-separated items of `name`, each trimmed, blank items dropped; `default` when
    /// `name` is unset. A set but blank value is an empty list.
    pub fn list(&self, name: &'static str, default: &str) -> Vec<String> {
        let value = self.raw(name).unwrap_or_else(|| default.to_string());
        value
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The whole number `name` holds, `default` when unset.
    ///
    /// Errors: [`ConfigError::Invalid`] ("expected a whole number from A to B") when the value
    /// is not a whole number in `allowed`.
    pub fn number<T>(
        &self,
        name: &'static str,
        default: T,
        allowed: RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display + Copy,
    {
        self.whole(name, default, &allowed, "a whole number")
    }

    /// The whole seconds `name` holds, `default` when unset.
    ///
    /// Errors: [`ConfigError::Invalid`] ("expected whole seconds from A to B") when the value
    /// is not a whole number of seconds in `allowed`.
    pub fn seconds(
        &self,
        name: &'static str,
        default: Duration,
        allowed: RangeInclusive<u64>,
    ) -> Result<Duration, ConfigError> {
        self.whole(name, default.as_secs(), &allowed, "whole seconds")
            .map(Duration::from_secs)
    }

    /// The whole days `name` holds (`default_days` when unset), as a duration.
    ///
    /// Errors: [`ConfigError::Invalid`] ("expected whole days from A to B") when the value is
    /// not a whole number of days in `allowed`.
    pub fn days(
        &self,
        name: &'static str,
        default_days: u64,
        allowed: RangeInclusive<u64>,
    ) -> Result<Duration, ConfigError> {
        self.whole(name, default_days, &allowed, "whole days")
            .map(|days| Duration::from_secs(days * DAY))
    }

    /// The seconds `name` holds, decimals allowed (`2.5`), `default` when unset.
    ///
    /// Errors: [`ConfigError::Invalid`] ("expected seconds above 0 and at most M, decimals
    /// allowed") when the value is not a finite number above 0 and at most `max`.
    pub fn positive_seconds(
        &self,
        name: &'static str,
        default: Duration,
        max: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(value) = self.set(name) else {
            return Ok(default);
        };
        value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|seconds| seconds.is_finite() && *seconds > 0.0)
            .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
            .filter(|duration| !duration.is_zero() && *duration <= max)
            .ok_or_else(|| ConfigError::Invalid {
                var: name,
                value,
                expected: format!(
                    "seconds above 0 and at most {}, decimals allowed",
                    max.as_secs_f64()
                ),
            })
    }

    /// Whether `name` is on: `on`, `true`, `yes`, `1` or `off`, `false`, `no`, `0` (any case);
    /// `default` when unset.
    ///
    /// Errors: [`ConfigError::Invalid`] for any other value.
    pub fn switch(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        let Some(value) = self.set(name) else {
            return Ok(default);
        };
        match value.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" | "1" => Ok(true),
            "off" | "false" | "no" | "0" => Ok(false),
            _ => Err(ConfigError::Invalid {
                var: name,
                value,
                expected: "on or off (or true/false, yes/no, 1/0)".into(),
            }),
        }
    }

    /// The untrimmed value of `name` when it holds more than whitespace.
    fn set(&self, name: &str) -> Option<String> {
        self.raw(name).filter(|value| !value.trim().is_empty())
    }

    fn whole<T>(
        &self,
        name: &'static str,
        default: T,
        allowed: &RangeInclusive<T>,
        what: &str,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display + Copy,
    {
        let Some(value) = self.set(name) else {
            return Ok(default);
        };
        value
            .trim()
            .parse::<T>()
            .ok()
            .filter(|n| allowed.contains(n))
            .ok_or_else(|| ConfigError::Invalid {
                var: name,
                value,
                expected: format!("{what} from {} to {}", allowed.start(), allowed.end()),
            })
    }
}

/// A setting that is missing or cannot be used, found at start-up. Its text names the
/// variable, the value and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is unset or blank.
    #[error("{var} must be set (and not empty)")]
    Missing {
        /// The variable.
        var: &'static str,
    },
    /// Neither of two variables, one of which is needed, is set.
    #[error("set {first} or {second}: {why}")]
    MissingEither {
        /// The first variable.
        first: &'static str,
        /// The second variable.
        second: &'static str,
        /// Why one of them is needed.
        why: &'static str,
    },
    /// A variable has a value that cannot be used.
    #[error("{var}={value:?}: expected {expected}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value, as given.
        value: String,
        /// What is allowed (`whole seconds from 0 to 300`).
        expected: String,
    },
    /// A provider list names a provider this build does not know.
    #[error(
        "{var}: unknown provider {name:?} (known: {known})",
        known = crate::providers::registry::names().join(", ")
    )]
    UnknownProvider {
        /// The variable holding the list.
        var: &'static str,
        /// The unknown name, as given.
        name: String,
    },
    /// A provider list names the same provider twice.
    #[error("{var}: provider {name:?} is listed twice")]
    DuplicateProvider {
        /// The variable holding the list.
        var: &'static str,
        /// The repeated name.
        name: String,
    },
    /// A listed provider has no API key.
    #[error("{var} must be set (and not empty) since {provider} is a configured provider")]
    MissingApiKey {
        /// The provider.
        provider: &'static str,
        /// The variable that should hold its key.
        var: &'static str,
    },
}

/// Settings shared by every function. Every value has a default except the table name.
#[derive(Debug, Clone)]
pub struct Config {
    /// `TABLE_NAME` (required): the single DynamoDB table (see `template.yaml`).
    pub table_name: String,
    /// `ENRICHMENT_MAX_AGE_SECONDS` (default 800, [`budget::DEFAULT_MAX_AGE`], the spec's
    /// maximum execution time; whole seconds from 60 to 835, the template's
    /// `EnrichmentMaxAgeSeconds`): a `pending` enrichment older than this is timed out (spec,
    /// "Timeout Handling").
    pub max_age: Duration,
    /// `CREDIT_COST_EMAIL` (default 5; 0 to [`MAX_BALANCE`], the template's `CreditCostEmail`
    /// allows any cost from 0): credits an `enrichment_email` costs.
    pub cost_email: i64,
    /// `CREDIT_COST_PHONE` (default 20; 0 to [`MAX_BALANCE`], as `CREDIT_COST_EMAIL`): credits
    /// an `enrichment_phone` costs.
    pub cost_phone: i64,
    /// `GLOBAL_CACHE_TTL_DAYS` (default 90; whole days from 1 to 3650): how long found data is
    /// served from the global cache.
    pub cache_ttl: Duration,
    /// `GLOBAL_CACHE_MISS_TTL_DAYS` (default 7; whole days from 0 to 365; 0: never): how long
    /// "no provider knows this person" is served from the global cache (an answer from every
    /// provider asked).
    pub cache_miss_ttl: Duration,
    /// Added to a provider call's budget when the worker renews its claim and global cache lease
    /// before the call ([`crate::budget::LEASE_MARGIN`]; not read from the environment): a dead
    /// worker's job is resumed that long after its provider call's budget ran out.
    pub lease_margin: Duration,
    /// `ORG_ENRICHMENTS_PER_MINUTE` (default 600; 0 to 100000, the template's
    /// `OrgEnrichmentsPerMinute`; 0: no limit): new enrichments one org may create per minute
    /// before POST answers `429 RATE_LIMITED` (see [`crate::store::RateLimit`]).
    pub org_enrichments_per_minute: u32,
    /// `WORKER_MAX_RECEIVES` (default 5, the jobs queue's `maxReceiveCount` in `template.yaml`;
    /// 1 to 1000, SQS's own bounds): on a job's last receive, a worker that still fails marks
    /// the enrichment `failed` and refunds it before the message goes to the DLQ.
    pub max_receives: u32,
    /// `REFUND_MISSES` (default `false`; `true`/`false`, the template's `RefundMisses`): an
    /// enrichment that finishes with `dataFound: false` (a global-cache miss too) is refunded
    /// in the same transaction that finishes it (spec operations-api, "Credits").
    pub refund_misses: bool,
}

impl Config {
    /// Reads the settings documented on each field from `vars`.
    ///
    /// Errors: `TABLE_NAME` unset ([`ConfigError::Missing`]); a value that does not parse or is
    /// out of its range ([`ConfigError::Invalid`]).
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(Self {
            table_name: vars.required("TABLE_NAME")?,
            max_age: Self::max_age_from(vars)?,
            cost_email: vars.number("CREDIT_COST_EMAIL", 5, 0..=MAX_BALANCE)?,
            cost_phone: vars.number("CREDIT_COST_PHONE", 20, 0..=MAX_BALANCE)?,
            cache_ttl: vars.days("GLOBAL_CACHE_TTL_DAYS", 90, 1..=3650)?,
            cache_miss_ttl: vars.days("GLOBAL_CACHE_MISS_TTL_DAYS", 7, 0..=365)?,
            lease_margin: budget::LEASE_MARGIN,
            org_enrichments_per_minute: vars.number(
                "ORG_ENRICHMENTS_PER_MINUTE",
                600,
                0..=100_000,
            )?,
            max_receives: vars.number("WORKER_MAX_RECEIVES", 5, 1..=1000)?,
            refund_misses: vars.switch("REFUND_MISSES", false)?,
        })
    }

    /// [`Config::max_age`] alone, read from `vars` by the same rule (the local stack reads it
    /// for its own maximum age).
    ///
    /// Errors: [`ConfigError::Invalid`] outside 60 to 835 whole seconds.
    pub fn max_age_from(vars: &Vars) -> Result<Duration, ConfigError> {
        vars.seconds(
            "ENRICHMENT_MAX_AGE_SECONDS",
            budget::DEFAULT_MAX_AGE,
            60..=835,
        )
    }

    /// Credits an enrichment of `field` costs.
    pub fn cost(&self, field: Field) -> i64 {
        match field {
            Field::Emails => self.cost_email,
            Field::Phones => self.cost_phone,
        }
    }
}

/// How the API functions verify Clerk session tokens (see
/// [`crate::auth::Authenticator::from_vars`], which needs a key source: `AUTH_JWT_KEY` or
/// `AUTH_JWKS_URL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// `AUTH_JWT_KEY` (no default): Clerk's PEM public key (its networkless `jwtKey`); when
    /// set, every token must be signed by it and `AUTH_JWKS_URL` is not read.
    pub jwt_key: Option<String>,
    /// `AUTH_JWKS_URL` (no default): Clerk's JWKS URL
    /// (`https://<frontend-api>/.well-known/jwks.json`), fetched on first use.
    pub jwks_url: Option<String>,
    /// `AUTH_ISSUER` (default none: `iss` not checked): the expected `iss`, then required.
    pub issuer: Option<String>,
    /// `AUTH_AUTHORIZED_PARTIES` (default none: any; comma-separated): the allowed `azp`
    /// values of tokens that carry one.
    pub authorized_parties: Vec<String>,
    /// `AUTH_CLOCK_LEEWAY_SECONDS` (default 5; whole seconds from 0 to 300): the leeway on
    /// `exp` and `nbf`.
    pub clock_leeway_seconds: u64,
}

impl AuthSettings {
    /// Reads the settings documented on each field from `vars`.
    ///
    /// Errors: [`ConfigError::Invalid`] for a leeway that is not whole seconds from 0 to 300.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(Self {
            jwt_key: vars.string("AUTH_JWT_KEY"),
            jwks_url: vars.string("AUTH_JWKS_URL"),
            issuer: vars.string("AUTH_ISSUER"),
            authorized_parties: vars.list("AUTH_AUTHORIZED_PARTIES", ""),
            clock_leeway_seconds: vars
                .seconds("AUTH_CLOCK_LEEWAY_SECONDS", Duration::from_secs(5), 0..=300)?
                .as_secs(),
        })
    }
}

/// Where jobs go: the SQS jobs queue or the Step Functions state machine (the template's
/// `Orchestrator`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// `QUEUE_URL` (no default): the jobs queue. The trigger sends each job there unless
    /// `STATE_MACHINE_ARN` is set; the worker sends a failed job back there with its retry
    /// backoff (without it, a failed job waits out the queue's visibility timeout).
    pub queue_url: Option<String>,
    /// `BULK_QUEUE_URL` (no default): the queue of batch and bulk jobs, polled by its own event
    /// source mapping with a lower maximum concurrency, so that one org's bulk leaves workers
    /// for single enrichments (spec operations-api, "Bulk enrichment"). The batch function
    /// sends there unless `STATE_MACHINE_ARN` is set; the worker sends a deferred or failed
    /// bulk job back there.
    pub bulk_queue_url: Option<String>,
    /// `STATE_MACHINE_ARN` (no default; trigger only): instead of `QUEUE_URL`, start one Step
    /// Functions execution per enrichment.
    pub state_machine_arn: Option<String>,
}

impl QueueSettings {
    /// Reads the settings documented on each field from `vars` (plain strings: nothing to
    /// reject; [`crate::queue::from_vars`] needs one of them).
    pub fn from_vars(vars: &Vars) -> Self {
        Self {
            queue_url: vars.string("QUEUE_URL"),
            bulk_queue_url: vars.string("BULK_QUEUE_URL"),
            state_machine_arn: vars.string("STATE_MACHINE_ARN"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Authenticator;

    fn vars(pairs: &[(&'static str, &'static str)]) -> Vars<'static> {
        Vars::from_pairs(pairs.iter().copied())
    }

    fn invalid(error: ConfigError) -> (&'static str, String, String) {
        match error {
            ConfigError::Invalid {
                var,
                value,
                expected,
            } => (var, value, expected),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn blank_counts_as_unset_and_values_are_trimmed() {
        let v = vars(&[("A", "  "), ("B", " 7 "), ("C", ""), ("D", " text ")]);
        assert_eq!(v.number("A", 3u32, 0..=10), Ok(3));
        assert_eq!(v.number("B", 3u32, 0..=10), Ok(7));
        assert_eq!(v.number("C", 3u32, 0..=10), Ok(3));
        assert_eq!(v.number("UNSET", 3u32, 0..=10), Ok(3));
        assert_eq!(v.string("A"), None);
        assert_eq!(v.string("D").as_deref(), Some("text"));
        assert_eq!(v.raw("D").as_deref(), Some(" text "));
        assert_eq!(v.required("A"), Err(ConfigError::Missing { var: "A" }));
        assert_eq!(
            v.required("UNSET").unwrap_err().to_string(),
            "UNSET must be set (and not empty)"
        );
        assert_eq!(v.required("D").as_deref(), Ok("text"));
        assert_eq!(
            v.seconds("A", Duration::from_secs(9), 0..=10),
            Ok(Duration::from_secs(9))
        );
        assert_eq!(v.switch("A", true), Ok(true));
    }

    #[test]
    fn numbers_are_whole_and_within_their_range() {
        let read = |value: &'static str| vars(&[("N", value)]).number("N", 5i64, 0..=100);
        assert_eq!(read("0"), Ok(0));
        assert_eq!(read("100"), Ok(100));
        for bad in ["-1", "101", "1.5", "ten", "0x10", "5 6"] {
            let (var, value, expected) = invalid(read(bad).unwrap_err());
            assert_eq!((var, value.as_str()), ("N", bad));
            assert_eq!(expected, "a whole number from 0 to 100");
        }
        // A value past the type's own range is out of range too, not a silent wrap.
        assert!(
            vars(&[("N", "4294967296")])
                .number("N", 1u32, 0..=u32::MAX)
                .is_err()
        );
    }

    #[test]
    fn seconds_and_days_name_their_unit() {
        let v = vars(&[("S", "abc"), ("D", "2"), ("E", "-2")]);
        assert_eq!(
            v.seconds("S", Duration::ZERO, 0..=300)
                .unwrap_err()
                .to_string(),
            "S=\"abc\": expected whole seconds from 0 to 300"
        );
        assert_eq!(v.days("D", 7, 0..=365), Ok(Duration::from_secs(2 * 86_400)));
        assert_eq!(
            v.days("E", 7, 0..=365).unwrap_err().to_string(),
            "E=\"-2\": expected whole days from 0 to 365"
        );
        assert_eq!(
            v.days("UNSET", 7, 0..=365),
            Ok(Duration::from_secs(7 * 86_400))
        );
    }

    #[test]
    fn positive_seconds_take_decimals_above_zero() {
        let read = |value: &'static str| {
            vars(&[("T", value)]).positive_seconds(
                "T",
                Duration::from_secs(20),
                Duration::from_secs(300),
            )
        };
        assert_eq!(read(" "), Ok(Duration::from_secs(20)));
        assert_eq!(read("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(read("300"), Ok(Duration::from_secs(300)));
        for bad in ["0", "0.0", "-3", "300.001", "inf", "NaN", "soon"] {
            let (var, value, expected) = invalid(read(bad).unwrap_err());
            assert_eq!((var, value.as_str()), ("T", bad));
            assert_eq!(
                expected,
                "seconds above 0 and at most 300, decimals allowed"
            );
        }
    }

    #[test]
    fn lists_split_on_commas_and_a_blank_list_is_empty() {
        let v = vars(&[("L", " a, ,b ,c,"), ("BLANK", "  ")]);
        assert_eq!(v.list("L", "x"), ["a", "b", "c"]);
        assert!(v.list("BLANK", "x").is_empty());
        assert_eq!(v.list("UNSET", "x, y"), ["x", "y"]);
    }

    #[test]
    fn switches_read_on_and_off() {
        for (value, on) in [("on", true), ("TRUE", true), ("1", true), ("off", false)] {
            assert_eq!(vars(&[("W", value)]).switch("W", !on), Ok(on), "{value}");
        }
        let (var, value, _) = invalid(vars(&[("W", "maybe")]).switch("W", true).unwrap_err());
        assert_eq!((var, value.as_str()), ("W", "maybe"));
    }

    #[test]
    fn a_source_over_another_answers_first_even_blank() {
        let v = vars(&[("A", "top"), ("B", "")]).or(vars(&[
            ("A", "bottom"),
            ("B", "bottom"),
            ("C", "bottom"),
        ]));
        assert_eq!(v.string("A").as_deref(), Some("top"));
        assert_eq!(v.string("B"), None);
        assert_eq!(v.string("C").as_deref(), Some("bottom"));
    }

    #[test]
    fn config_defaults_match_the_readme() {
        let config = Config::from_vars(&vars(&[("TABLE_NAME", " enrichment ")])).unwrap();
        assert_eq!(config.table_name, "enrichment");
        assert_eq!(config.max_age, Duration::from_secs(800));
        assert_eq!((config.cost_email, config.cost_phone), (5, 20));
        assert_eq!(config.cache_ttl, Duration::from_secs(90 * 86_400));
        assert_eq!(config.cache_miss_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(config.lease_margin, budget::LEASE_MARGIN);
        assert_eq!(config.org_enrichments_per_minute, 600);
        assert_eq!(config.max_receives, 5);

        assert_eq!(
            Config::from_vars(&vars(&[])).unwrap_err(),
            ConfigError::Missing { var: "TABLE_NAME" }
        );
    }

    #[test]
    fn config_ranges_follow_the_template() {
        let with = |name: &'static str, value: &'static str| {
            Config::from_vars(&vars(&[("TABLE_NAME", "t"), (name, value)]))
        };
        // Edges that are allowed.
        for (name, value) in [
            ("ENRICHMENT_MAX_AGE_SECONDS", "60"),
            ("ENRICHMENT_MAX_AGE_SECONDS", "835"),
            ("CREDIT_COST_EMAIL", "0"),
            ("CREDIT_COST_PHONE", "1000000000000000"),
            ("GLOBAL_CACHE_TTL_DAYS", "1"),
            ("GLOBAL_CACHE_TTL_DAYS", "3650"),
            ("GLOBAL_CACHE_MISS_TTL_DAYS", "0"),
            ("GLOBAL_CACHE_MISS_TTL_DAYS", "365"),
            ("ORG_ENRICHMENTS_PER_MINUTE", "0"),
            ("ORG_ENRICHMENTS_PER_MINUTE", "100000"),
            ("WORKER_MAX_RECEIVES", "1"),
            ("WORKER_MAX_RECEIVES", "1000"),
        ] {
            assert!(with(name, value).is_ok(), "{name}={value}");
        }
        // One past each edge, with the message naming the variable, the value and the range.
        for (name, value, message) in [
            (
                "ENRICHMENT_MAX_AGE_SECONDS",
                "59",
                "ENRICHMENT_MAX_AGE_SECONDS=\"59\": expected whole seconds from 60 to 835",
            ),
            (
                "ENRICHMENT_MAX_AGE_SECONDS",
                "836",
                "ENRICHMENT_MAX_AGE_SECONDS=\"836\": expected whole seconds from 60 to 835",
            ),
            (
                "CREDIT_COST_EMAIL",
                "-1",
                "CREDIT_COST_EMAIL=\"-1\": expected a whole number from 0 to 1000000000000000",
            ),
            (
                "GLOBAL_CACHE_TTL_DAYS",
                "0",
                "GLOBAL_CACHE_TTL_DAYS=\"0\": expected whole days from 1 to 3650",
            ),
            (
                "GLOBAL_CACHE_MISS_TTL_DAYS",
                "366",
                "GLOBAL_CACHE_MISS_TTL_DAYS=\"366\": expected whole days from 0 to 365",
            ),
            (
                "ORG_ENRICHMENTS_PER_MINUTE",
                "100001",
                "ORG_ENRICHMENTS_PER_MINUTE=\"100001\": expected a whole number from 0 to 100000",
            ),
            (
                "WORKER_MAX_RECEIVES",
                "0",
                "WORKER_MAX_RECEIVES=\"0\": expected a whole number from 1 to 1000",
            ),
        ] {
            assert_eq!(with(name, value).unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn auth_settings_are_read_by_the_same_rules() {
        let settings = AuthSettings::from_vars(&vars(&[
            (
                "AUTH_JWKS_URL",
                " https://clerk.example.test/.well-known/jwks.json ",
            ),
            ("AUTH_ISSUER", ""),
            (
                "AUTH_AUTHORIZED_PARTIES",
                "https://a.example, ,https://b.example",
            ),
        ]))
        .unwrap();
        assert_eq!(
            settings,
            AuthSettings {
                jwt_key: None,
                jwks_url: Some("https://clerk.example.test/.well-known/jwks.json".into()),
                issuer: None,
                authorized_parties: vec!["https://a.example".into(), "https://b.example".into()],
                clock_leeway_seconds: 5,
            }
        );
        let leeway = |value: &'static str| {
            AuthSettings::from_vars(&vars(&[("AUTH_CLOCK_LEEWAY_SECONDS", value)]))
                .map(|s| s.clock_leeway_seconds)
        };
        assert_eq!(leeway("0"), Ok(0));
        assert_eq!(leeway("300"), Ok(300));
        assert!(leeway("301").is_err());
    }

    #[test]
    fn a_bad_clock_leeway_stops_the_authenticator_at_start_up() {
        // It used to fall back to 5 seconds silently.
        let error = Authenticator::from_vars(
            &vars(&[
                (
                    "AUTH_JWKS_URL",
                    "https://clerk.example.test/.well-known/jwks.json",
                ),
                ("AUTH_CLOCK_LEEWAY_SECONDS", "abc"),
            ]),
            reqwest::Client::new(),
        )
        .err()
        .expect("a bad leeway is refused");
        assert_eq!(
            error.to_string(),
            "AUTH_CLOCK_LEEWAY_SECONDS=\"abc\": expected whole seconds from 0 to 300"
        );
    }

    #[test]
    fn the_authenticator_needs_a_key_source() {
        let error =
            Authenticator::from_vars(&vars(&[("AUTH_ISSUER", "x")]), reqwest::Client::new())
                .err()
                .expect("no key source is refused");
        assert_eq!(
            error.to_string(),
            "set AUTH_JWKS_URL or AUTH_JWT_KEY: without a key source no request can be \
             authenticated"
        );
        let error = Authenticator::from_vars(
            &vars(&[("AUTH_JWT_KEY", "not a key")]),
            reqwest::Client::new(),
        )
        .err()
        .expect("a bad PEM is refused");
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    var: "AUTH_JWT_KEY",
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn the_trigger_needs_a_queue_or_a_state_machine() {
        let sdk = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .build();
        let error =
            crate::queue::from_vars(&sdk, &vars(&[("QUEUE_URL", " ")]), Duration::from_secs(800))
                .err()
                .expect("no queue is refused");
        assert!(
            matches!(
                error,
                ConfigError::MissingEither {
                    first: "QUEUE_URL",
                    second: "STATE_MACHINE_ARN",
                    ..
                }
            ),
            "{error}"
        );
        assert!(
            crate::queue::from_vars(
                &sdk,
                &vars(&[("QUEUE_URL", "http://q")]),
                Duration::from_secs(800)
            )
            .is_ok()
        );
    }

    #[test]
    fn queue_settings_take_blank_as_unset() {
        assert_eq!(
            QueueSettings::from_vars(&vars(&[
                ("QUEUE_URL", " "),
                ("BULK_QUEUE_URL", "http://bulk"),
                ("STATE_MACHINE_ARN", "arn")
            ])),
            QueueSettings {
                queue_url: None,
                bulk_queue_url: Some("http://bulk".into()),
                state_machine_arn: Some("arn".into()),
            }
        );
    }
}
