//! Incremental chains off-site, the same suite on S3 (moto) and on a `file://` directory:
//! each delta is stored encrypted like a full backup (its bytes decrypt with the `age` and
//! `zstd` CLIs to the local delta), the remote manifest records its chain, `restore --at
//! --from` rebuilds a point from the remote alone (rows and image SHA-256), and a delta
//! deleted from the store restores the last good point with the warning and exit 65.
//! On S3 also: a delta made while the remote is down is pending and stored (with the links
//! of its chain the remote lacks) by `backups push`; remote retention keeps a full backup
//! while a chain depends on it and drops the chain's deltas after `incremental.keep`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::fixture::*;
use crate::util::{both, query_i64, TestEnv};

enum Kind {
    S3(Moto),
    Dir(PathBuf),
}

impl Kind {
    fn body(&self, public: &str) -> String {
        match self {
            Kind::S3(m) => s3_remote(&m.endpoint(), public),
            Kind::Dir(d) => format!(
                "url = \"file://{}\"\nencrypt_to = [\"{public}\"]\n",
                d.display()
            ),
        }
    }
    fn get(&self, object: &str) -> Option<Vec<u8>> {
        match self {
            Kind::S3(m) => m.get(&format!("lk/chat/{object}")),
            Kind::Dir(d) => std::fs::read(d.join("chat").join(object)).ok(),
        }
    }
    fn delete(&self, object: &str) {
        match self {
            Kind::S3(m) => m.delete(&format!("lk/chat/{object}")),
            Kind::Dir(d) => std::fs::remove_file(d.join("chat").join(object)).unwrap(),
        }
    }
    fn manifest(&self) -> Value {
        serde_json::from_slice(&self.get("litekeeper-manifest.json").unwrap()).unwrap()
    }
}

pub(super) fn add_rows(db: &Path, from: i64, to: i64) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute(
        "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i+1 FROM n WHERE i < ?2)
         INSERT INTO m(id, body) SELECT i, 'message ' || i FROM n",
        [from, to],
    )
    .unwrap();
}

fn local_manifest(env: &TestEnv) -> Value {
    serde_json::from_slice(&std::fs::read(env.path("backups/manifest.json")).unwrap()).unwrap()
}

fn ok(env: &TestEnv, args: &[&str]) -> std::process::Output {
    let o = run(env, args);
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", both(&o));
    o
}

/// `restore chat --at AT --from offsite --identity IDENTITY --to TO`.
fn restore_at(env: &TestEnv, identity: &Path, at: &str, to: &Path) -> std::process::Output {
    let (id, to) = (identity.display().to_string(), to.display().to_string());
    run(
        env,
        &[
            "restore",
            "chat",
            "--at",
            at,
            "--from",
            "offsite",
            "--identity",
            &id,
            "--to",
            &to,
        ],
    )
}

