//! Retention of a remote's copies, by the same rules and safety nets as the local backups
//! (`retention::decide`: the newest verified copy is always kept, nothing dated in the future
//! is judged) with the backup's `remote_keep`. Only objects the remote manifest names are
//! ever deleted (litekeeper's own copies); the manifest is rewritten first, without them, so
//! a failed delete leaves an unlisted object, never a listed copy that is gone. The caller
//! runs it only when every pending copy of the remote was stored.
//!
//! Incremental chains follow the local rule (`jobs::backup::chains`): a chain's deltas go
//! together once its newest point is older than `incremental.keep`, and the full copy a kept
//! chain starts from is kept with it (`Reason::ChainBase`), whatever `remote_keep` says.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::manifest::{Copy, RemoteManifest};
use super::store::{RemoteError, Store};
use crate::config::Keep;
use crate::domain::Verified;
use crate::retention::{self, Candidate, Decision, Policy};
use crate::schedule::Zone;

/// Each copy of `m` with retention's decision at `now`, per series, newest first.
pub(crate) fn plan(
    m: &RemoteManifest,
    keep: Keep,
    zone: &Zone,
    now: DateTime<Utc>,
    this_run: &[String],
) -> Vec<(Copy, Decision)> {
    let mut series: Vec<&str> = m.copies.iter().map(|c| c.series.as_str()).collect();
    series.sort();
    series.dedup();
    let policy = Policy {
        keep,
        max_age: None,
    };
    let mut out = Vec::new();
    for s in series {
        let mut copies: Vec<&Copy> = m.copies.iter().filter(|c| c.series == s).collect();
        copies.sort_by_key(|c| std::cmp::Reverse(c.backup_time));
        let candidates: Vec<Candidate> = copies
            .iter()
            .map(|c| Candidate {
                time: c.backup_time,
                failed: false,
                // Older manifests did not record it: the copy was uploaded only once verified.
                // A copy whose last drill failed is no "newest verified" copy to keep.
                verified: !matches!(c.verified, Some(Verified::None) | Some(Verified::Failed))
                    && !c.drill_failed(),
                recorded: true,
                this_run: this_run.contains(&c.object),
            })
            .collect();
        let decisions = retention::decide(&candidates, &policy, now, zone);
        out.extend(copies.into_iter().cloned().zip(decisions));
    }
    out
}

/// The chains of `m` at `now` with `keep` (`incremental.keep`): the full copies that a kept
/// chain starts from get `Reason::ChainBase` in `planned`; the delta objects of expired
/// chains are returned, to delete.
pub(crate) fn chains(
    m: &RemoteManifest,
    planned: &mut [(Copy, Decision)],
    keep: Duration,
    now: DateTime<Utc>,
) -> Vec<String> {
    let mut newest: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
    for d in &m.deltas {
        let t = newest.entry(d.base.as_str()).or_insert(d.copy.backup_time);
        *t = (*t).max(d.copy.backup_time);
    }
    let kept = |base: &str| {
        newest
            .get(base)
            .is_some_and(|t| retention::chain_kept(*t, keep, now))
    };
    for (c, decision) in planned.iter_mut() {
        if kept(&c.local_file) && !decision.reasons.contains(&retention::Reason::ChainBase) {
            decision.reasons.push(retention::Reason::ChainBase);
        }
    }
    m.deltas
        .iter()
        .filter(|d| !kept(&d.base))
        .map(|d| d.copy.object.clone())
        .collect()
}

