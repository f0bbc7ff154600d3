//! The `enrich` pipeline: orders joined with a customers table, re-keyed by country through a
//! repartition topic, revenue per country in a second stage. Its totals are exact: in one
//! process, and when the process is SIGKILLed at random points and restarted, once with an
//! empty state directory: stage 2 restores from its changelog, stage 1 (whose only state is
//! its table) starts over, reads its table again and re-sends every order, which stage 2
//! drops up to where it had applied them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use weir::prelude::*;
use weir::state::StoreReader;
use weir_examples::enrich::{
    CountryTotal, Customers, JoinCustomers, Order, RevenueByCountry, JOIN_STAGE, OUTPUT_TOPIC,
    REVENUE_STAGE, UNMATCHED_TOPIC,
};
use weir_tests::*;

const PARTITIONS: i32 = 2;

/// The pipelines' state query token.
const TOKEN: &str = "a-token-of-24-characters";

/// A test's customers, orders and what they must add up to.
struct Scenario {
    customers: Vec<(String, String)>,
    orders: Vec<(String, String)>,
    /// Revenue per country of the matched orders.
    totals: BTreeMap<String, i64>,
    /// Order ids of unknown customers.
    unmatched: BTreeSet<String>,
}

impl Scenario {
    fn new(tag: &str, orders: usize) -> Self {
        let mut s = Scenario {
            customers: Vec::new(),
            orders: Vec::new(),
            totals: BTreeMap::new(),
            unmatched: BTreeSet::new(),
        };
        let country = |i: usize| format!("K{}{tag}", i % 4);
        for i in 0..20 {
            let json = serde_json::json!({ "country": country(i) }).to_string();
            s.customers.push((format!("c{i}{tag}"), json));
        }
        for i in 0..orders {
            let order = Order {
                order_id: format!("o{i}{tag}"),
                amount_cents: 100 + (i % 13) as i64 * 7,
            };
            let customer = if i % 10 == 9 {
                s.unmatched.insert(order.order_id.clone());
                format!("x{}{tag}", i % 3)
            } else {
                *s.totals.entry(country(i % 20)).or_insert(0) += order.amount_cents;
                format!("c{}{tag}", i % 20)
            };
            let json = serde_json::to_string(&order).expect("json");
            s.orders.push((customer, json));
        }
        s
    }
}

/// The topics of one test: orders, customers, the repartition topic (created here, as the
/// mock cluster does not create topics for a worker's admin client in time), and the stages'
/// dead-letter and changelog topics.
struct Topics {
    orders: String,
    customers: String,
    repartition: String,
}

async fn topics(broker: &TestBroker, orders: &str, group: &str, changelog: bool) -> Topics {
    // (Stage 1 runs without a changelog in the kill test: its table is read from its topic.)
    let customers = unique("customers");
    broker.create_one_topic(&customers, PARTITIONS).await;
    let repartition = format!("{group}-{REVENUE_STAGE}-repartition");
    broker.create_topic(&repartition, PARTITIONS).await;
    broker.ensure_topic(OUTPUT_TOPIC, PARTITIONS).await;
    broker.ensure_topic(UNMATCHED_TOPIC, PARTITIONS).await;
    if changelog {
        broker
            .create_one_topic(
                &format!("{group}-{REVENUE_STAGE}-{repartition}-changelog"),
                PARTITIONS,
            )
            .await;
    }
    Topics {
        orders: orders.to_owned(),
        customers,
        repartition,
    }
}

/// Stage 2's revenue per country, over its partition stores.
fn revenue(dir: &Path, group: &str, repartition: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let stage = format!("{group}-{REVENUE_STAGE}");
    for (_, path) in store_files(dir, &stage, repartition) {
        // (A store the worker is still creating is read next time.)
        let Ok(store) = StoreReader::open(&path) else {
            continue;
        };
        for (country, total) in store.entries::<String, i64>("revenue").expect("entries") {
            *out.entry(country).or_insert(0) += total;
        }
    }
    out
}

