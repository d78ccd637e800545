//! Fleets: one `[[database]]` stanza with a wildcard path becomes one database per file, with
//! its own lock, state and backups; the daemon re-scans on every tick, picks up new files and
//! reports vanished ones once.

use std::process::Stdio;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::util::{both, TestEnv};

fn tenant(env: &TestEnv, i: u32) {
    env.sqlite(
        &format!("tenants/t{i:02}.db"),
        &format!("PRAGMA journal_mode=WAL; CREATE TABLE note(x); INSERT INTO note VALUES ({i});"),
    );
}

fn config(env: &TestEnv, schedule: &str) {
    env.write_config(&format!(
        "{}[[database]]\nname = \"tenant-{{stem}}\"\npath = \"{}/*.db\"\n[database.backup]\n{schedule}dir = \"{}/{{name}}\"\nkeep = {{ last = 1 }}\n",
        env.daemon_section("timezone = \"UTC\"\nmax_concurrent_jobs = 4"),
        env.path("tenants").display(),
        env.path("backups").display()
    ));
}

/// Replace `from` (which must be there) with `to` in the configuration file.
fn edit_config(env: &TestEnv, from: &str, to: &str) {
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    assert!(text.contains(from), "{from:?} not in:\n{text}");
    std::fs::write(env.config_path(), text.replace(from, to)).unwrap();
}

fn ok_runs(env: &TestEnv, db: &str) -> i64 {
    env.count_runs("database = ?1 AND outcome = 'ok'", [db])
}

#[test]
fn every_file_is_a_database_with_its_own_backups() {
    let env = TestEnv::new();
    for i in 0..3 {
        tenant(&env, i);
    }
    config(&env, "");
    env.run_ok(&["run", "tenant-t01", "backup"]);
    assert!(env.path("backups/tenant-t01/manifest.json").exists());
    assert!(!env.path("backups/tenant-t00").exists());
    let names = env.status_databases();
    assert_eq!(names, ["tenant-t00", "tenant-t01", "tenant-t02"]);
    let o = env.cmd().arg("check").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));

    // A fleet needs {stem} in its name and its own backup directory per member.
    env.write_config(&format!(
        "{}[[database]]\nname = \"tenant\"\npath = \"{}/*.db\"\n",
        env.daemon_section(""),
        env.path("tenants").display()
    ));
    let o = env.cmd().arg("check").output().unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    crate::util::assert_stderr_has(&o, "{stem}");
    env.write_config(&format!(
        "{}[[database]]\nname = \"t-{{stem}}\"\npath = \"{}/*.db\"\n[database.backup]\ndir = \"{}\"\n",
        env.daemon_section(""),
        env.path("tenants").display(),
        env.path("backups").display()
    ));
    let o = env.cmd().arg("check").output().unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    crate::util::assert_stderr_has(&o, "its own backup directory");
}

#[test]
fn fifty_databases_one_added_one_removed_between_ticks() {
    let env = TestEnv::new();
    for i in 0..50 {
        tenant(&env, i);
    }
    config(&env, "schedule = \"*/2 * * * * *\"\n");
    let mut daemon = env.daemon(&[("LITEKEEPER_LOG", "info")]);
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        daemon.wait_until(what, Duration::from_secs(60), done)
    };
    wait("a backup of all 50", &|| {
        (0..50).all(|i| ok_runs(&env, &format!("tenant-t{i:02}")) >= 1)
    });
    // Between ticks: one file added, one removed.
    tenant(&env, 50);
    std::fs::remove_file(env.path("tenants/t00.db")).unwrap();
    let _ = std::fs::remove_file(env.path("tenants/t00.db-wal"));
    let _ = std::fs::remove_file(env.path("tenants/t00.db-shm"));
    wait("a backup of the new tenant", &|| {
        ok_runs(&env, "tenant-t50") >= 1
    });
    let gone_runs = ok_runs(&env, "tenant-t00");
    // A few more ticks: the vanished tenant is reported once and not run again.
    let t1 = ok_runs(&env, "tenant-t01");
    wait("two more ticks", &|| ok_runs(&env, "tenant-t01") >= t1 + 2);
    assert_eq!(daemon.terminate().code(), Some(0));
    let text = daemon.log();
    let gone = text
        .lines()
        .filter(|l| l.contains("database tenant-t00") && l.contains("is gone"))
        .count();
    assert_eq!(gone, 1, "vanished tenant reported {gone} times:\n{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("new database tenant-t50"))
            .count(),
        1,
        "{text}"
    );
    assert_eq!(
        ok_runs(&env, "tenant-t00"),
        gone_runs,
        "the vanished tenant kept running"
    );
    // Each tenant has its own backup directory with one backup (keep last = 1).
    for i in 1..=50 {
        let dir = env.path(&format!("backups/tenant-t{i:02}"));
        let n = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".db")
            })
            .count();
        assert_eq!(n, 1, "{}", dir.display());
    }
    assert!(
        !env.path("tenants/t00.db").exists(),
        "a vanished database was recreated"
    );
}

