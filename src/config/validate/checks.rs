//! Checks across databases, once every stanza is read: one file in two stanzas, two
//! databases (or fleets) whose backups would share a directory and a series, and backups
//! placed where a files rule would delete them as unreferenced.

use std::path::PathBuf;
use std::sync::Arc;

use super::Checker;
use crate::config::backup_names::{self, attached_series, stem_series};
use crate::config::fleet::is_glob;
use crate::config::raw::RawConfig;
use crate::config::{Database, Entries, Fleet, KeyPath, QUARANTINE_DIR};

/// Every check across databases, in this order; `fleets` are the fleets' templates.
pub(super) fn across_databases(
    c: &mut Checker,
    raw: &RawConfig,
    databases: &[Arc<Database>],
    fleets: &[Fleet],
) {
    let names: Vec<String> = raw.database.iter().map(|d| d.name.clone()).collect();
    same_file_twice(c, databases, &names);
    backup_series_collide(c, raw, databases, fleets, &names);
    backups_in_files_rule_dirs(c, raw, databases, &names);
}

/// Two `[[database]]` stanzas on one file would run their jobs on it at once (locks are per
/// stanza) and back it up twice: the second is refused, naming the first.
fn same_file_twice(c: &mut Checker, databases: &[Arc<Database>], names: &[String]) {
    let mut first_of: std::collections::HashMap<&std::path::Path, usize> =
        std::collections::HashMap::with_capacity(databases.len());
    for (i, db) in databases.iter().enumerate() {
        if !db.path.is_absolute() {
            continue;
        }
        if let Some(&j) = first_of.get(db.path.as_path()) {
            let first = KeyPath::root().key("database").index(j).key("path");
            c.fail(
                &KeyPath::root().key("database").index(i).key("path"),
                format!(
                    "the same file as {}; one database file takes one [[database]] stanza \
                     (two would run their jobs on it at once)",
                    first.describe(names)
                ),
                Some(db.path.display().to_string()),
            );
        } else {
            first_of.insert(&db.path, i);
        }
    }
}

/// Two databases whose backups share a directory and a series (`db` for two apps' `db.sqlite3`,
/// or an attachment's alias that is another database's stem) would each take the other's
/// backups for their own: refused, naming both. Fleets count too (`{name}` read as the name
/// template): two fleets with the same backup `dir` template, or a template that expands to
/// a database's backup directory with a stem whose series that database has.
fn backup_series_collide(
    c: &mut Checker,
    raw: &RawConfig,
    databases: &[Arc<Database>],
    fleets: &[Fleet],
    names: &[String],
) {
    let series = |db: &Database| -> Vec<String> {
        db.backup_sources().into_iter().map(|s| s.series).collect()
    };
    // The same directory however it is written: resolved when it exists.
    let real = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let plain: Vec<usize> = (0..raw.database.len())
        .filter(|&i| !is_glob(&raw.database[i].path))
        .collect();
    if plain.len() != databases.len() {
        return;
    }
    let dir_key = |i: usize| {
        let k = KeyPath::root().key("database").index(i).key("backup");
        match raw.database[i].backup.as_ref().and_then(|b| b.dir.as_ref()) {
            Some(_) => k.key("dir"),
            None => k,
        }
    };
    let clash = |c: &mut Checker, at: usize, other: usize, dir: &std::path::Path, series: &str| {
        let other = KeyPath::root().key("database").index(other);
        c.fail(
            &dir_key(at),
            format!(
                "backs up into the same directory as {}, and both would name backups \
                 \"{series}-<time>.db\": each would list, restore and expire the other's \
                 backups as its own; give each database its own backup dir",
                other.describe(names)
            ),
            Some(dir.display().to_string()),
        );
    };
    let mut seen: Vec<(usize, PathBuf, Vec<String>)> = Vec::new();
    for (k, db) in databases.iter().enumerate() {
        let Some(b) = &db.backup else { continue };
        if !b.dir.is_absolute() {
            continue;
        }
        let dir = real(&b.dir);
        let mine = series(db);
        if let Some((j, s)) = seen.iter().find_map(|(j, d, theirs)| {
            (d == &dir).then(|| {
                mine.iter()
                    .find(|s| theirs.contains(s))
                    .map(|s| (*j, s.clone()))
            })?
        }) {
            clash(c, plain[k], j, &b.dir, &s);
        }
        seen.push((plain[k], dir, mine));
    }
    // Fleets' directory templates, `{name}` read as the name template (`{stem}` in it).
    let stem_dirs: Vec<(&Fleet, String)> = fleets
        .iter()
        .filter_map(|f| {
            let d = f
                .raw
                .backup
                .as_ref()?
                .dir
                .as_ref()?
                .replace("{name}", &f.name);
            d.contains("{stem}").then_some((f, d))
        })
        .collect();
    for (n, (f, d)) in stem_dirs.iter().enumerate() {
        if let Some((g, _)) = stem_dirs[..n]
            .iter()
            .find(|(_, e)| std::path::Path::new(e) == std::path::Path::new(d))
        {
            let other = KeyPath::root().key("database").index(g.index);
            c.fail(
                &KeyPath::root()
                    .key("database")
                    .index(f.index)
                    .key("backup")
                    .key("dir"),
                format!(
                    "the same backup directory template as {}: two files with one stem, one in \
                     each fleet, would share a directory and a series and take each other's \
                     backups; give each fleet its own directory",
                    other.describe(names)
                ),
                f.raw.backup.as_ref().and_then(|b| b.dir.clone()),
            );
        }
        // A plain database's directory that this template makes for some stem.
        for (k, db) in databases.iter().enumerate() {
            let Some(b) = &db.backup else { continue };
            let Some(stem) = stem_in(d, &b.dir) else {
                continue;
            };
            let Some(main) = stem_series(std::path::Path::new(&format!("{stem}.db"))) else {
                continue;
            };
            let mut theirs: Vec<String> = f
                .template
                .attach
                .iter()
                .map(|a| attached_series(&main, &a.alias))
                .collect();
            theirs.push(main);
            if let Some(s) = series(db).into_iter().find(|s| theirs.contains(s)) {
                clash(c, plain[k], f.index, &b.dir, &s);
            }
        }
    }
}

