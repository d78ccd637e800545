//! The bad-config corpus: every file in `tests/data/bad-config/` has exactly one problem, and
//! litekeeper must name it on exactly one line with the file, the line and the key, and refuse
//! to start. All messages are pinned by one insta snapshot, so a change to any of them is a
//! reviewed change (`cargo insta review`, or `INSTA_UPDATE=always` once, then look at the diff).
//!
//! Each file starts with two comment lines:
//!
//! ```text
//! # Problem: what is wrong.
//! # expect: line N, KEY
//! ```
//!
//! and the one message must start `FILE:N:COL: KEY:` (`invalid TOML` stands for the key of a
//! syntax error, which has none).
//!
//! Two kinds of files, told apart by the `{DB}` placeholder:
//!
//! * Load-time problems (no `{DB}`): `litekeeper -c FILE check` exits 78 (EX_CONFIG) with
//!   the message as its one stderr line and nothing on stdout. Nothing is opened.
//! * Schema problems (`{DB}`, and `{TMP}` for the state, lock and other directories): the rule
//!   is well-formed but does not fit the database, which only a live schema shows. The test
//!   creates a temp database with a known schema ([`SCHEMA`]), substitutes the placeholders and
//!   runs two commands: `check`, which exits 1 with the message on one `chat: error:` line of
//!   stdout (check reports, it does not refuse to start), and `run chat prune`, which refuses
//!   the job at start with exit 78 and the same message on one stderr line. The database is
//!   unchanged by both.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::util::{both, settled, TestEnv};

/// The database schema files with `{DB}` are checked against.
const SCHEMA: &str = "PRAGMA journal_mode=WAL;
CREATE TABLE chat(id TEXT PRIMARY KEY, updated_at INTEGER, archived INTEGER);
CREATE TABLE message(id TEXT PRIMARY KEY, chat_id TEXT);
CREATE TABLE file(id TEXT PRIMARY KEY, chat_id TEXT);
CREATE VIEW chat_summary AS SELECT id, archived FROM chat;
INSERT INTO chat VALUES ('c1', 0, 1), ('c2', 0, 0), ('c3', strftime('%s', 'now'), 0);
INSERT INTO message VALUES ('m1', 'c1'), ('m2', 'c2'), ('m3', 'gone');
INSERT INTO file VALUES ('1', 'c1'), ('2', 'c2');";

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bad-config")
}

/// The corpus, sorted by file name.
fn corpus() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_str().unwrap().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// `(line, key)` from the `# expect: line N, KEY` header.
fn expectation(name: &str, text: &str) -> Result<(usize, String), String> {
    let header = text
        .lines()
        .find_map(|l| l.strip_prefix("# expect: line "))
        .ok_or_else(|| format!("{name}: no `# expect: line N, KEY` header"))?;
    let (line, key) = header
        .split_once(", ")
        .ok_or_else(|| format!("{name}: header is not `line N, KEY`: {header:?}"))?;
    let line = line
        .parse()
        .map_err(|_| format!("{name}: bad line number in {header:?}"))?;
    Ok((line, key.to_string()))
}

/// The message must be `FILE:LINE:COL: KEY: …` for the expected line and key.
fn check_message(file: &str, line: usize, key: &str, msg: &str) -> Result<(), String> {
    let head = format!("{file}:{line}:");
    let rest = msg
        .strip_prefix(&head)
        .ok_or_else(|| format!("does not start with {head:?}: {msg:?}"))?;
    let (col, rest) = rest
        .split_once(": ")
        .ok_or_else(|| format!("no column after the line: {msg:?}"))?;
    if col.parse::<usize>().is_err() {
        return Err(format!("column {col:?} is not a number: {msg:?}"));
    }
    if !rest.starts_with(&format!("{key}: ")) {
        return Err(format!(
            "key {key:?} is not named after the position: {msg:?}"
        ));
    }
    Ok(())
}

fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::to_string)
        .collect()
}

