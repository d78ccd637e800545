//! SQL written into the configuration does exactly what the rule says and nothing else.
//!
//! Names (tables, columns) are either refused when the file is loaded (a bare name must be an
//! identifier) or, written in double quotes, looked up and used quoted, so a table literally
//! named `weird "name"; x` is pruned like any other. Expressions (`where`, `key`) must stay
//! inside the parentheses they are placed in: a `;`, a `)` closing more than it opened, or a
//! `--` comment is refused at load. `referenced_by` must be one read-only SELECT: a second
//! statement, DELETE … RETURNING, a CTE around a DELETE, ATTACH, PRAGMA or VACUUM INTO is
//! refused, at load when the text shows it, else when the job starts (SQLite's own
//! read-only verdict). Every refusal exits 78 from `run` and leaves the database
//! byte-identical (compared after a checkpoint), its tables and row counts, and the files.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

use rusqlite::Connection;

use crate::util::{both, query_ids, settled, unix_now, TestEnv, DAY};

/// The chat app's database: chats, messages, files, and a bystander table `x` that an
/// injected `DROP TABLE x` or `DELETE FROM x` would hit.
fn app_db(env: &TestEnv) -> PathBuf {
    let n = unix_now();
    env.sqlite(
        "app/chat.db",
        &format!(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE chat(id TEXT PRIMARY KEY, updated_at INTEGER, archived INTEGER);
             CREATE TABLE message(id TEXT PRIMARY KEY, chat_id TEXT);
             CREATE TABLE file(id TEXT PRIMARY KEY);
             CREATE TABLE x(v INTEGER);
             WITH RECURSIVE i(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM i WHERE k < 40)
             INSERT INTO chat SELECT 'c' || k, {n} - k * 10 * {DAY}, k % 2 FROM i;
             WITH RECURSIVE i(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM i WHERE k < 80)
             INSERT INTO message SELECT 'm' || k, 'c' || (k % 50 + 1) FROM i;
             INSERT INTO file VALUES ('1'), ('2');
             INSERT INTO x VALUES (1), (2), (3);"
        ),
    )
}

fn config(env: &TestEnv, db: &Path, prune: &str) -> PathBuf {
    env.write_config(&format!(
        "{}[[database]]\nname = \"chat\"\npath = \"{}\"\n[database.prune]\npause = \"0s\"\nmax_fraction = 1.0\n{prune}\n",
        env.daemon_section(""),
        db.display()
    ))
}

fn litekeeper(env: &TestEnv, args: &[&str]) -> Output {
    env.cmd()
        .args(args)
        .env("LITEKEEPER_LOG", "off")
        .output()
        .unwrap()
}

/// When a hostile value is refused: at load (the text shows it: `check` exits 78 too) or at
/// job start (only the database shows it: `check` reports it and exits 1).
#[derive(Clone, Copy, Debug)]
enum Refused {
    AtLoad,
    AtJobStart,
}

/// Run `check` and `run chat prune` on the current config: both refuse (`run` with 78 and a
/// config line), and the database and `files` stay as they were.
fn assert_refused(env: &TestEnv, db: &Path, when: Refused, what: &str, files: &[PathBuf]) {
    let before = settled(db);
    let o = litekeeper(env, &["check"]);
    let want = match when {
        Refused::AtLoad => 78,
        Refused::AtJobStart => 1,
    };
    assert_eq!(
        o.status.code(),
        Some(want),
        "check, {what} ({when:?})\n{}",
        both(&o)
    );
    let o = litekeeper(env, &["run", "chat", "prune"]);
    assert_eq!(
        o.status.code(),
        Some(78),
        "run chat prune, {what} ({when:?})\n{}",
        both(&o)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("litekeeper.toml:"),
        "the refusal names no config line, {what}\n{}",
        both(&o)
    );
    assert_eq!(settled(db), before, "the database changed, {what}");
    for f in files {
        assert!(f.exists(), "{} was removed, {what}", f.display());
    }
}

