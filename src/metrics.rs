//! Prometheus metrics for node_exporter's textfile collector (text format 0.0.4), written to
//! `daemon.metrics_file` after every run. It runs no SQL: the history and the run totals come
//! from `state::HistoryReader`.
//!
//! The whole file is rendered from the state DB, never from the run that just ended alone, so
//! the daemon and a timer's `litekeeper run` finishing at the same time both leave a complete
//! file: each writer takes `lock_dir/metrics.prom.lock`, reads the state DB (which already
//! holds its own run) and replaces the file atomically (temporary file in the same directory,
//! fsync, rename, fsync of the directory). Whoever writes last has seen every recorded run.
//!
//! `litekeeper_runs_total` must never go down, but the run history is pruned after
//! `keep_history`, so each write first adds the runs not counted yet to the totals the state DB
//! keeps (`HistoryReader::tally`).
//!
//! The off-site families (per database and remote) are rendered by `remote.rs`.
//!
//! A write failure is logged as a warning and never fails the job. The daemon rewrites the
//! file from one background writer, at most once a second (see `MetricsWriter`).

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::config::{Config, Database};
use crate::db_files::{file_len, DbFiles};
use crate::domain::{Figures, JobKind, Outcome, RunState};
use crate::state::{History, HistoryReader, RunRecord, State};

mod remote;

/// Lock file in `lock_dir` serialising metrics writers ('.' cannot occur in a database name,
/// so it never collides with a database's lock).
const LOCK_FILE: &str = "metrics.prom.lock";

/// How long a writer waits for another one before giving up (a write takes milliseconds).
const LOCK_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub(crate) enum MetricsError {
    #[error("{}: cannot take the metrics lock: {source}", path.display())]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metrics: cannot read the state database {}: {source}", path.display())]
    State {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "{}: the metrics file's directory is a symlink; refusing to write through it (set metrics_file to a path in the real directory)",
        dir.display()
    )]
    Symlink { dir: PathBuf },
    #[error(
        "{}: cannot write the metrics file: {source} (its directory must exist and be writable by litekeeper; under systemd it must be in ReadWritePaths=)",
        path.display()
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Rewrites the metrics file after runs. One per process (`daemon` or `run`), built there
/// and handed to every run in `jobs::Env`; clones share it, and it outlives reloads.
///
/// Runs end in bursts in the daemon (a fleet's round is thousands of them, and one rewrite
/// reads the history of every database): a writer made with `background` hands the rewrite
/// to a single background task that rewrites at most once per `MIN_INTERVAL`, always from
/// the newest state, so the file lags the last run by at most about that long. Otherwise
/// each run rewrites it at once.
#[derive(Clone, Default)]
pub struct MetricsWriter {
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    background: bool,
    inbox: Mutex<Inbox>,
}

/// The background writer's inbox: the newest (config, state) to write from, if any.
#[derive(Default)]
struct Inbox {
    pending: Option<(Arc<Config>, State)>,
    active: bool,
}

const MIN_INTERVAL: Duration = Duration::from_secs(1);

impl MetricsWriter {
    pub fn new(background: bool) -> Self {
        MetricsWriter {
            inner: Arc::new(Shared {
                background,
                inbox: Mutex::default(),
            }),
        }
    }

    /// After a run: rewrite the metrics file if one is configured; a failure is only logged.
    pub async fn update(&self, config: &Arc<Config>, state: &State) {
        if config.daemon.metrics_file.is_none() {
            return;
        }
        if self.inner.background {
            let mut w = self.inner.inbox.lock().unwrap();
            w.pending = Some((config.clone(), state.clone()));
            if !w.active {
                w.active = true;
                tokio::spawn(self.clone().background_writer());
            }
            return;
        }
        write_logged(config.clone(), state.clone()).await;
    }

    /// Before the process exits: write what the background writer has not written yet.
    pub async fn flush(&self) {
        let pending = self.inner.inbox.lock().unwrap().pending.take();
        if let Some((config, state)) = pending {
            write_logged(config, state).await;
        }
    }

    async fn background_writer(self) {
        loop {
            let next = {
                let mut w = self.inner.inbox.lock().unwrap();
                let next = w.pending.take();
                w.active = next.is_some();
                next
            };
            let Some((config, state)) = next else { return };
            write_logged(config, state).await;
            tokio::time::sleep(MIN_INTERVAL).await;
        }
    }
}

async fn write_logged(config: Arc<Config>, state: State) {
    let path = config.daemon.metrics_file.clone().unwrap_or_default();
    match tokio::task::spawn_blocking(move || write(&config, &state)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("could not update the metrics: {e}"),
        Err(e) => tracing::warn!("could not update the metrics file {}: {e}", path.display()),
    }
}

