//! Why a database cannot be used and what to do about it: the preflight before an open,
//! and the findings `check` prints.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use rustix::fs::Access;

use super::{open_flags, uri};
use crate::exit::ExitCode;

/// How bad a finding is: errors make `check` exit 1, warnings are advice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One thing `diagnose` found, with the exit code a job would fail with.
#[derive(Debug, Clone)]
pub struct Finding {
    pub severity: Severity,
    pub code: ExitCode,
    /// What is wrong, naming the path.
    pub what: String,
    /// What to do about it.
    pub fix: String,
}

impl Finding {
    fn error(code: ExitCode, what: String, fix: impl Into<String>) -> Self {
        Finding {
            severity: Severity::Error,
            code,
            what,
            fix: fix.into(),
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.what, self.fix)
    }
}

/// access(2): may the real user (and group) read, write or search `path`.
fn access(path: &Path, mode: Access) -> bool {
    rustix::fs::access(path, mode).is_ok()
}

use crate::db_files::DbFiles;

/// Refuse a sidecar (`-wal`, `-shm`, `-journal`) that exists but is not a regular file: SQLite
/// would open a FIFO there and block forever, lock held, deaf to SIGTERM. Looked at with
/// lstat, nothing is opened. Run right before SQLite opens `path`.
pub(super) fn refuse_special_sidecars(path: &Path) -> Result<(), Finding> {
    for (suffix, p) in DbFiles::of(path).sidecars() {
        match crate::safe_fs::special_file_at(p) {
            Ok(None) => {}
            Ok(Some(kind)) => {
                return Err(Finding::error(
                    ExitCode::NoInput,
                    format!(
                        "{}: not a regular file ({kind}) where SQLite keeps the database's {suffix} file; refusing to open the database (SQLite would block on it)",
                        p.display()
                    ),
                    "remove it; SQLite creates its -wal, -shm and -journal files itself",
                ))
            }
            Err(e) => {
                return Err(Finding::error(
                    ExitCode::IoErr,
                    format!("{}: cannot stat: {e}", p.display()),
                    "check the directory's permissions and the disk",
                ))
            }
        }
    }
    Ok(())
}

/// Cheap checks on the file system only: directory, file, permissions, header, and that no
/// special file sits where SQLite keeps the sidecars. Jobs run these before taking a
/// connection so a broken setup fails fast with a clear reason; nothing here can block.
pub(crate) fn preflight(path: &Path) -> Result<(), Finding> {
    let shown = path.display();
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        return Err(Finding::error(
            ExitCode::NoInput,
            format!("{shown}: directory {} does not exist", dir.display()),
            "create it, or correct `path` in the configuration",
        ));
    }
    if !access(dir, Access::WRITE_OK | Access::EXEC_OK) {
        return Err(Finding::error(
            ExitCode::NoInput,
            format!(
                "{shown}: no write permission on directory {} (WAL mode creates the -wal and -shm files there)",
                dir.display()
            ),
            "run litekeeper as the database's owner, or grant that user write access to the directory",
        ));
    }
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Finding::error(
                ExitCode::NoInput,
                format!("{shown}: database file does not exist"),
                "correct `path`; litekeeper never creates databases",
            ))
        }
        Err(e) => {
            return Err(Finding::error(
                ExitCode::IoErr,
                format!("{shown}: cannot stat: {e}"),
                "check the path and the disk",
            ))
        }
    };
    if !meta.is_file() {
        use std::os::unix::fs::MetadataExt;
        let kind = crate::safe_fs::describe(rustix::fs::FileType::from_raw_mode(meta.mode()));
        return Err(Finding::error(
            ExitCode::NoInput,
            format!("{shown}: not a regular file ({kind})"),
            "point `path` at the database file itself",
        ));
    }
    refuse_special_sidecars(path)?;
    // Read and write are told apart: the fix differs (a read-only file may be deliberate).
    let who = || {
        use std::os::unix::fs::MetadataExt;
        let me = rustix::process::geteuid().as_raw();
        format!(
            "mode {:04o}, owner uid {}, litekeeper runs as uid {me}",
            meta.mode() & 0o7777,
            meta.uid()
        )
    };
    if !access(path, Access::READ_OK) {
        return Err(Finding::error(
            ExitCode::NoInput,
            format!("{shown}: no read permission on the file ({})", who()),
            "run litekeeper as the database's owner, or grant that user read and write access",
        ));
    }
    if !access(path, Access::WRITE_OK) {
        return Err(Finding::error(
            ExitCode::NoInput,
            format!(
                "{shown}: no write permission on the file ({}); prune, vacuum and the switch to WAL need it",
                who()
            ),
            "run litekeeper as the database's owner, or grant that user write access",
        ));
    }
    if meta.len() == 0 {
        return Err(Finding::error(
            ExitCode::DataErr,
            format!("{shown}: file is empty (0 bytes), not an application database"),
            "correct `path`, or let the application create its database first",
        ));
    }
    let header = read_header::<16>(path).map_err(|e| {
        Finding::error(
            ExitCode::IoErr,
            format!("{shown}: cannot read: {e}"),
            "check the disk (dmesg) and the file",
        )
    })?;
    if &header != b"SQLite format 3\0" {
        return Err(Finding::error(
            ExitCode::DataErr,
            format!("{shown}: not an SQLite database (bad file header)"),
            "correct `path`; if this was the database, restore it from a backup",
        ));
    }
    Ok(())
}

