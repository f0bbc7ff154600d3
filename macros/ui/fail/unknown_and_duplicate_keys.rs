use weir::prelude::*;

#[derive(Handler)]
#[handler(topic = "a", value = Utf8, colour = "red", value = Raw, group = "g", group = "h", retries(3))]
struct Counter;

fn main() {}
