//! Windows, lateness and timers in the test kit (no broker): the batch runner the workers use,
//! driven with explicit event times, watermarks and wall-clock time. A proptest checks that for
//! any event-time sequence and batch cut the closed windows equal a reference fold.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use weir::prelude::*;
use weir::testing::TestKit;

/// What the test handlers emit for each closed window.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Closed {
    key: String,
    start: i64,
    end: i64,
    count: u64,
}

const CLOSED: &str = "closed";
const UPDATES: &str = "updates";

async fn emit_closed<W: WindowDef<Key = String, Value = u64>>(
    closed: &WindowResult,
    ctx: &mut Ctx<'_>,
) -> weir::Result<()> {
    if let Some((key, count)) = closed.get::<W>()? {
        let w = closed.window();
        let c = Closed {
            key,
            start: w.start_ms,
            end: w.end_ms,
            count,
        };
        ctx.emit_json(CLOSED, Some(c.key.as_bytes()), &c)?;
    }
    Ok(())
}

fn closed(kit: &TestKit<impl Process>) -> Vec<Closed> {
    decode(kit, CLOSED)
}

fn decode<T: serde::de::DeserializeOwned>(kit: &TestKit<impl Process>, topic: &str) -> Vec<T> {
    kit.emitted_to(topic)
        .iter()
        .map(|r| serde_json::from_slice(r.value.as_deref().unwrap_or_default()).expect("json"))
        .collect()
}

fn c(key: &str, start: i64, end: i64, count: u64) -> Closed {
    Closed {
        key: key.into(),
        start,
        end,
        count,
    }
}

/// Tumbling 10 s windows, grace 5 s; every update reported too.
#[derive(Handler)]
#[handler(
    topic = "clicks",
    key = Utf8,
    value = Utf8,
    window_updates = true,
    window(Tumbling, key = String, value = u64, size_ms = 10000, grace_ms = 5000)
)]
struct TumblingCount;

impl Process for TumblingCount {
    type Error = weir::Error;

    async fn process(&self, r: Record<'_, String, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        ctx.window::<Tumbling>()
            .add(r.key(), |n| n.unwrap_or(0) + 1)?;
        Ok(())
    }

    async fn on_window_closed(&self, closed: WindowResult, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        emit_closed::<Tumbling>(&closed, ctx).await
    }

    async fn on_window_updated(
        &self,
        updated: WindowResult,
        ctx: &mut Ctx<'_>,
    ) -> weir::Result<()> {
        let (key, count) = updated.get::<Tumbling>()?.expect("a Tumbling window");
        let w = updated.window();
        ctx.emit_json(UPDATES, None, &c(&key, w.start_ms, w.end_ms, count))
    }
}

/// Hopping windows of 10 s every 5 s, no grace.
#[derive(Handler)]
#[handler(
    topic = "clicks",
    key = Utf8,
    value = Utf8,
    late_topic = "",
    window(Hopping, key = String, value = u64, size_ms = 10000, advance_ms = 5000)
)]
struct HoppingCount;

impl Process for HoppingCount {
    type Error = weir::Error;

    async fn process(&self, r: Record<'_, String, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        ctx.window::<Hopping>()
            .add(r.key(), |n| n.unwrap_or(0) + 1)?;
        Ok(())
    }

    async fn on_window_closed(&self, closed: WindowResult, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        emit_closed::<Hopping>(&closed, ctx).await
    }
}

/// Sessions with a 3 s inactivity gap, grace 2 s.
#[derive(Handler)]
#[handler(
    topic = "clicks",
    key = Utf8,
    value = Utf8,
    window(Sessions, key = String, value = u64, gap_ms = 3000, grace_ms = 2000)
)]
struct SessionCount;

impl Process for SessionCount {
    type Error = weir::Error;

    async fn process(&self, r: Record<'_, String, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        ctx.window::<Sessions>()
            .add_session(r.key(), |n| n.unwrap_or(0) + 1, |a, b| a + b)?;
        Ok(())
    }

    async fn on_window_closed(&self, closed: WindowResult, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        emit_closed::<Sessions>(&closed, ctx).await
    }
}

fn send(kit: &mut TestKit<impl Process>, events: &[(&str, i64)]) {
    for (key, t) in events {
        kit.send_at(*t, key, "x");
    }
}

