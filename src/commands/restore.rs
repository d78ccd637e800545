//! `litekeeper restore DB [BACKUP] [--to PATH | --in-place [--force]]`: restore from a backup
//! only after its SHA-256 (from the manifest) and its integrity check pass.
//!
//! The restored file is always written under a temp name in the target directory, fsynced,
//! checked, and renamed into place. `--to` refuses an existing name (a symlink too), a sidecar
//! name, and the backup directory, and moves a stale `-wal`/`-shm`/`-journal` at the target
//! aside first (SQLite would replay a foreign WAL onto the restored file).
//!
//! `--in-place` restores the file the configured path points to (through a symlink), takes the
//! database's lock as the owner of `state_dir` (as `run` does), refuses while other processes
//! have the file open (by device and inode; unless `--force`), first makes the old file whole
//! (folds its WAL, rolls back a hot journal, as SQLite's next open would; refused if that
//! fails, unless `--force`), keeps it with its sidecars as `<db>.pre-restore-<time>`, removes
//! them from the live name, renames the restored file in, and puts the old one back if the
//! result fails its check. A killed restore's temp file is removed by the next restore and by
//! the next job of that database (`clean_leftovers`).

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
        (None, true) => live_file(&source.path)?,
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
    if !args.in_place {
        new_target(&target, &target_dir, dir)?;
    }

    // The lock first for in-place: no job may run on the database while it is replaced. Taken
    // as the service's user, so the lock file stays usable by every later job.
    let _guard = if args.in_place {
        let lock_dir = &config.daemon.lock_dir;
        let taken = crate::privileges::as_state_owner(&config.daemon.state_dir, || {
            lock::try_acquire(lock_dir, &db.name, "restore")
        })
        .or_exit(ExitCode::CantCreate)?;
        match taken {
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
    let mut notes = Vec::new();
    if args.in_place && !args.force {
        let open = open_by_others(&target);
        if !open.others.is_empty() {
            return Err(fail(
                ExitCode::TempFail,
                format!(
                    "{}: open by other processes (pid {}); stop the application first, or pass --force",
                    target.display(),
                    pid_list(&open.others)
                ),
            ));
        }
        if !open.unreadable.is_empty() {
            return Err(fail(
                ExitCode::TempFail,
                format!(
                    "{}: could not check whether other processes have it open: the open files of {} process(es) of other users who may open it are not readable as uid {} (pid {}); stop the application, then pass --force, or run restore as root",
                    target.display(),
                    open.unreadable.len(),
                    // SAFETY: getuid cannot fail.
                    unsafe { libc::getuid() },
                    pid_list(&open.unreadable)
                ),
            ));
        }
        if open.unreadable_root > 0 && !crate::paths::is_root() {
            notes.push(format!(
                "not checked: {} process(es) of root (their open files are not readable as uid {}); run restore as root to check them too",
                open.unreadable_root,
                // SAFETY: getuid cannot fail.
                unsafe { libc::getuid() }
            ));
        }
        if !open.ours.is_empty() {
            notes.push(format!(
                "pid {} (litekeeper's own idle pooled connection) had the old file open: it reconnects to the restored file at its next job",
                pid_list(&open.ours)
            ));
        }
    }
    let mut whole = Ok(());
    if args.in_place {
        // The old file must be whole by itself before its sidecars leave the live name.
        whole = settle(&target);
        if let Err(why) = &whole {
            if !args.force {
                return Err(fail(
                    if why.busy { ExitCode::TempFail } else { ExitCode::DataErr },
                    format!(
                        "{}: {}; it was not replaced. If the application is running, stop it first; if the file is damaged, pass --force to restore over it anyway (it is kept as {}.pre-restore-… with the journal or WAL that is left beside it)",
                        target.display(),
                        why.text,
                        target.display()
                    ),
                ));
            }
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
    remove_temp(&tmp);
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
        let keep = keep_path(&target);
        let kept = swap_in(&tmp, &target, &keep)?;
        std::mem::forget(cleanup);
        if let Err(why) = check(&target) {
            // Put the previous database back: a restore that fails leaves things as they were.
            let back = if kept {
                swap_back(&target, &keep)
            } else {
                Ok(())
            };
            return Err(fail(
                ExitCode::DataErr,
                match back {
                    Ok(()) => format!(
                        "{}: the restored file fails its check ({why}); the previous database is back in place",
                        target.display()
                    ),
                    Err(e) => format!(
                        "{}: the restored file fails its check ({why}), and putting the previous database back failed ({e}): it is {}",
                        target.display(),
                        keep.display()
                    ),
                },
            ));
        }
        if let Some(link) = (source.path != target).then_some(&source.path) {
            println!(
                "{} is a symlink: restored the file it points to, {} (the link is unchanged)",
                link.display(),
                target.display()
            );
        }
        if let Err(why) = &whole {
            println!(
                "forced: the previous file was not whole by itself ({}); its sidecar files are kept beside it",
                why.text
            );
        }
        for n in &notes {
            println!("{n}");
        }
        if kept {
            println!(
                "restored {} into {} (verified {}); previous file kept as {}",
                file,
                target.display(),
                verified_word(entry.verified),
                keep.display()
            );
        } else {
            println!(
                "restored {} into {} (verified {}); there was no previous file",
                file,
                target.display(),
                verified_word(entry.verified)
            );
        }
    } else {
        for (from, to) in move_aside_stale(&target)? {
            println!(
                "moved a stale {} (not the restored database's) aside to {}",
                from.display(),
                to.display()
            );
        }
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
    let taken = |p: &str| {
        ["", "-wal", "-journal"]
            .iter()
            .any(|s| fs::symlink_metadata(format!("{p}{s}")).is_ok())
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

/// The files beside a database that belong to it: SQLite reads them with it at every open.
const SIDECARS: [&str; 3] = ["-wal", "-shm", "-journal"];

fn side(p: &Path, s: &str) -> PathBuf {
    PathBuf::from(format!("{}{s}", p.display()))
}

/// The file an in-place restore replaces: the configured path, or, where that is a symlink,
/// the file it points to (the link stays; SQLite, too, keeps the sidecars beside the real
/// file). A dangling symlink is refused.
fn live_file(path: &Path) -> Result<PathBuf, Failure> {
    let real = resolve_link(path)?;
    // A FIFO or device there would hang SQLite's open, and is no database to replace.
    if fs::metadata(&real).is_ok_and(|m| !m.is_file()) {
        return Err(fail(
            ExitCode::NoInput,
            format!(
                "{}: not a regular file; move it away, then restore --in-place (or restore --to a new path)",
                real.display()
            ),
        ));
    }
    Ok(real)
}

fn resolve_link(path: &Path) -> Result<PathBuf, Failure> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => fs::canonicalize(path).map_err(|e| {
            fail(
                ExitCode::NoInput,
                format!(
                    "{}: a symlink to {}, which cannot be reached ({e}); restore --to a new path, or correct the link",
                    path.display(),
                    fs::read_link(path).unwrap_or_default().display()
                ),
            )
        }),
        _ => Ok(path.to_path_buf()),
    }
}

/// `--to PATH` must name a new file of its own: not an existing name (a symlink included,
/// dangling or not: the rename would replace the link), not a sidecar name of a database, and
/// not inside the backup directory (which only litekeeper's backups live in).
fn new_target(target: &Path, target_dir: &Path, backup_dir: &Path) -> Result<(), Failure> {
    let refuse = |why: String| {
        Err(fail(
            ExitCode::CantCreate,
            format!("{}: {why}", target.display()),
        ))
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

/// Move a stale `-wal`/`-shm`/`-journal` at the `--to` target aside (to `<name>.stale-<time>`),
/// before the restored file gets the name: SQLite would replay a foreign WAL or journal onto
/// it. Returns what was moved where.
fn move_aside_stale(target: &Path) -> Result<Vec<(PathBuf, PathBuf)>, Failure> {
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
        fs::rename(&from, &to).map_err(|e| {
            fail(
                ExitCode::CantCreate,
                format!(
                    "{}: stale, and cannot be moved aside ({e}); remove it or restore --to another path",
                    from.display()
                ),
            )
        })?;
        moved.push((from, to));
    }
    if !moved.is_empty() {
        archive::fsync_dir(target.parent().unwrap_or(Path::new("/"))).or_exit(ExitCode::IoErr)?;
    }
    Ok(moved)
}

/// Why the old file is not whole by itself.
struct Unsettled {
    busy: bool,
    text: String,
}

/// Make the live file whole by itself, as SQLite's next open would: fold its WAL into it and
/// roll back a hot journal (an interrupted transaction). Its sidecars can then leave the live
/// name without taking committed data with them, and never meet the restored file.
fn settle(target: &Path) -> Result<(), Unsettled> {
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

/// Put the restored `tmp` at `target`, keeping the old file with its WAL and journal as `keep`
/// (linked, not moved: the live name keeps the old database until the one rename replaces
/// it, so a kill at any point leaves there the old database or the restored one). The old
/// sidecars leave the live name before the rename: SQLite would read them with the new file.
/// True when there was an old file.
fn swap_in(tmp: &Path, target: &Path, keep: &Path) -> Result<bool, Failure> {
    let dir = target.parent().unwrap_or(Path::new("/"));
    let old = fs::symlink_metadata(target).is_ok();
    if old {
        link_or_move(target, keep).or_exit(ExitCode::IoErr)?;
        for s in ["-wal", "-journal"] {
            if fs::symlink_metadata(side(target, s)).is_ok() {
                link_or_move(&side(target, s), &side(keep, s)).or_exit(ExitCode::IoErr)?;
            }
        }
        archive::fsync_dir(dir).or_exit(ExitCode::IoErr)?;
    } else {
        // No database here now: sidecars left by one that was are kept aside, not deleted.
        for (from, to) in move_aside_stale(target)? {
            println!(
                "moved a stale {} (no database file beside it) aside to {}",
                from.display(),
                to.display()
            );
        }
    }
    for s in SIDECARS {
        match fs::remove_file(side(target, s)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(fail(
                    ExitCode::IoErr,
                    format!(
                        "{}: cannot remove it ({e}); nothing was replaced, the previous file is also kept as {}",
                        side(target, s).display(),
                        keep.display()
                    ),
                ))
            }
            _ => {}
        }
    }
    fs::rename(tmp, target).or_exit(ExitCode::IoErr)?;
    archive::fsync_dir(dir).or_exit(ExitCode::IoErr)?;
    Ok(old)
}

/// Undo `swap_in`: the kept file and its sidecars back under the live name.
fn swap_back(target: &Path, keep: &Path) -> io::Result<()> {
    for s in SIDECARS {
        let _ = fs::remove_file(side(target, s));
    }
    for s in ["-wal", "-journal"] {
        if fs::symlink_metadata(side(keep, s)).is_ok() {
            fs::rename(side(keep, s), side(target, s))?;
        }
    }
    fs::rename(keep, target)?;
    File::open(target.parent().unwrap_or(Path::new("/")))?.sync_all()
}

/// Remove a temp file and the journals SQLite may have made beside it.
fn remove_temp(tmp: &Path) -> Vec<PathBuf> {
    ["", "-journal", "-wal", "-shm"]
        .iter()
        .map(|s| side(tmp, s))
        .filter(|p| fs::remove_file(p).is_ok())
        .collect()
}

/// Remove what a killed in-place restore of `db` left beside its files (the full-size temp
/// file `.<name>.litekeeper-tmp` and its journals). Call with the database's lock held: only
/// an in-place restore, under that lock, writes these names.
pub fn clean_leftovers(db: &Database) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for s in sources(db) {
        let real = fs::canonicalize(&s.path).unwrap_or_else(|_| s.path.clone());
        for p in [&s.path, &real] {
            let (Some(dir), Some(name)) = (p.parent(), p.file_name().and_then(|n| n.to_str()))
            else {
                continue;
            };
            removed.extend(remove_temp(&archive::temp_path(dir, name)));
        }
    }
    for p in &removed {
        tracing::info!("removed {}, left by a killed restore", p.display());
    }
    removed
}

fn pid_list(pids: &[u32]) -> String {
    let mut shown: Vec<String> = pids.iter().take(10).map(|p| p.to_string()).collect();
    if pids.len() > 10 {
        shown.push(format!("and {} more", pids.len() - 10));
    }
    shown.join(", ")
}

/// Who has a database file open, from /proc.
#[derive(Default)]
struct Openers {
    /// Other processes with the file or a sidecar open.
    others: Vec<u32>,
    /// litekeeper processes (the daemon's idle pooled connection; its pool reconnects when
    /// the file behind the path changes).
    ours: Vec<u32>,
    /// Processes whose open files we may not read (other users', when not root) and whose
    /// user could open the database (by its mode bits).
    unreadable: Vec<u32>,
    /// Processes of root whose open files we may not read (root can open anything).
    unreadable_root: usize,
}

/// The effective user and groups of `pid`, from `/proc/PID/status` (readable by anyone).
fn proc_ids(pid: u32) -> Option<(u32, Vec<u32>)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    // "Uid:	real	effective	saved	fs": the file-system ids decide what it may open.
    let uid = *field("Uid:").get(3)?;
    let mut groups = field("Gid:")
        .get(3)
        .into_iter()
        .copied()
        .collect::<Vec<_>>();
    groups.extend(field("Groups:"));
    Some((uid, groups))
}

/// The permission bits (rwx, 0..=7) of `meta` that apply to a process of `uid` in `groups`.
fn bits_for(meta: &fs::Metadata, uid: u32, groups: &[u32]) -> u32 {
    let mode = meta.mode();
    if uid == meta.uid() {
        (mode >> 6) & 7
    } else if groups.contains(&meta.gid()) {
        (mode >> 3) & 7
    } else {
        mode & 7
    }
}

/// Whether a (non-root) process of `uid` in `groups` may open `db` by this path: it may search
/// every directory above it and read or write the file.
fn may_open(db: &Path, meta: &fs::Metadata, uid: u32, groups: &[u32]) -> bool {
    let dirs_ok = db
        .ancestors()
        .skip(1)
        .filter(|d| !d.as_os_str().is_empty())
        .all(|d| fs::metadata(d).map_or(true, |m| bits_for(&m, uid, groups) & 1 != 0));
    dirs_ok && bits_for(meta, uid, groups) & 6 != 0
}

/// Processes (other than this one) with the database or its -wal/-shm/-journal open, found by
/// device and inode, so a symlinked directory, a hard link or another path to the same file
/// counts too.
fn open_by_others(db: &Path) -> Openers {
    let id = |m: fs::Metadata| (m.dev(), m.ino());
    let wanted: Vec<(u64, u64)> = std::iter::once(db.to_path_buf())
        .chain(SIDECARS.iter().map(|s| side(db, s)))
        .filter_map(|p| fs::metadata(p).ok().map(id))
        .collect();
    let db_meta = fs::metadata(db).ok();
    let me = std::process::id();
    let my_exe = fs::metadata("/proc/self/exe").ok().map(id);
    let my_name = fs::read_link("/proc/self/exe")
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let is_litekeeper = |pid: u32| {
        let exe = format!("/proc/{pid}/exe");
        if my_exe.is_some() && fs::metadata(&exe).ok().map(id) == my_exe {
            return true;
        }
        // The daemon of a binary replaced by an upgrade: "/usr/bin/litekeeper (deleted)".
        let name = fs::read_link(&exe)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        name.is_some_and(|n| Some(n.trim_end_matches(" (deleted)")) == my_name.as_deref())
    };
    let mut found = Openers::default();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let fds = match fs::read_dir(p.path().join("fd")) {
            Ok(fds) => fds,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                // Kernel threads (empty command line) open no files; other users' processes
                // matter when their user may open the database.
                if !fs::read(p.path().join("cmdline")).is_ok_and(|c| !c.is_empty()) {
                    continue;
                }
                match proc_ids(pid) {
                    Some((0, _)) => found.unreadable_root += 1,
                    Some((uid, groups))
                        if db_meta
                            .as_ref()
                            .is_none_or(|m| may_open(db, m, uid, &groups)) =>
                    {
                        found.unreadable.push(pid)
                    }
                    _ => {}
                }
                continue;
            }
            Err(_) => continue, // gone meanwhile
        };
        let has_it = fds
            .flatten()
            .any(|fd| fs::metadata(fd.path()).is_ok_and(|m| wanted.contains(&id(m))));
        if has_it {
            if is_litekeeper(pid) {
                found.ours.push(pid);
            } else {
                found.others.push(pid);
            }
        }
    }
    found
}

/// Deletes the temp file unless forgotten.
struct TempFile(PathBuf);

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
        assert!(swap_in(&tmp, &target, &keep).unwrap());
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
