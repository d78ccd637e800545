//! The daemon's scheduler: tokio-cron-scheduler is the timer, `schedule` decides the times.
//!
//! Each scheduled job is armed as a one-shot tokio-cron-scheduler job at its next run time as
//! computed by `schedule` in the configured zone; when it fires it re-arms itself from that
//! time. This sidesteps two traps of the crate's own cron jobs (it freezes the zone's UTC
//! offset when a job is created, and it ANDs day-of-month with day-of-week) and keeps
//! `litekeeper schedule` exactly what the daemon does. Around it:
//! - one job per database at a time (a per-database queue, plus the cross-process lock);
//! - a tick for a job that is still queued or running is coalesced, not stacked;
//! - `max_concurrent_jobs` across databases (a semaphore);
//! - per-job jitter, catch-up of a run missed while the daemon was down;
//! - running jobs are tracked and awaited on shutdown (the crate does not wait).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::jobs::{self, Env, JobKind, Request, Trigger};

type Key = (String, JobKind);

/// What the daemon runs jobs with; swapped whole on reload.
struct Current {
    env: Env,
    permits: Arc<Semaphore>,
    generation: u64,
}

pub struct Scheduler {
    cron: JobScheduler,
    inner: Arc<Inner>,
}

struct Inner {
    current: Mutex<Current>,
    generation: AtomicU64,
    armed_ids: Mutex<HashMap<Key, Uuid>>,
    next_runs: Mutex<BTreeMap<Key, DateTime<Utc>>>,
    queued: Mutex<HashSet<Key>>,
    running: Mutex<Vec<Key>>,
    /// Runs recorded as queued in the state DB (they wait for a permit or their database's
    /// queue), with the state DB they were recorded in; cleared when they start.
    queued_rows: Mutex<HashMap<Key, crate::state::State>>,
    /// STATUS= as last sent, and whether a delayed send is pending (see `publish_status`).
    status: Mutex<StatusSent>,
    db_queues: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Fleet members found at the latest scan, by name (their jobs are dispatched by name).
    fleet_dbs: Mutex<HashMap<String, Arc<crate::config::Database>>>,
    /// Member names per fleet at the latest scan: a vanished one is reported once.
    fleet_known: Mutex<HashMap<String, BTreeMap<String, String>>>,
    /// Files each fleet's latest scan refused: one is logged when it appears, not every tick.
    fleet_rejected: Mutex<HashMap<String, Vec<crate::config::fleet::Rejected>>>,
    tracker: TaskTracker,
}

/// What the service manager was last told (STATUS=) and when.
#[derive(Default)]
struct StatusSent {
    text: Option<String>,
    at: Option<tokio::time::Instant>,
    /// A send is scheduled for the end of the current gap; it will compute the newest text.
    pending: bool,
}

/// STATUS= is sent at most once per this gap (a change within it is sent at its end, as the
/// state is then): jobs start and end many times a second, and systemd keeps every update.
const STATUS_GAP: std::time::Duration = std::time::Duration::from_secs(1);

/// Timers of a fleet's jobs are keyed by this prefix and the fleet's name template.
const FLEET: &str = "fleet:";

#[derive(Debug, thiserror::Error)]
#[error("scheduler: {0}")]
pub struct SchedulerError(String);

