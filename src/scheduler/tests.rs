//! The scheduler's logic on tokio's paused time: the real timers, queues, generations and
//! roster, with a clock that follows tokio's, timers that are tokio sleeps, and runs that are
//! recorded (and take `busy` each) instead of jobs. Real jobs run in `tests/daemon.rs`,
//! `tests/fleet.rs` and `tests/catch_up.rs`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::roster::{self, Changes, Roster};
use super::state::{State, Target};
use super::{BoxFuture, Effects, OnFire, Scheduler};
use crate::jobs::{Env, JobKind, Request, Trigger};

/// Effects on paused time; runs are recorded as (database, trigger, started at).
struct Fake {
    base: DateTime<Utc>,
    t0: tokio::time::Instant,
    busy: Duration,
    runs: Mutex<Vec<(String, Trigger, DateTime<Utc>)>>,
}

impl Fake {
    fn new(base: DateTime<Utc>, busy: Duration) -> Arc<Fake> {
        Arc::new(Fake {
            base,
            t0: tokio::time::Instant::now(),
            busy,
            runs: Mutex::new(Vec::new()),
        })
    }

    /// The runs so far, to the second.
    fn runs(&self) -> Vec<(String, Trigger, String)> {
        self.runs
            .lock()
            .unwrap()
            .iter()
            .map(|(db, t, at)| (db.clone(), *t, at.format("%m-%dT%H:%M:%S").to_string()))
            .collect()
    }

    /// Let `d` of (paused) time pass.
    async fn pass(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
}

impl Effects for Fake {
    fn now(&self) -> DateTime<Utc> {
        self.base + chrono::Duration::from_std(self.t0.elapsed()).unwrap()
    }

    fn set_timer(
        &self,
        wait: Duration,
        fire: OnFire,
    ) -> BoxFuture<'_, Result<Option<Uuid>, String>> {
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            fire();
        });
        Box::pin(async { Ok(None) })
    }

    fn remove_timer(&self, _id: Uuid) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn timers_held(&self) -> BoxFuture<'_, usize> {
        Box::pin(async { 0 })
    }

    fn stop_timers(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn run(&self, _env: Env, req: Request) -> BoxFuture<'static, ()> {
        let now = self.now();
        self.runs
            .lock()
            .unwrap()
            .push((req.db.name.clone(), req.trigger, now));
        let busy = self.busy;
        Box::pin(async move { tokio::time::sleep(busy).await })
    }
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

/// An `Env` for `toml` (databases need not exist: no job runs) with its state DB in `dir`.
fn env(dir: &Path, toml: &str) -> Env {
    let defaults = crate::paths::Defaults {
        config_file: dir.join("lk.toml"),
        state_dir: dir.join("state"),
        lock_dir: dir.join("lock"),
    };
    let config = crate::config::load_str(toml, &dir.join("lk.toml"), &defaults, &[]).unwrap();
    let config = super::roster::with_members(config);
    let state =
        crate::state::State::open(&dir.join("state"), config.longest_keep_history()).unwrap();
    Env {
        pools: crate::sqlite::Pools::default(),
        config: Arc::new(config),
        state,
        cancel: CancellationToken::new(),
        metrics: Default::default(),
        pings: Default::default(),
    }
}

fn vacuum(zone: &str, databases: &[(&str, &str)]) -> String {
    let mut toml = format!("[daemon]\ntimezone = \"{zone}\"\n");
    for (name, schedule) in databases {
        toml.push_str(&format!(
            "[[database]]\nname = \"{name}\"\npath = \"/nowhere/{name}.db\"\n\
             [database.vacuum]\nschedule = \"{schedule}\"\n"
        ));
    }
    toml
}

