//! Cron schedules and time zones: parsing with clear errors, and "next run after `now`".
//!
//! Pure: `now` is always a parameter. The daemon (`scheduler`), `litekeeper schedule` and
//! `status` all ask this module, so what they print is what the daemon does.
//!
//! Syntax: standard (Vixie) cron with 5 fields, or 6 with seconds first; month and weekday
//! names; `@yearly`, `@monthly`, `@weekly`, `@daily`/`@midnight`, `@hourly`. When both
//! day-of-month and day-of-week are restricted a day matches if *either* does (cron's rule).
//! Croner extensions (`L`, `W`, `#`, `?`, `+`) and a year field are refused, because neither
//! cron nor systemd's `OnCalendar=` read them the same way.
//!
//! DST (croner's rules, the same as Vixie cron): a fixed-time job whose time falls into the
//! spring-forward gap runs at the first valid time after the gap (02:30 → 03:00); on the
//! fall-back day it runs once, at the first of the two 02:30s. Jobs with a wildcard or stepped
//! hour follow real elapsed time through both repeated hours.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Offset, TimeZone, Timelike, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::{Cron, JobType};

/// The zone cron expressions are read in.
#[derive(Debug, Clone, PartialEq)]
pub enum Zone {
    /// The system's zone (`TZ`, else `/etc/localtime`).
    Local,
    Utc,
    Named(chrono_tz::Tz),
}

impl Zone {
    /// Parse "local", "UTC" or an IANA name such as "Europe/Berlin".
    pub fn parse(text: &str) -> Result<Zone, String> {
        match text {
            "local" => Ok(Zone::Local),
            "UTC" | "utc" | "Etc/UTC" => Ok(Zone::Utc),
            _ => chrono_tz::Tz::from_str(text).map(Zone::Named).map_err(|_| {
                "expected \"local\", \"UTC\" or an IANA time zone name like \"Europe/Berlin\""
                    .to_string()
            }),
        }
    }

    /// A wall-clock rendering of `t` in this zone, with its offset.
    pub fn format(&self, t: DateTime<Utc>) -> String {
        const F: &str = "%Y-%m-%d %H:%M:%S %:z";
        match self {
            Zone::Local => t.with_timezone(&chrono::Local).format(F).to_string(),
            Zone::Utc => t.format(F).to_string(),
            Zone::Named(tz) => t.with_timezone(tz).format(F).to_string(),
        }
    }

    /// The UTC offset in seconds at instant `t`.
    pub fn offset_seconds(&self, t: DateTime<Utc>) -> i32 {
        match self {
            Zone::Local => t
                .with_timezone(&chrono::Local)
                .offset()
                .fix()
                .local_minus_utc(),
            Zone::Utc => 0,
            Zone::Named(tz) => t.with_timezone(tz).offset().fix().local_minus_utc(),
        }
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Zone::Local => f.write_str("local"),
            Zone::Utc => f.write_str("UTC"),
            Zone::Named(tz) => f.write_str(tz.name()),
        }
    }
}

/// A validated cron schedule.
#[derive(Clone)]
pub struct Schedule {
    text: String,
    /// Shared: every member of a fleet has the same schedule, and a parsed one is a few KiB.
    cron: std::sync::Arc<Cron>,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.text)
    }
}

