//! Faults of the services the API functions depend on, with the real bootstraps
//! (`target/debug/trigger`, `status`) under the Lambda Runtime API emulator and the template's
//! 10 s timeout: a TCP black hole (accepts connections, never answers) in place of SQS or
//! DynamoDB. Each test asserts what the client sees, within the timeout, and the ledger.

use std::time::{Duration, Instant};

use enrichment::budget::API_FUNCTION_TIMEOUT;
use enrichment::domain::{Field, Person, Status};
use enrichment::enrichment::ENQUEUE_FAILED_MESSAGE;
use local_stack::Stack;
use local_stack::runtime_api::{BUILD_TIMEOUT, FunctionProcess, function_binary};
use serde_json::Value;
use tokio::net::TcpListener;

mod helpers;
use helpers::{api_event, http_answer, known_person, ledger, private_options};

const ORG: &str = "org_faults";

/// A loopback address that accepts TCP connections and never answers on them, for as long as
/// the returned task runs (it stops with the test's runtime).
async fn black_hole() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    format!("http://{address}")
}

async fn stack() -> Stack {
    Stack::start(private_options())
        .await
        .expect("local stack starts")
}

/// Starts `function` with the stack's table, JWKS and issuer, and `endpoints` (the SDK's
/// `AWS_ENDPOINT_URL_DYNAMODB` and `AWS_ENDPOINT_URL_SQS`, and `QUEUE_URL`).
async fn start(
    function: &str,
    stack: &Stack,
    dynamodb: &str,
    sqs: &str,
    queue_url: &str,
) -> FunctionProcess {
    tokio::time::timeout(BUILD_TIMEOUT, function_binary(function))
        .await
        .expect("built in time")
        .expect("builds");
    let jwks = format!("{}/.well-known/jwks.json", stack.info.gateway_url);
    FunctionProcess::start(
        function,
        &[
            ("TABLE_NAME", stack.info.table_name.as_str()),
            ("QUEUE_URL", queue_url),
            ("AWS_ENDPOINT_URL_DYNAMODB", dynamodb),
            ("AWS_ENDPOINT_URL_SQS", sqs),
            ("AUTH_JWKS_URL", jwks.as_str()),
            ("AUTH_ISSUER", stack.info.gateway_url.as_str()),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "local"),
            ("AWS_SECRET_ACCESS_KEY", "local"),
        ],
    )
    .await
    .expect("starts")
}

async fn person_with_credits(stack: &Stack, credits: i64) -> Person {
    let person = known_person();
    stack
        .store
        .create_people(ORG, std::slice::from_ref(&person))
        .await
        .unwrap();
    stack.store.grant_credits(ORG, credits).await.unwrap();
    person
}

/// An SQS that accepts the connection and never answers, after the enrichment was created and
/// charged: the trigger gives the queue what time it can, then fails and refunds the enrichment
/// and answers `503 UNAVAILABLE`, all before Lambda's 10 s timeout.
#[tokio::test]
async fn a_queue_that_never_answers_is_refunded_and_answered_within_the_timeout() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let stack = stack().await;
        let person = person_with_credits(&stack, 100).await;
        let hole = black_hole().await;
        let mut trigger = start(
            "trigger",
            &stack,
            &stack.info.dynamodb_url,
            &hole,
            &format!("{hole}/000000000000/enrichment-jobs-local"),
        )
        .await;
        let token = stack
            .token("user_a", ORG, Duration::from_secs(300))
            .unwrap();
        let before = ledger(&stack.store, ORG, 100).await;

        let started = Instant::now();
        let event = api_event("POST", &person.id.to_string(), "field=emails", Some(&token));
        let invocation = trigger.invoke(&event, API_FUNCTION_TIMEOUT).await;
        let (status, body) = http_answer(&invocation, &trigger);
        let took = started.elapsed();
        eprintln!(
            "SQS black hole: POST answered {status} {body} in {took:?}; ledger before {before:?}"
        );
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "UNAVAILABLE");
        assert!(
            invocation.elapsed < API_FUNCTION_TIMEOUT,
            "{:?}",
            invocation.elapsed
        );

        let stored = stack
            .store
            .get_enrichment(ORG, person.id, Field::Emails)
            .await
            .unwrap()
            .unwrap()
            .enrichment;
        assert_eq!(stored.status, Status::Failed);
        assert_eq!(stored.error.as_deref(), Some(ENQUEUE_FAILED_MESSAGE));
        let after = ledger(&stack.store, ORG, 100).await;
        eprintln!("SQS black hole: ledger after {after:?}");
        assert_eq!(after, (100, vec![-5, 5]), "charged, then refunded once");
        assert!(trigger.is_alive());
        stack.shutdown().await;
    })
    .await
    .expect("bounded");
}

