use weir::prelude::*;

#[derive(Handler)]
#[handler(topic = "orders/eu", topics = ["ok", "", ".."], topic = "with space", value = Utf8)]
struct Orders;

fn main() {}
