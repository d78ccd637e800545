//! The keyset batch machinery of a row rule: one batch per short write transaction, sized
//! by its measured lock time; the next batch's keys found in the gap after it, while the
//! app's writers get in; the WAL checkpoints (`checkpointer`) between them.

use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection};

use super::super::prune_batch::{lock_aim, LockModel, Pacer, FIRST_BATCH};
use super::super::prune_fk;
use super::checkpointer::Checkpointer;
use super::schema::{KeyCols, Resolved};
use super::{add_dependant, sql_err};
use crate::config::Prune;
use crate::domain::RuleFigures;
use crate::jobs::{JobCtx, JobError};
use crate::progress::Progress;
use crate::sqlite::quote_ident;

/// Batch sizes stay within these bounds whatever the timing says.
const MIN_BATCH: usize = 1;
const MAX_BATCH: usize = 50_000;
/// How often a pause looks whether the app's writer got in.
const POLL: Duration = Duration::from_micros(500);

/// The statements of one rule's batches, built once.
struct BatchSql {
    /// How many key columns.
    width: usize,
    /// Fill the temp table with the first / the next batch's keys.
    fill_first: String,
    fill_next: String,
    /// The batch's last (highest) key.
    last_key: String,
    /// Counts of each dependant step's rows (a read, before the write).
    counts: Vec<String>,
    /// The write transaction: dependant steps, then the rule's delete.
    statements: Vec<String>,
    plan: prune_fk::Plan,
    /// `PRAGMA schema.data_version`: moves when another connection commits.
    version: String,
    /// `PRAGMA schema.wal_checkpoint(PASSIVE)`.
    checkpoint: String,
}

impl BatchSql {
    fn new(conn: &Connection, r: &Resolved, end: Option<i64>) -> Result<BatchSql, JobError> {
        let np = r.params.len();
        let width = r.keys.width();
        let keys = r.keys.list();
        let kcols: Vec<String> = (0..width).map(|i| format!("k{i}")).collect();
        let kcols = kcols.join(", ");
        conn.execute_batch(&format!(
            "DROP TABLE IF EXISTS temp.litekeeper_batch; CREATE TEMP TABLE litekeeper_batch({kcols})"
        ))
        .map_err(sql_err(format!(
            "{}: creating the batch's temp table",
            r.label
        )))?;
        // The walk stops at the last row that matched when the rule was counted, rather than
        // reading the rest of the table to learn that nothing after it matches.
        let until = match (&r.keys, end) {
            (KeyCols::Rowid(name), Some(end)) => format!("{name} <= {end} AND "),
            _ => String::new(),
        };
        // ?1..?np: the rule's parameters; then lo (width); then the limit.
        let fill_first = format!(
            "INSERT INTO temp.litekeeper_batch SELECT {keys} FROM {} NOT INDEXED WHERE {until}({}) ORDER BY {keys} LIMIT ?{}",
            r.table,
            r.predicate,
            np + 1
        );
        let fill_next = format!(
            "INSERT INTO temp.litekeeper_batch SELECT {keys} FROM {} NOT INDEXED WHERE {} AND {until}({}) ORDER BY {keys} LIMIT ?{}",
            r.table,
            r.keys.cmp(">", np + 1),
            r.predicate,
            np + width + 1
        );
        let last_key =
            format!("SELECT {kcols} FROM temp.litekeeper_batch ORDER BY rowid DESC LIMIT 1");
        // The batch's rows, re-checked in the write transaction: a row the app changed since
        // the read no longer matches and stays. The unary `+` keeps the planner on the key
        // lookups (an index the rule's condition could use might cover far more rows than the
        // batch).
        let root_cond = format!(
            "({keys}) IN (SELECT {kcols} FROM temp.litekeeper_batch) AND +({})",
            r.predicate
        );
        let plan = prune_fk::plan(&r.fks, &r.schema, &r.name, &root_cond)
            .map_err(|e| JobError::Refused(format!("{}: {e}", r.label)))?;
        let counts = plan.steps.iter().map(|s| s.count_sql()).collect();
        let mut statements: Vec<String> = plan.steps.iter().map(|s| s.sql()).collect();
        statements.push(format!("DELETE FROM {} WHERE {root_cond}", r.table));
        Ok(BatchSql {
            width,
            fill_first,
            fill_next,
            last_key,
            counts,
            statements,
            plan,
            version: format!("PRAGMA {}.data_version", quote_ident(&r.schema)),
            checkpoint: format!("PRAGMA {}.wal_checkpoint(PASSIVE)", quote_ident(&r.schema)),
        })
    }

