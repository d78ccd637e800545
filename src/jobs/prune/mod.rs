//! The prune job: delete old and orphaned rows, then orphaned files, in short transactions.
//!
//! Row rules run in config order on the job's connection (attached databases included), so a
//! cascade (chat → message → blob) completes in one run. Each rule deletes in keyset batches:
//! copy the keys of the next N matching rows after the last batch's end into a temp table (a
//! read of the database, which does not block the app's writers in WAL mode), then delete the
//! declared foreign-key dependants of those rows (`prune_fk`) and `… WHERE key IN (batch) AND
//! <rule>` in its own `BEGIN IMMEDIATE` transaction. The table is read `NOT INDEXED` so the scan
//! follows the rowid (or primary key) order and every row is visited once: O(N) in total,
//! never `rowid IN (SELECT … LIMIT n)` re-scans; on a rowid table the walk ends at the highest
//! rowid the rule matched when it was counted (rows matching only later, above it, wait for
//! the next run). N adapts (dependants included) so one transaction holds the write lock for
//! at most `max_lock`, aiming at the last retry of a held-off writer's busy handler within it.
//! After each batch a PASSIVE checkpoint of the WAL starts on a second connection and thread
//! (`checkpointer`), overlapping the next batch, and the job finds the next batch's keys while
//! the app's writers it held off get in; then it pauses until one of them committed
//! (`prune_batch::Pacer`), or for a fixed `pause`. Past 24 MiB of WAL the job waits for the
//! checkpoints to catch up, so the WAL restarts at its beginning.
//!
//! Files rules then compare a directory's entries with the ids a SELECT returns. Symlinks are
//! never followed, nothing outside the directory is touched, and a rule whose reference query
//! returns nothing deletes nothing (unless `allow_empty_reference`).

mod checkpointer;
mod files;
mod rows;
mod schema;

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection};

use self::files::{prune_files, refuse};
use self::rows::delete_in_batches;
use self::schema::{resolve, KeyCols, Resolved};
use super::prune_fk;
use super::{JobCtx, JobError, JobResult};
use crate::config::{Config, Database, Prune};
use crate::domain::human_bytes;
use crate::domain::{DependantFigures, Figures, PruneFigures, RuleFigures};
use crate::sqlite::truncate_wal;

pub use self::schema::{check_schema, SchemaProblem};

fn sql_err(context: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> JobError {
    let context = context.into();
    move |source| JobError::Sqlite { context, source }
}

/// "90d", "36h", "15m", "30s": the way durations are written in the config.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_nanos() != 0 || s == 0 {
        return format!("{}ms", d.as_millis());
    }
    match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The per-rule table of a prune report's figures, for `run` and the demo (nothing for other
/// figures).
pub fn rules_table(figures: &Option<Figures>) -> Vec<String> {
    let Some(figures) = figures.as_ref().and_then(Figures::prune) else {
        return Vec::new();
    };
    let dry = figures.rows_matched.is_some();
    let mut out = vec![format!(
        "  {:<9} {:>9} {:>9} {:>8} {:>10}  {}",
        "rule",
        "matched",
        if dry { "would" } else { "deleted" },
        "batches",
        "bytes",
        "what (samples)"
    )];
    for r in &figures.rules {
        out.push(format!(
            "  {:<9} {:>9} {:>9} {:>8} {:>10}  {}{}{}{}{}",
            r.rule,
            r.matched,
            if dry { r.matched } else { r.deleted },
            r.batches,
            r.bytes.map(human_bytes).unwrap_or_else(|| "-".into()),
            r.what,
            if r.samples.is_empty() {
                String::new()
            } else {
                format!(" (e.g. {})", r.samples.join(", "))
            },
            r.dependants
                .iter()
                .map(|d| format!(
                    "; {} {} {} ({})",
                    if d.deletes() { "with" } else { "sets" },
                    d.rows,
                    d.table,
                    d.action
                ))
                .collect::<String>(),
            r.note
                .as_ref()
                .map(|n| format!("; {n}"))
                .unwrap_or_default(),
            if r.refused.is_some() {
                "; REFUSED by a guard, skipped (see the warning)"
            } else {
                ""
            }
        ));
    }
    out
}

