//! The layout rules of `src/`, checked on the source text: no import cycle
//! among modules, and no `process::exit` outside `main.rs`.
//!
//! A module is a file (`plan/saved.rs` is `plan::saved`). An edge `a -> b` is a
//! path `crate::b...` (or `super::...`) written in `a`'s code, test modules
//! left out. Edges between a module and its own ancestors or descendants are
//! not layering (a parent re-exports its children, a child uses its parent's
//! types); every other edge is lifted to the two siblings under the lowest
//! common ancestor, and each group of siblings must form no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `plan/saved.rs` -> `["plan", "saved"]`, `plan/mod.rs` -> `["plan"]`, `lib.rs` -> `[]`,
/// `main.rs` -> `["main"]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib") {
        parts.push(stem.to_owned());
    }
    parts
}

/// The code of a file without its test module (by convention the last item,
/// `#[cfg(test)] mod tests`), comments and string literals.
fn code_of(text: &str) -> String {
    let cut = text
        .find("#[cfg(test)]\nmod tests")
        .or_else(|| text.find("#[cfg(test)]\nmod tests;"))
        .unwrap_or(text.len());
    let text = &text[..cut];
    let mut code = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        code.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                code.push_str("\"\"");
            }
            c => code.push(c),
        }
    }
    code
}

/// The module paths `code` refers to from `module`: `crate::a::b` and
/// `super::x`, each cut to the longest prefix that is a module.
fn references(
    module: &[String],
    code: &str,
    modules: &BTreeSet<Vec<String>>,
) -> BTreeSet<Vec<String>> {
    let mut found = BTreeSet::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !ident(bytes[i - 1]);
        let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
        let (mut path, skip) = if starts_word && rest.starts_with("crate::") {
            (Vec::new(), 7)
        } else if starts_word && rest.starts_with("super::") {
            // `super` is the parent module (of `a/b.rs` and of `a/b/mod.rs` alike).
            let mut base = module.to_vec();
            base.pop();
            (base, 7)
        } else {
            i += 1;
            continue;
        };
        i += skip;
        // Further `super::` segments.
        loop {
            let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
            if rest.starts_with("super::") {
                path.pop();
                i += 7;
            } else {
                break;
            }
        }
        // Segments: `a::b::{c, d}` takes `a::b` (and each of the braces' first
        // segments, when they are modules).
        loop {
            let start = i;
            while i < bytes.len() && ident(bytes[i]) {
                i += 1;
            }
            if start == i {
                if i < bytes.len() && bytes[i] == '{' {
                    let close = bytes[i..].iter().position(|&c| c == '}').map(|p| i + p);
                    if let Some(close) = close {
                        let inner: String = bytes[i + 1..close].iter().collect();
                        for item in inner.split(',') {
                            let first = item.trim().split("::").next().unwrap_or("").trim();
                            let first: String = first.chars().take_while(|&c| ident(c)).collect();
                            if !first.is_empty() {
                                let mut candidate = path.clone();
                                candidate.push(first);
                                if modules.contains(&candidate) {
                                    found.insert(candidate);
                                }
                            }
                        }
                    }
                }
                break;
            }
            path.push(bytes[start..i].iter().collect());
            if bytes[i..].starts_with(&[':', ':']) {
                i += 2;
            } else {
                break;
            }
        }
        while !path.is_empty() && !modules.contains(&path) {
            path.pop();
        }
        if !path.is_empty() {
            found.insert(path);
        }
    }
    found
}

fn is_prefix(a: &[String], b: &[String]) -> bool {
    a.len() <= b.len() && a == &b[..a.len()]
}

/// The edges `a -> b` lifted to siblings: `(parent, child_a, child_b)`.
fn sibling_edges(
    edges: &BTreeSet<(Vec<String>, Vec<String>)>,
) -> BTreeSet<(Vec<String>, String, String)> {
    let mut out = BTreeSet::new();
    for (a, b) in edges {
        if is_prefix(a, b) || is_prefix(b, a) {
            continue;
        }
        let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        out.insert((a[..common].to_vec(), a[common].clone(), b[common].clone()));
    }
    out
}

/// One cycle among `edges`, if there is one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(cycle) = visit(next, edges, state, stack) {
                        return Some(cycle);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if !state.contains_key(node.as_str())
            && let Some(cycle) = visit(node, edges, &mut state, &mut Vec::new())
        {
            return Some(cycle);
        }
    }
    None
}

fn sources() -> (PathBuf, Vec<(Vec<String>, String)>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let modules = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).expect("readable source");
            (module_of(&src, f), text)
        })
        .collect();
    (src, modules)
}

#[test]
fn no_import_cycle_among_modules() {
    let (_, files) = sources();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(m, ..)| m.clone()).collect();
    let mut edges = BTreeSet::new();
    for (module, text) in &files {
        if module.is_empty() || module == &["main".to_owned()] {
            continue;
        }
        for target in references(module, &code_of(text), &modules) {
            if &target != module {
                edges.insert((module.clone(), target));
            }
        }
    }
    let mut groups: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (parent, a, b) in sibling_edges(&edges) {
        groups
            .entry(parent)
            .or_default()
            .entry(a)
            .or_default()
            .insert(b);
    }
    let mut cycles = Vec::new();
    for (parent, group) in &groups {
        if let Some(cycle) = find_cycle(group) {
            let prefix = if parent.is_empty() {
                String::new()
            } else {
                format!("{}::", parent.join("::"))
            };
            let path: Vec<String> = cycle.iter().map(|m| format!("{prefix}{m}")).collect();
            // Name the imports that make the first step, to start the fix there.
            let (from, to) = (&cycle[0], &cycle[1]);
            let witnesses: Vec<String> = edges
                .iter()
                .filter(|(a, b)| {
                    a.get(parent.len()) == Some(from)
                        && b.get(parent.len()) == Some(to)
                        && is_prefix(parent, a)
                        && is_prefix(parent, b)
                })
                .map(|(a, b)| format!("{} -> {}", a.join("::"), b.join("::")))
                .collect();
            cycles.push(format!(
                "{} (via {})",
                path.join(" -> "),
                witnesses.join(", ")
            ));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}
#[test]
fn only_main_ends_the_process() {
    let (src, files) = sources();
    let offenders: Vec<String> = files
        .iter()
        .filter(|(module, _)| module != &["main".to_owned()])
        .filter(|(_, text)| code_of(text).contains("process::exit"))
        .map(|(module, ..)| module.join("::"))
        .collect();
    assert!(
        offenders.is_empty(),
        "process::exit outside {}: {offenders:?}",
        src.join("main.rs").display()
    );
}
