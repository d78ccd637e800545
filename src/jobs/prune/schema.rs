//! Prune rules checked against the live schema: identifier quoting, the `Resolved` form a rule
//! runs in, and the checks `check` and `run` share.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::Connection;

use super::super::prune_fk;
use super::short_duration;
use crate::config::{KeyPath, Prune, Rule, TableRef, TimeFormat};
use crate::sqlite::quote_ident;

fn qtable(t: &TableRef) -> String {
    match &t.schema {
        Some(s) => format!("{}.{}", quote_ident(s), quote_ident(&t.table)),
        None => format!("main.{}", quote_ident(&t.table)),
    }
}

/// How a table's rows are addressed for keyset batches.
#[derive(Debug, Clone)]
pub(super) enum KeyCols {
    /// A rowid table: the name that reaches the rowid (`rowid`, `_rowid_` or `oid`).
    Rowid(String),
    /// A WITHOUT ROWID table: its primary-key columns in key order.
    Primary(Vec<String>),
}

impl KeyCols {
    pub(super) fn list(&self) -> String {
        match self {
            KeyCols::Rowid(r) => r.clone(),
            KeyCols::Primary(c) => c
                .iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
    pub(super) fn width(&self) -> usize {
        match self {
            KeyCols::Rowid(_) => 1,
            KeyCols::Primary(c) => c.len(),
        }
    }
    /// `(k1, k2) > (?, ?)`-style comparison with parameters starting at `?{first}`.
    pub(super) fn cmp(&self, op: &str, first: usize) -> String {
        let params: Vec<String> = (0..self.width())
            .map(|i| format!("?{}", first + i))
            .collect();
        format!("({}) {op} ({})", self.list(), params.join(", "))
    }
}

/// A rule checked against the live schema, ready to run.
#[derive(Debug, Clone)]
pub(super) struct Resolved {
    /// `rule[2]` in the config.
    pub(super) label: String,
    /// Human description: "chat: updated_at older than 60d".
    pub(super) what: String,
    pub(super) table: String,
    pub(super) keys: KeyCols,
    /// The rule's condition on the table's columns; its parameters are `params`.
    pub(super) predicate: String,
    pub(super) params: Vec<Value>,
    /// For dry-run samples: the expression worth showing (the orphan key, else the row key).
    pub(super) sample_expr: String,
    /// The schema (`main` or an alias) and the table's name, for the foreign-key plan.
    pub(super) schema: String,
    pub(super) name: String,
    /// The schema's declared foreign keys.
    pub(super) fks: Vec<prune_fk::Fk>,
    /// `ON DELETE RESTRICT` keys whose referenced rows the rule spares.
    pub(super) restricted_by: Vec<String>,
    /// Rules moved ahead of this one because their table holds such a key.
    pub(super) runs_after: Vec<String>,
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

pub(super) fn resolve(
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
                        format!("{} < ?1", quote_ident(column)),
                        Value::Integer(cutoff.timestamp()),
                    ),
                    TimeFormat::UnixMs => (
                        format!("{} < ?1", quote_ident(column)),
                        Value::Integer(cutoff.timestamp_millis()),
                    ),
                    TimeFormat::Iso8601 => (
                        format!("julianday({}) < ?1", quote_ident(column)),
                        Value::Real(julian(cutoff)),
                    ),
                    TimeFormat::Julian => (
                        format!("{} < ?1", quote_ident(column)),
                        Value::Real(julian(cutoff)),
                    ),
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
                let pcol = quote_ident(parent_column);
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

fn julian(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 86_400_000.0 + 2_440_587.5
}