    /// Copy the keys of the next `limit` matching rows after `lo` into the temp table (a read:
    /// the app's writers carry on); how many there were.
    fn fill(
        &self,
        conn: &Connection,
        r: &Resolved,
        lo: Option<&[Value]>,
        limit: usize,
    ) -> Result<usize, JobError> {
        let mut params: Vec<Value> = r.params.clone();
        if let Some(lo) = lo {
            params.extend(lo.iter().cloned());
        }
        params.push(Value::Integer(limit as i64));
        let fill = if lo.is_some() {
            &self.fill_next
        } else {
            &self.fill_first
        };
        conn.execute_batch("DELETE FROM temp.litekeeper_batch")
            .and_then(|()| {
                conn.prepare_cached(fill)?
                    .execute(params_from_iter(params.iter()))
            })
            .map_err(sql_err(format!("{}: selecting a batch", r.label)))
    }

    /// Dependants count toward the batch: count them (a read) and trim the batch until the
    /// predicted lock time fits, so rows with many dependants cannot overshoot. The rows kept.
    fn trim_to_fit(
        &self,
        conn: &Connection,
        r: &Resolved,
        model: &LockModel,
        target: f64,
        mut found: usize,
    ) -> Result<usize, JobError> {
        while !self.counts.is_empty() {
            let mut dep = 0u64;
            for sql in &self.counts {
                let n: i64 = conn
                    .prepare_cached(sql)
                    .and_then(|mut st| {
                        st.query_row(params_from_iter(r.params.iter()), |row| row.get(0))
                    })
                    .map_err(sql_err(format!(
                        "{}: counting a batch's dependants",
                        r.label
                    )))?;
                dep += n as u64;
            }
            let Some(keep) = model.trim(target, found, dep) else {
                break;
            };
            conn.execute(
                "DELETE FROM temp.litekeeper_batch WHERE rowid NOT IN
                   (SELECT rowid FROM temp.litekeeper_batch ORDER BY rowid LIMIT ?1)",
                [keep as i64],
            )
            .map_err(sql_err(format!("{}: trimming a batch", r.label)))?;
            found = keep;
        }
        Ok(found)
    }

    /// The batch's upper bound: rows come in key order, so its last key.
    fn last_key(&self, conn: &Connection, r: &Resolved) -> Result<Vec<Value>, JobError> {
        conn.query_row(&self.last_key, [], |row| {
            (0..self.width).map(|i| row.get::<_, Value>(i)).collect()
        })
        .map_err(sql_err(format!("{}: reading keys", r.label)))
    }
}

/// The keyset loop for one rule.
///
/// Each batch: copy the keys of the next `limit` matching rows into a temp table (a read of
/// the database), then, in one `BEGIN IMMEDIATE` transaction, run the foreign-key plan's
/// steps (dependants first) and delete exactly those keys where the rule still matches. The
/// write transaction touches only the listed rows and their dependants, so its cost follows
/// the batch size whatever the rule's shape; the size adapts to the measured lock time, with
/// dependant rows counting toward it, down to one row. Between batches a pause ([`Pacer`])
/// lets the app's writers in.
pub(super) fn delete_in_batches(
    ctx: &JobCtx<'_>,
    prune: &Prune,
    r: &Resolved,
    end: Option<i64>,
    budget: &mut Option<u64>,
    rep: &mut RuleFigures,
) -> Result<(), JobError> {
    let mut times = Times::default();
    let done = batches(ctx, prune, r, end, budget, rep, &mut times);
    times.record(rep);
    done
}

