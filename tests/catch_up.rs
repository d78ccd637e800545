//! Catch-up: a run missed while the daemon was down runs once at start-up (like systemd's
//! `Persistent=true`), and only then.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use litekeeper::jobs::{JobKind, Trigger};
use litekeeper::state::State;

use crate::util::TestEnv;

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn setup(env: &TestEnv, catch_up: bool, last_run: chrono::DateTime<Utc>) {
    let db = env.sqlite("app/chat.db", "CREATE TABLE t(x);");
    env.write_config(&format!(
        "{}{}",
        env.daemon_section(&format!("timezone = \"UTC\"\ncatch_up = {catch_up}")),
        TestEnv::database_section("chat", &db, "[database.backup]\nschedule = \"0 0 1 1 *\"")
    ));
    let state = State::open(&env.path("state"), Duration::from_secs(10 * 365 * 86400)).unwrap();
    state
        .start(
            "old-run",
            "chat",
            JobKind::Backup,
            Trigger::Schedule,
            last_run,
        )
        .unwrap();
}

fn triggers(env: &TestEnv) -> Vec<String> {
    let c = rusqlite::Connection::open(env.path("state/state.db")).unwrap();
    let mut s = c
        .prepare("SELECT trigger FROM runs WHERE id != 'old-run' AND finished_at IS NOT NULL")
        .unwrap();
    s.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn run_daemon_for(env: &TestEnv, d: Duration, until_one_run: bool) -> Vec<String> {
    let child = env
        .std_cmd()
        .arg("daemon")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Daemon(child);
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        if until_one_run && !triggers(env).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    triggers(env)
}

#[test]
fn missed_run_is_caught_up_once() {
    let env = TestEnv::new();
    // Last run before 2026-01-01 00:00 UTC: that yearly run was missed.
    setup(
        &env,
        true,
        Utc.with_ymd_and_hms(2025, 12, 30, 0, 0, 0).unwrap(),
    );
    let got = run_daemon_for(&env, Duration::from_secs(10), true);
    assert_eq!(got, ["catch-up"]);
}

#[test]
fn nothing_missed_nothing_caught_up() {
    let env = TestEnv::new();
    // Ran after the last yearly occurrence: nothing to catch up.
    setup(&env, true, Utc::now() - chrono::Duration::hours(1));
    let got = run_daemon_for(&env, Duration::from_secs(2), false);
    assert!(got.is_empty(), "{got:?}");
}

#[test]
fn catch_up_can_be_turned_off() {
    let env = TestEnv::new();
    setup(
        &env,
        false,
        Utc.with_ymd_and_hms(2025, 12, 30, 0, 0, 0).unwrap(),
    );
    let got = run_daemon_for(&env, Duration::from_secs(2), false);
    assert!(got.is_empty(), "{got:?}");
}
