//! Which backups to keep, and why. Pure: the backups, the policy, `now` and the zone come in,
//! a decision per backup goes out; `jobs::backup` deletes and `backups list` explains.
//!
//! Rules (restic's `forget` semantics, per series of backup files):
//! - `last = N`: the N newest backups;
//! - `hourly/daily/weekly/monthly/yearly = N`: the newest backup of each of the N most recent
//!   hours/days/ISO weeks/months/years that have a backup (periods read in the daemon's zone);
//! - `max_age = D`: every backup younger than D.
//!
//! A backup is kept when any rule keeps it, and the decision lists every rule that does. On
//! top of the rules, two safety nets: the newest backup that is not `.failed` and the newest
//! verified backup are always kept; and when the newest file of a series is a failed backup,
//! nothing at all is deleted (something is wrong; an operator should look first). Failed
//! backups never fill a bucket; they are kept while no newer good backup exists.
//!
//! Only what the manifest vouches for counts. A file it does not know (or whose size differs
//! from its entry) never fills a slot and is never deleted: it is kept and reported
//! (`not-in-manifest`). An entry whose file is not named as a backup of one of the database's
//! series (or is litekeeper's own file) is never judged at all (`not-a-backup`, decided by
//! `jobs::backup`, not here). A backup dated after `now` (the clock moved back, or a foreign file)
//! never fills a slot either, nor becomes the newest: kept and reported (`future-dated`). A
//! backup written by the deciding run is never deleted by it (`this-run`).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serialize;

use crate::config::Keep;
use crate::schedule::Zone;

/// One backup file as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub time: DateTime<Utc>,
    /// Verification failed (`*.failed`): never fills a bucket.
    pub failed: bool,
    /// Verified by quick or full check (false for `verify = "none"` or unknown).
    pub verified: bool,
    /// Recorded in the manifest, with the size it has on disk.
    pub recorded: bool,
    /// Written by the run that decides (never deleted by it).
    pub this_run: bool,
}

/// A backup dated more than this after `now` is future-dated (a few seconds are normal: a
/// run moves its stamp on while a file of that second exists).
pub(crate) const FUTURE_SLACK: chrono::Duration = chrono::Duration::minutes(5);

impl Candidate {
    /// A good, recorded, verified backup taken now (a dry run's preview of the next one).
    pub(crate) fn pending(time: DateTime<Utc>) -> Candidate {
        Candidate {
            time,
            failed: false,
            verified: true,
            recorded: true,
            this_run: true,
        }
    }
}

/// Why a backup is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    MaxAge,
    /// The newest good backup: never deleted.
    Newest,
    /// The newest verified backup: never deleted.
    NewestVerified,
    /// A failed backup with no newer good one: kept for inspection.
    FailedRecent,
    /// The newest backup failed: nothing is deleted until a good one exists.
    NewestFailed,
    /// Written by this run: never deleted by it.
    ThisRun,
    /// Dated in the future (the clock moved back?): kept, never counted; reported.
    FutureDated,
    /// Named like a backup but unknown to the manifest (or of another size): kept, never
    /// counted; reported.
    NotInManifest,
    /// A manifest entry of this database whose file is not a backup name of one of its
    /// series (another database's backup, litekeeper's own manifest or lock file): never
    /// counted, never deleted; reported.
    NotABackup,
    /// The full backup an incremental chain starts from, kept while the chain's deltas are.
    ChainBase,
    /// Its off-site copy is pending on a remote whose retention would keep it: kept until
    /// stored (`jobs::backup::offsite_hold`).
    OffsitePending,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Last => "last",
            Reason::Hourly => "hourly",
            Reason::Daily => "daily",
            Reason::Weekly => "weekly",
            Reason::Monthly => "monthly",
            Reason::Yearly => "yearly",
            Reason::MaxAge => "max-age",
            Reason::Newest => "newest",
            Reason::NewestVerified => "newest-verified",
            Reason::FailedRecent => "failed-recent",
            Reason::NewestFailed => "newest-failed",
            Reason::ThisRun => "this-run",
            Reason::FutureDated => "future-dated",
            Reason::NotInManifest => "not-in-manifest",
            Reason::NotABackup => "not-a-backup",
            Reason::ChainBase => "chain-base",
            Reason::OffsitePending => "offsite-pending",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an incremental chain's deltas are kept at `now`: while its newest point is younger
