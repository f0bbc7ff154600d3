//! The streams behind topics: read as they are, or created with weir's partition transform.

use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::{Config, StorageType, SubjectTransform};

use super::{Connection, names};
use crate::broker::WantedTopic;
use crate::error::{Error, Result};

/// How long the stream drops a message whose `Nats-Msg-Id` it has seen (the server's
/// default): an outbox row sent again within it lands once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The records a changelog stream keeps per key (subject): the newest, and the one before
/// it, which a restore uses when the newest belongs to a batch whose offset marker never
/// came (its writer was lost mid-flush). A restore deletes such orphans before the lane
/// writes again, so a key's last two records never both lack their marker.
const CHANGELOG_VERSIONS: i64 = 2;

/// A topic's stream as weir reads it.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) stream: String,
    pub(crate) lanes: i32,
    /// The stream has weir's partition transform (else it is one lane).
    pub(crate) partitioned: bool,
}

impl Connection {
    /// Reads `topic`'s stream, creating it (file storage, [`Settings::partitions`] lanes) when
    /// it is missing and `create` says so; `None` when it is missing and not created.
    ///
    /// [`Settings::partitions`]: super::Settings::partitions
    pub(crate) async fn stream(&self, topic: &str, create: bool) -> Result<Option<Layout>> {
        if let Some(layout) = self.layout(topic) {
            return Ok(Some(layout));
        }
        let stream = names::stream_of(topic);
        let config = match self.js.get_stream(&stream).await {
            Ok(s) => s.cached_info().config.clone(),
            Err(e) => {
                let missing = matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND);
                if !missing {
                    return Err(Error::config(
                        "brokers (WEIR_BROKERS)",
                        format!(
                            "cannot read stream {stream} (of topic {topic}): {e}; is JetStream enabled on the server?"
                        ),
                    ));
                }
                if !create {
                    return Ok(None);
                }
                self.create(&stream, self.settings.partitions).await?
            }
        };
        let lanes = config
            .subject_transform
            .as_ref()
            .and_then(|t| names::lanes_of_transform(&stream, &t.source, &t.destination));
        let layout = Layout {
            stream,
            lanes: lanes.unwrap_or(1),
            partitioned: lanes.is_some(),
        };
        self.remember(topic, layout.clone());
        Ok(Some(layout))
    }

    async fn create(&self, stream: &str, lanes: i32) -> Result<Config> {
        let (source, destination) = names::partition_transform(stream, lanes);
        self.create_with(Config {
            name: stream.to_owned(),
            subjects: vec![format!("{stream}.>")],
            subject_transform: Some(SubjectTransform {
                source,
                destination,
            }),
            storage: StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await
    }

    /// Creates changelog `topic`'s stream, when missing: subjects `S.>` with no transform
    /// (records are written to `S.<lane>.<key>`, their source's lane), and the last
    /// [`CHANGELOG_VERSIONS`] records of each key kept (NATS's compaction, at once).
    pub(crate) async fn changelog_stream(&self, topic: &str) -> Result<()> {
        if self.layout(topic).is_some() {
            return Ok(());
        }
        let stream = names::stream_of(topic);
        if self.js.get_stream(&stream).await.is_err() {
            self.create_with(Config {
                name: stream.clone(),
                subjects: vec![format!("{stream}.>")],
                max_messages_per_subject: CHANGELOG_VERSIONS,
                storage: StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await?;
        }
        self.remember(
            topic,
            Layout {
                stream,
                lanes: 1,
                partitioned: false,
            },
        );
        Ok(())
    }

    fn remember(&self, topic: &str, layout: Layout) {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(topic.to_owned(), layout);
    }

    /// Forgets what was read of `topic`'s stream (it is gone): the next use reads it again.
    pub(crate) fn forget_stream(&self, topic: &str) {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(topic);
    }

    async fn create_with(&self, config: Config) -> Result<Config> {
        let stream = &config.name;
        match self.js.create_stream(config.clone()).await {
            Ok(_) => {
                tracing::info!(%stream, "stream created");
                Ok(config)
            }
            Err(e) => match self.js.get_stream(stream).await {
                // Another worker created it first: read what it made.
                Ok(s) => Ok(s.cached_info().config.clone()),
                Err(_) => Err(Error::config(
                    "brokers (WEIR_BROKERS)",
                    format!("cannot create stream {stream}: {e}"),
                )),
            },
        }
    }

    /// Creates the missing streams of `wanted` (dead letters, late records), with as many
    /// lanes as the largest stream they are like; failures are warnings, as on Kafka.
    pub(crate) async fn create_missing(&self, wanted: Vec<WantedTopic>) {
        for w in wanted {
            let like =
                futures::future::join_all(w.partitions_like.iter().map(|t| self.stream(t, false)))
                    .await;
            let lanes = like
                .into_iter()
                .filter_map(|l| l.ok().flatten())
                .map(|l| l.lanes)
                .max()
                .unwrap_or(self.settings.partitions);
            let made = if w.compacted {
                self.changelog_stream(&w.name).await
            } else {
                let stream = names::stream_of(&w.name);
                match self.js.get_stream(&stream).await {
                    Ok(_) => Ok(()),
                    Err(_) => self.create(&stream, lanes).await.map(drop),
                }
            };
            if let Err(e) = made {
                tracing::warn!(topic = %w.name, kind = w.kind, "{e}");
            }
        }
    }
}
