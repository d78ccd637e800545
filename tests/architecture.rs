//! The layer table of `src/`: which module may import which, checked on the source text.
//!
//! Every `use` item and every `crate::…` (`super::…`, in `main.rs` `litekeeper::…`) path in
//! code is resolved to the module it names; an import that crosses a forbidden edge fails the
//! test with its file and line. Comments, strings and `#[cfg(test)]` items are not read. The
//! same table stands in ARCHITECTURE.md ("Layers"); a test keeps the two equal.
//!
//! Rules: a module may use its own submodules and the modules of its own layer; beyond that only
//! the layers its row names. A module belongs to the row with the longest matching prefix
//! (`jobs::prune` also holds `jobs::prune::rows`), and every module of `src/` must belong to one.
//! Each job (backup, prune, vacuum) is a layer of its own, so jobs do not use each other.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One row of the table: a layer, the modules in it, the layers it may import.
type Layer = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
);

#[rustfmt::skip]
const BELOW_JOBS: &[&str] = &["domain", "base", "config", "policy", "output", "storage", "records"];
#[rustfmt::skip]
const BELOW_A_JOB: &[&str] = &["domain", "base", "config", "policy", "output", "storage", "records", "jobs"];
#[rustfmt::skip]
const BELOW_COMMANDS: &[&str] = &[
    "domain", "base", "config", "policy", "output", "storage", "records", "jobs", "job:backup",
    "job:prune", "job:vacuum", "job:drill", "scheduler", "cli",
];

/// Lower layers first. `domain` (the shared vocabulary) and `restore` (the restore library)
/// may not exist yet: a row may name a module that is still to come.
#[rustfmt::skip]
const LAYERS: &[Layer] = &[
    ("domain",     &["domain"],                                              &[]),
    ("base",       &["exit", "paths", "safe_fs", "lock", "pidfile", "schedule", "privileges", "db_files"], &["domain"]),
    ("config",     &["config"],                                              &["domain", "base"]),
    ("policy",     &["retention", "units", "demo"],                          &["domain", "base", "config"]),
    ("output",     &["logging", "notify", "progress"],                       &["domain", "base", "config"]),
    ("storage",    &["sqlite", "archive", "restore", "chain", "remote"],     &["domain", "base", "config", "policy", "output"]),
    ("records",    &["state", "metrics", "pings"],                           &["domain", "base", "config", "policy", "output", "storage"]),
    ("jobs",       &["jobs"],                                                BELOW_JOBS),
    ("job:backup", &["jobs::backup"],                                        BELOW_A_JOB),
    ("job:prune",  &["jobs::prune", "jobs::prune_fk", "jobs::prune_batch"],  BELOW_A_JOB),
    ("job:vacuum", &["jobs::vacuum"],                                        BELOW_A_JOB),
    ("job:drill",  &["jobs::drill"],                                         BELOW_A_JOB),
    ("scheduler",  &["scheduler"],                                           BELOW_A_JOB),
    ("cli",        &["cli"],                                                 &["domain", "base"]),
    ("commands",   &["commands"],                                            BELOW_COMMANDS),
    ("binary",     &["main"],                                                &["base", "output", "cli", "commands"]),
];

/// Edges that break the table today, each with what should move. `from` covers that module and
/// its submodules; `to` is a path prefix. Delete a line when its edge is gone (the test says
/// which are): a new violation is never added here.
#[rustfmt::skip]
const ALLOWED_TODAY: &[(&str, &str, &str)] = &[
];

/// One import found in the source: where, from which module, the path as resolved.
struct Import {
    file: PathBuf,
    line: usize,
    from: Vec<String>,
    path: Vec<String>,
}

/// True when `prefix` is `path` or a leading part of it, segment by segment.
fn starts_with(path: &[String], prefix: &str) -> bool {
    let p: Vec<&str> = prefix.split("::").collect();
    p.len() <= path.len() && path.iter().zip(&p).all(|(a, b)| a == b)
}

fn join(path: &[String]) -> String {
    path.join("::")
}

