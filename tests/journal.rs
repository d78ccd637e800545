//! Journal entries on a real journald: a private `systemd-journald` (own mount namespace with a
//! tmpfs `/run`, journal files in a temp dir, as `../shared/recipes/journald-isolated.sh` does)
//! receives what the real binary logs, run inside that namespace with `nsenter`, and
//! `journalctl --directory … -o json` reads the entries back. Covers `--log-target journald`
//! (start and finish events of ok, failed and skipped runs: MESSAGE_IDs, priorities,
//! `LITEKEEPER_*` fields) and auto-detection through `JOURNAL_STREAM` under `systemd-cat`.
//! Needs root and systemd-journald; without them each test says why and returns.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::util::{backup_into, bin, both, dump, field, has_marker, Journald, TestEnv};

/// MESSAGE_IDs as documented in packaging/litekeeper.catalog (stable across versions, so
/// written out here rather than taken from `litekeeper::logging`).
const JOB_STARTED: &str = "fc726b0cf71f4c7bb2383d289944b3eb";
const JOB_FINISHED: &str = "5f8553995df44ab8b04d65809b80d3ac";
const JOB_SKIPPED: &str = "bedc59ebb63246b0a41709384a6c4b4c";
const JOB_FAILED: &str = "6130649b60ea41a4af6e551aeb499e18";

/// Run to completion; the pid is what journald records as `_PID`.
fn run(mut c: Command) -> (u32, Output) {
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    (pid, child.wait_with_output().unwrap())
}

/// The job events (entries with a MESSAGE_ID) a process sent.
fn events_of(all: &[Value], pid: u32) -> Vec<Value> {
    all.iter()
        .filter(|e| field(e, "_PID") == Some(&pid.to_string()))
        .filter(|e| field(e, "MESSAGE_ID").is_some())
        .cloned()
        .collect()
}

/// Assert `name` is `want` in entry `e`.
fn assert_field(e: &Value, name: &str, want: &str) {
    assert_eq!(field(e, name), Some(want), "{name} in {e:#}");
}

/// One start and one finish event of the same run, checked for the fields both share.
/// Returns (start, finish).
fn start_and_finish(events: &[Value], finish_id: &str) -> (Value, Value) {
    let ids: Vec<_> = events
        .iter()
        .filter_map(|e| field(e, "MESSAGE_ID"))
        .collect();
    assert_eq!(ids, [JOB_STARTED, finish_id], "events:\n{}", dump(events));
    let (start, finish) = (events[0].clone(), events[1].clone());
    for e in [&start, &finish] {
        assert_field(e, "SYSLOG_IDENTIFIER", "litekeeper");
        assert_field(e, "_TRANSPORT", "journal");
        assert_field(e, "LITEKEEPER_DATABASE", "chat");
        assert_field(e, "LITEKEEPER_JOB", "backup");
        assert_field(e, "LITEKEEPER_TRIGGER", "cli");
    }
    let run_id = field(&start, "LITEKEEPER_RUN_ID").expect("start has LITEKEEPER_RUN_ID");
    assert!(
        run_id.len() == 32 && run_id.chars().all(|c| c.is_ascii_hexdigit()),
        "run id {run_id:?}"
    );
    assert_field(&finish, "LITEKEEPER_RUN_ID", run_id);
    assert_field(&start, "PRIORITY", "6");
    assert_field(&start, "MESSAGE", "backup chat: started (cli)");
    let ms = field(&finish, "LITEKEEPER_DURATION_MS").expect("LITEKEEPER_DURATION_MS");
    assert!(ms.parse::<u64>().is_ok(), "duration {ms:?}");
    (start, finish)
}

/// Database `chat` (a few rows) backed up into `<tmp>/backups`.
fn setup(env: &TestEnv) -> PathBuf {
    let db = env.sqlite(
        "app/chat.db",
        "CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);",
    );
    env.config("")
        .database("chat", &db, &backup_into(&env.path("backups")))
        .write();
    db
}