#[tokio::test]
async fn out_of_order_records_within_grace_count_and_later_ones_are_late_and_nowhere_else() {
    let mut kit = TestKit::new(TumblingCount).expect("kit");
    send(
        &mut kit,
        &[
            ("a", 1_000),
            ("a", 12_000), // watermark 12 s: [0, 10 s) closes at 15 s
            ("a", 9_000),  // out of order, within grace: counted
            ("a", 15_000), // watermark 15 s: [0, 10 s) closes
            ("a", 9_500),  // late
        ],
    );
    kit.run().await.expect("run");
    assert_eq!(closed(&kit), vec![c("a", 0, 10_000, 2)]);
    let late = kit.emitted_to("clicks.late");
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0].value.as_deref(), Some(&b"x"[..]), "sent unchanged");
    let header = |name: &str| {
        late[0]
            .headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header("weir.source.topic").as_deref(), Some("clicks"));
    assert_eq!(header("weir.source.offset").as_deref(), Some("4"));
    // The late record is in no window: the open one holds the two later records only.
    let open = kit.open_windows::<Tumbling>().expect("open");
    assert_eq!(
        open,
        vec![(
            "a".to_owned(),
            Window {
                start_ms: 10_000,
                end_ms: 20_000
            },
            2
        )]
    );
    // Every update was reported, the late record's not.
    let updates: Vec<Closed> = decode(&kit, UPDATES);
    assert_eq!(
        updates.iter().map(|u| u.count).collect::<Vec<_>>(),
        vec![1, 1, 2, 2]
    );
}

