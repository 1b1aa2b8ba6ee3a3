//! The metrics of a run, read from the functions' logs as CloudWatch Logs would read them: the
//! real trigger and worker bootstraps (under the Lambda Runtime API emulator, with Lambda's JSON
//! log format) against the local stack's DynamoDB, SQS and provider simulator. One enrichment
//! that Hunter finds: each embedded metric format line is a whole line of its own, a valid EMF
//! document, and its values are those of the run.

use std::time::Duration;

use enrichment::domain::{Field, Status};
use local_stack::Stack;
use local_stack::runtime_api::{BUILD_TIMEOUT, FunctionProcess, function_binary};
use serde_json::{Value, json};

mod helpers;
use helpers::{api_event, http_answer, known_person, ledger, private_options};

const ORG: &str = "org_metrics";

/// Starts `function` with the stack's table, queue and JWKS, and `more` settings.
async fn start(function: &str, stack: &Stack, more: &[(&str, &str)]) -> FunctionProcess {
    tokio::time::timeout(BUILD_TIMEOUT, function_binary(function))
        .await
        .expect("built in time")
        .expect("builds");
    let jwks = format!("{}/.well-known/jwks.json", stack.info.gateway_url);
    let mut env = vec![
        ("TABLE_NAME", stack.info.table_name.as_str()),
        ("QUEUE_URL", stack.info.queue_url.as_str()),
        (
            "AWS_ENDPOINT_URL_DYNAMODB",
            stack.info.dynamodb_url.as_str(),
        ),
        ("AWS_ENDPOINT_URL_SQS", stack.info.sqs_url.as_str()),
        ("AUTH_JWKS_URL", jwks.as_str()),
        ("AUTH_ISSUER", stack.info.gateway_url.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "local"),
        ("AWS_SECRET_ACCESS_KEY", "local"),
    ];
    env.extend_from_slice(more);
    FunctionProcess::start(function, &env)
        .await
        .expect("starts")
}

/// The EMF documents of `logs`, each checked against the specification's structure: a JSON
/// object alone on its line, `_aws.Timestamp` a number, one directive in namespace
/// `Enrichment` whose dimension names are string members and whose metric names are number
/// members of the root object.
fn emf_lines(logs: &str) -> Vec<Value> {
    let mut found = Vec::new();
    for line in logs.lines() {
        if !line.contains("CloudWatchMetrics") {
            continue;
        }
        let document: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a whole JSON line ({e}): {line}\nin:\n{logs}"));
        let aws = &document["_aws"];
        assert!(aws["Timestamp"].is_i64(), "{line}");
        let directives = aws["CloudWatchMetrics"].as_array().expect("directives");
        assert_eq!(directives.len(), 1, "{line}");
        let directive = &directives[0];
        assert_eq!(directive["Namespace"], "Enrichment", "{line}");
        for set in directive["Dimensions"].as_array().expect("dimension sets") {
            for name in set.as_array().expect("a dimension set") {
                let name = name.as_str().expect("a dimension name");
                assert!(document[name].is_string(), "dimension {name}: {line}");
            }
        }
        let metrics = directive["Metrics"].as_array().expect("metrics");
        assert!(!metrics.is_empty(), "{line}");
        for metric in metrics {
            let name = metric["Name"].as_str().expect("a metric name");
            assert!(metric["Unit"].is_string(), "{line}");
            assert!(document[name].is_number(), "metric {name}: {line}");
        }
        found.push(document);
    }
    found
}

/// The sum of metric `name` over the documents of dimension `dimension` = `value`.
fn total(documents: &[Value], (dimension, value): (&str, &str), name: &str) -> u64 {
    documents
        .iter()
        .filter(|d| d[dimension] == value)
        .filter_map(|d| d[name].as_u64())
        .sum()
}

