//! The one step from raw serde types to the domain types of `model`: defaults applied, every
//! value parsed and checked. Problems are collected with their key path so the loader can name
//! file, line, key and value for each.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use super::fleet::is_glob;
use super::fleet::{self, member_name, substitute};
use super::model::*;
use super::raw::*;
use super::KeyPath;
use crate::paths::Defaults;
use crate::schedule::{Schedule, Zone};

/// One thing wrong with the configuration.
#[derive(Debug, Clone)]
pub struct Problem {
    pub key: KeyPath,
    pub reason: String,
    pub got: Option<String>,
}

/// Collects problems while validating; each check returns a usable fallback so validation
/// continues and reports everything at once.
#[derive(Default)]
pub(super) struct Checker {
    pub(super) problems: Vec<Problem>,
}

impl Checker {
    fn fail(&mut self, key: &KeyPath, reason: impl Into<String>, got: Option<String>) {
        self.problems.push(Problem {
            key: key.clone(),
            reason: reason.into(),
            got,
        });
    }

    fn duration(&mut self, key: &KeyPath, value: Option<&String>, default: Duration) -> Duration {
        let Some(text) = value else { return default };
        match parse_duration(text) {
            Ok(d) => d,
            Err(reason) => {
                self.fail(key, reason, Some(text.clone()));
                default
            }
        }
    }

    fn opt_duration(&mut self, key: &KeyPath, value: Option<&String>) -> Option<Duration> {
        value.map(|v| self.duration(key, Some(v), Duration::ZERO))
    }

    fn abs_path(&mut self, key: &KeyPath, text: &str) -> PathBuf {
        let p = PathBuf::from(text);
        if has_control_chars(text) {
            self.fail(key, super::CONTROL_CHARS, Some(text.to_string()));
        } else if text.is_empty() || !p.is_absolute() {
            self.fail(
                key,
                "expected an absolute path like \"/var/lib/app/app.db\"",
                Some(text.to_string()),
            );
        }
        p
    }

    fn count(&mut self, key: &KeyPath, value: Option<i64>, default: u32) -> u32 {
        match value {
            None => default,
            Some(v) if (0..=u32::MAX as i64).contains(&v) => v as u32,
            Some(v) => {
                self.fail(key, "expected a whole number >= 0", Some(v.to_string()));
                default
            }
        }
    }

    fn choice<T: Copy>(
        &mut self,
        key: &KeyPath,
        value: Option<&String>,
        options: &[(&str, T)],
        default: T,
    ) -> T {
        let Some(text) = value else { return default };
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == text) {
            return *v;
        }
        let names: Vec<String> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        self.fail(
            key,
            format!("expected one of {}", names.join(", ")),
            Some(text.clone()),
        );
        default
    }

    fn schedule(&mut self, key: &KeyPath, value: Option<&String>) -> Option<Schedule> {
        let text = value?;
        match Schedule::parse(text) {
            Ok(s) => Some(s),
            Err(reason) => {
                self.fail(
                    key,
                    format!("invalid cron schedule: {reason}"),
                    Some(text.clone()),
                );
                None
            }
        }
    }

    fn timing(
        &mut self,
        key: &KeyPath,
        schedule: Option<&String>,
        jitter: Option<&String>,
        ping: Option<&String>,
        ping_timeout: Option<&String>,
    ) -> Timing {
        let schedule = self.schedule(&key.key("schedule"), schedule);
        let jitter = self.duration(&key.key("jitter"), jitter, Duration::ZERO);
        let timeout_key = key.key("ping_timeout");
        let timeout = self.duration(&timeout_key, ping_timeout, crate::pings::DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            self.fail(
                &timeout_key,
                "expected a duration above 0",
                ping_timeout.cloned(),
            );
        }
        let ping = ping.map(|url| {
            if let Err(reason) = crate::pings::check_url(url) {
                self.fail(&key.key("ping"), reason, Some(url.clone()));
            }
            Ping {
                url: url.clone(),
                timeout,
            }
        });
        Timing {
            schedule,
            jitter,
            ping,
        }
    }
}

/// Parse "90d", "30m", "100ms", "1h 30m" (humantime syntax).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|_| "expected a duration like \"90d\", \"30m\" or \"100ms\"".to_string())
}

/// Parse "20%" as a fraction or "64MiB"/"1GB"/"4096" as bytes.
pub fn parse_threshold(text: &str) -> Result<Threshold, String> {
    const HINT: &str = "expected a share like \"20%\" or a size like \"64MiB\"";
    let t = text.trim();
    if let Some(num) = t.strip_suffix('%') {
        let v: f64 = num.trim().parse().map_err(|_| HINT.to_string())?;
        if !(0.0..=100.0).contains(&v) {
            return Err("a share must be between 0% and 100%".into());
        }
        return Ok(Threshold::Fraction(v / 100.0));
    }
    parse_size(t)
        .map(Threshold::Bytes)
        .map_err(|_| HINT.to_string())
}

