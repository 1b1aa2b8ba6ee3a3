//! Hunter.io's Email Finder (API v2), as documented at
//! <https://hunter.io/api-documentation/v2#email-finder>.
//!
//! Request: `GET {base}/v2/email-finder?domain=stripe.com&first_name=Patrick&last_name=Collison`
//! with the header `X-API-KEY: KEY`. Hunter takes the key in the `api_key` query parameter or in
//! the `X-API-KEY` header (<https://hunter.io/api-documentation/v2#authentication>); the header
//! keeps it out of URLs, and so out of proxy and access logs.
//!
//! Answer (200):
//! ```json
//! { "data": { "first_name": "Patrick", "last_name": "Collison", "email": "patrick@stripe.com",
//!             "score": 97, "domain": "stripe.com", "accept_all": false, "position": "CEO",
//!             "sources": [...], "verification": { "date": "2024-01-10", "status": "valid" } },
//!   "meta": { "params": { ... } } }
//! ```
//! `score` is Hunter's confidence, 0-100, kept as the address's `confidence`;
//! `verification.status` is one of `valid`, `accept_all`, `unknown`, `invalid`, `webmail`,
//! `disposable` ([`email_status`] maps them to the API's vocabulary). An address Hunter marks
//! `invalid` or `disposable` is not the person's usable address: it is the no match, and so is
//! a 200 whose `data.email` (and `data.score`, `data.verification.status`) is `null`, Hunter's
//! answer when it finds no address. A 404 is *not* taken as a no match: in Hunter's status table it means the
//! requested resource does not exist, which is what a wrong base URL gives.
//!
//! Errors come as `{ "errors": [ { "id": "wrong_params", "code": 400, "details": "..." } ] }`
//! with the HTTP status codes of the documentation's "Errors" section, mapped here as:
//!
//! | status | Hunter's meaning | [`ProviderError`] |
//! |---|---|---|
//! | 401 | no valid API key | `Unauthorized` |
//! | 403 | "You have reached the rate limit" | `RateLimited`: a `Retry-After` if sent, else the next second |
//! | 429 | "You have reached your usage limit" | `QuotaExhausted`; `RateLimited` when a `Retry-After` says when to come back |
//! | 402 | (not documented by Hunter) payment required | `QuotaExhausted` |
//! | 451 | the person asked not to be processed | not an error: no match |
//! | other, 5xx | | `Status(code)` |
//!
//! **Rate limits** (the documentation's "Rate limits" and "Errors" sections): most endpoints,
//! the Email Finder among them, take 15 requests per second and 500 per minute per API key;
//! past that Hunter answers 403. Its 429 is a different thing, the plan's searches for the
//! billing period used up, which comes back only with the next period: `QuotaExhausted`.
//! Hunter documents no header saying when to come back (no `Retry-After`, no
//! `X-RateLimit-*`), so a 403's wait is the next whole second, where the per-second window
//! a burst runs into restarts; a 403 from the minute window comes back on the retry, and the
//! cascade moves on. A `Retry-After` a server sends anyway is honoured, on either status.
//!
//! Only the 200 body is read, and one longer than
//! [`MAX_PROVIDER_BODY_BYTES`](crate::providers::MAX_PROVIDER_BODY_BYTES) (1 MiB) is
//! [`ProviderError::BodyTooLarge`].

use async_trait::async_trait;
use chrono::Utc;
use reqwest::StatusCode;
use serde::Deserialize;

use crate::domain::Field;
use crate::identity::bare_domain;
use crate::providers::normalize::{email_status, is_storable_email};
use crate::providers::{
    Endpoint, MatchBasis, PersonQuery, Provider, ProviderAnswer, ProviderError, RawContact,
    confidence_of_score, non_blank, read_body, request_error, retry_after, until_next_second,
};

/// The request header that carries the API key (Hunter's documentation, "Authentication").
const API_KEY_HEADER: &str = "X-API-KEY";

/// The provider name used in configuration (`EMAIL_PROVIDERS`) and on stored contacts.
pub const NAME: &str = "hunter";

/// Hunter.io's Email Finder: finds a person's professional email address from their first and
/// last name and their company's domain. Emails only.
pub struct HunterProvider {
    endpoint: Endpoint,
}

