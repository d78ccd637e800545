//! Restoring from an off-site copy (`restore DB --from REMOTE [BACKUP] --identity FILE`): the
//! copy is downloaded into a private staging directory in `state_dir`, its stored bytes
//! checked against the remote manifest's SHA-256, decrypted with the operator's age identity
//! (the daemon never has it), checked against the local backup's SHA-256, decompressed, and
//! then handed to the same `to_path`/`in_place` as a local backup. The staging directory is
//! removed when the `Fetched` is dropped; nothing is written elsewhere before every check.

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{BackupSource, RestoreError};
use crate::archive::{self, BackupName};
use crate::config::{Config, Database, Remote};
use crate::remote::{self, Copy, Downloaded, RemoteManifest, Store};

/// A copy fetched and checked, ready for the restore path; its staging directory goes with it.
pub(crate) struct Fetched {
    pub source: BackupSource,
    staging: PathBuf,
}

impl Drop for Fetched {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.staging);
    }
}

/// Removes a staging directory unless it was handed to a `Fetched`.
struct Staging(Option<PathBuf>);

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Fetch the copy `wanted` (a local file name or an object name; the newest copy of the main
/// database when None) of `db` from `remote_name`, decrypted with the identity file, into a
/// staging directory in `state_dir`.
pub(crate) fn fetch(
    config: &Config,
    db: &Database,
    remote_name: &str,
    wanted: Option<&str>,
    identity: Option<&Path>,
) -> Result<Fetched, RestoreError> {
    let remote = remote_of(config, db, remote_name)?;
    let identity = identity.ok_or_else(|| RestoreError::NoIdentity {
        remote: remote_name.to_string(),
    })?;
    let identities = read_identity(identity)?;
    let store = Store::open(remote).map_err(RestoreError::Remote)?;
    let manifest = RemoteManifest::load(&store, &db.name).map_err(RestoreError::Remote)?;
    let copy = pick_copy(&manifest, db, remote_name, wanted)?;
    let staging = config.daemon.state_dir.join(format!(
        "remote-restore-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    ));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&staging)
        .map_err(|cause| RestoreError::Staging {
            path: staging.clone(),
            cause,
        })?;
    let guard = Staging(Some(staging.clone()));
    let (source, _) = fetch_into(&store, db, &copy, &identities, &staging)?;
    let mut guard = guard;
    guard.0 = None;
    Ok(Fetched { source, staging })
}

/// The `[[remote]]` named `remote_name` among `db`'s backup remotes.
pub(crate) fn remote_of(
    config: &Config,
    db: &Database,
    remote_name: &str,
) -> Result<Arc<Remote>, RestoreError> {
    let backup = db
        .backup
        .as_ref()
        .ok_or_else(|| RestoreError::NoBackupSection {
            database: db.name.clone(),
        })?;
    config
        .remotes
        .iter()
        .find(|r| r.name == remote_name && backup.remotes.contains(&r.name))
        .cloned()
        .ok_or_else(|| RestoreError::NoSuchRemote {
            database: db.name.clone(),
            remote: remote_name.to_string(),
            known: backup.remotes.join(", "),
        })
}

/// The age identities in the file at `path`.
pub(crate) fn read_identity(path: &Path) -> Result<Vec<Box<dyn age::Identity>>, RestoreError> {
    age::IdentityFile::from_file(path.display().to_string())
        .map_err(|e| e.to_string())
        .and_then(|f| f.into_identities().map_err(|e| e.to_string()))
        .map_err(|cause| RestoreError::Identity {
            path: path.to_path_buf(),
            cause,
        })
}

/// The copy named `wanted` (local file or object name), or the newest of the main database.
fn pick_copy(
    manifest: &RemoteManifest,
    db: &Database,
    remote_name: &str,
    wanted: Option<&str>,
) -> Result<Copy, RestoreError> {
    match wanted {
        Some(w) => manifest
            .copies
            .iter()
            .find(|c| c.local_file == w || c.object == w),
        None => manifest
            .copies
            .iter()
            .filter(|c| c.series == db.backup_sources()[0].series)
            .max_by_key(|c| c.backup_time),
    }
    .cloned()
    .ok_or_else(|| RestoreError::NoRemoteCopy {
        remote: remote_name.to_string(),
        database: db.name.clone(),
        wanted: wanted.map(str::to_string),
    })
}

/// Download `copy` into the directory `dir` (the caller's, private), check it, decrypt and
/// decompress it into the plain file it restores: the restore library's source there, and
/// how long each step took.
pub(crate) fn fetch_into(
    store: &Store,
    db: &Database,
    copy: &Copy,
    identities: &[Box<dyn age::Identity>],
    dir: &Path,
) -> Result<(BackupSource, Downloaded), RestoreError> {
    let no_copy = || RestoreError::NoRemoteCopy {
        remote: store.remote.name.clone(),
        database: db.name.clone(),
        wanted: Some(copy.local_file.clone()),
    };
    let name = BackupName::parse(&copy.local_file)
        .filter(|n| !n.failed)
        .ok_or_else(no_copy)?;
    let live = db
        .backup_sources()
        .into_iter()
        .find(|s| s.series == name.series)
        .ok_or_else(|| RestoreError::NoLiveFile {
            file: copy.local_file.clone(),
            database: db.name.clone(),
        })?
        .path;
    let staging_err = |cause: std::io::Error| RestoreError::Staging {
        path: dir.to_path_buf(),
        cause,
    };
    let plain_name = BackupName {
        compressed: false,
        ..name.clone()
    };
    let plain_path = dir.join(plain_name.file_name());
    let mut out = std::io::BufWriter::new(
        archive::create_private(&plain_path).map_err(RestoreError::Commit)?,
    );
    let downloaded = dir.join(format!("{}.download", copy.object));
    let took = if name.compressed {
        // The local backup was .zst: decompress it on its way to the staged file.
        let mut z = zstd::stream::write::Decoder::new(&mut out).map_err(staging_err)?;
        let took = remote::download(store, &db.name, copy, &downloaded, identities, &mut z)
            .map_err(RestoreError::Remote)?;
        z.flush().map_err(staging_err)?;
        took
    } else {
        remote::download(store, &db.name, copy, &downloaded, identities, &mut out)
            .map_err(RestoreError::Remote)?
    };
    out.flush().map_err(staging_err)?;
    drop(out);
    let _ = std::fs::remove_file(&downloaded);
    let restored_size = std::fs::metadata(&plain_path).map_err(staging_err)?.len();
    let source = BackupSource {
        database: db.name.clone(),
        dir: dir.to_path_buf(),
        file: plain_name.file_name(),
        name: plain_name,
        verified: copy.verified.unwrap_or(crate::domain::Verified::None),
        restored_size,
        live,
        point: None,
    };
    Ok((source, took))
}
