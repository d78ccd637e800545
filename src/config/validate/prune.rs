//! A database's `[database.prune]` section: its row rules (age, orphan, where) and files
//! rules, with the checks that keep SQL written in the file inside litekeeper's statements
//! (table names, `where`/`key` expressions, `referenced_by` queries).

use std::time::Duration;

use super::{has_control_chars, is_identifier, Checker};
use crate::config::raw::{RawFiles, RawPrune, RawRule};
use crate::config::{Entries, FileAction, FilesRule, KeyPath, Prune, Rule, TableRef, TimeFormat};

pub(super) fn prune(c: &mut Checker, key: &KeyPath, p: &RawPrune, aliases: &[&str]) -> Prune {
    let max_fraction = match p.max_fraction {
        None => 0.5,
        Some(f) if f > 0.0 && f <= 1.0 => f,
        Some(f) => {
            c.fail(
                &key.key("max_fraction"),
                "expected a share between 0 (exclusive) and 1",
                Some(f.to_string()),
            );
            0.5
        }
    };
    let max_rows = match p.max_rows {
        None => None,
        Some(n) if n > 0 => Some(n as u64),
        Some(n) => {
            c.fail(
                &key.key("max_rows"),
                "expected a number > 0",
                Some(n.to_string()),
            );
            None
        }
    };
    let mut rules = Vec::new();
    for (i, r) in p.rule.iter().enumerate() {
        if let Some(rule) = rule(c, &key.key("rule").index(i), r, aliases) {
            rules.push(rule);
        }
    }
    let files = p
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| files_rule(c, &key.key("files").index(i), f))
        .collect();
    Prune {
        timing: c.timing(
            key,
            p.schedule.as_ref(),
            p.jitter.as_ref(),
            p.ping.as_ref(),
            p.ping_timeout.as_ref(),
        ),
        max_lock: c.duration(
            &key.key("max_lock"),
            p.max_lock.as_ref(),
            Duration::from_millis(50),
        ),
        pause: c.opt_duration(&key.key("pause"), p.pause.as_ref()),
        max_fraction,
        max_rows,
        dry_run: p.dry_run.unwrap_or(false),
        rules,
        files,
    }
}

/// One row rule at `k`, or None when it is too wrong to use (its problems recorded).
fn rule(c: &mut Checker, k: &KeyPath, r: &RawRule, aliases: &[&str]) -> Option<Rule> {
    if rule_names_with_control_chars(c, k, r) {
        return None;
    }
    let table = table_ref(c, &k.key("table"), &r.table, aliases);
    for (name, expr) in [("where", &r.filter), ("key", &r.key)] {
        if let Some(why) = expr.as_deref().and_then(sql_expr_problem) {
            c.fail(&k.key(name), why, expr.clone());
        }
    }
    let rule = match (&r.older_than, &r.key, &r.parent, &r.filter) {
        (Some(age), None, None, filter) => {
            let Some(column) = r.column.clone() else {
                c.fail(k, "an age rule (older_than) needs `column`", None);
                return None;
            };
            Rule::Age {
                table,
                column,
                older_than: c.duration(&k.key("older_than"), Some(age), Duration::ZERO),
                time_format: c.choice(
                    &k.key("time_format"),
                    r.time_format.as_ref(),
                    &[
                        ("unix", TimeFormat::Unix),
                        ("unix_ms", TimeFormat::UnixMs),
                        ("iso8601", TimeFormat::Iso8601),
                        ("julian", TimeFormat::Julian),
                    ],
                    TimeFormat::Unix,
                ),
                filter: filter.clone(),
            }
        }
        (None, Some(expr), Some(parent), None) => {
            let pk = k.key("parent");
            let (ptable, pcol) = match parent.rsplit_once('.') {
                Some((t, col)) if is_identifier(col) => (t, col),
                _ => {
                    c.fail(&pk, "expected \"table.column\"", Some(parent.clone()));
                    return None;
                }
            };
            Rule::Orphan {
                table,
                key: expr.clone(),
                parent: table_ref(c, &pk, ptable, aliases),
                parent_column: pcol.to_string(),
            }
        }
        (None, None, None, Some(filter)) => Rule::Where {
            table,
            filter: filter.clone(),
        },
        _ => {
            c.fail(
                k,
                "a rule is one of: age (older_than + column [+ where]), orphan (key + \
                 parent) or where (where alone)",
                None,
            );
            return None;
        }
    };
    if r.column.is_some() && !matches!(rule, Rule::Age { .. }) {
        c.fail(
            &k.key("column"),
            "`column` belongs to age rules only",
            r.column.clone(),
        );
    }
    if r.time_format.is_some() && !matches!(rule, Rule::Age { .. }) {
        c.fail(
            &k.key("time_format"),
            "`time_format` belongs to age rules only (older_than + column)",
            r.time_format.clone(),
        );
    }
    Some(rule)
}

