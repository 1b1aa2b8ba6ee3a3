//! The local stack is what `template.yaml` declares: the same table and queues (names with
//! `Stage=local`, keys, TTL attribute, redrive policy), the same routes (every route of the HTTP
//! API reaches a handler of the local gateway, and every route the gateway serves is in the
//! template), the same worker concurrency per queue; and the template fits the code: its
//! timeouts are the code's budgets, its state machine holds a batch's jobs until the
//! `notBefore` the code writes, every function crate is deployed (built, logged, configured)
//! alike, the settings the code reads reach the function that acts on them, and the webhook
//! pipeline's stream filter, event sources and queues are the ones the code relies on. The
//! template is parsed, not copied.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use enrichment::config::{Config, Vars};
use enrichment::domain::{Field, Job};
use enrichment::http::{
    BATCH_QUERY_ROUTE, BATCH_ROUTE, BULK_ROUTE, CANCEL_ROUTE, CREDITS_PREFIX, PEOPLE_PREFIX, ROUTE,
    WEBHOOK_SETTINGS_PATH,
};
use enrichment::queue::{JobQueue, StepFunctionsJobQueue};
use local_stack::{Options, Stack};
use serde_yaml::Value;
use uuid::Uuid;

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
    // The outbox relay reads the new images of the table's stream.
    let stream = described
        .stream_specification()
        .expect("the local table has a stream");
    assert!(stream.stream_enabled());
    assert_eq!(
        stream.stream_view_type().map(|v| v.as_str()),
        table["StreamSpecification"]["StreamViewType"].as_str()
    );

    let dlq = properties(&template, "JobsDeadLetterQueue");
    assert!(
        stack
            .info
            .dlq_url
            .ends_with(&format!("/{}", sub_stage(&dlq["QueueName"])))
    );
    // The DLQ takes the messages of exactly these queues (its redrive allow policy).
    let allowed: BTreeSet<String> = dlq["RedriveAllowPolicy"]["sourceQueueArns"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|arn| sub_stage(arn).rsplit(':').next().unwrap().to_string())
        .collect();
    let mut redriven = BTreeSet::new();
    for (resource, url) in [
        ("JobsQueue", &stack.info.queue_url),
        ("BulkJobsQueue", &stack.info.bulk_queue_url),
    ] {
        let queue = properties(&template, resource);
        let name = sub_stage(&queue["QueueName"]);
        assert!(url.ends_with(&format!("/{name}")), "{resource}: {url}");
        let attributes = stack
            .sqs
            .get_queue_attributes()
            .queue_url(url)
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
            queue["RedrivePolicy"]["maxReceiveCount"].as_u64(),
            "{resource}"
        );
        assert!(
            redrive["deadLetterTargetArn"]
                .as_str()
                .unwrap()
                .ends_with(&sub_stage(&dlq["QueueName"])),
            "{resource}"
        );
        redriven.insert(name);
    }
    assert_eq!(allowed, redriven);

    // The webhook queue and its own dead-letter queue, redriven after as many receives.
    let webhook_dlq = properties(&template, "WebhookDeadLetterQueue");
    let webhook_queue = properties(&template, "WebhookQueue");
    assert!(
        stack
            .info
            .webhook_dlq_url
            .ends_with(&format!("/{}", sub_stage(&webhook_dlq["QueueName"])))
    );
    assert!(
        stack
            .info
            .webhook_queue_url
            .ends_with(&format!("/{}", sub_stage(&webhook_queue["QueueName"])))
    );
    let attributes = stack
        .sqs
        .get_queue_attributes()
        .queue_url(&stack.info.webhook_queue_url)
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
        webhook_queue["RedrivePolicy"]["maxReceiveCount"].as_u64()
    );
    assert!(
        redrive["deadLetterTargetArn"]
            .as_str()
            .unwrap()
            .ends_with(&sub_stage(&webhook_dlq["QueueName"]))
    );

    gateway_serves_the_template_routes(&template, &stack.info.gateway_url).await;
    tokio::time::timeout(Duration::from_secs(15), stack.shutdown())
        .await
        .unwrap();
}

