//! Tidy checks of the code's shape: no import cycle between modules, and no source file
//! grows past the size a reader can hold in mind.
//!
//! **Cycles.** For each crate that ships (`drivers`, `gateway`'s library; not the test
//! doubles of `testkit`, whose simulated BlueZ objects and the signals they emit refer to
//! each other as BlueZ's do) the
//! `crate::…`, `super::…` and `self::…` paths of each file's non-test code are resolved to
//! the module they name. An import between a module and one of its own ancestors or
//! descendants is how Rust code is organized and is allowed; every other import `M → N`
//! becomes an edge between the two sibling modules that contain them under their closest
//! common ancestor (`outbox::writer → uplink::deliver` is `outbox → uplink` among the
//! crate's top-level modules). Within each family of siblings the edges must form no cycle:
//! shared code lives in a module both use, not in one of them.
//!
//! **Size.** No source file outside the top-level `tests/` folder has more than
//! [`MAX_LINES`] lines, and the configuration's root (`gateway/src/config.rs`) fewer
//! than 350.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest a source file may be.
const MAX_LINES: usize = 600;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the gateway crate is inside the repository")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && name != ".git" && name != ".venv" {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under `src` (`outbox/store/mod.rs` → `["outbox", "store"]`),
/// or `None` for test-only files and the crate roots.
fn module_of(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if stem == "tests" || stem == "test_support" {
        return None;
    }
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_string());
    }
    Some(parts)
}

/// The file's code without its unit tests (a `#[cfg(test)]` module runs to the end of the
/// file by the project's convention) and without comments.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Every path a file's code starts with `crate::`, `super::` or `self::`, including those
/// inside `use` groups (`use super::{a::B, c};`), as segment lists relative to the file's
/// module (`super`/`self` kept as segments; resolved later).
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let at_word = i == 0 || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_');
        if at_word {
            for head in ["crate::", "super::", "self::"] {
                if code_chars_start_with(&bytes, i, head) {
                    let (found, end) = path_from(&bytes, i, Vec::new());
                    paths.extend(found);
                    i = end;
                    break;
                }
            }
        }
        i += 1;
    }
    paths
}

fn code_chars_start_with(chars: &[char], at: usize, s: &str) -> bool {
    s.chars()
        .enumerate()
        .all(|(k, c)| chars.get(at + k) == Some(&c))
}

/// Reads a path starting at `i` (segments joined by `::`, possibly ending in a `{…}`
/// group); returns the full paths it names and where it ends.
fn path_from(chars: &[char], mut i: usize, prefix: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let mut segments = prefix;
    loop {
        let start = i;
        while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        if i > start {
            segments.push(chars[start..i].iter().collect());
        }
        if code_chars_start_with(chars, i, "::") {
            i += 2;
            if chars.get(i) == Some(&'{') {
                i += 1;
                let mut all = Vec::new();
                loop {
                    while i < chars.len() && chars[i].is_whitespace() {
                        i += 1;
                    }
                    if i >= chars.len() || chars[i] == '}' {
                        return (all, i + 1);
                    }
                    let (found, end) = path_from(chars, i, segments.clone());
                    all.extend(found);
                    i = end;
                    while i < chars.len() && chars[i] != ',' && chars[i] != '}' {
                        i += 1;
                    }
                    if chars.get(i) == Some(&',') {
                        i += 1;
                    }
                }
            }
            continue;
        }
        return (vec![segments], i);
    }
}

/// Resolves a path seen in module `at` to the longest known module it names.
fn resolve(at: &[String], path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let mut base: Vec<String> = at.to_vec();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    let mut target = base;
    for segment in rest {
        let mut next = target.clone();
        next.push(segment.clone());
        if modules.contains(&next) {
            target = next;
        } else {
            break;
        }
    }
    Some(target)
}

