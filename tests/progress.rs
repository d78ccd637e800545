//! What a person at a terminal sees, and what everything else does not: under a pseudo-terminal
//! (`script` from util-linux) a job shows a live progress line and INFO lines carry only their
//! message; on a pipe there is no progress byte and the log lines keep every structured field,
//! as `--log-format json` does.

use std::path::PathBuf;
use std::process::Command as StdCommand;

use crate::util::{both, query_i64, scrub, TestEnv};

/// 20,000 rows, half of them old, in small batches with a pause: a prune of a second or so.
fn slow_prune(env: &TestEnv) -> PathBuf {
    let db = env.sqlite(
        "app/chat.db",
        "PRAGMA journal_mode=WAL;
         CREATE TABLE message(id INTEGER PRIMARY KEY, old INTEGER, body TEXT);
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 20000)
         INSERT INTO message SELECT x, x % 2, hex(randomblob(40)) FROM i;",
    );
    crate::prune::write_prune_config(
        env,
        &db,
        "max_lock = \"1ms\"\npause = \"5ms\"\nmax_fraction = 0.9\n[[database.prune.rule]]\ntable = \"message\"\nwhere = \"old = 1\"\n[database.vacuum]\nmin_free = \"1%\"\n",
    );
    db
}

/// The binary under a pseudo-terminal: everything it wrote to the terminal, and its exit code.
fn under_pty(env: &TestEnv, args: &[&str]) -> (String, Option<i32>) {
    let bin = assert_cmd::cargo::cargo_bin("litekeeper");
    let mut line = format!("{} -c {}", bin.display(), env.config_path().display());
    for a in args {
        line.push(' ');
        line.push_str(a);
    }
    let mut c = StdCommand::new("script");
    scrub(&mut c, &env.path(""), |_| false);
    c.env("TERM", "xterm-256color")
        .args(["-q", "-e", "-c", &line, "/dev/null"]);
    let o = c.output().expect("script (util-linux) runs");
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        o.status.code(),
    )
}

fn has_script() -> bool {
    StdCommand::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Lines a person reads, with the terminal's line redraws undone (`\r` starts a line over).
fn shown(raw: &str) -> String {
    raw.replace("\r\n", "\n")
}

#[test]
fn a_terminal_sees_a_progress_line_and_bare_info_lines() {
    if !has_script() {
        eprintln!("skipped: no `script` (util-linux) to make a pseudo-terminal");
        return;
    }
    let env = TestEnv::new();
    let db = slow_prune(&env);
    let (out, code) = under_pty(&env, &["run", "chat", "prune"]);
    assert_eq!(code, Some(0), "{out}");
    let out = shown(&out);
    assert!(
        out.contains("prune chat rule[0]:")
            && out.contains("rows deleted")
            && out.contains("batches"),
        "no progress line for the prune:\n{out}"
    );
    assert!(
        out.contains("/10,000 rows deleted"),
        "the total is the rule's count:\n{out}"
    );
    // The INFO lines: the message only; the fields are for the journal and JSON logs.
    let info: Vec<&str> = out.lines().filter(|l| l.contains("INFO")).collect();
    assert!(
        info.iter()
            .any(|l| l.contains("prune chat: deleted 10000 rows")),
        "{out}"
    );
    for l in &info {
        assert!(
            !l.contains("figures") && !l.contains("litekeeper_") && !l.contains("message_id"),
            "a structured field on the terminal: {l}"
        );
    }
    // Then the human summary and the rules table.
    assert!(out.contains("rule[0]") && out.contains("deleted"), "{out}");
    assert_eq!(query_i64(&db, "SELECT count(*) FROM message"), 10_000);

    // Vacuum: its line shows the pages it rewrites and the time so far.
    let (out, code) = under_pty(&env, &["run", "chat", "vacuum"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("vacuum chat.db:")
            && out.contains("full VACUUM of")
            && out.contains("elapsed"),
        "no progress line for the vacuum:\n{out}"
    );

    // --quiet: no progress line and no INFO line, the result still printed.
    let env = TestEnv::new();
    slow_prune(&env);
    let (out, code) = under_pty(&env, &["--quiet", "run", "chat", "prune"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        !out.contains("rows deleted,") && !out.contains("INFO"),
        "{out}"
    );
    assert!(out.contains("prune chat: deleted 10000 rows"), "{out}");
}

fn no_progress(stderr: &str) {
    for noise in ["rows deleted,", "about ", "elapsed", "\r", "\x1b["] {
        assert!(
            !stderr.contains(noise),
            "progress output {noise:?} on a non-terminal:\n{stderr}"
        );
    }
}

#[test]
fn a_pipe_gets_no_progress_and_every_field() {
    let env = TestEnv::new();
    let db: PathBuf = slow_prune(&env);
    let o = env.cmd().args(["run", "chat", "prune"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    no_progress(&err);
    // Human lines off a terminal keep the structured fields, as before.
    let finish = err
        .lines()
        .find(|l| l.contains("prune chat: deleted"))
        .unwrap_or_else(|| panic!("no finish line:\n{err}"));
    for field in [
        "message_id=",
        "litekeeper_database=\"chat\"",
        "litekeeper_rows_deleted=10000",
        "litekeeper_figures=",
    ] {
        assert!(finish.contains(field), "{field} missing: {finish}");
    }
    assert_eq!(query_i64(&db, "SELECT count(*) FROM message"), 10_000);

    // JSON logs: one object per line with the same fields, nothing else on stderr.
    let env = TestEnv::new();
    slow_prune(&env);
    let o = env
        .cmd()
        .args(["--log-format", "json", "run", "chat", "prune"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    no_progress(&err);
    let events: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let finish = events
        .iter()
        .find(|e| e["message_id"] == "5f8553995df44ab8b04d65809b80d3ac")
        .expect("the finish event");
    assert_eq!(finish["litekeeper_rows_deleted"], 10_000);
    let figures: serde_json::Value =
        serde_json::from_str(finish["litekeeper_figures"].as_str().unwrap()).unwrap();
    assert_eq!(figures["rows_deleted"], 10_000);
    assert!(
        figures["rules"][0]["paused_ms"].as_u64().is_some(),
        "{figures}"
    );

    // The vacuum and --quiet on a pipe: no progress either; quiet drops the INFO lines only.
    let o = env.cmd().args(["run", "chat", "vacuum"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    no_progress(&String::from_utf8_lossy(&o.stderr));
    let o = env
        .cmd()
        .args(["-q", "run", "chat", "prune"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(String::from_utf8_lossy(&o.stderr), "", "quiet stderr");
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("prune chat: deleted 0 rows"));
}
