//! Health pings (healthchecks.io style) against a tiny HTTP server on loopback: `URL/start` when
//! a job starts, `URL` or `URL/fail` with the summary or error in the body when it ends; a
//! server that hangs or refuses never delays or fails the job; dry runs and runs skipped for a
//! busy database send nothing; the daemon pings every scheduled run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use litekeeper::lock;
use serde_json::Value;

use crate::util::{both, TestEnv};

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    user_agent: String,
    body: String,
}

impl Req {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// A loopback HTTP server recording every request; answers 200, or never answers (`hang`).
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Req>>>,
}

impl Server {
    fn start(hang: bool) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = seen2.clone();
                std::thread::spawn(move || serve(stream, &seen, hang));
            }
        });
        Server { port, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<Req> {
        self.seen.lock().unwrap().clone()
    }

    fn lines(&self) -> Vec<String> {
        self.requests().iter().map(Req::line).collect()
    }

    /// Wait (bounded) until `pred` holds for the requests seen.
    fn wait_for(&self, timeout: Duration, what: &str, pred: impl Fn(&[Req]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !pred(&self.requests()) {
            assert!(
                Instant::now() < deadline,
                "no {what} within {timeout:?}: {:?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Read requests off one connection (keep-alive or not) and record them.
fn serve(stream: TcpStream, seen: &Mutex<Vec<Req>>, hang: bool) {
    let mut out = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if r.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let (mut length, mut user_agent) = (0usize, String::new());
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap(),
                    "user-agent" => user_agent = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        seen.lock().unwrap().push(Req {
            method,
            path,
            user_agent,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        if hang {
            // Hold the connection open without answering until the client gives up.
            let _ = r.read(&mut [0u8; 1]);
            return;
        }
        if out
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nOK",
            )
            .is_err()
        {
            return;
        }
    }
}

/// chat.db with a backup section (and a vacuum section), each with its own ping URL.
fn setup(env: &TestEnv, backup_extra: &str, vacuum_extra: &str) {
    let db = env.sqlite(
        "app/chat.db",
        "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);",
    );
    env.config("").database("chat", &db, &format!(
                "[database.backup]\ndir = \"{}\"\n{backup_extra}\n[database.vacuum]\n{vacuum_extra}",
                env.path("backups").display()
            )).write();
}

fn last_run(env: &TestEnv, job: &str) -> Value {
    let o = env.run_ok(&["status", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["database"] == "chat" && j["job"] == job)
        .unwrap_or_else(|| panic!("no chat/{job} in {v:#}"))["last"]
        .clone()
}

#[test]
fn start_then_success_with_the_summary_then_fail_with_the_error() {
    let env = TestEnv::new();
    let server = Server::start(false);
    setup(
        &env,
        &format!("ping = \"{}\"", server.url("/uuid")),
        &format!("ping = \"{}\"", server.url("/vac/")),
    );
    let t = Instant::now();
    let o = env.cmd().args(["run", "chat", "backup"]).output().unwrap();
    eprintln!("run with pings: {:?}", t.elapsed());
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    // `run` waited for its last ping: both are there when it has exited.
    let reqs = server.requests();
    assert_eq!(
        server.lines(),
        ["GET /uuid/start", "POST /uuid"],
        "{reqs:#?}"
    );
    let last = last_run(&env, "backup");
    let summary = last["summary"].as_str().unwrap();
    let run_id = last["id"].as_str().unwrap();
    assert!(
        reqs[1].body.contains(&format!("backup chat: {summary}")) && reqs[1].body.contains(run_id),
        "{reqs:#?}\n{last:#}"
    );
    assert!(reqs[0].body.is_empty(), "{reqs:#?}");
    for r in &reqs {
        assert_eq!(
            r.user_agent,
            format!("litekeeper/{}", env!("CARGO_PKG_VERSION"))
        );
    }

    // Nothing worth vacuuming is a success too (trailing slash in the URL is fine).
    env.run_ok(&["run", "chat", "vacuum"]);
    assert_eq!(last_run(&env, "vacuum")["outcome"], "skipped");
    assert_eq!(
        &server.lines()[2..],
        ["GET /vac/start", "POST /vac"],
        "{:#?}",
        server.requests()
    );

    // A failing run: start, then fail with the error.
    std::fs::remove_file(env.path("app/chat.db")).unwrap();
    let o = env.cmd().args(["run", "chat", "backup"]).output().unwrap();
    assert_eq!(o.status.code(), Some(66), "{}", both(&o));
    let reqs = server.requests();
    assert_eq!(
        &server.lines()[4..],
        ["GET /uuid/start", "POST /uuid/fail"],
        "{reqs:#?}"
    );
    let error = last_run(&env, "backup")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(error.contains("chat.db"), "{error}");
    assert!(reqs[5].body.contains(&error), "{reqs:#?}\n{error}");
}

#[test]
fn dry_runs_and_runs_skipped_for_a_busy_database_send_nothing() {
    let env = TestEnv::new();
    let server = Server::start(false);
    setup(&env, &format!("ping = \"{}\"", server.url("/uuid")), "");
    env.run_ok(&["run", "chat", "backup", "--dry-run"]);
    let held = lock::try_acquire(&env.path("locks"), "chat", "vacuum").unwrap();
    let o = env.cmd().args(["run", "chat", "backup"]).output().unwrap();
    assert_eq!(o.status.code(), Some(75), "{}", both(&o));
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert!(server.requests().is_empty(), "{:#?}", server.requests());
}

#[test]
fn a_hanging_server_does_not_delay_the_job() {
    let env = TestEnv::new();
    let server = Server::start(true);
    setup(
        &env,
        &format!("ping = \"{}\"\nping_timeout = \"2s\"", server.url("/uuid")),
        "",
    );
    let t = Instant::now();
    let o = env.cmd().args(["run", "chat", "backup"]).output().unwrap();
    let took = t.elapsed();
    eprintln!("run against a hanging server: {took:?}");
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    // Bounded by the ping timeout (plus start-up and a generous margin for slow CI).
    assert!(took < Duration::from_secs(12), "{took:?}\n{}", both(&o));
    let last = last_run(&env, "backup");
    assert_eq!(last["outcome"], "ok", "{last:#}");
    // The job itself did not wait for the server: its recorded duration is well below the
    // 2 s the start ping hung for.
    let ms = last["duration_ms"].as_u64().unwrap();
    assert!(ms < 1500, "job took {ms} ms: {last:#}");
    assert!(
        std::fs::read_dir(env.path("backups"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".db")),
        "no backup written"
    );
    assert_eq!(server.lines()[0], "GET /uuid/start");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("health ping (start) of backup chat to http://127.0.0.1:")
            && err.contains("/uuid/start failed"),
        "{}",
        both(&o)
    );
}

#[test]
fn a_refused_connection_is_a_warning_without_secrets() {
    let env = TestEnv::new();
    // A port nothing listens on.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    setup(
        &env,
        &format!("ping = \"http://127.0.0.1:{port}/uuid?token=s3cret\"\nping_timeout = \"1s\""),
        "",
    );
    let t = Instant::now();
    let o = env.cmd().args(["run", "chat", "backup"]).output().unwrap();
    let took = t.elapsed();
    eprintln!("run against a refusing port: {took:?}");
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(last_run(&env, "backup")["outcome"], "ok");
    let err = String::from_utf8_lossy(&o.stderr);
    let warning = err
        .lines()
        .find(|l| l.contains("health ping (success)"))
        .unwrap_or_else(|| panic!("no warning for the success ping:\n{}", both(&o)));
    assert!(
        warning.contains("WARN") && warning.contains(&format!("http://127.0.0.1:{port}/uuid ")),
        "{warning}"
    );
    assert!(!err.contains("s3cret"), "{}", both(&o));
}

#[test]
fn a_ping_that_is_no_http_url_is_a_config_error() {
    let env = TestEnv::new();
    setup(&env, "ping = \"hc-ping.com/uuid\"", "ping_timeout = \"0s\"");
    let o = env.cmd().arg("check").output().unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("ping") && err.contains("http:// or https://"),
        "{}",
        both(&o)
    );
    assert!(err.contains("ping_timeout"), "{}", both(&o));
}

#[test]
fn the_daemon_pings_every_scheduled_run() {
    let env = TestEnv::new();
    let server = Server::start(false);
    setup(
        &env,
        &format!(
            "schedule = \"* * * * * *\"\nping = \"{}\"",
            server.url("/uuid")
        ),
        "",
    );
    let mut daemon = env.daemon(&[]);
    let count = |reqs: &[Req], line: &str| reqs.iter().filter(|r| r.line() == line).count();
    server.wait_for(Duration::from_secs(30), "two pinged runs", |reqs| {
        count(reqs, "POST /uuid") >= 2
    });
    daemon.signal(libc::SIGTERM);
    daemon.wait_exit(Duration::from_secs(15));
    let reqs = server.requests();
    // Runs never overlap: pings alternate start, success (a run cut short by SIGTERM may end
    // the list with its start, or a fail the daemon did not wait for).
    let lines: Vec<String> = reqs.iter().map(Req::line).collect();
    for (i, pair) in lines.chunks(2).enumerate() {
        assert_eq!(pair[0], "GET /uuid/start", "run {i}: {lines:?}");
        if let Some(end) = pair.get(1) {
            assert!(end == "POST /uuid" || end == "POST /uuid/fail", "{lines:?}");
        }
    }
    assert!(count(&reqs, "GET /uuid/start") >= 2, "{lines:?}");
    assert!(
        reqs.iter()
            .filter(|r| r.path == "/uuid")
            .all(|r| r.body.contains("trigger schedule")),
        "{reqs:#?}"
    );
}
