//! FullEnrich's contact enrichment (API v2), as documented at
//! <https://docs.fullenrich.com/api/v2/contact/enrich/bulk/post> (start) and
//! <https://docs.fullenrich.com/api/v2/contact/enrich/bulk/get> (result), with the OpenAPI
//! document those pages are generated from. FullEnrich runs a waterfall of its own vendors, so
//! an enrichment is asynchronous: start it, then poll its result (FullEnrich recommends a
//! webhook instead; a Lambda worker has no address to receive one, so this adapter polls).
//!
//! Start: `POST {base}/api/v2/contact/enrich/bulk` with `Authorization: Bearer KEY`:
//! ```json
//! { "name": "Ada Quill",
//!   "data": [ { "first_name": "Ada", "last_name": "Quill", "domain": "northwind.example",
//!               "company_name": "Northwind Labs", "linkedin_url": "https://www.linkedin.com/in/...",
//!               "enrich_fields": ["contact.work_emails"] } ] }
//! ```
//! (`contact.phones` for phones; personal emails, `contact.personal_emails`, cost 3 credits and
//! are not asked for). A contact needs `first_name` + `last_name` + (`domain` or
//! `company_name`), or a `linkedin_url`. Answer (200): `{ "enrichment_id": "2db5ea61-..." }`.
//!
//! Result: `GET {base}/api/v2/contact/enrich/bulk/{enrichment_id}`, same header. Answer (200):
//! ```json
//! { "id": "2db5ea61-...", "name": "Ada Quill", "status": "FINISHED", "cost": { "credits": 1 },
//!   "data": [ { "input": { ... }, "custom": { },
//!               "contact_info": {
//!                 "most_probable_work_email": { "email": "ada@northwind.example", "status": "DELIVERABLE" },
//!                 "work_emails": [ { "email": "ada@northwind.example", "status": "DELIVERABLE" } ],
//!                 "most_probable_personal_email": null, "personal_emails": [],
//!                 "most_probable_phone": { "number": "+1 415-555-0132", "region": "US" },
//!                 "phones": [ { "number": "+1 415-555-0132", "region": "US" } ] },
//!               "profile": { ... } } ] }
//! ```
//! `status` of the enrichment: `CREATED`, `IN_PROGRESS`, `FINISHED`, `CANCELED`,
//! `CREDITS_INSUFFICIENT`, `RATE_LIMIT`, `UNKNOWN`. An email's `status`: `DELIVERABLE`,
//! `HIGH_PROBABILITY`, `CATCH_ALL`, `INVALID`, `INVALID_DOMAIN` (the last two are dropped).
//! A finished enrichment whose contact has no value of the field is the no match (FullEnrich
//! charges only for found values).
//!
//! Until the enrichment is finished the result endpoint answers 400
//! `{ "code": "error.enrichment.in_progress", "message": "Enrichment not ready, try again in 30 seconds" }`
//! (or, with `forceResults`, a 200 whose `status` is `IN_PROGRESS`; both are read as "poll
//! again"). Errors are `{ "code": "error.api.key", "message": "..." }`, mapped as:
//!
//! | status | meaning | result |
//! |---|---|---|
//! | 401, 403 | `error.authorization.*`, `error.api.key` | `Unauthorized` |
//! | 402, or `status: CREDITS_INSUFFICIENT` | out of credits | `QuotaExhausted` |
//! | 429, or `status: RATE_LIMIT` | `error.rate.limit` | `RateLimited`: a `Retry-After` if sent, else the next calendar minute |
//! | 404 on the result | `error.enrichment.not_found` | `Status(404)` |
//! | `status: CANCELED` | the enrichment was canceled | `Malformed` (no data will come) |
//! | other 4xx, 5xx | | `Status(code)` |
//!
//! **Rate limit** (<https://docs.fullenrich.com/api/v2/general/ratelimit> and "Rate Limits &
//! Volume"): 60 calls per minute for the whole account, polls included, counted in a fixed
//! window per calendar minute that starts again at the top of each minute. FullEnrich sends no
//! header saying when to come back, so the wait of its 429 (or of an enrichment whose `status`
//! is `RATE_LIMIT`) is the time left until the next minute starts (UTC); a `Retry-After` a
//! server sends anyway is honoured.
//!
//! The worker fed by SQS submits once and polls once per attempt through [`ProviderJobs`], the
//! job deferred on the queue in between (see [`crate::providers::cascade::CascadeJournal`]).
//! [`Provider::find`] polls inside one call, every poll interval, until the enrichment is
//! finished: the cascade's per-provider timeout (and the Lambda deadline behind it) is what
//! stops an enrichment that never finishes there, as a [`ProviderError::Timeout`].
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

