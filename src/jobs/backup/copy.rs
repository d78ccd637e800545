//! One source's copy: the backup API in steps (or VACUUM INTO), verification against the
//! source snapshot, then compression (`compress.rs`) or fsync and hash, and the commit.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::backup::{Backup as SqliteBackup, StepResult};
use rusqlite::{Connection, OpenFlags, MAIN_DB};

use crate::archive::{self, BackupName, Entry, Verified};
use crate::config::{Backup, BackupMethod, Compression, Verify};
use crate::jobs::{JobCtx, JobError};

use super::compress::compress_file;
use super::{file_size, final_name, record_and_commit, sql, Snapshot, Source, TempFiles};
use crate::sqlite::{fk_violations, quote_ident, row_counts};

/// Pages copied per backup step: cancel is checked between steps.
const PAGES_PER_STEP: i32 = 1024;

/// Copy, verify, compress and commit one source. A copy that fails verification (or whose
/// compressed file fails the round trip) is stored as `.failed` with its manifest entry, and
/// the job fails.
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

    let mut entry = Entry {
        file: String::new(),
        series: source.series.clone(),
        database: ctx.db.name.clone(),
        source: source.path.display().to_string(),
        created_at: stamp,
        size: 0,
        sha256: String::new(),
        compressed: false,
        raw_size: None,
        raw_sha256: None,
        verified: Verified::None,
        page_count: snapshot.page_count,
        page_size: snapshot.page_size,
        tables: snapshot.tables.clone(),
        duration_ms: 0,
        error: None,
        fk_violations: (cfg.verify != Verify::None).then_some(snapshot.fk_violations),
        drill: None,
    };
    let verify = || match cfg.verify {
        Verify::None => Ok(()),
        v => verify_copy(&tmp, v, cfg.method, &snapshot),
    };
    let final_name = final_name(source, stamp, cfg);
    let (stored_tmp, checked, stored, raw) = match cfg.compression {
        Compression::None => {
            // The copy's bytes are final now: its SHA-256 is computed on another core while
            // this one syncs and verifies (both only read the file).
            let (synced, checked, sha) = std::thread::scope(|s| {
                let hasher = s.spawn(|| archive::sha256_file(&tmp));
                let synced = archive::fsync_file(&tmp);
                let checked = match &synced {
                    Err(_) => Ok(()),
                    Ok(()) => verify(),
                };
                (synced, checked, hasher.join().expect("hash thread"))
            });
            synced?;
            (tmp.clone(), checked, sha.map_err(JobError::from), None)
        }
        Compression::Zstd { level } => {
            // The raw copy is never kept (unless it fails verification), so it is not
            // fsynced: it is verified on one thread while this one streams it into the
            // compressor (workers on every core, round trip while it runs).
            let ztmp = archive::create_temp(&archive::temp_path(dir, &final_name.file_name()))?;
            let (checked, compressed) = std::thread::scope(|s| {
                let checker = s.spawn(verify);
                let compressed = compress_file(&tmp, ztmp.file(), &ztmp.path, level, &mut || {
                    ctx.checkpoint()
                });
                (checker.join().expect("verify thread"), compressed)
            });
            let path = ztmp.path.clone();
            temps.0.push(ztmp);
            let (stored, raw) = match compressed {
                Ok(c) => (Ok(c.stored_sha256), Some((c.raw_bytes, c.raw_sha256))),
                Err(e) => (Err(e), None),
            };
            (path, checked, stored, raw)
        }
    };
    let synced = started.elapsed();
    if let Err(problem) = checked {
        return Err(keep_failed(
            dir, &mut entry, &raw_name, &tmp, problem, started, &mut temps,
        ));
    }
    entry.verified = match cfg.verify {
        Verify::None => Verified::None,
        Verify::Quick => Verified::Quick,
        Verify::Full => Verified::Full,
    };
    ctx.checkpoint()?;
    entry.sha256 = settle(
        dir,
        &mut entry,
        &final_name,
        &stored_tmp,
        stored,
        started,
        &mut temps,
    )?;
    entry.file = final_name.file_name();
    entry.compressed = final_name.compressed;
    entry.size = file_size(&stored_tmp);
    (entry.raw_size, entry.raw_sha256) = raw.unzip();
    let hashed = started.elapsed();
    entry.duration_ms = hashed.as_millis() as u64;
    record_and_commit(dir, &entry, &stored_tmp)?;
    temps.forget(&stored_tmp);
    tracing::debug!(
        "{}: copy {} ms, fsync+verify+compress+hash {} ms, commit {} ms, {} restarts",
        source.series,
        copied.as_millis(),
        (synced - copied).as_millis(),
        (hashed - synced).as_millis(),
        snapshot.restarts
    );
    Ok((entry, snapshot.restarts))
}

