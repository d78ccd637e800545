//! Processes a test starts, killed and reaped when the test ends (also by a failed assertion),
//! and polling with a time limit.

use std::io::{BufRead, BufReader};
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::{Child, Command as StdCommand, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::TestEnv;

/// A child process killed and reaped when dropped.
pub struct KillOnDrop(pub Child);

impl Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `litekeeper` running in the background: stdin and stdout null, stderr into a file of the
/// temp dir (a file, not a pipe: an undrained pipe would block its logging). Killed when dropped.
pub struct Bg {
    child: KillOnDrop,
    log: PathBuf,
}

impl TestEnv {
    /// `litekeeper ARGS` in the background with the variables `vars`; its stderr goes to
    /// `<first arg>.log` in the temp dir (`daemon.log`, then `daemon-2.log`, …).
    pub fn spawn(&self, args: &[&str], vars: &[(&str, &str)]) -> Bg {
        let stem = args.first().copied().unwrap_or("litekeeper");
        let log = (1..)
            .map(|n| match n {
                1 => self.path(&format!("{stem}.log")),
                n => self.path(&format!("{stem}-{n}.log")),
            })
            .find(|p| !p.exists())
            .unwrap();
        let mut cmd = self.std_cmd();
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        Bg {
            child: KillOnDrop(cmd.spawn().unwrap()),
            log,
        }
    }

    /// `litekeeper daemon` in the background (see [`TestEnv::spawn`]).
    pub fn daemon(&self, vars: &[(&str, &str)]) -> Bg {
        self.spawn(&["daemon"], vars)
    }
}

impl Bg {
    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: sending a signal to our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Its exit status, waiting up to `timeout` (then fails, with its log).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}; stderr:\n{}",
                self.log.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and its exit status once it has stopped.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.child.wait().unwrap()
    }

    /// SIGTERM, and its exit status once it has stopped, waiting up to `limit` (see
    /// [`Bg::wait_exit`]).
    pub fn stop(&mut self, limit: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(limit)
    }

    /// Polls `cond` every 20 ms until it holds, for up to `limit`; then fails naming `what`,
    /// with its log.
    pub fn wait_until(&self, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}; its stderr:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

/// Polls `f` every 100 ms until it gives a value, for up to `limit`; then fails naming `what`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `cond` every 100 ms until it holds, for up to `limit`; then fails naming `what`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    wait_for(what, limit, || cond().then_some(()))
}

/// `cmd` started with its stdout piped, and the first line it prints (a holder of a lock or an
/// open file says it is ready). Killed when dropped.
pub fn start_holder(mut cmd: StdCommand) -> (KillOnDrop, String) {
    let child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    let mut child = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line)
}
