//! `litekeeper run DB JOB`: one job now, through the same `jobs::execute` as the daemon.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cli::{JobArg, RunArgs};
use crate::config::{validate::parse_duration, OnBusy};
use crate::exit::{ExitCode, Failure, OrExit};
use crate::jobs::{self, Env, JobKind, Outcome, Request, Trigger};
use crate::sqlite::Pools;
use crate::state::State;

pub fn job_kind(arg: JobArg) -> JobKind {
    match arg {
        JobArg::Prune => JobKind::Prune,
        JobArg::Vacuum => JobKind::Vacuum,
        JobArg::Backup => JobKind::Backup,
    }
}

pub fn run(path: &Path, args: RunArgs) -> Result<ExitCode, Failure> {
    let config = Arc::new(super::load_config(path)?);
    let kind = job_kind(args.job);
    let db = config.database(&args.database).cloned().ok_or_else(|| {
        let names: Vec<&str> = config.databases.iter().map(|d| d.name.as_str()).collect();
        Failure::new(
            ExitCode::Usage,
            anyhow::anyhow!(
                "no database named {:?} in {} (configured: {})",
                args.database,
                config.file.display(),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ),
        )
    })?;
    if db.timing(kind).is_none() {
        return Err(Failure::new(
            ExitCode::Config,
            anyhow::anyhow!(
                "{}: database {:?} has no [database.{}] section; add one to enable this job",
                config.file.display(),
                db.name,
                kind.as_str()
            ),
        ));
    }
    let on_busy = match args.wait.as_deref() {
        None => None,
        Some("forever") => Some(OnBusy::Wait(None)),
        Some(text) => Some(OnBusy::Wait(Some(parse_duration(text).map_err(
            |reason| {
                Failure::new(
                    ExitCode::Usage,
                    anyhow::anyhow!("--wait {text:?}: {reason}"),
                )
            },
        )?))),
    };
    run_as_state_owner(&config.daemon.state_dir)?;
    let state = State::open(&config.daemon.state_dir, config.longest_keep_history())
        .or_exit(ExitCode::CantCreate)?;
    let rt = super::runtime()?;
    let report = rt.block_on(async {
        let cancel = CancellationToken::new();
        spawn_signal_cancel(cancel.clone());
        let env = Env {
            pools: Pools::new(&config),
            config: config.clone(),
            state,
            cancel,
        };
        let req = Request {
            db,
            kind,
            trigger: if std::env::var("LITEKEEPER_TRIGGER").as_deref() == Ok("timer") {
                Trigger::Timer
            } else {
                Trigger::Cli
            },
            dry_run: args.dry_run,
            on_busy,
        };
        jobs::execute(&env, req).await
    });
    // Under systemd the journal already has the finish event with every field.
    if !crate::logging::to_journal() {
        print_report(&report);
    }
    // The job is done and recorded; its last health ping gets at most its ping_timeout.
    crate::pings::wait_for_pending();
    Ok(report.exit)
}

/// The run's one line (stdout when it did its work, stderr when it did not), plus the prune
/// rules table.
fn print_report(report: &jobs::Report) {
    let line = format!(
        "{} {}: {}",
        report.job.as_str(),
        report.database,
        report.summary
    );
    match report.outcome {
        Outcome::Ok | Outcome::DryRun => {
            println!("{line} ({} ms)", report.duration_ms);
            if report.job == JobKind::Prune {
                for l in jobs::prune::rules_table(&report.figures) {
                    println!("{l}");
                }
            }
        }
        Outcome::Skipped if report.exit == ExitCode::Ok => println!("{line}"),
        Outcome::Skipped | Outcome::Failed => eprintln!("litekeeper: {line}"),
    }
}

/// As root, run as the user who owns `state_dir` (the service's user: `litekeeper`, or the
/// app's user with a `User=` drop-in), as `sudo -u` would: a root-owned state.db, lock or
/// backup would lock the service out of its own files afterwards.
fn run_as_state_owner(state_dir: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::MetadataExt;
    if !crate::paths::is_root() {
        return Ok(());
    }
    let Ok(meta) = std::fs::metadata(state_dir) else {
        return Ok(());
    };
    let (uid, gid) = (meta.uid(), meta.gid());
    if uid == 0 {
        return Ok(());
    }
    // SAFETY: plain libc calls with valid arguments; getpwuid's result is only read here.
    let ok = unsafe {
        let pw = libc::getpwuid(uid);
        let groups_ok = if pw.is_null() {
            libc::setgroups(0, std::ptr::null()) == 0
        } else {
            libc::initgroups((*pw).pw_name, gid) == 0
        };
        groups_ok && libc::setgid(gid) == 0 && libc::setuid(uid) == 0
    };
    if !ok {
        return Err(Failure::new(
            ExitCode::CantCreate,
            anyhow::anyhow!(
                "{}: owned by uid {uid}; cannot switch to that user ({}); run the job through its unit (systemctl start litekeeper-JOB@DB.service)",
                state_dir.display(),
                std::io::Error::last_os_error()
            ),
        ));
    }
    tracing::info!(
        "running as uid {uid} gid {gid}, the owner of {} (as the service does)",
        state_dir.display()
    );
    Ok(())
}

/// SIGINT/SIGTERM fire the cancel token: the job stops at its next safe point.
pub fn spawn_signal_cancel(cancel: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        eprintln!("litekeeper: stopping at the next safe point (signal received)");
        cancel.cancel();
    });
}
