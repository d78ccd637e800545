//! Logging: natively to journald when stderr is the journal (systemd sets `JOURNAL_STREAM`)
//! or when asked, else human lines (or JSON) on stderr. Filter with `LITEKEEPER_LOG`
//! (`RUST_LOG` syntax, default `info`).
//!
//! Every job run emits one start and one finish event with `LITEKEEPER_*` fields and a fixed
//! `MESSAGE_ID` per event kind (explained in packaging/litekeeper.catalog). Priorities:
//! finished ok → info (6), skipped → notice (5), failed → err (3).

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;

use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

use crate::cli::{LogArgs, LogFormat, LogTarget};
use crate::domain::{Figures, JobKind, Outcome, Report, Trigger};

/// MESSAGE_IDs: one per kind of event, stable across versions.
pub mod message_id {
    pub const JOB_STARTED: &str = "fc726b0cf71f4c7bb2383d289944b3eb";
    pub const JOB_FINISHED: &str = "5f8553995df44ab8b04d65809b80d3ac";
    pub const JOB_SKIPPED: &str = "bedc59ebb63246b0a41709384a6c4b4c";
    pub const JOB_FAILED: &str = "6130649b60ea41a4af6e551aeb499e18";
    pub const DAEMON_STARTED: &str = "e9ffaac7ad6542be99d3843d7e596378";
    pub const DAEMON_RELOADED: &str = "a0656abaceb34c6a850861fa86b5f7a7";
    pub const RELOAD_FAILED: &str = "2d14354091584880ace57e8687c7e5fc";
    pub const DAEMON_STOPPING: &str = "a746aea2ab3349909bef3a02d8afa6fa";
    pub const SLOW_STATEMENT: &str = "173c89d8402f49e7b2214d73f144b28f";
}

/// Events of this target are sent to journald with priority notice (5).
pub const NOTICE: &str = "litekeeper::notice";

/// True when systemd connected our stderr to the journal (`JOURNAL_STREAM=dev:ino` matches).
pub fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Whether `init` chose journald. Process-wide on purpose, like the tracing subscriber it
/// describes (tracing's global default, installed once by `init`, before any runtime context
/// exists).
static TO_JOURNAL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True once `init` chose journald: a command's own summary line would only repeat the
/// structured event there.
pub fn to_journal() -> bool {
    TO_JOURNAL.load(std::sync::atomic::Ordering::Relaxed)
}

/// Install the global subscriber. Errors are returned (not fatal): logging falls back to stderr.
pub fn init(args: &LogArgs) -> Result<(), String> {
    let filter = || {
        EnvFilter::try_from_env("LITEKEEPER_LOG")
            .unwrap_or_else(|_| EnvFilter::new("info,tokio_cron_scheduler=warn"))
    };
    let want_journal = match args.log_target {
        LogTarget::Journald => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => stderr_is_journal(),
    };
    let mut warning = None;
    if want_journal {
        match journald_layers() {
            Ok((normal, notice)) => {
                tracing_subscriber::registry()
                    .with(filter())
                    .with(normal.with_filter(filter_fn(|m| m.target() != NOTICE)))
                    .with(notice.with_filter(filter_fn(|m| m.target() == NOTICE)))
                    .try_init()
                    .map_err(|e| e.to_string())?;
                TO_JOURNAL.store(true, std::sync::atomic::Ordering::Relaxed);
                return Ok(());
            }
            Err(e) => warning = Some(format!("cannot log to journald ({e}); logging to stderr")),
        }
    }
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    let result = match args.log_format {
        LogFormat::Human => tracing_subscriber::registry()
            .with(filter())
            .with(fmt)
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter())
            .with(fmt.json().flatten_event(true))
            .try_init(),
    };
    result.map_err(|e| e.to_string())?;
    match warning {
        Some(w) => Err(w),
        None => Ok(()),
    }
}

fn journald_layers() -> std::io::Result<(tracing_journald::Layer, tracing_journald::Layer)> {
    use tracing_journald::{Priority, PriorityMappings};
    let make = |info: Priority| -> std::io::Result<tracing_journald::Layer> {
        Ok(tracing_journald::layer()?
            .with_field_prefix(None)
            .with_syslog_identifier("litekeeper".into())
            .with_priority_mappings(PriorityMappings {
                error: Priority::Error,
                warn: Priority::Warning,
                info,
                debug: Priority::Informational,
                trace: Priority::Debug,
            }))
    };
    Ok((make(Priority::Informational)?, make(Priority::Notice)?))
}

