//! The daemon under a fake service manager: the test binds its own `NOTIFY_SOCKET` (a Unix
//! datagram socket in the temp dir), runs the real binary with `daemon`, and asserts the exact
//! sd_notify messages and their order (READY, STATUS, WATCHDOG, RELOADING + MONOTONIC_USEC,
//! STOPPING), reloads on SIGHUP, graceful stops on SIGTERM/SIGINT, and that scheduled jobs
//! really run and are recorded in `state.db`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use litekeeper::archive::{BackupName, MANIFEST, TMP_SUFFIX};

use crate::util::{Bg, Msg, Notify, Run, TestEnv};

// ---------------------------------------------------------------------------------------------
// Helpers.

/// CLOCK_MONOTONIC in microseconds, the clock MONOTONIC_USEC is read from.
fn monotonic_usec() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    ts.tv_sec as u128 * 1_000_000 + ts.tv_nsec as u128 / 1000
}

/// The next `hh:mm:00` UTC after now, as the daemon's STATUS renders it.
fn next_daily(h: u32, m: u32) -> DateTime<Utc> {
    let now = Utc::now();
    let today = now.date_naive().and_hms_opt(h, m, 0).unwrap().and_utc();
    if today > now {
        today
    } else {
        today + chrono::Duration::days(1)
    }
}

fn at(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S %:z").to_string()
}

fn finished_runs(env: &TestEnv, db: &str) -> usize {
    env.runs()
        .iter()
        .filter(|r| r.database == db && r.finished.is_some())
        .count()
}

/// Poll until `cond` holds, up to `timeout`; on a timeout show the runs and the daemon's log.
fn wait_until(
    env: &TestEnv,
    daemon: &Bg,
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; runs: {:#?}\nstderr:\n{}",
            env.runs(),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `chat` backed up every second ([`chat_backed_up`]) by a daemon under a fake service
/// manager, once its first run has finished: the manager, the daemon, and the index after its
/// first READY=1.
fn every_second_after_first_run(env: &TestEnv, vars: &[(&str, &str)]) -> (Notify, Bg, usize) {
    chat_backed_up(
        env,
        "CREATE TABLE t(x); INSERT INTO t VALUES (1);",
        "* * * * * *",
    );
    let mut notify = Notify::bind(env);
    let daemon = env.daemon_notifying(&notify, vars);
    let from = notify.ready() + 1;
    wait_until(env, &daemon, Duration::from_secs(10), "a first run", || {
        finished_runs(env, "chat") >= 1
    });
    (notify, daemon, from)
}

/// Waits (up to `limit`) until `n` runs started from now on have finished.
fn wait_runs_from_now(env: &TestEnv, daemon: &Bg, n: usize, limit: Duration, what: &str) {
    let now = Utc::now().timestamp_millis();
    wait_until(env, daemon, limit, what, || {
        env.runs()
            .iter()
            .filter(|r| r.started > now && r.finished.is_some())
            .count()
            >= n
    });
}

/// Backup files (by our naming) and other entries of a backup directory.
fn backup_dir_entries(dir: &Path) -> (Vec<String>, Vec<String>) {
    let mut backups = Vec::new();
    let mut other = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if BackupName::parse(&name).is_some() {
                backups.push(name);
            } else {
                other.push(name);
            }
        }
    }
    backups.sort();
    other.sort();
    (backups, other)
}

/// `app/chat.db` made by `sql`, backed up on `schedule` into `backups/chat`, in UTC.
fn chat_backed_up(env: &TestEnv, sql: &str, schedule: &str) -> PathBuf {
    let chat = env.sqlite("app/chat.db", sql);
    env.config("timezone = \"UTC\"")
        .database(
            "chat",
            &chat,
            &backup_stanza(schedule, &env.path("backups/chat")),
        )
        .write();
    chat
}

/// `hold`'s stanza in the starvation tests: backed up every second, waiting for its lock.
fn hold_stanza(env: &TestEnv) -> String {
    format!(
        "on_busy = \"wait\"\n{}",
        backup_stanza("* * * * * *", &env.path("backups/hold"))
    )
}

/// Takes `hold`'s lock file (`locks/hold.lock`), as a job of the daemon would; held until the
/// file is dropped.
fn hold_lock(env: &TestEnv) -> std::fs::File {
    std::fs::create_dir_all(env.path("locks")).unwrap();
    let lock = std::fs::File::create(env.path("locks/hold.lock")).unwrap();
    lock.lock().unwrap();
    lock
}

/// Writes `text` as the configuration and starts the daemon under a fake service manager.
fn start_notifying(env: &TestEnv, text: &str, vars: &[(&str, &str)]) -> (Notify, Bg) {
    env.write_config(text);
    let notify = Notify::bind(env);
    let daemon = env.daemon_notifying(&notify, vars);
    (notify, daemon)
}

/// SIGHUP, then waits (each up to `limit`) for RELOADING=1 from message `from` on and for the
/// READY=1 after it; the index after that READY=1.
fn reload_once(daemon: &Bg, notify: &mut Notify, from: usize, limit: Duration) -> usize {
    daemon.signal(libc::SIGHUP);
    let r = notify.wait_for(from, limit, "RELOADING=1", |m| m.has("RELOADING=1"));
    notify.wait_for(r + 1, limit, "READY=1", |m| m.has("READY=1")) + 1
}

