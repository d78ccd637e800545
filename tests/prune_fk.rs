//! Prune on schemas that declare foreign keys: each rule deletes a batch's dependants first
//! (ON DELETE CASCADE or not, two levels deep, self references, SET NULL / SET DEFAULT as
//! declared), in the main and in an attached database, whether the app's connection enforces
//! the keys or not; after every prune `foreign_key_check` finds nothing and exactly the
//! expected rows remain. Cycles and deep RESTRICT keys are refused at `check`. Batches shrink
//! to keep each write transaction under `max_lock`, and a row whose own work exceeds it is
//! named in the summary.

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde_json::Value;

use crate::util::{both, unix_now, TestEnv, DAY};

/// prune.rs's configuration, with no cap on the fraction of rows one run may delete.
fn config(env: &TestEnv, db: &Path, attach: Option<&Path>, prune: &str) {
    crate::prune::config(env, db, attach, &format!("max_fraction = 1.0\n{prune}"));
}

/// The README's cascade: the parent's age rule, then the child's orphan rule.
const CONVERSATIONS_CASCADE: &str = "[[database.prune.rule]]
table = \"conversations\"
column = \"updated_at\"
older_than = \"100d\"
[[database.prune.rule]]
table = \"messages\"
key = \"conversation_id\"
parent = \"conversations.id\"";

/// Configures `prune` (see [`config`]) and runs one prune, which must exit 0 (`ctx` leads
/// the failure message).
fn prune_with(
    env: &TestEnv,
    db: &Path,
    attach: Option<&Path>,
    prune: &str,
    ctx: &str,
) -> std::process::Output {
    config(env, db, attach, prune);
    let o = run_prune(env, &[]);
    assert_eq!(o.status.code(), Some(0), "{ctx}: {}", both(&o));
    o
}

/// Open as the app does: foreign keys enforced or not.
fn app(db: &Path, enforce: bool) -> Connection {
    let c = Connection::open(db).unwrap();
    c.pragma_update(None, "foreign_keys", enforce).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL").unwrap();
    c
}

use crate::prune::run_prune;

fn ids(c: &Connection, sql: &str) -> Vec<String> {
    let mut st = c.prepare(sql).unwrap();
    st.query_map([], |r| r.get::<_, rusqlite::types::Value>(0))
        .unwrap()
        .map(|v| match v.unwrap() {
            rusqlite::types::Value::Integer(i) => i.to_string(),
            rusqlite::types::Value::Text(t) => t,
            rusqlite::types::Value::Null => "NULL".into(),
            other => format!("{other:?}"),
        })
        .collect()
}

