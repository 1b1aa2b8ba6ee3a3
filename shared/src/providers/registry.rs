//! The providers this build knows ([`REGISTRY`]: names, the variables that configure each,
//! default API origins, adapter builders) and the worker's cascade settings read from them
//! ([`CascadeSettings`]) through the one settings reader ([`Vars`]).
//!
//! [`CascadeSettings`] documents every variable of the cascade; [`cascade`] builds the
//! [`Cascade`] they describe.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use phonenumber::country::Id;

use crate::config::{ConfigError, Vars};
use crate::limiter::ProviderLimit;
use crate::providers::Provider;
use crate::providers::cascade::{
    Budget, Cascade, DEFAULT_PHONE_REGION, DEFAULT_POLL_DELAY, DEFAULT_RETRIES,
};
use crate::providers::dropcontact::{self, DropcontactProvider};
use crate::providers::fullenrich::{self, FullEnrichProvider};
use crate::providers::hunter::{self, HunterProvider};
use crate::providers::pdl::{self, PdlProvider};
use crate::providers::prospeo::{self, ProspeoProvider};

/// `EMAIL_PROVIDERS` when unset.
pub const DEFAULT_EMAIL_PROVIDERS: &str = "hunter,pdl";
/// `PHONE_PROVIDERS` when unset.
pub const DEFAULT_PHONE_PROVIDERS: &str = "pdl";
/// `HUNTER_BASE_URL` when unset.
pub const DEFAULT_HUNTER_BASE_URL: &str = "https://api.hunter.io";
/// `PDL_BASE_URL` when unset.
pub const DEFAULT_PDL_BASE_URL: &str = "https://api.peopledatalabs.com";
/// `PROSPEO_BASE_URL` when unset.
pub const DEFAULT_PROSPEO_BASE_URL: &str = "https://api.prospeo.io";
/// `FULLENRICH_BASE_URL` when unset (the API paths add `/api/v2`).
pub const DEFAULT_FULLENRICH_BASE_URL: &str = "https://app.fullenrich.com";
/// `DROPCONTACT_BASE_URL` when unset (the API paths add `/v1`).
pub const DEFAULT_DROPCONTACT_BASE_URL: &str = "https://api.dropcontact.com";
/// `PROVIDER_TIMEOUT_SECONDS` when unset.
pub const DEFAULT_PROVIDER_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest `PROVIDER_TIMEOUT_SECONDS` or `<NAME>_TIMEOUT_SECONDS`: 300 s. One call's
/// budget, retries included, must fit in the worker's 800 s many times over (see
/// [`crate::budget`]).
pub const MAX_PROVIDER_TIMEOUT: Duration = Duration::from_secs(300);
/// The most retries `PROVIDER_RETRIES` or `<NAME>_RETRIES` allows.
pub const MAX_RETRIES: u32 = 5;

/// A provider this build knows: its name, how to build its adapter, and the variables that
/// configure it.
pub struct Registered {
    /// The provider's name in `EMAIL_PROVIDERS`/`PHONE_PROVIDERS` and in stored records.
    pub name: &'static str,
    /// The variable holding its API key (`HUNTER_API_KEY`).
    pub key_var: &'static str,
    /// The variable naming the Secrets Manager secret of its API key in AWS
    /// (`HUNTER_API_KEY_SECRET_ARN`, see [`crate::secrets`]).
    pub secret_var: &'static str,
    /// The variable holding its API origin (`HUNTER_BASE_URL`).
    pub base_url_var: &'static str,
    /// Its public API origin, when `base_url_var` is unset.
    pub default_base_url: &'static str,
    /// The variable holding its own call timeout (`HUNTER_TIMEOUT_SECONDS`).
    pub timeout_var: &'static str,
    /// The variable holding its own retry count (`HUNTER_RETRIES`).
    pub retries_var: &'static str,
    /// The variable holding its calls per second shared by all workers
    /// (`HUNTER_RATE_PER_SECOND`, see [`crate::limiter`]).
    pub rate_per_second_var: &'static str,
    /// The variable holding its calls per minute shared by all workers
    /// (`HUNTER_RATE_PER_MINUTE`).
    pub rate_per_minute_var: &'static str,
    /// Builds its adapter from the HTTP client, the API origin and the API key.
    pub build: fn(reqwest::Client, String, String) -> Arc<dyn Provider>,
}

