//! `litekeeper status --check`: a monitoring check on history fabricated in the state DB with
//! `litekeeper::state::State`, times in the past. Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.

use std::time::Duration;

use chrono::Utc;
use litekeeper::domain::{Figures, JobKind, Outcome, Report, Trigger, VacuumFigures};
use litekeeper::exit::ExitCode;
use litekeeper::state::State;

use crate::util::{both, TestEnv};

/// `chat`: backup daily at 02:00 UTC (default max age 2d), prune on demand (no schedule),
/// vacuum weekly with 1h jitter (default max age 14d1h).
fn setup(env: &TestEnv) {
    let db = env.sqlite("app/chat.db", "CREATE TABLE t(x);");
    env.config("timezone = \"UTC\"")
        .database(
            "chat",
            &db,
            "[database.backup]\nschedule = \"0 2 * * *\"\n\
             [database.vacuum]\nschedule = \"0 3 * * SUN\"\njitter = \"1h\"\n\
             [database.prune]\n[[database.prune.rule]]\ntable = \"t\"\nwhere = \"x < 0\"",
        )
        .write();
}

fn state(env: &TestEnv) -> State {
    State::open(&env.path("state"), Duration::from_secs(365 * 86400)).unwrap()
}

/// Record a finished run that ended `ago` ago and took a second.
fn record(
    state: &State,
    job: JobKind,
    outcome: Outcome,
    ago: chrono::Duration,
    figures: Option<Figures>,
) {
    let finished = Utc::now() - ago;
    state
        .finish(
            &Report {
                run_id: uuid(),
                database: "chat".into(),
                job,
                trigger: Trigger::Schedule,
                started: finished - chrono::Duration::seconds(1),
                finished,
                duration_ms: 1000,
                outcome,
                summary: format!("{outcome:?}"),
                figures,
                error: (outcome == Outcome::Failed).then(|| "disk I/O error\nsecond line".into()),
                exit: ExitCode::Ok,
            },
            Duration::from_secs(365 * 86400),
        )
        .unwrap();
}

fn uuid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "run{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn ok(state: &State, job: JobKind, ago: chrono::Duration) {
    record(state, job, Outcome::Ok, ago, None);
}

fn hours(h: i64) -> chrono::Duration {
    chrono::Duration::hours(h)
}

/// Vacuum's "nothing worth doing": skipped, with figures.
fn vacuum_skipped(state: &State, ago: chrono::Duration) {
    let f = VacuumFigures {
        bytes_before: 8192,
        ..VacuumFigures::default()
    };
    record(
        state,
        JobKind::Vacuum,
        Outcome::Skipped,
        ago,
        Some(Figures::Vacuum(f)),
    );
}

/// Run the check; its exit code and stdout lines.
fn check(env: &TestEnv, args: &[&str]) -> (i32, Vec<String>) {
    let o = env
        .cmd()
        .args(["status", "--check"])
        .args(args)
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(String::from)
        .collect();
    (
        o.status.code().unwrap_or_else(|| panic!("{}", both(&o))),
        lines,
    )
}

#[test]
fn healthy_jobs_exit_0_with_one_ok_line() {
    let env = TestEnv::new();
    setup(&env);
    let s = state(&env);
    ok(&s, JobKind::Backup, hours(30));
    vacuum_skipped(&s, chrono::Duration::days(6));
    // An on-demand job is not age-checked unless named: 100 days old is fine.
    ok(&s, JobKind::Prune, chrono::Duration::days(100));
    let (code, lines) = check(&env, &[]);
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("OK: 3 jobs on 1 database:") && lines[0].contains("(2)"),
        "{lines:?}"
    );
}

#[test]
fn a_failed_last_run_is_a_warning_naming_the_error() {
    let env = TestEnv::new();
    setup(&env);
    let s = state(&env);
    ok(&s, JobKind::Backup, hours(3));
    vacuum_skipped(&s, hours(20));
    record(&s, JobKind::Prune, Outcome::Ok, hours(50), None);
    record(&s, JobKind::Prune, Outcome::Failed, hours(2), None);
    let (code, lines) = check(&env, &[]);
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(
        lines,
        ["WARNING prune chat: last run failed 2h ago: disk I/O error"]
    );

    // Failing again: the count of failures in a row.
    record(&s, JobKind::Prune, Outcome::Failed, hours(1), None);
    let (code, lines) = check(&env, &[]);
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(
        lines,
        ["WARNING prune chat: last 2 runs failed, the latest 1h ago: disk I/O error"]
    );

    // A later success clears it.
    ok(&s, JobKind::Prune, chrono::Duration::minutes(5));
    assert_eq!(check(&env, &[]).0, 0);
}

