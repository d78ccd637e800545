//! `[[remote]]` and `[database.backup] remotes`: every mistake refused at load, exit 78, one
//! line naming the file, line, key; no secret ever echoed.

use crate::util::{both, TestEnv};

/// A public key: recipients are not secret.
pub const RECIPIENT: &str = "age1k4tahxkpfqrjz5dxuhgjvmz9ef9kzv7l0nvfjmd2k5eaxmr7kfqsanmp8z";

fn config(env: &TestEnv, remote: &str, backup_extra: &str) -> String {
    let db = env.sqlite("chat.db", "CREATE TABLE IF NOT EXISTS t(x);");
    format!(
        "{}[[database]]\nname = \"chat\"\npath = \"{}\"\n[database.backup]\ndir = \"{}\"\n{backup_extra}\n\n{remote}",
        env.daemon_section(""),
        db.display(),
        env.path("backups").display()
    )
}

fn load(env: &TestEnv, text: &str) -> std::process::Output {
    env.write_config(text);
    env.cmd().args(["schedule"]).output().unwrap()
}

#[test]
fn remote_mistakes_are_refused_at_load_naming_the_key() {
    let env = TestEnv::new();
    let good = format!(
        "[[remote]]\nname = \"offsite\"\nurl = \"s3://acme-backups/lk\"\nendpoint = \"http://127.0.0.1:9\"\nencrypt_to = [\"{RECIPIENT}\"]\n"
    );
    let o = load(&env, &config(&env, &good, "remotes = [\"offsite\"]"));
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));

    let secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY";
    let cases: Vec<(String, String, &[&str])> = vec![
        (
            good.clone(),
            "remotes = [\"nas\"]".into(),
            &["database \"chat\" backup.remotes[0]", "no [[remote]] of this name (known: offsite)", "\"nas\""],
        ),
        (
            good.replace("s3://acme-backups/lk", "ftp://host/x"),
            String::new(),
            &["remote[0].url", "expected s3://BUCKET/PREFIX or file:///DIR"],
        ),
        (
            good.replace(RECIPIENT, "age1notakey"),
            String::new(),
            &["remote[0].encrypt_to[0]", "age X25519 recipient", "age1notakey"],
        ),
        (
            good.replace("http://127.0.0.1:9", "http://s3.example.net"),
            String::new(),
            &["remote[0].endpoint", "allow_http = true"],
        ),
        (
            good.replace("url = \"s3://acme-backups/lk\"", &format!("url = \"s3://AKIAEXAMPLE:{secret}@acme-backups/lk\"")),
            String::new(),
            &["remote[0].url", "credentials never go in the url"],
        ),
        (
            format!("{good}credentials = \"{secret}/+=\"\n"),
            String::new(),
            &["remote[0].credentials", "systemd credential name"],
        ),
        (
            good.replace(&format!("encrypt_to = [\"{RECIPIENT}\"]\n"), ""),
            String::new(),
            &["remote[0].encrypt_to", "always encrypted"],
        ),
        (
            format!("{good}[[remote]]\nname = \"offsite\"\nurl = \"file:///srv/x\"\nencrypt_to = [\"{RECIPIENT}\"]\n"),
            String::new(),
            &["remote[1].name", "duplicate remote name"],
        ),
    ];
    for (remote, extra, says) in cases {
        let o = load(&env, &config(&env, &remote, &extra));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(78), "{remote}\n{}", both(&o));
        assert_eq!(err.lines().count(), 1, "{}", both(&o));
        assert!(
            err.starts_with(&format!(
                "litekeeper: error: {}:",
                env.config_path().display()
            )),
            "{err}"
        );
        for s in says {
            assert!(err.contains(s), "{s:?} missing from {err:?}");
        }
        assert!(!err.contains(secret), "secret echoed: {err}");
    }
}

#[test]
fn recipients_file_refuses_a_secret_key_and_takes_public_keys() {
    let env = TestEnv::new();
    let file = env.path("recipients.txt");
    std::fs::write(&file, format!("# team key\n{RECIPIENT}\n")).unwrap();
    let remote = format!(
        "[[remote]]\nname = \"nas\"\nurl = \"file://{}\"\nencrypt_to_file = \"{}\"\n",
        env.path("nas").display(),
        file.display()
    );
    let o = load(&env, &config(&env, &remote, "remotes = [\"nas\"]"));
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let identity = "AGE-SECRET-KEY-1S5DV4KTN89CYX83LN6YCHR9ZX83X0R78RSNGVMX68ZK6SK7T4ADQGD6C9X";
    std::fs::write(&file, format!("{identity}\n")).unwrap();
    let o = load(&env, &config(&env, &remote, "remotes = [\"nas\"]"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    assert!(
        err.contains("remote[0].encrypt_to_file") && err.contains("line 1 is a secret identity"),
        "{err}"
    );
    assert!(!err.contains(identity), "{err}");
}

#[test]
fn systemd_units_open_the_network_and_load_the_credential_for_remotes() {
    let env = TestEnv::new();
    // Outside the temp dir (whose ReadWritePaths= would cover it); never created here.
    let nas = std::path::PathBuf::from("/mnt/litekeeper-test-nas");
    let remote = format!(
        "[[remote]]\nname = \"offsite\"\nurl = \"s3://acme-backups/lk\"\ncredentials = \"offsite-s3\"\nencrypt_to = [\"{RECIPIENT}\"]\n\
         [[remote]]\nname = \"nas\"\nurl = \"file://{}\"\nencrypt_to = [\"{RECIPIENT}\"]\n",
        nas.display()
    );
    env.write_config(&config(&env, &remote, "remotes = [\"offsite\", \"nas\"]"));
    let out = env.path("units");
    let o = env.systemd_units(&out, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let dir = out.join("litekeeper-backup@.service.d");
    let network = std::fs::read_to_string(dir.join("network.conf")).unwrap();
    assert!(
        network.contains("PrivateNetwork=no") && network.contains("AF_INET6"),
        "{network}"
    );
    let paths = std::fs::read_to_string(dir.join("paths.conf")).unwrap();
    assert!(paths.contains("LoadCredential=offsite-s3\n"), "{paths}");
    assert!(
        paths.contains(&format!("ReadWritePaths=\"-{}\"", nas.display())),
        "{paths}"
    );
}

#[test]
fn check_warns_about_a_credentials_file_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new();
    let creds = env.path("s3.env");
    let secret = "lk-secret-never-shown";
    std::fs::write(
        &creds,
        format!("AWS_ACCESS_KEY_ID=AKIA\nAWS_SECRET_ACCESS_KEY={secret}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let remote = format!(
        "[[remote]]\nname = \"offsite\"\nurl = \"file://{}\"\nencrypt_to = [\"{RECIPIENT}\"]\n\
         [[remote]]\nname = \"s3\"\nurl = \"s3://acme-backups/lk\"\ncredentials = \"{}\"\nencrypt_to = [\"{RECIPIENT}\"]\n",
        env.path("nas").display(),
        creds.display()
    );
    env.write_config(&config(&env, &remote, "remotes = [\"offsite\"]"));
    let o = env.cmd().arg("check").output().unwrap();
    let out = both(&o);
    assert!(
        out.contains(&format!(
            "remote s3: warning: {} holds secrets and is readable by group or others (mode 644)",
            creds.display()
        )),
        "{out}"
    );
    assert!(!out.contains(secret), "{out}");
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = env.cmd().arg("check").output().unwrap();
    assert!(!both(&o).contains("holds secrets"), "{}", both(&o));
}
