//! A restore of a database with attached ones is all or nothing: every image is built and
//! checked before any live file is touched, and a failure at any file, even in the swap of the
//! second one, leaves every live file byte-identical to before (in place) or no file of the
//! set behind (`--to`).

use std::path::{Path, PathBuf};
use std::process::Command;

use rusqlite::Connection;
use serde_json::Value;

use crate::util::{assert_stderr_has, both, TestEnv};

/// `app.db` with `files.db` attached, a full backup of both, one incremental point, then more
/// rows in both (so the live files differ from the point). Returns the point's time.
fn set_with_a_point() -> (TestEnv, PathBuf, PathBuf, String) {
    let (env, db, files, dir) = crate::incremental::app_with_files("");
    let write = |from: i64, to: i64| {
        let c = Connection::open(&db).unwrap();
        c.execute("ATTACH ?1 AS files", [files.to_str().unwrap()])
            .unwrap();
        let tx = c.unchecked_transaction().unwrap();
        for id in from..=to {
            tx.execute("INSERT INTO n(id, pad) VALUES (?1, randomblob(500))", [id])
                .unwrap();
            tx.execute(
                "INSERT INTO files.f(id, pad) VALUES (?1, randomblob(500))",
                [id],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    };
    write(1, 100);
    env.run_ok(&["run", "app", "backup"]);
    write(101, 200);
    env.run_ok(&["run", "app", "incremental"]);
    write(201, 300);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let at = manifest["deltas"][0]["created_at"]
        .as_str()
        .unwrap()
        .to_string();
    for p in [&db, &files] {
        assert!(
            !crate::util::sidecar(p, "-wal").exists(),
            "{} is whole",
            p.display()
        );
    }
    (env, db, files, at)
}

/// The names in the directory of `p` that a restore may have left: kept previous files,
/// temp files, sidecars.
fn leftovers(p: &Path) -> Vec<String> {
    crate::util::names(p.parent().unwrap())
        .into_iter()
        .filter(|n| n.contains("pre-restore") || n.contains("litekeeper-tmp") || n.contains("-wal"))
        .collect()
}

#[test]
fn restore_in_place_failing_at_the_attached_file_leaves_both_live_files_as_they_were() {
    let (env, db, files, at) = set_with_a_point();
    let before = (std::fs::read(&db).unwrap(), std::fs::read(&files).unwrap());
    // The attached file's restored copy cannot be written: its temp name is taken by a
    // directory (a write failure after the main file's image was built).
    let blocker = files.with_file_name(".files.db.litekeeper-tmp");
    std::fs::create_dir_all(blocker.join("x")).unwrap();
    let o = env
        .cmd()
        .args(["restore", "app", "--at", &at, "--in-place"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(73), "{}", both(&o));
    assert_stderr_has(&o, ".files.db.litekeeper-tmp");
    assert!(
        std::fs::read(&db).unwrap() == before.0,
        "app.db changed: {}",
        both(&o)
    );
    assert!(
        std::fs::read(&files).unwrap() == before.1,
        "files.db changed"
    );
    std::fs::remove_dir_all(&blocker).unwrap();
    assert_eq!(leftovers(&db), Vec::<String>::new());
}

/// Clears the immutable flag it set, even when the test fails.
struct Immutable(PathBuf);

impl Immutable {
    fn set(p: &Path) -> Option<Immutable> {
        let ok = Command::new("chattr")
            .arg("+i")
            .arg(p)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Immutable(p.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn a_failed_swap_of_the_attached_file_puts_the_main_one_back() {
    if !crate::util::root_or_skip("chattr +i needs root") {
        return;
    }
    let (env, db, files, at) = set_with_a_point();
    let before = (std::fs::read(&db).unwrap(), std::fs::read(&files).unwrap());
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&db).unwrap());
    // An immutable attached file cannot be linked or renamed: its swap fails after the main
    // file's has been done.
    let Some(flag) = Immutable::set(&files) else {
        eprintln!("skipped: chattr +i is not supported here");
        return;
    };
    let o = env
        .cmd()
        .args(["restore", "app", "--at", &at, "--in-place"])
        .output()
        .unwrap();
    drop(flag);
    assert_eq!(o.status.code(), Some(74), "{}", both(&o));
    assert_stderr_has(&o, "put back");
    assert!(
        std::fs::read(&db).unwrap() == before.0,
        "app.db changed: {}",
        both(&o)
    );
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&db).unwrap()),
        ino,
        "app.db is its previous file again"
    );
    assert!(
        std::fs::read(&files).unwrap() == before.1,
        "files.db changed"
    );
    assert_eq!(leftovers(&db), Vec::<String>::new());
    // Nothing left for the next run to finish: a job runs without a word about a restore.
    let o = env.run_ok(&["run", "app", "backup"]);
    assert!(!both(&o).contains("interrupted"), "{}", both(&o));
}

#[test]
fn restore_to_failing_at_the_attached_file_leaves_no_file_of_the_set() {
    let (env, _db, _files, at) = set_with_a_point();
    let out = env.path("out");
    std::fs::create_dir(&out).unwrap();
    let to = out.join("r.db");
    std::fs::create_dir_all(out.join(".r-files.db.litekeeper-tmp").join("x")).unwrap();
    let o = env
        .cmd()
        .args(["restore", "app", "--at", &at, "--to"])
        .arg(&to)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(73), "{}", both(&o));
    assert_eq!(
        crate::util::names(&out),
        [".r-files.db.litekeeper-tmp"],
        "{}",
        both(&o)
    );
}

