//! Run history in a small SQLite database in `state_dir` (`state.db`): one row per job run,
//! inserted when it starts and completed when it ends, so `status` shows running and
//! interrupted runs too. Schema migrations use `PRAGMA user_version`; history older than
//! `keep_history` is deleted after every recorded run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

use crate::domain::{Figures, JobKind, Outcome, Report, RunState, Trigger};

const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE runs (
        id          TEXT PRIMARY KEY,
        database    TEXT NOT NULL,
        job         TEXT NOT NULL,
        trigger     TEXT NOT NULL,
        pid         INTEGER NOT NULL,
        started_at  INTEGER NOT NULL,  -- unix milliseconds
        finished_at INTEGER,           -- NULL while running (or if the process was killed)
        outcome     TEXT NOT NULL,     -- running | ok | failed | skipped | dry-run
        figures     TEXT NOT NULL DEFAULT '{}',
        summary     TEXT NOT NULL DEFAULT '',
        error       TEXT
    );
    CREATE INDEX runs_by_job ON runs (database, job, started_at);
    CREATE INDEX runs_by_time ON runs (started_at);",
    // v2: jobs the daemon has queued that wait for a free slot (max_concurrent_jobs) or for
    // their database's previous job; `status` shows them as queued since `since`.
    "CREATE TABLE queued (
        database TEXT NOT NULL,
        job      TEXT NOT NULL,
        since    INTEGER NOT NULL,  -- unix milliseconds: when the run was due
        pid      INTEGER NOT NULL,  -- the daemon; a row of a process that is gone is stale
        PRIMARY KEY (database, job)
    );",
    // v3: run totals for the metrics file, which must never go down although the history
    // is pruned: the counts, and the ids already counted (see `HistoryReader::tally`).
    // IF NOT EXISTS: before v3 the metrics writer created them itself.
    "CREATE TABLE IF NOT EXISTS metrics_runs_total (
        database TEXT NOT NULL,
        job      TEXT NOT NULL,
        outcome  TEXT NOT NULL,
        runs     INTEGER NOT NULL,
        PRIMARY KEY (database, job, outcome)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS metrics_counted (id TEXT PRIMARY KEY) WITHOUT ROWID;",
    // v4: off-site copies not yet stored (see `state_remote.rs`).
    "CREATE TABLE remote_pending (
        database   TEXT NOT NULL,
        remote     TEXT NOT NULL,
        file       TEXT NOT NULL,     -- the local backup file
        since      INTEGER NOT NULL,  -- unix milliseconds: when the copy became due
        attempts   INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        PRIMARY KEY (database, remote, file)
    ) WITHOUT ROWID;
    CREATE TABLE remote_stored (
        database   TEXT NOT NULL,
        remote     TEXT NOT NULL,
        at         INTEGER NOT NULL,  -- unix milliseconds of the last stored copy
        bytes      INTEGER NOT NULL,  -- its size
        total      INTEGER NOT NULL,  -- bytes stored since counting began
        PRIMARY KEY (database, remote)
    ) WITHOUT ROWID;",
];

#[path = "state_remote.rs"]
mod remote;
pub use remote::{Pending, RemoteStored};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: state database: {source} (check that state_dir exists and is writable)", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{}: not a regular file ({kind}); remove it: the state database and its -wal/-shm must be regular files", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{}: cannot create state directory: {source}", path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The state database; cheap to clone, opens a short-lived connection per operation.
#[derive(Debug, Clone)]
pub struct State {
    path: PathBuf,
    keep: Duration,
    /// Whether a damaged file is moved aside and recreated: only by the processes that record
    /// runs (`open`), never by a reader such as `status` (as root it would leave a root-owned
    /// state.db the service cannot write).
    recover: bool,
}

/// The last recorded run of one job, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: String,
    pub trigger: Trigger,
    pub started: DateTime<Utc>,
    pub finished: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub outcome: RunState,
    pub summary: String,
    pub error: Option<String>,
    #[serde(serialize_with = "crate::domain::figures_json")]
    pub figures: Option<Figures>,
}