/// Every provider adapter, in the order their docs list them.
pub const REGISTRY: [Registered; 5] = [
    Registered {
        name: hunter::NAME,
        key_var: "HUNTER_API_KEY",
        secret_var: "HUNTER_API_KEY_SECRET_ARN",
        base_url_var: "HUNTER_BASE_URL",
        default_base_url: DEFAULT_HUNTER_BASE_URL,
        timeout_var: "HUNTER_TIMEOUT_SECONDS",
        retries_var: "HUNTER_RETRIES",
        rate_per_second_var: "HUNTER_RATE_PER_SECOND",
        rate_per_minute_var: "HUNTER_RATE_PER_MINUTE",
        build: |http, base, key| Arc::new(HunterProvider::new(http, base, key)),
    },
    Registered {
        name: pdl::NAME,
        key_var: "PDL_API_KEY",
        secret_var: "PDL_API_KEY_SECRET_ARN",
        base_url_var: "PDL_BASE_URL",
        default_base_url: DEFAULT_PDL_BASE_URL,
        timeout_var: "PDL_TIMEOUT_SECONDS",
        retries_var: "PDL_RETRIES",
        rate_per_second_var: "PDL_RATE_PER_SECOND",
        rate_per_minute_var: "PDL_RATE_PER_MINUTE",
        build: |http, base, key| Arc::new(PdlProvider::new(http, base, key)),
    },
    Registered {
        name: prospeo::NAME,
        key_var: "PROSPEO_API_KEY",
        secret_var: "PROSPEO_API_KEY_SECRET_ARN",
        base_url_var: "PROSPEO_BASE_URL",
        default_base_url: DEFAULT_PROSPEO_BASE_URL,
        timeout_var: "PROSPEO_TIMEOUT_SECONDS",
        retries_var: "PROSPEO_RETRIES",
        rate_per_second_var: "PROSPEO_RATE_PER_SECOND",
        rate_per_minute_var: "PROSPEO_RATE_PER_MINUTE",
        build: |http, base, key| Arc::new(ProspeoProvider::new(http, base, key)),
    },
    Registered {
        name: fullenrich::NAME,
        key_var: "FULLENRICH_API_KEY",
        secret_var: "FULLENRICH_API_KEY_SECRET_ARN",
        base_url_var: "FULLENRICH_BASE_URL",
        default_base_url: DEFAULT_FULLENRICH_BASE_URL,
        timeout_var: "FULLENRICH_TIMEOUT_SECONDS",
        retries_var: "FULLENRICH_RETRIES",
        rate_per_second_var: "FULLENRICH_RATE_PER_SECOND",
        rate_per_minute_var: "FULLENRICH_RATE_PER_MINUTE",
        build: |http, base, key| Arc::new(FullEnrichProvider::new(http, base, key)),
    },
    Registered {
        name: dropcontact::NAME,
        key_var: "DROPCONTACT_API_KEY",
        secret_var: "DROPCONTACT_API_KEY_SECRET_ARN",
        base_url_var: "DROPCONTACT_BASE_URL",
        default_base_url: DEFAULT_DROPCONTACT_BASE_URL,
        timeout_var: "DROPCONTACT_TIMEOUT_SECONDS",
        retries_var: "DROPCONTACT_RETRIES",
        rate_per_second_var: "DROPCONTACT_RATE_PER_SECOND",
        rate_per_minute_var: "DROPCONTACT_RATE_PER_MINUTE",
        build: |http, base, key| Arc::new(DropcontactProvider::new(http, base, key)),
    },
];

/// The names of [`REGISTRY`], in its order.
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|entry| entry.name).collect()
}

