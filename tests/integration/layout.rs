//! The layout follows the data: one floor order, top to bottom —
//! main → app → daemon → collectors → db → polymarket → config/logging → leaves (journal ids,
//! error chain, backoff, fault hook, exit codes). Nothing imports upward, and sibling modules
//! of one folder import each other in one direction only (no cycles).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn floor(top: &str) -> u32 {
    match top {
        "app" => 6,
        "daemon" => 5,
        "collectors" => 4,
        "db" => 3,
        "polymarket" => 2,
        "config" | "logging" => 1,
        "journal" | "errors" | "backoff" | "clock" | "fault" | "exit" | "allocator" | "slice" => 0,
        other => panic!("module {other} has no floor: add it to the order in src/lib.rs and here"),
    }
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `crate::a::b::…` paths named in `text` (code only: comments are skipped).
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let path: Vec<String> = rest
                .split("::")
                .map(|seg| seg.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>())
                .take_while(|seg| !seg.is_empty() && seg.chars().next().is_some_and(|c| c.is_lowercase()))
                .collect();
            if !path.is_empty() {
                out.push(path);
            }
        }
    }
    out
}

/// The module path of a source file: `src/db/gaps.rs` → `["db", "gaps"]`.
fn module_of(root: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

#[test]
fn no_module_imports_a_floor_above_it_and_siblings_have_no_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut upward = Vec::new();
    // Edges between sibling modules (same parent), by parent.
    let mut edges: BTreeMap<Vec<String>, BTreeSet<(String, String)>> = BTreeMap::new();
    for file in &files {
        let module = module_of(&root, file);
        if module.is_empty() || module == ["main"] || module == ["lib"] {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        let mut targets = crate_paths(&text);
        // `super::x` from a child file names a sibling of it.
        if module.len() >= 2 {
            let parent = &module[..module.len() - 1];
            for line in text.lines() {
                let code = line.split("//").next().unwrap_or("");
                for (i, _) in code.match_indices("super::") {
                    let seg: String = code[i + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if seg.chars().next().is_some_and(|c| c.is_lowercase()) {
                        let mut p = parent.to_vec();
                        p.push(seg);
                        targets.push(p);
                    }
                }
            }
        }
        for target in targets {
            let (from, to) = (floor(&module[0]), floor(&target[0]));
            if module[0] != target[0] && to >= from {
                upward.push(format!("{} imports crate::{}", module.join("::"), target.join("::")));
            }
            // Siblings: same parent folder, another child of it.
            let depth = module.len() - 1;
            if target.len() > depth && target[..depth] == module[..depth] && target[depth] != module[depth] {
                edges.entry(module[..depth].to_vec()).or_default().insert((module[depth].clone(), target[depth].clone()));
            }
        }
    }
    assert!(upward.is_empty(), "imports up a floor:\n{}", upward.join("\n"));
    let mut cycles = Vec::new();
    for (parent, e) in &edges {
        for (a, b) in e {
            if a != b && e.contains(&(b.clone(), a.clone())) && a < b {
                cycles.push(format!("{}: {a} <-> {b}", parent.join("::")));
            }
        }
    }
    assert!(cycles.is_empty(), "sibling modules importing each other:\n{}", cycles.join("\n"));
}

#[test]
fn the_checker_sees_an_upward_import() {
    // The parser finds paths in code, not in comments.
    let found = crate_paths("use crate::daemon::health; // crate::app\nlet x = crate::db::Pool::new();");
    assert_eq!(found, vec![vec!["daemon".to_string(), "health".into()], vec!["db".to_string()]]);
    assert!(floor("db") < floor("daemon"));
}

/// One crypto provider: rustls (the database, the REST and the WebSocket clients) runs on
/// aws-lc-rs, and nothing the binary links pulls in ring beside it (`cargo tree` of the normal
/// dependencies; Cargo.lock also lists optional dependencies that are never built).
#[test]
fn one_crypto_provider_is_linked() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["tree", "-e", "normal", "--prefix", "none", "--offline", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8(out.stdout).unwrap();
    let crates: BTreeSet<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(crates.contains("aws-lc-rs"), "aws-lc-rs is the provider: {crates:?}");
    assert!(!crates.contains("ring"), "ring is linked beside aws-lc-rs");
}
