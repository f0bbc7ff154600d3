//! The NATS JetStream run (`WEIR_BROKERS=nats://...`): the stream is made as weir makes one
//! (`--partitions` lanes, subjects `T.>` partitioned by key), the backlog published with
//! `async-nats`, and the ceiling is `raw-nats`: one `async-nats` pull consumer per lane
//! (ephemeral, no acknowledgements, 512 messages a pull), all lanes at once, which is the
//! most a client can take from the server. The weir scenarios run unchanged on it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;

use crate::data::words_of;
use crate::probe::Probe;

pub(crate) use weir::state::nats::is_nats;

/// The scenarios of a NATS run, with `all`: the raw consumer first and last.
pub(crate) const SCENARIOS: &[&str] =
    &["raw-nats", "weir-stateless", "weir-keyed-count", "raw-nats"];

async fn context(brokers: &str) -> Result<jetstream::Context, String> {
    let client = async_nats::connect(brokers)
        .await
        .map_err(|e| e.to_string())?;
    Ok(jetstream::new(client))
}

/// Makes stream `topic` with `lanes` lanes and publishes `n` records of `keys` keys to it.
pub(crate) async fn prepare(
    brokers: &str,
    topic: &str,
    lanes: i32,
    n: u64,
    keys: u64,
) -> Result<(), String> {
    let js = context(brokers).await?;
    js.create_stream(stream::Config {
        name: topic.to_owned(),
        subjects: vec![format!("{topic}.>")],
        subject_transform: Some(stream::SubjectTransform {
            source: format!("{topic}.*"),
            destination: format!("{topic}.{{{{partition({lanes},1)}}}}.{{{{wildcard(1)}}}}"),
        }),
        storage: if std::env::var_os("WEIR_BENCH_NATS_MEMORY").is_some() {
            stream::StorageType::Memory
        } else {
            stream::StorageType::File
        },
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut acks = Vec::with_capacity(4096);
    for i in 0..n {
        let subject = format!("{topic}.k{}", i % keys.max(1));
        let ack = js
            .publish(subject, words_of(i).into_bytes().into())
            .await
            .map_err(|e| e.to_string())?;
        acks.push(ack);
        if acks.len() == 4096 {
            for a in
                futures::future::join_all(acks.drain(..).map(std::future::IntoFuture::into_future))
                    .await
            {
                a.map_err(|e| e.to_string())?;
            }
        }
    }
    for a in
        futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await
    {
        a.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Publishes one record to each of a few hundred keys of `topic`: a worker takes a NATS lane
/// only at a message the server pins to it, so a worker that comes after the backlog was
/// read (the restore) needs new ones.
pub(crate) async fn publish_more(brokers: &str, topic: &str) -> Result<(), String> {
    let js = context(brokers).await?;
    for i in 0..256 {
        js.publish(format!("{topic}.more{i}"), words_of(i).into_bytes().into())
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Deletes the streams weir made for `group` (its changelogs), so that repeated runs on one
/// server do not leave it holding every earlier run's subjects: the server's garbage
/// collector then takes more of the 2 cores with each run.
pub(crate) async fn delete_streams_of(brokers: &str, group: &str) -> Result<(), String> {
    let js = context(brokers).await?;
    let names: Vec<String> = js
        .stream_names()
        .filter_map(|n| async move { n.ok() })
        .filter(|n| futures::future::ready(n.starts_with(group)))
        .collect()
        .await;
    for name in names {
        js.delete_stream(&name).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Messages a raw pull asks for (`WEIR_BENCH_NATS_BATCH`, default 512, as weir's).
fn batch() -> usize {
    std::env::var("WEIR_BENCH_NATS_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

/// Reads the `n` records of `topic`'s `lanes` lanes with one raw pull consumer per lane.
pub(crate) async fn raw(
    brokers: &str,
    topic: &str,
    lanes: i32,
    n: u64,
    probe: &Arc<Probe>,
) -> Result<(), String> {
    let js = context(brokers).await?;
    let stream = js.get_stream(topic).await.map_err(|e| e.to_string())?;
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: format!("{topic}.{lane}.*"),
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let probe = Arc::clone(probe);
        tasks.push(tokio::spawn(async move {
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(batch())
                .messages()
                .await
                .map_err(|e| e.to_string())?;
            let mut timestamps = Vec::with_capacity(1000);
            let mut bytes = 0;
            while probe.committed.load(Ordering::Relaxed) < n {
                let Ok(next) =
                    tokio::time::timeout(Duration::from_millis(200), messages.next()).await
                else {
                    continue;
                };
                let m = next
                    .ok_or("the messages ended")?
                    .map_err(|e| e.to_string())?;
                probe.first.get_or_init(Instant::now);
                bytes += m.payload.len();
                let info = m.info().map_err(|e| e.to_string())?;
                timestamps.push((info.published.unix_timestamp_nanos() / 1_000_000) as i64);
                if timestamps.len() == 1000 || info.pending == 0 {
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
    Ok(())
}
