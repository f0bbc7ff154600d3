//! `weir query`: a key's value from running workers, over their `/state/{store}/{key}` route.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use clap::Args;
use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    /// The workers' metrics addresses (WEIR_METRICS_ADDR), comma-separated, e.g.
    /// `http://10.0.0.5:9464,http://10.0.0.6:9464`.
    #[arg(long, value_delimiter = ',', required = true)]
    workers: Vec<String>,
    /// The input topic, when the workers consume several.
    #[arg(long)]
    topic: Option<String>,
    /// The store.
    store: String,
    /// The key (text).
    key: String,
}

/// How long a worker may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the token comes from: the environment only, never the command line (which other
/// users of the machine can read in the process list).
const TOKEN_ENV: &str = "WEIR_HTTP_TOKEN";

pub(crate) fn run(args: &QueryArgs) -> Result<()> {
    let token = std::env::var(TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Error::Input(format!(
                "set {TOKEN_ENV} to the workers' token (it is not taken from the command line)"
            ))
        })?;
    let mut path = format!(
        "/state/{}/{}",
        percent_encode(&args.store),
        percent_encode(&args.key)
    );
    if let Some(t) = &args.topic {
        path.push_str(&format!("?topic={}", percent_encode(t)));
    }
    let mut misdirected = Vec::new();
    for worker in &args.workers {
        let (status, body) = get(worker, &path, &token)?;
        let json: Value = serde_json::from_str(&body).unwrap_or(Value::String(body.clone()));
        match status {
            200 => {
                let mut out = json;
                out["worker"] = Value::String(worker.clone());
                writeln!(std::io::stdout().lock(), "{out}")?;
                return Ok(());
            }
            404 if json.get("partition").is_some() => {
                return Err(Error::NotFound(format!(
                "no key {:?} in store {:?}: {worker} owns its partition {} and does not hold it",
                args.key, args.store, json["partition"]
            )))
            }
            421 => misdirected.push(json["partition"].to_string()),
            503 => {
                let why = json["error"].as_str().map_or(body.clone(), str::to_owned);
                return Err(Error::Unreachable(format!(
                    "{worker} cannot answer now, try again: {why}"
                )));
            }
            401 => {
                return Err(Error::Input(format!(
                    "{worker} refused the token (WEIR_HTTP_TOKEN)"
                )))
            }
            _ => {
                let why = json["error"].as_str().map_or(body.clone(), str::to_owned);
                return Err(Error::Input(format!("{worker} answered {status}: {why}")));
            }
        }
    }
    Err(Error::NotFound(format!(
        "none of the {} workers asked owns the key's partition ({}): ask the others",
        args.workers.len(),
        misdirected.first().map_or("?", String::as_str)
    )))
}

/// Reads the answer to its end (a TLS peer may close without a close_notify: what came counts).
fn read_all(stream: &mut impl Read, out: &mut String) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    match stream.read_to_end(&mut bytes) {
        Ok(_) => {}
        Err(e) if !bytes.is_empty() && e.kind() != std::io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    out.push_str(&String::from_utf8_lossy(&bytes));
    Ok(())
}

/// `GET path` of `worker` (`http://host:port`, `https://host:port` or `host:port`) with the
/// bearer token: status and body. https verifies the worker's certificate against the
/// system's CAs (`SSL_CERT_FILE` / `SSL_CERT_DIR` name others).
fn get(worker: &str, path: &str, token: &str) -> Result<(u16, String)> {
    let (tls, host) = match worker.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, worker.trim_start_matches("http://")),
    };
    let host = host.trim_end_matches('/');
    let unreachable = |e: std::io::Error| Error::Unreachable(format!("{worker}: {e}"));
    let addr = host
        .to_socket_addrs()
        .map_err(unreachable)?
        .next()
        .ok_or_else(|| Error::Unreachable(format!("{worker}: no address")))?;
    let sock = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(unreachable)?;
    sock.set_read_timeout(Some(TIMEOUT)).map_err(unreachable)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let mut response = String::new();
    if tls {
        let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let failed = |e: &dyn std::fmt::Display| Error::Unreachable(format!("{worker}: TLS: {e}"));
        let connector = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls())
            .map_err(|e| failed(&e))?
            .build();
        let mut stream = connector.connect(name, sock).map_err(|e| failed(&e))?;
        stream.write_all(request.as_bytes()).map_err(unreachable)?;
        read_all(&mut stream, &mut response).map_err(unreachable)?;
    } else {
        let mut sock = sock;
        sock.write_all(request.as_bytes()).map_err(unreachable)?;
        read_all(&mut sock, &mut response).map_err(unreachable)?;
    }
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Unreachable(format!("{worker}: not an HTTP answer")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// Percent-encodes all but unreserved characters (RFC 3986).
fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
