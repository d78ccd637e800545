//! Loading the configuration at its edges: files that are not regular files or are far too
//! large, environment overrides read by the file's rules, control characters, the recorded
//! config path, and a daemon that must keep answering signals while a reload fails.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::{both, mkfifo, wait_until, TestEnv};

/// Waits for `child` at most `limit`; a child still running then is killed and `None` is
/// returned (the hang this module tests for).
fn wait_or_kill(mut child: Child, limit: Duration) -> Option<Output> {
    use std::io::Read;
    let deadline = Instant::now() + limit;
    // Drained meanwhile: a full pipe would stop the child.
    let drain = |p: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(Output {
                status,
                stdout: out.join().unwrap(),
                stderr: err.join().unwrap(),
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The real binary in the test's directory without the caller's LITEKEEPER variables.
fn lk(env: &TestEnv) -> Command {
    env.bare_cmd()
}

fn check_with(env: &TestEnv, config: &Path, vars: &[(&str, &str)]) -> Output {
    let mut c = lk(env);
    c.arg("-c").arg(config).arg("check");
    for (k, v) in vars {
        c.env(k, v);
    }
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_or_kill(child, Duration::from_secs(30)).expect("check hung on the configuration file")
}

fn stderr_line(o: &Output) -> String {
    let text = String::from_utf8_lossy(&o.stderr).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "want one stderr line\n{}", both(o));
    lines[0].to_string()
}

#[test]
fn a_config_that_is_a_fifo_or_a_device_is_refused_without_reading() {
    let env = TestEnv::new();
    let fifo = env.path("fifo.toml");
    mkfifo(&fifo, 0o600);
    let o = check_with(&env, &fifo, &[]);
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    let line = stderr_line(&o);
    assert!(
        line.contains(&format!(
            "{}: the configuration must be a regular file",
            fifo.display()
        )) && line.contains("FIFO"),
        "{line}"
    );
    let o = check_with(&env, Path::new("/dev/zero"), &[]);
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    assert!(
        stderr_line(&o).contains(
            "/dev/zero: the configuration must be a regular file, and this is a character device"
        ),
        "{}",
        both(&o)
    );
    let o = check_with(&env, env.dir.path(), &[]);
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    assert!(stderr_line(&o).contains("a directory"), "{}", both(&o));
}

#[test]
fn a_config_file_over_4_mib_is_refused() {
    let env = TestEnv::new();
    let big = env.path("big.toml");
    let line = format!("# {}\n", "x".repeat(1021));
    std::fs::write(&big, line.repeat(4 * 1024 + 1)).unwrap();
    let o = check_with(&env, &big, &[]);
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    assert!(
        stderr_line(&o).contains("larger than 4 MiB"),
        "{}",
        both(&o)
    );
}

/// A reload that meets a FIFO fails at once with one line, and SIGTERM still stops the daemon.
#[test]
fn a_reload_that_meets_a_fifo_fails_and_the_daemon_still_stops_on_sigterm() {
    let env = TestEnv::new();
    let config = env.write_config(&env.daemon_section(""));
    let mut daemon = env.daemon(&[("LITEKEEPER_LOG", "info")]);
    let wait_log = |what: &str| {
        wait_until(
            &format!("{what:?} in the log"),
            Duration::from_secs(30),
            || daemon.log().contains(what),
        )
    };
    wait_log("started");
    std::fs::remove_file(&config).unwrap();
    mkfifo(&config, 0o600);
    daemon.signal(libc::SIGHUP);
    wait_log("reload failed");
    daemon.signal(libc::SIGTERM);
    // Fails, with the log, when the daemon ignored SIGTERM after the reload.
    let status = daemon.wait_exit(Duration::from_secs(30));
    let text = daemon.log();
    assert_eq!(status.code(), Some(0), "{text}");
    let failed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("reload failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{text}");
    assert!(failed[0].contains("FIFO"), "{text}");
}

#[test]
fn environment_overrides_follow_the_files_rules() {
    let env = TestEnv::new();
    let config = env.write_config(&env.daemon_section(""));
    const VAR: &str = "LITEKEEPER__DAEMON__MAX_CONCURRENT_JOBS";
    for bad in ["4.5", "1e3", "inf", "nan", "NaN", "-inf", "4x", "\"4\"", ""] {
        let o = check_with(&env, &config, &[(VAR, bad)]);
        assert_eq!(o.status.code(), Some(78), "{bad:?}: {}", both(&o));
        let line = stderr_line(&o);
        assert!(
            line.starts_with(&format!(
                "litekeeper: error: {VAR}: daemon.max_concurrent_jobs: "
            )) && line.ends_with(&format!("(got {bad:?})")),
            "{bad:?}: {line}"
        );
    }
    // The range is the file's too, with the value as typed.
    let o = check_with(&env, &config, &[(VAR, "0")]);
    assert_eq!(
        stderr_line(&o),
        format!("litekeeper: error: {VAR}: daemon.max_concurrent_jobs: expected a number from 1 to 1024 (got \"0\")")
    );
    let o = check_with(&env, &config, &[(VAR, "4")]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));

    let o = check_with(&env, &config, &[("LITEKEEPER__DAEMON__CATCH_UP", "yes")]);
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    assert!(stderr_line(&o).ends_with("(got \"yes\")"), "{}", both(&o));
    let o = check_with(&env, &config, &[("LITEKEEPER__DAEMON__CATCH_UP", "false")]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));

    let o = check_with(&env, &config, &[("LITEKEEPER__DAEMON__MAX_JOBS", "4")]);
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    assert!(
        stderr_line(&o).contains("LITEKEEPER__DAEMON__MAX_JOBS: daemon.max_jobs: unknown field"),
        "{}",
        both(&o)
    );
}

