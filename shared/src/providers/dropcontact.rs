//! Dropcontact's enrichment API (v1), as documented at <https://developer.dropcontact.com/>
//! (quickstart, input and output records), <https://developer.dropcontact.com/en/errors/>
//! (errors) and <https://developer.dropcontact.com/en/credits/> (credits). Dropcontact
//! enriches in batches: send the record, keep the `request_id`, fetch the result later. (The
//! older `https://api.dropcontact.io/batch` endpoint has the same two steps and shapes; this
//! adapter speaks the current one.)
//!
//! Send: `POST {base}/v1/enrich/all` with headers `X-Access-Token: KEY` and
//! `Content-Type: application/json`:
//! ```json
//! { "data": [ { "first_name": "Denis", "last_name": "Cohen", "company": "Dropcontact",
//!               "website": "dropcontact.com", "linkedin": "https://www.linkedin.com/in/..." } ],
//!   "siren": false, "language": "en" }
//! ```
//! Dropcontact finds an email from a first and last name with a company (name or website), or
//! from a LinkedIn URL. Answer (200):
//! `{ "credits_left": 15277, "request_id": "qzmxkpvlrtdnhwa", "error": false, "success": true }`.
//!
//! Fetch: `GET {base}/v1/enrich/all/{request_id}`, same header. While the batch is processing
//! (and also for an unknown `request_id`, or a temporary problem on Dropcontact's side) the
//! answer is 200 `{ "error": false, "success": false, "reason": "Request not ready yet, try again in 30 seconds" }`.
//! When done:
//! ```json
//! { "data": [ { "civility": "M", "first_name": "Denis", "last_name": "Cohen",
//!               "email": [ { "email": "denis@dropcontact.com", "qualification": "nominative@pro" } ],
//!               "phone": "01 23 45 67 89", "company": "Dropcontact", "website": "https://dropcontact.com",
//!               "linkedin": "...", "job": "...", ... } ],
//!   "error": false, "success": true, "credits_left": 15276 }
//! ```
//! An email's `qualification` is `local@domain`: local part `nominative`, `catch_all` (written
//! `catch-all` in Dropcontact's qualification guide, `non_confirm` in its older API),
//! `generic` (`contact@...`), `random` or `invalid`; domain `pro`, `perso` or `invalid`. Some
//! answers carry a whole-address label instead: `invalid domain`, or `Do_Not_Contact` for a
//! person who asked not to be contacted. Case, `-`, `_` and spaces are not told apart (see
//! [`email_status`]). Kept: `nominative` (`valid`) and catch-all (`accept_all`) addresses, as
//! `work` for a `pro` domain, `personal` for a `perso` one. Dropped, neither stored nor counted
//! as found: `generic` and `random` addresses (not the person's), anything `invalid` (local
//! part, domain, or `invalid domain`), and `Do_Not_Contact` (a compliance matter: storing it is
//! the fault, whatever its deliverability). A record without an email left (Dropcontact gives
//! the credit back for one without any) is the no match, and the cascade asks the next
//! provider.
//!
//! **Emails only**: Dropcontact's `phone` is the *company's* phone number, not the person's, so
//! this adapter does not search phones.
//!
//! Errors: `{ "error": true, "reason": "...", "success": false }` (or `{ "detail": "..." }` for
//! 404, 422, 500), mapped as:
//!
//! | status | meaning | result |
//! |---|---|---|
//! | 401 | missing or wrong access token | `Unauthorized` |
//! | 403 | not enough credits for the records of the request; a `reason` without "credit" | `QuotaExhausted`; `Unauthorized` |
//! | 402 | (not documented) payment required | `QuotaExhausted` |
//! | 429 | rate limited (60 requests per second) | `RateLimited`: a `Retry-After` if sent, else the next second |
//! | 400, 404, 422, 5xx | | `Status(code)` |
//!
//! **Rate limit** (<https://developer.dropcontact.com/en/rate-limits/>): 60 requests per second;
//! past that, 429s for a while. Dropcontact sends no header saying when to come back, so a
//! 429's wait is the next whole second; a `Retry-After` a server sends anyway is honoured.
//!
//! The worker fed by SQS sends the record once and fetches the result once per attempt
//! through [`ProviderJobs`], the job deferred on the queue in between (Dropcontact asks for a
//! fetch every 30 seconds; see [`crate::providers::cascade::CascadeJournal`]). A fetch that is
//! rate limited, meets a 5xx or times out is the fetch's alone: the batch is fetched again,
//! never sent again (Dropcontact charges per record sent with an email found). An unknown
//! `request_id` reads as "not ready", so only the enrichment's maximum age ends such a wait.
//! [`Provider::find`] fetches inside one call, every poll interval, until the result is ready:
//! the cascade's per-provider timeout (and the Lambda deadline behind it) is what stops a
//! request that never completes there, as a [`ProviderError::Timeout`].
//!
//! A body is read up to [`MAX_PROVIDER_BODY_BYTES`](crate::providers::MAX_PROVIDER_BODY_BYTES)
//! (1 MiB): a longer success body is [`ProviderError::BodyTooLarge`]; a longer error body is
//! ignored and the status decides.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::Field;
use crate::identity::bare_domain;
use crate::providers::normalize::{email_status, forbids_contact, is_storable_email};
use crate::providers::{
    Endpoint, JobPoll, PersonQuery, Provider, ProviderAnswer, ProviderError, ProviderJobs,
    RawContact, non_blank, poll_until_done, read_body, read_error_body, request_error, retry_after,
    until_next_second,
};

