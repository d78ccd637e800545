//! After a backup's local commit: every new copy becomes pending on each of the database's
//! remotes (in the state DB), then every pending copy is uploaded, oldest first, through
//! `remote::push` (a full backup) or `remote::push_delta` (a point of an incremental chain,
//! after every earlier link of its chain that the remote lacks). A failure keeps the local backup, leaves the copy pending with its error
//! and fails the run with one line naming the remote and the cause; the next run, `backups
//! push` or the daemon's retry stores it. No connection or transaction is held here.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::archive::{Entry, Manifest};
use crate::chain::DeltaEntry;
use crate::config::{Config, Database, Remote};
use crate::domain::OffsiteFigures;
use crate::remote::{self, RemoteError, Store};
use crate::state::State;

/// What one push of pending copies did.
#[derive(Debug, Default)]
pub struct Pushed {
    /// Remotes that stored at least one copy, and their URLs.
    pub remotes: Vec<String>,
    pub urls: Vec<String>,
    pub copies: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Copies still pending after this push.
    pub pending: u64,
    /// One line per remote that failed.
    pub errors: Vec<RemoteError>,
    /// Copies remote retention deleted.
    pub deleted: Vec<String>,
}

impl Pushed {
    /// The run's figures of this push (journal fields and the JSON's `remote*` keys).
    pub fn figures(&self) -> OffsiteFigures {
        OffsiteFigures {
            remote: Some(self.remotes.join(",")),
            remote_url: Some(self.urls.join(" ")),
            remote_bytes: Some(self.bytes),
            remote_mb_per_sec: Some(self.mb_per_sec()),
            remote_pending: Some(self.pending),
        }
    }

    /// The tail of a run's summary line: what was stored off-site (empty when nothing was).
    pub fn summary(&self) -> String {
        if self.copies == 0 {
            return String::new();
        }
        format!(
            "; stored {} cop{} off-site on {} ({}, {} MB/s); remote retention deleted {}",
            self.copies,
            if self.copies == 1 { "y" } else { "ies" },
            self.remotes.join(", "),
            crate::domain::human_bytes(self.bytes),
            self.mb_per_sec(),
            self.deleted.len()
        )
    }

    /// The run's failure when a remote failed: every remote's line, the first one's exit code.
    pub fn failure(&self) -> Option<crate::jobs::JobError> {
        let first = self.errors.first()?;
        let lines: Vec<String> = self.errors.iter().map(|e| e.to_string()).collect();
        Some(crate::jobs::JobError::Remote(lines.join("; "), first.code))
    }

    pub fn mb_per_sec(&self) -> f64 {
        let mb = self.bytes as f64 / 1e6;
        (mb / self.elapsed.as_secs_f64().max(1e-6) * 100.0).round() / 100.0
    }
}

fn state(config: &Config) -> Result<State, String> {
    State::open(&config.daemon.state_dir, config.daemon.keep_history).map_err(|e| e.to_string())
}

/// The configured remotes of `db` (all, or the one named `only`).
pub fn remotes_of<'a>(
    config: &'a Config,
    db: &Database,
    only: Option<&str>,
) -> Vec<&'a Arc<Remote>> {
    let names = db
        .backup
        .as_ref()
        .map(|b| b.remotes.as_slice())
        .unwrap_or_default();
    config
        .remotes
        .iter()
        .filter(|r| names.contains(&r.name) && only.is_none_or(|o| o == r.name))
        .collect()
}

