//! A verified backup is copied, zstd-compressed and age-encrypted, to the remote: the stored
//! object decrypts with the standard `age` and `zstd` CLIs to the exact bytes of the local
//! backup; the remote manifest lists it with both SHA-256s; failures keep the local backup,
//! leave the copy pending and fail the run with one line; the next run stores it.

use sha2::{Digest, Sha256};

use super::fixture::*;
use crate::util::{both, TestEnv};

fn hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn manifest(m: &Moto) -> serde_json::Value {
    serde_json::from_slice(&m.get("lk/chat/litekeeper-manifest.json").expect("manifest")).unwrap()
}

#[test]
fn s3_copy_decrypts_with_the_age_and_zstd_clis_to_the_local_backup() {
    let env = TestEnv::new();
    let moto = Moto::start();
    moto.bucket(BUCKET);
    let (identity, public) = keygen(&env);
    let db = chat_db(&env);
    config(&env, &db, &s3_remote(&moto.endpoint(), &public), "");
    let o = run(&env, &["run", "chat", "backup"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let text = both(&o);
    assert!(!text.contains("lk-test-secret-never-printed"), "{text}");
    assert!(text.contains("off-site on offsite"), "{text}");

    let local = local_backups(&env);
    assert_eq!(local.len(), 1, "{local:?}");
    let local_bytes = std::fs::read(env.path("backups").join(&local[0])).unwrap();
    let m = manifest(&moto);
    let copies = m["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 1, "{m}");
    let c = &copies[0];
    assert_eq!(c["local_file"], local[0].as_str());
    assert_eq!(c["object"], format!("{}.zst.age", local[0]).as_str());
    assert_eq!(c["source_sha256"], hex(&local_bytes).as_str());
    let stored = moto
        .get(&format!("lk/chat/{}", c["object"].as_str().unwrap()))
        .unwrap();
    assert_eq!(c["size"], stored.len() as u64);
    assert_eq!(c["sha256"], hex(&stored).as_str());
    assert!(
        !stored.windows(7).any(|w| w == b"message"),
        "stored bytes are not plaintext"
    );
    assert_eq!(decrypt_with_clis(&env, &identity, &stored), local_bytes);
    assert!(pending(&env).is_empty());

    // The run's figures carry the remote and its URL, never a secret.
    let figures: String = rusqlite::Connection::open(env.path("state/state.db"))
        .unwrap()
        .query_row("SELECT figures FROM runs WHERE job = 'backup'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let f: serde_json::Value = serde_json::from_str(&figures).unwrap();
    assert_eq!(f["remote"], "offsite");
    assert_eq!(f["remote_url"], format!("s3://{BUCKET}/lk").as_str());
    assert_eq!(f["remote_bytes"], stored.len() as u64);
    assert_eq!(f["remote_pending"], 0);
    assert!(!figures.contains("never-printed"));
}

#[test]
fn file_remote_copy_decrypts_to_the_local_backup() {
    let env = TestEnv::new();
    let (identity, public) = keygen(&env);
    let db = chat_db(&env);
    let nas = env.path("nas");
    config(
        &env,
        &db,
        &format!(
            "url = \"file://{}\"\nencrypt_to = [\"{public}\"]\n",
            nas.display()
        ),
        "compress = \"zstd\"\nkeep = { last = 5 }",
    );
    // The directory is missing (an unmounted NAS?): never created, the copy waits.
    let o = env.cmd().args(["run", "chat", "backup"]).output().unwrap();
    assert_ne!(o.status.code(), Some(0), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("remote \"offsite\""))
        .unwrap_or_else(|| panic!("no line names the remote: {err}"));
    assert!(
        line.contains(&format!("{} does not exist", nas.display())),
        "{line}"
    );
    assert!(!nas.exists(), "the remote's directory was created");
    assert_eq!(local_backups(&env).len(), 1);
    std::fs::create_dir(&nas).unwrap();
    let o = env.cmd().args(["run", "chat", "backup"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let stored: Vec<String> = std::fs::read_dir(nas.join("chat"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".age"))
        .collect();
    assert_eq!(
        stored.len(),
        2,
        "the pending copy was not stored: {stored:?}"
    );
    let local = local_backups(&env);
    assert!(local[0].ends_with(".db.zst"), "{local:?}");
    let local_bytes = std::fs::read(env.path("backups").join(&local[0])).unwrap();
    let stored = std::fs::read(nas.join("chat").join(format!("{}.age", local[0]))).unwrap();
    // Already compressed: encrypted as is, so age alone gives the local file back.
    let plain = std::process::Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&identity)
        .arg(nas.join("chat").join(format!("{}.age", local[0])))
        .output()
        .unwrap();
    assert!(plain.status.success());
    assert_eq!(plain.stdout, local_bytes);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(nas.join("chat/litekeeper-manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["copies"][0]["sha256"], hex(&stored).as_str());
}

#[test]
fn unreachable_endpoint_keeps_the_local_backup_pending_and_the_next_run_stores_it() {
    let env = TestEnv::new();
    let (_identity, public) = keygen(&env);
    let db = chat_db(&env);
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    config(
        &env,
        &db,
        &s3_remote(&endpoint, &public),
        "keep = { last = 5 }",
    );
    let o = run(&env, &["run", "chat", "backup"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(75), "{}", both(&o));
    let line = err
        .lines()
        .find(|l| l.contains("remote \"offsite\""))
        .unwrap_or_else(|| panic!("no line names the remote: {err}"));
    assert!(line.contains(&format!("s3://{BUCKET}/lk")), "{line}");
    assert!(line.contains("connection refused"), "{line}");
    assert!(!err.contains("never-printed"), "{err}");
    kept_and_pending(&env);

    // The server is back: the next run stores the pending copy first, then its own.
    let moto = Moto::start_on(port);
    moto.bucket(BUCKET);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let o = run(&env, &["run", "chat", "backup"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let all = local_backups(&env);
    assert_eq!(all.len(), 2);
    let m = manifest(&moto);
    let listed: Vec<&str> = m["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["local_file"].as_str().unwrap())
        .collect();
    assert_eq!(listed, all.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(pending(&env).is_empty());
}

/// `chat` copied to an S3 remote whose bucket does not exist yet: one backup, which exits 1;
/// the store and the backup's output.
fn backup_before_the_bucket(env: &TestEnv) -> (Moto, std::process::Output) {
    let moto = Moto::start();
    let (_identity, public) = keygen(env);
    let db = chat_db(env);
    config(env, &db, &s3_remote(&moto.endpoint(), &public), "");
    let o = run(env, &["run", "chat", "backup"]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    (moto, o)
}

#[test]
fn missing_bucket_is_one_line_naming_it() {
    let env = TestEnv::new();
    let (_moto, o) = backup_before_the_bucket(&env);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        err.lines().any(|l| l.contains("remote \"offsite\"")
            && l.contains(&format!("bucket \"{BUCKET}\" does not exist"))),
        "{err}"
    );
    assert_eq!(local_backups(&env).len(), 1);
    assert_eq!(pending(&env).len(), 1);
}

#[test]
fn backups_push_stores_the_pending_copies() {
    let env = TestEnv::new();
    let (moto, _) = backup_before_the_bucket(&env);
    assert_eq!(pending(&env).len(), 1);
    moto.bucket(BUCKET);
    let o = run(&env, &["backups", "push", "chat", "offsite"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    crate::util::assert_stdout_has(&o, "chat: stored 1 pending copy");
    assert!(pending(&env).is_empty());
    let m = manifest(&moto);
    assert_eq!(
        m["copies"][0]["local_file"],
        local_backups(&env)[0].as_str()
    );
    let o = run(&env, &["backups", "push", "chat", "nas"]);
    assert_eq!(o.status.code(), Some(64), "{}", both(&o));
}

#[test]
fn the_daemon_retries_pending_copies_every_retry_every() {
    let env = TestEnv::new();
    let (_identity, public) = keygen(&env);
    let db = chat_db(&env);
    let port = free_port();
    let body = format!(
        "{}retry_every = \"1s\"\n",
        s3_remote(&format!("http://127.0.0.1:{port}"), &public)
    );
    config(&env, &db, &body, "");
    let o = run(&env, &["run", "chat", "backup"]);
    assert_eq!(o.status.code(), Some(75), "{}", both(&o));
    assert_eq!(pending(&env).len(), 1);
    let moto = Moto::start_on(port);
    moto.bucket(BUCKET);
    let _daemon = env.spawn(&["daemon"], KEYS);
    crate::util::wait_for(
        "the pending copy stored",
        std::time::Duration::from_secs(60),
        || pending(&env).is_empty().then_some(()),
    );
    let m = manifest(&moto);
    assert_eq!(
        m["copies"][0]["local_file"],
        local_backups(&env)[0].as_str()
    );
}

/// `rate_limit`: an upload and its read-back move at most that many bytes per second (so a
/// push of S stored bytes at S bytes/s takes at least two seconds), and what is stored is the
/// same copy; a rate that is not one is a config error naming the key.
#[test]
fn rate_limit_paces_the_upload_and_its_read_back() {
    let env = TestEnv::new();
    let (_identity, public) = keygen(&env);
    let db = chat_db(&env);
    let nas = env.path("nas");
    let remote = |extra: &str| {
        format!(
            "url = \"file://{}\"\nencrypt_to = [\"{public}\"]\n{extra}",
            nas.display()
        )
    };
    // A pending copy first (the NAS is not there yet), to know the bytes it will store.
    config(&env, &db, &remote(""), "keep = { last = 5 }");
    let o = env.cmd().args(["run", "chat", "backup"]).output().unwrap();
    assert_ne!(o.status.code(), Some(0), "{}", both(&o));
    let local = env.path("backups").join(&local_backups(&env)[0]);
    // The stored object is the compressed copy plus age's overhead: a rate of the local
    // file's size is below the stored size per second only if zstd shrinks nothing.
    let rate = std::fs::metadata(&local).unwrap().len() / 4;
    config(
        &env,
        &db,
        &remote(&format!("rate_limit = \"{rate}/s\"")),
        "keep = { last = 5 }",
    );
    std::fs::create_dir(&nas).unwrap();
    let t = std::time::Instant::now();
    let o = env
        .cmd()
        .args(["backups", "push", "chat"])
        .output()
        .unwrap();
    let took = t.elapsed();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let stored: Vec<u64> = std::fs::read_dir(nas.join("chat"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".age"))
        .map(|e| e.metadata().unwrap().len())
        .collect();
    assert_eq!(stored.len(), 1, "{}", both(&o));
    let floor = std::time::Duration::from_secs_f64(2.0 * stored[0] as f64 / rate as f64);
    assert!(
        took >= floor.mul_f64(0.95),
        "{} stored bytes at {rate} B/s took {took:?}, under {floor:?}",
        stored[0]
    );
    // Not a rate: one line naming the key, exit 78.
    config(
        &env,
        &db,
        &remote("rate_limit = \"fast\""),
        "keep = { last = 5 }",
    );
    let o = env.cmd().args(["check"]).output().unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    assert!(both(&o).contains("rate_limit"), "{}", both(&o));
}
