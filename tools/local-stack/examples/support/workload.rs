//! What the workload examples (`mixed_workload`, `scale_run`) share: synthetic people and the
//! records the simulated providers keep about them, the simulator's counters and a description
//! of its configuration, a client of the gateway, and the options of a private stack.
//! Each example uses part of it.
#![allow(dead_code)]

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use enrichment::config::Vars;
use enrichment::domain::Person;
use enrichment::providers::normalize::{normalize_email, normalize_phone};
use local_stack::Options;
use local_stack::simulator::{
    DropcontactEmail, DropcontactRecord, FullEnrichRecord, HunterRecord, KnownPerson, PdlRecord,
    ProspeoRecord, RequestStats, SimulatorConfig,
};
use uuid::Uuid;

/// The simulated providers, in the order the reports list them.
pub const PROVIDERS: [&str; 5] = ["hunter", "pdl", "prospeo", "fullenrich", "dropcontact"];

/// The visibility timeout of the runs' queues and pollers (the local stack's default).
pub const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Synthetic people

/// SplitMix64: a small deterministic generator, so that a seed always gives the same people.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const FIRST: [&str; 40] = [
    "Alva", "Bram", "Cosima", "Dario", "Edda", "Fenn", "Gilda", "Hollis", "Ines", "Jorah",
    "Kestra", "Lorcan", "Mira", "Nils", "Odile", "Pim", "Quilla", "Rafe", "Saoirse", "Tobin",
    "Ulla", "Vesper", "Wren", "Xavi", "Yara", "Zeno", "Anouk", "Basil", "Clio", "Dov", "Elska",
    "Ferris", "Greer", "Hale", "Ilse", "Joss", "Kai", "Liesel", "Marek", "Noor",
];

const LAST: [&str; 40] = [
    "Ashgrove",
    "Brindle",
    "Calloway",
    "Dunmore",
    "Everhart",
    "Fairweather",
    "Galloway",
    "Holloway",
    "Ironside",
    "Jessup",
    "Kilbride",
    "Larkspur",
    "Merriwether",
    "Northcott",
    "Oakhurst",
    "Pennywhistle",
    "Quennell",
    "Rookwood",
    "Starling",
    "Thistlewood",
    "Underhill",
    "Vantongeren",
    "Whitlock",
    "Yarborough",
    "Zabriskie",
    "Amberley",
    "Blackwood",
    "Coldwell",
    "Driscoll",
    "Emberton",
    "Foxley",
    "Greaves",
    "Harrowgate",
    "Ingleby",
    "Juniper",
    "Kettering",
    "Lockhart",
    "Marchbanks",
    "Nettleship",
    "Ormsby",
];

const COMPANY_FIRST: [&str; 12] = [
    "Amber", "Birch", "Cobalt", "Drift", "Ember", "Flint", "Granite", "Heron", "Indigo", "Juniper",
    "Kelp", "Lumen",
];

const COMPANY_SECOND: [&str; 8] = [
    "Harbor",
    "Works",
    "Labs",
    "Freight",
    "Analytics",
    "Systems",
    "Studio",
    "Robotics",
];

const AREA_CODES: [&str; 6] = ["212", "646", "415", "312", "617", "206"];

/// One synthetic person's identity: name, company, work address, LinkedIn profile.
#[derive(Debug, Clone)]
pub struct Identity {
    pub first_name: String,
    pub last_name: String,
    pub company_name: String,
    pub company_domain: String,
    /// `first.last@domain`, lower-cased.
    pub email: String,
    pub linkedin_url: Option<String>,
}

impl Identity {
    /// A new person of an org with this identity (a fresh id).
    pub fn person(&self) -> Person {
        Person {
            id: Uuid::new_v4(),
            first_name: Some(self.first_name.clone()),
            last_name: Some(self.last_name.clone()),
            company_name: Some(self.company_name.clone()),
            company_domain: Some(self.company_domain.clone()),
            linkedin_url: self.linkedin_url.clone(),
            ..Person::default()
        }
    }