/// `foreign_key_check` of a schema, as rows "table/rowid/parent".
fn fk_violations(c: &Connection, schema: &str) -> Vec<String> {
    let mut st = c
        .prepare(&format!("PRAGMA {schema}.foreign_key_check"))
        .unwrap();
    st.query_map([], |r| {
        Ok(format!(
            "{}/{:?}/{}",
            r.get::<_, String>(0)?,
            r.get::<_, Option<i64>>(1)?,
            r.get::<_, String>(2)?
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// The figures of the last prune run, from the state database.
fn last_figures(env: &TestEnv) -> Value {
    let c = Connection::open(env.path("state/state.db")).unwrap();
    let f: String = c
        .query_row(
            "SELECT figures FROM runs WHERE job = 'prune' ORDER BY started_at DESC, rowid DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    serde_json::from_str(&f).unwrap()
}

/// The schema: `messages.conversation_id REFERENCES conversations(id)`, no action.
/// When the app does not enforce keys it has also left messages whose conversation is gone.
fn conversations(env: &TestEnv, enforce: bool) -> PathBuf {
    let db = env.path("conv.db");
    let c = app(&db, enforce);
    let n = unix_now();
    c.execute_batch(&format!(
        "CREATE TABLE conversations(id INTEGER PRIMARY KEY, updated_at INTEGER NOT NULL);
         CREATE TABLE messages(id INTEGER PRIMARY KEY, body TEXT,
                               conversation_id INTEGER REFERENCES conversations(id));
         CREATE INDEX messages_conv ON messages(conversation_id);
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 300)
         INSERT INTO conversations SELECT x, {n} - x * {DAY} FROM i;
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 3000)
         INSERT INTO messages SELECT x, 'hi', x % 300 + 1 FROM i;"
    ))
    .unwrap();
    if !enforce {
        c.execute_batch(
            "INSERT INTO messages(id, body, conversation_id) VALUES (5001, 'left', 9001), (5002, 'left', 9002);",
        )
        .unwrap();
    }
    db
}

#[test]
fn age_rule_on_a_parent_deletes_its_declared_dependants_first() {
    for enforce in [true, false] {
        let env = TestEnv::new();
        let db = conversations(&env, enforce);
        // The README's cascade: the parent's age rule, then the child's orphan rule.
        let o = prune_with(
            &env,
            &db,
            None,
            CONVERSATIONS_CASCADE,
            &format!("enforce={enforce}"),
        );
        let c = app(&db, enforce);
        // Conversations 1..=99 are younger than 100 days (the 100th sits at the cutoff's
        // second: 100 days minus the run's few seconds, so it is old enough... or not; the
        // expectation is computed from the data, independently).
        let left_conv = ids(&c, "SELECT id FROM conversations ORDER BY id");
        assert!(
            left_conv.len() >= 99 && left_conv.len() <= 100,
            "{left_conv:?}"
        );
        let expect_msgs = ids(
            &c,
            "SELECT count(*) FROM messages WHERE conversation_id IN (SELECT id FROM conversations)",
        );
        assert_eq!(
            ids(&c, "SELECT count(*) FROM messages"),
            expect_msgs,
            "enforce={enforce}: messages of deleted conversations or earlier orphans remain"
        );
        assert_eq!(
            expect_msgs[0].parse::<usize>().unwrap(),
            left_conv.len() * 10
        );
        assert_eq!(fk_violations(&c, "main"), Vec::<String>::new());
        let out = String::from_utf8_lossy(&o.stdout);
        let dependants = 10 * (300 - left_conv.len());
        assert!(
            out.contains(&format!("{dependants} of them dependants")),
            "enforce={enforce}: {out}"
        );
        // The app can carry on: with keys enforced, deleting a surviving parent still works.
        c.execute("DELETE FROM messages WHERE conversation_id = 1", [])
            .unwrap();
        c.execute("DELETE FROM conversations WHERE id = 1", [])
            .unwrap();
    }
}

/// chat ← message (CASCADE) ← reaction (no action), message.parent_id → message (a thread),
/// note.chat_id SET NULL, label.chat_id SET DEFAULT 'c0'.
fn two_levels(env: &TestEnv, enforce: bool) -> PathBuf {
    let db = env.path("two.db");
    let c = app(&db, enforce);
    c.execute_batch(
        "CREATE TABLE chat(id TEXT PRIMARY KEY, archived INTEGER NOT NULL);
         CREATE TABLE message(id INTEGER PRIMARY KEY,
                              chat_id TEXT NOT NULL REFERENCES chat(id) ON DELETE CASCADE,
                              parent_id INTEGER REFERENCES message(id));
         CREATE TABLE reaction(id INTEGER PRIMARY KEY, message_id INTEGER REFERENCES message);
         CREATE TABLE note(id INTEGER PRIMARY KEY, chat_id TEXT REFERENCES chat(id) ON DELETE SET NULL);
         CREATE TABLE label(id INTEGER PRIMARY KEY,
                            chat_id TEXT DEFAULT 'c0' REFERENCES chat(id) ON DELETE SET DEFAULT);
         CREATE INDEX message_chat ON message(chat_id);
         CREATE INDEX message_parent ON message(parent_id);
         CREATE INDEX reaction_message ON reaction(message_id);
         INSERT INTO chat VALUES ('c0', 0);
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 200)
         INSERT INTO chat SELECT 'c' || x, x % 3 = 0 FROM i;
         -- Ten messages per chat; each but the first answers the one before it.
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 2000)
         INSERT INTO message SELECT x, 'c' || ((x - 1) / 10 + 1),
                CASE WHEN x % 10 = 1 THEN NULL ELSE x - 1 END FROM i;
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 4000)
         INSERT INTO reaction SELECT x, x % 2000 + 1 FROM i;
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 200)
         INSERT INTO note SELECT x, 'c' || x FROM i;
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 200)
         INSERT INTO label SELECT x, 'c' || x FROM i;
         -- A reply in a kept chat to a message of an archived chat: the thread goes too.
         INSERT INTO message VALUES (3001, 'c1', 25);",
    )
    .unwrap();
    db
}

