//! External data providers and the cascade that asks them in turn.
//!
//! A [`Provider`] speaks one provider's public API; [`cascade`] asks the configured providers for a
//! field one after another until one finds data; [`normalize`] turns what they return into stored
//! [`ContactPoint`](crate::domain::ContactPoint)s.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::domain::Field;

pub mod cascade;
pub mod dropcontact;
pub mod fullenrich;
pub mod hunter;
pub mod normalize;
pub mod pdl;
pub mod prospeo;

/// What the providers search with: the person's identifying data, all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersonQuery {
    /// Given name.
    pub first_name: Option<String>,
    /// Family name.
    pub last_name: Option<String>,
    /// Employer's name.
    pub company_name: Option<String>,
    /// Employer's web domain (`stripe.com`).
    pub company_domain: Option<String>,
    /// LinkedIn profile URL.
    pub linkedin_url: Option<String>,
}

/// A contact value as a provider returned it, before normalization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawContact {
    /// The email address or phone number as the provider wrote it.
    pub value: String,
    /// The provider's kind for it (`work`, `personal`, `mobile`...), when it gives one.
    pub kind: Option<String>,
    /// Email deliverability as the provider reported it, when it gives one.
    pub status: Option<String>,
}

/// A provider's answer that is not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderAnswer {
    /// The provider found these values (never empty).
    Found(Vec<RawContact>),
    /// The provider knows no such value for this person: not an error.
    NoMatch,
}

/// Why a provider could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// HTTP 401/403: the API key is missing or wrong.
    #[error("unauthorized (bad API key)")]
    Unauthorized,
    /// HTTP 402 or the provider's quota signal: the account is out of credits.
    #[error("quota exhausted")]
    QuotaExhausted,
    /// HTTP 429: rate limited, with the `Retry-After` delay when given.
    #[error("rate limited")]
    RateLimited {
        /// The `Retry-After` delay, when the provider sent one.
        retry_after: Option<Duration>,
    },
    /// No answer within the provider's timeout.
    #[error("timed out")]
    Timeout,
    /// Any other unexpected HTTP status.
    #[error("HTTP {0}")]
    Status(u16),
    /// The body did not have the documented shape.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// Connection-level failure.
    #[error("transport error: {0}")]
    Transport(String),
}

/// One external data provider.
#[async_trait]
pub trait Provider: Send + Sync {
    /// The provider's short name as used in configuration and stored records (`hunter`, `pdl`,
    /// `prospeo`, `fullenrich`, `dropcontact`).
    fn name(&self) -> &'static str;

    /// Whether this provider has the inputs it needs to search for `field` for this person (e.g.
    /// an email finder needs a name and a company domain). The cascade skips it without a call
    /// otherwise.
    fn can_search(&self, field: Field, person: &PersonQuery) -> bool;

    /// Asks the provider for `field` values of `person`.
    async fn find(
        &self,
        field: Field,
        person: &PersonQuery,
    ) -> Result<ProviderAnswer, ProviderError>;
}

/// Where and how an adapter reaches its provider: the HTTP client (TLS and connection settings;
/// the cascade bounds each call), the API origin without a trailing `/`, and the API key.
pub(crate) struct Endpoint {
    pub(crate) http: reqwest::Client,
    pub(crate) base_url: String,
    pub(crate) api_key: String,
}

impl Endpoint {
    pub(crate) fn new(
        http: reqwest::Client,
        base_url: impl Into<String>,
        api_key: impl Into<String>,
    ) -> Self {
        Self {
            http,
            base_url: base_url.into().trim_end_matches('/').to_string(),
            api_key: api_key.into(),
        }
    }
}

/// `Some(trimmed)` when `value` holds more than whitespace.
pub(crate) fn non_blank(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// A company domain as the providers want it (`stripe.com`): trimmed, lower-cased, without a
/// scheme, `www.`, port, path, query or trailing dot. `None` when nothing is left.
pub(crate) fn bare_domain(value: &str) -> Option<String> {
    let value = value.trim().to_lowercase();
    let value = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
        .unwrap_or(&value);
    let host = value.split(['/', '?', '#', ':']).next().unwrap_or_default();
    let host = host
        .strip_prefix("www.")
        .unwrap_or(host)
        .trim_end_matches('.');
    (!host.is_empty()).then(|| host.to_string())
}

/// The delay of a `Retry-After` header (RFC 9110, section 10.2.3): delay-seconds or an
/// HTTP-date (a date in the past is a zero delay). `None` when absent or unreadable.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry_after_at(headers, Utc::now())
}

fn retry_after_at(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// Maps a reqwest failure: its timeout to [`ProviderError::Timeout`], an undecodable body to
/// [`ProviderError::Malformed`], anything else to [`ProviderError::Transport`]. The URL is left
/// out of the text, since a query string may carry an API key.
pub(crate) fn request_error(error: reqwest::Error) -> ProviderError {
    if error.is_timeout() {
        return ProviderError::Timeout;
    }
    let decode = error.is_decode();
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if decode {
        ProviderError::Malformed(text)
    } else {
        ProviderError::Transport(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use reqwest::header::HeaderValue;

    fn with_retry_after(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = Utc.with_ymd_and_hms(2015, 10, 21, 7, 27, 0).unwrap();
        assert_eq!(
            retry_after_at(&with_retry_after("120"), now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            retry_after_at(&with_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            retry_after_at(&with_retry_after("Wed, 21 Oct 2015 07:00:00 GMT"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after_at(&with_retry_after("soon"), now), None);
        assert_eq!(retry_after_at(&HeaderMap::new(), now), None);
    }

    #[test]
    fn bare_domain_strips_scheme_www_and_path() {
        assert_eq!(
            bare_domain(" https://www.Stripe.com/about "),
            Some("stripe.com".into())
        );
        assert_eq!(bare_domain("acme.example."), Some("acme.example".into()));
        assert_eq!(
            bare_domain("http://acme.test:8080/x?y"),
            Some("acme.test".into())
        );
        assert_eq!(bare_domain("https://"), None);
    }
}
