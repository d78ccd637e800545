//! A backup directory on disk: how backup files are named, the manifest that records their
//! checksums and verification, and the careful file handling every writer uses (temp name in
//! the target directory, fsync, rename, fsync the directory; leftovers of a killed run are
//! removed by the next one). Only names matching our pattern are ever touched.
//!
//! The manifest is the truth about a directory: a backup belongs to the database its entry
//! names ([`list_of`]), whatever its file name says, and a file named like a backup that the
//! manifest does not know is never counted or deleted, only reported ([`unrecorded`]). Several
//! databases may share a directory: whoever cleans leftovers, updates the manifest or applies
//! retention holds the directory's own lock ([`DirLock`], `.litekeeper.lock`), and a temp file
//! is flocked by the process writing it ([`TempFile`]), so cleanup never takes a live one.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::config::backup_names::{
    attached_series, stem_series, BackupName, FAILED_SUFFIX, MANIFEST,
};

/// Suffix of temp files; a leading dot hides them from `ls`.
pub const TMP_SUFFIX: &str = ".litekeeper-tmp";
/// The backup directory's lock file (a flock, never deleted).
pub const DIR_LOCK: &str = ".litekeeper.lock";
/// The longest file name most Linux file systems take (NAME_MAX).
pub const NAME_MAX: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Refused { reason: String, path: PathBuf },
    /// The manifest is not one litekeeper wrote (unparsable, or an entry it would not make).
    #[error("{}: {reason}", path.display())]
    BadManifest { reason: String, path: PathBuf },
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// litekeeper's own files in a backup directory (the manifest, the directory's lock, temp
/// files and anything hidden): never a backup, whatever a manifest entry says.
pub fn is_own_file(name: &str) -> bool {
    name == MANIFEST || name == DIR_LOCK || name.starts_with('.') || name.contains(TMP_SUFFIX)
}

/// `file` as a backup of one of `series`: its name parses as a backup name of one of them
/// and it is none of litekeeper's own files. Only such a file may fill a retention slot or
/// be deleted by retention, whatever its manifest entry claims.
pub fn backup_of(file: &str, series: &[String]) -> Option<BackupName> {
    if is_own_file(file) {
        return None;
    }
    BackupName::parse(file).filter(|n| series.contains(&n.series))
}

/// A backup file found in a directory.
#[derive(Debug, Clone)]
pub struct Found {
    pub name: BackupName,
    pub path: PathBuf,
    pub size: u64,
    /// Its manifest entry (from [`list_of`]); None for a file the manifest does not know.
    pub entry: Option<Entry>,
}

impl Found {
    /// The file name in its directory.
    pub fn file(&self) -> String {
        match &self.entry {
            Some(e) => e.file.clone(),
            None => self.name.file_name(),
        }
    }

    /// Recorded in the manifest with the size it has on disk: a backup retention may count.
    pub fn recorded(&self) -> bool {
        self.entry.as_ref().is_some_and(|e| e.size == self.size)
    }
}

fn newest_first(v: &mut [Found]) {
    v.sort_by(|a, b| {
        b.name
            .time
            .cmp(&a.name.time)
            .then(a.name.series.cmp(&b.name.series))
            .then(a.path.cmp(&b.path))
    });
}

/// The backups of `database` in `dir`: every manifest entry recorded for it whose file is
/// there (a regular file, not a symlink), newest first, except that backups dated in the
/// future (the clock moved back) come last: never preferred over real ones. Entries of other
/// databases sharing the directory are not listed, whatever their file names look like.
/// Time, series, compression and failure come from the entry, not from the file name.
pub fn list_of(
    dir: &Path,
    manifest: &Manifest,
    database: &str,
) -> Result<Vec<Found>, ArchiveError> {
    let mut out = Vec::new();
    for e in manifest.backups.iter().filter(|e| e.database == database) {
        if e.file.contains('/') || e.file.is_empty() {
            continue;
        }
        let path = dir.join(&e.file);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io_err(&path, "cannot stat")(err)),
        };
        if !meta.is_file() {
            continue;
        }
        out.push(Found {
            name: BackupName {
                series: e.series.clone(),
                time: e.created_at,
                compressed: e.compressed,
                failed: e.verified == Verified::Failed,
            },
            path,
            size: meta.len(),
            entry: Some(e.clone()),
        });
    }
    newest_first(&mut out);
    let soon = Utc::now() + crate::retention::FUTURE_SLACK;
    out.sort_by_key(|f| f.name.time > soon);
    Ok(out)
}

