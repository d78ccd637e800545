//! What plain `backups list` says of each local backup's off-site copies: stored or pending
//! on each remote of its database, read from the state DB (`remote_copies`,
//! `remote_pending`) without contacting any remote. `backups list --remote NAME` asks the
//! remote itself (`remote_list.rs`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{Config, Database};
use crate::state::{FileCopy, HistoryReader, OffsiteState};

/// One backup's copy on one remote (README.md, "backups list --json": `offsite`).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub(super) struct OffsiteJson {
    pub remote: String,
    /// stored | pending | unrecorded (no record in the state DB: made before the remote
    /// was configured, or stored by a version that did not record copies)
    pub state: &'static str,
    /// When it was stored, or since when it is pending.
    pub at: Option<DateTime<Utc>>,
    /// Failed attempts at a pending copy, and the last one's error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The state DB, read-only, if there is one.
pub(super) struct Offsite {
    reader: Option<HistoryReader>,
}

impl Offsite {
    pub(super) fn open(config: &Config) -> Offsite {
        let path = crate::state::db_path(&config.daemon.state_dir);
        let reader = path
            .is_file()
            .then(|| HistoryReader::open(&path, true))
            .and_then(|r| {
                r.map_err(|e| {
                    eprintln!(
                        "litekeeper: backups list: {}: cannot read the off-site copies: {e}",
                        path.display()
                    )
                })
                .ok()
            });
        Offsite { reader }
    }

    /// Per local file of `db`: its copy on each remote of `db`, in the configured order.
    /// Empty when `db` has no remote.
    pub(super) fn of(&self, db: &Database, files: &[String]) -> HashMap<String, Vec<OffsiteJson>> {
        let remotes = db
            .backup
            .as_ref()
            .map(|b| b.remotes.as_slice())
            .unwrap_or_default();
        if remotes.is_empty() {
            return HashMap::new();
        }
        let known: Vec<FileCopy> = self
            .reader
            .as_ref()
            .and_then(|r| r.offsite_files(&db.name).ok())
            .unwrap_or_default();
        files
            .iter()
            .map(|f| {
                let copies = remotes
                    .iter()
                    .map(|remote| {
                        let mine = |c: &&FileCopy| &c.file == f && &c.remote == remote;
                        // A stored copy wins over a pending record of the same file.
                        let found = known
                            .iter()
                            .filter(mine)
                            .find(|c| matches!(c.state, OffsiteState::Stored { .. }))
                            .or_else(|| known.iter().find(mine));
                        json(remote, found.map(|c| &c.state))
                    })
                    .collect();
                (f.clone(), copies)
            })
            .collect()
    }
}

impl Offsite {
    /// The local files of `db` its retention keeps for a remote (`offsite-pending`), as the
    /// next backup run would judge them at `now`.
    pub(super) fn held(
        &self,
        db: &Database,
        zone: &crate::schedule::Zone,
        now: DateTime<Utc>,
    ) -> Vec<String> {
        let (Some(reader), Some(backup)) = (&self.reader, &db.backup) else {
            return Vec::new();
        };
        if backup.remotes.is_empty() {
            return Vec::new();
        }
        let Ok((stored, pending)) = reader.remote_copies(&db.name) else {
            return Vec::new();
        };
        if pending.is_empty() {
            return Vec::new();
        }
        let Ok(manifest) = crate::archive::Manifest::load(&backup.dir) else {
            return Vec::new();
        };
        crate::jobs::backup::offsite_hold::held(db, &manifest, &stored, &pending, zone, now)
    }
}

fn json(remote: &str, state: Option<&OffsiteState>) -> OffsiteJson {
    let (state, at, attempts, error) = match state {
        Some(OffsiteState::Stored { at, .. }) => ("stored", Some(*at), None, None),
        Some(OffsiteState::Pending {
            since,
            attempts,
            last_error,
        }) => ("pending", Some(*since), Some(*attempts), last_error.clone()),
        None => ("unrecorded", None, None, None),
    };
    OffsiteJson {
        remote: remote.to_string(),
        state,
        at,
        attempts,
        error,
    }
}

/// "offsite: stored 2h 3m ago; r2: pending (3 failed attempts: remote \"r2\" …)".
pub(super) fn human(copies: &[OffsiteJson], age: impl Fn(DateTime<Utc>) -> String) -> String {
    copies
        .iter()
        .map(|c| match (c.state, c.at) {
            ("stored", Some(at)) => format!("{}: stored {} ago", c.remote, age(at)),
            ("pending", Some(at)) => {
                let tries = match (c.attempts.unwrap_or(0), &c.error) {
                    (0, _) => String::new(),
                    (n, Some(e)) => format!(", {n} failed attempt(s): {e}"),
                    (n, None) => format!(", {n} failed attempt(s)"),
                };
                format!("{}: pending since {} ago{tries}", c.remote, age(at))
            }
            _ => format!("{}: no record of a copy", c.remote),
        })
        .collect::<Vec<_>>()
        .join("; ")
}