/// Parse a byte size: a number with an optional unit (B, KB, KiB, MB, MiB, GB, GiB, TB, TiB).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().map_err(|_| format!("not a size: {text:?}"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024.0f64.powi(4),
        _ => return Err(format!("unknown size unit in {text:?}")),
    };
    Ok((num * mult) as u64)
}

/// An absolute path naming a file (not a directory) for the Prometheus textfile.
fn metrics_file(c: &mut Checker, key: &KeyPath, text: &str) -> PathBuf {
    let p = c.abs_path(key, text);
    if p.is_absolute() && (text.ends_with('/') || p.file_name().is_none()) {
        c.fail(
            key,
            "expected the path of a file, like \"/var/lib/prometheus/node-exporter/litekeeper.prom\"",
            Some(text.to_string()),
        );
    }
    p
}

/// What a fleet is called as a whole: its name template without `{stem}` and the separators
/// around it (`tenant-{stem}` → `tenant`); for a bare `{stem}`, the name of the directory the
/// pattern starts in (`/srv/app/tenants/*.db` → `tenants`), else `fleet<N>`. (`validate`
/// moves a directory's name that is taken to `fleet<N>`.)
pub fn fleet_handle(template: &str, pattern: &str, index: usize) -> String {
    template_handle(template)
        .or_else(|| dir_handle(pattern))
        .unwrap_or_else(|| format!("fleet{index}"))
}

/// The handle a name template gives (`tenant-{stem}` → `tenant`), if any; also used to
/// clean a directory's name.
fn template_handle(text: &str) -> Option<String> {
    let mut h = member_name(text, "").trim_matches(['-', '_']).to_string();
    while h.contains("--") {
        h = h.replace("--", "-");
    }
    Some(h).filter(|h| !h.is_empty() && is_db_name(h))
}

/// The name of the directory a fleet's pattern starts in.
fn dir_handle(pattern: &str) -> Option<String> {
    let fixed = &pattern[..pattern.find(['*', '?', '[']).unwrap_or(pattern.len())];
    let dir = fixed.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    template_handle(dir.rsplit('/').next().unwrap_or(""))
}

/// Paths and names from the configuration never hold control characters: a newline or tab
/// would become a line of a unit file, a log or a Nagios answer.
fn has_control_chars(s: &str) -> bool {
    s.chars().any(char::is_control)
}

const NAME_RULE: &str =
    "expected a name of lower-case letters, digits, '_' and '-', not starting with '-' \
     ([a-z0-9_][a-z0-9_-]*)";

/// The one rule for a database's name, and for a fleet member's name made from its template:
/// lower-case ASCII letters, digits, '_' and '-', not starting with '-' (a name is an argument
/// of `litekeeper run NAME JOB` and of timer units, where `-rf` would read as an option).
pub(super) fn is_db_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
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

