//! Two workers in one group sharing a state dir: the partitions split between them; when one
//! stops, the other takes over and finishes; counts exact.

use std::time::Duration;

use weir_tests::*;

async fn two_workers_share_then_hand_over(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "group", 4).await;

    let (a, b) = (CountHandler::default(), CountHandler::default());
    let (seen_a, seen_b) = (a.seen_partitions.clone(), b.seen_partitions.clone());
    let start = |h: CountHandler| {
        let worker = broker
            .worker(&group, &topic, dir.path())
            .build(h)
            .expect("build");
        RunningWorker::spawn(worker)
    };
    let worker_a = start(a);
    let worker_b = start(b);

    // Keep producing until both workers own partitions (joins and rebalances take seconds).
    let mut all = Vec::new();
    let mut round = 0;
    wait_until(
        "both workers to process records",
        Duration::from_secs(90),
        || {
            let batch = keyed_records(round * 2_000, 2_000, 300);
            round += 1;
            all.extend(batch.clone());
            let broker = &broker;
            let topic = &topic;
            let (seen_a, seen_b) = (&seen_a, &seen_b);
            async move {
                broker.produce(topic, None, batch).await;
                let (sa, sb) = (
                    seen_a.lock().expect("lock").clone(),
                    seen_b.lock().expect("lock").clone(),
                );
                if !sa.is_empty() && !sb.is_empty() {
                    Ok(())
                } else {
                    Err(format!("A saw {sa:?}, B saw {sb:?}"))
                }
            }
        },
    )
    .await;
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&all),
        Duration::from_secs(60),
    )
    .await;
    let (sa, sb) = (
        seen_a.lock().expect("lock").clone(),
        seen_b.lock().expect("lock").clone(),
    );
    eprintln!(
        "{kind:?}: phase 1, {} records: A processed partitions {sa:?}, B {sb:?}",
        all.len()
    );

    // Stop A gracefully; B takes over A's partitions and finishes the rest. Hand-off time:
    // from A's stop request to B processing records of all four partitions.
    let stop_requested = std::time::Instant::now();
    worker_a.stop_cleanly().await;
    let a_gone = stop_requested.elapsed();
    seen_b.lock().expect("lock").clear();
    let more = keyed_records(all.len(), 20_000, 300);
    broker.produce(&topic, None, more.clone()).await;
    all.extend(more);
    wait_until(
        "B to process all four partitions",
        Duration::from_secs(60),
        || {
            let seen = seen_b.lock().expect("lock").clone();
            async move {
                if seen.len() == 4 {
                    Ok(())
                } else {
                    Err(format!("B saw {seen:?}"))
                }
            }
        },
    )
    .await;
    eprintln!(
        "{kind:?}: hand-off: A stopped in {a_gone:?}; B processing all partitions {:?} after the stop request",
        stop_requested.elapsed()
    );
    wait_for_counts(
        dir.path(),
        &group,
        &topic,
        &expected_counts(&all),
        Duration::from_secs(90),
    )
    .await;
    let sb = seen_b.lock().expect("lock").clone();
    assert_eq!(
        sb.len(),
        4,
        "after A left, B processes every partition, saw {sb:?}"
    );

    worker_b.stop_cleanly().await;
    let s = StoredCounts::read(dir.path(), &group, &topic);
    assert_counts_exact(&s.counts, &expected_counts(&all));
    assert_eq!(s.offsets.values().sum::<i64>(), all.len() as i64);
}

on_both_brokers!(two_workers, two_workers_share_then_hand_over);
