//! The stack's life across runs: what a restart keeps, one stack per state folder, and a stack
//! that stops when its SQS emulator dies. Part of it runs the `local-stack` binary itself.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use enrichment::domain::{Field, Person};
use enrichment::queue::{Job, JobQueue, QueueError};
use local_stack::{Options, Stack, StackInfo, TABLE_NAME, requeue_pending};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

const ORG: &str = "org_acme";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn temp_state() -> PathBuf {
    std::env::temp_dir().join(format!("lifecycle-test-{}", Uuid::new_v4()))
}

fn options(state_dir: &Path, persist: bool, local_worker: bool) -> Options {
    let mut options = Options::for_repo(&repo_root());
    options.state_dir = state_dir.to_path_buf();
    options.persist = persist;
    options.port = 0;
    options.local_worker = local_worker;
    options
}

fn known_person() -> Person {
    Person {
        id: Uuid::new_v4(),
        first_name: Some("Ada".into()),
        last_name: Some("Lovelace".into()),
        company_name: Some("Analytical Engines".into()),
        company_domain: Some("analytical-engines.test".into()),
        ..Person::default()
    }
}

async fn call(stack: &Stack, method: reqwest::Method, person: Uuid, field: &str) -> Value {
    let token = stack
        .token("user_a", ORG, Duration::from_secs(300))
        .unwrap();
    let url = format!(
        "{}/api/v1/operations/enrichment/{person}?field={field}",
        stack.info.gateway_url
    );
    let response = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn an_enrichment_left_pending_by_a_stopped_stack_finishes_after_a_restart() {
    let state = temp_state();
    let stack = Stack::start(options(&state, true, false)).await.unwrap();
    assert_eq!(stack.requeued, 0);
    let person = known_person();
    stack
        .store
        .put_people(ORG, std::slice::from_ref(&person))
        .await
        .unwrap();
    stack.store.grant_credits(ORG, 100).await.unwrap();
    let pending = call(&stack, reqwest::Method::POST, person.id, "emails").await;
    assert_eq!(pending["status"], "pending");
    stack.shutdown().await;

    // moto's queue is gone with the first stack; the table is not.
    let stack = Stack::start(options(&state, true, true)).await.unwrap();
    assert_eq!(stack.requeued, 1);
    let mut last = Value::Null;
    for _ in 0..150 {
        last = call(&stack, reqwest::Method::GET, person.id, "emails").await;
        if last["status"] != "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["status"], "finished", "{last}");
    assert_eq!(last["dataFound"], true);
    assert_eq!(last["id"], pending["id"]);
    assert_eq!(stack.store.credit_balance(ORG).await.unwrap(), 95);
    stack.shutdown().await;

    // Nothing pending any more: a third start queues nothing.
    let stack = Stack::start(options(&state, true, false)).await.unwrap();
    assert_eq!(stack.requeued, 0);
    stack.shutdown().await;
}

#[derive(Default)]
struct Recorded(Arc<Mutex<Vec<Job>>>);

#[async_trait]
impl JobQueue for Recorded {
    async fn enqueue(&self, job: &Job) -> Result<(), QueueError> {
        self.0.lock().unwrap().push(job.clone());
        Ok(())
    }
}

#[tokio::test]
async fn requeue_sends_one_job_per_pending_enrichment_across_scan_pages() {
    let stack = Stack::start(options(&temp_state(), false, false))
        .await
        .unwrap();
    let people: Vec<Person> = (0..4).map(|_| known_person()).collect();
    stack.store.put_people(ORG, &people).await.unwrap();
    stack
        .store
        .put_people("org_other", &people[..1])
        .await
        .unwrap();
    stack.store.grant_credits(ORG, 1000).await.unwrap();
    stack.store.grant_credits("org_other", 1000).await.unwrap();
    let mut expected = Vec::new();
    for person in &people {
        let body = call(&stack, reqwest::Method::POST, person.id, "emails").await;
        expected.push((
            body["id"].as_str().unwrap().to_string(),
            ORG,
            person.id,
            Field::Emails,
        ));
    }
    let body = call(&stack, reqwest::Method::POST, people[0].id, "phones").await;
    expected.push((
        body["id"].as_str().unwrap().to_string(),
        ORG,
        people[0].id,
        Field::Phones,
    ));
    // Another org's pending enrichment of the same person.
    let token = stack
        .token("user_b", "org_other", Duration::from_secs(60))
        .unwrap();
    let other: Value = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/operations/enrichment/{}?field=emails",
            stack.info.gateway_url, people[0].id
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    expected.push((
        other["id"].as_str().unwrap().to_string(),
        "org_other",
        people[0].id,
        Field::Emails,
    ));
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        local_stack::dynamodb_config(&stack.info.dynamodb_url).build(),
    );
    // One that is no longer pending.
    dynamodb
        .update_item()
        .table_name(TABLE_NAME)
        .key("pk", AttributeValue::S(format!("ORG#{ORG}")))
        .key(
            "sk",
            AttributeValue::S(format!("ENRICHMENT#{}#emails", people[3].id)),
        )
        .update_expression("SET #status = :finished")
        .expression_attribute_names("#status", "status")
        .expression_attribute_values(":finished", AttributeValue::S("finished".into()))
        .send()
        .await
        .unwrap();
    expected.retain(|(_, _, person, field)| (*person, *field) != (people[3].id, Field::Emails));
    let queue = Recorded::default();
    // Pages of 2 items read: the table's ~20 items take many pages.
    let sent = requeue_pending(&dynamodb, TABLE_NAME, &queue, 2)
        .await
        .unwrap();
    let mut jobs: Vec<(String, &str, Uuid, Field)> = queue
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|job| {
            let org = if job.org_id == ORG { ORG } else { "org_other" };
            (job.enrichment_id.to_string(), org, job.person_id, job.field)
        })
        .collect();
    jobs.sort_by(|a, b| a.0.cmp(&b.0));
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(sent, 5);
    assert_eq!(jobs, expected);
    stack.shutdown().await;
}

