//! The worker's HTTP endpoint: `/metrics` (Prometheus), `/health/live` and `/health/ready`.
//!
//! Counters and histograms go through the `metrics` crate into the Prometheus recorder this
//! module installs once per process. Per-partition series (lag, queue depth, paused, ...) are
//! rendered at scrape time from the partitions the worker owns at that moment, so a revoked
//! partition's series disappear with it.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::observe::metric_names::*;
use crate::observe::{PartitionRow, StateAnswer, WorkerView};

/// Buckets (seconds) of the batch and commit duration histograms.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets (seconds) of the changelog restore duration histogram: restores take seconds to
/// minutes.
const RESTORE_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// The process-wide Prometheus recorder, installed by the first worker that serves metrics.
/// `None` when another recorder was installed first (then only weir's per-partition series are
/// served).
pub(crate) fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = match builder.set_buckets(DURATION_BUCKETS).and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(RESTORE_DURATION_SECONDS.into()),
                    RESTORE_BUCKETS,
                )
            }) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("histogram buckets rejected: {e}");
                    PrometheusBuilder::new()
                }
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => Some(handle),
                Err(_) => {
                    tracing::warn!(
                        "another metrics recorder is installed: /metrics serves only weir's \
                         per-partition series"
                    );
                    None
                }
            }
        })
        .as_ref()
}

/// The Prometheus text of every metric: the recorder's, then the per-partition series of the
/// partitions owned right now.
fn render(view: &dyn WorkerView) -> String {
    let mut out = prometheus()
        .map(|h| {
            h.run_upkeep();
            h.render()
        })
        .unwrap_or_default();
    let rows = view.partitions();
    gauge_header(&mut out, OWNED_PARTITIONS, "Partitions this worker owns.");
    let _ = writeln!(out, "{OWNED_PARTITIONS} {}", rows.len());
    for (name, help, value) in PARTITION_COLUMNS {
        gauge_header(&mut out, name, help);
        for r in &rows {
            if let Some(v) = value(r) {
                let _ = writeln!(
                    out,
                    "{name}{{topic=\"{}\",partition=\"{}\"}} {v}",
                    r.topic, r.partition
                );
            }
        }
    }
    out
}

/// The status page for people: plain HTML whose script renders `status.json` every 2 s.
const STATUS_PAGE: &str = include_str!("status.html");

/// `GET /status.json`: the worker's groups, readiness and owned partitions.
fn status_json(view: &dyn WorkerView) -> String {
    let not_ready = view.not_ready();
    serde_json::json!({
        "groups": view.groups(),
        "live": view.live(),
        "ready": not_ready.is_none(),
        "not_ready": not_ready,
        "now_ms": crate::wall_clock::now_ms(),
        "partitions": view.partitions(),
    })
    .to_string()
}

/// Answers `GET /state/{store}/{key}[?topic=T]`: off without a configured token, 401 without
/// the right bearer token (compared in constant time), then the owned partition's value (200),
/// 404 when it does not hold the key, 421 with the owning partition when another worker owns
/// it.
async fn state_query(
    view: &Arc<dyn WorkerView>,
    token: Option<&str>,
    bearer: Option<&str>,
    path: &str,
    query: &str,
) -> (&'static str, &'static str, String) {
    const JSON: &str = "application/json";
    let error = |status, message: String| {
        (
            status,
            JSON,
            serde_json::json!({ "error": message }).to_string(),
        )
    };
    let Some(token) = token else {
        return error(
            "404 Not Found",
            "state queries are off: set WEIR_HTTP_TOKEN to turn them on".into(),
        );
    };
    if !bearer.is_some_and(|b| same_bytes(b.as_bytes(), token.as_bytes())) {
        return error(
            "401 Unauthorized",
            "send the worker's token: Authorization: Bearer <WEIR_HTTP_TOKEN>".into(),
        );
    }
    let Some((store, key)) = path
        .strip_prefix("/state/")
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(s, k)| Some((percent_decode(s)?, percent_decode(k)?)))
        .filter(|(s, k)| !s.is_empty() && !k.is_empty())
    else {
        return error(
            "400 Bad Request",
            "expected /state/{store}/{key} (percent-encoded)".into(),
        );
    };
    let topic = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("topic="))
        .and_then(percent_decode);
    let view = Arc::clone(view);
    let answer =
        tokio::task::spawn_blocking(move || view.state(topic.as_deref(), &store, &key)).await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => return error("500 Internal Server Error", e.to_string()),
    };
    match answer {
        StateAnswer::Found {
            topic,
            partition,
            value,
        } => (
            "200 OK",
            JSON,
            format!(
                "{{\"topic\":{},\"partition\":{partition},\"value\":{value}}}",
                serde_json::Value::String(topic)
            ),
        ),
        StateAnswer::Absent { topic, partition } => (
            "404 Not Found",
            JSON,
            serde_json::json!({ "topic": topic, "partition": partition, "error": "no such key" })
                .to_string(),
        ),
        StateAnswer::NotOwned { topic, partition } => (
            "421 Misdirected Request",
            JSON,
            serde_json::json!({
                "topic": topic, "partition": partition,
                "error": "another worker owns this key's partition"
            })
            .to_string(),
        ),
        StateAnswer::Restoring { topic, partition } => (
            "503 Service Unavailable",
            JSON,
            serde_json::json!({
                "topic": topic, "partition": partition,
                "error": "this key's partition is being restored from its changelog: ask again soon"
            })
            .to_string(),
        ),
        StateAnswer::Invalid(m) => error("400 Bad Request", m),
        StateAnswer::Unavailable(m) => error("503 Service Unavailable", m),
    }
}