/// Control characters (newline, tab, DEL…) in a path from the environment would become lines
/// of a unit file or a log: refused at load, naming the variable.
#[test]
fn control_characters_in_environment_overrides_are_refused() {
    let env = TestEnv::new();
    let config = env.write_config(&env.daemon_section(""));
    for (var, value) in [
        (
            "LITEKEEPER__DAEMON__METRICS_FILE",
            "/tmp/m.prom\n[Service]\nExecStartPre=+/x",
        ),
        ("LITEKEEPER__DAEMON__STATE_DIR", "/var/lib/a\tb"),
        ("LITEKEEPER__DAEMON__LOCK_DIR", "/run/a\u{7f}"),
    ] {
        let o = check_with(&env, &config, &[(var, value)]);
        assert_eq!(o.status.code(), Some(78), "{var}: {}", both(&o));
        let line = stderr_line(&o);
        assert!(
            line.starts_with(&format!("litekeeper: error: {var}: "))
                && line.contains("control characters"),
            "{line}"
        );
    }
}

/// The configuration path litekeeper records (and writes into units) is absolute even when
/// `-c` was relative.
#[test]
fn a_relative_config_path_is_recorded_absolute() {
    let env = TestEnv::new();
    env.write_config(&env.daemon_section(""));
    let out = env.path("units");
    let o = lk(&env)
        .args(["-c", "litekeeper.toml", "systemd-units", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let conf = std::fs::read_to_string(out.join("litekeeper.service.d/config.conf")).unwrap();
    assert!(
        conf.contains(&env.config_path().display().to_string()),
        "the unit names the relative path:\n{conf}"
    );
}

/// 5,000 databases with files rules and backups load, every job is listed once, and a backup
/// directory inside the 4,000th database's files directory is still found (the check walks
/// each backup directory's ancestors instead of comparing all pairs; benches/config_load.sh).
#[test]
fn five_thousand_databases_with_files_rules_load_and_a_clash_is_still_found() {
    let env = TestEnv::new();
    let mut text = env.daemon_section("");
    let stanza = |i: usize, backup_dir: &str| {
        format!(
            "[[database]]\nname = \"app{i}\"\npath = \"/srv/app{i}/app.db\"\n\
             [database.prune]\nschedule = \"0 3 * * *\"\n[[database.prune.files]]\n\
             dir = \"/srv/app{i}/uploads\"\npattern = '^(?P<id>[0-9a-f-]{{36}})_'\n\
             referenced_by = \"SELECT id FROM file\"\n[database.backup]\n\
             schedule = \"0 2 * * *\"\ndir = \"{backup_dir}\"\n"
        )
    };
    for i in 0..5000 {
        text.push_str(&stanza(i, &format!("/srv/backups/app{i}")));
    }
    let config = env.write_config(&text);
    let o = lk(&env)
        .arg("-c")
        .arg(&config)
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let jobs = doc["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 10_000);
    let names: std::collections::HashSet<&str> = jobs
        .iter()
        .map(|j| j["database"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 5000);

    // One more database backs up into app3999's uploads, whose pattern takes any file.
    text.push_str(&stanza(5000, "/srv/app3999/uploads"));
    let text = text.replace(
        "dir = \"/srv/app3999/uploads\"\npattern = '^(?P<id>[0-9a-f-]{36})_'",
        "dir = \"/srv/app3999/uploads\"\npattern = '^(?P<id>.+)$'",
    );
    std::fs::write(&config, &text).unwrap();
    let o = check_with(&env, &config, &[]);
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    let line = stderr_line(&o);
    assert!(
        line.contains("database \"app5000\" backup.dir")
            && line.contains("database \"app3999\" prune.files[0].dir"),
        "{line}"
    );
}
