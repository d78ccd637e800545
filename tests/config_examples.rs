//! Every shipped configuration under config/ loads, and the commented example documents every
//! key the loader accepts.

use std::path::{Path, PathBuf};

use litekeeper::config::load_str;
use litekeeper::paths::Defaults;

fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            toml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
}

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

#[test]
fn every_shipped_config_loads() {
    let mut files = Vec::new();
    toml_files(&config_dir(), &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("config/litekeeper.toml")),
        "{files:?}"
    );
    assert!(files.len() >= 5, "{files:?}");
    let defaults = Defaults {
        config_file: "/etc/litekeeper/litekeeper.toml".into(),
        state_dir: "/var/lib/litekeeper".into(),
        lock_dir: "/run/litekeeper".into(),
    };
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        if let Err(e) = load_str(&text, &f, &defaults, &[]) {
            panic!("{} does not load:\n{e}", f.display());
        }
    }
}

#[test]
fn the_example_documents_every_key() {
    // Keep in step with src/config/raw.rs: every field of every raw type.
    const KEYS: &[&str] = &[
        "timezone",
        "max_concurrent_jobs",
        "state_dir",
        "lock_dir",
        "metrics_file",
        "host",
        "slow_statement",
        "busy_timeout",
        "catch_up",
        "keep_history",
        "name",
        "path",
        "attach",
        "on_busy",
        "wait_timeout",
        "journal_mode",
        "schedule",
        "jitter",
        "ping",
        "ping_timeout",
        "max_lock",
        "pause",
        "max_fraction",
        "max_rows",
        "dry_run",
        "table",
        "older_than",
        "column",
        "time_format",
        "where",
        "key",
        "parent",
        "dir",
        "pattern",
        "entries",
        "referenced_by",
        "min_age",
        "action",
        "quarantine_days",
        "allow_empty_reference",
        "mode",
        "min_free",
        "convert_auto_vacuum",
        "temp_dir",
        "max_duration",
        "analyze",
        "method",
        "compress",
        "compress_level",
        "verify",
        "keep",
        "max_age",
        "last",
        "hourly",
        "daily",
        "weekly",
        "monthly",
        "yearly",
        "remotes",
        "remote_keep",
        "url",
        "endpoint",
        "region",
        "path_style",
        "allow_http",
        "credentials",
        "encrypt_to",
        "retry_every",
        "timeout",
    ];
    let text = std::fs::read_to_string(config_dir().join("litekeeper.toml")).unwrap();
    let set: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split(['{', ',', '}']))
        .filter_map(|part| part.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let missing: Vec<&&str> = KEYS.iter().filter(|k| !set.contains(k)).collect();
    assert!(
        missing.is_empty(),
        "config/litekeeper.toml does not set: {missing:?}"
    );
}
