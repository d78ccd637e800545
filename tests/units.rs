//! `litekeeper systemd-units` and the shipped units, checked by systemd's own tools: every
//! generated `OnCalendar=` gives the same next times in `systemd-analyze calendar` as the
//! daemon's scheduler, every unit passes `systemd-analyze verify` with empty stderr, and every
//! service's `systemd-analyze security --offline=yes` exposure is at most 1.0.

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, TimeZone, Utc};
use litekeeper::schedule::{Schedule, Zone};

use crate::util::{both, TestEnv};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The daemon's own next times (the same code `schedule` and the scheduler use).
fn ours(cron: &str, zone: &Zone, base: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    Schedule::parse(cron).unwrap().upcoming(base, zone, n)
}

/// Each OnCalendar= line's first `n` elapses after `base`, from one `systemd-analyze calendar`
/// call for all of them (a dated line already past has none).
fn systemd_each(specs: &[&str], base: DateTime<Utc>, n: usize) -> Vec<Vec<DateTime<Utc>>> {
    let o = Command::new("systemd-analyze")
        .arg("calendar")
        .arg(format!("--iterations={n}"))
        .arg(format!(
            "--base-time={}",
            base.format("%Y-%m-%d %H:%M:%S UTC")
        ))
        .args(specs)
        .env("TZ", "UTC")
        .env("SYSTEMD_COLORS", "0")
        .output()
        .unwrap();
    assert!(o.status.success(), "{specs:?}: {}", both(&o));
    let mut out: Vec<Vec<DateTime<Utc>>> = Vec::new();
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        let Some((k, v)) = l.trim().split_once(": ") else {
            continue;
        };
        if k == "Normalized form" {
            out.push(Vec::new());
        }
        if k != "Next elapse" && !k.starts_with("Iter.") {
            continue;
        }
        // "Sun 2026-03-29 01:00:00 UTC"; "never" for a dated line already past.
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(
            v.trim().get(4..).unwrap_or(""),
            "%Y-%m-%d %H:%M:%S UTC",
        ) {
            out.last_mut().expect("a block per spec").push(t.and_utc());
        }
    }
    assert_eq!(out.len(), specs.len(), "{}", both(&o));
    out
}

/// The instants at which `zone`'s UTC offset changes in 2026.
fn transitions_2026(zone: &Zone) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    let mut t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let end = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
    while t < end {
        let next = t + chrono::Duration::hours(1);
        if zone.offset_seconds(next) != zone.offset_seconds(t) {
            let (mut lo, mut hi) = (t, next);
            while hi - lo > chrono::Duration::seconds(1) {
                let mid = lo + (hi - lo) / 2;
                if zone.offset_seconds(mid) == zone.offset_seconds(t) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            out.push(hi);
        }
        t = next;
    }
    out
}

