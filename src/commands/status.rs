//! `litekeeper status [--json]`: last and next run of every configured job, read from the
//! state DB, so it works with or without the daemon. The JSON shape is a documented contract
//! (README.md, "status --json").
//!
//! `litekeeper status --check [--max-age JOB=DURATION,…]` is a monitoring check in the
//! Nagios/Icinga plugin style: one line per problem (worst first) or one OK line, and exit
//! 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (README.md, "status --check").

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::cli::StatusArgs;
use crate::config::validate::parse_duration;
use crate::domain::{JobKind, Outcome, RunState};
use crate::exit::{ExitCode, Failure, OrExit};
use crate::schedule::{Schedule, Zone};
use crate::state::{History, HistoryReader, RunRecord, State};

use super::stream_json::{self, PrettyObject, Stop};

/// The `--json` document. It is streamed ([`write_json`]), never built whole; this is its
/// shape, which the streaming test checks byte for byte.
#[cfg(test)]
#[derive(Serialize)]
struct StatusJson {
    generated_at: chrono::DateTime<Utc>,
    timezone: String,
    state_db: String,
    jobs: Vec<JobStatus>,
    offsite: Vec<super::offsite_health::OffsiteStatus>,
}

#[derive(Serialize)]
struct JobStatus {
    database: String,
    job: JobKind,
    schedule: Option<String>,
    next_run: Option<chrono::DateTime<Utc>>,
    /// The daemon has this run queued (waiting for a free slot under `max_concurrent_jobs`, or
    /// for its database's previous job) since then; null when it is not waiting.
    queued_since: Option<chrono::DateTime<Utc>>,
    last: Option<RunRecord>,
}

/// Jobs asked of the state DB per query batch, and printed together: a fleet of thousands
/// of databases shows its first rows at once instead of after the last query.
const BATCH: usize = 256;

pub fn run(path: &Path, args: StatusArgs) -> Result<ExitCode, Failure> {
    if args.check {
        let (code, lines) = check(path, &args.max_age, &args.databases, Utc::now());
        let mut out = std::io::stdout().lock();
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
        let _ = out.flush();
        // Monitoring exit codes (2 CRITICAL, 3 UNKNOWN) are not sysexits codes, so they are
        // not `ExitCode`s: exit here.
        std::process::exit(code.code());
    }
    let config = super::load_config(path)?;
    let now = Utc::now();
    let zone = &config.daemon.timezone;
    let state = State::open_existing(&config.daemon.state_dir, config.longest_keep_history());
    let selected = super::selected(&config, &args.databases)?;
    let wanted: Vec<(&std::sync::Arc<crate::config::Database>, JobKind)> = config
        .databases
        .iter()
        .filter(|db| selected.as_ref().is_none_or(|s| s.contains(&db.name)))
        .flat_map(|db| {
            JobKind::ALL
                .into_iter()
                .filter(|k| db.timing(*k).is_some())
                .map(move |k| (db, k))
        })
        .collect();
    // One query per job on one connection per batch (a fleet has thousands of databases).
    let mut batches = wanted.chunks(BATCH).map(|batch| {
        let keys: Vec<(String, JobKind)> =
            batch.iter().map(|(d, k)| (d.name.clone(), *k)).collect();
        let (lasts, queued) = match &state {
            Some(s) => (
                s.last_runs(&keys).or_exit(ExitCode::IoErr)?,
                s.queued_since(&keys).or_exit(ExitCode::IoErr)?,
            ),
            None => (vec![None; keys.len()], vec![None; keys.len()]),
        };
        let mut jobs = Vec::with_capacity(batch.len());
        for (((db, kind), last), queued_since) in batch.iter().zip(lasts).zip(queued) {
            let Some(timing) = db.timing(*kind) else {
                continue;
            };
            jobs.push(JobStatus {
                database: db.name.clone(),
                job: *kind,
                schedule: timing.schedule.as_ref().map(|s| s.text().to_string()),
                next_run: timing
                    .schedule
                    .as_ref()
                    .and_then(|s| s.next_after(now, zone)),
                queued_since,
                last,
            });
        }
        Ok(jobs)
    });
    // The first batch before any output: an unreadable state DB prints nothing but the error.
    let first = batches.next().transpose()?;
    let batches = first.into_iter().map(Ok).chain(batches);
    // Off-site copies, per database and remote: a handful of rows, read before any output.
    let offsite = if args.json {
        let reader = state
            .as_ref()
            .map(|s| HistoryReader::open(s.path(), true))
            .transpose()
            .or_exit(ExitCode::IoErr)?;
        super::offsite_health::json(
            &config,
            reader.as_ref(),
            selected.as_ref(),
            |db| backup_max_age(db, &BTreeMap::new(), now, zone),
            now,
        )
        .or_exit(ExitCode::IoErr)?
    } else {
        Vec::new()
    };
    let mut out = stream_json::stdout();
    stream_json::finish(if args.json {
        let state_db = crate::state::db_path(&config.daemon.state_dir);
        write_json(
            &mut out,
            now,
            &zone.to_string(),
            &state_db.display().to_string(),
            batches,
            &offsite,
        )
    } else {
        if wanted.is_empty() {
            writeln!(out, "no jobs configured in {}", config.file.display()).map_err(Stop::from)
        } else {
            Ok(())
        }
        .and_then(|()| write_table(&mut out, zone, batches))
        .and_then(|()| {
            let lines = super::offsite_health::status_lines(
                &config,
                state.as_ref(),
                selected.as_ref(),
                now,
            );
            for l in lines {
                writeln!(out, "{l}")?;
            }
            Ok(())
        })
    })
}

