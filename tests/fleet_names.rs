//! Fleets against hostile file names and a hostile file system: a member's name and every
//! template expansion stay below the template's fixed directory, a fleet never leaves its
//! root (no symlinked directory is entered, a file swapped for a symlink after the scan is
//! refused), two files that would share a member name are both refused and reported, and
//! what a scan skips is logged once.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use litekeeper::lock;
use rusqlite::Connection;

use crate::util::{both, set_age, TestEnv};

fn make_db(path: &Path, sql: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let c = Connection::open(path).unwrap();
    c.execute_batch(sql).unwrap();
}

fn journal_mode(path: &Path) -> String {
    Connection::open(path)
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap()
}

/// Every file below `dir`, relative to it, sorted (symlinks not followed).
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn status_check(env: &TestEnv) -> (Option<i32>, String) {
    let o = env.cmd().args(["status", "--check"]).output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn a_stem_of_dots_never_reaches_the_parent_directory() {
    let env = TestEnv::new();
    let tenants = env.path("tenants");
    // `...db` has the stem `..`: `uploads/{stem}` would be `data`, `bk/inner/{stem}` `bk`.
    make_db(
        &tenants.join("...db"),
        "CREATE TABLE file(id TEXT); INSERT INTO file VALUES ('c1');",
    );
    make_db(
        &tenants.join("good.db"),
        "CREATE TABLE file(id TEXT); INSERT INTO file VALUES ('c1');",
    );
    let data = env.path("data");
    std::fs::create_dir_all(data.join("uploads/good")).unwrap();
    std::fs::write(data.join("c9_precious.txt"), "precious").unwrap();
    set_age(
        &data.join("c9_precious.txt"),
        Duration::from_secs(3 * 86400),
    );
    std::fs::write(data.join("uploads/good/c8_orphan.txt"), "x").unwrap();
    set_age(
        &data.join("uploads/good/c8_orphan.txt"),
        Duration::from_secs(3 * 86400),
    );
    std::fs::create_dir_all(env.path("bk/inner")).unwrap();
    env.write_config(&format!(
        "{}[[database]]\nname = \"t-{{stem}}\"\npath = \"{}/*.db\"\n\
         [database.prune]\nmax_fraction = 1.0\n[[database.prune.files]]\ndir = \"{}/uploads/{{stem}}\"\n\
         pattern = '^(?P<id>c[0-9]+)_'\nreferenced_by = \"SELECT id FROM file\"\nmin_age = \"1d\"\n\
         [database.backup]\ndir = \"{}/inner/{{stem}}\"\n",
        env.daemon_section(""),
        tenants.display(),
        data.display(),
        env.path("bk").display(),
    ));
    for job in ["prune", "backup"] {
        let o = env.cmd().args(["run", "t", job]).output().unwrap();
        // The good member ran; the file with the stem `..` is no member.
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("...db"),
            "the refused file is not named: {}",
            both(&o)
        );
    }
    assert_eq!(
        std::fs::read_to_string(data.join("c9_precious.txt")).unwrap(),
        "precious",
        "prune deleted a file in the parent of uploads/"
    );
    assert!(!data.join("uploads/good/c8_orphan.txt").exists());
    let bk = tree(&env.path("bk"));
    assert!(
        bk.iter()
            .all(|f| f == "inner" || f == "inner/good" || f.starts_with("inner/good/")),
        "a backup landed outside bk/inner/<member>: {bk:?}"
    );
    assert!(
        bk.contains(&"inner/good/manifest.json".to_string()),
        "{bk:?}"
    );
    let (code, out) = status_check(&env);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("...db"), "{out}");
}

#[test]
fn a_symlinked_directory_is_not_part_of_the_fleet() {
    let env = TestEnv::new();
    make_db(&env.path("tenants/alice/alice.db"), "CREATE TABLE t(x);");
    make_db(&env.path("victim/bob.db"), "CREATE TABLE secret(x);");
    symlink(env.path("victim"), env.path("tenants/mallory")).unwrap();
    env.write_config(&format!(
        "{}[[database]]\nname = \"t-{{stem}}\"\npath = \"{}/*/*.db\"\n[database.backup]\ndir = \"{}/{{name}}\"\n",
        env.daemon_section(""),
        env.path("tenants").display(),
        env.path("bk").display(),
    ));
    let names = env.status_databases();
    assert_eq!(names, ["t-alice"]);
    let o = env.run_ok(&["run", "t", "backup"]);
    assert!(!env.path("bk/t-bob").exists());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("mallory"),
        "the skipped symlink is not logged: {}",
        both(&o)
    );
}