/// Rewrite `daemon.metrics_file` (if set) from the state DB, under the metrics lock.
pub(crate) fn write(config: &Config, state: &State) -> Result<(), MetricsError> {
    let Some(target) = &config.daemon.metrics_file else {
        return Ok(());
    };
    let lock_path = config.daemon.lock_dir.join(LOCK_FILE);
    let _lock = lock(&config.daemon.lock_dir, &lock_path).map_err(|source| MetricsError::Lock {
        path: lock_path.clone(),
        source,
    })?;
    let db_err = |source| MetricsError::State {
        path: state.path().to_path_buf(),
        source,
    };
    let mut history = HistoryReader::open(state.path(), false).map_err(db_err)?;
    history.tally().map_err(db_err)?;
    let text = render(config, &history).map_err(db_err)?;
    drop(history);
    write_atomic(target, &text)
}

fn lock(dir: &Path, path: &Path) -> std::io::Result<File> {
    crate::lock::ensure_dir(dir)?;
    use crate::safe_fs::{not_regular, open_lock_file, LockFileError};
    let file = open_lock_file(path, 0o640).map_err(|e| match e {
        LockFileError::Special(t) => not_regular(path, t),
        LockFileError::Io(e) => e,
    })?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("held by another litekeeper process for {LOCK_WAIT:?}"),
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// Replace `target` with `text`: a temporary file beside it (hidden, not `*.prom`, so the
/// collector never reads it half-written), mode 0644 whatever the umask, fsync, rename, fsync
/// of the directory. The directory is opened once without following a symlink, and every
/// step happens inside that open directory (`openat`, `renameat`): a directory swapped for a
/// link, before or during the write, never sends the file elsewhere.
fn write_atomic(target: &Path, text: &str) -> Result<(), MetricsError> {
    use rustix::fs::{AtFlags, Mode, OFlags};
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let write_err = |source: std::io::Error| MetricsError::Write {
        path: target.to_path_buf(),
        source,
    };
    let name = target
        .file_name()
        .ok_or_else(|| write_err(std::io::ErrorKind::InvalidInput.into()))?;
    let dirfd = match rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(_) if dir.is_symlink() => {
            return Err(MetricsError::Symlink {
                dir: dir.to_path_buf(),
            });
        }
        Err(e) => return Err(write_err(e.into())),
    };
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    let tmp = PathBuf::from(tmp);
    let result = (|| -> std::io::Result<()> {
        let fd = rustix::fs::openat(
            &dirfd,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o644))?;
        let mut f = File::from(fd);
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        rustix::fs::renameat(&dirfd, &tmp, &dirfd, name)?;
        rustix::fs::fsync(&dirfd)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = rustix::fs::unlinkat(&dirfd, &tmp, AtFlags::empty());
    }
    result.map_err(write_err)
}

/// One metric family: HELP, TYPE and its samples, always written together.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, String)>,
}

impl Family {
    fn gauge(name: &'static str, help: &'static str) -> Self {
        Family {
            name,
            kind: "gauge",
            help,
            samples: Vec::new(),
        }
    }

    fn counter(name: &'static str, help: &'static str) -> Self {
        Family {
            kind: "counter",
            ..Family::gauge(name, help)
        }
    }