    /// The simulator's record of this person, no provider knowing anything yet.
    pub fn known(&self) -> KnownPerson {
        KnownPerson {
            first_name: self.first_name.clone(),
            last_name: self.last_name.clone(),
            company_name: Some(self.company_name.clone()),
            company_domain: Some(self.company_domain.clone()),
            linkedin_url: self.linkedin_url.clone(),
            hunter: None,
            pdl: None,
            prospeo: None,
            fullenrich: None,
            dropcontact: None,
        }
    }
}

/// Distinct identities drawn from a seed, and the generator that draws what the providers know.
pub struct Identities {
    pub rng: Rng,
    companies: Vec<(String, String)>,
    taken: HashSet<String>,
}

impl Identities {
    /// The identities of `seed` (the same seed, the same people, in the same order).
    pub fn new(seed: u64) -> Self {
        let companies = (0..40)
            .map(|i| {
                let first = COMPANY_FIRST[i % COMPANY_FIRST.len()];
                let second = COMPANY_SECOND[(i / COMPANY_FIRST.len() + i) % COMPANY_SECOND.len()];
                let domain = format!("{}{}.example", first, second).to_lowercase();
                (format!("{first} {second}"), domain)
            })
            .collect();
        Self {
            rng: Rng(seed ^ 0x6d69_7865_645f_776b),
            companies,
            taken: HashSet::new(),
        }
    }

    /// The next identity not drawn before (64,000 are possible: 40 first names, 40 last names,
    /// 40 companies).
    pub fn next_identity(&mut self) -> Identity {
        loop {
            let rng = &mut self.rng;
            let first = rng.pick(&FIRST).to_string();
            let last = rng.pick(&LAST).to_string();
            let (company_name, company_domain) =
                self.companies[rng.below(self.companies.len())].clone();
            if !self
                .taken
                .insert(format!("{first} {last} {company_domain}"))
            {
                continue;
            }
            let email = format!("{}.{}@{company_domain}", first, last).to_lowercase();
            let linkedin_url = rng.chance(0.8).then(|| {
                format!(
                    "https://www.linkedin.com/in/{}-{}-{:04x}",
                    first.to_lowercase(),
                    last.to_lowercase(),
                    rng.next() & 0xffff
                )
            });
            return Identity {
                first_name: first,
                last_name: last,
                company_name,
                company_domain,
                email,
                linkedin_url,
            };
        }
    }
}

/// A phone number reserved for fiction (555-0100 to 555-0199) in a US area code.
pub fn phone(rng: &mut Rng) -> String {
    format!("+1 {} 555 01{:02}", rng.pick(&AREA_CODES), rng.below(100))
}

/// Hunter's record of `who`: their work address, a score of 70 to 99, mostly `valid`.
pub fn hunter_record(rng: &mut Rng, who: &Identity) -> HunterRecord {
    HunterRecord {
        email: who.email.clone(),
        score: 70 + rng.below(30) as u8,
        verification_status: Some(
            if rng.chance(0.8) {
                "valid"
            } else {
                "accept_all"
            }
            .into(),
        ),
        position: None,
        simulate: Default::default(),
    }
}

/// Prospeo's record of `who`: the work address 80% of the time, a mobile half of the time.
pub fn prospeo_record(rng: &mut Rng, who: &Identity) -> ProspeoRecord {
    ProspeoRecord {
        email: rng.chance(0.8).then(|| who.email.clone()),
        mobile: rng.chance(0.5).then(|| phone(rng).replace(' ', "")),
        job_title: None,
        simulate: Default::default(),
    }
}

/// Dropcontact's record of `who`: the work address, or 30% of the time an initial-and-name one.
pub fn dropcontact_record(rng: &mut Rng, who: &Identity) -> DropcontactRecord {
    let address = if rng.chance(0.7) {
        who.email.clone()
    } else {
        format!(
            "{}{}@{}",
            who.first_name[..1].to_lowercase(),
            who.last_name.to_lowercase(),
            who.company_domain
        )
    };
    DropcontactRecord {
        emails: vec![DropcontactEmail {
            email: address,
            qualification: "nominative@pro".into(),
        }],
        phone: None,
        simulate: Default::default(),
    }
}

