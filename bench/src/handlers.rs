//! The weir scenarios' handlers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use weir::prelude::*;

use crate::probe::Probe;

/// Counts records in memory: the framework's overhead without state.
#[derive(Debug, Handler)]
#[handler(value = Raw)]
pub(crate) struct Stateless(pub(crate) Arc<Probe>);

impl Process for Stateless {
    type Error = weir::Error;

    async fn process(&self, rec: Record<'_, Vec<u8>>, _ctx: &mut Ctx<'_>) -> weir::Result<()> {
        self.0
            .processed(rec.partition(), rec.offset(), rec.timestamp_ms());
        Ok(())
    }
}

/// Word count in SQLite state, the normal commit path.
#[derive(Debug, Handler)]
#[handler(value = Utf8)]
pub(crate) struct Counting(
    pub(crate) Arc<Probe>,
    pub(crate) weir_examples::wordcount::WordCount,
);

impl Process for Counting {
    type Error = weir::Error;

    async fn process(&self, rec: Record<'_, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        let (p, o, ts) = (rec.partition(), rec.offset(), rec.timestamp_ms());
        self.1.process(rec, ctx).await?;
        self.0.processed(p, o, ts);
        Ok(())
    }
}

/// One state update per record: a count per record key. With an output topic (`.1`), it also
/// emits every new count there, valued with the source record's timestamp (ms), so the reader
/// of that topic can time the whole path.
#[derive(Debug, Handler)]
#[handler(value = Raw)]
pub(crate) struct KeyedCount(pub(crate) Arc<Probe>, pub(crate) Option<String>);

impl Process for KeyedCount {
    type Error = weir::Error;

    async fn process(&self, rec: Record<'_, Vec<u8>>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        let key = rec.key_str().unwrap_or_default();
        ctx.state::<str, u64>("counts")
            .update(key, |n| Some(n.unwrap_or(0) + 1))?;
        if let Some(output) = &self.1 {
            let ts = rec.timestamp_ms().unwrap_or_default().to_string();
            ctx.emit(output, Some(key.as_bytes()), ts.as_bytes(), &[]);
        }
        self.0
            .processed(rec.partition(), rec.offset(), rec.timestamp_ms());
        Ok(())
    }
}

/// The keyed count in tumbling one-second windows of event time (the records' timestamps,
/// from when the backlog was produced), with one second of grace; each closed window's count
/// goes to the output topic (`.1`).
#[derive(Debug, Handler)]
#[handler(
    value = Raw,
    window(PerSecond, key = String, value = u64, size_ms = 1000, grace_ms = 1000)
)]
pub(crate) struct WindowCount(pub(crate) Arc<Probe>, pub(crate) String);

/// Windows the window count closed (reported on stderr).
pub(crate) static WINDOWS_CLOSED: AtomicU64 = AtomicU64::new(0);

impl Process for WindowCount {
    type Error = weir::Error;

    async fn process(&self, rec: Record<'_, Vec<u8>>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        let key = rec.key_str().unwrap_or_default();
        ctx.window::<PerSecond>().add(key, |n| n.unwrap_or(0) + 1)?;
        self.0
            .processed(rec.partition(), rec.offset(), rec.timestamp_ms());
        Ok(())
    }

    async fn on_window_closed(&self, closed: WindowResult, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        if let Some((key, n)) = closed.get::<PerSecond>()? {
            WINDOWS_CLOSED.fetch_add(1, Ordering::Relaxed);
            let line = format!("{} {n}", closed.window().start_ms);
            ctx.emit(&self.1, Some(key.as_bytes()), line.as_bytes(), &[]);
        }
        Ok(())
    }
}

/// The customers table of the `weir-enrich` scenario: key `k<i>` (every record key) to
/// `{"country": "C<i % 64>"}`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct BenchCustomer {
    pub(crate) country: String,
}

/// The table topic of the `weir-enrich` scenario's input `topic`.
pub(crate) fn customers_topic(topic: &str) -> String {
    format!("{topic}.customers")
}

/// Stage 1 of `weir-enrich`: joins each record with its key's customer and re-keys it by
/// country, as the `enrich` example does with orders; the value's length is the amount.
#[derive(Debug, Handler)]
#[handler(value = Raw, table(BenchCustomers, topic = "customers", value = BenchCustomer))]
pub(crate) struct BenchJoin(pub(crate) Arc<Probe>);

impl Process for BenchJoin {
    type Error = weir::BoxError;

    async fn process(
        &self,
        rec: Record<'_, Vec<u8>>,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), weir::BoxError> {
        // Throughput is timed from the first stage's first record.
        self.0.first.get_or_init(Instant::now);
        let key = rec.key_str().unwrap_or_default();
        let Some(customer) = ctx.table::<BenchCustomers>().get(key)? else {
            return Err(format!("no customer {key} in the table").into());
        };
        let amount = rec.value().len() as i64;
        let ts = rec.timestamp_ms().unwrap_or_default();
        Ok(ctx.repartition("revenue", &customer.country, &(amount, ts))?)
    }
}

/// Stage 2 of `weir-enrich`: revenue per country, every new total emitted to the output topic
/// (`.1`), as the `enrich` example does.
#[derive(Debug, Handler)]
#[handler(key = Utf8, value = Json<(i64, i64)>)]
pub(crate) struct BenchRevenue(pub(crate) Arc<Probe>, pub(crate) String);

impl Process for BenchRevenue {
    type Error = weir::Error;

    async fn process(
        &self,
        rec: Record<'_, (i64, i64), String>,
        ctx: &mut Ctx<'_>,
    ) -> weir::Result<()> {
        let (amount, ts) = *rec.value();
        let country = rec.key();
        let total = ctx.state::<str, i64>("revenue").get(country)?.unwrap_or(0) + amount;
        ctx.state::<str, i64>("revenue").put(country, &total)?;
        let out = serde_json::json!({ "country": country, "total_cents": total });
        ctx.emit_json(&self.1, Some(country.as_bytes()), &out)?;
        self.0.processed(rec.partition(), rec.offset(), Some(ts));
        Ok(())
    }
}