/// Validate the raw configuration into domain types, or return every problem found.
pub fn validate(
    raw: RawConfig,
    file: PathBuf,
    defaults: &Defaults,
) -> Result<Config, Vec<Problem>> {
    let mut c = Checker::default();
    let d = &raw.daemon;
    let dk = KeyPath::root().key("daemon");

    let timezone = match d.timezone.as_deref() {
        None => Zone::Local,
        Some(t) => Zone::parse(t).unwrap_or_else(|reason| {
            c.fail(&dk.key("timezone"), reason, Some(t.to_string()));
            Zone::Local
        }),
    };
    let max_concurrent_jobs = match d.max_concurrent_jobs {
        None => 2,
        Some(n) if (1..=1024).contains(&n) => n as usize,
        Some(n) => {
            c.fail(
                &dk.key("max_concurrent_jobs"),
                "expected a number from 1 to 1024",
                Some(n.to_string()),
            );
            2
        }
    };
    let state_dir = match &d.state_dir {
        Some(p) => c.abs_path(&dk.key("state_dir"), p),
        None => defaults.state_dir.clone(),
    };
    let lock_dir = match &d.lock_dir {
        Some(p) => c.abs_path(&dk.key("lock_dir"), p),
        None => defaults.lock_dir.clone(),
    };
    let daemon = Daemon {
        timezone,
        max_concurrent_jobs,
        state_dir,
        lock_dir,
        slow_statement: c.duration(
            &dk.key("slow_statement"),
            d.slow_statement.as_ref(),
            Duration::from_millis(100),
        ),
        busy_timeout: c.duration(
            &dk.key("busy_timeout"),
            d.busy_timeout.as_ref(),
            Duration::from_secs(5),
        ),
        catch_up: d.catch_up.unwrap_or(true),
        keep_history: c.duration(
            &dk.key("keep_history"),
            d.keep_history.as_ref(),
            Duration::from_secs(90 * 86400),
        ),
        metrics_file: d
            .metrics_file
            .as_ref()
            .map(|p| metrics_file(&mut c, &dk.key("metrics_file"), p)),
    };

    let mut databases: Vec<Arc<Database>> = Vec::new();
    let mut plain_names = std::collections::HashSet::new();
    let mut fleets = Vec::new();
    for (i, rd) in raw.database.iter().enumerate() {
        let key = KeyPath::root().key("database").index(i);
        if is_glob(&rd.path) {
            // A fleet: the stanza is checked once with a sample stem, members come from the
            // file system (now, and again on every tick and reload).
            if !rd.name.contains("{stem}") {
                c.fail(
                    &key.key("name"),
                    "a path with a wildcard makes one database per file: the name must contain \
                     {stem}, e.g. \"tenant-{stem}\"",
                    Some(rd.name.clone()),
                );
            }
            if let Some(dir) = rd.backup.as_ref().and_then(|b| b.dir.as_ref()) {
                if !dir.contains("{stem}") && !dir.contains("{name}") {
                    c.fail(
                        &key.key("backup").key("dir"),
                        "every database of a fleet needs its own backup directory: put {name} \
                         or {stem} in it, e.g. \"/var/backups/tenants/{name}\"",
                        Some(dir.clone()),
                    );
                }
            }
            let sample = member_name(&rd.name, "sample");
            if has_control_chars(&rd.name) {
                c.fail(
                    &key.key("name"),
                    super::CONTROL_CHARS,
                    Some(rd.name.clone()),
                );
            } else if !is_db_name(&sample) {
                c.fail(
                    &key.key("name"),
                    "expected a name template of lower-case letters, digits, '_', '-' and \
                     {stem}, not starting with '-'",
                    Some(rd.name.clone()),
                );
            }
            let template = substitute(
                rd,
                "sample",
                &sample,
                &rd.path.replace(['*', '?', '[', ']'], "x"),
            );
            let mut db = database(&mut c, &key, &template, &daemon);
            db.fleet = Some(rd.name.clone());
            if rd.keep_history.is_none() {
                db.keep_history = daemon.keep_history.min(FLEET_KEEP_HISTORY);
            }
            fleets.push(Fleet {
                index: i,
                name: rd.name.clone(),
                handle: fleet_handle(&rd.name, &rd.path, i),
                raw: rd.clone(),
                template: Arc::new(db),
                rejected: Vec::new(),
            });
            continue;
        }
        if !is_db_name(&rd.name) {
            c.fail(&key.key("name"), NAME_RULE, Some(rd.name.clone()));
        } else if !plain_names.insert(rd.name.as_str()) {
            c.fail(
                &key.key("name"),
                "duplicate database name",
                Some(rd.name.clone()),
            );
        }
        databases.push(Arc::new(database(&mut c, &key, rd, &daemon)));
    }
    // A fleet's handle names the whole fleet in `run`, `status` and timer units: one made from
    // the name template must be free; one made from the directory (a bare `{stem}` template)
    // falls back to `fleet<N>` when taken.
    for n in 0..fleets.len() {
        let taken = |h: &str, fleets: &[Fleet]| {
            databases.iter().any(|d| d.name == h) || fleets[..n].iter().any(|o| o.handle == h)
        };
        let key = KeyPath::root()
            .key("database")
            .index(fleets[n].index)
            .key("name");
        let template = fleets[n].name.clone();
        if fleets[..n].iter().any(|o| o.name == template) {
            c.fail(
                &key,
                "another fleet has the same name template; give each its own (e.g. \"a-{stem}\" \
                 and \"b-{stem}\")",
                Some(template),
            );
            continue;
        }
        let handle = fleets[n].handle.clone();
        if !taken(&handle, &fleets) {
            continue;
        }
        if template_handle(&template).is_some() {
            c.fail(
                &key,
                format!(
                    "this fleet is called {handle:?} in `run`, `status` and timer units (its name \
                     without {{stem}}), and that name is taken by another database or fleet; \
                     rename one of them"
                ),
                Some(template),
            );
            continue;
        }
        let fallback = format!("fleet{}", fleets[n].index);
        if taken(&fallback, &fleets) {
            c.fail(
                &key,
                format!(
                    "this fleet needs a name for `run`, `status` and timer units and {fallback} \
                     is taken: put a prefix in its name, e.g. \"t-{{stem}}\""
                ),
                Some(template),
            );
        } else {
            fleets[n].handle = fallback;
        }
    }
    let names: Vec<String> = raw.database.iter().map(|d| d.name.clone()).collect();
    same_file_twice(&mut c, &databases, &names);
    backup_series_collide(&mut c, &raw, &databases, &fleets, &names);
    backups_in_files_rule_dirs(&mut c, &raw, &databases, &names);
    if c.problems.is_empty() {
        let mut by_name: std::collections::HashMap<String, usize> = databases
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.clone(), i))
            .collect();
        // Members: a name a configured database or a fleet has is refused, and so is a name
        // two files make (in one fleet or two): for both files.
        let plain: std::collections::HashSet<String> =
            databases.iter().map(|d| d.name.clone()).collect();
        for n in 0..fleets.len() {
            let taken =
                |name: &str| plain.contains(name) || fleets.iter().any(|f| f.handle == name);
            let scan = fleet::scan(&fleets, n, &daemon, &taken);
            for m in scan.members {
                by_name.insert(m.name.clone(), databases.len());
                databases.push(m);
            }
            fleets[n].rejected = scan.rejected;
        }
        Ok(Config {
            file,
            daemon,
            databases,
            fleets,
            by_name,
        })
    } else {
        Err(c.problems)
    }
}

