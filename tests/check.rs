//! `litekeeper check` on real files: every failure cause is named with its path and a fix, the
//! exit code says whether anything is broken, and nothing is created or changed on the way.
//!
//! Permission cases run the binary as uid/gid 65534 through `setpriv` when the tests run as
//! root (root ignores file permissions), and directly with plain chmod otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::util::{
    both, give_to_nobody, is_root, open_to_nobody, set_mode, start_holder, stdout, unprivileged,
    KillOnDrop, TestEnv,
};

/// `[daemon]` + one `[[database]]` per (name, path), written as the config.
fn config_for(env: &TestEnv, dbs: &[(&str, &Path)], db_extra: &str) {
    let mut text = env.daemon_section("");
    for (name, path) in dbs {
        text.push_str(&TestEnv::database_section(name, path, db_extra));
    }
    env.write_config(&text);
}

fn check(env: &TestEnv, args: &[&str]) -> Output {
    env.cmd().arg("check").args(args).output().unwrap()
}

/// The `NAME: error: …` / `NAME: warning: …` line and the `NAME:   fix: …` line after it.
fn finding(o: &Output, name: &str, tag: &str) -> (String, String) {
    let out = stdout(o);
    let lines: Vec<&str> = out.lines().collect();
    let prefix = format!("{name}: {tag}: ");
    let i = lines
        .iter()
        .position(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line\n{}", both(o)));
    let fix = lines
        .get(i + 1)
        .filter(|l| l.starts_with(&format!("{name}:   fix: ")))
        .unwrap_or_else(|| panic!("no fix line after {prefix:?}\n{}", both(o)));
    (lines[i].to_string(), fix.to_string())
}

fn assert_summary(o: &Output, errors: usize, warnings: usize) {
    let out = stdout(o);
    let want = format!("{errors} error(s), {warnings} warning(s)");
    assert_eq!(out.lines().last(), Some(want.as_str()), "{}", both(o));
}

/// The -wal, -shm and -journal companions of a database path.
fn companions(db: &Path) -> Vec<PathBuf> {
    ["-wal", "-shm", "-journal"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", db.display())))
        .collect()
}

/// The finding of `name` tagged `tag` (see [`finding`]): its first line names all of `what`,
/// its fix line all of `fix`. Returns the first line.
fn assert_finding(o: &Output, name: &str, tag: &str, what: &[&str], fix: &[&str]) -> String {
    let (line, fix_line) = finding(o, name, tag);
    assert_contains(&line, what, o);
    assert_contains(&fix_line, fix, o);
    line
}

/// `check ARGS`, which must exit with `code`.
fn check_code(env: &TestEnv, args: &[&str], code: i32) -> Output {
    let out = check(env, args);
    assert_eq!(out.status.code(), Some(code), "{}", both(&out));
    out
}

/// Fails when a -wal, -shm or -journal companion of `db` exists.
fn assert_no_companions(db: &Path) {
    for c in companions(db) {
        assert!(!c.exists(), "{} appeared", c.display());
    }
}

/// Fails unless `NAME: ok: PATH` is a line of the output.
/// The output's one finding: an error of `chat` naming `db` and all of `what`, with a fix
/// naming all of `fix`. Returns its first line.
fn assert_chat_error(o: &Output, db: &Path, what: &[&str], fix: &[&str]) -> String {
    let line = assert_chat_finding(o, "error", db, what, fix);
    assert_summary(o, 1, 0);
    line
}

/// The finding of `chat` tagged `tag`, naming `db` and all of `what`, with a fix naming all of
/// `fix`. Returns its first line.
fn assert_chat_finding(o: &Output, tag: &str, db: &Path, what: &[&str], fix: &[&str]) -> String {
    let db = db.display().to_string();
    let what: Vec<&str> = std::iter::once(db.as_str())
        .chain(what.iter().copied())
        .collect();
    assert_finding(o, "chat", tag, &what, fix)
}

/// Fails unless `NAME: ok: PATH` is a line of the output.
fn assert_ok_line(o: &Output, name: &str, path: &Path) {
    let want = format!("{name}: ok: {}", path.display());
    assert!(
        stdout(o).lines().any(|l| l == want),
        "{want:?}\n{}",
        both(o)
    );
}

fn assert_contains(haystack: &str, needles: &[&str], o: &Output) {
    for n in needles {
        assert!(
            haystack.to_lowercase().contains(&n.to_lowercase()),
            "{n:?} not in {haystack:?}\n{}",
            both(o)
        );
    }
}

/// A WAL database with a table of `rows` rows of ~100 bytes.
fn wal_db(env: &TestEnv, rel: &str, rows: u32) -> PathBuf {
    env.sqlite(
        rel,
        &format!(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE chat(id INTEGER PRIMARY KEY, body TEXT NOT NULL);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < {rows})
             INSERT INTO chat(body) SELECT hex(randomblob(50)) FROM n;"
        ),
    )
}

/// `check` with `db` as the only database `chat`, which must exit with `code`.
fn check_chat_alone(env: &TestEnv, db: &Path, code: i32) -> Output {
    config_for(env, &[("chat", db)], "");
    check_code(env, &[], code)
}

/// A new test directory with a WAL database `chat` of `rows` rows, configured alone.
fn chat_env(rows: u32) -> (TestEnv, PathBuf) {
    let env = TestEnv::new();
    let db = wal_db(&env, "app/chat.db", rows);
    config_for(&env, &[("chat", &db)], "");
    (env, db)
}

#[test]
fn healthy_wal_database_is_ok_and_left_untouched() {
    let (env, db) = chat_env(100);
    let before = std::fs::read(&db).unwrap();
    let out = check_code(&env, &[], 0);
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "{}: configuration ok (1 database)\n",
            env.config_path().display()
        )),
        "{}",
        both(&out)
    );
    assert_ok_line(&out, "chat", &db);
    assert_summary(&out, 0, 0);
    assert!(out.stderr.is_empty(), "{}", both(&out));
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "check changed the file"
    );
}

