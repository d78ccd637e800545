//! The backup job: an online copy of the database and of every attached database, each to its
//! own file `{series}-{UTC YYYYMMDD-HHMMSS}.db[.zst]` in the backup directory.
//!
//! A WAL database is copied as a file: the database file with the WAL's frames of one pinned
//! snapshot put in place, hashed while it is written (`filecopy.rs`); where that does not
//! apply (rollback journal, another VFS, a WAL that does not validate) SQLite's backup API
//! copies it in steps under a read transaction, and `method = "vacuum_into"` makes a
//! compacted copy. Nothing but the copy runs inside the snapshot. Each copy is written under a
//! temp name as a rollback-journal database (one self-contained file), then fsynced while it
//! is verified (quick_check or integrity_check on one core, foreign_key_check and row counts,
//! recorded from the copy, on the other), optionally zstd-compressed (round-trip checked), and
//! renamed into place; the manifest records size and SHA-256. A copy that fails verification
//! is kept as `*.failed` and the job fails. Retention then runs (see `retention`), only when
//! every copy verified.
//!
//! Layout: `mod.rs` runs the job (names, stamps, the commit of each copy); `copy.rs` copies
//! (choosing the path), verifies and commits one source; `filecopy.rs` is the file copy;
//! `compress.rs` is the zstd compressor with its concurrent round trip; `retain.rs` plans and
//! applies retention.

pub mod chains;
mod compress;
mod copy;
mod filecopy;
mod follow;
pub mod incremental;
pub mod offsite;
pub mod offsite_hold;
mod retain;
mod verify;
mod writeback;

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};

use super::{JobCtx, JobError, JobResult};
use crate::archive::{self, ArchiveError, BackupName, Entry, Manifest, Verified};
use crate::config::{Backup, Compression, Database};
use crate::db_files::{file_len, DbFiles};
use crate::domain::human_bytes;
use crate::domain::{BackupFigures, CopyPath, Figures};

use self::copy::copy_one;
use self::retain::{apply_retention, retention_preview};
pub use self::retain::{plan_warnings, retention_plan, Planned, RetentionOutcome};

