//! The demo's sample: a chat app's main database (users, chats over a year, messages, files),
//! its blob database keyed `{message_id}/{index}`, an uploads directory, and a configuration
//! that maintains them. Deterministic (fixed seed) and small enough to build in a second.
//! It contains what the prune rules act on: old chats, orphaned messages, blobs and uploads.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::{params, Connection};

/// Paths of one generated sample.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub dir: PathBuf,
    pub main_db: PathBuf,
    pub blob_db: PathBuf,
    pub uploads: PathBuf,
    pub backups: PathBuf,
    pub config: PathBuf,
}

impl Sample {
    pub(crate) fn at(dir: &Path) -> Sample {
        Sample {
            dir: dir.to_path_buf(),
            main_db: dir.join("app/chat.db"),
            blob_db: dir.join("app/files.db"),
            uploads: dir.join("app/uploads"),
            backups: dir.join("backups/chat"),
            config: dir.join("litekeeper.toml"),
        }
    }
}

fn uuid(rng: &mut StdRng) -> String {
    let b: [u8; 16] = rng.random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

const WORDS: [&str; 24] = [
    "the", "backup", "schedule", "database", "question", "answer", "model", "please", "explain",
    "vacuum", "page", "index", "query", "result", "summary", "file", "upload", "chat", "why",
    "how", "today", "report", "error", "thanks",
];

fn sentence(rng: &mut StdRng, words: usize) -> String {
    (0..words)
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Build the sample in `dir` (which must be empty or absent) and write its configuration.
// Over 120 lines on purpose: one straight script of tables and rows, read top to bottom;
// pieces of it would only pass the same connections and generator around.
pub(crate) fn build(dir: &Path) -> anyhow::Result<Sample> {
    let s = Sample::at(dir);
    std::fs::create_dir_all(&s.uploads)?;
    let mut rng = StdRng::seed_from_u64(20261124);
    let now = chrono::Utc::now().timestamp();
    let day = 86_400i64;

    let mut main = Connection::open(&s.main_db)?;
    main.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE user (id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at INTEGER NOT NULL);
         CREATE TABLE chat (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, title TEXT NOT NULL,
                            updated_at INTEGER NOT NULL, archived INTEGER NOT NULL DEFAULT 0,
                            pinned INTEGER NOT NULL DEFAULT 0, folder_id TEXT);
         CREATE TABLE message (id TEXT PRIMARY KEY, chat_id TEXT NOT NULL, role TEXT NOT NULL,
                               content TEXT NOT NULL, created_at INTEGER NOT NULL);
         CREATE INDEX message_chat ON message (chat_id);
         CREATE TABLE file (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, filename TEXT NOT NULL,
                            size INTEGER NOT NULL);",
    )?;
    let mut blobs = Connection::open(&s.blob_db)?;
    blobs.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE blob (key TEXT PRIMARY KEY, data BLOB NOT NULL, created_at INTEGER NOT NULL);",
    )?;

    let users: Vec<String> = (0..60).map(|_| uuid(&mut rng)).collect();
    // The last 8 users were deleted: their chats and files are orphans.
    let live_users = &users[..52];
    let tx = main.transaction()?;
    for (i, u) in live_users.iter().enumerate() {
        tx.execute(
            "INSERT INTO user VALUES (?1, ?2, ?3)",
            params![u, format!("user{i}"), now - 400 * day],
        )?;
    }
    let btx = blobs.transaction()?;
    let mut message_ids = Vec::new();
    for _ in 0..2000 {
        let chat = uuid(&mut rng);
        let user = &users[rng.random_range(0..users.len())];
        let updated = now - rng.random_range(0..365 * day);
        let archived = rng.random_bool(0.05) as i64;
        let pinned = rng.random_bool(0.03) as i64;
        let folder = rng.random_bool(0.05).then(|| uuid(&mut rng));
        let title = sentence(&mut rng, 4);
        tx.execute(
            "INSERT INTO chat VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![chat, user, title, updated, archived, pinned, folder],
        )?;
        for m in 0..rng.random_range(1..12) {
            let id = uuid(&mut rng);
            let words = rng.random_range(5..80);
            let content = sentence(&mut rng, words);
            let role = if m % 2 == 0 { "user" } else { "assistant" };
            tx.execute(
                "INSERT INTO message VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, chat, role, content, updated],
            )?;
            message_ids.push(id);
        }
    }
    // Messages of chats that were deleted without them.
    for _ in 0..600 {
        let id = uuid(&mut rng);
        let gone_chat = uuid(&mut rng);
        tx.execute(
            "INSERT INTO message VALUES (?1, ?2, 'user', ?3, ?4)",
            params![id, gone_chat, sentence(&mut rng, 20), now - 200 * day],
        )?;
        message_ids.push(id);
    }
    // Blobs: some for live messages, some for messages that no longer exist.
    for id in &message_ids {
        if !rng.random_bool(0.25) {
            continue;
        }
        for i in 0..rng.random_range(1..4) {
            let len = rng.random_range(200..3000);
            let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            btx.execute(
                "INSERT INTO blob VALUES (?1, ?2, ?3)",
                params![format!("{id}/{i}"), data, now],
            )?;
        }
    }
    for _ in 0..500 {
        let gone = uuid(&mut rng);
        let data: Vec<u8> = (0..rng.random_range(200..3000))
            .map(|_| rng.random())
            .collect();
        btx.execute(
            "INSERT INTO blob VALUES (?1, ?2, ?3)",
            params![format!("{gone}/0"), data, now - 100 * day],
        )?;
    }
    // Files: rows with an upload each, plus uploads nobody references.
    for _ in 0..300 {
        let id = uuid(&mut rng);
        let user = &users[rng.random_range(0..users.len())];
        let name = format!("{}.txt", WORDS[rng.random_range(0..WORDS.len())]);
        let n = rng.random_range(20..400);
        let body = sentence(&mut rng, n);
        tx.execute(
            "INSERT INTO file VALUES (?1, ?2, ?3, ?4)",
            params![id, user, name, body.len() as i64],
        )?;
        std::fs::write(s.uploads.join(format!("{id}_{name}")), body)?;
    }
    for _ in 0..60 {
        let id = uuid(&mut rng);
        std::fs::write(
            s.uploads.join(format!("{id}_orphan.txt")),
            sentence(&mut rng, 100),
        )?;
    }
    tx.commit()?;
    btx.commit()?;
    drop(main);
    drop(blobs);
    std::fs::write(&s.config, config_text(&s))?;
    Ok(s)
}

