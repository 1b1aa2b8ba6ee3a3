//! People Data Labs' Person Enrichment API (v5), as documented at
//! <https://docs.peopledatalabs.com/docs/reference-person-enrichment-api> (input parameters,
//! output response) and <https://docs.peopledatalabs.com/docs/errors> (status codes).
//!
//! Request: `GET {base}/v5/person/enrich` with header `X-Api-Key: KEY` and query parameters
//! `profile` (a LinkedIn URL), `first_name`, `last_name`, `company` (a company name or website),
//! `required`, so that a profile without the wanted field is a 404, which PDL does not charge
//! (it charges per match), and `min_likelihood` (1-10, `PDL_MIN_LIKELIHOOD`, default
//! [`DEFAULT_MIN_LIKELIHOOD`]), so that a weaker match is PDL's 404 too instead of someone
//! else's contacts.
//!
//! Answer (200):
//! ```json
//! { "status": 200, "likelihood": 9,
//!   "data": { "full_name": "sean thorne", "linkedin_url": "linkedin.com/in/seanthorne",
//!             "work_email": "sean@peopledatalabs.com", "personal_emails": ["sthorne@example.com"],
//!             "emails": [ { "address": "sean@peopledatalabs.com", "type": "current_professional" } ],
//!             "mobile_phone": "+14155550132", "phone_numbers": ["+14155550132"], ... } }
//! ```
//! `likelihood` is PDL's confidence that the record is the person asked about, 1-10 (PDL docs,
//! "Output Response"); each value found keeps it, times ten, as its 0-100 `confidence`. A 200
//! whose `likelihood` is below `min_likelihood` (PDL applies the parameter itself; this guards
//! against a server that does not) is a no match. Fields without data are `null`. On free
//! plans the contact fields hold `true`/`false` (whether a value exists) instead of values:
//! they give nothing to store, so such an answer is a no match (logged as a warning).
//!
//! Errors are `{ "status": 404, "error": { "type": "not_found", "message": "..." } }`; `type`
//! may also come as a list (`["not_found"]`), read as the same error. Mapped as:
//!
//! | status | PDL's `error.type` | result |
//! |---|---|---|
//! | 404 | `not_found`: no record matches | no match (not an error) |
//! | 401 | `authentication_error` | `Unauthorized` (403 too) |
//! | 402 | `payment_required`: all matches of the account used | `QuotaExhausted` |
//! | 429 | `rate_limit_error` | `RateLimited`, the wait read from the headers below |
//! | other, 5xx | `invalid_request_error`, `api_error` | `Status(code)` |
//!
//! **Rate limits** (<https://docs.peopledatalabs.com/docs/usage-limits>, "Fix 429 rate limit
//! errors" at <https://docs.peopledatalabs.com/support/troubleshooting/rate-limit-errors>): a
//! fixed window per API key and endpoint; PDL sends no `Retry-After` but, on every answer,
//! `x-ratelimit-reset`, the UTC time the window resets (`"2022-02-23T20:19:55Z"` in the docs'
//! sample), and `x-ratelimit-remaining` / `x-ratelimit-limit`, an object per window
//! (`{"minute": 0, "day": null, "month": null}`, written in the docs' sample as Python prints it,
//! `None` for `null`). A 429's wait ([`rate_limit_wait`]) is a `Retry-After` if a server sends
//! one anyway; else the time until `x-ratelimit-reset`, which is read as an RFC 3339 or HTTP
//! date (UTC when it has no offset), as epoch seconds (the header's pre-2022 form, or
//! milliseconds when that large), as a number of seconds to wait when small, or as an object
//! of those per window: then the window(s) `x-ratelimit-remaining` shows at 0 decide (the
//! latest of their resets), else the earliest reset given. A reset in the past waits nothing;
//! no readable reset leaves the wait unknown.
//!
//! A 404 whose body is not PDL's `not_found` error (a wrong base URL, a proxy page) is
//! `Status(404)`, so that a misconfiguration is not taken for "nobody is ever found" (so is a
//! 404 whose body is too long to read).
//!
//! A body is read up to [`MAX_PROVIDER_BODY_BYTES`](crate::providers::MAX_PROVIDER_BODY_BYTES)
//! (1 MiB): a longer success body is [`ProviderError::BodyTooLarge`]; a longer error body is
//! ignored and the status decides.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

use crate::domain::Field;
use crate::identity::bare_domain;
use crate::providers::{
    Endpoint, MatchBasis, PersonQuery, Provider, ProviderAnswer, ProviderError, RawContact,
    confidence_of_likelihood, non_blank, read_body, read_error_body, request_error, retry_after,
};

/// The provider name used in configuration (`EMAIL_PROVIDERS`, `PHONE_PROVIDERS`) and on stored
/// contacts.
pub const NAME: &str = "pdl";

