//! The vocabulary every layer shares: which job ([`JobKind`]), what started a run
//! ([`Trigger`]), how it ended ([`Outcome`]), the [`Report`] of a run, and the exit codes.
//! It imports nothing from the rest of the crate, so config, jobs, state, logging, metrics,
//! pings and the commands can all depend on it without depending on each other.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
    /// An incremental backup: the pages changed since the chain's previous point
    /// (`[database.backup] incremental`).
    Incremental,
    /// A restore drill: restores backups into a scratch directory and checks them.
    Drill,
}

impl JobKind {
    /// In the order the demo and a full maintenance pass run them (a drill proves the backup).
    pub const ALL: [JobKind; 5] = [
        JobKind::Prune,
        JobKind::Vacuum,
        JobKind::Backup,
        JobKind::Incremental,
        JobKind::Drill,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Prune => "prune",
            JobKind::Vacuum => "vacuum",
            JobKind::Backup => "backup",
            JobKind::Incremental => "incremental",
            JobKind::Drill => "drill",
        }
    }
}

impl FromStr for JobKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown job {s:?} (prune, vacuum, backup, incremental or drill)")
            })
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
    pub const ALL: [Trigger; 4] = [
        Trigger::Schedule,
        Trigger::Cli,
        Trigger::CatchUp,
        Trigger::Timer,
    ];

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
    pub const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Failed,
        Outcome::Skipped,
        Outcome::DryRun,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
            Outcome::DryRun => "dry-run",
        }
    }
}

impl FromStr for Trigger {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Trigger::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown trigger {s:?}"))
    }
}

impl FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("unknown outcome {s:?}"))
    }
}

/// A recorded run as the history shows it: still running, interrupted (recorded as running
/// by a process that is gone), or finished with an [`Outcome`]. Written as one word
/// (`running`, `interrupted`, or the outcome's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Interrupted,
    Finished(Outcome),
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Interrupted => "interrupted",
            RunState::Finished(o) => o.as_str(),
        }
    }
}

impl Serialize for RunState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

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
    /// What the job reported; None when it did not run (failed, or skipped before starting).
    #[serde(serialize_with = "figures_json")]
    pub figures: Option<Figures>,
    pub error: Option<String>,
    /// Exit code `litekeeper run` uses for this report.
    #[serde(skip)]
    pub exit: ExitCode,
}

/// What a job reports about its run, one type per job. Stored in the state DB as one JSON
/// object (keys sorted; `{}` for none), which `status --json` shows as it is. The journal
/// fields are derived from it in `logging`, the metric samples in `metrics`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Figures {
    Prune(PruneFigures),
    Vacuum(VacuumFigures),
    Backup(BackupFigures),
    Incremental(IncrementalFigures),
    Drill(DrillFigures),
}

impl Figures {
    pub fn kind(&self) -> JobKind {
        match self {
            Figures::Prune(_) => JobKind::Prune,
            Figures::Vacuum(_) => JobKind::Vacuum,
            Figures::Backup(_) => JobKind::Backup,
            Figures::Incremental(_) => JobKind::Incremental,
            Figures::Drill(_) => JobKind::Drill,
        }
    }

    /// The JSON object stored and shown: keys sorted at every level (as a `serde_json::Value`
    /// prints them), `{}` when there are no figures.
    pub fn to_json(figures: Option<&Figures>) -> serde_json::Value {
        figures
            .and_then(|f| serde_json::to_value(f).ok())
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()))
    }

    /// Figures of a `kind` run read back from their JSON: None for `{}`, and for anything
    /// that is not that job's figures.
    pub fn from_json(kind: JobKind, json: &str) -> Option<Figures> {
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        if v.as_object().is_none_or(|o| o.is_empty()) {
            return None;
        }
        match kind {
            JobKind::Prune => serde_json::from_value(v).ok().map(Figures::Prune),
            JobKind::Vacuum => serde_json::from_value(v).ok().map(Figures::Vacuum),
            JobKind::Backup => serde_json::from_value(v).ok().map(Figures::Backup),
            JobKind::Incremental => serde_json::from_value(v).ok().map(Figures::Incremental),
            JobKind::Drill => serde_json::from_value(v).ok().map(Figures::Drill),
        }
    }

    pub fn prune(&self) -> Option<&PruneFigures> {
        match self {
            Figures::Prune(p) => Some(p),
            _ => None,
        }
    }

    pub fn drill(&self) -> Option<&DrillFigures> {
        match self {
            Figures::Drill(d) => Some(d),
            _ => None,
        }
    }
}

/// Serialize optional figures as [`Figures::to_json`] does (`{}` for none).
pub fn figures_json<S: serde::Serializer>(f: &Option<Figures>, s: S) -> Result<S::Ok, S::Error> {
    Figures::to_json(f.as_ref()).serialize(s)
}

