//! Kill at any point: the real binary is SIGKILLed at 20+ moments spread over each job (prune,
//! vacuum, backup, restore, retention) while an application thread keeps committing. After
//! every kill the database passes integrity_check and holds every row the app committed, prune
//! has applied only whole batches, every file under a final backup name is a complete backup
//! that is in the manifest with a matching SHA-256 and passes integrity_check, and the lock is
//! free; at the end a normal run succeeds and no temp file is left.
//!
//! Kill moments: one full run is timed first (T, same setup and load), then kill `i` of `n`
//! lands at a random point of the i-th slice of [0, T] (T drops to any shorter complete run
//! seen meanwhile). Each test prints its seed, T and where the kills landed; set `KILL_SEED` to
//! replay a sequence.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use litekeeper::archive::{self, BackupName, Manifest, Verified};
use rusqlite::{Connection, OpenFlags};

use crate::restore::{marker_db, set_marker};
use crate::util::{sidecar, TestEnv};

/// Kills per job (per variant where a job has two).
const KILLS: u32 = 22;
/// Longest any single litekeeper process may take before the test gives up on it.
const RUN_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Randomness and timing

/// xorshift64*: enough to spread kill points; seeded from `KILL_SEED` or the clock.
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Rng {
        let seed = std::env::var("KILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{test}: KILL_SEED={seed}");
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How a spawned run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// SIGKILLed while still running, this long after the spawn.
    Killed(Duration),
    /// Finished by itself (exit code 0 asserted), this long after the spawn.
    Finished(Duration),
}

/// Spawn `litekeeper <args>` and SIGKILL it once `kill_now(elapsed)` says so, unless it exits
/// first; a run that exits by itself must exit 0.
fn run_until(env: &TestEnv, args: &[&str], kill_now: impl FnMut(Duration) -> bool) -> Ended {
    run_cmd_until(env, env.std_cmd(), args, kill_now)
}