/// The `min_likelihood` sent when none is configured (`PDL_MIN_LIKELIHOOD`): 6. PDL's
/// likelihood is logarithmic; below 6 a match is too often someone else to store its contacts.
pub const DEFAULT_MIN_LIKELIHOOD: u8 = 6;

/// The range of `min_likelihood`, PDL's likelihood scale: 1 to 10.
pub const LIKELIHOOD_RANGE: std::ops::RangeInclusive<u8> = 1..=10;

/// People Data Labs' Person Enrichment: one-to-one match of a person from a LinkedIn URL, or
/// from a name and an employer. Finds emails and phones.
pub struct PdlProvider {
    endpoint: Endpoint,
    min_likelihood: u8,
}

impl PdlProvider {
    /// A provider calling `{base_url}/v5/person/enrich` with `api_key` in `X-Api-Key`, asking
    /// for matches of likelihood [`DEFAULT_MIN_LIKELIHOOD`] or more.
    ///
    /// `base_url` is the API origin without the version (`https://api.peopledatalabs.com`, or
    /// the local simulator's `http://127.0.0.1:PORT/pdl`); a trailing `/` is ignored.
    pub fn new(
        http: reqwest::Client,
        base_url: impl Into<String>,
        api_key: impl Into<String>,
    ) -> Self {
        Self {
            endpoint: Endpoint::new(http, base_url, api_key),
            min_likelihood: DEFAULT_MIN_LIKELIHOOD,
        }
    }

    /// The same provider, sending `min_likelihood` (clamped to [`LIKELIHOOD_RANGE`]): PDL
    /// answers a weaker match as its 404 `not_found`, a no match it does not charge.
    pub fn with_min_likelihood(mut self, min_likelihood: u8) -> Self {
        self.min_likelihood =
            min_likelihood.clamp(*LIKELIHOOD_RANGE.start(), *LIKELIHOOD_RANGE.end());
        self
    }

    /// The `min_likelihood` it sends.
    pub fn min_likelihood(&self) -> u8 {
        self.min_likelihood
    }
}

/// The query parameters for `person`, or `None` when PDL cannot match it: it needs a LinkedIn
/// URL, or a first and last name with a company (domain preferred over name, as it is the more
/// precise of the two).
fn query(field: Field, person: &PersonQuery) -> Option<Vec<(&'static str, String)>> {
    let profile = non_blank(&person.linkedin_url);
    let first = non_blank(&person.first_name);
    let last = non_blank(&person.last_name);
    let company = non_blank(&person.company_domain)
        .and_then(bare_domain)
        .or_else(|| non_blank(&person.company_name).map(str::to_string));
    let by_name = first.is_some() && last.is_some() && company.is_some();
    if profile.is_none() && !by_name {
        return None;
    }
    let mut params = Vec::new();
    if let Some(profile) = profile {
        params.push(("profile", profile.to_string()));
    }
    if let (Some(first), Some(last)) = (first, last) {
        params.push(("first_name", first.to_string()));
        params.push(("last_name", last.to_string()));
    }
    if let Some(company) = company {
        params.push(("company", company));
    }
    let required = match field {
        Field::Emails => "emails",
        Field::Phones => "mobile_phone OR phone_numbers",
    };
    params.push(("required", required.to_string()));
    Some(params)
}

#[derive(Debug, Deserialize)]
struct EnrichResponse {
    likelihood: Option<f64>,
    data: Option<PersonData>,
}

/// The contact fields of PDL's person schema. Each is a [`Value`] because free plans send
/// booleans where paid plans send strings and lists.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PersonData {
    work_email: Value,
    emails: Value,
    personal_emails: Value,
    mobile_phone: Value,
    phone_numbers: Value,
}

#[derive(Debug, Deserialize)]
struct ErrorResponse {
    error: ErrorBody,
}

/// PDL's `error`: its `type` is a string (`"not_found"`) or a list of them (`["not_found"]`).
#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(rename = "type", default)]
    kind: Value,
}

impl ErrorBody {
    /// Whether `type` is, or lists, `not_found`.
    fn is_not_found(&self) -> bool {
        match &self.kind {
            Value::String(kind) => kind == "not_found",
            Value::Array(kinds) => kinds.iter().any(|k| k.as_str() == Some("not_found")),
            _ => false,
        }
    }
}

/// Values found in one field, and whether the field held only a free-plan boolean `true`.
#[derive(Default)]
struct Collected {
    contacts: Vec<RawContact>,
    hidden: bool,
}

impl Collected {
    fn push(&mut self, value: &str, kind: Option<&str>) {
        let value = value.trim();
        if !value.is_empty() {
            self.contacts.push(RawContact {
                value: value.to_string(),
                kind: kind.map(str::to_string),
                status: None,
                confidence: None,
            });
        }
    }

