//! One source's copy: the file copy, or the backup API in steps (or VACUUM INTO); verification
//! of the copy after the snapshot is released. The copy never waits for its readers: it
//! publishes how far the temp file is final, and its SHA-256 (or, with zstd, the compressor,
//! which hashes what it compresses) follows it from the page cache (`follow.rs`), so the
//! checks start when the last byte is written and overlap the rest of the hash and the fsync.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::backup::{Backup as SqliteBackup, StepResult};
use rusqlite::{Connection, OpenFlags, MAIN_DB};

use crate::archive::{self, BackupName, Entry, Verified};
use crate::config::{Backup, BackupMethod, Compression, Verify};
use crate::domain::CopyPath;
use crate::jobs::{JobCtx, JobError};

use super::compress::{Compressed, Compressor};
use super::filecopy;
use super::follow::{HashBehind, Written};
use super::verify::{verify_copy, Checked};
use super::{final_name, record_and_commit, sql, Snapshot, Source, TempFiles};
use crate::db_files::file_len;
use crate::sqlite::quote_ident;

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
) -> Result<(Entry, u32, CopyPath), JobError> {
    let started = Instant::now();
    let dir = &cfg.dir;
    let final_name = final_name(source, stamp, cfg);
    let raw_name = BackupName {
        compressed: false,
        ..final_name.clone()
    };
    let tmp = archive::temp_path(dir, &raw_name.file_name());
    let (mut temps, out, follower) = open_outputs(ctx, cfg, source, &tmp, &final_name)?;
    let snapshot = copy_snapshot(ctx, cfg, source, &tmp, &out, follower.written())?;
    let copied = started.elapsed();

    let mut entry = new_entry(ctx, source, stamp, &snapshot);
    let done = finish_copy(cfg, &tmp, &snapshot, follower, started);
    let synced = done.synced?;
    let checked = match done.checked {
        Ok(c) => c,
        Err(problem) => {
            return Err(keep_failed(
                dir, &mut entry, &raw_name, &tmp, problem, started, &mut temps,
            ))
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
    entry.fk_violations = (cfg.verify != Verify::None).then_some(checked.fk_violations);
    entry.verified = match cfg.verify {
        Verify::None => Verified::None,
        Verify::Quick => Verified::Quick,
        Verify::Full => Verified::Full,
    };
    ctx.checkpoint()?;

    let (stored_tmp, sha) = match done.stored {
        Stored::Raw(hashed) => (tmp.clone(), hashed?),
        Stored::Zstd(finished, path) => {
            // The round trip gave back exactly the bytes the compressor hashed.
            let c = settle(
                dir,
                &mut entry,
                &final_name,
                &path,
                finished,
                started,
                &mut temps,
            )?;
            tracing::debug!(
                "{}: zstd frame done at {} ms, round trip at {} ms",
                source.series,
                c.compressed_after.as_millis(),
                c.checked_after.as_millis()
            );
            entry.raw_size = Some(c.raw_bytes);
            entry.raw_sha256 = Some(c.raw_sha256);
            (path, c.stored_sha256)
        }
    };
    entry.file = final_name.file_name();
    entry.compressed = final_name.compressed;
    entry.size = file_len(&stored_tmp).unwrap_or(0);
    entry.sha256 = sha;
    let hashed = started.elapsed();
    entry.duration_ms = hashed.as_millis() as u64;
    record_and_commit(dir, &entry, &stored_tmp)?;
    temps.forget(&stored_tmp);
    tracing::debug!(
        "{}: {} copy {} ms, fsync done at {} ms, checks done at {} ms, verify+compress+hash \
         done at {} ms, {} restarts",
        source.series,
        snapshot.path.as_str(),
        copied.as_millis(),
        synced.as_millis(),
        done.checked_after.as_millis(),
        hashed.as_millis(),
        snapshot.restarts
    );
    Ok((entry, snapshot.restarts, snapshot.path))
}

/// What reads the raw copy behind the copy: its SHA-256, or the compressor (which hashes it
/// too) with the path of its temp file.
enum Follower {
    Hash(HashBehind),
    Zstd(Compressor, PathBuf),
}

impl Follower {
    /// Where the copy publishes how far the raw file is final.
    fn written(&self) -> &Written {
        match self {
            Follower::Hash(h) => h.written(),
            Follower::Zstd(c, _) => c.written(),
        }
    }
}

/// The temp files of one copy: the raw copy at `tmp` (its handle returned for the copy to
/// write), and its follower: its SHA-256, or with zstd the compressed file with its
/// compressor (it compresses the raw copy from the file as the copy writes it, its round
/// trip follows; the raw copy is only kept if it fails verification).
fn open_outputs(
    ctx: &JobCtx<'_>,
    cfg: &Backup,
    source: &Source,
    tmp: &Path,
    final_name: &BackupName,
) -> Result<(TempFiles, File, Follower), JobError> {
    let temps = TempFiles(vec![archive::create_temp(tmp)?]);
    let io = |what: &str| {
        let context = format!("{}: {what}", tmp.display());
        move |source| JobError::Io { context, source }
    };
    let out = temps.0[0].file().try_clone().map_err(io("open"))?;
    let mut temps = temps;
    let follower = match cfg.compression {
        Compression::None => Follower::Hash(
            File::open(tmp)
                .and_then(HashBehind::start)
                .map_err(io("open for its SHA-256"))?,
        ),
        Compression::Zstd { level } => {
            let ztmp =
                archive::create_temp(&archive::temp_path(&cfg.dir, &final_name.file_name()))?;
            let cancel = ctx.cancel.clone();
            let c = Compressor::new(
                tmp,
                ztmp.file(),
                &ztmp.path,
                level,
                None,
                &source.series,
                Box::new(move || cancel.is_cancelled()),
            )?;
            let path = ztmp.path.clone();
            temps.0.push(ztmp);
            Follower::Zstd(c, path)
        }
    };
    Ok((temps, out, follower))
}

/// The manifest entry of a copy of `snapshot`, before it is checked.
fn new_entry(
    ctx: &JobCtx<'_>,
    source: &Source,
    stamp: DateTime<Utc>,
    snapshot: &Snapshot,
) -> Entry {
    Entry {
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
        tables: BTreeMap::new(),
        duration_ms: 0,
        error: None,
        fk_violations: None,
        drill: None,
    }
}

/// What happened to a copy once its bytes were final.
struct Finished {
    /// When its fsync was done (since the copy started).
    synced: Result<Duration, JobError>,
    checked: Result<Checked, String>,
    /// When the checks were done (since the copy started).
    checked_after: Duration,
    stored: Stored,
}

/// The file to store, proved: the raw copy's SHA-256, or the compressed file's round trip.
enum Stored {
    Raw(Result<String, JobError>),
    Zstd(Result<Compressed, JobError>, PathBuf),
}

/// The copy's bytes are final and the snapshot released: its fsync (of a file that is kept),
/// the rest of its SHA-256 or of the compression, and the checks (on both cores) all run at
/// once.
fn finish_copy(
    cfg: &Backup,
    tmp: &Path,
    snapshot: &Snapshot,
    follower: Follower,
    started: Instant,
) -> Finished {
    let uncompressed = matches!(follower, Follower::Hash(_));
    std::thread::scope(|s| {
        let follower = s.spawn(move || match follower {
            Follower::Hash(h) => {
                let hashed = h.finish().map_err(|source| JobError::Io {
                    context: format!("{}: read back for its SHA-256", tmp.display()),
                    source,
                });
                if let Ok(h) = &hashed {
                    tracing::debug!(
                        "{}: SHA-256 of {} bytes done at {} ms ({} ms behind the copy)",
                        tmp.display(),
                        h.bytes,
                        started.elapsed().as_millis(),
                        h.took.as_millis()
                    );
                }
                Stored::Raw(hashed.map(|h| h.sha256))
            }
            Follower::Zstd(c, path) => Stored::Zstd(c.finish(), path),
        });
        let fsync = s.spawn(|| {
            let synced = if uncompressed {
                archive::fsync_file(tmp)
            } else {
                Ok(())
            };
            synced.map(|()| started.elapsed())
        });
        let checked = match cfg.verify {
            Verify::None => Ok(Checked::default()),
            _ => verify_copy(tmp, cfg.verify, snapshot),
        };
        let checked_after = started.elapsed();
        let synced = fsync.join().expect("fsync thread").map_err(JobError::from);
        let stored = follower.join().expect("hash or compress thread");
        Finished {
            synced,
            checked,
            checked_after,
            stored,
        }
    })
}

/// The stored file's SHA-256, or: a compressed file that failed its round trip is kept as
/// `.failed` (the job fails), any other error is returned as it is.
fn settle(
    dir: &Path,
    entry: &mut Entry,
    name: &BackupName,
    stored_tmp: &Path,
    stored: Result<Compressed, JobError>,
    started: Instant,
    temps: &mut TempFiles,
) -> Result<Compressed, JobError> {
    match stored {
        Ok(c) => Ok(c),
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
    entry.size = file_len(tmp).unwrap_or(0);
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

/// Copy `source` into the new, empty file `tmp` (open as `out`) from one read snapshot: the
/// file copy where it applies, else SQLite's backup API (or VACUUM INTO when configured).
/// `written` learns how far `tmp` is final: as it is written by the file copy, at once when
/// another path is done.
fn copy_snapshot(
    ctx: &JobCtx<'_>,
    cfg: &Backup,
    source: &Source,
    tmp: &Path,
    out: &File,
    written: &Written,
) -> Result<Snapshot, JobError> {
    let snap = if cfg.method == BackupMethod::VacuumInto {
        vacuum_into(ctx, source, tmp)?
    } else {
        match filecopy::pin(ctx, source)? {
            Ok(pinned) => {
                let c = filecopy::copy(ctx, source, pinned, out, tmp, written)?;
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
    let len = std::fs::metadata(tmp).map_err(|source| JobError::Io {
        context: format!("{}: stat", tmp.display()),
        source,
    })?;
    written.publish(len.len());
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
        };
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
        let stored = compress_file_with(&raw, ztmp.file(), &zpath, 3, &mut || Ok(()), flip);
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