/// The layer a module belongs to: the row with the longest prefix of it.
fn layer_of(module: &[String]) -> Option<&'static Layer> {
    LAYERS
        .iter()
        .flat_map(|l| l.1.iter().map(move |m| (l, *m)))
        .filter(|(_, m)| starts_with(module, m))
        .max_by_key(|(_, m)| m.split("::").count())
        .map(|(l, _)| l)
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/jobs/backup.rs` → `jobs::backup`, `src/jobs/mod.rs` → `jobs`, `src/main.rs` → `main`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut segs: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if segs.last().is_some_and(|s| s == "mod" || s == "lib") {
        segs.pop();
    }
    segs
}

#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    Punct(&'static str),
    Other(char),
}

/// Tokens with their line numbers; comments, string and char literals dropped.
fn tokens(text: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = text.chars().collect();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            loop {
                if i >= c.len() {
                    break;
                }
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
            }
        } else if let Some(len) = raw_string_start(&c, i) {
            // r"…", r#"…"#, br"…": ends at the quote followed by as many hashes.
            let hashes = len - 1 - usize::from(ch == 'b') - 1;
            i += len;
            loop {
                if i >= c.len() {
                    break;
                }
                if c[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                    i += 1 + hashes;
                    break;
                }
                line += usize::from(c[i] == '\n');
                i += 1;
            }
        } else if ch == '"' || ((ch == 'b' || ch == 'c') && at(i + 1) == '"') {
            i += if ch == '"' { 1 } else { 2 };
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                line += usize::from(at(i) == '\n');
                i += 1;
            }
            i += 1;
        } else if ch == '\'' {
            // A char literal ('a', '\n', '\u{1F600}'), or a lifetime ('a) left as a token.
            if at(i + 1) == '\\' {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                out.push((Tok::Other('\''), line));
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            if word == "r" && at(i) == '#' {
                // A raw identifier: r#type.
                i += 1;
                continue;
            }
            out.push((Tok::Ident(word), line));
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
        } else if ch == ':' && at(i + 1) == ':' {
            out.push((Tok::Punct("::"), line));
            i += 2;
        } else {
            out.push((Tok::Other(ch), line));
            i += 1;
        }
    }
    out
}

/// The length of a raw string's opening (`r"`, `r##"`, `br#"`) at `i`, if one starts there.
fn raw_string_start(c: &[char], i: usize) -> Option<usize> {
    if i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_') {
        return None;
    }
    let mut j = i;
    if c.get(j) == Some(&'b') {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    while c.get(j) == Some(&'#') {
        j += 1;
    }
    (c.get(j) == Some(&'"')).then_some(j + 1 - i)
}

/// The tokens without `#[cfg(test)]` items (a test module, function or `use`).
fn without_test_items(toks: Vec<(Tok, usize)>) -> Vec<(Tok, usize)> {
    let is = |t: &(Tok, usize), s: &str| match &t.0 {
        Tok::Ident(w) => w == s,
        Tok::Other(ch) => s.len() == 1 && s.starts_with(*ch),
        Tok::Punct(p) => *p == s,
    };
    let attr = ["#", "[", "cfg", "(", "test", ")", "]"];
    let mut keep = vec![true; toks.len()];
    let mut i = 0;
    while i < toks.len() {
        let found = i + attr.len() <= toks.len()
            && attr.iter().enumerate().all(|(k, s)| is(&toks[i + k], s));
        if !found {
            i += 1;
            continue;
        }
        // Drop the attribute and the item after it: up to its `;` or its closing brace.
        let mut depth = 0;
        let start = i;
        i += attr.len();
        while i < toks.len() {
            let t = &toks[i];
            i += 1;
            if is(t, "{") || is(t, "[") || is(t, "(") {
                depth += 1;
            } else if is(t, "}") || is(t, "]") || is(t, ")") {
                depth -= 1;
                if depth == 0 && is(t, "}") {
                    break;
                }
            } else if depth == 0 && is(t, ";") {
                break;
            }
        }
        keep[start..i].iter_mut().for_each(|k| *k = false);
    }
    toks.into_iter()
        .zip(keep)
        .filter_map(|(t, k)| k.then_some(t))
        .collect()
}

