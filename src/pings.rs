//! Health pings, healthchecks.io style: a job with `ping = URL` calls `URL/start` (GET) when it
//! has taken its database's lock and starts, then `URL` (POST) when it succeeded or `URL/fail`
//! (POST) when it failed, with the run's summary or error in the body.
//!
//! Pings never delay or fail a job: the pings of one run are sent in order from a thread of
//! their own, each bounded by its `ping_timeout` (retries included), and a ping that cannot be
//! delivered is logged as a warning naming the URL without its query string, never the body.
//! The daemon never waits for them; `litekeeper run` waits at exit for its last ping, at most
//! until that ping's timeout has run out (`wait_for_pending`).
//!
//! Which runs ping: a run that ran (ok, or skipped with nothing worth doing) pings success, a
//! failed one pings fail (also when it failed before starting, e.g. the lock file could not be
//! created). A run skipped because another job held the database sends nothing (the job did not
//! run: the check goes late if that keeps happening), and a dry run sends nothing.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::{Database, Ping};
use crate::domain::{ExitCode, JobKind, Outcome, Report, Trigger};

/// The run a ping is about: what `jobs::execute` knows of its request.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    pub db: &'a Database,
    pub kind: JobKind,
    pub trigger: Trigger,
    pub dry_run: bool,
}

/// Attempts per ping: the first and two retries (on a transport error, HTTP 429 or 5xx).
const ATTEMPTS: usize = 3;
/// Pause before the second and the third attempt (cut short by the ping's deadline).
const BACKOFF: [Duration; 2] = [Duration::from_millis(500), Duration::from_millis(1500)];
/// Bodies are cut to this many bytes (healthchecks.io keeps the first 10 000 by default).
pub(crate) const BODY_LIMIT: usize = 4000;

/// What a ping reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Start,
    Success,
    Fail,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Start => "start",
            Signal::Success => "success",
            Signal::Fail => "fail",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Signal::Start => "/start",
            Signal::Success => "",
            Signal::Fail => "/fail",
        }
    }
}

/// The URL a signal is sent to: the suffix appended to the path, before any query string
/// (`https://hc-ping.com/KEY/slug?create=1` → `…/slug/start?create=1`).
pub(crate) fn signal_url(base: &str, signal: Signal) -> String {
    let (path, query) = match base.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (base, None),
    };
    let mut url = path.trim_end_matches('/').to_string();
    url.push_str(signal.suffix());
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// The URL as logged: without user info and query string (either may carry a secret).
pub(crate) fn redact(url: &str) -> String {
    let no_query = url.split(['?', '#']).next().unwrap_or_default();
    let Some((scheme, rest)) = no_query.split_once("://") else {
        return no_query.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = authority.rsplit('@').next().unwrap_or_default();
    format!("{scheme}://{host}{path}")
}

/// `text` cut to at most `limit` bytes on a character boundary, marked when cut.
pub(crate) fn truncate(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    const MARK: &str = "\n[cut]";
    let mut end = limit.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &text[..end])
}

// ---------------------------------------------------------------------------------------------
// Ping threads still at work, so `litekeeper run` can wait for them (bounded) before exiting.

/// The health pings of one process (`daemon` or `run`): built there, handed to every run in
/// `jobs::Env`; clones share the count of ping threads still at work.
#[derive(Clone, Default)]
pub struct Pings {
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    done: Condvar,
}

#[derive(Default)]
struct Pending {
    threads: usize,
    /// The latest deadline of any ping queued so far.
    until: Option<Instant>,
}

impl Pings {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Block until every ping thread has finished, or the last queued ping's deadline (plus a
    /// moment) has passed; a ping still hanging then is abandoned. For `litekeeper run`, which
    /// would otherwise exit before its success or fail ping went out; the daemon never waits.
    pub fn wait_for_pending(&self) {
        let mut p = self.pending();
        while p.threads > 0 {
            let Some(until) = p.until else { return };
            let limit = until + Duration::from_millis(250);
            let now = Instant::now();
            if now >= limit {
                tracing::debug!("not waiting longer for {} ping thread(s)", p.threads);
                return;
            }
            p = self
                .inner
                .done
                .wait_timeout(p, limit - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The run has its lock and starts: queue the start ping (if the job has a `ping`).
    pub fn started(&self, req: Run<'_>, run_id: &str) -> Option<Pinger> {
        let pinger = Pinger::new(self, ping_of(req)?, label(req))?;
        pinger.send(
            Signal::Start,
            format!("run {run_id}, trigger {}", req.trigger.as_str()),
        );
        Some(pinger)
    }

    /// The run is over and recorded: queue its success or fail ping (see the module doc for
    /// which).
    pub fn finished(&self, req: Run<'_>, pinger: Option<Pinger>, report: &Report) {
        let Some(ping) = ping_of(req) else { return };
        let signal = match report.outcome {
            Outcome::Ok => Signal::Success,
            // Nothing worth doing is a success; the lock held by another job is no run at all.
            Outcome::Skipped if report.exit == ExitCode::Ok => Signal::Success,
            Outcome::Skipped | Outcome::DryRun => return,
            Outcome::Failed => Signal::Fail,
        };
        let Some(pinger) = pinger.or_else(|| Pinger::new(self, ping, label(req))) else {
            return;
        };
        let mut body = format!(
            "{} {}: {} ({} ms)\nrun {}, trigger {}\n",
            report.job.as_str(),
            report.database,
            report.summary,
            report.duration_ms,
            report.run_id,
            report.trigger.as_str()
        );
        if let Some(e) = report
            .error
            .as_deref()
            .filter(|e| !report.summary.contains(e))
        {
            body.push_str(&format!("error: {e}\n"));
        }
        pinger.send(signal, body);
    }
}

/// Decrements the thread count when a ping thread ends, even by a panic.
struct ThreadGuard(Pings);

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        self.0.pending().threads -= 1;
        self.0.inner.done.notify_all();
    }
}

// ---------------------------------------------------------------------------------------------
// The pings of one run.

struct Msg {
    signal: Signal,
    body: String,
    deadline: Instant,
}

/// The pings of one run, sent in order (start before success or fail) by one thread that ends
/// when this is dropped and its queue is done.
pub struct Pinger {
    tx: mpsc::Sender<Msg>,
    timeout: Duration,
    pings: Pings,
}

impl Pinger {
    /// Start the thread for the pings of `label`'s run (e.g. "backup chat").
    pub fn new(pings: &Pings, ping: &Ping, label: String) -> Option<Pinger> {
        let (tx, rx) = mpsc::channel::<Msg>();
        let (url, name) = (ping.url.clone(), label.clone());
        pings.pending().threads += 1;
        let guard = ThreadGuard(pings.clone());
        let spawned = std::thread::Builder::new()
            .name("litekeeper-ping".into())
            .spawn(move || {
                let _guard = guard;
                let agent = ureq::AgentBuilder::new()
                    .user_agent(concat!("litekeeper/", env!("CARGO_PKG_VERSION")))
                    .build();
                for msg in rx {
                    deliver(&agent, &url, &name, msg);
                }
            });
        match spawned {
            Ok(_) => Some(Pinger {
                tx,
                timeout: ping.timeout,
                pings: pings.clone(),
            }),
            // The guard went with the closure that was never run: the count is already down.
            Err(e) => {
                tracing::warn!("health pings of {label} not sent: cannot start a thread: {e}");
                None
            }
        }
    }

