//! The state database's unit tests: history, queue, totals, interrupted runs.

use super::*;
use crate::domain::{ExitCode, JobKind, Outcome, Report, RunState, Trigger};

fn report(id: &str, started: DateTime<Utc>) -> Report {
    Report {
        run_id: id.into(),
        database: "chat".into(),
        job: JobKind::Backup,
        trigger: Trigger::Cli,
        started,
        finished: started + chrono::Duration::seconds(1),
        duration_ms: 1000,
        outcome: Outcome::Ok,
        summary: "done".into(),
        figures: Default::default(),
        error: None,
        exit: ExitCode::Ok,
    }
}

#[test]
fn history_prunes_itself_and_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let state = State::open(dir.path(), Duration::from_secs(90 * 86400)).unwrap();
    let now = Utc::now();
    state
        .finish(
            &report("old", now - chrono::Duration::days(100)),
            NINETY_DAYS,
        )
        .unwrap();
    assert_eq!(state.count().unwrap(), 1);
    state
        .finish(
            &report("recent", now - chrono::Duration::days(10)),
            NINETY_DAYS,
        )
        .unwrap();
    assert_eq!(
        state.count().unwrap(),
        1,
        "a run 100 days old goes once a newer run is recorded"
    );
    state.finish(&report("new", now), NINETY_DAYS).unwrap();
    assert_eq!(state.count().unwrap(), 2);
    let last = state.last_run("chat", JobKind::Backup).unwrap().unwrap();
    assert_eq!(last.id, "new");
    assert_eq!(last.outcome, RunState::Finished(Outcome::Ok));
    assert_eq!(last.duration_ms, Some(1000));
}

const NINETY_DAYS: Duration = Duration::from_secs(90 * 86400);

#[test]
fn a_database_keeps_its_own_history_length() {
    let dir = tempfile::tempdir().unwrap();
    let state = State::open(dir.path(), NINETY_DAYS).unwrap();
    let now = Utc::now();
    let week = Duration::from_secs(7 * 86400);
    let mut other = report("other-old", now - chrono::Duration::days(20));
    other.database = "blobs".into();
    state.finish(&other, NINETY_DAYS).unwrap();
    state
        .finish(&report("old", now - chrono::Duration::days(20)), week)
        .unwrap();
    state.finish(&report("new", now), week).unwrap();
    let c = Connection::open(state.path()).unwrap();
    let ids: Vec<String> = c
        .prepare("SELECT id FROM runs ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        ids,
        ["new", "other-old"],
        "chat's 20-day-old run goes (it keeps 7 days), blobs' stays (90 days)"
    );
}

#[test]
fn the_run_just_recorded_stays_however_short_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let state = State::open(dir.path(), Duration::ZERO).unwrap();
    state
        .finish(&report("long", Utc::now()), Duration::ZERO)
        .unwrap();
    assert_eq!(state.count().unwrap(), 1);
    assert_eq!(
        state.last_run("chat", JobKind::Backup).unwrap().unwrap().id,
        "long"
    );
}

#[test]
fn queued_runs_are_recorded_cleared_and_stale_when_their_daemon_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let state = State::open(dir.path(), Duration::from_secs(86400)).unwrap();
    let since = from_ms(ms(Utc::now()));
    let keys = [
        ("chat".to_string(), JobKind::Backup),
        ("logs".to_string(), JobKind::Backup),
    ];
    state
        .set_queued(&[("chat".into(), JobKind::Backup, since)])
        .unwrap();
    assert_eq!(state.queued_since(&keys).unwrap(), [Some(since), None]);
    state.clear_queued(&keys[..1]).unwrap();
    assert_eq!(state.queued_since(&keys).unwrap(), [None, None]);
    state
        .set_queued(&[("logs".into(), JobKind::Backup, since)])
        .unwrap();
    let c = Connection::open(state.path()).unwrap();
    c.execute("UPDATE queued SET pid = 2147483000", []).unwrap();
    assert_eq!(state.queued_since(&keys).unwrap(), [None, None]);
}

#[test]
fn run_totals_count_each_finished_run_once_and_survive_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let state = State::open(dir.path(), NINETY_DAYS).unwrap();
    let now = Utc::now();
    state.finish(&report("a", now), NINETY_DAYS).unwrap();
    let mut failed = report("b", now);
    failed.outcome = Outcome::Failed;
    state.finish(&failed, NINETY_DAYS).unwrap();
    let mut reader = HistoryReader::open(state.path(), false).unwrap();
    reader.tally().unwrap();
    reader.tally().unwrap();
    assert_eq!(
        reader.run_totals("chat", JobKind::Backup).unwrap(),
        [1, 1, 0, 0]
    );
    // A short history keeps only the newest run; the totals keep counting.
    state.finish(&report("c", now), Duration::ZERO).unwrap();
    reader.tally().unwrap();
    assert_eq!(
        reader.run_totals("chat", JobKind::Backup).unwrap(),
        [2, 1, 0, 0]
    );
    let h = reader.history("chat", JobKind::Backup).unwrap();
    assert_eq!(h.latest.unwrap().id, "c");
    assert_eq!(h.failed_in_a_row, 0);
}

#[test]
fn a_run_whose_process_died_reads_as_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let state = State::open(dir.path(), Duration::from_secs(86400)).unwrap();
    state
        .start("r1", "chat", JobKind::Prune, Trigger::Schedule, Utc::now())
        .unwrap();
    let outcome = || {
        state
            .last_run("chat", JobKind::Prune)
            .unwrap()
            .unwrap()
            .outcome
    };
    assert_eq!(outcome(), RunState::Running);
    let c = Connection::open(state.path()).unwrap();
    c.execute("UPDATE runs SET pid = 2147483000", []).unwrap();
    assert_eq!(outcome(), RunState::Interrupted);
}
