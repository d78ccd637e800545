//! The daemon's retry of pending off-site copies: every `retry_every` (the shortest of the
//! configured remotes), each database with pending copies gets `backups push` under its lock
//! (a database busy with a job is left for the next round: its backup pushes them anyway).
//! Success is logged at info, a failure as a warning with the remote's one line; neither
//! touches the scheduler.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::jobs::backup::offsite;
use crate::lock;
use crate::state::State;

/// Start the retry loop; it follows the configuration sent on `config` and ends with `stop`.
pub(super) fn spawn(config: watch::Receiver<Arc<Config>>, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let current = config.borrow().clone();
            let every = current
                .remotes
                .iter()
                .map(|r| r.retry_every)
                .min()
                .unwrap_or(Duration::from_secs(60))
                .max(Duration::from_secs(1));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if current.remotes.is_empty() {
                continue;
            }
            let round = tokio::task::spawn_blocking(move || retry_round(&current));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = round => {}
            }
        }
    });
}

fn retry_round(config: &Config) {
    let Some(state) = State::open_existing(&config.daemon.state_dir, config.daemon.keep_history)
    else {
        return;
    };
    let Ok(pending) = state.all_pending() else {
        return;
    };
    // Databases in the order of their oldest pending copy.
    let mut names: Vec<&str> = Vec::new();
    for p in &pending {
        if !names.contains(&p.database.as_str()) {
            names.push(&p.database);
        }
    }
    for name in names {
        let Some(db) = config.database(name) else {
            continue;
        };
        let Ok(_guard) = lock::try_acquire(&config.daemon.lock_dir, &db.name, "push") else {
            continue;
        };
        match offsite::push_pending(config, db, None) {
            Ok(p) if p.errors.is_empty() => {
                if p.copies > 0 {
                    tracing::info!(
                        litekeeper_database = db.name.as_str(),
                        litekeeper_remote = p.remotes.join(",").as_str(),
                        litekeeper_remote_bytes = p.bytes,
                        "{}: stored {} pending off-site cop{} on retry",
                        db.name,
                        p.copies,
                        if p.copies == 1 { "y" } else { "ies" }
                    );
                }
            }
            Ok(p) => {
                for e in &p.errors {
                    tracing::warn!(
                        litekeeper_database = db.name.as_str(),
                        litekeeper_remote = e.remote.as_str(),
                        litekeeper_remote_url = e.url.as_str(),
                        "{}: retry of pending off-site copies: {e}",
                        db.name
                    );
                }
            }
            Err(e) => tracing::warn!("{}: retry of pending off-site copies: {e}", db.name),
        }
    }
    // The off-site metrics (pending copies, last success) follow the retry.
    if pending.is_empty() {
        return;
    }
    if let Err(e) = crate::metrics::write(config, &state) {
        tracing::warn!("could not update the metrics: {e}");
    }
}
