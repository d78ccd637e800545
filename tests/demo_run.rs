//! `litekeeper demo DIR`: builds the sample with the cases the jobs act on, runs the jobs,
//! leaves a checkable setup, and never writes into a non-empty directory.

use assert_cmd::Command;
use rusqlite::Connection;

use crate::util::{both, TestEnv};

#[test]
fn demo_builds_a_sample_runs_the_jobs_and_refuses_a_used_dir() {
    let env = TestEnv::new();
    let dir = env.path("d");
    let out = Command::cargo_bin("litekeeper")
        .unwrap()
        .arg("demo")
        .arg(&dir)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("backup  ok"), "{stdout}");
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
