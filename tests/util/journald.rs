//! A private `systemd-journald` (own mount namespace with a tmpfs `/run`, journal files in a
//! temp dir, as `../shared/recipes/journald-isolated.sh` does), for tests of what the real
//! binary logs to the journal; `journalctl --directory … -o json` reads the entries back.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{is_root, scrub, TestEnv};

pub const JOURNALD: &str = "/lib/systemd/systemd-journald";

/// How long to wait for entries to show up in `journalctl`.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A private journald; killed, and its directory removed, on drop.
pub struct Journald {
    child: Child,
    pub dir: tempfile::TempDir,
}

impl Journald {
    /// Start one and wait until it has written a first entry. `None` (with the reason printed)
    /// when this machine cannot run it: not root, or no systemd-journald.
    pub fn start() -> Option<Journald> {
        if !is_root() {
            eprintln!("SKIPPED: a private journald needs root (mount namespace, tmpfs)");
            return None;
        }
        if !Path::new(JOURNALD).exists() {
            eprintln!("SKIPPED: {JOURNALD} is not installed");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("lk-journald-")
            .tempdir()
            .unwrap();
        let t = dir.path();
        std::fs::create_dir(t.join("run")).unwrap();
        std::fs::create_dir(t.join("log")).unwrap();
        std::fs::write(
            t.join("journald.conf"),
            "[Journal]\nStorage=volatile\nReadKMsg=no\nAudit=no\nForwardToSyslog=no\n\
             ForwardToWall=no\nRateLimitBurst=0\n",
        )
        .unwrap();
        let out = std::fs::File::create(t.join("journald.out")).unwrap();
        // unshare and sh exec, so the child's pid is journald's.
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                "mount -n -t tmpfs -o mode=755 tmpfs /run &&
                 mkdir -p /run/systemd/journal /run/log/journal &&
                 mount -n --bind \"$1/run\" /run/systemd/journal &&
                 mount -n --bind \"$1/log\" /run/log/journal &&
                 mount -n --bind \"$1/journald.conf\" /etc/systemd/journald.conf &&
                 SYSTEMD_LOG_TARGET=console exec \"$2\"",
            )
            .args([Path::new("sh"), t, Path::new(JOURNALD)])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("cannot run unshare");
        let j = Journald { child, dir };
        let socket = j.dir.path().join("run/socket");
        let deadline = Instant::now() + PATIENCE;
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "journald did not create its socket; its output:\n{}",
                j.own_output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        j.send_marker("journald-ready");
        j.wait_for("the first entry", |all| has_marker(all, "journald-ready"));
        Some(j)
    }

    pub fn own_output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("journald.out")).unwrap_or_default()
    }

    /// Send an entry straight to the native socket from outside the namespace. Datagrams on
    /// that socket are handled in order, so once the marker is read back, every entry sent
    /// there before it has been stored too.
    pub fn send_marker(&self, text: &str) {
        let payload = format!("MESSAGE={text}\nSYSLOG_IDENTIFIER=journal-test\n");
        UnixDatagram::unbound()
            .unwrap()
            .send_to(payload.as_bytes(), self.dir.path().join("run/socket"))
            .expect("cannot send to the private journald");
    }

    /// Every entry stored so far, oldest first.
    pub fn entries(&self) -> Vec<Value> {
        let out = Command::new("journalctl")
            .arg("--directory")
            .arg(self.dir.path().join("log"))
            .args(["-o", "json", "--all", "--no-pager"])
            .output()
            .expect("cannot run journalctl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Poll `journalctl` until `done` holds for the entries (at most `PATIENCE`).
    pub fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let all = self.entries();
            if done(&all) {
                return all;
            }
            if Instant::now() > deadline {
                panic!(
                    "no {what} in the journal after {PATIENCE:?}; entries:\n{}\njournald:\n{}",
                    dump(&all),
                    self.own_output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `nsenter` into journald's mount namespace (where /run/systemd/journal/socket is
    /// ours) running `program`, with the environment scrubbed as `TestEnv` does.
    pub fn in_namespace(&self, env: &TestEnv, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("--target")
            .arg(self.child.id().to_string())
            .args(["--mount", "--", program]);
        scrub(&mut c, env.dir.path(), |k| k.starts_with("WATCHDOG_"));
        c.stdin(Stdio::null());
        c
    }

    /// The real binary with `-c <config>` inside the namespace (nsenter execs it: same pid).
    pub fn litekeeper(&self, env: &TestEnv) -> Command {
        let mut c = self.in_namespace(env, bin().to_str().unwrap());
        c.arg("-c").arg(env.config_path());
        c
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // then `dir` is removed: the bind mounts died with the namespace.
    }
}

pub fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("litekeeper")
}

/// A field as a string (journalctl writes every text field as a JSON string).
pub fn field<'a>(e: &'a Value, name: &str) -> Option<&'a str> {
    e.get(name).and_then(Value::as_str)
}

pub fn has_marker(all: &[Value], text: &str) -> bool {
    all.iter().any(|e| field(e, "MESSAGE") == Some(text))
}

pub fn dump(entries: &[Value]) -> String {
    entries
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
