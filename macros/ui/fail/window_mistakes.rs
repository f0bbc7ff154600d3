use weir::prelude::*;

#[derive(Handler)]
#[handler(
    value = Utf8,
    window(NoSize, key = String, value = u64),
    window(Both, key = String, value = u64, size_ms = 1000, gap_ms = 100),
    window(BadHop, key = String, value = u64, size_ms = 1000, advance_ms = 2000),
    window(HopAlone, key = String, value = u64, advance_ms = 100),
    window(Zero, key = String, value = u64, size_ms = 0),
    window(NoTypes, size_ms = 1000),
    window(Typo, key = String, value = u64, size = 1000),
    store(Counts, key = str, value = u64),
    window(Counts, key = String, value = u64, size_ms = 1000),
    late_topic = "bad topic!",
    idle_close_after_ms = 0,
)]
struct Views;

fn main() {}