#[tokio::test]
async fn event_time_can_come_from_a_json_field_set_by_the_worker() {
    let mut kit = TestKit::new(TumblingCount)
        .expect("kit")
        .event_time_field("at");
    // Kafka timestamps say one window; the values' `at` fields say two.
    kit.send_at(1_000, "a", r#"{"at": 2000}"#)
        .send_at(1_000, "a", r#"{"at": "12000"}"#)
        .send_at(1_000, "a", r#"{"no_time": true}"#);
    kit.run().await.expect("run");
    assert_eq!(kit.watermark("clicks", 0).expect("wm"), Some(12_000));
    let open = kit.open_windows::<Tumbling>().expect("open");
    let counts: Vec<(i64, u64)> = open.iter().map(|(_, w, n)| (w.start_ms, *n)).collect();
    // The record without the field takes its Kafka timestamp (the handler's event time).
    assert_eq!(counts, vec![(0, 2), (10_000, 1)]);
}

#[tokio::test]
async fn a_window_closes_exactly_when_the_watermark_reaches_its_end_plus_grace() {
    let mut kit = TestKit::new(TumblingCount).expect("kit");
    send(&mut kit, &[("a", 1_000), ("b", 2_000)]);
    kit.advance_watermark(14_999).await.expect("advance");
    assert_eq!(closed(&kit), vec![], "end + grace = 15 s not reached");
    assert_eq!(kit.watermark("clicks", 0).expect("wm"), Some(14_999));
    kit.advance_watermark(15_000).await.expect("advance");
    assert_eq!(
        closed(&kit),
        vec![c("a", 0, 10_000, 1), c("b", 0, 10_000, 1)]
    );
    // Closed once: a further advance emits nothing more, and the rows are gone.
    kit.advance_watermark(100_000).await.expect("advance");
    assert_eq!(closed(&kit).len(), 2);
    assert!(kit.open_windows::<Tumbling>().expect("open").is_empty());
}

#[tokio::test]
async fn hopping_windows_count_a_record_in_each_window_covering_it() {
    let mut kit = TestKit::new(HoppingCount).expect("kit");
    send(&mut kit, &[("a", 7_000), ("a", 12_000)]);
    kit.advance_watermark(30_000).await.expect("advance");
    assert_eq!(
        closed(&kit),
        vec![
            c("a", 0, 10_000, 1),
            c("a", 5_000, 15_000, 2),
            c("a", 10_000, 20_000, 1),
        ]
    );
    // A record older than every open window's end is late; late records are dropped here.
    kit.send_at(8_000, "a", "x");
    kit.run().await.expect("run");
    assert!(kit.emitted_to("clicks.late").is_empty());
    assert_eq!(closed(&kit).len(), 3);
}

#[tokio::test]
async fn sessions_merge_when_a_record_bridges_them_and_split_by_the_gap() {
    let mut kit = TestKit::new(SessionCount).expect("kit");
    send(
        &mut kit,
        &[
            ("a", 1_000),
            ("b", 1_500), // another key, its own session
            ("a", 2_000), // within the gap: same session [1 s, 5 s)
            ("a", 6_000), // past the gap: a new session [6 s, 9 s); watermark 6 s
            ("a", 4_500), // bridges [1 s, 5 s) and [6 s, 9 s): one session [1 s, 9 s)
        ],
    );
    kit.run().await.expect("run");
    let open = kit.open_windows::<Sessions>().expect("open");
    assert_eq!(
        open,
        vec![
            (
                "a".to_owned(),
                Window {
                    start_ms: 1_000,
                    end_ms: 9_000
                },
                4
            ),
            (
                "b".to_owned(),
                Window {
                    start_ms: 1_500,
                    end_ms: 4_500
                },
                1
            ),
        ]
    );
    // b's session closes at 4.5 s + 2 s grace; a's at 9 s + 2 s.
    kit.advance_watermark(10_999).await.expect("advance");
    assert_eq!(closed(&kit), vec![c("b", 1_500, 4_500, 1)]);
    kit.advance_watermark(11_000).await.expect("advance");
    assert_eq!(
        closed(&kit),
        vec![c("b", 1_500, 4_500, 1), c("a", 1_000, 9_000, 4)]
    );
    // Late: a record whose session (its own here) would be closed already: [5 s, 8 s) closes
    // at 10 s.
    kit.send_at(5_000, "a", "x");
    kit.run().await.expect("run");
    assert_eq!(kit.emitted_to("clicks.late").len(), 1);
    kit.send_at(12_000, "a", "x")
        // Exactly the gap after the last record: the same session (inclusive, as in Kafka
        // Streams; before the fix a new one).
        .send_at(15_000, "a", "x")
        .send_at(20_000, "a", "x")
        // More than the grace period behind the watermark, but within the gap of the open
        // session [20 s, 23 s): it joins it (before the fix it was late). [12 s, 18 s) closed
        // at the watermark 20 s and takes nothing more.
        .send_at(17_500, "a", "x");
    kit.run().await.expect("run");
    assert_eq!(kit.emitted_to("clicks.late").len(), 1, "no new late record");
    kit.advance_watermark(30_000).await.expect("advance");
    assert_eq!(
        closed(&kit)[2..],
        [c("a", 12_000, 18_000, 2), c("a", 17_500, 23_000, 2)]
    );
}
/// Schedules timers from records: value `e<ms>` at that event time, `c<ms>` on the wall clock,
/// `x<ms>` cancels the event-time timer; each fired timer is emitted.
#[derive(Handler)]
#[handler(topic = "jobs", key = Utf8, value = Utf8)]
struct Timers;

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Fired {
    key: String,
    at: TimerAt,
    watermark: Option<i64>,
}

impl Process for Timers {
    type Error = weir::Error;

    async fn process(&self, r: Record<'_, String, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        let (kind, ms) = r.value().split_at(1);
        let ms: i64 = ms.parse().expect("a time");
        match kind {
            "e" => ctx.schedule_at(TimerAt::EventTime(ms), r.key())?,
            "c" => ctx.schedule_at(TimerAt::WallClock(ms), r.key())?,
            "x" => ctx.cancel_timer(TimerAt::EventTime(ms), r.key())?,
            _ => {}
        }
        Ok(())
    }

    async fn on_timer(&self, timer: FiredTimer, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        let fired = Fired {
            key: timer.key()?,
            at: timer.at(),
            watermark: ctx.watermark(),
        };
        ctx.emit_json("fired", None, &fired)
    }
}

#[tokio::test]
async fn timers_fire_once_in_order_across_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let mut kit = TestKit::in_dir(Timers, dir.path()).expect("kit");
    kit.set_wall_clock(1_000_000);
    kit.send_at(100, "late-job", "e5000")
        .send_at(100, "early-job", "e3000")
        .send_at(100, "cancelled", "e4000")
        .send_at(100, "cancelled", "x4000")
        .send_at(100, "clock-job", "c1000500")
        .send_at(200, "same-again", "e3000")
        .send_at(200, "same-again", "e3000");
    kit.run().await.expect("run");
    assert!(kit.emitted_to("fired").is_empty(), "nothing due yet");
    drop(kit);

    // A new kit on the same stores: the timers were committed with their batches.
    let mut kit = TestKit::in_dir(Timers, dir.path()).expect("kit");
    kit.set_wall_clock(1_000_000);
    kit.send_at(3_500, "tick", "-0");
    kit.run().await.expect("run");
    let fired: Vec<Fired> = decode(&kit, "fired");
    assert_eq!(
        fired.iter().map(|f| f.key.as_str()).collect::<Vec<_>>(),
        vec!["early-job", "same-again"],
        "event-time timers due at watermark 3.5 s, in time then key order"
    );
    assert_eq!(fired[0].watermark, Some(3_500));
    kit.advance_wall_clock(500).tick().await.expect("tick");
    kit.advance_watermark(10_000).await.expect("advance");
    kit.advance_watermark(20_000).await.expect("advance");
    let fired: Vec<Fired> = decode(&kit, "fired");
    assert_eq!(
        fired
            .iter()
            .map(|f| (f.key.as_str(), f.at))
            .collect::<Vec<_>>(),
        vec![
            ("early-job", TimerAt::EventTime(3_000)),
            ("same-again", TimerAt::EventTime(3_000)),
            ("clock-job", TimerAt::WallClock(1_000_500)),
            ("late-job", TimerAt::EventTime(5_000)),
        ],
        "each timer once; the cancelled one never"
    );
}

/// A window callback that fails the first `fail` times.
#[derive(Handler)]
#[handler(
    topic = "clicks",
    key = Utf8,
    value = Utf8,
    window(Flaky, key = String, value = u64, size_ms = 1000)
)]
struct FlakyClose {
    fail: std::sync::atomic::AtomicU32,
}

