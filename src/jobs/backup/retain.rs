//! Retention after a backup: the plan (shared with `backups list` and the preview), its
//! warnings, and its application under the directory's lock.

use std::fs;

use chrono::{DateTime, Utc};

use crate::archive::{self, ArchiveError, Entry, Manifest, Verified};
use crate::config::{Backup, Database};
use crate::domain::human_bytes;
use crate::jobs::JobError;
use crate::retention;
use crate::schedule::Zone;

/// What retention did after a backup.
#[derive(Debug, Default)]
pub struct RetentionOutcome {
    pub deleted: Vec<String>,
    pub kept: usize,
    /// Files retention would not judge (unknown to the manifest, dated in the future).
    pub warnings: Vec<String>,
    pub summary: String,
}

/// One backup file with its manifest entry and retention's decision.
#[derive(Debug, Clone)]
pub struct Planned {
    pub found: archive::Found,
    pub entry: Option<Entry>,
    pub decision: retention::Decision,
}

impl Planned {
    /// Why this file needs an operator's look, if it does.
    pub fn warning(&self) -> Option<String> {
        let r = &self.decision.reasons;
        if r.contains(&retention::Reason::NotInManifest) {
            Some(match &self.entry {
                Some(e) => format!(
                    "its size ({} bytes) is not the size recorded in the manifest ({}): not counted by retention and never deleted by it; check it and remove it by hand",
                    self.found.size, e.size
                ),
                None => "named like a backup but not in the manifest: not counted by retention and never deleted by it; check it and remove it by hand".into(),
            })
        } else if r.contains(&retention::Reason::NotABackup) {
            Some(if archive::is_own_file(&self.found.file()) {
                "litekeeper's own file, named by a manifest entry of this database: ignored by retention and never deleted by it; leave the file alone (the entry is wrong)".into()
            } else {
                "named by a manifest entry of this database but not a backup name of its configured series (another database's file, or an attachment since removed from the configuration?): ignored by retention and never deleted by it; check the manifest entry, and remove the file by hand if it is an old backup".into()
            })
        } else if r.contains(&retention::Reason::FutureDated) {
            Some(
                "dated in the future (was the clock ahead, or moved back?): kept, but not counted by retention until its time has come"
                    .into(),
            )
        } else {
            None
        }
    }
}

/// Every backup of `db` in `cfg.dir` (newest first) with what retention decides for it at
/// `now`: the manifest's entries for `db` (other databases' entries in a shared directory
/// are not ours to judge), by series, plus files named like one of `db`'s series that the
/// manifest does not know (kept and reported). An entry whose file is not named as a backup
/// of one of `db`'s configured series ([`archive::backup_of`]) is kept and reported
/// (`not-a-backup`), never judged: the manifest says whose a backup is, the name which. `pending` is the time of a backup about to be
/// written (a dry run): it takes part in the decision as a verified backup but is not listed.
/// `this_run` names the files the deciding run wrote; `held` those whose off-site copy is
/// pending and wanted by its remote (`offsite_hold::held`), kept as `offsite-pending`.
pub fn retention_plan(
    db: &Database,
    cfg: &Backup,
    zone: &Zone,
    now: DateTime<Utc>,
    pending: Option<DateTime<Utc>>,
    this_run: &[String],
    held: &[String],
) -> Result<Vec<Planned>, ArchiveError> {
    let manifest = Manifest::load(&cfg.dir)?;
    let series: Vec<String> = db.backup_sources().into_iter().map(|s| s.series).collect();
    // An entry counts (and may be deleted) only when its file is named as a backup of one of
    // this database's series, the entry's own series: a hand-edited or foreign entry naming
    // another database's backup or the directory's lock is kept and reported, never judged.
    let (mut found, foreign): (Vec<archive::Found>, Vec<archive::Found>) =
        archive::list_of(&cfg.dir, &manifest, &db.name)?
            .into_iter()
            .partition(|f| {
                archive::backup_of(&f.file(), &series).is_some_and(|n| n.series == f.name.series)
            });
    found.extend(archive::unrecorded(&cfg.dir, &manifest, &series)?);
    let bases = super::chains::kept_bases(&manifest, &db.name, cfg.chain_keep(), now);
    let policy = retention::Policy {
        keep: cfg.keep,
        max_age: cfg.max_age,
    };
    let mut out = Vec::new();
    for series in series {
        let files: Vec<archive::Found> = found
            .iter()
            .filter(|f| f.name.series == series)
            .cloned()
            .collect();
        let mut candidates: Vec<retention::Candidate> = files
            .iter()
            .map(|f| retention::Candidate {
                time: f.name.time,
                failed: f.name.failed,
                // A copy whose drill failed is no "newest verified" backup to keep.
                verified: !f.name.failed
                    && f.entry.as_ref().is_some_and(|e| {
                        matches!(e.verified, Verified::Quick | Verified::Full) && !e.drill_failed()
                    }),
                recorded: f.recorded(),
                this_run: this_run.contains(&f.file()),
            })
            .collect();
        candidates.extend(pending.map(retention::Candidate::pending));
        let decisions = retention::decide(&candidates, &policy, now, zone);
        for (f, mut decision) in files.into_iter().zip(decisions) {
            if bases.contains(&f.file()) {
                decision.reasons.push(retention::Reason::ChainBase);
            }
            if f.recorded() && held.contains(&f.file()) {
                decision.reasons.push(retention::Reason::OffsitePending);
            }
            out.push(Planned {
                entry: f.entry.clone(),
                found: f,
                decision,
            });
        }
    }
    out.extend(foreign.into_iter().map(|f| Planned {
        entry: f.entry.clone(),
        found: f,
        decision: retention::Decision {
            reasons: vec![retention::Reason::NotABackup],
        },
    }));
    out.sort_by(|a, b| {
        b.found
            .name
            .time
            .cmp(&a.found.name.time)
            .then(a.found.name.series.cmp(&b.found.name.series))
            .then(a.found.path.cmp(&b.found.path))
    });
    Ok(out)
}

