//! Remote retention on S3: `remote_keep` decides by the local rules; only copies the remote
//! manifest names are deleted (a foreign object under the prefix stays); a dry run shows what
//! would go; nothing is deleted while a copy is pending.

use super::fixture::*;
use crate::util::{both, TestEnv};

fn listed(m: &Moto) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_slice(&m.get("lk/chat/litekeeper-manifest.json").unwrap()).unwrap();
    v["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["object"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn remote_keep_deletes_only_its_own_old_copies() {
    let env = TestEnv::new();
    let moto = Moto::start();
    moto.bucket(BUCKET);
    moto.put("lk/chat/notes.txt", b"not litekeeper's");
    let (_identity, public) = keygen(&env);
    let db = chat_db(&env);
    config(
        &env,
        &db,
        &s3_remote(&moto.endpoint(), &public),
        "keep = { last = 10 }\nremote_keep = { last = 2 }",
    );
    for _ in 0..3 {
        let o = run(&env, &["run", "chat", "backup"]);
        assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    }
    let local = local_backups(&env);
    assert_eq!(local.len(), 3, "local keep is its own");
    let want: Vec<String> = local[1..].iter().map(|f| format!("{f}.zst.age")).collect();
    assert_eq!(listed(&moto), want);
    assert!(
        moto.get(&format!("lk/chat/{}.zst.age", local[0])).is_none(),
        "old copy deleted"
    );
    assert!(
        moto.get("lk/chat/notes.txt").is_some(),
        "a foreign object is never touched"
    );

    // A dry run names what remote retention would delete, and deletes nothing.
    config(
        &env,
        &db,
        &s3_remote(&moto.endpoint(), &public),
        "keep = { last = 10 }\nremote_keep = { last = 1 }",
    );
    let o = run(&env, &["run", "chat", "backup", "--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(
        both(&o).contains(&format!(
            "remote \"offsite\": retention would delete {}",
            want[0]
        )),
        "{}",
        both(&o)
    );
    assert_eq!(listed(&moto), want);

    // The endpoint is gone: the run fails, its copy is pending, and nothing is deleted.
    drop(moto);
    let o = run(&env, &["run", "chat", "backup"]);
    assert_eq!(o.status.code(), Some(75), "{}", both(&o));
    assert_eq!(pending(&env).len(), 1);
}
