//! FullEnrich's bulk contact enrichment (`POST /fullenrich/api/v2/contact/enrich/bulk`, then
//! `GET .../bulk/{enrichment_id}`), in the shapes `enrichment::providers::fullenrich` documents.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{
    FullEnrichRecord, Identity, JobState, KnownPerson, Params, Plan, Shared, apply_delay,
    fullenrich_api, header_str, json_str, param, status_of, with_retry_after,
    with_retry_after_seconds,
};

const WORK_EMAILS: &str = "contact.work_emails";
const PERSONAL_EMAILS: &str = "contact.personal_emails";
const PHONES: &str = "contact.phones";

/// FullEnrich's error answer: `{"code": CODE, "message": MESSAGE}`.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "code": code, "message": message })),
    )
        .into_response()
}

/// The 401 of a request without a proper `Authorization: Bearer KEY`, if it is one.
fn unauthorized(headers: &HeaderMap) -> Option<Response> {
    let Some(value) = header_str(headers, "authorization") else {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "error.authorization.not_set",
            "Authorization headers not set",
        ));
    };
    let token = value
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
        .map(|_| value[7..].trim());
    match token {
        None => Some(error(
            StatusCode::UNAUTHORIZED,
            "error.authorization.not_bearer",
            "Authorization headers do not have prefix 'bearer'",
        )),
        Some("") => Some(error(
            StatusCode::UNAUTHORIZED,
            "error.api.key",
            "Unknown api key",
        )),
        Some(_) => None,
    }
}

fn bad_request(code: &str, message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, code, message)
}

/// One contact's result: `input`, `custom` and the `contact_info` of what was asked for.
fn contact_result(
    contact: &Value,
    found: Option<&FullEnrichRecord>,
    fields: &[&str],
) -> (Value, u64) {
    let wants = |field: &str| fields.contains(&field);
    let empty = FullEnrichRecord::default();
    let record = found.unwrap_or(&empty);
    let work: Vec<Value> = if wants(WORK_EMAILS) {
        record
            .work_emails
            .iter()
            .map(|e| json!({ "email": e, "status": record.email_status }))
            .collect()
    } else {
        Vec::new()
    };
    let personal: Vec<Value> = if wants(PERSONAL_EMAILS) {
        record
            .personal_emails
            .iter()
            .map(|e| json!({ "email": e, "status": "DELIVERABLE" }))
            .collect()
    } else {
        Vec::new()
    };
    let phones: Vec<Value> = if wants(PHONES) {
        record
            .phones
            .iter()
            .map(|p| json!({ "number": p, "region": super::phone_region(p) }))
            .collect()
    } else {
        Vec::new()
    };
    let credits = u64::from(!work.is_empty())
        + 3 * u64::from(!personal.is_empty())
        + 10 * u64::from(!phones.is_empty());
    let result = json!({
        "input": {
            "first_name": contact.get("first_name"),
            "last_name": contact.get("last_name"),
            "company_domain": contact.get("domain"),
            "company_name": contact.get("company_name"),
            "professional_network_url": contact.get("linkedin_url"),
        },
        "custom": contact.get("custom").cloned().unwrap_or_else(|| json!({})),
        "contact_info": {
            "most_probable_work_email": work.first(),
            "most_probable_personal_email": personal.first(),
            "most_probable_phone": phones.first(),
            "work_emails": work,
            "personal_emails": personal,
            "phones": phones,
        },
        "profile": null,
    });
    (result, credits)
}