/// The daemon's next 400 runs equal the generated timer's (all its OnCalendar= lines merged,
/// as systemd reads them), or the generator refused the expression with a reason. Bases are an
/// ordinary day and an hour before each DST change of the zone, so dense schedules cross it.
#[test]
fn timers_run_when_the_daemon_runs() {
    if !have("systemd-analyze") {
        eprintln!("skipped: systemd-analyze not installed");
        return;
    }
    let cases = [
        "0 0 */2 * MON", // day-of-month with a step, OR a weekday
        "0 0 1-7 * */2", // a range OR a stepped weekday
        "0 2 1-7 * 0",
        "0 2 1,15 * MON",
        "5 0 13 * FRI",
        "30 2 * * *", // in the spring-forward gap in Berlin and New York
        "0 2 * * *",
        "45 1 * * *", // in the repeated hour in New York and on Lord Howe
        "15 2 * * SUN",
        "0,30 1-3 * * *",
        "*/15 * * * *",
        "*/7 2 * * *",
        "0 */2 * * *",
        "*/20 * * * * *",
        "30 4 * * mon-fri",
        "0 9-17/4 * * 6,0",
        "0 0 1 */3 *",
        "0 3 * * 7",
        "@hourly",
        "@daily",
        "@weekly",
        "@monthly",
        "@midnight",
    ];
    let zones = [
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Australia/Lord_Howe",
        "Pacific/Chatham",
    ];
    let n = 400;
    let (mut checked, mut refused) = (0, Vec::new());
    for zone_name in zones {
        let zone = Zone::parse(zone_name).unwrap();
        let mut bases = vec![Utc.with_ymd_and_hms(2026, 1, 10, 7, 13, 0).unwrap()];
        bases.extend(
            transitions_2026(&zone)
                .into_iter()
                .map(|t| t - chrono::Duration::minutes(70)),
        );
        // As generated at the first base (the dated lines reach years ahead).
        let generated: Vec<Result<Vec<String>, String>> = cases
            .iter()
            .map(|cron| timer_lines(&Schedule::parse(cron).unwrap(), &zone, bases[0]))
            .collect();
        for (cron, g) in cases.iter().zip(&generated) {
            if let Err(why) = g {
                assert!(
                    !why.is_empty(),
                    "{cron} in {zone_name}: refused without a reason"
                );
                refused.push(format!("{cron} in {zone_name}: {why}"));
            }
        }
        for (b, &base) in bases.iter().enumerate() {
            // From a base before a DST change only the schedules whose 400 runs from the
            // ordinary base end before it (systemd-analyze takes ~1 ms per zoned iteration).
            let dense = |cron: &str| {
                b == 0
                    || ours(cron, &zone, bases[0], n)
                        .last()
                        .is_some_and(|t| *t < base)
            };
            let specs: Vec<&str> = cases
                .iter()
                .zip(&generated)
                .filter(|(cron, _)| dense(cron))
                .flat_map(|(_, g)| g.iter().flatten())
                .map(String::as_str)
                .collect();
            let mut each = systemd_each(&specs, base, n).into_iter();
            for (cron, g) in cases.iter().zip(&generated) {
                let Ok(lines) = g else { continue };
                if !dense(cron) {
                    continue;
                }
                let mut got: Vec<DateTime<Utc>> =
                    each.by_ref().take(lines.len()).flatten().collect();
                got.sort();
                got.dedup();
                got.truncate(n);
                // chrono-tz, the daemon's zone data, has no DST changes after 2099 (the
                // system's zoneinfo repeats its last rule): compare runs before 2100.
                let end = Utc.with_ymd_and_hms(2100, 1, 1, 0, 0, 0).unwrap();
                got.retain(|t| *t < end);
                let want: Vec<_> = ours(cron, &zone, base, n)
                    .into_iter()
                    .filter(|t| *t < end)
                    .collect();
                assert!(want.len() >= 100, "{cron}: {} runs before 2100", want.len());
                if got != want {
                    let i = got
                        .iter()
                        .zip(&want)
                        .position(|(a, b)| a != b)
                        .unwrap_or(n.min(got.len()));
                    panic!(
                        "cron {cron:?} in {zone_name} from {base}: run #{i} daemon {:?}, timer {:?}\nOnCalendar={lines:#?}",
                        want.get(i),
                        got.get(i),
                    );
                }
                checked += 1;
            }
        }
    }
    eprintln!("{checked} checked; refused: {refused:#?}");
    assert!(refused.is_empty(), "refused: {refused:#?}");
    assert!(checked >= 23 * 5, "{checked}");
}

/// The timer lines the generator writes for a schedule, generated at `now`.
fn timer_lines(s: &Schedule, zone: &Zone, now: DateTime<Utc>) -> Result<Vec<String>, String> {
    litekeeper::units::timer_lines(s, zone, now)
}

fn write_units(env: &TestEnv, user: bool) -> PathBuf {
    let db = env.sqlite(
        "app/chat.db",
        "PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS t(x);",
    );
    env.config("timezone = \"Europe/Berlin\"").database("chat", &db, &format!(
                "[database.backup]\nschedule = \"0 2 * * *\"\njitter = \"30m\"\ndir = \"{}\"\n[database.vacuum]\nschedule = \"0 3 1,15 * SUN\"\n[database.prune]\nschedule = \"*/10 * * * *\"\n[[database.prune.rule]]\ntable = \"t\"\nwhere = \"x IS NULL\"",
                env.path("backups").display()
            )).write();
    let out = env.path(if user { "user-units" } else { "units" });
    let mut cmd = env.cmd();
    cmd.args(["systemd-units", "--with-units", "--out"])
        .arg(&out);
    if user {
        cmd.arg("--user");
    }
    let o = cmd.output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    out
}

