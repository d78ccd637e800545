//! The per-database lock: an exclusive `flock` on `lock_dir/<name>.lock`, held for a job's
//! whole run, so the daemon, a timer's `litekeeper run` and a person at a shell never run two
//! jobs on one database at once. The holder writes its pid, job and start time into the file
//! so a refused caller can say who holds it. flock dies with its process: no stale locks.
//!
//! A flock belongs to an inode, the lock to a path: after taking it we check that the file we
//! hold is still the one at the path (device and inode), else we try again. While a job runs,
//! `LockGuard::keep` is called periodically: if the lock file (or the whole lock directory)
//! was removed, the holder puts a new one at the path and locks it too, so a second job finds
//! it busy; if another job got there first, the holder is told to stop.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// A held lock; dropping it releases the flock.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
    path: PathBuf,
    dir: PathBuf,
    database: String,
    job: String,
    /// Files locked earlier whose path was removed under us (see `keep`); held to the end.
    earlier: Vec<File>,
}

impl LockGuard {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Make sure the lock is still at its path. When the lock file (or its directory) was
    /// removed or replaced, lock a new file at the path and keep both. `Err(Busy)` when
    /// another job took the path meanwhile: the caller must stop its job.
    pub fn keep(&mut self) -> Result<(), LockError> {
        if same_file(&self.file, &self.path) {
            return Ok(());
        }
        let (file, path) = open(&self.dir, &self.database)?;
        match file.try_lock() {
            Ok(()) => {
                let file = claim(file, &path, &self.job)?;
                // The new file is the one at the path now; the old one stays locked to the end.
                let old = std::mem::replace(&mut self.file, file);
                self.earlier.push(old);
                tracing::warn!(
                    "{}: the lock file was removed while {} ran on {:?}; a new one was put in its place",
                    self.path.display(),
                    self.job,
                    self.database
                );
                Ok(())
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut file = file;
                Err(LockError::Busy {
                    database: self.database.clone(),
                    holder: format!(
                        "its lock file {} was removed while {} ran, and another process took the new one: {}",
                        self.path.display(),
                        self.job,
                        holder(&mut file)
                    ),
                })
            }
            Err(std::fs::TryLockError::Error(source)) => Err(LockError::Io { path, source }),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Clear the holder line so a stale reader does not name us; the flock goes with the fd.
        let _ = self.file.set_len(0);
    }
}

/// The open `file` is the file at `path` (same device and inode; the path not followed).
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another job holds the lock; the text describes the holder.
    #[error("database {database:?} is busy: {holder}")]
    Busy { database: String, holder: String },
    #[error("stopped while waiting for the lock of database {0:?}")]
    Cancelled(String),
    #[error("{}: the lock file is a symlink; refusing to follow it (remove it: litekeeper creates its own)", path.display())]
    Symlink { path: PathBuf },
    #[error("{}: the lock file is not a regular file ({kind}); remove it (litekeeper creates its own)", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{}: cannot open lock file: {source} (check that lock_dir exists and is writable, and is not a symlink)", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Create the lock directory (0750) if needed.
pub fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
    }
    Ok(())
}

fn open(dir: &Path, database: &str) -> Result<(File, PathBuf), LockError> {
    let path = dir.join(format!("{database}.lock"));
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    ensure_dir(dir).map_err(io)?;
    use crate::safe_fs::{describe, open_lock_file, LockFileError};
    match open_lock_file(&path, 0o640) {
        Ok(file) => Ok((file, path)),
        Err(LockFileError::Special(rustix::fs::FileType::Symlink)) => {
            Err(LockError::Symlink { path })
        }
        // A FIFO or device in its place: writes could block, flock means nothing.
        Err(LockFileError::Special(t)) => Err(LockError::NotRegular {
            path,
            kind: describe(t),
        }),
        Err(LockFileError::Io(e)) => Err(io(e)),
    }
}

fn holder(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_string(&mut s);
    let s = s.trim();
    if s.is_empty() {
        "held by another process (holder unknown)".to_string()
    } else {
        format!("held by {s}")
    }
}

