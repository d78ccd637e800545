//! The vacuum job: reclaim free pages only when it is worth it, never leave a half-done
//! database, and keep the WAL and the planner healthy afterwards.
//!
//! Each database file of the job (main and attached) is judged on its own: below `min_free`
//! it is a recorded no-op ("skipped: 3% free < 20%"). What counts as free is the freelist
//! (whole free pages) plus the bytes a VACUUM would win back inside half-empty pages, measured
//! with SQLite's `dbstat` table ([`unused_in_pages`]); incremental vacuum only frees whole
//! pages, so in that mode only the freelist counts. `auto` uses incremental vacuum when the
//! file has `auto_vacuum = INCREMENTAL`, full VACUUM otherwise. A full VACUUM is one
//! transaction: SQLite's interrupt (on SIGTERM or after `max_duration`) rolls it back and the
//! file is unchanged. Incremental vacuum frees pages in chunks sized like prune's batches, with
//! the same pause, so the application's writers keep going. Before a full VACUUM the free disk
//! space is checked (SQLite writes a temp copy and, in WAL mode, the new content to the WAL).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::{JobCtx, JobError, JobResult};
use crate::config::{Threshold, Vacuum, VacuumMode};
use crate::db_files::{file_len, DbFiles};
use crate::domain::human_bytes;
use crate::domain::{Figures, FileFigures, PageFigures, VacuumFigures};
use crate::progress::Progress;
use crate::sqlite::{quote_ident, truncate_wal};

/// PageFigures freed per incremental step at first; adapts to the lock budget.
const FIRST_CHUNK: i64 = 256;
const MAX_CHUNK: i64 = 65_536;

