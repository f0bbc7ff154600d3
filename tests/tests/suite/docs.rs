//! The dashboard and the metrics page name only metrics the worker exports, and every exported
//! metric is documented.

use std::collections::BTreeSet;

fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("weir_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let name = text[start..end].trim_end_matches('_');
        let name = name.strip_suffix("_bucket").unwrap_or(name);
        names.insert(name.to_owned());
        i = end;
    }
    names
}

fn read(path: &str) -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    std::fs::read_to_string(format!("{root}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn dashboard_and_docs_match_the_exported_metrics() {
    let exported: BTreeSet<String> = metric_names(&read("framework/src/observe/metric_names.rs"))
        .into_iter()
        .filter(|n| n != "weir")
        .collect();
    assert!(exported.len() >= 10, "found {exported:?}");
    let dashboard = read("docs/grafana-dashboard.json");
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("dashboard is JSON");
    let on_dashboard = metric_names(&dashboard);
    let unknown: Vec<_> = on_dashboard.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "dashboard uses metrics weir does not export: {unknown:?}"
    );
    let documented = metric_names(&read("docs/metrics.md"));
    let undocumented: Vec<_> = exported.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in docs/metrics.md: {undocumented:?}"
    );
    let stale: Vec<_> = documented.difference(&exported).collect();
    assert!(
        stale.is_empty(),
        "docs/metrics.md names metrics weir does not export: {stale:?}"
    );
}
