//! Keeps ARCHITECTURE.md true: reads the sources and checks who imports whom.
//!
//! - `plan/` (pure decisions) imports no Kubernetes client, no libvirt, no hypervisor, controller
//!   or fencing module, and reads no clock.
//! - `fence/` (the BMC clients) imports no planner, controller or hypervisor module.
//! - `gate` (may this replica act) imports nothing of ferry: both edges ask it.
//! - `api/` (the CRD types) imports nothing else of ferry: conversions into planner inputs live
//!   on the `plan/` side.
//! - No controller imports another controller, and the modules controllers share import none.
//! - No import circle between ferry's modules (at the top level, and between the modules one
//!   level below it, such as `plan::capacity` and `controller::hosts`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The controllers: each has its own reconcile and may import no other.
const CONTROLLERS: &[&str] = &["virtual_machine", "host_pool", "migration", "ha"];

/// Modules under `controller/` that may name the controllers: the wiring that runs them.
const WIRING: &[&str] = &["run"];

/// Paths a `plan/` module may not use (a path equal to one of these or below it).
const PLAN_FORBIDDEN_PATHS: &[&str] = &[
    "crate::hypervisor",
    "crate::controller",
    "crate::fence",
    "crate::metrics",
    "kube::Client",
    "kube::Api",
    "kube::api::Api",
    "kube::api::Patch",
    "kube::client",
    "kube::runtime",
    "virt",
    "tokio",
    "reqwest",
];

/// Clock reads a `plan/` module may not make (callers pass `now`).
const CLOCKS: &[&str] = &[
    "Instant::now",
    "SystemTime::now",
    "Timestamp::now",
    "Utc::now",
];

/// Modules of ferry that the fencing edge may not use.
const FENCE_FORBIDDEN_PATHS: &[&str] = &["crate::plan", "crate::controller", "crate::hypervisor"];

/// Modules of ferry that `api/` may not use.
const API_FORBIDDEN_PATHS: &[&str] = &[
    "crate::plan",
    "crate::controller",
    "crate::hypervisor",
    "crate::fence",
];

/// One source file, read.
struct Source {
    /// Path relative to the repository.
    file: PathBuf,
    /// Every path it names, resolved to `crate::…` where it is ferry's own, with the module
    /// (as `crate::…`) it is named in.
    paths: Vec<(String, String)>,
    /// Its text without comments and string contents.
    code: String,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    walk(&root.join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(root).ok()?.to_path_buf();
            let module = module_of(&rel)?;
            let text = std::fs::read_to_string(&f).ok()?;
            let code = strip(&text);
            let paths = paths(&code, &module);
            Some(Source {
                file: rel,
                paths,
                code,
            })
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module a file under `src/` defines (`None` for the binaries, which are entry points).
fn module_of(rel: &Path) -> Option<Vec<String>> {
    let parts: Vec<String> = rel
        .iter()
        .skip(1)
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin" || p == "main.rs") {
        return None;
    }
    let mut m = vec!["crate".to_string()];
    for (i, p) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if !last {
            m.push(p.clone());
        } else if p != "lib.rs" && p != "mod.rs" {
            m.push(p.trim_end_matches(".rs").to_string());
        }
    }
    Some(m)
}

/// Source text without comments, and with string and character literals emptied.
fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '/' if c.get(i + 1) == Some(&'/') => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '/' if c.get(i + 1) == Some(&'*') => {
                let mut depth = 0;
                while i < c.len() {
                    if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            'r' if (c.get(i + 1) == Some(&'"') || c.get(i + 1) == Some(&'#'))
                && !c
                    .get(i.wrapping_sub(1))
                    .is_some_and(|p| p.is_alphanumeric() || *p == '_') =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while c.get(j) == Some(&'#') {
                    hashes += 1;
                    j += 1;
                }
                if c.get(j) != Some(&'"') {
                    out.push(c[i]);
                    i += 1;
                    continue;
                }
                j += 1;
                loop {
                    if j >= c.len() {
                        break;
                    }
                    if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
            }
            '"' => {
                i += 1;
                while i < c.len() && c[i] != '"' {
                    if c[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            }
            '\'' => {
                // A character literal ('x', '\n', '\u{..}'), or a lifetime (left as it is).
                if c.get(i + 1) == Some(&'\\') {
                    let mut j = i + 2;
                    while j < c.len() && c[j] != '\'' {
                        j += 1;
                    }
                    i = j + 1;
                    out.push_str("' '");
                } else if c.get(i + 2) == Some(&'\'') {
                    i += 3;
                    out.push_str("' '");
                } else {
                    out.push('\'');
                    i += 1;
                }
            }
            ch => {
                out.push(ch);
                i += 1;
            }
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Colons,
    Open,
    Close,
    Comma,
    Semi,
    Star,
    Other,
}

fn tokens(code: &str) -> Vec<Tok> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(c[start..i].iter().collect()));
            continue;
        }
        match ch {
            ':' if c.get(i + 1) == Some(&':') => {
                out.push(Tok::Colons);
                i += 2;
                continue;
            }
            '{' => out.push(Tok::Open),
            '}' => out.push(Tok::Close),
            ',' => out.push(Tok::Comma),
            ';' => out.push(Tok::Semi),
            '*' => out.push(Tok::Star),
            c if c.is_whitespace() => {}
            _ => out.push(Tok::Other),
        }
        i += 1;
    }
    out
}

