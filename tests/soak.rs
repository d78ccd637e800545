//! Soak: a daemon running prune, vacuum and backup every second on three databases while the
//! application writes to each. RSS, open file descriptors and WAL sizes must not grow, and
//! every run must be recorded. CI runs 30 s; the documented long run is
//! `LITEKEEPER_SOAK_SECS=600 cargo nextest run -E 'test(soak)'`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::util::TestEnv;

fn proc_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn proc_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn wal_len(db: &Path) -> u64 {
    std::fs::metadata(format!("{}-wal", db.display()))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[test]
fn soak_daemon_stays_flat_and_records_every_run() {
    let secs: u64 = std::env::var("LITEKEEPER_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let env = TestEnv::new();
    let names = ["alpha", "beta", "gamma"];
    let mut dbs: Vec<PathBuf> = Vec::new();
    let mut text = env.daemon_section("timezone = \"UTC\"\nmax_concurrent_jobs = 2");
    for name in names {
        let db = env.sqlite(
            &format!("app/{name}.db"),
            "PRAGMA journal_mode=WAL;
             CREATE TABLE ev(id INTEGER PRIMARY KEY, ts INTEGER, body BLOB);
             WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 5000)
             INSERT INTO ev SELECT x, 0, randomblob(200) FROM i;",
        );
        text.push_str(&TestEnv::database_section(
            name,
            &db,
            &format!(
                "[database.prune]\nschedule = \"* * * * * *\"\nmax_fraction = 1.0\npause = \"5ms\"\n\
                 [[database.prune.rule]]\ntable = \"ev\"\nwhere = \"ts < unixepoch() - 3\"\n\
                 [database.vacuum]\nschedule = \"* * * * * *\"\nmin_free = \"30%\"\n\
                 [database.backup]\nschedule = \"* * * * * *\"\ndir = \"{}\"\nkeep = {{ last = 3 }}\n",
                env.path(&format!("backups/{name}")).display()
            ),
        ));
        dbs.push(db);
    }
    env.write_config(&text);

    // The application: one writer per database, ~100 commits/s each.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = dbs
        .iter()
        .map(|db| {
            let (stop, db) = (stop.clone(), db.clone());
            std::thread::spawn(move || {
                let c = Connection::open(&db).unwrap();
                c.busy_timeout(Duration::from_secs(10)).unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    c.execute(
                        "INSERT INTO ev(ts, body) VALUES (unixepoch(), randomblob(200))",
                        [],
                    )
                    .unwrap();
                    n += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                n
            })
        })
        .collect();

    let mut child = env
        .std_cmd()
        .arg("daemon")
        .stdout(Stdio::null())
        // A file, not a pipe: an undrained pipe would block the daemon's logging.
        .stderr(std::fs::File::create(env.path("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let start = Instant::now();
    let warm = Duration::from_secs((secs / 3).max(5));
    let mut samples: Vec<(Duration, u64, usize, u64)> = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(500));
        let wal = dbs.iter().map(|d| wal_len(d)).max().unwrap_or(0);
        samples.push((start.elapsed(), proc_rss_kib(pid), proc_fds(pid), wal));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the daemon exited during the soak"
        );
    }
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let commits: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    let log = std::fs::read_to_string(env.path("daemon.log")).unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        &log[log.len().saturating_sub(4000)..]
    );

    let after_warm: Vec<_> = samples.iter().filter(|s| s.0 >= warm).collect();
    let first = after_warm.first().expect("samples after warm-up");
    let peak_rss = after_warm.iter().map(|s| s.1).max().unwrap();
    // A leak raises the floor: the fewest fds over the last few samples against the fewest
    // over the first few (one sample can land in the middle of a job with its files open).
    let floor = |s: &[&(Duration, u64, usize, u64)]| s.iter().map(|s| s.2).min().unwrap();
    let k = after_warm.len().min(5);
    let first_floor = floor(&after_warm[..k]);
    let last_fds = floor(&after_warm[after_warm.len() - k..]);
    let peak_fds = after_warm.iter().map(|s| s.2).max().unwrap();
    let peak_wal = samples.iter().map(|s| s.3).max().unwrap();
    eprintln!(
        "soak {secs}s: RSS {} -> peak {} KiB, fds {} -> peak {peak_fds}, peak WAL {} KiB, app commits {commits}",
        first.1,
        peak_rss,
        first.2,
        peak_wal / 1024
    );
    // No growth after warm-up: a leak of even 100 KiB per run would show over the runs here.
    assert!(
        peak_rss <= first.1 + 8 * 1024,
        "RSS grew: {} -> {peak_rss} KiB",
        first.1
    );
    // The peak is what running jobs hold at once: a job holds the database's files (main,
    // -wal, -shm), its lock, the backup directory's lock, its flocked temp file and directory
    // handles, about 8; on a loaded machine all three databases' jobs can overlap. A leak shows
    // in the floor, checked next.
    assert!(
        peak_fds <= first.2 + 3 * 8,
        "fds grew: {} -> {peak_fds}",
        first.2
    );
    assert!(
        last_fds <= first_floor + 2,
        "fds at the end {last_fds} vs {first_floor} after warm-up (fewest of {k} samples each)"
    );
    assert!(peak_wal < 16 * 1024 * 1024, "WAL grew to {peak_wal} bytes");

    // Every run recorded, and finished (the stop waits for running jobs).
    let c = Connection::open(env.path("state/state.db")).unwrap();
    let unfinished: i64 = c
        .query_row(
            "SELECT count(*) FROM runs WHERE finished_at IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(unfinished, 0);
    let mut st = c
        .prepare("SELECT database, job, outcome, count(*), avg(finished_at - started_at), max(finished_at - started_at) FROM runs GROUP BY 1, 2, 3")
        .unwrap();
    let rows = st
        .query_map([], |r| {
            Ok(format!(
                "{} {} {}: {} runs, avg {:.0} ms, max {} ms",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, f64>(4)?,
                r.get::<_, i64>(5)?
            ))
        })
        .unwrap();
    for r in rows {
        eprintln!("  {}", r.unwrap());
    }
    for name in names {
        for job in ["prune", "vacuum", "backup"] {
            let (n, bad): (i64, i64) = c
                .query_row(
                    "SELECT count(*), count(*) FILTER (WHERE outcome NOT IN ('ok','skipped')
                       AND NOT (error LIKE 'cancelled%'))
                     FROM runs WHERE database = ?1 AND job = ?2",
                    [name, job],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            assert!(
                n as u64 >= secs / 4,
                "{name} {job}: only {n} runs in {secs}s"
            );
            assert_eq!(bad, 0, "{name} {job}: failed runs");
        }
        let ok: String = Connection::open(env.path(&format!("app/{name}.db")))
            .unwrap()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }
}
