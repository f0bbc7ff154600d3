use weir::prelude::*;

#[derive(Handler)]
#[handler(topic = "orders")]
struct NoValue;

#[derive(Handler)]
struct NoAttribute;

fn main() {}
