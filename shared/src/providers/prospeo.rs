//! Prospeo's Enrich Person API, as documented at <https://prospeo.io/api-docs/enrich-person>
//! (request, credits, errors), the "Person Object" page of the same documentation (the shape of
//! `person.email` and `person.mobile`) and <https://prospeo.io/api-docs/authentication> (host,
//! header, status codes). Prospeo's older Email Finder / Mobile Finder endpoints are superseded
//! by this one.
//!
//! Request: `POST {base}/enrich-person` with headers `X-KEY: KEY` and
//! `Content-Type: application/json`:
//! ```json
//! { "only_verified_email": true, "enrich_mobile": false,
//!   "data": { "first_name": "Eoghan", "last_name": "Mccabe", "company_website": "intercom.com",
//!             "company_name": "Intercom", "linkedin_url": "https://www.linkedin.com/in/eoghanmccabe" } }
//! ```
//! For phones the flags are `"enrich_mobile": true, "only_verified_mobile": true`, so that a
//! record without a mobile is Prospeo's `NO_MATCH` (not charged) instead of a 1-credit match
//! with nothing to store. Prospeo matches a person from a LinkedIn URL, or from a name with a
//! company (website or name).
//!
//! Answer (200):
//! ```json
//! { "error": false, "free_enrichment": false,
//!   "person": { "person_id": "aaaa...", "full_name": "Eoghan Mccabe", "linkedin_url": "...",
//!               "email":  { "status": "VERIFIED", "revealed": true, "email": "eoghan@intercom.com",
//!                           "verification_method": "BOUNCEBAN", "email_mx_provider": "Google" },
//!               "mobile": { "status": "VERIFIED", "revealed": true, "mobile": "+14155550132",
//!                           "mobile_national": "(415) 555-0132", "mobile_international": "+1 415-555-0132",
//!                           "mobile_country": "United States", "mobile_country_code": "US" }, ... },
//!   "company": { ... } }
//! ```
//! `status` is `VERIFIED` or `UNAVAILABLE`. A value that was not revealed (not paid for) comes
//! masked (`"+1 415-3**-****"`, `"eoghan.*****@intercom.com"`, which is still a syntactically
//! valid address): only `revealed: true` values without a `*` are taken. The mobile is read
//! from `mobile`, else `mobile_international`, else `mobile_national`, with
//! `mobile_country_code` (ISO 3166 alpha-2) as its region
//! ([`with_region_hint`]): a national writing is put in E.164 in the person's country, not the
//! worker's `PHONE_DEFAULT_REGION`.
//!
//! A miss may also come as a 200 `{ "error": false, "person": null }`: a no match like
//! `NO_MATCH` (a 200 without any `person` key is not Prospeo's shape: malformed).
//!
//! Errors: every answer has `error` (`true` on failure) and, on failure, `error_code`. Prospeo
//! sends most of them as a 400 with the code deciding what happened, so the code is read first:
//!
//! | status | `error_code` | result |
//! |---|---|---|
//! | 400 | `NO_MATCH`: no record (or none with a verified email / mobile, as asked) | no match (not an error) |
//! | any | `INSUFFICIENT_CREDITS` | `QuotaExhausted` (a 402 too) |
//! | 401, 403 | `INVALID_API_KEY`, `ACCOUNT_RESTRICTED` | `Unauthorized` |
//! | 429 | `RATE_LIMITED` | `RateLimited`, the wait read from the headers below |
//! | 400 | `INVALID_DATAPOINTS`, `INVALID_REQUEST` | `Status(400)` |
//! | 5xx | `INTERNAL_ERROR` | `Status(code)` |
//!
//! **Rate limits** (<https://prospeo.io/api-docs/rate-limits>, and the Help Center's "API Rate
//! Limits"): per plan, per second, per minute and per day (a rolling 24 hours), for the enrich
//! endpoints apart from the search ones; past one, a 429 `RATE_LIMITED`. Every answer carries
//! `x-minute-request-left` / `x-daily-request-left` (requests left) and
//! `x-minute-reset-seconds` / `x-daily-reset-seconds` (seconds until that window resets); no
//! `Retry-After`. A `RATE_LIMITED`'s wait ([`rate_limit_wait`]): a `Retry-After` if a server
//! sends one anyway; else the daily reset when no daily request is left; else the minute reset
//! when no minute request is left (or the count is not sent); else, with requests left in both,
//! it was the per-second limit: the next second. Unknown when no header tells.
//!
//! A body is read up to [`MAX_PROVIDER_BODY_BYTES`](crate::providers::MAX_PROVIDER_BODY_BYTES)
//! (1 MiB): a longer success body is [`ProviderError::BodyTooLarge`]; a longer error body is
//! ignored and the status decides.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use crate::domain::Field;
use crate::identity::bare_domain;
use crate::providers::normalize::{is_storable_email, with_region_hint};
use crate::providers::{
    Endpoint, MatchBasis, PersonQuery, Provider, ProviderAnswer, ProviderError, RawContact,
    non_blank, read_body, read_error_body, request_error, retry_after, until_next_second,
};