/// Files in `dir` named like backups of one of `series` that the manifest does not know (a
/// run killed before its manifest update, or garbage): never counted, never deleted, reported.
pub fn unrecorded(
    dir: &Path,
    manifest: &Manifest,
    series: &[String],
) -> Result<Vec<Found>, ArchiveError> {
    let mut out: Vec<Found> = list(dir)?
        .into_iter()
        .filter(|f| series.contains(&f.name.series) && manifest.get(&f.file()).is_none())
        .collect();
    newest_first(&mut out);
    Ok(out)
}

/// Every backup file (ours by name) in `dir`, newest first.
pub fn list(dir: &Path) -> Result<Vec<Found>, ArchiveError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(dir, "cannot list backup directory")(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(dir, "cannot list backup directory"))?;
        let Some(file_name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Some(name) = BackupName::parse(&file_name) else {
            continue;
        };
        let meta = entry
            .metadata()
            .map_err(io_err(&entry.path(), "cannot stat"))?;
        if !meta.is_file() {
            continue;
        }
        out.push(Found {
            name,
            path: entry.path(),
            size: meta.len(),
            entry: None,
        });
    }
    newest_first(&mut out);
    Ok(out)
}

/// Refuse a name longer than the file system takes, saying which and what to do.
pub fn check_name_length(name: &str, whose: &Path, what: &str) -> Result<(), ArchiveError> {
    if name.len() <= NAME_MAX {
        return Ok(());
    }
    Err(ArchiveError::Refused {
        reason: format!(
            "{what} would be {} bytes long ({}…), over the file-system limit of {NAME_MAX} bytes \
             per name; give the file a shorter name",
            name.len(),
            name.chars().take(40).collect::<String>()
        ),
        path: whose.to_path_buf(),
    })
}

/// The backup directory's lock, held while cleaning leftovers, updating the manifest and
/// applying retention: databases sharing a directory take turns. Dropping it releases it.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Take `dir`'s lock (waits while another job holds it; those hold it for moments). The lock
/// file is opened like the per-database locks: never through a symlink, without blocking, and
/// only when it is a regular file (a FIFO or device in its place is refused with its path).
pub fn lock_dir(dir: &Path) -> Result<DirLock, ArchiveError> {
    let file = open_dir_lock(dir)?;
    // std's file locks are flock(2) on Linux (blocking whatever O_NONBLOCK says).
    file.lock().map_err(io_err(
        &dir.join(DIR_LOCK),
        "cannot lock the backup directory",
    ))?;
    Ok(DirLock { _file: file })
}

fn open_dir_lock(dir: &Path) -> Result<File, ArchiveError> {
    let path = dir.join(DIR_LOCK);
    let refused = |what: &str| ArchiveError::Refused {
        reason: format!(
            "the backup directory's lock file is {what}, not a regular file; litekeeper never \
             opens special files: remove it (the next run creates the lock file)"
        ),
        path: path.clone(),
    };
    use crate::safe_fs::{describe, open_lock_file, LockFileError};
    let file = match open_lock_file(&path, 0o600) {
        Ok(f) => f,
        Err(LockFileError::Special(rustix::fs::FileType::Symlink)) => {
            return Err(refused("a symlink"))
        }
        Err(LockFileError::Special(t)) => return Err(refused(describe(t))),
        Err(LockFileError::Io(e)) => {
            return Err(io_err(
                &path,
                "cannot open the backup directory's lock file",
            )(e))
        }
    };
    Ok(file)
}

