//! The number of rows `PRAGMA foreign_key_check` reports, without its scan of every child row
//! where the schema allows a cheaper, equal answer.
//!
//! The pragma reads each child row from the table and looks its key up in the parent. For the
//! common shape — a one-column key that references the parent's `INTEGER PRIMARY KEY` (its
//! rowid), with an index on the child column — the same count comes from that index: the child
//! values grouped (`GROUP BY c COLLATE BINARY`, in index order, so one lookup per distinct
//! value instead of one per row) and each group's rows counted when no parent row has that
//! rowid. Values BINARY-equal give the same rowid lookup (the pragma's `SeekRowid` and
//! `rowid = +value` both apply NUMERIC affinity and need an integer), and NULLs are skipped by
//! both. Every other table with foreign keys (composite keys, keys to another column, a
//! missing parent, no index on the child column) runs the pragma itself for that table, so
//! its count, and its error for a key that names no unique parent key, are the pragma's.

use rusqlite::{Connection, OptionalExtension};

use super::quote_ident;

/// One declared foreign key of a child table (`PRAGMA foreign_key_list`, grouped by id).
struct ForeignKey {
    parent: String,
    from: Vec<String>,
    /// The parent columns; `None` where the key names none (the parent's primary key).
    to: Vec<Option<String>>,
}

/// How many rows `PRAGMA {schema}.foreign_key_check` reports.
pub(crate) fn fk_violations(conn: &Connection, schema: &str) -> rusqlite::Result<i64> {
    let s = quote_ident(schema);
    let tables: Vec<String> = conn
        .prepare(&format!(
            "SELECT name FROM {s}.sqlite_schema WHERE type = 'table' ORDER BY name"
        ))?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut n = 0;
    for table in tables {
        let keys = foreign_keys(conn, &s, &table)?;
        if keys.is_empty() {
            continue;
        }
        let mut fast = Some(0);
        for key in &keys {
            fast = match (fast, by_index(conn, schema, &table, key)?) {
                (Some(sum), Some(k)) => Some(sum + k),
                _ => None,
            };
            if fast.is_none() {
                break;
            }
        }
        n += match fast {
            Some(k) => k,
            None => pragma_count(conn, &s, &table)?,
        };
    }
    Ok(n)
}

/// `PRAGMA foreign_key_check` of one table, counted.
fn pragma_count(conn: &Connection, s: &str, table: &str) -> rusqlite::Result<i64> {
    let mut stmt = conn.prepare(&format!(
        "PRAGMA {s}.foreign_key_check({})",
        quote_ident(table)
    ))?;
    let mut rows = stmt.query([])?;
    let mut n = 0;
    while rows.next()?.is_some() {
        n += 1;
    }
    Ok(n)
}

fn foreign_keys(conn: &Connection, s: &str, table: &str) -> rusqlite::Result<Vec<ForeignKey>> {
    let mut stmt = conn.prepare(&format!(
        "PRAGMA {s}.foreign_key_list({})",
        quote_ident(table)
    ))?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>("id")?,
            r.get::<_, String>("table")?,
            r.get::<_, String>("from")?,
            r.get::<_, Option<String>>("to")?,
        ))
    })?;
    let mut keys: Vec<(i64, ForeignKey)> = Vec::new();
    for row in rows {
        let (id, parent, from, to) = row?;
        match keys.iter_mut().find(|(k, _)| *k == id) {
            Some((_, key)) => {
                key.from.push(from);
                key.to.push(to);
            }
            None => keys.push((
                id,
                ForeignKey {
                    parent,
                    from: vec![from],
                    to: vec![to],
                },
            )),
        }
    }
    Ok(keys.into_iter().map(|(_, k)| k).collect())
}

/// The violations of `key` counted from an index on its child column, or `None` where the key
/// does not have the shape this needs (see the module's doc).
fn by_index(
    conn: &Connection,
    schema: &str,
    table: &str,
    key: &ForeignKey,
) -> rusqlite::Result<Option<i64>> {
    let s = &quote_ident(schema);
    let ([from], [to]) = (key.from.as_slice(), key.to.as_slice()) else {
        return Ok(None);
    };
    // Table names are matched as SQLite matches them: without regard to case.
    let parent: Option<String> = conn
        .query_row(
            &format!(
                "SELECT name FROM {s}.sqlite_schema WHERE type = 'table' AND name = ?1 \
                 COLLATE NOCASE"
            ),
            [&key.parent],
            |r| r.get(0),
        )
        .optional()?;
    let Some(parent) = parent else {
        return Ok(None);
    };
    let Some(ipk) = rowid_alias(conn, schema, &parent)? else {
        return Ok(None);
    };
    if to.as_ref().is_some_and(|to| !to.eq_ignore_ascii_case(&ipk)) {
        return Ok(None);
    }
    if !leads_an_index(conn, schema, table, from)? {
        return Ok(None);
    }
    let (t, c, p, k) = (
        quote_ident(table),
        quote_ident(from),
        quote_ident(&parent),
        quote_ident(&ipk),
    );
    conn.query_row(
        &format!(
            "SELECT coalesce(sum(n), 0) FROM \
               (SELECT {c} AS v, count(*) AS n FROM {s}.{t} WHERE {c} IS NOT NULL \
                GROUP BY {c} COLLATE BINARY) \
             WHERE NOT EXISTS (SELECT 1 FROM {s}.{p} WHERE {p}.{k} = +v)"
        ),
        [],
        |r| r.get(0),
    )
    .map(Some)
}