    fn push(&mut self, labels: &[(&'static str, &str)], value: String) {
        let labels = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
        self.samples.push((labels, value));
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in &self.samples {
            out.push_str(self.name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape(v));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {value}");
        }
    }
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Milliseconds as seconds with three decimals, exactly (no float rounding).
fn seconds(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

fn ts(t: DateTime<Utc>) -> String {
    seconds(t.timestamp_millis())
}

/// The samples taken from the figures of a job's last successful (`ok`) run: the one place
/// metric samples are derived from figures.
#[derive(Debug, Default)]
struct FigureSamples {
    prune_deleted_rows: Option<u64>,
    prune_deleted_files: Option<u64>,
    prune_freed_bytes: Option<u64>,
    backup_size_bytes: Option<u64>,
    incremental_pages_scanned: Option<u64>,
    incremental_pages_changed: Option<u64>,
    incremental_bytes: Option<u64>,
}

impl FigureSamples {
    fn of(figures: Option<&Figures>) -> Self {
        match figures {
            Some(Figures::Prune(p)) => FigureSamples {
                prune_deleted_rows: p.rows_deleted,
                prune_deleted_files: p.files_deleted,
                prune_freed_bytes: p.bytes_freed,
                ..FigureSamples::default()
            },
            Some(Figures::Backup(b)) => FigureSamples {
                backup_size_bytes: b.bytes_after,
                ..FigureSamples::default()
            },
            Some(Figures::Incremental(i)) => FigureSamples {
                incremental_pages_scanned: Some(i.pages_scanned),
                incremental_pages_changed: Some(i.pages_changed),
                incremental_bytes: Some(i.bytes),
                ..FigureSamples::default()
            },
            Some(Figures::Vacuum(_)) | Some(Figures::Drill(_)) | None => FigureSamples::default(),
        }
    }
}

/// The families of the metrics file, in the order they are written.
struct Families {
    last_run: Family,
    last_success: Family,
    last_duration: Family,
    last_outcome: Family,
    runs_total: Family,
    rows_deleted: Family,
    files_deleted: Family,
    bytes_freed: Family,
    backup_time: Family,
    backup_size: Family,
    incr_scanned: Family,
    incr_changed: Family,
    incr_bytes: Family,
    drill_success: Family,
    drill_restore: Family,
    db_size: Family,
    wal_size: Family,
}

impl Families {
    fn new() -> Families {
        Families {
            last_run: Family::gauge(
                "litekeeper_last_run_timestamp_seconds",
                "When the last finished run of the job ended (any outcome), Unix time.",
            ),
            last_success: Family::gauge(
                "litekeeper_last_success_timestamp_seconds",
                "When the last successful run of the job ended (ok, or skipped because there was nothing worth doing), Unix time.",
            ),
            last_duration: Family::gauge(
                "litekeeper_last_duration_seconds",
                "How long the last finished run of the job took.",
            ),
            last_outcome: Family::gauge(
                "litekeeper_last_outcome",
                "Outcome of the last finished run of the job: 1 for its outcome, 0 for the others.",
            ),
            runs_total: Family {
                name: "litekeeper_runs_total",
                kind: "counter",
                help: "Finished runs of the job by outcome.",
                samples: Vec::new(),
            },
            rows_deleted: Family::gauge(
                "litekeeper_last_prune_deleted_rows",
                "Rows the last successful prune deleted.",
            ),
            files_deleted: Family::gauge(
                "litekeeper_last_prune_deleted_files",
                "Files the last successful prune deleted or quarantined.",
            ),
            bytes_freed: Family::gauge(
                "litekeeper_last_prune_freed_bytes",
                "Bytes of files the last successful prune deleted or quarantined.",
            ),
            backup_time: Family::gauge(
                "litekeeper_last_backup_timestamp_seconds",
                "When the last successful backup ended, Unix time.",
            ),
            backup_size: Family::gauge(
                "litekeeper_last_backup_size_bytes",
                "Size on disk of the files the last successful backup wrote (compressed size, attached databases included).",
            ),
            incr_scanned: Family::gauge(
                "litekeeper_last_incremental_pages_scanned",
                "Pages the last successful incremental backup read from its snapshot (all source files).",
            ),
            incr_changed: Family::gauge(
                "litekeeper_last_incremental_pages_changed",
                "Pages the last successful incremental backup wrote: those that differed from the chain's previous point.",
            ),
            incr_bytes: Family::gauge(
                "litekeeper_last_incremental_size_bytes",
                "Size on disk of the delta files the last successful incremental backup wrote.",
            ),
            drill_success: Family::gauge(
                "litekeeper_drill_last_success_timestamp_seconds",
                "When the last successful restore drill of the database from the source ended, Unix time.",
            ),
            drill_restore: Family::gauge(
                "litekeeper_drill_restore_seconds",
                "Recovery time the last successful drill measured from the source: fetch, decrypt, decompress, restore and check of its newest copy.",
            ),
            db_size: Family::gauge(
                "litekeeper_database_size_bytes",
                "Size of the database file (schema main, or an attached database's alias) when the metrics were written.",
            ),
            wal_size: Family::gauge(
                "litekeeper_wal_size_bytes",
                "Size of the database's -wal file (0 when there is none) when the metrics were written.",
            ),
        }
    }

    /// Per source: the newest copy each source gave in a successful drill.
    fn drills(&mut self, name: &str, r: &RunRecord) {
        let drilled = r.figures.as_ref().and_then(|f| f.drill());
        let mut seen: Vec<&str> = Vec::new();
        for c in drilled.map(|d| d.copies.as_slice()).unwrap_or_default() {
            if seen.contains(&c.source.as_str()) {
                continue;
            }
            seen.push(&c.source);
            let labels = [("database", name), ("source", c.source.as_str())];
            self.drill_success.push(&labels, ts(r.ended()));
            self.drill_restore
                .push(&labels, seconds(c.phases.total_ms as i64));
        }
    }

    /// The samples of one job of database `name`: its last runs and its run totals.
    fn job(&mut self, name: &str, kind: JobKind, h: &History, counts: [i64; Outcome::ALL.len()]) {
        let job = kind.as_str();
        let labels = [("database", name), ("job", job)];
        if let Some(r) = &h.last_finished {
            self.last_run.push(&labels, ts(r.ended()));
            let ms = (r.ended() - r.started).num_milliseconds().max(0);
            self.last_duration.push(&labels, seconds(ms));
            for o in Outcome::ALL {
                let v = if r.outcome == RunState::Finished(o) {
                    "1"
                } else {
                    "0"
                };
                self.last_outcome.push(
                    &[("database", name), ("job", job), ("outcome", o.as_str())],
                    v.into(),
                );
            }
        }
        if let Some(r) = &h.last_success {
            self.last_success.push(&labels, ts(r.ended()));
            let db_label = [("database", name)];
            if r.outcome == RunState::Finished(Outcome::Ok) {
                if kind == JobKind::Backup {
                    self.backup_time.push(&db_label, ts(r.ended()));
                }
                self.drills(name, r);
                let f = FigureSamples::of(r.figures.as_ref());
                for (family, value) in [
                    (&mut self.rows_deleted, f.prune_deleted_rows),
                    (&mut self.files_deleted, f.prune_deleted_files),
                    (&mut self.bytes_freed, f.prune_freed_bytes),
                    (&mut self.backup_size, f.backup_size_bytes),
                    (&mut self.incr_scanned, f.incremental_pages_scanned),
                    (&mut self.incr_changed, f.incremental_pages_changed),
                    (&mut self.incr_bytes, f.incremental_bytes),
                ] {
                    if let Some(v) = value {
                        family.push(&db_label, v.to_string());
                    }
                }
            }
        }
        for (o, n) in Outcome::ALL.iter().zip(counts) {
            self.runs_total.push(
                &[("database", name), ("job", job), ("outcome", o.as_str())],
                n.to_string(),
            );
        }
    }

    /// The sizes of a database's files (main and attached) and of their WALs, now.
    fn files(&mut self, db: &Database) {
        let files = std::iter::once(("main", db.path.as_path())).chain(
            db.attach
                .iter()
                .map(|a| (a.alias.as_str(), a.path.as_path())),
        );
        for (schema, path) in files {
            if let Some(len) = file_len(path) {
                let labels = [("database", db.name.as_str()), ("schema", schema)];
                self.db_size.push(&labels, len.to_string());
                self.wal_size.push(
                    &labels,
                    file_len(&DbFiles::of(path).wal).unwrap_or(0).to_string(),
                );
            }
        }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for f in [
            &self.last_run,
            &self.last_success,
            &self.last_duration,
            &self.last_outcome,
            &self.runs_total,
            &self.rows_deleted,
            &self.files_deleted,
            &self.bytes_freed,
            &self.backup_time,
            &self.backup_size,
            &self.incr_scanned,
            &self.incr_changed,
            &self.incr_bytes,
            &self.drill_success,
            &self.drill_restore,
            &self.db_size,
            &self.wal_size,
        ] {
            f.render(&mut out);
        }
        out
    }
}

/// The whole metrics file for every configured job, from the state DB and the database files.
pub(crate) fn render(config: &Config, history: &HistoryReader) -> rusqlite::Result<String> {
    let mut families = Families::new();
    for db in &config.databases {
        for kind in JobKind::ALL {
            if db.timing(kind).is_some() {
                let h = history.history(&db.name, kind)?;
                let counts = history.run_totals(&db.name, kind)?;
                families.job(&db.name, kind, &h, counts);
            }
        }
        families.files(db);
    }
    Ok(families.render() + &remote::render(config, history)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn seconds_are_exact() {
        assert_eq!(seconds(1_767_225_600_123), "1767225600.123");
        assert_eq!(seconds(5), "0.005");
        assert_eq!(seconds(0), "0.000");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut f = Family::gauge("x", "help");
        f.push(&[("a", "q\"b\\c\nd")], "1".into());
        let mut out = String::new();
        f.render(&mut out);
        assert_eq!(
            out,
            "# HELP x help\n# TYPE x gauge\nx{a=\"q\\\"b\\\\c\\nd\"} 1\n"
        );
    }

    #[test]
    fn atomic_write_replaces_the_file_with_mode_0644() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("m.prom");
        std::fs::write(&target, "old").unwrap();
        write_atomic(&target, "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new\n");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
        assert!(write_atomic(&dir.path().join("missing/m.prom"), "x").is_err());
    }
}
