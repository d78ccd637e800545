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
//!
//! Layout: `state` (the one `State` under one mutex, `Target`, the decisions on it),
//! `roster` (fleet membership, scanned per tick), `feeder` (starting many runs under the
//! permits, shared with `litekeeper run <fleet>`). The side effects — the clock, the timer
//! crate, running a job — go through `Effects`, so unit tests drive the same logic with
//! tokio's paused time and recorded runs (`tests`).

mod feeder;
pub mod roster;
mod state;
#[cfg(test)]
mod tests;

pub(crate) use feeder::{feed, plan, Feed};

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::OwnedSemaphorePermit;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::jobs::{self, Env, JobKind, Request, Trigger};
use crate::schedule::{Schedule, Zone};
use state::{RunKey, State, Target};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a timer does when it goes off (it may be called more than once: it spawns).
pub(crate) type OnFire = Arc<dyn Fn() + Send + Sync>;

/// The scheduler's side effects. The daemon's (`CronTimers`) use the wall clock,
/// tokio-cron-scheduler and `jobs::execute`; unit tests supply a clock and timers on tokio's
/// paused time and record the runs instead of running jobs.
pub(crate) trait Effects: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    /// Call `fire` once, `wait` from now. Returns the timer's id if a reload must remove it.
    fn set_timer(
        &self,
        wait: Duration,
        fire: OnFire,
    ) -> BoxFuture<'_, Result<Option<Uuid>, String>>;
    fn remove_timer(&self, id: Uuid) -> BoxFuture<'_, ()>;
    /// How many timers are held (armed and not yet fired or removed), for the reload log.
    fn timers_held(&self) -> BoxFuture<'_, usize>;
    /// Stop every timer (shutdown).
    fn stop_timers(&self) -> BoxFuture<'_, ()>;
    /// Run one job to its end.
    fn run(&self, env: Env, req: Request) -> BoxFuture<'static, ()>;
}

/// The daemon's effects: the wall clock, tokio-cron-scheduler, `jobs::execute`.
struct CronTimers {
    cron: JobScheduler,
}

/// Waits shorter than this are timed with a plain tokio sleep, not a tokio-cron-scheduler job.
/// The crate turns an instant into a tick in whole seconds (truncating: a job less than a
/// second away is due at once), and it registers a job's metadata and its code in two
/// independent tasks: a job already due when added can be activated before its code is there,
/// and is then dropped ("Error getting … from job code") — and with it every later run of
/// the schedule, since each run arms the next. Seen with `* * * * * *` every few seconds.
/// From two seconds on, the crate's tick is at least a second after the job is added.
const SHORT_WAIT: Duration = Duration::from_secs(2);

impl Effects for CronTimers {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn set_timer(
        &self,
        wait: Duration,
        fire: OnFire,
    ) -> BoxFuture<'_, Result<Option<Uuid>, String>> {
        Box::pin(async move {
            if wait < SHORT_WAIT {
                // `fire` waits for the instant itself.
                fire();
                return Ok(None);
            }
            let instant = std::time::Instant::now() + wait;
            let job = Job::new_one_shot_at_instant_async(instant, move |_id, _locked| {
                let fire = fire.clone();
                Box::pin(async move { fire() })
            })
            .map_err(|e| e.to_string())?;
            self.cron
                .add(job)
                .await
                .map(Some)
                .map_err(|e| e.to_string())
        })
    }

    fn remove_timer(&self, id: Uuid) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.cron.remove(&id).await;
        })
    }

    fn timers_held(&self) -> BoxFuture<'_, usize> {
        Box::pin(async move {
            let store = self.cron.context().metadata_storage.clone();
            let mut store = store.write().await;
            store.list_next_ticks().await.map_or(0, |t| t.len())
        })
    }

    fn stop_timers(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.cron.clone().shutdown().await;
        })
    }

    fn run(&self, env: Env, req: Request) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            jobs::execute(&env, req).await;
        })
    }
}

pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    /// Everything the tasks share, under one lock (see `state`).
    state: Mutex<State>,
    effects: Arc<dyn Effects>,
    tracker: TaskTracker,
}

/// STATUS= is sent at most once per this gap (a change within it is sent at its end, as the
/// state is then): jobs start and end many times a second, and systemd keeps every update.
const STATUS_GAP: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
#[error("scheduler: {0}")]
pub struct SchedulerError(String);

/// Whether a job whose last run started at `last` missed a scheduled run before `now` (jobs
/// that never ran are not caught up).
pub(crate) fn missed(
    last: Option<DateTime<Utc>>,
    schedule: &Schedule,
    zone: &Zone,
    now: DateTime<Utc>,
) -> bool {
    last.is_some_and(|l| schedule.next_after(l, zone).is_some_and(|due| due < now))
}

