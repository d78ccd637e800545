//! `daemon.metrics_file`: the Prometheus textfile written after every run, parsed here with a
//! small text-format parser and compared with what really happened (rows, files, sizes, times).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use chrono::Utc;
use rusqlite::Connection;

use crate::util::{backup_into, both, sidecar, TestEnv};

/// Every family litekeeper writes; each must have HELP and TYPE lines in every file.
const FAMILIES: &[(&str, &str)] = &[
    ("litekeeper_last_run_timestamp_seconds", "gauge"),
    ("litekeeper_last_success_timestamp_seconds", "gauge"),
    ("litekeeper_last_duration_seconds", "gauge"),
    ("litekeeper_last_outcome", "gauge"),
    ("litekeeper_runs_total", "counter"),
    ("litekeeper_last_prune_deleted_rows", "gauge"),
    ("litekeeper_last_prune_deleted_files", "gauge"),
    ("litekeeper_last_prune_freed_bytes", "gauge"),
    ("litekeeper_last_backup_timestamp_seconds", "gauge"),
    ("litekeeper_last_backup_size_bytes", "gauge"),
    ("litekeeper_database_size_bytes", "gauge"),
    ("litekeeper_wal_size_bytes", "gauge"),
];

/// A parsed textfile: families (HELP, TYPE) and samples.
#[derive(Debug, Default)]
struct Metrics {
    help: BTreeMap<String, String>,
    kind: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

/// Parse Prometheus text format 0.0.4 strictly enough to catch a broken file: every line is a
/// HELP, a TYPE or a sample `name{k="v",…} value`; a family's lines are contiguous, its HELP
/// and TYPE come before its samples, and no series appears twice.
fn parse(text: &str) -> Metrics {
    assert!(text.ends_with('\n'), "the file ends with a newline");
    let mut m = Metrics::default();
    let mut seen_families: Vec<String> = Vec::new();
    let mut series = std::collections::BTreeSet::new();
    let mut current = String::new();
    for line in text.lines() {
        let family = if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect(line);
            assert!(m.help.insert(name.into(), help.into()).is_none(), "{line}");
            name.to_string()
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect(line);
            assert!(m.help.contains_key(name), "TYPE before HELP: {line}");
            assert!(
                ["counter", "gauge", "untyped", "histogram", "summary"].contains(&kind),
                "{line}"
            );
            assert!(m.kind.insert(name.into(), kind.into()).is_none(), "{line}");
            name.to_string()
        } else {
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "stray line {line:?}"
            );
            let (name, labels, value) = parse_sample(line);
            assert!(m.kind.contains_key(&name), "sample before its TYPE: {line}");
            assert!(
                series.insert((name.clone(), labels.clone())),
                "series twice: {line}"
            );
            m.samples.push((name.clone(), labels, value));
            name
        };
        assert!(
            family
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{family}"
        );
        if family != current {
            assert!(
                !seen_families.contains(&family),
                "family {family} is not contiguous"
            );
            seen_families.push(family.clone());
            current = family;
        }
    }
    m
}

fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let mut labels = BTreeMap::new();
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => {
            let (n, v) = line.split_once(' ').expect(line);
            return (n.into(), labels, v.parse().expect(line));
        }
    };
    let mut chars = rest.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "{line}");
        let mut value = String::new();
        loop {
            match chars.next().expect(line) {
                '\\' => match chars.next().expect(line) {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        assert!(labels.insert(key, value).is_none(), "{line}");
        match chars.next() {
            Some(',') => continue,
            Some('}') => break,
            other => panic!("{line}: unexpected {other:?}"),
        }
    }
    let rest: String = chars.collect();
    let value = rest.strip_prefix(' ').expect(line);
    (name.into(), labels, value.parse().expect(line))
}

impl Metrics {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| *v)
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in {:#?}", self.samples))
    }

    fn job(&self, name: &str, db: &str, job: &str) -> f64 {
        self.value(name, &[("database", db), ("job", job)])
    }

    /// `litekeeper_runs_total` of one database, job and outcome.
    fn runs_total(&self, db: &str, job: &str, outcome: &str) -> f64 {
        self.outcome("litekeeper_runs_total", db, job, outcome)
    }

    fn outcome(&self, name: &str, db: &str, job: &str, outcome: &str) -> f64 {
        self.value(
            name,
            &[("database", db), ("job", job), ("outcome", outcome)],
        )
    }

    /// Every family has HELP and TYPE, with the documented type.
    fn assert_families(&self) {
        for (name, kind) in FAMILIES {
            assert!(self.help.contains_key(*name), "no HELP for {name}");
            assert_eq!(
                self.kind.get(*name).map(String::as_str),
                Some(*kind),
                "{name}"
            );
        }
    }

    /// The one outcome set to 1 for this job, all others 0.
    fn last_outcome(&self, db: &str, job: &str) -> String {
        let ones: Vec<&str> = ["ok", "failed", "skipped", "dry-run"]
            .into_iter()
            .filter(|o| {
                let v = self.outcome("litekeeper_last_outcome", db, job, o);
                assert!(v == 0.0 || v == 1.0, "{v}");
                v == 1.0
            })
            .collect();
        assert_eq!(ones.len(), 1, "{ones:?}");
        ones[0].to_string()
    }
}

fn prom_path(env: &TestEnv) -> PathBuf {
    env.path("prom/litekeeper.prom")
}

fn read_metrics(env: &TestEnv) -> Metrics {
    let text = std::fs::read_to_string(prom_path(env)).unwrap();
    let m = parse(&text);
    m.assert_families();
    m
}

fn now_s() -> f64 {
    Utc::now().timestamp_millis() as f64 / 1000.0
}

/// `chat` with 10 rows older than a day and 15 recent ones, an uploads dir with 3 orphaned
/// files (of 7); prune (age rule + files rule), vacuum and backup sections; metrics into prom/.
fn setup(env: &TestEnv, daemon_extra: &str) -> PathBuf {
    let now = Utc::now().timestamp();
    let db = env.sqlite(
        "app/chat.db",
        &format!(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE chat(id INTEGER PRIMARY KEY, body TEXT, updated_at INTEGER);
             CREATE TABLE file(id TEXT PRIMARY KEY);
             INSERT INTO file VALUES ('keep1'), ('keep2'), ('keep3'), ('keep4');
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 25)
             INSERT INTO chat(body, updated_at)
               SELECT hex(randomblob(200)), CASE WHEN i <= 10 THEN {old} ELSE {now} END FROM n;",
            old = now - 10 * 86400
        ),
    );
    let uploads = env.path("app/uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    let files = [
        ("keep1", 10),
        ("keep2", 10),
        ("keep3", 10),
        ("keep4", 10),
        ("gone1", 100),
        ("gone2", 200),
        ("gone3", 300),
    ];
    for (name, len) in files {
        let p = uploads.join(format!("{name}.bin"));
        std::fs::write(&p, vec![b'x'; len]).unwrap();
        // Old enough for min_age.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 86400);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    std::fs::create_dir_all(env.path("prom")).unwrap();
    env.config(&format!(
            "metrics_file = \"{}\"\n{daemon_extra}",
            prom_path(env).display()
        )).database("chat", &db, &format!(
                "[database.backup]\nschedule = \"0 2 * * *\"\ndir = \"{backups}\"\n\
                 [database.vacuum]\n\
                 [database.prune]\n\
                 [[database.prune.rule]]\ntable = \"chat\"\ncolumn = \"updated_at\"\nolder_than = \"1d\"\n\
                 [[database.prune.files]]\ndir = \"{uploads}\"\npattern = '^(?P<id>[a-z0-9]+)\\.bin$'\n\
                 referenced_by = \"SELECT id FROM file\"\naction = \"delete\"\n",
                backups = env.path("backups").display(),
                uploads = uploads.display(),
            )).write();
    db
}

