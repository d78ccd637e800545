//! `litekeeper demo DIR`: builds the sample with the cases the jobs act on, runs the jobs,
//! leaves a checkable setup, and never writes into a non-empty directory.

use std::path::Path;

use assert_cmd::Command;
use rusqlite::Connection;

use crate::util::{both, TestEnv};

/// `litekeeper demo DIR`, which must exit 0; its stdout.
fn demo(dir: &Path) -> String {
    let out = Command::cargo_bin("litekeeper")
        .unwrap()
        .arg("demo")
        .arg(dir)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn demo_builds_a_sample_runs_the_jobs_and_refuses_a_used_dir() {
    let env = TestEnv::new();
    let dir = env.path("d");
    let stdout = demo(&dir);
    assert!(stdout.contains("backup  ok"), "{stdout}");
    // The drill step restored the new backup and its assertions held.
    assert!(stdout.contains("drill   ok"), "{stdout}");
    assert!(stdout.contains("verdict: ok"), "{stdout}");
    for line in ["chats", "messages", "blobs", "upload files", "backups"] {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(line)),
            "no {line:?} row in:\n{stdout}"
        );
    }
    let main = Connection::open(dir.join("app/chat.db")).unwrap();
    main.execute(
        "ATTACH ?1 AS files",
        [dir.join("app/files.db").to_str().unwrap()],
    )
    .unwrap();
    let n = |sql: &str| -> i64 { main.query_row(sql, [], |r| r.get(0)).unwrap() };
    // Prune ran after its dry-run preview: the preview's count of old chats is what went.
    assert!(
        stdout.contains("prune --dry-run: dry run: would delete"),
        "{stdout}"
    );
    assert!(stdout.contains("prune   ok"), "{stdout}");
    let previewed: i64 = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("rule[0]"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no rule[0] row in:\n{stdout}"));
    assert!(previewed > 500, "{stdout}");
    assert_eq!(n("SELECT count(*) FROM chat"), 2000 - previewed);
    // Nothing the rules select is left, and what they protect is still there.
    assert_eq!(n("SELECT count(*) FROM chat WHERE updated_at < strftime('%s','now') - 90*86400 AND archived = 0 AND pinned = 0 AND folder_id IS NULL"), 0);
    assert!(
        n("SELECT count(*) FROM chat WHERE updated_at < strftime('%s','now') - 90*86400") > 0,
        "protected old chats were kept"
    );
    assert_eq!(
        n("SELECT count(*) FROM message WHERE chat_id NOT IN (SELECT id FROM chat)"),
        0
    );
    assert!(n("SELECT count(*) FROM message") > 0);
    assert_eq!(n("SELECT count(*) FROM files.blob WHERE substr(key, 1, instr(key, '/') - 1) NOT IN (SELECT id FROM message)"), 0);
    assert!(n("SELECT count(*) FROM files.blob") > 0);
    let uploads = std::fs::read_dir(dir.join("app/uploads")).unwrap().count() as i64;
    assert_eq!(
        uploads,
        n("SELECT count(*) FROM file"),
        "orphaned uploads left"
    );
    assert_eq!(
        main.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
            .unwrap(),
        "ok"
    );
    // The backup step really ran: two verified files in the manifest.
    let m = litekeeper::archive::Manifest::load(&dir.join("backups/chat")).unwrap();
    assert_eq!(m.backups.len(), 2);
    assert!(m
        .backups
        .iter()
        .all(|e| serde_json::to_value(e.verified).unwrap() == "quick"));
    // The written configuration is a working one.
    let out = Command::cargo_bin("litekeeper")
        .unwrap()
        .arg("-c")
        .arg(dir.join("litekeeper.toml"))
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    // A second demo into the same directory is refused and changes nothing.
    let before = std::fs::metadata(dir.join("app/chat.db"))
        .unwrap()
        .modified()
        .unwrap();
    let out = Command::cargo_bin("litekeeper")
        .unwrap()
        .arg("demo")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(73), "{}", both(&out));
    assert_eq!(
        std::fs::metadata(dir.join("app/chat.db"))
            .unwrap()
            .modified()
            .unwrap(),
        before
    );
}

/// The "Try next" lines run as printed, on a machine where `litekeeper` is not on PATH (after
/// `cargo run`): they name the running binary by its path, quoted for the shell, as is the
/// demo directory (here with a space in it).
#[test]
fn the_demos_try_next_lines_run_as_printed_without_litekeeper_on_path() {
    let env = TestEnv::new();
    let dir = env.path("my demo");
    let stdout = demo(&dir);
    assert!(stdout.ends_with('\n'), "{stdout:?}");
    let lines: Vec<&str> = stdout
        .lines()
        .skip_while(|l| *l != "Try next:")
        .skip(1)
        .map(str::trim)
        .collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    for line in lines {
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(line)
            .env("PATH", "/usr/bin:/bin")
            .env("NO_COLOR", "1")
            .env_remove("LITEKEEPER_CONFIG")
            .current_dir(env.dir.path())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{line}\n{}", both(&o));
    }
    assert!(dir.join("restored.db").is_file());
}

/// README's Quick start works on a fresh machine: the test suite's command comes with the
/// commands installing the tools the tests drive (`.ci/tools`) and cargo-nextest, and
/// `.ci/run` runs exactly those.
#[test]
fn readme_quick_start_installs_nextest_and_ci_runs_the_same_commands() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let quick = readme
        .split("## Quick start")
        .nth(1)
        .and_then(|s| s.split("```sh").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("README has a Quick start sh block");
    let commands: Vec<&str> = quick
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        commands,
        [
            "cargo run --release -- demo",
            "bash .ci/tools",
            "cargo install --locked cargo-nextest",
            "cargo nextest run"
        ]
    );
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    let ci_lines: Vec<&str> = ci.lines().map(str::trim).collect();
    assert!(
        ci_lines.contains(&"bash .ci/tools"),
        ".ci/run does not install the test tools as README says"
    );
    let tools = std::fs::read_to_string(root.join(".ci/tools")).unwrap();
    assert!(
        tools.lines().any(|l| l
            .trim()
            .ends_with("|| cargo install --locked cargo-nextest")),
        ".ci/tools does not install cargo-nextest as README says"
    );
    assert_eq!(
        ci_lines
            .iter()
            .filter(|l| l.starts_with("cargo nextest run"))
            .collect::<Vec<_>>(),
        [&"cargo nextest run"],
        ".ci/run must run README's test command exactly"
    );
}
