//! Off-site copies in `status` and `status --check`: per database and remote, the last
//! stored copy and the pending ones, from the state DB (the remote is never contacted).
//!
//! The rule of `status --check` (README.md, "status --check"): CRITICAL when the last copy
//! stored on a remote is older than its `max_age`, or a copy has been pending longer than
//! that (with the last attempt's error); WARNING when a remote with a max age never stored
//! a copy and nothing is pending for longer. `max_age` defaults to the backup job's max
//! age (its `--max-age backup=…`, else twice its schedule's gap). `status --json` carries
//! the same per database and remote, with the problems, as its `offsite` array.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::status::{fmt_age, CheckCode};
use crate::config::{Config, Database};
use crate::state::{HistoryReader, RemoteSummary, State};

/// Each (database, remote) of `config` among `selected`, with its summary.
fn pairs<'a>(
    config: &'a Config,
    selected: Option<&HashSet<String>>,
    summaries: &[RemoteSummary],
) -> Vec<(&'a Database, &'a crate::config::Remote, RemoteSummary)> {
    let mut out = Vec::new();
    for db in &config.databases {
        if selected.is_some_and(|s| !s.contains(&db.name)) {
            continue;
        }
        let Some(backup) = &db.backup else { continue };
        for name in &backup.remotes {
            let Some(remote) = config.remotes.iter().find(|r| &r.name == name) else {
                continue;
            };
            let s = summaries
                .iter()
                .find(|s| s.database == db.name && &s.remote == name)
                .cloned()
                .unwrap_or_default();
            out.push((db.as_ref(), remote.as_ref(), s));
        }
    }
    out
}

fn summaries(reader: Option<&HistoryReader>) -> rusqlite::Result<Vec<RemoteSummary>> {
    reader.map_or(Ok(Vec::new()), |r| r.remote_summaries())
}

/// `status --check`'s problems with off-site copies. `backup_max` is the backup job's max
/// age of a database (the default of a remote's `max_age`).
pub(super) fn problems(
    config: &Config,
    reader: Option<&HistoryReader>,
    selected: Option<&HashSet<String>>,
    backup_max: impl Fn(&Database) -> Option<Duration>,
    now: DateTime<Utc>,
) -> rusqlite::Result<Vec<(CheckCode, String)>> {
    let summaries = summaries(reader)?;
    let mut out = Vec::new();
    for (db, remote, s) in pairs(config, selected, &summaries) {
        let Some(max) = remote.max_age.or_else(|| backup_max(db)) else {
            continue;
        };
        out.extend(judge(db, remote, &s, max, now));
    }
    Ok(out)
}

/// The problem of one database and remote with max age `max`, if any.
fn judge(
    db: &Database,
    remote: &crate::config::Remote,
    s: &RemoteSummary,
    max: Duration,
    now: DateTime<Utc>,
) -> Option<(CheckCode, String)> {
    let head = |code: CheckCode| format!("{} remote {} {}:", code.word(), remote.name, db.name);
    let age = |t: DateTime<Utc>| (now - t).to_std().unwrap_or_default();
    let max_text = fmt_age(max);
    let why = s
        .last_error
        .as_deref()
        .map(|e| format!(": {}", crate::domain::truncate(e, 200)))
        .unwrap_or_default();
    if let Some(at) = s.last_stored.filter(|t| age(*t) > max) {
        Some((
            CheckCode::Critical,
            format!(
                "{} newest copy stored {} ago (max {max_text}){}",
                head(CheckCode::Critical),
                fmt_age(age(at)),
                if s.pending > 0 { why.as_str() } else { "" }
            ),
        ))
    } else if let Some(since) = s.oldest_pending.filter(|t| age(*t) > max) {
        Some((
            CheckCode::Critical,
            format!(
                "{} {} cop{} pending, the oldest for {} (max {max_text}){why}",
                head(CheckCode::Critical),
                s.pending,
                if s.pending == 1 { "y" } else { "ies" },
                fmt_age(age(since)),
            ),
        ))
    } else if s.last_stored.is_none() && s.pending == 0 {
        Some((
            CheckCode::Warning,
            format!(
                "{} no copy stored yet (max age {max_text})",
                head(CheckCode::Warning)
            ),
        ))
    } else {
        None
    }
}

/// One database and remote in `status --json`'s `offsite` array (README.md, "status
/// --json"), from the state DB alone. Ages are whole seconds at `generated_at`.
#[derive(Debug, Serialize)]
pub(super) struct OffsiteStatus {
    database: String,
    remote: String,
    /// The remote's URL (never holds a secret: user info is refused at load).
    url: String,
    /// Copies waiting to be stored there.
    pending: u64,
    /// Since when the oldest pending copy waits, and how long that is.
    oldest_pending: Option<DateTime<Utc>>,
    oldest_pending_age_s: Option<u64>,
    /// The error of the last failed attempt (null when nothing is pending or none failed).
    last_error: Option<String>,
    /// When a copy was last stored there.
    last_success: Option<DateTime<Utc>>,
    /// The newest copy stored there, by the time of its local backup.
    newest_copy: Option<NewestCopy>,
    /// Bytes stored there for the database, every copy counted.
    uploaded_bytes: u64,
    /// The max age `status --check` judges with (the remote's `max_age`, else the backup
    /// job's); null when there is none.
    max_age_s: Option<u64>,
    /// What `status --check` says about it (its lines), worst first; empty when fine.
    problems: Vec<Problem>,
}