/// The name of `table`'s rowid alias (its `INTEGER PRIMARY KEY` column), if it has one.
fn rowid_alias(conn: &Connection, schema: &str, table: &str) -> rusqlite::Result<Option<String>> {
    let pk: Vec<(String, String)> = conn
        .prepare("SELECT name, type FROM pragma_table_info(?1, ?2) WHERE pk > 0")?
        .query_map([table, schema], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    // A primary key that is not the rowid has an index of origin 'pk' (so has a WITHOUT ROWID
    // table's, and `INTEGER PRIMARY KEY DESC`'s).
    let pk_index: i64 = conn.query_row(
        "SELECT count(*) FROM pragma_index_list(?1, ?2) WHERE origin = 'pk'",
        [table, schema],
        |r| r.get(0),
    )?;
    Ok(match pk.as_slice() {
        [(name, ty)] if ty.eq_ignore_ascii_case("INTEGER") && pk_index == 0 => Some(name.clone()),
        _ => None,
    })
}

/// Whether `column` is the first column of a full (not partial) index of `table` with the
/// BINARY collation: the grouped count then reads that index in order.
fn leads_an_index(
    conn: &Connection,
    schema: &str,
    table: &str,
    column: &str,
) -> rusqlite::Result<bool> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM pragma_index_list(?1, ?2) AS l, \
           pragma_index_xinfo(l.name, ?2) AS x \
         WHERE l.partial = 0 AND x.seqno = 0 AND x.name = ?3 COLLATE NOCASE \
           AND x.coll = 'BINARY'",
        [table, schema, column],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pragma_total(c: &Connection) -> i64 {
        let mut stmt = c.prepare("PRAGMA main.foreign_key_check").unwrap();
        let mut rows = stmt.query([]).unwrap();
        let mut n = 0;
        while rows.next().unwrap().is_some() {
            n += 1;
        }
        n
    }

    /// Schemas of every shape, each with dangling, NULL, present and oddly typed child
    /// values: the count is always the pragma's.
    #[test]
    fn counts_what_foreign_key_check_reports() {
        let schemas = [
            // The fast shape: a rowid parent, an index on the child column.
            "CREATE TABLE p(id INTEGER PRIMARY KEY, x);
             CREATE TABLE c(id INTEGER PRIMARY KEY, pid INTEGER REFERENCES p(id));
             CREATE INDEX c_pid ON c(pid);",
            // The same, the key naming no column, the child column without affinity.
            "CREATE TABLE p(id INTEGER PRIMARY KEY, x);
             CREATE TABLE c(id INTEGER PRIMARY KEY, pid REFERENCES p);
             CREATE INDEX c_pid ON c(pid, id);",
            // Text child column, NOCASE collation, names in other case.
            "CREATE TABLE P(Id INTEGER PRIMARY KEY, x);
             CREATE TABLE \"c c\"(id INTEGER PRIMARY KEY, pid TEXT COLLATE NOCASE REFERENCES p(id));
             CREATE INDEX c_pid ON \"c c\"(PID);",
            // No index on the child column: the pragma.
            "CREATE TABLE p(id INTEGER PRIMARY KEY, x);
             CREATE TABLE c(id INTEGER PRIMARY KEY, pid INTEGER REFERENCES p(id));",
            // A partial index only.
            "CREATE TABLE p(id INTEGER PRIMARY KEY, x);
             CREATE TABLE c(id INTEGER PRIMARY KEY, pid INTEGER REFERENCES p(id));
             CREATE INDEX c_pid ON c(pid) WHERE pid > 3;",
            // A text primary key (not the rowid), and a unique column.
            "CREATE TABLE p(id TEXT PRIMARY KEY, u INTEGER UNIQUE, x);
             CREATE TABLE c(id INTEGER PRIMARY KEY, pid REFERENCES p(id), pu REFERENCES p(u));
             CREATE INDEX c_pid ON c(pid); CREATE INDEX c_pu ON c(pu);",
            // INTEGER PRIMARY KEY DESC is not the rowid.
            "CREATE TABLE p(id INTEGER PRIMARY KEY DESC, x);
             CREATE TABLE c(id INTEGER PRIMARY KEY, pid INTEGER REFERENCES p(id));
             CREATE INDEX c_pid ON c(pid);",
            // A composite key, and a second key on the same table to a missing parent.
            "CREATE TABLE p(a INTEGER, b INTEGER, x, PRIMARY KEY(a, b));
             CREATE TABLE c(id INTEGER PRIMARY KEY, pid INTEGER, q INTEGER,
                            FOREIGN KEY(pid, q) REFERENCES p(a, b),
                            FOREIGN KEY(q) REFERENCES gone(id));
             CREATE INDEX c_pid ON c(pid);",
            // Two keys, both fast, and a self-reference.
            "CREATE TABLE p(id INTEGER PRIMARY KEY, up INTEGER REFERENCES p(id), x);
             CREATE TABLE c(id INTEGER PRIMARY KEY, pid INTEGER REFERENCES p(id),
                            q INTEGER REFERENCES p(id));
             CREATE INDEX c_pid ON c(pid); CREATE INDEX c_q ON c(q); CREATE INDEX p_up ON p(up);",
        ];
        for (i, schema) in schemas.iter().enumerate() {
            let c = Connection::open_in_memory().unwrap();
            c.execute_batch("PRAGMA foreign_keys = OFF;").unwrap();
            c.execute_batch(schema).unwrap();
            let child = if i == 2 { "\"c c\"" } else { "c" };
            let p_cols: i64 = c
                .query_row("SELECT count(*) FROM pragma_table_info('p')", [], |r| {
                    r.get(0)
                })
                .unwrap();
            for id in 1..=6 {
                let vals = vec!["NULL"; p_cols as usize - 1];
                let extra = if vals.is_empty() {
                    String::new()
                } else {
                    format!(", {}", vals.join(", "))
                };
                let first = if i == 5 {
                    format!("'{id}'")
                } else {
                    id.to_string()
                };
                c.execute_batch(&format!("INSERT INTO p VALUES ({first}{extra});"))
                    .unwrap();
            }
            let cols: i64 = c
                .query_row(
                    &format!(
                        "SELECT count(*) FROM pragma_table_info('{}')",
                        child.trim_matches('"')
                    ),
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            let values = [
                "1", "2", "2", "7", "7", "7", "NULL", "'3'", "' 4'", "'4.0'", "5.0", "5.5", "'x'",
                "X'01'", "9", "-1", "1e30", "'007'",
            ];
            for v in values {
                let rest = vec![v; cols as usize - 1].join(", ");
                c.execute_batch(&format!("INSERT INTO {child} VALUES (NULL, {rest});"))
                    .unwrap();
            }
            assert_eq!(
                fk_violations(&c, "main").unwrap(),
                pragma_total(&c),
                "schema {i}: {schema}"
            );
        }
    }

    /// A key that names no unique parent key is the pragma's error, not a count.
    #[test]
    fn a_key_without_a_unique_parent_key_is_an_error() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "PRAGMA foreign_keys = OFF;
             CREATE TABLE p(id INTEGER PRIMARY KEY, u INTEGER);
             CREATE TABLE c(id INTEGER PRIMARY KEY, pu INTEGER REFERENCES p(u));
             CREATE INDEX c_pu ON c(pu); INSERT INTO c VALUES (1, 1);",
        )
        .unwrap();
        let err = fk_violations(&c, "main").unwrap_err();
        assert!(err.to_string().contains("foreign key mismatch"), "{err}");
    }

    /// The fast shape really takes the index: its query plan has no temp b-tree for the
    /// grouping and no scan of the child table.
    #[test]
    fn the_fast_shape_reads_the_index() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE p(id INTEGER PRIMARY KEY, x);
             CREATE TABLE c(id INTEGER PRIMARY KEY, pid INTEGER REFERENCES p(id), body TEXT);
             CREATE INDEX c_pid ON c(pid);",
        )
        .unwrap();
        let key = &foreign_keys(&c, "\"main\"", "c").unwrap()[0];
        assert_eq!(by_index(&c, "main", "c", key).unwrap(), Some(0));
        let plan: Vec<String> = c
            .prepare(
                "EXPLAIN QUERY PLAN SELECT coalesce(sum(n), 0) FROM \
                 (SELECT \"pid\" AS v, count(*) AS n FROM main.\"c\" WHERE \"pid\" IS NOT NULL \
                  GROUP BY \"pid\" COLLATE BINARY) \
                 WHERE NOT EXISTS (SELECT 1 FROM main.\"p\" WHERE \"p\".\"id\" = +v)",
            )
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("COVERING INDEX c_pid"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
}
