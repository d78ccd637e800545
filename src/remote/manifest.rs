//! The remote's manifest, `{prefix}/{database}/litekeeper-manifest.json`: every copy
//! litekeeper made there, with the SHA-256 and size of the stored bytes, the SHA-256 of the
//! local backup it came from, and when; the deltas of incremental chains (`deltas`) with their
//! place in the chain (base, sequence, previous point, image SHA-256). Written last, after the copy is stored and checked,
//! in one PUT (readers see the old or the new list, never half of one). Retention and
//! listing touch only objects it names.
//!
//! The remote is untrusted: a manifest is refused at load (65, naming the entry) unless every
//! name in it is one litekeeper makes — a backup or delta file name of a plain series (no
//! `/`, no control character, no leading dot), its object that name's copy (`object_name`),
//! a delta's `base` a full backup and `prev` the base or a delta of the same series — so no
//! entry can lead a download out of its staging directory or retention to another object.
//!
//! Many hosts, one bucket: the manifest records the host that writes it (`host`, the remote's
//! `Remote::host`). Another host never writes it — no push, retention or drill mark: `update`
//! and `check_owner` (called before an upload puts an object) refuse with one line naming
//! both hosts and the two ways out (`{host}` in the url, or `backups push --adopt`, which is
//! `adopt`). Reading needs no ownership: any host lists and restores any prefix. A manifest
//! without `host` (written before hosts were recorded) is taken by the first host that writes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::store::{RemoteError, Store};
use crate::archive::BackupName;
use crate::archive::{self, DrillMark};
use crate::chain::DeltaName;
use crate::domain::ExitCode;

/// `c` is the copy of a file named as litekeeper names them, of the series `parsed` read from
/// its `local_file` (None: not such a name).
fn check_copy(c: &Copy, parsed: Option<&str>) -> Result<(), String> {
    match parsed {
        Some(series) if series == c.series && archive::plain_name(series) => {}
        _ => {
            return Err(format!(
                "local_file {:?} is not a backup file name of series {:?}",
                c.local_file, c.series
            ))
        }
    }
    let object = super::object_name(&c.local_file);
    if c.object != object {
        return Err(format!(
            "object {:?} is not the copy of {:?} (that is {object:?})",
            c.object, c.local_file
        ));
    }
    Ok(())
}

pub(super) const MANIFEST_NAME: &str = "litekeeper-manifest.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Copy {
    /// Object name below `{prefix}/{database}/`.
    pub object: String,
    /// The local backup file it is a copy of.
    pub local_file: String,
    pub series: String,
    /// Size and SHA-256 of the stored (encrypted) bytes.
    pub size: u64,
    pub sha256: String,
    /// SHA-256 of the local backup file.
    pub source_sha256: String,
    /// When the local backup was made.
    pub backup_time: DateTime<Utc>,
    /// When the copy was stored.
    pub created_at: DateTime<Utc>,
    /// How the local backup was checked when it was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<crate::domain::Verified>,
    /// What the local manifest recorded of the backup when it was taken, so a drill of the
    /// copy can compare without it (absent: a delta, or an older manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded: Option<Recorded>,
    /// The last restore drill of this copy (absent: never drilled, or an older manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillMark>,
}

/// A backup's counts at backup time, from its local manifest entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Recorded {
    /// Pages of the source snapshot.
    pub page_count: u64,
    /// Rows per table (empty when the backup was not verified: `verify = "none"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tables: BTreeMap<String, i64>,
    /// foreign_key_check violations in the source snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fk_violations: Option<i64>,
}

impl From<&crate::archive::Entry> for Recorded {
    fn from(e: &crate::archive::Entry) -> Recorded {
        Recorded {
            page_count: e.page_count,
            tables: e.tables.clone(),
            fk_violations: e.fk_violations,
        }
    }
}

impl Copy {
    /// Its last drill failed: never the "newest verified" copy remote retention must keep,
    /// never restored unless named.
    pub(crate) fn drill_failed(&self) -> bool {
        self.drill
            .as_ref()
            .is_some_and(|d| d.verdict == crate::domain::DrillVerdict::Failed)
    }
}

