//! Restoring a point of an incremental chain (`restore DB --at WHEN`, or a delta named as the
//! backup): which full backup and which deltas (for the main database and each attached one), checked before anything is written. A link
//! that is missing or damaged stops the way at the last good point before it, and
//! [`Point::broken`] says which link and which point the restore reaches instead; the image
//! is never one that matches no point (each delta's file SHA-256 and, at the end, the whole
//! image's SHA-256 are checked).

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};

use crate::archive::{self, Entry, Manifest};
use crate::chain::{self, DeltaEntry};
use crate::config::Database;
use crate::schedule::Zone;

use super::{all_drills_failed, drilled, select, BackupSource, Drilled, RestoreError};

/// When to restore to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum At {
    Latest,
    Time(DateTime<Utc>),
}

/// Read `--at`: `latest`, an RFC 3339 time (`2026-12-06T14:05:00Z`, with an offset), or a
/// wall-clock time in the configuration's zone (`2026-12-06 14:05`, seconds optional, `T` or
/// a space). A wall-clock time that occurs twice (DST fall-back) is the earlier; one that
/// does not occur (spring-forward gap) is refused.
pub(crate) fn parse_at(text: &str, zone: &Zone) -> Result<At, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("latest") {
        return Ok(At::Latest);
    }
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(At::Time(d.with_timezone(&Utc)));
    }
    let naive = ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
        .ok_or_else(|| {
            format!(
                "--at {t:?}: expected \"latest\", a time like \"2026-12-06 14:05\" (in the configuration's zone, {zone}) or \"2026-12-06T14:05:00Z\""
            )
        })?;
    // A wall-clock time the clock shows twice (DST ends) is refused: restoring the earlier
    // of the two silently could leave out the hour the operator wanted.
    fn one<Tz: TimeZone>(
        local: chrono::LocalResult<DateTime<Tz>>,
    ) -> Result<DateTime<Utc>, Option<(String, String)>> {
        match local {
            chrono::LocalResult::Single(d) => Ok(d.with_timezone(&Utc)),
            chrono::LocalResult::Ambiguous(a, b) => Err(Some((
                a.fixed_offset().to_rfc3339(),
                b.fixed_offset().to_rfc3339(),
            ))),
            chrono::LocalResult::None => Err(None),
        }
    }
    let local = match zone {
        Zone::Utc => Ok(Utc.from_utc_datetime(&naive)),
        Zone::Local => one(chrono::Local.from_local_datetime(&naive)),
        Zone::Named(tz) => one(tz.from_local_datetime(&naive)),
    };
    local.map(At::Time).map_err(|twice| match twice {
        Some((a, b)) => format!(
            "--at {t:?}: that wall-clock time happens twice in {zone} (the clocks go back): give one of them, --at {a} or --at {b}"
        ),
        None => format!("--at {t:?}: that wall-clock time does not exist in {zone} (a DST gap)"),
    })
}

/// The point a restore reaches: the deltas applied after the full backup, and the image's
/// SHA-256 at the end.
#[derive(Debug, Clone)]
pub struct Point {
    /// The point's file (a delta, or the full backup when no delta applies).
    pub file: String,
    pub time: DateTime<Utc>,
    pub deltas: Vec<DeltaEntry>,
    /// SHA-256 of the image at this point (None: the full backup itself, checked by its own).
    pub image_sha256: Option<String>,
    /// The point asked for could not be reached: the first missing or damaged link and why,
    /// and the point asked for.
    pub broken: Option<Broken>,
}

