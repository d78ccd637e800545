//! Off-site copies in `status` and `status --check`: per database and remote, the last
//! stored copy and the pending ones, from the state DB (the remote is never contacted).
//!
//! The rule of `status --check` (README.md, "status --check"): CRITICAL when the last copy
//! stored on a remote is older than its `max_age`, or a copy has been pending longer than
//! that (with the last attempt's error); WARNING when a remote with a max age never stored
//! a copy and nothing is pending for longer. `max_age` defaults to the backup job's max
//! age (its `--max-age backup=…`, else twice its schedule's gap).

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};

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
        let head = |code: CheckCode| format!("{} remote {} {}:", code.word(), remote.name, db.name);
        let age = |t: DateTime<Utc>| (now - t).to_std().unwrap_or_default();
        let max_text = fmt_age(max);
        let why = s
            .last_error
            .as_deref()
            .map(|e| format!(": {}", crate::domain::truncate(e, 200)))
            .unwrap_or_default();
        if let Some(at) = s.last_stored.filter(|t| age(*t) > max) {
            out.push((
                CheckCode::Critical,
                format!(
                    "{} newest copy stored {} ago (max {max_text}){}",
                    head(CheckCode::Critical),
                    fmt_age(age(at)),
                    if s.pending > 0 { why.as_str() } else { "" }
                ),
            ));
        } else if let Some(since) = s.oldest_pending.filter(|t| age(*t) > max) {
            out.push((
                CheckCode::Critical,
                format!(
                    "{} {} cop{} pending, the oldest for {} (max {max_text}){why}",
                    head(CheckCode::Critical),
                    s.pending,
                    if s.pending == 1 { "y" } else { "ies" },
                    fmt_age(age(since)),
                ),
            ));
        } else if s.last_stored.is_none() && s.pending == 0 {
            out.push((
                CheckCode::Warning,
                format!(
                    "{} no copy stored yet (max age {max_text})",
                    head(CheckCode::Warning)
                ),
            ));
        }
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
