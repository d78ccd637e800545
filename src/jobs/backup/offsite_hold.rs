//! Local retention and pending off-site copies. The rule (README.md, "Off-site copies"):
//! every backup that a remote's retention (`remote_keep`) would keep reaches that remote, so
//! local retention keeps a backup while its copy is pending on a remote whose retention,
//! judging the copies stored there and the ones pending together, would keep it (reason
//! `offsite-pending`). Once stored, the next run's retention judges it by the local rules
//! alone. A pending copy the remote would not keep (a newer one of the same day, say) is no
//! reason to keep the local file.
//!
//! The cost, stated: while a remote is unreachable, local backups can grow up to what
//! `remote_keep` keeps (each bucket at most once), never beyond it.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::archive::{Manifest, Verified};
use crate::config::{Config, Database};
use crate::retention::{self, Candidate, Policy};
use crate::schedule::Zone;
use crate::state::{Pending, State, StoredCopy};

/// The local files of `db` that local retention must keep for a remote, judged at `now`
/// from `stored` and `pending` copies (any remotes; those not configured are ignored).
pub fn held(
    db: &Database,
    manifest: &Manifest,
    stored: &[StoredCopy],
    pending: &[Pending],
    zone: &Zone,
    now: DateTime<Utc>,
) -> Vec<String> {
    let Some(backup) = db.backup.as_ref() else {
        return Vec::new();
    };
    let policy = Policy {
        keep: backup.remote_keep,
        max_age: None,
    };
    let mut out = BTreeSet::new();
    for remote in &backup.remotes {
        // (series, time, verified, pending file)
        let mut copies: Vec<(String, DateTime<Utc>, bool, Option<&str>)> = stored
            .iter()
            .filter(|c| &c.remote == remote && c.database == db.name)
            .map(|c| (c.series.clone(), c.backup_time, true, None))
            .collect();
        for p in pending.iter().filter(|p| &p.remote == remote) {
            // A pending copy whose local file is no longer recorded is dropped by the push.
            if let Some(e) = manifest.get(&p.file) {
                let verified = matches!(e.verified, Verified::Quick | Verified::Full);
                copies.push((e.series.clone(), e.created_at, verified, Some(&p.file)));
            }
        }
        let series: BTreeSet<&str> = copies.iter().map(|c| c.0.as_str()).collect();
        for s in series {
            let mine: Vec<_> = copies.iter().filter(|c| c.0 == s).collect();
            if mine.iter().all(|c| c.3.is_none()) {
                continue;
            }
            let candidates: Vec<Candidate> = mine
                .iter()
                .map(|c| Candidate {
                    time: c.1,
                    failed: false,
                    verified: c.2,
                    recorded: true,
                    this_run: false,
                })
                .collect();
            let decisions = retention::decide(&candidates, &policy, now, zone);
            for (c, d) in mine.iter().zip(decisions) {
                if let (Some(file), true) = (c.3, d.keep()) {
                    out.insert(file.to_string());
                }
            }
        }
    }
    out.into_iter().collect()
}

/// [`held`] for a backup run, from the state DB. A state DB that cannot be read holds
/// nothing back (with a warning): the local rules alone apply, as without remotes.
pub fn held_now(config: &Config, db: &Database, now: DateTime<Utc>) -> Vec<String> {
    let has_remotes = db.backup.as_ref().is_some_and(|b| !b.remotes.is_empty());
    let Some(backup) = db.backup.as_ref().filter(|_| has_remotes) else {
        return Vec::new();
    };
    let read = || -> Result<Vec<String>, String> {
        let st = State::open(&config.daemon.state_dir, config.daemon.keep_history)
            .map_err(|e| e.to_string())?;
        let pending = st.pending(&db.name, None).map_err(|e| e.to_string())?;
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let mut stored = Vec::new();
        for r in &backup.remotes {
            stored.extend(st.stored_copies(&db.name, r).map_err(|e| e.to_string())?);
        }
        let manifest = Manifest::load(&backup.dir).map_err(|e| e.to_string())?;
        Ok(held(
            db,
            &manifest,
            &stored,
            &pending,
            &config.daemon.timezone,
            now,
        ))
    };
    read().unwrap_or_else(|e| {
        tracing::warn!(
            "backup {}: cannot tell which backups wait for an off-site copy ({e}); local retention applies its own rules only",
            db.name
        );
        Vec::new()
    })
}
