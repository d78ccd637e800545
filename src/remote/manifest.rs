//! The remote's manifest, `{prefix}/{database}/litekeeper-manifest.json`: every copy
//! litekeeper made there, with the SHA-256 and size of the stored bytes, the SHA-256 of the
//! local backup it came from, and when. Written last, after the copy is stored and checked,
//! in one PUT (readers see the old or the new list, never half of one). Retention and
//! listing touch only objects it names.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::store::{RemoteError, Store};
use crate::domain::ExitCode;

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
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RemoteManifest {
    pub version: u32,
    pub database: String,
    pub copies: Vec<Copy>,
}

impl RemoteManifest {
    /// The manifest of `database` on `store` (empty when there is none yet).
    pub(crate) fn load(store: &Store, database: &str) -> Result<RemoteManifest, RemoteError> {
        let key = store.key(database, MANIFEST_NAME);
        match store.get_small(&key)? {
            None => Ok(RemoteManifest {
                version: 1,
                database: database.to_string(),
                copies: Vec::new(),
            }),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                store.other(
                    format!("reading {key}"),
                    format!("not a litekeeper manifest: {e}"),
                    ExitCode::DataErr,
                )
            }),
        }
    }

    pub(crate) fn save(&self, store: &Store, database: &str) -> Result<(), RemoteError> {
        let key = store.key(database, MANIFEST_NAME);
        let mut bytes = serde_json::to_vec_pretty(self).expect("manifest serializes");
        bytes.push(b'\n');
        store.put_small(&key, bytes)
    }

    /// Add or replace the copy of the same object; kept sorted by backup time.
    pub(crate) fn upsert(&mut self, copy: Copy) {
        self.copies.retain(|c| c.object != copy.object);
        self.copies.push(copy);
        self.copies
            .sort_by(|a, b| (a.backup_time, &a.object).cmp(&(b.backup_time, &b.object)));
    }
}
