//! zstd backups checked from outside: the `zstd` CLI decompresses a backup to exactly the raw
//! copy (bytes, and the SHA-256 the manifest records), one frame with its checksum, and a
//! restore gives the same rows.

use std::path::{Path, PathBuf};
use std::process::Command;

use litekeeper::archive::{sha256_file, BackupName, Manifest};
use rusqlite::Connection;

use crate::util::{both, files_db, query_i64, write_chat_backup_config, TestEnv};

/// The newest backup of `series` in `dir` with the given compression.
fn newest(dir: &Path, series: &str, compressed: bool) -> (String, PathBuf) {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| {
            BackupName::parse(n)
                .is_some_and(|b| b.series == series && b.compressed == compressed && !b.failed)
        })
        .collect();
    v.sort();
    let n = v
        .pop()
        .unwrap_or_else(|| panic!("no {series} backup in {}", dir.display()));
    (n.clone(), dir.join(n))
}

fn zstd_cli(args: &[&str], file: &Path) -> std::process::Output {
    Command::new("zstd")
        .args(args)
        .arg(file)
        .output()
        .expect("the zstd CLI (apt-get install -y zstd)")
}

#[test]
fn a_zstd_backup_decompresses_with_the_zstd_cli_to_the_raw_copy() {
    let env = TestEnv::new();
    // ~24 MiB of text: several jobs for the zstd workers.
    let db = env.sqlite(
        "app/chat.db",
        "PRAGMA journal_mode=WAL;
         CREATE TABLE chat(id INTEGER PRIMARY KEY, body TEXT NOT NULL, ts INTEGER);
         CREATE INDEX chat_ts ON chat(ts);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 120000)
         INSERT INTO chat(body, ts) SELECT 'message ' || i || ' from user ' || (i % 311) ||
           ': ' || substr(hex(randomblob(40)), 1, 16) || ' lorem ipsum dolor sit amet', i * 7
           FROM n;",
    );
    let files = files_db(&env, "zeroblob(3000)");
    let dir = env.path("backups/chat");
    let keep = "keep = { last = 5 }\n";
    write_chat_backup_config(&env, &db, &files, &dir, keep);
    env.run_ok(&["run", "chat", "backup"]);
    write_chat_backup_config(
        &env,
        &db,
        &files,
        &dir,
        &format!("{keep}compress = \"zstd\""),
    );
    env.run_ok(&["run", "chat", "backup"]);

    let m = Manifest::load(&dir).unwrap();
    for series in ["chat", "files"] {
        let (raw_name, raw) = newest(&dir, series, false);
        let (zst_name, zst) = newest(&dir, series, true);
        let (r, z) = (m.get(&raw_name).unwrap(), m.get(&zst_name).unwrap());
        let out = zstd_cli(&["-d", "-c"], &zst);
        assert!(out.status.success(), "{}", both(&out));
        let raw_bytes = std::fs::read(&raw).unwrap();
        assert!(
            out.stdout == raw_bytes,
            "{series}: zstd -d gives other bytes than the raw copy"
        );
        // The manifest: the stored file's own hash, and the raw copy's size and hash.
        assert_eq!(z.sha256, sha256_file(&zst).unwrap());
        assert_eq!(z.size, std::fs::metadata(&zst).unwrap().len());
        assert_eq!(z.raw_sha256.as_deref(), Some(r.sha256.as_str()), "{series}");
        assert_eq!(z.raw_size, Some(raw_bytes.len() as u64));
        assert_eq!((r.raw_sha256.as_deref(), r.raw_size), (None, None));
        // One frame (multithreaded or not) with its content checksum. Compression starts
        // while the copy is written, before its size is known: the frame does not carry it.
        let out = zstd_cli(&["-lv"], &zst);
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("# Zstandard Frames: 1\n"), "{listing}");
        assert!(listing.contains("Check: XXH64"), "{listing}");
    }

    // Restore the compressed backup (the newest) and compare rows.
    let restored = env.path("restored.db");
    env.restore_ok(&["chat"], &restored);
    let rows = |p: &Path| -> Vec<(i64, String, i64)> {
        let c = Connection::open(p).unwrap();
        let mut s = c
            .prepare("SELECT id, body, ts FROM chat ORDER BY id")
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let (got, want) = (rows(&restored), rows(&db));
    assert_eq!(got.len(), 120_000);
    assert!(got == want, "the restored rows differ from the database's");
    assert_eq!(
        query_i64(&restored, "SELECT count(*) FROM chat WHERE ts % 7 = 0"),
        120_000
    );
}
