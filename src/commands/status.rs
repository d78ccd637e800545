//! `litekeeper status [--json]`: last and next run of every configured job, read from the
//! state DB, so it works with or without the daemon. The JSON shape is a documented contract
//! (README.md, "status --json").

use std::path::Path;

use chrono::Utc;
use serde::Serialize;

use crate::cli::StatusArgs;
use crate::exit::{ExitCode, Failure, OrExit};
use crate::jobs::JobKind;
use crate::state::{RunRecord, State};

#[derive(Serialize)]
struct StatusJson {
    generated_at: chrono::DateTime<Utc>,
    timezone: String,
    state_db: String,
    jobs: Vec<JobStatus>,
}

#[derive(Serialize)]
struct JobStatus {
    database: String,
    job: JobKind,
    schedule: Option<String>,
    next_run: Option<chrono::DateTime<Utc>>,
    last: Option<RunRecord>,
}

pub fn run(path: &Path, args: StatusArgs) -> Result<ExitCode, Failure> {
    let config = super::load_config(path)?;
    let now = Utc::now();
    let zone = &config.daemon.timezone;
    let state = State::open_existing(&config.daemon.state_dir, config.daemon.keep_history);
    let mut jobs = Vec::new();
    for db in &config.databases {
        for kind in JobKind::ALL {
            let Some(timing) = db.timing(kind) else {
                continue;
            };
            let last = match &state {
                Some(s) => s.last_run(&db.name, kind).or_exit(ExitCode::IoErr)?,
                None => None,
            };
            jobs.push(JobStatus {
                database: db.name.clone(),
                job: kind,
                schedule: timing.schedule.as_ref().map(|s| s.text().to_string()),
                next_run: timing
                    .schedule
                    .as_ref()
                    .and_then(|s| s.next_after(now, zone)),
                last,
            });
        }
    }
    if args.json {
        let out = StatusJson {
            generated_at: now,
            timezone: zone.to_string(),
            state_db: config
                .daemon
                .state_dir
                .join("state.db")
                .display()
                .to_string(),
            jobs,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&out).or_exit(ExitCode::Failed)?
        );
        return Ok(ExitCode::Ok);
    }
    if jobs.is_empty() {
        println!("no jobs configured in {}", config.file.display());
    }
    println!(
        "{:<16} {:<7} {:<12} {:<26} {:>9}  {:<26}  summary",
        "database", "job", "last", "at", "took", "next"
    );
    for j in &jobs {
        let (outcome, at, took, summary) = match &j.last {
            Some(r) => (
                r.outcome.clone(),
                zone.format(r.started),
                r.duration_ms
                    .map(|d| format!("{d} ms"))
                    .unwrap_or_else(|| "-".into()),
                r.summary.clone(),
            ),
            None => ("never".into(), "-".into(), "-".into(), String::new()),
        };
        let next = match (&j.next_run, &j.schedule) {
            (Some(t), _) => zone.format(*t),
            (None, None) => "on demand".into(),
            (None, Some(_)) => "-".into(),
        };
        println!(
            "{:<16} {:<7} {:<12} {:<26} {:>9}  {:<26}  {summary}",
            j.database,
            j.job.as_str(),
            outcome,
            at,
            took,
            next
        );
    }
    Ok(ExitCode::Ok)
}
