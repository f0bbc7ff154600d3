use weir::prelude::*;

#[derive(Handler)]
#[handler(
    value = Utf8,
    store(Totals, key = str, value = u64),
    store(Totals, key = str, value = i64),
    store(Other, name = "totals", key = str, value = u64),
    store(NoTypes),
)]
struct Orders;

fn main() {}
