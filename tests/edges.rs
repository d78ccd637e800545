//! Edges of issue 13 that are not attacks: a lock directory removed under a running job, a
//! database path that is not ASCII, a guard refusing one rule among several, attach aliases
//! that only differ from a reserved or another alias in case.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::util::{both, TestEnv};

fn config(env: &TestEnv, db: &Path, extra: &str) {
    env.config("").database("chat", db, extra).write();
}

#[test]
fn a_lock_directory_removed_under_a_running_job_does_not_let_a_second_job_in() {
    let env = TestEnv::new();
    // 1,500 of 4,000 rows deleted about 10 at a time (max_lock 1ms, a costly predicate) with
    // a pause between batches: a job that runs for seconds.
    let db = env.sqlite(
        "app/chat.db",
        "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, x);
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 4000)
         INSERT INTO t SELECT i, i FROM c;",
    );
    config(
        &env,
        &db,
        "[database.prune]\nmax_lock = \"1ms\"\npause = \"20ms\"\n[[database.prune.rule]]\ntable = \"t\"\nwhere = \"x <= 1500 AND length(hex(randomblob(2000))) > 0\"\n[database.vacuum]\n",
    );
    let mut first = env
        .std_cmd()
        .args(["run", "chat", "prune"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lock = env.path("locks/chat.lock");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&lock).is_ok_and(|s| s.contains("running prune")) {
        assert!(
            Instant::now() < deadline,
            "the first job never took its lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::remove_dir_all(env.path("locks")).unwrap();
    // The holder notices and puts its lock back at the path; until then it is missing.
    while !std::fs::read_to_string(&lock).is_ok_and(|s| s.contains("running prune")) {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first job ended before its lock file came back"
        );
        assert!(
            Instant::now() < deadline,
            "the running job's lock file was never put back"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = env.cmd().args(["run", "chat", "vacuum"]).output().unwrap();
    let still_running = first.try_wait().unwrap().is_none();
    let o = first.wait_with_output().unwrap();
    assert!(
        still_running,
        "the first job ended too soon to test\n{}",
        both(&o)
    );
    assert_eq!(
        second.status.code(),
        Some(75),
        "a second job ran beside the first\n{}",
        both(&second)
    );
    crate::util::assert_stderr_has(&second, "running prune");
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let left: i64 = Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 2500);
}

#[test]
fn a_database_path_that_is_not_ascii_is_checked_and_backed_up() {
    let env = TestEnv::new();
    let db = env.sqlite(
        "app/ünï 数据.db",
        "CREATE TABLE t(x); INSERT INTO t VALUES (42);",
    );
    let files = env.sqlite(
        "app/fïles.db",
        "CREATE TABLE blob(x); INSERT INTO blob VALUES (7);",
    );
    config(
        &env,
        &db,
        &format!(
            "attach = {{ files = \"{}\" }}\n[database.backup]\ndir = \"{}\"\n",
            files.display(),
            env.path("bäckups").display()
        ),
    );
    let o = env.cmd().arg("check").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    env.run_ok(&["run", "chat", "backup"]);
    // The database file itself is used, not a new one under a mangled name.
    let names: Vec<String> = std::fs::read_dir(env.path("app"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("ünï 数据.db") || n.starts_with("fïles.db")),
        "{names:?}"
    );
    let backups: Vec<_> = std::fs::read_dir(env.path("bäckups"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "db"))
        .collect();
    assert_eq!(backups.len(), 2, "{backups:?}");
}

#[test]
fn a_guard_refusing_one_rule_skips_it_and_the_later_rules_run() {
    let env = TestEnv::new();
    let db = env.sqlite(
        "app/chat.db",
        "CREATE TABLE one(id INTEGER PRIMARY KEY, old INTEGER);
         INSERT INTO one VALUES (1, 1);
         CREATE TABLE many(id INTEGER PRIMARY KEY, old INTEGER);
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100)
         INSERT INTO many SELECT i, i <= 10 FROM c;",
    );
    config(
        &env,
        &db,
        "[database.prune]\nmax_fraction = 0.5\n[[database.prune.rule]]\ntable = \"one\"\nwhere = \"old = 1\"\n[[database.prune.rule]]\ntable = \"many\"\nwhere = \"old = 1\"\n",
    );
    let o = env.run_ok(&["run", "chat", "prune"]);
    let text = both(&o);
    assert!(
        text.contains("rule[0]") && text.contains("max_fraction") && text.contains("1 of 1"),
        "the refusal is not named with the guard and its numbers\n{text}"
    );
    assert!(text.contains("refused"), "{text}");
    let c = Connection::open(&db).unwrap();
    let n = |t: &str| -> i64 {
        c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(n("one"), 1, "the refused rule deleted something");
    assert_eq!(n("many"), 90, "the later rule did not run");
    let o = env.cmd().args(["status", "--json"]).output().unwrap();
    crate::util::assert_stdout_has(&o, "refused");
}

#[test]
fn attach_aliases_that_are_reserved_or_clash_in_any_case_are_refused_at_load() {
    let env = TestEnv::new();
    let db = env.sqlite("app/chat.db", "CREATE TABLE t(x);");
    let files = env.sqlite("app/files.db", "CREATE TABLE blob(x);");
    for (attach, says) in [
        (format!("Main = \"{}\"", files.display()), "Main"),
        (format!("TEMP = \"{}\"", files.display()), "TEMP"),
        (format!("tEmP = \"{}\"", files.display()), "tEmP"),
        (
            format!(
                "files = \"{}\", Files = \"{}\"",
                files.display(),
                files.display()
            ),
            "Files",
        ),
    ] {
        config(&env, &db, &format!("attach = {{ {attach} }}\n"));
        for args in [&["check"][..], &["run", "chat", "backup"]] {
            let o = env.cmd().args(args).output().unwrap();
            assert_eq!(o.status.code(), Some(78), "{attach} {args:?}\n{}", both(&o));
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("attach") && err.contains(says), "{}", both(&o));
        }
    }
}
