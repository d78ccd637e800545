//! Every class of configuration error exits 78 with one line on stderr naming the file, the
//! `line:col`, the key, the reason and the value received; environment overrides are named by
//! their variable instead of a position.

use std::process::Output;

use crate::util::{both, TestEnv};

/// A config and what its one error line must say.
struct Case {
    name: &'static str,
    text: &'static str,
    /// `line:col` expected right after the file name.
    pos: &'static str,
    /// Pieces that must appear after the position: key path, reason, value received.
    says: &'static [&'static str],
}

const DB: &str = "[[database]]\nname = \"chat\"\npath = \"/srv/app/chat.db\"\n";

fn cases() -> Vec<Case> {
    // `DB` is three lines, so a section right after it starts on line 4.
    vec![
        Case {
            name: "toml syntax: unclosed table header",
            text: "# litekeeper\n[daemon\nbusy_timeout = \"1s\"\n",
            pos: "2:8",
            says: &["invalid TOML", "unclosed table"],
        },
        Case {
            name: "toml syntax: unquoted string",
            text: "[daemon]\ntimezone = \"UTC\"\nbusy_timeout = 5s\n",
            pos: "3:16",
            says: &["invalid TOML", "string values must be quoted"],
        },
        Case {
            name: "toml syntax: duplicate key",
            text: "[daemon]\nmax_concurrent_jobs = 2\nmax_concurrent_jobs = 3\n",
            pos: "3:1",
            says: &["invalid TOML", "duplicate key"],
        },
        Case {
            name: "wrong type: string for integer",
            text: "[daemon]\ntimezone = \"UTC\"\nmax_concurrent_jobs = \"two\"\n",
            pos: "3:23",
            says: &[
                "daemon.max_concurrent_jobs:",
                "invalid type",
                "\"two\"",
                "expected i64",
            ],
        },
        Case {
            name: "wrong type: integer for duration string",
            text: "[daemon]\nbusy_timeout = 5\n",
            pos: "2:16",
            says: &["daemon.busy_timeout:", "invalid type: integer `5`", "string"],
        },
        Case {
            name: "unknown key at top level",
            text: "# comment\ncolour = \"blue\"\n[daemon]\n",
            pos: "2:1",
            says: &["colour:", "unknown field `colour`", "`daemon`, `database`"],
        },
        Case {
            name: "unknown key in [daemon]",
            text: "[daemon]\ntimezone = \"UTC\"\nmax_concurent_jobs = 2\n",
            pos: "3:1",
            says: &[
                "daemon.max_concurent_jobs:",
                "unknown field `max_concurent_jobs`",
                "max_concurrent_jobs",
            ],
        },
        Case {
            name: "unknown key in [[database]]",
            text: "[[database]]\nname = \"chat\"\npath = \"/srv/app/chat.db\"\nonbusy = \"skip\"\n",
            pos: "4:1",
            says: &["database[0].onbusy:", "unknown field `onbusy`", "on_busy"],
        },
        Case {
            name: "unknown key in [database.backup]",
            text: "[[database]]\nname = \"chat\"\npath = \"/srv/app/chat.db\"\n[database.backup]\nretain = 7\n",
            pos: "5:1",
            says: &["database[0].backup.retain:", "unknown field `retain`", "keep"],
        },
        Case {
            name: "bad duration: unknown unit",
            text: "[daemon]\ntimezone = \"UTC\"\nbusy_timeout = \"5x\"\n",
            pos: "3:16",
            says: &[
                "daemon.busy_timeout:",
                "expected a duration like \"90d\"",
                "(got \"5x\")",
            ],
        },
        Case {
            name: "bad duration: a word",
            text: "[[database]]\nname = \"chat\"\npath = \"/srv/app/chat.db\"\nwait_timeout = \"ninety\"\non_busy = \"wait\"\n",
            pos: "4:16",
            says: &[
                "database \"chat\" wait_timeout:",
                "expected a duration",
                "(got \"ninety\")",
            ],
        },
        Case {
            name: "bad duration: negative",
            text: "[daemon]\nkeep_history = \"-5d\"\n",
            pos: "2:16",
            says: &[
                "daemon.keep_history:",
                "expected a duration",
                "(got \"-5d\")",
            ],
        },
        Case {
            name: "bad size",
            text: "[[database]]\nname = \"chat\"\npath = \"/srv/app/chat.db\"\n[database.vacuum]\nmode = \"full\"\nmin_free = \"12 parsecs\"\n",
            pos: "6:12",
            says: &[
                "database \"chat\" vacuum.min_free:",
                "expected a share like \"20%\" or a size like \"64MiB\"",
                "(got \"12 parsecs\")",
            ],
        },
        Case {
            name: "bad share over 100%",
            text: "[[database]]\nname = \"chat\"\npath = \"/srv/app/chat.db\"\n[database.vacuum]\nmin_free = \"120%\"\n",
            pos: "5:12",
            says: &[
                "database \"chat\" vacuum.min_free:",
                "between 0% and 100%",
                "(got \"120%\")",
            ],
        },
        Case {
            name: "cron: too few fields",
            text: "[[database]]\nname = \"chat\"\npath = \"/srv/app/chat.db\"\n[database.backup]\nschedule = \"0 4 *\"\n",
            pos: "5:12",
            says: &[
                "database \"chat\" backup.schedule:",
                "invalid cron schedule",
                "expected 5 fields",
                "got 3",
                "(got \"0 4 *\")",
            ],
        },
        Case {
            name: "cron: minute 61 out of range",
            text: "[[database]]\nname = \"chat\"\npath = \"/srv/app/chat.db\"\n[database.prune]\nschedule = \"61 4 * * *\"\n",
            pos: "5:12",
            says: &[
                "database \"chat\" prune.schedule:",
                "invalid cron schedule",
                "minute field \"61\": 61 is out of range (0-59)",
                "(got \"61 4 * * *\")",
            ],
        },
        Case {
            name: "cron: extension L refused",
            text: "[[database]]\nname = \"chat\"\npath = \"/srv/app/chat.db\"\n[database.vacuum]\nschedule = \"0 3 L * *\"\n",
            pos: "5:12",
            says: &[
                "database \"chat\" vacuum.schedule:",
                "day-of-month field \"L\"",
                "non-standard extension",
                "(got \"0 3 L * *\")",
            ],
        },
        Case {
            name: "cron: extension # refused",
            text: "[[database]]\nname = \"chat\"\npath = \"/srv/app/chat.db\"\n[database.backup]\nschedule = \"0 4 * * MON#2\"\n",
            pos: "5:12",
            says: &[
                "database \"chat\" backup.schedule:",
                "day-of-week field \"MON#2\"",
                "'#' is a non-standard extension",
                "(got \"0 4 * * MON#2\")",
            ],
        },
        Case {
            name: "bad timezone",
            text: "[daemon]\nmax_concurrent_jobs = 2\ntimezone = \"Mars/Base\"\n",
            pos: "3:12",
            says: &[
                "daemon.timezone:",
                "IANA time zone name",
                "(got \"Mars/Base\")",
            ],
        },
        Case {
            name: "database name with upper case",
            text: "[[database]]\nname = \"Chat\"\npath = \"/srv/app/chat.db\"\n",
            pos: "2:8",
            says: &["name:", "[a-z0-9_][a-z0-9_-]*", "(got \"Chat\")"],
        },
        Case {
            name: "database name with a space",
            text: "[daemon]\n[[database]]\nname = \"my chat\"\npath = \"/srv/app/chat.db\"\n",
            pos: "3:8",
            says: &["name:", "[a-z0-9_][a-z0-9_-]*", "(got \"my chat\")"],
        },
        Case {
            name: "relative database path",
            text: "[[database]]\nname = \"chat\"\npath = \"data/chat.db\"\n",
            pos: "3:8",
            says: &[
                "database \"chat\" path:",
                "expected an absolute path",
                "(got \"data/chat.db\")",
            ],
        },
        Case {
            name: "relative state_dir",
            text: "[daemon]\nstate_dir = \"state\"\n",
            pos: "2:13",
            says: &[
                "daemon.state_dir:",
                "expected an absolute path",
                "(got \"state\")",
            ],
        },
        Case {
            name: "duplicate database names: the second is named",
            text: "[[database]]\nname = \"chat\"\npath = \"/srv/app/chat.db\"\n\n[[database]]\nname = \"chat\"\npath = \"/srv/app/other.db\"\n",
            pos: "6:8",
            says: &["name:", "duplicate database name", "(got \"chat\")"],
        },
        Case {
            name: "missing required key: path",
            text: "[daemon]\ntimezone = \"UTC\"\n\n[[database]]\nname = \"chat\"\n",
            pos: "4:1",
            says: &["database[0]:", "missing field `path`"],
        },
        Case {
            name: "bad choice value",
            text: "[[database]]\nname = \"chat\"\npath = \"/srv/app/chat.db\"\non_busy = \"queue\"\n",
            pos: "4:11",
            says: &[
                "database \"chat\" on_busy:",
                "expected one of \"skip\", \"wait\"",
                "(got \"queue\")",
            ],
        },
    ]
}

