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