const MACROS: [&str; 7] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];
const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl Schedule {
    /// Parse and check a cron expression; the error says what is wrong with which field.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        // Every member of a fleet has the same schedules: parse each text once per thread
        // (croner's parse dominated loading a 10,000-member fleet).
        thread_local! {
            static PARSED: std::cell::RefCell<HashMap<String, Result<Schedule, String>>> =
                std::cell::RefCell::new(HashMap::new());
        }
        if let Some(hit) = PARSED.with_borrow(|parsed| parsed.get(text).cloned()) {
            return hit;
        }
        let result = Self::parse_uncached(text);
        PARSED.with_borrow_mut(|parsed| {
            if parsed.len() >= 256 {
                parsed.clear();
            }
            parsed.insert(text.to_string(), result.clone());
        });
        result
    }

    fn parse_uncached(text: &str) -> Result<Schedule, String> {
        let trimmed = text.trim();
        if trimmed.starts_with('@') {
            let lower = trimmed.to_ascii_lowercase();
            if !MACROS.contains(&lower.as_str()) {
                return Err(format!(
                    "unknown macro; use one of {} (for \"run after a restart\" see daemon.catch_up)",
                    MACROS.join(", ")
                ));
            }
            // croner knows every macro but `@midnight`, cron's other name for `@daily`.
            let macro_text = if lower == "@midnight" {
                "@daily"
            } else {
                &lower
            };
            let cron = CronParser::builder()
                .seconds(Seconds::Optional)
                .year(Year::Disallowed)
                .build()
                .parse(macro_text)
                .map_err(|e| e.to_string())?;
            return Ok(Schedule {
                text: trimmed.to_string(),
                cron: cron.into(),
            });
        }
        let fields: Vec<&str> = trimmed.split_whitespace().collect();
        let names: &[&str] = match fields.len() {
            5 => &["minute", "hour", "day-of-month", "month", "day-of-week"],
            6 => &[
                "second",
                "minute",
                "hour",
                "day-of-month",
                "month",
                "day-of-week",
            ],
            n => {
                return Err(format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week) or 6 \
                     (second first), got {n}"
                ))
            }
        };
        for (field, name) in fields.iter().zip(names) {
            check_field(field, name)?;
            check_range(field, name)?;
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .dom_and_dow(false)
            .build()
            .parse(trimmed)
            .map_err(|e| e.to_string())?;
        if !fires_within_8_years(&cron) {
            return Err(
                "never fires: no date matches its day-of-month, month and day-of-week (like 30 \
                 February or 31 April); check the day and month fields"
                    .into(),
            );
        }
        Ok(Schedule {
            text: trimmed.to_string(),
            cron: cron.into(),
        })
    }

    /// The expression as written in the configuration.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The first run strictly after `after`, reading the expression in `zone`.
    pub fn next_after(&self, after: DateTime<Utc>, zone: &Zone) -> Option<DateTime<Utc>> {
        // Cron times are whole seconds; croner would carry `after`'s fraction into its answer.
        let after = after.with_nanosecond(0).unwrap_or(after);
        match zone {
            Zone::Local => self.next_in(after, &chrono::Local),
            Zone::Utc => self.next_in(after, &Utc),
            Zone::Named(tz) => self.next_in(after, tz),
        }
    }

    /// The last run strictly before `before` (for catch-up after downtime).
    pub fn prev_before(&self, before: DateTime<Utc>, zone: &Zone) -> Option<DateTime<Utc>> {
        // Whole seconds (see `next_after`): from the next whole second, which keeps a run at
        // `before`'s own second, earlier than `before` itself.
        let before = match before.timestamp_subsec_nanos() {
            0 => before,
            n => before + chrono::Duration::nanoseconds(1_000_000_000 - i64::from(n)),
        };
        match zone {
            Zone::Local => self.prev_in(before, &chrono::Local),
            Zone::Utc => self.prev_in(before, &Utc),
            Zone::Named(tz) => self.prev_in(before, tz),
        }
    }

    /// The next `count` runs after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, zone: &Zone, count: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(count);
        let mut t = after;
        while out.len() < count {
            match self.next_after(t, zone) {
                Some(n) => {
                    out.push(n);
                    t = n;
                }
                None => break,
            }
        }
        out
    }

    fn next_in<Tz: TimeZone>(&self, after: DateTime<Utc>, tz: &Tz) -> Option<DateTime<Utc>> {
        // Inside a repeated hour croner can answer with the earlier reading of an ambiguous
        // wall time, i.e. a time before `after`: search again from an hour later then.
        let mut base = None;
        let mut start = after;
        for _ in 0..6 {
            match self
                .cron
                .find_next_occurrence(&start.with_timezone(tz), false)
            {
                Ok(t) if t.with_timezone(&Utc) > after => {
                    let t = t.with_timezone(&Utc);
                    if self.false_gap_snap(t, tz) {
                        start = t;
                        continue;
                    }
                    base = Some(t);
                    break;
                }
                Ok(_) => start += chrono::Duration::hours(1),
                Err(_) => break,
            }
        }
        if self.cron.determine_job_type() == JobType::FixedTime {
            return base;
        }
        // Croner skips the whole repeated hour for interval jobs on fall-back days. Read the
        // expression in each fixed offset in force between `after` and croner's answer too,
        // keeping a candidate only if the zone really shows that offset then; the earliest wins.
        let offset_at = |t: DateTime<Utc>| tz.offset_from_utc_datetime(&t.naive_utc()).fix();
        let mut offsets = vec![offset_at(after)];
        if let Some(b) = base {
            offsets.push(offset_at(b));
        }
        let mut best = base;
        for off in offsets {
            let Ok(c) = self
                .cron
                .find_next_occurrence(&after.with_timezone(&off), false)
            else {
                continue;
            };
            let c = c.with_timezone(&Utc);
            if c > after && offset_at(c) == off && best.is_none_or(|b| c < b) {
                best = Some(c);
            }
        }
        best
    }

    /// Croner moves a fixed-time job that falls into a spring-forward gap to the gap's end,
    /// but it does so whenever its search walks into a gap, also for a job at another time
    /// (`45 1 * * *` ran at 01:45 and again at 03:00 in Berlin). Whether `t`, not a time the
    /// expression names, is such a wrong move: no time in the gap just before it matches.
    fn false_gap_snap<Tz: TimeZone>(&self, t: DateTime<Utc>, tz: &Tz) -> bool {
        if self.cron.determine_job_type() != JobType::FixedTime
            || self
                .cron
                .is_time_matching(&t.with_timezone(tz))
                .unwrap_or(true)
        {
            return false;
        }
        let offset_at = |t: DateTime<Utc>| tz.offset_from_utc_datetime(&t.naive_utc()).fix();
        let before = offset_at(t - chrono::Duration::seconds(1));
        let gap = i64::from(offset_at(t).local_minus_utc() - before.local_minus_utc());
        // The gap's wall times, read in the offset before it (they exist in none).
        !(1..=gap).any(|s| {
            let w = (t - chrono::Duration::seconds(s)).with_timezone(&offset_at(t));
            self.cron.is_time_matching(&w).unwrap_or(false)
        })
    }

    fn prev_in<Tz: TimeZone>(&self, before: DateTime<Utc>, tz: &Tz) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&before.with_timezone(tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// Whether some day of the 8 years from 2024-01-01 matches the day fields (time-of-day fields
/// always match some time). 8 years hold every weekday of every date and two leap days, so
/// `0 0 29 2 *` fires and `0 0 30 2 *` or `0 0 31 4,6,9,11 *` never do.
fn fires_within_8_years(cron: &Cron) -> bool {
    let Some(mut day) = chrono::NaiveDate::from_ymd_opt(2024, 1, 1) else {
        return true;
    };
    use chrono::Datelike;
    for _ in 0..(8 * 366) {
        let (y, m, d) = (day.year(), day.month(), day.day());
        if cron.pattern.month_match(m).unwrap_or(true)
            && cron.pattern.day_match(y, m, d).unwrap_or(true)
        {
            return true;
        }
        day = day.succ_opt().unwrap_or(day);
    }
    false
}

/// Refuse what croner would read differently from cron: extensions, and names outside their
/// field (croner replaces month and weekday names anywhere in the string).
fn check_field(field: &str, name: &str) -> Result<(), String> {
    for c in ['?', 'L', 'W', '#', '+'] {
        if field.to_ascii_uppercase().contains(c) && !contains_name(field, name) {
            return Err(format!(
                "{name} field {field:?}: '{c}' is a non-standard extension; use plain cron \
                 syntax (numbers, names, * , - /)"
            ));
        }
    }
    let mut word = String::new();
    for c in field.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphabetic() {
            word.push(c.to_ascii_uppercase());
            continue;
        }
        if !word.is_empty() {
            let ok = match name {
                "month" => MONTHS.contains(&word.as_str()),
                "day-of-week" => WEEKDAYS.contains(&word.as_str()),
                _ => false,
            };
            if !ok {
                return Err(match name {
                    "month" => format!("month field {field:?}: {word:?} is not a month (JAN..DEC)"),
                    "day-of-week" => {
                        format!("day-of-week field {field:?}: {word:?} is not a weekday (SUN..SAT)")
                    }
                    _ => format!("{name} field {field:?}: only numbers, * , - and / are allowed"),
                });
            }
            word.clear();
        }
        if !(c.is_ascii_digit() || matches!(c, '*' | ',' | '-' | '/' | ' ')) {
            return Err(format!(
                "{name} field {field:?}: {c:?} is not allowed; use numbers, names, * , - /"
            ));
        }
    }
    Ok(())
}