/// The provider name used in configuration (`EMAIL_PROVIDERS`) and on stored contacts.
pub const NAME: &str = "dropcontact";

/// The pause between two result fetches when none is configured.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Dropcontact's batch enrichment for one record: sends it, then fetches the result until it is
/// ready. Finds the person's professional email address. Emails only.
pub struct DropcontactProvider {
    endpoint: Endpoint,
    poll_interval: Duration,
}

impl DropcontactProvider {
    /// A provider calling `{base_url}/v1/enrich/all` with `api_key` in `X-Access-Token`,
    /// fetching the result every [`DEFAULT_POLL_INTERVAL`].
    ///
    /// `base_url` is the API origin without the version (`https://api.dropcontact.com`, or the
    /// local simulator's `http://127.0.0.1:PORT/dropcontact`); a trailing `/` is ignored.
    pub fn new(
        http: reqwest::Client,
        base_url: impl Into<String>,
        api_key: impl Into<String>,
    ) -> Self {
        Self {
            endpoint: Endpoint::new(http, base_url, api_key),
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }

    /// The same provider, waiting `interval` before each result fetch.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The pause before each result fetch.
    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    fn enrich_url(&self) -> String {
        format!("{}/v1/enrich/all", self.endpoint.base_url)
    }
}

#[derive(Debug, Serialize)]
struct SendRequest {
    data: Vec<Record>,
    siren: bool,
    language: &'static str,
}

/// Dropcontact's input record, with the fields the person has.
#[derive(Debug, Serialize)]
struct Record {
    #[serde(skip_serializing_if = "Option::is_none")]
    first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    company: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    website: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    linkedin: Option<String>,
}

/// The input record for `person`, or `None` when Dropcontact cannot find an email for it: it
/// needs a LinkedIn URL, or a first and last name with a company name or website.
fn record(person: &PersonQuery) -> Option<Record> {
    let record = Record {
        first_name: non_blank(&person.first_name).map(str::to_string),
        last_name: non_blank(&person.last_name).map(str::to_string),
        company: non_blank(&person.company_name).map(str::to_string),
        website: non_blank(&person.company_domain).and_then(bare_domain),
        linkedin: non_blank(&person.linkedin_url).map(str::to_string),
    };
    let by_name = record.first_name.is_some()
        && record.last_name.is_some()
        && (record.company.is_some() || record.website.is_some());
    (record.linkedin.is_some() || by_name).then_some(record)
}

/// The envelope of every Dropcontact answer.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Envelope {
    success: bool,
    error: bool,
    reason: Option<String>,
    detail: Option<Value>,
    request_id: Option<String>,
    data: Option<Vec<OutputRecord>>,
}

