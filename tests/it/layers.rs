//! The dependency direction of ARCHITECTURE.md, checked from the source: every top-level
//! module of `src/` sits on its own floor, and a file may name (`crate::…`) only modules on its
//! floor or below. So the platform (up to `storage`) never reaches a feature (workers, edge,
//! cli), and no two modules import each other.

use std::path::{Path, PathBuf};

/// Floors from the ground up, one module each, so no two modules can import each other. A
/// module may use its own floor and those below.
const FLOORS: &[&str] = &[
    "shutdown",
    "backoff",
    "maintenance",
    "metrics",
    "config",
    "redis",
    "telemetry",
    "repo",
    "schemas",
    "migrate",
    "health",
    "events",
    "jobs",
    "storage",
    // Features from here on: they may use the whole platform.
    "workers",
    "edge",
    "cli",
];

/// The highest floor of the platform (`storage`).
const PLATFORM_TOP: usize = 13;

fn floor(module: &str) -> Option<usize> {
    FLOORS.iter().position(|f| *f == module)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`src/events/relay.rs` → `events`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// Every `crate::name` a file's code (not its comments) names, grouped imports included.
fn crate_paths(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for part in inner.split(',') {
                    let name: String = part
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        names.push(name);
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                names.push(name);
            }
        }
    }
    names
}

fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut found = Vec::new();
    for file in files {
        let module = module_of(src, &file);
        let Some(own) = floor(&module) else {
            // main.rs and lib.rs only declare and start.
            assert!(
                module == "main" || module == "lib",
                "{}: module `{module}` has no floor in tests/it/layers.rs",
                file.display()
            );
            continue;
        };
        let code = std::fs::read_to_string(&file).unwrap();
        for used in crate_paths(&code) {
            match floor(&used) {
                Some(f) if f > own => found.push(format!(
                    "{}: `{module}` (floor {own}) uses `crate::{used}` (floor {f}){}",
                    file.display(),
                    if own <= PLATFORM_TOP && f > PLATFORM_TOP {
                        " — the platform must not import a feature"
                    } else {
                        ""
                    }
                )),
                Some(_) => {}
                None => found.push(format!(
                    "{}: `crate::{used}` is not a module with a floor",
                    file.display()
                )),
            }
        }
    }
    found
}

#[test]
fn modules_only_use_their_own_floor_or_below() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(
        found.is_empty(),
        "dependency direction broken:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_catches_a_platform_module_importing_a_feature() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    std::fs::create_dir(&events).unwrap();
    std::fs::write(
        events.join("relay.rs"),
        "// crate::workers in a comment is fine\nuse crate::{repo::Repo, workers::policy_evaluator};\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("workers.rs"), "use crate::events::Event;\n").unwrap();
    let found = violations(dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("the platform must not import a feature"),
        "{found:?}"
    );
}
