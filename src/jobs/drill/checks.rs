//! The checks on a restored copy, in the scratch directory: `integrity_check` (full) and
//! `foreign_key_check` of every file, page and per-table row counts against the manifest, and
//! the configured assertions, all on one read-only connection with the attached databases of
//! the same run attached under their aliases (as the application sees them).

use std::collections::BTreeMap;
use std::path::PathBuf;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use tokio_util::sync::CancellationToken;

use crate::archive::Entry;
use crate::sqlite::{fk_violations, quote_ident, row_counts, uri};

/// One restored file: its schema name, where it is, the point's file it came from and what
/// was recorded about it.
pub(super) struct Restored<'a> {
    pub schema: String,
    pub path: PathBuf,
    pub name: &'a str,
    pub expect: &'a Expect,
}

/// What was recorded about a copy at backup time, to compare the restored file with.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// Pages of the source snapshot (None: not recorded).
    pub page_count: Option<u64>,
    /// Rows per table (empty: not recorded, `unrecorded` says why).
    pub tables: BTreeMap<String, i64>,
    /// foreign_key_check violations at backup time (None: none recorded, so none allowed).
    pub fk_violations: Option<i64>,
    /// Why no row counts were recorded.
    pub unrecorded: &'static str,
}

impl From<&Entry> for Expect {
    fn from(e: &Entry) -> Expect {
        Expect {
            page_count: Some(e.page_count),
            tables: e.tables.clone(),
            fk_violations: e.fk_violations,
            // verify = "none": the backup recorded no row counts to compare with.
            unrecorded: "none recorded at backup time",
        }
    }
}

/// What the checks found: a line per check, and the failures (empty: the copy is good).
#[derive(Debug, Default)]
pub(super) struct Found {
    pub lines: Vec<String>,
    pub failures: Vec<String>,
}

impl Found {
    fn check(&mut self, ok: bool, line: String) {
        if ok {
            self.lines.push(format!("{line}: ok"));
        } else {
            self.lines.push(format!("{line}: FAILED"));
            self.failures.push(line);
        }
    }
}