/// One line per file of the plan an operator should look at.
pub fn plan_warnings(plan: &[Planned]) -> Vec<String> {
    let mut unknown = Vec::new();
    let mut future = Vec::new();
    let mut foreign = Vec::new();
    for p in plan {
        let r = &p.decision.reasons;
        if r.contains(&retention::Reason::NotABackup) {
            foreign.push(p.found.file());
        } else if r.contains(&retention::Reason::NotInManifest) {
            unknown.push(p.found.file());
        } else if r.contains(&retention::Reason::FutureDated) {
            future.push(p.found.file());
        }
    }
    let mut out = Vec::new();
    if !unknown.is_empty() {
        out.push(format!(
            "{} file(s) named like backups are not in the manifest (or not of its size), so retention neither counts nor deletes them; check and remove them by hand: {}",
            unknown.len(),
            unknown.join(", ")
        ));
    }
    if !foreign.is_empty() {
        out.push(format!(
            "{} manifest entr(ies) of this database name files that are not its backups (another database's backup, litekeeper's own manifest or lock file?), so retention neither counts nor deletes them; check manifest.json: {}",
            foreign.len(),
            foreign.join(", ")
        ));
    }
    if !future.is_empty() {
        out.push(format!(
            "{} backup(s) dated in the future (the clock moved back?) are kept but not counted: {}",
            future.len(),
            future.join(", ")
        ));
    }
    out
}

/// One line saying what retention would delete after a backup taken at `stamp`.
pub(super) fn retention_preview(
    db: &Database,
    cfg: &Backup,
    zone: &Zone,
    stamp: DateTime<Utc>,
    held: &[String],
) -> Result<String, JobError> {
    let plan = retention_plan(db, cfg, zone, stamp, Some(stamp), &[], held)?;
    let warnings = plan_warnings(&plan)
        .into_iter()
        .map(|w| format!("; warning: {w}"))
        .collect::<String>();
    let doomed: Vec<&Planned> = plan.iter().filter(|p| !p.decision.keep()).collect();
    if doomed.is_empty() {
        return Ok(format!(
            "retention would delete nothing ({} kept){warnings}",
            plan.len()
        ));
    }
    let bytes: u64 = doomed.iter().map(|p| p.found.size).sum();
    Ok(format!(
        "retention would delete {} of {} backups ({}): {}{warnings}",
        doomed.len(),
        plan.len(),
        human_bytes(bytes),
        doomed
            .iter()
            .map(|p| p.found.file())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Delete what the retention policy does not keep (only backups the manifest records for
/// `db`, never the files `written` by this run), then drop their manifest entries; all under
/// the directory's lock.
pub(super) fn apply_retention(
    db: &Database,
    cfg: &Backup,
    zone: &Zone,
    now: DateTime<Utc>,
    written: &[String],
    offsite_held: &[String],
) -> Result<RetentionOutcome, JobError> {
    let held = archive::lock_dir(&cfg.dir)?;
    let plan = retention_plan(db, cfg, zone, now, None, written, offsite_held)?;
    let mut out = RetentionOutcome {
        warnings: plan_warnings(&plan),
        ..RetentionOutcome::default()
    };
    let mut freed = 0;
    for p in &plan {
        if p.decision.keep() {
            out.kept += 1;
            continue;
        }
        match fs::remove_file(&p.found.path) {
            Ok(()) => {
                let _ = fs::remove_file(crate::chain::index_path(&cfg.dir, &p.found.file()));
                freed += p.found.size;
                out.deleted.push(p.found.file());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(JobError::Archive(ArchiveError::Io {
                    path: p.found.path.clone(),
                    what: "cannot delete an expired backup",
                    source: e,
                }))
            }
        }
    }
    if !out.deleted.is_empty() {
        archive::fsync_dir(&cfg.dir)?;
    }
    let mut manifest = Manifest::load(&cfg.dir)?;
    let before = manifest.backups.len();
    manifest.retain_existing(&cfg.dir);
    if manifest.backups.len() != before {
        manifest.save(&cfg.dir, &held)?;
    }
    drop(held);
    for w in &out.warnings {
        tracing::warn!("backup {}: {}: {w}", db.name, cfg.dir.display());
    }
    out.summary = if out.deleted.is_empty() {
        format!("retention kept all {} backups", out.kept)
    } else {
        format!(
            "retention deleted {} ({} freed), kept {}",
            out.deleted.len(),
            human_bytes(freed),
            out.kept
        )
    };
    for w in &out.warnings {
        out.summary.push_str("; warning: ");
        out.summary.push_str(w);
    }
    Ok(out)
}
