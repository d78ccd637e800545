//! Files rules: a directory's entries against the ids a SELECT returns, the quarantine and its purge.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::Connection;

use super::sql_err;
use crate::config::{Entries, FileAction, FilesRule, Prune};
use crate::domain::RuleFigures;
use crate::jobs::{JobCtx, JobError};
use crate::safe_fs::{self, DirHandle, Kind};

use crate::config::QUARANTINE_DIR;

/// A file name fit for a one-line report: quoted and escaped when it holds control characters
/// (a name with a newline must not break the output or the journal line).
fn printable(name: &str) -> String {
    if name.chars().any(char::is_control) {
        format!("{name:?}")
    } else {
        name.to_string()
    }
}

/// One directory entry a files rule may act on.
struct Entry {
    name: String,
    is_dir: bool,
    bytes: u64,
}

/// A files rule's directory could not be opened as a real directory.
fn open_rule_dir(label: &str, dir: &Path) -> Result<DirHandle, JobError> {
    DirHandle::open(dir).map_err(|e| {
        if let Some(kind) = safe_fs::not_a_dir(&e) {
            JobError::Refused(format!(
                "{label}: {} is {kind}; files rules act only on a real directory (symlinks are never followed)",
                dir.display(),
            ))
        } else {
            JobError::Io {
                context: format!("{label}: {}", dir.display()),
                source: e,
            }
        }
    })
}

/// Open (creating it 0700) the directory `name` inside `parent`, refusing a symlink or
/// anything else in its place; `shown` is its path for messages.
fn own_dir(parent: &DirHandle, name: &str, shown: &Path) -> Result<DirHandle, JobError> {
    parent.create_dir(OsStr::new(name), 0o700).map_err(|e| {
        if let Some(kind) = safe_fs::not_a_dir(&e) {
            JobError::Refused(format!(
                "{} is {kind}, not a real directory; nothing was moved. Remove it (litekeeper creates its own quarantine)",
                shown.display(),
            ))
        } else {
            JobError::Io {
                context: format!("creating {}", shown.display()),
                source: e,
            }
        }
    })
}

/// Files rule: compare the directory's entries with the ids `referenced_by` returns and
/// delete (or quarantine) the rest. The directory is opened once, without following a
/// symlink, and everything after that (listing, sizes, removal, the quarantine and its
/// expiry) goes through that handle: swapping the directory or anything in it for a symlink
/// mid-run cannot redirect the job.
pub(super) fn prune_files(
    ctx: &JobCtx<'_>,
    prune: &Prune,
    index: usize,
    f: &FilesRule,
    dry_run: bool,
    now: DateTime<Utc>,
) -> Result<RuleFigures, JobError> {
    let label = format!("files[{index}]");
    let mut rep = RuleFigures {
        rule: label.clone(),
        what: format!(
            "{}: entries not referenced by {}",
            f.dir.display(),
            f.referenced_by.trim()
        ),
        ..Default::default()
    };
    let dir = open_rule_dir(&label, &f.dir)?;
    if f.action == FileAction::Quarantine && !dry_run {
        purge_quarantine(&dir, &f.dir, f.quarantine_days, now, &mut rep)?;
    }
    // The ids the application still references.
    let referenced = referenced_ids(ctx.conn, &f.referenced_by, &label)?;
    if referenced.is_empty() && !f.allow_empty_reference {
        return Ok(refuse(
            rep,
            format!(
                "{label}: referenced_by returned no ids, so every file in {} would look orphaned; nothing was deleted. Check the query, or set allow_empty_reference = true if an empty result is real",
                f.dir.display()
            ),
        ));
    }
    let (mut candidates, matching) = unreferenced(&dir, f, &referenced, &label)?;
    candidates.sort_by(|a, b| a.name.cmp(&b.name));
    rep.matched = candidates.len() as u64;
    rep.samples = candidates
        .iter()
        .take(5)
        .map(|c| printable(&c.name))
        .collect();
    if dry_run {
        rep.files = Some(candidates.len() as u64);
        rep.bytes = Some(candidates.iter().map(|c| c.bytes).sum());
        return Ok(rep);
    }
    if matching > 0 && candidates.len() as f64 / matching as f64 > prune.max_fraction {
        return Ok(refuse(
            rep,
            format!(
                "{label}: refused by max_fraction: would remove {} of {matching} entries in {} ({:.0}%), more than max_fraction {:.0}%; nothing of it was removed. Check referenced_by with `litekeeper run {} prune --dry-run`, or raise max_fraction",
                candidates.len(),
                f.dir.display(),
                candidates.len() as f64 * 100.0 / matching as f64,
                prune.max_fraction * 100.0,
                ctx.db.name
            ),
        ));
    }
    let day = now.format("%Y-%m-%d").to_string();
    let qpath = f.dir.join(QUARANTINE_DIR).join(&day);
    // Today's quarantine directory, opened (or made) before anything moves: a symlink in its
    // place refuses the rule with nothing moved.
    let qdir = if f.action == FileAction::Quarantine && !candidates.is_empty() {
        let q = own_dir(&dir, QUARANTINE_DIR, &f.dir.join(QUARANTINE_DIR))?;
        Some(own_dir(&q, &day, &qpath)?)
    } else {
        None
    };
    let (files, bytes) = remove(ctx, &dir, qdir.as_ref(), &candidates, f, &label, &mut rep)?;
    rep.deleted = files;
    rep.files = Some(files);
    rep.bytes = Some(bytes);
    if qdir.is_some() && files > 0 {
        rep.note = Some(format!("moved to {}", qpath.display()));
    }
    Ok(rep)
}

