//! Event time on both brokers: the `pageviews` example's contract (results, late records),
//! idle partitions closing by wall clock, timers across a restart, and window counts that stay
//! exact while worker processes are SIGKILLed mid-window and between a window's close and the
//! acknowledgement of its result, some restarts with an empty state directory (restored from
//! the changelog, as on another machine).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use rdkafka::message::{Message, OwnedMessage};
use serde::{Deserialize, Serialize};
use weir::__private::{KeyOf, ValueOf};
use weir::prelude::*;
use weir::state::StoreReader;
use weir_examples::pageviews::{PageView, PageViews, PageViewsPerMinute, OUTPUT_TOPIC};
use weir_tests::*;

const MIN: i64 = 60_000;

fn view(page: &str, ts_ms: i64) -> (String, String) {
    let v = PageView {
        page: page.to_owned(),
        user: "u1".to_owned(),
        ts_ms,
    };
    (page.to_owned(), serde_json::to_string(&v).expect("json"))
}

/// The results for `pages` in the output topic (other tests write there too), in order.
async fn results_for(
    broker: &TestBroker,
    pages: &BTreeSet<String>,
) -> Vec<(OwnedMessage, PageViewsPerMinute)> {
    let bootstrap = broker.bootstrap().to_owned();
    let all = tokio::task::spawn_blocking(move || read_all(&bootstrap, OUTPUT_TOPIC, 2))
        .await
        .expect("read");
    all.into_iter()
        .filter_map(|m| {
            let r: PageViewsPerMinute = serde_json::from_slice(m.payload()?).ok()?;
            pages.contains(&r.page).then_some((m, r))
        })
        .collect()
}

/// Reads the output topic until `n` results for `pages` are there.
async fn wait_results(
    broker: &TestBroker,
    pages: &BTreeSet<String>,
    n: usize,
) -> Vec<(OwnedMessage, PageViewsPerMinute)> {
    wait_until("the windows' results", Duration::from_secs(90), || async {
        let got = results_for(broker, pages).await.len();
        if got >= n {
            Ok(())
        } else {
            Err(format!("{got} of {n} results"))
        }
    })
    .await;
    results_for(broker, pages).await
}

async fn pageviews_contract(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "pageviews", 2).await;
    broker.ensure_topic(OUTPUT_TOPIC, 2).await;
    // (A worker creates its late topic, but a stop gives unacknowledged sends only a short
    // grace: one still waiting for the topic's auto-creation would be sent by the next run.)
    broker.create_one_topic(&format!("{topic}.late"), 2).await;
    let tag = unique("");
    let pages: Vec<String> = ["/a", "/b"].iter().map(|p| format!("{p}{tag}")).collect();
    let base = 1_000 * MIN;
    let mut produced = Vec::new();
    for (p, page) in pages.iter().enumerate() {
        let views: Vec<(String, String)> = [1, 2, 3, 4, 5, 61, 20, 71, 30, 125, 131]
            .iter()
            .map(|s| view(page, base + s * 1_000))
            .collect();
        produced.push(views[8].clone());
        broker.produce(&topic, Some(p as i32), views).await;
    }
    let worker = broker
        .worker(&group, &topic, dir.path())
        .metrics_addr("127.0.0.1:0")
        .build(PageViews)
        .expect("build");
    let addr = worker.metrics_addr().expect("metrics address");
    let worker = RunningWorker::spawn(worker);
    let wanted: BTreeSet<String> = pages.iter().cloned().collect();
    let got = wait_results(&broker, &wanted, 4).await;
    // Each partition's watermark is its largest event time, 131 s into the data.
    let (_, body) = http_get(addr, "/metrics").await;
    for p in ["0", "1"] {
        let labels = [("topic", topic.as_str()), ("partition", p)];
        assert_eq!(
            sample(&body, "weir_partition_watermark_seconds", &labels),
            Some((base + 131_000) as f64 / 1000.0),
            "{body}"
        );
    }
    assert_eq!(
        sample(
            &body,
            "weir_late_records_total",
            &[("topic", topic.as_str())]
        ),
        Some(2.0)
    );
    assert!(sample(
        &body,
        "weir_windows_closed_total",
        &[("store", "per_minute")]
    )
    .is_some_and(|n| n >= 4.0));
    worker.stop_cleanly().await;

    // One result per page and closed minute: [0, 60 s) has 5 + 1 out-of-order view (20 s
    // arrived at watermark 61 s, within the 10 s grace), [60 s, 120 s) has 2; 30 s came at
    // watermark 71 s, after its window closed, and [120 s, 180 s) is still open.
    let mut expected = Vec::new();
    for page in &pages {
        for (start, views) in [(base, 6), (base + MIN, 2)] {
            expected.push(PageViewsPerMinute {
                page: page.clone(),
                window_start_ms: start,
                window_end_ms: start + MIN,
                views,
            });
        }
    }
    let mut results: Vec<PageViewsPerMinute> = got.iter().map(|(_, r)| r.clone()).collect();
    results.sort_by(|a, b| (&a.page, a.window_start_ms).cmp(&(&b.page, b.window_start_ms)));
    assert_eq!(results, expected);
    for (m, r) in &got {
        assert_eq!(m.key(), Some(r.page.as_bytes()), "keyed by page");
        let json: serde_json::Value =
            serde_json::from_slice(m.payload().unwrap_or_default()).expect("json");
        let mut fields: Vec<&str> = json
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            ["page", "views", "window_end_ms", "window_start_ms"],
            "the contract's fields"
        );
    }
    // The late views, unchanged, in `<topic>.late`.
    let bootstrap = broker.bootstrap().to_owned();
    let late_topic = format!("{topic}.late");
    let late = tokio::task::spawn_blocking(move || read_all(&bootstrap, &late_topic, 2))
        .await
        .expect("read");
    let mut late: Vec<(String, String)> = late
        .iter()
        .map(|m| {
            assert_eq!(
                header(m, "weir.source.topic").as_deref(),
                Some(topic.as_str())
            );
            assert_eq!(header(m, "weir.source.offset").as_deref(), Some("8"));
            (
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            )
        })
        .collect();
    late.sort();
    assert_eq!(late, produced, "late views, unchanged");
}

