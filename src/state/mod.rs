//! Run history in a small SQLite database in `state_dir` (`state.db`): one row per job run,
//! inserted when it starts and completed when it ends, so `status` shows running and
//! interrupted runs too. Schema migrations use `PRAGMA user_version`; history older than
//! `keep_history` is deleted after every recorded run.
//!
//! `schema.rs`: the tables and their migrations; `history.rs`: recording runs and reading
//! them back (`RunRecord`, `History`, `HistoryReader`, the run totals); `queue.rs`: the runs
//! the daemon has queued; `remote.rs` and `copies.rs`: off-site copies pending and stored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OpenFlags};

use crate::db_files::DbFiles;

mod copies;
mod history;
mod queue;
mod remote;
mod schema;
#[cfg(test)]
mod tests;

pub use copies::{FileCopy, OffsiteState, RemoteSummary, StoredCopy};
pub use history::{History, HistoryReader, RunRecord};
pub use remote::{Pending, RemoteStored};
use schema::migrate;

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

/// Where the state DB of `state_dir` is.
pub fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join("state.db")
}

/// The state DB or one of its sidecars when it is not a regular file (a FIFO would block
/// SQLite's open forever; lstat only, nothing is opened).
fn special_file(path: &Path) -> Option<(PathBuf, &'static str)> {
    DbFiles::of(path)
        .all()
        .into_iter()
        .find_map(|p| match crate::safe_fs::special_file_at(p) {
            Ok(Some(kind)) => Some((p.to_path_buf(), kind)),
            _ => None,
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
        use std::os::unix::fs::OpenOptionsExt;
        let dir_err = |source| StateError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        crate::paths::ensure_state_dir(dir).map_err(dir_err)?;
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
        let moved = DbFiles::of(&aside);
        for ((_, side), (_, to)) in DbFiles::of(&self.path)
            .sidecars()
            .into_iter()
            .zip(moved.sidecars())
        {
            if side.exists() {
                std::fs::rename(side, to)?;
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
}

/// Whether an error means the file is no state database (garbage, or a damaged one), rather
/// than one we cannot open (permissions, a full disk, a lock).
pub(crate) fn is_damaged(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}
