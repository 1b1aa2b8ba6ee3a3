//! Simulator-wide behaviour of the providers (latency, misses, errors, rate limits), read
//! from JSON, and the deterministic draw that applies it.

use super::*;

/// Simulator-wide behaviour of the providers, read from JSON:
///
/// ```json
/// { "seed": 7,
///   "providers": {
///     "hunter":     { "latency_ms": 120, "miss_rate": 0.2, "error_rate": 0.05 },
///     "fullenrich": { "rate_limit_rate": 0.1, "retry_after_seconds": 30, "job_seconds": [30, 90] } } }
/// ```
///
/// A provider without an entry behaves as its fixture records say. For one with an entry, each
/// request first waits `latency_ms`, then draws a number in `[0, 1)` from a hash of `seed`, the
/// provider's name and the person the request asks about (its LinkedIn profile, or its name
/// and company): below `rate_limit_rate` the provider answers its rate-limit error, then (up to
/// `rate_limit_rate + error_rate`) a 500, then (up to `... + miss_rate`) its no match, and
/// otherwise from the fixture. The same person always draws the same number for a provider and
/// seed, so a run is reproducible; over many people the shares approach the rates. For the
/// asynchronous providers the draw is made when the job is submitted (a miss is a job that
/// finishes without data); the latency applies to every request, polls included.
///
/// Real limits too: `rate_limit_per_second` and `rate_limit_per_minute` count every request a
/// provider receives (the asynchronous ones' submits, not their polls) in calendar seconds and
/// minutes, answering the rate-limit error beyond them with the wait to the window's end;
/// `outage_seconds: [from, to]` answers 500 to every request in that span after the start:
///
/// ```json
/// { "providers": { "hunter": { "rate_limit_per_second": 15 },
///                  "prospeo": { "rate_limit_per_second": 5, "outage_seconds": [30, 90] } } }
/// ```
///
/// An asynchronous provider's `job_seconds: [min, max]` is how long its jobs take: a job is
/// done only once that long has passed since its submit, the time drawn per person between
/// `min` and `max` (another deterministic draw from the seed, the provider and the person), so
/// FullEnrich's documented 30 to 90 s per contact is `"fullenrich": {"job_seconds": [30, 90]}`.
/// Without it a job is done on its second poll, however soon.
///
/// The rate-limit answers carry each provider's documented signal:
/// PDL's `x-ratelimit-reset` / `x-ratelimit-remaining`, Prospeo's `x-minute-request-left` /
/// `x-minute-reset-seconds`, and nothing for Hunter, FullEnrich and Dropcontact, which
/// document none. `retry_after_seconds` sets the wait they announce: it fills PDL's
/// `x-ratelimit-reset` (that many seconds from now, rounded up to the second) and Prospeo's
/// `x-minute-reset-seconds`, and, for the other three, a `Retry-After` (which a real server
/// of theirs would not send). Without it PDL's reset and Prospeo's minute reset are the next
/// minute's start, and the other three send no header.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorConfig {
    /// The seed mixed into every draw.
    #[serde(default)]
    pub seed: u64,
    /// Behaviour per provider name (`hunter`, `pdl`, `prospeo`, `fullenrich`, `dropcontact`).
    #[serde(default)]
    pub providers: HashMap<String, ProviderBehavior>,
}

/// How one simulated provider behaves for every request (see [`SimulatorConfig`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderBehavior {
    /// Milliseconds to wait before each answer.
    #[serde(default)]
    pub latency_ms: u64,
    /// Share of requests answered with the provider's no match, in `[0, 1]`.
    #[serde(default)]
    pub miss_rate: f64,
    /// Share of requests answered with a 500, in `[0, 1]`.
    #[serde(default)]
    pub error_rate: f64,
    /// Share of requests answered with the provider's rate-limit error, in `[0, 1]`.
    #[serde(default)]
    pub rate_limit_rate: f64,
    /// The wait (seconds) the rate-limit error announces, in the provider's own header (see
    /// [`SimulatorConfig`]); when unset, the provider's default signal.
    #[serde(default)]
    pub retry_after_seconds: Option<u64>,
    /// `[min, max]` seconds an asynchronous provider's job takes, drawn per person; unset: done
    /// on the second poll. Only for `fullenrich` and `dropcontact`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_seconds: Option<[f64; 2]>,
    /// Requests the provider accepts per calendar second (a fixed window on the wall clock);
    /// more get its rate-limit error with the wait to the next second, counted in `GET
    /// /stats` as `rate_limited`. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_second: Option<u32>,
    /// Requests the provider accepts per calendar minute, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_minute: Option<u32>,
    /// `[from, to]` seconds after the simulator started during which every request gets a
    /// 500 (an outage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage_seconds: Option<[f64; 2]>,
}

/// The longest `job_seconds` accepted: one hour, beyond any enrichment's maximum age.
pub const MAX_JOB_SECONDS: f64 = 3600.0;

