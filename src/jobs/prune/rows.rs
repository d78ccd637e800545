//! The keyset batch machinery of a row rule: one batch per short write transaction, sized
//! by its measured lock time, and the WAL checkpoints around it.

use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection};

use super::super::prune_batch::{LockModel, FIRST_BATCH};
use super::super::prune_fk;
use super::schema::Resolved;
use super::{add_dependant, sql_err};
use crate::config::Prune;
use crate::domain::RuleFigures;
use crate::jobs::{JobCtx, JobError};
use crate::sqlite::quote_ident;

/// Batch sizes stay within these bounds whatever the timing says.
const MIN_BATCH: usize = 1;
const MAX_BATCH: usize = 50_000;
/// A passive checkpoint every this many batches keeps the WAL from growing.
const CHECKPOINT_EVERY: u32 = 8;

/// The keyset loop for one rule.
///
/// Each batch: copy the keys of the next `limit` matching rows into a temp table (a read of
/// the database), then, in one `BEGIN IMMEDIATE` transaction, run the foreign-key plan's
/// steps (dependants first) and delete exactly those keys where the rule still matches. The
/// write transaction touches only the listed rows and their dependants, so its cost follows
/// the batch size whatever the rule's shape; the size adapts to the measured lock time, with
/// dependant rows counting toward it, down to one row.
pub(super) fn delete_in_batches(
    ctx: &JobCtx<'_>,
    prune: &Prune,
    r: &Resolved,
    budget: &mut Option<u64>,
    rep: &mut RuleFigures,
) -> Result<(), JobError> {
    let conn: &Connection = ctx.conn;
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
    // ?1..?np: the rule's parameters; then lo (width); then the limit.
    let fill_first = format!(
        "INSERT INTO temp.litekeeper_batch SELECT {keys} FROM {} NOT INDEXED WHERE ({}) ORDER BY {keys} LIMIT ?{}",
        r.table,
        r.predicate,
        np + 1
    );
    let fill_next = format!(
        "INSERT INTO temp.litekeeper_batch SELECT {keys} FROM {} NOT INDEXED WHERE {} AND ({}) ORDER BY {keys} LIMIT ?{}",
        r.table,
        r.keys.cmp(">", np + 1),
        r.predicate,
        np + width + 1
    );
    let last_key = format!("SELECT {kcols} FROM temp.litekeeper_batch ORDER BY rowid DESC LIMIT 1");
    // The batch's rows, re-checked in the write transaction: a row the app changed since the
    // read no longer matches and stays. The unary `+` keeps the planner on the key lookups
    // (an index the rule's condition could use might cover far more rows than the batch).
    let root_cond = format!(
        "({keys}) IN (SELECT {kcols} FROM temp.litekeeper_batch) AND +({})",
        r.predicate
    );
    let plan = prune_fk::plan(&r.fks, &r.schema, &r.name, &root_cond)
        .map_err(|e| JobError::Refused(format!("{}: {e}", r.label)))?;
    let counts: Vec<String> = plan.steps.iter().map(|s| s.count_sql()).collect();
    let mut statements: Vec<String> = plan.steps.iter().map(|s| s.sql()).collect();
    statements.push(format!("DELETE FROM {} WHERE {root_cond}", r.table));
    let _sync = CommitWithoutFsync::new(conn, &r.schema);
    let target = prune.max_lock.as_secs_f64().max(0.000_1);
    let mut model = LockModel::default();
    let mut lo: Option<Vec<Value>> = None;
    let mut last_found = FIRST_BATCH;
    loop {
        ctx.checkpoint()?;
        let n = model
            .rows_for(target, last_found)
            .clamp(MIN_BATCH, MAX_BATCH);
        let limit = match budget {
            Some(b) => n.min(*b as usize),
            None => n,
        };
        if limit == 0 {
            return Ok(());
        }
        // 1. The keys of the next batch (a read: the app's writers carry on).
        let mut params: Vec<Value> = r.params.clone();
        if let Some(lo) = &lo {
            params.extend(lo.iter().cloned());
        }
        params.push(Value::Integer(limit as i64));
        let fill = if lo.is_some() {
            &fill_next
        } else {
            &fill_first
        };
        let filled = conn
            .execute_batch("DELETE FROM temp.litekeeper_batch")
            .and_then(|()| {
                conn.prepare_cached(fill)?
                    .execute(params_from_iter(params.iter()))
            })
            .map_err(sql_err(format!("{}: selecting a batch", r.label)))?;
        if filled == 0 {
            return Ok(());
        }
        let exhausted = filled < limit;
        // Dependants count toward the batch: count them (a read) and trim the batch until
        // the predicted lock time fits, so rows with many dependants cannot overshoot.
        let mut found = filled;
        while !counts.is_empty() {
            let mut dep = 0u64;
            for sql in &counts {
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
        // Rows come in key order: the last one is the batch's upper bound.
        let hi: Vec<Value> = conn
            .query_row(&last_key, [], |row| {
                (0..width).map(|i| row.get::<_, Value>(i)).collect()
            })
            .map_err(sql_err(format!("{}: reading keys", r.label)))?;
        // 2. Dependants, then the batch, in one short write transaction.
        let batch = write_batch(conn, &statements, &r.params, &r.label)?;
        let (deleted, steps) = batch
            .changed
            .split_last()
            .expect("the rule's delete is last");
        rep.deleted += deleted;
        let mut dep_deleted = 0;
        let mut dep_changed = 0;
        for (step, n) in plan.steps.iter().zip(steps) {
            add_dependant(&mut rep.dependants, &step.display, step.action, *n);
            dep_changed += n;
            if !matches!(step.change, prune_fk::Change::Set(_)) {
                dep_deleted += n;
            }
        }
        rep.batches += 1;
        let held = batch.held;
        let held_ms = held.as_millis() as u64;
        rep.max_batch_ms = rep.max_batch_ms.max(held_ms);
        rep.min_batch = Some(rep.min_batch.map_or(found as u64, |m| m.min(found as u64)));
        rep.max_batch = Some(rep.max_batch.map_or(found as u64, |m| m.max(found as u64)));
        if let Some(b) = budget {
            *b = b.saturating_sub(deleted + dep_deleted);
        }
        // 3. Learn what a row costs under the lock; note what no batch size can bound.
        let (dep_time, root_time) = batch.took.split_at(batch.took.len() - 1);
        model.learn(
            found as u64,
            root_time[0],
            dep_changed,
            dep_time.iter().sum(),
            held,
        );
        tracing::debug!(
            "{} batch {}: {found} rows, {dep_changed} dependants, lock {} ms (statements {} ms + {} ms)",
            r.label,
            rep.batches,
            held.as_secs_f64() * 1000.0,
            root_time[0].as_secs_f64() * 1000.0,
            dep_time.iter().sum::<Duration>().as_secs_f64() * 1000.0
        );
        if held.as_secs_f64() > target {
            rep.batches_over_max_lock += 1;
            if found == 1 {
                rep.one_row_ms = Some(rep.one_row_ms.unwrap_or(0).max(held_ms));
            }
        }
        last_found = found;
        if rep.batches.is_multiple_of(CHECKPOINT_EVERY) {
            let schema = r.table.split('.').next().unwrap_or("main");
            let _ = conn.query_row(
                &format!("PRAGMA {schema}.wal_checkpoint(PASSIVE)"),
                [],
                |_| Ok(()),
            );
        }
        if exhausted && found == filled {
            return Ok(());
        }
        lo = Some(hi);
        // 4. Let the app's writers in.
        if !prune.pause.is_zero() {
            std::thread::sleep(prune.pause);
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

/// One committed batch: rows each statement changed, each statement's time, the lock's time.
struct Batch {
    changed: Vec<u64>,
    took: Vec<Duration>,
    held: Duration,
}

/// Run `statements` in one `BEGIN IMMEDIATE` transaction; what each changed and took, and how
/// long the write lock was held.
fn write_batch(
    conn: &Connection,
    statements: &[String],
    params: &[Value],
    label: &str,
) -> Result<Batch, JobError> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(sql_err(format!("{label}: starting a write transaction (the app may hold the write lock longer than busy_timeout)")))?;
    let started = Instant::now();
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
        took,
        held: started.elapsed(),
    })
}