impl Scheduler {
    /// Start the timer and arm every scheduled job of `env.config`.
    pub async fn start(env: Env) -> Result<Scheduler, SchedulerError> {
        let cron = JobScheduler::new()
            .await
            .map_err(|e| SchedulerError(e.to_string()))?;
        cron.start()
            .await
            .map_err(|e| SchedulerError(e.to_string()))?;
        let permits = Arc::new(Semaphore::new(env.config.daemon.max_concurrent_jobs));
        let inner = Arc::new(Inner {
            current: Mutex::new(Current {
                env,
                permits,
                generation: 0,
            }),
            generation: AtomicU64::new(0),
            armed_ids: Mutex::new(HashMap::new()),
            next_runs: Mutex::new(BTreeMap::new()),
            queued: Mutex::new(HashSet::new()),
            running: Mutex::new(Vec::new()),
            queued_rows: Mutex::new(HashMap::new()),
            status: Mutex::new(StatusSent::default()),
            db_queues: Mutex::new(HashMap::new()),
            fleet_dbs: Mutex::new(HashMap::new()),
            fleet_known: Mutex::new(HashMap::new()),
            fleet_rejected: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
        });
        // Nothing a previous daemon queued is still waiting (one daemon per state_dir).
        let state = inner.env().state;
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || state.clear_all_queued()).await {
            tracing::warn!("could not clear the queued runs of a previous daemon: {e}");
        }
        let s = Scheduler { cron, inner };
        s.arm_all(Utc::now()).await;
        Ok(s)
    }

    /// Run, once, every job whose last scheduled time passed since its last recorded run
    /// (like systemd's `Persistent=true`). Jobs that never ran are not caught up. A fleet's
    /// members are judged one by one and fed like a tick, spread over the job's jitter.
    pub async fn catch_up(&self) {
        let env = self.inner.env();
        if !env.config.daemon.catch_up {
            return;
        }
        let now = Utc::now();
        let zone = env.config.daemon.timezone.clone();
        // When each database's jobs last started: one query per job kind.
        let state = env.state.clone();
        let last = tokio::task::spawn_blocking(move || {
            JobKind::ALL
                .into_iter()
                .map(|k| Ok((k, state.last_starts(k)?)))
                .collect::<Result<HashMap<_, _>, crate::state::StateError>>()
        })
        .await
        .ok()
        .and_then(Result::ok);
        let Some(last) = last else {
            return;
        };
        let missed =
            |db: &crate::config::Database, kind: JobKind, schedule: &crate::schedule::Schedule| {
                last.get(&kind)
                    .and_then(|l| l.get(&db.name))
                    .is_some_and(|&l| schedule.next_after(l, &zone).is_some_and(|due| due < now))
            };
        for (db, kind, timing) in env.config.scheduled_jobs() {
            let Some(schedule) = &timing.schedule else {
                continue;
            };
            if missed(db, kind, schedule) {
                tracing::info!(
                    "{} {}: missed a scheduled run while stopped; catching up",
                    kind.as_str(),
                    db.name
                );
                let inner = self.inner.clone();
                let name = db.name.clone();
                self.inner
                    .tracker
                    .spawn(async move { inner.dispatch(name, kind, Trigger::CatchUp).await });
            }
        }
        for (fleet, kind, timing) in env.config.fleet_jobs() {
            let Some(schedule) = &timing.schedule else {
                continue;
            };
            let due: Vec<String> = env
                .config
                .members(fleet)
                .filter(|d| missed(d, kind, schedule))
                .map(|d| d.name.clone())
                .collect();
            if due.is_empty() {
                continue;
            }
            tracing::info!(
                "{} fleet {}: {} database(s) missed a scheduled run while stopped; catching up",
                kind.as_str(),
                fleet.name,
                due.len()
            );
            let inner = self.inner.clone();
            let jitter = timing.jitter;
            self.inner.tracker.spawn(async move {
                inner.feed(due, kind, Trigger::CatchUp, jitter).await;
            });
        }
    }

    /// Replace the configuration: re-arm every job from now. Running jobs finish with the
    /// configuration they started with.
    pub async fn reload(&self, env: Env) {
        let old_ids = std::mem::take(&mut *self.inner.armed_ids.lock().unwrap());
        for id in old_ids.into_values() {
            let _ = self.cron.remove(&id).await;
        }
        let generation = self.inner.generation.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut cur = self.inner.current.lock().unwrap();
            cur.permits = Arc::new(Semaphore::new(env.config.daemon.max_concurrent_jobs));
            cur.env = env;
            cur.generation = generation;
        }
        self.inner.next_runs.lock().unwrap().clear();
        self.arm_all(Utc::now()).await;
        if tracing::enabled!(tracing::Level::DEBUG) {
            let jobs = self.inner.env().config.scheduled_jobs().count()
                + self.inner.env().config.fleet_jobs().count();
            let armed = self.inner.armed_ids.lock().unwrap().len();
            let held = self.timers_held().await;
            let queues = self.inner.db_queues.lock().unwrap().len();
            tracing::debug!(
                "reloaded: {jobs} job(s), {armed} timers armed, {held} held by the timer crate, {queues} database queue(s)"
            );
        }
    }

    /// How many timers the timer crate holds (armed and not yet fired or removed): one per
    /// scheduled job, however often the configuration was reloaded.
    async fn timers_held(&self) -> usize {
        let store = self.cron.context().metadata_storage.clone();
        let mut store = store.write().await;
        store.list_next_ticks().await.map_or(0, |t| t.len())
    }

    async fn arm_all(&self, after: DateTime<Utc>) {
        let (env, generation) = {
            let cur = self.inner.current.lock().unwrap();
            (cur.env.clone(), cur.generation)
        };
        for (db, kind, _) in env.config.scheduled_jobs() {
            arm(
                &self.cron,
                &self.inner,
                db.name.clone(),
                kind,
                after,
                generation,
            )
            .await;
        }
        self.inner.remember_fleets(&env.config);
        for (fleet, kind, _) in env.config.fleet_jobs() {
            arm(
                &self.cron,
                &self.inner,
                format!("{FLEET}{}", fleet.name),
                kind,
                after,
                generation,
            )
            .await;
        }
        self.inner.send_status(None, false);
    }

    /// Stop arming, fire the cancel token, and wait for running jobs to reach a safe point.
    pub async fn shutdown(mut self) {
        let _ = self.cron.shutdown().await;
        self.inner.env().cancel.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        // Runs a fleet's feeder had queued and never started.
        let left: Vec<Key> = self
            .inner
            .queued_rows
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        for key in left {
            self.inner.unmark_queued(&key).await;
        }
    }

    /// Send `text` as STATUS= now, even if unchanged (after a reload, while stopping); later
    /// updates compare against it.
    pub fn status_now(&self, text: &str) {
        self.inner.send_status(Some(text.to_string()), true);
    }

    /// Jobs currently running, as "job db".
    pub fn running(&self) -> Vec<String> {
        self.inner.running_names()
    }
}

