//! Stores written by earlier versions keep working (issue 26, item 2): a partition store
//! written by the code of commit 2e7ff8c (`tests/fixtures/store-2e7ff8c.sqlite`, made with
//! that commit's `weir_state` by a program in the note of issue 26) is opened by today's
//! worker, which resumes at its offset, keeps its state, and reads its upstream mark of the
//! old form (the newest position applied) as a floor just after it.

use std::collections::BTreeMap;
use std::time::Duration;

use weir_tests::*;

/// The fixture's input topic, partition 0: its store's next offset is 5, `counts` holds
/// k0 = 3 and k1 = 2, and the mark of writer `shop` of `stage1`/0 is `[10, 0]`.
const TOPIC: &str = "fixture-in";

fn emitted(key: &str, offset: i64, acked_below: Option<i64>) -> HeadedRecord {
    let mut headers = vec![
        ("weir.source.topic".to_owned(), "stage1".to_owned()),
        ("weir.source.partition".to_owned(), "0".to_owned()),
        ("weir.source.offset".to_owned(), offset.to_string()),
        ("weir.source.seq".to_owned(), "0".to_owned()),
        ("weir.source.group".to_owned(), "shop".to_owned()),
    ];
    if let Some(below) = acked_below {
        headers.push(("weir.source.acked_below".to_owned(), below.to_string()));
    }
    (key.to_owned(), format!("from {offset}"), headers)
}

/// Mock cluster only: the fixture names its topic, so the test needs a broker of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_written_by_an_earlier_version_is_resumed() {
    let broker = TestBroker::start(BrokerKind::Mock);
    broker.create_topic(TOPIC, 1).await;
    let group = unique("g");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join(&group).join(TOPIC).join("0.sqlite");
    std::fs::create_dir_all(store.parent().expect("parent")).expect("mkdir");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/store-2e7ff8c.sqlite");
    std::fs::copy(fixture, &store).expect("copy the fixture");
    // Offsets 0..5: what the store counted already (not counted again).
    broker.produce(TOPIC, Some(0), keyed_records(0, 5, 2)).await;
    // Offset 5: a plain record.
    broker
        .produce(TOPIC, Some(0), [("k0".to_owned(), "v5".to_owned())])
        .await;
    // Offsets 6..11: emits of the writer the mark knows. 10 and 9 are at or below its mark
    // (applied already); 11 and 12 are new; 12 again is a re-send.
    let emits = [
        emitted("k2", 10, None),
        emitted("k2", 9, None),
        emitted("k2", 11, Some(11)),
        emitted("k3", 12, Some(11)),
        emitted("k3", 12, Some(11)),
    ];
    broker.produce_with_headers(TOPIC, 0, &emits).await;
    let worker = RunningWorker::spawn(
        broker
            .worker(&group, TOPIC, dir.path())
            .build(CountHandler::default())
            .expect("build"),
    );
    wait_processed(Duration::from_secs(60), 11, || {
        StoredCounts::read(dir.path(), &group, TOPIC)
            .offsets
            .values()
            .sum()
    })
    .await;
    worker.stop_cleanly().await;
    let stored = StoredCounts::read(dir.path(), &group, TOPIC);
    let expected: BTreeMap<String, u64> = [("k0", 4), ("k1", 2), ("k2", 1), ("k3", 1)]
        .into_iter()
        .map(|(k, n)| (k.to_owned(), n))
        .collect();
    assert_counts_exact(&stored.counts, &expected);
}
