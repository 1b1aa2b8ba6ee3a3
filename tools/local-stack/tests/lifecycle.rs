//! The stack's life across runs: what a restart keeps, one stack per state folder, and a stack
//! that stops when its SQS emulator dies. Part of it runs the `local-stack` binary itself.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use enrichment::domain::Job;
use enrichment::domain::{Field, Person};
use enrichment::queue::{JobQueue, QueueError};
use local_stack::{Options, Stack, StackInfo, TABLE_NAME, requeue_pending};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

mod helpers;
use helpers::{known_person, ledger, repo_root};

const ORG: &str = "org_acme";

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
        .create_people(ORG, std::slice::from_ref(&person))
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
    assert_eq!(ledger(&stack.store, ORG, 100).await, (95, vec![-5]));
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

    async fn enqueue_held(
        &self,
        jobs: &[Job],
        _: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), QueueError> {
        self.0.lock().unwrap().extend_from_slice(jobs);
        Ok(())
    }
}

#[tokio::test]
async fn requeue_sends_one_job_per_pending_enrichment_across_scan_pages() {
    let stack = Stack::start(options(&temp_state(), false, false))
        .await
        .unwrap();
    let people: Vec<Person> = (0..4).map(|_| known_person()).collect();
    stack.store.create_people(ORG, &people).await.unwrap();
    stack
        .store
        .create_people("org_other", &people[..1])
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
    ledger(&stack.store, ORG, 1000).await;
    ledger(&stack.store, "org_other", 1000).await;
    stack.shutdown().await;
}

/// A `local-stack` process of the test.
struct Process {
    child: Child,
    stderr: tokio::task::JoinHandle<String>,
}

impl Process {
    /// Starts `local-stack` from the repository root with `LOCAL_STATE_DIR=state`, `PORT=0`
    /// and `LOCAL_WORKER=off`.
    fn spawn(
        state: &Path,
    ) -> (
        Process,
        tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    ) {
        Self::spawn_with(state, &[("LOCAL_WORKER", "off")])
    }

    /// Starts `local-stack` from the repository root with `LOCAL_STATE_DIR=state`, `PORT=0`
    /// and `env`.
    fn spawn_with(
        state: &Path,
        env: &[(&str, &str)],
    ) -> (
        Process,
        tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    ) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_local-stack"))
            .current_dir(repo_root())
            .env("LOCAL_STATE_DIR", state)
            .env("PORT", "0")
            .envs(env.iter().copied())
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

    /// Starts `local-stack` with `LOCAL_WORKER=off` and waits for its `ready` line.
    async fn start(state: &Path) -> (Process, String) {
        Self::start_with(state, &[("LOCAL_WORKER", "off")]).await
    }

