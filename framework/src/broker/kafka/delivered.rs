//! librdkafka's messages as deliveries.

use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::inbound::Delivered;

impl Delivered for BorrowedMessage<'_> {
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

    fn for_each_header(&self, f: &mut dyn FnMut(&str, Option<&[u8]>)) {
        if let Some(headers) = self.headers() {
            for h in headers.iter() {
                f(h.key, h.value);
            }
        }
    }
}
