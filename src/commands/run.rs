//! `litekeeper run DB JOB`: one job now, through the same `jobs::execute` as the daemon.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cli::{JobArg, RunArgs};
use crate::config::{validate::parse_duration, OnBusy};
use crate::exit::{ExitCode, Failure, OrExit};
use crate::jobs::{self, Env, JobKind, Outcome, Request, Trigger};
use crate::metrics::MetricsWriter;
use crate::pings::Pings;
use crate::sqlite::Pools;
use crate::state::State;

pub fn job_kind(arg: JobArg) -> JobKind {
    match arg {
        JobArg::Prune => JobKind::Prune,
        JobArg::Vacuum => JobKind::Vacuum,
        JobArg::Backup => JobKind::Backup,
        JobArg::Incremental => JobKind::Incremental,
        JobArg::Drill => JobKind::Drill,
    }
}

pub fn run(path: &Path, args: RunArgs) -> Result<ExitCode, Failure> {
    run_with(path, args, jobs::drill::Ask::default())
}

/// `run`, with a drill's choices (`litekeeper drill`).
pub fn run_with(path: &Path, args: RunArgs, ask: jobs::drill::Ask) -> Result<ExitCode, Failure> {
    let config = Arc::new(super::load_config(path)?);
    let kind = job_kind(args.job);
    let (targets, fleet) = targets(&config, &args.database, kind)?;
    let Some(db) = targets.first().cloned() else {
        // A fleet whose directory has no member right now: nothing to do.
        println!(
            "{} {}: the fleet has no databases now; nothing to do",
            kind.as_str(),
            args.database
        );
        return Ok(ExitCode::Ok);
    };
    if db.timing(kind).is_none() {
        return Err(no_section(&config, &db.name, kind));
    }
    if let (Some(from), Some(cfg)) = (&ask.from, &db.drill) {
        jobs::drill::source_named(&db, cfg, from).map_err(|why| {
            Failure::new(ExitCode::Usage, anyhow::anyhow!("--from {from:?}: {why}"))
        })?;
    }
    let on_busy = on_busy(args.wait.as_deref())?;
    run_as_state_owner(&config.daemon.state_dir)?;
    let state = State::open(&config.daemon.state_dir, config.longest_keep_history())
        .or_exit(ExitCode::CantCreate)?;
    let rt = super::runtime()?;
    let trigger = if std::env::var("LITEKEEPER_TRIGGER").as_deref() == Ok("timer") {
        Trigger::Timer
    } else {
        Trigger::Cli
    };
    let members = targets.len();
    // A fleet: every member's run rewrites the metrics from the whole history, so once a
    // second is plenty (the last write happens before exit).
    let metrics = MetricsWriter::new(fleet);
    let pings = Pings::default();
    let exits = rt.block_on(async {
        let cancel = CancellationToken::new();
        spawn_signal_cancel(cancel.clone());
        let env = Env {
            pools: Pools::new(&config),
            config: config.clone(),
            state,
            cancel,
            metrics: metrics.clone(),
            pings: pings.clone(),
        };
        // A fleet's members run `max_concurrent_jobs` at a time, through the daemon's feeder
        // (without jitter: in order).
        let mut runs = RunFeed {
            permits: Arc::new(tokio::sync::Semaphore::new(
                config.daemon.max_concurrent_jobs,
            )),
            env: env.clone(),
            kind,
            trigger,
            dry_run: args.dry_run,
            on_busy,
            ask,
            set: tokio::task::JoinSet::new(),
            names: std::collections::HashMap::new(),
        };
        let plan = crate::scheduler::plan(targets, std::time::Duration::ZERO);
        let never_started = crate::scheduler::feed(&mut runs, plan, &env.cancel).await;
        let RunFeed { mut set, names, .. } = runs;
        let mut ends: Vec<(String, Ended)> = never_started
            .into_iter()
            .map(|db| (db.name.clone(), Ended::NotStarted))
            .collect();
        while let Some(done) = set.join_next_with_id().await {
            match done {
                Ok((_, end)) => ends.push(end),
                // A member's task panicked: a failure of that member.
                Err(e) => ends.push((
                    names.get(&e.id()).cloned().unwrap_or_default(),
                    Ended::Ran(ExitCode::Failed),
                )),
            }
        }
        metrics.flush().await;
        ends
    });
    // The jobs are done and recorded; their last health pings get at most their ping_timeout.
    pings.wait_for_pending();
    if !fleet {
        return Ok(match exits.first() {
            Some((_, Ended::Ran(code))) => *code,
            Some(_) => ExitCode::TempFail,
            None => ExitCode::Failed,
        });
    }
    Ok(fleet_summary(&args.database, kind, exits, members))
}

