//! `#[derive(Handler)]`: the exact messages for what does not compile (trybuild, `ui/fail`).
//! What compiles is in `derive_pass.rs`: built with the suite, not by trybuild, so trybuild
//! only checks (no code generation, no linking).

#[test]
fn derive_handler_ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/fail/*.rs");
}
