//! Retry, dead-letter and delivery semantics through the test kit (the runtime's batch code,
//! no broker).

use std::collections::BTreeMap;

use weir::prelude::*;
use weir::testing::DeadLetterReason;
use weir::testing::TestKit;
use weir_tests::{CountError, CountHandler, COUNTS};

fn counts<H: Process>(kit: &TestKit<H>) -> BTreeMap<String, u64> {
    kit.entries(COUNTS).expect("entries")
}

fn send(kit: &mut TestKit<impl Process>, pairs: &[(&str, &str)]) {
    for (k, v) in pairs {
        kit.send(k, v);
    }
}

#[tokio::test]
async fn a_record_failing_every_attempt_is_dead_lettered_and_the_rest_commits() {
    let mut kit = TestKit::new(CountHandler::with_poison("poison", u64::MAX))
        .expect("kit")
        .max_attempts(3);
    send(
        &mut kit,
        &[("a", "x1"), ("a", "poison"), ("a", "x2"), ("b", "y1")],
    );
    assert_eq!(kit.run().await.expect("run"), 4);
    let dead = kit.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        (dead[0].reason, dead[0].attempts),
        (DeadLetterReason::Failed, 3)
    );
    assert_eq!(dead[0].source.2, 1);
    assert!(dead[0].error.contains("poison record"), "{}", dead[0].error);
    // The poison record's own write was undone; the others count, in order.
    assert_eq!(
        counts(&kit),
        BTreeMap::from([("a".into(), 2), ("b".into(), 1)])
    );
    // Each of the 3 failing runs stops at the poison record (x1, poison); the last run takes
    // x1, x2 and y1 without it.
    assert_eq!(
        kit.handler()
            .attempts
            .load(std::sync::atomic::Ordering::SeqCst),
        3 * 2 + 3
    );
}

#[tokio::test]
async fn keep_key_order_sends_later_records_of_the_key_after_it_even_in_later_runs() {
    let mut kit = TestKit::new(CountHandler::with_poison("poison", u64::MAX))
        .expect("kit")
        .max_attempts(2)
        .keep_key_order(true);
    send(
        &mut kit,
        &[("a", "x1"), ("a", "poison"), ("a", "x2"), ("b", "y1")],
    );
    kit.run().await.expect("run");
    send(&mut kit, &[("a", "x3"), ("b", "y2")]);
    kit.run().await.expect("run");
    let dead: Vec<(String, DeadLetterReason)> = kit
        .dead_letters()
        .into_iter()
        .map(|d| {
            (
                String::from_utf8(d.value.unwrap_or_default()).unwrap_or_default(),
                d.reason,
            )
        })
        .collect();
    assert_eq!(
        dead,
        [
            ("poison".to_owned(), DeadLetterReason::Failed),
            ("x2".to_owned(), DeadLetterReason::FollowsDeadLetter),
            ("x3".to_owned(), DeadLetterReason::FollowsDeadLetter),
        ]
    );
    assert_eq!(
        counts(&kit),
        BTreeMap::from([("a".into(), 1), ("b".into(), 2)])
    );
}

#[tokio::test]
async fn a_transient_failure_is_retried_in_place_and_counts_once() {
    let mut kit = TestKit::new(CountHandler::with_poison("flaky", 2))
        .expect("kit")
        .max_attempts(5);
    send(&mut kit, &[("a", "x1"), ("a", "flaky"), ("a", "x2")]);
    kit.run().await.expect("run");
    assert!(kit.dead_letters().is_empty());
    assert_eq!(counts(&kit), BTreeMap::from([("a".into(), 3)]));
}

