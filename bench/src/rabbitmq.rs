//! The RabbitMQ run (`WEIR_BROKERS=amqp://...`): each scenario gets a topic of its own,
//! declared as weir declares one (a consistent-hash exchange and `--partitions` quorum queues
//! with single active consumer) and filled with the backlog (`lapin`, publisher confirms), since
//! a queue is emptied by whoever reads it. The ceiling is `raw-amqp`: one `lapin` consumer per
//! lane queue with weir's prefetch (40,000), acknowledging every 500 messages (`multiple`),
//! all lanes at once. The weir scenarios run unchanged on it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ConnectionProperties};

use crate::data::words_of;
use crate::probe::Probe;

pub(crate) use weir::state::rabbitmq::is_amqp;

/// The scenarios of a RabbitMQ run, with `all`: the raw consumer first and last.
pub(crate) const SCENARIOS: &[&str] =
    &["raw-amqp", "weir-stateless", "weir-keyed-count", "raw-amqp"];

/// weir's default prefetch (its queue capacity).
const PREFETCH: u16 = 40_000;
/// Messages the raw consumer acknowledges at once.
const ACK_EVERY: usize = 500;

async fn connect(url: &str) -> Result<lapin::Connection, String> {
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    lapin::Connection::connect(url, properties)
        .await
        .map_err(|e| e.to_string())
}

/// Declares topic `topic` with `lanes` lanes and publishes `n` records of `keys` keys to it.
pub(crate) async fn prepare(
    url: &str,
    topic: &str,
    lanes: i32,
    n: u64,
    keys: u64,
) -> Result<(), String> {
    weir::state::rabbitmq::declare_topic(url, topic, lanes, None, Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    let records = (0..n).map(|i| (format!("k{}", i % keys.max(1)), format!("m{i}"), i));
    publish(url, topic, records).await
}

/// Publishes one record to each of a few hundred keys of `topic`: a worker takes a RabbitMQ
/// lane only at a message the broker delivers to it, so a worker that comes after the backlog
/// was read (the restore) needs new ones.
pub(crate) async fn publish_more(url: &str, topic: &str) -> Result<(), String> {
    let records = (0..256).map(|i| (format!("more{i}"), format!("more{i}"), i));
    publish(url, topic, records).await
}

/// Publishes `records` (routing key, message id, and the number their words are made from)
/// to exchange `topic`, persistent, with confirms.
async fn publish(
    url: &str,
    topic: &str,
    records: impl Iterator<Item = (String, String, u64)>,
) -> Result<(), String> {
    let connection = connect(url).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut confirms = Vec::with_capacity(4096);
    for (key, id, i) in records {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(id.into())
            .with_timestamp((crate::probe::now_ms() / 1000) as u64);
        let confirm = channel
            .basic_publish(
                topic,
                &key,
                BasicPublishOptions::default(),
                words_of(i).as_bytes(),
                properties,
            )
            .await
            .map_err(|e| e.to_string())?;
        confirms.push(confirm);
        if confirms.len() == 4096 {
            for c in futures::future::join_all(confirms.drain(..)).await {
                c.map_err(|e| e.to_string())?;
            }
        }
    }
    for c in futures::future::join_all(confirms).await {
        c.map_err(|e| e.to_string())?;
    }
    let _ = connection.close(200, "done").await;
    Ok(())
}

/// Reads the `n` records of `topic`'s `lanes` lane queues with one raw consumer per lane.
pub(crate) async fn raw(
    url: &str,
    topic: &str,
    lanes: i32,
    n: u64,
    probe: &Arc<Probe>,
) -> Result<(), String> {
    let connection = Arc::new(connect(url).await?);
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let mut consumer = channel
            .basic_consume(
                &format!("{topic}.{lane}"),
                "raw-amqp",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let probe = Arc::clone(probe);
        tasks.push(tokio::spawn(async move {
            let mut timestamps = Vec::with_capacity(ACK_EVERY);
            let mut last_tag = None;
            let mut bytes = 0;
            while probe.committed.load(Ordering::Relaxed) < n {
                let next = tokio::time::timeout(Duration::from_millis(50), consumer.next()).await;
                let idle = next.is_err();
                if let Ok(next) = next {
                    let d = next
                        .ok_or("the consumer ended")?
                        .map_err(|e| e.to_string())?;
                    probe.first.get_or_init(Instant::now);
                    bytes += d.data.len();
                    let ts = d.properties.timestamp().map_or(0, |s| s as i64 * 1000);
                    timestamps.push(ts);
                    last_tag = Some(d.delivery_tag);
                }
                if timestamps.len() >= ACK_EVERY || (idle && !timestamps.is_empty()) {
                    if let Some(tag) = last_tag.take() {
                        channel
                            .basic_ack(tag, BasicAckOptions { multiple: true })
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    probe
                        .done
                        .fetch_add(timestamps.len() as u64, Ordering::Relaxed);
                    probe.commit(timestamps.drain(..));
                }
            }
            std::hint::black_box(bytes);
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let _ = connection.close(200, "done").await;
    Ok(())
}
