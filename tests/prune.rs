//! The prune job on real databases and directories: each rule kind deletes exactly the rows a
//! query written here independently selects, cascades complete in one run, files rules spare
//! young, referenced and symlinked entries, quarantine moves then expires, dry runs change
//! nothing, the guards refuse, and a killed prune leaves only whole batches.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rusqlite::Connection;

use crate::util::{both, query_i64, query_ids, set_age, unix_now, TestEnv, DAY};

pub(crate) fn config(env: &TestEnv, db: &Path, attach: Option<&Path>, prune: &str) {
    let attach = attach
        .map(|p| format!("attach = {{ files = \"{}\" }}\n", p.display()))
        .unwrap_or_default();
    env.write_config(&format!(
        "{}[[database]]\nname = \"chat\"\npath = \"{}\"\n{attach}[database.prune]\npause = \"0s\"\n{prune}\n",
        env.daemon_section("timezone = \"UTC\""),
        db.display()
    ));
}

pub(crate) fn run_prune(env: &TestEnv, extra: &[&str]) -> std::process::Output {
    env.cmd()
        .args(["run", "chat", "prune"])
        .args(extra)
        .output()
        .unwrap()
}

/// `run chat prune EXTRA`, which must exit with `code`.
pub(crate) fn prune_code(env: &TestEnv, extra: &[&str], code: i32) -> std::process::Output {
    let o = run_prune(env, extra);
    assert_eq!(o.status.code(), Some(code), "{}", both(&o));
    o
}

/// A new test directory with [`chat_app`], configured by [`config`] with `prune` (the blob
/// DB attached as `files` when `attach`).
fn configured_chat_app(attach: bool, prune: &str) -> (TestEnv, PathBuf, PathBuf) {
    let env = TestEnv::new();
    let (db, blobs) = chat_app(&env);
    config(&env, &db, attach.then_some(blobs.as_path()), prune);
    (env, db, blobs)
}

/// The configuration of `chat` at `db` with the default `[daemon]`; `prune`: the lines after
/// `[database.prune]` (settings, then rules and any later section).
pub(crate) fn write_prune_config(env: &TestEnv, db: &Path, prune: &str) {
    env.write_config(&format!(
        "{}[[database]]\nname = \"chat\"\npath = \"{}\"\n[database.prune]\n{prune}",
        env.daemon_section(""),
        db.display()
    ));
}

/// A chat-app main DB: chats with ages and flags, messages, and an attached blob DB.
fn chat_app(env: &TestEnv) -> (PathBuf, PathBuf) {
    let n = unix_now();
    let main = env.sqlite(
        "app/chat.db",
        &format!(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE chat(id TEXT PRIMARY KEY, updated_at INTEGER, updated_ms INTEGER,
                               updated_iso TEXT, updated_jd REAL, archived INTEGER, pinned INTEGER);
             CREATE TABLE message(id TEXT PRIMARY KEY, chat_id TEXT, body TEXT);
             WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 400)
             INSERT INTO chat SELECT 'c' || x, {n} - x * {DAY}, ({n} - x * {DAY}) * 1000,
                    strftime('%Y-%m-%dT%H:%M:%SZ', {n} - x * {DAY}, 'unixepoch'),
                    julianday({n} - x * {DAY}, 'unixepoch'),
                    x % 7 = 0, x % 11 = 0 FROM i;
             WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 2400)
             INSERT INTO message SELECT 'm' || x, 'c' || (x % 460 + 1), 'hello' FROM i;"
        ),
    );
    let blobs = env.sqlite(
        "app/files.db",
        "PRAGMA journal_mode=WAL;
         CREATE TABLE blob(key TEXT PRIMARY KEY, data BLOB) WITHOUT ROWID;
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 2600)
         INSERT INTO blob SELECT 'm' || x || '/' || (x % 3), randomblob(50) FROM i;
         INSERT INTO blob VALUES ('m5/0.thumb', x'00'), ('no-slash', x'00');",
    );
    (main, blobs)
}

