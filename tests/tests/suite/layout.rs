//! The source's layout, checked: modules import one another without cycles, each import names
//! the module that holds the item (not the crate root that re-exports it), the framework's
//! layers import only downwards (the order is in `framework/src/lib.rs`'s docs), and only
//! `broker/kafka/` knows the Kafka client.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The framework's layers, lowest first: a module imports only from its own layer and those
/// below. (Modules not listed are the crate's facade: `lib.rs`, `state.rs`, `testing.rs`.)
const LAYERS: &[&[&str]] = &[
    &["error", "wall_clock", "inbound", "stop"],
    &["observe"],
    &["broker"],
    &["delivery"],
    &["processing"],
    &["config"],
    &["runtime"],
];

/// One crate's modules: path (`["runtime", "consumer"]`) to file, source without comments.
struct Crate {
    root: PathBuf,
    modules: BTreeMap<Vec<String>, (PathBuf, String)>,
}

impl Crate {
    fn read(root: &Path) -> Self {
        let mut modules = BTreeMap::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("read dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let rel = path.strip_prefix(root).expect("under root");
                let mut module: Vec<String> = rel
                    .with_extension("")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                    module.pop();
                }
                let mut text = strip_comments(&std::fs::read_to_string(&path).expect("read"));
                // Unit tests (at the end of a file, by convention) are not part of the layout.
                if let Some(tests) = text.find("#[cfg(test)]") {
                    text.truncate(tests);
                }
                modules.insert(module, (path, text));
            }
        }
        Self {
            root: root.to_path_buf(),
            modules,
        }
    }

    fn name(&self, module: &[String]) -> String {
        let (path, _) = &self.modules[module];
        path.strip_prefix(&self.root)
            .expect("under root")
            .display()
            .to_string()
    }

    /// Whether `module` is a directory module (`mod.rs`, `lib.rs`).
    fn is_dir(&self, module: &[String]) -> bool {
        self.modules[module]
            .0
            .file_name()
            .is_some_and(|f| f == "mod.rs" || f == "lib.rs")
    }

    /// The module holding what `path` names, following re-exports of directory modules.
    fn resolve(&self, mut path: Vec<String>) -> Vec<String> {
        for _ in 0..8 {
            let module = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|m| self.modules.contains_key(m))
                .unwrap_or_default();
            let Some(item) = path.get(module.len()) else {
                return module;
            };
            let Some(target) = self.reexports(&module).remove(item) else {
                return module;
            };
            let mut next = target;
            next.extend_from_slice(&path[module.len() + 1..]);
            path = next;
        }
        path
    }

    /// Items `module` re-exports (`pub use`, `pub(crate) use`): name to full path.
    fn reexports(&self, module: &[String]) -> BTreeMap<String, Vec<String>> {
        let (_, text) = &self.modules[module];
        let mut out = BTreeMap::new();
        for stmt in use_statements(text, true) {
            for path in expand(&stmt) {
                let full = absolute(module, &path, self.is_dir(module));
                if let Some(last) = full.last() {
                    out.insert(last.clone(), full);
                }
            }
        }
        out
    }

    /// Every module `module` refers to (`use` statements and `crate::`/`super::` paths).
    fn references(&self, module: &[String]) -> BTreeSet<(Vec<String>, Vec<String>)> {
        let (_, text) = &self.modules[module];
        let mut paths = Vec::new();
        for stmt in use_statements(text, false) {
            paths.extend(expand(&stmt));
        }
        paths.extend(inline_paths(text));
        paths
            .into_iter()
            .filter(|p| matches!(p.first().map(String::as_str), Some("crate" | "super")))
            .map(|p| {
                let full = absolute(module, &p, self.is_dir(module));
                (self.resolve(full.clone()), full)
            })
            .collect()
    }
}

/// `path` (starting `crate` or `super`, or relative) as a path from the crate root.
fn absolute(module: &[String], path: &[String], is_dir: bool) -> Vec<String> {
    // (`super` of `a/b.rs` and of `a/b/mod.rs` alike is `a`: both are module `a::b`.)
    let _ = is_dir;
    let mut base: Vec<String> = module.to_vec();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        Some("self") => rest = &rest[1..],
        _ => {}
    }
    base.extend_from_slice(rest);
    base
}