impl Envelope {
    /// The error message, from `reason` or `detail`.
    fn message(&self) -> String {
        match (&self.reason, &self.detail) {
            (Some(reason), _) => reason.clone(),
            (None, Some(Value::String(detail))) => detail.clone(),
            (None, Some(detail)) => detail.to_string(),
            (None, None) => String::new(),
        }
    }

    fn is_about_credits(&self) -> bool {
        self.message().to_lowercase().contains("credit")
    }
}

#[derive(Debug, Deserialize)]
struct OutputRecord {
    #[serde(default)]
    email: Option<Value>,
}

/// The error of a non-200 answer.
fn status_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let envelope: Envelope = serde_json::from_slice(body).unwrap_or_default();
    match status {
        StatusCode::UNAUTHORIZED => ProviderError::Unauthorized,
        StatusCode::FORBIDDEN if envelope.is_about_credits() => ProviderError::QuotaExhausted,
        StatusCode::FORBIDDEN => ProviderError::Unauthorized,
        StatusCode::PAYMENT_REQUIRED => ProviderError::QuotaExhausted,
        StatusCode::TOO_MANY_REQUESTS => ProviderError::RateLimited {
            retry_after: retry_after(headers).or_else(|| Some(until_next_second(Utc::now()))),
        },
        other => ProviderError::Status(other.as_u16()),
    }
}

/// The person's emails in an output record's `email`: `[{"email", "qualification"}]` (or
/// `null`), without the addresses the module docs list as dropped (generic, random, invalid,
/// do-not-contact). `kind` is `work` for a `pro` domain, `personal` for a `perso` one; `status`
/// is the qualification as Dropcontact wrote it.
fn emails(email: Option<&Value>) -> Result<Vec<RawContact>, String> {
    let items = match email {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(format!("`email` is {other}, not a list")),
    };
    let mut contacts = Vec::new();
    for item in items {
        let address = item
            .get("email")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty());
        let Some(address) = address else {
            if item.is_object() {
                continue;
            }
            return Err(format!("`email` holds {item}, not an object"));
        };
        let qualification = item
            .get("qualification")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|q| !q.is_empty());
        let label = qualification.unwrap_or_default().to_lowercase();
        let (local, domain) = label.split_once('@').unwrap_or((label.as_str(), ""));
        let (local, domain) = (local.trim(), domain.trim());
        if local == "generic" || !is_storable_email(qualification) {
            tracing::debug!(
                provider = NAME,
                status = email_status(qualification),
                do_not_contact = forbids_contact(qualification),
                generic = local == "generic",
                "dropped an address that is not the person's usable one"
            );
            continue;
        }
        let kind = match domain {
            "pro" => Some("work".to_string()),
            "perso" => Some("personal".to_string()),
            _ => None,
        };
        contacts.push(RawContact {
            value: address.to_string(),
            kind,
            status: qualification.map(str::to_string),
            confidence: None,
        });
    }
    Ok(contacts)
}

impl DropcontactProvider {
    async fn send(&self, record: Record) -> Result<String, ProviderError> {
        let body = SendRequest {
            data: vec![record],
            siren: false,
            language: "en",
        };
        let response = self
            .endpoint
            .http
            .post(self.enrich_url())
            .header("X-Access-Token", &self.endpoint.api_key)
            .json(&body)
            .send()
            .await
            .map_err(request_error)?;
        let status = response.status();
        let headers = response.headers().clone();
        if status != StatusCode::OK {
            let body = read_error_body(response).await?;
            return Err(status_error(status, &headers, &body));
        }
        let body = read_body(response).await?;
        let envelope: Envelope = serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Malformed(format!("enrich/all body: {e}")))?;
        if !envelope.success || envelope.error {
            if envelope.is_about_credits() {
                return Err(ProviderError::QuotaExhausted);
            }
            return Err(ProviderError::Malformed(format!(
                "enrich/all refused the record: {:?}",
                envelope.message()
            )));
        }
        envelope
            .request_id
            .filter(|id| !id.trim().is_empty())
            .ok_or_else(|| ProviderError::Malformed("enrich/all answer has no `request_id`".into()))
    }

    async fn fetch(&self, request_id: &str) -> Result<JobPoll, ProviderError> {
        let response = self
            .endpoint
            .http
            .get(format!("{}/{request_id}", self.enrich_url()))
            .header("X-Access-Token", &self.endpoint.api_key)
            .send()
            .await
            .map_err(request_error)?;
        let status = response.status();
        let headers = response.headers().clone();
        if status != StatusCode::OK {
            let body = read_error_body(response).await?;
            return Err(status_error(status, &headers, &body));
        }
        let body = read_body(response).await?;
        let envelope: Envelope = serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Malformed(format!("enrich/all result body: {e}")))?;
        if !envelope.success {
            if envelope.is_about_credits() {
                return Err(ProviderError::QuotaExhausted);
            }
            if envelope.error {
                return Err(ProviderError::Malformed(format!(
                    "enrich/all result failed: {:?}",
                    envelope.message()
                )));
            }
            return Ok(JobPoll::Pending);
        }
        let data = envelope
            .data
            .ok_or_else(|| ProviderError::Malformed("enrich/all result has no `data`".into()))?;
        let mut contacts = Vec::new();
        for record in &data {
            contacts.extend(emails(record.email.as_ref()).map_err(ProviderError::Malformed)?);
        }
        Ok(JobPoll::Done(contacts))
    }
}

