use weir::prelude::*;

#[derive(Handler)]
#[handler(value = Utf8, batch_size = 0, queue_capacity = 1, delivery = exactly_once)]
struct Orders;

fn main() {}
