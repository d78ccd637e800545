//! The vocabulary every layer shares: which job ([`JobKind`]), what started a run
//! ([`Trigger`]), how it ended ([`Outcome`]), the [`Report`] of a run, and the exit codes.
//! It imports nothing from the rest of the crate, so config, jobs, state, logging, metrics,
//! pings and the commands can all depend on it without depending on each other.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// A documented exit status of the `litekeeper` binary (README.md, "Exit codes"). Here
/// rather than in `exit` because a [`Report`] carries the one `litekeeper run` exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Everything asked for was done.
    Ok = 0,
    /// A job ran and failed, or `check` found a problem.
    Failed = 1,
    /// The command line was wrong (EX_USAGE).
    Usage = 64,
    /// A database or backup is corrupt (EX_DATAERR).
    DataErr = 65,
    /// A database or input file does not exist (EX_NOINPUT).
    NoInput = 66,
    /// An output file or directory could not be created (EX_CANTCREAT).
    CantCreate = 73,
    /// An I/O error (EX_IOERR).
    IoErr = 74,
    /// Try again later: the database lock is held by another job, or another daemon uses the
    /// state_dir (EX_TEMPFAIL).
    TempFail = 75,
    /// The configuration is invalid (EX_CONFIG).
    Config = 78,
}

impl ExitCode {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// The closed set of jobs; each has one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Prune,
    Vacuum,
    Backup,
}

impl JobKind {
    /// In the order the demo and a full maintenance pass run them.
    pub const ALL: [JobKind; 3] = [JobKind::Prune, JobKind::Vacuum, JobKind::Backup];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Prune => "prune",
            JobKind::Vacuum => "vacuum",
            JobKind::Backup => "backup",
        }
    }
}

impl FromStr for JobKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown job {s:?} (prune, vacuum or backup)"))
    }
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    Schedule,
    Cli,
    CatchUp,
    /// `litekeeper run` started by a systemd timer's service (`LITEKEEPER_TRIGGER=timer`).
    Timer,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Cli => "cli",
            Trigger::CatchUp => "catch-up",
            Trigger::Timer => "timer",
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Ok,
    Failed,
    /// Not run: the lock was busy, or there was nothing worth doing.
    Skipped,
    DryRun,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
            Outcome::DryRun => "dry-run",
        }
    }
}

/// Figures a job reports (`rows_deleted`, `bytes_before`, `backup_path`, …), also written as
/// `LITEKEEPER_<NAME>` journal fields.
pub type Figures = serde_json::Map<String, serde_json::Value>;

/// Everything known about one finished run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run_id: String,
    pub database: String,
    pub job: JobKind,
    pub trigger: Trigger,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub duration_ms: u64,
    pub outcome: Outcome,
    /// One human line: what was done, or why not.
    pub summary: String,
    pub figures: Figures,
    pub error: Option<String>,
    /// Exit code `litekeeper run` uses for this report.
    #[serde(skip)]
    pub exit: ExitCode,
}
