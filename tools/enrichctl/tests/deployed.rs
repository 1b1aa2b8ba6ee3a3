//! `enrichctl` against a table addressed like a deployed one: the real binary, with the AWS
//! SDK's default configuration pointed at private emulators on loopback through the standard
//! variables (`AWS_ENDPOINT_URL_DYNAMODB`, `AWS_ENDPOINT_URL_CLOUDFORMATION`, `AWS_REGION`,
//! dummy `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`). DynamoDB is an embedded dynoxide;
//! CloudFormation, for `--stack-name`, is moto's server (`.local/venv/bin/moto_server`, installed
//! by `make setup`).

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use chrono::NaiveDate;
use enrichment::credits::History;
use enrichment::people::PersonView;
use enrichment::store::Store;
use serde_json::Value;
use uuid::Uuid;

/// A fresh table `name` on a private dynoxide on loopback; its endpoint and a store over it.
/// The server stops with the test's runtime.
async fn dynamodb(name: &str) -> (String, Store) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let db = dynoxide::Database::memory().unwrap();
    tokio::spawn(dynoxide::server::serve_with_shutdown(
        listener,
        db,
        std::future::pending(),
    ));
    let client =
        aws_sdk_dynamodb::Client::from_conf(local_stack::dynamodb_config(&endpoint).build());
    let store = Store::new(client, name);
    store.create_table().await.unwrap();
    (endpoint, store)
}

/// The region of the operator's shell (moto keeps each region's stacks apart).
const REGION: &str = "eu-west-1";