/// Once the daemon has ended: no message it sent matches `sent` (`what` names it).
fn assert_none_sent(notify: &mut Notify, what: &str, sent: impl Fn(&Msg) -> bool) {
    let msgs = notify.finish();
    assert!(!msgs.iter().any(sent), "sent {what}: {:?}", texts(msgs));
}

/// The texts of notify messages, for failure output.
fn texts(msgs: &[Msg]) -> Vec<&String> {
    msgs.iter().map(|m| &m.text).collect()
}

/// The last "timers armed" debug line of a daemon's log.
fn last_timers_armed(err: &str) -> &str {
    err.lines()
        .rfind(|l| l.contains("timers armed"))
        .unwrap_or_else(|| panic!("no 'timers armed' debug line:\n{err}"))
}

fn backup_stanza(schedule: &str, dir: &Path) -> String {
    format!(
        "[database.backup]\nschedule = \"{schedule}\"\ndir = \"{}\"\nkeep = {{ last = 100 }}",
        dir.display()
    )
}

/// The runs of each database never overlap in time, and with `across` no two runs at all do.
fn assert_no_overlap(runs: &[Run], across: bool) {
    let mut by_db: std::collections::BTreeMap<&str, Vec<&Run>> = Default::default();
    for r in runs {
        let key = if across { "" } else { r.database.as_str() };
        by_db.entry(key).or_default().push(r);
    }
    for list in by_db.values() {
        for w in list.windows(2) {
            let end = w[0].finished.expect("a finished run");
            assert!(
                w[1].started >= end,
                "runs overlap: {:?} started before {:?} ended",
                w[1],
                w[0]
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

/// READY → (broken config) RELOADING+MONOTONIC_USEC, READY, old config kept → (new valid
/// config) RELOADING, STATUS of the new config, READY → SIGTERM: STOPPING, exit 0.
#[test]
fn notify_sequence() {
    let env = TestEnv::new();
    let chat = chat_backed_up(
        &env,
        "CREATE TABLE t(x); INSERT INTO t VALUES (1);",
        "0 2 * * *",
    );
    let logs = env.sqlite("app/logs.db", "CREATE TABLE l(x);");
    let config = env.config_path();
    let mut notify = Notify::bind(&env);
    let mut daemon = env.daemon_notifying(&notify, &[]);

    let ready = notify.ready();
    let first_status = format!("idle; next: backup chat at {}", at(next_daily(2, 0)));

    // A broken file on SIGHUP: logged, the old configuration kept, READY again.
    std::fs::write(&config, "[daemon\ntimezone = \"UTC\"\n").unwrap();
    let before = monotonic_usec();
    daemon.signal(libc::SIGHUP);
    let reloading = notify.wait_for(ready + 1, Duration::from_secs(10), "RELOADING=1", |m| {
        m.has("RELOADING=1")
    });
    let after = monotonic_usec();
    let usec: u128 = notify.seen[reloading]
        .value("MONOTONIC_USEC")
        .unwrap_or_else(|| {
            panic!(
                "RELOADING=1 without MONOTONIC_USEC in the same datagram: {:?}",
                notify.seen[reloading].text
            )
        })
        .parse()
        .unwrap();
    assert!(
        (before..=after).contains(&usec),
        "MONOTONIC_USEC={usec} is not CLOCK_MONOTONIC at the reload ({before}..={after})"
    );
    let ready2 = notify.wait_for(
        reloading + 1,
        Duration::from_secs(10),
        "READY=1 after a failed reload",
        |m| m.has("READY=1"),
    );
    assert!(
        daemon.alive(),
        "a broken config on reload stopped the daemon"
    );
    let err = daemon.log();
    let line = err
        .lines()
        .find(|l| l.contains("reload failed, keeping the previous configuration"))
        .unwrap_or_else(|| panic!("no reload error logged; stderr:\n{err}"));
    assert!(
        line.contains(&format!("{}:1:", config.display())) && line.contains("invalid TOML"),
        "the reload error names the file and line: {line}"
    );

    // A valid new file: the new schedule is armed and STATUS says so.
    std::fs::write(
        &config,
        format!(
            "{}{}{}",
            env.daemon_section("timezone = \"UTC\""),
            TestEnv::database_section(
                "chat",
                &chat,
                &backup_stanza("0 3 * * *", &env.path("backups/chat"))
            ),
            TestEnv::database_section(
                "logs",
                &logs,
                &backup_stanza("30 3 * * *", &env.path("backups/logs"))
            )
        ),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    let reloading2 = notify.wait_for(ready2 + 1, Duration::from_secs(10), "RELOADING=1", |m| {
        m.has("RELOADING=1")
    });
    let ready3 = notify.wait_for(reloading2 + 1, Duration::from_secs(10), "READY=1", |m| {
        m.has("READY=1")
    });
    let (chat_at, logs_at) = (next_daily(3, 0), next_daily(3, 30));
    let new_status = if chat_at <= logs_at {
        format!("idle; next: backup chat at {}", at(chat_at))
    } else {
        format!("idle; next: backup logs at {}", at(logs_at))
    };
    assert!(
        daemon
            .log()
            .contains("configuration reloaded: 2 scheduled job(s)"),
        "stderr:\n{}",
        daemon.log()
    );

    daemon.signal(libc::SIGTERM);
    notify.wait_for(ready3 + 1, Duration::from_secs(10), "STOPPING=1", |m| {
        m.has("STOPPING=1")
    });
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", daemon.log());

    let got: Vec<String> = notify.finish().iter().map(Msg::shape).collect();
    // STATUS is published as soon as the jobs are armed, so the first STATUS precedes READY=1
    // (systemd shows it while the unit is still activating); after a failed reload nothing
    // changed and STATUS is not repeated; after a good one the new STATUS comes before READY.
    let expected = [
        format!("STATUS={first_status}"),
        "READY=1".into(),
        "RELOADING=1|MONOTONIC_USEC=<n>".into(),
        "READY=1".into(),
        "RELOADING=1|MONOTONIC_USEC=<n>".into(),
        format!("STATUS={new_status}"),
        "READY=1".into(),
        "STOPPING=1".into(),
        "STATUS=stopping".into(),
    ];
    assert_eq!(got, expected, "stderr:\n{}", daemon.log());
}

/// A broken file on SIGHUP leaves the running schedule alone: runs go on after the reload.
#[test]
fn broken_reload_keeps_running_the_old_schedule() {
    let env = TestEnv::new();
    let (mut notify, mut daemon, from) = every_second_after_first_run(&env, &[]);

    std::fs::write(env.config_path(), "[[database]]\nname = 42\n").unwrap();
    reload_once(&daemon, &mut notify, from, Duration::from_secs(10));
    wait_runs_from_now(
        &env,
        &daemon,
        1,
        Duration::from_secs(10),
        "a run started after the failed reload",
    );
    assert!(daemon.alive());
    assert!(
        daemon
            .log()
            .contains("reload failed, keeping the previous configuration"),
        "stderr:\n{}",
        daemon.log()
    );
    assert_eq!(daemon.stop(Duration::from_secs(10)).code(), Some(0));
}

/// Reloads re-arm every timer once: after several SIGHUPs a `* * * * * *` job still has one
/// timer (no second chain firing the same ticks, which would show as coalesced ticks), and it
/// keeps running.
#[test]
fn reload_rearms_each_timer_once() {
    let env = TestEnv::new();
    let (mut notify, mut daemon, mut from) =
        every_second_after_first_run(&env, &[("LITEKEEPER_LOG", "info,litekeeper=debug")]);
    // Reload at different points of the second, so some land while a timer waits to fire.
    for pause in [0, 170, 340, 510, 680, 850] {
        std::thread::sleep(Duration::from_millis(pause));
        from = reload_once(&daemon, &mut notify, from, Duration::from_secs(10));
    }
    wait_runs_from_now(
        &env,
        &daemon,
        3,
        Duration::from_secs(15),
        "three runs after the reloads",
    );
    assert_eq!(daemon.stop(Duration::from_secs(10)).code(), Some(0));
    let err = daemon.log();
    assert!(
        !err.contains("coalesced"),
        "a tick fired twice (two timers for one job):\n{err}"
    );
    let all = env.runs();
    assert_no_overlap(&all, false);
    // One run per scheduled second at most.
    let mut seconds: Vec<i64> = all.iter().map(|r| r.started / 1000).collect();
    seconds.dedup();
    assert_eq!(seconds.len(), all.len(), "{all:#?}");
}

/// WATCHDOG_USEC=200000: WATCHDOG=1 about every 100 ms (half the interval), each on its own.
#[test]
fn watchdog() {
    let env = TestEnv::new();
    chat_backed_up(&env, "CREATE TABLE t(x);", "0 2 * * *");
    let mut notify = Notify::bind(&env);
    // No WATCHDOG_PID: the child's pid is unknown before the spawn, and sd_notify accepts an
    // unset WATCHDOG_PID as "this process".
    let mut daemon = env.daemon_notifying(&notify, &[("WATCHDOG_USEC", "200000")]);
    let ready = notify.ready();
    let ready_at = notify.seen[ready].at;
    let mut from = 0;
    let mut pings = Vec::new();
    while pings.len() < 10 {
        let i = notify.wait_for(from, Duration::from_secs(5), "WATCHDOG=1", |m| {
            m.has("WATCHDOG=1")
        });
        assert_eq!(notify.seen[i].text, "WATCHDOG=1\n");
        pings.push(notify.seen[i].at);
        from = i + 1;
    }
    let in_first_second = pings
        .iter()
        .filter(|t| **t >= ready_at && t.duration_since(ready_at) <= Duration::from_secs(1))
        .count();
    assert!(
        in_first_second >= 3,
        "{in_first_second} WATCHDOG=1 in the second after READY"
    );
    let mut gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(
        (Duration::from_millis(60)..=Duration::from_millis(150)).contains(&median),
        "median gap between pings {median:?}, expected about 100 ms (half of WATCHDOG_USEC); gaps {gaps:?}"
    );
    assert_eq!(daemon.stop(Duration::from_secs(10)).code(), Some(0));
}

/// WATCHDOG_PID naming another process: the watchdog is not ours, no pings.
#[test]
fn watchdog_for_another_pid_is_not_pinged() {
    let env = TestEnv::new();
    chat_backed_up(&env, "CREATE TABLE t(x);", "0 2 * * *");
    let mut notify = Notify::bind(&env);
    let mut daemon = env.daemon_notifying(
        &notify,
        &[("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", "1")],
    );
    let ready = notify.ready();
    // Five intervals of silence: with the watchdog on there would be about ten pings.
    let until = notify.seen[ready].at + Duration::from_millis(500);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(daemon.stop(Duration::from_secs(10)).code(), Some(0));
    assert_none_sent(&mut notify, "WATCHDOG=1", |m| m.has("WATCHDOG=1"));
}

/// A `* * * * * *` backup really runs every second, is recorded, and writes backups.
#[test]
fn every_second_schedule_runs_and_records() {
    let env = TestEnv::new();
    let chat = env.sqlite(
        "app/chat.db",
        "CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);",
    );
    let dir = env.path("backups/chat");
    env.config("timezone = \"UTC\"")
        .database("chat", &chat, &backup_stanza("* * * * * *", &dir))
        .write();
    let mut notify = Notify::bind(&env);
    let mut daemon = env.daemon_notifying(&notify, &[("LITEKEEPER_LOG", "info,litekeeper=debug")]);
    notify.ready();
    // STATUS= changes at most once a second, showing the state at that moment: a backup of a
    // few milliseconds a second is mostly seen as idle (see status_is_sent_on_change_…).
    wait_until(
        &env,
        &daemon,
        Duration::from_secs(20),
        "three finished runs",
        || finished_runs(&env, "chat") >= 3,
    );
    daemon.signal(libc::SIGTERM);
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(10)).code(),
        Some(0),
        "stderr:\n{}",
        daemon.log()
    );

    let err = daemon.log();
    assert!(!err.contains(" ERROR "), "errors logged:\n{err}");
    let all = env.runs();
    assert!(all.len() >= 3, "{all:#?}");
    let mut ok = 0;
    for r in &all {
        assert_eq!(
            (r.database.as_str(), r.job.as_str(), r.trigger.as_str()),
            ("chat", "backup", "schedule")
        );
        assert!(
            r.finished.is_some(),
            "every run is finished after a clean stop: {r:?}"
        );
        // The run in progress at SIGTERM (if any) is recorded as cancelled; all others are ok.
        let cancelled = r.outcome == "failed"
            && r.error
                .as_deref()
                .is_some_and(|e| e.starts_with("cancelled"));
        assert!(r.outcome == "ok" || cancelled, "{r:?}");
        if r.outcome == "ok" {
            ok += 1;
            let path = r.figures["backup_path"].as_str().unwrap();
            assert!(Path::new(path).is_file(), "{path} of {r:?}");
        }
    }
    assert!(ok >= 3, "{all:#?}");
    assert_no_overlap(&all, false);

    let (backups, other) = backup_dir_entries(&dir);
    assert_eq!(backups.len(), ok, "one backup per ok run: {backups:?}");
    assert_eq!(
        other,
        [".litekeeper.lock", MANIFEST],
        "nothing else (the directory's lock and the manifest) in {}",
        dir.display()
    );
    for b in &backups {
        let c = rusqlite::Connection::open(dir.join(b)).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3, "{b}");
    }
    for m in notify.finish() {
        assert!(
            m.status().is_none_or(|s| s == "running backup chat"
                || s.starts_with("idle; next: backup chat at ")
                || s.starts_with("stopping")),
            "{:?}",
            m.text
        );
    }
}

/// Two databases on a `* * * * * *` schedule with `max_concurrent_jobs = 1`: both run, never at
/// the same time. Stopped with SIGINT, which stops like SIGTERM.
#[test]
fn max_concurrent_jobs_one_never_overlaps_across_databases() {
    let env = TestEnv::new();
    let chat = env.sqlite(
        "app/chat.db",
        "CREATE TABLE t(x); INSERT INTO t VALUES (1);",
    );
    let logs = env.sqlite(
        "app/logs.db",
        "CREATE TABLE l(x); INSERT INTO l VALUES (1);",
    );
    env.config("timezone = \"UTC\"\nmax_concurrent_jobs = 1")
        .database(
            "chat",
            &chat,
            &backup_stanza("* * * * * *", &env.path("backups/chat")),
        )
        .database(
            "logs",
            &logs,
            &backup_stanza("* * * * * *", &env.path("backups/logs")),
        )
        .write();
    let mut notify = Notify::bind(&env);
    let mut daemon = env.daemon_notifying(&notify, &[("LITEKEEPER_LOG", "info,litekeeper=debug")]);
    let ready = notify.ready();
    wait_until(
        &env,
        &daemon,
        Duration::from_secs(20),
        "two finished runs of each",
        || finished_runs(&env, "chat") >= 2 && finished_runs(&env, "logs") >= 2,
    );
    daemon.signal(libc::SIGINT);
    notify.wait_for(ready + 1, Duration::from_secs(10), "STOPPING=1", |m| {
        m.has("STOPPING=1")
    });
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(10)).code(),
        Some(0),
        "stderr:\n{}",
        daemon.log()
    );
    let all = env.runs();
    assert!(all.iter().all(|r| r.finished.is_some()), "{all:#?}");
    assert!(
        all.iter()
            .filter(|r| r.outcome == "ok")
            .all(|r| r.trigger == "schedule"),
        "{all:#?}"
    );
    // Never two jobs at once, so STATUS never names two running jobs either.
    assert_no_overlap(&all, true);
    assert_none_sent(&mut notify, "a STATUS naming two running jobs", |m| {
        m.status()
            .is_some_and(|s| s.starts_with("running") && s.contains(','))
    });
}