/// Start `run NAME backup --wait` while the member's lock is held, let `change` act on the
/// file system after the run has scanned the fleet, then release the lock.
fn run_after_scan(env: &TestEnv, name: &str, change: impl FnOnce()) -> std::process::Output {
    let held = lock::try_acquire(&env.path("locks"), name, "test").unwrap();
    let err = env.path("run.err");
    let child = env
        .std_cmd()
        .args(["run", name, "backup", "--wait", "30s"])
        .env("LITEKEEPER_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    // The run has loaded (scanned) the fleet once it says it started: it now waits for the
    // lock.
    let start = Instant::now();
    while !std::fs::read_to_string(&err)
        .unwrap()
        .contains(": started (cli)")
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "run never started: {}",
            std::fs::read_to_string(&err).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(150));
    change();
    drop(held);
    let mut o = child.wait_with_output().unwrap();
    o.stderr = std::fs::read(&err).unwrap();
    o
}

fn swap_config(env: &TestEnv, pattern: &str) {
    env.write_config(&format!(
        "{}[[database]]\nname = \"t-{{stem}}\"\npath = \"{}/{pattern}\"\n[database.backup]\ndir = \"{}/{{name}}\"\n",
        env.daemon_section(""),
        env.path("tenants").display(),
        env.path("bk").display(),
    ));
}