/// The stem for which the directory template `template` (with `{stem}`) is `dir`, if any.
fn stem_in(template: &str, dir: &std::path::Path) -> Option<String> {
    let t: Vec<&str> = template.trim_end_matches('/').split('/').collect();
    let d: Vec<&str> = dir.to_str()?.trim_end_matches('/').split('/').collect();
    if t.len() != d.len() {
        return None;
    }
    let mut stem: Option<&str> = None;
    for (t, d) in t.iter().zip(&d) {
        let Some((pre, post)) = t.split_once("{stem}") else {
            if t != d {
                return None;
            }
            continue;
        };
        if post.contains("{stem}") {
            return None;
        }
        let s = d.strip_prefix(pre)?.strip_suffix(post)?;
        if s.is_empty() || stem.is_some_and(|x| x != s) {
            return None;
        }
        stem = Some(s);
    }
    stem.map(str::to_string)
}

/// A files rule deletes the entries of its directory that no row references. If that
/// directory holds a backup directory, the rule must not be able to take backups for orphans:
/// refused when the backup directory is the rule's directory and the rule's pattern matches
/// backup file names, or is a sub-directory of it that a `entries = "dirs"` rule would take as
/// an id. (Files rules never descend, so backups deeper down, or in a sub-directory of a rule
/// on files, are safe.)
fn backups_in_files_rule_dirs(
    c: &mut Checker,
    raw: &RawConfig,
    databases: &[Arc<Database>],
    names: &[String],
) {
    let stamp = chrono::DateTime::from_timestamp(1_735_786_800, 0).unwrap_or_default();
    let rules = FilesRuleDirs::new(databases);
    for (i, db) in databases.iter().enumerate() {
        let Some(backup) = &db.backup else { continue };
        let covering = rules.covering(&backup.dir);
        if covering.is_empty() || !backup.dir.is_absolute() {
            continue;
        }
        // The names a backup of this database leaves in its directory.
        let mut samples = vec![backup_names::MANIFEST.to_string()];
        for source in db.backup_sources() {
            for (compressed, failed) in [(false, false), (true, false), (false, true)] {
                samples.push(
                    backup_names::BackupName {
                        series: source.series.clone(),
                        time: stamp,
                        compressed,
                        failed,
                    }
                    .file_name(),
                );
            }
        }
        let bkey = KeyPath::root().key("database").index(i).key("backup");
        let explicit = raw.database[i]
            .backup
            .as_ref()
            .is_some_and(|b| b.dir.is_some());
        let (key, how) = if explicit {
            (bkey.key("dir"), String::new())
        } else {
            (
                bkey.clone(),
                " (the default, {state_dir}/backups/{name})".to_string(),
            )
        };
        for (j, n) in covering {
            let Some(f) = databases[j].prune.as_ref().and_then(|p| p.files.get(n)) else {
                continue;
            };
            let Ok(rel) = backup.dir.strip_prefix(&f.dir) else {
                continue;
            };
            let fkey = KeyPath::root()
                .key("database")
                .index(j)
                .key("prune")
                .key("files")
                .index(n)
                .key("dir");
            let takes = |name: &str| match &f.pattern {
                Some(re) => re.captures(name).and_then(|m| m.name("id")).is_some(),
                None => true,
            };
            let first = rel.components().next().and_then(|p| p.as_os_str().to_str());
            let why = match (first, f.entries) {
                (None, Entries::Files) => samples.iter().find(|s| takes(s)).map(|s| {
                    format!(
                        "its pattern matches backup file names like {s:?}, so it would \
                         delete backups as unreferenced"
                    )
                }),
                (Some(sub), Entries::Dirs) if sub != QUARANTINE_DIR && takes(sub) => Some(format!(
                    "it takes each sub-directory as an id (entries = \"dirs\"), so it \
                         would delete {sub:?}, which holds the backups, as unreferenced"
                )),
                _ => None,
            };
            if let Some(why) = why {
                c.fail(
                    &key,
                    format!(
                        "backups{how} would go inside the directory of {} ({:?}), and {why}; \
                         put backups in a directory no files rule scans",
                        fkey.describe(names),
                        f.dir.display().to_string()
                    ),
                    Some(backup.dir.display().to_string()),
                );
            }
        }
    }
}

