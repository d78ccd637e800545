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

use crate::domain::{Figures, JobKind, OffsiteFigures, Outcome, Report, Trigger};

/// Where and how to log (`main` fills it from `--log-target` and `--log-format`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub log_target: LogTarget,
    pub log_format: LogFormat,
    /// `--quiet`: no progress lines and no INFO lines on stderr (the journal keeps them).
    pub quiet: bool,
}

/// journald when stderr is the journal (`Auto`), or forced either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Auto,
    Journald,
    Stderr,
}

/// Lines on stderr: for people, or one JSON object each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

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

/// Install the global subscriber, and decide whether progress lines are shown (a person at a
/// terminal: stderr is one, logs do not go to the journal, not `--quiet`). Errors are
/// returned (not fatal): logging falls back to stderr.
pub fn init(args: &Settings) -> Result<(), String> {
    // `--quiet` quiets stderr only: the journal keeps every event.
    let filter_for = |quiet: bool| {
        let default = if quiet {
            "warn"
        } else {
            "info,tokio_cron_scheduler=warn"
        };
        EnvFilter::try_from_env("LITEKEEPER_LOG").unwrap_or_else(|_| EnvFilter::new(default))
    };
    let filter = || filter_for(args.quiet);
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
                    .with(filter_for(false))
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
    let tty = std::io::stderr().is_terminal();
    crate::progress::init(tty && !args.quiet);
    let ansi = tty && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    let result = match args.log_format {
        // A person reads the message; the fields and the figures JSON are for the journal
        // and `--log-format json`.
        LogFormat::Human if tty => tracing_subscriber::registry()
            .with(filter())
            .with(
                fmt.with_writer(|| ProgressSafe)
                    .fmt_fields(tracing_subscriber::fmt::format::debug_fn(for_a_person)),
            )
            .try_init(),
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

/// Fields on a terminal: the message, and any field that is not one of the structured
/// `litekeeper_*` fields or the `message_id` the journal gets.
fn for_a_person(
    w: &mut tracing_subscriber::fmt::format::Writer<'_>,
    field: &tracing::field::Field,
    value: &dyn std::fmt::Debug,
) -> std::fmt::Result {
    match field.name() {
        "message" => write!(w, "{value:?}"),
        n if is_structured(n) => Ok(()),
        n => write!(w, " {n}={value:?}"),
    }
}

fn is_structured(name: &str) -> bool {
    name == "message_id" || name.starts_with("litekeeper_")
}

/// stderr, with the progress lines lifted while a log line is written.
struct ProgressSafe;

impl std::io::Write for ProgressSafe {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        crate::progress::suspend(|| std::io::stderr().write(buf))
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        crate::progress::suspend(|| std::io::stderr().write_all(buf))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
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
    pages_scanned: Option<u64>,
    pages_changed: Option<u64>,
    /// A drill's newest copy: its file, recovery time (s) and recovery point (age, s).
    drill_backup: Option<&'a str>,
    drill_rto_seconds: Option<f64>,
    drill_rpo_seconds: Option<u64>,
    remote: Option<&'a str>,
    remote_url: Option<&'a str>,
    remote_bytes: Option<u64>,
    remote_mb_per_sec: Option<f64>,
    copy_path: Option<&'static str>,
}

impl<'a> JournalFigures<'a> {
    /// The off-site fields alone, for a backup's figures to fill in the rest.
    fn offsite(o: &'a OffsiteFigures) -> Self {
        JournalFigures {
            remote: o.remote.as_deref(),
            remote_url: o.remote_url.as_deref(),
            remote_bytes: o.remote_bytes,
            remote_mb_per_sec: o.remote_mb_per_sec,
            ..JournalFigures::default()
        }
    }

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
                ..JournalFigures::offsite(&b.offsite)
            },
            Some(Figures::Incremental(i)) => JournalFigures {
                bytes_after: Some(i.bytes),
                backup_path: i.delta_path.as_deref(),
                sha256: i.image_sha256.as_deref(),
                pages_scanned: Some(i.pages_scanned),
                pages_changed: Some(i.pages_changed),
                ..JournalFigures::offsite(&i.offsite)
            },
            Some(Figures::Drill(d)) => match d.newest() {
                None => JournalFigures::default(),
                Some(c) => JournalFigures {
                    drill_backup: Some(c.backup.as_str()),
                    drill_rto_seconds: Some(c.phases.total_ms as f64 / 1000.0),
                    drill_rpo_seconds: Some(c.age_seconds),
                    ..JournalFigures::default()
                },
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
                litekeeper_pages_scanned = f.pages_scanned,
                litekeeper_pages_changed = f.pages_changed,
                litekeeper_drill_backup = f.drill_backup,
                litekeeper_drill_rto_seconds = f.drill_rto_seconds,
                litekeeper_drill_rpo_seconds = f.drill_rpo_seconds,
                litekeeper_remote = f.remote,
                litekeeper_remote_url = f.remote_url,
                litekeeper_remote_bytes = f.remote_bytes,
                litekeeper_remote_mb_per_sec = f.remote_mb_per_sec,
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
    let sql = crate::domain::truncate(&sql.split_whitespace().collect::<Vec<_>>().join(" "), 200);
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