/// The edges between sibling modules of one crate, as (parent, from child, to child).
fn sibling_edges(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<(String, String)>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let excluded = ["main.rs", "cmd", "logging.rs", "systemd.rs"];
    let files: Vec<(Vec<String>, PathBuf)> = files
        .into_iter()
        .filter(|f| {
            // The binary's own modules (main.rs and what it declares) are not the library.
            let rel = f.strip_prefix(src).unwrap_or(f);
            !rel.components()
                .next()
                .is_some_and(|c| excluded.iter().any(|e| c.as_os_str() == *e))
        })
        .filter_map(|f| module_of(src, &f).map(|m| (m, f)))
        .collect();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<(String, String)>> = BTreeMap::new();
    for (module, file) in &files {
        let text = std::fs::read_to_string(file).expect("a source file is readable");
        for path in paths_in(&code_of(&text)) {
            let Some(target) = resolve(module, &path, &modules) else {
                continue;
            };
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == module.len() || common == target.len() {
                continue; // an ancestor or a descendant
            }
            edges
                .entry(module[..common].to_vec())
                .or_default()
                .insert((module[common].clone(), target[common].clone()));
        }
    }
    edges
}

/// A cycle in a directed graph, if there is one (as the list of its nodes).
fn find_cycle(edges: &BTreeSet<(String, String)>) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges {
        next.entry(a).or_default().push(b);
    }
    fn visit<'a>(
        node: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = stack[pos..].iter().map(|s| s.to_string()).collect();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node);
        for n in next.get(node).into_iter().flatten() {
            if let Some(c) = visit(n, next, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node);
        None
    }
    let mut done = BTreeSet::new();
    for start in next.keys() {
        if let Some(c) = visit(start, &next, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_module_imports_a_sibling_that_imports_it_back() {
    let mut problems = Vec::new();
    for krate in ["drivers", "gateway"] {
        let src = root().join(krate).join("src");
        for (parent, edges) in sibling_edges(&src) {
            if let Some(cycle) = find_cycle(&edges) {
                let at = if parent.is_empty() {
                    String::new()
                } else {
                    format!("{}::", parent.join("::"))
                };
                problems.push(format!(
                    "{krate}: {}",
                    cycle
                        .iter()
                        .map(|m| format!("{at}{m}"))
                        .collect::<Vec<_>>()
                        .join(" → ")
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "import cycles between modules (move what both need into a module both use):\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_cycle_check_sees_imports_through_groups_and_super() {
    let code = "use super::{a::B, c};\nuse crate::outbox::writer::Control;\nlet x = self::d::f();";
    let paths = paths_in(code);
    assert!(paths.contains(&vec!["super".into(), "a".into(), "B".into()]));
    assert!(paths.contains(&vec!["super".into(), "c".into()]));
    assert!(paths.contains(&vec![
        "crate".into(),
        "outbox".into(),
        "writer".into(),
        "Control".into()
    ]));
    let modules: BTreeSet<Vec<String>> = [
        vec!["outbox".into()],
        vec!["outbox".into(), "writer".into()],
    ]
    .into_iter()
    .collect();
    assert_eq!(
        resolve(
            &["uplink".into()],
            &[
                "crate".into(),
                "outbox".into(),
                "writer".into(),
                "Control".into()
            ],
            &modules
        ),
        Some(vec!["outbox".to_string(), "writer".to_string()])
    );
    let edges: BTreeSet<(String, String)> = [("a", "b"), ("b", "c"), ("c", "a")]
        .iter()
        .map(|(x, y)| (x.to_string(), y.to_string()))
        .collect();
    assert_eq!(
        find_cycle(&edges),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

#[test]
fn no_source_file_outside_the_end_to_end_tests_is_longer_than_600_lines() {
    let root = root();
    let mut files = Vec::new();
    for dir in ["drivers", "gateway", "testkit", "fuzz"] {
        rust_files(&root.join(dir), &mut files);
    }
    let mut long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).ok()?.lines().count();
            (lines > MAX_LINES).then(|| {
                format!(
                    "{} has {lines} lines",
                    f.strip_prefix(&root).unwrap_or(f).display()
                )
            })
        })
        .collect();
    long.sort();
    assert!(
        long.is_empty(),
        "split these files by responsibility (at most {MAX_LINES} lines each):\n{}",
        long.join("\n")
    );
}

/// The configuration's root keeps only the layering and the checks across sections;
/// every section lives with its component.
#[test]
fn the_configuration_root_stays_under_350_lines() {
    let path = root().join("gateway/src/config.rs");
    let lines = std::fs::read_to_string(&path)
        .expect("gateway/src/config.rs is readable")
        .lines()
        .count();
    assert!(
        lines < 350,
        "gateway/src/config.rs has {lines} lines: move a section's structs and checks next to its component"
    );
}
