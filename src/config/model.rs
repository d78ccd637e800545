//! The validated, immutable configuration every other module works with.
//!
//! Built once by `validate` from the raw file; durations are parsed, cron expressions checked,
//! paths absolute, names checked. A `Config` is shared as `Arc<Config>` and replaced whole on
//! reload, never mutated.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::backup_names;
use crate::domain::JobKind;
use crate::schedule::{Schedule, Zone};

#[derive(Debug)]
pub struct Config {
    /// The file this was loaded from (named in messages).
    pub file: PathBuf,
    pub daemon: Daemon,
    /// Every database: the plain ones and the current members of each fleet.
    pub databases: Vec<Arc<Database>>,
    /// `[[database]]` stanzas whose path is a glob: one database per matching file.
    pub fleets: Vec<Fleet>,
    /// Position of each database in `databases`, by name (a fleet can have thousands).
    pub by_name: HashMap<String, usize>,
    /// The `[[remote]]` stanzas.
    pub remotes: Vec<Arc<super::remote::Remote>>,
}

/// A `[[database]]` stanza with a wildcard path (`/srv/app/tenants/*.db`) and a name template
/// (`tenant-{stem}`): re-scanned on every schedule tick and on reload.
#[derive(Debug)]
pub struct Fleet {
    /// Its index among the `[[database]]` stanzas (for messages).
    pub index: usize,
    /// The name template as written, e.g. `tenant-{stem}`; also the fleet's name in messages.
    pub name: String,
    /// The whole fleet's name in `run`, `status` and timer units: `tenant` for `tenant-{stem}`.
    pub handle: String,
    pub raw: super::raw::RawDatabase,
    /// The stanza validated with a sample stem: its schedules and jitters.
    pub template: Arc<Database>,
    /// Files the load's scan refused (symlinks, bad names, collisions), sorted.
    pub rejected: Vec<super::fleet::Rejected>,
}

impl Config {
    /// Scheduled jobs of the fleets: (fleet, job, timing).
    pub fn fleet_jobs(&self) -> impl Iterator<Item = (&Fleet, JobKind, &Timing)> {
        self.fleets.iter().flat_map(|f| {
            JobKind::ALL.into_iter().filter_map(move |kind| {
                f.template
                    .timing(kind)
                    .filter(|t| t.schedule.is_some())
                    .map(|t| (f, kind, t))
            })
        })
    }

    pub fn fleet(&self, name: &str) -> Option<&Fleet> {
        self.fleets.iter().find(|f| f.name == name)
    }

    /// The fleet `run`, `status` and timer units call `handle`.
    pub fn fleet_by_handle(&self, handle: &str) -> Option<&Fleet> {
        self.fleets.iter().find(|f| f.handle == handle)
    }

    /// The current members of `fleet`.
    pub fn members<'a>(&'a self, fleet: &'a Fleet) -> impl Iterator<Item = &'a Arc<Database>> {
        self.databases
            .iter()
            .filter(move |d| d.fleet.as_deref() == Some(fleet.name.as_str()))
    }

    /// The longest history any database keeps: runs older than this go, whoever they are of
    /// (databases that left the configuration included).
    pub fn longest_keep_history(&self) -> Duration {
        self.databases
            .iter()
            .map(|d| d.keep_history)
            .chain(self.fleets.iter().map(|f| f.template.keep_history))
            .fold(self.daemon.keep_history, Duration::max)
    }

    pub fn database(&self, name: &str) -> Option<&Arc<Database>> {
        self.by_name.get(name).map(|&i| &self.databases[i])
    }

    /// Every (database, job) pair that has a schedule, in config order (fleet members are
    /// scheduled through their fleet: see `fleet_jobs`).
    pub fn scheduled_jobs(&self) -> impl Iterator<Item = (&Arc<Database>, JobKind, &Timing)> {
        self.databases
            .iter()
            .filter(|db| db.fleet.is_none())
            .flat_map(|db| {
                JobKind::ALL.into_iter().filter_map(move |kind| {
                    db.timing(kind)
                        .filter(|t| t.schedule.is_some())
                        .map(|t| (db, kind, t))
                })
            })
    }
}

