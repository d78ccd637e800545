//! How big the next prune batch may be: a model of what a batch costs under the write lock,
//! learnt from the batches so far, so each transaction stays under `max_lock` whatever the
//! rule's shape and however many dependants its rows carry; and how long to pause after it
//! ([`Pacer`]), so the app's writers it held off get in.

use std::time::Duration;

/// The first batch's rows of the rule's table, before anything was measured.
pub(crate) const FIRST_BATCH: usize = 500;

/// What a batch costs under the write lock, learnt from the batches so far: seconds per row
/// of the rule's table, per dependant row, and per transaction beyond its statements (BEGIN,
/// COMMIT). An estimate rises at once with a slower batch and falls by halves, so one cheap
/// batch cannot size the next into a long one.
#[derive(Debug, Default)]
pub(crate) struct LockModel {
    root: Option<f64>,
    dep: Option<f64>,
    /// Dependant rows per row of the rule's table.
    fanout: Option<f64>,
    fixed: f64,
}

/// Aim below the bound: a prediction is never exact.
const AIM: f64 = 0.8;

impl LockModel {
    fn update(est: &mut Option<f64>, obs: f64) {
        *est = Some(match *est {
            Some(e) if obs < e => (e + obs) / 2.0,
            _ => obs,
        });
    }

    pub(crate) fn learn(
        &mut self,
        rows: u64,
        root: Duration,
        deps: u64,
        dep: Duration,
        held: Duration,
    ) {
        let rows = rows.max(1) as f64;
        Self::update(&mut self.root, root.as_secs_f64() / rows);
        Self::update(&mut self.fanout, deps as f64 / rows);
        if deps > 0 {
            Self::update(&mut self.dep, dep.as_secs_f64() / deps as f64);
        }
        let mut fixed = Some(self.fixed);
        Self::update(&mut fixed, held.saturating_sub(root + dep).as_secs_f64());
        self.fixed = fixed.unwrap_or(0.0);
    }

    fn predict(&self, rows: u64, deps: u64) -> Option<f64> {
        let root = self.root?;
        Some(self.fixed + rows as f64 * root + deps as f64 * self.dep.unwrap_or(root))
    }

    /// Rows of the rule's table for the next batch: the first batch is `FIRST_BATCH`, then
    /// what the model says fits `target`, at most twice the last batch.
    pub(crate) fn rows_for(&self, target: f64, last: usize) -> usize {
        let Some(root) = self.root else {
            return FIRST_BATCH;
        };
        let per_row = root + self.fanout.unwrap_or(0.0) * self.dep.unwrap_or(root);
        // A transaction's fixed part beyond the bound is reported (one_row_ms), not chased
        // down to no rows at all.
        let room = (target * AIM - self.fixed).max(target * AIM * 0.2);
        ((room / per_row.max(1e-9)) as usize).min(last.saturating_mul(2).max(1))
    }

    /// Whether a batch of `rows` with `deps` dependants must shrink, and to how many rows.
    /// Before any batch ran, rows are the measure (`FIRST_BATCH` of them, dependants included).
    pub(crate) fn trim(&self, target: f64, rows: usize, deps: u64) -> Option<usize> {
        if rows <= 1 {
            return None;
        }
        let (cost, room) = match self.predict(rows as u64, deps) {
            Some(p) if p > target => (
                p - self.fixed,
                (target * AIM - self.fixed).max(target * AIM * 0.2),
            ),
            Some(_) => return None,
            None if rows as u64 + deps > (FIRST_BATCH as u64) * 3 / 2 => {
                ((rows as u64 + deps) as f64, FIRST_BATCH as f64)
            }
            None => return None,
        };
        let keep = (rows as f64 * room / cost.max(1e-12)) as usize;
        Some(keep.clamp(1, rows - 1))
    }
}

/// The sleeps of SQLite's own busy handler (`sqlite3_busy_timeout`, which nearly every app
/// and driver uses), in ms: a writer that finds the lock taken tries again after 1 ms, then
/// 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, then every 100 ms.
const BUSY_DELAYS: [u64; 12] = [1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100];

/// How long a batch should hold the write lock, at most `max_lock`: the latest moment at or
/// before it at which an app's writer that found the lock taken tries again (1, 3, 8, 18, 33,
/// 53, 78, 103… ms after its first try). A writer held off from a batch's start gets in at
/// its first retry after the batch, so a batch just past such a moment costs it a whole
/// further sleep: 33 ms of lock keep it to 33 ms, 40 ms of lock make it 53 ms.
pub(crate) fn lock_aim(max_lock: Duration) -> Duration {
    let bound = max_lock.as_micros() as u64;
    let mut at = 0u64;
    let mut aim = 0u64;
    for d in BUSY_DELAYS.iter().copied().chain(std::iter::repeat(100)) {
        let next = at + d * 1000;
        if next > bound {
            break;
        }
        at = next;
        aim = at;
    }
    if aim == 0 {
        max_lock
    } else {
        Duration::from_micros(aim)
    }
}

/// The longest an app's writer that has waited `waited` for the lock sleeps before it tries
/// again, in SQLite's busy handler ([`BUSY_DELAYS`]). A writer held off by a batch has waited
/// at most the batch's lock time, so a gap this long after the commit lets it in at its next
/// try, not one batch later.
pub(crate) fn busy_retry_within(waited: Duration) -> Duration {
    const DELAYS: [u64; 12] = BUSY_DELAYS;
    let waited = waited.as_millis() as u64;
    let mut total = 0;
    for d in DELAYS {
        if total + d > waited {
            return Duration::from_millis(d);
        }
        total += d;
    }
    Duration::from_millis(100)
}