/// A shared hold on the backup directory's lock: readers of backups (a drill restoring a
/// copy) hold it while they read, so nothing that takes the lock itself (cleanup, manifest
/// updates, retention) runs meanwhile and no copy goes from under them; readers do not wait
/// for each other. Dropping it releases it.
#[derive(Debug)]
pub struct SharedDirLock {
    _file: File,
}

/// Take `dir`'s lock shared (waits while a writer holds it; opened as [`lock_dir`] opens it).
pub fn lock_dir_shared(dir: &Path) -> Result<SharedDirLock, ArchiveError> {
    let file = open_dir_lock(dir)?;
    let path = dir.join(DIR_LOCK);
    file.lock_shared()
        .map_err(io_err(&path, "cannot lock the backup directory"))?;
    Ok(SharedDirLock { _file: file })
}

/// A temp file being written: created new (mode 0600) and flocked for as long as this value
/// lives, so [`clean_leftovers`] knows a live process owns it.
#[derive(Debug)]
pub struct TempFile {
    pub path: PathBuf,
    file: File,
}

impl TempFile {
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Create `path` as a new temp file owned (flocked) by this process.
pub fn create_temp(path: &Path) -> Result<TempFile, ArchiveError> {
    for _ in 0..3 {
        let file = create_private(path)?;
        file.try_lock().map_err(|e| {
            io_err(path, "cannot lock temp file")(match e {
                std::fs::TryLockError::Error(e) => e,
                std::fs::TryLockError::WouldBlock => io::ErrorKind::WouldBlock.into(),
            })
        })?;
        // A cleanup that opened the name before the lock was taken may have removed it.
        let ours = file.metadata().map_err(io_err(path, "cannot stat"))?;
        match fs::symlink_metadata(path) {
            Ok(m) if m.dev() == ours.dev() && m.ino() == ours.ino() => {
                return Ok(TempFile {
                    path: path.to_path_buf(),
                    file,
                })
            }
            _ => continue,
        }
    }
    Err(ArchiveError::Refused {
        reason:
            "temp file removed under us three times; is another program cleaning this directory?"
                .into(),
        path: path.to_path_buf(),
    })
}

/// True when some live process holds a flock on `path` (a temp file being written). A file
/// that cannot be opened (gone, not ours) counts as not owned.
fn owned_by_a_live_process(path: &Path) -> bool {
    let Ok(f) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    else {
        return false;
    };
    matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock))
}

/// Create `dir` (mode 0700) if needed; refuse a symlink or a directory owned by someone else.
pub fn ensure_private_dir(dir: &Path) -> Result<(), ArchiveError> {
    match fs::symlink_metadata(dir) {
        Ok(meta) => {
            if meta.file_type().is_symlink() {
                return Err(ArchiveError::Refused { reason: "is a symlink; refusing to write backups through it (point `dir` at the real directory)".into(), path: dir.to_path_buf() });
            }
            if !meta.is_dir() {
                return Err(ArchiveError::Refused {
                    reason: "is not a directory".into(),
                    path: dir.to_path_buf(),
                });
            }
            let me = rustix::process::geteuid().as_raw();
            if meta.uid() != me {
                return Err(ArchiveError::Refused { reason: format!(
                        "is owned by uid {}, not by us (uid {me}); chown it to the user litekeeper runs as",
                        meta.uid()
                    ), path: dir.to_path_buf() });
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io_err(dir, "cannot create backup directory"))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(io_err(dir, "cannot set mode 0700"))?;
            Ok(())
        }
        Err(e) => Err(io_err(dir, "cannot stat backup directory")(e)),
    }
}

/// The temp path a file destined for `dir/final_name` is written under.
pub fn temp_path(dir: &Path, final_name: &str) -> PathBuf {
    dir.join(format!(".{final_name}{TMP_SUFFIX}"))
}

