use weir::prelude::*;

#[derive(Handler)]
#[handler(value = Utf8)]
enum Choice {
    A,
}

#[derive(Handler)]
#[handler(value = Utf8)]
union Bits {
    a: u32,
}

#[derive(Handler)]
#[handler(value = Utf8)]
struct Generic<T> {
    inner: T,
}

fn main() {}
