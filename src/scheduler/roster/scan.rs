//! The fleet scan: walking a fleet's pattern for the files that are its members now (the
//! member rule and a member's validation are `config::fleet`'s), refusing names two files
//! make. The one place members are found: at load (`with_members`, which every command's
//! configuration goes through) and on every tick of a fleet's timers (`roster::scan`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::fleet::{
    member, member_name, name_problem, shown, split_pattern, stem_problem, RejectKind, Rejected,
};
use crate::config::{Config, Daemon, Database, FileId, Fleet};

/// One fleet's scan: its members, sorted by path, and the files that are none.
#[derive(Debug, Default)]
pub struct Scan {
    pub members: Vec<Arc<Database>>,
    pub rejected: Vec<Rejected>,
}

/// A file the walk found, before it is judged.
struct Found {
    path: PathBuf,
    stem: String,
    id: FileId,
}

/// Walk `dir` for the pattern components `rest` without following a symlink; files in `found`,
/// what is skipped in `rejected`.
fn walk(dir: &Path, rest: &[String], found: &mut Vec<Found>, rejected: &mut Vec<Rejected>) {
    let Some((first, below)) = rest.split_first() else {
        return;
    };
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    if first == "**" {
        // Zero or more real directories.
        walk(dir, below, found, rejected);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), rest, found, rejected);
            }
        }
        return;
    }
    let Ok(pattern) = glob::Pattern::new(first) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let lossy = name.to_string_lossy();
        if !pattern.matches_with(&lossy, opts) {
            continue;
        }
        let path = e.path();
        // SQLite's own side files are no members.
        if below.is_empty() && crate::db_files::is_sidecar_name(&lossy) {
            continue;
        }
        // The entry itself, never what a link points to.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            rejected.push(Rejected {
                kind: RejectKind::Symlink,
                reason: format!(
                    "{} is skipped: it is a symlink, and a fleet never follows one (put the file \
                     itself there)",
                    shown(&path)
                ),
                path,
            });
        } else if !below.is_empty() {
            if ft.is_dir() {
                walk(&path, below, found, rejected);
            }
        } else if ft.is_file() {
            let stem = match name.to_str() {
                Some(n) => Path::new(n)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                None => {
                    rejected.push(Rejected {
                        kind: RejectKind::BadName,
                        reason: format!(
                            "{} is no member: its name is not UTF-8 (rename the file)",
                            shown(&path)
                        ),
                        path,
                    });
                    continue;
                }
            };
            found.push(Found {
                path,
                stem,
                id: FileId {
                    dev: meta.dev(),
                    ino: meta.ino(),
                },
            });
        } else {
            rejected.push(Rejected {
                kind: RejectKind::NotAFile,
                reason: format!(
                    "{} is skipped: it is a {}, not a database file",
                    shown(&path),
                    if ft.is_dir() {
                        "directory"
                    } else {
                        "special file"
                    }
                ),
                path,
            });
        }
    }
}

/// The names the files of `fleet` would take (valid files only), with their paths: what
/// another fleet's member name may not be.
fn names_of(fleet: &Fleet) -> Vec<(String, PathBuf)> {
    let (root, rest) = split_pattern(&fleet.raw.path);
    let (mut found, mut rejected) = (Vec::new(), Vec::new());
    walk(&root, &rest, &mut found, &mut rejected);
    found
        .into_iter()
        .filter(|f| stem_problem(&f.stem).is_none())
        .map(|f| (member_name(&fleet.name, &f.stem), f.path))
        .filter(|(n, _)| name_problem(n).is_none())
        .collect()
}

/// Scan fleet `n` of `fleets`: its members (sorted by path) and the files that are none. A
/// name two files make — in this fleet or with another fleet's file — is refused for both;
/// `taken` says whether a name belongs to a configured database or a fleet.
pub(super) fn scan(
    fleets: &[Fleet],
    n: usize,
    daemon: &Daemon,
    taken: &dyn Fn(&str) -> bool,
) -> Scan {
    let fleet = &fleets[n];
    let (root, rest) = split_pattern(&fleet.raw.path);
    let (mut found, mut rejected) = (Vec::new(), Vec::new());
    walk(&root, &rest, &mut found, &mut rejected);
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found.dedup_by(|a, b| a.path == b.path); // `**` twice can reach a file twice
                                             // Judge names first: a collision refuses both files, whatever else is wrong.
    let mut by_name: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut named = Vec::new();
    for f in found {
        let name = member_name(&fleet.name, &f.stem);
        if let Some(why) = stem_problem(&f.stem).or_else(|| name_problem(&name)) {
            rejected.push(Rejected {
                kind: RejectKind::BadName,
                reason: format!("{} is no member: {why} (rename the file)", shown(&f.path)),
                path: f.path,
            });
            continue;
        }
        by_name
            .entry(name.clone())
            .or_default()
            .push(f.path.clone());
        named.push((name, f));
    }
    for (m, other) in fleets.iter().enumerate() {
        if m == n {
            continue;
        }
        for (name, path) in names_of(other) {
            if let Some(paths) = by_name.get_mut(&name) {
                paths.push(path);
            }
        }
    }
    // One line per collision, naming every file of it.
    for (name, paths) in &by_name {
        if paths.len() > 1 {
            let all: Vec<String> = paths.iter().map(|p| shown(p)).collect();
            rejected.push(Rejected {
                kind: RejectKind::Collision,
                reason: format!(
                    "{} make the same member name {name:?}: neither is run or backed up until \
                     one is renamed",
                    all.join(" and ")
                ),
                path: paths[0].clone(),
            });
        }
    }
    let mut members = Vec::new();
    for (name, f) in named {
        if by_name[&name].len() > 1 {
            continue;
        }
        if taken(&name) {
            rejected.push(Rejected {
                kind: RejectKind::Taken,
                reason: format!(
                    "{} is no member: its name {name:?} is that of a configured database or \
                     fleet (rename the file or the template)",
                    shown(&f.path)
                ),
                path: f.path,
            });
            continue;
        }
        match member(fleet, daemon, &f.stem, &name, &f.path, f.id) {
            Ok(db) => members.push(Arc::new(db)),
            Err(why) => rejected.push(Rejected {
                kind: RejectKind::BadName,
                reason: format!("{} is no member: {why} (rename the file)", shown(&f.path)),
                path: f.path,
            }),
        }
    }
    rejected.sort();
    Scan { members, rejected }
}

/// `config` with each fleet's members found now (a freshly loaded configuration has none). A
/// member whose name a configured database or a fleet has is refused, and so is a name two
/// files make (in one fleet or two): for both files.
pub fn with_members(mut config: Config) -> Config {
    let plain: HashSet<String> = config.databases.iter().map(|d| d.name.clone()).collect();
    let mut by_name: HashMap<String, usize> = config.by_name.clone();
    for n in 0..config.fleets.len() {
        let fleets = &config.fleets;
        let taken = |name: &str| plain.contains(name) || fleets.iter().any(|f| f.handle == name);
        let scan = scan(fleets, n, &config.daemon, &taken);
        for m in scan.members {
            by_name.insert(m.name.clone(), config.databases.len());
            config.databases.push(m);
        }
        config.fleets[n].rejected = scan.rejected;
    }
    config.by_name = by_name;
    config
}
