//! Recording runs (start, finish, self-pruning history) and reading them back: the last
//! runs `status` shows, the `History` of a job, and the run totals the metrics count.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

use super::schema::migrate;
use super::{from_ms, ms, pid_alive, special_file, State, StateError};
use crate::domain::{Figures, JobKind, Outcome, Report, RunState, Trigger};

/// The last recorded run of one job, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: String,
    pub trigger: Trigger,
    pub started: DateTime<Utc>,
    pub finished: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub outcome: RunState,
    pub summary: String,
    pub error: Option<String>,
    #[serde(serialize_with = "crate::domain::figures_json")]
    pub figures: Option<Figures>,
}

impl RunRecord {
    /// When it ended (finished), else when it started.
    pub fn ended(&self) -> DateTime<Utc> {
        self.finished.unwrap_or(self.started)
    }
}

/// The columns [`record_row`] reads, in its order.
const RECORD_COLUMNS: &str =
    "id, trigger, started_at, finished_at, outcome, summary, error, figures, pid";

/// A `runs` row of a `job` run as a [`RunRecord`] (a `running` row whose process is gone
/// reads as `interrupted`).
fn record_row(job: JobKind, row: &rusqlite::Row) -> rusqlite::Result<RunRecord> {
    let started: i64 = row.get(2)?;
    let finished: Option<i64> = row.get(3)?;
    let outcome = match row.get_ref(4)?.as_str()? {
        "running" if pid_alive(row.get(8)?) => RunState::Running,
        "running" => RunState::Interrupted,
        word => RunState::Finished(parse(4, word)?),
    };
    let figures: String = row.get(7)?;
    Ok(RunRecord {
        id: row.get(0)?,
        trigger: parse(1, row.get_ref(1)?.as_str()?)?,
        started: from_ms(started),
        finished: finished.map(from_ms),
        duration_ms: finished.map(|f| f - started),
        outcome,
        summary: row.get(5)?,
        error: row.get(6)?,
        figures: Figures::from_json(job, &figures),
    })
}

/// A word of a `runs` column (trigger, outcome) as its type.
fn parse<T: std::str::FromStr<Err = String>>(column: usize, word: &str) -> rusqlite::Result<T> {
    word.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, e.into())
    })
}

impl State {
    /// Record that a run started (outcome `running`).
    pub fn start(
        &self,
        id: &str,
        db: &str,
        job: JobKind,
        trigger: Trigger,
        started: DateTime<Utc>,
    ) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO runs (id, database, job, trigger, pid, started_at, outcome) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running')",
                params![id, db, job.as_str(), trigger.as_str(), std::process::id(), ms(started)],
            )
            .map(|_| ())
        })
    }

    /// Complete a run with its report, then drop this job's history older than `db_keep` (the
    /// database's `keep_history`) and anybody's older than `keep` (the longest of them all).
    pub fn finish(&self, r: &Report, db_keep: Duration) -> Result<(), StateError> {
        let cutoff = ms(r.finished) - self.keep.as_millis() as i64;
        let db_cutoff = ms(r.finished) - db_keep.as_millis() as i64;
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO runs (id, database, job, trigger, pid, started_at, finished_at, outcome, figures, summary, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (id) DO UPDATE SET finished_at = excluded.finished_at, outcome = excluded.outcome,
                   figures = excluded.figures, summary = excluded.summary, error = excluded.error",
                params![
                    r.run_id,
                    r.database,
                    r.job.as_str(),
                    r.trigger.as_str(),
                    std::process::id(),
                    ms(r.started),
                    ms(r.finished),
                    r.outcome.as_str(),
                    Figures::to_json(r.figures.as_ref()).to_string(),
                    r.summary,
                    r.error,
                ],
            )?;
            // Never the run just recorded, however short the history is.
            tx.execute(
                "DELETE FROM runs WHERE database = ?1 AND job = ?2 AND started_at < ?3 AND id <> ?4",
                params![r.database, r.job.as_str(), db_cutoff, r.run_id],
            )?;
            tx.execute(
                "DELETE FROM runs WHERE started_at < ?1 AND id <> ?2",
                params![cutoff, r.run_id],
            )?;
            tx.commit()
        })
    }

    /// The newest run of one job, if any.
    pub fn last_run(&self, db: &str, job: JobKind) -> Result<Option<RunRecord>, StateError> {
        Ok(self.last_runs(&[(db.to_string(), job)])?.pop().flatten())
    }

    /// The last run of each (database, job), on one connection: `status` of a fleet of
    /// thousands asks for all of them at once.
    pub fn last_runs(
        &self,
        keys: &[(String, JobKind)],
    ) -> Result<Vec<Option<RunRecord>>, StateError> {
        self.with(|c| {
            let mut st = c.prepare(
                &format!("SELECT {RECORD_COLUMNS} FROM runs WHERE database = ?1 AND job = ?2 ORDER BY started_at DESC LIMIT 1"),
            )?;
            let mut out = Vec::with_capacity(keys.len());
            for (db, job) in keys {
                out.push(
                    st.query_row(params![db, job.as_str()], |row| record_row(*job, row))
                    .optional()?,
                );
            }
            Ok(out)
        })
    }

    /// When each database's runs of `job` last started, by any trigger (catch-up skips a job
    /// run since; one query for all databases, a fleet has thousands).
    pub fn last_starts(
        &self,
        job: JobKind,
    ) -> Result<std::collections::HashMap<String, DateTime<Utc>>, StateError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT database, max(started_at) FROM runs WHERE job = ?1 GROUP BY database",
            )?;
            let rows = st.query_map([job.as_str()], |r| {
                Ok((r.get::<_, String>(0)?, from_ms(r.get(1)?)))
            })?;
            rows.collect()
        })
    }

    /// Number of recorded runs (for tests and `status`).
    pub fn count(&self) -> Result<i64, StateError> {
        self.with(|c| c.query_row("SELECT count(*) FROM runs", [], |r| r.get(0)))
    }
}

