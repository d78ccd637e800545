//! The prune job: delete old and orphaned rows, then orphaned files, in short transactions.
//!
//! Row rules run in config order on the job's connection (attached databases included), so a
//! cascade (chat → message → blob) completes in one run. Each rule deletes in keyset batches:
//! copy the keys of the next N matching rows after the last batch's end into a temp table (a
//! read of the database, which does not block the app's writers in WAL mode), then delete the
//! declared foreign-key dependants of those rows (`prune_fk`) and `… WHERE key IN (batch) AND
//! <rule>` in its own `BEGIN IMMEDIATE` transaction. The table is read `NOT INDEXED` so the scan
//! follows the rowid (or primary key) order and every row is visited once: O(N) in total,
//! never `rowid IN (SELECT … LIMIT n)` re-scans. N adapts (dependants included) so one
//! transaction holds the write lock for at most `max_lock`; a `pause` between batches lets the
//! app write and the WAL checkpoint.
//!
//! Files rules then compare a directory's entries with the ids a SELECT returns. Symlinks are
//! never followed, nothing outside the directory is touched, and a rule whose reference query
//! returns nothing deletes nothing (unless `allow_empty_reference`).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection};

use super::prune_batch::{LockModel, FIRST_BATCH};
use super::prune_fk;
use super::{JobCtx, JobError, JobResult};
use crate::config::{
    Config, Database, Entries, FileAction, FilesRule, KeyPath, Prune, Rule, TableRef, TimeFormat,
};
use crate::domain::human_bytes;
use crate::domain::{DependantFigures, Figures, PruneFigures, RuleFigures};
use crate::safe_fs::{self, DirHandle, Kind};

pub use crate::config::QUARANTINE_DIR;
/// Batch sizes stay within these bounds whatever the timing says.
const MIN_BATCH: usize = 1;
const MAX_BATCH: usize = 50_000;
/// A passive checkpoint every this many batches keeps the WAL from growing.
const CHECKPOINT_EVERY: u32 = 8;

