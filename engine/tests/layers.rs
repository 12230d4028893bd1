//! The engine's dependencies point down only (issue 17; README, *Architecture*).
//!
//! Every module of `engine/src` belongs to a layer, listed below from the
//! bottom up. Reading each source file's `crate::`, `super::` and `self::`
//! paths (comments and `#[cfg(test)]` code left out), this test checks that
//! a file refers only to its own component or to a lower layer, and that no
//! files within one component import each other in a circle (a parent
//! module may use its children: it declares them).
//!
//! A new module must be given a layer here; a path up the table fails.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Components from the bottom up; a component may use its own layer's
/// code only within itself, and any layer below.
const LAYERS: &[&[&str]] = &[
    // Ids, time, signing (HMAC and Ed25519), encryption, the SSRF rules,
    // event-type filters, an event's payload text.
    &[
        "clock",
        "ids",
        "payload",
        "signing",
        "ed25519",
        "encryption",
        "ssrf",
        "resources",
        "filters",
        "test_hooks",
    ],
    // Signing secrets sealed as the model is (de)serialized; the per-tenant
    // keys that seal them; the audit trail's records and the task-locals
    // that carry them to the store.
    &["sealing", "tenant_keys", "audit"],
    // Kafka destinations: their URL, settings (password sealed) and SSRF
    // check; the egress proxy's address.
    &["kafka_target", "egress_proxy"],
    // HTTP endpoints' credentials (secrets sealed; CA bundles checked as
    // Kafka destinations' are).
    &["endpoint_auth"],
    // The data model and the configuration.
    &["model", "config"],
    // Payload filters: CEL expressions over an event (uses the model only).
    &["payload_filter"],
    // Pure delivery policies (no I/O).
    &["delivery::breaker", "delivery::retry", "delivery::limit"],
    // The event log contract, then the store contract (which names log positions).
    &["log"],
    &["store"],
    // Their backends; errors and metrics over the contracts.
    &[
        "log::embedded",
        "log::kafka",
        "store::embedded",
        "store::scylla",
        "error",
        "metrics",
    ],
    // Input rules, the subscription index, the event-type catalogue,
    // Herald's own events, log replay.
    &[
        "input",
        "subscriptions",
        "catalogue",
        "operational",
        "log_recovery",
        "gone",
    ],
    // Delivery and the CDC relay.
    &["delivery", "relay"],
    // Fan-out (hands deliveries to the delivery shards).
    &["fanout"],
    // The engine facade.
    &["engine"],
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `a/b/mod.rs` → `a::b`, `a/b.rs` → `a::b`, `lib.rs` → ``.
fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().unwrap();
    let stem = file.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments, string contents and test modules.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal such as '"' or '\n' (not a lifetime).
            let end = text[i + 1..].find('\'').map_or(b.len(), |e| i + 2 + e);
            i = end;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Every module path a file's code names, absolute (`a::b::c`), expanding
/// `use x::{y, z::{w}}` groups and resolving `super::` and `self::`.
fn paths_named(code: &str, module: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let starts = ["crate::", "super::", "self::"];
    let b = code.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let at = starts.iter().find(|s| code[i..].starts_with(**s));
        let boundary = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        let Some(start) = at.filter(|_| boundary) else {
            i += 1;
            continue;
        };
        let (end, tree) = path_tree(code, i);
        let base: Vec<String> = match *start {
            "crate::" => Vec::new(),
            "self::" => module
                .split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            _ => {
                let mut m: Vec<String> = module
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                m.pop();
                m
            }
        };
        let rest = &tree[start.len()..];
        for leaf in expand(rest) {
            let mut full = base.clone();
            for seg in leaf.split("::").filter(|s| !s.is_empty()) {
                match seg {
                    "super" => {
                        full.pop();
                    }
                    "self" => {}
                    s => full.push(s.to_string()),
                }
            }
            found.insert(full.join("::"));
        }
        i = end;
    }
    found
}

/// The path starting at `i`, with any `{…}` group, and where it ends.
fn path_tree(code: &str, i: usize) -> (usize, String) {
    let b = code.as_bytes();
    let mut j = i;
    let mut depth = 0;
    while j < b.len() {
        let c = b[j];
        if c == b'{' {
            depth += 1;
        } else if c == b'}' {
            if depth == 0 {
                break;
            }
            depth -= 1;
            if depth == 0 {
                j += 1;
                break;
            }
        } else if depth == 0 && !(c.is_ascii_alphanumeric() || c == b'_' || c == b':') {
            break;
        }
        j += 1;
    }
    (
        j,
        code[i..j].split_whitespace().collect::<Vec<_>>().join(" "),
    )
}

