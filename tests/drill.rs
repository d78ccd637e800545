//! Restore drills on real files: a bit-flipped copy, a failing assertion, manifest row counts
//! that disagree, a drill beside a backup and retention, SIGKILL mid-drill, `status --check`,
//! the manifest and `backups list` marks, journal fields and metrics.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::util::{both, wait_until, TestEnv};

/// `app/chat.db` (table `user`, `rows` rows of `size` random bytes) with `app/files.db`
/// attached as `files`, backed up into `backups/` (compressed), drilled as `drill` says.
fn setup(env: &TestEnv, rows: u32, size: u32, drill: &str) -> (PathBuf, PathBuf) {
    let db = env.sqlite(
        "app/chat.db",
        &format!(
            "CREATE TABLE user(id INTEGER PRIMARY KEY, name TEXT, pic BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < {rows})
             INSERT INTO user(name, pic) SELECT 'u' || i, randomblob({size}) FROM n;"
        ),
    );
    let files = env.sqlite(
        "app/files.db",
        "CREATE TABLE blob(id INTEGER PRIMARY KEY, data BLOB); INSERT INTO blob(data) VALUES (x'00');",
    );
    let dir = env.path("backups");
    write_config(env, &db, &files, &dir, "last = 10", drill);
    env.run_ok(&["run", "chat", "backup"]);
    (db, dir)
}

