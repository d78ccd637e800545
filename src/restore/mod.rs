//! Restoring a database file from a backup, only after the backup's SHA-256 (from the
//! manifest) and its integrity check pass. `litekeeper restore` parses its arguments, calls
//! [`select`] and then [`to_path`] (`to_paths`) or [`in_place_all`], and prints the
//! [`Restored`] it gets back; nothing here prints.
//!
//! The restored file is always written under a temp name in the target directory, fsynced,
//! checked, and renamed into place. The backup is read once: its SHA-256 is computed as it
//! is copied (or decompressed) into the temp file, and a mismatch leaves nothing behind.
//! [`to_path`] refuses an existing name (a symlink too), a sidecar name, and the backup
//! directory, and moves a stale `-wal`/`-shm`/`-journal` at the target aside first (SQLite
//! would replay a foreign WAL onto the restored file).
//!
//! [`in_place_all`] restores the file the configured path points to (through a symlink), takes
//! the database's lock as the owner of `state_dir` (as `run` does), refuses while other processes
//! have the file open (by device and inode, `open_check`; unless forced), first makes the old
//! file whole (folds its WAL, rolls back a hot journal, as SQLite's next open would; refused if
//! that fails, unless forced), keeps it with its sidecars as `<db>.pre-restore-<time>`,
//! removes them from the live name, renames the restored file in, and puts the old one back if
//! the result fails its check (`swap`). A killed restore's temp file is removed by the next
//! restore and by the next job of that database ([`clean_leftovers`]).
//!
//! Several files (a database and its attached ones at one point) are restored all or
//! nothing (`set`): every image is built and checked before the first is put in place, and a
//! failure puts back (or, with `--to`, removes) the ones already done.
//!
//! Writing a new file atomically is `archive`'s (`temp_path`, `create_private`, `fsync_file`,
//! `commit`, `fsync_dir`), used here as by backups; only the in-place swap, which must keep
//! the old file under a second name, has its own protocol.

mod error;
mod open_check;
pub(crate) mod point;
pub(crate) mod remote;
mod set;
mod swap;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::archive::{self, BackupName, Manifest, Verified};
use crate::config::Database;

pub(crate) use error::RestoreError;
pub(crate) use open_check::pid_list;
pub(crate) use set::{in_place_all, interrupted, recover_to, to_paths, Recovered};
use swap::{TempFile, SIDECARS};

/// A backup chosen for restore, its checksum verified against the manifest.
#[derive(Debug, Clone)]
pub struct BackupSource {
    /// The database (configuration name) it belongs to.
    pub database: String,
    /// The backup directory.
    pub dir: PathBuf,
    /// Its file name in `dir`.
    pub file: String,
    pub name: BackupName,
    /// How it was checked when it was taken.
    pub verified: Verified,
    /// Size of the restored file (the manifest's pages when the backup is compressed).
    pub restored_size: u64,
    /// The configured path of the live file it is a copy of: the main database or an
    /// attachment.
    pub live: PathBuf,
    /// A point of an incremental chain: the deltas applied after this full backup.
    pub point: Option<point::Point>,
    /// The manifest's SHA-256 of the file, checked as the restore reads it (None: checked
    /// already, as a remote copy's staged file is).
    pub sha256: Option<String>,
}

impl BackupSource {
    /// The backup file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.file)
    }
}

/// What a restore did, for its caller to report.
#[derive(Debug, Default)]
pub(crate) struct Restored {
    /// The file restored (for `in_place`, the real file behind a symlinked path).
    pub target: PathBuf,
    /// In place: the previous file's new name; None when there was no previous file.
    pub kept: Option<PathBuf>,
    /// Stale sidecar files found at the target without their database, moved aside
    /// (from, to).
    pub moved_aside: Vec<(PathBuf, PathBuf)>,
    /// In place through a symlink: the link, unchanged.
    pub through_link: Option<PathBuf>,
    /// In place, forced: why the previous file was not whole by itself (its sidecars are kept
    /// beside it).
    pub forced_not_whole: Option<String>,
    /// In place: live files an interrupted restore of the set had replaced, whose previous
    /// files were put back before this one began.
    pub put_back_interrupted: Vec<PathBuf>,
    /// In place, checked: processes seen that did not stop the restore.
    pub seen: Seen,
    /// Time spent writing the plain bytes (copying, or decompressing a `.zst` backup), and
    /// in the rest of the restore (space check, sync, check, rename): a drill's phases.
    pub writing: std::time::Duration,
    pub finishing: std::time::Duration,
}