/// `a::{b, c::{d}}` → `a::b`, `a::c::d`.
fn expand(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree).trim();
        return vec![path.trim_end_matches("::").to_string()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.len().saturating_sub(1)];
    let mut parts = Vec::new();
    let (mut depth, mut last) = (0, 0);
    for (k, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[last..k]);
                last = k + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[last..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(p).into_iter().map(move |e| format!("{prefix}{e}")))
        .collect()
}

/// The component a module path belongs to: the longest listed prefix.
fn component(path: &str) -> Option<(&'static str, usize)> {
    let mut best: Option<(&'static str, usize)> = None;
    for (rank, layer) in LAYERS.iter().enumerate() {
        for &c in layer.iter() {
            let hit = path == c || path.starts_with(&format!("{c}::"));
            if hit && best.is_none_or(|(b, _)| c.len() > b.len()) {
                best = Some((c, rank));
            }
        }
    }
    best
}

struct Source {
    module: String,
    names: BTreeSet<String>,
}

fn sources() -> Vec<Source> {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let module = module_of(f.strip_prefix(&root).unwrap());
            let code = code_of(&fs::read_to_string(&f).unwrap());
            let names = paths_named(&code, &module);
            Source { module, names }
        })
        .collect()
}

#[test]
fn dependencies_point_down_only() {
    let mut wrong = Vec::new();
    for s in sources().iter().filter(|s| !s.module.is_empty()) {
        let Some((from, from_rank)) = component(&s.module) else {
            wrong.push(format!("{}: module has no layer in LAYERS", s.module));
            continue;
        };
        for name in &s.names {
            let Some((to, to_rank)) = component(name) else {
                continue; // the crate root's re-exports, or a macro path
            };
            if to != from && to_rank >= from_rank {
                wrong.push(format!(
                    "{} ({from}) uses {name} ({to}): not a lower layer",
                    s.module
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "layer violations:\n{}", wrong.join("\n"));
}

#[test]
fn no_import_circle_between_files() {
    let sources = sources();
    let modules: BTreeSet<&str> = sources.iter().map(|s| s.module.as_str()).collect();
    // The file (module) a path lands in: its longest module prefix.
    let file_of = |path: &str| -> Option<&str> {
        let mut p = path.to_string();
        loop {
            if let Some(m) = modules.get(p.as_str()) {
                return Some(m);
            }
            match p.rfind("::") {
                Some(k) => p.truncate(k),
                None => return modules.get("").copied(),
            }
        }
    };
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for s in &sources {
        for name in &s.names {
            let Some(to) = file_of(name) else { continue };
            // A parent declares and re-exports its children: not an import.
            let parent_of_to = to.rsplit_once("::").map_or("", |(p, _)| p);
            if to == s.module || parent_of_to == s.module || s.module.is_empty() {
                continue;
            }
            edges.entry(s.module.as_str()).or_default().insert(to);
        }
    }
    let mut circles = Vec::new();
    for &start in edges.keys() {
        // Depth-first search for a path back to `start`.
        let mut stack = vec![(start, vec![start])];
        let mut seen = BTreeSet::new();
        while let Some((at, trail)) = stack.pop() {
            for &next in edges.get(at).into_iter().flatten() {
                if next == start {
                    circles.push(trail.join(" -> ") + " -> " + start);
                } else if seen.insert(next) {
                    let mut t = trail.clone();
                    t.push(next);
                    stack.push((next, t));
                }
            }
        }
    }
    circles.sort();
    circles.dedup();
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_reader_resolves_groups_and_relative_paths() {
    let code = code_of(
        "use super::{a, b::{c, d as e}};\nuse crate::x::y; // crate::z\nfn f() { self::g(); \"crate::s\"; }",
    );
    let names = paths_named(&code, "p::q");
    let want: BTreeSet<String> = ["p::a", "p::b::c", "p::b::d", "x::y", "p::q::g"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(names, want);
    assert_eq!(
        component("store::scylla::marks"),
        Some(("store::scylla", 9))
    );
    assert_eq!(component("store::FanOut"), Some(("store", 8)));
}