use crate::domain::Field;
use crate::identity::bare_domain;
use crate::providers::{
    Endpoint, JobPoll, MatchBasis, PersonQuery, Provider, ProviderAnswer, ProviderError,
    ProviderJobs, RawContact, non_blank, poll_until_done, read_body, read_error_body,
    request_error, retry_after, until_next_minute,
};

/// The provider name used in configuration (`EMAIL_PROVIDERS`, `PHONE_PROVIDERS`) and on stored
/// contacts.
pub const NAME: &str = "fullenrich";

/// The pause between two result polls when none is configured.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// FullEnrich's bulk contact enrichment for one contact: starts an enrichment, then polls its
/// result until it is finished. Finds work emails and mobile phones.
pub struct FullEnrichProvider {
    endpoint: Endpoint,
    poll_interval: Duration,
}

impl FullEnrichProvider {
    /// A provider calling `{base_url}/api/v2/contact/enrich/bulk` with `api_key` as a bearer
    /// token, polling every [`DEFAULT_POLL_INTERVAL`].
    ///
    /// `base_url` is the API origin without the `/api/v2` prefix (`https://app.fullenrich.com`,
    /// or the local simulator's `http://127.0.0.1:PORT/fullenrich`); a trailing `/` is ignored.
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

    /// The same provider, waiting `interval` before each result poll.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The pause before each result poll.
    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    fn bulk_url(&self) -> String {
        format!("{}/api/v2/contact/enrich/bulk", self.endpoint.base_url)
    }
}

#[derive(Debug, Serialize)]
struct StartRequest {
    name: String,
    data: Vec<Contact>,
}

/// One contact of a bulk enrichment, with the identifying fields the person has.
#[derive(Debug, Serialize)]
struct Contact {
    #[serde(skip_serializing_if = "Option::is_none")]
    first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    company_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    linkedin_url: Option<String>,
    enrich_fields: Vec<&'static str>,
}

/// The contact for `person`, or `None` when FullEnrich cannot enrich it: it needs a LinkedIn
/// URL, or a first and last name with a company domain or name.
fn contact(field: Field, person: &PersonQuery) -> Option<Contact> {
    let contact = Contact {
        first_name: non_blank(&person.first_name).map(str::to_string),
        last_name: non_blank(&person.last_name).map(str::to_string),
        domain: non_blank(&person.company_domain).and_then(bare_domain),
        company_name: non_blank(&person.company_name).map(str::to_string),
        linkedin_url: non_blank(&person.linkedin_url).map(str::to_string),
        enrich_fields: vec![match field {
            Field::Emails => "contact.work_emails",
            Field::Phones => "contact.phones",
        }],
    };
    let by_name = contact.first_name.is_some()
        && contact.last_name.is_some()
        && (contact.domain.is_some() || contact.company_name.is_some());
    (contact.linkedin_url.is_some() || by_name).then_some(contact)
}

/// The enrichment's dashboard name: "First Last", as FullEnrich suggests for one contact.
fn enrichment_name(contact: &Contact) -> String {
    match (
        &contact.first_name,
        &contact.last_name,
        &contact.linkedin_url,
    ) {
        (Some(first), Some(last), _) => format!("{first} {last}"),
        (_, _, Some(url)) => url.clone(),
        _ => "contact enrichment".to_string(),
    }
}