#[test]
fn weird_table_and_column_names_are_quoted_and_only_the_rule_happens() {
    let env = TestEnv::new();
    let db = app_db(&env);
    let n = unix_now();
    {
        let c = Connection::open(&db).unwrap();
        c.execute_batch(&format!(
            "CREATE TABLE \"weird \"\"name\"\"; x\"(
                 id INTEGER PRIMARY KEY,
                 \"made \"\"at\"\"; DROP TABLE x\" INTEGER,
                 note TEXT);
             WITH RECURSIVE i(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM i WHERE k < 30)
             INSERT INTO \"weird \"\"name\"\"; x\" SELECT k, {n} - k * {DAY},
                 CASE WHEN k % 3 = 0 THEN 'keep' ELSE 'x' END FROM i;
             CREATE TABLE \"child of weird\"(id INTEGER PRIMARY KEY, \"parent id\" INTEGER);
             WITH RECURSIVE i(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM i WHERE k < 40)
             INSERT INTO \"child of weird\" SELECT k, k FROM i;"
        ))
        .unwrap();
    }
    // Rows older than 10.5 days whose note is not 'keep', and children whose parent is gone
    // after that (ids 31..40 never had one).
    let cutoff = n - 252 * 3600;
    let weird_left = query_ids(
        &db,
        &format!(
            "SELECT id FROM \"weird \"\"name\"\"; x\"
             WHERE NOT (\"made \"\"at\"\"; DROP TABLE x\" < {cutoff} AND note <> 'keep') ORDER BY id"
        ),
    );
    assert!(weird_left.len() > 10 && weird_left.len() < 30);
    config(
        &env,
        &db,
        r#"
[[database.prune.rule]]
table = '"weird ""name""; x"'
column = 'made "at"; DROP TABLE x'
older_than = "252h"
where = "note <> 'keep'"

[[database.prune.rule]]
table = '"child of weird"'
key = '"parent id"'
parent = '"weird ""name""; x".id'
"#,
    );
    let o = litekeeper(&env, &["check"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let before_others = settled(&db).tables;
    let o = litekeeper(&env, &["run", "chat", "prune"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let left = query_ids(&db, "SELECT id FROM \"weird \"\"name\"\"; x\" ORDER BY id");
    assert_eq!(left, weird_left, "the age rule deleted other rows");
    let children = query_ids(
        &db,
        "SELECT \"parent id\" FROM \"child of weird\" ORDER BY id",
    );
    assert_eq!(children, weird_left, "the orphan rule deleted other rows");
    // Nothing else moved: every other table is there with all its rows.
    let after = settled(&db).tables;
    for (table, count) in &before_others {
        if table.starts_with("weird") || table == "child of weird" {
            continue;
        }
        assert!(
            after.contains(&(table.clone(), *count)),
            "{table} ({count} rows) changed: {after:?}"
        );
    }
    assert_eq!(after.len(), before_others.len(), "{after:?}");
    let integrity: String = Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
}

#[test]
fn sql_as_a_bare_name_is_refused_at_load() {
    let env = TestEnv::new();
    let db = app_db(&env);
    for (key, value) in [
        ("table", "\"chat; DROP TABLE x\""),
        ("table", "\"x WHERE 1; --\""),
        ("table", "'chat\"; DROP TABLE x; --'"),
        ("table", "'\"chat\"; DROP TABLE x'"),
    ] {
        config(
            &env,
            &db,
            &format!("[[database.prune.rule]]\n{key} = {value}\nwhere = \"archived = 1\""),
        );
        assert_refused(&env, &db, Refused::AtLoad, value, &[]);
    }
}

#[test]
fn where_with_a_second_statement_or_escaping_its_parentheses_is_refused() {
    let env = TestEnv::new();
    let db = app_db(&env);
    for (rule, when) in [
        ("where = \"1; DROP TABLE x\"", Refused::AtLoad),
        ("where = \"archived = 1; DELETE FROM x\"", Refused::AtLoad),
        (
            "where = \"archived = 1); DELETE FROM x; --\"",
            Refused::AtLoad,
        ),
        // Would make `age AND (archived = 1) OR (1)`: every row.
        ("where = \"archived = 1) OR (1\"", Refused::AtLoad),
        ("where = \"archived = 1 --\"", Refused::AtLoad),
        ("where = \"archived = 1 /*\"", Refused::AtLoad),
        ("where = \"archived = 'x\"", Refused::AtLoad),
        // No `;` and balanced, but not an expression of chat's rows: SQLite says so.
        (
            "where = \"(DELETE FROM x RETURNING v)\"",
            Refused::AtJobStart,
        ),
        (
            "where = \"archived IN (DELETE FROM x RETURNING v)\"",
            Refused::AtJobStart,
        ),
        ("where = \"nosuchcolumn = 1\"", Refused::AtJobStart),
    ] {
        for kind in ["where", "age"] {
            let body = match kind {
                "where" => format!("[[database.prune.rule]]\ntable = \"chat\"\n{rule}"),
                _ => format!(
                    "[[database.prune.rule]]\ntable = \"chat\"\ncolumn = \"updated_at\"\nolder_than = \"1d\"\n{rule}"
                ),
            };
            config(&env, &db, &body);
            assert_refused(&env, &db, when, &format!("{kind} rule: {rule}"), &[]);
        }
    }
}

#[test]
fn key_expression_that_tries_to_write_is_refused() {
    let env = TestEnv::new();
    let db = app_db(&env);
    for (key, when) in [
        ("(SELECT 1); DELETE FROM chat", Refused::AtLoad),
        ("chat_id); DELETE FROM chat; --", Refused::AtLoad),
        ("chat_id) OR (1", Refused::AtLoad),
        ("chat_id -- ", Refused::AtLoad),
        ("(DELETE FROM chat RETURNING id)", Refused::AtJobStart),
        (
            "(WITH d AS (DELETE FROM chat RETURNING id) SELECT id FROM d)",
            Refused::AtJobStart,
        ),
    ] {
        config(
            &env,
            &db,
            &format!(
                "[[database.prune.rule]]\ntable = \"message\"\nkey = \"{key}\"\nparent = \"chat.id\""
            ),
        );
        assert_refused(&env, &db, when, key, &[]);
    }
}

#[test]
fn referenced_by_must_be_one_read_only_select() {
    let env = TestEnv::new();
    let db = app_db(&env);
    // An uploads directory whose files no row references, old enough to go: any query that
    // got through would have them deleted (or, returning no ids, refused for emptiness).
    let uploads = env.path("uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    let mut files = Vec::new();
    for id in ["1", "2", "77", "78"] {
        let f = uploads.join(format!("{id}_upload.bin"));
        std::fs::write(&f, id).unwrap();
        let old = SystemTime::now() - Duration::from_secs(30 * DAY as u64);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        files.push(f);
    }
    let evil = env.path("evil.db");
    let copy = env.path("copy.db");
    for (query, when) in [
        ("DELETE FROM file RETURNING id".to_string(), Refused::AtLoad),
        (
            "SELECT id FROM file; DROP TABLE file".into(),
            Refused::AtLoad,
        ),
        ("SELECT 1; DROP TABLE file".into(), Refused::AtLoad),
        (
            "SELECT id FROM file;; DELETE FROM x".into(),
            Refused::AtLoad,
        ),
        (
            format!("ATTACH '{}' AS evil", evil.display()),
            Refused::AtLoad,
        ),
        ("DETACH main".into(), Refused::AtLoad),
        ("PRAGMA table_info(file)".into(), Refused::AtLoad),
        ("PRAGMA writable_schema = ON".into(), Refused::AtLoad),
        ("PRAGMA user_version = 7".into(), Refused::AtLoad),
        (format!("VACUUM INTO '{}'", copy.display()), Refused::AtLoad),
        (
            "INSERT INTO file VALUES ('77') RETURNING id".into(),
            Refused::AtLoad,
        ),
        ("-- ids\nDROP TABLE x".into(), Refused::AtLoad),
        // Start like a query; SQLite refuses them when the job starts.
        (
            "WITH x AS (DELETE FROM file RETURNING id) SELECT id FROM x".into(),
            Refused::AtJobStart,
        ),
        (
            "WITH k AS (SELECT 1) DELETE FROM file RETURNING id".into(),
            Refused::AtJobStart,
        ),
        (
            "WITH k AS (SELECT 1) INSERT INTO file SELECT '77' RETURNING id".into(),
            Refused::AtJobStart,
        ),
        ("SELECT id FROM nosuchtable".into(), Refused::AtJobStart),
    ] {
        config(
            &env,
            &db,
            &format!(
                "[[database.prune.files]]\ndir = \"{}\"\npattern = '^(?P<id>[0-9]+)_'\nmin_age = \"1d\"\nreferenced_by = '''{query}'''",
                uploads.display()
            ),
        );
        assert_refused(&env, &db, when, &query, &files);
        assert!(!evil.exists(), "ATTACH created {}", evil.display());
        assert!(!copy.exists(), "VACUUM INTO wrote {}", copy.display());
    }
    // The control: the honest query runs and removes exactly the unreferenced uploads.
    config(
        &env,
        &db,
        &format!(
            "[[database.prune.files]]\ndir = \"{}\"\npattern = '^(?P<id>[0-9]+)_'\nmin_age = \"1d\"\nreferenced_by = \"SELECT id FROM file\"",
            uploads.display()
        ),
    );
    let o = litekeeper(&env, &["run", "chat", "prune"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let left: Vec<bool> = files.iter().map(|f| f.exists()).collect();
    assert_eq!(left, [true, true, false, false], "{}", both(&o));
}
