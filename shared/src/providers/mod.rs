//! External data providers and the cascade that asks them in turn.
//!
//! A [`Provider`] speaks one provider's public API; [`registry`] lists the providers this build
//! knows and reads the cascade's settings; [`cascade`] asks the configured providers for a
//! field one after another until one finds data; [`normalize`] turns what they return into stored
//! [`ContactPoint`](crate::domain::ContactPoint)s.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Timelike, Utc};
use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::domain::Field;
pub use crate::identity::MatchBasis;

pub mod cascade;
pub mod dropcontact;
pub mod fullenrich;
pub mod hunter;
pub mod normalize;
pub mod pdl;
pub mod prospeo;
pub mod registry;

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawContact {
    /// The email address or phone number as the provider wrote it.
    pub value: String,
    /// The provider's kind for it (`work`, `personal`, `mobile`...), when it gives one.
    pub kind: Option<String>,
    /// Email deliverability as the provider reported it, when it gives one.
    pub status: Option<String>,
    /// The provider's confidence that the value is the person's, on a 0-100 scale, when it
    /// gives one: Hunter's `score` as sent, PDL's `likelihood` (1-10) times ten (see
    /// [`confidence_of_likelihood`]). Kept as the stored value's
    /// [`confidence`](crate::domain::ContactPoint::confidence).
    pub confidence: Option<u8>,
}

/// A 0-100 confidence from a provider's 0-100 score (Hunter's `score`): rounded, clamped to
/// 0-100; `None` for none or a value that is not a finite number.
pub(crate) fn confidence_of_score(score: Option<f64>) -> Option<u8> {
    let score = score.filter(|s| s.is_finite())?;
    // In range after the clamp, so the cast neither wraps nor saturates.
    Some(score.round().clamp(0.0, 100.0) as u8)
}

/// A 0-100 confidence from PDL's `likelihood` (1-10, "how confident we are that the returned
/// profile is the same as the person you requested"): ten times it, clamped to 0-100.
pub(crate) fn confidence_of_likelihood(likelihood: Option<f64>) -> Option<u8> {
    confidence_of_score(likelihood.map(|l| l * 10.0))
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
    /// The provider's rate-limit signal (HTTP 429 for most; Hunter's 403; Prospeo's
    /// `RATE_LIMITED`), with the wait before asking again when it is known.
    #[error("rate limited")]
    RateLimited {
        /// How long to wait: a `Retry-After` the server sent, else what the provider's own
        /// documented signal says (PDL's `x-ratelimit-reset`, Prospeo's
        /// `x-minute-reset-seconds`, the end of FullEnrich's calendar minute...; see each
        /// adapter's module docs). `None` when nothing tells.
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
    /// The answer's body is longer than `limit` bytes ([`MAX_PROVIDER_BODY_BYTES`]): refused
    /// from its `Content-Length`, or cut off while being read. The cascade does not ask the
    /// provider again (the same request gets the same body) and moves on to the next one.
    #[error("response body larger than {limit} bytes")]
    BodyTooLarge {
        /// The cap the body went past, in bytes.
        limit: usize,
    },
}

/// The most bytes of a provider answer's body an adapter reads: 1 MiB.
///
/// The documented answers hold one person's record, a few KiB; the worker Lambda has 128 MB of
/// memory in all. A longer body is a [`ProviderError::BodyTooLarge`] of that provider, and is
/// never read whole (see [`read_body`]).
pub const MAX_PROVIDER_BODY_BYTES: usize = 1024 * 1024;

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

    /// What a search of this provider matches on, for the global cache: an entry of its answer
    /// is served only to people who share those identity keys
    /// ([`crate::identity::IdentityKeys`]). Default: every identity the query carried, the
    /// safe choice for a provider whose matching is not documented.
    fn match_basis(&self) -> MatchBasis {
        MatchBasis::AllGiven
    }

    /// Asks the provider for `field` values of `person`.
    async fn find(
        &self,
        field: Field,
        person: &PersonQuery,
    ) -> Result<ProviderAnswer, ProviderError>;

    /// The provider's submit-then-poll protocol, for an asynchronous provider (FullEnrich,
    /// Dropcontact): the cascade then submits once, records the job and defers the enrichment
    /// between polls instead of polling inside [`Provider::find`] (see [`ProviderJobs`]).
    /// Default: none.
    fn jobs(&self) -> Option<&dyn ProviderJobs> {
        None
    }
}

/// An asynchronous provider's job protocol, step by step, so that no worker waits while the
/// provider works: a submit starts a paid job (never sent twice for one enrichment: the
/// provider has no idempotency key), each poll says whether it is done.
#[async_trait]
pub trait ProviderJobs: Send + Sync {
    /// Starts a job searching `field` for `person`; its id. A person the provider cannot
    /// search is `Ok(None)` without a call.
    ///
    /// Errors: as [`Provider::find`].
    async fn submit_job(
        &self,
        field: Field,
        person: &PersonQuery,
    ) -> Result<Option<String>, ProviderError>;

