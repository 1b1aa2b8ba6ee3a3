//! The real trigger bootstrap (`target/debug/trigger`) under the Lambda Runtime API emulator:
//! an event that `lambda_http` cannot turn into a request (a body flagged base64 that is not
//! base64, a raw `"` in the query string) panics inside `lambda_http`; `lambda_runtime` must
//! catch that panic, report an invocation error, and the same process must answer the next
//! event. With `panic = "abort"` the process would die instead: the release profile is checked
//! for that too, since these tests run the debug build.

use std::path::{Path, PathBuf};
use std::time::Duration;

use local_stack::runtime_api::{BUILD_TIMEOUT, FunctionProcess, Invocation, Outcome, target_dir};
use serde_json::{Value, json};
use uuid::Uuid;

mod helpers;
use helpers::{http_answer, post_event};

/// What one invocation may take, as the trigger's `Timeout` in `template.yaml`.
const FUNCTION_TIMEOUT: Duration = Duration::from_secs(10);

/// The bound of each scenario once the binary is built.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(90);

/// The public half of a fresh RSA key, in PEM, and the private key's path (for tokens).
fn key_pair() -> (String, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("bootstrap-test-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let private = local_stack::devkey::ensure(&dir).unwrap();
    (local_stack::devkey::public_pem(&private).unwrap(), private)
}

/// Builds the trigger bootstrap if needed and starts it with [`trigger_env`].
async fn start_trigger(public_pem: &str) -> FunctionProcess {
    tokio::time::timeout(
        BUILD_TIMEOUT,
        local_stack::runtime_api::function_binary("trigger"),
    )
    .await
    .expect("the trigger builds in time")
    .expect("the trigger builds");
    FunctionProcess::start("trigger", &trigger_env(public_pem))
        .await
        .expect("the trigger starts")
}

/// The trigger's configuration for these tests: no AWS service is reached before the handlers
/// need DynamoDB or SQS, which the scenarios never do.
fn trigger_env(public_pem: &str) -> [(&'static str, &str); 6] {
    [
        ("TABLE_NAME", "x"),
        ("QUEUE_URL", "http://127.0.0.1:1/q"),
        ("AUTH_JWT_KEY", public_pem),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "local"),
        ("AWS_SECRET_ACCESS_KEY", "local"),
    ]
}

/// The invocation error the function posted (`{"errorType", "errorMessage"}`).
fn invocation_error(invocation: &Invocation, function: &FunctionProcess) -> Value {
    match &invocation.outcome {
        Outcome::Error(error) => error.json().unwrap_or(Value::Null),
        other => panic!(
            "expected an invocation error, got {other:?}; function output:\n{}",
            function.logs()
        ),
    }
}

/// A malformed event gets an invocation error from the same process that then answers a
/// well-formed one.
async fn survives(function: &mut FunctionProcess, malformed: Value, panic_message: &str) {
    let invocation = function.invoke(&malformed, FUNCTION_TIMEOUT).await;
    let error = invocation_error(&invocation, function);
    let message = error["errorMessage"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("Lambda panicked") && message.contains(panic_message),
        "{error}"
    );
    assert!(
        function.is_alive(),
        "the process died: {:?}",
        function.exit_status()
    );

    // The next event: a POST without Authorization, 401 in the envelope.
    let well_formed = post_event(&Uuid::new_v4().to_string(), "field=emails", None);
    let invocation = function.invoke(&well_formed, FUNCTION_TIMEOUT).await;
    let (status, body) = http_answer(&invocation, function);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    assert!(function.is_alive());
}

/// A POST whose body is flagged base64 but is not: aws_lambda_events 1.2.1,
/// src/encodings/http.rs:89, `Body::from_maybe_encoded`: `.expect("failed to decode aws base64
/// encoded body")`. The process must survive it ([`survives`]).
async fn survives_bad_base64(function: &mut FunctionProcess, body: &str) {
    let mut malformed = post_event(&Uuid::new_v4().to_string(), "field=emails", None);
    malformed["isBase64Encoded"] = json!(true);
    malformed["body"] = json!(body);
    survives(
        function,
        malformed,
        "failed to decode aws base64 encoded body",
    )
    .await;
}

#[tokio::test]
async fn bootstrap_survives_a_body_flagged_base64_that_is_not_base64() {
    let (public_pem, _) = key_pair();
    let mut function = start_trigger(&public_pem).await;
    let scenario = async {
        survives_bad_base64(&mut function, "%%% this is not base64 %%%").await;
        // Twice in a row: still the same process.
        survives_bad_base64(&mut function, "not base64!").await;
    };
    tokio::time::timeout(SCENARIO_TIMEOUT, scenario)
        .await
        .expect("bounded");
}

#[tokio::test]
async fn bootstrap_survives_a_query_string_that_is_no_uri() {
    let (public_pem, _) = key_pair();
    let mut function = start_trigger(&public_pem).await;
    let scenario = async {
        // A raw `"` is not allowed in a URI's query: lambda_http 1.3.2, src/request.rs:175,
        // `.expect("failed to build request")` in into_api_gateway_v2_request.
        let malformed = post_event(&Uuid::new_v4().to_string(), "field=\"emails\"", None);
        survives(&mut function, malformed, "failed to build request").await;
    };
    tokio::time::timeout(SCENARIO_TIMEOUT, scenario)
        .await
        .expect("bounded");
}

#[tokio::test]
async fn bootstrap_authenticates_with_its_configured_key_then_validates() {
    let (public_pem, private) = key_pair();
    let mut function = start_trigger(&public_pem).await;
    let scenario = async {
        let token = local_stack::devkey::sign(
            &private,
            "https://clerk.example.com",
            "user_a",
            "org_a",
            Duration::from_secs(300),
        )
        .unwrap();
        // Authenticated, then rejected for its personId: no AWS call is made.
        let event = post_event("not-a-uuid", "field=emails", Some(&token));
        let invocation = function.invoke(&event, FUNCTION_TIMEOUT).await;
        let (status, body) = http_answer(&invocation, &function);
        assert_eq!(status, 400, "{body}");
        assert_eq!(
            body,
            json!({"error": {
                "code": "VALIDATION_ERROR",
                "message": enrichment::http::PERSON_ID_MESSAGE,
            }})
        );
        assert!(invocation.elapsed < FUNCTION_TIMEOUT);
    };
    tokio::time::timeout(SCENARIO_TIMEOUT, scenario)
        .await
        .expect("bounded");
}

/// The tests above run the debug build, which unwinds. The Lambda bootstraps are built with
/// `[profile.release]`: with `panic = "abort"` there, lambda_runtime's `catch_unwind` catches
/// nothing and a malformed event aborts the process (the whole execution environment).
#[test]
fn bootstrap_release_profile_unwinds() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut in_release = false;
    let mut panic_strategy = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_release = line == "[profile.release]";
            continue;
        }
        if in_release
            && let Some((key, value)) = line.split_once('=')
            && key.trim() == "panic"
        {
            panic_strategy = Some(value.trim().trim_matches('"').to_string());
        }
    }
    // Unset means "unwind", the default.
    assert_ne!(
        panic_strategy.as_deref(),
        Some("abort"),
        "{}",
        manifest.display()
    );
}

