//! Operating off-site copies: `check` probes each remote (put, get, list, delete; the
//! identity with --identity), the metrics file and `status`/`status --check` per database
//! and remote, `backups list` saying where each backup's copy stands without asking the
//! remote, and local retention keeping what a remote still waits for.

use super::fixture::*;
use crate::util::{both, stdout, TestEnv};

/// The objects under `prefix` in moto's bucket.
fn objects(moto: &Moto, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    use object_store::ObjectStore;
    let (rt, s3) = moto.client();
    let p = object_store::path::Path::from(prefix);
    let found: Vec<object_store::ObjectMeta> =
        rt.block_on(s3.list(Some(&p)).try_collect()).unwrap();
    found.into_iter().map(|m| m.location.to_string()).collect()
}

fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}"))
}

#[test]
fn check_probes_each_remote_and_names_what_failed() {
    let env = TestEnv::new();
    let moto = Moto::start();
    moto.bucket(BUCKET);
    let (identity, public) = keygen(&env);
    let db = chat_db(&env);

    // A working remote: one ok line, the probe object gone afterwards.
    config(&env, &db, &s3_remote(&moto.endpoint(), &public), "");
    let o = run(&env, &["check", "--identity", identity.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let out = stdout(&o);
    let ok = line_with(&out, "remote offsite: ok: ");
    assert!(ok.contains("bucket \"lk-offsite\" writable"), "{ok}");
    assert!(ok.contains("the identity decrypts"), "{ok}");
    assert!(
        objects(&moto, "lk").is_empty(),
        "{:?}",
        objects(&moto, "lk")
    );
    assert!(!both(&o).contains("lk-test-secret-never-printed"));

    // An identity that is not among the recipients: the copies could not be restored with it.
    let other = env.path("other.txt");
    let g = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&other)
        .output()
        .unwrap();
    assert!(g.status.success());
    let o = run(&env, &["check", "--identity", other.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let out = stdout(&o);
    let err = line_with(&out, "remote offsite: error: ");
    assert!(
        err.contains("no recipient in encrypt_to belongs to this identity"),
        "{err}"
    );
    assert!(
        out.contains("remote offsite:   fix: encrypt_to must hold"),
        "{out}"
    );
    assert!(
        objects(&moto, "lk").is_empty(),
        "the probe is deleted after a failure too"
    );

    // A missing bucket.
    let missing = s3_remote(&moto.endpoint(), &public).replace(BUCKET, "lk-no-such-bucket");
    config(&env, &db, &missing, "");
    let o = run(&env, &["check"]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let err = line_with(&stdout(&o), "remote offsite: error: ").to_string();
    assert!(
        err.contains("bucket \"lk-no-such-bucket\" does not exist"),
        "{err}"
    );
    let out = stdout(&o);
    assert!(
        out.contains("remote offsite:   fix: create the bucket"),
        "{out}"
    );
    assert!(out.contains("\n1 error(s), "), "{out}");

    // Nothing listening.
    let down = format!("http://127.0.0.1:{}", free_port());
    config(&env, &db, &s3_remote(&down, &public), "");
    let o = run(&env, &["check"]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let err = line_with(&stdout(&o), "remote offsite: error: ").to_string();
    assert!(err.contains("connection refused"), "{err}");

    // A file:// remote: probed the same way; a missing directory (an unmounted NAS?) is
    // reported and not created.
    let nas = env.path("nas");
    let file_remote = format!(
        "url = \"file://{}\"\nencrypt_to = [\"{public}\"]\n",
        nas.display()
    );
    config(&env, &db, &file_remote, "");
    let o = run(&env, &["check"]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let err = line_with(&stdout(&o), "remote offsite: error: ").to_string();
    assert!(
        err.contains("does not exist or is not a directory"),
        "{err}"
    );
    assert!(!nas.exists(), "check created {}", nas.display());
    std::fs::create_dir(&nas).unwrap();
    let o = run(&env, &["check"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(
        stdout(&o).contains("remote offsite: ok: file://"),
        "{}",
        both(&o)
    );
    let probes = std::fs::read_dir(nas.join(".litekeeper-check"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(probes, 0, "the probe object is deleted");

    // No credentials in the environment.
    config(&env, &db, &s3_remote(&moto.endpoint(), &public), "");
    let o = env
        .cmd()
        .arg("check")
        .env_remove("AWS_ACCESS_KEY_ID")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let err = line_with(&stdout(&o), "remote offsite: error: ").to_string();
    assert!(err.contains("reading credentials"), "{err}");
    assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
}

/// The metrics file's samples of `family` for chat → offsite.
fn sample(prom: &std::path::Path, family: &str) -> Option<f64> {
    let text = std::fs::read_to_string(prom).unwrap();
    let kind = if family.ends_with("_total") {
        "counter"
    } else {
        "gauge"
    };
    assert!(text.contains(&format!("# TYPE {family} {kind}")), "{text}");
    let head = format!("{family}{{database=\"chat\",remote=\"offsite\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(head.as_str()))
        .map(|v| v.parse().unwrap())
}

/// A configuration of chat with `remote_extra` in its remote, and the metrics file.
fn config_with_metrics(
    env: &TestEnv,
    endpoint: &str,
    public: &str,
    backup_extra: &str,
    remote_extra: &str,
) {
    let db = env.path("chat.db");
    config(
        env,
        &db,
        &format!("{}{remote_extra}\n", s3_remote(endpoint, public)),
        backup_extra,
    );
    let text = std::fs::read_to_string(env.path("litekeeper.toml"))
        .or_else(|_| std::fs::read_to_string(env.config_path()))
        .unwrap();
    let prom = env.path("metrics/lk.prom");
    std::fs::create_dir_all(prom.parent().unwrap()).unwrap();
    let text = text.replacen(
        "[daemon]\n",
        &format!("[daemon]\nmetrics_file = \"{}\"\n", prom.display()),
        1,
    );
    std::fs::write(env.config_path(), text).unwrap();
}

#[test]
fn metrics_and_status_follow_pending_and_stored_copies() {
    let env = TestEnv::new();
    let (_identity, public) = keygen(&env);
    chat_db(&env);
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    config_with_metrics(&env, &endpoint, &public, "", "max_age = \"3s\"");
    let prom = env.path("metrics/lk.prom");

    // The server is down: the copy is pending, the metrics and status say so.
    let o = run(&env, &["run", "chat", "backup"]);
    assert_eq!(o.status.code(), Some(75), "{}", both(&o));
    assert_eq!(sample(&prom, "litekeeper_remote_pending_copies"), Some(1.0));
    assert_eq!(
        sample(&prom, "litekeeper_remote_last_success_timestamp_seconds"),
        None
    );
    assert_eq!(
        sample(&prom, "litekeeper_remote_uploaded_bytes_total"),
        Some(0.0)
    );
    let o = run(&env, &["status"]);
    let line = line_with(&stdout(&o), "chat -> remote offsite:").to_string();
    assert!(line.contains("no copy stored yet, 1 pending"), "{line}");
    assert!(line.contains("connection refused"), "{line}");
    let v = status_json(&env);
    assert!(v["jobs"].is_array(), "{v:#}");
    let s = &v["offsite"][0];
    assert_eq!(
        (&s["database"], &s["remote"]),
        (&"chat".into(), &"offsite".into())
    );
    assert_eq!(s["url"], format!("s3://{BUCKET}/lk"));
    assert_eq!(s["pending"], 1, "{s:#}");
    assert!(s["oldest_pending"].is_string(), "{s:#}");
    assert!(s["oldest_pending_age_s"].as_u64().unwrap() < 60, "{s:#}");
    assert!(
        s["last_error"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{s:#}"
    );
    assert!(
        s["last_success"].is_null() && s["newest_copy"].is_null(),
        "{s:#}"
    );
    assert_eq!(s["max_age_s"], 3, "{s:#}");
    assert_eq!(s["problems"], serde_json::json!([]), "{s:#}");

    // Pending for longer than max_age: CRITICAL with the cause.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let o = run(&env, &["status", "--check"]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let line = line_with(&stdout(&o), "CRITICAL remote offsite chat:").to_string();
    assert!(line.contains("1 copy pending, the oldest for "), "{line}");
    assert!(line.contains("s (max 3s): remote \"offsite\""), "{line}");
    assert!(line.contains("connection refused"), "{line}");
    let v = status_json(&env);
    let p = &v["offsite"][0]["problems"];
    assert_eq!(p.as_array().unwrap().len(), 1, "{v:#}");
    assert_eq!(p[0]["level"], "critical");
    assert_eq!(p[0]["message"], line, "the line of status --check");

    // The server is back: a push stores it and rewrites the metrics; status is OK.
    let moto = Moto::start_on(port);
    moto.bucket(BUCKET);
    let o = run(&env, &["backups", "push", "chat"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(sample(&prom, "litekeeper_remote_pending_copies"), Some(0.0));
    let stored_bytes = sample(&prom, "litekeeper_remote_uploaded_bytes_total").unwrap();
    assert!(stored_bytes > 0.0, "{stored_bytes}");
    let at = sample(&prom, "litekeeper_remote_last_success_timestamp_seconds").unwrap();
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - at).abs() < 60.0, "{at} vs {now}");
    let o = run(&env, &["status", "--check"]);
    assert!(!stdout(&o).contains("remote offsite"), "{}", both(&o));
    let v = status_json(&env);
    let s = &v["offsite"][0];
    assert_eq!(s["pending"], 0, "{s:#}");
    assert!(
        s["oldest_pending"].is_null() && s["last_error"].is_null(),
        "{s:#}"
    );
    assert!(s["last_success"].is_string(), "{s:#}");
    assert_eq!(s["uploaded_bytes"].as_f64(), Some(stored_bytes), "{s:#}");
    let newest = &s["newest_copy"];
    assert_eq!(newest["file"], local_backups(&env)[0], "{s:#}");
    assert!(newest["size"].as_u64().unwrap() > 0, "{s:#}");
    assert!(newest["age_s"].as_u64().unwrap() < 60, "{s:#}");
    assert_eq!(s["problems"], serde_json::json!([]), "{s:#}");

    // No copy since: the newest is older than max_age.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let o = run(&env, &["status", "--check", "chat"]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let line = line_with(&stdout(&o), "CRITICAL remote offsite chat:").to_string();
    assert!(line.contains("newest copy stored "), "{line}");
    assert!(line.contains("s ago (max 3s)"), "{line}");
}

fn status_json(env: &TestEnv) -> serde_json::Value {
    let o = run(env, &["status", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", both(&o)))
}

#[test]
fn status_json_has_each_file_remote_and_none_without_remotes() {
    let env = TestEnv::new();
    let (_identity, public) = keygen(&env);
    let db = chat_db(&env);
    let nas = env.path("nas");
    std::fs::create_dir(&nas).unwrap();
    let remote = format!(
        "url = \"file://{}\"\nencrypt_to = [\"{public}\"]\nmax_age = \"1h\"\n",
        nas.display()
    );
    config(&env, &db, &remote, "");
    // Before any copy: no copy yet is a warning, as in status --check.
    let v = status_json(&env);
    let s = &v["offsite"][0];
    assert_eq!(s["pending"], 0, "{s:#}");
    assert!(s["newest_copy"].is_null(), "{s:#}");
    assert_eq!(s["max_age_s"], 3600, "{s:#}");
    assert_eq!(s["problems"][0]["level"], "warning", "{s:#}");
    assert!(
        s["problems"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("WARNING remote offsite chat: no copy stored yet"),
        "{s:#}"
    );
    let o = run(&env, &["run", "chat", "backup"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let v = status_json(&env);
    let s = &v["offsite"][0];
    assert_eq!(v["offsite"].as_array().unwrap().len(), 1, "{v:#}");
    assert_eq!(s["url"], format!("file://{}", nas.display()));
    assert_eq!(s["newest_copy"]["file"], local_backups(&env)[0], "{s:#}");
    assert_eq!(s["problems"], serde_json::json!([]), "{s:#}");
    // The same database without remotes: the array is there, empty.
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    env.write_config(&text.replace("remotes = [\"offsite\"]\n", ""));
    let v = status_json(&env);
    assert_eq!(v["offsite"], serde_json::json!([]), "{v:#}");
}

/// chat copied to an S3 remote on a port nothing listens on yet (`Moto::start_on(port)`
/// brings it up), with `backup_extra` in `[database.backup]`: the port.
fn chat_with_remote_down(env: &TestEnv, backup_extra: &str) -> u16 {
    let (_identity, public) = keygen(env);
    let db = chat_db(env);
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    config(env, &db, &s3_remote(&endpoint, &public), backup_extra);
    port
}

#[test]
fn backups_list_says_where_each_copy_stands_without_the_remote() {
    let env = TestEnv::new();
    let port = chat_with_remote_down(&env, "keep = { last = 5 }");
    let moto = Moto::start_on(port);
    moto.bucket(BUCKET);
    let o = run(&env, &["run", "chat", "backup"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    drop(moto);
    let o = run(&env, &["run", "chat", "backup"]);
    assert_eq!(o.status.code(), Some(75), "{}", both(&o));
    let local = local_backups(&env);
    assert_eq!(local.len(), 2);

    // The server is down: the listing does not need it.
    let o = env.run_ok(&["backups", "list", "chat", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let backups = v["databases"][0]["backups"].as_array().unwrap();
    let state = |file: &str| {
        let b = backups.iter().find(|b| b["file"] == file).unwrap();
        let c = &b["offsite"][0];
        assert_eq!(c["remote"], "offsite");
        (c["state"].as_str().unwrap().to_string(), c.clone())
    };
    let (old, _) = state(&local[0]);
    assert_eq!(old, "stored");
    let (new, c) = state(&local[1]);
    assert_eq!(new, "pending");
    assert_eq!(c["attempts"], 1);
    assert!(
        c["error"].as_str().unwrap().contains("connection refused"),
        "{c}"
    );

    let o = env
        .cmd()
        .args(["backups", "list", "chat"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let out = stdout(&o);
    assert!(out.contains("    off-site: offsite: stored "), "{out}");
    assert!(
        out.contains("    off-site: offsite: pending since "),
        "{out}"
    );
    assert!(
        out.contains("1 failed attempt(s): remote \"offsite\""),
        "{out}"
    );
}

/// The rule: every backup the remote's retention would keep reaches the remote. With the
/// remote down for three runs, local `keep = { last = 1 }` used to delete the two older
/// backups before they were stored, and the remote (`remote_keep = { last = 3 }`) got only
/// the newest.
#[test]
fn local_retention_keeps_backups_a_remote_still_waits_for() {
    let env = TestEnv::new();
    let port = chat_with_remote_down(&env, "keep = { last = 1 }\nremote_keep = { last = 3 }");
    for _ in 0..3 {
        let o = run(&env, &["run", "chat", "backup"]);
        assert_eq!(o.status.code(), Some(75), "{}", both(&o));
    }
    let local = local_backups(&env);
    assert_eq!(
        local.len(),
        3,
        "pending copies the remote keeps stay: {local:?}"
    );
    assert_eq!(pending(&env).len(), 3);
    let o = env
        .cmd()
        .args(["backups", "list", "chat", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let oldest = v["databases"][0]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["file"] == local[0].as_str())
        .unwrap()
        .clone();
    assert_eq!(
        oldest["kept_by"],
        serde_json::json!(["offsite-pending"]),
        "{oldest}"
    );

    let moto = Moto::start_on(port);
    moto.bucket(BUCKET);
    let o = run(&env, &["backups", "push", "chat"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let want: Vec<String> = local
        .iter()
        .map(|f| format!("lk/chat/{f}.zst.age"))
        .collect();
    let mut stored = objects(&moto, "lk/chat");
    stored.retain(|o| o.ends_with(".age"));
    assert_eq!(stored, want);

    // Stored: the next run's local retention is the local rule again; the remote keeps 3.
    let o = run(&env, &["run", "chat", "backup"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let now_local = local_backups(&env);
    assert_eq!(now_local.len(), 1, "{now_local:?}");
    let mut stored = objects(&moto, "lk/chat");
    stored.retain(|o| o.ends_with(".age"));
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert!(!stored.contains(&want[0]), "{stored:?}");
}

/// A pending copy the remote would not keep is no reason to keep the local file: with
/// `remote_keep = { last = 1 }` only the newest pending one waits (this run's), and the
/// older ones are no longer pending once their files are gone.
#[test]
fn local_retention_does_not_hold_what_the_remote_would_not_keep() {
    let env = TestEnv::new();
    chat_with_remote_down(&env, "keep = { last = 1 }\nremote_keep = { last = 1 }");
    for _ in 0..3 {
        let o = run(&env, &["run", "chat", "backup"]);
        assert_eq!(o.status.code(), Some(75), "{}", both(&o));
    }
    assert_eq!(local_backups(&env).len(), 1);
    assert_eq!(pending(&env).len(), 1);
}

/// A copy larger than one 8 MiB part, stored by `backups push`: the multipart upload writes
/// parts as it goes, and outside a job (whose thread is in the process's runtime) it
/// panicked at the first full part ("there is no reactor running"); the tests' copies were
/// all smaller than a part. Checked byte for byte with the age and zstd CLIs.
#[test]
fn a_push_of_several_parts_is_stored_whole() {
    let env = TestEnv::new();
    let (identity, public) = keygen(&env);
    let db = env.sqlite(
        "chat.db",
        "CREATE TABLE blob(id INTEGER PRIMARY KEY, b BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 600)
         INSERT INTO blob(b) SELECT randomblob(32768) FROM n;",
    );
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    // moto takes its time over 8 MiB parts on a busy machine: not the fixture's 5 s.
    let remote = s3_remote(&endpoint, &public).replace("timeout = \"5s\"", "timeout = \"120s\"");
    config(&env, &db, &remote, "");
    let o = run(&env, &["run", "chat", "backup"]);
    assert_eq!(o.status.code(), Some(75), "{}", both(&o));
    let moto = Moto::start_on(port);
    moto.bucket(BUCKET);
    let o = run(&env, &["backups", "push", "chat"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let local = local_backups(&env);
    let local_bytes = std::fs::read(env.path("backups").join(&local[0])).unwrap();
    let stored = moto
        .get(&format!("lk/chat/{}.zst.age", local[0]))
        .expect("stored");
    assert!(stored.len() > 2 * (8 << 20), "{} bytes", stored.len());
    assert_eq!(decrypt_with_clis(&env, &identity, &stored), local_bytes);
    assert!(pending(&env).is_empty());
}
