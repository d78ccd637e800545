//! The files of one restore on disk: the sidecar names SQLite reads with a database, making
//! the live file whole by itself (WAL fold, hot-journal rollback), moving stale sidecars
//! aside, and the link/rename protocol of an in-place restore (`swap_in`, undone by
//! `swap_back`), under which a kill at any point leaves at the live name the old database or
//! the restored one, never a mix.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::RestoreError;
use crate::archive;

use crate::db_files::DbFiles;
pub(super) use crate::db_files::{sidecar as side, SIDECARS};

/// `e`, noting the stale files moved aside before it happened (when there were any).
pub(super) fn after_moving_aside(moved: &[(PathBuf, PathBuf)], e: RestoreError) -> RestoreError {
    if moved.is_empty() {
        e
    } else {
        RestoreError::AfterMovingAside {
            moved: moved.to_vec(),
            inner: Box::new(e),
        }
    }
}

/// `<db>.pre-restore-<time>`, with `-2`, `-3`… when a restore in the same second kept one.
pub(super) fn keep_path(target: &Path) -> PathBuf {
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    let base = format!("{}.pre-restore-{stamp}", target.display());
    let taken = |p: &str| {
        let f = DbFiles::of(Path::new(p));
        [&f.main, &f.wal, &f.journal]
            .iter()
            .any(|p| fs::symlink_metadata(p).is_ok())
    };
    if !taken(&base) {
        return PathBuf::from(base);
    }
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|p| !taken(p))
        .map(PathBuf::from)
        .expect("a free name")
}

/// A second name for `from` (a hard link), or where the file system has none, a move.
fn link_or_move(from: &Path, to: &Path) -> Result<(), RestoreError> {
    match fs::hard_link(from, to) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => fs::rename(from, to),
        other => other,
    }
    .map_err(|cause| RestoreError::Swap {
        path: from.to_path_buf(),
        action: "cannot keep the previous file",
        cause,
    })
}

/// Move a stale `-wal`/`-shm`/`-journal` at the `--to` target aside (to `<name>.stale-<time>`),
/// before the restored file gets the name: SQLite would replay a foreign WAL or journal onto
/// it. Returns what was moved where.
pub(super) fn move_aside_stale(target: &Path) -> Result<Vec<(PathBuf, PathBuf)>, RestoreError> {
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    let mut moved = Vec::new();
    for s in SIDECARS {
        let from = side(target, s);
        if fs::symlink_metadata(&from).is_err() {
            continue;
        }
        let mut to = PathBuf::from(format!("{}.stale-{stamp}", from.display()));
        let mut n = 2;
        while fs::symlink_metadata(&to).is_ok() {
            to = PathBuf::from(format!("{}.stale-{stamp}-{n}", from.display()));
            n += 1;
        }
        fs::rename(&from, &to).map_err(|cause| RestoreError::MoveAside {
            path: from.clone(),
            cause,
        })?;
        moved.push((from, to));
    }
    if !moved.is_empty() {
        archive::fsync_dir(target.parent().unwrap_or(Path::new("/")))
            .map_err(|e| after_moving_aside(&moved, RestoreError::Sync(e)))?;
    }
    Ok(moved)
}

/// Why the old file is not whole by itself.
pub(super) struct Unsettled {
    pub busy: bool,
    pub text: String,
}

/// Make the live file whole by itself, as SQLite's next open would: fold its WAL into it and
/// roll back a hot journal (an interrupted transaction). Its sidecars can then leave the live
/// name without taking committed data with them, and never meet the restored file.
pub(super) fn settle(target: &Path) -> Result<(), Unsettled> {
    let present: Vec<&str> = SIDECARS
        .iter()
        .copied()
        .filter(|s| *s != "-shm")
        .filter(|s| fs::symlink_metadata(side(target, s)).is_ok())
        .collect();
    if present.is_empty() || !target.exists() {
        return Ok(());
    }
    let names = present
        .iter()
        .map(|s| side(target, s).display().to_string())
        .collect::<Vec<_>>()
        .join(" and ");
    for s in &present {
        // A FIFO or device there would hang SQLite's open.
        if !fs::symlink_metadata(side(target, s)).is_ok_and(|m| m.is_file()) {
            return Err(Unsettled {
                busy: false,
                text: format!("{} is not a regular file", side(target, s).display()),
            });
        }
    }
    let unsettled = |e: rusqlite::Error| Unsettled {
        busy: matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        ),
        text: format!("it could not be made whole with {names} beside it ({e})"),
    };
    let c = Connection::open_with_flags(
        target,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(unsettled)?;
    c.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(unsettled)?;
    // The first read rolls a hot journal back (SQLite needs the write lock for it).
    c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(unsettled)?;
    if present.contains(&"-wal") {
        let busy: i64 = c
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .map_err(unsettled)?;
        if busy != 0 {
            return Err(Unsettled {
                busy: true,
                text: format!(
                    "its WAL ({names}) could not be folded into it: another connection is reading it"
                ),
            });
        }
    }
    Ok(())
}

/// What `swap_in` did: whether there was an old file (now kept), and the stale sidecars it
/// moved aside when there was none.
pub(super) struct Swapped {
    pub kept: bool,
    pub moved_aside: Vec<(PathBuf, PathBuf)>,
}