/// A configuration error at start-up: exit 78, one line naming file and line, never READY.
#[test]
fn broken_config_at_start() {
    for invalid_toml in [true, false] {
        let env = TestEnv::new();
        let text = if invalid_toml {
            // A syntax error on line 3.
            "[daemon]\ntimezone = \"UTC\"\nmax_concurrent_jobs = = 2\n".to_string()
        } else {
            // Valid TOML with an invalid value.
            let db = env.sqlite("app/chat.db", "CREATE TABLE t(x);");
            format!(
                "{}{}",
                env.daemon_section("timezone = \"UTC\""),
                TestEnv::database_section("chat", &db, "[database.backup]\nschedule = \"soon\"")
            )
        };
        let bad = if invalid_toml {
            "max_concurrent_jobs"
        } else {
            "schedule"
        };
        let line = text.lines().position(|l| l.starts_with(bad)).unwrap() + 1;
        let (mut notify, mut daemon) = start_notifying(&env, &text, &[]);
        let status = daemon.wait_exit(Duration::from_secs(10));
        let err = daemon.log();
        assert_eq!(status.code(), Some(78), "stderr:\n{err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr:\n{err}");
        assert!(
            lines[0].contains(&format!("{}:{line}:", env.config_path().display())),
            "names file and line {line}: {}",
            lines[0]
        );
        assert_none_sent(&mut notify, "anything to the service manager", |_| true);
    }
}

