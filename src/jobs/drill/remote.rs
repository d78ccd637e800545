//! Drilling a remote's copies (`from = ["offsite"]`): the remote's manifest lists the points
//! (the copies of one backup run, and the points of their incremental chains: `deltas`),
//! each file is downloaded into the scratch directory, its stored bytes checked against the remote manifest's SHA-256, decrypted with the drill's
//! `identity` (a file, or a systemd credential) and decompressed by the same code as
//! `restore --from REMOTE` (`restore::remote::fetch_into`), then restored by the restore
//! library like a local copy. Page and row counts come from the remote manifest's copy
//! (`recorded`, taken from the local manifest at upload), so they are checked after the
//! local backups are lost; a copy from an older remote manifest falls back to the local
//! manifest's entry of the same backup (same file, same SHA-256) when it is still there.
//!
//! The identity is read, and checked against the remote's `encrypt_to`, when the source is
//! opened: a missing or wrong key is one error for the run, not a failed copy.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::{DateTime, Utc};

use super::checks::Expect;
use super::source::{self, drill_mark, CopySource, Fetched, Point, PointFile};
use crate::archive::{DrillMark, Manifest};
use crate::chain::DeltaName;
use crate::config::{Config, Database, Drill, Identity};
use crate::domain::CopyDrill;
use crate::jobs::JobError;
use crate::remote::{DeltaCopy, RemoteManifest, Store};
use crate::restore::{self, RestoreError};

pub(super) struct RemoteSource {
    name: String,
    store: Store,
    identities: Vec<Box<dyn age::Identity>>,
    /// The database's backup directory, whose manifest has the counts of each backup.
    local_dir: Option<PathBuf>,
    /// The remote manifest, as `points` read it.
    manifest: RefCell<RemoteManifest>,
}

impl RemoteSource {
    pub(super) fn open(
        config: &Config,
        cfg: &Drill,
        db: &Database,
        name: &str,
    ) -> Result<RemoteSource, JobError> {
        let remote = restore::remote::remote_of(config, db, name)
            .map_err(|e| JobError::Config(e.to_string()))?;
        let path = identity_path(cfg.identity.as_ref(), name)?;
        let identities = restore::remote::read_identity(&path)
            .map_err(|e| JobError::NoInput(format!("drill from remote {name:?}: {e}")))?;
        check_identity(&path, &remote.recipients, name)?;
        let store = Store::open(remote).map_err(|e| JobError::Remote(e.to_string(), e.code))?;
        Ok(RemoteSource {
            name: name.to_string(),
            store,
            identities,
            local_dir: db.backup.as_ref().map(|b| b.dir.clone()),
            manifest: RefCell::new(RemoteManifest::default()),
        })
    }
}

/// The identity file: the configured path, or `$CREDENTIALS_DIRECTORY/NAME` for
/// `credential:NAME` (`LoadCredential=NAME:FILE` in the unit).
fn identity_path(identity: Option<&Identity>, remote: &str) -> Result<PathBuf, JobError> {
    match identity {
        None => Err(JobError::Config(format!(
            "a drill from remote {remote:?} needs `identity` in [database.drill]: the age identity that decrypts its copies"
        ))),
        Some(Identity::File(p)) => Ok(p.clone()),
        Some(Identity::Credential(name)) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => Ok(Path::new(&dir).join(name)),
            None => Err(JobError::NoInput(format!(
                "drill.identity = \"credential:{name}\" is a systemd credential, but $CREDENTIALS_DIRECTORY is not set (add LoadCredential={name}:FILE to the drill's unit)"
            ))),
        },
    }
}

/// Refuse an identity file whose X25519 keys are none of the remote's recipients: it cannot
/// decrypt a copy made now. A file of other identities (plugins) is left to age.
fn check_identity(path: &Path, recipients: &[String], remote: &str) -> Result<(), JobError> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let publics: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .filter_map(|l| age::x25519::Identity::from_str(l).ok())
        .map(|i| i.to_public().to_string())
        .collect();
    if publics.is_empty() || publics.iter().any(|p| recipients.contains(p)) {
        return Ok(());
    }
    Err(JobError::Config(format!(
        "drill.identity {}: none of its keys ({}) is a recipient of remote {remote:?} (encrypt_to: {}), so it cannot decrypt the copies; point identity at the key whose public key (age-keygen -y) is in encrypt_to",
        path.display(),
        publics.join(", "),
        recipients.join(", ")
    )))
}

impl CopySource for RemoteSource {
    fn name(&self) -> &str {
        &self.name
    }

