use weir::prelude::*;

#[derive(serde::Serialize, serde::Deserialize)]
struct Customer {
    country: String,
}

#[derive(Handler)]
#[handler(
    value = Utf8,
    table(NoTopic, value = Customer),
    table(Keyed, topic = "customers", key = String, value = Customer),
    table(NoValue, topic = "customers"),
    table(BadTopic, topic = "no spaces", value = Customer),
    global_table(Twice, topic = "a", topic = "b", value = Customer),
    store(Customers, key = str, value = u64),
    global_table(Customers, topic = "customers", value = Customer),
    table(Typo, topics = "customers", value = Customer),
)]
struct Enrich;

fn main() {}
