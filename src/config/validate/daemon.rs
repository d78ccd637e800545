//! The `[daemon]` section: time zone, concurrency, directories, statement and busy timeouts,
//! history kept, the metrics file, and this host's name (`host`: the owner of the remote
//! manifests it writes, `{host}` in a remote's url).

use std::path::PathBuf;
use std::time::Duration;

use super::{is_db_name, Checker, NAME_RULE};
use crate::config::raw::RawDaemon;
use crate::config::{Daemon, KeyPath};
use crate::paths::Defaults;
use crate::schedule::Zone;

/// The daemon section with its defaults (directories from `defaults`); `remotes`: whether
/// any `[[remote]]` needs this host's name.
pub(super) fn daemon(c: &mut Checker, d: &RawDaemon, defaults: &Defaults, remotes: bool) -> Daemon {
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
        host: host(c, &dk.key("host"), d.host.as_deref(), machine_host, remotes),
    }
}

/// This host's name: `host` as written (a name like a database's: it becomes part of object
/// names through `{host}`), else the machine's host name lower-cased (`machine`). A machine
/// name that could not name objects is an error only when a remote needs it.
fn host(
    c: &mut Checker,
    key: &KeyPath,
    given: Option<&str>,
    machine: impl FnOnce() -> String,
    needed: bool,
) -> String {
    if let Some(h) = given {
        if !is_db_name(h) {
            c.fail(key, NAME_RULE, Some(h.to_string()));
        }
        return h.to_string();
    }
    let h = machine().to_ascii_lowercase();
    let usable = !h.is_empty()
        && !h.starts_with(['.', '-'])
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !usable && needed {
        c.fail(
            key,
            format!("this machine's host name cannot name its off-site copies; set [daemon] host ({NAME_RULE})"),
            Some(h.clone()),
        );
    }
    h
}

/// The kernel's host name (uname's nodename).
fn machine_host() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_given_is_a_name_like_a_database_name() {
        let mut c = Checker::default();
        let k = KeyPath::root().key("daemon").key("host");
        let never = || unreachable!("the machine is not asked when host is given");
        assert_eq!(host(&mut c, &k, Some("web-1"), never, true), "web-1");
        assert!(c.problems.is_empty());
        for bad in ["Web1", "web/1", "..", "", "-web", "web 1"] {
            host(&mut c, &k, Some(bad), never, true);
        }
        assert_eq!(c.problems.len(), 6);
        assert!(c
            .problems
            .iter()
            .all(|p| p.key.to_string() == "daemon.host"));
    }

    #[test]
    fn host_defaults_to_the_machine_name_lower_cased() {
        let mut c = Checker::default();
        let k = KeyPath::root().key("daemon").key("host");
        let machine = |n: &'static str| move || n.to_string();
        assert_eq!(
            host(&mut c, &k, None, machine("Web1.example.com"), true),
            "web1.example.com"
        );
        assert!(c.problems.is_empty());
        // Unusable: an error only when a remote needs it.
        host(&mut c, &k, None, machine("a/b"), false);
        assert!(c.problems.is_empty());
        host(&mut c, &k, None, machine("a/b"), true);
        host(&mut c, &k, None, machine(""), true);
        assert_eq!(c.problems.len(), 2);
    }
}