/// Two `[[database]]` stanzas on one file would run their jobs on it at once (locks are per
/// stanza) and back it up twice: the second is refused, naming the first.
fn same_file_twice(c: &mut Checker, databases: &[Arc<Database>], names: &[String]) {
    let mut first_of: std::collections::HashMap<&std::path::Path, usize> =
        std::collections::HashMap::with_capacity(databases.len());
    for (i, db) in databases.iter().enumerate() {
        if !db.path.is_absolute() {
            continue;
        }
        if let Some(&j) = first_of.get(db.path.as_path()) {
            let first = KeyPath::root().key("database").index(j).key("path");
            c.fail(
                &KeyPath::root().key("database").index(i).key("path"),
                format!(
                    "the same file as {}; one database file takes one [[database]] stanza \
                     (two would run their jobs on it at once)",
                    first.describe(names)
                ),
                Some(db.path.display().to_string()),
            );
        } else {
            first_of.insert(&db.path, i);
        }
    }
}

/// Two databases whose backups share a directory and a series (`db` for two apps' `db.sqlite3`,
/// or an attachment's alias that is another database's stem) would each take the other's
/// backups for their own: refused, naming both. Fleets count too (`{name}` read as the name
/// template): two fleets with the same backup `dir` template, or a template that expands to
/// a database's backup directory with a stem whose series that database has.
fn backup_series_collide(
    c: &mut Checker,
    raw: &RawConfig,
    databases: &[Arc<Database>],
    fleets: &[Fleet],
    names: &[String],
) {
    use crate::jobs::backup::{attached_series, sources, stem_series};
    let series =
        |db: &Database| -> Vec<String> { sources(db).into_iter().map(|s| s.series).collect() };
    // The same directory however it is written: resolved when it exists.
    let real = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let plain: Vec<usize> = (0..raw.database.len())
        .filter(|&i| !is_glob(&raw.database[i].path))
        .collect();
    if plain.len() != databases.len() {
        return;
    }
    let dir_key = |i: usize| {
        let k = KeyPath::root().key("database").index(i).key("backup");
        match raw.database[i].backup.as_ref().and_then(|b| b.dir.as_ref()) {
            Some(_) => k.key("dir"),
            None => k,
        }
    };
    let clash = |c: &mut Checker, at: usize, other: usize, dir: &std::path::Path, series: &str| {
        let other = KeyPath::root().key("database").index(other);
        c.fail(
            &dir_key(at),
            format!(
                "backs up into the same directory as {}, and both would name backups \
                 \"{series}-<time>.db\": each would list, restore and expire the other's \
                 backups as its own; give each database its own backup dir",
                other.describe(names)
            ),
            Some(dir.display().to_string()),
        );
    };
    let mut seen: Vec<(usize, PathBuf, Vec<String>)> = Vec::new();
    for (k, db) in databases.iter().enumerate() {
        let Some(b) = &db.backup else { continue };
        if !b.dir.is_absolute() {
            continue;
        }
        let dir = real(&b.dir);
        let mine = series(db);
        if let Some((j, s)) = seen.iter().find_map(|(j, d, theirs)| {
            (d == &dir).then(|| {
                mine.iter()
                    .find(|s| theirs.contains(s))
                    .map(|s| (*j, s.clone()))
            })?
        }) {
            clash(c, plain[k], j, &b.dir, &s);
        }
        seen.push((plain[k], dir, mine));
    }
    // Fleets' directory templates, `{name}` read as the name template (`{stem}` in it).
    let stem_dirs: Vec<(&Fleet, String)> = fleets
        .iter()
        .filter_map(|f| {
            let d = f
                .raw
                .backup
                .as_ref()?
                .dir
                .as_ref()?
                .replace("{name}", &f.name);
            d.contains("{stem}").then_some((f, d))
        })
        .collect();
    for (n, (f, d)) in stem_dirs.iter().enumerate() {
        if let Some((g, _)) = stem_dirs[..n]
            .iter()
            .find(|(_, e)| std::path::Path::new(e) == std::path::Path::new(d))
        {
            let other = KeyPath::root().key("database").index(g.index);
            c.fail(
                &KeyPath::root()
                    .key("database")
                    .index(f.index)
                    .key("backup")
                    .key("dir"),
                format!(
                    "the same backup directory template as {}: two files with one stem, one in \
                     each fleet, would share a directory and a series and take each other's \
                     backups; give each fleet its own directory",
                    other.describe(names)
                ),
                f.raw.backup.as_ref().and_then(|b| b.dir.clone()),
            );
        }
        // A plain database's directory that this template makes for some stem.
        for (k, db) in databases.iter().enumerate() {
            let Some(b) = &db.backup else { continue };
            let Some(stem) = stem_in(d, &b.dir) else {
                continue;
            };
            let Some(main) = stem_series(std::path::Path::new(&format!("{stem}.db"))) else {
                continue;
            };
            let mut theirs: Vec<String> = f
                .template
                .attach
                .iter()
                .map(|a| attached_series(&main, &a.alias))
                .collect();
            theirs.push(main);
            if let Some(s) = series(db).into_iter().find(|s| theirs.contains(s)) {
                clash(c, plain[k], f.index, &b.dir, &s);
            }
        }
    }
}

