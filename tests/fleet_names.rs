//! Fleets against hostile file names and a hostile file system: a member's name and every
//! template expansion stay below the template's fixed directory, a fleet never leaves its
//! root (no symlinked directory is entered, a file swapped for a symlink after the scan is
//! refused), two files that would share a member name are both refused and reported, and
//! what a scan skips is logged once.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use litekeeper::lock;
use rusqlite::Connection;

use crate::util::{both, TestEnv};

fn make_db(path: &Path, sql: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let c = Connection::open(path).unwrap();
    c.execute_batch(sql).unwrap();
}

fn set_age(path: &Path, age: Duration) {
    let t = SystemTime::now() - age;
    std::fs::File::open(path).unwrap().set_modified(t).unwrap();
}

fn journal_mode(path: &Path) -> String {
    Connection::open(path)
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap()
}

/// Every file below `dir`, relative to it, sorted (symlinks not followed).
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn status_check(env: &TestEnv) -> (Option<i32>, String) {
    let o = env.cmd().args(["status", "--check"]).output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn a_stem_of_dots_never_reaches_the_parent_directory() {
    let env = TestEnv::new();
    let tenants = env.path("tenants");
    // `...db` has the stem `..`: `uploads/{stem}` would be `data`, `bk/inner/{stem}` `bk`.
    make_db(
        &tenants.join("...db"),
        "CREATE TABLE file(id TEXT); INSERT INTO file VALUES ('c1');",
    );
    make_db(
        &tenants.join("good.db"),
        "CREATE TABLE file(id TEXT); INSERT INTO file VALUES ('c1');",
    );
    let data = env.path("data");
    std::fs::create_dir_all(data.join("uploads/good")).unwrap();
    std::fs::write(data.join("c9_precious.txt"), "precious").unwrap();
    set_age(
        &data.join("c9_precious.txt"),
        Duration::from_secs(3 * 86400),
    );
    std::fs::write(data.join("uploads/good/c8_orphan.txt"), "x").unwrap();
    set_age(
        &data.join("uploads/good/c8_orphan.txt"),
        Duration::from_secs(3 * 86400),
    );
    std::fs::create_dir_all(env.path("bk/inner")).unwrap();
    env.write_config(&format!(
        "{}[[database]]\nname = \"t-{{stem}}\"\npath = \"{}/*.db\"\n\
         [database.prune]\nmax_fraction = 1.0\n[[database.prune.files]]\ndir = \"{}/uploads/{{stem}}\"\n\
         pattern = '^(?P<id>c[0-9]+)_'\nreferenced_by = \"SELECT id FROM file\"\nmin_age = \"1d\"\n\
         [database.backup]\ndir = \"{}/inner/{{stem}}\"\n",
        env.daemon_section(""),
        tenants.display(),
        data.display(),
        env.path("bk").display(),
    ));
    for job in ["prune", "backup"] {
        let o = env.cmd().args(["run", "t", job]).output().unwrap();
        // The good member ran; the file with the stem `..` is no member.
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("...db"),
            "the refused file is not named: {}",
            both(&o)
        );
    }
    assert_eq!(
        std::fs::read_to_string(data.join("c9_precious.txt")).unwrap(),
        "precious",
        "prune deleted a file in the parent of uploads/"
    );
    assert!(!data.join("uploads/good/c8_orphan.txt").exists());
    let bk = tree(&env.path("bk"));
    assert!(
        bk.iter()
            .all(|f| f == "inner" || f == "inner/good" || f.starts_with("inner/good/")),
        "a backup landed outside bk/inner/<member>: {bk:?}"
    );
    assert!(
        bk.contains(&"inner/good/manifest.json".to_string()),
        "{bk:?}"
    );
    let (code, out) = status_check(&env);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("...db"), "{out}");
}

