//! Orders: per-customer totals of JSON orders keyed by customer id, idempotent by order id.

use serde::{Deserialize, Serialize};
use weir::prelude::*;

/// An order as it arrives on the `orders` topic, keyed by customer id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    /// Unique per order: a second delivery of the same order changes nothing.
    pub order_id: String,
    /// Amount in cents.
    pub cents: u64,
}

/// Sums orders per customer; remembers order ids so a redelivered order counts once.
#[derive(Debug, Handler)]
#[handler(
    topic = "orders",
    group = "order-totals",
    key = Utf8,
    value = Json<Order>,
    store(Totals, key = str, value = u64),
    store(SeenOrders, key = str, value = bool),
)]
pub struct OrderTotals;

impl Process for OrderTotals {
    type Error = weir::Error;

    async fn process(&self, rec: Record<'_, Order, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        let order = rec.value();
        let mut seen = ctx.store::<SeenOrders>();
        if seen.get(&order.order_id)?.is_some() {
            return Ok(());
        }
        seen.put(&order.order_id, &true)?;
        ctx.store::<Totals>()
            .update(rec.key(), |t| Some(t.unwrap_or(0) + order.cents))
    }
}

#[cfg(test)]
mod tests {
    use weir::testing::TestKit;
    use weir::StoreDef;

    use super::*;

    fn order(id: &str, cents: u64) -> Order {
        Order {
            order_id: id.into(),
            cents,
        }
    }

    #[tokio::test]
    async fn totals_per_customer() {
        let mut kit = TestKit::new(OrderTotals).expect("kit");
        kit.send_json("alice", &order("o1", 500))
            .send_json("bob", &order("o2", 200))
            .send_json("alice", &order("o3", 250));
        kit.run().await.expect("run");
        assert_eq!(
            kit.get::<str, u64>(Totals::NAME, "alice").expect("get"),
            Some(750)
        );
        assert_eq!(
            kit.get::<str, u64>(Totals::NAME, "bob").expect("get"),
            Some(200)
        );
    }

    #[tokio::test]
    async fn a_redelivered_order_does_not_change_the_total() {
        let mut kit = TestKit::new(OrderTotals).expect("kit").batch_size(2);
        kit.send_json("alice", &order("o1", 500))
            .send_json("alice", &order("o1", 500)) // same batch
            .send_json("alice", &order("o2", 100))
            .send_json("alice", &order("o1", 500)); // a later batch
        assert_eq!(kit.run().await.expect("run"), 4);
        assert_eq!(
            kit.get::<str, u64>(Totals::NAME, "alice").expect("get"),
            Some(600)
        );
    }

    #[tokio::test]
    async fn a_malformed_order_is_dead_lettered() {
        let mut kit = TestKit::new(OrderTotals).expect("kit");
        kit.send("alice", r#"{"order_id": "o1"}"#)
            .send_json("alice", &order("o2", 100));
        kit.run().await.expect("run");
        let dead = kit.dead_letters();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert!(dead[0].error.contains("cents"), "{}", dead[0].error);
        assert_eq!(dead[0].topic, "orders.dlq");
        assert_eq!(
            kit.get::<str, u64>(Totals::NAME, "alice").expect("get"),
            Some(100)
        );
    }
}