/// `status --json`, batch by batch, byte-identical to `to_string_pretty` of [`StatusJson`].
fn write_json(
    out: &mut impl Write,
    now: DateTime<Utc>,
    timezone: &str,
    state_db: &str,
    batches: impl Iterator<Item = Result<Vec<JobStatus>, Failure>>,
    offsite: &[super::offsite_health::OffsiteStatus],
) -> Result<(), Stop> {
    let mut doc = PrettyObject::new(&mut *out);
    doc.field("generated_at", &now)?;
    doc.field("timezone", timezone)?;
    doc.field("state_db", state_db)?;
    let mut jobs = doc.array("jobs")?;
    for batch in batches {
        for j in &batch? {
            jobs.item(j)?;
        }
        jobs.flush()?;
    }
    let mut doc = jobs.end()?;
    doc.field("offsite", offsite)?;
    doc.end()?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// `status`: the table, batch by batch. The columns have fixed widths, so no row waits for
/// the others.
fn write_table(
    out: &mut impl Write,
    zone: &Zone,
    batches: impl Iterator<Item = Result<Vec<JobStatus>, Failure>>,
) -> Result<(), Stop> {
    writeln!(
        out,
        "{:<16} {:<7} {:<12} {:<26} {:>9}  {:<26}  summary",
        "database", "job", "last", "at", "took", "next"
    )?;
    out.flush()?;
    for batch in batches {
        for j in &batch? {
            let (outcome, at, took, summary) = match &j.last {
                Some(r) => (
                    r.outcome.as_str().to_string(),
                    zone.format(r.started),
                    r.duration_ms
                        .map(|d| format!("{d} ms"))
                        .unwrap_or_else(|| "-".into()),
                    r.summary.clone(),
                ),
                None => ("never".into(), "-".into(), "-".into(), String::new()),
            };
            let summary = match j.queued_since {
                Some(t) => format!(
                    "queued since {} (waiting for a free slot); {summary}",
                    zone.format(t)
                ),
                None => summary,
            };
            let next = match (&j.next_run, &j.schedule) {
                (Some(t), _) => zone.format(*t),
                (None, None) => "on demand".into(),
                (None, Some(_)) => "-".into(),
            };
            writeln!(
                out,
                "{:<16} {:<7} {:<12} {:<26} {:>9}  {:<26}  {summary}",
                j.database,
                j.job.as_str(),
                outcome,
                at,
                took,
                next
            )?;
        }
        out.flush()?;
    }
    Ok(())
}

/// Severity of a `status --check` result, ordered; the exit code is the worst one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckCode {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl CheckCode {
    pub fn code(self) -> i32 {
        self as i32
    }

    pub(super) fn word(self) -> &'static str {
        match self {
            CheckCode::Ok => "OK",
            CheckCode::Warning => "WARNING",
            CheckCode::Critical => "CRITICAL",
            CheckCode::Unknown => "UNKNOWN",
        }
    }
}