/// The worker's cascade, as the variables documented on each field set it. Names in the lists
/// are case-insensitive.
#[derive(Debug, Clone)]
pub struct CascadeSettings {
    /// `EMAIL_PROVIDERS` (default `hunter,pdl`; comma-separated names from [`REGISTRY`], each
    /// at most once; set but blank: no provider): the providers asked for emails, in order.
    pub email_providers: Vec<&'static str>,
    /// `PHONE_PROVIDERS` (default `pdl`; as `EMAIL_PROVIDERS`; `dropcontact` finds emails
    /// only): the providers asked for phones, in order.
    pub phone_providers: Vec<&'static str>,
    /// `PROVIDER_TIMEOUT_SECONDS` (default 20; seconds above 0 and at most 300
    /// ([`MAX_PROVIDER_TIMEOUT`]), decimals allowed): the bound on each provider call, and the
    /// least time left before the deadline to start one.
    pub provider_timeout: Duration,
    /// `PROVIDER_RETRIES` (default 1; 0 to 5): times a provider is asked again after a short
    /// `Retry-After` or a 5xx.
    pub retries: u32,
    /// `PHONE_DEFAULT_REGION` (default `US`; an ISO 3166 two-letter region, any case): the
    /// region of national phone numbers.
    pub phone_region: Id,
    /// `PROVIDER_POLL_SECONDS` (default 20; whole seconds from 1 to 900, SQS's longest
    /// `DelaySeconds`): how long an enrichment waiting on an asynchronous provider's job is
    /// deferred before the next poll ([`Cascade::with_poll_delay`]).
    pub poll_delay: Duration,
    /// Every provider of [`REGISTRY`], in its order, with its own variables.
    pub providers: Vec<ProviderSettings>,
    /// `PDL_MIN_LIKELIHOOD` (default 6, [`pdl::DEFAULT_MIN_LIKELIHOOD`]; a whole number from 1
    /// to 10, PDL's likelihood scale): the `min_likelihood` sent to People Data Labs; a weaker
    /// match is its no match rather than, too often, someone else's contacts
    /// ([`PdlProvider::with_min_likelihood`]).
    pub pdl_min_likelihood: u8,
}

/// One provider's settings, from the variables of its [`Registered`] entry (`<NAME>` is its
/// name in capitals: `HUNTER`, `PDL`, `PROSPEO`, `FULLENRICH`, `DROPCONTACT`).
#[derive(Clone)]
pub struct ProviderSettings {
    /// The provider's [`Registered`] entry.
    pub entry: &'static Registered,
    /// `<NAME>_API_KEY` (no default; required when the provider is listed): its API key. In
    /// AWS the worker reads it from the secret `<NAME>_API_KEY_SECRET_ARN` names (see
    /// [`crate::secrets::resolve_api_keys`]).
    pub api_key: Option<String>,
    /// `<NAME>_BASE_URL` (default: the provider's public API origin,
    /// [`Registered::default_base_url`]; an http(s) URL with a host): where its API is reached
    /// (the simulator's `http://127.0.0.1:PORT/hunter` locally).
    pub base_url: String,
    /// `<NAME>_TIMEOUT_SECONDS` and `<NAME>_RETRIES` (default: `PROVIDER_TIMEOUT_SECONDS` and
    /// `PROVIDER_RETRIES`; the same ranges): its own call budget, e.g.
    /// `FULLENRICH_TIMEOUT_SECONDS=60`.
    pub budget: Budget,
    /// `<NAME>_RATE_PER_SECOND` and `<NAME>_RATE_PER_MINUTE` (default none; whole numbers from
    /// 0 to 100000, 0: none): its rate limit, shared by every worker through DynamoDB
    /// ([`crate::limiter`]). A provider with one is never failed for a 429, 5xx or time-out:
    /// the job waits for its circuit instead.
    pub limit: ProviderLimit,
}

impl std::fmt::Debug for ProviderSettings {
    /// Everything but the API key's value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSettings")
            .field("name", &self.entry.name)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("base_url", &self.base_url)
            .field("budget", &self.budget)
            .field("limit", &self.limit)
            .finish()
    }
}

impl CascadeSettings {
    /// Reads the settings documented on each field from `vars`, every provider's own
    /// variables included (listed or not: a bad value is an error either way).
    ///
    /// Errors: [`ConfigError::UnknownProvider`] or [`ConfigError::DuplicateProvider`] in a
    /// list; [`ConfigError::MissingApiKey`] for a listed provider; [`ConfigError::Invalid`] for
    /// a base URL that is not http(s), a timeout or retry count out of range, or a region that
    /// is not a two-letter code.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let email_providers = provider_names(vars, "EMAIL_PROVIDERS", DEFAULT_EMAIL_PROVIDERS)?;
        let phone_providers = provider_names(vars, "PHONE_PROVIDERS", DEFAULT_PHONE_PROVIDERS)?;
        let listed =
            |name: &str| email_providers.contains(&name) || phone_providers.contains(&name);

