//! The keys every job section shares: `schedule` (cron), `jitter`, `ping` and
//! `ping_timeout`.

use std::time::Duration;

use super::Checker;
use crate::config::{KeyPath, Ping, Timing};
use crate::schedule::Schedule;

/// `ping_timeout` when not set.
const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(10);

impl Checker {
    fn schedule(&mut self, key: &KeyPath, value: Option<&String>) -> Option<Schedule> {
        let text = value?;
        match Schedule::parse(text) {
            Ok(s) => Some(s),
            Err(reason) => {
                self.fail(
                    key,
                    format!("invalid cron schedule: {reason}"),
                    Some(text.clone()),
                );
                None
            }
        }
    }

    /// The shared keys of the job section at `key`.
    pub(super) fn timing(
        &mut self,
        key: &KeyPath,
        schedule: Option<&String>,
        jitter: Option<&String>,
        ping: Option<&String>,
        ping_timeout: Option<&String>,
    ) -> Timing {
        let schedule = self.schedule(&key.key("schedule"), schedule);
        let jitter = self.duration(&key.key("jitter"), jitter, Duration::ZERO);
        let timeout_key = key.key("ping_timeout");
        let timeout = self.duration(&timeout_key, ping_timeout, DEFAULT_PING_TIMEOUT);
        if timeout.is_zero() {
            self.fail(
                &timeout_key,
                "expected a duration above 0",
                ping_timeout.cloned(),
            );
        }
        let ping = ping.map(|url| {
            if let Err(reason) = check_url(url) {
                self.fail(&key.key("ping"), reason, Some(url.clone()));
            }
            Ping {
                url: url.clone(),
                timeout,
            }
        });
        Timing {
            schedule,
            jitter,
            ping,
        }
    }
}

/// Check a configured ping URL: absolute, http:// or https://, with a host, no fragment.
fn check_url(text: &str) -> Result<(), String> {
    const HINT: &str =
        "expected an absolute http:// or https:// URL like \"https://hc-ping.com/<uuid>\"";
    let lower = text.to_ascii_lowercase();
    let Some(rest) = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
    else {
        return Err(HINT.into());
    };
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) || text.contains('#') {
        return Err(format!("{HINT}, without spaces or a #fragment"));
    }
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = match host_port.strip_prefix('[') {
        // An IPv6 literal: [::1] or [::1]:8080.
        Some(v6) => match v6.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, p)) => (h, Some(p.strip_prefix(':').unwrap_or(p))),
            None => ("", None),
        },
        None => match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return Err(format!("{HINT}: the host is missing"));
    }
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err(format!("{HINT}: the port is not a number from 0 to 65535"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_url;

    #[test]
    fn url_checks() {
        for ok in [
            "https://hc-ping.com/5a4c",
            "http://127.0.0.1:8000/ping/x?create=1",
            "HTTPS://example.com",
            "http://[::1]:80/x",
            "http://[::1]/x",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "hc-ping.com/5a4c",
            "ftp://example.com/x",
            "https:///x",
            "https://",
            "https://exa mple.com/",
            "https://example.com:99999/x",
            "https://[::1/x",
            "https://example.com/x#y",
            "",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