/// One files rule at `k`.
fn files_rule(c: &mut Checker, k: &KeyPath, f: &RawFiles) -> FilesRule {
    if let Some(why) = reference_query_problem(&f.referenced_by) {
        c.fail(&k.key("referenced_by"), why, Some(f.referenced_by.clone()));
    }
    let entries = c.choice(
        &k.key("entries"),
        f.entries.as_ref(),
        &[("files", Entries::Files), ("dirs", Entries::Dirs)],
        Entries::Files,
    );
    let pattern = match &f.pattern {
        Some(text) => match compiled(text) {
            Ok(re) if re.capture_names().any(|n| n == Some("id")) => Some(re),
            Ok(_) => {
                c.fail(
                    &k.key("pattern"),
                    "the pattern needs a named group `id`, e.g. '^(?P<id>[0-9a-f-]{36})_'",
                    Some(text.clone()),
                );
                None
            }
            Err(e) => {
                let first = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim()
                    .to_string();
                c.fail(
                    &k.key("pattern"),
                    format!("invalid regex: {first}"),
                    Some(text.clone()),
                );
                None
            }
        },
        None if entries == Entries::Dirs => None,
        None => {
            c.fail(
                k,
                "a files rule needs `pattern` (with a group `id`) or entries = \"dirs\"",
                None,
            );
            None
        }
    };
    FilesRule {
        dir: c.abs_path(&k.key("dir"), &f.dir),
        pattern,
        entries,
        referenced_by: f.referenced_by.clone(),
        min_age: c.duration(
            &k.key("min_age"),
            f.min_age.as_ref(),
            Duration::from_secs(86400),
        ),
        action: c.choice(
            &k.key("action"),
            f.action.as_ref(),
            &[
                ("delete", FileAction::Delete),
                ("quarantine", FileAction::Quarantine),
            ],
            FileAction::Delete,
        ),
        quarantine_days: {
            if f.quarantine_days.is_some() && f.action.as_deref() != Some("quarantine") {
                c.fail(
                    &k.key("quarantine_days"),
                    "`quarantine_days` applies only with action = \"quarantine\" (the \
                     default, \"delete\", deletes at once)",
                    f.quarantine_days.map(|d| d.to_string()),
                );
            }
            c.count(&k.key("quarantine_days"), f.quarantine_days, 7)
        },
        allow_empty_reference: f.allow_empty_reference.unwrap_or(false),
    }
}

fn table_ref(c: &mut Checker, key: &KeyPath, text: &str, aliases: &[&str]) -> TableRef {
    let Some(parts) = split_table_name(text) else {
        c.fail(
            key,
            "not a valid table name: a name with characters other than letters, digits and '_' \
             goes in double quotes, like '\"my table\"' (and is then used quoted, never as SQL)",
            Some(text.into()),
        );
        return TableRef {
            schema: None,
            table: text.to_string(),
        };
    };
    let (schema, table) = match parts.as_slice() {
        [t] => (None, t.clone()),
        [s, t] => (Some(s.clone()), t.clone()),
        _ => {
            c.fail(
                key,
                "expected \"table\" or \"alias.table\"",
                Some(text.into()),
            );
            (None, text.to_string())
        }
    };
    if let Some(s) = &schema {
        if !s.eq_ignore_ascii_case("main") && !aliases.iter().any(|a| a.eq_ignore_ascii_case(s)) {
            c.fail(
                key,
                format!("unknown database alias {s:?}: add it to this database's `attach`"),
                Some(text.into()),
            );
        }
    }
    TableRef { schema, table }
}

