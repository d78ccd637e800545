//! Why a restore stopped: one variant per refusal or failed step, each carrying the path it
//! concerns, and the exit code each maps to (README, "Exit codes").

use std::io;
use std::path::PathBuf;

use crate::archive::{ArchiveError, DrillMark};
use crate::domain::human_bytes;
use crate::exit::ExitCode;
use crate::lock::LockError;
use crate::privileges::SwitchError;

use super::open_check::pid_list;

/// A restore that did not happen, or did not finish. Every variant's text is one line that
/// names the path and says what the operator can do.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// An off-site copy could not be fetched or failed its checks.
    #[error(transparent)]
    Remote(crate::remote::RemoteError),
    #[error("restoring from remote {remote:?} needs --identity FILE: the age identity whose public key is in the remote's encrypt_to (the daemon never holds it); nothing was written")]
    NoIdentity { remote: String },
    #[error("{}: cannot read the age identity: {cause}; nothing was written", path.display())]
    Identity { path: PathBuf, cause: String },
    #[error("database {database:?} has no remote {remote:?} (its backup.remotes: {known})")]
    NoSuchRemote {
        database: String,
        remote: String,
        known: String,
    },
    #[error("remote {remote:?} has no copy {} of database {database:?}; see `litekeeper backups list {database} --remote {remote}`", wanted.as_deref().map(|w| format!("{w:?}")).unwrap_or_else(|| "at all".into()))]
    NoRemoteCopy {
        remote: String,
        database: String,
        wanted: Option<String>,
    },
    #[error("{}: cannot stage the download: {cause}", path.display())]
    Staging { path: PathBuf, cause: io::Error },
    #[error("database {database:?} has no [database.backup] section, so it has no backups")]
    NoBackupSection { database: String },
    /// The manifest could not be read.
    #[error(transparent)]
    Manifest(ArchiveError),
    /// The backup directory could not be listed.
    #[error(transparent)]
    ListBackups(ArchiveError),
    #[error("{}: no backup named {wanted:?}; see `litekeeper backups list {database}`", dir.display())]
    NoSuchBackup {
        dir: PathBuf,
        wanted: String,
        database: String,
    },
    #[error("{}: no verified backup of {database:?} to restore", dir.display())]
    NoVerifiedBackup { dir: PathBuf, database: String },
    /// Every copy a restore would pick by default failed its last drill: the newest is
    /// named, with its drill, and how to restore it anyway (naming it).
    #[error("{0}")]
    AllDrillsFailed(Box<DrillsFailed>),
    #[error("{}: not in {}/manifest.json, so its checksum cannot be verified; refusing", path.display(), dir.display())]
    NotInManifest { path: PathBuf, dir: PathBuf },
    /// The backup file could not be read to compute its checksum.
    #[error(transparent)]
    Checksum(ArchiveError),
    #[error("{}: checksum mismatch (SHA-256 {}…, manifest says {}…): the backup is damaged; pick another with `litekeeper backups list {database}`", path.display(), short(actual), short(expected))]
    ChecksumMismatch {
        path: PathBuf,
        actual: String,
        expected: String,
        database: String,
    },
    #[error("{}: no full backup of {database:?} at or before {at}; see `litekeeper backups list {database}`", dir.display())]
    NoPointBefore {
        dir: PathBuf,
        database: String,
        /// `now` or a UTC time.
        at: String,
    },
    #[error("{}: cannot build point {point}: {cause}", dir.display())]
    Chain {
        dir: PathBuf,
        point: String,
        cause: io::Error,
    },
    #[error("{}: the image built for this point has SHA-256 {}…, the manifest says {}…; nothing was restored; pick an earlier point with `litekeeper backups list`", point.display(), short(actual), short(expected))]
    ImageMismatch {
        point: PathBuf,
        actual: String,
        expected: String,
    },
    #[error("{file}: belongs to no file of database {database:?}")]
    NoLiveFile { file: String, database: String },
    /// The current directory, for a relative `--to` path.
    #[error("cannot read the current directory: {0}")]
    CurrentDir(io::Error),
    #[error("{}: a symlink to {}, which cannot be reached ({cause}); restore --to a new path, or correct the link", path.display(), points_to.display())]
    DanglingLink {
        path: PathBuf,
        points_to: PathBuf,
        cause: io::Error,
    },
    #[error("{}: not a regular file; move it away, then restore --in-place (or restore --to a new path)", path.display())]
    NotRegular { path: PathBuf },
    #[error("{}: directory does not exist", dir.display())]
    NoDirectory { dir: PathBuf },
    /// `--to` names something that is not a new file of its own.
    #[error("{}: {reason}", target.display())]
    TargetRefused { target: PathBuf, reason: String },
    #[error(transparent)]
    SwitchUser(SwitchError),
    #[error("database {database:?} is busy, {holder}; retry when it is done")]
    Busy { database: String, holder: String },
    #[error(transparent)]
    Lock(LockError),
    #[error("{}: open by other processes (pid {}); stop the application first, or pass --force", target.display(), pid_list(pids))]
    OpenByOthers { target: PathBuf, pids: Vec<u32> },
    #[error("{}: could not check whether other processes have it open: the open files of {} process(es) of other users who may open it are not readable as uid {uid} (pid {}); stop the application, then pass --force, or run restore as root", target.display(), pids.len(), pid_list(pids))]
    OpenersUnknown {
        target: PathBuf,
        pids: Vec<u32>,
        uid: u32,
    },
    /// The live file could not be made whole by itself (WAL fold, hot journal).
    #[error("{}: {why}; it was not replaced. If the application is running, stop it first; if the file is damaged, pass --force to restore over it anyway (it is kept as {}.pre-restore-… with the journal or WAL that is left beside it)", target.display(), target.display())]
    NotWhole {
        target: PathBuf,
        why: String,
        busy: bool,
    },
    /// Free space could not be measured, a file or directory not fsynced.
    #[error(transparent)]
    Sync(ArchiveError),
    #[error("{}: not enough free space to restore: needs {}, {} free; free some space or restore --to a larger file system. Nothing was written", dir.display(), human_bytes(*need), human_bytes(*free))]
    NoSpace { dir: PathBuf, need: u64, free: u64 },
    #[error(transparent)]
    CreateTemp(ArchiveError),
    #[error("{}: cannot open the backup: {cause}", path.display())]
    OpenBackup { path: PathBuf, cause: io::Error },
    #[error("{}: cannot read the backup: {cause}", path.display())]
    ReadBackup { path: PathBuf, cause: io::Error },
    #[error("{}: cannot write the restored copy: {cause}{}. Nothing was put in place", dir.display(), no_space_hint(cause))]
    WriteTemp { dir: PathBuf, cause: io::Error },
    #[error("{}: {why}; the backup is damaged, nothing was changed", backup.display())]
    BackupFailsCheck { backup: PathBuf, why: String },
    #[error("{}: stale, and cannot be moved aside ({cause}); remove it or restore --to another path", path.display())]
    MoveAside { path: PathBuf, cause: io::Error },
    /// A step of the in-place swap failed on `path`.
    #[error("{}: {action}: {cause}", path.display())]
    Swap {
        path: PathBuf,
        action: &'static str,
        cause: io::Error,
    },
    #[error("{}: cannot remove it ({cause}); nothing was replaced, the previous file is also kept as {}", path.display(), keep.display())]
    RemoveSidecar {
        path: PathBuf,
        keep: PathBuf,
        cause: io::Error,
    },
    /// The restored file could not take the `--to` name.
    #[error(transparent)]
    Commit(ArchiveError),
    /// The restored file, in place, failed its check; `back` says whether the previous file
    /// (kept as `keep`) is back.
    #[error("{}", restored_fails_check(target, why, back.as_ref().err(), keep))]
    RestoredFailsCheck {
        target: PathBuf,
        why: String,
        keep: PathBuf,
        back: Result<(), io::Error>,
    },
    /// A file of a set failed after others were already done; they were undone (`how`: put
    /// back in place, removed with `--to`), so nothing was changed.
    #[error(
        "{inner}; the file(s) of the set already done were {how} ({}): nothing was changed",
        path_list(put_back)
    )]
    SetUndone {
        inner: Box<RestoreError>,
        put_back: Vec<PathBuf>,
        how: &'static str,
    },
    /// A file of a set failed after others were replaced, and putting them back failed too:
    /// `marker` lists the files and where the previous ones are kept.
    #[error("{inner}; putting back the files already replaced failed ({cause}): {} lists which are restored and where the previous ones are kept; run the same restore again to finish it", marker.display())]
    SetHalfDone {
        inner: Box<RestoreError>,
        cause: io::Error,
        marker: PathBuf,
    },
    /// An earlier restore of the set was interrupted between its files, and its previous
    /// files could not be put back.
    #[error("{}: an earlier restore was interrupted between its files, and putting back the previous ones failed ({cause}); put them back by hand as it lists, then remove it", marker.display())]
    Interrupted { marker: PathBuf, cause: io::Error },
    /// `inner` happened after stale sidecar files were moved aside (`moved`: from, to).
    #[error("{inner} (stale files moved aside before: {})", moved_list(moved))]
    AfterMovingAside {
        moved: Vec<(PathBuf, PathBuf)>,
        inner: Box<RestoreError>,
    },
}