/// `litekeeper -c CONFIG ARGS…` in the test's directory, with none of the environment's
/// LITEKEEPER variables (they would override the file) and job logging off.
fn run(env: &TestEnv, config: &Path, args: &[&str]) -> Output {
    env.bare_cmd()
        .env("LITEKEEPER_LOG", "off")
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

/// A load-time case: exit 78, nothing on stdout, one stderr line; returns the message.
fn load_time_case(env: &TestEnv, config: &Path) -> Result<String, String> {
    let o = run(env, config, &["check"]);
    if o.status.code() != Some(78) {
        return Err(format!("exit {:?}, want 78\n{}", o.status.code(), both(&o)));
    }
    if !o.stdout.is_empty() {
        return Err(format!("stdout not empty\n{}", both(&o)));
    }
    match lines(&o.stderr).as_slice() {
        [one] => one
            .strip_prefix("litekeeper: error: ")
            .map(str::to_string)
            .ok_or_else(|| format!("no `litekeeper: error:` prefix\n{}", both(&o))),
        many => Err(format!(
            "{} stderr lines, want 1 (one problem)\n{}",
            many.len(),
            both(&o)
        )),
    }
}

/// A schema case: `check` exits 1 with one error line, `run chat prune` exits 78 with the
/// same message on one stderr line, and the database is unchanged; returns the message.
fn schema_case(env: &TestEnv, config: &Path, db: &Path) -> Result<String, String> {
    let before = settled(db);
    let o = run(env, config, &["check"]);
    if o.status.code() != Some(1) {
        return Err(format!(
            "check: exit {:?}, want 1\n{}",
            o.status.code(),
            both(&o)
        ));
    }
    let out = lines(&o.stdout);
    let errors: Vec<&String> = out.iter().filter(|l| l.contains(": error: ")).collect();
    let msg = match errors.as_slice() {
        [one] => one
            .strip_prefix("chat: error: ")
            .ok_or_else(|| format!("check: not a `chat: error:` line: {one:?}"))?
            .to_string(),
        many => {
            return Err(format!(
                "check: {} error lines, want 1\n{}",
                many.len(),
                both(&o)
            ))
        }
    };
    if !out.iter().any(|l| l == "1 error(s), 0 warning(s)") {
        return Err(format!("check: summary is not 1 error\n{}", both(&o)));
    }
    let o = run(env, config, &["run", "chat", "prune"]);
    if o.status.code() != Some(78) {
        return Err(format!(
            "run: exit {:?}, want 78\n{}",
            o.status.code(),
            both(&o)
        ));
    }
    match lines(&o.stderr).as_slice() {
        [one] if one == &format!("litekeeper: prune chat: failed: {msg}") => {}
        _ => {
            return Err(format!(
                "run: want one stderr line with check's message {msg:?}\n{}",
                both(&o)
            ))
        }
    }
    if settled(db) != before {
        return Err("the database changed".into());
    }
    Ok(msg)
}

#[test]
fn every_bad_config_is_refused_on_one_line_naming_file_line_and_key() {
    let corpus = corpus();
    assert!(
        corpus.len() >= 40,
        "only {} files in the corpus",
        corpus.len()
    );
    let env = TestEnv::new();
    let tmp = env.dir.path().display().to_string();
    let mut failures = Vec::new();
    let mut snapshot = Vec::new();
    for (name, text) in &corpus {
        let (line, key) = match expectation(name, text) {
            Ok(e) => e,
            Err(why) => {
                failures.push(why);
                continue;
            }
        };
        let schema = text.contains("{DB}");
        let result = if schema {
            let case_dir = format!("{name}.d");
            let db = env.sqlite(&format!("{case_dir}/app/chat.db"), SCHEMA);
            let dir = env.path(&case_dir);
            std::fs::create_dir_all(dir.join("uploads")).unwrap();
            let config = dir.join(name);
            std::fs::write(
                &config,
                text.replace("{DB}", db.to_str().unwrap())
                    .replace("{TMP}", dir.to_str().unwrap()),
            )
            .unwrap();
            schema_case(&env, &config, &db).map(|m| (config, m))
        } else {
            let config = env.path(name);
            std::fs::write(&config, text).unwrap();
            load_time_case(&env, &config).map(|m| (config, m))
        };
        match result.and_then(|(config, msg)| {
            check_message(config.to_str().unwrap(), line, &key, &msg).map(|()| msg)
        }) {
            Ok(msg) => {
                let kind = if schema { "check, exit 1" } else { "exit 78" };
                snapshot.push(format!("{name} ({kind}): {}", msg.replace(&tmp, "[TMP]")));
            }
            Err(why) => failures.push(format!("[{name}] {why}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus files failed:\n\n{}",
        failures.len(),
        corpus.len(),
        failures.join("\n\n")
    );
    insta::assert_snapshot!("bad_config_messages", snapshot.join("\n"));
}

/// The checks the corpus exercises do not refuse their near misses: a quoted table name, SQL
/// text with parentheses and `--` inside string literals, a reference query behind a comment
/// and a CTE, and backups beside files rules that cannot take them.
#[test]
fn near_misses_of_the_corpus_load() {
    let env = TestEnv::new();
    let db = env.sqlite(
        "app/chat.db",
        &format!(
            "{SCHEMA}\nCREATE TABLE \"odd \"\"name\"\"; x\"(id INTEGER PRIMARY KEY, note TEXT);"
        ),
    );
    let uploads = env.path("app/uploads");
    let vectors = env.path("app/vectors");
    std::fs::create_dir_all(&uploads).unwrap();
    std::fs::create_dir_all(&vectors).unwrap();
    let config = env.write_config(&format!(
        r#"{daemon}
[[database]]
name = "chat"
path = "{db}"

[database.prune]

[[database.prune.rule]]
table = 'main."odd ""name""; x"'
where = "note = 'a) OR (1 -- x' AND (id > 0)"

[[database.prune.rule]]
table = "message"
key = "nullif(chat_id, '(')"
parent = "chat.id"

[[database.prune.files]]
dir = "{uploads}"
pattern = '^(?P<id>[0-9a-f-]{{36}})_'
referenced_by = """
-- the ids in use
WITH f AS (SELECT id FROM file) SELECT id FROM f;"""

[[database.prune.files]]
dir = "{vectors}"
entries = "dirs"
pattern = '^(?P<id>[0-9]+)$'
referenced_by = "SELECT id FROM file"

[database.backup]
dir = "{uploads}"

[[database]]
name = "other"
path = "{other}"

[database.backup]
dir = "{vectors}/backups"
"#,
        daemon = env.daemon_section(""),
        db = db.display(),
        other = env.path("app/other.db").display(),
        uploads = uploads.display(),
        vectors = vectors.display(),
    ));
    let o = run(&env, &config, &["check", "chat"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    crate::util::assert_stdout_has(&o, "configuration ok (2 databases)");
}
