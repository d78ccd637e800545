//! Where a drill's copies come from: a [`CopySource`] lists the restorable points of a
//! database newest first, holds them while they are read, hands each file to the restore
//! library, and records the verdict beside the copy. [`Local`] is the backup directory; a
//! remote (off-site copies) is another implementation that downloads into the scratch
//! directory and hands the restore library that directory (`restore::select_from`).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::archive::{self, DrillMark, Entry, Manifest, SharedDirLock, Verified};
use crate::config::{Database, DrillSource};
use crate::domain::{CopyDrill, DrillVerdict};
use crate::jobs::JobError;
use crate::restore::{self, BackupSource, RestoreError};

/// One restorable point: the files one backup run wrote (main database first, then each
/// attached database), with what the manifest recorded about each. An incremental chain's
/// point is listed the same way by its source, its files being what restores that point.
#[derive(Debug, Clone)]
pub struct Point {
    pub created_at: DateTime<Utc>,
    /// (schema, manifest entry), in the order of `Database::backup_sources`.
    pub files: Vec<(String, Entry)>,
}

impl Point {
    /// The main database's backup file.
    pub fn main_file(&self) -> &str {
        &self.files[0].1.file
    }
}

/// A place copies are drilled from.
pub trait CopySource {
    /// Its name in `from`, `--from` and the metrics' `source` label.
    fn name(&self) -> &str;
    /// Every restorable point of `db`, newest first.
    fn points(&self, db: &Database) -> Result<Vec<Point>, JobError>;
    /// Held while a point's files are read: nothing may remove them meanwhile.
    fn hold(&self) -> Result<Box<dyn std::any::Any>, JobError>;
    /// The file `file` of `db`, ready for the restore library: fetched, SHA-256 checked
    /// against the manifest.
    fn fetch(&self, db: &Database, file: &str) -> Result<BackupSource, RestoreError>;
    /// Record each copy's verdict beside it (the manifest's `drill` of each file).
    fn mark(&self, db: &Database, copies: &[CopyDrill], at: DateTime<Utc>) -> Result<(), JobError>;
}

/// The source named in the configuration.
pub fn open(source: &DrillSource, db: &Database) -> Result<Box<dyn CopySource>, JobError> {
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
    }
}

/// The database's backup directory.
pub struct Local {
    pub dir: PathBuf,
}

impl CopySource for Local {
    fn name(&self) -> &str {
        "local"
    }

    fn points(&self, db: &Database) -> Result<Vec<Point>, JobError> {
        let manifest = Manifest::load(&self.dir)?;
        let sources = db.backup_sources();
        let found = archive::list_of(&self.dir, &manifest, &db.name)?;
        // Group the files of one run (one stamp), skipping copies that failed verification.
        let mut points: Vec<Point> = Vec::new();
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
            match points.iter_mut().find(|p| p.created_at == f.name.time) {
                Some(p) => p.files.push((schema, entry)),
                None => points.push(Point {
                    created_at: f.name.time,
                    files: vec![(schema, entry)],
                }),
            }
        }
        let order = |schema: &str| sources.iter().position(|s| s.schema == schema);
        for p in &mut points {
            p.files.sort_by_key(|(schema, _)| order(schema));
        }
        // A point restores the database only with its main file.
        points.retain(|p| p.files.first().is_some_and(|(s, _)| s == "main"));
        points.sort_by_key(|p| std::cmp::Reverse(p.created_at));
        Ok(points)
    }

    fn hold(&self) -> Result<Box<dyn std::any::Any>, JobError> {
        let held: SharedDirLock = archive::lock_dir_shared(&self.dir)?;
        Ok(Box::new(held))
    }

    fn fetch(&self, db: &Database, file: &str) -> Result<BackupSource, RestoreError> {
        restore::select_from(db, &self.dir, Some(file))
    }

    fn mark(&self, db: &Database, copies: &[CopyDrill], at: DateTime<Utc>) -> Result<(), JobError> {
        mark_in(&self.dir, db, copies, at)
    }
}

/// Set the `drill` of every file of `copies` in `dir`'s manifest, under the directory's lock.
fn mark_in(
    dir: &Path,
    db: &Database,
    copies: &[CopyDrill],
    at: DateTime<Utc>,
) -> Result<(), JobError> {
    let held = archive::lock_dir(dir)?;
    let mut manifest = Manifest::load(dir)?;
    let mut changed = false;
    for c in copies {
        for file in &c.files {
            if let Some(e) = manifest
                .backups
                .iter_mut()
                .find(|e| &e.file == file && e.database == db.name)
            {
                e.drill = Some(DrillMark {
                    at,
                    verdict: c.verdict,
                    error: (c.verdict == DrillVerdict::Failed)
                        .then(|| c.error.clone())
                        .flatten(),
                });
                changed = true;
            }
        }
    }
    if changed {
        manifest.save(dir, &held)?;
    }
    Ok(())
}