/// People Data Labs' record of `who`: the work address 80% of the time, a mobile 55%, a
/// likelihood of 6 to 10.
pub fn pdl_record(rng: &mut Rng, who: &Identity) -> PdlRecord {
    PdlRecord {
        work_email: rng.chance(0.8).then(|| who.email.clone()),
        personal_emails: Vec::new(),
        mobile_phone: rng.chance(0.55).then(|| phone(rng)),
        phone_numbers: Vec::new(),
        likelihood: 6 + rng.below(5) as u8,
        simulate: Default::default(),
    }
}

/// FullEnrich's record of `who`: the work address 85% of the time, a phone 55%.
pub fn fullenrich_record(rng: &mut Rng, who: &Identity) -> FullEnrichRecord {
    FullEnrichRecord {
        work_emails: if rng.chance(0.85) {
            vec![who.email.clone()]
        } else {
            Vec::new()
        },
        email_status: "DELIVERABLE".into(),
        personal_emails: Vec::new(),
        phones: if rng.chance(0.55) {
            vec![phone(rng)]
        } else {
            Vec::new()
        },
        simulate: Default::default(),
    }
}

/// The synthetic values must survive the cascade's normalization, or a "found" would be a miss.
pub fn check_fixture(known: &[KnownPerson]) -> Result<(), String> {
    for k in known {
        let mut emails: Vec<&String> = Vec::new();
        let mut phones: Vec<&String> = Vec::new();
        if let Some(r) = &k.hunter {
            emails.push(&r.email);
        }
        if let Some(r) = &k.pdl {
            emails.extend(&r.work_email);
            phones.extend(&r.mobile_phone);
        }
        if let Some(r) = &k.prospeo {
            emails.extend(&r.email);
            phones.extend(&r.mobile);
        }
        if let Some(r) = &k.fullenrich {
            emails.extend(&r.work_emails);
            phones.extend(&r.phones);
        }
        if let Some(r) = &k.dropcontact {
            emails.extend(r.emails.iter().map(|e| &e.email));
        }
        for email in emails {
            normalize_email(email)
                .ok_or(format!("synthetic email {email:?} does not normalize"))?;
        }
        for phone in phones {
            normalize_phone(phone, phonenumber::country::Id::US)
                .ok_or(format!("synthetic phone {phone:?} does not normalize"))?;
        }
    }
    Ok(())
}

/// How many of `known` each provider has a record of, as a line of the report.
pub fn describe_fixture(known: &[KnownPerson], people: usize) -> String {
    let knows = |has: fn(&KnownPerson) -> bool| known.iter().filter(|k| has(k)).count();
    format!(
        "fixture: {} of {people} known to some provider (hunter {}, pdl {}, prospeo {}, fullenrich {}, dropcontact {})",
        known.len(),
        knows(|k| k.hunter.is_some()),
        knows(|k| k.pdl.is_some()),
        knows(|k| k.prospeo.is_some()),
        knows(|k| k.fullenrich.is_some()),
        knows(|k| k.dropcontact.is_some()),
    )
}

// ---------------------------------------------------------------------------------------------
// The simulator

