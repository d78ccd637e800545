//! A hostile probe of off-site copies, drills and incremental chains: a remote manifest is
//! untrusted input (names with `..`, `/`, absolute paths, objects litekeeper did not make), and
//! the operator's worst days (files cut short or damaged by hand) lose no data and write
//! nothing outside the staging or backup directory.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::incremental::{insert, setup};
use crate::offsite::fixture::{chat_db, config, keygen};
use crate::util::{both, query_i64, TestEnv};

/// `chat` backed up to a `file://` remote `remote/` with incremental chains and `remote_keep`;
/// `fulls` full backups (a second apart) and one delta stored there. The identity file.
pub(crate) fn chain_on_file_remote(env: &TestEnv, remote_keep: &str, fulls: u32) -> PathBuf {
    let (identity, public) = keygen(env);
    let db = chat_db(env);
    std::fs::create_dir(env.path("remote")).unwrap();
    let body = format!(
        "url = \"file://{}\"\nencrypt_to = [\"{public}\"]\n",
        env.path("remote").display()
    );
    config(
        env,
        &db,
        &body,
        &format!("keep = {{ last = 5 }}\nremote_keep = {{ {remote_keep} }}\nincremental = {{ keep = \"7d\" }}"),
    );
    for i in 0..fulls {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        env.run_ok(&["run", "chat", "backup"]);
    }
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("INSERT INTO m(body) VALUES ('after the full')", [])
        .unwrap();
    env.run_ok(&["run", "chat", "incremental"]);
    identity
}

fn manifest_path(env: &TestEnv) -> PathBuf {
    env.path("remote/chat/litekeeper-manifest.json")
}

pub(crate) fn remote_manifest(env: &TestEnv) -> Value {
    serde_json::from_slice(&std::fs::read(manifest_path(env)).unwrap()).unwrap()
}

pub(crate) fn tamper(env: &TestEnv, edit: impl FnOnce(&mut Value)) {
    let mut m = remote_manifest(env);
    edit(&mut m);
    std::fs::write(manifest_path(env), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// Every file below `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
        }
    }
    out.sort();
    out
}

pub(crate) fn restore_from(
    env: &TestEnv,
    identity: &Path,
    extra: &[&str],
    to: &Path,
) -> std::process::Output {
    let id = identity.display().to_string();
    let mut args = vec!["--from", "offsite", "--identity", id.as_str()];
    args.extend_from_slice(extra);
    let mut all = vec!["chat"];
    all.extend(args);
    env.restore_to(&all, to)
}

/// A remote manifest whose names lead out of the staging directory (a delta's `local_file`
/// with `../..`, a copy's `object` with `../..`, an absolute `local_file`): restore refuses
/// it with exit 65 naming the entry, and no file appears outside the staging directory.
#[test]
fn remote_manifest_names_never_leave_the_staging_dir() {
    let env = TestEnv::new();
    let identity = chain_on_file_remote(&env, "last = 1", 1);
    let pristine = std::fs::read(manifest_path(&env)).unwrap();
    let outside = env.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let abs = outside.join("abs-20260101-000000.delta");
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "delta local_file ../..",
            Box::new(|m: &mut Value| {
                m["deltas"][0]["local_file"] = "../../outside/up-20260101-000000.delta".into()
            }),
        ),
        (
            "delta local_file absolute",
            Box::new(move |m: &mut Value| {
                m["deltas"][0]["local_file"] = abs.display().to_string().into()
            }),
        ),
        (
            "copy object ../..",
            Box::new(|m: &mut Value| m["copies"][0]["object"] = "../../outside/obj".into()),
        ),
        (
            "delta base with a slash",
            Box::new(|m: &mut Value| m["deltas"][0]["base"] = "../chat-20260101-000000.db".into()),
        ),
        (
            "copy local_file with a newline",
            Box::new(|m: &mut Value| {
                m["copies"][0]["local_file"] = "chat\n-20260101-000000.db".into()
            }),
        ),
    ];
    for (what, edit) in cases {
        std::fs::write(manifest_path(&env), &pristine).unwrap();
        tamper(&env, edit);
        let to = env.path("restored.db");
        let o = restore_from(&env, &identity, &["--at", "latest"], &to);
        assert_eq!(o.status.code(), Some(65), "{what}: {}", both(&o));
        assert!(
            both(&o).contains("litekeeper-manifest.json"),
            "{what}: the manifest is named: {}",
            both(&o)
        );
        assert!(!to.exists(), "{what}: nothing restored");
        assert_eq!(tree(&outside), Vec::<String>::new(), "{what}");
        let staging: Vec<String> = crate::util::names(&env.path("state"))
            .into_iter()
            .filter(|n| n.starts_with("remote-restore-"))
            .collect();
        assert!(staging.is_empty(), "{what}: {staging:?}");
        assert!(
            !tree(env.dir.path())
                .iter()
                .any(|f| f.contains(".download") || f.ends_with("20260101-000000.delta")),
            "{what}: {:?}",
            tree(env.dir.path())
        );
    }
    // The untampered manifest still restores the point.
    std::fs::write(manifest_path(&env), &pristine).unwrap();
    let to = env.path("restored.db");
    let o = restore_from(&env, &identity, &["--at", "latest"], &to);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(query_i64(&to, "SELECT count(*) FROM m"), 501);
}

