//! Incremental backups and point-in-time restore, through the real binary: points survive
//! everything an application does (torture), a SIGKILL mid-run, a deleted middle delta;
//! chains are kept and expired together with their full backup; the timer knows the job.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::Value;

use crate::util::{both, sha256_hex, TestEnv};

/// A WAL database `app.db` with table `n`, and a configuration taking zstd full backups and
/// incremental ones (on demand) into `b/`, with `keep` for the chains.
pub(crate) fn setup(keep: &str, extra_backup: &str) -> (TestEnv, PathBuf, PathBuf) {
    let env = TestEnv::new();
    let db = env.sqlite(
        "app.db",
        "PRAGMA journal_mode=WAL; CREATE TABLE n(id INTEGER PRIMARY KEY, pad BLOB);",
    );
    let dir = env.path("b");
    env.config("")
        .database(
            "app",
            &db,
            &format!(
                "[database.backup]\ndir = \"{}\"\ncompress = \"zstd\"\n{extra_backup}\nincremental = {{ keep = \"{keep}\" }}",
                dir.display()
            ),
        )
        .write();
    (env, db, dir)
}

/// The names in `dir` that end with `suffix`, sorted.
fn names_ending(dir: &Path, suffix: &str) -> Vec<String> {
    crate::util::names(dir)
        .into_iter()
        .filter(|n| n.ends_with(suffix))
        .collect()
}

/// `app.db` (table `n`) with `files.db` (table `f`) attached, both WAL, backed up to `b/`
/// with incremental chains kept 7 days; `extra_backup` adds lines to `[database.backup]`.
/// Returns the env, both paths and the backup directory.
pub(crate) fn app_with_files(extra_backup: &str) -> (TestEnv, PathBuf, PathBuf, PathBuf) {
    let env = TestEnv::new();
    let db = env.sqlite(
        "app.db",
        "PRAGMA journal_mode=WAL; CREATE TABLE n(id INTEGER PRIMARY KEY, pad BLOB);",
    );
    let files = env.sqlite(
        "files.db",
        "PRAGMA journal_mode=WAL; CREATE TABLE f(id INTEGER PRIMARY KEY, pad BLOB);",
    );
    let dir = env.path("b");
    env.config("")
        .database(
            "app",
            &db,
            &format!(
                "attach = {{ files = \"{}\" }}\n[database.backup]\ndir = \"{}\"\n{extra_backup}incremental = {{ keep = \"7d\" }}",
                files.display(),
                dir.display()
            ),
        )
        .write();
    (env, db, files, dir)
}