    /// A string field: `"value"`, `null`, or a free-plan boolean.
    fn string(&mut self, name: &str, field: &Value, kind: Option<&str>) -> Result<(), String> {
        match field {
            Value::String(value) => self.push(value, kind),
            Value::Null | Value::Bool(false) => {}
            Value::Bool(true) => self.hidden = true,
            other => return Err(format!("`{name}` is {other}, not a string")),
        }
        Ok(())
    }

    /// A list of strings: `["value", ...]`, `null`, or a free-plan boolean.
    fn strings(&mut self, name: &str, field: &Value, kind: Option<&str>) -> Result<(), String> {
        match field {
            Value::Array(items) => {
                for item in items {
                    self.string(name, item, kind)?;
                }
            }
            other => self.string(name, other, kind)?,
        }
        Ok(())
    }

    /// PDL's `emails`: `[{"address": "...", "type": "current_professional" | "professional" |
    /// "personal" | null}]`, `null`, or a free-plan boolean.
    fn emails(&mut self, field: &Value) -> Result<(), String> {
        let Value::Array(items) = field else {
            return self.string("emails", field, None);
        };
        for item in items {
            let Value::Object(email) = item else {
                return Err(format!("`emails` holds {item}, not an object"));
            };
            let kind = match email.get("type").and_then(Value::as_str) {
                Some("current_professional") => Some("work"),
                other => other,
            };
            self.string(
                "emails[].address",
                email.get("address").unwrap_or(&Value::Null),
                kind,
            )?;
        }
        Ok(())
    }
}

/// The raw contacts of `field` in a matched record, best first: for emails `work_email`, then
/// `emails`, then `personal_emails`; for phones `mobile_phone`, then `phone_numbers`.
fn collect(field: Field, data: &PersonData) -> Result<Collected, String> {
    let mut collected = Collected::default();
    match field {
        Field::Emails => {
            collected.string("work_email", &data.work_email, Some("work"))?;
            collected.emails(&data.emails)?;
            collected.strings("personal_emails", &data.personal_emails, Some("personal"))?;
        }
        Field::Phones => {
            collected.string("mobile_phone", &data.mobile_phone, Some("mobile"))?;
            collected.strings("phone_numbers", &data.phone_numbers, None)?;
        }
    }
    Ok(collected)
}

#[async_trait]
impl Provider for PdlProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    /// A profile lookup: with a LinkedIn URL, PDL matches the profile (PDL docs, "Person
    /// Enrichment API": `profile` is its strongest identifier); without one, name and company.
    fn match_basis(&self) -> MatchBasis {
        MatchBasis::LinkedinFirst
    }

    /// True, for either field, when the person has a LinkedIn URL, or a first and last name
    /// with a company name or domain.
    fn can_search(&self, field: Field, person: &PersonQuery) -> bool {
        query(field, person).is_some()
    }

    /// One Person Enrichment call. A person it cannot search is a [`ProviderAnswer::NoMatch`]
    /// without a call. Emails come back with `kind` `work` (`work_email`, or an `emails` entry of
    /// type `current_professional`), `professional` (a former employer's), or `personal`; phones
    /// with `kind` `mobile` (`mobile_phone`) or none; each with the match's `likelihood` times
    /// ten as `confidence`. A match below `min_likelihood` is a [`ProviderAnswer::NoMatch`].
    ///
    /// Errors: see the module docs; an unreadable 200 body, or contact fields of the wrong
    /// JSON type, is [`ProviderError::Malformed`].
    async fn find(
        &self,
        field: Field,
        person: &PersonQuery,
    ) -> Result<ProviderAnswer, ProviderError> {
        let Some(mut params) = query(field, person) else {
            return Ok(ProviderAnswer::NoMatch);
        };
        params.push(("min_likelihood", self.min_likelihood.to_string()));
        let response = self
            .endpoint
            .http
            .get(format!("{}/v5/person/enrich", self.endpoint.base_url))
            .header("X-Api-Key", &self.endpoint.api_key)
            .query(&params)
            .send()
            .await
            .map_err(request_error)?;
        let status = response.status();
        let headers = response.headers().clone();
        match status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                let body = read_error_body(response).await?;
                return match serde_json::from_slice::<ErrorResponse>(&body) {
                    Ok(error) if error.error.is_not_found() => Ok(ProviderAnswer::NoMatch),
                    _ => Err(ProviderError::Status(404)),
                };
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(ProviderError::Unauthorized);
            }
            StatusCode::PAYMENT_REQUIRED => return Err(ProviderError::QuotaExhausted),
            StatusCode::TOO_MANY_REQUESTS => {
                return Err(ProviderError::RateLimited {
                    retry_after: rate_limit_wait(&headers, Utc::now()),
                });
            }
            other => return Err(ProviderError::Status(other.as_u16())),
        }
        let body = read_body(response).await?;
        let parsed: EnrichResponse = serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Malformed(format!("person/enrich body: {e}")))?;
        let data = parsed
            .data
            .ok_or_else(|| ProviderError::Malformed("person/enrich body has no `data`".into()))?;
        let mut collected = collect(field, &data).map_err(ProviderError::Malformed)?;
        tracing::debug!(provider = NAME, likelihood = ?parsed.likelihood, "person enrichment answered");
        if parsed
            .likelihood
            .is_some_and(|likelihood| likelihood < f64::from(self.min_likelihood))
        {
            tracing::info!(
                provider = NAME,
                likelihood = ?parsed.likelihood,
                min_likelihood = self.min_likelihood,
                "a match below min_likelihood: no match"
            );
            return Ok(ProviderAnswer::NoMatch);
        }
        let confidence = confidence_of_likelihood(parsed.likelihood);
        for contact in &mut collected.contacts {
            contact.confidence = confidence;
        }
        if collected.contacts.is_empty() {
            if collected.hidden {
                tracing::warn!(
                    provider = NAME,
                    field = %field,
                    "the record has this field but the plan hides its values (free plan?)"
                );
            }
            return Ok(ProviderAnswer::NoMatch);
        }
        Ok(ProviderAnswer::Found(collected.contacts))
    }
}