/// Remote retention deletes only copies litekeeper made: a manifest entry naming an object
/// that is not the copy of its `local_file` (an operator's file under the prefix) is refused,
/// and the object stays.
#[test]
fn remote_retention_never_deletes_an_object_litekeeper_did_not_name() {
    let env = TestEnv::new();
    let _identity = chain_on_file_remote(&env, "last = 1", 1);
    std::fs::write(env.path("remote/chat/notes.txt"), b"the operator's").unwrap();
    tamper(&env, |m| {
        let mut fake = m["copies"][0].clone();
        fake["object"] = "notes.txt".into();
        fake["local_file"] = "chat-20200101-000000.db".into();
        fake["backup_time"] = "2020-01-01T00:00:00Z".into();
        m["copies"].as_array_mut().unwrap().insert(0, fake);
    });
    let o = env.output(&["run", "chat", "backup"]);
    assert_ne!(o.status.code(), Some(0), "{}", both(&o));
    assert!(
        both(&o).contains("notes.txt") && both(&o).contains("litekeeper-manifest.json"),
        "{}",
        both(&o)
    );
    assert_eq!(
        std::fs::read(env.path("remote/chat/notes.txt")).unwrap(),
        b"the operator's"
    );
}

/// `chat` at `live` (`rows` rows) backed up into `backups/`, drilled into `scratch`.
fn drill_setup(env: &TestEnv, live: &str, scratch: &Path) -> PathBuf {
    let db = env.sqlite(
        live,
        "CREATE TABLE m(id INTEGER PRIMARY KEY, body TEXT);
         INSERT INTO m(body) VALUES ('one'), ('two'), ('three');",
    );
    env.config("")
        .database(
            "chat",
            &db,
            &format!(
                "[database.backup]\ndir = \"{}\"\n[database.drill]\nscratch_dir = \"{}\"\n",
                env.path("backups").display(),
                scratch.display()
            ),
        )
        .write();
    env.run_ok(&["run", "chat", "backup"]);
    db
}

/// A drill's scratch directory is `scratch_dir/NAME`; when something that is not a drill's
/// scratch copy is already there (the live database file `app/chat` with `scratch_dir = app`,
/// or the app's directory `chat/` with `scratch_dir` its parent) the drill refuses, naming
/// it, and removes nothing.
#[test]
fn a_drill_never_removes_what_is_not_its_scratch_copy() {
    let env = TestEnv::new();
    // The live database is `app/chat`: scratch_dir/NAME is the live file.
    let db = drill_setup(&env, "app/chat", &env.path("app"));
    let o = env.output(&["drill", "chat"]);
    assert_ne!(o.status.code(), Some(0), "{}", both(&o));
    assert!(both(&o).contains(&db.display().to_string()), "{}", both(&o));
    assert_eq!(
        query_i64(&db, "SELECT count(*) FROM m"),
        3,
        "the live database"
    );

    // The app's directory `srv/chat/` is scratch_dir/NAME.
    let env = TestEnv::new();
    let db = drill_setup(&env, "srv/chat/chat.db", &env.path("srv"));
    std::fs::write(env.path("srv/chat/uploads.bin"), b"user data").unwrap();
    let o = env.output(&["drill", "chat"]);
    assert_ne!(o.status.code(), Some(0), "{}", both(&o));
    assert!(
        both(&o).contains(&env.path("srv/chat").display().to_string()),
        "{}",
        both(&o)
    );
    assert_eq!(
        query_i64(&db, "SELECT count(*) FROM m"),
        3,
        "the live database"
    );
    assert_eq!(
        std::fs::read(env.path("srv/chat/uploads.bin")).unwrap(),
        b"user data"
    );

    // A scratch directory a killed drill left (its mark inside) is removed and the drill runs.
    let env = TestEnv::new();
    let db = drill_setup(&env, "data/chat.db", &env.path("scratch"));
    env.run_ok(&["drill", "chat"]);
    assert_eq!(query_i64(&db, "SELECT count(*) FROM m"), 3);
}