/// The entries of the rule's directory its pattern matches whose id is not referenced and
/// that are old enough (unsorted), and how many entries the pattern matched in all.
fn unreferenced(
    dir: &DirHandle,
    f: &FilesRule,
    referenced: &HashSet<String>,
    label: &str,
) -> Result<(Vec<Entry>, u64), JobError> {
    let min_age = f.min_age;
    let mut candidates = Vec::new();
    let mut matching = 0u64;
    let listing = dir.entries().map_err(|source| JobError::Io {
        context: format!("{label}: listing {}", f.dir.display()),
        source,
    })?;
    for entry in listing {
        let Some(name) = entry.name.to_str().map(str::to_string) else {
            continue; // not UTF-8: cannot match a pattern, never touched
        };
        if name == QUARANTINE_DIR {
            continue;
        }
        let wanted = match f.entries {
            Entries::Files => entry.kind == Kind::File,
            Entries::Dirs => entry.kind == Kind::Dir,
        };
        if !wanted {
            continue;
        }
        let id = match &f.pattern {
            Some(re) => match re.captures(&name).and_then(|c| c.name("id")) {
                Some(m) => m.as_str().to_string(),
                None => continue,
            },
            None => name.clone(),
        };
        matching += 1;
        if referenced.contains(&id) {
            continue;
        }
        let Ok(meta) = dir.meta(&entry.name) else {
            continue;
        };
        if meta.kind != entry.kind {
            continue; // replaced since the listing
        }
        let age = SystemTime::now()
            .duration_since(meta.modified)
            .unwrap_or(Duration::ZERO);
        if age < min_age {
            continue;
        }
        let is_dir = entry.kind == Kind::Dir;
        let bytes = if is_dir {
            dir.tree_bytes(&entry.name)
        } else {
            meta.len
        };
        candidates.push(Entry {
            name,
            is_dir,
            bytes,
        });
    }
    Ok((candidates, matching))
}