/// The stem for which the directory template `template` (with `{stem}`) is `dir`, if any.
fn stem_in(template: &str, dir: &std::path::Path) -> Option<String> {
    let t: Vec<&str> = template.trim_end_matches('/').split('/').collect();
    let d: Vec<&str> = dir.to_str()?.trim_end_matches('/').split('/').collect();
    if t.len() != d.len() {
        return None;
    }
    let mut stem: Option<&str> = None;
    for (t, d) in t.iter().zip(&d) {
        let Some((pre, post)) = t.split_once("{stem}") else {
            if t != d {
                return None;
            }
            continue;
        };
        if post.contains("{stem}") {
            return None;
        }
        let s = d.strip_prefix(pre)?.strip_suffix(post)?;
        if s.is_empty() || stem.is_some_and(|x| x != s) {
            return None;
        }
        stem = Some(s);
    }
    stem.map(str::to_string)
}

/// A files rule deletes the entries of its directory that no row references. If that
/// directory holds a backup directory, the rule must not be able to take backups for orphans:
/// refused when the backup directory is the rule's directory and the rule's pattern matches
/// backup file names, or is a sub-directory of it that a `entries = "dirs"` rule would take as
/// an id. (Files rules never descend, so backups deeper down, or in a sub-directory of a rule
/// on files, are safe.)
fn backups_in_files_rule_dirs(
    c: &mut Checker,
    raw: &RawConfig,
    databases: &[Arc<Database>],
    names: &[String],
) {
    let stamp = chrono::DateTime::from_timestamp(1_735_786_800, 0).unwrap_or_default();
    let rules = FilesRuleDirs::new(databases);
    for (i, db) in databases.iter().enumerate() {
        let Some(backup) = &db.backup else { continue };
        let covering = rules.covering(&backup.dir);
        if covering.is_empty() || !backup.dir.is_absolute() {
            continue;
        }
        // The names a backup of this database leaves in its directory.
        let mut samples = vec![crate::archive::MANIFEST.to_string()];
        for source in crate::jobs::backup::sources(db) {
            for (compressed, failed) in [(false, false), (true, false), (false, true)] {
                samples.push(
                    crate::archive::BackupName {
                        series: source.series.clone(),
                        time: stamp,
                        compressed,
                        failed,
                    }
                    .file_name(),
                );
            }
        }
        let bkey = KeyPath::root().key("database").index(i).key("backup");
        let explicit = raw.database[i]
            .backup
            .as_ref()
            .is_some_and(|b| b.dir.is_some());
        let (key, how) = if explicit {
            (bkey.key("dir"), String::new())
        } else {
            (
                bkey.clone(),
                " (the default, {state_dir}/backups/{name})".to_string(),
            )
        };
        for (j, n) in covering {
            let Some(f) = databases[j].prune.as_ref().and_then(|p| p.files.get(n)) else {
                continue;
            };
            let Ok(rel) = backup.dir.strip_prefix(&f.dir) else {
                continue;
            };
            let fkey = KeyPath::root()
                .key("database")
                .index(j)
                .key("prune")
                .key("files")
                .index(n)
                .key("dir");
            let takes = |name: &str| match &f.pattern {
                Some(re) => re.captures(name).and_then(|m| m.name("id")).is_some(),
                None => true,
            };
            let first = rel.components().next().and_then(|p| p.as_os_str().to_str());
            let why = match (first, f.entries) {
                (None, Entries::Files) => samples.iter().find(|s| takes(s)).map(|s| {
                    format!(
                        "its pattern matches backup file names like {s:?}, so it would \
                         delete backups as unreferenced"
                    )
                }),
                (Some(sub), Entries::Dirs)
                    if sub != crate::jobs::prune::QUARANTINE_DIR && takes(sub) =>
                {
                    Some(format!(
                        "it takes each sub-directory as an id (entries = \"dirs\"), so it \
                         would delete {sub:?}, which holds the backups, as unreferenced"
                    ))
                }
                _ => None,
            };
            if let Some(why) = why {
                c.fail(
                    &key,
                    format!(
                        "backups{how} would go inside the directory of {} ({:?}), and {why}; \
                         put backups in a directory no files rule scans",
                        fkey.describe(names),
                        f.dir.display().to_string()
                    ),
                    Some(backup.dir.display().to_string()),
                );
            }
        }
    }
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

/// Every files rule by its directory, so the rules a backup directory could fall under are
/// found by walking that directory's ancestors (a few lookups) instead of comparing it with
/// every rule of every database: loading 5,000 databases with files rules was quadratic.
struct FilesRuleDirs<'a> {
    by_dir: std::collections::HashMap<&'a std::path::Path, Vec<(usize, usize)>>,
}

