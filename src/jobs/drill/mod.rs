//! The drill job: prove that backups restore, the way an operator would on the worst day, and
//! measure it. For each picked copy of each source (`from`): fetch it and check its SHA-256
//! against the manifest, decrypt, decompress and restore every file of the run into a private
//! scratch directory through the restore library (`restore::to_path`, as `restore --to`
//! does), run the checks (`checks`), then remove the scratch copy. Each phase is timed; the
//! copy's age is the recovery point, the total the recovery time.
//!
//! A drill never opens the live database nor takes its lock: drills of one database exclude
//! each other through their own lock (`lock_name`). While it reads a copy it holds the backup
//! directory's lock shared, so cleanup, manifest updates and retention (which take it
//! exclusively) wait and never remove the copy under it. A scratch directory left by a killed
//! drill is removed by the next one: only a directory carrying the drill's mark
//! (`SCRATCH_MARK`) or empty; anything else at `scratch_dir/NAME` (the live database, the app's
//! directory) is refused and left alone. A copy that fails is marked in the manifest
//! (`drill: failed`), and the run fails (exit 65).
//!
//! Layout: `mod.rs` (the run: sources, picking, phases, verdicts), `source.rs` (where copies
//! come from: `CopySource`, `Local` with its chains' points), `remote.rs` (a remote's copies,
//! downloaded and decrypted), `checks.rs` (the checks on a restored copy).

mod checks;
mod remote;
pub mod source;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::{JobError, JobResult};
use crate::archive::{self, BackupName};
use crate::config::{Config, Database, Drill, DrillPick, DrillSource};
use crate::domain::{human_bytes, CopyDrill, DrillFigures, DrillPhases, DrillVerdict, Figures};

use self::source::{CopySource, Point};

/// What `litekeeper drill` asks beyond the configuration.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    /// One source by name (`--from`) instead of the configured `from`.
    pub from: Option<String>,
    /// One backup file (any file of its run) instead of `pick`.
    pub backup: Option<String>,
}

/// What the drill job gets to work with (no connection: it never opens the live database).
pub struct DrillCtx<'a> {
    pub config: &'a Config,
    pub db: &'a Database,
    pub cancel: &'a CancellationToken,
    pub ask: &'a Ask,
    /// Say which copies would be drilled; restore nothing.
    pub dry_run: bool,
}

/// The name of the lock drills of `database` take in `lock_dir` (database names have no
/// dots, so it is no database's).
pub fn lock_name(database: &str) -> String {
    format!("{database}.drill")
}

/// The source `name` among those a drill of `db` may use: its `from`, or any remote of its
/// backup (`--from REMOTE` on demand), or why not.
pub fn source_named(db: &Database, cfg: &Drill, name: &str) -> Result<DrillSource, String> {
    if let Some(s) = cfg.from.iter().find(|s| s.name() == name) {
        return Ok(s.clone());
    }
    let remotes = db.backup.as_ref().map_or(&[][..], |b| &b.remotes[..]);
    if remotes.iter().any(|r| r == name) {
        return Ok(DrillSource::Remote(name.to_string()));
    }
    let known: Vec<&str> = cfg
        .from
        .iter()
        .map(|s| s.name())
        .chain(remotes.iter().map(String::as_str))
        .collect();
    Err(format!(
        "unknown source {name:?}: this database's drill reads from {} (its `from` and backup.remotes)",
        known.join(", ")
    ))
}

