//! `litekeeper schedule [--count N]`: the next runs of every scheduled job, in the configured
//! zone and in UTC, computed by the same code the daemon uses.

use std::path::Path;

use chrono::Utc;

use crate::cli::ScheduleArgs;
use crate::exit::{ExitCode, Failure};

pub fn run(path: &Path, args: ScheduleArgs) -> Result<ExitCode, Failure> {
    let config = super::load_config(path)?;
    let zone = &config.daemon.timezone;
    let now = Utc::now();
    let mut any = false;
    for (db, kind, timing) in config.scheduled_jobs() {
        let Some(schedule) = &timing.schedule else {
            continue;
        };
        any = true;
        let jitter = if timing.jitter.is_zero() {
            String::new()
        } else {
            format!(
                ", then up to {} random delay",
                humantime::format_duration(timing.jitter)
            )
        };
        println!(
            "{} {}: \"{}\" in {zone}{jitter}",
            kind.as_str(),
            db.name,
            schedule.text()
        );
        for t in schedule.upcoming(now, zone, args.count) {
            println!(
                "  {}   {}",
                zone.format(t),
                t.format("%Y-%m-%d %H:%M:%S UTC")
            );
        }
    }
    if !any {
        println!(
            "no scheduled jobs in {} (jobs without `schedule` run only on demand)",
            config.file.display()
        );
    }
    Ok(ExitCode::Ok)
}