/// The first `N` bytes of the database file at `path`, read through SQLite's own unix VFS.
///
/// Why not `File::open`: SQLite's locks are POSIX record locks, which belong to the process and
/// are ALL dropped when the process closes ANY descriptor of the file. A daemon's pooled
/// connection in WAL mode holds a SHARED lock on the database between jobs; a plain open and
/// close here would drop it, the app's last connection would then believe itself alone,
/// checkpoint and delete the `-wal` and `-shm` under our connection. The VFS keeps a
/// descriptor whose inode still has locks open (and reuses it) instead of closing it.
fn read_header<const N: usize>(path: &Path) -> std::io::Result<[u8; N]> {
    use rusqlite::ffi;
    use std::ffi::{c_char, c_int, CString};
    use std::os::unix::ffi::OsStrExt;
    let failed =
        |what: &str, rc: c_int| std::io::Error::other(format!("{what} (SQLite code {rc})"));
    let name = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path holds a NUL byte"))?;
    // SAFETY: the default VFS lives for the process; `sqlite3_vfs_find` initialises SQLite.
    let vfs = unsafe { ffi::sqlite3_vfs_find(std::ptr::null()) };
    if vfs.is_null() {
        return Err(std::io::Error::other("SQLite has no default VFS"));
    }
    // SAFETY: `vfs` is the registered default VFS; its function pointers are set.
    let (size, max_path, full_path, open) = unsafe {
        let v = &*vfs;
        (v.szOsFile, v.mxPathname, v.xFullPathname, v.xOpen)
    };
    let (Some(full_path), Some(open)) = (full_path, open) else {
        return Err(std::io::Error::other("SQLite's VFS cannot open files"));
    };
    // The name SQLite opens must outlive the file and end with extra NULs (URI parameters).
    let mut full = vec![0 as c_char; max_path as usize + 4];
    // SAFETY: `full` holds `mxPathname + 1` bytes as xFullPathname requires.
    let rc = unsafe { full_path(vfs, name.as_ptr(), max_path + 1, full.as_mut_ptr()) };
    // SQLITE_OK_SYMLINK (an extended OK) says a symlink was resolved: the path is good.
    if rc & 0xff != ffi::SQLITE_OK {
        return Err(failed("cannot resolve the path", rc));
    }
    // `sqlite3_file` objects are `szOsFile` bytes, pointer-aligned.
    let words = (size as usize).div_ceil(std::mem::size_of::<u64>()).max(1);
    let mut storage = vec![0u64; words];
    let file = storage.as_mut_ptr().cast::<ffi::sqlite3_file>();
    let flags = ffi::SQLITE_OPEN_READONLY | ffi::SQLITE_OPEN_MAIN_DB;
    let mut out_flags: c_int = 0;
    // SAFETY: `file` points to `szOsFile` zeroed bytes; `full` is NUL-terminated and lives
    // until after xClose below.
    let rc = unsafe { open(vfs, full.as_ptr(), file, flags, &mut out_flags) };
    // SAFETY: after xOpen, pMethods is null (nothing to close) or the file's methods.
    let methods = unsafe { (*file).pMethods };
    if rc != ffi::SQLITE_OK || methods.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    let mut header = [0u8; N];
    // SAFETY: the file is open; xRead writes at most N bytes into `header`; xClose is called
    // exactly once, then `storage` and `full` may go.
    let rc = unsafe {
        let m = &*methods;
        let rc = match m.xRead {
            Some(read) => read(file, header.as_mut_ptr().cast(), N as c_int, 0),
            None => ffi::SQLITE_IOERR,
        };
        if let Some(close) = m.xClose {
            close(file);
        }
        rc
    };
    drop(full);
    match rc {
        // A short read leaves the rest zero-filled: the caller compares with a known header.
        ffi::SQLITE_OK | ffi::SQLITE_IOERR_SHORT_READ => Ok(header),
        rc => Err(failed("cannot read", rc)),
    }
}