/// Where the state DB of `state_dir` is.
pub fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join("state.db")
}

/// The state DB or one of its sidecars when it is not a regular file (a FIFO would block
/// SQLite's open forever; lstat only, nothing is opened).
fn special_file(path: &Path) -> Option<(PathBuf, &'static str)> {
    std::iter::once(path.to_path_buf())
        .chain(["-wal", "-shm", "-journal"].map(|s| crate::sqlite::sidecar(path, s)))
        .find_map(|p| match crate::safe_fs::special_file_at(&p) {
            Ok(Some(kind)) => Some((p, kind)),
            _ => None,
        })
}

impl RunRecord {
    /// When it ended (finished), else when it started.
    pub fn ended(&self) -> DateTime<Utc> {
        self.finished.unwrap_or(self.started)
    }
}

/// The columns [`record_row`] reads, in its order.
const RECORD_COLUMNS: &str =
    "id, trigger, started_at, finished_at, outcome, summary, error, figures, pid";

/// A `runs` row of a `job` run as a [`RunRecord`] (a `running` row whose process is gone
/// reads as `interrupted`).
fn record_row(job: JobKind, row: &rusqlite::Row) -> rusqlite::Result<RunRecord> {
    let started: i64 = row.get(2)?;
    let finished: Option<i64> = row.get(3)?;
    let outcome = match row.get_ref(4)?.as_str()? {
        "running" if pid_alive(row.get(8)?) => RunState::Running,
        "running" => RunState::Interrupted,
        word => RunState::Finished(parse(4, word)?),
    };
    let figures: String = row.get(7)?;
    Ok(RunRecord {
        id: row.get(0)?,
        trigger: parse(1, row.get_ref(1)?.as_str()?)?,
        started: from_ms(started),
        finished: finished.map(from_ms),
        duration_ms: finished.map(|f| f - started),
        outcome,
        summary: row.get(5)?,
        error: row.get(6)?,
        figures: Figures::from_json(job, &figures),
    })
}

/// A word of a `runs` column (trigger, outcome) as its type.
fn parse<T: std::str::FromStr<Err = String>>(column: usize, word: &str) -> rusqlite::Result<T> {
    word.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, e.into())
    })
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

fn pid_alive(pid: i64) -> bool {
    use rustix::process::{test_kill_process, Pid};
    // Signal 0 only checks for existence; EPERM: alive, but another user's.
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .is_some_and(|p| matches!(test_kill_process(p), Ok(()) | Err(rustix::io::Errno::PERM)))
}

