//! Restoring from an off-site copy (`restore DB --from REMOTE [BACKUP] --identity FILE`, and
//! `--at WHEN`: a point of an incremental chain, [`fetch_at`]): the copy is downloaded into a private staging directory in `state_dir`, its stored bytes
//! checked against the remote manifest's SHA-256, decrypted with the operator's age identity
//! (the daemon never has it), checked against the local backup's SHA-256, decompressed, and
//! then handed to the same `to_path`/`in_place` as a local backup. The staging directory is
//! removed when the `Fetched` is dropped; nothing is written elsewhere before every check.

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::point::{At, Broken, Point};
use super::{BackupSource, Drilled, RestoreError};
use crate::archive::{self, BackupName};
use crate::chain::DeltaEntry;
use crate::config::{Config, Database, Remote};
use crate::domain::ExitCode;
use crate::remote::{self, Copy, DeltaCopy, Downloaded, RemoteError, RemoteManifest, Store};

/// Copies fetched and checked, ready for the restore path (the main database first, then
/// attached ones); their staging directory goes with them.
pub(crate) struct Fetched {
    pub sources: Vec<BackupSource>,
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

/// A remote opened for restore: its store, the operator's identities and `db`'s manifest there.
struct Opened {
    store: Store,
    identities: Vec<Box<dyn age::Identity>>,
    manifest: RemoteManifest,
}

/// Open `remote_name` of `db` with the operator's identity file and load its manifest.
fn open(
    config: &Config,
    db: &Database,
    remote_name: &str,
    identity: Option<&Path>,
) -> Result<Opened, RestoreError> {
    let remote = remote_of(config, db, remote_name)?;
    let identity = identity.ok_or_else(|| RestoreError::NoIdentity {
        remote: remote_name.to_string(),
    })?;
    let identities = read_identity(identity)?;
    let store = Store::open(remote).map_err(RestoreError::Remote)?;
    let manifest = RemoteManifest::load(&store, &db.name).map_err(RestoreError::Remote)?;
    Ok(Opened {
        store,
        identities,
        manifest,
    })
}

/// A new private staging directory in `state_dir` (removed on drop unless kept).
fn staging(config: &Config) -> Result<Staging, RestoreError> {
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
    Ok(Staging(Some(staging)))
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

/// The copy named `wanted` (local file or object name), or the newest of the main database
/// whose last drill (if any) did not fail.
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
        // A copy whose last drill failed is not restored unless named (as locally).
        None => {
            let main = &db.backup_sources()[0].series;
            let mut copies: Vec<&Copy> = manifest
                .copies
                .iter()
                .filter(|c| &c.series == main)
                .collect();
            copies.sort_by_key(|c| std::cmp::Reverse(c.backup_time));
            match super::drilled(copies, |c| c.drill.as_ref().filter(|_| c.drill_failed())) {
                Drilled::Pick((c, _)) => Some(c),
                Drilled::AllFailed(c, mark) => {
                    return Err(all_failed(remote_name, "copy", db, c, mark));
                }
                Drilled::NoCopy => None,
            }
        }
    }
    .cloned()
    .ok_or_else(|| RestoreError::NoRemoteCopy {
        remote: remote_name.to_string(),
        database: db.name.clone(),
        wanted: wanted.map(str::to_string),
    })
}

/// Every copy of `remote_name` a restore would pick failed its drill: the newest, `c`.
fn all_failed(
    remote_name: &str,
    what: &str,
    db: &Database,
    c: &Copy,
    mark: crate::archive::DrillMark,
) -> RestoreError {
    super::all_drills_failed(
        format!("remote {remote_name:?}"),
        what,
        db,
        &c.local_file,
        mark,
        Some(remote_name),
    )
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
        // Checked on download (the stored bytes and the local file's SHA-256).
        sha256: None,
    };
    Ok((source, took))
}

/// Download the delta `d` into `dir` as the local delta file it was made from (checked
/// against the stored SHA-256 and the local file's); its manifest entry for `chain`, and how
/// long decrypting and decompressing took.
fn stage_delta(
    store: &Store,
    identities: &[Box<dyn age::Identity>],
    db: &Database,
    d: &DeltaCopy,
    dir: &Path,
) -> Result<(DeltaEntry, Downloaded), RemoteError> {
    let path = dir.join(&d.copy.local_file);
    let what = format!("staging {}", path.display());
    let mut out = std::io::BufWriter::new(
        archive::create_private(&path)
            .map_err(|e| store.other(&what, e.to_string(), ExitCode::CantCreate))?,
    );
    let downloaded = dir.join("download.age");
    let took = remote::download(store, &db.name, &d.copy, &downloaded, identities, &mut out)?;
    let _ = std::fs::remove_file(&downloaded);
    out.flush()
        .map_err(|e| store.other(&what, e.to_string(), ExitCode::IoErr))?;
    drop(out);
    let size = std::fs::metadata(&path)
        .map_err(|e| store.other(&what, e.to_string(), ExitCode::IoErr))?
        .len();
    Ok((d.entry(&db.name, size), took))
}

