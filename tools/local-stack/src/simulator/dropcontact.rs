//! Dropcontact's batch enrichment (`POST /dropcontact/v1/enrich/all`, then
//! `GET .../enrich/all/{request_id}`), in the shapes `enrichment::providers::dropcontact`
//! documents.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::{
    Identity, JobState, KnownPerson, Plan, Shared, apply_delay, bare_domain, dropcontact_api,
    header_str, json_str, names_of, status_of, with_retry_after, with_retry_after_seconds,
};

/// The most records one request may carry.
const MAX_RECORDS: usize = 250;
/// The balance the simulated account shows.
const CREDITS_LEFT: u64 = 1000;

/// Dropcontact's usual error answer: `{"error": true, "reason": REASON, "success": false}`.
fn error(status: StatusCode, reason: &str) -> Response {
    let body = json!({ "error": true, "reason": reason, "success": false });
    (status, axum::Json(body)).into_response()
}

/// Dropcontact's other error answer (404, 422, 500): `{"detail": DETAIL}`.
fn detail(status: StatusCode, detail: &str) -> Response {
    (status, axum::Json(json!({ "detail": detail }))).into_response()
}

/// A request id in Dropcontact's writing: 15 lower-case letters.
fn request_id() -> String {
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(15)
        .map(|b| char::from(b'a' + b % 26))
        .collect()
}

fn identity(record: &Value) -> Identity<'_> {
    Identity {
        profile: json_str(record, "linkedin"),
        names: names_of(
            json_str(record, "first_name"),
            json_str(record, "last_name"),
            json_str(record, "full_name"),
        ),
        domain: json_str(record, "website"),
        company: json_str(record, "company"),
    }
}

/// The output record: the input echoed, with what Dropcontact found added.
fn output_record(input: &Value, person: Option<&KnownPerson>) -> Value {
    let mut record: Map<String, Value> = input.as_object().cloned().unwrap_or_default();
    let Some(person) = person else {
        return Value::Object(record);
    };
    let mut set = |key: &str, value: Value| {
        if !value.is_null() {
            record.insert(key.to_string(), value);
        }
    };
    set("first_name", json!(person.first_name));
    set("last_name", json!(person.last_name));
    set(
        "full_name",
        json!(format!("{} {}", person.first_name, person.last_name)),
    );
    set("company", json!(person.company_name));
    set(
        "website",
        json!(
            person
                .company_domain
                .as_deref()
                .and_then(bare_domain)
                .map(|d| format!("https://{d}"))
        ),
    );
    set("linkedin", json!(person.linkedin_url));
    if let Some(found) = &person.dropcontact {
        if !found.emails.is_empty() {
            set("email", json!(found.emails));
        }
        set("phone", json!(found.phone));
    }
    Value::Object(record)
}

