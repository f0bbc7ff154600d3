use weir::prelude::*;

#[derive(serde::Serialize, serde::Deserialize)]
struct Customer {
    country: String,
}

#[derive(Handler)]
#[handler(
    topic = "orders",
    key = Utf8,
    value = Utf8,
    table(Customers, topic = "customers", value = Customer),
    global_table(Countries, topic = "countries", value = String, name = "country_names"),
)]
struct Enrich;

impl Process for Enrich {
    type Error = weir::Error;

    async fn process(&self, r: Record<'_, String, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        let customer: Option<Customer> = ctx.table::<Customers>().get(r.key())?;
        let name: Option<String> = ctx.table::<Countries>().get("FR")?;
        let _ = (customer.map(|c| c.country), name);
        Ok(())
    }
}

fn main() {
    let tables = <Enrich as weir::Handler>::settings().tables;
    assert_eq!(tables.len(), 2);
    assert_eq!(
        (tables[0].name, tables[0].topic, tables[0].global),
        ("customers", "customers", false)
    );
    assert_eq!(
        (tables[1].name, tables[1].topic, tables[1].global),
        ("country_names", "countries", true)
    );
    assert_eq!(<Countries as weir::tables::TableDef>::NAME, "country_names");
}
