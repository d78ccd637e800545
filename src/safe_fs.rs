//! Files and directories that configuration names, opened so that neither a symlink nor a
//! special file can redirect or block litekeeper. A directory is opened once as a handle
//! (`O_NOFOLLOW | O_DIRECTORY`) and every later step goes through it (`openat`, `unlinkat`,
//! `renameat`, `fstatat` without following): replacing the directory, or anything inside it,
//! with a symlink while a job works cannot send the job anywhere else. A file is opened only
//! when it is a regular file, without blocking on a FIFO (`O_NONBLOCK`, then `fstat`).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, RenameFlags};

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// What a non-regular file is, for messages ("a FIFO").
pub(crate) fn describe(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symlink",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "of unknown type",
    }
}

/// `Ok(None)` when nothing or a regular file is at `path`, `Ok(Some(kind))` when something
/// else is (a symlink is not followed). Use before handing a path to a library that would open
/// it and could block (SQLite and a FIFO).
pub(crate) fn special_file_at(path: &Path) -> io::Result<Option<&'static str>> {
    match rfs::lstat(path) {
        Ok(st) => {
            let t = FileType::from_raw_mode(st.st_mode);
            Ok((t != FileType::RegularFile).then(|| describe(t)))
        }
        Err(e) if e == rustix::io::Errno::NOENT => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The error `open_regular` returns for a file that is not regular; its text names the path.
pub(crate) fn not_regular(path: &Path, t: FileType) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} is not a regular file ({}); litekeeper never opens special files: remove it",
            path.display(),
            describe(t)
        ),
    )
}

/// Open `path` for reading (and writing, with `write`; `create` makes a new 0600 file) only
/// if it is a regular file: a symlink is refused (`O_NOFOLLOW`), a FIFO or device is opened
/// without blocking, seen with `fstat`, closed and refused. The file is returned in blocking
/// mode.
pub(crate) fn open_regular(path: &Path, write: bool, create: bool) -> io::Result<File> {
    let mut flags = OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
    flags |= if write { OFlags::RDWR } else { OFlags::RDONLY };
    if create {
        flags |= OFlags::CREATE;
    }
    let fd = match rfs::open(path, flags, Mode::from_raw_mode(0o600)) {
        Ok(fd) => fd,
        Err(e) if e == rustix::io::Errno::LOOP => return Err(not_regular(path, FileType::Symlink)),
        Err(e) => return Err(e.into()),
    };
    let t = FileType::from_raw_mode(rfs::fstat(&fd)?.st_mode);
    if t != FileType::RegularFile {
        return Err(not_regular(path, t));
    }
    rfs::fcntl_setfl(&fd, rfs::fcntl_getfl(&fd)? - OFlags::NONBLOCK)?;
    Ok(File::from(fd))
}

/// Why [`open_lock_file`] refused or failed.
#[derive(Debug)]
pub(crate) enum LockFileError {
    /// A symlink, FIFO, device, socket or directory where the lock file should be.
    Special(FileType),
    Io(io::Error),
}

/// Open a lock file read-write, creating it with `mode`: never through a symlink
/// (`O_NOFOLLOW`), never waiting on a FIFO (`O_NONBLOCK`), and only when it is a regular file
/// (a flock on anything else means nothing). Every lock litekeeper takes opens this way.
pub(crate) fn open_lock_file(path: &Path, mode: u32) -> Result<File, LockFileError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // O_NOFOLLOW on a symlink fails with ELOOP.
            Some(libc::ELOOP) => LockFileError::Special(FileType::Symlink),
            _ => LockFileError::Io(e),
        })?;
    let meta = file.metadata().map_err(LockFileError::Io)?;
    if !meta.is_file() {
        return Err(LockFileError::Special(FileType::from_raw_mode(meta.mode())));
    }
    Ok(file)
}

/// Read a whole regular file (see [`open_regular`]).
pub(crate) fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    open_regular(path, false, false)?.read_to_end(&mut out)?;
    Ok(out)
}

/// The error of opening as a directory something that is not one (a symlink included).
#[derive(Debug)]
struct NotADir(&'static str);

impl std::fmt::Display for NotADir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not a real directory ({})", self.0)
    }
}

impl std::error::Error for NotADir {}

