//! The prune job: delete old and orphaned rows, then orphaned files, in short transactions.
//!
//! Row rules run in config order on the job's connection (attached databases included), so a
//! cascade (chat → message → blob) completes in one run. Each rule deletes in keyset batches:
//! read the keys of the next N matching rows after the last batch's end (a read, which does
//! not block the app's writers in WAL mode), then `DELETE … WHERE key > lo AND key <= hi AND
//! <rule>` in its own `BEGIN IMMEDIATE` transaction. The table is read `NOT INDEXED` so the scan
//! follows the rowid (or primary key) order and every row is visited once: O(N) in total,
//! never `rowid IN (SELECT … LIMIT n)` re-scans. N adapts so one transaction holds the write lock
//! for at most `max_lock`; a `pause` between batches lets the app write and the WAL checkpoint.
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
use serde::Serialize;

use super::{JobCtx, JobError, JobResult};
use crate::config::{
    Config, Database, Entries, FileAction, FilesRule, KeyPath, Prune, Rule, TableRef, TimeFormat,
};
use crate::jobs::backup::human_bytes;
use crate::safe_fs::{self, DirHandle, Kind};

/// Where quarantined files go, inside the rule's directory.
pub const QUARANTINE_DIR: &str = ".litekeeper-quarantine";
/// Batch sizes stay within these bounds whatever the timing says.
const MIN_BATCH: usize = 10;
const MAX_BATCH: usize = 50_000;
const FIRST_BATCH: usize = 500;
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
    for (i, rule) in prune.rules.iter().enumerate() {
        let k = rule_key(db_index, i);
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
                }
            }
        };
        out.push(resolved);
    }
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