#[test]
fn no_success_within_the_max_age_is_critical() {
    let env = TestEnv::new();
    setup(&env);
    let s = state(&env);
    vacuum_skipped(&s, hours(20));
    ok(&s, JobKind::Backup, hours(30));
    // Default max age of a daily job: 2 days.
    assert_eq!(check(&env, &[]).0, 0);
    // --max-age is stricter.
    let (code, lines) = check(&env, &["--max-age", "backup=26h,prune=8d"]);
    assert_eq!(code, 2, "{lines:?}");
    assert_eq!(
        lines,
        [
            "CRITICAL backup chat: last success 30h ago (max 26h)",
            "WARNING prune chat: never ran (max age 8d)",
        ],
        "worst first"
    );

    // Failing for days: the failure and the age, CRITICAL first.
    let env = TestEnv::new();
    setup(&env);
    let s = state(&env);
    vacuum_skipped(&s, hours(20));
    ok(&s, JobKind::Backup, hours(75));
    record(&s, JobKind::Backup, Outcome::Failed, hours(51), None);
    record(&s, JobKind::Backup, Outcome::Failed, hours(27), None);
    record(&s, JobKind::Backup, Outcome::Failed, hours(3), None);
    let (code, lines) = check(&env, &[]);
    assert_eq!(code, 2, "{lines:?}");
    assert_eq!(
        lines,
        [
            "CRITICAL backup chat: last success 3d3h ago (max 2d)",
            "WARNING backup chat: last 3 runs failed, the latest 3h ago: disk I/O error",
        ]
    );
}

#[test]
fn runs_that_never_succeeded_and_busy_skips_do_not_count_as_success() {
    let env = TestEnv::new();
    setup(&env);
    let s = state(&env);
    vacuum_skipped(&s, hours(1));
    // Skipped because the database was busy (no figures): not a success.
    record(&s, JobKind::Backup, Outcome::Skipped, hours(60), None);
    record(&s, JobKind::Backup, Outcome::Skipped, hours(10), None);
    let (code, lines) = check(&env, &[]);
    assert_eq!(code, 2, "{lines:?}");
    assert_eq!(
        lines,
        ["CRITICAL backup chat: no successful run in the history, which starts 2d12h ago (max 2d)"]
    );
    // Within the max age of the first recorded run: no verdict on age yet.
    assert_eq!(check(&env, &["--max-age", "backup=3d"]).0, 0);
    // Dry runs are not successes either.
    record(&s, JobKind::Backup, Outcome::DryRun, hours(1), None);
    assert_eq!(check(&env, &[]).0, 2);
}

#[test]
fn never_ran_is_a_warning_even_without_a_state_db() {
    let env = TestEnv::new();
    setup(&env);
    let (code, lines) = check(&env, &[]);
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(
        lines,
        [
            "WARNING vacuum chat: never ran (max age 14d1h)",
            "WARNING backup chat: never ran (max age 2d)",
        ]
    );
    assert!(
        !env.path("state/state.db").exists(),
        "the check creates nothing"
    );
}

#[test]
fn an_interrupted_run_is_a_warning() {
    let env = TestEnv::new();
    setup(&env);
    let s = state(&env);
    ok(&s, JobKind::Backup, hours(20));
    vacuum_skipped(&s, hours(20));
    s.start(
        "killed",
        "chat",
        JobKind::Backup,
        Trigger::Schedule,
        Utc::now() - hours(2),
    )
    .unwrap();
    // While its process lives it is running, not a problem.
    assert_eq!(check(&env, &[]).0, 0);
    let c = rusqlite::Connection::open(s.path()).unwrap();
    c.execute("UPDATE runs SET pid = 2147483000 WHERE id = 'killed'", [])
        .unwrap();
    let (code, lines) = check(&env, &[]);
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(
        lines,
        ["WARNING backup chat: last run was interrupted (its process died; started 2h ago)"]
    );
}

#[test]
fn unreadable_state_bad_flags_and_broken_config_are_unknown() {
    let env = TestEnv::new();
    setup(&env);
    std::fs::create_dir_all(env.path("state")).unwrap();
    std::fs::write(env.path("state/state.db"), vec![7u8; 4096]).unwrap();
    let (code, lines) = check(&env, &[]);
    assert_eq!(code, 3, "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("UNKNOWN: ") && lines[0].contains("state.db"),
        "{lines:?}"
    );

    let env = TestEnv::new();
    setup(&env);
    let (code, lines) = check(&env, &["--max-age", "backups=1d"]);
    assert_eq!(code, 3, "{lines:?}");
    assert!(lines[0].contains("--max-age \"backups=1d\""), "{lines:?}");

    env.write_config("[daemon]\nmax_concurrent_jobs = 0\n");
    let (code, lines) = check(&env, &[]);
    assert_eq!(code, 3, "{lines:?}");
    assert!(
        lines[0].starts_with("UNKNOWN: ") && lines[0].contains("max_concurrent_jobs"),
        "{lines:?}"
    );
}

#[test]
fn check_flags_are_usage_errors_elsewhere() {
    let env = TestEnv::new();
    setup(&env);
    for args in [
        &["status", "--check", "--json"][..],
        &["status", "--max-age", "backup=1d"][..],
    ] {
        let o = env.cmd().args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(64), "{args:?}: {}", both(&o));
    }
}

