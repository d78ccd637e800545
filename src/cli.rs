//! Command-line interface: clap derive types only. Behaviour lives in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Examples:
  litekeeper check                      Is every configured database reachable and sane?
  litekeeper run chat backup            Back up the database named \"chat\" now
  litekeeper run chat prune --dry-run   Show what a prune would delete, change nothing
  litekeeper schedule --count 3         When will each job run next?
  litekeeper status                     When did each job last run, and how did it go?
  litekeeper daemon                     Run every job on its schedule (what the service does)
  litekeeper demo                       Try it all on a generated sample database

Configuration: -c FILE, else $LITEKEEPER_CONFIG, else /etc/litekeeper/litekeeper.toml
(as root) or $XDG_CONFIG_HOME/litekeeper/litekeeper.toml. Any key can be overridden from the
environment: LITEKEEPER__DAEMON__MAX_CONCURRENT_JOBS=4.

Exit codes: 0 ok, 1 job failed or check found a problem, 64 usage, 65 corrupt data,
66 missing input, 73 cannot create output, 74 I/O error, 75 lock busy (try later),
78 configuration error.";

/// Keeps SQLite databases healthy: prune old data, VACUUM, verified backups, on a schedule.
#[derive(Debug, Parser)]
#[command(name = "litekeeper", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Configuration file [default: /etc/litekeeper/litekeeper.toml as root, else
    /// $XDG_CONFIG_HOME/litekeeper/litekeeper.toml]
    #[arg(
        short,
        long,
        global = true,
        env = "LITEKEEPER_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub log: LogArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Where log lines go and how they look.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log destination: journald when stderr is the journal (systemd sets JOURNAL_STREAM),
    /// else stderr. Force one with journald|stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogTarget::Auto, value_name = "TARGET")]
    pub log_target: LogTarget,

    /// Format of log lines on stderr: human (default) or json (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, value_name = "FORMAT")]
    pub log_format: LogFormat,

    /// No progress lines and no info lines on stderr: warnings, errors and the result still
    /// show (the journal, when logs go there, still gets every event).
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogTarget {
    Auto,
    Journald,
    Stderr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every configured job on its schedule until SIGTERM (the systemd service).
    ///
    /// Speaks sd_notify (READY, STATUS, WATCHDOG), reloads the configuration on SIGHUP (a broken
    /// new file is logged and the old one kept) and stops gracefully on SIGTERM/SIGINT: running
    /// jobs stop at their next safe point and are recorded. One daemon per state_dir: a second
    /// one exits 75 naming the first's pid (`litekeeper run` beside the daemon is fine).
    ///
    /// Example: litekeeper daemon -c /etc/litekeeper/litekeeper.toml
    Daemon,

    /// Run one job on one database now, on the daemon's code path (systemd timers call this)
    ///
    /// Takes the database's lock first. If another job holds it, exits 75 naming the holder
    /// (on_busy = "skip") or waits for it (on_busy = "wait", or --wait).
    ///
    /// Examples:
    ///   litekeeper run chat backup
    ///   litekeeper run chat prune --dry-run
    ///   litekeeper run chat vacuum --wait 10m
    ///   litekeeper run tenant backup          (fleet "tenant-{stem}": every member)
    #[command(verbatim_doc_comment)]
    Run(RunArgs),

    /// Check the configuration and every database: reachable, writable, WAL, not corrupt
    ///
    /// Says for each database what is wrong and what to do (missing directory or file,
    /// permissions, not a database, corrupt, locked, I/O error, journal mode). Exits 1 when any
    /// database has a problem, 78 when the configuration itself is invalid.
    ///
    /// Examples:
    ///   litekeeper check
    ///   litekeeper check chat files
    #[command(verbatim_doc_comment)]
    Check(CheckArgs),

    /// Last and next run of every job, read from the state database (no daemon needed)
    ///
    /// Examples:
    ///   litekeeper status
    ///   litekeeper status --json | jq '.jobs[] | select(.last.outcome == "failed")'
    #[command(verbatim_doc_comment)]
    Status(StatusArgs),

    /// Next run times of every scheduled job, in the configured time zone and in UTC.
    ///
    /// Example: litekeeper schedule --count 5
    Schedule(ScheduleArgs),

    /// Backups on disk: list them with size, age, verification and what keeps them.
    #[command(subcommand)]
    Backups(BackupsCommand),

    /// Restore a database from a verified backup (to a new path, or in place)
    ///
    /// The backup's SHA-256 (from the manifest) and integrity are checked first. By default the
    /// restored copy is written to a new path (--to); --in-place replaces the live database
    /// under its lock, keeping the current file as `<db>.pre-restore-<time>`.
    ///
    /// Examples:
    ///   litekeeper restore chat --to /tmp/chat-restored.db
    ///   litekeeper restore chat chatbot-20260101-020000.db.zst --to /tmp/old.db
    ///   litekeeper restore chat --at "2026-12-06 14:05" --to /tmp/chat-1405.db
    ///   systemctl stop chatapp && litekeeper restore chat --in-place
    #[command(verbatim_doc_comment)]
    Restore(RestoreArgs),

    /// Restore drill: restore backups into a scratch directory, check them, time it
    ///
    /// For each picked copy ([database.drill] pick, or BACKUP): its SHA-256 against the
    /// manifest, then decompress and restore it (with its attached databases) through the
    /// same code as `restore --to`, integrity_check, foreign_key_check, page and row counts
    /// against the manifest, and each `assert` on a read-only connection. Never touches the
    /// live database or its lock. Prints per copy: source, age, phases with times, checks,
    /// verdict. Exit 0 when every copy passed, 65 when a copy failed its checks (it is marked
    /// `drill: failed` in `backups list`), 66 when there is no backup to drill, 73 when the
    /// scratch directory lacks space, 75 when another drill of the database runs.
    ///
    /// Examples:
    ///   litekeeper drill chat
    ///   litekeeper drill chat chatbot-20260101-020000.db.zst
    ///   litekeeper drill chat --from local
    ///   litekeeper drill tenant               (fleet "tenant-{stem}": every member)
    #[command(verbatim_doc_comment)]
    Drill(DrillArgs),

    /// Build a realistic sample (chat DB, blob DB, uploads) and run every job on it.
    ///
    /// Writes the sample and a config for it into DIR (default: a new temporary directory),
    /// then runs prune, vacuum and backup and prints what changed.
    ///
    /// Example: litekeeper demo /tmp/lk-demo
    Demo(DemoArgs),

    /// Write systemd drop-ins from the configuration: a timer schedule per database and job
    /// (cron as OnCalendar=, jitter as RandomizedDelaySec=) and ReadWritePaths= for the units.
    ///
    /// Without --out, writes to /etc/systemd/system (root) or, with --user, to
    /// ~/.config/systemd/user; then run `systemctl [--user] daemon-reload` and enable the
    /// timers, e.g. `systemctl enable --now litekeeper-backup@chat.timer`.
    ///
    /// Examples:
    ///   litekeeper systemd-units --out /tmp/units
    ///   litekeeper systemd-units --user
    #[command(name = "systemd-units")]
    SystemdUnits(UnitsArgs),

    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// Example: litekeeper completions bash > /usr/share/bash-completion/completions/litekeeper
    Completions(CompletionsArgs),

    /// Print the man page (roff) to stdout; packaging uses it.
    #[command(hide = true)]
    Manpage,
}

