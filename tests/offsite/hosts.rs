//! Many hosts, one bucket: two hosts (two configurations: state, backups and a database `app`
//! with different rows each, `[daemon] host` naming them) against one remote. A host writes
//! only the remote manifests it owns: a second host on the same prefix is refused before any
//! object is put or deleted; `{host}` in the url gives each its own prefix; `backups push
//! --adopt` takes a prefix over; reading and restoring another host's copies needs nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::fixture::*;
use crate::util::{both, query_i64, TestEnv};

/// One simulated host: its own temp dir (state, locks, backups, `app.db` with `rows` rows).
struct Host {
    env: TestEnv,
    name: &'static str,
    rows: i64,
}

impl Host {
    /// Host `name` copying `app` to `remote` (a `[[remote]]` body without its name), with
    /// `backup_extra` lines in `[database.backup]`.
    fn new(name: &'static str, rows: i64, remote: &str, backup_extra: &str) -> Host {
        let env = TestEnv::new();
        let db = env.sqlite(
            "app.db",
            &format!(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, host TEXT);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < {rows})
                 INSERT INTO t(host) SELECT '{name}' FROM n;"
            ),
        );
        env.write_config(&format!(
            "{}[[database]]\nname = \"app\"\npath = \"{}\"\n[database.backup]\ndir = \"{}\"\nremotes = [\"offsite\"]\n{backup_extra}\n\n[[remote]]\nname = \"offsite\"\n{remote}\n",
            env.daemon_section(&format!("host = \"{name}\"")),
            db.display(),
            env.path("backups").display()
        ));
        Host { env, name, rows }
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        run(&self.env, args)
    }

    /// `ARGS`, which must exit with `code`.
    fn code(&self, args: &[&str], code: i32) -> std::process::Output {
        let o = self.run(args);
        assert_eq!(
            o.status.code(),
            Some(code),
            "{} {args:?}: {}",
            self.name,
            both(&o)
        );
        o
    }

    fn backup(&self) -> std::process::Output {
        self.code(&["run", "app", "backup"], 0)
    }

    /// The local backup files of `app`.
    fn local(&self) -> Vec<String> {
        crate::util::names(&self.env.path("backups"))
            .into_iter()
            .filter(|n| n.starts_with("app-"))
            .collect()
    }

    /// `restore app --from offsite` into a new file: its row count and hosts.
    fn restore_from_remote(&self, identity: &Path, extra: &[&str]) -> (i64, i64) {
        let to = self.env.path("restored.db");
        let _ = std::fs::remove_file(&to);
        let (to_s, id) = (to.display().to_string(), identity.display().to_string());
        let mut args = vec![
            "restore",
            "app",
            "--from",
            "offsite",
            "--to",
            &to_s,
            "--identity",
            &id,
        ];
        args.extend_from_slice(extra);
        self.code(&args, 0);
        (
            query_i64(&to, "SELECT count(*) FROM t"),
            query_i64(
                &to,
                &format!("SELECT count(*) FROM t WHERE host = '{}'", self.name),
            ),
        )
    }
}

/// Every backup kept, locally and remotely.
const KEEP_ALL: &str = "keep = { last = 10 }\nremote_keep = { last = 10 }";
/// Every local backup kept, only the newest copy on the remote.
const KEEP_ONE_REMOTE: &str = "keep = { last = 10 }\nremote_keep = { last = 1 }";

/// A `file://` remote on `dir` (`tail` appended to the url, e.g. "/{host}").
fn dir_remote(dir: &Path, tail: &str, public: &str) -> String {
    format!(
        "url = \"file://{}{tail}\"\nencrypt_to = [\"{public}\"]\n",
        dir.display()
    )
}

/// Every file below `dir` with its bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

