//! One source's copy: the file copy, or the backup API in steps (or VACUUM INTO); verification
//! of the copy after the snapshot is released; compression with its round-trip check.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::backup::{Backup as SqliteBackup, StepResult};
use rusqlite::{Connection, OpenFlags, MAIN_DB};
use sha2::{Digest, Sha256};

use crate::archive::{self, BackupName, Entry, Verified};
use crate::config::{Backup, BackupMethod, Compression, Verify};
use crate::domain::CopyPath;
use crate::jobs::{JobCtx, JobError};

use super::filecopy;
use super::{file_size, final_name, record_and_commit, sql, Snapshot, Source, TempFiles};
use crate::sqlite::quote_ident;

/// Pages copied per backup step: cancel is checked between steps.
const PAGES_PER_STEP: i32 = 1024;

/// Copy, verify, compress and commit one source. A copy that fails verification is stored
/// as `.failed` with its manifest entry, and the job fails.
pub(super) fn copy_one(
    ctx: &JobCtx<'_>,
    cfg: &Backup,
    source: &Source,
    stamp: DateTime<Utc>,
) -> Result<(Entry, u32, CopyPath), JobError> {
    let started = Instant::now();
    let dir = &cfg.dir;
    let raw_name = BackupName {
        compressed: false,
        ..final_name(source, stamp, cfg)
    };
    let tmp = archive::temp_path(dir, &raw_name.file_name());
    let mut temps = TempFiles(vec![archive::create_temp(&tmp)?]);
    let snapshot = copy_snapshot(ctx, cfg, source, &tmp, temps.0[0].file(), None)?;
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
        tables: BTreeMap::new(),
        duration_ms: 0,
        error: None,
    };
    // The copy's bytes are final and the snapshot released: fsync, the checks (on both
    // cores) and, unless the copy hashed itself, the SHA-256 all run at once.
    let (synced, checked, raw_sha) = std::thread::scope(|s| {
        let hasher = (uncompressed && snapshot.sha256.is_none())
            .then(|| s.spawn(|| archive::sha256_file(&tmp)));
        let fsync = s.spawn(|| archive::fsync_file(&tmp).map(|_| started.elapsed()));
        let checked = match cfg.verify {
            Verify::None => Ok(Checked::default()),
            _ => verify_copy(&tmp, cfg.verify, &snapshot),
        };
        let synced = fsync.join().expect("fsync thread");
        let sha = match (hasher, &snapshot.sha256) {
            (Some(h), _) => Some(h.join().expect("hash thread")),
            (None, Some(sha)) => Some(Ok(sha.clone())),
            (None, None) => None,
        };
        (synced, checked, sha)
    });
    let synced = synced?;
    let checked = match checked {
        Ok(c) => c,
        Err(problem) => {
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
    };
    if checked.fk_violations > 0 {
        tracing::warn!(
            "{}: the backup holds {} foreign key violation(s), as the source did at the \
             snapshot (`PRAGMA foreign_key_check` on it lists them)",
            source.path.display(),
            checked.fk_violations
        );
    }
    entry.tables = checked.tables;
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
        "{}: {} copy {} ms, fsync done at {} ms, verify+compress+hash done at {} ms, {} restarts",
        source.series,
        snapshot.path.as_str(),
        copied.as_millis(),
        synced.as_millis(),
        hashed.as_millis(),
        snapshot.restarts
    );
    Ok((entry, snapshot.restarts, snapshot.path))
}

/// Copy `source` into the new, empty file `tmp` (open as `out`) from one read snapshot: the
/// file copy where it applies, else SQLite's backup API (or VACUUM INTO when configured).
/// `tee`, when given, receives the copy's bytes in order (the file copy streams them; after
/// another path the finished file is read into it).
fn copy_snapshot(
    ctx: &JobCtx<'_>,
    cfg: &Backup,
    source: &Source,
    tmp: &Path,
    out: &File,
    tee: Option<&mut (dyn Write + Send)>,
) -> Result<Snapshot, JobError> {
    let snap = if cfg.method == BackupMethod::VacuumInto {
        vacuum_into(ctx, source, tmp)?
    } else {
        match filecopy::pin(ctx, source)? {
            Ok(pinned) => {
                let c = filecopy::copy(ctx, source, pinned, out, tmp, tee)?;
                tracing::debug!(
                    "{}: file copy, {} of {} pages from the WAL",
                    source.series,
                    c.wal_pages,
                    c.page_count
                );
                return Ok(Snapshot {
                    page_count: c.page_count,
                    page_size: c.page_size,
                    restarts: 0,
                    path: CopyPath::File,
                    sha256: Some(c.sha256),
                });
            }
            Err(reason) => {
                tracing::info!(
                    "{}: copying with SQLite's backup API: {reason}",
                    source.path.display()
                );
                backup_api(ctx, source, tmp)?
            }
        }
    };
    match tee {
        Some(t) => stream_into(snap, tmp, t),
        None => Ok(snap),
    }
}