/// Processes with the old file open that did not stop an in-place restore.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// litekeeper's own (the daemon's idle pooled connection, which reconnects at its next
    /// job).
    pub ours: Vec<u32>,
    /// Root's processes whose open files could not be read (restore not run as root).
    pub unchecked_root: usize,
    /// The uid the scan ran as.
    pub uid: u32,
}

/// How an in-place restore runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InPlace<'a> {
    /// Where the database's lock file lives (`daemon.lock_dir`).
    pub lock_dir: &'a Path,
    /// The lock is taken as this directory's owner (`daemon.state_dir`), as jobs take it.
    pub state_dir: &'a Path,
    /// Restore even when other processes have the file open or it cannot be made whole.
    pub force: bool,
}

/// The backup of `db` to restore: the file named `wanted` (a path's last component counts), or
/// the newest verified backup of the main database; its checksum is verified here.
pub(crate) fn select(db: &Database, wanted: Option<&str>) -> Result<BackupSource, RestoreError> {
    let dir = &db
        .backup
        .as_ref()
        .ok_or_else(|| RestoreError::NoBackupSection {
            database: db.name.clone(),
        })?
        .dir;
    select_from(db, dir, wanted)
}

/// As [`select`], from the backup directory `dir` (its manifest and files): the database's
/// own, or a directory a remote's copies were fetched into.
pub(crate) fn select_from(
    db: &Database,
    dir: &Path,
    wanted: Option<&str>,
) -> Result<BackupSource, RestoreError> {
    let dir = &dir.to_path_buf();
    let manifest = Manifest::load(dir).map_err(RestoreError::Manifest)?;
    let (name, file) = pick_backup(db, dir, &manifest, wanted)?;
    let path = dir.join(&file);
    let entry = manifest
        .get(&file)
        .ok_or_else(|| RestoreError::NotInManifest {
            path: path.clone(),
            dir: dir.clone(),
        })?;
    // The file's SHA-256 is checked as the restore reads it (`write_plain`): one read.
    // Which live file this backup belongs to (the main database or an attachment).
    let live = db
        .backup_sources()
        .into_iter()
        .find(|s| s.series == name.series)
        .ok_or_else(|| RestoreError::NoLiveFile {
            file: file.clone(),
            database: db.name.clone(),
        })?
        .path;
    let restored_size = if name.compressed {
        entry.page_count * entry.page_size
    } else {
        entry.size
    };
    Ok(BackupSource {
        database: db.name.clone(),
        dir: dir.clone(),
        file,
        name,
        verified: entry.verified,
        restored_size,
        live,
        point: None,
        sha256: Some(entry.sha256.clone()),
    })
}

/// Restore `backup` to the new file `target` (relative: from the current directory).
pub(crate) fn to_path(backup: &BackupSource, target: &Path) -> Result<Restored, RestoreError> {
    let mut done = set::to_paths(std::slice::from_ref(backup), &[target])?;
    Ok(done.remove(0))
}

/// Refuse `target` for `backup` as [`to_path`] would, before anything is written (a restore
/// of several files checks every name first).
pub(crate) fn check_target(backup: &BackupSource, target: &Path) -> Result<(), RestoreError> {
    let target = absolute(target)?;
    let target_dir = existing_parent(&target)?;
    new_target(&target, &target_dir, &backup.dir)
}

/// Where `restore --at … --to MAIN` puts the attached database of `series`: beside MAIN,
/// named `{MAIN's stem}-{series}{MAIN's extension}` (`/tmp/chat-1405.db` →
/// `/tmp/chat-1405-files.db`).
pub(crate) fn attached_target(main: &Path, series: &str) -> PathBuf {
    let stem = main
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = main
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    main.with_file_name(format!("{stem}-{series}{ext}"))
}

/// Refuse while other processes have `target` open (or may have: their open files are not
/// readable to us); say which of ours and how many of root's were seen.
fn nobody_else_has_it_open(target: &Path) -> Result<Seen, RestoreError> {
    let open = open_check::open_by_others(target);
    if !open.others.is_empty() {
        return Err(RestoreError::OpenByOthers {
            target: target.to_path_buf(),
            pids: open.others,
        });
    }
    let uid = rustix::process::getuid().as_raw();
    if !open.unreadable.is_empty() {
        return Err(RestoreError::OpenersUnknown {
            target: target.to_path_buf(),
            pids: open.unreadable,
            uid,
        });
    }
    Ok(Seen {
        ours: open.ours,
        unchecked_root: if crate::paths::is_root() {
            0
        } else {
            open.unreadable_root
        },
        uid,
    })
}