fn manifest_at(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A shared `nas/` directory (in its own temp dir) and an age key pair.
struct Shared {
    env: TestEnv,
    identity: PathBuf,
    public: String,
}

impl Shared {
    fn new() -> Shared {
        let env = TestEnv::new();
        std::fs::create_dir(env.path("nas")).unwrap();
        let (identity, public) = keygen(&env);
        Shared {
            env,
            identity,
            public,
        }
    }
    fn nas(&self) -> PathBuf {
        self.env.path("nas")
    }
    fn remote(&self) -> String {
        dir_remote(&self.nas(), "", &self.public)
    }
    fn manifest(&self) -> serde_json::Value {
        manifest_at(&self.nas().join("app/litekeeper-manifest.json"))
    }
}

/// A shared remote, web1 (30 rows, everything kept) with one backup copied there, and web2
/// (70 rows, `web2_keep`) on the same prefix.
fn two_hosts(web2_keep: &str) -> (Shared, Host, Host) {
    let s = Shared::new();
    let web1 = Host::new("web1", 30, &s.remote(), KEEP_ALL);
    let web2 = Host::new("web2", 70, &s.remote(), web2_keep);
    web1.backup();
    (s, web1, web2)
}

/// The refusal line: names the remote, the object prefix, both hosts and both ways out.
fn assert_refusal(o: &std::process::Output, owner: &str, this: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("belong to host"))
        .unwrap_or_else(|| panic!("no refusal line: {}", both(o)));
    for needle in [
        "remote \"offsite\"",
        "app/",
        &format!("host \"{owner}\""),
        &format!("this host is \"{this}\""),
        "{host}",
        "backups push app offsite --adopt",
    ] {
        assert!(line.contains(needle), "{needle:?} not in: {line}");
    }
}

#[test]
fn a_second_host_on_the_same_prefix_is_refused_and_the_first_hosts_copies_stay() {
    let (s, web1, web2) = two_hosts(KEEP_ONE_REMOTE);
    web1.backup();
    let before = tree(&s.nas());
    let m = s.manifest();
    assert_eq!(m["host"], "web1", "{m}");
    assert_eq!(listed_fulls(&m), web1.local());

    // web2's backup is kept locally, its copy pending; nothing of web1's is touched, and its
    // retention (last = 1) deletes nothing.
    let o = web2.code(&["run", "app", "backup"], 78);
    assert_refusal(&o, "web1", "web2");
    assert_eq!(tree(&s.nas()), before, "the remote is untouched");
    let local = web2.local();
    assert_eq!(local.len(), 1, "{local:?}");
    assert_eq!(
        pending(&web2.env),
        vec![("offsite".to_string(), local[0].clone())]
    );
    // Pushing again by hand is refused the same way.
    let o = web2.code(&["backups", "push", "app"], 78);
    assert_refusal(&o, "web1", "web2");
    assert_eq!(tree(&s.nas()), before);
    assert_eq!(pending(&web2.env).len(), 1);

    // web1 goes on as before.
    web1.backup();
    assert_eq!(listed_fulls(&s.manifest()), web1.local());
    assert_eq!(s.manifest()["host"], "web1");
}

#[test]
fn remote_retention_from_the_other_host_deletes_nothing() {
    let (s, web1, web2) = two_hosts(KEEP_ONE_REMOTE);
    web1.backup();
    let before = tree(&s.nas());
    // web2 has a pending copy whose local file is gone: a push stores nothing and goes on to
    // remote retention, which must not judge web1's copies.
    web2.code(&["run", "app", "backup"], 78);
    for f in web2.local() {
        std::fs::remove_file(web2.env.path("backups").join(f)).unwrap();
    }
    let o = web2.code(&["backups", "push", "app"], 78);
    assert_refusal(&o, "web1", "web2");
    assert_eq!(tree(&s.nas()), before, "nothing deleted");
}

