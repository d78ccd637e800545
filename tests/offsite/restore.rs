//! Restore from a remote, the same suite on S3 (moto, and s3s-fs, which checks signatures) and
//! on a `file://` directory: after the
//! local backup directory is gone the copy gives back the same rows; without the identity a
//! clear error and nothing written; an object corrupted or deleted by hand is refused (65)
//! and nothing is written.

use std::path::{Path, PathBuf};
use std::process::Output;

use super::fixture::*;
use super::s3sfs::S3sFs;
use crate::util::{both, query_i64, TestEnv};

enum Kind {
    S3(Moto),
    /// A server that checks signatures; objects are files.
    Signed(S3sFs),
    Dir(PathBuf),
}

impl Kind {
    fn body(&self, public: &str) -> String {
        match self {
            Kind::S3(m) => s3_remote(&m.endpoint(), public),
            Kind::Signed(s) => s3_remote(&s.endpoint(), public),
            Kind::Dir(d) => format!(
                "url = \"file://{}\"\nencrypt_to = [\"{public}\"]\n",
                d.display()
            ),
        }
    }
    fn key(&self, object: &str) -> String {
        match self {
            Kind::S3(_) | Kind::Signed(_) => format!("lk/chat/{object}"),
            Kind::Dir(_) => format!("chat/{object}"),
        }
    }
    fn get(&self, object: &str) -> Vec<u8> {
        match self {
            Kind::S3(m) => m.get(&self.key(object)).unwrap(),
            Kind::Signed(s) => std::fs::read(s.object(&self.key(object))).unwrap(),
            Kind::Dir(d) => std::fs::read(d.join(self.key(object))).unwrap(),
        }
    }
    fn put(&self, object: &str, bytes: &[u8]) {
        match self {
            Kind::S3(m) => m.put(&self.key(object), bytes),
            Kind::Signed(s) => std::fs::write(s.object(&self.key(object)), bytes).unwrap(),
            Kind::Dir(d) => std::fs::write(d.join(self.key(object)), bytes).unwrap(),
        }
    }
    fn delete(&self, object: &str) {
        match self {
            Kind::S3(m) => m.delete(&self.key(object)),
            Kind::Signed(s) => std::fs::remove_file(s.object(&self.key(object))).unwrap(),
            Kind::Dir(d) => std::fs::remove_file(d.join(self.key(object))).unwrap(),
        }
    }
}

/// `restore chat --from offsite --to TO --identity IDENTITY`, run to its end.
fn restore_from_offsite(env: &TestEnv, to: &Path, identity: &Path) -> Output {
    let (to, identity) = (to.display().to_string(), identity.display().to_string());
    run(
        env,
        &[
            "restore",
            "chat",
            "--from",
            "offsite",
            "--to",
            &to,
            "--identity",
            &identity,
        ],
    )
}

/// `backups list chat --remote offsite --verify --json`, which must exit with `code`: its JSON.
fn verified_listing(env: &TestEnv, code: i32) -> serde_json::Value {
    let o = run(
        env,
        &[
            "backups", "list", "chat", "--remote", "offsite", "--verify", "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(code), "{}", both(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Every row of `m`, in order.
fn rows(db: &std::path::Path) -> Vec<(i64, String)> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c.prepare("SELECT id, body FROM m ORDER BY id").unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn suite(env: &TestEnv, kind: Kind) {
    let (identity, public) = keygen(env);
    let db = chat_db(env);
    config(env, &db, &kind.body(&public), "");
    let o = run(env, &["run", "chat", "backup"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let local = local_backups(env);
    let object = format!("{}.zst.age", local[0]);

    // The local backups are lost with the host.
    std::fs::remove_dir_all(env.path("backups")).unwrap();

    // Without the identity: a clear error, nothing written.
    let target = env.path("restored.db");
    let t = target.display().to_string();
    let o = run(env, &["restore", "chat", "--from", "offsite", "--to", &t]);
    assert_eq!(o.status.code(), Some(64), "{}", both(&o));
    assert!(both(&o).contains("needs --identity FILE"), "{}", both(&o));
    assert!(!target.exists());

    // A wrong identity: refused, nothing written.
    let other = env.path("other.txt");
    std::fs::write(
        &other,
        "AGE-SECRET-KEY-1S5DV4KTN89CYX83LN6YCHR9ZX83X0R78RSNGVMX68ZK6SK7T4ADQGD6C9X\n",
    )
    .unwrap();
    let o = restore_from_offsite(env, &target, &other);
    assert_eq!(o.status.code(), Some(65), "{}", both(&o));
    assert!(!target.exists());

    // With it: the same rows as the database.
    let o = restore_from_offsite(env, &target, &identity);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(query_i64(&target, "SELECT count(*) FROM m"), 500);
    assert_eq!(rows(&target), rows(&db), "the same rows");
    let staged: Vec<_> = std::fs::read_dir(env.path("state"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("remote-restore-")
        })
        .collect();
    assert!(staged.is_empty(), "staging removed");

    // Intact: listed as ok.
    let v = verified_listing(env, 0);
    assert_eq!(v["databases"][0]["copies"][0]["state"], "ok", "{v}");

    // Corrupted by hand: refused with 65, nothing written.
    let mut bytes = kind.get(&object);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    kind.put(&object, &bytes);
    let t2 = env.path("restored-2.db");
    let o = restore_from_offsite(env, &t2, &identity);
    assert_eq!(o.status.code(), Some(65), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("remote \"offsite\"") && err.contains("changed or damaged"),
        "{err}"
    );
    assert!(!t2.exists());

    // The listing flags it: read back with --verify.
    let v = verified_listing(env, 65);
    assert_eq!(v["databases"][0]["copies"][0]["state"], "damaged", "{v}");
    assert_eq!(v["databases"][0]["copies"][0]["object"], object.as_str());

    // Deleted by hand: listed as missing, restore refused, nothing written.
    kind.delete(&object);
    let o = run(env, &["backups", "list", "chat", "--remote", "offsite"]);
    assert_eq!(o.status.code(), Some(65), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("MISSING: listed in the manifest, not in the store"),
        "{}",
        both(&o)
    );
    let o = restore_from_offsite(env, &t2, &identity);
    assert_eq!(o.status.code(), Some(65), "{}", both(&o));
    crate::util::assert_stderr_has(&o, "not in the store (deleted by hand?)");
    assert!(!t2.exists());
}

#[test]
fn restore_from_s3_after_losing_the_local_backups() {
    let env = TestEnv::new();
    let moto = Moto::start();
    moto.bucket(BUCKET);
    suite(&env, Kind::S3(moto));
}

#[test]
fn restore_from_a_server_that_checks_signatures_after_losing_the_local_backups() {
    let env = TestEnv::new();
    let server = S3sFs::start(&env.path("s3"));
    suite(&env, Kind::Signed(server));
}

#[test]
fn restore_from_a_file_remote_after_losing_the_local_backups() {
    let env = TestEnv::new();
    let dir = env.path("nas");
    std::fs::create_dir(&dir).unwrap();
    suite(&env, Kind::Dir(dir));
}
