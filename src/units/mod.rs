//! systemd units from the configuration: cron schedules as `OnCalendar=` lines (pure), and the
//! drop-ins `litekeeper systemd-units` writes (timers per database and job, `ReadWritePaths=`
//! for the service).
//!
//! Conversion: every cron field is expanded to its set of values and written back as lists and
//! `a..b` ranges, so steps, ranges and names all come out exact. When both day-of-month and
//! day-of-week are restricted, cron runs on days matching *either*; `OnCalendar=` ANDs its
//! parts, so such a schedule becomes two lines (timers fire on the union of their lines). A
//! field counts as restricted unless it is exactly `*` (croner's rule, so the daemon's; Vixie
//! cron also leaves `*/2` unrestricted). The zone is appended (`… Europe/Berlin`) unless it is
//! `local`; days the zone changes its offset get dated lines (`timer_lines`).
//!
//! Every value written into a unit goes through one writer per kind (`syntax.rs`:
//! `path_list_item`, `environment`, `exec_arg`, `calendar_value`, `instance_name`,
//! `comment`), which quotes it per systemd.syntax(7) or refuses it naming its configuration
//! key. `drop_ins.rs` writes the drop-ins from the configuration.

use std::collections::BTreeSet;

use chrono::{DateTime, Timelike, Utc};

use crate::schedule::{Schedule, Zone};

mod drop_ins;
mod syntax;

pub use self::drop_ins::{config_drop_ins, drop_ins, randomized_delay, writable_paths, UnitFile};
use self::syntax::calendar_value;
pub use self::syntax::{environment, exec_arg, instance_name, path_list_item, with_executable};

const WEEKDAY_NAMES: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn macro_text(text: &str) -> Option<&'static str> {
    Some(match text.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => return None,
    })
}

fn value(token: &str, field: usize) -> Result<u32, String> {
    let up = token.to_ascii_uppercase();
    let named = match field {
        4 => MONTHS.iter().position(|m| *m == up).map(|i| i as u32 + 1),
        5 => DAYS.iter().position(|d| *d == up).map(|i| i as u32),
        _ => None,
    };
    named
        .or_else(|| token.parse().ok())
        .ok_or_else(|| format!("cannot read {token:?}"))
}

/// Expand one field (index 0 second … 5 day-of-week) into its values.
fn expand(text: &str, field: usize) -> Result<BTreeSet<u32>, String> {
    let (lo, hi) = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7)][field];
    let mut out = BTreeSet::new();
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .map_err(|_| format!("bad step in {part:?}"))?,
            ),
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, field)?, value(b, field)?)
        } else {
            let a = value(range, field)?;
            // "5/15" means from 5 to the end in steps of 15.
            (a, if part.contains('/') { hi } else { a })
        };
        let mut v = a;
        while v <= b {
            out.insert(if field == 5 && v == 7 { 0 } else { v });
            v += step.max(1);
        }
    }
    Ok(out)
}

/// `1..5,7,9` (numbers, two digits for time fields), or `*` when the set is the whole range.
fn compact(set: &BTreeSet<u32>, lo: u32, hi: u32, width: usize) -> String {
    if set.len() as u32 == hi - lo + 1 {
        return "*".into();
    }
    let v: Vec<u32> = set.iter().copied().collect();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        let f = |n: u32| format!("{n:0width$}");
        if j > i {
            parts.push(format!("{}..{}", f(v[i]), f(v[j])));
        } else {
            parts.push(f(v[i]));
        }
        i = j + 1;
    }
    parts.join(",")
}

/// Weekdays Mon..Sun order, runs compressed: `Mon..Fri`, `Sat,Sun`.
fn weekdays(set: &BTreeSet<u32>) -> String {
    let order = [1, 2, 3, 4, 5, 6, 0];
    let present: Vec<u32> = order.iter().copied().filter(|d| set.contains(d)).collect();
    let pos = |d: u32| order.iter().position(|x| *x == d).unwrap_or(0);
    let mut parts = Vec::new();
    let mut i = 0;
    while i < present.len() {
        let mut j = i;
        while j + 1 < present.len() && pos(present[j + 1]) == pos(present[j]) + 1 {
            j += 1;
        }
        let name = |d: u32| WEEKDAY_NAMES[d as usize];
        if j >= i + 2 {
            parts.push(format!("{}..{}", name(present[i]), name(present[j])));
        } else {
            for d in &present[i..=j] {
                parts.push(name(*d).to_string());
            }
        }
        i = j + 1;
    }
    parts.join(",")
}

/// A cron expression as the set of values of each field (0 second … 5 day-of-week), with
/// croner's reading of the two day fields.
struct Fields {
    sets: Vec<BTreeSet<u32>>,
    /// The field is exactly `*`: croner's rule, which the daemon follows. A day field is
    /// unrestricted only then (Vixie cron also counts `*/2` as unrestricted; croner does not).
    star_dom: bool,
    star_dow: bool,
}