fn batches(
    ctx: &JobCtx<'_>,
    prune: &Prune,
    r: &Resolved,
    end: Option<i64>,
    budget: &mut Option<u64>,
    rep: &mut RuleFigures,
    times: &mut Times,
) -> Result<(), JobError> {
    let conn: &Connection = ctx.conn;
    let sql = BatchSql::new(conn, r, end)?;
    let _sync = CommitWithoutFsync::new(conn, &r.schema);
    // Declared after `_sync`, so dropped first: its thread has ended before the settings
    // come back.
    let background = Checkpointer::start(conn, &r.schema);
    let done = batch_loop(ctx, prune, r, &sql, background.as_ref(), budget, rep, times);
    if let Some(b) = &background {
        times.background = b.spent();
    }
    done
}

/// The batches of one rule, checkpointed by `background` when there is one (else inline).
#[allow(clippy::too_many_arguments)]
fn batch_loop(
    ctx: &JobCtx<'_>,
    prune: &Prune,
    r: &Resolved,
    sql: &BatchSql,
    background: Option<&Checkpointer>,
    budget: &mut Option<u64>,
    rep: &mut RuleFigures,
    times: &mut Times,
) -> Result<(), JobError> {
    let conn: &Connection = ctx.conn;
    let target = prune.max_lock.as_secs_f64().max(0.000_1);
    let aim = lock_aim(prune.max_lock).as_secs_f64().max(0.000_1);
    let mut model = LockModel::default();
    let mut pacer = Pacer::new(prune.pause);
    let progress = Progress::rows(&ctx.db.name, &r.label, rep.matched);
    progress.message("0 batches");
    let mut last_found = FIRST_BATCH;
    let mut version = None;
    let limit_for = |model: &LockModel, last_found: usize, budget: &Option<u64>| {
        let n = model.rows_for(aim, last_found).clamp(MIN_BATCH, MAX_BATCH);
        budget.map_or(n, |b| n.min(b as usize))
    };
    // 1. The keys of the first batch; each later batch's are found in the gap before it.
    let (mut next, mut select_took) = select(
        conn,
        sql,
        r,
        &model,
        aim,
        None,
        limit_for(&model, last_found, budget),
    )?;
    times.select += select_took;
    loop {
        ctx.checkpoint()?;
        let Some(Selected {
            filled,
            limit,
            found,
            hi,
        }) = next
        else {
            return Ok(());
        };
        // 2. Dependants, then the batch, in one short write transaction (first, past the WAL's
        // bound, the background checkpoint catches up so this write restarts the WAL).
        if let Some(b) = background {
            times.checkpoint += b.restart_wal(conn, &r.schema);
        }
        let batch = write_batch(conn, &sql.statements, &r.params, &sql.version, &r.label)?;
        let writers = version.is_some_and(|v| v != batch.version);
        version = Some(batch.version);
        record(rep, &sql.plan, &batch, found, budget);
        times.locked += batch.held;
        // 3. Learn what a row costs under the lock; note what no batch size can bound.
        learn(&mut model, rep, r, &batch, found, target, select_took);
        progress.set(rep.deleted);
        progress.message(format!("{} batches", rep.batches));
        last_found = found;
        if filled < limit && found == filled {
            return Ok(());
        }
        // 4. Let the app's writers in, and meanwhile checkpoint what the batch wrote: the
        // app's next commit then finds a short WAL, or the checkpoint lock taken, instead of
        // running a checkpoint of our pages itself (its auto-checkpoint, 1000 pages by
        // default, fsyncs inside its commit). In the background when it can, overlapping the
        // next batch; `request` returns once the checkpoint runs.
        let gap = Instant::now();
        let window = pacer.next(batch.held, writers);
        match background {
            Some(b) => b.request(),
            None => {
                let _ = conn.query_row(&sql.checkpoint, [], |_| Ok(()));
            }
        }
        let checkpointed = gap.elapsed();
        times.checkpoint += checkpointed;
        // 5. While the writers the batch held off wake up (a read, no lock), find the next
        // batch's keys; then wait out what is left of the gap.
        let limit = limit_for(&model, last_found, budget);
        (next, select_took) = select(conn, sql, r, &model, aim, Some(&hi), limit)?;
        times.select += select_took;
        if next.is_none() {
            return Ok(());
        }
        let through = wait_for_writer(
            conn,
            &sql.version,
            batch.version,
            gap + window,
            prune.pause.is_none(),
        );
        let waited = gap.elapsed().saturating_sub(checkpointed + select_took);
        times.paused += waited;
        tracing::debug!(
            "{} gap: checkpoint {:.1} ms, next batch found in {:.1} ms, then {:.1} ms until {} (window {:.1} ms)",
            r.label,
            ms(checkpointed),
            ms(select_took),
            ms(waited),
            if through {
                "a writer committed"
            } else {
                "the window closed"
            },
            ms(window)
        );
    }
}