#[test]
fn two_levels_with_and_without_cascade_set_null_set_default_and_threads() {
    for enforce in [true, false] {
        let env = TestEnv::new();
        let db = two_levels(&env, enforce);
        config(
            &env,
            &db,
            None,
            "max_lock = \"5ms\"\n[[database.prune.rule]]\ntable = \"chat\"\nwhere = \"archived = 1\"",
        );
        // Archived: c3, c6, …, c198 (66 chats, 660 messages + reply 3001 to message 25 of
        // c3, 1320 reactions; 3001 has none).
        let o = run_prune(&env, &["--dry-run"]);
        assert_eq!(o.status.code(), Some(0), "{}", both(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        for want in [
            "with 661 message (cascade)",
            "with 1320 reaction (no action)",
            "sets 66 note (set null)",
            "sets 66 label (set default)",
            "would delete 2047 rows (1981 of them dependants",
        ] {
            assert!(
                out.contains(want),
                "enforce={enforce}: no {want:?} in {out}"
            );
        }
        let c = app(&db, false);
        assert_eq!(ids(&c, "SELECT count(*) FROM message"), ["2001"]);

        let o = run_prune(&env, &[]);
        assert_eq!(o.status.code(), Some(0), "enforce={enforce}: {}", both(&o));
        let kept_chat = "CAST(substr(chat_id, 2) AS INTEGER) % 3 <> 0";
        assert_eq!(ids(&c, "SELECT count(*) FROM chat"), ["135"]); // c0 + 134
        assert_eq!(
            ids(&c, "SELECT count(*) FROM chat WHERE archived = 1"),
            ["0"]
        );
        assert_eq!(
            ids(
                &c,
                &format!("SELECT count(*) FROM message WHERE {kept_chat}")
            ),
            ["1340"]
        );
        assert_eq!(ids(&c, "SELECT count(*) FROM message"), ["1340"]);
        assert_eq!(
            ids(&c, "SELECT count(*) FROM message WHERE id = 3001"),
            ["0"]
        );
        assert_eq!(
            ids(
                &c,
                "SELECT count(*) FROM reaction WHERE message_id IN (SELECT id FROM message)"
            ),
            ids(&c, "SELECT count(*) FROM reaction")
        );
        assert_eq!(ids(&c, "SELECT count(*) FROM reaction"), ["2680"]);
        // SET NULL and SET DEFAULT did what they declare; no note or label row was deleted.
        assert_eq!(
            ids(&c, "SELECT count(*) FROM note WHERE chat_id IS NULL"),
            ["66"]
        );
        assert_eq!(ids(&c, "SELECT count(*) FROM note"), ["200"]);
        assert_eq!(
            ids(&c, "SELECT count(*) FROM label WHERE chat_id = 'c0'"),
            ["66"]
        );
        assert_eq!(ids(&c, "SELECT count(*) FROM label"), ["200"]);
        assert_eq!(fk_violations(&c, "main"), Vec::<String>::new());
        let f = last_figures(&env);
        assert_eq!(f["rows_deleted"], 66 + 661 + 1320, "{f:#}");
    }
}

/// The main DB's chats and messages, and an attached file DB whose keys stay inside it:
/// file ← chunk (CASCADE) ← vector (no action).
#[test]
fn attached_database_with_its_own_foreign_keys() {
    for enforce in [true, false] {
        let env = TestEnv::new();
        let (db, _) = {
            let db = conversations(&env, enforce);
            (db, ())
        };
        let files = env.path("files.db");
        let c = app(&files, enforce);
        let n = unix_now();
        c.execute_batch(&format!(
            "CREATE TABLE file(id TEXT PRIMARY KEY, created_at INTEGER NOT NULL);
             CREATE TABLE chunk(id INTEGER PRIMARY KEY,
                                file_id TEXT NOT NULL REFERENCES file(id) ON DELETE CASCADE);
             CREATE TABLE vector(chunk_id INTEGER NOT NULL REFERENCES chunk(id), dim INTEGER,
                                 PRIMARY KEY (chunk_id, dim)) WITHOUT ROWID;
             WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 100)
             INSERT INTO file SELECT 'f' || x, {n} - x * {DAY} FROM i;
             WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 500)
             INSERT INTO chunk SELECT x, 'f' || (x % 100 + 1) FROM i;
             WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 1500)
             INSERT INTO vector SELECT x % 500 + 1, x FROM i;"
        ))
        .unwrap();
        drop(c);
        prune_with(
            &env,
            &db,
            Some(&files),
            "[[database.prune.rule]]
table = \"files.file\"
column = \"created_at\"
older_than = \"60d\"
[[database.prune.rule]]
table = \"conversations\"
where = \"id > 250\"
[[database.prune.rule]]
table = \"messages\"
key = \"conversation_id\"
parent = \"conversations.id\"",
            &format!("enforce={enforce}"),
        );
        let c = app(&files, enforce);
        let kept_files = ids(&c, "SELECT count(*) FROM file");
        assert!(
            ["59", "60"].contains(&kept_files[0].as_str()),
            "{kept_files:?}"
        );
        let kept: usize = kept_files[0].parse().unwrap();
        assert_eq!(
            ids(&c, "SELECT count(*) FROM chunk"),
            [(kept * 5).to_string()]
        );
        assert_eq!(
            ids(&c, "SELECT count(*) FROM vector"),
            [(kept * 15).to_string()]
        );
        assert_eq!(fk_violations(&c, "main"), Vec::<String>::new());
        let m = app(&db, enforce);
        assert_eq!(ids(&m, "SELECT max(id) FROM conversations"), ["250"]);
        // The app's own earlier orphans (when it does not enforce keys) went with the
        // orphan rule; the declared key took the rest.
        assert_eq!(ids(&m, "SELECT count(*) FROM messages"), ["2500"]);
        assert_eq!(fk_violations(&m, "main"), Vec::<String>::new());
    }
}

