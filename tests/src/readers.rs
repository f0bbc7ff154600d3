//! Reading topics back: every record of a topic, and their headers.

use std::time::Duration;

use rdkafka::config::ClientConfig;

use crate::broker::unique;

/// [`read_all`] over every partition `topic` has: a topic several tests share (an example's
/// output topic) may have been created by another test, with another partition count.
pub fn read_every_partition(bootstrap: &str, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("client");
    let partitions = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata")
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len() as i32);
    read_all(bootstrap, topic, partitions)
}

/// Every record of `topic` (with `partitions` partitions), read from the beginning to its end
/// (a partition EOF: tansu's ListOffsets answer can be short of the end, a fetch response's
/// high watermark is not); panics after 60 s.
pub fn read_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut at_end = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while at_end.len() < partitions as usize {
        assert!(
            std::time::Instant::now() < deadline,
            "reading {topic}: {} records, partitions at their end {at_end:?}",
            out.len()
        );
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(m.detach()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// The value of header `name` of `m`, as text.
pub fn header(m: &rdkafka::message::OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::{Headers, Message};
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}
