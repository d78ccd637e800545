//! Retention of incremental chains: a chain's deltas are deleted together once its newest
//! point is older than `incremental.keep` (each point needs every earlier one); the full
//! backup a kept chain starts from is kept with it (`retention::Reason::ChainBase`, added in
//! `retain::retention_plan`); a deleted point's page-hash index goes with it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::archive::{self, ArchiveError, Manifest};
use crate::chain;
use crate::config::{Backup, Database};
use crate::domain::human_bytes;
use crate::jobs::JobError;
use crate::retention;

/// What chain retention did.
#[derive(Debug, Default)]
pub struct ChainRetention {
    pub deleted: Vec<String>,
    pub summary: String,
}

/// The full backups (file names) of `database` that a chain kept at `now` starts from.
pub fn kept_bases(
    manifest: &Manifest,
    database: &str,
    keep: Duration,
    now: DateTime<Utc>,
) -> BTreeSet<String> {
    newest_by_base(manifest, database)
        .into_iter()
        .filter(|(_, newest)| retention::chain_kept(*newest, keep, now))
        .map(|(base, _)| base)
        .collect()
}

fn newest_by_base(manifest: &Manifest, database: &str) -> BTreeMap<String, DateTime<Utc>> {
    let mut out: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    for d in manifest.deltas.iter().filter(|d| d.database == database) {
        let e = out.entry(d.base.clone()).or_insert(d.created_at);
        *e = (*e).max(d.created_at);
    }
    out
}

/// Delete the deltas of `db`'s expired chains (and their indexes), under the directory's lock.
pub fn apply_chain_retention(
    db: &Database,
    cfg: &Backup,
    keep: Duration,
    now: DateTime<Utc>,
) -> Result<ChainRetention, JobError> {
    let dir = &cfg.dir;
    let held = archive::lock_dir(dir)?;
    let mut manifest = Manifest::load(dir)?;
    let kept = kept_bases(&manifest, &db.name, keep, now);
    let mut out = ChainRetention::default();
    let mut freed = 0;
    let doomed: Vec<chain::DeltaEntry> = manifest
        .deltas
        .iter()
        .filter(|d| d.database == db.name && !kept.contains(&d.base))
        .cloned()
        .collect();
    for d in &doomed {
        remove(dir, &d.file)?;
        let _ = fs::remove_file(chain::index_path(dir, &d.file));
        freed += d.size;
        out.deleted.push(d.file.clone());
    }
    // The base of an expired chain needs no index any more.
    for base in doomed.iter().map(|d| &d.base).collect::<BTreeSet<_>>() {
        let _ = fs::remove_file(chain::index_path(dir, base));
    }
    if !doomed.is_empty() {
        archive::fsync_dir(dir)?;
        manifest.deltas.retain(|d| !doomed.contains(d));
        manifest.save(dir, &held)?;
    }
    out.summary = if out.deleted.is_empty() {
        "no chain expired".into()
    } else {
        format!(
            "chain retention deleted {} delta(s) ({} freed)",
            out.deleted.len(),
            human_bytes(freed)
        )
    };
    Ok(out)
}

fn remove(dir: &Path, file: &str) -> Result<(), ArchiveError> {
    let path = dir.join(file);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ArchiveError::Io {
            path,
            what: "cannot delete an expired delta",
            source: e,
        }),
    }
}
