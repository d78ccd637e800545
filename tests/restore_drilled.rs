//! Restore and the drill's verdicts: a copy whose last drill failed is never restored by
//! default, `--at` included (local and from a remote), and when every copy failed its drill
//! the error says exactly that, naming the newest copy, when its drill failed and how to
//! restore it anyway.

use std::path::Path;

use serde_json::{json, Value};

use crate::incremental::{insert, setup};
use crate::probe::{chain_on_file_remote, remote_manifest, restore_from, tamper};
use crate::util::{both, query_i64, stderr, TestEnv};

const FAILED_AT: &str = "2026-12-05T04:30:00Z";

fn failed_mark() -> Value {
    json!({ "at": FAILED_AT, "verdict": "failed", "error": "assertion 1 is false" })
}

/// Mark the local backups `files` of `dir` as having failed their last drill.
fn fail_local_drill(dir: &Path, files: &[&str]) {
    let path = dir.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for e in m["backups"].as_array_mut().unwrap() {
        if files.contains(&e["file"].as_str().unwrap()) {
            e["drill"] = failed_mark();
        }
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// The full backups of the main database in `dir`'s manifest, oldest first.
fn fulls(dir: &Path) -> Vec<String> {
    let m: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let mut f: Vec<String> = m["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["file"].as_str().unwrap().to_string())
        .collect();
    f.sort();
    f
}

/// Two full backups (100 rows, then 301) and a delta on the newer (402 rows); the newer
/// full's drill failed. `restore --at latest` restores the older full, warns naming the
/// skipped full and its failed drill, and exits 65 (as for a chain whose base is gone).
/// When every full failed its drill, the error names the newest and the override.
#[test]
fn restore_at_skips_a_full_whose_drill_failed_and_says_so() {
    let (env, db, dir) = setup("7d", "keep = { last = 5 }");
    insert(&db, 1, 100);
    env.run_ok(&["run", "app", "backup"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    insert(&db, 200, 400);
    env.run_ok(&["run", "app", "backup"]);
    insert(&db, 500, 600);
    env.run_ok(&["run", "app", "incremental"]);
    let f = fulls(&dir);
    assert_eq!(f.len(), 2, "{f:?}");
    fail_local_drill(&dir, &[&f[1]]);

    let to = env.path("r.db");
    let o = env.restore_to(&["app", "--at", "latest"], &to);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(65), "{}", both(&o));
    assert!(err.contains("warning") && err.contains(&f[1]), "{err}");
    assert!(err.contains("drill failed"), "{err}");
    assert_eq!(query_i64(&to, "SELECT count(*) FROM n"), 100);

    // Every full failed its drill: no generic "no full backup", but which and how.
    fail_local_drill(&dir, &[&f[0]]);
    let o = env.restore_to(&["app", "--at", "latest"], &env.path("r2.db"));
    assert_eq!(o.status.code(), Some(66), "{}", both(&o));
    let err = stderr(&o);
    assert!(err.contains("failed its restore drill"), "{err}");
    assert!(
        err.contains(&f[1]) && err.contains("2026-12-05 04:30:00 UTC"),
        "{err}"
    );
    assert!(
        err.contains(&format!("litekeeper restore app {}", f[1])),
        "{err}"
    );
    assert!(!env.path("r2.db").exists());
}

/// Plain `restore` when the only copy failed its drill: the error names it, its drill's
/// time and the override; the override (naming the copy) restores it.
#[test]
fn restore_when_every_local_copy_failed_its_drill_names_the_newest_and_the_override() {
    let (env, db, dir) = setup("7d", "keep = { last = 5 }");
    insert(&db, 1, 100);
    env.run_ok(&["run", "app", "backup"]);
    let f = fulls(&dir);
    fail_local_drill(&dir, &[&f[0]]);
    let o = env.restore_to(&["app"], &env.path("r.db"));
    assert_eq!(o.status.code(), Some(66), "{}", both(&o));
    let err = stderr(&o);
    assert!(err.contains("failed its restore drill"), "{err}");
    assert!(
        err.contains(&f[0]) && err.contains("2026-12-05 04:30:00 UTC"),
        "{err}"
    );
    assert!(err.contains("assertion 1 is false"), "{err}");
    assert!(
        err.contains(&format!("litekeeper restore app {}", f[0])),
        "{err}"
    );
    assert!(!env.path("r.db").exists());
    env.restore_ok(&["app", &f[0]], &env.path("r.db"));
    assert_eq!(query_i64(&env.path("r.db"), "SELECT count(*) FROM n"), 100);
}

/// The remote twin of `restore_at_skips_a_full_whose_drill_failed_and_says_so`: the full copy
/// the chain starts from failed its drill (remote manifest); `--at latest --from` restores
/// the older full copy (500 rows, not the point's 501) with the warning and exit 65.
#[test]
fn remote_restore_at_skips_a_full_copy_whose_drill_failed_and_says_so() {
    let env = TestEnv::new();
    let identity = chain_on_file_remote(&env, "last = 5", 2);
    let m = remote_manifest(&env);
    let base = m["deltas"][0]["base"].as_str().unwrap().to_string();
    tamper(&env, |m| {
        for c in m["copies"].as_array_mut().unwrap() {
            if c["local_file"].as_str() == Some(base.as_str()) {
                c["drill"] = failed_mark();
            }
        }
    });
    let to = env.path("r.db");
    let o = restore_from(&env, &identity, &["--at", "latest"], &to);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(65), "{}", both(&o));
    assert!(err.contains("warning") && err.contains(&base), "{err}");
    assert!(err.contains("drill failed"), "{err}");
    assert_eq!(query_i64(&to, "SELECT count(*) FROM m"), 500);
}

/// Every remote copy failed its drill: `restore --from` says so (not "has no copy at all"),
/// naming the newest copy, its drill's time and the override; `--at` likewise.
#[test]
fn remote_restore_when_every_copy_failed_its_drill_names_the_newest_and_the_override() {
    let env = TestEnv::new();
    let identity = chain_on_file_remote(&env, "last = 5", 2);
    let newest = remote_manifest(&env)["deltas"][0]["base"]
        .as_str()
        .unwrap()
        .to_string();
    tamper(&env, |m| {
        for c in m["copies"].as_array_mut().unwrap() {
            c["drill"] = failed_mark();
        }
    });
    for extra in [&[][..], &["--at", "latest"][..]] {
        let to = env.path("r.db");
        let o = restore_from(&env, &identity, extra, &to);
        assert_eq!(o.status.code(), Some(66), "{extra:?}: {}", both(&o));
        let err = stderr(&o);
        assert!(!err.contains("no copy"), "{err}");
        assert!(err.contains("failed its restore drill"), "{err}");
        assert!(
            err.contains(&newest) && err.contains("2026-12-05 04:30:00 UTC"),
            "{err}"
        );
        assert!(
            err.contains(&format!("litekeeper restore chat {newest} --from offsite")),
            "{err}"
        );
        assert!(!to.exists());
    }
}
