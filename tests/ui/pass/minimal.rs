use weir::prelude::*;
use weir::Handler as _;

// Only the value codec is required; topics and group can come from the worker's config.
#[derive(Handler, Default)]
#[handler(value = Raw, dead_letter = false)]
struct Bytes {
    _seen: u64,
}

impl Process for Bytes {
    type Error = String;

    async fn process(&self, rec: Record<'_, Vec<u8>>, _ctx: &mut Ctx<'_>) -> Result<(), String> {
        if rec.value().is_empty() { Err("empty".into()) } else { Ok(()) }
    }
}

fn main() {
    assert!(Bytes::settings().topics.is_empty());
    assert_eq!(Bytes::settings().delivery, weir::worker::Delivery::AtLeastOnce);
    assert_eq!(Bytes::settings().dead_letter_topic, Some(""));
}