impl Inner {
    fn env(&self) -> Env {
        self.current.lock().unwrap().env.clone()
    }

    fn running_names(&self) -> Vec<String> {
        self.running
            .lock()
            .unwrap()
            .iter()
            .map(|(db, k)| format!("{} {db}", k.as_str()))
            .collect()
    }

    /// Tell the service manager the state when it changed: at once if the last STATUS= is at
    /// least `STATUS_GAP` old, else once at the end of that gap, with the state as it is then
    /// (never a text computed earlier, whose "next" may have passed). Once shutdown has begun
    /// every change goes out at once (the process is about to end).
    fn publish_status(self: &Arc<Self>) {
        let stopping = self.current.lock().unwrap().env.cancel.is_cancelled();
        let due = {
            let mut st = self.status.lock().unwrap();
            if st.pending && !stopping {
                return;
            }
            let now = tokio::time::Instant::now();
            match st.at.map(|at| at + STATUS_GAP) {
                Some(due) if due > now && !stopping => {
                    st.pending = true;
                    Some(due)
                }
                _ => None,
            }
        };
        let Some(due) = due else {
            self.send_status(None, false);
            return;
        };
        let inner = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            inner.status.lock().unwrap().pending = false;
            inner.send_status(None, false);
        });
    }

    /// Send `text` (or the current state's) as STATUS= if it differs from the last one sent,
    /// or always with `force`.
    fn send_status(&self, text: Option<String>, force: bool) {
        let mut st = self.status.lock().unwrap();
        let text = text.unwrap_or_else(|| self.status_text());
        if force || st.text.as_deref() != Some(text.as_str()) {
            crate::notify::status(&text);
            st.text = Some(text);
            st.at = Some(tokio::time::Instant::now());
        }
    }

    /// "running prune chat" or "idle; next: backup chat at 02:00" (the earliest run still
    /// ahead: a timer that is going off right now is not "next"); once shutdown has begun,
    /// "stopping; waiting for …" / "stopping" (no next run will come).
    fn status_text(&self) -> String {
        let running = self.running_names();
        let stopping = self.current.lock().unwrap().env.cancel.is_cancelled();
        if stopping {
            if running.is_empty() {
                "stopping".to_string()
            } else {
                format!("stopping; waiting for {}", running.join(", "))
            }
        } else if !running.is_empty() {
            format!("running {}", running.join(", "))
        } else {
            let now = Utc::now();
            let next = self.next_runs.lock().unwrap();
            match next
                .iter()
                .filter(|(_, t)| **t > now)
                .min_by_key(|(_, t)| **t)
            {
                Some(((db, k), t)) => {
                    let zone = self
                        .current
                        .lock()
                        .unwrap()
                        .env
                        .config
                        .daemon
                        .timezone
                        .clone();
                    format!("idle; next: {} {db} at {}", k.as_str(), zone.format(*t))
                }
                None if next.is_empty() => "idle; nothing scheduled".to_string(),
                None => "idle".to_string(),
            }
        }
    }

    /// Record the fleet members a (re)loaded configuration found; what changed since the
    /// last scan is reported once.
    fn remember_fleets(&self, config: &crate::config::Config) {
        // Members of fleets no longer configured are no longer dispatched.
        self.fleet_dbs
            .lock()
            .unwrap()
            .retain(|_, d| d.fleet.as_ref().is_some_and(|f| config.fleet(f).is_some()));
        for fleet in &config.fleets {
            let members: Vec<Arc<crate::config::Database>> =
                config.members(fleet).cloned().collect();
            self.update_fleet(&fleet.name, &members);
            self.update_rejected(&fleet.name, &fleet.rejected);
        }
    }

    /// Log the files a fleet's scan refused that the previous scan did not (a file that goes
    /// and comes back is logged again).
    fn update_rejected(&self, fleet: &str, rejected: &[crate::config::fleet::Rejected]) {
        let mut known = self.fleet_rejected.lock().unwrap();
        let before = known.remove(fleet).unwrap_or_default();
        for r in rejected {
            if before.binary_search(r).is_err() {
                r.log(fleet);
            }
        }
        known.insert(fleet.to_string(), rejected.to_vec());
    }

    /// Replace a fleet's members, logging the ones that appeared and vanished.
    fn update_fleet(&self, fleet: &str, members: &[Arc<crate::config::Database>]) {
        let now: BTreeMap<String, String> = members
            .iter()
            .map(|d| (d.name.clone(), d.path.display().to_string()))
            .collect();
        {
            let mut known = self.fleet_known.lock().unwrap();
            if let Some(before) = known.get(fleet) {
                for (name, path) in &now {
                    if !before.contains_key(name) {
                        tracing::info!("fleet {fleet}: new database {name} ({path})");
                    }
                }
                for (name, path) in before {
                    if !now.contains_key(name) {
                        tracing::warn!(
                            "fleet {fleet}: database {name} ({path}) is gone; no longer scheduled"
                        );
                    }
                }
            }
            known.insert(fleet.to_string(), now);
        }
        let mut dbs = self.fleet_dbs.lock().unwrap();
        dbs.retain(|_, d| d.fleet.as_deref() != Some(fleet));
        for m in members {
            dbs.insert(m.name.clone(), m.clone());
        }
    }

    /// A fleet's job is due: scan its files again, report members that appeared or vanished
    /// (once), and queue the job for every member, each after its own random share of the
    /// jitter so a large fleet spreads over the window. One task feeds them in order of their
    /// delays and starts a member's task only once a permit is free, so 10,000 members cost
    /// one sleeping task, not 10,000.
    async fn dispatch_fleet(
        self: Arc<Self>,
        fleet_name: String,
        kind: JobKind,
        jitter: std::time::Duration,
    ) {
        let env = self.env();
        let Some(fleet) = env.config.fleet(&fleet_name) else {
            return;
        };
        let raw_name = fleet.name.clone();
        let config = env.config.clone();
        // As at load: a member may not take the name of a plain database or of a fleet, and
        // a name two files make (in this fleet or another) is refused for both.
        let scanned = tokio::task::spawn_blocking(move || {
            let n = config.fleets.iter().position(|f| f.name == fleet_name)?;
            let taken = |name: &str| {
                config.database(name).is_some_and(|d| d.fleet.is_none())
                    || config.fleet_by_handle(name).is_some()
            };
            Some(crate::config::fleet::scan(
                &config.fleets,
                n,
                &config.daemon,
                &taken,
            ))
        })
        .await
        .ok()
        .flatten();
        let Some(scan) = scanned else {
            return;
        };
        let members = scan.members;
        self.update_rejected(&raw_name, &scan.rejected);
        self.update_fleet(&raw_name, &members);
        let names = members.iter().map(|m| m.name.clone()).collect();
        drop(members);
        self.feed(names, kind, Trigger::Schedule, jitter).await;
    }

    /// Start `kind` for each of `names` after its own random share of `jitter`, in order of
    /// those delays, each only once a permit is free (one task for a whole fleet).
    async fn feed(
        self: &Arc<Self>,
        names: Vec<String>,
        kind: JobKind,
        trigger: Trigger,
        jitter: std::time::Duration,
    ) {
        let cancel = self.env().cancel;
        let mut plan: Vec<(std::time::Duration, String)> = names
            .into_iter()
            .map(|name| (crate::schedule::jitter_delay(jitter), name))
            .collect();
        plan.sort_unstable();
        let start = tokio::time::Instant::now();
        let started_at = Utc::now();
        // plan[..marked] are recorded as queued (see below).
        let mut marked = 0;
        for i in 0..plan.len() {
            let (delay, name) = plan[i].clone();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(start + delay) => {}
            }
            let permits = self.current.lock().unwrap().permits.clone();
            let permit = match permits.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    // Starved by max_concurrent_jobs: this member and every one already due
                    // wait for a permit; `status` shows them queued since they were due.
                    let due = start.elapsed();
                    let end = i + plan[i..].partition_point(|(d, _)| *d <= due);
                    if end > marked.max(i) {
                        let busy = self.queued.lock().unwrap().clone();
                        let rows = plan[marked.max(i)..end]
                            .iter()
                            .filter(|(_, n)| !busy.contains(&(n.clone(), kind)))
                            .map(|(d, n)| {
                                let since =
                                    started_at + chrono::Duration::from_std(*d).unwrap_or_default();
                                (n.clone(), kind, since)
                            })
                            .collect();
                        self.mark_queued(rows).await;
                        marked = end;
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        p = permits.acquire_owned() => p.ok(),
                    }
                }
            };
            let inner = self.clone();
            self.tracker
                .spawn(async move { inner.dispatch_with(name, kind, trigger, permit).await });
        }
    }

    /// Record in the state DB that these runs wait, each since it was due (`status` shows
    /// them as queued). Only runs not recorded yet are written: a run that never waits costs
    /// nothing.
    async fn mark_queued(&self, rows: Vec<(String, JobKind, DateTime<Utc>)>) {
        let state = self.env().state;
        let rows: Vec<_> = {
            let mut recorded = self.queued_rows.lock().unwrap();
            rows.into_iter()
                .filter(|(db, k, _)| recorded.insert((db.clone(), *k), state.clone()).is_none())
                .collect()
        };
        if rows.is_empty() {
            return;
        }
        match tokio::task::spawn_blocking(move || state.set_queued(&rows)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("could not record queued runs: {e}"),
            Err(e) => tracing::warn!("could not record queued runs: {e}"),
        }
    }

    /// A run recorded as queued starts (or will not run): clear its record.
    async fn unmark_queued(&self, key: &Key) {
        let Some(state) = self.queued_rows.lock().unwrap().remove(key) else {
            return;
        };
        let keys = [key.clone()];
        match tokio::task::spawn_blocking(move || state.clear_queued(&keys)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("could not clear a queued run: {e}"),
            Err(e) => tracing::warn!("could not clear a queued run: {e}"),
        }
    }

    fn db_queue(&self, db: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.db_queues
            .lock()
            .unwrap()
            .entry(db.to_string())
            .or_default()
            .clone()
    }

    /// Queue one run: one job per database at a time, bounded across databases.
    async fn dispatch(self: Arc<Self>, db: String, kind: JobKind, trigger: Trigger) {
        self.dispatch_with(db, kind, trigger, None).await
    }

    /// `dispatch`, with a permit the caller already holds (a fleet's feeder). The permit is
    /// kept only if the database's queue is free at once: waiting for the queue while holding
    /// a permit could deadlock against a run that holds the queue and waits for a permit.
    async fn dispatch_with(
        self: Arc<Self>,
        db: String,
        kind: JobKind,
        trigger: Trigger,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let key = (db.clone(), kind);
        if !self.queued.lock().unwrap().insert(key.clone()) {
            tracing::debug!(
                "{} {db}: previous run still queued or running; tick coalesced",
                kind.as_str()
            );
            return;
        }
        let due = Utc::now();
        let queue = self.db_queue(&db);
        let (turn, held) = match queue.try_lock() {
            Ok(turn) => (turn, permit),
            Err(_) => {
                drop(permit);
                self.mark_queued(vec![(db.clone(), kind, due)]).await;
                (queue.lock().await, None)
            }
        };
        let (env, permits) = {
            let cur = self.current.lock().unwrap();
            (cur.env.clone(), cur.permits.clone())
        };
        let _permit = match held {
            Some(p) => Ok(p),
            None => match permits.clone().try_acquire_owned() {
                Ok(p) => Ok(p),
                Err(_) => {
                    self.mark_queued(vec![(db.clone(), kind, due)]).await;
                    permits.acquire_owned().await
                }
            },
        };
        self.unmark_queued(&key).await;
        let database = env
            .config
            .database(&db)
            .cloned()
            .or_else(|| self.fleet_dbs.lock().unwrap().get(&db).cloned());
        // A reload may have removed the job (or the database) since this run was queued.
        let database = database.filter(|d| d.timing(kind).is_some_and(|t| t.schedule.is_some()));
        if let (Some(database), false) = (database, env.cancel.is_cancelled()) {
            self.running.lock().unwrap().push(key.clone());
            self.publish_status();
            let req = Request {
                db: database,
                kind,
                trigger,
                dry_run: false,
                on_busy: None,
            };
            jobs::execute(&env, req).await;
            self.running.lock().unwrap().retain(|k| k != &key);
        }
        self.queued.lock().unwrap().remove(&key);
        drop(turn);
        // Forget the queue of a database nobody else waits for: fleet members come and go,
        // and their queues would pile up.
        {
            let mut queues = self.db_queues.lock().unwrap();
            if Arc::strong_count(&queue) == 2 {
                queues.remove(&db);
            }
        }
        self.publish_status();
    }
}

