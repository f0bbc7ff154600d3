//! librdkafka's messages as deliveries.

use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::inbound::Delivered;

impl Delivered for BorrowedMessage<'_> {
    fn topic(&self) -> &str {
        Message::topic(self)
    }

    fn partition(&self) -> i32 {
        Message::partition(self)
    }

    fn offset(&self) -> i64 {
        Message::offset(self)
    }

    fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp().to_millis()
    }

    fn key(&self) -> Option<&[u8]> {
        Message::key(self)
    }

    fn payload(&self) -> Option<&[u8]> {
        Message::payload(self)
    }

    fn headers(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        Message::headers(self)
            .into_iter()
            .flat_map(|h| h.iter().map(|h| (h.key, h.value)))
    }
}
