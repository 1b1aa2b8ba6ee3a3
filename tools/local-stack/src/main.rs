//! `local-stack`: starts the whole backend on loopback (see the crate docs) and stops it on
//! Ctrl-C or SIGTERM (moto stopped, `<state>/stack.json` removed). Environment, read through the functions' settings reader (blank: unset; a bad value
//! stops it with an error naming the variable): `PORT` (3000; 0 to 65535, 0: any free port),
//! `ENRICHMENT_MAX_AGE_SECONDS` (800; 60 to 835, as in AWS), `LOCAL_WORKER` (on; `off` leaves
//! jobs queued), `LOCAL_WORKER_CONCURRENCY` (5; 1 to 1000), `LOCAL_BULK_CONCURRENCY` (2; 1 to 1000, the
//! bulk queue's pollers), `LOCAL_OUTBOX_RELAY` (on; `off` leaves webhook events in the outbox
//! until a start with it on), `LOCAL_TABLE_STREAM` (on; `off`: no table stream and no relay,
//! for a stack taking many thousands of writes, see `Options::table_stream`),
//! `LOCAL_WEBHOOK_CONCURRENCY` (5; 0 to 1000, the webhook queue's
//! pollers), `LOCAL_STATE_DIR` (`.local`),
//! `SIMULATOR_CONFIG` (a JSON file of per-provider latency and failure rates), and the
//! functions' settings of README's "Configuration" table, such as the worker's cascade
//! (`EMAIL_PROVIDERS`, `PHONE_PROVIDERS`, `PROVIDER_TIMEOUT_SECONDS`...) and the webhooks'
//! `WEBHOOK_RETRY_SCHEDULE`.
//!
//! One stack per state folder: it refuses to start while the stack of `<state>/stack.json`
//! answers (a file left by a stack that died is replaced). It exits with status 1 when a part
//! of the stack dies (moto).

use std::path::PathBuf;

use enrichment::config::{Config, ConfigError, Vars};
use local_stack::{Options, Stack, running_stack};

/// [`Options::for_repo`] at `root`, with the knobs of the crate docs read from `vars`; the
/// defaults are those of [`Options::for_repo`] and [`Config`].
fn options(root: &std::path::Path, vars: Vars<'static>) -> Result<Options, ConfigError> {
    let mut options = Options::for_repo(root);
    options.port = vars.number("PORT", options.port, 0..=u16::MAX)?;
    options.max_age = Config::max_age_from(&vars)?;
    options.local_worker = vars.switch("LOCAL_WORKER", options.local_worker)?;
    options.worker_concurrency = vars.number(
        "LOCAL_WORKER_CONCURRENCY",
        options.worker_concurrency,
        1..=1000,
    )?;
    options.bulk_concurrency =
        vars.number("LOCAL_BULK_CONCURRENCY", options.bulk_concurrency, 1..=1000)?;
    options.outbox_relay = vars.switch("LOCAL_OUTBOX_RELAY", options.outbox_relay)?;
    options.table_stream = vars.switch("LOCAL_TABLE_STREAM", options.table_stream)?;
    options.webhook_concurrency = vars.number(
        "LOCAL_WEBHOOK_CONCURRENCY",
        options.webhook_concurrency,
        0..=1000,
    )?;
    if let Some(path) = vars.string("SIMULATOR_CONFIG") {
        options.simulator_config = Some(PathBuf::from(path));
    }
    if let Some(dir) = vars.string("LOCAL_STATE_DIR") {
        options.state_dir = PathBuf::from(dir);
    }
    options.vars = vars;
    Ok(options)
}

async fn run() -> Result<(), String> {
    // Listening from the first moment: a SIGTERM sent as soon as `stack.json` appears (or while
    // the stack starts) stops it cleanly instead of killing it with moto left running.
    let mut stop = StopSignals::listen().map_err(|e| e.to_string())?;
    let root = std::env::current_dir().map_err(|e| e.to_string())?;
    let options = options(&root, Vars::env()).map_err(|e| e.to_string())?;
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
         enrichment(s) re-queued, {} webhook delivery(ies) re-queued)",
        stack.info.gateway_url,
        stack.info.dynamodb_url,
        stack.info.sqs_url,
        stack.simulator_url,
        worker,
        stack.requeued,
        stack.requeued_deliveries
    );
    let failure = tokio::select! {
        () = stop.received() => None,
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

/// The stop signals: Ctrl-C (SIGINT) and SIGTERM (`kill`, or `make run` being stopped: make
/// passes a SIGTERM on to the recipe it runs). Both stop the stack the same way.
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs the handlers: from here on, either signal is kept until [`Self::received`].
    fn listen() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves on the first of the two signals received since [`Self::listen`].
    async fn received(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&'static str, &'static str)]) -> Result<Options, String> {
        options(
            std::path::Path::new("/repo"),
            Vars::from_pairs(pairs.iter().copied()),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn unset_or_blank_knobs_keep_the_defaults() {
        for pairs in [&[][..], &[("PORT", " "), ("LOCAL_STATE_DIR", "")][..]] {
            let options = read(pairs).unwrap();
            assert_eq!(options.port, 3000);
            assert_eq!(options.max_age, enrichment::budget::DEFAULT_MAX_AGE);
            assert!(options.local_worker);
            assert!(options.outbox_relay);
            assert!(options.table_stream);
            assert_eq!(options.worker_concurrency, 5);
            assert_eq!(options.webhook_concurrency, 5);
            assert_eq!(options.state_dir, PathBuf::from("/repo/.local"));
            assert_eq!(options.simulator_config, None);
        }
    }

    #[test]
    fn knobs_are_read_by_the_same_rules() {
        let options = read(&[
            ("PORT", "0"),
            ("ENRICHMENT_MAX_AGE_SECONDS", "60"),
            ("LOCAL_WORKER", "off"),
            ("LOCAL_WORKER_CONCURRENCY", "12"),
            ("LOCAL_OUTBOX_RELAY", "off"),
            ("LOCAL_TABLE_STREAM", "off"),
            ("LOCAL_WEBHOOK_CONCURRENCY", "0"),
            ("LOCAL_STATE_DIR", "/tmp/state"),
            ("SIMULATOR_CONFIG", "sim.json"),
        ])
        .unwrap();
        assert_eq!(options.port, 0);
        assert_eq!(options.max_age, std::time::Duration::from_secs(60));
        assert!(!options.local_worker);
        assert_eq!(options.worker_concurrency, 12);
        assert!(!options.outbox_relay);
        assert!(!options.table_stream);
        assert_eq!(options.webhook_concurrency, 0);
        assert_eq!(options.state_dir, PathBuf::from("/tmp/state"));
        assert_eq!(options.simulator_config, Some(PathBuf::from("sim.json")));
        for off in ["0", "false", "OFF"] {
            assert!(!read(&[("LOCAL_WORKER", off)]).unwrap().local_worker);
        }

        assert_eq!(
            read(&[("PORT", "65536")]).err().unwrap(),
            "PORT=\"65536\": expected a whole number from 0 to 65535"
        );
        assert_eq!(
            read(&[("ENRICHMENT_MAX_AGE_SECONDS", "900")])
                .err()
                .unwrap(),
            "ENRICHMENT_MAX_AGE_SECONDS=\"900\": expected whole seconds from 60 to 835"
        );
        assert!(read(&[("LOCAL_WORKER_CONCURRENCY", "0")]).is_err());
        assert!(read(&[("LOCAL_WORKER", "maybe")]).is_err());
        assert!(read(&[("LOCAL_WEBHOOK_CONCURRENCY", "1001")]).is_err());
    }
}