fn run(env: &TestEnv, vars: &[(&str, &str)]) -> Output {
    let mut c = env.cmd();
    c.arg("check");
    for (k, v) in vars {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// `ARGS` stops at a configuration error: exit 78, nothing on stdout, one line on stderr
/// (returned).
fn config_error(env: &TestEnv, args: &[&str]) -> String {
    let out = env.run_code(args, 78);
    assert!(out.stdout.is_empty(), "{args:?}\n{}", both(&out));
    one_line(&out).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// The single stderr line, or an explanation of why there is not exactly one.
fn one_line(o: &Output) -> Result<String, String> {
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    match lines.as_slice() {
        [one] => Ok(one.to_string()),
        _ => Err(format!(
            "expected one stderr line, got {}\n{}",
            lines.len(),
            both(o)
        )),
    }
}

fn verify(case: &Case, env: &TestEnv, o: &Output) -> Result<(), String> {
    if o.status.code() != Some(78) {
        return Err(format!("exit {:?}, want 78\n{}", o.status.code(), both(o)));
    }
    if !o.stdout.is_empty() {
        return Err(format!("stdout not empty\n{}", both(o)));
    }
    let line = one_line(o)?;
    let head = format!(
        "litekeeper: error: {}:{}: ",
        env.config_path().display(),
        case.pos
    );
    let Some(rest) = line.strip_prefix(&head) else {
        return Err(format!("line does not start with {head:?}: {line:?}"));
    };
    for piece in case.says {
        if !rest.contains(piece) {
            return Err(format!("{piece:?} missing from {line:?}"));
        }
    }
    Ok(())
}

#[test]
fn each_error_class_is_one_line_with_file_line_key_reason_and_value() {
    let env = TestEnv::new();
    let mut failures = Vec::new();
    let cases = cases();
    for case in &cases {
        env.write_config(case.text);
        let out = run(&env, &[]);
        if let Err(why) = verify(case, &env, &out) {
            failures.push(format!("[{}] {why}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_problem_gets_its_own_line() {
    let env = TestEnv::new();
    env.write_config(&format!(
        "[daemon]\nbusy_timeout = \"5x\"\ntimezone = \"Mars/Base\"\n{DB}[database.backup]\nschedule = \"0 4 *\"\n"
    ));
    let out = run(&env, &[]);
    assert_eq!(out.status.code(), Some(78), "{}", both(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let f = env.config_path().display().to_string();
    let mut lines: Vec<&str> = err.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 3, "{}", both(&out));
    // The first problem carries main's prefix, the others are bare lines.
    let find = |needle: &str| {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} missing\n{}", both(&out)))
            .trim_start_matches("litekeeper: error: ")
            .to_string()
    };
    assert!(
        find("busy_timeout").starts_with(&format!("{f}:2:16: daemon.busy_timeout:")),
        "{}",
        both(&out)
    );
    assert!(
        find("timezone").starts_with(&format!("{f}:3:12: daemon.timezone:")),
        "{}",
        both(&out)
    );
    assert!(
        find("schedule").starts_with(&format!("{f}:8:12: database \"chat\" backup.schedule:")),
        "{}",
        both(&out)
    );
}

#[test]
fn bad_environment_override_names_the_variable() {
    let env = TestEnv::new();
    // The file itself is fine and even sets the key; the variable wins and is blamed.
    env.write_config(&format!("[daemon]\nbusy_timeout = \"1s\"\n{DB}"));
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "LITEKEEPER__DAEMON__BUSY_TIMEOUT",
            "xyz",
            &[
                "LITEKEEPER__DAEMON__BUSY_TIMEOUT: daemon.busy_timeout: expected a duration",
                "(got \"xyz\")",
            ],
        ),
        (
            "LITEKEEPER__DAEMON__TIMEZONE",
            "Mars/Base",
            &[
                "LITEKEEPER__DAEMON__TIMEZONE: daemon.timezone:",
                "(got \"Mars/Base\")",
            ],
        ),
        (
            "LITEKEEPER__DAEMON__MAX_CONCURRENT_JOBS",
            "0",
            &[
                "LITEKEEPER__DAEMON__MAX_CONCURRENT_JOBS: daemon.max_concurrent_jobs:",
                "from 1 to 1024",
                "(got \"0\")",
            ],
        ),
        // Wrong type and unknown key are found while layering, by the file's rules: the
        // variable, the key and the value as typed are named.
        (
            "LITEKEEPER__DAEMON__MAX_CONCURRENT_JOBS",
            "abc",
            &[
                "LITEKEEPER__DAEMON__MAX_CONCURRENT_JOBS: daemon.max_concurrent_jobs: invalid type",
                "(got \"abc\")",
            ],
        ),
        (
            "LITEKEEPER__DAEMON__BOGUS",
            "1",
            &["LITEKEEPER__DAEMON__BOGUS: daemon.bogus: unknown field `bogus`"],
        ),
    ];
    let mut failures = Vec::new();
    for (var, value, says) in cases {
        let out = run(&env, &[(var, value)]);
        let line = match one_line(&out) {
            Ok(l) => l,
            Err(why) => {
                failures.push(format!("[{var}={value}] {why}"));
                continue;
            }
        };
        if out.status.code() != Some(78) {
            failures.push(format!("[{var}={value}] exit {:?}", out.status.code()));
        }
        for piece in *says {
            if !line.contains(piece) {
                failures.push(format!("[{var}={value}] {piece:?} missing from {line:?}"));
            }
        }
        // Not a file position: the file's own line 2 is fine.
        if line.contains(&format!("{}:2:", env.config_path().display())) {
            failures.push(format!("[{var}={value}] blames the file: {line:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn valid_environment_override_takes_effect() {
    let env = TestEnv::new();
    env.config("timezone = \"UTC\"")
        .database(
            "chat",
            &env.path("chat.db"),
            "[database.backup]\nschedule = \"0 4 * * *\"",
        )
        .write();
    let out = env.run_ok(&["schedule", "--count", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("backup chat: \"0 4 * * *\" in UTC"),
        "{}",
        both(&out)
    );
    assert!(text.contains("04:00:00 +00:00"), "{}", both(&out));

    let out = env
        .cmd()
        .args(["schedule", "--count", "1"])
        .env("LITEKEEPER__DAEMON__TIMEZONE", "Asia/Tokyo")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    // The zone comes from the variable; the rest of the file is still there.
    assert!(
        text.contains("backup chat: \"0 4 * * *\" in Asia/Tokyo"),
        "{}",
        both(&out)
    );
    assert!(
        text.contains("04:00:00 +09:00") && text.contains("19:00:00 UTC"),
        "{}",
        both(&out)
    );
}

#[test]
fn missing_config_file_exits_78_naming_the_path_once() {
    let env = TestEnv::new();
    // No config written.
    let line = config_error(&env, &["check"]);
    assert_eq!(
        line,
        format!(
            "litekeeper: error: {}: cannot read the configuration file: No such file or \
             directory (os error 2) (create it from config/litekeeper.toml, or pass -c FILE)",
            env.config_path().display()
        )
    );

    // A directory where the file should be.
    std::fs::create_dir(env.config_path()).unwrap();
    let line = config_error(&env, &["check"]);
    assert!(
        line.contains(&format!(
            "{}: the configuration must be a regular file, and this is a directory",
            env.config_path().display()
        )),
        "{line}"
    );
}

#[test]
fn config_errors_stop_every_command_with_78() {
    let env = TestEnv::new();
    env.write_config("[daemon]\nbusy_timeout = \"5x\"\n");
    for args in [
        &["check"][..],
        &["schedule"][..],
        &["status"][..],
        &["run", "chat", "backup"][..],
        &["backups", "list"][..],
    ] {
        let line = config_error(&env, args);
        assert!(
            line.contains(&format!(
                "{}:2:16: daemon.busy_timeout:",
                env.config_path().display()
            )),
            "{args:?}: {line}"
        );
    }
}
