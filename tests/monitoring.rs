//! The monitoring the package ships: Prometheus alerting rules and a Grafana dashboard for the
//! textfile metrics. `promtool check rules` accepts the rules, and every metric the rules and
//! the dashboard query is one the daemon writes, and `promtool test rules` passes the unit
//! tests of the off-site alerts (`litekeeper.rules.test.yml`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::util::{both, TestEnv};

/// Metrics the rules or the dashboard query before the daemon writes them (none today).
/// When the daemon writes one, this test fails until it leaves this list.
const NOT_WRITTEN_YET: &[&str] = &[];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Metric names in a PromQL expression (function names are not `litekeeper_…`).
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let re = regex::Regex::new(r"\blitekeeper_[a-z_]+\b").unwrap();
    into.extend(re.find_iter(expr).map(|m| m.as_str().to_string()));
}

/// The expressions of the rules file (`expr:` lines).
fn rule_exprs() -> Vec<String> {
    let text =
        std::fs::read_to_string(root().join("packaging/prometheus/litekeeper.rules.yml")).unwrap();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| e.trim().to_string())
        .collect()
}

/// The dashboard's queries: every panel target and the template variables.
fn dashboard_exprs() -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("packaging/grafana/litekeeper.json")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for p in v["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for t in v["templating"]["list"].as_array().unwrap() {
        out.push(t["definition"].as_str().unwrap().to_string());
    }
    out
}

/// Every metric family the daemon writes, from a metrics file after a run of every job kind.
fn written_metrics() -> BTreeSet<String> {
    let env = TestEnv::new();
    let prom = env.path("metrics/lk.prom");
    std::fs::create_dir_all(prom.parent().unwrap()).unwrap();
    let db = env.sqlite(
        "app/chat.db",
        "CREATE TABLE msg(id INTEGER PRIMARY KEY, ts INTEGER);
         INSERT INTO msg(ts) VALUES (0), (unixepoch());",
    );
    env.config(&format!("metrics_file = \"{}\"", prom.display()))
        .database(
            "chat",
            &db,
            &format!(
                "[database.prune]\n[[database.prune.rule]]\ntable = \"msg\"\ncolumn = \"ts\"\nolder_than = \"1d\"\ntime_format = \"unix\"\n\
                 [database.vacuum]\n[database.backup]\ndir = \"{}\"\n[database.drill]\n",
                env.path("backups").display()
            ),
        )
        .write();
    for job in ["prune", "vacuum", "backup", "drill"] {
        env.run_ok(&["run", "chat", job]);
    }
    let text = std::fs::read_to_string(&prom).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn every_metric_the_rules_and_the_dashboard_query_is_one_the_daemon_writes() {
    let written = written_metrics();
    for m in [
        "litekeeper_drill_last_success_timestamp_seconds",
        "litekeeper_drill_restore_seconds",
    ] {
        assert!(written.contains(m), "{m} not written: {written:?}");
    }
    let mut queried = BTreeSet::new();
    for e in rule_exprs().iter().chain(&dashboard_exprs()) {
        metric_names(e, &mut queried);
    }
    assert!(queried.len() >= 10, "{queried:?}");
    for m in &queried {
        assert!(
            written.contains(m) || NOT_WRITTEN_YET.contains(&m.as_str()),
            "{m} is queried but the daemon does not write it (written: {written:?})"
        );
    }
    for m in NOT_WRITTEN_YET {
        assert!(
            !written.contains(*m),
            "{m} is written now: remove it from NOT_WRITTEN_YET"
        );
        assert!(queried.contains(*m), "{m} is queried nowhere");
    }
    // The alerts the package promises: backup, off-site copy and drill too old, a failed run,
    // pending off-site copies.
    let rules = rule_exprs().join("\n");
    for want in [
        "time() - litekeeper_last_backup_timestamp_seconds",
        "time() - litekeeper_remote_last_success_timestamp_seconds",
        "time() - litekeeper_drill_last_success_timestamp_seconds",
        "litekeeper_last_outcome{outcome=\"failed\"} == 1",
        "litekeeper_remote_pending_copies > 0",
    ] {
        assert!(rules.contains(want), "no rule with {want:?}");
    }
}

/// `promtool ARGS FILE` (a file in packaging/prometheus/); None when promtool is missing
/// outside CI.
fn promtool(args: &[&str], file: &str) -> Option<std::process::Output> {
    match std::process::Command::new("promtool")
        .args(args)
        .arg(root().join("packaging/prometheus").join(file))
        .output()
    {
        Ok(o) => Some(o),
        Err(e) => {
            assert!(
                !in_ci(),
                "CI is set but promtool cannot run ({e}): apt-get install prometheus"
            );
            eprintln!("skipped: needs promtool (Debian package prometheus): {e}");
            None
        }
    }
}

#[test]
fn promtool_accepts_the_rules() {
    let Some(o) = promtool(&["check", "rules"], "litekeeper.rules.yml") else {
        return;
    };
    assert!(o.status.success(), "{}", both(&o));
    assert!(both(&o).contains("SUCCESS: 8 rules found"), "{}", both(&o));
}

#[test]
fn promtool_unit_tests_of_the_offsite_alerts_pass() {
    let Some(o) = promtool(&["test", "rules"], "litekeeper.rules.test.yml") else {
        return;
    };
    assert!(o.status.success(), "{}", both(&o));
    assert!(both(&o).contains("SUCCESS"), "{}", both(&o));
}

#[test]
fn the_package_installs_the_rules_and_the_dashboard() {
    let cargo = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    for asset in [
        "[\"packaging/prometheus/litekeeper.rules.yml\", \"usr/share/litekeeper/prometheus/\", \"644\"]",
        "[\"packaging/grafana/litekeeper.json\", \"usr/share/litekeeper/grafana/\", \"644\"]",
    ] {
        assert!(cargo.contains(asset), "Cargo.toml's deb assets lack {asset}");
    }
}