on_both_brokers!(pageviews_results_and_late_views, pageviews_contract);

/// Counts records per key in one-second windows of event time (the value, as text), and
/// emits each closed window to `<topic>-closed` as `key start count`. Written by hand.
struct PerSecondCount {
    out: String,
}

struct PerSecond;

impl WindowDef for PerSecond {
    const NAME: &'static str = "per_second";
    const WINDOWS: Windows = Windows::tumbling(Duration::from_secs(1));
    type Key = String;
    type Value = u64;
}

impl Handler for PerSecondCount {
    type Key = Utf8;
    type Value = Utf8;

    fn settings() -> weir::__private::HandlerSettings {
        weir::__private::HandlerSettings {
            windows: &[PerSecond::NAME],
            ..weir::__private::HandlerSettings::DEFAULT
        }
    }

    fn event_time(record: &Record<'_, ValueOf<Self>, KeyOf<Self>>) -> Option<i64> {
        record.value().parse().ok()
    }
}

impl Process for PerSecondCount {
    type Error = weir::Error;

    async fn process(&self, r: Record<'_, String, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        ctx.window::<PerSecond>()
            .add(r.key(), |n| n.unwrap_or(0) + 1)?;
        Ok(())
    }

    async fn on_window_closed(&self, closed: WindowResult, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        if let Some((key, n)) = closed.get::<PerSecond>()? {
            let line = format!("{key} {} {n}", closed.window().start_ms);
            ctx.emit(&self.out, Some(key.as_bytes()), line.as_bytes(), &[]);
        }
        Ok(())
    }
}