/// The environment of an operator's shell pointed at the emulators: nothing else of this
/// machine's (no profile, no instance metadata, no local stack).
fn environment(dynamodb: &str, cloudformation: Option<&str>) -> Vec<(String, String)> {
    let nowhere = std::env::temp_dir().join(format!("enrichctl-none-{}", Uuid::new_v4()));
    let nowhere = nowhere.to_str().unwrap();
    let mut env = vec![
        ("AWS_REGION", REGION),
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
        ("AWS_ENDPOINT_URL_DYNAMODB", dynamodb),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", nowhere),
        ("AWS_SHARED_CREDENTIALS_FILE", nowhere),
        ("LOCAL_STATE_DIR", nowhere),
    ];
    if let Some(endpoint) = cloudformation {
        env.push(("AWS_ENDPOINT_URL_CLOUDFORMATION", endpoint));
    }
    env.into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn run(env: &[(String, String)], args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_enrichctl"))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("enrichctl ends within 120 s")
        .expect("enrichctl runs")
}

/// Runs `enrichctl` and returns its standard output, trimmed; panics unless it exits 0.
async fn ok(env: &[(String, String)], args: &[&str]) -> String {
    let output = run(env, args).await;
    assert!(
        output.status.success(),
        "{args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Runs `enrichctl`; returns its standard error; panics unless it exits with `code`.
async fn fails(env: &[(String, String)], code: i32, args: &[&str]) -> String {
    let output = run(env, args).await;
    assert_eq!(
        output.status.code(),
        Some(code),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stderr).unwrap()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

const TABLE: &str = "enrichment-prod";

/// `args` addressed at [`TABLE`].
fn at<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--table", TABLE];
    all.extend_from_slice(args);
    all
}

#[tokio::test]
async fn credits_and_people_against_a_table_addressed_like_a_deployed_one() {
    let (endpoint, store) = dynamodb(TABLE).await;
    let env = environment(&endpoint, None);
    let org = "org_ops";

    // A grant with a key, sent three times (the last with another amount), adds once.
    let grant = [
        "credits",
        "grant",
        "--org",
        org,
        "--amount",
        "100",
        "--source",
        "signup_bonus",
        "--description",
        "Welcome credits",
        "--idempotency-key",
        "signup-org_ops",
    ];
    assert_eq!(ok(&env, &at(&grant)).await, "100");
    let again = "already granted (idempotency key signup-org_ops); balance 100";
    assert_eq!(ok(&env, &at(&grant)).await, again);
    let mut other_amount = grant;
    other_amount[5] = "7";
    assert_eq!(ok(&env, &at(&other_amount)).await, again);
    let balance = ["credits", "balance", "--org", org];
    assert_eq!(ok(&env, &at(&balance)).await, "100");

    // The history shows that one grant, in the API's shape.
    let history = ok(&env, &at(&["credits", "history", "--org", org])).await;
    let page = json(&history);
    let mut keys: Vec<&str> = page
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["count", "transactions"]);
    assert_eq!(page["count"], 1);
    let granted = &page["transactions"][0];
    let mut fields: Vec<&str> = granted
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "amount",
            "createdAt",
            "description",
            "id",
            "metadata",
            "operationType",
            "organizationId",
            "referenceId",
            "source",
            "type",
            "updatedAt"
        ]
    );
    assert_eq!(granted["type"], "credit_added");
    assert_eq!(granted["amount"], 100);
    assert_eq!(granted["source"], "signup_bonus");
    assert_eq!(granted["description"], "Welcome credits");
    assert_eq!(granted["organizationId"], org);
    assert_eq!(granted["operationType"], Value::Null);
    assert_eq!(granted["referenceId"], Value::Null);
    // Exactly what the API serializes for the same page.
    let stored = store
        .credit_history(
            org,
            "0000-01-01T00:00:00.000Z",
            "9999-12-31T23:59:59.999Z",
            0,
            100,
        )
        .await
        .unwrap();
    let api = History {
        count: stored.transactions.len(),
        transactions: stored.transactions,
    };
    assert_eq!(history, serde_json::to_string_pretty(&api).unwrap());

    // A grant without key or source: manual, and it adds each time.
    let manual = ["credits", "grant", "--org", org, "--amount", "50"];
    assert_eq!(ok(&env, &at(&manual)).await, "150");

    // Pages, newest first.
    let page = |extra: &'static [&'static str]| {
        let mut args = vec!["--table", TABLE, "credits", "history", "--org", org];
        args.extend_from_slice(extra);
        let env = env.clone();
        async move { json(&ok(&env, &args).await) }
    };
    let newest = page(&["--limit", "1"]).await;
    assert_eq!(newest["count"], 1);
    assert_eq!(newest["transactions"][0]["amount"], 50);
    assert_eq!(newest["transactions"][0]["source"], "manual");
    assert_eq!(newest["transactions"][0]["description"], Value::Null);
    let older = page(&["--limit", "1", "--offset", "1"]).await;
    assert_eq!(older["transactions"][0]["amount"], 100);
    assert_eq!(page(&["--offset", "2"]).await["count"], 0);

    // Date ranges: the day of the grants holds both; the days around hold none.
    let all = page(&[]).await;
    let created: Vec<String> = all["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["createdAt"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(created.len(), 2);
    assert!(created[0] >= created[1], "newest first: {created:?}");
    let day = NaiveDate::parse_from_str(&created[1][..10], "%Y-%m-%d").unwrap();
    let (before, after) = (day.pred_opt().unwrap(), day.succ_opt().unwrap());
    let in_range = |start: String, end: String| {
        let env = env.clone();
        async move {
            let args = [
                "--table",
                TABLE,
                "credits",
                "history",
                "--org",
                org,
                "--start-date",
                &start,
                "--end-date",
                &end,
            ];
            json(&ok(&env, &args).await)["count"].as_u64().unwrap()
        }
    };
    let (day, before, after) = (day.to_string(), before.to_string(), after.to_string());
    // Both grants are of that day unless midnight passed between them.
    let same_day = created[0][..10] == created[1][..10];
    assert_eq!(
        in_range(day.clone(), day.clone()).await,
        if same_day { 2 } else { 1 }
    );
    assert_eq!(in_range(before.clone(), before.clone()).await, 0);
    assert_eq!(in_range(before, day).await, if same_day { 2 } else { 1 });
    if same_day {
        assert_eq!(in_range(after.clone(), after).await, 0);
    }
    // A date-time bound: from the newer grant's time on, only it (unless both share a
    // millisecond).
    let since = in_range(created[0].clone(), "9999-12-31".into()).await;
    assert!(since == 1 || created[0] == created[1], "{since}");
    assert_eq!(
        json(&ok(&env, &at(&["credits", "history", "--org", "org_none"])).await),
        serde_json::json!({"transactions": [], "count": 0})
    );

    // Bad options: the API's message, as a usage error (exit 2), before any call.
    for (args, message) in [
        (
            vec!["--limit", "1001"],
            "invalid value for '--limit': limit must be a whole number from 1 to 1000",
        ),
        (
            vec!["--start-date", "2030-01-02", "--end-date", "2030-01-01"],
            "invalid value for '--start-date': startDate must not be after endDate",
        ),
        (
            vec!["--end-date", "tomorrow"],
            "endDate must be an ISO 8601 date (2026-12-01) or date-time (2026-12-01T10:30:00Z)",
        ),
    ] {
        let mut all = at(&["credits", "history", "--org", org]);
        all.extend(args);
        let error = fails(&env, 2, &all).await;
        assert!(error.contains(message), "{error}");
    }

    // The ledger holds: the balance is the sum of the grants.
    let check = store.check_ledger(org).await.unwrap();
    assert_eq!((check.balance, check.granted), (150, 150));
    assert!(check.enrichment_amounts.is_empty());

    // People: imported, then shown as the API shows them.
    let file = std::env::temp_dir().join(format!("enrichctl-deployed-{}.csv", Uuid::new_v4()));
    std::fs::write(
        &file,
        "first_name,last_name,company_name,company_domain,linkedin_url\n\
         Ada,Lovelace,Analytical Engines,analytical.test,\n\
         Grace,Hopper,,,https://www.linkedin.com/in/grace-h\n",
    )
    .unwrap();
    let file = file.to_str().unwrap().to_string();
    let args = ["--table", TABLE, "people", "import", "--org", org, &file];
    let ids: Vec<Uuid> = ok(&env, &args)
        .await
        .lines()
        .map(|line| Uuid::parse_str(line).unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    for (id, first_name) in ids.iter().zip(["Ada", "Grace"]) {
        let id = id.to_string();
        let shown = ok(&env, &at(&["people", "show", "--org", org, &id])).await;
        let person = store
            .get_person(org, Uuid::parse_str(&id).unwrap())
            .await
            .unwrap()
            .expect("imported");
        assert_eq!(
            shown,
            serde_json::to_string_pretty(&PersonView::from(person)).unwrap()
        );
        assert_eq!(json(&shown)["firstName"], first_name);
        // Another org does not see it.
        let error = fails(&env, 1, &at(&["people", "show", "--org", "org_other", &id])).await;
        assert!(error.contains("no person"), "{error}");
    }

    // Tokens stay local.
    let error = fails(&env, 2, &at(&["token", "--user", "u", "--org", org])).await;
    assert!(error.contains("local stack only"), "{error}");

    // A table that does not exist: DynamoDB's answer, exit 1.
    let error = fails(
        &env,
        1,
        &[
            "--table",
            "enrichment-none",
            "credits",
            "balance",
            "--org",
            org,
        ],
    )
    .await;
    assert!(error.starts_with("enrichctl: DynamoDB GetItem"), "{error}");

    // No region: said before any call.
    let no_region: Vec<_> = env
        .iter()
        .filter(|(k, _)| k != "AWS_REGION")
        .cloned()
        .collect();
    let error = fails(&no_region, 1, &at(&balance)).await;
    assert!(error.contains("no AWS region"), "{error}");
}

/// moto's server on a free loopback port; killed when dropped.
struct Moto {
    child: tokio::process::Child,
    url: String,
}

impl Moto {
    async fn start() -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let executable = root.join(".local/venv/bin/moto_server");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(&executable)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (run `make setup`): {e}",
                    executable.display()
                )
            });
        let url = format!("http://127.0.0.1:{port}");
        let moto = Self { child, url };
        for _ in 0..1200 {
            if moto.client().list_stacks().send().await.is_ok() {
                return moto;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("moto did not answer within 60 s");
    }

    fn client(&self) -> aws_sdk_cloudformation::Client {
        let config =
            aws_sdk_cloudformation::config::Builder::from(&local_stack::sdk_config(&self.url))
                .region(aws_sdk_cloudformation::config::Region::new(REGION))
                .build();
        aws_sdk_cloudformation::Client::from_conf(config)
    }

    async fn create_stack(&self, name: &str, template: Value) {
        self.client()
            .create_stack()
            .stack_name(name)
            .template_body(template.to_string())
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "moto creates {name}: {}",
                    aws_sdk_cloudformation::error::DisplayErrorContext(&e)
                )
            });
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A table resource as `template.yaml` declares its keys.
fn table_resource(name: &str) -> Value {
    serde_json::json!({
        "Type": "AWS::DynamoDB::Table",
        "Properties": {
            "TableName": name,
            "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": [
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"}
            ],
            "KeySchema": [
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"}
            ]
        }
    })
}