    /// The copies of one backup run (one backup time), main database first; newest first.
    fn points(&self, db: &Database) -> Result<Vec<Point>, JobError> {
        let manifest = RemoteManifest::load(&self.store, &db.name)
            .map_err(|e| JobError::Remote(e.to_string(), e.code))?;
        let local = self
            .local_dir
            .as_ref()
            .and_then(|d| Manifest::load(d).ok())
            .unwrap_or_default();
        let sources = db.backup_sources();
        let mut points: Vec<Point> = Vec::new();
        for c in &manifest.copies {
            let Some(schema) = sources.iter().find(|s| s.series == c.series) else {
                continue;
            };
            // The counts the copy carries; an older remote manifest's copy has none, so the
            // local manifest's entry of the same backup (same file, same SHA-256) if any.
            let expect = match (&c.recorded, local.get(&c.local_file)) {
                (Some(r), _) => Expect {
                    page_count: Some(r.page_count),
                    tables: r.tables.clone(),
                    fk_violations: r.fk_violations,
                    unrecorded: "none recorded at backup time",
                },
                (None, Some(e)) if e.sha256 == c.source_sha256 => Expect::from(e),
                (None, _) => Expect {
                    unrecorded: "none recorded (the remote manifest predates recorded counts and the local manifest no longer has this backup)",
                    ..Expect::default()
                },
            };
            let file = PointFile {
                schema: schema.schema.clone(),
                file: c.local_file.clone(),
                size: c.size,
                expect,
            };
            match points.iter_mut().find(|p| p.created_at == c.backup_time) {
                Some(p) => p.files.push(file),
                None => points.push(Point {
                    created_at: c.backup_time,
                    files: vec![file],
                }),
            }
        }
        let order = |schema: &str| sources.iter().position(|s| s.schema == schema);
        for p in &mut points {
            p.files.sort_by_key(|f| order(&f.schema));
        }
        points.retain(|p| p.files.first().is_some_and(|f| f.schema == "main"));
        // The points of each full run's incremental chains, from the remote's `deltas`.
        let chains: Vec<Point> = points
            .iter()
            .flat_map(|full| {
                source::chain_points(full, |f| {
                    let mut of: Vec<&DeltaCopy> = manifest
                        .deltas
                        .iter()
                        .filter(|d| d.base == f.file)
                        .collect();
                    of.sort_by_key(|d| (d.copy.backup_time, d.sequence));
                    of.iter().map(|d| d.entry(&db.name, d.copy.size)).collect()
                })
            })
            .collect();
        points.extend(chains);
        points.sort_by_key(|p| std::cmp::Reverse(p.created_at));
        *self.manifest.borrow_mut() = manifest;
        Ok(points)
    }

    /// Remote retention runs in the backup job; a copy it deletes under a drill fails the
    /// download, naming the object.
    fn hold(&self) -> Result<Box<dyn std::any::Any>, JobError> {
        Ok(Box::new(()))
    }

    /// A full backup's copy; or a chain's point: its full copy and the deltas up to it,
    /// through the same code as `restore --at --from REMOTE` (`fetch_point_into`).
    fn fetch(&self, db: &Database, f: &PointFile, staging: &Path) -> Result<Fetched, RestoreError> {
        let m = self.manifest.borrow();
        let no_copy = || RestoreError::NoRemoteCopy {
            remote: self.name.clone(),
            database: db.name.clone(),
            wanted: Some(f.file.clone()),
        };
        let full_of = |file: &str| m.copies.iter().find(|c| c.local_file == file);
        let (backup, took) = match m.deltas.iter().find(|d| d.copy.local_file == f.file) {
            Some(target) => restore::remote::fetch_point_into(
                &self.store,
                &self.identities,
                &m,
                db,
                full_of(&target.base).ok_or_else(no_copy)?,
                target,
                staging,
            )?,
            None => restore::remote::fetch_into(
                &self.store,
                db,
                full_of(&f.file).ok_or_else(no_copy)?,
                &self.identities,
                staging,
            )?,
        };
        Ok(Fetched {
            backup,
            decrypt: took.decrypt,
            decompress: took.decode,
        })
    }

    /// Each copy's verdict in the remote manifest (`drill` of its files), written as pushes
    /// and remote retention write it (`RemoteManifest::update`: under the backup directory's
    /// lock, reloaded, one PUT). Full backup runs only, as locally: a chain's point is not a
    /// copy of its own.
    fn mark(&self, db: &Database, copies: &[CopyDrill], at: DateTime<Utc>) -> Result<(), JobError> {
        let marks: Vec<(&str, DrillMark)> = copies
            .iter()
            .filter(|c| DeltaName::parse(&c.backup).is_none())
            .flat_map(|c| {
                let mark = drill_mark(c, at);
                c.files.iter().map(move |f| (f.as_str(), mark.clone()))
            })
            .collect();
        let Some(dir) = self.local_dir.as_ref().filter(|_| !marks.is_empty()) else {
            return Ok(());
        };
        RemoteManifest::update(&self.store, &db.name, dir, |m| {
            let mut changed = false;
            for c in &mut m.copies {
                if let Some((_, mark)) = marks.iter().find(|(f, _)| *f == c.local_file) {
                    c.drill = Some(mark.clone());
                    changed = true;
                }
            }
            (changed, ())
        })
        .map_err(|e| JobError::Remote(e.to_string(), e.code))
    }
}
