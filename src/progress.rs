//! Live progress lines for a person at a terminal: one line per running job on stderr (prune:
//! rows deleted of those counted, batches, rate, time left; vacuum: elapsed time and pages;
//! backup: pages copied), cleared when the job ends, before its summary is printed.
//!
//! Shown only when stderr is a terminal, the logs do not go to the journal, and `--quiet` was
//! not given ([`init`], called once by `logging::init`); otherwise every [`Progress`] is a no-op,
//! so a pipe, a file, the journal or `--log-format json` never see a progress byte. The lines
//! carry no colour (`NO_COLOR` has nothing to turn off). Log lines written while bars are
//! shown go through [`suspend`], which lifts the bars, writes, and redraws them.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether progress lines are shown. Process-wide like the log subscriber `logging::init`
/// installs (it describes the process's stderr, decided once before any job runs); the
/// concurrent jobs of a fleet share one [`MultiProgress`] so their lines do not overwrite one
/// another.
static ENABLED: AtomicBool = AtomicBool::new(false);
static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// Decide once whether a person is watching: `show` is stderr-is-a-terminal and not quiet and
/// not the journal.
pub(crate) fn init(show: bool) {
    ENABLED.store(show, Ordering::Relaxed);
}

/// True when progress lines are drawn.
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

fn bars() -> &'static MultiProgress {
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)))
}

/// Run `f` (a write to stderr) with the progress lines lifted, so they do not tear a log line.
pub(crate) fn suspend<R>(f: impl FnOnce() -> R) -> R {
    match BARS.get() {
        Some(m) if enabled() => m.suspend(f),
        _ => f(),
    }
}

/// One job's progress line; a no-op when progress is not shown. Cleared on drop.
#[derive(Debug)]
pub(crate) struct Progress(Option<ProgressBar>);

impl Progress {
    fn make(len: Option<u64>, template: &str, prefix: String) -> Progress {
        if !enabled() {
            return Progress(None);
        }
        let bar = match len {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(prefix);
        let bar = bars().add(bar);
        if len.is_none() {
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        Progress(Some(bar))
    }

    /// Prune: rows deleted of `total` counted for `rule`, with batches in the message.
    pub(crate) fn rows(database: &str, rule: &str, total: u64) -> Progress {
        Progress::counted(format!("prune {database} {rule}:"), "rows deleted", total)
    }

    /// `done` of `total` `unit` (incremental vacuum: "free pages freed"), a message after.
    pub(crate) fn counted(prefix: String, unit: &str, total: u64) -> Progress {
        Progress::make(
            Some(total),
            &format!(
                "{{prefix}} [{{bar:24}}] {{human_pos}}/{{human_len}} {unit}, {{msg}}, {{per_sec:0}}, about {{eta}} left"
            ),
            prefix,
        )
    }

    /// A job with no measurable end (a full VACUUM): elapsed time and what it works on.
    pub(crate) fn working(prefix: String) -> Progress {
        Progress::make(None, "{spinner} {prefix} {msg}, {elapsed} elapsed", prefix)
    }

    /// A handle for a callback on another owner (SQLite's progress handler): sets the
    /// message. None when nothing is shown.
    pub(crate) fn handle(&self) -> Option<ProgressBar> {
        self.0.clone()
    }

    pub(crate) fn set(&self, pos: u64) {
        if let Some(b) = &self.0 {
            b.set_position(pos);
        }
    }

    pub(crate) fn message(&self, msg: impl Into<Cow<'static, str>>) {
        if let Some(b) = &self.0 {
            b.set_message(msg);
        }
    }
}

/// Backup: pages copied of `pages` (the backup drives and clears the bar itself).
pub(crate) fn pages_bar(series: &str, pages: u64) -> Option<ProgressBar> {
    Progress::make(
        Some(pages),
        "backup {prefix} [{bar:24}] {human_pos}/{human_len} pages, {per_sec:0}, about {eta} left",
        series.to_string(),
    )
    .0
    .take()
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            b.finish_and_clear();
            bars().remove(&b);
        }
    }
}