/// Checks one contact of the request, its `enrich_fields` and its identity: the fields, or
/// FullEnrich's 400 `(code, message)`.
fn check_contact(contact: &Value) -> Result<Vec<&str>, (&'static str, String)> {
    let fields: Vec<&str> = contact
        .get("enrich_fields")
        .and_then(Value::as_array)
        .map(|f| f.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if fields.is_empty() {
        return Err((
            "error.enrichment.enrich_fields.empty",
            "enrichFields cannot be empty".into(),
        ));
    }
    if let Some(bad) = fields
        .iter()
        .find(|f| ![WORK_EMAILS, PERSONAL_EMAILS, PHONES].contains(f))
    {
        return Err((
            "error.enrichment.enrich_field.value",
            format!(
                "enrichField '{bad}' not valid must be contact.work_emails or contact.phones or contact.personal_emails"
            ),
        ));
    }
    if json_str(contact, "linkedin_url").is_none() {
        if json_str(contact, "first_name").is_none() {
            return Err((
                "error.enrichment.first_name.empty",
                "First name cannot be empty".into(),
            ));
        }
        if json_str(contact, "last_name").is_none() {
            return Err((
                "error.enrichment.last_name.empty",
                "Last name cannot be empty".into(),
            ));
        }
        if json_str(contact, "domain").is_none() && json_str(contact, "company_name").is_none() {
            return Err((
                "error.enrichment.domain.empty",
                "Domain cannot be empty".into(),
            ));
        }
    }
    Ok(fields)
}

fn identity(contact: &Value) -> Identity<'_> {
    Identity {
        profile: json_str(contact, "linkedin_url"),
        names: super::names_of(
            json_str(contact, "first_name"),
            json_str(contact, "last_name"),
            None,
        ),
        domain: json_str(contact, "domain"),
        company: json_str(contact, "company_name"),
    }
}

/// `POST /fullenrich/api/v2/contact/enrich/bulk`.
pub(super) async fn start(State(sim): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = unauthorized(&headers) {
        return refused;
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("error.enrichment.data.empty", "Data is empty");
    };
    let Some(name) = json_str(&request, "name") else {
        return bad_request("error.enrichment.name.empty", "Enrichment name not set");
    };
    let contacts = request
        .get("data")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if contacts.is_empty() {
        return bad_request("error.enrichment.data.empty", "Data is empty");
    }
    let mut checked = Vec::with_capacity(contacts.len());
    for contact in &contacts {
        match check_contact(contact) {
            Ok(fields) => checked.push((contact, fields)),
            Err((code, message)) => return bad_request(code, &message),
        }
    }
    let plan = sim
        .plan(fullenrich_api::NAME, &identity(&contacts[0]).key())
        .await;
    match plan {
        Plan::RateLimit {
            retry_after_seconds,
        } => {
            return with_retry_after_seconds(
                error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "error.rate.limit",
                    "Too many requests. Try again in 1m",
                ),
                retry_after_seconds,
            );
        }
        Plan::Fail => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "error.internal",
                "Internal server error",
            );
        }
        Plan::Miss | Plan::Answer => {}
    }

    let known = |p: &KnownPerson| p.fullenrich.is_some();
    let mut data = Vec::with_capacity(checked.len());
    let mut credits = 0;
    let mut out_of_credits = false;
    for (contact, fields) in &checked {
        let found = if plan == Plan::Answer {
            identity(contact)
                .find(&sim.people, known)
                .and_then(|p| p.fullenrich.as_ref())
        } else {
            None
        };
        if let Some(record) = found {
            apply_delay(&record.simulate).await;
            match record.simulate.fail_status {
                Some(402) => out_of_credits = true,
                Some(code) => {
                    let failure = match code {
                        401 => error(StatusCode::UNAUTHORIZED, "error.api.key", "Unknown api key"),
                        429 => error(
                            StatusCode::TOO_MANY_REQUESTS,
                            "error.rate.limit",
                            "Too many requests. Try again in 1m",
                        ),
                        _ => error(status_of(code), "error.internal", "Internal server error"),
                    };
                    return with_retry_after(failure, &record.simulate);
                }
                None => {}
            }
        }
        let (result, cost) = contact_result(contact, found.filter(|_| !out_of_credits), fields);
        credits += cost;
        data.push(result);
    }
    let id = uuid::Uuid::new_v4().to_string();
    let (status, state) = if out_of_credits {
        (StatusCode::PAYMENT_REQUIRED, "CREDITS_INSUFFICIENT")
    } else {
        (StatusCode::OK, "FINISHED")
    };
    let result = json!({
        "id": id, "name": name, "status": state, "cost": { "credits": credits }, "data": data,
    });
    let fields = checked
        .first()
        .map(|(_, f)| f.join(","))
        .unwrap_or_default();
    let person = identity(&contacts[0]).key();
    sim.add_job(
        fullenrich_api::NAME,
        &id,
        (&person, &fields),
        status,
        result,
    );
    tracing::debug!(enrichment_id = %id, "simulated fullenrich: enrichment started");
    (StatusCode::OK, axum::Json(json!({ "enrichment_id": id }))).into_response()
}