/// Parses one use tree at `toks[*i]` with `prefix` before it; pushes every leaf path.
fn use_tree(
    toks: &[(Tok, usize)],
    i: &mut usize,
    prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, usize)>,
) {
    let mut path = prefix;
    let mut line = toks.get(*i).map_or(0, |t| t.1);
    loop {
        match toks.get(*i).map(|t| &t.0) {
            Some(Tok::Punct("::")) => *i += 1,
            Some(Tok::Other('{')) => {
                *i += 1;
                while !matches!(toks.get(*i).map(|t| &t.0), Some(Tok::Other('}')) | None) {
                    use_tree(toks, i, path.clone(), out);
                    if matches!(toks.get(*i).map(|t| &t.0), Some(Tok::Other(','))) {
                        *i += 1;
                    }
                }
                *i += 1;
                return;
            }
            Some(Tok::Other('*')) => {
                *i += 1;
                out.push((path, line));
                return;
            }
            Some(Tok::Ident(w)) if w == "self" && !path.is_empty() => {
                line = toks[*i].1;
                *i += 1;
            }
            Some(Tok::Ident(w)) if w == "as" => {
                *i += 2;
                out.push((path, line));
                return;
            }
            Some(Tok::Ident(w)) => {
                line = toks[*i].1;
                path.push(w.clone());
                *i += 1;
            }
            _ => {
                out.push((path, line));
                return;
            }
        }
    }
}

/// Resolves a written path (`crate::a`, `super::b`, `self::c`) against the module it is in;
/// `None` for paths into other crates or local names.
fn resolve(module: &[String], written: &[String], crate_name: &str) -> Option<Vec<String>> {
    let first = written.first()?;
    let mut base: Vec<String>;
    let mut rest = written;
    if first == "crate" || first == crate_name {
        base = Vec::new();
        rest = &written[1..];
    } else if first == "super" || first == "self" {
        base = module.to_vec();
        while let Some(s) = rest.first() {
            match s.as_str() {
                "super" => {
                    base.pop();
                }
                "self" => {}
                _ => break,
            }
            rest = &rest[1..];
        }
    } else {
        return None;
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// Every import of one file: its `use` items and the crate paths in its code.
fn imports_of(file: &Path, module: &[String], text: &str) -> Vec<Import> {
    let toks = without_test_items(tokens(text));
    let crate_name = if module == ["main"] {
        "litekeeper"
    } else {
        "crate"
    };
    let ident = |i: usize| match toks.get(i).map(|t| &t.0) {
        Some(Tok::Ident(w)) => Some(w.as_str()),
        _ => None,
    };
    let punct = |i: usize| matches!(toks.get(i).map(|t| &t.0), Some(Tok::Punct("::")));
    let mut written: Vec<(Vec<String>, usize)> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let w = ident(i);
        if w == Some("use") {
            i += 1;
            use_tree(&toks, &mut i, Vec::new(), &mut written);
            continue;
        }
        let starts_path = matches!(w, Some(s) if s == crate_name || s == "super")
            && punct(i + 1)
            && !(i > 0 && punct(i - 1))
            && ident(i.wrapping_sub(1)) != Some("in");
        if starts_path {
            let line = toks[i].1;
            let mut path = vec![w.unwrap().to_string()];
            i += 1;
            while punct(i) {
                match ident(i + 1) {
                    Some(s) => path.push(s.to_string()),
                    None => break,
                }
                i += 2;
            }
            written.push((path, line));
            continue;
        }
        i += 1;
    }
    written
        .into_iter()
        .filter_map(|(w, line)| {
            let path = resolve(module, &w, crate_name)?;
            Some(Import {
                file: file.to_path_buf(),
                line,
                from: module.to_vec(),
                path,
            })
        })
        .collect()
}

/// All modules and all imports of `src/`.
fn scan() -> (BTreeSet<Vec<String>>, Vec<Import>) {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut modules = BTreeSet::new();
    let mut imports = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let module = module_of(rel);
        if module.is_empty() {
            continue; // lib.rs only declares the modules.
        }
        let text = std::fs::read_to_string(f).unwrap();
        imports.extend(imports_of(&Path::new("src").join(rel), &module, &text));
        modules.insert(module);
    }
    (modules, imports)
}

/// The module an imported path lands in: its longest prefix that is a module of `src/`.
fn target_module(modules: &BTreeSet<Vec<String>>, path: &[String]) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
}