/// A fleet's members keep 7 days of history by default (a daily round of thousands would
/// otherwise keep 90 days of rows each); a stanza's own `keep_history` wins.
#[test]
fn fleet_members_keep_a_week_of_history_unless_told_otherwise() {
    use litekeeper::exit::ExitCode;
    use litekeeper::jobs::{JobKind, Outcome, Report, Trigger};
    use litekeeper::state::State;
    let env = TestEnv::new();
    for i in 0..2 {
        tenant(&env, i);
    }
    config(&env, "");
    let state = State::open(&env.path("state"), Duration::from_secs(90 * 86400)).unwrap();
    let old = |id: &str, db: &str, days: i64| {
        let finished = chrono::Utc::now() - chrono::Duration::days(days);
        state
            .finish(
                &Report {
                    run_id: id.into(),
                    database: db.into(),
                    job: JobKind::Backup,
                    trigger: Trigger::Schedule,
                    started: finished,
                    finished,
                    duration_ms: 5,
                    outcome: Outcome::Ok,
                    summary: "ok".into(),
                    figures: Default::default(),
                    error: None,
                    exit: ExitCode::Ok,
                },
                Duration::from_secs(90 * 86400),
            )
            .unwrap();
    };
    old("t00-10d", "tenant-t00", 10);
    old("t01-10d", "tenant-t01", 10);
    old("t01-30d", "tenant-t01", 30);
    let ids = |db: &str| -> Vec<String> {
        let c = Connection::open(env.path("state/state.db")).unwrap();
        let mut st = c
            .prepare("SELECT id FROM runs WHERE database = ?1 ORDER BY started_at")
            .unwrap();
        st.query_map([db], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let run = |db: &str| {
        env.run_ok(&["run", db, "backup"]);
    };
    run("tenant-t00");
    assert_eq!(ids("tenant-t00").len(), 1, "the 10-day-old run is gone");
    assert_eq!(
        ids("tenant-t01"),
        ["t01-30d", "t01-10d"],
        "only t00's history was pruned"
    );

    // The stanza's own keep_history (here 20 days) wins over the fleet default.
    edit_config(&env, "path = ", "keep_history = \"20d\"\npath = ");
    run("tenant-t01");
    let left = ids("tenant-t01");
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(
        left[0], "t01-10d",
        "the 30-day-old run went, the 10-day-old stayed"
    );
}

/// A fleet is run as a whole by its handle (`tenant` for `tenant-{stem}`), which is what its
/// timer does: every current member runs, one failing member fails the run but not the others.
#[test]
fn the_fleet_runs_as_a_whole_by_its_handle() {
    let env = TestEnv::new();
    for i in 0..3 {
        tenant(&env, i);
    }
    config(&env, "");
    let o = env.run_ok(&["run", "tenant", "backup"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("backup fleet tenant: 3 database(s): 3 ok, 0 busy, 0 failed"),
        "{out}"
    );
    for i in 0..3 {
        assert_eq!(ok_runs(&env, &format!("tenant-t{i:02}")), 1);
        assert!(env
            .path(&format!("backups/tenant-t{i:02}/manifest.json"))
            .exists());
    }

    // `status`, `backups list` and `check` take the handle too: every member.
    let o = env
        .cmd()
        .args(["status", "--json", "tenant"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["jobs"].as_array().unwrap().len(), 3, "{v}");
    let o = env
        .cmd()
        .args(["backups", "list", "--json", "tenant"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["databases"].as_array().unwrap().len(), 3, "{v}");
    env.run_ok(&["check", "tenant"]);

    // A member that is no database: the run fails with that member's code, the others run.
    std::fs::write(
        env.path("tenants/t01.db"),
        b"not a database at all, just text",
    )
    .unwrap();
    let o = env
        .cmd()
        .args(["run", "tenant", "backup"])
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("backup fleet tenant: 3 database(s): 2 ok, 0 busy, 1 failed (tenant-t01)"),
        "{err}"
    );
    assert_eq!(ok_runs(&env, "tenant-t00"), 2);
    assert_eq!(ok_runs(&env, "tenant-t02"), 2);
    assert_eq!(ok_runs(&env, "tenant-t01"), 1);

    // Unknown names list the fleet's handle, not its thousands of members.
    let o = env
        .cmd()
        .args(["run", "tenants", "backup"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("(configured: tenant)"), "{err}");

    // A plain database may not take the fleet's handle.
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        format!(
            "{text}[[database]]\nname = \"tenant\"\npath = \"{}\"\n",
            env.path("tenants/t00.db").display()
        ),
    )
    .unwrap();
    let o = env.cmd().arg("check").output().unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    crate::util::assert_stderr_has(&o, "called \"tenant\"");
}

/// `systemd-units` makes one timer per fleet job (the handle as its instance), not one per
/// member, and opens the fleet's fixed directories, so members added later are covered.
#[test]
fn a_fleet_gets_one_timer_per_job_and_its_fixed_directories() {
    let env = TestEnv::new();
    for i in 0..3 {
        tenant(&env, i);
    }
    config(&env, "schedule = \"0 2 * * *\"\n");
    let out = env.path("units");
    let o = env.systemd_units(&out, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let timer = std::fs::read_to_string(out.join("litekeeper-backup@tenant.timer.d/schedule.conf"))
        .unwrap();
    assert!(timer.contains("OnCalendar=*-*-* 02:00:00 UTC"), "{timer}");
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("tenant-t0")),
        "no timer per member: {names:?}"
    );
    let paths = std::fs::read_to_string(out.join("litekeeper.service.d/paths.conf")).unwrap();
    for dir in ["tenants", "backups"] {
        assert!(
            paths.contains(&format!(
                "ReadWritePaths=\"-{}\"\n",
                env.path(dir).display()
            )),
            "{dir}: {paths}"
        );
    }
    assert!(
        !paths.contains("tenant-t0"),
        "no member directories: {paths}"
    );
    crate::util::assert_stdout_has(&o, "litekeeper-backup@tenant.timer");
}

/// A member whose database is locked by the application fails on its own (busy); the
/// healthy members of the same fleet run are not held up waiting for a connection.
#[test]
fn a_locked_member_does_not_hold_up_the_others() {
    let env = TestEnv::new();
    for i in 0..4 {
        tenant(&env, i);
    }
    config(&env, "");
    edit_config(&env, "busy_timeout = \"300ms\"", "busy_timeout = \"2s\"");
    let mut holders = Vec::new();
    for i in 0..3 {
        let c = Connection::open(env.path(&format!("tenants/t{i:02}.db"))).unwrap();
        c.execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;")
            .unwrap();
        holders.push(c);
    }
    let o = env
        .cmd()
        .args(["run", "tenant", "backup"])
        .output()
        .unwrap();
    drop(holders);
    assert_ne!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(ok_runs(&env, "tenant-t03"), 1, "{}", both(&o));
    for i in 0..3 {
        assert_eq!(ok_runs(&env, &format!("tenant-t{i:02}")), 0);
    }
}

/// SIGTERM stops a fleet run between members: the members not started are counted as not
/// run and the run does not exit 0.
#[test]
fn a_signal_stops_a_fleet_run_and_says_what_did_not_run() {
    let env = TestEnv::new();
    for i in 0..60 {
        tenant(&env, i);
    }
    config(&env, "");
    edit_config(&env, "max_concurrent_jobs = 4", "max_concurrent_jobs = 1");
    let child = env
        .std_cmd()
        .args(["run", "tenant", "backup"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stop once a few members are done.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ok_runs_all(&env) < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    let done = ok_runs_all(&env);
    assert!(
        done < 60,
        "all 60 ran before the signal: make the fleet bigger"
    );
    // Stopped, not failed: 75, which the units count as success (a `systemctl stop`).
    assert_eq!(o.status.code(), Some(75), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("backup fleet tenant: 60 database(s)"), "{err}");
    assert!(err.contains(" 0 failed, "), "{err}");
    assert!(
        err.contains("stopped by a signal before finishing"),
        "{err}"
    );
}

fn ok_runs_all(env: &TestEnv) -> i64 {
    env.count_runs("outcome = 'ok'", [])
}

/// A fleet run writes the metrics file once a second at most, and once more at the end: the
/// file has every member's run.
#[test]
fn a_fleet_run_leaves_metrics_for_every_member() {
    let env = TestEnv::new();
    for i in 0..5 {
        tenant(&env, i);
    }
    config(&env, "");
    let prom = env.path("lk.prom");
    edit_config(
        &env,
        "max_concurrent_jobs = 4",
        &format!(
            "max_concurrent_jobs = 4\nmetrics_file = \"{}\"",
            prom.display()
        ),
    );
    env.run_ok(&["run", "tenant", "backup"]);
    let metrics = std::fs::read_to_string(&prom).unwrap();
    for i in 0..5 {
        let line = format!(
            "litekeeper_last_success_timestamp_seconds{{database=\"tenant-t{i:02}\",job=\"backup\"}}"
        );
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
}

/// Fleet names: two stanzas may not share a name template; a bare `{stem}` fleet is called
/// after its directory unless that name is taken; a fleet that matches no file now is a
/// WARNING for `status --check`, not OK.
#[test]
fn fleet_names_and_an_empty_fleet() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.path("app/a")).unwrap();
    std::fs::create_dir_all(env.path("app/b")).unwrap();
    let app = env.sqlite("app/app.db", "CREATE TABLE t(x);");
    env.sqlite("app/a/x.db", "CREATE TABLE t(x);");
    let fleet = |dir: &str| {
        format!(
            "[[database]]\nname = \"{{stem}}\"\npath = \"{}/*.db\"\n[database.backup]\nschedule = \"0 2 * * *\"\ndir = \"{}/{{name}}\"\n",
            env.path(dir).display(),
            env.path("backups").display()
        )
    };
    // Two `{stem}` fleets: refused, naming the second.
    env.config("")
        .text(&fleet("app/a"))
        .text(&fleet("app/b"))
        .write();
    let o = env.cmd().arg("check").output().unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    crate::util::assert_stderr_has(&o, "same name template");
    // `{stem}` over app/a/*.db is "a"; over app/*.db it would be "app", which the plain
    // database has: then it is "fleet1".
    env.config("timezone = \"UTC\"")
        .database("app", &app, "")
        .text(&fleet("app/a"))
        .write();
    env.run_ok(&["run", "a", "backup"]);
    env.config("timezone = \"UTC\"")
        .database("app", &app, "")
        .text(&fleet("app/b").replace("app/b/*.db", "app/*.db"))
        .write();
    env.run_ok(&["status", "fleet1"]);
    // app/b has no database: WARNING for the fleet, by its handle and in the whole check.
    env.config("timezone = \"UTC\"")
        .text(&fleet("app/b"))
        .write();
    for args in [&["status", "--check", "b"][..], &["status", "--check"][..]] {
        let o = env.cmd().args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", both(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.starts_with("WARNING fleet b: no database matches "),
            "{args:?}: {out}"
        );
    }
}
