//! People Data Labs' Person Enrichment (`GET /pdl/v5/person/enrich`) on the simulator.

use super::*;

pub(super) fn pdl_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({ "status": status.as_u16(), "error": { "type": kind, "message": message } });
    (status, axum::Json(body)).into_response()
}

pub(super) fn pdl_not_found() -> Response {
    pdl_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "No records were found matching your request",
    )
}

/// PDL's `data` object for a record (fields without data are `null`, as PDL sends them).
pub(super) fn pdl_data(person: &KnownPerson, record: &PdlRecord) -> Value {
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
        "linkedin_url": person.linkedin_url.as_deref().and_then(linkedin_profile),
        "job_company_name": person.company_name.as_deref().map(text_key),
        "job_company_website": person.company_domain.as_deref().and_then(bare_domain),
        "work_email": record.work_email,
        "personal_emails": list(&record.personal_emails),
        "emails": if emails.is_empty() { Value::Null } else { json!(emails) },
        "mobile_phone": record.mobile_phone,
        "phone_numbers": list(&record.phone_numbers),
    })
}

/// Whether `data` satisfies PDL's `required` expression: field names joined by `AND` / `OR`
/// (`AND` binds tighter); a field counts when it is neither `null` nor empty.
pub(super) fn meets_required(data: &Value, required: Option<&str>) -> bool {
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

pub(super) async fn pdl_person_enrich(
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
    let plan = sim
        .plan(pdl_api::NAME, &person_key(profile, names.as_ref(), company))
        .await;
    match plan {
        Plan::RateLimit {
            retry_after_seconds,
        } => {
            return rate_limited(
                pdl_api::NAME,
                pdl_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "An error occurred due to requests hitting the API too quick",
                ),
                retry_after_seconds,
            );
        }
        Plan::Fail => {
            return pdl_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "The server encountered an unexpected condition",
            );
        }
        Plan::Miss => return pdl_not_found(),
        Plan::Answer => {}
    }
    let known = sim.people.iter().filter(|p| p.pdl.is_some());
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
        let failure = pdl_error(status, kind, message);
        if code == 429 {
            return rate_limited(pdl_api::NAME, failure, record.simulate.retry_after_seconds);
        }
        return with_retry_after(failure, &record.simulate);
    }
    let min_likelihood = param(&params, "min_likelihood").and_then(|m| m.parse::<u8>().ok());
    if min_likelihood.is_some_and(|min| record.likelihood < min) {
        tracing::debug!(
            likelihood = record.likelihood,
            ?min_likelihood,
            "simulated pdl: match below min_likelihood"
        );
        return pdl_not_found();
    }
    let data = pdl_data(person, record);
    if !meets_required(&data, param(&params, "required")) {
        tracing::debug!(person = %data["full_name"], "simulated pdl: record lacks the required fields");
        return pdl_not_found();
    }
    let body = json!({ "status": 200, "likelihood": record.likelihood, "data": data });
    (StatusCode::OK, axum::Json(body)).into_response()
}
