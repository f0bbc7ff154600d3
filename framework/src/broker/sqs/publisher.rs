//! Sending to queues: emits, dead letters and late records, each with its key and headers as
//! attributes and weir's id of it (`attributes`). A FIFO queue's message group is the
//! record's key and its deduplication id weir's id, so SQS itself drops a re-send within
//! its five-minute window; on a standard queue a downstream weir recognises it by the id.

use std::collections::HashMap;

use aws_sdk_sqs::error::ProvideErrorMetadata;

use super::{Connection, attributes, describe};
use crate::broker::{Outgoing, SendError};

/// A FIFO deduplication id's longest (SQS's limit).
const MAX_DEDUPLICATION_ID: usize = 128;

/// The worker's publisher.
#[derive(Debug)]
pub(crate) struct Publisher {
    connection: Connection,
}

impl Publisher {
    pub(crate) fn new(connection: Connection) -> Self {
        Self { connection }
    }

    /// Sends `records` and waits for SQS's answers; the first failure if any failed. A FIFO
    /// queue keeps the order of a message group only among messages sent one after another,
    /// so each group's records are sent in turn; everything else is sent at once.
    pub(crate) async fn send_all(&self, records: &[Outgoing<'_>]) -> Result<(), SendError> {
        let mut chains: Vec<Vec<&Outgoing<'_>>> = Vec::new();
        let mut chain_of: HashMap<(&str, String), usize> = HashMap::new();
        for r in records {
            if r.topic.ends_with(".fifo") {
                let chain = *chain_of
                    .entry((r.topic, message_group(r.key)))
                    .or_insert_with(|| {
                        chains.push(Vec::new());
                        chains.len() - 1
                    });
                chains[chain].push(r);
            } else {
                chains.push(vec![r]);
            }
        }
        let sent = futures::future::join_all(chains.iter().map(|chain| async move {
            for r in chain {
                self.send(**r).await?;
            }
            Ok(())
        }))
        .await;
        sent.into_iter().collect()
    }

    /// Sends `r` to its topic's queue (created when missing: a handler's emits) and waits for
    /// SQS's answer.
    pub(crate) async fn send(&self, r: Outgoing<'_>) -> Result<(), SendError> {
        let failed = |permanent: bool, message: String| SendError {
            permanent,
            message: format!("sending to queue {}: {message}", r.topic),
        };
        let queue = self
            .connection
            .queue(r.topic, None)
            .await
            .map_err(|e| failed(false, e.to_string()))?;
        let headers = r.headers.to_vec();
        let id = crate::broker::message_id(r.topic, &headers);
        let encoded = attributes::encode(r.key, r.value, &headers, id.as_deref());
        let mut send = self
            .connection
            .client
            .send_message()
            .queue_url(&queue.url)
            .message_body(encoded.body)
            .set_message_attributes(Some(encoded.attributes));
        if queue.fifo {
            send = send.message_group_id(message_group(r.key));
            if let Some(id) = &id {
                send = send.message_deduplication_id(deduplication_id(id));
            }
        }
        match send.send().await {
            Ok(_) => {
                self.connection.answered(true);
                Ok(())
            }
            Err(e) => {
                self.connection.failed(&e);
                // What SQS refuses as invalid is refused again: the record must change.
                let permanent = e.as_service_error().is_some_and(|s| {
                    matches!(
                        s.code(),
                        Some(
                            "InvalidParameterValue"
                                | "InvalidMessageContents"
                                | "InvalidAttributeName"
                                | "InvalidAttributeValue"
                        )
                    ) || s.is_invalid_message_contents()
                });
                Err(failed(permanent, describe(&e)))
            }
        }
    }
}

/// The FIFO message group of a record with `key`: the key, or `weir` for a record without one.
fn message_group(key: Option<&[u8]>) -> String {
    key.map(|k| String::from_utf8_lossy(k).into_owned())
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| "weir".to_owned())
}

/// `id` as a FIFO deduplication id: as it is when SQS allows it, else its start and a hash of
/// all of it.
fn deduplication_id(id: &str) -> String {
    let allowed = |c: char| c.is_ascii_graphic();
    if id.len() <= MAX_DEDUPLICATION_ID && id.chars().all(allowed) {
        return id.to_owned();
    }
    let start: String = id
        .chars()
        .filter(|c| allowed(*c))
        .take(MAX_DEDUPLICATION_ID - 18)
        .collect();
    let hash = (u64::from(weir_state::wire::crc32(id.as_bytes())) << 32)
        | u64::from(weir_state::wire::murmur2(id.as_bytes()) as u32);
    format!("{start}~{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deduplication_ids_fit_sqs() {
        assert_eq!(
            deduplication_id("counts/lines/0/7/1/g"),
            "counts/lines/0/7/1/g"
        );
        let long = "t".repeat(300);
        let d = deduplication_id(&long);
        assert!(d.len() <= MAX_DEDUPLICATION_ID, "{d}");
        assert_ne!(d, deduplication_id(&"t".repeat(301)));
        assert!(
            deduplication_id("a b/é")
                .chars()
                .all(|c| c.is_ascii_graphic())
        );
    }
}
