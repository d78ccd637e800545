//! The runs the daemon has queued, for `status`.

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use super::{from_ms, ms, pid_alive, State, StateError};
use crate::domain::JobKind;

/// Runs the daemon has queued (waiting for a slot or for their database), kept in the state
/// DB so `status` can show them: written when a run has to wait, cleared when it starts.
impl State {
    /// Record runs as queued, each due since its time.
    pub fn set_queued(&self, rows: &[(String, JobKind, DateTime<Utc>)]) -> Result<(), StateError> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare(
                    "INSERT OR REPLACE INTO queued (database, job, since, pid) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (db, job, since) in rows {
                    st.execute(params![db, job.as_str(), ms(*since), std::process::id()])?;
                }
            }
            tx.commit()
        })
    }

    /// The runs of `keys` are no longer queued (they started, or will not run).
    pub fn clear_queued(&self, keys: &[(String, JobKind)]) -> Result<(), StateError> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare("DELETE FROM queued WHERE database = ?1 AND job = ?2")?;
                for (db, job) in keys {
                    st.execute(params![db, job.as_str()])?;
                }
            }
            tx.commit()
        })
    }

    /// Forget every queued run (a daemon starting: nothing of a previous one is queued).
    pub fn clear_all_queued(&self) -> Result<(), StateError> {
        self.with(|c| c.execute("DELETE FROM queued", []).map(|_| ()))
    }

    /// Since when each of `keys` is queued (None: not queued, or queued by a process that is
    /// gone). A state DB from before the table existed has nothing queued.
    pub fn queued_since(
        &self,
        keys: &[(String, JobKind)],
    ) -> Result<Vec<Option<DateTime<Utc>>>, StateError> {
        self.with(|c| {
            let mut st =
                match c.prepare("SELECT since, pid FROM queued WHERE database = ?1 AND job = ?2") {
                    Ok(st) => st,
                    Err(e) if e.to_string().contains("no such table") => {
                        return Ok(vec![None; keys.len()])
                    }
                    Err(e) => return Err(e),
                };
            let mut out = Vec::with_capacity(keys.len());
            for (db, job) in keys {
                let row = st
                    .query_row(params![db, job.as_str()], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                    })
                    .optional()?;
                out.push(
                    row.filter(|(_, pid)| pid_alive(*pid))
                        .map(|(t, _)| from_ms(t)),
                );
            }
            Ok(out)
        })
    }
}
