//! A message of a queue's lane (RabbitMQ, SQS), copied out of its client and numbered by the
//! source as the lane's next delivery: queues have no positions of their own. (A record of a
//! RabbitMQ stream, which has positions, is one too, without [`Queued`].)

use std::sync::Arc;

use crate::inbound::{Delivered, Queued};

/// What a queue's client read of a message.
#[derive(Debug, Default)]
pub(crate) struct QueueMessage {
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Option<Vec<u8>>,
    pub(crate) headers: Vec<(String, Option<Vec<u8>>)>,
}

/// A message of a lane, numbered.
#[derive(Debug)]
pub(crate) struct QueueDelivery {
    topic: Arc<str>,
    lane: i32,
    position: i64,
    message: QueueMessage,
    queued: Option<Queued>,
}

impl QueueDelivery {
    pub(crate) fn new(
        topic: Arc<str>,
        lane: i32,
        position: i64,
        message: QueueMessage,
        queued: Queued,
    ) -> Self {
        Self {
            topic,
            lane,
            position,
            message,
            queued: Some(queued),
        }
    }

    /// A record of a log (a RabbitMQ stream) at `position`: not a queue's message, so nothing
    /// to recognise as a redelivery.
    #[cfg(feature = "rabbitmq")]
    pub(crate) fn logged(topic: Arc<str>, lane: i32, position: i64, message: QueueMessage) -> Self {
        Self {
            topic,
            lane,
            position,
            message,
            queued: None,
        }
    }
}

impl Delivered for QueueDelivery {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn partition(&self) -> i32 {
        self.lane
    }

    fn offset(&self) -> i64 {
        self.position
    }

    fn timestamp_ms(&self) -> Option<i64> {
        self.message.timestamp_ms
    }

    fn key(&self) -> Option<&[u8]> {
        self.message.key.as_deref()
    }

    fn payload(&self) -> Option<&[u8]> {
        self.message.payload.as_deref()
    }

    fn headers(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.message
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
    }

    fn queued(&self) -> Option<Queued> {
        self.queued.clone()
    }
}