pub(crate) fn insert(db: &Path, from: i64, to: i64) {
    let c = Connection::open(db).unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for i in from..=to {
        tx.execute("INSERT INTO n(id, pad) VALUES (?1, randomblob(300))", [i])
            .unwrap();
    }
    tx.commit().unwrap();
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// The manifest's deltas, in chain order.
fn deltas(dir: &Path) -> Vec<Value> {
    let mut d: Vec<Value> = manifest(dir)["deltas"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    d.sort_by_key(|d| {
        (
            d["created_at"].as_str().unwrap().to_string(),
            d["sequence"].as_u64(),
        )
    });
    d
}

fn ids(db: &Path) -> Vec<i64> {
    crate::util::query_ids(db, "SELECT id FROM n ORDER BY id")
}

fn integrity(db: &Path) -> String {
    let c = Connection::open(db).unwrap();
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// Restore the point `file` to a new path; its image must be the one the manifest records.
fn restore_point(env: &TestEnv, point: &Value, name: &str) -> PathBuf {
    let to = env.path(name);
    let o = env
        .cmd()
        .args(["restore", "app", point["file"].as_str().unwrap(), "--to"])
        .arg(&to)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(
        sha256_hex(&to),
        point["image_sha256"].as_str().unwrap(),
        "restored image of {point}"
    );
    assert_eq!(integrity(&to), "ok", "{point}");
    to
}

#[test]
fn points_survive_checkpoints_vacuum_schema_changes_and_a_shrinking_file() {
    let (env, db, dir) = setup("7d", "");
    insert(&db, 1, 3000);
    env.run_ok(&["run", "app", "backup"]);
    let c = Connection::open(&db).unwrap();
    let mut expected: Vec<Vec<i64>> = Vec::new();
    let steps: [&dyn Fn(&Connection); 6] = [
        &|_| {},
        &|c| {
            c.execute_batch("UPDATE n SET pad = randomblob(300) WHERE id % 97 = 0")
                .unwrap()
        },
        &|c| {
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap()
        },
        &|c| c.execute_batch("CREATE INDEX n_pad ON n(pad)").unwrap(),
        &|c| c.execute_batch("DELETE FROM n WHERE id > 500").unwrap(),
        &|c| c.execute_batch("VACUUM").unwrap(),
    ];
    for step in steps {
        step(&c);
        env.run_ok(&["run", "app", "incremental"]);
        expected.push(ids(&db));
    }
    let points = deltas(&dir);
    assert_eq!(points.len(), 6);
    let scanned: Vec<u64> = points
        .iter()
        .map(|p| p["page_count"].as_u64().unwrap())
        .collect();
    assert!(
        scanned[5] < scanned[4],
        "VACUUM shrank the file: {scanned:?}"
    );
    for (i, (p, want)) in points.iter().zip(&expected).enumerate() {
        assert_eq!(p["sequence"].as_u64(), Some(i as u64 + 1));
        let got = restore_point(&env, p, &format!("p{i}.db"));
        assert_eq!(&ids(&got), want, "point {i}");
    }
    // Only the newest point keeps a page-hash index.
    let pages = names_ending(&dir, ".pages");
    assert_eq!(
        pages,
        vec![format!("{}.pages", points[5]["file"].as_str().unwrap())]
    );
    // A new full backup starts a new chain.
    env.run_ok(&["run", "app", "backup"]);
    env.run_ok(&["run", "app", "incremental"]);
    let last = deltas(&dir).pop().unwrap();
    assert_eq!(last["sequence"].as_u64(), Some(1));
    assert_ne!(last["base"], points[0]["base"]);
    restore_point(&env, &last, "new-chain.db");
}

/// A writer commits numbered rows while the app checkpoints, VACUUMs once, adds an index and
/// deletes a range; incremental backups run through the CLI every second. Every point
/// restores to exactly the rows committed before it (a prefix, minus the deleted range once
/// deleted), with its recorded image SHA-256. LK_TORTURE_SECS sets the length (default 20 s;
/// the minute is LK_TORTURE_SECS=60).
#[test]
fn torture_every_point_is_a_prefix_of_the_committed_rows() {
    let secs: u64 = std::env::var("LK_TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let (env, db, dir) = setup("7d", "verify = \"quick\"");
    insert(&db, 1, 2000);
    env.run_ok(&["run", "app", "backup"]);
    const DEL_FROM: i64 = 1000;
    const DEL_TO: i64 = 1500;
    let last = Arc::new(AtomicI64::new(2000));
    // The id whose transaction also deleted the range (0: not yet).
    let deleted_with = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, last, deleted_with, stop) =
            (db.clone(), last.clone(), deleted_with.clone(), stop.clone());
        let total = Duration::from_secs(secs);
        std::thread::spawn(move || {
            let c = Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            let start = Instant::now();
            let (mut checkpointed, mut vacuumed, mut indexed) = (false, false, false);
            let mut id = 2000;
            while !stop.load(Ordering::SeqCst) {
                id += 1;
                let frac = start.elapsed().as_secs_f64() / total.as_secs_f64();
                let tx = c.unchecked_transaction().unwrap();
                tx.execute("INSERT INTO n(id, pad) VALUES (?1, randomblob(300))", [id])
                    .unwrap();
                if frac > 0.75 && deleted_with.load(Ordering::SeqCst) == 0 {
                    tx.execute(
                        "DELETE FROM n WHERE id BETWEEN ?1 AND ?2",
                        [DEL_FROM, DEL_TO],
                    )
                    .unwrap();
                    deleted_with.store(id, Ordering::SeqCst);
                }
                tx.commit().unwrap();
                last.store(id, Ordering::SeqCst);
                if frac > 0.2 && !checkpointed {
                    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                        .unwrap();
                    checkpointed = true;
                }
                if frac > 0.4 && !vacuumed {
                    c.execute_batch("VACUUM").unwrap();
                    vacuumed = true;
                }
                if frac > 0.6 && !indexed {
                    c.execute_batch("CREATE INDEX n_pad ON n(pad)").unwrap();
                    indexed = true;
                }
                if id % 500 == 0 {
                    c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                        .unwrap();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    // Per run: the last id committed before it started.
    let mut before = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        let t = Instant::now();
        before.push(last.load(Ordering::SeqCst));
        env.run_ok(&["run", "app", "incremental"]);
        if let Some(rest) = Duration::from_secs(1).checked_sub(t.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let deleted_with = deleted_with.load(Ordering::SeqCst);
    assert!(deleted_with > 0, "the writer deleted the range");

    let points = deltas(&dir);
    assert_eq!(points.len(), before.len(), "one point per run");
    let mut prev_max = 0;
    for (i, (p, committed)) in points.iter().zip(&before).enumerate() {
        let got = ids(&restore_point(&env, p, &format!("t{i}.db")));
        let max = *got.last().unwrap();
        assert!(
            max >= *committed,
            "point {i}: max id {max}, but {committed} was committed before the run started"
        );
        assert!(max >= prev_max, "point {i} goes back in time");
        prev_max = max;
        let want: Vec<i64> = (1..=max)
            .filter(|id| max < deleted_with || !(DEL_FROM..=DEL_TO).contains(id))
            .collect();
        assert!(
            got == want,
            "point {i}: not the prefix 1..={max} (deleted with {deleted_with}): {} rows",
            got.len()
        );
    }
    // --at the time of a middle point restores that point.
    let mid = &points[points.len() / 2];
    let to = env.path("at.db");
    let o = env
        .cmd()
        .args([
            "restore",
            "app",
            "--at",
            mid["created_at"].as_str().unwrap(),
            "--to",
        ])
        .arg(&to)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(sha256_hex(&to), mid["image_sha256"].as_str().unwrap());
}

#[test]
fn sigkill_during_an_incremental_leaves_the_chain_valid() {
    let (env, db, dir) = setup("7d", "");
    insert(&db, 1, 20000);
    env.run_ok(&["run", "app", "backup"]);
    let mut next = 20001;
    for delay_ms in [5u64, 30, 60, 120, 250, 400] {
        insert(&db, next, next + 500);
        next += 501;
        let mut child = env
            .std_cmd()
            .args(["run", "app", "incremental"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        env.run_ok(&["run", "app", "incremental"]);
    }
    let points = deltas(&dir);
    assert!(points.len() >= 6, "{} points", points.len());
    for (i, p) in points.iter().enumerate() {
        assert_eq!(p["sequence"].as_u64(), Some(i as u64 + 1), "a linear chain");
        restore_point(&env, p, &format!("k{i}.db"));
    }
    let latest = restore_point(&env, points.last().unwrap(), "latest.db");
    assert_eq!(ids(&latest), ids(&db));
    let leftovers: Vec<String> = crate::util::names(&dir)
        .into_iter()
        .filter(|n| n.contains("litekeeper-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // One index, the newest point's: a killed run's index and the previous ones are gone.
    let pages = names_ending(&dir, ".pages");
    assert_eq!(
        pages,
        vec![format!(
            "{}.pages",
            points.last().unwrap()["file"].as_str().unwrap()
        )]
    );
}

#[test]
fn a_deleted_middle_delta_restores_the_point_before_it_naming_the_missing_file() {
    let (env, db, dir) = setup("7d", "");
    insert(&db, 1, 100);
    env.run_ok(&["run", "app", "backup"]);
    let mut counts = Vec::new();
    for k in 1..=3 {
        insert(&db, k * 1000, k * 1000 + 10);
        env.run_ok(&["run", "app", "incremental"]);
        counts.push(ids(&db).len());
    }
    let points = deltas(&dir);
    let middle = points[1]["file"].as_str().unwrap();
    std::fs::remove_file(dir.join(middle)).unwrap();
    let to = env.path("r.db");
    let o = env
        .cmd()
        .args(["restore", "app", "--at", "latest", "--to"])
        .arg(&to)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(65), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(middle) && err.contains("missing"), "{err}");
    assert!(err.contains(points[0]["file"].as_str().unwrap()), "{err}");
    assert_eq!(sha256_hex(&to), points[0]["image_sha256"].as_str().unwrap());
    assert_eq!(ids(&to).len(), counts[0]);
    // The next run continues from the last good point; the chain is whole again.
    insert(&db, 9000, 9005);
    env.run_ok(&["run", "app", "incremental"]);
    let newest = deltas(&dir).pop().unwrap();
    assert_eq!(newest["prev"], points[0]["file"]);
    let r = restore_point(&env, &newest, "again.db");
    assert_eq!(ids(&r), ids(&db));
}

#[test]
fn retention_keeps_the_base_of_a_kept_chain_and_expires_chains_whole() {
    let (env, db, dir) = setup("1h", "keep = { last = 1, daily = 0 }");
    insert(&db, 1, 100);
    env.run_ok(&["run", "app", "backup"]);
    let first = manifest(&dir)["backups"][0]["file"]
        .as_str()
        .unwrap()
        .to_string();
    insert(&db, 200, 210);
    env.run_ok(&["run", "app", "incremental"]);
    std::thread::sleep(Duration::from_millis(1100));
    env.run_ok(&["run", "app", "backup"]);
    // last = 1 would delete the first full; its chain (kept 1h) keeps it.
    assert!(dir.join(&first).exists());
    let o = env.run_ok(&["backups", "list", "app", "--json"]);
    let list: Value = serde_json::from_slice(&o.stdout).unwrap();
    let entry = list["databases"][0]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["file"] == first.as_str())
        .unwrap()
        .clone();
    assert!(
        entry["kept_by"].to_string().contains("chain-base"),
        "{entry}"
    );
    assert_eq!(list["databases"][0]["points"].as_array().unwrap().len(), 1);
    // With keep = 1s the chain expires: its delta, its index and then its base go.
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        text.replace("keep = \"1h\"", "keep = \"1s\""),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    env.run_ok(&["run", "app", "backup"]);
    let names = crate::util::names(&dir);
    assert!(!names.iter().any(|n| n.contains(".delta")), "{names:?}");
    assert!(!names.contains(&first), "{names:?}");
    assert!(manifest(&dir).get("deltas").is_none());
}

#[test]
fn incremental_config_is_checked_and_the_timer_knows_the_job() {
    let env = TestEnv::new();
    let db = env.sqlite("app.db", "CREATE TABLE n(id INTEGER PRIMARY KEY);");
    let cfg = |inc: &str| {
        env.config("timezone = \"UTC\"")
            .database(
                "app",
                &db,
                &format!(
                    "[database.backup]\ndir = \"{}\"\nincremental = {inc}",
                    env.path("b").display()
                ),
            )
            .write();
    };
    cfg("{ every = \"*/61 * * * *\" }");
    let o = env.cmd().args(["check"]).output().unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    assert!(
        both(&o).contains("backup.incremental.every"),
        "{}",
        both(&o)
    );
    cfg("{ every = \"*/10 * * * *\", keep = \"0s\" }");
    let o = env.cmd().args(["check"]).output().unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    assert!(both(&o).contains("backup.incremental.keep"), "{}", both(&o));
    cfg("{ every = \"*/10 * * * *\", keep = \"2d\" }");
    let out = env.path("units");
    let o = env.systemd_units(&out, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let timer =
        std::fs::read_to_string(out.join("litekeeper-incremental@app.timer.d/schedule.conf"))
            .unwrap();
    assert!(
        timer.contains("incremental schedule \"*/10 * * * *\""),
        "{timer}"
    );
    assert!(
        timer.contains("OnCalendar=*-*-* *:00,10,20,30,40,50:00 UTC\n"),
        "{timer}"
    );
    // Without a full backup there is no chain to add to: refused, naming what to run.
    let o = env
        .cmd()
        .args(["run", "app", "incremental"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(73), "{}", both(&o));
    assert!(
        both(&o).contains("litekeeper run app backup"),
        "{}",
        both(&o)
    );
}

/// `status --check` judges incremental backups' freshness by their own schedule.
#[test]
fn status_check_judges_incremental_freshness_by_its_own_schedule() {
    use litekeeper::domain::{JobKind, Outcome, Report, Trigger};
    let env = TestEnv::new();
    let db = env.sqlite("app.db", "CREATE TABLE n(id INTEGER PRIMARY KEY);");
    env.config("timezone = \"UTC\"")
        .database(
            "app",
            &db,
            &format!(
                "[database.backup]\ndir = \"{}\"\nschedule = \"0 2 * * *\"\nincremental = {{ every = \"*/10 * * * *\" }}",
                env.path("b").display()
            ),
        )
        .write();
    let keep = Duration::from_secs(365 * 86400);
    let state = litekeeper::state::State::open(&env.path("state"), keep).unwrap();
    let record = |job: JobKind, ago: chrono::Duration, n: u32| {
        let finished = chrono::Utc::now() - ago;
        state
            .finish(
                &Report {
                    run_id: format!("r{n}"),
                    database: "app".into(),
                    job,
                    trigger: Trigger::Schedule,
                    started: finished - chrono::Duration::seconds(1),
                    finished,
                    duration_ms: 1000,
                    outcome: Outcome::Ok,
                    summary: "ok".into(),
                    figures: None,
                    error: None,
                    exit: litekeeper::exit::ExitCode::Ok,
                },
                keep,
            )
            .unwrap();
    };
    record(JobKind::Backup, chrono::Duration::hours(3), 1);
    record(JobKind::Incremental, chrono::Duration::hours(3), 2);
    let o = env.cmd().args(["status", "--check"]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(
        out.contains("incremental") && !out.contains("app backup"),
        "{out}"
    );
    record(JobKind::Incremental, chrono::Duration::minutes(2), 3);
    let o = env.cmd().args(["status", "--check"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
}

/// A database with an attached one: each incremental run takes a point of both in one read
/// transaction, dated alike; `restore --at` that time restores both (the attached one beside
/// the main one's `--to`), each with its recorded image SHA-256, each a prefix of the numbered
/// rows a writer committed to both in one transaction per number, one point apart at most
/// (WAL commits of two files are not one atomic step).
#[test]
fn restore_at_restores_the_main_and_each_attached_database_to_one_point() {
    let (env, db, files, dir) = app_with_files("compress = \"zstd\"\n");
    fn write_both(c: &Connection, id: i64) {
        let tx = c.unchecked_transaction().unwrap();
        tx.execute("INSERT INTO n(id, pad) VALUES (?1, randomblob(200))", [id])
            .unwrap();
        tx.execute(
            "INSERT INTO files.f(id, pad) VALUES (?1, randomblob(200))",
            [id],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    fn open(db: &Path, files: &Path) -> Connection {
        let c = Connection::open(db).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.execute("ATTACH ?1 AS files", [files.to_str().unwrap()])
            .unwrap();
        c
    }
    {
        let c = open(&db, &files);
        for id in 1..=300 {
            write_both(&c, id);
        }
    }
    env.run_ok(&["run", "app", "backup"]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, db, files) = (stop.clone(), db.clone(), files.clone());
        std::thread::spawn(move || {
            let c = open(&db, &files);
            let mut id = 300;
            while !stop.load(Ordering::SeqCst) {
                id += 1;
                write_both(&c, id);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(300));
        env.run_ok(&["run", "app", "incremental"]);
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let points = deltas(&dir);
    assert_eq!(points.len(), 8, "a point of each file per run");
    let prefix = |p: &Path, table: &str| {
        let ids = crate::util::query_ids(p, &format!("SELECT id FROM {table} ORDER BY id"));
        assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>(), "{table}");
        ids.len() as i64
    };
    let mut last = 0;
    for (i, pair) in points.chunks(2).enumerate() {
        assert_eq!(
            pair[0]["created_at"], pair[1]["created_at"],
            "one stamp per run"
        );
        let (main, attached) = if pair[0]["series"] == "app" {
            (&pair[0], &pair[1])
        } else {
            (&pair[1], &pair[0])
        };
        assert_eq!(attached["series"], "files");
        let to = env.path(&format!("r{i}.db"));
        let o = env
            .cmd()
            .args(["restore", "app", "--at"])
            .arg(main["created_at"].as_str().unwrap())
            .arg("--to")
            .arg(&to)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", both(&o));
        let to_files = env.path(&format!("r{i}-files.db"));
        assert_eq!(sha256_hex(&to), main["image_sha256"].as_str().unwrap());
        assert_eq!(
            sha256_hex(&to_files),
            attached["image_sha256"].as_str().unwrap()
        );
        assert_eq!(integrity(&to_files), "ok");
        let (m, f) = (prefix(&to, "n"), prefix(&to_files, "f"));
        assert!((m - f).abs() <= 1, "point {i}: main {m} rows, attached {f}");
        assert!(m > last, "point {i} is after the one before");
        last = m;
    }
    // In place: both live files go back to the first point.
    let first = points[0]["created_at"].as_str().unwrap().to_string();
    let want = crate::util::query_ids(&env.path("r0.db"), "SELECT id FROM n ORDER BY id");
    let want_f = crate::util::query_ids(&env.path("r0-files.db"), "SELECT id FROM f ORDER BY id");
    env.run_ok(&["restore", "app", "--at", &first, "--in-place"]);
    assert_eq!(ids(&db), want);
    assert_eq!(
        crate::util::query_ids(&files, "SELECT id FROM f ORDER BY id"),
        want_f
    );
}

/// A chain whose full backup was deleted by hand: `backups list` still shows its points (not
/// restorable) instead of "no backups yet", so the operator sees what is left.
#[test]
fn backups_list_shows_the_points_of_a_chain_whose_full_backup_is_gone() {
    let (env, db, dir) = setup("7d", "keep = { last = 5 }");
    insert(&db, 1, 50);
    env.run_ok(&["run", "app", "backup"]);
    insert(&db, 51, 60);
    env.run_ok(&["run", "app", "incremental"]);
    let delta = manifest(&dir)["deltas"][0]["file"]
        .as_str()
        .unwrap()
        .to_string();
    for f in crate::util::names(&dir) {
        if f.ends_with(".db.zst") {
            std::fs::remove_file(dir.join(f)).unwrap();
        }
    }
    let o = env.cmd().args(["backups", "list", "app"]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(!out.contains("no backups yet"), "{out}");
    assert!(out.contains("no full backup"), "{out}");
    let line = out
        .lines()
        .find(|l| l.contains("#1 "))
        .unwrap_or_else(|| panic!("no point listed: {out}"));
    assert!(line.contains("NOT restorable"), "{line}");
    assert!(std::fs::metadata(dir.join(&delta)).is_ok());
}
