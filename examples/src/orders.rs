//! Orders: per-customer totals of JSON orders keyed by customer id, idempotent by order id;
//! every new total is also emitted to `<topic>-totals`.

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

/// A customer's new total, emitted to `<topic>-totals` keyed by customer after each order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerTotal {
    /// The customer.
    pub customer: String,
    /// Their total in cents, including the order that produced this record.
    pub cents: u64,
}

/// The topic new totals of orders read from `topic` go to.
pub fn totals_topic(topic: &str) -> String {
    format!("{topic}-totals")
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
        let mut totals = ctx.store::<Totals>();
        let cents = totals.get(rec.key())?.unwrap_or(0) + order.cents;
        totals.put(rec.key(), &cents)?;
        let total = CustomerTotal {
            customer: rec.key().clone(),
            cents,
        };
        ctx.emit_json(
            &totals_topic(rec.topic()),
            Some(rec.key().as_bytes()),
            &total,
        )
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
        let emitted: Vec<(String, CustomerTotal)> = kit
            .emitted()
            .into_iter()
            .map(|r| {
                let total = serde_json::from_slice(r.value.as_deref().unwrap_or_default());
                (r.topic, total.expect("a CustomerTotal"))
            })
            .collect();
        let total = |c: &str, cents| {
            (
                "orders-totals".to_owned(),
                CustomerTotal {
                    customer: c.into(),
                    cents,
                },
            )
        };
        assert_eq!(
            emitted,
            vec![total("alice", 500), total("bob", 200), total("alice", 750)]
        );
        let first = &kit.emitted()[0];
        let header = |name: &str| {
            first
                .headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(header("weir.source.topic").as_deref(), Some("orders"));
        assert_eq!(header("weir.source.partition").as_deref(), Some("0"));
        assert_eq!(header("weir.source.offset").as_deref(), Some("0"));
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
        assert_eq!(kit.emitted().len(), 2, "only new orders emit a total");
    }

    #[tokio::test]
    async fn with_the_changelog_on_each_batch_logs_its_changes_and_offset() {
        let mut kit = TestKit::new(OrderTotals)
            .expect("kit")
            .changelog(true)
            .batch_size(10);
        kit.send_json("alice", &order("o1", 500));
        kit.run().await.expect("run");
        let changelog: Vec<_> = kit
            .emitted()
            .into_iter()
            .filter(|r| r.topic == "order-totals-orders-changelog")
            .map(|r| {
                weir::state::ChangelogEntry::parse(r.key.as_deref(), r.value.as_deref())
                    .expect("changelog entry")
            })
            .collect();
        let entry = |store: &str, key: &str, value: &str| weir::state::ChangelogEntry::State {
            store: store.to_owned(),
            key: key.to_owned(),
            value: Some(value.to_owned()),
        };
        // (weir's own stores, such as the partition's watermark, are logged too.)
        let mut got: Vec<_> = changelog
            .iter()
            .filter(|e| {
                !matches!(e, weir::state::ChangelogEntry::State { store, .. } if store.starts_with("__weir_"))
            })
            .cloned()
            .collect();
        let marker = got.pop().expect("the offset marker comes last");
        assert_eq!(marker, weir::state::ChangelogEntry::Offset(1));
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got.contains(&entry("seen_orders", "\"o1\"", "true")),
            "{got:?}"
        );
        assert!(
            got.contains(&entry("totals", "\"alice\"", "500")),
            "{got:?}"
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
