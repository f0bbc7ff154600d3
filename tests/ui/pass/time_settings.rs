use serde::Deserialize;
use weir::prelude::*;
use weir::time::WindowDef;

#[derive(Debug, Deserialize)]
struct View {
    page: String,
    ts_ms: u64,
}

#[derive(Handler)]
#[handler(
    topic = "views",
    value = Json<View>,
    event_time = ts_ms,
    window(PerMinute, key = String, value = u64, size_ms = 60000, grace_ms = 10000),
    window(Hops, name = "last_5_min", key = String, value = u64, size_ms = 300000, advance_ms = 60000),
    window(Visits, key = String, value = u64, gap_ms = 1800000),
    late_topic = "{topic}.too-late",
    idle_close_after_ms = 30000,
    window_updates = true,
)]
struct Views;

impl Process for Views {
    type Error = weir::Error;

    async fn process(&self, rec: Record<'_, View>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        let page = &rec.value().page;
        ctx.window::<PerMinute>().add(page, |n| n.unwrap_or(0) + 1)?;
        ctx.window::<Hops>().add(page, |n| n.unwrap_or(0) + 1)?;
        ctx.window::<Visits>().add_session(page, |n| n.unwrap_or(0) + 1, |a, b| a + b)?;
        Ok(())
    }
}

fn main() {
    let s = Views::settings();
    assert_eq!(s.windows, ["per_minute", "last_5_min", "visits"]);
    assert_eq!(s.late_topic, Some("{topic}.too-late"));
    assert_eq!(s.idle_close_after_ms, Some(30000));
    assert!(s.window_updates);
    assert_eq!(PerMinute::WINDOWS.grace_ms(), 10_000);
    assert!(Visits::WINDOWS.is_session());
    assert_eq!(Hops::NAME, "last_5_min");
}
