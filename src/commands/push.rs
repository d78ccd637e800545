//! `litekeeper backups push DB [REMOTE] [--adopt]`: upload the database's pending off-site
//! copies now, under its lock (a running backup job is waited for by no one: busy → exit 75).
//! `--adopt` first makes this host the owner of the database's remote manifest(s), so a host
//! that replaces another writes where the old one did.

use std::path::Path;
use std::sync::Arc;

use crate::cli::BackupsPushArgs;
use crate::config::{Database, Remote};
use crate::domain::human_bytes;
use crate::exit::{ExitCode, Failure};
use crate::jobs::backup::offsite;
use crate::lock::{self, LockError};
use crate::remote::{RemoteManifest, Store};

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
    if args.adopt {
        adopt(db, &remotes)?;
    }
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

/// Make this host the owner of `db`'s manifest on each of `remotes`; one line each.
fn adopt(db: &Database, remotes: &[&Arc<Remote>]) -> Result<(), Failure> {
    let Some(backup) = db.backup.as_ref() else {
        return Ok(());
    };
    for r in remotes {
        let store = Store::open((*r).clone()).map_err(|e| fail(e.code, e.to_string()))?;
        let was = RemoteManifest::adopt(&store, &db.name, &backup.dir)
            .map_err(|e| fail(e.code, e.to_string()))?;
        let prefix = store.key(&db.name, "");
        match was {
            Some(w) if w == r.host => println!(
                "{}: remote {:?}: the copies under {prefix} already belong to this host {:?}",
                db.name, r.name, r.host
            ),
            Some(w) => println!(
                "{}: remote {:?}: the copies under {prefix} now belong to this host {:?} (were host {w:?}'s; its pushes are refused from now on)",
                db.name, r.name, r.host
            ),
            None => println!(
                "{}: remote {:?}: the copies under {prefix} now belong to this host {:?}",
                db.name, r.name, r.host
            ),
        }
    }
    Ok(())
}
