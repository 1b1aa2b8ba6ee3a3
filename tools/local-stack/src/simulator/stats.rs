//! The requests the simulator received, per provider: `GET /stats`, `POST /stats/reset`.

use super::*;

/// The requests the simulator received, per provider name (all of [`PROVIDERS`], zero when
/// never asked), as `GET /stats` answers them:
///
/// ```json
/// { "hunter":     { "requests": 12, "rate_limited": 0, "statuses": { "200": 11, "500": 1 } },
///   "fullenrich": { "requests": 9, "submits": 3, "polls": 6, "max_submits_per_person": 1,
///                   "statuses": { "200": 6, "400": 3 } },
///   ... }
/// ```
pub type RequestStats = BTreeMap<String, ProviderStats>;

/// The requests one simulated provider received.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderStats {
    /// Every HTTP request under the provider's path, counted on arrival (refused ones too).
    pub requests: u64,
    /// Jobs submitted (`POST`), for the asynchronous providers (FullEnrich, Dropcontact) only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submits: Option<u64>,
    /// Results fetched (`GET` of a job), for the asynchronous providers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polls: Option<u64>,
    /// For the asynchronous providers only: the most jobs created for one person and one
    /// field (FullEnrich's `enrich_fields`; Dropcontact's emails) since the last reset, 0 when
    /// none. A submit that is refused, rate limited or failed creates no job and is not
    /// counted (it is in `submits`). Above 1, a paid job was started twice for the same search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_submits_per_person: Option<u64>,
    /// Requests refused for going past `rate_limit_per_second` or `rate_limit_per_minute`
    /// (see [`SimulatorConfig`]).
    #[serde(default)]
    pub rate_limited: u64,
    /// Answered requests by HTTP status (`"200"`, `"429"`...), counted when answered.
    #[serde(default)]
    pub statuses: BTreeMap<String, u64>,
}

/// Whether the provider answers through jobs that are submitted, then polled.
pub(super) fn is_asynchronous(provider: &str) -> bool {
    provider == fullenrich_api::NAME || provider == dropcontact_api::NAME
}

/// Every provider at zero.
pub(super) fn empty_stats() -> RequestStats {
    PROVIDERS
        .iter()
        .map(|&name| {
            let asynchronous = is_asynchronous(name).then_some(0);
            let stats = ProviderStats {
                submits: asynchronous,
                polls: asynchronous,
                max_submits_per_person: asynchronous,
                ..ProviderStats::default()
            };
            (name.to_string(), stats)
        })
        .collect()
}

/// The provider a request path is for (`/hunter/...`: `hunter`).
pub(super) fn provider_of(path: &str) -> Option<&'static str> {
    let first = path.trim_start_matches('/').split('/').next()?;
    PROVIDERS.iter().copied().find(|name| *name == first)
}

impl Sim {
    pub(super) fn lock_stats(&self) -> std::sync::MutexGuard<'_, RequestStats> {
        self.stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Counts each request to a provider on arrival, and its status once answered.
pub(super) async fn count_requests(
    State(sim): State<Shared>,
    request: Request,
    next: Next,
) -> Response {
    let Some(provider) = provider_of(request.uri().path()) else {
        return next.run(request).await;
    };
    let method = request.method().clone();
    {
        let mut all = sim.lock_stats();
        let stats = all.entry(provider.to_string()).or_default();
        stats.requests += 1;
        if is_asynchronous(provider) {
            let counter = if method == Method::POST {
                &mut stats.submits
            } else {
                &mut stats.polls
            };
            *counter.get_or_insert(0) += 1;
        }
    }
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    *sim.lock_stats()
        .entry(provider.to_string())
        .or_default()
        .statuses
        .entry(status)
        .or_default() += 1;
    response
}

/// `stats` with each asynchronous provider's `max_submits_per_person` from `jobs_per_person`.
fn with_jobs_per_person(
    mut stats: RequestStats,
    jobs_per_person: &HashMap<(&'static str, String), u64>,
) -> RequestStats {
    for (name, provider) in &mut stats {
        if is_asynchronous(name) {
            let most = jobs_per_person
                .iter()
                .filter(|((p, _), _)| p == name)
                .map(|(_, count)| *count)
                .max();
            provider.max_submits_per_person = Some(most.unwrap_or(0));
        }
    }
    stats
}

/// `GET /stats`: the requests received so far.
pub(super) async fn get_stats(State(sim): State<Shared>) -> Response {
    let stats = sim.lock_stats().clone();
    let stats = with_jobs_per_person(stats, &sim.lock_jobs_per_person());
    axum::Json(stats).into_response()
}

/// `POST /stats/reset`: the requests received so far; the counters start again from zero.
pub(super) async fn reset_stats(State(sim): State<Shared>) -> Response {
    let mut stats = sim.lock_stats();
    let mut jobs_per_person = sim.lock_jobs_per_person();
    let before = std::mem::replace(&mut *stats, empty_stats());
    let per_person = std::mem::take(&mut *jobs_per_person);
    axum::Json(with_jobs_per_person(before, &per_person)).into_response()
}
