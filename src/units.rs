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
//! Every value written into a unit goes through one writer per kind (`path_list_item`,
//! `environment`, `exec_arg`, `calendar_value`, `instance_name`, `comment`), which quotes it
//! per systemd.syntax(7) or refuses it naming its configuration key.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};

use crate::config::{Config, Database};
use crate::domain::JobKind;
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

// Values written into units, one function per kind (systemd.syntax(7), systemd.exec(5)).
// Each refuses what it cannot write safely, naming the configuration key it came from, so
// no value from the configuration or the environment becomes a directive, a specifier, a
// second path or a shorter one.

/// Refuse text a unit file cannot carry: control characters (a newline would start a
/// directive of its own).
fn writable(key: &str, text: &str) -> Result<(), String> {
    match text.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "{key}: {text:?} holds the control character {c:?}, which cannot be written into a \
             systemd unit; rename it"
        )),
        None => Ok(()),
    }
}

/// Inside double quotes: `\` and `"` backslash-escaped (read back the same with and without
/// C unescaping), `%` doubled (no specifier).
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn utf8<'a>(key: &str, path: &'a std::path::Path) -> Result<&'a str, String> {
    path.to_str().ok_or_else(|| {
        format!(
            "{key}: {} is not valid UTF-8, which a systemd unit cannot hold",
            path.display()
        )
    })
}

/// One entry of a space-separated path list (`ReadWritePaths=`), with its prefix (`-`: ignore
/// a missing path): `"-/srv/my app"`. The path must be absolute and normalized (systemd drops
/// a path with `.` or `..` components).
pub fn path_list_item(key: &str, prefix: &str, path: &std::path::Path) -> Result<String, String> {
    let text = utf8(key, path)?;
    writable(key, text)?;
    if !text.starts_with('/') {
        return Err(format!("{key}: {text:?} is not an absolute path"));
    }
    if text.split('/').any(|c| c == "." || c == "..") {
        return Err(format!(
            "{key}: {text:?} has a '.' or '..' component, which systemd refuses in a path \
             setting; write the path without it"
        ));
    }
    Ok(quoted(&format!("{prefix}{text}")))
}

/// One `Environment=` assignment, quoted whole: `"LITEKEEPER_CONFIG=/etc/my app.toml"`.
pub fn environment(key: &str, name: &str, value: &str) -> Result<String, String> {
    writable(key, value)?;
    Ok(quoted(&format!("{name}={value}")))
}

/// One `ExecStart=` argument, quoted. The units start commands with `:`, so `$` is never
/// expanded either.
pub fn exec_arg(key: &str, text: &str) -> Result<String, String> {
    writable(key, text)?;
    Ok(quoted(text))
}

/// An `OnCalendar=` value: only what the generator writes (numbers, names, `*-:.,/_+`), `%`
/// doubled.
fn calendar_value(text: &str) -> Result<String, String> {
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || " *-:.,/_+~".contains(*c)))
    {
        return Err(format!("cannot write {text:?} as OnCalendar= ({c:?})"));
    }
    Ok(text.replace('%', "%%"))
}

/// Text for a `#` comment: Debug-quoted, so it is one line and never ends in a backslash.
fn comment(text: &str) -> String {
    format!("{text:?}")
}

/// A unit instance name, written as the name itself and read back with `%i` (verbatim), so
/// `litekeeper-backup@my-db.timer` runs `litekeeper run -- my-db backup`. Database and member
/// names are `[a-z0-9_][a-z0-9_-]*`, which systemd takes as they are; anything else (which the
/// configuration never lets through) is refused rather than escaped, because `%I` would turn
/// a `-` into a `/` and every name with a dash would need `\x2d` in `systemctl` commands.
pub fn instance_name(key: &str, name: &str) -> Result<String, String> {
    writable(key, name)?;
    if name.is_empty() {
        return Err(format!("{key}: an empty name cannot be a unit instance"));
    }
    if name.starts_with(['-', '.'])
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
    {
        return Err(format!(
            "{key}: {name:?} cannot be a unit instance name (letters, digits, '_' and '-', \
             not starting with '-')"
        ));
    }
    // systemd's limit for a whole unit name (`litekeeper-vacuum@….timer`).
    if name.len() + "litekeeper-incremental@.service".len() > 255 {
        return Err(format!(
            "{key}: {name:?} is too long for a systemd unit name (255 bytes)"
        ));
    }
    Ok(name.to_string())
}

