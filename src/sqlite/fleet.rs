//! Fleet members' connections: one per run, without a pool, and the verified open that
//! checks SQLite holds the very file the scan found.

use std::path::Path;
use std::time::Duration;

use rusqlite::{ffi, Connection, OpenFlags};

use super::{init_connection, manager, open_flags, uri, ConnSettings};
use crate::config::Database;

/// One connection for one run (fleet members), opened on the calling thread with the settings
/// of a pooled one and closed when dropped: a fleet has thousands of members, and r2d2 opens
/// connections on its shared upkeep thread, where one locked database would hold up the rest.
pub(crate) fn connect_once(
    db: &Database,
    busy_timeout: Duration,
) -> Result<Connection, rusqlite::Error> {
    use r2d2::ManageConnection;
    manager(db, busy_timeout).connect()
}

/// Why `connect_verified` gave no connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VerifiedOpenError {
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
pub(crate) fn connect_verified(
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
    let got = file_id(&conn, "main").ok_or_else(|| {
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

/// Device and inode of the file SQLite holds open as `schema` (`main` or an attachment's
/// alias): its own descriptor (`wal::handles`), `fstat`ed. None for another VFS than the
/// default `unix`, and for a schema not open.
pub(crate) fn file_id(conn: &Connection, schema: &str) -> Option<crate::config::FileId> {
    let h = super::wal::handles(conn, schema)?;
    let st = rustix::fs::fstat(h.db).ok()?;
    Some(crate::config::FileId {
        dev: st.st_dev,
        ino: st.st_ino,
    })
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
            file_id(&conn, "main"),
            Some(crate::config::FileId {
                dev: m.dev(),
                ino: m.ino()
            })
        );
    }
}