#[test]
fn missing_directory_is_named() {
    let env = TestEnv::new();
    let db = env.path("no/such/dir/chat.db");
    let out = check_chat_alone(&env, &db, 1);
    assert_chat_error(
        &out,
        &db,
        &[&format!(
            "directory {} does not exist",
            env.path("no/such/dir").display()
        )],
        &["create it", "correct `path`"],
    );
    assert!(!env.path("no").exists(), "check created the directory");
}

#[test]
fn missing_file_is_named_and_never_created() {
    let env = TestEnv::new();
    std::fs::create_dir(env.path("app")).unwrap();
    let db = env.path("app/chat.db");
    let out = check_chat_alone(&env, &db, 1);
    assert_chat_finding(
        &out,
        "error",
        &db,
        &["database file does not exist"],
        &["never creates databases"],
    );
    assert!(!db.exists(), "check created {}", db.display());
    for c in companions(&db) {
        assert!(!c.exists(), "check created {}", c.display());
    }
    assert_eq!(std::fs::read_dir(env.path("app")).unwrap().count(), 0);
}

/// The database at `rel` as a fresh WAL DB in a directory `dir_rel`, with `file_mode`;
/// `dir_owned`: whether the directory belongs to the user check runs as.
fn permission_case(
    env: &TestEnv,
    dir_rel: &str,
    file_mode: u32,
    dir_owned: bool,
) -> (PathBuf, Output) {
    let db = wal_db(env, &format!("{dir_rel}/chat.db"), 10);
    let dir = env.path(dir_rel);
    config_for(env, &[("chat", &db)], "");
    open_to_nobody(env);
    give_to_nobody(&db);
    set_mode(&db, file_mode);
    if dir_owned {
        give_to_nobody(&dir);
        set_mode(&dir, 0o755);
    } else if is_root() {
        set_mode(&dir, 0o755); // root's, so not writable for the unprivileged user
    } else {
        set_mode(&dir, 0o555);
    }
    let out = unprivileged(env)
        .arg("-c")
        .arg(env.config_path())
        .arg("check")
        .output()
        .unwrap();
    // Leave the temp dir removable when not root.
    set_mode(&dir, 0o755);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    (db, out)
}

#[test]
fn unreadable_file_is_named() {
    let env = TestEnv::new();
    let (db, out) = permission_case(&env, "app", 0o200, true);
    assert_chat_error(
        &out,
        &db,
        &["no read permission on the file", "mode 0200"],
        &["owner", "read"],
    );
}

#[test]
fn read_only_file_is_named() {
    let env = TestEnv::new();
    let (db, out) = permission_case(&env, "app", 0o400, true);
    let what = assert_chat_error(
        &out,
        &db,
        &["no write permission on the file", "mode 0400"],
        &["write access"],
    );
    assert!(!what.contains("read permission"), "{}", both(&out));
}

#[test]
fn unwritable_directory_is_named_because_wal_needs_it() {
    let env = TestEnv::new();
    let (db, out) = permission_case(&env, "app", 0o600, false);
    assert_chat_error(
        &out,
        &db,
        &[
            &format!(
                "no write permission on directory {}",
                env.path("app").display()
            ),
            "-wal and -shm",
        ],
        &["write access to the directory"],
    );
    assert_no_companions(&db);
}

