//! The provider simulator: Hunter.io's Email Finder and People Data Labs' Person Enrichment on
//! loopback, speaking their wire formats (see `enrichment::providers::hunter` and
//! `enrichment::providers::pdl` for the documented shapes), answering from a fixture of known
//! people.
//!
//! Routes, so that the base URLs are `http://127.0.0.1:PORT/hunter` and `.../pdl`:
//!
//! - `GET /hunter/v2/email-finder?domain=&first_name=&last_name=&api_key=` (also `full_name`,
//!   `company`, `linkedin_handle`). Found: 200 with `data.email`; anyone else: 200 with
//!   `data.email: null`, Hunter's no match.
//! - `GET /pdl/v5/person/enrich` with `X-Api-Key` (or `api_key`) and `profile`, or
//!   `first_name` + `last_name` + `company` (name or domain), and `required`. Found: 200 with
//!   `status`, `likelihood`, `data`; anyone else (or a record without the `required` fields):
//!   404 `not_found`.
//!
//! A person matches by LinkedIn URL (scheme, `www.`, query, trailing slash and case ignored), or
//! by full name (case-insensitive) and company domain (or, for PDL, company name). Any API key is
//! accepted except an empty one, which gets the provider's 401. A provider record can also slow
//! the answer (`simulate.delay_ms`) or fail it (`simulate.fail_status`, with
//! `simulate.retry_after_seconds` for 403/429),
//! to show latency, errors and rate limiting.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One person the simulated providers know, and what each of them knows about that person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownPerson {
    /// Given name, matched case-insensitively.
    pub first_name: String,
    /// Family name, matched case-insensitively.
    pub last_name: String,
    /// Employer's name (PDL's `company` may name it).
    #[serde(default)]
    pub company_name: Option<String>,
    /// Employer's domain (`northwind.example`).
    #[serde(default)]
    pub company_domain: Option<String>,
    /// LinkedIn profile URL, in any usual writing.
    #[serde(default)]
    pub linkedin_url: Option<String>,
    /// What Hunter's Email Finder answers for this person; `None`: Hunter finds nothing.
    #[serde(default)]
    pub hunter: Option<HunterRecord>,
    /// What PDL's Person Enrichment answers for this person; `None`: PDL finds nothing.
    #[serde(default)]
    pub pdl: Option<PdlRecord>,
}

/// Hunter's Email Finder result for a known person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HunterRecord {
    /// The address found.
    pub email: String,
    /// Hunter's confidence, 0-100.
    #[serde(default = "default_score")]
    pub score: u8,
    /// `verification.status`: `valid`, `accept_all`, `unknown`...
    #[serde(default)]
    pub verification_status: Option<String>,
    /// Job title.
    #[serde(default)]
    pub position: Option<String>,
    /// Latency and failures of this provider for this person.
    #[serde(default, skip_serializing_if = "Behavior::is_plain")]
    pub simulate: Behavior,
}

/// PDL's Person Enrichment record for a known person (contact fields of PDL's person schema).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PdlRecord {
    /// `work_email`; also listed in `emails` as `current_professional`.
    #[serde(default)]
    pub work_email: Option<String>,
    /// `personal_emails`; also listed in `emails` as `personal`.
    #[serde(default)]
    pub personal_emails: Vec<String>,
    /// `mobile_phone`, written as the provider writes it.
    #[serde(default)]
    pub mobile_phone: Option<String>,
    /// `phone_numbers`, written as the provider writes them.
    #[serde(default)]
    pub phone_numbers: Vec<String>,
    /// PDL's match confidence, 1-10.
    #[serde(default = "default_likelihood")]
    pub likelihood: u8,
    /// Latency and failures of this provider for this person.
    #[serde(default, skip_serializing_if = "Behavior::is_plain")]
    pub simulate: Behavior,
}

