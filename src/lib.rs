//! litekeeper keeps SQLite databases healthy in production: it prunes old and orphaned data,
//! reclaims space with VACUUM and takes verified online backups, on a schedule, under systemd,
//! reporting every run to the journal.
//!
//! # Layout
//! - `archive`: backup directories: file names, manifest, atomic writes, leftovers.
//! - `chain`: incremental backup chains: delta files, page-hash indexes, applying points.
//! - `remote`: off-site copies in object storage: client, zstd + age upload pipeline, remote
//!   manifest.
//! - `restore`: restoring a verified backup to a new path or in place (the swap protocol,
//!   WAL fold, open-file scan); `commands::restore` only parses and prints.
//! - `privileges`: as root, acting as the owner of `state_dir`.
//! - `cli`: clap types for the command line (no behaviour).
//! - `commands`: one module per subcommand (`daemon`, `run`, `check`, `status`, `schedule`, `demo`).
//! - `config`: loading (`toml` + environment via `config`), raw serde types, validation into
//!   the immutable domain `model`.
//! - `domain`: the shared vocabulary: job kinds, triggers, outcomes, reports, job figures,
//!   exit codes; imports nothing from the crate.
//! - `demo`: the sample chat app `litekeeper demo` builds and maintains.
//! - `schedule`: cron parsing, next/previous run in a time zone, jitter; pure.
//! - `scheduler`: the daemon's timer (tokio-cron-scheduler), per-database queues, catch-up, shutdown.
//! - `jobs`: the one execute path (lock → blocking thread → report) and one module per job.
//! - `sqlite`: connection pools, pragmas, REGEXP, slow-statement log, diagnosis.
//! - `lock`: per-database flock files naming their holder.
//! - `db_files`: a database's main file and its `-wal`, `-shm`, `-journal` (`DbFiles`).
//! - `pidfile`: the daemon's lock on its `state_dir` (one daemon per state directory).
//! - `state`: the state database: every table, migration and row type; run history, totals.
//! - `metrics`: the Prometheus textfile written after every run, from what `state` returns.
//! - `logging`: journald or stderr, event fields and MESSAGE_IDs.
//! - `notify`: sd_notify messages and the watchdog.
//! - `progress`: live progress lines on a terminal (nothing elsewhere).
//! - `pings`: health pings (healthchecks.io style) on a job's start, success and failure.
//! - `paths`: default locations for root and for users.
//! - `retention`: which backups to keep and why; pure.
//! - `units`: cron as `OnCalendar=`, and the systemd drop-ins `systemd-units` writes.
//! - `safe_fs`: directory handles that never follow symlinks; opening only regular files.
//! - `exit`: exit codes and the error type that carries them to `main`.

#![warn(unreachable_pub)]

pub mod archive;
pub(crate) mod chain;
pub mod cli;
pub mod commands;
pub mod config;
pub(crate) mod db_files;
pub(crate) mod demo;
pub mod domain;
pub mod exit;
pub mod jobs;
pub mod lock;
pub mod logging;
pub(crate) mod metrics;
pub(crate) mod notify;
pub mod paths;
pub(crate) mod pidfile;
pub(crate) mod pings;
pub(crate) mod privileges;
pub(crate) mod progress;
pub(crate) mod remote;
pub(crate) mod restore;
pub(crate) mod retention;
pub(crate) mod safe_fs;
pub mod schedule;
pub mod scheduler;
pub(crate) mod sqlite;
pub mod state;
pub mod units;
