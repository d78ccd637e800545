//! Where a drill's copies come from: a [`CopySource`] lists the restorable points of a
//! database newest first, holds them while they are read, hands each file to the restore
//! library, and records the verdict beside the copy. [`Local`] is the backup directory (full
//! backup runs and the points of their incremental chains); `remote::RemoteSource` downloads
//! a remote's copies into the scratch directory (`restore::remote::fetch_into`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::checks::Expect;
use crate::archive::{self, DrillMark, Entry, Manifest, SharedDirLock, Verified};
use crate::chain::{self, DeltaEntry, DeltaName};
use crate::config::{Config, Database, Drill, DrillSource};
use crate::domain::{CopyDrill, DrillVerdict};
use crate::jobs::JobError;
use crate::restore::{self, BackupSource, RestoreError};

/// One restorable point: the files that restore it (main database first, then each attached
/// database), with what was recorded about each. A full backup run's point is its files; an
/// incremental chain's point is the delta of each file (its full backup and the deltas before
/// it are fetched with it).
#[derive(Debug, Clone)]
pub struct Point {
    pub created_at: DateTime<Utc>,
    /// In the order of `Database::backup_sources`.
    pub files: Vec<PointFile>,
}

/// One file of a point.
#[derive(Debug, Clone)]
pub struct PointFile {
    pub schema: String,
    /// The file that names it: a full backup, a delta, or a remote copy's local file.
    pub file: String,
    /// Bytes stored (for a delta: the delta alone).
    pub size: u64,
    pub expect: Expect,
}

impl Point {
    /// The main database's file: the point's name in reports.
    pub fn main_file(&self) -> &str {
        &self.files[0].file
    }
}

/// A point's file fetched and checked, ready for the restore library, with the time spent
/// decrypting and decompressing while fetching (a remote's; local copies are decompressed by
/// the restore itself).
pub struct Fetched {
    pub backup: BackupSource,
    pub decrypt: Duration,
    pub decompress: Duration,
}

/// A place copies are drilled from.
pub trait CopySource {
    /// Its name in `from`, `--from` and the metrics' `source` label.
    fn name(&self) -> &str;
    /// Every restorable point of `db`, newest first.
    fn points(&self, db: &Database) -> Result<Vec<Point>, JobError>;
    /// Held while a point's files are read: nothing may remove them meanwhile.
    fn hold(&self) -> Result<Box<dyn std::any::Any>, JobError>;
    /// The file `file` of `db`, ready for the restore library: fetched (into `staging`, a
    /// private directory, when it must be downloaded), SHA-256 checked against the manifest.
    fn fetch(
        &self,
        db: &Database,
        file: &PointFile,
        staging: &Path,
    ) -> Result<Fetched, RestoreError>;
    /// Record each copy's verdict beside it (the manifest's `drill` of each file).
    fn mark(&self, db: &Database, copies: &[CopyDrill], at: DateTime<Utc>) -> Result<(), JobError>;
}

/// The source named in the configuration.
pub fn open(
    source: &DrillSource,
    config: &Config,
    cfg: &Drill,
    db: &Database,
) -> Result<Box<dyn CopySource>, JobError> {
    match source {
        DrillSource::Local => {
            let dir = db.backup.as_ref().map(|b| b.dir.clone()).ok_or_else(|| {
                JobError::Config(format!(
                    "database {:?} has no [database.backup] section: the \"local\" source is its backup directory",
                    db.name
                ))
            })?;
            Ok(Box::new(Local { dir }))
        }
        DrillSource::Remote(name) => Ok(Box::new(super::remote::RemoteSource::open(
            config, cfg, db, name,
        )?)),
    }
}

/// The database's backup directory.
pub struct Local {
    pub dir: PathBuf,
}

/// The points of full backup runs in `dir`: the files of one run (one stamp) that passed
/// verification, main database first; newest first.
pub(super) fn full_points(
    dir: &Path,
    manifest: &Manifest,
    db: &Database,
) -> Result<Vec<(Point, Vec<Entry>)>, JobError> {
    let sources = db.backup_sources();
    let found = archive::list_of(dir, manifest, &db.name)?;
    let mut points: Vec<(Point, Vec<Entry>)> = Vec::new();
    for f in found.iter().filter(|f| !f.name.failed) {
        let Some(entry) = f.entry.clone() else {
            continue;
        };
        if entry.verified == Verified::Failed || !f.recorded() {
            continue;
        }
        let Some(schema) = sources
            .iter()
            .find(|s| s.series == f.name.series)
            .map(|s| s.schema.clone())
        else {
            continue;
        };
        let file = PointFile {
            schema,
            file: entry.file.clone(),
            size: entry.size,
            expect: Expect::from(&entry),
        };
        match points.iter_mut().find(|(p, _)| p.created_at == f.name.time) {
            Some((p, entries)) => {
                p.files.push(file);
                entries.push(entry);
            }
            None => points.push((
                Point {
                    created_at: f.name.time,
                    files: vec![file],
                },
                vec![entry],
            )),
        }
    }
    let order = |schema: &str| sources.iter().position(|s| s.schema == schema);
    for (p, entries) in &mut points {
        let mut both: Vec<(PointFile, Entry)> = p.files.drain(..).zip(entries.drain(..)).collect();
        both.sort_by_key(|(f, _)| order(&f.schema));
        (p.files, *entries) = both.into_iter().unzip();
    }
    // A point restores the database only with its main file.
    points.retain(|(p, _)| p.files.first().is_some_and(|f| f.schema == "main"));
    points.sort_by_key(|(p, _)| std::cmp::Reverse(p.created_at));
    Ok(points)
}

