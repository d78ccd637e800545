//! `litekeeper daemon`: load the configuration, schedule every job, speak sd_notify, reload on
//! SIGHUP (a broken new file is logged and the old one kept), stop gracefully on SIGTERM/SIGINT
//! (a second signal stops waiting for running jobs).

use std::path::Path;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::exit::{ExitCode, Failure, OrExit};
use crate::jobs::Env;
use crate::logging::message_id;
use crate::metrics::MetricsWriter;
use crate::pings::Pings;
use crate::scheduler::Scheduler;
use crate::sqlite::Pools;
use crate::state::State;
use crate::{lock, notify, pidfile};

pub fn run(path: &Path) -> Result<ExitCode, Failure> {
    let config = super::load_config(path)?;
    // Before anything touches the state DB: one daemon per state_dir.
    let lock = lock_state_dir(&config.daemon.state_dir).inspect_err(|e| {
        notify::failed(&format!("refusing to start: {}", e.error), libc::EBUSY);
    })?;
    raise_open_files_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(config.daemon.max_concurrent_jobs + 8)
        .enable_all()
        .build()
        .or_exit(ExitCode::IoErr)?;
    rt.block_on(serve(path, config, lock))
}

/// Take `state_dir`'s daemon lock; another daemon holding it is a temporary failure (75).
fn lock_state_dir(dir: &Path) -> Result<pidfile::DaemonLock, Failure> {
    pidfile::acquire(dir).map_err(|e| {
        let code = match e {
            pidfile::DaemonLockError::Held { .. } => ExitCode::TempFail,
            _ => ExitCode::CantCreate,
        };
        Failure::new(code, e)
    })
}

/// Raise the soft limit on open files to the hard one, as systemd advises for programs that
/// need many (its default soft limit is 1024, the hard one 512K): each running job holds a
/// database's 3 files plus backup, lock and state files. litekeeper never uses select(2).
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    // None is unlimited.
    let lim = getrlimit(Resource::Nofile);
    // Capped: an unlimited hard limit is refused (above fs.nr_open).
    let want = lim.maximum.map_or(524_288, |max| max.min(524_288));
    if let Some(soft) = lim.current.filter(|&soft| soft < want) {
        let raised = Rlimit {
            current: Some(want),
            maximum: lim.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_err() {
            tracing::debug!("could not raise the open files limit from {soft}");
        }
    }
}

/// Everything the jobs of one configuration share; opens the state DB and the lock
/// directory, so it blocks: call it from `spawn_blocking` only. `services` are the daemon's
/// own, the same across reloads.
fn make_env(config: Config, cancel: CancellationToken, services: Services) -> Result<Env, Failure> {
    let state = State::open(&config.daemon.state_dir, config.longest_keep_history())
        .or_exit(ExitCode::CantCreate)?;
    lock::ensure_dir(&config.daemon.lock_dir)
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot create lock_dir: {e}",
                config.daemon.lock_dir.display()
            )
        })
        .or_exit(ExitCode::CantCreate)?;
    Ok(Env {
        pools: Pools::new(&config),
        config: Arc::new(config),
        state,
        cancel,
        metrics: services.metrics,
        pings: services.pings,
    })
}

/// What the daemon keeps for the whole process, across reloads.
#[derive(Clone)]
struct Services {
    metrics: MetricsWriter,
    pings: Pings,
}