/// A shipped unit with its executable replaced by `exe` (`--with-units` outside the package).
pub fn with_executable(unit: &str, exe: &std::path::Path) -> Result<String, String> {
    let exe = exec_arg(
        "the litekeeper executable",
        utf8("the litekeeper executable", exe)?,
    )?;
    Ok(unit.replace("/usr/bin/litekeeper", &exe))
}

/// The drop-ins that point every service at a configuration file other than the default.
pub fn config_drop_ins(file: &std::path::Path) -> Result<Vec<UnitFile>, String> {
    let env = environment(
        "the configuration file",
        "LITEKEEPER_CONFIG",
        utf8("the configuration file", file)?,
    )?;
    Ok(SERVICE_DROP_IN_DIRS
        .iter()
        .map(|unit| UnitFile {
            path: PathBuf::from(unit).join("config.conf"),
            text: format!(
                "# Generated by `litekeeper systemd-units`: the configuration file to use.\n\
                 [Service]\nEnvironment={env}\n"
            ),
        })
        .collect())
}

const SERVICE_DROP_IN_DIRS: [&str; 6] = [
    "litekeeper.service.d",
    "litekeeper-prune@.service.d",
    "litekeeper-vacuum@.service.d",
    "litekeeper-backup@.service.d",
    "litekeeper-incremental@.service.d",
    "litekeeper-drill@.service.d",
];

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

/// Timer drop-ins for every scheduled job, and the service's `ReadWritePaths=` drop-in,
/// generated at `now` (see `timer_lines`). Every value goes through its kind's writer above.
pub fn drop_ins(config: &Config, now: DateTime<Utc>) -> Result<Vec<UnitFile>, String> {
    let file = std::path::absolute(&config.file).unwrap_or_else(|_| config.file.clone());
    let source = comment(&file.to_string_lossy());
    let mut out = timer_drop_ins(config, now, &source)?;
    out.extend(service_drop_ins(config, &source)?);
    Ok(out)
}

/// The `schedule.conf` of every job's timer (see [`drop_ins`]); `source` names the
/// configuration file in their comments.
fn timer_drop_ins(
    config: &Config,
    now: DateTime<Utc>,
    source: &str,
) -> Result<Vec<UnitFile>, String> {
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
    for (name, db) in instances {
        let instance = instance_name(&format!("database {name:?}"), name)?;
        for kind in JobKind::ALL {
            let Some(timing) = db.timing(kind) else {
                continue;
            };
            let Some(schedule) = &timing.schedule else {
                continue;
            };
            let lines = timer_lines(schedule, zone, now)
                .map_err(|e| format!("database {name:?} {}.schedule: {e}", kind.as_str()))?;
            let mut text = format!(
                "# Generated by `litekeeper systemd-units` from {source} ({} schedule {}).\n",
                kind.as_str(),
                comment(schedule.text())
            );
            if zone != &Zone::Utc {
                text.push_str(&format!(
                    "# Dated lines in UTC are the runs the daemon makes on DST changes and systemd \
                     would not; they reach {} years ahead: run `litekeeper systemd-units` again before then.\n",
                    DST_YEARS
                ));
            }
            text.push_str("[Timer]\nOnCalendar=\n");
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
                    "litekeeper-{}@{instance}.timer.d/schedule.conf",
                    kind.as_str(),
                )),
                text,
            });
        }
    }
    Ok(out)
}