/// `openat(O_NOFOLLOW | O_DIRECTORY)` fails with ENOTDIR or ELOOP when the name is not a real
/// directory; say what it is instead (`kind` looks without following).
fn open_error(e: rustix::io::Errno, kind: impl FnOnce() -> Option<FileType>) -> io::Error {
    if e == rustix::io::Errno::NOTDIR || e == rustix::io::Errno::LOOP {
        let what = kind().map(describe).unwrap_or("not a directory");
        io::Error::new(io::ErrorKind::NotADirectory, NotADir(what))
    } else {
        e.into()
    }
}

/// When opening a directory failed because something else is there: what it is ("a
/// symlink", "a regular file"…).
pub(crate) fn not_a_dir(e: &io::Error) -> Option<&'static str> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<NotADir>())
        .map(|n| n.0)
}

/// What an entry of a directory is (never following a symlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Other,
}

/// One entry of a [`DirHandle`]'s listing.
#[derive(Debug, Clone)]
pub(crate) struct DirEntry {
    pub name: OsString,
    pub kind: Kind,
}

/// Size and modification time of an entry (not following symlinks).
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryMeta {
    pub kind: Kind,
    pub len: u64,
    pub modified: SystemTime,
}

fn kind_of(t: FileType) -> Kind {
    match t {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        _ => Kind::Other,
    }
}

/// An open directory; every operation is relative to it, none follows a symlink.
#[derive(Debug)]
pub(crate) struct DirHandle {
    fd: OwnedFd,
}

impl DirHandle {
    /// Open `path` as a directory. Its last component must be a real directory (a symlink
    /// fails with ELOOP: see [`is_symlink_error`]); components before it are the operator's.
    pub(crate) fn open(path: &Path) -> io::Result<DirHandle> {
        let fd = rfs::open(path, DIR_FLAGS, Mode::empty()).map_err(|e| {
            open_error(e, || {
                rfs::lstat(path)
                    .ok()
                    .map(|st| FileType::from_raw_mode(st.st_mode))
            })
        })?;
        Ok(DirHandle { fd })
    }

    /// Open the directory `name` inside this one (no symlink, no `..`-escape: one name).
    pub(crate) fn open_dir(&self, name: &OsStr) -> io::Result<DirHandle> {
        check_name(name)?;
        let fd = rfs::openat(&self.fd, name, DIR_FLAGS, Mode::empty()).map_err(|e| {
            open_error(e, || {
                rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
                    .ok()
                    .map(|st| FileType::from_raw_mode(st.st_mode))
            })
        })?;
        Ok(DirHandle { fd })
    }

