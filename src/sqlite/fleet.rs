//! Fleet members' connections: one per run, without a pool, and the verified open that
//! checks SQLite holds the very file the scan found.

use std::ffi::{c_int, c_void, CStr};
use std::path::Path;
use std::time::Duration;

use rusqlite::{ffi, Connection, OpenFlags};

use super::{init_connection, manager, open_flags, uri, ConnSettings};
use crate::config::Database;

/// One connection for one run (fleet members), opened on the calling thread with the settings
/// of a pooled one and closed when dropped: a fleet has thousands of members, and r2d2 opens
/// connections on its shared upkeep thread, where one locked database would hold up the rest.
pub fn connect_once(db: &Database, busy_timeout: Duration) -> Result<Connection, rusqlite::Error> {
    use r2d2::ManageConnection;
    manager(db, busy_timeout).connect()
}

/// Why `connect_verified` gave no connection.
#[derive(Debug, thiserror::Error)]
pub enum VerifiedOpenError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// SQLite opened another file than the one checked (or a path with a symlink in it).
    #[error("{0}")]
    NotTheFile(String),
}

/// A fleet member's connection to the very file `expect` names (device and inode from the
/// scan, checked again by the caller's walk): opened by `path` with `SQLITE_OPEN_NOFOLLOW`, so
/// SQLite refuses a symlink anywhere on the path, then SQLite's own file descriptor is
/// `fstat`ed and compared with `expect` — a directory swapped for a link between the walk and
/// the open cannot hand it another file. Only then are the settings applied (the switch to
/// WAL is the first write). Closed when dropped, like `connect_once`.
pub fn connect_verified(
    db: &Database,
    path: &Path,
    expect: crate::config::FileId,
    busy_timeout: Duration,
) -> Result<Connection, VerifiedOpenError> {
    let mut conn = Connection::open_with_flags(
        uri(path, "rw"),
        open_flags() | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(|e| match e.sqlite_error() {
        Some(f) if f.extended_code == ffi::SQLITE_CANTOPEN_SYMLINK => {
            VerifiedOpenError::NotTheFile(format!(
                "{}: refused: a symlink is on its path now (there was none when the fleet was \
                 scanned); a fleet never follows one",
                db.path.display()
            ))
        }
        _ => VerifiedOpenError::Sqlite(e),
    })?;
    let got = main_file_id(&conn).ok_or_else(|| {
        VerifiedOpenError::NotTheFile(format!(
            "{}: refused: cannot tell which file SQLite opened",
            db.path.display()
        ))
    })?;
    if got != expect {
        return Err(VerifiedOpenError::NotTheFile(format!(
            "{}: refused: SQLite opened another file than the one the fleet's scan found (it \
             was replaced or a directory on its path was swapped for a link while opening)",
            db.path.display()
        )));
    }
    // ATTACH inherits SQLITE_OPEN_NOFOLLOW: attachments by their resolved directory (the
    // caller refused a symlink below their template's fixed part; one above it is the
    // operator's).
    let mut settings = ConnSettings::for_database(db, busy_timeout);
    for (_, p) in &mut settings.attach {
        if let (Some(dir), Some(name)) = (p.parent(), p.file_name()) {
            if let Ok(real) = std::fs::canonicalize(dir) {
                *p = real.join(name);
            }
        }
    }
    init_connection(&mut conn, &settings)?;
    Ok(conn)
}

/// Device and inode of the file SQLite holds open as `main`: its descriptor, read from the
/// unix VFS's file object (`SQLITE_FCNTL_FILE_POINTER`; the descriptor `h` follows three
/// pointers in `struct unixFile` — the bundled SQLite is the one we build, and a unit test
/// checks the layout against a file we know). None for another VFS.
fn main_file_id(conn: &Connection) -> Option<crate::config::FileId> {
    use std::os::fd::BorrowedFd;
    let mut vfs: *mut ffi::sqlite3_vfs = std::ptr::null_mut();
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: the connection is open; both file controls write one pointer to their argument.
    unsafe {
        let db = conn.handle();
        let main = c"main".as_ptr();
        if ffi::sqlite3_file_control(
            db,
            main,
            ffi::SQLITE_FCNTL_VFS_POINTER,
            (&raw mut vfs).cast(),
        ) != ffi::SQLITE_OK
            || vfs.is_null()
            || CStr::from_ptr((*vfs).zName).to_bytes() != b"unix"
        {
            return None;
        }
        if ffi::sqlite3_file_control(
            db,
            main,
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&raw mut file).cast(),
        ) != ffi::SQLITE_OK
            || file.is_null()
            || (*file).pMethods.is_null()
        {
            return None;
        }
        let h = *(file.cast::<u8>())
            .add(3 * std::mem::size_of::<*const c_void>())
            .cast::<c_int>();
        if h < 0 {
            return None;
        }
        let st = rustix::fs::fstat(BorrowedFd::borrow_raw(h)).ok()?;
        Some(crate::config::FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_file_id_is_that_of_the_opened_file() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.db");
        Connection::open(&p)
            .unwrap()
            .execute_batch("CREATE TABLE t(x)")
            .unwrap();
        // Another open file first, so the descriptor is not simply the lowest free one.
        let _other = std::fs::File::open(dir.path()).unwrap();
        let conn = Connection::open(&p).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(
            main_file_id(&conn),
            Some(crate::config::FileId {
                dev: m.dev(),
                ino: m.ino()
            })
        );
    }
}