#[test]
fn garbage_files_are_not_a_database() {
    let env = TestEnv::new();
    std::fs::create_dir(env.path("app")).unwrap();
    let random = env.path("app/random.db");
    let bytes: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&random, &bytes).unwrap();
    let text = env.path("app/notes.db");
    std::fs::write(&text, "this is a text file, not a database\n".repeat(50)).unwrap();
    let short = env.path("app/short.db");
    std::fs::write(&short, "hi\n").unwrap();
    config_for(
        &env,
        &[("random", &random), ("notes", &text), ("short", &short)],
        "",
    );
    let out = check_code(&env, &[], 1);
    for (name, path) in [("random", &random), ("notes", &text), ("short", &short)] {
        assert_finding(
            &out,
            name,
            "error",
            &[&path.display().to_string(), "not an SQLite database"],
            &["restore it from a backup"],
        );
        assert_no_companions(path);
    }
    assert_eq!(std::fs::read(&random).unwrap(), bytes, "check wrote to it");
    assert_summary(&out, 3, 0);
}

/// SQLite would open a 0-byte file as an empty database (and write a header into it on the
/// first write); for an application database that is a wrong path or an app that never ran.
#[test]
fn empty_file_is_an_error_and_stays_empty() {
    let env = TestEnv::new();
    std::fs::create_dir(env.path("app")).unwrap();
    let db = env.path("app/chat.db");
    std::fs::write(&db, b"").unwrap();
    let out = check_chat_alone(&env, &db, 1);
    assert_chat_finding(
        &out,
        "error",
        &db,
        &["file is empty (0 bytes)"],
        &["correct `path`", "create its database"],
    );
    assert_eq!(
        std::fs::metadata(&db).unwrap().len(),
        0,
        "check wrote to it"
    );
    assert_no_companions(&db);
}

#[test]
fn corrupt_btree_page_is_reported_corrupt_on_one_line() {
    let env = TestEnv::new();
    let db = wal_db(&env, "app/chat.db", 5000);
    // Everything is in the main file: the connection that created it checkpointed on close.
    assert!(!companions(&db)[0].exists());
    let mut bytes = std::fs::read(&db).unwrap();
    let page_size = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
    let pages = bytes.len() / page_size;
    assert!(pages > 40, "only {pages} pages");
    // A leaf page of `chat` in the middle of the file (all pages but 1 and the root are the
    // table's leaves and interior pages): smash its cell-pointer array, not its header byte.
    let start = (pages / 2) * page_size;
    assert!(
        matches!(bytes[start], 0x0d | 0x05),
        "page type {}",
        bytes[start]
    );
    for b in &mut bytes[start + 8..start + 8 + 200] {
        *b = 0xff;
    }
    std::fs::write(&db, &bytes).unwrap();
    let healthy = wal_db(&env, "app/other.db", 10);
    config_for(&env, &[("chat", &db), ("other", &healthy)], "");

    let out = check_code(&env, &[], 1);
    assert_chat_error(
        &out,
        &db,
        &["database is corrupt", "quick_check says"],
        &["restore the newest verified backup"],
    );
    // quick_check's multi-line text is folded: every line but the first and the summary is a
    // `NAME: …` line.
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    for l in &lines[1..lines.len() - 1] {
        assert!(
            l.starts_with("chat: ") || l.starts_with("chat (") || l.starts_with("other: "),
            "stray line {l:?}\n{}",
            both(&out)
        );
    }
    assert_ok_line(&out, "other", &healthy);
}

/// `app/chat.db` in rollback-journal mode, with one row.
fn rollback_db(env: &TestEnv) -> PathBuf {
    env.sqlite(
        "app/chat.db",
        "CREATE TABLE chat(id INTEGER PRIMARY KEY); INSERT INTO chat DEFAULT VALUES;",
    )
}

/// A python3 process holding a lock on `db` until dropped: its connection (no implicit
/// transactions) has run `statements` and it has printed its ready line.
fn hold(db: &Path, statements: &[&str]) -> KillOnDrop {
    let mut script = String::from(
        "import sqlite3, sys, time\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\n",
    );
    for s in statements {
        script.push_str(&format!("c.execute('{s}')\n"));
    }
    script.push_str("print('held', flush=True)\ntime.sleep(60)\n");
    let mut python = StdCommand::new("python3");
    python.arg("-c").arg(script).arg(db).stderr(Stdio::piped());
    let (child, line) = start_holder(python);
    assert_eq!(line.trim(), "held", "python3 did not take the lock");
    child
}

/// While a python3 process holds `db` after `statements` (see [`hold`]), check names it
/// locked; once that process is gone, check exits 0: its output.
fn assert_locked_while_held(env: &TestEnv, db: &Path, statements: &[&str]) -> Output {
    let holder = hold(db, statements);
    assert_locked(env, db);
    drop(holder);
    check_code(env, &[], 0)
}

