//! The command's NATS client: a runtime of its own for each command, and a connection that
//! gives up after [`STALL`] with an error that names the servers.

use std::time::Duration;

use crate::error::{Error, Result};

/// How long the servers may take to answer.
pub(crate) const STALL: Duration = Duration::from_secs(30);

/// A NATS client's failure, as the command's error (exit code 4).
pub(crate) fn failed(e: impl std::fmt::Display) -> Error {
    Error::Nats(e.to_string())
}

/// A runtime for one command's NATS requests.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Output)
}

/// A JetStream context on `servers` (`nats://host:port[,...]`).
pub(crate) async fn connect(servers: &str) -> Result<async_nats::jetstream::Context> {
    let client = tokio::time::timeout(STALL, async_nats::connect(servers))
        .await
        .map_err(|_| {
            Error::Nats(format!(
                "no NATS server answered at {servers} within {STALL:?}"
            ))
        })?
        .map_err(failed)?;
    Ok(async_nats::jetstream::new(client))
}