/// The shortest adaptive pause: an idle app costs a prune little more than its own work.
const PAUSE_FLOOR: Duration = Duration::from_millis(1);
/// While the app seems idle, every this many batches the pause is a full window anyway, so a
/// writer that came in the meantime and slept through short gaps gets in (a bound on what
/// an app that wakes up waits: about this many batches).
const PROBE_EVERY: u32 = 3;

/// The pause between two batches. `pause = "…"` in the config fixes it; by default it adapts:
/// after a batch that held the write lock for `held`, writers that waited meanwhile retry
/// within [`busy_retry_within`]`(held)`, and that window is the longest pause while the app
/// writes (another connection committed in the last gap: `PRAGMA data_version` moved); the
/// job ends a pause as soon as such a commit shows the held-off writer got in. When nobody
/// committed in a full window, nobody was waiting: the pause halves toward a 1 ms floor, with
/// a full window every [`PROBE_EVERY`] batches, and it is back to the window as soon as a
/// commit shows up.
#[derive(Debug)]
pub(crate) struct Pacer {
    fixed: Option<Duration>,
    pause: Option<Duration>,
    /// Whether the last pause was a full window (so a quiet gap means an idle app).
    last_full: bool,
    quiet: u32,
}

impl Pacer {
    pub(crate) fn new(fixed: Option<Duration>) -> Self {
        Pacer {
            fixed,
            pause: None,
            last_full: true,
            quiet: 0,
        }
    }

    /// The pause after a batch that held the lock `held`; `writers`: whether another
    /// connection committed between the previous batch and this one.
    pub(crate) fn next(&mut self, held: Duration, writers: bool) -> Duration {
        if let Some(p) = self.fixed {
            return p;
        }
        let window = busy_retry_within(held);
        let idle = !writers && self.last_full;
        self.quiet = if writers { 0 } else { self.quiet + 1 };
        let pause = match self.pause {
            Some(p) if idle || (!writers && p < window) => {
                if self.quiet.is_multiple_of(PROBE_EVERY) {
                    window
                } else {
                    (p / 2).clamp(PAUSE_FLOOR, window)
                }
            }
            _ => window,
        };
        self.last_full = pause >= window;
        self.pause = Some(pause);
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_slow_batch_shrinks_the_next_and_dependants_trim_a_filled_batch() {
        let mut m = LockModel::default();
        assert_eq!(m.rows_for(0.05, FIRST_BATCH), FIRST_BATCH);
        // Before any batch, rows count: 500 rows with 5,000 dependants are cut to ~1/11.
        assert_eq!(m.trim(0.05, 500, 5_000), Some(45));
        // 500 rows held the lock 200 ms (1 ms of it fixed): 0.4 ms a row.
        m.learn(500, 199 * MS, 0, Duration::ZERO, 200 * MS);
        let n = m.rows_for(0.05, 500);
        assert!((90..=100).contains(&n), "{n}");
        // A cheap batch lowers the estimate by half at most, and growth is at most 2x.
        m.learn(n as u64, MS, 0, Duration::ZERO, 2 * MS);
        assert!(m.rows_for(0.05, n) <= 2 * n);
        // Dependants cost their own rate: 100 rows with 10,000 dependants at 0.1 ms each
        // would take ~1 s, so the batch is trimmed to fit.
        m.learn(10, 4 * MS, 100, 10 * MS, 15 * MS);
        let keep = m.trim(0.05, 100, 10_000).expect("trimmed");
        assert!(keep < 10, "{keep}");
        assert_eq!(m.trim(0.05, 1, 10_000), None, "one row cannot shrink");
    }

    #[test]
    fn the_pause_is_the_window_a_held_off_writer_needs_and_shrinks_while_nobody_writes() {
        assert_eq!(busy_retry_within(Duration::ZERO), MS);
        assert_eq!(busy_retry_within(40 * MS), 20 * MS);
        assert_eq!(busy_retry_within(60 * MS), 25 * MS);
        assert_eq!(busy_retry_within(10 * MS), 10 * MS);
        assert_eq!(busy_retry_within(10_000 * MS), 100 * MS);
        // The lock a batch aims at: the latest retry of a held-off writer within max_lock.
        assert_eq!(lock_aim(50 * MS), 33 * MS);
        assert_eq!(lock_aim(33 * MS), 33 * MS);
        assert_eq!(lock_aim(20 * MS), 18 * MS);
        assert_eq!(lock_aim(2 * MS), MS);
        assert_eq!(
            lock_aim(Duration::from_micros(500)),
            Duration::from_micros(500)
        );
        assert_eq!(lock_aim(1000 * MS), 928 * MS);
        let mut fixed = Pacer::new(Some(7 * MS));
        assert_eq!(fixed.next(40 * MS, false), 7 * MS);
        let mut p = Pacer::new(None);
        // The app writes: every pause is the window of the batch's lock time.
        assert_eq!(p.next(40 * MS, true), 20 * MS);
        assert_eq!(p.next(40 * MS, true), 20 * MS);
        // Nobody committed during a full window: halve, with a full window every third.
        assert_eq!(p.next(40 * MS, false), 10 * MS);
        assert_eq!(p.next(40 * MS, false), 5 * MS);
        assert_eq!(p.next(40 * MS, false), 20 * MS);
        assert_eq!(p.next(40 * MS, false), 10 * MS);
        // A commit shows up: back to the window at once.
        assert_eq!(p.next(40 * MS, true), 20 * MS);
    }
}