#[test]
fn age_rules_in_every_time_format_delete_exactly_the_old_rows() {
    for (column, format) in [
        ("updated_at", "unix"),
        ("updated_ms", "unix_ms"),
        ("updated_iso", "iso8601"),
        ("updated_jd", "julian"),
    ] {
        let (env, db, _) = configured_chat_app(
            false,
            &format!(
                "max_fraction = 1.0\n[[database.prune.rule]]\ntable = \"chat\"\ncolumn = \"{column}\"\nolder_than = \"2388h\"\ntime_format = \"{format}\"\nwhere = \"archived = 0 AND pinned = 0\""
            ),
        );
        // 99.5 days: no row sits within hours of the cutoff. Independent: by the unix column.
        let cutoff = unix_now() - 2388 * 3600;
        let expect_left = query_ids(
            &db,
            &format!("SELECT rowid FROM chat WHERE NOT (updated_at < {cutoff} AND archived = 0 AND pinned = 0) ORDER BY rowid"),
        );
        let o = run_prune(&env, &[]);
        assert_eq!(o.status.code(), Some(0), "{format}: {}", both(&o));
        let left = query_ids(&db, "SELECT rowid FROM chat ORDER BY rowid");
        assert_eq!(left, expect_left, "{format}");
        assert!(
            left.len() < 400 && left.len() > 100,
            "{format}: {}",
            left.len()
        );
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            stdout.contains(&format!("deleted {} rows", 400 - left.len())),
            "{format}: {stdout}"
        );
    }
}

#[test]
fn where_and_orphan_rules_cascade_across_attached_databases_in_one_run() {
    let (env, db, blobs) = configured_chat_app(
        true,
        "max_fraction = 1.0
[[database.prune.rule]]
table = \"chat\"
where = \"archived = 1 AND pinned = 0\"
[[database.prune.rule]]
table = \"message\"
key = \"chat_id\"
parent = \"chat.id\"
[[database.prune.rule]]
table = \"files.blob\"
key = \"substr(key, 1, instr(key, '/') - 1)\"
parent = \"message.id\"",
    );
    let c = Connection::open(&db).unwrap();
    c.execute("ATTACH ?1 AS files", [blobs.to_str().unwrap()])
        .unwrap();
    let count = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
    let chats_left = count("SELECT count(*) FROM chat WHERE NOT (archived = 1 AND pinned = 0)");
    // Messages whose chat survives; blobs whose message survives (keys without '/' give ''
    // and '' is no message id, so they go too; NULL keys would stay).
    let messages_left = count(
        "SELECT count(*) FROM message WHERE chat_id IN (SELECT id FROM chat WHERE NOT (archived = 1 AND pinned = 0))",
    );
    let blobs_left = count(
        "SELECT count(*) FROM files.blob WHERE substr(key, 1, instr(key, '/') - 1) IN
           (SELECT id FROM message WHERE chat_id IN (SELECT id FROM chat WHERE NOT (archived = 1 AND pinned = 0)))",
    );
    assert!(blobs_left > 100 && messages_left > 100);
    prune_code(&env, &[], 0);
    assert_eq!(count("SELECT count(*) FROM chat"), chats_left);
    assert_eq!(count("SELECT count(*) FROM message"), messages_left);
    assert_eq!(count("SELECT count(*) FROM files.blob"), blobs_left);
    // The thumbnail of a surviving message survives with it.
    let m5_alive = count("SELECT count(*) FROM message WHERE id = 'm5'");
    assert_eq!(
        count("SELECT count(*) FROM files.blob WHERE key = 'm5/0.thumb'"),
        m5_alive
    );
    for db in [&db, &blobs] {
        assert_eq!(
            Connection::open(db)
                .unwrap()
                .query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
                .unwrap(),
            "ok"
        );
    }
    // A second run finds nothing more: the cascade completed in one run.
    let o = run_prune(&env, &[]);
    crate::util::assert_stdout_has(&o, "deleted 0 rows");
}