/// Write the backup's plain bytes to the temp name for `target`, give it `like`'s owner and
/// mode (in place: the live file's), fsync and check it. The temp file is removed when the
/// returned guard drops. Also says how long writing the plain bytes took.
fn write_checked(
    backup: &BackupSource,
    target: &Path,
    target_dir: &Path,
    like: Option<fs::Metadata>,
) -> Result<(PathBuf, TempFile, std::time::Duration), RestoreError> {
    let target_name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("restore.db");
    // Room for the restored file (its uncompressed size; the manifest knows the pages).
    let need = backup.restored_size;
    let free = archive::free_bytes(target_dir).map_err(RestoreError::Sync)?;
    if free < need {
        return Err(RestoreError::NoSpace {
            dir: target_dir.to_path_buf(),
            need,
            free,
        });
    }
    let tmp = archive::temp_path(target_dir, target_name);
    swap::remove_temp(&tmp);
    let cleanup = TempFile(tmp.clone());
    let from = backup.path();
    let clock = std::time::Instant::now();
    write_plain(backup, &tmp)?;
    if let Some(p) = &backup.point {
        apply_point(backup, p, &tmp)?;
    }
    let writing = clock.elapsed();
    if let Some(meta) = like {
        // The restored file keeps the live file's owner and mode.
        let _ = fs::set_permissions(&tmp, fs::Permissions::from_mode(meta.mode() & 0o7777));
        if crate::paths::is_root() {
            let _ = std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()));
        }
    }
    archive::fsync_file(&tmp).map_err(RestoreError::Sync)?;
    check(&tmp).map_err(|why| RestoreError::BackupFailsCheck { backup: from, why })?;
    Ok((tmp, cleanup, writing))
}

/// Apply the point's deltas to the full backup's bytes at `tmp`, then prove the image.
fn apply_point(backup: &BackupSource, p: &point::Point, tmp: &Path) -> Result<(), RestoreError> {
    let Some(expected) = &p.image_sha256 else {
        return Ok(());
    };
    let chain_err = |cause: std::io::Error| RestoreError::Chain {
        dir: backup.dir.clone(),
        point: p.file.clone(),
        cause,
    };
    let image = fs::OpenOptions::new()
        .write(true)
        .open(tmp)
        .map_err(chain_err)?;
    // `point::select_at_all` (or a remote fetch) checked every delta's SHA-256; the image's
    // is checked below.
    crate::chain::apply_all(&backup.dir, &p.deltas, &image, false).map_err(chain_err)?;
    image.sync_all().map_err(chain_err)?;
    let actual = archive::sha256_file(tmp).map_err(RestoreError::Sync)?;
    if &actual != expected {
        return Err(RestoreError::ImageMismatch {
            point: backup.dir.join(&p.file),
            actual,
            expected: expected.clone(),
        });
    }
    Ok(())
}

/// The directory of `target`, which must exist.
fn existing_parent(target: &Path) -> Result<PathBuf, RestoreError> {
    let dir = target.parent().unwrap_or(Path::new("/")).to_path_buf();
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(RestoreError::NoDirectory { dir })
    }
}

fn absolute(p: &Path) -> Result<PathBuf, RestoreError> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()
            .map_err(RestoreError::CurrentDir)?
            .join(p))
    }
}

/// The backup to restore: the one named, or the newest verified one of the main database
/// whose last drill (if any) did not fail.
fn pick_backup(
    db: &Database,
    dir: &Path,
    manifest: &Manifest,
    wanted: Option<&str>,
) -> Result<(BackupName, String), RestoreError> {
    let found = archive::list_of(dir, manifest, &db.name).map_err(RestoreError::ListBackups)?;
    if let Some(w) = wanted {
        let w = Path::new(w)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(w);
        return found
            .into_iter()
            .find(|f| f.path.file_name().and_then(|n| n.to_str()) == Some(w))
            .map(|f| (f.name, w.to_string()))
            .ok_or_else(|| RestoreError::NoSuchBackup {
                dir: dir.to_path_buf(),
                wanted: w.to_string(),
                database: db.name.clone(),
            });
    }
    let main_series = db.backup_sources().remove(0).series;
    let verified: Vec<(BackupName, String, &archive::Entry)> = found
        .into_iter()
        .filter(|f| f.name.series == main_series && !f.name.failed)
        .filter_map(|f| {
            let file = f.path.file_name()?.to_str()?.to_string();
            let entry = manifest.get(&file)?;
            matches!(entry.verified, Verified::Quick | Verified::Full)
                .then_some((f.name, file, entry))
        })
        .collect();
    // A copy whose last drill failed is not restored unless named.
    match drilled(verified, |(_, _, e)| {
        e.drill.as_ref().filter(|_| e.drill_failed())
    }) {
        Drilled::Pick(((name, file, _), _)) => Ok((name, file)),
        Drilled::AllFailed((_, file, _), mark) => Err(all_drills_failed(
            dir.display().to_string(),
            "verified backup",
            db,
            &file,
            mark,
            None,
        )),
        Drilled::NoCopy => Err(RestoreError::NoVerifiedBackup {
            dir: dir.to_path_buf(),
            database: db.name.clone(),
        }),
    }
}

