//! One source's copy: the backup API in steps (or VACUUM INTO), verification against the
//! source snapshot, compression with its round-trip check.

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
use crate::jobs::{JobCtx, JobError};

use super::{file_size, final_name, record_and_commit, sql, Snapshot, Source, TempFiles};
use crate::sqlite::{fk_violations, quote_ident, row_counts};

/// Pages copied per backup step: cancel is checked between steps.
const PAGES_PER_STEP: i32 = 1024;

/// Copy, verify, compress and commit one source. A copy that fails verification is stored
/// as `.failed` with its manifest entry, and the job fails.
pub(super) fn copy_one(
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
        fk_violations: (cfg.verify != Verify::None).then_some(snapshot.fk_violations),
        drill: None,
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
    let schema = quote_ident(&source.schema);
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