/// Delete (or move into `qdir`) each candidate; the entries and bytes gone. An entry the app
/// removed meanwhile is no error; a failure stops the rule with what was done recorded.
fn remove(
    ctx: &JobCtx<'_>,
    dir: &DirHandle,
    qdir: Option<&DirHandle>,
    candidates: &[Entry],
    f: &FilesRule,
    label: &str,
    rep: &mut RuleFigures,
) -> Result<(u64, u64), JobError> {
    let (mut files, mut bytes) = (0u64, 0u64);
    for c in candidates {
        ctx.checkpoint()?;
        let name = OsStr::new(&c.name);
        let result = match qdir {
            None if c.is_dir => dir.remove_tree(name),
            None => dir.remove_file(name),
            Some(q) => dir.move_into(name, q, name).map(|_| ()),
        };
        match result {
            Ok(()) => {
                files += 1;
                bytes += c.bytes;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // the app removed it
            Err(e) => {
                rep.files = Some(files);
                rep.bytes = Some(bytes);
                return Err(JobError::Io {
                    context: format!("{label}: removing {}", f.dir.join(&c.name).display()),
                    source: e,
                });
            }
        }
    }
    Ok((files, bytes))
}

/// A guard's refusal: the rule is skipped with `why` (logged as a warning), the run goes on.
pub(super) fn refuse(mut rep: RuleFigures, why: String) -> RuleFigures {
    tracing::warn!("{why}");
    rep.refused = Some(why);
    rep
}

fn referenced_ids(conn: &Connection, sql: &str, label: &str) -> Result<HashSet<String>, JobError> {
    let sql = sql.trim().trim_end_matches(';').trim();
    let mut st = conn
        .prepare(sql)
        .map_err(sql_err(format!("{label}: referenced_by")))?;
    if !st.readonly() {
        return Err(JobError::Refused(format!(
            "{label}: referenced_by must be a read-only SELECT"
        )));
    }
    let mut out = HashSet::new();
    let mut rows = st
        .query([])
        .map_err(sql_err(format!("{label}: referenced_by")))?;
    while let Some(row) = rows
        .next()
        .map_err(sql_err(format!("{label}: referenced_by")))?
    {
        match row
            .get::<_, Value>(0)
            .map_err(sql_err(format!("{label}: referenced_by")))?
        {
            Value::Integer(i) => {
                out.insert(i.to_string());
            }
            Value::Real(f) => {
                out.insert(f.to_string());
            }
            Value::Text(t) => {
                out.insert(t);
            }
            Value::Blob(b) => {
                if let Ok(t) = String::from_utf8(b) {
                    out.insert(t);
                }
            }
            Value::Null => {}
        }
    }
    Ok(out)
}

/// Remove quarantine day directories older than `days`, through the rule directory's handle.
/// Only real directories named like a day are ours; anything else there is left alone.
fn purge_quarantine(
    dir: &DirHandle,
    shown: &Path,
    days: u32,
    now: DateTime<Utc>,
    rep: &mut RuleFigures,
) -> Result<(), JobError> {
    let qshown = shown.join(QUARANTINE_DIR);
    let q = match dir.open_dir(OsStr::new(QUARANTINE_DIR)) {
        Ok(q) => q,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if safe_fs::not_a_dir(&e).is_some() => {
            return Err(JobError::Refused(format!(
                "{} is {}, not a real directory; remove it (litekeeper creates its own quarantine)",
                qshown.display(),
                safe_fs::not_a_dir(&e).unwrap_or("not a directory")
            )))
        }
        Err(source) => {
            return Err(JobError::Io {
                context: format!("opening {}", qshown.display()),
                source,
            })
        }
    };
    let today = now.date_naive();
    let mut purged = Vec::new();
    let entries = q.entries().map_err(|source| JobError::Io {
        context: format!("listing {}", qshown.display()),
        source,
    })?;
    for entry in entries {
        let Some(name) = entry.name.to_str() else {
            continue;
        };
        let Ok(day) = chrono::NaiveDate::parse_from_str(name, "%Y-%m-%d") else {
            continue;
        };
        if entry.kind != Kind::Dir {
            continue; // a symlink or file named like a day is not ours
        }
        if (today - day).num_days() > days as i64 {
            q.remove_tree(&entry.name).map_err(|source| JobError::Io {
                context: format!("purging {}", qshown.join(name).display()),
                source,
            })?;
            purged.push(name.to_string());
        }
    }
    if !purged.is_empty() {
        rep.note = Some(format!("purged quarantine days {}", purged.join(", ")));
    }
    Ok(())
}