impl<'a> FilesRuleDirs<'a> {
    fn new(databases: &'a [Arc<Database>]) -> Self {
        let mut by_dir: std::collections::HashMap<&std::path::Path, Vec<(usize, usize)>> =
            std::collections::HashMap::new();
        for (j, db) in databases.iter().enumerate() {
            let Some(prune) = &db.prune else { continue };
            for (n, f) in prune.files.iter().enumerate() {
                by_dir.entry(f.dir.as_path()).or_default().push((j, n));
            }
        }
        FilesRuleDirs { by_dir }
    }

    /// `(database index, files rule index)` of every rule whose directory is `dir` or one of
    /// its ancestors, in configuration order.
    fn covering(&self, dir: &std::path::Path) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = dir
            .ancestors()
            .filter_map(|a| self.by_dir.get(a))
            .flatten()
            .copied()
            .collect();
        out.sort_unstable();
        out
    }
}

pub(super) fn database(
    c: &mut Checker,
    key: &KeyPath,
    rd: &RawDatabase,
    daemon: &Daemon,
) -> Database {
    let path = c.abs_path(&key.key("path"), &rd.path);
    let mut attach = Vec::new();
    for (i, (alias, p)) in rd.attach.iter().enumerate() {
        let k = key.key("attach").key(alias);
        // SQLite's schema names ignore ASCII case: `Main` is `main`, `Files` is `files`.
        if !is_identifier(alias)
            || alias.eq_ignore_ascii_case("main")
            || alias.eq_ignore_ascii_case("temp")
        {
            c.fail(
                &k,
                "an attach alias must be an SQL identifier other than main/temp",
                Some(alias.clone()),
            );
        } else if let Some(other) = rd
            .attach
            .keys()
            .take(i)
            .find(|o| o.eq_ignore_ascii_case(alias))
        {
            c.fail(
                &k,
                format!("attach aliases differ only in case from {other:?}; SQLite sees one name"),
                Some(alias.clone()),
            );
        }
        attach.push(Attachment {
            alias: alias.clone(),
            path: c.abs_path(&k, p),
        });
    }
    let wait_timeout = c.opt_duration(&key.key("wait_timeout"), rd.wait_timeout.as_ref());
    if rd.wait_timeout.is_some() && rd.on_busy.as_deref() != Some("wait") {
        c.fail(
            &key.key("wait_timeout"),
            "`wait_timeout` applies only with on_busy = \"wait\" (the default, \"skip\", never waits)",
            rd.wait_timeout.clone(),
        );
    }
    let on_busy = c.choice(
        &key.key("on_busy"),
        rd.on_busy.as_ref(),
        &[("skip", OnBusy::Skip), ("wait", OnBusy::Wait(wait_timeout))],
        OnBusy::Skip,
    );
    let journal_mode = c.choice(
        &key.key("journal_mode"),
        rd.journal_mode.as_ref(),
        &[("wal", JournalMode::Wal), ("keep", JournalMode::Keep)],
        JournalMode::Wal,
    );
    let aliases: Vec<&str> = rd.attach.keys().map(String::as_str).collect();
    let keep_history = c.duration(
        &key.key("keep_history"),
        rd.keep_history.as_ref(),
        daemon.keep_history,
    );
    Database {
        name: rd.name.clone(),
        path,
        attach,
        on_busy,
        journal_mode,
        prune: rd
            .prune
            .as_ref()
            .map(|p| prune(c, &key.key("prune"), p, &aliases)),
        vacuum: rd.vacuum.as_ref().map(|v| vacuum(c, &key.key("vacuum"), v)),
        backup: rd
            .backup
            .as_ref()
            .map(|b| backup(c, &key.key("backup"), b, &rd.name, daemon)),
        fleet: None,
        keep_history,
        scanned: None,
    }
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
            c.fail(&key.key(name), super::CONTROL_CHARS, Some(v.clone()));
            found = true;
        }
    }
    found
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