impl Scheduler {
    /// Start the timer and arm every scheduled job of `env.config`.
    pub async fn start(env: Env) -> Result<Scheduler, SchedulerError> {
        let cron = JobScheduler::new()
            .await
            .map_err(|e| SchedulerError(e.to_string()))?;
        cron.start()
            .await
            .map_err(|e| SchedulerError(e.to_string()))?;
        Ok(Scheduler::with_effects(env, Arc::new(CronTimers { cron })).await)
    }

    /// `start`, with the given side effects.
    pub(crate) async fn with_effects(env: Env, effects: Arc<dyn Effects>) -> Scheduler {
        let inner = Arc::new(Inner {
            state: Mutex::new(State::new(env)),
            effects,
            tracker: TaskTracker::new(),
        });
        // Nothing a previous daemon queued is still waiting (one daemon per state_dir).
        let state = inner.env().state;
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || state.clear_all_queued()).await {
            tracing::warn!("could not clear the queued runs of a previous daemon: {e}");
        }
        let s = Scheduler { inner };
        s.arm_all().await;
        s
    }

    /// Run, once, every job whose last scheduled time passed since its last recorded run
    /// (like systemd's `Persistent=true`). Jobs that never ran are not caught up. A fleet's
    /// members are judged one by one and fed like a tick, spread over the job's jitter.
    pub async fn catch_up(&self) {
        let env = self.inner.env();
        if !env.config.daemon.catch_up {
            return;
        }
        let now = self.inner.effects.now();
        let zone = env.config.daemon.timezone.clone();
        // When each database's jobs last started: one query per job kind.
        let state = env.state.clone();
        let last = tokio::task::spawn_blocking(move || {
            JobKind::ALL
                .into_iter()
                .map(|k| Ok((k, state.last_starts(k)?)))
                .collect::<Result<std::collections::HashMap<_, _>, crate::state::StateError>>()
        })
        .await
        .ok()
        .and_then(Result::ok);
        let Some(last) = last else {
            return;
        };
        let missed = |db: &crate::config::Database, kind: JobKind, schedule: &Schedule| {
            let last = last.get(&kind).and_then(|l| l.get(&db.name)).copied();
            missed(last, schedule, &zone, now)
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
    /// configuration they started with; timers armed before neither run nor re-arm.
    pub async fn reload(&self, env: Env) {
        let old_timers = self.inner.state.lock().unwrap().replace(env);
        for id in old_timers {
            self.inner.effects.remove_timer(id).await;
        }
        self.arm_all().await;
        if tracing::enabled!(tracing::Level::DEBUG) {
            let (jobs, armed, queues) = {
                let st = self.inner.state.lock().unwrap();
                let config = &st.env.config;
                (
                    config.scheduled_jobs().count() + config.fleet_jobs().count(),
                    st.armed.len(),
                    st.db_queues.len(),
                )
            };
            let held = self.inner.effects.timers_held().await;
            tracing::debug!(
                "reloaded: {jobs} job(s), {armed} timers armed, {held} held by the timer crate, {queues} database queue(s)"
            );
        }
    }

    /// Arm every scheduled job of the current configuration from now, and take its fleets'
    /// members.
    async fn arm_all(&self) {
        let after = self.inner.effects.now();
        let (env, generation) = {
            let st = self.inner.state.lock().unwrap();
            (st.env.clone(), st.generation)
        };
        for (db, kind, _) in env.config.scheduled_jobs() {
            let target = Target::Database(db.name.clone());
            arm(&self.inner, target, kind, after, generation).await;
        }
        let changes = self.inner.state.lock().unwrap().roster.load(&env.config);
        for (fleet, changes) in changes {
            changes.log(&fleet);
        }
        for (fleet, kind, _) in env.config.fleet_jobs() {
            let target = Target::Fleet(fleet.name.clone());
            arm(&self.inner, target, kind, after, generation).await;
        }
        self.inner.send_status(None, false);
    }

    /// Stop arming, fire the cancel token, and wait for running jobs to reach a safe point.
    pub async fn shutdown(self) {
        self.inner.effects.stop_timers().await;
        self.inner.env().cancel.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        // Runs a fleet's feeder had queued and never started.
        let left: Vec<RunKey> = {
            let st = self.inner.state.lock().unwrap();
            st.queued_rows.keys().cloned().collect()
        };
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
        self.inner.state.lock().unwrap().running_names()
    }
}

impl Inner {
    fn env(&self) -> Env {
        self.state.lock().unwrap().env.clone()
    }

    /// Tell the service manager the state when it changed: at once if the last STATUS= is at
    /// least `STATUS_GAP` old, else once at the end of that gap, with the state as it is then
    /// (never a text computed earlier, whose "next" may have passed). Once shutdown has begun
    /// every change goes out at once (the process is about to end).
    fn publish_status(self: &Arc<Self>) {
        let due = {
            let mut st = self.state.lock().unwrap();
            let stopping = st.env.cancel.is_cancelled();
            if st.status.pending && !stopping {
                return;
            }
            let now = tokio::time::Instant::now();
            match st.status.at.map(|at| at + STATUS_GAP) {
                Some(due) if due > now && !stopping => {
                    st.status.pending = true;
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
            inner.state.lock().unwrap().status.pending = false;
            inner.send_status(None, false);
        });
    }

    /// Send `text` (or the current state's) as STATUS= if it differs from the last one sent,
    /// or always with `force`.
    fn send_status(&self, text: Option<String>, force: bool) {
        let now = self.effects.now();
        let mut st = self.state.lock().unwrap();
        let text = text.unwrap_or_else(|| st.status_text(now));
        if force || st.status.text.as_deref() != Some(text.as_str()) {
            crate::notify::status(&text);
            st.status.text = Some(text);
            st.status.at = Some(tokio::time::Instant::now());
        }
    }

    /// A fleet's job is due: scan its files again, report members that appeared or vanished
    /// (once), and feed the job to every member, each after its own random share of the
    /// jitter so a large fleet spreads over the window.
    async fn dispatch_fleet(self: Arc<Self>, fleet: String, kind: JobKind, jitter: Duration) {
        let config = self.env().config;
        let name = fleet.clone();
        let scanned = tokio::task::spawn_blocking(move || roster::scan(&config, &name))
            .await
            .ok()
            .flatten();
        let Some(scan) = scanned else {
            return;
        };
        let changes = self.state.lock().unwrap().roster.apply(&fleet, &scan);
        changes.log(&fleet);
        let names = scan.members.iter().map(|m| m.name.clone()).collect();
        drop(scan);
        self.feed(names, kind, Trigger::Schedule, jitter).await;
    }

    /// Start `kind` for each of `names` after its own random share of `jitter` (see `feeder`).
    async fn feed(
        self: &Arc<Self>,
        names: Vec<String>,
        kind: JobKind,
        trigger: Trigger,
        jitter: Duration,
    ) {
        let cancel = self.env().cancel;
        let mut daemon = DaemonFeed {
            inner: self.clone(),
            kind,
            trigger,
            started_at: self.effects.now(),
        };
        feed(&mut daemon, plan(names, jitter), &cancel).await;
    }

    /// Record in the state DB that these runs wait, each since it was due (`status` shows
    /// them as queued). Only runs not recorded yet are written: a run that never waits costs
    /// nothing.
    async fn mark_queued(&self, rows: Vec<(String, JobKind, DateTime<Utc>)>) {
        let (state, rows): (_, Vec<_>) = {
            let mut st = self.state.lock().unwrap();
            let state = st.env.state.clone();
            let rows = rows
                .into_iter()
                .filter(|(db, k, _)| {
                    st.queued_rows
                        .insert((db.clone(), *k), state.clone())
                        .is_none()
                })
                .collect();
            (state, rows)
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
    async fn unmark_queued(&self, key: &RunKey) {
        let Some(state) = self.state.lock().unwrap().queued_rows.remove(key) else {
            return;
        };
        let keys = [key.clone()];
        match tokio::task::spawn_blocking(move || state.clear_queued(&keys)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("could not clear a queued run: {e}"),
            Err(e) => tracing::warn!("could not clear a queued run: {e}"),
        }
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
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let key = (db.clone(), kind);
        let queue = {
            let mut st = self.state.lock().unwrap();
            if !st.enqueue(&key) {
                tracing::debug!(
                    "{} {db}: previous run still queued or running; tick coalesced",
                    kind.as_str()
                );
                return;
            }
            st.db_queue(&db)
        };
        let due = self.effects.now();
        let (turn, held) = match queue.try_lock() {
            Ok(turn) => (turn, permit),
            Err(_) => {
                drop(permit);
                self.mark_queued(vec![(db.clone(), kind, due)]).await;
                (queue.lock().await, None)
            }
        };
        let (env, permits) = {
            let st = self.state.lock().unwrap();
            (st.env.clone(), st.permits.clone())
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
        let database = self.state.lock().unwrap().runnable(&env.config, &db, kind);
        if let (Some(database), false) = (database, env.cancel.is_cancelled()) {
            self.state.lock().unwrap().running.push(key.clone());
            self.publish_status();
            let req = Request {
                db: database,
                kind,
                trigger,
                dry_run: false,
                on_busy: None,
                drill: Default::default(),
            };
            self.effects.run(env, req).await;
            self.state.lock().unwrap().running.retain(|k| k != &key);
        }
        self.state.lock().unwrap().queued.remove(&key);
        drop(turn);
        self.state.lock().unwrap().forget_queue(&db, &queue);
        self.publish_status();
    }
}

/// The daemon's side of a feed: a started member is dispatched on the tracker; members that
/// wait for a permit are recorded as queued (`status` shows them queued since they were due).
struct DaemonFeed {
    inner: Arc<Inner>,
    kind: JobKind,
    trigger: Trigger,
    started_at: DateTime<Utc>,
}

impl Feed for DaemonFeed {
    type Item = String;

    fn permits(&self) -> Arc<tokio::sync::Semaphore> {
        self.inner.state.lock().unwrap().permits.clone()
    }

    async fn waiting(&mut self, due: &[(Duration, String)]) {
        let kind = self.kind;
        let rows = {
            let st = self.inner.state.lock().unwrap();
            due.iter()
                .filter(|(_, n)| !st.queued.contains(&(n.clone(), kind)))
                .map(|(d, n)| {
                    let since =
                        self.started_at + chrono::Duration::from_std(*d).unwrap_or_default();
                    (n.clone(), kind, since)
                })
                .collect()
        };
        self.inner.mark_queued(rows).await;
    }

    fn start(&mut self, name: String, permit: OwnedSemaphorePermit) {
        let inner = self.inner.clone();
        let (kind, trigger) = (self.kind, self.trigger);
        self.inner
            .tracker
            .spawn(async move { inner.dispatch_with(name, kind, trigger, Some(permit)).await });
    }
}

/// Arm the next run of one job after `after`, as a one-shot timer of configuration
/// `generation`. Returns false, arming nothing, when a reload has replaced that configuration
/// (its own `arm_all` armed every job again). Boxed: it and `fire` call each other.
fn arm(
    inner: &Arc<Inner>,
    target: Target,
    kind: JobKind,
    after: DateTime<Utc>,
    generation: u64,
) -> BoxFuture<'_, bool> {
    Box::pin(async move {
        let (at, jitter) = {
            let mut st = inner.state.lock().unwrap();
            if !st.is_current(generation) {
                return false;
            }
            let Some(timing) = st.timing(&target, kind) else {
                return true;
            };
            let Some(schedule) = &timing.schedule else {
                return true;
            };
            let zone = &st.env.config.daemon.timezone;
            let Some(at) = schedule.next_after(after, zone) else {
                tracing::warn!(
                    "{} {target}: schedule {:?} has no future run",
                    kind.as_str(),
                    schedule.text()
                );
                return true;
            };
            let jitter = timing.jitter;
            st.next_runs.insert((target.clone(), kind), at);
            (at, jitter)
        };
        let wait = (at - inner.effects.now()).to_std().unwrap_or_default();
        let on_fire: OnFire = {
            let (inner, target) = (inner.clone(), target.clone());
            Arc::new(move || {
                let run = fire(inner.clone(), target.clone(), kind, at, jitter, generation);
                inner.tracker.spawn(run);
            })
        };
        match inner.effects.set_timer(wait, on_fire).await {
            Ok(Some(id)) => {
                inner.state.lock().unwrap().armed.insert((target, kind), id);
            }
            Ok(None) => {}
            Err(e) => tracing::error!("{} {target}: cannot arm the timer: {e}", kind.as_str()),
        }
        true
    })
}

/// A timer armed for `at` went off (the crate's may go off early: it fires on whole
/// seconds): wait until `at`, arm the next run, then run this one — unless a reload replaced
/// the configuration meanwhile, which armed this job again: a stale timer neither runs nor
/// re-arms, so one job never gets a second chain of timers.
async fn fire(
    inner: Arc<Inner>,
    target: Target,
    kind: JobKind,
    at: DateTime<Utc>,
    jitter: Duration,
    generation: u64,
) {
    if !inner.state.lock().unwrap().is_current(generation) {
        return;
    }
    let early = (at - inner.effects.now()).to_std().unwrap_or_default();
    let cancel = inner.env().cancel;
    if !jobs::sleep_unless_cancelled(early, &cancel).await {
        return;
    }
    if !arm(&inner, target.clone(), kind, at, generation).await {
        return;
    }
    inner.publish_status();
    let db = match target {
        Target::Fleet(fleet) => return inner.dispatch_fleet(fleet, kind, jitter).await,
        Target::Database(db) => db,
    };
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
