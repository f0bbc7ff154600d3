use weir::prelude::*;

#[derive(Handler)]
#[handler(value = Utf8, batch_size = 0, queue_capacity = 1, delivery = exactly_once)]
struct Orders;

fn main() {}

#[derive(Handler)]
#[handler(
    value = Utf8,
    retry(max_attempts = -1, jitter = 3),
    dead_letter(topic = "{topic}/dead", order = true),
)]
struct BadRetry;

#[derive(Handler)]
#[handler(value = Utf8, dead_letter = true)]
struct DeadLetterTrue;