/// The provider name used in configuration (`EMAIL_PROVIDERS`, `PHONE_PROVIDERS`) and on stored
/// contacts.
pub const NAME: &str = "prospeo";

/// Prospeo's Enrich Person: one synchronous call matching a person from a LinkedIn URL, or from
/// a name and a company. Finds emails and mobile phones.
pub struct ProspeoProvider {
    endpoint: Endpoint,
}

impl ProspeoProvider {
    /// A provider calling `{base_url}/enrich-person` with `api_key` in `X-KEY`.
    ///
    /// `base_url` is the API origin (`https://api.prospeo.io`, or the local simulator's
    /// `http://127.0.0.1:PORT/prospeo`); a trailing `/` is ignored.
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

/// The request body of `POST /enrich-person`.
#[derive(Debug, Serialize)]
struct EnrichRequest {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    only_verified_email: bool,
    enrich_mobile: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    only_verified_mobile: bool,
    data: Datapoints,
}

/// Prospeo's matching datapoints (`data`), the ones the person has.
#[derive(Debug, Serialize)]
struct Datapoints {
    #[serde(skip_serializing_if = "Option::is_none")]
    first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    company_website: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    company_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    linkedin_url: Option<String>,
}

/// The datapoints for `person`, or `None` when Prospeo cannot match it: it needs a LinkedIn URL,
/// or a first and last name with a company website or name.
fn datapoints(person: &PersonQuery) -> Option<Datapoints> {
    let data = Datapoints {
        first_name: non_blank(&person.first_name).map(str::to_string),
        last_name: non_blank(&person.last_name).map(str::to_string),
        company_website: non_blank(&person.company_domain).and_then(bare_domain),
        company_name: non_blank(&person.company_name).map(str::to_string),
        linkedin_url: non_blank(&person.linkedin_url).map(str::to_string),
    };
    let by_name = data.first_name.is_some()
        && data.last_name.is_some()
        && (data.company_website.is_some() || data.company_name.is_some());
    (data.linkedin_url.is_some() || by_name).then_some(data)
}

fn request(field: Field, data: Datapoints) -> EnrichRequest {
    match field {
        Field::Emails => EnrichRequest {
            only_verified_email: true,
            enrich_mobile: false,
            only_verified_mobile: false,
            data,
        },
        Field::Phones => EnrichRequest {
            only_verified_email: false,
            enrich_mobile: true,
            only_verified_mobile: true,
            data,
        },
    }
}

#[derive(Debug, Deserialize)]
struct EnrichResponse {
    #[serde(default)]
    error: bool,
    error_code: Option<String>,
    /// `None`: no `person` key; `Some(None)`: `"person": null`, Prospeo's 200 miss.
    #[serde(default, deserialize_with = "present")]
    person: Option<Option<Person>>,
}

/// A key that is present, `null` or not: `Some` of its value, so that a missing key (`None`,
/// through `#[serde(default)]`) and a `null` one differ.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Deserialize)]
struct Person {
    email: Option<EmailDetails>,
    mobile: Option<MobileDetails>,
}

#[derive(Debug, Deserialize)]
struct EmailDetails {
    status: Option<String>,
    revealed: Option<bool>,
    email: Option<String>,
}

#[derive(Debug, Deserialize)]
struct MobileDetails {
    status: Option<String>,
    revealed: Option<bool>,
    mobile: Option<String>,
    mobile_international: Option<String>,
    mobile_national: Option<String>,
    mobile_country_code: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorResponse {
    error_code: Option<String>,
}

/// A revealed, unmasked value; `None` otherwise.
fn revealed(revealed: Option<bool>, value: Option<&str>) -> Option<String> {
    let value = value.map(str::trim).filter(|v| !v.is_empty())?;
    (revealed == Some(true) && !value.contains('*')).then(|| value.to_string())
}

/// The contacts of `field` in a matched person.
fn collect(field: Field, person: &Person) -> Vec<RawContact> {
    match field {
        Field::Emails => person
            .email
            .as_ref()
            .and_then(|e| {
                let value = revealed(e.revealed, e.email.as_deref())?;
                is_storable_email(e.status.as_deref()).then(|| RawContact {
                    value,
                    kind: Some("work".into()),
                    status: e.status.clone(),
                    confidence: None,
                })
            })
            .into_iter()
            .collect(),
        Field::Phones => person
            .mobile
            .as_ref()
            .and_then(|m| {
                let number = [&m.mobile, &m.mobile_international, &m.mobile_national]
                    .into_iter()
                    .filter_map(|v| v.as_deref())
                    .find(|v| !v.trim().is_empty());
                let value = revealed(m.revealed, number)?;
                Some(RawContact {
                    value: with_region_hint(&value, m.mobile_country_code.as_deref()),
                    kind: Some("mobile".into()),
                    status: m.status.clone(),
                    confidence: None,
                })
            })
            .into_iter()
            .collect(),
    }
}

/// Requests left in the current minute.
pub const MINUTE_REQUESTS_LEFT: &str = "x-minute-request-left";
/// Seconds until the minute window resets.
pub const MINUTE_RESET_SECONDS: &str = "x-minute-reset-seconds";
/// Requests left in the current (rolling) day.
pub const DAILY_REQUESTS_LEFT: &str = "x-daily-request-left";
/// Seconds until the daily window frees a request.
pub const DAILY_RESET_SECONDS: &str = "x-daily-reset-seconds";

/// The wait of a `RATE_LIMITED` answer, from its headers at time `now` (see the module docs,
/// "Rate limits"). `None` when no header tells.
pub(crate) fn rate_limit_wait(
    headers: &reqwest::header::HeaderMap,
    now: DateTime<Utc>,
) -> Option<Duration> {
    if let Some(wait) = retry_after(headers) {
        return Some(wait);
    }
    let number = |name: &str| {
        headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n >= 0.0)
    };
    let seconds = |name: &str| number(name).map(Duration::from_secs_f64);
    let daily_left = number(DAILY_REQUESTS_LEFT);
    let minute_left = number(MINUTE_REQUESTS_LEFT);
    if daily_left == Some(0.0)
        && let Some(wait) = seconds(DAILY_RESET_SECONDS)
    {
        return Some(wait);
    }
    if minute_left.is_none_or(|left| left == 0.0)
        && let Some(wait) = seconds(MINUTE_RESET_SECONDS)
    {
        return Some(wait);
    }
    minute_left
        .is_some_and(|left| left > 0.0)
        .then(|| until_next_second(now))
}

/// What an `error_code` means, when it decides the outcome by itself.
fn by_error_code(
    code: &str,
    headers: &reqwest::header::HeaderMap,
) -> Option<Result<ProviderAnswer, ProviderError>> {
    Some(match code {
        "NO_MATCH" => Ok(ProviderAnswer::NoMatch),
        "INSUFFICIENT_CREDITS" => Err(ProviderError::QuotaExhausted),
        "INVALID_API_KEY" | "ACCOUNT_RESTRICTED" => Err(ProviderError::Unauthorized),
        "RATE_LIMITED" => Err(ProviderError::RateLimited {
            retry_after: rate_limit_wait(headers, Utc::now()),
        }),
        _ => return None,
    })
}

#[async_trait]
impl Provider for ProspeoProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    /// A profile lookup: with a LinkedIn URL, Prospeo matches the profile (Prospeo docs,
    /// "Enrich Person"); without one, name and company.
    fn match_basis(&self) -> MatchBasis {
        MatchBasis::LinkedinFirst
    }