/// Remove temp files a killed run left in `dir`: ours by name, and owned by no live process
/// (a job of another database sharing the directory may be writing one). Call with the
/// directory's lock held.
pub fn clean_leftovers(dir: &Path, _held: &DirLock) -> Result<Vec<PathBuf>, ArchiveError> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(removed);
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // Our temp files, and SQLite's journals beside them (owned with their temp file).
        let Some(side) = std::iter::once("")
            .chain(crate::db_files::SIDECARS)
            .find(|s| name.ends_with(&format!("{TMP_SUFFIX}{s}")))
        else {
            continue;
        };
        let owner = dir.join(&name[..name.len() - side.len()]);
        if name.starts_with('.') && !owned_by_a_live_process(&owner) {
            fs::remove_file(entry.path())
                .map_err(io_err(&entry.path(), "cannot remove leftover temp file"))?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

/// Create a new file with mode 0600 (fails if it exists).
pub fn create_private(path: &Path) -> Result<File, ArchiveError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err(path, "cannot create file"))
}

pub fn fsync_file(path: &Path) -> Result<(), ArchiveError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path, "cannot fsync"))
}

pub fn fsync_dir(dir: &Path) -> Result<(), ArchiveError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir, "cannot fsync directory"))
}

/// Move a finished, fsynced temp file to its final name and make the rename durable.
/// Refuses to replace an existing file.
pub fn commit(tmp: &Path, final_path: &Path) -> Result<(), ArchiveError> {
    if final_path.exists() {
        return Err(ArchiveError::Refused {
            reason: "already exists; not replacing it".into(),
            path: final_path.to_path_buf(),
        });
    }
    fs::rename(tmp, final_path).map_err(io_err(final_path, "cannot rename into place"))?;
    fsync_dir(final_path.parent().unwrap_or(Path::new("/")))
}

/// Write `bytes` to `path` atomically (temp + fsync + rename + fsync dir), replacing it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = temp_path(dir, name);
    let _ = fs::remove_file(&tmp);
    let mut f = create_private(&tmp)?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io_err(&tmp, "cannot write"))?;
    fs::rename(&tmp, path).map_err(io_err(path, "cannot rename into place"))?;
    fsync_dir(dir)
}

/// SHA-256 (hex) of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String, ArchiveError> {
    let mut f = File::open(path).map_err(io_err(path, "cannot read"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path, "cannot read"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// A reader that computes the SHA-256 of every byte read through it: a file checked against
/// its recorded hash in the same pass that uses it (an upload, a restore).
pub(crate) struct Sha256Reader<R> {
    inner: R,
    sha: Sha256,
}

impl<R> Sha256Reader<R> {
    pub(crate) fn new(inner: R) -> Sha256Reader<R> {
        Sha256Reader {
            inner,
            sha: Sha256::new(),
        }
    }

    /// The SHA-256 (hex) of the bytes read so far.
    pub(crate) fn hex(&self) -> String {
        hex(&self.sha.clone().finalize())
    }
}

impl<R: Read> Read for Sha256Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes available to us on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64, ArchiveError> {
    let s = rustix::fs::statvfs(dir).map_err(|e| io_err(dir, "cannot statvfs")(e.into()))?;
    Ok(s.f_bavail * s.f_frsize)
}

pub use crate::domain::Verified;

/// What the manifest records about one backup file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub file: String,
    pub series: String,
    pub database: String,
    pub source: String,
    pub created_at: DateTime<Utc>,
    /// Size of the file as stored (compressed size for `.zst`).
    pub size: u64,
    /// SHA-256 of the file as stored.
    pub sha256: String,
    pub compressed: bool,
    /// Size and SHA-256 of what a compressed backup decompresses to, proved by the backup's
    /// round trip (absent for uncompressed backups and older manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_sha256: Option<String>,
    pub verified: Verified,
    /// Pages of the source snapshot and of the copy.
    pub page_count: u64,
    pub page_size: u64,
    /// Rows per table in the source snapshot (when verified).
    pub tables: BTreeMap<String, i64>,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// foreign_key_check violations in the source snapshot (when verified): a restored copy
    /// with more is damaged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fk_violations: Option<i64>,
    /// The last restore drill of this copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillMark>,
}

impl Entry {
    /// Its last drill failed: never the "newest verified" backup retention must keep, never
    /// restored by default.
    pub fn drill_failed(&self) -> bool {
        self.drill
            .as_ref()
            .is_some_and(|d| d.verdict == crate::domain::DrillVerdict::Failed)
    }
}

/// What the last restore drill of a copy found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillMark {
    pub at: DateTime<Utc>,
    pub verdict: crate::domain::DrillVerdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `manifest.json` in a backup directory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub backups: Vec<Entry>,
    /// Incremental points (`chain`): absent from manifests without any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<crate::chain::DeltaEntry>,
}

