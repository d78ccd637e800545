//! A fleet's members copied off-site: each member's copies and manifest under its own name
//! (`{prefix}/{member}/…`), and each restores from the remote alone.

use super::fixture::*;
use crate::util::{both, query_i64, TestEnv};

#[test]
fn each_fleet_member_is_copied_under_its_own_name_and_restores_from_the_remote() {
    let env = TestEnv::new();
    let moto = Moto::start();
    moto.bucket(BUCKET);
    let (identity, public) = keygen(&env);
    for (tenant, rows) in [("alice", 3), ("bob", 5)] {
        env.sqlite(
            &format!("tenants/{tenant}.db"),
            &format!(
                "PRAGMA journal_mode=WAL; CREATE TABLE note(x);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < {rows})
                 INSERT INTO note SELECT i FROM n;"
            ),
        );
    }
    env.write_config(&format!(
        "{}[[database]]\nname = \"t-{{stem}}\"\npath = \"{}/*.db\"\n[database.backup]\ndir = \"{}/{{name}}\"\nremotes = [\"offsite\"]\n\n[[remote]]\nname = \"offsite\"\n{}\n",
        env.daemon_section(""),
        env.path("tenants").display(),
        env.path("backups").display(),
        s3_remote(&moto.endpoint(), &public)
    ));
    for member in ["t-alice", "t-bob"] {
        let o = run(&env, &["run", member, "backup"]);
        assert_eq!(o.status.code(), Some(0), "{member}: {}", both(&o));
    }
    // Each member's manifest lists its own copies only (named after the file's stem).
    for (member, own, other) in [("t-alice", "alice", "bob"), ("t-bob", "bob", "alice")] {
        let manifest = moto
            .get(&format!("lk/{member}/litekeeper-manifest.json"))
            .unwrap_or_else(|| panic!("no manifest for {member}"));
        let text = String::from_utf8(manifest).unwrap();
        assert!(text.contains(&format!("\"{own}-")), "{text}");
        assert!(!text.contains(&format!("\"{other}-")), "{text}");
    }

    // The local backups are lost: each member restores from the remote, with its own rows.
    std::fs::remove_dir_all(env.path("backups")).unwrap();
    for (member, rows) in [("t-alice", 3), ("t-bob", 5)] {
        let to = env.path(&format!("restored-{member}.db"));
        let o = run(
            &env,
            &[
                "restore",
                member,
                "--from",
                "offsite",
                "--to",
                &to.display().to_string(),
                "--identity",
                &identity.display().to_string(),
            ],
        );
        assert_eq!(o.status.code(), Some(0), "{member}: {}", both(&o));
        assert_eq!(
            query_i64(&to, "SELECT count(*) FROM note"),
            rows,
            "{member}"
        );
    }
}
