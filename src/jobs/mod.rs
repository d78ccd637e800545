//! The one execute path every job takes, from the daemon and from `litekeeper run` alike:
//! take the database's lock (skip or wait) → check the files → run the job on a blocking
//! thread with its own pooled connection, cancel token checked at safe points → a `Report`,
//! recorded in the state DB (then the metrics file, if configured, is rewritten from it) and
//! logged as one journal event. A job with `ping` also queues health pings (`pings`) on start
//! and when it is recorded; they are sent from their own thread and never delay the job.

pub mod backup;
pub mod drill;
pub mod prune;
mod prune_batch;
mod prune_fk;
pub mod vacuum;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Database, OnBusy};
use crate::exit::ExitCode;
use crate::lock::{self, LockError};
use crate::metrics::MetricsWriter;
use crate::pings::Pings;
use crate::sqlite::{self, Pools};
use crate::state::State;

pub use crate::domain::{Figures, JobKind, Outcome, Report, Trigger};

/// What a job module returns when it did not fail.
#[derive(Debug, Default)]
pub struct JobResult {
    pub summary: String,
    pub figures: Option<Figures>,
    /// Set when the job decided there was nothing worth doing.
    pub skipped: bool,
}

/// Words every "not built yet" error contains (the demo skips such jobs).
pub const NOT_BUILT: &str = "not built yet";

/// Why a job failed; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("the {0} job is not built yet in this version of litekeeper")]
    NotBuilt(&'static str),
    #[error("{0}")]
    Database(sqlite::Finding),
    #[error("cannot get a connection to {path}: {message}")]
    Pool { path: String, message: String },
    #[error("{context}: {source}")]
    Sqlite {
        context: String,
        source: rusqlite::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("cancelled (shutdown or time limit) at a safe point; committed work is kept")]
    Cancelled,
    #[error("{0}")]
    Refused(String),
    /// The configuration does not fit the live database (a rule names a missing column…).
    #[error("{0}")]
    Config(String),
    /// A copy did not pass verification.
    #[error("{0}")]
    VerifyFailed(String),
    #[error("{0}")]
    Archive(crate::archive::ArchiveError),
    /// What the job needs is not there (a drill with no backup to restore).
    #[error("{0}")]
    NoInput(String),
    /// A drilled copy failed its checks: the message names the copy and the check; the
    /// figures say what every copy did.
    #[error("{message}")]
    DrillFailed {
        message: String,
        figures: Box<crate::domain::DrillFigures>,
    },
    /// An off-site copy failed (the local backup is kept, the copy pending): its line(s).
    #[error("{0}")]
    Remote(String, ExitCode),
}

impl JobError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            JobError::Database(f) => f.code,
            JobError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                ExitCode::IoErr
            }
            JobError::Io { .. } => ExitCode::IoErr,
            JobError::Sqlite { source, .. } => match source.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DatabaseCorrupt)
                | Some(rusqlite::ErrorCode::NotADatabase) => ExitCode::DataErr,
                Some(rusqlite::ErrorCode::SystemIoFailure)
                | Some(rusqlite::ErrorCode::DiskFull) => ExitCode::IoErr,
                Some(rusqlite::ErrorCode::DatabaseBusy)
                | Some(rusqlite::ErrorCode::DatabaseLocked) => ExitCode::TempFail,
                _ => ExitCode::Failed,
            },
            JobError::VerifyFailed(_) | JobError::DrillFailed { .. } => ExitCode::DataErr,
            JobError::Refused(_) => ExitCode::CantCreate,
            JobError::Config(_) => ExitCode::Config,
            JobError::NoInput(_) => ExitCode::NoInput,
            JobError::Archive(crate::archive::ArchiveError::Refused { .. }) => ExitCode::CantCreate,
            JobError::Archive(crate::archive::ArchiveError::BadManifest { .. }) => {
                ExitCode::DataErr
            }
            JobError::Archive(_) => ExitCode::IoErr,
            JobError::Remote(_, code) => *code,
            // Stopped by a signal (a `systemctl stop`), not failed: try again later.
            JobError::Cancelled => ExitCode::TempFail,
            _ => ExitCode::Failed,
        }
    }
}