        let mut providers = Vec::new();
        for entry in &REGISTRY {
            let api_key = vars.string(entry.key_var);
            if api_key.is_none() && listed(entry.name) {
                return Err(ConfigError::MissingApiKey {
                    provider: entry.name,
                    var: entry.key_var,
                });
            }
            let base_url = base_url(vars, entry.base_url_var, entry.default_base_url)?;
            providers.push((entry, api_key, base_url));
        }

        let provider_timeout = timeout(vars, "PROVIDER_TIMEOUT_SECONDS", DEFAULT_PROVIDER_TIMEOUT)?;
        let retries = vars.number("PROVIDER_RETRIES", DEFAULT_RETRIES, 0..=MAX_RETRIES)?;
        let mut settings = Vec::new();
        for (entry, api_key, base_url) in providers {
            let budget = Budget {
                timeout: timeout(vars, entry.timeout_var, provider_timeout)?,
                retries: vars.number(entry.retries_var, retries, 0..=MAX_RETRIES)?,
            };
            let rate = |var| {
                vars.number(var, 0u32, 0..=100_000)
                    .map(|n| (n > 0).then_some(n))
            };
            let limit = ProviderLimit {
                per_second: rate(entry.rate_per_second_var)?,
                per_minute: rate(entry.rate_per_minute_var)?,
            };
            settings.push(ProviderSettings {
                entry,
                api_key,
                base_url,
                budget,
                limit,
            });
        }

        let phone_region = match vars.string("PHONE_DEFAULT_REGION") {
            None => DEFAULT_PHONE_REGION,
            Some(code) => Id::from_str(&code.to_uppercase()).map_err(|_| ConfigError::Invalid {
                var: "PHONE_DEFAULT_REGION",
                value: vars.raw("PHONE_DEFAULT_REGION").unwrap_or_default(),
                expected: "a two-letter region code such as US or GB".into(),
            })?,
        };

        let poll_delay = vars.seconds("PROVIDER_POLL_SECONDS", DEFAULT_POLL_DELAY, 1..=900)?;
        Ok(Self {
            email_providers,
            phone_providers,
            provider_timeout,
            retries,
            phone_region,
            poll_delay,
            providers: settings,
            pdl_min_likelihood: vars.number(
                "PDL_MIN_LIKELIHOOD",
                pdl::DEFAULT_MIN_LIKELIHOOD,
                pdl::LIKELIHOOD_RANGE,
            )?,
        })
    }

    /// The cascade these settings describe: one adapter per listed provider (shared by both
    /// lists), each provider's own budget, the phone region.
    ///
    /// Errors: [`ConfigError::MissingApiKey`] for a listed provider without a key (settings
    /// built by hand; [`CascadeSettings::from_vars`] already refuses them).
    pub fn build(&self, http: reqwest::Client) -> Result<Cascade, ConfigError> {
        let listed = |name: &str| {
            self.email_providers.contains(&name) || self.phone_providers.contains(&name)
        };
        let mut built: Vec<(&'static str, Arc<dyn Provider>)> = Vec::new();
        for provider in self.providers.iter().filter(|p| listed(p.entry.name)) {
            let key = provider.api_key.clone().ok_or(ConfigError::MissingApiKey {
                provider: provider.entry.name,
                var: provider.entry.key_var,
            })?;
            let adapter: Arc<dyn Provider> = if provider.entry.name == pdl::NAME {
                Arc::new(
                    PdlProvider::new(http.clone(), provider.base_url.clone(), key)
                        .with_min_likelihood(self.pdl_min_likelihood),
                )
            } else {
                (provider.entry.build)(http.clone(), provider.base_url.clone(), key)
            };
            built.push((provider.entry.name, adapter));
        }
        let pick = |names: &[&'static str]| -> Vec<Arc<dyn Provider>> {
            names
                .iter()
                .filter_map(|name| {
                    built
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, p)| p.clone())
                })
                .collect()
        };
        let cascade = Cascade::new(
            pick(&self.email_providers),
            pick(&self.phone_providers),
            self.provider_timeout,
        )
        .with_retries(self.retries)
        .with_default_region(self.phone_region)
        .with_poll_delay(self.poll_delay);
        Ok(self.providers.iter().fold(cascade, |cascade, provider| {
            cascade
                .with_budget(provider.entry.name, provider.budget)
                .with_limit(provider.entry.name, provider.limit)
        }))
    }
}