/// The simulator's behaviour per provider, in words.
pub fn describe(config: &SimulatorConfig) -> String {
    PROVIDERS
        .iter()
        .filter_map(|name| {
            let b = config.providers.get(*name)?;
            let mut parts = Vec::new();
            if b.latency_ms > 0 {
                parts.push(format!("{} ms per request", b.latency_ms));
            }
            if b.error_rate > 0.0 {
                parts.push(format!("{:.0}% 500s", b.error_rate * 100.0));
            }
            if b.rate_limit_rate > 0.0 {
                let after = b
                    .retry_after_seconds
                    .map(|s| format!(" (come back in {s} s)"))
                    .unwrap_or_default();
                parts.push(format!(
                    "{:.0}% rate limited{after}",
                    b.rate_limit_rate * 100.0
                ));
            }
            if b.miss_rate > 0.0 {
                parts.push(format!("{:.0}% misses", b.miss_rate * 100.0));
            }
            if let Some([min, max]) = b.job_seconds {
                parts.push(format!("jobs of {min} to {max} s"));
            }
            if let Some(n) = b.rate_limit_per_second {
                parts.push(format!("{n}/s"));
            }
            if let Some(n) = b.rate_limit_per_minute {
                parts.push(format!("{n}/min"));
            }
            if let Some([from, to]) = b.outage_seconds {
                parts.push(format!("500s from {from} to {to} s after its start"));
            }
            Some(format!("{name} {}", parts.join(" + ")))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `POST /stats/reset`: the simulator's counters start again from zero.
pub async fn reset_request_stats(http: &reqwest::Client, simulator: &str) -> Result<(), String> {
    http.post(format!("{simulator}/stats/reset"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map(drop)
        .map_err(|e| format!("simulator /stats/reset: {e}"))
}

/// `GET /stats`: the requests the simulator received since its last reset.
pub async fn request_stats(
    http: &reqwest::Client,
    simulator: &str,
) -> Result<RequestStats, String> {
    http.get(format!("{simulator}/stats"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("simulator /stats: {e}"))?
        .json()
        .await
        .map_err(|e| format!("simulator /stats: {e}"))
}

/// The requests counted between two readings of `GET /stats` (the same providers' counters;
/// `max_submits_per_person` is `after`'s).
pub fn delta(after: &RequestStats, before: &RequestStats) -> RequestStats {
    after
        .iter()
        .map(|(name, a)| {
            let b = before.get(name).cloned().unwrap_or_default();
            let minus =
                |x: Option<u64>, y: Option<u64>| x.map(|x| x.saturating_sub(y.unwrap_or(0)));
            let mut stats = a.clone();
            stats.requests = a.requests.saturating_sub(b.requests);
            stats.submits = minus(a.submits, b.submits);
            stats.polls = minus(a.polls, b.polls);
            stats.rate_limited = a.rate_limited.saturating_sub(b.rate_limited);
            for (status, count) in &mut stats.statuses {
                *count = count.saturating_sub(b.statuses.get(status).copied().unwrap_or(0));
            }
            stats.statuses.retain(|_, count| *count > 0);
            (name.clone(), stats)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The gateway and the stack

/// A client of the stack's gateway, signed in as one user of one org.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Api {
    /// Sends `method path` with an optional JSON body; the status and the whole body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, String), String> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("gateway, {method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| e.to_string())?;
        Ok((status, body))
    }

    /// `method` on one person's enrichment of `field` (`POST` starts it, `GET` reads it).
    pub async fn call(
        &self,
        method: reqwest::Method,
        person: Uuid,
        field: &str,
    ) -> Result<(u16, String), String> {
        let path = format!("/api/v1/operations/enrichment/{person}?field={field}");
        self.send(method, &path, None).await
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// The options of a private stack in `state_dir` (in memory, free ports, the local worker
/// on, [`VISIBILITY_TIMEOUT`]) whose simulator knows `known` and behaves as `config`, the
/// functions reading `vars`; writes the fixture and the configuration there.
pub fn private_options(
    root: &Path,
    state_dir: &Path,
    known: &[KnownPerson],
    config: &SimulatorConfig,
    vars: Vars<'static>,
) -> Result<Options, String> {
    check_fixture(known)?;
    config.validate()?;
    let write = |name: &str, value: String| {
        let path = state_dir.join(name);
        std::fs::write(&path, value).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok::<_, String>(path)
    };
    let fixture = write(
        "known-people.json",
        serde_json::to_string_pretty(known).map_err(|e| e.to_string())?,
    )?;
    let simulator = write(
        "simulator.json",
        serde_json::to_string_pretty(config).map_err(|e| e.to_string())?,
    )?;
    let mut options = Options::for_repo(root);
    options.state_dir = state_dir.to_path_buf();
    options.persist = false;
    options.port = 0;
    options.local_worker = true;
    options.fixture = fixture;
    options.simulator_config = Some(simulator);
    options.visibility_timeout = VISIBILITY_TIMEOUT;
    options.vars = vars;
    Ok(options)
}
