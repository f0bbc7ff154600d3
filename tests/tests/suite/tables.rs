//! Tables: a handler reads the newest value per key of another topic. A co-partitioned
//! table's partition lives in its input partition's store and is read to its end before the
//! partition's first record and before every batch; a global table is read in full by every
//! worker before it joins its group, then followed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir::prelude::*;
use weir::testing::TestKit;
use weir_tests::*;

#[derive(Debug, Serialize, Deserialize)]
struct Customer {
    country: String,
}

#[derive(Debug, Deserialize)]
struct Order {
    order_id: String,
}

/// Stores each order's customer country ("?" when the customer is unknown).
#[derive(Handler)]
#[handler(
    topic = "orders",
    key = Utf8,
    value = Json<Order>,
    table(Customers, topic = "customers", value = Customer),
    store(Joined, key = str, value = String)
)]
struct Join;

impl Process for Join {
    type Error = weir::Error;

    async fn process(&self, r: Record<'_, Order, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        join::<Customers>(&r, ctx)
    }
}

/// Stores the order's customer country from table `T` ("?" when unknown) in `joined`.
fn join<T: weir::tables::TableDef<Value = Customer>>(
    r: &Record<'_, Order, String>,
    ctx: &mut Ctx<'_>,
) -> weir::Result<()> {
    let country = ctx
        .table::<T>()
        .get(r.key())?
        .map_or_else(|| "?".to_owned(), |c| c.country);
    ctx.store::<Joined>().put(&r.value().order_id, &country)
}

/// [`Join`] over a global table.
#[derive(Handler)]
#[handler(
    topic = "orders",
    key = Utf8,
    value = Json<Order>,
    global_table(AllCustomers, topic = "customers", value = Customer)
)]
struct GlobalJoin;

impl Process for GlobalJoin {
    type Error = weir::Error;

    async fn process(&self, r: Record<'_, Order, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        join::<AllCustomers>(&r, ctx)
    }
}