/// Every files rule by its directory, so the rules a backup directory could fall under are
/// found by walking that directory's ancestors (a few lookups) instead of comparing it with
/// every rule of every database: loading 5,000 databases with files rules was quadratic.
struct FilesRuleDirs<'a> {
    by_dir: std::collections::HashMap<&'a std::path::Path, Vec<(usize, usize)>>,
}

impl<'a> FilesRuleDirs<'a> {
    fn new(databases: &'a [Arc<Database>]) -> Self {
        let mut by_dir: std::collections::HashMap<&std::path::Path, Vec<(usize, usize)>> =
            std::collections::HashMap::new();
        for (j, db) in databases.iter().enumerate() {
            let Some(prune) = &db.prune else { continue };
            for (n, f) in prune.files.iter().enumerate() {
                by_dir.entry(f.dir.as_path()).or_default().push((j, n));
            }
        }
        FilesRuleDirs { by_dir }
    }

    /// `(database index, files rule index)` of every rule whose directory is `dir` or one of
    /// its ancestors, in configuration order.
    fn covering(&self, dir: &std::path::Path) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = dir
            .ancestors()
            .filter_map(|a| self.by_dir.get(a))
            .flatten()
            .copied()
            .collect();
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::Defaults;

    /// The backup-inside-a-files-rule check finds a backup directory's rules by its ancestors:
    /// 5,000 databases whose backups lie outside every rule's directory give no candidate at
    /// all (the check used to compare every backup directory with every rule: 25 million
    /// pairs), and a rule over a shared parent is found for each database exactly once.
    #[test]
    fn files_rules_are_found_by_a_backup_dirs_ancestors() {
        let mut text = String::new();
        for i in 0..5000 {
            text.push_str(&format!(
                "[[database]]\nname = \"app{i}\"\npath = \"/srv/app{i}/app.db\"\n\
                 [database.prune]\n[[database.prune.files]]\ndir = \"/srv/app{i}/uploads\"\n\
                 pattern = '^(?P<id>[0-9a-f-]{{36}})_'\nreferenced_by = \"SELECT id FROM file\"\n\
                 [database.backup]\ndir = \"/srv/backups/app{i}\"\n"
            ));
        }
        let defaults = Defaults {
            config_file: "/etc/litekeeper/litekeeper.toml".into(),
            state_dir: "/var/lib/litekeeper".into(),
            lock_dir: "/run/litekeeper".into(),
        };
        let config =
            crate::config::load_str(&text, std::path::Path::new("lk.toml"), &defaults, &[])
                .unwrap();
        assert_eq!(config.databases.len(), 5000);
        let rules = FilesRuleDirs::new(&config.databases);
        let backup_dir = |d: &Arc<Database>| d.backup.as_ref().unwrap().dir.clone();
        let candidates: usize = config
            .databases
            .iter()
            .map(|d| rules.covering(&backup_dir(d)).len())
            .sum();
        assert_eq!(candidates, 0);
        // A rule on /srv/backups covers every backup directory, and only that rule.
        let text = text.replacen("/srv/app0/uploads", "/srv/backups", 1);
        let with_parent =
            crate::config::load_str(&text, std::path::Path::new("lk.toml"), &defaults, &[])
                .unwrap()
                .databases;
        let rules = FilesRuleDirs::new(&with_parent);
        for d in &with_parent {
            assert_eq!(rules.covering(&backup_dir(d)), vec![(0, 0)]);
        }
        assert_eq!(
            rules.covering(std::path::Path::new("/srv/app7/uploads/x")),
            vec![(7, 0)]
        );
    }
}
