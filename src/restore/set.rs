//! Restoring a set of files — a database and its attached ones, at one point — all or
//! nothing (one file is a set of one).
//!
//! Every image is built and checked first (a temp file beside each target, fsynced); in
//! place, the database's lock is taken once and every target passes its checks (other
//! openers, made whole) before any is touched. Only then are the files swapped, one rename
//! each. A swap or a final check that fails puts back the files already swapped (their
//! previous files are kept under `.pre-restore-…` names) and says so; with `--to`, the files
//! of the set already renamed are removed.
//!
//! A SIGKILL between two swaps leaves the set half restored, and nobody is left to undo it.
//! So before the first swap of a set of several files, a marker beside the main file
//! (`.<main>.litekeeper-restore`, JSON, fsynced) lists each live file and the name its
//! previous file is kept under; it goes when the set is whole again. While it is there,
//! every job of the database warns in one line ([`interrupted`]), and the next in-place
//! restore puts back the previous files it lists before it starts, so that running the same
//! restore again finishes it (the previous files are then kept as usual).
//!
//! With `--to` the same marker goes beside the new main file, listing each new file with the
//! device and inode of its staged copy, and the main file is renamed last: after a kill
//! there is no main file unless the set is whole, and the next `restore --to` the same path
//! ([`recover_to`]) removes the files that restore made (only those: same device and inode)
//! or, all being there, just the marker. A job of a database configured at that path warns.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    absolute, check, existing_parent, live_file, new_target, nobody_else_has_it_open, swap,
    write_checked, BackupSource, InPlace, RestoreError, Restored, Seen,
};
use crate::archive;
use crate::config::Database;
use crate::lock::{self, LockError};

/// Restore each backup to its new file (`targets`, in the same order); on a failure no file
/// of the set is left behind. Several files: the marker goes beside the main target before
/// the first rename and the attached files are renamed first, the main one last, so a kill
/// between them leaves no main file and a marker saying which files it made
/// ([`recover_to`], the next restore to the same path, removes them).
pub(crate) fn to_paths(
    backups: &[BackupSource],
    targets: &[&Path],
) -> Result<Vec<Restored>, RestoreError> {
    let mut staged = Vec::new();
    for (backup, target) in backups.iter().zip(targets) {
        let clock = std::time::Instant::now();
        let target = absolute(target)?;
        let dir = existing_parent(&target)?;
        new_target(&target, &dir, &backup.dir)?;
        let (tmp, guard, writing) = write_checked(backup, &target, &dir, None)?;
        staged.push((target, tmp, guard, writing, clock));
    }
    let marker = match (staged.len() > 1, backups.first()) {
        (true, Some(first)) => Some(write_to_marker(
            &first.database,
            staged
                .iter()
                .map(|(target, tmp, ..)| (target.as_path(), tmp.as_path())),
        )?),
        _ => None,
    };
    let mut done: Vec<Restored> = Vec::new();
    for (target, tmp, guard, writing, clock) in staged.into_iter().rev() {
        let committed = swap::move_aside_stale(&target).and_then(|moved| {
            archive::commit(&tmp, &target)
                .map(|()| moved.clone())
                .map_err(|e| swap::after_moving_aside(&moved, RestoreError::Commit(e)))
        });
        match committed {
            Ok(moved_aside) => {
                std::mem::forget(guard);
                done.push(Restored {
                    target,
                    moved_aside,
                    writing,
                    finishing: clock.elapsed().saturating_sub(writing),
                    ..Restored::default()
                });
            }
            Err(e) => {
                let removed: Vec<PathBuf> = done
                    .iter()
                    .map(|r| r.target.clone())
                    .filter(|t| fs::remove_file(t).is_ok())
                    .collect();
                for t in &removed {
                    let _ = archive::fsync_dir(t.parent().unwrap_or(Path::new("/")));
                }
                if let Some(m) = &marker {
                    remove_marker(m);
                }
                return Err(undone(e, removed, "removed"));
            }
        }
    }
    if let Some(m) = &marker {
        remove_marker(m);
    }
    done.reverse();
    Ok(done)
}