impl RestoreError {
    /// The exit code `litekeeper restore` ends with.
    pub fn exit_code(&self) -> ExitCode {
        use RestoreError::*;
        match self {
            Remote(e) => e.code,
            NoIdentity { .. } | NoSuchRemote { .. } => ExitCode::Usage,
            Identity { .. } | NoRemoteCopy { .. } => ExitCode::NoInput,
            Staging { .. } => ExitCode::CantCreate,
            NoBackupSection { .. } => ExitCode::Config,
            NoLiveFile { .. } => ExitCode::Usage,
            Manifest(_)
            | NotInManifest { .. }
            | ChecksumMismatch { .. }
            | Chain { .. }
            | ImageMismatch { .. }
            | ReadBackup { .. }
            | BackupFailsCheck { .. }
            | RestoredFailsCheck { .. } => ExitCode::DataErr,
            NotWhole { busy: false, .. } => ExitCode::DataErr,
            NotWhole { busy: true, .. }
            | Busy { .. }
            | OpenByOthers { .. }
            | OpenersUnknown { .. } => ExitCode::TempFail,
            ListBackups(_)
            | NoSuchBackup { .. }
            | NoVerifiedBackup { .. }
            | AllDrillsFailed(_)
            | NoPointBefore { .. }
            | Checksum(_)
            | DanglingLink { .. }
            | NotRegular { .. }
            | OpenBackup { .. } => ExitCode::NoInput,
            NoDirectory { .. }
            | TargetRefused { .. }
            | SwitchUser(_)
            | Lock(_)
            | NoSpace { .. }
            | CreateTemp(_)
            | MoveAside { .. }
            | Commit(_) => ExitCode::CantCreate,
            CurrentDir(_) | Sync(_) | WriteTemp { .. } | Swap { .. } | RemoveSidecar { .. } => {
                ExitCode::IoErr
            }
            AfterMovingAside { inner, .. } | SetUndone { inner, .. } => inner.exit_code(),
            SetHalfDone { .. } | Interrupted { .. } => ExitCode::IoErr,
        }
    }
}