/// Equal bytes, in time independent of where they differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// `%XX`-decoded UTF-8 text (`+` stays `+`); `None` when malformed.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            let hex = std::str::from_utf8(&hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// A per-partition series: name, help, and its value for a row (none: not exported yet).
type Column = (
    &'static str,
    &'static str,
    fn(&PartitionRow) -> Option<String>,
);

const PARTITION_COLUMNS: [Column; 10] = [
    (
        CONSUMER_LAG,
        "High watermark minus the next offset to process (from SQLite).",
        |r| r.lag.map(|l| l.to_string()),
    ),
    (
        CONSUMER_LAG_SECONDS,
        "Age of the oldest record not yet committed; 0 when caught up.",
        |r| Some(format!("{:.3}", r.lag_seconds)),
    ),
    (
        QUEUE_DEPTH,
        "Records waiting in the partition's queue.",
        |r| Some(r.depth.to_string()),
    ),
    (QUEUE_CAPACITY, "Capacity of the partition's queue.", |r| {
        Some(r.capacity.to_string())
    }),
    (
        PARTITION_PAUSED,
        "1 while the partition is paused because its queue is full.",
        |r| Some(u8::from(r.paused).to_string()),
    ),
    (
        PARTITION_RESTORING,
        "1 while the partition's store is being rebuilt from its changelog.",
        |r| Some(u8::from(r.restoring).to_string()),
    ),
    (
        PARTITION_UNREADABLE,
        "1 while records wait on the partition that cannot be read (the log says why).",
        |r| Some(u8::from(r.unreadable.is_some()).to_string()),
    ),
    (
        PARTITION_EMITS_REJECTED,
        "1 while the broker rejects the partition's committed emits for good (the log and /health/ready say why).",
        |r| Some(u8::from(r.emits_rejected.is_some()).to_string()),
    ),
    (
        PARTITION_PROCESSED,
        "Records committed since the partition was assigned to this worker.",
        |r| Some(r.processed.to_string()),
    ),
    (
        PARTITION_WATERMARK_SECONDS,
        "The partition's event-time watermark (largest event time seen), in seconds since the epoch.",
        |r| {
            r.event_watermark_ms
                .map(|w| format!("{:.3}", w as f64 / 1000.0))
        },
    ),
];

fn gauge_header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

/// Serves the endpoints until the task is aborted; `/state/...` only with a `token`.
pub(crate) async fn serve(
    listener: TcpListener,
    view: Arc<dyn WorkerView>,
    token: Option<Arc<str>>,
) {
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                let (view, token) = (Arc::clone(&view), token.clone());
                tokio::spawn(async move {
                    if let Err(e) = answer(sock, view, token.as_deref()).await {
                        tracing::debug!("metrics request: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(
    mut sock: TcpStream,
    view: Arc<dyn WorkerView>,
    token: Option<&str>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request not received"))??;
    let request = String::from_utf8_lossy(&buf);
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, content_type, body) = match (method, path) {
        ("GET", p) if p.starts_with("/state/") => {
            let bearer = request
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
                .and_then(|(_, v)| v.trim().strip_prefix("Bearer "))
                .map(str::trim);
            state_query(&view, token, bearer, p, query).await
        }
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", render(&*view)),
        ("GET", "/") => ("200 OK", "text/html; charset=utf-8", STATUS_PAGE.to_owned()),
        ("GET", "/status.json") => ("200 OK", "application/json", status_json(&*view)),
        ("GET", "/health/live") => {
            if view.live() {
                ("200 OK", "text/plain", "live\n".to_owned())
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    "stopped\n".to_owned(),
                )
            }
        }
        ("GET", "/health/ready") => match view.not_ready() {
            None => ("200 OK", "text/plain", "ready\n".to_owned()),
            Some(why) => (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /, /status.json, /metrics, /health/live or /health/ready\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let challenge = if status.starts_with("401") {
        "WWW-Authenticate: Bearer realm=\"weir\"\r\n"
    } else if status.starts_with("503") && path.starts_with("/state/") {
        // A restore or an unknown partition count: passing.
        "Retry-After: 1\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{challenge}Connection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}
