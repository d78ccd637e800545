//! sd_notify messages to the service manager: READY, STATUS, WATCHDOG, RELOADING (with
//! MONOTONIC_USEC), STOPPING. Without `NOTIFY_SOCKET` every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify failed: {e}");
    }
}

pub(crate) fn ready() {
    send(&[NotifyState::Ready]);
}

pub(crate) fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// Reload started: RELOADING=1 with the monotonic time systemd (≥ 253) requires.
pub(crate) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Start-up refused: why (STATUS=) and the errno systemd shows for the failed unit.
pub(crate) fn failed(text: &str, errno: i32) {
    send(&[
        NotifyState::Status(&text.replace('\n', " ")),
        NotifyState::Errno(errno as u32),
    ]);
}

pub(crate) fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Ping the watchdog at half the interval systemd asked for, from a task of our own runtime:
/// if the runtime wedges, the pings stop and systemd restarts us.
pub(crate) fn spawn_watchdog(cancel: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let interval = sd_notify::watchdog_enabled()?;
    let period = (interval / 2).max(Duration::from_millis(50));
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => send(&[NotifyState::Watchdog]),
            }
        }
    }))
}
