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
    let mut fk_graphs = FkGraphs::default();
    for (i, rule) in prune.rules.iter().enumerate() {
        let k = rule_key(db_index, i);
        let Some(checked) = CheckedTable::of(conn, rule, &k, &mut problems) else {
            continue;
        };
        let Some(resolved) = checked.resolve(rule, i, now, &mut problems) else {
            continue;
        };
        if let Some(r) = fk_graphs.apply(conn, resolved, checked.table, &k, &mut problems) {
            out.push(r);
        }
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

/// A rule's table, found in the live schema: its columns and how its rows are addressed.
struct CheckedTable<'a> {
    conn: &'a Connection,
    k: &'a KeyPath,
    table: &'a TableRef,
    /// The quoted `schema.table`.
    qt: String,
    cols: Vec<(String, i64)>,
    keys: KeyCols,
}

impl<'a> CheckedTable<'a> {
    /// The rule's table, or None with the problem recorded.
    fn of(
        conn: &'a Connection,
        rule: &'a Rule,
        k: &'a KeyPath,
        problems: &mut Vec<SchemaProblem>,
    ) -> Option<CheckedTable<'a>> {
        let table = match rule {
            Rule::Age { table, .. } | Rule::Where { table, .. } | Rule::Orphan { table, .. } => {
                table
            }
        };
        let (cols, without_rowid) = check_table(conn, table, &k.key("table"), problems)?;
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
                    return None;
                }
            }
        };
        Some(CheckedTable {
            conn,
            k,
            table,
            qt: qtable(table),
            cols,
            keys,
        })
    }

    fn has_col(&self, c: &str) -> bool {
        self.cols.iter().any(|(n, _)| n.eq_ignore_ascii_case(c))
    }

    fn col_list(&self) -> String {
        self.cols
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether an SQL fragment of the rule compiles against the table; a problem at `key`
    /// when not.
    fn expr_ok(&self, key: KeyPath, expr: &str, problems: &mut Vec<SchemaProblem>) -> bool {
        match check_expr(self.conn, &self.qt, expr) {
            Ok(()) => true,
            Err(mut reason) => {
                if reason.starts_with("no such column") {
                    reason = format!(
                        "{reason} in {} (it has: {})",
                        display_table(self.table),
                        self.col_list()
                    );
                }
                problems.push(SchemaProblem { key, reason });
                false
            }
        }
    }

    /// A resolved rule with this table's fields, the rest filled by the caller.
    fn base(&self, i: usize, what: String, predicate: String) -> Resolved {
        Resolved {
            label: format!("rule[{i}]"),
            what,
            table: self.qt.clone(),
            keys: self.keys.clone(),
            predicate,
            params: Vec::new(),
            sample_expr: self.keys.list(),
            schema: String::new(),
            name: String::new(),
            fks: Vec::new(),
            restricted_by: Vec::new(),
            runs_after: Vec::new(),
        }
    }

    /// The rule's predicate against this table, or None with its problems recorded.
    fn resolve(
        &self,
        rule: &Rule,
        i: usize,
        now: DateTime<Utc>,
        problems: &mut Vec<SchemaProblem>,
    ) -> Option<Resolved> {
        let k = self.k;
        match rule {
            Rule::Age { .. } => self.age(i, rule, now, problems),
            Rule::Where { filter, .. } => {
                if !self.expr_ok(k.key("where"), filter, problems) {
                    return None;
                }
                Some(self.base(
                    i,
                    format!("{}: where {filter}", display_table(self.table)),
                    format!("({filter})"),
                ))
            }
            Rule::Orphan {
                key,
                parent,
                parent_column,
                ..
            } => self.orphan(i, key, parent, parent_column, problems),
        }
    }

    fn age(
        &self,
        i: usize,
        rule: &Rule,
        now: DateTime<Utc>,
        problems: &mut Vec<SchemaProblem>,
    ) -> Option<Resolved> {
        let Rule::Age {
            column,
            older_than,
            time_format,
            filter,
            ..
        } = rule
        else {
            return None;
        };
        let (older_than, filter) = (*older_than, filter.as_deref());
        if !self.has_col(column) {
            problems.push(SchemaProblem {
                key: self.k.key("column"),
                reason: format!(
                    "no column {column:?} in {} (it has: {})",
                    display_table(self.table),
                    self.col_list()
                ),
            });
            return None;
        }
        if let Some(f) = filter {
            if !self.expr_ok(self.k.key("where"), f, problems) {
                return None;
            }
        }
        let cutoff = now - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
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
        let what = format!(
            "{}: {column} older than {}{}",
            display_table(self.table),
            short_duration(older_than),
            filter.map(|f| format!(" where {f}")).unwrap_or_default()
        );
        Some(Resolved {
            params: vec![param],
            ..self.base(i, what, predicate)
        })
    }

    fn orphan(
        &self,
        i: usize,
        key: &str,
        parent: &TableRef,
        parent_column: &str,
        problems: &mut Vec<SchemaProblem>,
    ) -> Option<Resolved> {
        let k = self.k;
        if !self.expr_ok(k.key("key"), key, problems) {
            return None;
        }
        let (pcols, _) = check_table(self.conn, parent, &k.key("parent"), problems)?;
        if !pcols
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(parent_column))
        {
            problems.push(SchemaProblem {
                key: k.key("parent"),
                reason: format!("no column {parent_column:?} in {}", display_table(parent)),
            });
            return None;
        }
        let pcol = quote_ident(parent_column);
        let what = format!(
            "{}: rows whose {key} has no {}.{parent_column}",
            display_table(self.table),
            display_table(parent)
        );
        // NULL keys are not orphans (no parent was ever named), and NULL parent values are
        // left out so NOT IN never turns into "unknown".
        let predicate = format!(
            "({key}) IS NOT NULL AND ({key}) NOT IN (SELECT {pcol} FROM {} WHERE {pcol} IS NOT NULL)",
            qtable(parent)
        );
        Some(Resolved {
            sample_expr: format!("({key})"),
            ..self.base(i, what, predicate)
        })
    }
}

/// The declared foreign keys of each schema, read once per resolve.
#[derive(Default)]
struct FkGraphs(std::collections::HashMap<String, Result<Vec<prune_fk::Fk>, String>>);

impl FkGraphs {
    /// Declared foreign keys: the rule deletes each batch's dependants first, spares the rows
    /// an ON DELETE RESTRICT key protects, and refuses a graph it cannot order.
    fn apply(
        &mut self,
        conn: &Connection,
        resolved: Resolved,
        table: &TableRef,
        k: &KeyPath,
        problems: &mut Vec<SchemaProblem>,
    ) -> Option<Resolved> {
        let schema = table.schema.clone().unwrap_or_else(|| "main".into());
        let fks = self
            .0
            .entry(schema.clone())
            .or_insert_with(|| prune_fk::read(conn, &schema))
            .clone();
        let fks = match fks {
            Ok(f) => f,
            Err(reason) => {
                problems.push(SchemaProblem {
                    key: k.key("table"),
                    reason,
                });
                return None;
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
            return None;
        }
        resolved.fks = fks;
        Some(resolved)
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
