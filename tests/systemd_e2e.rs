//! End to end on a real systemd: the built `.deb` installed in a throw-away container whose
//! PID 1 is the host's own systemd (tests/e2e/sd-container.sh: fresh namespaces on a tmpfs
//! overlay of `/`, nothing written to the host).
//!
//! System mode: package install (user, directories, catalog, nothing enabled), the daemon
//! starting with the shipped example configuration, then with a WAL database: `active
//! (running)` with its STATUS= text, a `LITEKEEPER_OUTCOME=ok` backup in the journal, `systemctl
//! reload` with a new schedule taking effect, the generated timer schedule, a timer's oneshot
//! service writing a backup, a clean stop, and `dpkg --purge` stopping the daemon and keeping
//! the backups. User mode: `user@UID.service` for a test user, `systemd-units --user
//! --with-units`, the user daemon's backups in `journalctl --user`.
//!
//! The `.deb` comes from `packaging/build-deb.sh` (`.ci/run` builds it before the tests); set
//! LITEKEEPER_E2E_DEB to use another file. Without it the tests skip, except under CI (`CI`
//! set), where a missing package is a failure. Without root, namespaces or cgroup2 they skip
//! with the reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::Value;

use crate::util::{both, is_root, wait_for};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/sd-container.sh");
const TMPFILES: &str = include_str!("../packaging/litekeeper.tmpfiles");
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const MSG_FINISHED: &str = "5f8553995df44ab8b04d65809b80d3ac";
const MSG_RELOADED: &str = "a0656abaceb34c6a850861fa86b5f7a7";
const MSG_STOPPING: &str = "a746aea2ab3349909bef3a02d8afa6fa";
const MSG_DAEMON_STARTED: &str = "e9ffaac7ad6542be99d3843d7e596378";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why this machine cannot boot the container (root, tools, cgroup2, namespaces), or None.
fn missing_prerequisite() -> Option<String> {
    if !is_root() {
        return Some("needs root (boots systemd as PID 1 in new namespaces)".into());
    }
    for tool in ["bash", "unshare", "nsenter", "setpriv", "timeout", "dpkg"] {
        if !have(tool) {
            return Some(format!("{tool} is not installed"));
        }
    }
    if !Path::new("/lib/systemd/systemd").exists() {
        return Some("/lib/systemd/systemd is not installed (apt-get install systemd)".into());
    }
    let cg2 = Command::new("stat")
        .args(["-f", "-c", "%T", "/sys/fs/cgroup"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "cgroup2fs")
        .unwrap_or(false);
    if !cg2 && !Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        return Some("no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified".into());
    }
    let o = Command::new("unshare")
        .args([
            "--pid", "--fork", "--mount", "--uts", "--ipc", "--net", "--cgroup", "true",
        ])
        .output();
    match o {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "cannot create pid/mount/uts/ipc/net/cgroup namespaces: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run unshare: {e}")),
    }
}

/// The newest `litekeeper_<this version>-*.deb` in a `debian/` directory next to the test
/// binary's target directory (where `cargo deb` writes it), or LITEKEEPER_E2E_DEB.
fn find_deb() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LITEKEEPER_E2E_DEB") {
        return Some(PathBuf::from(p));
    }
    let prefix = format!("litekeeper_{}-", env!("CARGO_PKG_VERSION"));
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        dirs.extend(exe.ancestors().skip(1).map(|d| d.join("debian")));
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(t).join("debian"));
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debian"));
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let newest = rd
            .filter_map(|e| e.ok())
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(&prefix) && n.ends_with(".deb")
            })
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .max();
        if let Some((_, p)) = newest {
            return Some(p);
        }
    }
    None
}

/// Warn when a packaged source is newer than the package (a stale `.deb` tests old code).
fn warn_if_stale(deb: &Path) {
    let Ok(built) = deb.metadata().and_then(|m| m.modified()) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut stack: Vec<PathBuf> = ["src", "systemd", "packaging", "config", "Cargo.toml"]
        .iter()
        .map(|p| root.join(p))
        .collect();
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        } else if p
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|m| m > built)
        {
            eprintln!(
                "warning: {} is newer than {}: rebuild with packaging/build-deb.sh",
                p.display(),
                deb.display()
            );
            return;
        }
    }
}