/// One point of a remote chain, for the restore library: the full copy `full` of a series
/// and the deltas of its chain from it to `target` (`m`'s links), downloaded and checked
/// into `dir` (`fetch_into`, `stage_delta`); the image is proven against the point's
/// SHA-256 by the restore. A link missing from the remote (not in `m`, deleted or damaged in
/// the store) stops the way at the last good point before it, named in `Point::broken`.
/// Used by `fetch_at` and by drills of a remote's chain points.
pub(crate) fn fetch_point_into(
    store: &Store,
    identities: &[Box<dyn age::Identity>],
    m: &RemoteManifest,
    db: &Database,
    full: &Copy,
    target: &DeltaCopy,
    dir: &Path,
) -> Result<(BackupSource, Downloaded), RestoreError> {
    let (mut source, mut took) = fetch_into(store, db, full, identities, dir)?;
    let (way, missing) = way_to(m, full, target);
    let mut broken = missing.map(|link| Broken {
        link,
        why: "missing from the remote manifest".into(),
        wanted: target.copy.local_file.clone(),
    });
    let mut deltas = Vec::new();
    for d in way {
        match stage_delta(store, identities, db, d, dir) {
            Ok((e, t)) => {
                took.decrypt += t.decrypt;
                took.decode += t.decode;
                deltas.push(e);
            }
            // The object is gone or damaged: the way ends before it.
            Err(e) if e.code == ExitCode::DataErr => {
                broken = Some(Broken {
                    link: d.copy.local_file.clone(),
                    why: e.to_string(),
                    wanted: target.copy.local_file.clone(),
                });
                break;
            }
            Err(e) => return Err(RestoreError::Remote(e)),
        }
    }
    source.restored_size = deltas
        .iter()
        .map(|d| d.page_count * d.page_size)
        .fold(source.restored_size, u64::max);
    source.point = Some(Point::reached(
        &full.local_file,
        full.backup_time,
        deltas,
        broken,
    ));
    Ok((source, took))
}