    /// True, for either field, when the person has a LinkedIn URL, or a first and last name
    /// with a company domain or name.
    fn can_search(&self, _field: Field, person: &PersonQuery) -> bool {
        datapoints(person).is_some()
    }

    /// One Enrich Person call. A person it cannot search is a [`ProviderAnswer::NoMatch`]
    /// without a call. A found email comes back with `kind` `work`, a mobile with `kind`
    /// `mobile`, each with Prospeo's `status` (`VERIFIED`).
    ///
    /// A 200 with `"person": null` is a [`ProviderAnswer::NoMatch`].
    ///
    /// Errors: see the module docs; an unreadable 200 body, or one without a `person` key, is
    /// [`ProviderError::Malformed`].
    async fn find(
        &self,
        field: Field,
        person: &PersonQuery,
    ) -> Result<ProviderAnswer, ProviderError> {
        let Some(data) = datapoints(person) else {
            return Ok(ProviderAnswer::NoMatch);
        };
        let response = self
            .endpoint
            .http
            .post(format!("{}/enrich-person", self.endpoint.base_url))
            .header("X-KEY", &self.endpoint.api_key)
            .json(&request(field, data))
            .send()
            .await
            .map_err(request_error)?;
        let status = response.status();
        let headers = response.headers().clone();
        if status != StatusCode::OK {
            let body = read_error_body(response).await?;
            if status.is_client_error()
                && let Ok(error) = serde_json::from_slice::<ErrorResponse>(&body)
                && let Some(outcome) = error
                    .error_code
                    .as_deref()
                    .and_then(|code| by_error_code(code, &headers))
            {
                return outcome;
            }
            return Err(match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ProviderError::Unauthorized,
                StatusCode::PAYMENT_REQUIRED => ProviderError::QuotaExhausted,
                StatusCode::TOO_MANY_REQUESTS => ProviderError::RateLimited {
                    retry_after: rate_limit_wait(&headers, Utc::now()),
                },
                other => ProviderError::Status(other.as_u16()),
            });
        }
        let body = read_body(response).await?;
        let parsed: EnrichResponse = serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Malformed(format!("enrich-person body: {e}")))?;
        if parsed.error {
            let code = parsed.error_code.unwrap_or_default();
            return by_error_code(&code, &headers).unwrap_or_else(|| {
                Err(ProviderError::Malformed(format!(
                    "enrich-person answered 200 with error {code:?}"
                )))
            });
        }
        let person = parsed
            .person
            .ok_or_else(|| ProviderError::Malformed("enrich-person body has no `person`".into()))?;
        let Some(person) = person else {
            tracing::debug!(
                provider = NAME,
                "enrich-person answered person: null: no match"
            );
            return Ok(ProviderAnswer::NoMatch);
        };
        let contacts = collect(field, &person);
        if contacts.is_empty() {
            return Ok(ProviderAnswer::NoMatch);
        }
        Ok(ProviderAnswer::Found(contacts))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use wiremock::matchers::{body_json, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;

    const KEY: &str = "prospeo-test-key";

    fn by_name() -> PersonQuery {
        PersonQuery {
            first_name: Some(" Ada ".into()),
            last_name: Some("Quill".into()),
            company_name: Some("Northwind Labs".into()),
            company_domain: Some("https://www.northwind.example/".into()),
            linkedin_url: None,
        }
    }

    fn by_profile() -> PersonQuery {
        PersonQuery {
            linkedin_url: Some("https://www.linkedin.com/in/ada-quill-nw/".into()),
            ..PersonQuery::default()
        }
    }

    fn matched(email: serde_json::Value, mobile: serde_json::Value) -> serde_json::Value {
        json!({
            "error": false,
            "free_enrichment": false,
            "person": {
                "person_id": "aaaa0000",
                "first_name": "Ada", "last_name": "Quill", "full_name": "Ada Quill",
                "linkedin_url": "https://www.linkedin.com/in/ada-quill-nw",
                "current_job_title": "CTO",
                "email": email,
                "mobile": mobile,
                "location": null,
                "skills": []
            },
            "company": { "name": "Northwind Labs", "website": "https://northwind.example", "domain": "northwind.example" }
        })
    }

    fn verified_email() -> serde_json::Value {
        json!({ "status": "VERIFIED", "revealed": true, "email": "ada.quill@northwind.example",
                "verification_method": "SMTP", "email_mx_provider": "Google" })
    }

    fn revealed_mobile() -> serde_json::Value {
        json!({ "status": "VERIFIED", "revealed": true, "mobile": "+14155550132",
                "mobile_national": "(415) 555-0132", "mobile_international": "+1 415-555-0132",
                "mobile_country": "United States", "mobile_country_code": "US" })
    }

    fn masked_mobile() -> serde_json::Value {
        json!({ "status": "VERIFIED", "revealed": false, "mobile": "+1 415-5**-****",
                "mobile_national": "(415) 5**-****", "mobile_international": "+1 415-5**-****",
                "mobile_country": "United States", "mobile_country_code": "US" })
    }

    fn error(code: &str) -> serde_json::Value {
        json!({ "error": true, "error_code": code })
    }

    async fn provider_with(response: ResponseTemplate) -> (MockServer, ProspeoProvider) {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/enrich-person"))
            .respond_with(response)
            .mount(&server)
            .await;
        let provider = ProspeoProvider::new(reqwest::Client::new(), server.uri(), KEY);
        (server, provider)
    }

    async fn provider_for(status: u16, body: serde_json::Value) -> (MockServer, ProspeoProvider) {
        provider_with(ResponseTemplate::new(status).set_body_json(body)).await
    }

    #[tokio::test]
    async fn hit_by_name_returns_the_verified_email() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/enrich-person"))
            .and(header("X-KEY", KEY))
            .and(header("content-type", "application/json"))
            .and(body_json(json!({
                "only_verified_email": true,
                "enrich_mobile": false,
                "data": {
                    "first_name": "Ada", "last_name": "Quill",
                    "company_website": "northwind.example", "company_name": "Northwind Labs"
                }
            })))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(matched(verified_email(), masked_mobile())),
            )
            .expect(1)
            .mount(&server)
            .await;
        let provider =
            ProspeoProvider::new(reqwest::Client::new(), format!("{}/", server.uri()), KEY);

        let answer = provider.find(Field::Emails, &by_name()).await.unwrap();

        assert_eq!(
            answer,
            ProviderAnswer::Found(vec![RawContact {
                value: "ada.quill@northwind.example".into(),
                kind: Some("work".into()),
                status: Some("VERIFIED".into()),
                confidence: None,
            }])
        );
    }

    #[tokio::test]
    async fn hit_by_linkedin_reveals_the_mobile() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/enrich-person"))
            .and(body_json(json!({
                "enrich_mobile": true,
                "only_verified_mobile": true,
                "data": { "linkedin_url": "https://www.linkedin.com/in/ada-quill-nw/" }
            })))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(matched(verified_email(), revealed_mobile())),
            )
            .expect(1)
            .mount(&server)
            .await;
        let provider = ProspeoProvider::new(reqwest::Client::new(), server.uri(), KEY);

        let answer = provider.find(Field::Phones, &by_profile()).await.unwrap();

        assert_eq!(
            answer,
            ProviderAnswer::Found(vec![RawContact {
                value: "+14155550132".into(),
                kind: Some("mobile".into()),
                status: Some("VERIFIED".into()),
                confidence: None,
            }])
        );
    }

    #[tokio::test]
    async fn person_null_is_a_miss() {
        let body = json!({ "error": false, "free_enrichment": false, "person": null });
        let (_server, provider) = provider_for(200, body).await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Ok(ProviderAnswer::NoMatch)
        );
        assert_eq!(
            provider.find(Field::Phones, &by_profile()).await,
            Ok(ProviderAnswer::NoMatch)
        );
    }

    #[tokio::test]
    async fn the_mobile_country_code_is_the_region_of_a_national_number() {
        let uk_national = json!({ "status": "VERIFIED", "revealed": true, "mobile": null,
            "mobile_national": "07911 123456", "mobile_international": null,
            "mobile_country": "United Kingdom", "mobile_country_code": "GB" });
        let (_server, provider) = provider_for(200, matched(verified_email(), uk_national)).await;
        let Ok(ProviderAnswer::Found(found)) = provider.find(Field::Phones, &by_profile()).await
        else {
            panic!("expected the mobile");
        };
        assert_eq!(found[0].value, "+447911123456");
        // Read in the worker's default region (US), the same digits are no number at all.
        assert_eq!(
            crate::providers::normalize::normalize_phone(
                "07911 123456",
                phonenumber::country::Id::US
            ),
            None
        );

        // An international writing is kept; a country code that is no region leaves the
        // number as written, for the cascade's default region.
        let lowercase = json!({ "status": "VERIFIED", "revealed": true, "mobile": "(415) 555-0132",
            "mobile_country_code": "us" });
        let unknown = json!({ "status": "VERIFIED", "revealed": true, "mobile": "(415) 555-0132",
            "mobile_country_code": "Unknown" });
        for (mobile, expected) in [
            (revealed_mobile(), "+14155550132"),
            (lowercase, "+14155550132"),
            (unknown, "(415) 555-0132"),
        ] {
            let (_server, provider) = provider_for(200, matched(verified_email(), mobile)).await;
            let Ok(ProviderAnswer::Found(found)) =
                provider.find(Field::Phones, &by_profile()).await
            else {
                panic!("expected the mobile");
            };
            assert_eq!(found[0].value, expected);
        }
    }

    #[tokio::test]
    async fn no_match_error_code_is_a_miss() {
        let (_server, provider) = provider_for(400, error("NO_MATCH")).await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Ok(ProviderAnswer::NoMatch)
        );
        assert_eq!(
            provider.find(Field::Phones, &by_name()).await,
            Ok(ProviderAnswer::NoMatch)
        );
    }

    #[tokio::test]
    async fn masked_or_unavailable_values_are_a_miss() {
        let masked_email = json!({ "status": "VERIFIED", "revealed": false, "email": "ada.*****@northwind.example" });
        let (_server, provider) = provider_for(200, matched(masked_email, masked_mobile())).await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Ok(ProviderAnswer::NoMatch)
        );
        assert_eq!(
            provider.find(Field::Phones, &by_name()).await,
            Ok(ProviderAnswer::NoMatch)
        );
        // Revealed but still starred: never stored.
        let starred = json!({ "status": "VERIFIED", "revealed": true, "email": "ada.*****@northwind.example" });
        let unavailable = json!({ "status": "UNAVAILABLE", "revealed": false, "email": null });
        for email in [starred, unavailable] {
            let (_server, provider) = provider_for(200, matched(email, json!(null))).await;
            assert_eq!(
                provider.find(Field::Emails, &by_name()).await,
                Ok(ProviderAnswer::NoMatch)
            );
        }
    }

    #[tokio::test]
    async fn status_401_is_unauthorized() {
        let (_server, provider) = provider_for(401, error("INVALID_API_KEY")).await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Err(ProviderError::Unauthorized)
        );
        let (_server, provider) = provider_with(ResponseTemplate::new(403)).await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Err(ProviderError::Unauthorized)
        );
    }

    #[tokio::test]
    async fn insufficient_credits_and_402_are_quota_exhausted() {
        let (_server, provider) = provider_for(400, error("INSUFFICIENT_CREDITS")).await;
        assert_eq!(
            provider.find(Field::Phones, &by_name()).await,
            Err(ProviderError::QuotaExhausted)
        );
        let (_server, provider) = provider_for(402, json!({"error": true})).await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Err(ProviderError::QuotaExhausted)
        );
    }

    #[tokio::test]
    async fn status_429_carries_retry_after_when_sent() {
        let response = ResponseTemplate::new(429)
            .insert_header("Retry-After", "9")
            .set_body_json(error("RATE_LIMITED"));
        let (_server, provider) = provider_with(response).await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Err(ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(9))
            })
        );
        let (_server, provider) = provider_with(ResponseTemplate::new(429)).await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Err(ProviderError::RateLimited { retry_after: None })
        );
    }

    #[tokio::test]
    async fn rate_limited_waits_for_the_window_its_headers_show_spent() {
        let limited = |pairs: &[(&str, &str)]| {
            let mut response = ResponseTemplate::new(429).set_body_json(error("RATE_LIMITED"));
            for (name, value) in pairs {
                response = response.insert_header(*name, *value);
            }
            response
        };
        let cases: [(&[(&str, &str)], Duration); 3] = [
            // The minute's requests are spent: the minute's reset.
            (
                &[
                    (MINUTE_REQUESTS_LEFT, "0"),
                    (MINUTE_RESET_SECONDS, "42"),
                    (DAILY_REQUESTS_LEFT, "1200"),
                    (DAILY_RESET_SECONDS, "86000"),
                ],
                Duration::from_secs(42),
            ),
            // The day's are: the daily reset, however soon the minute's.
            (
                &[
                    (MINUTE_REQUESTS_LEFT, "0"),
                    (MINUTE_RESET_SECONDS, "42"),
                    (DAILY_REQUESTS_LEFT, "0"),
                    (DAILY_RESET_SECONDS, "3600"),
                ],
                Duration::from_secs(3600),
            ),
            // Only the reset is sent: the minute's.
            (&[(MINUTE_RESET_SECONDS, "7")], Duration::from_secs(7)),
        ];
        for (headers, expected) in cases {
            let (_server, provider) = provider_with(limited(headers)).await;
            assert_eq!(
                provider.find(Field::Emails, &by_name()).await,
                Err(ProviderError::RateLimited {
                    retry_after: Some(expected)
                }),
                "{headers:?}"
            );
        }
        // Requests left in the minute and the day: the per-second limit, the next second.
        let (_server, provider) = provider_with(limited(&[
            (MINUTE_REQUESTS_LEFT, "12"),
            (MINUTE_RESET_SECONDS, "42"),
            (DAILY_REQUESTS_LEFT, "1200"),
        ]))
        .await;
        let answer = provider.find(Field::Emails, &by_name()).await;
        assert!(
            matches!(answer, Err(ProviderError::RateLimited { retry_after: Some(wait) }) if wait <= Duration::from_secs(1)),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn other_request_errors_keep_their_status() {
        let (_server, provider) = provider_for(400, error("INVALID_DATAPOINTS")).await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Err(ProviderError::Status(400))
        );
        // A 404 with Prospeo's NO_MATCH would be a miss; a bare 404 is a wrong base URL.
        let (_server, provider) =
            provider_with(ResponseTemplate::new(404).set_body_string("Not Found")).await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Err(ProviderError::Status(404))
        );
    }

    #[tokio::test]
    async fn server_errors_keep_their_status() {
        let (_server, provider) = provider_for(500, error("INTERNAL_ERROR")).await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Err(ProviderError::Status(500))
        );
        let (_server, provider) = provider_with(ResponseTemplate::new(503)).await;
        assert_eq!(
            provider.find(Field::Phones, &by_name()).await,
            Err(ProviderError::Status(503))
        );
    }

    #[tokio::test]
    async fn malformed_json_is_malformed() {
        let response =
            ResponseTemplate::new(200).set_body_string("{\"error\": false, \"person\": {");
        let (_server, provider) = provider_with(response).await;
        assert!(matches!(
            provider.find(Field::Emails, &by_name()).await,
            Err(ProviderError::Malformed(_))
        ));
        let (_server, provider) = provider_for(200, json!({"error": false})).await;
        assert!(matches!(
            provider.find(Field::Emails, &by_name()).await,
            Err(ProviderError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn can_search_with_linkedin_or_name_and_company() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(500))
            .expect(0)
            .mount(&server)
            .await;
        let provider = ProspeoProvider::new(reqwest::Client::new(), server.uri(), KEY);
        for field in [Field::Emails, Field::Phones] {
            assert!(provider.can_search(field, &by_name()));
            assert!(provider.can_search(field, &by_profile()));
            let company_name_only = PersonQuery {
                company_domain: None,
                ..by_name()
            };
            assert!(provider.can_search(field, &company_name_only));
            let no_company = PersonQuery {
                company_domain: Some(" ".into()),
                company_name: None,
                ..by_name()
            };
            assert!(!provider.can_search(field, &no_company));
            let no_last_name = PersonQuery {
                last_name: None,
                ..by_name()
            };
            assert!(!provider.can_search(field, &no_last_name));
            assert_eq!(
                provider.find(field, &no_company).await,
                Ok(ProviderAnswer::NoMatch)
            );
        }
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_an_error_and_an_error_body_over_it_leaves_the_status() {
        let (_server, provider) =
            provider_with(ResponseTemplate::new(200).set_body_bytes(vec![b' '; 2 * 1024 * 1024]))
                .await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Err(ProviderError::BodyTooLarge {
                limit: crate::providers::MAX_PROVIDER_BODY_BYTES
            })
        );
        let limited = ResponseTemplate::new(429)
            .insert_header("Retry-After", "3")
            .set_body_bytes(vec![b' '; 2 * 1024 * 1024]);
        let (_server, provider) = provider_with(limited).await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Err(ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(3))
            })
        );
    }
}