/// `status --check DB…` checks only those databases (one monitoring service per database);
/// an unknown name is UNKNOWN.
#[test]
fn check_can_be_limited_to_named_databases() {
    let env = TestEnv::new();
    let chat = env.sqlite("app/chat.db", "CREATE TABLE t(x);");
    let blobs = env.sqlite("app/blobs.db", "CREATE TABLE t(x);");
    env.config("timezone = \"UTC\"")
        .database("chat", &chat, "[database.backup]\nschedule = \"0 2 * * *\"")
        .database(
            "blobs",
            &blobs,
            "[database.backup]\nschedule = \"0 2 * * *\"",
        )
        .write();
    let s = state(&env);
    ok(&s, JobKind::Backup, hours(3)); // chat only: blobs never ran
    let (code, lines) = check(&env, &[]);
    assert_eq!(code, 1, "{lines:?}");
    assert!(lines[0].contains("blobs"), "{lines:?}");
    let (code, lines) = check(&env, &["chat"]);
    assert_eq!(code, 0, "{lines:?}");
    assert!(
        lines[0].starts_with("OK: 1 job on 1 database:"),
        "{lines:?}"
    );
    let (code, lines) = check(&env, &["nosuch"]);
    assert_eq!(code, 3, "{lines:?}");
    assert!(
        lines[0].starts_with("UNKNOWN: ") && lines[0].contains("nosuch"),
        "{lines:?}"
    );
}

/// Nagios reads the text before the first `|` of each line as the status and the rest as
/// performance data, and a line break starts a new line of output: neither may come from a
/// path, an error or a file name. `|` is printed as `¦`, control characters escaped (`\n`).
#[test]
fn output_never_holds_a_pipe_or_a_line_break_from_a_path() {
    let env = TestEnv::new();
    setup(&env);
    let s = state(&env);
    ok(&s, JobKind::Backup, hours(3));
    vacuum_skipped(&s, hours(20));
    let finished = Utc::now() - hours(2);
    s.finish(
        &Report {
            run_id: uuid(),
            database: "chat".into(),
            job: JobKind::Prune,
            trigger: Trigger::Schedule,
            started: finished - chrono::Duration::seconds(1),
            finished,
            duration_ms: 1000,
            outcome: Outcome::Failed,
            summary: String::new(),
            figures: None,
            error: Some("/srv/up|loads\rx\u{1b}[2J: disk I/O error".into()),
            exit: ExitCode::Ok,
        },
        Duration::from_secs(365 * 86400),
    )
    .unwrap();
    let (code, lines) = check(&env, &[]);
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(
        lines,
        ["WARNING prune chat: last run failed 2h ago: /srv/up¦loads\\rx\\u{1b}[2J: disk I/O error"]
    );

    // A configuration in a directory named with both: the OK line, a fleet's warning and an
    // UNKNOWN for a broken file all name it.
    let dir = env.path("mon|itor\nx");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("litekeeper.toml");
    let run = |text: &str| {
        std::fs::write(&config, text).unwrap();
        let o = assert_cmd::Command::cargo_bin("litekeeper")
            .unwrap()
            .arg("-c")
            .arg(&config)
            .args(["status", "--check"])
            .output()
            .unwrap();
        (o.status.code(), String::from_utf8(o.stdout).unwrap())
    };
    let daemon = env.daemon_section("");
    let fleet_in = |d: &std::path::Path| {
        format!(
            "{daemon}[[database]]\nname = \"t-{{stem}}\"\npath = \"{}/*.db\"\n[database.backup]\nschedule = \"0 2 * * *\"\ndir = \"{}/{{name}}\"\n",
            d.display().to_string().replace('\n', "\\n"),
            env.path("backups").display()
        )
    };
    // A fleet's own directory with a '|' (a newline there is refused at load: the last case).
    let fleet_dir = env.path("fl|eet");
    std::fs::create_dir_all(&fleet_dir).unwrap();
    for (text, want_code, want_start, names) in [
        (
            daemon.clone(),
            0,
            "OK: no jobs configured in ",
            "mon¦itor\\nx",
        ),
        (
            fleet_in(&fleet_dir),
            1,
            "WARNING fleet t: no database matches ",
            "fl¦eet",
        ),
        (
            format!("{daemon}[[database]]\nname = 7\n"),
            3,
            "UNKNOWN: ",
            "mon¦itor\\nx",
        ),
        (
            fleet_in(&dir),
            3,
            "UNKNOWN: ",
            "path: must not contain control characters",
        ),
    ] {
        let (code, out) = run(&text);
        assert_eq!(code, Some(want_code), "{out}");
        assert_eq!(out.lines().count(), 1, "one line: {out:?}");
        assert!(out.starts_with(want_start), "{out:?}");
        assert!(!out.contains('|'), "{out:?}");
        assert!(out.contains(names), "{names:?} in {out:?}");
    }
}