/// The next batch's keys in the temp table, trimmed to fit the bound with their dependants.
struct Selected {
    /// Rows found (up to `limit`), and kept after trimming.
    filled: usize,
    limit: usize,
    found: usize,
    /// The batch's last key: the next batch starts after it.
    hi: Vec<Value>,
}

/// Find the next batch: up to `limit` matching rows after `lo` (None at the rule's end or
/// when the budget is spent), and the time that took.
fn select(
    conn: &Connection,
    sql: &BatchSql,
    r: &Resolved,
    model: &LockModel,
    aim: f64,
    lo: Option<&[Value]>,
    limit: usize,
) -> Result<(Option<Selected>, Duration), JobError> {
    let t = Instant::now();
    if limit == 0 {
        return Ok((None, t.elapsed()));
    }
    let filled = sql.fill(conn, r, lo, limit)?;
    if filled == 0 {
        return Ok((None, t.elapsed()));
    }
    let found = sql.trim_to_fit(conn, r, model, aim, filled)?;
    let hi = sql.last_key(conn, r)?;
    let selected = Selected {
        filled,
        limit,
        found,
        hi,
    };
    Ok((Some(selected), t.elapsed()))
}

/// The gap after a batch: until `until`, or (`early`, the adaptive pause) until another
/// connection has committed since the batch (`data_version` moved from `before`): the writer
/// the batch held off is through, and waiting longer would only slow the prune. Whether one
/// did.
fn wait_for_writer(
    conn: &Connection,
    version_sql: &str,
    before: i64,
    until: Instant,
    early: bool,
) -> bool {
    loop {
        if early
            && conn
                .query_row(version_sql, [], |row| row.get::<_, i64>(0))
                .is_ok_and(|v| v != before)
        {
            return true;
        }
        let now = Instant::now();
        if now >= until {
            return false;
        }
        std::thread::sleep(if early {
            POLL.min(until - now)
        } else {
            until - now
        });
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Where a rule's batches spent their time, summed as durations (whole milliseconds only in
/// the figures: sums of many short phases would lose their fractions).
#[derive(Default)]
struct Times {
    select: Duration,
    locked: Duration,
    checkpoint: Duration,
    /// Time the background checkpoint thread spent (beside the job's own).
    background: Duration,
    paused: Duration,
}

impl Times {
    fn record(&self, rep: &mut RuleFigures) {
        let whole = |d: Duration| Some(d.as_millis() as u64);
        rep.select_ms = whole(self.select);
        rep.locked_ms = whole(self.locked);
        rep.checkpoint_ms = whole(self.checkpoint);
        rep.checkpoint_bg_ms = (!self.background.is_zero())
            .then(|| whole(self.background))
            .flatten();
        rep.paused_ms = whole(self.paused);
    }
}

/// Count one committed batch into the rule's figures and the run's row budget.
fn record(
    rep: &mut RuleFigures,
    plan: &prune_fk::Plan,
    batch: &Batch,
    found: usize,
    budget: &mut Option<u64>,
) {
    let (deleted, steps) = batch
        .changed
        .split_last()
        .expect("the rule's delete is last");
    rep.deleted += deleted;
    let mut dep_deleted = 0;
    for (step, n) in plan.steps.iter().zip(steps) {
        add_dependant(&mut rep.dependants, &step.display, step.action, *n);
        if !matches!(step.change, prune_fk::Change::Set(_)) {
            dep_deleted += n;
        }
    }
    rep.batches += 1;
    rep.max_batch_ms = rep.max_batch_ms.max(batch.held.as_millis() as u64);
    let found = found as u64;
    rep.min_batch = Some(rep.min_batch.map_or(found, |m| m.min(found)));
    rep.max_batch = Some(rep.max_batch.map_or(found, |m| m.max(found)));
    if let Some(b) = budget {
        *b = b.saturating_sub(deleted + dep_deleted);
    }
}

/// Feed one batch's timings to the lock model; note a batch over the bound, and a one-row
/// batch over it (what no batch size can bound).
fn learn(
    model: &mut LockModel,
    rep: &mut RuleFigures,
    r: &Resolved,
    batch: &Batch,
    found: usize,
    target: f64,
    select: Duration,
) {
    let held = batch.held;
    let dep_changed: u64 = batch.changed[..batch.changed.len() - 1].iter().sum();
    let (dep_time, root_time) = batch.took.split_at(batch.took.len() - 1);
    model.learn(
        found as u64,
        root_time[0],
        dep_changed,
        dep_time.iter().sum(),
        held,
    );
    tracing::debug!(
        "{} batch {}: {found} rows, {dep_changed} dependants, select {:.1} ms, waited {:.1} ms, lock {:.1} ms (statements {:.1} ms + {:.1} ms)",
        r.label,
        rep.batches,
        ms(select),
        ms(batch.waited),
        ms(held),
        ms(root_time[0]),
        ms(dep_time.iter().sum::<Duration>()),
    );
    if held.as_secs_f64() > target {
        rep.batches_over_max_lock += 1;
        if found == 1 {
            let held_ms = held.as_millis() as u64;
            rep.one_row_ms = Some(rep.one_row_ms.unwrap_or(0).max(held_ms));
        }
    }
}

/// In WAL mode, `synchronous = NORMAL` for the schema while its batches run: a commit then
/// appends to the WAL without an fsync, so a batch's lock time is its work, not the disk's
/// flush latency (measured: 30-80 ms per commit on a busy disk, against a 50 ms bound). The
/// database stays consistent on power loss; the last batches may be lost and are redone by
/// the next run; the next checkpoint (ours, or the app's) syncs them. The connection's
/// automatic checkpoint is off meanwhile: it would run inside our COMMIT (it does not hold the
/// write lock, but it would be measured as if it did); the loop's own passive checkpoints
/// replace it. The previous settings come back on drop.
struct CommitWithoutFsync<'c> {
    conn: &'c Connection,
    schema: String,
    before: Option<i64>,
    autocheckpoint: Option<i64>,
}

impl<'c> CommitWithoutFsync<'c> {
    fn new(conn: &'c Connection, schema: &str) -> Self {
        let q = quote_ident(schema);
        let wal = conn
            .query_row(&format!("PRAGMA {q}.journal_mode"), [], |r| {
                r.get::<_, String>(0)
            })
            .is_ok_and(|m| m.eq_ignore_ascii_case("wal"));
        let before = wal
            .then(|| {
                conn.query_row(&format!("PRAGMA {q}.synchronous"), [], |r| r.get(0))
                    .ok()
            })
            .flatten()
            .filter(|&s: &i64| s > 1);
        if before.is_some() {
            let _ = conn.execute_batch(&format!("PRAGMA {q}.synchronous = NORMAL"));
        }
        let autocheckpoint = wal
            .then(|| {
                conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
                    .ok()
            })
            .flatten();
        if autocheckpoint.is_some() {
            let _ = conn.query_row("PRAGMA wal_autocheckpoint = 0", [], |_| Ok(()));
        }
        CommitWithoutFsync {
            conn,
            schema: q,
            before,
            autocheckpoint,
        }
    }
}

impl Drop for CommitWithoutFsync<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.before {
            let _ = self
                .conn
                .execute_batch(&format!("PRAGMA {}.synchronous = {s}", self.schema));
        }
        if let Some(n) = self.autocheckpoint {
            let _ =
                self.conn
                    .query_row(&format!("PRAGMA wal_autocheckpoint = {n}"), [], |_| Ok(()));
        }
    }
}