/// The header with the time PDL's rate-limit window resets.
pub const RATE_LIMIT_RESET: &str = "x-ratelimit-reset";

/// The header with the requests left in each rate-limit window.
pub const RATE_LIMIT_REMAINING: &str = "x-ratelimit-remaining";

/// The wait a 429 of PDL's asks for, from its headers at time `now` (see the module docs,
/// "Rate limits"): `Retry-After` when sent, else the time until `x-ratelimit-reset` (zero for
/// a reset already past), choosing among per-window resets with `x-ratelimit-remaining`.
/// `None` when no header gives a readable time.
pub(crate) fn rate_limit_wait(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    if let Some(wait) = retry_after(headers) {
        return Some(wait);
    }
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let resets = windows(text(RATE_LIMIT_RESET)?);
    let remaining = text(RATE_LIMIT_REMAINING).map(windows).unwrap_or_default();
    let waits: BTreeMap<&str, Duration> = resets
        .iter()
        .filter_map(|(window, value)| Some((window.as_str(), reset_wait(value, now)?)))
        .collect();
    let exhausted = remaining
        .iter()
        .filter(|(_, left)| left.as_f64().is_some_and(|left| left <= 0.0))
        .filter_map(|(window, _)| waits.get(window.as_str()).copied())
        .max();
    exhausted.or_else(|| waits.values().copied().min())
}

/// A rate-limit header's value per window: a JSON object (`{"minute": ..., "day": null}`,
/// also as Python writes it, with `None` and single quotes) as its fields, anything else as
/// one window named `""` (and also `minute`, the window a bare value is about).
fn windows(value: &str) -> BTreeMap<String, Value> {
    let pythonic = || value.replace('\'', "\"").replace("None", "null");
    let parsed = serde_json::from_str::<Value>(value)
        .or_else(|_| serde_json::from_str::<Value>(&pythonic()))
        .unwrap_or_else(|_| Value::String(value.to_string()));
    match parsed {
        Value::Object(fields) => fields.into_iter().collect(),
        bare => BTreeMap::from([("".to_string(), bare.clone()), ("minute".to_string(), bare)]),
    }
}

/// Epoch values from here on are milliseconds: 10^12 seconds is in the year 33658.
const EPOCH_MILLIS_FROM: f64 = 1e12;

/// Epoch values from here on are seconds (2001-09-09); below, a number of seconds to wait.
const EPOCH_SECONDS_FROM: f64 = 1e9;

/// The wait until one reset value at `now`: a date (RFC 3339, or without offset read in UTC,
/// or an HTTP date), epoch seconds or milliseconds, or a small number of seconds to wait.
fn reset_wait(value: &Value, now: DateTime<Utc>) -> Option<Duration> {
    let until = |at: DateTime<Utc>| (at - now).to_std().unwrap_or(Duration::ZERO);
    let number = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(text) => {
            let text = text.trim();
            if let Ok(n) = text.parse::<f64>() {
                n
            } else if let Ok(at) = DateTime::parse_from_rfc3339(text) {
                return Some(until(at.with_timezone(&Utc)));
            } else if let Some(at) = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
                .iter()
                .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
            {
                return Some(until(at.and_utc()));
            } else {
                let at = httpdate::parse_http_date(text).ok()?;
                return Some(until(DateTime::<Utc>::from(at)));
            }
        }
        _ => return None,
    };
    if !number.is_finite() || number < 0.0 {
        return None;
    }
    if number >= EPOCH_MILLIS_FROM {
        return Some(until(DateTime::from_timestamp_millis(number as i64)?));
    }
    if number >= EPOCH_SECONDS_FROM {
        return Some(until(DateTime::from_timestamp(number as i64, 0)?));
    }
    Some(Duration::from_secs_f64(number))
}

