//! Off-site copies by local file: each copy stored on a remote (`remote_copies`, written by
//! the push that stored it, removed by the remote retention that deleted it), and the
//! read-only views `backups list`, the metrics and `status --check` take of them together
//! with the pending copies (`remote.rs`). A state DB from before these tables reads as
//! "nothing stored, nothing pending".

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};

use super::remote::{pending_row, Pending, PENDING_COLUMNS};
use super::{from_ms, ms, HistoryReader, State, StateError};

/// A copy stored on a remote.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCopy {
    pub database: String,
    pub remote: String,
    /// The local backup file it is a copy of.
    pub file: String,
    pub series: String,
    /// When the local backup was made.
    pub backup_time: DateTime<Utc>,
    pub stored_at: DateTime<Utc>,
    pub size: u64,
}

/// Where the off-site copy of one local backup stands on one remote.
#[derive(Debug, Clone, PartialEq)]
pub enum OffsiteState {
    Stored {
        at: DateTime<Utc>,
        size: u64,
    },
    Pending {
        since: DateTime<Utc>,
        attempts: i64,
        last_error: Option<String>,
    },
}

/// The copy of local backup `file` on `remote`.
#[derive(Debug, Clone, PartialEq)]
pub struct FileCopy {
    pub remote: String,
    pub file: String,
    pub state: OffsiteState,
}

/// One (database, remote): its pending copies and its last stored copy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RemoteSummary {
    pub database: String,
    pub remote: String,
    pub pending: u64,
    /// When the oldest pending copy became due.
    pub oldest_pending: Option<DateTime<Utc>>,
    /// When the last copy was stored.
    pub last_stored: Option<DateTime<Utc>>,
    /// Bytes stored there for the database, every copy counted (a counter).
    pub uploaded_bytes: u64,
    /// The error of the last failed attempt at the oldest pending copy.
    pub last_error: Option<String>,
}

impl State {
    /// `copy` was stored (replaces an earlier record of the same file).
    pub fn copy_stored(&self, copy: &StoredCopy) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO remote_copies
                 (database, remote, file, series, backup_time, stored_at, size)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    copy.database,
                    copy.remote,
                    copy.file,
                    copy.series,
                    ms(copy.backup_time),
                    ms(copy.stored_at),
                    copy.size as i64
                ],
            )
            .map(|_| ())
        })
    }

    /// Remote retention deleted the copies of these local `files` from `remote`.
    pub fn copies_deleted(
        &self,
        database: &str,
        remote: &str,
        files: &[String],
    ) -> Result<(), StateError> {
        self.with(|c| {
            let tx = c.transaction()?;
            for f in files {
                tx.execute(
                    "DELETE FROM remote_copies WHERE database = ?1 AND remote = ?2 AND file = ?3",
                    params![database, remote, f],
                )?;
            }
            tx.commit()
        })
    }

    /// The copies of `database` stored on `remote`, newest backup first.
    pub fn stored_copies(
        &self,
        database: &str,
        remote: &str,
    ) -> Result<Vec<StoredCopy>, StateError> {
        self.with(|c| stored_rows(c, database, Some(remote)))
    }
}

/// The copies of `database` stored (on `remote`, or on all), newest backup first.
fn stored_rows(
    c: &Connection,
    database: &str,
    remote: Option<&str>,
) -> rusqlite::Result<Vec<StoredCopy>> {
    let mut st = c.prepare_cached(
        "SELECT database, remote, file, series, backup_time, stored_at, size
         FROM remote_copies WHERE database = ?1 AND (?2 IS NULL OR remote = ?2)
         ORDER BY backup_time DESC, file",
    )?;
    let rows = st.query_map(params![database, remote], |r| {
        Ok(StoredCopy {
            database: r.get(0)?,
            remote: r.get(1)?,
            file: r.get(2)?,
            series: r.get(3)?,
            backup_time: from_ms(r.get(4)?),
            stored_at: from_ms(r.get(5)?),
            size: r.get::<_, i64>(6)? as u64,
        })
    })?;
    rows.collect()
}

fn has_table(c: &Connection, name: &str) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )
}

