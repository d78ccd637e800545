//! The incremental backup job: one new point on the chain of the newest full backup of every
//! source file (see `chain` for the files).
//!
//! Under one read transaction (the consistent snapshot a full backup uses), every page of
//! the database is read as the snapshot sees it (`sqlite_dbpage`), hashed (xxh3-128) and
//! compared with the page-hash index of the chain's previous point; the pages that differ go
//! to the delta, with the new page count and the SHA-256 of the whole image, computed in the
//! same pass. Nothing is tracked between runs and no lock is held between them: a checkpoint,
//! a VACUUM, a schema change or a shrinking file only make the delta bigger or smaller.
//!
//! Order of the writes, so that a run killed anywhere leaves a valid chain: the delta under
//! a temp name (flocked, fsynced); the new point's index under its own name
//! (`{delta}.pages`, temp + fsync + rename); the manifest entry, then the delta's rename
//! (both under the directory's lock, as full backups); only then the previous point's index
//! goes. A leftover temp is removed by the next run, an index of a point the manifest does
//! not know is removed too, and a missing index is rebuilt from the chain.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;

use chrono::{DateTime, SubsecRound, Utc};
use sha2::{Digest, Sha256};

use super::{check_names, sql, Source, TempFiles};
use crate::archive::{self, ArchiveError, Entry, Manifest};
use crate::chain::{self, DeltaEntry, DeltaName, DeltaWriter, PageIndex, Point};
use crate::config::{Backup, Compression};
use crate::domain::{human_bytes, Figures, IncrementalFigures};
use crate::jobs::{JobCtx, JobError, JobResult};
use crate::sqlite::quote_ident;

/// Pages read between two looks at the cancel token.
const PAGES_PER_CHECK: u64 = 4096;

/// Pages per batch handed to the SHA-256 thread (1 MiB of 4 KiB pages), and the batches
/// that may wait for it.
const BATCH_PAGES: usize = 256;
const BATCHES_IN_FLIGHT: usize = 4;

fn io_err(context: String) -> impl FnOnce(io::Error) -> JobError {
    move |source| JobError::Io { context, source }
}