/// `run`'s side of the feeder: a member whose turn comes runs as a task of `set`.
struct RunFeed {
    permits: Arc<tokio::sync::Semaphore>,
    env: Env,
    kind: JobKind,
    trigger: Trigger,
    dry_run: bool,
    on_busy: Option<OnBusy>,
    ask: jobs::drill::Ask,
    set: tokio::task::JoinSet<(String, Ended)>,
    /// Each task's member, for a task that panics.
    names: std::collections::HashMap<tokio::task::Id, String>,
}

impl crate::scheduler::Feed for RunFeed {
    type Item = Arc<crate::config::Database>;

    fn permits(&self) -> Arc<tokio::sync::Semaphore> {
        self.permits.clone()
    }

    /// A member waiting for its turn is not recorded: `run` shows its progress as it goes.
    async fn waiting(&mut self, _due: &[(std::time::Duration, Self::Item)]) {}

    fn start(&mut self, db: Self::Item, permit: tokio::sync::OwnedSemaphorePermit) {
        let name = db.name.clone();
        let env = self.env.clone();
        let req = Request {
            db,
            kind: self.kind,
            trigger: self.trigger,
            dry_run: self.dry_run,
            on_busy: self.on_busy,
            drill: self.ask.clone(),
        };
        let task = self.set.spawn(async move {
            let _permit = permit;
            if env.cancel.is_cancelled() {
                return (req.db.name.clone(), Ended::NotStarted);
            }
            let report = jobs::execute(&env, req).await;
            // Under systemd the journal already has the finish event with every field.
            if !crate::logging::to_journal() {
                print_report(&report);
            }
            let stopped = env.cancel.is_cancelled()
                && report.outcome == Outcome::Failed
                && report.exit == ExitCode::TempFail;
            let ended = if stopped {
                Ended::Stopped
            } else {
                Ended::Ran(report.exit)
            };
            (report.database, ended)
        });
        self.names.insert(task.id(), name);
    }
}

/// How one member of a fleet run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Ran(ExitCode),
    /// A signal stopped it at a safe point.
    Stopped,
    /// A signal came before its turn.
    NotStarted,
}

/// The last line of a fleet's run, and its exit code: the failure of the first member (by
/// name) that failed, else 75 if members were busy or a signal stopped the run before every
/// member finished (a `systemctl stop` is no failure), else 0.
/// What `run NAME` runs: the database NAME, or every current member of the fleet whose
/// handle is NAME (`tenant` for `tenant-{stem}`); and whether it is a fleet.
fn targets(
    config: &crate::config::Config,
    name: &str,
    kind: JobKind,
) -> Result<(Vec<Arc<crate::config::Database>>, bool), Failure> {
    if let Some(db) = config.database(name) {
        return Ok((vec![db.clone()], false));
    }
    let Some(fleet) = config.fleet_by_handle(name) else {
        return Err(unknown_database(config, name));
    };
    if fleet.template.timing(kind).is_none() {
        return Err(no_section(config, &fleet.name, kind));
    }
    // Files that are no member are not run: say which, and why.
    for r in &fleet.rejected {
        r.log(&fleet.name);
    }
    Ok((config.members(fleet).cloned().collect(), true))
}

/// `--wait`: absent (the configuration's `on_busy` applies), `forever`, or a duration.
fn on_busy(wait: Option<&str>) -> Result<Option<OnBusy>, Failure> {
    let Some(text) = wait else {
        return Ok(None);
    };
    if text == "forever" {
        return Ok(Some(OnBusy::Wait(None)));
    }
    let limit = parse_duration(text).map_err(|reason| {
        Failure::new(
            ExitCode::Usage,
            anyhow::anyhow!("--wait {text:?}: {reason}"),
        )
    })?;
    Ok(Some(OnBusy::Wait(Some(limit))))
}

