//! Publishing to streams with the server's acknowledgement: emits, dead letters and late
//! records, each with a `Nats-Msg-Id` from weir's headers (`broker::message_id`).

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;

use super::{Connection, names};
use crate::broker::{Outgoing, SendError};

/// The worker's publisher.
#[derive(Debug, Clone)]
pub(crate) struct Publisher(Connection);

impl Publisher {
    pub(crate) fn new(connection: Connection) -> Self {
        Self(connection)
    }

    /// Publishes `r` to its topic's stream and waits for the acknowledgement. Without a
    /// partition the stream chooses the lane (by key); with one (changelog records) it is
    /// written to the lane's subject. Headers are text on NATS (a value that is not UTF-8 is
    /// sent with replacement characters).
    pub(crate) async fn send(&self, r: Outgoing<'_>) -> Result<(), SendError> {
        let subject = match r.partition {
            Some(lane) => names::lane_subject(r.topic, lane, r.key),
            None => names::publish_subject(r.topic, r.key),
        };
        let mut headers = HeaderMap::new();
        for (name, value) in r.headers {
            let value = value.map(String::from_utf8_lossy).unwrap_or_default();
            headers.append(*name, value.as_ref());
        }
        let mut message = PublishMessage::build()
            .payload(r.value.map(|v| v.to_vec().into()).unwrap_or_default())
            .headers(headers);
        let id = match r.partition {
            Some(_) => names::changelog_message_id(&subject, r.headers),
            None => crate::broker::message_id(r.topic, r.headers),
        };
        if let Some(id) = id {
            message = message.message_id(id);
        }
        let failed = |kind: Option<PublishErrorKind>, message: String| SendError {
            // Nothing takes the subject (the stream is missing and cannot be made): sending
            // again fails the same way until someone creates it.
            permanent: kind == Some(PublishErrorKind::StreamNotFound),
            message: format!("publishing to {subject}: {message}"),
        };
        match self.publish(&subject, message.clone()).await {
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                // A topic no stream takes yet (a handler's emits): made as weir makes its
                // topics' streams, then sent again.
                let made = match r.partition {
                    Some(_) => self.0.changelog_stream(r.topic).await,
                    None => self.0.stream(r.topic, true).await.map(drop),
                };
                made.map_err(|e| {
                    failed(
                        None,
                        format!("no stream takes it, and making one failed: {e}"),
                    )
                })?;
                self.publish(&subject, message)
                    .await
                    .map_err(|e| failed(Some(e.kind()), e.to_string()))
            }
            other => other.map_err(|e| failed(Some(e.kind()), e.to_string())),
        }
    }

    async fn publish(
        &self,
        subject: &str,
        message: PublishMessage,
    ) -> Result<(), async_nats::jetstream::context::PublishError> {
        let ack = self.0.js.send_publish(subject.to_owned(), message).await?;
        ack.await.map(|_| ())
    }
}
