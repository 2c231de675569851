//! The crate's modules form no import cycle: a module (a file under `src/`)
//! that names another with `crate::a::b` or `super::x` depends on it, and no
//! chain of such dependencies comes back to where it started (a parent and its
//! own submodules are one unit). Read from the source text, so anyone can run
//! it: `cargo test --test module_graph`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`launch::parent`) → source text without comments and unit tests.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
                continue;
            }
            let Ok(rel) = p.strip_prefix(concat!(env!("CARGO_MANIFEST_DIR"), "/src")) else { continue };
            let Some(rel) = rel.to_str().and_then(|r| r.strip_suffix(".rs")) else { continue };
            let mut parts: Vec<&str> = rel.split('/').collect();
            if parts.last() == Some(&"mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] || (parts.len() > 1 && parts.last() == Some(&"tests")) {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
            let code: String = code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
            out.insert(parts.join("::"), code);
        }
    }
    let mut out = BTreeMap::new();
    walk(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")), &mut out);
    out
}

/// Every `crate::`/`super::` path named in `code`, as written.
fn named_paths(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let path: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == ':').collect();
        out.push(path.trim_end_matches(':').to_string());
    }
    out
}

/// The longest known module that `path` starts with.
fn resolve(mods: &BTreeMap<String, String>, path: &str) -> Option<String> {
    let segs: Vec<&str> = path.split("::").collect();
    (1..=segs.len()).rev().map(|n| segs[..n].join("::")).find(|m| mods.contains_key(m))
}

fn related(a: &str, b: &str) -> bool {
    a == b || a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, code) in &mods {
        let parent = m.rsplit_once("::").map_or("", |(p, _)| p);
        let mut deps = BTreeSet::new();
        for p in named_paths(code, "crate::") {
            deps.extend(resolve(&mods, &p));
        }
        for p in named_paths(code, "super::") {
            let full = if parent.is_empty() { p } else { format!("{parent}::{p}") };
            deps.extend(resolve(&mods, &full));
        }
        g.insert(m.clone(), deps.into_iter().filter(|d| !related(m, d)).collect());
    }
    g
}

/// A cycle through `start`, if any (depth-first search).
fn cycle_from(g: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((m, path)) = stack.pop() {
        for d in g.get(&m).into_iter().flatten() {
            if d == start {
                let mut c = path.clone();
                c.push(d.clone());
                return Some(c);
            }
            if seen.insert(d.clone()) {
                let mut p = path.clone();
                p.push(d.clone());
                stack.push((d.clone(), p));
            }
        }
    }
    None
}

#[test]
fn the_modules_have_no_import_cycle() {
    let g = graph();
    assert!(g.len() > 30 && g.contains_key("launch::request") && g["launch::request"].contains("policy"), "the source was not read: {g:?}");
    let cycles: Vec<String> = g.keys().filter_map(|m| cycle_from(&g, m)).map(|c| c.join(" -> ")).collect();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn shared_helpers_depend_on_nothing_of_the_crate() {
    // Ids, randomness and escaping are used everywhere; they must not pull
    // the rest of the crate in behind them.
    let g = graph();
    for leaf in ["sanitize", "net::http1", "sys"] {
        assert!(g.get(leaf).is_some_and(|d| d.is_empty()), "{leaf} depends on {:?}", g.get(leaf));
    }
}