/// Restore from a remote to a point in time (`restore DB --at WHEN --from REMOTE`): for the
/// main database and each attached one, the newest full copy at or before `at` and the deltas
/// of its chain up to the newest point at or before it, downloaded and checked (stored
/// SHA-256, decrypted, the local file's SHA-256) into one staging directory; each image is
/// proven against its point's SHA-256 by the restore library. A link missing from the remote
/// (not in its manifest, deleted or damaged in the store) stops that file's way at the last
/// good point before it, named in `Point::broken`, as a local chain does.
pub(crate) fn fetch_at(
    config: &Config,
    db: &Database,
    remote_name: &str,
    at: At,
    identity: Option<&Path>,
) -> Result<Fetched, RestoreError> {
    let o = open(config, db, remote_name, identity)?;
    let until = at.until();
    let mut guard = staging(config)?;
    let dir = guard.0.clone().expect("staging");
    let mut sources = Vec::new();
    for s in db.backup_sources() {
        let mut fulls: Vec<&Copy> = o
            .manifest
            .copies
            .iter()
            .filter(|c| c.series == s.series && c.backup_time <= until)
            .filter(|c| BackupName::parse(&c.local_file).is_some_and(|n| !n.failed))
            .collect();
        fulls.sort_by_key(|c| std::cmp::Reverse(c.backup_time));
        // A full copy whose last drill failed is passed over like a missing one.
        let (full, skipped) =
            match super::drilled(fulls, |c| c.drill.as_ref().filter(|_| c.drill_failed())) {
                Drilled::Pick(picked) => picked,
                Drilled::AllFailed(c, mark) => {
                    let what = format!("full copy at or before {at}");
                    return Err(all_failed(remote_name, &what, db, c, mark));
                }
                Drilled::NoCopy => {
                    return Err(RestoreError::NoRemoteCopy {
                        remote: remote_name.to_string(),
                        database: db.name.clone(),
                        wanted: Some(format!(
                            "of {} at or before {}",
                            s.series,
                            config.daemon.timezone.format(until)
                        )),
                    })
                }
            };
        let target = o
            .manifest
            .deltas
            .iter()
            .filter(|d| {
                d.copy.series == s.series
                    && d.base == full.local_file
                    && d.copy.backup_time <= until
            })
            .max_by_key(|d| (d.copy.backup_time, d.sequence));
        let (mut source, _) = match target {
            Some(target) => {
                fetch_point_into(&o.store, &o.identities, &o.manifest, db, full, target, &dir)?
            }
            None => fetch_into(&o.store, db, full, &o.identities, &dir)?,
        };
        // A newer full copy whose drill failed: what is restored is older than asked.
        if let Some((failed, mark)) = skipped {
            let wanted = o
                .manifest
                .deltas
                .iter()
                .filter(|d| d.base == failed.local_file && d.copy.backup_time <= until)
                .max_by_key(|d| (d.copy.backup_time, d.sequence))
                .map_or(failed.local_file.clone(), |d| d.copy.local_file.clone());
            let lost = Broken {
                link: failed.local_file.clone(),
                why: super::drill_failed_why(&mark),
                wanted,
            };
            super::point::lost_newer(&mut source, &full.local_file, full.backup_time, lost);
        }
        // A newer point at or before `at` on a chain whose full copy is not in the manifest:
        // what is restored is older than asked, and says so (as a local chain does).
        let reached = target.map_or(full.backup_time, |t| t.copy.backup_time);
        let newer = o
            .manifest
            .deltas
            .iter()
            .filter(|d| d.copy.series == s.series && d.base != full.local_file)
            // Its full copy listed (older, the delta dated ahead of the clock): not lost.
            .filter(|d| !o.manifest.copies.iter().any(|c| c.local_file == d.base))
            .filter(|d| d.copy.backup_time <= until && d.copy.backup_time > reached)
            .max_by_key(|d| (d.copy.backup_time, d.sequence));
        if let Some(n) = newer {
            let lost = Broken {
                link: n.base.clone(),
                why: "the full copy its chain starts from is missing from the remote manifest"
                    .into(),
                wanted: n.copy.local_file.clone(),
            };
            super::point::lost_newer(&mut source, &full.local_file, full.backup_time, lost);
        }
        sources.push(source);
    }
    guard.0 = None;
    Ok(Fetched {
        sources,
        staging: dir,
    })
}

/// The deltas from `full` to `target` in the remote manifest, in order. When a link is not
/// in the manifest, the way is the chain's whole prefix from the base (each delta the next
/// one's `prev`) and the missing link's name is returned with it.
fn way_to<'a>(
    m: &'a RemoteManifest,
    full: &Copy,
    target: &'a DeltaCopy,
) -> (Vec<&'a DeltaCopy>, Option<String>) {
    let of_chain = |file: &str| {
        m.deltas
            .iter()
            .find(|d| d.copy.local_file == file && d.base == full.local_file)
    };
    let mut back = vec![target];
    loop {
        let last = back[back.len() - 1];
        if last.prev == full.local_file {
            back.reverse();
            return (back, None);
        }
        match of_chain(&last.prev) {
            Some(d) if !back.iter().any(|b| b.copy.object == d.copy.object) => back.push(d),
            _ => {
                let missing = last.prev.clone();
                // Forward from the base while the links are there.
                let mut way: Vec<&DeltaCopy> = Vec::new();
                let mut at = full.local_file.clone();
                while let Some(next) = m.deltas.iter().find(|d| {
                    d.prev == at && d.base == full.local_file && d.sequence < target.sequence
                }) {
                    at = next.copy.local_file.clone();
                    way.push(next);
                }
                return (way, Some(missing));
            }
        }
    }
}

/// Restore from a remote copy (`restore DB --from REMOTE [BACKUP]`): the copy named (its
/// local file name or object name), or the newest copy of the main database.
pub(crate) fn fetch(
    config: &Config,
    db: &Database,
    remote_name: &str,
    wanted: Option<&str>,
    identity: Option<&Path>,
) -> Result<Fetched, RestoreError> {
    let o = open(config, db, remote_name, identity)?;
    let copy = pick_copy(&o.manifest, db, remote_name, wanted)?;
    let mut guard = staging(config)?;
    let dir = guard.0.clone().expect("staging");
    let (source, _) = fetch_into(&o.store, db, &copy, &o.identities, &dir)?;
    guard.0 = None;
    Ok(Fetched {
        sources: vec![source],
        staging: dir,
    })
}