fn run(env: &TestEnv, db: &str, job: &str) -> std::process::Output {
    env.cmd().args(["run", db, job]).output().unwrap()
}

fn run_ok(env: &TestEnv, db: &str, job: &str) {
    let o = run(env, db, job);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
}

/// A database `chat` backed up with `metrics_file = FILE`: one backup, which must exit 0; its
/// output and stderr.
fn backup_with_metrics_file(env: &TestEnv, file: &Path) -> (std::process::Output, String) {
    let db = env.sqlite("app/chat.db", "CREATE TABLE t(x);");
    env.config(&format!("metrics_file = \"{}\"", file.display()))
        .database("chat", &db, &backup_into(&env.path("backups")))
        .write();
    let o = run(env, "chat", "backup");
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    (o, err)
}

fn rows(db: &Path) -> i64 {
    let c = Connection::open(db).unwrap();
    c.query_row("SELECT count(*) FROM chat", [], |r| r.get(0))
        .unwrap()
}

fn len(p: &Path) -> f64 {
    std::fs::metadata(p).map(|m| m.len() as f64).unwrap_or(0.0)
}

fn wal(p: &Path) -> PathBuf {
    sidecar(p, "-wal")
}

#[test]
fn metrics_after_real_runs_match_what_happened() {
    let env = TestEnv::new();
    let db = setup(&env, "");
    let rows_before = rows(&db);
    let before = now_s();
    run_ok(&env, "chat", "prune");
    run_ok(&env, "chat", "vacuum");
    // Last, the backup: it only reads, so the files are as they were when it wrote the
    // metrics (a run that wrote to the WAL sees it checkpointed when its connections close).
    run_ok(&env, "chat", "backup");
    let after = now_s();
    let m = read_metrics(&env);
    // Before anything opens the database again (closing a WAL database checkpoints it).
    let (db_len, wal_len) = (len(&db), len(&wal(&db)));

    for job in ["backup", "prune", "vacuum"] {
        for name in [
            "litekeeper_last_run_timestamp_seconds",
            "litekeeper_last_success_timestamp_seconds",
        ] {
            let t = m.job(name, "chat", job);
            assert!(
                (before..=after).contains(&t),
                "{name} {job}: {before} <= {t} <= {after}"
            );
        }
        let d = m.job("litekeeper_last_duration_seconds", "chat", job);
        assert!(d >= 0.0 && d <= after - before, "{job}: {d}");
        assert_eq!(m.runs_total("chat", job, "failed"), 0.0);
    }
    assert_eq!(m.last_outcome("chat", "backup"), "ok");
    assert_eq!(m.last_outcome("chat", "prune"), "ok");
    // Nothing worth vacuuming: skipped, and still a success.
    assert_eq!(m.last_outcome("chat", "vacuum"), "skipped");
    assert_eq!(m.runs_total("chat", "backup", "ok"), 1.0);
    assert_eq!(m.runs_total("chat", "vacuum", "skipped"), 1.0);

    // Prune figures are the real counts.
    let deleted = rows_before - rows(&db);
    assert_eq!(deleted, 10);
    let d = [("database", "chat")];
    assert_eq!(
        m.value("litekeeper_last_prune_deleted_rows", &d),
        deleted as f64
    );
    assert_eq!(m.value("litekeeper_last_prune_deleted_files", &d), 3.0);
    assert_eq!(m.value("litekeeper_last_prune_freed_bytes", &d), 600.0);
    let mut left: Vec<String> = std::fs::read_dir(env.path("app/uploads"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["keep1.bin", "keep2.bin", "keep3.bin", "keep4.bin"]);

    // Backup: its time, and the size of the file it wrote.
    let backups: Vec<PathBuf> = std::fs::read_dir(env.path("backups"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "db"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(
        m.value("litekeeper_last_backup_size_bytes", &d),
        len(&backups[0])
    );
    let t = m.value("litekeeper_last_backup_timestamp_seconds", &d);
    assert_eq!(
        t,
        m.job(
            "litekeeper_last_success_timestamp_seconds",
            "chat",
            "backup"
        )
    );

    // Database and WAL sizes: a stat at write time.
    let main = [("database", "chat"), ("schema", "main")];
    assert_eq!(m.value("litekeeper_database_size_bytes", &main), db_len);
    assert_eq!(m.value("litekeeper_wal_size_bytes", &main), wal_len);

    // 0644 whatever the umask, and no temporary file left beside it.
    let meta = std::fs::metadata(prom_path(&env)).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    let names: Vec<String> = std::fs::read_dir(env.path("prom"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["litekeeper.prom"]);
}

#[test]
fn a_failing_run_moves_last_run_but_not_last_success() {
    let env = TestEnv::new();
    let db = setup(&env, "");
    run_ok(&env, "chat", "backup");
    let first = read_metrics(&env);
    let ok_at = first.job(
        "litekeeper_last_success_timestamp_seconds",
        "chat",
        "backup",
    );

    std::fs::rename(&db, env.path("app/elsewhere.db")).unwrap();
    let before = now_s();
    let o = run(&env, "chat", "backup");
    assert_eq!(o.status.code(), Some(66), "{}", both(&o));
    let after = now_s();
    let m = read_metrics(&env);
    let last = m.job("litekeeper_last_run_timestamp_seconds", "chat", "backup");
    assert!(
        (before..=after).contains(&last),
        "{before} <= {last} <= {after}"
    );
    assert_eq!(
        m.job(
            "litekeeper_last_success_timestamp_seconds",
            "chat",
            "backup"
        ),
        ok_at
    );
    assert_eq!(
        m.value(
            "litekeeper_last_backup_timestamp_seconds",
            &[("database", "chat")]
        ),
        ok_at
    );
    assert_eq!(m.last_outcome("chat", "backup"), "failed");
    assert_eq!(m.runs_total("chat", "backup", "ok"), 1.0);
    assert_eq!(m.runs_total("chat", "backup", "failed"), 1.0);
    // The database file is gone: no size sample for it.
    assert_eq!(
        m.get(
            "litekeeper_database_size_bytes",
            &[("database", "chat"), ("schema", "main")]
        ),
        None
    );
    // Jobs that never ran have counters at 0 and no last_* samples.
    assert_eq!(m.runs_total("chat", "prune", "ok"), 0.0);
    assert_eq!(
        m.get(
            "litekeeper_last_run_timestamp_seconds",
            &[("database", "chat"), ("job", "prune")]
        ),
        None
    );
}

#[test]
fn runs_total_never_goes_down_when_history_is_pruned() {
    let env = TestEnv::new();
    setup(&env, "keep_history = \"1s\"");
    run_ok(&env, "chat", "backup");
    std::thread::sleep(std::time::Duration::from_millis(1200));
    run_ok(&env, "chat", "backup");
    let c = Connection::open(env.path("state/state.db")).unwrap();
    let kept: i64 = c
        .query_row("SELECT count(*) FROM runs WHERE job = 'backup'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(kept, 1, "the first run left the history");
    let m = read_metrics(&env);
    assert_eq!(m.runs_total("chat", "backup", "ok"), 2.0);
}

#[test]
fn concurrent_runs_on_different_databases_leave_a_complete_file() {
    let env = TestEnv::new();
    let mut config =
        env.daemon_section(&format!("metrics_file = \"{}\"", prom_path(&env).display()));
    let names = ["a", "b", "c"];
    for name in names {
        let db = env.sqlite(
            &format!("app/{name}.db"),
            "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);",
        );
        config.push_str(&TestEnv::database_section(
            name,
            &db,
            &format!(
                "[database.backup]\ndir = \"{}\"",
                env.path(&format!("backups/{name}")).display()
            ),
        ));
    }
    std::fs::create_dir_all(env.path("prom")).unwrap();
    env.write_config(&config);
    // The state DB exists before the first concurrent round (creating it from two processes
    // at once is state.rs's business, not this test's).
    litekeeper::state::State::open(&env.path("state"), std::time::Duration::from_secs(86400))
        .unwrap();
    let rounds = 4;
    for round in 1..=rounds {
        let children: Vec<_> = names
            .iter()
            .map(|n| {
                env.std_cmd()
                    .args(["run", n, "backup"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let o = child.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        // Whoever wrote last saw every run: all databases, all rounds so far.
        let m = read_metrics(&env);
        for n in names {
            assert_eq!(
                m.runs_total(n, "backup", "ok"),
                round as f64,
                "round {round}, database {n}"
            );
            assert_eq!(m.last_outcome(n, "backup"), "ok");
        }
    }
}

#[test]
fn an_unwritable_metrics_file_is_a_warning_not_a_failure() {
    let env = TestEnv::new();
    let missing = env.path("no-such-dir/litekeeper.prom");
    let (o, err) = backup_with_metrics_file(&env, &missing);
    assert!(
        err.contains("WARN")
            && err.contains("could not update the metrics")
            && err.contains("no-such-dir"),
        "{}",
        both(&o)
    );
    assert!(!missing.exists());
}

#[test]
fn metrics_file_must_be_an_absolute_file_path() {
    for (value, why) in [
        ("metrics/litekeeper.prom", "absolute path"),
        ("/var/lib/prometheus/", "path of a file"),
    ] {
        let env = TestEnv::new();
        env.write_config(&env.daemon_section(&format!("metrics_file = \"{value}\"")));
        let o = env.cmd().arg("status").output().unwrap();
        assert_eq!(o.status.code(), Some(78), "{}", both(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("daemon.metrics_file") && err.contains(why),
            "{}",
            both(&o)
        );
    }
}

#[test]
fn writers_wait_for_the_metrics_lock_then_write_what_the_state_db_holds() {
    let env = TestEnv::new();
    setup(&env, "");
    std::fs::create_dir_all(env.path("locks")).unwrap();
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(env.path("locks/metrics.prom.lock"))
        .unwrap();
    lock.lock().unwrap();
    let mut run = env.spawn(&["run", "chat", "backup"], &[]);
    run.wait_until(
        "the run recorded",
        std::time::Duration::from_secs(20),
        || env.count_runs("finished_at IS NOT NULL", []) > 0,
    );
    // Recorded, but the metrics writer waits for the lock.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(run.alive(), "run ended without the metrics lock");
    assert!(!prom_path(&env).exists());
    lock.unlock().unwrap();
    assert!(run.child().wait().unwrap().success());
    let m = read_metrics(&env);
    assert_eq!(m.last_outcome("chat", "backup"), "ok");
}

/// The metrics file's directory replaced by a symlink (to a directory the writer may write,
/// e.g. /etc as root): nothing is written through it, the run succeeds with a warning that
/// names the link. The directory is opened once, without following a link, and the file is
/// written and renamed inside that very directory.
#[test]
fn metrics_are_never_written_through_a_symlinked_directory() {
    let env = TestEnv::new();
    let target = env.path("victim");
    std::fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&target, env.path("prom")).unwrap();
    let (o, err) = backup_with_metrics_file(&env, &prom_path(&env));
    assert!(
        err.contains("WARN")
            && err.contains(&env.path("prom").display().to_string())
            && err.contains("symlink"),
        "{}",
        both(&o)
    );
    let written: Vec<_> = std::fs::read_dir(&target).unwrap().flatten().collect();
    assert!(
        written.is_empty(),
        "written through the link: {:?}",
        written.iter().map(|e| e.file_name()).collect::<Vec<_>>()
    );
}
