//! Loading the configuration: read the file, parse it with `toml` (so errors carry line and
//! column), layer `LITEKEEPER__…` environment overrides with the `config` crate, then
//! `validate` into the immutable domain types of `model`.
//!
//! Every problem becomes one line: `FILE:LINE:COL: KEY: reason (got VALUE)`.

pub mod fleet;
pub mod model;
pub mod raw;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use model::*;

use crate::paths::Defaults;
use raw::RawConfig;
use validate::Problem;

/// Prefix of environment variables that override configuration keys
/// (`LITEKEEPER__DAEMON__MAX_CONCURRENT_JOBS=4`).
pub const ENV_PREFIX: &str = "LITEKEEPER";

/// The configuration could not be used. Display is one line per problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // `cause` is deliberately not a `#[source]`: the message already shows it, and `Failure`
    // appends every source of the chain, which printed it twice.
    #[error(
        "{}: cannot read the configuration file: {cause} (create it from config/litekeeper.toml, or pass -c FILE)",
        path.display()
    )]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// A key in the configuration, like `database[0].prune.rule[1].older_than`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(Vec<Seg>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }
    pub fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_string()));
        KeyPath(v)
    }
    pub fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        KeyPath(v)
    }

    /// Human form; `database[0]` becomes `database "chat"` when the name is known.
    fn describe(&self, db_names: &[String]) -> String {
        let mut out = String::new();
        let mut segs = self.0.as_slice();
        if let [Seg::Key(k), Seg::Index(i), rest @ ..] = segs {
            if k == "database" {
                if let Some(name) = db_names.get(*i).filter(|n| !n.is_empty()) {
                    out = format!("database {name:?}");
                    if !rest.is_empty() {
                        out.push(' ');
                    }
                    segs = rest;
                }
            }
        }
        for (n, s) in segs.iter().enumerate() {
            match s {
                Seg::Key(k) if n == 0 => out.push_str(k),
                Seg::Key(k) => {
                    out.push('.');
                    out.push_str(k)
                }
                Seg::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(&[]))
    }
}

/// Load and validate the configuration file at `path`, with environment overrides.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .collect();
    load_str(&text, path, &Defaults::for_current_user(), &env)
}

/// Load from text (testable: file name, defaults and environment are parameters).
pub fn load_str(
    text: &str,
    file: &Path,
    defaults: &Defaults,
    env: &[(String, String)],
) -> Result<Config, ConfigError> {
    let fname = file.display().to_string();
    let raw = parse_raw(text, &fname)?;
    let raw = if env.is_empty() {
        raw
    } else {
        layer_env(text, &fname, env)?
    };
    let names: Vec<String> = raw.database.iter().map(|d| d.name.clone()).collect();
    validate::validate(raw, file.to_path_buf(), defaults).map_err(|problems| {
        let spans = toml::de::DeTable::parse(text).ok();
        ConfigError::Invalid(
            problems
                .iter()
                .map(|p| format_problem(p, &fname, text, spans.as_ref(), &names, env))
                .collect(),
        )
    })
}

/// Strict parse of the file alone: syntax errors, wrong types and unknown keys, with position.
fn parse_raw(text: &str, fname: &str) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| {
        ConfigError::Invalid(vec![format!(
            "{fname}{}: invalid TOML: {}",
            position(text, e.span()),
            one_line(e.message())
        )])
    })?;
    serde_path_to_error::deserialize::<_, RawConfig>(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let key = if path == "." || path.is_empty() {
            String::new()
        } else {
            format!(" {path}:")
        };
        ConfigError::Invalid(vec![format!(
            "{fname}{}:{key} {}",
            position(text, inner.span()),
            one_line(inner.message())
        )])
    })
}

/// Re-read file + `LITEKEEPER__…` variables through the `config` crate.
fn layer_env(text: &str, fname: &str, env: &[(String, String)]) -> Result<RawConfig, ConfigError> {
    // The environment reaches [daemon] and top-level keys; [[database]] entries are a list,
    // which environment variables cannot address reliably: say so instead of a serde error.
    if let Some((k, _)) = env.iter().find(|(k, _)| {
        k.to_ascii_uppercase()
            .starts_with(&format!("{ENV_PREFIX}__DATABASE"))
    }) {
        return Err(ConfigError::Invalid(vec![format!(
            "{k}: [[database]] entries cannot be set from the environment (only [daemon] keys, \
             e.g. LITEKEEPER__DAEMON__BUSY_TIMEOUT); edit {fname} instead"
        )]));
    }
    let source = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .source(Some(env.iter().cloned().collect()));
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(source)
        .build()
        .and_then(|c| c.try_deserialize::<RawConfig>())
        .map_err(|e| {
            let vars: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
            ConfigError::Invalid(vec![format!(
                "{fname}: with environment overrides {}: {} (check the variable names: \
                 LITEKEEPER__SECTION__KEY)",
                vars.join(", "),
                one_line(&e.to_string())
            )])
        })
}

fn format_problem(
    p: &Problem,
    fname: &str,
    text: &str,
    spans: Option<&toml::Spanned<toml::de::DeTable>>,
    names: &[String],
    env: &[(String, String)],
) -> String {
    let key = p.key.describe(names);
    let got = p
        .got
        .as_ref()
        .map(|g| format!(" (got {g:?})"))
        .unwrap_or_default();
    // A value set from the environment is named by its variable, not by a file position.
    let var = env_var_for(&p.key);
    if env.iter().any(|(k, _)| k.eq_ignore_ascii_case(&var)) {
        return format!("{var}: {key}: {}{got}", p.reason);
    }
    let pos = spans
        .and_then(|s| span_of(s.get_ref(), &p.key))
        .map(|span| position(text, Some(span)))
        .unwrap_or_default();
    format!("{fname}{pos}: {key}: {}{got}", p.reason)
}