#[cfg(test)]
mod tests {

    use serde_json::json;
    use wiremock::matchers::{header, method, path, query_param, query_param_is_missing};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;

    const KEY: &str = "pdl-test-key";

    fn by_name() -> PersonQuery {
        PersonQuery {
            first_name: Some("Bruno".into()),
            last_name: Some("Okafor".into()),
            company_name: Some("Tidewater Freight".into()),
            company_domain: Some("tidewater.test".into()),
            linkedin_url: None,
        }
    }

    fn by_profile() -> PersonQuery {
        PersonQuery {
            linkedin_url: Some("https://www.linkedin.com/in/bruno-okafor-demo/".into()),
            ..PersonQuery::default()
        }
    }

    fn record() -> serde_json::Value {
        json!({
            "status": 200,
            "likelihood": 9,
            "data": {
                "id": "abc_0000",
                "full_name": "bruno okafor",
                "first_name": "bruno",
                "last_name": "okafor",
                "linkedin_url": "linkedin.com/in/bruno-okafor-demo",
                "job_company_name": "tidewater freight",
                "work_email": "bruno.okafor@tidewater.test",
                "emails": [
                    { "address": "bruno.okafor@tidewater.test", "type": "current_professional" },
                    { "address": "bokafor@oldco.example", "type": "professional" },
                    { "address": "bruno.o@mail.example", "type": "personal" },
                    { "address": "b.okafor@unknown.example", "type": null }
                ],
                "personal_emails": ["bruno.o@mail.example"],
                "mobile_phone": "+1 415 555 0132",
                "phone_numbers": ["+14155550132", "(212) 555-0100"]
            }
        })
    }

    /// A value of [`record`], whose likelihood 9 is a confidence of 90.
    fn contact(value: &str, kind: Option<&str>) -> RawContact {
        RawContact {
            value: value.into(),
            kind: kind.map(str::to_string),
            status: None,
            confidence: Some(90),
        }
    }

    async fn provider_with(response: ResponseTemplate) -> (MockServer, PdlProvider) {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v5/person/enrich"))
            .respond_with(response)
            .mount(&server)
            .await;
        let provider = PdlProvider::new(reqwest::Client::new(), server.uri(), KEY);
        (server, provider)
    }

    async fn provider_for(status: u16, body: serde_json::Value) -> (MockServer, PdlProvider) {
        provider_with(ResponseTemplate::new(status).set_body_json(body)).await
    }

    #[tokio::test]
    async fn hit_by_name_and_domain_returns_emails_best_first() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v5/person/enrich"))
            .and(header("X-Api-Key", KEY))
            .and(query_param("first_name", "Bruno"))
            .and(query_param("last_name", "Okafor"))
            .and(query_param("company", "tidewater.test"))
            .and(query_param("required", "emails"))
            .and(query_param("min_likelihood", "6"))
            .and(query_param_is_missing("profile"))
            .and(query_param_is_missing("api_key"))
            .respond_with(ResponseTemplate::new(200).set_body_json(record()))
            .expect(1)
            .mount(&server)
            .await;
        let provider = PdlProvider::new(reqwest::Client::new(), server.uri(), KEY);

        let answer = provider.find(Field::Emails, &by_name()).await.unwrap();