fn ids(db: &Path) -> Vec<i64> {
    crate::util::query_ids(db, "SELECT id FROM n ORDER BY id")
}

fn local_deltas(dir: &Path) -> Vec<Value> {
    let m: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    m["deltas"].as_array().cloned().unwrap_or_default()
}

/// `restore app --at latest --to NAME`: its output and the path.
fn restore_latest(env: &TestEnv, name: &str) -> (std::process::Output, PathBuf) {
    let to = env.path(name);
    (env.restore_to(&["app", "--at", "latest"], &to), to)
}

/// The newest delta cut short by hand and the page-hash index of the point before it
/// damaged (bytes of its hashes flipped): the next incremental continues from the last good
/// point, and the point it makes restores the live rows exactly.
#[test]
fn a_cut_delta_and_a_damaged_index_never_make_a_point_that_restores_wrongly() {
    let (env, db, dir) = setup("7d", "keep = { last = 5 }");
    insert(&db, 1, 200);
    env.run_ok(&["run", "app", "backup"]);
    insert(&db, 1000, 1050);
    env.run_ok(&["run", "app", "incremental"]);
    // The index of the newest point: flip bytes in its hashes (header intact).
    let first = local_deltas(&dir)[0]["file"].as_str().unwrap().to_string();
    let index = dir.join(format!("{first}.pages"));
    let mut bytes = std::fs::read(&index).unwrap();
    assert!(bytes.len() > 84 + 32, "{} bytes", bytes.len());
    for b in &mut bytes[84..] {
        *b ^= 0x5a;
    }
    std::fs::write(&index, &bytes).unwrap();
    insert(&db, 2000, 2050);
    env.run_ok(&["run", "app", "incremental"]);
    let (o, to) = restore_latest(&env, "after-index.db");
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(ids(&to), ids(&db));

    // The newest delta cut in half by hand.
    let second = local_deltas(&dir)[1]["file"].as_str().unwrap().to_string();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(&second))
        .unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len / 2).unwrap();
    drop(f);
    insert(&db, 3000, 3050);
    env.run_ok(&["run", "app", "incremental"]);
    let newest = local_deltas(&dir).pop().unwrap();
    assert_eq!(newest["prev"].as_str(), Some(first.as_str()), "{newest}");
    let (o, to) = restore_latest(&env, "after-cut.db");
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(ids(&to), ids(&db));
    assert_eq!(query_i64(&to, "SELECT count(*) FROM n"), 200 + 51 * 3);
}

/// The file system refuses to grow the delta (RLIMIT_FSIZE, EFBIG: the full disk of a
/// quota): the incremental fails naming the file, no delta or temp is left under any name,
/// the manifest is unchanged, and the next run makes a point that restores.
#[test]
fn a_delta_write_refused_by_the_file_system_leaves_nothing_half_written() {
    let (env, db, dir) = setup("7d", "keep = { last = 5 }");
    insert(&db, 1, 200);
    env.run_ok(&["run", "app", "backup"]);
    let before = std::fs::read(dir.join("manifest.json")).unwrap();
    let names_before = crate::util::names(&dir);
    insert(&db, 1000, 5000);
    // 512 KiB: more than the manifest and state.db, less than the delta (1.2 MB of random).
    let o = run_with_fsize(&env, 512, &["run", "app", "incremental"]);
    assert_ne!(o.status.code(), Some(0), "{}", both(&o));
    assert!(
        both(&o).contains(&dir.display().to_string()),
        "{}",
        both(&o)
    );
    assert_eq!(std::fs::read(dir.join("manifest.json")).unwrap(), before);
    // Only the base's page-hash index is new (a whole file, made before the delta).
    let mut want = names_before.clone();
    want.extend(
        names_before
            .iter()
            .filter(|n| n.ends_with(".db.zst"))
            .map(|n| format!("{n}.pages")),
    );
    want.sort();
    assert_eq!(crate::util::names(&dir), want, "{}", both(&o));
    env.run_ok(&["run", "app", "incremental"]);
    let (o, to) = restore_latest(&env, "r.db");
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(ids(&to), ids(&db));
}