/// The points of the incremental chain starting at the full run `full` (main first): one per
/// delta of the main database, each attached database at its newest point written before
/// the main database's next one (a run writes the main point first). `deltas_of` gives the
/// deltas whose base is a full backup file, oldest first (a local or a remote manifest's).
pub(super) fn chain_points(
    full: &Point,
    deltas_of: impl Fn(&PointFile) -> Vec<DeltaEntry>,
) -> Vec<Point> {
    let main = deltas_of(&full.files[0]);
    let others: Vec<Vec<DeltaEntry>> = full.files[1..].iter().map(&deltas_of).collect();
    let mut points = Vec::new();
    for (i, d) in main.iter().enumerate() {
        let until = main.get(i + 1).map(|n| n.created_at);
        let mut files = vec![delta_file(d, &full.files[0])];
        for (k, base) in full.files[1..].iter().enumerate() {
            let at = others[k]
                .iter()
                .rfind(|o| until.is_none_or(|u| o.created_at < u));
            files.push(match at {
                Some(o) => delta_file(o, base),
                None => base.clone(),
            });
        }
        points.push(Point {
            created_at: d.created_at,
            files,
        });
    }
    points
}

/// A delta as a point's file: its pages are recorded, its rows are not (the image's SHA-256,
/// checked by the restore, proves its bytes); foreign-key violations as at its full backup.
fn delta_file(d: &DeltaEntry, base: &PointFile) -> PointFile {
    PointFile {
        schema: base.schema.clone(),
        file: d.file.clone(),
        size: d.size,
        expect: Expect {
            page_count: Some(d.page_count),
            tables: Default::default(),
            fk_violations: base.expect.fk_violations,
            unrecorded: "not recorded for incremental points (the image SHA-256 is checked)",
        },
    }
}

impl CopySource for Local {
    fn name(&self) -> &str {
        "local"
    }

    /// Full backup runs and the points of their chains.
    fn points(&self, db: &Database) -> Result<Vec<Point>, JobError> {
        let manifest = Manifest::load(&self.dir)?;
        let mut points = Vec::new();
        for (full, entries) in full_points(&self.dir, &manifest, db)? {
            points.extend(chain_points(&full, |f| {
                entries
                    .iter()
                    .find(|e| e.file == f.file)
                    .map(|e| {
                        chain::deltas_of(&manifest, &db.name, &e.series)
                            .filter(|d| d.base == e.file)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default()
            }));
            points.push(full);
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.created_at));
        Ok(points)
    }

    fn hold(&self) -> Result<Box<dyn std::any::Any>, JobError> {
        let held: SharedDirLock = archive::lock_dir_shared(&self.dir)?;
        Ok(Box::new(held))
    }

    fn fetch(&self, db: &Database, f: &PointFile, _: &Path) -> Result<Fetched, RestoreError> {
        // A chain's point: its full backup and deltas, each checked, as `restore DELTA` does.
        let backup = match DeltaName::parse(&f.file) {
            Some(_) => restore::point::select_delta(db, &f.file)?.ok_or_else(|| {
                RestoreError::NoSuchBackup {
                    dir: self.dir.clone(),
                    wanted: f.file.clone(),
                    database: db.name.clone(),
                }
            })?,
            None => restore::select_from(db, &self.dir, Some(&f.file))?,
        };
        Ok(Fetched {
            backup,
            decrypt: Duration::ZERO,
            decompress: Duration::ZERO,
        })
    }

    fn mark(&self, db: &Database, copies: &[CopyDrill], at: DateTime<Utc>) -> Result<(), JobError> {
        mark_in(&self.dir, db, copies, at)
    }
}

/// What a drill of `c` at `at` records beside each of its files (the error when it failed).
pub(super) fn drill_mark(c: &CopyDrill, at: DateTime<Utc>) -> DrillMark {
    DrillMark {
        at,
        verdict: c.verdict,
        error: (c.verdict == DrillVerdict::Failed)
            .then(|| c.error.clone())
            .flatten(),
    }
}

/// Set the `drill` of every file of `copies` in `dir`'s manifest, under the directory's lock;
/// full backup runs only.
fn mark_in(
    dir: &Path,
    db: &Database,
    copies: &[CopyDrill],
    at: DateTime<Utc>,
) -> Result<(), JobError> {
    let held = archive::lock_dir(dir)?;
    let mut manifest = Manifest::load(dir)?;
    let mut changed = false;
    // A chain's point is not a copy of its own: its verdict is the run's (a full backup among
    // its files, an attached database without a delta yet, is not what failed).
    for c in copies
        .iter()
        .filter(|c| DeltaName::parse(&c.backup).is_none())
    {
        for file in &c.files {
            if let Some(e) = manifest
                .backups
                .iter_mut()
                .find(|e| &e.file == file && e.database == db.name)
            {
                e.drill = Some(drill_mark(c, at));
                changed = true;
            }
        }
    }
    if changed {
        manifest.save(dir, &held)?;
    }
    Ok(())
}
