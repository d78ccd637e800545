//! The `[daemon]` section: time zone, concurrency, directories, statement and busy timeouts,
//! history kept, the metrics file.

use std::path::PathBuf;
use std::time::Duration;

use super::Checker;
use crate::config::raw::RawDaemon;
use crate::config::{Daemon, KeyPath};
use crate::paths::Defaults;
use crate::schedule::Zone;

/// The daemon section with its defaults (directories from `defaults`).
pub(super) fn daemon(c: &mut Checker, d: &RawDaemon, defaults: &Defaults) -> Daemon {
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
    Daemon {
        timezone,
        max_concurrent_jobs,
        state_dir,
        lock_dir,
        slow_statement: c.duration(
            &dk.key("slow_statement"),
            d.slow_statement.as_ref(),
            Duration::from_millis(100),
        ),
        busy_timeout: busy_timeout(c, &dk.key("busy_timeout"), d.busy_timeout.as_ref()),
        catch_up: d.catch_up.unwrap_or(true),
        keep_history: c.duration(
            &dk.key("keep_history"),
            d.keep_history.as_ref(),
            Duration::from_secs(90 * 86400),
        ),
        metrics_file: d
            .metrics_file
            .as_ref()
            .map(|p| metrics_file(c, &dk.key("metrics_file"), p)),
    }
}

/// SQLite's busy handler takes whole milliseconds in a C `int`: a longer timeout made
/// rusqlite panic in `check` and left `run` hung with the database's lock held.
const MAX_BUSY_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

fn busy_timeout(c: &mut Checker, key: &KeyPath, value: Option<&String>) -> Duration {
    let default = Duration::from_secs(5);
    let d = c.duration(key, value, default);
    if d > MAX_BUSY_TIMEOUT {
        c.fail(
            key,
            "expected at most 24d 20h 31m (SQLite's limit of 2^31-1 ms; a few seconds is usual)",
            value.cloned(),
        );
        return default;
    }
    d
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