/// A drill's age identity (a secret key on the machine) readable by others is a warning of
/// `check`, like a remote's credentials file; the key itself is never printed.
#[test]
fn check_warns_of_a_drill_identity_others_can_read() {
    let env = TestEnv::new();
    let (identity, public) = keygen(&env);
    let db = chat_db(&env);
    std::fs::create_dir(env.path("remote")).unwrap();
    let body = format!(
        "url = \"file://{}\"\nencrypt_to = [\"{public}\"]\n",
        env.path("remote").display()
    );
    config(
        &env,
        &db,
        &body,
        &format!(
            "[database.drill]\nfrom = [\"offsite\"]\nidentity = \"{}\"",
            identity.display()
        ),
    );
    crate::util::set_mode(&identity, 0o600);
    let o = env.output(&["check"]);
    assert!(!both(&o).contains("identity.txt"), "{}", both(&o));
    crate::util::set_mode(&identity, 0o644);
    let o = env.output(&["check"]);
    let out = both(&o);
    assert!(
        out.contains(&format!(
            "chat: warning: drill.identity {} holds an age secret key and is readable by group or others (mode 644); chmod 600 it",
            identity.display()
        )),
        "{out}"
    );
    assert!(!out.contains("AGE-SECRET-KEY"), "{out}");
}

/// The full backup a chain starts from is gone by hand (an older full is still there):
/// `restore --at latest` must not hand back the older full as if it were the newest point
/// without a word: it restores the newest point it can reach and exits 65 with a warning
/// naming the missing base and the point asked for.
#[test]
fn restore_at_with_the_chains_base_gone_says_so() {
    let (env, db, dir) = setup("7d", "keep = { last = 5 }");
    insert(&db, 1, 100);
    env.run_ok(&["run", "app", "backup"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    insert(&db, 200, 300);
    env.run_ok(&["run", "app", "backup"]);
    insert(&db, 400, 500);
    env.run_ok(&["run", "app", "incremental"]);
    let point = local_deltas(&dir)[0].clone();
    let base = point["base"].as_str().unwrap().to_string();
    std::fs::remove_file(dir.join(&base)).unwrap();
    let (o, to) = restore_latest(&env, "r.db");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(65), "{}", both(&o));
    assert!(err.contains("warning") && err.contains(&base), "{err}");
    assert!(err.contains(point["file"].as_str().unwrap()), "{err}");
    // What it restored is the older full, whole.
    assert_eq!(query_i64(&to, "SELECT count(*) FROM n"), 100);
    // No full backup at all: 66, and "latest" reads as now (not the year 262142).
    for f in crate::util::names(&dir) {
        if f.ends_with(".db.zst") {
            std::fs::remove_file(dir.join(f)).unwrap();
        }
    }
    let (o, _) = restore_latest(&env, "r2.db");
    assert_eq!(o.status.code(), Some(66), "{}", both(&o));
    assert!(both(&o).contains("at or before now"), "{}", both(&o));
}

/// The same off-site: the full copy a chain starts from is missing from the remote manifest
/// (an older full copy is there): `restore --at latest --from` restores the older copy and
/// exits 65 with a warning naming the missing base and the point asked for.
#[test]
fn remote_restore_at_with_the_chains_base_gone_says_so() {
    let env = TestEnv::new();
    let identity = chain_on_file_remote(&env, "last = 5", 2);
    let m = remote_manifest(&env);
    let point = m["deltas"][0].clone();
    let base = point["base"].as_str().unwrap().to_string();
    tamper(&env, |m| {
        m["copies"]
            .as_array_mut()
            .unwrap()
            .retain(|c| c["local_file"].as_str() != Some(base.as_str()))
    });
    let to = env.path("r.db");
    let o = restore_from(&env, &identity, &["--at", "latest"], &to);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(65), "{}", both(&o));
    assert!(err.contains("warning") && err.contains(&base), "{err}");
    assert!(err.contains(point["local_file"].as_str().unwrap()), "{err}");
    assert_eq!(query_i64(&to, "SELECT count(*) FROM m"), 500);
}