/// Remote retention of `database` on `store` at `now`: under the manifest's lock
/// (`RemoteManifest::update`, the backup directory `dir`), plan with `keep` and the chains'
/// `chain_keep` on the manifest as it is then (a drill's verdict written a moment before
/// counts), and save it without the copies to delete; then delete their objects. Returns the
/// deleted object names.
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply(
    store: &Store,
    database: &str,
    dir: &std::path::Path,
    keep: Keep,
    chain_keep: Duration,
    zone: &Zone,
    now: DateTime<Utc>,
    this_run: &[String],
) -> Result<Vec<String>, RemoteError> {
    let doomed = RemoteManifest::update(store, database, dir, |m| {
        let mut planned = plan(m, keep, zone, now, this_run);
        let mut doomed: Vec<String> = chains(m, &mut planned, chain_keep, now);
        doomed.extend(
            planned
                .iter()
                .filter(|(_, d)| !d.keep())
                .map(|(c, _)| c.object.clone()),
        );
        m.copies.retain(|c| !doomed.contains(&c.object));
        m.deltas.retain(|d| !doomed.contains(&d.copy.object));
        (!doomed.is_empty(), doomed)
    })?;
    for o in &doomed {
        store.delete(&store.key(database, o))?;
    }
    Ok(doomed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn copy(t: DateTime<Utc>) -> Copy {
        let file = format!("chat-{}.db", t.format("%Y%m%d-%H%M%S"));
        Copy {
            object: super::super::object_name(&file),
            local_file: file,
            series: "chat".into(),
            size: 1,
            sha256: String::new(),
            source_sha256: String::new(),
            backup_time: t,
            created_at: t,
            verified: Some(Verified::Quick),
            recorded: None,
            drill: None,
        }
    }

    /// A year of daily copies at 03:00 UTC with `daily = 7, weekly = 4, monthly = 12`:
    /// the copies kept and why, as a golden list.
    #[test]
    fn a_year_of_daily_copies() {
        let start = Utc.with_ymd_and_hms(2025, 12, 1, 3, 0, 0).unwrap();
        let m = RemoteManifest {
            version: 1,
            database: "chat".into(),
            host: None,
            copies: (0..366)
                .map(|d| copy(start + chrono::Duration::days(d)))
                .collect(),
            deltas: Vec::new(),
        };
        let now = start + chrono::Duration::days(365) + chrono::Duration::hours(1);
        let keep = Keep {
            daily: 7,
            weekly: 4,
            monthly: 12,
            ..Keep::default()
        };
        let planned = plan(&m, keep, &Zone::Utc, now, &[]);
        let kept: Vec<String> = planned
            .iter()
            .filter(|(_, d)| d.keep())
            .map(|(c, d)| format!("{} {}", c.backup_time.format("%Y-%m-%d"), d.describe()))
            .collect();
        // Weeks end on Sunday (ISO); 12 months: December 2026 back to January 2026.
        let golden = "\
2026-12-01 daily, weekly, monthly, newest, newest-verified
2026-11-30 daily, monthly
2026-11-29 daily, weekly
2026-11-28 daily
2026-11-27 daily
2026-11-26 daily
2026-11-25 daily
2026-11-22 weekly
2026-11-15 weekly
2026-10-31 monthly
2026-09-30 monthly
2026-08-31 monthly
2026-07-31 monthly
2026-06-30 monthly
2026-05-31 monthly
2026-04-30 monthly
2026-03-31 monthly
2026-02-28 monthly
2026-01-31 monthly";
        assert_eq!(kept.join("\n"), golden);
        assert_eq!(planned.len(), 366);
    }

    /// Nothing verified but the newest copy of a series: it is kept whatever the rules.
    #[test]
    fn newest_verified_copy_is_kept_with_zero_keep() {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut old = copy(t);
        let mut new = copy(t + chrono::Duration::days(1));
        new.verified = Some(Verified::None);
        old.verified = Some(Verified::Quick);
        let m = RemoteManifest {
            version: 1,
            database: "chat".into(),
            host: None,
            copies: vec![old.clone(), new],
            deltas: Vec::new(),
        };
        let planned = plan(
            &m,
            Keep::default(),
            &Zone::Utc,
            t + chrono::Duration::days(2),
            &[],
        );
        let kept: Vec<&str> = planned
            .iter()
            .filter(|(_, d)| d.keep())
            .map(|(c, _)| c.object.as_str())
            .collect();
        assert!(kept.contains(&old.object.as_str()), "{planned:?}");
    }

    /// The newest copy's last drill failed: it is no "newest verified" copy, so the older
    /// good copy is kept (`newest-verified`) however few copies `remote_keep` keeps.
    #[test]
    fn a_copy_whose_drill_failed_is_not_the_newest_verified_copy_kept() {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let old = copy(t);
        let mut new = copy(t + chrono::Duration::days(1));
        new.drill = Some(crate::archive::DrillMark {
            at: t + chrono::Duration::days(1),
            verdict: crate::domain::DrillVerdict::Failed,
            error: Some("integrity_check: page 3 is never used".into()),
        });
        let m = RemoteManifest {
            version: 1,
            database: "chat".into(),
            host: None,
            copies: vec![old.clone(), new.clone()],
            deltas: Vec::new(),
        };
        let keep = Keep {
            last: 1,
            ..Keep::default()
        };
        let planned = plan(&m, keep, &Zone::Utc, t + chrono::Duration::days(2), &[]);
        let kept: Vec<String> = planned
            .iter()
            .map(|(c, d)| format!("{} {}", c.local_file, d.describe()))
            .collect();
        assert!(planned.iter().all(|(_, d)| d.keep()), "{kept:?}");
        assert!(
            kept.iter()
                .any(|k| k.starts_with(&old.local_file) && k.contains("newest-verified")),
            "{kept:?}"
        );
        assert!(
            !kept
                .iter()
                .any(|k| k.starts_with(&new.local_file) && k.contains("verified")),
            "{kept:?}"
        );
    }

    fn delta(base: &Copy, seq: u64, t: DateTime<Utc>) -> super::super::DeltaCopy {
        let file = format!("chat-{}.delta", t.format("%Y%m%d-%H%M%S"));
        super::super::DeltaCopy {
            copy: Copy {
                object: super::super::object_name(&file),
                local_file: file,
                ..copy(t)
            },
            base: base.local_file.clone(),
            sequence: seq,
            prev: base.local_file.clone(),
            page_count: 1,
            page_size: 4096,
            image_sha256: String::new(),
        }
    }

    /// With `last = 1`, the older full is kept while its chain (`keep = 1d`) is, and goes with
    /// its deltas once the chain's newest point is older than that.
    #[test]
    fn a_kept_chain_keeps_its_full_and_an_expired_one_goes_whole() {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 2, 0, 0).unwrap();
        let old = copy(t);
        let new = copy(t + chrono::Duration::hours(12));
        let m = RemoteManifest {
            version: 1,
            database: "chat".into(),
            host: None,
            copies: vec![old.clone(), new],
            deltas: (1..=3)
                .map(|i| delta(&old, i, t + chrono::Duration::minutes(10 * i as i64)))
                .collect(),
        };
        let keep = Keep {
            last: 1,
            ..Keep::default()
        };
        let day = Duration::from_secs(86400);
        let decide = |now: DateTime<Utc>| {
            let mut planned = plan(&m, keep, &Zone::Utc, now, &[]);
            let doomed = chains(&m, &mut planned, day, now);
            let kept: Vec<String> = planned
                .iter()
                .map(|(c, d)| format!("{} {}", c.local_file, d.describe()))
                .collect();
            (kept, doomed)
        };
        // 20 hours after the chain's last point: chain kept, so is its base.
        let (kept, doomed) =
            decide(t + chrono::Duration::hours(20) + chrono::Duration::minutes(30));
        assert!(
            kept.contains(&format!("{} chain-base", old.local_file)),
            "{kept:?}"
        );
        assert!(doomed.is_empty(), "{doomed:?}");
        // Two days later: the chain's deltas go, all three, and the old full with them.
        let (kept, doomed) = decide(t + chrono::Duration::days(2) + chrono::Duration::hours(1));
        assert!(
            kept.contains(&format!("{} delete", old.local_file)),
            "{kept:?}"
        );
        assert_eq!(doomed.len(), 3, "{doomed:?}");
        assert!(doomed.iter().all(|o| o.ends_with(".delta.zst.age")));
    }
}
