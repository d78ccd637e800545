//! The scheduler's one state: everything its timers, queues and STATUS= share, in one struct
//! behind one mutex (`Inner::state`), and the decisions that read only that state.
//!
//! A std mutex, as in mini-redis: it is never held across an `.await`, only for the few map
//! operations of a decision, so a tokio mutex would only add cost.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::roster::Roster;
use crate::config::{Config, Database, Timing};
use crate::jobs::{Env, JobKind};

/// What a timer runs: a database's job, or a fleet's (for every member found at the tick).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    Database(String),
    /// By the fleet's name template (`tenant-{stem}`).
    Fleet(String),
}

impl Target {
    fn prefix(&self) -> &'static str {
        match self {
            Target::Database(_) => "",
            Target::Fleet(_) => "fleet:",
        }
    }

    fn name(&self) -> &str {
        match self {
            Target::Database(n) | Target::Fleet(n) => n,
        }
    }
}

/// As in messages and STATUS=: `chat`, `fleet:tenant-{stem}`.
impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.prefix(), self.name())
    }
}

/// Ordered as the text it shows (which of two timers due at once STATUS= names first).
impl Ord for Target {
    fn cmp(&self, other: &Self) -> Ordering {
        let text = |t: &Target| {
            t.prefix()
                .bytes()
                .chain(t.name().bytes())
                .collect::<Vec<u8>>()
        };
        text(self).cmp(&text(other))
    }
}

impl PartialOrd for Target {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A timer: one per scheduled (target, job).
pub(crate) type TimerKey = (Target, JobKind);
/// A run: one per (database, job), fleet members by their own name.
pub(crate) type RunKey = (String, JobKind);

/// What the service manager was last told (STATUS=) and when.
#[derive(Default)]
pub(crate) struct StatusSent {
    pub text: Option<String>,
    pub at: Option<tokio::time::Instant>,
    /// A send is scheduled for the end of the current gap; it will compute the newest text.
    pub pending: bool,
}

/// Everything the scheduler's tasks share.
pub(crate) struct State {
    /// What jobs run with; swapped whole on reload.
    pub env: Env,
    /// `max_concurrent_jobs` of the current configuration.
    pub permits: Arc<Semaphore>,
    /// Bumped by every reload: a timer armed for an older one neither runs nor re-arms.
    pub generation: u64,
    /// Timers the timer crate holds, to remove on reload.
    pub armed: HashMap<TimerKey, Uuid>,
    pub next_runs: BTreeMap<TimerKey, DateTime<Utc>>,
    /// Runs queued or running: a tick for one of them is coalesced.
    pub queued: HashSet<RunKey>,
    pub running: Vec<RunKey>,
    /// Runs recorded as queued in the state DB (they wait for a permit or their database's
    /// queue), with the state DB they were recorded in; cleared when they start.
    pub queued_rows: HashMap<RunKey, crate::state::State>,
    /// STATUS= as last sent, and whether a delayed send is pending (see `publish_status`).
    pub status: StatusSent,
    /// One job per database at a time: a run holds its database's queue.
    pub db_queues: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Fleet members as last scanned.
    pub roster: Roster,
}

impl State {
    pub(super) fn new(env: Env) -> State {
        let permits = Arc::new(Semaphore::new(env.config.daemon.max_concurrent_jobs));
        State {
            env,
            permits,
            generation: 0,
            armed: HashMap::new(),
            next_runs: BTreeMap::new(),
            queued: HashSet::new(),
            running: Vec::new(),
            queued_rows: HashMap::new(),
            status: StatusSent::default(),
            db_queues: HashMap::new(),
            roster: Roster::default(),
        }
    }

    /// A reload: the new configuration, its permits, the next generation; no timer is armed
    /// and no next run known until `arm_all`. Returns the timers to remove.
    pub(super) fn replace(&mut self, env: Env) -> Vec<Uuid> {
        self.permits = Arc::new(Semaphore::new(env.config.daemon.max_concurrent_jobs));
        self.env = env;
        self.generation += 1;
        self.next_runs.clear();
        std::mem::take(&mut self.armed).into_values().collect()
    }

    /// Whether a timer armed for `generation` belongs to the current configuration.
    pub(super) fn is_current(&self, generation: u64) -> bool {
        self.generation == generation
    }

    /// Take a run's place in the queue; false when the same run is already queued or running
    /// (the tick is coalesced).
    pub(super) fn enqueue(&mut self, key: &RunKey) -> bool {
        self.queued.insert(key.clone())
    }

    /// The database or fleet template a timer's target names now, and its job's timing.
    pub(super) fn timing(&self, target: &Target, kind: JobKind) -> Option<&Timing> {
        let config = &self.env.config;
        let database = match target {
            Target::Fleet(fleet) => config.fleet(fleet).map(|f| &f.template),
            Target::Database(db) => config.database(db),
        };
        database?.timing(kind)
    }

    /// The database a run names in `config` (or the roster), if it still has a schedule for
    /// `kind` (a reload may have removed the job or the database since the run was queued).
    pub(super) fn runnable(
        &self,
        config: &Config,
        db: &str,
        kind: JobKind,
    ) -> Option<Arc<Database>> {
        config
            .database(db)
            .cloned()
            .or_else(|| self.roster.member(db))
            .filter(|d| d.timing(kind).is_some_and(|t| t.schedule.is_some()))
    }

    pub(super) fn db_queue(&mut self, db: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.db_queues.entry(db.to_string()).or_default().clone()
    }

    /// Forget the queue of a database nobody else waits for (`held` is the caller's
    /// reference): fleet members come and go, and their queues would pile up.
    pub(super) fn forget_queue(&mut self, db: &str, held: &Arc<tokio::sync::Mutex<()>>) {
        if Arc::strong_count(held) == 2 {
            self.db_queues.remove(db);
        }
    }

    pub(super) fn running_names(&self) -> Vec<String> {
        self.running
            .iter()
            .map(|(db, k)| format!("{} {db}", k.as_str()))
            .collect()
    }

    /// "running prune chat" or "idle; next: backup chat at 02:00" (the earliest run still
    /// ahead of `now`: a timer that is going off right now is not "next"); once shutdown has
    /// begun, "stopping; waiting for …" / "stopping" (no next run will come).
    pub(super) fn status_text(&self, now: DateTime<Utc>) -> String {
        let running = self.running_names();
        if self.env.cancel.is_cancelled() {
            if running.is_empty() {
                "stopping".to_string()
            } else {
                format!("stopping; waiting for {}", running.join(", "))
            }
        } else if !running.is_empty() {
            format!("running {}", running.join(", "))
        } else {
            match self
                .next_runs
                .iter()
                .filter(|(_, t)| **t > now)
                .min_by_key(|(_, t)| **t)
            {
                Some(((target, k), t)) => {
                    let zone = &self.env.config.daemon.timezone;
                    format!("idle; next: {} {target} at {}", k.as_str(), zone.format(*t))
                }
                None if self.next_runs.is_empty() => "idle; nothing scheduled".to_string(),
                None => "idle".to_string(),
            }
        }
    }
}