/// Numbers must lie in the field's range and steps must be at least 1 (croner's own message
/// does not say which field).
fn check_range(field: &str, name: &str) -> Result<(), String> {
    let (lo, hi) = match name {
        "second" | "minute" => (0, 59),
        "hour" => (0, 23),
        "day-of-month" => (1, 31),
        "month" => (1, 12),
        _ => (0, 7),
    };
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (part, None),
        };
        if let Some(step) = step {
            match step.parse::<u32>() {
                Ok(n) if n >= 1 && n <= hi.max(1) => {}
                _ => {
                    return Err(format!(
                        "{name} field {field:?}: step {step:?} must be a number from 1 to {}",
                        hi.max(1)
                    ))
                }
            }
        }
        for n in range.split('-') {
            if let Ok(v) = n.parse::<u32>() {
                if v < lo || v > hi {
                    return Err(format!(
                        "{name} field {field:?}: {v} is out of range ({lo}-{hi})"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Whether every letter in `field` belongs to a valid name for that field.
fn contains_name(field: &str, name: &str) -> bool {
    let upper = field.to_ascii_uppercase();
    let words: Vec<&str> = upper
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .collect();
    !words.is_empty()
        && words.iter().all(|w| match name {
            "month" => MONTHS.contains(w),
            "day-of-week" => WEEKDAYS.contains(w),
            _ => false,
        })
        && !upper.contains(['?', '#', '+'])
}

/// A uniformly random delay in `[0, max]`, spreading jobs that share a schedule.
pub fn jitter_delay(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let ms = rand::random_range(0..=max.as_millis().min(u64::MAX as u128) as u64);
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn zone(name: &str) -> Zone {
        Zone::parse(name).unwrap()
    }

    fn next(expr: &str, after: &str, z: &str) -> String {
        let s = Schedule::parse(expr).unwrap();
        s.next_after(utc(after), &zone(z)).unwrap().to_rfc3339()
    }

    /// The next `count` runs of `expr` after `after` in zone `z`, as RFC 3339 UTC times.
    fn upcoming(expr: &str, after: &str, z: &str, count: usize) -> Vec<String> {
        let s = Schedule::parse(expr).unwrap();
        s.upcoming(utc(after), &zone(z), count)
            .iter()
            .map(|t| t.to_rfc3339())
            .collect()
    }

    #[test]
    fn schedules_that_never_fire_are_refused_and_leap_days_are_not() {
        for never in [
            "0 0 30 2 *",
            "0 0 31 2 *",
            "0 0 31 4,6,9,11 *",
            "0 0 0 31 APR-JUN/2 *",
            "0 0 30-31 FEB *",
        ] {
            let e = Schedule::parse(never).unwrap_err();
            assert!(e.starts_with("never fires"), "{never}: {e}");
        }
        for fires in [
            "0 0 29 2 *",
            "0 0 31 * *",
            "0 0 30 2 MON",
            "0 0 31 4 1-5",
            "0 0 29 2 */7",
        ] {
            let s = Schedule::parse(fires).unwrap_or_else(|e| panic!("{fires}: {e}"));
            assert!(
                s.next_after(utc("2026-03-01T00:00:00Z"), &Zone::Utc)
                    .is_some(),
                "{fires}"
            );
        }
        assert_eq!(
            next("0 0 29 2 *", "2026-03-01T00:00:00Z", "UTC"),
            "2028-02-29T00:00:00+00:00"
        );
    }

    #[test]
    fn run_times_are_whole_seconds_and_strictly_later() {
        for text in ["*/5 * * * *", "* * * * * *", "30 4 * * *"] {
            let s = Schedule::parse(text).unwrap();
            for after in [
                "2026-03-01T04:29:59.600Z",
                "2026-03-01T04:30:00.200Z",
                "2026-03-01T04:30:00Z",
                "2026-03-01T04:30:59.999999999Z",
            ] {
                let after = utc(after);
                for zone in [Zone::Utc, Zone::parse("Europe/Berlin").unwrap()] {
                    let next = s.next_after(after, &zone).unwrap();
                    assert_eq!(
                        next.timestamp_subsec_nanos(),
                        0,
                        "{text} after {after}: {next}"
                    );
                    assert!(next > after, "{text} after {after}: {next}");
                    let prev = s.prev_before(after, &zone).unwrap();
                    assert_eq!(
                        prev.timestamp_subsec_nanos(),
                        0,
                        "{text} before {after}: {prev}"
                    );
                    assert!(prev < after, "{text} before {after}: {prev}");
                }
            }
        }
    }

    #[test]
    fn five_and_six_fields_and_macros() {
        // 2026-01-04 is a Sunday.
        for (expr, after, want) in [
            (
                "0 2 * * *",
                "2026-01-01T00:00:00Z",
                "2026-01-01T02:00:00+00:00",
            ),
            (
                "30 0 2 * * *",
                "2026-01-01T00:00:00Z",
                "2026-01-01T02:00:30+00:00",
            ),
            (
                "@daily",
                "2026-01-01T00:00:00Z",
                "2026-01-02T00:00:00+00:00",
            ),
            (
                "@midnight",
                "2026-01-01T00:00:00Z",
                "2026-01-02T00:00:00+00:00",
            ),
            (
                "@hourly",
                "2026-01-01T00:10:00Z",
                "2026-01-01T01:00:00+00:00",
            ),
            (
                "0 3 * * SUN",
                "2026-01-01T00:00:00Z",
                "2026-01-04T03:00:00+00:00",
            ),
            (
                "0 3 * * 7",
                "2026-01-01T00:00:00Z",
                "2026-01-04T03:00:00+00:00",
            ),
            (
                "0 0 1 mar *",
                "2026-01-01T00:00:00Z",
                "2026-03-01T00:00:00+00:00",
            ),
        ] {
            assert_eq!(next(expr, after, "UTC"), want, "{expr} after {after}");
        }
    }

    #[test]
    fn day_of_month_or_day_of_week_like_cron() {
        // "the 15th, or any Monday": 2026-01-05 is the first Monday after Jan 1st.
        assert_eq!(
            next("0 0 15 * MON", "2026-01-01T00:00:00Z", "UTC"),
            "2026-01-05T00:00:00+00:00"
        );
        assert_eq!(
            next("0 0 15 * MON", "2026-01-13T00:00:00Z", "UTC"),
            "2026-01-15T00:00:00+00:00"
        );
    }

    #[test]
    fn rejects_what_cron_would_read_differently() {
        for bad in [
            "0 2 * *",          // 4 fields
            "0 0 2 * * * 2026", // year field
            "0 2 L * *",        // croner extension
            "0 2 * * MON#1",    // nth weekday
            "0 2 ? * *",        // quartz ?
            "0 2 * * +MON",     // croner AND modifier
            "MON 2 * * *",      // a name where croner would silently replace it
            "0 2 * JAN-FOO *",  // not a month
            "0 2 * * FUNDAY",   // not a weekday
            "61 2 * * *",       // out of range
            "@reboot",          // not a schedule
            "0 2 * * 1;",       // junk
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(Schedule::parse("*/15 1-5,7 * jan-mar mon-fri").is_ok());
        assert_eq!(
            Schedule::parse("61 2 * * *").unwrap_err(),
            "minute field \"61\": 61 is out of range (0-59)"
        );
        assert_eq!(
            Schedule::parse("0 2 0 * *").unwrap_err(),
            "day-of-month field \"0\": 0 is out of range (1-31)"
        );
        assert!(Schedule::parse("*/0 * * * *")
            .unwrap_err()
            .contains("step \"0\""));
        assert!(
            Schedule::parse("0 0 * * 7").is_ok(),
            "7 is Sunday, as in cron"
        );
    }

    #[test]
    fn berlin_spring_forward_runs_fixed_job_after_the_gap() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC). 02:30 does not exist.
        assert_eq!(
            next("30 2 * * *", "2026-03-28T23:00:00Z", "Europe/Berlin"),
            "2026-03-29T01:00:00+00:00" // 03:00 CEST, the first valid time after the gap
        );
        // and the day after is back to 02:30 CEST = 00:30 UTC
        assert_eq!(
            next("30 2 * * *", "2026-03-29T02:00:00Z", "Europe/Berlin"),
            "2026-03-30T00:30:00+00:00"
        );
    }

    #[test]
    fn spring_forward_moves_only_the_job_in_the_gap() {
        // 01:45 exists on 2026-03-29 in Berlin: it runs then, and not again at 03:00 (croner
        // moved every fixed-time job whose search crossed the gap to its end).
        let runs = upcoming("45 1 * * *", "2026-03-28T12:00:00Z", "Europe/Berlin", 2);
        assert_eq!(
            runs,
            ["2026-03-29T00:45:00+00:00", "2026-03-29T23:45:00+00:00"] // 01:45 CET, 01:45 CEST
        );
        // Chatham's gap is 02:45 -> 03:45: a job at 03:00 moves to 03:45, one at 02:30 does not.
        assert_eq!(
            next("0 3 * * *", "2026-09-26T12:00:00Z", "Pacific/Chatham"),
            "2026-09-26T14:00:00+00:00"
        );
        let runs = upcoming("30 2 * * *", "2026-09-26T12:00:00Z", "Pacific/Chatham", 2);
        assert_eq!(runs[0], "2026-09-26T13:45:00+00:00"); // 02:30 CHAST
        assert_eq!(runs[1], "2026-09-27T12:45:00+00:00"); // 02:30 CHADT
    }

    #[test]
    fn berlin_fall_back_runs_fixed_job_once() {
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET (01:00 UTC); 02:30 happens twice.
        let runs = upcoming("30 2 * * *", "2026-10-24T12:00:00Z", "Europe/Berlin", 3);
        assert_eq!(
            runs,
            [
                "2026-10-25T00:30:00+00:00", // 02:30 CEST, first occurrence only
                "2026-10-26T01:30:00+00:00", // 02:30 CET next day
                "2026-10-27T01:30:00+00:00",
            ]
        );
    }

    #[test]
    fn berlin_fall_back_interval_job_runs_in_both_hours() {
        // Every 30 minutes: the repeated hour 02:00-03:00 is real time and runs twice.
        let runs = upcoming("*/30 * * * *", "2026-10-24T23:59:00Z", "Europe/Berlin", 4);
        assert_eq!(
            runs,
            [
                "2026-10-25T00:00:00+00:00", // 02:00 CEST
                "2026-10-25T00:30:00+00:00", // 02:30 CEST
                "2026-10-25T01:00:00+00:00", // 02:00 CET
                "2026-10-25T01:30:00+00:00", // 02:30 CET
            ]
        );
        // every minute: no hour lost, no minute doubled (110 runs from 00:20 to 02:10 UTC)
        let s = Schedule::parse("* * * * *").unwrap();
        let runs = s.upcoming(utc("2026-10-25T00:20:00Z"), &zone("Europe/Berlin"), 110);
        assert_eq!(
            runs.last().unwrap().to_rfc3339(),
            "2026-10-25T02:10:00+00:00"
        );
        assert!(runs.windows(2).all(|w| (w[1] - w[0]).num_seconds() == 60));
    }

    #[test]
    fn new_york_spring_forward_and_fall_back() {
        // 2026-03-08: 02:00 EST -> 03:00 EDT (07:00 UTC).
        assert_eq!(
            next("30 2 * * *", "2026-03-08T05:00:00Z", "America/New_York"),
            "2026-03-08T07:00:00+00:00" // 03:00 EDT
        );
        // 2026-11-01: 02:00 EDT -> 01:00 EST (06:00 UTC); 01:30 happens twice, runs once.
        let runs = upcoming("30 1 * * *", "2026-10-31T12:00:00Z", "America/New_York", 2);
        assert_eq!(
            runs,
            ["2026-11-01T05:30:00+00:00", "2026-11-02T06:30:00+00:00"] // 01:30 EDT, then EST
        );
    }

    #[test]
    fn previous_run_for_catch_up() {
        let s = Schedule::parse("0 2 * * *").unwrap();
        let prev = s
            .prev_before(utc("2026-05-10T01:00:00Z"), &zone("UTC"))
            .unwrap();
        assert_eq!(prev.to_rfc3339(), "2026-05-09T02:00:00+00:00");
    }

    #[test]
    fn zones() {
        assert_eq!(Zone::parse("local").unwrap(), Zone::Local);
        assert_eq!(Zone::parse("UTC").unwrap(), Zone::Utc);
        assert!(Zone::parse("Mars/Olympus").is_err());
        let z = zone("Europe/Berlin");
        assert_eq!(
            z.format(utc("2026-07-01T00:00:00Z")),
            "2026-07-01 02:00:00 +02:00"
        );
        assert_eq!(z.offset_seconds(utc("2026-01-01T00:00:00Z")), 3600);
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            assert!(jitter_delay(Duration::from_secs(2)) <= Duration::from_secs(2));
        }
        assert_eq!(jitter_delay(Duration::ZERO), Duration::ZERO);
    }
}
