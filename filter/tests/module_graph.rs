//! The filter's top-level modules form no import cycle: each can be read, and changed, with
//! only the modules beneath it in mind. The graph is read from the sources themselves (every
//! `crate::<module>` path outside test code), so a new cycle fails here, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The top-level module a source file belongs to (`src/auth/jwks.rs` → `auth`).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_string())
}

/// Whether a file holds only test code (`mod tests;` files and the test key fixtures).
fn is_test_file(file: &Path) -> bool {
    matches!(file.file_name().and_then(|n| n.to_str()), Some("tests.rs" | "test_keys.rs"))
}

/// The file's text before its inline `#[cfg(test)] mod tests` block, which comes last.
fn product_code(text: &str) -> &str {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim() == "#[cfg(test)]" && text[offset + line.len()..].trim_start().starts_with("mod tests") {
            return &text[..offset];
        }
        offset += line.len();
    }
    text
}

/// Every module named right after `crate::` in `code`.
fn referenced_modules(code: &str) -> BTreeSet<String> {
    code.match_indices("crate::")
        .filter(|(at, _)| !code[..*at].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
        .filter_map(|(at, prefix)| {
            let rest = &code[at + prefix.len()..];
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

fn sources(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files.iter().filter(|f| !is_test_file(f)) {
        let Some(module) = top_module(&src, file) else { continue };
        let text = fs::read_to_string(file).unwrap();
        let edges = graph.entry(module.clone()).or_default();
        edges.extend(referenced_modules(product_code(&text)).into_iter().filter(|m| *m != module));
    }
    graph
}

/// A cycle through `start`, as the path of modules that closes it, if there is one.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        let here = path.last().unwrap().clone();
        for next in graph.get(&here).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(graph, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let graph = module_graph();
    assert!(graph.len() >= 10, "the graph was read: {graph:?}");
    assert!(graph["http"].contains("ratelimit"), "edges were read: {:?}", graph["http"]);
    let cycles: Vec<String> = graph.keys().filter_map(|m| cycle_from(&graph, m)).map(|c| c.join(" → ")).collect();
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}

#[test]
fn a_cycle_is_found_and_test_code_is_left_out() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("config", vec!["auth"]),
        ("auth", vec!["error", "config"]),
        ("error", vec![]),
    ]
    .into_iter()
    .map(|(m, edges)| (m.to_string(), edges.into_iter().map(str::to_string).collect()))
    .collect();
    assert_eq!(cycle_from(&graph, "config").unwrap(), ["config", "auth", "config"]);
    assert_eq!(cycle_from(&graph, "error"), None);

    let text = "use crate::error::ConfigError;\nfn f() { voxgate_crate::x(); }\n#[cfg(test)]\nmod tests {\n    use crate::testing::FakeHost;\n}\n";
    assert_eq!(referenced_modules(product_code(text)), BTreeSet::from(["error".to_string()]));
}
