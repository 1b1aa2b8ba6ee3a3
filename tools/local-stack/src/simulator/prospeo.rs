//! Prospeo's Enrich Person (`POST /prospeo/enrich-person`), in the shapes
//! `enrichment::providers::prospeo` documents.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{
    Identity, KnownPerson, Plan, ProspeoRecord, Shared, apply_delay, bare_domain, header_str,
    json_str, linkedin_profile, names_of, prospeo_api, status_of, text_key, with_retry_after,
};

/// Prospeo's error answer: `{"error": true, "error_code": CODE}`.
fn error(status: StatusCode, code: &str) -> Response {
    let body = json!({ "error": true, "error_code": code });
    (status, axum::Json(body)).into_response()
}

fn no_match() -> Response {
    error(StatusCode::BAD_REQUEST, "NO_MATCH")
}

/// `+1 415-5**-****`-style masking of an unrevealed mobile: the first five characters kept,
/// later digits starred.
fn masked(mobile: &str) -> String {
    mobile
        .chars()
        .enumerate()
        .map(|(i, c)| if i >= 5 && c.is_ascii_digit() { '*' } else { c })
        .collect()
}

/// The `person` object for a record (email always revealed on a match, as Prospeo gives it;
/// the mobile only when asked for).
fn person_object(person: &KnownPerson, record: &ProspeoRecord, reveal_mobile: bool) -> Value {
    let email = match &record.email {
        Some(email) => json!({
            "status": "VERIFIED", "revealed": true, "email": email,
            "verification_method": "SMTP", "email_mx_provider": null,
        }),
        None => json!({
            "status": "UNAVAILABLE", "revealed": false, "email": null,
            "verification_method": null, "email_mx_provider": null,
        }),
    };
    let mobile = match &record.mobile {
        Some(mobile) if reveal_mobile => json!({
            "status": "VERIFIED", "revealed": true, "mobile": mobile,
            "mobile_national": null, "mobile_international": mobile,
            "mobile_country": null, "mobile_country_code": super::phone_region(mobile),
        }),
        Some(mobile) => json!({
            "status": "VERIFIED", "revealed": false, "mobile": masked(mobile),
            "mobile_national": null, "mobile_international": masked(mobile),
            "mobile_country": null, "mobile_country_code": super::phone_region(mobile),
        }),
        None => json!({
            "status": "UNAVAILABLE", "revealed": false, "mobile": null,
            "mobile_national": null, "mobile_international": null,
            "mobile_country": null, "mobile_country_code": null,
        }),
    };
    let id = format!(
        "sim{}",
        text_key(&format!("{} {}", person.first_name, person.last_name)).replace(' ', "")
    );
    json!({
        "person_id": id,
        "first_name": person.first_name,
        "last_name": person.last_name,
        "full_name": format!("{} {}", person.first_name, person.last_name),
        "linkedin_url": person.linkedin_url.as_deref().and_then(linkedin_profile).map(|k| format!("https://www.{k}")),
        "current_job_title": record.job_title,
        "headline": null,
        "job_history": [],
        "email": email,
        "mobile": mobile,
        "location": null,
        "skills": [],
    })
}