/// The source without comments and string literals.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                let mut prev = ' ';
                for c in chars.by_ref() {
                    if prev == '*' && c == '/' {
                        break;
                    }
                    prev = c;
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if !escaped && c == '"' {
                        break;
                    }
                    escaped = !escaped && c == '\\';
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// The trees of `use` statements (`crate::a::{b, c::d}`), only public ones if `public`.
fn use_statements(text: &str, public: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("use ") {
        let before = &rest[..i];
        let line_start = before.rfind('\n').map_or(0, |n| n + 1);
        let prefix = before[line_start..].trim();
        let starts_word = i == 0 || !rest[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_');
        let end = rest[i..].find(';').map_or(rest.len(), |e| i + e);
        let is_pub = prefix.starts_with("pub");
        if starts_word && (prefix.is_empty() || prefix.starts_with("pub")) && (!public || is_pub) {
            out.push(
                rest[i + 4..end]
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
        rest = &rest[(end + 1).min(rest.len())..];
    }
    out
}

/// The paths a use tree names: `a::{b, c::{d, e}}` is `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<Vec<String>> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree);
        let segments: Vec<String> = path
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "*")
            .map(str::to_owned)
            .collect();
        return vec![segments];
    };
    let prefix: Vec<String> = tree[..open]
        .split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    let mut out = Vec::new();
    for part in parts.into_iter().filter(|p| !p.trim().is_empty()) {
        for tail in expand(part) {
            let mut path = prefix.clone();
            if tail.first().is_some_and(|s| s == "self") {
                path.extend_from_slice(&tail[1..]);
            } else {
                path.extend(tail);
            }
            out.push(path);
        }
    }
    out
}

/// Paths written inline (`crate::observe::client_log::forward(..)`).
fn inline_paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for start in ["crate::", "super::"] {
        let mut rest = text;
        while let Some(i) = rest.find(start) {
            let preceded =
                rest[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':');
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            if !preceded {
                out.push(
                    tail[..end]
                        .split("::")
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                );
            }
            rest = &tail[end.max(1)..];
        }
    }
    out
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// Edges between modules: from a module to each other module it refers to, except a
/// directory module's references into its own children (its `mod` and re-exports).
fn edges(krate: &Crate) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut out: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for module in krate.modules.keys() {
        let targets = out.entry(module.clone()).or_default();
        for (target, _) in krate.references(module) {
            let into_own_child = krate.is_dir(module) && target.starts_with(module);
            if target != *module && !into_own_child {
                targets.insert(target);
            }
        }
    }
    out
}

/// The cycles among `edges` (Tarjan's strongly connected components of more than one module).
fn cycles(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    struct State<'a> {
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Vec<String>) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            if !s.edges.contains_key(w) {
                continue;
            }
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn crates() -> Vec<Crate> {
    let root = workspace();
    ["framework/src", "state/src", "cli/src", "macros/src"]
        .iter()
        .map(|dir| Crate::read(&root.join(dir)))
        .collect()
}

#[test]
fn modules_import_one_another_without_cycles() {
    let mut found = Vec::new();
    for krate in crates() {
        for cycle in cycles(&edges(&krate)) {
            let names: Vec<String> = cycle.iter().map(|m| krate.name(m)).collect();
            found.push(format!("{}: {}", krate.root.display(), names.join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

#[test]
fn imports_name_the_module_that_holds_the_item() {
    let mut found = Vec::new();
    for krate in crates() {
        for module in krate.modules.keys().filter(|m| !m.is_empty()) {
            for (_, full) in krate.references(module) {
                // `crate::X` where X is an item of the crate root (re-exported there).
                if !full.is_empty() && !krate.modules.contains_key(&full[..1]) {
                    found.push(format!(
                        "{}: crate::{}",
                        krate.name(module),
                        full.join("::")
                    ));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "imports through the crate root (name the module instead, e.g. crate::error::Error):\n{}",
        found.join("\n")
    );
}

#[test]
fn layers_import_only_downwards() {
    let krate = Crate::read(&workspace().join("framework/src"));
    let layer = |m: &[String]| {
        m.first()
            .and_then(|top| LAYERS.iter().position(|l| l.contains(&top.as_str())))
    };
    let mut found = Vec::new();
    for (module, targets) in edges(&krate) {
        let Some(from) = layer(&module) else { continue };
        for target in targets {
            if layer(&target).is_some_and(|to| to > from) {
                found.push(format!(
                    "{} imports {}",
                    krate.name(&module),
                    krate.name(&target)
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "imports from a higher layer:\n{}",
        found.join("\n")
    );
}

/// Issue 26: only `broker/kafka/` knows the Kafka client; the rest of the framework speaks the
/// broker seam's words.
#[test]
fn only_each_brokers_folder_knows_its_client() {
    let root = workspace().join("framework/src");
    let krate = Crate::read(&root);
    for (client, folder) in [
        ("rdkafka", "kafka"),
        ("async_nats", "nats"),
        ("lapin", "rabbitmq"),
    ] {
        let mut knowing = BTreeSet::new();
        for (module, (_, text)) in &krate.modules {
            if text.contains(client)
                && !module.starts_with(&["broker".to_owned(), folder.to_owned()])
            {
                knowing.insert(krate.name(module));
            }
        }
        assert!(
            knowing.is_empty(),
            "files outside broker/{folder}/ that import {client}: {knowing:?}"
        );
    }
}