/// Latency and failures a simulated provider shows for one person (fixture key `simulate`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Behavior {
    /// Milliseconds to wait before answering.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub delay_ms: u64,
    /// Answer this HTTP status, with the provider's error body, instead of the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_status: Option<u16>,
    /// `Retry-After` (seconds) sent with `fail_status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
}

impl Behavior {
    /// No delay and no failure.
    pub fn is_plain(&self) -> bool {
        *self == Behavior::default()
    }
}

fn default_score() -> u8 {
    90
}

fn default_likelihood() -> u8 {
    9
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// Reads a fixture: a JSON array of [`KnownPerson`]. Errors (as text naming the file): the file
/// cannot be read, is not such an array, or a person has a blank name or no provider record.
pub fn load_fixture(path: impl AsRef<Path>) -> Result<Vec<KnownPerson>, String> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read fixture {}: {e}", path.display()))?;
    let people: Vec<KnownPerson> = serde_json::from_str(&text).map_err(|e| {
        format!(
            "fixture {} is not a list of known people: {e}",
            path.display()
        )
    })?;
    for (index, person) in people.iter().enumerate() {
        if person.first_name.trim().is_empty() || person.last_name.trim().is_empty() {
            return Err(format!(
                "fixture {}: person #{index} needs a first and a last name",
                path.display()
            ));
        }
        if person.hunter.is_none() && person.pdl.is_none() {
            return Err(format!(
                "fixture {}: {} {} has neither a hunter nor a pdl record",
                path.display(),
                person.first_name,
                person.last_name
            ));
        }
    }
    Ok(people)
}

/// The simulator's routes (see the module docs) over `people`.
pub fn router(people: Vec<KnownPerson>) -> Router {
    Router::new()
        .route("/hunter/v2/email-finder", get(hunter_email_finder))
        .route("/pdl/v5/person/enrich", get(pdl_person_enrich))
        .with_state(Arc::new(people))
}

type People = Arc<Vec<KnownPerson>>;
type Params = HashMap<String, String>;

/// `linkedin.com/in/handle` from any usual writing of a profile URL; `None` when blank.
fn linkedin_key(url: &str) -> Option<String> {
    let url = url.trim().to_lowercase();
    let url = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(&url);
    let url = url.strip_prefix("www.").unwrap_or(url);
    let url = url.split(['?', '#']).next().unwrap_or_default();
    let url = url.trim_end_matches('/');
    (!url.is_empty()).then(|| url.to_string())
}

/// A domain without scheme, `www.`, path or case; `None` when blank.
fn domain_key(value: &str) -> Option<String> {
    let value = value.trim().to_lowercase();
    let value = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
        .unwrap_or(&value);
    let host = value.split(['/', '?', '#', ':']).next().unwrap_or_default();
    let host = host.strip_prefix("www.").unwrap_or(host);
    (!host.is_empty()).then(|| host.to_string())
}

/// Lower-cased, with inner whitespace collapsed.
fn text_key(value: &str) -> String {
    value
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// The first and last name of a request: `first_name` and `last_name`, or `full_name` split at
/// its first space.
fn names(params: &Params) -> Option<(String, String)> {
    match (param(params, "first_name"), param(params, "last_name")) {
        (Some(first), Some(last)) => Some((text_key(first), text_key(last))),
        _ => {
            let full = text_key(param(params, "full_name").or(param(params, "name"))?);
            let (first, last) = full.split_once(' ')?;
            Some((first.to_string(), last.to_string()))
        }
    }
}

fn same_name(person: &KnownPerson, names: &(String, String)) -> bool {
    text_key(&person.first_name) == names.0 && text_key(&person.last_name) == names.1
}

fn same_domain(person: &KnownPerson, domain: &str) -> bool {
    person
        .company_domain
        .as_deref()
        .and_then(domain_key)
        .as_deref()
        == domain_key(domain).as_deref()
}

fn same_company_name(person: &KnownPerson, company: &str) -> bool {
    person
        .company_name
        .as_deref()
        .is_some_and(|name| text_key(name) == text_key(company))
}

fn same_profile(person: &KnownPerson, url: &str) -> bool {
    let wanted = linkedin_key(url);
    wanted.is_some() && person.linkedin_url.as_deref().and_then(linkedin_key) == wanted
}

async fn apply_delay(behavior: &Behavior) {
    if behavior.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(behavior.delay_ms)).await;
    }
}