/// Open WebUI's tables (models/*.py): user, folder (nested by parent_id), chat in a folder,
/// file, chat_file linking both (CASCADE each side), channel, message (threads by parent_id),
/// message_reaction, and tag attached to a chat.
fn open_webui(env: &TestEnv, enforce: bool) -> PathBuf {
    let db = env.path("webui.db");
    let c = app(&db, enforce);
    let n = unix_now();
    c.execute_batch(&format!(
        "CREATE TABLE user(id TEXT PRIMARY KEY, name TEXT);
         CREATE TABLE folder(id TEXT PRIMARY KEY, parent_id TEXT REFERENCES folder(id),
                             user_id TEXT NOT NULL REFERENCES user(id));
         CREATE TABLE chat(id TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES user(id),
                           title TEXT, chat JSON, created_at BIGINT, updated_at BIGINT,
                           archived BOOLEAN DEFAULT 0, pinned BOOLEAN DEFAULT 0,
                           folder_id TEXT REFERENCES folder(id) ON DELETE SET NULL);
         CREATE TABLE file(id TEXT PRIMARY KEY, user_id TEXT, filename TEXT, path TEXT,
                           created_at BIGINT);
         CREATE TABLE chat_file(id TEXT PRIMARY KEY,
                                chat_id TEXT NOT NULL REFERENCES chat(id) ON DELETE CASCADE,
                                file_id TEXT NOT NULL REFERENCES file(id) ON DELETE CASCADE,
                                UNIQUE(chat_id, file_id));
         CREATE TABLE tag(id TEXT, user_id TEXT, chat_id TEXT REFERENCES chat(id),
                          PRIMARY KEY (id, user_id));
         CREATE TABLE channel(id TEXT PRIMARY KEY, name TEXT);
         CREATE TABLE message(id TEXT PRIMARY KEY,
                              channel_id TEXT REFERENCES channel(id) ON DELETE CASCADE,
                              parent_id TEXT REFERENCES message(id),
                              content TEXT, created_at BIGINT);
         CREATE TABLE message_reaction(id TEXT PRIMARY KEY,
                                       message_id TEXT NOT NULL REFERENCES message(id) ON DELETE CASCADE,
                                       name TEXT);
         CREATE INDEX chat_file_chat ON chat_file(chat_id);
         CREATE INDEX chat_file_file ON chat_file(file_id);
         INSERT INTO user VALUES ('u1', 'ann'), ('u2', 'bob');
         INSERT INTO folder VALUES ('top', NULL, 'u1'), ('sub', 'top', 'u1');
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 120)
         INSERT INTO chat SELECT 'chat' || x, 'u' || (x % 2 + 1), 'title', '{{}}', {n} - x * {DAY},
                {n} - x * {DAY}, x % 10 = 0, x % 15 = 0,
                CASE x % 4 WHEN 0 THEN 'sub' WHEN 1 THEN 'top' ELSE NULL END FROM i;
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 60)
         INSERT INTO file SELECT 'file' || x, 'u1', 'a.pdf', '/uploads/a.pdf', {n} FROM i;
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 120)
         INSERT INTO chat_file SELECT 'cf' || x, 'chat' || x, 'file' || (x % 60 + 1) FROM i;
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 120)
         INSERT INTO tag SELECT 't' || x, 'u1', 'chat' || x FROM i;
         INSERT INTO channel VALUES ('general', 'general');
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 300)
         INSERT INTO message SELECT 'msg' || x, 'general',
                CASE WHEN x % 3 = 0 THEN 'msg' || (x - 1) ELSE NULL END,
                'hello', ({n} - x * {DAY} / 2) * 1000000000 FROM i;
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 300)
         INSERT INTO message_reaction SELECT 'r' || x, 'msg' || x, 'thumbs' FROM i;"
    ))
    .unwrap();
    db
}

