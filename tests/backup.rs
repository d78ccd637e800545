//! Backups and restores on real files with the real binary: under a busy writer, killed
//! mid-copy, restored to a new path and in place, refused when damaged, out of space.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use litekeeper::archive::{BackupName, Manifest};
use rusqlite::Connection;

use crate::util::{
    both, files_db, in_mount_namespace, query_i64, root_or_skip, start_holder, table_names,
    write_chat_backup_config, TestEnv,
};

/// A config with one database `chat` (+ attached `files`) backed up into `<tmp>/backups`.
fn setup(env: &TestEnv, backup_extra: &str) -> (PathBuf, PathBuf) {
    let db = env.sqlite(
        "app/chat.db",
        "PRAGMA journal_mode=WAL;
         CREATE TABLE chat(id INTEGER PRIMARY KEY, body TEXT NOT NULL, ts INTEGER);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 5000)
         INSERT INTO chat(body, ts) SELECT hex(randomblob(100)), i FROM n;",
    );
    let files = files_db(env, "randomblob(300)");
    let backups = env.path("backups/chat");
    write_chat_backup_config(env, &db, &files, &backups, backup_extra);
    (db, backups)
}

/// For the tests that mount a small tmpfs (root only, else `None`): [`setup`], and 4 MB more
/// in the database.
fn setup_for_tmpfs(env: &TestEnv, backup_extra: &str) -> Option<(PathBuf, PathBuf)> {
    if !root_or_skip("needs root to mount a small tmpfs") {
        return None;
    }
    let (db, dir) = setup(env, backup_extra);
    add_bulk(&db, 1000);
    Some((db, dir))
}

/// A table `bulk` of `rows` random 4000-byte blobs, added to the database at `db`.
fn add_bulk(db: &Path, rows: u32) {
    Connection::open(db)
        .unwrap()
        .execute_batch(&format!(
            "CREATE TABLE bulk(x BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < {rows})
             INSERT INTO bulk SELECT randomblob(4000) FROM n;"
        ))
        .unwrap();
}

/// The backup of the main database (series `chat`), the first by name.
fn chat_backup(dir: &Path) -> PathBuf {
    ours(dir)
        .into_iter()
        .find(|(n, _)| n.series == "chat")
        .unwrap()
        .1
}

fn ours(dir: &Path) -> Vec<(BackupName, PathBuf)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_str()?.to_string();
                    BackupName::parse(&n).map(|b| (b, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| a.1.cmp(&b.1));
    v
}

