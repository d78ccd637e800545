//! `incremental = { every = "*/10 * * * *", keep = "7d" }` inside `[database.backup]`: the
//! schedule of incremental backups (cron, like every job's `schedule`) and how long their
//! chains are kept.

use super::Checker;
use crate::config::raw::RawIncremental;
use crate::config::{Incremental, KeyPath, DEFAULT_CHAIN_KEEP as DEFAULT_KEEP};
use crate::schedule::Schedule;

impl Checker {
    pub(super) fn incremental(&mut self, key: &KeyPath, i: &RawIncremental) -> Incremental {
        let mut timing = self.timing(
            key,
            None,
            i.jitter.as_ref(),
            i.ping.as_ref(),
            i.ping_timeout.as_ref(),
        );
        timing.schedule = i
            .every
            .as_ref()
            .and_then(|text| match Schedule::parse(text) {
                Ok(s) => Some(s),
                Err(reason) => {
                    self.fail(
                        &key.key("every"),
                        format!("invalid cron schedule: {reason}"),
                        Some(text.clone()),
                    );
                    None
                }
            });
        let keep = self.duration(&key.key("keep"), i.keep.as_ref(), DEFAULT_KEEP);
        if keep.is_zero() {
            self.fail(
                &key.key("keep"),
                "expected a duration above 0, like \"7d\" (deltas older than this are deleted)",
                i.keep.clone(),
            );
        }
        Incremental { timing, keep }
    }
}
