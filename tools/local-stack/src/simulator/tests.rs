//! The simulator through its HTTP routes: each provider's wire format, the fixture, the
//! simulator-wide behaviour and the request counters.

use std::net::SocketAddr;

use enrichment::domain::Field;
use enrichment::providers::hunter::HunterProvider;
use enrichment::providers::normalize::{normalize_email, normalize_phone};
use enrichment::providers::pdl::PdlProvider;
use enrichment::providers::{
    PersonQuery, Provider, ProviderAnswer, ProviderError, ProviderJobs, RawContact,
};

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
            confidence: Some(96),
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
async fn hunter_takes_the_key_in_its_header_or_in_the_query() {
    let address = start().await;
    let http = reqwest::Client::new();
    let url = format!(
        "http://{address}/hunter/v2/email-finder?domain=northwind.example&first_name=Ada&last_name=Quill"
    );
    let status = |response: reqwest::Response| response.status().as_u16();
    let by_header = http.get(&url).header("X-API-KEY", "k").send().await;
    assert_eq!(by_header.map(status).unwrap(), 200);
    let by_query = http.get(format!("{url}&api_key=k")).send().await;
    assert_eq!(by_query.map(status).unwrap(), 200);
    let without = http.get(&url).send().await.unwrap();
    assert_eq!(without.status(), 401);
    let body: Value = without.json().await.unwrap();
    assert_eq!(body["errors"][0]["id"], "authentication_failed");
    let blank = http.get(&url).header("X-API-KEY", " ").send().await;
    assert_eq!(blank.map(status).unwrap(), 401);
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
            "http://{address}/hunter/v2/email-finder?first_name=Ada&last_name=Quill"
        ))
        .header("X-API-KEY", "k")
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
        CascadeOutcome::Found {
            provider, contacts, ..
        } => {
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
        if let Some(record) = &person.prospeo {
            emails.extend(&record.email);
            phones.extend(&record.mobile);
        }
        if let Some(record) = &person.fullenrich {
            emails.extend(record.work_emails.iter().chain(&record.personal_emails));
            phones.extend(&record.phones);
        }
        if let Some(record) = &person.dropcontact {
            emails.extend(record.emails.iter().map(|e| &e.email));
            phones.extend(&record.phone);
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
    assert!(empty.contains("has no provider record"), "{empty}");
    std::fs::write(
        &path,
        r#"[{"first_name": "Solo", "last_name": "Prospect", "prospeo": {"email": "solo@prospect.example"}}]"#,
    )
    .unwrap();
    assert_eq!(load_fixture(&path).unwrap().len(), 1);
    std::fs::write(&path, r#"{"people": []}"#).unwrap();
    assert!(load_fixture(&path).unwrap_err().contains("not a list"));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn required_expressions_follow_pdls_and_or() {
    let data =
        json!({"emails": [{"address": "a@b.example"}], "mobile_phone": null, "phone_numbers": []});
    assert!(meets_required(&data, None));
    assert!(meets_required(&data, Some("emails")));
    assert!(!meets_required(
        &data,
        Some("mobile_phone OR phone_numbers")
    ));
    assert!(meets_required(&data, Some("mobile_phone OR emails")));
    assert!(!meets_required(&data, Some("emails AND mobile_phone")));
}

#[test]
fn the_new_providers_each_know_some_fixture_people() {
    let people = load_fixture(FIXTURE).unwrap();
    let count = |known: fn(&KnownPerson) -> bool| people.iter().filter(|p| known(p)).count();
    assert!(count(|p| p.prospeo.is_some()) >= 3);
    assert!(count(|p| p.fullenrich.is_some()) >= 3);
    assert!(count(|p| p.dropcontact.is_some()) >= 3);
    // Otis stays unknown to everyone: the walkthrough's no-match example.
    assert!(!people.iter().any(|p| p.last_name == "Brandvold"));
}

fn config(json: &str) -> SimulatorConfig {
    SimulatorConfig::from_json(json).expect("valid configuration")
}

fn all_providers(behavior: &str) -> SimulatorConfig {
    let entries: Vec<String> = PROVIDERS
        .iter()
        .map(|name| format!("\"{name}\": {behavior}"))
        .collect();
    config(&format!("{{\"providers\": {{{}}}}}", entries.join(", ")))
}

/// Every adapter against a simulator configured with `config`, asking for Ada Quill.
async fn ask_every_provider(
    config: SimulatorConfig,
) -> Vec<(&'static str, Result<ProviderAnswer, ProviderError>)> {
    use enrichment::providers::dropcontact::DropcontactProvider;
    use enrichment::providers::fullenrich::FullEnrichProvider;
    use enrichment::providers::prospeo::ProspeoProvider;

    let address = super::test_support::start_with(config).await;
    let fast = Duration::from_millis(5);
    let base = |name: &str| format!("http://{address}/{name}");
    let http = reqwest::Client::new();
    let providers: Vec<Box<dyn Provider>> = vec![
        Box::new(HunterProvider::new(http.clone(), base("hunter"), "k")),
        Box::new(PdlProvider::new(http.clone(), base("pdl"), "k")),
        Box::new(ProspeoProvider::new(http.clone(), base("prospeo"), "k")),
        Box::new(
            FullEnrichProvider::new(http.clone(), base("fullenrich"), "k").with_poll_interval(fast),
        ),
        Box::new(
            DropcontactProvider::new(http.clone(), base("dropcontact"), "k")
                .with_poll_interval(fast),
        ),
    ];
    let ada = query(
        "Ada",
        "Quill",
        Some("Northwind Labs"),
        Some("northwind.example"),
        None,
    );
    let mut answers = Vec::new();
    for provider in providers {
        answers.push((provider.name(), provider.find(Field::Emails, &ada).await));
    }
    answers
}

#[tokio::test]
async fn every_provider_finds_ada_without_configuration() {
    for (name, answer) in ask_every_provider(SimulatorConfig::default()).await {
        assert!(
            matches!(&answer, Ok(ProviderAnswer::Found(found)) if found[0].value == "ada.quill@northwind.example"),
            "{name}: {answer:?}"
        );
    }
}

#[tokio::test]
async fn error_rate_one_makes_every_call_a_server_error() {
    for (name, answer) in ask_every_provider(all_providers(r#"{"error_rate": 1.0}"#)).await {
        assert_eq!(answer, Err(ProviderError::Status(500)), "{name}");
    }
}

#[tokio::test]
async fn miss_rate_one_makes_every_call_the_providers_no_match() {
    for (name, answer) in ask_every_provider(all_providers(r#"{"miss_rate": 1.0}"#)).await {
        assert_eq!(answer, Ok(ProviderAnswer::NoMatch), "{name}");
    }
}

#[tokio::test]
async fn rate_limit_rate_one_uses_each_providers_rate_limit_signal() {
    let answers = ask_every_provider(all_providers(
        r#"{"rate_limit_rate": 1.0, "retry_after_seconds": 17}"#,
    ))
    .await;
    for (name, answer) in answers {
        if name == "pdl" {
            // PDL's reset is a UTC time in whole seconds, rounded up: 17 to 18 s from then.
            let Err(ProviderError::RateLimited {
                retry_after: Some(wait),
            }) = answer
            else {
                panic!("pdl: {answer:?}");
            };
            assert!(
                wait > Duration::from_secs(16) && wait <= Duration::from_secs(18),
                "pdl: {wait:?}"
            );
            continue;
        }
        assert_eq!(
            answer,
            Err(ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(17))
            }),
            "{name}"
        );
    }
}

#[tokio::test]
async fn rate_limits_carry_the_headers_each_provider_documents() {
    let address =
        super::test_support::start_with(all_providers(r#"{"rate_limit_rate": 1.0}"#)).await;
    let http = reqwest::Client::new();
    let pdl = http
        .get(format!(
            "http://{address}/pdl/v5/person/enrich?profile=linkedin.com/in/ada"
        ))
        .header("X-Api-Key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(pdl.status(), 429);
    assert!(pdl.headers().get("retry-after").is_none());
    let reset = pdl.headers()["x-ratelimit-reset"].to_str().unwrap();
    let reset = chrono::DateTime::parse_from_rfc3339(reset).expect("an RFC 3339 UTC time");
    let until = reset.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(until <= chrono::Duration::seconds(61), "{until}");
    assert_eq!(
        pdl.headers()["x-ratelimit-remaining"],
        r#"{"minute": 0, "day": null, "month": null}"#
    );

    let prospeo = http
        .post(format!("http://{address}/prospeo/enrich-person"))
        .header("X-KEY", "k")
        .json(&json!({"data": {"linkedin_url": "https://www.linkedin.com/in/ada"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(prospeo.status(), 429);
    assert!(prospeo.headers().get("retry-after").is_none());
    assert_eq!(prospeo.headers()["x-minute-request-left"], "0");
    let minute_reset: u64 = prospeo.headers()["x-minute-reset-seconds"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&minute_reset), "{minute_reset}");

    // Hunter documents no header (its 403 is the rate limit), nor FullEnrich or Dropcontact.
    let hunter = http
        .get(format!(
            "http://{address}/hunter/v2/email-finder?domain=northwind.example&first_name=Ada&last_name=Quill"
        ))
        .header("X-API-KEY", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(hunter.status(), 403);
    assert!(hunter.headers().get("retry-after").is_none());
}

/// Hunter's answers to 100 distinct people under `config`: the indexes of the 5xx ones.
async fn hunter_failures_over_100_people(config: SimulatorConfig) -> Vec<usize> {
    let address = super::test_support::start_with(config).await;
    let provider = hunter(address, "k");
    let mut failed = Vec::new();
    for index in 0..100 {
        let person = query(
            "Person",
            &format!("Number{index}"),
            None,
            Some("crowd.example"),
            None,
        );
        match provider.find(Field::Emails, &person).await {
            Err(ProviderError::Status(500)) => failed.push(index),
            Ok(ProviderAnswer::NoMatch) => {}
            other => panic!("#{index}: {other:?}"),
        }
    }
    failed
}

#[tokio::test]
async fn half_an_error_rate_fails_about_half_of_100_people_reproducibly() {
    let half = || config(r#"{"seed": 1, "providers": {"hunter": {"error_rate": 0.5}}}"#);
    let failed = hunter_failures_over_100_people(half()).await;
    assert!(
        (35..=65).contains(&failed.len()),
        "{} of 100 failed",
        failed.len()
    );
    // The same seed fails the same people; another seed, others.
    assert_eq!(hunter_failures_over_100_people(half()).await, failed);
    let other_seed = config(r#"{"seed": 2, "providers": {"hunter": {"error_rate": 0.5}}}"#);
    assert_ne!(hunter_failures_over_100_people(other_seed).await, failed);
}

#[tokio::test]
async fn rates_partition_the_draw() {
    let mixed = config(
        r#"{"seed": 9, "providers": {"pdl": {"rate_limit_rate": 0.2, "error_rate": 0.3, "miss_rate": 0.5}}}"#,
    );
    let (mut limited, mut failed, mut missed) = (0, 0, 0);
    for index in 0..400 {
        match mixed.draw("pdl", &format!("person {index} @ crowd.example")) {
            Plan::RateLimit { .. } => limited += 1,
            Plan::Fail => failed += 1,
            Plan::Miss => missed += 1,
            Plan::Answer => panic!("the rates add up to 1"),
        }
    }
    assert!((50..=110).contains(&limited), "{limited}");
    assert!((90..=150).contains(&failed), "{failed}");
    assert!((160..=240).contains(&missed), "{missed}");
    // Providers without an entry always answer from the fixture.
    assert_eq!(mixed.draw("hunter", "anyone"), Plan::Answer);
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let slow = config(r#"{"providers": {"pdl": {"latency_ms": 150}}}"#);
    let address = super::test_support::start_with(slow).await;
    let started = std::time::Instant::now();
    let greta = query("Greta", "Solberg", None, Some("fjordline.example"), None);
    assert!(matches!(
        pdl(address, "k").find(Field::Phones, &greta).await,
        Ok(ProviderAnswer::Found(_))
    ));
    assert!(started.elapsed() >= Duration::from_millis(150));
}

async fn stats_of(http: &reqwest::Client, address: SocketAddr) -> RequestStats {
    let response = http
        .get(format!("http://{address}/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn answered(statuses: &[(&str, u64)]) -> BTreeMap<String, u64> {
    statuses
        .iter()
        .map(|(status, count)| (status.to_string(), *count))
        .collect()
}

#[tokio::test]
async fn requests_are_counted_per_provider_until_reset() {
    use enrichment::providers::dropcontact::DropcontactProvider;
    use enrichment::providers::fullenrich::FullEnrichProvider;

    let limited =
        config(r#"{"providers": {"pdl": {"rate_limit_rate": 1.0, "retry_after_seconds": 3}}}"#);
    let address = super::test_support::start_with(limited).await;
    let http = reqwest::Client::new();
    let zero = stats_of(&http, address).await;
    assert_eq!(zero, empty_stats());
    assert_eq!(zero["hunter"].submits, None, "synchronous: no submits");
    assert_eq!(zero["fullenrich"].polls, Some(0));

    let ada = query(
        "Ada",
        "Quill",
        Some("Northwind Labs"),
        Some("northwind.example"),
        None,
    );
    let fast = Duration::from_millis(5);
    let base = |name: &str| format!("http://{address}/{name}");
    assert!(matches!(
        hunter(address, "k").find(Field::Emails, &ada).await,
        Ok(ProviderAnswer::Found(_))
    ));
    assert_eq!(
        hunter(address, "").find(Field::Emails, &ada).await,
        Err(ProviderError::Unauthorized)
    );
    assert!(matches!(
        pdl(address, "k").find(Field::Emails, &ada).await,
        Err(ProviderError::RateLimited { .. })
    ));
    let fullenrich =
        FullEnrichProvider::new(http.clone(), base("fullenrich"), "k").with_poll_interval(fast);
    assert!(matches!(
        fullenrich.find(Field::Emails, &ada).await,
        Ok(ProviderAnswer::Found(_))
    ));
    let dropcontact =
        DropcontactProvider::new(http.clone(), base("dropcontact"), "k").with_poll_interval(fast);
    assert!(matches!(
        dropcontact.find(Field::Emails, &ada).await,
        Ok(ProviderAnswer::Found(_))
    ));
    // Not a provider: not counted.
    let _ = http.get(format!("http://{address}/nowhere")).send().await;

    let counted = stats_of(&http, address).await;
    let expected = RequestStats::from([
        (
            "hunter".to_string(),
            ProviderStats {
                requests: 2,
                statuses: answered(&[("200", 1), ("401", 1)]),
                ..ProviderStats::default()
            },
        ),
        (
            "pdl".to_string(),
            ProviderStats {
                requests: 1,
                statuses: answered(&[("429", 1)]),
                ..ProviderStats::default()
            },
        ),
        ("prospeo".to_string(), ProviderStats::default()),
        // Submitted, polled while in progress (FullEnrich's 400), polled when finished.
        (
            "fullenrich".to_string(),
            ProviderStats {
                requests: 3,
                submits: Some(1),
                polls: Some(2),
                max_submits_per_person: Some(1),
                statuses: answered(&[("200", 2), ("400", 1)]),
                ..ProviderStats::default()
            },
        ),
        (
            "dropcontact".to_string(),
            ProviderStats {
                requests: 3,
                submits: Some(1),
                polls: Some(2),
                max_submits_per_person: Some(1),
                statuses: answered(&[("200", 3)]),
                ..ProviderStats::default()
            },
        ),
    ]);
    assert_eq!(counted, expected);
    let wire: Value = http
        .get(format!("http://{address}/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        wire["pdl"],
        json!({"requests": 1, "rate_limited": 0, "statuses": {"429": 1}})
    );
    assert_eq!(wire["dropcontact"]["polls"], 2);

    let reset = http
        .post(format!("http://{address}/stats/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 200);
    assert_eq!(reset.json::<RequestStats>().await.unwrap(), expected);
    assert_eq!(stats_of(&http, address).await, empty_stats());
}

fn fullenrich_at(address: SocketAddr) -> enrichment::providers::fullenrich::FullEnrichProvider {
    enrichment::providers::fullenrich::FullEnrichProvider::new(
        reqwest::Client::new(),
        format!("http://{address}/fullenrich"),
        "k",
    )
}

fn dropcontact_at(address: SocketAddr) -> enrichment::providers::dropcontact::DropcontactProvider {
    enrichment::providers::dropcontact::DropcontactProvider::new(
        reqwest::Client::new(),
        format!("http://{address}/dropcontact"),
        "k",
    )
}

#[tokio::test]
async fn a_job_is_done_only_once_its_job_seconds_have_passed() {
    use enrichment::providers::JobPoll;

    let address = super::test_support::start_with(config(
        r#"{"providers": {"fullenrich": {"job_seconds": [0.4, 0.4]}, "dropcontact": {"job_seconds": [0.4, 0.4]}}}"#,
    ))
    .await;
    let ada = query(
        "Ada",
        "Quill",
        Some("Northwind Labs"),
        Some("northwind.example"),
        None,
    );
    let fullenrich = fullenrich_at(address);
    let dropcontact = dropcontact_at(address);
    for provider in [&fullenrich as &dyn Provider, &dropcontact] {
        let jobs = provider.jobs().expect("asynchronous");
        let id = jobs
            .submit_job(Field::Emails, &ada)
            .await
            .unwrap()
            .expect("a job");
        // Polled again and again: still in progress while its time has not passed.
        for _ in 0..3 {
            assert!(
                matches!(
                    jobs.poll_job(Field::Emails, &id).await,
                    Ok(JobPoll::Pending)
                ),
                "{}",
                provider.name()
            );
        }
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert!(
            matches!(jobs.poll_job(Field::Emails, &id).await, Ok(JobPoll::Done(found)) if !found.is_empty()),
            "{}",
            provider.name()
        );
    }

    // Without job_seconds: done on the second poll, as before.
    let address = start().await;
    let jobs = fullenrich_at(address);
    let id = jobs.submit_job(Field::Emails, &ada).await.unwrap().unwrap();
    assert!(matches!(
        jobs.poll_job(Field::Emails, &id).await,
        Ok(JobPoll::Pending)
    ));
    assert!(matches!(
        jobs.poll_job(Field::Emails, &id).await,
        Ok(JobPoll::Done(_))
    ));
}

#[test]
fn job_seconds_are_drawn_per_person_within_the_range() {
    let documented =
        config(r#"{"seed": 4, "providers": {"fullenrich": {"job_seconds": [30, 90]}}}"#);
    let durations: Vec<Duration> = (0..200)
        .map(|i| {
            documented
                .job_duration("fullenrich", &format!("person {i}"))
                .unwrap()
        })
        .collect();
    assert!(
        durations
            .iter()
            .all(|d| (Duration::from_secs(30)..=Duration::from_secs(90)).contains(d))
    );
    let under_a_minute = durations.iter().filter(|d| d.as_secs() < 60).count();
    assert!((70..=130).contains(&under_a_minute), "{under_a_minute}");
    assert_eq!(
        documented.job_duration("fullenrich", "person 7"),
        documented.job_duration("fullenrich", "person 7"),
        "the same person draws the same time"
    );
    assert_eq!(documented.job_duration("dropcontact", "person 7"), None);
    let fixed = config(r#"{"providers": {"dropcontact": {"job_seconds": [2.5, 2.5]}}}"#);
    assert_eq!(
        fixed.job_duration("dropcontact", "anyone"),
        Some(Duration::from_millis(2500))
    );
}

#[test]
fn job_seconds_must_be_a_range_of_an_asynchronous_provider() {
    let error = |json: &str| SimulatorConfig::from_json(json).unwrap_err();
    for bad in [
        "[90, 30]",
        "[-1, 5]",
        "[0, 4000]",
        "[30]",
        "[30, 60, 90]",
        "\"30-90\"",
    ] {
        let json = format!(r#"{{"providers": {{"fullenrich": {{"job_seconds": {bad}}}}}}}"#);
        assert!(
            SimulatorConfig::from_json(&json).is_err(),
            "{bad} should be refused"
        );
    }
    assert!(
        error(r#"{"providers": {"fullenrich": {"job_seconds": [90, 30]}}}"#)
            .contains("job_seconds")
    );
    assert!(error(r#"{"providers": {"hunter": {"job_seconds": [1, 2]}}}"#).contains("no jobs"));
    assert_eq!(
        config(r#"{"providers": {"fullenrich": {"job_seconds": [30, 90]}}}"#).providers
            ["fullenrich"]
            .job_seconds,
        Some([30.0, 90.0])
    );
}

#[tokio::test]
async fn submits_are_counted_per_person_and_field() {
    let address = start().await;
    let http = reqwest::Client::new();
    let ada = query(
        "Ada",
        "Quill",
        Some("Northwind Labs"),
        Some("northwind.example"),
        None,
    );
    let bo = query("Bo", "Nobody", None, Some("nowhere.example"), None);
    let fullenrich = fullenrich_at(address);
    let dropcontact = dropcontact_at(address);
    let jobs: &dyn enrichment::providers::ProviderJobs = &fullenrich;
    jobs.submit_job(Field::Emails, &ada).await.unwrap();
    jobs.submit_job(Field::Phones, &ada).await.unwrap();
    jobs.submit_job(Field::Emails, &bo).await.unwrap();
    let dropcontact_jobs: &dyn enrichment::providers::ProviderJobs = &dropcontact;
    dropcontact_jobs
        .submit_job(Field::Emails, &ada)
        .await
        .unwrap();
    let once = stats_of(&http, address).await;
    assert_eq!(once["fullenrich"].submits, Some(3));
    assert_eq!(once["fullenrich"].max_submits_per_person, Some(1));
    assert_eq!(once["dropcontact"].max_submits_per_person, Some(1));
    assert_eq!(once["hunter"].max_submits_per_person, None);

    // The same search submitted again: a second paid job for the same person and field.
    jobs.submit_job(Field::Emails, &ada).await.unwrap();
    let twice = stats_of(&http, address).await;
    assert_eq!(twice["fullenrich"].max_submits_per_person, Some(2));
    let wire: Value = http
        .get(format!("http://{address}/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(wire["fullenrich"]["max_submits_per_person"], 2);

    let reset = http
        .post(format!("http://{address}/stats/reset"))
        .send()
        .await
        .unwrap()
        .json::<RequestStats>()
        .await
        .unwrap();
    assert_eq!(reset["fullenrich"].max_submits_per_person, Some(2));
    let after = stats_of(&http, address).await;
    assert_eq!(after["fullenrich"].max_submits_per_person, Some(0));
    assert_eq!(after, empty_stats());
}

#[test]
fn requests_are_attributed_by_their_first_path_segment() {
    assert_eq!(provider_of("/hunter/v2/email-finder"), Some("hunter"));
    assert_eq!(
        provider_of("/fullenrich/api/v2/contact/enrich/bulk/abc"),
        Some("fullenrich")
    );
    assert_eq!(provider_of("/stats"), None);
    assert_eq!(provider_of("/hunterx/v2"), None);
    assert_eq!(provider_of("/"), None);
}

#[test]
fn unit_hash_is_stable_and_spread() {
    let a = unit_hash(1, "hunter", "ada quill @ northwind.example");
    assert_eq!(a, unit_hash(1, "hunter", "ada quill @ northwind.example"));
    assert_ne!(a, unit_hash(2, "hunter", "ada quill @ northwind.example"));
    assert_ne!(a, unit_hash(1, "pdl", "ada quill @ northwind.example"));
    let draws: Vec<f64> = (0..10_000)
        .map(|i| unit_hash(0, "hunter", &format!("person {i}")))
        .collect();
    assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
    let below_half = draws.iter().filter(|d| **d < 0.5).count();
    assert!((4_800..=5_200).contains(&below_half), "{below_half}");
}

#[test]
fn person_keys_ignore_writing_and_prefer_the_profile() {
    let names = ("ada".to_string(), "quill".to_string());
    assert_eq!(
        person_key(None, Some(&names), Some("https://www.Northwind.example/")),
        "ada quill @ northwind.example"
    );
    assert_eq!(
        person_key(
            Some("https://www.linkedin.com/in/ada-quill-nw/"),
            Some(&names),
            None
        ),
        "linkedin.com/in/ada-quill-nw"
    );
}

#[test]
fn configurations_are_checked() {
    let parsed = config(
        r#"{"seed": 3, "providers": {"prospeo": {"latency_ms": 20, "miss_rate": 0.25, "retry_after_seconds": 5}}}"#,
    );
    assert_eq!(parsed.seed, 3);
    assert_eq!(
        parsed.providers["prospeo"],
        ProviderBehavior {
            latency_ms: 20,
            miss_rate: 0.25,
            retry_after_seconds: Some(5),
            ..ProviderBehavior::default()
        }
    );
    let error = |json: &str| SimulatorConfig::from_json(json).unwrap_err();
    assert!(error(r#"{"providers": {"clearbit": {}}}"#).contains("unknown provider"));
    assert!(error(r#"{"providers": {"pdl": {"error_rate": 1.5}}}"#).contains("error_rate"));
    assert!(error(r#"{"providers": {"pdl": {"miss_rate": -0.1}}}"#).contains("miss_rate"));
    assert!(
        error(r#"{"providers": {"pdl": {"miss_rate": 0.6, "error_rate": 0.6}}}"#)
            .contains("more than 1")
    );
    assert!(error(r#"{"providers": {"pdl": {"eror_rate": 0.1}}}"#).contains("eror_rate"));

    let path = std::env::temp_dir().join(format!("simulator-{}.json", std::process::id()));
    std::fs::write(&path, r#"{"providers": {"hunter": {"error_rate": 0.1}}}"#).unwrap();
    assert_eq!(
        load_config(&path).unwrap().providers["hunter"].error_rate,
        0.1
    );
    std::fs::write(&path, r#"{"providers": {"hunter": {"error_rate": 2}}}"#).unwrap();
    let invalid = load_config(&path).unwrap_err();
    assert!(invalid.contains(&path.display().to_string()), "{invalid}");
    let _ = std::fs::remove_file(&path);
    assert!(load_config("/nonexistent/simulator.json").is_err());
}

#[tokio::test]
async fn the_cascade_runs_the_new_providers_against_the_simulator() {
    use enrichment::providers::cascade::{Cascade, CascadeOutcome};

    let address = start().await;
    let vars: HashMap<&str, String> = HashMap::from([
        ("EMAIL_PROVIDERS", "prospeo,dropcontact,hunter".to_string()),
        ("PHONE_PROVIDERS", "prospeo,fullenrich".to_string()),
        ("HUNTER_API_KEY", "local".to_string()),
        ("PROSPEO_API_KEY", "local".to_string()),
        ("FULLENRICH_API_KEY", "local".to_string()),
        ("DROPCONTACT_API_KEY", "local".to_string()),
        ("HUNTER_BASE_URL", format!("http://{address}/hunter")),
        ("PROSPEO_BASE_URL", format!("http://{address}/prospeo")),
        (
            "FULLENRICH_BASE_URL",
            format!("http://{address}/fullenrich"),
        ),
        (
            "DROPCONTACT_BASE_URL",
            format!("http://{address}/dropcontact"),
        ),
        ("PROVIDER_TIMEOUT_SECONDS", "10".to_string()),
    ]);
    let cascade =
        Cascade::from_vars(reqwest::Client::new(), |name| vars.get(name).cloned()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);

    // Prospeo knows Ada: the first provider answers.
    let ada = query("Ada", "Quill", None, Some("northwind.example"), None);
    match cascade.run(Field::Emails, &ada, deadline).await {
        CascadeOutcome::Found {
            provider, contacts, ..
        } => {
            assert_eq!(provider, "prospeo");
            assert_eq!(contacts[0].value, "ada.quill@northwind.example");
        }
        other => panic!("expected Found, got {other:?}"),
    }

    // Prospeo has no mobile for Bruno; FullEnrich's enrichment finds his UK mobile.
    let bruno = PersonQuery {
        linkedin_url: Some("https://www.linkedin.com/in/bruno-okafor-demo".into()),
        ..PersonQuery::default()
    };
    match cascade.run(Field::Phones, &bruno, deadline).await {
        CascadeOutcome::Found {
            provider, contacts, ..
        } => {
            assert_eq!(provider, "fullenrich");
            let values: Vec<&str> = contacts.iter().map(|c| c.value.as_str()).collect();
            assert_eq!(values, vec!["+442079460321"]);
        }
        other => panic!("expected Found, got {other:?}"),
    }
}

#[tokio::test]
async fn pdl_answers_a_match_below_min_likelihood_as_not_found() {
    let address = start().await;
    // Katya's record has likelihood 6, Dmitri's 7.
    let katya = query("Katya", "Orlov", None, Some("gridline.example"), None);
    let dmitri = query("Dmitri", "Hallan", None, Some("quarrypike.test"), None);
    let default = pdl(address, "local");
    let strict = pdl(address, "local").with_min_likelihood(7);
    let ProviderAnswer::Found(found) = default.find(Field::Emails, &katya).await.unwrap() else {
        panic!("the default min_likelihood 6 takes Katya's match");
    };
    assert!(found.iter().all(|c| c.confidence == Some(60)), "{found:?}");
    assert_eq!(
        strict.find(Field::Emails, &katya).await,
        Ok(ProviderAnswer::NoMatch)
    );
    let ProviderAnswer::Found(found) = strict.find(Field::Phones, &dmitri).await.unwrap() else {
        panic!("Dmitri's match is likelihood 7");
    };
    assert_eq!(found[0].confidence, Some(70));
}

#[tokio::test]
async fn dropcontact_quality_labels_come_back_as_dropcontact_writes_them() {
    use enrichment::providers::dropcontact::DropcontactProvider;

    let people: Vec<KnownPerson> = serde_json::from_value(serde_json::json!([
        { "first_name": "Nadia", "last_name": "Invalid", "company_domain": "nowhere.example",
          "dropcontact": { "emails": [ { "email": "nadia@nowhere.example", "qualification": "invalid domain" } ] } },
        { "first_name": "Otto", "last_name": "Optout", "company_domain": "optout.example",
          "dropcontact": { "emails": [ { "email": "otto@optout.example", "qualification": "Do_Not_Contact" } ] } },
        { "first_name": "Chiara", "last_name": "Vasquez-Lind", "company_domain": "bellwether-analytics.example",
          "dropcontact": { "emails": [ { "email": "chiara@bellwether-analytics.example", "qualification": "catch-all@pro" } ] } }
    ]))
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(people)).await });
    let provider = DropcontactProvider::new(
        reqwest::Client::new(),
        format!("http://{address}/dropcontact"),
        "local",
    )
    .with_poll_interval(Duration::from_millis(10));

    for (first, last, domain) in [
        ("Nadia", "Invalid", "nowhere.example"),
        ("Otto", "Optout", "optout.example"),
    ] {
        assert_eq!(
            provider
                .find(Field::Emails, &query(first, last, None, Some(domain), None))
                .await,
            Ok(ProviderAnswer::NoMatch),
            "{first}: neither stored nor found"
        );
    }
    let chiara = query(
        "Chiara",
        "Vasquez-Lind",
        None,
        Some("bellwether-analytics.example"),
        None,
    );
    let ProviderAnswer::Found(found) = provider.find(Field::Emails, &chiara).await.unwrap() else {
        panic!("a catch-all address is kept");
    };
    assert_eq!(found[0].status.as_deref(), Some("catch-all@pro"));
}

#[tokio::test]
async fn phones_carry_their_region_as_the_providers_send_it() {
    let address = start().await;
    let http = reqwest::Client::new();
    let answer: serde_json::Value = http
        .post(format!("http://{address}/prospeo/enrich-person"))
        .header("X-KEY", "local")
        .json(&serde_json::json!({ "enrich_mobile": true,
            "data": { "linkedin_url": "https://www.linkedin.com/in/ada-quill-nw/" } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["person"]["mobile"]["mobile_country_code"], "US");
}

/// Waits until at least `margin` is left in the current calendar minute.
async fn not_at_a_minute_end(margin: Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let left = Duration::from_secs(60) - Duration::from_secs(now.as_secs() % 60);
    if left < margin {
        tokio::time::sleep(left + Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_provider_past_its_rate_limit_answers_its_rate_limit_error_and_counts_it() {
    let address = super::test_support::start_with(config(
        r#"{"providers": {"hunter": {"rate_limit_per_minute": 2},
                          "prospeo": {"rate_limit_per_minute": 1}}}"#,
    ))
    .await;
    not_at_a_minute_end(Duration::from_secs(5)).await;
    let ada = query("Ada", "Quill", None, Some("northwind.example"), None);
    let hunter = hunter(address, "k");
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(hunter.find(Field::Emails, &ada).await);
    }
    assert!(answers[0].is_ok() && answers[1].is_ok(), "{answers:?}");
    let Err(ProviderError::RateLimited {
        retry_after: Some(wait),
    }) = answers[2]
    else {
        panic!("the third request of the minute: {:?}", answers[2]);
    };
    assert!((1..=60).contains(&wait.as_secs()), "{wait:?}");

    let stats: serde_json::Value = reqwest::get(format!("http://{address}/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["hunter"]["requests"], 3);
    assert_eq!(stats["hunter"]["rate_limited"], 1);
    assert_eq!(stats["hunter"]["statuses"]["403"], 1);
    assert_eq!(stats["pdl"]["rate_limited"], 0);
}

#[tokio::test]
async fn a_provider_in_its_outage_answers_500() {
    let address = super::test_support::start_with(config(
        r#"{"providers": {"pdl": {"outage_seconds": [0, 3600]}, "hunter": {"outage_seconds": [3600, 7200]}}}"#,
    ))
    .await;
    let ada = query("Ada", "Quill", None, Some("northwind.example"), None);
    assert_eq!(
        pdl(address, "k").find(Field::Emails, &ada).await,
        Err(ProviderError::Status(500))
    );
    assert!(hunter(address, "k").find(Field::Emails, &ada).await.is_ok());
}

#[test]
fn rate_limits_and_outages_are_checked() {
    for (json, expected) in [
        (
            r#"{"providers": {"pdl": {"rate_limit_per_second": 0}}}"#,
            "pdl.rate_limit_per_second",
        ),
        (
            r#"{"providers": {"pdl": {"outage_seconds": [9, 3]}}}"#,
            "pdl.outage_seconds",
        ),
    ] {
        let error = SimulatorConfig::from_json(json).unwrap_err();
        assert!(error.contains(expected), "{error}");
    }
}