#[async_trait]
impl Provider for DropcontactProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    /// True for [`Field::Emails`] when the person has a LinkedIn URL, or a first and last name
    /// with a company name or domain; never for phones (see the module docs).
    fn can_search(&self, field: Field, person: &PersonQuery) -> bool {
        field == Field::Emails && record(person).is_some()
    }

    /// Sends the person's record, then fetches the result every poll interval until it is
    /// ready; never returns while it is processing (the caller's timeout cuts it). A person it
    /// cannot search is a [`ProviderAnswer::NoMatch`] without a call. Emails come back with
    /// `kind` `work` (or `personal`) and Dropcontact's qualification as `status`.
    ///
    /// Errors: see the module docs; an unreadable 200 body is [`ProviderError::Malformed`].
    async fn find(
        &self,
        field: Field,
        person: &PersonQuery,
    ) -> Result<ProviderAnswer, ProviderError> {
        let Some(request_id) = self.submit_job(field, person).await? else {
            return Ok(ProviderAnswer::NoMatch);
        };
        poll_until_done(NAME, &request_id, self.poll_interval, || {
            self.fetch(&request_id)
        })
        .await
    }

    fn jobs(&self) -> Option<&dyn ProviderJobs> {
        Some(self)
    }
}

#[async_trait]
impl ProviderJobs for DropcontactProvider {
    /// Sends the person's record for [`Field::Emails`] (paid when an email is found); its
    /// `request_id`. `Ok(None)` without a call for phones, or a person it cannot search.
    async fn submit_job(
        &self,
        field: Field,
        person: &PersonQuery,
    ) -> Result<Option<String>, ProviderError> {
        let Some(record) = record(person).filter(|_| field == Field::Emails) else {
            return Ok(None);
        };
        let request_id = self.send(record).await?;
        tracing::debug!(provider = NAME, request_id = %request_id, "batch sent");
        Ok(Some(request_id))
    }

    /// One `GET` of the batch's result: [`JobPoll::Pending`] while Dropcontact answers "not
    /// ready", else the person's emails.
    async fn poll_job(&self, _field: Field, job_id: &str) -> Result<JobPoll, ProviderError> {
        self.fetch(job_id).await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use wiremock::matchers::{body_json, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;

    const KEY: &str = "dropcontact-test-key";
    const REQUEST_ID: &str = "qzmxkpvlrtdnhwa";
    const FAST: Duration = Duration::from_millis(5);

    fn by_name() -> PersonQuery {
        PersonQuery {
            first_name: Some("Ada".into()),
            last_name: Some("Quill".into()),
            company_name: Some("Northwind Labs ".into()),
            company_domain: Some("https://northwind.example/team".into()),
            linkedin_url: None,
        }
    }

    fn sent() -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(json!({
            "credits_left": 1000, "request_id": REQUEST_ID, "error": false, "success": true
        }))
    }

    fn not_ready() -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(json!({
            "error": false, "success": false,
            "reason": "Request not ready yet, try again in 30 seconds"
        }))
    }

