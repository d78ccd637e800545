//! `litekeeper backups push DB [REMOTE]`: upload the database's pending off-site copies now,
//! under its lock (a running backup job is waited for by no one: busy → exit 75).

use std::path::Path;

use crate::cli::BackupsPushArgs;
use crate::domain::human_bytes;
use crate::exit::{ExitCode, Failure};
use crate::jobs::backup::offsite;
use crate::lock::{self, LockError};

fn fail(code: ExitCode, msg: String) -> Failure {
    Failure::new(code, anyhow::anyhow!(msg))
}

pub fn run(path: &Path, args: BackupsPushArgs) -> Result<ExitCode, Failure> {
    let config = super::load_config(path)?;
    let db = super::database_named(&config, &args.database)?;
    let remotes = offsite::remotes_of(&config, db, args.remote.as_deref());
    if remotes.is_empty() {
        return Err(fail(
            ExitCode::Usage,
            match &args.remote {
                Some(r) => format!(
                    "database {:?} has no remote {r:?} in its backup.remotes",
                    db.name
                ),
                None => format!("database {:?} has no remotes (backup.remotes)", db.name),
            },
        ));
    }
    let _guard = lock::try_acquire(&config.daemon.lock_dir, &db.name, "push").map_err(|e| {
        let code = match e {
            LockError::Busy { .. } => ExitCode::TempFail,
            _ => ExitCode::CantCreate,
        };
        fail(code, e.to_string())
    })?;
    let pushed = offsite::push_pending(&config, db, args.remote.as_deref())
        .map_err(|e| fail(ExitCode::CantCreate, e))?;
    // The off-site metrics (pending copies, last success) follow the push.
    if let Some(state) =
        crate::state::State::open_existing(&config.daemon.state_dir, config.daemon.keep_history)
    {
        if let Err(e) = crate::metrics::write(&config, &state) {
            tracing::warn!("could not update the metrics: {e}");
        }
    }
    println!(
        "{}: stored {} pending cop{} ({}, {} MB/s); {} still pending; remote retention deleted {}",
        db.name,
        pushed.copies,
        if pushed.copies == 1 { "y" } else { "ies" },
        human_bytes(pushed.bytes),
        pushed.mb_per_sec(),
        pushed.pending,
        pushed.deleted.len()
    );
    if let Some(first) = pushed.errors.first() {
        let lines: Vec<String> = pushed.errors.iter().map(|e| e.to_string()).collect();
        return Err(fail(first.code, lines.join("; ")));
    }
    Ok(ExitCode::Ok)
}