#[tokio::test]
async fn a_stack_name_resolves_to_its_table_through_cloudformation() {
    let moto = Moto::start().await;
    // The template's shape: the table `EnrichmentTable` and its `TableName` output.
    moto.create_stack(
        "enrichment-staging",
        serde_json::json!({
            "Resources": {"EnrichmentTable": table_resource("enrichment-staging")},
            "Outputs": {
                "ApiUrl": {"Value": "https://api.example"},
                "TableName": {"Value": {"Ref": "EnrichmentTable"}}
            }
        }),
    )
    .await;
    // Deployed before the output existed: the table resource's physical id.
    moto.create_stack(
        "enrichment-legacy",
        serde_json::json!({"Resources": {"EnrichmentTable": table_resource("enrichment-old")}}),
    )
    .await;
    // Neither.
    moto.create_stack(
        "unrelated",
        serde_json::json!({
            "Resources": {"Queue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "q"}}}
        }),
    )
    .await;

    // The tables themselves live in dynoxide, where the operator's DynamoDB endpoint points.
    let (endpoint, staging) = dynamodb("enrichment-staging").await;
    let legacy = Store::new(
        aws_sdk_dynamodb::Client::from_conf(local_stack::dynamodb_config(&endpoint).build()),
        "enrichment-old",
    );
    legacy.create_table().await.unwrap();
    let env = environment(&endpoint, Some(&moto.url));

    let grant = [
        "--stack-name",
        "enrichment-staging",
        "credits",
        "grant",
        "--org",
        "org_s",
        "--amount",
        "25",
        "--idempotency-key",
        "k1",
    ];
    assert_eq!(ok(&env, &grant).await, "25");
    assert_eq!(
        ok(&env, &grant).await,
        "already granted (idempotency key k1); balance 25"
    );
    assert_eq!(staging.credit_balance("org_s").await.unwrap(), 25);
    assert_eq!(staging.check_ledger("org_s").await.unwrap().granted, 25);
    let history = [
        "credits",
        "history",
        "--org",
        "org_s",
        "--stack-name",
        "enrichment-staging",
    ];
    assert_eq!(json(&ok(&env, &history).await)["count"], 1);

    let legacy_grant = [
        "--stack-name",
        "enrichment-legacy",
        "credits",
        "grant",
        "--org",
        "org_l",
        "--amount",
        "3",
    ];
    assert_eq!(ok(&env, &legacy_grant).await, "3");
    assert_eq!(legacy.credit_balance("org_l").await.unwrap(), 3);
    assert_eq!(staging.credit_balance("org_l").await.unwrap(), 0);

    let error = fails(
        &env,
        1,
        &[
            "--stack-name",
            "unrelated",
            "credits",
            "balance",
            "--org",
            "o",
        ],
    )
    .await;
    assert!(
        error.contains("the stack \"unrelated\" (CREATE_COMPLETE) has no TableName output"),
        "{error}"
    );
    let error = fails(
        &env,
        1,
        &[
            "--stack-name",
            "missing",
            "credits",
            "balance",
            "--org",
            "o",
        ],
    )
    .await;
    assert!(
        error.contains("cannot describe the stack \"missing\"") && error.contains("does not exist"),
        "{error}"
    );
    let error = fails(
        &env,
        2,
        &[
            "--stack-name",
            "enrichment-staging",
            "token",
            "--user",
            "u",
            "--org",
            "o",
        ],
    )
    .await;
    assert!(error.contains("local stack only"), "{error}");
    moto.stop().await;
}