/// Copies a restore picks from by default, against their drills.
pub(crate) enum Drilled<T> {
    /// The newest copy whose last drill did not fail, and the newest one skipped because
    /// its drill failed (newer than it), with that drill's mark.
    Pick((T, Option<(T, archive::DrillMark)>)),
    /// Every copy failed its drill: the newest, and its mark.
    AllFailed(T, archive::DrillMark),
    NoCopy,
}

/// Sort `newest_first` against their drills; `failed` gives a copy's mark when its last
/// drill failed.
pub(crate) fn drilled<T>(
    newest_first: Vec<T>,
    failed: impl Fn(&T) -> Option<&archive::DrillMark>,
) -> Drilled<T> {
    let mut skipped = None;
    for c in newest_first {
        match failed(&c).cloned() {
            None => return Drilled::Pick((c, skipped)),
            Some(mark) => {
                skipped.get_or_insert((c, mark));
            }
        }
    }
    match skipped {
        Some((c, mark)) => Drilled::AllFailed(c, mark),
        None => Drilled::NoCopy,
    }
}

/// The error when every copy a restore would pick failed its drill: `newest` named, with
/// its drill's mark, and the override (`from`: the remote).
pub(crate) fn all_drills_failed(
    place: String,
    what: &str,
    db: &Database,
    newest: &str,
    mark: archive::DrillMark,
    from: Option<&str>,
) -> RestoreError {
    RestoreError::AllDrillsFailed(Box::new(error::DrillsFailed {
        place,
        what: what.to_string(),
        database: db.name.clone(),
        newest: newest.to_string(),
        mark,
        from: from.map(str::to_string),
    }))
}

/// Why a full backup newer than the one restored was skipped: its drill failed (`mark`).
pub(crate) fn drill_failed_why(mark: &archive::DrillMark) -> String {
    format!(
        "its drill failed at {}: {}; a copy whose drill failed is restored only when named",
        mark.at.format("%Y-%m-%d %H:%M:%S UTC"),
        mark.error.as_deref().unwrap_or("no reason recorded")
    )
}

/// Copy (or decompress) the backup into the new file `tmp`, mode 0600, reading it once:
/// the SHA-256 of its bytes (as stored, compressed or not) is computed on the way and
/// checked against the manifest's. A backup that cannot be decompressed is read to its end
/// all the same, so that a damaged file is named as one (checksum mismatch).
fn write_plain(backup: &BackupSource, tmp: &Path) -> Result<(), RestoreError> {
    let from = backup.path();
    let mut out = archive::create_private(tmp).map_err(RestoreError::CreateTemp)?;
    let input = File::open(&from).map_err(|cause| RestoreError::OpenBackup {
        path: from.clone(),
        cause,
    })?;
    let unreadable = |cause| RestoreError::ReadBackup {
        path: from.clone(),
        cause,
    };
    // Reading and writing fail for different reasons: a damaged backup, or a full disk.
    let unwritable = |cause| RestoreError::WriteTemp {
        dir: tmp.parent().unwrap_or(Path::new("/")).to_path_buf(),
        cause,
    };
    let mut input = archive::Sha256Reader::new(input);
    let mut buf = vec![0u8; 1 << 20];
    let copied = if backup.name.compressed {
        decompress(&mut input, &mut out, &mut buf)
    } else {
        copy(&mut input, &mut out, &mut buf)
    };
    // What is left of the file after a decoding error (or bytes after the frame) is hashed
    // too: the hash is of the whole file.
    let rest = std::io::copy(&mut input, &mut std::io::sink());
    let actual = input.hex();
    if let (Some(expected), Ok(_)) = (&backup.sha256, &rest) {
        if *expected != actual && !matches!(copied, Err(Copy::Write(_))) {
            return Err(RestoreError::ChecksumMismatch {
                path: from,
                actual,
                expected: expected.clone(),
                database: backup.database.clone(),
            });
        }
    }
    match copied {
        Err(Copy::Read(e)) => return Err(unreadable(e)),
        Err(Copy::Write(e)) => return Err(unwritable(e)),
        Ok(()) => {}
    }
    rest.map_err(unreadable)?;
    out.sync_all().map_err(unwritable)?;
    Ok(())
}

