//! Orders enriched with their customer's country, then revenue per country: a two-stage
//! pipeline with a table and a repartition topic.
//!
//! The contract, for programs that read or write these topics:
//! - table topic `customers`: key = customer id, value `{"country": string}` (a record without
//!   a value deletes the customer);
//! - stream topic `orders`: key = customer id, value
//!   `{"order_id": string, "amount_cents": integer}`; co-partitioned with `customers` (same
//!   partition count, keyed alike);
//! - each order takes its customer's current country and is re-keyed by country (through the
//!   repartition topic `<group>-revenue-repartition`, group `enrich` by default);
//! - the second stage keeps the revenue per country and emits every new total to
//!   `revenue-by-country`: key = country, value `{"country": string, "total_cents": integer}`;
//! - orders of unknown customers go to `orders.unmatched` unchanged (key and value).

use serde::{Deserialize, Serialize};
use weir::prelude::*;

/// The table topic.
pub const CUSTOMERS_TOPIC: &str = "customers";
/// The stream topic.
pub const ORDERS_TOPIC: &str = "orders";
/// Where every new total per country goes.
pub const OUTPUT_TOPIC: &str = "revenue-by-country";
/// Where orders of unknown customers go.
pub const UNMATCHED_TOPIC: &str = "orders.unmatched";
/// The pipeline's consumer group (its stages' groups are `enrich-join` and `enrich-revenue`).
pub const GROUP: &str = "enrich";
/// The first stage: orders joined with their customers.
pub const JOIN_STAGE: &str = "join";
/// The second stage: revenue per country, fed by the repartition topic
/// `enrich-revenue-repartition`.
pub const REVENUE_STAGE: &str = "revenue";

/// A customer, the value of the `customers` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// Where the customer lives.
    pub country: String,
}

/// An order, the value of an `orders` record (keyed by customer id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The order's id.
    pub order_id: String,
    /// Its amount, in cents.
    pub amount_cents: i64,
}

/// An order with its customer's country, keyed by country (the repartition topic's records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountryOrder {
    /// The order's id.
    pub order_id: String,
    /// Its amount, in cents.
    pub amount_cents: i64,
    /// The customer.
    pub customer_id: String,
    /// The customer's country when the order was joined.
    pub country: String,
}

/// A country's revenue so far, emitted on every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountryTotal {
    /// The country.
    pub country: String,
    /// Its revenue so far, in cents.
    pub total_cents: i64,
}

/// Stage 1: joins each order with its customer's current country and re-keys it by country;
/// orders of unknown customers go to `orders.unmatched` unchanged.
#[derive(Debug, Handler)]
#[handler(
    topic = "orders",
    key = Utf8,
    value = Json<Order>,
    table(Customers, topic = "customers", value = Customer)
)]
pub struct JoinCustomers;

impl Process for JoinCustomers {
    type Error = weir::Error;

    async fn process(
        &self,
        order: Record<'_, Order, String>,
        ctx: &mut Ctx<'_>,
    ) -> weir::Result<()> {
        let Some(customer) = ctx.table::<Customers>().get(order.key())? else {
            let value = order.payload().unwrap_or_default();
            ctx.emit(UNMATCHED_TOPIC, order.key_bytes(), value, &[]);
            return Ok(());
        };
        let joined = CountryOrder {
            order_id: order.value().order_id.clone(),
            amount_cents: order.value().amount_cents,
            customer_id: order.key().clone(),
            country: customer.country,
        };
        ctx.repartition(REVENUE_STAGE, &joined.country, &joined)
    }
}

/// Stage 2: the revenue per country; emits every new total to `revenue-by-country`.
#[derive(Debug, Handler)]
#[handler(
    key = Utf8,
    value = Json<CountryOrder>,
    store(Revenue, key = str, value = i64)
)]
pub struct RevenueByCountry;

impl Process for RevenueByCountry {
    type Error = weir::Error;

    async fn process(
        &self,
        order: Record<'_, CountryOrder, String>,
        ctx: &mut Ctx<'_>,
    ) -> weir::Result<()> {
        let country = &order.value().country;
        let total = ctx.store::<Revenue>().get(country)?.unwrap_or(0) + order.value().amount_cents;
        ctx.store::<Revenue>().put(country, &total)?;
        let total = CountryTotal {
            country: country.clone(),
            total_cents: total,
        };
        ctx.emit_json(OUTPUT_TOPIC, Some(country.as_bytes()), &total)
    }
}

/// The two stages as one pipeline, with the worker's settings (`WEIR_*`, group `enrich` unless
/// `WEIR_GROUP` says otherwise).
pub fn pipeline(builder: weir::WorkerBuilder) -> weir::worker::PipelineBuilder {
    builder
        .pipeline()
        .stage(JOIN_STAGE, JoinCustomers)
        .repartitioned_stage(REVENUE_STAGE, RevenueByCountry)
}

#[cfg(test)]
mod tests {
    use weir::testing::TestKit;

    use super::*;

    fn order(id: &str, cents: i64) -> Order {
        Order {
            order_id: id.into(),
            amount_cents: cents,
        }
    }

    #[tokio::test]
    async fn orders_take_their_customers_country_and_totals_add_up() {
        let mut join = TestKit::new(JoinCustomers).expect("kit");
        let fr = Customer {
            country: "FR".into(),
        };
        join.update_table::<Customers>("c1", Some(&fr))
            .await
            .expect("table");
        join.send_json("c1", &order("o1", 500))
            .send_json("c2", &order("o2", 700))
            .send_json("c1", &order("o3", 250));
        join.run().await.expect("run");
        let unmatched = join.emitted_to(UNMATCHED_TOPIC);
        assert_eq!(unmatched.len(), 1);
        assert_eq!(unmatched[0].key.as_deref(), Some(&b"c2"[..]));
        let original = serde_json::to_vec(&order("o2", 700)).expect("json");
        assert_eq!(unmatched[0].value.as_deref(), Some(&original[..]));
        let rekeyed = join.emitted_to("weir-revenue-repartition");
        assert_eq!(rekeyed.len(), 2);

        let mut revenue = TestKit::new(RevenueByCountry).expect("kit");
        for r in &rekeyed {
            assert_eq!(r.key.as_deref(), Some(&b"FR"[..]));
            let headers: Vec<(&str, &[u8])> = r.headers.iter().collect();
            revenue.send_to("revenue", 0, r.key.as_deref(), r.value.as_deref(), &headers);
        }
        revenue.run().await.expect("run");
        let totals: Vec<CountryTotal> = revenue
            .emitted_to(OUTPUT_TOPIC)
            .iter()
            .map(|r| serde_json::from_slice(r.value.as_deref().unwrap_or_default()).expect("json"))
            .collect();
        let fr_total = |t| CountryTotal {
            country: "FR".into(),
            total_cents: t,
        };
        assert_eq!(totals, vec![fr_total(500), fr_total(750)]);
    }
}