impl State {
    /// Open (creating directory, file and schema as needed) the state DB in `dir`.
    /// A new directory is made 0700 and a new state.db 0600 (SQLite gives its -wal and -shm
    /// the same mode): run history names databases and paths.
    pub fn open(dir: &Path, keep: Duration) -> Result<State, StateError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir_err = |source| StateError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(dir_err)?;
        }
        let path = db_path(dir);
        if !path.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(dir_err)?;
        }
        let state = State {
            path,
            keep,
            recover: true,
        };
        state.with(migrate)?;
        Ok(state)
    }

    /// Open an existing state DB read-only; None when there is none yet.
    pub fn open_existing(dir: &Path, keep: Duration) -> Option<State> {
        let path = db_path(dir);
        // Something that is not a regular file is kept, so the first query says what it is.
        std::fs::symlink_metadata(&path).is_ok().then_some(State {
            path,
            keep,
            recover: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` on a fresh connection. A state DB that is not an SQLite database or is
    /// corrupt is moved aside (see [`State::set_aside`]) and `f` runs again on a new one: run
    /// history is worth less than the job that wants to record its run.
    fn with<T>(
        &self,
        mut f: impl FnMut(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StateError> {
        if let Some((path, kind)) = special_file(&self.path) {
            return Err(StateError::NotRegular { path, kind });
        }
        // `fresh`: the file was just recreated, and needs its schema first.
        let mut run = |fresh: bool| {
            let mut c = Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_CREATE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            c.busy_timeout(Duration::from_secs(10))?;
            c.pragma_update(None, "journal_mode", "WAL")?;
            c.pragma_update(None, "synchronous", "NORMAL")?;
            if fresh {
                migrate(&mut c)?;
            }
            f(&mut c)
        };
        let err = |source| StateError::Sqlite {
            path: self.path.clone(),
            source,
        };
        match run(false) {
            Err(e) if self.recover && is_damaged(&e) => {
                self.set_aside(&e).map_err(|source| StateError::Dir {
                    path: self.path.clone(),
                    source,
                })?;
                run(true).map_err(err)
            }
            r => r.map_err(err),
        }
    }

    /// Move a damaged state DB (and its -wal, -shm, -journal) to `state.db.corrupt-<stamp>`
    /// and create an empty one, saying so in one warning line. Under an exclusive `flock` on
    /// the state directory, and only if the file is still damaged then: a timer's `run` and
    /// the daemon finding it at once move it once, and never the new one.
    fn set_aside(&self, cause: &rusqlite::Error) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let lock = std::fs::File::open(dir)?;
        // flock, released when `lock` is closed.
        lock.lock()?;
        let still_damaged = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|c| c.query_row("PRAGMA quick_check(1)", [], |r| r.get::<_, String>(0)))
        .map_or_else(|e| is_damaged(&e), |ok| ok != "ok");
        if !still_damaged {
            return Ok(());
        }
        let stamp = Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        let aside = dir.join(format!("state.db.corrupt-{stamp}"));
        std::fs::rename(&self.path, &aside)?;
        for sfx in ["-wal", "-shm", "-journal"] {
            let side = PathBuf::from(format!("{}{sfx}", self.path.display()));
            if side.exists() {
                std::fs::rename(&side, format!("{}{sfx}", aside.display()))?;
            }
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)?;
        tracing::warn!(
            "{}: the state database is damaged ({cause}); moved it to {} and started a new \
             one (the run history before now is in that file)",
            self.path.display(),
            aside.display()
        );
        Ok(())
    }

    /// Record that a run started (outcome `running`).
    pub fn start(
        &self,
        id: &str,
        db: &str,
        job: JobKind,
        trigger: Trigger,
        started: DateTime<Utc>,
    ) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO runs (id, database, job, trigger, pid, started_at, outcome) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running')",
                params![id, db, job.as_str(), trigger.as_str(), std::process::id(), ms(started)],
            )
            .map(|_| ())
        })
    }

    /// Complete a run with its report, then drop this job's history older than `db_keep` (the
    /// database's `keep_history`) and anybody's older than `keep` (the longest of them all).
    pub fn finish(&self, r: &Report, db_keep: Duration) -> Result<(), StateError> {
        let cutoff = ms(r.finished) - self.keep.as_millis() as i64;
        let db_cutoff = ms(r.finished) - db_keep.as_millis() as i64;
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO runs (id, database, job, trigger, pid, started_at, finished_at, outcome, figures, summary, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (id) DO UPDATE SET finished_at = excluded.finished_at, outcome = excluded.outcome,
                   figures = excluded.figures, summary = excluded.summary, error = excluded.error",
                params![
                    r.run_id,
                    r.database,
                    r.job.as_str(),
                    r.trigger.as_str(),
                    std::process::id(),
                    ms(r.started),
                    ms(r.finished),
                    r.outcome.as_str(),
                    Figures::to_json(r.figures.as_ref()).to_string(),
                    r.summary,
                    r.error,
                ],
            )?;
            // Never the run just recorded, however short the history is.
            tx.execute(
                "DELETE FROM runs WHERE database = ?1 AND job = ?2 AND started_at < ?3 AND id <> ?4",
                params![r.database, r.job.as_str(), db_cutoff, r.run_id],
            )?;
            tx.execute(
                "DELETE FROM runs WHERE started_at < ?1 AND id <> ?2",
                params![cutoff, r.run_id],
            )?;
            tx.commit()
        })
    }

    /// The newest run of one job, if any.
    pub fn last_run(&self, db: &str, job: JobKind) -> Result<Option<RunRecord>, StateError> {
        Ok(self.last_runs(&[(db.to_string(), job)])?.pop().flatten())
    }

    /// The last run of each (database, job), on one connection: `status` of a fleet of
    /// thousands asks for all of them at once.
    pub fn last_runs(
        &self,
        keys: &[(String, JobKind)],
    ) -> Result<Vec<Option<RunRecord>>, StateError> {
        self.with(|c| {
            let mut st = c.prepare(
                &format!("SELECT {RECORD_COLUMNS} FROM runs WHERE database = ?1 AND job = ?2 ORDER BY started_at DESC LIMIT 1"),
            )?;
            let mut out = Vec::with_capacity(keys.len());
            for (db, job) in keys {
                out.push(
                    st.query_row(params![db, job.as_str()], |row| record_row(*job, row))
                    .optional()?,
                );
            }
            Ok(out)
        })
    }

    /// When each database's runs of `job` last started, by any trigger (catch-up skips a job
    /// run since; one query for all databases, a fleet has thousands).
    pub fn last_starts(
        &self,
        job: JobKind,
    ) -> Result<std::collections::HashMap<String, DateTime<Utc>>, StateError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT database, max(started_at) FROM runs WHERE job = ?1 GROUP BY database",
            )?;
            let rows = st.query_map([job.as_str()], |r| {
                Ok((r.get::<_, String>(0)?, from_ms(r.get(1)?)))
            })?;
            rows.collect()
        })
    }

    /// Number of recorded runs (for tests and `status`).
    pub fn count(&self) -> Result<i64, StateError> {
        self.with(|c| c.query_row("SELECT count(*) FROM runs", [], |r| r.get(0)))
    }
}

/// Runs the daemon has queued (waiting for a slot or for their database), kept in the state
/// DB so `status` can show them: written when a run has to wait, cleared when it starts.
impl State {
    /// Record runs as queued, each due since its time.
    pub fn set_queued(&self, rows: &[(String, JobKind, DateTime<Utc>)]) -> Result<(), StateError> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare(
                    "INSERT OR REPLACE INTO queued (database, job, since, pid) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (db, job, since) in rows {
                    st.execute(params![db, job.as_str(), ms(*since), std::process::id()])?;
                }
            }
            tx.commit()
        })
    }

    /// The runs of `keys` are no longer queued (they started, or will not run).
    pub fn clear_queued(&self, keys: &[(String, JobKind)]) -> Result<(), StateError> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare("DELETE FROM queued WHERE database = ?1 AND job = ?2")?;
                for (db, job) in keys {
                    st.execute(params![db, job.as_str()])?;
                }
            }
            tx.commit()
        })
    }

    /// Forget every queued run (a daemon starting: nothing of a previous one is queued).
    pub fn clear_all_queued(&self) -> Result<(), StateError> {
        self.with(|c| c.execute("DELETE FROM queued", []).map(|_| ()))
    }

    /// Since when each of `keys` is queued (None: not queued, or queued by a process that is
    /// gone). A state DB from before the table existed has nothing queued.
    pub fn queued_since(
        &self,
        keys: &[(String, JobKind)],
    ) -> Result<Vec<Option<DateTime<Utc>>>, StateError> {
        self.with(|c| {
            let mut st =
                match c.prepare("SELECT since, pid FROM queued WHERE database = ?1 AND job = ?2") {
                    Ok(st) => st,
                    Err(e) if e.to_string().contains("no such table") => {
                        return Ok(vec![None; keys.len()])
                    }
                    Err(e) => return Err(e),
                };
            let mut out = Vec::with_capacity(keys.len());
            for (db, job) in keys {
                let row = st
                    .query_row(params![db, job.as_str()], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                    })
                    .optional()?;
                out.push(
                    row.filter(|(_, pid)| pid_alive(*pid))
                        .map(|(t, _)| from_ms(t)),
                );
            }
            Ok(out)
        })
    }
}

/// SQL condition on a `runs` row: the run succeeded. `ok`, or `skipped` with figures: a vacuum
/// that found too little free space to be worth it did its job, while a run skipped because
/// another job held the database has no figures and did nothing.
const SUCCESS: &str =
    "finished_at IS NOT NULL AND (outcome = 'ok' OR (outcome = 'skipped' AND figures <> '{}'))";

/// What the history says about one job of one database.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// The newest run, finished or not.
    pub latest: Option<RunRecord>,
    /// The newest run with a final outcome.
    pub last_finished: Option<RunRecord>,
    /// The newest successful run (`ok`, or `skipped` with figures: nothing worth doing).
    pub last_success: Option<RunRecord>,
    /// Finished runs that failed since the last finished run that did not.
    pub failed_in_a_row: u32,
    /// When the oldest run still in the history started.
    pub first_started: Option<DateTime<Utc>>,
}

/// One connection to the state DB for reading the history of many jobs: `status --check`
/// (read-only: it must not need write access) and the metrics file (which also keeps the
/// run totals, see [`HistoryReader::tally`]). Errors are SQLite's own, so a caller can tell
/// a damaged file ([`is_damaged`]) from one it may not read.
pub struct HistoryReader {
    conn: Connection,
    /// Whether the run totals table exists (a state DB only ever opened read-only before v3
    /// may lack it).
    has_totals: bool,
}

impl HistoryReader {
    /// Open the state DB at `path`; fails at once on a file that is not a state database.
    /// Opened for writing, it also brings the schema up to date.
    pub fn open(path: &Path, read_only: bool) -> rusqlite::Result<HistoryReader> {
        let flags = if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if let Some((p, kind)) = special_file(path) {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(format!(
                    "{}: not a regular file ({kind}); remove it",
                    p.display()
                )),
            ));
        }
        let mut conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // Fails here, not later, on a file that is not a state database.
        conn.query_row(
            "SELECT count(*) FROM (SELECT 1 FROM runs LIMIT 1)",
            [],
            |_| Ok(()),
        )?;
        if !read_only {
            migrate(&mut conn)?;
        }
        let has_totals = conn.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'metrics_runs_total'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        Ok(HistoryReader { conn, has_totals })
    }

    /// Read the history of one job.
    pub fn history(&self, db: &str, job: JobKind) -> rusqlite::Result<History> {
        let c = &self.conn;
        let one = |cond: &str| -> rusqlite::Result<Option<RunRecord>> {
            c.prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM runs
                 WHERE database = ?1 AND job = ?2 AND ({cond}) ORDER BY started_at DESC LIMIT 1"
            ))?
            .query_row(params![db, job.as_str()], |row| record_row(job, row))
            .optional()
        };
        let latest = one("1")?;
        if latest.is_none() {
            return Ok(History::default());
        }
        Ok(History {
            latest,
            last_finished: one("finished_at IS NOT NULL")?,
            last_success: one(SUCCESS)?,
            failed_in_a_row: c.query_row(
                "SELECT count(*) FROM runs WHERE database = ?1 AND job = ?2 AND outcome = 'failed'
                   AND started_at > coalesce((SELECT max(started_at) FROM runs WHERE database = ?1
                     AND job = ?2 AND finished_at IS NOT NULL AND outcome <> 'failed'), -1)",
                params![db, job.as_str()],
                |r| r.get(0),
            )?,
            first_started: c
                .query_row(
                    "SELECT min(started_at) FROM runs WHERE database = ?1 AND job = ?2",
                    params![db, job.as_str()],
                    |r| r.get::<_, Option<i64>>(0),
                )?
                .map(from_ms),
        })
    }

    /// Add every finished run not counted yet to the run totals, in one transaction. The
    /// totals never go down, though the history they count is pruned.
    pub fn tally(&mut self) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "INSERT INTO metrics_runs_total (database, job, outcome, runs)
                SELECT database, job, outcome, count(*) FROM runs r
                WHERE finished_at IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM metrics_counted m WHERE m.id = r.id)
                GROUP BY database, job, outcome
                ON CONFLICT (database, job, outcome) DO UPDATE SET runs = runs + excluded.runs;
            INSERT INTO metrics_counted (id)
                SELECT id FROM runs r
                WHERE finished_at IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM metrics_counted m WHERE m.id = r.id);
            DELETE FROM metrics_counted WHERE id NOT IN (SELECT id FROM runs);",
        )?;
        tx.commit()
    }

    /// Finished runs of one job by outcome, in the order of [`Outcome::ALL`] (all 0 in a
    /// state DB whose totals were never kept).
    pub fn run_totals(
        &self,
        db: &str,
        job: JobKind,
    ) -> rusqlite::Result<[i64; Outcome::ALL.len()]> {
        let mut counts = [0; Outcome::ALL.len()];
        if !self.has_totals {
            return Ok(counts);
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT outcome, runs FROM metrics_runs_total WHERE database = ?1 AND job = ?2",
        )?;
        let rows = stmt.query_map(params![db, job.as_str()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (outcome, n) = row?;
            if let Some(i) = Outcome::ALL.iter().position(|o| o.as_str() == outcome) {
                counts[i] = n;
            }
        }
        Ok(counts)
    }
}

/// Whether an error means the file is no state database (garbage, or a damaged one), rather
/// than one we cannot open (permissions, a full disk, a lock).
pub(crate) fn is_damaged(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

/// Bring the schema to the newest version. The version is read inside a write transaction,
/// so two processes creating the state DB at once (daemon and a timer's run) do not both
/// apply the same migration.
fn migrate(c: &mut Connection) -> rusqlite::Result<()> {
    loop {
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version = tx.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
        let Some(sql) = MIGRATIONS.get(version) else {
            return Ok(());
        };
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (version + 1) as i64)?;
        tx.commit()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ExitCode;

    fn report(id: &str, started: DateTime<Utc>) -> Report {
        Report {
            run_id: id.into(),
            database: "chat".into(),
            job: JobKind::Backup,
            trigger: Trigger::Cli,
            started,
            finished: started + chrono::Duration::seconds(1),
            duration_ms: 1000,
            outcome: Outcome::Ok,
            summary: "done".into(),
            figures: Default::default(),
            error: None,
            exit: ExitCode::Ok,
        }
    }

    #[test]
    fn history_prunes_itself_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path(), Duration::from_secs(90 * 86400)).unwrap();
        let now = Utc::now();
        state
            .finish(
                &report("old", now - chrono::Duration::days(100)),
                NINETY_DAYS,
            )
            .unwrap();
        assert_eq!(state.count().unwrap(), 1);
        state
            .finish(
                &report("recent", now - chrono::Duration::days(10)),
                NINETY_DAYS,
            )
            .unwrap();
        assert_eq!(
            state.count().unwrap(),
            1,
            "a run 100 days old goes once a newer run is recorded"
        );
        state.finish(&report("new", now), NINETY_DAYS).unwrap();
        assert_eq!(state.count().unwrap(), 2);
        let last = state.last_run("chat", JobKind::Backup).unwrap().unwrap();
        assert_eq!(last.id, "new");
        assert_eq!(last.outcome, RunState::Finished(Outcome::Ok));
        assert_eq!(last.duration_ms, Some(1000));
    }

    const NINETY_DAYS: Duration = Duration::from_secs(90 * 86400);

    #[test]
    fn a_database_keeps_its_own_history_length() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path(), NINETY_DAYS).unwrap();
        let now = Utc::now();
        let week = Duration::from_secs(7 * 86400);
        let mut other = report("other-old", now - chrono::Duration::days(20));
        other.database = "blobs".into();
        state.finish(&other, NINETY_DAYS).unwrap();
        state
            .finish(&report("old", now - chrono::Duration::days(20)), week)
            .unwrap();
        state.finish(&report("new", now), week).unwrap();
        let c = Connection::open(state.path()).unwrap();
        let ids: Vec<String> = c
            .prepare("SELECT id FROM runs ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            ids,
            ["new", "other-old"],
            "chat's 20-day-old run goes (it keeps 7 days), blobs' stays (90 days)"
        );
    }

    #[test]
    fn the_run_just_recorded_stays_however_short_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path(), Duration::ZERO).unwrap();
        state
            .finish(&report("long", Utc::now()), Duration::ZERO)
            .unwrap();
        assert_eq!(state.count().unwrap(), 1);
        assert_eq!(
            state.last_run("chat", JobKind::Backup).unwrap().unwrap().id,
            "long"
        );
    }

    #[test]
    fn queued_runs_are_recorded_cleared_and_stale_when_their_daemon_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path(), Duration::from_secs(86400)).unwrap();
        let since = from_ms(ms(Utc::now()));
        let keys = [
            ("chat".to_string(), JobKind::Backup),
            ("logs".to_string(), JobKind::Backup),
        ];
        state
            .set_queued(&[("chat".into(), JobKind::Backup, since)])
            .unwrap();
        assert_eq!(state.queued_since(&keys).unwrap(), [Some(since), None]);
        state.clear_queued(&keys[..1]).unwrap();
        assert_eq!(state.queued_since(&keys).unwrap(), [None, None]);
        state
            .set_queued(&[("logs".into(), JobKind::Backup, since)])
            .unwrap();
        let c = Connection::open(state.path()).unwrap();
        c.execute("UPDATE queued SET pid = 2147483000", []).unwrap();
        assert_eq!(state.queued_since(&keys).unwrap(), [None, None]);
    }

    #[test]
    fn run_totals_count_each_finished_run_once_and_survive_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path(), NINETY_DAYS).unwrap();
        let now = Utc::now();
        state.finish(&report("a", now), NINETY_DAYS).unwrap();
        let mut failed = report("b", now);
        failed.outcome = Outcome::Failed;
        state.finish(&failed, NINETY_DAYS).unwrap();
        let mut reader = HistoryReader::open(state.path(), false).unwrap();
        reader.tally().unwrap();
        reader.tally().unwrap();
        assert_eq!(
            reader.run_totals("chat", JobKind::Backup).unwrap(),
            [1, 1, 0, 0]
        );
        // A short history keeps only the newest run; the totals keep counting.
        state.finish(&report("c", now), Duration::ZERO).unwrap();
        reader.tally().unwrap();
        assert_eq!(
            reader.run_totals("chat", JobKind::Backup).unwrap(),
            [2, 1, 0, 0]
        );
        let h = reader.history("chat", JobKind::Backup).unwrap();
        assert_eq!(h.latest.unwrap().id, "c");
        assert_eq!(h.failed_in_a_row, 0);
    }

    #[test]
    fn a_run_whose_process_died_reads_as_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path(), Duration::from_secs(86400)).unwrap();
        state
            .start("r1", "chat", JobKind::Prune, Trigger::Schedule, Utc::now())
            .unwrap();
        assert_eq!(
            state
                .last_run("chat", JobKind::Prune)
                .unwrap()
                .unwrap()
                .outcome,
            RunState::Running
        );
        let c = Connection::open(state.path()).unwrap();
        c.execute("UPDATE runs SET pid = 2147483000", []).unwrap();
        assert_eq!(
            state
                .last_run("chat", JobKind::Prune)
                .unwrap()
                .unwrap()
                .outcome,
            RunState::Interrupted
        );
    }
}