/// The worker's cascade configured by `vars` ([`CascadeSettings`]).
///
/// Errors: those of [`CascadeSettings::from_vars`].
pub fn cascade(http: reqwest::Client, vars: &Vars) -> Result<Cascade, ConfigError> {
    CascadeSettings::from_vars(vars)?.build(http)
}

/// `(<NAME>_API_KEY_SECRET_ARN, arn)` for every provider of [`REGISTRY`] whose secret
/// variable is set in `vars`: the input of [`crate::secrets::resolve_api_keys`].
pub fn api_key_secrets(vars: &Vars) -> Vec<(String, String)> {
    REGISTRY
        .iter()
        .filter_map(|entry| {
            vars.string(entry.secret_var)
                .map(|arn| (entry.secret_var.to_string(), arn))
        })
        .collect()
}

/// The provider names of the comma-separated list `var` (`default` when unset), lower-cased,
/// in order.
fn provider_names(
    vars: &Vars,
    var: &'static str,
    default: &str,
) -> Result<Vec<&'static str>, ConfigError> {
    let mut names: Vec<&'static str> = Vec::new();
    for raw in vars.list(var, default) {
        let lower = raw.to_lowercase();
        let name = REGISTRY
            .iter()
            .map(|entry| entry.name)
            .find(|name| *name == lower)
            .ok_or_else(|| ConfigError::UnknownProvider {
                var,
                name: raw.clone(),
            })?;
        if names.contains(&name) {
            return Err(ConfigError::DuplicateProvider {
                var,
                name: name.to_string(),
            });
        }
        names.push(name);
    }
    Ok(names)
}

/// A provider call timeout: above 0, at most [`MAX_PROVIDER_TIMEOUT`], decimals allowed.
fn timeout(vars: &Vars, var: &'static str, default: Duration) -> Result<Duration, ConfigError> {
    vars.positive_seconds(var, default, MAX_PROVIDER_TIMEOUT)
}