fn fleet_summary(
    handle: &str,
    kind: JobKind,
    mut ends: Vec<(String, Ended)>,
    members: usize,
) -> ExitCode {
    ends.sort_by(|a, b| a.0.cmp(&b.0));
    let failed: Vec<(&str, ExitCode)> = ends
        .iter()
        .filter_map(|(d, e)| match e {
            Ended::Ran(c) if !matches!(c, ExitCode::Ok | ExitCode::TempFail) => {
                Some((d.as_str(), *c))
            }
            _ => None,
        })
        .collect();
    let count = |want: fn(&Ended) -> bool| ends.iter().filter(|(_, e)| want(e)).count();
    let ok = count(|e| *e == Ended::Ran(ExitCode::Ok));
    let busy = count(|e| *e == Ended::Ran(ExitCode::TempFail));
    let stopped = count(|e| matches!(e, Ended::Stopped | Ended::NotStarted));
    let mut line = format!(
        "{} fleet {handle}: {members} database(s): {ok} ok, {busy} busy, {} failed",
        kind.as_str(),
        failed.len()
    );
    if !failed.is_empty() {
        let shown: Vec<&str> = failed.iter().take(10).map(|(d, _)| *d).collect();
        line.push_str(&format!(" ({}", shown.join(", ")));
        if failed.len() > shown.len() {
            line.push_str(&format!(" and {} more", failed.len() - shown.len()));
        }
        line.push(')');
    }
    if stopped > 0 {
        line.push_str(&format!(", {stopped} stopped by a signal before finishing"));
    }
    if crate::logging::to_journal() {
        tracing::info!("{line}");
    } else if failed.is_empty() && busy == 0 && stopped == 0 {
        println!("{line}");
    } else {
        eprintln!("litekeeper: {line}");
    }
    match failed.first() {
        Some((_, code)) => *code,
        None if busy > 0 || stopped > 0 => ExitCode::TempFail,
        None => ExitCode::Ok,
    }
}

fn unknown_database(config: &crate::config::Config, name: &str) -> Failure {
    let mut names: Vec<&str> = config
        .databases
        .iter()
        .filter(|d| d.fleet.is_none())
        .map(|d| d.name.as_str())
        .chain(config.fleets.iter().map(|f| f.handle.as_str()))
        .collect();
    let more = names.len().saturating_sub(20);
    names.truncate(20);
    Failure::new(
        ExitCode::Usage,
        anyhow::anyhow!(
            "no {} named {name:?} in {} (configured: {}{})",
            super::what_is_named(config),
            config.file.display(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            },
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ),
    )
}

fn no_section(config: &crate::config::Config, name: &str, kind: JobKind) -> Failure {
    Failure::new(
        ExitCode::Config,
        anyhow::anyhow!(
            "{}: database {:?} has no [database.{}] section; add one to enable this job",
            config.file.display(),
            name,
            kind.as_str()
        ),
    )
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
            for l in jobs::drill::report_lines(&report.figures) {
                println!("{l}");
            }
        }
        Outcome::Skipped if report.exit == ExitCode::Ok => println!("{line}"),
        Outcome::Skipped | Outcome::Failed => {
            // A failed drill still says what each copy did.
            for l in jobs::drill::report_lines(&report.figures) {
                println!("{l}");
            }
            eprintln!("litekeeper: {line}")
        }
    }
}

/// As root, run as the user who owns `state_dir`, as `sudo -u` would: a root-owned state.db,
/// lock or backup would lock the service out of its own files afterwards.
fn run_as_state_owner(state_dir: &Path) -> Result<(), Failure> {
    if let Some((uid, gid)) =
        crate::privileges::become_state_owner(state_dir).or_exit(ExitCode::CantCreate)?
    {
        tracing::info!(
            "running as uid {uid} gid {gid}, the owner of {} (as the service does)",
            state_dir.display()
        );
    }
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