/// A prune's figures. A dry run sets the `*_matched` counts, a real run the `*_deleted` ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PruneFigures {
    /// Each row rule, then each files rule, in config order.
    pub rules: Vec<RuleFigures>,
    /// Rules a guard refused (absent when none was).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules_refused: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_matched: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_matched: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_deleted: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_deleted: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_freed: Option<u64>,
    /// The longest time one batch held the write lock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_ms: Option<u64>,
}

/// What one prune rule did (or would do).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuleFigures {
    pub rule: String,
    pub what: String,
    pub matched: u64,
    pub deleted: u64,
    pub batches: u32,
    /// The longest time one batch held the write lock.
    pub max_batch_ms: u64,
    /// The smallest and largest batch (rows of the rule's table) the adaptive size chose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_batch: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<u64>,
    /// Batches that held the write lock longer than `max_lock`.
    #[serde(skip_serializing_if = "is_zero")]
    pub batches_over_max_lock: u32,
    /// Time spent in the pauses between batches (adaptive unless `pause` is set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_ms: Option<u64>,
    /// Where the rest of a rule's time went: finding each batch's rows (reads, no lock),
    /// holding the write lock, and the WAL checkpoints between batches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub select_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_ms: Option<u64>,
    /// Time a second thread spent checkpointing the WAL while the batches went on (beside
    /// `checkpoint_ms`, the job's own time running or waiting for checkpoints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_bg_ms: Option<u64>,
    /// Set when a batch of a single row (and its dependants) held the lock longer than
    /// `max_lock`: the longest such batch, in ms. No batch size can keep the bound then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_row_ms: Option<u64>,
    /// Dependant rows deleted (or set to NULL/default) through declared foreign keys.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dependants: Vec<DependantFigures>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Why a guard (max_fraction, an empty reference) refused the rule; nothing of it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Rows of one dependant table a rule changed (or would change) through a declared key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DependantFigures {
    pub table: String,
    /// The key's declared action: "cascade", "no action", "set null", "set default", or
    /// "self reference" (the subtree of a table that references itself).
    pub action: String,
    pub rows: u64,
}

impl DependantFigures {
    /// Whether the rows go (rather than have their key set to NULL or its default).
    pub fn deletes(&self) -> bool {
        !self.action.starts_with("set ")
    }
}

/// A vacuum's figures: sums over the files (main and attached), then each file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VacuumFigures {
    /// File and WAL bytes.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Free pages.
    pub freelist_before: u64,
    pub freelist_after: u64,
    /// Bytes a VACUUM would win back inside the b-tree pages (whole pages, see
    /// `jobs::vacuum::unused_in_pages`).
    pub unused_bytes_before: u64,
    pub unused_bytes_after: u64,
    pub files: Vec<FileFigures>,
}

/// What a vacuum did to one database file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileFigures {
    pub schema: String,
    pub path: String,
    /// full | incremental | convert | skipped, or `… (dry run)`
    pub action: String,
    pub before: PageFigures,
    pub after: PageFigures,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Page figures of one database file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PageFigures {
    pub page_size: i64,
    pub pages: i64,
    pub freelist: i64,
    /// Bytes a VACUUM would win back inside the b-tree pages.
    pub unused_bytes: u64,
    pub file_bytes: u64,
    pub wal_bytes: u64,
}

/// A backup's figures. A dry run sets `would_write`; a run that wrote sets the rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackupFigures {
    /// Bytes to copy: the database files and their WALs, attached ones included.
    pub bytes_before: u64,
    /// The files a dry run would write.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_write: Option<Vec<String>>,
    /// The main database's copy, then every copy written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_paths: Option<Vec<String>>,
    /// Size on disk of the files written (compressed size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pages: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pages_per_sec: Option<u64>,
    /// How the main database's copy was checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verified>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Old backups retention deleted, and the warnings it gave.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_deleted: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_warnings: Option<u64>,
    /// Times an online copy started over because the database changed under it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u64>,
    /// Off-site copies of this run's backups (the `remote*` keys of the JSON).
    #[serde(flatten)]
    pub offsite: OffsiteFigures,
    /// How the main database's copy was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_path: Option<CopyPath>,
}

/// An incremental backup's figures: one point of a chain (the main database's; the sums
/// cover every source file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IncrementalFigures {
    /// Pages read from the snapshot, and those that differed from the previous point.
    pub pages_scanned: u64,
    pub pages_changed: u64,
    /// Size on disk of the delta files written (compressed size).
    pub bytes: u64,
    /// The main database's delta file, its chain's full backup and its place in the chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// SHA-256 of the main database's whole image at this point.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_sha256: Option<String>,
    /// Delta files retention deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_deleted: Option<u64>,
    /// Off-site copies of the deltas, as for a full backup.
    #[serde(flatten)]
    pub offsite: OffsiteFigures,
}

/// What a run stored off-site: the remotes that stored copies (comma-separated), their URLs
/// (no secrets), the bytes stored, the upload's rate and the copies still pending. Shared by
/// full and incremental backups; flattened into their JSON (`remote`, `remote_url`, …).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OffsiteFigures {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_mb_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_pending: Option<u64>,
}