/// The per-rule table of a prune report's figures, for `run` and the demo.
pub fn rules_table(figures: &super::Figures) -> Vec<String> {
    let Some(rules) = figures.get("rules").and_then(|r| r.as_array()) else {
        return Vec::new();
    };
    let dry = figures.contains_key("rows_matched");
    let mut out = vec![format!(
        "  {:<9} {:>9} {:>9} {:>8} {:>10}  {}",
        "rule",
        "matched",
        if dry { "would" } else { "deleted" },
        "batches",
        "bytes",
        "what (samples)"
    )];
    for r in rules {
        let n = |k: &str| r.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        let samples: Vec<&str> = r
            .get("samples")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let bytes = r.get("bytes").and_then(|v| v.as_u64());
        out.push(format!(
            "  {:<9} {:>9} {:>9} {:>8} {:>10}  {}{}{}{}",
            r.get("rule").and_then(|v| v.as_str()).unwrap_or("?"),
            n("matched"),
            if dry { n("matched") } else { n("deleted") },
            n("batches"),
            bytes.map(human_bytes).unwrap_or_else(|| "-".into()),
            r.get("what").and_then(|v| v.as_str()).unwrap_or(""),
            if samples.is_empty() {
                String::new()
            } else {
                format!(" (e.g. {})", samples.join(", "))
            },
            r.get("note")
                .and_then(|v| v.as_str())
                .map(|n| format!("; {n}"))
                .unwrap_or_default(),
            if r.get("refused").is_some() {
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

/// What one rule did (or would do).
#[derive(Debug, Default, Serialize)]
struct RuleReport {
    rule: String,
    what: String,
    matched: u64,
    deleted: u64,
    batches: u32,
    max_batch_ms: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    samples: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    /// Why a guard (max_fraction, an empty reference) refused the rule; nothing of it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
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
        let mut rep = RuleReport {
            rule: r.label.clone(),
            what: r.what.clone(),
            matched,
            ..Default::default()
        };
        if dry_run {
            rep.samples = samples(ctx.conn, r)?;
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

    let rows: u64 = reports
        .iter()
        .map(|r| if dry_run { r.matched } else { r.deleted })
        .sum();
    let files: u64 = files_reports.iter().map(|r| r.files.unwrap_or(0)).sum();
    let bytes: u64 = files_reports.iter().map(|r| r.bytes.unwrap_or(0)).sum();
    let mut figures = super::Figures::new();
    let all: Vec<&RuleReport> = reports.iter().chain(files_reports.iter()).collect();
    let refused: Vec<&str> = all
        .iter()
        .filter(|r| r.refused.is_some())
        .map(|r| r.rule.as_str())
        .collect();
    let refused_note = if refused.is_empty() {
        String::new()
    } else {
        figures.insert("rules_refused".into(), refused.len().into());
        format!(
            "; refused by a guard: {} (skipped, see the warnings; the other rules ran)",
            refused.join(", ")
        )
    };
    figures.insert(
        "rules".into(),
        serde_json::to_value(&all).unwrap_or_default(),
    );
    let summary = if dry_run {
        figures.insert("rows_matched".into(), rows.into());
        figures.insert("files_matched".into(), files.into());
        format!(
            "dry run: would delete {rows} rows and {files} files ({}); nothing changed (each rule is counted on today's data: rows that earlier rules would orphan are not counted)",
            human_bytes(bytes)
        )
    } else {
        figures.insert("rows_deleted".into(), rows.into());
        figures.insert("files_deleted".into(), files.into());
        figures.insert("bytes_freed".into(), bytes.into());
        let batches: u32 = reports.iter().map(|r| r.batches).sum();
        let max_ms = reports.iter().map(|r| r.max_batch_ms).max().unwrap_or(0);
        format!(
            "deleted {rows} rows in {batches} batches (longest {max_ms} ms) and {files} files ({}){}{refused_note}",
            human_bytes(bytes),
            stopped_early.map(|s| format!("; {s}")).unwrap_or_default()
        )
    };
    Ok(JobResult {
        summary,
        figures,
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

/// The keyset loop for one rule.
fn delete_in_batches(
    ctx: &JobCtx<'_>,
    prune: &Prune,
    r: &Resolved,
    budget: &mut Option<u64>,
    rep: &mut RuleReport,
) -> Result<(), JobError> {
    let conn: &Connection = ctx.conn;
    let np = r.params.len();
    let width = r.keys.width();
    let keys = r.keys.list();
    // ?1..?np: the rule's parameters; then lo (width), then hi (width); then the limit.
    let after = |first: usize| r.keys.cmp(">", first);
    let select_first = format!(
        "SELECT {keys} FROM {} NOT INDEXED WHERE ({}) ORDER BY {keys} LIMIT ?{}",
        r.table,
        r.predicate,
        np + 1
    );
    let select_next = format!(
        "SELECT {keys} FROM {} NOT INDEXED WHERE {} AND ({}) ORDER BY {keys} LIMIT ?{}",
        r.table,
        after(np + 1),
        r.predicate,
        np + width + 1
    );
    let delete_first = format!(
        "DELETE FROM {} NOT INDEXED WHERE {} AND ({})",
        r.table,
        r.keys.cmp("<=", np + 1),
        r.predicate
    );
    let delete_next = format!(
        "DELETE FROM {} NOT INDEXED WHERE {} AND {} AND ({})",
        r.table,
        after(np + 1),
        r.keys.cmp("<=", np + width + 1),
        r.predicate
    );
    let mut lo: Option<Vec<Value>> = None;
    let mut n = FIRST_BATCH;
    loop {
        ctx.checkpoint()?;
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
        let sel = if lo.is_some() {
            &select_next
        } else {
            &select_first
        };
        let mut st = conn
            .prepare_cached(sel)
            .map_err(sql_err(format!("{}: selecting a batch", r.label)))?;
        let mut found = 0usize;
        let mut hi: Option<Vec<Value>> = None;
        {
            let mut rows = st
                .query(params_from_iter(params.iter()))
                .map_err(sql_err(format!("{}: selecting a batch", r.label)))?;
            while let Some(row) = rows
                .next()
                .map_err(sql_err(format!("{}: selecting a batch", r.label)))?
            {
                found += 1;
                // Rows come in key order: the last one read is the batch's upper bound.
                let v: rusqlite::Result<Vec<Value>> =
                    (0..width).map(|i| row.get::<_, Value>(i)).collect();
                hi = Some(v.map_err(sql_err(format!("{}: reading keys", r.label)))?);
            }
        }
        let Some(hi) = hi else {
            return Ok(());
        };
        // 2. Delete that key range in one short write transaction.
        let mut params: Vec<Value> = r.params.clone();
        if let Some(lo) = &lo {
            params.extend(lo.iter().cloned());
        }
        params.extend(hi.iter().cloned());
        let del = if lo.is_some() {
            &delete_next
        } else {
            &delete_first
        };
        let (deleted, held) = write_batch(conn, del, &params, &r.label)?;
        rep.deleted += deleted;
        rep.batches += 1;
        rep.max_batch_ms = rep.max_batch_ms.max(held.as_millis() as u64);
        if let Some(b) = budget {
            *b = b.saturating_sub(deleted);
        }
        // 3. Adapt: keep one transaction under max_lock.
        let target = prune.max_lock.as_secs_f64().max(0.001);
        let took = held.as_secs_f64().max(0.000_1);
        if took > target {
            n = ((n as f64 * target / took * 0.8) as usize).max(MIN_BATCH);
        } else if took < target / 3.0 && found == limit {
            n = (n * 2).min(MAX_BATCH);
        }
        if rep.batches.is_multiple_of(CHECKPOINT_EVERY) {
            let schema = r.table.split('.').next().unwrap_or("main");
            let _ = conn.query_row(
                &format!("PRAGMA {schema}.wal_checkpoint(PASSIVE)"),
                [],
                |_| Ok(()),
            );
        }
        if found < limit {
            return Ok(());
        }
        lo = Some(hi);
        // 4. Let the app's writers in.
        if !prune.pause.is_zero() {
            std::thread::sleep(prune.pause);
        }
    }
}

/// Run one DELETE in its own `BEGIN IMMEDIATE` transaction; rows deleted and how long the
/// write lock was held.
fn write_batch(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    label: &str,
) -> Result<(u64, Duration), JobError> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(sql_err(format!("{label}: starting a write transaction (the app may hold the write lock longer than busy_timeout)")))?;
    let started = Instant::now();
    let result = conn
        .prepare_cached(sql)
        .and_then(|mut st| st.execute(params_from_iter(params.iter())));
    match result {
        Ok(n) => {
            conn.execute_batch("COMMIT").map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                sql_err(format!("{label}: committing a batch"))(e)
            })?;
            Ok((n as u64, started.elapsed()))
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(sql_err(format!("{label}: deleting a batch"))(e))
        }
    }
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
) -> Result<RuleReport, JobError> {
    let label = format!("files[{index}]");
    let mut rep = RuleReport {
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
fn refuse(mut rep: RuleReport, why: String) -> RuleReport {
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
    rep: &mut RuleReport,
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