/// One path component as litekeeper makes file names: not empty, not hidden (nor `..`), no
/// `/`, no control characters.
pub(crate) fn plain_name(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('.') && !s.contains('/') && !s.chars().any(char::is_control)
}

impl Manifest {
    /// Read the manifest of `dir` (empty when there is none yet).
    pub fn load(dir: &Path) -> Result<Manifest, ArchiveError> {
        let path = dir.join(MANIFEST);
        // Only a regular file: a FIFO named manifest.json must not hang the job.
        match crate::safe_fs::read_regular(&path) {
            Ok(bytes) => {
                let m: Manifest =
                    serde_json::from_slice(&bytes).map_err(|e| ArchiveError::BadManifest {
                        reason: format!(
                            "unreadable manifest ({e}); move it aside and the next backup writes a new one"
                        ),
                        path: path.clone(),
                    })?;
                m.check().map_err(|e| ArchiveError::BadManifest {
                    reason: format!(
                        "{e}: litekeeper names its files itself, so this entry was edited; \
                         remove it or move the manifest aside (the next backup writes a new one)"
                    ),
                    path,
                })?;
                Ok(m)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Manifest {
                version: 1,
                ..Manifest::default()
            }),
            Err(e) => Err(io_err(&path, "cannot read manifest")(e)),
        }
    }

    /// Every delta entry names files as litekeeper names them, in the directory itself:
    /// restores and chain retention join these names to the directory, to read and delete.
    /// (A full backup's entry is only followed for a name the listing found in the
    /// directory: see [`backup_of`].)
    fn check(&self) -> Result<(), String> {
        for (i, d) in self.deltas.iter().enumerate() {
            let ours = |name: Option<&str>| name.is_some_and(|s| s == d.series && plain_name(s));
            let full = |f: &str| BackupName::parse(f).filter(|n| !n.failed).map(|n| n.series);
            let delta = |f: &str| crate::chain::DeltaName::parse(f).map(|n| n.series);
            if !ours(delta(&d.file).as_deref()) {
                return Err(format!(
                    "deltas[{i}]: file {:?} is not a delta file name of series {:?}",
                    d.file, d.series
                ));
            }
            if !ours(full(&d.base).as_deref()) {
                return Err(format!(
                    "deltas[{i}]: base {:?} is not a full backup of series {:?}",
                    d.base, d.series
                ));
            }
            if d.prev != d.base && !ours(delta(&d.prev).as_deref()) {
                return Err(format!(
                    "deltas[{i}]: prev {:?} is neither its base nor a delta of series {:?}",
                    d.prev, d.series
                ));
            }
        }
        Ok(())
    }

    pub fn get(&self, file: &str) -> Option<&Entry> {
        self.backups.iter().find(|e| e.file == file)
    }

