//! The feeder: starts one job for each of many databases (a fleet's members), each after its
//! own delay (a share of the jitter), in order of those delays, each only once a
//! `max_concurrent_jobs` permit is free. One task for a whole fleet: 10,000 members cost one
//! sleeping task, not 10,000. The daemon's ticks and catch-up and `litekeeper run <fleet>`
//! all feed through `feed`; what "start" and "wait" mean is the caller's (`Feed`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// What a feed does with its items.
pub(crate) trait Feed {
    type Item: Clone;

    /// The permits to take (the daemon's may be replaced by a reload while it feeds).
    fn permits(&self) -> Arc<Semaphore>;

    /// No permit is free: `due` (with their delays) are due and must wait for one. Called
    /// once per item at most.
    async fn waiting(&mut self, due: &[(Duration, Self::Item)]);

    /// Start `item`, holding `permit`.
    fn start(&mut self, item: Self::Item, permit: OwnedSemaphorePermit);
}

/// Order `items` by a random share of `jitter` each (all at once without jitter, in their
/// order).
pub(crate) fn plan<T>(items: impl IntoIterator<Item = T>, jitter: Duration) -> Vec<(Duration, T)> {
    let mut plan: Vec<(Duration, T)> = items
        .into_iter()
        .map(|item| (crate::schedule::jitter_delay(jitter), item))
        .collect();
    plan.sort_by_key(|(delay, _)| *delay);
    plan
}

/// Which of `plan[from..]` are due `elapsed` after the feed began: `plan[from..end]`.
fn due_until<T>(plan: &[(Duration, T)], from: usize, elapsed: Duration) -> usize {
    from + plan[from..].partition_point(|(d, _)| *d <= elapsed)
}

/// Start every item of `plan` (sorted by delay, see `plan`) once its delay has passed and a
/// permit is free. Returns the items never started because `cancel` fired first.
pub(crate) async fn feed<F: Feed>(
    f: &mut F,
    plan: Vec<(Duration, F::Item)>,
    cancel: &CancellationToken,
) -> Vec<F::Item> {
    let start = tokio::time::Instant::now();
    // plan[..marked] have been reported waiting.
    let mut marked = 0;
    for i in 0..plan.len() {
        let (delay, item) = plan[i].clone();
        tokio::select! {
            _ = cancel.cancelled() => return rest(plan, i),
            _ = tokio::time::sleep_until(start + delay) => {}
        }
        let permits = f.permits();
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Starved: this item and every one already due wait for a permit.
                let end = due_until(&plan, i, start.elapsed());
                if end > marked.max(i) {
                    f.waiting(&plan[marked.max(i)..end]).await;
                    marked = end;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return rest(plan, i),
                    p = permits.acquire_owned() => match p {
                        Ok(p) => p,
                        // Closed: never done by the scheduler; nothing more can start.
                        Err(_) => return rest(plan, i),
                    },
                }
            }
        };
        f.start(item, permit);
    }
    Vec::new()
}

fn rest<T>(plan: Vec<(Duration, T)>, from: usize) -> Vec<T> {
    plan.into_iter().skip(from).map(|(_, item)| item).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what started and waited when (in ms since the feed began); a started item
    /// holds its permit for a second.
    struct Recorder {
        permits: Arc<Semaphore>,
        began: tokio::time::Instant,
        started: Vec<(u64, &'static str)>,
        waited: Vec<(u64, Vec<&'static str>)>,
    }

    impl Recorder {
        fn new(permits: usize) -> Recorder {
            Recorder {
                permits: Arc::new(Semaphore::new(permits)),
                began: tokio::time::Instant::now(),
                started: Vec::new(),
                waited: Vec::new(),
            }
        }
        fn ms(&self) -> u64 {
            self.began.elapsed().as_millis() as u64
        }
    }

    impl Feed for Recorder {
        type Item = &'static str;
        fn permits(&self) -> Arc<Semaphore> {
            self.permits.clone()
        }
        async fn waiting(&mut self, due: &[(Duration, &'static str)]) {
            let ms = self.ms();
            self.waited
                .push((ms, due.iter().map(|(_, n)| *n).collect()));
        }
        fn start(&mut self, item: &'static str, permit: OwnedSemaphorePermit) {
            let ms = self.ms();
            self.started.push((ms, item));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                drop(permit);
            });
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn starts_in_order_of_delay_at_its_delay() {
        let mut r = Recorder::new(10);
        let plan = vec![(ms(0), "a"), (ms(300), "b"), (ms(1000), "c")];
        let left = feed(&mut r, plan, &CancellationToken::new()).await;
        assert!(left.is_empty());
        assert_eq!(r.started, vec![(0, "a"), (300, "b"), (1000, "c")]);
        assert!(r.waited.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn starved_items_wait_once_and_start_as_permits_free() {
        let mut r = Recorder::new(1);
        let permits = r.permits.clone();
        // The one permit is held by a run that ends at 500 ms.
        let busy = permits.clone().try_acquire_owned().unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(ms(500)).await;
            drop(busy);
        });
        let plan = vec![(ms(0), "a"), (ms(100), "b"), (ms(200), "c")];
        let cancel = CancellationToken::new();
        let feeding = tokio::spawn(async move {
            let left = feed(&mut r, plan, &cancel).await;
            (r.started, r.waited, left)
        });
        let (started, waited, left) = feeding.await.unwrap();
        // `a` waits from 0; `b` and `c` are due when it gets the permit, and wait from then.
        assert_eq!(waited, vec![(0, vec!["a"]), (500, vec!["b", "c"])]);
        assert_eq!(started, vec![(500, "a"), (1500, "b"), (2500, "c")]);
        assert!(left.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_returns_what_never_started() {
        let mut r = Recorder::new(1);
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ms(250)).await;
            stop.cancel();
        });
        let plan = vec![(ms(0), "a"), (ms(100), "b"), (ms(400), "c")];
        let left = feed(&mut r, plan, &cancel).await;
        assert_eq!(r.started, vec![(0, "a")]);
        assert_eq!(left, vec!["b", "c"]);
    }

    #[test]
    fn plan_without_jitter_keeps_the_order() {
        let p = plan(["b", "a", "c"], Duration::ZERO);
        assert_eq!(
            p.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            ["b", "a", "c"]
        );
        let p = plan(0..100, Duration::from_secs(60));
        assert!(p.windows(2).all(|w| w[0].0 <= w[1].0));
    }
}
