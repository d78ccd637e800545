//! Faults of the store, each one line naming the remote and what to check, never a secret;
//! the local backup stays, its copy pending: wrong credentials against a server that checks
//! signatures (s3s-fs), the server killed during a multipart upload and restarted, a DNS name
//! that does not resolve, TLS to a plain-http port, a server that never answers (the run ends
//! within its timeout). A missing bucket and a closed port: `upload.rs`.

use std::time::Duration;

use super::fixture::*;
use super::s3sfs::S3sFs;
use crate::util::{both, query_i64, root_or_skip, TestEnv};

const WRONG: &str = "lk-wrong-secret-never-printed";

/// The line of stderr naming the remote (the run's failure).
fn remote_line(err: &str) -> String {
    err.lines()
        .rev()
        .find(|l| l.contains("remote \"offsite\" (s3://lk-offsite/lk)"))
        .unwrap_or_else(|| panic!("no line names the remote and its url: {err}"))
        .to_string()
}

/// `litekeeper ARGS` with the right access key and `secret`.
fn run_with(env: &TestEnv, args: &[&str], id: &str, secret: &str) -> std::process::Output {
    env.cmd()
        .args(args)
        .env("AWS_ACCESS_KEY_ID", id)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .output()
        .unwrap()
}

/// `backups list chat --remote offsite --verify --json`, which must pass: the copies listed.
fn verified_copies(env: &TestEnv) -> Vec<serde_json::Value> {
    let o = run(
        env,
        &[
            "backups", "list", "chat", "--remote", "offsite", "--verify", "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let copies = v["databases"][0]["copies"].as_array().unwrap().clone();
    for c in &copies {
        assert_eq!(c["state"], "ok", "{v}");
    }
    copies
}

#[test]
fn wrong_keys_are_refused_in_one_line_and_the_right_ones_store_the_copy() {
    let env = TestEnv::new();
    let server = S3sFs::start(&env.path("s3"));
    let (_identity, public) = keygen(&env);
    let db = chat_db(&env);
    config(&env, &db, &s3_remote(&server.endpoint(), &public), "");

    // A wrong secret: the signature does not match.
    let o = run_with(&env, &["run", "chat", "backup"], KEYS[0].1, WRONG);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let line = remote_line(&err);
    assert!(
        line.contains("the credentials were refused (403 SignatureDoesNotMatch"),
        "{line}"
    );
    assert!(line.contains("AWS_SECRET_ACCESS_KEY"), "{line}");
    assert!(!both(&o).contains(WRONG), "{}", both(&o));
    let file = kept_and_pending(&env);

    // An access key the store does not know (AWS says InvalidAccessKeyId, s3s NotSignedUp).
    let o = run_with(&env, &["backups", "push", "chat"], "AKIAUNKNOWN", KEYS[1].1);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let line = remote_line(&String::from_utf8_lossy(&o.stderr));
    assert!(
        line.contains("the credentials were refused (403 "),
        "{line}"
    );
    assert!(line.contains("does not know the access key"), "{line}");
    assert!(!both(&o).contains(KEYS[1].1), "{}", both(&o));
    assert_eq!(kept_and_pending(&env), file);

    // The right keys: the pending copy is stored and verifies.
    let o = run(&env, &["backups", "push", "chat"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(pending(&env).is_empty());
    let copies = verified_copies(&env);
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0]["local_file"], file.as_str());
    assert!(server.object(&format!("lk/chat/{file}.zst.age")).is_file());
}

#[test]
fn server_killed_during_a_multipart_upload_then_back_stores_the_pending_copy() {
    let env = TestEnv::new();
    let mut server = S3sFs::start(&env.path("s3"));
    let (_identity, public) = keygen(&env);
    // 24 MiB that do not compress: three parts of 8 MiB.
    let db = env.sqlite(
        "chat.db",
        "CREATE TABLE b(id INTEGER PRIMARY KEY, x BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 24)
         INSERT INTO b(x) SELECT randomblob(1048576) FROM n;",
    );
    // The default request timeout: a part of 8 MiB on a loaded machine takes seconds.
    let body = s3_remote(&server.endpoint(), &public).replace("timeout = \"5s\"", "");
    config(&env, &db, &body, "");
    let mut job = env.spawn(&["run", "chat", "backup"], KEYS);
    // The first part is stored and the second on its way: the upload is under way.
    crate::util::wait_for(
        "the second part of the multipart upload",
        Duration::from_secs(300),
        || {
            assert!(
                job.alive(),
                "the run ended before its upload: {}",
                job.log()
            );
            server
                .parts()
                .iter()
                .any(|p| p.ends_with(".part-2"))
                .then_some(())
        },
    );
    server.kill();
    let status = job.wait_exit(Duration::from_secs(120));
    let err = job.log();
    assert_eq!(status.code(), Some(75), "{err}");
    let line = remote_line(&err);
    assert!(line.contains("uploading lk/chat/chat-"), "{line}");
    assert!(
        line.contains(&format!("{} (is the server running", server.endpoint()))
            || line.contains(&format!("the connection to {} was lost", server.endpoint())),
        "{line}"
    );
    let file = kept_and_pending(&env);
    let local = env.path("backups").join(&file);
    assert_eq!(query_i64(&local, "SELECT count(*) FROM b"), 24);
    // The manifest lists no copy (it may exist: the first push claims the prefix for this
    // host with an empty one before uploading).
    let manifest = server.object("lk/chat/litekeeper-manifest.json");
    if manifest.exists() {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
        assert_eq!(m["copies"], serde_json::json!([]), "{m}");
    }
    assert!(!server.object(&format!("lk/chat/{file}.zst.age")).exists());

    // The server is back: `backups push` stores the copy, and the listing is complete.
    server.restart();
    let o = run(&env, &["backups", "push", "chat"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    crate::util::assert_stdout_has(&o, "chat: stored 1 pending copy");
    assert!(pending(&env).is_empty());
    let copies = verified_copies(&env);
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0]["local_file"], file.as_str());
    assert!(copies[0]["size"].as_u64().unwrap() > 2 * (8 << 20));
}

/// Runs `run chat backup` in the background and waits for it (a hang fails the test): its
/// exit code and stderr.
fn run_bounded(env: &TestEnv) -> (Option<i32>, String) {
    let mut job = env.spawn(&["run", "chat", "backup"], KEYS);
    let status = job.wait_exit(Duration::from_secs(90));
    (status.code(), job.log())
}

#[test]
fn a_server_that_never_answers_ends_the_run_at_its_timeout() {
    let env = TestEnv::new();
    // Accepts connections (the kernel's backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let (_identity, public) = keygen(&env);
    let db = chat_db(&env);
    let body = s3_remote(&endpoint, &public).replace("timeout = \"5s\"", "timeout = \"2s\"");
    config(&env, &db, &body, "");
    let (code, err) = run_bounded(&env);
    assert_eq!(code, Some(75), "{err}");
    let line = remote_line(&err);
    assert!(
        line.contains(&format!("no answer from {endpoint} within 2s (timeout")),
        "{line}"
    );
    assert!(!err.contains("never-printed"), "{err}");
    kept_and_pending(&env);
    drop(silent);
}

#[test]
fn tls_to_a_plain_http_port_says_so_in_one_line() {
    let env = TestEnv::new();
    let moto = Moto::start();
    moto.bucket(BUCKET);
    let endpoint = format!("https://127.0.0.1:{}", moto.port);
    let (_identity, public) = keygen(&env);
    let db = chat_db(&env);
    config(&env, &db, &s3_remote(&endpoint, &public), "");
    let (code, err) = run_bounded(&env);
    assert_eq!(code, Some(1), "{err}");
    let line = remote_line(&err);
    assert!(
        line.contains(&format!(
            "TLS with {endpoint} failed: the server does not speak TLS there"
        )),
        "{line}"
    );
    assert!(line.contains("plain-http port"), "{line}");
    kept_and_pending(&env);
}

#[test]
fn a_host_name_that_does_not_resolve_is_one_line() {
    if !root_or_skip("a private mount and network namespace for the resolver") {
        return;
    }
    let env = TestEnv::new();
    let (_identity, public) = keygen(&env);
    let db = chat_db(&env);
    let endpoint = "http://lk-no-such-host.invalid:9000";
    let body = format!("{}allow_http = true\n", s3_remote(endpoint, &public));
    config(&env, &db, &body, "");
    // Hermetic: hosts from /etc/hosts only, and no network but a loopback that is down, so
    // no query leaves this machine.
    let nss = env.path("nsswitch.conf");
    std::fs::write(&nss, "hosts: files\n").unwrap();
    let lk = env.std_cmd();
    let mut c = std::process::Command::new("unshare");
    c.args(["--mount", "--net", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$0\" /etc/nsswitch.conf && exec \"$@\"")
        .arg(&nss)
        .arg(lk.get_program())
        .args(lk.get_args())
        .args(["run", "chat", "backup"]);
    for (k, v) in lk.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    for (k, v) in KEYS {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(75), "{}", both(&o));
    let line = remote_line(&err);
    assert!(
        line.contains(&format!(
            "the host name \"lk-no-such-host.invalid\" of {endpoint} does not resolve"
        )),
        "{line}"
    );
    assert!(line.contains("check the endpoint's spelling"), "{line}");
    assert!(!err.contains("never-printed"), "{err}");
    kept_and_pending(&env);
}