/// `POST /prospeo/enrich-person`.
pub(super) async fn enrich_person(
    State(sim): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if header_str(&headers, "x-key").is_none() {
        return error(StatusCode::UNAUTHORIZED, "INVALID_API_KEY");
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    };
    let Some(data) = request.get("data").filter(|d| d.is_object()) else {
        return error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    };
    let flag = |name: &str| request.get(name).and_then(Value::as_bool).unwrap_or(false);
    let only_verified_email = flag("only_verified_email");
    let only_verified_mobile = flag("only_verified_mobile");
    let enrich_mobile = flag("enrich_mobile") || only_verified_mobile;

    let identity = Identity {
        profile: json_str(data, "linkedin_url"),
        names: names_of(
            json_str(data, "first_name"),
            json_str(data, "last_name"),
            json_str(data, "full_name"),
        ),
        domain: json_str(data, "company_website"),
        company: json_str(data, "company_name"),
    };
    let email = json_str(data, "email");
    if !identity.is_searchable() && email.is_none() {
        return error(StatusCode::BAD_REQUEST, "INVALID_DATAPOINTS");
    }
    let key = match email {
        Some(email) if !identity.is_searchable() => text_key(email),
        _ => identity.key(),
    };
    match sim.plan(prospeo_api::NAME, &key).await {
        Plan::RateLimit {
            retry_after_seconds,
        } => {
            return super::rate_limited(
                prospeo_api::NAME,
                error(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
                retry_after_seconds,
            );
        }
        Plan::Fail => return error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
        Plan::Miss => return no_match(),
        Plan::Answer => {}
    }
    let known = |p: &KnownPerson| p.prospeo.is_some();
    let found = identity.find(&sim.people, known).or_else(|| {
        let email = text_key(email?);
        sim.people.iter().filter(|p| known(p)).find(|p| {
            p.prospeo
                .as_ref()
                .and_then(|r| r.email.as_deref())
                .is_some_and(|e| text_key(e) == email)
        })
    });
    let Some((person, record)) = found.and_then(|p| p.prospeo.as_ref().map(|r| (p, r))) else {
        tracing::debug!(?identity, "simulated prospeo: no match");
        return no_match();
    };
    apply_delay(&record.simulate).await;
    if let Some(code) = record.simulate.fail_status {
        let failure = match code {
            401 => error(StatusCode::UNAUTHORIZED, "INVALID_API_KEY"),
            // Prospeo signals an empty balance as a 400 with its code.
            402 => error(StatusCode::BAD_REQUEST, "INSUFFICIENT_CREDITS"),
            429 => error(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
            400..=499 => error(status_of(code), "INVALID_REQUEST"),
            _ => error(status_of(code), "INTERNAL_ERROR"),
        };
        if code == 429 {
            return super::rate_limited(
                prospeo_api::NAME,
                failure,
                record.simulate.retry_after_seconds,
            );
        }
        return with_retry_after(failure, &record.simulate);
    }
    if (only_verified_email && record.email.is_none())
        || (only_verified_mobile && record.mobile.is_none())
    {
        tracing::debug!(person = %person.last_name, "simulated prospeo: no verified value as asked");
        return no_match();
    }
    let company = json!({
        "name": person.company_name,
        "website": person.company_domain.as_deref().and_then(bare_domain).map(|d| format!("https://{d}")),
        "domain": person.company_domain.as_deref().and_then(bare_domain),
    });
    let body = json!({
        "error": false,
        "free_enrichment": false,
        "person": person_object(person, record, enrich_mobile),
        "company": company,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use enrichment::domain::Field;
    use enrichment::providers::prospeo::ProspeoProvider;
    use enrichment::providers::{PersonQuery, Provider, ProviderAnswer, ProviderError, RawContact};

    use super::super::SimulatorConfig;
    use super::super::test_support::{query, start, start_with};
    use super::*;

    fn prospeo(address: std::net::SocketAddr, key: &str) -> ProspeoProvider {
        ProspeoProvider::new(
            reqwest::Client::new(),
            format!("http://{address}/prospeo"),
            key,
        )
    }

    #[tokio::test]
    async fn the_adapter_finds_a_known_persons_email_and_mobile() {
        let address = start().await;
        let provider = prospeo(address, "local");
        let ada = query("Ada", "Quill", None, Some("northwind.example"), None);
        assert_eq!(
            provider.find(Field::Emails, &ada).await,
            Ok(ProviderAnswer::Found(vec![RawContact {
                value: "ada.quill@northwind.example".into(),
                kind: Some("work".into()),
                status: Some("VERIFIED".into()),
                confidence: None,
            }]))
        );
        let by_profile = PersonQuery {
            linkedin_url: Some("linkedin.com/in/Greta-Solberg-Demo/".into()),
            ..PersonQuery::default()
        };
        assert_eq!(
            provider.find(Field::Phones, &by_profile).await,
            Ok(ProviderAnswer::Found(vec![RawContact {
                value: "+16465550199".into(),
                kind: Some("mobile".into()),
                status: Some("VERIFIED".into()),
                confidence: None,
            }]))
        );
    }

    #[tokio::test]
    async fn unknown_people_and_missing_verified_values_are_no_match() {
        let address = start().await;
        let provider = prospeo(address, "local");
        let nobody = query(
            "Nora",
            "Penhallow",
            None,
            Some("velvetanchor.example"),
            None,
        );
        assert_eq!(
            provider.find(Field::Emails, &nobody).await,
            Ok(ProviderAnswer::NoMatch)
        );
        // Prospeo knows Chiara's email but has no mobile for her.
        let chiara = query(
            "Chiara",
            "Vasquez-Lind",
            Some("Bellwether Analytics"),
            None,
            None,
        );
        assert!(matches!(
            provider.find(Field::Emails, &chiara).await,
            Ok(ProviderAnswer::Found(_))
        ));
        assert_eq!(
            provider.find(Field::Phones, &chiara).await,
            Ok(ProviderAnswer::NoMatch)
        );
    }

    #[tokio::test]
    async fn the_wire_format_masks_unrevealed_mobiles_and_uses_error_codes() {
        let address = start().await;
        let http = reqwest::Client::new();
        let url = format!("http://{address}/prospeo/enrich-person");
        let ada = json!({ "first_name": "Ada", "last_name": "Quill", "company_website": "https://northwind.example" });

        let response = http
            .post(&url)
            .header("X-KEY", "k")
            .json(&json!({ "data": ada }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], false);
        assert_eq!(body["person"]["email"]["revealed"], true);
        assert_eq!(body["person"]["mobile"]["revealed"], false);
        assert_eq!(body["person"]["mobile"]["mobile"], "+1415*******");

        let response = http
            .post(&url)
            .header("X-KEY", "k")
            .json(&json!({ "data": { "company_name": "Northwind Labs" } }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({ "error": true, "error_code": "INVALID_DATAPOINTS" })
        );

        let response = http
            .post(&url)
            .json(&json!({ "data": ada }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);

        // By email alone.
        let response = http
            .post(&url)
            .header("X-KEY", "k")
            .json(&json!({ "data": { "email": "Greta.Solberg@fjordline.example" } }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    #[tokio::test]
    async fn fixture_failures_come_back_as_provider_errors() {
        let address = start().await;
        let provider = prospeo(address, "k");
        let imani = query("Imani", "Cole", None, Some("saltmarsh.example"), None);
        assert_eq!(
            provider.find(Field::Emails, &imani).await,
            Err(ProviderError::QuotaExhausted)
        );
        assert_eq!(
            prospeo(address, "").find(Field::Emails, &imani).await,
            Err(ProviderError::Unauthorized)
        );
    }

    #[tokio::test]
    async fn configured_rate_limits_announce_the_wait_in_prospeos_header() {
        let config = SimulatorConfig::from_json(
            r#"{"providers": {"prospeo": {"rate_limit_rate": 1.0, "retry_after_seconds": 12}}}"#,
        )
        .unwrap();
        let address = start_with(config).await;
        let ada = query("Ada", "Quill", None, Some("northwind.example"), None);
        assert_eq!(
            prospeo(address, "k").find(Field::Emails, &ada).await,
            Err(ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(12))
            })
        );
    }
}