#[derive(Debug, Deserialize)]
struct StartResponse {
    enrichment_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ResultResponse {
    status: Option<String>,
    #[serde(default)]
    data: Option<Vec<EnrichedContact>>,
}

#[derive(Debug, Deserialize)]
struct EnrichedContact {
    contact_info: Option<ContactInfo>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ContactInfo {
    most_probable_work_email: Option<EmailResult>,
    work_emails: Option<Vec<EmailResult>>,
    most_probable_personal_email: Option<EmailResult>,
    personal_emails: Option<Vec<EmailResult>>,
    most_probable_phone: Option<PhoneResult>,
    phones: Option<Vec<PhoneResult>>,
}

#[derive(Debug, Deserialize)]
struct EmailResult {
    email: Option<String>,
    status: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PhoneResult {
    number: Option<String>,
    /// The number's country, ISO 3166 alpha-2 (`US`): the region a national writing is read in.
    region: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorResponse {
    code: Option<String>,
}

/// The contacts of `field` in a finished enrichment, best first: for emails the most probable
/// work email, the other work emails, then any personal ones; for phones the most probable
/// phone, then the others. Emails graded `INVALID` or `INVALID_DOMAIN` are dropped.
fn collect(field: Field, info: &ContactInfo) -> Vec<RawContact> {
    let mut contacts = Vec::new();
    match field {
        Field::Emails => {
            let work = info
                .most_probable_work_email
                .iter()
                .chain(info.work_emails.iter().flatten());
            let personal = info
                .most_probable_personal_email
                .iter()
                .chain(info.personal_emails.iter().flatten());
            for (kind, email) in work
                .map(|e| ("work", e))
                .chain(personal.map(|e| ("personal", e)))
            {
                let Some(value) = email
                    .email
                    .as_deref()
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                else {
                    continue;
                };
                if matches!(email.status.as_deref(), Some("INVALID" | "INVALID_DOMAIN")) {
                    continue;
                }
                contacts.push(RawContact {
                    value: value.to_string(),
                    kind: Some(kind.into()),
                    status: email.status.clone(),
                    confidence: None,
                });
            }
        }
        Field::Phones => {
            for phone in info
                .most_probable_phone
                .iter()
                .chain(info.phones.iter().flatten())
            {
                if let Some(value) = phone
                    .number
                    .as_deref()
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                {
                    // FullEnrich's `region` reads a national writing in the person's country.
                    let value = crate::providers::normalize::with_region_hint(
                        value,
                        phone.region.as_deref(),
                    );
                    contacts.push(RawContact {
                        value,
                        kind: Some("mobile".into()),
                        status: None,
                        confidence: None,
                    });
                }
            }
        }
    }
    contacts
}

/// The error of a non-200 answer that is not "still in progress".
fn status_error(status: StatusCode, headers: &HeaderMap) -> ProviderError {
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ProviderError::Unauthorized,
        StatusCode::PAYMENT_REQUIRED => ProviderError::QuotaExhausted,
        StatusCode::TOO_MANY_REQUESTS => ProviderError::RateLimited {
            retry_after: retry_after(headers).or_else(|| Some(until_next_minute(Utc::now()))),
        },
        other => ProviderError::Status(other.as_u16()),
    }
}

impl FullEnrichProvider {
    async fn start(&self, contact: Contact) -> Result<String, ProviderError> {
        let body = StartRequest {
            name: enrichment_name(&contact),
            data: vec![contact],
        };
        let response = self
            .endpoint
            .http
            .post(self.bulk_url())
            .bearer_auth(&self.endpoint.api_key)
            .json(&body)
            .send()
            .await
            .map_err(request_error)?;
        let status = response.status();
        if status != StatusCode::OK {
            return Err(status_error(status, response.headers()));
        }
        let body = read_body(response).await?;
        let parsed: StartResponse = serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Malformed(format!("enrich/bulk start body: {e}")))?;
        parsed
            .enrichment_id
            .filter(|id| !id.trim().is_empty())
            .ok_or_else(|| {
                ProviderError::Malformed("enrich/bulk start has no `enrichment_id`".into())
            })
    }

