//! Hostile files: symlinked and foreign-owned directories, names with newlines and invalid
//! UTF-8, a directory with 100k entries, private modes of what we create, and environment
//! overrides that try to point an unprivileged daemon elsewhere.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::Connection;

use crate::check::{open_to_nobody, unprivileged};
use crate::util::{both, is_root, TestEnv};

fn app(env: &TestEnv) -> PathBuf {
    env.sqlite(
        "app/chat.db",
        "PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS file(id TEXT PRIMARY KEY);",
    )
}

fn config(env: &TestEnv, db: &Path, extra: &str) {
    env.write_config(&format!(
        "{}{}",
        env.daemon_section(""),
        TestEnv::database_section("chat", db, extra)
    ));
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn symlinked_backup_and_files_directories_are_refused() {
    let env = TestEnv::new();
    let db = app(&env);
    let elsewhere = env.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("c1_keep.txt"), "precious").unwrap();
    symlink(&elsewhere, env.path("backups")).unwrap();
    symlink(&elsewhere, env.path("uploads")).unwrap();
    config(
        &env,
        &db,
        &format!(
            "[database.backup]\ndir = \"{}\"\n[database.prune]\nmax_fraction = 1.0\n[[database.prune.files]]\ndir = \"{}\"\npattern = '^(?P<id>c[0-9]+)_'\nreferenced_by = \"SELECT 'other'\"\nmin_age = \"0s\"",
            env.path("backups").display(),
            env.path("uploads").display()
        ),
    );
    let o = env.cmd().args(["run", "chat", "backup"]).output().unwrap();
    assert_eq!(o.status.code(), Some(73), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is a symlink"),
        "{}",
        both(&o)
    );
    let o = env.cmd().args(["run", "chat", "prune"]).output().unwrap();
    assert_eq!(o.status.code(), Some(73), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("a symlink"),
        "{}",
        both(&o)
    );
    let left: Vec<_> = std::fs::read_dir(&elsewhere).unwrap().flatten().collect();
    assert_eq!(
        left.len(),
        1,
        "something was written or deleted through a symlink"
    );
    assert_eq!(
        std::fs::read_to_string(elsewhere.join("c1_keep.txt")).unwrap(),
        "precious"
    );
}