fn add_dependant(deps: &mut Vec<DependantFigures>, table: &str, action: &str, rows: u64) {
    match deps
        .iter_mut()
        .find(|d| d.table == table && d.action == action)
    {
        Some(d) => d.rows += rows,
        None => deps.push(DependantFigures {
            table: table.into(),
            action: action.into(),
            rows,
        }),
    }
}

fn db_index(config: &Config, db: &Database) -> usize {
    config
        .databases
        .iter()
        .position(|d| d.name == db.name)
        .unwrap_or(0)
}

pub fn run(ctx: &mut JobCtx<'_>) -> Result<JobResult, JobError> {
    let prune = ctx
        .db
        .prune
        .as_ref()
        .ok_or_else(|| JobError::Refused("no [database.prune] section".into()))?;
    let dry_run = ctx.dry_run || prune.dry_run;
    let now = Utc::now();
    let index = db_index(ctx.config, ctx.db);
    let names: Vec<String> = ctx
        .config
        .databases
        .iter()
        .map(|d| d.name.clone())
        .collect();
    let (rules, _) = resolve(ctx.conn, index, prune, now).map_err(|problems| {
        JobError::Config(
            problems
                .iter()
                .map(|p| crate::config::locate(&ctx.config.file, &p.key, &names, &p.reason))
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;

    let RowsDone {
        reports,
        schemas_touched,
        stopped_early,
    } = run_rules(ctx, prune, &rules, dry_run)?;
    if !dry_run {
        for schema in &schemas_touched {
            truncate_wal(ctx.conn, schema);
        }
    }

    let mut files_reports = Vec::new();
    if stopped_early.is_none() {
        for (i, f) in prune.files.iter().enumerate() {
            ctx.checkpoint()?;
            files_reports.push(prune_files(ctx, prune, i, f, dry_run, now)?);
        }
    }

    let (summary, mut figures) = summarize(prune, dry_run, &reports, &files_reports, stopped_early);
    figures.rules = reports.into_iter().chain(files_reports).collect();
    Ok(JobResult {
        summary,
        figures: Some(Figures::Prune(figures)),
        skipped: false,
    })
}

/// What the row rules did: their figures, the schemas that lost rows, and why the run
/// stopped before the end (`max_rows`).
struct RowsDone {
    reports: Vec<RuleFigures>,
    schemas_touched: HashSet<String>,
    stopped_early: Option<String>,
}

/// The row rules in order: count, guard, delete (or, dry, count the dependants and sample).
fn run_rules(
    ctx: &JobCtx<'_>,
    prune: &Prune,
    rules: &[Resolved],
    dry_run: bool,
) -> Result<RowsDone, JobError> {
    let mut reports = Vec::new();
    let mut budget = prune.max_rows;
    let mut schemas_touched = HashSet::new();
    let mut stopped_early = None;
    for r in rules {
        ctx.checkpoint()?;
        let Counted {
            matched,
            total,
            last,
        } = count(ctx.conn, r)?;
        let mut rep = RuleFigures {
            rule: r.label.clone(),
            what: r.what.clone(),
            matched,
            ..Default::default()
        };
        if !r.restricted_by.is_empty() {
            rep.note = Some(format!(
                "rows still referenced through {} (ON DELETE RESTRICT) are kept{}",
                r.restricted_by.join(", "),
                if r.runs_after.is_empty() {
                    String::new()
                } else {
                    format!("; runs after {}", r.runs_after.join(", "))
                }
            ));
        }
        if dry_run {
            rep.samples = samples(ctx.conn, r)?;
            rep.dependants = count_dependants(ctx.conn, r)?;
            reports.push(rep);
            continue;
        }
        if matched == 0 {
            reports.push(rep);
            continue;
        }
        if total > 0 && matched as f64 / total as f64 > prune.max_fraction {
            // A guard's refusal skips this rule only: the later rules still run.
            reports.push(refuse(rep, format!(
                "{} ({}) refused by max_fraction: would delete {matched} of {total} rows ({:.0}%), more than max_fraction {:.0}%; nothing of it was deleted. Check the rule with `litekeeper run {} prune --dry-run`, or raise max_fraction if this is intended",
                r.label,
                r.what,
                matched as f64 * 100.0 / total as f64,
                prune.max_fraction * 100.0,
                ctx.db.name
            )));
            continue;
        }
        schemas_touched.insert(r.table.split('.').next().unwrap_or("main").to_string());
        let done = delete_in_batches(ctx, prune, r, last, &mut budget, &mut rep);
        reports.push(rep);
        done?;
        if budget == Some(0) {
            stopped_early = Some(format!(
                "stopped at max_rows = {}; the rest is deleted by the next run",
                prune.max_rows.unwrap_or(0)
            ));
            break;
        }
    }
    Ok(RowsDone {
        reports,
        schemas_touched,
        stopped_early,
    })
}

/// The run's summary line and figures (rules not yet filled in) from the rules' figures.
fn summarize(
    prune: &Prune,
    dry_run: bool,
    reports: &[RuleFigures],
    files_reports: &[RuleFigures],
    stopped_early: Option<String>,
) -> (String, PruneFigures) {
    let dependants: u64 = reports
        .iter()
        .flat_map(|r| r.dependants.iter())
        .filter(|d| d.deletes())
        .map(|d| d.rows)
        .sum();
    let rows: u64 = reports
        .iter()
        .map(|r| if dry_run { r.matched } else { r.deleted })
        .sum::<u64>()
        + dependants;
    let with_dependants = if dependants > 0 {
        format!(" ({dependants} of them dependants through declared foreign keys)")
    } else {
        String::new()
    };
    let over: Vec<String> = reports
        .iter()
        .filter_map(|r| {
            r.one_row_ms.map(|ms| {
                format!(
                    "; {}: one row's delete held the write lock {ms} ms, more than max_lock {} (its where clause or its dependants cost that much per statement: index the columns they search)",
                    r.rule,
                    short_duration(prune.max_lock)
                )
            })
        })
        .collect();
    let files: u64 = files_reports.iter().map(|r| r.files.unwrap_or(0)).sum();
    let bytes: u64 = files_reports.iter().map(|r| r.bytes.unwrap_or(0)).sum();
    let mut figures = PruneFigures::default();
    let all: Vec<&RuleFigures> = reports.iter().chain(files_reports.iter()).collect();
    let refused: Vec<&str> = all
        .iter()
        .filter(|r| r.refused.is_some())
        .map(|r| r.rule.as_str())
        .collect();
    let refused_note = if refused.is_empty() {
        String::new()
    } else {
        figures.rules_refused = Some(refused.len() as u64);
        format!(
            "; refused by a guard: {} (skipped, see the warnings; the other rules ran)",
            refused.join(", ")
        )
    };
    let summary = if dry_run {
        figures.rows_matched = Some(rows);
        figures.files_matched = Some(files);
        format!(
            "dry run: would delete {rows} rows{with_dependants} and {files} files ({}); nothing changed (each rule is counted on today's data: rows that earlier rules would orphan are not counted)",
            human_bytes(bytes)
        )
    } else {
        figures.rows_deleted = Some(rows);
        figures.files_deleted = Some(files);
        figures.bytes_freed = Some(bytes);
        let batches: u32 = reports.iter().map(|r| r.batches).sum();
        let max_ms = reports.iter().map(|r| r.max_batch_ms).max().unwrap_or(0);
        figures.max_batch_ms = Some(max_ms);
        let sum =
            |f: fn(&RuleFigures) -> Option<u64>| -> u64 { reports.iter().filter_map(f).sum() };
        let (locked, select, paused, checkpoint, background) = (
            sum(|r| r.locked_ms),
            sum(|r| r.select_ms),
            sum(|r| r.paused_ms),
            sum(|r| r.checkpoint_ms),
            sum(|r| r.checkpoint_bg_ms),
        );
        let background = if background > 0 {
            format!(" + {background} ms on a second thread")
        } else {
            String::new()
        };
        format!(
            "deleted {rows} rows{with_dependants} in {batches} batches (longest {max_ms} ms; {locked} ms holding the write lock, {select} ms finding rows, {paused} ms paused, {checkpoint} ms checkpointing{background}) and {files} files ({}){}{}{refused_note}",
            human_bytes(bytes),
            over.concat(),
            stopped_early.map(|s| format!("; {s}")).unwrap_or_default()
        )
    };
    (summary, figures)
}

/// What a rule matches when it starts: rows, rows in its table, and (a rowid table) the
/// highest matching rowid, where its batches stop.
struct Counted {
    matched: u64,
    total: u64,
    last: Option<i64>,
}

/// Count what the rule matches now. (The planner may use an index here: this is one read,
/// unlike the batch scans, which must follow the key order; the highest rowid comes with
/// the count, from the same rows.)
fn count(conn: &Connection, r: &Resolved) -> Result<Counted, JobError> {
    crate::sqlite::expected_slow(|| count_now(conn, r))
}

fn count_now(conn: &Connection, r: &Resolved) -> Result<Counted, JobError> {
    let last = match &r.keys {
        KeyCols::Rowid(name) => format!("max({name})"),
        KeyCols::Primary(_) => "NULL".into(),
    };
    let (matched, last): (i64, Option<i64>) = conn
        .query_row(
            &format!(
                "SELECT count(*), {last} FROM {} WHERE {}",
                r.table, r.predicate
            ),
            params_from_iter(r.params.iter()),
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .map_err(sql_err(format!("{}: counting matching rows", r.label)))?;
    let total: i64 = conn
        .query_row(&format!("SELECT count(*) FROM {}", r.table), [], |row| {
            row.get(0)
        })
        .map_err(sql_err(format!("{}: counting rows", r.label)))?;
    Ok(Counted {
        matched: matched as u64,
        total: total as u64,
        last,
    })
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(t) => crate::sqlite::truncate(t, 100),
        Value::Blob(b) => format!("<{} byte blob>", b.len()),
    }
}

fn samples(conn: &Connection, r: &Resolved) -> Result<Vec<String>, JobError> {
    let mut st = conn
        .prepare(&format!(
            "SELECT {} FROM {} NOT INDEXED WHERE {} ORDER BY {} LIMIT 5",
            r.sample_expr,
            r.table,
            r.predicate,
            r.keys.list()
        ))
        .map_err(sql_err(format!("{}: sampling", r.label)))?;
    let n = st.column_count();
    let rows = st
        .query_map(params_from_iter(r.params.iter()), |row| {
            let vals: rusqlite::Result<Vec<Value>> =
                (0..n).map(|i| row.get::<_, Value>(i)).collect();
            Ok(vals?.iter().map(show).collect::<Vec<_>>().join("/"))
        })
        .map_err(sql_err(format!("{}: sampling", r.label)))?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sql_err(format!("{}: sampling", r.label)))
}

/// Dependant rows the rule's matches would take with them, per table, counted now.
fn count_dependants(conn: &Connection, r: &Resolved) -> Result<Vec<DependantFigures>, JobError> {
    let plan = prune_fk::plan(&r.fks, &r.schema, &r.name, &r.predicate)
        .map_err(|e| JobError::Refused(format!("{}: {e}", r.label)))?;
    let mut out = Vec::new();
    for step in &plan.steps {
        let n: i64 = crate::sqlite::expected_slow(|| {
            conn.query_row(
                &step.count_sql(),
                params_from_iter(r.params.iter()),
                |row| row.get(0),
            )
        })
        .map_err(sql_err(format!(
            "{}: counting dependant rows in {}",
            r.label, step.display
        )))?;
        add_dependant(&mut out, &step.display, step.action, n as u64);
    }
    Ok(out)
}