fn sha(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn suite(env: &TestEnv, kind: Kind) {
    let (identity, public) = keygen(env);
    let db = chat_db(env);
    config(
        env,
        &db,
        &kind.body(&public),
        "incremental = { keep = \"7d\" }",
    );
    ok(env, &["run", "chat", "backup"]);
    let mut counts = Vec::new();
    for k in 1..=3 {
        add_rows(&db, k * 1000, k * 1000 + 99);
        let o = ok(env, &["run", "chat", "incremental"]);
        assert!(both(&o).contains("stored 1 copy off-site"), "{}", both(&o));
        counts.push(query_i64(&db, "SELECT count(*) FROM m"));
    }
    let local = local_manifest(env);
    let full = local["backups"][0]["file"].as_str().unwrap().to_string();
    let deltas = local["deltas"].as_array().unwrap().clone();
    assert_eq!(deltas.len(), 3);
    // The remote manifest records each delta's chain.
    let remote = kind.manifest();
    let listed = remote["deltas"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{remote}");
    for (l, r) in deltas.iter().zip(listed) {
        assert_eq!(r["local_file"], l["file"]);
        assert_eq!(r["base"].as_str(), Some(full.as_str()));
        assert_eq!(r["sequence"], l["sequence"]);
        assert_eq!(r["prev"], l["prev"]);
        assert_eq!(r["image_sha256"], l["image_sha256"]);
        assert_eq!(r["source_sha256"], l["sha256"]);
    }
    // A stored delta is the local delta file, compressed and encrypted.
    let first = deltas[0]["file"].as_str().unwrap();
    let stored = kind.get(&format!("{first}.zst.age")).unwrap();
    assert_eq!(
        decrypt_with_clis(env, &identity, &stored),
        std::fs::read(env.path("backups").join(first)).unwrap()
    );

    // The host is lost: every point comes back from the remote alone.
    std::fs::remove_dir_all(env.path("backups")).unwrap();
    for (i, point) in deltas.iter().enumerate() {
        let at = point["created_at"].as_str().unwrap();
        let to = env.path(&format!("p{i}.db"));
        let o = restore_at(env, &identity, at, &to);
        assert_eq!(o.status.code(), Some(0), "{}", both(&o));
        assert!(both(&o).contains("image SHA-256 matches"), "{}", both(&o));
        assert_eq!(
            sha(&std::fs::read(&to).unwrap()),
            point["image_sha256"].as_str().unwrap()
        );
        assert_eq!(query_i64(&to, "SELECT count(*) FROM m"), counts[i]);
        assert_eq!(
            query_i64(&to, "SELECT max(id) FROM m"),
            (i as i64 + 1) * 1000 + 99
        );
    }
    let staging: Vec<String> = crate::util::names(&env.path("state"))
        .into_iter()
        .filter(|n| n.starts_with("remote-restore-"))
        .collect();
    assert!(staging.is_empty(), "{staging:?}");

    // The middle delta is deleted from the store: the last good point before it, named.
    let middle = deltas[1]["file"].as_str().unwrap();
    kind.delete(&format!("{middle}.zst.age"));
    let to = env.path("broken.db");
    let o = restore_at(env, &identity, "latest", &to);
    assert_eq!(o.status.code(), Some(65), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("warning") && err.contains(middle), "{err}");
    assert!(err.contains(deltas[0]["file"].as_str().unwrap()), "{err}");
    assert_eq!(
        sha(&std::fs::read(&to).unwrap()),
        deltas[0]["image_sha256"].as_str().unwrap()
    );
    assert_eq!(query_i64(&to, "SELECT count(*) FROM m"), counts[0]);
    // The listing flags the missing point.
    let o = run(
        env,
        &["backups", "list", "chat", "--remote", "offsite", "--json"],
    );
    assert_eq!(o.status.code(), Some(65), "{}", both(&o));
    let listed: Value = serde_json::from_slice(&o.stdout).unwrap();
    let points = listed["databases"][0]["points"].as_array().unwrap();
    assert_eq!(points.len(), 3);
    let states: Vec<(&str, &str)> = points
        .iter()
        .map(|p| {
            (
                p["local_file"].as_str().unwrap(),
                p["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(states.contains(&(middle, "missing")), "{states:?}");
    assert_eq!(states.iter().filter(|(_, s)| *s == "ok").count(), 2);
}

#[test]
fn s3_chain_points_restore_from_the_remote_alone() {
    let env = TestEnv::new();
    let moto = Moto::start();
    moto.bucket(BUCKET);
    suite(&env, Kind::S3(moto));
}

#[test]
fn file_remote_chain_points_restore_from_the_remote_alone() {
    let env = TestEnv::new();
    let dir = env.path("remote");
    std::fs::create_dir(&dir).unwrap();
    suite(&env, Kind::Dir(dir));
}

/// A delta made while the remote is down stays pending; the remote comes back empty (a new
/// server), and `backups push` stores the delta with its full backup and the earlier delta,
/// so the remote's chain is whole and restores.
#[test]
fn a_delta_made_while_the_remote_is_down_is_pushed_with_its_chain() {
    let env = TestEnv::new();
    let port = free_port();
    let moto = Moto::start_on(port);
    moto.bucket(BUCKET);
    let (identity, public) = keygen(&env);
    let db = chat_db(&env);
    let body = s3_remote(&moto.endpoint(), &public);
    config(&env, &db, &body, "incremental = { keep = \"7d\" }");
    ok(&env, &["run", "chat", "backup"]);
    add_rows(&db, 1000, 1049);
    ok(&env, &["run", "chat", "incremental"]);
    drop(moto);
    add_rows(&db, 2000, 2049);
    let o = run(&env, &["run", "chat", "incremental"]);
    assert_eq!(o.status.code(), Some(75), "{}", both(&o));
    assert!(both(&o).contains("offsite"), "{}", both(&o));
    let deltas = local_manifest(&env)["deltas"].as_array().unwrap().clone();
    assert_eq!(deltas.len(), 2, "the local point is made all the same");
    let newest = deltas[1]["file"].as_str().unwrap().to_string();
    assert_eq!(pending(&env), vec![("offsite".to_string(), newest.clone())]);

    let moto = Moto::start_on(port);
    moto.bucket(BUCKET);
    let o = ok(&env, &["backups", "push", "chat"]);
    assert!(both(&o).contains("stored 3 pending copies"), "{}", both(&o));
    assert!(pending(&env).is_empty());
    let kind = Kind::S3(moto);
    let remote = kind.manifest();
    assert_eq!(remote["copies"].as_array().unwrap().len(), 1, "{remote}");
    assert_eq!(remote["deltas"].as_array().unwrap().len(), 2, "{remote}");
    std::fs::remove_dir_all(env.path("backups")).unwrap();
    let to = env.path("r.db");
    let o = restore_at(&env, &identity, "latest", &to);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(query_i64(&to, "SELECT count(*) FROM m"), 600);
}

/// `remote_keep = { last = 1 }` would delete the first full copy; its chain (kept 1h) keeps
/// it. With `incremental.keep = "1s"` the chain expires: its delta and then its full go.
#[test]
fn remote_retention_keeps_a_chain_base_and_drops_expired_deltas() {
    let env = TestEnv::new();
    let dir = env.path("remote");
    std::fs::create_dir(&dir).unwrap();
    let kind = Kind::Dir(dir);
    let (_identity, public) = keygen(&env);
    let db = chat_db(&env);
    let write = |keep: &str| {
        config(
            &env,
            &db,
            &kind.body(&public),
            &format!(
                "keep = {{ last = 5 }}\nremote_keep = {{ last = 1 }}\nincremental = {{ keep = \"{keep}\" }}"
            ),
        )
    };
    write("1h");
    ok(&env, &["run", "chat", "backup"]);
    add_rows(&db, 1000, 1009);
    ok(&env, &["run", "chat", "incremental"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ok(&env, &["run", "chat", "backup"]);
    let m = kind.manifest();
    assert_eq!(listed_fulls(&m).len(), 2, "the chain's base is kept: {m}");
    let delta_object = m["deltas"][0]["object"].as_str().unwrap().to_string();
    assert!(kind.get(&delta_object).is_some());
    write("1s");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ok(&env, &["run", "chat", "backup"]);
    let m = kind.manifest();
    assert!(m.get("deltas").is_none(), "{m}");
    assert_eq!(listed_fulls(&m).len(), 1, "{m}");
    assert!(
        kind.get(&delta_object).is_none(),
        "the delta object is deleted"
    );
}