/// Translate an SQLite error into a finding that says why and what to do.
pub(super) fn explain(path: &Path, e: &rusqlite::Error, busy_timeout: Duration) -> Finding {
    use rusqlite::ErrorCode as C;
    let shown = path.display();
    let code = e.sqlite_error_code();
    match code {
        Some(C::DatabaseBusy) | Some(C::DatabaseLocked) => Finding::error(
            ExitCode::TempFail,
            format!(
                "{shown}: locked by another process for longer than busy_timeout ({})",
                humantime::format_duration(busy_timeout)
            ),
            "find the holder with `fuser -v` on the file; retry later or raise daemon.busy_timeout",
        ),
        Some(C::NotADatabase) => Finding::error(
            ExitCode::DataErr,
            format!("{shown}: not a database (or encrypted): {e}"),
            "correct `path`; if this was the database, restore it from a backup",
        ),
        Some(C::DatabaseCorrupt) => Finding::error(
            ExitCode::DataErr,
            format!("{shown}: database is corrupt: {e}"),
            "stop the application and restore the newest verified backup",
        ),
        Some(C::SystemIoFailure) | Some(C::DiskFull) => Finding::error(
            ExitCode::IoErr,
            format!("{shown}: I/O error: {e}"),
            "check the disk (dmesg, df) and the file system",
        ),
        Some(C::ReadOnly) | Some(C::PermissionDenied) | Some(C::CannotOpen) => Finding::error(
            ExitCode::NoInput,
            format!("{shown}: cannot open read-write: {e}"),
            "check owner and permissions of the file, its -wal/-shm files and its directory",
        ),
        _ => Finding::error(
            ExitCode::Failed,
            format!("{shown}: {e}"),
            "see the SQLite error above",
        ),
    }
}

/// A non-empty `-journal` beside the database starting with SQLite's journal magic.
pub(super) fn has_rollback_journal(path: &Path) -> bool {
    const MAGIC: [u8; 8] = [0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7];
    let mut head = [0u8; 8];
    crate::safe_fs::open_regular(&DbFiles::of(path).journal, false, false)
        .and_then(|mut f| f.read_exact(&mut head))
        .map(|_| head == MAGIC)
        .unwrap_or(false)
}

