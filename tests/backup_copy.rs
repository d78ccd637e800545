//! The backup's file copy (database file + WAL frames of a pinned snapshot) against real
//! writers and checkpointers: 200 backups while an app commits numbered rows and another
//! connection checkpoints in every mode, each backup a prefix of the rows, consistent across
//! tables, equal row for row to a copy of that snapshot; and the fallback to SQLite's backup
//! API when the file copy does not apply (rollback journal, a WAL that does not validate).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use litekeeper::archive::Manifest;
use rusqlite::{Connection, OpenFlags};

use crate::util::{both, sha256_hex, TestEnv};

/// Row `i`'s index key: scattered, so every commit touches index pages all over the file.
fn tag(i: i64) -> i64 {
    (i * 7919) % 1009
}

/// Row `i`'s payload: 20..520 bytes that only `i` determines, 6000 for every 50th (overflow
/// pages), so a copy can be compared with the rows it must hold without keeping them.
fn payload(i: i64) -> Vec<u8> {
    let len = if i % 50 == 0 {
        6000
    } else {
        20 + (i * 37 % 500) as usize
    };
    (0..len)
        .map(|j| ((i * 31 + j as i64 * 7) % 251) as u8)
        .collect()
}

/// `app/app.db` in `journal_mode` with the numbered rows' table, its index and `meta`.
fn app_db_in(env: &TestEnv, journal_mode: &str) -> PathBuf {
    env.sqlite(
        "app/app.db",
        &format!(
            "PRAGMA journal_mode={journal_mode};
             CREATE TABLE n(id INTEGER PRIMARY KEY, tag INTEGER NOT NULL, payload BLOB NOT NULL);
             CREATE INDEX n_tag ON n(tag);
             CREATE TABLE meta(k INTEGER PRIMARY KEY, last INTEGER NOT NULL);
             INSERT INTO meta VALUES (1, 0);"
        ),
    )
}

fn app_db(env: &TestEnv) -> PathBuf {
    app_db_in(env, "WAL")
}

fn config(env: &TestEnv, db: &Path, dir: &Path) {
    env.write_config(&format!(
        "{}[[database]]\nname = \"app\"\npath = \"{}\"\n[database.backup]\ndir = \"{}\"\n\
         keep = {{ last = 2 }}\n",
        env.daemon_section(""),
        db.display(),
        dir.display()
    ));
}

/// Commit row after row (one row and the `meta` counter per transaction) until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    last: Arc<AtomicI64>,
    handle: Option<JoinHandle<()>>,
}

impl Writer {
    fn start(db: &Path, pause: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let last = Arc::new(AtomicI64::new(0));
        let (s, l, db) = (stop.clone(), last.clone(), db.to_path_buf());
        let handle = std::thread::spawn(move || {
            let mut c = Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            let mut i = 0;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                let tx = c
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .unwrap();
                tx.execute("INSERT INTO n VALUES (?1, ?2, ?3)", (i, tag(i), payload(i)))
                    .unwrap();
                tx.execute("UPDATE meta SET last = ?1", [i]).unwrap();
                tx.commit().unwrap();
                l.store(i, Ordering::Relaxed);
                std::thread::sleep(pause);
            }
        });
        Writer {
            stop,
            last,
            handle: Some(handle),
        }
    }

    fn stop(mut self) -> i64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap();
        self.last.load(Ordering::Relaxed)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Checkpoint PASSIVE, FULL, RESTART and TRUNCATE in turn until stopped; returns how many of
/// each completed (busy ones included: they still moved what they could).
fn checkpointer(db: &Path, stop: Arc<AtomicBool>) -> JoinHandle<[u32; 4]> {
    let db = db.to_path_buf();
    std::thread::spawn(move || {
        let c = Connection::open(&db).unwrap();
        c.busy_timeout(Duration::from_millis(50)).unwrap();
        let mut done = [0u32; 4];
        let modes = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"];
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let m = n % 4;
            if c.query_row(&format!("PRAGMA wal_checkpoint({})", modes[m]), [], |r| {
                r.get::<_, i64>(0)
            })
            .is_ok()
            {
                done[m] += 1;
            }
            n += 1;
            std::thread::sleep(Duration::from_millis(3));
        }
        done
    })
}