async fn serve(
    path: &Path,
    config: Config,
    mut daemon_lock: pidfile::DaemonLock,
) -> Result<ExitCode, Failure> {
    let services = Services {
        // A fleet's round ends thousands of runs at once: one background metrics writer.
        metrics: MetricsWriter::new(true),
        // The daemon never waits for pings.
        pings: Pings::default(),
    };
    let cancel = CancellationToken::new();
    // Opening (and migrating) the state DB is blocking file I/O: not on a tokio worker. A
    // reload builds its Env the same way, in the spawn_blocking that loads the new file.
    let (token, for_env) = (cancel.clone(), services.clone());
    let env = tokio::task::spawn_blocking(move || make_env(config, token, for_env))
        .await
        .map_err(|e| {
            Failure::new(
                ExitCode::Failed,
                anyhow::anyhow!("start-up task failed: {e}"),
            )
        })??;
    let mut hup = signal(SignalKind::hangup()).or_exit(ExitCode::IoErr)?;
    let mut term = signal(SignalKind::terminate()).or_exit(ExitCode::IoErr)?;
    let mut int = signal(SignalKind::interrupt()).or_exit(ExitCode::IoErr)?;

    let jobs = env.config.scheduled_jobs().count();
    let databases = env.config.databases.len();
    let (remote_config, remote_config_rx) = tokio::sync::watch::channel(env.config.clone());
    let retry_stop = CancellationToken::new();
    super::remote_retry::spawn(remote_config_rx, retry_stop.clone());
    let scheduler = Scheduler::start(env).await.or_exit(ExitCode::Failed)?;
    let watchdog_stop = CancellationToken::new();
    let watchdog = notify::spawn_watchdog(watchdog_stop.clone());
    notify::ready();
    tracing::info!(
        message_id = message_id::DAEMON_STARTED,
        "started: {databases} database(s), {jobs} scheduled job(s), config {}",
        path.display()
    );
    scheduler.catch_up().await;

    loop {
        tokio::select! {
            _ = hup.recv() => {
                notify::reloading();
                // Read and open off the signal loop: a file system that stalls must not keep
                // SIGTERM waiting (the file checks refuse FIFOs and devices before reading).
                let (file, token, for_env) = (path.to_path_buf(), cancel.clone(), services.clone());
                let current_dir = daemon_lock.dir().to_path_buf();
                let loading = tokio::task::spawn_blocking(move || {
                    let new = super::load_config(&file).map_err(|e| e.to_string().replace('\n', "; "))?;
                    // A new state_dir must be this daemon's alone, as at start.
                    let new_lock = if new.daemon.state_dir != current_dir {
                        Some(lock_state_dir(&new.daemon.state_dir).map_err(|e| e.to_string())?)
                    } else {
                        None
                    };
                    Ok((new_lock, make_env(new, token, for_env).map_err(|e| e.to_string())?))
                });
                let loaded: Result<_, String> = tokio::select! {
                    r = loading => r.unwrap_or_else(|e| Err(format!("the reload task failed: {e}"))),
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                };
                match loaded {
                    Ok((new_lock, env)) => {
                        let jobs = env.config.scheduled_jobs().count();
                        let _ = remote_config.send(env.config.clone());
                        scheduler.reload(env).await;
                        if let Some(l) = new_lock {
                            daemon_lock = l;
                        }
                        tracing::info!(message_id = message_id::DAEMON_RELOADED, "configuration reloaded: {jobs} scheduled job(s)");
                    }
                    Err(e) => tracing::error!(
                        message_id = message_id::RELOAD_FAILED,
                        "reload failed, keeping the previous configuration: {e}"
                    ),
                }
                notify::ready();
                // STATUS again: reloading cleared it for systemd's view.
                let running = scheduler.running();
                if !running.is_empty() {
                    scheduler.status_now(&format!("running {}", running.join(", ")));
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    notify::stopping();
    retry_stop.cancel();
    let running = scheduler.running();
    tracing::info!(
        message_id = message_id::DAEMON_STOPPING,
        "stopping: {} running job(s) will stop at their next safe point",
        running.len()
    );
    scheduler.status_now(&if running.is_empty() {
        "stopping".to_string()
    } else {
        format!("stopping; waiting for {}", running.join(", "))
    });
    let stopped = scheduler.shutdown();
    tokio::pin!(stopped);
    let code = tokio::select! {
        _ = &mut stopped => ExitCode::Ok,
        _ = term.recv() => { tracing::warn!("second signal: not waiting for running jobs"); ExitCode::Failed }
        _ = int.recv() => { tracing::warn!("second signal: not waiting for running jobs"); ExitCode::Failed }
    };
    services.metrics.flush().await;
    watchdog_stop.cancel();
    if let Some(w) = watchdog {
        let _ = w.await;
    }
    Ok(code)
}
