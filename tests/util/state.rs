//! Readers of the run history a test's litekeeper wrote (`state/state.db` in the temp dir).

use std::time::Duration;

use rusqlite::{Connection, Params};

use super::TestEnv;

/// One row of `runs` in state.db.
#[derive(Debug, Clone)]
pub struct Run {
    pub id: String,
    pub database: String,
    pub job: String,
    pub trigger: String,
    pub started: i64,
    pub finished: Option<i64>,
    pub outcome: String,
    pub error: Option<String>,
    pub figures: serde_json::Value,
}

impl TestEnv {
    /// The state database, opened with a busy timeout (`None` while it does not exist).
    pub fn state_db(&self) -> Option<Connection> {
        let path = self.path("state/state.db");
        if !path.exists() {
            return None;
        }
        let c = Connection::open(&path).ok()?;
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        Some(c)
    }

    /// Every recorded run, oldest first (none while state.db or its schema does not exist yet).
    pub fn runs(&self) -> Vec<Run> {
        let Some(c) = self.state_db() else {
            return Vec::new();
        };
        let Ok(mut s) = c.prepare(
            "SELECT id, database, job, trigger, started_at, finished_at, outcome, error, figures
             FROM runs ORDER BY started_at, rowid",
        ) else {
            return Vec::new();
        };
        s.query_map([], |r| {
            Ok(Run {
                id: r.get(0)?,
                database: r.get(1)?,
                job: r.get(2)?,
                trigger: r.get(3)?,
                started: r.get(4)?,
                finished: r.get(5)?,
                outcome: r.get(6)?,
                error: r.get(7)?,
                figures: serde_json::from_str(&r.get::<_, String>(8)?).unwrap(),
            })
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    /// `SELECT count(*) FROM runs WHERE <cond>`; 0 while state.db or its schema does not exist.
    pub fn count_runs(&self, cond: &str, params: impl Params) -> i64 {
        self.state_db()
            .and_then(|c| {
                c.query_row(
                    &format!("SELECT count(*) FROM runs WHERE {cond}"),
                    params,
                    |r| r.get(0),
                )
                .ok()
            })
            .unwrap_or(0)
    }
}