/// A `local-stack` process of the test.
struct Process {
    child: Child,
    stderr: tokio::task::JoinHandle<String>,
}

impl Process {
    /// Starts `local-stack` from the repository root with `LOCAL_STATE_DIR=state` and
    /// `PORT=0`.
    fn spawn(
        state: &Path,
    ) -> (
        Process,
        tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    ) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_local-stack"))
            .current_dir(repo_root())
            .env("LOCAL_STATE_DIR", state)
            .env("PORT", "0")
            .env("LOCAL_WORKER", "off")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        (Process { child, stderr }, stdout)
    }

    /// Starts `local-stack` and waits for its `ready` line.
    async fn start(state: &Path) -> (Process, String) {
        let (process, mut stdout) = Process::spawn(state);
        let ready = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = stdout.next_line().await.unwrap() {
                if line.contains("ready") {
                    return line;
                }
            }
            panic!("local-stack exited before it was ready");
        })
        .await
        .expect("local-stack ready within 120 s");
        // Keep reading stdout so that the process never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        (process, ready)
    }

    /// Waits for the process to exit; returns its exit code and its standard error.
    async fn exit(mut self) -> (Option<i32>, String) {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("local-stack exits within 60 s")
            .unwrap();
        (status.code(), self.stderr.await.unwrap())
    }

    /// Ctrl-C.
    fn interrupt(&self) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The process's children (Linux: `/proc/<pid>/task/<tid>/children`).
    fn children(&self) -> Vec<u32> {
        let pid = self.child.id().unwrap();
        let mut children = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let path = task.unwrap().path().join("children");
            let text = std::fs::read_to_string(path).unwrap_or_default();
            children.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        children
    }
}

fn stack_json(state: &Path) -> Option<StackInfo> {
    let text = std::fs::read_to_string(state.join("stack.json")).ok()?;
    Some(serde_json::from_str(&text).unwrap())
}

#[tokio::test]
async fn a_second_stack_on_the_same_state_folder_refuses_to_start() {
    let state = temp_state();
    let (first, ready) = Process::start(&state).await;
    assert!(
        ready.contains("0 pending enrichment(s) re-queued"),
        "{ready}"
    );
    let info = stack_json(&state).unwrap();

    let (second, _) = Process::spawn(&state);
    let (code, stderr) = second.exit().await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "a local stack is already running at {}",
            info.gateway_url
        )) && stderr.contains("stop it or use another LOCAL_STATE_DIR"),
        "{stderr}"
    );
    // The first stack still runs, and its stack.json is untouched.
    assert_eq!(stack_json(&state).unwrap().gateway_url, info.gateway_url);
    assert!(local_stack::gateway_answers(&info.gateway_url).await);

    first.interrupt();
    let (code, stderr) = first.exit().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stack_json(&state).is_none());
}

#[tokio::test]
async fn a_stack_json_left_by_a_dead_stack_is_replaced() {
    let state = temp_state();
    std::fs::create_dir_all(&state).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stale_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let stale = serde_json::json!({
        "gatewayUrl": stale_url,
        "dynamodbUrl": "http://127.0.0.1:1",
        "sqsUrl": "http://127.0.0.1:1",
        "tableName": TABLE_NAME,
        "queueUrl": "",
        "dlqUrl": "",
        "devKeyPath": state.join("dev-key.pem"),
    });
    std::fs::write(state.join("stack.json"), stale.to_string()).unwrap();

    let (process, _) = Process::start(&state).await;
    let info = stack_json(&state).unwrap();
    assert_ne!(info.gateway_url, stale_url);
    assert!(local_stack::gateway_answers(&info.gateway_url).await);
    process.interrupt();
    assert_eq!(process.exit().await.0, Some(0));
}

#[tokio::test]
async fn the_stack_stops_and_exits_1_when_moto_dies() {
    let state = temp_state();
    let (process, _) = Process::start(&state).await;
    let info = stack_json(&state).unwrap();
    let children = process.children();
    assert_eq!(children.len(), 1, "moto is the one child: {children:?}");
    let status = std::process::Command::new("kill")
        .args(["-KILL", &children[0].to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let (code, stderr) = process.exit().await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the SQS emulator (moto) exited unexpectedly")
            && stderr.contains("the local stack stopped"),
        "{stderr}"
    );
    assert!(!local_stack::gateway_answers(&info.gateway_url).await);
    assert!(stack_json(&state).is_none());
}
