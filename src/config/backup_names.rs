//! How backup files are named: `{series}-{YYYYMMDD-HHMMSS}.db[.zst][.failed]` (UTC), the
//! series of a database's files, and the manifest's name. Part of the model: loading checks
//! these names (series clashes, files rules that would take backups), `archive` writes and
//! lists them (and re-exports them for its users).

use std::path::Path;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};

/// Suffix added to a backup that failed verification.
pub const FAILED_SUFFIX: &str = ".failed";
/// The manifest of a backup directory.
pub const MANIFEST: &str = "manifest.json";
const TIME_FORMAT: &str = "%Y%m%d-%H%M%S";

/// The parts of a backup file name: `{series}-{YYYYMMDD-HHMMSS}.db[.zst][.failed]` (UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupName {
    /// Which source file: the database file's stem, or an attachment's alias.
    pub series: String,
    pub time: DateTime<Utc>,
    pub compressed: bool,
    pub failed: bool,
}

impl BackupName {
    pub fn file_name(&self) -> String {
        format!(
            "{}-{}.db{}{}",
            self.series,
            self.time.format(TIME_FORMAT),
            if self.compressed { ".zst" } else { "" },
            if self.failed { FAILED_SUFFIX } else { "" }
        )
    }

    /// Parse one of our names; anything else is None (and never touched).
    pub fn parse(name: &str) -> Option<BackupName> {
        let (rest, failed) = match name.strip_suffix(FAILED_SUFFIX) {
            Some(r) => (r, true),
            None => (name, false),
        };
        let (rest, compressed) = match rest.strip_suffix(".zst") {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let rest = rest.strip_suffix(".db")?;
        if rest.len() < 17 || !rest.is_char_boundary(rest.len() - 15) {
            return None;
        }
        let (series, stamp) = rest.split_at(rest.len() - 15);
        let series = series.strip_suffix('-')?;
        if series.is_empty() {
            return None;
        }
        let naive = NaiveDateTime::parse_from_str(stamp, TIME_FORMAT).ok()?;
        Some(BackupName {
            series: series.to_string(),
            time: Utc.from_utc_datetime(&naive),
            compressed,
            failed,
        })
    }
}

/// The series of a database file: its stem without leading dots (`.ht.sqlite` → `ht`: a
/// backup file's name never starts with a dot, so it is neither hidden nor taken for a temp
/// file); None when nothing is left or the stem is not UTF-8 (the database's name is used).
pub fn stem_series(path: &Path) -> Option<String> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .map(|s| s.trim_start_matches('.'))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// An attachment's series: its alias, or `{alias}-attached` when that is the main series.
pub fn attached_series(main: &str, alias: &str) -> String {
    if alias == main {
        format!("{alias}-attached")
    } else {
        alias.to_string()
    }
}