/// Put the restored `tmp` at `target`, keeping the old file with its WAL and journal as `keep`
/// (linked, not moved: the live name keeps the old database until the one rename replaces
/// it, so a kill at any point leaves there the old database or the restored one). The old
/// sidecars leave the live name before the rename: SQLite would read them with the new file.
pub(super) fn swap_in(tmp: &Path, target: &Path, keep: &Path) -> Result<Swapped, RestoreError> {
    let dir = target.parent().unwrap_or(Path::new("/"));
    let old = fs::symlink_metadata(target).is_ok();
    let mut moved_aside = Vec::new();
    if old {
        link_or_move(target, keep)?;
        let (live, kept) = (DbFiles::of(target), DbFiles::of(keep));
        for (from, to) in [(&live.wal, &kept.wal), (&live.journal, &kept.journal)] {
            if fs::symlink_metadata(from).is_ok() {
                link_or_move(from, to)?;
            }
        }
        archive::fsync_dir(dir).map_err(RestoreError::Sync)?;
    } else {
        // No database here now: sidecars left by one that was are kept aside, not deleted.
        moved_aside = move_aside_stale(target)?;
    }
    let noted = |e| after_moving_aside(&moved_aside, e);
    for s in SIDECARS {
        match fs::remove_file(side(target, s)) {
            Err(cause) if cause.kind() != io::ErrorKind::NotFound => {
                return Err(noted(RestoreError::RemoveSidecar {
                    path: side(target, s),
                    keep: keep.to_path_buf(),
                    cause,
                }))
            }
            _ => {}
        }
    }
    fs::rename(tmp, target).map_err(|cause| {
        noted(RestoreError::Swap {
            path: target.to_path_buf(),
            action: "cannot rename the restored file into place",
            cause,
        })
    })?;
    archive::fsync_dir(dir).map_err(|e| noted(RestoreError::Sync(e)))?;
    Ok(Swapped {
        kept: old,
        moved_aside,
    })
}

/// Undo `swap_in`, also one that stopped part way (or a killed one's): the kept file and
/// its sidecars back under the live name. Nothing kept under `keep`: nothing to undo. Where the
/// live name still holds the previous file (the rename was not done), the second names go.
pub(super) fn swap_back(target: &Path, keep: &Path) -> io::Result<()> {
    if fs::symlink_metadata(keep).is_err() {
        return Ok(());
    }
    let same = |a: &Path, b: &Path| match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    // The restored file is at the live name: its sidecars go, the previous file's come back.
    let swapped = !same(target, keep);
    for s in SIDECARS {
        let (live, kept) = (side(target, s), side(keep, s));
        if fs::symlink_metadata(&kept).is_ok() {
            if same(&live, &kept) {
                fs::remove_file(&kept)?;
            } else {
                fs::rename(&kept, &live)?;
            }
        } else if swapped {
            match fs::remove_file(&live) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    if swapped {
        fs::rename(keep, target)?;
    } else {
        fs::remove_file(keep)?;
    }
    File::open(target.parent().unwrap_or(Path::new("/")))?.sync_all()
}

/// Remove a temp file and the journals SQLite may have made beside it.
pub(super) fn remove_temp(tmp: &Path) -> Vec<PathBuf> {
    DbFiles::of(tmp)
        .all()
        .into_iter()
        .filter(|p| fs::remove_file(p).is_ok())
        .map(Path::to_path_buf)
        .collect()
}

/// Deletes the temp file (and SQLite's journals beside it) unless forgotten.
pub(super) struct TempFile(pub PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        remove_temp(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(p: &Path, bytes: &[u8]) {
        fs::write(p, bytes).unwrap();
    }

    #[test]
    fn swap_back_undoes_swap_in() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("app.db");
        let tmp = dir.path().join(".app.db.litekeeper-tmp");
        let keep = dir.path().join("app.db.pre-restore-x");
        put(&target, b"old");
        put(&side(&target, "-wal"), b"old wal");
        put(&side(&target, "-journal"), b"old journal");
        put(&side(&target, "-shm"), b"old shm");
        put(&tmp, b"new");
        assert!(swap_in(&tmp, &target, &keep).unwrap().kept);
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(fs::read(&keep).unwrap(), b"old");
        assert_eq!(fs::read(side(&keep, "-wal")).unwrap(), b"old wal");
        assert_eq!(fs::read(side(&keep, "-journal")).unwrap(), b"old journal");
        for s in SIDECARS {
            assert!(!side(&target, s).exists(), "{s} left beside the new file");
        }
        swap_back(&target, &keep).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert_eq!(fs::read(side(&target, "-wal")).unwrap(), b"old wal");
        assert_eq!(fs::read(side(&target, "-journal")).unwrap(), b"old journal");
        assert!(!keep.exists());
    }

    /// A swap that stopped after keeping the old file under a second name, before the rename.
    #[test]
    fn swap_back_undoes_a_swap_stopped_before_the_rename() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("app.db");
        let keep = dir.path().join("app.db.pre-restore-x");
        put(&target, b"old");
        put(&side(&target, "-wal"), b"old wal");
        fs::hard_link(&target, &keep).unwrap();
        fs::rename(side(&target, "-wal"), side(&keep, "-wal")).unwrap();
        swap_back(&target, &keep).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert_eq!(fs::read(side(&target, "-wal")).unwrap(), b"old wal");
        assert!(!keep.exists() && !side(&keep, "-wal").exists());
        // Nothing kept: nothing to undo, the live files stay.
        swap_back(&target, &keep).unwrap();
        assert_eq!(fs::read(side(&target, "-wal")).unwrap(), b"old wal");
    }
}