fn runs_of(fake: &Fake, db: &str) -> Vec<String> {
    fake.runs()
        .into_iter()
        .filter(|(d, _, _)| d == db)
        .map(|(_, _, at)| at)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn dst_days_run_once_a_day_and_intervals_follow_real_time() {
    let dir = tempfile::tempdir().unwrap();
    // Berlin springs forward on 2026-03-29 at 02:00 (01:00 UTC), falls back on 2026-10-25 at
    // 03:00 (01:00 UTC).
    let toml = vacuum(
        "Europe/Berlin",
        &[("daily", "30 2 * * *"), ("half", "*/30 * * * *")],
    );
    let fake = Fake::new(at("2026-03-28T00:00:00Z"), Duration::ZERO);
    let _s = Scheduler::with_effects(env(dir.path(), &toml), fake.clone()).await;
    fake.pass(Duration::from_secs(3 * 86400 + 600)).await;
    // 02:30 CET; 02:30 is in the gap: at its end (03:00 CEST); 02:30 CEST.
    assert_eq!(
        runs_of(&fake, "daily"),
        ["03-28T01:30:00", "03-29T01:00:00", "03-30T00:30:00"]
    );
    // Every 30 minutes of real time, the lost hour included.
    assert_eq!(runs_of(&fake, "half").len(), 3 * 48);

    let fake = Fake::new(at("2026-10-24T00:00:00Z"), Duration::ZERO);
    let _s = Scheduler::with_effects(env(dir.path(), &toml), fake.clone()).await;
    fake.pass(Duration::from_secs(3 * 86400 + 600)).await;
    // 02:30 CEST; the repeated 02:30 runs once, at its first occurrence; 02:30 CET.
    assert_eq!(
        runs_of(&fake, "daily"),
        ["10-24T00:30:00", "10-25T00:30:00", "10-26T01:30:00"]
    );
    // Through both readings of the repeated hour.
    let half = runs_of(&fake, "half");
    assert_eq!(half.len(), 3 * 48);
    for t in ["10-25T00:30:00", "10-25T01:00:00", "10-25T01:30:00"] {
        assert!(half.iter().any(|h| h == t), "{t} missing: {half:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn catch_up_runs_a_missed_job_once_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let toml = vacuum(
        "UTC",
        &[
            ("missed", "0 3 * * *"),
            ("recent", "0 3 * * *"),
            ("never", "0 3 * * *"),
        ],
    );
    let now = at("2026-06-10T12:00:00Z");
    let env = env(dir.path(), &toml);
    for (db, last) in [
        ("missed", "2026-06-08T03:00:00Z"),
        ("recent", "2026-06-10T03:00:00Z"),
    ] {
        let id = format!("run-{db}");
        let trigger = Trigger::Schedule;
        env.state
            .start(&id, db, JobKind::Vacuum, trigger, at(last))
            .unwrap();
    }
    let fake = Fake::new(now, Duration::from_secs(5));
    let s = Scheduler::with_effects(env, fake.clone()).await;
    s.catch_up().await;
    fake.pass(Duration::from_secs(60)).await;
    assert_eq!(
        fake.runs(),
        [(
            "missed".to_string(),
            Trigger::CatchUp,
            "06-10T12:00:00".to_string()
        )]
    );
    // The decision itself: the last run's next time passed.
    let schedule = crate::schedule::Schedule::parse("0 3 * * *").unwrap();
    let utc = crate::schedule::Zone::parse("UTC").unwrap();
    assert!(super::missed(
        Some(at("2026-06-09T03:00:00Z")),
        &schedule,
        &utc,
        now
    ));
    assert!(!super::missed(
        Some(at("2026-06-10T03:00:00Z")),
        &schedule,
        &utc,
        now
    ));
    assert!(!super::missed(None, &schedule, &utc, now));
}

#[tokio::test(start_paused = true)]
async fn ticks_for_a_busy_database_are_coalesced() {
    let dir = tempfile::tempdir().unwrap();
    let toml = vacuum("UTC", &[("chat", "* * * * * *")]);
    // Each run takes 3.5 s: the ticks of the seconds it runs through are dropped.
    let fake = Fake::new(at("2026-06-10T12:00:00Z"), Duration::from_millis(3500));
    let _s = Scheduler::with_effects(env(dir.path(), &toml), fake.clone()).await;
    fake.pass(Duration::from_millis(10_500)).await;
    assert_eq!(
        runs_of(&fake, "chat"),
        ["06-10T12:00:01", "06-10T12:00:05", "06-10T12:00:09"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_timer_armed_before_a_reload_neither_runs_nor_rearms() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(at("2026-06-10T00:00:00Z"), Duration::ZERO);
    let hourly = vacuum("UTC", &[("chat", "0 * * * *")]);
    let s = Scheduler::with_effects(env(dir.path(), &hourly), fake.clone()).await;
    fake.pass(Duration::from_secs(600)).await;
    // The fake's timers cannot be removed: the one armed for 01:00 still goes off.
    let half_past = vacuum("UTC", &[("chat", "30 * * * *")]);
    s.reload(env(dir.path(), &half_past)).await;
    fake.pass(Duration::from_secs(600)).await;
    s.reload(env(dir.path(), &half_past)).await;
    fake.pass(Duration::from_secs(2 * 3600)).await;
    // Only the newest configuration's timers, one chain of them.
    assert_eq!(runs_of(&fake, "chat"), ["06-10T00:30:00", "06-10T01:30:00"]);
    let mut st = State::new(env(dir.path(), &hourly));
    assert!(st.is_current(0));
    st.replace(env(dir.path(), &hourly));
    assert!(!st.is_current(0) && st.is_current(1));
}

fn fleet_toml(dir: &Path) -> String {
    format!(
        "[daemon]\ntimezone = \"UTC\"\n[[database]]\nname = \"t-{{stem}}\"\npath = \"{}/*.db\"\n\
         [database.vacuum]\nschedule = \"0 * * * *\"\n",
        dir.join("tenants").display()
    )
}

#[tokio::test(start_paused = true)]
async fn fleet_members_added_and_removed_between_ticks() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    std::fs::create_dir(&tenants).unwrap();
    for f in ["a.db", "b.db"] {
        std::fs::write(tenants.join(f), "").unwrap();
    }
    let fake = Fake::new(at("2026-06-10T00:30:00Z"), Duration::from_secs(1));
    let _s = Scheduler::with_effects(env(dir.path(), &fleet_toml(dir.path())), fake.clone()).await;
    fake.pass(Duration::from_secs(40 * 60)).await;
    std::fs::remove_file(tenants.join("b.db")).unwrap();
    std::fs::write(tenants.join("c.db"), "").unwrap();
    fake.pass(Duration::from_secs(3600)).await;
    let mut runs = fake.runs();
    runs.sort_by(|a, b| (&a.2, &a.0).cmp(&(&b.2, &b.0)));
    let runs: Vec<(String, String)> = runs.into_iter().map(|(d, _, at)| (at, d)).collect();
    let expect = [
        ("06-10T01:00:00", "t-a"),
        ("06-10T01:00:00", "t-b"),
        ("06-10T02:00:00", "t-a"),
        ("06-10T02:00:00", "t-c"),
    ];
    let expect: Vec<(String, String)> = expect
        .iter()
        .map(|(a, d)| (a.to_string(), d.to_string()))
        .collect();
    assert_eq!(runs, expect);
}

#[test]
fn roster_reports_each_change_once() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    std::fs::create_dir(&tenants).unwrap();
    for f in ["a.db", "b.db", "-bad.db"] {
        std::fs::write(tenants.join(f), "").unwrap();
    }
    let env = env(dir.path(), &fleet_toml(dir.path()));
    let config = &env.config;
    let mut roster = Roster::default();
    let loaded = roster.load(config);
    assert_eq!(loaded.len(), 1);
    let (fleet, first) = &loaded[0];
    // The first scan reports no member as new, and the refused file once.
    assert!(first.appeared.is_empty() && first.vanished.is_empty());
    assert_eq!(first.refused.len(), 1);
    assert!(roster.member("t-b").is_some());

    std::fs::remove_file(tenants.join("b.db")).unwrap();
    std::fs::write(tenants.join("c.db"), "").unwrap();
    let scan = roster::scan(config, fleet).unwrap();
    let changes = roster.apply(fleet, &scan);
    let c_path = tenants.join("c.db").display().to_string();
    let b_path = tenants.join("b.db").display().to_string();
    assert_eq!(changes.appeared, [("t-c".to_string(), c_path)]);
    assert_eq!(changes.vanished, [("t-b".to_string(), b_path)]);
    assert!(changes.refused.is_empty());
    assert!(roster.member("t-b").is_none() && roster.member("t-c").is_some());
    // Nothing changed: nothing to say.
    assert_eq!(roster.apply(fleet, &scan), Changes::default());
    assert_eq!(
        Target::Fleet("t-{stem}".into()).to_string(),
        "fleet:t-{stem}"
    );
}
