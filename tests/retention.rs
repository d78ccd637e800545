//! Retention on a real backup directory: after a backup, files outside the policy are deleted,
//! only files named by our pattern are touched, `--dry-run` deletes nothing and says what it
//! would, and `backups list --json` says which rules keep each backup.

use std::path::Path;

use serde_json::Value;

use crate::util::{backup_into, both, names, TestEnv};

fn setup(env: &TestEnv, keep: &str) -> std::path::PathBuf {
    let db = env.sqlite(
        "app/chat.db",
        "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);",
    );
    let dir = env.path("backups");
    env.config("timezone = \"UTC\"")
        .database("chat", &db, &format!("{}\n{keep}", backup_into(&dir)))
        .write();
    dir
}

/// Record `files` (present in `dir`) in its manifest as backups of `chat` (a `.failed` one as
/// failed), as a backup run would have.
pub fn record(dir: &Path, files: &[String]) {
    let path = dir.join("manifest.json");
    let mut m: Value = std::fs::read(&path)
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap_or_else(|_| serde_json::json!({"version": 1, "backups": []}));
    for f in files {
        let name = litekeeper::archive::BackupName::parse(f).unwrap();
        m["backups"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "file": f, "series": name.series, "database": "chat", "source": "chat.db",
                "created_at": name.time, "size": std::fs::metadata(dir.join(f)).unwrap().len(),
                "sha256": litekeeper::archive::sha256_file(&dir.join(f)).unwrap(),
                "compressed": false, "verified": if name.failed { "failed" } else { "quick" },
                "page_count": 1, "page_size": 4096, "tables": {}, "duration_ms": 1,
            }));
    }
    std::fs::write(path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// Old backups of series `chat` (in the manifest), one per day at 02:00 UTC for `days` days
/// ending 2026-01-10, plus files that only look like ours.
fn fabricate_history(dir: &Path, days: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let mut made = Vec::new();
    for d in 0..days {
        let name = format!("chat-202601{:02}-020000.db", 10 - d);
        std::fs::write(dir.join(&name), b"old backup").unwrap();
        made.push(name);
    }
    record(dir, &made);
    for foreign in [
        "notes.txt",
        "chat-2026.db",
        "chat-20200101-020000.db.bak",
        "other-20200101-020000.db",
    ] {
        std::fs::write(dir.join(foreign), b"not ours to delete").unwrap();
    }
}

fn list_json(env: &TestEnv) -> Value {
    let o = env.run_ok(&["backups", "list", "--json"]);
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn backup_applies_retention_and_touches_only_our_files() {
    let env = TestEnv::new();
    let dir = setup(&env, "keep = { daily = 3 }");
    fabricate_history(&dir, 6);

    // Dry run: says what it would delete, deletes nothing, writes nothing.
    let before = names(&dir);
    let o = env.run_ok(&["run", "chat", "backup", "--dry-run"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("retention would delete 4 of 6 backups")
            && out.contains("chat-20260105-020000.db")
            && out.contains("chat-20260108-020000.db"),
        "{}",
        both(&o)
    );
    assert_eq!(names(&dir), before);

    let o = env.run_ok(&["run", "chat", "backup"]);
    crate::util::assert_stdout_has(&o, "retention deleted 4");
    let left = names(&dir);
    let ours: Vec<&String> = left
        .iter()
        .filter(|n| n.starts_with("chat-2026") && n.ends_with("-020000.db"))
        .collect();
    assert_eq!(
        ours,
        ["chat-20260109-020000.db", "chat-20260110-020000.db"],
        "{left:?}"
    );
    for foreign in [
        "notes.txt",
        "chat-2026.db",
        "chat-20200101-020000.db.bak",
        "other-20200101-020000.db",
    ] {
        assert!(
            left.contains(&foreign.to_string()),
            "{foreign} was touched: {left:?}"
        );
    }

    // The listing: today's backup kept as daily+newest+verified, the two old days as daily.
    let v = list_json(&env);
    let db = &v["databases"][0];
    assert_eq!(db["database"], "chat");
    assert_eq!(db["count"], 3);
    assert_eq!(db["expired"], 0);
    let backups = db["backups"].as_array().unwrap();
    let newest = &backups[0];
    assert_eq!(newest["verified"], "quick");
    assert_eq!(newest["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(
        newest["kept_by"],
        serde_json::json!(["daily", "newest", "newest-verified"])
    );
    assert_eq!(backups[1]["file"], "chat-20260110-020000.db");
    assert_eq!(backups[1]["kept_by"], serde_json::json!(["daily"]));
    assert_eq!(backups[1]["verified"], "quick");
    assert_eq!(
        db["total_bytes"].as_u64().unwrap(),
        backups
            .iter()
            .map(|b| b["size"].as_u64().unwrap())
            .sum::<u64>()
    );
}

#[test]
fn a_failed_newest_backup_stops_retention() {
    let env = TestEnv::new();
    let dir = setup(&env, "keep = { last = 1 }");
    fabricate_history(&dir, 3);
    std::fs::write(dir.join("chat-20260111-020000.db.failed"), b"bad").unwrap();
    record(
        dir.as_path(),
        &["chat-20260111-020000.db.failed".to_string()],
    );
    let v = list_json(&env);
    let backups = v["databases"][0]["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 4);
    assert_eq!(backups[0]["verified"], "failed");
    assert_eq!(backups[0]["kept_by"], serde_json::json!(["failed-recent"]));
    assert!(backups[1..]
        .iter()
        .all(|b| b["kept_by"] == serde_json::json!(["newest-failed"])));
    assert_eq!(v["databases"][0]["expired"], 0);

    // A new good backup: now the old ones and the failed one go, per `last = 1`.
    env.run_ok(&["run", "chat", "backup"]);
    let left: Vec<String> = names(&dir)
        .into_iter()
        .filter(|n| n.starts_with("chat-2") && !n.contains(".bak") && n != "chat-2026.db")
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(!left[0].starts_with("chat-202601"), "{left:?}");
}

#[test]
fn backups_list_human_output_and_errors() {
    let env = TestEnv::new();
    let dir = setup(&env, "");
    fabricate_history(&dir, 2);
    let o = env.run_ok(&["backups", "list", "chat"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("chat-20260110-020000") || text.contains("2026-01-10 02:00:00"),
        "{text}"
    );
    assert!(text.contains("total: 2 backups, 20 B"), "{text}");
    let o = env
        .cmd()
        .args(["backups", "list", "nosuch"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64), "{}", both(&o));
}