/// Run every check; an SQLite error is a failure of the check it happened in.
pub(super) fn run(files: &[Restored<'_>], asserts: &[String], cancel: &CancellationToken) -> Found {
    let mut found = Found::default();
    let conn = match open(files, cancel) {
        Ok(c) => c,
        Err(e) => {
            found.check(false, format!("open the restored copy read-only: {e}"));
            return found;
        }
    };
    for f in files {
        if cancel.is_cancelled() {
            break;
        }
        let s = quote_ident(&f.schema);
        let name = f.name;
        let expect = f.expect;
        match list(&conn, &format!("PRAGMA {s}.integrity_check(10)")) {
            Ok(rows) if rows == ["ok"] => found.check(true, format!("integrity_check {name}")),
            Ok(rows) => found.check(
                false,
                format!("integrity_check {name}: {}", rows.join("; ")),
            ),
            Err(e) => found.check(false, format!("integrity_check {name}: {e}")),
        }
        match fk_violations(&conn, &f.schema) {
            Ok(n) => match expect.fk_violations {
                Some(was) => found.check(
                    n <= was,
                    format!("foreign_key_check {name}: {n} violation(s), {was} at backup time"),
                ),
                None => found.check(
                    n == 0,
                    format!("foreign_key_check {name}: {n} violation(s)"),
                ),
            },
            Err(e) => found.check(false, format!("foreign_key_check {name}: {e}")),
        }
        match conn.query_row(&format!("PRAGMA {s}.page_count"), [], |r| {
            r.get::<_, i64>(0)
        }) {
            Ok(n) => match expect.page_count {
                Some(want) => found.check(
                    n as u64 == want,
                    format!("page count {name}: {n}, the manifest recorded {want}"),
                ),
                None => found
                    .lines
                    .push(format!("page count {name}: {n}, none recorded")),
            },
            Err(e) => found.check(false, format!("page count {name}: {e}")),
        }
        if expect.tables.is_empty() {
            found
                .lines
                .push(format!("row counts {name}: {}", expect.unrecorded));
            continue;
        }
        match row_counts(&conn, &f.schema) {
            Ok(counts) if counts == expect.tables => found.check(
                true,
                format!("row counts {name}: {} table(s) as recorded", counts.len()),
            ),
            Ok(counts) => {
                let mut diff: Vec<String> = expect
                    .tables
                    .iter()
                    .filter(|(t, n)| counts.get(*t) != Some(n))
                    .map(|(t, n)| match counts.get(t) {
                        Some(c) => format!("{t}: {c} rows, manifest {n}"),
                        None => format!("{t}: no table, manifest {n} rows"),
                    })
                    .collect();
                diff.extend(
                    counts
                        .keys()
                        .filter(|t| !expect.tables.contains_key(*t))
                        .map(|t| format!("{t}: a table the manifest does not know")),
                );
                found.check(
                    false,
                    format!(
                        "row counts {name} differ from the manifest ({})",
                        diff.join(", ")
                    ),
                )
            }
            Err(e) => found.check(false, format!("row counts {name}: {e}")),
        }
    }
    for (i, sql) in asserts.iter().enumerate() {
        if cancel.is_cancelled() {
            break;
        }
        let (ok, why) = match assertion(&conn, sql) {
            Ok(()) => (true, String::new()),
            Err(why) => (false, format!(": {why}")),
        };
        found.check(ok, format!("assert[{i}] {sql:?}{why}"));
    }
    found
}

/// The main file read-only, each attached one read-only under its alias, nothing writable;
/// a long statement stops when the drill is cancelled.
fn open(files: &[Restored<'_>], cancel: &CancellationToken) -> rusqlite::Result<Connection> {
    let main = &files[0];
    let conn = Connection::open_with_flags(
        uri(&main.path, "ro"),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    for f in &files[1..] {
        conn.execute(
            &format!("ATTACH DATABASE ?1 AS {}", quote_ident(&f.schema)),
            [uri(&f.path, "ro")],
        )?;
    }
    conn.execute_batch("PRAGMA query_only = 1")?;
    let cancel = cancel.clone();
    conn.progress_handler(10_000, Some(move || cancel.is_cancelled()))?;
    Ok(conn)
}

fn list(conn: &Connection, sql: &str) -> rusqlite::Result<Vec<String>> {
    conn.prepare(sql)?
        .query_map([], |r| r.get::<_, String>(0))?
        .collect()
}

/// One assertion: exactly one row, whose first value is true (non-zero).
fn assertion(conn: &Connection, sql: &str) -> Result<(), String> {
    let mut stmt = conn.prepare(sql).map_err(|e| e.to_string())?;
    if !stmt.readonly() {
        return Err("not a read-only query".into());
    }
    let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
    let first = match rows.next().map_err(|e| e.to_string())? {
        None => return Err("returned no row (expected exactly one)".into()),
        Some(row) => match row.get_ref(0).map_err(|e| e.to_string())? {
            ValueRef::Integer(n) => (n != 0, n.to_string()),
            ValueRef::Real(x) => (x != 0.0, x.to_string()),
            ValueRef::Text(t) => {
                let t = String::from_utf8_lossy(t).to_string();
                let yes = t.eq_ignore_ascii_case("true")
                    || t.trim().parse::<f64>().is_ok_and(|x| x != 0.0);
                (yes, format!("{t:?}"))
            }
            ValueRef::Null => (false, "NULL".into()),
            ValueRef::Blob(b) => (false, format!("a blob of {} bytes", b.len())),
        },
    };
    if rows.next().map_err(|e| e.to_string())?.is_some() {
        return Err("returned more than one row (expected exactly one)".into());
    }
    match first {
        (true, _) => Ok(()),
        (false, v) => Err(format!("returned {v} (expected true)")),
    }
}