/// [`run_until`] with the command given (the binary and `-c CONFIG` already in it).
fn run_cmd_until(
    env: &TestEnv,
    mut cmd: std::process::Command,
    args: &[&str],
    mut kill_now: impl FnMut(Duration) -> bool,
) -> Ended {
    let log = env.path("killed-run.stderr");
    let mut child = cmd
        .args(args)
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(
                status.code(),
                Some(0),
                "litekeeper {args:?} failed by itself: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            return Ended::Finished(start.elapsed());
        }
        let elapsed = start.elapsed();
        let hangs = elapsed >= RUN_LIMIT;
        if hangs || kill_now(elapsed) {
            // SAFETY: plain kill(2) on our own child's pid (not yet reaped, so not reused).
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let status = child.wait().unwrap();
            assert!(!hangs, "litekeeper {args:?} hangs");
            return match status.code() {
                // It exited on its own just before the signal.
                Some(0) => Ended::Finished(elapsed),
                Some(c) => panic!(
                    "litekeeper {args:?} exited {c}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
                None => Ended::Killed(elapsed),
            };
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn kill_after(env: &TestEnv, args: &[&str], delay: Duration) -> Ended {
    run_until(env, args, |elapsed| elapsed >= delay)
}

/// Time one normal run (after a first start of the binary, so a cold page cache does not
/// stretch the measure): the T kill points are spread over.
fn timed_run(env: &TestEnv, args: &[&str]) -> Duration {
    let out = env
        .cmd()
        .arg("--version")
        .timeout(RUN_LIMIT)
        .output()
        .unwrap();
    assert!(out.status.success());
    run_ok(env, args)
}

/// A normal run to completion: asserts exit 0 and returns how long it took.
fn run_ok(env: &TestEnv, args: &[&str]) -> Duration {
    let t = Instant::now();
    let out = env.cmd().args(args).timeout(RUN_LIMIT).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "litekeeper {args:?}: {}",
        crate::util::both(&out)
    );
    t.elapsed()
}

/// The kill moments of one job: kill `i` of `n` lands at a random point of the i-th slice of
/// [0, T]. T starts as a timed run's duration and drops to any shorter complete run seen later,
/// so a timing taken while the machine was busy does not push the late points past the end.
/// Also tallies where the kills landed.
struct Spread {
    t0: Duration,
    t: Duration,
    fractions: Vec<f64>,
    next: usize,
    killed: u32,
    finished: u32,
}

impl Spread {
    fn new(rng: &mut Rng, t: Duration, n: u32) -> Spread {
        Spread {
            t0: t,
            t,
            fractions: (0..n).map(|i| (i as f64 + rng.unit()) / n as f64).collect(),
            next: 0,
            killed: 0,
            finished: 0,
        }
    }

    /// The next kill: its number and delay after the spawn.
    fn next(&mut self) -> Option<(usize, Duration)> {
        let f = *self.fractions.get(self.next)?;
        self.next += 1;
        Some((self.next - 1, self.t.mul_f64(f)))
    }

    fn ended(&mut self, e: Ended) {
        match e {
            Ended::Killed(_) => self.killed += 1,
            Ended::Finished(d) => {
                self.finished += 1;
                self.t = self.t.min(d);
            }
        }
    }

    fn summary(&self) -> String {
        format!(
            "T = {:?} (timed {:?}), {} killed running, {} finished first",
            self.t, self.t0, self.killed, self.finished
        )
    }

    /// Most kills must have landed while the job was running, or the test proves little.
    fn assert_mostly_killed(&self, what: &str) {
        let total = self.killed + self.finished;
        assert!(
            self.killed * 3 >= total * 2,
            "{what}: only {} of {total} kill points landed while the run was going",
            self.killed
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The application

/// What the app has committed so far: the highest id whose INSERT returned OK and how many did.
#[derive(Debug, Clone, Copy, Default)]
struct Committed {
    last_ok: i64,
    count: i64,
}

/// A thread that commits one row into `app_log` about every 2 ms, like a live application.
struct App {
    db: PathBuf,
    stop: Arc<AtomicBool>,
    done: Arc<Mutex<Committed>>,
    errors: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl App {
    /// Start writing to `db` (which has an `app_log` table), after its highest id.
    fn start(db: &Path) -> App {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(Mutex::new(Committed::default()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let c = Connection::open(db).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.execute_batch("PRAGMA synchronous=NORMAL").unwrap();
        let first: i64 = c
            .query_row("SELECT coalesce(max(id), 0) + 1 FROM app_log", [], |r| {
                r.get(0)
            })
            .unwrap();
        *done.lock().unwrap() = Committed {
            last_ok: first - 1,
            count: first - 1,
        };
        let thread = {
            let (stop, done, errors) = (stop.clone(), done.clone(), errors.clone());
            std::thread::spawn(move || {
                let mut id = first;
                while !stop.load(Ordering::Relaxed) {
                    match c.execute("INSERT INTO app_log(id, v) VALUES (?1, 'app row')", [id]) {
                        Ok(_) => {
                            let mut d = done.lock().unwrap();
                            d.last_ok = id;
                            d.count += 1;
                        }
                        Err(e) => errors.lock().unwrap().push(format!("insert {id}: {e}")),
                    }
                    id += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        App {
            db: db.to_path_buf(),
            stop,
            done,
            errors,
            thread: Some(thread),
        }
    }

    fn committed(&self) -> Committed {
        *self.done.lock().unwrap()
    }

    /// Every row the app committed is in the database, and the app never saw an error.
    fn check(&self, when: &str) {
        let errors = self.errors.lock().unwrap().clone();
        assert!(errors.is_empty(), "{when}: the app got errors: {errors:?}");
        let c = self.committed();
        let held: i64 = query(
            &self.db,
            &format!("SELECT count(*) FROM app_log WHERE id <= {}", c.last_ok),
        );
        assert_eq!(
            held, c.count,
            "{when}: {} rows committed by the app up to id {}, {held} in the database",
            c.count, c.last_ok
        );
    }

    /// Stop the thread, then check.
    fn stop(mut self, when: &str) -> Committed {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.check(when);
        self.committed()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks

/// SHA-256 of a file by coreutils' `sha256sum` (an independent implementation, and much faster
/// than a debug build of ours); ours when it is missing.
fn sha256(path: &Path) -> String {
    match std::process::Command::new("sha256sum").arg(path).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string(),
        _ => archive::sha256_file(path).unwrap(),
    }
}

fn query(db: &Path, sql: &str) -> i64 {
    let c = Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{}: {sql}: {e}", db.display()))
}

fn integrity(db: &Path, flags: OpenFlags) -> String {
    let c = Connection::open_with_flags(db, flags)
        .unwrap_or_else(|e| panic!("{}: cannot open: {e}", db.display()));
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let rows: Vec<String> = c
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rows.join("; ")
}

fn assert_integrity(db: &Path, when: &str) {
    assert_eq!(
        integrity(db, OpenFlags::default()),
        "ok",
        "{when}: {}",
        db.display()
    );
}

/// Nobody holds the database's lock.
fn assert_lock_free(env: &TestEnv, when: &str) {
    match litekeeper::lock::try_acquire(&env.path("locks"), "chat", "kill-test") {
        Ok(guard) => drop(guard),
        Err(e) => panic!("{when}: the lock is not free: {e}"),
    }
}

/// Our temp files (and SQLite journals of them) in `dir`.
fn temp_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(archive::TMP_SUFFIX))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Files in `dir` named as backups, by name.
fn backups_in(dir: &Path) -> BTreeMap<String, (BackupName, PathBuf)> {
    names(dir)
        .into_iter()
        .filter_map(|n| BackupName::parse(&n).map(|b| (n.clone(), (b, dir.join(&n)))))
        .collect()
}

/// Row counts of every ordinary table of `db`.
fn table_counts(db: &Path) -> BTreeMap<String, i64> {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let tables: Vec<String> = c
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    tables
        .into_iter()
        .map(|t| {
            let n: i64 = c
                .query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| r.get(0))
                .unwrap();
            (t, n)
        })
        .collect()
}

/// Proves the files under final backup names in a backup directory, remembering which it has
/// proven (same name and size: not read again).
struct BackupChecker {
    dir: PathBuf,
    scratch: PathBuf,
    proven: HashMap<String, u64>,
}

impl BackupChecker {
    fn new(env: &TestEnv, dir: &Path) -> BackupChecker {
        let scratch = env.path("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        BackupChecker {
            dir: dir.to_path_buf(),
            scratch,
            proven: HashMap::new(),
        }
    }

    /// Every file under a final backup name is listed in manifest.json as verified, has the
    /// recorded size and SHA-256, and opens (decompressed) and passes integrity_check with the
    /// recorded row counts; none is `.failed`. `foreign` names files the test put there itself.
    /// Returns the manifest (which must parse).
    fn check(&mut self, when: &str, foreign: impl Fn(&str) -> bool) -> Manifest {
        let m = Manifest::load(&self.dir)
            .unwrap_or_else(|e| panic!("{when}: manifest.json does not parse: {e}"));
        for (file, (name, path)) in backups_in(&self.dir) {
            if foreign(&file) {
                continue;
            }
            assert!(!name.failed, "{when}: a backup failed verification: {file}");
            let size = std::fs::metadata(&path).unwrap().len();
            if self.proven.get(&file) == Some(&size) {
                continue;
            }
            let e = m.get(&file).unwrap_or_else(|| {
                panic!("{when}: {file} is under a final backup name but not in manifest.json")
            });
            assert!(
                matches!(e.verified, Verified::Quick | Verified::Full),
                "{when}: {file} is recorded as {:?}",
                e.verified
            );
            assert_eq!(e.size, size, "{when}: {file}: size");
            assert_eq!(
                sha256(&path),
                e.sha256,
                "{when}: {file}: SHA-256 differs from the manifest's"
            );
            let plain = if name.compressed {
                let out = self.scratch.join("decompressed.db");
                let _ = std::fs::remove_file(&out);
                let mut w = File::create(&out).unwrap();
                zstd::stream::copy_decode(File::open(&path).unwrap(), &mut w)
                    .unwrap_or_else(|e| panic!("{when}: {file} does not decompress: {e}"));
                out
            } else {
                path.clone()
            };
            assert_eq!(
                integrity(&plain, OpenFlags::SQLITE_OPEN_READ_ONLY),
                "ok",
                "{when}: {file}"
            );
            assert_eq!(table_counts(&plain), e.tables, "{when}: {file}: row counts");
            self.proven.insert(file, size);
        }
        m
    }
}

// ---------------------------------------------------------------------------------------------
// prune

const PRUNE_ROWS: i64 = 60_000;

/// `ev` holds PRUNE_ROWS rows; the even ids (ts = 0) match the rule.
fn prune_db(env: &TestEnv) -> PathBuf {
    let db = env.sqlite(
        "app/chat.db",
        &format!(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE ev(id INTEGER PRIMARY KEY, ts INTEGER, body TEXT);
             CREATE INDEX ev_ts ON ev(ts);
             CREATE TABLE app_log(id INTEGER PRIMARY KEY, v TEXT);
             WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < {PRUNE_ROWS})
             INSERT INTO ev SELECT x, x % 2, hex(randomblob(20)) FROM i;"
        ),
    );
    env.config("")
        .database(
            "chat",
            &db,
            "[database.prune]\nmax_lock = \"2ms\"\npause = \"2ms\"\nmax_fraction = 0.9\n\
             [[database.prune.rule]]\ntable = \"ev\"\nwhere = \"ts = 0\"",
        )
        .write();
    db
}

/// Put the database back as `pristine` holds it (nothing has it open).
fn reset_db(db: &Path, pristine: &Path) {
    for s in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{s}", db.display()));
    }
    std::fs::copy(pristine, db).unwrap();
}

/// Rows the prune rule matched that are left; panics unless they are whole batches.
fn check_prune(db: &Path, when: &str) -> i64 {
    assert_integrity(db, when);
    let others = query(db, "SELECT count(*) FROM ev WHERE ts = 1");
    assert_eq!(others, PRUNE_ROWS / 2, "{when}: a non-matching row is gone");
    assert_eq!(
        query(db, "SELECT sum(id) FROM ev WHERE ts = 1"),
        (PRUNE_ROWS / 2) * (PRUNE_ROWS / 2),
        "{when}: non-matching rows changed"
    );
    let left = query(db, "SELECT count(*) FROM ev WHERE ts = 0");
    if left > 0 {
        // Keyset batches in rowid order: what is left is every matching row from the first
        // survivor on, and nothing below it.
        let first = query(db, "SELECT min(id) FROM ev WHERE ts = 0");
        assert_eq!(
            left,
            (PRUNE_ROWS - first) / 2 + 1,
            "{when}: matching rows above {first} are missing (a partial batch?)"
        );
    }
    left
}

#[test]
fn prune() {
    let env = TestEnv::new();
    let mut rng = Rng::new("prune");
    let db = prune_db(&env);
    let pristine = env.path("pristine.db");
    std::fs::copy(&db, &pristine).unwrap();
    let all = PRUNE_ROWS / 2;

    let app = App::start(&db);
    let t = timed_run(&env, &["run", "chat", "prune"]);
    app.stop("timed run");
    assert_eq!(check_prune(&db, "timed run"), 0);

    let mut spread = Spread::new(&mut rng, t, KILLS);
    let mut partial = 0;
    while let Some((i, delay)) = spread.next() {
        reset_db(&db, &pristine);
        let app = App::start(&db);
        let ended = kill_after(&env, &["run", "chat", "prune"], delay);
        let when = format!("prune kill {i} at {delay:?} ({ended:?})");
        app.stop(&when);
        let left = check_prune(&db, &when);
        if matches!(ended, Ended::Finished(_)) {
            assert_eq!(left, 0, "{when}: a finished run left matching rows");
        }
        if left > 0 && left < all {
            partial += 1;
        }
        assert_lock_free(&env, &when);
        spread.ended(ended);
    }
    // The next run after the last kill finishes the job, the app still writing.
    let app = App::start(&db);
    run_ok(&env, &["run", "chat", "prune"]);
    app.stop("final run");
    assert_eq!(check_prune(&db, "final run"), 0);
    assert!(temp_files(db.parent().unwrap()).is_empty());
    eprintln!("prune: {}, {partial} mid-deletion", spread.summary());
    spread.assert_mostly_killed("prune");
    assert!(partial >= 5, "only {partial} kills landed mid-deletion");
}

// ---------------------------------------------------------------------------------------------
// vacuum

/// A WAL database of `rows` ~1 KiB rows with every other block of 50 rows deleted (about half
/// its pages free), plus the app's table.
fn vacuum_db(env: &TestEnv, rows: u32, incremental: bool) -> PathBuf {
    let av = if incremental {
        "PRAGMA auto_vacuum = INCREMENTAL;"
    } else {
        ""
    };
    env.sqlite(
        "app/chat.db",
        &format!(
            "{av} PRAGMA journal_mode=WAL;
             CREATE TABLE doc(id INTEGER PRIMARY KEY, body BLOB);
             CREATE TABLE keep(x);
             CREATE TABLE app_log(id INTEGER PRIMARY KEY, v TEXT);
             INSERT INTO keep VALUES (1), (2), (3);
             WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < {rows})
             INSERT INTO doc SELECT x, randomblob(1000) FROM i;
             DELETE FROM doc WHERE (id / 50) % 2 = 0;"
        ),
    )
}

/// (rows of doc, sum of their ids, rows of keep).
fn vacuum_rows(db: &Path) -> (i64, i64, i64) {
    (
        query(db, "SELECT count(*) FROM doc"),
        query(db, "SELECT sum(id) FROM doc"),
        query(db, "SELECT count(*) FROM keep"),
    )
}

#[test]
fn vacuum() {
    let mut rng = Rng::new("vacuum");
    let mut report = Vec::new();
    for (mode, rows, incremental, kills) in
        [("full", 30_000, false, KILLS), ("auto", 12_000, true, 8)]
    {
        let env = TestEnv::new();
        let db = vacuum_db(&env, rows, incremental);
        env.config("")
            .database(
                "chat",
                &db,
                &format!("[database.vacuum]\nmode = \"{mode}\"\nmin_free = \"10%\""),
            )
            .write();
        let pristine = env.path("pristine.db");
        std::fs::copy(&db, &pristine).unwrap();
        let want = vacuum_rows(&db);
        let free_before = query(&db, "PRAGMA freelist_count");
        let pages = query(&db, "PRAGMA page_count");
        assert!(free_before * 100 / pages >= 40, "{free_before} of {pages}");

        let app = App::start(&db);
        let t = timed_run(&env, &["run", "chat", "vacuum"]);
        app.stop("timed run");
        assert_eq!(query(&db, "PRAGMA freelist_count"), 0);

        let mut spread = Spread::new(&mut rng, t, kills);
        let mut vacuumed = 0;
        while let Some((i, delay)) = spread.next() {
            reset_db(&db, &pristine);
            let app = App::start(&db);
            let ended = kill_after(&env, &["run", "chat", "vacuum"], delay);
            let when = format!("{mode} vacuum kill {i} at {delay:?} ({ended:?})");
            app.stop(&when);
            assert_integrity(&db, &when);
            assert_eq!(vacuum_rows(&db), want, "{when}: rows changed");
            let free = query(&db, "PRAGMA freelist_count");
            if !incremental {
                // One transaction: all of the VACUUM or none of it (the app's inserts take a
                // few free pages meanwhile).
                assert!(
                    free == 0 || free > free_before - 100,
                    "{when}: {free} free pages, {free_before} before: a half-done VACUUM?"
                );
            }
            if free < free_before - 100 {
                vacuumed += 1;
            }
            if matches!(ended, Ended::Finished(_)) {
                assert_eq!(free, 0, "{when}: finished but pages still free");
            }
            assert_lock_free(&env, &when);
            spread.ended(ended);
        }
        let app = App::start(&db);
        run_ok(&env, &["run", "chat", "vacuum"]);
        app.stop("final run");
        assert_integrity(&db, "final run");
        assert_eq!(vacuum_rows(&db), want);
        // Done, or (an incremental vacuum killed late) below min_free and rightly skipped.
        let (free, pages) = (
            query(&db, "PRAGMA freelist_count"),
            query(&db, "PRAGMA page_count"),
        );
        assert!(
            free == 0 || (incremental && free * 10 < pages),
            "{mode}: {free} of {pages} pages free after the final run"
        );
        assert!(temp_files(db.parent().unwrap()).is_empty());
        report.push(format!(
            "{mode}: {}, {vacuumed} of {kills} left vacuumed",
            spread.summary()
        ));
        spread.assert_mostly_killed(mode);
    }
    eprintln!("vacuum: {}", report.join("; "));
}

// ---------------------------------------------------------------------------------------------
// backup and restore

/// `chat.db` (WAL, `bulk_rows` 4 KB blobs + the app's table + a marker) with `files.db`
/// attached (`attach_rows` blobs), backed up into `backups/` keeping the last 2.
fn backup_setup(env: &TestEnv, bulk_rows: u32, attach_rows: u32) -> (PathBuf, PathBuf) {
    let db = env.sqlite(
        "app/chat.db",
        &format!(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE chat(id INTEGER PRIMARY KEY, body TEXT NOT NULL);
             CREATE TABLE bulk(x BLOB);
             CREATE TABLE app_log(id INTEGER PRIMARY KEY, v TEXT);
             CREATE TABLE marker(v TEXT);
             INSERT INTO marker VALUES ('backup');
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 2000)
             INSERT INTO chat(body) SELECT hex(randomblob(100)) FROM n;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < {bulk_rows})
             INSERT INTO bulk SELECT randomblob(4000) FROM n;"
        ),
    );
    let files = env.sqlite(
        "app/files.db",
        &format!(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE blob(key TEXT PRIMARY KEY, data BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < {attach_rows})
             INSERT INTO blob SELECT i || '/0', randomblob(4000) FROM n;"
        ),
    );
    let dir = env.path("backups");
    backup_config(env, &db, &files, &dir, "");
    (db, dir)
}

fn backup_config(env: &TestEnv, db: &Path, files: &Path, dir: &Path, extra: &str) {
    env.write_config(&format!(
        "{}[[database]]\nname = \"chat\"\npath = \"{}\"\nattach = {{ files = \"{}\" }}\n\
         [database.backup]\ndir = \"{}\"\nkeep = {{ last = 2 }}\n{extra}\n",
        env.daemon_section(""),
        db.display(),
        files.display(),
        dir.display()
    ));
}

#[test]
fn backup() {
    let mut rng = Rng::new("backup");
    let mut report = Vec::new();
    // Plain: ~34 MB to copy. zstd costs far more per byte in a debug build: ~12 MB.
    for (variant, bulk, attach, extra) in [
        ("plain", 7_500, 1_000, ""),
        ("zstd", 2_500, 300, "compress = \"zstd\""),
    ] {
        let env = TestEnv::new();
        let (db, dir) = backup_setup(&env, bulk, attach);
        let files = env.path("app/files.db");
        backup_config(&env, &db, &files, &dir, extra);
        let mut checker = BackupChecker::new(&env, &dir);
        let app = App::start(&db);
        let t = timed_run(&env, &["run", "chat", "backup"]);
        checker.check("timed run", |_| false);
        let mut spread = Spread::new(&mut rng, t, KILLS);
        while let Some((i, delay)) = spread.next() {
            let ended = kill_after(&env, &["run", "chat", "backup"], delay);
            let when = format!("{variant} backup kill {i} at {delay:?} ({ended:?})");
            app.check(&when);
            assert_integrity(&db, &when);
            assert_integrity(&files, &when);
            checker.check(&when, |_| false);
            assert_lock_free(&env, &when);
            spread.ended(ended);
        }
        // The next run cleans up after the last kill.
        run_ok(&env, &["run", "chat", "backup"]);
        app.stop(variant);
        let m = checker.check("final run", |_| false);
        assert_eq!(temp_files(&dir), Vec::<String>::new(), "{variant}");
        // Exactly the policy's files: the last two of each series, all in the manifest.
        let left = backups_in(&dir);
        assert_eq!(left.len(), 4, "{variant}: {:?}", left.keys());
        assert!(left.values().all(|(n, _)| n.compressed != extra.is_empty()));
        let listed: BTreeSet<&str> = m.backups.iter().map(|e| e.file.as_str()).collect();
        assert_eq!(
            listed,
            left.keys().map(String::as_str).collect(),
            "{variant}: manifest entries"
        );
        report.push(format!("{variant}: {}", spread.summary()));
        spread.assert_mostly_killed(variant);
    }
    eprintln!("backup: {}", report.join("; "));
}

fn text(db: &Path, sql: &str) -> String {
    let c = Connection::open(db).unwrap();
    c.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{}: {sql}: {e}", db.display()))
}

/// Markers of the `<db>.pre-restore-*` copies next to `db`.
fn kept_markers(db: &Path) -> BTreeSet<String> {
    let dir = db.parent().unwrap();
    let prefix = format!("{}.pre-restore-", db.file_name().unwrap().to_string_lossy());
    names(dir)
        .into_iter()
        .filter(|n| n.starts_with(&prefix) && !n.ends_with("-wal") && !n.ends_with("-shm"))
        .map(|n| text(&dir.join(n), "SELECT v FROM marker"))
        .collect()
}

#[test]
fn restore() {
    let env = TestEnv::new();
    let mut rng = Rng::new("restore");
    let (db, dir) = backup_setup(&env, 3_000, 100);
    run_ok(&env, &["run", "chat", "backup"]);
    let (file, (_, path)) = backups_in(&dir)
        .into_iter()
        .find(|(_, (n, _))| n.series == "chat")
        .unwrap();
    let entry = Manifest::load(&dir).unwrap().get(&file).unwrap().clone();
    assert_eq!(sha256(&path), entry.sha256);

    // --to a new path, the app writing to the live database meanwhile.
    let out_dir = env.path("restored");
    std::fs::create_dir_all(&out_dir).unwrap();
    let target = out_dir.join("new.db");
    let target_s = target.to_str().unwrap().to_string();
    let to_args = ["restore", "chat", "--to", target_s.as_str()];
    let is_the_backup = |when: &str| {
        assert_integrity(&target, when);
        assert_eq!(table_counts(&target), entry.tables, "{when}: row counts");
        assert_eq!(
            sha256(&target),
            entry.sha256,
            "{when}: not the backup's bytes"
        );
    };
    let app = App::start(&db);
    let t_to = timed_run(&env, &to_args);
    is_the_backup("timed restore --to");
    std::fs::remove_file(&target).unwrap();
    let mut spread_to = Spread::new(&mut rng, t_to, KILLS);
    while let Some((i, delay)) = spread_to.next() {
        let ended = kill_after(&env, &to_args, delay);
        let when = format!("restore --to kill {i} at {delay:?} ({ended:?})");
        app.check(&when);
        assert_integrity(&db, &when);
        // Nothing but the target (complete) and our temp file in the target's directory.
        for n in names(&out_dir) {
            assert!(
                n == "new.db" || n == ".new.db.litekeeper-tmp",
                "{when}: unexpected {n}"
            );
        }
        if target.exists() {
            is_the_backup(&when);
            std::fs::remove_file(&target).unwrap();
        } else {
            assert!(
                matches!(ended, Ended::Killed(_)),
                "{when}: finished, no file"
            );
        }
        assert_lock_free(&env, &when);
        spread_to.ended(ended);
    }
    run_ok(&env, &to_args);
    is_the_backup("final restore --to");
    assert_eq!(temp_files(&out_dir), Vec::<String>::new());
    app.stop("restore --to");

    // --in-place --force with the app stopped: the live name holds the old database or the
    // backup, never anything else, and every replaced database is kept aside.
    let in_place = ["restore", "chat", "--in-place", "--force"];
    let app_dir = db.parent().unwrap().to_path_buf();
    set_marker(&db, "live-timed");
    let t_in = timed_run(&env, &in_place);
    assert_eq!(text(&db, "SELECT v FROM marker"), "backup");
    let mut replaced = BTreeSet::from(["live-timed".to_string()]);
    let mut spread_in = Spread::new(&mut rng, t_in, KILLS);
    while let Some((i, delay)) = spread_in.next() {
        let live = format!("live-{i}");
        set_marker(&db, &live);
        let ended = kill_after(&env, &in_place, delay);
        let when = format!("restore --in-place kill {i} at {delay:?} ({ended:?})");
        assert!(db.exists(), "{when}: the live database is gone");
        assert_integrity(&db, &when);
        let now = text(&db, "SELECT v FROM marker");
        if now == "backup" {
            assert_eq!(table_counts(&db), entry.tables, "{when}: row counts");
            replaced.insert(live.clone());
        } else {
            assert_eq!(now, live, "{when}: neither the old database nor the backup");
            assert!(
                matches!(ended, Ended::Killed(_)),
                "{when}: finished, no restore"
            );
        }
        let kept = kept_markers(&db);
        assert!(
            replaced.is_subset(&kept),
            "{when}: replaced databases {replaced:?}, kept aside only {kept:?}"
        );
        assert_lock_free(&env, &when);
        spread_in.ended(ended);
    }
    // The next run succeeds; so does one right after it (started at the top of a second, so
    // both likely keep the replaced database within one second), and each keeps its own.
    let sub = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::thread::sleep(Duration::from_nanos(1_000_000_000 - sub as u64));
    for last in ["live-final", "live-final-again"] {
        set_marker(&db, last);
        run_ok(&env, &in_place);
        assert_eq!(text(&db, "SELECT v FROM marker"), "backup");
        assert_integrity(&db, "final in-place restore");
        replaced.insert(last.to_string());
    }
    let kept = kept_markers(&db);
    assert!(
        replaced.is_subset(&kept),
        "replaced {replaced:?}, kept {kept:?}"
    );
    assert_eq!(temp_files(&app_dir), Vec::<String>::new());
    eprintln!(
        "restore: --to {}; --in-place {}",
        spread_to.summary(),
        spread_in.summary()
    );
    spread_to.assert_mostly_killed("restore --to");
    spread_in.assert_mostly_killed("restore --in-place");
}

// ---------------------------------------------------------------------------------------------
// retention

const FABRICATED: u32 = 2000;
const FOREIGN: [&str; 5] = [
    "notes.txt",
    "chat-2025.db",
    "chat-20250101-020000.db.bak",
    ".chat-20250101-020000.db",
    "other-20250101-020000.db",
];

/// Old backups of series `chat` (tiny files, eight a day through 2025) that are not there,
/// written and recorded in the manifest (retention judges only what it records); their names.
fn fabricate(dir: &Path) -> BTreeSet<String> {
    let start = chrono::NaiveDate::from_ymd_opt(2025, 1, 1).unwrap();
    let mut all = BTreeSet::new();
    let held = litekeeper::archive::lock_dir(dir).unwrap();
    let mut m = Manifest::load(dir).unwrap();
    for k in 0..FABRICATED {
        let day = start + chrono::Duration::days((k / 8) as i64);
        let name = format!("chat-{}-{:02}0000.db", day.format("%Y%m%d"), (k % 8) * 3);
        let p = dir.join(&name);
        if !p.exists() {
            std::fs::write(&p, b"old backup").unwrap();
        }
        if m.get(&name).is_none() {
            let n = litekeeper::archive::BackupName::parse(&name).unwrap();
            m.upsert(litekeeper::archive::Entry {
                file: name.clone(),
                series: n.series,
                database: "chat".into(),
                source: "chat.db".into(),
                created_at: n.time,
                size: 10,
                sha256: litekeeper::archive::sha256_file(&p).unwrap(),
                compressed: false,
                raw_size: None,
                raw_sha256: None,
                verified: Verified::Quick,
                page_count: 1,
                page_size: 4096,
                tables: Default::default(),
                duration_ms: 1,
                error: None,
                fk_violations: None,
                drill: None,
            });
        }
        all.insert(name);
    }
    m.save(dir, &held).unwrap();
    all
}

/// The newest backup of series `chat` the manifest records as verified, and present.
fn newest_verified(dir: &Path) -> Option<String> {
    let m = Manifest::load(dir).unwrap();
    backups_in(dir)
        .into_iter()
        .filter(|(f, (n, _))| {
            n.series == "chat"
                && m.get(f)
                    .is_some_and(|e| matches!(e.verified, Verified::Quick | Verified::Full))
        })
        .max_by_key(|(_, (n, _))| n.time)
        .map(|(f, _)| f)
}

#[test]
fn retention() {
    let env = TestEnv::new();
    let mut rng = Rng::new("retention");
    let db = env.sqlite(
        "app/chat.db",
        "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);
         CREATE TABLE app_log(id INTEGER PRIMARY KEY, v TEXT);",
    );
    let dir = env.path("backups");
    env.config("timezone = \"UTC\"")
        .database(
            "chat",
            &db,
            &format!(
                "[database.backup]\ndir = \"{}\"\nkeep = {{ last = 3 }}",
                dir.display()
            ),
        )
        .write();
    // Three real backups first, so `last = 3` keeps none of the old ones.
    for _ in 0..3 {
        run_ok(&env, &["run", "chat", "backup"]);
    }
    for f in FOREIGN {
        std::fs::write(dir.join(f), f).unwrap();
    }
    let fabricated = fabricate(&dir);
    let foreign = |f: &str| fabricated.contains(f) || FOREIGN.contains(&f);
    let mut checker = BackupChecker::new(&env, &dir);
    let app = App::start(&db);
    let t = timed_run(&env, &["run", "chat", "backup"]);
    assert!(
        names(&dir).is_disjoint(&fabricated),
        "the timed run kept old backups"
    );
    let left_of = |d: &Path| names(d).intersection(&fabricated).count();

    // Kill points over the whole run, then more by progress through the deletions (killed
    // once that many old backups are left).
    let mut spread = Spread::new(&mut rng, t, KILLS);
    let by_progress = 12;
    let mut points: Vec<Option<usize>> = vec![None; KILLS as usize];
    points.extend(
        (0..by_progress).map(|k| Some(FABRICATED as usize * (by_progress - k) / (by_progress + 1))),
    );
    let mut mid_deletion = 0;
    for (i, left_target) in points.into_iter().enumerate() {
        fabricate(&dir);
        let keep = newest_verified(&dir).expect("a verified backup");
        let args = ["run", "chat", "backup"];
        let (point, ended) = match left_target {
            None => {
                let (_, delay) = spread.next().unwrap();
                let ended = kill_after(&env, &args, delay);
                spread.ended(ended);
                (format!("at {delay:?}"), ended)
            }
            Some(target) => (
                format!("with {target} old backups left"),
                run_until(&env, &args, |_| left_of(&dir) <= target),
            ),
        };
        let when = format!("retention kill {i} {point} ({ended:?})");
        let left = left_of(&dir);
        if left > 0 && left < FABRICATED as usize {
            mid_deletion += 1;
        }
        assert!(dir.join(&keep).exists(), "{when}: {keep} was deleted");
        checker.check(&when, foreign);
        for f in FOREIGN {
            assert_eq!(
                std::fs::read(dir.join(f)).ok().as_deref(),
                Some(f.as_bytes()),
                "{when}: {f} was touched"
            );
        }
        app.check(&when);
        assert_integrity(&db, &when);
        assert_lock_free(&env, &when);
    }

    // The next run completes and leaves exactly the policy's files.
    fabricate(&dir);
    let before: BTreeSet<String> = backups_in(&dir)
        .into_keys()
        .filter(|f| !foreign(f))
        .collect();
    // Killed runs less than a second apart took the next free second: wait until none is
    // dated in the future, or retention rightly keeps it uncounted and the count is off.
    let newest = before
        .iter()
        .filter_map(|f| BackupName::parse(f))
        .map(|n| n.time)
        .max();
    if let Some(newest) = newest {
        while chrono::Utc::now() <= newest + chrono::Duration::seconds(1) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let out = env
        .cmd()
        .args(["run", "chat", "backup"])
        .timeout(RUN_LIMIT)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", crate::util::both(&out));
    app.stop("retention");
    // What it wrote (the name can sort below earlier ones: runs less than a second apart
    // take the next free second, so the names of the killed runs are ahead of the clock).
    let stdout = String::from_utf8_lossy(&out.stdout);
    let new = stdout
        .split_whitespace()
        .skip_while(|w| *w != "wrote")
        .nth(1)
        .unwrap_or_else(|| panic!("no file named in {stdout}"))
        .to_string();
    let m = checker.check("final run", foreign);
    let after: BTreeSet<String> = backups_in(&dir)
        .into_keys()
        .filter(|f| !foreign(f))
        .collect();
    let mut all: Vec<(BackupName, String)> = before
        .iter()
        .chain([&new])
        .map(|f| (BackupName::parse(f).unwrap(), f.clone()))
        .collect();
    all.sort_by_key(|(n, _)| std::cmp::Reverse(n.time));
    let want: BTreeSet<String> = all.into_iter().take(3).map(|(_, f)| f).collect();
    assert_eq!(after, want, "keep = {{ last = 3 }}");
    let listed: BTreeSet<String> = m.backups.iter().map(|e| e.file.clone()).collect();
    assert_eq!(listed, want, "manifest entries");
    assert_eq!(left_of(&dir), 0);
    for f in FOREIGN {
        assert!(dir.join(f).exists(), "{f}");
    }
    assert_eq!(temp_files(&dir), Vec::<String>::new());
    eprintln!(
        "retention: {}, then {by_progress} by progress; {mid_deletion} mid-deletion",
        spread.summary()
    );
    spread.assert_mostly_killed("retention");
    assert!(mid_deletion >= 5, "only {mid_deletion} kills mid-deletion");
}

// ---------------------------------------------------------------------------------------------
// restore over sidecars

/// What a database holds: its marker and a digest of every bulk row (SQLite's normal open,
/// so a hot journal is rolled back first, as any application would).
fn fingerprint(db: &Path) -> (String, u64) {
    use std::hash::{Hash, Hasher};
    let c = Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let marker: String = c
        .query_row("SELECT v FROM marker", [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{}: {e}", db.display()));
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut s = c.prepare("SELECT id, x FROM bulk ORDER BY id").unwrap();
    let rows = s
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
        .unwrap();
    for row in rows {
        row.unwrap().hash(&mut h);
    }
    (marker, h.finish())
}

/// A copy of `from` (and its `-journal`/`-wal` when present) at `to`, handed to `owner`.
fn copy_db(from: &Path, to: &Path, owner: Option<u32>) {
    for s in ["", "-journal", "-wal", "-shm"] {
        let (f, t) = (sidecar(from, s), sidecar(to, s));
        let _ = std::fs::remove_file(&t);
        if f.exists() {
            std::fs::copy(&f, &t).unwrap();
            chown_to(&t, owner);
        }
    }
}

fn chown_to(p: &Path, owner: Option<u32>) {
    if let Some(id) = owner {
        std::os::unix::fs::chown(p, Some(id), Some(id)).unwrap();
    }
}

/// chown -R.
fn chown_tree(p: &Path, owner: Option<u32>) {
    chown_to(p, owner);
    if std::fs::symlink_metadata(p).unwrap().is_dir() {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            chown_tree(&e.path(), owner);
        }
    }
}

/// Restore killed at 22 points with sidecars in the way: `--in-place` over a database whose
/// `-journal` is hot (an app killed mid-transaction), and `--to` a path with a stale foreign
/// `-wal`/`-shm`/`-journal`. After every kill: the live database passes integrity_check and
/// holds exactly the old database or the backup; every kept `.pre-restore` copy holds the old
/// one; a file at the `--to` path is the backup, byte for byte, with no foreign sidecar beside
/// it; nothing else has a final name; the lock is free. At the end the next job removes the
/// killed restore's temp file and a full restore succeeds. As root, and as uid 65534 (the
/// second half needs root to become that user).
#[test]
fn restore_over_sidecars() {
    restore_over_sidecars_as(None);
    if crate::util::is_root() {
        restore_over_sidecars_as(Some(crate::util::NOBODY));
    } else {
        eprintln!("restore_over_sidecars: the uid 65534 half skipped: needs root");
    }
}

fn restore_over_sidecars_as(user: Option<u32>) {
    let who = match user {
        None => "as the test's user".to_string(),
        Some(u) => format!("as uid {u}"),
    };
    let env = TestEnv::new();
    let mut rng = Rng::new(&format!("restore_over_sidecars {who}"));
    let db = marker_db(&env, 1500, 4000);
    let dir = env.path("backups");
    env.write_config(&format!(
        "{}[[database]]\nname = \"chat\"\npath = \"{}\"\njournal_mode = \"keep\"\n\
         [database.backup]\ndir = \"{}\"\nkeep = {{ last = 5 }}\n",
        env.daemon_section(""),
        db.display(),
        dir.display()
    ));
    run_ok(&env, &["run", "chat", "backup"]);
    let (file, (_, backup_path)) = backups_in(&dir).into_iter().next().unwrap();
    let entry = Manifest::load(&dir).unwrap().get(&file).unwrap().clone();
    let backup = fingerprint(&backup_path);
    assert_eq!(backup.0, "backup");

    // The crash fixture: 'old' committed, then a transaction killed half-way (hot journal).
    let fixtures = env.path("fixtures");
    std::fs::create_dir_all(&fixtures).unwrap();
    Connection::open(&db)
        .unwrap()
        .execute("UPDATE marker SET v = 'old'", [])
        .unwrap();
    crate::restore::make_hot_journal(&db);
    let crashed = fixtures.join("crashed.db");
    copy_db(&db, &crashed, None);
    let old = {
        let scratch = fixtures.join("scratch.db");
        copy_db(&crashed, &scratch, None);
        let f = fingerprint(&scratch);
        std::fs::remove_file(&scratch).unwrap();
        f
    };
    assert_eq!(old.0, "old");
    // A foreign WAL (another database's changes) + -shm + -journal, for the --to target.
    let foreign = fixtures.join("foreign.db");
    {
        let _c = crate::restore::foreign_wal(&backup_path, &foreign, 100);
        std::fs::copy(sidecar(&foreign, "-wal"), fixtures.join("stale-wal")).unwrap();
        std::fs::copy(sidecar(&foreign, "-shm"), fixtures.join("stale-shm")).unwrap();
    }
    std::fs::write(fixtures.join("stale-journal"), b"").unwrap();
    let out_dir = env.path("restored");
    std::fs::create_dir_all(&out_dir).unwrap();
    let target = out_dir.join("new.db");

    if let Some(u) = user {
        crate::util::open_to_nobody(&env);
        chown_tree(env.dir.path(), Some(u));
    }
    let cmd = || match user {
        None => env.std_cmd(),
        Some(_) => {
            let mut c = crate::util::unprivileged(&env);
            c.arg("-c").arg(env.config_path());
            c
        }
    };
    let run_as = |args: &[&str]| {
        let out = cmd().args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{who}: litekeeper {args:?}: {}",
            crate::util::both(&out)
        );
    };
    let timed = |args: &[&str]| {
        let t = Instant::now();
        run_as(args);
        t.elapsed()
    };

    // --in-place --force over the hot journal (--force: as uid 65534 other users' processes
    // cannot be checked; the journal is what is tested).
    let in_place = ["restore", "chat", &file, "--in-place", "--force"];
    let app_dir = db.parent().unwrap().to_path_buf();
    let reset_live = || {
        for n in names(&app_dir) {
            if n.starts_with("chat.db") {
                std::fs::remove_file(app_dir.join(n)).unwrap();
            }
        }
        copy_db(&crashed, &db, user);
    };
    reset_live();
    let t_in = timed(&in_place);
    assert_eq!(fingerprint(&db), backup, "{who}: timed in-place restore");
    let mut spread_in = Spread::new(&mut rng, t_in, KILLS);
    while let Some((i, delay)) = spread_in.next() {
        reset_live();
        let ended = run_cmd_until(&env, cmd(), &in_place, |e| e >= delay);
        let when = format!(
            "{who}: restore --in-place over a hot journal, kill {i} at {delay:?} ({ended:?})"
        );
        for n in names(&app_dir) {
            let ok = n == "chat.db"
                || n == "chat.db-journal"
                || n.starts_with("chat.db.pre-restore-")
                || n.starts_with(".chat.db.litekeeper-tmp");
            assert!(ok, "{when}: unexpected {n}");
        }
        // Each kept copy (with the journal kept beside it, if any) is the old database.
        for n in names(&app_dir) {
            if n.starts_with("chat.db.pre-restore-") && !n.ends_with("-journal") {
                let kept = app_dir.join(&n);
                assert_integrity(&kept, &when);
                assert_eq!(
                    fingerprint(&kept),
                    old,
                    "{when}: {n} is not the old database"
                );
            }
        }
        assert!(db.exists(), "{when}: the live database is gone");
        assert_integrity(&db, &when);
        let now = fingerprint(&db);
        if now != backup {
            assert_eq!(now, old, "{when}: neither the old database nor the backup");
            assert!(
                matches!(ended, Ended::Killed(_)),
                "{when}: finished, no restore"
            );
        }
        assert_lock_free(&env, &when);
        spread_in.ended(ended);
    }
    // A killed restore's temp file goes with the next job; then a full restore succeeds.
    reset_live();
    run_as(&["run", "chat", "backup"]);
    assert_eq!(
        temp_files(&app_dir),
        Vec::<String>::new(),
        "{who}: after the next job"
    );
    reset_live();
    run_as(&in_place);
    assert_eq!(fingerprint(&db), backup, "{who}: final in-place restore");
    assert_eq!(temp_files(&app_dir), Vec::<String>::new());

    // --to over stale foreign sidecars.
    let target_s = target.to_str().unwrap().to_string();
    let to_args = ["restore", "chat", &file, "--to", target_s.as_str()];
    let reset_target = || {
        for n in names(&out_dir) {
            if !n.starts_with(".new.db.litekeeper-tmp") {
                std::fs::remove_file(out_dir.join(n)).unwrap();
            }
        }
        for s in ["wal", "shm", "journal"] {
            let t = sidecar(&target, &format!("-{s}"));
            std::fs::copy(fixtures.join(format!("stale-{s}")), &t).unwrap();
            chown_to(&t, user);
        }
    };
    let is_the_backup = |when: &str| {
        for s in ["-wal", "-shm", "-journal"] {
            assert!(
                !sidecar(&target, s).exists(),
                "{when}: a {s} beside the restored file"
            );
        }
        assert_eq!(
            sha256(&target),
            entry.sha256,
            "{when}: not the backup's bytes"
        );
        assert_integrity(&target, when);
        assert_eq!(
            fingerprint(&target),
            backup,
            "{when}: not the backup's data"
        );
    };
    reset_target();
    let t_to = timed(&to_args);
    is_the_backup(&format!("{who}: timed restore --to"));
    let mut spread_to = Spread::new(&mut rng, t_to, KILLS);
    while let Some((i, delay)) = spread_to.next() {
        reset_target();
        let ended = run_cmd_until(&env, cmd(), &to_args, |e| e >= delay);
        let when =
            format!("{who}: restore --to over stale sidecars, kill {i} at {delay:?} ({ended:?})");
        for n in names(&out_dir) {
            let ok = n == "new.db"
                || ["-wal", "-shm", "-journal"].iter().any(|s| {
                    n == format!("new.db{s}") || n.starts_with(&format!("new.db{s}.stale-"))
                })
                || n.starts_with(".new.db.litekeeper-tmp");
            assert!(ok, "{when}: unexpected {n}");
        }
        if target.exists() {
            is_the_backup(&when);
        } else {
            assert!(
                matches!(ended, Ended::Killed(_)),
                "{when}: finished, no file"
            );
        }
        spread_to.ended(ended);
    }
    reset_target();
    run_as(&to_args);
    is_the_backup(&format!("{who}: final restore --to"));
    assert_eq!(temp_files(&out_dir), Vec::<String>::new());
    eprintln!(
        "restore_over_sidecars {who}: --in-place {}; --to {}",
        spread_in.summary(),
        spread_to.summary()
    );
    spread_in.assert_mostly_killed("restore --in-place over a hot journal");
    spread_to.assert_mostly_killed("restore --to over stale sidecars");
}
