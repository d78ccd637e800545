//! `restore` against what a real machine leaves beside a database: a hot rollback journal, a
//! stale WAL at the `--to` path, symlinked paths and directories, hard links, the daemon's own
//! pooled connection, other users' processes, a root operator, a killed restore's temp file.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::util::{
    backup_into, both, chown_tree, give_to_nobody, open_to_nobody, root_or_skip, sidecar as side,
    start_holder, wait_until, KillOnDrop, TestEnv, NOBODY,
};

/// `app/chat.db` in rollback-journal mode, marker 'backup', and `rows` blobs of `size` bytes.
pub(crate) fn marker_db(env: &TestEnv, rows: u32, size: u32) -> PathBuf {
    env.sqlite(
        "app/chat.db",
        &format!(
            "PRAGMA journal_mode=DELETE;
             CREATE TABLE marker(v TEXT);
             INSERT INTO marker VALUES ('backup');
             CREATE TABLE bulk(id INTEGER PRIMARY KEY, x BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < {rows})
             INSERT INTO bulk(x) SELECT randomblob({size}) FROM n;"
        ),
    )
}

/// `app/chat.db` in rollback-journal mode (`journal_mode = "keep"`), marker 'backup', with one
/// backup taken; returns (db, backup dir).
fn journal_setup(env: &TestEnv) -> (PathBuf, PathBuf) {
    let db = marker_db(env, 300, 2000);
    let dir = env.path("backups");
    let stanza = format!(
        "journal_mode = \"keep\"\n{}\nkeep = {{ last = 10 }}",
        backup_into(&dir)
    );
    env.config("").database("chat", &db, &stanza).write();
    env.run_ok(&["run", "chat", "backup"]);
    (db, dir)
}

/// A copy of `src` at `at` (its directory made) whose connection, returned open with
/// automatic checkpoints off, has written another database's changes into its `-wal`: marker
/// 'foreign', `bulk` cut to its first `keep` rows.
pub(crate) fn foreign_wal(src: &Path, at: &Path, keep: u32) -> Connection {
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::fs::copy(src, at).unwrap();
    let c = Connection::open(at).unwrap();
    c.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         UPDATE marker SET v = 'foreign'; DELETE FROM bulk WHERE id > {keep};"
    ))
    .unwrap();
    c
}

fn marker(db: &Path) -> String {
    Connection::open(db)
        .unwrap()
        .query_row("SELECT v FROM marker", [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{}: {e}", db.display()))
}

pub(crate) fn set_marker(db: &Path, v: &str) {
    Connection::open(db)
        .unwrap()
        .execute("UPDATE marker SET v = ?1", [v])
        .unwrap();
}

fn quick_check(db: &Path) -> String {
    Connection::open(db)
        .unwrap()
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .unwrap_or_else(|e| e.to_string())
}

/// Leave `db` as an application killed mid-transaction leaves it: its file already holds
/// half of a transaction (marker 'half', bulk rewritten) and `db-journal` is hot.
pub(crate) fn make_hot_journal(db: &Path) {
    let snap = db.with_extension("crash-snap");
    {
        let c = Connection::open(db).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=DELETE; PRAGMA cache_size=2; BEGIN;
             UPDATE marker SET v = 'half';
             UPDATE bulk SET x = randomblob(2000);",
        )
        .unwrap();
        // The transaction's pages spilled into the file: copy file and journal as a crash
        // would leave them, then let this connection roll back.
        std::fs::copy(db, &snap).unwrap();
        std::fs::copy(side(db, "-journal"), side(&snap, "-journal")).unwrap();
        c.execute_batch("ROLLBACK").unwrap();
    }
    std::fs::rename(side(&snap, "-journal"), side(db, "-journal")).unwrap();
    std::fs::rename(&snap, db).unwrap();
    assert!(std::fs::metadata(side(db, "-journal")).unwrap().len() > 0);
}

/// The `<db>.pre-restore-*` files beside `db` (not their sidecars).
fn kept(db: &Path) -> Vec<PathBuf> {
    let prefix = format!("{}.pre-restore-", db.file_name().unwrap().to_string_lossy());
    let mut v: Vec<PathBuf> = std::fs::read_dir(db.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(&prefix) && !n.ends_with("-wal") && !n.ends_with("-journal")
        })
        .collect();
    v.sort();
    v
}