/// SIGTERM while a backup of a 100 MB database is copying: STOPPING=1, the job stops at its
/// next safe point and is recorded as cancelled, the partial copy is removed, exit 0.
#[test]
fn sigterm_during_running_job() {
    let env = TestEnv::new();
    let big = env.sqlite(
        "app/big.db",
        "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
         CREATE TABLE t(x);
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 25000)
         INSERT INTO t SELECT randomblob(4000) FROM c;",
    );
    let dir = env.path("backups/big");
    env.config("timezone = \"UTC\"")
        .database("big", &big, &backup_stanza("* * * * * *", &dir))
        .write();
    let mut notify = Notify::bind(&env);
    let mut daemon = env.daemon_notifying(&notify, &[]);
    let running = notify.wait_for(
        0,
        Duration::from_secs(20),
        "STATUS=running backup big",
        |m| m.status() == Some("running backup big"),
    );
    // Wait until the copy is being written (its temp file exists), then stop.
    let copying = |d: &Path| {
        std::fs::read_dir(d).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(TMP_SUFFIX))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !copying(&dir) {
        assert!(
            Instant::now() < deadline,
            "no temp file appeared in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    daemon.signal(libc::SIGTERM);
    let stopping = notify.wait_for(running + 1, Duration::from_secs(10), "STOPPING=1", |m| {
        m.has("STOPPING=1")
    });
    let status = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", daemon.log());

    let msgs = notify.finish().to_vec();
    assert_eq!(
        msgs[stopping + 1].status(),
        Some("stopping; waiting for backup big"),
        "{:?}",
        texts(&msgs)
    );
    // Once stopping, STATUS never claims the daemon is idle with a next run ahead.
    for m in &msgs[stopping..] {
        assert!(
            m.status().is_none_or(|s| s.starts_with("stopping")),
            "STATUS after STOPPING=1: {:?}; all: {:?}",
            m.text,
            texts(&msgs)
        );
        assert!(!m.has("READY=1"), "READY=1 after STOPPING=1");
    }

    let all = env.runs();
    assert_eq!(all.len(), 1, "{all:#?}");
    let r = &all[0];
    assert_eq!(
        (r.job.as_str(), r.trigger.as_str(), r.outcome.as_str()),
        ("backup", "schedule", "failed"),
        "{r:?}"
    );
    assert!(r.finished.is_some(), "{r:?}");
    assert!(
        r.error
            .as_deref()
            .is_some_and(|e| e.starts_with("cancelled")),
        "recorded as cancelled: {r:?}"
    );
    let (backups, other) = backup_dir_entries(&dir);
    assert!(
        backups.is_empty(),
        "no backup file from a cancelled run: {backups:?}"
    );
    assert!(
        other
            .iter()
            .all(|n| n == MANIFEST || n == ".litekeeper.lock"),
        "no temp file left behind: {other:?}"
    );
    // The source is untouched.
    let c = rusqlite::Connection::open(&big).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 25000);
}