/// than `keep` (a chain's points depend on every earlier one, so they go together).
pub(crate) fn chain_kept(newest_point: DateTime<Utc>, keep: Duration, now: DateTime<Utc>) -> bool {
    chrono::Duration::from_std(keep).is_ok_and(|k| newest_point + k > now)
}

/// The policy of one backup section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    pub keep: Keep,
    pub max_age: Option<Duration>,
}

/// The decision for the candidate at the same index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Empty: delete.
    pub reasons: Vec<Reason>,
}

impl Decision {
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }

    /// "daily, weekly" or "delete".
    pub fn describe(&self) -> String {
        if self.reasons.is_empty() {
            "delete".to_string()
        } else {
            self.reasons
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

/// The period a backup falls into for a bucket, in the zone's wall-clock time.
fn period(r: Reason, t: DateTime<Utc>, zone: &Zone) -> i64 {
    let local = (t + chrono::Duration::seconds(zone.offset_seconds(t) as i64)).naive_utc();
    let (y, m, d, h) = (
        local.year() as i64,
        local.month() as i64,
        local.day() as i64,
        local.hour() as i64,
    );
    match r {
        Reason::Hourly => ((y * 100 + m) * 100 + d) * 100 + h,
        Reason::Daily => (y * 100 + m) * 100 + d,
        Reason::Weekly => {
            let w = local.iso_week();
            w.year() as i64 * 100 + w.week() as i64
        }
        Reason::Monthly => y * 100 + m,
        Reason::Yearly => y,
        _ => unreachable!("not a period bucket"),
    }
}

/// Decide for every candidate (any order; decisions come back in the same order).
pub(crate) fn decide(
    backups: &[Candidate],
    policy: &Policy,
    now: DateTime<Utc>,
    zone: &Zone,
) -> Vec<Decision> {
    let mut reasons: Vec<Vec<Reason>> = vec![Vec::new(); backups.len()];
    for (i, b) in backups.iter().enumerate() {
        if !b.recorded {
            reasons[i].push(Reason::NotInManifest);
        } else if b.time > now + FUTURE_SLACK {
            reasons[i].push(Reason::FutureDated);
        }
        if b.this_run {
            reasons[i].push(Reason::ThisRun);
        }
    }
    // Newest first among the backups that count; ties keep input order so the result is
    // deterministic.
    let mut order: Vec<usize> = (0..backups.len())
        .filter(|&i| backups[i].recorded && backups[i].time <= now + FUTURE_SLACK)
        .collect();
    order.sort_by(|&a, &b| backups[b].time.cmp(&backups[a].time).then(a.cmp(&b)));

    if let Some(&newest) = order.first() {
        if backups[newest].failed {
            for &i in &order {
                reasons[i].push(if i == newest {
                    Reason::FailedRecent
                } else {
                    Reason::NewestFailed
                });
            }
            return finish(reasons);
        }
    }

    let good: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| !backups[i].failed)
        .collect();

    for &i in good.iter().take(policy.keep.last as usize) {
        reasons[i].push(Reason::Last);
    }
    for (rule, count) in [
        (Reason::Hourly, policy.keep.hourly),
        (Reason::Daily, policy.keep.daily),
        (Reason::Weekly, policy.keep.weekly),
        (Reason::Monthly, policy.keep.monthly),
        (Reason::Yearly, policy.keep.yearly),
    ] {
        let mut left = count;
        let mut last_period = None;
        for &i in &good {
            if left == 0 {
                break;
            }
            let p = period(rule, backups[i].time, zone);
            if last_period != Some(p) {
                reasons[i].push(rule);
                last_period = Some(p);
                left -= 1;
            }
        }
    }
    if let Some(max_age) = policy.max_age {
        let max_age = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
        for &i in &good {
            if now.signed_duration_since(backups[i].time) < max_age {
                reasons[i].push(Reason::MaxAge);
            }
        }
    }
    if let Some(&i) = good.first() {
        reasons[i].push(Reason::Newest);
    }
    if let Some(&i) = good.iter().find(|&&i| backups[i].verified) {
        reasons[i].push(Reason::NewestVerified);
    }
    // Failed backups newer than the newest good one stay for inspection. (The newest file is
    // good here, so this only matters for equal times; kept for clarity.)
    let newest_good = good.first().map(|&i| backups[i].time);
    for &i in &order {
        let b = &backups[i];
        if b.failed && newest_good.is_none_or(|t| b.time >= t) {
            reasons[i].push(Reason::FailedRecent);
        }
    }
    finish(reasons)
}

fn finish(mut reasons: Vec<Vec<Reason>>) -> Vec<Decision> {
    reasons
        .iter_mut()
        .map(|r| {
            r.sort();
            r.dedup();
            Decision { reasons: r.clone() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn keep(last: u32, hourly: u32, daily: u32, weekly: u32, monthly: u32, yearly: u32) -> Keep {
        Keep {
            last,
            hourly,
            daily,
            weekly,
            monthly,
            yearly,
        }
    }

    fn good(t: DateTime<Utc>) -> Candidate {
        Candidate {
            time: t,
            failed: false,
            verified: true,
            recorded: true,
            this_run: false,
        }
    }

    fn failed(t: DateTime<Utc>) -> Candidate {
        Candidate {
            failed: true,
            verified: false,
            ..good(t)
        }
    }

    /// A year of daily 02:00 UTC backups, 2025-01-01 .. 2025-12-31, plus hourly ones on the
    /// last day. Returns candidates oldest first.
    fn year_of_backups() -> Vec<Candidate> {
        let start = Utc.with_ymd_and_hms(2025, 1, 1, 2, 0, 0).unwrap();
        let mut v: Vec<Candidate> = (0..365)
            .map(|d| good(start + chrono::Duration::days(d)))
            .collect();
        let last_day = Utc.with_ymd_and_hms(2025, 12, 31, 3, 0, 0).unwrap();
        v.extend((0..20).map(|h| good(last_day + chrono::Duration::hours(h))));
        v
    }

    fn kept(v: &[Candidate], d: &[Decision]) -> Vec<String> {
        let mut out: Vec<(DateTime<Utc>, String)> = v
            .iter()
            .zip(d)
            .filter(|(_, d)| d.keep())
            .map(|(c, d)| {
                (
                    c.time,
                    format!("{} {}", c.time.format("%Y-%m-%d %H:%M"), d.describe()),
                )
            })
            .collect();
        out.sort();
        out.into_iter().map(|(_, s)| s).collect()
    }

    #[test]
    fn golden_a_year_of_backups() {
        let v = year_of_backups();
        let now = Utc.with_ymd_and_hms(2025, 12, 31, 23, 0, 0).unwrap();
        let policy = Policy {
            keep: keep(3, 4, 7, 4, 6, 2),
            max_age: None,
        };
        let d = decide(&v, &policy, now, &Zone::Utc);
        let got = kept(&v, &d);
        let want = vec![
            // yearly: 2 asked, only 2025 has backups; monthly: the newest of each of the last
            // 6 months (Jul..Dec); weekly: the newest of each of the last 4 ISO weeks (2026-W01
            // holds Dec 31, then W52, W51, W50)
            "2025-07-31 02:00 monthly",
            "2025-08-31 02:00 monthly",
            "2025-09-30 02:00 monthly",
            "2025-10-31 02:00 monthly",
            "2025-11-30 02:00 monthly",
            "2025-12-14 02:00 weekly", // Sunday, ISO week 50
            "2025-12-21 02:00 weekly", // week 51
            // daily: the newest of each of the last 7 days
            "2025-12-25 02:00 daily",
            "2025-12-26 02:00 daily",
            "2025-12-27 02:00 daily",
            "2025-12-28 02:00 daily, weekly", // Sunday: newest of week 52
            "2025-12-29 02:00 daily",
            "2025-12-30 02:00 daily",
            // hourly: the 4 newest hours of the last day; last: the 3 newest
            "2025-12-31 19:00 hourly",
            "2025-12-31 20:00 last, hourly",
            "2025-12-31 21:00 last, hourly",
            "2025-12-31 22:00 last, hourly, daily, weekly, monthly, yearly, newest, newest-verified",
        ];
        assert_eq!(got, want, "\n{}", got.join("\n"));
        assert_eq!(d.iter().filter(|d| d.keep()).count(), want.len());
    }

    #[test]
    fn golden_max_age_keeps_everything_younger() {
        let v = year_of_backups();
        let now = Utc.with_ymd_and_hms(2025, 12, 31, 23, 0, 0).unwrap();
        let policy = Policy {
            keep: Keep::default(),
            max_age: Some(Duration::from_secs(3 * 86400)),
        };
        let d = decide(&v, &policy, now, &Zone::Utc);
        let mut want: Vec<String> = ["2025-12-29 02:00", "2025-12-30 02:00", "2025-12-31 02:00"]
            .iter()
            .map(|t| format!("{t} max-age"))
            .collect();
        want.extend((3..22).map(|h| format!("2025-12-31 {h:02}:00 max-age")));
        want.push("2025-12-31 22:00 max-age, newest, newest-verified".into());
        assert_eq!(kept(&v, &d), want);
    }

    #[test]
    fn periods_are_read_in_the_configured_zone() {
        let at = |d, h, m| good(Utc.with_ymd_and_hms(2025, 12, d, h, m, 0).unwrap());
        // 22:30 UTC on the 30th is the 30th in Berlin; 23:30 UTC is already the 31st there.
        let v = vec![at(30, 22, 30), at(30, 23, 30), at(31, 10, 0)];
        let policy = Policy {
            keep: keep(0, 0, 2, 0, 0, 0),
            max_age: None,
        };
        let now = Utc.with_ymd_and_hms(2025, 12, 31, 12, 0, 0).unwrap();
        let utc = decide(&v, &policy, now, &Zone::Utc);
        assert_eq!(
            utc.iter().map(Decision::keep).collect::<Vec<_>>(),
            [false, true, true]
        );
        let berlin = decide(&v, &policy, now, &Zone::parse("Europe/Berlin").unwrap());
        assert_eq!(
            berlin.iter().map(Decision::keep).collect::<Vec<_>>(),
            [true, false, true]
        );
    }

    #[test]
    fn never_deletes_the_newest_verified_backup() {
        let t = Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).unwrap();
        let v = vec![
            good(t),
            Candidate {
                verified: false, // verify = "none"
                ..good(t + chrono::Duration::days(1))
            },
        ];
        // A policy that keeps nothing at all still keeps the newest and the newest verified.
        let policy = Policy {
            keep: Keep::default(),
            max_age: None,
        };
        let d = decide(&v, &policy, t + chrono::Duration::days(400), &Zone::Utc);
        assert_eq!(d[0].reasons, vec![Reason::NewestVerified]);
        assert_eq!(d[1].reasons, vec![Reason::Newest]);
    }

    #[test]
    fn a_failed_newest_backup_deletes_nothing() {
        let t = Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).unwrap();
        let mut v: Vec<Candidate> = (0..30)
            .map(|d| good(t + chrono::Duration::days(d)))
            .collect();
        v.push(failed(t + chrono::Duration::days(31)));
        let policy = Policy {
            keep: keep(1, 0, 0, 0, 0, 0),
            max_age: None,
        };
        let d = decide(&v, &policy, t + chrono::Duration::days(32), &Zone::Utc);
        assert!(d.iter().all(Decision::keep));
        assert_eq!(d[30].reasons, vec![Reason::FailedRecent]);
        assert_eq!(d[0].reasons, vec![Reason::NewestFailed]);
    }

    #[test]
    fn older_failed_backups_go_once_a_good_one_follows_and_never_fill_a_bucket() {
        let t = Utc.with_ymd_and_hms(2025, 6, 1, 2, 0, 0).unwrap();
        let v = vec![
            good(t),
            failed(t + chrono::Duration::days(1)),
            good(t + chrono::Duration::days(2)),
        ];
        let policy = Policy {
            keep: keep(0, 0, 2, 0, 0, 0),
            max_age: None,
        };
        let d = decide(&v, &policy, t + chrono::Duration::days(3), &Zone::Utc);
        assert_eq!(
            d[0].reasons,
            vec![Reason::Daily],
            "the failed day did not use a slot"
        );
        assert!(!d[1].keep(), "{:?}", d[1]);
        assert!(d[2].keep());
    }

    #[test]
    fn the_newest_of_a_period_wins_not_the_first() {
        let t = Utc.with_ymd_and_hms(2025, 6, 1, 1, 0, 0).unwrap();
        let v: Vec<Candidate> = (0..3)
            .map(|h| good(t + chrono::Duration::hours(h)))
            .collect();
        let policy = Policy {
            keep: keep(0, 0, 1, 0, 0, 0),
            max_age: None,
        };
        let d = decide(&v, &policy, t + chrono::Duration::hours(3), &Zone::Utc);
        assert!(!d[0].keep() && !d[1].keep());
        assert!(d[2].reasons.contains(&Reason::Daily));
    }

    #[test]
    fn only_recorded_backups_of_the_past_fill_slots() {
        let now = Utc.with_ymd_and_hms(2025, 6, 10, 12, 0, 0).unwrap();
        let fresh = Candidate {
            this_run: true,
            ..good(now)
        };
        let garbage = Candidate {
            recorded: false,
            ..good(now + chrono::Duration::days(400))
        };
        // The clock was ahead when these were taken; a garbage file has a future name too.
        let future = good(now + chrono::Duration::days(30));
        let yesterday = good(now - chrono::Duration::days(1));
        let old = good(now - chrono::Duration::days(2));
        let v = vec![old, yesterday, future, garbage, fresh];
        let policy = Policy {
            keep: keep(2, 0, 0, 0, 0, 0),
            max_age: None,
        };
        let d = decide(&v, &policy, now, &Zone::Utc);
        assert!(!d[0].keep(), "{:?}", d[0]);
        assert_eq!(d[1].reasons, vec![Reason::Last]);
        assert_eq!(d[2].reasons, vec![Reason::FutureDated]);
        assert_eq!(d[3].reasons, vec![Reason::NotInManifest]);
        assert_eq!(
            d[4].reasons,
            vec![
                Reason::Last,
                Reason::Newest,
                Reason::NewestVerified,
                Reason::ThisRun
            ]
        );
        // Even a policy that would drop it keeps this run's backup; a failed newest that is
        // only a future-dated or unknown file does not stop retention.
        let v = vec![
            Candidate {
                this_run: true,
                ..good(now - chrono::Duration::days(3))
            },
            good(now - chrono::Duration::days(1)),
            failed(now + chrono::Duration::days(9)),
            Candidate {
                recorded: false,
                ..failed(now)
            },
        ];
        let d = decide(&v, &policy, now, &Zone::Utc);
        assert_eq!(d[0].reasons, vec![Reason::Last, Reason::ThisRun]);
        assert_eq!(d[2].reasons, vec![Reason::FutureDated]);
        assert_eq!(d[3].reasons, vec![Reason::NotInManifest]);
    }
}