/// Table and column names of a rule hold no control characters, quoted or not (they are
/// named in logs, figures and `status`); true when one does (the rule is not checked further).
fn rule_names_with_control_chars(c: &mut Checker, key: &KeyPath, r: &RawRule) -> bool {
    let mut found = false;
    for (name, value) in [
        ("table", Some(&r.table)),
        ("column", r.column.as_ref()),
        ("parent", r.parent.as_ref()),
    ] {
        if let Some(v) = value.filter(|v| has_control_chars(v)) {
            c.fail(
                &key.key(name),
                crate::config::CONTROL_CHARS,
                Some(v.clone()),
            );
            found = true;
        }
    }
    found
}

/// Split a table name as written in a rule into its parts: `chat`, `files.blob`, or with
/// double-quoted parts for names that are not plain identifiers (`"my table"`,
/// `files."a ""b"""`, SQL's quoting, `""` for a quote). A bare part must be an identifier, so
/// SQL written where a name belongs (`chat; DROP TABLE x`) is refused, while a quoted name is
/// only ever looked up and used quoted.
fn split_table_name(text: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut rest = text;
    loop {
        let part;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut name = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') if quoted[i + 1..].starts_with('"') => {
                        name.push('"');
                        chars.next();
                    }
                    (i, '"') => break i + 1,
                    (_, c) => name.push(c),
                }
            };
            if name.is_empty() {
                return None;
            }
            part = name;
            rest = &quoted[end..];
        } else {
            let end = rest.find('.').unwrap_or(rest.len());
            if !is_identifier(&rest[..end]) {
                return None;
            }
            part = rest[..end].to_string();
            rest = &rest[end..];
        }
        parts.push(part);
        match rest.strip_prefix('.') {
            Some(r) => rest = r,
            None if rest.is_empty() => return Some(parts),
            None => return None,
        }
    }
}

/// Why an SQL expression (`where`, `key`) cannot be pasted into litekeeper's statements, if it
/// cannot. The expression is placed inside parentheses in a SELECT and a DELETE, so it must
/// stay inside them: no `;` (a second statement), no `)` closing more than it opened (`a = 1)
/// OR (1` would turn `age AND (where)` into `age AND (a = 1) OR (1)`: every row), no `--` or
/// unterminated `/*` comment (either would swallow the rest of the statement), every quote
/// closed. Checked when the file is loaded; the live schema is checked at job start.
fn sql_expr_problem(text: &str) -> Option<String> {
    if text.trim().is_empty() {
        return Some("expected an SQL expression, like \"archived = 1\"".into());
    }
    if text.contains(';') {
        return Some("must be a single SQL expression (no `;`)".into());
    }
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"' | b'`' | b'[') => {
                let close = if q == b'[' { b']' } else { q };
                let mut j = i + 1;
                loop {
                    if j >= b.len() {
                        return Some(format!(
                            "a quoted string or name opened with {} is never closed",
                            q as char
                        ));
                    }
                    if b[j] == close {
                        // A doubled quote is a quote inside the string, not its end.
                        if close != b']' && b.get(j + 1) == Some(&close) {
                            j += 2;
                            continue;
                        }
                        break;
                    }
                    j += 1;
                }
                i = j;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                return Some(
                    "must not contain a `--` comment: it would cut off the rest of the statement \
                     the expression is placed in"
                        .into(),
                );
            }
            b'/' if b.get(i + 1) == Some(&b'*') => match text[i + 2..].find("*/") {
                Some(end) => i += end + 3,
                None => return Some("a `/*` comment is never closed".into()),
            },
            b'(' => depth += 1,
            b')' if depth == 0 => {
                return Some(
                    "closes a parenthesis it did not open: the expression must stay inside its \
                     own parentheses"
                        .into(),
                );
            }
            b')' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    if depth > 0 {
        return Some("opens a parenthesis it does not close".into());
    }
    None
}