/// Stage 1's next offsets, summed over its partitions.
fn joined(dir: &Path, group: &str, orders: &str) -> i64 {
    let stage = format!("{group}-{JOIN_STAGE}");
    store_files(dir, &stage, orders)
        .iter()
        .filter_map(|(p, path)| {
            StoreReader::open(path)
                .ok()?
                .next_offset(orders, *p)
                .ok()
                .flatten()
        })
        .sum()
}

async fn wait_totals(dir: &Path, group: &str, t: &Topics, want: &BTreeMap<String, i64>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let got = revenue(dir, group, &t.repartition);
        if &got == want {
            return;
        }
        let over = got.iter().any(|(c, v)| want.get(c).is_none_or(|w| v > w));
        assert!(
            !over,
            "a country counted more than its orders: {got:?}, want {want:?}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "totals not reached within 180 s: {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last total emitted to `revenue-by-country` per country of `want`, and the order ids in
/// `orders.unmatched` of this test's customers.
async fn outputs(
    broker: &TestBroker,
    want: &BTreeMap<String, i64>,
    tag: &str,
) -> (BTreeMap<String, i64>, BTreeSet<String>) {
    let mut last = BTreeMap::new();
    for m in read_every_partition(broker.bootstrap(), OUTPUT_TOPIC) {
        use rdkafka::message::Message;
        let Ok(t) = serde_json::from_slice::<CountryTotal>(m.payload().unwrap_or_default()) else {
            continue;
        };
        if want.contains_key(&t.country) {
            assert_eq!(m.key(), Some(t.country.as_bytes()), "keyed by country");
            // Totals only grow, so the largest is the last.
            let e = last.entry(t.country).or_insert(0);
            *e = (*e).max(t.total_cents);
        }
    }
    let mut unmatched = BTreeSet::new();
    for m in read_every_partition(broker.bootstrap(), UNMATCHED_TOPIC) {
        use rdkafka::message::Message;
        let Ok(o) = serde_json::from_slice::<Order>(m.payload().unwrap_or_default()) else {
            continue;
        };
        if o.order_id.ends_with(tag) {
            unmatched.insert(o.order_id);
        }
    }
    (last, unmatched)
}

async fn the_pipeline_adds_up_in_one_process(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "orders", PARTITIONS).await;
    let t = topics(&broker, &topic, &group, false).await;
    let tag = unique("-");
    let s = Scenario::new(&tag, 600);
    broker
        .produce(&t.customers, None, s.customers.clone())
        .await;
    broker.produce(&t.orders, None, s.orders.clone()).await;
    let pipeline = Worker::builder()
        .brokers(broker.bootstrap())
        .group(&group)
        .state_dir(dir.path())
        .kafka("session.timeout.ms", SESSION_TIMEOUT_MS)
        .kafka("heartbeat.interval.ms", "500")
        .metrics_addr("127.0.0.1:0")
        .http_token(TOKEN);
    let (orders, customers) = (t.orders.clone(), t.customers.clone());
    let pipeline = pipeline
        .pipeline()
        .stage_with(JOIN_STAGE, JoinCustomers, move |b| {
            b.topic(orders).table_topic::<Customers>(customers)
        })
        .repartitioned_stage(REVENUE_STAGE, RevenueByCountry)
        .build()
        .expect("build");
    assert_eq!(pipeline.repartition_topic(REVENUE_STAGE), t.repartition);
    let addr = pipeline.metrics_addr().expect("metrics address");
    let running = RunningPipeline::spawn(pipeline);
    wait_totals(dir.path(), &group, &t, &s.totals).await;
    // One endpoint for both stages.
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for topic in [&t.orders, &t.repartition] {
        assert!(
            body.contains(&format!("topic=\"{topic}\"")),
            "{topic} on /metrics"
        );
    }
    let (status, _) = http_get(addr, "/health/ready").await;
    assert_eq!(status, 200);
    // Issue 25, item 12: the revenue stage's store, without ?topic=, from the one process
    // that owns every partition (before the fix, the join stage answered 404 for the
    // countries whose partition of `orders` it owns).
    let auth = [("Authorization", format!("Bearer {TOKEN}"))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for (country, total) in &s.totals {
        let (status, body) = http_get_with(addr, &format!("/state/revenue/{country}"), &auth).await;
        assert_eq!(status, 200, "{country}: {body}");
        let got: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            got["value"],
            serde_json::Value::from(*total),
            "{country}: {body}"
        );
        assert_eq!(
            got["topic"],
            serde_json::Value::from(t.repartition.as_str())
        );
    }
    running.stop().await.expect("the pipeline stops cleanly");
    assert_eq!(joined(dir.path(), &group, &t.orders), s.orders.len() as i64);
    let (last, unmatched) = outputs(&broker, &s.totals, &tag).await;
    assert_eq!(last, s.totals, "the newest totals emitted");
    assert_eq!(unmatched, s.unmatched, "orders of unknown customers");
}

on_both_brokers!(in_one_process, the_pipeline_adds_up_in_one_process);

async fn the_pipeline_stays_exact_under_sigkills(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "orders-kill", PARTITIONS).await;
    let t = topics(&broker, &topic, &group, true).await;
    let tag = unique("-");
    let s = Scenario::new(&tag, 3_000);
    broker
        .produce(&t.customers, None, s.customers.clone())
        .await;
    broker.produce(&t.orders, None, s.orders.clone()).await;
    let logs = tempfile::tempdir().expect("logs");
    let start = |n: usize| {
        let mut cmd = worker_command(env!("CARGO_BIN_EXE_enrich-worker"));
        cmd.env("WEIR_BROKERS", broker.bootstrap())
            .env("WEIR_GROUP", &group)
            .env("WEIR_STATE_DIR", dir.path())
            .env("WEIR_CHANGELOG", "true")
            .env("ENRICH_JOIN_CHANGELOG", "false")
            .env("WEIR_BATCH_SIZE", "50")
            .env("ENRICH_ORDERS_TOPIC", &t.orders)
            .env("ENRICH_CUSTOMERS_TOPIC", &t.customers)
            .env("ENRICH_WORKER_DELAY_US", "500");
        WorkerProcess::start(cmd, &logs.path().join(format!("{n}.log")))
    };
    let total: i64 = s.totals.values().sum();
    let applied = || {
        revenue(dir.path(), &group, &t.repartition)
            .values()
            .sum::<i64>()
    };
    let mut worker = start(0);
    let rounds = 3;
    for round in 1..=rounds {
        // Kill once stage 2 has applied this round's share of the revenue.
        let want = total * round / (rounds + 2);
        wait_processed(Duration::from_secs(120), want, applied).await;
        worker.kill();
        // Mid-run, no country has more revenue than its orders hold (nothing counted twice
        // so far), and some is still missing (the kill came before the end).
        let now = revenue(dir.path(), &group, &t.repartition);
        assert!(
            now.values().sum::<i64>() < total,
            "round {round}: the kill came after the end"
        );
        for (country, r) in &now {
            let all = s.totals.get(country).copied().unwrap_or(0);
            assert!(
                *r <= all,
                "round {round}: {country} has {r} of revenue, its orders {all}"
            );
        }
        if round == 2 {
            // As if both stages moved to another machine: an empty state directory. Stage 2
            // is restored from its changelog; stage 1 reads its table and every order again,
            // re-sending what stage 2 applied already.
            std::fs::remove_dir_all(dir.path()).expect("empty the state dir");
            std::fs::create_dir_all(dir.path()).expect("recreate the state dir");
        }
        worker = start(round as usize);
    }
    wait_totals(dir.path(), &group, &t, &s.totals).await;
    wait_processed(Duration::from_secs(60), s.orders.len() as i64, || {
        joined(dir.path(), &group, &t.orders)
    })
    .await;
    worker.stop();
    assert_eq!(
        revenue(dir.path(), &group, &t.repartition),
        s.totals,
        "exact totals after the graceful stop"
    );
    let (last, unmatched) = outputs(&broker, &s.totals, &tag).await;
    assert_eq!(last, s.totals, "the newest totals emitted");
    assert_eq!(unmatched, s.unmatched, "orders of unknown customers");
    // Stage 1 started over once: the repartition topic holds orders twice, which stage 2
    // counted once.
    let matched = s.orders.len() - s.unmatched.len();
    let sent = read_all(broker.bootstrap(), &t.repartition, PARTITIONS).len();
    let restores = count_in_logs(logs.path(), "restored from its changelog");
    eprintln!(
        "{sent} re-keyed orders sent for {matched} matched orders; {restores} partition stores restored"
    );
    assert!(sent > matched, "stage 1 re-sent nothing ({sent} sent)");
    assert!(restores >= 1, "no partition store was restored");
}

on_both_brokers!(under_sigkills, the_pipeline_stays_exact_under_sigkills);

/// The enrich pipeline of a test, on its topics.
fn build_pipeline(
    broker: &TestBroker,
    group: &str,
    dir: &Path,
    t: &Topics,
) -> weir::Result<weir::Pipeline> {
    let (orders, customers) = (t.orders.clone(), t.customers.clone());
    Worker::builder()
        .brokers(broker.bootstrap())
        .group(group)
        .state_dir(dir)
        .kafka("session.timeout.ms", SESSION_TIMEOUT_MS)
        .kafka("heartbeat.interval.ms", "500")
        .pipeline()
        .stage_with(JOIN_STAGE, JoinCustomers, move |b| {
            b.topic(orders).table_topic::<Customers>(customers)
        })
        .repartitioned_stage(REVENUE_STAGE, RevenueByCountry)
        .build()
}

/// Whether `topic` exists, by the broker's metadata.
fn topic_exists(broker: &TestBroker, topic: &str) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = broker
        .client()
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    md.topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
}