#[test]
fn dry_run_changes_nothing_and_shows_counts_and_samples() {
    let env = TestEnv::new();
    let (db, blobs) = chat_app(&env);
    let uploads = env.path("uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    std::fs::write(uploads.join("c1_a.txt"), "x").unwrap();
    std::fs::write(uploads.join("zzz_orphan.txt"), "xyz").unwrap();
    config(
        &env,
        &db,
        Some(&blobs),
        &format!(
            "max_fraction = 1.0
[[database.prune.rule]]
table = \"chat\"
where = \"archived = 1\"
[[database.prune.files]]
dir = \"{}\"
pattern = '^(?P<id>[a-z0-9]+)_'
referenced_by = \"SELECT id FROM chat\"
min_age = \"0s\"",
            uploads.display()
        ),
    );
    // Checkpoint so the file bytes are the whole state, then compare bytes after.
    Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    let before = std::fs::read(&db).unwrap();
    let listing = |d: &Path| {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let files_before = listing(&uploads);
    let o = prune_code(&env, &["--dry-run"], 0);
    let out = String::from_utf8_lossy(&o.stdout);
    let archived = query_i64(&db, "SELECT count(*) FROM chat WHERE archived = 1");
    assert!(
        out.contains(&format!("would delete {archived} rows and 1 files (3 B)")),
        "{out}"
    );
    assert!(out.contains("(e.g. 7, 14, 21, 28, 35)"), "{out}");
    assert!(out.contains("zzz_orphan.txt"), "{out}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "dry run changed the DB"
    );
    assert_eq!(listing(&uploads), files_before, "dry run changed the files");
    // dry_run = true in the config does the same without the flag.
    let cfg = std::fs::read_to_string(env.config_path())
        .unwrap()
        .replace("max_fraction = 1.0", "max_fraction = 1.0\ndry_run = true");
    std::fs::write(env.config_path(), cfg).unwrap();
    let o = prune_code(&env, &[], 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("dry run"));
    assert_eq!(query_i64(&db, "SELECT count(*) FROM chat"), 400);
}

#[test]
fn max_fraction_and_missing_columns_refuse_before_deleting() {
    let (env, db, _) = configured_chat_app(
        false,
        "[[database.prune.rule]]\ntable = \"chat\"\nwhere = \"archived = 0\"",
    );
    // The guard refuses the rule: skipped with a warning, the run itself is ok (issue 13).
    let o = prune_code(&env, &[], 0);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("more than max_fraction 50%") && err.contains("rule[0]"),
        "{}",
        both(&o)
    );
    crate::util::assert_stdout_has(&o, "refused by a guard: rule[0]");
    assert_eq!(query_i64(&db, "SELECT count(*) FROM chat"), 400);

    // A rule naming a missing column: exit 78 with the config line of the key.
    write_prune_config(
        &env,
        &db,
        "[[database.prune.rule]]\ntable = \"chat\"\ncolumn = \"created\"\nolder_than = \"1d\"\n",
    );
    let line = std::fs::read_to_string(env.config_path())
        .unwrap()
        .lines()
        .position(|l| l.starts_with("column = "))
        .unwrap()
        + 1;
    let o = prune_code(&env, &[], 78);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("litekeeper.toml:{line}:"))
            && err.contains("no column \"created\" in chat"),
        "{}",
        both(&o)
    );
    // A `where` with a second statement is refused, nothing runs.
    write_prune_config(
        &env,
        &db,
        "[[database.prune.rule]]\ntable = \"chat\"\nwhere = \"1; DROP TABLE chat\"\n",
    );
    prune_code(&env, &[], 78);
    assert_eq!(query_i64(&db, "SELECT count(*) FROM chat"), 400);
}