// ---------------------------------------------------------------------------------------------
// Reload leaks, a second daemon on one state_dir.

/// Resident memory of a process in KiB (VmRSS).
fn rss_kib(pid: libc::pid_t) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Threads of a process whose name (comm, 15 bytes at most) is `name`.
fn threads_named(pid: libc::pid_t, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .count()
}

/// SIGHUP `n` times, each time waiting for the READY=1 that ends the reload.
fn reload_times(daemon: &Bg, notify: &mut Notify, mut from: usize, n: usize) -> usize {
    for _ in 0..n {
        from = reload_once(daemon, notify, from, Duration::from_secs(20));
    }
    from
}

/// 200 plain databases, 150 reloads: memory stays flat. The leak was r2d2's: every pool
/// schedules an upkeep task at a fixed rate on the shared thread pool and never cancels it,
/// so each reload (new pools) left one task per database behind (about 600 B each, for ever).
/// Checked directly too: after the reloads the timer crate holds exactly one timer per job,
/// and only the current configuration's pool upkeep threads are alive.
#[test]
fn reloads_do_not_grow_memory() {
    let env = TestEnv::new();
    let mut text = env.daemon_section("timezone = \"UTC\"");
    for i in 0..200 {
        let db = env.sqlite(&format!("app/d{i}.db"), "CREATE TABLE t(x);");
        text.push_str(&TestEnv::database_section(
            &format!("d{i}"),
            &db,
            &backup_stanza("0 2 * * *", &env.path(&format!("backups/d{i}"))),
        ));
    }
    let (mut notify, mut daemon) = start_notifying(
        &env,
        &text,
        &[("LITEKEEPER_LOG", "info,litekeeper::scheduler=debug")],
    );
    let from = notify.wait_for(0, Duration::from_secs(30), "READY=1", |m| m.has("READY=1")) + 1;
    // Warm up: allocator arenas and caches reach their working size.
    let from = reload_times(&daemon, &mut notify, from, 20);
    let before = rss_kib(daemon.pid());
    reload_times(&daemon, &mut notify, from, 150);
    let after = rss_kib(daemon.pid());
    assert!(
        after.saturating_sub(before) < 3 * 1024,
        "RSS grew from {before} KiB to {after} KiB over 150 reloads of 200 databases \
         (a leak of {} B per database per reload)",
        (after.saturating_sub(before) * 1024) / (150 * 200)
    );
    // The timer crate holds one timer per scheduled job, not one per job per reload.
    let err = daemon.log();
    let last = last_timers_armed(&err);
    assert!(
        last.contains("200 job(s), 200 timers armed, 200 held by the timer crate"),
        "{last}"
    );
    // Pools of replaced configurations are gone with their upkeep threads (4 per
    // configuration): only the current one's remain.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = threads_named(daemon.pid(), "litekeeper-pool");
        if n <= 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} pool upkeep threads after 170 reloads (4 expected)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(daemon.stop(Duration::from_secs(10)).code(), Some(0));
}