#[test]
fn a_member_swapped_for_a_symlink_after_the_scan_is_refused() {
    let env = TestEnv::new();
    make_db(
        &env.path("tenants/alice.db"),
        "CREATE TABLE t(x); INSERT INTO t VALUES ('alice');",
    );
    let victim = env.path("victim/secret.db");
    make_db(
        &victim,
        "CREATE TABLE secret(x); INSERT INTO secret VALUES ('root only');",
    );
    swap_config(&env, "*.db");
    let o = run_after_scan(&env, "t-alice", || {
        std::fs::rename(env.path("tenants/alice.db"), env.path("alice.moved")).unwrap();
        symlink(&victim, env.path("tenants/alice.db")).unwrap();
    });
    assert_ne!(o.status.code(), Some(0), "{}", both(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("symlink")
            || String::from_utf8_lossy(&o.stdout).contains("symlink"),
        "{}",
        both(&o)
    );
    assert_eq!(journal_mode(&victim), "delete", "the victim was written to");
    assert!(tree(&env.path("bk/t-alice"))
        .iter()
        .all(|f| !f.ends_with(".db")));
}

#[test]
fn a_member_whose_directory_is_swapped_for_a_symlink_is_refused() {
    let env = TestEnv::new();
    make_db(
        &env.path("tenants/alice/main.db"),
        "CREATE TABLE t(x); INSERT INTO t VALUES ('alice');",
    );
    let victim = env.path("victim/main.db");
    make_db(
        &victim,
        "CREATE TABLE secret(x); INSERT INTO secret VALUES ('root only');",
    );
    env.write_config(&format!(
        "{}[[database]]\nname = \"t-{{stem}}\"\npath = \"{}/*/main.db\"\n[database.backup]\ndir = \"{}/{{name}}\"\n",
        env.daemon_section(""),
        env.path("tenants").display(),
        env.path("bk").display(),
    ));
    // Member names come from the file's stem: one member "t-main".
    let o = run_after_scan(&env, "t-main", || {
        std::fs::rename(env.path("tenants/alice"), env.path("alice.moved")).unwrap();
        symlink(env.path("victim"), env.path("tenants/alice")).unwrap();
    });
    assert_ne!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(journal_mode(&victim), "delete", "the victim was written to");
    assert!(tree(&env.path("bk/t-main"))
        .iter()
        .all(|f| !f.ends_with(".db")));
}

#[test]
fn a_member_deleted_after_the_scan_is_gone_not_failed() {
    let env = TestEnv::new();
    make_db(&env.path("tenants/alice.db"), "CREATE TABLE t(x);");
    swap_config(&env, "*.db");
    let o = run_after_scan(&env, "t-alice", || {
        std::fs::remove_file(env.path("tenants/alice.db")).unwrap();
    });
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("gone"), "{}", both(&o));
    let outcome: String = Connection::open(env.path("state/state.db"))
        .unwrap()
        .query_row(
            "SELECT outcome FROM runs WHERE database = 't-alice'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(outcome, "skipped", "{}", both(&o));
}

#[test]
fn two_files_with_one_member_name_are_both_refused_and_reported() {
    let env = TestEnv::new();
    for (file, who) in [
        ("acme.db", "lower"),
        ("ACME.db", "upper"),
        ("a b.db", "space"),
        ("a-b.db", "dash"),
        ("solo.db", "solo"),
    ] {
        make_db(
            &env.path(&format!("tenants/{file}")),
            &format!("CREATE TABLE t(x); INSERT INTO t VALUES ('{who}');"),
        );
    }
    swap_config(&env, "*.db");
    let (code, out) = status_check(&env);
    assert_eq!(code, Some(2), "{out}");
    for file in ["acme.db", "ACME.db", "a b.db", "a-b.db"] {
        assert!(out.contains(file), "{file} not named: {out}");
    }
    assert!(out.contains("CRITICAL"), "{out}");
    // Neither file of a pair is a member: no command acts on either.
    for name in ["t-acme", "t-a-b"] {
        let o = env.cmd().args(["run", name, "backup"]).output().unwrap();
        assert_ne!(o.status.code(), Some(0), "{}", both(&o));
        let o = env
            .cmd()
            .args(["restore", name, "--to"])
            .arg(env.path("out.db"))
            .output()
            .unwrap();
        assert_ne!(o.status.code(), Some(0), "{}", both(&o));
    }
    env.run_ok(&["run", "t", "backup"]);
    assert_eq!(
        tree(&env.path("bk"))
            .iter()
            .filter(|f| !f.contains('/'))
            .count(),
        1
    );
    assert!(env.path("bk/t-solo").exists());
}

/// The daemon logs a collision, a symlink and a directory in the fleet's directory once, not
/// on every tick.
#[test]
fn the_daemon_reports_what_a_scan_skips_once() {
    let env = TestEnv::new();
    make_db(&env.path("tenants/solo.db"), "CREATE TABLE t(x);");
    make_db(&env.path("tenants/acme.db"), "CREATE TABLE t(x);");
    make_db(&env.path("tenants/ACME.db"), "CREATE TABLE t(x);");
    make_db(&env.path("elsewhere/x.db"), "CREATE TABLE t(x);");
    symlink(env.path("elsewhere/x.db"), env.path("tenants/link.db")).unwrap();
    std::fs::create_dir_all(env.path("tenants/dir.db")).unwrap();
    env.write_config(&format!(
        "{}[[database]]\nname = \"t-{{stem}}\"\npath = \"{}/*.db\"\n[database.backup]\nschedule = \"* * * * * *\"\ndir = \"{}/{{name}}\"\n",
        env.daemon_section("timezone = \"UTC\""),
        env.path("tenants").display(),
        env.path("bk").display(),
    ));
    let mut daemon = env.daemon(&[("LITEKEEPER_LOG", "info")]);
    // Wait for a few ticks (runs of the solo member).
    daemon.wait_until("ticks", Duration::from_secs(30), || {
        env.count_runs("database = 't-solo' AND outcome = 'ok'", []) >= 4
    });
    daemon.terminate();
    let text = daemon.log();
    let lines = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(lines("ACME.db"), 1, "{text}");
    assert_eq!(lines("link.db"), 1, "{text}");
    assert_eq!(lines("dir.db"), 1, "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("link.db") && l.contains("WARN")),
        "{text}"
    );
}

/// The member rule, written again here as the test's oracle: the stem of a file that may be a
/// member, and the name it makes with `template`.
fn oracle_stem_ok(stem: &str) -> bool {
    !stem.is_empty()
        && stem != "."
        && stem != ".."
        && !stem.chars().any(char::is_control)
        && !stem.starts_with('-')
        && stem.len() <= 200
}

fn oracle_name(template: &str, stem: &str) -> String {
    template
        .replacen("{stem}", stem, 1)
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_' | '-') => c,
            _ => '-',
        })
        .collect()
}