/// Mark the copies (full backups or deltas: file name and backup time) just written pending
/// on every remote of `db`, before local retention judges so `offsite_hold` sees them; again
/// is harmless.
pub fn mark_pending(
    config: &Config,
    db: &Database,
    files: &[(&str, DateTime<Utc>)],
) -> Result<(), String> {
    let remotes = remotes_of(config, db, None);
    if remotes.is_empty() {
        return Ok(());
    }
    let st = state(config)?;
    for r in &remotes {
        for (file, at) in files {
            st.add_pending(&db.name, &r.name, file, *at)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Mark the copies just written pending on every remote of `db`, then push.
pub fn after_backup(
    config: &Config,
    db: &Database,
    written: &[Entry],
) -> Result<Option<Pushed>, String> {
    let files: Vec<(&str, DateTime<Utc>)> = written
        .iter()
        .map(|e| (e.file.as_str(), e.created_at))
        .collect();
    after_commit(config, db, &files)
}

/// Mark the deltas an incremental run just wrote pending on every remote of `db`, then push.
pub fn after_incremental(
    config: &Config,
    db: &Database,
    written: &[DeltaEntry],
) -> Result<Option<Pushed>, String> {
    let files: Vec<(&str, DateTime<Utc>)> = written
        .iter()
        .map(|d| (d.file.as_str(), d.created_at))
        .collect();
    after_commit(config, db, &files)
}

fn after_commit(
    config: &Config,
    db: &Database,
    files: &[(&str, DateTime<Utc>)],
) -> Result<Option<Pushed>, String> {
    if remotes_of(config, db, None).is_empty() {
        return Ok(None);
    }
    mark_pending(config, db, files)?;
    push_pending(config, db, None).map(Some)
}

/// Upload every pending copy of `db` (on `only`, or on each of its remotes), oldest first.
/// A remote stops at its first failure; the others go on.
pub fn push_pending(config: &Config, db: &Database, only: Option<&str>) -> Result<Pushed, String> {
    let st = state(config)?;
    let Some(backup) = db.backup.as_ref() else {
        return Ok(Pushed::default());
    };
    let mut out = Pushed::default();
    let started = std::time::Instant::now();
    let local = Manifest::load(&backup.dir).map_err(|e| e.to_string())?;
    for r in remotes_of(config, db, only) {
        let pending = st
            .pending(&db.name, Some(&r.name))
            .map_err(|e| e.to_string())?;
        if pending.is_empty() {
            continue;
        }
        let store = match Store::open_for_upload(r.clone()) {
            Ok(s) => s,
            Err(e) => {
                for p in &pending {
                    let _ = st.pending_failed(p, &e.to_string());
                }
                out.errors.push(e);
                continue;
            }
        };
        let mut stored_now = Vec::new();
        let mut failed = false;
        for p in &pending {
            match push_one(&store, db, &backup.dir, &local, &p.file) {
                Ok(None) => {
                    tracing::warn!(
                        "remote {:?}: {} is no longer in {} (retention or a hand removed it); its copy is no longer pending",
                        r.name,
                        p.file,
                        backup.dir.display()
                    );
                    let _ = st.pending_done(p);
                }
                Ok(Some(stored)) => {
                    st.pending_done(p).map_err(|e| e.to_string())?;
                    for s in stored {
                        stored_now.push(remote::object_name(&s.file));
                        let _ = st.remote_stored(&db.name, &r.name, Utc::now(), s.size);
                        let _ = st.copy_stored(&crate::state::StoredCopy {
                            database: db.name.clone(),
                            remote: r.name.clone(),
                            file: s.file,
                            series: s.series,
                            backup_time: s.backup_time,
                            stored_at: Utc::now(),
                            size: s.size,
                        });
                        out.copies += 1;
                        out.bytes += s.size;
                    }
                    if !out.remotes.contains(&r.name) {
                        out.remotes.push(r.name.clone());
                        out.urls.push(r.url.clone());
                    }
                }
                Err(e) => {
                    let _ = st.pending_failed(p, &e.to_string());
                    out.errors.push(e);
                    failed = true;
                    break;
                }
            }
        }
        // Retention only when every pending copy of this remote is stored: never deletes
        // while the newest copy is missing.
        if !failed {
            match retain(config, db, &store, &stored_now) {
                Ok(mut d) => {
                    forget_deleted(&st, &db.name, &r.name, &d);
                    out.deleted.append(&mut d)
                }
                Err(e) => out.errors.push(e),
            }
        }
    }
    out.elapsed = started.elapsed();
    out.pending = st.pending(&db.name, only).map_err(|e| e.to_string())?.len() as u64;
    Ok(out)
}

/// One local file stored on a remote by a push.
struct Stored {
    file: String,
    series: String,
    backup_time: DateTime<Utc>,
    size: u64,
}

/// Upload the local `file` (a full backup or a delta of `dir`) to `store`; a delta after
/// every earlier link of its chain (its full backup, the deltas before it) that the remote
/// does not have yet, so the remote's chain is whole. The files stored and their sizes;
/// None when the file is no longer in the local manifest or directory.
fn push_one(
    store: &Store,
    db: &Database,
    dir: &std::path::Path,
    local: &Manifest,
    file: &str,
) -> Result<Option<Vec<Stored>>, RemoteError> {
    let path = dir.join(file);
    if !path.is_file() {
        return Ok(None);
    }
    let push_full = |e: &Entry| -> Result<Stored, RemoteError> {
        let path = dir.join(&e.file);
        let up = remote::push(
            store,
            &remote::Source {
                database: &db.name,
                dir,
                path: &path,
                file: &e.file,
                series: &e.series,
                sha256: &e.sha256,
                backup_time: e.created_at,
                verified: e.verified,
                recorded: Some(remote::Recorded::from(e)),
            },
        )?;
        Ok(Stored {
            file: e.file.clone(),
            series: e.series.clone(),
            backup_time: e.created_at,
            size: up.size,
        })
    };
    let push_delta = |d: &DeltaEntry| -> Result<Stored, RemoteError> {
        let path = dir.join(&d.file);
        let up = remote::push_delta(
            store,
            &remote::Source {
                database: &db.name,
                dir,
                path: &path,
                file: &d.file,
                series: &d.series,
                sha256: &d.sha256,
                backup_time: d.created_at,
                verified: crate::domain::Verified::None,
                recorded: None,
            },
            d,
        )?;
        Ok(Stored {
            file: d.file.clone(),
            series: d.series.clone(),
            backup_time: d.created_at,
            size: up.size,
        })
    };
    if let Some(entry) = local.get(file) {
        return push_full(entry).map(|s| Some(vec![s]));
    }
    let Some(delta) = local.deltas.iter().find(|d| d.file == file) else {
        return Ok(None);
    };
    let mut stored = Vec::new();
    if let Some(way) = crate::chain::way_to(dir, local, delta) {
        let there = remote::RemoteManifest::load(store, &db.name)?;
        if !there.has(&way.base.file) {
            stored.push(push_full(&way.base)?);
        }
        for d in way.deltas.iter().filter(|d| d.file != delta.file) {
            if !there.has(&d.file) {
                stored.push(push_delta(d)?);
            }
        }
    }
    stored.push(push_delta(delta)?);
    Ok(Some(stored))
}

/// Remote retention deleted `objects`: their local files are no longer stored there.
fn forget_deleted(st: &State, database: &str, remote: &str, objects: &[String]) {
    if objects.is_empty() {
        return;
    }
    let files: Vec<String> = st
        .stored_copies(database, remote)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| objects.contains(&remote::object_name(&c.file)))
        .map(|c| c.file)
        .collect();
    if let Err(e) = st.copies_deleted(database, remote, &files) {
        tracing::warn!("remote {remote:?}: could not record the copies retention deleted: {e}");
    }
}

/// Remote retention of `db` on `store` with the backup's `remote_keep` (and its chains').
fn retain(
    config: &Config,
    db: &Database,
    store: &Store,
    this_run: &[String],
) -> Result<Vec<String>, RemoteError> {
    let Some(backup) = db.backup.as_ref() else {
        return Ok(Vec::new());
    };
    remote::retain::apply(
        store,
        &db.name,
        &backup.dir,
        backup.remote_keep,
        backup.chain_keep(),
        &config.daemon.timezone,
        Utc::now(),
        this_run,
    )
}

/// What remote retention would delete now, per remote (a dry run's preview).
pub fn preview(config: &Config, db: &Database) -> String {
    let Some(backup) = db.backup.as_ref() else {
        return String::new();
    };
    let mut parts = Vec::new();
    for r in remotes_of(config, db, None) {
        let plan = Store::open(r.clone()).and_then(|s| {
            let m = remote::RemoteManifest::load(&s, &db.name)?;
            // Another host's copies are never this host's to delete: say so instead.
            m.check_owner(&s, &db.name)?;
            let now = Utc::now();
            let mut p =
                remote::retain::plan(&m, backup.remote_keep, &config.daemon.timezone, now, &[]);
            let deltas = remote::retain::chains(&m, &mut p, backup.chain_keep(), now);
            Ok((p, deltas))
        });
        parts.push(match plan {
            Err(e) => format!("remote {:?}: cannot plan retention: {}", r.name, e.cause),
            Ok((p, deltas)) => {
                let doomed: Vec<&str> = p
                    .iter()
                    .filter(|(_, d)| !d.keep())
                    .map(|(c, _)| c.object.as_str())
                    .chain(deltas.iter().map(String::as_str))
                    .collect();
                if doomed.is_empty() {
                    format!("remote {:?}: retention would delete nothing", r.name)
                } else {
                    format!(
                        "remote {:?}: retention would delete {}",
                        r.name,
                        doomed.join(", ")
                    )
                }
            }
        });
    }
    parts.join("; ")
}
