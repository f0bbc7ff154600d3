//! Publishing to streams with the server's acknowledgement: emits, dead letters and late
//! records, each with a `Nats-Msg-Id` from weir's headers (`broker::message_id`).

use std::collections::BTreeSet;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::{Connection, names};
use crate::broker::{Outgoing, SendError};

/// Acknowledgements a send of many records waits for at once. They are waited for while
/// later records are published, so the client's own bound on them (`MAX_ACK_INFLIGHT`,
/// shared by the lanes) is never held by a send that cannot go on.
const ACKS_IN_FLIGHT: usize = 1024;

/// The worker's publisher.
#[derive(Debug, Clone)]
pub(crate) struct Publisher(Connection);

impl Publisher {
    pub(crate) fn new(connection: Connection) -> Self {
        Self(connection)
    }

    /// Publishes `records`, in their order, and waits for the server's acknowledgement of all
    /// of them; the first failure if any failed. Without a partition, the stream chooses the
    /// lane (by key); with one (changelog records), a record is written to the lane's subject.
    /// Headers are text on NATS (a value that is not UTF-8 is sent with replacement
    /// characters).
    ///
    /// The streams the records go to are read (or made, as weir makes its topics' streams)
    /// before any of them is published: a record sent again after its stream was made
    /// would land after the records that followed it.
    pub(crate) async fn send_all(&self, records: &[Outgoing<'_>]) -> Result<(), SendError> {
        self.make_streams(records).await?;
        let mut acks = FuturesUnordered::new();
        for r in records {
            // Acknowledgements are waited for while publishing: a publish may wait for one.
            let publish = self.publish(r);
            tokio::pin!(publish);
            let (subject, ack) = loop {
                tokio::select! {
                    biased;
                    published = &mut publish => break published?,
                    Some(acked) = acks.next() => acked?,
                }
            };
            acks.push(async move {
                ack.await
                    .map(drop)
                    .map_err(|e| self.failed(r.topic, &subject, e))
            });
            while acks.len() >= ACKS_IN_FLIGHT {
                acks.next().await.transpose()?;
            }
        }
        while let Some(acked) = acks.next().await {
            acked?;
        }
        Ok(())
    }

    /// Reads or makes the streams of `records`' topics (a handler's emits may go to a topic
    /// no stream takes yet).
    async fn make_streams(&self, records: &[Outgoing<'_>]) -> Result<(), SendError> {
        let topics: BTreeSet<(&str, bool)> = records
            .iter()
            .map(|r| (r.topic, r.partition.is_some()))
            .collect();
        for (topic, changelog) in topics {
            let made = match changelog {
                true => self.0.changelog_stream(topic).await,
                false => self.0.stream(topic, true).await.map(drop),
            };
            made.map_err(|e| SendError {
                permanent: false,
                message: format!(
                    "publishing to topic {topic}: no stream takes it, and making one failed: {e}"
                ),
            })?;
        }
        Ok(())
    }

    /// Publishes `r`; its subject and the acknowledgement to wait for.
    async fn publish(&self, r: &Outgoing<'_>) -> Result<(String, PublishAckFuture), SendError> {
        let subject = match r.partition {
            Some(lane) => names::lane_subject(r.topic, lane, r.key),
            None => names::publish_subject(r.topic, r.key),
        };
        let listed = r.headers.to_vec();
        let mut headers = HeaderMap::new();
        for (name, value) in &listed {
            let value = value.map(String::from_utf8_lossy).unwrap_or_default();
            headers.append(*name, value.as_ref());
        }
        let mut message = PublishMessage::build()
            .payload(r.value.map(|v| v.to_vec().into()).unwrap_or_default())
            .headers(headers);
        let id = match r.partition {
            Some(_) => names::changelog_message_id(&subject, &listed),
            None => crate::broker::message_id(r.topic, &listed),
        };
        if let Some(id) = id {
            message = message.message_id(id);
        }
        match self.0.js.send_publish(subject.clone(), message).await {
            Ok(ack) => Ok((subject, ack)),
            Err(e) => Err(self.failed(r.topic, &subject, e)),
        }
    }

    fn failed(&self, topic: &str, subject: &str, e: PublishError) -> SendError {
        // Nothing takes the subject: the stream was deleted since it was read (made again by
        // the next send), or it does not take `T.>`. Sending again fails the same way until
        // someone creates or changes it.
        let permanent = e.kind() == PublishErrorKind::StreamNotFound;
        if permanent {
            self.0.forget_stream(topic);
        }
        SendError {
            permanent,
            message: format!("publishing to {subject}: {e}"),
        }
    }
}