fn with_retry_after(mut response: Response, behavior: &Behavior) -> Response {
    if let Some(seconds) = behavior.retry_after_seconds {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn status_of(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

// ---------------------------------------------------------------------------------------------
// Hunter

fn hunter_error(status: StatusCode, id: &str, details: &str) -> Response {
    let body = json!({ "errors": [ { "id": id, "code": status.as_u16(), "details": details } ] });
    (status, axum::Json(body)).into_response()
}

async fn hunter_email_finder(
    State(people): State<People>,
    Query(params): Query<Params>,
) -> Response {
    if param(&params, "api_key").is_none() {
        return hunter_error(
            StatusCode::UNAUTHORIZED,
            "authentication_failed",
            "No user found for the API key supplied",
        );
    }
    let domain = param(&params, "domain");
    let company = param(&params, "company");
    let handle = param(&params, "linkedin_handle");
    let names = names(&params);
    if handle.is_none() && domain.is_none() && company.is_none() {
        return hunter_error(
            StatusCode::BAD_REQUEST,
            "wrong_params",
            "You are missing the domain parameter",
        );
    }
    if handle.is_none() && names.is_none() {
        return hunter_error(
            StatusCode::BAD_REQUEST,
            "wrong_params",
            "You are missing the first_name or last_name parameter",
        );
    }
    let found = people.iter().find(|person| {
        let by_handle = handle.is_some_and(|h| {
            person
                .linkedin_url
                .as_deref()
                .and_then(linkedin_key)
                .is_some_and(|key| key == format!("linkedin.com/in/{}", h.to_lowercase()))
        });
        let by_name = names.as_ref().is_some_and(|n| same_name(person, n))
            && (domain.is_some_and(|d| same_domain(person, d))
                || company.is_some_and(|c| same_company_name(person, c)));
        person.hunter.is_some() && (by_handle || by_name)
    });
    let meta = json!({ "params": {
        "first_name": param(&params, "first_name"), "last_name": param(&params, "last_name"),
        "full_name": param(&params, "full_name"), "domain": domain, "company": company,
        "max_duration": param(&params, "max_duration"),
    }});
    let Some((person, record)) = found.and_then(|p| p.hunter.as_ref().map(|r| (p, r))) else {
        tracing::debug!(?names, ?domain, "simulated hunter: no match");
        let (first, last) = names.unwrap_or_default();
        let data = json!({
            "first_name": first, "last_name": last, "email": null, "score": null,
            "domain": domain.and_then(domain_key), "accept_all": null, "position": null,
            "twitter": null, "linkedin_url": null, "phone_number": null, "company": company,
            "sources": [], "verification": { "date": null, "status": null },
        });
        return (
            StatusCode::OK,
            axum::Json(json!({ "data": data, "meta": meta })),
        )
            .into_response();
    };
    apply_delay(&record.simulate).await;
    if let Some(code) = record.simulate.fail_status {
        let status = status_of(code);
        let (id, details) = match code {
            403 => ("rate_limit", "You have reached the rate limit"),
            429 => ("too_many_requests", "You have reached your usage limit"),
            _ => ("server_error", "Something went wrong on Hunter's end"),
        };
        return with_retry_after(hunter_error(status, id, details), &record.simulate);
    }
    tracing::debug!(email = %record.email, "simulated hunter: found");
    let data = json!({
        "first_name": person.first_name, "last_name": person.last_name,
        "email": record.email, "score": record.score,
        "domain": person.company_domain.as_deref().and_then(domain_key),
        "accept_all": record.verification_status.as_deref() == Some("accept_all"),
        "position": record.position, "twitter": null, "linkedin_url": person.linkedin_url,
        "phone_number": null, "company": person.company_name,
        "sources": [ {
            "domain": person.company_domain.as_deref().and_then(domain_key),
            "uri": format!("https://{}/team", person.company_domain.as_deref().and_then(domain_key).unwrap_or_default()),
            "extracted_on": "2024-01-10", "last_seen_on": "2024-06-01", "still_on_page": true,
        } ],
        "verification": { "date": "2024-06-01", "status": record.verification_status },
    });
    (
        StatusCode::OK,
        axum::Json(json!({ "data": data, "meta": meta })),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// People Data Labs

fn pdl_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({ "status": status.as_u16(), "error": { "type": kind, "message": message } });
    (status, axum::Json(body)).into_response()
}

fn pdl_not_found() -> Response {
    pdl_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "No records were found matching your request",
    )
}

/// PDL's `data` object for a record (fields without data are `null`, as PDL sends them).
fn pdl_data(person: &KnownPerson, record: &PdlRecord) -> Value {
    let mut emails: Vec<Value> = Vec::new();
    if let Some(work) = &record.work_email {
        emails.push(json!({ "address": work, "type": "current_professional" }));
    }
    for personal in &record.personal_emails {
        emails.push(json!({ "address": personal, "type": "personal" }));
    }
    let list = |values: &Vec<String>| {
        if values.is_empty() {
            Value::Null
        } else {
            json!(values)
        }
    };
    let first = text_key(&person.first_name);
    let last = text_key(&person.last_name);
    json!({
        "id": format!("sim_{first}_{last}").replace(' ', "_"),
        "full_name": format!("{first} {last}"),
        "first_name": first,
        "last_name": last,
        "linkedin_url": person.linkedin_url.as_deref().and_then(linkedin_key),
        "job_company_name": person.company_name.as_deref().map(text_key),
        "job_company_website": person.company_domain.as_deref().and_then(domain_key),
        "work_email": record.work_email,
        "personal_emails": list(&record.personal_emails),
        "emails": if emails.is_empty() { Value::Null } else { json!(emails) },
        "mobile_phone": record.mobile_phone,
        "phone_numbers": list(&record.phone_numbers),
    })
}

/// Whether `data` satisfies PDL's `required` expression: field names joined by `AND` / `OR`
/// (`AND` binds tighter); a field counts when it is neither `null` nor empty.
fn meets_required(data: &Value, required: Option<&str>) -> bool {
    let Some(required) = required else {
        return true;
    };
    let present = |name: &str| match data.get(name.trim()) {
        None | Some(Value::Null) => false,
        Some(Value::Array(items)) => !items.is_empty(),
        Some(Value::String(text)) => !text.is_empty(),
        Some(_) => true,
    };
    required
        .split(" OR ")
        .any(|all| all.split(" AND ").all(present))
}

async fn pdl_person_enrich(
    State(people): State<People>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Response {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .or_else(|| param(&params, "api_key"));
    if key.is_none() {
        return pdl_error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "Request contained a missing or invalid key",
        );
    }
    let profile = param(&params, "profile");
    let names = names(&params);
    let company = param(&params, "company");
    if profile.is_none() && (names.is_none() || company.is_none()) {
        return pdl_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "Request needs a profile, or a name with a company",
        );
    }
    let by_profile = |p: &&KnownPerson| profile.is_some_and(|url| same_profile(p, url));
    let by_name = |p: &&KnownPerson| {
        names.as_ref().is_some_and(|n| same_name(p, n))
            && company.is_some_and(|c| same_domain(p, c) || same_company_name(p, c))
    };
    let known = people.iter().filter(|p| p.pdl.is_some());
    let found = known
        .clone()
        .find(by_profile)
        .or_else(|| known.clone().find(by_name));
    let Some((person, record)) = found.and_then(|p| p.pdl.as_ref().map(|r| (p, r))) else {
        tracing::debug!(?profile, ?names, ?company, "simulated pdl: no match");
        return pdl_not_found();
    };
    apply_delay(&record.simulate).await;
    if let Some(code) = record.simulate.fail_status {
        let status = status_of(code);
        let (kind, message) = match code {
            401 => (
                "authentication_error",
                "Request contained a missing or invalid key",
            ),
            402 => (
                "payment_required",
                "You have hit your account maximum (all matches used)",
            ),
            429 => (
                "rate_limit_error",
                "An error occurred due to requests hitting the API too quick",
            ),
            400..=499 => (
                "invalid_request_error",
                "Request contained either missing or invalid parameters",
            ),
            _ => (
                "api_error",
                "The server encountered an unexpected condition",
            ),
        };
        return with_retry_after(pdl_error(status, kind, message), &record.simulate);
    }
    let data = pdl_data(person, record);
    if !meets_required(&data, param(&params, "required")) {
        tracing::debug!(person = %data["full_name"], "simulated pdl: record lacks the required fields");
        return pdl_not_found();
    }
    let body = json!({ "status": 200, "likelihood": record.likelihood, "data": data });
    (StatusCode::OK, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use enrichment::domain::Field;
    use enrichment::providers::hunter::HunterProvider;
    use enrichment::providers::normalize::{normalize_email, normalize_phone};
    use enrichment::providers::pdl::PdlProvider;
    use enrichment::providers::{PersonQuery, Provider, ProviderAnswer, ProviderError, RawContact};

    use super::*;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/known-people.json");
    const WALKTHROUGH_CSV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/people.csv");

    async fn start() -> SocketAddr {
        let people = load_fixture(FIXTURE).expect("fixture loads");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(people)).await });
        address
    }

    fn hunter(address: SocketAddr, key: &str) -> HunterProvider {
        HunterProvider::new(
            reqwest::Client::new(),
            format!("http://{address}/hunter"),
            key,
        )
    }

    fn pdl(address: SocketAddr, key: &str) -> PdlProvider {
        PdlProvider::new(reqwest::Client::new(), format!("http://{address}/pdl"), key)
    }

    fn query(
        first: &str,
        last: &str,
        company: Option<&str>,
        domain: Option<&str>,
        linkedin: Option<&str>,
    ) -> PersonQuery {
        PersonQuery {
            first_name: Some(first.into()),
            last_name: Some(last.into()),
            company_name: company.map(str::to_string),
            company_domain: domain.map(str::to_string),
            linkedin_url: linkedin.map(str::to_string),
        }
    }

    fn values(answer: &ProviderAnswer) -> Vec<&str> {
        match answer {
            ProviderAnswer::Found(found) => found.iter().map(|c| c.value.as_str()).collect(),
            ProviderAnswer::NoMatch => Vec::new(),
        }
    }

    #[tokio::test]
    async fn hunter_finds_a_known_person_by_name_and_domain() {
        let address = start().await;
        let person = query(
            "ada",
            "QUILL",
            None,
            Some("https://www.northwind.example/"),
            None,
        );
        let answer = hunter(address, "local")
            .find(Field::Emails, &person)
            .await
            .unwrap();
        assert_eq!(
            answer,
            ProviderAnswer::Found(vec![RawContact {
                value: "ada.quill@northwind.example".into(),
                kind: Some("work".into()),
                status: Some("valid".into()),
            }])
        );
    }

    #[tokio::test]
    async fn pdl_finds_a_known_person_by_linkedin_in_another_writing() {
        let address = start().await;
        let person = PersonQuery {
            linkedin_url: Some("http://LinkedIn.com/in/Bruno-Okafor-Demo".into()),
            ..PersonQuery::default()
        };
        let provider = pdl(address, "local");
        let phones = provider.find(Field::Phones, &person).await.unwrap();
        assert_eq!(
            values(&phones),
            vec!["+44 (0)20 7946 0321", "020 7946 0321"]
        );
        let emails = provider.find(Field::Emails, &person).await.unwrap();
        assert_eq!(
            values(&emails),
            vec![
                "bruno.okafor@tidewater.test",
                "bruno.okafor@tidewater.test",
                "bruno.okafor.home@mailbox.example",
                "bruno.okafor.home@mailbox.example",
            ]
        );
    }

    #[tokio::test]
    async fn pdl_finds_a_known_person_by_name_and_domain_or_company_name() {
        let address = start().await;
        let provider = pdl(address, "local");
        let by_domain = query("Greta", "Solberg", None, Some("fjordline.example"), None);
        let answer = provider.find(Field::Phones, &by_domain).await.unwrap();
        assert_eq!(values(&answer), vec!["+1-646-555-0199"]);
        let by_name = query("greta", "solberg", Some("Fjordline  Robotics"), None, None);
        assert_eq!(
            provider.find(Field::Phones, &by_name).await.unwrap(),
            answer
        );
    }

    #[tokio::test]
    async fn unknown_people_are_each_providers_documented_miss() {
        let address = start().await;
        let nobody = query(
            "Nora",
            "Penhallow",
            Some("Velvet Anchor Studio"),
            Some("velvetanchor.example"),
            Some("https://www.linkedin.com/in/nora-penhallow-demo"),
        );
        assert_eq!(
            hunter(address, "local").find(Field::Emails, &nobody).await,
            Ok(ProviderAnswer::NoMatch)
        );
        assert_eq!(
            pdl(address, "local").find(Field::Emails, &nobody).await,
            Ok(ProviderAnswer::NoMatch)
        );
        // Right name, wrong company: not the same person.
        let namesake = query("Ada", "Quill", None, Some("other.example"), None);
        assert_eq!(
            hunter(address, "local")
                .find(Field::Emails, &namesake)
                .await,
            Ok(ProviderAnswer::NoMatch)
        );
    }

    #[tokio::test]
    async fn each_provider_finds_only_whom_it_knows() {
        let address = start().await;
        let hunter_only = query(
            "Chiara",
            "Vasquez-Lind",
            None,
            Some("bellwether-analytics.example"),
            None,
        );
        assert_eq!(
            values(
                &hunter(address, "k")
                    .find(Field::Emails, &hunter_only)
                    .await
                    .unwrap()
            ),
            vec!["chiara@bellwether-analytics.example"]
        );
        assert_eq!(
            pdl(address, "k").find(Field::Emails, &hunter_only).await,
            Ok(ProviderAnswer::NoMatch)
        );

        let pdl_only = query("Bruno", "Okafor", None, Some("tidewater.test"), None);
        assert_eq!(
            hunter(address, "k").find(Field::Emails, &pdl_only).await,
            Ok(ProviderAnswer::NoMatch)
        );

        // PDL knows Katya but has no phone for her: `required` makes it a 404.
        let no_phone = query("Katya", "Orlov", None, Some("gridline.example"), None);
        assert_eq!(
            pdl(address, "k").find(Field::Phones, &no_phone).await,
            Ok(ProviderAnswer::NoMatch)
        );
        assert!(matches!(
            pdl(address, "k").find(Field::Emails, &no_phone).await,
            Ok(ProviderAnswer::Found(_))
        ));
    }

    #[tokio::test]
    async fn an_empty_api_key_is_refused_as_the_providers_do() {
        let address = start().await;
        let person = query("Ada", "Quill", None, Some("northwind.example"), None);
        assert_eq!(
            hunter(address, "").find(Field::Emails, &person).await,
            Err(ProviderError::Unauthorized)
        );
        assert_eq!(
            pdl(address, "").find(Field::Emails, &person).await,
            Err(ProviderError::Unauthorized)
        );
    }

    #[tokio::test]
    async fn configured_failures_come_back_as_provider_errors() {
        let address = start().await;
        let limited = query("Hiro", "Tanabe", None, Some("kestrel-dynamics.test"), None);
        assert_eq!(
            hunter(address, "k").find(Field::Emails, &limited).await,
            Err(ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(30))
            })
        );
        let broken = query("Imani", "Cole", None, Some("saltmarsh.example"), None);
        assert_eq!(
            pdl(address, "k").find(Field::Phones, &broken).await,
            Err(ProviderError::Status(503))
        );
    }

    #[tokio::test]
    async fn bad_requests_get_the_providers_400() {
        let address = start().await;
        let http = reqwest::Client::new();
        let response = http
            .get(format!(
                "http://{address}/hunter/v2/email-finder?api_key=k&first_name=Ada&last_name=Quill"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errors"][0]["id"], "wrong_params");
        let response = http
            .get(format!(
                "http://{address}/pdl/v5/person/enrich?first_name=Ada"
            ))
            .header("X-Api-Key", "k")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }

    #[tokio::test]
    async fn the_configured_cascade_runs_against_the_simulator() {
        use enrichment::providers::cascade::{Cascade, CascadeOutcome};

        let address = start().await;
        let vars: HashMap<&str, String> = HashMap::from([
            ("HUNTER_API_KEY", "local".to_string()),
            ("PDL_API_KEY", "local".to_string()),
            ("HUNTER_BASE_URL", format!("http://{address}/hunter")),
            ("PDL_BASE_URL", format!("http://{address}/pdl")),
            ("PROVIDER_TIMEOUT_SECONDS", "5".to_string()),
        ]);
        let cascade =
            Cascade::from_vars(reqwest::Client::new(), |name| vars.get(name).cloned()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);

        // Hunter is rate limited for Hiro: PDL answers.
        let hiro = query("Hiro", "Tanabe", None, Some("kestrel-dynamics.test"), None);
        match cascade.run(Field::Emails, &hiro, deadline).await {
            CascadeOutcome::Found { provider, contacts } => {
                assert_eq!(provider, "pdl");
                let values: Vec<&str> = contacts.iter().map(|c| c.value.as_str()).collect();
                assert_eq!(values, vec!["hiro.tanabe@kestrel-dynamics.test"]);
            }
            other => panic!("expected Found, got {other:?}"),
        }

        // Bruno's UK numbers, written two ways, become one E.164 number (the national writing
        // means nothing under the default region US and is dropped).
        let bruno = PersonQuery {
            linkedin_url: Some("https://www.linkedin.com/in/bruno-okafor-demo".into()),
            ..PersonQuery::default()
        };
        match cascade.run(Field::Phones, &bruno, deadline).await {
            CascadeOutcome::Found { contacts, .. } => {
                assert_eq!(contacts.len(), 1);
                assert_eq!(contacts[0].value, "+442079460321");
                assert_eq!(contacts[0].kind.as_deref(), Some("mobile"));
            }
            other => panic!("expected Found, got {other:?}"),
        }

        // PDL, the only phone provider, fails for Imani.
        let imani = query("Imani", "Cole", None, Some("saltmarsh.example"), None);
        let failed = cascade.run(Field::Phones, &imani, deadline).await;
        assert_eq!(
            failed.error_message().as_deref(),
            Some("All providers failed: pdl: HTTP 503")
        );

        // Nobody knows Otis.
        let otis = query(
            "Otis",
            "Brandvold",
            Some("Pinecrest Logistics"),
            Some("pinecrest.test"),
            None,
        );
        assert_eq!(
            cascade.run(Field::Emails, &otis, deadline).await,
            CascadeOutcome::NoMatch
        );
    }

    #[test]
    fn every_fixture_value_is_a_valid_contact() {
        let people = load_fixture(FIXTURE).unwrap();
        assert!(people.len() >= 10, "about a dozen people");
        let region = phonenumber::country::Id::US;
        for person in &people {
            let name = format!("{} {}", person.first_name, person.last_name);
            let mut emails: Vec<&String> = Vec::new();
            let mut phones: Vec<&String> = Vec::new();
            if let Some(record) = &person.hunter {
                emails.push(&record.email);
            }
            if let Some(record) = &person.pdl {
                emails.extend(record.work_email.iter().chain(&record.personal_emails));
                phones.extend(record.mobile_phone.iter().chain(&record.phone_numbers));
            }
            for email in emails {
                assert!(normalize_email(email).is_some(), "{name}: {email:?}");
            }
            for phone in phones {
                // National UK writings are kept on purpose: PDL writes numbers as it found them.
                let region = if phone.starts_with("020") {
                    phonenumber::country::Id::GB
                } else {
                    region
                };
                assert!(
                    normalize_phone(phone, region).is_some(),
                    "{name}: {phone:?}"
                );
            }
        }
        let hunter_only = people
            .iter()
            .filter(|p| p.hunter.is_some() && p.pdl.is_none())
            .count();
        let pdl_only = people
            .iter()
            .filter(|p| p.pdl.is_some() && p.hunter.is_none())
            .count();
        assert!(
            hunter_only >= 2 && pdl_only >= 2,
            "some people only one provider knows"
        );
    }

    #[test]
    fn the_walkthrough_csv_mixes_known_and_unknown_people() {
        let people = load_fixture(FIXTURE).unwrap();
        let text = std::fs::read_to_string(WALKTHROUGH_CSV).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("first_name,last_name,company_name,company_domain,linkedin_url")
        );
        let (mut known, mut unknown) = (0, 0);
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let cells: Vec<&str> = line.split(',').collect();
            assert_eq!(cells.len(), 5, "{line}");
            let names = (text_key(cells[0]), text_key(cells[1]));
            match people.iter().find(|p| same_name(p, &names)) {
                Some(person) => {
                    known += 1;
                    assert!(
                        same_domain(person, cells[3]) || same_company_name(person, cells[2]),
                        "{line}"
                    );
                    if !cells[4].is_empty() {
                        assert!(same_profile(person, cells[4]), "{line}");
                    }
                }
                None => unknown += 1,
            }
        }
        assert_eq!((known, unknown), (6, 2));
    }

    #[test]
    fn load_fixture_reports_what_is_wrong() {
        let missing = load_fixture("/nonexistent/known-people.json").unwrap_err();
        assert!(
            missing.contains("/nonexistent/known-people.json"),
            "{missing}"
        );
        let path = std::env::temp_dir().join(format!("known-people-{}.json", std::process::id()));
        std::fs::write(&path, r#"[{"first_name": "Solo", "last_name": "Nobody"}]"#).unwrap();
        let empty = load_fixture(&path).unwrap_err();
        assert!(
            empty.contains("neither a hunter nor a pdl record"),
            "{empty}"
        );
        std::fs::write(&path, r#"{"people": []}"#).unwrap();
        assert!(load_fixture(&path).unwrap_err().contains("not a list"));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn linkedin_urls_compare_in_any_writing() {
        let key = Some("linkedin.com/in/ada-quill-nw".to_string());
        for url in [
            "https://www.linkedin.com/in/ada-quill-nw/",
            "http://linkedin.com/in/Ada-Quill-NW",
            "www.linkedin.com/in/ada-quill-nw?trk=public_profile",
            " linkedin.com/in/ada-quill-nw// ",
        ] {
            assert_eq!(linkedin_key(url), key, "{url}");
        }
        assert_eq!(linkedin_key("  "), None);
    }

    #[test]
    fn required_expressions_follow_pdls_and_or() {
        let data = json!({"emails": [{"address": "a@b.example"}], "mobile_phone": null, "phone_numbers": []});
        assert!(meets_required(&data, None));
        assert!(meets_required(&data, Some("emails")));
        assert!(!meets_required(
            &data,
            Some("mobile_phone OR phone_numbers")
        ));
        assert!(meets_required(&data, Some("mobile_phone OR emails")));
        assert!(!meets_required(&data, Some("emails AND mobile_phone")));
    }
}
