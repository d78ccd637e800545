//! Declared foreign keys for the prune job: read the graph of one schema, and plan which
//! dependant rows each batch of a rule must delete (or set to NULL/default) first, in the same
//! transaction, so every batch leaves the database consistent whether or not the app's
//! connections enforce foreign keys.
//!
//! SQLite foreign keys never cross databases: a key declared in an attached database names a
//! parent in that same database, so the graph is read per schema. A plan is a list of SQL
//! steps, each with a condition that selects the affected rows by nesting the conditions of
//! their parents down to the rule's own (`(child.fk) IN (SELECT parent.key FROM parent WHERE
//! …)`); the steps run children first, so every condition is evaluated while the rows it names
//! still exist. `ON DELETE CASCADE` and `NO ACTION` (the default) dependants are deleted, `SET
//! NULL` / `SET DEFAULT` dependants are updated as the declaration says, `RESTRICT` on the
//! rule's own table spares the rows still referenced. A table that references itself through
//! one key (a `parent_id`) has its whole subtree deleted with a recursive query; other cycles,
//! and `RESTRICT` deeper in the graph, are refused with the reason.

use std::collections::{HashMap, HashSet};

use rusqlite::Connection;

use crate::sqlite::quote_ident;

/// What a declared key does when its parent row is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnDelete {
    NoAction,
    Restrict,
    Cascade,
    SetNull,
    SetDefault,
}

impl OnDelete {
    fn parse(s: &str) -> OnDelete {
        match s.to_ascii_uppercase().as_str() {
            "CASCADE" => OnDelete::Cascade,
            "SET NULL" => OnDelete::SetNull,
            "SET DEFAULT" => OnDelete::SetDefault,
            "RESTRICT" => OnDelete::Restrict,
            _ => OnDelete::NoAction,
        }
    }
    fn deletes(self) -> bool {
        matches!(self, OnDelete::Cascade | OnDelete::NoAction)
    }
    fn word(self) -> &'static str {
        match self {
            OnDelete::NoAction => "no action",
            OnDelete::Restrict => "restrict",
            OnDelete::Cascade => "cascade",
            OnDelete::SetNull => "set null",
            OnDelete::SetDefault => "set default",
        }
    }
}

/// One declared foreign key: `child(from…) REFERENCES parent(to…)`.
#[derive(Debug, Clone)]
pub(crate) struct Fk {
    child: String,
    from: Vec<String>,
    parent: String,
    /// The parent's columns; the parent's primary key when the declaration names none.
    to: Vec<String>,
    on_delete: OnDelete,
    /// For `SET DEFAULT`: each `from` column's declared default (SQL), if any.
    defaults: Vec<Option<String>>,
    /// A `from` column declared NOT NULL that `SET NULL` / `SET DEFAULT` would make NULL.
    unsettable: Option<String>,
    /// Why the key cannot be followed (it names no columns and the parent has no such key).
    broken: Option<String>,
}

impl Fk {
    fn describe(&self) -> String {
        format!(
            "{}({}) REFERENCES {}({})",
            self.child,
            self.from.join(", "),
            self.parent,
            self.to.join(", ")
        )
    }
}