/// The HTTP API's routes: `(method, path)` -> the function's logical id.
fn template_routes(template: &Value) -> BTreeMap<(String, String), String> {
    let mut routes = BTreeMap::new();
    for (id, resource) in template["Resources"].as_mapping().unwrap() {
        if resource["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let Some(events) = resource["Properties"]["Events"].as_mapping() else {
            continue;
        };
        for event in events.values() {
            if event["Type"].as_str() != Some("HttpApi") {
                continue;
            }
            let method = event["Properties"]["Method"].as_str().unwrap();
            let path = event["Properties"]["Path"].as_str().unwrap();
            let previous = routes.insert(
                (method.to_uppercase(), path.to_string()),
                id.as_str().unwrap().to_string(),
            );
            assert!(previous.is_none(), "{method} {path} declared twice");
        }
    }
    routes
}

/// Every route of the template reaches a handler of the local gateway (no `Route not found`;
/// without a token, the handler answers 401 or rejects the input); and the template's routes
/// are exactly the paths the gateway routes, to the same functions. The gateway hands every
/// method of the batch, credits, cancel and webhook settings routes to their handlers, which
/// answer 405 themselves: in the template they are `ANY`.
async fn gateway_serves_the_template_routes(template: &Value, gateway_url: &str) {
    let routes = template_routes(template);
    let client = reqwest::Client::new();
    let routed = |status: u16, body: &serde_json::Value| {
        !(status == 404 && body["error"]["message"].as_str() == Some("Route not found"))
    };
    // What an unknown route gets, so that the probes below can tell one.
    let unknown = client
        .post(format!("{gateway_url}/api/v1/operations/no-such-route"))
        .send()
        .await
        .unwrap();
    let status = unknown.status().as_u16();
    assert!(!routed(status, &unknown.json().await.unwrap()));
    for (method, path) in routes.keys() {
        let url = format!(
            "{gateway_url}{}",
            path.replace("{personId}", &Uuid::new_v4().to_string())
        );
        let methods = if method == "ANY" {
            vec!["GET", "POST", "DELETE"]
        } else {
            vec![method.as_str()]
        };
        for probe in methods {
            let response = client
                .request(probe.parse().unwrap(), &url)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            assert!(
                routed(status, &body),
                "{probe} {path} (template route {method}): the local gateway has no such route"
            );
        }
    }
    let person = format!("{PEOPLE_PREFIX}/{{personId}}");
    let expected: BTreeMap<(String, String), String> = [
        ("POST", ROUTE.to_string(), "TriggerFunction"),
        ("GET", ROUTE.to_string(), "StatusFunction"),
        ("ANY", BATCH_QUERY_ROUTE.to_string(), "BatchFunction"),
        ("ANY", BATCH_ROUTE.to_string(), "BatchFunction"),
        ("ANY", BULK_ROUTE.to_string(), "BatchFunction"),
        ("ANY", CANCEL_ROUTE.to_string(), "CancelFunction"),
        ("POST", PEOPLE_PREFIX.to_string(), "PeopleFunction"),
        ("POST", format!("{PEOPLE_PREFIX}/batch"), "PeopleFunction"),
        ("GET", PEOPLE_PREFIX.to_string(), "PeopleFunction"),
        ("GET", person.clone(), "PeopleFunction"),
        ("DELETE", person, "PeopleFunction"),
        (
            "ANY",
            format!("{CREDITS_PREFIX}/balance"),
            "CreditsFunction",
        ),
        (
            "ANY",
            format!("{CREDITS_PREFIX}/history"),
            "CreditsFunction",
        ),
        (
            "ANY",
            WEBHOOK_SETTINGS_PATH.to_string(),
            "WebhookSettingsFunction",
        ),
        (
            "ANY",
            format!("{WEBHOOK_SETTINGS_PATH}/deliveries"),
            "WebhookSettingsFunction",
        ),
    ]
    .into_iter()
    .map(|(method, path, function)| ((method.to_string(), path), function.to_string()))
    .collect();
    assert_eq!(routes, expected);
}