fn order(id: &str) -> String {
    format!(r#"{{"order_id":"{id}"}}"#)
}

fn customer(country: &str) -> String {
    format!(r#"{{"country":"{country}"}}"#)
}

#[tokio::test]
async fn the_test_kit_joins_with_the_table_as_it_was_when_the_order_came() {
    let mut kit = TestKit::new(Join).expect("kit");
    let fr = Customer {
        country: "FR".into(),
    };
    kit.update_table::<Customers>("c1", Some(&fr))
        .await
        .expect("table");
    kit.send("c1", order("o1")).send("c2", order("o2"));
    kit.update_table::<Customers>(
        "c2",
        Some(&Customer {
            country: "DE".into(),
        }),
    )
    .await
    .expect("table");
    kit.send("c2", order("o3"));
    kit.update_table::<Customers>("c1", None)
        .await
        .expect("tombstone");
    kit.send("c1", order("o4"));
    kit.run().await.expect("run");
    let joined: BTreeMap<String, String> = kit.entries("joined").expect("entries");
    let expected: BTreeMap<String, String> = [("o1", "FR"), ("o2", "?"), ("o3", "DE"), ("o4", "?")]
        .into_iter()
        .map(|(o, c)| (o.to_owned(), c.to_owned()))
        .collect();
    assert_eq!(joined, expected);
}

#[tokio::test]
async fn the_test_kit_reads_global_tables() {
    let mut kit = TestKit::new(GlobalJoin).expect("kit");
    kit.update_table::<AllCustomers>(
        "c1",
        Some(&Customer {
            country: "FR".into(),
        }),
    )
    .await
    .expect("table");
    kit.send("c1", order("o1")).send("c9", order("o2"));
    kit.run().await.expect("run");
    let joined: BTreeMap<String, String> = kit.entries("joined").expect("entries");
    assert_eq!(joined.get("o1").map(String::as_str), Some("FR"));
    assert_eq!(joined.get("o2").map(String::as_str), Some("?"));
}

/// Every partition store's `joined` entries.
fn joined(dir: &Path, group: &str, topic: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (_, path) in store_files(dir, group, topic) {
        // (A store the worker is still creating is read next time.)
        let Ok(store) = weir::state::StoreReader::open(&path) else {
            continue;
        };
        out.extend(store.entries::<String, String>("joined").expect("entries"));
    }
    out
}

async fn wait_joined(dir: &Path, group: &str, topic: &str, order_id: &str) -> String {
    let mut seen = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        seen = joined(dir, group, topic);
        if let Some(c) = seen.get(order_id) {
            return c.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("order {order_id} not joined within 60 s; joined: {seen:?}");
}

async fn orders_join_with_their_customers(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "orders", 3).await;
    let customers = unique("customers");
    broker.create_one_topic(&customers, 3).await;
    // Before the worker starts: read before the partitions' first records.
    broker
        .produce(
            &customers,
            None,
            [("c1", "FR"), ("c2", "DE"), ("c3", "IT")].map(|(k, c)| (k.to_owned(), customer(c))),
        )
        .await;
    broker
        .produce(
            &topic,
            None,
            [("c1", "o1"), ("c2", "o2"), ("c3", "o3"), ("c4", "o4")]
                .map(|(k, o)| (k.to_owned(), order(o))),
        )
        .await;
    let worker = broker
        .worker(&group, &topic, dir.path())
        .table_topic::<Customers>(&customers)
        .build(Join)
        .expect("build");
    let worker = RunningWorker::spawn(worker);
    // Each of the first orders, whichever partition it is in (the assertion at the end reads
    // them all: waiting for one left another partition's first batch to race the stop).
    for (o, c) in [("o1", "FR"), ("o2", "DE"), ("o3", "IT"), ("o4", "?")] {
        assert_eq!(wait_joined(dir.path(), &group, &topic, o).await, c, "{o}");
    }
    // A customer that arrives after its order: the order stays unmatched, later ones match.
    broker
        .produce(&customers, None, [("c4".to_owned(), customer("ES"))])
        .await;
    broker
        .produce(&topic, None, [("c4".to_owned(), order("o5"))])
        .await;
    assert_eq!(wait_joined(dir.path(), &group, &topic, "o5").await, "ES");
    // An update and a tombstone, each before the next order of its key.
    broker
        .produce(&customers, None, [("c1".to_owned(), customer("BE"))])
        .await;
    produce_tombstone(&broker, &customers, "c2").await;
    broker
        .produce(
            &topic,
            None,
            [("c1", "o6"), ("c2", "o7")].map(|(k, o)| (k.to_owned(), order(o))),
        )
        .await;
    assert_eq!(wait_joined(dir.path(), &group, &topic, "o6").await, "BE");
    assert_eq!(wait_joined(dir.path(), &group, &topic, "o7").await, "?");
    worker.stop_cleanly().await;
    let got = joined(dir.path(), &group, &topic);
    let expected: BTreeMap<String, String> = [
        ("o1", "FR"),
        ("o2", "DE"),
        ("o3", "IT"),
        ("o4", "?"),
        ("o5", "ES"),
        ("o6", "BE"),
        ("o7", "?"),
    ]
    .into_iter()
    .map(|(o, c)| (o.to_owned(), c.to_owned()))
    .collect();
    assert_eq!(got, expected);
}

on_both_brokers!(join, orders_join_with_their_customers);

/// Issue 25, item 11: a table topic deleted and created again, shorter than the position the
/// store kept: the table is read again from the new topic's start (with a WARN), not ignored
/// until the new topic outgrows the old position. On tansu: the mock cluster deletes no topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recreated_table_topic_is_read_from_its_start() {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(BrokerKind::Tansu, "recreated", 1).await;
    let customers = unique("customers");
    broker.create_one_topic(&customers, 1).await;
    broker
        .produce(
            &customers,
            Some(0),
            (0..20).map(|i| (format!("c{i}"), customer("OLD"))),
        )
        .await;
    broker
        .produce(&topic, Some(0), [("c0".to_owned(), order("o1"))])
        .await;
    let start = || {
        RunningWorker::spawn(
            broker
                .worker(&group, &topic, dir.path())
                .table_topic::<Customers>(&customers)
                .build(Join)
                .expect("build"),
        )
    };
    let worker = start();
    assert_eq!(wait_joined(dir.path(), &group, &topic, "o1").await, "OLD");
    worker.stop_cleanly().await;
    broker.delete_topic(&customers).await;
    broker.create_one_topic(&customers, 1).await;
    broker
        .produce(&customers, Some(0), [("c0".to_owned(), customer("NEW"))])
        .await;
    broker
        .produce(&topic, Some(0), [("c0".to_owned(), order("o2"))])
        .await;
    let worker = start();
    assert_eq!(
        wait_joined(dir.path(), &group, &topic, "o2").await,
        "NEW",
        "the order joined the deleted topic's customer"
    );
    worker.stop_cleanly().await;
}

/// The end of `topic`'s partition 0 as the broker answers the offsets query.
fn offsets_query_end(broker: &TestBroker, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = broker.client().create().expect("consumer");
    c.fetch_watermarks(topic, 0, Duration::from_secs(30))
        .expect("watermarks")
        .1
}

/// Produces a record without a value to `topic`, keyed `key`, partitioned like keyed records.
async fn produce_tombstone(broker: &TestBroker, topic: &str, key: &str) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = broker.client().create().expect("producer");
    let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key);
    producer
        .send(record, Duration::from_secs(30))
        .await
        .unwrap_or_else(|(e, _)| panic!("tombstone: {e}"));
}