/// A file name for a message (control characters escaped), as litekeeper shows it.
fn shown(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Random stems: pieces of unicode, dots, spaces, quotes, control characters, dashes,
/// template and glob characters; plus the fixed hard cases (case and separator twins, `..`,
/// 200- and 252-byte stems).
fn random_stems(rng: &mut impl rand::Rng, n: usize) -> Vec<String> {
    const PIECES: &[&str] = &[
        "a",
        "B",
        "z9",
        "acme",
        "\u{e9}",
        "\u{65e5}\u{672c}",
        "\u{1f600}",
        " ",
        "'",
        "\"",
        ".",
        "..",
        "-",
        "_",
        "\n",
        "\t",
        "\u{1}",
        "\u{7f}",
        "|",
        "%",
        "{stem}",
        "{name}",
        "$(x)",
        "*",
        "?",
        "[",
        "\\",
        "e\u{301}",
    ];
    let mut out: Vec<String> = [
        "acme",
        "ACME",
        "Acme",
        "a b",
        "a-b",
        "a.b",
        ".",
        "..",
        "...",
        "-",
        "-rf",
        "-h",
        ".ht",
        "x{name}",
        "caf\u{e9}",
        "cafe\u{301}",
        "a\nb",
        "t",
        "\u{1f600}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    out.push("y".repeat(200));
    out.push("Y".repeat(200)); // a case twin of the 200-byte stem
    out.push("x".repeat(252)); // a 255-byte file name
    while out.len() < n {
        let k = rng.random_range(1..=5);
        let stem: String = (0..k)
            .map(|_| PIECES[rng.random_range(0..PIECES.len())])
            .collect();
        out.push(stem);
        // Now and then a case twin of what came before.
        if rng.random_bool(0.15) {
            let prev = out[rng.random_range(0..out.len())].to_uppercase();
            out.push(prev);
        }
    }
    out
}

/// Random member file names through every template (`{stem}` and `{name}` in a backup
/// directory, `{stem}` in a files rule's directory and in an attachment) and every command:
/// every path written stays below its template's fixed part, nothing outside changes, each
/// collision is reported naming its files, and each member's restore returns its own data.
/// The seed is printed; `FLEET_NAMES_SEED=N` runs one again.
#[test]
fn generated_names_stay_in_their_place() {
    use rand::SeedableRng;
    let seed: u64 = std::env::var("FLEET_NAMES_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("FLEET_NAMES_SEED={seed}");
    eprintln!("FLEET_NAMES_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let env = TestEnv::new();
    let root = env.path("r");
    // Sentinels next to and above every fixed part: nothing may touch them.
    for dir in ["", "bk", "up", "att", "tenants", "other", "bk2"] {
        let d = root.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        let s = d.join("c7_sentinel.txt");
        std::fs::write(&s, "sentinel").unwrap();
        set_age(&s, Duration::from_secs(3 * 86400));
    }
    let outside_before = tree(&root);

    // Fleet "t": tenants/*.db; fleet "other" (bare {stem}): other/*.sqlite, some of whose
    // names are made to collide with fleet t's.
    let mut files: Vec<(&str, String)> = Vec::new(); // (fleet, stem)
    let mut seen = std::collections::HashSet::new();
    for stem in random_stems(&mut rng, 60) {
        let file = format!("{stem}.db");
        if file.len() > 255 || file.contains('/') || file.contains('\0') || !seen.insert(file) {
            continue;
        }
        files.push(("t", stem));
    }
    let firsts: Vec<String> = files.iter().take(12).map(|(_, s)| s.clone()).collect();
    for stem in firsts.iter().map(|s| format!("t-{s}")).chain(
        ["other", "t", "-x", "solo2", "b c", "B-C"]
            .iter()
            .map(|s| s.to_string()),
    ) {
        let file = format!("{stem}.sqlite");
        if file.len() <= 255 && !file.contains('/') {
            files.push(("other", stem));
        }
    }
    for (fleet, stem) in &files {
        let (dir, ext) = if *fleet == "t" {
            ("tenants", "db")
        } else {
            ("other", "sqlite")
        };
        let p = root.join(dir).join(format!("{stem}.{ext}"));
        let c = Connection::open(&p).unwrap();
        // A 255-byte name has no room for `-journal`: no journal file while creating it.
        c.execute_batch(
            "PRAGMA journal_mode = MEMORY; CREATE TABLE t(x); CREATE TABLE file(id TEXT);
             INSERT INTO file VALUES ('c1');",
        )
        .unwrap();
        c.execute("INSERT INTO t VALUES (?1)", [format!("{fleet}/{stem}")])
            .unwrap();
        if *fleet == "t" && oracle_stem_ok(stem) {
            // The attachment and the files-rule directory the templates name.
            Connection::open(root.join("att").join(format!("{stem}.files")))
                .unwrap()
                .execute_batch("CREATE TABLE blob(x);")
                .unwrap();
            let up = root.join("up").join(stem);
            std::fs::create_dir_all(&up).unwrap();
            std::fs::write(up.join("c9_orphan.txt"), "x").unwrap();
            set_age(&up.join("c9_orphan.txt"), Duration::from_secs(3 * 86400));
        }
    }

    // The oracle: which files are members, which names collide.
    let mut by_name: std::collections::BTreeMap<String, Vec<(&str, &str)>> = Default::default();
    for (fleet, stem) in &files {
        let template = if *fleet == "t" { "t-{stem}" } else { "{stem}" };
        let name = oracle_name(template, stem);
        if oracle_stem_ok(stem) && !name.starts_with('-') {
            by_name.entry(name).or_default().push((fleet, stem));
        }
    }
    let members: std::collections::BTreeMap<String, (&str, &str)> = by_name
        .iter()
        .filter(|(n, v)| v.len() == 1 && *n != "t" && *n != "other")
        .map(|(n, v)| (n.clone(), v[0]))
        .collect();
    let collisions: Vec<&Vec<(&str, &str)>> = by_name.values().filter(|v| v.len() > 1).collect();
    assert!(!collisions.is_empty(), "the generator made no collision");

    env.write_config(&format!(
        "{}[[database]]\nname = \"t-{{stem}}\"\npath = \"{r}/tenants/*.db\"\n\
         attach = {{ files = \"{r}/att/{{stem}}.files\" }}\n\
         [database.prune]\nmax_fraction = 1.0\n[[database.prune.files]]\ndir = \"{r}/up/{{stem}}\"\n\
         pattern = '^(?P<id>c[0-9]+)_'\nreferenced_by = \"SELECT id FROM file\"\nmin_age = \"1d\"\n\
         [database.backup]\ndir = \"{r}/bk/{{stem}}/{{name}}\"\n\
         [[database]]\nname = \"{{stem}}\"\npath = \"{r}/other/*.sqlite\"\n\
         [database.backup]\ndir = \"{r}/bk2/{{name}}\"\n",
        env.daemon_section("max_concurrent_jobs = 4"),
        r = root.display(),
    ));

    // status --json: exactly the oracle's members.
    let o = env.cmd().args(["status", "--json"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "seed {seed}: {}", both(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut got: Vec<String> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["database"].as_str().unwrap().to_string())
        .collect();
    got.dedup();
    got.sort();
    let want: Vec<String> = members.keys().cloned().collect();
    assert_eq!(got, want, "seed {seed}: members");

    // Every command, on the whole fleets and on members.
    for args in [
        &["run", "t", "prune"][..],
        &["run", "t", "backup"],
        &["run", "other", "backup"],
        &["check"],
    ] {
        let o = env.cmd().args(args).output().unwrap();
        let code = o.status.code();
        assert!(
            code == Some(0) || (args[0] == "check" && code == Some(1)),
            "seed {seed}: {args:?}: {}",
            both(&o)
        );
        // What the fleet skipped is named, one line each.
        let err = String::from_utf8_lossy(&o.stderr);
        let bad: Vec<&str> = err
            .lines()
            .filter(|l| l.chars().any(|c| c.is_control()))
            .collect();
        assert!(bad.is_empty(), "seed {seed}: {args:?}: {bad:?}");
    }
    for (name, _) in members.iter().take(6) {
        let o = env.cmd().args(["run", name, "vacuum"]).output().unwrap();
        assert!(o.status.code().is_some(), "seed {seed}: {}", both(&o));
    }
    let o = env
        .cmd()
        .args(["backups", "list", "--json"])
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("seed {seed}: backups list --json: {e}: {}", both(&o)));
    assert!(listed.is_object() || listed.is_array(), "seed {seed}");

    // Backups: every file below bk/<stem>/<name>/ or bk2/<name>/ of a member, nothing else.
    for f in tree(&root.join("bk")) {
        if f == "c7_sentinel.txt" {
            continue;
        }
        let mut parts = f.splitn(3, '/');
        let (stem, name) = (parts.next().unwrap(), parts.next());
        let ok = members
            .iter()
            .any(|(n, (fl, s))| *fl == "t" && *s == stem && name.is_none_or(|x| x == n));
        assert!(ok, "seed {seed}: bk/{f:?} belongs to no member");
    }
    for f in tree(&root.join("bk2")) {
        if f == "c7_sentinel.txt" {
            continue;
        }
        let name = f.split('/').next().unwrap();
        assert!(
            members.get(name).is_some_and(|(fl, _)| *fl == "other"),
            "seed {seed}: bk2/{f:?} belongs to no member"
        );
    }
    // Sentinels survived; the orphans of members were pruned, others' were not.
    for dir in ["", "bk", "up", "att", "tenants", "other", "bk2"] {
        assert_eq!(
            std::fs::read_to_string(root.join(dir).join("c7_sentinel.txt"))
                .ok()
                .as_deref(),
            Some("sentinel"),
            "seed {seed}: {dir}/c7_sentinel.txt"
        );
    }
    for (fleet, stem) in &files {
        if *fleet != "t" || !oracle_stem_ok(stem) {
            continue;
        }
        let member = members.values().any(|(f, s)| f == fleet && s == stem);
        assert_eq!(
            !root.join("up").join(stem).join("c9_orphan.txt").exists(),
            member,
            "seed {seed}: up/{stem:?}: pruned iff a member"
        );
    }
    let now = tree(&root);
    for f in &outside_before {
        assert!(now.contains(f), "seed {seed}: {f:?} vanished");
    }

    // Collisions: CRITICAL in status --check, naming every file of each.
    let o = env.cmd().args(["status", "--check"]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(2), "seed {seed}: {out}");
    assert!(out.starts_with("CRITICAL"), "seed {seed}: {out}");
    for group in &collisions {
        let line = out.lines().find(|l| {
            l.contains("CRITICAL")
                && group.iter().all(|(fl, s)| {
                    let ext = if *fl == "t" { "db" } else { "sqlite" };
                    // status --check's Nagios line shows '|' as '¦'.
                    l.contains(&shown(&format!("/{s}.{ext}")).replace('|', "¦"))
                })
        });
        assert!(
            line.is_some(),
            "seed {seed}: collision {group:?} not reported:\n{out}"
        );
    }
    // One problem, one line: no control character reaches the output.
    let bad: Vec<&str> = out
        .lines()
        .filter(|l| l.chars().any(|c| c.is_control()))
        .collect();
    assert!(bad.is_empty(), "seed {seed}: {bad:?}");

    // Restore gives each member its own data.
    let outdir = env.path("restored");
    std::fs::create_dir_all(&outdir).unwrap();
    for (name, (fleet, stem)) in members.iter() {
        let to = outdir.join(format!("{name}.db"));
        let o = env
            .cmd()
            .args(["restore", name, "--to"])
            .arg(&to)
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "seed {seed}: restore {name}: {}",
            both(&o)
        );
        let x: String = Connection::open(&to)
            .unwrap()
            .query_row("SELECT x FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(x, format!("{fleet}/{stem}"), "seed {seed}: restore {name}");
    }
}

/// A directory below a template's fixed part that is a symlink (a tenant's `uploads/alice`
/// pointing elsewhere, a backup directory swapped for a link) is refused when the job would
/// use it: nothing is written or deleted through it.
#[test]
fn a_symlink_below_a_templates_fixed_part_is_refused_at_use() {
    let env = TestEnv::new();
    make_db(
        &env.path("tenants/alice.db"),
        "CREATE TABLE file(id TEXT); INSERT INTO file VALUES ('c1');",
    );
    let victim = env.path("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::create_dir_all(victim.join("files")).unwrap();
    std::fs::write(victim.join("files/c9_precious.txt"), "precious").unwrap();
    set_age(
        &victim.join("files/c9_precious.txt"),
        Duration::from_secs(3 * 86400),
    );
    std::fs::create_dir_all(env.path("up")).unwrap();
    std::fs::create_dir_all(env.path("bk")).unwrap();
    symlink(&victim, env.path("up/alice")).unwrap();
    symlink(&victim, env.path("bk/alice")).unwrap();
    env.write_config(&format!(
        "{}[[database]]\nname = \"t-{{stem}}\"\npath = \"{}/*.db\"\n\
         [database.prune]\nmax_fraction = 1.0\n[[database.prune.files]]\ndir = \"{}/{{stem}}/files\"\n\
         pattern = '^(?P<id>c[0-9]+)_'\nreferenced_by = \"SELECT id FROM file\"\nmin_age = \"1d\"\n\
         [database.backup]\ndir = \"{}/{{stem}}/{{name}}\"\n",
        env.daemon_section(""),
        env.path("tenants").display(),
        env.path("up").display(),
        env.path("bk").display(),
    ));
    for job in ["prune", "backup"] {
        let o = env.cmd().args(["run", "t-alice", job]).output().unwrap();
        assert_ne!(o.status.code(), Some(0), "{job}: {}", both(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("symlink"),
            "{job}: {}",
            both(&o)
        );
    }
    assert_eq!(tree(&victim), ["files", "files/c9_precious.txt"]);
}

/// A name template whose names would all start with '-' is refused at load, naming the key.
#[test]
fn a_name_template_may_not_start_with_a_dash() {
    let env = TestEnv::new();
    make_db(&env.path("tenants/alice.db"), "CREATE TABLE t(x);");
    env.write_config(&format!(
        "{}[[database]]\nname = \"-{{stem}}\"\npath = \"{}/*.db\"\n",
        env.daemon_section(""),
        env.path("tenants").display(),
    ));
    let o = env.cmd().arg("check").output().unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", both(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("database[0].name") || err.contains("name"),
        "{err}"
    );
    assert!(err.contains("not starting with '-'"), "{err}");
}

/// A symlink the operator put above a template's fixed part (`/srv -> /data/srv`) is theirs:
/// the fleet's directory and an attachment's directory may be reached through one.
#[test]
fn an_operators_symlink_above_the_fixed_part_is_followed() {
    let env = TestEnv::new();
    make_db(
        &env.path("real/tenants/alice.db"),
        "CREATE TABLE t(x); INSERT INTO t VALUES ('alice');",
    );
    make_db(&env.path("real/att/alice.files"), "CREATE TABLE blob(x);");
    symlink(env.path("real"), env.path("srv")).unwrap();
    env.write_config(&format!(
        "{}[[database]]\nname = \"t-{{stem}}\"\npath = \"{s}/tenants/*.db\"\n\
         attach = {{ files = \"{s}/att/{{stem}}.files\" }}\n\
         [database.backup]\ndir = \"{}/{{name}}\"\n",
        env.daemon_section(""),
        env.path("bk").display(),
        s = env.path("srv").display(),
    ));
    env.run_ok(&["run", "t-alice", "backup"]);
    assert_eq!(journal_mode(&env.path("real/tenants/alice.db")), "wal");
}
