//! Worker processes: the test binaries' `main`, starting, SIGKILLing and stopping them, and their
//! logs.

use std::path::Path;
use std::time::{Duration, Instant};

use weir::prelude::*;

use crate::broker::SESSION_TIMEOUT_MS;

/// A command for a worker binary of this crate that inherits no `WEIR_*` variable from the
/// test's environment (a worker refuses variables that are no setting, such as
/// [`TANSU_ENV`](crate::TANSU_ENV)); the test sets the ones it means.
pub fn worker_command(bin: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin);
    for (name, _) in std::env::vars() {
        if name.starts_with("WEIR_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Starts worker binary `bin` (a test's `env!("CARGO_BIN_EXE_count-worker")`) against
/// `bootstrap` with `props` as `WEIR_KAFKA_*` variables and a 5 s startup timeout, expecting
/// it to fail at start: (exit code, stderr, how long it ran). Panics if it is still running
/// after 30 s.
pub fn start_failure(
    bin: &str,
    bootstrap: &str,
    props: &[(&str, &str)],
) -> (Option<i32>, String, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = worker_command(bin);
    cmd.env("WEIR_BROKERS", bootstrap)
        .env("WEIR_TOPICS", "t")
        .env("WEIR_STATE_DIR", dir.path())
        .env("WEIR_STARTUP_TIMEOUT_MS", "5000")
        .env("RUST_LOG", "error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in props {
        cmd.env(
            format!("WEIR_KAFKA_{}", k.to_ascii_uppercase().replace('.', "_")),
            v,
        );
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn the worker");
    loop {
        if child.try_wait().expect("wait").is_some() {
            let out = child.wait_with_output().expect("output");
            return (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
                started.elapsed(),
            );
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the worker hung at start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many times `needle` occurs in the files of `dir` (worker logs).
pub fn count_in_logs(dir: &Path, needle: &str) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|f| {
            std::fs::read_to_string(f.path())
                .unwrap_or_default()
                .matches(needle)
                .count()
        })
        .sum()
}

/// Resident memory of this process in MiB (Linux).
pub fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A worker process of a kill test: SIGKILLed, or stopped with SIGTERM (and expected to exit
/// 0); killed when dropped.
#[derive(Debug)]
pub struct WorkerProcess(pub Option<std::process::Child>);

impl WorkerProcess {
    /// Starts `cmd` (a [`worker_command`] with the test's own `WEIR_*` settings) with the kill
    /// tests' group timings, no progress line, and its output in the file `log`.
    pub fn start(mut cmd: std::process::Command, log: &Path) -> Self {
        let log = std::fs::File::create(log).expect("log");
        let child = cmd
            .env("WEIR_KAFKA_SESSION_TIMEOUT_MS", SESSION_TIMEOUT_MS)
            .env("WEIR_KAFKA_HEARTBEAT_INTERVAL_MS", "500")
            .env("WEIR_PROGRESS_INTERVAL_MS", "0")
            .env("RUST_LOG", "warn,weir::delivery::restore=info")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn the worker process");
        Self(Some(child))
    }

    /// SIGKILLs the process and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and asserts a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let exit = c.wait().expect("wait");
            assert!(exit.success(), "graceful stop failed: {exit}");
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `main` of the test's worker binaries: logs to stdout (`RUST_LOG`, default info), runs
/// `handler` with the `WEIR_*` settings until SIGINT/SIGTERM, and exits 1 on an error.
pub async fn run_worker_process<H: Process>(name: &str, handler: H) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,librdkafka=warn".into()),
        )
        .init();
    let result = async { Worker::from_env()?.build(handler)?.run_until_signal().await }.await;
    if let Err(e) = result {
        eprintln!("{name}: {e}");
        std::process::exit(1);
    }
}