/// The declared foreign keys of one schema (`main` or an attachment's alias).
pub(crate) fn read(conn: &Connection, schema: &str) -> Result<Vec<Fk>, String> {
    let rows: Vec<(String, i64, String, String, Option<String>, String)> = (|| {
        let mut st = conn.prepare(
            "SELECT t.name, f.id, f.\"table\", f.\"from\", f.\"to\", f.on_delete
               FROM pragma_table_list AS t, pragma_foreign_key_list(t.name, t.schema) AS f
              WHERE t.schema = ?1 AND t.type = 'table'
              ORDER BY t.name, f.id, f.seq",
        )?;
        let rows = st.query_map([schema], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
    })()
    .map_err(|e| format!("cannot read the foreign keys of {schema}: {e}"))?;
    let mut out: Vec<Fk> = Vec::new();
    let mut last: Option<(String, i64)> = None;
    let mut implicit_to: Vec<usize> = Vec::new();
    for (child, id, parent, from, to, on_delete) in rows {
        if last.as_ref() != Some(&(child.clone(), id)) {
            last = Some((child.clone(), id));
            out.push(Fk {
                child: child.clone(),
                from: Vec::new(),
                parent,
                to: Vec::new(),
                on_delete: OnDelete::parse(&on_delete),
                defaults: Vec::new(),
                unsettable: None,
                broken: None,
            });
        }
        let fk = out.last_mut().expect("pushed above");
        fk.from.push(from);
        match to {
            Some(t) => fk.to.push(t),
            None => {
                if implicit_to.last() != Some(&(out.len() - 1)) {
                    implicit_to.push(out.len() - 1);
                }
            }
        }
    }
    // `REFERENCES parent` without columns names the parent's primary key.
    for i in implicit_to {
        let parent = out[i].parent.clone();
        let pk: Vec<String> = (|| {
            let mut st = conn
                .prepare("SELECT name FROM pragma_table_info(?1, ?2) WHERE pk > 0 ORDER BY pk")?;
            let rows = st.query_map([&parent, schema], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })()
        .map_err(|e| format!("cannot read the primary key of {schema}.{parent}: {e}"))?;
        if pk.len() != out[i].from.len() {
            // Only a delete from the parent trips over it (as in SQLite): refused in `plan`.
            out[i].broken = Some(format!(
                "{schema}.{}: its foreign key REFERENCES {parent} without columns, but {parent} has no primary key of {} column(s) (SQLite reports \"foreign key mismatch\" when a {parent} row is deleted); name the referenced columns in the schema",
                out[i].child,
                out[i].from.len()
            ));
        }
        out[i].to = pk;
    }
    for fk in out
        .iter_mut()
        .filter(|f| matches!(f.on_delete, OnDelete::SetDefault | OnDelete::SetNull))
    {
        for c in &fk.from {
            let (d, notnull): (Option<String>, bool) = conn
                .query_row(
                    "SELECT dflt_value, \"notnull\" FROM pragma_table_xinfo(?1, ?2) WHERE name = ?3",
                    [&fk.child, schema, c],
                    |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0)),
                )
                .map_err(|e| {
                    format!("cannot read the default of {schema}.{}.{c}: {e}", fk.child)
                })?;
            let value = if fk.on_delete == OnDelete::SetDefault {
                d
            } else {
                None
            };
            if notnull
                && value
                    .as_deref()
                    .is_none_or(|v| v.eq_ignore_ascii_case("NULL"))
            {
                fk.unsettable = Some(c.clone());
            }
            fk.defaults.push(value);
        }
    }
    Ok(out)
}

/// Whether `child` holds an `ON DELETE RESTRICT` key on `parent`.
pub(crate) fn restricts(fks: &[Fk], parent: &str, child: &str) -> bool {
    fks.iter().any(|f| {
        f.on_delete == OnDelete::Restrict && same(&f.parent, parent) && same(&f.child, child)
    })
}

/// What one step does to the rows its condition selects.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    Delete,
    /// `SET col = NULL` or `SET col = (default)`, per column.
    Set(Vec<(String, String)>),
}

/// One dependant table's share of a batch.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    /// `alias.table` as written in the config (`table` in the main database).
    pub(crate) display: String,
    /// The declared action that brought it in.
    pub(crate) action: &'static str,
    pub(crate) change: Change,
    qtable: String,
    cond: String,
}

impl Step {
    /// The statement, with the rule's parameters where the root's condition has them.
    pub(crate) fn sql(&self) -> String {
        match &self.change {
            Change::Delete => format!("DELETE FROM {} WHERE {}", self.qtable, self.cond),
            Change::Set(cols) => format!(
                "UPDATE {} SET {} WHERE {}",
                self.qtable,
                cols.iter()
                    .map(|(c, v)| format!("{} = {v}", quote_ident(c)))
                    .collect::<Vec<_>>()
                    .join(", "),
                self.cond
            ),
        }
    }
    /// How many rows the step would change now.
    pub(crate) fn count_sql(&self) -> String {
        format!("SELECT count(*) FROM {} WHERE {}", self.qtable, self.cond)
    }
}

/// The dependant steps of one rule, in execution order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    pub(crate) steps: Vec<Step>,
}

/// The condition that spares the root rows an `ON DELETE RESTRICT` key still protects (to AND
/// into the rule's predicate), and those keys described for the report.
pub(crate) fn guard(fks: &[Fk], schema: &str, root: &str) -> (Option<String>, Vec<String>) {
    let q = |t: &str| format!("{}.{}", quote_ident(schema), quote_ident(t));
    let mut conds = Vec::new();
    let mut keys = Vec::new();
    for f in fks
        .iter()
        .filter(|f| same(&f.parent, root) && f.on_delete == OnDelete::Restrict)
    {
        let pairs: Vec<String> = f
            .from
            .iter()
            .zip(&f.to)
            .map(|(a, b)| format!("lk_r.{} = {}.{}", quote_ident(a), q(root), quote_ident(b)))
            .collect();
        conds.push(format!(
            "NOT EXISTS (SELECT 1 FROM {} AS lk_r WHERE {})",
            q(&f.child),
            pairs.join(" AND ")
        ));
        keys.push(f.describe());
    }
    if conds.is_empty() {
        (None, keys)
    } else {
        (Some(conds.join(" AND ")), keys)
    }
}