#[tokio::test]
async fn a_found_enrichment_writes_its_metrics_as_emf_lines() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let stack = Stack::start(private_options())
            .await
            .expect("local stack starts");
        let person = known_person();
        stack
            .store
            .create_people(ORG, std::slice::from_ref(&person))
            .await
            .unwrap();
        stack.store.grant_credits(ORG, 100).await.unwrap();
        let hunter = format!("{}/hunter", stack.simulator_url);
        let mut trigger = start("trigger", &stack, &[]).await;
        let mut worker = start(
            "worker",
            &stack,
            &[
                ("EMAIL_PROVIDERS", "hunter"),
                ("PHONE_PROVIDERS", ""),
                ("HUNTER_API_KEY", "local"),
                ("HUNTER_BASE_URL", hunter.as_str()),
            ],
        )
        .await;
        let token = stack
            .token("user_a", ORG, Duration::from_secs(300))
            .unwrap();

        let event = api_event("POST", &person.id.to_string(), "field=emails", Some(&token));
        let invocation = trigger.invoke(&event, Duration::from_secs(10)).await;
        let (status, posted) = http_answer(&invocation, &trigger);
        assert!(status == 200 || status == 202, "{status} {posted}");
        assert_eq!(posted["status"], "pending", "{posted}");

        let job = json!({"enrichmentId": posted["id"], "orgId": ORG,
            "personId": person.id, "field": "emails"});
        let event = json!({"Records": [{
            "messageId": "m-1", "receiptHandle": "r-1", "body": job.to_string(),
            "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
            "eventSource": "aws:sqs", "awsRegion": "us-east-1",
            "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:enrichment-jobs-local"
        }]});
        let invocation = worker.invoke(&event, Duration::from_secs(60)).await;
        let answer = invocation.response_json().unwrap_or_else(|| {
            panic!(
                "{:?}; worker output:\n{}",
                invocation.outcome,
                worker.logs()
            )
        });
        assert_eq!(answer, json!({"batchItemFailures": []}));
        let stored = stack
            .store
            .get_enrichment(ORG, person.id, Field::Emails)
            .await
            .unwrap()
            .unwrap()
            .enrichment;
        assert_eq!(stored.status, Status::Finished);
        assert_eq!(stored.data_found, Some(true));
        let (balance, amounts) = ledger(&stack.store, ORG, 100).await;
        assert_eq!(amounts.len(), 1, "{amounts:?}");
        let cost = amounts[0].unsigned_abs();
        assert_eq!(balance, 100 - amounts[0].abs());

        let trigger_logs = trigger.logs();
        let started = emf_lines(&trigger_logs);
        eprintln!("trigger metrics: {started:?}");
        let emails = ("Field", "emails");
        assert_eq!(
            total(&started, emails, "EnrichmentsStarted"),
            1,
            "{trigger_logs}"
        );
        assert_eq!(
            total(&started, emails, "CreditsConsumed"),
            cost,
            "{trigger_logs}"
        );

        let worker_logs = worker.logs();
        let ran = emf_lines(&worker_logs);
        eprintln!("worker metrics: {ran:?}");
        let hunter = ("Provider", "hunter");
        assert!(total(&ran, hunter, "Calls") >= 1, "{worker_logs}");
        assert_eq!(total(&ran, hunter, "Hits"), 1, "{worker_logs}");
        assert_eq!(total(&ran, hunter, "Errors"), 0, "{worker_logs}");
        assert_eq!(total(&ran, hunter, "RateLimited"), 0, "{worker_logs}");
        let call = ran.iter().find(|d| d["Provider"] == "hunter").unwrap();
        assert_eq!(
            call["_aws"]["CloudWatchMetrics"][0]["Metrics"],
            json!([
                {"Name": "Calls", "Unit": "Count"},
                {"Name": "Hits", "Unit": "Count"},
                {"Name": "Misses", "Unit": "Count"},
                {"Name": "Errors", "Unit": "Count"},
                {"Name": "RateLimited", "Unit": "Count"},
                {"Name": "Latency", "Unit": "Milliseconds"},
            ])
        );
        assert_eq!(total(&ran, emails, "Found"), 1, "{worker_logs}");
        for other in [
            "NotFound",
            "Failed",
            "TimedOut",
            "Cancelled",
            "CreditsRefunded",
            "CacheHits",
        ] {
            assert_eq!(total(&ran, emails, other), 0, "{other}: {worker_logs}");
        }

        // The tracing lines are untouched: JSON objects of their own, never an EMF document.
        for line in worker_logs.lines().filter(|l| l.contains("\"spans\"")) {
            let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert!(value.get("_aws").is_none(), "{line}");
        }
        stack.shutdown().await;
    })
    .await
    .expect("bounded");
}