pub fn run(ctx: &mut JobCtx<'_>) -> Result<JobResult, JobError> {
    let cfg = ctx
        .db
        .backup
        .as_ref()
        .ok_or_else(|| JobError::Refused("no [database.backup] section".into()))?;
    let inc = cfg.incremental.as_ref().ok_or_else(|| {
        JobError::Refused(format!(
            "database {}: no `incremental = {{ every = \"*/10 * * * *\", keep = \"7d\" }}` in its [database.backup] section",
            ctx.db.name
        ))
    })?;
    let dir = &cfg.dir;
    check_names(ctx.db, cfg)?;
    archive::ensure_private_dir(dir)?;
    let sources = ctx.db.backup_sources();
    if ctx.dry_run {
        let manifest = Manifest::load(dir)?;
        let mut lines = Vec::new();
        for s in &sources {
            lines.push(
                match newest_full(dir, &manifest, &ctx.db.name, &s.series)? {
                    Some(full) => format!("a point after {} for {}", full.file, s.series),
                    None => format!(
                        "nothing for {} (no full backup to start a chain from)",
                        s.series
                    ),
                },
            );
        }
        return Ok(JobResult {
            summary: format!("dry run: would write {}", lines.join(", ")),
            figures: Some(Figures::Incremental(IncrementalFigures::default())),
            skipped: false,
        });
    }
    {
        let held = archive::lock_dir(dir)?;
        archive::clean_leftovers(dir, &held)?;
        let series: Vec<String> = sources.iter().map(|s| s.series.clone()).collect();
        remove_stray_indexes(dir, &series, &held)?;
    }
    // Every source's chain first (an index may need rebuilding), then one stamp for the
    // run and one read transaction over every file: main and attached points of a run are
    // one point in time, named alike (`restore --at` picks them together).
    let mut prepared = Vec::new();
    for source in &sources {
        prepared.push(prepare(ctx, cfg, source)?);
    }
    let stamp = unique_stamp(dir, &prepared, after_every_point(&prepared));
    let scans = scan_all(ctx, cfg, &sources, &prepared, stamp)?;
    let mut figures = IncrementalFigures::default();
    let mut written = Vec::new();
    for ((source, prep), (scan, temp)) in sources.iter().zip(prepared).zip(scans) {
        let d = commit_point(dir, source, prep, scan, temp, stamp)?;
        figures.pages_scanned += d.pages_scanned;
        figures.pages_changed += d.pages_changed;
        figures.bytes += d.size;
        written.push(d);
    }
    let main = &written[0];
    figures.delta_path = Some(dir.join(&main.file).display().to_string());
    figures.base = Some(main.base.clone());
    figures.sequence = Some(main.sequence);
    figures.image_sha256 = Some(main.image_sha256.clone());
    let retention = super::chains::apply_chain_retention(ctx.db, cfg, inc.keep, Utc::now())?;
    figures.retention_deleted = Some(retention.deleted.len() as u64);
    // The deltas are committed and no transaction is open: off-site copies now, as after a
    // full backup (pending on each remote until stored).
    let pushed = super::offsite::after_incremental(ctx.config, ctx.db, &written)
        .map_err(JobError::Refused)?;
    if let Some(p) = &pushed {
        figures.offsite = p.figures();
        if let Some(e) = p.failure() {
            return Err(e);
        }
    }
    let offsite = pushed
        .as_ref()
        .map(super::offsite::Pushed::summary)
        .unwrap_or_default();
    Ok(JobResult {
        summary: format!(
            "wrote {} (point {} after {}: {} of {} pages changed, {}); {}{offsite}",
            written
                .iter()
                .map(|d| d.file.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            main.sequence,
            main.base,
            figures.pages_changed,
            figures.pages_scanned,
            human_bytes(figures.bytes),
            retention.summary
        ),
        figures: Some(Figures::Incremental(figures)),
        skipped: false,
    })
}

/// The newest full backup of `series` a chain can start from (recorded, not failed).
fn newest_full(
    dir: &Path,
    manifest: &Manifest,
    database: &str,
    series: &str,
) -> Result<Option<Entry>, ArchiveError> {
    Ok(archive::list_of(dir, manifest, database)?
        .into_iter()
        .filter(|f| f.name.series == series && !f.name.failed && f.recorded())
        .find_map(|f| f.entry))
}

/// Remove page-hash indexes of `series` whose point the manifest does not know (a run killed
/// between writing its index and recording its delta, or a point deleted by hand). Another
/// database's indexes in a shared directory are never touched (its run may be writing one).
fn remove_stray_indexes(
    dir: &Path,
    series: &[String],
    _held: &archive::DirLock,
) -> Result<(), JobError> {
    let manifest = Manifest::load(dir)?;
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !chain::is_index(name) || name.starts_with('.') {
            continue;
        }
        let point = &name[..name.len() - ".pages".len()];
        let ours = DeltaName::parse(point)
            .map(|n| n.series)
            .or_else(|| archive::BackupName::parse(point).map(|n| n.series))
            .is_some_and(|s| series.contains(&s));
        if !ours {
            continue;
        }
        let known =
            manifest.get(point).is_some() || manifest.deltas.iter().any(|d| d.file == point);
        if !known || !dir.join(point).exists() {
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// Where a source's new point goes on its chain: read before the snapshot is taken.
struct Prepared {
    series: String,
    full: Entry,
    prev: Point,
    sequence: u64,
    index: PageIndex,
    prev_index: std::path::PathBuf,
    compressed: bool,
    /// The newest time of any point of the series (deleted or broken ones included).
    after: DateTime<Utc>,
    started: Instant,
}

/// The chain of `source`'s newest full backup and its last good point, with that point's
/// page-hash index (rebuilt when missing or stale).
fn prepare(ctx: &JobCtx<'_>, cfg: &Backup, source: &Source) -> Result<Prepared, JobError> {
    let started = Instant::now();
    let dir = &cfg.dir;
    let db = &ctx.db.name;
    let manifest = Manifest::load(dir)?;
    let full = newest_full(dir, &manifest, db, &source.series)?.ok_or_else(|| {
        JobError::Refused(format!(
            "{}: no full backup of {} to start an incremental chain from; run `litekeeper run {db} backup` first",
            dir.display(),
            source.series
        ))
    })?;
    // The previous point: the newest delta of this chain whose way back to the base is
    // whole, or the base itself.
    let mut chain_deltas: Vec<&DeltaEntry> = chain::deltas_of(&manifest, db, &source.series)
        .filter(|d| d.base == full.file)
        .collect();
    chain_deltas.sort_by_key(|d| (d.created_at, d.sequence));
    let prev = chain_deltas
        .iter()
        .rev()
        .find_map(|d| {
            chain::way_to(dir, &manifest, d)
                .filter(|w| w.broken.is_none())
                .map(|w| (Point::Delta((*d).clone()), w.deltas))
        })
        .unwrap_or_else(|| (Point::Full(full.clone()), Vec::new()));
    let (prev, way) = prev;
    let sequence = match &prev {
        Point::Full(_) => 1,
        Point::Delta(d) => d.sequence + 1,
    };
    let prev_index = chain::index_path(dir, prev.file());
    let index = match PageIndex::read(&prev_index, prev.sha256()) {
        Some(i) => i,
        None => rebuild_index(ctx, dir, &full, &prev, &way, &prev_index)?,
    };
    ctx.checkpoint()?;
    // Points are ordered by time: a new one is dated after every point of the series,
    // deleted or broken ones included (a run more than once a second moves ahead of the clock).
    let after = chain::deltas_of(&manifest, db, &source.series)
        .map(|d| d.created_at)
        .chain(std::iter::once(
            full.created_at - chrono::Duration::seconds(1),
        ))
        .max()
        .unwrap_or(full.created_at);
    Ok(Prepared {
        series: source.series.clone(),
        full,
        prev,
        sequence,
        index,
        prev_index,
        compressed: matches!(cfg.compression, Compression::Zstd { .. }),
        after,
        started,
    })
}

fn after_every_point(prepared: &[Prepared]) -> Option<DateTime<Utc>> {
    prepared.iter().map(|p| p.after).max()
}

fn delta_name(source: &Source, prep: &Prepared, stamp: DateTime<Utc>) -> String {
    DeltaName {
        series: source.series.clone(),
        time: stamp,
        compressed: prep.compressed,
    }
    .file_name()
}

/// One read transaction over every source file: each file's snapshot is pinned before any
/// is read (a commit to one file during the pass shows in none of this run's points), then
/// each is scanned into its temp delta file.
fn scan_all(
    ctx: &JobCtx<'_>,
    cfg: &Backup,
    sources: &[Source],
    prepared: &[Prepared],
    stamp: DateTime<Utc>,
) -> Result<Vec<(Scan, archive::TempFile)>, JobError> {
    let dir = &cfg.dir;
    let level = match cfg.compression {
        Compression::Zstd { level } => Some(level),
        Compression::None => None,
    };
    let mut temps = Vec::new();
    for (source, prep) in sources.iter().zip(prepared) {
        let name = delta_name(source, prep, stamp);
        temps.push(archive::create_temp(&archive::temp_path(dir, &name))?);
    }
    let conn = &*ctx.conn;
    let main_shown = ctx.db.path.display().to_string();
    conn.execute_batch("BEGIN")
        .map_err(sql(format!("{main_shown}: begin read transaction")))?;
    let result = (|| -> Result<Vec<Scan>, JobError> {
        for source in sources {
            // The first read of a schema in the transaction pins its snapshot.
            conn.query_row(
                &format!(
                    "SELECT count(*) FROM {}.sqlite_master",
                    quote_ident(&source.schema)
                ),
                [],
                |_| Ok(()),
            )
            .map_err(sql(format!("{}: begin read", source.path.display())))?;
        }
        let mut scans = Vec::new();
        for ((source, prep), tmp) in sources.iter().zip(prepared).zip(&temps) {
            let out = tmp
                .file()
                .try_clone()
                .map_err(io_err(format!("{}: open", tmp.path.display())))?;
            scans.push(scan_snapshot(
                ctx,
                source,
                &prep.index,
                out,
                level,
                prep.sequence,
                &tmp.path,
            )?);
        }
        Ok(scans)
    })();
    let end = conn.execute_batch("COMMIT");
    let guard = TempFiles(temps);
    let scans = result?;
    end.map_err(sql(format!("{main_shown}: end read transaction")))?;
    let temps = guard.into_kept();
    Ok(scans.into_iter().zip(temps).collect())
}

/// Write the new point's index, record it in the manifest and move the delta to its name;
/// then the previous point's index goes.
fn commit_point(
    dir: &Path,
    source: &Source,
    prep: Prepared,
    scan: Scan,
    tmp: archive::TempFile,
    stamp: DateTime<Utc>,
) -> Result<DeltaEntry, JobError> {
    let file_name = delta_name(source, &prep, stamp);
    let mut temps = TempFiles(vec![tmp]);
    let tmp_path = temps.0[0].path.clone();
    let new_index = PageIndex {
        page_size: scan.page_size,
        point_sha256: scan.written.sha256.clone(),
        hashes: scan.hashes,
    };
    new_index.write(&chain::index_path(dir, &file_name))?;
    let entry = DeltaEntry {
        file: file_name.clone(),
        series: source.series.clone(),
        database: prep.full.database.clone(),
        created_at: stamp,
        base: prep.full.file.clone(),
        sequence: prep.sequence,
        prev: prep.prev.file().to_string(),
        page_count: scan.page_count,
        page_size: u64::from(scan.page_size),
        pages_scanned: scan.page_count,
        pages_changed: scan.changed,
        image_sha256: scan.image_sha256,
        size: scan.written.size,
        sha256: scan.written.sha256,
        compressed: prep.compressed,
        duration_ms: prep.started.elapsed().as_millis() as u64,
    };
    if let Err(e) = record_and_commit(dir, &entry, &tmp_path) {
        let _ = fs::remove_file(chain::index_path(dir, &file_name));
        return Err(e.into());
    }
    temps.forget(&tmp_path);
    if prep.prev_index != chain::index_path(dir, &file_name) {
        let _ = fs::remove_file(&prep.prev_index);
    }
    Ok(entry)
}

/// What one pass over the snapshot found.
struct Scan {
    page_size: u32,
    page_count: u64,
    changed: u64,
    hashes: Vec<u128>,
    image_sha256: String,
    written: chain::Written,
}

/// `PRAGMA schema.name` of the snapshot, an integer.
fn pragma(
    conn: &rusqlite::Connection,
    schema: &str,
    name: &str,
    shown: &str,
) -> Result<i64, JobError> {
    conn.query_row(&format!("PRAGMA {schema}.{name}"), [], |r| r.get(0))
        .map_err(sql(format!("{shown}: {name}")))
}

/// Read every page of `source` (inside the caller's read transaction), write the changed ones.
fn scan_snapshot(
    ctx: &JobCtx<'_>,
    source: &Source,
    index: &PageIndex,
    out: fs::File,
    level: Option<i32>,
    sequence: u64,
    tmp: &Path,
) -> Result<Scan, JobError> {
    let conn = &*ctx.conn;
    let schema = quote_ident(&source.schema);
    let shown = source.path.display().to_string();
    // One statement reads the whole database: slow by design, not worth a warning.
    crate::sqlite::expected_slow(|| -> Result<Scan, JobError> {
        // The first read pins this schema's snapshot for the whole pass.
        let page_size = pragma(conn, &schema, "page_size", &shown)? as u32;
        let page_count = pragma(conn, &schema, "page_count", &shown)? as u64;
        let same_size = index.page_size == page_size;
        let mut writer = DeltaWriter::new(out, page_size, level)
            .map_err(io_err(format!("{}: write", tmp.display())))?;
        let mut stmt = conn
            .prepare("SELECT pgno, data FROM sqlite_dbpage(?1)")
            .map_err(sql(format!("{shown}: sqlite_dbpage")))?;
        let mut rows = stmt
            .query([&source.schema])
            .map_err(sql(format!("{shown}: read pages")))?;
        // The SHA-256 of the image (the slowest step: ~0.7 s per GiB with SHA-NI) runs on
        // its own thread over batches of pages, overlapping the read, the page hashes and
        // the delta's writes; each page is copied once, into the batch.
        let batch_bytes = BATCH_PAGES * page_size as usize;
        let (to_sha, batches) = mpsc::sync_channel::<Vec<u8>>(BATCHES_IN_FLIGHT);
        let (give_back, spare) = mpsc::channel::<Vec<u8>>();
        std::thread::scope(|scope| -> Result<Scan, JobError> {
            let hasher = scope.spawn(move || {
                let mut sha = Sha256::new();
                for b in batches {
                    sha.update(&b);
                    let _ = give_back.send(b);
                }
                <[u8; 32]>::from(sha.finalize())
            });
            let scanned = (|| -> Result<(Vec<u128>, u64, u64), JobError> {
                let mut hashes = Vec::with_capacity(page_count as usize);
                let mut changed = 0;
                let mut expect: u64 = 1;
                let mut buf = Vec::with_capacity(batch_bytes);
                // Error texts are made only on an error: this loop runs once per page.
                while let Some(row) = rows
                    .next()
                    .map_err(|e| sql(format!("{shown}: read pages"))(e))?
                {
                    let pgno: i64 = row
                        .get(0)
                        .map_err(|e| sql(format!("{shown}: page number"))(e))?;
                    let data = row
                        .get_ref(1)
                        .and_then(|v| v.as_blob().map_err(Into::into))
                        .map_err(|e| sql(format!("{shown}: page {pgno}"))(e))?;
                    if pgno as u64 != expect || data.len() != page_size as usize {
                        return Err(JobError::Refused(format!(
                            "{shown}: sqlite_dbpage gave page {pgno} of {} bytes where page {expect} of {page_size} was due",
                            data.len()
                        )));
                    }
                    let at = buf.len();
                    buf.extend_from_slice(data);
                    let page = &mut buf[at..];
                    chain::normalize_page(pgno as u32, page);
                    let h = chain::page_hash(page);
                    let i = hashes.len();
                    if !same_size || index.hashes.get(i) != Some(&h) {
                        writer
                            .page(pgno as u32, page)
                            .map_err(|e| io_err(format!("{}: write", tmp.display()))(e))?;
                        changed += 1;
                    }
                    hashes.push(h);
                    if buf.len() >= batch_bytes {
                        let next = spare
                            .try_recv()
                            .unwrap_or_else(|_| Vec::with_capacity(batch_bytes));
                        let full = std::mem::replace(&mut buf, next);
                        buf.clear();
                        if to_sha.send(full).is_err() {
                            break;
                        }
                    }
                    expect += 1;
                    if expect.is_multiple_of(PAGES_PER_CHECK) {
                        ctx.checkpoint()?;
                    }
                }
                if !buf.is_empty() {
                    let _ = to_sha.send(buf);
                }
                Ok((hashes, changed, expect - 1))
            })();
            drop(to_sha);
            let image = hasher.join().expect("the SHA-256 thread does not panic");
            let (hashes, changed, read) = scanned?;
            if read != page_count {
                return Err(JobError::Refused(format!(
                    "{shown}: read {read} pages, the snapshot has {page_count}"
                )));
            }
            let written = writer
                .finish(page_count, sequence, &image)
                .map_err(io_err(format!("{}: write", tmp.display())))?;
            Ok(Scan {
                page_size,
                page_count,
                changed,
                hashes,
                image_sha256: archive::hex(&image),
                written,
            })
        })
    })
}

/// Build the image of `prev` (its base with `way` applied) in a temp file, hash its pages,
/// check it against the point's SHA-256 where one is known, and store the index.
fn rebuild_index(
    ctx: &JobCtx<'_>,
    dir: &Path,
    full: &Entry,
    prev: &Point,
    way: &[DeltaEntry],
    index_path: &Path,
) -> Result<PageIndex, JobError> {
    let temps = TempFiles(vec![archive::create_temp(&archive::temp_path(
        dir,
        &format!("{}.image", prev.file()),
    ))?]);
    let tmp = &temps.0[0];
    let shown = dir.join(&full.file).display().to_string();
    let mut input = chain::open_full(dir, full).map_err(io_err(format!("{shown}: read")))?;
    let mut out = tmp.file();
    io::copy(&mut input, &mut out)
        .map_err(io_err(format!("{shown}: copy to {}", tmp.path.display())))?;
    ctx.checkpoint()?;
    chain::apply_all(dir, way, tmp.file(), true).map_err(io_err(format!(
        "{}: rebuilding the chain's last point",
        dir.display()
    )))?;
    let page_size = chain::image_page_size(&tmp.path)
        .map_err(io_err(format!("{}: read", tmp.path.display())))?;
    let (sha, hashes) = chain::hash_image(&tmp.path, page_size)
        .map_err(io_err(format!("{}: read", tmp.path.display())))?;
    let expected = match prev {
        Point::Delta(d) => Some(d.image_sha256.as_str()),
        Point::Full(e) if !e.compressed => Some(e.sha256.as_str()),
        Point::Full(_) => None,
    };
    if let Some(expected) = expected.filter(|e| *e != sha) {
        return Err(JobError::VerifyFailed(format!(
            "{}: the image of {} has SHA-256 {sha}, its manifest entry says {expected}; take a full backup to start a new chain",
            dir.display(),
            prev.file()
        )));
    }
    let index = PageIndex {
        page_size,
        point_sha256: prev.sha256().to_string(),
        hashes,
    };
    index.write(index_path)?;
    Ok(index)
}

/// Now, to the second, but after `after`; moved on while a delta of that name exists for
/// any of the run's sources.
fn unique_stamp(dir: &Path, prepared: &[Prepared], after: Option<DateTime<Utc>>) -> DateTime<Utc> {
    let mut stamp = Utc::now().trunc_subsecs(0);
    if let Some(a) = after.filter(|a| *a >= stamp) {
        stamp = a + chrono::Duration::seconds(1);
    }
    let taken = |stamp: DateTime<Utc>| {
        prepared.iter().any(|p| {
            dir.join(
                DeltaName {
                    series: p.series.clone(),
                    time: stamp,
                    compressed: p.compressed,
                }
                .file_name(),
            )
            .exists()
        })
    };
    while taken(stamp) {
        stamp += chrono::Duration::seconds(1);
    }
    stamp
}

/// Record the delta in the manifest, then move it to its final name, under the directory's
/// lock (as full backups are committed).
fn record_and_commit(dir: &Path, entry: &DeltaEntry, tmp: &Path) -> Result<(), ArchiveError> {
    let forget = |m: &mut Manifest| m.deltas.retain(|d| d.file != entry.file);
    super::record_then_rename(
        dir,
        tmp,
        &entry.file,
        |m| {
            forget(m);
            m.deltas.push(entry.clone());
        },
        forget,
    )
}
