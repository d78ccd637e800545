//! systemd units from the configuration: cron schedules as `OnCalendar=` lines (pure), and the
//! drop-ins `litekeeper systemd-units` writes (timers per database and job, `ReadWritePaths=`
//! for the service).
//!
//! Conversion: every cron field is expanded to its set of values and written back as lists and
//! `a..b` ranges, so steps, ranges and names all come out exact. When both day-of-month and
//! day-of-week are restricted, cron runs on days matching *either*; `OnCalendar=` ANDs its
//! parts, so such a schedule becomes two lines (timers fire on the union of their lines). A
//! field counts as restricted unless it starts with `*` (Vixie cron's rule, which croner and
//! so the daemon follow too). The zone is appended (`… Europe/Berlin`) unless it is `local`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, Database};
use crate::jobs::JobKind;
use crate::schedule::{Schedule, Zone};

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

/// The `OnCalendar=` values for a schedule read in `zone` (one, or two for cron's
/// day-of-month OR day-of-week).
pub fn on_calendar(schedule: &Schedule, zone: &Zone) -> Result<Vec<String>, String> {
    let text = schedule.text().trim();
    let text = macro_text(text).unwrap_or(text);
    let mut fields: Vec<&str> = text.split_whitespace().collect();
    if fields.len() == 5 {
        fields.insert(0, "0");
    }
    if fields.len() != 6 {
        return Err(format!("cannot convert {text:?}"));
    }
    let sets: Vec<BTreeSet<u32>> = fields
        .iter()
        .enumerate()
        .map(|(i, f)| expand(f, i))
        .collect::<Result<_, _>>()?;
    let time = format!(
        "{}:{}:{}",
        compact(&sets[2], 0, 23, 2),
        compact(&sets[1], 0, 59, 2),
        compact(&sets[0], 0, 59, 2)
    );
    let month = compact(&sets[4], 1, 12, 2);
    let dom = compact(&sets[3], 1, 31, 2);
    let dow_all = sets[5].len() == 7;
    let dom_restricted = !fields[3].starts_with('*');
    let dow_restricted = !fields[5].starts_with('*');
    let suffix = match zone {
        Zone::Local => String::new(),
        other => format!(" {other}"),
    };
    let line = |dow: Option<String>, dom: &str| match dow {
        Some(d) => format!("{d} *-{month}-{dom} {time}{suffix}"),
        None => format!("*-{month}-{dom} {time}{suffix}"),
    };
    let dow = (!dow_all).then(|| weekdays(&sets[5]));
    Ok(match (dom_restricted, dow_restricted) {
        (true, true) => vec![line(None, &dom), line(dow, "*")],
        (false, true) => vec![line(dow, "*")],
        // A day-of-week starting with `*` (e.g. `*/2`) leaves the days to day-of-month.
        (true, false) => vec![line(None, &dom)],
        (false, false) => vec![line(dow, &dom)],
    })
}

/// `RandomizedDelaySec=` value for a jitter.
pub fn randomized_delay(jitter: Duration) -> String {
    format!("{}s", jitter.as_secs())
}

/// One file to write under the unit directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFile {
    /// Relative path, e.g. `litekeeper-backup@chat.timer.d/schedule.conf`.
    pub path: PathBuf,
    pub text: String,
}

/// Timer drop-ins for every scheduled job, and the service's `ReadWritePaths=` drop-in.
pub fn drop_ins(config: &Config) -> Result<Vec<UnitFile>, String> {
    let mut out = Vec::new();
    let zone = &config.daemon.timezone;
    // One timer per job of each plain database, and per job of each fleet (its handle as the
    // instance: `litekeeper run tenant backup` runs every current member).
    let instances = config
        .databases
        .iter()
        .filter(|db| db.fleet.is_none())
        .map(|db| (db.name.as_str(), db.as_ref()))
        .chain(
            config
                .fleets
                .iter()
                .map(|f| (f.handle.as_str(), f.template.as_ref())),
        );
    for (instance, db) in instances {
        for kind in JobKind::ALL {
            let Some(timing) = db.timing(kind) else {
                continue;
            };
            let Some(schedule) = &timing.schedule else {
                continue;
            };
            let lines = on_calendar(schedule, zone)
                .map_err(|e| format!("database {:?} {}: {e}", instance, kind.as_str()))?;
            let mut text = format!(
                "# Generated by `litekeeper systemd-units` from {} ({} schedule {:?}).\n[Timer]\nOnCalendar=\n",
                config.file.display(),
                kind.as_str(),
                schedule.text()
            );
            for l in lines {
                text.push_str(&format!("OnCalendar={l}\n"));
            }
            text.push_str(&format!(
                "RandomizedDelaySec={}\n",
                randomized_delay(timing.jitter)
            ));
            // systemd's default AccuracySec=1min would move runs by up to a minute.
            text.push_str("AccuracySec=1s\n");
            out.push(UnitFile {
                path: PathBuf::from(format!(
                    "litekeeper-{}@{}.timer.d/schedule.conf",
                    kind.as_str(),
                    instance
                )),
                text,
            });
        }
    }
    // Health pings need the network the shipped units deny: opened only when one is set.
    let pings = config
        .databases
        .iter()
        .map(|db| db.as_ref())
        .chain(config.fleets.iter().map(|f| f.template.as_ref()))
        .any(|db| {
            JobKind::ALL
                .into_iter()
                .any(|k| db.timing(k).is_some_and(|t| t.ping.is_some()))
        });
    let paths = writable_paths(config);
    let mut text = format!(
        "# Generated by `litekeeper systemd-units` from {}: the paths jobs write to.\n[Service]\n",
        config.file.display()
    );
    for p in &paths {
        text.push_str(&format!("ReadWritePaths=-{}\n", p.display()));
    }
    for unit in [
        "litekeeper.service.d",
        "litekeeper-prune@.service.d",
        "litekeeper-vacuum@.service.d",
        "litekeeper-backup@.service.d",
    ] {
        out.push(UnitFile {
            path: PathBuf::from(unit).join("paths.conf"),
            text: text.clone(),
        });
        if pings {
            out.push(UnitFile {
                path: PathBuf::from(unit).join("network.conf"),
                text: "# Generated by `litekeeper systemd-units`: health pings (`ping =`) need the \
                       network the shipped units deny.\n[Service]\nPrivateNetwork=no\nIPAddressDeny=\n\
                       RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n"
                    .into(),
            });
        }
    }
    Ok(out)
}