/// The check: its exit code and the lines to print (worst problem first, or one OK line).
pub fn check(
    path: &Path,
    max_age: &[String],
    only: &[String],
    now: DateTime<Utc>,
) -> (CheckCode, Vec<String>) {
    let (code, lines) = match check_jobs(path, max_age, only, now) {
        Ok(r) => r,
        Err(msg) => (CheckCode::Unknown, vec![format!("UNKNOWN: {msg}")]),
    };
    (code, lines.iter().map(|l| plugin_safe(l)).collect())
}

/// One line of plugin output that means what it says: Nagios takes the text after a `|` as
/// performance data and a line break as the end of the status line, and a terminal obeys
/// escape sequences, so a path, an error or a file name may hold none of them. `|` becomes
/// `¦` (U+00A6), control characters are escaped as Rust writes them (`\n`, `\u{1b}`).
fn plugin_safe(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for c in line.chars() {
        match c {
            '|' => out.push('¦'),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

fn check_jobs(
    path: &Path,
    max_age: &[String],
    only: &[String],
    now: DateTime<Utc>,
) -> Result<(CheckCode, Vec<String>), String> {
    let overrides = parse_max_ages(max_age)?;
    let config = super::load_config(path).map_err(|e| e.to_string())?;
    // One service per database (or fleet) in the monitoring system: `status --check chat`.
    let selected = super::selected(&config, only).map_err(|f| f.to_string())?;
    let zone = &config.daemon.timezone;
    let state_path = crate::state::db_path(&config.daemon.state_dir);
    let unreadable = |e: &dyn std::fmt::Display, hint: &str| {
        format!(
            "{}: cannot read the state database: {e} ({hint})",
            state_path.display()
        )
    };
    // Root is never told to become root: a file root cannot read is damaged or elsewhere.
    let denied_hint = if crate::paths::is_root() {
        "check the file and its directory"
    } else {
        "run the check as root or as the user litekeeper runs as"
    };
    let sqlite_unreadable = |e: &rusqlite::Error| {
        let hint = if crate::state::is_damaged(e) {
            "it is damaged or not a state database: the next job, or the daemon, moves it aside \
             as state.db.corrupt-<time> and starts a new one"
        } else {
            denied_hint
        };
        unreadable(e, hint)
    };
    // No state DB yet: nothing ever ran. Anything else that stops us reading it is UNKNOWN.
    let conn = match std::fs::metadata(&state_path) {
        Ok(_) => Some(HistoryReader::open(&state_path, true).map_err(|e| sqlite_unreadable(&e))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(unreadable(&e, denied_hint)),
    };
    let mut problems: Vec<(CheckCode, String)> = Vec::new();
    let (mut jobs, mut aged) = (0, 0);
    for db in &config.databases {
        if selected.as_ref().is_some_and(|s| !s.contains(&db.name)) {
            continue;
        }
        for kind in JobKind::ALL {
            let Some(timing) = db.timing(kind) else {
                continue;
            };
            jobs += 1;
            let own_max = match kind {
                JobKind::Drill => db.drill.as_ref().and_then(|d| d.max_age),
                _ => None,
            };
            let max = overrides.get(&kind).copied().or(own_max).or_else(|| {
                timing
                    .schedule
                    .as_ref()
                    .and_then(|s| default_max_age(s, timing.jitter, now, zone))
            });
            aged += usize::from(max.is_some());
            let history = match &conn {
                Some(c) => c
                    .history(&db.name, kind)
                    .map_err(|e| sqlite_unreadable(&e))?,
                None => History::default(),
            };
            // A failed drill is a backup that does not restore: CRITICAL, not a warning.
            let failed = if kind == JobKind::Drill {
                CheckCode::Critical
            } else {
                CheckCode::Warning
            };
            for (code, text) in judge(&history, max, now, failed) {
                problems.push((
                    code,
                    format!("{} {} {}: {text}", code.word(), kind.as_str(), db.name),
                ));
            }
        }
    }
    problems.extend(fleet_problems(&config, only));
    let backup_max = |db: &crate::config::Database| backup_max_age(db, &overrides, now, zone);
    problems.extend(
        super::offsite_health::problems(&config, conn.as_ref(), selected.as_ref(), backup_max, now)
            .map_err(|e| sqlite_unreadable(&e))?,
    );
    // Worst first (a monitoring system shows the first line as the status), config order within.
    problems.sort_by_key(|(code, _)| std::cmp::Reverse(*code));
    let code = problems.first().map_or(CheckCode::Ok, |(c, _)| *c);
    if problems.is_empty() {
        let dbs = selected
            .as_ref()
            .map_or(config.databases.len(), |s| s.len());
        let line = if jobs == 0 {
            format!("OK: no jobs configured in {}", config.file.display())
        } else {
            format!(
                "OK: {jobs} job{} on {dbs} database{}: no failures, every age-checked job ({aged}) succeeded within its max age",
                if jobs == 1 { "" } else { "s" },
                if dbs == 1 { "" } else { "s" },
            )
        };
        return Ok((CheckCode::Ok, vec![line]));
    }
    Ok((code, problems.into_iter().map(|(_, l)| l).collect()))
}

/// What `status --check` says of the fleets named (all when `only` is empty): a fleet with jobs
/// and no member, and the files a fleet refused for their names.
fn fleet_problems(config: &crate::config::Config, only: &[String]) -> Vec<(CheckCode, String)> {
    let mut problems = Vec::new();
    // A fleet with jobs but no database now (an empty or unmounted directory) is backed up by
    // nobody: not OK.
    for f in &config.fleets {
        let named = only.is_empty() || only.contains(&f.handle);
        let has_jobs = JobKind::ALL
            .into_iter()
            .any(|k| f.template.timing(k).is_some());
        if named && has_jobs && config.members(f).next().is_none() {
            problems.push((
                CheckCode::Warning,
                format!(
                    "WARNING fleet {}: no database matches {} now",
                    f.handle, f.raw.path
                ),
            ));
        }
    }
    // A file a fleet refused for its name is backed up by nobody: a collision (two tenants'
    // data, neither backed up) is CRITICAL, another bad name a WARNING.
    for f in &config.fleets {
        if !(only.is_empty() || only.contains(&f.handle)) {
            continue;
        }
        for r in f.rejected.iter().filter(|r| r.is_problem()) {
            let code = if r.kind == crate::config::fleet::RejectKind::Collision {
                CheckCode::Critical
            } else {
                CheckCode::Warning
            };
            problems.push((
                code,
                format!("{} fleet {}: {}", code.word(), f.handle, r.reason),
            ));
        }
    }
    problems
}

/// The rules (README.md, "status --check"): a failed or interrupted last run is a WARNING, and
/// so is a job with a max age that never ran; no success within the max age is CRITICAL. A
/// failed last run is judged `failed` (a drill's is CRITICAL).
fn judge(
    h: &History,
    max_age: Option<Duration>,
    now: DateTime<Utc>,
    failed: CheckCode,
) -> Vec<(CheckCode, String)> {
    let mut out = Vec::new();
    let ago = |t: DateTime<Utc>| fmt_age((now - t).to_std().unwrap_or_default());
    if let Some(latest) = h
        .latest
        .as_ref()
        .filter(|r| r.outcome == RunState::Interrupted)
    {
        out.push((
            CheckCode::Warning,
            format!(
                "last run was interrupted (its process died; started {} ago)",
                ago(latest.started)
            ),
        ));
    }
    if let Some(last) = h
        .last_finished
        .as_ref()
        .filter(|r| r.outcome == RunState::Finished(Outcome::Failed))
    {
        let why = last.error.as_deref().unwrap_or(&last.summary);
        let why = crate::domain::truncate(why.lines().next().unwrap_or(""), 200);
        let text = if h.failed_in_a_row > 1 {
            format!(
                "last {} runs failed, the latest {} ago: {why}",
                h.failed_in_a_row,
                ago(last.ended())
            )
        } else {
            format!("last run failed {} ago: {why}", ago(last.ended()))
        };
        out.push((failed, text));
    }
    if let Some(max) = max_age {
        let max_text = fmt_age(max);
        let too_old = |t: DateTime<Utc>| (now - t).to_std().unwrap_or_default() > max;
        match (&h.last_success, h.first_started) {
            (Some(s), _) if too_old(s.ended()) => out.push((
                CheckCode::Critical,
                format!("last success {} ago (max {max_text})", ago(s.ended())),
            )),
            (Some(_), _) => {}
            (None, None) => out.push((
                CheckCode::Warning,
                format!("never ran (max age {max_text})"),
            )),
            (None, Some(first)) if too_old(first) => out.push((
                CheckCode::Critical,
                format!(
                    "no successful run in the history, which starts {} ago (max {max_text})",
                    ago(first)
                ),
            )),
            (None, Some(_)) => {}
        }
    }
    out
}

/// `--max-age backup=26h,prune=8d` (clap splits at commas).
fn parse_max_ages(items: &[String]) -> Result<BTreeMap<JobKind, Duration>, String> {
    let mut out = BTreeMap::new();
    for item in items {
        let bad = |why: String| format!("--max-age {item:?}: {why}");
        let (job, age) = item
            .split_once('=')
            .ok_or_else(|| bad("expected JOB=DURATION, like backup=26h".into()))?;
        let job: JobKind = job.trim().parse().map_err(bad)?;
        out.insert(job, parse_duration(age).map_err(bad)?);
    }
    Ok(out)
}

/// Default max age of a scheduled job: twice the longest gap between consecutive scheduled
/// times around `now` (the two before it, the three after), plus the jitter. So a job whose last
/// or next-to-last scheduled run succeeded is never flagged, even on irregular schedules
/// (weekdays only, monthly).
pub fn default_max_age(
    schedule: &Schedule,
    jitter: Duration,
    now: DateTime<Utc>,
    zone: &Zone,
) -> Option<Duration> {
    let p1 = schedule.prev_before(now, zone);
    let p2 = p1.and_then(|p| schedule.prev_before(p, zone));
    let mut times: Vec<DateTime<Utc>> = [p2, p1].into_iter().flatten().collect();
    // From p1, not from now: a run due exactly at `now` is neither before nor after it.
    times.extend(schedule.upcoming(p1.unwrap_or(now), zone, 3));
    let gap = times.windows(2).map(|w| w[1] - w[0]).max()?;
    Some(gap.to_std().ok()? * 2 + jitter)
}

/// The backup job's max age of `db`: its `--max-age backup=…`, else from its schedule.
fn backup_max_age(
    db: &crate::config::Database,
    overrides: &BTreeMap<JobKind, Duration>,
    now: DateTime<Utc>,
    zone: &Zone,
) -> Option<Duration> {
    let timing = db.timing(JobKind::Backup)?;
    overrides.get(&JobKind::Backup).copied().or_else(|| {
        timing
            .schedule
            .as_ref()
            .and_then(|s| default_max_age(s, timing.jitter, now, zone))
    })
}

/// "45s", "20m", "30h", "30h5m", "8d", "2d4h", "2d30m": compact, to the minute, rounded down.
pub fn fmt_age(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        return format!("{s}s");
    }
    let m = s / 60;
    let (days, hours, mins) = if m < 48 * 60 {
        (0, m / 60, m % 60)
    } else {
        (m / 1440, m / 60 % 24, m % 60)
    };
    let mut out = String::new();
    for (n, unit) in [(days, "d"), (hours, "h"), (mins, "m")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn ages_read_compactly() {
        assert_eq!(fmt_age(Duration::from_secs(45)), "45s");
        assert_eq!(fmt_age(Duration::from_secs(20 * 60 + 59)), "20m");
        assert_eq!(fmt_age(Duration::from_secs(30 * 3600)), "30h");
        assert_eq!(fmt_age(Duration::from_secs(30 * 3600 + 300)), "30h5m");
        assert_eq!(fmt_age(Duration::from_secs(8 * 86400)), "8d");
        assert_eq!(fmt_age(Duration::from_secs(2 * 86400 + 4 * 3600)), "2d4h");
    }

    #[test]
    fn default_max_age_follows_the_schedule() {
        let age = |expr: &str, jitter: u64, now: &str| {
            let s = Schedule::parse(expr).unwrap();
            fmt_age(default_max_age(&s, Duration::from_secs(jitter), utc(now), &Zone::Utc).unwrap())
        };
        assert_eq!(age("0 2 * * *", 0, "2026-03-04T12:00:00Z"), "2d");
        assert_eq!(age("0 2 * * *", 1800, "2026-03-04T12:00:00Z"), "2d30m");
        assert_eq!(age("0 3 * * SUN", 0, "2026-03-04T12:00:00Z"), "14d");
        assert_eq!(age("*/15 * * * *", 0, "2026-03-04T12:00:00Z"), "30m");
        assert_eq!(age("*/15 * * * *", 0, "2026-03-04T12:07:00Z"), "30m");
        // Weekdays only: on a Monday the weekend gap (3 days) is in the window.
        assert_eq!(age("0 2 * * MON-FRI", 0, "2026-03-02T01:00:00Z"), "6d");
    }

    fn jobs(n: usize) -> Vec<JobStatus> {
        (0..n)
            .map(|i| JobStatus {
                database: format!("tenant-{i:05}"),
                job: JobKind::ALL[i % JobKind::ALL.len()],
                schedule: (i % 3 != 0).then(|| "0 2 * * *".to_string()),
                next_run: (i % 3 != 0).then(|| utc("2026-11-25T01:00:00.123456789Z")),
                queued_since: None,
                last: (i % 2 == 0).then(|| RunRecord {
                    id: format!("run-{i}"),
                    trigger: crate::domain::Trigger::Schedule,
                    started: utc("2026-11-24T01:00:00.5Z"),
                    finished: (i % 4 == 0).then(|| utc("2026-11-24T01:00:01Z")),
                    duration_ms: (i % 4 == 0).then_some(500),
                    outcome: RunState::Finished(Outcome::Ok),
                    summary: "wrote \"x\"\nand ü".into(),
                    error: None,
                    figures: Some(crate::domain::Figures::Prune(crate::domain::PruneFigures {
                        rules: vec![
                            crate::domain::RuleFigures {
                                rule: "rule[0]".into(),
                                deleted: 3,
                                ..Default::default()
                            },
                            Default::default(),
                        ],
                        bytes_freed: Some(21495808),
                        ..Default::default()
                    })),
                }),
            })
            .collect()
    }

    #[test]
    fn streamed_json_is_byte_identical_to_the_whole_document() {
        let now = utc("2026-11-25T00:10:00.987654321Z");
        for n in [0, 1, 2, BATCH, BATCH + 1, 3 * BATCH + 7] {
            let whole = serde_json::to_string_pretty(&StatusJson {
                generated_at: now,
                timezone: "Europe/Berlin".into(),
                state_db: "/var/lib/litekeeper/state.db".into(),
                jobs: jobs(n),
                offsite: Vec::new(),
            })
            .unwrap()
                + "\n";
            let mut all = jobs(n).into_iter();
            let batches = std::iter::from_fn(|| {
                let b: Vec<JobStatus> = all.by_ref().take(BATCH).collect();
                (!b.is_empty()).then_some(Ok(b))
            });
            let mut out = Vec::new();
            write_json(
                &mut out,
                now,
                "Europe/Berlin",
                "/var/lib/litekeeper/state.db",
                batches,
                &[],
            )
            .unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), whole, "{n} jobs");
        }
    }

    #[test]
    fn max_age_flag_parses_and_names_the_bad_part() {
        let m = parse_max_ages(&["backup=26h".into(), "prune=8d".into()]).unwrap();
        assert_eq!(m[&JobKind::Backup], Duration::from_secs(26 * 3600));
        assert_eq!(m[&JobKind::Prune], Duration::from_secs(8 * 86400));
        let e = parse_max_ages(&["backups=26h".into()]).unwrap_err();
        assert!(e.contains("unknown job"), "{e}");
        let e = parse_max_ages(&["backup".into()]).unwrap_err();
        assert!(e.contains("JOB=DURATION"), "{e}");
        let e = parse_max_ages(&["backup=soon".into()]).unwrap_err();
        assert!(e.contains("duration"), "{e}");
    }
}