fn prune(c: &mut Checker, key: &KeyPath, p: &RawPrune, aliases: &[&str]) -> Prune {
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
        let k = key.key("rule").index(i);
        if rule_names_with_control_chars(c, &k, r) {
            continue;
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
                    c.fail(&k, "an age rule (older_than) needs `column`", None);
                    continue;
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
                        continue;
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
                    &k,
                    "a rule is one of: age (older_than + column [+ where]), orphan (key + \
                     parent) or where (where alone)",
                    None,
                );
                continue;
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
        rules.push(rule);
    }
    let mut files = Vec::new();
    for (i, f) in p.files.iter().enumerate() {
        let k = key.key("files").index(i);
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
                    &k,
                    "a files rule needs `pattern` (with a group `id`) or entries = \"dirs\"",
                    None,
                );
                None
            }
        };
        files.push(FilesRule {
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
        });
    }
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
        pause: c.duration(
            &key.key("pause"),
            p.pause.as_ref(),
            Duration::from_millis(50),
        ),
        max_fraction,
        max_rows,
        dry_run: p.dry_run.unwrap_or(false),
        rules,
        files,
    }
}

fn vacuum(c: &mut Checker, key: &KeyPath, v: &RawVacuum) -> Vacuum {
    let min_free = match &v.min_free {
        None => Threshold::Fraction(0.2),
        Some(text) => parse_threshold(text).unwrap_or_else(|reason| {
            c.fail(&key.key("min_free"), reason, Some(text.clone()));
            Threshold::Fraction(0.2)
        }),
    };
    Vacuum {
        timing: c.timing(
            key,
            v.schedule.as_ref(),
            v.jitter.as_ref(),
            v.ping.as_ref(),
            v.ping_timeout.as_ref(),
        ),
        mode: c.choice(
            &key.key("mode"),
            v.mode.as_ref(),
            &[
                ("auto", VacuumMode::Auto),
                ("full", VacuumMode::Full),
                ("incremental", VacuumMode::Incremental),
                ("never", VacuumMode::Never),
            ],
            VacuumMode::Auto,
        ),
        min_free,
        convert_auto_vacuum: v.convert_auto_vacuum.unwrap_or(false),
        temp_dir: v
            .temp_dir
            .as_ref()
            .map(|p| c.abs_path(&key.key("temp_dir"), p)),
        max_duration: c.opt_duration(&key.key("max_duration"), v.max_duration.as_ref()),
        analyze: v.analyze.unwrap_or(false),
    }
}