#[test]
fn max_rows_caps_one_run_and_without_rowid_tables_batch_on_their_key() {
    let (env, _db, blobs) = configured_chat_app(
        true,
        "max_fraction = 1.0\nmax_rows = 1000\n[[database.prune.rule]]\ntable = \"files.blob\"\nwhere = \"length(data) > 10\"",
    );
    let o = prune_code(&env, &[], 0);
    crate::util::assert_stdout_has(&o, "stopped at max_rows = 1000");
    assert_eq!(query_i64(&blobs, "SELECT count(*) FROM blob"), 2602 - 1000);
    // Deleted in key order: the survivors are the largest keys.
    let smallest_left: String = Connection::open(&blobs)
        .unwrap()
        .query_row(
            "SELECT min(key) FROM blob WHERE length(data) > 10",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let deleted_below: i64 = query_i64(
        &blobs,
        &format!("SELECT count(*) FROM blob WHERE key < '{smallest_left}' AND length(data) > 10"),
    );
    assert_eq!(deleted_below, 0);
    prune_code(&env, &[], 0);
    prune_code(&env, &[], 0);
    assert_eq!(query_i64(&blobs, "SELECT count(*) FROM blob"), 2);
}

#[test]
fn files_rule_spares_young_referenced_and_symlinked_entries() {
    let env = TestEnv::new();
    let (db, _) = chat_app(&env);
    let uploads = env.path("uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    let outside = env.path("precious.txt");
    std::fs::write(&outside, "outside").unwrap();
    let old = Duration::from_secs(3 * 86400);
    for (name, age) in [
        ("c1_kept.txt", old),               // referenced
        ("c999_orphan.txt", old),           // orphan: deleted
        ("c998_young.txt", Duration::ZERO), // orphan, too young
        ("README", old),                    // does not match the pattern
    ] {
        let p = uploads.join(name);
        std::fs::write(&p, "data").unwrap();
        set_age(&p, age);
    }
    symlink(&outside, uploads.join("c997_link.txt")).unwrap();
    // entries = "dirs": one directory per id.
    let vectors = env.path("vectors");
    for d in ["c2", "c996"] {
        std::fs::create_dir_all(vectors.join(d).join("sub")).unwrap();
        std::fs::write(vectors.join(d).join("sub/index.bin"), "0123456789").unwrap();
        set_age(&vectors.join(d), old);
    }
    symlink(env.path("app"), vectors.join("c995")).unwrap();
    config(
        &env,
        &db,
        None,
        &format!(
            "max_fraction = 1.0
[[database.prune.files]]
dir = \"{}\"
pattern = '^(?P<id>c[0-9]+)_'
referenced_by = \"SELECT id FROM chat\"
min_age = \"1d\"
[[database.prune.files]]
dir = \"{}\"
entries = \"dirs\"
referenced_by = \"SELECT id FROM chat\"
min_age = \"1d\"",
            uploads.display(),
            vectors.display()
        ),
    );
    let o = prune_code(&env, &[], 0);
    let mut left: Vec<String> = std::fs::read_dir(&uploads)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["README", "c1_kept.txt", "c997_link.txt", "c998_young.txt"]
    );
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "outside");
    assert!(vectors.join("c2/sub/index.bin").exists());
    assert!(!vectors.join("c996").exists());
    assert!(vectors.join("c995").is_symlink());
    assert!(env.path("app/chat.db").exists());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("and 2 files (14 B)"), "{out}");
}