#[test]
fn generated_drop_ins_carry_the_schedule_jitter_and_paths() {
    let env = TestEnv::new();
    let out = write_units(&env, false);
    let read = |p: &str| std::fs::read_to_string(out.join(p)).unwrap();
    let backup = read("litekeeper-backup@chat.timer.d/schedule.conf");
    assert!(
        backup.contains("OnCalendar=\nOnCalendar=*-*-* 02:00:00 Europe/Berlin\n"),
        "{backup}"
    );
    assert!(backup.contains("RandomizedDelaySec=1800s"), "{backup}");
    let vacuum = read("litekeeper-vacuum@chat.timer.d/schedule.conf");
    assert!(
        vacuum.contains("OnCalendar=*-*-01,15 03:00:00 Europe/Berlin\nOnCalendar=Sun *-*-* 03:00:00 Europe/Berlin\n"),
        "{vacuum}"
    );
    let paths = read("litekeeper.service.d/paths.conf");
    for p in ["app", "backups", "state", "locks"] {
        assert!(
            paths.contains(&format!("ReadWritePaths=\"-{}\"\n", env.path(p).display())),
            "{p}: {paths}"
        );
    }
    let cfg = read("litekeeper-backup@.service.d/config.conf");
    assert!(cfg.contains(&format!(
        "Environment=\"LITEKEEPER_CONFIG={}\"",
        env.config_path().display()
    )));
    let exe = assert_cmd::cargo::cargo_bin("litekeeper");
    assert!(
        read("litekeeper.service").contains(&format!("ExecStart=:\"{}\" daemon", exe.display()))
    );
    // User units: no User=, sandboxed through a user namespace, paths opened by the drop-in.
    let user = write_units(&env, true);
    let svc = std::fs::read_to_string(user.join("litekeeper.service")).unwrap();
    assert!(!svc.contains("User="), "{svc}");
    assert!(svc.contains("PrivateUsers=yes"), "{svc}");
    assert!(user.join("litekeeper.service.d/paths.conf").exists());
    assert!(user
        .join("litekeeper-backup@chat.timer.d/schedule.conf")
        .exists());
}

/// Run a systemd-analyze subcommand in a private mount namespace with an empty /run/systemd,
/// so it does not try to talk to (or complain about) the host's manager.
fn analyze(args: &[&str], runtime_dir: &Path) -> std::process::Output {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "mount -t tmpfs tmpfs /run/systemd 2>/dev/null || true; exec systemd-analyze {}",
        quoted.join(" ")
    );
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "")
        .env("XDG_RUNTIME_DIR", runtime_dir)
        .output()
        .unwrap()
}

fn unit_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let s = p.to_string_lossy();
            (s.ends_with(".service") || s.ends_with(".timer")) && p.is_file()
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_unit_verifies_and_services_are_hardened() {
    if !have("systemd-analyze") || !crate::util::is_root() {
        eprintln!("skipped: needs root and systemd-analyze");
        return;
    }
    let env = TestEnv::new();
    // The generated set is the shipped units with ExecStart= pointing at the built binary
    // (the shipped /usr/bin/litekeeper does not exist on a build machine), plus drop-ins.
    let system = write_units(&env, false);
    let user = write_units(&env, true);
    let rt = env.path("xdg-runtime");
    std::fs::create_dir_all(&rt).unwrap();
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd");
    for name in unit_files(&shipped) {
        let name = name.file_name().unwrap().to_string_lossy().into_owned();
        assert!(system.join(&name).is_file(), "{name} not generated");
    }
    for (dir, is_user) in [(&system, false), (&user, true)] {
        for unit in unit_files(dir) {
            let name = unit.file_name().unwrap().to_string_lossy().into_owned();
            // Templates are verified through an instance beside them (drop-ins included).
            let target = if name.contains("@.") {
                let inst = dir.join(name.replace("@.", "@chat."));
                std::fs::copy(&unit, &inst).unwrap();
                inst
            } else {
                unit.clone()
            };
            let mut args = vec!["verify", "--man=no"];
            if is_user {
                args.push("--user");
            }
            let t = target.to_string_lossy().into_owned();
            args.push(&t);
            let o = analyze(&args, &rt);
            assert!(
                o.status.success() && String::from_utf8_lossy(&o.stderr).trim().is_empty(),
                "verify {}: {}",
                target.display(),
                both(&o)
            );
            if name.ends_with(".service") {
                let mut sargs = vec!["security", "--offline=yes"];
                if is_user {
                    sargs.push("--user");
                }
                sargs.push(&t);
                let o = analyze(&sargs, &rt);
                let out = String::from_utf8_lossy(&o.stdout);
                let score: f64 = out
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("→ Overall exposure level for "))
                    .and_then(|l| l.split(": ").nth(1))
                    .and_then(|l| l.split_whitespace().next())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("no score for {}: {}", target.display(), both(&o)));
                assert!(
                    score <= 1.0,
                    "{}: exposure {score} > 1.0\n{out}",
                    target.display()
                );
            }
        }
    }
}