    /// Queue a ping; it has `ping_timeout` from now to get through.
    pub fn send(&self, signal: Signal, body: String) {
        let deadline = Instant::now() + self.timeout;
        {
            let mut p = self.pings.pending();
            p.until = Some(p.until.map_or(deadline, |u| u.max(deadline)));
        }
        let _ = self.tx.send(Msg {
            signal,
            body: truncate(&body, BODY_LIMIT),
            deadline,
        });
    }
}

/// Send one ping, retrying while its deadline allows; failures end as one warning.
fn deliver(agent: &ureq::Agent, base: &str, label: &str, msg: Msg) {
    let url = signal_url(base, msg.signal);
    let shown = redact(&url);
    let what = format!(
        "health ping ({}) of {label} to {shown}",
        msg.signal.as_str()
    );
    let mut last_error = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            let left = msg.deadline.saturating_duration_since(Instant::now());
            std::thread::sleep(BACKOFF[attempt - 1].min(left));
        }
        let left = msg.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            if attempt == 0 {
                last_error = "no time left (the ping before it used up the time)".into();
            }
            break;
        }
        let result = match msg.signal {
            Signal::Start => agent.get(&url).timeout(left).call(),
            Signal::Success | Signal::Fail => agent
                .post(&url)
                .timeout(left)
                .set("Content-Type", "text/plain; charset=utf-8")
                .send_string(&msg.body),
        };
        match result {
            Ok(_) => {
                tracing::debug!("{what}: sent");
                return;
            }
            Err(ureq::Error::Status(code, _)) if code == 429 || code >= 500 => {
                last_error = format!("HTTP status {code}");
            }
            Err(ureq::Error::Status(code, _)) => {
                tracing::warn!("{what} failed: HTTP status {code}");
                return;
            }
            Err(ureq::Error::Transport(t)) => last_error = transport_error(&t),
        }
        tracing::debug!("{what}: attempt {} failed: {last_error}", attempt + 1);
    }
    tracing::warn!("{what} failed: {last_error}");
}

/// A transport error without its URL (which may carry a secret in the query string).
fn transport_error(t: &ureq::Transport) -> String {
    let mut s = t.kind().to_string();
    if let Some(m) = t.message() {
        s.push_str(": ");
        s.push_str(m);
    }
    if let Some(src) = std::error::Error::source(t) {
        s.push_str(": ");
        s.push_str(&src.to_string());
    }
    s
}

// ---------------------------------------------------------------------------------------------
// The hooks `jobs::execute` calls.

fn ping_of(req: Run<'_>) -> Option<&Ping> {
    if req.dry_run {
        return None;
    }
    req.db.timing(req.kind).and_then(|t| t.ping.as_ref())
}

fn label(req: Run<'_>) -> String {
    format!("{} {}", req.kind.as_str(), req.db.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_per_signal() {
        let u = "https://hc-ping.com/5a4c";
        assert_eq!(
            signal_url(u, Signal::Start),
            "https://hc-ping.com/5a4c/start"
        );
        assert_eq!(signal_url(u, Signal::Success), "https://hc-ping.com/5a4c");
        assert_eq!(signal_url(u, Signal::Fail), "https://hc-ping.com/5a4c/fail");
        assert_eq!(
            signal_url("https://hc-ping.com/key/db-backup/?create=1", Signal::Fail),
            "https://hc-ping.com/key/db-backup/fail?create=1"
        );
    }

    #[test]
    fn redacted_for_logs() {
        assert_eq!(
            redact("https://user:pw@example.com:8443/p/x/fail?token=s3cret"),
            "https://example.com:8443/p/x/fail"
        );
        assert_eq!(redact("http://127.0.0.1:9/u"), "http://127.0.0.1:9/u");
    }

    #[test]
    fn bodies_are_cut_on_a_char_boundary() {
        assert_eq!(truncate("short", 10), "short");
        let long = "é".repeat(5000);
        let cut = truncate(&long, BODY_LIMIT);
        assert!(
            cut.len() <= BODY_LIMIT && cut.ends_with("[cut]"),
            "{}",
            cut.len()
        );
    }
}