impl SimulatorConfig {
    /// Reads and checks a configuration (see [`SimulatorConfig::validate`]).
    pub fn from_json(text: &str) -> Result<Self, String> {
        let config: SimulatorConfig = serde_json::from_str(text)
            .map_err(|e| format!("not a simulator configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    /// Errors (as text): a provider the simulator does not speak, a rate outside `[0, 1]`,
    /// rates of one provider adding up to more than 1, or a `job_seconds` that is not a range
    /// `[min, max]` with `0 <= min <= max <=` [`MAX_JOB_SECONDS`], or that is given to a
    /// provider that answers at once.
    pub fn validate(&self) -> Result<(), String> {
        for (name, behavior) in &self.providers {
            if !PROVIDERS.contains(&name.as_str()) {
                return Err(format!(
                    "unknown provider {name:?} (known: {})",
                    PROVIDERS.join(", ")
                ));
            }
            let rates = [
                ("miss_rate", behavior.miss_rate),
                ("error_rate", behavior.error_rate),
                ("rate_limit_rate", behavior.rate_limit_rate),
            ];
            for (field, rate) in rates {
                if !(0.0..=1.0).contains(&rate) {
                    return Err(format!("{name}.{field}: {rate} is not within [0, 1]"));
                }
            }
            let total: f64 = rates.iter().map(|(_, rate)| rate).sum();
            if total > 1.0 + 1e-9 {
                return Err(format!(
                    "{name}: miss_rate + error_rate + rate_limit_rate is {total}, more than 1"
                ));
            }
            for (field, limit) in [
                ("rate_limit_per_second", behavior.rate_limit_per_second),
                ("rate_limit_per_minute", behavior.rate_limit_per_minute),
            ] {
                if limit == Some(0) {
                    return Err(format!("{name}.{field}: 0 would refuse every request"));
                }
            }
            if let Some([from, to]) = behavior.outage_seconds
                && !(from >= 0.0 && from <= to)
            {
                return Err(format!(
                    "{name}.outage_seconds: [{from}, {to}] is not a range [from, to] with 0 <= from <= to"
                ));
            }
            if let Some([min, max]) = behavior.job_seconds {
                if !is_asynchronous(name) {
                    return Err(format!(
                        "{name}.job_seconds: {name} answers at once, it has no jobs"
                    ));
                }
                let in_range = |s: f64| (0.0..=MAX_JOB_SECONDS).contains(&s);
                if !(in_range(min) && in_range(max) && min <= max) {
                    return Err(format!(
                        "{name}.job_seconds: [{min}, {max}] is not a range [min, max] with 0 <= min <= max <= {MAX_JOB_SECONDS}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// What `provider` does with a request about `person_key`, without the latency.
    pub(super) fn draw(&self, provider: &str, person_key: &str) -> Plan {
        let Some(behavior) = self.providers.get(provider) else {
            return Plan::Answer;
        };
        let roll = unit_hash(self.seed, provider, person_key);
        let mut bound = behavior.rate_limit_rate;
        if roll < bound {
            return Plan::RateLimit {
                retry_after_seconds: behavior.retry_after_seconds,
            };
        }
        bound += behavior.error_rate;
        if roll < bound {
            return Plan::Fail;
        }
        bound += behavior.miss_rate;
        if roll < bound {
            return Plan::Miss;
        }
        Plan::Answer
    }
}

impl SimulatorConfig {
    /// How long `provider`'s job for `person_key` takes, from its `job_seconds`; `None` when
    /// unset (done on the second poll).
    pub(super) fn job_duration(&self, provider: &str, person_key: &str) -> Option<Duration> {
        let [min, max] = self.providers.get(provider)?.job_seconds?;
        let roll = unit_hash(self.seed, &format!("{provider}/job_seconds"), person_key);
        Some(Duration::from_secs_f64(min + (max - min) * roll))
    }
}

/// Reads a [`SimulatorConfig`] from a JSON file. Errors (as text naming the file): unreadable,
/// not a configuration, or invalid.
pub fn load_config(path: impl AsRef<Path>) -> Result<SimulatorConfig, String> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read simulator configuration {}: {e}",
            path.display()
        )
    })?;
    SimulatorConfig::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// What the configuration makes a provider do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plan {
    /// Answer from the fixture.
    Answer,
    /// Answer the provider's no match.
    Miss,
    /// Answer a 500.
    Fail,
    /// Answer the provider's rate-limit error.
    RateLimit { retry_after_seconds: Option<u64> },
}

/// A number in `[0, 1)` from FNV-1a over the seed, provider and key, mixed by SplitMix64's
/// finalizer: stable across runs, platforms and Rust versions.
pub(super) fn unit_hash(seed: u64, provider: &str, key: &str) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = seed
        .to_le_bytes()
        .into_iter()
        .chain(provider.bytes())
        .chain([0xff])
        .chain(key.bytes());
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// The person a request asks about, as the key of the configured draws: the LinkedIn profile
/// when given, else the lower-cased name and company.
pub(super) fn person_key(
    profile: Option<&str>,
    names: Option<&(String, String)>,
    company: Option<&str>,
) -> String {
    if let Some(key) = profile.and_then(linkedin_profile) {
        return key;
    }
    let (first, last) = names.cloned().unwrap_or_default();
    let company = company
        .map(|c| bare_domain(c).unwrap_or_else(|| text_key(c)))
        .unwrap_or_default();
    format!("{first} {last} @ {company}")
}
