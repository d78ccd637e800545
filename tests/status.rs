//! `litekeeper status [--json]` reads the run history without the daemon: last run, outcome,
//! duration and next run of every configured job. The JSON shape is the README's contract.

use serde_json::Value;

use crate::util::{both, TestEnv};

fn setup(env: &TestEnv) {
    let db = env.sqlite(
        "app/chat.db",
        "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);",
    );
    env.config("timezone = \"Europe/Berlin\"").database("chat", &db, &format!(
                "[database.backup]\nschedule = \"0 2 * * *\"\ndir = \"{}\"\n[database.prune]\n[[database.prune.rule]]\ntable = \"t\"\nwhere = \"x < 0\"",
                env.path("backups").display()
            )).write();
}

fn status_json(env: &TestEnv) -> Value {
    let o = env.run_ok(&["status", "--json"]);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", both(&o)))
}

fn job<'a>(v: &'a Value, db: &str, job: &str) -> &'a Value {
    v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["database"] == db && j["job"] == job)
        .unwrap_or_else(|| panic!("no {db}/{job} in {v:#}"))
}

#[test]
fn status_before_any_run_lists_jobs_with_next_times() {
    let env = TestEnv::new();
    setup(&env);
    let v = status_json(&env);
    assert_eq!(v["timezone"], "Europe/Berlin");
    let b = job(&v, "chat", "backup");
    assert_eq!(b["schedule"], "0 2 * * *");
    assert!(b["last"].is_null());
    // 02:00 Berlin is 00:00 or 01:00 UTC depending on the season.
    let next = b["next_run"].as_str().unwrap();
    let next = chrono::DateTime::parse_from_rfc3339(next).unwrap();
    let berlin = next.with_timezone(&chrono_tz::Europe::Berlin);
    assert_eq!(berlin.format("%H:%M:%S").to_string(), "02:00:00", "{next}");
    // A job without a schedule is on demand: no next run.
    let p = job(&v, "chat", "prune");
    assert!(p["schedule"].is_null() && p["next_run"].is_null(), "{p:#}");
    // A filter by database name; an unknown name is a usage error.
    env.run_ok(&["status", "chat", "--json"]);
    let o = env.cmd().args(["status", "nosuch"]).output().unwrap();
    assert_eq!(o.status.code(), Some(64), "{}", both(&o));
    // No state DB is created by a read-only status call.
    assert!(!env.path("state/state.db").exists());
}

#[test]
fn status_json_after_runs_reports_outcome_duration_and_figures() {
    let env = TestEnv::new();
    setup(&env);
    env.run_ok(&["run", "chat", "backup"]);
    let v = status_json(&env);
    let last = &job(&v, "chat", "backup")["last"];
    assert_eq!(last["outcome"], "ok", "{last:#}");
    assert_eq!(last["trigger"], "cli");
    assert!(last["duration_ms"].as_i64().unwrap() >= 0);
    assert!(last["finished"].is_string());
    assert!(last["error"].is_null());
    assert!(
        last["figures"].as_object().is_some_and(|f| !f.is_empty()),
        "backup figures missing: {last:#}"
    );
    assert_eq!(last["id"].as_str().unwrap().len(), 32);

    // A second, failing run becomes the last one, with its error.
    std::fs::remove_file(env.path("app/chat.db")).unwrap();
    let o = env.cmd().args(["run", "chat", "backup"]).output().unwrap();
    assert_eq!(o.status.code(), Some(66), "{}", both(&o));
    let v = status_json(&env);
    let last = &job(&v, "chat", "backup")["last"];
    assert_eq!(last["outcome"], "failed");
    assert!(
        last["error"].as_str().unwrap().contains("chat.db"),
        "{last:#}"
    );

    // The human table names the same outcome.
    let o = env.cmd().arg("status").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let text = String::from_utf8_lossy(&o.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("chat") && l.contains("backup"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("failed"), "{row}");
    let prune = text
        .lines()
        .find(|l| l.contains("prune"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        prune.contains("never") && prune.contains("on demand"),
        "{prune}"
    );
}