/// Waits shorter than this are timed with a plain tokio sleep, not a tokio-cron-scheduler job.
/// The crate turns an instant into a tick in whole seconds (truncating: a job less than a
/// second away is due at once), and it registers a job's metadata and its code in two
/// independent tasks: a job already due when added can be activated before its code is there,
/// and is then dropped ("Error getting … from job code") — and with it every later run of
/// the schedule, since each run arms the next. Seen with `* * * * * *` every few seconds.
/// From two seconds on, the crate's tick is at least a second after the job is added.
const SHORT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Arm the next run of one job after `after`, as a one-shot timer of configuration
/// `generation`. Returns false, arming nothing, when a reload has replaced that configuration
/// (its own `arm_all` armed every job again).
fn arm<'a>(
    cron: &'a JobScheduler,
    inner: &'a Arc<Inner>,
    db: String,
    kind: JobKind,
    after: DateTime<Utc>,
    generation: u64,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
    Box::pin(async move {
        let env = {
            let cur = inner.current.lock().unwrap();
            if cur.generation != generation {
                return false;
            }
            cur.env.clone()
        };
        let database = match db.strip_prefix(FLEET) {
            Some(fleet) => env.config.fleet(fleet).map(|f| &f.template),
            None => env.config.database(&db),
        };
        let Some(database) = database else {
            return true;
        };
        let Some(timing) = database.timing(kind) else {
            return true;
        };
        let Some(schedule) = &timing.schedule else {
            return true;
        };
        let zone = &env.config.daemon.timezone;
        let Some(at) = schedule.next_after(after, zone) else {
            tracing::warn!(
                "{} {db}: schedule {:?} has no future run",
                kind.as_str(),
                schedule.text()
            );
            return true;
        };
        let jitter = timing.jitter;
        inner
            .next_runs
            .lock()
            .unwrap()
            .insert((db.clone(), kind), at);
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        if wait < SHORT_WAIT {
            let (inner2, cron2) = (inner.clone(), cron.clone());
            inner
                .tracker
                .spawn(fire(cron2, inner2, db, kind, at, jitter, generation));
            return true;
        }
        let instant = std::time::Instant::now() + wait;
        let (inner2, cron2) = (inner.clone(), cron.clone());
        let key = (db.clone(), kind);
        let job = Job::new_one_shot_at_instant_async(instant, move |_id, _locked| {
            let (inner, cron, db) = (inner2.clone(), cron2.clone(), db.clone());
            Box::pin(async move {
                let tracker = inner.tracker.clone();
                tracker.spawn(fire(cron, inner, db, kind, at, jitter, generation));
            })
        });
        match job {
            Ok(job) => match cron.add(job).await {
                Ok(id) => {
                    inner.armed_ids.lock().unwrap().insert(key, id);
                }
                Err(e) => tracing::error!("{} {}: cannot arm the timer: {e}", kind.as_str(), key.0),
            },
            Err(e) => tracing::error!("{} {}: cannot arm the timer: {e}", kind.as_str(), key.0),
        }
        true
    })
}