#[derive(Debug, Args)]
pub struct UnitsArgs {
    /// Directory to write into (default: the systemd unit directory for the user).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Units for `systemctl --user` (no User=, no system-only hardening); default directory
    /// ~/.config/systemd/user.
    #[arg(long)]
    pub user: bool,
    /// Also write the unit files themselves (service, timer templates), not only drop-ins:
    /// for installs without the package.
    #[arg(long)]
    pub with_units: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// A job kind as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JobArg {
    Prune,
    Vacuum,
    Backup,
    /// An incremental backup: a new point after the newest full backup (`incremental` in
    /// `[database.backup]`).
    Incremental,
    Drill,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Database name, as in `[[database]] name = "…"`, or a fleet's name without {stem}
    /// (`tenant` for `tenant-{stem}`: every current member, `max_concurrent_jobs` at a time).
    pub database: String,
    /// Job to run.
    #[arg(value_enum)]
    pub job: JobArg,
    /// Report what would be done, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// If the database is busy with another job, wait up to this long for it ("30s", "10m")
    /// instead of exiting 75. Without a value: wait as long as it takes.
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "forever")]
    pub wait: Option<String>,
}

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// Database name, or a fleet's name without {stem} (every current member).
    pub database: String,
    /// Backup file name (as listed by `backups list`; any file of its run); default: the
    /// copies [database.drill] pick chooses.
    pub backup: Option<String>,
    /// Drill from this source only ("local": the backup directory); default: every source in
    /// [database.drill] from.
    #[arg(long, value_name = "SOURCE")]
    pub from: Option<String>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Only these databases or fleets (a fleet's name without {stem}; default: all).
    pub databases: Vec<String>,
    /// An age identity file: check that it decrypts what each remote's encrypt_to encrypts
    /// (the key you would restore with; it is read here only, never stored).
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only these databases or fleets (a fleet's name without {stem}; default: all).
    pub databases: Vec<String>,
    /// Print JSON (a stable contract, documented in README.md).
    #[arg(long, conflicts_with = "check")]
    pub json: bool,
    /// Monitoring check (Nagios/Icinga plugin style): one line per problem, or one OK line,
    /// and exit 0 OK, 1 WARNING (last run failed or was interrupted, job never ran),
    /// 2 CRITICAL (no success within the max age), 3 UNKNOWN (configuration or state DB
    /// unreadable). These codes differ from every other command's.
    #[arg(long)]
    pub check: bool,
    /// With --check: the longest a job may go without a successful run, per job, e.g.
    /// "backup=26h,prune=8d". Default for a scheduled job: twice the longest gap between its
    /// scheduled times around now, plus its jitter; a job without a schedule is only
    /// age-checked when named here.
    #[arg(
        long,
        requires = "check",
        value_delimiter = ',',
        value_name = "JOB=DURATION"
    )]
    pub max_age: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// How many upcoming runs to show per job.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub count: usize,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for the sample (created; must be empty or not exist). Default: a new temp dir.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BackupsCommand {
    /// Every backup with time, age, size, compression, verification, SHA-256 prefix and the
    /// retention rules keeping it; totals per database. Works without the daemon.
    ///
    /// Examples:
    ///   litekeeper backups list
    ///   litekeeper backups list chat --json
    #[command(verbatim_doc_comment)]
    List(BackupsListArgs),

    /// Upload every pending off-site copy of a database now, oldest first (to every remote
    /// of the database, or to REMOTE). Takes the database's lock like a job.
    ///
    /// Examples:
    ///   litekeeper backups push chat
    ///   litekeeper backups push chat offsite
    ///   litekeeper backups push chat offsite --adopt   # this host replaces the old one
    #[command(verbatim_doc_comment)]
    Push(BackupsPushArgs),
}

