//! `litekeeper restore DB [BACKUP | --at WHEN] [--from REMOTE] [--to PATH | --in-place [--force]]`:
//! picks the database and the mode, calls the `restore` library (which verifies the backup
//! and does the work) and prints what it did. `--at` restores the main database and each
//! attached one to the same point. An error leaves with the exit code
//! `RestoreError::exit_code` gives.

use std::path::Path;

use crate::archive::Verified;
use crate::cli::RestoreArgs;
use crate::exit::{ExitCode, Failure};
use crate::restore::{self, pid_list, BackupSource, InPlace, Recovered, RestoreError, Restored};

fn fail(code: ExitCode, msg: String) -> Failure {
    Failure::new(code, anyhow::anyhow!(msg))
}

/// The failure `main` prints for `e`; stale files moved aside before it are told on stdout,
/// as a successful restore tells them.
fn failure(e: RestoreError, in_place: bool) -> Failure {
    match e {
        RestoreError::AfterMovingAside { moved, inner } => {
            print_moved_aside(&moved, in_place);
            failure(*inner, in_place)
        }
        e => Failure::new(e.exit_code(), e),
    }
}

pub fn run(path: &Path, args: RestoreArgs) -> Result<ExitCode, Failure> {
    let config = super::load_config(path)?;
    let db = super::database_named(&config, &args.database)?;
    // Where to, decided before anything is fetched (`--to` and `--in-place` exclude each other).
    let to = match (&args.to, args.in_place) {
        (Some(to), false) => Some(to.as_path()),
        (None, true) => None,
        _ => {
            return Err(fail(
                ExitCode::Usage,
                "say where to restore: --to NEW_PATH (safe, the default choice) or --in-place"
                    .into(),
            ))
        }
    };
    let at = match &args.at {
        Some(at) => Some(
            restore::point::parse_at(at, &config.daemon.timezone)
                .map_err(|e| fail(ExitCode::Usage, e))?,
        ),
        None => None,
    };
    // From a remote: fetched and checked into a staging directory (removed at the end).
    let fetched = match &args.from {
        Some(remote) => Some(
            match at {
                Some(at) => {
                    restore::remote::fetch_at(&config, db, remote, at, args.identity.as_deref())
                }
                None => restore::remote::fetch(
                    &config,
                    db,
                    remote,
                    args.backup.as_deref(),
                    args.identity.as_deref(),
                ),
            }
            .map_err(|e| failure(e, false))?,
        ),
        None => None,
    };
    // The files to restore: one backup, or with --at the main database and each attached
    // one at the same point.
    let backups: Vec<BackupSource> = match &fetched {
        Some(f) => f.sources.clone(),
        None => match (at, args.backup.as_deref()) {
            (Some(at), _) => restore::point::select_at_all(db, at),
            (None, Some(file)) => match restore::point::select_delta(db, file) {
                Ok(Some(b)) => Ok(vec![b]),
                Ok(None) => restore::select(db, Some(file)).map(|b| vec![b]),
                Err(e) => Err(e),
            },
            (None, None) => restore::select(db, None).map(|b| vec![b]),
        }
        .map_err(|e| failure(e, false))?,
    };
    // With --to, an attached database goes beside the main one (`NEW-ALIAS.db`); every name
    // must be free before anything is written.
    let targets: Vec<Option<std::path::PathBuf>> = backups
        .iter()
        .enumerate()
        .map(|(i, b)| {
            to.map(|t| match i {
                0 => t.to_path_buf(),
                _ => restore::attached_target(t, &b.name.series),
            })
        })
        .collect();
    // An earlier restore to the same path, killed between its files: finished first.
    if let Some(Some(main)) = targets.first().filter(|_| backups.len() > 1) {
        finish_interrupted_to(main)?;
    }
    for (b, t) in backups.iter().zip(&targets) {
        if let Some(t) = t {
            restore::check_target(b, t).map_err(|e| failure(e, false))?;
        }
    }
    for b in &backups {
        if let Some(broken) = b.point.as_ref().and_then(|p| p.broken.as_ref()) {
            eprintln!(
                "litekeeper: warning: the chain to {} is broken at {} ({}); restoring the last good point before it, {}",
                broken.wanted,
                broken.link,
                broken.why,
                b.point.as_ref().map_or("", |p| p.file.as_str())
            );
        }
    }
    // All or nothing: every image is built and checked before any file is put in place.
    let restored = match to {
        Some(_) => {
            let to: Vec<&Path> = targets.iter().flatten().map(|t| t.as_path()).collect();
            restore::to_paths(&backups, &to).map_err(|e| failure(e, false))?
        }
        None => {
            let how = InPlace {
                lock_dir: &config.daemon.lock_dir,
                state_dir: &config.daemon.state_dir,
                force: args.force,
            };
            restore::in_place_all(&backups, how).map_err(|e| failure(e, true))?
        }
    };
    for (backup, r) in backups.iter().zip(&restored) {
        print_one(&config, &args, backup, r);
    }
    // A broken chain restored an earlier point than asked for: done, but not what was asked.
    if backups
        .iter()
        .any(|b| b.point.as_ref().is_some_and(|p| p.broken.is_some()))
    {
        return Ok(ExitCode::DataErr);
    }
    Ok(ExitCode::Ok)
}