#[test]
fn host_in_the_url_gives_each_host_its_own_prefix_on_s3_and_each_restores_its_rows() {
    let moto = Moto::start();
    moto.bucket(BUCKET);
    let s = Shared::new();
    let body = format!(
        "url = \"s3://{BUCKET}/lk/{{host}}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\ntimeout = \"5s\"\nencrypt_to = [\"{}\"]\n",
        moto.endpoint(),
        s.public
    );
    let hosts = [
        Host::new("web1", 30, &body, ""),
        Host::new("web2", 70, &body, ""),
    ];
    for h in &hosts {
        h.backup();
    }
    for h in &hosts {
        let key = format!("lk/{}/app/litekeeper-manifest.json", h.name);
        let m: serde_json::Value = serde_json::from_slice(&moto.get(&key).unwrap()).unwrap();
        assert_eq!(m["host"], h.name, "{m}");
        assert_eq!(listed_fulls(&m), h.local());
        // The url everyone sees is the host's.
        let o = h.code(
            &["backups", "list", "app", "--remote", "offsite", "--json"],
            0,
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["url"], format!("s3://{BUCKET}/lk/{}", h.name), "{v}");
        assert_eq!(v["databases"][0]["owner"], h.name, "{v}");
        assert_eq!(v["databases"][0]["count"], 1, "{v}");
    }
    assert!(moto.get("lk/app/litekeeper-manifest.json").is_none());
    // Local backups lost: each restores its own rows from its own prefix.
    for h in &hosts {
        std::fs::remove_dir_all(h.env.path("backups")).unwrap();
        assert_eq!(h.restore_from_remote(&s.identity, &[]), (h.rows, h.rows));
    }
}

#[test]
fn a_new_host_restores_the_lost_hosts_copies_and_the_owner_stays() {
    let (s, web1, web2) = two_hosts(KEEP_ALL);
    let before = tree(&s.nas());
    // No ceremony: the listing shows the owner, restore takes web1's rows; nothing written.
    let o = web2.code(
        &["backups", "list", "app", "--remote", "offsite", "--json"],
        0,
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["databases"][0]["owner"], "web1", "{v}");
    assert_eq!(v["databases"][0]["count"], 1, "{v}");
    let o = web2.code(&["backups", "list", "app", "--remote", "offsite"], 0);
    assert!(
        both(&o).contains("owner: host \"web1\" (not this host \"web2\""),
        "{}",
        both(&o)
    );
    assert_eq!(web2.restore_from_remote(&s.identity, &[]), (30, 0));
    assert_eq!(
        tree(&s.nas()),
        before,
        "restore changes nothing on the remote"
    );
    // `check` says whose the copies are.
    let o = web2.code(&["check"], 0);
    let out = both(&o);
    assert!(
        out.lines()
            .any(|l| l.starts_with("remote offsite: warning: database app: ")
                && l.contains("belong to host \"web1\", not this host \"web2\"")
                && l.contains("--adopt")),
        "{out}"
    );
    // web1's own check has no such line.
    let out = both(&web1.code(&["check"], 0));
    assert!(!out.contains("belong to host"), "{out}");
}

#[test]
fn adopt_takes_the_prefix_over_and_the_old_host_is_then_refused() {
    let (s, web1, web2) = two_hosts(KEEP_ALL);
    let old = web1.local();
    // web1 is lost; web2 replaces it: its first backup is refused, `--adopt` takes over.
    web2.code(&["run", "app", "backup"], 78);
    let o = web2.code(&["backups", "push", "app", "offsite", "--adopt"], 0);
    let out = both(&o);
    assert!(out.contains("web1") && out.contains("web2"), "{out}");
    let m = s.manifest();
    assert_eq!(m["host"], "web2", "{m}");
    // web1's copies are kept, web2's added (one name if both were made in the same second).
    let want: BTreeSet<String> = old.iter().cloned().chain(web2.local()).collect();
    assert_eq!(listed_fulls(&m).into_iter().collect::<BTreeSet<_>>(), want);
    assert!(pending(&web2.env).is_empty());
    // From now on web2 pushes without --adopt; web1, back by mistake, is refused.
    web2.backup();
    let before = tree(&s.nas());
    let o = web1.code(&["run", "app", "backup"], 78);
    assert_refusal(&o, "web2", "web1");
    assert_eq!(tree(&s.nas()), before);
}

#[test]
fn a_manifest_written_before_hosts_is_adopted_by_the_first_host_that_writes() {
    let (s, _web1, web2) = two_hosts(KEEP_ALL);
    // As written before this change: no `host`.
    let path = s.nas().join("app/litekeeper-manifest.json");
    let mut m = manifest_at(&path);
    m.as_object_mut().unwrap().remove("host");
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    web2.backup();
    let m = s.manifest();
    assert_eq!(m["host"], "web2", "{m}");
    // web2's copy is listed (web1's too, unless both were made in the same second: one name).
    assert!(listed_fulls(&m).contains(&web2.local()[0]), "{m}");
    assert_eq!(pending(&web2.env), vec![]);
}

