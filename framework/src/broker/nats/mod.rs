//! NATS JetStream, through `async-nats`. A topic is a stream, a lane one of its partition
//! subjects (`names`), read by a durable pull consumer of the group per lane whose priority
//! group pins one client at a time (`source`); weir publishes with a `Nats-Msg-Id` so the
//! stream's duplicate window drops what is sent again (`publisher`).

mod core_source;
mod log_reader;
pub(crate) mod names;
mod publisher;
mod source;
mod streams;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;

use crate::error::{Error, Result};

pub(crate) use core_source::CoreSource;
pub(crate) use log_reader::{LogReader, LogRecord};
pub(crate) use publisher::Publisher;
pub(crate) use source::NatsSource;

/// Publishes waiting for the stream's acknowledgement at once; more wait for a slot (an
/// outbox round sends up to 5,000 rows together).
const MAX_ACK_INFLIGHT: usize = 8192;

/// A failure of the NATS client, as weir's error.
pub(crate) fn error(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    crate::error::BrokerError::new("nats", e).into()
}

/// How a worker connects to NATS and lays out what it creates.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `nats://host:port[,host:port...]` (`tls://` for TLS), with user and password or a
    /// token in the URL.
    pub(crate) servers: String,
    /// An NKey/JWT credentials file (`WEIR_NATS_CREDS`).
    pub(crate) creds: Option<std::path::PathBuf>,
    /// The lanes of a stream weir creates (`WEIR_PARTITIONS`).
    pub(crate) partitions: i32,
    /// How long the server keeps a lane pinned to a worker that stopped pulling, and how long
    /// a delivered message waits for its acknowledgement before it is delivered again: the
    /// bound of a hand-off after a worker died.
    pub(crate) hand_off: Duration,
}

/// A connection to the NATS servers, shared by the worker's clients.
#[derive(Clone)]
pub(crate) struct Connection(Arc<Inner>);

impl std::ops::Deref for Connection {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub(crate) struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    settings: Settings,
    /// What is known of each topic's stream.
    streams: Mutex<HashMap<String, streams::Layout>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("nats::Connection")
            .field("servers", &self.settings.servers)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects, waiting up to `timeout` for a server to answer; reconnects for ever after.
    pub(crate) async fn connect(settings: Settings, timeout: Duration) -> Result<Self> {
        let mut options = async_nats::ConnectOptions::new()
            .name("weir")
            .connection_timeout(timeout.min(Duration::from_secs(10)))
            .max_reconnects(None)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Disconnected => {
                        tracing::warn!("disconnected from the NATS server; reconnecting")
                    }
                    async_nats::Event::Connected => tracing::info!("connected to a NATS server"),
                    other => tracing::debug!("NATS client: {other}"),
                }
            });
        if let Some(path) = &settings.creds {
            options = options.credentials_file(path).await.map_err(|e| {
                Error::config(
                    "nats_creds (WEIR_NATS_CREDS)",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
        }
        if settings.servers.starts_with("tls://") {
            options = options.require_tls(true);
        }
        let servers: Vec<async_nats::ServerAddr> = settings
            .servers
            .split(',')
            .map(|s| s.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|e| {
                Error::config(
                    "brokers (WEIR_BROKERS)",
                    format!("{:?} is not a list of NATS servers: {e}", settings.servers),
                )
            })?;
        let connect = options.connect(servers);
        let unreachable = |cause: String| {
            Error::config(
                "brokers (WEIR_BROKERS)",
                format!(
                    "no NATS server answered at {} within {timeout:?}: {cause}",
                    settings.servers
                ),
            )
        };
        let client = match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable("the connection timed out".into())),
        };
        let js = jetstream::ContextBuilder::new()
            .max_ack_inflight(MAX_ACK_INFLIGHT)
            .backpressure_on_inflight(true)
            .build(client.clone());
        Ok(Self(Arc::new(Inner {
            client,
            js,
            settings,
            streams: Mutex::default(),
        })))
    }

    /// The lanes of `topic` (its stream read or created before).
    pub(crate) fn lanes_of(&self, topic: &str) -> Option<i32> {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(topic)
            .map(|l| l.lanes)
    }

    fn layout(&self, topic: &str) -> Option<streams::Layout> {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(topic)
            .cloned()
    }

    /// The earliest position of `topic`'s lanes: the stream's first sequence less one, so a
    /// stream that never lost a message says 0.
    pub(crate) async fn low_watermark(&self, topic: &str) -> Result<i64, String> {
        let stream = names::stream_of(topic);
        let mut s = self
            .js
            .get_stream(&stream)
            .await
            .map_err(|e| format!("reading stream {stream}: {e}"))?;
        let info = s
            .info()
            .await
            .map_err(|e| format!("reading stream {stream}: {e}"))?;
        Ok(info.state.first_sequence.saturating_sub(1) as i64)
    }
}
