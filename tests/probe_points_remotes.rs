//! A hostile probe of this round's new paths, second pass: `restore --at` when a newer full
//! backup was deleted by hand, and `[[remote]]` stanzas an unlucky operator writes (a
//! recipients file of comments only, an endpoint carrying a token in its query).

use std::path::Path;

use serde_json::Value;

use crate::incremental::{insert, setup};
use crate::util::{both, query_ids, TestEnv};

/// A public key: recipients are not secret.
const RECIPIENT: &str = "age1k4tahxkpfqrjz5dxuhgjvmz9ef9kzv7l0nvfjmd2k5eaxmr7kfqsanmp8z";

fn ids(db: &Path) -> Vec<i64> {
    query_ids(db, "SELECT id FROM n ORDER BY id")
}

/// `restore app --at AT --to NAME`.
fn restore_at(env: &TestEnv, at: &str, name: &str) -> (std::process::Output, std::path::PathBuf) {
    let to = env.path(name);
    let o = env
        .cmd()
        .args(["restore", "app", "--at", at, "--to"])
        .arg(&to)
        .output()
        .unwrap();
    (o, to)
}

/// The newest full backup (a point after the chain of the older one) deleted by hand while
/// the manifest still records it: `restore --at latest` restores the newest point it can
/// reach, but says which newer backup is gone and exits 65, as for a broken link; a time
/// before the deleted backup restores without a word.
#[test]
fn restore_at_latest_says_so_when_a_newer_full_backup_was_deleted_by_hand() {
    let (env, db, dir) = setup("7d", "");
    insert(&db, 1, 50);
    env.run_ok(&["run", "app", "backup"]);
    insert(&db, 51, 60);
    env.run_ok(&["run", "app", "incremental"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    insert(&db, 61, 70);
    env.run_ok(&["run", "app", "backup"]);
    let fulls: Vec<String> = crate::util::names(&dir)
        .into_iter()
        .filter(|n| n.ends_with(".db.zst"))
        .collect();
    assert_eq!(fulls.len(), 2, "{fulls:?}");
    std::fs::remove_file(dir.join(&fulls[1])).unwrap();

    let (o, to) = restore_at(&env, "latest", "latest.db");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(65), "{}", both(&o));
    assert!(err.contains(&fulls[1]) && err.contains("warning"), "{err}");
    assert_eq!(
        ids(&to),
        (1..=60).collect::<Vec<_>>(),
        "the last point reached"
    );

    let m: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let point = m["deltas"][0]["created_at"].as_str().unwrap().to_string();
    let (o, to) = restore_at(&env, &point, "point.db");
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(!both(&o).contains("warning"), "{}", both(&o));
    assert_eq!(ids(&to), (1..=60).collect::<Vec<_>>());
}

/// A configuration with one file remote whose stanza ends with `remote_extra`; `schedule`
/// loads it.
fn load_remote(env: &TestEnv, remote_extra: &str) -> std::process::Output {
    let db = env.sqlite("chat.db", "CREATE TABLE IF NOT EXISTS t(x);");
    env.write_config(&format!(
        "{}[[database]]\nname = \"chat\"\npath = \"{}\"\n[database.backup]\ndir = \"{}\"\nremotes = [\"offsite\"]\n\n[[remote]]\nname = \"offsite\"\n{remote_extra}\n",
        env.daemon_section(""),
        db.display(),
        env.path("backups").display()
    ));
    env.cmd().arg("schedule").output().unwrap()
}

/// `encrypt_to = []`, or a recipients file of comments and blank lines (CRLF, as an editor
/// on another system saves it): no one to encrypt to, refused at load naming the key (not
/// accepted, then failing every upload with age's "Missing recipients"); the same file with
/// one recipient line is taken.
#[test]
fn a_remote_with_no_recipient_is_refused_at_load() {
    let env = TestEnv::new();
    let url = format!("url = \"file://{}\"\n", env.path("nas").display());
    let o = load_remote(&env, &format!("{url}encrypt_to = []"));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    assert!(
        err.contains("remote[0].encrypt_to") && err.contains("no age recipient"),
        "{err}"
    );

    let file = env.path("recipients.txt");
    std::fs::write(&file, "# the team's key goes here\r\n\r\n").unwrap();
    let o = load_remote(
        &env,
        &format!("{url}encrypt_to_file = \"{}\"", file.display()),
    );
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    assert!(
        err.contains("remote[0].encrypt_to_file") && err.contains("no age recipient"),
        "{err}"
    );

    std::fs::write(&file, format!("# the team's key\r\n{RECIPIENT}\r\n")).unwrap();
    let o = load_remote(
        &env,
        &format!("{url}encrypt_to_file = \"{}\"", file.display()),
    );
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
}

/// An endpoint with a query (a gateway's token, a signature) or a fragment is refused at
/// load without echoing it: accepted, it was printed in every connection error and journal
/// line of the remote.
#[test]
fn an_endpoint_with_a_query_is_refused_without_echoing_it() {
    let env = TestEnv::new();
    let secret = "lk-endpoint-token-never-shown";
    for endpoint in [
        format!("https://minio.internal:9000/?X-Amz-Signature={secret}"),
        format!("https://minio.internal:9000/#{secret}"),
    ] {
        let o = load_remote(
            &env,
            &format!(
                "url = \"s3://acme-backups/lk\"\nendpoint = \"{endpoint}\"\nencrypt_to = [\"{RECIPIENT}\"]"
            ),
        );
        let out = both(&o);
        assert_eq!(o.status.code(), Some(78), "{out}");
        assert!(
            out.contains("remote[0].endpoint") && out.contains("no query or fragment"),
            "{out}"
        );
        assert!(!out.contains(secret), "{out}");
    }
}