async fn a_table_with_another_partition_count_is_refused(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "orders", 2).await;
    let customers = unique("customers");
    broker.create_one_topic(&customers, 3).await;
    let worker = broker
        .worker(&group, &topic, dir.path())
        .table_topic::<Customers>(&customers)
        .build(Join)
        .expect("build");
    let result = tokio::time::timeout(Duration::from_secs(60), worker.run(std::future::pending()))
        .await
        .expect("the worker stops by itself");
    let message = match result {
        Err(e @ weir::Error::NotCopartitioned { .. }) => e.to_string(),
        other => panic!("expected NotCopartitioned, got {other:?}"),
    };
    for part in [
        format!("{customers:?} has 3 partitions"),
        format!("{topic:?} has 2"),
    ] {
        assert!(message.contains(&part), "{part} in: {message}");
    }
    assert!(
        store_files(dir.path(), &group, &topic).is_empty(),
        "nothing processed"
    );
}

on_both_brokers!(
    copartitioning,
    a_table_with_another_partition_count_is_refused
);

async fn a_global_table_serves_two_workers(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "orders", 2).await;
    let dir2 = tempfile::tempdir().expect("tempdir");
    // A global table needs no co-partitioning.
    let customers = unique("customers");
    broker.create_one_topic(&customers, 3).await;
    let ids: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
    broker
        .produce(
            &customers,
            None,
            ids.iter()
                .map(|id| (id.clone(), customer(&format!("country-{id}")))),
        )
        .await;
    let start = |dir: &Path| {
        let worker = broker
            .worker(&group, &topic, dir)
            .table_topic::<AllCustomers>(&customers)
            .build(GlobalJoin)
            .expect("build");
        RunningWorker::spawn(worker)
    };
    let (w1, w2) = (start(dir.path()), start(dir2.path()));
    // Both workers own a partition before the orders come.
    wait_until(
        "both workers own a partition",
        Duration::from_secs(60),
        || {
            let (a, b) = (dir.path().to_owned(), dir2.path().to_owned());
            let (group, topic) = (group.clone(), topic.clone());
            async move {
                let owned = (
                    store_files(&a, &group, &topic).len(),
                    store_files(&b, &group, &topic).len(),
                );
                match owned {
                    (1.., 1..) => Ok(()),
                    (x, y) => Err(format!("partition stores: {x} and {y}")),
                }
            }
        },
    )
    .await;
    let orders: Vec<(String, String)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), order(&format!("o{i}"))))
        .collect();
    broker.produce(&topic, None, orders).await;
    let mut all = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let o = format!("o{i}");
        let c = wait_either(dir.path(), dir2.path(), &group, &topic, &o).await;
        assert_eq!(c, format!("country-{id}"), "order {o}");
        all.insert(o, c);
    }
    let (on1, on2) = (
        joined(dir.path(), &group, &topic).len(),
        joined(dir2.path(), &group, &topic).len(),
    );
    assert!(
        on1 > 0 && on2 > 0 && on1 + on2 == 20,
        "orders joined on each worker: {on1} and {on2}"
    );
    // Kept current while running: an update reaches the workers; probe orders until it shows.
    broker
        .produce(&customers, None, [("c0".to_owned(), customer("updated"))])
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut probe = 0;
    loop {
        let id = format!("probe{probe}");
        broker
            .produce(&topic, None, [("c0".to_owned(), order(&id))])
            .await;
        let c = wait_either(dir.path(), dir2.path(), &group, &topic, &id).await;
        if c == "updated" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the update did not reach the global table within 60 s (last probe saw {c})"
        );
        probe += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w1.stop_cleanly().await;
    w2.stop_cleanly().await;
}

