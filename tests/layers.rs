//! The crate's layering, checked: every `crate::` path in `src/` (outside
//! `#[cfg(test)]` modules and comments) may only name a module of a lower
//! layer, or its own module. This keeps the module graph free of circles;
//! the layers are described in the crate docs (`src/lib.rs`, "Layout").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level modules by layer, lowest first. A module may use modules of
/// lower layers only (and itself). Keep in step with `src/lib.rs`.
const LAYERS: &[&[&str]] = &[
    &["model", "metrics"],
    &["error"],
    &["clock", "store"],
    &["signer", "audit", "events", "denylist"],
    &["kernel"],
    &["protect"],
    &["factor"],
    &["approval"],
    &["enroll", "ops", "keys"],
    &["backup"],
    &["config"],
    &["core"],
    &["pb"],
    &["api", "client"],
    &["server"],
];

/// Names the crate root re-exports, and the module they come from.
const ROOT_REEXPORTS: &[(&str, &str)] = &[("Sigil", "core"), ("Error", "error")];

fn rank_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file under `src/` belongs to (None: the crate
/// root or a binary).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    if first == "bin" || first == "lib.rs" {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_string())
}

/// The code of a file without comments and without `#[cfg(test)]` items
/// (test modules may build fixtures from any layer).
fn production_code(text: &str) -> String {
    let mut out = String::new();
    let mut skip_depth: Option<i32> = None;
    let mut depth = 0i32;
    let mut pending_cfg_test = false;
    for line in text.lines() {
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let trimmed = code.trim();
        if skip_depth.is_none() && trimmed == "#[cfg(test)]" {
            pending_cfg_test = true;
            continue;
        }
        let opens = code.matches('{').count() as i32;
        let closes = code.matches('}').count() as i32;
        if pending_cfg_test && skip_depth.is_none() {
            pending_cfg_test = false;
            if opens > closes {
                skip_depth = Some(depth);
            }
            depth += opens - closes;
            continue;
        }
        depth += opens - closes;
        if let Some(d) = skip_depth {
            if depth <= d {
                skip_depth = None;
            }
            continue;
        }
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Every top-level module named by a `crate::` path in `code`, including
/// inside `use crate::{a, b::c}` groups.
fn used_modules(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push(name);
                }
            }
        } else {
            let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
        rest = after;
    }
    found
        .into_iter()
        .map(|n| {
            ROOT_REEXPORTS
                .iter()
                .find(|(name, _)| *name == n)
                .map(|(_, m)| m.to_string())
                .unwrap_or(n)
        })
        .collect()
}

#[test]
fn no_module_uses_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut edges: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let Some(own) = rank_of(&module) else {
            violations.push(format!(
                "{}: module `{module}` has no layer: add it to LAYERS here and to the crate docs",
                file.display()
            ));
            continue;
        };
        let code = production_code(&std::fs::read_to_string(file).unwrap());
        for used in used_modules(&code) {
            if used == module {
                continue;
            }
            let Some(theirs) = rank_of(&used) else {
                violations.push(format!("{}: uses `crate::{used}`, which has no layer", file.display()));
                continue;
            };
            if theirs >= own {
                violations.push(format!(
                    "{}: `{module}` (layer {own}) uses `crate::{used}` (layer {theirs}): only lower layers may be used",
                    file.display()
                ));
            }
            edges.entry(module.clone()).or_default().push(used);
        }
    }
    assert!(violations.is_empty(), "layering broken:\n{}", violations.join("\n"));
    // The check looks at something: the domain modules do use the kernel.
    assert!(edges.get("approval").is_some_and(|e| e.iter().any(|m| m == "kernel")));
}

#[test]
fn the_checker_sees_upward_imports_and_skips_tests_and_comments() {
    let code = production_code(
        "use crate::store::Table;\nuse crate::{error::Error, model};\n// crate::api in a comment\nfn f() { crate::core::x(); }\n#[cfg(test)]\nmod tests {\n    use crate::config::Config;\n}\n",
    );
    let used = used_modules(&code);
    assert_eq!(used, ["store", "error", "model", "core"]);
}

#[test]
fn the_crate_docs_list_every_layer() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for layer in LAYERS {
        for m in *layer {
            if *m == "pb" {
                continue;
            }
            assert!(
                lib.contains(&format!("[`{m}`]")),
                "src/lib.rs Layout does not mention `{m}`"
            );
        }
    }
}
