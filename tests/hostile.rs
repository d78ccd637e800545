//! Hostile files: symlinked and foreign-owned directories, names with newlines and invalid
//! UTF-8, a directory with 100k entries, private modes of what we create, and environment
//! overrides that try to point an unprivileged daemon elsewhere.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::Connection;

use crate::util::{
    backup_into, both, chown_tree, give_to_nobody, mkfifo, names, open_to_nobody, root_or_skip,
    unprivileged, TestEnv,
};

fn app(env: &TestEnv) -> PathBuf {
    env.sqlite(
        "app/chat.db",
        "PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS file(id TEXT PRIMARY KEY);",
    )
}

fn config(env: &TestEnv, db: &Path, extra: &str) {
    env.config("").database("chat", db, extra).write();
}

/// [`app`], with a row of `file` whose id is `id` (a referenced upload).
fn app_referencing(env: &TestEnv, id: &str) -> PathBuf {
    let db = app(env);
    Connection::open(&db)
        .unwrap()
        .execute("INSERT INTO file VALUES (?1)", [id])
        .unwrap();
    db
}

/// `ARGS` exits 73 and says `says` on stderr.
fn assert_refused(env: &TestEnv, args: &[&str], says: &str) {
    let o = env.run_code(args, 73);
    crate::util::assert_stderr_has(&o, says);
}

