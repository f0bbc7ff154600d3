//! Derive macros for weir handlers; use them through the `weir` crate (`weir::Handler`).
//!
//! Parsing the `#[handler(...)]` attribute (module `attr`) is kept apart from generating code
//! (module `expand`); every mistake in the attribute is reported at once, each at its own span.

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

mod attr;
mod expand;

/// Derives `weir::Handler` from a `#[handler(...)]` attribute:
///
/// ```text
/// #[derive(weir::Handler)]
/// #[handler(
///     topic = "orders",                 // repeatable; or topics = ["a", "b"]
///     value = Json<Order>,              // required: the value codec
///     key = Utf8,                       // default: Raw
///     group = "order-totals",           // default: the worker's
///     store(Totals, key = str, value = u64),   // generates `struct Totals` (store "totals")
///     batch_size = 500, linger_ms = 5, queue_capacity = 2000,
///     delivery = at_least_once,         // or at_most_once
///     retry(max_attempts = 5, backoff_ms = 100, max_backoff_ms = 10000),
///     dead_letter(topic = "{topic}.dlq", keep_key_order = false),   // or dead_letter = false
/// )]
/// struct OrderTotals;
/// ```
#[proc_macro_derive(Handler, attributes(handler))]
pub fn derive_handler(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match attr::HandlerAttrs::from_input(&input) {
        Ok(attrs) => expand::handler(&input, &attrs).into(),
        Err(e) => e.into_compile_error().into(),
    }
}
