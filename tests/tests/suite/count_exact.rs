//! One worker, 4 partitions, 100k keyed records: per-key counts exact.

use std::time::{Duration, Instant};

use weir_tests::*;

async fn hundred_thousand_keyed_records(kind: BrokerKind) {
    const N: usize = 100_000;
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "count", 4).await;
    let records = keyed_records(0, N, 1000);
    broker.produce(&topic, None, records.clone()).await;
    let expected = expected_counts(&records);

    let worker = broker
        .worker(&group, &topic, dir.path())
        .build(CountHandler::default())
        .expect("build worker");
    let worker = RunningWorker::spawn(worker);

    let started = Instant::now();
    wait_until("first commit", Duration::from_secs(60), || async {
        let total = StoredCounts::read(dir.path(), &group, &topic).total();
        if total > 0 {
            Ok(())
        } else {
            Err("nothing counted".into())
        }
    })
    .await;
    let first = Instant::now();
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected,
        Duration::from_secs(120),
    )
    .await;
    let busy = first.elapsed();
    eprintln!(
        "{kind:?}: {N} records counted exactly; {:.0} msg/s after the first commit ({:.2?}), {:.2?} from start incl. group join",
        N as f64 / busy.as_secs_f64(),
        busy,
        started.elapsed()
    );

    worker.stop_cleanly().await;
    let s = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&s.counts, &expected);
    assert_eq!(
        s.offsets.len(),
        4,
        "every partition has a stored offset: {:?}",
        s.offsets
    );
    assert_eq!(
        s.offsets.values().sum::<i64>(),
        N as i64,
        "offsets: {:?}",
        s.offsets
    );
}

on_both_brokers!(hundred_thousand, hundred_thousand_keyed_records);