#[test]
fn a_bad_daemon_host_is_a_config_error_naming_the_key() {
    let s = Shared::new();
    for bad in ["Web1", "web/1", "..", "", "-web"] {
        let h = Host::new("web1", 1, &s.remote(), "");
        let text = std::fs::read_to_string(h.env.config_path())
            .unwrap()
            .replace("host = \"web1\"", &format!("host = \"{bad}\""));
        h.env.write_config(&text);
        let o = h.code(&["check"], 78);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("daemon.host"), "{bad:?}: {err}");
    }
}

#[test]
fn a_drill_from_another_hosts_prefix_marks_nothing_there() {
    let s = Shared::new();
    let web1 = Host::new("web1", 30, &s.remote(), KEEP_ALL);
    let drill = format!(
        "{KEEP_ALL}\n[database.drill]\nidentity = \"{}\"\nfrom = [\"offsite\"]",
        s.identity.display()
    );
    let web2 = Host::new("web2", 70, &s.remote(), &drill);
    web1.backup();
    let before = tree(&s.nas());
    // The copy is drilled (it restores), but its verdict is web1's to write.
    let o = web2.code(&["drill", "app"], 78);
    assert_refusal(&o, "web1", "web2");
    assert_eq!(tree(&s.nas()), before, "no drill mark written");
    assert!(s.manifest()["copies"][0].get("drill").is_none());
}

#[test]
fn a_dry_run_on_another_hosts_prefix_says_whose_it_is_not_what_it_would_delete() {
    let (_s, web1, web2) = two_hosts(KEEP_ONE_REMOTE);
    web1.backup();
    let o = web2.code(&["run", "app", "backup", "--dry-run"], 0);
    let out = both(&o);
    assert!(!out.contains("would delete app-"), "{out}");
    assert!(
        out.contains("belong to host \"web1\" (this host is \"web2\")"),
        "{out}"
    );
}

#[test]
fn host_in_the_url_works_for_fleet_members_and_from_the_environment() {
    let s = Shared::new();
    let env = TestEnv::new();
    for (tenant, rows) in [("alice", 3), ("bob", 5)] {
        env.sqlite(
            &format!("tenants/{tenant}.db"),
            &format!(
                "CREATE TABLE t(x);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < {rows})
                 INSERT INTO t SELECT i FROM n;"
            ),
        );
    }
    for h in ["web1", "web2"] {
        std::fs::create_dir(s.nas().join(h)).unwrap();
    }
    env.write_config(&format!(
        "{}[[database]]\nname = \"t-{{stem}}\"\npath = \"{}/*.db\"\n[database.backup]\ndir = \"{}/{{name}}\"\nremotes = [\"offsite\"]\n\n[[remote]]\nname = \"offsite\"\n{}\n",
        env.daemon_section("host = \"web1\""),
        env.path("tenants").display(),
        env.path("backups").display(),
        dir_remote(&s.nas(), "/{host}", &s.public)
    ));
    for member in ["t-alice", "t-bob"] {
        let o = run(&env, &["run", member, "backup"]);
        assert_eq!(o.status.code(), Some(0), "{member}: {}", both(&o));
        let m = manifest_at(
            &s.nas()
                .join(format!("web1/{member}/litekeeper-manifest.json")),
        );
        assert_eq!(m["host"], "web1", "{m}");
        assert_eq!(m["database"], member, "{m}");
    }
    // `[daemon] host` from the environment, like any [daemon] key.
    let o = env
        .cmd()
        .args(["run", "t-alice", "backup"])
        .env("LITEKEEPER__DAEMON__HOST", "web2")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let m = manifest_at(&s.nas().join("web2/t-alice/litekeeper-manifest.json"));
    assert_eq!(m["host"], "web2", "{m}");
}
