//! Loading the configuration: read the file (a regular file of at most [`MAX_FILE_BYTES`]),
//! parse it with `toml` (so errors carry line and column), layer `LITEKEEPER__DAEMON__…`
//! environment overrides read by the file's own rules, then `validate` into the immutable
//! domain types of `model`.
//!
//! Every problem becomes one line: `FILE:LINE:COL: KEY: reason (got VALUE)`.

pub mod backup_names;
pub mod fleet;
pub mod model;
pub mod raw;
pub mod remote;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use model::*;
pub use remote::{Credentials, Remote, Target};

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
    #[error(
        "{}: the configuration must be a regular file, and this is {kind} (pass -c FILE with the path of the file itself)",
        path.display()
    )]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error(
        "{}: the configuration file is larger than {} MiB; is this the right file? (pass -c FILE)",
        path.display(),
        MAX_FILE_BYTES >> 20
    )]
    TooLarge { path: PathBuf },
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// A configuration that cannot be used ends the command with exit 78 (`EX_CONFIG`).
impl From<ConfigError> for crate::exit::Failure {
    fn from(e: ConfigError) -> Self {
        crate::exit::Failure::new(crate::domain::ExitCode::Config, e)
    }
}

/// The largest configuration file read: a real one is a few KiB even with thousands of
/// databases; anything bigger is the wrong file (`-c /var/log/syslog`).
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// The text of the configuration file, refusing what is not a regular file before reading a
/// byte: opening a FIFO without `O_NONBLOCK` waits for a writer forever, and a character
/// device (`/dev/zero`) never ends. At most [`MAX_FILE_BYTES`] are read, even from a file
/// that grows meanwhile.
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let read_err = |cause| ConfigError::Read {
        path: path.to_path_buf(),
        cause,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    let t = meta.file_type();
    let kind = if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    };
    if let Some(kind) = kind {
        return Err(ConfigError::NotRegular {
            path: path.to_path_buf(),
            kind,
        });
    }
    let too_large = || ConfigError::TooLarge {
        path: path.to_path_buf(),
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|e| {
        read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        ))
    })
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
/// The path the configuration records (`Config::file`) is absolute, whatever `-c` was given:
/// units and `Environment=LITEKEEPER_CONFIG=` are read from another working directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read_file(path)?;
    let env = env_overrides()?;
    let mut config = load_str(&text, path, &Defaults::for_current_user(), &env)?;
    if let Ok(abs) = std::path::absolute(path) {
        config.file = abs;
    }
    Ok(config)
}

/// The `LITEKEEPER__…` variables as `(VARIABLE, value as typed)`, gathered by the `config`
/// crate's environment source (prefix, `__` separator). Its parsing stays off: it reads
/// `4.5` as a number that a whole-number key then truncates, so `layer_env` reads each value
/// by the file's own rules instead. A value that is not UTF-8 is an error naming the variable.
fn env_overrides() -> Result<Vec<(String, String)>, ConfigError> {
    use config::Source;
    let found = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(false)
        .collect()
        .map_err(|e| ConfigError::Invalid(vec![one_line(&e.to_string())]))?;
    let mut vars = Vec::with_capacity(found.len());
    for (key, value) in found {
        // The source lower-cases the name and joins its parts with '.'.
        let var = format!(
            "{ENV_PREFIX}__{}",
            key.replace('.', "__").to_ascii_uppercase()
        );
        let value = value.into_string().map_err(|e| {
            ConfigError::Invalid(vec![format!("{var}: {}", one_line(&e.to_string()))])
        })?;
        vars.push((var, value));
    }
    vars.sort();
    Ok(vars)
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

/// The file with `LITEKEEPER__DAEMON__KEY=VALUE` variables layered on its `[daemon]` table.
/// Each value is read by the file's rules for its key: verbatim for a string key, as a TOML
/// value for any other (`4` is a number, `4.5`, `1e3`, `inf` and `nan` are not whole numbers,
/// `true`/`false` for a flag), and is refused, naming the variable and the value as typed,
/// when the file would refuse it. Control characters are refused in every value.
fn layer_env(text: &str, fname: &str, env: &[(String, String)]) -> Result<RawConfig, ConfigError> {
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| {
        ConfigError::Invalid(vec![format!(
            "{fname}: invalid TOML: {}",
            one_line(e.message())
        )])
    })?;
    let mut problems = Vec::new();
    for (var, value) in env {
        let parts: Vec<String> = var[ENV_PREFIX.len() + 2..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        let key = match parts.as_slice() {
            [section, key] if section == "daemon" && !key.is_empty() => key.clone(),
            // [[database]] entries are a list, which variables cannot address reliably.
            [section, ..] if section == "database" => {
                problems.push(format!(
                    "{var}: [[database]] entries cannot be set from the environment (only \
                     [daemon] keys, e.g. LITEKEEPER__DAEMON__BUSY_TIMEOUT); edit {fname} instead"
                ));
                continue;
            }
            _ => {
                problems.push(format!(
                    "{var}: not a configuration key: environment overrides name a [daemon] key \
                     as LITEKEEPER__DAEMON__KEY, e.g. LITEKEEPER__DAEMON__MAX_CONCURRENT_JOBS"
                ));
                continue;
            }
        };
        if value.chars().any(char::is_control) {
            problems.push(format!(
                "{var}: daemon.{key}: {CONTROL_CHARS} (got {value:?})"
            ));
            continue;
        }
        match env_value(&key, value) {
            Ok(v) => {
                let daemon = doc
                    .entry("daemon")
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let toml::Value::Table(t) = daemon {
                    t.insert(key, v);
                }
            }
            Err(reason) => problems.push(format!("{var}: daemon.{key}: {reason} (got {value:?})")),
        }
    }
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    toml::Value::Table(doc)
        .try_into::<RawConfig>()
        .map_err(|e| {
            let vars: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
            ConfigError::Invalid(vec![format!(
                "{fname}: with environment overrides {}: {}",
                vars.join(", "),
                one_line(e.message())
            )])
        })
}

/// What the file says about control characters in a value (also for variables).
pub(crate) const CONTROL_CHARS: &str = "must not contain control characters (newline, tab, DEL, …)";

/// `value` as the `[daemon]` key `key` would hold it in the file. The key's type is asked of
/// `RawDaemon` itself: a value that fits as a string is a string; otherwise it is read as a
/// TOML value and must fit as that, with serde's message when it does not (the file's).
fn env_value(key: &str, value: &str) -> Result<toml::Value, String> {
    let fits = |v: &toml::Value| {
        let mut t = toml::Table::new();
        t.insert(key.to_string(), v.clone());
        toml::Value::Table(t)
            .try_into::<raw::RawDaemon>()
            .map(|_| ())
            .map_err(|e| one_line(e.message()))
    };
    let string = toml::Value::String(value.to_string());
    let as_string = match fits(&string) {
        Ok(()) => return Ok(string),
        Err(e) if e.starts_with("unknown field") => return Err(e),
        Err(e) => e,
    };
    let literal = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .filter(|t| t.len() == 1)
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !matches!(v, toml::Value::Table(_) | toml::Value::Array(_)));
    match literal {
        Some(v) => fits(&v).map(|()| v),
        None => Err(as_string),
    }
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
    if let Some((var, typed)) = env.iter().find(|(k, _)| k.eq_ignore_ascii_case(&var)) {
        return format!("{var}: {key}: {} (got {typed:?})", p.reason);
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
    let text = read_file(file).unwrap_or_default();
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