impl Fields {
    fn parse(schedule: &Schedule) -> Result<Fields, String> {
        let text = schedule.text().trim();
        let text = macro_text(text).unwrap_or(text);
        let mut fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() == 5 {
            fields.insert(0, "0");
        }
        if fields.len() != 6 {
            return Err(format!("cannot convert {text:?}"));
        }
        let sets = fields
            .iter()
            .enumerate()
            .map(|(i, f)| expand(f, i))
            .collect::<Result<_, _>>()?;
        Ok(Fields {
            sets,
            star_dom: fields[3] == "*",
            star_dow: fields[5] == "*",
        })
    }
}

/// The `OnCalendar=` values for a schedule read in `zone`, as systemd reads them on ordinary
/// days (one line, or two for cron's day-of-month OR day-of-week). See `timer_lines` for the
/// days the zone changes its offset.
pub fn on_calendar(schedule: &Schedule, zone: &Zone) -> Result<Vec<String>, String> {
    let f = Fields::parse(schedule)?;
    let sets = &f.sets;
    let time = format!(
        "{}:{}:{}",
        compact(&sets[2], 0, 23, 2),
        compact(&sets[1], 0, 59, 2),
        compact(&sets[0], 0, 59, 2)
    );
    let month = compact(&sets[4], 1, 12, 2);
    let dom = compact(&sets[3], 1, 31, 2);
    let suffix = match zone {
        Zone::Local => String::new(),
        other => format!(" {other}"),
    };
    let line = |dow: Option<String>, dom: &str| match dow {
        Some(d) => format!("{d} *-{month}-{dom} {time}{suffix}"),
        None => format!("*-{month}-{dom} {time}{suffix}"),
    };
    let dow = (sets[5].len() < 7).then(|| weekdays(&sets[5]));
    let lines = match (f.star_dom, f.star_dow) {
        (true, true) => vec![line(None, "*")],
        (true, false) => vec![line(dow, "*")],
        (false, true) => vec![line(None, &dom)],
        (false, false) => vec![line(None, &dom), line(dow, "*")],
    };
    lines.iter().map(|l| calendar_value(l)).collect()
}

/// How many years of DST changes `timer_lines` writes out as dated lines.
pub const DST_YEARS: i64 = 10;

/// Every `OnCalendar=` line of a timer that runs exactly when the daemon does, generated at
/// `now`: `on_calendar`'s lines, plus dated lines in UTC for the daemon's runs around each
/// change of the zone's offset within `DST_YEARS`.
///
/// systemd never runs a wall-clock time that does not exist (spring forward) and runs one that
/// occurs twice once, at its first occurrence. The daemon (`schedule.rs`, Vixie cron's rule)
/// runs a fixed-time job whose time falls into the gap at the end of the gap, and interval
/// jobs through both readings of a repeated hour. Timers fire on the union of their lines, so
/// the dated lines make them run then too.
pub fn timer_lines(
    schedule: &Schedule,
    zone: &Zone,
    now: DateTime<Utc>,
) -> Result<Vec<String>, String> {
    let mut lines = on_calendar(schedule, zone)?;
    let mut extra: BTreeSet<DateTime<Utc>> = BTreeSet::new();
    for (at, shift) in offset_changes(zone, now, now + chrono::Duration::days(366 * DST_YEARS)) {
        // From the change on, for the length of the shift and at least an hour, systemd's
        // reading differs: it skips wall times that do not exist, then resumes at the next
        // whole hour (Pacific/Chatham: 03:45 after the gap is skipped too), and runs a
        // repeated time once. Every daemon run there becomes a dated line; elsewhere the
        // zone's wall clock is one-to-one and both read the expression the same.
        // The daemon's runs there, as it iterates from run to run: from an hour before, where
        // its sequence is the ordinary one.
        let to = at + chrono::Duration::seconds(shift.abs().max(3600));
        let mut t = at - chrono::Duration::seconds(shift.abs().max(3600));
        while let Some(n) = schedule.next_after(t, zone).filter(|n| *n <= to) {
            if n >= at {
                extra.insert(n);
            }
            t = n;
        }
    }
    lines.extend(
        dated_lines(&extra)
            .iter()
            .map(|l| calendar_value(l))
            .collect::<Result<Vec<_>, _>>()?,
    );
    Ok(lines)
}

