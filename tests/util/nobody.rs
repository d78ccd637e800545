//! Running as another user: the permission tests run the binary as uid/gid 65534 through
//! `setpriv` when the tests run as root (root ignores file permissions), and directly with plain
//! chmod otherwise.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use super::{is_root, scrub, TestEnv};

/// The unprivileged user and group the permission tests run as when we are root.
pub const NOBODY: u32 = 65534;

/// Make `env`'s temp dir usable by [`NOBODY`]: the dir readable (tempfile makes it 0700), the
/// config readable, and the state and lock dirs of `daemon_section` owned by that user.
pub fn open_to_nobody(env: &TestEnv) {
    set_mode(env.dir.path(), 0o755);
    if env.config_path().exists() {
        set_mode(&env.config_path(), 0o644);
    }
    for d in ["state", "locks"] {
        let p = env.path(d);
        std::fs::create_dir_all(&p).unwrap();
        give_to_nobody(&p);
    }
}

/// chown to [`NOBODY`] when root (as another user the files are already ours).
pub fn give_to_nobody(p: &Path) {
    if is_root() {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
}

pub fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The real binary as an unprivileged user (through setpriv when root), litekeeper's own
/// environment variables removed; no `-c` is added.
pub fn unprivileged(env: &TestEnv) -> StdCommand {
    let bin = binary_for_nobody(env);
    let mut c = if is_root() {
        let mut c = StdCommand::new("setpriv");
        c.arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .arg("--clear-groups")
            .arg(bin);
        c
    } else {
        StdCommand::new(bin)
    };
    scrub(&mut c, env.dir.path(), |k| k.starts_with("XDG_"));
    c
}

/// The test binary's path if [`NOBODY`] can run it there, else a copy inside the temp dir
/// (a target dir under a 0700 home would be out of that user's reach).
fn binary_for_nobody(env: &TestEnv) -> PathBuf {
    let bin = assert_cmd::cargo::cargo_bin("litekeeper");
    if !is_root() {
        return bin;
    }
    let probe = StdCommand::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg(&bin)
        .arg("--version")
        .output()
        .expect("setpriv (util-linux) is needed for the permission tests");
    if probe.status.success() {
        return bin;
    }
    let copy = env.path("litekeeper-bin");
    std::fs::copy(&bin, &copy).unwrap();
    set_mode(&copy, 0o755);
    copy
}

/// chown -R to [`NOBODY`] when root; a symlink itself is chowned too, not only its target.
pub fn chown_tree(p: &Path) {
    give_to_nobody(p);
    let meta = std::fs::symlink_metadata(p).unwrap();
    if meta.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path());
        }
    } else if meta.file_type().is_symlink() && is_root() {
        std::os::unix::fs::lchown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
}