/// One source file of a backup run.
pub use crate::config::BackupSource as Source;

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

    /// The temp files, no longer removed on drop (the caller keeps them).
    fn into_kept(mut self) -> Vec<archive::TempFile> {
        std::mem::take(&mut self.0)
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
    for s in db.backup_sources() {
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

/// What the copy holds: the snapshot it was taken from, and how it was made.
#[derive(Debug)]
struct Snapshot {
    page_count: u64,
    page_size: u64,
    restarts: u32,
    path: CopyPath,
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
    let sources = ctx.db.backup_sources();
    let need = check_space(dir, &sources)?;
    let stamp = unique_stamp(dir, &sources, cfg);
    if ctx.dry_run {
        return dry_run(ctx, cfg, &sources, stamp, need);
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
    let mut copies = Copies::default();
    for source in &sources {
        let (entry, r, path) = copy_one(ctx, cfg, source, stamp)?;
        copies.restarts += r;
        copies.path.get_or_insert(path);
        copies.written.push(entry);
    }
    copies.elapsed = started.elapsed();
    let written = &copies.written;
    // Backups whose off-site copy is pending and wanted by its remote stay until stored
    // (this run's copies are pending from here on).
    let files: Vec<_> = written
        .iter()
        .map(|e| (e.file.as_str(), e.created_at))
        .collect();
    offsite::mark_pending(ctx.config, ctx.db, &files).map_err(JobError::Refused)?;
    let held = offsite_hold::held_now(ctx.config, ctx.db, Utc::now());
    let retention = apply_retention(
        ctx.db,
        cfg,
        &ctx.config.daemon.timezone,
        Utc::now(),
        &written.iter().map(|e| e.file.clone()).collect::<Vec<_>>(),
        &held,
    )?;
    let chains = chains::apply_chain_retention(ctx.db, cfg, cfg.chain_keep(), Utc::now())?;
    // The copies are committed and no transaction is open: off-site copies now.
    let pushed = offsite::after_backup(ctx.config, ctx.db, written).map_err(JobError::Refused)?;
    let deleted = retention.deleted.len() + chains.deleted.len();
    let figures = figures(dir, need, &copies, &retention, deleted, pushed.as_ref());
    if let Some(e) = pushed.as_ref().and_then(offsite::Pushed::failure) {
        return Err(e);
    }
    let offsite = pushed
        .as_ref()
        .map(offsite::Pushed::summary)
        .unwrap_or_default();
    Ok(JobResult {
        summary: format!(
            "wrote {} ({}, {}) to {}; {}{offsite}",
            written
                .iter()
                .map(|e| e.file.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            human_bytes(written.iter().map(|e| e.size).sum()),
            match written[0].verified {
                Verified::None => "not verified".to_string(),
                v => format!("verified {}", v.as_str()),
            },
            dir.display(),
            retention.summary
        ),
        figures: Some(Figures::Backup(figures)),
        skipped: false,
    })
}

/// The copies a run made, in the order of the sources.
#[derive(Default)]
struct Copies {
    written: Vec<Entry>,
    restarts: u32,
    /// How the first source was copied.
    path: Option<CopyPath>,
    elapsed: Duration,
}

/// The bytes a backup of `sources` needs (database files and WALs), refused when `dir`'s file
/// system has less free.
fn check_space(dir: &Path, sources: &[Source]) -> Result<u64, JobError> {
    let need: u64 = sources
        .iter()
        .map(|s| {
            let f = DbFiles::of(&s.path);
            file_len(&f.main).unwrap_or(0) + file_len(&f.wal).unwrap_or(0)
        })
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
    Ok(need)
}

/// What a run would write, and what retention would do then.
fn dry_run(
    ctx: &JobCtx<'_>,
    cfg: &Backup,
    sources: &[Source],
    stamp: DateTime<Utc>,
    need: u64,
) -> Result<JobResult, JobError> {
    let names: Vec<String> = sources
        .iter()
        .map(|s| final_name(s, stamp, cfg).file_name())
        .collect();
    let held = offsite_hold::held_now(ctx.config, ctx.db, stamp);
    let mut plan = retention_preview(ctx.db, cfg, &ctx.config.daemon.timezone, stamp, &held)?;
    let remote = offsite::preview(ctx.config, ctx.db);
    if !remote.is_empty() {
        plan = format!("{plan}; {remote}");
    }
    Ok(JobResult {
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
    })
}

/// The run's figures: the main copy's, the totals of every copy, retention, off-site.
fn figures(
    dir: &Path,
    need: u64,
    copies: &Copies,
    retention: &RetentionOutcome,
    deleted: usize,
    pushed: Option<&offsite::Pushed>,
) -> BackupFigures {
    let written = &copies.written;
    let bytes: u64 = written.iter().map(|e| e.size).sum();
    let pages: u64 = written.iter().map(|e| e.page_count).sum();
    let main = &written[0];
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
        pages_per_sec: Some((pages as f64 / copies.elapsed.as_secs_f64().max(1e-6)) as u64),
        verified: Some(main.verified),
        sha256: Some(main.sha256.clone()),
        retention_deleted: Some(deleted as u64),
        retention_warnings: Some(retention.warnings.len() as u64),
        restarts: Some(u64::from(copies.restarts)),
        copy_path: copies.path,
        ..BackupFigures::default()
    };
    BackupFigures {
        offsite: pushed.map(offsite::Pushed::figures).unwrap_or_default(),
        ..figures
    }
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

/// Record `entry` in the manifest and move `tmp` to its final name, both under the
/// directory's lock: the manifest names the file before it appears under its final name (a
/// process killed in between leaves an entry without a file, dropped by the next save, never
/// a backup the manifest does not know), and no other job's manifest update is lost.
fn record_and_commit(dir: &Path, entry: &Entry, tmp: &Path) -> Result<(), ArchiveError> {
    record_then_rename(
        dir,
        tmp,
        &entry.file,
        |m| m.upsert(entry.clone()),
        |m| m.backups.retain(|b| b.file != entry.file),
    )
}

/// The protocol of [`record_and_commit`] for any manifest record: `record` adds it, `forget`
/// takes it out again when the rename fails.
fn record_then_rename(
    dir: &Path,
    tmp: &Path,
    file: &str,
    record: impl FnOnce(&mut Manifest),
    forget: impl FnOnce(&mut Manifest),
) -> Result<(), ArchiveError> {
    let held = archive::lock_dir(dir)?;
    let mut manifest = Manifest::load(dir)?;
    manifest.retain_existing(dir);
    record(&mut manifest);
    manifest.save(dir, &held)?;
    if let Err(e) = archive::commit(tmp, &dir.join(file)) {
        forget(&mut manifest);
        let _ = manifest.save(dir, &held);
        return Err(e);
    }
    Ok(())
}

impl From<ArchiveError> for JobError {
    fn from(e: ArchiveError) -> Self {
        JobError::Archive(e)
    }
}
