//! Backup directories shared and abused: two databases with one file stem, series that would
//! collide, garbage and future-dated files named like backups, two jobs writing into one
//! directory at once, file names of every shape, and one member whose name is too long.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde_json::Value;

use crate::util::{both, names, TestEnv};

fn db_with(env: &TestEnv, rel: &str, value: &str) -> PathBuf {
    env.sqlite(
        rel,
        &format!("CREATE TABLE t(x); INSERT INTO t VALUES ('{value}');"),
    )
}

fn rows(path: &Path) -> Vec<String> {
    let c = Connection::open(path).unwrap();
    let mut s = c.prepare("SELECT x FROM t ORDER BY rowid").unwrap();
    s.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn backup_stanza(name: &str, path: &Path, dir: &Path, extra: &str) -> String {
    TestEnv::database_section(
        name,
        path,
        &format!("[database.backup]\ndir = \"{}\"\n{extra}", dir.display()),
    )
}

fn configure(env: &TestEnv, stanzas: &[String]) {
    env.config("timezone = \"UTC\"")
        .text(&stanzas.concat())
        .write();
}

fn run_ok(env: &TestEnv, args: &[&str]) -> String {
    let o = env.cmd().args(args).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", both(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn list_json(env: &TestEnv, args: &[&str]) -> (Option<i32>, Value) {
    let o = env
        .cmd()
        .args(["backups", "list", "--json"])
        .args(args)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", both(&o)));
    (o.status.code(), v)
}

fn manifest_files(dir: &Path) -> Vec<String> {
    let m: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap())
        .unwrap_or_else(|e| panic!("manifest: {e}"));
    let mut v: Vec<String> = m["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["file"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn two_series_in_one_directory_are_refused_at_load() {
    let env = TestEnv::new();
    let bk = env.path("bk");
    let shop = db_with(&env, "shop/db.sqlite3", "shop");
    let blog = db_with(&env, "blog/db.sqlite3", "blog");
    let chat = db_with(&env, "chat/chat.db", "chat");
    let files = db_with(&env, "files/files.db", "files");
    let attached = db_with(&env, "chat/files.db", "attached");
    let cases: Vec<(&str, Vec<String>, [&str; 2])> = vec![
        (
            "same stem",
            vec![
                backup_stanza("shop", &shop, &bk, ""),
                backup_stanza("blog", &blog, &bk, ""),
            ],
            ["shop", "blog"],
        ),
        (
            "an attachment's alias is another database's stem",
            vec![
                backup_stanza(
                    "chat",
                    &chat,
                    &bk,
                    "",
                )
                .replace(
                    "[database.backup]",
                    &format!("attach = {{ files = \"{}\" }}\n[database.backup]", attached.display()),
                ),
                backup_stanza("files", &files, &bk.join("."), ""),
            ],
            ["chat", "files"],
        ),
        (
            "two fleets with one {stem} directory",
            vec![
                format!(
                    "[[database]]\nname = \"a-{{stem}}\"\npath = \"{}/*.sqlite3\"\n[database.backup]\ndir = \"{}/{{stem}}\"\n",
                    env.path("shop").display(),
                    bk.display()
                ),
                format!(
                    "[[database]]\nname = \"b-{{stem}}\"\npath = \"{}/*.sqlite3\"\n[database.backup]\ndir = \"{}/{{stem}}\"\n",
                    env.path("blog").display(),
                    bk.display()
                ),
            ],
            ["a-{stem}", "b-{stem}"],
        ),
        (
            "a fleet's {stem} directory is a database's directory",
            vec![
                format!(
                    "[[database]]\nname = \"a-{{stem}}\"\npath = \"{}/*.sqlite3\"\n[database.backup]\ndir = \"{}/{{stem}}\"\n",
                    env.path("blog").display(),
                    bk.display()
                ),
                backup_stanza("shop", &shop, &bk.join("db"), ""),
            ],
            ["a-{stem}", "shop"],
        ),
        (
            "a fleet's {name} directory is a database's directory",
            vec![
                format!(
                    "[[database]]\nname = \"t-{{stem}}\"\npath = \"{}/*.sqlite3\"\n[database.backup]\ndir = \"{}/{{name}}\"\n",
                    env.path("blog").display(),
                    bk.display()
                ),
                backup_stanza("shop", &shop, &bk.join("t-db"), ""),
            ],
            ["t-{stem}", "shop"],
        ),
    ];
    for (what, stanzas, [one, two]) in cases {
        configure(&env, &stanzas);
        let o = env.cmd().arg("check").output().unwrap();
        assert_eq!(o.status.code(), Some(78), "{what}: {}", both(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("\"{one}\"")) && err.contains(&format!("\"{two}\"")),
            "{what}: both databases named: {}",
            both(&o)
        );
    }
    // Each in its own directory: fine.
    configure(
        &env,
        &[
            backup_stanza("shop", &shop, &bk.join("shop"), ""),
            backup_stanza("blog", &blog, &bk.join("blog"), ""),
        ],
    );
    run_ok(&env, &["check"]);
}

/// Backups of another database in the directory (a configuration changed over time) are not
/// this database's: not listed, not restored, not deleted by its retention.
#[test]
fn the_manifest_database_field_is_honoured_everywhere() {
    let env = TestEnv::new();
    let bk = env.path("bk");
    let shop = db_with(&env, "shop/db.sqlite3", "shop");
    let blog = db_with(&env, "blog/db.sqlite3", "blog");
    let shop_only = backup_stanza("shop", &shop, &bk, "keep = { last = 1 }");
    configure(&env, std::slice::from_ref(&shop_only));
    run_ok(&env, &["run", "shop", "backup"]);
    configure(
        &env,
        &[backup_stanza("blog", &blog, &bk, "keep = { last = 1 }")],
    );
    run_ok(&env, &["run", "blog", "backup"]);
    let blog_file = names(&bk)
        .into_iter()
        .filter(|n| n.starts_with("db-"))
        .max()
        .unwrap();

    configure(&env, std::slice::from_ref(&shop_only));
    let (code, v) = list_json(&env, &["shop"]);
    assert_eq!(code, Some(0), "{v}");
    let backups = v["databases"][0]["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 1, "blog's backup listed as shop's: {v:#}");
    assert_ne!(backups[0]["file"], blog_file.as_str());

    let out = env.path("restored.db");
    let o = env
        .cmd()
        .args(["restore", "shop", "--to"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(rows(&out), ["shop"], "restore shop picked blog's backup");
    let o = env
        .cmd()
        .args(["restore", "shop", &blog_file, "--to"])
        .arg(env.path("other.db"))
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0), "blog's backup restored into shop");

    run_ok(&env, &["run", "shop", "backup"]);
    assert!(
        bk.join(&blog_file).exists(),
        "shop's retention deleted blog's backup: {:?}",
        names(&bk)
    );
    assert_eq!(
        names(&bk).iter().filter(|n| n.starts_with("db-")).count(),
        2,
        "{:?}",
        names(&bk)
    );
}

fn chat_setup(env: &TestEnv, keep: &str) -> PathBuf {
    let db = db_with(env, "app/chat.db", "chat");
    let dir = env.path("backups");
    configure(env, &[backup_stanza("chat", &db, &dir, keep)]);
    dir
}

/// Files named like backups that the manifest does not know, dated in the future: they do
/// not take the `last`/`newest` slots, are never deleted, and are reported.
#[test]
fn garbage_named_like_future_backups_never_takes_a_slot() {
    let env = TestEnv::new();
    let dir = chat_setup(&env, "keep = { last = 1 }");
    run_ok(&env, &["run", "chat", "backup"]);
    let garbage = ["chat-20991231-000000.db", "chat-20990101-000000.db"];
    for g in garbage {
        std::fs::write(dir.join(g), b"not a backup").unwrap();
    }
    let out = run_ok(&env, &["run", "chat", "backup"]);
    let real: Vec<String> = manifest_files(&dir);
    assert_eq!(real.len(), 1, "{real:?} {:?}", names(&dir));
    assert!(
        dir.join(&real[0]).exists(),
        "this run's backup was deleted: {:?}\n{out}",
        names(&dir)
    );
    for g in garbage {
        assert!(dir.join(g).exists(), "{g} deleted silently");
    }
    assert!(
        out.contains("not in the manifest") && out.contains(garbage[0]),
        "reported in the summary: {out}"
    );
    let (_, v) = list_json(&env, &["chat"]);
    let backups = v["databases"][0]["backups"].as_array().unwrap();
    let newest = backups
        .iter()
        .find(|b| b["file"] == real[0].as_str())
        .unwrap();
    assert!(
        newest["kept_by"]
            .as_array()
            .unwrap()
            .contains(&Value::from("newest")),
        "{v:#}"
    );
    for g in garbage {
        let b = backups.iter().find(|b| b["file"] == g).expect(g);
        assert!(
            b["warning"]
                .as_str()
                .is_some_and(|w| w.contains("manifest")),
            "{b}"
        );
        assert!(!b["kept_by"].as_array().unwrap().is_empty(), "{b}");
    }
}

/// The clock moved back: a verified backup dated in the future is reported and kept, never
/// preferred; the fresh backup is never deleted by its own run.
#[test]
fn after_the_clock_moved_back_the_fresh_backup_survives() {
    let env = TestEnv::new();
    let dir = chat_setup(&env, "keep = { last = 1 }");
    run_ok(&env, &["run", "chat", "backup"]);
    // Make that backup look like one taken in 2099 (a clock that was ahead).
    let file = manifest_files(&dir).remove(0);
    let future = "chat-20990101-000000.db";
    std::fs::rename(dir.join(&file), dir.join(future)).unwrap();
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    let mut m: Value = serde_json::from_str(&text).unwrap();
    m["backups"][0]["file"] = future.into();
    m["backups"][0]["created_at"] = "2099-01-01T00:00:00Z".into();
    std::fs::write(dir.join("manifest.json"), m.to_string()).unwrap();

    let out = run_ok(&env, &["run", "chat", "backup"]);
    let files = manifest_files(&dir);
    assert_eq!(files.len(), 2, "{files:?}\n{out}");
    for f in &files {
        assert!(
            dir.join(f).exists(),
            "{f} deleted: {:?}\n{out}",
            names(&dir)
        );
    }
    assert!(out.contains("in the future"), "reported: {out}");
    let (_, v) = list_json(&env, &["chat"]);
    let backups = v["databases"][0]["backups"].as_array().unwrap();
    let fut = backups.iter().find(|b| b["file"] == future).unwrap();
    assert!(
        fut["warning"]
            .as_str()
            .is_some_and(|w| w.contains("future")),
        "{fut}"
    );
    assert!(
        !fut["kept_by"]
            .as_array()
            .unwrap()
            .contains(&Value::from("newest")),
        "{fut}"
    );
    // Restore takes the real newest, not the future-dated one.
    let out_db = env.path("r.db");
    let o = env
        .cmd()
        .args(["restore", "chat", "--to"])
        .arg(&out_db)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains(future)
            && !String::from_utf8_lossy(&o.stderr).contains(future),
        "{}",
        both(&o)
    );
}

/// A temp file another live process is writing is not a leftover: the next job leaves it.
#[test]
fn leftover_cleanup_spares_a_temp_file_a_live_process_owns() {
    let env = TestEnv::new();
    let dir = chat_setup(&env, "");
    std::fs::create_dir_all(&dir).unwrap();
    let live = dir.join(".other-20260101-000000.db.litekeeper-tmp");
    let dead = dir.join(".gone-20260101-000000.db.litekeeper-tmp");
    std::fs::write(&dead, b"killed run").unwrap();
    let f = std::fs::File::create(&live).unwrap();
    // SAFETY: a valid fd of an open file.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    run_ok(&env, &["run", "chat", "backup"]);
    assert!(live.exists(), "a live job's temp file was deleted");
    assert!(!dead.exists(), "a dead run's temp file was kept");
    drop(f);
    run_ok(&env, &["run", "chat", "backup"]);
    assert!(!live.exists(), "an abandoned temp file was kept");
}

/// Two databases backing up into one directory at the same time, several rounds: every run
/// succeeds and every backup on disk is in the manifest.
#[test]
fn concurrent_backups_into_one_directory_lose_nothing() {
    let env = TestEnv::new();
    let dir = env.path("bk");
    let mut stanzas = Vec::new();
    for name in ["one", "two", "three"] {
        let p = env.sqlite(
            &format!("{name}/{name}.db"),
            "CREATE TABLE t(x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 20000) INSERT INTO t SELECT randomblob(100) FROM n;",
        );
        stanzas.push(backup_stanza(name, &p, &dir, "keep = { last = 2 }"));
    }
    configure(&env, &stanzas);
    for round in 0..4 {
        let children: Vec<_> = ["one", "two", "three"]
            .iter()
            .map(|n| {
                env.std_cmd()
                    .args(["run", n, "backup"])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let o = c.wait_with_output().unwrap();
            assert_eq!(o.status.code(), Some(0), "round {round}: {}", both(&o));
        }
        let on_disk: Vec<String> = names(&dir)
            .into_iter()
            .filter(|n| n.ends_with(".db"))
            .collect();
        assert_eq!(manifest_files(&dir), on_disk, "round {round}");
    }
}

/// File names of every shape round-trip: backed up, listed, restored and expired.
#[test]
fn odd_file_names_round_trip_through_backup_list_restore_and_retention() {
    let env = TestEnv::new();
    let dir = env.path("bk");
    let shapes = [
        (".ht.sqlite", "drupal"),
        ("app-20260102-030405.db", "stamped"),
        ("app.db", "app"),
        ("my.db.sqlite", "dotted"),
        ("my app.sqlite", "spaced"),
        ("x.zst.failed.db", "suffixes"),
    ];
    let mut stanzas = Vec::new();
    for (file, name) in shapes {
        let p = db_with(&env, &format!("data/{file}"), name);
        stanzas.push(backup_stanza(name, &p, &dir, "keep = { last = 1 }"));
    }
    configure(&env, &stanzas);
    run_ok(&env, &["check"]);
    for (_, name) in shapes {
        run_ok(&env, &["run", name, "backup"]);
    }
    for (_, name) in shapes {
        run_ok(&env, &["run", name, "backup"]);
    }
    let (code, v) = list_json(&env, &[]);
    assert_eq!(code, Some(0), "{v:#}");
    for (i, (file, name)) in shapes.iter().enumerate() {
        let d = &v["databases"][i];
        assert_eq!(d["database"], *name);
        assert_eq!(d["count"], 1, "{file}: retention or listing lost it: {d:#}");
        let f = d["backups"][0]["file"].as_str().unwrap();
        assert!(!f.starts_with('.'), "{file}: hidden backup {f}");
        let out = env.path(&format!("restored-{name}.db"));
        let o = env
            .cmd()
            .args(["restore", name, "--to"])
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{file}: {}", both(&o));
        assert_eq!(rows(&out), [*name], "{file}");
    }
    let backups = names(&dir)
        .into_iter()
        .filter(|n| n.ends_with(".db"))
        .count();
    assert_eq!(backups, shapes.len(), "{:?}", names(&dir));
}

fn fleet_config(env: &TestEnv, name: &str) {
    env.write_config(&format!(
        "{}[[database]]\nname = \"{name}\"\npath = \"{}/*.db\"\n[database.backup]\ndir = \"{}/{{name}}\"\n",
        env.daemon_section("timezone = \"UTC\""),
        env.path("tenants").display(),
        env.path("bk").display()
    ));
}

/// Long file names. A fleet refuses a member whose stem could not make file names (over 200
/// bytes): the run says so naming the file and the limit, and backs up the others. A plain
/// database with a long file name fails its backup naming the file and the 255-byte limit. And
/// one database whose backups cannot be listed (its directory name is too long to read) is
/// reported in its own entry while the document stays valid and complete (exit 74).
#[test]
fn a_member_with_a_long_name_breaks_only_its_own_entry() {
    let env = TestEnv::new();
    db_with(&env, "tenants/good.db", "good");
    // SQLite cannot create its journal beside a 255-byte name: made under short ones.
    // 244 bytes: the file and its `-journal` fit (SQLite opens it), its backups' names not.
    let long = "a".repeat(244);
    let longest = "b".repeat(252);
    for stem in [&long, &longest] {
        let short = db_with(&env, "tenants/long.tmp", "long");
        std::fs::rename(&short, env.path(&format!("tenants/{stem}.db"))).unwrap();
    }
    assert_eq!(format!("{longest}.db").len(), 255);

    // Fleet: both long files are no members, named with the limit; the good one is backed up.
    fleet_config(&env, "{stem}");
    let o = env
        .cmd()
        .args(["run", "tenants", "backup"])
        .output()
        .unwrap();
    let text = both(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    for stem in [&long, &longest] {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("{stem}.db")) && l.contains("is no member"))
            .unwrap_or_else(|| panic!("{stem}: {text}"));
        assert!(line.contains("more than 200"), "{line}");
    }
    assert!(env.path("bk/good").exists(), "{text}");
    let (code, v) = list_json(&env, &["tenants"]);
    assert_eq!(code, Some(0), "{v:#}");
    let dbs = v["databases"].as_array().unwrap();
    assert_eq!(dbs.len(), 1, "{v:#}");
    assert_eq!(dbs[0]["database"], "good");
    assert_eq!(dbs[0]["count"], 1, "{v:#}");

    // Plain databases: the long file's backup fails naming it and the limit; a backup
    // directory whose name is too long to read breaks only its own listing entry.
    let too_long_dir = env.path(&format!("bk/{}", "c".repeat(256)));
    db_with(&env, "other/u.db", "u");
    env.config("timezone = \"UTC\"")
        .text(&backup_stanza(
            "good",
            &env.path("tenants/good.db"),
            &env.path("bk/good"),
            "",
        ))
        .text(&backup_stanza(
            "long",
            &env.path(&format!("tenants/{long}.db")),
            &env.path("bk/long"),
            "",
        ))
        .text(&backup_stanza(
            "unlistable",
            &env.path("other/u.db"),
            &too_long_dir,
            "",
        ))
        .write();
    let o = env.cmd().args(["run", "long", "backup"]).output().unwrap();
    let text = both(&o);
    assert_ne!(o.status.code(), Some(0), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("litekeeper:") && l.contains(&long))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("255") && line.contains(&format!("{long}.db")),
        "{line}"
    );
    let (code, v) = list_json(&env, &[]);
    assert_eq!(code, Some(74), "{v:#}");
    let dbs = v["databases"].as_array().unwrap();
    assert_eq!(dbs.len(), 3, "{v:#}");
    let good = dbs.iter().find(|d| d["database"] == "good").unwrap();
    assert!(good["error"].is_null(), "{good:#}");
    assert_eq!(good["count"], 1, "{good:#}");
    let bad = dbs.iter().find(|d| d["database"] == "unlistable").unwrap();
    assert!(
        bad["error"]
            .as_str()
            .is_some_and(|e| e.contains("255 bytes")),
        "{bad:#}"
    );
    let o = env.cmd().args(["backups", "list"]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("good") && text.contains("unlistable") && text.contains("255 bytes"),
        "{}",
        both(&o)
    );
}

/// Both copy methods write into a temp file their run owns (created empty and flocked first),
/// compressed or not, and the result restores.
#[test]
fn vacuum_into_and_zstd_write_into_owned_temp_files() {
    let env = TestEnv::new();
    let dir = env.path("bk");
    let db = db_with(&env, "app/chat.db", "chat");
    for extra in [
        "method = \"vacuum_into\"",
        "method = \"vacuum_into\"\ncompress = \"zstd\"",
        "compress = \"zstd\"",
    ] {
        configure(&env, &[backup_stanza("chat", &db, &dir, extra)]);
        run_ok(&env, &["run", "chat", "backup"]);
        let out = env.path("r.db");
        let _ = std::fs::remove_file(&out);
        let o = env
            .cmd()
            .args(["restore", "chat", "--to"])
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{extra}: {}", both(&o));
        assert_eq!(rows(&out), ["chat"], "{extra}");
    }
    let temps: Vec<String> = names(&dir)
        .into_iter()
        .filter(|n| n.contains("litekeeper-tmp"))
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
}

/// Hand-added manifest entries for database `a` (a's checksum, the right size, an old date)
/// naming another database's backup and the directory's own lock file: a's retention never
/// deletes them (neither is a backup name of a's series), reports them, and `backups list`
/// does not tell the operator to remove litekeeper's own files.
#[test]
fn retention_deletes_only_backup_names_of_its_own_series() {
    let env = TestEnv::new();
    let bk = env.path("bk");
    let a = db_with(&env, "a.db", "a");
    let b = db_with(&env, "b.db", "b");
    configure(
        &env,
        &[
            backup_stanza("a", &a, &bk, "keep = { last = 2 }"),
            backup_stanza("b", &b, &bk, "keep = { last = 3 }"),
        ],
    );
    run_ok(&env, &["run", "a", "backup"]);
    run_ok(&env, &["run", "b", "backup"]);
    let b_file = names(&bk)
        .into_iter()
        .find(|n| n.starts_with("b-"))
        .unwrap();
    let path = bk.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let a_entry = m["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["database"] == "a")
        .unwrap()
        .clone();
    let forged = [b_file.as_str(), ".litekeeper.lock", "manifest.json"];
    for f in forged {
        let mut e = a_entry.clone();
        e["file"] = f.into();
        e["size"] = std::fs::metadata(bk.join(f)).unwrap().len().into();
        e["created_at"] = "2020-01-02T00:00:00Z".into();
        m["backups"].as_array_mut().unwrap().push(e);
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let o = env.cmd().args(["run", "a", "backup"]).output().unwrap();
    let out = both(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    for f in forged {
        assert!(
            bk.join(f).exists(),
            "a's retention deleted {f}: {:?}\n{out}",
            names(&bk)
        );
        assert!(out.contains(f), "{f} not reported: {out}");
    }
    assert_eq!(rows(&bk.join(&b_file)), ["b"]);
    let (_, v) = list_json(&env, &["a"]);
    let text = v.to_string();
    for own in [".litekeeper.lock", "manifest.json"] {
        for w in v["databases"][0]["warnings"].as_array().unwrap() {
            let w = w.as_str().unwrap();
            assert!(
                !(w.contains(own) && w.contains("by hand")),
                "advises removing {own}: {w}"
            );
        }
        for e in v["databases"][0]["backups"].as_array().unwrap() {
            if e["file"] == own {
                let w = e["warning"].as_str().unwrap_or("");
                assert!(!w.contains("remove"), "advises removing {own}: {w}");
                assert!(!e["kept_by"].as_array().unwrap().is_empty(), "{e}");
            }
        }
    }
    assert!(
        text.contains(&b_file),
        "b's file not reported in a's list: {v:#}"
    );
}

/// A FIFO where the backup directory's lock file belongs is refused with its path, like a
/// special file in place of a database's lock: never opened as if it were a file and flocked.
#[test]
fn a_fifo_as_the_backup_directory_lock_is_refused_with_its_path() {
    use std::os::unix::fs::FileTypeExt;
    let env = TestEnv::new();
    let dir = chat_setup(&env, "");
    run_ok(&env, &["run", "chat", "backup"]);
    let before = names(&dir);
    let lock = dir.join(".litekeeper.lock");
    std::fs::remove_file(&lock).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &lock,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let o = env.cmd().args(["run", "chat", "backup"]).output().unwrap();
    let out = both(&o);
    assert_eq!(o.status.code(), Some(73), "{out}");
    assert!(
        out.contains(&lock.display().to_string()) && out.contains("FIFO"),
        "the refusal names the lock file and what it is: {out}"
    );
    assert!(
        std::fs::symlink_metadata(&lock)
            .unwrap()
            .file_type()
            .is_fifo(),
        "the FIFO was replaced"
    );
    assert_eq!(names(&dir), before, "a backup was written anyway");
}