impl JobError {
    /// The figures a failed job still has to report (a failed drill's copies).
    pub fn figures(&self) -> Option<Figures> {
        match self {
            JobError::DrillFailed { figures, .. } => Some(Figures::Drill((**figures).clone())),
            _ => None,
        }
    }
}

/// What a job module gets to work with. Runs on a blocking thread.
pub struct JobCtx<'a> {
    pub config: &'a Config,
    pub db: &'a Database,
    pub conn: &'a mut rusqlite::Connection,
    pub cancel: &'a CancellationToken,
    pub dry_run: bool,
}

impl JobCtx<'_> {
    /// Call at safe points: returns `Err(Cancelled)` once shutdown or a time limit fired.
    pub fn checkpoint(&self) -> Result<(), JobError> {
        if self.cancel.is_cancelled() {
            Err(JobError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// One request to run a job.
#[derive(Debug, Clone)]
pub struct Request {
    pub db: Arc<Database>,
    pub kind: JobKind,
    pub trigger: Trigger,
    pub dry_run: bool,
    /// Overrides the database's `on_busy` (from `run --wait`).
    pub on_busy: Option<OnBusy>,
    /// A drill's choices from `litekeeper drill` (source, backup); default: the config's.
    pub drill: drill::Ask,
}

impl Request {
    /// What the health pings need to know of this run.
    fn ping_run(&self) -> crate::pings::Run<'_> {
        crate::pings::Run {
            db: &self.db,
            kind: self.kind,
            trigger: self.trigger,
            dry_run: self.dry_run,
        }
    }
}

/// The runtime context shared by all runs of one process: configuration, pools, state,
/// shutdown signal, and the process's reporting services (built once by `daemon` or `run`
/// and kept across reloads).
#[derive(Clone)]
pub struct Env {
    pub config: Arc<Config>,
    pub pools: Pools,
    pub state: State,
    pub cancel: CancellationToken,
    /// Rewrites the metrics file after each run.
    pub metrics: MetricsWriter,
    /// Health pings still being sent.
    pub pings: Pings,
}

/// How often a running job checks that its lock file is still in place.
const LOCK_CHECK: Duration = Duration::from_millis(250);

/// Run one job end to end and always return a report (recorded and logged).
pub async fn execute(env: &Env, req: Request) -> Report {
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let started = Utc::now();
    let clock = Instant::now();
    crate::logging::job_started(&run_id, &req.db.name, req.kind, req.trigger);
    let mut pinger = None;
    let mut report = run_locked(env, &req, &run_id, started, &mut pinger).await;
    report.finished = Utc::now();
    report.duration_ms = clock.elapsed().as_millis() as u64;
    let state = env.state.clone();
    let to_record = report.clone();
    let keep = req.db.keep_history;
    match tokio::task::spawn_blocking(move || state.finish(&to_record, keep)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!("could not record run {run_id}: {e}"),
        Err(e) => tracing::error!("could not record run {run_id}: {e}"),
    }
    env.pings.finished(req.ping_run(), pinger, &report);
    env.metrics.update(&env.config, &env.state).await;
    crate::logging::job_finished(&report);
    report
}

async fn run_locked(
    env: &Env,
    req: &Request,
    run_id: &str,
    started: DateTime<Utc>,
    pinger: &mut Option<crate::pings::Pinger>,
) -> Report {
    let db = &req.db;
    let mut report = Report {
        run_id: run_id.to_string(),
        database: db.name.clone(),
        job: req.kind,
        trigger: req.trigger,
        started,
        finished: started,
        duration_ms: 0,
        outcome: Outcome::Failed,
        summary: String::new(),
        figures: None,
        error: None,
        exit: ExitCode::Failed,
    };
    let lock_dir = &env.config.daemon.lock_dir;
    // A drill never takes the database's lock (it may run beside a backup): drills of one
    // database exclude each other through a lock of their own.
    let lock_name = match req.kind {
        JobKind::Drill => drill::lock_name(&db.name),
        _ => db.name.clone(),
    };
    let guard = match req.on_busy.unwrap_or(db.on_busy) {
        OnBusy::Skip => lock::try_acquire(lock_dir, &lock_name, req.kind.as_str()),
        OnBusy::Wait(timeout) => {
            lock::acquire_waiting(
                lock_dir,
                &lock_name,
                req.kind.as_str(),
                timeout,
                &env.cancel,
            )
            .await
        }
    };
    let mut guard = match guard {
        Ok(g) => g,
        Err(LockError::Busy { database, holder }) => {
            report.outcome = Outcome::Skipped;
            report.exit = ExitCode::TempFail;
            report.summary = match req.kind {
                JobKind::Drill => format!("skipped: another drill of {:?} runs, {holder}", db.name),
                _ => format!("skipped: database {database:?} is busy, {holder}"),
            };
            return report;
        }
        Err(e @ LockError::Cancelled(_)) => {
            report.exit = ExitCode::TempFail;
            report.error = Some(e.to_string());
            report.summary = format!("failed: {e}");
            return report;
        }
        Err(e) => {
            report.exit = ExitCode::CantCreate;
            report.error = Some(e.to_string());
            report.summary = format!("failed: {e}");
            return report;
        }
    };
    // Recorded as running only once we hold the lock, so a skipped run never shows as running.
    let state = env.state.clone();
    let (id, name, kind, trigger) = (run_id.to_string(), db.name.clone(), req.kind, req.trigger);
    if let Ok(Err(e)) =
        tokio::task::spawn_blocking(move || state.start(&id, &name, kind, trigger, started)).await
    {
        tracing::warn!("could not record the start of run {run_id}: {e}");
    }
    *pinger = env.pings.started(req.ping_run(), run_id);

    // The job gets its own cancel token: shutdown cancels it, and so does losing the lock.
    let mut env2 = env.clone();
    env2.cancel = env.cancel.child_token();
    let job_cancel = env2.cancel.clone();
    let req2 = req.clone();
    let mut job = tokio::task::spawn_blocking(move || run_blocking(&env2, &req2));
    // While it runs, keep the lock at its path (someone may remove the lock directory).
    let mut lost = None;
    let mut warned = false;
    let mut tick = tokio::time::interval(LOCK_CHECK);
    let result = loop {
        tokio::select! {
            r = &mut job => break r,
            _ = tick.tick(), if lost.is_none() => match guard.keep() {
                Ok(()) => {}
                // Another job holds the database now: this one stops.
                Err(e @ LockError::Busy { .. }) => {
                    tracing::error!("{e}; stopping {} at its next safe point", req.kind.as_str());
                    lost = Some(e);
                    job_cancel.cancel();
                }
                // No new lock file could be made; nor can another job's (same user): go on.
                Err(e) if !warned => {
                    tracing::warn!("the lock file was removed and cannot be put back: {e}");
                    warned = true;
                }
                Err(_) => {}
            },
        }
    };
    drop(guard);
    if let (Some(e), Ok(Err(JobError::Cancelled))) = (&lost, &result) {
        report.exit = ExitCode::TempFail;
        report.error = Some(e.to_string());
        report.summary = format!("stopped: {e}; committed work is kept");
        return report;
    }
    finish_report(&mut report, result, req.dry_run);
    report
}

/// The report of a run that ran: its job's result, or its error, or its thread's panic.
fn finish_report(
    report: &mut Report,
    result: Result<Result<JobResult, JobError>, tokio::task::JoinError>,
    dry_run: bool,
) {
    match result {
        Ok(Ok(r)) => {
            report.outcome = if r.skipped {
                Outcome::Skipped
            } else if dry_run {
                Outcome::DryRun
            } else {
                Outcome::Ok
            };
            report.exit = ExitCode::Ok;
            report.summary = r.summary;
            report.figures = r.figures;
        }
        Ok(Err(e)) => {
            report.exit = e.exit_code();
            report.figures = e.figures();
            report.error = Some(e.to_string());
            report.summary = format!("failed: {e}");
        }
        Err(join) => {
            report.error = Some(format!("job thread panicked: {join}"));
            report.summary = "failed: internal error (job thread panicked)".into();
        }
    }
}

fn run_blocking(env: &Env, req: &Request) -> Result<JobResult, JobError> {
    let db = &req.db;
    // A drill reads backups only: never the live database, its directory or its lock.
    if req.kind == JobKind::Drill {
        return drill::run(&drill::DrillCtx {
            config: &env.config,
            db,
            cancel: &env.cancel,
            ask: &req.drill,
            dry_run: req.dry_run,
        });
    }
    // A fleet member: the file its scan found, reached without a symlink, or nothing.
    let member = match db.fleet.as_deref().and_then(|f| env.config.fleet(f)) {
        Some(fleet) => Some(member_path(fleet, db, req.kind)?),
        None => None,
    };
    let member = match member {
        Some(Err(gone)) => {
            return Ok(JobResult {
                summary: gone,
                skipped: true,
                ..JobResult::default()
            })
        }
        Some(Ok(path)) => Some(path),
        None => None,
    };
    sqlite::preflight(&db.path).map_err(JobError::Database)?;
    for a in &db.attach {
        sqlite::preflight(&a.path).map_err(JobError::Database)?;
    }
    // A killed in-place restore's full-size temp file goes with the next job (lock held).
    crate::restore::clean_leftovers(db);
    if let Some(line) = crate::restore::interrupted(db) {
        tracing::warn!("{line}");
    }
    let busy = env.config.daemon.busy_timeout;
    // Say why a connection cannot be had, with the exit code that fits (locked: 75, corrupt:
    // 65, …).
    let why = |e: String| {
        sqlite::diagnose(&db.path, false, busy)
            .into_iter()
            .find(|f| f.severity == sqlite::Severity::Error)
            .map(JobError::Database)
            .unwrap_or_else(|| JobError::Pool {
                path: db.path.display().to_string(),
                message: e,
            })
    };
    // A plain database's pooled connection, or a fleet member's own one, opened on this
    // thread and closed when the run ends.
    let mut pooled;
    let mut own;
    let conn: &mut rusqlite::Connection = match env.pools.get(&db.name) {
        Some(pool) => {
            pooled = pool.get().map_err(|e| why(e.to_string()))?;
            &mut pooled
        }
        None => {
            own = match (&member, db.scanned) {
                (Some(path), Some(id)) => {
                    sqlite::connect_verified(db, path, id, busy).map_err(|e| match e {
                        sqlite::VerifiedOpenError::NotTheFile(m) => JobError::Refused(m),
                        sqlite::VerifiedOpenError::Sqlite(e) => why(e.to_string()),
                    })?
                }
                _ => sqlite::connect_once(db, busy).map_err(|e| why(e.to_string()))?,
            };
            &mut own
        }
    };
    let mut ctx = JobCtx {
        config: &env.config,
        db,
        conn,
        cancel: &env.cancel,
        dry_run: req.dry_run,
    };
    ctx.checkpoint()?;
    match req.kind {
        JobKind::Prune => prune::run(&mut ctx),
        JobKind::Vacuum => vacuum::run(&mut ctx),
        JobKind::Backup => backup::run(&mut ctx),
        JobKind::Incremental => backup::incremental::run(&mut ctx),
        JobKind::Drill => unreachable!("a drill runs without a connection (above)"),
    }
}

/// A fleet member about to run: the path to open its file by (Ok(Ok)), or why there is
/// nothing to do (Ok(Err): gone or replaced since the scan, a skipped run), or why it is
/// refused (a symlink where the scan found none, on the way to the file or below the fixed
/// part of a path its job writes to).
fn member_path(
    fleet: &crate::config::Fleet,
    db: &Database,
    kind: JobKind,
) -> Result<Result<std::path::PathBuf, String>, JobError> {
    use crate::config::fleet::{self, MemberError};
    let path = match fleet::verify_member(fleet, db) {
        Ok(p) => p,
        Err(MemberError::Gone(m)) => return Ok(Err(m)),
        Err(MemberError::Refused(m)) => return Err(JobError::Refused(m)),
    };
    for (fixed, p) in fleet::confined_paths(fleet, db, kind) {
        fleet::no_symlink_below(&fixed, &p).map_err(JobError::Refused)?;
    }
    Ok(Ok(path))
}

/// Sleep for `d` unless cancelled first; true when the full time passed.
pub async fn sleep_unless_cancelled(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}