#[tokio::test]
async fn without_an_attempt_limit_the_kit_reports_the_failure_and_commits_nothing_of_the_batch() {
    let mut kit = TestKit::new(CountHandler::with_poison("poison", u64::MAX))
        .expect("kit")
        .max_attempts(0);
    send(&mut kit, &[("a", "x1"), ("a", "poison")]);
    let err = kit.run().await.expect_err("retried forever");
    assert!(err.to_string().contains("offset 1"), "{err}");
    assert_eq!(kit.committed_offset("test", 0).expect("offset"), None);
    assert!(counts(&kit).is_empty());
}

/// The counting handler in at-most-once mode.
#[derive(Handler)]
#[handler(value = Utf8, delivery = at_most_once)]
struct AtMostOnce(CountHandler);

impl Process for AtMostOnce {
    type Error = CountError;

    async fn process(&self, rec: Record<'_, String>, ctx: &mut Ctx<'_>) -> Result<(), CountError> {
        self.0.process(rec, ctx).await
    }
}

#[tokio::test]
async fn at_most_once_skips_a_failing_record_without_retrying_it() {
    let mut kit =
        TestKit::new(AtMostOnce(CountHandler::with_poison("poison", u64::MAX))).expect("kit");
    send(&mut kit, &[("a", "x1"), ("a", "poison"), ("b", "y1")]);
    assert_eq!(kit.run().await.expect("run"), 3);
    assert!(
        kit.dead_letters().is_empty(),
        "at-most-once skips, it does not dead-letter"
    );
    assert_eq!(
        kit.handler()
            .0
            .attempts
            .load(std::sync::atomic::Ordering::SeqCst),
        3,
        "no retry"
    );
    // The failing record's own write is undone; the offset moved past it.
    assert_eq!(
        counts(&kit),
        BTreeMap::from([("a".into(), 1), ("b".into(), 1)])
    );
    assert_eq!(kit.committed_offset("test", 0).expect("offset"), Some(3));
}

/// A tally whose JSON cannot be written when it is 13.
#[derive(Debug, serde::Deserialize)]
struct Tally(u64);

impl serde::Serialize for Tally {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            13 => Err(serde::ser::Error::custom("13 cannot be written")),
            n => s.serialize_u64(n),
        }
    }
}

/// Adds each record's number to its key's tally.
#[derive(Debug, weir::Handler)]
#[handler(value = Utf8)]
struct Tallies;

impl Process for Tallies {
    type Error = weir::Error;

    async fn process(&self, rec: Record<'_, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        let n: u64 = rec.value().parse().unwrap_or(0);
        let key = rec.key_str().unwrap_or_default().to_owned();
        ctx.state::<str, Tally>("tallies")
            .update(&key, |t| Some(Tally(t.map_or(0, |t| t.0) + n)))
    }
}

#[tokio::test]
async fn a_value_that_cannot_be_written_dead_letters_the_record_that_made_it() {
    // A key's second update on keeps its value as it is until the batch's end: there, b's 13
    // cannot be written, so the batch runs again writing each value at once, which finds the
    // record that made it.
    let mut kit = TestKit::new(Tallies).expect("kit").max_attempts(2);
    send(
        &mut kit,
        &[("a", "1"), ("b", "6"), ("a", "2"), ("b", "7"), ("c", "6")],
    );
    assert_eq!(kit.run().await.expect("run"), 5);
    // A value that cannot be written but is updated again in the same batch is never written.
    send(&mut kit, &[("c", "1"), ("c", "6"), ("c", "1")]);
    assert_eq!(kit.run().await.expect("run"), 3);
    let dead = kit.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].source.2, 3, "{dead:?}");
    assert_eq!(
        (dead[0].reason, dead[0].attempts),
        (DeadLetterReason::Failed, 2)
    );
    assert!(
        dead[0].error.contains("13 cannot be written"),
        "{}",
        dead[0].error
    );
    let tallies: BTreeMap<String, u64> = kit.entries("tallies").expect("entries");
    assert_eq!(
        tallies,
        BTreeMap::from([("a".into(), 3), ("b".into(), 6), ("c".into(), 14)])
    );
}