/// `file:line:col: key: reason` for a problem found after loading (e.g. a rule that does not
/// fit the live schema): the file is read again for the position.
pub fn locate(file: &Path, key: &KeyPath, names: &[String], reason: &str) -> String {
    let fname = file.display().to_string();
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let spans = toml::de::DeTable::parse(&text).ok();
    let pos = spans
        .as_ref()
        .and_then(|s| span_of(s.get_ref(), key))
        .map(|span| position(&text, Some(span)))
        .unwrap_or_default();
    format!("{fname}{pos}: {}: {reason}", key.describe(names))
}

fn env_var_for(key: &KeyPath) -> String {
    let parts: Vec<String> = key
        .0
        .iter()
        .map(|s| match s {
            Seg::Key(k) => k.to_ascii_uppercase(),
            Seg::Index(i) => i.to_string(),
        })
        .collect();
    format!("{ENV_PREFIX}__{}", parts.join("__"))
}

/// The byte span of the value at `key` (or of the nearest enclosing value that exists).
fn span_of(root: &toml::de::DeTable, key: &KeyPath) -> Option<std::ops::Range<usize>> {
    use toml::de::DeValue;
    let mut best = None;
    let mut table = Some(root);
    let mut value: Option<&toml::Spanned<DeValue>> = None;
    for seg in &key.0 {
        let next = match (seg, table, value.map(|v| v.get_ref())) {
            (Seg::Key(k), Some(t), _) => t
                .iter()
                .find(|(name, _)| name.get_ref() == k)
                .map(|(_, v)| v),
            (Seg::Index(i), _, Some(DeValue::Array(a))) => a.get(*i),
            _ => None,
        };
        let Some(v) = next else { break };
        best = Some(v.span());
        value = Some(v);
        table = match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => None,
        };
    }
    best
}

/// ":LINE:COL" for a byte span (1-based), or "" without one.
fn position(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!(":{line}:{col}")
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            config_file: "/etc/litekeeper/litekeeper.toml".into(),
            state_dir: "/var/lib/litekeeper".into(),
            lock_dir: "/run/litekeeper".into(),
        }
    }

    fn err(text: &str) -> String {
        load_str(text, Path::new("lk.toml"), &defaults(), &[])
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn validation_error_names_line_key_and_value() {
        let text = "[[database]]\nname = \"chat\"\npath = \"/x/chat.db\"\n\n[database.prune]\nschedule = \"0 4 * * *\"\n\n[[database.prune.rule]]\ntable = \"chat\"\ncolumn = \"updated_at\"\nolder_than = \"ninety\"\n";
        assert_eq!(
            err(text),
            "lk.toml:11:14: database \"chat\" prune.rule[0].older_than: expected a duration like \"90d\", \"30m\" or \"100ms\" (got \"ninety\")"
        );
    }

    #[test]
    fn unknown_key_and_wrong_type_name_line() {
        let e = err("[daemon]\nmax_concurent_jobs = 2\n");
        assert!(e.starts_with("lk.toml:2:1: daemon"), "{e}");
        assert!(e.contains("unknown field `max_concurent_jobs`"), "{e}");
        let e = err("[daemon]\nmax_concurrent_jobs = \"two\"\n");
        assert!(
            e.starts_with("lk.toml:2:23: daemon.max_concurrent_jobs:"),
            "{e}"
        );
    }

    #[test]
    fn syntax_error_has_position() {
        let e = err("[daemon\n");
        assert!(e.starts_with("lk.toml:1:"), "{e}");
        assert!(e.contains("invalid TOML"), "{e}");
    }

    #[test]
    fn env_overrides_a_key() {
        let env = vec![(
            "LITEKEEPER__DAEMON__MAX_CONCURRENT_JOBS".to_string(),
            "7".to_string(),
        )];
        let c = load_str(
            "[daemon]\nmax_concurrent_jobs = 2\n",
            Path::new("lk.toml"),
            &defaults(),
            &env,
        )
        .unwrap();
        assert_eq!(c.daemon.max_concurrent_jobs, 7);
        let env = vec![(
            "LITEKEEPER__DAEMON__TIMEZONE".to_string(),
            "Mars/Base".to_string(),
        )];
        let e = load_str("", Path::new("lk.toml"), &defaults(), &env)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "LITEKEEPER__DAEMON__TIMEZONE: daemon.timezone: expected \"local\", \"UTC\" or an IANA time zone name like \"Europe/Berlin\" (got \"Mars/Base\")"
        );
    }

    #[test]
    fn defaults_apply() {
        let c = load_str(
            "[[database]]\nname = \"a\"\npath = \"/a.db\"\n[database.backup]\n",
            Path::new("lk.toml"),
            &defaults(),
            &[],
        )
        .unwrap();
        assert_eq!(c.daemon.max_concurrent_jobs, 2);
        let b = c.databases[0].backup.as_ref().unwrap();
        assert_eq!(b.dir, PathBuf::from("/var/lib/litekeeper/backups/a"));
        assert_eq!(b.keep.daily, 7);
        assert_eq!(c.databases[0].on_busy, OnBusy::Skip);
    }
}
