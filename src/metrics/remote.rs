//! The off-site families of the metrics file, per database and remote it copies to:
//! `litekeeper_remote_pending_copies` (0 when none) and
//! `litekeeper_remote_last_success_timestamp_seconds` (only once a copy was stored),
//! `litekeeper_remote_uploaded_bytes_total` (bytes stored there, every copy counted), from
//! the state DB's pending and stored copies (`HistoryReader::remote_summaries`), and
//! `litekeeper_remote_max_age_seconds` (the remote's `max_age`, when set), which the shipped
//! alert compares the age of the last copy with.

use super::{ts, Family};
use crate::config::Config;
use crate::state::HistoryReader;

/// The four families for every (database, configured remote) of `config` (their HELP and
/// TYPE lines even when no database has a remote, like every family of the file).
pub(super) fn render(config: &Config, history: &HistoryReader) -> rusqlite::Result<String> {
    let summaries = history.remote_summaries()?;
    let mut pending = Family::gauge(
        "litekeeper_remote_pending_copies",
        "Backups of the database whose copy to the remote is not stored yet (failed or not yet tried).",
    );
    let mut last = Family::gauge(
        "litekeeper_remote_last_success_timestamp_seconds",
        "When the last copy of the database was stored on the remote, Unix time.",
    );
    let mut uploaded = Family::counter(
        "litekeeper_remote_uploaded_bytes_total",
        "Bytes stored on the remote for the database (compressed and encrypted), every copy counted.",
    );
    let mut max_age = Family::gauge(
        "litekeeper_remote_max_age_seconds",
        "The remote's max_age: the newest copy should never be older (written when max_age is set).",
    );
    for db in &config.databases {
        let Some(backup) = &db.backup else { continue };
        for remote in &backup.remotes {
            let s = summaries
                .iter()
                .find(|s| s.database == db.name && &s.remote == remote)
                .cloned()
                .unwrap_or_default();
            let labels = [("database", db.name.as_str()), ("remote", remote.as_str())];
            pending.push(&labels, s.pending.to_string());
            uploaded.push(&labels, s.uploaded_bytes.to_string());
            if let Some(at) = s.last_stored {
                last.push(&labels, ts(at));
            }
            let max = config
                .remotes
                .iter()
                .find(|r| &r.name == remote)
                .and_then(|r| r.max_age);
            if let Some(max) = max {
                max_age.push(&labels, max.as_secs().to_string());
            }
        }
    }
    let mut out = String::new();
    pending.render(&mut out);
    last.render(&mut out);
    uploaded.render(&mut out);
    max_age.render(&mut out);
    Ok(out)
}
