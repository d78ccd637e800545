//! Where the configuration comes from (`-c`, `$LITEKEEPER_CONFIG`, else a default that follows
//! the user: /etc as root, XDG otherwise), and the command line's help and usage errors.

use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Output};

use crate::util::{
    both, give_to_nobody, is_root, open_to_nobody, root_or_skip, set_mode, stderr, stdout,
    unprivileged, TestEnv,
};

/// The real binary as ourselves, without `-c` and without litekeeper's or XDG variables.
fn bare_cmd(env: &TestEnv) -> StdCommand {
    let mut c = StdCommand::new(assert_cmd::cargo::cargo_bin("litekeeper"));
    for (k, _) in std::env::vars() {
        if k.starts_with("LITEKEEPER") || k.starts_with("XDG_") || k == "JOURNAL_STREAM" {
            c.env_remove(k);
        }
    }
    c.env("NO_COLOR", "1")
        .env("TZ", "UTC")
        .current_dir(env.dir.path());
    c
}

/// The unprivileged user's command, with `HOME` and `XDG_CONFIG_HOME` (`xdg_config`) in the
/// temp dir.
fn user_cmd(env: &TestEnv, xdg_config: &str) -> StdCommand {
    let mut c = unprivileged(env);
    c.env("HOME", env.path("home"))
        .env("XDG_CONFIG_HOME", env.path(xdg_config));
    c
}

/// `check` read the configuration at `cfg` and found the database `marker` healthy: exit 0,
/// stdout starts with `CFG: configuration ok` and has `MARKER: ok: `. Its stdout; `ctx` leads
/// a failure's message.
fn assert_config_from(out: &Output, cfg: &Path, marker: &str, ctx: &str) -> String {
    assert_eq!(out.status.code(), Some(0), "{ctx}\n{}", both(out));
    let text = stdout(out);
    assert!(
        text.starts_with(&format!("{}: configuration ok", cfg.display())),
        "{ctx}\n{}",
        both(out)
    );
    assert!(
        text.contains(&format!("{marker}: ok: ")),
        "{ctx}\n{}",
        both(out)
    );
    text
}

/// Create `rel` (with parents) as a directory the unprivileged user can read and write.
fn nobody_dir(env: &TestEnv, rel: &str) -> PathBuf {
    let p = env.path(rel);
    std::fs::create_dir_all(&p).unwrap();
    let mut d = p.as_path();
    while d != env.dir.path() {
        set_mode(d, 0o755);
        give_to_nobody(d);
        d = d.parent().unwrap();
    }
    p
}

/// Write a config at `at` (parents created, readable by everyone) with one healthy WAL
/// database named `db_name`, owned by the unprivileged user; `daemon` is the [daemon] section.
fn config_with_db(env: &TestEnv, at: &Path, daemon: &str, db_name: &str) {
    let data = nobody_dir(env, "data");
    let db = env.sqlite(
        &format!("data/{db_name}.db"),
        "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);",
    );
    give_to_nobody(&db);
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::fs::write(
        at,
        format!(
            "{daemon}{}",
            TestEnv::database_section(db_name, &db, "[database.backup]")
        ),
    )
    .unwrap();
    set_mode(at, 0o644);
    let mut d = at.parent().unwrap();
    while d.starts_with(env.dir.path()) && d != env.dir.path() {
        set_mode(d, 0o755);
        d = d.parent().unwrap();
    }
    assert!(data.is_dir());
}

#[test]
fn non_root_reads_config_from_xdg_config_home() {
    let env = TestEnv::new();
    open_to_nobody(&env);
    let cfg = env.path("xdg-config/litekeeper/litekeeper.toml");
    config_with_db(&env, &cfg, &env.daemon_section(""), "xdg-marker");
    let out = user_cmd(&env, "xdg-config").arg("check").output().unwrap();
    let text = assert_config_from(&out, &cfg, "xdg-marker", "");
    assert!(
        text.starts_with(&format!(
            "{}: configuration ok (1 database)\n",
            cfg.display()
        )),
        "{}",
        both(&out)
    );
}