async fn idle_partition_closes_by_wall_clock(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "idle", 2).await;
    let out = format!("{topic}-closed");
    broker.create_one_topic(&out, 2).await;
    broker.create_one_topic(&format!("{topic}.late"), 2).await;
    let base = 5_000_000;
    broker
        .produce(
            &topic,
            Some(0),
            [("k", base + 100), ("k", base + 200), ("k", base + 1_300)]
                .map(|(k, t)| (k.to_owned(), t.to_string())),
        )
        .await;
    let worker = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir.path())
            .idle_close_after(Duration::from_millis(300))
            .build(PerSecondCount { out: out.clone() })
            .expect("build"),
    );
    // [base, base + 1 s) closes with the third record; [base + 1 s, base + 2 s) only by the
    // wall clock: no record comes after it.
    let got = broker.consume(&out, 2, Duration::from_secs(60)).await;
    worker.stop_cleanly().await;
    let lines: BTreeSet<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        .collect();
    let expected: BTreeSet<String> = [format!("k {base} 2"), format!("k {} 1", base + 1_000)]
        .into_iter()
        .collect();
    assert_eq!(lines, expected);
    let stores = store_files(dir.path(), &group, &topic);
    let store = StoreReader::open(&stores[&0]).expect("open");
    let watermark: i64 = store
        .get("__weir_time", "watermark")
        .expect("read")
        .expect("a watermark");
    assert!(
        watermark >= base + 2_000,
        "the idle partition's watermark followed the clock past the last window's end: {watermark}"
    );
}

on_both_brokers!(
    idle_partition_closes_windows,
    idle_partition_closes_by_wall_clock
);

/// Issue 25, item 9, on a broker: records with absurd event times are dead-lettered with a
/// message within a deadline, the partition goes on, and its watermark stays sane.
async fn absurd_event_times_are_dead_lettered(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "absurd-time", 1).await;
    let out = format!("{topic}-closed");
    broker.create_one_topic(&out, 1).await;
    let base = 5_000_000i64;
    let records = [
        base.to_string(),
        (i64::MIN + 7).to_string(),
        "99999999999999999".to_owned(),
        (base + 500).to_string(),
    ];
    broker
        .produce(
            &topic,
            Some(0),
            records.iter().map(|t| ("k".to_owned(), t.clone())),
        )
        .await;
    let worker = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir.path())
            .build(PerSecondCount { out })
            .expect("build"),
    );
    let letters = broker
        .consume(&format!("{topic}.dlq"), 2, Duration::from_secs(30))
        .await;
    wait_until(
        "every record committed",
        Duration::from_secs(30),
        || async {
            let offsets = StoredCounts::read(dir.path(), &group, &topic).offsets;
            match offsets.get(&0) {
                Some(4) => Ok(()),
                other => Err(format!("offset {other:?}")),
            }
        },
    )
    .await;
    worker.stop_cleanly().await;
    for l in &letters {
        assert_eq!(header(l, "weir.reason").as_deref(), Some("undecodable"));
        assert!(
            header(l, "weir.error").is_some_and(|e| e.contains("event time")),
            "{:?}",
            header(l, "weir.error")
        );
    }
    let stores = store_files(dir.path(), &group, &topic);
    let store = StoreReader::open(&stores[&0]).expect("open");
    let watermark: Option<i64> = store.get("__weir_time", "watermark").expect("read");
    assert_eq!(watermark, Some(base + 500));
}

on_both_brokers!(absurd_event_times, absurd_event_times_are_dead_lettered);

/// Issue 25, item 8: idle time counts only while the partition is caught up. Every fetch of
/// the partition takes 700 ms (the mock's round trip) and brings one record, far longer than
/// `idle_close_after` (200 ms), while records of one open window wait in the log: none of
/// them may become late (before the fix, the first stall moved the watermark by the wall
/// clock, closed the window early and sent the rest to `.late`). Once the partition is caught
/// up, the window closes by the wall clock with every record in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_fetch_is_not_idleness() {
    let broker = TestBroker::mock_cluster(2);
    let mock = broker.embedded().expect("mock cluster");
    let (topic, group) = (unique("stall"), unique("g"));
    let (out, late) = (format!("{topic}-closed"), format!("{topic}.late"));
    for t in [&topic, &out, &late, &format!("{topic}.dlq")] {
        broker.create_one_topic(t, 1).await;
    }
    mock.set_group_coordinator(&group, 1).expect("coordinator");
    mock.set_partition_leader(&topic, 0, 2).expect("leader");
    // Event times near the end of the window [base, base + 1 s): 100 ms of a stall counted as
    // idleness would close it.
    let base = 7_000_000i64;
    // One produce request each: a fetch returns whole record batches, so one record a fetch.
    const RECORDS: i64 = 8;
    for i in 0..RECORDS {
        broker
            .produce(
                &topic,
                Some(0),
                [("k".to_owned(), (base + 900 + i * 10).to_string())],
            )
            .await;
    }
    mock.set_round_trip_time(2, Duration::from_millis(700))
        .expect("rtt");
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir.path())
            .idle_close_after(Duration::from_millis(200))
            .kafka("max.partition.fetch.bytes", "1")
            .build(PerSecondCount { out: out.clone() })
            .expect("build"),
    );
    let got = broker.consume(&out, 1, Duration::from_secs(60)).await;
    worker.stop_cleanly().await;
    let lines: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(lines, [format!("k {base} {RECORDS}")], "the window, whole");
    let late_records = read_all(broker.bootstrap(), &late, 1);
    assert!(
        late_records.is_empty(),
        "{} records went to .late",
        late_records.len()
    );
}