/// What [`RestoreError::AllDrillsFailed`] says.
#[derive(Debug)]
pub struct DrillsFailed {
    /// The backup directory, or `remote "NAME"`.
    pub place: String,
    /// "verified backup", "full backup at or before …".
    pub what: String,
    pub database: String,
    /// The newest copy, and its drill.
    pub newest: String,
    pub mark: DrillMark,
    /// The remote, for the override's `--from`.
    pub from: Option<String>,
}

impl std::fmt::Display for DrillsFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let DrillsFailed {
            place,
            what,
            database,
            newest,
            mark,
            from,
        } = self;
        write!(
            f,
            "{place}: every {what} of {database:?} failed its restore drill; the newest, {newest}, failed it at {} ({}); to restore it anyway, name it: `litekeeper restore {database} {newest}{} --to NEW_PATH`",
            mark.at.format("%Y-%m-%d %H:%M:%S UTC"),
            mark.error.as_deref().unwrap_or("no reason recorded"),
            from.as_deref().map(|r| format!(" --from {r}")).unwrap_or_default()
        )
    }
}

/// The first 12 hex digits of a checksum.
fn short(sha: &str) -> &str {
    &sha[..12.min(sha.len())]
}

fn no_space_hint(e: &io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        "; free some space or restore --to a larger file system"
    } else {
        ""
    }
}

fn restored_fails_check(
    target: &std::path::Path,
    why: &str,
    back: Option<&io::Error>,
    keep: &std::path::Path,
) -> String {
    match back {
        None => format!(
            "{}: the restored file fails its check ({why}); the previous database is back in place",
            target.display()
        ),
        Some(e) => format!(
            "{}: the restored file fails its check ({why}), and putting the previous database back failed ({e}): it is {}",
            target.display(),
            keep.display()
        ),
    }
}

fn moved_list(moved: &[(PathBuf, PathBuf)]) -> String {
    moved
        .iter()
        .map(|(from, to)| format!("{} to {}", from.display(), to.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn path_list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
