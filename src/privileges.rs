//! Running as the owner of `state_dir` when started as root, as `sudo -u` would: a root-owned
//! state.db, lock file or restored database would lock the service out of its own files.
//!
//! The id switches stay libc calls: glibc's `setuid`/`setgid`/`setgroups` change every thread
//! of the process, rustix's safe `set_thread_*` wrappers only the calling thread, and
//! `getpwuid`/`initgroups` have no rustix wrapper.

use std::io;
use std::path::{Path, PathBuf};

/// A switch of user that failed: the directory whose owner was wanted, that owner, why, and
/// what the operator can do instead.
#[derive(Debug, thiserror::Error)]
#[error("{}: owned by uid {uid}; cannot switch to that user ({cause}); {hint}", dir.display())]
pub struct SwitchError {
    pub dir: PathBuf,
    pub uid: u32,
    pub cause: io::Error,
    pub hint: &'static str,
}

fn cannot_switch(dir: &Path, uid: u32, hint: &'static str) -> SwitchError {
    SwitchError {
        dir: dir.to_path_buf(),
        uid,
        cause: io::Error::last_os_error(),
        hint,
    }
}

/// As root, the user owning `state_dir` when that is not root (the service's user:
/// `litekeeper`, or the app's user with a `User=` drop-in), with its primary group.
pub(crate) fn state_owner(state_dir: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if !crate::paths::is_root() {
        return None;
    }
    let meta = std::fs::metadata(state_dir).ok()?;
    (meta.uid() != 0).then_some((meta.uid(), meta.gid()))
}

/// Set the groups of `uid` (its passwd entry's, or none without one) and then, through
/// `set_ids`, the gid and uid: `setgid`/`setuid` for good, `setegid`/`seteuid` for a while.
fn switch_ids(uid: u32, gid: u32, set_ids: impl FnOnce() -> bool) -> bool {
    // SAFETY: plain libc calls with valid arguments; getpwuid's result is only read here.
    unsafe {
        let pw = libc::getpwuid(uid);
        let groups_ok = if pw.is_null() {
            libc::setgroups(0, std::ptr::null()) == 0
        } else {
            libc::initgroups((*pw).pw_name, gid) == 0
        };
        groups_ok && set_ids()
    }
}

/// As root, become the user who owns `state_dir` for good (`run`: its files are the
/// service's). Returns the (uid, gid) switched to, None when there was nothing to do.
pub(crate) fn become_state_owner(state_dir: &Path) -> Result<Option<(u32, u32)>, SwitchError> {
    let Some((uid, gid)) = state_owner(state_dir) else {
        return Ok(None);
    };
    // SAFETY: plain libc calls with valid arguments.
    if !switch_ids(uid, gid, || unsafe {
        libc::setgid(gid) == 0 && libc::setuid(uid) == 0
    }) {
        return Err(cannot_switch(
            state_dir,
            uid,
            "run the job through its unit (systemctl start litekeeper-JOB@DB.service)",
        ));
    }
    Ok(Some((uid, gid)))
}

/// As root, run `f` with the effective ids of `state_dir`'s owner (files it creates are that
/// user's, as if `run` made them), then become root again for what only root may do (keep a
/// restored file's owner). Single-threaded callers only. Not root, or a root-owned
/// `state_dir`: just `f()`.
pub(crate) fn as_state_owner<T>(state_dir: &Path, f: impl FnOnce() -> T) -> Result<T, SwitchError> {
    let Some((uid, gid)) = state_owner(state_dir) else {
        return Ok(f());
    };
    let saved: Vec<libc::gid_t> = rustix::process::getgroups()
        .unwrap_or_default()
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    // SAFETY: plain libc calls with valid arguments.
    if !switch_ids(uid, gid, || unsafe {
        libc::setegid(gid) == 0 && libc::seteuid(uid) == 0
    }) {
        return Err(cannot_switch(state_dir, uid, "run restore as that user"));
    }
    let out = f();
    // SAFETY: back to root (the saved set-user-ID is still 0), then root's own groups.
    let back = unsafe {
        libc::seteuid(0) == 0
            && libc::setegid(0) == 0
            && libc::setgroups(saved.len(), saved.as_ptr()) == 0
    };
    if !back {
        return Err(cannot_switch(state_dir, 0, "cannot become root again"));
    }
    Ok(out)
}
