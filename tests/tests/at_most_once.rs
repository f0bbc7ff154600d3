//! `delivery = at_most_once`: a batch's offset commits before it is processed, so a crash in
//! the middle of a batch skips the rest of it (and loses the writes of its first records): the
//! next owner goes on after the batch, nothing of it counted, nothing counted twice.

use std::time::Duration;

use weir::prelude::*;
use weir_tests::*;

#[derive(Debug, weir::Handler)]
#[handler(value = Utf8, delivery = at_most_once, batch_size = 100)]
struct AtMostOnce {
    inner: CountHandler,
}

impl Process for AtMostOnce {
    type Error = CountError;

    async fn process(&self, rec: Record<'_, String>, ctx: &mut Ctx<'_>) -> Result<(), CountError> {
        self.inner.process(rec, ctx).await
    }
}

async fn a_crash_mid_batch_skips_the_batch(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "at-most-once", 1).await;
    let records = keyed_records(0, 1_000, 10);
    broker.produce(&topic, Some(0), records.clone()).await;
    // The first worker hangs at record 150, inside some batch S..O.
    let inner = CountHandler {
        stall_on: Some("v150".into()),
        ..Default::default()
    };
    let stalled = inner.stalled.clone();
    let worker = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir.path())
            .build(AtMostOnce { inner })
            .expect("build"),
    );
    wait_stalled(&stalled).await;
    let before = StoredCounts::read(dir.path(), &group, &topic);
    // Records before the hanging batch are counted; its offset is committed already.
    let start = before.total() as usize;
    let end = before.offsets.get(&0).copied().unwrap_or(0) as usize;
    eprintln!("{kind:?}: hanging in batch {start}..{end}");
    assert!(
        start <= 150 && 150 < end,
        "at most once: the batch's offset ({end}) is committed before its records \
         ({start}..) are processed"
    );
    worker.crash().await;
    if kind == BrokerKind::Tansu {
        broker
            .wait_group_empty(&group, Duration::from_secs(30))
            .await;
    }

    // The next owner goes on after the crashed batch: its records are never counted.
    let worker = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir.path())
            .build(AtMostOnce {
                inner: CountHandler::default(),
            })
            .expect("build"),
    );
    let mut kept = records[..start].to_vec();
    kept.extend_from_slice(&records[end..]);
    let s = wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&kept),
        Duration::from_secs(60),
    )
    .await;
    worker.stop_cleanly().await;
    assert_eq!(s.offsets.get(&0), Some(&1_000));
}

on_both_brokers!(crash_mid_batch, a_crash_mid_batch_skips_the_batch);