/// The worker's event sources in the template and those of the local stack: one per queue,
/// each a batch of one with partial batch responses, the bulk one with its own maximum
/// concurrency (at least 2, Lambda's minimum for an SQS event source), the local stack running
/// as many jobs at once per queue as the template's default.
#[test]
fn worker_event_sources_match_the_local_ones() {
    let template = template();
    let defaults = Options::for_repo(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."));
    let default_of = |parameter: &str| {
        template["Parameters"][parameter]["Default"]
            .as_u64()
            .unwrap_or_else(|| panic!("{parameter} has no default"))
    };
    for (mapping, queue, parameter, concurrency) in [
        (
            "WorkerJobsEventSource",
            "JobsQueue",
            "WorkerMaxConcurrency",
            defaults.worker_concurrency,
        ),
        (
            "WorkerBulkJobsEventSource",
            "BulkJobsQueue",
            "WorkerBulkMaxConcurrency",
            defaults.bulk_concurrency,
        ),
    ] {
        let resource = &template["Resources"][mapping];
        assert_eq!(resource["Condition"].as_str(), Some("UseSqsWorker"));
        let properties = &resource["Properties"];
        assert_eq!(reference(&properties["EventSourceArn"]), queue);
        assert_eq!(reference(&properties["FunctionName"]), "WorkerFunction");
        assert_eq!(properties["BatchSize"].as_u64(), Some(1));
        assert_eq!(
            properties["FunctionResponseTypes"][0].as_str(),
            Some("ReportBatchItemFailures")
        );
        assert_eq!(
            reference(&properties["ScalingConfig"]["MaximumConcurrency"]),
            parameter
        );
        assert!(template["Parameters"][parameter]["MinValue"].as_u64() >= Some(2));
        assert_eq!(default_of(parameter), concurrency as u64, "{parameter}");
    }
}

/// The logical id or parameter a `!Ref X` or `!GetAtt X.Attr` names.
fn reference(value: &Value) -> String {
    let Value::Tagged(tagged) = value else {
        panic!("expected !Ref or !GetAtt, got {value:?}")
    };
    let text = tagged.value.as_str().unwrap();
    text.split('.').next().unwrap().to_string()
}

/// Records the body of every request and fails it before it leaves: what a client would send.
#[derive(Clone, Debug, Default)]
struct Capture(Arc<Mutex<Vec<serde_json::Value>>>);

impl Intercept for Capture {
    fn name(&self) -> &'static str {
        "Capture"
    }
    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let body = context.request().body().bytes().unwrap_or_default();
        self.0.lock().unwrap().push(serde_json::from_slice(body)?);
        Err("captured, not sent".into())
    }
}

/// The execution input the code sends for `job`, single (`enqueue`) or held until
/// `not_before` (`enqueue_held`).
async fn execution_input(
    job: &Job,
    not_before: Option<chrono::DateTime<chrono::Utc>>,
) -> serde_json::Value {
    let capture = Capture::default();
    let config = aws_sdk_sfn::config::Builder::from(&local_stack::sdk_config("http://127.0.0.1:9"))
        .interceptor(capture.clone())
        .build();
    let queue = StepFunctionsJobQueue::new(
        aws_sdk_sfn::Client::from_conf(config),
        "arn:aws:states:us-east-1:123456789012:stateMachine:enrichment-cascade-local",
    );
    let sent = match not_before {
        Some(at) => queue.enqueue_held(std::slice::from_ref(job), at).await,
        None => queue.enqueue(job).await,
    };
    assert!(sent.is_err(), "the capture fails every request");
    let bodies = capture.0.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    serde_json::from_str(bodies[0]["input"].as_str().unwrap()).unwrap()
}