    async fn poll(&self, field: Field, id: &str) -> Result<JobPoll, ProviderError> {
        let response = self
            .endpoint
            .http
            .get(format!("{}/{id}", self.bulk_url()))
            .bearer_auth(&self.endpoint.api_key)
            .send()
            .await
            .map_err(request_error)?;
        let status = response.status();
        let headers = response.headers().clone();
        if status == StatusCode::BAD_REQUEST {
            let body = read_error_body(response).await?;
            let code = serde_json::from_slice::<ErrorResponse>(&body)
                .ok()
                .and_then(|e| e.code);
            if code.as_deref() == Some("error.enrichment.in_progress") {
                return Ok(JobPoll::Pending);
            }
            return Err(status_error(status, &headers));
        }
        if status != StatusCode::OK {
            return Err(status_error(status, &headers));
        }
        let body = read_body(response).await?;
        let parsed: ResultResponse = serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Malformed(format!("enrich/bulk result body: {e}")))?;
        match parsed.status.as_deref().unwrap_or_default() {
            "FINISHED" => {}
            "CREATED" | "IN_PROGRESS" | "UNKNOWN" => return Ok(JobPoll::Pending),
            "CREDITS_INSUFFICIENT" => return Err(ProviderError::QuotaExhausted),
            "RATE_LIMIT" => {
                return Err(ProviderError::RateLimited {
                    retry_after: Some(until_next_minute(Utc::now())),
                });
            }
            "CANCELED" => {
                return Err(ProviderError::Malformed(format!(
                    "enrichment {id} was canceled"
                )));
            }
            other => {
                return Err(ProviderError::Malformed(format!(
                    "enrichment {id} has unknown status {other:?}"
                )));
            }
        }
        let data = parsed
            .data
            .ok_or_else(|| ProviderError::Malformed("finished enrichment has no `data`".into()))?;
        let contacts = data
            .iter()
            .filter_map(|c| c.contact_info.as_ref())
            .flat_map(|info| collect(field, info))
            .collect();
        Ok(JobPoll::Done(contacts))
    }
}

#[async_trait]
impl Provider for FullEnrichProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    /// A profile lookup: with a LinkedIn URL, FullEnrich matches the profile (FullEnrich docs,
    /// "Start enrichment"); without one, name and company.
    fn match_basis(&self) -> MatchBasis {
        MatchBasis::LinkedinFirst
    }

    /// True, for either field, when the person has a LinkedIn URL, or a first and last name
    /// with a company domain or name.
    fn can_search(&self, field: Field, person: &PersonQuery) -> bool {
        contact(field, person).is_some()
    }

    /// Starts an enrichment of the person for `field`, then polls its result every poll
    /// interval until it is finished; never returns while it is in progress (the caller's
    /// timeout cuts it). A person it cannot search is a [`ProviderAnswer::NoMatch`] without a
    /// call. Emails come back with `kind` `work` (or `personal`) and FullEnrich's grade as
    /// `status`; phones with `kind` `mobile`.
    ///
    /// Errors: see the module docs; an unreadable 200 body is [`ProviderError::Malformed`].
    async fn find(
        &self,
        field: Field,
        person: &PersonQuery,
    ) -> Result<ProviderAnswer, ProviderError> {
        let Some(id) = self.submit_job(field, person).await? else {
            return Ok(ProviderAnswer::NoMatch);
        };
        poll_until_done(NAME, &id, self.poll_interval, || self.poll(field, &id)).await
    }

    fn jobs(&self) -> Option<&dyn ProviderJobs> {
        Some(self)
    }
}

#[async_trait]
impl ProviderJobs for FullEnrichProvider {
    /// Starts an enrichment of the person for `field` (paid when it finds data); its
    /// `enrichment_id`.
    async fn submit_job(
        &self,
        field: Field,
        person: &PersonQuery,
    ) -> Result<Option<String>, ProviderError> {
        let Some(contact) = contact(field, person) else {
            return Ok(None);
        };
        let id = self.start(contact).await?;
        tracing::debug!(provider = NAME, enrichment_id = %id, "enrichment started");
        Ok(Some(id))
    }