#[test]
fn backup_of_main_and_attached_is_verified_private_and_self_contained() {
    let env = TestEnv::new();
    let (_db, dir) = setup(&env, "verify = \"full\"");
    env.run_ok(&["run", "chat", "backup"]);
    let files = ours(&dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let series: Vec<&str> = files.iter().map(|(n, _)| n.series.as_str()).collect();
    assert_eq!(series, ["chat", "files"]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for (_, p) in &files {
        assert_eq!(
            std::fs::metadata(p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let c = Connection::open(p).unwrap();
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete", "{}", p.display());
    }
    assert_eq!(query_i64(&files[0].1, "SELECT count(*) FROM chat"), 5000);
    assert_eq!(query_i64(&files[1].1, "SELECT count(*) FROM blob"), 300);
    let m = Manifest::load(&dir).unwrap();
    assert_eq!(m.backups.len(), 2);
    let e = m
        .get(files[0].1.file_name().unwrap().to_str().unwrap())
        .unwrap();
    assert_eq!(e.tables.get("chat"), Some(&5000));
    assert_eq!(
        e.sha256,
        litekeeper::archive::sha256_file(&files[0].1).unwrap()
    );
    assert_eq!(serde_json::to_value(e.verified).unwrap(), "full");
}

#[test]
fn backup_under_a_busy_writer_finishes_and_holds_every_earlier_row() {
    let env = TestEnv::new();
    let (db, dir) = setup(&env, "compress = \"zstd\"");
    // Make the copy take a while: ~60 MB.
    add_bulk(&db, 15000);
    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicI64::new(0));
    let writer = {
        let (stop, commits, db) = (stop.clone(), commits.clone(), db.clone());
        std::thread::spawn(move || {
            let c = Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(5)).unwrap();
            // synchronous=NORMAL (what WAL apps use): commits are cheap, so the rate stays
            // well above 200/s even on a loaded CI machine.
            c.execute_batch("PRAGMA synchronous=NORMAL").unwrap();
            while !stop.load(Ordering::Relaxed) {
                c.execute("INSERT INTO chat(body, ts) VALUES ('live', 0)", [])
                    .unwrap();
                commits.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let before_max = query_i64(&db, "SELECT max(id) FROM chat");
    let c0 = commits.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let out = env.output(&["run", "chat", "backup"]);
    let took = t0.elapsed();
    let during = commits.load(Ordering::Relaxed) - c0;
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let rate = during as f64 / took.as_secs_f64();
    assert!(
        rate >= 200.0,
        "writer managed only {rate:.0} commits/s during the backup"
    );
    // Restore to a new path and check what it holds.
    let restored = env.path("restored.db");
    env.restore_ok(&["chat"], &restored);
    let c = Connection::open(&restored).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let held: i64 = c
        .query_row(
            "SELECT count(*) FROM chat WHERE id <= ?1",
            [before_max],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        held, before_max,
        "every row committed before the backup started is in it"
    );
    assert!(ours(&dir).iter().all(|(n, _)| n.compressed));
    // The manifest's checksum is the compressed file's own SHA-256.
    let m = Manifest::load(&dir).unwrap();
    for (name, path) in ours(&dir) {
        let e = m.get(&name.file_name()).unwrap();
        assert_eq!(e.sha256, litekeeper::archive::sha256_file(&path).unwrap());
        assert_eq!(e.size, std::fs::metadata(&path).unwrap().len());
    }
}

#[test]
fn killed_backup_leaves_no_final_file_and_next_run_cleans_up() {
    let env = TestEnv::new();
    let (db, dir) = setup(&env, "");
    add_bulk(&db, 50000);
    let mut run = env.spawn(&["run", "chat", "backup"], &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let tmp_seen = loop {
        let tmp = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".litekeeper-tmp"))
            })
            .unwrap_or(false);
        if tmp || Instant::now() > deadline || !run.alive() {
            break tmp;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    run.kill();
    assert!(
        tmp_seen,
        "the copy never started (or finished before it could be killed)"
    );
    assert!(
        ours(&dir).is_empty(),
        "a killed backup left a file under a final name: {:?}",
        ours(&dir)
    );
    // The source is intact.
    assert_eq!(query_i64(&db, "SELECT count(*) FROM bulk"), 50000);
    env.run_ok(&["run", "chat", "backup"]);
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n != litekeeper::archive::DIR_LOCK)
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(ours(&dir).len(), 2);
}

#[test]
fn in_place_restore_replaces_stale_wal_and_keeps_the_previous_file() {
    let env = TestEnv::new();
    let (db, _dir) = setup(&env, "");
    env.run_ok(&["run", "chat", "backup"]);
    // Change the live DB after the backup, leaving its changes in a -wal that stays behind.
    let keep_open = Connection::open(&db).unwrap();
    keep_open
        .execute_batch("PRAGMA wal_autocheckpoint=0; DELETE FROM chat WHERE id > 100;")
        .unwrap();
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    // Simulate a crashed app: copy db + wal + shm aside while open, then close.
    drop(keep_open);
    // An open connection from another process is refused without --force.
    let mut python = std::process::Command::new("python3");
    python
        .args(["-c", "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1]); c.execute('select 1').fetchall(); print('ok', flush=True); time.sleep(30)"])
        .arg(&db);
    let (mut holder, _ready) = start_holder(python);
    let out = env
        .cmd()
        .args(["restore", "chat", "--in-place"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", both(&out));
    crate::util::assert_stderr_has(&out, &holder.0.id().to_string());
    let _ = holder.0.kill();
    let _ = holder.0.wait();
    // Leave a stale -wal/-shm with post-backup changes next to the DB, then restore in place.
    Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA wal_autocheckpoint=0; DELETE FROM chat WHERE id > 50;")
        .unwrap();
    env.run_ok(&["restore", "chat", "--in-place"]);
    assert_eq!(
        query_i64(&db, "SELECT count(*) FROM chat"),
        5000,
        "the backup's content, not the stale WAL's"
    );
    let kept: Vec<PathBuf> = std::fs::read_dir(env.path("app"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.to_string_lossy().contains("chat.db.pre-restore-")
                && !p.to_string_lossy().ends_with("-wal")
        })
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        query_i64(&kept[0], "SELECT count(*) FROM chat"),
        50,
        "the pre-restore copy keeps its WAL's changes"
    );
}

#[test]
fn damaged_backup_is_refused_with_65() {
    let env = TestEnv::new();
    let (_db, dir) = setup(&env, "");
    env.run_ok(&["run", "chat", "backup"]);
    let main = chat_backup(&dir);
    let mut bytes = std::fs::read(&main).unwrap();
    bytes[8192] ^= 0xff;
    std::fs::write(&main, bytes).unwrap();
    let target = env.path("r.db");
    let out = env.restore_to(&["chat"], &target);
    assert_eq!(out.status.code(), Some(65), "{}", both(&out));
    crate::util::assert_stderr_has(&out, "checksum mismatch");
    assert!(!target.exists());
}

#[test]
fn full_backup_directory_fails_cleanly() {
    let env = TestEnv::new();
    let Some((_db, dir)) = setup_for_tmpfs(&env, "") else {
        return;
    };
    std::fs::create_dir_all(&dir).unwrap();
    let bin = assert_cmd::cargo::cargo_bin("litekeeper");
    let script = format!(
        "mount -t tmpfs -o size=1m,mode=0700 tmpfs '{dir}' && exec '{bin}' -c '{cfg}' run chat backup; ",
        dir = dir.display(),
        bin = bin.display(),
        cfg = env.config_path().display()
    );
    let out = in_mount_namespace(&script, &[]);
    assert_eq!(out.status.code(), Some(73), "{}", both(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not enough free space") && err.contains(&dir.display().to_string()),
        "{}",
        both(&out)
    );
}

/// Every row of every table, in a canonical order, as text.
fn dump(path: &Path) -> Vec<String> {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let tables = table_names(&c);
    let mut out = Vec::new();
    for t in tables {
        let mut st = c
            .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY 1"))
            .unwrap();
        let n = st.column_count();
        let rows = st
            .query_map([], |r| {
                let vals: Vec<String> = (0..n)
                    .map(|i| format!("{:?}", r.get::<_, rusqlite::types::Value>(i).unwrap()))
                    .collect();
                Ok(format!("{t}: {}", vals.join("|")))
            })
            .unwrap();
        out.extend(rows.map(Result::unwrap));
    }
    out
}

#[test]
fn restore_to_a_new_path_equals_the_backup_and_restores_zstd() {
    let env = TestEnv::new();
    let (db, dir) = setup(&env, "");
    env.run_ok(&["run", "chat", "backup"]);
    let plain = chat_backup(&dir);
    // The live database moves on after the backup.
    Connection::open(&db)
        .unwrap()
        .execute_batch(
            "DELETE FROM chat WHERE id % 3 = 0; INSERT INTO chat(body, ts) VALUES ('later', 1);",
        )
        .unwrap();
    let restored = env.path("restored.db");
    env.restore_ok(&["chat"], &restored);
    let want = dump(&plain);
    assert_eq!(want.len(), 5000);
    assert_eq!(dump(&restored), want);
    assert_ne!(dump(&db), want);

    // The same through a compressed backup, named explicitly.
    let cfg = std::fs::read_to_string(env.config_path()).unwrap() + "compress = \"zstd\"\n";
    std::fs::write(env.config_path(), cfg).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a new timestamp
    env.run_ok(&["run", "chat", "backup"]);
    let (zname, _) = ours(&dir)
        .into_iter()
        .find(|(n, _)| n.series == "chat" && n.compressed)
        .unwrap();
    let restored2 = env.path("restored2.db");
    env.restore_ok(&["chat", &zname.file_name()], &restored2);
    assert_eq!(dump(&restored2), dump(&db));
}

#[test]
fn restore_onto_a_full_file_system_fails_cleanly() {
    let env = TestEnv::new();
    let Some((db, _)) = setup_for_tmpfs(&env, "compress = \"zstd\"") else {
        return;
    };
    env.run_ok(&["run", "chat", "backup"]);
    let small = env.path("small");
    std::fs::create_dir_all(&small).unwrap();
    let before = std::fs::read(&db).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs '{small}' && '{bin}' -c '{cfg}' restore chat --to '{small}/r.db'; echo rc=$?; ls -A '{small}'",
        small = small.display(),
        bin = assert_cmd::cargo::cargo_bin("litekeeper").display(),
        cfg = env.config_path().display()
    );
    let out = in_mount_namespace(&script, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("rc=73"), "{}", both(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not enough free space to restore")
            && err.contains(&small.display().to_string()),
        "{}",
        both(&out)
    );
    // Nothing was left in the small file system (ls printed nothing after rc=).
    assert_eq!(stdout.trim().lines().last(), Some("rc=73"), "{stdout}");
    assert_eq!(std::fs::read(&db).unwrap(), before, "the source changed");
}