impl Process for FlakyClose {
    type Error = weir::Error;

    async fn process(&self, r: Record<'_, String, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        ctx.window::<Flaky>().add(r.key(), |n| n.unwrap_or(0) + 1)?;
        Ok(())
    }

    async fn on_window_closed(&self, closed: WindowResult, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        emit_closed::<Flaky>(&closed, ctx).await?;
        let left = self.fail.load(std::sync::atomic::Ordering::SeqCst);
        if left > 0 {
            self.fail
                .store(left - 1, std::sync::atomic::Ordering::SeqCst);
            return Err(weir::Error::Emit {
                topic: CLOSED.into(),
                reason: "broken on purpose".into(),
            });
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_failing_close_commits_nothing_and_closes_the_window_once_it_succeeds() {
    let mut kit = TestKit::new(FlakyClose { fail: 1.into() }).expect("kit");
    send(&mut kit, &[("a", 100), ("a", 2_000)]);
    let err = kit.run().await.expect_err("the close fails");
    assert!(
        err.to_string().contains("on_window_closed")
            && err.to_string().contains("broken on purpose"),
        "{err}"
    );
    assert_eq!(kit.committed_offset("clicks", 0).expect("offset"), None);
    assert!(
        closed(&kit).is_empty(),
        "nothing of the failed batch is sent"
    );
    kit.run().await.expect("run again");
    assert_eq!(closed(&kit), vec![c("a", 0, 1_000, 1)]);
    assert_eq!(kit.committed_offset("clicks", 0).expect("offset"), Some(2));
}

// The reference folds: what must close, given the records in order.

const SIZE: i64 = 10_000;
const GRACE: i64 = 5_000;
const GAP: i64 = 3_000;
const SESSION_GRACE: i64 = 2_000;

/// (closed windows sorted as they close, late records' indexes, final watermark)
fn tumbling_reference(events: &[(String, i64)]) -> (Vec<Closed>, Vec<usize>, Option<i64>) {
    let mut watermark: Option<i64> = None;
    let mut windows: BTreeMap<(i64, String), u64> = BTreeMap::new();
    let mut late = Vec::new();
    for (i, (key, t)) in events.iter().enumerate() {
        let start = t.div_euclid(SIZE) * SIZE;
        if watermark.is_some_and(|w| start + SIZE + GRACE <= w) {
            late.push(i);
        } else {
            *windows.entry((start, key.clone())).or_insert(0) += 1;
        }
        watermark = Some(watermark.map_or(*t, |w| w.max(*t)));
    }
    let closed = windows
        .into_iter()
        .filter(|((start, _), _)| watermark.is_some_and(|w| start + SIZE + GRACE <= w))
        .map(|((start, key), n)| c(&key, start, start + SIZE, n))
        .collect();
    (closed, late, watermark)
}

/// Sessions as docs/time.md states them (Kafka Streams' rules), computed without the
/// implementation's bookkeeping: per key, the event times of its open sessions; a session is
/// a maximal run of them each at most `GAP` after the one before (inclusive), ending `GAP`
/// after its last; it closes once the watermark reaches its end plus grace and is final from
/// then on. A record is late when the session it would belong to is closed already.
fn session_reference(events: &[(String, i64)]) -> (Vec<Closed>, Vec<usize>) {
    /// The runs of sorted `times` whose neighbours are at most `GAP` apart.
    fn runs(times: &[i64]) -> Vec<&[i64]> {
        times.chunk_by(|a, b| b - a <= GAP).collect()
    }
    let mut watermark: Option<i64> = None;
    let mut open: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut closed = Vec::new();
    let mut late = Vec::new();
    for (i, (key, t)) in events.iter().enumerate() {
        let times = open.entry(key.clone()).or_default();
        let mut with = times.clone();
        with.push(*t);
        with.sort_unstable();
        let end = runs(&with)
            .into_iter()
            .find(|run| run.contains(t))
            .and_then(|run| run.last())
            .expect("t is in a run")
            + GAP;
        if watermark.is_some_and(|w| end + SESSION_GRACE <= w) {
            late.push(i);
        } else {
            *times = with;
        }
        let w = watermark.map_or(*t, |w| w.max(*t));
        watermark = Some(w);
        for (key, times) in open.iter_mut() {
            let mut still_open = Vec::new();
            for run in runs(times) {
                let (start, end) = (run[0], run[run.len() - 1] + GAP);
                if end + SESSION_GRACE <= w {
                    let n = run.len() as u64;
                    closed.push((
                        end + SESSION_GRACE,
                        start,
                        key.clone(),
                        c(key, start, end, n),
                    ));
                } else {
                    still_open.extend_from_slice(run);
                }
            }
            *times = still_open;
        }
    }
    closed.sort();
    (closed.into_iter().map(|(.., c)| c).collect(), late)
}

fn events() -> impl Strategy<Value = Vec<(String, i64)>> {
    prop::collection::vec(
        // Half-second steps, so that records land on window edges and closing times often.
        (prop::sample::select(vec!["a", "b", "c"]), 0i64..240)
            .prop_map(|(k, t)| (k.to_owned(), t * 500)),
        1..60,
    )
}

fn late_offsets(kit: &TestKit<impl Process>) -> Vec<usize> {
    kit.emitted_to("clicks.late")
        .iter()
        .map(|r| {
            let (_, v) = r
                .headers
                .iter()
                .find(|(k, _)| *k == "weir.source.offset")
                .expect("source offset");
            String::from_utf8_lossy(v).parse().expect("offset")
        })
        .collect()
}

fn run_kit<H: Process>(handler: H, events: &[(String, i64)], batch: usize) -> TestKit<H> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut kit = TestKit::new(handler).expect("kit").batch_size(batch);
    for (key, t) in events {
        kit.send_at(*t, key, "x");
    }
    rt.block_on(kit.run()).expect("run");
    kit
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn tumbling_windows_close_as_the_reference_fold_for_any_batch_cut(
        events in events(),
        batch in 1usize..20,
    ) {
        let (expected, late, _) = tumbling_reference(&events);
        let kit = run_kit(TumblingCount, &events, batch);
        let got = closed(&kit);
        // Windows closing at the same time close in key order; the reference lists them by
        // start, then key, which is the same order here (one window per close time).
        let mut sorted = expected.clone();
        sorted.sort_by_key(|c| (c.end, c.key.clone()));
        prop_assert_eq!(&got, &sorted);
        prop_assert_eq!(late_offsets(&kit), late);
        // Each (key, window) closes once.
        let windows: std::collections::BTreeSet<(String, i64)> =
            got.iter().map(|c| (c.key.clone(), c.start)).collect();
        prop_assert_eq!(windows.len(), got.len());
    }

    #[test]
    fn sessions_close_as_the_reference_fold_for_any_batch_cut(
        events in events(),
        batch in 1usize..20,
    ) {
        let (expected, late) = session_reference(&events);
        let kit = run_kit(SessionCount, &events, batch);
        prop_assert_eq!(closed(&kit), expected);
        prop_assert_eq!(late_offsets(&kit), late);
    }
}

#[test]
fn the_reference_fold_is_not_trivial() {
    // Guards the proptest's reference against always agreeing with an empty result.
    let events: Vec<(String, i64)> = [("a", 1_000), ("a", 30_000), ("a", 2_000)]
        .iter()
        .map(|(k, t)| (k.to_string(), *t))
        .collect();
    let (closed, late, w) = tumbling_reference(&events);
    assert_eq!(closed, vec![c("a", 0, 10_000, 1)]);
    assert_eq!(late, vec![2]);
    assert_eq!(w, Some(30_000));
    // Sessions: exactly the gap apart is one session; a record more than the grace behind the
    // watermark joins an open session within its gap; one whose session closed is late.
    let events: Vec<(String, i64)> = [
        ("a", 0),
        ("a", 3_000),
        ("a", 10_000),
        ("a", 7_500),
        ("a", 500),
    ]
    .iter()
    .map(|(k, t)| (k.to_string(), *t))
    .collect();
    let (closed, late) = session_reference(&events);
    assert_eq!(closed, vec![c("a", 0, 6_000, 2)]);
    assert_eq!(late, vec![4]);
    let _ = Duration::ZERO;
}

/// Issue 25, item 9: absurd event times (near `i64::MIN`, past the wall clock by more than a
/// day, `1e300` in a JSON field) are undecodable records, dead-lettered with a message; they
/// neither hang the partition (the window loop saturated at `i64::MIN` before the fix) nor
/// move the watermark.
#[tokio::test]
async fn absurd_event_times_are_dead_lettered_not_hung_on() {
    let mut kit = TestKit::new(TumblingCount).expect("kit");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    kit.send_at(1_000, "a", "x")
        .send_at(i64::MIN + 3, "a", "x")
        .send_at(now + 2 * 24 * 3600 * 1000, "a", "x")
        .send_at(2_000, "a", "x");
    tokio::time::timeout(Duration::from_secs(10), kit.run())
        .await
        .expect("the partition is not hung")
        .expect("run");
    let dead = kit.dead_letters();
    assert_eq!(dead.len(), 2, "{dead:?}");
    for d in &dead {
        assert_eq!(
            d.reason,
            weir::testing::DeadLetterReason::Undecodable,
            "{d:?}"
        );
        assert!(d.error.contains("event time"), "{}", d.error);
    }
    assert_eq!(kit.watermark("clicks", 0).expect("watermark"), Some(2_000));
    assert_eq!(
        kit.open_windows::<Tumbling>()
            .expect("open")
            .iter()
            .map(|(_, w, n)| (w.start_ms, *n))
            .collect::<Vec<_>>(),
        [(0, 2)]
    );

    // The same through a JSON field: 1e300 would saturate to i64::MAX.
    let mut kit = TestKit::new(TumblingCount)
        .expect("kit")
        .event_time_field("ts");
    kit.send("a", r#"{"ts":3000}"#).send("a", r#"{"ts":1e300}"#);
    tokio::time::timeout(Duration::from_secs(10), kit.run())
        .await
        .expect("the partition is not hung")
        .expect("run");
    assert_eq!(kit.dead_letters().len(), 1);
    assert_eq!(kit.watermark("clicks", 0).expect("watermark"), Some(3_000));
}

/// Issue 25, item 10: what weir produces keeps time. A closed window's result carries the
/// window's last instant; a late record and a dead letter keep their source record's time.
#[tokio::test]
async fn produced_records_keep_their_event_time() {
    let mut kit = TestKit::new(TumblingCount).expect("kit");
    kit.send_at(1_000, "a", "x")
        .send_at(16_000, "a", "x")
        .send_at(2_000, "a", "x");
    kit.run().await.expect("run");
    let closed = kit.emitted_to(CLOSED);
    assert_eq!(closed.len(), 1);
    assert_eq!(
        closed[0].timestamp,
        Some(9_999),
        "[0 s, 10 s)'s last instant"
    );
    let late = kit.emitted_to("clicks.late");
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].timestamp, Some(2_000), "the late record's own time");
    let updates = kit.emitted_to(UPDATES);
    assert_eq!(
        updates.iter().map(|r| r.timestamp).collect::<Vec<_>>(),
        [Some(1_000), Some(16_000)],
        "an update carries the time of the record that made it"
    );

    let mut kit = TestKit::new(TumblingCount)
        .expect("kit")
        .event_time_field("ts");
    kit.send_at(5_000, "a", "not json but a line");
    kit.send_at(6_000, "a", r#"{"ts":-99999999999999999}"#);
    kit.run().await.expect("run");
    let dead = kit.dead_letters();
    assert_eq!(
        dead.iter().map(|d| d.timestamp).collect::<Vec<_>>(),
        [Some(6_000)]
    );
}
