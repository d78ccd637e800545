//! Off-site copies in the state DB: the copies still to store (`remote_pending`, oldest
//! first, with their last error) and each remote's last stored copy (`remote_stored`, for
//! `status`, metrics and `status --check`).

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::{from_ms, ms, State, StateError};

/// The columns of a [`Pending`] row, in the order [`pending_row`] reads them.
pub(super) const PENDING_COLUMNS: &str =
    "SELECT database, remote, file, since, attempts, last_error FROM remote_pending";

pub(super) fn pending_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Pending> {
    Ok(Pending {
        database: r.get(0)?,
        remote: r.get(1)?,
        file: r.get(2)?,
        since: from_ms(r.get(3)?),
        attempts: r.get(4)?,
        last_error: r.get(5)?,
    })
}

/// A copy not yet stored on a remote.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub database: String,
    pub remote: String,
    pub file: String,
    pub since: DateTime<Utc>,
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// A remote's newest stored copy of a database.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteStored {
    pub database: String,
    pub remote: String,
    pub at: DateTime<Utc>,
    pub bytes: u64,
    pub total: u64,
}

impl State {
    /// `file` of `database` is due on `remote` (kept as it is when already pending).
    pub fn add_pending(
        &self,
        database: &str,
        remote: &str,
        file: &str,
        since: DateTime<Utc>,
    ) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO remote_pending (database, remote, file, since) VALUES (?1, ?2, ?3, ?4)",
                params![database, remote, file, ms(since)],
            )
            .map(|_| ())
        })
    }

    /// Pending copies of `database` (on `remote`, or on all), oldest first.
    pub fn pending(
        &self,
        database: &str,
        remote: Option<&str>,
    ) -> Result<Vec<Pending>, StateError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "{PENDING_COLUMNS} WHERE database = ?1 AND (?2 IS NULL OR remote = ?2) \
                 ORDER BY since, file"
            ))?;
            let rows = st.query_map(params![database, remote], pending_row)?;
            rows.collect()
        })
    }

    /// Every pending copy of every database, oldest first (the daemon's retry).
    pub fn all_pending(&self) -> Result<Vec<Pending>, StateError> {
        self.with(|c| {
            let mut st = c.prepare(&format!("{PENDING_COLUMNS} ORDER BY since, file"))?;
            let rows = st.query_map([], pending_row)?;
            rows.collect()
        })
    }

    /// An attempt failed: count it and keep its one-line error.
    pub fn pending_failed(&self, p: &Pending, error: &str) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE remote_pending SET attempts = attempts + 1, last_error = ?4
                 WHERE database = ?1 AND remote = ?2 AND file = ?3",
                params![p.database, p.remote, p.file, error],
            )
            .map(|_| ())
        })
    }

    /// The copy is stored (or will never be: its local file is gone).
    pub fn pending_done(&self, p: &Pending) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM remote_pending WHERE database = ?1 AND remote = ?2 AND file = ?3",
                params![p.database, p.remote, p.file],
            )
            .map(|_| ())
        })
    }

    /// A copy of `bytes` was stored on `remote` at `at`.
    pub fn remote_stored(
        &self,
        database: &str,
        remote: &str,
        at: DateTime<Utc>,
        bytes: u64,
    ) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO remote_stored (database, remote, at, bytes, total) VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT (database, remote) DO UPDATE SET at = ?3, bytes = ?4, total = total + ?4",
                params![database, remote, ms(at), bytes as i64],
            )
            .map(|_| ())
        })
    }

    /// The newest stored copy per (database, remote).
    pub fn remotes_stored(&self) -> Result<Vec<RemoteStored>, StateError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT database, remote, at, bytes, total FROM remote_stored ORDER BY database, remote",
            )?;
            let rows = st.query_map([], |r| {
                Ok(RemoteStored {
                    database: r.get(0)?,
                    remote: r.get(1)?,
                    at: from_ms(r.get(2)?),
                    bytes: r.get::<_, i64>(3)? as u64,
                    total: r.get::<_, i64>(4)? as u64,
                })
            })?;
            rows.collect()
        })
    }
}