/// One event when a job starts.
pub fn job_started(run_id: &str, database: &str, job: JobKind, trigger: Trigger) {
    tracing::info!(
        message_id = message_id::JOB_STARTED,
        litekeeper_database = database,
        litekeeper_job = job.as_str(),
        litekeeper_run_id = run_id,
        litekeeper_trigger = trigger.as_str(),
        "{} {database}: started ({})",
        job.as_str(),
        trigger.as_str()
    );
}

/// The `LITEKEEPER_*` journal fields taken from a run's figures (README.md lists them); the
/// whole figures go in `LITEKEEPER_FIGURES` as JSON besides. Derived here and nowhere else.
#[derive(Debug, Default, PartialEq)]
struct JournalFigures<'a> {
    rows_deleted: Option<u64>,
    files_deleted: Option<u64>,
    bytes_before: Option<u64>,
    bytes_after: Option<u64>,
    backup_path: Option<&'a str>,
    verify: Option<&'static str>,
    pages_per_sec: Option<u64>,
    sha256: Option<&'a str>,
    copy_path: Option<&'static str>,
}

impl<'a> JournalFigures<'a> {
    fn of(figures: Option<&'a Figures>) -> Self {
        match figures {
            None => JournalFigures::default(),
            Some(Figures::Prune(p)) => JournalFigures {
                rows_deleted: p.rows_deleted,
                files_deleted: p.files_deleted,
                ..JournalFigures::default()
            },
            Some(Figures::Vacuum(v)) => JournalFigures {
                bytes_before: Some(v.bytes_before),
                bytes_after: Some(v.bytes_after),
                ..JournalFigures::default()
            },
            Some(Figures::Backup(b)) => JournalFigures {
                bytes_before: Some(b.bytes_before),
                bytes_after: b.bytes_after,
                backup_path: b.backup_path.as_deref(),
                verify: b.verified.map(|v| v.as_str()),
                pages_per_sec: b.pages_per_sec,
                sha256: b.sha256.as_deref(),
                copy_path: b.copy_path.map(|p| p.as_str()),
                ..JournalFigures::default()
            },
        }
    }
}

/// One event when a job ends, at the priority its outcome calls for.
pub fn job_finished(r: &Report) {
    let f = JournalFigures::of(r.figures.as_ref());
    let figures = Figures::to_json(r.figures.as_ref()).to_string();
    macro_rules! event {
        ($level:expr, $target:expr, $id:expr) => {
            tracing::event!(
                target: $target,
                $level,
                message_id = $id,
                litekeeper_database = r.database.as_str(),
                litekeeper_job = r.job.as_str(),
                litekeeper_run_id = r.run_id.as_str(),
                litekeeper_trigger = r.trigger.as_str(),
                litekeeper_outcome = r.outcome.as_str(),
                litekeeper_duration_ms = r.duration_ms,
                litekeeper_rows_deleted = f.rows_deleted,
                litekeeper_files_deleted = f.files_deleted,
                litekeeper_bytes_before = f.bytes_before,
                litekeeper_bytes_after = f.bytes_after,
                litekeeper_backup_path = f.backup_path,
                litekeeper_verify = f.verify,
                litekeeper_pages_per_sec = f.pages_per_sec,
                litekeeper_sha256 = f.sha256,
                litekeeper_copy_path = f.copy_path,
                litekeeper_error = r.error.as_deref(),
                litekeeper_figures = figures.as_str(),
                "{} {}: {} in {} ms",
                r.job.as_str(),
                r.database,
                r.summary,
                r.duration_ms
            )
        };
    }
    match r.outcome {
        Outcome::Ok | Outcome::DryRun => event!(
            tracing::Level::INFO,
            "litekeeper::job",
            message_id::JOB_FINISHED
        ),
        Outcome::Skipped => event!(tracing::Level::INFO, NOTICE, message_id::JOB_SKIPPED),
        Outcome::Failed => event!(
            tracing::Level::ERROR,
            "litekeeper::job",
            message_id::JOB_FAILED
        ),
    }
}

/// A statement slower than `daemon.slow_statement` (SQL cut to 200 characters, each
/// parameter to 100, blobs by size only).
pub fn slow_statement(file: &str, took: std::time::Duration, sql: &str, params: &[String]) {
    let sql = crate::sqlite::truncate(&sql.split_whitespace().collect::<Vec<_>>().join(" "), 200);
    let params = params.join(", ");
    tracing::warn!(
        message_id = message_id::SLOW_STATEMENT,
        litekeeper_duration_ms = took.as_millis() as u64,
        litekeeper_sql = sql.as_str(),
        litekeeper_params = params.as_str(),
        litekeeper_file = file,
        "slow statement on {file}: {} ms: {sql} [{params}]",
        took.as_millis()
    );
}
