//! `litekeeper demo [DIR]`: build the sample of `crate::demo`, then run every job on it in
//! order (prune → vacuum → backup) through the same execute path as the daemon, and print
//! what changed.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cli::DemoArgs;
use crate::demo::{self, Sample};
use crate::domain::human_bytes;
use crate::exit::{ExitCode, Failure, OrExit};
use crate::jobs::{self, Env, JobKind, Outcome, Request, Trigger};
use crate::sqlite::Pools;
use crate::state::State;

/// Figures of the sample, before and after the jobs.
struct Figures {
    rows: Vec<(&'static str, i64)>,
    uploads: usize,
    sizes: Vec<(&'static str, u64)>,
    backups: usize,
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn measure(s: &Sample) -> anyhow::Result<Figures> {
    let c = rusqlite::Connection::open_with_flags(
        &s.main_db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let b = rusqlite::Connection::open_with_flags(
        &s.blob_db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let count = |c: &rusqlite::Connection, t: &str| -> anyhow::Result<i64> {
        Ok(c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))?)
    };
    let wal = |p: &Path| crate::db_files::DbFiles::of(p).wal;
    Ok(Figures {
        rows: vec![
            ("chats", count(&c, "chat")?),
            ("messages", count(&c, "message")?),
            ("files (rows)", count(&c, "file")?),
            ("blobs", count(&b, "blob")?),
        ],
        uploads: std::fs::read_dir(&s.uploads)
            .map(|d| d.count())
            .unwrap_or(0),
        sizes: vec![
            ("chat.db", size(&s.main_db)),
            ("chat.db-wal", size(&wal(&s.main_db))),
            ("files.db", size(&s.blob_db)),
        ],
        backups: crate::archive::list(&s.backups)
            .map(|l| l.len())
            .unwrap_or(0),
    })
}

/// `given`, or a new directory under the temp dir; refused when it holds anything.
fn empty_dir(given: Option<std::path::PathBuf>) -> Result<std::path::PathBuf, Failure> {
    let dir = match given {
        Some(d) => d,
        None => std::env::temp_dir().join(format!(
            "litekeeper-demo-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )),
    };
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Failure::new(
            ExitCode::CantCreate,
            anyhow::anyhow!(
                "{}: not empty; the demo writes only into a new or empty directory",
                dir.display()
            ),
        ));
    }
    Ok(dir)
}

pub fn run(args: DemoArgs) -> Result<ExitCode, Failure> {
    let dir = empty_dir(args.dir)?;
    let sample = demo::build(&dir).or_exit(ExitCode::CantCreate)?;
    let config = Arc::new(super::load_config(&sample.config)?);
    println!("litekeeper demo in {}", dir.display());
    println!("  sample: a chat app with a main DB, a blob DB keyed {{message_id}}/{{index}} and an uploads dir");
    println!("  config: {}\n", sample.config.display());
    let before = measure(&sample).or_exit(ExitCode::IoErr)?;

    let state = State::open(&config.daemon.state_dir, config.longest_keep_history())
        .or_exit(ExitCode::CantCreate)?;
    let rt = super::runtime()?;
    let db = config.databases[0].clone();
    let mut failed = false;
    // Preview first, as an operator would: what prune would delete, per rule.
    // A fresh context per run, as each `litekeeper run` would have.
    let env = || Env {
        pools: Pools::new(&config),
        config: config.clone(),
        state: state.clone(),
        cancel: CancellationToken::new(),
        metrics: Default::default(),
        pings: Default::default(),
    };
    let preview = rt.block_on(jobs::execute(
        &env(),
        Request {
            db: db.clone(),
            kind: JobKind::Prune,
            trigger: Trigger::Cli,
            dry_run: true,
            on_busy: None,
            drill: Default::default(),
        },
    ));
    println!("  prune --dry-run: {}", preview.summary);
    for l in jobs::prune::rules_table(&preview.figures) {
        println!("  {l}");
    }
    println!();
    for kind in JobKind::ALL {
        if kind == JobKind::Incremental && db.timing(kind).is_none() {
            continue; // the demo's configuration takes no incremental backups
        }
        let req = Request {
            db: db.clone(),
            kind,
            trigger: Trigger::Cli,
            dry_run: false,
            on_busy: None,
            drill: Default::default(),
        };
        let report = rt.block_on(jobs::execute(&env(), req));
        let not_built = report
            .error
            .as_deref()
            .is_some_and(|e| e.contains(jobs::NOT_BUILT));
        let line = match report.outcome {
            _ if not_built => "not available yet in this version".to_string(),
            Outcome::Failed => {
                failed = true;
                format!("FAILED: {}", report.error.as_deref().unwrap_or(""))
            }
            _ => format!(
                "{} in {} ms: {}",
                report.outcome.as_str(),
                report.duration_ms,
                report.summary
            ),
        };
        println!("  {:<7} {line}", kind.as_str());
        if kind == JobKind::Prune && report.outcome == Outcome::Ok {
            for l in jobs::prune::rules_table(&report.figures) {
                println!("  {l}");
            }
        }
        if kind == JobKind::Drill {
            for l in jobs::drill::report_lines(&report.figures) {
                println!("  {l}");
            }
        }
    }

    let after = measure(&sample).or_exit(ExitCode::IoErr)?;
    print_comparison(&before, &after);
    print_next_steps(&dir, &sample.config);
    Ok(if failed {
        ExitCode::Failed
    } else {
        ExitCode::Ok
    })
}

/// The sample's rows, files and sizes before and after the jobs, side by side.
fn print_comparison(before: &Figures, after: &Figures) {
    println!("\n  {:<14} {:>12} {:>12}", "", "before", "after");
    for ((name, b), (_, a)) in before.rows.iter().zip(&after.rows) {
        println!("  {name:<14} {b:>12} {a:>12}");
    }
    println!(
        "  {:<14} {:>12} {:>12}",
        "upload files", before.uploads, after.uploads
    );
    for ((name, b), (_, a)) in before.sizes.iter().zip(&after.sizes) {
        println!(
            "  {name:<14} {:>12} {:>12}",
            human_bytes(*b),
            human_bytes(*a)
        );
    }
    println!(
        "  {:<14} {:>12} {:>12}",
        "backups", before.backups, after.backups
    );
}

/// Commands to try on the sample next.
fn print_next_steps(dir: &Path, config: &Path) {
    // The running binary by its path: after `cargo run`, `litekeeper` is not on PATH.
    let exe = std::env::current_exe()
        .map(|p| shell_quote(&p.display().to_string()))
        .unwrap_or_else(|_| "litekeeper".to_string());
    let c = shell_quote(&config.display().to_string());
    let restored = shell_quote(&dir.join("restored.db").display().to_string());
    println!("\nTry next:");
    println!("  {exe} -c {c} status");
    println!("  {exe} -c {c} schedule");
    println!("  {exe} -c {c} check");
    println!("  {exe} -c {c} restore chat --to {restored}");
    println!("  {exe} -c {c} drill chat");
}

/// `text` as one shell word: as is when it is plain, else in single quotes.
fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:,@%=".contains(&b));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shell_words() {
        assert_eq!(super::shell_quote("/tmp/a-b/lk.toml"), "/tmp/a-b/lk.toml");
        assert_eq!(super::shell_quote("/tmp/my demo"), "'/tmp/my demo'");
        assert_eq!(super::shell_quote("/tmp/it's"), "'/tmp/it'\\''s'");
    }
}
