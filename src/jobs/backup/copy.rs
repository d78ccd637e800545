//! One source's copy: the file copy, or the backup API in steps (or VACUUM INTO); verification
//! of the copy after the snapshot is released; with zstd, the compressor is the copy's tee: it
//! compresses the raw copy behind the copy, from the file, without slowing it down.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
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
    let (mut temps, out, mut zst) = open_outputs(ctx, cfg, source, &tmp, &final_name)?;
    let tee = zst.as_mut().map(|(c, _)| c as &mut (dyn Write + Send));
    let snapshot = copy_snapshot(ctx, cfg, source, &tmp, &out, tee)?;
    let copied = started.elapsed();

    let mut entry = new_entry(ctx, source, stamp, &snapshot);
    let done = finish_copy(cfg, &tmp, &snapshot, zst, started);
    let synced = done.synced?;
    let raw_sha = done.raw_sha?;
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

    let (stored_tmp, sha) = match done.compressed {
        None => (tmp.clone(), raw_sha),
        Some((finished, path)) => {
            // The round trip gave back exactly the bytes the copy hashed.
            let c = settle(
                dir,
                &mut entry,
                &final_name,
                &path,
                finished,
                started,
                &mut temps,
            )?;
            entry.raw_size = Some(c.raw_bytes);
            entry.raw_sha256 = Some(raw_sha);
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

/// The compressor of a zstd backup and the path of its temp file.
type Zst = Option<(Compressor, PathBuf)>;

/// The temp files of one copy: the raw copy at `tmp` (its handle returned for the copy to
/// write), and with zstd the compressed file with its compressor (the copy's tee: it
/// compresses the raw copy from the file as the copy writes it, its round trip follows; the
/// raw copy is only kept if it fails verification).
fn open_outputs(
    ctx: &JobCtx<'_>,
    cfg: &Backup,
    source: &Source,
    tmp: &Path,
    final_name: &BackupName,
) -> Result<(TempFiles, File, Zst), JobError> {
    let temps = TempFiles(vec![archive::create_temp(tmp)?]);
    let out = temps.0[0]
        .file()
        .try_clone()
        .map_err(|source| JobError::Io {
            context: format!("{}: open", tmp.display()),
            source,
        })?;
    let mut temps = temps;
    let zst = match cfg.compression {
        Compression::None => None,
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
            Some((c, path))
        }
    };
    Ok((temps, out, zst))
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
    /// SHA-256 of the raw copy.
    raw_sha: Result<String, JobError>,
    compressed: Option<(Result<Compressed, JobError>, PathBuf)>,
}

/// The copy's bytes are final and the snapshot released: its fsync (of a file that is kept),
/// the end of the compression, the checks (on both cores) and, unless the copy hashed itself,
/// its SHA-256 all run at once.
fn finish_copy(
    cfg: &Backup,
    tmp: &Path,
    snapshot: &Snapshot,
    zst: Zst,
    started: Instant,
) -> Finished {
    let uncompressed = zst.is_none();
    std::thread::scope(|s| {
        let hasher = snapshot
            .sha256
            .is_none()
            .then(|| s.spawn(|| archive::sha256_file(tmp)));
        let fsync = s.spawn(|| {
            let synced = if uncompressed {
                archive::fsync_file(tmp)
            } else {
                Ok(())
            };
            synced.map(|()| started.elapsed())
        });
        let finisher = zst.map(|(c, path)| s.spawn(move || (c.finish(), path)));
        let checked = match cfg.verify {
            Verify::None => Ok(Checked::default()),
            _ => verify_copy(tmp, cfg.verify, snapshot),
        };
        let synced = fsync.join().expect("fsync thread").map_err(JobError::from);
        let raw_sha = match (hasher, &snapshot.sha256) {
            (Some(h), _) => h.join().expect("hash thread").map_err(JobError::from),
            (None, Some(sha)) => Ok(sha.clone()),
            (None, None) => unreachable!("hashed while copied or above"),
        };
        let compressed = finisher.map(|f| f.join().expect("compress thread"));
        Finished {
            synced,
            checked,
            raw_sha,
            compressed,
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
        let stored =
            compress_file_with(&raw, ztmp.file(), &zpath, 3, &mut || Ok(()), flip).map(|(c, _)| c);
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