#[test]
fn quarantine_moves_then_expires_and_empty_reference_is_refused() {
    let env = TestEnv::new();
    let (db, _) = chat_app(&env);
    let uploads = env.path("uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    std::fs::write(uploads.join("c999_orphan.txt"), "data").unwrap();
    std::fs::write(uploads.join("c1_kept.txt"), "data").unwrap();
    let expired = uploads.join(".litekeeper-quarantine/2020-01-01");
    std::fs::create_dir_all(&expired).unwrap();
    std::fs::write(expired.join("c5_old.txt"), "old").unwrap();
    let rule = |reference: &str| {
        format!(
            "max_fraction = 1.0
[[database.prune.files]]
dir = \"{}\"
pattern = '^(?P<id>c[0-9]+)_'
referenced_by = \"{reference}\"
min_age = \"0s\"
action = \"quarantine\"
quarantine_days = 7",
            uploads.display()
        )
    };
    // A reference query that returns nothing must not empty the directory.
    config(&env, &db, None, &rule("SELECT id FROM chat WHERE 0"));
    // A guard's refusal: the rule is skipped with a warning, the run is ok (issue 13).
    let o = prune_code(&env, &[], 0);
    crate::util::assert_stdout_has(&o, "refused by a guard: files[0]");
    crate::util::assert_stderr_has(&o, "referenced_by returned no ids");
    assert!(uploads.join("c999_orphan.txt").exists());

    config(&env, &db, None, &rule("SELECT id FROM chat"));
    let o = prune_code(&env, &[], 0);
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let moved = uploads
        .join(".litekeeper-quarantine")
        .join(&today)
        .join("c999_orphan.txt");
    assert!(moved.exists(), "{}", both(&o));
    assert!(!uploads.join("c999_orphan.txt").exists());
    assert!(uploads.join("c1_kept.txt").exists());
    assert!(!expired.exists(), "expired quarantine day not purged");
}

#[test]
fn killed_prune_leaves_only_whole_batches() {
    let env = TestEnv::new();
    let db = env.sqlite(
        "app/big.db",
        "PRAGMA journal_mode=WAL;
         CREATE TABLE ev(id INTEGER PRIMARY KEY, ts INTEGER, body TEXT);
         CREATE INDEX ev_ts ON ev(ts);
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 60000)
         INSERT INTO ev SELECT x, x % 2, hex(randomblob(20)) FROM i;",
    );
    write_prune_config(
        &env,
        &db,
        "max_lock = \"2ms\"\npause = \"5ms\"\nmax_fraction = 0.6\n[[database.prune.rule]]\ntable = \"ev\"\nwhere = \"ts = 0\"\n",
    );
    let mut child = env
        .std_cmd()
        .args(["run", "chat", "prune"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill once some but not all batches are in.
    let start = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let left = query_i64(&db, "SELECT count(*) FROM ev WHERE ts = 0");
        if left < 29_000 || start.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let c = Connection::open(&db).unwrap();
    assert_eq!(
        c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
            .unwrap(),
        "ok"
    );
    let left = query_i64(&db, "SELECT count(*) FROM ev WHERE ts = 0");
    assert!(
        left > 0 && left < 30_000,
        "kill did not land mid-prune: {left} left"
    );
    // Whole batches in key order: every matching row below the first survivor is gone and
    // every matching row from it on is still there. No other row was touched.
    let first_left = query_i64(&db, "SELECT min(id) FROM ev WHERE ts = 0");
    assert_eq!(
        query_i64(
            &db,
            &format!("SELECT count(*) FROM ev WHERE ts = 0 AND id < {first_left}")
        ),
        0
    );
    assert_eq!(
        query_i64(
            &db,
            &format!("SELECT count(*) FROM ev WHERE ts = 0 AND id >= {first_left}")
        ),
        (60_000 - first_left) / 2 + 1
    );
    assert_eq!(
        query_i64(&db, "SELECT count(*) FROM ev WHERE ts = 1"),
        30_000
    );
    // The lock is free and the next run finishes the job.
    prune_code(&env, &[], 0);
    assert_eq!(query_i64(&db, "SELECT count(*) FROM ev WHERE ts = 0"), 0);
}

#[test]
fn check_reports_rules_that_do_not_fit_the_schema_with_their_line() {
    let (env, db, _) = configured_chat_app(
        true,
        "[[database.prune.rule]]
table = \"chat\"
column = \"created\"
older_than = \"1d\"
[[database.prune.rule]]
table = \"files.blobz\"
where = \"1\"
[[database.prune.rule]]
table = \"message\"
key = \"chat_id\"
parent = \"chat.uuid\"
[[database.prune.files]]
dir = \"/tmp\"
entries = \"dirs\"
referenced_by = \"WITH k AS (SELECT 1) DELETE FROM chat RETURNING id\"",
    );
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let line_of = |needle: &str| text.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    let before = std::fs::read(&db).unwrap();
    let o = env.cmd().arg("check").output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for (needle, reason) in [
        ("column = ", "no column \"created\" in chat"),
        ("table = \"files.blobz\"", "no table files.blobz"),
        ("parent = ", "no column \"uuid\" in chat"),
        ("referenced_by = ", "must be a read-only SELECT"),
    ] {
        let want = format!("litekeeper.toml:{}:", line_of(needle));
        assert!(
            out.lines().any(|l| l.contains(&want) && l.contains(reason)),
            "no {want} … {reason} in:\n{out}"
        );
    }
    assert!(out.contains("4 error(s)"), "{out}");
    assert_eq!(std::fs::read(&db).unwrap(), before, "check changed the DB");
    assert_eq!(query_i64(&db, "SELECT count(*) FROM chat"), 400);
}
