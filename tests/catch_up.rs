//! Catch-up: a run missed while the daemon was down runs once at start-up (like systemd's
//! `Persistent=true`), and only then.

use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use litekeeper::jobs::{JobKind, Trigger};
use litekeeper::state::State;

use crate::util::TestEnv;

fn setup(env: &TestEnv, catch_up: bool, last_run: chrono::DateTime<Utc>) {
    let db = env.sqlite("app/chat.db", "CREATE TABLE t(x);");
    env.config(&format!("timezone = \"UTC\"\ncatch_up = {catch_up}"))
        .database("chat", &db, "[database.backup]\nschedule = \"0 0 1 1 *\"")
        .write();
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
    env.runs()
        .into_iter()
        .filter(|r| r.id != "old-run" && r.finished.is_some())
        .map(|r| r.trigger)
        .collect()
}

fn run_daemon_for(env: &TestEnv, d: Duration, until_one_run: bool) -> Vec<String> {
    let _daemon = env.daemon(&[]);
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

/// A fleet's members are caught up one by one: only the member whose run was missed runs
/// (spread over the job's jitter), not the one that ran since, nor the one that never ran.
#[test]
fn a_fleet_catches_up_only_the_members_that_missed_a_run() {
    let env = TestEnv::new();
    for t in ["t00", "t01", "t02"] {
        env.sqlite(&format!("tenants/{t}.db"), "CREATE TABLE t(x);");
    }
    env.write_config(&format!(
        "{}[[database]]\nname = \"tenant-{{stem}}\"\npath = \"{}/*.db\"\n[database.backup]\nschedule = \"0 0 1 1 *\"\njitter = \"1s\"\ndir = \"{}/{{name}}\"\n",
        env.daemon_section("timezone = \"UTC\""),
        env.path("tenants").display(),
        env.path("backups").display()
    ));
    let state = State::open(&env.path("state"), Duration::from_secs(10 * 365 * 86400)).unwrap();
    let missed = Utc.with_ymd_and_hms(2025, 12, 30, 0, 0, 0).unwrap();
    let recent = Utc::now() - chrono::Duration::hours(1);
    for (id, db, at) in [
        ("old-run", "tenant-t00", missed),
        ("old-run-2", "tenant-t01", recent),
    ] {
        state
            .start(id, db, JobKind::Backup, Trigger::Schedule, at)
            .unwrap();
    }
    let _daemon = env.daemon(&[]);
    let runs = || -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = env
            .runs()
            .into_iter()
            .filter(|r| !r.id.starts_with("old-run") && r.finished.is_some())
            .map(|r| (r.database, r.trigger))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while runs().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(runs(), [("tenant-t00".to_string(), "catch-up".to_string())]);
    assert!(env.path("backups/tenant-t00/manifest.json").exists());
    assert!(!env.path("backups/tenant-t02").exists());
}
