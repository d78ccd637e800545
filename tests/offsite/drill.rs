//! Restore drills of off-site copies on a real S3 server (moto): a copy is downloaded,
//! checked, decrypted with the drill's identity (a file or a systemd credential), restored and
//! checked, with each phase timed; after the local backups are lost it still restores; a
//! corrupted object fails the drill naming the copy and the remote; a missing, unreadable or
//! wrong identity is one clear error, and no copy is marked for it.

use std::path::Path;
use std::process::Output;

use super::fixture::*;
use crate::util::{both, TestEnv};

/// `litekeeper drill chat ARGS` with the moto credentials and `env_extra`.
fn drill(env: &TestEnv, args: &[&str], env_extra: &[(&str, &Path)]) -> Output {
    let mut c = env.cmd();
    c.arg("drill").arg("chat").args(args);
    for (k, v) in KEYS {
        c.env(k, v);
    }
    for (k, v) in env_extra {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// moto with a bucket, `chat` backed up once and copied off-site, drilled as `drill` says
/// (lines of `[database.drill]`). The identity file and the moto server.
fn setup(env: &TestEnv, drill: &str) -> (std::path::PathBuf, Moto, String) {
    let moto = Moto::start();
    moto.bucket(BUCKET);
    let (identity, public) = keygen(env);
    let db = chat_db(env);
    let body = s3_remote(&moto.endpoint(), &public);
    config(
        env,
        &db,
        &body,
        &format!("compress = \"zstd\"\n[database.drill]\n{drill}\n"),
    );
    let o = run(env, &["run", "chat", "backup"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    (identity, moto, body)
}

fn status_copies(env: &TestEnv) -> serde_json::Value {
    let json = env.status_json();
    json["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == "drill")
        .unwrap()["last"]["figures"]["copies"]
        .clone()
}

#[test]
fn a_drill_from_s3_downloads_decrypts_restores_and_checks_the_copy_timing_each_phase() {
    let env = TestEnv::new();
    let (identity, _moto, _) = setup(
        &env,
        &format!(
            "from = [\"local\", \"offsite\"]\nidentity = \"{}\"\nassert = [\"SELECT count(*) = 500 FROM m\"]",
            env.path("identity.txt").display()
        ),
    );
    assert!(identity.exists());
    let copy = local_backups(&env)[0].clone();
    let o = drill(&env, &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for want in [
        format!("{copy} from local"),
        format!("{copy} from offsite"),
        "decrypt ".into(),
        format!("row counts {copy}: 1 table(s) as recorded: ok"),
        "assert[0] \"SELECT count(*) = 500 FROM m\": ok".into(),
    ] {
        assert!(out.contains(&want), "{want:?} not in {out}");
    }
    assert_eq!(out.matches("verdict: ok").count(), 2, "{out}");
    // Each phase is in the run's figures, the remote's copy with its stored bytes.
    let copies = status_copies(&env);
    let remote = copies
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["source"] == "offsite")
        .unwrap()
        .clone();
    for phase in [
        "fetch_ms",
        "decrypt_ms",
        "decompress_ms",
        "restore_ms",
        "check_ms",
    ] {
        assert!(
            remote["phases"][phase].as_u64().is_some(),
            "{phase}: {remote}"
        );
    }
    assert!(remote["bytes"].as_u64().unwrap() > 0, "{remote}");
    assert!(
        remote["restored_bytes"].as_u64().unwrap() > remote["bytes"].as_u64().unwrap(),
        "{remote}"
    );
    // Nothing is left in the scratch directory.
    assert!(!env.path("state/drill/chat").exists());

    // The worst day: the local backups are gone; the remote copy still restores, and its
    // counts travel with it in the remote manifest.
    std::fs::remove_dir_all(env.path("backups")).unwrap();
    let o = drill(&env, &["--from", "offsite"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("row counts {copy}: 1 table(s) as recorded: ok"))
            && out.contains(&format!("page count {copy}: "))
            && out.contains("integrity_check")
            && out.contains("verdict: ok"),
        "{out}"
    );
}

#[test]
fn the_identity_may_be_a_systemd_credential() {
    let env = TestEnv::new();
    let (identity, _moto, _) = setup(
        &env,
        "from = [\"offsite\"]\nidentity = \"credential:drill-age\"",
    );
    let creds = env.path("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::copy(&identity, creds.join("drill-age")).unwrap();
    let o = drill(&env, &[], &[("CREDENTIALS_DIRECTORY", &creds)]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(both(&o).contains("from offsite"), "{}", both(&o));
    // `systemd-units` loads it for the units that run drills, and only those.
    let units = env.path("units");
    let o = env.systemd_units(&units, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    for unit in ["litekeeper.service.d", "litekeeper-drill@.service.d"] {
        let text = std::fs::read_to_string(units.join(unit).join("identity.conf")).unwrap();
        assert!(
            text.contains("LoadCredential=drill-age\n"),
            "{unit}: {text}"
        );
    }
    assert!(!units
        .join("litekeeper-backup@.service.d/identity.conf")
        .exists());
    // Without the credentials directory: one line saying what to add to the unit.
    let o = drill(&env, &[], &[]);
    assert_eq!(o.status.code(), Some(66), "{}", both(&o));
    assert!(
        both(&o).contains("$CREDENTIALS_DIRECTORY is not set")
            && both(&o).contains("LoadCredential=drill-age"),
        "{}",
        both(&o)
    );
}

#[test]
fn a_corrupted_remote_object_fails_the_drill_naming_the_copy_and_the_remote() {
    let env = TestEnv::new();
    let (_identity, moto, _) = setup(
        &env,
        &format!(
            "from = [\"offsite\"]\nidentity = \"{}\"",
            env.path("identity.txt").display()
        ),
    );
    let copy = local_backups(&env)[0].clone();
    let key = format!("lk/chat/{copy}.age");
    let mut bytes = moto.get(&key).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    moto.put(&key, &bytes);
    let o = drill(&env, &[], &[]);
    assert_eq!(o.status.code(), Some(65), "{}", both(&o));
    let text = both(&o);
    assert!(
        text.contains(&format!("{copy} (offsite)"))
            && text.contains("remote \"offsite\"")
            && text.contains("changed or damaged"),
        "{text}"
    );
    let copies = status_copies(&env);
    assert_eq!(copies[0]["verdict"], "failed", "{copies}");
    assert_eq!(copies[0]["backup"], copy.as_str(), "{copies}");
    // The local copy is not the one that failed: its manifest entry carries no mark.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("backups/manifest.json")).unwrap()).unwrap();
    let entry = m["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["file"] == copy.as_str())
        .unwrap()
        .clone();
    assert!(entry.get("drill").is_none(), "{entry}");
    // The remote's copy is: its manifest records the failed drill.
    let remote: serde_json::Value =
        serde_json::from_slice(&moto.get("lk/chat/litekeeper-manifest.json").unwrap()).unwrap();
    assert_eq!(remote["copies"][0]["local_file"], copy.as_str(), "{remote}");
    assert_eq!(
        remote["copies"][0]["drill"]["verdict"], "failed",
        "{remote}"
    );
    assert!(!env.path("state/drill/chat").exists());
}

#[test]
fn a_missing_or_wrong_identity_is_one_clear_error() {
    let env = TestEnv::new();
    let (_identity, _moto, body) = setup(&env, "from = [\"local\"]");
    let db = env.path("chat.db");
    let with = |drill: &str| {
        config(
            &env,
            &db,
            &body,
            &format!("compress = \"zstd\"\n[database.drill]\n{drill}\n"),
        )
    };
    // Not configured: refused at load, naming the key.
    with("from = [\"offsite\"]");
    let o = run(&env, &["check"]);
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    assert!(
        both(&o).contains("drill.identity") && both(&o).contains("needs the age identity"),
        "{}",
        both(&o)
    );
    // `--from offsite` when only local is scheduled, and no identity: one line, exit 78.
    with("from = [\"local\"]");
    let o = drill(&env, &["--from", "offsite"], &[]);
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    assert!(both(&o).contains("needs `identity`"), "{}", both(&o));
    // A file that is not there: exit 66, naming it.
    let gone = env.path("gone.age");
    with(&format!(
        "from = [\"offsite\"]\nidentity = \"{}\"",
        gone.display()
    ));
    let o = drill(&env, &[], &[]);
    assert_eq!(o.status.code(), Some(66), "{}", both(&o));
    assert!(
        both(&o).contains(&gone.display().to_string())
            && both(&o).contains("cannot read the age identity"),
        "{}",
        both(&o)
    );
    // Another key: exit 78, saying which keys it holds and which the remote wants.
    let other = env.path("other.age");
    std::fs::write(
        &other,
        "AGE-SECRET-KEY-1S5DV4KTN89CYX83LN6YCHR9ZX83X0R78RSNGVMX68ZK6SK7T4ADQGD6C9X\n",
    )
    .unwrap();
    with(&format!(
        "from = [\"offsite\"]\nidentity = \"{}\"",
        other.display()
    ));
    let o = drill(&env, &[], &[]);
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    assert!(
        both(&o).contains("none of its keys") && both(&o).contains("remote \"offsite\""),
        "{}",
        both(&o)
    );
    // None of these failed a copy: no drill mark anywhere, no verdict recorded.
    let m = std::fs::read_to_string(env.path("backups/manifest.json")).unwrap();
    assert!(!m.contains("\"drill\""), "{m}");
    assert!(!env.path("state/drill/chat").exists());
}

/// A `file://` remote in `nas/`: `chat` (500 rows, zstd) copied there, drilled from it as
/// `drill` says; `backup_extra` lines in `[database.backup]`. The identity file and its
/// public key.
fn setup_dir(env: &TestEnv, backup_extra: &str, drill: &str) -> (std::path::PathBuf, String) {
    let (identity, public) = keygen(env);
    let db = chat_db(env);
    std::fs::create_dir(env.path("nas")).unwrap();
    config(
        env,
        &db,
        &nas_body(env, &public),
        &format!(
            "compress = \"zstd\"\n{backup_extra}\n[database.drill]\nidentity = \"{}\"\n{drill}\n",
            identity.display()
        ),
    );
    (identity, public)
}

fn nas_body(env: &TestEnv, public: &str) -> String {
    format!(
        "url = \"file://{}\"\nencrypt_to = [\"{public}\"]\n",
        env.path("nas").display()
    )
}

/// The remote manifest of `chat` in `nas/`.
fn nas_manifest(env: &TestEnv) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(env.path("nas/chat/litekeeper-manifest.json")).unwrap())
        .unwrap()
}

/// The remote manifest's copy of the local file `file`.
fn nas_copy(env: &TestEnv, file: &str) -> serde_json::Value {
    nas_manifest(env)["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["local_file"] == file)
        .unwrap_or_else(|| panic!("{file} not in {}", nas_manifest(env)))
        .clone()
}

#[test]
fn a_failed_drill_of_a_remote_copy_is_marked_there_listed_and_never_kept_as_newest_verified() {
    let env = TestEnv::new();
    let (identity, public) = setup_dir(
        &env,
        "keep = { last = 10 }\nremote_keep = { last = 2 }",
        "from = [\"offsite\"]",
    );
    for _ in 0..2 {
        let o = run(&env, &["run", "chat", "backup"]);
        assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    }
    let local = local_backups(&env);
    let (older, newest) = (local[0].clone(), local[1].clone());
    // The newest copy is damaged in the store (same size: the listing cannot see it).
    let object = env.path(&format!("nas/chat/{newest}.age"));
    let good = std::fs::read(&object).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    std::fs::write(&object, &bad).unwrap();
    let o = drill(&env, &[], &[]);
    assert_eq!(o.status.code(), Some(65), "{}", both(&o));

    // The verdict is beside the copy in the remote manifest, with its error.
    let mark = &nas_copy(&env, &newest)["drill"];
    assert_eq!(mark["verdict"], "failed", "{mark}");
    assert!(
        mark["error"]
            .as_str()
            .unwrap()
            .contains("changed or damaged"),
        "{mark}"
    );
    assert!(nas_copy(&env, &older).get("drill").is_none());
    // `backups list --remote` shows it, in JSON (null for a copy never drilled) and text.
    let o = run(
        &env,
        &["backups", "list", "chat", "--remote", "offsite", "--json"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let copies = listed["databases"][0]["copies"].as_array().unwrap();
    let of = |f: &str| copies.iter().find(|c| c["local_file"] == f).unwrap();
    assert_eq!(of(&newest)["drill"]["verdict"], "failed", "{listed}");
    assert!(of(&older)["drill"].is_null(), "{listed}");
    let o = run(&env, &["backups", "list", "chat", "--remote", "offsite"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("drill: failed") && text.contains("changed or damaged"),
        "{text}"
    );

    // Remote retention keeping one copy keeps the older, good one too: the newest verified.
    let db = env.path("chat.db");
    config(
        &env,
        &db,
        &nas_body(&env, &public),
        &format!(
            "compress = \"zstd\"\nkeep = {{ last = 10 }}\nremote_keep = {{ last = 1 }}\n[database.drill]\nidentity = \"{}\"\nfrom = [\"offsite\"]\n",
            identity.display()
        ),
    );
    let o = run(&env, &["run", "chat", "backup", "--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(
        both(&o).contains("remote \"offsite\": retention would delete nothing"),
        "{}",
        both(&o)
    );
    // A restore from the remote without a name takes the good copy, not the failed one.
    let id = identity.display().to_string();
    let to = env.path("restored.db");
    let o = run(
        &env,
        &[
            "restore",
            "chat",
            "--from",
            "offsite",
            "--identity",
            &id,
            "--to",
            &to.display().to_string(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let plain = |f: &str| f.trim_end_matches(".zst").to_string();
    assert!(
        both(&o).contains(&plain(&older)) && !both(&o).contains(&plain(&newest)),
        "{older} {newest}: {}",
        both(&o)
    );

    // The copy is repaired: a good drill of it replaces the mark.
    std::fs::write(&object, &good).unwrap();
    let o = drill(&env, &[&newest], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let mark = &nas_copy(&env, &newest)["drill"];
    assert_eq!(mark["verdict"], "ok", "{mark}");
    assert!(mark.get("error").is_none(), "{mark}");
}

#[test]
fn a_remote_copy_carries_its_counts_and_a_copy_that_disagrees_fails_naming_the_table() {
    let env = TestEnv::new();
    setup_dir(&env, "", "from = [\"offsite\"]");
    let o = run(&env, &["run", "chat", "backup"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let copy = local_backups(&env)[0].clone();
    // The remote copy records what the local manifest recorded at backup time.
    let local: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("backups/manifest.json")).unwrap()).unwrap();
    let recorded = &nas_copy(&env, &copy)["recorded"];
    assert_eq!(recorded["page_count"], local["backups"][0]["page_count"]);
    assert_eq!(recorded["tables"]["m"], 500, "{recorded}");
    // The local backups are lost; the remote manifest is edited to disagree on a table.
    std::fs::remove_dir_all(env.path("backups")).unwrap();
    let path = env.path("nas/chat/litekeeper-manifest.json");
    let mut m = nas_manifest(&env);
    m["copies"][0]["recorded"]["tables"]["m"] = 499.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let o = drill(&env, &[], &[]);
    assert_eq!(o.status.code(), Some(65), "{}", both(&o));
    assert!(
        both(&o).contains(&format!(
            "row counts {copy} differ from the manifest (m: 500 rows, manifest 499)"
        )),
        "{}",
        both(&o)
    );
    // A copy from an older manifest (no counts, no drill) still drills, saying so.
    let mut m = nas_manifest(&env);
    let c = m["copies"][0].as_object_mut().unwrap();
    c.remove("recorded");
    c.remove("drill");
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let o = drill(&env, &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(
        both(&o).contains(&format!(
            "row counts {copy}: none recorded (the remote manifest"
        )) && both(&o).contains("verdict: ok"),
        "{}",
        both(&o)
    );
    assert_eq!(nas_copy(&env, &copy)["drill"]["verdict"], "ok");
}

/// Drills of a remote's chain points, the same on S3 and on a `file://` directory: `body` is
/// the remote, `delete` removes one object (by name) from it.
fn chain_points_suite(env: &TestEnv, body: &str, delete: &dyn Fn(&str)) {
    let identity = env.path("identity.txt");
    let db = env.path("chat.db");
    config(
        env,
        &db,
        body,
        &format!(
            "incremental = {{ keep = \"7d\" }}\n[database.drill]\nidentity = \"{}\"\nfrom = [\"offsite\"]\npick = \"newest+random\"\nassert = [\"SELECT count(*) >= 500 FROM m\"]\n",
            identity.display()
        ),
    );
    let o = run(env, &["run", "chat", "backup"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    for k in 1..=3 {
        super::chains::add_rows(&db, k * 1000, k * 1000 + 99);
        let o = run(env, &["run", "chat", "incremental"]);
        assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    }
    let local: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("backups/manifest.json")).unwrap()).unwrap();
    let full = local["backups"][0]["file"].as_str().unwrap().to_string();
    let deltas: Vec<String> = local["deltas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["file"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(deltas.len(), 3, "{deltas:?}");
    // The host is lost: the newest point comes back from the remote alone, its image proven,
    // then one older point (a delta or the full) picked at random.
    std::fs::remove_dir_all(env.path("backups")).unwrap();
    let o = drill(env, &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let newest = &deltas[2];
    for want in [
        format!("{newest} from offsite"),
        format!("image SHA-256 {newest} (3 delta(s) after {full}): as recorded: ok"),
        "assert[0] \"SELECT count(*) >= 500 FROM m\": ok".into(),
    ] {
        assert!(out.contains(&want), "{want:?} not in {out}");
    }
    assert_eq!(out.matches("verdict: ok").count(), 2, "{out}");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(" from offsite:"))
        .collect();
    assert!(lines[0].contains(newest.as_str()), "{out}");
    assert!(
        [&deltas[0], &deltas[1], &full]
            .iter()
            .any(|f| lines[1].contains(f.as_str())),
        "{out}"
    );
    // The middle delta is deleted from the store: the newest point fails, naming the link.
    delete(&format!("{}.zst.age", deltas[1]));
    let o = drill(env, &[newest], &[]);
    assert_eq!(o.status.code(), Some(65), "{}", both(&o));
    let text = both(&o);
    assert!(
        text.contains(&format!("{newest} (offsite)"))
            && text.contains(&format!("is broken at {}", deltas[1]))
            && text.contains(&format!("only {} restores", deltas[0])),
        "{text}"
    );
}

#[test]
fn a_drill_of_a_file_remote_restores_the_newest_chain_point_and_checks_its_image() {
    let env = TestEnv::new();
    let (_identity, public) = keygen(&env);
    chat_db(&env);
    std::fs::create_dir(env.path("nas")).unwrap();
    let body = nas_body(&env, &public);
    let nas = env.path("nas/chat");
    chain_points_suite(&env, &body, &|o| std::fs::remove_file(nas.join(o)).unwrap());
}

#[test]
fn a_drill_from_s3_restores_the_newest_chain_point_and_checks_its_image() {
    let env = TestEnv::new();
    let moto = Moto::start();
    moto.bucket(BUCKET);
    let (_identity, public) = keygen(&env);
    chat_db(&env);
    let body = s3_remote(&moto.endpoint(), &public);
    chain_points_suite(&env, &body, &|o| moto.delete(&format!("lk/chat/{o}")));
}