/// A timer armed for `at` went off (the crate's may go off early: it fires on whole
/// seconds): wait until `at`, arm the next run, then run this one — unless a reload replaced
/// the configuration meanwhile, which armed this job again: a stale timer neither runs nor
/// re-arms, so one job never gets a second chain of timers.
async fn fire(
    cron: JobScheduler,
    inner: Arc<Inner>,
    db: String,
    kind: JobKind,
    at: DateTime<Utc>,
    jitter: std::time::Duration,
    generation: u64,
) {
    if inner.generation.load(Ordering::SeqCst) != generation {
        return;
    }
    let early = (at - Utc::now()).to_std().unwrap_or_default();
    let cancel = inner.env().cancel;
    if !jobs::sleep_unless_cancelled(early, &cancel).await {
        return;
    }
    if !arm(&cron, &inner, db.clone(), kind, at, generation).await {
        return;
    }
    inner.publish_status();
    if let Some(fleet) = db.strip_prefix(FLEET) {
        inner.dispatch_fleet(fleet.to_string(), kind, jitter).await;
        return;
    }
    let delay = crate::schedule::jitter_delay(jitter);
    if !delay.is_zero() {
        tracing::debug!(
            "{} {db}: waiting {} ms of jitter",
            kind.as_str(),
            delay.as_millis()
        );
        if !jobs::sleep_unless_cancelled(delay, &cancel).await {
            return;
        }
    }
    inner.dispatch(db, kind, Trigger::Schedule).await;
}