/// SQL condition on a `runs` row: the run succeeded. `ok`, or `skipped` with figures: a vacuum
/// that found too little free space to be worth it did its job, while a run skipped because
/// another job held the database has no figures and did nothing.
const SUCCESS: &str =
    "finished_at IS NOT NULL AND (outcome = 'ok' OR (outcome = 'skipped' AND figures <> '{}'))";

/// What the history says about one job of one database.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// The newest run, finished or not.
    pub latest: Option<RunRecord>,
    /// The newest run with a final outcome.
    pub last_finished: Option<RunRecord>,
    /// The newest successful run (`ok`, or `skipped` with figures: nothing worth doing).
    pub last_success: Option<RunRecord>,
    /// Finished runs that failed since the last finished run that did not.
    pub failed_in_a_row: u32,
    /// When the oldest run still in the history started.
    pub first_started: Option<DateTime<Utc>>,
}

/// One connection to the state DB for reading the history of many jobs: `status --check`
/// (read-only: it must not need write access) and the metrics file (which also keeps the
/// run totals, see [`HistoryReader::tally`]). Errors are SQLite's own, so a caller can tell
/// a damaged file ([`is_damaged`]) from one it may not read.
pub struct HistoryReader {
    pub(super) conn: Connection,
    /// Whether the run totals table exists (a state DB only ever opened read-only before v3
    /// may lack it).
    has_totals: bool,
}

impl HistoryReader {
    /// Open the state DB at `path`; fails at once on a file that is not a state database.
    /// Opened for writing, it also brings the schema up to date.
    pub fn open(path: &Path, read_only: bool) -> rusqlite::Result<HistoryReader> {
        let flags = if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if let Some((p, kind)) = special_file(path) {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(format!(
                    "{}: not a regular file ({kind}); remove it",
                    p.display()
                )),
            ));
        }
        let mut conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // Fails here, not later, on a file that is not a state database.
        conn.query_row(
            "SELECT count(*) FROM (SELECT 1 FROM runs LIMIT 1)",
            [],
            |_| Ok(()),
        )?;
        if !read_only {
            migrate(&mut conn)?;
        }
        let has_totals = conn.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'metrics_runs_total'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        Ok(HistoryReader { conn, has_totals })
    }

    /// Read the history of one job.
    pub fn history(&self, db: &str, job: JobKind) -> rusqlite::Result<History> {
        let c = &self.conn;
        let one = |cond: &str| -> rusqlite::Result<Option<RunRecord>> {
            c.prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM runs
                 WHERE database = ?1 AND job = ?2 AND ({cond}) ORDER BY started_at DESC LIMIT 1"
            ))?
            .query_row(params![db, job.as_str()], |row| record_row(job, row))
            .optional()
        };
        let latest = one("1")?;
        if latest.is_none() {
            return Ok(History::default());
        }
        Ok(History {
            latest,
            last_finished: one("finished_at IS NOT NULL")?,
            last_success: one(SUCCESS)?,
            failed_in_a_row: c.query_row(
                "SELECT count(*) FROM runs WHERE database = ?1 AND job = ?2 AND outcome = 'failed'
                   AND started_at > coalesce((SELECT max(started_at) FROM runs WHERE database = ?1
                     AND job = ?2 AND finished_at IS NOT NULL AND outcome <> 'failed'), -1)",
                params![db, job.as_str()],
                |r| r.get(0),
            )?,
            first_started: c
                .query_row(
                    "SELECT min(started_at) FROM runs WHERE database = ?1 AND job = ?2",
                    params![db, job.as_str()],
                    |r| r.get::<_, Option<i64>>(0),
                )?
                .map(from_ms),
        })
    }

    /// Add every finished run not counted yet to the run totals, in one transaction. The
    /// totals never go down, though the history they count is pruned.
    pub fn tally(&mut self) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "INSERT INTO metrics_runs_total (database, job, outcome, runs)
                SELECT database, job, outcome, count(*) FROM runs r
                WHERE finished_at IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM metrics_counted m WHERE m.id = r.id)
                GROUP BY database, job, outcome
                ON CONFLICT (database, job, outcome) DO UPDATE SET runs = runs + excluded.runs;
            INSERT INTO metrics_counted (id)
                SELECT id FROM runs r
                WHERE finished_at IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM metrics_counted m WHERE m.id = r.id);
            DELETE FROM metrics_counted WHERE id NOT IN (SELECT id FROM runs);",
        )?;
        tx.commit()
    }

    /// Finished runs of one job by outcome, in the order of [`Outcome::ALL`] (all 0 in a
    /// state DB whose totals were never kept).
    pub fn run_totals(
        &self,
        db: &str,
        job: JobKind,
    ) -> rusqlite::Result<[i64; Outcome::ALL.len()]> {
        let mut counts = [0; Outcome::ALL.len()];
        if !self.has_totals {
            return Ok(counts);
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT outcome, runs FROM metrics_runs_total WHERE database = ?1 AND job = ?2",
        )?;
        let rows = stmt.query_map(params![db, job.as_str()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (outcome, n) = row?;
            if let Some(i) = Outcome::ALL.iter().position(|o| o.as_str() == outcome) {
                counts[i] = n;
            }
        }
        Ok(counts)
    }
}