fn same(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn cols(prefix: &str, c: &[String]) -> String {
    let v: Vec<String> = c
        .iter()
        .map(|c| {
            if prefix.is_empty() {
                quote_ident(c)
            } else {
                format!("{prefix}.{}", quote_ident(c))
            }
        })
        .collect();
    format!("({})", v.join(", "))
}

/// How a plan names the tables of its schema: quoted for SQL, as written for people.
struct Names<'a> {
    schema: &'a str,
}

impl Names<'_> {
    fn q(&self, t: &str) -> String {
        format!("{}.{}", quote_ident(self.schema), quote_ident(t))
    }
    fn display(&self, t: &str) -> String {
        if self.schema == "main" {
            t.to_string()
        } else {
            format!("{}.{t}", self.schema)
        }
    }
}

fn key(t: &str) -> String {
    t.to_ascii_lowercase()
}

/// Plan the dependants of `root` (a table of `schema`) for rows selected by `root_cond`, an SQL
/// condition on the root table's columns (unqualified) that already includes the root's
/// `guard`. `fks` is the schema's graph.
pub(crate) fn plan(fks: &[Fk], schema: &str, root: &str, root_cond: &str) -> Result<Plan, String> {
    let n = Names { schema };
    // 1. The tables that lose rows: the root and, transitively, the children of delete edges.
    let (names, order) = losing_rows(fks, root);
    let in_set: HashSet<String> = order.iter().cloned().collect();
    let edges: Vec<&Fk> = fks
        .iter()
        .filter(|f| in_set.contains(&key(&f.parent)))
        .collect();
    if let Some(reason) = edges.iter().find_map(|f| f.broken.clone()) {
        return Err(reason);
    }
    // 2. Self-references: one deleting key per table is followed to the whole subtree.
    let self_edge = self_edges(&edges, &n)?;
    // 3. Parents before children; what remains is a cycle.
    let del_edges: Vec<&Fk> = edges
        .iter()
        .copied()
        .filter(|f| f.on_delete.deletes() && !same(&f.child, &f.parent))
        .collect();
    let topo = parents_first(&order, &del_edges, &names, &n)?;
    if !same(&topo[0], root) {
        // The root has no parent in the set unless a cycle runs through it (caught above).
        return Err(format!("internal: {root} is not first in its plan"));
    }
    // 4. Each table's condition, parents first.
    let cond = conditions(&topo, &names, &del_edges, &self_edge, root, root_cond, &n);
    // 5. Keys whose action is not a delete: updates run first (while every parent row they
    //    name exists), RESTRICT spares root rows or refuses.
    let mut plan = Plan {
        steps: update_steps(&edges, &cond, root, &n)?,
    };
    // Deletes children first; the root's own delete is the rule's.
    for t in topo.iter().skip(1).rev() {
        let name = &names[t];
        let action = if del_edges
            .iter()
            .any(|f| same(&f.child, t) && f.on_delete == OnDelete::Cascade)
        {
            OnDelete::Cascade
        } else {
            OnDelete::NoAction
        };
        plan.steps.push(Step {
            display: n.display(name),
            action: action.word(),
            change: Change::Delete,
            qtable: n.q(name),
            cond: cond[t].clone(),
        });
    }
    if self_edge.contains_key(&key(root)) {
        // The root's subtree through its own parent key goes first, in a step of its own, so
        // the rule's delete stays on the batch's keys.
        plan.steps.push(Step {
            display: n.display(root),
            action: "self reference",
            change: Change::Delete,
            qtable: n.q(root),
            cond: format!("{} AND NOT coalesce(({root_cond}), 0)", cond[&key(root)]),
        });
    }
    Ok(plan)
}

/// The root and, transitively, the children of its delete edges: each table's name as
/// declared (by lower-case key), and the keys in discovery order (the root first).
fn losing_rows(fks: &[Fk], root: &str) -> (HashMap<String, String>, Vec<String>) {
    let mut names: HashMap<String, String> = HashMap::new();
    names.insert(key(root), root.to_string());
    let mut order = vec![key(root)];
    let mut i = 0;
    while i < order.len() {
        let p = order[i].clone();
        for fk in fks
            .iter()
            .filter(|f| same(&f.parent, &p) && f.on_delete.deletes())
        {
            if let std::collections::hash_map::Entry::Vacant(e) = names.entry(key(&fk.child)) {
                e.insert(fk.child.clone());
                order.push(key(&fk.child));
            }
        }
        i += 1;
    }
    (names, order)
}