#[test]
fn a_backup_directory_owned_by_someone_else_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to chown");
        return;
    }
    let env = TestEnv::new();
    let db = app(&env);
    let dir = env.path("backups");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    config(
        &env,
        &db,
        &format!("[database.backup]\ndir = \"{}\"", dir.display()),
    );
    let o = env.cmd().args(["run", "chat", "backup"]).output().unwrap();
    assert_eq!(o.status.code(), Some(73), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is owned by uid 65534"),
        "{}",
        both(&o)
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

#[test]
fn odd_names_are_handled_and_reported_on_one_line() {
    let env = TestEnv::new();
    let db = app(&env);
    let uploads = env.path("uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    Connection::open(&db)
        .unwrap()
        .execute("INSERT INTO file VALUES ('c1')", [])
        .unwrap();
    std::fs::write(uploads.join("c1_ok.txt"), "x").unwrap();
    std::fs::write(uploads.join("c2_new\nline.txt"), "x").unwrap();
    let raw = uploads.join(OsStr::from_bytes(b"c3_\xff\xfe.bin"));
    std::fs::write(&raw, "x").unwrap();
    config(
        &env,
        &db,
        &format!(
            "[database.prune]\nmax_fraction = 1.0\n[[database.prune.files]]\ndir = \"{}\"\npattern = '^(?P<id>c[0-9]+)_'\nreferenced_by = \"SELECT id FROM file\"\nmin_age = \"0s\"",
            uploads.display()
        ),
    );
    let o = env
        .cmd()
        .args(["run", "chat", "prune", "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("\"c2_new\\nline.txt\""),
        "name not escaped: {out}"
    );
    let o = env.cmd().args(["run", "chat", "prune"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(!uploads.join("c2_new\nline.txt").exists());
    assert!(uploads.join("c1_ok.txt").exists());
    assert!(
        raw.exists(),
        "a name that is not UTF-8 cannot match a pattern and is never touched"
    );
}

#[test]
fn a_directory_with_100k_entries_is_pruned_exactly() {
    let env = TestEnv::new();
    let db = app(&env);
    let uploads = env.path("uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    let t = Instant::now();
    for i in 0..100_000u32 {
        std::fs::File::create(uploads.join(format!("f{i}_x"))).unwrap();
    }
    let made = t.elapsed();
    // Even ids are referenced.
    let mut c = Connection::open(&db).unwrap();
    let tx = c.transaction().unwrap();
    for i in (0..100_000u32).step_by(2) {
        tx.execute("INSERT INTO file VALUES (?1)", [format!("f{i}")])
            .unwrap();
    }
    tx.commit().unwrap();
    config(
        &env,
        &db,
        &format!(
            "[database.prune]\nmax_fraction = 0.6\n[[database.prune.files]]\ndir = \"{}\"\npattern = '^(?P<id>f[0-9]+)_'\nreferenced_by = \"SELECT id FROM file\"\nmin_age = \"0s\"",
            uploads.display()
        ),
    );
    let t = Instant::now();
    let o = env.cmd().args(["run", "chat", "prune"]).output().unwrap();
    let took = t.elapsed();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("and 50000 files"),
        "{}",
        both(&o)
    );
    let left: Vec<String> = std::fs::read_dir(&uploads)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 50_000);
    assert!(left.iter().all(|n| {
        let id: u32 = n[1..n.len() - 2].parse().unwrap();
        id.is_multiple_of(2)
    }));
    eprintln!("100k entries: created in {made:?}, pruned 50k in {took:?}");
}

#[test]
fn state_and_backups_are_private() {
    let env = TestEnv::new();
    let db = app(&env);
    config(
        &env,
        &db,
        &format!(
            "[database.backup]\ndir = \"{}\"",
            env.path("b/chat").display()
        ),
    );
    let o = env.cmd().args(["run", "chat", "backup"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(mode(&env.path("state")), 0o700);
    assert_eq!(mode(&env.path("state/state.db")), 0o600);
    let dir = env.path("b/chat");
    assert_eq!(mode(&dir), 0o700);
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    let lock = env.path("locks/chat.lock");
    assert_eq!(mode(&lock) & 0o007, 0, "lock file readable by others");
}

#[test]
fn environment_overrides_cannot_send_an_unprivileged_daemon_elsewhere() {
    if !is_root() {
        eprintln!("skipped: needs root to run as another user");
        return;
    }
    let env = TestEnv::new();
    let db = app(&env);
    config(
        &env,
        &db,
        &format!("[database.backup]\ndir = \"{}\"", env.path("b").display()),
    );
    open_to_nobody(&env);
    crate::check::give_to_nobody(&env.path("app"));
    crate::check::give_to_nobody(&db);
    // Database entries cannot be reached from the environment at all.
    let o = unprivileged(&env)
        .arg("-c")
        .arg(env.config_path())
        .args(["run", "chat", "backup"])
        .env("LITEKEEPER__DATABASE__0__BACKUP__DIR", "/root/x")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot be set from the environment"),
        "{}",
        both(&o)
    );
    // The daemon's own directories can, but the operating system still decides.
    let forbidden = PathBuf::from("/root/litekeeper-must-not-exist");
    let _ = std::fs::remove_dir_all(&forbidden);
    let o = unprivileged(&env)
        .arg("-c")
        .arg(env.config_path())
        .args(["run", "chat", "backup"])
        .env("LITEKEEPER__DAEMON__STATE_DIR", &forbidden)
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&forbidden.display().to_string()),
        "{}",
        both(&o)
    );
    assert!(!forbidden.exists());
    // A relative path through the environment is refused before anything runs.
    let o = unprivileged(&env)
        .arg("-c")
        .arg(env.config_path())
        .args(["run", "chat", "backup"])
        .env("LITEKEEPER__DAEMON__STATE_DIR", "../../tmp/x")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("LITEKEEPER__DAEMON__STATE_DIR"),
        "{}",
        both(&o)
    );
}

#[test]
fn root_runs_as_the_owner_of_state_dir() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let env = TestEnv::new();
    let db = app(&env);
    config(
        &env,
        &db,
        &format!("[database.backup]\ndir = \"{}\"", env.path("b").display()),
    );
    open_to_nobody(&env);
    crate::check::give_to_nobody(&env.path("app"));
    crate::check::give_to_nobody(&db);
    std::fs::create_dir_all(env.path("b")).unwrap();
    crate::check::give_to_nobody(&env.path("b"));
    let o = env.cmd().args(["run", "chat", "backup"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    for p in ["state/state.db", "locks/chat.lock", "b/manifest.json"] {
        let uid = std::fs::metadata(env.path(p)).unwrap().uid();
        assert_eq!(uid, 65534, "{p} is owned by uid {uid}");
    }
}