/// Handler `H` (text keys and values) with each record's event time taken from its value,
/// a number of milliseconds; the rest as `H` declares it.
struct ValueTimed<H>(H);

impl<H: Process + Handler<Key = Utf8, Value = Utf8>> Handler for ValueTimed<H> {
    type Key = Utf8;
    type Value = Utf8;

    fn settings() -> weir::__private::HandlerSettings {
        H::settings()
    }

    fn event_time(record: &Record<'_, ValueOf<Self>, KeyOf<Self>>) -> Option<i64> {
        record.value().parse().ok()
    }
}

impl<H: Process<Error = weir::Error> + Handler<Key = Utf8, Value = Utf8>> Process
    for ValueTimed<H>
{
    type Error = weir::Error;

    async fn process(&self, r: Record<'_, String, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        self.0.process(r, ctx).await
    }

    async fn on_window_closed(&self, closed: WindowResult, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        self.0.on_window_closed(closed, ctx).await
    }

    async fn on_timer(&self, timer: FiredTimer, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        self.0.on_timer(timer, ctx).await
    }
}

/// Sessions per key (gap 1 s, grace 2 s) over event time in the value, as text; each closed
/// session goes to `<topic>-sessions` as `key start end count`.
#[derive(Handler)]
#[handler(
    key = Utf8,
    value = Utf8,
    window(Visits, key = String, value = u64, gap_ms = 1000, grace_ms = 2000)
)]
struct SessionCount {
    out: String,
}

impl Process for SessionCount {
    type Error = weir::Error;

    async fn process(&self, r: Record<'_, String, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        ctx.window::<Visits>()
            .add_session(r.key(), |n| n.unwrap_or(0) + 1, |a, b| a + b)?;
        Ok(())
    }

    async fn on_window_closed(&self, closed: WindowResult, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        if let Some((key, n)) = closed.get::<Visits>()? {
            let w = closed.window();
            let line = format!("{key} {} {} {n}", w.start_ms, w.end_ms);
            ctx.emit(&self.out, Some(key.as_bytes()), line.as_bytes(), &[]);
        }
        Ok(())
    }
}

async fn sessions_merge_and_split(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "sessions", 1).await;
    let out = format!("{topic}-sessions");
    broker.create_one_topic(&out, 1).await;
    broker.create_one_topic(&format!("{topic}.late"), 1).await;
    // k: [1 s, 2 s) and [2.6 s, 3.6 s); 1.8 s bridges them into [1 s, 3.6 s); 5 s starts a
    // new session (more than the gap after 2.6 s); j at 20 s moves the watermark past both.
    let records = [
        ("k", 1_000),
        ("k", 2_600),
        ("k", 1_800),
        ("k", 5_000),
        ("j", 20_000),
    ]
    .map(|(k, t)| (k.to_owned(), t.to_string()));
    broker.produce(&topic, Some(0), records).await;
    let worker = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir.path())
            .build(ValueTimed(SessionCount { out: out.clone() }))
            .expect("build"),
    );
    let got = broker.consume(&out, 2, Duration::from_secs(60)).await;
    worker.stop_cleanly().await;
    let lines: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(lines, ["k 1000 3600 3", "k 5000 6000 1"]);
    let store = StoreReader::open(&store_files(dir.path(), &group, &topic)[&0]).expect("open");
    // Per key its open sessions: (start, end, count).
    type Sessions = Vec<(i64, i64, u64)>;
    let open: Vec<(String, Sessions)> = store.entries("visits").expect("entries");
    assert_eq!(open, vec![("j".to_owned(), vec![(20_000, 21_000, 1)])]);
}

