//! Firing what is due, in order, into the batch's writes: due windows close
//! (`on_window_closed`, the window's rows deleted) and user timers call `on_timer`; each
//! timer's row is deleted in the same batch, so it fires once.

use weir_state::{PartitionStore, WriteSet};

use super::timers::{Due, TIMERS, due_timers};
use super::watermark::RecordTime;
use super::windows::take_window;
use super::{FiredTimer, TimerAt, Window, WindowResult};
use crate::error::{BoxError, Error, Result};
use crate::observe::metric_names::{TIMERS_FIRED_TOTAL, WINDOWS_CLOSED_TOTAL};
use crate::processing::context::{Ctx, Scope, Source};
use crate::processing::handler::{Process, caught};

/// Timer rounds per batch: a callback that keeps scheduling timers already due cannot hold up
/// the partition; what is left fires with the next batch.
const MAX_TIMER_ROUNDS: usize = 64;

/// Fires the timers of `topic`/`partition` due at the watermark and the wall-clock time `now`
/// (`clock`), calling `handler`'s callbacks with `writes`.
pub(crate) async fn fire_due<H: Process>(
    handler: &H,
    (store, scope): (&PartitionStore, &Scope),
    writes: &mut WriteSet,
    (topic, partition): (&str, i32),
    (watermark, now): (Option<i64>, i64),
) -> Result<()> {
    let source = Source::Time { topic, partition };
    let failed = |what: &'static str| {
        move |source: BoxError| Error::Timer {
            topic: topic.to_owned(),
            partition,
            what,
            source,
        }
    };
    for _ in 0..MAX_TIMER_ROUNDS {
        let due = due_timers(store, writes, watermark, now)?;
        if due.is_empty() {
            return Ok(());
        }
        for timer in due {
            writes.put_encoded(TIMERS, &timer.row, None)?;
            let (TimerAt::EventTime(t) | TimerAt::WallClock(t)) = timer.at;
            let mut rt = RecordTime::new(t, watermark, false);
            match timer.due {
                Due::Window {
                    store: name,
                    key,
                    start,
                    end,
                } => {
                    let window = Window {
                        start_ms: start,
                        end_ms: end,
                    };
                    let Some(value) = take_window(store, writes, &name, &key, window)? else {
                        continue;
                    };
                    metrics::counter!(WINDOWS_CLOSED_TOTAL, "store" => name.clone()).increment(1);
                    let closed = WindowResult::new(name, key, window, value);
                    // Its emits carry the window's last instant.
                    rt.emit_at(end.saturating_sub(1));
                    let mut ctx = Ctx::new((store, scope), writes, source, &mut rt);
                    caught(handler.on_window_closed(closed, &mut ctx))
                        .await
                        .map_err(failed("on_window_closed"))?;
                }
                Due::User { key } => {
                    metrics::counter!(TIMERS_FIRED_TOTAL).increment(1);
                    let mut ctx = Ctx::new((store, scope), writes, source, &mut rt);
                    caught(handler.on_timer(FiredTimer::new(timer.at, key), &mut ctx))
                        .await
                        .map_err(failed("on_timer"))?;
                }
            }
        }
    }
    tracing::warn!(
        topic,
        partition,
        "timer callbacks keep scheduling timers that are due at once; the rest fire with the next batch"
    );
    Ok(())
}