#[derive(Debug, Args)]
pub struct BackupsPushArgs {
    /// Database name.
    pub database: String,
    /// Only this `[[remote]]`.
    pub remote: Option<String>,
    /// First make this host the owner of the database's copies on the remote(s), then push:
    /// for a host that replaces the one that wrote them (same data, new machine). That host's
    /// pushes are refused from then on.
    #[arg(long)]
    pub adopt: bool,
}

#[derive(Debug, Args)]
pub struct BackupsListArgs {
    /// Only this database or fleet (default: all with a backup section).
    pub database: Option<String>,
    /// Print JSON (a stable contract, documented in README.md).
    #[arg(long)]
    pub json: bool,
    /// List the off-site copies on this `[[remote]]` instead, each checked against the
    /// store: ok, missing, size-differs (damaged with --verify). Exit 65 when one is flagged.
    #[arg(long, value_name = "NAME")]
    pub remote: Option<String>,
    /// With --remote: read every copy back and compare its SHA-256 (downloads them all).
    #[arg(long, requires = "remote")]
    pub verify: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Database name, as in `[[database]] name = "…"`.
    pub database: String,
    /// Backup file name (as listed by `backups list`), a full backup or a delta (that point);
    /// default: the newest verified backup.
    #[arg(conflicts_with = "at")]
    pub backup: Option<String>,
    /// Restore the newest point at or before this time: "latest", "2026-12-06 14:05" (the
    /// configuration's timezone) or "2026-12-06T14:05:00Z". The newest full backup at or
    /// before it, then its incremental deltas up to that point; the image is checked
    /// against the SHA-256 recorded for the point.
    #[arg(long, value_name = "WHEN")]
    pub at: Option<String>,
    /// Write the restored database to this new path (must not exist).
    #[arg(long, value_name = "PATH", conflicts_with = "in_place")]
    pub to: Option<PathBuf>,
    /// Replace the live database (under its lock), keeping the current file as
    /// `<db>.pre-restore-<time>`. Stop the application first.
    #[arg(long)]
    pub in_place: bool,
    /// With --in-place: restore even if other processes have the database open.
    #[arg(long, requires = "in_place")]
    pub force: bool,
    /// Restore an off-site copy from this `[[remote]]` (BACKUP: the local file name it was
    /// made from; default: the newest copy there).
    #[arg(long, value_name = "REMOTE")]
    pub from: Option<String>,
    /// With --from: the age identity file that decrypts the copies.
    #[arg(long, value_name = "FILE", requires = "from")]
    pub identity: Option<PathBuf>,
}