#[test]
fn non_root_falls_back_to_home_config_when_xdg_is_unset_or_relative() {
    let env = TestEnv::new();
    open_to_nobody(&env);
    let cfg = env.path("home/.config/litekeeper/litekeeper.toml");
    config_with_db(&env, &cfg, &env.daemon_section(""), "home-marker");
    for xdg in [None, Some("relative/config")] {
        let mut c = unprivileged(&env);
        c.env("HOME", env.path("home")).arg("check");
        if let Some(x) = xdg {
            // A relative XDG_CONFIG_HOME is invalid per the XDG spec and ignored.
            c.env("XDG_CONFIG_HOME", x);
        }
        let out = c.output().unwrap();
        assert_config_from(&out, &cfg, "home-marker", &format!("{xdg:?}"));
    }
}

#[test]
fn non_root_without_a_config_names_the_xdg_path() {
    let env = TestEnv::new();
    open_to_nobody(&env);
    let out = user_cmd(&env, "empty-config")
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", both(&out));
    let err = stderr(&out);
    assert_eq!(
        err.trim_end(),
        format!(
            "litekeeper: error: {}: cannot read the configuration file: No such file or \
             directory (os error 2) (create it from config/litekeeper.toml, or pass -c FILE)",
            env.path("empty-config/litekeeper/litekeeper.toml")
                .display()
        ),
        "{}",
        both(&out)
    );
}