/// An earlier `restore --to` of a set to `main`, killed between its files: undone (or, the
/// set being whole, its marker removed), and said so.
fn finish_interrupted_to(main: &Path) -> Result<(), Failure> {
    match restore::recover_to(main).map_err(|e| failure(e, false))? {
        Some(Recovered::Whole(marker)) => println!(
            "an earlier restore to {} was interrupted after its last file: the set is whole, removed {}",
            main.display(),
            marker.display()
        ),
        Some(Recovered::Removed(marker, removed)) => println!(
            "an earlier restore to {} was interrupted between its files: removed the files it had made ({}) and {}",
            main.display(),
            if removed.is_empty() {
                "none".to_string()
            } else {
                removed
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            marker.display()
        ),
        None => {}
    }
    Ok(())
}

/// Say what was done to one file of the set.
fn print_one(
    config: &crate::config::Config,
    args: &RestoreArgs,
    backup: &BackupSource,
    restored: &Restored,
) {
    if !restored.put_back_interrupted.is_empty() {
        println!(
            "an earlier restore was interrupted between its files: put back the previous {} first",
            restored
                .put_back_interrupted
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    print_moved_aside(&restored.moved_aside, args.in_place);
    if let Some(p) = backup.point.as_ref().filter(|p| p.image_sha256.is_some()) {
        println!(
            "point {} ({}, {} delta(s) after {}): image SHA-256 matches the manifest",
            p.file,
            config.daemon.timezone.format(p.time),
            p.deltas.len(),
            backup.file
        );
    }
    let verified = verified_word(backup.verified);
    if args.in_place {
        print_in_place_notes(restored);
        match &restored.kept {
            Some(keep) => println!(
                "restored {} into {} (verified {verified}); previous file kept as {}",
                backup.file,
                restored.target.display(),
                keep.display()
            ),
            None => println!(
                "restored {} into {} (verified {verified}); there was no previous file",
                backup.file,
                restored.target.display()
            ),
        }
    } else {
        println!(
            "restored {} to {} (verified {verified})",
            backup.file,
            restored.target.display()
        );
    }
}

/// Stale sidecars found without their database at the target, moved aside.
fn print_moved_aside(moved: &[(std::path::PathBuf, std::path::PathBuf)], in_place: bool) {
    let why = if in_place {
        "no database file beside it"
    } else {
        "not the restored database's"
    };
    for (from, to) in moved {
        println!(
            "moved a stale {} ({why}) aside to {}",
            from.display(),
            to.display()
        );
    }
}

/// What an in-place restore saw on its way: a symlinked path, a forced restore over a file
/// that was not whole, processes that had the old file open.
fn print_in_place_notes(r: &Restored) {
    if let Some(link) = &r.through_link {
        println!(
            "{} is a symlink: restored the file it points to, {} (the link is unchanged)",
            link.display(),
            r.target.display()
        );
    }
    if let Some(why) = &r.forced_not_whole {
        println!(
            "forced: the previous file was not whole by itself ({why}); its sidecar files are kept beside it"
        );
    }
    if r.seen.unchecked_root > 0 {
        println!(
            "not checked: {} process(es) of root (their open files are not readable as uid {}); run restore as root to check them too",
            r.seen.unchecked_root, r.seen.uid
        );
    }
    if !r.seen.ours.is_empty() {
        println!(
            "pid {} (litekeeper's own idle pooled connection) had the old file open: it reconnects to the restored file at its next job",
            pid_list(&r.seen.ours)
        );
    }
}

fn verified_word(v: Verified) -> &'static str {
    match v {
        Verified::Quick => "quick",
        Verified::Full => "full",
        Verified::None => "none at backup time; checked now",
        Verified::Failed => "failed",
    }
}
