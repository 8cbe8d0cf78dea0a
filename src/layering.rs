//! A guard on the layering of docs/ARCHITECTURE.md ("What may import
//! what"): the lower modules — `config`, `store`, `metrics` and the leaves
//! `wire`, `backoff`, `error` — never name a module above them. It reads
//! the source text, so it sees test code too (a test that needs the upper
//! layers lives with them, or at the crate root like
//! `redis_cluster_tests.rs`). Anything not allowed below is refused, so a
//! new module counts as an upper one until the list says otherwise.
//!
//! Among the lower three the order is `config` → `store` → `metrics` (the
//! store reads its Redis settings and key from the config; the metrics
//! count jobs by the store's `JobStatus`), so none of them imports one
//! later in that order either. `logging` imports nothing of ours and the
//! metrics read its drop counter, so it counts as a leaf here.

use std::path::{Path, PathBuf};

/// Leaves (and `logging`), which every module may use; test-only helpers.
const ALWAYS_ALLOWED: &[&str] = &[
    "wire",
    "clock",
    "backoff",
    "error",
    "logging",
    "testing",
    "redis_cluster_tests",
    "layering",
];

/// Each lower module (its file or directory under `src/`) and the modules
/// of ours it may import besides itself and [`ALWAYS_ALLOWED`].
const LOWER: &[(&str, &[&str])] = &[
    ("config", &[]),
    ("store", &["config"]),
    ("metrics", &["config", "store"]),
    ("mem_budget", &["config"]),
];

/// Upper modules and the modules above them that they must not import:
/// the pipeline sits under the front door (`accept`) and the control port.
const NOT_ABOVE: &[(&str, &[&str])] = &[("pipeline", &["accept", "control", "cli"])];

/// Leaves import nothing of ours.
const LEAVES: &[&str] = &["wire", "clock", "backoff", "error"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `module.rs` and every `.rs` under `module/`.
fn files_of(module: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let file = src().join(format!("{module}.rs"));
    if file.is_file() {
        out.push(file);
    }
    let mut dirs = vec![src().join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let p = e.expect("entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out
}

/// The top-level modules a source text names as `crate::<name>` (also in a
/// grouped `use crate::{a, b::c}`), outside `//` comments (a line is cut at
/// its first `//`, so a path after a URL on the same line is not seen:
/// simple beats complete for a guard).
fn crate_paths(text: &str) -> Vec<String> {
    let mut named = Vec::new();
    for line in text.lines() {
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    named.push(ident(item.trim()));
                }
            } else {
                named.push(ident(rest));
            }
        }
    }
    named.retain(|n| !n.is_empty());
    named
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn the_scanner_sees_plain_grouped_and_not_commented_paths() {
    let text = "use crate::config::Config;\n\
                let x = crate::admission::presets::lookup(h); // crate::jobs\n\
                use crate::{tls::LocalCa, store};\n\
                /// see `crate::control`\n";
    assert_eq!(
        crate_paths(text),
        ["config", "admission", "tls", "store"].map(String::from)
    );
}

#[test]
fn lower_modules_import_nothing_above_them() {
    let mut wrong = Vec::new();
    for (module, may) in LOWER {
        let files = files_of(module);
        assert!(!files.is_empty(), "no source for {module}");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read");
            for name in crate_paths(&text) {
                let ok = name == *module
                    || may.contains(&name.as_str())
                    || ALWAYS_ALLOWED.contains(&name.as_str());
                if !ok {
                    wrong.push(format!("{}: crate::{name}", file.display()));
                }
            }
        }
    }
    for (module, above) in NOT_ABOVE {
        for file in files_of(module) {
            let text = std::fs::read_to_string(&file).expect("read");
            for name in crate_paths(&text) {
                if above.contains(&name.as_str()) {
                    wrong.push(format!("{}: crate::{name}", file.display()));
                }
            }
        }
    }
    for leaf in LEAVES {
        for file in files_of(leaf) {
            let text = std::fs::read_to_string(&file).expect("read");
            for name in crate_paths(&text) {
                if name != *leaf {
                    wrong.push(format!("{}: crate::{name}", file.display()));
                }
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "a lower module imports one above it (docs/ARCHITECTURE.md, \"What may import what\"):\n{}",
        wrong.join("\n")
    );
}