/// One committed batch: rows each statement changed, each statement's time, the lock's time,
/// and the schema's `data_version` when the lock was taken.
struct Batch {
    changed: Vec<u64>,
    /// How long `BEGIN IMMEDIATE` waited for the app's writers.
    waited: Duration,
    took: Vec<Duration>,
    held: Duration,
    version: i64,
}

/// Run `statements` in one `BEGIN IMMEDIATE` transaction; what each changed and took, how
/// long the write lock was held, and `version_sql`'s value once it was taken (it counts the
/// other connections' commits up to then).
fn write_batch(
    conn: &Connection,
    statements: &[String],
    params: &[Value],
    version_sql: &str,
    label: &str,
) -> Result<Batch, JobError> {
    let asked = Instant::now();
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(sql_err(format!("{label}: starting a write transaction (the app may hold the write lock longer than busy_timeout)")))?;
    let started = Instant::now();
    let waited = started - asked;
    let version = match conn.query_row(version_sql, [], |row| row.get(0)) {
        Ok(v) => v,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(sql_err(format!("{label}: reading data_version"))(e));
        }
    };
    let mut changed = Vec::with_capacity(statements.len());
    let mut took = Vec::with_capacity(statements.len());
    for sql in statements {
        let t = Instant::now();
        let result = conn
            .prepare_cached(sql)
            .and_then(|mut st| st.execute(params_from_iter(params.iter())));
        match result {
            Ok(n) => {
                changed.push(n as u64);
                took.push(t.elapsed());
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(sql_err(format!("{label}: deleting a batch"))(e));
            }
        }
    }
    conn.execute_batch("COMMIT").map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        sql_err(format!("{label}: committing a batch"))(e)
    })?;
    Ok(Batch {
        changed,
        waited,
        took,
        held: started.elapsed(),
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adaptive_gap_ends_when_another_connection_commits_and_a_fixed_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gap.db");
        let ours = Connection::open(&path).unwrap();
        ours.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t(x)")
            .unwrap();
        let sql = "PRAGMA main.data_version";
        let version = |c: &Connection| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        let before = version(&ours);
        // Nobody commits: the gap lasts until its end, and says no writer got in.
        let until = Instant::now() + Duration::from_millis(20);
        assert!(!wait_for_writer(&ours, sql, before, until, true));
        assert!(Instant::now() >= until);
        // The app commits during the gap: an adaptive gap ends at once and says so...
        let app = Connection::open(&path).unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            app.execute("INSERT INTO t VALUES (1)", []).unwrap();
        });
        let long = Instant::now() + Duration::from_secs(60);
        assert!(wait_for_writer(&ours, sql, before, long, true));
        assert!(Instant::now() < long);
        writer.join().unwrap();
        // ...and a fixed one (`pause = "…"`) lasts its whole length whatever happened.
        let until = Instant::now() + Duration::from_millis(20);
        assert!(!wait_for_writer(&ours, sql, before, until, false));
        assert!(Instant::now() >= until);
    }
}