/// The http(s) URL `var` holds, or `default`.
fn base_url(vars: &Vars, var: &'static str, default: &str) -> Result<String, ConfigError> {
    let value = vars.string(var).unwrap_or_else(|| default.to_string());
    match url::Url::parse(&value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(value),
        _ => Err(ConfigError::Invalid {
            var,
            value,
            expected: "an http(s) URL".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<(&'static str, &'static str)> {
        vec![("HUNTER_API_KEY", "h"), ("PDL_API_KEY", "p")]
    }

    fn settings(extra: &[(&'static str, &'static str)]) -> Result<CascadeSettings, ConfigError> {
        let mut pairs = keys();
        pairs.extend_from_slice(extra);
        CascadeSettings::from_vars(&Vars::from_pairs(pairs))
    }

    #[test]
    fn timeouts_are_above_zero_and_at_most_300_seconds() {
        let read = |value| settings(&[("PROVIDER_TIMEOUT_SECONDS", value)]);
        assert_eq!(
            read("300").unwrap().provider_timeout,
            Duration::from_secs(300)
        );
        assert_eq!(
            read("0.001").unwrap().provider_timeout,
            Duration::from_millis(1)
        );
        let error = read("300.5").unwrap_err();
        assert_eq!(
            error.to_string(),
            "PROVIDER_TIMEOUT_SECONDS=\"300.5\": expected seconds above 0 and at most 300, \
             decimals allowed"
        );
        for bad in ["0", "-1", "NaN", "inf", "1e400", "20s"] {
            assert!(
                matches!(
                    read(bad),
                    Err(ConfigError::Invalid {
                        var: "PROVIDER_TIMEOUT_SECONDS",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            settings(&[("FULLENRICH_TIMEOUT_SECONDS", "301")]),
            Err(ConfigError::Invalid {
                var: "FULLENRICH_TIMEOUT_SECONDS",
                ..
            })
        ));
    }

    #[test]
    fn retries_are_from_zero_to_five() {
        let read = |value| settings(&[("PROVIDER_RETRIES", value)]);
        assert_eq!(read("0").unwrap().retries, 0);
        assert_eq!(read("5").unwrap().retries, 5);
        assert_eq!(
            read("6").unwrap_err().to_string(),
            "PROVIDER_RETRIES=\"6\": expected a whole number from 0 to 5"
        );
        assert!(read("-1").is_err());
    }

    #[test]
    fn an_unlisted_providers_variables_are_checked_too() {
        // Prospeo is not listed: its key is not needed, but a bad value is still refused.
        assert!(settings(&[]).is_ok());
        assert!(matches!(
            settings(&[("PROSPEO_RETRIES", "many")]),
            Err(ConfigError::Invalid {
                var: "PROSPEO_RETRIES",
                ..
            })
        ));
        assert!(matches!(
            settings(&[("DROPCONTACT_BASE_URL", "api.dropcontact.com")]),
            Err(ConfigError::Invalid {
                var: "DROPCONTACT_BASE_URL",
                ..
            })
        ));
    }

    #[test]
    fn provider_budgets_inherit_the_general_ones() {
        let read = settings(&[
            ("PROVIDER_TIMEOUT_SECONDS", "8"),
            ("PROVIDER_RETRIES", "3"),
            ("PDL_RETRIES", " "),
            ("HUNTER_TIMEOUT_SECONDS", "2"),
        ])
        .unwrap();
        let budget = |name: &str| {
            read.providers
                .iter()
                .find(|p| p.entry.name == name)
                .unwrap()
                .budget
        };
        assert_eq!(
            budget("hunter"),
            Budget {
                timeout: Duration::from_secs(2),
                retries: 3
            }
        );
        assert_eq!(
            budget("pdl"),
            Budget {
                timeout: Duration::from_secs(8),
                retries: 3
            }
        );
    }

    #[test]
    fn secrets_are_read_for_every_registered_provider() {
        let vars = Vars::from_pairs([
            ("HUNTER_API_KEY_SECRET_ARN", " arn:hunter "),
            ("PDL_API_KEY_SECRET_ARN", ""),
            ("DROPCONTACT_API_KEY_SECRET_ARN", "arn:dropcontact"),
            ("CLEARBIT_API_KEY_SECRET_ARN", "arn:clearbit"),
        ]);
        assert_eq!(
            api_key_secrets(&vars),
            vec![
                (
                    "HUNTER_API_KEY_SECRET_ARN".to_string(),
                    "arn:hunter".to_string()
                ),
                (
                    "DROPCONTACT_API_KEY_SECRET_ARN".to_string(),
                    "arn:dropcontact".to_string()
                ),
            ]
        );
    }

    #[test]
    fn pdl_min_likelihood_is_from_1_to_10_and_6_by_default() {
        let read = |value| settings(&[("PDL_MIN_LIKELIHOOD", value)]);
        assert_eq!(settings(&[]).unwrap().pdl_min_likelihood, 6);
        assert_eq!(read(" ").unwrap().pdl_min_likelihood, 6);
        assert_eq!(read("1").unwrap().pdl_min_likelihood, 1);
        assert_eq!(read("10").unwrap().pdl_min_likelihood, 10);
        assert_eq!(
            read("11").unwrap_err().to_string(),
            "PDL_MIN_LIKELIHOOD=\"11\": expected a whole number from 1 to 10"
        );
        for bad in ["0", "-1", "6.5", "high"] {
            assert!(
                matches!(
                    read(bad),
                    Err(ConfigError::Invalid {
                        var: "PDL_MIN_LIKELIHOOD",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_debug_text_hides_api_keys() {
        let read = settings(&[]).unwrap();
        let text = format!("{read:?}");
        assert!(text.contains("<set>"), "{text}");
        assert!(!text.contains("\"h\""), "{text}");
    }
}
