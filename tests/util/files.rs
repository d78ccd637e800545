//! Small file helpers the tests share: FIFOs, ages, sidecar paths, a command's output as
//! text, a database's settled state.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

use rusqlite::Connection;

/// Make a FIFO at `path` with `mode` (before the umask).
pub fn mkfifo(path: &Path, mode: libc::mode_t) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: c is a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), mode) },
        0,
        "mkfifo {}",
        path.display()
    );
}

/// Set the modification time of `path` to `age` ago.
pub fn set_age(path: &Path, age: Duration) {
    let t = SystemTime::now() - age;
    std::fs::File::open(path).unwrap().set_modified(t).unwrap();
}

/// `db` with a sidecar suffix (`-wal`, `-shm`, `-journal`).
pub fn sidecar(db: &Path, suffix: &str) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// A command's stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails unless the command's stdout contains `needle` (with its output).
pub fn assert_stdout_has(o: &Output, needle: &str) {
    assert!(stdout(o).contains(needle), "{needle:?}\n{}", super::both(o));
}

/// Fails unless the command's stderr contains `needle` (with its output).
pub fn assert_stderr_has(o: &Output, needle: &str) {
    assert!(stderr(o).contains(needle), "{needle:?}\n{}", super::both(o));
}

/// Everything that must not change: the main file's bytes after a checkpoint, every table
/// (by name, including ones an attack might create) with its row count.
#[derive(Debug, PartialEq)]
pub struct Settled {
    pub bytes: Vec<u8>,
    pub tables: Vec<(String, i64)>,
}

pub fn settled(db: &Path) -> Settled {
    let c = Connection::open(db).unwrap();
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let names: Vec<String> = c
        .prepare("SELECT name FROM sqlite_schema ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let tables = names
        .into_iter()
        .map(|t| {
            let n = c
                .query_row(
                    &format!("SELECT count(*) FROM \"{}\"", t.replace('"', "\"\"")),
                    [],
                    |r| r.get(0),
                )
                .unwrap_or(-1);
            (t, n)
        })
        .collect();
    drop(c);
    Settled {
        bytes: std::fs::read(db).unwrap(),
        tables,
    }
}
