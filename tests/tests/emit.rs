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
