//! The per-database lock seen from `litekeeper run`: a held lock makes a second run exit 75
//! naming the holder, `--wait` waits for it (or gives up after its timeout), a lock file that
//! is a symlink is refused, and a missing database is 66, never created.

use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use litekeeper::lock;

use crate::util::{backup_into, both, TestEnv};

fn setup(env: &TestEnv) -> PathBuf {
    let db = env.sqlite(
        "app/chat.db",
        "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);",
    );
    env.config("")
        .database("chat", &db, &backup_into(&env.path("backups")))
        .write();
    db
}

fn backups(env: &TestEnv) -> usize {
    std::fs::read_dir(env.path("backups"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".db"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn second_run_on_a_locked_database_exits_75_naming_the_holder() {
    let env = TestEnv::new();
    setup(&env);
    // The holder is a real flock with our holder line (as the daemon or another run writes it).
    let held = lock::try_acquire(&env.path("locks"), "chat", "vacuum").unwrap();
    let o = env.cmd().args(["run", "chat", "backup"]).output().unwrap();
    assert_eq!(o.status.code(), Some(75), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("pid {} running vacuum since", std::process::id())),
        "holder not named: {}",
        both(&o)
    );
    assert!(err.contains("chat"), "{}", both(&o));
    assert_eq!(backups(&env), 0, "a refused run must not write a backup");

    // The refusal is recorded as skipped in the run history.
    let c = rusqlite::Connection::open(env.path("state/state.db")).unwrap();
    let outcome: String = c
        .query_row(
            "SELECT outcome FROM runs WHERE database='chat' AND job='backup'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(outcome, "skipped");

    // Released: the next run goes through, and its own lock is free again afterwards.
    drop(held);
    env.run_ok(&["run", "chat", "backup"]);
    assert_eq!(backups(&env), 1);
    lock::try_acquire(&env.path("locks"), "chat", "test").expect("lock left held after exit");
}

#[test]
fn two_real_processes_collide_and_only_one_runs() {
    let env = TestEnv::new();
    setup(&env);
    let held = lock::try_acquire(&env.path("locks"), "chat", "backup").unwrap();
    // The first process waits for the lock; the second one, without --wait, is refused by the
    // holder and the waiting process takes it only once we release.
    let waiter = env
        .std_cmd()
        .args(["run", "chat", "backup", "--wait", "20s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let o = env.cmd().args(["run", "chat", "backup"]).output().unwrap();
    assert_eq!(o.status.code(), Some(75), "{}", both(&o));
    assert_eq!(backups(&env), 0);
    let released = Instant::now();
    drop(held);
    let o = waiter.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(released.elapsed() < Duration::from_secs(10));
    assert_eq!(backups(&env), 1);
}

#[test]
fn wait_gives_up_after_its_timeout_with_75() {
    let env = TestEnv::new();
    setup(&env);
    let _held = lock::try_acquire(&env.path("locks"), "chat", "prune").unwrap();
    let t = Instant::now();
    let o = env
        .cmd()
        .args(["run", "chat", "backup", "--wait", "700ms"])
        .output()
        .unwrap();
    let took = t.elapsed();
    assert_eq!(o.status.code(), Some(75), "{}", both(&o));
    assert!(
        took >= Duration::from_millis(700),
        "gave up early: {took:?}"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("waited 700ms"), "{}", both(&o));
    assert!(err.contains("running prune"), "{}", both(&o));

    // A nonsense --wait value is a usage error.
    let o = env
        .cmd()
        .args(["run", "chat", "backup", "--wait", "soon"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64), "{}", both(&o));
}

#[test]
fn symlinked_lock_file_is_refused() {
    let env = TestEnv::new();
    setup(&env);
    std::fs::create_dir_all(env.path("locks")).unwrap();
    let target = env.path("elsewhere");
    std::fs::write(&target, "precious\n").unwrap();
    symlink(&target, env.path("locks/chat.lock")).unwrap();
    let o = env.cmd().args(["run", "chat", "backup"]).output().unwrap();
    assert_eq!(o.status.code(), Some(73), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("chat.lock"), "{}", both(&o));
    assert!(
        err.contains("is a symlink; refusing to follow it"),
        "{}",
        both(&o)
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
    assert_eq!(backups(&env), 0);
}

#[test]
fn missing_database_exits_66_and_is_not_created() {
    let env = TestEnv::new();
    let db = setup(&env);
    std::fs::remove_file(&db).unwrap();
    let o = env.cmd().args(["run", "chat", "backup"]).output().unwrap();
    assert_eq!(o.status.code(), Some(66), "{}", both(&o));
    crate::util::assert_stderr_has(&o, &db.display().to_string());
    assert!(!db.exists(), "the missing database was created");
    assert_eq!(backups(&env), 0);

    // An unknown database name is a usage error naming the configured ones.
    let o = env
        .cmd()
        .args(["run", "nosuch", "backup"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64), "{}", both(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("configured: chat"));
}