/// What the next `restore --to` found of an earlier one to the same path, killed between
/// its files.
#[derive(Debug)]
pub(crate) enum Recovered {
    /// Every file was in place (killed before its marker went): only the marker removed.
    Whole(PathBuf),
    /// The files it had made, removed (none when it was killed before its first rename).
    Removed(PathBuf, Vec<PathBuf>),
}

/// Before a `restore --to main`: finish what a restore to the same path left when it was
/// killed between its files (its marker beside `main`): a set whose files are all there is
/// whole (the marker goes); otherwise the files it made (the same device and inode) are
/// removed, then the marker. Nothing else is touched.
pub(crate) fn recover_to(main: &Path) -> Result<Option<Recovered>, RestoreError> {
    let main = absolute(main)?;
    let marker = marker_path(&main);
    let Some(m) = read_marker(&marker)? else {
        return Ok(None);
    };
    undo_made(&marker, &m).map(Some)
}

/// Undo (or, when whole, keep) the files a `--to` restore's marker `m` lists as made.
fn undo_made(marker: &Path, m: &Marker) -> Result<Recovered, RestoreError> {
    let ours = |f: &MarkedFile| {
        f.made
            .is_some_and(|id| fs::symlink_metadata(&f.live).is_ok_and(|meta| id == Made::of(&meta)))
    };
    if m.files.iter().all(ours) {
        remove_marker(marker);
        return Ok(Recovered::Whole(marker.to_path_buf()));
    }
    let mut removed = Vec::new();
    for f in m.files.iter().filter(|f| ours(f)) {
        fs::remove_file(&f.live).map_err(|cause| RestoreError::Interrupted {
            marker: marker.to_path_buf(),
            cause,
        })?;
        let _ = archive::fsync_dir(f.live.parent().unwrap_or(Path::new("/")));
        removed.push(f.live.clone());
    }
    remove_marker(marker);
    Ok(Recovered::Removed(marker.to_path_buf(), removed))
}

/// The marker of a `--to` set about to be renamed into place: each new file and the device
/// and inode of its staged copy (a rename keeps them).
fn write_to_marker<'a>(
    database: &str,
    files: impl Iterator<Item = (&'a Path, &'a Path)>,
) -> Result<PathBuf, RestoreError> {
    let mut listed = Vec::new();
    for (target, tmp) in files {
        let meta = fs::metadata(tmp).map_err(|cause| RestoreError::WriteTemp {
            dir: tmp.parent().unwrap_or(Path::new("/")).to_path_buf(),
            cause,
        })?;
        listed.push(MarkedFile {
            live: target.to_path_buf(),
            previous_kept_as: None,
            made: Some(Made::of(&meta)),
        });
    }
    let path = marker_path(&listed[0].live);
    Marker {
        what: "a restore --to of these files was interrupted between them if this file is still here: the set is whole only when every file listed is there (the main file is renamed last). `litekeeper restore` --to the same path removes the files it made (made: their device and inode) and starts again; or remove them and this file by hand".into(),
        database: database.to_string(),
        started: chrono::Utc::now(),
        files: listed,
    }
    .save(path)
}

/// `e`, saying which files of the set were undone (`how`) before it was returned.
fn undone(e: RestoreError, files: Vec<PathBuf>, how: &'static str) -> RestoreError {
    if files.is_empty() {
        e
    } else {
        RestoreError::SetUndone {
            inner: Box::new(e),
            put_back: files,
            how,
        }
    }
}

/// One live file of an in-place set, checked and ready to be replaced.
struct Target {
    path: PathBuf,
    seen: Seen,
    forced_not_whole: Option<String>,
}

