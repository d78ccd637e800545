//! The state database's tables and their migrations (`PRAGMA user_version`).

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE runs (
        id          TEXT PRIMARY KEY,
        database    TEXT NOT NULL,
        job         TEXT NOT NULL,
        trigger     TEXT NOT NULL,
        pid         INTEGER NOT NULL,
        started_at  INTEGER NOT NULL,  -- unix milliseconds
        finished_at INTEGER,           -- NULL while running (or if the process was killed)
        outcome     TEXT NOT NULL,     -- running | ok | failed | skipped | dry-run
        figures     TEXT NOT NULL DEFAULT '{}',
        summary     TEXT NOT NULL DEFAULT '',
        error       TEXT
    );
    CREATE INDEX runs_by_job ON runs (database, job, started_at);
    CREATE INDEX runs_by_time ON runs (started_at);",
    // v2: jobs the daemon has queued that wait for a free slot (max_concurrent_jobs) or for
    // their database's previous job; `status` shows them as queued since `since`.
    "CREATE TABLE queued (
        database TEXT NOT NULL,
        job      TEXT NOT NULL,
        since    INTEGER NOT NULL,  -- unix milliseconds: when the run was due
        pid      INTEGER NOT NULL,  -- the daemon; a row of a process that is gone is stale
        PRIMARY KEY (database, job)
    );",
    // v3: run totals for the metrics file, which must never go down although the history
    // is pruned: the counts, and the ids already counted (see `HistoryReader::tally`).
    // IF NOT EXISTS: before v3 the metrics writer created them itself.
    "CREATE TABLE IF NOT EXISTS metrics_runs_total (
        database TEXT NOT NULL,
        job      TEXT NOT NULL,
        outcome  TEXT NOT NULL,
        runs     INTEGER NOT NULL,
        PRIMARY KEY (database, job, outcome)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS metrics_counted (id TEXT PRIMARY KEY) WITHOUT ROWID;",
    // v4: off-site copies not yet stored (see `remote.rs`).
    "CREATE TABLE remote_pending (
        database   TEXT NOT NULL,
        remote     TEXT NOT NULL,
        file       TEXT NOT NULL,     -- the local backup file
        since      INTEGER NOT NULL,  -- unix milliseconds: when the copy became due
        attempts   INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        PRIMARY KEY (database, remote, file)
    ) WITHOUT ROWID;
    CREATE TABLE remote_stored (
        database   TEXT NOT NULL,
        remote     TEXT NOT NULL,
        at         INTEGER NOT NULL,  -- unix milliseconds of the last stored copy
        bytes      INTEGER NOT NULL,  -- its size
        total      INTEGER NOT NULL,  -- bytes stored since counting began
        PRIMARY KEY (database, remote)
    ) WITHOUT ROWID;",
    // v5: each copy stored on a remote, by its local file (see `copies.rs`): `backups list`
    // says which backups are off-site without asking the remote, and local retention
    // judges pending copies against what the remote holds.
    "CREATE TABLE remote_copies (
        database    TEXT NOT NULL,
        remote      TEXT NOT NULL,
        file        TEXT NOT NULL,     -- the local backup file
        series      TEXT NOT NULL,
        backup_time INTEGER NOT NULL,  -- unix milliseconds: when the local backup was made
        stored_at   INTEGER NOT NULL,  -- unix milliseconds: when the copy was stored
        size        INTEGER NOT NULL,  -- bytes stored
        PRIMARY KEY (database, remote, file)
    ) WITHOUT ROWID;",
];
/// Bring the schema to the newest version. The version is read inside a write transaction,
/// so two processes creating the state DB at once (daemon and a timer's run) do not both
/// apply the same migration.
pub(super) fn migrate(c: &mut Connection) -> rusqlite::Result<()> {
    loop {
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version = tx.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
        let Some(sql) = MIGRATIONS.get(version) else {
            return Ok(());
        };
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (version + 1) as i64)?;
        tx.commit()?;
    }
}