/// A DynamoDB that accepts the connection and never answers: POST and GET get `503
/// UNAVAILABLE` in the envelope before the 10 s timeout (not API Gateway's bare error), and
/// nothing is charged.
#[tokio::test]
async fn a_table_that_never_answers_is_503_within_the_timeout_and_charges_nothing() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let stack = stack().await;
        let person = person_with_credits(&stack, 100).await;
        let hole = black_hole().await;
        let token = stack
            .token("user_a", ORG, Duration::from_secs(300))
            .unwrap();
        let queue_url = stack.info.queue_url.clone();
        let mut trigger = start("trigger", &stack, &hole, &stack.info.sqs_url, &queue_url).await;
        let mut status_fn = start("status", &stack, &hole, &stack.info.sqs_url, &queue_url).await;

        for (name, function, method) in [
            ("trigger", &mut trigger, "POST"),
            ("status", &mut status_fn, "GET"),
        ] {
            let event = api_event(method, &person.id.to_string(), "field=emails", Some(&token));
            let invocation = function.invoke(&event, API_FUNCTION_TIMEOUT).await;
            let (status, body): (u64, Value) = http_answer(&invocation, function);
            eprintln!(
                "DynamoDB black hole: {name} {method} answered {status} {body} in {:?}",
                invocation.elapsed
            );
            assert_eq!(status, 503, "{name}: {body}");
            assert_eq!(body["error"]["code"], "UNAVAILABLE");
            assert!(invocation.elapsed < API_FUNCTION_TIMEOUT);
        }
        assert_eq!(ledger(&stack.store, ORG, 100).await, (100, vec![]));
        assert!(
            stack
                .store
                .get_enrichment(ORG, person.id, Field::Emails)
                .await
                .unwrap()
                .is_none()
        );
        stack.shutdown().await;
    })
    .await
    .expect("bounded");
}

/// The worker's `MemorySize` in `template.yaml` (MB).
fn worker_memory_size_mb() -> u64 {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml");
    let template: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    template["Resources"]["WorkerFunction"]["Properties"]["MemorySize"]
        .as_u64()
        .expect("the worker's MemorySize")
}

/// A provider that answers `200` with an endless body (chunked, no `Content-Length`), for as
/// long as the client reads; returns its base URL and how many bytes it wrote.
async fn endless_body() -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = socket.read(&mut head).await;
                let header = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                if socket.write_all(header.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "a".repeat(64 * 1024));
                // At most 256 MiB, and only while the client reads.
                for _ in 0..4096 {
                    if socket.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                    counter.fetch_add(64 * 1024, Ordering::Relaxed);
                }
            });
        }
    });
    (format!("http://{address}"), written)
}

/// The worker's memory is what the emulators cannot check: the real worker bootstrap, given a
/// job whose only provider answers an endless body, stops reading at the 1 MiB cap, ends the
/// enrichment `failed` and refunded, and its peak resident memory stays within the function's
/// `MemorySize` in `template.yaml` (128 MB).
#[tokio::test]
async fn a_provider_body_without_end_leaves_the_worker_within_its_memory() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let stack = stack().await;
        let person = person_with_credits(&stack, 100).await;
        let (provider, written) = endless_body().await;
        tokio::time::timeout(BUILD_TIMEOUT, function_binary("worker"))
            .await
            .expect("built in time")
            .expect("builds");
        let mut worker = FunctionProcess::start(
            "worker",
            &[
                ("TABLE_NAME", stack.info.table_name.as_str()),
                ("QUEUE_URL", stack.info.queue_url.as_str()),
                ("AWS_ENDPOINT_URL_DYNAMODB", stack.info.dynamodb_url.as_str()),
                ("AWS_ENDPOINT_URL_SQS", stack.info.sqs_url.as_str()),
                ("EMAIL_PROVIDERS", "hunter"),
                ("PHONE_PROVIDERS", ""),
                ("HUNTER_API_KEY", "local"),
                ("HUNTER_BASE_URL", provider.as_str()),
                ("AWS_REGION", "us-east-1"),
                ("AWS_ACCESS_KEY_ID", "local"),
                ("AWS_SECRET_ACCESS_KEY", "local"),
            ],
        )
        .await
        .expect("the worker starts");
        let token = stack.token("user_a", ORG, Duration::from_secs(300)).unwrap();
        let posted: Value = reqwest::Client::new()
            .post(format!(
                "{}/api/v1/operations/enrichment/{}?field=emails",
                stack.info.gateway_url, person.id
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let job = serde_json::json!({
            "enrichmentId": posted["id"], "orgId": ORG, "personId": person.id, "field": "emails"
        });
        let event = serde_json::json!({"Records": [{
            "messageId": "m-1", "receiptHandle": "r-1", "body": job.to_string(),
            "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
            "eventSource": "aws:sqs", "awsRegion": "us-east-1",
            "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:enrichment-jobs-local"
        }]});
        let invocation = worker.invoke(&event, Duration::from_secs(60)).await;
        let answer = invocation.response_json().unwrap_or_else(|| {
            panic!("{:?}; worker output:\n{}", invocation.outcome, worker.logs())
        });
        assert_eq!(answer, serde_json::json!({"batchItemFailures": []}));
        let peak_kib = worker.peak_rss_kib().expect("the worker still runs");
        let sent = written.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!(
            "endless provider body: worker peak RSS {} KiB, provider wrote {} KiB, answered in {:?}",
            peak_kib,
            sent / 1024,
            invocation.elapsed
        );
        let memory_size_mb = worker_memory_size_mb();
        assert!(peak_kib * 1024 < memory_size_mb * 1_000_000, "{peak_kib} KiB");
        assert!(sent < 64 * 1024 * 1024, "read on past the cap: {sent} bytes");

        let stored = stack
            .store
            .get_enrichment(ORG, person.id, Field::Emails)
            .await
            .unwrap()
            .unwrap()
            .enrichment;
        assert_eq!(stored.status, Status::Failed);
        assert!(
            stored
                .error
                .as_deref()
                .is_some_and(|e| e.contains("hunter") && e.contains("larger than")),
            "{:?}",
            stored.error
        );
        assert_eq!(
            ledger(&stack.store, ORG, 100).await,
            (100, vec![-5, 5])
        );
        stack.shutdown().await;
    })
    .await
    .expect("bounded");
}