/// Quote an SQL identifier.
pub fn qi(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn qtable(t: &TableRef) -> String {
    match &t.schema {
        Some(s) => format!("{}.{}", qi(s), qi(&t.table)),
        None => format!("main.{}", qi(&t.table)),
    }
}

fn sql_err(context: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> JobError {
    let context = context.into();
    move |source| JobError::Sqlite { context, source }
}

/// How a table's rows are addressed for keyset batches.
#[derive(Debug, Clone)]
enum KeyCols {
    /// A rowid table: the name that reaches the rowid (`rowid`, `_rowid_` or `oid`).
    Rowid(String),
    /// A WITHOUT ROWID table: its primary-key columns in key order.
    Primary(Vec<String>),
}

impl KeyCols {
    fn list(&self) -> String {
        match self {
            KeyCols::Rowid(r) => r.clone(),
            KeyCols::Primary(c) => c.iter().map(|c| qi(c)).collect::<Vec<_>>().join(", "),
        }
    }
    fn width(&self) -> usize {
        match self {
            KeyCols::Rowid(_) => 1,
            KeyCols::Primary(c) => c.len(),
        }
    }
    /// `(k1, k2) > (?, ?)`-style comparison with parameters starting at `?{first}`.
    fn cmp(&self, op: &str, first: usize) -> String {
        let params: Vec<String> = (0..self.width())
            .map(|i| format!("?{}", first + i))
            .collect();
        format!("({}) {op} ({})", self.list(), params.join(", "))
    }
}

/// A rule checked against the live schema, ready to run.
#[derive(Debug, Clone)]
struct Resolved {
    /// `rule[2]` in the config.
    label: String,
    /// Human description: "chat: updated_at older than 60d".
    what: String,
    table: String,
    keys: KeyCols,
    /// The rule's condition on the table's columns; its parameters are `params`.
    predicate: String,
    params: Vec<Value>,
    /// For dry-run samples: the expression worth showing (the orphan key, else the row key).
    sample_expr: String,
    /// The schema (`main` or an alias) and the table's name, for the foreign-key plan.
    schema: String,
    name: String,
    /// The schema's declared foreign keys.
    fks: Vec<prune_fk::Fk>,
    /// `ON DELETE RESTRICT` keys whose referenced rows the rule spares.
    restricted_by: Vec<String>,
    /// Rules moved ahead of this one because their table holds such a key.
    runs_after: Vec<String>,
}

/// A schema problem with the config key it comes from.
#[derive(Debug, Clone)]
pub struct SchemaProblem {
    pub key: KeyPath,
    pub reason: String,
}

fn columns(conn: &Connection, t: &TableRef) -> rusqlite::Result<Vec<(String, i64)>> {
    let schema = t.schema.as_deref().unwrap_or("main");
    let mut st = conn.prepare("SELECT name, pk FROM pragma_table_xinfo(?1, ?2) ORDER BY cid")?;
    let rows = st.query_map([&t.table, schema], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

fn table_kind(conn: &Connection, t: &TableRef) -> rusqlite::Result<Option<(String, bool)>> {
    let schema = t.schema.as_deref().unwrap_or("main");
    let mut st =
        conn.prepare("SELECT type, wr FROM pragma_table_list WHERE schema = ?1 AND name = ?2")?;
    let mut rows = st.query([schema, &t.table])?;
    match rows.next()? {
        Some(r) => Ok(Some((r.get(0)?, r.get::<_, i64>(1)? != 0))),
        None => Ok(None),
    }
}

fn display_table(t: &TableRef) -> String {
    match &t.schema {
        Some(s) => format!("{s}.{}", t.table),
        None => t.table.clone(),
    }
}

/// Check one table reference; Ok(columns) or a problem for `key`.
fn check_table(
    conn: &Connection,
    t: &TableRef,
    key: &KeyPath,
    problems: &mut Vec<SchemaProblem>,
) -> Option<(Vec<(String, i64)>, bool)> {
    let fail = |problems: &mut Vec<SchemaProblem>, reason: String| {
        problems.push(SchemaProblem {
            key: key.clone(),
            reason,
        })
    };
    match table_kind(conn, t) {
        Ok(Some((kind, without_rowid))) if kind == "table" => match columns(conn, t) {
            Ok(cols) => Some((cols, without_rowid)),
            Err(e) => {
                fail(
                    problems,
                    format!("cannot read the columns of {}: {e}", display_table(t)),
                );
                None
            }
        },
        Ok(Some((kind, _))) => {
            fail(
                problems,
                format!(
                    "{} is a {kind}, not a table; prune deletes from tables only",
                    display_table(t)
                ),
            );
            None
        }
        Ok(None) => {
            fail(
                problems,
                format!(
                    "no table {} in {} (check the name; attached databases are written alias.table)",
                    display_table(t),
                    t.schema.as_deref().unwrap_or("the main database")
                ),
            );
            None
        }
        Err(e) => {
            fail(problems, format!("cannot read the schema: {e}"));
            None
        }
    }
}

/// An SQL fragment must compile as one expression against the table: no second statement,
/// no unknown column. `what` names it in the message.
fn check_expr(conn: &Connection, table: &str, expr: &str) -> Result<(), String> {
    if expr.contains(';') {
        return Err("must be a single SQL expression (no `;`)".into());
    }
    let sql = format!("SELECT ({expr}) FROM {table} NOT INDEXED LIMIT 0");
    match conn.prepare(&sql) {
        Ok(st) if st.readonly() => Ok(()),
        Ok(_) => Err("must not modify anything".into()),
        // SQLite's words only: the probe statement around the expression is ours.
        Err(e) => Err(match e {
            rusqlite::Error::SqliteFailure(_, Some(m)) => m,
            rusqlite::Error::SqlInputError { msg, .. } => msg,
            other => other.to_string(),
        }),
    }
}

fn rule_key(db_index: usize, i: usize) -> KeyPath {
    KeyPath::root()
        .key("database")
        .index(db_index)
        .key("prune")
        .key("rule")
        .index(i)
}

fn files_key(db_index: usize, i: usize) -> KeyPath {
    KeyPath::root()
        .key("database")
        .index(db_index)
        .key("prune")
        .key("files")
        .index(i)
}

/// Check every rule of `prune` against the live schema; each problem names its config key.
/// Used at job start and by `litekeeper check`.
pub fn check_schema(
    conn: &Connection,
    db_index: usize,
    prune: &Prune,
    now: DateTime<Utc>,
) -> Vec<SchemaProblem> {
    match resolve(conn, db_index, prune, now) {
        Ok(_) => Vec::new(),
        Err(p) => p,
    }
}

fn resolve(
    conn: &Connection,
    db_index: usize,
    prune: &Prune,
    now: DateTime<Utc>,
) -> Result<(Vec<Resolved>, Vec<String>), Vec<SchemaProblem>> {
    let mut problems = Vec::new();
    let mut out = Vec::new();
    let mut fk_graphs: std::collections::HashMap<String, Result<Vec<prune_fk::Fk>, String>> =
        Default::default();
    for (i, rule) in prune.rules.iter().enumerate() {
        let k = rule_key(db_index, i);
        let blank = Resolved {
            label: String::new(),
            what: String::new(),
            table: String::new(),
            keys: KeyCols::Rowid("rowid".into()),
            predicate: String::new(),
            params: Vec::new(),
            sample_expr: String::new(),
            schema: String::new(),
            name: String::new(),
            fks: Vec::new(),
            restricted_by: Vec::new(),
            runs_after: Vec::new(),
        };
        let table = match rule {
            Rule::Age { table, .. } | Rule::Where { table, .. } | Rule::Orphan { table, .. } => {
                table
            }
        };
        let Some((cols, without_rowid)) = check_table(conn, table, &k.key("table"), &mut problems)
        else {
            continue;
        };
        let keys = if without_rowid {
            let mut pk: Vec<(String, i64)> = cols.iter().filter(|(_, p)| *p > 0).cloned().collect();
            pk.sort_by_key(|(_, p)| *p);
            KeyCols::Primary(pk.into_iter().map(|(n, _)| n).collect())
        } else {
            let taken: HashSet<String> = cols.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
            match ["rowid", "_rowid_", "oid"]
                .iter()
                .find(|n| !taken.contains(**n))
            {
                Some(n) => KeyCols::Rowid(n.to_string()),
                None => {
                    problems.push(SchemaProblem {
                        key: k.key("table"),
                        reason: format!(
                            "{} has columns named rowid, _rowid_ and oid, so its rowid cannot be addressed",
                            display_table(table)
                        ),
                    });
                    continue;
                }
            }
        };
        let qt = qtable(table);
        let has_col = |c: &str| cols.iter().any(|(n, _)| n.eq_ignore_ascii_case(c));
        let col_list = cols
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let expr_ok = |key: KeyPath, expr: &str, problems: &mut Vec<SchemaProblem>| match check_expr(
            conn, &qt, expr,
        ) {
            Ok(()) => true,
            Err(mut reason) => {
                if reason.starts_with("no such column") {
                    reason = format!("{reason} in {} (it has: {col_list})", display_table(table));
                }
                problems.push(SchemaProblem { key, reason });
                false
            }
        };
        let resolved = match rule {
            Rule::Age {
                column,
                older_than,
                time_format,
                filter,
                ..
            } => {
                if !has_col(column) {
                    problems.push(SchemaProblem {
                        key: k.key("column"),
                        reason: format!(
                            "no column {column:?} in {} (it has: {})",
                            display_table(table),
                            cols.iter()
                                .map(|(n, _)| n.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    });
                    continue;
                }
                if let Some(f) = filter {
                    if !expr_ok(k.key("where"), f, &mut problems) {
                        continue;
                    }
                }
                let cutoff =
                    now - chrono::Duration::from_std(*older_than).unwrap_or(chrono::Duration::MAX);
                let (cond, param) = match time_format {
                    TimeFormat::Unix => (
                        format!("{} < ?1", qi(column)),
                        Value::Integer(cutoff.timestamp()),
                    ),
                    TimeFormat::UnixMs => (
                        format!("{} < ?1", qi(column)),
                        Value::Integer(cutoff.timestamp_millis()),
                    ),
                    TimeFormat::Iso8601 => (
                        format!("julianday({}) < ?1", qi(column)),
                        Value::Real(julian(cutoff)),
                    ),
                    TimeFormat::Julian => {
                        (format!("{} < ?1", qi(column)), Value::Real(julian(cutoff)))
                    }
                };
                let predicate = match filter {
                    Some(f) => format!("{cond} AND ({f})"),
                    None => cond,
                };
                Resolved {
                    label: format!("rule[{i}]"),
                    what: format!(
                        "{}: {column} older than {}{}",
                        display_table(table),
                        short_duration(*older_than),
                        filter
                            .as_ref()
                            .map(|f| format!(" where {f}"))
                            .unwrap_or_default()
                    ),
                    table: qt.clone(),
                    sample_expr: keys.list(),
                    keys,
                    predicate,
                    params: vec![param],
                    ..blank
                }
            }
            Rule::Where { filter, .. } => {
                if !expr_ok(k.key("where"), filter, &mut problems) {
                    continue;
                }
                Resolved {
                    label: format!("rule[{i}]"),
                    what: format!("{}: where {filter}", display_table(table)),
                    table: qt.clone(),
                    sample_expr: keys.list(),
                    keys,
                    predicate: format!("({filter})"),
                    params: Vec::new(),
                    ..blank
                }
            }
            Rule::Orphan {
                key,
                parent,
                parent_column,
                ..
            } => {
                if !expr_ok(k.key("key"), key, &mut problems) {
                    continue;
                }
                let Some((pcols, _)) = check_table(conn, parent, &k.key("parent"), &mut problems)
                else {
                    continue;
                };
                if !pcols
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case(parent_column))
                {
                    problems.push(SchemaProblem {
                        key: k.key("parent"),
                        reason: format!("no column {parent_column:?} in {}", display_table(parent)),
                    });
                    continue;
                }
                let pcol = qi(parent_column);
                Resolved {
                    label: format!("rule[{i}]"),
                    what: format!(
                        "{}: rows whose {key} has no {}.{parent_column}",
                        display_table(table),
                        display_table(parent)
                    ),
                    table: qt.clone(),
                    keys,
                    // NULL keys are not orphans (no parent was ever named), and NULL parent
                    // values are left out so NOT IN never turns into "unknown".
                    predicate: format!(
                        "({key}) IS NOT NULL AND ({key}) NOT IN (SELECT {pcol} FROM {} WHERE {pcol} IS NOT NULL)",
                        qtable(parent)
                    ),
                    params: Vec::new(),
                    sample_expr: format!("({key})"),
                    ..blank
                }
            }
        };
        // Declared foreign keys: the rule deletes each batch's dependants first, spares the
        // rows an ON DELETE RESTRICT key protects, and refuses a graph it cannot order.
        let schema = table.schema.clone().unwrap_or_else(|| "main".into());
        let fks = match fk_graphs.entry(schema.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.get().clone(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(prune_fk::read(conn, &schema)).clone()
            }
        };
        let fks = match fks {
            Ok(f) => f,
            Err(reason) => {
                problems.push(SchemaProblem {
                    key: k.key("table"),
                    reason,
                });
                continue;
            }
        };
        let (guard, restricted_by) = prune_fk::guard(&fks, &schema, &table.table);
        let mut resolved = Resolved {
            schema: schema.clone(),
            name: table.table.clone(),
            restricted_by,
            ..resolved
        };
        if let Some(g) = guard {
            resolved.predicate = format!("({}) AND {g}", resolved.predicate);
        }
        if let Err(reason) = prune_fk::plan(&fks, &schema, &table.table, &resolved.predicate) {
            problems.push(SchemaProblem {
                key: k.key("table"),
                reason,
            });
            continue;
        }
        resolved.fks = fks;
        out.push(resolved);
    }
    order_for_restrict(&mut out);
    let mut refs = Vec::new();
    for (i, f) in prune.files.iter().enumerate() {
        match check_reference_query(conn, &f.referenced_by) {
            Ok(()) => refs.push(f.referenced_by.clone()),
            Err(reason) => problems.push(SchemaProblem {
                key: files_key(db_index, i).key("referenced_by"),
                reason,
            }),
        }
    }
    if problems.is_empty() {
        Ok((out, refs))
    } else {
        Err(problems)
    }
}

/// Rules run in config order, except that a rule on a table whose `ON DELETE RESTRICT` key
/// protects another rule's rows runs first, so one run frees what it can. (Other keys need no
/// order: every batch deletes its own dependants.)
fn order_for_restrict(rules: &mut Vec<Resolved>) {
    for _ in 0..rules.len() * rules.len() {
        let found = (0..rules.len()).find_map(|i| {
            (i + 1..rules.len())
                .find(|&j| {
                    rules[i].schema == rules[j].schema
                        && prune_fk::restricts(&rules[i].fks, &rules[i].name, &rules[j].name)
                })
                .map(|j| (i, j))
        });
        let Some((i, j)) = found else { return };
        let moved = rules.remove(j);
        rules[i].runs_after.push(moved.label.clone());
        rules.insert(i, moved);
    }
}

/// `referenced_by` must be one read-only SELECT returning at least one column.
fn check_reference_query(conn: &Connection, sql: &str) -> Result<(), String> {
    let trimmed = sql.trim().trim_end_matches(';').trim();
    if trimmed.contains(';') {
        return Err("must be a single SELECT (no `;` inside)".into());
    }
    match conn.prepare(trimmed) {
        Ok(st) if !st.readonly() => Err("must be a read-only SELECT".into()),
        Ok(st) if st.column_count() == 0 => Err("must return the ids in its first column".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(match e {
            rusqlite::Error::SqliteFailure(_, Some(m)) => m,
            rusqlite::Error::SqlInputError { msg, .. } => msg,
            other => other.to_string(),
        }),
    }
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

fn julian(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 86_400_000.0 + 2_440_587.5
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

    let mut reports = Vec::new();
    let mut budget = prune.max_rows;
    let mut schemas_touched = HashSet::new();
    let mut stopped_early = None;
    for r in &rules {
        ctx.checkpoint()?;
        let (matched, total) = count(ctx.conn, r)?;
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
        let done = delete_in_batches(ctx, prune, r, &mut budget, &mut rep);
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
        format!(
            "deleted {rows} rows{with_dependants} in {batches} batches (longest {max_ms} ms) and {files} files ({}){}{}{refused_note}",
            human_bytes(bytes),
            over.concat(),
            stopped_early.map(|s| format!("; {s}")).unwrap_or_default()
        )
    };
    figures.rules = reports.into_iter().chain(files_reports).collect();
    Ok(JobResult {
        summary,
        figures: Some(Figures::Prune(figures)),
        skipped: false,
    })
}

/// Rows the rule matches now, and rows in its table. (The planner may use an index here: this
/// is one read, unlike the batch scans, which must follow the key order.)
fn count(conn: &Connection, r: &Resolved) -> Result<(u64, u64), JobError> {
    crate::sqlite::expected_slow(|| count_now(conn, r))
}

fn count_now(conn: &Connection, r: &Resolved) -> Result<(u64, u64), JobError> {
    let matched: i64 = conn
        .query_row(
            &format!("SELECT count(*) FROM {} WHERE {}", r.table, r.predicate),
            params_from_iter(r.params.iter()),
            |row| row.get(0),
        )
        .map_err(sql_err(format!("{}: counting matching rows", r.label)))?;
    let total: i64 = conn
        .query_row(&format!("SELECT count(*) FROM {}", r.table), [], |row| {
            row.get(0)
        })
        .map_err(sql_err(format!("{}: counting rows", r.label)))?;
    Ok((matched as u64, total as u64))
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

/// The keyset loop for one rule.
///
/// Each batch: copy the keys of the next `limit` matching rows into a temp table (a read of
/// the database), then, in one `BEGIN IMMEDIATE` transaction, run the foreign-key plan's
/// steps (dependants first) and delete exactly those keys where the rule still matches. The
/// write transaction touches only the listed rows and their dependants, so its cost follows
/// the batch size whatever the rule's shape; the size adapts to the measured lock time, with
/// dependant rows counting toward it, down to one row.
fn delete_in_batches(
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
        let q = qi(schema);
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

/// `wal_checkpoint(TRUNCATE)`, retried while readers keep it busy (bounded); a WAL that stays
/// busy is logged, not an error: the next checkpoint catches up.
pub fn truncate_wal(conn: &Connection, schema: &str) {
    for attempt in 0..10 {
        match conn.query_row(
            &format!("PRAGMA {schema}.wal_checkpoint(TRUNCATE)"),
            [],
            |r| r.get::<_, i64>(0),
        ) {
            Ok(0) => return,
            Ok(_) => std::thread::sleep(Duration::from_millis(50 * (attempt + 1))),
            Err(e) => {
                tracing::debug!("wal_checkpoint(TRUNCATE) on {schema}: {e}");
                return;
            }
        }
    }
    tracing::info!(
        "wal_checkpoint(TRUNCATE) on {schema} stayed busy; the WAL shrinks at a later checkpoint"
    );
}

/// A file name fit for a one-line report: quoted and escaped when it holds control characters
/// (a name with a newline must not break the output or the journal line).
fn printable(name: &str) -> String {
    if name.chars().any(char::is_control) {
        format!("{name:?}")
    } else {
        name.to_string()
    }
}

/// One directory entry a files rule may act on.
struct Entry {
    name: String,
    is_dir: bool,
    bytes: u64,
}

/// A files rule's directory could not be opened as a real directory.
fn open_rule_dir(label: &str, dir: &Path) -> Result<DirHandle, JobError> {
    DirHandle::open(dir).map_err(|e| {
        if let Some(kind) = safe_fs::not_a_dir(&e) {
            JobError::Refused(format!(
                "{label}: {} is {kind}; files rules act only on a real directory (symlinks are never followed)",
                dir.display(),
            ))
        } else {
            JobError::Io {
                context: format!("{label}: {}", dir.display()),
                source: e,
            }
        }
    })
}

/// Open (creating it 0700) the directory `name` inside `parent`, refusing a symlink or
/// anything else in its place; `shown` is its path for messages.
fn own_dir(parent: &DirHandle, name: &str, shown: &Path) -> Result<DirHandle, JobError> {
    parent.create_dir(OsStr::new(name), 0o700).map_err(|e| {
        if let Some(kind) = safe_fs::not_a_dir(&e) {
            JobError::Refused(format!(
                "{} is {kind}, not a real directory; nothing was moved. Remove it (litekeeper creates its own quarantine)",
                shown.display(),
            ))
        } else {
            JobError::Io {
                context: format!("creating {}", shown.display()),
                source: e,
            }
        }
    })
}

/// Files rule: compare the directory's entries with the ids `referenced_by` returns and
/// delete (or quarantine) the rest. The directory is opened once, without following a
/// symlink, and everything after that (listing, sizes, removal, the quarantine and its
/// expiry) goes through that handle: swapping the directory or anything in it for a symlink
/// mid-run cannot redirect the job.
fn prune_files(
    ctx: &JobCtx<'_>,
    prune: &Prune,
    index: usize,
    f: &FilesRule,
    dry_run: bool,
    now: DateTime<Utc>,
) -> Result<RuleFigures, JobError> {
    let label = format!("files[{index}]");
    let mut rep = RuleFigures {
        rule: label.clone(),
        what: format!(
            "{}: entries not referenced by {}",
            f.dir.display(),
            f.referenced_by.trim()
        ),
        ..Default::default()
    };
    let io = |context: String| move |source| JobError::Io { context, source };
    let dir = open_rule_dir(&label, &f.dir)?;
    if f.action == FileAction::Quarantine && !dry_run {
        purge_quarantine(&dir, &f.dir, f.quarantine_days, now, &mut rep)?;
    }
    // The ids the application still references.
    let referenced = referenced_ids(ctx.conn, &f.referenced_by, &label)?;
    if referenced.is_empty() && !f.allow_empty_reference {
        return Ok(refuse(
            rep,
            format!(
                "{label}: referenced_by returned no ids, so every file in {} would look orphaned; nothing was deleted. Check the query, or set allow_empty_reference = true if an empty result is real",
                f.dir.display()
            ),
        ));
    }
    let min_age = f.min_age;
    let mut candidates = Vec::new();
    let mut matching = 0u64;
    let listing = dir
        .entries()
        .map_err(io(format!("{label}: listing {}", f.dir.display())))?;
    for entry in listing {
        let Some(name) = entry.name.to_str().map(str::to_string) else {
            continue; // not UTF-8: cannot match a pattern, never touched
        };
        if name == QUARANTINE_DIR {
            continue;
        }
        let wanted = match f.entries {
            Entries::Files => entry.kind == Kind::File,
            Entries::Dirs => entry.kind == Kind::Dir,
        };
        if !wanted {
            continue;
        }
        let id = match &f.pattern {
            Some(re) => match re.captures(&name).and_then(|c| c.name("id")) {
                Some(m) => m.as_str().to_string(),
                None => continue,
            },
            None => name.clone(),
        };
        matching += 1;
        if referenced.contains(&id) {
            continue;
        }
        let Ok(meta) = dir.meta(&entry.name) else {
            continue;
        };
        if meta.kind != entry.kind {
            continue; // replaced since the listing
        }
        let age = SystemTime::now()
            .duration_since(meta.modified)
            .unwrap_or(Duration::ZERO);
        if age < min_age {
            continue;
        }
        let is_dir = entry.kind == Kind::Dir;
        let bytes = if is_dir {
            dir.tree_bytes(&entry.name)
        } else {
            meta.len
        };
        candidates.push(Entry {
            name,
            is_dir,
            bytes,
        });
    }
    candidates.sort_by(|a, b| a.name.cmp(&b.name));
    rep.matched = candidates.len() as u64;
    rep.samples = candidates
        .iter()
        .take(5)
        .map(|c| printable(&c.name))
        .collect();
    if dry_run {
        rep.files = Some(candidates.len() as u64);
        rep.bytes = Some(candidates.iter().map(|c| c.bytes).sum());
        return Ok(rep);
    }
    if matching > 0 && candidates.len() as f64 / matching as f64 > prune.max_fraction {
        return Ok(refuse(
            rep,
            format!(
                "{label}: refused by max_fraction: would remove {} of {matching} entries in {} ({:.0}%), more than max_fraction {:.0}%; nothing of it was removed. Check referenced_by with `litekeeper run {} prune --dry-run`, or raise max_fraction",
                candidates.len(),
                f.dir.display(),
                candidates.len() as f64 * 100.0 / matching as f64,
                prune.max_fraction * 100.0,
                ctx.db.name
            ),
        ));
    }
    let day = now.format("%Y-%m-%d").to_string();
    let qpath = f.dir.join(QUARANTINE_DIR).join(&day);
    // Today's quarantine directory, opened (or made) before anything moves: a symlink in its
    // place refuses the rule with nothing moved.
    let qdir = if f.action == FileAction::Quarantine && !candidates.is_empty() {
        let q = own_dir(&dir, QUARANTINE_DIR, &f.dir.join(QUARANTINE_DIR))?;
        Some(own_dir(&q, &day, &qpath)?)
    } else {
        None
    };
    let (mut files, mut bytes) = (0u64, 0u64);
    for c in &candidates {
        ctx.checkpoint()?;
        let name = OsStr::new(&c.name);
        let result = match &qdir {
            None if c.is_dir => dir.remove_tree(name),
            None => dir.remove_file(name),
            Some(q) => dir.move_into(name, q, name).map(|_| ()),
        };
        match result {
            Ok(()) => {
                files += 1;
                bytes += c.bytes;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // the app removed it
            Err(e) => {
                rep.files = Some(files);
                rep.bytes = Some(bytes);
                return Err(JobError::Io {
                    context: format!("{label}: removing {}", f.dir.join(&c.name).display()),
                    source: e,
                });
            }
        }
    }
    rep.deleted = files;
    rep.files = Some(files);
    rep.bytes = Some(bytes);
    if qdir.is_some() && files > 0 {
        rep.note = Some(format!("moved to {}", qpath.display()));
    }
    Ok(rep)
}

/// A guard's refusal: the rule is skipped with `why` (logged as a warning), the run goes on.
fn refuse(mut rep: RuleFigures, why: String) -> RuleFigures {
    tracing::warn!("{why}");
    rep.refused = Some(why);
    rep
}

fn referenced_ids(conn: &Connection, sql: &str, label: &str) -> Result<HashSet<String>, JobError> {
    let sql = sql.trim().trim_end_matches(';').trim();
    let mut st = conn
        .prepare(sql)
        .map_err(sql_err(format!("{label}: referenced_by")))?;
    if !st.readonly() {
        return Err(JobError::Refused(format!(
            "{label}: referenced_by must be a read-only SELECT"
        )));
    }
    let mut out = HashSet::new();
    let mut rows = st
        .query([])
        .map_err(sql_err(format!("{label}: referenced_by")))?;
    while let Some(row) = rows
        .next()
        .map_err(sql_err(format!("{label}: referenced_by")))?
    {
        match row
            .get::<_, Value>(0)
            .map_err(sql_err(format!("{label}: referenced_by")))?
        {
            Value::Integer(i) => {
                out.insert(i.to_string());
            }
            Value::Real(f) => {
                out.insert(f.to_string());
            }
            Value::Text(t) => {
                out.insert(t);
            }
            Value::Blob(b) => {
                if let Ok(t) = String::from_utf8(b) {
                    out.insert(t);
                }
            }
            Value::Null => {}
        }
    }
    Ok(out)
}

/// Remove quarantine day directories older than `days`, through the rule directory's handle.
/// Only real directories named like a day are ours; anything else there is left alone.
fn purge_quarantine(
    dir: &DirHandle,
    shown: &Path,
    days: u32,
    now: DateTime<Utc>,
    rep: &mut RuleFigures,
) -> Result<(), JobError> {
    let qshown = shown.join(QUARANTINE_DIR);
    let q = match dir.open_dir(OsStr::new(QUARANTINE_DIR)) {
        Ok(q) => q,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if safe_fs::not_a_dir(&e).is_some() => {
            return Err(JobError::Refused(format!(
                "{} is {}, not a real directory; remove it (litekeeper creates its own quarantine)",
                qshown.display(),
                safe_fs::not_a_dir(&e).unwrap_or("not a directory")
            )))
        }
        Err(source) => {
            return Err(JobError::Io {
                context: format!("opening {}", qshown.display()),
                source,
            })
        }
    };
    let today = now.date_naive();
    let mut purged = Vec::new();
    let entries = q.entries().map_err(|source| JobError::Io {
        context: format!("listing {}", qshown.display()),
        source,
    })?;
    for entry in entries {
        let Some(name) = entry.name.to_str() else {
            continue;
        };
        let Ok(day) = chrono::NaiveDate::parse_from_str(name, "%Y-%m-%d") else {
            continue;
        };
        if entry.kind != Kind::Dir {
            continue; // a symlink or file named like a day is not ours
        }
        if (today - day).num_days() > days as i64 {
            q.remove_tree(&entry.name).map_err(|source| JobError::Io {
                context: format!("purging {}", qshown.join(name).display()),
                source,
            })?;
            purged.push(name.to_string());
        }
    }
    if !purged.is_empty() {
        rep.note = Some(format!("purged quarantine days {}", purged.join(", ")));
    }
    Ok(())
}