impl HunterProvider {
    /// A provider calling `{base_url}/v2/email-finder` with `api_key` in `X-API-KEY`.
    ///
    /// `base_url` is the API origin without the version (`https://api.hunter.io`, or the local
    /// simulator's `http://127.0.0.1:PORT/hunter`); a trailing `/` is ignored. `http` carries
    /// the TLS and connection settings; the cascade bounds each call with its own timeout.
    pub fn new(
        http: reqwest::Client,
        base_url: impl Into<String>,
        api_key: impl Into<String>,
    ) -> Self {
        Self {
            endpoint: Endpoint::new(http, base_url, api_key),
        }
    }
}

/// What the Email Finder needs: first name, last name and company domain.
struct Inputs {
    first_name: String,
    last_name: String,
    domain: String,
}

fn inputs(person: &PersonQuery) -> Option<Inputs> {
    Some(Inputs {
        first_name: non_blank(&person.first_name)?.to_string(),
        last_name: non_blank(&person.last_name)?.to_string(),
        domain: bare_domain(non_blank(&person.company_domain)?)?,
    })
}

#[derive(Debug, Deserialize)]
struct FinderResponse {
    data: Option<FinderData>,
}

#[derive(Debug, Deserialize)]
struct FinderData {
    email: Option<String>,
    score: Option<f64>,
    verification: Option<Verification>,
}

#[derive(Debug, Deserialize)]
struct Verification {
    status: Option<String>,
}