on_both_brokers!(sessions_on_a_broker, sessions_merge_and_split);

/// Schedules an event-time timer one second after each record's time (its value) for the
/// record's key; fired timers go to `<topic>-fired` as `key at`.
#[derive(Handler)]
#[handler(key = Utf8, value = Utf8)]
struct Reminders {
    out: String,
}

impl Process for Reminders {
    type Error = weir::Error;

    async fn process(&self, r: Record<'_, String, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        let t = ctx.event_time();
        ctx.schedule_at(TimerAt::EventTime(t + 1_000), r.key())
    }

    async fn on_timer(&self, timer: FiredTimer, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        let key: String = timer.key()?;
        let TimerAt::EventTime(at) = timer.at() else {
            return Ok(());
        };
        ctx.emit(&self.out, None, format!("{key} {at}").as_bytes(), &[]);
        Ok(())
    }
}

async fn timers_fire_once_in_order_across_a_restart(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "timers", 1).await;
    let out = format!("{topic}-fired");
    broker.create_one_topic(&out, 1).await;
    let worker = |dir: &Path| {
        RunningWorker::spawn(
            broker
                .worker(&group, &topic, dir)
                .build(ValueTimed(Reminders { out: out.clone() }))
                .expect("build"),
        )
    };
    // Timers at 1 s .. 10 s; the watermark reaches 9.5 s: nine fire.
    let first: Vec<(String, String)> = (0..10)
        .map(|i| (format!("job{i}"), (i * 1_000).to_string()))
        .chain([("tick".to_owned(), "9500".to_owned())])
        .collect();
    broker.produce(&topic, Some(0), first).await;
    let running = worker(dir.path());
    let fired = broker.consume(&out, 9, Duration::from_secs(60)).await;
    running.stop_cleanly().await;
    assert_eq!(fired.len(), 9);
    // A restart on the same state: the tenth fires once the watermark passes 10 s, the
    // others never again.
    broker
        .produce(&topic, Some(0), [("tick".to_owned(), "10000".to_owned())])
        .await;
    let running = worker(dir.path());
    let fired = broker.consume(&out, 10, Duration::from_secs(60)).await;
    running.stop_cleanly().await;
    let lines: Vec<String> = fired
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        .collect();
    let expected: Vec<String> = (0..10)
        .map(|i| format!("job{i} {}", (i + 1) * 1_000))
        .collect();
    assert_eq!(lines, expected, "each timer once, in time order");
    let all = read_all(broker.bootstrap(), &out, 1);
    assert_eq!(all.len(), 10, "nothing fired twice");
}

on_both_brokers!(
    timers_across_a_restart,
    timers_fire_once_in_order_across_a_restart
);

/// Per partition in order: the closed windows' views by (page, window start), and the late
/// records' offsets, as the contract defines them.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Reference {
    closed: BTreeMap<(String, i64), u64>,
    late: BTreeSet<(i32, i64)>,
}

fn reference(partitions: &[Vec<PageView>], ignore: &str) -> Reference {
    let mut out = Reference::default();
    for (p, views) in partitions.iter().enumerate() {
        let mut watermark: Option<i64> = None;
        let mut open: BTreeMap<(String, i64), u64> = BTreeMap::new();
        for (offset, v) in views.iter().enumerate() {
            let start = v.ts_ms.div_euclid(MIN) * MIN;
            if watermark.is_some_and(|w| start + MIN + 10_000 <= w) {
                out.late.insert((p as i32, offset as i64));
            } else {
                *open.entry((v.page.clone(), start)).or_insert(0) += 1;
            }
            watermark = Some(watermark.map_or(v.ts_ms, |w| w.max(v.ts_ms)));
        }
        for ((page, start), n) in open {
            if page != ignore && watermark.is_some_and(|w| start + MIN + 10_000 <= w) {
                out.closed.insert((page, start), n);
            }
        }
    }
    out
}

const PARTITIONS: i32 = 2;