/// On tansu only: the mock cluster answers no admin requests from clients (deleting a topic
/// times out).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_repartition_topic_is_created_or_reported() {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(BrokerKind::Tansu, "orders", PARTITIONS).await;
    let customers = unique("customers");
    broker.create_one_topic(&customers, PARTITIONS).await;
    let t = Topics {
        orders: topic,
        customers,
        repartition: format!("{group}-{REVENUE_STAGE}-repartition"),
    };
    broker
        .create_one_topic(&format!("{}.dlq", t.repartition), PARTITIONS)
        .await;
    // (Before anything emits to these shared topics, which a broker would create with its
    // own partition count.)
    broker.ensure_topic(OUTPUT_TOPIC, PARTITIONS).await;
    broker.ensure_topic(UNMATCHED_TOPIC, PARTITIONS).await;
    let tag = unique("-");
    let s = Scenario::new(&tag, 100);
    broker
        .produce(&t.customers, None, s.customers.clone())
        .await;
    broker.produce(&t.orders, None, s.orders.clone()).await;
    // Missing at start: the pipeline creates it, with the partition count of the orders.
    assert!(!topic_exists(&broker, &t.repartition));
    let pipeline = build_pipeline(&broker, &group, dir.path(), &t).expect("build");
    let worker = RunningPipeline::spawn(pipeline);
    wait_totals(dir.path(), &group, &t, &s.totals).await;
    worker.stop().await.expect("clean stop");
    assert!(topic_exists(&broker, &t.repartition));

    // Someone deletes it: the next start refuses, naming it and the stores, and does not
    // create it again.
    broker.delete_topic(&t.repartition).await;
    let pipeline = build_pipeline(&broker, &group, dir.path(), &t).expect("build");
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        pipeline.run(std::future::pending()),
    )
    .await
    .expect("the pipeline stops by itself");
    let message = match result {
        Err(e @ weir::Error::RepartitionTopicDeleted { .. }) => e.to_string(),
        other => panic!("expected RepartitionTopicDeleted, got {other:?}"),
    };
    let stores = dir
        .path()
        .join(format!("{group}-{REVENUE_STAGE}"))
        .join(&t.repartition);
    for part in [
        format!("{:?} does not exist", t.repartition),
        stores.display().to_string(),
        "deleted".to_owned(),
    ] {
        assert!(message.contains(&part), "{part:?} in: {message}");
    }
    assert!(!topic_exists(&broker, &t.repartition), "not created again");
}