/// Restore every backup (all of one database) over its live file, all or nothing.
pub(crate) fn in_place_all(
    backups: &[BackupSource],
    how: InPlace<'_>,
) -> Result<Vec<Restored>, RestoreError> {
    let Some(first) = backups.first() else {
        return Ok(Vec::new());
    };
    let mut paths = Vec::new();
    for b in backups {
        let target = live_file(&b.live)?;
        existing_parent(&target)?;
        paths.push(target);
    }
    // The lock first: no job may run on the database while it is replaced. Taken as the
    // service's user, so the lock file stays usable by every later job.
    let taken = crate::privileges::as_state_owner(how.state_dir, || {
        lock::try_acquire(how.lock_dir, &first.database, "restore")
    })
    .map_err(RestoreError::SwitchUser)?;
    let _guard = match taken {
        Ok(g) => g,
        Err(LockError::Busy { database, holder }) => {
            return Err(RestoreError::Busy { database, holder })
        }
        Err(e) => return Err(RestoreError::Lock(e)),
    };
    let mut seen = Vec::new();
    for path in &paths {
        seen.push(if how.force {
            Seen::default()
        } else {
            nobody_else_has_it_open(path)?
        });
    }
    // An earlier restore of this set, killed between its swaps: its previous files back
    // first, so that the set is whole again before it is replaced.
    let put_back = recover(&marker_path(&paths[0]))?;
    let targets = settled(paths, seen, how.force)?;
    let mut staged = Vec::new();
    for (backup, t) in backups.iter().zip(&targets) {
        let dir = t.path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let (tmp, guard, _) = write_checked(backup, &t.path, &dir, fs::metadata(&t.path).ok())?;
        staged.push((tmp, guard));
    }
    let keeps: Vec<PathBuf> = targets.iter().map(|t| swap::keep_path(&t.path)).collect();
    let marker = (targets.len() > 1)
        .then(|| write_marker(&first.database, &targets, &keeps))
        .transpose()?;
    let mut swapped = Vec::new();
    for ((t, keep), (tmp, _)) in targets.iter().zip(&keeps).zip(&staged) {
        match swap::swap_in(tmp, &t.path, keep) {
            Ok(s) => swapped.push(s),
            Err(e) => {
                // This file's own swap may have kept it under `keep` already.
                let own = swap::swap_back(&t.path, keep);
                let back = own.and_then(|()| put_back_all(&targets, &keeps, &swapped));
                return Err(after_undo(e, back, &targets, swapped.len(), marker));
            }
        }
    }
    for t in &targets {
        if let Err(why) = check(&t.path) {
            let back = put_back_all(&targets, &keeps, &swapped);
            let keep = keeps[targets.iter().position(|x| x.path == t.path).unwrap_or(0)].clone();
            let failed = |back| RestoreError::RestoredFailsCheck {
                target: t.path.clone(),
                why,
                keep,
                back,
            };
            // One file: its own error says whether the previous one is back.
            if marker.is_none() {
                return Err(failed(back));
            }
            return Err(after_undo(
                failed(Ok(())),
                back,
                &targets,
                swapped.len(),
                marker,
            ));
        }
    }
    if let Some(m) = &marker {
        remove_marker(m);
    }
    drop(staged);
    let mut out = Vec::new();
    for (((t, keep), s), backup) in targets.into_iter().zip(keeps).zip(swapped).zip(backups) {
        out.push(Restored {
            through_link: (backup.live != t.path).then(|| backup.live.clone()),
            kept: s.kept.then_some(keep),
            moved_aside: s.moved_aside,
            forced_not_whole: t.forced_not_whole,
            seen: t.seen,
            target: t.path,
            put_back_interrupted: Vec::new(),
            ..Restored::default()
        });
    }
    out[0].put_back_interrupted = put_back;
    Ok(out)
}

/// Each live file made whole by itself (WAL folded, hot journal rolled back) before its
/// sidecars leave the live name; with `force`, one that cannot be is restored over anyway.
fn settled(paths: Vec<PathBuf>, seen: Vec<Seen>, force: bool) -> Result<Vec<Target>, RestoreError> {
    let mut targets = Vec::new();
    for (path, seen) in paths.into_iter().zip(seen) {
        let forced_not_whole = match swap::settle(&path) {
            Ok(()) => None,
            Err(why) if force => Some(why.text),
            Err(why) => {
                return Err(RestoreError::NotWhole {
                    target: path,
                    why: why.text,
                    busy: why.busy,
                })
            }
        };
        targets.push(Target {
            path,
            seen,
            forced_not_whole,
        });
    }
    Ok(targets)
}

