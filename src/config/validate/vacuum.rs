//! A database's `[database.vacuum]` section.

use super::{parse_threshold, Checker};
use crate::config::raw::RawVacuum;
use crate::config::{KeyPath, Threshold, Vacuum, VacuumMode};

pub(super) fn vacuum(c: &mut Checker, key: &KeyPath, v: &RawVacuum) -> Vacuum {
    let min_free = match &v.min_free {
        None => Threshold::Fraction(0.2),
        Some(text) => parse_threshold(text).unwrap_or_else(|reason| {
            c.fail(&key.key("min_free"), reason, Some(text.clone()));
            Threshold::Fraction(0.2)
        }),
    };
    Vacuum {
        timing: c.timing(
            key,
            v.schedule.as_ref(),
            v.jitter.as_ref(),
            v.ping.as_ref(),
            v.ping_timeout.as_ref(),
        ),
        mode: c.choice(
            &key.key("mode"),
            v.mode.as_ref(),
            &[
                ("auto", VacuumMode::Auto),
                ("full", VacuumMode::Full),
                ("incremental", VacuumMode::Incremental),
                ("never", VacuumMode::Never),
            ],
            VacuumMode::Auto,
        ),
        min_free,
        convert_auto_vacuum: v.convert_auto_vacuum.unwrap_or(false),
        temp_dir: v
            .temp_dir
            .as_ref()
            .map(|p| c.abs_path(&key.key("temp_dir"), p)),
        max_duration: c.opt_duration(&key.key("max_duration"), v.max_duration.as_ref()),
        analyze: v.analyze.unwrap_or(false),
    }
}