/// Every path the code names, with the module it is named in: the expanded `use` trees and the
/// paths written out in the code. Paths of ferry's own are resolved to `crate::…`.
fn paths(code: &str, file_module: &[String]) -> Vec<(String, String)> {
    let t = tokens(code);
    let mut module: Vec<String> = file_module.to_vec();
    // For each open brace: whether it opened an inline `mod`.
    let mut braces: Vec<bool> = Vec::new();
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.len() {
        match &t[i] {
            Tok::Ident(w) if w == "mod" => {
                if let (Some(Tok::Ident(name)), Some(Tok::Open)) = (t.get(i + 1), t.get(i + 2)) {
                    module.push(name.clone());
                    braces.push(true);
                    i += 3;
                    continue;
                }
            }
            Tok::Ident(w) if w == "use" => {
                let end = t[i..]
                    .iter()
                    .position(|x| *x == Tok::Semi)
                    .map_or(t.len(), |p| i + p);
                let mut expanded = Vec::new();
                expand(&t[i + 1..end], &mut Vec::new(), &mut expanded);
                for p in expanded {
                    out.push((resolve(&p, &module), module.join("::")));
                }
                i = end + 1;
                continue;
            }
            Tok::Ident(w) if !matches!(t.get(i.wrapping_sub(1)), Some(Tok::Colons)) => {
                // A path written out: ident (:: ident)+.
                let mut p = vec![w.clone()];
                let mut j = i + 1;
                while let (Some(Tok::Colons), Some(Tok::Ident(n))) = (t.get(j), t.get(j + 1)) {
                    p.push(n.clone());
                    j += 2;
                }
                if p.len() > 1 {
                    out.push((resolve(&p, &module), module.join("::")));
                }
                i = j;
                continue;
            }
            Tok::Open => braces.push(false),
            Tok::Close if braces.pop() == Some(true) => {
                module.pop();
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Expand a `use` tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(t: &[Tok], prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut i = 0;
    let base = prefix.len();
    while i < t.len() {
        match &t[i] {
            Tok::Ident(w) if w == "as" => {
                // `x as y`: the alias does not change the path.
                i += 2;
                continue;
            }
            Tok::Ident(w) if w != "pub" => prefix.push(w.clone()),
            Tok::Star => prefix.push("*".into()),
            Tok::Open => {
                let mut depth = 1;
                let mut j = i + 1;
                while j < t.len() && depth > 0 {
                    match t[j] {
                        Tok::Open => depth += 1,
                        Tok::Close => depth -= 1,
                        _ => {}
                    }
                    j += 1;
                }
                // Split the group at its top-level commas.
                let inner = &t[i + 1..j - 1];
                let mut d = 0;
                let mut start = 0;
                for (k, x) in inner.iter().enumerate() {
                    match x {
                        Tok::Open => d += 1,
                        Tok::Close => d -= 1,
                        Tok::Comma if d == 0 => {
                            expand(&inner[start..k], &mut prefix.clone(), out);
                            start = k + 1;
                        }
                        _ => {}
                    }
                }
                expand(&inner[start..], &mut prefix.clone(), out);
                prefix.truncate(base);
                return;
            }
            _ => {}
        }
        i += 1;
    }
    if prefix.len() > base || (base > 0 && !t.is_empty()) {
        out.push(prefix.clone());
    }
    prefix.truncate(base);
}

/// `super::x` and `self::x` as `crate::…`; other paths as written.
fn resolve(p: &[String], module: &[String]) -> String {
    let mut base: Vec<String> = match p.first().map(String::as_str) {
        Some("super") | Some("self") => module.to_vec(),
        _ => return p.join("::"),
    };
    let mut rest = p;
    while let Some(first) = rest.first() {
        match first.as_str() {
            "super" => {
                base.pop();
            }
            "self" => {}
            _ => break,
        }
        rest = &rest[1..];
    }
    base.extend(rest.iter().cloned());
    base.join("::")
}

fn starts(path: &str, prefix: &str) -> bool {
    path == prefix || path.starts_with(&format!("{prefix}::"))
}

/// `file: uses PATH (RULE)` for every path a file under `dir` names that `forbidden` rules out.
fn forbidden_uses(sources: &[Source], dir: &str, forbidden: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    for s in sources.iter().filter(|s| s.file.starts_with(dir)) {
        for (p, _) in &s.paths {
            if let Some(f) = forbidden.iter().find(|f| starts(p, f)) {
                bad.push(format!("{}: uses {p} ({f})", s.file.display()));
            }
        }
    }
    bad
}

#[test]
fn plan_is_pure() {
    let sources = sources();
    let mut bad = forbidden_uses(&sources, "src/plan", PLAN_FORBIDDEN_PATHS);
    for s in sources.iter().filter(|s| s.file.starts_with("src/plan")) {
        for clock in CLOCKS {
            if s.code.contains(clock) {
                bad.push(format!("{}: reads the clock ({clock})", s.file.display()));
            }
        }
    }
    bad.sort();
    bad.dedup();
    assert!(
        bad.is_empty(),
        "plan/ must stay pure (see ARCHITECTURE.md):\n{}",
        bad.join("\n")
    );
}

#[test]
fn fencing_knows_no_planner() {
    let mut bad = forbidden_uses(&sources(), "src/fence", FENCE_FORBIDDEN_PATHS);
    bad.dedup();
    assert!(
        bad.is_empty(),
        "fence/ takes and returns its own types (see ARCHITECTURE.md):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_gate_knows_nothing_of_ferry() {
    let sources = sources();
    let mut bad: Vec<String> = sources
        .iter()
        .filter(|s| s.file == Path::new("src/gate.rs"))
        .flat_map(|s| {
            s.paths
                .iter()
                .filter(|(p, _)| starts(p, "crate") && !starts(p, "crate::gate"))
                .map(|(p, _)| format!("{}: uses {p}", s.file.display()))
                .collect::<Vec<_>>()
        })
        .collect();
    bad.dedup();
    assert!(
        bad.is_empty(),
        "gate.rs is a leaf both edges ask (see ARCHITECTURE.md):\n{}",
        bad.join("\n")
    );
    assert!(
        sources.iter().any(|s| s.file == Path::new("src/gate.rs")),
        "src/gate.rs is read"
    );
}

#[test]
fn api_types_know_no_decisions() {
    let mut bad = forbidden_uses(&sources(), "src/api", API_FORBIDDEN_PATHS);
    bad.sort();
    bad.dedup();
    assert!(
        bad.is_empty(),
        "api/ holds the CRD types only (see ARCHITECTURE.md):\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_controller_imports_another() {
    let mut bad = Vec::new();
    for s in sources()
        .iter()
        .filter(|s| s.file.starts_with("src/controller"))
    {
        // The controller (or shared module) the file belongs to.
        let own = s
            .file
            .iter()
            .nth(2)
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
            .unwrap_or_default();
        if own == "mod" || WIRING.contains(&own.as_str()) {
            continue;
        }
        for (p, _) in &s.paths {
            for c in CONTROLLERS.iter().filter(|c| **c != own) {
                if starts(p, &format!("crate::controller::{c}")) {
                    bad.push(format!("{}: uses {p}", s.file.display()));
                }
            }
        }
    }
    bad.sort();
    bad.dedup();
    assert!(
        bad.is_empty(),
        "a controller imports another (or a shared module imports a controller); move what they \
         share into a shared module (see ARCHITECTURE.md):\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_import_circles() {
    let sources = sources();
    for depth in [2usize, 3] {
        // Edges between modules cut to `depth` segments (`crate::plan`, `crate::plan::capacity`).
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let cut = |p: &str| -> Option<String> {
            let parts: Vec<&str> = p.split("::").collect();
            (parts.first() == Some(&"crate") && parts.len() >= depth)
                .then(|| parts[..depth].join("::"))
        };
        for s in &sources {
            for (p, from) in &s.paths {
                // Test modules may reach anywhere.
                if from.split("::").any(|m| m == "tests") {
                    continue;
                }
                let (Some(a), Some(b)) = (cut(from), cut(p)) else {
                    continue;
                };
                // Only edges between siblings count at this depth.
                let parent = |x: &str| x.rsplit_once("::").map(|(l, _)| l.to_string());
                if a != b && parent(&a) == parent(&b) {
                    edges.entry(a).or_default().insert(b);
                }
            }
        }
        if let Some(circle) = find_circle(&edges) {
            panic!(
                "import circle: {} (see ARCHITECTURE.md for who may import whom)",
                circle.join(" → ")
            );
        }
    }
}

/// A circle in the graph, if there is one.
fn find_circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|s| s == n) {
            let mut c = stack[pos..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        if let Some(c) = visit(n, edges, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_checks_see_what_they_check() {
    // The reader finds imports in use trees, written-out paths and inline modules, and ignores
    // comments and strings.
    let code = strip(
        "use super::{a, b::{c as d, e}};\n// use crate::hidden;\nfn f() { let s = \"crate::x::y\"; crate::plan::quantity::parse(s); }\nmod tests { use super::*; use super::g; }\n",
    );
    let module = vec!["crate".to_string(), "controller".into(), "ha".into()];
    let found: Vec<String> = paths(&code, &module).into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        found,
        vec![
            "crate::controller::a",
            "crate::controller::b::c",
            "crate::controller::b::e",
            "crate::plan::quantity::parse",
            "crate::controller::ha::*",
            "crate::controller::ha::g",
        ]
    );
    let mut edges = BTreeMap::new();
    edges.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    edges.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(
        find_circle(&edges),
        Some(vec!["a".to_string(), "b".into(), "a".into()])
    );
}