/// The country `order_id` was joined with, on whichever worker processed it.
async fn wait_either(a: &Path, b: &Path, group: &str, topic: &str, order_id: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        for dir in [a, b] {
            if let Some(c) = joined(dir, group, topic).get(order_id) {
                return c.clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "order {order_id} not joined on either worker within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

on_both_brokers!(global, a_global_table_serves_two_workers);

/// Issue 25, item 11: a table topic written in transactions ends in a commit marker, an
/// offset without a record. Catching up once waits for it (the broker's end is past the last
/// record), then moves the table's position to the end: the next batches do not wait again
/// (before the fix, on tansu, the partition's first batch never came: its table catch-up did
/// not end). On tansu: the mock cluster writes no commit markers into the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transactional_table_costs_no_wait_per_batch() {
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(BrokerKind::Tansu, "txn-orders", 1).await;
    let customers = unique("txn-customers");
    broker.create_one_topic(&customers, 1).await;
    let producer: FutureProducer = broker
        .client()
        .set("transactional.id", unique("tx"))
        .create()
        .expect("producer");
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout).expect("init");
    producer.begin_transaction().expect("begin");
    let value = customer("FR");
    producer
        .send(
            FutureRecord::to(&customers).key("c1").payload(&value),
            timeout,
        )
        .await
        .expect("send");
    producer.commit_transaction(timeout).expect("commit");
    let worker = broker
        .worker(&group, &topic, dir.path())
        .table_topic::<Customers>(&customers)
        .build(Join)
        .expect("build");
    let worker = RunningWorker::spawn(worker);
    broker
        .produce(&topic, None, [("c1".to_owned(), order("first"))])
        .await;
    assert_eq!(wait_joined(dir.path(), &group, &topic, "first").await, "FR");
    worker.stop_cleanly().await;
    // The premise: the log's end is past the last record (the commit marker).
    let high = offsets_query_end(&broker, &customers);
    assert_eq!(high, 2, "one record and its transaction's commit marker");
    // The table's position is at the end, so the next batch does not wait for the marker
    // again (before the fix: 1, and every batch waited the grace).
    let stores = store_files(dir.path(), &group, &topic);
    let store = weir::state::StoreReader::open(&stores[&0]).expect("open");
    let position: Option<i64> = store
        .get("__weir_tables", &(customers.as_str(), 0))
        .expect("read");
    assert_eq!(position, Some(high));
}

/// Issue 30: a table is read once, then only what is new, not again at every batch. tansu
/// answers the offsets query with the first offset of the log's last record batch plus one,
/// so a table written in one batch "ends" at 1 while it was read to 200; catching up took that
/// for a recreated topic and read the whole table again before every batch (about a second a
/// batch: the two-stage `weir-enrich` bench ran at one batch a second per partition). On
/// tansu: the mock cluster answers the offsets query right.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_is_read_once_not_before_every_batch() {
    const CUSTOMERS: usize = 200;
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(BrokerKind::Tansu, "once-orders", 1).await;
    let customers = unique("once-customers");
    broker.create_one_topic(&customers, 1).await;
    broker
        .produce(
            &customers,
            Some(0),
            (0..CUSTOMERS).map(|i| (format!("c{i}"), customer("FR"))),
        )
        .await;
    // The premise: the offsets query answers short of the 200 records.
    let high = offsets_query_end(&broker, &customers);
    assert!(
        high < CUSTOMERS as i64,
        "tansu's offsets query says {high} for {CUSTOMERS} records written together"
    );
    let worker = broker
        .worker(&group, &topic, dir.path())
        .table_topic::<Customers>(&customers)
        .metrics_addr("127.0.0.1:0")
        .build(Join)
        .expect("build");
    let addr = worker.metrics_addr().expect("metrics address");
    let worker = RunningWorker::spawn(worker);
    // Three batches, each after the one before was joined.
    for (i, id) in ["first", "second", "third"].into_iter().enumerate() {
        broker
            .produce(&topic, None, [(format!("c{i}"), order(id))])
            .await;
        assert_eq!(wait_joined(dir.path(), &group, &topic, id).await, "FR");
    }
    let (status, body) = http_get(addr, "/metrics").await;
    worker.stop_cleanly().await;
    assert_eq!(status, 200);
    let read: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("weir_table_records_total{"))
        .collect();
    assert_eq!(
        read,
        [format!(
            "weir_table_records_total{{topic=\"{customers}\"}} {CUSTOMERS}"
        )],
        "each table record read once"
    );
}
