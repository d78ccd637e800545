//! Test harness: a fresh temp directory per test, a config written into it, and the real
//! `litekeeper` binary run against it (assert_cmd).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

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
        for (k, _) in std::env::vars() {
            if k.starts_with("LITEKEEPER")
                || k == "NOTIFY_SOCKET"
                || k.ends_with("_DIRECTORY")
                || k == "JOURNAL_STREAM"
                || k.starts_with("WATCHDOG_")
            {
                c.env_remove(k);
            }
        }
        c.env("NO_COLOR", "1")
            .env("TZ", "UTC")
            .current_dir(self.dir.path());
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
