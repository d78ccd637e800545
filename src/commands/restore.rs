//! `litekeeper restore DB [BACKUP] [--to PATH | --in-place [--force]]`: picks the database and
//! the mode, calls the `restore` library (which verifies the backup and does the work) and
//! prints what it did. An error leaves with the exit code `RestoreError::exit_code` gives.

use std::path::Path;

use crate::archive::Verified;
use crate::cli::RestoreArgs;
use crate::exit::{ExitCode, Failure};
use crate::restore::{self, pid_list, InPlace, RestoreError, Restored};

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
    // From a remote: fetched and checked into a staging directory (removed at the end).
    let fetched = match &args.from {
        Some(remote) => Some(
            restore::remote::fetch(
                &config,
                db,
                remote,
                args.backup.as_deref(),
                args.identity.as_deref(),
            )
            .map_err(|e| failure(e, false))?,
        ),
        None => None,
    };
    let backup = match &fetched {
        Some(f) => f.source.clone(),
        None => {
            let selected = match (&args.at, args.backup.as_deref()) {
                (Some(at), _) => {
                    let at = restore::point::parse_at(at, &config.daemon.timezone)
                        .map_err(|e| fail(ExitCode::Usage, e))?;
                    restore::point::select_at(db, at)
                }
                (None, Some(file)) => match restore::point::select_delta(db, file) {
                    Ok(Some(b)) => Ok(b),
                    Ok(None) => restore::select(db, Some(file)),
                    Err(e) => Err(e),
                },
                (None, None) => restore::select(db, None),
            }
            .map_err(|e| failure(e, false))?;
            selected
        }
    };
    if let Some(b) = backup.point.as_ref().and_then(|p| p.broken.as_ref()) {
        eprintln!(
            "litekeeper: warning: the chain to {} is broken at {} ({}); restoring the last good point before it, {}",
            b.wanted,
            b.link,
            b.why,
            backup.point.as_ref().map_or("", |p| p.file.as_str())
        );
    }
    let restored = match to {
        Some(to) => restore::to_path(&backup, to).map_err(|e| failure(e, false))?,
        None => {
            let how = InPlace {
                lock_dir: &config.daemon.lock_dir,
                state_dir: &config.daemon.state_dir,
                force: args.force,
            };
            restore::in_place(&backup, how).map_err(|e| failure(e, true))?
        }
    };
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
        print_in_place_notes(&restored);
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
    // A broken chain restored an earlier point than asked for: done, but not what was asked.
    if backup.point.as_ref().is_some_and(|p| p.broken.is_some()) {
        return Ok(ExitCode::DataErr);
    }
    Ok(ExitCode::Ok)
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
