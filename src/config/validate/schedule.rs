//! The keys every job section shares: `schedule` (cron), `jitter`, `ping` and
//! `ping_timeout`.

use std::time::Duration;

use super::Checker;
use crate::config::{KeyPath, Ping, Timing};
use crate::schedule::Schedule;

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
        let timeout = self.duration(&timeout_key, ping_timeout, crate::pings::DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            self.fail(
                &timeout_key,
                "expected a duration above 0",
                ping_timeout.cloned(),
            );
        }
        let ping = ping.map(|url| {
            if let Err(reason) = crate::pings::check_url(url) {
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
