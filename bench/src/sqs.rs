//! The SQS run (`WEIR_BROKERS=sqs://`, with the AWS configuration in the environment): each
//! scenario gets a queue of its own, filled with the backlog (ten messages a request, 16
//! requests in flight), since a queue is emptied by whoever reads it. The ceiling is `raw-sqs`:
//! weir's receive pattern without weir (`WEIR_SQS_RECEIVES` receives of ten in flight, 4 by
//! default), each receive's messages deleted in one `DeleteMessageBatch`. The weir scenarios
//! run unchanged on it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use futures::stream::{FuturesUnordered, StreamExt};

use crate::data::words_of;
use crate::probe::Probe;

pub(crate) use weir::state::sqs::is_sqs;

/// The scenarios of an SQS run, with `all`: the raw consumer first and last.
pub(crate) const SCENARIOS: &[&str] = &["raw-sqs", "weir-stateless", "weir-keyed-count", "raw-sqs"];

/// Requests in flight while filling a queue.
const SENDS_IN_FLIGHT: usize = 16;

async fn client() -> Result<Client, String> {
    weir::state::sqs::connect(Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())
}

fn failed(e: &(dyn std::error::Error + 'static)) -> String {
    weir::state::sqs::describe(e)
}

/// Creates queue `queue` and sends `n` records of `keys` keys to it.
pub(crate) async fn prepare(queue: &str, n: u64, keys: u64) -> Result<(), String> {
    let client = client().await?;
    let url = client
        .create_queue()
        .queue_name(queue)
        .send()
        .await
        .map_err(|e| failed(&e))?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    let mut sends = FuturesUnordered::new();
    for start in (0..n).step_by(10) {
        let entries: Vec<SendMessageBatchRequestEntry> = (start..(start + 10).min(n))
            .filter_map(|i| {
                let key = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(format!("k{}", i % keys.max(1)))
                    .build()
                    .ok()?;
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(words_of(i))
                    .message_attributes("key", key)
                    .build()
                    .ok()
            })
            .collect();
        sends.push(
            client
                .send_message_batch()
                .queue_url(&url)
                .set_entries(Some(entries))
                .send(),
        );
        if sends.len() >= SENDS_IN_FLIGHT {
            if let Some(sent) = sends.next().await {
                check_sent(sent)?;
            }
        }
    }
    while let Some(sent) = sends.next().await {
        check_sent(sent)?;
    }
    Ok(())
}

fn check_sent<E: std::error::Error + 'static, R: std::fmt::Debug + 'static>(
    sent: Result<
        aws_sdk_sqs::operation::send_message_batch::SendMessageBatchOutput,
        aws_sdk_sqs::error::SdkError<E, R>,
    >,
) -> Result<(), String> {
    let sent = sent.map_err(|e| failed(&e))?;
    match sent.failed().first() {
        Some(f) => Err(format!("a send failed: {} {:?}", f.code(), f.message())),
        None => Ok(()),
    }
}

/// Reads the `n` records of queue `queue` as weir does, without weir.
pub(crate) async fn raw(queue: &str, n: u64, probe: &Arc<Probe>) -> Result<(), String> {
    let client = client().await?;
    let url = client
        .get_queue_url()
        .queue_name(queue)
        .send()
        .await
        .map_err(|e| failed(&e))?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    let receives: usize = std::env::var("WEIR_SQS_RECEIVES")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(4);
    let one = |client: Client, url: String, probe: Arc<Probe>| async move {
        while probe.committed.load(Ordering::Relaxed) < n {
            let received = client
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .map_err(|e| failed(&e))?;
            let messages = received.messages.unwrap_or_default();
            if messages.is_empty() {
                continue;
            }
            probe.first.get_or_init(std::time::Instant::now);
            let timestamps: Vec<i64> = messages
                .iter()
                .map(|m| {
                    m.attributes()
                        .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0)
                })
                .collect();
            let entries: Vec<DeleteMessageBatchRequestEntry> = messages
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle()?)
                        .build()
                        .ok()
                })
                .collect();
            client
                .delete_message_batch()
                .queue_url(&url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| failed(&e))?;
            probe
                .done
                .fetch_add(timestamps.len() as u64, Ordering::Relaxed);
            probe.commit(timestamps.into_iter());
        }
        Ok::<(), String>(())
    };
    let tasks: Vec<_> = (0..receives)
        .map(|_| tokio::spawn(one(client.clone(), url.clone(), Arc::clone(probe))))
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}