async fn windows_stay_exact_under_sigkills(kind: BrokerKind) {
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(kind, "pv-kill", PARTITIONS).await;
    broker.ensure_topic(OUTPUT_TOPIC, 2).await;
    broker
        .create_one_topic(&format!("{topic}.late"), PARTITIONS)
        .await;
    broker
        .create_one_topic(&format!("{group}-{topic}-changelog"), PARTITIONS)
        .await;
    let logs = tempfile::tempdir().expect("logs");

    // Per partition three pages, a view every 200 ms of event time, every 7th five seconds
    // out of order (within grace), every 97th two minutes behind (late); last a view of a
    // closing page an hour ahead, which closes every window before it.
    let tag = unique("");
    let closer = format!("/closer{tag}");
    let per_partition = 1_500usize;
    let base = 2_000 * MIN;
    let mut partitions: Vec<Vec<PageView>> = Vec::new();
    for p in 0..PARTITIONS as usize {
        let mut views = Vec::new();
        for i in 0..per_partition {
            let mut ts_ms = base + i as i64 * 200;
            if i % 7 == 3 {
                ts_ms -= 5_000;
            }
            if i % 97 == 96 {
                ts_ms -= 2 * MIN;
            }
            views.push(PageView {
                page: format!("/p{}{tag}", p * 3 + i % 3),
                user: format!("u{}", i % 11),
                ts_ms,
            });
        }
        views.push(PageView {
            page: closer.clone(),
            user: "u".into(),
            ts_ms: base + 60 * MIN,
        });
        let records = views
            .iter()
            .map(|v| (v.page.clone(), serde_json::to_string(v).expect("json")));
        broker.produce(&topic, Some(p as i32), records).await;
        partitions.push(views);
    }
    let expected = reference(&partitions, &closer);
    assert!(expected.closed.len() > 20 && !expected.late.is_empty());
    let total = (per_partition as i64 + 1) * i64::from(PARTITIONS);

    let mut starts = 0;
    let start = |starts: &mut usize| {
        let log = logs.path().join(format!("{starts}.log"));
        *starts += 1;
        let mut cmd = worker_command(env!("CARGO_BIN_EXE_pageviews-worker"));
        cmd.env("WEIR_BROKERS", broker.bootstrap())
            .env("WEIR_GROUP", &group)
            .env("WEIR_TOPICS", &topic)
            .env("WEIR_STATE_DIR", dir.path())
            .env("WEIR_CHANGELOG", "true")
            .env("WEIR_BATCH_SIZE", "100")
            .env("PAGEVIEWS_WORKER_DELAY_US", "1000");
        WorkerProcess::start(cmd, &log)
    };
    let processed = || {
        store_files(dir.path(), &group, &topic)
            .iter()
            .filter_map(|(p, path)| {
                StoreReader::open(path)
                    .ok()?
                    .next_offset(&topic, *p)
                    .ok()
                    .flatten()
            })
            .sum::<i64>()
    };
    let mut worker = start(&mut starts);
    let rounds = 3;
    for round in 1..=rounds {
        let want = total * round / (rounds + 2);
        wait_processed(Duration::from_secs(120), want, processed).await;
        worker.kill();
        let at = processed();
        assert!(at < total, "round {round}: the kill came after the end");
        if round == 2 {
            // As if the partitions moved to another machine: an empty state directory,
            // restored from the changelog.
            std::fs::remove_dir_all(dir.path()).expect("empty the state dir");
            std::fs::create_dir_all(dir.path()).expect("recreate the state dir");
        }
        worker = start(&mut starts);
    }
    wait_processed(Duration::from_secs(180), total, processed).await;
    worker.stop();

    // Every closed window's result at least once; copies identical.
    let pages: BTreeSet<String> = partitions
        .iter()
        .flatten()
        .map(|v| v.page.clone())
        .filter(|p| *p != closer)
        .collect();
    let got = results_for(&broker, &pages).await;
    let mut closed: BTreeMap<(String, i64), u64> = BTreeMap::new();
    let mut duplicates = 0;
    for (_, r) in &got {
        assert_eq!(r.window_end_ms, r.window_start_ms + MIN);
        if let Some(before) = closed.insert((r.page.clone(), r.window_start_ms), r.views) {
            assert_eq!(
                before, r.views,
                "two different results for one window: {r:?}"
            );
            duplicates += 1;
        }
    }
    assert_eq!(closed, expected.closed, "the closed windows' counts");
    // Late views: each exactly those of the reference (by source partition and offset).
    let late_topic = format!("{topic}.late");
    let late: BTreeSet<(i32, i64)> = read_all(broker.bootstrap(), &late_topic, PARTITIONS)
        .iter()
        .map(|m| {
            let n = |h: &str| -> i64 {
                header(m, h)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("header {h}"))
            };
            (n("weir.source.partition") as i32, n("weir.source.offset"))
        })
        .collect();
    assert_eq!(late, expected.late, "the late views");
    // State: only the closing page's window is open.
    for (p, path) in store_files(dir.path(), &group, &topic) {
        let store = StoreReader::open(&path).expect("open");
        let open: Vec<((String, i64), u64)> = store.entries("per_minute").expect("entries");
        assert!(
            open.iter().all(|((page, _), _)| *page == closer),
            "p{p}: windows left open: {open:?}"
        );
    }
    let restores = count_in_logs(logs.path(), "restored from its changelog");
    eprintln!(
        "{} results for {} windows ({duplicates} repeated), {} late views, {restores} restores",
        got.len(),
        closed.len(),
        late.len()
    );
    assert!(
        restores >= 1,
        "no partition was restored from the changelog"
    );
}