        assert_eq!(
            answer,
            ProviderAnswer::Found(vec![
                contact("bruno.okafor@tidewater.test", Some("work")),
                contact("bruno.okafor@tidewater.test", Some("work")),
                contact("bokafor@oldco.example", Some("professional")),
                contact("bruno.o@mail.example", Some("personal")),
                contact("b.okafor@unknown.example", None),
                contact("bruno.o@mail.example", Some("personal")),
            ])
        );
    }

    #[tokio::test]
    async fn hit_by_linkedin_returns_phones_mobile_first() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v5/person/enrich"))
            .and(header("X-Api-Key", KEY))
            .and(query_param(
                "profile",
                "https://www.linkedin.com/in/bruno-okafor-demo/",
            ))
            .and(query_param("required", "mobile_phone OR phone_numbers"))
            .and(query_param_is_missing("first_name"))
            .respond_with(ResponseTemplate::new(200).set_body_json(record()))
            .expect(1)
            .mount(&server)
            .await;
        let provider = PdlProvider::new(reqwest::Client::new(), server.uri(), KEY);

        let answer = provider.find(Field::Phones, &by_profile()).await.unwrap();

        assert_eq!(
            answer,
            ProviderAnswer::Found(vec![
                contact("+1 415 555 0132", Some("mobile")),
                contact("+14155550132", None),
                contact("(212) 555-0100", None),
            ])
        );
    }

    #[tokio::test]
    async fn the_configured_min_likelihood_is_sent() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v5/person/enrich"))
            .and(query_param("min_likelihood", "8"))
            .respond_with(ResponseTemplate::new(200).set_body_json(record()))
            .expect(2)
            .mount(&server)
            .await;
        let provider =
            PdlProvider::new(reqwest::Client::new(), server.uri(), KEY).with_min_likelihood(8);
        assert_eq!(provider.min_likelihood(), 8);
        assert!(matches!(
            provider.find(Field::Emails, &by_name()).await,
            Ok(ProviderAnswer::Found(_))
        ));
        assert!(matches!(
            provider.find(Field::Phones, &by_profile()).await,
            Ok(ProviderAnswer::Found(_))
        ));
        // Outside PDL's 1-10 scale: clamped.
        let make = || PdlProvider::new(reqwest::Client::new(), server.uri(), KEY);
        assert_eq!(make().with_min_likelihood(0).min_likelihood(), 1);
        assert_eq!(make().with_min_likelihood(11).min_likelihood(), 10);
        assert_eq!(make().min_likelihood(), DEFAULT_MIN_LIKELIHOOD);
    }

    #[tokio::test]
    async fn the_likelihood_is_kept_as_the_confidence_of_every_value() {
        let mut body = record();
        body["likelihood"] = json!(7);
        let (_server, provider) = provider_for(200, body).await;
        let Ok(ProviderAnswer::Found(found)) = provider.find(Field::Phones, &by_name()).await
        else {
            panic!("expected a hit");
        };
        assert_eq!(found.len(), 3);
        assert!(found.iter().all(|c| c.confidence == Some(70)), "{found:?}");

        let mut body = record();
        body.as_object_mut().unwrap().remove("likelihood");
        let (_server, provider) = provider_for(200, body).await;
        let Ok(ProviderAnswer::Found(found)) = provider.find(Field::Emails, &by_name()).await
        else {
            panic!("expected a hit");
        };
        assert!(found.iter().all(|c| c.confidence.is_none()), "{found:?}");
    }

    #[tokio::test]
    async fn a_match_below_min_likelihood_is_a_miss_even_if_pdl_sends_it() {
        let mut body = record();
        body["likelihood"] = json!(5);
        let (_server, provider) = provider_for(200, body).await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Ok(ProviderAnswer::NoMatch)
        );
        let mut body = record();
        body["likelihood"] = json!(3);
        let (server, _) = provider_for(200, body).await;
        let lenient =
            PdlProvider::new(reqwest::Client::new(), server.uri(), KEY).with_min_likelihood(3);
        assert!(matches!(
            lenient.find(Field::Emails, &by_name()).await,
            Ok(ProviderAnswer::Found(_))
        ));
    }

    #[tokio::test]
    async fn an_error_type_given_as_a_list_is_read() {
        let body = json!({"status": 404, "error": {"type": ["not_found"], "message": "No records were found matching your request"}});
        let (_server, provider) = provider_for(404, body).await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Ok(ProviderAnswer::NoMatch)
        );
        let body =
            json!({"status": 404, "error": {"type": ["invalid_request_error"], "message": "..."}});
        let (_server, provider) = provider_for(404, body).await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Err(ProviderError::Status(404))
        );
        let body = json!({"status": 402, "error": {"type": ["payment_required"], "message": "You have hit your account maximum"}});
        let (_server, provider) = provider_for(402, body).await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Err(ProviderError::QuotaExhausted)
        );
    }

    #[tokio::test]
    async fn company_name_is_sent_when_there_is_no_domain() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(query_param("company", "Tidewater Freight"))
            .respond_with(ResponseTemplate::new(200).set_body_json(record()))
            .expect(1)
            .mount(&server)
            .await;
        let provider = PdlProvider::new(reqwest::Client::new(), server.uri(), KEY);
        let person = PersonQuery {
            company_domain: None,
            ..by_name()
        };
        assert!(matches!(
            provider.find(Field::Emails, &person).await,
            Ok(ProviderAnswer::Found(_))
        ));
    }

    #[tokio::test]
    async fn documented_404_is_a_miss() {
        let body = json!({"status": 404, "error": {"type": "not_found", "message": "No records were found matching your request"}});
        let (_server, provider) = provider_for(404, body).await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Ok(ProviderAnswer::NoMatch)
        );
    }

    #[tokio::test]
    async fn a_404_that_is_not_pdls_is_an_error() {
        let response = ResponseTemplate::new(404).set_body_string("<html>Not Found</html>");
        let (_server, provider) = provider_with(response).await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Err(ProviderError::Status(404))
        );
    }

    #[tokio::test]
    async fn a_match_without_values_for_the_field_is_a_miss() {
        let body = json!({"status": 200, "likelihood": 6, "data": {"full_name": "bruno okafor", "work_email": null, "emails": [], "personal_emails": [], "mobile_phone": null, "phone_numbers": null}});
        let (_server, provider) = provider_for(200, body).await;
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
    async fn free_plan_booleans_are_a_miss() {
        let body = json!({"status": 200, "likelihood": 8, "data": {"work_email": true, "emails": true, "personal_emails": true, "mobile_phone": true, "phone_numbers": false}});
        let (_server, provider) = provider_for(200, body).await;
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
    async fn status_401_is_unauthorized() {
        let body = json!({"status": 401, "error": {"type": "authentication_error", "message": "Request contained a missing or invalid key"}});
        let (_server, provider) = provider_for(401, body).await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Err(ProviderError::Unauthorized)
        );
    }

    #[tokio::test]
    async fn status_402_is_quota_exhausted() {
        let body = json!({"status": 402, "error": {"type": "payment_required", "message": "You have hit your account maximum (all matches used)"}});
        let (_server, provider) = provider_for(402, body).await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Err(ProviderError::QuotaExhausted)
        );
    }

    #[tokio::test]
    async fn status_429_carries_retry_after_when_sent() {
        let body = json!({"status": 429, "error": {"type": "rate_limit_error", "message": "An error occurred due to requests hitting the API too quick"}});
        let response = ResponseTemplate::new(429)
            .insert_header("Retry-After", "12")
            .set_body_json(body.clone());
        let (_server, provider) = provider_with(response).await;
        assert_eq!(
            provider.find(Field::Phones, &by_name()).await,
            Err(ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(12))
            })
        );

        let (_server, provider) = provider_for(429, body).await;
        assert_eq!(
            provider.find(Field::Phones, &by_name()).await,
            Err(ProviderError::RateLimited { retry_after: None })
        );
    }

    fn rate_limited() -> ResponseTemplate {
        ResponseTemplate::new(429).set_body_json(json!({"status": 429, "error": {
            "type": "rate_limit_error",
            "message": "An error occurred due to requests hitting the API too quick"
        }}))
    }

    #[tokio::test]
    async fn pdls_reset_header_sets_the_wait() {
        let reset = (Utc::now() + chrono::Duration::seconds(30))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let response = rate_limited()
            .insert_header(RATE_LIMIT_RESET, reset.as_str())
            .insert_header(
                RATE_LIMIT_REMAINING,
                r#"{"minute": 0, "day": null, "month": null}"#,
            );
        let (_server, provider) = provider_with(response).await;

        let answer = provider.find(Field::Emails, &by_name()).await;

        let Err(ProviderError::RateLimited {
            retry_after: Some(wait),
        }) = answer
        else {
            panic!("expected a rate limit with a wait, got {answer:?}");
        };
        // The header has whole seconds: the window resets 29 to 30 s from now.
        assert!(
            wait > Duration::from_secs(28) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
    }

    fn pdl_headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn the_reset_is_read_in_every_documented_writing() {
        let now = DateTime::parse_from_rfc3339("2022-02-23T20:19:40Z")
            .unwrap()
            .with_timezone(&Utc);
        let wait = |pairs: &[(&'static str, &str)]| rate_limit_wait(&pdl_headers(pairs), now);
        let fifteen = Some(Duration::from_secs(15));
        // The current docs' sample: a UTC time.
        assert_eq!(wait(&[(RATE_LIMIT_RESET, "2022-02-23T20:19:55Z")]), fifteen);
        assert_eq!(
            wait(&[(RATE_LIMIT_RESET, "\"2022-02-23T20:19:55Z\"")]),
            fifteen
        );
        assert_eq!(
            wait(&[(RATE_LIMIT_RESET, "2022-02-23T21:19:55+01:00")]),
            fifteen
        );
        assert_eq!(wait(&[(RATE_LIMIT_RESET, "2022-02-23 20:19:55")]), fifteen);
        assert_eq!(
            wait(&[(RATE_LIMIT_RESET, "Wed, 23 Feb 2022 20:19:55 GMT")]),
            fifteen
        );
        // The pre-2022 form: epoch seconds (or milliseconds); a small number is seconds.
        assert_eq!(wait(&[(RATE_LIMIT_RESET, "1645647595")]), fifteen);
        assert_eq!(wait(&[(RATE_LIMIT_RESET, "1645647595000")]), fifteen);
        assert_eq!(wait(&[(RATE_LIMIT_RESET, "15")]), fifteen);
        // A reset already past waits nothing; an unreadable one or none is unknown.
        assert_eq!(
            wait(&[(RATE_LIMIT_RESET, "2022-02-23T20:19:00Z")]),
            Some(Duration::ZERO)
        );
        assert_eq!(wait(&[(RATE_LIMIT_RESET, "soon")]), None);
        assert_eq!(wait(&[(RATE_LIMIT_REMAINING, "{\"minute\": 0}")]), None);
        assert_eq!(wait(&[]), None);
        // A Retry-After a server sends anyway wins.
        assert_eq!(
            wait(&[
                ("retry-after", "3"),
                (RATE_LIMIT_RESET, "2022-02-23T20:19:55Z")
            ]),
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn per_window_resets_follow_the_exhausted_window() {
        let now = DateTime::parse_from_rfc3339("2022-02-23T20:19:40Z")
            .unwrap()
            .with_timezone(&Utc);
        let wait = |pairs: &[(&'static str, &str)]| rate_limit_wait(&pdl_headers(pairs), now);
        let resets =
            r#"{"minute": "2022-02-23T20:19:55Z", "day": "2022-02-24T00:00:00Z", "month": None}"#;
        // The minute window is spent: its reset.
        assert_eq!(
            wait(&[
                (RATE_LIMIT_RESET, resets),
                (
                    RATE_LIMIT_REMAINING,
                    "{'minute': 0, 'day': 40, 'month': None}"
                )
            ]),
            Some(Duration::from_secs(15))
        );
        // The day window is spent: its reset, long past the minute's.
        assert_eq!(
            wait(&[
                (RATE_LIMIT_RESET, resets),
                (
                    RATE_LIMIT_REMAINING,
                    r#"{"minute": 3, "day": 0, "month": null}"#
                )
            ]),
            Some(Duration::from_secs(13_220))
        );
        // Nothing says which: the earliest reset.
        assert_eq!(
            wait(&[(RATE_LIMIT_RESET, resets)]),
            Some(Duration::from_secs(15))
        );
        // One reset for every window, whatever the remaining counts say.
        assert_eq!(
            wait(&[
                (RATE_LIMIT_RESET, "2022-02-23T20:19:55Z"),
                (
                    RATE_LIMIT_REMAINING,
                    r#"{"minute": 0, "day": 0, "month": null}"#
                )
            ]),
            Some(Duration::from_secs(15))
        );
    }

    #[tokio::test]
    async fn server_errors_keep_their_status() {
        let body = json!({"status": 500, "error": {"type": "api_error", "message": "..."}});
        let (_server, provider) = provider_for(500, body).await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Err(ProviderError::Status(500))
        );
    }

    #[tokio::test]
    async fn malformed_json_is_malformed() {
        let response = ResponseTemplate::new(200).set_body_string("{\"status\": 200, \"data\": [");
        let (_server, provider) = provider_with(response).await;
        assert!(matches!(
            provider.find(Field::Emails, &by_name()).await,
            Err(ProviderError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn contact_fields_of_the_wrong_type_are_malformed() {
        let body = json!({"status": 200, "likelihood": 9, "data": {"work_email": 42}});
        let (_server, provider) = provider_for(200, body).await;
        assert!(matches!(
            provider.find(Field::Emails, &by_name()).await,
            Err(ProviderError::Malformed(_))
        ));
        let body = json!({"status": 200, "likelihood": 9});
        let (_server, provider) = provider_for(200, body).await;
        assert!(matches!(
            provider.find(Field::Emails, &by_name()).await,
            Err(ProviderError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn can_search_with_linkedin_or_name_and_company() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(500))
            .expect(0)
            .mount(&server)
            .await;
        let provider = PdlProvider::new(reqwest::Client::new(), server.uri(), KEY);
        for field in [Field::Emails, Field::Phones] {
            assert!(provider.can_search(field, &by_name()));
            assert!(provider.can_search(field, &by_profile()));
            let name_only = PersonQuery {
                company_name: None,
                company_domain: None,
                ..by_name()
            };
            assert!(!provider.can_search(field, &name_only));
            let company_only = PersonQuery {
                first_name: None,
                ..by_name()
            };
            assert!(!provider.can_search(field, &company_only));
            assert!(!provider.can_search(field, &PersonQuery::default()));
            assert_eq!(
                provider.find(field, &name_only).await,
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
        let (_server, provider) =
            provider_with(ResponseTemplate::new(404).set_body_bytes(vec![b' '; 2 * 1024 * 1024]))
                .await;
        assert_eq!(
            provider.find(Field::Emails, &by_name()).await,
            Err(ProviderError::Status(404))
        );
    }
}
