//! The daemon's own lock: an exclusive `flock` on `state_dir/daemon.pid`, held for the
//! daemon's whole life, the file naming its pid. A second daemon on the same state directory
//! would run every job a second time and fight the first over `state.db`, so it refuses to
//! start and names the first. `litekeeper run` does not take this lock: a one-off job beside
//! the daemon is what the per-database locks (`lock.rs`) are for. flock dies with its
//! process: no stale pid file ever blocks a start.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name in `state_dir`.
pub(crate) const FILE: &str = "daemon.pid";

/// A held daemon lock; dropping it releases the flock (and clears the file).
#[derive(Debug)]
pub(crate) struct DaemonLock {
    file: File,
    dir: PathBuf,
}

impl DaemonLock {
    /// The state directory this lock is for.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for DaemonLock {
    fn drop(&mut self) {
        // So a reader racing our exit does not name a process that no longer holds it.
        let _ = self.file.set_len(0);
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum DaemonLockError {
    /// Another daemon holds the lock; `holder` is what its file says ("pid 123 since …").
    #[error(
        "{}: another litekeeper daemon ({holder}) uses this state_dir; refusing to start a second one (stop that one first, or give this one its own state_dir)",
        dir.display()
    )]
    Held {
        dir: PathBuf,
        holder: String,
        pid: Option<u32>,
    },
    #[error("{}: the daemon's lock file is a symlink; refusing to follow it (remove it: litekeeper creates its own)", path.display())]
    Symlink { path: PathBuf },
    #[error("{}: cannot take the daemon's lock: {source} (check that state_dir exists and is writable)", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Take the daemon lock of `state_dir` (creating the directory 0700 if needed), or say who
/// holds it.
pub(crate) fn acquire(state_dir: &Path) -> Result<DaemonLock, DaemonLockError> {
    let path = state_dir.join(FILE);
    let io = |source| DaemonLockError::Io {
        path: path.clone(),
        source,
    };
    crate::paths::ensure_state_dir(state_dir).map_err(io)?;
    use crate::safe_fs::{not_regular, open_lock_file, LockFileError};
    let mut file = match open_lock_file(&path, 0o644) {
        Ok(f) => f,
        Err(LockFileError::Special(rustix::fs::FileType::Symlink)) => {
            return Err(DaemonLockError::Symlink { path })
        }
        Err(LockFileError::Special(t)) => return Err(io(not_regular(&path, t))),
        Err(LockFileError::Io(e)) => return Err(io(e)),
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let text = text.trim();
            let pid = text
                .strip_prefix("pid ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|p| p.parse().ok());
            return Err(DaemonLockError::Held {
                dir: state_dir.to_path_buf(),
                holder: if text.is_empty() {
                    "pid unknown".to_string()
                } else {
                    text.to_string()
                },
                pid,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    let line = format!(
        "pid {} since {}\n",
        std::process::id(),
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    );
    file.set_len(0)
        .and_then(|_| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(line.as_bytes()))
        .map_err(io)?;
    Ok(DaemonLock {
        file,
        dir: state_dir.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_taker_is_refused_and_told_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let held = acquire(&state).unwrap();
        match acquire(&state) {
            Err(DaemonLockError::Held { pid, holder, .. }) => {
                assert_eq!(pid, Some(std::process::id()), "{holder}")
            }
            other => panic!("expected held, got {other:?}"),
        }
        drop(held);
        acquire(&state).unwrap();
    }

    #[test]
    fn refuses_a_symlinked_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join(FILE)).unwrap();
        assert!(matches!(
            acquire(dir.path()),
            Err(DaemonLockError::Symlink { .. })
        ));
    }
}