/// A restore killed between its swaps leaves a marker beside the main file: every job of the
/// database warns about it in one line, and the next in-place restore finishes the set (here
/// the killed one had swapped the main file: its previous file comes back first, then the
/// whole set is restored and the marker goes).
#[test]
fn a_marker_left_by_a_killed_restore_is_named_by_jobs_and_cleared_by_the_next_restore() {
    let (env, db, files, at) = set_with_a_point();
    let before = std::fs::read(&db).unwrap();
    // The state a kill after the main file's swap leaves: its previous file kept aside, a
    // restored file (here a stand-in) at the live name, and the marker.
    let keep = db.with_file_name("app.db.pre-restore-20261206-000000");
    std::fs::rename(&db, &keep).unwrap();
    Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE half(x)")
        .unwrap();
    let marker = db.with_file_name(".app.db.litekeeper-restore");
    let text = serde_json::json!({
        "what": "test",
        "database": "app",
        "started": "2026-12-06T00:00:00Z",
        "files": [
            { "live": db, "previous_kept_as": keep },
            { "live": files, "previous_kept_as": files.with_file_name("files.db.pre-restore-20261206-000000") },
        ],
    });
    std::fs::write(&marker, text.to_string()).unwrap();
    let o = env
        .cmd()
        .args(["run", "app", "incremental", "--dry-run"])
        .output()
        .unwrap();
    assert_stderr_has(
        &o,
        ".app.db.litekeeper-restore: a restore of \"app\" in place was interrupted",
    );
    let o = env
        .cmd()
        .args(["restore", "app", "--at", &at, "--in-place"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    crate::util::assert_stdout_has(&o, "put back the previous");
    assert!(!marker.exists() && !keep.exists());
    // The previous file the killed restore had kept is what this restore kept in turn.
    let kept: Vec<String> = crate::util::names(&env.path(""))
        .into_iter()
        .filter(|n| n.starts_with("app.db.pre-restore-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(std::fs::read(env.path(&kept[0])).unwrap() == before);
    assert_eq!(
        crate::util::query_i64(&db, "SELECT count(*) FROM n"),
        200,
        "the point's rows"
    );
}

/// `restore --at … --to` of a database with an attached one, SIGKILLed at each rename it
/// makes in turn (strace injects the signal on entry to the N-th rename): after every kill
/// either the set is whole, or no file of it is there, or a marker beside the main target
/// says it is incomplete; and the same restore run again finishes with both files at the
/// point (or, the set being whole, refuses the existing name and leaves no marker).
#[test]
fn a_restore_to_killed_between_its_files_is_never_half_done_unsaid() {
    if !crate::util::have_strace() {
        return;
    }
    let (env, _db, _files, at) = set_with_a_point();
    for n in 1.. {
        let out = env.path(&format!("out-{n}"));
        std::fs::create_dir(&out).unwrap();
        let (main, attached) = (out.join("r.db"), out.join("r-files.db"));
        let base = env.std_cmd();
        let o = Command::new("strace")
            .args(["-f", "-qq", "-o", "/dev/null"])
            .args(["-e", "trace=rename,renameat,renameat2"])
            .arg("-e")
            .arg(format!(
                "inject=rename,renameat,renameat2:signal=KILL:when={n}"
            ))
            .arg(base.get_program())
            .args(base.get_args())
            .args(["restore", "app", "--at", &at, "--to"])
            .arg(&main)
            .env_clear()
            .envs(base.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
            .output()
            .unwrap();
        if o.status.code() == Some(0) {
            assert!(n > 2, "the restore made {} rename(s)", n - 1);
            break;
        }
        let marker = out.join(".r.db.litekeeper-restore");
        let (m, a) = (main.exists(), attached.exists());
        assert!(
            (m && a) || (!m && !a) || marker.exists(),
            "kill at rename {n}: r.db {m}, r-files.db {a}, and no marker: {:?}",
            crate::util::names(&out)
        );
        let again = env.restore_to(&["app", "--at", &at], &main);
        if m && a {
            assert!(
                matches!(again.status.code(), Some(0 | 73)),
                "{}",
                both(&again)
            );
        } else {
            assert_eq!(
                again.status.code(),
                Some(0),
                "kill at {n}: {}",
                both(&again)
            );
        }
        assert!(
            !marker.exists(),
            "kill at {n}: {:?}",
            crate::util::names(&out)
        );
        assert_eq!(crate::util::query_i64(&main, "SELECT count(*) FROM n"), 200);
        assert_eq!(
            crate::util::query_i64(&attached, "SELECT count(*) FROM f"),
            200
        );
    }
}
