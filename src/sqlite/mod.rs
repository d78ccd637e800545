//! SQLite access: one r2d2 pool per database (open flags without CREATE, WAL, busy timeout,
//! REGEXP, attached databases, `SELECT 1` on check-out, slow-statement log) and `diagnose`,
//! which tells an operator why a database cannot be used and what to do about it.
//!
//! Only this module and `jobs/` touch connections, and only on blocking threads.
//!
//! Layout: `mod.rs` opens connections (flags, URIs, settings, REGEXP); `slow.rs` is the
//! slow-statement log; `pool.rs` the per-database pools; `fleet.rs` the one-off and verified
//! connections of fleet members; `diagnose.rs` the preflight and the findings of `check`;
//! `wal.rs` reads the WAL format (wal-index header, frames, checksums) for the file copy;
//! `fkcheck.rs` counts foreign key violations (an index instead of a table scan where it can).

mod diagnose;
mod fkcheck;
mod fleet;
mod pool;
mod slow;
pub(crate) mod wal;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags};

use crate::config::{Database, JournalMode};

pub(crate) use self::diagnose::{diagnose, preflight, Finding, Severity};
pub(crate) use self::fkcheck::fk_violations;
pub(crate) use self::fleet::{connect_once, connect_verified, file_id, VerifiedOpenError};
pub(crate) use self::pool::Pools;
use self::slow::install_slow_log;
pub(crate) use self::slow::{expected_slow, truncate};

/// Flags for every connection: read-write, never create (a missing database is an error, not
/// a new empty file), URI names so attached databases get the same treatment.
pub(crate) fn open_flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX
}

/// A `file:` URI opening `path` with `mode` (`rw`, `ro`), never creating it. Every byte
/// outside printable ASCII is percent-encoded, so a name in UTF-8 (`ünï.db`) reaches SQLite
/// byte for byte (SQLite decodes `%XX` to one byte).
pub(crate) fn uri(path: &Path, mode: &str) -> String {
    let mut out = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        match b {
            b'%' | b'?' | b'#' => out.push_str(&format!("%{b:02X}")),
            0x21..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    format!("{out}?mode={mode}")
}

/// A read-only connection to `db` with its attachments, for checks that must not change
/// anything (not even the journal mode).
pub(crate) fn open_readonly(db: &Database, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        uri(&db.path, "ro"),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy_timeout)?;
    for a in &db.attach {
        conn.execute("ATTACH DATABASE ?1 AS ?2", (uri(&a.path, "ro"), &a.alias))?;
    }
    Ok(conn)
}

/// Settings applied to every new connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnSettings {
    pub busy_timeout: Duration,
    pub journal_mode: JournalMode,
    pub attach: Vec<(String, PathBuf)>,
}

impl ConnSettings {
    pub(crate) fn for_database(db: &Database, busy_timeout: Duration) -> Self {
        ConnSettings {
            busy_timeout,
            journal_mode: db.journal_mode,
            attach: db
                .attach
                .iter()
                .map(|a| (a.alias.clone(), a.path.clone()))
                .collect(),
        }
    }
}

/// Prepare a fresh connection: pragmas, WAL, REGEXP, attachments, slow-statement hook.
pub(crate) fn init_connection(conn: &mut Connection, s: &ConnSettings) -> rusqlite::Result<()> {
    conn.busy_timeout(s.busy_timeout)?;
    if s.journal_mode == JournalMode::Wal {
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))?;
        }
    }
    add_regexp(conn)?;
    for (alias, path) in &s.attach {
        conn.execute("ATTACH DATABASE ?1 AS ?2", (uri(path, "rw"), alias))?;
    }
    install_slow_log(conn);
    Ok(())
}

/// `x REGEXP y` for rules' SQL, with compiled patterns cached per statement.
fn add_regexp(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "regexp",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let re: Arc<regex::Regex> = ctx.get_or_create_aux(0, |v| {
                regex::Regex::new(v.as_str()?)
                    .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))
            })?;
            let text = match ctx.get_raw(1) {
                rusqlite::types::ValueRef::Null => return Ok(None),
                v => v
                    .as_str()
                    .map_err(|e| rusqlite::Error::UserFunctionError(e.into()))?,
            };
            Ok(Some(re.is_match(text)))
        },
    )
}

fn manager(db: &Database, busy_timeout: Duration) -> SqliteConnectionManager {
    let settings = ConnSettings::for_database(db, busy_timeout);
    SqliteConnectionManager::file(uri(&db.path, "rw"))
        .with_flags(open_flags())
        .with_init(move |c| init_connection(c, &settings))
}

/// Quote an SQL identifier (a schema, table or column name): `"a""b"` for `a"b`.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Rows per ordinary table of `schema` (virtual tables are skipped).
pub(crate) fn row_counts(
    conn: &Connection,
    schema: &str,
) -> rusqlite::Result<BTreeMap<String, i64>> {
    let q = quote_ident(schema);
    let names: Vec<String> = conn
        .prepare(&format!(
            "SELECT name FROM {q}.sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             AND sql NOT LIKE 'CREATE VIRTUAL TABLE%' ORDER BY name"
        ))?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = BTreeMap::new();
    for name in names {
        let n: i64 = conn.query_row(
            &format!("SELECT count(*) FROM {q}.{}", quote_ident(&name)),
            [],
            |r| r.get(0),
        )?;
        out.insert(name, n);
    }
    Ok(out)
}

/// `wal_checkpoint(TRUNCATE)` of `schema` (already quoted), retried while readers keep it busy
/// (bounded); a WAL that stays busy is logged, not an error: the next checkpoint catches up.
pub(crate) fn truncate_wal(conn: &Connection, schema: &str) {
    for attempt in 0..10 {
        match conn.query_row(
            &format!("PRAGMA {schema}.wal_checkpoint(TRUNCATE)"),
            [],
            |r| r.get::<_, i64>(0),
        ) {
            Ok(0) => return,
            Ok(_) => std::thread::sleep(Duration::from_millis(50 * (attempt + 1))),
            Err(e) => {
                tracing::debug!("wal_checkpoint(TRUNCATE) on {schema}: {e}");
                return;
            }
        }
    }
    tracing::info!(
        "wal_checkpoint(TRUNCATE) on {schema} stayed busy; the WAL shrinks at a later checkpoint"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ExitCode;

    #[test]
    fn uri_escapes() {
        assert_eq!(
            uri(Path::new("/a/b?c#d%.db"), "rw"),
            "file:/a/b%3Fc%23d%25.db?mode=rw"
        );
        assert_eq!(
            uri(Path::new("/a/ün ï.db"), "ro"),
            "file:/a/%C3%BCn%20%C3%AF.db?mode=ro"
        );
        // The URI opens the file of that name, not a mangled one.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ünï 数据.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t(x)")
            .unwrap();
        let c = Connection::open_with_flags(uri(&path, "rw"), open_flags()).unwrap();
        c.execute("INSERT INTO t VALUES (1)", []).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn missing_file_is_never_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.db");
        let f = diagnose(&path, true, Duration::from_millis(100));
        assert_eq!(f[0].code, ExitCode::NoInput);
        assert!(!path.exists());
        let r = Connection::open_with_flags(uri(&path, "rw"), open_flags());
        assert!(r.is_err());
        assert!(!path.exists());
    }
}