/// The checks on a set of modules and imports: forbidden edges, and unused allowances.
fn check(modules: &BTreeSet<Vec<String>>, imports: &[Import]) -> (Vec<String>, Vec<usize>) {
    let mut errors = Vec::new();
    let mut used = vec![false; ALLOWED_TODAY.len()];
    for m in modules {
        if layer_of(m).is_none() {
            errors.push(format!(
                "module {} is in no layer: add it to LAYERS in tests/architecture.rs and to \
                 ARCHITECTURE.md",
                join(m)
            ));
        }
    }
    for imp in imports {
        let Some(target) = target_module(modules, &imp.path) else {
            continue;
        };
        if target.starts_with(&imp.from) {
            continue; // Its own items and submodules.
        }
        let (Some(from_layer), Some(to_layer)) = (layer_of(&imp.from), layer_of(&target)) else {
            continue;
        };
        if from_layer.0 == to_layer.0 || from_layer.2.contains(&to_layer.0) {
            continue;
        }
        let allowed = ALLOWED_TODAY
            .iter()
            .position(|(f, t, _)| starts_with(&imp.from, f) && starts_with(&imp.path, t));
        if let Some(k) = allowed {
            used[k] = true;
            continue;
        }
        errors.push(format!(
            "{}:{}: {} (layer {}) imports {} (layer {}); {} may import: {}",
            imp.file.display(),
            imp.line,
            join(&imp.from),
            from_layer.0,
            join(&imp.path),
            to_layer.0,
            from_layer.0,
            if from_layer.2.is_empty() {
                "nothing".to_string()
            } else {
                from_layer.2.join(", ")
            }
        ));
    }
    let unused = (0..ALLOWED_TODAY.len()).filter(|k| !used[*k]).collect();
    (errors, unused)
}

#[test]
fn no_module_imports_across_a_forbidden_edge() {
    let (modules, imports) = scan();
    assert!(
        modules.len() > 20 && imports.len() > 100,
        "the scan found {} modules and {} imports: is src/ where it was?",
        modules.len(),
        imports.len()
    );
    let (errors, _) = check(&modules, &imports);
    assert!(
        errors.is_empty(),
        "imports across the layer table (see ARCHITECTURE.md, \"Layers\"):\n{}",
        errors.join("\n")
    );
}

#[test]
fn every_edge_allowed_today_is_still_there() {
    let (modules, imports) = scan();
    let (_, unused) = check(&modules, &imports);
    let stale: Vec<String> = unused
        .iter()
        .map(|k| format!("({:?}, {:?}, …)", ALLOWED_TODAY[*k].0, ALLOWED_TODAY[*k].1))
        .collect();
    assert!(
        stale.is_empty(),
        "ALLOWED_TODAY in tests/architecture.rs lists edges src/ no longer has; delete them:\n{}",
        stale.join("\n")
    );
}

/// The table as ARCHITECTURE.md shows it.
fn markdown_table() -> String {
    let mut t = String::from("| layer | modules | may import |\n|---|---|---|\n");
    for (name, modules, may_import) in LAYERS {
        let modules: Vec<String> = modules.iter().map(|m| format!("`{m}`")).collect();
        let may = match may_import.is_empty() {
            true => "nothing".to_string(),
            false => may_import.join(", "),
        };
        t.push_str(&format!("| {name} | {} | {may} |\n", modules.join(", ")));
    }
    t
}

#[test]
fn architecture_md_shows_the_same_table() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
            .unwrap();
    let table = markdown_table();
    assert!(
        doc.contains(&table),
        "ARCHITECTURE.md's \"Layers\" table differs from LAYERS in tests/architecture.rs; it \
         should read:\n{table}"
    );
}

#[test]
fn the_reader_sees_through_comments_strings_and_test_modules() {
    let text = r##"
//! use crate::jobs;
use crate::{config::{self, Database}, exit::ExitCode as Code};
use super::sibling::*;
/* crate::cli::Cli in a /* nested */ comment */
fn f() -> &'static str {
    let _c = 'x';
    let _ = crate::sqlite::truncate("crate::commands::run", 3);
    r#"crate::scheduler"#
}
#[cfg(test)]
mod tests {
    use crate::commands;
}
"##;
    let imports = imports_of(
        Path::new("src/jobs/backup.rs"),
        &["jobs".into(), "backup".into()],
        text,
    );
    let got: Vec<(String, usize)> = imports.iter().map(|i| (join(&i.path), i.line)).collect();
    let want = [
        ("config", 3),
        ("config::Database", 3),
        ("exit::ExitCode", 3),
        ("jobs::sibling", 4),
        ("sqlite::truncate", 8),
    ];
    let want: Vec<(String, usize)> = want.iter().map(|(p, l)| (p.to_string(), *l)).collect();
    assert_eq!(got, want);
}