#[test]
fn a_symlinked_directory_is_not_part_of_the_fleet() {
    let env = TestEnv::new();
    make_db(&env.path("tenants/alice/alice.db"), "CREATE TABLE t(x);");
    make_db(&env.path("victim/bob.db"), "CREATE TABLE secret(x);");
    symlink(env.path("victim"), env.path("tenants/mallory")).unwrap();
    env.write_config(&format!(
        "{}[[database]]\nname = \"t-{{stem}}\"\npath = \"{}/*/*.db\"\n[database.backup]\ndir = \"{}/{{name}}\"\n",
        env.daemon_section(""),
        env.path("tenants").display(),
        env.path("bk").display(),
    ));
    let o = env.cmd().args(["status", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["database"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["t-alice"], "{}", both(&o));
    let o = env.cmd().args(["run", "t", "backup"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(!env.path("bk/t-bob").exists());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("mallory"),
        "the skipped symlink is not logged: {}",
        both(&o)
    );
}

/// Start `run NAME backup --wait` while the member's lock is held, let `change` act on the
/// file system after the run has scanned the fleet, then release the lock.
fn run_after_scan(env: &TestEnv, name: &str, change: impl FnOnce()) -> std::process::Output {
    let held = lock::try_acquire(&env.path("locks"), name, "test").unwrap();
    let err = env.path("run.err");
    let child = env
        .std_cmd()
        .args(["run", name, "backup", "--wait", "30s"])
        .env("LITEKEEPER_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    // The run has loaded (scanned) the fleet once it says it started: it now waits for the
    // lock.
    let start = Instant::now();
    while !std::fs::read_to_string(&err)
        .unwrap()
        .contains(": started (cli)")
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "run never started: {}",
            std::fs::read_to_string(&err).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(150));
    change();
    drop(held);
    let mut o = child.wait_with_output().unwrap();
    o.stderr = std::fs::read(&err).unwrap();
    o
}

fn swap_config(env: &TestEnv, pattern: &str) {
    env.write_config(&format!(
        "{}[[database]]\nname = \"t-{{stem}}\"\npath = \"{}/{pattern}\"\n[database.backup]\ndir = \"{}/{{name}}\"\n",
        env.daemon_section(""),
        env.path("tenants").display(),
        env.path("bk").display(),
    ));
}

#[test]
fn a_member_swapped_for_a_symlink_after_the_scan_is_refused() {
    let env = TestEnv::new();
    make_db(
        &env.path("tenants/alice.db"),
        "CREATE TABLE t(x); INSERT INTO t VALUES ('alice');",
    );
    let victim = env.path("victim/secret.db");
    make_db(
        &victim,
        "CREATE TABLE secret(x); INSERT INTO secret VALUES ('root only');",
    );
    swap_config(&env, "*.db");
    let o = run_after_scan(&env, "t-alice", || {
        std::fs::rename(env.path("tenants/alice.db"), env.path("alice.moved")).unwrap();
        symlink(&victim, env.path("tenants/alice.db")).unwrap();
    });
    assert_ne!(o.status.code(), Some(0), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("symlink")
            || String::from_utf8_lossy(&o.stdout).contains("symlink"),
        "{}",
        both(&o)
    );
    assert_eq!(journal_mode(&victim), "delete", "the victim was written to");
    assert!(tree(&env.path("bk/t-alice"))
        .iter()
        .all(|f| !f.ends_with(".db")));
}

#[test]
fn a_member_whose_directory_is_swapped_for_a_symlink_is_refused() {
    let env = TestEnv::new();
    make_db(
        &env.path("tenants/alice/main.db"),
        "CREATE TABLE t(x); INSERT INTO t VALUES ('alice');",
    );
    let victim = env.path("victim/main.db");
    make_db(
        &victim,
        "CREATE TABLE secret(x); INSERT INTO secret VALUES ('root only');",
    );
    env.write_config(&format!(
        "{}[[database]]\nname = \"t-{{stem}}\"\npath = \"{}/*/main.db\"\n[database.backup]\ndir = \"{}/{{name}}\"\n",
        env.daemon_section(""),
        env.path("tenants").display(),
        env.path("bk").display(),
    ));
    // Member names come from the file's stem: one member "t-main".
    let o = run_after_scan(&env, "t-main", || {
        std::fs::rename(env.path("tenants/alice"), env.path("alice.moved")).unwrap();
        symlink(env.path("victim"), env.path("tenants/alice")).unwrap();
    });
    assert_ne!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(journal_mode(&victim), "delete", "the victim was written to");
    assert!(tree(&env.path("bk/t-main"))
        .iter()
        .all(|f| !f.ends_with(".db")));
}

#[test]
fn a_member_deleted_after_the_scan_is_gone_not_failed() {
    let env = TestEnv::new();
    make_db(&env.path("tenants/alice.db"), "CREATE TABLE t(x);");
    swap_config(&env, "*.db");
    let o = run_after_scan(&env, "t-alice", || {
        std::fs::remove_file(env.path("tenants/alice.db")).unwrap();
    });
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("gone"), "{}", both(&o));
    let outcome: String = Connection::open(env.path("state/state.db"))
        .unwrap()
        .query_row(
            "SELECT outcome FROM runs WHERE database = 't-alice'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(outcome, "skipped", "{}", both(&o));
}

#[test]
fn two_files_with_one_member_name_are_both_refused_and_reported() {
    let env = TestEnv::new();
    for (file, who) in [
        ("acme.db", "lower"),
        ("ACME.db", "upper"),
        ("a b.db", "space"),
        ("a-b.db", "dash"),
        ("solo.db", "solo"),
    ] {
        make_db(
            &env.path(&format!("tenants/{file}")),
            &format!("CREATE TABLE t(x); INSERT INTO t VALUES ('{who}');"),
        );
    }
    swap_config(&env, "*.db");
    let (code, out) = status_check(&env);
    assert_eq!(code, Some(2), "{out}");
    for file in ["acme.db", "ACME.db", "a b.db", "a-b.db"] {
        assert!(out.contains(file), "{file} not named: {out}");
    }
    assert!(out.contains("CRITICAL"), "{out}");
    // Neither file of a pair is a member: no command acts on either.
    for name in ["t-acme", "t-a-b"] {
        let o = env.cmd().args(["run", name, "backup"]).output().unwrap();
        assert_ne!(o.status.code(), Some(0), "{}", both(&o));
        let o = env
            .cmd()
            .args(["restore", name, "--to"])
            .arg(env.path("out.db"))
            .output()
            .unwrap();
        assert_ne!(o.status.code(), Some(0), "{}", both(&o));
    }
    let o = env.cmd().args(["run", "t", "backup"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(
        tree(&env.path("bk"))
            .iter()
            .filter(|f| !f.contains('/'))
            .count(),
        1
    );
    assert!(env.path("bk/t-solo").exists());
}

/// The daemon logs a collision, a symlink and a directory in the fleet's directory once, not
/// on every tick.
#[test]
fn the_daemon_reports_what_a_scan_skips_once() {
    let env = TestEnv::new();
    make_db(&env.path("tenants/solo.db"), "CREATE TABLE t(x);");
    make_db(&env.path("tenants/acme.db"), "CREATE TABLE t(x);");
    make_db(&env.path("tenants/ACME.db"), "CREATE TABLE t(x);");
    make_db(&env.path("elsewhere/x.db"), "CREATE TABLE t(x);");
    symlink(env.path("elsewhere/x.db"), env.path("tenants/link.db")).unwrap();
    std::fs::create_dir_all(env.path("tenants/dir.db")).unwrap();
    env.write_config(&format!(
        "{}[[database]]\nname = \"t-{{stem}}\"\npath = \"{}/*.db\"\n[database.backup]\nschedule = \"* * * * * *\"\ndir = \"{}/{{name}}\"\n",
        env.daemon_section("timezone = \"UTC\""),
        env.path("tenants").display(),
        env.path("bk").display(),
    ));
    let log = env.path("daemon.log");
    let mut child = env
        .std_cmd()
        .arg("daemon")
        .env("LITEKEEPER_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Wait for a few ticks (runs of the solo member).
    let start = Instant::now();
    let runs = || {
        Connection::open(env.path("state/state.db"))
            .ok()
            .and_then(|c| {
                c.query_row(
                    "SELECT count(*) FROM runs WHERE database = 't-solo' AND outcome = 'ok'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .ok()
            })
            .unwrap_or(0)
    };
    while runs() < 4 {
        assert!(start.elapsed() < Duration::from_secs(30), "no ticks");
        std::thread::sleep(Duration::from_millis(100));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(lines("ACME.db"), 1, "{text}");
    assert_eq!(lines("link.db"), 1, "{text}");
    assert_eq!(lines("dir.db"), 1, "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("link.db") && l.contains("WARN")),
        "{text}"
    );
}