/// `GET /fullenrich/api/v2/contact/enrich/bulk/{enrichment_id}[?forceResults=true]`.
pub(super) async fn result(
    State(sim): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<Params>,
) -> Response {
    if let Some(refused) = unauthorized(&headers) {
        return refused;
    }
    sim.wait(fullenrich_api::NAME).await;
    match sim.poll_job(fullenrich_api::NAME, &id) {
        JobState::Unknown => error(
            StatusCode::NOT_FOUND,
            "error.enrichment.not_found",
            "Enrichment ID not found",
        ),
        JobState::Pending if param(&params, "forceResults") == Some("true") => {
            let body =
                json!({ "id": id, "status": "IN_PROGRESS", "cost": { "credits": 0 }, "data": [] });
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        JobState::Pending => error(
            StatusCode::BAD_REQUEST,
            "error.enrichment.in_progress",
            "Enrichment not ready, try again in 30 seconds",
        ),
        JobState::Done(status, body) => (status, axum::Json(body)).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use enrichment::domain::Field;
    use enrichment::providers::fullenrich::FullEnrichProvider;
    use enrichment::providers::{PersonQuery, Provider, ProviderAnswer, ProviderError};

    use super::super::SimulatorConfig;
    use super::super::test_support::{query, start, start_with, values};
    use super::*;

    fn fullenrich(address: std::net::SocketAddr, key: &str) -> FullEnrichProvider {
        FullEnrichProvider::new(
            reqwest::Client::new(),
            format!("http://{address}/fullenrich"),
            key,
        )
        .with_poll_interval(Duration::from_millis(5))
    }

    #[tokio::test]
    async fn the_adapter_polls_until_finished_and_finds_emails_and_phones() {
        let address = start().await;
        let provider = fullenrich(address, "local");
        let ada = query("Ada", "Quill", Some("Northwind Labs"), None, None);
        let emails = provider.find(Field::Emails, &ada).await.unwrap();
        assert_eq!(
            values(&emails),
            vec!["ada.quill@northwind.example", "ada.quill@northwind.example"]
        );
        let bruno = PersonQuery {
            linkedin_url: Some("https://www.linkedin.com/in/bruno-okafor-demo".into()),
            ..PersonQuery::default()
        };
        let phones = provider.find(Field::Phones, &bruno).await.unwrap();
        assert_eq!(
            values(&phones),
            vec!["+44 20 7946 0321", "+44 20 7946 0321"]
        );
    }

    #[tokio::test]
    async fn the_wire_format_is_start_then_in_progress_then_finished() {
        let address = start().await;
        let http = reqwest::Client::new();
        let base = format!("http://{address}/fullenrich/api/v2/contact/enrich/bulk");
        let started: Value = http
            .post(&base)
            .bearer_auth("k")
            .json(&json!({
                "name": "two contacts",
                "data": [
                    { "first_name": "Ada", "last_name": "Quill", "domain": "northwind.example",
                      "enrich_fields": ["contact.work_emails", "contact.phones"], "custom": { "crm_id": "7" } },
                    { "first_name": "Nora", "last_name": "Penhallow", "company_name": "Velvet Anchor",
                      "enrich_fields": ["contact.work_emails"] }
                ]
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = started["enrichment_id"].as_str().unwrap().to_string();
        assert_eq!(id.len(), 36, "{id}");

        let first = http
            .get(format!("{base}/{id}"))
            .bearer_auth("k")
            .send()
            .await
            .unwrap();
        assert_eq!(first.status(), 400);
        let body: Value = first.json().await.unwrap();
        assert_eq!(body["code"], "error.enrichment.in_progress");

        let second = http
            .get(format!("{base}/{id}"))
            .bearer_auth("k")
            .send()
            .await
            .unwrap();
        assert_eq!(second.status(), 200);
        let body: Value = second.json().await.unwrap();
        assert_eq!(body["status"], "FINISHED");
        assert_eq!(body["cost"]["credits"], 11);
        let ada = &body["data"][0];
        assert_eq!(ada["custom"]["crm_id"], "7");
        assert_eq!(
            ada["contact_info"]["most_probable_work_email"],
            json!({ "email": "ada.quill@northwind.example", "status": "DELIVERABLE" })
        );
        assert_eq!(
            ada["contact_info"]["phones"][0]["number"],
            "+1 415-555-0132"
        );
        let nora = &body["data"][1]["contact_info"];
        assert_eq!(nora["work_emails"], json!([]));
        assert_eq!(nora["most_probable_work_email"], Value::Null);

        // The result stays available.
        let again = http
            .get(format!("{base}/{id}"))
            .bearer_auth("k")
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 200);
        let unknown = http
            .get(format!("{base}/00000000-0000-4000-a000-000000000000"))
            .bearer_auth("k")
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), 404);
    }

    #[tokio::test]
    async fn requests_are_checked_as_fullenrich_does() {
        let address = start().await;
        let http = reqwest::Client::new();
        let base = format!("http://{address}/fullenrich/api/v2/contact/enrich/bulk");
        let no_auth = http.post(&base).json(&json!({})).send().await.unwrap();
        assert_eq!(no_auth.status(), 401);
        let not_bearer = http
            .post(&base)
            .header("Authorization", "Token k")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let body: Value = not_bearer.json().await.unwrap();
        assert_eq!(body["code"], "error.authorization.not_bearer");
        let no_domain = http
            .post(&base)
            .bearer_auth("k")
            .json(&json!({ "name": "x", "data": [ { "first_name": "Ada", "last_name": "Quill", "enrich_fields": ["contact.phones"] } ] }))
            .send()
            .await
            .unwrap();
        assert_eq!(no_domain.status(), 400);
        let body: Value = no_domain.json().await.unwrap();
        assert_eq!(body["code"], "error.enrichment.domain.empty");
    }

    #[tokio::test]
    async fn fixture_failures_come_back_as_provider_errors() {
        let address = start().await;
        // FullEnrich runs out of credits for Luis: the result answers 402 CREDITS_INSUFFICIENT.
        let luis = query("Luis", "Ferreira", None, Some("harborview.test"), None);
        assert_eq!(
            fullenrich(address, "k").find(Field::Phones, &luis).await,
            Err(ProviderError::QuotaExhausted)
        );
        assert_eq!(
            fullenrich(address, " ").find(Field::Phones, &luis).await,
            Err(ProviderError::Unauthorized)
        );
        let nobody = query(
            "Nora",
            "Penhallow",
            None,
            Some("velvetanchor.example"),
            None,
        );
        assert_eq!(
            fullenrich(address, "k").find(Field::Emails, &nobody).await,
            Ok(ProviderAnswer::NoMatch)
        );
    }

    #[tokio::test]
    async fn a_configured_miss_finishes_without_data() {
        let config =
            SimulatorConfig::from_json(r#"{"providers": {"fullenrich": {"miss_rate": 1.0}}}"#)
                .unwrap();
        let address = start_with(config).await;
        let ada = query("Ada", "Quill", None, Some("northwind.example"), None);
        assert_eq!(
            fullenrich(address, "k").find(Field::Emails, &ada).await,
            Ok(ProviderAnswer::NoMatch)
        );
    }
}