#[test]
fn open_webui_shaped_schema_prunes_chats_and_channel_messages_consistently() {
    for enforce in [true, false] {
        let env = TestEnv::new();
        let db = open_webui(&env, enforce);
        let cutoff = unix_now() - 90 * DAY;
        let c = app(&db, false);
        let chats_left = ids(
            &c,
            &format!(
                "SELECT id FROM chat WHERE NOT (updated_at < {cutoff} AND archived = 0 AND pinned = 0) ORDER BY id"
            ),
        );
        // A message goes when it is older than 90 days, or answers one that goes.
        let msgs_left = ids(
            &c,
            &format!(
                "SELECT id FROM message WHERE created_at / 1000000000 >= {cutoff}
                   AND (parent_id IS NULL OR parent_id IN
                        (SELECT id FROM message WHERE created_at / 1000000000 >= {cutoff}))
                 ORDER BY id"
            ),
        );
        config(
            &env,
            &db,
            None,
            "[[database.prune.rule]]
table = \"chat\"
column = \"updated_at\"
older_than = \"90d\"
where = \"archived = 0 AND pinned = 0\"
[[database.prune.rule]]
table = \"message\"
column = \"created_at\"
older_than = \"90d\"
time_format = \"unix_ms\"
where = \"1\"
[[database.prune.rule]]
table = \"file\"
where = \"id NOT IN (SELECT file_id FROM chat_file)\"
[[database.prune.rule]]
table = \"folder\"
where = \"id = 'top'\"",
        );
        // created_at is in nanoseconds (as Open WebUI stores it): unix_ms would misread it,
        // so the message rule is written as a where rule instead.
        let cfg = std::fs::read_to_string(env.config_path())
            .unwrap()
            .replace(
                "column = \"created_at\"\nolder_than = \"90d\"\ntime_format = \"unix_ms\"\nwhere = \"1\"",
                &format!("where = \"created_at < {cutoff} * 1000000000\""),
            );
        std::fs::write(env.config_path(), cfg).unwrap();
        let o = run_prune(&env, &[]);
        assert_eq!(o.status.code(), Some(0), "enforce={enforce}: {}", both(&o));
        let c = app(&db, enforce);
        assert_eq!(ids(&c, "SELECT id FROM chat ORDER BY id"), chats_left);
        assert!(chats_left.len() > 20 && chats_left.len() < 100);
        assert_eq!(ids(&c, "SELECT id FROM message ORDER BY id"), msgs_left);
        assert!(msgs_left.len() > 100 && msgs_left.len() < 300);
        // chat_file and tag rows of deleted chats went with them; the files that only
        // deleted chats referenced went with the file rule (after chat_file lost them).
        assert_eq!(
            ids(
                &c,
                "SELECT count(*) FROM chat_file WHERE chat_id NOT IN (SELECT id FROM chat)"
            ),
            ["0"]
        );
        assert_eq!(
            ids(&c, "SELECT count(*) FROM tag"),
            [chats_left.len().to_string()]
        );
        assert_eq!(
            ids(
                &c,
                "SELECT count(*) FROM file WHERE id NOT IN (SELECT file_id FROM chat_file)"
            ),
            ["0"]
        );
        assert_eq!(
            ids(&c, "SELECT count(*) FROM message_reaction"),
            [msgs_left.len().to_string()]
        );
        // The top folder went with its subfolder (parent_id); their chats stay, out of any
        // folder (ON DELETE SET NULL). Users are parents only: untouched.
        assert_eq!(ids(&c, "SELECT count(*) FROM folder"), ["0"]);
        assert_eq!(
            ids(&c, "SELECT count(*) FROM chat WHERE folder_id IS NOT NULL"),
            ["0"]
        );
        assert_eq!(ids(&c, "SELECT count(*) FROM user"), ["2"]);
        assert_eq!(fk_violations(&c, "main"), Vec::<String>::new());
    }
}