#[test]
fn a_backup_logs_start_and_finish_events_with_fields() {
    let Some(j) = Journald::start() else { return };
    let env = TestEnv::new();
    setup(&env);
    let mut c = j.litekeeper(&env);
    c.args(["run", "chat", "backup", "--log-target", "journald"]);
    let (pid, out) = run(c);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("started"),
        "log lines went to stderr as well: {}",
        both(&out)
    );

    let all = j.wait_for("start and finish events", |all| {
        events_of(all, pid).len() >= 2
    });
    let (_, finish) = start_and_finish(&events_of(&all, pid), JOB_FINISHED);
    assert_field(&finish, "LITEKEEPER_OUTCOME", "ok");
    assert_field(&finish, "PRIORITY", "6");
    assert!(finish.get("LITEKEEPER_ERROR").is_none(), "{finish:#}");
    let path = field(&finish, "LITEKEEPER_BACKUP_PATH").expect("LITEKEEPER_BACKUP_PATH");
    assert!(
        path.starts_with(env.path("backups").to_str().unwrap()) && Path::new(path).is_file(),
        "backup path {path:?}"
    );
    let bytes = field(&finish, "LITEKEEPER_BYTES_AFTER").expect("LITEKEEPER_BYTES_AFTER");
    assert!(bytes.parse::<u64>().unwrap() > 0, "bytes after {bytes:?}");
    let figures: Value =
        serde_json::from_str(field(&finish, "LITEKEEPER_FIGURES").expect("LITEKEEPER_FIGURES"))
            .unwrap();
    assert_eq!(figures["backup_path"].as_str(), Some(path), "{figures:#}");
    let message = field(&finish, "MESSAGE").unwrap();
    assert!(message.starts_with("backup chat: "), "{message:?}");
    // The documented query finds it.
    let q = Command::new("journalctl")
        .arg("--directory")
        .arg(j.dir.path().join("log"))
        .args([
            "-o",
            "json",
            "LITEKEEPER_DATABASE=chat",
            "LITEKEEPER_OUTCOME=ok",
        ])
        .output()
        .unwrap();
    let found = String::from_utf8_lossy(&q.stdout);
    assert_eq!(found.lines().count(), 1, "{found}");
    assert!(found.contains(JOB_FINISHED), "{found}");
}

#[test]
fn a_failed_backup_logs_an_error_entry_naming_the_cause() {
    let Some(j) = Journald::start() else { return };
    let env = TestEnv::new();
    let db = setup(&env);
    std::fs::remove_file(&db).unwrap();
    let mut c = j.litekeeper(&env);
    c.args(["run", "chat", "backup", "--log-target", "journald"]);
    let (pid, out) = run(c);
    assert_eq!(out.status.code(), Some(66), "{}", both(&out));

    let all = j.wait_for("start and failure events", |all| {
        events_of(all, pid).len() >= 2
    });
    let (_, finish) = start_and_finish(&events_of(&all, pid), JOB_FAILED);
    assert_field(&finish, "LITEKEEPER_OUTCOME", "failed");
    assert_field(&finish, "PRIORITY", "3");
    let error = field(&finish, "LITEKEEPER_ERROR").expect("LITEKEEPER_ERROR");
    assert!(
        error.contains(db.to_str().unwrap()) && error.contains("does not exist"),
        "error {error:?}"
    );
    assert!(finish.get("LITEKEEPER_BACKUP_PATH").is_none(), "{finish:#}");
    assert!(!db.exists(), "a failed backup must not create the database");
}

#[test]
fn a_run_skipped_on_a_held_lock_logs_a_notice() {
    let Some(j) = Journald::start() else { return };
    let env = TestEnv::new();
    setup(&env);
    let held = litekeeper::lock::try_acquire(&env.path("locks"), "chat", "vacuum").unwrap();
    let mut c = j.litekeeper(&env);
    // --quiet quiets stderr only: the journal still gets the start (info) and the notice.
    c.args([
        "--quiet",
        "run",
        "chat",
        "backup",
        "--log-target",
        "journald",
    ]);
    let (pid, out) = run(c);
    drop(held);
    assert_eq!(out.status.code(), Some(75), "{}", both(&out));

    let all = j.wait_for("start and skip events", |all| {
        events_of(all, pid).len() >= 2
    });
    let (_, finish) = start_and_finish(&events_of(&all, pid), JOB_SKIPPED);
    assert_field(&finish, "LITEKEEPER_OUTCOME", "skipped");
    assert_field(&finish, "PRIORITY", "5");
    let message = field(&finish, "MESSAGE").unwrap();
    assert!(
        message.contains(&format!("pid {} running vacuum", std::process::id())),
        "holder not named: {message:?}"
    );
}