/// python3 holding an SQLite connection to `path` until dropped.
fn hold_open(path: &Path) -> KillOnDrop {
    let mut python = StdCommand::new("python3");
    python
        .args([
            "-c",
            "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1]); \
             c.execute('select count(*) from sqlite_master').fetchall(); \
             print('ok', flush=True); time.sleep(60)",
        ])
        .arg(path);
    held_once_ok(python)
}

/// A shell of user and group `uid` (through setpriv) holding `path` open for reading.
fn hold_open_as(path: &Path, uid: u32) -> KillOnDrop {
    let mut sh = StdCommand::new("setpriv");
    sh.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .args([
            "sh",
            "-c",
            "exec 3<\"$1\" && echo ok && exec sleep 60",
            "sh",
        ])
        .arg(path);
    held_once_ok(sh)
}

/// Wait for the holder's "ok" (the file is open).
fn held_once_ok(cmd: StdCommand) -> KillOnDrop {
    let (child, line) = start_holder(cmd);
    assert_eq!(line.trim(), "ok");
    child
}

#[test]
fn in_place_restore_over_a_hot_journal_keeps_both_databases_whole() {
    let env = TestEnv::new();
    let (db, _dir) = journal_setup(&env);
    set_marker(&db, "live");
    make_hot_journal(&db);
    // --force: as another user than root the open check cannot be done (and is not the
    // subject here); the journal is handled the same.
    env.run_ok(&["restore", "chat", "--in-place", "--force"]);
    assert!(!side(&db, "-journal").exists(), "the old journal is gone");
    assert_eq!(quick_check(&db), "ok");
    assert_eq!(marker(&db), "backup");
    // The previous database is whole: its interrupted transaction was rolled back.
    let kept = kept(&db);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(quick_check(&kept[0]), "ok");
    assert_eq!(marker(&kept[0]), "live");
}