/// The `paths.conf` (and, when pings or an S3 remote need it, `network.conf`) of every
/// service (see [`drop_ins`]); `source` names the configuration file in their comments.
fn service_drop_ins(config: &Config, source: &str) -> Result<Vec<UnitFile>, String> {
    let mut out = Vec::new();
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
    // Off-site copies to an S3 remote need the network too; systemd credentials are loaded.
    let used: Vec<&crate::config::Remote> = config
        .remotes
        .iter()
        .filter(|r| {
            config
                .databases
                .iter()
                .map(|db| db.as_ref())
                .chain(config.fleets.iter().map(|f| f.template.as_ref()))
                .any(|db| {
                    db.backup
                        .as_ref()
                        .is_some_and(|b| b.remotes.contains(&r.name))
                })
        })
        .map(|r| r.as_ref())
        .collect();
    let remote_network = used
        .iter()
        .any(|r| matches!(r.target, crate::config::Target::S3 { .. }));
    let mut text = format!(
        "# Generated by `litekeeper systemd-units` from {source}: the paths jobs write to.\n[Service]\n"
    );
    for r in &used {
        if let crate::config::Credentials::Systemd(name) = &r.credentials {
            // Read from /etc/credstore/NAME (or /run/credstore): `credentials = "NAME"`.
            text.push_str(&format!("LoadCredential={name}\n"));
        }
    }
    out.extend(identity_credentials(config));
    let mut paths = writable_paths(config);
    for r in &used {
        if let crate::config::Target::Dir { dir } = &r.target {
            paths
                .entry(dir.clone())
                .or_insert_with(|| format!("remote {:?}: url", r.name));
        }
    }
    for (p, key) in paths {
        text.push_str(&format!(
            "ReadWritePaths={}\n",
            path_list_item(&key, "-", &p)?
        ));
    }
    for unit in SERVICE_DROP_IN_DIRS {
        out.push(UnitFile {
            path: PathBuf::from(unit).join("paths.conf"),
            text: text.clone(),
        });
        if pings || remote_network {
            out.push(UnitFile {
                path: PathBuf::from(unit).join("network.conf"),
                text: "# Generated by `litekeeper systemd-units`: health pings (`ping =`) and \
                       off-site copies (`[[remote]]`) need the network the shipped units deny.\n\
                       [Service]\nPrivateNetwork=no\nIPAddressDeny=\n\
                       RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n"
                    .into(),
            });
        }
    }
    Ok(out)
}

/// Drills of remote copies decrypt with `identity = "credential:NAME"`: loaded for the units
/// that run drills (the daemon's and the drill timer's), and only those.
fn identity_credentials(config: &Config) -> Vec<UnitFile> {
    let names: std::collections::BTreeSet<&str> = config
        .databases
        .iter()
        .map(|db| db.as_ref())
        .chain(config.fleets.iter().map(|f| f.template.as_ref()))
        .filter_map(|db| match db.drill.as_ref()?.identity.as_ref()? {
            crate::config::Identity::Credential(name) => Some(name.as_str()),
            crate::config::Identity::File(_) => None,
        })
        .collect();
    if names.is_empty() {
        return Vec::new();
    }
    let mut text = "# Generated by `litekeeper systemd-units`: the age identity drills of remote \
                    copies decrypt with (drill.identity = \"credential:NAME\").\n[Service]\n"
        .to_string();
    for name in names {
        text.push_str(&format!("LoadCredential={name}\n"));
    }
    ["litekeeper.service.d", "litekeeper-drill@.service.d"]
        .iter()
        .map(|unit| UnitFile {
            path: PathBuf::from(unit).join("identity.conf"),
            text: text.clone(),
        })
        .collect()
}