/// The stored file's SHA-256, or: a compressed file that failed its round trip is kept as
/// `.failed` (the job fails), any other error is returned as it is.
fn settle(
    dir: &Path,
    entry: &mut Entry,
    name: &BackupName,
    stored_tmp: &Path,
    stored: Result<String, JobError>,
    started: Instant,
    temps: &mut TempFiles,
) -> Result<String, JobError> {
    match stored {
        Ok(sha) => Ok(sha),
        Err(JobError::VerifyFailed(problem)) => {
            entry.compressed = name.compressed;
            Err(keep_failed(
                dir, entry, name, stored_tmp, problem, started, temps,
            ))
        }
        Err(e) => Err(e),
    }
}

/// Keep `tmp`, which failed verification, as `name` made `.failed` with its manifest entry,
/// and say so in the job's error.
fn keep_failed(
    dir: &Path,
    entry: &mut Entry,
    name: &BackupName,
    tmp: &Path,
    problem: String,
    started: Instant,
    temps: &mut TempFiles,
) -> JobError {
    let failed = BackupName {
        failed: true,
        ..name.clone()
    };
    let failed_path = dir.join(failed.file_name());
    entry.file = failed.file_name();
    entry.verified = Verified::Failed;
    entry.size = file_size(tmp);
    entry.sha256 = archive::sha256_file(tmp).unwrap_or_default();
    entry.error = Some(problem.clone());
    entry.duration_ms = started.elapsed().as_millis() as u64;
    let stored = archive::fsync_file(tmp).and_then(|()| record_and_commit(dir, entry, tmp));
    if stored.is_ok() {
        temps.forget(tmp);
    }
    JobError::VerifyFailed(format!(
        "backup of {} failed verification ({problem}); {}, retention deleted nothing",
        entry.source,
        match stored {
            Ok(()) => format!("kept as {} for inspection", failed_path.display()),
            Err(e) => format!("could not keep it for inspection ({e})"),
        }
    ))
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
        let bar = crate::progress::pages_bar(&source.series, snap.page_count);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::Manifest;
    use crate::jobs::backup::compress::{compress_file_with, tests, Wrap};

    /// The job's path for a compressed file whose round trip fails: `.zst.failed`, with its
    /// manifest entry, and a verification failure (exit 65).
    #[test]
    fn a_compressed_file_that_fails_its_round_trip_is_kept_as_failed() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let raw = dir.join("raw.db");
        std::fs::write(&raw, tests::sample(4 << 20)).unwrap();
        let stamp = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let name = BackupName {
            series: "chat".into(),
            time: stamp,
            compressed: true,
            failed: false,
        };
        let ztmp = archive::create_temp(&archive::temp_path(dir, &name.file_name())).unwrap();
        let zpath = ztmp.path.clone();
        let flip: Wrap = Box::new(|inner| {
            Box::new(tests::FlipBit {
                inner,
                seen: 0,
                at: 1000,
            })
        });
        let stored = compress_file_with(&raw, ztmp.file(), &zpath, 3, &mut || Ok(()), flip)
            .map(|c| c.stored_sha256);
        let mut temps = TempFiles(vec![ztmp]);
        let mut entry = Entry {
            file: String::new(),
            series: "chat".into(),
            database: "chat".into(),
            source: "/srv/chat.db".into(),
            created_at: stamp,
            size: 0,
            sha256: String::new(),
            compressed: false,
            raw_size: None,
            raw_sha256: None,
            verified: Verified::Quick,
            page_count: 1,
            page_size: 4096,
            tables: Default::default(),
            fk_violations: None,
            duration_ms: 0,
            error: None,
            drill: None,
        };
        let err = settle(
            dir,
            &mut entry,
            &name,
            &zpath,
            stored,
            Instant::now(),
            &mut temps,
        )
        .unwrap_err();
        let failed = "chat-20231114-221320.db.zst.failed";
        match &err {
            JobError::VerifyFailed(msg) => {
                assert!(msg.contains("does not decompress"), "{msg}");
                assert!(
                    msg.contains(&format!("kept as {}", dir.join(failed).display())),
                    "{msg}"
                );
            }
            other => panic!("not a verification failure: {other}"),
        }
        assert_eq!(err.exit_code(), crate::domain::ExitCode::DataErr);
        drop(temps);
        assert!(!zpath.exists());
        let kept = dir.join(failed);
        let m = Manifest::load(dir).unwrap();
        let e = m.get(failed).expect("manifest entry of the failed file");
        assert_eq!(e.verified, Verified::Failed);
        assert!(e.compressed);
        assert_eq!(e.size, std::fs::metadata(&kept).unwrap().len());
        assert_eq!(e.sha256, archive::sha256_file(&kept).unwrap());
        assert!(e.error.as_deref().unwrap().contains("does not decompress"));
    }
}
