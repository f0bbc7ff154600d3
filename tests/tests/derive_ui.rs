//! `#[derive(Handler)]`: what compiles, and the exact messages for what does not.

#[test]
fn derive_handler_ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
