//! The backup job: an online copy of the database and of every attached database, each to its
//! own file `{series}-{UTC YYYYMMDD-HHMMSS}.db[.zst]` in the backup directory.
//!
//! The copy uses SQLite's backup API in steps while this connection holds a read transaction
//! on the source, so concurrent writers never force a restart and the copy is one consistent
//! snapshot (`method = "vacuum_into"` makes a compacted copy instead). Each copy is written
//! under a temp name, switched to `journal_mode=DELETE` (one self-contained file), verified
//! (quick_check or integrity_check, foreign_key_check, page and row counts against the source
//! snapshot), optionally zstd-compressed (round-trip checked), fsynced and renamed into place;
//! the manifest records size and SHA-256. A copy that fails verification is kept as `*.failed`
//! and the job fails. Retention then runs (see `retention`), only when every copy verified.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use rusqlite::backup::{Backup as SqliteBackup, StepResult};
use rusqlite::{Connection, OpenFlags, MAIN_DB};
use sha2::{Digest, Sha256};

use super::{JobCtx, JobError, JobResult};
use crate::archive::{self, ArchiveError, BackupName, Entry, Manifest, Verified};
use crate::config::{Backup, BackupMethod, Compression, Database, Verify};
use crate::domain::human_bytes;
use crate::domain::{BackupFigures, Figures};
use crate::retention;
use crate::schedule::Zone;

/// Pages copied per backup step: cancel is checked between steps.
const PAGES_PER_STEP: i32 = 1024;

/// One source file of a backup run.
pub use crate::config::BackupSource as Source;