#[test]
fn restore_to_moves_a_stale_wal_aside_instead_of_replaying_it() {
    let env = TestEnv::new();
    let (db, dir) = journal_setup(&env);
    // A WAL full of another database's changes, left at the target path.
    let other = env.path("other/o.db");
    let c = foreign_wal(&db, &other, 10);
    let target = env.path("restored/new.db");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(side(&other, "-wal"), side(&target, "-wal")).unwrap();
    std::fs::copy(side(&other, "-shm"), side(&target, "-shm")).unwrap();
    std::fs::write(side(&target, "-journal"), b"").unwrap();
    drop(c);
    let out = env.restore_ok(&["chat"], &target);
    // The backup's data, not the foreign WAL's.
    assert_eq!(marker(&target), "backup", "{}", both(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("new.db-wal"), "{}", both(&out));
    for s in ["-wal", "-shm", "-journal"] {
        assert!(
            !side(&target, s).exists(),
            "{s} still beside the restored file"
        );
    }
    // The backup's bytes exactly, and its data.
    let found = litekeeper::archive::list(&dir).unwrap();
    let file = found[0].path.file_name().unwrap().to_str().unwrap();
    let manifest = litekeeper::archive::Manifest::load(&dir).unwrap();
    assert_eq!(
        litekeeper::archive::sha256_file(&target).unwrap(),
        manifest.get(file).unwrap().sha256
    );
    assert_eq!(marker(&target), "backup");
    // Moved aside, not deleted.
    let aside: Vec<String> = std::fs::read_dir(target.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("new.db-wal."))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
}

#[test]
fn restore_to_refuses_a_dangling_symlink_a_sidecar_name_and_the_backup_directory() {
    let env = TestEnv::new();
    let (db, dir) = journal_setup(&env);
    std::fs::create_dir_all(env.path("restored")).unwrap();
    let link = env.path("restored/link.db");
    std::os::unix::fs::symlink(env.path("nowhere/x.db"), &link).unwrap();
    for (to, what) in [
        (link.clone(), "symlink"),
        (side(&db, "-wal"), "-wal"),
        (dir.join("copy.db"), "backup directory"),
    ] {
        let out = env.restore_to(&["chat"], &to);
        assert_eq!(out.status.code(), Some(73), "{to:?}: {}", both(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(what), "{to:?}: {}", both(&out));
        assert!(!to.exists() || to == link, "{to:?} was created");
    }
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(!env.path("nowhere").exists());
}

#[test]
fn in_place_restore_through_a_symlinked_path_restores_the_file_it_points_to() {
    let env = TestEnv::new();
    let (real, dir) = journal_setup(&env);
    // The configured path is a symlink (same stem, so the same backup series).
    let link = env.path("current/chat.db");
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    env.config("")
        .database(
            "chat",
            &link,
            &format!(
                "journal_mode = \"keep\"\n[database.backup]\ndir = \"{}\"",
                dir.display()
            ),
        )
        .write();
    set_marker(&real, "live");
    let out = env.run_ok(&["restore", "chat", "--in-place", "--force"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("symlink") && stdout.contains(&real.display().to_string()),
        "{}",
        both(&out)
    );
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_link(&link).unwrap(), real);
    assert_eq!(marker(&real), "backup");
    assert_eq!(kept(&real).len(), 1);
    assert_eq!(marker(&kept(&real)[0]), "live");
}

#[test]
fn open_check_sees_the_file_through_symlinked_directories_and_hard_links() {
    let env = TestEnv::new();
    let (db, dir) = journal_setup(&env);
    // Configured through a symlinked directory; the app opens the real path, then a hard link.
    let via = env.path("via");
    std::os::unix::fs::symlink(env.path("app"), &via).unwrap();
    env.config("")
        .database(
            "chat",
            &via.join("chat.db"),
            &format!(
                "journal_mode = \"keep\"\n[database.backup]\ndir = \"{}\"",
                dir.display()
            ),
        )
        .write();
    let hard = env.path("app/hard.db");
    std::fs::hard_link(&db, &hard).unwrap();
    for opened in [&db, &hard] {
        let holder = hold_open(opened);
        let out = env
            .cmd()
            .args(["restore", "chat", "--in-place"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(75), "{opened:?}: {}", both(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&holder.0.id().to_string()), "{}", both(&out));
        assert!(kept(&db).is_empty());
    }
}

#[test]
fn open_check_says_when_it_cannot_see_other_users_processes() {
    if !root_or_skip("needs root (a process of another user)") {
        return;
    }
    let env = TestEnv::new();
    let (db, _dir) = journal_setup(&env);
    open_to_nobody(&env);
    chown_tree(env.dir.path());
    // Another user (uid 65533, who may read the file) holds it open; uid 65534 cannot read
    // /proc/PID/fd of that process.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _holder = hold_open_as(&db, NOBODY - 1);
    let out = env.nobody_output(&["restore", "chat", "--in-place"]);
    assert_eq!(out.status.code(), Some(75), "{}", both(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not check"), "{}", both(&out));
    assert!(kept(&db).is_empty());
    assert_eq!(marker(&db), "backup");
    set_marker(&db, "live");
    // With --force it goes ahead and says what it could not check.
    let out = env.nobody_output(&["restore", "chat", "--in-place", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(marker(&db), "backup");
}

#[test]
fn root_in_place_restore_works_as_the_state_owner_and_keeps_the_database_owner() {
    if !root_or_skip("needs root") {
        return;
    }
    let env = TestEnv::new();
    let (db, _dir) = journal_setup(&env);
    open_to_nobody(&env);
    chown_tree(env.dir.path());
    // The lock file does not exist yet: the restore creates it.
    let _ = std::fs::remove_dir_all(env.path("locks"));
    std::fs::create_dir_all(env.path("locks")).unwrap();
    give_to_nobody(&env.path("locks"));
    set_marker(&db, "live");
    env.run_ok(&["restore", "chat", "--in-place"]);
    assert_eq!(marker(&db), "backup");
    // Nothing of litekeeper's own is left to root; the database keeps its owner.
    for e in std::fs::read_dir(env.path("locks")).unwrap().flatten() {
        assert_eq!(
            e.metadata().unwrap().uid(),
            NOBODY,
            "{} is root's",
            e.path().display()
        );
    }
    assert_eq!(std::fs::metadata(&db).unwrap().uid(), NOBODY);
    // The service's user runs its next job.
    let out = env.nobody_output(&["run", "chat", "backup"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
}

#[test]
fn a_killed_restores_temp_file_is_removed_by_the_next_job() {
    let env = TestEnv::new();
    let (db, _dir) = journal_setup(&env);
    let app = db.parent().unwrap();
    // What a restore SIGKILLed mid-copy leaves: a big temp file beside the database.
    let tmp = app.join(".chat.db.litekeeper-tmp");
    std::fs::write(&tmp, vec![7u8; 1 << 20]).unwrap();
    std::fs::write(app.join(".chat.db.litekeeper-tmp-journal"), b"x").unwrap();
    // Not ours: kept.
    std::fs::write(app.join(".other.db.litekeeper-tmp"), b"x").unwrap();
    env.run_ok(&["run", "chat", "backup"]);
    assert!(!tmp.exists(), "the next job left the temp file");
    assert!(!app.join(".chat.db.litekeeper-tmp-journal").exists());
    assert!(app.join(".other.db.litekeeper-tmp").exists());
}

/// The daemon's idle pooled connection is not "the application", and after the file behind
/// the path changed the daemon's jobs use the new one.
#[test]
fn daemon_pool_is_not_the_app_and_follows_an_in_place_restore() {
    let env = TestEnv::new();
    let (db, dir) = journal_setup(&env);
    env.config("").database("chat", &db, &format!(
                "journal_mode = \"keep\"\n[database.backup]\nschedule = \"* * * * * *\"\ndir = \"{}\"\nkeep = {{ last = 100 }}",
                dir.display()
            )).write();
    // The backup to restore: the first one (the daemon's are newer).
    let first = litekeeper::archive::list(&dir).unwrap()[0]
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    set_marker(&db, "live");
    let mut daemon = env.daemon(&[]);
    let pid = daemon.pid();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Wait until the daemon has a backup with the live data (its pool holds the file).
    wait_until("a daemon backup", Duration::from_secs(30), || {
        newest_marker(&dir).as_deref() == Some("live")
    });
    let out = restore_in_place_when_free(&env, &first, deadline);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&format!("pid {pid}")));
    assert_eq!(marker(&db), "backup");
    set_marker(&db, "after-restore");
    wait_until(
        "a daemon backup of the restored file",
        Duration::from_secs(30),
        || newest_marker(&dir).as_deref() == Some("after-restore"),
    );
    daemon.terminate();
}

/// `restore chat BACKUP --in-place`, again while the daemon's backup holds the lock (busy)
/// until `deadline`.
fn restore_in_place_when_free(
    env: &TestEnv,
    backup: &str,
    deadline: Instant,
) -> std::process::Output {
    loop {
        let out = env
            .cmd()
            .args(["restore", "chat", backup, "--in-place"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(75) && err.contains("is busy") {
            assert!(Instant::now() < deadline, "always busy: {}", both(&out));
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        break out;
    }
}

/// The marker in the newest backup file of `dir` (backups are uncompressed here).
fn newest_marker(dir: &Path) -> Option<String> {
    newest_marker_of(dir, "chat")
}

/// The same for one series.
fn newest_marker_of(dir: &Path, series: &str) -> Option<String> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(&format!("{series}-")) && n.ends_with(".db")
        })
        .collect();
    names.sort();
    let newest = names.pop()?;
    let c =
        Connection::open_with_flags(&newest, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    c.query_row("SELECT v FROM marker", [], |r| r.get(0)).ok()
}

/// The same for an attached database restored in place: the daemon's pooled connection has it
/// attached, and its next backup of that series reads the restored file.
#[test]
fn daemon_pool_follows_an_in_place_restore_of_an_attached_database() {
    let env = TestEnv::new();
    let db = env.sqlite(
        "app/chat.db",
        "CREATE TABLE marker(v TEXT); INSERT INTO marker VALUES ('main');",
    );
    let files = env.sqlite(
        "app/files.db",
        "CREATE TABLE marker(v TEXT); INSERT INTO marker VALUES ('backup');",
    );
    let dir = env.path("backups");
    env.write_config(&format!(
        "{}[[database]]\nname = \"chat\"\npath = \"{}\"\nattach = {{ files = \"{}\" }}\n\
         journal_mode = \"keep\"\n[database.backup]\nschedule = \"* * * * * *\"\ndir = \"{}\"\n\
         keep = {{ last = 100 }}\n",
        env.daemon_section(""),
        db.display(),
        files.display(),
        dir.display()
    ));
    env.run_ok(&["run", "chat", "backup"]);
    let first = litekeeper::archive::list(&dir)
        .unwrap()
        .into_iter()
        .find(|f| f.name.series == "files")
        .unwrap()
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    set_marker(&files, "live");
    let mut daemon = env.daemon(&[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    wait_until("a daemon backup", Duration::from_secs(30), || {
        newest_marker_of(&dir, "files").as_deref() == Some("live")
    });
    let out = restore_in_place_when_free(&env, &first, deadline);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(marker(&files), "backup");
    set_marker(&files, "after-restore");
    wait_until(
        "a daemon backup of the restored attached file",
        Duration::from_secs(30),
        || newest_marker_of(&dir, "files").as_deref() == Some("after-restore"),
    );
    daemon.terminate();
}

/// A live file that cannot be made whole (a hot journal beside a damaged file) is not replaced
/// without --force: nothing is kept aside, the restored file is not put in place.
#[test]
fn in_place_restore_refuses_a_live_file_it_cannot_make_whole() {
    let env = TestEnv::new();
    let (db, _dir) = journal_setup(&env);
    set_marker(&db, "live");
    make_hot_journal(&db);
    // Damage the header too: SQLite rolls the journal back, then cannot read the file.
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[..16].copy_from_slice(b"not a database!\0");
    std::fs::write(&db, &bytes).unwrap();
    let out = env.output(&["restore", "chat", "--in-place"]);
    assert_eq!(out.status.code(), Some(65), "{}", both(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("chat.db-journal") && err.contains("--force"),
        "{}",
        both(&out)
    );
    assert!(kept(&db).is_empty());
    assert_eq!(&std::fs::read(&db).unwrap()[..16], b"not a database!\0");
    // --force: the restore goes ahead (the damaged file is kept aside).
    env.run_ok(&["restore", "chat", "--in-place", "--force"]);
    assert_eq!(marker(&db), "backup");
    assert_eq!(kept(&db).len(), 1);
}

/// A restore reads its backup once: its SHA-256 is checked as it is copied, not in a pass of
/// its own (strace counts the bytes read from the backup file by any system call).
#[test]
fn a_restore_reads_the_backup_file_once() {
    if !crate::util::have_strace() {
        return;
    }
    let env = TestEnv::new();
    let db = env.sqlite(
        "app.db",
        "CREATE TABLE t(x BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 2000)
         INSERT INTO t SELECT randomblob(1000) FROM n;",
    );
    let dir = env.path("b");
    env.config("")
        .database(
            "app",
            &db,
            &format!("[database.backup]\ndir = \"{}\"", dir.display()),
        )
        .write();
    env.run_ok(&["run", "app", "backup"]);
    let backup = crate::util::names(&dir)
        .into_iter()
        .find(|n| n.ends_with(".db"))
        .map(|n| dir.join(n))
        .unwrap();
    let size = std::fs::metadata(&backup).unwrap().len();
    let log = env.path("strace.log");
    let base = env.std_cmd();
    let to = env.path("r.db");
    let o = std::process::Command::new("strace")
        .args(["-f", "-qq", "-y", "-o"])
        .arg(&log)
        .args([
            "-e",
            "trace=read,pread64,readv,preadv,preadv2,copy_file_range,sendfile",
        ])
        .arg(base.get_program())
        .args(base.get_args())
        .args(["restore", "app", "--to"])
        .arg(&to)
        .env_clear()
        .envs(base.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", crate::util::both(&o));
    // `read(3</path/to/backup>, …) = N`: the first argument names the file.
    let tag = format!("<{}>", backup.display());
    let read: u64 = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| {
            l.split_once('(')
                .and_then(|(_, args)| args.split_once(','))
                .is_some_and(|(fd, _)| fd.ends_with(&tag))
        })
        .filter_map(|l| l.rsplit_once(" = ")?.1.trim().parse::<u64>().ok())
        .sum();
    assert_eq!(
        read,
        size,
        "bytes read from {} ({size} bytes)",
        backup.display()
    );
    assert_eq!(crate::util::query_i64(&to, "SELECT count(*) FROM t"), 2000);
}
