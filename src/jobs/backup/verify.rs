//! The checks of a finished copy, after the source's snapshot is released: quick_check or
//! integrity_check on one thread; the page count against the snapshot's, foreign_key_check
//! and the row counts (the snapshot's, recorded in the manifest) on another.
//!
//! The copy was just written, so its pages are in the page cache: each check's connection
//! maps the file (`mmap_size`) instead of copying every page out of the kernel with a read
//! (measured on 1 GiB: a third less CPU for quick_check). Foreign keys are counted through
//! `sqlite::fk_violations` (an index where the schema has one, see `sqlite/fkcheck.rs`), and
//! `count(*)` reads each table's smallest index: the quick_check is the long pole.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use rusqlite::{Connection, OpenFlags};

use crate::config::Verify;
use crate::db_files::file_len;
use crate::domain::CopyPath;
use crate::sqlite::{fk_violations, row_counts};

use super::Snapshot;

/// What checking the copy found: its row counts (the snapshot's) and foreign key violations.
#[derive(Debug, Default)]
pub(super) struct Checked {
    pub tables: BTreeMap<String, i64>,
    pub fk_violations: i64,
}

/// The copy, read-only, mapped into memory (up to SQLite's compiled-in limit; pages past it
/// are read).
fn open_copy(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let len = file_len(path).unwrap_or(0);
    c.query_row(&format!("PRAGMA mmap_size = {len}"), [], |_| Ok(()))?;
    Ok(c)
}

/// Check the copy: quick_check or integrity_check on one thread, its page count against the
/// snapshot's, foreign_key_check and row counts on another. Err says what is wrong.
pub(super) fn verify_copy(path: &Path, verify: Verify, snap: &Snapshot) -> Result<Checked, String> {
    let pragma = if verify == Verify::Full {
        "integrity_check"
    } else {
        "quick_check"
    };
    let structure = || -> rusqlite::Result<Result<u128, String>> {
        let c = open_copy(path)?;
        let t = Instant::now();
        let check: Vec<String> = c
            .prepare(&format!("PRAGMA {pragma}(10)"))?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if check != ["ok"] {
            return Ok(Err(format!("{pragma}: {}", check.join("; "))));
        }
        Ok(Ok(t.elapsed().as_millis()))
    };
    let contents = || -> rusqlite::Result<Result<(Checked, u128, u128), String>> {
        let c = open_copy(path)?;
        if snap.path != CopyPath::VacuumInto {
            let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            if pages as u64 != snap.page_count {
                return Ok(Err(format!(
                    "page count {pages}, the source snapshot had {}",
                    snap.page_count
                )));
            }
        }
        let t = Instant::now();
        let fk_violations = fk_violations(&c, "main")?;
        let fk_ms = t.elapsed().as_millis();
        let t = Instant::now();
        let tables = row_counts(&c, "main")?;
        let checked = Checked {
            fk_violations,
            tables,
        };
        Ok(Ok((checked, fk_ms, t.elapsed().as_millis())))
    };
    let unreadable = |e: rusqlite::Error| format!("cannot read the copy: {e}");
    let (structure, contents) = std::thread::scope(|s| {
        let t = s.spawn(structure);
        let contents = contents();
        (t.join().expect("check thread"), contents)
    });
    let structure_ms = structure.unwrap_or_else(|e| Err(unreadable(e)))?;
    let (checked, fk_ms, count_ms) = contents.unwrap_or_else(|e| Err(unreadable(e)))?;
    tracing::debug!(
        "{}: {pragma} {structure_ms} ms; foreign_key_check {fk_ms} ms, row counts {count_ms} ms",
        path.display()
    );
    Ok(checked)
}