#[test]
fn network_is_opened_only_for_health_pings() {
    let env = TestEnv::new();
    let out = write_units(&env, false);
    assert!(!out.join("litekeeper.service.d/network.conf").exists());
    let cfg = std::fs::read_to_string(env.config_path()).unwrap().replace(
        "jitter = \"30m\"",
        "jitter = \"30m\"\nping = \"https://hc-ping.example/abc\"",
    );
    std::fs::write(env.config_path(), cfg).unwrap();
    let o = env.systemd_units(&out, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let net =
        std::fs::read_to_string(out.join("litekeeper-backup@.service.d/network.conf")).unwrap();
    assert!(
        net.contains("PrivateNetwork=no") && net.contains("AF_INET6"),
        "{net}"
    );
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("\"{escaped}\"")
}

/// Directory names systemd would split, unquote, expand or cut short if written as they are.
pub(crate) const HOSTILE_DIRS: [&str; 9] = [
    "a b",
    "q\"uote",
    "pct%d%h%%",
    "back\\slash",
    "ünï €",
    "dollar$HOME ${X}",
    "sq'x",
    "trail ",
    "semi;colon #hash",
];

/// A configuration `conf file.toml` in `env` with one database (`my-db`, a backup job) per
/// hostile backup directory, and the units written from it by `litekeeper -c "conf
/// file.toml" systemd-units --with-units` run in `env`'s directory. Returns the unit
/// directory and the backup directories.
pub(crate) fn hostile_units(env: &TestEnv, out: &Path) -> Vec<PathBuf> {
    let mut text = env.daemon_section("timezone = \"Europe/Berlin\"");
    let mut dirs = Vec::new();
    for (i, name) in HOSTILE_DIRS.iter().enumerate() {
        let dir = env.path("bk").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let db = env.sqlite(&format!("app/h{i}.db"), "CREATE TABLE IF NOT EXISTS t(x);");
        let db_name = if i == 0 {
            "my-db".to_string()
        } else {
            format!("h{i}")
        };
        text.push_str(&format!(
            "[[database]]\nname = \"{db_name}\"\npath = {}\n[database.backup]\nschedule = \"30 2 * * *\"\ndir = {}\n",
            toml_str(&db.to_string_lossy()),
            toml_str(&dir.to_string_lossy())
        ));
        dirs.push(dir);
    }
    std::fs::write(env.path("conf file.toml"), text).unwrap();
    let o = Command::new(assert_cmd::cargo::cargo_bin("litekeeper"))
        .current_dir(env.path(""))
        .args([
            "-c",
            "conf file.toml",
            "systemd-units",
            "--with-units",
            "--out",
        ])
        .arg(out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    dirs
}

/// Undo systemd's quoting of one list property as `systemctl show` prints it
/// (`-/a "-/b c" "-/d\"e"`).
pub(crate) fn unquote_list(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut cur, mut quoted, mut any) = (String::new(), false, false);
    let mut chars = text.trim().chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            '\\' => cur.extend(chars.next()),
            ' ' if !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[test]
fn hostile_paths_are_written_quoted_and_verify_clean() {
    let env = TestEnv::new();
    let out = env.path("units");
    let dirs = hostile_units(&env, &out);
    let paths = std::fs::read_to_string(out.join("litekeeper.service.d/paths.conf")).unwrap();
    // One ReadWritePaths= per directory, each one quoted word that reads back as the path.
    let lines: Vec<&str> = paths
        .lines()
        .filter_map(|l| l.strip_prefix("ReadWritePaths="))
        .collect();
    for d in &dirs {
        let want = format!("-{}", d.display()).replace('%', "%%");
        assert!(
            lines.iter().any(|l| unquote_list(l) == [want.clone()]),
            "{want:?} not in {paths}"
        );
    }
    // The relative `-c "conf file.toml"` reaches the services absolute and whole.
    let cfg =
        std::fs::read_to_string(out.join("litekeeper-backup@.service.d/config.conf")).unwrap();
    assert!(
        cfg.contains(&format!(
            "Environment=\"LITEKEEPER_CONFIG={}\"\n",
            env.path("conf file.toml").display()
        )),
        "{cfg}"
    );
    // Names go to timers as they are and come back verbatim with %i after `--`.
    assert!(out
        .join("litekeeper-backup@my-db.timer.d/schedule.conf")
        .is_file());
    let svc = std::fs::read_to_string(out.join("litekeeper-backup@.service")).unwrap();
    assert!(svc.contains(" run -- %i backup\n"), "{svc}");
    if !have("systemd-analyze") || !crate::util::is_root() {
        eprintln!("verify skipped: needs root and systemd-analyze");
        return;
    }
    let rt = env.path("xdg-runtime");
    std::fs::create_dir_all(&rt).unwrap();
    for (unit, inst) in [
        ("litekeeper.service", None),
        (
            "litekeeper-backup@.service",
            Some("litekeeper-backup@my-db.service"),
        ),
        (
            "litekeeper-backup@.timer",
            Some("litekeeper-backup@my-db.timer"),
        ),
    ] {
        let target = match inst {
            Some(i) => {
                std::fs::copy(out.join(unit), out.join(i)).unwrap();
                out.join(i)
            }
            None => out.join(unit),
        };
        let t = target.to_string_lossy().into_owned();
        let o = analyze(&["verify", "--man=no", &t], &rt);
        assert!(
            o.status.success() && String::from_utf8_lossy(&o.stderr).trim().is_empty(),
            "verify {t}: {}",
            both(&o)
        );
    }
}

#[test]
fn control_characters_in_paths_are_refused_naming_the_key() {
    let env = TestEnv::new();
    let db = env.sqlite("app/chat.db", "CREATE TABLE IF NOT EXISTS t(x);");
    let evil = format!(
        "{}/bk\n[Service]\nExecStartPre=+/bin/touch /tmp/pwned",
        env.path("").display()
    );
    env.write_config(&format!(
        "{}[[database]]\nname = \"chat\"\npath = {}\n[database.backup]\nschedule = \"0 2 * * *\"\ndir = {}\n",
        env.daemon_section(""),
        toml_str(&db.to_string_lossy()),
        toml_str(&evil)
    ));
    let out = env.path("units");
    let refused = |vars: &[(&str, &str)], key: &str| {
        let o = env.systemd_units(&out, vars);
        assert_eq!(o.status.code(), Some(78), "{}", both(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(key) && err.contains("control character"),
            "{err}"
        );
        assert!(!out.join("litekeeper.service.d/paths.conf").exists());
    };
    refused(&[], "backup.dir");
    // The same through the environment.
    env.write_config(&format!(
        "{}[[database]]\nname = \"chat\"\npath = {}\n",
        env.daemon_section(""),
        toml_str(&db.to_string_lossy())
    ));
    let metrics_file = format!("{evil}/m.prom");
    refused(
        &[("LITEKEEPER__DAEMON__METRICS_FILE", &metrics_file)],
        "metrics_file",
    );
}

/// The shipped timer services pass the instance after `--`: a database called `-h` is looked
/// up (and not found), never read as an option that prints help and exits 0.
#[test]
fn timer_services_pass_the_name_after_double_dash() {
    let env = TestEnv::new();
    let db = env.sqlite("app/chat.db", "CREATE TABLE IF NOT EXISTS t(x);");
    env.config("").database("chat", &db, "").write();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd");
    for unit in [
        "litekeeper-backup@.service",
        "user/litekeeper-prune@.service",
    ] {
        let text = std::fs::read_to_string(root.join(unit)).unwrap();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart=:/usr/bin/litekeeper "))
            .unwrap_or_else(|| panic!("{unit}: no ExecStart=:/usr/bin/litekeeper"));
        let args: Vec<&str> = line
            .split_whitespace()
            .map(|a| if a == "%i" { "-h" } else { a })
            .collect();
        let o = env.cmd().args(&args).output().unwrap();
        let out = both(&o);
        assert_ne!(o.status.code(), Some(0), "{unit}: {args:?}: {out}");
        assert!(
            !out.contains("Usage"),
            "{unit}: {args:?} printed help: {out}"
        );
        assert!(out.contains("-h"), "{unit}: {out}");
    }
}