on_both_brokers!(windows_under_sigkills, windows_stay_exact_under_sigkills);

/// A window closed in state whose result the broker has not acknowledged when the worker
/// dies: the next run sends the same result (mock: Produce errors injected hold the
/// acknowledgement back).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_closed_windows_result_is_sent_again_after_a_crash_before_its_acknowledgement() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let Fixture {
        broker,
        topic,
        group,
        dir,
    } = Fixture::new(BrokerKind::Mock, "pv-unacked", 1).await;
    broker.ensure_topic(OUTPUT_TOPIC, 2).await;
    broker.create_one_topic(&format!("{topic}.late"), 1).await;
    let page = format!("/crash{}", unique(""));
    let base = 3_000 * MIN;
    broker
        .produce(
            &topic,
            Some(0),
            [1, 2, 71].map(|s| view(&page, base + s * 1_000)),
        )
        .await;
    let mock = broker.embedded().expect("mock");
    mock.inject_request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 10_000],
    )
    .expect("inject");
    let worker = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir.path())
            .build(PageViews)
            .expect("build"),
    );
    // The batch is committed: the first minute is closed in state (only the second is
    // open) and its result waits in the outbox.
    let path = dir.path().join(&group).join(&topic).join("0.sqlite");
    wait_until(
        "the window closed in state",
        Duration::from_secs(60),
        || {
            let seen = StoreReader::open(&path).ok().map(|s| {
                let open: Vec<((String, i64), u64)> = s.entries("per_minute").unwrap_or_default();
                (s.next_offset(&topic, 0).ok().flatten(), open)
            });
            let pending = weir_state::PartitionStore::open(&path)
                .ok()
                .and_then(|s| s.pending_outbox(10).ok())
                .map_or(0, |rows| rows.len());
            let page = page.clone();
            async move {
                match seen {
                    Some((Some(3), open))
                        if open == vec![((page, base + MIN), 1)] && pending > 0 =>
                    {
                        Ok(())
                    }
                    other => Err(format!("store {other:?}, outbox rows {pending}")),
                }
            }
        },
    )
    .await;
    worker.crash().await;
    let wanted: BTreeSet<String> = [page.clone()].into_iter().collect();
    assert!(
        results_for(&broker, &wanted).await.is_empty(),
        "nothing was acknowledged before the crash"
    );
    mock.clear_request_errors(RDKafkaApiKey::Produce)
        .expect("clear");
    let worker = RunningWorker::spawn(
        broker
            .worker(&group, &topic, dir.path())
            .build(PageViews)
            .expect("build"),
    );
    let got = wait_results(&broker, &wanted, 1).await;
    worker.stop_cleanly().await;
    let results: Vec<PageViewsPerMinute> = got.into_iter().map(|(_, r)| r).collect();
    assert_eq!(
        results,
        vec![PageViewsPerMinute {
            page: page.clone(),
            window_start_ms: base,
            window_end_ms: base + MIN,
            views: 2,
        }],
        "the result as committed, once the broker takes it"
    );
}