pub fn run(ctx: &DrillCtx<'_>) -> Result<JobResult, JobError> {
    let db = ctx.db;
    let cfg = db
        .drill
        .as_ref()
        .ok_or_else(|| JobError::Refused("no [database.drill] section".into()))?;
    let sources = match &ctx.ask.from {
        Some(name) => vec![source_named(db, cfg, name).map_err(JobError::Config)?],
        None => cfg.from.clone(),
    };
    let guard = Scratch(prepare_scratch(&cfg.scratch_dir, &db.name)?);
    let scratch = &guard.0;
    let mut copies = Vec::new();
    for s in &sources {
        let mut result = Ok(());
        let source = source::open(s, ctx.config, cfg, db)?;
        let points = source.points(db)?;
        let picked = pick(&points, cfg.pick, ctx.ask.backup.as_deref()).map_err(|why| {
            JobError::NoInput(format!("{} ({} source): {why}", db.name, source.name()))
        })?;
        if ctx.dry_run {
            copies.extend(picked.iter().map(|p| CopyDrill {
                source: source.name().to_string(),
                backup: p.main_file().to_string(),
                files: p.files.iter().map(|f| f.file.clone()).collect(),
                created_at: Some(p.created_at),
                ..CopyDrill::default()
            }));
            continue;
        }
        let mut drilled = Vec::new();
        for point in picked {
            if ctx.cancel.is_cancelled() {
                result = Err(JobError::Cancelled);
                break;
            }
            match drill_point(ctx, cfg, source.as_ref(), point, scratch) {
                Ok(c) => drilled.push(c),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // Verdicts go beside the copies even when a later one could not be drilled.
        let marked = source.mark(db, &drilled, Utc::now());
        copies.extend(drilled);
        result?;
        marked?;
    }
    if ctx.dry_run {
        return Ok(JobResult {
            summary: format!(
                "dry run: would drill {}",
                copies
                    .iter()
                    .map(|c| format!("{} ({})", c.backup, c.source))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            figures: None,
            skipped: false,
        });
    }
    summarize(db, copies)
}

/// The run's verdict: ok when every copy passed, else a failure naming each failed copy.
fn summarize(db: &Database, copies: Vec<CopyDrill>) -> Result<JobResult, JobError> {
    let failed: Vec<&CopyDrill> = copies
        .iter()
        .filter(|c| c.verdict == DrillVerdict::Failed)
        .collect();
    if !failed.is_empty() {
        let message = format!(
            "drill of {}: {} of {} copies failed: {}",
            db.name,
            failed.len(),
            copies.len(),
            failed
                .iter()
                .map(|c| format!(
                    "{} ({}): {}",
                    c.backup,
                    c.source,
                    c.error.as_deref().unwrap_or("failed")
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        return Err(JobError::DrillFailed {
            message,
            figures: Box::new(DrillFigures { copies }),
        });
    }
    let newest = &copies[0];
    let summary = format!(
        "{} cop{} restored and checked: newest {} ({}, {} old) restored in {} ({} checks passed)",
        copies.len(),
        if copies.len() == 1 { "y" } else { "ies" },
        newest.backup,
        newest.source,
        humantime::format_duration(Duration::from_secs(newest.age_seconds)),
        fmt_ms(newest.phases.total_ms),
        copies.iter().map(|c| c.checks.len()).sum::<usize>(),
    );
    Ok(JobResult {
        summary,
        figures: Some(Figures::Drill(DrillFigures { copies })),
        skipped: false,
    })
}

/// The per-copy report `litekeeper drill` prints: source, age, phases, checks, verdict.
pub fn report_lines(figures: &Option<Figures>) -> Vec<String> {
    let Some(d) = figures.as_ref().and_then(|f| f.drill()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for c in &d.copies {
        let p = &c.phases;
        out.push(format!(
            "  {} from {}: {} old, {} stored, {} restored",
            c.backup,
            c.source,
            humantime::format_duration(Duration::from_secs(c.age_seconds)),
            human_bytes(c.bytes),
            human_bytes(c.restored_bytes)
        ));
        out.push(format!(
            "    fetch {}, decrypt {}, decompress {}, restore {}, check {}; total {}",
            fmt_ms(p.fetch_ms),
            fmt_ms(p.decrypt_ms),
            fmt_ms(p.decompress_ms),
            fmt_ms(p.restore_ms),
            fmt_ms(p.check_ms),
            fmt_ms(p.total_ms)
        ));
        for check in &c.checks {
            out.push(format!("    {check}"));
        }
        out.push(match &c.error {
            None => format!("    verdict: {}", c.verdict.as_str()),
            Some(e) => format!("    verdict: {}: {e}", c.verdict.as_str()),
        });
    }
    out
}

/// "1.234 s"
pub fn fmt_ms(ms: u64) -> String {
    format!("{}.{:03} s", ms / 1000, ms % 1000)
}

/// The points to drill: the one holding the file `wanted`, or as `pick` says.
fn pick<'a>(
    points: &'a [Point],
    how: DrillPick,
    wanted: Option<&str>,
) -> Result<Vec<&'a Point>, String> {
    if let Some(w) = wanted {
        let w = Path::new(w)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(w);
        return points
            .iter()
            .find(|p| p.files.iter().any(|f| f.file == w))
            .map(|p| vec![p])
            .ok_or_else(|| format!("no backup named {w:?}"));
    }
    let Some(newest) = points.first() else {
        return Err(
            "no backup to drill (none recorded in the manifest that passed verification)".into(),
        );
    };
    Ok(match how {
        DrillPick::Newest => vec![newest],
        DrillPick::All => points.iter().collect(),
        DrillPick::NewestAndRandom if points.len() > 1 => {
            let i = rand::random_range(1..points.len());
            vec![newest, &points[i]]
        }
        DrillPick::NewestAndRandom => vec![newest],
    })
}

/// The file that marks a directory as a drill's scratch copy, made first in it.
const SCRATCH_MARK: &str = ".litekeeper-drill-scratch";

/// `scratch_dir/NAME`, new and private: what a killed drill left there (its mark inside, or
/// empty) is removed first (drills of this database hold their lock, so nothing else uses it).
fn prepare_scratch(root: &Path, name: &str) -> Result<PathBuf, JobError> {
    archive::ensure_private_dir(root)?;
    let dir = root.join(name);
    match std::fs::symlink_metadata(&dir) {
        Ok(m) => {
            // Empty: killed between making the directory and its mark; nothing to lose.
            let marked = m.is_dir()
                && (std::fs::symlink_metadata(dir.join(SCRATCH_MARK)).is_ok_and(|m| m.is_file())
                    || std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_none()));
            if !marked {
                return Err(JobError::Refused(format!(
                    "{}: is in the way of the drill's scratch copy and is not one (no {SCRATCH_MARK} in it), so it is left alone; point drill.scratch_dir at a directory of its own",
                    dir.display()
                )));
            }
            std::fs::remove_dir_all(&dir).map_err(|source| JobError::Io {
                context: format!(
                    "{}: cannot remove the scratch copy of an earlier drill",
                    dir.display()
                ),
                source,
            })?;
            tracing::info!(
                "{}: removed the scratch copy a killed drill left behind",
                dir.display()
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(JobError::Io {
                context: format!("{}: cannot stat the scratch directory", dir.display()),
                source,
            })
        }
    }
    archive::ensure_private_dir(&dir)?;
    archive::create_private(&dir.join(SCRATCH_MARK))?;
    Ok(dir)
}

/// The scratch directory, removed when the run ends however it ends (a killed process leaves
/// it for the next drill).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Drill one point: the copy's figures with its verdict. An Err is a drill that could not be
/// made (no space, cancelled), not a copy that failed.
fn drill_point(
    ctx: &DrillCtx<'_>,
    cfg: &Drill,
    source: &dyn CopySource,
    point: &Point,
    scratch: &Path,
) -> Result<CopyDrill, JobError> {
    let clock = Instant::now();
    let mut copy = CopyDrill {
        source: source.name().to_string(),
        backup: point.main_file().to_string(),
        files: point.files.iter().map(|f| f.file.clone()).collect(),
        created_at: Some(point.created_at),
        age_seconds: (Utc::now() - point.created_at).num_seconds().max(0) as u64,
        ..CopyDrill::default()
    };
    let mut phases = DrillPhases::default();
    let fail = |mut copy: CopyDrill, phases: DrillPhases, why: String| {
        copy.verdict = DrillVerdict::Failed;
        copy.error = Some(why);
        copy.phases = DrillPhases {
            total_ms: ms(clock.elapsed()),
            ..phases
        };
        copy
    };
    // Fetch (and checksum; a remote's copies are downloaded, decrypted and decompressed
    // into `staging`) and restore under the source's hold: the files stay.
    let held = source.hold()?;
    let staging = Scratch(scratch.join(".fetched"));
    archive::ensure_private_dir(&staging.0)?;
    let mut fetched = Vec::new();
    let (mut decrypt, mut decompress) = (Duration::ZERO, Duration::ZERO);
    for f in &point.files {
        match source.fetch(ctx.db, f, &staging.0) {
            Ok(b) => {
                decrypt += b.decrypt;
                decompress += b.decompress;
                copy.bytes += stored_bytes(&b.backup, f.size);
                fetched.push((f, b.backup));
            }
            Err(e) => {
                phases.fetch_ms = ms(clock.elapsed());
                return Ok(fail(copy, phases, format!("fetch {}: {e}", f.file)));
            }
        }
    }
    phases.fetch_ms = ms(clock.elapsed().saturating_sub(decrypt + decompress));
    phases.decrypt_ms = ms(decrypt);
    phases.decompress_ms = ms(decompress);
    let need: u64 = fetched.iter().map(|(_, b)| b.restored_size).sum();
    ensure_scratch_space(scratch, need)?;
    let mut restored = Vec::new();
    let mut proven = Vec::new();
    for (f, b) in &fetched {
        if ctx.cancel.is_cancelled() {
            return Err(JobError::Cancelled);
        }
        let plain = BackupName {
            compressed: false,
            failed: false,
            ..b.name.clone()
        };
        let target = scratch.join(plain.file_name());
        match crate::restore::to_path(b, &target) {
            Ok(r) => {
                if b.name.compressed {
                    phases.decompress_ms += ms(r.writing);
                    phases.restore_ms += ms(r.finishing);
                } else {
                    phases.restore_ms += ms(r.writing + r.finishing);
                }
                copy.restored_bytes += std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
                restored.push(checks::Restored {
                    schema: f.schema.clone(),
                    path: target,
                    name: &f.file,
                    expect: &f.expect,
                });
            }
            Err(e) => return Ok(fail(copy, phases, format!("restore {}: {e}", f.file))),
        }
        match point_proof(b) {
            Ok(line) => proven.extend(line),
            Err(why) => return Ok(fail(copy, phases, why)),
        }
    }
    drop(staging);
    drop(held);
    let checking = Instant::now();
    let found = checks::run(&restored, &cfg.asserts, ctx.cancel);
    phases.check_ms = ms(checking.elapsed());
    if ctx.cancel.is_cancelled() {
        return Err(JobError::Cancelled);
    }
    for r in &restored {
        let _ = std::fs::remove_file(&r.path);
    }
    copy.checks = proven;
    copy.checks.extend(found.lines);
    if !found.failures.is_empty() {
        return Ok(fail(copy, phases, found.failures.join("; ")));
    }
    copy.phases = DrillPhases {
        total_ms: ms(clock.elapsed()),
        ..phases
    };
    Ok(copy)
}

/// Refuse a drill whose scratch copy would not fit (`need` bytes restored).
fn ensure_scratch_space(scratch: &Path, need: u64) -> Result<(), JobError> {
    let free = archive::free_bytes(scratch)?;
    if free < need {
        return Err(JobError::Refused(format!(
            "{}: not enough free space for the scratch copy: needs {}, {} free; free some space or point drill.scratch_dir at a larger file system",
            scratch.display(),
            human_bytes(need),
            human_bytes(free)
        )));
    }
    Ok(())
}

/// For a restored chain point: the line proving its image, or why the restore stopped short
/// of the point asked for (then it is not the point the report names).
fn point_proof(b: &crate::restore::BackupSource) -> Result<Option<String>, String> {
    let Some(p) = &b.point else {
        return Ok(None);
    };
    if let Some(broken) = &p.broken {
        return Err(format!(
            "the chain to {} is broken at {} ({}): only {} restores",
            broken.wanted, broken.link, broken.why, p.file
        ));
    }
    Ok(p.image_sha256.is_some().then(|| {
        format!(
            "image SHA-256 {} ({} delta(s) after {}): as recorded: ok",
            p.file,
            p.deltas.len(),
            b.file
        )
    }))
}

/// The bytes read to restore one file: a chain's full backup and its deltas, or the file.
fn stored_bytes(b: &crate::restore::BackupSource, size: u64) -> u64 {
    match &b.point {
        Some(p) if !p.deltas.is_empty() => {
            std::fs::metadata(b.path()).map_or(0, |m| m.len())
                + p.deltas.iter().map(|d| d.size).sum::<u64>()
        }
        _ => size,
    }
}