    /// Add or replace the entry for `entry.file`.
    pub fn upsert(&mut self, entry: Entry) {
        self.backups.retain(|e| e.file != entry.file);
        self.backups.push(entry);
        self.backups
            .sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.file.cmp(&b.file)));
    }

    /// Drop entries whose file is gone.
    pub fn retain_existing(&mut self, dir: &Path) {
        self.backups.retain(|e| dir.join(&e.file).exists());
        self.deltas.retain(|d| dir.join(&d.file).exists());
    }

    /// Write atomically to `dir/manifest.json`, with the directory's lock held (the caller
    /// loaded the manifest under the same lock: no other job's update is lost).
    pub fn save(&self, dir: &Path, _held: &DirLock) -> Result<(), ArchiveError> {
        let mut m = self.clone();
        m.version = 1;
        let bytes = serde_json::to_vec_pretty(&m).expect("manifest serializes");
        write_atomic(&dir.join(MANIFEST), &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn names_round_trip_and_foreign_names_are_ignored() {
        let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        for (compressed, failed, text) in [
            (false, false, "chatbot-20260102-030405.db"),
            (true, false, "chatbot-20260102-030405.db.zst"),
            (false, true, "chatbot-20260102-030405.db.failed"),
        ] {
            let n = BackupName {
                series: "chatbot".into(),
                time: t,
                compressed,
                failed,
            };
            assert_eq!(n.file_name(), text);
            assert_eq!(BackupName::parse(text), Some(n));
        }
        let n = BackupName::parse("my-app-20260102-030405.db").unwrap();
        assert_eq!(n.series, "my-app");
        for foreign in [
            "chatbot.db",
            "chatbot-2026-01-02.db",
            "-20260102-030405.db",
            "chatbot-20261302-030405.db",
            ".chatbot-20260102-030405.db.litekeeper-tmp",
            DIR_LOCK,
            "manifest.json",
            "notes-20260102-030405.txt",
        ] {
            assert_eq!(BackupName::parse(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn only_backup_names_of_the_given_series_are_backups() {
        let series = ["a".to_string(), "att".to_string()];
        assert!(backup_of("a-20260102-030405.db", &series).is_some());
        assert!(backup_of("att-20260102-030405.db.zst.failed", &series).is_some());
        for not in [
            "b-20260102-030405.db",
            MANIFEST,
            DIR_LOCK,
            ".a-20260102-030405.db.litekeeper-tmp",
            "a.db",
        ] {
            assert!(backup_of(not, &series).is_none(), "{not}");
        }
    }

    #[test]
    fn leftovers_are_cleaned_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let keep = ["chatbot-20260102-030405.db", "notes.txt", ".hidden"];
        for k in keep {
            fs::write(dir.path().join(k), b"x").unwrap();
        }
        fs::write(temp_path(dir.path(), "chatbot-20260102-040000.db"), b"x").unwrap();
        fs::write(
            dir.path()
                .join(".chatbot-20260102-040000.db.litekeeper-tmp-journal"),
            b"x",
        )
        .unwrap();
        let live = create_temp(&temp_path(dir.path(), "other-20260102-040000.db")).unwrap();
        let held = lock_dir(dir.path()).unwrap();
        assert_eq!(clean_leftovers(dir.path(), &held).unwrap().len(), 2);
        for k in keep {
            assert!(dir.path().join(k).exists(), "{k}");
        }
        assert!(live.path.exists(), "a live temp file was removed");
        let path = live.path.clone();
        drop(live);
        assert_eq!(clean_leftovers(dir.path(), &held).unwrap(), [path]);
        assert!(dir.path().join(DIR_LOCK).exists());
    }

    #[test]
    fn private_dir_refuses_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        ensure_private_dir(&real).unwrap();
        assert_eq!(
            fs::metadata(&real).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(
            ensure_private_dir(&link),
            Err(ArchiveError::Refused { .. })
        ));
    }

    #[test]
    fn commit_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let fin = dir.path().join("a-20260102-030405.db");
        fs::write(&fin, b"old").unwrap();
        let tmp = temp_path(dir.path(), "a-20260102-030405.db");
        fs::write(&tmp, b"new").unwrap();
        assert!(commit(&tmp, &fin).is_err());
        assert_eq!(fs::read(&fin).unwrap(), b"old");
    }
}