impl HistoryReader {
    /// Every (database, remote) with a pending or a stored copy, by database and remote.
    pub fn remote_summaries(&self) -> rusqlite::Result<Vec<RemoteSummary>> {
        let c = &self.conn;
        let mut out: std::collections::BTreeMap<(String, String), RemoteSummary> =
            Default::default();
        let entry = |out: &mut std::collections::BTreeMap<_, RemoteSummary>, d: &str, r: &str| {
            out.entry((d.to_string(), r.to_string()))
                .or_insert_with(|| RemoteSummary {
                    database: d.to_string(),
                    remote: r.to_string(),
                    ..RemoteSummary::default()
                })
                .clone()
        };
        if has_table(c, "remote_pending")? {
            let mut st = c.prepare(
                "SELECT database, remote, count(*), min(since) FROM remote_pending
                 GROUP BY database, remote",
            )?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            for row in rows {
                let (d, r, n, since) = row?;
                let mut s = entry(&mut out, &d, &r);
                s.pending = n as u64;
                s.oldest_pending = Some(from_ms(since));
                out.insert((d, r), s);
            }
            let mut st = c.prepare(
                "SELECT database, remote, last_error FROM remote_pending
                 WHERE last_error IS NOT NULL ORDER BY since DESC, file DESC",
            )?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            // Newest first: the oldest pending copy's error is written last.
            for row in rows {
                let (d, r, e) = row?;
                if let Some(s) = out.get_mut(&(d, r)) {
                    s.last_error = Some(e);
                }
            }
        }
        if has_table(c, "remote_stored")? {
            let mut st = c.prepare("SELECT database, remote, at, total FROM remote_stored")?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            for row in rows {
                let (d, r, at, total) = row?;
                let mut s = entry(&mut out, &d, &r);
                s.last_stored = Some(from_ms(at));
                s.uploaded_bytes = total.max(0) as u64;
                out.insert((d, r), s);
            }
        }
        Ok(out.into_values().collect())
    }

    /// The copies of `database` stored on any remote, and those pending (oldest first).
    pub fn remote_copies(
        &self,
        database: &str,
    ) -> rusqlite::Result<(Vec<StoredCopy>, Vec<Pending>)> {
        let c = &self.conn;
        let stored = if has_table(c, "remote_copies")? {
            stored_rows(c, database, None)?
        } else {
            Vec::new()
        };
        let pending = if has_table(c, "remote_pending")? {
            let mut st = c.prepare_cached(&format!(
                "{PENDING_COLUMNS} WHERE database = ?1 ORDER BY since, file"
            ))?;
            let rows = st.query_map([database], pending_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        Ok((stored, pending))
    }

    /// The off-site copies of `database`'s local backups: stored and pending, per remote.
    pub fn offsite_files(&self, database: &str) -> rusqlite::Result<Vec<FileCopy>> {
        let c = &self.conn;
        let mut out = Vec::new();
        if has_table(c, "remote_copies")? {
            let mut st = c.prepare_cached(
                "SELECT remote, file, stored_at, size FROM remote_copies WHERE database = ?1",
            )?;
            let rows = st.query_map([database], |r| {
                Ok(FileCopy {
                    remote: r.get(0)?,
                    file: r.get(1)?,
                    state: OffsiteState::Stored {
                        at: from_ms(r.get(2)?),
                        size: r.get::<_, i64>(3)? as u64,
                    },
                })
            })?;
            out.extend(rows.collect::<rusqlite::Result<Vec<_>>>()?);
        }
        if has_table(c, "remote_pending")? {
            let mut st = c.prepare_cached(
                "SELECT remote, file, since, attempts, last_error FROM remote_pending
                 WHERE database = ?1",
            )?;
            let rows = st.query_map([database], |r| {
                Ok(FileCopy {
                    remote: r.get(0)?,
                    file: r.get(1)?,
                    state: OffsiteState::Pending {
                        since: from_ms(r.get(2)?),
                        attempts: r.get(3)?,
                        last_error: r.get(4)?,
                    },
                })
            })?;
            out.extend(rows.collect::<rusqlite::Result<Vec<_>>>()?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn stored_pending_and_summaries() {
        let dir = tempfile::tempdir().unwrap();
        let st = State::open(dir.path(), std::time::Duration::from_secs(86400)).unwrap();
        let t = Utc.with_ymd_and_hms(2026, 12, 1, 3, 0, 0).unwrap();
        st.add_pending("chat", "offsite", "chat-b.db", t).unwrap();
        st.add_pending(
            "chat",
            "offsite",
            "chat-c.db",
            t + chrono::Duration::hours(1),
        )
        .unwrap();
        let copy = StoredCopy {
            database: "chat".into(),
            remote: "offsite".into(),
            file: "chat-a.db".into(),
            series: "chat".into(),
            backup_time: t - chrono::Duration::days(1),
            stored_at: t,
            size: 42,
        };
        st.copy_stored(&copy).unwrap();
        st.remote_stored("chat", "offsite", t, 42).unwrap();
        assert_eq!(st.stored_copies("chat", "offsite").unwrap(), vec![copy]);
        let r = HistoryReader::open(st.path(), true).unwrap();
        assert_eq!(
            r.remote_summaries().unwrap(),
            vec![RemoteSummary {
                database: "chat".into(),
                remote: "offsite".into(),
                pending: 2,
                oldest_pending: Some(t),
                last_stored: Some(t),
                uploaded_bytes: 42,
                last_error: None,
            }]
        );
        let files = r.offsite_files("chat").unwrap();
        assert_eq!(files.len(), 3);
        assert_eq!(files[0].state, OffsiteState::Stored { at: t, size: 42 });
        st.copies_deleted("chat", "offsite", &["chat-a.db".into()])
            .unwrap();
        assert!(st.stored_copies("chat", "offsite").unwrap().is_empty());
    }
}
