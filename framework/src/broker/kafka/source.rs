//! A Kafka consumer as the worker's [`Source`]: a lane is a topic's partition, a position an
//! offset, and settling commits offsets to the group.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::BorrowedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::broker::{Lane, Source};
use crate::error::Result;

/// How long a seek may take (a local operation of librdkafka's).
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);

impl<C: ConsumerContext> Source for BaseConsumer<C> {
    type Delivery<'s>
        = BorrowedMessage<'s>
    where
        Self: 's;

    fn subscribe(&self, topics: &[&str]) -> Result<()> {
        Consumer::subscribe(self, topics).map_err(super::error)
    }

    fn poll(&self, timeout: Duration) -> Option<Result<BorrowedMessage<'_>, String>> {
        BaseConsumer::poll(self, timeout).map(|r| r.map_err(|e| e.to_string()))
    }

    fn pause(&self, lane: Lane<'_>) -> Result<(), String> {
        Consumer::pause(self, &one(lane)).map_err(|e| e.to_string())
    }

    fn resume(&self, lane: Lane<'_>) -> Result<(), String> {
        Consumer::resume(self, &one(lane)).map_err(|e| e.to_string())
    }

    fn seek(&self, lane: Lane<'_>, next: Option<i64>) -> Result<(), String> {
        let offset = next.map_or(Offset::Beginning, Offset::Offset);
        Consumer::seek(self, lane.topic, lane.partition, offset, SEEK_TIMEOUT)
            .map_err(|e| e.to_string())
    }

    fn settle(&self, done: &[(Lane<'_>, i64)]) -> Result<(), String> {
        if done.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (lane, next) in done {
            tpl.add_partition_offset(lane.topic, lane.partition, Offset::Offset(*next))
                .map_err(|e| e.to_string())?;
        }
        Consumer::commit(self, &tpl, CommitMode::Async).map_err(|e| e.to_string())
    }
}

fn one(lane: Lane<'_>) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(lane.topic, lane.partition);
    tpl
}