/// The files a backup of `db` copies, in order (`Database::backup_sources`).
pub fn sources(db: &Database) -> Vec<Source> {
    db.backup_sources()
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn sql(context: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> JobError {
    let context = context.into();
    move |source| JobError::Sqlite { context, source }
}

/// Removes temp files unless the run got them safely into place; each stays flocked (owned
/// by this live process, see `archive::clean_leftovers`) until then.
struct TempFiles(Vec<archive::TempFile>);

impl TempFiles {
    fn forget(&mut self, path: &Path) {
        self.0.retain(|t| t.path != path);
    }
}

impl Drop for TempFiles {
    fn drop(&mut self) {
        for t in &self.0 {
            let _ = std::fs::remove_file(&t.path);
        }
    }
}

/// The longest names a backup of `db` creates must fit the file system: refused up front,
/// naming the file, instead of failing mid-run with "File name too long".
pub fn check_names(db: &Database, cfg: &Backup) -> Result<(), ArchiveError> {
    for part in cfg.dir.iter().filter_map(|p| p.to_str()) {
        archive::check_name_length(part, &cfg.dir, "a directory name in the backup directory")?;
    }
    let stamp = DateTime::<Utc>::UNIX_EPOCH;
    for s in sources(db) {
        let longest = BackupName {
            series: s.series.clone(),
            time: stamp,
            compressed: true,
            failed: true,
        };
        let tmp = archive::temp_path(&cfg.dir, &longest.file_name());
        let name = tmp.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        archive::check_name_length(
            &format!("{name}-journal"),
            &s.path,
            "the name of a backup of this file",
        )?;
    }
    Ok(())
}

/// What the source looked like in the snapshot the copy was taken from.
#[derive(Debug, Default)]
struct Snapshot {
    page_count: u64,
    page_size: u64,
    tables: BTreeMap<String, i64>,
    fk_violations: i64,
    restarts: u32,
}

pub fn run(ctx: &mut JobCtx<'_>) -> Result<JobResult, JobError> {
    let cfg = ctx
        .db
        .backup
        .as_ref()
        .ok_or_else(|| JobError::Refused("no [database.backup] section".into()))?;
    let dir = &cfg.dir;
    check_names(ctx.db, cfg)?;
    archive::ensure_private_dir(dir)?;
    let sources = sources(ctx.db);
    let need: u64 = sources
        .iter()
        .map(|s| file_size(&s.path) + file_size(&wal_of(&s.path)))
        .sum();
    let free = archive::free_bytes(dir)?;
    if free < need {
        return Err(JobError::Refused(format!(
            "{}: not enough free space for a backup: needs about {} (the database size), {} free; free some space or point backup.dir at a larger file system",
            dir.display(),
            human_bytes(need),
            human_bytes(free)
        )));
    }
    let stamp = unique_stamp(dir, &sources, cfg);
    if ctx.dry_run {
        let names: Vec<String> = sources
            .iter()
            .map(|s| final_name(s, stamp, cfg).file_name())
            .collect();
        let plan = retention_preview(ctx.db, cfg, &ctx.config.daemon.timezone, stamp)?;
        return Ok(JobResult {
            summary: format!(
                "dry run: would write {} ({} to copy); {plan}",
                names.join(", "),
                human_bytes(need)
            ),
            figures: Some(Figures::Backup(BackupFigures {
                bytes_before: need,
                would_write: Some(names),
                ..BackupFigures::default()
            })),
            skipped: false,
        });
    }

    let cleaned = archive::clean_leftovers(dir, &archive::lock_dir(dir)?)?;
    if !cleaned.is_empty() {
        tracing::info!(
            "{}: removed {} leftover temp file(s) of an interrupted backup",
            dir.display(),
            cleaned.len()
        );
    }
    let started = Instant::now();
    let mut written = Vec::new();
    let mut restarts = 0;
    for source in &sources {
        let (entry, r) = copy_one(ctx, cfg, source, stamp)?;
        restarts += r;
        written.push(entry);
    }

    let elapsed = started.elapsed();
    let bytes: u64 = written.iter().map(|e| e.size).sum();
    let pages: u64 = written.iter().map(|e| e.page_count).sum();
    let main = &written[0];
    let retention = apply_retention(
        ctx.db,
        cfg,
        &ctx.config.daemon.timezone,
        Utc::now(),
        &written.iter().map(|e| e.file.clone()).collect::<Vec<_>>(),
    )?;
    let figures = BackupFigures {
        bytes_before: need,
        would_write: None,
        backup_path: Some(dir.join(&main.file).display().to_string()),
        backup_paths: Some(
            written
                .iter()
                .map(|e| dir.join(&e.file).display().to_string())
                .collect(),
        ),
        bytes_after: Some(bytes),
        pages: Some(pages),
        pages_per_sec: Some((pages as f64 / elapsed.as_secs_f64().max(1e-6)) as u64),
        verified: Some(main.verified),
        sha256: Some(main.sha256.clone()),
        retention_deleted: Some(retention.deleted.len() as u64),
        retention_warnings: Some(retention.warnings.len() as u64),
        restarts: Some(u64::from(restarts)),
    };
    let verified = match main.verified {
        Verified::None => "not verified".to_string(),
        v => format!("verified {}", v.as_str()),
    };
    Ok(JobResult {
        summary: format!(
            "wrote {} ({}, {verified}) to {}; {}",
            written
                .iter()
                .map(|e| e.file.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            human_bytes(bytes),
            dir.display(),
            retention.summary
        ),
        figures: Some(Figures::Backup(figures)),
        skipped: false,
    })
}

fn final_name(source: &Source, stamp: DateTime<Utc>, cfg: &Backup) -> BackupName {
    BackupName {
        series: source.series.clone(),
        time: stamp,
        compressed: matches!(cfg.compression, Compression::Zstd { .. }),
        failed: false,
    }
}

/// Now, to the second, moved on while a file of that name already exists.
fn unique_stamp(dir: &Path, sources: &[Source], cfg: &Backup) -> DateTime<Utc> {
    let mut stamp = Utc::now().trunc_subsecs(0);
    while sources.iter().any(|s| {
        let n = final_name(s, stamp, cfg);
        let failed = BackupName {
            failed: true,
            ..n.clone()
        };
        dir.join(n.file_name()).exists() || dir.join(failed.file_name()).exists()
    }) {
        stamp += chrono::Duration::seconds(1);
    }
    stamp
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn wal_of(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

/// Record `entry` in the manifest and move `tmp` to its final name, both under the
/// directory's lock: the manifest names the file before it appears under its final name (a
/// process killed in between leaves an entry without a file, dropped by the next save, never
/// a backup the manifest does not know), and no other job's manifest update is lost.
fn record_and_commit(dir: &Path, entry: &Entry, tmp: &Path) -> Result<(), ArchiveError> {
    let held = archive::lock_dir(dir)?;
    let mut manifest = Manifest::load(dir)?;
    manifest.retain_existing(dir);
    manifest.upsert(entry.clone());
    manifest.save(dir, &held)?;
    if let Err(e) = archive::commit(tmp, &dir.join(&entry.file)) {
        manifest.backups.retain(|m| m.file != entry.file);
        let _ = manifest.save(dir, &held);
        return Err(e);
    }
    Ok(())
}

/// Copy, verify, compress and commit one source. A copy that fails verification is stored
/// as `.failed` with its manifest entry, and the job fails.
fn copy_one(
    ctx: &JobCtx<'_>,
    cfg: &Backup,
    source: &Source,
    stamp: DateTime<Utc>,
) -> Result<(Entry, u32), JobError> {
    let started = Instant::now();
    let dir = &cfg.dir;
    let raw_name = BackupName {
        compressed: false,
        ..final_name(source, stamp, cfg)
    };
    let tmp = archive::temp_path(dir, &raw_name.file_name());
    let mut temps = TempFiles(vec![archive::create_temp(&tmp)?]);
    let snapshot = copy_snapshot(ctx, cfg, source, &tmp)?;
    let copied = started.elapsed();
    let uncompressed = cfg.compression == Compression::None;

    let mut entry = Entry {
        file: String::new(),
        series: source.series.clone(),
        database: ctx.db.name.clone(),
        source: source.path.display().to_string(),
        created_at: stamp,
        size: 0,
        sha256: String::new(),
        compressed: false,
        verified: Verified::None,
        page_count: snapshot.page_count,
        page_size: snapshot.page_size,
        tables: snapshot.tables.clone(),
        duration_ms: 0,
        error: None,
    };
    // The copy's bytes are final now: an uncompressed backup's SHA-256 is computed on another
    // core while this one syncs and verifies (both only read the file).
    let (synced, checked, raw_sha) = std::thread::scope(|s| {
        let hasher = uncompressed.then(|| s.spawn(|| archive::sha256_file(&tmp)));
        let synced = archive::fsync_file(&tmp).map(|_| started.elapsed());
        let checked = match (&synced, cfg.verify) {
            (Err(_), _) | (_, Verify::None) => Ok(()),
            _ => verify_copy(&tmp, cfg.verify, cfg.method, &snapshot),
        };
        let sha = hasher.map(|h| h.join().expect("hash thread"));
        (synced, checked, sha)
    });
    let synced = synced?;
    if let Err(problem) = checked {
        let failed = BackupName {
            failed: true,
            ..raw_name.clone()
        };
        let failed_path = dir.join(failed.file_name());
        entry.file = failed.file_name();
        entry.verified = Verified::Failed;
        entry.size = file_size(&tmp);
        entry.sha256 = archive::sha256_file(&tmp).unwrap_or_default();
        entry.error = Some(problem.clone());
        entry.duration_ms = started.elapsed().as_millis() as u64;
        let stored = record_and_commit(dir, &entry, &tmp);
        if stored.is_ok() {
            temps.forget(&tmp);
        }
        let msg = format!(
            "backup of {} failed verification ({problem}); {}, retention deleted nothing",
            source.path.display(),
            match stored {
                Ok(()) => format!("kept as {} for inspection", failed_path.display()),
                Err(e) => format!("could not keep it for inspection ({e})"),
            }
        );
        return Err(JobError::VerifyFailed(msg));
    }
    entry.verified = match cfg.verify {
        Verify::None => Verified::None,
        Verify::Quick => Verified::Quick,
        Verify::Full => Verified::Full,
    };
    ctx.checkpoint()?;

    let final_name = final_name(source, stamp, cfg);
    let (stored_tmp, sha) = match cfg.compression {
        Compression::None => (tmp.clone(), raw_sha.expect("hashed above")?),
        Compression::Zstd { level } => {
            let ztmp = archive::create_temp(&archive::temp_path(dir, &final_name.file_name()))?;
            let sha = compress(&tmp, ztmp.file(), &ztmp.path, level)?;
            let path = ztmp.path.clone();
            temps.0.push(ztmp);
            (path, sha)
        }
    };
    entry.file = final_name.file_name();
    entry.compressed = final_name.compressed;
    entry.size = file_size(&stored_tmp);
    entry.sha256 = sha;
    let hashed = started.elapsed();
    entry.duration_ms = hashed.as_millis() as u64;
    record_and_commit(dir, &entry, &stored_tmp)?;
    temps.forget(&stored_tmp);
    tracing::debug!(
        "{}: copy {} ms, fsync {} ms, verify+compress+hash {} ms, {} restarts",
        source.series,
        copied.as_millis(),
        (synced - copied).as_millis(),
        (hashed - synced).as_millis(),
        snapshot.restarts
    );
    Ok((entry, snapshot.restarts))
}

/// Copy `source` into the new, empty file `tmp` from one read snapshot, recording what it
/// held.
fn copy_snapshot(
    ctx: &JobCtx<'_>,
    cfg: &Backup,
    source: &Source,
    tmp: &Path,
) -> Result<Snapshot, JobError> {
    let conn: &Connection = ctx.conn;
    let schema = quote(&source.schema);
    let shown = source.path.display().to_string();
    if cfg.method == BackupMethod::VacuumInto {
        // VACUUM cannot run inside a transaction: the snapshot is VACUUM's own.
        crate::sqlite::expected_slow(|| {
            conn.execute(&format!("VACUUM {schema} INTO ?1"), [tmp.to_string_lossy()])
        })
        .map_err(sql(format!("VACUUM INTO from {shown}")))?;
        std::fs::set_permissions(tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|source| JobError::Io {
                context: format!("{}: chmod 0600", tmp.display()),
                source,
            })?;
        let dst = Connection::open_with_flags(tmp, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(sql(tmp.display().to_string()))?;
        dst.query_row("PRAGMA journal_mode = DELETE", [], |r| {
            r.get::<_, String>(0)
        })
        .map_err(sql("journal_mode of the copy"))?;
        return Ok(Snapshot {
            page_count: dst
                .query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
                .map_err(sql("page_count"))? as u64,
            page_size: dst
                .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
                .map_err(sql("page_size"))? as u64,
            tables: row_counts(&dst, "main").map_err(sql("row counts of the copy"))?,
            ..Snapshot::default()
        });
    }
    let mut dst = Connection::open_with_flags(
        tmp,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql(tmp.display().to_string()))?;
    // The copy is a temporary file until it is fsynced and renamed: SQLite need not journal
    // or sync it (a crash leaves a temp file that the next run removes). Its data is synced
    // once, by `copy_one`, while the hash is computed.
    dst.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
        .map_err(sql(format!("{}: settings of the copy", tmp.display())))?;
    conn.execute_batch("BEGIN")
        .map_err(sql(format!("{shown}: begin read transaction")))?;
    let result = (|| -> Result<Snapshot, JobError> {
        // The first read pins this schema's snapshot for the whole copy.
        let mut snap = Snapshot::default();
        let page_count = conn
            .query_row(&format!("PRAGMA {schema}.page_count"), [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(sql(format!("{shown}: page_count")))? as u64;
        snap.page_count = page_count;
        snap.page_size = conn
            .query_row(&format!("PRAGMA {schema}.page_size"), [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(sql(format!("{shown}: page_size")))? as u64;
        if cfg.verify != Verify::None {
            crate::sqlite::expected_slow(|| -> Result<(), JobError> {
                snap.tables = row_counts(conn, &source.schema)
                    .map_err(sql(format!("{shown}: row counts")))?;
                snap.fk_violations = fk_violations(conn, &source.schema)
                    .map_err(sql(format!("{shown}: foreign_key_check")))?;
                Ok(())
            })?;
        }
        let backup = SqliteBackup::new_with_names(conn, source.schema.as_str(), &mut dst, MAIN_DB)
            .map_err(sql(format!("{shown}: start backup")))?;
        let mut last_remaining: Option<i32> = None;
        let bar = progress_bar(&source.series, snap.page_count);
        loop {
            ctx.checkpoint()?;
            match backup
                .step(PAGES_PER_STEP)
                .map_err(sql(format!("{shown}: backup step")))?
            {
                StepResult::Done => break,
                StepResult::More => {}
                _ => std::thread::sleep(Duration::from_millis(20)), // busy/locked: try again
            }
            let p = backup.progress();
            if last_remaining.is_some_and(|l| p.remaining > l) {
                snap.restarts += 1;
            }
            last_remaining = Some(p.remaining);
            if let Some(bar) = &bar {
                bar.set_position((p.pagecount - p.remaining).max(0) as u64);
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        Ok(snap)
    })();
    let end = conn.execute_batch("COMMIT");
    let snap = result?;
    end.map_err(sql(format!("{shown}: end read transaction")))?;
    // The copy carries the source's WAL flag: make it one self-contained file.
    dst.query_row("PRAGMA journal_mode = DELETE", [], |r| {
        r.get::<_, String>(0)
    })
    .map_err(sql("journal_mode of the copy"))?;
    dst.close().map_err(|(_, e)| sql("closing the copy")(e))?;
    Ok(snap)
}

/// Rows per ordinary table of `schema` (virtual tables are skipped).
fn row_counts(conn: &Connection, schema: &str) -> rusqlite::Result<BTreeMap<String, i64>> {
    let q = quote(schema);
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
            &format!("SELECT count(*) FROM {q}.{}", quote(&name)),
            [],
            |r| r.get(0),
        )?;
        out.insert(name, n);
    }
    Ok(out)
}

fn fk_violations(conn: &Connection, schema: &str) -> rusqlite::Result<i64> {
    let mut stmt = conn.prepare(&format!("PRAGMA {}.foreign_key_check", quote(schema)))?;
    let mut rows = stmt.query([])?;
    let mut n = 0;
    while rows.next()?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// Open the copy read-only and check it against the snapshot; Err says what is wrong.
fn verify_copy(
    path: &Path,
    verify: Verify,
    method: BackupMethod,
    snap: &Snapshot,
) -> Result<(), String> {
    let run = || -> rusqlite::Result<Result<(), String>> {
        let c = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let pragma = if verify == Verify::Full {
            "integrity_check"
        } else {
            "quick_check"
        };
        let check: Vec<String> = c
            .prepare(&format!("PRAGMA {pragma}(10)"))?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if check != ["ok"] {
            return Ok(Err(format!("{pragma}: {}", check.join("; "))));
        }
        let fk = fk_violations(&c, "main")?;
        if fk > snap.fk_violations {
            return Ok(Err(format!(
                "foreign_key_check: {fk} violations, the source had {}",
                snap.fk_violations
            )));
        }
        if method == BackupMethod::Online {
            let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            if pages as u64 != snap.page_count {
                return Ok(Err(format!(
                    "page count {pages}, the source snapshot had {}",
                    snap.page_count
                )));
            }
        }
        let counts = row_counts(&c, "main")?;
        if counts != snap.tables {
            let diff: Vec<String> = snap
                .tables
                .iter()
                .filter(|(t, n)| counts.get(*t) != Some(n))
                .map(|(t, n)| {
                    format!(
                        "{t}: {} rows, source {n}",
                        counts
                            .get(t)
                            .map_or("no table".to_string(), |c| c.to_string())
                    )
                })
                .collect();
            return Ok(Err(format!("row counts differ ({})", diff.join(", "))));
        }
        Ok(Ok(()))
    };
    run().unwrap_or_else(|e| Err(format!("cannot read the copy: {e}")))
}

/// Stream-compress `from` into `to` (mode 0600), then decompress it again and compare hashes.
/// Read-through SHA-256: the round-trip check reads the compressed file once, and its
/// checksum comes from that same read.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Compress `from` into `to` (streaming), fsync, and prove it decompresses to the same bytes;
/// returns the SHA-256 of the compressed file.
fn compress(from: &Path, out: &File, to: &Path, level: i32) -> Result<String, JobError> {
    let io = |context: String| move |source| JobError::Io { context, source };
    let mut input =
        BufReader::new(File::open(from).map_err(io(format!("{}: open", from.display())))?);
    let mut enc =
        zstd::stream::Encoder::new(out, level).map_err(io(format!("{}: zstd", to.display())))?;
    let mut raw_hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input
            .read(&mut buf)
            .map_err(io(format!("{}: read", from.display())))?;
        if n == 0 {
            break;
        }
        raw_hash.update(&buf[..n]);
        enc.write_all(&buf[..n])
            .map_err(io(format!("{}: write", to.display())))?;
    }
    let out = enc
        .finish()
        .map_err(io(format!("{}: write", to.display())))?;
    out.sync_all()
        .map_err(io(format!("{}: fsync", to.display())))?;
    let mut dec = zstd::stream::Decoder::new(HashingReader {
        inner: File::open(to).map_err(io(format!("{}: open", to.display())))?,
        hash: Sha256::new(),
    })
    .map_err(io(format!("{}: zstd", to.display())))?;
    let mut round = Sha256::new();
    loop {
        let n = dec
            .read(&mut buf)
            .map_err(io(format!("{}: decompress", to.display())))?;
        if n == 0 {
            break;
        }
        round.update(&buf[..n]);
    }
    // Read whatever the decoder left (a trailing frame) so the checksum covers every byte.
    let mut reader = dec.finish();
    std::io::copy(&mut reader, &mut std::io::sink())
        .map_err(io(format!("{}: read", to.display())))?;
    if round.finalize() != raw_hash.finalize() {
        return Err(JobError::VerifyFailed(format!(
            "{}: compressed copy does not decompress to the backup",
            to.display()
        )));
    }
    Ok(archive::hex(&reader.get_ref().hash.clone().finalize()))
}

impl From<ArchiveError> for JobError {
    fn from(e: ArchiveError) -> Self {
        JobError::Archive(e)
    }
}

/// What retention did after a backup.
#[derive(Debug, Default)]
pub struct RetentionOutcome {
    pub deleted: Vec<String>,
    pub kept: usize,
    /// Files retention would not judge (unknown to the manifest, dated in the future).
    pub warnings: Vec<String>,
    pub summary: String,
}

/// One backup file with its manifest entry and retention's decision.
#[derive(Debug, Clone)]
pub struct Planned {
    pub found: archive::Found,
    pub entry: Option<Entry>,
    pub decision: retention::Decision,
}

impl Planned {
    /// Why this file needs an operator's look, if it does.
    pub fn warning(&self) -> Option<String> {
        let r = &self.decision.reasons;
        if r.contains(&retention::Reason::NotInManifest) {
            Some(match &self.entry {
                Some(e) => format!(
                    "its size ({} bytes) is not the size recorded in the manifest ({}): not counted by retention and never deleted by it; check it and remove it by hand",
                    self.found.size, e.size
                ),
                None => "named like a backup but not in the manifest: not counted by retention and never deleted by it; check it and remove it by hand".into(),
            })
        } else if r.contains(&retention::Reason::NotABackup) {
            Some(if archive::is_own_file(&self.found.file()) {
                "litekeeper's own file, named by a manifest entry of this database: ignored by retention and never deleted by it; leave the file alone (the entry is wrong)".into()
            } else {
                "named by a manifest entry of this database but not a backup name of its configured series (another database's file, or an attachment since removed from the configuration?): ignored by retention and never deleted by it; check the manifest entry, and remove the file by hand if it is an old backup".into()
            })
        } else if r.contains(&retention::Reason::FutureDated) {
            Some(
                "dated in the future (was the clock ahead, or moved back?): kept, but not counted by retention until its time has come"
                    .into(),
            )
        } else {
            None
        }
    }
}

/// Every backup of `db` in `cfg.dir` (newest first) with what retention decides for it at
/// `now`: the manifest's entries for `db` (other databases' entries in a shared directory
/// are not ours to judge), by series, plus files named like one of `db`'s series that the
/// manifest does not know (kept and reported). An entry whose file is not named as a backup
/// of one of `db`'s configured series ([`archive::backup_of`]) is kept and reported
/// (`not-a-backup`), never judged: the manifest says whose a backup is, the name which. `pending` is the time of a backup about to be
/// written (a dry run): it takes part in the decision as a verified backup but is not listed.
/// `this_run` names the files the deciding run wrote.
pub fn retention_plan(
    db: &Database,
    cfg: &Backup,
    zone: &Zone,
    now: DateTime<Utc>,
    pending: Option<DateTime<Utc>>,
    this_run: &[String],
) -> Result<Vec<Planned>, ArchiveError> {
    let manifest = Manifest::load(&cfg.dir)?;
    let series: Vec<String> = sources(db).into_iter().map(|s| s.series).collect();
    // An entry counts (and may be deleted) only when its file is named as a backup of one of
    // this database's series, the entry's own series: a hand-edited or foreign entry naming
    // another database's backup or the directory's lock is kept and reported, never judged.
    let (mut found, foreign): (Vec<archive::Found>, Vec<archive::Found>) =
        archive::list_of(&cfg.dir, &manifest, &db.name)?
            .into_iter()
            .partition(|f| {
                archive::backup_of(&f.file(), &series).is_some_and(|n| n.series == f.name.series)
            });
    found.extend(archive::unrecorded(&cfg.dir, &manifest, &series)?);
    let policy = retention::Policy {
        keep: cfg.keep,
        max_age: cfg.max_age,
    };
    let mut out = Vec::new();
    for series in series {
        let files: Vec<archive::Found> = found
            .iter()
            .filter(|f| f.name.series == series)
            .cloned()
            .collect();
        let mut candidates: Vec<retention::Candidate> = files
            .iter()
            .map(|f| retention::Candidate {
                time: f.name.time,
                failed: f.name.failed,
                verified: !f.name.failed
                    && f.entry
                        .as_ref()
                        .is_some_and(|e| matches!(e.verified, Verified::Quick | Verified::Full)),
                recorded: f.recorded(),
                this_run: this_run.contains(&f.file()),
            })
            .collect();
        candidates.extend(pending.map(retention::Candidate::pending));
        let decisions = retention::decide(&candidates, &policy, now, zone);
        for (f, decision) in files.into_iter().zip(decisions) {
            out.push(Planned {
                entry: f.entry.clone(),
                found: f,
                decision,
            });
        }
    }
    out.extend(foreign.into_iter().map(|f| Planned {
        entry: f.entry.clone(),
        found: f,
        decision: retention::Decision {
            reasons: vec![retention::Reason::NotABackup],
        },
    }));
    out.sort_by(|a, b| {
        b.found
            .name
            .time
            .cmp(&a.found.name.time)
            .then(a.found.name.series.cmp(&b.found.name.series))
            .then(a.found.path.cmp(&b.found.path))
    });
    Ok(out)
}

/// One line per file of the plan an operator should look at.
pub fn plan_warnings(plan: &[Planned]) -> Vec<String> {
    let mut unknown = Vec::new();
    let mut future = Vec::new();
    let mut foreign = Vec::new();
    for p in plan {
        let r = &p.decision.reasons;
        if r.contains(&retention::Reason::NotABackup) {
            foreign.push(p.found.file());
        } else if r.contains(&retention::Reason::NotInManifest) {
            unknown.push(p.found.file());
        } else if r.contains(&retention::Reason::FutureDated) {
            future.push(p.found.file());
        }
    }
    let mut out = Vec::new();
    if !unknown.is_empty() {
        out.push(format!(
            "{} file(s) named like backups are not in the manifest (or not of its size), so retention neither counts nor deletes them; check and remove them by hand: {}",
            unknown.len(),
            unknown.join(", ")
        ));
    }
    if !foreign.is_empty() {
        out.push(format!(
            "{} manifest entr(ies) of this database name files that are not its backups (another database's backup, litekeeper's own manifest or lock file?), so retention neither counts nor deletes them; check manifest.json: {}",
            foreign.len(),
            foreign.join(", ")
        ));
    }
    if !future.is_empty() {
        out.push(format!(
            "{} backup(s) dated in the future (the clock moved back?) are kept but not counted: {}",
            future.len(),
            future.join(", ")
        ));
    }
    out
}

/// One line saying what retention would delete after a backup taken at `stamp`.
fn retention_preview(
    db: &Database,
    cfg: &Backup,
    zone: &Zone,
    stamp: DateTime<Utc>,
) -> Result<String, JobError> {
    let plan = retention_plan(db, cfg, zone, stamp, Some(stamp), &[])?;
    let warnings = plan_warnings(&plan)
        .into_iter()
        .map(|w| format!("; warning: {w}"))
        .collect::<String>();
    let doomed: Vec<&Planned> = plan.iter().filter(|p| !p.decision.keep()).collect();
    if doomed.is_empty() {
        return Ok(format!(
            "retention would delete nothing ({} kept){warnings}",
            plan.len()
        ));
    }
    let bytes: u64 = doomed.iter().map(|p| p.found.size).sum();
    Ok(format!(
        "retention would delete {} of {} backups ({}): {}{warnings}",
        doomed.len(),
        plan.len(),
        human_bytes(bytes),
        doomed
            .iter()
            .map(|p| p.found.file())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Delete what the retention policy does not keep (only backups the manifest records for
/// `db`, never the files `written` by this run), then drop their manifest entries; all under
/// the directory's lock.
fn apply_retention(
    db: &Database,
    cfg: &Backup,
    zone: &Zone,
    now: DateTime<Utc>,
    written: &[String],
) -> Result<RetentionOutcome, JobError> {
    let held = archive::lock_dir(&cfg.dir)?;
    let plan = retention_plan(db, cfg, zone, now, None, written)?;
    let mut out = RetentionOutcome {
        warnings: plan_warnings(&plan),
        ..RetentionOutcome::default()
    };
    let mut freed = 0;
    for p in &plan {
        if p.decision.keep() {
            out.kept += 1;
            continue;
        }
        match fs::remove_file(&p.found.path) {
            Ok(()) => {
                freed += p.found.size;
                out.deleted.push(p.found.file());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(JobError::Archive(ArchiveError::Io {
                    path: p.found.path.clone(),
                    what: "cannot delete an expired backup",
                    source: e,
                }))
            }
        }
    }
    if !out.deleted.is_empty() {
        archive::fsync_dir(&cfg.dir)?;
    }
    let mut manifest = Manifest::load(&cfg.dir)?;
    let before = manifest.backups.len();
    manifest.retain_existing(&cfg.dir);
    if manifest.backups.len() != before {
        manifest.save(&cfg.dir, &held)?;
    }
    drop(held);
    for w in &out.warnings {
        tracing::warn!("backup {}: {}: {w}", db.name, cfg.dir.display());
    }
    out.summary = if out.deleted.is_empty() {
        format!("retention kept all {} backups", out.kept)
    } else {
        format!(
            "retention deleted {} ({} freed), kept {}",
            out.deleted.len(),
            human_bytes(freed),
            out.kept
        )
    };
    for w in &out.warnings {
        out.summary.push_str("; warning: ");
        out.summary.push_str(w);
    }
    Ok(out)
}

/// A progress bar on stderr, only when a person is watching (a TTY).
fn progress_bar(series: &str, pages: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(pages);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:30}] {pos}/{len} pages, {per_sec}, eta {eta}",
    )
    .map(|s| s.progress_chars("=> "));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar.set_prefix(format!("backup {series}"));
    Some(bar)
}