/// Without state_dir and lock_dir in the file, a user's run keeps its history, lock and
/// backups under $XDG_STATE_HOME and $XDG_RUNTIME_DIR.
#[test]
fn non_root_state_lock_and_backups_default_to_xdg_dirs() {
    let env = TestEnv::new();
    open_to_nobody(&env);
    let state = nobody_dir(&env, "xdg-state");
    let runtime = nobody_dir(&env, "xdg-run");
    set_mode(&runtime, 0o700);
    let cfg = env.path("xdg-config/litekeeper/litekeeper.toml");
    config_with_db(&env, &cfg, "[daemon]\nbusy_timeout = \"300ms\"\n", "chat");
    let out = user_cmd(&env, "xdg-config")
        .env("XDG_STATE_HOME", &state)
        .env("XDG_RUNTIME_DIR", &runtime)
        .args(["run", "chat", "backup"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(
        state.join("litekeeper/state.db").is_file(),
        "no state.db under $XDG_STATE_HOME/litekeeper\n{}",
        both(&out)
    );
    let backups: Vec<_> = std::fs::read_dir(state.join("litekeeper/backups/chat"))
        .unwrap_or_else(|e| panic!("no backups dir: {e}\n{}", both(&out)))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("chat-") && n.ends_with(".db"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}\n{}", both(&out));
    assert!(
        runtime.join("litekeeper/chat.lock").exists(),
        "no lock under $XDG_RUNTIME_DIR/litekeeper\n{}",
        both(&out)
    );
}

#[test]
fn root_without_a_config_names_the_etc_path() {
    if !root_or_skip("the /etc default applies to root only") {
        return;
    }
    if Path::new("/etc/litekeeper/litekeeper.toml").exists() {
        eprintln!("skipped: this machine has an /etc/litekeeper/litekeeper.toml");
        return;
    }
    let env = TestEnv::new();
    // Root ignores the XDG variables.
    let xdg = env.path("xdg-config/litekeeper/litekeeper.toml");
    std::fs::create_dir_all(xdg.parent().unwrap()).unwrap();
    std::fs::write(&xdg, "").unwrap();
    let out = bare_cmd(&env)
        .env("XDG_CONFIG_HOME", env.path("xdg-config"))
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", both(&out));
    assert!(out.stdout.is_empty(), "{}", both(&out));
    assert_eq!(
        stderr(&out).trim_end(),
        "litekeeper: error: /etc/litekeeper/litekeeper.toml: cannot read the configuration \
         file: No such file or directory (os error 2) (create it from config/litekeeper.toml, \
         or pass -c FILE)",
        "{}",
        both(&out)
    );
    assert!(
        !Path::new("/etc/litekeeper").exists(),
        "created /etc/litekeeper"
    );
}

#[test]
fn litekeeper_config_selects_the_file_and_dash_c_wins() {
    let env = TestEnv::new();
    let db = env.sqlite("app/chat.db", "PRAGMA journal_mode=WAL; CREATE TABLE t(x);");
    let from_env = env.path("conf/from-env.toml");
    let from_flag = env.path("conf/from-flag.toml");
    std::fs::create_dir_all(env.path("conf")).unwrap();
    for (file, name) in [(&from_env, "env-marker"), (&from_flag, "flag-marker")] {
        std::fs::write(
            file,
            format!(
                "{}{}",
                env.daemon_section(""),
                TestEnv::database_section(name, &db, "")
            ),
        )
        .unwrap();
    }
    let out = bare_cmd(&env)
        .env("LITEKEEPER_CONFIG", &from_env)
        .arg("check")
        .output()
        .unwrap();
    assert_config_from(&out, &from_env, "env-marker", "");

    let out = bare_cmd(&env)
        .env("LITEKEEPER_CONFIG", &from_env)
        .arg("-c")
        .arg(&from_flag)
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let text = stdout(&out);
    assert!(text.contains("flag-marker: ok: "), "{}", both(&out));
    assert!(!text.contains("env-marker"), "{}", both(&out));

    // A LITEKEEPER_CONFIG naming a missing file is that file's error, not a fallback.
    let missing = env.path("conf/missing.toml");
    let out = bare_cmd(&env)
        .env("LITEKEEPER_CONFIG", &missing)
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", both(&out));
    assert!(
        stderr(&out).contains(&format!(
            "{}: cannot read the configuration file",
            missing.display()
        )),
        "{}",
        both(&out)
    );
}

#[test]
fn unreadable_config_exits_78_with_permission_denied() {
    let env = TestEnv::new();
    env.write_config(&env.daemon_section(""));
    open_to_nobody(&env);
    set_mode(&env.config_path(), 0o600);
    if !is_root() {
        set_mode(&env.config_path(), 0o000);
    }
    let out = unprivileged(&env)
        .arg("-c")
        .arg(env.config_path())
        .arg("check")
        .output()
        .unwrap();
    set_mode(&env.config_path(), 0o644);
    assert_eq!(out.status.code(), Some(78), "{}", both(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{}: cannot read the configuration file: Permission denied",
            env.config_path().display()
        )),
        "{}",
        both(&out)
    );
    assert_eq!(err.lines().count(), 1, "{}", both(&out));
}

#[test]
fn help_exits_0_with_examples() {
    let env = TestEnv::new();
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--help"],
            &[
                "Usage: litekeeper [OPTIONS] <COMMAND>",
                "Examples:",
                "litekeeper run chat backup",
                "LITEKEEPER_CONFIG",
                "LITEKEEPER__DAEMON__MAX_CONCURRENT_JOBS=4",
                "Exit codes:",
                "78 configuration error",
            ],
        ),
        (
            &["run", "--help"],
            &[
                "Usage: litekeeper run [OPTIONS] <DATABASE> <JOB>",
                "Examples:",
                "litekeeper run chat backup",
                "litekeeper run chat prune --dry-run",
                "--wait",
                "exits 75",
            ],
        ),
        (
            &["check", "--help"],
            &["Examples:", "litekeeper check chat files", "Exits 1"],
        ),
        (
            &["help", "run"],
            &["Examples:", "litekeeper run chat backup"],
        ),
    ];
    for (args, says) in cases {
        let out = bare_cmd(&env).args(*args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}\n{}", both(&out));
        let text = stdout(&out);
        for s in *says {
            assert!(text.contains(s), "{args:?}: {s:?} missing\n{}", both(&out));
        }
        assert!(out.stderr.is_empty(), "{args:?}\n{}", both(&out));
    }
    let out = bare_cmd(&env).arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(stdout(&out).starts_with("litekeeper "), "{}", both(&out));
}

#[test]
fn usage_errors_exit_64() {
    let env = TestEnv::new();
    let cases: &[(&[&str], &str)] = &[
        (&["frobnicate"], "unrecognized subcommand 'frobnicate'"),
        (&["check", "--bogus"], "unexpected argument '--bogus'"),
        (&["--bogus", "check"], "unexpected argument '--bogus'"),
        (&[], "Usage: litekeeper"),
        (&["run", "chat"], "<JOB>"),
        (&["run", "chat", "explode"], "invalid value 'explode'"),
        (&["schedule", "--count", "many"], "invalid value 'many'"),
        (
            &["restore", "chat", "--to", "/tmp/x.db", "--in-place"],
            "cannot be used with",
        ),
    ];
    for (args, says) in cases {
        let out = bare_cmd(&env).args(*args).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}\n{}", both(&out));
        assert!(
            stderr(&out).contains(says),
            "{args:?}: {says:?} missing\n{}",
            both(&out)
        );
        assert!(out.stdout.is_empty(), "{args:?}\n{}", both(&out));
    }
}