fn write_config(env: &TestEnv, db: &Path, files: &Path, dir: &Path, keep: &str, drill: &str) {
    env.config("")
        .database(
            "chat",
            db,
            &format!(
                "attach = {{ files = \"{}\" }}\n[database.backup]\ndir = \"{}\"\ncompress = \"zstd\"\nkeep = {{ {keep} }}\n[database.drill]\n{drill}\n",
                files.display(),
                dir.display()
            ),
        )
        .write();
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// The manifest entry of `file`.
fn entry(dir: &Path, file: &str) -> serde_json::Value {
    manifest(dir)["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["file"] == file)
        .cloned()
        .unwrap_or_else(|| panic!("{file} not in the manifest"))
}

/// The main database's backups, newest first.
fn main_backups(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = crate::util::names(dir)
        .into_iter()
        .filter(|n| n.starts_with("chat-"))
        .collect();
    v.sort();
    v.reverse();
    v
}

fn drill(env: &TestEnv, args: &[&str]) -> std::process::Output {
    let mut c = env.cmd();
    c.arg("drill").arg("chat").args(args);
    c.output().unwrap()
}

#[test]
fn a_good_drill_restores_every_file_of_the_run_checks_it_and_reports_each_phase() {
    let env = TestEnv::new();
    let (db, dir) = setup(
        &env,
        20,
        100,
        "assert = [\"SELECT count(*) = 20 FROM user\", \"SELECT count(*) = 1 FROM files.blob\"]",
    );
    let before = std::fs::read(&db).unwrap();
    let o = drill(&env, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let copy = &main_backups(&dir)[0];
    for want in [
        format!("{copy} from local"),
        "fetch ".into(),
        "decompress ".into(),
        "integrity_check files-".into(),
        "row counts chat-".into(),
        "assert[1] \"SELECT count(*) = 1 FROM files.blob\": ok".into(),
        "verdict: ok".into(),
    ] {
        assert!(out.contains(&want), "{want:?} not in {out}");
    }
    // Journal fields of the finish event (stderr here), and the manifest's mark.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("litekeeper_drill_backup=\"{copy}\"")),
        "{err}"
    );
    assert!(err.contains("litekeeper_drill_rto_seconds="), "{err}");
    assert!(err.contains("litekeeper_drill_rpo_seconds="), "{err}");
    assert_eq!(entry(&dir, copy)["drill"]["verdict"], "ok");
    // The live database is untouched, and the scratch copy is gone.
    assert_eq!(std::fs::read(&db).unwrap(), before);
    assert!(!env.path("state/drill/chat").exists());
    let json = env.status_json();
    let last = json["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == "drill")
        .unwrap()["last"]
        .clone();
    assert_eq!(last["outcome"], "ok");
    let c = &last["figures"]["copies"][0];
    assert_eq!(c["files"].as_array().unwrap().len(), 2, "{c}");
    assert!(c["phases"]["total_ms"].as_u64().is_some(), "{c}");
}

#[test]
fn a_bit_flipped_copy_fails_the_drill_naming_the_copy_and_is_marked() {
    let env = TestEnv::new();
    let (_db, dir) = setup(&env, 50, 200, "");
    let copy = main_backups(&dir)[0].clone();
    let path = dir.join(&copy);
    let mut bytes = std::fs::read(&path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let o = drill(&env, &[]);
    assert_eq!(o.status.code(), Some(65), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&copy) && err.contains("checksum mismatch"),
        "{err}"
    );
    let mark = entry(&dir, &copy)["drill"].clone();
    assert_eq!(mark["verdict"], "failed", "{mark}");
    assert!(
        mark["error"].as_str().unwrap().contains("checksum"),
        "{mark}"
    );
    // `backups list` says so, and its JSON carries the mark beside the old fields.
    let list = env.run_ok(&["backups", "list", "chat"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("drill: failed"), "{text}");
    let list = env.run_ok(&["backups", "list", "chat", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let b = v["databases"][0]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["file"] == copy.as_str())
        .unwrap()
        .clone();
    assert_eq!(b["drill"]["verdict"], "failed", "{b}");
    assert_eq!(b["verified"], "quick", "{b}");
    // `restore` no longer picks it by default.
    let o = env
        .cmd()
        .args(["restore", "chat", "--to"])
        .arg(env.path("r.db"))
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0), "{}", both(&o));
}

#[test]
fn a_failing_assertion_fails_the_drill_naming_the_assertion() {
    let env = TestEnv::new();
    setup(
        &env,
        5,
        10,
        "assert = [\"SELECT count(*) = 5 FROM user\", \"SELECT count(*) > 100 FROM user\", \"SELECT nope FROM user\"]",
    );
    let o = drill(&env, &[]);
    assert_eq!(o.status.code(), Some(65), "{}", both(&o));
    let all = both(&o);
    assert!(
        all.contains("assert[1] \"SELECT count(*) > 100 FROM user\": returned 0 (expected true)"),
        "{all}"
    );
    assert!(
        all.contains("assert[2] \"SELECT nope FROM user\": no such column"),
        "{all}"
    );
    assert!(
        all.contains("assert[0] \"SELECT count(*) = 5 FROM user\": ok"),
        "{all}"
    );
}

#[test]
fn manifest_row_counts_that_disagree_fail_the_drill() {
    let env = TestEnv::new();
    let (_db, dir) = setup(&env, 7, 10, "");
    let copy = main_backups(&dir)[0].clone();
    let mut m = manifest(&dir);
    for e in m["backups"].as_array_mut().unwrap() {
        if e["file"] == copy.as_str() {
            e["tables"]["user"] = 8.into();
        }
    }
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    let o = drill(&env, &[]);
    assert_eq!(o.status.code(), Some(65), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "row counts {copy} differ from the manifest (user: 7 rows, manifest 8)"
        )),
        "{err}"
    );
}

#[test]
fn a_copy_whose_drill_failed_is_not_the_newest_verified_backup_retention_keeps() {
    let env = TestEnv::new();
    let (db, dir) = setup(&env, 5, 10, "");
    std::thread::sleep(Duration::from_millis(1100));
    env.run_ok(&["run", "chat", "backup"]);
    let backups = main_backups(&dir);
    let (newest, older) = (&backups[0], &backups[1]);
    // Keep only the last one: the older copy goes, unless it is the newest verified one.
    write_config(&env, &db, &env.path("app/files.db"), &dir, "last = 1", "");
    let kept_by = |file: &str| -> Vec<String> {
        let o = env.run_ok(&["backups", "list", "chat", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["databases"][0]["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["file"] == file)
            .unwrap()["kept_by"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect()
    };
    assert!(kept_by(older).is_empty(), "{:?}", kept_by(older));
    let path = dir.join(newest);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0x80;
    std::fs::write(&path, &bytes).unwrap();
    let o = drill(&env, &[]);
    assert_eq!(o.status.code(), Some(65), "{}", both(&o));
    assert!(
        kept_by(older).contains(&"newest-verified".to_string()),
        "{:?}",
        kept_by(older)
    );
}

#[test]
fn status_check_is_critical_after_a_failed_drill_and_ok_after_a_good_one() {
    let env = TestEnv::new();
    let (db, dir) = setup(
        &env,
        5,
        10,
        "max_age = \"1h\"\nassert = [\"SELECT count(*) > 5 FROM user\"]",
    );
    let check = || env.cmd().args(["status", "--check"]).output().unwrap();
    assert_eq!(drill(&env, &[]).status.code(), Some(65));
    let o = check();
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("CRITICAL drill chat: last run failed"),
        "{out}"
    );
    let files = env.path("app/files.db");
    write_config(&env, &db, &files, &dir, "last = 10", "max_age = \"1h\"");
    let o = drill(&env, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let o = check();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    // The last good drill older than max_age is CRITICAL too.
    write_config(&env, &db, &files, &dir, "last = 10", "max_age = \"1s\"");
    std::thread::sleep(Duration::from_millis(1500));
    let o = check();
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    crate::util::assert_stdout_has(&o, "CRITICAL drill chat: last success");
}

#[test]
fn a_source_that_is_not_one_of_the_backups_remotes_is_refused() {
    let env = TestEnv::new();
    let db = env.sqlite("app/chat.db", "CREATE TABLE t(x);");
    env.config("")
        .database(
            "chat",
            &db,
            "[database.backup]\n[database.drill]\nfrom = [\"local\", \"offsite\"]\n",
        )
        .write();
    let o = env.cmd().args(["check"]).output().unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("drill.from")
            && err.contains("this database's backup has no remotes")
            && err.contains("offsite"),
        "{err}"
    );
    // And on the command line.
    env.config("")
        .database("chat", &db, "[database.backup]\n[database.drill]\n")
        .write();
    let o = drill(&env, &["--from", "offsite"]);
    assert_eq!(o.status.code(), Some(64), "{}", both(&o));
    assert!(
        both(&o).contains("unknown source \"offsite\": this database's drill reads from local"),
        "{}",
        both(&o)
    );
}

#[test]
fn no_backup_to_drill_is_missing_input() {
    let env = TestEnv::new();
    let db = env.sqlite("app/chat.db", "CREATE TABLE t(x);");
    env.config("")
        .database("chat", &db, "[database.backup]\n[database.drill]\n")
        .write();
    let o = drill(&env, &[]);
    assert_eq!(o.status.code(), Some(66), "{}", both(&o));
    assert!(both(&o).contains("no backup to drill"), "{}", both(&o));
    // Its scratch directory went with it: the next drill has nothing to clean up.
    assert!(env.path("state/drill").exists());
    assert!(!env.path("state/drill/chat").exists());
}

/// The drill is at work: its scratch directory exists from its start to its end (the copy's
/// files are there for milliseconds only, too short to wait for).
fn drilling(env: &TestEnv) -> bool {
    env.path("state/drill/chat").exists()
}

/// The backup directory's lock is held by someone else (the drill holds it shared while it
/// checksums and restores a copy). A successful probe lets go at once.
fn dir_lock_held(dir: &Path) -> bool {
    let dl = File::open(dir.join(".litekeeper.lock")).unwrap();
    matches!(dl.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

#[test]
fn a_drill_beside_a_backup_completes_and_retention_deletes_nothing_under_it() {
    let env = TestEnv::new();
    let (db, dir) = setup(&env, 500, 40_000, "");
    let drilled = main_backups(&dir)[0].clone();
    // The next backup's retention would delete the drilled copy.
    write_config(&env, &db, &env.path("app/files.db"), &dir, "last = 1", "");
    // The database's own lock is held all along: a drill never takes it.
    let lock = File::create(env.path("locks/chat.lock")).unwrap();
    lock.lock().unwrap();
    let mut d = env.spawn(&["drill", "chat"], &[]);
    // While it reads, the backup directory's lock is held shared: no writer gets it.
    wait_until(
        "the drill holding the backup directory's lock",
        Duration::from_secs(60),
        || dir_lock_held(&dir),
    );
    let dl = File::open(dir.join(".litekeeper.lock")).unwrap();
    assert!(dl.try_lock_shared().is_ok());
    drop(dl);
    drop(lock);
    let b = env
        .cmd()
        .args(["run", "chat", "backup", "--wait", "60s"])
        .output()
        .unwrap();
    assert_eq!(b.status.code(), Some(0), "{}", both(&b));
    let status = d.wait_exit(Duration::from_secs(120));
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert!(d.log().contains(&drilled), "{}", d.log());
    // Retention ran after the drill let go: the drilled copy went then, not under it.
    crate::util::assert_stdout_has(&b, "retention deleted");
}

#[test]
fn sigkill_mid_drill_leaves_the_database_and_backups_alone_and_the_next_drill_cleans_up() {
    let env = TestEnv::new();
    let (db, dir) = setup(&env, 500, 40_000, "");
    let live = std::fs::read(&db).unwrap();
    let listing = |d: &Path| -> Vec<(String, Vec<u8>)> {
        crate::util::names(d)
            .into_iter()
            .filter(|n| n != ".litekeeper.lock")
            .map(|n| (n.clone(), std::fs::read(d.join(&n)).unwrap()))
            .collect()
    };
    let backups = listing(&dir);
    let mut d = env.spawn(&["drill", "chat"], &[]);
    let started = Instant::now();
    wait_until("the drill at work", Duration::from_secs(60), || {
        drilling(&env)
    });
    d.signal(libc::SIGKILL);
    d.wait_exit(Duration::from_secs(10));
    assert!(started.elapsed() < Duration::from_secs(120));
    assert!(
        env.path("state/drill/chat").exists(),
        "nothing left to clean"
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        live,
        "the live database changed"
    );
    assert!(!crate::util::names(env.path("app").as_path())
        .iter()
        .any(|n| n.contains("tmp")));
    assert_eq!(listing(&dir), backups, "the backups changed");
    let o = drill(&env, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(
        both(&o).contains("removed the scratch copy a killed drill left behind"),
        "{}",
        both(&o)
    );
    assert!(!env.path("state/drill/chat").exists());
}

#[test]
fn metrics_carry_the_drill_per_database_and_source() {
    let env = TestEnv::new();
    let prom = env.path("metrics/lk.prom");
    std::fs::create_dir_all(prom.parent().unwrap()).unwrap();
    let db = env.sqlite(
        "app/chat.db",
        "CREATE TABLE user(id INTEGER PRIMARY KEY); INSERT INTO user DEFAULT VALUES;",
    );
    let dir = env.path("backups");
    env.config(&format!("metrics_file = \"{}\"", prom.display()))
        .database(
            "chat",
            &db,
            &format!(
                "[database.backup]\ndir = \"{}\"\n[database.drill]\n",
                dir.display()
            ),
        )
        .write();
    env.run_ok(&["run", "chat", "backup"]);
    env.run_ok(&["drill", "chat"]);
    let text = std::fs::read_to_string(&prom).unwrap();
    for want in [
        "litekeeper_drill_last_success_timestamp_seconds{database=\"chat\",source=\"local\"} ",
        "litekeeper_drill_restore_seconds{database=\"chat\",source=\"local\"} ",
        "litekeeper_last_outcome{database=\"chat\",job=\"drill\",outcome=\"ok\"} 1",
    ] {
        assert!(text.contains(want), "{want} not in {text}");
    }
}

#[test]
fn systemd_units_give_the_drill_a_timer_and_open_its_scratch_directory() {
    let env = TestEnv::new();
    let db = env.sqlite("app/chat.db", "CREATE TABLE t(x);");
    let scratch = env.path("scratch");
    env.config("timezone = \"UTC\"")
        .database(
            "chat",
            &db,
            &format!(
                "[database.backup]\n[database.drill]\nschedule = \"30 4 * * SUN\"\nscratch_dir = \"{}\"\n",
                scratch.display()
            ),
        )
        .write();
    let out = env.path("units");
    let o = env
        .cmd()
        .args(["systemd-units", "--with-units", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let timer =
        std::fs::read_to_string(out.join("litekeeper-drill@chat.timer.d/schedule.conf")).unwrap();
    assert!(
        timer.contains("OnCalendar=Sun *-*-* 04:30:00 UTC"),
        "{timer}"
    );
    for unit in ["litekeeper-drill@.service.d", "litekeeper.service.d"] {
        let paths = std::fs::read_to_string(out.join(unit).join("paths.conf")).unwrap();
        assert!(
            paths.contains(&format!("ReadWritePaths=\"-{}\"\n", scratch.display())),
            "{unit}: {paths}"
        );
    }
    let svc = std::fs::read_to_string(out.join("litekeeper-drill@.service")).unwrap();
    assert!(svc.contains(" run -- %i drill\n"), "{svc}");
    assert!(svc.contains("ProtectSystem=strict"), "{svc}");
}

#[test]
fn a_scratch_directory_inside_the_backup_directory_is_refused_at_load() {
    let env = TestEnv::new();
    let db = env.sqlite("app/chat.db", "CREATE TABLE t(x);");
    let dir = env.path("backups");
    env.config("")
        .database(
            "chat",
            &db,
            &format!(
                "[database.backup]\ndir = \"{}\"\n[database.drill]\nscratch_dir = \"{}/scratch\"\n",
                dir.display(),
                dir.display()
            ),
        )
        .write();
    let o = env.cmd().args(["drill", "chat"]).output().unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("drill.scratch_dir") && err.contains("must not contain each other"),
        "{err}"
    );
}

/// `app/chat.db` (table `user`) with `app/files.db` attached, zstd full backups and
/// incremental points into `backups/`: a full backup with `rows` users, then one point per
/// entry of `more` after adding that many users and a blob. The deltas of the main
/// database, oldest first.
fn with_points(env: &TestEnv, rows: u32, more: &[u32], drill: &str) -> (PathBuf, Vec<String>) {
    let (db, dir) = setup(env, rows, 100, "");
    let files = env.path("app/files.db");
    env.config("")
        .database(
            "chat",
            &db,
            &format!(
                "attach = {{ files = \"{}\" }}\n[database.backup]\ndir = \"{}\"\ncompress = \"zstd\"\nincremental = {{ keep = \"7d\" }}\n[database.drill]\n{drill}\n",
                files.display(),
                dir.display()
            ),
        )
        .write();
    for n in more {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute(
            &format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < {n})
                 INSERT INTO user(name, pic) SELECT 'v' || i, randomblob(100) FROM n"
            ),
            [],
        )
        .unwrap();
        let f = rusqlite::Connection::open(&files).unwrap();
        f.execute("INSERT INTO blob(data) VALUES (randomblob(50))", [])
            .unwrap();
        env.run_ok(&["run", "chat", "incremental"]);
    }
    let mut deltas: Vec<String> = crate::util::names(&dir)
        .into_iter()
        .filter(|n| n.starts_with("chat-") && n.ends_with(".delta.zst"))
        .collect();
    deltas.sort();
    (dir, deltas)
}

#[test]
fn a_drill_restores_the_newest_point_of_a_chain_and_checks_its_image() {
    let env = TestEnv::new();
    // 20 users in the full backup, then 5 and 7 more: the newest point has 32, and the
    // attached database its three blobs.
    let (dir, deltas) = with_points(
        &env,
        20,
        &[5, 7],
        "assert = [\"SELECT count(*) = 32 FROM user\", \"SELECT count(*) = 3 FROM files.blob\"]",
    );
    assert_eq!(deltas.len(), 2, "{deltas:?}");
    let full = main_backups(&dir)
        .into_iter()
        .find(|n| !n.contains(".delta"))
        .unwrap();
    let o = drill(&env, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let newest = &deltas[1];
    for want in [
        format!("{newest} from local"),
        format!("image SHA-256 {newest} (2 delta(s) after {full}): as recorded: ok"),
        "image SHA-256 files-".into(),
        format!("row counts {newest}: not recorded for incremental points"),
        "assert[0] \"SELECT count(*) = 32 FROM user\": ok".into(),
        "assert[1] \"SELECT count(*) = 3 FROM files.blob\": ok".into(),
        "verdict: ok".into(),
    ] {
        assert!(out.contains(&want), "{want:?} not in {out}");
    }
    let json = env.status_json();
    let last = json["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == "drill")
        .unwrap()["last"]
        .clone();
    let copy = &last["figures"]["copies"][0];
    assert_eq!(copy["backup"], newest.as_str(), "{copy}");
    assert!(
        copy["files"][1].as_str().unwrap().starts_with("files-")
            && copy["files"][1].as_str().unwrap().contains(".delta"),
        "{copy}"
    );

    // An older point named on the command line: its own rows.
    env.config("")
        .database(
            "chat",
            &env.path("app/chat.db"),
            &format!(
                "attach = {{ files = \"{}\" }}\n[database.backup]\ndir = \"{}\"\ncompress = \"zstd\"\nincremental = {{ keep = \"7d\" }}\n[database.drill]\nassert = [\"SELECT count(*) = 25 FROM user\"]\n",
                env.path("app/files.db").display(),
                dir.display()
            ),
        )
        .write();
    let o = drill(&env, &[&deltas[0]]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("{} from local", deltas[0]))
            && out.contains(&format!(
                "image SHA-256 {} (1 delta(s) after {full})",
                deltas[0]
            )),
        "{out}"
    );
}

#[test]
fn a_damaged_delta_fails_the_drill_of_the_newest_point_naming_the_link() {
    let env = TestEnv::new();
    let (dir, deltas) = with_points(&env, 20, &[5, 7, 3], "");
    // The attached database has no points of its own (as when it was attached after its
    // full backup's chain began): the points carry its full backup.
    let mut m = manifest(&dir);
    m["deltas"]
        .as_array_mut()
        .unwrap()
        .retain(|d| !d["file"].as_str().unwrap().starts_with("files-"));
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    // The middle delta is damaged in place (same size): the newest point cannot be reached.
    let path = dir.join(&deltas[1]);
    let mut bytes = std::fs::read(&path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let o = drill(&env, &[]);
    assert_eq!(o.status.code(), Some(65), "{}", both(&o));
    let text = both(&o);
    assert!(
        text.contains(&format!("{} (local)", deltas[2]))
            && text.contains(&format!("is broken at {}", deltas[1]))
            && text.contains(&format!("only {} restores", deltas[0])),
        "{text}"
    );
    // No full backup is marked for it: the attached database's or the chain's base is not
    // what failed.
    let m = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    assert!(!m.contains("\"drill\""), "{m}");
}

#[test]
fn newest_and_random_drills_the_newest_point_and_one_older_point() {
    let env = TestEnv::new();
    let (_dir, deltas) = with_points(&env, 10, &[1, 1, 1], "pick = \"newest+random\"");
    let o = drill(&env, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.matches("verdict: ok").count(), 2, "{out}");
    // The newest point first, then one of the three older points (two deltas, the full).
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(" from local:")).collect();
    assert!(lines[0].contains(&deltas[2]), "{out}");
    assert!(!lines[1].contains(&deltas[2]), "{out}");
}