/// A second daemon on the same state_dir refuses to start, exit 75, naming the first's pid
/// (in its one line on stderr and in STATUS=, with ERRNO=16, EBUSY, for the service manager),
/// and never runs a job; `litekeeper run` beside the daemon is still allowed. Once the first
/// has stopped, a new daemon starts.
#[test]
fn second_daemon_on_one_state_dir_refuses() {
    let env = TestEnv::new();
    let chat = env.sqlite(
        "app/chat.db",
        "CREATE TABLE t(x); INSERT INTO t VALUES (1);",
    );
    let text = format!(
        "{}{}",
        env.daemon_section("timezone = \"UTC\""),
        TestEnv::database_section(
            "chat",
            &chat,
            &backup_stanza("0 2 * * *", &env.path("backups/chat"))
        )
    );
    let (mut notify, mut first) = start_notifying(&env, &text, &[]);
    notify.ready();

    // Same configuration, from another directory (its own notify socket and stderr).
    let other = TestEnv::new();
    other.write_config(&text);
    let mut notify2 = Notify::bind(&other);
    let mut second = other.daemon_notifying(&notify2, &[]);
    let status = second.wait_exit(Duration::from_secs(20));
    let err = second.log();
    assert_eq!(status.code(), Some(75), "stderr:\n{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr:\n{err}");
    let pid = format!("pid {}", first.pid());
    assert!(
        lines[0].contains(&pid) && lines[0].contains(&env.path("state").display().to_string()),
        "names the first daemon's pid and the state_dir: {}",
        lines[0]
    );
    let msgs: Vec<String> = notify2.finish().iter().map(|m| m.text.clone()).collect();
    assert!(
        msgs.iter().any(|m| m.contains("ERRNO=16")
            && m.lines()
                .any(|l| l.starts_with("STATUS=") && l.contains(&pid))),
        "STATUS= naming the holder and ERRNO=16: {msgs:?}"
    );
    assert!(!msgs.iter().any(|m| m.contains("READY=1")), "{msgs:?}");

    // A one-off job beside the daemon is fine: per-database locks keep them apart.
    let out = env.cmd().args(["run", "chat", "backup"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", crate::util::both(&out));
    assert!(first.alive());
    assert_eq!(
        env.runs()
            .iter()
            .map(|r| (r.trigger.as_str(), r.outcome.as_str()))
            .collect::<Vec<_>>(),
        [("cli", "ok")],
        "the second daemon ran nothing"
    );

    assert_eq!(first.stop(Duration::from_secs(10)).code(), Some(0));
    drop(notify2);
    std::fs::remove_file(other.path("notify.sock")).unwrap();
    let mut notify3 = Notify::bind(&other);
    let mut third = other.daemon_notifying(&notify3, &[]);
    notify3.ready();
    assert_eq!(third.stop(Duration::from_secs(10)).code(), Some(0));
}

/// A reload that moves state_dir onto another daemon's is refused like a second start: the
/// old configuration stays, the error names the other daemon's pid.
#[test]
fn reload_onto_another_daemons_state_dir_is_refused() {
    let a = TestEnv::new();
    let b = TestEnv::new();
    let chat = a.sqlite("app/chat.db", "CREATE TABLE t(x);");
    let config = |state_of: &TestEnv| {
        format!(
            "{}{}",
            state_of.daemon_section("timezone = \"UTC\""),
            TestEnv::database_section(
                "chat",
                &chat,
                &backup_stanza("0 2 * * *", &a.path("backups/chat"))
            )
        )
    };
    a.write_config(&config(&a));
    b.write_config(&config(&b));
    let mut na = Notify::bind(&a);
    let mut nb = Notify::bind(&b);
    let mut da = a.daemon_notifying(&na, &[]);
    let mut db = b.daemon_notifying(&nb, &[]);
    na.ready();
    let ready = nb.ready();

    b.write_config(&config(&a));
    reload_once(&db, &mut nb, ready + 1, Duration::from_secs(10));
    let err = db.log();
    let line = err
        .lines()
        .find(|l| l.contains("reload failed, keeping the previous configuration"))
        .unwrap_or_else(|| panic!("no reload error:\n{err}"));
    assert!(line.contains(&format!("pid {}", da.pid())), "{line}");
    assert!(da.alive() && db.alive());
    // b still holds its own state_dir: a daemon started on it is refused, naming b.
    let c = TestEnv::new();
    c.write_config(&config(&b));
    let nc = Notify::bind(&c);
    let mut dc = c.daemon_notifying(&nc, &[]);
    assert_eq!(dc.wait_exit(Duration::from_secs(20)).code(), Some(75));
    assert!(
        dc.log().contains(&format!("pid {}", db.pid())),
        "{}",
        dc.log()
    );
    for d in [&mut da, &mut db] {
        assert_eq!(d.stop(Duration::from_secs(10)).code(), Some(0));
    }
}

/// STATUS= is sent when it changes, at most about once a second (8 databases backed up every
/// second made it ~16 a second), and "next:" never names an instant already past.
#[test]
fn status_is_sent_on_change_at_most_once_a_second_and_never_names_the_past() {
    let env = TestEnv::new();
    let mut text = env.daemon_section("timezone = \"UTC\"");
    for i in 0..8 {
        let db = env.sqlite(&format!("app/d{i}.db"), "CREATE TABLE t(x);");
        text.push_str(&TestEnv::database_section(
            &format!("d{i}"),
            &db,
            &format!(
                "[database.backup]\nschedule = \"* * * * * *\"\ndir = \"{}\"\nkeep = {{ last = 2 }}",
                env.path(&format!("backups/d{i}")).display()
            ),
        ));
    }
    let (mut notify, mut daemon) = start_notifying(&env, &text, &[]);
    let ready = notify.ready();
    let watch = Duration::from_secs(5);
    std::thread::sleep(watch);
    let (wall_now, mono_now) = (Utc::now(), Instant::now());
    assert_eq!(daemon.stop(Duration::from_secs(20)).code(), Some(0));
    let msgs = notify.finish().to_vec();
    let window: Vec<&Msg> = msgs[ready + 1..]
        .iter()
        .take_while(|m| m.at <= mono_now)
        .filter(|m| m.status().is_some())
        .collect();
    let shown: Vec<&str> = window.iter().filter_map(|m| m.status()).collect();
    // Some change every second: jobs start and end. At most one STATUS a second (plus one).
    assert!(!window.is_empty(), "no STATUS while jobs ran");
    assert!(
        window.len() <= watch.as_secs() as usize + 2,
        "{} STATUS= in {watch:?}: {shown:#?}",
        window.len()
    );
    for w in shown.windows(2) {
        assert_ne!(w[0], w[1], "STATUS= repeated unchanged: {shown:#?}");
    }
    for m in &window {
        let s = m.status().unwrap();
        let Some((_, t)) = s.split_once(" at ") else {
            continue;
        };
        let named = DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S %:z")
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .with_timezone(&Utc);
        let received = wall_now - (mono_now - m.at);
        assert!(
            named > received,
            "{s:?} received at {received}: names an instant already past"
        );
    }
}

/// `status --json` of one job, as a JSON object.
fn status_job(env: &TestEnv, db: &str, job: &str) -> serde_json::Value {
    let o = env.cmd().args(["status", "--json"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", crate::util::both(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    doc["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["database"] == db && j["job"] == job)
        .unwrap_or_else(|| panic!("no {job} {db} in {doc:#}"))
        .clone()
}

/// A job starved under `max_concurrent_jobs` is visible: `status --json` has its
/// `queued_since` (null otherwise) and `status` says "queued since …". `hold` takes the only
/// slot and waits (on_busy = "wait") for its database's lock, which the test holds; `starved`
/// is due every second and waits for the slot. Released, both run and the record goes.
#[test]
fn starved_jobs_show_as_queued_in_status() {
    let env = TestEnv::new();
    let hold = env.sqlite("app/hold.db", "CREATE TABLE t(x);");
    let starved = env.sqlite("app/starved.db", "CREATE TABLE t(x);");
    env.config("timezone = \"UTC\"\nmax_concurrent_jobs = 1")
        .database("hold", &hold, &hold_stanza(&env))
        .database(
            "starved",
            &starved,
            &backup_stanza("* * * * * *", &env.path("backups/starved")),
        )
        .write();
    // The test holds hold's lock, so its backup waits for it, holding the only slot.
    let lock = hold_lock(&env);
    let mut notify = Notify::bind(&env);
    let mut daemon = env.daemon_notifying(&notify, &[]);
    notify.ready();
    let mut queued = serde_json::Value::Null;
    wait_until(
        &env,
        &daemon,
        Duration::from_secs(20),
        "starved queued",
        || {
            queued = status_job(&env, "starved", "backup");
            !queued["queued_since"].is_null()
        },
    );
    let since: DateTime<Utc> = queued["queued_since"].as_str().unwrap().parse().unwrap();
    assert!(since <= Utc::now(), "{queued:#}");
    assert!(
        status_job(&env, "hold", "backup")["queued_since"].is_null(),
        "the running job is not queued"
    );
    let o = env.cmd().args(["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("starved "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        row.contains(&format!(
            "queued since {}",
            since.format("%Y-%m-%d %H:%M:%S +00:00")
        )),
        "{row}"
    );

    // Released: the slot frees, starved runs, and is no longer queued once it has.
    drop(lock);
    wait_until(
        &env,
        &daemon,
        Duration::from_secs(20),
        "starved ran",
        || {
            finished_runs(&env, "starved") >= 1
                && status_job(&env, "starved", "backup")["queued_since"].is_null()
        },
    );
    assert_eq!(daemon.stop(Duration::from_secs(10)).code(), Some(0));
}

/// The same for a fleet: members its feeder cannot start for want of a slot are queued since
/// they were due, each in its own entry, and the records go once they have run.
#[test]
fn starved_fleet_members_show_as_queued_in_status() {
    let env = TestEnv::new();
    let hold = env.sqlite("app/hold.db", "CREATE TABLE t(x);");
    for t in ["acme", "globex", "initech"] {
        env.sqlite(&format!("tenants/{t}.db"), "CREATE TABLE t(x);");
    }
    env.write_config(&format!(
        "{}{}[[database]]\nname = \"t-{{stem}}\"\npath = \"{}/*.db\"\n{}",
        env.daemon_section("timezone = \"UTC\"\nmax_concurrent_jobs = 1"),
        TestEnv::database_section("hold", &hold, &hold_stanza(&env)),
        env.path("tenants").display(),
        backup_stanza("* * * * * *", &env.path("backups/{name}"))
    ));
    let lock = hold_lock(&env);
    let mut notify = Notify::bind(&env);
    let mut daemon = env.daemon_notifying(&notify, &[]);
    notify.ready();
    let members = ["t-acme", "t-globex", "t-initech"];
    wait_until(
        &env,
        &daemon,
        Duration::from_secs(20),
        "every member queued",
        || {
            members
                .iter()
                .all(|m| !status_job(&env, m, "backup")["queued_since"].is_null())
        },
    );
    drop(lock);
    wait_until(
        &env,
        &daemon,
        Duration::from_secs(20),
        "every member ran and none is queued",
        || {
            members.iter().all(|m| {
                finished_runs(&env, m) >= 1
                    && status_job(&env, m, "backup")["queued_since"].is_null()
            })
        },
    );
    assert_eq!(daemon.stop(Duration::from_secs(10)).code(), Some(0));
}

/// Fleet members come and go (tenants signing up and leaving): the daemon keeps per-database
/// state only for databases it has now. After 5 rounds of 20 new members replacing the last
/// 20, a reload's debug line counts at most 21 database queues (20 members and `plain`), not
/// 101.
#[test]
fn fleet_churn_leaves_no_per_database_state_behind() {
    let env = TestEnv::new();
    let plain = env.sqlite("app/plain.db", "CREATE TABLE t(x);");
    env.write_config(&format!(
        "{}{}[[database]]\nname = \"t-{{stem}}\"\npath = \"{}/*.db\"\n{}",
        env.daemon_section("timezone = \"UTC\""),
        TestEnv::database_section(
            "plain",
            &plain,
            &backup_stanza("* * * * * *", &env.path("backups/plain"))
        ),
        env.path("tenants").display(),
        backup_stanza("* * * * * *", &env.path("backups/{name}"))
    ));
    std::fs::create_dir_all(env.path("tenants")).unwrap();
    let mut notify = Notify::bind(&env);
    let mut daemon = env.daemon_notifying(
        &notify,
        &[("LITEKEEPER_LOG", "info,litekeeper::scheduler=debug")],
    );
    let mut from = notify.ready() + 1;
    for round in 0..5 {
        let names: Vec<String> = (0..20).map(|i| format!("r{round}m{i}")).collect();
        if let Ok(rd) = std::fs::read_dir(env.path("tenants")) {
            for e in rd.flatten() {
                // A member's -wal/-shm may go away as its connection closes.
                match std::fs::remove_file(e.path()) {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => panic!("{err}"),
                    _ => {}
                }
            }
        }
        for n in &names {
            env.sqlite(&format!("tenants/{n}.db"), "CREATE TABLE t(x);");
        }
        wait_until(
            &env,
            &daemon,
            Duration::from_secs(30),
            "every member of the round ran",
            || {
                names
                    .iter()
                    .all(|n| finished_runs(&env, &format!("t-{n}")) >= 1)
            },
        );
    }
    from = reload_times(&daemon, &mut notify, from, 1);
    let _ = from;
    let err = daemon.log();
    let last = last_timers_armed(&err);
    let queues: usize = last
        .rsplit(", ")
        .next()
        .and_then(|q| q.strip_suffix(" database queue(s)"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{last}"));
    assert!(queues <= 21, "{last}");
    assert_eq!(daemon.stop(Duration::from_secs(10)).code(), Some(0));
}