fn backup(c: &mut Checker, key: &KeyPath, b: &RawBackup, name: &str, daemon: &Daemon) -> Backup {
    if b.compress_level.is_some() && b.compress.as_deref() != Some("zstd") {
        c.fail(
            &key.key("compress_level"),
            "`compress_level` applies only with compress = \"zstd\" (the default is \"none\")",
            b.compress_level.map(|l| l.to_string()),
        );
    }
    let level = match b.compress_level {
        None => 3,
        Some(l) if (1..=22).contains(&l) => l as i32,
        Some(l) => {
            c.fail(
                &key.key("compress_level"),
                "expected a zstd level from 1 to 22",
                Some(l.to_string()),
            );
            3
        }
    };
    let keep = match &b.keep {
        None => Keep {
            daily: 7,
            ..Keep::default()
        },
        Some(k) => {
            let kk = key.key("keep");
            Keep {
                last: c.count(&kk.key("last"), k.last, 0),
                hourly: c.count(&kk.key("hourly"), k.hourly, 0),
                daily: c.count(&kk.key("daily"), k.daily, 0),
                weekly: c.count(&kk.key("weekly"), k.weekly, 0),
                monthly: c.count(&kk.key("monthly"), k.monthly, 0),
                yearly: c.count(&kk.key("yearly"), k.yearly, 0),
            }
        }
    };
    Backup {
        timing: c.timing(
            key,
            b.schedule.as_ref(),
            b.jitter.as_ref(),
            b.ping.as_ref(),
            b.ping_timeout.as_ref(),
        ),
        dir: match &b.dir {
            Some(p) => c.abs_path(&key.key("dir"), p),
            None => daemon.state_dir.join("backups").join(name),
        },
        method: c.choice(
            &key.key("method"),
            b.method.as_ref(),
            &[
                ("backup", BackupMethod::Online),
                ("vacuum_into", BackupMethod::VacuumInto),
            ],
            BackupMethod::Online,
        ),
        compression: c.choice(
            &key.key("compress"),
            b.compress.as_ref(),
            &[
                ("none", Compression::None),
                ("zstd", Compression::Zstd { level }),
            ],
            Compression::None,
        ),
        verify: c.choice(
            &key.key("verify"),
            b.verify.as_ref(),
            &[
                ("none", Verify::None),
                ("quick", Verify::Quick),
                ("full", Verify::Full),
            ],
            Verify::Quick,
        ),
        keep,
        max_age: c.opt_duration(&key.key("max_age"), b.max_age.as_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(
            parse_duration("90d").unwrap(),
            Duration::from_secs(90 * 86400)
        );
        assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("ninety").is_err());
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12 parsecs").is_err());
        assert_eq!(parse_threshold("20%").unwrap(), Threshold::Fraction(0.2));
        assert_eq!(parse_threshold("1KiB").unwrap(), Threshold::Bytes(1024));
        assert!(parse_threshold("120%").is_err());
    }

    #[test]
    fn names() {
        assert!(is_db_name("chat-2_a"));
        assert!(!is_db_name("Chat"));
        assert!(!is_db_name("a b"));
        assert!(!is_db_name(""));
        assert!(!is_db_name("-"));
        assert!(!is_db_name("-rf"));
        assert!(is_db_name("_a-"));
        assert!(is_identifier("_files1"));
        assert!(!is_identifier("1files"));
    }

    /// The backup-inside-a-files-rule check finds a backup directory's rules by its ancestors:
    /// 5,000 databases whose backups lie outside every rule's directory give no candidate at
    /// all (the check used to compare every backup directory with every rule: 25 million
    /// pairs), and a rule over a shared parent is found for each database exactly once.
    #[test]
    fn files_rules_are_found_by_a_backup_dirs_ancestors() {
        let mut text = String::new();
        for i in 0..5000 {
            text.push_str(&format!(
                "[[database]]\nname = \"app{i}\"\npath = \"/srv/app{i}/app.db\"\n\
                 [database.prune]\n[[database.prune.files]]\ndir = \"/srv/app{i}/uploads\"\n\
                 pattern = '^(?P<id>[0-9a-f-]{{36}})_'\nreferenced_by = \"SELECT id FROM file\"\n\
                 [database.backup]\ndir = \"/srv/backups/app{i}\"\n"
            ));
        }
        let defaults = Defaults {
            config_file: "/etc/litekeeper/litekeeper.toml".into(),
            state_dir: "/var/lib/litekeeper".into(),
            lock_dir: "/run/litekeeper".into(),
        };
        let config =
            crate::config::load_str(&text, std::path::Path::new("lk.toml"), &defaults, &[])
                .unwrap();
        assert_eq!(config.databases.len(), 5000);
        let rules = FilesRuleDirs::new(&config.databases);
        let backup_dir = |d: &Arc<Database>| d.backup.as_ref().unwrap().dir.clone();
        let candidates: usize = config
            .databases
            .iter()
            .map(|d| rules.covering(&backup_dir(d)).len())
            .sum();
        assert_eq!(candidates, 0);
        // A rule on /srv/backups covers every backup directory, and only that rule.
        let text = text.replacen("/srv/app0/uploads", "/srv/backups", 1);
        let with_parent =
            crate::config::load_str(&text, std::path::Path::new("lk.toml"), &defaults, &[])
                .unwrap()
                .databases;
        let rules = FilesRuleDirs::new(&with_parent);
        for d in &with_parent {
            assert_eq!(rules.covering(&backup_dir(d)), vec![(0, 0)]);
        }
        assert_eq!(
            rules.covering(std::path::Path::new("/srv/app7/uploads/x")),
            vec![(7, 0)]
        );
    }

    #[test]
    fn fleet_handles() {
        assert_eq!(fleet_handle("tenant-{stem}", "/srv/t/*.db", 0), "tenant");
        assert_eq!(fleet_handle("{stem}_Data", "/srv/t/*.db", 0), "data");
        assert_eq!(
            fleet_handle("{stem}", "/srv/app/tenants/*.db", 0),
            "tenants"
        );
        assert_eq!(fleet_handle("{stem}", "/srv/app/tenant-*.db", 0), "app");
        assert_eq!(fleet_handle("{stem}", "/*/app.db", 3), "fleet3");
    }

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
