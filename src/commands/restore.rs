//! `litekeeper restore DB [BACKUP] [--to PATH | --in-place [--force]]`: restore from a backup
//! only after its SHA-256 (from the manifest) and its integrity check pass.
//!
//! The restored file is always written under a temp name in the target directory, fsynced,
//! checked, and renamed into place. `--in-place` holds the database's lock, refuses while other
//! processes have the database open (unless `--force`), keeps the current file and its WAL as
//! `<db>.pre-restore-<time>` (+ `-wal`), removes the stale `-shm`, and checks the result.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::archive::{self, BackupName, Manifest, Verified};
use crate::cli::RestoreArgs;
use crate::config::Database;
use crate::exit::{ExitCode, Failure, OrExit};
use crate::jobs::backup::{human_bytes, sources};
use crate::lock::{self, LockError};

fn fail(code: ExitCode, msg: String) -> Failure {
    Failure::new(code, anyhow::anyhow!(msg))
}

pub fn run(path: &Path, args: RestoreArgs) -> Result<ExitCode, Failure> {
    let config = super::load_config(path)?;
    let db = config
        .database(&args.database)
        .ok_or_else(|| {
            fail(
                ExitCode::Usage,
                format!(
                    "no database named {:?} in {}",
                    args.database,
                    config.file.display()
                ),
            )
        })?
        .clone();
    let backup_cfg = db.backup.as_ref().ok_or_else(|| {
        fail(
            ExitCode::Config,
            format!(
                "database {:?} has no [database.backup] section, so it has no backups",
                db.name
            ),
        )
    })?;
    let dir = &backup_cfg.dir;
    let manifest = Manifest::load(dir).or_exit(ExitCode::DataErr)?;
    let (name, file) = pick_backup(&db, dir, &manifest, args.backup.as_deref())?;
    let entry = manifest.get(&file).ok_or_else(|| {
        fail(
            ExitCode::DataErr,
            format!(
                "{}: not in {}/manifest.json, so its checksum cannot be verified; refusing",
                dir.join(&file).display(),
                dir.display()
            ),
        )
    })?;
    let backup_path = dir.join(&file);
    let sha = archive::sha256_file(&backup_path).or_exit(ExitCode::NoInput)?;
    if sha != entry.sha256 {
        return Err(fail(
            ExitCode::DataErr,
            format!(
                "{}: checksum mismatch (SHA-256 {}…, manifest says {}…): the backup is damaged; pick another with `litekeeper backups list {}`",
                backup_path.display(),
                &sha[..12],
                &entry.sha256[..12.min(entry.sha256.len())],
                db.name
            ),
        ));
    }
    // Which live file this backup belongs to (the main database or an attachment).
    let source = sources(&db)
        .into_iter()
        .find(|s| s.series == name.series)
        .ok_or_else(|| {
            fail(
                ExitCode::Usage,
                format!("{file}: belongs to no file of database {:?}", db.name),
            )
        })?;

    let target = match (&args.to, args.in_place) {
        (Some(to), false) => absolute(to)?,
        (None, true) => source.path.clone(),
        _ => {
            return Err(fail(
                ExitCode::Usage,
                "say where to restore: --to NEW_PATH (safe, the default choice) or --in-place"
                    .into(),
            ))
        }
    };
    let target_dir = target.parent().unwrap_or(Path::new("/")).to_path_buf();
    if !target_dir.is_dir() {
        return Err(fail(
            ExitCode::CantCreate,
            format!("{}: directory does not exist", target_dir.display()),
        ));
    }
    if !args.in_place && target.exists() {
        return Err(fail(
            ExitCode::CantCreate,
            format!(
                "{}: already exists; restore --to a new path",
                target.display()
            ),
        ));
    }

    // The lock first for in-place: no job may run on the database while it is replaced.
    let _guard = if args.in_place {
        match lock::try_acquire(&config.daemon.lock_dir, &db.name, "restore") {
            Ok(g) => Some(g),
            Err(LockError::Busy { database, holder }) => {
                return Err(fail(
                    ExitCode::TempFail,
                    format!("database {database:?} is busy, {holder}; retry when it is done"),
                ))
            }
            Err(e) => return Err(Failure::new(ExitCode::CantCreate, e)),
        }
    } else {
        None
    };
    if args.in_place && !args.force {
        let users = open_by_others(&target);
        if !users.is_empty() {
            return Err(fail(
                ExitCode::TempFail,
                format!(
                    "{}: open by other processes (pid {}); stop the application first, or pass --force",
                    target.display(),
                    users.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }

    let target_name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("restore.db");
    // Room for the restored file (its uncompressed size; the manifest knows the pages).
    let need = if name.compressed {
        entry.page_count * entry.page_size
    } else {
        entry.size
    };
    let free = archive::free_bytes(&target_dir).or_exit(ExitCode::IoErr)?;
    if free < need {
        return Err(fail(
            ExitCode::CantCreate,
            format!(
                "{}: not enough free space to restore: needs {}, {} free; free some space or restore --to a larger file system. Nothing was written",
                target_dir.display(),
                human_bytes(need),
                human_bytes(free)
            ),
        ));
    }
    let tmp = archive::temp_path(&target_dir, target_name);
    let _ = fs::remove_file(&tmp);
    let cleanup = TempFile(tmp.clone());
    write_plain(&backup_path, name.compressed, &tmp)?;
    if args.in_place {
        if let Ok(meta) = fs::metadata(&target) {
            // The restored file keeps the live file's owner and mode.
            let _ = fs::set_permissions(&tmp, fs::Permissions::from_mode(meta.mode() & 0o7777));
            if crate::paths::is_root() {
                let _ = std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()));
            }
        }
    }
    archive::fsync_file(&tmp).or_exit(ExitCode::IoErr)?;
    check(&tmp).map_err(|why| {
        fail(
            ExitCode::DataErr,
            format!(
                "{}: {why}; the backup is damaged, nothing was changed",
                backup_path.display()
            ),
        )
    })?;

    if args.in_place {
        let side = |p: &Path, s: &str| PathBuf::from(format!("{}{s}", p.display()));
        let keep = keep_path(&target);
        if target.exists() && side(&target, "-wal").exists() {
            // Fold the old WAL into the old file first: the stale WAL is removed below, and a
            // process killed between that and the final rename must not leave the old file
            // without transactions that lived only in its WAL. (Best effort: a damaged
            // database being replaced may refuse, and its kept copy has the WAL anyway.)
            if let Ok(c) = Connection::open_with_flags(&target, OpenFlags::SQLITE_OPEN_READ_WRITE) {
                let _ = c.busy_timeout(std::time::Duration::from_secs(5));
                let _ = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            }
        }
        if target.exists() {
            // Linked, not moved: the live name keeps the old database until the one rename
            // below replaces it, so a process killed at any point leaves there either the old
            // database or the restored one.
            link_or_move(&target, &keep).or_exit(ExitCode::IoErr)?;
            // The WAL belongs to the old file: keep it with it so that copy stays complete.
            if side(&target, "-wal").exists() {
                link_or_move(&side(&target, "-wal"), &side(&keep, "-wal"))
                    .or_exit(ExitCode::IoErr)?;
            }
        }
        let _ = fs::remove_file(side(&target, "-shm"));
        let _ = fs::remove_file(side(&target, "-wal"));
        fs::rename(&tmp, &target).or_exit(ExitCode::IoErr)?;
        archive::fsync_dir(&target_dir).or_exit(ExitCode::IoErr)?;
        std::mem::forget(cleanup);
        check(&target).map_err(|why| {
            fail(
                ExitCode::DataErr,
                format!("{}: restored file fails its check: {why}", target.display()),
            )
        })?;
        println!(
            "restored {} into {} (verified {}); previous file kept as {}",
            file,
            target.display(),
            verified_word(entry.verified),
            keep.display()
        );
    } else {
        archive::commit(&tmp, &target).or_exit(ExitCode::CantCreate)?;
        std::mem::forget(cleanup);
        println!(
            "restored {} to {} (verified {})",
            file,
            target.display(),
            verified_word(entry.verified)
        );
    }
    Ok(ExitCode::Ok)
}

/// `<db>.pre-restore-<time>`, with `-2`, `-3`… when a restore in the same second kept one.
fn keep_path(target: &Path) -> PathBuf {
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    let base = format!("{}.pre-restore-{stamp}", target.display());
    let taken = |p: &str| Path::new(p).exists() || Path::new(&format!("{p}-wal")).exists();
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
fn link_or_move(from: &Path, to: &Path) -> io::Result<()> {
    match fs::hard_link(from, to) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => fs::rename(from, to),
        other => other,
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

fn absolute(p: &Path) -> Result<PathBuf, Failure> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir().or_exit(ExitCode::IoErr)?.join(p))
    }
}

/// The backup to restore: the one named, or the newest verified one of the main database.
fn pick_backup(
    db: &Database,
    dir: &Path,
    manifest: &Manifest,
    wanted: Option<&str>,
) -> Result<(BackupName, String), Failure> {
    let found = archive::list_of(dir, manifest, &db.name).or_exit(ExitCode::NoInput)?;
    if let Some(w) = wanted {
        let w = Path::new(w)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(w);
        return found
            .into_iter()
            .find(|f| f.path.file_name().and_then(|n| n.to_str()) == Some(w))
            .map(|f| (f.name, w.to_string()))
            .ok_or_else(|| {
                fail(
                    ExitCode::NoInput,
                    format!(
                        "{}: no backup named {w:?}; see `litekeeper backups list {}`",
                        dir.display(),
                        db.name
                    ),
                )
            });
    }
    let main_series = sources(db).remove(0).series;
    found
        .into_iter()
        .filter(|f| f.name.series == main_series && !f.name.failed)
        .find_map(|f| {
            let file = f.path.file_name()?.to_str()?.to_string();
            let entry = manifest.get(&file)?;
            matches!(entry.verified, Verified::Quick | Verified::Full).then_some((f.name, file))
        })
        .ok_or_else(|| {
            fail(
                ExitCode::NoInput,
                format!(
                    "{}: no verified backup of {:?} to restore",
                    dir.display(),
                    db.name
                ),
            )
        })
}

/// Copy (or decompress) the backup into the new file `tmp`, mode 0600.
fn write_plain(from: &Path, compressed: bool, tmp: &Path) -> Result<(), Failure> {
    let mut out = archive::create_private(tmp).or_exit(ExitCode::CantCreate)?;
    let input = File::open(from).or_exit(ExitCode::NoInput)?;
    let mut reader: Box<dyn Read> = if compressed {
        Box::new(zstd::stream::Decoder::new(input).map_err(|e| {
            fail(
                ExitCode::DataErr,
                format!("{}: cannot read the backup: {e}", from.display()),
            )
        })?)
    } else {
        Box::new(input)
    };
    // Reading and writing fail for different reasons: a damaged backup, or a full disk.
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(|e| {
            fail(
                ExitCode::DataErr,
                format!("{}: cannot read the backup: {e}", from.display()),
            )
        })?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(|e| write_failed(tmp, e))?;
    }
    out.sync_all().map_err(|e| write_failed(tmp, e))?;
    Ok(())
}

fn write_failed(tmp: &Path, e: io::Error) -> Failure {
    let dir = tmp.parent().unwrap_or(Path::new("/"));
    let hint = if e.raw_os_error() == Some(libc::ENOSPC) {
        "; free some space or restore --to a larger file system"
    } else {
        ""
    };
    fail(
        ExitCode::IoErr,
        format!(
            "{}: cannot write the restored copy: {e}{hint}. Nothing was put in place",
            dir.display()
        ),
    )
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

/// Pids (other than ours) with the database or its -wal/-shm open, from /proc.
fn open_by_others(db: &Path) -> Vec<u32> {
    let names: Vec<PathBuf> = ["", "-wal", "-shm"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", db.display())))
        .collect();
    let me = std::process::id();
    let mut pids = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return pids;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|l| names.contains(&l)))
        {
            pids.push(pid);
        }
    }
    pids
}

/// Deletes the temp file unless forgotten.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}
