//! The one step from raw serde types to the domain types of `model`: defaults applied, every
//! value parsed and checked. Problems are collected with their key path so the loader can name
//! file, line, key and value for each.
//!
//! [`validate`] is the one entry point. This file holds the [`Checker`] and the value parsers
//! every section uses; one file per section (`daemon`, `database`, `prune`, `vacuum`,
//! `backup`, `drill`, and `schedule` for the keys every job section shares), `handles` for what a
//! fleet is called, and `checks` for what only shows across databases.

mod backup;
mod checks;
mod daemon;
mod database;
mod drill;
mod handles;
mod incremental;
mod prune;
mod remote;
mod schedule;
mod vacuum;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub(super) use database::database;
pub use handles::fleet_handle;

pub use super::fleet::is_glob;
use super::model::*;
use super::raw::*;
use super::KeyPath;
use crate::paths::Defaults;

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

/// Validate the raw configuration into domain types, or return every problem found. The one
/// entry point: the daemon section, each `[[database]]` stanza (a plain database or a fleet's
/// template), the fleets' handles, the checks across databases. Fleet members are not looked
/// for here: the scheduler's roster owns scanning.
pub fn validate(
    raw: RawConfig,
    file: PathBuf,
    defaults: &Defaults,
) -> Result<Config, Vec<Problem>> {
    let mut c = Checker::default();
    let daemon = daemon::daemon(&mut c, &raw.daemon, defaults, !raw.remote.is_empty());
    let remotes = remote::remotes(&mut c, &raw.remote, &daemon.host);
    remote::database_remotes(&mut c, &raw, &remotes);
    let (databases, mut fleets) = database::stanzas(&mut c, &raw, &daemon);
    handles::settle(&mut c, &databases, &mut fleets);
    checks::across_databases(&mut c, &raw, &databases, &fleets);
    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    let mut config = without_members(file, daemon, databases, fleets);
    config.remotes = remotes;
    Ok(config)
}

/// The configuration as written: plain databases and fleets, no fleet members yet (the
/// scheduler's roster finds them: `scheduler::roster::with_members`).
fn without_members(
    file: PathBuf,
    daemon: Daemon,
    databases: Vec<Arc<Database>>,
    fleets: Vec<Fleet>,
) -> Config {
    let by_name: HashMap<String, usize> = databases
        .iter()
        .enumerate()
        .map(|(i, d)| (d.name.clone(), i))
        .collect();
    Config {
        file,
        daemon,
        databases,
        fleets,
        by_name,
        remotes: Vec::new(),
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
}