/// Why `referenced_by` is not a single read-only SELECT, when that shows without a database:
/// a second statement, or a statement that is not a query (PRAGMA, ATTACH, DELETE…). At job
/// start SQLite also confirms that it is read-only and returns a column.
fn reference_query_problem(text: &str) -> Option<String> {
    let trimmed = text.trim().trim_end_matches(';').trim();
    if trimmed.is_empty() {
        return Some("expected a SELECT returning the ids still in use".into());
    }
    if trimmed.contains(';') {
        return Some("must be a single SELECT (no `;` inside)".into());
    }
    // The first keyword, after any leading comments and parentheses.
    let mut rest = trimmed;
    loop {
        rest = rest.trim_start().trim_start_matches('(').trim_start();
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, after)| after);
        } else {
            break;
        }
    }
    let word: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase();
    if matches!(word.as_str(), "SELECT" | "WITH" | "VALUES") {
        return None;
    }
    Some(if word.is_empty() {
        "must be a single read-only SELECT returning the ids".into()
    } else {
        format!("must be a single read-only SELECT returning the ids, not {word}")
    })
}

/// `Regex::new`, once per pattern text and thread: every database of an app's fleet of
/// stanzas has the same files pattern, and a compiled one is ~20 KiB (a clone shares it).
fn compiled(text: &str) -> Result<regex::Regex, regex::Error> {
    thread_local! {
        static COMPILED: std::cell::RefCell<std::collections::HashMap<String, Result<regex::Regex, regex::Error>>> =
            std::cell::RefCell::new(std::collections::HashMap::new());
    }
    if let Some(hit) = COMPILED.with_borrow(|c| c.get(text).cloned()) {
        return hit;
    }
    let result = regex::Regex::new(text);
    COMPILED.with_borrow_mut(|c| {
        if c.len() >= 256 {
            c.clear();
        }
        c.insert(text.to_string(), result.clone());
    });
    result
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_bare_or_quoted() {
        let split = |s: &str| split_table_name(s);
        assert_eq!(split("chat"), Some(vec!["chat".into()]));
        assert_eq!(
            split("files.blob"),
            Some(vec!["files".into(), "blob".into()])
        );
        assert_eq!(
            split(r#"files."a.b ""c""; x""#),
            Some(vec!["files".into(), r#"a.b "c"; x"#.into()])
        );
        for bad in [
            "chat; DROP TABLE x",
            r#""chat"; DROP TABLE x"#,
            r#""chat"#,
            r#""""#,
            "chat.",
            "",
        ] {
            assert_eq!(split(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn expressions_stay_inside_their_parentheses() {
        for ok in [
            "archived = 0 AND (pinned = 0 OR folder_id IS NULL)",
            "note = 'a) OR (1 -- x' AND \"we\"\"ird\" = [x)]",
            "substr(key, 1, instr(key, '/') - 1) /* the id */",
            "a - -1",
        ] {
            assert_eq!(sql_expr_problem(ok), None, "{ok:?}");
        }
        for bad in [
            "1; DROP TABLE x",
            "a = 1) OR (1",
            "a = 1 -- tail",
            "(a = 1",
            "a = 'x",
            "a /* x",
            "  ",
        ] {
            assert!(sql_expr_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn reference_queries_are_one_select() {
        for ok in [
            "SELECT id FROM file",
            "select id from file;",
            "-- in use\nWITH f AS (SELECT id FROM file) SELECT id FROM f",
            "VALUES ('a')",
        ] {
            assert_eq!(reference_query_problem(ok), None, "{ok:?}");
        }
        for bad in [
            "DELETE FROM file RETURNING id",
            "SELECT 1; DROP TABLE file",
            "PRAGMA table_info(file)",
            "ATTACH 'x.db' AS x",
            "/* x */ VACUUM INTO '/tmp/x'",
            "",
        ] {
            assert!(reference_query_problem(bad).is_some(), "{bad:?}");
        }
    }
}