/// A pipeline running on its own task until stopped.
struct RunningPipeline {
    stop: tokio::sync::oneshot::Sender<()>,
    run: tokio::task::JoinHandle<weir::Result<()>>,
}

impl RunningPipeline {
    fn spawn(pipeline: weir::Pipeline) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(pipeline.run(async {
            let _ = stopped.await;
        }));
        Self { stop, run }
    }

    async fn stop(self) -> weir::Result<()> {
        let _ = self.stop.send(());
        self.run.await.expect("join")
    }
}

#[test]
fn a_pipeline_refuses_topics_that_belong_to_no_stage_and_repeated_stages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = || {
        Worker::builder()
            .brokers("127.0.0.1:1")
            .state_dir(dir.path())
    };
    let err = base()
        .topic("orders")
        .pipeline()
        .stage(JOIN_STAGE, JoinCustomers)
        .build()
        .expect_err("topics of no stage");
    let message = err.to_string();
    assert!(
        message.contains("WEIR_TOPICS") && message.contains("stage_with"),
        "{message}"
    );
    let err = base()
        .pipeline()
        .stage(JOIN_STAGE, JoinCustomers)
        .stage(JOIN_STAGE, JoinCustomers)
        .build()
        .expect_err("a stage twice");
    assert!(err.to_string().contains("added twice"), "{err}");
}

