//! `#[derive(Handler)]` uses that compile, and the settings they declare. (The messages of
//! those that do not are trybuild's, in `macros/tests/derive_ui.rs`.)

macro_rules! pass {
    ($($name:ident),*) => {$(
        // (Each file was a crate of its own under trybuild: some imports are redundant here.)
        #[allow(unused_imports)]
        mod $name {
            include!(concat!("../../ui/pass/", stringify!($name), ".rs"));

            #[test]
            fn declares_its_settings() {
                main();
            }
        }
    )*};
}

pass!(every_setting, minimal, tables, time_settings);