/// The state machine starts with `Hold`: an execution whose input has `notBefore` (a batch or
/// bulk job, as `StepFunctionsJobQueue::enqueue_held` writes it) waits until that time, then
/// runs the cascade; one without (a single enrichment) runs it at once. The Wait state reads
/// the field the code writes, in the form it needs: RFC 3339 with an uppercase `T` and `Z`
/// (AWS Step Functions Developer Guide, "Wait workflow state").
#[tokio::test]
async fn state_machine_holds_batch_jobs_until_their_not_before() {
    let template = template();
    let definition = &properties(&template, "CascadeStateMachine")["Definition"];
    let states = &definition["States"];
    assert_eq!(definition["StartAt"].as_str(), Some("Hold"));
    let hold = &states["Hold"];
    assert_eq!(hold["Type"].as_str(), Some("Choice"));
    assert_eq!(hold["Default"].as_str(), Some("RunCascade"));
    let choices = hold["Choices"].as_sequence().unwrap();
    assert_eq!(choices.len(), 1);
    let path = choices[0]["Variable"].as_str().unwrap();
    assert_eq!(choices[0]["IsPresent"].as_bool(), Some(true));
    let wait = &states[choices[0]["Next"].as_str().unwrap()];
    assert_eq!(wait["Type"].as_str(), Some("Wait"));
    assert_eq!(wait["TimestampPath"].as_str(), Some(path));
    assert_eq!(wait["Next"].as_str(), Some("RunCascade"));
    let field = path
        .strip_prefix("$.")
        .expect("a top-level field of the input");
    // A deferred job is waited out by the state machine and run again.
    let run = &states["RunCascade"];
    let deferred = &states[run["Next"].as_str().expect("RunCascade goes on")];
    assert_eq!(deferred["Type"].as_str(), Some("Choice"));
    let choice = &deferred["Choices"][0];
    assert_eq!(choice["Variable"].as_str(), Some("$.outcome"));
    assert_eq!(choice["StringEquals"].as_str(), Some("deferred"));
    let wait_to_retry = &states[choice["Next"].as_str().unwrap()];
    assert_eq!(
        wait_to_retry["SecondsPath"].as_str(),
        Some("$.delaySeconds")
    );
    assert_eq!(wait_to_retry["Next"].as_str(), Some("RunCascade"));

    let job = Job {
        enrichment_id: Uuid::new_v4(),
        org_id: "org_template".into(),
        person_id: Uuid::new_v4(),
        field: Field::Emails,
        cache: Default::default(),
        bulk: false,
    };
    let not_before = chrono::Utc::now() + chrono::Duration::seconds(20);
    let held = execution_input(&job, Some(not_before)).await;
    let timestamp = held[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in the held input {held}"));
    assert!(
        timestamp.contains('T') && timestamp.ends_with('Z'),
        "{timestamp}"
    );
    // Whole seconds, rounded up: a Wait state ignores the milliseconds, so the hold never
    // ends early.
    let parsed = chrono::DateTime::parse_from_rfc3339(timestamp).unwrap();
    assert_eq!(parsed.timestamp_subsec_millis(), 0, "{timestamp}");
    assert!(parsed >= not_before && parsed < not_before + chrono::Duration::seconds(1));
    // The rest of the input is the job, which the worker reads.
    let mut rest = held.clone();
    rest.as_object_mut().unwrap().remove(field);
    assert_eq!(rest, serde_json::to_value(&job).unwrap());
    let single = execution_input(&job, None).await;
    assert!(single.get(field).is_none(), "{single}");
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
    // Every function but the worker and the webhook pipeline's two serves the HTTP API.
    let api = api_functions(&template);
    assert_eq!(
        api,
        [
            "BatchFunction",
            "CancelFunction",
            "CreditsFunction",
            "PeopleFunction",
            "StatusFunction",
            "TriggerFunction",
            "WebhookSettingsFunction",
        ]
    );
    assert_eq!(
        functions(&template)
            .into_iter()
            .filter(|id| !api.contains(id))
            .collect::<Vec<_>>(),
        [
            "OutboxRelayFunction",
            "WebhookDeliveryFunction",
            "WorkerFunction"
        ]
    );
    for api in &api {
        assert_eq!(timeout(api), budget::API_FUNCTION_TIMEOUT, "{api}");
    }
    assert_eq!(timeout("WorkerFunction"), budget::WORKER_FUNCTION_TIMEOUT);
    // A batch's jobs are held past its request's deadline, within what SQS can delay.
    assert!(budget::API_FUNCTION_TIMEOUT + budget::HOLD_MARGIN <= budget::MAX_SQS_DELAY);
    let max_receives = number(
        &properties(&template, "WorkerFunction")["Environment"]["Variables"]["WORKER_MAX_RECEIVES"],
    );
    for queue in ["JobsQueue", "BulkJobsQueue"] {
        let queue = properties(&template, queue);
        let visibility = number(&queue["VisibilityTimeout"]);
        assert_eq!(
            Duration::from_secs(visibility),
            budget::JOBS_VISIBILITY_TIMEOUT
        );
        assert!(visibility >= 6 * budget::WORKER_FUNCTION_TIMEOUT.as_secs());
        // The worker gives a job up on the receive after which the queue moves it to the DLQ.
        assert_eq!(
            number(&queue["RedrivePolicy"]["maxReceiveCount"]),
            max_receives
        );
    }

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

    // A webhook attempt (its budget, and the reads before it and the record and retry after
    // it, each at most one SDK operation) ends within the delivery function's timeout; the
    // webhook queue hides a message 6 times that (AWS docs, "Using Lambda with Amazon SQS").
    let delivery = timeout("WebhookDeliveryFunction");
    assert!(
        enrichment::webhooks::ATTEMPT_TIMEOUT + 4 * budget::SDK_OPERATION_TIMEOUT < delivery,
        "{delivery:?}"
    );
    let webhook_queue = properties(&template, "WebhookQueue");
    assert!(number(&webhook_queue["VisibilityTimeout"]) >= 6 * delivery.as_secs());
    // The relay's calls per event (the endpoint's GetItem, the delivery's PutItem, the
    // SendMessage), each bounded by the SDK, fit its timeout for several events even when every
    // call takes its whole budget; a batch that still does not fit ends in a function error and
    // its event source bisects it.
    assert!(timeout("OutboxRelayFunction") >= 5 * 3 * budget::SDK_OPERATION_TIMEOUT);
}

/// The functions that serve the HTTP API (an `HttpApi` event), sorted.
fn api_functions(template: &Value) -> Vec<String> {
    functions(template)
        .into_iter()
        .filter(|id| {
            template["Resources"][id.as_str()]["Properties"]["Events"]
                .as_mapping()
                .is_some_and(|events| {
                    events
                        .values()
                        .any(|event| event["Type"].as_str() == Some("HttpApi"))
                })
        })
        .collect()
}

/// The logical ids of the template's functions (`AWS::Serverless::Function`), sorted.
fn functions(template: &Value) -> Vec<String> {
    let mut ids: Vec<String> = template["Resources"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, resource)| resource["Type"].as_str() == Some("AWS::Serverless::Function"))
        .map(|(id, _)| id.as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// The binary of each function crate under `functions/` (its `[[bin]]` name).
fn function_binaries(root: &std::path::Path) -> BTreeSet<String> {
    let mut binaries = BTreeSet::new();
    for entry in std::fs::read_dir(root.join("functions")).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let (_, bin) = text
            .split_once("[[bin]]")
            .unwrap_or_else(|| panic!("{}: no [[bin]]", manifest.display()));
        let name = bin
            .lines()
            .find_map(|line| line.trim().strip_prefix("name = "))
            .unwrap_or_else(|| panic!("{}: [[bin]] without a name", manifest.display()));
        binaries.insert(name.trim_matches('"').to_string());
    }
    binaries
}

/// Every function crate is a function of the template and every function of the template is
/// one of them (`BuildProperties.Binary`, built by `sam build` with the rust-cargolambda build
/// method), and `make build-lambda` builds them all. Each is deployed alike: the Globals'
/// runtime, architecture, handler and `TABLE_NAME` (no function overrides them), a log group of
/// the template named `/aws/lambda/{FunctionName}` with JSON logs (AWS Lambda Developer Guide,
/// "Configuring advanced logging controls"), and every function of the HTTP API gets the
/// Clerk settings from the template's parameters (each reads `Authenticator::from_vars`).
/// No function is given `WEBHOOK_ALLOW_LOOPBACK_HTTP`: deployed, a webhook endpoint is https to
/// a public address, always.
#[test]
fn every_function_crate_is_deployed_alike() {
    let template = template();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let binaries = function_binaries(&root);
    let globals = &template["Globals"]["Function"];
    assert_eq!(globals["Runtime"].as_str(), Some("provided.al2023"));
    assert_eq!(globals["Architectures"][0].as_str(), Some("arm64"));
    assert_eq!(globals["Handler"].as_str(), Some("bootstrap"));
    assert_eq!(
        reference(&globals["Environment"]["Variables"]["TABLE_NAME"]),
        "EnrichmentTable"
    );
    let mut deployed = BTreeSet::new();
    for id in functions(&template) {
        let resource = &template["Resources"][id.as_str()];
        let binary = resource["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .unwrap_or_else(|| panic!("{id}: no BuildProperties.Binary"));
        assert_eq!(
            resource["Metadata"]["BuildMethod"].as_str(),
            Some("rust-cargolambda"),
            "{id}"
        );
        assert!(
            deployed.insert(binary.to_string()),
            "{binary} deployed twice"
        );
        let function = &resource["Properties"];
        for global in ["Runtime", "Architectures", "Handler"] {
            assert!(function[global].is_null(), "{id} overrides {global}");
        }
        let variables = &function["Environment"]["Variables"];
        assert!(
            variables["TABLE_NAME"].is_null(),
            "{id} overrides TABLE_NAME"
        );
        assert!(
            variables["WEBHOOK_ALLOW_LOOPBACK_HTTP"].is_null(),
            "{id} accepts loopback http webhook endpoints"
        );
        let name = sub_stage(&function["FunctionName"]);
        assert_eq!(name, format!("enrichment-{binary}-local"), "{id}");
        assert_eq!(
            function["LoggingConfig"]["LogFormat"].as_str(),
            Some("JSON")
        );
        let group = reference(&function["LoggingConfig"]["LogGroup"]);
        assert_eq!(
            template["Resources"][group.as_str()]["Type"].as_str(),
            Some("AWS::Logs::LogGroup"),
            "{id}"
        );
        assert_eq!(
            sub_stage(&properties(&template, &group)["LogGroupName"]),
            format!("/aws/lambda/{name}"),
            "{id}"
        );
        if api_functions(&template).contains(&id) {
            for (variable, parameter) in [
                ("AUTH_JWKS_URL", "AuthJwksUrl"),
                ("AUTH_ISSUER", "AuthIssuer"),
                ("AUTH_AUTHORIZED_PARTIES", "AuthAuthorizedParties"),
            ] {
                assert_eq!(
                    reference(&variables[variable]),
                    parameter,
                    "{id} {variable}"
                );
            }
        }
    }
    assert_eq!(deployed, binaries, "template.yaml functions vs functions/*");
    assert!(
        template["Globals"]["Function"]["Environment"]["Variables"]["WEBHOOK_ALLOW_LOOPBACK_HTTP"]
            .is_null()
    );
    let makefile = std::fs::read_to_string(root.join("Makefile")).unwrap();
    let built: BTreeSet<String> = makefile
        .lines()
        .filter(|line| line.contains("lambda build"))
        .flat_map(|line| {
            line.split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .filter(|pair| pair[0] == "-p")
                .map(|pair| pair[1].to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(built, binaries, "make build-lambda vs functions/*");
}

/// `RefundMisses` reaches the worker, the one function that finishes enrichments, as
/// `REFUND_MISSES`; each value the parameter allows is one `Config::from_vars` accepts, and its
/// default is the code's (spec operations-api, "Credits": a miss is refunded only when the
/// deployment says so).
#[test]
fn refund_misses_reaches_the_worker() {
    let template = template();
    let parameter = &template["Parameters"]["RefundMisses"];
    assert_eq!(parameter["Type"].as_str(), Some("String"));
    let allowed: Vec<&str> = parameter["AllowedValues"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|value| value.as_str().expect("a quoted value"))
        .collect();
    assert_eq!(allowed, ["true", "false"]);
    let read = |value: Option<&str>| {
        let mut pairs = vec![("TABLE_NAME", "t")];
        pairs.extend(value.map(|value| ("REFUND_MISSES", value)));
        Config::from_vars(&Vars::from_pairs(pairs))
            .unwrap()
            .refund_misses
    };
    for value in &allowed {
        assert_eq!(read(Some(value)), *value == "true", "{value}");
    }
    assert_eq!(
        read(parameter["Default"].as_str()),
        read(None),
        "the parameter's default is the code's"
    );
    let worker = &properties(&template, "WorkerFunction")["Environment"]["Variables"];
    assert_eq!(reference(&worker["REFUND_MISSES"]), "RefundMisses");
}

/// The fields of a stream record an event source filter pattern reads, as the record's JSON
/// (AWS Lambda Developer Guide, "Control which events Lambda sends to your function": a
/// pattern's array lists the values that match, `{"prefix": p}` a string starting with `p`).
fn matches(pattern: &serde_json::Value, record: &serde_json::Value) -> bool {
    match pattern {
        serde_json::Value::Object(fields) => fields
            .iter()
            .all(|(name, inner)| record.get(name).is_some_and(|value| matches(inner, value))),
        serde_json::Value::Array(values) => values.iter().any(|value| match value {
            serde_json::Value::Object(rule) => match (rule.get("prefix"), record.as_str()) {
                (Some(serde_json::Value::String(prefix)), Some(text)) => text.starts_with(prefix),
                _ => panic!("unsupported filter rule {rule:?}"),
            },
            value => value == record,
        }),
        other => panic!("unsupported filter pattern {other}"),
    }
}

/// A stream record of the table, as Lambda hands it over (and as the filter reads it).
fn stream_record(event_name: &str, sk: &str) -> serde_json::Value {
    serde_json::json!({
        "eventID": "1",
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": 1796216069.0,
            "Keys": {"pk": {"S": "ORG#org_template"}, "sk": {"S": sk}},
            "NewImage": {"pk": {"S": "ORG#org_template"}, "sk": {"S": sk}},
            "SequenceNumber": "100000000000000000001",
            "SizeBytes": 64,
            "StreamViewType": "NEW_IMAGE"
        },
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/enrichment-local/stream/2026-12-01T00:00:00.000"
    })
}

/// The outbox relay's event source: the table's stream (new images, which the relay reads),
/// from the oldest record, with partial batch responses, bisected on a function error, records
/// given again until they age out of the stream, then to the webhook dead-letter queue; and its
/// filter lets through exactly what the relay's code relays: the inserts whose `sk` starts with
/// [`enrichment::store::OUTBOX_SK_PREFIX`] (`enrichment::webhooks::is_outbox_insert`).
#[test]
fn outbox_relay_event_source_filters_the_outbox_inserts() {
    use enrichment::store::OUTBOX_SK_PREFIX;
    use enrichment::webhooks::is_outbox_insert;
    let template = template();
    assert_eq!(
        properties(&template, "EnrichmentTable")["StreamSpecification"]["StreamViewType"].as_str(),
        Some("NEW_IMAGE")
    );
    let resource = &template["Resources"]["OutboxRelayEventSource"];
    assert_eq!(
        resource["Type"].as_str(),
        Some("AWS::Lambda::EventSourceMapping")
    );
    assert!(
        resource["Condition"].is_null(),
        "deployed under every orchestrator"
    );
    let mapping = &resource["Properties"];
    let Value::Tagged(source) = &mapping["EventSourceArn"] else {
        panic!("EventSourceArn: expected !GetAtt")
    };
    assert_eq!(source.tag, "!GetAtt");
    assert_eq!(source.value.as_str(), Some("EnrichmentTable.StreamArn"));
    assert_eq!(reference(&mapping["FunctionName"]), "OutboxRelayFunction");
    assert_eq!(mapping["StartingPosition"].as_str(), Some("TRIM_HORIZON"));
    assert_eq!(
        mapping["FunctionResponseTypes"][0].as_str(),
        Some("ReportBatchItemFailures")
    );
    assert_eq!(mapping["BisectBatchOnFunctionError"].as_bool(), Some(true));
    assert_eq!(mapping["MaximumRetryAttempts"].as_i64(), Some(-1));
    assert_eq!(mapping["MaximumRecordAgeInSeconds"].as_i64(), Some(-1));
    assert_eq!(
        reference(&mapping["DestinationConfig"]["OnFailure"]["Destination"]),
        "WebhookDeadLetterQueue"
    );

    let filters = mapping["FilterCriteria"]["Filters"].as_sequence().unwrap();
    assert_eq!(filters.len(), 1, "one pattern");
    let pattern: serde_json::Value =
        serde_json::from_str(filters[0]["Pattern"].as_str().unwrap()).unwrap();
    assert_eq!(pattern["eventName"], serde_json::json!(["INSERT"]));
    assert_eq!(
        pattern["dynamodb"]["NewImage"]["sk"]["S"][0]["prefix"].as_str(),
        Some(OUTBOX_SK_PREFIX),
        "the filter's prefix is enrichment::store::OUTBOX_SK_PREFIX"
    );
    // The filter and the relay's own check agree, record by record.
    let outbox = format!("{OUTBOX_SK_PREFIX}{}", Uuid::new_v4());
    for (event_name, sk, relayed) in [
        ("INSERT", outbox.as_str(), true),
        ("MODIFY", outbox.as_str(), false),
        ("REMOVE", outbox.as_str(), false),
        ("INSERT", "ENRICHMENT#emails#x", false),
        ("INSERT", "WEBHOOK", false),
        ("INSERT", "DELIVERY#2026-12-01T00:00:00.000Z#x", false),
    ] {
        let record = stream_record(event_name, sk);
        assert_eq!(
            matches(&pattern, &record),
            relayed,
            "filter: {event_name} {sk}"
        );
        let parsed: aws_lambda_events::dynamodb::EventRecord =
            serde_json::from_value(record).unwrap();
        assert_eq!(
            is_outbox_insert(&parsed),
            relayed,
            "code: {event_name} {sk}"
        );
    }
}

/// The webhook pipeline's queues and settings: the delivery function's event source on the
/// webhook queue (batches of 10, partial batch responses, its own maximum concurrency), the
/// webhook queue's redrive to its dead-letter queue (5 receives, 14 days kept, only that queue
/// allowed), `WEBHOOK_QUEUE_URL` for the relay and the delivery function, and
/// `WebhookRetrySchedule` reaching the delivery function as `WEBHOOK_RETRY_SCHEDULE`, its default
/// the code's and read by `WebhookConfig::from_vars`.
#[test]
fn webhook_queue_event_source_and_retry_schedule_fit_the_code() {
    use enrichment::webhooks::{DEFAULT_RETRY_SCHEDULE, WebhookConfig};
    let template = template();
    let resource = &template["Resources"]["WebhookDeliveryEventSource"];
    assert_eq!(
        resource["Type"].as_str(),
        Some("AWS::Lambda::EventSourceMapping")
    );
    assert!(resource["Condition"].is_null());
    let mapping = &resource["Properties"];
    assert_eq!(reference(&mapping["EventSourceArn"]), "WebhookQueue");
    assert_eq!(
        reference(&mapping["FunctionName"]),
        "WebhookDeliveryFunction"
    );
    assert_eq!(mapping["BatchSize"].as_u64(), Some(10));
    assert_eq!(
        mapping["FunctionResponseTypes"][0].as_str(),
        Some("ReportBatchItemFailures")
    );
    let concurrency = reference(&mapping["ScalingConfig"]["MaximumConcurrency"]);
    assert!(template["Parameters"][concurrency.as_str()]["MinValue"].as_u64() >= Some(2));

    let queue = properties(&template, "WebhookQueue");
    let dlq = properties(&template, "WebhookDeadLetterQueue");
    assert_eq!(
        reference(&queue["RedrivePolicy"]["deadLetterTargetArn"]),
        "WebhookDeadLetterQueue"
    );
    assert_eq!(queue["RedrivePolicy"]["maxReceiveCount"].as_u64(), Some(5));
    assert_eq!(dlq["MessageRetentionPeriod"].as_u64(), Some(14 * 86_400));
    for queue in [queue, dlq] {
        assert_eq!(queue["SqsManagedSseEnabled"].as_bool(), Some(true));
    }
    let allowed: Vec<String> = dlq["RedriveAllowPolicy"]["sourceQueueArns"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|arn| sub_stage(arn).rsplit(':').next().unwrap().to_string())
        .collect();
    assert_eq!(allowed, [sub_stage(&queue["QueueName"])]);

    for function in ["OutboxRelayFunction", "WebhookDeliveryFunction"] {
        let variables = &properties(&template, function)["Environment"]["Variables"];
        assert_eq!(
            reference(&variables["WEBHOOK_QUEUE_URL"]),
            "WebhookQueue",
            "{function}"
        );
    }
    let delivery = &properties(&template, "WebhookDeliveryFunction")["Environment"]["Variables"];
    assert_eq!(
        reference(&delivery["WEBHOOK_RETRY_SCHEDULE"]),
        "WebhookRetrySchedule"
    );
    let default = template["Parameters"]["WebhookRetrySchedule"]["Default"]
        .as_str()
        .unwrap();
    assert_eq!(default, DEFAULT_RETRY_SCHEDULE);
    let read = |value: Option<&str>| {
        WebhookConfig::from_vars(&Vars::from_pairs(
            value.map(|value| ("WEBHOOK_RETRY_SCHEDULE", value)),
        ))
        .unwrap()
    };
    assert_eq!(
        read(Some(default)),
        read(None),
        "the parameter's default is the code's"
    );
    assert!(!read(Some(default)).allow_loopback_http);
}