/// systemd connects stderr to a journal stream and sets `JOURNAL_STREAM=<dev>:<ino>` of it.
/// `systemd-cat` connects the stream but (systemd 252) does not set the variable, so a shell
/// sets it from the stream's own `stat` before exec'ing the binary (no `--log-target`).
/// With no variable, or one naming another file (stderr redirected by a parent that ran
/// under systemd), the same run must stay on stderr: plain stream lines only.
#[test]
fn auto_detects_the_journal_stream() {
    let Some(j) = Journald::start() else { return };
    let env = TestEnv::new();
    setup(&env);
    let under_cat = |identifier: &str, set_stream: &str, native: bool| -> Vec<Value> {
        let mut c = j.in_namespace(&env, "systemd-cat");
        c.args(["-t", identifier, "sh", "-c"])
            .arg(format!("{set_stream} exec \"$0\" \"$@\""))
            .arg(bin())
            .arg("-c")
            .arg(env.config_path())
            .args(["run", "chat", "backup"]);
        let (pid, out) = run(c);
        assert_eq!(out.status.code(), Some(0), "{}", both(&out));
        j.send_marker(identifier);
        // On the stream the summary line is printed last; natively the finish event is the
        // last entry (the summary is not repeated on the stream). With the marker sent after
        // exit on the native socket, once both are in, everything the run logged is.
        let all = j.wait_for("last line and marker", |all| {
            has_marker(all, identifier)
                && all.iter().any(|e| {
                    if native {
                        field(e, "_PID") == Some(pid.to_string().as_str())
                            && field(e, "MESSAGE_ID") == Some(JOB_FINISHED)
                    } else {
                        field(e, "SYSLOG_IDENTIFIER") == Some(identifier)
                            && field(e, "MESSAGE").is_some_and(|m| m.starts_with("backup chat: "))
                    }
                })
        });
        // nsenter, systemd-cat and sh all exec: the streamed lines and the native entries of
        // this run come from the one pid.
        all.into_iter()
            .filter(|e| field(e, "_PID") == Some(pid.to_string().as_str()))
            .collect()
    };

    let native = under_cat(
        "lk-stream",
        "export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2);",
        true,
    );
    let events: Vec<Value> = native
        .iter()
        .filter(|e| field(e, "MESSAGE_ID").is_some())
        .cloned()
        .collect();
    let (_, finish) = start_and_finish(&events, JOB_FINISHED);
    assert_field(&finish, "LITEKEEPER_OUTCOME", "ok");
    let streamed: Vec<&str> = native
        .iter()
        .filter(|e| field(e, "_TRANSPORT") == Some("stdout"))
        .filter_map(|e| field(e, "MESSAGE"))
        .collect();
    assert!(
        streamed.iter().all(|m| !m.contains("started")),
        "log lines also went to stderr: {streamed:?}"
    );
    assert!(
        streamed
            .iter()
            .all(|m| !m.starts_with("backup chat: wrote")),
        "the summary repeats the finish event on the stream: {streamed:?}"
    );

    for (identifier, set_stream) in [
        ("lk-no-stream", ""),
        (
            "lk-other-stream",
            "export JOURNAL_STREAM=$(stat -L -c %d:%i /dev/null);",
        ),
    ] {
        let plain = under_cat(identifier, set_stream, false);
        assert!(
            plain
                .iter()
                .all(|e| field(e, "_TRANSPORT") == Some("stdout")
                    && e.get("LITEKEEPER_RUN_ID").is_none()),
            "{identifier}: native entries:\n{}",
            dump(&plain)
        );
        assert!(
            plain
                .iter()
                .any(|e| field(e, "MESSAGE")
                    .is_some_and(|m| m.contains("backup chat: started (cli)"))),
            "{identifier}: the human log lines should be streamed:\n{}",
            dump(&plain)
        );
    }
}
