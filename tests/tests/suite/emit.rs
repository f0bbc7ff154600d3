//! `ctx.emit` on both brokers: the `orders` example emits each new customer total through the
//! outbox; the emitted records carry their source and agree with the state.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::message::{Headers, Message};
use weir::StoreDef;
use weir_examples::orders::{totals_topic, CustomerTotal, Order, OrderTotals, Totals};
use weir_tests::*;

async fn emitted_totals_agree_with_state(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "emit", 2).await;
    broker.create_one_topic(&totals_topic(&topic), 2).await;
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let orders: Vec<(String, String)> = (0..200u64)
        .map(|i| {
            let customer = format!("c{}", i % 20);
            *expected.entry(customer.clone()).or_insert(0) += i + 1;
            let order = Order {
                order_id: format!("o{i}"),
                cents: i + 1,
            };
            (customer, serde_json::to_string(&order).expect("json"))
        })
        .collect();
    broker.produce(&topic, None, orders).await;

    let worker = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir.path())
            .build(OrderTotals)
            .expect("build"),
    );
    let emitted = broker
        .consume(&totals_topic(&topic), 200, Duration::from_secs(60))
        .await;
    worker.stop_cleanly().await;

    // Each source record's time, by (partition, offset).
    let source_times: BTreeMap<(String, String), Option<i64>> =
        read_all(broker.bootstrap(), &topic, 2)
            .iter()
            .map(|m| {
                let at = (m.partition().to_string(), m.offset().to_string());
                (at, m.timestamp().to_millis())
            })
            .collect();
    let mut newest: BTreeMap<String, u64> = BTreeMap::new();
    let mut sources = std::collections::BTreeSet::new();
    for m in &emitted {
        let t: CustomerTotal =
            serde_json::from_slice(m.payload().unwrap_or_default()).expect("a CustomerTotal");
        assert_eq!(m.key(), Some(t.customer.as_bytes()), "keyed by customer");
        let e = newest.entry(t.customer).or_insert(0);
        *e = (*e).max(t.cents);
        let header = |name: &str| {
            m.headers()
                .and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_else(|| panic!("header {name} missing"))
        };
        assert_eq!(header("weir.source.topic"), topic);
        // Issue 25, item 10: the emit carries its source record's event time (here the
        // record's timestamp), not the time it was sent.
        let at = (
            header("weir.source.partition"),
            header("weir.source.offset"),
        );
        assert_eq!(
            m.timestamp().to_millis(),
            source_times[&at],
            "the time of the record emitted for {at:?}"
        );
        sources.insert((
            header("weir.source.partition"),
            header("weir.source.offset"),
        ));
    }
    assert_eq!(newest, expected, "newest emitted total per customer");
    assert_eq!(sources.len(), 200, "one emitted record per source record");

    let mut state: BTreeMap<String, u64> = BTreeMap::new();
    for (_, path) in store_files(dir.path(), &group, &topic) {
        let store = weir::state::StoreReader::open(&path).expect("open");
        state.extend(store.entries::<String, u64>(Totals::NAME).expect("entries"));
    }
    assert_eq!(state, expected, "totals in state");
}

on_both_brokers!(emitted_totals, emitted_totals_agree_with_state);

/// Emits every record's key and value to `<topic>-keys`.
#[derive(weir::Handler)]
#[handler(key = weir::Utf8, value = weir::Utf8)]
struct Forward {
    out: String,
}

impl weir::Process for Forward {
    type Error = weir::Error;

    async fn process(
        &self,
        r: weir::Record<'_, String, String>,
        ctx: &mut weir::Ctx<'_>,
    ) -> weir::Result<()> {
        ctx.emit(
            &self.out,
            Some(r.key().as_bytes()),
            r.value().as_bytes(),
            &[],
        );
        Ok(())
    }
}

/// Keys whose murmur2 hashes Kafka's own tests pin (and `weir_state::wire`'s tests check).
const KEYS: [&str; 6] = ["1", "12", "123", "1234", "12345", "0"];

async fn emitted_records_are_partitioned_like_the_java_client(kind: BrokerKind) {
    const PARTITIONS: i32 = 7;
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "murmur2", 1).await;
    let out = format!("{topic}-keys");
    broker.create_one_topic(&out, PARTITIONS).await;
    let records: Vec<(String, String)> = KEYS
        .iter()
        .map(|k| ((*k).to_owned(), (*k).to_owned()))
        .collect();
    broker.produce(&topic, Some(0), records).await;
    let worker = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir.path())
            .build(Forward { out: out.clone() })
            .expect("build"),
    );
    let got = broker
        .consume(&out, KEYS.len(), Duration::from_secs(60))
        .await;
    worker.stop_cleanly().await;
    let placed: BTreeMap<String, i32> = got
        .iter()
        .map(|m| {
            (
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                m.partition(),
            )
        })
        .collect();
    // Where the Java client puts them: `(murmur2(key) & 0x7fffffff) % partitions`.
    let expected: BTreeMap<String, i32> = KEYS
        .iter()
        .map(|k| {
            let p = weir_state::wire::partition_for_key(k.as_bytes(), PARTITIONS);
            ((*k).to_owned(), p)
        })
        .collect();
    assert_eq!(placed, expected, "partition per key");
}

on_both_brokers!(
    murmur2_partitioning,
    emitted_records_are_partitioned_like_the_java_client
);
