//! `litekeeper check [DB…]`: configuration, directories and every database, with the reason
//! and the fix for each problem. Exit 1 when anything is broken; warnings are advice.
//! Remotes are probed by `check_remote.rs`.

use std::path::Path;

use chrono::Utc;
use rustix::fs::Access;

use crate::cli::CheckArgs;
use crate::config::JournalMode;
use crate::exit::{ExitCode, Failure};
use crate::sqlite::{self, Severity};

pub fn run(path: &Path, args: CheckArgs) -> Result<ExitCode, Failure> {
    let config = super::load_config(path)?;
    let selected = super::selected(&config, &args.databases)?;
    let n = config.databases.len();
    println!(
        "{}: configuration ok ({n} database{})",
        config.file.display(),
        if n == 1 { "" } else { "s" }
    );
    let mut errors = 0;
    let mut warnings = 0;
    for dir in [&config.daemon.state_dir, &config.daemon.lock_dir] {
        if let Some(problem) = dir_problem(dir) {
            println!("error: {problem}");
            errors += 1;
        }
    }
    let timeout = config.daemon.busy_timeout;
    for db in &config.databases {
        if selected.as_ref().is_some_and(|s| !s.contains(&db.name)) {
            continue;
        }
        // A fleet member is looked at only if it is still the file the scan found, reached
        // without a symlink (`check` must not read a file a link points to).
        if let Some(fleet) = db.fleet.as_deref().and_then(|f| config.fleet(f)) {
            use crate::config::fleet::{verify_member, MemberError};
            match verify_member(fleet, db) {
                Ok(_) => {}
                Err(MemberError::Gone(m)) => {
                    warnings += 1;
                    println!("{}: warning: {m}", db.name);
                    continue;
                }
                Err(MemberError::Refused(m)) => {
                    errors += 1;
                    println!("{}: error: {m}", db.name);
                    continue;
                }
            }
        }
        let want_wal = db.journal_mode == JournalMode::Wal;
        let mut files = vec![(String::new(), db.path.clone())];
        files.extend(
            db.attach
                .iter()
                .map(|a| (format!(" (attached as {})", a.alias), a.path.clone())),
        );
        let mut reachable = true;
        for (label, file) in files {
            let findings = sqlite::diagnose(&file, want_wal, timeout);
            reachable &= !findings.iter().any(|f| f.severity == Severity::Error);
            if findings.is_empty() {
                println!("{}{label}: ok: {}", db.name, file.display());
            }
            for f in findings {
                let tag = match f.severity {
                    Severity::Error => {
                        errors += 1;
                        "error"
                    }
                    Severity::Warning => {
                        warnings += 1;
                        "warning"
                    }
                };
                println!("{}{label}: {tag}: {}", db.name, f.what);
                println!("{}{label}:   fix: {}", db.name, f.fix);
            }
        }
        // Space a vacuum would reclaim, per file: whole free pages and unused bytes in pages.
        if let (true, Some(_)) = (reachable, &db.vacuum) {
            for line in free_space(db, timeout) {
                println!("{}{line}", db.name);
            }
        }
        // Prune rules must fit the live schema: checked read-only, each problem with its line.
        if let (true, Some(prune)) = (reachable, &db.prune) {
            for p in prune_problems(&config, db, prune, timeout) {
                errors += 1;
                println!("{}: error: {p}", db.name);
                println!(
                    "{}:   fix: make the rule match the database's schema (or the schema the rule)",
                    db.name
                );
            }
        }
    }
    // Files of a fleet that are no member (a collision, a bad name, a symlink): warnings, as
    // the configuration itself is fine.
    for f in &config.fleets {
        if !(args.databases.is_empty() || args.databases.contains(&f.handle)) {
            continue;
        }
        for r in f.rejected.iter().filter(|r| r.is_problem()) {
            warnings += 1;
            println!("{}: warning: {}", f.handle, r.reason);
        }
    }
    // Each remote: its credentials file's mode, then a probe of the store.
    let (e, w) = super::check_remote::check(&config, selected.as_ref(), args.identity.as_deref());
    errors += e;
    warnings += w;
    println!("{errors} error(s), {warnings} warning(s)");
    Ok(if errors > 0 {
        ExitCode::Failed
    } else {
        ExitCode::Ok
    })
}

/// The prune rules of `db` checked read-only against its live schema: each problem as one
/// line naming the rule's place in the configuration file.
fn prune_problems(
    config: &crate::config::Config,
    db: &crate::config::Database,
    prune: &crate::config::Prune,
    timeout: std::time::Duration,
) -> Vec<String> {
    let names: Vec<String> = config.databases.iter().map(|d| d.name.clone()).collect();
    let index = config
        .databases
        .iter()
        .position(|d| d.name == db.name)
        .unwrap_or(0);
    match sqlite::open_readonly(db, timeout) {
        Ok(conn) => crate::jobs::prune::check_schema(&conn, index, prune, Utc::now())
            .into_iter()
            .map(|p| crate::config::locate(&config.file, &p.key, &names, &p.reason))
            .collect(),
        Err(e) => vec![format!(
            "cannot open read-only to check the prune rules: {e}"
        )],
    }
}

/// "main"'s and each attached file's free pages and unused bytes in pages, read-only, one line
/// each (" (attached as x): vacuum: 12 free pages (48.0 KiB) + 1.2 MiB unused in pages").
fn free_space(db: &crate::config::Database, timeout: std::time::Duration) -> Vec<String> {
    let conn = match sqlite::open_readonly(db, timeout) {
        Ok(c) => c,
        Err(e) => {
            return vec![format!(
                ": vacuum: cannot open read-only to measure free space: {e}"
            )]
        }
    };
    let mut schemas = vec![(String::new(), "main".to_string())];
    schemas.extend(
        db.attach
            .iter()
            .map(|a| (format!(" (attached as {})", a.alias), a.alias.clone())),
    );
    schemas
        .into_iter()
        .map(|(label, schema)| {
            let pragma = |p: &str| -> rusqlite::Result<i64> {
                let q = crate::sqlite::quote_ident(&schema);
                conn.query_row(&format!("PRAGMA {q}.{p}"), [], |r| r.get(0))
            };
            let measured = pragma("freelist_count").and_then(|free| {
                let unused = crate::jobs::vacuum::unused_in_pages(&conn, &schema)?;
                Ok(crate::jobs::vacuum::free_space_text(
                    free,
                    pragma("page_size")?,
                    unused,
                ))
            });
            match measured {
                Ok(text) => format!("{label}: vacuum: {text}"),
                Err(e) => format!("{label}: vacuum: cannot measure free space: {e}"),
            }
        })
        .collect()
}

/// A state or lock directory must exist (or be creatable) and be writable.
fn dir_problem(dir: &Path) -> Option<String> {
    let mut probe = dir;
    while !probe.exists() {
        probe = probe.parent()?;
    }
    let writable = rustix::fs::access(probe, Access::WRITE_OK | Access::EXEC_OK).is_ok();
    if !probe.is_dir() {
        Some(format!(
            "{}: not a directory (needed for {})",
            probe.display(),
            dir.display()
        ))
    } else if !writable {
        Some(format!(
            "{}: not writable, so {} cannot be used (fix its owner or set daemon.state_dir / daemon.lock_dir)",
            probe.display(),
            dir.display()
        ))
    } else {
        None
    }
}