/// `run chat backup` as the unprivileged user, with the variable `key` set to `value`.
fn unprivileged_backup(
    env: &TestEnv,
    key: &str,
    value: impl AsRef<std::ffi::OsStr>,
) -> std::process::Output {
    unprivileged(env)
        .arg("-c")
        .arg(env.config_path())
        .args(["run", "chat", "backup"])
        .env(key, value)
        .output()
        .unwrap()
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
    assert_refused(&env, &["run", "chat", "backup"], "is a symlink");
    assert_refused(&env, &["run", "chat", "prune"], "a symlink");
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
    if !root_or_skip("needs root to chown") {
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
    assert_refused(&env, &["run", "chat", "backup"], "is owned by uid 65534");
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
    let o = env.run_ok(&["run", "chat", "prune", "--dry-run"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("\"c2_new\\nline.txt\""),
        "name not escaped: {out}"
    );
    env.run_ok(&["run", "chat", "prune"]);
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
    crate::util::assert_stdout_has(&o, "and 50000 files");
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
    env.run_ok(&["run", "chat", "backup"]);
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

/// The app's database and its directory owned by [`NOBODY`], backed up into `b`.
fn app_of_nobody(env: &TestEnv) -> PathBuf {
    let db = app(env);
    config(env, &db, &backup_into(&env.path("b")));
    open_to_nobody(env);
    give_to_nobody(&env.path("app"));
    give_to_nobody(&db);
    db
}

#[test]
fn environment_overrides_cannot_send_an_unprivileged_daemon_elsewhere() {
    if !root_or_skip("needs root to run as another user") {
        return;
    }
    let env = TestEnv::new();
    app_of_nobody(&env);
    // Database entries cannot be reached from the environment at all.
    let o = unprivileged_backup(&env, "LITEKEEPER__DATABASE__0__BACKUP__DIR", "/root/x");
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    crate::util::assert_stderr_has(&o, "cannot be set from the environment");
    // The daemon's own directories can, but the operating system still decides.
    let forbidden = PathBuf::from("/root/litekeeper-must-not-exist");
    let _ = std::fs::remove_dir_all(&forbidden);
    let o = unprivileged_backup(&env, "LITEKEEPER__DAEMON__STATE_DIR", &forbidden);
    assert_ne!(o.status.code(), Some(0), "{}", both(&o));
    crate::util::assert_stderr_has(&o, &forbidden.display().to_string());
    assert!(!forbidden.exists());
    // A relative path through the environment is refused before anything runs.
    let o = unprivileged_backup(&env, "LITEKEEPER__DAEMON__STATE_DIR", "../../tmp/x");
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    crate::util::assert_stderr_has(&o, "LITEKEEPER__DAEMON__STATE_DIR");
}

#[test]
fn root_runs_as_the_owner_of_state_dir() {
    if !root_or_skip("needs root") {
        return;
    }
    let env = TestEnv::new();
    app_of_nobody(&env);
    std::fs::create_dir_all(env.path("b")).unwrap();
    give_to_nobody(&env.path("b"));
    env.run_ok(&["run", "chat", "backup"]);
    for p in ["state/state.db", "locks/chat.lock", "b/manifest.json"] {
        let uid = std::fs::metadata(env.path(p)).unwrap().uid();
        assert_eq!(uid, 65534, "{p} is owned by uid {uid}");
    }
}

// ---------------------------------------------------------------------------------------------
// Escapes and hangs of issue 13: each scenario is one function, run as root (or whoever runs
// the tests) and again as an unprivileged user (uid 65534 through setpriv when root).

/// Two tests of a scenario taking [`As`] first (and then the given arguments): as whoever
/// runs the tests, and as the unprivileged user.
macro_rules! as_us_and_nobody {
    ($scenario:ident($($arg:expr),*): $as_us:ident, $as_nobody:ident) => {
        #[test]
        fn $as_us() {
            $scenario(As::Us $(, $arg)*);
        }

        #[test]
        fn $as_nobody() {
            $scenario(As::Nobody $(, $arg)*);
        }
    };
}

/// Who runs litekeeper in a scenario.
#[derive(Clone, Copy, Debug)]
enum As {
    Us,
    Nobody,
}

/// The real binary with `-c <config>`, as `who`.
fn lk(env: &TestEnv, who: As) -> std::process::Command {
    match who {
        As::Us => env.std_cmd(),
        As::Nobody => {
            let mut c = unprivileged(env);
            c.arg("-c").arg(env.config_path());
            c
        }
    }
}

/// Make everything under the temp dir usable by `who` (a no-op for ourselves).
fn hand_over(env: &TestEnv, who: As) {
    if let As::Nobody = who {
        open_to_nobody(env);
        chown_tree(env.dir.path());
    }
}

/// Run to the end, or kill after `limit` and fail: a hang is the defect under test.
fn output_within(
    mut cmd: std::process::Command,
    limit: std::time::Duration,
) -> std::process::Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let o = child.wait_with_output().unwrap();
            panic!("still running after {limit:?}: hung\n{}", both(&o));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn files_rule(uploads: &Path, action: &str) -> String {
    format!(
        "[database.prune]\nmax_fraction = 1.0\n[[database.prune.files]]\ndir = \"{}\"\npattern = '^(?P<id>[a-z][0-9]+)_'\nreferenced_by = \"SELECT id FROM file\"\nmin_age = \"0s\"\naction = \"{action}\"\n",
        uploads.display()
    )
}

fn quarantine_day_directory_that_is_a_symlink_is_never_followed(who: As) {
    let env = TestEnv::new();
    let db = app_referencing(&env, "c1");
    let uploads = env.path("uploads");
    let q = uploads.join(".litekeeper-quarantine");
    std::fs::create_dir_all(&q).unwrap();
    std::fs::write(uploads.join("c1_keep.txt"), "kept").unwrap();
    std::fs::write(uploads.join("c2_orphan.txt"), "orphan").unwrap();
    let target = env.path("target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("precious"), "x").unwrap();
    let expired_target = env.path("expired-target");
    std::fs::create_dir_all(&expired_target).unwrap();
    std::fs::write(expired_target.join("precious"), "x").unwrap();
    // Today's day directory (yesterday's and tomorrow's too, in case the day turns) points
    // elsewhere; an expired one as well.
    let now = chrono::Utc::now();
    for d in [-1i64, 0, 1] {
        let day = (now + chrono::Duration::days(d))
            .format("%Y-%m-%d")
            .to_string();
        symlink(&target, q.join(day)).unwrap();
    }
    symlink(&expired_target, q.join("2001-01-01")).unwrap();
    config(&env, &db, &files_rule(&uploads, "quarantine"));
    hand_over(&env, who);
    let o = output_within(
        {
            let mut c = lk(&env, who);
            c.args(["run", "chat", "prune"]);
            c
        },
        std::time::Duration::from_secs(60),
    );
    assert_eq!(
        names(&target),
        ["precious"],
        "moved through a symlink ({who:?})\n{}",
        both(&o)
    );
    assert_eq!(
        names(&expired_target),
        ["precious"],
        "{who:?}\n{}",
        both(&o)
    );
    assert!(uploads.join("c1_keep.txt").exists());
    assert_eq!(o.status.code(), Some(73), "{who:?}\n{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is a symlink"), "{who:?}\n{}", both(&o));
    assert!(
        std::fs::read_to_string(uploads.join("c2_orphan.txt")).unwrap() == "orphan",
        "the orphan stays where it was when its quarantine is refused"
    );
}

as_us_and_nobody!(
    quarantine_day_directory_that_is_a_symlink_is_never_followed():
    quarantine_day_directory_that_is_a_symlink_is_never_followed_as_root,
    quarantine_day_directory_that_is_a_symlink_is_never_followed_unprivileged
);

/// The uploads directory is swapped for a symlink while the job removes files: the removals
/// that follow must stay in the directory that was listed. A real race, made reliable: the
/// job removes 20,000 orphans in name order; the test swaps as soon as the first is gone.
fn files_rule_redirected_mid_run_stays_in_its_directory(who: As, action: &str) {
    const N: usize = 20_000;
    let env = TestEnv::new();
    let db = app_referencing(&env, "k1");
    let uploads = env.path("uploads");
    let target = env.path("target");
    std::fs::create_dir_all(&uploads).unwrap();
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(uploads.join("k1_keep"), "kept").unwrap();
    for i in 0..N {
        std::fs::File::create(uploads.join(format!("f{i:05}_x"))).unwrap();
        std::fs::File::create(target.join(format!("f{i:05}_x"))).unwrap();
    }
    config(&env, &db, &files_rule(&uploads, action));
    hand_over(&env, who);
    let mut cmd = lk(&env, who);
    cmd.args(["run", "chat", "prune"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let first = uploads.join("f00000_x");
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    while first.exists() {
        assert!(Instant::now() < deadline, "the job never started removing");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job ended before removing"
        );
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let real = env.path("uploads.real");
    std::fs::rename(&uploads, &real).unwrap();
    symlink(&target, &uploads).unwrap();
    let o = child.wait_with_output().unwrap();
    let left = names(&target);
    assert_eq!(
        left.len(),
        N,
        "{} files of the symlink's target were removed ({who:?}, {action})\n{}",
        N - left.len(),
        both(&o)
    );
    assert!(
        !target.join(".litekeeper-quarantine").exists(),
        "{who:?} {action}"
    );
    assert_eq!(o.status.code(), Some(0), "{who:?} {action}\n{}", both(&o));
    // Everything happened in the directory that was listed (now uploads.real).
    let mut expect = vec!["k1_keep".to_string()];
    if action == "quarantine" {
        expect.insert(0, ".litekeeper-quarantine".into());
        let q = real.join(".litekeeper-quarantine");
        let days = names(&q);
        assert_eq!(days.len(), 1, "{days:?}");
        assert_eq!(names(&q.join(&days[0])).len(), N);
    }
    assert_eq!(names(&real), expect, "{who:?} {action}");
}

as_us_and_nobody!(
    files_rule_redirected_mid_run_stays_in_its_directory("delete"):
    files_rule_redirected_mid_run_deletes_only_in_its_directory_as_root,
    files_rule_redirected_mid_run_deletes_only_in_its_directory_unprivileged
);

as_us_and_nobody!(
    files_rule_redirected_mid_run_stays_in_its_directory("quarantine"):
    files_rule_redirected_mid_run_quarantines_only_in_its_directory_as_root,
    files_rule_redirected_mid_run_quarantines_only_in_its_directory_unprivileged
);

/// A FIFO (or other special file) where litekeeper expects a regular file: a database's
/// `-journal`, `-wal`, `-shm`, the database itself, the state DB, a lock file, a backup
/// manifest. Every command that meets one ends at once with a clear error naming it; none
/// blocks.
fn special_files_beside_a_database_are_refused(who: As) {
    let limit = std::time::Duration::from_secs(60);
    for (case, commands) in [
        (
            "-journal",
            &[
                &["check"][..],
                &["run", "chat", "backup"],
                &["run", "chat", "prune"],
            ][..],
        ),
        ("-wal", &[&["check"][..], &["run", "chat", "backup"]][..]),
        ("-shm", &[&["check"][..], &["run", "chat", "vacuum"]][..]),
        ("main", &[&["check"][..], &["run", "chat", "backup"]][..]),
        (
            "attached-wal",
            &[&["check"][..], &["run", "chat", "backup"]][..],
        ),
        (
            "state.db",
            &[&["run", "chat", "backup"][..], &["status"]][..],
        ),
        ("state.db-wal", &[&["run", "chat", "backup"][..]][..]),
        ("lock", &[&["run", "chat", "backup"][..]][..]),
        (
            "manifest",
            &[&["run", "chat", "backup"][..], &["backups", "list"]][..],
        ),
        ("dir-lock", &[&["run", "chat", "backup"][..]][..]),
        ("daemon.pid", &[&["daemon"][..]][..]),
    ] {
        let env = TestEnv::new();
        let db = env.sqlite(
            "app/b.db",
            "PRAGMA journal_mode=DELETE; CREATE TABLE t(x); INSERT INTO t VALUES (1);",
        );
        let files = env.sqlite("app/files.db", "CREATE TABLE blob(x);");
        let fifo = match case {
            "main" => {
                std::fs::remove_file(&db).unwrap();
                db.clone()
            }
            "attached-wal" => env.path("app/files.db-wal"),
            "state.db" | "state.db-wal" => {
                std::fs::create_dir_all(env.path("state")).unwrap();
                env.path(&format!("state/{case}"))
            }
            "lock" => {
                std::fs::create_dir_all(env.path("locks")).unwrap();
                env.path("locks/chat.lock")
            }
            "manifest" => {
                std::fs::create_dir_all(env.path("backups")).unwrap();
                env.path("backups/manifest.json")
            }
            "dir-lock" => {
                std::fs::create_dir_all(env.path("backups")).unwrap();
                env.path("backups/.litekeeper.lock")
            }
            "daemon.pid" => {
                std::fs::create_dir_all(env.path("state")).unwrap();
                env.path("state/daemon.pid")
            }
            suffix => env.path(&format!("app/b.db{suffix}")),
        };
        mkfifo(&fifo, 0o666);
        env.config("").database("chat", &db, &format!(
                    "journal_mode = \"keep\"\nattach = {{ files = \"{}\" }}\n[database.backup]\ndir = \"{}\"\n[database.prune]\n[[database.prune.rule]]\ntable = \"t\"\nwhere = \"x > 5\"\n[database.vacuum]\n",
                    files.display(),
                    env.path("backups").display()
                )).write();
        hand_over(&env, who);
        for args in commands {
            let mut c = lk(&env, who);
            c.args(*args);
            let o = output_within(c, limit);
            let text = both(&o);
            assert_ne!(o.status.code(), Some(0), "{case} {args:?} {who:?}\n{text}");
            assert!(
                text.contains(&fifo.display().to_string()) && text.contains("not a regular file"),
                "{case} {args:?} {who:?}: the FIFO is not named\n{text}"
            );
        }
        // Nothing was opened through it or put in its place.
        let ft = std::fs::symlink_metadata(&fifo).unwrap().file_type();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&ft), "{case}");
    }
}

as_us_and_nobody!(
    special_files_beside_a_database_are_refused():
    special_files_beside_a_database_are_refused_as_root,
    special_files_beside_a_database_are_refused_unprivileged
);

/// `levels` nested directories `d/d/d/…` under `at`, made through handles (fast, and no path
/// grows past PATH_MAX); owned by nobody when nobody is to remove them.
fn deep_tree(at: &Path, levels: usize, who: As) {
    let c = std::ffi::CString::new(at.as_os_str().as_bytes()).unwrap();
    let d = c"d";
    // SAFETY: plain syscalls on valid NUL-terminated names and fds this function owns.
    unsafe {
        let mut fd = libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
        assert!(fd >= 0, "open {}", at.display());
        for _ in 0..levels {
            assert_eq!(libc::mkdirat(fd, d.as_ptr(), 0o755), 0, "mkdirat");
            if let As::Nobody = who {
                assert_eq!(libc::fchownat(fd, d.as_ptr(), 65534, 65534, 0), 0);
            }
            let next = libc::openat(fd, d.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
            assert!(next >= 0, "openat");
            libc::close(fd);
            fd = next;
        }
        libc::close(fd);
    }
}

/// Removes the deep trees at the end, pass or fail (`rm` walks them without recursing).
struct RmRf(PathBuf);
impl Drop for RmRf {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rm")
            .arg("-rf")
            .arg(&self.0)
            .status();
    }
}

/// A tenant who can write an upload directory plants a 60,000-level directory tree: in an
/// expired quarantine day, and as an orphan directory of an `entries = "dirs"` delete rule.
/// Walking it must neither overflow the stack (the process used to abort with SIGABRT, the
/// daemon with it at every run) nor exhaust file descriptors: the tree is refused past
/// MAX_TREE_DEPTH levels with one line naming it, and left in place.
fn a_deep_directory_tree_is_refused_not_a_crash(who: As) {
    const LEVELS: usize = 60_000;
    let env = TestEnv::new();
    let _cleanup = RmRf(env.dir.path().to_path_buf());
    let db = app_referencing(&env, "c1");
    let uploads = env.path("uploads");
    let day = uploads.join(".litekeeper-quarantine").join("2001-01-01");
    std::fs::create_dir_all(&day).unwrap();
    std::fs::write(uploads.join("c1_keep.txt"), "kept").unwrap();
    let vectors = env.path("vectors");
    std::fs::create_dir_all(vectors.join("c1_kept")).unwrap();
    std::fs::create_dir_all(vectors.join("c2_deep")).unwrap();
    std::fs::write(vectors.join("c2_deep").join("top.bin"), "12345").unwrap();
    let dirs_rule = format!(
        "[database.prune]\nmax_fraction = 1.0\n[[database.prune.files]]\ndir = \"{}\"\nentries = \"dirs\"\npattern = '^(?P<id>[a-z][0-9]+)_'\nreferenced_by = \"SELECT id FROM file\"\nmin_age = \"0s\"\naction = \"delete\"\n",
        vectors.display()
    );
    config(&env, &db, &files_rule(&uploads, "quarantine"));
    hand_over(&env, who);
    deep_tree(&day, LEVELS, who);
    deep_tree(&vectors.join("c2_deep"), LEVELS, who);
    // Runs prune to the end (no signal) with exit `code`; returns its stderr.
    let run = |args: &[&str], code: i32| {
        let mut c = lk(&env, who);
        c.args(["run", "chat", "prune"]).args(args);
        let o = output_within(c, std::time::Duration::from_secs(120));
        assert!(
            o.status.signal().is_none(),
            "killed by a signal ({who:?})\n{}",
            both(&o)
        );
        assert_eq!(o.status.code(), Some(code), "{who:?}\n{}", both(&o));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };

    // (a) The expired quarantine day.
    let err = run(&[], 74);
    assert!(
        err.contains("2001-01-01") && err.contains("deeper than 256 levels"),
        "{who:?}\n{err}"
    );
    assert_eq!(names(&day), ["d"], "the deep tree stays ({who:?})");
    assert_eq!(
        std::fs::read_to_string(uploads.join("c1_keep.txt")).unwrap(),
        "kept"
    );

    // (b) An orphan directory of a delete rule: the dry run completes and counts what it can
    // reach, the real run refuses it.
    config(&env, &db, &dirs_rule);
    if let As::Nobody = who {
        give_to_nobody(&env.config_path());
    }
    run(&["--dry-run"], 0);
    assert_eq!(names(&vectors), ["c1_kept", "c2_deep"], "{who:?}");
    let err = run(&[], 74);
    assert!(
        err.contains("c2_deep") && err.contains("deeper than 256 levels"),
        "{who:?}\n{err}"
    );
    assert_eq!(names(&vectors), ["c1_kept", "c2_deep"], "{who:?}");
    assert!(vectors.join("c2_deep").join("d").join("d").is_dir());
}

as_us_and_nobody!(
    a_deep_directory_tree_is_refused_not_a_crash():
    a_deep_directory_tree_is_refused_not_a_crash_as_root,
    a_deep_directory_tree_is_refused_not_a_crash_unprivileged
);