#[async_trait]
impl Provider for HunterProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Hunter's Email Finder searches by first name, last name and company domain only (Hunter API
    /// docs, "Email Finder").
    fn match_basis(&self) -> MatchBasis {
        MatchBasis::NameAndDomain
    }

    /// True for [`Field::Emails`] when the person has a first name, a last name and a company
    /// domain; never for phones.
    fn can_search(&self, field: Field, person: &PersonQuery) -> bool {
        field == Field::Emails && inputs(person).is_some()
    }

    /// One Email Finder call. A person it cannot search (see [`Self::can_search`]) is a
    /// [`ProviderAnswer::NoMatch`] without a call. A found address comes back with `kind`
    /// `work`, Hunter's `verification.status` and its `score` as `confidence`; one Hunter
    /// marks `invalid` or `disposable` is a [`ProviderAnswer::NoMatch`].
    ///
    /// Errors: see the module docs; an unreadable 200 body is [`ProviderError::Malformed`], one
    /// past the 1 MiB cap is [`ProviderError::BodyTooLarge`].
    async fn find(
        &self,
        field: Field,
        person: &PersonQuery,
    ) -> Result<ProviderAnswer, ProviderError> {
        let Some(inputs) = inputs(person).filter(|_| field == Field::Emails) else {
            return Ok(ProviderAnswer::NoMatch);
        };
        let response = self
            .endpoint
            .http
            .get(format!("{}/v2/email-finder", self.endpoint.base_url))
            .header(API_KEY_HEADER, &self.endpoint.api_key)
            .query(&[
                ("domain", inputs.domain.as_str()),
                ("first_name", inputs.first_name.as_str()),
                ("last_name", inputs.last_name.as_str()),
            ])
            .send()
            .await
            .map_err(request_error)?;
        let status = response.status();
        let headers = response.headers().clone();
        match status {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => return Err(ProviderError::Unauthorized),
            StatusCode::FORBIDDEN => {
                return Err(ProviderError::RateLimited {
                    retry_after: retry_after(&headers)
                        .or_else(|| Some(until_next_second(Utc::now()))),
                });
            }
            StatusCode::TOO_MANY_REQUESTS => {
                return Err(match retry_after(&headers) {
                    Some(delay) => ProviderError::RateLimited {
                        retry_after: Some(delay),
                    },
                    None => ProviderError::QuotaExhausted,
                });
            }
            StatusCode::PAYMENT_REQUIRED => return Err(ProviderError::QuotaExhausted),
            StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS => return Ok(ProviderAnswer::NoMatch),
            other => return Err(ProviderError::Status(other.as_u16())),
        }
        let body = read_body(response).await?;
        let parsed: FinderResponse = serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Malformed(format!("email-finder body: {e}")))?;
        let data = parsed
            .data
            .ok_or_else(|| ProviderError::Malformed("email-finder body has no `data`".into()))?;
        let Some(email) = data.email.filter(|e| !e.trim().is_empty()) else {
            return Ok(ProviderAnswer::NoMatch);
        };
        let status = data.verification.and_then(|v| v.status);
        tracing::debug!(provider = NAME, score = ?data.score, status = ?status, "email finder answered");
        if !is_storable_email(status.as_deref()) {
            tracing::info!(
                provider = NAME,
                status = email_status(status.as_deref()),
                "the address found is not usable: no match"
            );
            return Ok(ProviderAnswer::NoMatch);
        }
        Ok(ProviderAnswer::Found(vec![RawContact {
            value: email,
            kind: Some("work".into()),
            status,
            confidence: confidence_of_score(data.score),
        }]))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use wiremock::matchers::{header, method, path, query_param, query_param_is_missing};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::providers::{MAX_PROVIDER_BODY_BYTES, chunked_server};

    const KEY: &str = "test-key-123";

    fn person() -> PersonQuery {
        PersonQuery {
            first_name: Some("Ada".into()),
            last_name: Some("Quill".into()),
            company_name: Some("Northwind Labs".into()),
            company_domain: Some("https://www.northwind.example/".into()),
            linkedin_url: None,
        }
    }

    async fn provider_for(status: u16, body: serde_json::Value) -> (MockServer, HunterProvider) {
        provider_with(ResponseTemplate::new(status).set_body_json(body)).await
    }

    async fn provider_with(response: ResponseTemplate) -> (MockServer, HunterProvider) {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v2/email-finder"))
            .respond_with(response)
            .mount(&server)
            .await;
        let provider = HunterProvider::new(reqwest::Client::new(), server.uri(), KEY);
        (server, provider)
    }

    fn found_body(email: serde_json::Value) -> serde_json::Value {
        json!({
            "data": {
                "first_name": "Ada", "last_name": "Quill", "email": email,
                "score": if email.is_null() { json!(null) } else { json!(94) },
                "domain": "northwind.example", "accept_all": false, "position": "CTO",
                "sources": [],
                "verification": { "date": "2024-01-10", "status": if email.is_null() { json!(null) } else { json!("valid") } }
            },
            "meta": { "params": { "first_name": "Ada", "last_name": "Quill", "domain": "northwind.example" } }
        })
    }

    #[tokio::test]
    async fn hit_returns_the_email_with_its_verification_status() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v2/email-finder"))
            .and(query_param("domain", "northwind.example"))
            .and(query_param("first_name", "Ada"))
            .and(query_param("last_name", "Quill"))
            .and(header("X-API-KEY", KEY))
            .and(query_param_is_missing("api_key"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(found_body(json!("ada@northwind.example"))),
            )
            .expect(1)
            .mount(&server)
            .await;
        let provider =
            HunterProvider::new(reqwest::Client::new(), format!("{}/", server.uri()), KEY);

        let answer = provider.find(Field::Emails, &person()).await.unwrap();

        assert_eq!(
            answer,
            ProviderAnswer::Found(vec![RawContact {
                value: "ada@northwind.example".into(),
                kind: Some("work".into()),
                status: Some("valid".into()),
                confidence: Some(94),
            }])
        );
    }

    fn answer_with(score: serde_json::Value, status: &str) -> serde_json::Value {
        let mut body = found_body(json!("ada@northwind.example"));
        body["data"]["score"] = score;
        body["data"]["verification"]["status"] = json!(status);
        body
    }

    #[tokio::test]
    async fn the_score_is_kept_as_the_confidence() {
        for (score, confidence) in [
            (json!(97), Some(97)),
            (json!(0), Some(0)),
            (json!(71.6), Some(72)),
            (json!(140), Some(100)),
            (json!(null), None),
        ] {
            let (_server, provider) = provider_for(200, answer_with(score.clone(), "valid")).await;
            match provider.find(Field::Emails, &person()).await {
                Ok(ProviderAnswer::Found(found)) => {
                    assert_eq!(found[0].confidence, confidence, "score {score}")
                }
                other => panic!("score {score}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_invalid_or_disposable_address_is_a_miss() {
        for status in ["invalid", "disposable"] {
            let (_server, provider) = provider_for(200, answer_with(json!(12), status)).await;
            assert_eq!(
                provider.find(Field::Emails, &person()).await,
                Ok(ProviderAnswer::NoMatch),
                "{status}"
            );
        }
        for status in ["accept_all", "webmail", "unknown"] {
            let (_server, provider) = provider_for(200, answer_with(json!(40), status)).await;
            assert!(
                matches!(
                    provider.find(Field::Emails, &person()).await,
                    Ok(ProviderAnswer::Found(_))
                ),
                "{status}"
            );
        }
    }

    #[tokio::test]
    async fn null_email_is_a_miss() {
        let (_server, provider) = provider_for(200, found_body(json!(null))).await;
        assert_eq!(
            provider.find(Field::Emails, &person()).await,
            Ok(ProviderAnswer::NoMatch)
        );
    }

    #[tokio::test]
    async fn legal_restriction_451_is_a_miss() {
        let body = json!({"errors": [{"id": "unavailable_for_legal_reasons", "code": 451, "details": "..."}]});
        let (_server, provider) = provider_for(451, body).await;
        assert_eq!(
            provider.find(Field::Emails, &person()).await,
            Ok(ProviderAnswer::NoMatch)
        );
    }

    #[tokio::test]
    async fn status_401_is_unauthorized() {
        let body = json!({"errors": [{"id": "authentication_failed", "code": 401, "details": "No user found for the API key supplied"}]});
        let (_server, provider) = provider_for(401, body).await;
        assert_eq!(
            provider.find(Field::Emails, &person()).await,
            Err(ProviderError::Unauthorized)
        );
    }

    #[tokio::test]
    async fn status_402_is_quota_exhausted() {
        let (_server, provider) = provider_for(402, json!({"errors": []})).await;
        assert_eq!(
            provider.find(Field::Emails, &person()).await,
            Err(ProviderError::QuotaExhausted)
        );
    }

    #[tokio::test]
    async fn status_403_is_the_rate_limit() {
        let response = ResponseTemplate::new(403).insert_header("Retry-After", "7");
        let (_server, provider) = provider_with(response).await;
        assert_eq!(
            provider.find(Field::Emails, &person()).await,
            Err(ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(7))
            })
        );
    }

    #[tokio::test]
    async fn status_403_without_retry_after_waits_for_the_next_second() {
        let body = json!({"errors": [{"id": "rate_limit", "code": 403, "details": "You have reached the rate limit"}]});
        let (_server, provider) = provider_for(403, body).await;
        let answer = provider.find(Field::Emails, &person()).await;
        let Err(ProviderError::RateLimited {
            retry_after: Some(wait),
        }) = answer
        else {
            panic!("expected a rate limit with a wait, got {answer:?}");
        };
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
    }

    #[tokio::test]
    async fn status_429_with_retry_after_is_rate_limited() {
        let response = ResponseTemplate::new(429)
            .insert_header("Retry-After", "30")
            .set_body_json(
                json!({"errors": [{"id": "too_many_requests", "code": 429, "details": "..."}]}),
            );
        let (_server, provider) = provider_with(response).await;
        assert_eq!(
            provider.find(Field::Emails, &person()).await,
            Err(ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(30))
            })
        );
    }

    #[tokio::test]
    async fn status_429_without_retry_after_is_the_usage_limit() {
        let body = json!({"errors": [{"id": "too_many_requests", "code": 429, "details": "You have reached your usage limit"}]});
        let (_server, provider) = provider_for(429, body).await;
        assert_eq!(
            provider.find(Field::Emails, &person()).await,
            Err(ProviderError::QuotaExhausted)
        );
    }

    #[tokio::test]
    async fn server_errors_keep_their_status() {
        let (_server, provider) = provider_for(503, json!({})).await;
        assert_eq!(
            provider.find(Field::Emails, &person()).await,
            Err(ProviderError::Status(503))
        );
    }

    #[tokio::test]
    async fn a_404_is_an_error_not_a_miss() {
        let body = json!({"errors": [{"id": "not_found", "code": 404, "details": "The requested resource does not exist"}]});
        let (_server, provider) = provider_for(404, body).await;
        assert_eq!(
            provider.find(Field::Emails, &person()).await,
            Err(ProviderError::Status(404))
        );
    }

    #[tokio::test]
    async fn malformed_json_is_malformed() {
        let response = ResponseTemplate::new(200).set_body_string("{\"data\": {\"email\": ");
        let (_server, provider) = provider_with(response).await;
        assert!(matches!(
            provider.find(Field::Emails, &person()).await,
            Err(ProviderError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn a_body_without_data_is_malformed() {
        let (_server, provider) = provider_for(200, json!({"meta": {}})).await;
        assert!(matches!(
            provider.find(Field::Emails, &person()).await,
            Err(ProviderError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn a_slow_answer_is_a_timeout_when_the_client_has_one() {
        let response = ResponseTemplate::new(200)
            .set_delay(Duration::from_secs(5))
            .set_body_json(found_body(json!("ada@northwind.example")));
        let (server, _) = provider_with(response).await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        let provider = HunterProvider::new(http, server.uri(), KEY);
        assert_eq!(
            provider.find(Field::Emails, &person()).await,
            Err(ProviderError::Timeout)
        );
    }

    #[tokio::test]
    async fn transport_errors_do_not_leak_the_api_key() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let provider =
            HunterProvider::new(reqwest::Client::new(), format!("http://{address}"), KEY);
        match provider.find(Field::Emails, &person()).await {
            Err(ProviderError::Transport(text)) => assert!(!text.contains(KEY), "{text}"),
            other => panic!("expected a transport error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn searches_emails_only_and_needs_names_and_domain() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(500))
            .expect(0)
            .mount(&server)
            .await;
        let provider = HunterProvider::new(reqwest::Client::new(), server.uri(), KEY);
        assert!(provider.can_search(Field::Emails, &person()));
        assert!(!provider.can_search(Field::Phones, &person()));
        let no_domain = PersonQuery {
            company_domain: Some("  ".into()),
            ..person()
        };
        let no_last_name = PersonQuery {
            last_name: None,
            ..person()
        };
        assert!(!provider.can_search(Field::Emails, &no_domain));
        assert!(!provider.can_search(Field::Emails, &no_last_name));
        assert_eq!(
            provider.find(Field::Phones, &person()).await,
            Ok(ProviderAnswer::NoMatch)
        );
        assert_eq!(
            provider.find(Field::Emails, &no_domain).await,
            Ok(ProviderAnswer::NoMatch)
        );
    }

    #[tokio::test]
    async fn names_are_sent_trimmed_and_the_key_only_in_its_header() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v2/email-finder"))
            .and(header("X-API-KEY", KEY))
            .and(query_param_is_missing("api_key"))
            .and(query_param("first_name", "Ada"))
            .and(query_param("last_name", "Quill"))
            .and(query_param_is_missing("company"))
            .respond_with(ResponseTemplate::new(200).set_body_json(found_body(json!(null))))
            .expect(1)
            .mount(&server)
            .await;
        let provider = HunterProvider::new(reqwest::Client::new(), server.uri(), KEY);
        let spaced = PersonQuery {
            first_name: Some("  Ada ".into()),
            last_name: Some(" Quill".into()),
            ..person()
        };
        assert_eq!(
            provider.find(Field::Emails, &spaced).await,
            Ok(ProviderAnswer::NoMatch)
        );
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_refused_from_its_length() {
        let response = ResponseTemplate::new(200).set_body_bytes(vec![b' '; 2 * 1024 * 1024]);
        let (_server, provider) = provider_with(response).await;
        assert_eq!(
            provider.find(Field::Emails, &person()).await,
            Err(ProviderError::BodyTooLarge {
                limit: MAX_PROVIDER_BODY_BYTES
            })
        );
    }

    #[tokio::test]
    async fn a_huge_chunked_body_is_cut_off_at_the_cap() {
        const TOTAL: usize = 64 * 1024 * 1024;
        let (address, server) = chunked_server(TOTAL).await;
        let provider =
            HunterProvider::new(reqwest::Client::new(), format!("http://{address}"), KEY);

        let started = std::time::Instant::now();
        let answer = provider.find(Field::Emails, &person()).await;
        let elapsed = started.elapsed();

        assert_eq!(
            answer,
            Err(ProviderError::BodyTooLarge {
                limit: MAX_PROVIDER_BODY_BYTES
            })
        );
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
        let written = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server sees the hang-up")
            .unwrap();
        assert!(
            written < TOTAL / 4,
            "the server wrote {written} of {TOTAL} bytes"
        );
    }

    #[tokio::test]
    async fn the_cascade_does_not_ask_again_after_an_oversized_body() {
        use crate::providers::cascade::{Cascade, CascadeOutcome};
        use std::sync::Arc;

        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![b' '; 2 * 1024 * 1024]))
            .expect(1)
            .mount(&server)
            .await;
        let provider = HunterProvider::new(reqwest::Client::new(), server.uri(), KEY);
        let cascade =
            Cascade::new(vec![Arc::new(provider)], vec![], Duration::from_secs(5)).with_retries(2);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);

        let outcome = cascade.run(Field::Emails, &person(), deadline).await;

        assert_eq!(
            outcome,
            CascadeOutcome::Failed {
                errors: vec![(
                    NAME.into(),
                    format!("response body larger than {MAX_PROVIDER_BODY_BYTES} bytes")
                )]
            }
        );
    }
}
