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

/// `app` at `db` backed up into `b/` (zstd) with incremental chains and a `file://` remote
/// `remote/` encrypted to a new key. The identity file.
fn app_with_file_remote(env: &TestEnv, db: &Path) -> std::path::PathBuf {
    let (identity, public) = crate::offsite::fixture::keygen(env);
    std::fs::create_dir(env.path("remote")).unwrap();
    env.write_config(&format!(
        "{}[[database]]\nname = \"app\"\npath = \"{}\"\n[database.backup]\ndir = \"{}\"\ncompress = \"zstd\"\nremotes = [\"offsite\"]\nincremental = {{ keep = \"7d\" }}\n\n[[remote]]\nname = \"offsite\"\nurl = \"file://{}\"\nencrypt_to = [\"{public}\"]\n",
        env.daemon_section(""),
        db.display(),
        env.path("b").display(),
        env.path("remote").display()
    ));
    identity
}

/// Points made more than once a second are dated ahead of the clock, so the full backup made
/// right after them is dated before the newest point of the older chain (whose full backup
/// is still there). `restore --at latest`, local and `--from` the remote, restores that newer
/// full backup with exit 0 and no warning: nothing is lost, and no backup is "missing".
#[test]
fn a_full_backup_dated_before_the_last_point_is_no_broken_chain() {
    let env = TestEnv::new();
    let db = env.sqlite(
        "app.db",
        "PRAGMA journal_mode=WAL; CREATE TABLE n(id INTEGER PRIMARY KEY, pad BLOB);",
    );
    let identity = app_with_file_remote(&env, &db);
    let dir = env.path("b");
    insert(&db, 1, 10);
    env.run_ok(&["run", "app", "backup"]);
    let newest_point = || -> chrono::DateTime<chrono::Utc> {
        let m: Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        m["deltas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["created_at"].as_str().unwrap().parse().unwrap())
            .max()
            .unwrap()
    };
    let mut id = 10;
    for _ in 0..60 {
        id += 1;
        insert(&db, id, id);
        env.run_ok(&["run", "app", "incremental"]);
        if newest_point() >= chrono::Utc::now() + chrono::Duration::seconds(3) {
            break;
        }
    }
    insert(&db, id + 1, id + 5);
    env.run_ok(&["run", "app", "backup"]);
    let fulls: Vec<String> = crate::util::names(&dir)
        .into_iter()
        .filter(|n| n.ends_with(".db.zst"))
        .collect();
    let second: chrono::NaiveDateTime = chrono::NaiveDateTime::parse_from_str(
        fulls[1]
            .trim_start_matches("app-")
            .trim_end_matches(".db.zst"),
        "%Y%m%d-%H%M%S",
    )
    .unwrap();
    assert!(
        second.and_utc() < newest_point(),
        "the new full {} must be dated before the newest point {}",
        fulls[1],
        newest_point()
    );
    let all: Vec<i64> = (1..=id + 5).collect();

    let (o, to) = restore_at(&env, "latest", "local.db");
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(!both(&o).contains("warning"), "{}", both(&o));
    assert_eq!(ids(&to), all);

    let to = env.path("remote.db");
    let o = env
        .cmd()
        .args([
            "restore",
            "app",
            "--at",
            "latest",
            "--from",
            "offsite",
            "--identity",
        ])
        .arg(&identity)
        .arg("--to")
        .arg(&to)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(!both(&o).contains("warning"), "{}", both(&o));
    assert_eq!(ids(&to), all);
}

/// A backup whose copy waits (the NAS not mounted) and is damaged on the local disk before
/// the push (a flipped byte: bit rot, a tool writing into it): the push refuses to store it,
/// naming the file and exiting 65, leaves no object in the store and the copy pending.
/// Stored, it was listed `ok` (even with `--verify`) and restore from the remote refused
/// it only once the host was lost.
#[test]
fn a_local_backup_damaged_before_its_push_is_never_stored_as_a_good_copy() {
    use crate::offsite::fixture::{chat_db, config, keygen};
    let env = TestEnv::new();
    let (_identity, public) = keygen(&env);
    let db = chat_db(&env);
    let nas = env.path("nas");
    config(
        &env,
        &db,
        &format!(
            "url = \"file://{}\"\nencrypt_to = [\"{public}\"]\n",
            nas.display()
        ),
        "",
    );
    let o = env.cmd().args(["run", "chat", "backup"]).output().unwrap();
    assert_ne!(
        o.status.code(),
        Some(0),
        "the NAS is not there: {}",
        both(&o)
    );
    let backups = env.path("backups");
    let file: String = crate::util::names(&backups)
        .into_iter()
        .find(|n| n.starts_with("chat-") && n.ends_with(".db"))
        .unwrap();
    let path = backups.join(&file);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[3000] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    std::fs::create_dir(&nas).unwrap();

    let o = env
        .cmd()
        .args(["backups", "push", "chat"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(65), "{}", both(&o));
    assert!(
        err.contains(&file) && err.contains("changed or was damaged"),
        "{err}"
    );
    let stored: Vec<String> = crate::util::names(&nas.join("chat"))
        .into_iter()
        .filter(|n| n.ends_with(".age"))
        .collect();
    assert!(stored.is_empty(), "nothing stored: {stored:?}");
    let o = env
        .cmd()
        .args(["backups", "list", "chat"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("offsite: pending"),
        "{}",
        both(&o)
    );
}

/// Files saved by an editor as UTF-8 "with BOM" (and CRLF): a recipients file whose first
/// line is a comment, and a credentials file whose first line is the key id. Both are read
/// as written: the recipients load, and `check` gets past the credentials to the endpoint
/// (a closed port here) instead of saying the file does not set AWS_ACCESS_KEY_ID.
#[test]
fn files_saved_with_a_byte_order_mark_are_read_as_written() {
    let env = TestEnv::new();
    let file = env.path("recipients.txt");
    std::fs::write(
        &file,
        format!("\u{feff}# the team's key\r\n{RECIPIENT}\r\n"),
    )
    .unwrap();
    let o = load_remote(
        &env,
        &format!(
            "url = \"file://{}\"\nencrypt_to_file = \"{}\"",
            env.path("nas").display(),
            file.display()
        ),
    );
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));

    let creds = env.path("s3.env");
    let secret = "lk-bom-secret-never-shown";
    std::fs::write(
        &creds,
        format!("\u{feff}AWS_ACCESS_KEY_ID=AKIALITEKEEPER\r\nAWS_SECRET_ACCESS_KEY={secret}\r\n"),
    )
    .unwrap();
    load_remote(
        &env,
        &format!(
            "url = \"s3://acme-backups/lk\"\nendpoint = \"http://127.0.0.1:9\"\ntimeout = \"3s\"\ncredentials = \"{}\"\nencrypt_to = [\"{RECIPIENT}\"]",
            creds.display()
        ),
    );
    let o = env.cmd().arg("check").output().unwrap();
    let out = both(&o);
    assert!(out.contains("remote offsite: error:"), "{out}");
    assert!(!out.contains("must set"), "{out}");
    assert!(out.contains("refused"), "{out}");
    assert!(!out.contains(secret), "{out}");
}