#[test]
fn restrict_spares_referenced_rows_and_unorderable_keys_are_refused_at_check() {
    let env = TestEnv::new();
    let db = env.path("r.db");
    let c = app(&db, true);
    c.execute_batch(
        "CREATE TABLE plan(id INTEGER PRIMARY KEY, old INTEGER);
         CREATE TABLE invoice(id INTEGER PRIMARY KEY, plan_id INTEGER REFERENCES plan(id) ON DELETE RESTRICT);
         CREATE TABLE team(id INTEGER PRIMARY KEY, old INTEGER);
         CREATE TABLE member(id INTEGER PRIMARY KEY, team_id INTEGER REFERENCES team(id));
         CREATE TABLE badge(id INTEGER PRIMARY KEY, member_id INTEGER REFERENCES member(id) ON DELETE RESTRICT);
         CREATE TABLE a(id INTEGER PRIMARY KEY, b_id INTEGER REFERENCES b(id));
         CREATE TABLE b(id INTEGER PRIMARY KEY, a_id INTEGER REFERENCES a(id));
         CREATE TABLE room(id INTEGER PRIMARY KEY);
         CREATE TABLE seat(id INTEGER PRIMARY KEY,
                           room_id INTEGER NOT NULL REFERENCES room(id) ON DELETE SET NULL);
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 10)
         INSERT INTO plan SELECT x, 1 FROM i;
         INSERT INTO invoice VALUES (1, 2), (2, 4);",
    )
    .unwrap();
    drop(c);
    config(
        &env,
        &db,
        None,
        "[[database.prune.rule]]
table = \"plan\"
where = \"old = 1\"
[[database.prune.rule]]
table = \"team\"
where = \"old = 1\"
[[database.prune.rule]]
table = \"a\"
where = \"1\"
[[database.prune.rule]]
table = \"room\"
where = \"1\"",
    );
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let line_of = |needle: &str| text.lines().position(|l| l == needle).unwrap() + 1;
    let o = env.cmd().arg("check").output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for (needle, reason) in [
        (
            "table = \"team\"",
            "badge(member_id) REFERENCES member(id) is ON DELETE RESTRICT",
        ),
        (
            "table = \"a\"",
            "the foreign keys between a, b form a cycle",
        ),
        (
            "table = \"room\"",
            "ON DELETE SET NULL, but seat.room_id is NOT NULL",
        ),
    ] {
        let want = format!("litekeeper.toml:{}:", line_of(needle));
        assert!(
            out.lines().any(|l| l.contains(&want) && l.contains(reason)),
            "no {want} … {reason} in:\n{out}"
        );
    }
    assert!(out.contains("3 error(s)"), "{out}");
    // Without the refused rules, RESTRICT keeps the plans invoices still name; the invoice
    // rule, written second, runs first so the plan it frees goes in the same run.
    let o = prune_with(
        &env,
        &db,
        None,
        "[[database.prune.rule]]\ntable = \"plan\"\nwhere = \"old = 1\"\n[[database.prune.rule]]\ntable = \"invoice\"\nwhere = \"id = 1\"",
        "",
    );
    let c = app(&db, false);
    assert_eq!(ids(&c, "SELECT id FROM plan ORDER BY id"), ["4"]);
    assert_eq!(ids(&c, "SELECT id FROM invoice"), ["2"]);
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("(ON DELETE RESTRICT) are kept; runs after rule[1]"),
        "{}",
        both(&o)
    );
    assert_eq!(fk_violations(&c, "main"), Vec::<String>::new());
}