/// The first scenario with a release bootstrap, built with `[profile.release]` as the deployed
/// one: `cargo build --release -p trigger` first (or set `BOOTSTRAP_BINARY` to a bootstrap built
/// for this machine), then
/// `cargo nextest run -p local-stack --run-ignored only -E 'test(bootstrap_release_build)'`.
/// With `panic = "abort"` the malformed event ends as `Outcome::Exited` (SIGABRT).
#[tokio::test]
#[ignore = "needs a release build of the trigger (minutes of fat LTO)"]
async fn bootstrap_release_build_survives_a_malformed_event() {
    let binary = std::env::var_os("BOOTSTRAP_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("release/trigger"));
    assert!(
        binary.is_file(),
        "no bootstrap at {}: run `cargo build --release -p trigger`",
        binary.display()
    );
    let (public_pem, _) = key_pair();
    let mut function = FunctionProcess::start_binary(&binary, "trigger", &trigger_env(&public_pem))
        .await
        .expect("the trigger starts");
    let scenario = async {
        survives_bad_base64(&mut function, "%%% this is not base64 %%%").await;
    };
    tokio::time::timeout(SCENARIO_TIMEOUT, scenario)
        .await
        .expect("bounded");
}

/// The worker bootstrap under Lambda's JSON log format (the template's `LogFormat: JSON`, set by
/// the emulator as Lambda sets it): a job's lines are JSON objects (no ANSI colour codes) that
/// carry the invocation's `requestId` (`lambda_runtime`'s span `Lambda runtime invoke`) and the
/// job's `enrichment_id`. DynamoDB does not answer, so the job fails and is reported.
#[tokio::test]
async fn worker_logs_json_lines_with_the_request_and_enrichment_ids() {
    tokio::time::timeout(
        BUILD_TIMEOUT,
        local_stack::runtime_api::function_binary("worker"),
    )
    .await
    .expect("the worker builds in time")
    .expect("the worker builds");
    let mut worker = FunctionProcess::start(
        "worker",
        &[
            ("TABLE_NAME", "x"),
            ("EMAIL_PROVIDERS", ""),
            ("PHONE_PROVIDERS", ""),
            ("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:1"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "local"),
            ("AWS_SECRET_ACCESS_KEY", "local"),
        ],
    )
    .await
    .expect("the worker starts");
    let enrichment_id = Uuid::new_v4().to_string();
    let job = json!({"enrichmentId": enrichment_id, "orgId": "org_logs",
        "personId": Uuid::new_v4(), "field": "emails"});
    let event = json!({"Records": [{"messageId": "m-1", "receiptHandle": "r-1",
        "body": job.to_string(), "attributes": {"ApproximateReceiveCount": "1"},
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:enrichment-jobs-dev"}]});
    let invocation = tokio::time::timeout(
        SCENARIO_TIMEOUT,
        worker.invoke(&event, Duration::from_secs(60)),
    )
    .await
    .expect("bounded");
    let answer = invocation.response_json().unwrap_or_else(|| {
        panic!(
            "{:?}; worker output:\n{}",
            invocation.outcome,
            worker.logs()
        )
    });
    assert_eq!(answer["batchItemFailures"][0]["itemIdentifier"], "m-1");

    let logs = worker.logs();
    assert!(!logs.contains('\u{1b}'), "ANSI escape in:\n{logs}");
    let lines: Vec<Value> = logs
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .filter(|line: &Value| line.get("spans").is_some())
        .collect();
    let failed = lines
        .iter()
        .find(|line| line["fields"]["message"] == "job failed")
        .unwrap_or_else(|| panic!("no `job failed` line in:\n{logs}"));
    assert_eq!(failed["fields"]["enrichment_id"], enrichment_id.as_str());
    for line in &lines {
        assert_eq!(
            line["spans"][0]["requestId"],
            invocation.request_id.as_str(),
            "{line}"
        );
    }
    let in_job: Vec<&Value> = lines
        .iter()
        .filter(|line| line["span"]["name"] == "job")
        .collect();
    for line in &in_job {
        assert_eq!(
            line["span"]["enrichment_id"],
            enrichment_id.as_str(),
            "{line}"
        );
    }
}
