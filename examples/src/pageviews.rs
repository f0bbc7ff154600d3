//! Page views per minute: counts views per page in tumbling one-minute windows of event time
//! (`ts_ms`), and emits one count per page and window when the window closes.
//!
//! The contract, for programs that read these topics:
//! - input `pageviews`: key = page, value `{"page": string, "user": string, "ts_ms": epoch ms}`;
//! - windows of 60 s aligned to the epoch, grace 10 s, closed by the partition's watermark
//!   (the largest `ts_ms` seen on the partition);
//! - on close, ONE record to `pageviews-per-minute`: key = page, value
//!   `{"page", "window_start_ms", "window_end_ms", "views"}`;
//! - late records (their window closed already) go to `pageviews.late` unchanged.

use serde::{Deserialize, Serialize};
use weir::prelude::*;

/// The input topic.
pub const INPUT_TOPIC: &str = "pageviews";
/// Where each closed window's count goes.
pub const OUTPUT_TOPIC: &str = "pageviews-per-minute";
/// Where late views go (the default late topic of `pageviews`).
pub const LATE_TOPIC: &str = "pageviews.late";

/// One page view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageView {
    /// The page viewed (also the record key).
    pub page: String,
    /// Who viewed it.
    pub user: String,
    /// When, in milliseconds since the Unix epoch: the record's event time.
    pub ts_ms: i64,
}

/// The views of one page in one closed minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageViewsPerMinute {
    /// The page.
    pub page: String,
    /// The window's first millisecond.
    pub window_start_ms: i64,
    /// The first millisecond after the window.
    pub window_end_ms: i64,
    /// Views of the page in the window.
    pub views: u64,
}

/// Counts page views per page and minute of event time.
#[derive(Debug, Handler)]
#[handler(
    topic = "pageviews",
    group = "pageviews",
    value = Json<PageView>,
    event_time = ts_ms,
    window(PerMinute, key = String, value = u64, size_ms = 60000, grace_ms = 10000)
)]
pub struct PageViews;

impl Process for PageViews {
    type Error = weir::Error;

    async fn process(&self, view: Record<'_, PageView>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        // A late view is counted in no window; weir sends it to `pageviews.late`.
        ctx.window::<PerMinute>()
            .add(&view.value().page, |views| views.unwrap_or(0) + 1)?;
        Ok(())
    }

    async fn on_window_closed(&self, closed: WindowResult, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        let Some((page, views)) = closed.get::<PerMinute>()? else {
            return Ok(());
        };
        let window = closed.window();
        tracing::info!(
            page,
            window_start_ms = window.start_ms,
            window_end_ms = window.end_ms,
            views,
            "window closed"
        );
        let result = PageViewsPerMinute {
            page,
            window_start_ms: window.start_ms,
            window_end_ms: window.end_ms,
            views,
        };
        ctx.emit_json(OUTPUT_TOPIC, Some(result.page.as_bytes()), &result)
    }
}

#[cfg(test)]
mod tests {
    use weir::testing::TestKit;

    use super::*;

    const MIN: i64 = 60_000;

    fn view(page: &str, ts_ms: i64) -> PageView {
        PageView {
            page: page.into(),
            user: "u".into(),
            ts_ms,
        }
    }

    fn results(kit: &TestKit<PageViews>) -> Vec<PageViewsPerMinute> {
        kit.emitted_to(OUTPUT_TOPIC)
            .iter()
            .map(|r| serde_json::from_slice(r.value.as_deref().unwrap_or_default()).expect("json"))
            .collect()
    }

    #[tokio::test]
    async fn counts_per_minute_with_grace_and_routes_late_views() {
        let mut kit = TestKit::new(PageViews).expect("kit");
        let base = 100 * MIN;
        for (page, ts) in [
            ("/a", base + 1_000),
            ("/b", base + 2_000),
            ("/a", base + MIN + 5_000), // next minute: watermark base + 65 s
            ("/a", base + 30_000),      // out of order, within grace: counted
            ("/a", base + MIN + 10_000), // watermark base + 70 s: the first minute closes
            ("/a", base + 59_000),      // its window closed: late
        ] {
            kit.send_json(page, &view(page, ts));
        }
        kit.run().await.expect("run");
        let got = results(&kit);
        assert_eq!(
            got,
            vec![
                PageViewsPerMinute {
                    page: "/a".into(),
                    window_start_ms: base,
                    window_end_ms: base + MIN,
                    views: 2
                },
                PageViewsPerMinute {
                    page: "/b".into(),
                    window_start_ms: base,
                    window_end_ms: base + MIN,
                    views: 1
                },
            ]
        );
        let late = kit.emitted_to(LATE_TOPIC);
        assert_eq!(late.len(), 1, "{late:?}");
        let late_view: PageView =
            serde_json::from_slice(late[0].value.as_deref().unwrap_or_default()).expect("json");
        assert_eq!(late_view, view("/a", base + 59_000));
        assert_eq!(late[0].key.as_deref(), Some(&b"/a"[..]));
        // The second minute is still open, with both of its views.
        let open = kit.open_windows::<PerMinute>().expect("open");
        assert_eq!(open.len(), 1, "{open:?}");
        assert_eq!((open[0].0.as_str(), open[0].2), ("/a", 2));
        // Once the watermark passes its end plus grace, it closes too.
        kit.advance_watermark(base + 2 * MIN + 10_000)
            .await
            .expect("advance");
        assert_eq!(results(&kit).len(), 3);
        assert!(kit.open_windows::<PerMinute>().expect("open").is_empty());
    }
}
