//! Bad databases met by the jobs (not only by `check`): each gives its own message and exit
//! code, nothing is created or modified by mistake, and a daemon with one good and many bad
//! databases keeps serving the good one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::util::{
    both, give_to_nobody, open_to_nobody, set_mode, start_holder, unprivileged, KillOnDrop, TestEnv,
};

/// A small healthy rollback-journal database with a marker table.
fn healthy(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 3000)
         INSERT INTO t SELECT x, hex(randomblob(60)) FROM i;",
    )
    .unwrap();
}

fn config(env: &TestEnv, dbs: &[(&str, &Path)], extra: &str) {
    let mut text = env.daemon_section("");
    for (name, path) in dbs {
        text.push_str(&TestEnv::database_section(
            name,
            path,
            &format!(
                "journal_mode = \"keep\"\n[database.backup]\ndir = \"{}\"\n{extra}",
                env.path(&format!("backups/{name}")).display()
            ),
        ));
    }
    env.write_config(&text);
}

/// Every file in the directory of `db` with its size and modification time.
fn snapshot(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let m = e.metadata().unwrap();
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        m.len(),
                        m.modified().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

struct Case {
    name: &'static str,
    make: fn(&Path),
    code: i32,
    says: &'static str,
}

fn corrupt_a_page(path: &Path) {
    healthy(path);
    let mut bytes = std::fs::read(path).unwrap();
    let page = 4096;
    // Somewhere in the middle of a table b-tree page (not page 1).
    let at = page * 5 + 100;
    for b in &mut bytes[at..at + 300] {
        *b = 0xA5;
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn each_bad_database_fails_its_own_way_and_nothing_changes() {
    let cases = [
        Case {
            name: "missing",
            make: |p| std::fs::create_dir_all(p.parent().unwrap()).unwrap(),
            code: 66,
            says: "database file does not exist",
        },
        Case {
            name: "directory",
            make: |p| std::fs::create_dir_all(p).unwrap(),
            code: 66,
            says: "not a regular file",
        },
        Case {
            name: "empty",
            make: |p| {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, b"").unwrap();
            },
            code: 65,
            says: "empty",
        },
        Case {
            name: "garbage",
            make: |p| {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, [0x42u8; 9000]).unwrap();
            },
            code: 65,
            says: "not an SQLite database",
        },
        Case {
            name: "corrupt",
            make: corrupt_a_page,
            code: 65,
            says: "",
        },
    ];
    for case in cases {
        let env = TestEnv::new();
        let db = env.path(&format!("app/{}.db", case.name));
        (case.make)(&db);
        config(&env, &[("bad", &db)], "");
        let before = snapshot(&env.path("app"));
        for job in ["backup", "prune", "vacuum"] {
            let o = env.cmd().args(["run", "bad", job]).output().unwrap();
            // prune and vacuum have no section here: the config error comes first (78);
            // backup meets the database.
            if job != "backup" {
                assert_eq!(
                    o.status.code(),
                    Some(78),
                    "{}: {job}: {}",
                    case.name,
                    both(&o)
                );
                continue;
            }
            assert_eq!(
                o.status.code(),
                Some(case.code),
                "{}: {}",
                case.name,
                both(&o)
            );
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains(case.says) && err.contains(&db.display().to_string()),
                "{}: {}",
                case.name,
                both(&o)
            );
            // One line on stderr for the result (log lines aside).
            assert!(
                err.lines()
                    .any(|l| l.starts_with("litekeeper: backup bad: failed:")),
                "{}",
                both(&o)
            );
        }
        assert_eq!(
            snapshot(&env.path("app")),
            before,
            "{}: files changed",
            case.name
        );
        // No backup under a final name.
        let finals: Vec<_> = std::fs::read_dir(env.path("backups/bad"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".db") || n.ends_with(".zst"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(finals.is_empty(), "{}: {finals:?}", case.name);
    }
}

#[test]
fn read_only_file_and_directory_are_named_and_left_alone() {
    let env = TestEnv::new();
    let ro_file = env.path("rofile/app.db");
    let ro_dir = env.path("rodir/app.db");
    healthy(&ro_file);
    healthy(&ro_dir);
    config(&env, &[("rofile", &ro_file), ("rodir", &ro_dir)], "");
    open_to_nobody(&env);
    for p in [&ro_file, &ro_dir] {
        give_to_nobody(p);
        give_to_nobody(p.parent().unwrap());
        set_mode(p.parent().unwrap(), 0o755);
    }
    std::fs::create_dir_all(env.path("backups")).unwrap();
    give_to_nobody(&env.path("backups"));
    set_mode(&ro_file, 0o444);
    set_mode(ro_dir.parent().unwrap(), 0o555);
    let before: Vec<_> = [&ro_file, &ro_dir]
        .iter()
        .map(|p| snapshot(p.parent().unwrap()))
        .collect();
    for (name, says) in [
        ("rofile", "no write permission on the file"),
        ("rodir", "no write permission on directory"),
    ] {
        let o = unprivileged(&env)
            .arg("-c")
            .arg(env.config_path())
            .args(["run", name, "backup"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(66), "{name}: {}", both(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(says),
            "{name}: {}",
            both(&o)
        );
    }
    let after: Vec<_> = [&ro_file, &ro_dir]
        .iter()
        .map(|p| snapshot(p.parent().unwrap()))
        .collect();
    assert_eq!(before, after);
    set_mode(ro_dir.parent().unwrap(), 0o755);
}

/// A rollback-journal database whose writer died mid-transaction, leaving a hot journal.
fn hot_journal(path: &Path) {
    healthy(path);
    let script = format!(
        "import sqlite3, os, signal
c = sqlite3.connect('{}', isolation_level=None)
c.execute('PRAGMA journal_mode=DELETE')
c.execute('PRAGMA cache_size=1')
c.execute('BEGIN')
c.execute(\"UPDATE t SET v = 'torn'\")
os.kill(os.getpid(), signal.SIGKILL)",
        path.display()
    );
    let _ = std::process::Command::new("python3")
        .args(["-c", &script])
        .status()
        .unwrap();
}

#[test]
fn hot_journal_is_rolled_back_by_sqlite_and_the_backup_has_the_committed_state() {
    let env = TestEnv::new();
    let db = env.path("app/hot.db");
    hot_journal(&db);
    let journal = PathBuf::from(format!("{}-journal", db.display()));
    assert!(
        std::fs::metadata(&journal)
            .map(|m| m.len() > 0)
            .unwrap_or(false),
        "setup: no hot journal"
    );
    config(&env, &[("hot", &db)], "");
    let o = env.cmd().arg("check").output().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("a rollback journal (-journal) is present"),
        "check does not mention the hot journal: {}",
        both(&o)
    );
    env.run_ok(&["run", "hot", "backup"]);
    // The interrupted UPDATE is gone from the database and from the backup.
    let c = Connection::open(&db).unwrap();
    let torn: i64 = c
        .query_row("SELECT count(*) FROM t WHERE v = 'torn'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(torn, 0);
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    assert!(!journal.exists() || std::fs::metadata(&journal).unwrap().len() == 0);
}

fn hold_exclusive(db: &Path) -> KillOnDrop {
    let script = format!(
        "import sqlite3, time, sys
c = sqlite3.connect('{}', isolation_level=None)
c.execute('PRAGMA journal_mode=DELETE')
c.execute('BEGIN EXCLUSIVE')
print('held', flush=True)
time.sleep(60)",
        db.display()
    );
    let mut python = std::process::Command::new("python3");
    python.args(["-c", &script]);
    let (child, line) = start_holder(python);
    assert_eq!(line.trim(), "held");
    child
}

#[test]
fn database_locked_by_another_process_is_a_busy_failure_with_75() {
    let env = TestEnv::new();
    let db = env.path("app/locked.db");
    healthy(&db);
    config(&env, &[("locked", &db)], "");
    let _held = hold_exclusive(&db);
    let t = Instant::now();
    let o = env
        .cmd()
        .args(["run", "locked", "backup"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(75), "{}", both(&o));
    assert!(t.elapsed() < Duration::from_secs(20));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("locked") || err.contains("busy"),
        "{}",
        both(&o)
    );
}

#[test]
fn daemon_keeps_serving_the_good_database_among_bad_ones() {
    let env = TestEnv::new();
    let good = env.path("good/app.db");
    healthy(&good);
    let missing = env.path("gone/app.db");
    std::fs::create_dir_all(missing.parent().unwrap()).unwrap();
    let garbage = env.path("garbage/app.db");
    std::fs::create_dir_all(garbage.parent().unwrap()).unwrap();
    std::fs::write(&garbage, [7u8; 5000]).unwrap();
    let locked = env.path("locked/app.db");
    healthy(&locked);
    let _held = hold_exclusive(&locked);
    config(
        &env,
        &[
            ("good", &good),
            ("gone", &missing),
            ("garbage", &garbage),
            ("locked", &locked),
        ],
        "schedule = \"* * * * * *\"\nkeep = { last = 2 }",
    );
    let mut daemon = env.daemon(&[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let count =
        |db: &str, outcome: &str| env.count_runs("database = ?1 AND outcome = ?2", [db, outcome]);
    while Instant::now() < deadline
        && !(count("good", "ok") >= 3
            && count("gone", "failed") >= 2
            && count("garbage", "failed") >= 2
            && count("locked", "failed") + count("locked", "skipped") >= 1)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = daemon.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(count("good", "ok") >= 3, "good database not served");
    assert!(count("gone", "failed") >= 2);
    assert!(count("garbage", "failed") >= 2);
    assert!(count("locked", "failed") + count("locked", "skipped") >= 1);
    assert!(!missing.exists(), "a missing database was created");
    assert_eq!(std::fs::read(&garbage).unwrap(), vec![7u8; 5000]);
}