/// Directories the jobs write to, each with the configuration key it comes from: each
/// database's directory (WAL, -shm, VACUUM, restore), attached databases' directories, backup
/// directories, files-rule directories, state, locks, the metrics file's directory.
pub fn writable_paths(config: &Config) -> BTreeMap<PathBuf, String> {
    let mut set = BTreeMap::new();
    let mut add = |p: PathBuf, key: String| {
        set.entry(p).or_insert(key);
    };
    add(config.daemon.state_dir.clone(), "daemon.state_dir".into());
    add(config.daemon.lock_dir.clone(), "daemon.lock_dir".into());
    if let Some(dir) = config.daemon.metrics_file.as_ref().and_then(|f| f.parent()) {
        add(dir.to_path_buf(), "daemon.metrics_file".into());
    }
    // Fleet members come and go: their stanza's fixed directories cover every member.
    for db in config.databases.iter().filter(|d| d.fleet.is_none()) {
        for (p, key) in db_paths(db) {
            add(p, format!("database {:?}: {key}", db.name));
        }
    }
    for f in &config.fleets {
        for (p, key) in fleet_paths(f) {
            add(p, format!("database {:?}: {key}", f.handle));
        }
    }
    set
}

/// A fleet's writable directories, from its stanza as written: each path up to its first
/// `{name}`/`{stem}` or wildcard (`/srv/app/tenants/*.db` → `/srv/app/tenants`,
/// `/var/backups/tenants/{name}` → `/var/backups/tenants`).
fn fleet_paths(f: &crate::config::Fleet) -> Vec<(PathBuf, String)> {
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
    let mut add = |p: Option<PathBuf>, key: String| v.extend(p.map(|p| (p, key)));
    add(fixed_dir(&raw.path, true), "path".into());
    for (alias, a) in &raw.attach {
        add(fixed_dir(a, true), format!("attach.{alias}"));
    }
    match raw.backup.as_ref().and_then(|b| b.dir.as_deref()) {
        Some(dir) => add(fixed_dir(dir, false), "backup.dir".into()),
        // The default backup directory: {state_dir}/backups/{name}.
        None if raw.backup.is_some() => add(
            f.template
                .backup
                .as_ref()
                .and_then(|b| b.dir.parent().map(|p| p.to_path_buf())),
            "backup.dir".into(),
        ),
        None => {}
    }
    if let Some(p) = &raw.prune {
        for files in &p.files {
            add(fixed_dir(&files.dir, false), "prune.files.dir".into());
        }
    }
    if let Some(t) = raw.vacuum.as_ref().and_then(|v| v.temp_dir.as_deref()) {
        add(fixed_dir(t, false), "vacuum.temp_dir".into());
    }
    if let Some(d) = &f.template.drill {
        add(Some(d.scratch_dir.clone()), "drill.scratch_dir".into());
    }
    // A pattern that is variable from its first component on (`/*/app.db`) opens nothing:
    // never the whole file system.
    v.into_iter()
        .filter(|(p, _)| p.is_absolute() && p.parent().is_some())
        .collect()
}

fn db_paths(db: &Database) -> Vec<(PathBuf, String)> {
    let mut v = Vec::new();
    let parent = |p: &std::path::Path| p.parent().map(|d| d.to_path_buf());
    v.extend(parent(&db.path).map(|p| (p, "path".to_string())));
    for a in &db.attach {
        v.extend(parent(&a.path).map(|p| (p, format!("attach.{}", a.alias))));
    }
    if let Some(b) = &db.backup {
        v.push((b.dir.clone(), "backup.dir".into()));
    }
    if let Some(p) = &db.prune {
        v.extend(
            p.files
                .iter()
                .map(|f| (f.dir.clone(), "prune.files.dir".into())),
        );
    }
    if let Some(vac) = &db.vacuum {
        v.extend(vac.temp_dir.clone().map(|p| (p, "vacuum.temp_dir".into())));
    }
    if let Some(d) = &db.drill {
        v.push((d.scratch_dir.clone(), "drill.scratch_dir".into()));
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