/// The one deleting key through which each table references itself; two are refused.
fn self_edges<'f>(edges: &[&'f Fk], n: &Names) -> Result<HashMap<String, &'f Fk>, String> {
    let mut self_edge: HashMap<String, &Fk> = HashMap::new();
    for fk in edges
        .iter()
        .filter(|f| same(&f.child, &f.parent) && f.on_delete.deletes())
    {
        if let Some(other) = self_edge.insert(key(&fk.child), fk) {
            return Err(format!(
                "{} references itself through two foreign keys ({} and {}); prune cannot order such deletes safely. Add ON DELETE SET NULL to one of them, or prune this table with an orphan rule",
                n.display(&fk.child),
                other.describe(),
                fk.describe()
            ));
        }
    }
    Ok(self_edge)
}

/// Parents before children (Kahn's algorithm over delete edges between distinct tables);
/// tables left over form a cycle, refused with their names.
fn parents_first(
    order: &[String],
    del_edges: &[&Fk],
    names: &HashMap<String, String>,
    n: &Names,
) -> Result<Vec<String>, String> {
    let mut indeg: HashMap<String, usize> = order.iter().map(|t| (t.clone(), 0)).collect();
    for f in del_edges {
        *indeg.get_mut(&key(&f.child)).expect("child in set") += 1;
    }
    let mut topo: Vec<String> = Vec::new();
    let mut ready: Vec<String> = order.iter().filter(|t| indeg[*t] == 0).cloned().collect();
    while let Some(t) = ready.pop() {
        for f in del_edges.iter().filter(|f| same(&f.parent, &t)) {
            let d = indeg.get_mut(&key(&f.child)).expect("child in set");
            *d -= 1;
            if *d == 0 {
                ready.push(key(&f.child));
            }
        }
        topo.push(t);
    }
    if topo.len() < order.len() {
        let mut cyc: Vec<String> = order
            .iter()
            .filter(|t| !topo.contains(t))
            .map(|t| n.display(&names[t]))
            .collect();
        cyc.sort();
        return Err(format!(
            "the foreign keys between {} form a cycle, so no order of deletes keeps them; prune refuses it. Make one of the keys ON DELETE SET NULL, or prune these tables with orphan rules on a schema without the cycle",
            cyc.join(", ")
        ));
    }
    Ok(topo)
}

/// `(child cols) IN (SELECT parent cols FROM parent WHERE <parent's condition>)`.
fn rows_of_parent(f: &Fk, parent_cond: &str, n: &Names) -> String {
    format!(
        "{} IN (SELECT {} FROM {} WHERE {})",
        cols("", &f.from),
        cols("", &f.to).trim_matches(|c| c == '(' || c == ')'),
        n.q(&f.parent),
        parent_cond
    )
}

/// Each table's condition on its own columns, parents first, nesting the parents' conditions
/// down to the rule's; a self-referencing table adds its subtree (a recursive query).
fn conditions(
    topo: &[String],
    names: &HashMap<String, String>,
    del_edges: &[&Fk],
    self_edge: &HashMap<String, &Fk>,
    root: &str,
    root_cond: &str,
    n: &Names,
) -> HashMap<String, String> {
    let mut cond: HashMap<String, String> = HashMap::new();
    for t in topo {
        let name = &names[t];
        let mut c = if same(t, root) {
            root_cond.to_string()
        } else {
            del_edges
                .iter()
                .filter(|f| same(&f.child, t))
                .map(|f| rows_of_parent(f, &cond[&key(&f.parent)], n))
                .collect::<Vec<_>>()
                .join(" OR ")
        };
        if let Some(s) = self_edge.get(t) {
            let ks: Vec<String> = (0..s.to.len()).map(|i| format!("lk_k{i}")).collect();
            c = format!(
                "({c}) OR {} IN (WITH RECURSIVE lk_sub({}) AS (SELECT {} FROM {} WHERE {c} UNION SELECT {} FROM {} AS lk_s JOIN lk_sub ON {} = ({})) SELECT * FROM lk_sub)",
                cols("", &s.to),
                ks.join(", "),
                cols("", &s.to).trim_matches(|c| c == '(' || c == ')'),
                n.q(name),
                cols("lk_s", &s.to).trim_matches(|c| c == '(' || c == ')'),
                n.q(name),
                cols("lk_s", &s.from),
                ks.join(", ")
            );
        }
        cond.insert(t.clone(), format!("({c})"));
    }
    cond
}