    /// Starts `local-stack` with `env` and waits for its `ready` line.
    async fn start_with(state: &Path, env: &[(&str, &str)]) -> (Process, String) {
        let (process, mut stdout) = Process::spawn_with(state, env);
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

    /// SIGKILL, as a crash or a Lambda killed at its timeout: the process and its children
    /// (moto) die at once, nothing is cleaned up.
    async fn kill_hard(mut self) {
        let children = self.children();
        for pid in children
            .iter()
            .map(u32::to_string)
            .chain(self.child.id().map(|p| p.to_string()))
        {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
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

/// `kill -TERM` (what make passes on when `make run` is stopped) stops the stack as Ctrl-C
/// does: moto stopped, `stack.json` removed, exit status 0.
#[tokio::test]
async fn sigterm_stops_the_stack_as_ctrl_c_does() {
    let state = temp_state();
    let (process, _) = Process::start(&state).await;
    let info = stack_json(&state).unwrap();
    let children = process.children();
    assert_eq!(children.len(), 1, "moto is the one child: {children:?}");
    let pid = process.child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());

    let (code, stderr) = process.exit().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stack_json(&state).is_none());
    assert!(!local_stack::gateway_answers(&info.gateway_url).await);
    assert!(
        !std::path::Path::new(&format!("/proc/{}", children[0])).exists(),
        "moto ({}) still runs",
        children[0]
    );
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

/// A running `local-stack` process's table, a token of `ORG` it accepts, and its enrichment URL
/// for `person` and emails, from its `stack.json`.
fn connect(state: &Path, person: Uuid) -> (StackInfo, enrichment::store::Store, String, String) {
    let info = stack_json(state).unwrap();
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        local_stack::dynamodb_config(&info.dynamodb_url).build(),
    );
    let store = enrichment::store::Store::new(dynamodb, &info.table_name);
    let token = local_stack::devkey::sign(
        &info.dev_key_path,
        &info.gateway_url,
        "user_a",
        ORG,
        Duration::from_secs(600),
    )
    .unwrap();
    let url = format!(
        "{}/api/v1/operations/enrichment/{person}?field=emails",
        info.gateway_url
    );
    (info, store, token, url)
}

/// A stack killed (SIGKILL) while a provider call is in flight leaves its enrichment `pending`
/// with a claim; after a restart the re-queued job waits for the dead worker's claim to lapse
/// (about one provider budget), then resumes: the provider that already answered "no match" is
/// not asked again, the enrichment finishes, and it was charged once.
#[tokio::test]
async fn a_stack_killed_mid_cascade_resumes_the_job_after_a_restart() {
    tokio::time::timeout(Duration::from_secs(150), async {
        let state = temp_state();
        std::fs::create_dir_all(&state).unwrap();
        // pdl does not know Ada Lovelace (no match, journaled); hunter knows her but first
        // hangs for a minute, within its 8 s budget: the claim lasts 8 + 5 s from its renewal.
        let slow = state.join("slow.json");
        std::fs::write(&slow, r#"{"providers": {"hunter": {"latency_ms": 60000}}}"#).unwrap();
        let fast = state.join("fast.json");
        std::fs::write(&fast, r#"{"providers": {}}"#).unwrap();
        let (slow, fast) = (slow.display().to_string(), fast.display().to_string());
        let env = |config: &str| {
            [
                ("EMAIL_PROVIDERS", "pdl,hunter".to_string()),
                ("HUNTER_TIMEOUT_SECONDS", "8".to_string()),
                ("PROVIDER_RETRIES", "0".to_string()),
                ("SIMULATOR_CONFIG", config.to_string()),
            ]
        };
        fn refs<'a>(env: &'a [(&'static str, String); 4]) -> [(&'static str, &'a str); 4] {
            env.each_ref().map(|(k, v)| (*k, v.as_str()))
        }
        let person = known_person();
        let http = reqwest::Client::new();

        let first_env = env(&slow);
        let (first, _) = Process::start_with(&state, &refs(&first_env)).await;
        let (_, store, token, url) = connect(&state, person.id);
        store
            .create_people(ORG, std::slice::from_ref(&person))
            .await
            .unwrap();
        store.grant_credits(ORG, 10).await.unwrap();
        let posted: Value = http
            .post(&url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(posted["status"], "pending", "{posted}");
        // Wait until pdl's "no match" is journaled and hunter's call is in flight, then kill.
        loop {
            let record = store
                .get_enrichment(ORG, person.id, Field::Emails)
                .await
                .unwrap()
                .unwrap();
            if record.providers_answered == ["pdl"] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        first.kill_hard().await;

        let second_env = env(&fast);
        let (second, ready) = Process::start_with(&state, &refs(&second_env)).await;
        assert!(
            ready.contains("1 pending enrichment(s) re-queued"),
            "{ready}"
        );
        let (info, store, token, url) = connect(&state, person.id);
        // What the crash left: charged once, still pending.
        assert_eq!(ledger(&store, ORG, 10).await, (5, vec![-5]));
        let restarted = std::time::Instant::now();
        let finished = loop {
            let body: Value = http
                .get(&url)
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if body["status"] != "pending" {
                break body;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert_eq!(finished["status"], "finished", "{finished}");
        assert_eq!(finished["dataFound"], true);
        assert_eq!(finished["id"], posted["id"]);
        eprintln!(
            "resumed and finished {:?} after the restart",
            restarted.elapsed()
        );
        let stats: Value = http
            .get(format!("{}/stats", info.simulator_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(stats["pdl"]["requests"], 0, "pdl asked again: {stats}");
        assert_eq!(stats["hunter"]["requests"], 1, "{stats}");
        assert_eq!(
            ledger(&store, ORG, 10).await,
            (5, vec![-5]),
            "charged once, never refunded"
        );
        second.interrupt();
        assert_eq!(second.exit().await.0, Some(0));
    })
    .await
    .expect("the crash test ends within 150 s");
}