/// A copy of a delta file (one point of an incremental chain): the copy, and what the local
/// manifest says of its place in the chain, so a restore can rebuild and prove the point from
/// the remote alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DeltaCopy {
    #[serde(flatten)]
    pub copy: Copy,
    /// The full backup the chain starts from (its local file name; its copy is in `copies`).
    pub base: String,
    /// 1 for the first point after the base.
    pub sequence: u64,
    /// The point this one applies to: `base` or the previous delta (local file names).
    pub prev: String,
    /// Pages of the image at this point, their size, and the whole image's SHA-256.
    pub page_count: u64,
    pub page_size: u64,
    pub image_sha256: String,
}

impl DeltaCopy {
    /// The local manifest's record of this point, as a restore applies it (`size` is the
    /// fetched file's, known once it is downloaded).
    pub(crate) fn entry(&self, database: &str, size: u64) -> crate::chain::DeltaEntry {
        crate::chain::DeltaEntry {
            file: self.copy.local_file.clone(),
            series: self.copy.series.clone(),
            database: database.to_string(),
            created_at: self.copy.backup_time,
            base: self.base.clone(),
            sequence: self.sequence,
            prev: self.prev.clone(),
            page_count: self.page_count,
            page_size: self.page_size,
            pages_scanned: self.page_count,
            pages_changed: 0,
            image_sha256: self.image_sha256.clone(),
            size,
            sha256: self.copy.source_sha256.clone(),
            compressed: self.copy.local_file.ends_with(".zst"),
            duration_ms: 0,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RemoteManifest {
    pub version: u32,
    pub database: String,
    /// The host that writes this manifest (absent: written before hosts were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Full backups.
    pub copies: Vec<Copy>,
    /// Deltas of incremental chains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<DeltaCopy>,
}

impl RemoteManifest {
    /// A manifest listing nothing yet, owned by `host` (None: no owner recorded).
    fn empty(database: &str, host: Option<String>) -> RemoteManifest {
        RemoteManifest {
            version: 1,
            database: database.to_string(),
            host,
            copies: Vec::new(),
            deltas: Vec::new(),
        }
    }

    /// The manifest of `database` on `store` (empty when there is none yet).
    pub(crate) fn load(store: &Store, database: &str) -> Result<RemoteManifest, RemoteError> {
        let key = store.key(database, MANIFEST_NAME);
        match store.get_small(&key)? {
            None => Ok(RemoteManifest::empty(database, None)),
            Some(bytes) => {
                let refuse =
                    |cause: String| store.other(format!("reading {key}"), cause, ExitCode::DataErr);
                let m: RemoteManifest = serde_json::from_slice(&bytes)
                    .map_err(|e| refuse(format!("not a litekeeper manifest: {e}")))?;
                m.check(database).map_err(|e| {
                    refuse(format!(
                        "{e}: litekeeper did not write this manifest; restore it from a good copy or remove the entry"
                    ))
                })?;
                Ok(m)
            }
        }
    }

    /// The one way to change the manifest: load it, let `change` edit it, and save it when
    /// `change` says it changed, all under the exclusive lock of the database's backup
    /// directory `dir` (created if it is gone, as a backup would). Pushes (the database's
    /// lock), remote retention and drills (no database lock: they may run beside a backup)
    /// all write through here, so none overwrites another's edit with an older list.
    /// Another host's manifest is refused before `change` runs (see the module doc); one
    /// without an owner becomes this host's when `change` writes it.
    pub(crate) fn update<T>(
        store: &Store,
        database: &str,
        dir: &std::path::Path,
        change: impl FnOnce(&mut RemoteManifest) -> (bool, T),
    ) -> Result<T, RemoteError> {
        Self::update_as(store, database, dir, false, change)
    }

    /// Make this host the owner of `database`'s manifest on `store`, whoever owned it (a host
    /// replaced by this one: `backups push --adopt`); the previous owner (None: none was
    /// recorded, or there is no manifest yet). Copies, deltas and drills are kept as they are.
    pub(crate) fn adopt(
        store: &Store,
        database: &str,
        dir: &std::path::Path,
    ) -> Result<Option<String>, RemoteError> {
        Self::update_as(store, database, dir, true, |m| {
            let was = m.host.clone();
            (was.as_deref() != Some(store.remote.host.as_str()), was)
        })
    }

    /// Before an upload puts an object under `database`'s prefix: refuse when another host
    /// owns its manifest; when there is none yet, make this host the owner with an empty
    /// manifest put only if none exists, so of two hosts starting on one prefix at once the
    /// second is refused too (on a store without conditional puts the later one wins).
    pub(crate) fn claim(store: &Store, database: &str) -> Result<(), RemoteError> {
        let key = store.key(database, MANIFEST_NAME);
        if store.get_small(&key)?.is_none() {
            let mine = RemoteManifest::empty(database, Some(store.remote.host.clone()));
            if store.put_new(&key, mine.bytes())? {
                return Ok(());
            }
        }
        RemoteManifest::load(store, database)?.check_owner(store, database)
    }

    /// Refuse when another host owns this manifest: before an upload puts an object
    /// (`claim`), and in every `update`.
    pub(crate) fn check_owner(&self, store: &Store, database: &str) -> Result<(), RemoteError> {
        let this = store.remote.host.as_str();
        match self.host.as_deref() {
            Some(owner) if owner != this => {
                let prefix = store.key(database, "");
                Err(store.other(
                    format!("writing {prefix}"),
                    format!(
                        "the copies under {prefix} belong to host {owner:?} (this host is {this:?}) and are never written by another host; give each host its own prefix with {{host}} in the remote's url (url = \"{}/{{host}}\"), or, if this host replaces {owner:?}, take them over: litekeeper backups push {database} {} --adopt",
                        store.remote.url.trim_end_matches('/'),
                        store.remote.name
                    ),
                    ExitCode::Config,
                ))
            }
            _ => Ok(()),
        }
    }

    fn update_as<T>(
        store: &Store,
        database: &str,
        dir: &std::path::Path,
        adopt: bool,
        change: impl FnOnce(&mut RemoteManifest) -> (bool, T),
    ) -> Result<T, RemoteError> {
        let locked = || -> Result<archive::DirLock, archive::ArchiveError> {
            archive::ensure_private_dir(dir)?;
            archive::lock_dir(dir)
        };
        let held = locked().map_err(|e| {
            store.other(
                format!("updating {}", store.key(database, MANIFEST_NAME)),
                format!("cannot lock the backup directory: {e}"),
                ExitCode::CantCreate,
            )
        })?;
        let mut m = RemoteManifest::load(store, database)?;
        if !adopt {
            m.check_owner(store, database)?;
        }
        let (changed, out) = change(&mut m);
        if changed {
            m.host = Some(store.remote.host.clone());
            m.save(store, database)?;
        }
        drop(held);
        Ok(out)
    }

    /// Every entry names only what litekeeper makes for `database` (see the module doc).
    fn check(&self, database: &str) -> Result<(), String> {
        if self.database != database {
            return Err(format!(
                "it is the manifest of database {:?}, not {database:?}",
                self.database
            ));
        }
        for (i, c) in self.copies.iter().enumerate() {
            let full = BackupName::parse(&c.local_file).filter(|n| !n.failed);
            let series = full.as_ref().map(|n| n.series.as_str());
            check_copy(c, series).map_err(|e| format!("copies[{i}]: {e}"))?;
        }
        for (i, d) in self.deltas.iter().enumerate() {
            let at = |e: String| format!("deltas[{i}]: {e}");
            let name = DeltaName::parse(&d.copy.local_file);
            check_copy(&d.copy, name.as_ref().map(|n| n.series.as_str())).map_err(at)?;
            let base = BackupName::parse(&d.base).filter(|n| !n.failed);
            if base.is_none_or(|b| b.series != d.copy.series) {
                return Err(at(format!(
                    "base {:?} is not a full backup of series {:?}",
                    d.base, d.copy.series
                )));
            }
            let prev_ok = d.prev == d.base
                || DeltaName::parse(&d.prev).is_some_and(|p| p.series == d.copy.series);
            if !prev_ok {
                return Err(at(format!(
                    "prev {:?} is neither its base nor a delta of series {:?}",
                    d.prev, d.copy.series
                )));
            }
        }
        Ok(())
    }

    fn save(&self, store: &Store, database: &str) -> Result<(), RemoteError> {
        store.put_small(&store.key(database, MANIFEST_NAME), self.bytes())
    }

    fn bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("manifest serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Add or replace the copy of the same object; kept sorted by backup time.
    pub(crate) fn upsert(&mut self, copy: Copy) {
        self.copies.retain(|c| c.object != copy.object);
        self.copies.push(copy);
        self.copies
            .sort_by(|a, b| (a.backup_time, &a.object).cmp(&(b.backup_time, &b.object)));
    }

    /// Add or replace the delta of the same object; kept sorted by time and sequence.
    pub(crate) fn upsert_delta(&mut self, delta: DeltaCopy) {
        self.deltas.retain(|d| d.copy.object != delta.copy.object);
        self.deltas.push(delta);
        self.deltas.sort_by(|a, b| {
            (a.copy.backup_time, a.sequence, &a.copy.object).cmp(&(
                b.copy.backup_time,
                b.sequence,
                &b.copy.object,
            ))
        });
    }

    /// Whether the local file `file` (a full backup or a delta) has a copy here.
    pub(crate) fn has(&self, file: &str) -> bool {
        self.copies.iter().any(|c| c.local_file == file)
            || self.deltas.iter().any(|d| d.copy.local_file == file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A store on the directory `dir` as host `host`.
    fn dir_store(dir: &std::path::Path, host: &str) -> Store {
        use crate::config::{Credentials, Remote, Target};
        Store::open(Arc::new(Remote {
            name: "nas".into(),
            url: format!("file://{}", dir.display()),
            host: host.into(),
            target: Target::Dir {
                dir: dir.to_path_buf(),
            },
            endpoint: None,
            region: None,
            path_style: false,
            allow_http: false,
            credentials: Credentials::Env,
            recipients: vec!["age1x".into()],
            retry_every: std::time::Duration::from_secs(900),
            max_age: None,
            timeout: std::time::Duration::from_secs(5),
            rate_limit: None,
        }))
        .unwrap()
    }

    /// The first host to push to a new prefix owns it: its claim is a create-only put, so a
    /// second host's claim, or its put racing the first, finds the owner and is refused.
    #[test]
    fn the_first_claim_of_a_prefix_wins_and_the_second_host_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (web1, web2) = (dir_store(dir.path(), "web1"), dir_store(dir.path(), "web2"));
        let key = web1.key("app", MANIFEST_NAME);
        // Create-only: the second put finds the first's object and leaves it as it is.
        assert!(web1.put_new(&key, b"first".to_vec()).unwrap());
        assert!(!web2.put_new(&key, b"second".to_vec()).unwrap());
        assert_eq!(web2.get_small(&key).unwrap().unwrap(), b"first");
        web1.delete(&key).unwrap();

        RemoteManifest::claim(&web1, "app").unwrap();
        let m = RemoteManifest::load(&web2, "app").unwrap();
        assert_eq!(m.host.as_deref(), Some("web1"));
        RemoteManifest::claim(&web1, "app").unwrap();
        let e = RemoteManifest::claim(&web2, "app").unwrap_err();
        assert_eq!(e.code, ExitCode::Config);
        let line = e.to_string();
        for needle in [
            "\"nas\"",
            "app/",
            "host \"web1\"",
            "this host is \"web2\"",
            "{host}",
            "backups push app nas --adopt",
        ] {
            assert!(line.contains(needle), "{needle} not in {line}");
        }
        // Another database on the prefix is web2's to claim.
        RemoteManifest::claim(&web2, "other").unwrap();
    }

    /// A manifest written before copies carried their counts and drills still loads: those
    /// are absent, not an error; written again, absent fields stay out.
    #[test]
    fn an_older_manifest_without_counts_or_drills_loads() {
        let old = r#"{"version":1,"database":"chat","copies":[{"object":"chat-20260101-000000.db.zst.age",
            "local_file":"chat-20260101-000000.db","series":"chat","size":10,"sha256":"ab",
            "source_sha256":"cd","backup_time":"2026-01-01T00:00:00Z",
            "created_at":"2026-01-01T00:00:05Z"}]}"#;
        let m: RemoteManifest = serde_json::from_str(old).unwrap();
        let c = &m.copies[0];
        assert_eq!((c.recorded.as_ref(), c.drill.as_ref()), (None, None));
        assert!(!c.drill_failed());
        let again = serde_json::to_string(&m).unwrap();
        assert!(
            !again.contains("recorded") && !again.contains("drill"),
            "{again}"
        );
    }
}