impl Point {
    /// The point reached by applying `deltas` (in order) to the full backup `base` made at
    /// `base_time`: the last delta's, or the full backup itself when none applies.
    pub(crate) fn reached(
        base: &str,
        base_time: DateTime<Utc>,
        deltas: Vec<DeltaEntry>,
        broken: Option<Broken>,
    ) -> Point {
        match deltas.last() {
            Some(last) => Point {
                file: last.file.clone(),
                time: last.created_at,
                image_sha256: Some(last.image_sha256.clone()),
                deltas: deltas.clone(),
                broken,
            },
            None => Point {
                file: base.to_string(),
                time: base_time,
                image_sha256: None,
                deltas,
                broken,
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct Broken {
    pub link: String,
    pub why: String,
    pub wanted: String,
}

/// Every file of `db` as it was at `at`: the main database, then each attached database
/// (`Database::backup_sources` order), each the newest point of its own series at or before
/// `at`. An incremental run dates the points of all its files alike, so they are one run's.
pub(crate) fn select_at_all(db: &Database, at: At) -> Result<Vec<BackupSource>, RestoreError> {
    db.backup_sources()
        .iter()
        .map(|s| select_at_series(db, at, &s.series))
        .collect()
}

fn select_at_series(db: &Database, at: At, series: &str) -> Result<BackupSource, RestoreError> {
    let (dir, manifest) = dir_and_manifest(db)?;
    let until = at.until();
    let fulls: Vec<Entry> = archive::list_of(&dir, &manifest, &db.name)
        .map_err(RestoreError::ListBackups)?
        .into_iter()
        .filter(|f| f.name.series == series && !f.name.failed && f.name.time <= until)
        .filter_map(|f| f.entry)
        .collect();
    // A full backup whose last drill failed is passed over like a missing one.
    let (full, skipped) = match drilled(fulls, |e| e.drill.as_ref().filter(|_| e.drill_failed())) {
        Drilled::Pick(picked) => picked,
        Drilled::AllFailed(newest, mark) => {
            return Err(all_drills_failed(
                dir.display().to_string(),
                &format!("full backup at or before {at}"),
                db,
                &newest.file,
                mark,
                None,
            ))
        }
        Drilled::NoCopy => {
            return Err(RestoreError::NoPointBefore {
                dir: dir.clone(),
                database: db.name.clone(),
                at: at.to_string(),
            })
        }
    };
    let target = chain::deltas_of(&manifest, &db.name, series)
        .filter(|d| d.base == full.file && d.created_at <= until)
        .max_by_key(|d| (d.created_at, d.sequence))
        .cloned();
    let mut source = match &target {
        None => select(db, Some(&full.file))?,
        Some(t) => with_deltas(db, &dir, &manifest, t)?,
    };
    // A newer full backup whose drill failed: what is restored is older than asked (that
    // full's newest point at or before `at`, or the full itself), and says so.
    if let Some((failed, mark)) = skipped {
        let wanted = chain::deltas_of(&manifest, &db.name, series)
            .filter(|d| d.base == failed.file && d.created_at <= until)
            .max_by_key(|d| (d.created_at, d.sequence))
            .map_or(failed.file.clone(), |d| d.file.clone());
        let lost = Broken {
            link: failed.file.clone(),
            why: super::drill_failed_why(&mark),
            wanted,
        };
        lost_newer(&mut source, &full.file, full.created_at, lost);
    }
    // A newer point at or before `at` on a chain whose full backup is gone: what is restored
    // is older than asked, and says so. (A point of an older chain whose full is still here
    // may be dated after `full`: points run more than once a second are dated ahead of the
    // clock, and the full backup made next is dated by it. `full` is then the newer state.)
    let gone = |base: &str| {
        manifest.get(base).is_none() || std::fs::symlink_metadata(dir.join(base)).is_err()
    };
    let newer = chain::deltas_of(&manifest, &db.name, series)
        .filter(|d| d.base != full.file && d.created_at <= until && gone(&d.base))
        .filter(|d| d.created_at > target.as_ref().map_or(full.created_at, |t| t.created_at))
        .max_by_key(|d| (d.created_at, d.sequence));
    if let Some(n) = newer {
        let lost = Broken {
            link: n.base.clone(),
            why: "the full backup its chain starts from is not in the backup directory".into(),
            wanted: n.file.clone(),
        };
        lost_newer(&mut source, &full.file, full.created_at, lost);
    }
    // A newer full backup at or before `at` that the manifest records but the directory no
    // longer has (deleted by hand): the point restored is older than one that was made.
    let gone = manifest
        .backups
        .iter()
        .filter(|e| e.database == db.name && e.series == series)
        .filter(|e| e.verified != crate::domain::Verified::Failed)
        .filter(|e| e.created_at > full.created_at && e.created_at <= until)
        .filter(|e| std::fs::symlink_metadata(dir.join(&e.file)).is_err())
        .max_by_key(|e| e.created_at);
    if let Some(g) = gone {
        let lost = Broken {
            link: g.file.clone(),
            why: "the manifest records this full backup but the backup directory has no such file"
                .into(),
            wanted: g.file.clone(),
        };
        lost_newer(&mut source, &full.file, full.created_at, lost);
    }
    Ok(source)
}

/// Record on `source` (the full backup `full` made at `full_time`, with or without deltas)
/// that a newer point at or before `--at` cannot be reached: `lost` says which and why,
/// unless a broken link of its own way is already named.
pub(crate) fn lost_newer(
    source: &mut BackupSource,
    full: &str,
    full_time: DateTime<Utc>,
    lost: Broken,
) {
    match &mut source.point {
        Some(p) => {
            p.broken.get_or_insert(lost);
        }
        None => source.point = Some(Point::reached(full, full_time, Vec::new(), Some(lost))),
    }
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Latest => f.write_str("now"),
            At::Time(t) => write!(f, "{}", t.format("%Y-%m-%d %H:%M:%S UTC")),
        }
    }
}

impl At {
    /// The newest time a point may have.
    pub(crate) fn until(self) -> DateTime<Utc> {
        match self {
            At::Latest => DateTime::<Utc>::MAX_UTC,
            At::Time(t) => t,
        }
    }
}

/// `restore DB FILE` where FILE is a delta: that point.
pub(crate) fn select_delta(
    db: &Database,
    file: &str,
) -> Result<Option<BackupSource>, RestoreError> {
    if chain::DeltaName::parse(file).is_none() {
        return Ok(None);
    }
    let (dir, manifest) = dir_and_manifest(db)?;
    let Some(d) = manifest
        .deltas
        .iter()
        .find(|d| d.file == file && d.database == db.name)
        .cloned()
    else {
        return Err(RestoreError::NoSuchBackup {
            dir,
            wanted: file.to_string(),
            database: db.name.clone(),
        });
    };
    with_deltas(db, &dir, &manifest, &d).map(Some)
}

fn dir_and_manifest(db: &Database) -> Result<(std::path::PathBuf, Manifest), RestoreError> {
    let dir = db
        .backup
        .as_ref()
        .ok_or_else(|| RestoreError::NoBackupSection {
            database: db.name.clone(),
        })?
        .dir
        .clone();
    let manifest = Manifest::load(&dir).map_err(RestoreError::Manifest)?;
    Ok((dir, manifest))
}

/// The way to `target`: its base (checksum verified by `select`) and every delta up to it
/// whose file is there with the checksum the manifest records, stopping before the first
/// that is not.
fn with_deltas(
    db: &Database,
    dir: &std::path::Path,
    manifest: &Manifest,
    target: &DeltaEntry,
) -> Result<BackupSource, RestoreError> {
    let way = chain::way_to(dir, manifest, target).ok_or_else(|| RestoreError::NoSuchBackup {
        dir: dir.to_path_buf(),
        wanted: target.base.clone(),
        database: db.name.clone(),
    })?;
    let mut source = select(db, Some(&way.base.file))?;
    let mut broken = way.broken.map(|(link, why)| Broken {
        link,
        why,
        wanted: target.file.clone(),
    });
    let mut deltas = Vec::new();
    for d in way.deltas {
        match archive::sha256_file(&dir.join(&d.file)) {
            Ok(sha) if sha == d.sha256 => deltas.push(d),
            Ok(sha) => {
                broken = Some(Broken {
                    link: d.file.clone(),
                    why: format!("SHA-256 {sha} is not the manifest's {}", d.sha256),
                    wanted: target.file.clone(),
                });
                break;
            }
            Err(e) => {
                broken = Some(Broken {
                    link: d.file.clone(),
                    why: e.to_string(),
                    wanted: target.file.clone(),
                });
                break;
            }
        }
    }
    source.restored_size = deltas
        .iter()
        .map(|d| d.page_count * d.page_size)
        .fold(source.restored_size, u64::max);
    source.point = Some(Point::reached(
        &way.base.file,
        way.base.created_at,
        deltas,
        broken,
    ));
    Ok(source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_reads_latest_rfc3339_and_wall_clock_in_the_zone() {
        let berlin = Zone::parse("Europe/Berlin").unwrap();
        assert_eq!(parse_at("latest", &berlin), Ok(At::Latest));
        let t = |s: &str| At::Time(DateTime::parse_from_rfc3339(s).unwrap().to_utc());
        assert_eq!(
            parse_at("2026-12-06 14:05", &berlin),
            Ok(t("2026-12-06T13:05:00Z"))
        );
        assert_eq!(
            parse_at("2026-07-06T14:05:30", &berlin),
            Ok(t("2026-07-06T12:05:30Z"))
        );
        assert_eq!(
            parse_at("2026-12-06T14:05:00+00:00", &berlin),
            Ok(t("2026-12-06T14:05:00Z"))
        );
        assert!(parse_at("2026-03-29 02:30", &berlin)
            .unwrap_err()
            .contains("DST gap"));
        // Twice on the clock (DST ends): refused, naming both instants to choose from.
        let twice = parse_at("2026-10-25 02:30", &berlin).unwrap_err();
        assert!(
            twice.contains("2026-10-25T02:30:00+02:00")
                && twice.contains("2026-10-25T02:30:00+01:00"),
            "{twice}"
        );
        assert!(parse_at("yesterday", &Zone::Utc)
            .unwrap_err()
            .contains("--at"));
    }
}