fn assert_locked(env: &TestEnv, db: &Path) {
    let t0 = Instant::now();
    let out = check(env, &[]);
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert_chat_error(
        &out,
        db,
        &["locked by another process for longer than busy_timeout (300ms)"],
        &["fuser -v", "daemon.busy_timeout"],
    );
    // It waited for busy_timeout (300ms), not SQLite's default 5s.
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(4),
        "took {took:?}"
    );
}

#[test]
fn rollback_database_locked_exclusively_is_named_locked() {
    let env = TestEnv::new();
    let db = rollback_db(&env);
    config_for(&env, &[("chat", &db)], "journal_mode = \"keep\"");
    // Once the holder is gone the same database is fine.
    let out = assert_locked_while_held(&env, &db, &["BEGIN EXCLUSIVE"]);
    assert_summary(&out, 0, 0);
}

#[test]
fn wal_database_in_exclusive_locking_mode_is_named_locked() {
    let (env, db) = chat_env(10);
    assert_locked_while_held(
        &env,
        &db,
        &[
            "PRAGMA locking_mode=EXCLUSIVE",
            "INSERT INTO chat(body) VALUES (1)",
        ],
    );
}

#[test]
fn rollback_journal_is_a_warning_and_left_alone() {
    let env = TestEnv::new();
    let db = rollback_db(&env);
    let out = check_chat_alone(&env, &db, 0);
    assert_chat_finding(
        &out,
        "warning",
        &db,
        &["journal mode is delete, not WAL"],
        &["switches it to WAL", "journal_mode = \"keep\""],
    );
    assert_summary(&out, 0, 1);
    let mode: String = Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete", "check must not switch the journal mode");

    // journal_mode = "keep": the application's choice, no warning.
    config_for(&env, &[("chat", &db)], "journal_mode = \"keep\"");
    let out = check_code(&env, &[], 0);
    assert_ok_line(&out, "chat", &db);
    assert_summary(&out, 0, 0);
}

#[test]
fn unknown_database_name_is_a_usage_error() {
    let (env, _db) = chat_env(10);
    for args in [&["nosuchdb"][..], &["chat", "nosuchdb"][..]] {
        let out = check(&env, args);
        assert_eq!(out.status.code(), Some(64), "{args:?}\n{}", both(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.trim_end(),
            format!(
                "litekeeper: error: no database named \"nosuchdb\" in {}",
                env.config_path().display()
            ),
            "{}",
            both(&out)
        );
        assert!(!stdout(&out).contains("chat: ok"), "{}", both(&out));
    }
}

#[test]
fn one_broken_database_does_not_hide_the_others() {
    let env = TestEnv::new();
    let a = wal_db(&env, "app/a.db", 10);
    let missing = env.path("app/gone.db");
    let c = wal_db(&env, "app/c.db", 10);
    config_for(
        &env,
        &[("alpha", &a), ("gone", &missing), ("gamma", &c)],
        "",
    );
    let out = check_code(&env, &[], 1);
    let text = stdout(&out);
    assert!(
        text.contains("configuration ok (3 databases)"),
        "{}",
        both(&out)
    );
    assert_ok_line(&out, "alpha", &a);
    assert_ok_line(&out, "gamma", &c);
    assert_finding(
        &out,
        "gone",
        "error",
        &["database file does not exist"],
        &[],
    );
    assert_summary(&out, 1, 0);

    // Naming only the healthy ones: only they are checked, and all is well.
    let out = check_code(&env, &["alpha", "gamma"], 0);
    assert!(!stdout(&out).contains("gone"), "{}", both(&out));
    assert_summary(&out, 0, 0);
    // Naming the broken one alone fails.
    let out = check_code(&env, &["gone"], 1);
    assert!(!stdout(&out).contains("alpha"), "{}", both(&out));
}

#[test]
fn broken_attached_database_is_named_with_its_alias() {
    let env = TestEnv::new();
    let files = env.path("app/files.db");
    let db = wal_db(&env, "app/chat.db", 10);
    std::fs::write(
        &files,
        b"definitely not sqlite, just some bytes to make it long enough",
    )
    .unwrap();
    env.config("")
        .database(
            "chat",
            &db,
            &format!("attach = {{ files = \"{}\" }}", files.display()),
        )
        .write();
    let out = check_code(&env, &[], 1);
    assert_ok_line(&out, "chat", &db);
    assert_finding(
        &out,
        "chat (attached as files)",
        "error",
        &[&files.display().to_string(), "not an SQLite database"],
        &[],
    );
}