#[test]
fn batches_shrink_to_max_lock_whatever_the_rule_shape_and_a_slow_row_is_named() {
    let env = TestEnv::new();
    let db = env.path("slow.db");
    let c = app(&db, false);
    // Every candidate `ev` row costs a scan of `small` (`v + 0` defeats any index), so a
    // batch's lock time grows with its size. `tick`'s rule carries an uncorrelated subquery
    // of two million steps, which every statement pays once: no batch size helps there.
    c.execute_batch(
        "CREATE TABLE small(id INTEGER PRIMARY KEY, v INTEGER);
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 20000)
         INSERT INTO small SELECT x, x FROM i;
         CREATE TABLE ev(id INTEGER PRIMARY KEY, body TEXT);
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 2000)
         INSERT INTO ev SELECT x, hex(randomblob(50)) FROM i;
         CREATE TABLE tick(id INTEGER PRIMARY KEY, v INTEGER);
         INSERT INTO tick VALUES (1, -1), (2, 50);",
    )
    .unwrap();
    drop(c);
    let o = prune_with(
        &env,
        &db,
        None,
        "max_lock = \"20ms\"
[[database.prune.rule]]
table = \"ev\"
where = \"id % 2 = 0 AND NOT EXISTS (SELECT 1 FROM small WHERE small.v + 0 = ev.id + 1000000)\"
[[database.prune.rule]]
table = \"tick\"
where = \"v < 0 AND (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) SELECT count(*) FROM c) > 0\"",
        "",
    );
    let c = app(&db, false);
    assert_eq!(ids(&c, "SELECT count(*) FROM ev"), ["1000"]);
    assert_eq!(ids(&c, "SELECT count(*) FROM ev WHERE id % 2 = 0"), ["0"]);
    assert_eq!(ids(&c, "SELECT id FROM tick"), ["2"]);
    let f = last_figures(&env);
    let rules = f["rules"].as_array().unwrap();
    let ev = &rules[0];
    // 1,000 rows, each a 20,000-row scan, against a 20 ms bound: the first batch (500 rows)
    // held the lock far longer, so the size shrank and more batches ran than 1,000 / 500.
    let min = ev["min_batch"].as_u64().expect("min_batch figure");
    assert_eq!(ev["max_batch"], 500, "{ev:#}");
    assert!(min < 250, "{ev:#}");
    assert!(ev["batches"].as_u64().unwrap() > 4, "{ev:#}");
    assert!(ev["batches_over_max_lock"].as_u64().unwrap() >= 1, "{ev:#}");
    assert!(
        f["max_batch_ms"].as_u64().unwrap() >= ev["max_batch_ms"].as_u64().unwrap(),
        "{f:#}"
    );
    // One row of `tick` costs the whole subquery: more than 20 ms, and the summary says so.
    let tick = &rules[1];
    assert!(tick["one_row_ms"].as_u64().unwrap() > 20, "{tick:#}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("rule[1]: one row's delete held the write lock")
            && out.contains("more than max_lock 20ms"),
        "{out}"
    );
}

#[test]
fn an_app_writing_during_the_prune_with_keys_on_or_off_sees_no_error() {
    for enforce in [true, false] {
        let env = TestEnv::new();
        let db = conversations(&env, enforce);
        {
            // More old rows, so the prune runs many batches while the app writes.
            let c = app(&db, enforce);
            c.execute_batch(
                "WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM i WHERE x < 60000)
                 INSERT INTO messages(body, conversation_id) SELECT 'more', x % 200 + 101 FROM i;",
            )
            .unwrap();
        }
        config(
            &env,
            &db,
            None,
            &format!("max_lock = \"10ms\"\n{CONVERSATIONS_CASCADE}"),
        );
        let mut child = env
            .std_cmd()
            .args(["run", "chat", "prune"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The app: new messages in young conversations, a commit every few ms, until the prune
        // ends.
        let c = app(&db, enforce);
        c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        let mut inserted = 0;
        while child.try_wait().unwrap().is_none() || inserted < 20 {
            c.execute(
                "INSERT INTO messages(body, conversation_id) VALUES ('new', ?1)",
                [inserted % 90 + 1],
            )
            .unwrap();
            inserted += 1;
            // An app commits now and then, not back to back.
            std::thread::sleep(std::time::Duration::from_millis(3));
        }
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "enforce={enforce}: {}", both(&o));
        let left = ids(&c, "SELECT count(*) FROM conversations");
        let left: i64 = left[0].parse().unwrap();
        assert!((99..=100).contains(&left), "{left}");
        // The young conversations' 10 messages each, and every message the app wrote.
        assert_eq!(
            ids(&c, "SELECT count(*) FROM messages"),
            [(left * 10 + inserted).to_string()],
            "enforce={enforce}"
        );
        assert_eq!(fk_violations(&c, "main"), Vec::<String>::new());
    }
}
