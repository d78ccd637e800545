//! Retention of a remote's copies, by the same rules and safety nets as the local backups
//! (`retention::decide`: the newest verified copy is always kept, nothing dated in the future
//! is judged) with the backup's `remote_keep`. Only objects the remote manifest names are
//! ever deleted (litekeeper's own copies); the manifest is rewritten first, without them, so
//! a failed delete leaves an unlisted object, never a listed copy that is gone. The caller
//! runs it only when every pending copy of the remote was stored.

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
                verified: !matches!(c.verified, Some(Verified::None) | Some(Verified::Failed)),
                recorded: true,
                this_run: this_run.contains(&c.object),
            })
            .collect();
        let decisions = retention::decide(&candidates, &policy, now, zone);
        out.extend(copies.into_iter().cloned().zip(decisions));
    }
    out
}

/// Apply `plan` to `database` on `store`: the manifest without the copies to delete, then
/// the objects. Returns the deleted object names.
pub(crate) fn apply(
    store: &Store,
    database: &str,
    mut m: RemoteManifest,
    planned: &[(Copy, Decision)],
) -> Result<Vec<String>, RemoteError> {
    let doomed: Vec<String> = planned
        .iter()
        .filter(|(_, d)| !d.keep())
        .map(|(c, _)| c.object.clone())
        .collect();
    if doomed.is_empty() {
        return Ok(doomed);
    }
    m.copies.retain(|c| !doomed.contains(&c.object));
    m.save(store, database)?;
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
            copies: (0..366)
                .map(|d| copy(start + chrono::Duration::days(d)))
                .collect(),
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
            copies: vec![old.clone(), new],
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
}