/// The steps of keys whose action is not a delete: `SET NULL` / `SET DEFAULT` updates;
/// `RESTRICT` on the root is its guard's business, deeper it is refused, as is a `SET` on a
/// NOT NULL column.
fn update_steps(
    edges: &[&Fk],
    cond: &HashMap<String, String>,
    root: &str,
    n: &Names,
) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    for f in edges.iter().filter(|f| !f.on_delete.deletes()) {
        let parent_rows = rows_of_parent(f, &cond[&key(&f.parent)], n);
        match f.on_delete {
            // Spared by the root's guard.
            OnDelete::Restrict if same(&f.parent, root) => {}
            OnDelete::Restrict => {
                return Err(format!(
                    "deleting from {} reaches {} through its dependants, and {} is ON DELETE RESTRICT; prune refuses rather than break it. Prune {} first with its own rule, or change the key's action",
                    n.display(root),
                    n.display(&f.parent),
                    n.display(&f.describe()),
                    n.display(&f.child)
                ));
            }
            OnDelete::SetNull | OnDelete::SetDefault => {
                if let Some(c) = &f.unsettable {
                    return Err(format!(
                        "{} is ON DELETE {}, but {}.{c} is NOT NULL, so no delete from {} can keep it (SQLite with foreign keys on fails the same way); change the key's action or the column",
                        n.display(&f.describe()),
                        f.on_delete.word().to_ascii_uppercase(),
                        n.display(&f.child),
                        n.display(&f.parent)
                    ));
                }
                let set = f
                    .from
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let v = match f.defaults.get(i) {
                            Some(Some(d)) if f.on_delete == OnDelete::SetDefault => {
                                format!("({d})")
                            }
                            _ => "NULL".to_string(),
                        };
                        (c.clone(), v)
                    })
                    .collect();
                steps.push(Step {
                    display: n.display(&f.child),
                    action: f.on_delete.word(),
                    change: Change::Set(set),
                    qtable: n.q(&f.child),
                    cond: format!("({parent_rows})"),
                });
            }
            OnDelete::Cascade | OnDelete::NoAction => unreachable!("filtered above"),
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(sql: &str) -> (Connection, Vec<Fk>) {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(sql).unwrap();
        let fks = read(&c, "main").unwrap();
        (c, fks)
    }

    #[test]
    fn children_come_before_parents_and_updates_before_deletes() {
        let (_c, fks) = graph(
            "CREATE TABLE chat(id TEXT PRIMARY KEY);
             CREATE TABLE message(id TEXT PRIMARY KEY, chat_id TEXT REFERENCES chat ON DELETE CASCADE);
             CREATE TABLE reaction(id INTEGER PRIMARY KEY, message_id TEXT REFERENCES message(id));
             CREATE TABLE note(id INTEGER PRIMARY KEY, chat_id TEXT REFERENCES chat(id) ON DELETE SET NULL);",
        );
        let p = plan(&fks, "main", "chat", "x = 1").unwrap();
        let order: Vec<(&str, &str)> = p
            .steps
            .iter()
            .map(|s| (s.display.as_str(), s.action))
            .collect();
        assert_eq!(
            order,
            [
                ("note", "set null"),
                ("reaction", "no action"),
                ("message", "cascade")
            ]
        );
    }

    #[test]
    fn cycles_between_tables_are_refused_and_self_references_followed() {
        let (_c, fks) = graph(
            "CREATE TABLE a(id INTEGER PRIMARY KEY, b_id REFERENCES b(id));
             CREATE TABLE b(id INTEGER PRIMARY KEY, a_id REFERENCES a(id));",
        );
        let e = plan(&fks, "main", "a", "1").unwrap_err();
        assert!(e.contains("a, b form a cycle"), "{e}");
        let (_c, fks) =
            graph("CREATE TABLE folder(id INTEGER PRIMARY KEY, parent_id REFERENCES folder(id));");
        let p = plan(&fks, "main", "folder", "1").unwrap();
        assert_eq!(p.steps.len(), 1);
        assert!(p.steps[0].sql().contains("WITH RECURSIVE"));
    }

    #[test]
    fn a_key_naming_no_columns_of_a_table_without_primary_key_blocks_only_its_parent() {
        let (_c, fks) = graph(
            "CREATE TABLE loose(a, b);
             CREATE TABLE child(x REFERENCES loose);
             CREATE TABLE other(id INTEGER PRIMARY KEY);",
        );
        assert!(plan(&fks, "main", "other", "1").is_ok());
        let e = plan(&fks, "main", "loose", "1").unwrap_err();
        assert!(e.contains("foreign key mismatch"), "{e}");
    }
}