#[derive(Debug, Serialize)]
struct NewestCopy {
    /// The local backup file it is a copy of.
    file: String,
    backup_time: DateTime<Utc>,
    age_s: u64,
    stored_at: DateTime<Utc>,
    size: u64,
}

#[derive(Debug, Serialize)]
struct Problem {
    /// "warning" or "critical".
    level: String,
    message: String,
}

/// `status --json`'s `offsite`: each database among `selected` and each of its remotes.
pub(super) fn json(
    config: &Config,
    reader: Option<&HistoryReader>,
    selected: Option<&HashSet<String>>,
    backup_max: impl Fn(&Database) -> Option<Duration>,
    now: DateTime<Utc>,
) -> rusqlite::Result<Vec<OffsiteStatus>> {
    let summaries = summaries(reader)?;
    let secs = |t: DateTime<Utc>| (now - t).to_std().unwrap_or_default().as_secs();
    let mut copies: Option<(String, Vec<crate::state::StoredCopy>)> = None;
    let mut out = Vec::new();
    for (db, remote, s) in pairs(config, selected, &summaries) {
        if copies.as_ref().is_none_or(|(d, _)| d != &db.name) {
            let stored = match reader {
                Some(r) => r.remote_copies(&db.name)?.0,
                None => Vec::new(),
            };
            copies = Some((db.name.clone(), stored));
        }
        let newest = copies
            .as_ref()
            .into_iter()
            .flat_map(|(_, c)| c.iter())
            .filter(|c| c.remote == remote.name)
            .max_by_key(|c| (c.backup_time, c.stored_at))
            .map(|c| NewestCopy {
                file: c.file.clone(),
                backup_time: c.backup_time,
                age_s: secs(c.backup_time),
                stored_at: c.stored_at,
                size: c.size,
            });
        let max = remote.max_age.or_else(|| backup_max(db));
        let problems = max
            .and_then(|m| judge(db, remote, &s, m, now))
            .map(|(code, message)| Problem {
                level: code.word().to_ascii_lowercase(),
                message,
            })
            .into_iter()
            .collect();
        out.push(OffsiteStatus {
            database: db.name.clone(),
            remote: remote.name.clone(),
            url: remote.url.clone(),
            pending: s.pending,
            oldest_pending: s.oldest_pending,
            oldest_pending_age_s: s.oldest_pending.map(secs),
            last_error: s.last_error.clone().filter(|_| s.pending > 0),
            last_success: s.last_stored,
            newest_copy: newest,
            uploaded_bytes: s.uploaded_bytes,
            max_age_s: max.map(|m| m.as_secs()),
            problems,
        });
    }
    Ok(out)
}

/// Plain `status`'s lines about off-site copies (none when no database has a remote), read
/// from `state` (a state DB that cannot be read is one line saying so).
pub(super) fn status_lines(
    config: &Config,
    state: Option<&State>,
    selected: Option<&HashSet<String>>,
    now: DateTime<Utc>,
) -> Vec<String> {
    let reader = match state
        .map(|s| HistoryReader::open(s.path(), true))
        .transpose()
    {
        Ok(r) => r,
        Err(e) => {
            return vec![format!(
                "off-site copies: cannot read the state database: {e}"
            )]
        }
    };
    let lines = lines(config, reader.as_ref(), selected, now).unwrap_or_else(|e| {
        vec![format!(
            "off-site copies: cannot read the state database: {e}"
        )]
    });
    if lines.is_empty() {
        return lines;
    }
    std::iter::once(String::new())
        .chain(std::iter::once("off-site copies:".to_string()))
        .chain(lines.into_iter().map(|l| format!("  {l}")))
        .collect()
}

/// One line per database and remote.
fn lines(
    config: &Config,
    reader: Option<&HistoryReader>,
    selected: Option<&HashSet<String>>,
    now: DateTime<Utc>,
) -> rusqlite::Result<Vec<String>> {
    let summaries = summaries(reader)?;
    let ago = |t: DateTime<Utc>| fmt_age((now - t).to_std().unwrap_or_default());
    Ok(pairs(config, selected, &summaries)
        .into_iter()
        .map(|(db, remote, s)| {
            let stored = s.last_stored.map_or("no copy stored yet".to_string(), |t| {
                format!("last copy stored {} ago", ago(t))
            });
            let pending = match s.oldest_pending {
                None => "nothing pending".to_string(),
                Some(since) => format!(
                    "{} pending (oldest {} ago){}",
                    s.pending,
                    ago(since),
                    s.last_error
                        .as_deref()
                        .map(|e| format!(": {}", crate::domain::truncate(e, 200)))
                        .unwrap_or_default()
                ),
            };
            format!("{} -> remote {}: {stored}, {pending}", db.name, remote.name)
        })
        .collect())
}