/// Directories the jobs write to: each database's directory (WAL, -shm, VACUUM, restore),
/// attached databases' directories, backup directories, files-rule directories, state, locks.
pub fn writable_paths(config: &Config) -> Vec<PathBuf> {
    let mut set = BTreeSet::new();
    set.insert(config.daemon.state_dir.clone());
    set.insert(config.daemon.lock_dir.clone());
    if let Some(dir) = config.daemon.metrics_file.as_ref().and_then(|f| f.parent()) {
        set.insert(dir.to_path_buf());
    }
    // Fleet members come and go: their stanza's fixed directories cover every member.
    for db in config.databases.iter().filter(|d| d.fleet.is_none()) {
        for p in db_paths(db) {
            set.insert(p);
        }
    }
    for f in &config.fleets {
        set.extend(fleet_paths(f));
    }
    set.into_iter().collect()
}

/// A fleet's writable directories, from its stanza as written: each path up to its first
/// `{name}`/`{stem}` or wildcard (`/srv/app/tenants/*.db` → `/srv/app/tenants`,
/// `/var/backups/tenants/{name}` → `/var/backups/tenants`).
fn fleet_paths(f: &crate::config::Fleet) -> Vec<PathBuf> {
    let fixed_dir = |text: &str, is_file: bool| -> Option<PathBuf> {
        match text.find(['{', '*', '?', '[']) {
            Some(i) => text[..i]
                .rfind('/')
                .map(|j| PathBuf::from(&text[..j.max(1)])),
            None if is_file => std::path::Path::new(text).parent().map(|p| p.to_path_buf()),
            None => Some(PathBuf::from(text)),
        }
    };
    let raw = &f.raw;
    let mut v = Vec::new();
    v.extend(fixed_dir(&raw.path, true));
    for a in raw.attach.values() {
        v.extend(fixed_dir(a, true));
    }
    match raw.backup.as_ref().and_then(|b| b.dir.as_deref()) {
        Some(dir) => v.extend(fixed_dir(dir, false)),
        // The default backup directory: {state_dir}/backups/{name}.
        None if raw.backup.is_some() => v.extend(
            f.template
                .backup
                .as_ref()
                .and_then(|b| b.dir.parent().map(|p| p.to_path_buf())),
        ),
        None => {}
    }
    if let Some(p) = &raw.prune {
        for files in &p.files {
            v.extend(fixed_dir(&files.dir, false));
        }
    }
    if let Some(t) = raw.vacuum.as_ref().and_then(|v| v.temp_dir.as_deref()) {
        v.extend(fixed_dir(t, false));
    }
    // A pattern that is variable from its first component on (`/*/app.db`) opens nothing:
    // never the whole file system.
    v.into_iter()
        .filter(|p| p.is_absolute() && p.parent().is_some())
        .collect()
}

fn db_paths(db: &Database) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let parent = |p: &std::path::Path| p.parent().map(|d| d.to_path_buf());
    v.extend(parent(&db.path));
    for a in &db.attach {
        v.extend(parent(&a.path));
    }
    if let Some(b) = &db.backup {
        v.push(b.dir.clone());
    }
    if let Some(p) = &db.prune {
        v.extend(p.files.iter().map(|f| f.dir.clone()));
    }
    if let Some(vac) = &db.vacuum {
        v.extend(vac.temp_dir.clone());
    }
    v
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
    fn local_zone_has_no_suffix() {
        let s = Schedule::parse("0 2 * * *").unwrap();
        assert_eq!(on_calendar(&s, &Zone::Local).unwrap(), ["*-*-* 02:00:00"]);
        assert_eq!(
            on_calendar(&s, &Zone::parse("Europe/Berlin").unwrap()).unwrap(),
            ["*-*-* 02:00:00 Europe/Berlin"]
        );
    }
}
