//! Hunter.io's Email Finder (`GET /hunter/v2/email-finder`) on the simulator.

use super::*;

pub(super) fn hunter_error(status: StatusCode, id: &str, details: &str) -> Response {
    let body = json!({ "errors": [ { "id": id, "code": status.as_u16(), "details": details } ] });
    (status, axum::Json(body)).into_response()
}

/// Hunter takes the key in the `X-API-KEY` header or the `api_key` query parameter
/// (<https://hunter.io/api-documentation/v2#authentication>); a blank one is no key, a 401.
pub(super) async fn hunter_email_finder(
    State(sim): State<Shared>,
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
    let profile = handle.map(|h| format!("linkedin.com/in/{h}"));
    let key = person_key(profile.as_deref(), names.as_ref(), domain.or(company));
    let plan = sim.plan(hunter_api::NAME, &key).await;
    match plan {
        // Hunter's rate limit is its 403 (its 429 is the usage limit).
        Plan::RateLimit {
            retry_after_seconds,
        } => {
            return with_retry_after_seconds(
                hunter_error(
                    StatusCode::FORBIDDEN,
                    "rate_limit",
                    "You have reached the rate limit",
                ),
                retry_after_seconds,
            );
        }
        Plan::Fail => {
            return hunter_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "Something went wrong on Hunter's end",
            );
        }
        Plan::Miss | Plan::Answer => {}
    }
    let found = sim
        .people
        .iter()
        .filter(|_| plan == Plan::Answer)
        .find(|person| {
            let by_handle = handle.is_some_and(|h| {
                person
                    .linkedin_url
                    .as_deref()
                    .and_then(linkedin_profile)
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
            "domain": domain.and_then(bare_domain), "accept_all": null, "position": null,
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
        "domain": person.company_domain.as_deref().and_then(bare_domain),
        "accept_all": record.verification_status.as_deref() == Some("accept_all"),
        "position": record.position, "twitter": null, "linkedin_url": person.linkedin_url,
        "phone_number": null, "company": person.company_name,
        "sources": [ {
            "domain": person.company_domain.as_deref().and_then(bare_domain),
            "uri": format!("https://{}/team", person.company_domain.as_deref().and_then(bare_domain).unwrap_or_default()),
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
