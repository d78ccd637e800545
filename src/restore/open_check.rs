//! Who has a database file open: a scan of `/proc/*/fd` by device and inode, so a symlinked
//! directory, a hard link or another path to the same file counts too. Processes whose open
//! files cannot be read (other users', when not root) are counted apart, by whether their user
//! could open the database at all.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::db_files::DbFiles;

/// Up to ten pids, then how many more.
pub(crate) fn pid_list(pids: &[u32]) -> String {
    let mut shown: Vec<String> = pids.iter().take(10).map(|p| p.to_string()).collect();
    if pids.len() > 10 {
        shown.push(format!("and {} more", pids.len() - 10));
    }
    shown.join(", ")
}

/// Who has a database file open, from /proc.
#[derive(Debug, Default)]
pub(super) struct Openers {
    /// Other processes with the file or a sidecar open.
    pub others: Vec<u32>,
    /// litekeeper processes (the daemon's idle pooled connection; its pool reconnects when
    /// the file behind the path changes).
    pub ours: Vec<u32>,
    /// Processes whose open files we may not read (other users', when not root) and whose
    /// user could open the database (by its mode bits).
    pub unreadable: Vec<u32>,
    /// Processes of root whose open files we may not read (root can open anything).
    pub unreadable_root: usize,
}

/// The effective user and groups of `pid`, from `/proc/PID/status` (readable by anyone).
fn proc_ids(pid: u32) -> Option<(u32, Vec<u32>)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    // "Uid:	real	effective	saved	fs": the file-system ids decide what it may open.
    let uid = *field("Uid:").get(3)?;
    let mut groups = field("Gid:")
        .get(3)
        .into_iter()
        .copied()
        .collect::<Vec<_>>();
    groups.extend(field("Groups:"));
    Some((uid, groups))
}

/// The permission bits (rwx, 0..=7) of `meta` that apply to a process of `uid` in `groups`.
fn bits_for(meta: &fs::Metadata, uid: u32, groups: &[u32]) -> u32 {
    let mode = meta.mode();
    if uid == meta.uid() {
        (mode >> 6) & 7
    } else if groups.contains(&meta.gid()) {
        (mode >> 3) & 7
    } else {
        mode & 7
    }
}

/// Whether a (non-root) process of `uid` in `groups` may open `db` by this path: it may search
/// every directory above it and read or write the file.
fn may_open(db: &Path, meta: &fs::Metadata, uid: u32, groups: &[u32]) -> bool {
    let dirs_ok = db
        .ancestors()
        .skip(1)
        .filter(|d| !d.as_os_str().is_empty())
        .all(|d| fs::metadata(d).map_or(true, |m| bits_for(&m, uid, groups) & 1 != 0));
    dirs_ok && bits_for(meta, uid, groups) & 6 != 0
}

/// Processes (other than this one) with the database or its -wal/-shm/-journal open, found by
/// device and inode, so a symlinked directory, a hard link or another path to the same file
/// counts too.
pub(super) fn open_by_others(db: &Path) -> Openers {
    let id = |m: fs::Metadata| (m.dev(), m.ino());
    let wanted: Vec<(u64, u64)> = DbFiles::of(db)
        .all()
        .into_iter()
        .filter_map(|p| fs::metadata(p).ok().map(id))
        .collect();
    let db_meta = fs::metadata(db).ok();
    let me = std::process::id();
    let my_exe = fs::metadata("/proc/self/exe").ok().map(id);
    let my_name = fs::read_link("/proc/self/exe")
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let is_litekeeper = |pid: u32| {
        let exe = format!("/proc/{pid}/exe");
        if my_exe.is_some() && fs::metadata(&exe).ok().map(id) == my_exe {
            return true;
        }
        // The daemon of a binary replaced by an upgrade: "/usr/bin/litekeeper (deleted)".
        let name = fs::read_link(&exe)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        name.is_some_and(|n| Some(n.trim_end_matches(" (deleted)")) == my_name.as_deref())
    };
    let mut found = Openers::default();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let fds = match fs::read_dir(p.path().join("fd")) {
            Ok(fds) => fds,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                // Kernel threads (empty command line) open no files; other users' processes
                // matter when their user may open the database.
                if !fs::read(p.path().join("cmdline")).is_ok_and(|c| !c.is_empty()) {
                    continue;
                }
                match proc_ids(pid) {
                    Some((0, _)) => found.unreadable_root += 1,
                    Some((uid, groups))
                        if db_meta
                            .as_ref()
                            .is_none_or(|m| may_open(db, m, uid, &groups)) =>
                    {
                        found.unreadable.push(pid)
                    }
                    _ => {}
                }
                continue;
            }
            Err(_) => continue, // gone meanwhile
        };
        let has_it = fds
            .flatten()
            .any(|fd| fs::metadata(fd.path()).is_ok_and(|m| wanted.contains(&id(m))));
        if has_it {
            if is_litekeeper(pid) {
                found.ours.push(pid);
            } else {
                found.others.push(pid);
            }
        }
    }
    found
}