    /// One `GET` of the enrichment's result.
    async fn poll_job(&self, field: Field, job_id: &str) -> Result<JobPoll, ProviderError> {
        self.poll(field, job_id).await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use wiremock::matchers::{body_json, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;

    const KEY: &str = "fullenrich-test-key";
    const ID: &str = "2db5ea61-1752-42cf-8ea1-ab1da060cd0a";
    const FAST: Duration = Duration::from_millis(5);

    fn by_name() -> PersonQuery {
        PersonQuery {
            first_name: Some("Ada".into()),
            last_name: Some(" Quill".into()),
            company_name: Some("Northwind Labs".into()),
            company_domain: Some("www.northwind.example".into()),
            linkedin_url: None,
        }
    }

    fn by_profile() -> PersonQuery {
        PersonQuery {
            linkedin_url: Some("https://www.linkedin.com/in/ada-quill-nw/".into()),
            ..PersonQuery::default()
        }
    }

    fn started() -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(json!({ "enrichment_id": ID }))
    }

    fn in_progress() -> ResponseTemplate {
        ResponseTemplate::new(400).set_body_json(json!({
            "code": "error.enrichment.in_progress",
            "message": "Enrichment not ready, try again in 30 seconds"
        }))
    }

    fn result(status: &str, contact_info: serde_json::Value) -> serde_json::Value {
        json!({
            "id": ID, "name": "Ada Quill", "status": status, "cost": { "credits": 1 },
            "data": [ {
                "input": { "first_name": "Ada", "last_name": "Quill", "company_domain": "northwind.example" },
                "custom": {},
                "contact_info": contact_info,
                "profile": null
            } ]
        })
    }

    fn found_info() -> serde_json::Value {
        json!({
            "most_probable_work_email": { "email": "ada.quill@northwind.example", "status": "DELIVERABLE" },
            "most_probable_personal_email": null,
            "most_probable_phone": { "number": "+1 415-555-0132", "region": "US" },
            "work_emails": [
                { "email": "ada.quill@northwind.example", "status": "DELIVERABLE" },
                { "email": "aq@northwind.example", "status": "CATCH_ALL" },
                { "email": "ada@northwind.example", "status": "INVALID" }
            ],
            "personal_emails": [],
            "phones": [ { "number": "+1 415-555-0132", "region": "US" }, { "number": "+44 20 7946 0321", "region": "GB" } ]
        })
    }

    fn empty_info() -> serde_json::Value {
        json!({
            "most_probable_work_email": null, "most_probable_personal_email": null,
            "most_probable_phone": null, "work_emails": [], "personal_emails": [], "phones": []
        })
    }

    fn contact(value: &str, kind: &str, status: Option<&str>) -> RawContact {
        RawContact {
            value: value.into(),
            kind: Some(kind.into()),
            status: status.map(str::to_string),
            confidence: None,
        }
    }

    fn provider(server: &MockServer) -> FullEnrichProvider {
        FullEnrichProvider::new(reqwest::Client::new(), server.uri(), KEY).with_poll_interval(FAST)
    }

    async fn mount_start(server: &MockServer, response: ResponseTemplate) {
        Mock::given(method("POST"))
            .and(path("/api/v2/contact/enrich/bulk"))
            .respond_with(response)
            .mount(server)
            .await;
    }

    async fn mount_result(server: &MockServer, response: ResponseTemplate) {
        Mock::given(method("GET"))
            .and(path(format!("/api/v2/contact/enrich/bulk/{ID}")))
            .respond_with(response)
            .mount(server)
            .await;
    }

    /// A server that starts the enrichment and answers `result` to every poll.
    async fn server_with_result(result: ResponseTemplate) -> MockServer {
        let server = MockServer::start().await;
        mount_start(&server, started()).await;
        mount_result(&server, result).await;
        server
    }

    fn requests_to(requests: &[wiremock::Request], verb: &str) -> usize {
        requests
            .iter()
            .filter(|r| r.method.as_str() == verb)
            .count()
    }

    #[tokio::test]
    async fn pending_then_finished_polls_until_done_and_returns_emails_best_first() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/api/v2/contact/enrich/bulk"))
            .and(header("authorization", format!("Bearer {KEY}").as_str()))
            .and(body_json(json!({
                "name": "Ada Quill",
                "data": [ {
                    "first_name": "Ada", "last_name": "Quill", "domain": "northwind.example",
                    "company_name": "Northwind Labs", "enrich_fields": ["contact.work_emails"]
                } ]
            })))
            .respond_with(started())
            .expect(1)
            .mount(&server)
            .await;
        // Two polls in progress (the documented 400, then a 200 IN_PROGRESS), then finished.
        Mock::given(method("GET"))
            .and(path(format!("/api/v2/contact/enrich/bulk/{ID}")))
            .respond_with(in_progress())
            .up_to_n_times(1)
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("/api/v2/contact/enrich/bulk/{ID}")))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"id": ID, "status": "IN_PROGRESS", "data": []})),
            )
            .up_to_n_times(1)
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("/api/v2/contact/enrich/bulk/{ID}")))
            .and(header("authorization", format!("Bearer {KEY}").as_str()))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(result("FINISHED", found_info())),
            )
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
                contact("ada.quill@northwind.example", "work", Some("DELIVERABLE")),
                contact("ada.quill@northwind.example", "work", Some("DELIVERABLE")),
                contact("aq@northwind.example", "work", Some("CATCH_ALL")),
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
    async fn phones_by_linkedin_ask_for_phones_only() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/api/v2/contact/enrich/bulk"))
            .and(body_json(json!({
                "name": "https://www.linkedin.com/in/ada-quill-nw/",
                "data": [ { "linkedin_url": "https://www.linkedin.com/in/ada-quill-nw/",
                            "enrich_fields": ["contact.phones"] } ]
            })))
            .respond_with(started())
            .expect(1)
            .mount(&server)
            .await;
        mount_result(
            &server,
            ResponseTemplate::new(200).set_body_json(result("FINISHED", found_info())),
        )
        .await;

        let answer = provider(&server)
            .find(Field::Phones, &by_profile())
            .await
            .unwrap();

        assert_eq!(
            answer,
            ProviderAnswer::Found(vec![
                contact("+1 415-555-0132", "mobile", None),
                contact("+1 415-555-0132", "mobile", None),
                contact("+44 20 7946 0321", "mobile", None),
            ])
        );
    }

    #[tokio::test]
    async fn a_finished_enrichment_without_values_is_a_miss() {
        let server = server_with_result(
            ResponseTemplate::new(200).set_body_json(result("FINISHED", empty_info())),
        )
        .await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Ok(ProviderAnswer::NoMatch)
        );
        let only_invalid = json!({ "work_emails": [ { "email": "ada@northwind.example", "status": "INVALID_DOMAIN" } ] });
        let server = server_with_result(
            ResponseTemplate::new(200).set_body_json(result("FINISHED", only_invalid)),
        )
        .await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Ok(ProviderAnswer::NoMatch)
        );
    }

    #[tokio::test]
    async fn status_401_is_unauthorized() {
        let server = MockServer::start().await;
        mount_start(
            &server,
            ResponseTemplate::new(401)
                .set_body_json(json!({"code": "error.api.key", "message": "Unknown api key"})),
        )
        .await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::Unauthorized)
        );
        let server = server_with_result(ResponseTemplate::new(403)).await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::Unauthorized)
        );
    }

    #[tokio::test]
    async fn out_of_credits_is_quota_exhausted() {
        // The result endpoint's 402 carries the result with status CREDITS_INSUFFICIENT.
        let server = server_with_result(
            ResponseTemplate::new(402).set_body_json(result("CREDITS_INSUFFICIENT", empty_info())),
        )
        .await;
        assert_eq!(
            provider(&server).find(Field::Phones, &by_name()).await,
            Err(ProviderError::QuotaExhausted)
        );
        let server = server_with_result(
            ResponseTemplate::new(200).set_body_json(result("CREDITS_INSUFFICIENT", empty_info())),
        )
        .await;
        assert_eq!(
            provider(&server).find(Field::Phones, &by_name()).await,
            Err(ProviderError::QuotaExhausted)
        );
        let server = MockServer::start().await;
        mount_start(&server, ResponseTemplate::new(402)).await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::QuotaExhausted)
        );
    }

    #[tokio::test]
    async fn status_429_carries_retry_after_when_sent() {
        let limited =
            json!({"code": "error.rate.limit", "message": "Too many requests. Try again in 1m"});
        let server = MockServer::start().await;
        mount_start(
            &server,
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "60")
                .set_body_json(limited.clone()),
        )
        .await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(60))
            })
        );
    }

    /// The wait of a rate-limited answer, which must be there and within a minute.
    fn wait_of(answer: Result<ProviderAnswer, ProviderError>) -> Duration {
        let Err(ProviderError::RateLimited {
            retry_after: Some(wait),
        }) = answer
        else {
            panic!("expected a rate limit with a wait, got {answer:?}");
        };
        assert!(wait <= Duration::from_secs(60), "{wait:?}");
        wait
    }

    #[tokio::test]
    async fn a_429_without_retry_after_waits_for_the_next_calendar_minute() {
        let limited =
            json!({"code": "error.rate.limit", "message": "Too many requests. Try again in 1m"});
        let server = server_with_result(ResponseTemplate::new(429).set_body_json(limited)).await;
        let before = Utc::now();
        let wait = wait_of(provider(&server).find(Field::Emails, &by_name()).await);
        let after = Utc::now();
        // The wait ends at the top of the minute (unless a minute began during the call).
        let top = crate::providers::until_next_minute(before);
        let elapsed = (after - before).to_std().unwrap();
        if crate::providers::until_next_minute(after) <= top {
            assert!(wait <= top && top <= wait + elapsed, "{wait:?} vs {top:?}");
        }

        let server = server_with_result(
            ResponseTemplate::new(200).set_body_json(result("RATE_LIMIT", empty_info())),
        )
        .await;
        wait_of(provider(&server).find(Field::Emails, &by_name()).await);
    }

    #[tokio::test]
    async fn server_errors_and_unknown_enrichments_keep_their_status() {
        let server = MockServer::start().await;
        mount_start(&server, ResponseTemplate::new(500)).await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::Status(500))
        );
        let server = server_with_result(ResponseTemplate::new(503)).await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::Status(503))
        );
        let not_found =
            json!({"code": "error.enrichment.not_found", "message": "Enrichment ID not found"});
        let server = server_with_result(ResponseTemplate::new(404).set_body_json(not_found)).await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::Status(404))
        );
        let bad_request =
            json!({"code": "error.enrichment.domain.empty", "message": "Domain cannot be empty"});
        let server = MockServer::start().await;
        mount_start(
            &server,
            ResponseTemplate::new(400).set_body_json(bad_request),
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
        mount_start(
            &server,
            ResponseTemplate::new(200).set_body_string("{\"enrichment_id\": "),
        )
        .await;
        assert!(matches!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::Malformed(_))
        ));
        let server = MockServer::start().await;
        mount_start(&server, ResponseTemplate::new(200).set_body_json(json!({}))).await;
        assert!(matches!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::Malformed(_))
        ));
        let server =
            server_with_result(ResponseTemplate::new(200).set_body_string("{\"status\": \"FINI"))
                .await;
        assert!(matches!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::Malformed(_))
        ));
        let server = server_with_result(
            ResponseTemplate::new(200).set_body_json(result("CANCELED", empty_info())),
        )
        .await;
        assert!(matches!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn a_never_finishing_enrichment_is_cut_by_the_callers_timeout() {
        let server = server_with_result(in_progress()).await;
        let provider = provider(&server);

        let cut = tokio::time::timeout(
            Duration::from_millis(200),
            provider.find(Field::Emails, &by_name()),
        )
        .await;

        assert!(cut.is_err(), "still polling when cut: {cut:?}");
        let requests = server.received_requests().await.unwrap();
        assert_eq!(requests_to(&requests, "POST"), 1);
        assert!(requests_to(&requests, "GET") >= 3, "polled every few ms");
    }

    #[tokio::test]
    async fn the_default_poll_interval_is_two_seconds() {
        let provider =
            FullEnrichProvider::new(reqwest::Client::new(), "https://app.fullenrich.com/", KEY);
        assert_eq!(provider.poll_interval(), DEFAULT_POLL_INTERVAL);
        assert_eq!(
            provider.bulk_url(),
            "https://app.fullenrich.com/api/v2/contact/enrich/bulk"
        );
        let provider = provider.with_poll_interval(FAST);
        assert_eq!(provider.poll_interval(), FAST);
    }

    #[tokio::test]
    async fn can_search_with_linkedin_or_name_and_company() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(500))
            .expect(0)
            .mount(&server)
            .await;
        let provider = provider(&server);
        for field in [Field::Emails, Field::Phones] {
            assert!(provider.can_search(field, &by_name()));
            assert!(provider.can_search(field, &by_profile()));
            let no_company = PersonQuery {
                company_domain: None,
                company_name: Some("  ".into()),
                ..by_name()
            };
            assert!(!provider.can_search(field, &no_company));
            let no_first_name = PersonQuery {
                first_name: None,
                ..by_name()
            };
            assert!(!provider.can_search(field, &no_first_name));
            assert_eq!(
                provider.find(field, &no_company).await,
                Ok(ProviderAnswer::NoMatch)
            );
        }
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_an_error_and_an_error_body_over_it_leaves_the_status() {
        let too_large = Err(ProviderError::BodyTooLarge {
            limit: crate::providers::MAX_PROVIDER_BODY_BYTES,
        });
        let server = MockServer::start().await;
        mount_start(
            &server,
            ResponseTemplate::new(200).set_body_bytes(vec![b' '; 2 * 1024 * 1024]),
        )
        .await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            too_large
        );

        let server = MockServer::start().await;
        mount_start(&server, started()).await;
        mount_result(
            &server,
            ResponseTemplate::new(200).set_body_bytes(vec![b' '; 2 * 1024 * 1024]),
        )
        .await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            too_large
        );

        let server = MockServer::start().await;
        mount_start(&server, started()).await;
        mount_result(
            &server,
            ResponseTemplate::new(400).set_body_bytes(vec![b' '; 2 * 1024 * 1024]),
        )
        .await;
        assert_eq!(
            provider(&server).find(Field::Emails, &by_name()).await,
            Err(ProviderError::Status(400))
        );
    }
}