    /// Open the directory `name` inside this one, creating it with `mode` if it is missing.
    pub(crate) fn create_dir(&self, name: &OsStr, mode: u32) -> io::Result<DirHandle> {
        check_name(name)?;
        match rfs::mkdirat(&self.fd, name, Mode::from_raw_mode(mode)) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::EXIST => {}
            Err(e) => return Err(e.into()),
        }
        self.open_dir(name)
    }

    /// The entries of this directory (without `.` and `..`).
    pub(crate) fn entries(&self) -> io::Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        for e in rfs::Dir::read_from(&self.fd)? {
            let e = e?;
            let name = OsStr::from_bytes(e.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let kind = match e.file_type() {
                FileType::Unknown => match self.meta(name) {
                    Ok(m) => m.kind,
                    Err(_) => continue, // gone meanwhile
                },
                t => kind_of(t),
            };
            out.push(DirEntry {
                name: name.to_os_string(),
                kind,
            });
        }
        Ok(out)
    }

    /// Kind, size and modification time of `name` (a symlink is described, not followed).
    pub(crate) fn meta(&self, name: &OsStr) -> io::Result<EntryMeta> {
        check_name(name)?;
        let st = rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)?;
        let modified = if st.st_mtime >= 0 {
            SystemTime::UNIX_EPOCH + Duration::new(st.st_mtime as u64, st.st_mtime_nsec as u32)
        } else {
            SystemTime::UNIX_EPOCH
        };
        Ok(EntryMeta {
            kind: kind_of(FileType::from_raw_mode(st.st_mode)),
            len: st.st_size as u64,
            modified,
        })
    }

    /// Remove the non-directory `name` (a symlink itself, never its target).
    pub(crate) fn remove_file(&self, name: &OsStr) -> io::Result<()> {
        check_name(name)?;
        Ok(rfs::unlinkat(&self.fd, name, AtFlags::empty())?)
    }

    /// Remove the directory `name` and everything in it, through handles: a subdirectory
    /// swapped for a symlink meanwhile loses the symlink, never what it points to. Iterative
    /// (a post-order walk over an explicit stack of handles), so a hostile deep tree cannot
    /// overflow the stack; a tree deeper than [`MAX_TREE_DEPTH`] levels is refused with an
    /// error (what lies above the limit may be removed already, the deep part stays).
    pub(crate) fn remove_tree(&self, name: &OsStr) -> io::Result<()> {
        let top = match self.open_dir(name) {
            Ok(d) => d,
            // No longer a directory (a symlink or file put in its place): remove that name.
            Err(e) if not_a_dir(&e).is_some() => return self.remove_file(name),
            Err(e) => return Err(e),
        };
        let entries = top.entries()?;
        // Each level: its handle, its name in the level above, what is left to remove in it.
        let mut stack: Vec<(DirHandle, OsString, Vec<DirEntry>)> =
            vec![(top, name.to_os_string(), entries)];
        loop {
            let depth = stack.len();
            let Some(level) = stack.last_mut() else {
                break;
            };
            let Some(e) = level.2.pop() else {
                let (_, n, _) = stack.pop().expect("a level");
                let parent = stack.last().map_or(self, |l| &l.0);
                match rfs::unlinkat(&parent.fd, &n, AtFlags::REMOVEDIR) {
                    Ok(()) => {}
                    Err(e) if e == rustix::io::Errno::NOENT && !stack.is_empty() => {}
                    Err(e) => return Err(e.into()),
                }
                continue;
            };
            let dir = &level.0;
            let r = match e.kind {
                Kind::Dir if depth >= MAX_TREE_DEPTH => return Err(too_deep()),
                Kind::Dir => match dir.open_dir(&e.name) {
                    Ok(sub) => match sub.entries() {
                        Ok(list) => {
                            stack.push((sub, e.name, list));
                            continue;
                        }
                        Err(err) => Err(err),
                    },
                    Err(err) if not_a_dir(&err).is_some() => dir.remove_file(&e.name),
                    Err(err) => Err(err),
                },
                _ => dir.remove_file(&e.name),
            };
            match r {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Move `name` from this directory into `to`, under `to_name` or, when that is taken,
    /// `to_name.1`, `to_name.2`…; never replaces anything. Returns the name used.
    pub(crate) fn move_into(
        &self,
        name: &OsStr,
        to: &DirHandle,
        to_name: &OsStr,
    ) -> io::Result<OsString> {
        check_name(name)?;
        check_name(to_name)?;
        let mut target = to_name.to_os_string();
        for n in 1u32.. {
            match rfs::renameat_with(&self.fd, name, &to.fd, &target, RenameFlags::NOREPLACE) {
                Ok(()) => return Ok(target),
                Err(e) if e == rustix::io::Errno::EXIST => {}
                // A file system without RENAME_NOREPLACE: look first, then rename.
                Err(e) if e == rustix::io::Errno::INVAL => {
                    if matches!(to.meta(&target), Err(ref e) if e.kind() == io::ErrorKind::NotFound)
                    {
                        rfs::renameat(&self.fd, name, &to.fd, &target)?;
                        return Ok(target);
                    }
                }
                Err(e) => return Err(e.into()),
            }
            target = to_name.to_os_string();
            target.push(format!(".{n}"));
        }
        unreachable!("u32 names exhausted")
    }

    /// Total size of the regular files under the directory `name` (symlinks not followed;
    /// what cannot be read, or lies deeper than [`MAX_TREE_DEPTH`] levels, counts 0).
    /// Iterative, like [`DirHandle::remove_tree`].
    pub(crate) fn tree_bytes(&self, name: &OsStr) -> u64 {
        let Ok(top) = self.open_dir(name) else {
            return 0;
        };
        let Ok(entries) = top.entries() else {
            return 0;
        };
        let mut total = 0u64;
        let mut stack: Vec<(DirHandle, Vec<DirEntry>)> = vec![(top, entries)];
        loop {
            let depth = stack.len();
            let Some(level) = stack.last_mut() else {
                break;
            };
            let Some(e) = level.1.pop() else {
                stack.pop();
                continue;
            };
            match e.kind {
                Kind::Dir if depth < MAX_TREE_DEPTH => {
                    if let Ok(sub) = level.0.open_dir(&e.name) {
                        if let Ok(list) = sub.entries() {
                            stack.push((sub, list));
                        }
                    }
                }
                Kind::File => {
                    total = total.saturating_add(level.0.meta(&e.name).map(|m| m.len).unwrap_or(0))
                }
                _ => {}
            }
        }
        total
    }
}

/// How many directory levels [`DirHandle::remove_tree`] and [`DirHandle::tree_bytes`] walk
/// down: one open handle per level, so this stays well under the default limit of 1024 open
/// files. Real upload trees are far shallower; a deeper one is hostile and left for a human.
pub(crate) const MAX_TREE_DEPTH: usize = 256;

fn too_deep() -> io::Error {
    io::Error::other(format!(
        "directory tree deeper than {MAX_TREE_DEPTH} levels: refused, the deep part is left in place; remove it by hand"
    ))
}

/// One plain name: not empty, no `/`, not `.` or `..`.
fn check_name(name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b.contains(&b'/') || b == b"." || b == b".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Up to the limit a tree is walked whole, iteratively: bytes counted at every level,
    /// everything removed, a symlink at the bottom removed and its target kept.
    #[test]
    fn trees_up_to_the_depth_limit_are_counted_and_removed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        let root = DirHandle::open(dir.path()).unwrap();
        let mut h = root.create_dir(OsStr::new("t"), 0o755).unwrap();
        for _ in 1..MAX_TREE_DEPTH {
            rfs::openat(
                &h.fd,
                "f",
                OFlags::CREATE | OFlags::WRONLY,
                Mode::from_raw_mode(0o600),
            )
            .and_then(|f| rustix::io::write(&f, b"ab"))
            .unwrap();
            h = h.create_dir(OsStr::new("d"), 0o755).unwrap();
        }
        rfs::symlinkat(&outside, &h.fd, "link").unwrap();
        assert_eq!(
            root.tree_bytes(OsStr::new("t")),
            2 * (MAX_TREE_DEPTH as u64 - 1)
        );
        root.remove_tree(OsStr::new("t")).unwrap();
        assert!(!dir.path().join("t").exists());
        assert!(outside.join("keep").exists());
        // One level more is refused, and what is there stays.
        let mut h = root.create_dir(OsStr::new("t"), 0o755).unwrap();
        for _ in 0..MAX_TREE_DEPTH {
            h = h.create_dir(OsStr::new("d"), 0o755).unwrap();
        }
        let e = root.remove_tree(OsStr::new("t")).unwrap_err();
        assert!(e.to_string().contains("deeper than 256 levels"), "{e}");
        assert!(dir.path().join("t/d/d").is_dir());
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pipe");
        rustix::fs::mkfifoat(rustix::fs::CWD, &p, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
        let e = open_regular(&p, false, false).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        assert_eq!(special_file_at(&p).unwrap(), Some("a FIFO"));
        std::fs::write(dir.path().join("f"), "x").unwrap();
        assert_eq!(read_regular(&dir.path().join("f")).unwrap(), b"x");
        assert_eq!(special_file_at(&dir.path().join("f")).unwrap(), None);
        assert_eq!(special_file_at(&dir.path().join("none")).unwrap(), None);
    }

    #[test]
    fn handles_never_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        let d = dir.path().join("d");
        std::fs::create_dir(&d).unwrap();
        std::os::unix::fs::symlink(&outside, d.join("link")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.path().join("linked")).unwrap();
        let e = DirHandle::open(&dir.path().join("linked")).unwrap_err();
        assert_eq!(not_a_dir(&e), Some("a symlink"), "{e}");
        let h = DirHandle::open(&d).unwrap();
        let e = h.open_dir(OsStr::new("link")).unwrap_err();
        assert_eq!(not_a_dir(&e), Some("a symlink"), "{e}");
        assert!(h.create_dir(OsStr::new("link"), 0o700).is_err());
        // remove_tree on a symlink removes the link only
        h.remove_tree(OsStr::new("link")).unwrap();
        assert!(outside.join("keep").exists());
        assert!(h.open_dir(OsStr::new("..")).is_err());
        // move_into never replaces
        std::fs::write(d.join("a"), "1").unwrap();
        std::fs::write(d.join("b"), "2").unwrap();
        let q = h.create_dir(OsStr::new("q"), 0o700).unwrap();
        assert_eq!(
            h.move_into(OsStr::new("a"), &q, OsStr::new("x")).unwrap(),
            "x"
        );
        assert_eq!(
            h.move_into(OsStr::new("b"), &q, OsStr::new("x")).unwrap(),
            "x.1"
        );
        assert_eq!(std::fs::read_to_string(d.join("q/x")).unwrap(), "1");
        assert_eq!(h.tree_bytes(OsStr::new("q")), 2);
        h.remove_tree(OsStr::new("q")).unwrap();
        assert!(h.entries().unwrap().is_empty());
    }
}