/// Write our holder line into a file we just locked.
fn claim(mut file: File, path: &Path, job: &str) -> Result<File, LockError> {
    let line = format!(
        "pid {} running {job} since {}\n",
        std::process::id(),
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    );
    let written = file
        .set_len(0)
        .and_then(|_| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(line.as_bytes()));
    written.map_err(|source| LockError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(file)
}

/// Take the lock now or report who holds it.
pub fn try_acquire(dir: &Path, database: &str, job: &str) -> Result<LockGuard, LockError> {
    // The file may be removed or replaced between our open and our flock (by a cleanup, or
    // a lock directory removed and made again): then we hold a lock nobody else can see, so
    // we try again with the file now at the path.
    for _ in 0..20 {
        let (mut file, path) = open(dir, database)?;
        match file.try_lock() {
            Ok(()) if !same_file(&file, &path) => continue,
            Ok(()) => {
                return Ok(LockGuard {
                    file: claim(file, &path, job)?,
                    path,
                    dir: dir.to_path_buf(),
                    database: database.to_string(),
                    job: job.to_string(),
                    earlier: Vec::new(),
                })
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LockError::Busy {
                    database: database.to_string(),
                    holder: holder(&mut file),
                })
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(LockError::Io { path, source })
            }
        }
    }
    Err(LockError::Io {
        path: dir.join(format!("{database}.lock")),
        source: std::io::Error::other(
            "the lock file was replaced every time it was locked; is something removing lock_dir?",
        ),
    })
}

/// Wait for the lock up to `timeout` (None: no limit), giving up when `cancel` fires.
pub async fn acquire_waiting(
    dir: &Path,
    database: &str,
    job: &str,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
) -> Result<LockGuard, LockError> {
    let start = Instant::now();
    loop {
        match try_acquire(dir, database, job) {
            Err(LockError::Busy { database, holder }) => {
                if timeout.is_some_and(|t| start.elapsed() >= t) {
                    return Err(LockError::Busy {
                        database,
                        holder: format!(
                            "{holder} (waited {})",
                            humantime::format_duration(timeout.unwrap_or_default())
                        ),
                    });
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Err(LockError::Cancelled(database)),
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_taker_is_refused_and_told_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let g = try_acquire(dir.path(), "chat", "backup").unwrap();
        match try_acquire(dir.path(), "chat", "prune") {
            Err(LockError::Busy { holder, .. }) => {
                assert!(
                    holder.contains(&format!("pid {} running backup", std::process::id())),
                    "{holder}"
                )
            }
            other => panic!("expected busy, got {other:?}"),
        }
        // other databases are independent
        let _other = try_acquire(dir.path(), "files", "vacuum").unwrap();
        drop(g);
        try_acquire(dir.path(), "chat", "prune").unwrap();
    }

    #[test]
    fn refuses_a_symlinked_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("chat.lock")).unwrap();
        assert!(matches!(
            try_acquire(dir.path(), "chat", "backup"),
            Err(LockError::Symlink { .. })
        ));
    }

    #[test]
    fn a_removed_lock_file_is_put_back_by_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        let mut g = try_acquire(&locks, "chat", "prune").unwrap();
        g.keep().unwrap();
        std::fs::remove_dir_all(&locks).unwrap();
        g.keep().unwrap();
        let line = std::fs::read_to_string(locks.join("chat.lock")).unwrap();
        assert!(line.contains("running prune"), "{line}");
        assert!(matches!(
            try_acquire(&locks, "chat", "vacuum"),
            Err(LockError::Busy { .. })
        ));
        // Someone else took the path before the holder noticed: the holder must stop.
        std::fs::remove_dir_all(&locks).unwrap();
        let _other = try_acquire(&locks, "chat", "backup").unwrap();
        match g.keep() {
            Err(LockError::Busy { holder, .. }) => {
                assert!(holder.contains("running backup"), "{holder}")
            }
            other => panic!("expected busy, got {other:?}"),
        }
        drop(g);
        // The other holder's line is intact.
        let line = std::fs::read_to_string(locks.join("chat.lock")).unwrap();
        assert!(line.contains("running backup"), "{line}");
    }

    #[tokio::test]
    async fn waiting_gets_the_lock_when_released() {
        let dir = tempfile::tempdir().unwrap();
        let g = try_acquire(dir.path(), "chat", "backup").unwrap();
        let d = dir.path().to_path_buf();
        let waiter = tokio::spawn(async move {
            acquire_waiting(
                &d,
                "chat",
                "prune",
                Some(Duration::from_secs(5)),
                &CancellationToken::new(),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(g);
        assert!(waiter.await.unwrap().is_ok());
    }
}