    /// One poll of job `job_id`: still running, or done with the values found.
    ///
    /// Errors: as [`Provider::find`]; a rate limit, a 5xx or a timeout here is the poll's
    /// alone: the job runs on and is polled again.
    async fn poll_job(&self, field: Field, job_id: &str) -> Result<JobPoll, ProviderError>;
}

/// What one poll of an asynchronous provider's job says (FullEnrich's enrichment, Dropcontact's
/// batch).
pub enum JobPoll {
    /// Still running: poll again.
    Pending,
    /// Done, with the values found (none: the provider's no match).
    Done(Vec<RawContact>),
}

/// The second half of an asynchronous provider's submit-then-poll protocol: waits `interval`,
/// asks `poll` about job `job_id`, and again, until the job is done; then its values as a
/// [`ProviderAnswer`] (none found: [`ProviderAnswer::NoMatch`]). Never returns while the job is
/// pending: the cascade's per-provider timeout cuts it.
///
/// Errors: the first error `poll` returns.
pub(crate) async fn poll_until_done<F, Fut>(
    provider: &'static str,
    job_id: &str,
    interval: Duration,
    mut poll: F,
) -> Result<ProviderAnswer, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<JobPoll, ProviderError>>,
{
    let mut polls = 0u32;
    loop {
        tokio::time::sleep(interval).await;
        polls += 1;
        if let JobPoll::Done(contacts) = poll().await? {
            tracing::debug!(provider, job_id, polls, found = contacts.len(), "job done");
            return Ok(if contacts.is_empty() {
                ProviderAnswer::NoMatch
            } else {
                ProviderAnswer::Found(contacts)
            });
        }
    }
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
    let at = DateTime::<Utc>::from(httpdate::parse_http_date(value).ok()?);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// The wait until the next whole second after `now`: the rate-limit wait of a provider that
/// documents a per-second limit and no header saying when to come back (Hunter's 15 requests
/// per second, Dropcontact's 60). Never zero: at least one millisecond.
pub(crate) fn until_next_second(now: DateTime<Utc>) -> Duration {
    let into_second = Duration::from_nanos(u64::from(now.timestamp_subsec_nanos() % 1_000_000_000));
    (Duration::from_secs(1) - into_second).max(Duration::from_millis(1))
}

/// The wait until the next calendar minute after `now` (UTC): the rate-limit wait of a provider
/// whose limit is a fixed window per calendar minute and that sends no header saying when to
/// come back (FullEnrich's 60 calls per minute). Never zero: at least one millisecond.
pub(crate) fn until_next_minute(now: DateTime<Utc>) -> Duration {
    let into_minute = Duration::from_secs(u64::from(now.second()))
        + Duration::from_nanos(u64::from(now.timestamp_subsec_nanos() % 1_000_000_000));
    Duration::from_secs(60)
        .saturating_sub(into_minute)
        .max(Duration::from_millis(1))
}

/// Maps a reqwest failure: its timeout to [`ProviderError::Timeout`], an undecodable body to
/// [`ProviderError::Malformed`], anything else to [`ProviderError::Transport`]. The URL is left
/// out of the text, since a query string may carry the person's name.
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

/// The body of `response`, at most [`MAX_PROVIDER_BODY_BYTES`] bytes of it.
///
/// A `Content-Length` above the cap is refused before any of the body is read. Otherwise the
/// body is read chunk by chunk (a chunked answer has no `Content-Length`) and reading stops at
/// the chunk that would take it past the cap, so that memory stays within the cap (plus one
/// chunk) whatever the provider sends; the response is dropped, which closes the connection.
///
/// Errors: [`ProviderError::BodyTooLarge`] past the cap; a failure while reading as
/// [`request_error`] maps it ([`ProviderError::Timeout`], [`ProviderError::Transport`]).
pub(crate) async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, ProviderError> {
    let limit = MAX_PROVIDER_BODY_BYTES;
    let declared = match response.content_length() {
        Some(length) => usize::try_from(length)
            .ok()
            .filter(|length| *length <= limit)
            .ok_or(ProviderError::BodyTooLarge { limit })?,
        None => 0,
    };
    let mut body = Vec::with_capacity(declared);
    while let Some(chunk) = response.chunk().await.map_err(request_error)? {
        if chunk.len() > limit - body.len() {
            return Err(ProviderError::BodyTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The body of an error answer (any status the adapter does not read as a success), for the
/// details it adds to the status: [`read_body`], except that a body past the cap reads as
/// empty, so that the status alone decides (a 503 or a 429 with an oversized error page stays
/// that error, and the cascade treats it as such). Nothing past the cap is read either way.
///
/// Errors: those of [`read_body`] other than [`ProviderError::BodyTooLarge`].
pub(crate) async fn read_error_body(response: reqwest::Response) -> Result<Vec<u8>, ProviderError> {
    match read_body(response).await {
        Err(ProviderError::BodyTooLarge { .. }) => Ok(Vec::new()),
        other => other,
    }
}

/// A loopback HTTP/1.1 server for body-size tests: it answers one connection with `200` and a
/// chunked body (no `Content-Length`) of `total` spaces, generated on the fly in 64 KiB chunks,
/// and stops as soon as the client hangs up. The handle resolves to the number of body bytes
/// written.
#[cfg(test)]
pub(crate) async fn chunked_server(
    total: usize,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<usize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const CHUNK: usize = 64 * 1024;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else {
            return 0;
        };
        let mut head = Vec::new();
        let mut buffer = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return 0,
                Ok(n) => head.extend_from_slice(&buffer[..n]),
            }
        }
        let status = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
        if socket.write_all(status).await.is_err() {
            return 0;
        }
        let spaces = vec![b' '; CHUNK];
        let mut written = 0;
        while written < total {
            let n = CHUNK.min(total - written);
            let mut frame = format!("{n:x}\r\n").into_bytes();
            frame.extend_from_slice(&spaces[..n]);
            frame.extend_from_slice(b"\r\n");
            if socket.write_all(&frame).await.is_err() {
                return written;
            }
            written += n;
        }
        let _ = socket.write_all(b"0\r\n\r\n").await;
        written
    });
    (address, server)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use reqwest::header::HeaderValue;
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};

    async fn answer_of(body: Vec<u8>) -> (MockServer, reqwest::Response) {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(body))
            .mount(&server)
            .await;
        let response = reqwest::get(server.uri()).await.unwrap();
        (server, response)
    }

    #[tokio::test]
    async fn read_body_refuses_a_declared_length_over_the_cap() {
        let (_server, response) = answer_of(vec![b'x'; 2 * 1024 * 1024]).await;
        assert_eq!(response.content_length(), Some(2 * 1024 * 1024));
        assert_eq!(
            read_body(response).await,
            Err(ProviderError::BodyTooLarge {
                limit: MAX_PROVIDER_BODY_BYTES
            })
        );
        let (_server, response) = answer_of(vec![b'x'; MAX_PROVIDER_BODY_BYTES + 1]).await;
        assert!(matches!(
            read_body(response).await,
            Err(ProviderError::BodyTooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn read_body_reads_a_body_up_to_the_cap() {
        let body: Vec<u8> = (0..MAX_PROVIDER_BODY_BYTES - 100)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        let (_server, response) = answer_of(body.clone()).await;
        assert_eq!(read_body(response).await, Ok(body));
        let (_server, response) = answer_of(vec![b'x'; MAX_PROVIDER_BODY_BYTES]).await;
        assert_eq!(
            read_body(response).await.map(|b| b.len()),
            Ok(MAX_PROVIDER_BODY_BYTES)
        );
    }

    #[tokio::test]
    async fn read_body_counts_a_chunked_body_as_it_comes() {
        let (address, _server) = chunked_server(200 * 1024).await;
        let response = reqwest::get(format!("http://{address}/")).await.unwrap();
        assert_eq!(response.content_length(), None);
        assert_eq!(read_body(response).await, Ok(vec![b' '; 200 * 1024]));

        let (address, _server) = chunked_server(MAX_PROVIDER_BODY_BYTES + 1).await;
        let response = reqwest::get(format!("http://{address}/")).await.unwrap();
        assert_eq!(
            read_body(response).await,
            Err(ProviderError::BodyTooLarge {
                limit: MAX_PROVIDER_BODY_BYTES
            })
        );
    }

    #[tokio::test]
    async fn an_oversized_error_body_reads_as_empty() {
        let (_server, response) = answer_of(vec![b'x'; 2 * 1024 * 1024]).await;
        assert_eq!(read_error_body(response).await, Ok(Vec::new()));
        let (_server, response) = answer_of(b"{\"error\": true}".to_vec()).await;
        assert_eq!(
            read_error_body(response).await,
            Ok(b"{\"error\": true}".to_vec())
        );
    }

    fn with_retry_after(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn the_next_second_and_minute_are_counted_from_now() {
        let now = Utc.with_ymd_and_hms(2026, 12, 2, 8, 10, 45).unwrap()
            + chrono::Duration::milliseconds(250);
        assert_eq!(until_next_second(now), Duration::from_millis(750));
        assert_eq!(until_next_minute(now), Duration::from_millis(14_750));
        let on_the_minute = Utc.with_ymd_and_hms(2026, 12, 2, 8, 11, 0).unwrap();
        assert_eq!(until_next_minute(on_the_minute), Duration::from_secs(60));
        assert_eq!(until_next_second(on_the_minute), Duration::from_secs(1));
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
        // RFC 9110 also accepts the obsolete RFC 850 and asctime formats.
        assert_eq!(
            retry_after_at(&with_retry_after("Wednesday, 21-Oct-15 07:28:00 GMT"), now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            retry_after_at(&with_retry_after("Wed Oct 21 07:28:00 2015"), now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(retry_after_at(&with_retry_after("soon"), now), None);
        assert_eq!(retry_after_at(&HeaderMap::new(), now), None);
    }
}