/// Which side of a copy failed.
enum Copy {
    Read(std::io::Error),
    Write(std::io::Error),
}

fn copy(input: &mut impl Read, out: &mut File, buf: &mut [u8]) -> Result<(), Copy> {
    loop {
        let n = input.read(buf).map_err(Copy::Read)?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n]).map_err(Copy::Write)?;
    }
}

fn decompress(input: &mut impl Read, out: &mut File, buf: &mut [u8]) -> Result<(), Copy> {
    let mut reader = zstd::stream::Decoder::new(input).map_err(Copy::Read)?;
    copy(&mut reader, out, buf)
}

/// Open read-only and run quick_check.
fn check(path: &Path) -> Result<(), String> {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    let rows: Vec<String> = c
        .prepare("PRAGMA quick_check(5)")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| format!("quick_check: {e}"))?;
    if rows == ["ok"] {
        Ok(())
    } else {
        Err(format!("quick_check: {}", rows.join("; ")))
    }
}

/// The file an in-place restore replaces: the configured path, or, where that is a symlink,
/// the file it points to (the link stays; SQLite, too, keeps the sidecars beside the real
/// file). A dangling symlink is refused.
fn live_file(path: &Path) -> Result<PathBuf, RestoreError> {
    let real = resolve_link(path)?;
    // A FIFO or device there would hang SQLite's open, and is no database to replace.
    if fs::metadata(&real).is_ok_and(|m| !m.is_file()) {
        return Err(RestoreError::NotRegular { path: real });
    }
    Ok(real)
}

fn resolve_link(path: &Path) -> Result<PathBuf, RestoreError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            fs::canonicalize(path).map_err(|cause| RestoreError::DanglingLink {
                path: path.to_path_buf(),
                points_to: fs::read_link(path).unwrap_or_default(),
                cause,
            })
        }
        _ => Ok(path.to_path_buf()),
    }
}

/// `--to PATH` must name a new file of its own: not an existing name (a symlink included,
/// dangling or not: the rename would replace the link), not a sidecar name of a database, and
/// not inside the backup directory (which only litekeeper's backups live in).
fn new_target(target: &Path, target_dir: &Path, backup_dir: &Path) -> Result<(), RestoreError> {
    let refuse = |reason: String| {
        Err(RestoreError::TargetRefused {
            target: target.to_path_buf(),
            reason,
        })
    };
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if let Some(s) = SIDECARS.iter().find(|s| name.ends_with(*s)) {
        return refuse(format!(
            "a name ending in {s} is a database's sidecar file (SQLite would read it with that database); restore --to a name like restored.db"
        ));
    }
    if let Ok(m) = fs::symlink_metadata(target) {
        return refuse(if m.file_type().is_symlink() {
            "is a symlink; restore --to a new path (not a link)".into()
        } else {
            "already exists; restore --to a new path".into()
        });
    }
    let canon = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    if canon(target_dir).starts_with(canon(backup_dir)) {
        return refuse(format!(
            "inside the backup directory {}; restore --to a path outside it",
            backup_dir.display()
        ));
    }
    Ok(())
}

/// Remove what a killed in-place restore of `db` left beside its files (the full-size temp
/// file `.<name>.litekeeper-tmp` and its journals). Call with the database's lock held: only
/// an in-place restore, under that lock, writes these names.
pub(crate) fn clean_leftovers(db: &Database) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for s in db.backup_sources() {
        let real = fs::canonicalize(&s.path).unwrap_or_else(|_| s.path.clone());
        for p in [&s.path, &real] {
            let (Some(dir), Some(name)) = (p.parent(), p.file_name().and_then(|n| n.to_str()))
            else {
                continue;
            };
            removed.extend(swap::remove_temp(&archive::temp_path(dir, name)));
        }
    }
    for p in &removed {
        tracing::info!("removed {}, left by a killed restore", p.display());
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_target_refuses_links_sidecar_names_and_the_backup_dir() {
        let dir = tempfile::tempdir().unwrap();
        let backups = dir.path().join("b");
        fs::create_dir(&backups).unwrap();
        let ok = dir.path().join("new.db");
        assert!(new_target(&ok, dir.path(), &backups).is_ok());
        std::os::unix::fs::symlink("/nonexistent", &ok).unwrap();
        assert!(new_target(&ok, dir.path(), &backups).is_err());
        for bad in ["x.db-wal", "x.db-shm", "x.db-journal"] {
            assert!(new_target(&dir.path().join(bad), dir.path(), &backups).is_err());
        }
        assert!(new_target(&backups.join("n.db"), &backups, &backups).is_err());
    }
}
