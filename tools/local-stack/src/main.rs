//! `local-stack`: starts the whole backend on loopback (see the crate docs) and stops it on
//! Ctrl-C. Environment: `PORT` (3000), `ENRICHMENT_MAX_AGE_SECONDS` (800), `LOCAL_WORKER`
//! (`off` leaves jobs queued), `LOCAL_STATE_DIR` (`.local`), `SIMULATOR_CONFIG` (a JSON file of
//! per-provider latency and failure rates), and the worker's cascade settings
//! (`EMAIL_PROVIDERS`, `PHONE_PROVIDERS`, `PROVIDER_TIMEOUT_SECONDS`...).
//!
//! One stack per state folder: it refuses to start while the stack of `<state>/stack.json`
//! answers (a file left by a stack that died is replaced). It exits with status 1 when a part
//! of the stack dies (moto).

use std::path::PathBuf;
use std::time::Duration;

use local_stack::{Options, Stack, running_stack};

fn env_number(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("{name} must be a non-negative integer, got {v:?}")),
        _ => Ok(default),
    }
}

async fn run() -> Result<(), String> {
    let root = std::env::current_dir().map_err(|e| e.to_string())?;
    let mut options = Options::for_repo(&root);
    options.port = u16::try_from(env_number("PORT", 3000)?)
        .map_err(|_| "PORT must be below 65536".to_string())?;
    options.max_age = Duration::from_secs(env_number("ENRICHMENT_MAX_AGE_SECONDS", 800)?);
    options.local_worker = !matches!(
        std::env::var("LOCAL_WORKER").as_deref(),
        Ok("off" | "0" | "false")
    );
    options.worker_concurrency = usize::try_from(env_number("LOCAL_WORKER_CONCURRENCY", 5)?)
        .map_err(|_| "LOCAL_WORKER_CONCURRENCY is too large".to_string())?;
    if let Ok(path) = std::env::var("SIMULATOR_CONFIG")
        && !path.trim().is_empty()
    {
        options.simulator_config = Some(PathBuf::from(path));
    }
    if let Ok(dir) = std::env::var("LOCAL_STATE_DIR") {
        options.state_dir = PathBuf::from(dir);
    }
    let state_dir = options.state_dir.clone();
    let worker = if options.local_worker {
        "on"
    } else {
        "off (jobs stay queued)"
    };
    if let Some(running) = running_stack(&state_dir).await {
        return Err(format!(
            "a local stack is already running at {} (state folder {}); stop it or use another \
             LOCAL_STATE_DIR",
            running.gateway_url,
            state_dir.display()
        ));
    }
    let stack = Stack::start(options).await?;
    let info_path = state_dir.join("stack.json");
    let info = serde_json::to_string_pretty(&stack.info).map_err(|e| e.to_string())?;
    std::fs::write(&info_path, info)
        .map_err(|e| format!("cannot write {}: {e}", info_path.display()))?;
    println!(
        "ready: API on {} (DynamoDB {}, SQS {}, providers {}, worker {}, {} pending \
         enrichment(s) re-queued)",
        stack.info.gateway_url,
        stack.info.dynamodb_url,
        stack.info.sqs_url,
        stack.simulator_url,
        worker,
        stack.requeued
    );
    let failure = tokio::select! {
        signal = tokio::signal::ctrl_c() => {
            signal.map_err(|e| e.to_string())?;
            None
        }
        reason = stack.failure() => Some(reason),
    };
    println!("stopping");
    stack.shutdown().await;
    let _ = std::fs::remove_file(&info_path);
    println!("stopped");
    match failure {
        None => Ok(()),
        Some(reason) => Err(format!(
            "{reason}; the local stack stopped (start it again with `make run`)"
        )),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    local_stack::init_tracing();
    // Returning (rather than `process::exit`) drops the runtime and its tasks, so a start that
    // failed half-way still kills the moto server it had started.
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("local-stack: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