/// `litekeeper ARGS` with RLIMIT_FSIZE at `kib` KiB and SIGXFSZ ignored: a write past it
/// fails with EFBIG, as on a full disk or quota.
fn run_with_fsize(env: &TestEnv, kib: u32, args: &[&str]) -> std::process::Output {
    let base = env.std_cmd();
    std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("ulimit -f {kib}; trap '' XFSZ; exec \"$@\""))
        .arg("bash")
        .arg(base.get_program())
        .args(base.get_args())
        .args(args)
        .env_clear()
        .envs(base.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .output()
        .unwrap()
}

/// A download that the file system refuses to finish (EFBIG mid-way): restore --from fails
/// naming the copy, writes nothing at `--to`, and leaves no staging directory or partial
/// download (decrypted or not) behind; without the limit the same restore succeeds.
#[test]
fn a_download_refused_by_the_file_system_leaves_nothing_behind() {
    let env = TestEnv::new();
    let (identity, public) = keygen(&env);
    let db = env.sqlite(
        "chat.db",
        "CREATE TABLE m(id INTEGER PRIMARY KEY, body BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 2000)
         INSERT INTO m(body) SELECT randomblob(1000) FROM n;",
    );
    std::fs::create_dir(env.path("remote")).unwrap();
    let body = format!(
        "url = \"file://{}\"\nencrypt_to = [\"{public}\"]\n",
        env.path("remote").display()
    );
    config(&env, &db, &body, "");
    env.run_ok(&["run", "chat", "backup"]);
    std::fs::remove_dir_all(env.path("backups")).unwrap();
    let before = tree(env.dir.path());
    let to = env.path("r.db");
    let id = identity.display().to_string();
    let to_s = to.display().to_string();
    let args = [
        "restore",
        "chat",
        "--from",
        "offsite",
        "--identity",
        &id,
        "--to",
        &to_s,
    ];
    let o = run_with_fsize(&env, 512, &args);
    assert_ne!(o.status.code(), Some(0), "{}", both(&o));
    assert!(both(&o).contains("chat-"), "names the copy: {}", both(&o));
    assert!(!to.exists());
    assert_eq!(tree(env.dir.path()), before, "{}", both(&o));
    let o = env.output(&args[..]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(query_i64(&to, "SELECT count(*) FROM m"), 2000);
}

/// SIGKILL at spread moments of `restore --at POINT --in-place`, alternating between two
/// points A and B: after every kill the live file opens, passes `integrity_check` and holds
/// exactly A's or B's rows — never half of one — and the next restore still succeeds.
#[test]
fn sigkill_during_restore_at_in_place_leaves_the_old_or_the_new_file() {
    let (env, db, dir) = setup("7d", "keep = { last = 5 }");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM k WHERE i < 8000)
         INSERT INTO n(id, pad) SELECT i, randomblob(1000) FROM k;",
    )
    .unwrap();
    drop(c);
    env.run_ok(&["run", "app", "backup"]);
    insert(&db, 30000, 30100);
    env.run_ok(&["run", "app", "incremental"]);
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute("DELETE FROM n WHERE id % 3 = 0", []).unwrap();
    drop(c);
    env.run_ok(&["run", "app", "incremental"]);
    let points = local_deltas(&dir);
    let at: Vec<String> = points
        .iter()
        .map(|p| p["created_at"].as_str().unwrap().to_string())
        .collect();
    // The rows of each point, from a restore of it beside.
    let want: Vec<Vec<i64>> = (0..2)
        .map(|i| {
            let to = env.path(&format!("p{i}.db"));
            env.restore_ok(&["app", "--at", &at[i]], &to);
            ids(&to)
        })
        .collect();
    assert_ne!(want[0], want[1]);
    // How long one in-place restore takes here.
    let clock = std::time::Instant::now();
    env.run_ok(&["restore", "app", "--at", &at[0], "--in-place"]);
    let took = clock.elapsed();
    assert_eq!(ids(&db), want[0]);
    let mut current = 0;
    for k in 0..10u32 {
        let target = 1 - current;
        let delay = took * k / 10;
        let mut child = env
            .std_cmd()
            .args(["restore", "app", "--at", &at[target], "--in-place"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().unwrap();
        let now = ids(&db);
        let c = rusqlite::Connection::open(&db).unwrap();
        let check: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        drop(c);
        assert_eq!(check, "ok", "kill {k} after {delay:?}");
        assert!(
            now == want[0] || now == want[1],
            "kill {k} after {delay:?} ({status}): {} rows, neither point",
            now.len()
        );
        current = if now == want[target] { target } else { current };
    }
    // A restore after the kills finishes.
    env.run_ok(&["restore", "app", "--at", &at[1 - current], "--in-place"]);
    assert_eq!(ids(&db), want[1 - current]);
    // No temp a killed restore left stays beside the live file (the kept `.pre-restore-`
    // copies of replaced files are the restore's, by design).
    let beside: Vec<String> = crate::util::names(db.parent().unwrap())
        .into_iter()
        .filter(|n| n.starts_with("app") && !n.contains(".pre-restore-"))
        .collect();
    assert!(
        beside
            .iter()
            .all(|n| ["app.db", "app.db-wal", "app.db-shm"].contains(&n.as_str())),
        "{beside:?}"
    );
}

/// A local manifest whose entries name files outside the backup directory (`..`, a path, an
/// absolute name: by hand or by another tool): no job or restore follows them. Chain
/// retention deleted `../victim.txt` before (the run exited 0); now a delta entry that is not
/// a delta name of its series makes the manifest refused (65) naming the entry.
#[test]
fn local_manifest_names_never_leave_the_backup_dir() {
    let (env, db, dir) = setup("7d", "keep = { last = 5 }");
    insert(&db, 1, 100);
    env.run_ok(&["run", "app", "backup"]);
    insert(&db, 200, 300);
    env.run_ok(&["run", "app", "incremental"]);
    let victim = dir.parent().unwrap().join("victim.txt");
    std::fs::write(&victim, b"not a backup").unwrap();
    let path = dir.join("manifest.json");
    let good = std::fs::read(&path).unwrap();
    let tamper = |edit: &dyn Fn(&mut Value)| {
        let mut m: Value = serde_json::from_slice(&good).unwrap();
        edit(&mut m);
        std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    };
    let expired_chain = |file: &str| {
        let file = file.to_string();
        move |m: &mut Value| {
            let mut d = m["deltas"][0].clone();
            d["file"] = Value::from(file.as_str());
            d["base"] = Value::from("app-20200101T000000Z.db");
            d["prev"] = Value::from("app-20200101T000000Z.db");
            d["created_at"] = Value::from("2020-01-01T00:00:01Z");
            m["deltas"].as_array_mut().unwrap().push(d);
        }
    };
    for bad in ["../victim.txt", "app-20200101T000001Z/../../victim.txt"] {
        tamper(&expired_chain(bad));
        let o = env
            .cmd()
            .args(["run", "app", "incremental"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(65), "{bad}: {}", both(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("manifest.json") && err.contains("deltas[1]"),
            "{err}"
        );
        assert_eq!(std::fs::read(&victim).unwrap(), b"not a backup", "{bad}");
    }
    // A full backup's entry naming a path (kept working by the listing, which only takes
    // backup names of the database's series): restore does not read it (the real backup is
    // now unrecorded: 66), a backup's retention does not delete it.
    let abs = victim.display().to_string();
    tamper(&|m: &mut Value| m["backups"][0]["file"] = Value::from(abs.as_str()));
    let o = env.restore_to(&["app"], &env.path("r.db"));
    assert_eq!(o.status.code(), Some(66), "{}", both(&o));
    assert!(!env.path("r.db").exists());
    env.run_ok(&["run", "app", "backup"]);
    assert_eq!(std::fs::read(&victim).unwrap(), b"not a backup");
}
