//! `#[derive(Handler)]`: the exact messages for what does not compile (trybuild, `ui/fail`),
//! checked against `weir` with its default features. What compiles is in the suite's
//! `tests/tests/suite/derive_pass.rs`: built with the suite, not by trybuild, so trybuild only checks
//! (no code generation, no linking).

#[test]
fn derive_handler_ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/fail/*.rs");
}