#[derive(Debug)]
pub struct Daemon {
    /// Zone cron expressions are read in.
    pub timezone: Zone,
    /// Jobs running at once across all databases (one per database, always).
    pub max_concurrent_jobs: usize,
    pub state_dir: PathBuf,
    pub lock_dir: PathBuf,
    /// Statements slower than this are logged.
    pub slow_statement: Duration,
    /// How long a statement waits for another connection's lock (SQLite busy_timeout).
    pub busy_timeout: Duration,
    /// Run a job once at start-up if its last scheduled time passed while the daemon was down.
    pub catch_up: bool,
    /// Run history older than this is deleted from the state DB.
    pub keep_history: Duration,
    /// Prometheus textfile written (atomically, from the state DB) after every run.
    pub metrics_file: Option<PathBuf>,
    /// This host's name (`host`, else the machine's host name, lower-cased): the owner the
    /// remote manifests it writes record, and `{host}` in a remote's `url`.
    pub host: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBusy {
    /// Another job holds the database: record a skipped run (exit 75 from `run`).
    Skip,
    /// Wait for the lock, up to the timeout (None: no limit).
    Wait(Option<Duration>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalMode {
    /// Switch the database to WAL once (the default; what every pooled app wants).
    Wal,
    /// Leave the journal mode as the application set it.
    Keep,
}

#[derive(Debug)]
pub struct Database {
    pub name: String,
    pub path: PathBuf,
    /// Other database files attached under an alias (e.g. the blob DB as `files`).
    pub attach: Vec<Attachment>,
    pub on_busy: OnBusy,
    pub journal_mode: JournalMode,
    pub prune: Option<Prune>,
    pub vacuum: Option<Vacuum>,
    pub backup: Option<Backup>,
    pub drill: Option<Drill>,
    /// The fleet (name template) this database was found by, if any.
    pub fleet: Option<String>,
    /// Run history of this database older than this is deleted (`daemon.keep_history`, or
    /// `FLEET_KEEP_HISTORY` for fleet members, unless the stanza sets its own).
    pub keep_history: Duration,
    /// A fleet member: the file its scan found (a job opens only that very file).
    pub scanned: Option<FileId>,
}

/// Device and inode: which file a path named when it was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// A fleet member's history is kept this long by default (at most `daemon.keep_history`):
/// 10,000 members backed up daily would otherwise keep 900,000 runs in state.db.
pub const FLEET_KEEP_HISTORY: Duration = Duration::from_secs(7 * 86400);

impl Database {
    pub fn timing(&self, kind: JobKind) -> Option<&Timing> {
        match kind {
            JobKind::Prune => self.prune.as_ref().map(|p| &p.timing),
            JobKind::Vacuum => self.vacuum.as_ref().map(|v| &v.timing),
            JobKind::Backup => self.backup.as_ref().map(|b| &b.timing),
            JobKind::Incremental => self
                .backup
                .as_ref()
                .and_then(|b| b.incremental.as_ref())
                .map(|i| &i.timing),
            JobKind::Drill => self.drill.as_ref().map(|d| &d.timing),
        }
    }
}

/// One file a backup of a database copies.
#[derive(Debug, Clone)]
pub struct BackupSource {
    /// Schema name on the job's connection: "main" or the attachment's alias.
    pub schema: String,
    /// File-name series: the main file's stem, or the attachment's alias (named by
    /// `backup_names::stem_series` and `backup_names::attached_series`).
    pub series: String,
    pub path: PathBuf,
}

impl Database {
    /// The files a backup of this database copies, in order: the main file, then each
    /// attachment.
    pub fn backup_sources(&self) -> Vec<BackupSource> {
        let stem = backup_names::stem_series(&self.path).unwrap_or_else(|| self.name.clone());
        let mut out = vec![BackupSource {
            schema: "main".into(),
            series: stem.clone(),
            path: self.path.clone(),
        }];
        for a in &self.attach {
            out.push(BackupSource {
                schema: a.alias.clone(),
                series: backup_names::attached_series(&stem, &a.alias),
                path: a.path.clone(),
            });
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct Attachment {
    pub alias: String,
    pub path: PathBuf,
}

/// When a job runs: a cron schedule (None: only on demand, e.g. from a systemd timer) and a
/// random delay of up to `jitter` after each scheduled time; and whom it tells (`ping`).
#[derive(Debug, Clone)]
pub struct Timing {
    pub schedule: Option<Schedule>,
    pub jitter: Duration,
    /// Health pings on start, success and failure (see `pings`).
    pub ping: Option<Ping>,
}

/// A job's health-check URL, healthchecks.io style: `{url}/start`, `{url}`, `{url}/fail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    /// Absolute http:// or https:// URL.
    pub url: String,
    /// How long one ping may take in all, retries included.
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct Prune {
    pub timing: Timing,
    pub max_lock: Duration,
    /// The pause between batches when set; by default it adapts (`jobs::prune_batch::Pacer`).
    pub pause: Option<Duration>,
    pub max_fraction: f64,
    pub max_rows: Option<u64>,
    pub dry_run: bool,
    pub rules: Vec<Rule>,
    pub files: Vec<FilesRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeFormat {
    Unix,
    UnixMs,
    Iso8601,
    Julian,
}

/// A table reference as written: `table` or `alias.table` (an attached database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    pub schema: Option<String>,
    pub table: String,
}

#[derive(Debug, Clone)]
pub enum Rule {
    /// Rows whose `column` is older than `older_than` (and match `filter`).
    Age {
        table: TableRef,
        column: String,
        older_than: Duration,
        time_format: TimeFormat,
        filter: Option<String>,
    },
    /// Rows matching `filter`.
    Where { table: TableRef, filter: String },
    /// Rows of `table` whose `key` (column or SQL expression) has no row in `parent`.
    Orphan {
        table: TableRef,
        key: String,
        parent: TableRef,
        parent_column: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entries {
    Files,
    Dirs,
}

/// Where a files rule's quarantined files go, inside the rule's directory (a directory the
/// rule itself never takes as an entry).
pub const QUARANTINE_DIR: &str = ".litekeeper-quarantine";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAction {
    Delete,
    Quarantine,
}

#[derive(Debug, Clone)]
pub struct FilesRule {
    pub dir: PathBuf,
    /// Regex with a named group `id`; None with `entries = "dirs"` means the name is the id.
    pub pattern: Option<regex::Regex>,
    pub entries: Entries,
    pub referenced_by: String,
    pub min_age: Duration,
    pub action: FileAction,
    pub quarantine_days: u32,
    pub allow_empty_reference: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VacuumMode {
    Auto,
    Full,
    Incremental,
    Never,
}

/// A "worth it" threshold: a share of the pages or a byte count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Fraction(f64),
    Bytes(u64),
}

#[derive(Debug)]
pub struct Vacuum {
    pub timing: Timing,
    pub mode: VacuumMode,
    pub min_free: Threshold,
    pub convert_auto_vacuum: bool,
    pub temp_dir: Option<PathBuf>,
    pub max_duration: Option<Duration>,
    pub analyze: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupMethod {
    /// SQLite's online backup API, stepped, under a read transaction.
    Online,
    /// `VACUUM INTO`: a compacted copy.
    VacuumInto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd { level: i32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    None,
    Quick,
    Full,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keep {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
}

#[derive(Debug)]
pub struct Backup {
    pub timing: Timing,
    pub dir: PathBuf,
    pub method: BackupMethod,
    pub compression: Compression,
    pub verify: Verify,
    pub keep: Keep,
    pub max_age: Option<Duration>,
    /// Names of the `[[remote]]`s every verified backup is copied to (checked at load).
    pub remotes: Vec<String>,
    /// Retention of the remote copies (default: `keep`).
    pub remote_keep: Keep,
    pub incremental: Option<Incremental>,
}

/// How long chains are kept when `incremental.keep` is not set (or `incremental` is gone).
pub const DEFAULT_CHAIN_KEEP: Duration = Duration::from_secs(7 * 86400);

impl Backup {
    /// How long incremental chains are kept.
    pub fn chain_keep(&self) -> Duration {
        self.incremental
            .as_ref()
            .map_or(DEFAULT_CHAIN_KEEP, |i| i.keep)
    }
}

/// `incremental = { every, keep }`: points between full backups (`jobs::backup::incremental`).
#[derive(Debug)]
pub struct Incremental {
    /// `every` is its schedule.
    pub timing: Timing,
    /// A chain's deltas are deleted once its newest point is older than this.
    pub keep: Duration,
}

/// Where a drill takes its copies from: the local backup directory, or one of the database's
/// remotes (`backup.remotes`), named as in its `[[remote]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrillSource {
    /// The database's backup directory (`backup.dir`).
    Local,
    /// The off-site copies in the `[[remote]]` of this name.
    Remote(String),
}

impl DrillSource {
    /// The name `from` and `--from` use, and the metrics' `source` label.
    pub fn name(&self) -> &str {
        match self {
            DrillSource::Local => "local",
            DrillSource::Remote(name) => name,
        }
    }
}

/// Which copies a drill restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillPick {
    /// The newest copy.
    Newest,
    /// The newest, and one older copy chosen at random.
    NewestAndRandom,
    /// Every copy.
    All,
}

/// The key that decrypts encrypted copies: a file, or a systemd credential
/// (`$CREDENTIALS_DIRECTORY/NAME`, from `LoadCredential=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    File(PathBuf),
    Credential(String),
}

#[derive(Debug)]
pub struct Drill {
    pub timing: Timing,
    pub from: Vec<DrillSource>,
    pub pick: DrillPick,
    pub identity: Option<Identity>,
    /// SQL run on the restored copy (read-only); each must return one row whose first value
    /// is true (non-zero).
    pub asserts: Vec<String>,
    /// `status --check`: CRITICAL when the last good drill is older.
    pub max_age: Option<Duration>,
    /// Where copies are restored, in a subdirectory per database (`scratch_dir/NAME`).
    pub scratch_dir: PathBuf,
}
