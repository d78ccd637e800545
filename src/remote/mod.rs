//! Off-site copies of verified backups in object storage (`[[remote]]`): `store` opens a
//! remote (S3-compatible bucket or directory) with its credentials and turns client errors
//! into one line naming the remote and the cause; `pipeline` streams a local backup through
//! zstd and age encryption into a multipart upload and reads it back to check its SHA-256;
//! `cause` says why a request failed, in the operator's terms; `priority` lowers the threads
//! of an upload so that the application's own work comes first;
//! `manifest` is the remote's list of copies, written last (one PUT, atomic by object
//! semantics), by the one host that owns it. Nothing here touches a database: callers run it
//! after the local backup's commit, on a blocking thread (each `Store` has its own small
//! runtime).

mod cause;
mod manifest;
mod pipeline;
mod priority;
pub(crate) mod retain;
mod store;

pub(crate) use cause::Kind;
pub(crate) use manifest::{Copy, DeltaCopy, Recorded, RemoteManifest};
pub(crate) use pipeline::{download, read_back, Downloaded, Uploaded};
pub(crate) use priority::idle_io_this_thread;
pub(crate) use store::{RemoteError, Store};

use std::path::Path;

use chrono::{DateTime, Utc};

/// The object name of a local backup file: always encrypted (`.age`), compressed first
/// unless it already is (`.zst`).
pub(crate) fn object_name(local_file: &str) -> String {
    if local_file.ends_with(".zst") {
        format!("{local_file}.age")
    } else {
        format!("{local_file}.zst.age")
    }
}

/// What one copy to upload is made from.
#[derive(Debug, Clone)]
pub(crate) struct Source<'a> {
    pub database: &'a str,
    /// The database's backup directory: its lock serialises writers of the remote manifest.
    pub dir: &'a Path,
    pub path: &'a Path,
    pub file: &'a str,
    pub series: &'a str,
    /// SHA-256 of the local backup file, from the local manifest.
    pub sha256: &'a str,
    /// When the local backup was made.
    pub backup_time: DateTime<Utc>,
    pub verified: crate::domain::Verified,
    /// The local manifest's counts of a full backup (None for a delta).
    pub recorded: Option<Recorded>,
}

/// Upload one verified local backup to `store`, check it, and add it to the remote's
/// manifest (written last).
pub(crate) fn push(store: &Store, src: &Source<'_>) -> Result<Uploaded, RemoteError> {
    let (up, copy) = upload_copy(store, src)?;
    RemoteManifest::update(store, src.database, src.dir, |m| {
        m.upsert(copy);
        (true, ())
    })?;
    Ok(up)
}

/// Upload one delta of an incremental chain (`delta`: its local manifest entry) like a full
/// backup, and add it to the remote manifest's `deltas` with its place in the chain.
pub(crate) fn push_delta(
    store: &Store,
    src: &Source<'_>,
    delta: &crate::chain::DeltaEntry,
) -> Result<Uploaded, RemoteError> {
    let (up, copy) = upload_copy(store, src)?;
    let delta = DeltaCopy {
        copy,
        base: delta.base.clone(),
        sequence: delta.sequence,
        prev: delta.prev.clone(),
        page_count: delta.page_count,
        page_size: delta.page_size,
        image_sha256: delta.image_sha256.clone(),
    };
    RemoteManifest::update(store, src.database, src.dir, |m| {
        m.upsert_delta(delta);
        (true, ())
    })?;
    Ok(up)
}

/// The pipeline for one local file: compressed (unless it is), encrypted, uploaded, read back;
/// refused before anything is put when another host owns the remote's manifest.
fn upload_copy(store: &Store, src: &Source<'_>) -> Result<(Uploaded, Copy), RemoteError> {
    RemoteManifest::claim(store, src.database)?;
    let object = object_name(src.file);
    let key = store.key(src.database, &object);
    let compress = !src.file.ends_with(".zst");
    let up = pipeline::upload(store, &key, src.path, src.sha256, compress)?;
    let copy = Copy {
        object,
        local_file: src.file.to_string(),
        series: src.series.to_string(),
        size: up.size,
        sha256: up.sha256.clone(),
        source_sha256: src.sha256.to_string(),
        backup_time: src.backup_time,
        created_at: Utc::now(),
        verified: Some(src.verified),
        recorded: src.recorded.clone(),
        drill: None,
    };
    Ok((up, copy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(
            object_name("chat-20260101-000000.db"),
            "chat-20260101-000000.db.zst.age"
        );
        assert_eq!(
            object_name("chat-20260101-000000.db.zst"),
            "chat-20260101-000000.db.zst.age"
        );
    }
}