/// The newest run's figures (the run just made).
fn last_figures(env: &TestEnv) -> serde_json::Value {
    env.runs().pop().expect("a recorded run").figures
}

/// Check one backup: integrity ok, a rollback-journal file, exactly rows 1..=k with their
/// payloads where `meta.last` = k (one snapshot across both tables), and a manifest entry
/// that describes this very file. Returns k.
fn check_backup(dir: &Path, file: &Path, when: &str) -> i64 {
    let head = std::fs::read(file).unwrap();
    assert_eq!(
        &head[18..20],
        &[1, 1],
        "{when}: not a rollback-journal file"
    );
    let c = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok", "{when}");
    let k: i64 = c
        .query_row("SELECT last FROM meta", [], |r| r.get(0))
        .unwrap();
    let (count, min, max): (i64, Option<i64>, Option<i64>) = c
        .query_row("SELECT count(*), min(id), max(id) FROM n", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(count, k, "{when}: rows vs meta.last");
    if k > 0 {
        assert_eq!((min, max), (Some(1), Some(k)), "{when}: not a prefix");
    }
    let mut s = c
        .prepare("SELECT id, tag, payload FROM n ORDER BY id")
        .unwrap();
    let mut rows = s.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        let id: i64 = r.get(0).unwrap();
        assert_eq!(r.get::<_, i64>(1).unwrap(), tag(id), "{when}: row {id} tag");
        assert_eq!(
            r.get::<_, Vec<u8>>(2).unwrap(),
            payload(id),
            "{when}: row {id} payload"
        );
    }
    // The index holds the same rows as the table.
    let by_index: i64 = c
        .query_row(
            "SELECT count(*) FROM n INDEXED BY n_tag WHERE tag >= 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(by_index, k, "{when}: index rows");
    let pages = c
        .query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
        .unwrap() as u64;
    let name = file.file_name().unwrap().to_str().unwrap();
    let m = Manifest::load(dir).unwrap();
    let e = m.get(name).expect("in the manifest");
    assert_eq!(e.page_count, pages, "{when}: manifest page_count");
    assert_eq!(e.tables.get("n"), Some(&k), "{when}: manifest rows of n");
    assert_eq!(
        e.tables.get("meta"),
        Some(&1),
        "{when}: manifest rows of meta"
    );
    assert_eq!(e.sha256, sha256_hex(file), "{when}: manifest sha256");
    k
}

fn backup_once(env: &TestEnv) -> (PathBuf, serde_json::Value) {
    let out = env
        .cmd()
        .env("LITEKEEPER_LOG", "debug")
        .args(["run", "app", "backup"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    for l in String::from_utf8_lossy(&out.stderr).lines() {
        if l.contains("DEBUG") || l.contains("backup API") {
            eprintln!("{l}");
        }
    }
    let f = last_figures(env);
    let path = PathBuf::from(f["backup_path"].as_str().expect("backup_path"));
    (path, f)
}

/// Rows of `n` and `meta` in a database, in order.
fn all_rows(db: &Path) -> Vec<(i64, i64, Vec<u8>)> {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut out: Vec<(i64, i64, Vec<u8>)> = c
        .prepare("SELECT id, tag, payload FROM n ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let last: i64 = c
        .query_row("SELECT last FROM meta", [], |r| r.get(0))
        .unwrap();
    out.push((-1, last, Vec::new()));
    out
}

/// SQLite's own online backup of what `src` reads, into a new file `to`.
fn online_copy(src: &Connection, to: &Path) {
    let mut dst = Connection::open(to).unwrap();
    rusqlite::backup::Backup::new(src, &mut dst)
        .unwrap()
        .run_to_completion(1000, Duration::ZERO, None)
        .unwrap();
}

#[test]
fn two_hundred_backups_under_commits_and_every_checkpoint_mode() {
    let env = TestEnv::new();
    let db = app_db(&env);
    let dir = env.path("backups");
    config(&env, &db, &dir);
    let writer = Writer::start(&db, Duration::from_millis(5));
    let stop = Arc::new(AtomicBool::new(false));
    let ckpt = checkpointer(&db, stop.clone());
    let started = Instant::now();
    let mut seen = Vec::new();
    for n in 1..=200 {
        let (file, f) = backup_once(&env);
        let when = format!("backup {n}");
        assert_eq!(f["copy_path"], "file", "{when}: {f}");
        let k = check_backup(&dir, &file, &when);
        assert!(
            k <= writer.last.load(Ordering::Relaxed),
            "{when}: rows from the future"
        );
        seen.push(k);
    }
    stop.store(true, Ordering::Relaxed);
    let modes = ckpt.join().unwrap();
    let last = writer.stop();
    eprintln!(
        "200 backups in {:?}; rows per backup {:?}..{:?} of {last}; checkpoints \
         PASSIVE/FULL/RESTART/TRUNCATE {modes:?}",
        started.elapsed(),
        seen.first(),
        seen.last()
    );
    // The app kept committing and checkpoints of every mode ran between the backups.
    assert!(
        seen.windows(2).filter(|w| w[1] > w[0]).count() > 100,
        "{seen:?}"
    );
    assert!(modes.iter().all(|&m| m > 10), "{modes:?}");

    // At rest, a backup equals SQLite's own online backup of the same (now still) database.
    let (file, f) = backup_once(&env);
    assert_eq!(f["copy_path"], "file");
    let k = check_backup(&dir, &file, "at rest");
    assert_eq!(k, last);
    let reference = env.path("reference.db");
    online_copy(&Connection::open(&db).unwrap(), &reference);
    assert_eq!(all_rows(&file), all_rows(&reference));
}

#[test]
fn a_rollback_journal_database_is_copied_with_the_backup_api() {
    let env = TestEnv::new();
    let db = app_db_in(&env, "DELETE");
    {
        let c = Connection::open(&db).unwrap();
        for i in 1..=300 {
            c.execute("INSERT INTO n VALUES (?1, ?2, ?3)", (i, tag(i), payload(i)))
                .unwrap();
        }
        c.execute("UPDATE meta SET last = 300", []).unwrap();
    }
    let dir = env.path("backups");
    env.write_config(&format!(
        "{}[[database]]\nname = \"app\"\npath = \"{}\"\njournal_mode = \"keep\"\n\
         [database.backup]\ndir = \"{}\"\n",
        env.daemon_section(""),
        db.display(),
        dir.display()
    ));
    let (file, f) = backup_once(&env);
    assert_eq!(f["copy_path"], "backup-api", "{f}");
    assert_eq!(check_backup(&dir, &file, "rollback journal"), 300);
    assert_eq!(all_rows(&file), all_rows(&db));
}

#[test]
fn a_wal_failing_its_checksum_is_never_copied_as_is() {
    let env = TestEnv::new();
    let db = app_db(&env);
    // The app's connection stays open with frames in the WAL (no checkpoint).
    let app = Connection::open(&db).unwrap();
    app.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
    for i in 1..=200 {
        app.execute("INSERT INTO n VALUES (?1, ?2, ?3)", (i, tag(i), payload(i)))
            .unwrap();
        app.execute("UPDATE meta SET last = ?1", [i]).unwrap();
    }
    let dir = env.path("backups");
    config(&env, &db, &dir);
    // The stored checksum of frame 3 no longer matches its bytes: the page data itself is
    // intact, so SQLite still reads the database as the app wrote it.
    let wal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(env.path("app/app.db-wal"))
        .unwrap();
    let page = 4096u64;
    let at = 32 + 2 * (24 + page) + 16;
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 1];
    wal.read_exact_at(&mut b, at).unwrap();
    wal.write_all_at(&[b[0] ^ 0x01], at).unwrap();
    let (file, f) = backup_once(&env);
    assert_eq!(f["copy_path"], "backup-api", "{f}");
    assert_eq!(check_backup(&dir, &file, "bad checksum"), 200);
    // The copy is what SQLite reads from the source.
    let seen_by_app = env.path("seen.db");
    online_copy(&app, &seen_by_app);
    assert_eq!(all_rows(&file), all_rows(&seen_by_app));
    // With the checksum put back, the same WAL is copied as a file.
    wal.write_all_at(&b, at).unwrap();
    let (file, f) = backup_once(&env);
    assert_eq!(f["copy_path"], "file", "{f}");
    assert_eq!(all_rows(&file), all_rows(&seen_by_app));
}