/// `POST /dropcontact/v1/enrich/all`.
pub(super) async fn send(State(sim): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if header_str(&headers, "x-access-token").is_none() {
        return error(
            StatusCode::UNAUTHORIZED,
            "Missing or invalid X-Access-Token",
        );
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Missing data in JSON");
    };
    let records = request
        .get("data")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if records.is_empty() {
        return error(StatusCode::BAD_REQUEST, "Missing data in JSON");
    }
    if records.len() > MAX_RECORDS {
        return error(
            StatusCode::BAD_REQUEST,
            "Too many records, you can only submit up to 250 records",
        );
    }
    let plan = sim
        .plan(dropcontact_api::NAME, &identity(&records[0]).key())
        .await;
    match plan {
        Plan::RateLimit {
            retry_after_seconds,
        } => {
            return with_retry_after_seconds(
                error(StatusCode::TOO_MANY_REQUESTS, "Too many requests"),
                retry_after_seconds,
            );
        }
        Plan::Fail => return detail(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
        Plan::Miss | Plan::Answer => {}
    }
    let known = |p: &KnownPerson| p.dropcontact.is_some();
    let mut data = Vec::with_capacity(records.len());
    for input in &records {
        let found = if plan == Plan::Answer {
            identity(input).find(&sim.people, known)
        } else {
            None
        };
        if let Some(record) = found.and_then(|p| p.dropcontact.as_ref()) {
            apply_delay(&record.simulate).await;
            if let Some(code) = record.simulate.fail_status {
                let failure = match code {
                    401 => error(
                        StatusCode::UNAUTHORIZED,
                        "Missing or invalid X-Access-Token",
                    ),
                    402 | 403 => error(
                        StatusCode::FORBIDDEN,
                        "Not enough credits for the records of this request",
                    ),
                    429 => error(StatusCode::TOO_MANY_REQUESTS, "Too many requests"),
                    400..=499 => error(status_of(code), "Bad request"),
                    _ => detail(status_of(code), "Internal Server Error"),
                };
                return with_retry_after(failure, &record.simulate);
            }
        }
        data.push(output_record(input, found));
    }
    let id = request_id();
    let result = json!({
        "data": data, "error": false, "success": true, "credits_left": CREDITS_LEFT - 1,
    });
    let person = identity(&records[0]).key();
    sim.add_job(
        dropcontact_api::NAME,
        &id,
        (&person, "emails"),
        StatusCode::OK,
        result,
    );
    tracing::debug!(request_id = %id, "simulated dropcontact: request sent");
    let body = json!({
        "credits_left": CREDITS_LEFT, "request_id": id, "error": false, "success": true,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// `GET /dropcontact/v1/enrich/all/{request_id}`: "not ready" for an unknown request too, as
/// Dropcontact answers.
pub(super) async fn fetch(
    State(sim): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if header_str(&headers, "x-access-token").is_none() {
        return error(
            StatusCode::UNAUTHORIZED,
            "Missing or invalid X-Access-Token",
        );
    }
    sim.wait(dropcontact_api::NAME).await;
    match sim.poll_job(dropcontact_api::NAME, &id) {
        JobState::Unknown | JobState::Pending => {
            let body = json!({
                "error": false, "success": false,
                "reason": "Request not ready yet, try again in 30 seconds",
            });
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        JobState::Done(status, body) => (status, axum::Json(body)).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use enrichment::domain::Field;
    use enrichment::providers::dropcontact::DropcontactProvider;
    use enrichment::providers::{Provider, ProviderAnswer, ProviderError, RawContact};

    use super::super::SimulatorConfig;
    use super::super::test_support::{query, start, start_with};
    use super::*;

    fn dropcontact(address: std::net::SocketAddr, key: &str) -> DropcontactProvider {
        DropcontactProvider::new(
            reqwest::Client::new(),
            format!("http://{address}/dropcontact"),
            key,
        )
        .with_poll_interval(Duration::from_millis(5))
    }

    #[tokio::test]
    async fn the_adapter_fetches_until_ready_and_finds_the_persons_emails() {
        let address = start().await;
        let chiara = query(
            "Chiara",
            "Vasquez-Lind",
            None,
            Some("bellwether-analytics.example"),
            None,
        );
        assert_eq!(
            dropcontact(address, "local")
                .find(Field::Emails, &chiara)
                .await,
            Ok(ProviderAnswer::Found(vec![RawContact {
                value: "chiara@bellwether-analytics.example".into(),
                kind: Some("work".into()),
                status: Some("catch-all@pro".into()),
                confidence: None,
            }]))
        );
        // Elif's generic address is dropped by the adapter, her own kept.
        let elif = query("Elif", "Marsh", Some("Copperleaf Systems"), None, None);
        let ProviderAnswer::Found(found) = dropcontact(address, "local")
            .find(Field::Emails, &elif)
            .await
            .unwrap()
        else {
            panic!("expected Found");
        };
        let values: Vec<&str> = found.iter().map(|c| c.value.as_str()).collect();
        assert_eq!(values, vec!["elif.marsh@copperleaf.example"]);
    }

    #[tokio::test]
    async fn the_wire_format_is_send_then_not_ready_then_success() {
        let address = start().await;
        let http = reqwest::Client::new();
        let base = format!("http://{address}/dropcontact/v1/enrich/all");
        let sent: Value = http
            .post(&base)
            .header("X-Access-Token", "k")
            .json(&json!({
                "data": [
                    { "first_name": "Ada", "last_name": "Quill", "website": "northwind.example",
                      "custom_fields": { "crm_id": "7" } },
                    { "full_name": "Nora Penhallow", "company": "Velvet Anchor Studio" }
                ],
                "siren": false, "language": "en"
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(sent["success"], true);
        let id = sent["request_id"].as_str().unwrap().to_string();
        assert_eq!(id.len(), 15);
        assert!(id.chars().all(|c| c.is_ascii_lowercase()), "{id}");

        let first: Value = http
            .get(format!("{base}/{id}"))
            .header("X-Access-Token", "k")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(first["success"], false);
        assert_eq!(first["error"], false);
        assert_eq!(
            first["reason"],
            "Request not ready yet, try again in 30 seconds"
        );

        let done: Value = http
            .get(format!("{base}/{id}"))
            .header("X-Access-Token", "k")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(done["success"], true);
        let ada = &done["data"][0];
        assert_eq!(
            ada["email"],
            json!([{ "email": "ada.quill@northwind.example", "qualification": "nominative@pro" }])
        );
        assert_eq!(ada["custom_fields"]["crm_id"], "7");
        let nora = &done["data"][1];
        assert_eq!(nora["full_name"], "Nora Penhallow");
        assert!(nora.get("email").is_none());

        // An unknown request id is "not ready", as Dropcontact answers it.
        let unknown: Value = http
            .get(format!("{base}/zzzzzzzzzzzzzzz"))
            .header("X-Access-Token", "k")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(unknown["success"], false);
        let empty = http
            .post(&base)
            .header("X-Access-Token", "k")
            .json(&json!({ "data": [] }))
            .send()
            .await
            .unwrap();
        assert_eq!(empty.status(), 400);
    }

    #[tokio::test]
    async fn fixture_failures_and_unknown_people_come_back_as_the_adapter_reads_them() {
        let address = start().await;
        let hiro = query("Hiro", "Tanabe", None, Some("kestrel-dynamics.test"), None);
        assert_eq!(
            dropcontact(address, "k").find(Field::Emails, &hiro).await,
            Err(ProviderError::QuotaExhausted)
        );
        assert_eq!(
            dropcontact(address, "").find(Field::Emails, &hiro).await,
            Err(ProviderError::Unauthorized)
        );
        let nobody = query(
            "Nora",
            "Penhallow",
            Some("Velvet Anchor Studio"),
            None,
            None,
        );
        assert_eq!(
            dropcontact(address, "k").find(Field::Emails, &nobody).await,
            Ok(ProviderAnswer::NoMatch)
        );
    }

    #[tokio::test]
    async fn configured_errors_are_a_500() {
        let config =
            SimulatorConfig::from_json(r#"{"providers": {"dropcontact": {"error_rate": 1.0}}}"#)
                .unwrap();
        let address = start_with(config).await;
        let ada = query("Ada", "Quill", None, Some("northwind.example"), None);
        assert_eq!(
            dropcontact(address, "k").find(Field::Emails, &ada).await,
            Err(ProviderError::Status(500))
        );
    }
}