/// The instants in `[from, to)` where `zone`'s UTC offset changes, with the change in seconds.
fn offset_changes(
    zone: &Zone,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, i64)> {
    let mut out = Vec::new();
    if *zone == Zone::Utc {
        return out;
    }
    let step = chrono::Duration::hours(6);
    let mut t = from;
    while t < to {
        let next = t + step;
        let before = zone.offset_seconds(t);
        if zone.offset_seconds(next) != before {
            // The first whole second of the new offset.
            let at = |s: i64| DateTime::from_timestamp(s, 0).unwrap_or(next);
            let (mut lo, mut hi) = (t.timestamp(), next.timestamp());
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if zone.offset_seconds(at(mid)) == before {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            out.push((at(hi), i64::from(zone.offset_seconds(at(hi)) - before)));
        }
        t = next;
    }
    out
}

/// Instants as `OnCalendar=` lines in UTC, one per UTC hour where its minutes and seconds
/// form a grid (`2026-10-25 01:00,15,30,45:00 UTC`), else one per minute.
fn dated_lines(instants: &BTreeSet<DateTime<Utc>>) -> Vec<String> {
    use std::collections::BTreeMap;
    let mut hours: BTreeMap<String, BTreeMap<u32, BTreeSet<u32>>> = BTreeMap::new();
    for t in instants {
        hours
            .entry(t.format("%Y-%m-%d %H").to_string())
            .or_default()
            .entry(t.minute())
            .or_default()
            .insert(t.second());
    }
    let mut out = Vec::new();
    for (hour, minutes) in hours {
        let first = minutes.values().next().cloned().unwrap_or_default();
        if minutes.values().all(|s| *s == first) {
            let m: BTreeSet<u32> = minutes.keys().copied().collect();
            out.push(format!(
                "{hour}:{}:{} UTC",
                compact(&m, 0, 59, 2),
                compact(&first, 0, 59, 2)
            ));
        } else {
            for (m, secs) in minutes {
                out.push(format!("{hour}:{m:02}:{} UTC", compact(&secs, 0, 59, 2)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cal(text: &str) -> Vec<String> {
        on_calendar(&Schedule::parse(text).unwrap(), &Zone::Utc).unwrap()
    }

    #[test]
    fn common_schedules() {
        assert_eq!(cal("0 2 * * *"), ["*-*-* 02:00:00 UTC"]);
        assert_eq!(cal("@daily"), ["*-*-* 00:00:00 UTC"]);
        assert_eq!(cal("0 3 * * SUN"), ["Sun *-*-* 03:00:00 UTC"]);
        assert_eq!(cal("*/15 * * * *"), ["*-*-* *:00,15,30,45:00 UTC"]);
        assert_eq!(cal("30 4 * * mon-fri"), ["Mon..Fri *-*-* 04:30:00 UTC"]);
        assert_eq!(cal("0 0 1 */3 *"), ["*-01,04,07,10-01 00:00:00 UTC"]);
        assert_eq!(cal("*/20 * * * * *"), ["*-*-* *:*:00,20,40 UTC"]);
        assert_eq!(
            cal("0 9-17/4 * * 6,0"),
            ["Sat,Sun *-*-* 09,13,17:00:00 UTC"]
        );
        assert_eq!(cal("0 0 * * 7"), ["Sun *-*-* 00:00:00 UTC"]);
    }

    #[test]
    fn day_of_month_or_day_of_week_becomes_two_lines() {
        assert_eq!(
            cal("0 2 1,15 * MON"),
            ["*-*-01,15 02:00:00 UTC", "Mon *-*-* 02:00:00 UTC"]
        );
    }

    #[test]
    fn a_day_field_other_than_a_bare_star_is_restricted() {
        // croner's reading (the daemon's): `*/2` restricts, so cron's OR applies.
        assert_eq!(
            cal("0 0 */2 * MON"),
            [
                "*-*-01,03,05,07,09,11,13,15,17,19,21,23,25,27,29,31 00:00:00 UTC",
                "Mon *-*-* 00:00:00 UTC"
            ]
        );
        assert_eq!(
            cal("0 0 1-7 * */2"),
            [
                "*-*-01..07 00:00:00 UTC",
                "Tue,Thu,Sat,Sun *-*-* 00:00:00 UTC"
            ]
        );
    }

    #[test]
    fn hostile_values_are_quoted_or_refused() {
        let p = std::path::Path::new("/srv/a b/\"q\"%d\\x");
        assert_eq!(
            path_list_item("k", "-", p).unwrap(),
            "\"-/srv/a b/\\\"q\\\"%%d\\\\x\""
        );
        assert!(
            path_list_item("backup.dir", "-", std::path::Path::new("/a\n[Service]"))
                .unwrap_err()
                .starts_with("backup.dir: ")
        );
        assert!(path_list_item("k", "-", std::path::Path::new("/a/../b")).is_err());
        assert!(path_list_item("k", "-", std::path::Path::new("rel")).is_err());
        assert_eq!(instance_name("k", "my-db_2").unwrap(), "my-db_2");
        assert!(instance_name("k", "-h").is_err());
        assert!(instance_name("k", "a/b").is_err());
        assert!(instance_name("k", ".h").is_err());
        assert_eq!(environment("k", "A", "x \"%h").unwrap(), "\"A=x \\\"%%h\"");
    }

    #[test]
    fn local_zone_has_no_suffix() {
        let s = Schedule::parse("0 2 * * *").unwrap();
        assert_eq!(on_calendar(&s, &Zone::Local).unwrap(), ["*-*-* 02:00:00"]);
        assert_eq!(
            on_calendar(&s, &Zone::parse("Europe/Berlin").unwrap()).unwrap(),
            ["*-*-* 02:00:00 Europe/Berlin"]
        );
    }
}
