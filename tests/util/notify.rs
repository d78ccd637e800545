//! A fake service manager: a Unix datagram socket bound in the temp dir as `NOTIFY_SOCKET`,
//! and a thread collecting every sd_notify message sent to it, in order.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Bg, TestEnv};

/// One datagram as received, with its arrival time.
#[derive(Debug, Clone)]
pub struct Msg {
    pub at: Instant,
    pub text: String,
}

impl Msg {
    pub fn has(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }

    pub fn value(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }

    pub fn status(&self) -> Option<&str> {
        self.value("STATUS")
    }

    /// The datagram as one line ("RELOADING=1|MONOTONIC_USEC=<n>"), the number masked after
    /// checking it is one, for exact comparisons of whole sequences.
    pub fn shape(&self) -> String {
        self.text
            .lines()
            .map(|l| match l.strip_prefix("MONOTONIC_USEC=") {
                Some(n) => {
                    assert!(
                        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()),
                        "MONOTONIC_USEC is not a number: {l:?}"
                    );
                    "MONOTONIC_USEC=<n>".to_string()
                }
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("|")
    }
}

pub struct Notify {
    pub path: PathBuf,
    rx: Receiver<Msg>,
    pub seen: Vec<Msg>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Notify {
    pub fn bind(env: &TestEnv) -> Notify {
        let path = env.path("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        let msg = Msg {
                            at: Instant::now(),
                            text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                        };
                        if tx.send(msg).is_err() {
                            break;
                        }
                    }
                    // Stop only once the queue is drained: every datagram sent before the
                    // daemon exited is collected.
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if stop2.load(Ordering::SeqCst) {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => panic!("notify socket: {e}"),
                }
            }
        });
        Notify {
            path,
            rx,
            seen: Vec::new(),
            stop,
            reader: Some(reader),
        }
    }

    /// Index of the first message at or after `from` matching `pred`, waiting up to `timeout`.
    pub fn wait_for(
        &mut self,
        from: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Msg) -> bool,
    ) -> usize {
        let deadline = Instant::now() + timeout;
        let mut start = from;
        loop {
            if let Some(i) = (start..self.seen.len()).find(|&i| pred(&self.seen[i])) {
                return i;
            }
            start = start.max(self.seen.len());
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(m) => self.seen.push(m),
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no {what} within {timeout:?}; messages so far:\n{}",
                    self.dump()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("notify reader stopped; messages:\n{}", self.dump())
                }
            }
        }
    }

    /// Index of the first READY=1, waiting up to 20 s.
    pub fn ready(&mut self) -> usize {
        self.wait_for(0, Duration::from_secs(20), "READY=1", |m| m.has("READY=1"))
    }

    /// Stop the reader once the socket is drained and return every message received.
    pub fn finish(&mut self) -> &[Msg] {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        while let Ok(m) = self.rx.try_recv() {
            self.seen.push(m);
        }
        &self.seen
    }

    pub fn dump(&self) -> String {
        self.seen
            .iter()
            .map(|m| format!("  {:?}\n", m.text))
            .collect()
    }
}

impl Drop for Notify {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl TestEnv {
    /// `litekeeper daemon` in the background reporting to `notify`, with `vars` set.
    pub fn daemon_notifying(&self, notify: &Notify, vars: &[(&str, &str)]) -> Bg {
        let socket = notify.path.to_str().unwrap();
        let mut all = vec![("NOTIFY_SOCKET", socket)];
        all.extend_from_slice(vars);
        self.daemon(&all)
    }
}