/// The configuration that maintains the sample (DESIGN.md's chat-app case).
pub(crate) fn config_text(s: &Sample) -> String {
    let d = s.dir.display();
    format!(
        r#"# Written by `litekeeper demo`: maintenance of a chat app's databases.

[daemon]
timezone = "local"
state_dir = "{d}/state"
lock_dir = "{d}/locks"

[[database]]
name = "chat"
path = "{main}"
attach = {{ files = "{blob}" }}

[database.prune]
schedule = "30 4 * * *"
# The sample spreads chats over a year, so a 90-day cut removes about two thirds of them;
# the default max_fraction (0.5) would refuse that as a likely mistake.
max_fraction = 0.8

[[database.prune.rule]]            # chats untouched for 90 days, unless archived, pinned or in a folder
table = "chat"
column = "updated_at"
older_than = "90d"
time_format = "unix"
where = "archived = 0 AND pinned = 0 AND folder_id IS NULL"

[[database.prune.rule]]            # messages whose chat is gone
table = "message"
key = "chat_id"
parent = "chat.id"

[[database.prune.rule]]            # blobs keyed {{message_id}}/{{index}} whose message is gone
table = "files.blob"
key = "substr(key, 1, instr(key, '/') - 1)"
parent = "message.id"

[[database.prune.files]]           # uploads no file row references
dir = "{uploads}"
pattern = '^(?P<id>[0-9a-f-]{{36}})_'
referenced_by = "SELECT id FROM file"
min_age = "0s"

[database.vacuum]
schedule = "0 3 * * SUN"
jitter = "1h"
mode = "auto"
min_free = "20%"

[database.backup]
schedule = "0 2 * * *"
jitter = "30m"
dir = "{backups}"
verify = "quick"
keep = {{ daily = 7 }}

[database.drill]                   # restore the newest backup into a scratch directory and check it
schedule = "30 5 * * SUN"
pick = "newest"
assert = ["SELECT count(*) > 0 FROM chat", "SELECT count(*) > 0 FROM files.blob"]
max_age = "15d"
"#,
        main = s.main_db.display(),
        blob = s.blob_db.display(),
        uploads = s.uploads.display(),
        backups = s.backups.display(),
    )
}
