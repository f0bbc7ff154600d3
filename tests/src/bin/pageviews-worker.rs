//! A worker process running the `pageviews` example's handler, configured by `WEIR_*`
//! variables (`PAGEVIEWS_WORKER_DELAY_US` slows every record); the windows' kill test
//! SIGKILLs and restarts it.

use std::time::Duration;

use weir::__private::{KeyOf, ValueOf};
use weir::prelude::*;
use weir_examples::pageviews::PageViews;

/// [`PageViews`], slowed down so that kills land while records are in flight.
struct SlowPageViews {
    delay: Option<Duration>,
}

impl Handler for SlowPageViews {
    type Key = <PageViews as Handler>::Key;
    type Value = <PageViews as Handler>::Value;

    fn settings() -> weir::__private::HandlerSettings {
        PageViews::settings()
    }

    fn event_time(record: &Record<'_, ValueOf<Self>, KeyOf<Self>>) -> Option<i64> {
        Some(record.value().ts_ms)
    }
}

impl Process for SlowPageViews {
    type Error = weir::Error;

    async fn process(
        &self,
        view: Record<'_, ValueOf<Self>, KeyOf<Self>>,
        ctx: &mut Ctx<'_>,
    ) -> weir::Result<()> {
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        PageViews.process(view, ctx).await
    }

    async fn on_window_closed(&self, closed: WindowResult, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        PageViews.on_window_closed(closed, ctx).await
    }
}

#[tokio::main]
async fn main() {
    let delay = std::env::var("PAGEVIEWS_WORKER_DELAY_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_micros);
    weir_tests::run_worker_process("pageviews-worker", SlowPageViews { delay }).await;
}