/// How a backup's bytes were copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CopyPath {
    /// The database file and the WAL frames of the snapshot, read directly.
    File,
    /// SQLite's online backup API (a precondition of the file copy did not hold).
    BackupApi,
    /// `method = "vacuum_into"`.
    VacuumInto,
}

impl CopyPath {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyPath::File => "file",
            CopyPath::BackupApi => "backup-api",
            CopyPath::VacuumInto => "vacuum-into",
        }
    }
}

/// How a backup was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verified {
    /// quick_check + foreign_key_check + page and row counts matched.
    Quick,
    /// integrity_check + foreign_key_check + page and row counts matched.
    Full,
    /// verify = "none": not checked.
    None,
    /// Verification failed; the file carries the `.failed` suffix.
    Failed,
}

impl Verified {
    pub fn as_str(self) -> &'static str {
        match self {
            Verified::Quick => "quick",
            Verified::Full => "full",
            Verified::None => "none",
            Verified::Failed => "failed",
        }
    }
}

/// Cut `s` to `max` characters, marking the cut with `…` (statements and values in logs).
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A drill's figures: one entry per copy drilled, newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DrillFigures {
    pub copies: Vec<CopyDrill>,
}

impl DrillFigures {
    /// The copy the journal and the metrics speak of: the newest one drilled.
    pub fn newest(&self) -> Option<&CopyDrill> {
        self.copies.first()
    }
}

/// How one copy (one backup run: the main database and its attached databases) fared.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CopyDrill {
    /// Where it came from: `local` (the backup directory), or a remote's name.
    pub source: String,
    /// The main database's backup file.
    pub backup: String,
    /// Every file of the run (main first, then attached databases).
    pub files: Vec<String>,
    pub created_at: Option<DateTime<Utc>>,
    /// The copy's age when the drill began: the recovery point (RPO).
    pub age_seconds: u64,
    /// Bytes as stored, and as restored.
    pub bytes: u64,
    pub restored_bytes: u64,
    pub phases: DrillPhases,
    /// What was checked, one line each (`integrity_check main: ok`, `assert[0]: ok`).
    pub checks: Vec<String>,
    pub verdict: DrillVerdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Time spent in each phase of a copy's drill, in ms; `total_ms` is the recovery time a
/// person would face (RTO).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DrillPhases {
    /// Getting the copy and checking its SHA-256 against the manifest.
    pub fetch_ms: u64,
    pub decrypt_ms: u64,
    /// Decompressing into the scratch file (0 for an uncompressed copy).
    pub decompress_ms: u64,
    /// Writing, syncing and quick-checking the restored file (the restore library's steps).
    pub restore_ms: u64,
    /// integrity_check, foreign_key_check, page and row counts, assertions.
    pub check_ms: u64,
    pub total_ms: u64,
}

/// A copy's drill verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrillVerdict {
    #[default]
    Ok,
    Failed,
}

impl DrillVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            DrillVerdict::Ok => "ok",
            DrillVerdict::Failed => "failed",
        }
    }
}

/// A byte count for people: `512 B`, `1.5 KiB`, `20.0 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_stored_with_sorted_keys_and_read_back_by_job() {
        let f = Figures::Backup(BackupFigures {
            bytes_before: 10,
            would_write: Some(vec!["chat-20260101-000000.db".into()]),
            ..BackupFigures::default()
        });
        let text = Figures::to_json(Some(&f)).to_string();
        assert_eq!(
            text,
            r#"{"bytes_before":10,"would_write":["chat-20260101-000000.db"]}"#
        );
        assert_eq!(Figures::from_json(JobKind::Backup, &text), Some(f));
        assert_eq!(Figures::to_json(None).to_string(), "{}");
        assert_eq!(Figures::from_json(JobKind::Prune, "{}"), None);
        assert_eq!(Figures::from_json(JobKind::Prune, "not json"), None);
        // Another job's figures are no figures of this one.
        assert_eq!(
            Figures::from_json(JobKind::Vacuum, r#"{"files":"many"}"#),
            None
        );
    }

    #[test]
    fn prune_figures_keep_their_nested_shape() {
        let f = Figures::Prune(PruneFigures {
            rules: vec![RuleFigures {
                rule: "rule[0]".into(),
                what: "old rows".into(),
                matched: 3,
                deleted: 3,
                batches: 1,
                dependants: vec![DependantFigures {
                    table: "att".into(),
                    action: "cascade".into(),
                    rows: 2,
                }],
                ..RuleFigures::default()
            }],
            rows_deleted: Some(5),
            ..PruneFigures::default()
        });
        let text = Figures::to_json(Some(&f)).to_string();
        assert_eq!(
            text,
            r#"{"rows_deleted":5,"rules":[{"batches":1,"deleted":3,"dependants":[{"action":"cascade","rows":2,"table":"att"}],"matched":3,"max_batch_ms":0,"rule":"rule[0]","what":"old rows"}]}"#
        );
        assert_eq!(Figures::from_json(JobKind::Prune, &text), Some(f));
    }
}
