//! A damaged `state.db` (run history) never stops a job: whoever opens it first (a timer's
//! `run` or the daemon) moves it aside as `state.db.corrupt-<stamp>`, starts a new one and
//! says so in one warning line. `status --check` says what to do about a state DB it cannot
//! read, and only suggests root to a user who is not root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::{both, is_root, open_to_nobody, unprivileged, TestEnv};

const GARBAGE: &[u8] = b"this is not an SQLite database, it is a text file written over state.db\n";

fn config(env: &TestEnv, db: &Path, schedule: &str) {
    env.config("")
        .database(
            "chat",
            db,
            &format!(
                "[database.backup]\nschedule = \"{schedule}\"\ndir = \"{}\"\n",
                env.path("backups").display()
            ),
        )
        .write();
}

/// The files set aside in the state directory.
fn set_aside(env: &TestEnv) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(env.path("state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.starts_with("state.db.corrupt-") && !n.ends_with("-wal") && !n.ends_with("-shm")
        })
        .collect();
    v.sort();
    v
}

fn runs(env: &TestEnv) -> Vec<(String, String)> {
    env.runs().into_iter().map(|r| (r.job, r.outcome)).collect()
}

#[test]
fn a_garbage_state_db_is_set_aside_and_the_timers_job_runs() {
    let env = TestEnv::new();
    let db = env.sqlite(
        "app/chat.db",
        "CREATE TABLE t(x); INSERT INTO t VALUES (1);",
    );
    config(&env, &db, "0 2 * * *");
    std::fs::create_dir_all(env.path("state")).unwrap();
    std::fs::write(env.path("state/state.db"), GARBAGE).unwrap();
    // A reader leaves it alone (as root it would leave a root-owned state DB behind).
    let o = env.cmd().arg("status").output().unwrap();
    assert_ne!(o.status.code(), Some(0), "{}", both(&o));
    assert!(set_aside(&env).is_empty(), "{}", both(&o));
    assert_eq!(std::fs::read(env.path("state/state.db")).unwrap(), GARBAGE);
    let o = env
        .cmd()
        .args(["run", "chat", "backup"])
        .env("LITEKEEPER_TRIGGER", "timer")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let aside = set_aside(&env);
    assert_eq!(aside.len(), 1, "{aside:?}\n{}", both(&o));
    assert_eq!(std::fs::read(&aside[0]).unwrap(), GARBAGE);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("corrupt")).collect();
    assert_eq!(warnings.len(), 1, "{}", both(&o));
    assert!(
        warnings[0].contains(&aside[0].display().to_string()),
        "{}",
        warnings[0]
    );
    assert_eq!(runs(&env), [("backup".to_string(), "ok".to_string())]);
    // The next run finds the new state DB in order: nothing more is moved.
    env.run_ok(&["run", "chat", "backup"]);
    assert_eq!(set_aside(&env).len(), 1);
    assert_eq!(runs(&env).len(), 2);
}

/// The daemon does the same, at start and when the file is damaged while it runs.
#[test]
fn the_daemon_sets_a_garbage_state_db_aside_at_start_and_while_running() {
    let env = TestEnv::new();
    let db = env.sqlite(
        "app/chat.db",
        "CREATE TABLE t(x); INSERT INTO t VALUES (1);",
    );
    config(&env, &db, "* * * * * *");
    std::fs::create_dir_all(env.path("state")).unwrap();
    std::fs::write(env.path("state/state.db"), GARBAGE).unwrap();
    let mut daemon = env.daemon(&[("LITEKEEPER_LOG", "info")]);
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        daemon.wait_until(what, Duration::from_secs(60), done)
    };
    wait("a run recorded after start", &|| {
        env.count_runs("outcome = 'ok'", []) > 0
    });
    assert_eq!(set_aside(&env).len(), 1, "{}", daemon.log());
    // Damaged while the daemon runs.
    std::thread::sleep(Duration::from_millis(1100));
    for sfx in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(env.path(&format!("state/state.db{sfx}")));
    }
    std::fs::write(env.path("state/state.db"), GARBAGE).unwrap();
    wait("the damaged state DB set aside", &|| {
        set_aside(&env).len() == 2
    });
    wait("a run recorded in the new state DB", &|| {
        env.count_runs("outcome = 'ok'", []) > 0
    });
    let status = daemon.terminate();
    let text = daemon.log();
    assert_eq!(status.code(), Some(0), "{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("state.db.corrupt-"))
            .count(),
        2,
        "one warning line each time:\n{text}"
    );
}

/// `status --check` on a state DB it cannot read: UNKNOWN, and the hint fits the user.
#[test]
fn status_check_hints_root_only_to_a_user_who_is_not_root() {
    let env = TestEnv::new();
    let db = env.sqlite("app/chat.db", "CREATE TABLE t(x);");
    config(&env, &db, "0 2 * * *");
    std::fs::create_dir_all(env.path("state")).unwrap();
    std::fs::write(env.path("state/state.db"), GARBAGE).unwrap();
    let o = env.cmd().args(["status", "--check"]).output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", both(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("UNKNOWN: "), "{}", both(&o));
    if is_root() {
        assert!(
            !out.contains("as root"),
            "root is told to run as root: {out}"
        );
    }
    assert!(out.contains("moves it aside"), "{out}");

    // Another user, locked out of a state directory it does not own: root may help.
    if !is_root() {
        return;
    }
    open_to_nobody(&env);
    std::fs::write(env.path("state/state.db"), GARBAGE).unwrap();
    crate::util::set_mode(&env.path("state"), 0o700);
    std::os::unix::fs::chown(env.path("state"), Some(0), Some(0)).unwrap();
    let o = unprivileged(&env)
        .arg("-c")
        .arg(env.config_path())
        .args(["status", "--check"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", both(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("as root"), "{}", both(&o));
}