/// Issue 25, item 4 (the documented limit, docs/tables.md "Where it does not hold"): the join
/// stage processes an order again (its state lost) after the customer moved from FR to DE.
/// The order now goes to DE's partition, whose mark never saw it, so it counts in both
/// countries; had it gone to the same partition again, the mark would have dropped it.
#[tokio::test]
async fn an_order_rekeyed_elsewhere_on_reprocessing_counts_in_both_countries() {
    let order = serde_json::to_vec(&Order {
        order_id: "o1".into(),
        amount_cents: 100,
    })
    .expect("json");
    let mut joined = Vec::new();
    for country in ["FR", "DE"] {
        // A join stage with no state but its table (a new machine), the same order, offset 0.
        let mut join = weir::testing::TestKit::new(JoinCustomers)
            .expect("kit")
            .group("enrich-join");
        let customer = weir_examples::enrich::Customer {
            country: country.into(),
        };
        join.update_table::<Customers>("c1", Some(&customer))
            .await
            .expect("table");
        join.send("c1", &order);
        join.run().await.expect("run");
        let out = join.emitted();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key.as_deref(), Some(country.as_bytes()));
        joined.push(out.into_iter().next().expect("one emit"));
    }
    let revenue_of = |partitions: [i32; 2]| {
        let joined = joined.clone();
        async move {
            let mut revenue = weir::testing::TestKit::new(RevenueByCountry).expect("kit");
            for (r, p) in joined.iter().zip(partitions) {
                let headers: Vec<(&str, &[u8])> = r.headers.iter().collect();
                revenue.send_to(
                    "repartition",
                    p,
                    r.key.as_deref(),
                    r.value.as_deref(),
                    &headers,
                );
            }
            revenue.run().await.expect("run");
            let fr = revenue.get::<str, i64>("revenue", "FR").expect("get");
            let de = revenue.get::<str, i64>("revenue", "DE").expect("get");
            (fr, de)
        }
    };
    // Both into one partition: the second is the same writer's re-send, dropped.
    assert_eq!(revenue_of([0, 0]).await, (Some(100), None));
    // Into their countries' partitions: counted twice, 200 cents for a 100-cent order.
    assert_eq!(revenue_of([0, 1]).await, (Some(100), Some(100)));
}
