//! Test harness: a fresh temp directory per test, a config written into it, and the real
//! `litekeeper` binary run against it (assert_cmd).
//!
//! - this file: [`TestEnv`] (temp dir, config builder, commands), small readers of files and
//!   databases;
//! - `process`: background processes killed on drop ([`Bg`], [`KillOnDrop`]), [`wait_for`];
//! - `state`: the run history the binary wrote ([`Run`]);
//! - `notify`: a fake service manager's `NOTIFY_SOCKET` ([`Notify`]);
//! - `journald`: a private systemd-journald ([`Journald`]);
//! - `nobody`: running as uid 65534 ([`unprivileged`], [`give_to_nobody`], …);
//! - `files`: FIFOs, file ages, sidecar paths, output as text;
//! - `fixtures`: databases and configurations several files start from;
//! - `cli`: the binary run to its end ([`TestEnv::run_code`], [`TestEnv::restore_to`]), file
//!   digests.

#![allow(dead_code, unused_imports)]

mod cli;
mod files;
mod fixtures;
mod journald;
mod nobody;
mod notify;
mod process;
mod state;

pub use cli::*;
pub use files::*;
pub use fixtures::*;
pub use journald::*;
pub use nobody::*;
pub use notify::*;
pub use process::*;
pub use state::*;

use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use std::time::SystemTime;

use assert_cmd::Command;
use rusqlite::Connection;

pub struct TestEnv {
    pub dir: tempfile::TempDir,
}