/// Hand a finished copy's bytes to `tee`, hashing them on the way.
fn stream_into(
    mut snap: Snapshot,
    tmp: &Path,
    tee: &mut (dyn Write + Send),
) -> Result<Snapshot, JobError> {
    snap.sha256 = Some(
        filecopy::hash_file(tmp, Some(tee)).map_err(|source| JobError::Io {
            context: format!("{}: read", tmp.display()),
            source,
        })?,
    );
    Ok(snap)
}

/// `VACUUM INTO` the temp file (VACUUM's own snapshot), made a rollback-journal database.
fn vacuum_into(ctx: &JobCtx<'_>, source: &Source, tmp: &Path) -> Result<Snapshot, JobError> {
    let conn: &Connection = ctx.conn;
    let schema = quote_ident(&source.schema);
    let shown = source.path.display().to_string();
    // VACUUM cannot run inside a transaction: the snapshot is VACUUM's own.
    crate::sqlite::expected_slow(|| {
        conn.execute(&format!("VACUUM {schema} INTO ?1"), [tmp.to_string_lossy()])
    })
    .map_err(sql(format!("VACUUM INTO from {shown}")))?;
    std::fs::set_permissions(tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600)).map_err(
        |source| JobError::Io {
            context: format!("{}: chmod 0600", tmp.display()),
            source,
        },
    )?;
    let dst = Connection::open_with_flags(tmp, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(sql(tmp.display().to_string()))?;
    dst.query_row("PRAGMA journal_mode = DELETE", [], |r| {
        r.get::<_, String>(0)
    })
    .map_err(sql("journal_mode of the copy"))?;
    Ok(Snapshot {
        page_count: dst
            .query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
            .map_err(sql("page_count"))? as u64,
        page_size: dst
            .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
            .map_err(sql("page_size"))? as u64,
        restarts: 0,
        path: CopyPath::VacuumInto,
        sha256: None,
    })
}

/// SQLite's backup API in steps, inside one read transaction on the source: only the copy
/// runs in it.
fn backup_api(ctx: &JobCtx<'_>, source: &Source, tmp: &Path) -> Result<Snapshot, JobError> {
    let conn: &Connection = ctx.conn;
    let schema = quote_ident(&source.schema);
    let shown = source.path.display().to_string();
    let mut dst = Connection::open_with_flags(
        tmp,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql(tmp.display().to_string()))?;
    // The copy is a temporary file until it is fsynced and renamed: SQLite need not journal
    // or sync it (a crash leaves a temp file that the next run removes). Its data is synced
    // once, by `copy_one`, while it is verified.
    dst.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
        .map_err(sql(format!("{}: settings of the copy", tmp.display())))?;
    conn.execute_batch("BEGIN")
        .map_err(sql(format!("{shown}: begin read transaction")))?;
    let result = (|| -> Result<Snapshot, JobError> {
        // The first read pins this schema's snapshot for the whole copy.
        let mut snap = Snapshot {
            page_count: conn
                .query_row(&format!("PRAGMA {schema}.page_count"), [], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(sql(format!("{shown}: page_count")))? as u64,
            page_size: conn
                .query_row(&format!("PRAGMA {schema}.page_size"), [], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(sql(format!("{shown}: page_size")))? as u64,
            restarts: 0,
            path: CopyPath::BackupApi,
            sha256: None,
        };
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

fn fk_violations(conn: &Connection, schema: &str) -> rusqlite::Result<i64> {
    let mut stmt = conn.prepare(&format!("PRAGMA {}.foreign_key_check", quote_ident(schema)))?;
    let mut rows = stmt.query([])?;
    let mut n = 0;
    while rows.next()?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// What checking the copy found: its row counts (the snapshot's) and foreign key violations.
#[derive(Debug, Default)]
struct Checked {
    tables: BTreeMap<String, i64>,
    fk_violations: i64,
}

fn open_copy(path: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
}

/// Check the copy: quick_check or integrity_check on one thread, its page count against the
/// snapshot's, foreign_key_check and row counts on another. Err says what is wrong.
fn verify_copy(path: &Path, verify: Verify, snap: &Snapshot) -> Result<Checked, String> {
    let pragma = if verify == Verify::Full {
        "integrity_check"
    } else {
        "quick_check"
    };
    let structure = || -> rusqlite::Result<Result<(), String>> {
        let c = open_copy(path)?;
        let check: Vec<String> = c
            .prepare(&format!("PRAGMA {pragma}(10)"))?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if check != ["ok"] {
            return Ok(Err(format!("{pragma}: {}", check.join("; "))));
        }
        Ok(Ok(()))
    };
    let contents = || -> rusqlite::Result<Result<Checked, String>> {
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
        Ok(Ok(Checked {
            fk_violations: fk_violations(&c, "main")?,
            tables: row_counts(&c, "main")?,
        }))
    };
    let unreadable = |e: rusqlite::Error| format!("cannot read the copy: {e}");
    let (structure, contents) = std::thread::scope(|s| {
        let t = s.spawn(structure);
        let contents = contents();
        (t.join().expect("check thread"), contents)
    });
    structure.unwrap_or_else(|e| Err(unreadable(e)))?;
    contents.unwrap_or_else(|e| Err(unreadable(e)))
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

/// A progress bar on stderr, only when a person is watching (a TTY).
pub(super) fn progress_bar(series: &str, pages: u64) -> Option<indicatif::ProgressBar> {
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
