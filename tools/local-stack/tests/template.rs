//! The local stack creates the table and queues that `template.yaml` declares: same names (with
//! `Stage=local`), keys, TTL attribute and redrive policy. The template is parsed, not copied.

use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use local_stack::{Options, Stack};
use serde_yaml::Value;

fn template() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The properties of a resource of the template.
fn properties<'a>(template: &'a Value, resource: &str) -> &'a Value {
    &template["Resources"][resource]["Properties"]
}

/// A `!Sub` string with `${Stage}` set to `local`.
fn sub_stage(value: &Value) -> String {
    let Value::Tagged(tagged) = value else {
        panic!("expected !Sub, got {value:?}")
    };
    assert_eq!(tagged.tag, "!Sub");
    tagged.value.as_str().unwrap().replace("${Stage}", "local")
}

fn pairs(list: &Value, key: &str, value: &str) -> Vec<(String, String)> {
    let mut pairs: Vec<_> = list
        .as_sequence()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item[key].as_str().unwrap().to_string(),
                item[value].as_str().unwrap().to_string(),
            )
        })
        .collect();
    pairs.sort();
    pairs
}

#[tokio::test]
async fn local_table_and_queues_match_the_template() {
    let template = template();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut options = Options::for_repo(&root);
    options.state_dir =
        std::env::temp_dir().join(format!("enrichment-template-{}", std::process::id()));
    options.persist = false;
    options.port = 0;
    options.local_worker = false;
    let stack = Stack::start(options).await.unwrap();

    let table = properties(&template, "EnrichmentTable");
    let name = sub_stage(&table["TableName"]);
    assert_eq!(name, stack.info.table_name);
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        local_stack::dynamodb_config(&stack.info.dynamodb_url).build(),
    );
    let described = dynamodb
        .describe_table()
        .table_name(&name)
        .send()
        .await
        .unwrap();
    let described = described.table().unwrap();
    let mut keys: Vec<_> = described
        .key_schema()
        .iter()
        .map(|k| {
            (
                k.attribute_name().to_string(),
                k.key_type().as_str().to_string(),
            )
        })
        .collect();
    keys.sort();
    assert_eq!(keys, pairs(&table["KeySchema"], "AttributeName", "KeyType"));
    let mut attributes: Vec<_> = described
        .attribute_definitions()
        .iter()
        .map(|a| {
            (
                a.attribute_name().to_string(),
                a.attribute_type().as_str().to_string(),
            )
        })
        .collect();
    attributes.sort();
    assert_eq!(
        attributes,
        pairs(
            &table["AttributeDefinitions"],
            "AttributeName",
            "AttributeType"
        )
    );
    let ttl = dynamodb
        .describe_time_to_live()
        .table_name(&name)
        .send()
        .await
        .unwrap();
    let ttl = ttl.time_to_live_description().unwrap();
    assert_eq!(
        ttl.attribute_name(),
        table["TimeToLiveSpecification"]["AttributeName"].as_str()
    );

    let queue = properties(&template, "JobsQueue");
    let dlq = properties(&template, "JobsDeadLetterQueue");
    assert!(
        stack
            .info
            .queue_url
            .ends_with(&format!("/{}", sub_stage(&queue["QueueName"])))
    );
    assert!(
        stack
            .info
            .dlq_url
            .ends_with(&format!("/{}", sub_stage(&dlq["QueueName"])))
    );
    let attributes = stack
        .sqs
        .get_queue_attributes()
        .queue_url(&stack.info.queue_url)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap();
    let redrive: serde_json::Value =
        serde_json::from_str(&attributes[&QueueAttributeName::RedrivePolicy]).unwrap();
    assert_eq!(
        redrive["maxReceiveCount"].as_u64(),
        queue["RedrivePolicy"]["maxReceiveCount"].as_u64()
    );
    assert!(
        redrive["deadLetterTargetArn"]
            .as_str()
            .unwrap()
            .ends_with(&sub_stage(&dlq["QueueName"]))
    );
    tokio::time::timeout(Duration::from_secs(15), stack.shutdown())
        .await
        .unwrap();
}

/// The template's timeouts are the ones the code budgets with (`enrichment::budget`), and they
/// fit each other: the API functions answer before Lambda kills them, the worker writes its
/// outcome within its timeout, the queue's visibility timeout is six times the worker's (AWS
/// docs, "Using Lambda with Amazon SQS"), and a dead worker's lease lapses long before the
/// maximum age, so its job is resumed rather than timed out.
#[test]
fn template_timeouts_are_the_budgets_the_code_uses() {
    use enrichment::budget;
    let template = template();
    let number = |value: &Value| {
        value
            .as_u64()
            .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or_else(|| panic!("not a number: {value:?}"))
    };
    let timeout =
        |function: &str| Duration::from_secs(number(&properties(&template, function)["Timeout"]));
    assert_eq!(timeout("TriggerFunction"), budget::API_FUNCTION_TIMEOUT);
    assert_eq!(timeout("StatusFunction"), budget::API_FUNCTION_TIMEOUT);
    assert_eq!(timeout("WorkerFunction"), budget::WORKER_FUNCTION_TIMEOUT);
    let visibility = number(&properties(&template, "JobsQueue")["VisibilityTimeout"]);
    assert_eq!(
        Duration::from_secs(visibility),
        budget::JOBS_VISIBILITY_TIMEOUT
    );
    assert!(visibility >= 6 * budget::WORKER_FUNCTION_TIMEOUT.as_secs());

    let max_age = &template["Parameters"]["EnrichmentMaxAgeSeconds"];
    assert_eq!(
        Duration::from_secs(number(&max_age["Default"])),
        budget::DEFAULT_MAX_AGE
    );
    // Every allowed maximum age outlives a claim and ends before the worker's deadline, with
    // the time to write the outcome.
    assert!(Duration::from_secs(number(&max_age["MinValue"])) > budget::INITIAL_CLAIM_LEASE);
    assert!(
        Duration::from_secs(number(&max_age["MaxValue"])) + budget::WRITE_MARGIN
            <= budget::WORKER_FUNCTION_TIMEOUT
    );
    // The worker's provider budget: one provider call's lease is a fraction of the maximum age.
    let provider_timeout = number(
        &properties(&template, "WorkerFunction")["Environment"]["Variables"]["PROVIDER_TIMEOUT_SECONDS"],
    );
    let call = enrichment::providers::cascade::Budget {
        timeout: Duration::from_secs(provider_timeout),
        retries: enrichment::providers::cascade::DEFAULT_RETRIES,
    };
    assert!(budget::lease_for(call.span()) < budget::DEFAULT_MAX_AGE / 4);
    // The state machine's task outlives the worker's own timeout.
    let machine =
        &properties(&template, "CascadeStateMachine")["Definition"]["States"]["RunCascade"];
    assert!(number(&machine["TimeoutSeconds"]) >= budget::WORKER_FUNCTION_TIMEOUT.as_secs());
}