impl TestEnv {
    pub fn new() -> Self {
        TestEnv {
            dir: tempfile::Builder::new()
                .prefix("lk-test-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("litekeeper.toml")
    }

    /// A `[daemon]` section with state and lock dirs inside the temp dir and a short busy
    /// timeout; append `extra` lines to it (e.g. `timezone = "UTC"`).
    pub fn daemon_section(&self, extra: &str) -> String {
        format!(
            "[daemon]\nstate_dir = \"{}\"\nlock_dir = \"{}\"\nbusy_timeout = \"300ms\"\n{extra}\n",
            self.path("state").display(),
            self.path("locks").display()
        )
    }

    /// Write the configuration file verbatim and return its path.
    pub fn write_config(&self, text: &str) -> PathBuf {
        let p = self.config_path();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A `[[database]]` stanza for `name` at `path` with the given extra lines.
    pub fn database_section(name: &str, path: &Path, extra: &str) -> String {
        format!(
            "[[database]]\nname = \"{name}\"\npath = \"{}\"\n{extra}\n",
            path.display()
        )
    }

    /// The real binary with `-c <config>`, a clean environment for litekeeper's variables.
    pub fn cmd(&self) -> Command {
        Command::from_std(self.std_cmd())
    }

    /// The same, as a std Command (for spawning long-running processes).
    pub fn std_cmd(&self) -> StdCommand {
        let mut c = StdCommand::new(assert_cmd::cargo::cargo_bin("litekeeper"));
        self.scrub(&mut c);
        c.arg("-c").arg(self.config_path());
        c
    }

    fn scrub(&self, c: &mut StdCommand) {
        scrub(c, self.dir.path(), |k| {
            k.ends_with("_DIRECTORY") || k.starts_with("WATCHDOG_")
        });
    }

    /// The real binary in the temp dir without `-c` and without the caller's LITEKEEPER,
    /// NOTIFY_SOCKET and JOURNAL_STREAM variables.
    pub fn bare_cmd(&self) -> StdCommand {
        let mut c = StdCommand::new(assert_cmd::cargo::cargo_bin("litekeeper"));
        scrub(&mut c, self.dir.path(), |_| false);
        c
    }

    /// `litekeeper -c CONFIG ARGS`, which must exit 0 (else fails with its output).
    pub fn run_ok(&self, args: &[&str]) -> std::process::Output {
        self.run_code(args, 0)
    }

    /// `litekeeper systemd-units --out OUT` with the variables `vars`, run to its end.
    pub fn systemd_units(&self, out: &Path, vars: &[(&str, &str)]) -> std::process::Output {
        let mut c = self.cmd();
        c.args(["systemd-units", "--out"]).arg(out);
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    /// `status --json`, parsed.
    pub fn status_json(&self) -> serde_json::Value {
        let o = self.cmd().args(["status", "--json"]).output().unwrap();
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", both(&o)))
    }

    /// The databases `status --json` lists, in its order.
    pub fn status_databases(&self) -> Vec<String> {
        self.status_json()["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["database"].as_str().unwrap().to_string())
            .collect()
    }

    /// A configuration to write: [`TestEnv::daemon_section`] with `daemon_extra`, then what
    /// the builder adds.
    pub fn config(&self, daemon_extra: &str) -> ConfigText<'_> {
        ConfigText {
            env: self,
            text: self.daemon_section(daemon_extra),
        }
    }

    /// Create an SQLite database file at `rel` and run `sql` in it.
    pub fn sqlite(&self, rel: &str, sql: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        let c = Connection::open(&p).unwrap();
        c.execute_batch(sql).unwrap();
        p
    }
}

/// A configuration being built (see [`TestEnv::config`]).
pub struct ConfigText<'a> {
    env: &'a TestEnv,
    text: String,
}

impl ConfigText<'_> {
    /// A `[[database]]` stanza (see [`TestEnv::database_section`]).
    pub fn database(mut self, name: &str, path: &Path, extra: &str) -> Self {
        self.text
            .push_str(&TestEnv::database_section(name, path, extra));
        self
    }

    /// Any text, as is.
    pub fn text(mut self, more: &str) -> Self {
        self.text.push_str(more);
        self
    }

    /// Write it as the configuration file and return its path.
    pub fn write(self) -> PathBuf {
        self.env.write_config(&self.text)
    }
}

/// A `[database.backup]` section writing into `dir`.
pub fn backup_into(dir: &Path) -> String {
    format!("[database.backup]\ndir = \"{}\"", dir.display())
}

/// Removes litekeeper's variables, `NOTIFY_SOCKET`, `JOURNAL_STREAM` and those `also` names
/// from `c`'s environment; no colours, TZ=UTC, working directory `dir`.
pub fn scrub(c: &mut StdCommand, dir: &Path, also: impl Fn(&str) -> bool) {
    for (k, _) in std::env::vars() {
        if k.starts_with("LITEKEEPER") || k == "NOTIFY_SOCKET" || k == "JOURNAL_STREAM" || also(&k)
        {
            c.env_remove(k);
        }
    }
    c.env("NO_COLOR", "1").env("TZ", "UTC").current_dir(dir);
}

pub const DAY: i64 = 86_400;

/// Now, in whole seconds since the epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The names in a directory, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The tables of a database, by name.
pub fn table_names(c: &Connection) -> Vec<String> {
    c.prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// True when the tests run as root; otherwise says the test is skipped and why (`why`: what
/// it needs root for).
pub fn root_or_skip(why: &str) -> bool {
    if !is_root() {
        eprintln!("skipped: {why}");
    }
    is_root()
}

/// `sh -c script` in a private mount namespace (`unshare --mount`), run to its end: for a small
/// tmpfs mounted only there.
pub fn in_mount_namespace(script: &str, vars: &[(&str, &str)]) -> std::process::Output {
    let mut c = StdCommand::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("NO_COLOR", "1");
    for (k, v) in vars {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// One number from a query on the database at `db`.
pub fn query_i64(db: &Path, sql: &str) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

/// The first column of every row of a query on the database at `db`, as numbers.
pub fn query_ids(db: &Path, sql: &str) -> Vec<i64> {
    let c = Connection::open(db).unwrap();
    let mut st = c.prepare(sql).unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// stdout + stderr of an output, for assertion messages.
pub fn both(o: &std::process::Output) -> String {
    format!(
        "status: {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// True when the tests run as root (needed for private journald and some permission tests:
/// root bypasses file permissions, so chmod-based tests run as another user or are skipped).
pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Whether `strace` runs here (tests that inject faults or count reads with it). Under CI
/// (`CI` set: `.ci/tools` installs it) a missing strace fails the test instead of skipping it.
pub fn have_strace() -> bool {
    let found = std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "strace is not installed (CI runs .ci/tools, which installs it)"
        );
        eprintln!("skipped: strace is not installed");
    }
    found
}