/// The package to test, or None after printing why the test skips. Panics under CI when the
/// package is missing.
fn prerequisites(test: &str) -> Option<PathBuf> {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipped {test}: {why}");
        return None;
    }
    match find_deb() {
        Some(p) if p.is_file() => {
            warn_if_stale(&p);
            Some(p)
        }
        other => {
            let what = match other {
                Some(p) => format!("{} does not exist", p.display()),
                None => format!(
                    "no litekeeper_{}-*.deb found (build it with packaging/build-deb.sh, or set LITEKEEPER_E2E_DEB)",
                    env!("CARGO_PKG_VERSION")
                ),
            };
            assert!(!in_ci(), "{test}: CI is set but {what}");
            eprintln!("skipped {test}: {what}");
            None
        }
    }
}

/// A booted container; stopped (and its directory removed) on drop. When the test panics, drop
/// first prints `systemctl status` and the journal of the units named in `diag_units`.
struct Container {
    dir: PathBuf,
    pid1: String,
    diag_units: Vec<String>,
    diag_user: Option<(String, u32)>,
}

impl Container {
    fn boot() -> Container {
        let dir = tempfile::Builder::new()
            .prefix("lk-sdct.")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        let o = Command::new("timeout")
            .args(["60", "bash", SCRIPT, "start"])
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let pid1 = std::fs::read_to_string(dir.join("pid1"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let c = Container {
            dir,
            pid1,
            diag_units: vec![],
            diag_user: None,
        };
        assert!(
            o.status.success() && !c.pid1.is_empty(),
            "the container did not boot: {}",
            both(&o)
        );
        c
    }

    fn share(&self) -> PathBuf {
        self.dir.join("share")
    }

    /// `sh -c script` as root inside, with a clean environment.
    fn sh(&self, script: &str) -> Output {
        Command::new("timeout")
            .args(["-k", "5", "60", "nsenter", "-t", &self.pid1, "-a", "--"])
            .args(["sh", "-c", script])
            .env_clear()
            .env("PATH", PATH)
            .env("LANG", "C.UTF-8")
            .env("SYSTEMD_COLORS", "0")
            .env("SYSTEMD_PAGER", "cat")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Run `script`, require success, return stdout.
    fn ok(&self, script: &str) -> String {
        let o = self.sh(script);
        assert!(o.status.success(), "{script}\n{}", both(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `sh -c script` as `user` with the user manager's XDG_RUNTIME_DIR.
    fn user_sh(&self, user: &str, uid: u32, script: &str) -> Output {
        self.sh(&format!(
            "exec runuser -u {user} -- env HOME=/home/{user} USER={user} XDG_RUNTIME_DIR=/run/user/{uid} sh -c {}",
            shell_quote(script)
        ))
    }

    fn user_ok(&self, user: &str, uid: u32, script: &str) -> String {
        let o = self.user_sh(user, uid, script);
        assert!(o.status.success(), "({user}) {script}\n{}", both(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// One property of a system unit (`systemctl show -P`).
    fn prop(&self, unit: &str, prop: &str) -> String {
        self.ok(&format!("systemctl show -P {prop} {unit}"))
            .trim()
            .to_string()
    }

    /// Journal entries (`journalctl -o json ARGS`) as JSON objects.
    fn journal(&self, args: &str) -> Vec<Value> {
        self.ok(&format!("journalctl -o json --no-pager {args}"))
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn dump(&self) {
        let mut script =
            String::from("echo '--- systemctl --failed'; systemctl --failed --no-pager; ");
        for u in &self.diag_units {
            script.push_str(&format!(
                "echo '--- systemctl status {u}'; systemctl status --no-pager -l {u}; \
                 echo '--- journalctl -u {u}'; journalctl --no-pager -u {u} -n 80; "
            ));
        }
        if let Some((user, uid)) = &self.diag_user {
            script.push_str(&format!(
                "echo '--- user {user}'; runuser -u {user} -- env XDG_RUNTIME_DIR=/run/user/{uid} \
                 systemctl --user status --no-pager -l 'litekeeper*'; \
                 journalctl --no-pager _UID={uid} -n 60; "
            ));
        }
        script.push_str("echo '--- journalctl -n 40'; journalctl --no-pager -n 40");
        let o = self.sh(&script);
        eprintln!(
            "=== container diagnostics\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.pid1.is_empty() {
            self.dump();
        }
        let o = Command::new("timeout")
            .args(["60", "bash", SCRIPT, "stop"])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output();
        if let Ok(o) = &o {
            let out = String::from_utf8_lossy(&o.stdout);
            if out.contains("WARN") {
                eprintln!("{out}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn field<'a>(entry: &'a Value, name: &str) -> &'a str {
    entry.get(name).and_then(Value::as_str).unwrap_or("")
}

/// A WAL database with a few rows, written on the host into the shared directory.
fn sample_db(path: &Path) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE note(id INTEGER PRIMARY KEY, body TEXT NOT NULL);
         INSERT INTO note(body) VALUES ('one'), ('two'), ('three');",
    )
    .unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

fn backup_config(path: &str, dir: &str, schedule: &str) -> String {
    format!(
        "[daemon]\ntimezone = \"UTC\"\n\n[[database]]\nname = \"app\"\npath = \"{path}\"\n\n\
         [database.backup]\nschedule = \"{schedule}\"\ndir = \"{dir}\"\nkeep = {{ last = 3 }}\n"
    )
}

fn install_package(c: &Container, deb: &Path) {
    std::fs::copy(deb, c.share().join("litekeeper.deb")).unwrap();
    // man-db's trigger (rebuilding the whole man index, ~5 s) is off, as debconf's
    // man-db/auto-update=false does; --force-confnew in case the host has a changed config.
    c.ok("rm -f /var/lib/man-db/auto-update && dpkg --force-confnew -i /host/litekeeper.deb");
}

#[test]
fn system_service_from_the_deb() {
    let Some(deb) = prerequisites("system_service_from_the_deb") else {
        return;
    };
    let t0 = Instant::now();
    let mut c = Container::boot();
    c.diag_units = vec![
        "litekeeper.service".into(),
        "litekeeper-backup@app.service".into(),
    ];
    install_package(&c, &deb);

    // The package: system user, directories as tmpfiles.d says, catalog, nothing enabled.
    let passwd = c.ok("getent passwd litekeeper");
    assert!(passwd.contains(":/var/lib/litekeeper:"), "{passwd}");
    let dirs: Vec<(String, String)> = TMPFILES
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&"d")).then(|| {
                let mode = f[2].trim_start_matches('0');
                (f[1].to_string(), format!("{mode} {}:{}", f[3], f[4]))
            })
        })
        .collect();
    assert_eq!(dirs.len(), 3, "{TMPFILES}");
    let stat = |c: &Container| {
        dirs.iter()
            .map(|(p, _)| c.ok(&format!("stat -c '%a %U:%G' {p}")).trim().to_string())
            .collect::<Vec<_>>()
    };
    let want: Vec<String> = dirs.iter().map(|(_, w)| w.clone()).collect();
    assert_eq!(stat(&c), want, "directories after install: {dirs:?}");
    let enabled = c.sh("systemctl is-enabled litekeeper.service");
    assert_eq!(String::from_utf8_lossy(&enabled.stdout).trim(), "disabled");
    let catalog = c.ok(&format!("journalctl --list-catalog {MSG_DAEMON_STARTED}"));
    assert!(catalog.contains("litekeeper daemon started"), "{catalog}");
    c.ok("test -s /usr/share/man/man1/litekeeper.1.gz && test -s /usr/share/bash-completion/completions/litekeeper");

    // The shipped example configuration names databases this machine does not have: the
    // daemon still starts (its jobs will fail and say so).
    c.ok("systemctl start litekeeper.service");
    assert_eq!(c.prop("litekeeper.service", "SubState"), "running");
    let status = c.prop("litekeeper.service", "StatusText");
    assert!(status.starts_with("idle; next: "), "{status}");
    c.ok("systemctl stop litekeeper.service");
    // StateDirectoryMode=/RuntimeDirectoryMode= and tmpfiles.d agree (no mode flip-flop).
    assert_eq!(
        stat(&c),
        want,
        "directories after the service ran: {dirs:?}"
    );

    // A WAL database of the app's user... here owned by litekeeper; backups every 2 seconds to
    // a directory that does not exist yet (the job creates it under /var/backups/litekeeper).
    sample_db(&c.share().join("app.db"));
    let db = "/var/lib/litekeeper-e2e/app.db";
    let backups = "/var/backups/litekeeper/app";
    std::fs::write(
        c.share().join("litekeeper.toml"),
        backup_config(db, backups, "*/2 * * * * *"),
    )
    .unwrap();
    c.ok(&format!(
        "install -d -o litekeeper -g litekeeper -m 0750 /var/lib/litekeeper-e2e && \
         install -o litekeeper -g litekeeper -m 0640 /host/app.db {db} && \
         install -m 0644 /host/litekeeper.toml /etc/litekeeper/litekeeper.toml"
    ));
    let check = c.ok("litekeeper check");
    assert!(check.contains("0 error(s)"), "{check}");
    let units = c.ok("litekeeper systemd-units && systemctl daemon-reload");
    assert!(
        units.contains("/etc/systemd/system/litekeeper.service.d/paths.conf"),
        "{units}"
    );
    let paths = c.ok("cat /etc/systemd/system/litekeeper.service.d/paths.conf");
    assert!(
        paths.contains("ReadWritePaths=\"-/var/lib/litekeeper-e2e\"\n"),
        "{paths}"
    );

    c.ok("systemctl start litekeeper.service");
    let st = c.ok("systemctl status --no-pager litekeeper.service");
    assert!(st.contains("active (running)"), "{st}");
    let status = c.prop("litekeeper.service", "StatusText");
    assert!(
        status.contains("backup app"),
        "StatusText names the next job: {status}"
    );
    let main_pid = c.prop("litekeeper.service", "MainPID");

    let ok = wait_for(
        "a LITEKEEPER_OUTCOME=ok backup in journalctl -u litekeeper",
        Duration::from_secs(10),
        || {
            c.journal("-u litekeeper.service LITEKEEPER_OUTCOME=ok")
                .into_iter()
                .next()
        },
    );
    assert_eq!(field(&ok, "LITEKEEPER_JOB"), "backup", "{ok}");
    assert_eq!(field(&ok, "LITEKEEPER_DATABASE"), "app", "{ok}");
    assert_eq!(field(&ok, "MESSAGE_ID"), MSG_FINISHED, "{ok}");
    assert_eq!(field(&ok, "LITEKEEPER_VERIFY"), "quick", "{ok}");
    let path = field(&ok, "LITEKEEPER_BACKUP_PATH");
    assert!(path.starts_with(&format!("{backups}/app-")), "{ok}");
    let owner = c.ok(&format!("stat -c '%U %a' {path}"));
    assert_eq!(owner.trim(), "litekeeper 600", "{path}");

    // Reload with a yearly schedule: the next run moves to 1 January, the process stays.
    std::fs::write(
        c.share().join("litekeeper.toml"),
        backup_config(db, backups, "0 0 1 1 *"),
    )
    .unwrap();
    c.ok("install -m 0644 /host/litekeeper.toml /etc/litekeeper/litekeeper.toml && systemctl reload litekeeper.service");
    let status = wait_for(
        "StatusText with the new schedule (next run on 1 January)",
        Duration::from_secs(5),
        || {
            let s = c.prop("litekeeper.service", "StatusText");
            s.contains("-01-01 00:00:00").then_some(s)
        },
    );
    assert!(status.starts_with("idle; next: backup app at "), "{status}");
    assert_eq!(c.prop("litekeeper.service", "MainPID"), main_pid);
    assert_eq!(c.prop("litekeeper.service", "SubState"), "running");
    let reloaded = c.journal(&format!("-u litekeeper.service MESSAGE_ID={MSG_RELOADED}"));
    assert_eq!(reloaded.len(), 1, "one reload event: {reloaded:?}");
    // The 2-second schedule is gone: no new runs (a run in flight at the reload may finish).
    std::thread::sleep(Duration::from_millis(300));
    let runs = c
        .journal("-u litekeeper.service LITEKEEPER_OUTCOME=ok")
        .len();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        c.journal("-u litekeeper.service LITEKEEPER_OUTCOME=ok")
            .len(),
        runs,
        "backups kept running on the old schedule after the reload"
    );

    // The timer drop-in follows the configuration.
    c.ok("litekeeper systemd-units >/dev/null && systemctl daemon-reload");
    let cal = c.prop("litekeeper-backup@app.timer", "TimersCalendar");
    assert!(cal.contains("OnCalendar=*-01-01 00:00:00 UTC"), "{cal}");

    // A timer's service: one backup run under its own hardened unit, beside the daemon.
    c.ok("systemctl start litekeeper-backup@app.service");
    assert_eq!(c.prop("litekeeper-backup@app.service", "Result"), "success");
    let one = c.journal("_SYSTEMD_UNIT=litekeeper-backup@app.service LITEKEEPER_OUTCOME=ok");
    assert_eq!(one.len(), 1, "{one:?}");
    let path = field(&one[0], "LITEKEEPER_BACKUP_PATH");
    assert_eq!(field(&one[0], "LITEKEEPER_TRIGGER"), "timer", "{}", one[0]);
    c.ok(&format!("test -s {path}"));

    // Clean stop: exit 0 after SIGTERM, no core dump, the stopping event logged.
    c.ok("systemctl stop litekeeper.service");
    assert_eq!(c.prop("litekeeper.service", "ActiveState"), "inactive");
    assert_eq!(c.prop("litekeeper.service", "Result"), "success");
    let log = c.ok("journalctl --no-pager -o cat -u litekeeper.service");
    // A user manager logs "Deactivated successfully" at debug level only.
    assert!(log.contains("Stopped litekeeper.service"), "{log}");
    for bad in [
        "core-dump",
        "code=dumped",
        "code=killed",
        "Failed with result",
    ] {
        assert!(!log.contains(bad), "{bad} in the journal:\n{log}");
    }
    assert!(!c
        .journal(&format!("-u litekeeper.service MESSAGE_ID={MSG_STOPPING}"))
        .is_empty());

    // Purge with the daemon running: prerm stops it; the backups stay.
    c.ok("systemctl start litekeeper.service");
    c.ok("dpkg --purge litekeeper");
    let active = c.sh("systemctl is-active litekeeper.service");
    assert_ne!(String::from_utf8_lossy(&active.stdout).trim(), "active");
    c.ok(&format!(
        "! test -e /usr/bin/litekeeper && ls {backups} | grep -q '^app-'"
    ));
    eprintln!("system mode: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn system_service_as_the_app_user() {
    let Some(deb) = prerequisites("system_service_as_the_app_user") else {
        return;
    };
    let t0 = Instant::now();
    let mut c = Container::boot();
    c.diag_units = vec![
        "litekeeper.service".into(),
        "litekeeper-backup@chat.service".into(),
    ];
    install_package(&c, &deb);

    // The app's database belongs to the app's user, in a directory only it can enter; its
    // backups go to a directory it owns. litekeeper runs as that user through drop-ins (README).
    sample_db(&c.share().join("chat.db"));
    let db = "/var/lib/chatapp-e2e/chat.db";
    let backups = "/var/backups/chatapp";
    std::fs::write(
        c.share().join("litekeeper.toml"),
        backup_config(db, backups, "*/2 * * * * *").replace("\"app\"", "\"chat\""),
    )
    .unwrap();
    c.ok(&format!(
        "useradd --system --user-group --home-dir /var/lib/chatapp-e2e chatapp && \
         install -d -o chatapp -g chatapp -m 0700 /var/lib/chatapp-e2e {backups} && \
         install -o chatapp -g chatapp -m 0600 /host/chat.db {db} && \
         install -m 0644 /host/litekeeper.toml /etc/litekeeper/litekeeper.toml && \
         for u in litekeeper.service litekeeper-backup@.service; do \
           mkdir -p /etc/systemd/system/$u.d && \
           printf '[Service]\nUser=chatapp\nGroup=chatapp\n' > /etc/systemd/system/$u.d/user.conf; \
         done && \
         litekeeper systemd-units >/dev/null && systemctl daemon-reload"
    ));

    c.ok("systemctl start litekeeper.service");
    assert_eq!(c.prop("litekeeper.service", "SubState"), "running");
    let ok = wait_for(
        "a LITEKEEPER_OUTCOME=ok backup by the daemon running as chatapp",
        Duration::from_secs(10),
        || {
            c.journal("-u litekeeper.service LITEKEEPER_OUTCOME=ok")
                .into_iter()
                .next()
        },
    );
    let path = field(&ok, "LITEKEEPER_BACKUP_PATH");
    assert!(path.starts_with(&format!("{backups}/chat-")), "{ok}");
    let owners = c.ok(&format!(
        "stat -c '%U' {path} /var/lib/litekeeper /var/lib/litekeeper/state.db /run/litekeeper/chat.lock"
    ));
    assert_eq!(
        owners.split_whitespace().collect::<Vec<_>>(),
        ["chatapp"; 4],
        "backup, state dir, state DB and lock belong to the app's user"
    );

    // A timer's oneshot with the same drop-in shares the daemon's lock and state.
    c.ok("systemctl start litekeeper-backup@chat.service");
    assert_eq!(
        c.prop("litekeeper-backup@chat.service", "Result"),
        "success"
    );
    let one = c.journal("_SYSTEMD_UNIT=litekeeper-backup@chat.service LITEKEEPER_OUTCOME=ok");
    assert_eq!(one.len(), 1, "{one:?}");

    c.ok("systemctl stop litekeeper.service");
    assert_eq!(c.prop("litekeeper.service", "Result"), "success");
    eprintln!("app user: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn user_service_from_the_deb() {
    let Some(deb) = prerequisites("user_service_from_the_deb") else {
        return;
    };
    let t0 = Instant::now();
    let mut c = Container::boot();
    install_package(&c, &deb);

    // A user manager for a test user, started as lingering (enable-linger) would at boot.
    let user = "lkuser";
    c.ok(&format!("useradd -m -s /bin/sh {user}"));
    let uid: u32 = c.ok(&format!("id -u {user}")).trim().parse().unwrap();
    c.diag_units = vec![format!("user@{uid}.service")];
    c.diag_user = Some((user.to_string(), uid));
    let started = c.sh(&format!("systemctl start user@{uid}.service"));
    if !started.status.success() {
        let st = c.sh(&format!(
            "systemctl status --no-pager -l user@{uid}.service"
        ));
        eprintln!(
            "skipped user_service_from_the_deb: user@{uid}.service does not start in the container: {}{}",
            both(&started),
            String::from_utf8_lossy(&st.stdout)
        );
        return;
    }

    let home = format!("/home/{user}");
    let db = format!("{home}/.local/share/notes/notes.db");
    let backups = format!("{home}/.local/share/notes/backups");
    sample_db(&c.share().join("notes.db"));
    std::fs::write(
        c.share().join("user.toml"),
        backup_config(&db, &backups, "*/2 * * * * *").replace("\"app\"", "\"notes\""),
    )
    .unwrap();
    c.ok(&format!(
        "install -d -o {user} -g {user} -m 0700 {home}/.local {home}/.local/share {home}/.local/share/notes \
           {home}/.config {home}/.config/litekeeper && \
         install -o {user} -g {user} -m 0600 /host/notes.db {db} && \
         install -o {user} -g {user} -m 0600 /host/user.toml {home}/.config/litekeeper/litekeeper.toml"
    ));
    c.user_ok(user, uid, "litekeeper check");
    let units = c.user_ok(
        user,
        uid,
        "litekeeper systemd-units --user --with-units && systemctl --user daemon-reload",
    );
    assert!(
        units.contains(&format!("{home}/.config/systemd/user/litekeeper.service")),
        "{units}"
    );
    // The user units are sandboxed too (through a user namespace): the drop-in opens the
    // paths the jobs write to.
    assert!(units.contains("litekeeper.service.d/paths.conf"), "{units}");

    c.user_ok(user, uid, "systemctl --user start litekeeper.service");
    let st = c.user_ok(
        user,
        uid,
        "systemctl --user status --no-pager litekeeper.service",
    );
    assert!(st.contains("active (running)"), "{st}");
    let status = c.user_ok(user, uid, "systemctl --user show -P StatusText litekeeper");
    assert!(status.contains("backup notes"), "{status}");

    // The user's own journal view: journalctl --user -u litekeeper, as the user.
    let ok = wait_for(
        "a LITEKEEPER_OUTCOME=ok entry in journalctl --user -u litekeeper",
        Duration::from_secs(10),
        || {
            c.user_ok(
                user,
                uid,
                "journalctl --user -u litekeeper.service -o json LITEKEEPER_OUTCOME=ok",
            )
            .lines()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
        },
    );
    assert_eq!(
        field(&ok, "_SYSTEMD_USER_UNIT"),
        "litekeeper.service",
        "{ok}"
    );
    assert_eq!(field(&ok, "LITEKEEPER_DATABASE"), "notes", "{ok}");
    let path = field(&ok, "LITEKEEPER_BACKUP_PATH");
    assert!(path.starts_with(&format!("{backups}/notes-")), "{ok}");
    let owner = c.ok(&format!("stat -c %U {path}"));
    assert_eq!(owner.trim(), user);

    // A user timer's service, then a clean stop.
    c.user_ok(
        user,
        uid,
        "systemctl --user start litekeeper-backup@notes.service",
    );
    let r = c.user_ok(
        user,
        uid,
        "systemctl --user show -P Result litekeeper-backup@notes.service",
    );
    assert_eq!(r.trim(), "success");
    c.user_ok(user, uid, "systemctl --user stop litekeeper.service");
    let r = c.user_ok(
        user,
        uid,
        "systemctl --user show -P Result litekeeper.service",
    );
    assert_eq!(r.trim(), "success");
    let log = c.ok(&format!(
        "journalctl --no-pager -o cat _UID={uid} USER_UNIT=litekeeper.service + _UID={uid} _SYSTEMD_USER_UNIT=litekeeper.service"
    ));
    // A user manager logs "Deactivated successfully" at debug level only.
    assert!(log.contains("Stopped litekeeper.service"), "{log}");
    for bad in ["core-dump", "code=dumped", "Failed with result"] {
        assert!(!log.contains(bad), "{bad} in the journal:\n{log}");
    }
    eprintln!("user mode: {:.1} s", t0.elapsed().as_secs_f64());
}

/// Units written from hostile backup directories (spaces, quotes, `%`, backslash, `$`,
/// unicode), a relative `-c "conf file.toml"` and a name with a dash, loaded by a real
/// systemd: `systemctl show` reads back the exact paths, the absolute config path and the
/// name after `--`. Needs no package: the units are `systemd-units --with-units` output.
#[test]
fn hostile_paths_round_trip_through_systemd() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipped hostile_paths_round_trip_through_systemd: {why}");
        return;
    }
    let env = crate::util::TestEnv::new();
    let mut c = Container::boot();
    let units = c.share().join("units");
    let dirs = crate::units::hostile_units(&env, &units);
    c.diag_units = vec!["litekeeper.service".into()];
    c.ok("cp -r /host/units/. /etc/systemd/system/ && systemctl daemon-reload");
    let inst = "litekeeper-backup@my-db.service";
    let rw = crate::units::unquote_list(&c.prop("litekeeper.service", "ReadWritePaths"));
    for unit in ["litekeeper.service", inst] {
        let rw_unit = crate::units::unquote_list(&c.prop(&shell_quote(unit), "ReadWritePaths"));
        assert_eq!(rw_unit, rw, "{unit}");
    }
    for d in &dirs {
        let want = format!("-{}", d.display());
        assert!(rw.contains(&want), "{want:?} not in {rw:#?}");
    }
    let envs = crate::units::unquote_list(&c.prop(&shell_quote(inst), "Environment"));
    let want = format!("LITEKEEPER_CONFIG={}", env.path("conf file.toml").display());
    assert!(envs.contains(&want), "{want:?} not in {envs:?}");
    let exec = c.prop(&shell_quote(inst), "ExecStart");
    assert!(exec.contains(" run -- my-db backup ;"), "{exec}");
    let timer = c.prop(
        &shell_quote("litekeeper-backup@my-db.timer"),
        "TimersCalendar",
    );
    assert!(timer.contains("02:30:00 Europe/Berlin"), "{timer}");
}