    fn done(email: serde_json::Value) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(json!({
            "data": [ {
                "civility": "Mme", "first_name": "Ada", "last_name": "Quill", "full_name": "Ada Quill",
                "email": email, "phone": "+1 415 555 0100",
                "company": "Northwind Labs", "website": "https://northwind.example",
                "linkedin": "https://www.linkedin.com/in/ada-quill-nw", "job": "CTO"
            } ],
            "error": false, "success": true, "credits_left": 999
        }))
    }

    fn contact(value: &str, kind: Option<&str>, qualification: &str) -> RawContact {
        RawContact {
            value: value.into(),
            kind: kind.map(str::to_string),
            status: Some(qualification.into()),
            confidence: None,
        }
    }

    fn provider(server: &MockServer) -> DropcontactProvider {
        DropcontactProvider::new(reqwest::Client::new(), server.uri(), KEY).with_poll_interval(FAST)
    }

    async fn mount_send(server: &MockServer, response: ResponseTemplate) {
        Mock::given(method("POST"))
            .and(path("/v1/enrich/all"))
            .respond_with(response)
            .mount(server)
            .await;
    }

    async fn mount_fetch(server: &MockServer, response: ResponseTemplate) {
        Mock::given(method("GET"))
            .and(path(format!("/v1/enrich/all/{REQUEST_ID}")))
            .respond_with(response)
            .mount(server)
            .await;
    }

    async fn server_with_result(result: ResponseTemplate) -> MockServer {
        let server = MockServer::start().await;
        mount_send(&server, sent()).await;
        mount_fetch(&server, result).await;
        server
    }

    fn requests_to(requests: &[wiremock::Request], verb: &str) -> usize {
        requests
            .iter()
            .filter(|r| r.method.as_str() == verb)
            .count()
    }

    #[tokio::test]
    async fn not_ready_then_done_fetches_until_success_and_keeps_the_persons_emails() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/enrich/all"))
            .and(header("X-Access-Token", KEY))
            .and(body_json(json!({
                "data": [ { "first_name": "Ada", "last_name": "Quill", "company": "Northwind Labs",
                            "website": "northwind.example" } ],
                "siren": false, "language": "en"
            })))
            .respond_with(sent())
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("/v1/enrich/all/{REQUEST_ID}")))
            .respond_with(not_ready())
            .up_to_n_times(2)
            .expect(2)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("/v1/enrich/all/{REQUEST_ID}")))
            .and(header("X-Access-Token", KEY))
            .respond_with(done(json!([
                { "email": "ada.quill@northwind.example", "qualification": "nominative@pro" },
                { "email": "contact@northwind.example", "qualification": "generic@pro" },
                { "email": "ada@northwind.example", "qualification": "catch_all@pro" },
                { "email": "aq@northwind.example", "qualification": "invalid@pro" },
                { "email": "ada.quill@mailbox.example", "qualification": "nominative@perso" }
            ])))
            .expect(1)
            .mount(&server)
            .await;

        let answer = provider(&server)
            .find(Field::Emails, &by_name())
            .await
            .unwrap();

        assert_eq!(
            answer,
            ProviderAnswer::Found(vec![
                contact(
                    "ada.quill@northwind.example",
                    Some("work"),
                    "nominative@pro"
                ),
                contact("ada@northwind.example", Some("work"), "catch_all@pro"),
                contact(
                    "ada.quill@mailbox.example",
                    Some("personal"),
                    "nominative@perso"
                ),
            ])
        );
        let requests = server.received_requests().await.unwrap();
        assert_eq!(
            (
                requests_to(&requests, "POST"),
                requests_to(&requests, "GET")
            ),
            (1, 3)
        );
    }

    #[tokio::test]
    async fn a_record_without_an_email_is_a_miss() {
        for email in [json!(null), json!([])] {
            let server = server_with_result(done(email)).await;
            assert_eq!(
                provider(&server).find(Field::Emails, &by_name()).await,
                Ok(ProviderAnswer::NoMatch)
            );
        }
        let generic_only =
            json!([{ "email": "contact@northwind.example", "qualification": "generic@pro" }]);
        let server = server_with_result(done(generic_only)).await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Ok(ProviderAnswer::NoMatch)
        );
        // A record where Dropcontact wrote no `email` key at all.
        let server = server_with_result(ResponseTemplate::new(200).set_body_json(json!({
            "data": [ { "first_name": "Ada", "last_name": "Quill" } ], "error": false, "success": true
        })))
        .await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Ok(ProviderAnswer::NoMatch)
        );
    }

    #[tokio::test]
    async fn invalid_domain_and_do_not_contact_addresses_are_not_found() {
        for qualification in [
            "invalid domain",
            "Do_Not_Contact",
            "do-not-contact",
            "nominative@invalid",
            "invalid@pro",
            "random@pro",
        ] {
            let only =
                json!([{ "email": "ada.quill@northwind.example", "qualification": qualification }]);
            let server = server_with_result(done(only)).await;
            assert_eq!(
                provider(&server).find(Field::Emails, &by_name()).await,
                Ok(ProviderAnswer::NoMatch),
                "{qualification}"
            );
        }
    }

    #[tokio::test]
    async fn catch_all_is_kept_however_it_is_written() {
        let server = server_with_result(done(json!([
            { "email": "ada@northwind.example", "qualification": "catch-all@pro" },
            { "email": "a.quill@northwind.example", "qualification": "non_confirm@pro" },
            { "email": "aq@northwind.example", "qualification": "Do_Not_Contact" },
            { "email": "quill@northwind.example", "qualification": "invalid domain" }
        ])))
        .await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Ok(ProviderAnswer::Found(vec![
                contact("ada@northwind.example", Some("work"), "catch-all@pro"),
                contact("a.quill@northwind.example", Some("work"), "non_confirm@pro"),
            ]))
        );
        assert_eq!(email_status(Some("catch-all@pro")), "accept_all");
        assert_eq!(email_status(Some("non_confirm@pro")), "accept_all");
    }

    #[tokio::test]
    async fn the_cascade_asks_the_next_provider_after_a_do_not_contact_address() {
        use crate::providers::cascade::{Cascade, CascadeOutcome};
        use crate::providers::hunter::HunterProvider;
        use std::sync::Arc;

        for qualification in ["Do_Not_Contact", "invalid domain"] {
            let only =
                json!([{ "email": "ada.quill@northwind.example", "qualification": qualification }]);
            let dropcontact = server_with_result(done(only)).await;
            let hunter = MockServer::start().await;
            Mock::given(method("GET"))
                .and(path("/v2/email-finder"))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                    "data": { "email": "ada@northwind.example", "score": 88,
                              "verification": { "status": "valid" } }
                })))
                .expect(1)
                .mount(&hunter)
                .await;
            let cascade = Cascade::new(
                vec![
                    Arc::new(provider(&dropcontact)),
                    Arc::new(HunterProvider::new(
                        reqwest::Client::new(),
                        hunter.uri(),
                        "k",
                    )),
                ],
                vec![],
                Duration::from_secs(5),
            );
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);

            let outcome = cascade.run(Field::Emails, &by_name(), deadline).await;

            let CascadeOutcome::Found {
                provider, contacts, ..
            } = outcome
            else {
                panic!("{qualification}: expected Hunter's hit, got {outcome:?}");
            };
            assert_eq!(provider, "hunter", "{qualification}");
            assert_eq!(
                contacts
                    .iter()
                    .map(|c| c.value.as_str())
                    .collect::<Vec<_>>(),
                vec!["ada@northwind.example"]
            );
            assert_eq!(contacts[0].confidence, Some(88));
        }
    }

    #[tokio::test]
    async fn status_401_is_unauthorized() {
        let server = MockServer::start().await;
        mount_send(
            &server,
            ResponseTemplate::new(401)
                .set_body_json(json!({"error": true, "reason": "Invalid token", "success": false})),
        )
        .await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::Unauthorized)
        );
        let server = MockServer::start().await;
        mount_send(
            &server,
            ResponseTemplate::new(403).set_body_json(json!({"detail": "Forbidden"})),
        )
        .await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::Unauthorized)
        );
    }

    #[tokio::test]
    async fn not_enough_credits_is_quota_exhausted() {
        let server = MockServer::start().await;
        mount_send(
            &server,
            ResponseTemplate::new(403).set_body_json(json!({
                "error": true, "reason": "You don't have enough credits for this request", "success": false
            })),
        )
        .await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::QuotaExhausted)
        );
        let server = MockServer::start().await;
        mount_send(&server, ResponseTemplate::new(402)).await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::QuotaExhausted)
        );
    }

    #[tokio::test]
    async fn status_429_carries_retry_after_when_sent() {
        let server = MockServer::start().await;
        mount_send(
            &server,
            ResponseTemplate::new(429).insert_header("Retry-After", "5"),
        )
        .await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(5))
            })
        );
        // Without one: the next second, where the per-second window starts again.
        let server = server_with_result(ResponseTemplate::new(429)).await;
        let answer = provider(&server).find(Field::Emails, &by_name()).await;
        assert!(
            matches!(answer, Err(ProviderError::RateLimited { retry_after: Some(wait) }) if wait <= Duration::from_secs(1)),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn submit_job_returns_the_request_id_and_poll_job_maps_pending_and_done() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/enrich/all"))
            .and(header("X-Access-Token", KEY))
            .respond_with(sent())
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("/v1/enrich/all/{REQUEST_ID}")))
            .respond_with(not_ready())
            .up_to_n_times(1)
            .expect(1)
            .mount(&server)
            .await;
        mount_fetch(
            &server,
            done(json!([{ "email": "ada.quill@northwind.example", "qualification": "nominative@pro" }])),
        )
        .await;
        let dropcontact = provider(&server);
        let jobs = dropcontact.jobs().expect("Dropcontact is asynchronous");

        let request_id = jobs.submit_job(Field::Emails, &by_name()).await;
        assert_eq!(request_id, Ok(Some(REQUEST_ID.to_string())));
        assert!(matches!(
            jobs.poll_job(Field::Emails, REQUEST_ID).await,
            Ok(JobPoll::Pending)
        ));
        let Ok(JobPoll::Done(found)) = jobs.poll_job(Field::Emails, REQUEST_ID).await else {
            panic!("expected the batch done");
        };
        assert_eq!(
            found,
            vec![contact(
                "ada.quill@northwind.example",
                Some("work"),
                "nominative@pro"
            )]
        );
        // A done batch without the person's email is done with nothing: the no match.
        let server = server_with_result(done(json!(null))).await;
        assert!(matches!(
            provider(&server).poll_job(Field::Emails, REQUEST_ID).await,
            Ok(JobPoll::Done(found)) if found.is_empty()
        ));
    }

    #[tokio::test]
    async fn submit_job_sends_nothing_for_phones_or_an_unsearchable_person() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(sent())
            .expect(0)
            .mount(&server)
            .await;
        let provider = provider(&server);
        assert_eq!(
            provider.submit_job(Field::Phones, &by_name()).await,
            Ok(None)
        );
        let nameless = PersonQuery {
            first_name: None,
            ..by_name()
        };
        assert_eq!(
            provider.submit_job(Field::Emails, &nameless).await,
            Ok(None)
        );
    }

    #[tokio::test]
    async fn a_rate_limited_or_failing_fetch_is_the_polls_error() {
        let server =
            server_with_result(ResponseTemplate::new(429).insert_header("Retry-After", "4")).await;
        assert_eq!(
            provider(&server)
                .poll_job(Field::Emails, REQUEST_ID)
                .await
                .err(),
            Some(ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(4))
            })
        );
        let server = server_with_result(ResponseTemplate::new(503)).await;
        assert_eq!(
            provider(&server)
                .poll_job(Field::Emails, REQUEST_ID)
                .await
                .err(),
            Some(ProviderError::Status(503))
        );
    }

    #[tokio::test]
    async fn server_and_request_errors_keep_their_status() {
        let server = MockServer::start().await;
        mount_send(
            &server,
            ResponseTemplate::new(500).set_body_json(json!({"detail": "Internal Server Error"})),
        )
        .await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::Status(500))
        );
        let server = server_with_result(ResponseTemplate::new(502)).await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::Status(502))
        );
        let server = MockServer::start().await;
        mount_send(
            &server,
            ResponseTemplate::new(400).set_body_json(
                json!({"error": true, "reason": "Missing data in JSON", "success": false}),
            ),
        )
        .await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::Status(400))
        );
    }

    #[tokio::test]
    async fn malformed_json_is_malformed() {
        let server = MockServer::start().await;
        mount_send(
            &server,
            ResponseTemplate::new(200).set_body_string("{\"request_id\": "),
        )
        .await;
        assert!(matches!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::Malformed(_))
        ));
        let server = MockServer::start().await;
        mount_send(
            &server,
            ResponseTemplate::new(200).set_body_json(json!({"success": true, "error": false})),
        )
        .await;
        assert!(matches!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::Malformed(_))
        ));
        let server =
            server_with_result(ResponseTemplate::new(200).set_body_string("{\"data\": [")).await;
        assert!(matches!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::Malformed(_))
        ));
        let server = server_with_result(done(json!("ada@northwind.example"))).await;
        assert!(matches!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn a_request_that_never_completes_is_cut_by_the_callers_timeout() {
        let server = server_with_result(not_ready()).await;
        let provider = provider(&server);

        let cut = tokio::time::timeout(
            Duration::from_millis(200),
            provider.find(Field::Emails, &by_name()),
        )
        .await;

        assert!(cut.is_err(), "still fetching when cut: {cut:?}");
        let requests = server.received_requests().await.unwrap();
        assert_eq!(requests_to(&requests, "POST"), 1);
        assert!(requests_to(&requests, "GET") >= 3, "fetched every few ms");
    }

    #[tokio::test]
    async fn the_default_poll_interval_is_two_seconds() {
        let provider =
            DropcontactProvider::new(reqwest::Client::new(), "https://api.dropcontact.com/", KEY);
        assert_eq!(provider.poll_interval(), DEFAULT_POLL_INTERVAL);
        assert_eq!(
            provider.enrich_url(),
            "https://api.dropcontact.com/v1/enrich/all"
        );
        assert_eq!(provider.with_poll_interval(FAST).poll_interval(), FAST);
    }

    #[tokio::test]
    async fn searches_emails_only_with_linkedin_or_name_and_company() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(500))
            .expect(0)
            .mount(&server)
            .await;
        let provider = provider(&server);
        assert!(provider.can_search(Field::Emails, &by_name()));
        assert!(!provider.can_search(Field::Phones, &by_name()));
        let by_profile = PersonQuery {
            linkedin_url: Some("https://www.linkedin.com/in/ada-quill-nw/".into()),
            ..PersonQuery::default()
        };
        assert!(provider.can_search(Field::Emails, &by_profile));
        let website_only = PersonQuery {
            company_name: None,
            ..by_name()
        };
        assert!(provider.can_search(Field::Emails, &website_only));
        let no_company = PersonQuery {
            company_name: None,
            company_domain: None,
            ..by_name()
        };
        assert!(!provider.can_search(Field::Emails, &no_company));
        assert_eq!(
            provider.find(Field::Phones, &by_name()).await,
            Ok(ProviderAnswer::NoMatch)
        );
        assert_eq!(
            provider.find(Field::Emails, &no_company).await,
            Ok(ProviderAnswer::NoMatch)
        );
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_an_error_and_an_error_body_over_it_leaves_the_status() {
        let too_large = Err(ProviderError::BodyTooLarge {
            limit: crate::providers::MAX_PROVIDER_BODY_BYTES,
        });
        let server = MockServer::start().await;
        mount_send(
            &server,
            ResponseTemplate::new(200).set_body_bytes(vec![b' '; 2 * 1024 * 1024]),
        )
        .await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            too_large
        );

        let server = MockServer::start().await;
        mount_send(
            &server,
            ResponseTemplate::new(503).set_body_bytes(vec![b' '; 2 * 1024 * 1024]),
        )
        .await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::Status(503))
        );

        let server =
            server_with_result(
                ResponseTemplate::new(200).set_body_bytes(vec![b' '; 2 * 1024 * 1024]),
            )
            .await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            too_large
        );
    }
}
