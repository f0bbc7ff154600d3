use serde::Deserialize;
use weir::prelude::*;
use weir::worker::Delivery;
use weir::{Handler as _, StoreDef};

#[derive(Debug, Deserialize)]
struct Order {
    cents: u64,
}

#[derive(Handler)]
#[handler(
    topic = "orders",
    topics = ["orders.eu", "orders_us-2"],
    group = "totals",
    key = Utf8,
    value = Json<Order>,
    store(Totals, key = str, value = u64),
    store(Audit, name = "audit_log", key = u64, value = String),
    batch_size = 500,
    linger_ms = 0,
    queue_capacity = 100,
    delivery = at_most_once,
    retry(max_attempts = 3, backoff_ms = 50, max_backoff_ms = 2000),
    dead_letter(topic = "{topic}.failed", keep_key_order = true),
)]
struct OrderTotals;

impl Process for OrderTotals {
    type Error = weir::Error;

    async fn process(&self, rec: Record<'_, Order, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        let cents = rec.value().cents;
        ctx.store::<Totals>().update(rec.key(), |t| Some(t.unwrap_or(0) + cents))?;
        ctx.store::<Audit>().put(&(rec.offset() as u64), &format!("{cents}"))
    }
}

fn main() {
    let s = OrderTotals::settings();
    assert_eq!(s.topics, ["orders", "orders.eu", "orders_us-2"]);
    assert_eq!(s.group, Some("totals"));
    assert_eq!((s.batch_size, s.linger_ms, s.queue_capacity), (Some(500), Some(0), Some(100)));
    assert_eq!(s.delivery, Delivery::AtMostOnce);
    assert_eq!(s.stores.len(), 2);
    assert_eq!((Totals::NAME, Audit::NAME), ("totals", "audit_log"));
    assert_eq!((s.max_attempts, s.backoff_ms, s.max_backoff_ms), (Some(3), Some(50), Some(2000)));
    assert_eq!((s.dead_letter_topic, s.keep_key_order), (Some("{topic}.failed"), Some(true)));
}