fn sql_err(context: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> JobError {
    let context = context.into();
    move |source| JobError::Sqlite { context, source }
}

fn measure(conn: &Connection, schema: &str, path: &Path) -> Result<PageFigures, JobError> {
    let get = |pragma: &str| -> Result<i64, JobError> {
        conn.query_row(
            &format!("PRAGMA {}.{pragma}", quote_ident(schema)),
            [],
            |r| r.get(0),
        )
        .map_err(sql_err(format!("{}: PRAGMA {pragma}", path.display())))
    };
    Ok(PageFigures {
        page_size: get("page_size")?,
        pages: get("page_count")?,
        freelist: get("freelist_count")?,
        unused_bytes: unused_in_pages(conn, schema)
            .map_err(sql_err(format!("{}: reading dbstat", path.display())))?,
        file_bytes: file_len(path).unwrap_or(0),
        wal_bytes: file_len(&DbFiles::of(path).wal).unwrap_or(0),
    })
}

/// Bytes inside the b-tree pages of `schema` ("main" or an attached alias) that a VACUUM would
/// give back, in whole pages: per table and index, the pages it has less the pages its used
/// bytes (from `dbstat`) need when packed, counting one average cell (at most a quarter page)
/// per page as the slack even a packed page keeps, plus interior pages. So a small table, or
/// one whose rows do not fill pages evenly, is not vacuumed again and again for nothing. One
/// pass over the b-trees with `aggregate = TRUE`; it reads every page, about the cost of a
/// `quick_check` (benches/RESULTS.md).
pub fn unused_in_pages(conn: &Connection, schema: &str) -> rusqlite::Result<u64> {
    let page_size: i64 = conn.query_row(
        &format!("PRAGMA {}.page_size", quote_ident(schema)),
        [],
        |r| r.get(0),
    )?;
    let mut st = conn.prepare(
        "SELECT pageno, ncell, payload, unused FROM dbstat WHERE schema = ?1 AND aggregate = TRUE",
    )?;
    let mut rows = st.query([schema])?;
    let mut pages_spare = 0i64;
    while let Some(r) = rows.next()? {
        pages_spare += spare_pages(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, page_size);
    }
    Ok((pages_spare * page_size) as u64)
}

/// Pages a packed copy of one b-tree would not need, from its `dbstat` aggregate row.
fn spare_pages(pages: i64, cells: i64, payload: i64, unused: i64, page_size: i64) -> i64 {
    let used = (pages * page_size - unused).max(0);
    let slack = if cells > 0 { payload / cells } else { 0 }.min(page_size / 4);
    let capacity = (page_size - slack).max(1);
    let leaves = ((used + capacity - 1) / capacity).max(1);
    // Beyond one page a b-tree also needs interior pages (a generous count: leaf-sized cells,
    // where a table's interior cells are 8 bytes or so).
    let interior = if leaves > 1 {
        ((leaves * (slack + 4) + page_size - 1) / page_size).max(1)
    } else {
        0
    };
    (pages - leaves - interior).max(0)
}

/// Reclaimable bytes of a file: whole free pages, plus unused bytes in pages unless only the
/// freelist can be reclaimed (incremental vacuum).
fn reclaimable(p: &PageFigures, pages_only: bool) -> u64 {
    (p.freelist * p.page_size) as u64 + if pages_only { 0 } else { p.unused_bytes }
}

/// Share of the file (whole pages and unused bytes in pages) a VACUUM would reclaim.
fn share(p: &PageFigures, pages_only: bool) -> f64 {
    if p.pages == 0 {
        0.0
    } else {
        reclaimable(p, pages_only) as f64 / (p.pages * p.page_size) as f64
    }
}

fn percent(p: &PageFigures) -> f64 {
    share(p, false) * 100.0
}

/// "12 free pages (48.0 KiB) + 1.2 MiB unused in pages": both numbers, for summaries and check.
pub fn free_space_text(freelist: i64, page_size: i64, unused: u64) -> String {
    format!(
        "{freelist} free pages ({}) + {} unused in pages",
        human_bytes((freelist * page_size) as u64),
        human_bytes(unused)
    )
}

/// None when worth it; else why not ("3% free < 20%"). `pages_only`: only whole free pages
/// count (incremental vacuum cannot reclaim space inside pages).
fn below_threshold(p: &PageFigures, min: Threshold, pages_only: bool) -> Option<String> {
    let what = if pages_only {
        format!(
            "{} free pages; {} unused in pages needs a full VACUUM (mode = \"full\")",
            p.freelist,
            human_bytes(p.unused_bytes)
        )
    } else {
        free_space_text(p.freelist, p.page_size, p.unused_bytes)
    };
    match min {
        Threshold::Fraction(f) => {
            let share = share(p, pages_only);
            (share < f).then(|| format!("{:.0}% free < {:.0}% ({what})", share * 100.0, f * 100.0))
        }
        Threshold::Bytes(b) => {
            let free = reclaimable(p, pages_only);
            (free < b).then(|| format!("{} free < {} ({what})", human_bytes(free), human_bytes(b)))
        }
    }
}

/// The directory SQLite puts VACUUM's temp file in: `temp_dir`, else what the unix VFS uses.
fn temp_dir_for(cfg: &Vacuum) -> PathBuf {
    if let Some(d) = &cfg.temp_dir {
        return d.clone();
    }
    for var in ["SQLITE_TMPDIR", "TMPDIR"] {
        if let Some(v) = std::env::var_os(var) {
            let p = PathBuf::from(v);
            if p.is_dir() {
                return p;
            }
        }
    }
    for d in ["/var/tmp", "/usr/tmp", "/tmp"] {
        if Path::new(d).is_dir() {
            return PathBuf::from(d);
        }
    }
    PathBuf::from(".")
}

/// Free space for a full VACUUM of `db_path` (about its size in the temp dir and again in the
/// database's directory for the WAL, twice its size when both are one file system).
fn preflight(cfg: &Vacuum, db_path: &Path, size: u64) -> Result<(), JobError> {
    let db_dir = db_path.parent().unwrap_or(Path::new("/"));
    let tmp = temp_dir_for(cfg);
    let free = |d: &Path| crate::archive::free_bytes(d).map_err(JobError::Archive);
    let dev = |d: &Path| std::fs::metadata(d).map(|m| m.dev()).ok();
    let (db_free, tmp_free) = (free(db_dir)?, free(&tmp)?);
    let same = dev(db_dir).is_some() && dev(db_dir) == dev(&tmp);
    let short = if same {
        (db_free < 2 * size).then(|| {
            format!(
                "{} has {} free, VACUUM needs about {} (twice the database: a temp copy in {} and the new content in the WAL)",
                db_dir.display(),
                human_bytes(db_free),
                human_bytes(2 * size),
                tmp.display()
            )
        })
    } else if db_free < size {
        Some(format!(
            "{} has {} free, VACUUM needs about {} there for the WAL",
            db_dir.display(),
            human_bytes(db_free),
            human_bytes(size)
        ))
    } else if tmp_free < size {
        Some(format!(
            "temp directory {} has {} free, VACUUM needs about {} there",
            tmp.display(),
            human_bytes(tmp_free),
            human_bytes(size)
        ))
    } else {
        None
    };
    match short {
        Some(why) => Err(JobError::Refused(format!(
            "not enough disk space to VACUUM {}: {why}; free some space or set vacuum.temp_dir to a larger file system. The database was not touched",
            db_path.display()
        ))),
        None => Ok(()),
    }
}

pub fn run(ctx: &mut JobCtx<'_>) -> Result<JobResult, JobError> {
    let cfg = ctx
        .db
        .vacuum
        .as_ref()
        .ok_or_else(|| JobError::Refused("no [database.vacuum] section".into()))?;
    let started = Instant::now();
    let deadline = cfg.max_duration.map(|d| started + d);
    let mut files: Vec<(String, PathBuf)> = vec![("main".into(), ctx.db.path.clone())];
    files.extend(
        ctx.db
            .attach
            .iter()
            .map(|a| (a.alias.clone(), a.path.clone())),
    );
    if let Some(t) = &cfg.temp_dir {
        // Process-wide in SQLite; every VACUUM of this process uses the configured directory.
        ctx.conn
            .execute_batch(&format!(
                "PRAGMA temp_store_directory = '{}'",
                t.display().to_string().replace('\'', "''")
            ))
            .map_err(sql_err(format!("vacuum.temp_dir {}", t.display())))?;
    }
    let mut reports = Vec::new();
    for (schema, path) in &files {
        ctx.checkpoint()?;
        reports.push(vacuum_one(ctx, cfg, schema, path, deadline)?);
    }
    if cfg.analyze {
        ctx.conn
            .execute_batch("ANALYZE")
            .map_err(sql_err("ANALYZE"))?;
    }
    ctx.conn
        .execute_batch("PRAGMA optimize")
        .map_err(sql_err("PRAGMA optimize"))?;

    let skipped = reports.iter().all(|r| r.action == "skipped");
    let sum = |f: fn(&PageFigures) -> u64, after: bool| -> u64 {
        reports
            .iter()
            .map(|r| f(if after { &r.after } else { &r.before }))
            .sum()
    };
    let figures = VacuumFigures {
        bytes_before: sum(|p| p.file_bytes + p.wal_bytes, false),
        bytes_after: sum(|p| p.file_bytes + p.wal_bytes, true),
        freelist_before: sum(|p| p.freelist as u64, false),
        freelist_after: sum(|p| p.freelist as u64, true),
        unused_bytes_before: sum(|p| p.unused_bytes, false),
        unused_bytes_after: sum(|p| p.unused_bytes, true),
        files: reports,
    };
    let parts: Vec<String> = figures
        .files
        .iter()
        .map(|r| {
            let name = Path::new(&r.path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match r.action.as_str() {
                a if a.ends_with("(dry run)") => {
                    format!("{name}: {}", r.note.clone().unwrap_or_default())
                }
                "skipped" => format!(
                    "{name} skipped: {}",
                    r.note.clone().unwrap_or_default()
                ),
                action => format!(
                    "{action} vacuum of {name}: {} -> {} (free pages {} -> {}, unused in pages {} -> {}, {:.0}% -> {:.0}% free), WAL {} -> {}{}",
                    human_bytes(r.before.file_bytes),
                    human_bytes(r.after.file_bytes),
                    r.before.freelist,
                    r.after.freelist,
                    human_bytes(r.before.unused_bytes),
                    human_bytes(r.after.unused_bytes),
                    percent(&r.before),
                    percent(&r.after),
                    human_bytes(r.before.wal_bytes),
                    human_bytes(r.after.wal_bytes),
                    r.note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
                ),
            }
        })
        .collect();
    Ok(JobResult {
        summary: if skipped {
            format!("skipped: {}", parts.join("; ").replace(" skipped: ", ": "))
        } else {
            parts.join("; ")
        },
        figures: Some(Figures::Vacuum(figures)),
        skipped,
    })
}

fn vacuum_one(
    ctx: &JobCtx<'_>,
    cfg: &Vacuum,
    schema: &str,
    path: &Path,
    deadline: Option<Instant>,
) -> Result<FileFigures, JobError> {
    let conn: &Connection = ctx.conn;
    let started = Instant::now();
    let before = measure(conn, schema, path)?;
    let auto_vacuum: i64 = conn
        .query_row(
            &format!("PRAGMA {}.auto_vacuum", quote_ident(schema)),
            [],
            |r| r.get(0),
        )
        .map_err(sql_err(format!("{}: PRAGMA auto_vacuum", path.display())))?;
    let mut report = FileFigures {
        schema: schema.to_string(),
        path: path.display().to_string(),
        action: "skipped".into(),
        before,
        after: before,
        duration_ms: 0,
        note: None,
    };
    let convert = cfg.convert_auto_vacuum && auto_vacuum != 2;
    let action = match (cfg.mode, auto_vacuum) {
        (VacuumMode::Never, _) => {
            report.note = Some("mode = never".into());
            return Ok(report);
        }
        _ if convert => "convert",
        (VacuumMode::Full, _) => "full",
        (VacuumMode::Auto, 2) => "incremental",
        (VacuumMode::Auto, _) => "full",
        (VacuumMode::Incremental, 2) => "incremental",
        (VacuumMode::Incremental, _) => {
            return Err(JobError::Config(format!(
                "{}: vacuum.mode = \"incremental\" needs auto_vacuum = INCREMENTAL in the database (it is {}); set convert_auto_vacuum = true once (one full VACUUM), or use mode = \"auto\"",
                path.display(),
                match auto_vacuum {
                    0 => "NONE",
                    _ => "FULL",
                }
            )))
        }
    };
    if !convert {
        if let Some(why) = below_threshold(&before, cfg.min_free, action == "incremental") {
            report.note = Some(why);
            return Ok(report);
        }
    }
    if dry_run_note(ctx, &mut report, action) {
        return Ok(report);
    }
    match action {
        "incremental" => incremental(ctx, schema, path, deadline, &mut report)?,
        _ => {
            preflight(cfg, path, before.file_bytes + before.wal_bytes)?;
            if convert {
                conn.execute_batch(&format!(
                    "PRAGMA {}.auto_vacuum = INCREMENTAL",
                    quote_ident(schema)
                ))
                .map_err(sql_err(format!("{}: setting auto_vacuum", path.display())))?;
                report.note = Some("converted to auto_vacuum = INCREMENTAL".into());
            }
            full(ctx, schema, path, deadline)?;
        }
    }
    report.action = action.to_string();
    truncate_wal(conn, &quote_ident(schema));
    report.after = measure(conn, schema, path)?;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// In a dry run, say what would happen and stop.
fn dry_run_note(ctx: &JobCtx<'_>, report: &mut FileFigures, action: &str) -> bool {
    if !ctx.dry_run {
        return false;
    }
    report.action = format!("{action} (dry run)");
    report.note = Some(format!(
        "would run a {action} vacuum; {}",
        free_space_text(
            report.before.freelist,
            report.before.page_size,
            report.before.unused_bytes
        )
    ));
    true
}

/// One full VACUUM, interrupted on cancel or at the deadline (rolled back: file unchanged).
fn full(
    ctx: &JobCtx<'_>,
    schema: &str,
    path: &Path,
    deadline: Option<Instant>,
) -> Result<(), JobError> {
    let conn: &Connection = ctx.conn;
    let _progress = vacuum_progress(conn, schema, path);
    let handle = conn.get_interrupt_handle();
    let finished = AtomicBool::new(false);
    let timed_out = AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        // Interrupt again every 20 ms until the VACUUM ends: an interrupt that lands before
        // the statement has started is a no-op in SQLite (the deadline can already be past
        // when measuring the file took longer than max_duration).
        s.spawn(|| {
            while !finished.load(Ordering::Relaxed) {
                let late = deadline.is_some_and(|d| Instant::now() >= d);
                if ctx.cancel.is_cancelled() || late {
                    timed_out.store(late, Ordering::Relaxed);
                    handle.interrupt();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let r = crate::sqlite::expected_slow(|| {
            conn.execute_batch(&format!("VACUUM {}", quote_ident(schema)))
        });
        finished.store(true, Ordering::Relaxed);
        r
    });
    let _ = conn.progress_handler(0, None::<fn() -> bool>);
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted) => {
            if timed_out.load(Ordering::Relaxed) {
                Err(JobError::Refused(format!(
                    "VACUUM of {} stopped after max_duration; it was rolled back and the database is unchanged (raise vacuum.max_duration, or use incremental mode)",
                    path.display()
                )))
            } else {
                Err(JobError::Cancelled)
            }
        }
        Err(e) => Err(sql_err(format!("VACUUM of {}", path.display()))(e)),
    }
}

/// A full VACUUM's progress line on a terminal: the pages it rewrites and the time so far,
/// with the virtual-machine steps SQLite's progress handler counts (it runs on the VACUUM's
/// own thread, every 100,000 steps, and never interrupts it).
fn vacuum_progress(conn: &Connection, schema: &str, path: &Path) -> Progress {
    let progress = Progress::working(format!(
        "vacuum {}:",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let Some(bar) = progress.handle() else {
        return progress;
    };
    let pages: i64 = conn
        .query_row(
            &format!("PRAGMA {}.page_count", quote_ident(schema)),
            [],
            |r| r.get(0),
        )
        .unwrap_or(0);
    let what = format!("full VACUUM of {pages} pages");
    bar.set_message(what.clone());
    let mut steps = 0u64;
    let _ = conn.progress_handler(
        100_000,
        Some(move || {
            steps += 1;
            bar.set_message(format!("{what}, {} M steps", steps / 10));
            false
        }),
    );
    progress
}

/// `incremental_vacuum` in chunks sized to the lock budget, pausing between them.
fn incremental(
    ctx: &JobCtx<'_>,
    schema: &str,
    path: &Path,
    deadline: Option<Instant>,
    report: &mut FileFigures,
) -> Result<(), JobError> {
    let conn: &Connection = ctx.conn;
    let (max_lock, pause) = ctx
        .db
        .prune
        .as_ref()
        .map(|p| (p.max_lock, p.pause))
        .unwrap_or((Duration::from_millis(50), None));
    let mut chunk = FIRST_CHUNK;
    let mut chunks = 0u32;
    let mut longest = Duration::ZERO;
    let progress = Progress::counted(
        format!(
            "vacuum {}:",
            path.file_name().unwrap_or_default().to_string_lossy()
        ),
        "free pages freed",
        report.before.freelist.max(0) as u64,
    );
    loop {
        ctx.checkpoint()?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            report.note = Some(format!(
                "stopped at max_duration after {chunks} chunks; the rest next time"
            ));
            return Ok(());
        }
        let free: i64 = conn
            .query_row(
                &format!("PRAGMA {}.freelist_count", quote_ident(schema)),
                [],
                |r| r.get(0),
            )
            .map_err(sql_err(format!("{}: freelist_count", path.display())))?;
        progress.set((report.before.freelist - free).max(0) as u64);
        progress.message(format!("{chunks} chunks"));
        if free == 0 {
            break;
        }
        // Take the write lock first (waiting for the app is not lock time), then free one
        // chunk and commit: the measured time is how long the app's writers were held off.
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(sql_err(format!(
                "{}: starting a write transaction",
                path.display()
            )))?;
        let t = Instant::now();
        // incremental_vacuum frees one page per step: step it to the end (execute_batch
        // would stop after the first page).
        let freed = conn
            .prepare(&format!(
                "PRAGMA {}.incremental_vacuum({})",
                quote_ident(schema),
                chunk.min(free)
            ))
            .and_then(|mut st| {
                let mut rows = st.raw_query();
                while rows.next()?.is_some() {}
                Ok(())
            })
            .and_then(|_| conn.execute_batch("COMMIT"));
        if let Err(e) = freed {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(sql_err(format!("{}: incremental_vacuum", path.display()))(
                e,
            ));
        }
        let took = t.elapsed();
        longest = longest.max(took);
        chunks += 1;
        if took > max_lock {
            chunk =
                ((chunk as f64 * max_lock.as_secs_f64() / took.as_secs_f64() * 0.8) as i64).max(16);
        } else if took < max_lock / 3 {
            chunk = (chunk * 2).min(MAX_CHUNK);
        }
        if chunks.is_multiple_of(8) {
            let _ = conn.query_row(
                &format!("PRAGMA {}.wal_checkpoint(PASSIVE)", quote_ident(schema)),
                [],
                |_| Ok(()),
            );
        }
        // prune's `pause` when set, else as long as the chunk held the lock, so the app's
        // writers held off meanwhile get in.
        let pause = pause.unwrap_or(took);
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    report.note = Some(format!(
        "{chunks} chunks, longest {} ms",
        longest.as_millis()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::spare_pages;

    #[test]
    fn spare_pages_counts_half_empty_pages_but_not_packing_slack() {
        // One root page, however empty, is needed.
        assert_eq!(spare_pages(1, 3, 90, 3900, 4096), 0);
        // 1000 leaves of 40-byte cells with half the space unused: about half is spare.
        let s = spare_pages(1000, 40_000, 1_600_000, 2_000_000, 4096);
        assert!((450..=520).contains(&s), "{s}");
        // Packed 1500-byte rows (two a page, ~1000 bytes unused each): nothing to win.
        assert_eq!(spare_pages(101, 200, 300_000, 100_000, 4096), 0);
        // Two leaves and a root holding 2.2 KiB of rows: one page would do.
        assert_eq!(spare_pages(3, 10, 2000, 10_000, 4096), 2);
    }
}