/// Full diagnosis of one database file for `check`: file system, open, integrity (quick_check),
/// write lock within the busy timeout, journal mode. Never creates or modifies anything.
pub(crate) fn diagnose(path: &Path, want_wal: bool, busy_timeout: Duration) -> Vec<Finding> {
    if let Err(f) = preflight(path) {
        return vec![f];
    }
    // Opening a database with a hot journal rolls the interrupted transaction back, which is a
    // change: `check` only reports it and leaves the recovery to the next job.
    if has_rollback_journal(path) {
        return vec![Finding {
            severity: Severity::Warning,
            code: ExitCode::Ok,
            what: format!(
                "{}: a rollback journal (-journal) is present: a transaction was interrupted (or is running right now); not checked further so nothing changes",
                path.display()
            ),
            fix: "the next job's open rolls the interrupted transaction back (SQLite's recovery); \
                  run `litekeeper check` again afterwards"
                .into(),
        }];
    }
    let conn = match Connection::open_with_flags(uri(path, "rw"), open_flags()) {
        Ok(c) => c,
        Err(e) => return vec![explain(path, &e, busy_timeout)],
    };
    let run = || -> rusqlite::Result<Vec<Finding>> {
        conn.busy_timeout(busy_timeout)?;
        let mut found = Vec::new();
        let check: Vec<String> = conn
            .prepare("PRAGMA quick_check(5)")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if check != ["ok"] {
            // One line per finding: SQLite's messages can contain newlines
            // ("*** in database main ***\nTree 2 page 71 …"), which would break `check`'s
            // "NAME: error: …" lines.
            let said: Vec<&str> = check
                .iter()
                .flat_map(|m| m.lines())
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            found.push(Finding::error(
                ExitCode::DataErr,
                format!(
                    "{}: database is corrupt: quick_check says {}",
                    path.display(),
                    said.join("; ")
                ),
                "stop the application and restore the newest verified backup",
            ));
            return Ok(found);
        }
        // Can we get the write lock within the timeout? (prune and vacuum need it)
        conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?;
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        if want_wal && !mode.eq_ignore_ascii_case("wal") {
            found.push(Finding {
                severity: Severity::Warning,
                code: ExitCode::Ok,
                what: format!("{}: journal mode is {mode}, not WAL", path.display()),
                fix: "litekeeper switches it to WAL on its first job (readers then never block \
                      writers); set journal_mode = \"keep\" to leave it"
                    .into(),
            });
        }
        Ok(found)
    };
    match run() {
        Ok(f) => f,
        Err(e) => vec![explain(path, &e, busy_timeout)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another process opens and closes the database; it deletes the `-wal` only when it could
    /// take an EXCLUSIVE lock, that is when it believed itself the last connection.
    fn other_process_opens_and_closes(path: &Path) -> String {
        let out = std::process::Command::new("sqlite3")
            .arg(path)
            .arg("SELECT count(*) FROM t;")
            .output()
            .expect("the sqlite3 CLI runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    #[test]
    fn preflight_keeps_the_locks_of_this_process_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "wal").unwrap();
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        // An idle connection in WAL mode holds a SHARED lock on the database file.
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        let wal = crate::db_files::sidecar(&path, "-wal");
        assert!(wal.exists());

        preflight(&path).unwrap();
        assert_eq!(other_process_opens_and_closes(&path), "1");
        assert!(
            wal.exists(),
            "the other process took our connection's place: it checkpointed and deleted the WAL"
        );
        // The connection still shares one WAL with the world: its write is seen outside.
        conn.execute("INSERT INTO t VALUES (2)", []).unwrap();
        assert_eq!(other_process_opens_and_closes(&path), "2");
    }

    #[test]
    fn preflight_reads_the_header_of_short_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.db");
        std::fs::write(&short, b"SQLite").unwrap();
        let e = preflight(&short).unwrap_err();
        assert!(
            e.what.contains("not an SQLite database (bad file header)"),
            "{e}"
        );
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        let e = preflight(&empty).unwrap_err();
        assert!(e.what.contains("file is empty (0 bytes)"), "{e}");
        let db = dir.path().join("ok.db");
        Connection::open(&db)
            .unwrap()
            .execute_batch("CREATE TABLE t(x)")
            .unwrap();
        preflight(&db).unwrap();
        // Through a symlinked directory (SQLite resolves it and says so with an extended OK).
        std::os::unix::fs::symlink(dir.path(), dir.path().join("link")).unwrap();
        preflight(&dir.path().join("link").join("ok.db")).unwrap();
    }
}