/// The error of a set whose swaps were undone (`back`: whether putting the first `n` back
/// worked); the marker goes only when they are back.
fn after_undo(
    e: RestoreError,
    back: std::io::Result<()>,
    targets: &[Target],
    n: usize,
    marker: Option<PathBuf>,
) -> RestoreError {
    match (back, marker) {
        (Ok(()), marker) => {
            if let Some(m) = &marker {
                remove_marker(m);
            }
            undone(
                e,
                targets[..n].iter().map(|t| t.path.clone()).collect(),
                "put back",
            )
        }
        (Err(cause), Some(marker)) => RestoreError::SetHalfDone {
            inner: Box::new(e),
            cause,
            marker,
        },
        // One file: its own error says where its previous file is kept.
        (Err(_), None) => e,
    }
}

/// Put the previous files of the first `swapped` targets back (a restored file where there
/// was none is removed).
fn put_back_all(
    targets: &[Target],
    keeps: &[PathBuf],
    swapped: &[swap::Swapped],
) -> std::io::Result<()> {
    let mut first_err = None;
    for ((t, keep), s) in targets.iter().zip(keeps).zip(swapped).rev() {
        let r = if s.kept {
            swap::swap_back(&t.path, keep)
        } else {
            fs::remove_file(&t.path)
        };
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// The marker of a set being swapped, beside its main file.
fn marker_path(main: &Path) -> PathBuf {
    let name = main.file_name().and_then(|n| n.to_str()).unwrap_or("db");
    main.with_file_name(format!(".{name}.litekeeper-restore"))
}

#[derive(Serialize, Deserialize)]
struct Marker {
    /// For a person reading it.
    what: String,
    database: String,
    started: chrono::DateTime<chrono::Utc>,
    files: Vec<MarkedFile>,
}

impl Marker {
    /// Written atomically (temp, fsync, rename) at `path`, which is returned.
    fn save(&self, path: PathBuf) -> Result<PathBuf, RestoreError> {
        let text = serde_json::to_vec_pretty(self).expect("a marker serializes");
        archive::write_atomic(&path, &text).map_err(RestoreError::Sync)?;
        Ok(path)
    }
}

#[derive(Serialize, Deserialize)]
struct MarkedFile {
    live: PathBuf,
    /// Where the previous file is kept once this one is swapped (None: there was none).
    previous_kept_as: Option<PathBuf>,
    /// `--to`: the new file's device and inode, so that an undo removes only a file the
    /// restore made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    made: Option<Made>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Made {
    dev: u64,
    ino: u64,
}

impl Made {
    fn of(meta: &fs::Metadata) -> Made {
        use std::os::unix::fs::MetadataExt;
        Made {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

fn write_marker(
    database: &str,
    targets: &[Target],
    keeps: &[PathBuf],
) -> Result<PathBuf, RestoreError> {
    let path = marker_path(&targets[0].path);
    Marker {
        what: "a restore of these files in place was interrupted between them if this file is still here: a live file whose previous_kept_as exists is restored, the others are not. `litekeeper restore` of this database in place puts the previous files back first; or put them back by hand (rename previous_kept_as, with its -wal or -journal, to live) and remove this file".into(),
        database: database.to_string(),
        started: chrono::Utc::now(),
        files: targets
            .iter()
            .zip(keeps)
            .map(|(t, keep)| MarkedFile {
                live: t.path.clone(),
                previous_kept_as: fs::symlink_metadata(&t.path).is_ok().then(|| keep.clone()),
                made: None,
            })
            .collect(),
    }
    .save(path)
}

fn remove_marker(marker: &Path) {
    if fs::remove_file(marker).is_ok() {
        let _ = archive::fsync_dir(marker.parent().unwrap_or(Path::new("/")));
    }
}

/// The marker at `marker`, if there is one.
fn read_marker(marker: &Path) -> Result<Option<Marker>, RestoreError> {
    let text = match fs::read(marker) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(cause) => {
            return Err(RestoreError::Interrupted {
                marker: marker.to_path_buf(),
                cause,
            })
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| RestoreError::Interrupted {
            marker: marker.to_path_buf(),
            cause: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
}

/// Put back the previous files an interrupted restore's `marker` lists (those it had
/// swapped), then remove it. Returns the live files put back. A `--to` restore's marker
/// (its target since configured as the database) is undone as the next `--to` would.
fn recover(marker: &Path) -> Result<Vec<PathBuf>, RestoreError> {
    let Some(m) = read_marker(marker)? else {
        return Ok(Vec::new());
    };
    if m.files.iter().any(|f| f.made.is_some()) {
        undo_made(marker, &m)?;
        return Ok(Vec::new());
    }
    let mut put_back = Vec::new();
    for f in &m.files {
        let Some(keep) = &f.previous_kept_as else {
            continue;
        };
        if fs::symlink_metadata(keep).is_err() {
            continue;
        }
        swap::swap_back(&f.live, keep).map_err(|cause| RestoreError::Interrupted {
            marker: marker.to_path_buf(),
            cause,
        })?;
        put_back.push(f.live.clone());
    }
    remove_marker(marker);
    Ok(put_back)
}

/// One line for a job of `db` while an interrupted restore's marker is beside its file.
pub(crate) fn interrupted(db: &Database) -> Option<String> {
    let main = live_file(&db.path).ok()?;
    let marker = marker_path(&main);
    fs::symlink_metadata(&marker).ok()?;
    let to = read_marker(&marker)
        .ok()
        .flatten()
        .is_some_and(|m| m.files.iter().any(|f| f.made.is_some()));
    Some(if to {
        format!(
            "{}: a restore --to of {:?}'s files to this path was interrupted between them, the set may be incomplete; run the same restore --to again (it removes the files it made first), or remove them and this file by hand",
            marker.display(),
            db.name
        )
    } else {
        format!(
            "{}: a restore of {:?} in place was interrupted between its files, some are restored and some not; run the restore again (it first puts back the previous files this file lists), or put them back by hand as it says",
            marker.display(),
            db.name
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a restore killed between its two swaps leaves: the first file restored (its
    /// previous one kept, with its WAL), the second untouched, and the marker.
    #[test]
    fn recover_puts_back_what_a_killed_restore_had_swapped() {
        let dir = tempfile::tempdir().unwrap();
        let (main, att) = (dir.path().join("app.db"), dir.path().join("files.db"));
        let keeps = [
            dir.path().join("app.db.pre-restore-x"),
            dir.path().join("files.db.pre-restore-x"),
        ];
        fs::write(&main, b"old main").unwrap();
        fs::write(swap::side(&main, "-wal"), b"old wal").unwrap();
        fs::write(&att, b"old attached").unwrap();
        let targets: Vec<Target> = [&main, &att]
            .iter()
            .map(|p| Target {
                path: p.to_path_buf(),
                seen: Seen::default(),
                forced_not_whole: None,
            })
            .collect();
        let marker = write_marker("app", &targets, &keeps).unwrap();
        let tmp = dir.path().join(".app.db.litekeeper-tmp");
        fs::write(&tmp, b"restored main").unwrap();
        swap::swap_in(&tmp, &main, &keeps[0]).unwrap();
        assert_eq!(fs::read(&main).unwrap(), b"restored main");
        // Killed here. The next restore puts the set back as it was.
        assert_eq!(recover(&marker).unwrap(), vec![main.clone()]);
        assert_eq!(fs::read(&main).unwrap(), b"old main");
        assert_eq!(fs::read(swap::side(&main, "-wal")).unwrap(), b"old wal");
        assert_eq!(fs::read(&att).unwrap(), b"old attached");
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["app.db", "app.db-wal", "files.db"]);
    }
}
