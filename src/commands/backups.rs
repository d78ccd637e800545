//! `litekeeper backups list [DB] [--json]`: every backup on disk with its time, age, size,
//! compression, verification, SHA-256 prefix and the retention rules keeping it, plus totals
//! per database. Reads only the backup directories and their manifests: no daemon needed.
//! The JSON shape is a documented contract (README.md, "backups list --json"). A database
//! whose backups cannot be listed (or written) says so in its own entry: the others are
//! listed, the document stays whole, and the exit code says that something was wrong.

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::cli::BackupsListArgs;
use crate::config::Database;
use crate::domain::human_bytes;
use crate::exit::{ExitCode, Failure};
use crate::jobs::backup::{check_names, plan_warnings, retention_plan, Planned};
use crate::schedule::Zone;

use super::stream_json::{self, PrettyObject, Stop};

/// The `--json` document. It is streamed ([`write_json`]), never built whole; this is its
/// shape, which the streaming test checks byte for byte.
#[cfg(test)]
#[derive(Serialize)]
struct ListJson {
    generated_at: DateTime<Utc>,
    timezone: String,
    databases: Vec<DatabaseJson>,
}

#[derive(Serialize)]
struct DatabaseJson {
    database: String,
    dir: String,
    count: usize,
    total_bytes: u64,
    /// How many retention would delete if it ran now.
    expired: usize,
    /// Why this database's backups cannot be listed or written (null when all is well).
    error: Option<String>,
    /// Files here that need an operator's look (unknown to the manifest, future-dated).
    warnings: Vec<String>,
    backups: Vec<BackupJson>,
    /// Incremental points, oldest first (each names its chain's full backup as `base`).
    points: Vec<PointJson>,
}

/// One point of an incremental chain (README.md, "backups list --json").
#[derive(Serialize)]
struct PointJson {
    file: String,
    series: String,
    created_at: DateTime<Utc>,
    age_seconds: i64,
    /// The full backup the chain starts from, the point before this one, and its place.
    base: String,
    prev: String,
    sequence: u64,
    size: u64,
    page_count: u64,
    pages_changed: u64,
    sha256: String,
    image_sha256: String,
    /// Its file is there with its recorded size and so is every link back to the base.
    restorable: bool,
}

#[derive(Serialize)]
struct BackupJson {
    file: String,
    path: String,
    series: String,
    created_at: DateTime<Utc>,
    age_seconds: i64,
    size: u64,
    compressed: bool,
    /// quick | full | none | failed | unknown (no manifest entry)
    verified: String,
    sha256: Option<String>,
    /// Retention rules keeping it; empty when retention would delete it now.
    kept_by: Vec<String>,
    /// Why this file needs an operator's look (null when all is well).
    warning: Option<String>,
    /// The last restore drill of this copy (null when never drilled).
    drill: Option<crate::archive::DrillMark>,
    /// Its copy on each remote of the database, from the state DB (absent without remotes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    offsite: Vec<super::backups_offsite::OffsiteJson>,
}

pub fn list(path: &Path, args: BackupsListArgs) -> Result<ExitCode, Failure> {
    let config = super::load_config(path)?;
    if let Some(remote) = &args.remote {
        return super::remote_list::run(
            &config,
            remote,
            args.database.as_deref(),
            args.json,
            args.verify,
        );
    }
    let now = Utc::now();
    let zone = &config.daemon.timezone;
    let dbs: Vec<&Database> = match &args.database {
        Some(name) if config.database(name).is_none() && config.fleet_by_handle(name).is_some() => {
            let fleet = config.fleet_by_handle(name).expect("checked");
            config
                .members(fleet)
                .filter(|d| d.backup.is_some())
                .map(|d| d.as_ref())
                .collect()
        }
        Some(name) => {
            let db = super::database_named(&config, name)?;
            if db.backup.is_none() {
                return Err(Failure::new(
                    ExitCode::Usage,
                    anyhow::anyhow!(
                        "{}: database {name:?} has no [database.backup] section, so it has no backups",
                        config.file.display()
                    ),
                ));
            }
            vec![db.as_ref()]
        }
        None => config
            .databases
            .iter()
            .filter(|d| d.backup.is_some())
            .map(|d| d.as_ref())
            .collect(),
    };
    // Each database is listed as soon as its directory is read; one that cannot be read is
    // an entry with its error (and a line on stderr), and the listing goes on.
    let failed = std::cell::Cell::new(0usize);
    let offsite = super::backups_offsite::Offsite::open(&config);
    let listed = dbs.iter().map(|db| {
        let cfg = db.backup.as_ref().expect("filtered above");
        let listed = check_names(db, cfg)
            .map_err(|e| format!("its backups cannot be written: {e}"))
            .and_then(|()| {
                let held = offsite.held(db, zone, now);
                retention_plan(db, cfg, zone, now, None, &[], &held).map_err(|e| e.to_string())
            });
        Ok(match listed {
            Ok(plan) => {
                let files: Vec<String> = plan.iter().map(|p| p.found.file()).collect();
                to_json(db, &cfg.dir, &plan, now, offsite.of(db, &files))
            }
            Err(e) => {
                failed.set(failed.get() + 1);
                eprintln!("litekeeper: backups list {}: {e}", db.name);
                DatabaseJson {
                    database: db.name.clone(),
                    dir: cfg.dir.display().to_string(),
                    count: 0,
                    total_bytes: 0,
                    expired: 0,
                    error: Some(e),
                    warnings: Vec::new(),
                    backups: Vec::new(),
                    points: Vec::new(),
                }
            }
        })
    });
    let mut out = stream_json::stdout();
    let code = stream_json::finish(if args.json {
        write_json(&mut out, now, &zone.to_string(), listed)
    } else if dbs.is_empty() {
        writeln!(
            out,
            "no database in {} has a [database.backup] section",
            config.file.display()
        )
        .and_then(|()| out.flush())
        .map_err(Stop::from)
    } else {
        write_human(&mut out, zone, listed)
    })?;
    match failed.get() {
        0 => Ok(code),
        n => Err(Failure::new(
            ExitCode::IoErr,
            anyhow::anyhow!(
                "the backups of {n} database(s) could not be listed; see their entries above"
            ),
        )),
    }
}

/// `backups list --json`, database by database, byte-identical to `to_string_pretty` of
/// [`ListJson`].
fn write_json(
    out: &mut impl Write,
    now: DateTime<Utc>,
    timezone: &str,
    listed: impl Iterator<Item = Result<DatabaseJson, Failure>>,
) -> Result<(), Stop> {
    let mut doc = PrettyObject::new(&mut *out);
    doc.field("generated_at", &now)?;
    doc.field("timezone", timezone)?;
    let mut databases = doc.array("databases")?;
    for d in listed {
        databases.item(&d?)?;
        databases.flush()?;
    }
    databases.end()?.end()?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// `backups list`: one block per database, printed once its directory is read.
fn write_human(
    out: &mut impl Write,
    zone: &Zone,
    listed: impl Iterator<Item = Result<DatabaseJson, Failure>>,
) -> Result<(), Stop> {
    for (i, d) in listed.enumerate() {
        let d = d?;
        if i > 0 {
            writeln!(out)?;
        }
        writeln!(out, "{} ({})", d.database, d.dir)?;
        if let Some(e) = &d.error {
            writeln!(out, "  error: {e}")?;
            out.flush()?;
            continue;
        }
        if d.backups.is_empty() && d.points.is_empty() {
            writeln!(out, "  no backups yet")?;
            out.flush()?;
            continue;
        }
        if d.backups.is_empty() {
            // Points left of a chain whose full backup is gone: shown, not restorable.
            writeln!(out, "  no full backup")?;
        } else {
            writeln!(
                out,
                "  {:<27} {:>8} {:>10}  {:<4} {:<8} {:<12}  kept by",
                "time", "age", "size", "zstd", "verified", "sha256"
            )?;
        }
        for b in &d.backups {
            writeln!(
                out,
                "{}  {:<4} {:<8} {:<12}  {}",
                when_and_size(zone, b.created_at, b.age_seconds, b.size),
                if b.compressed { "yes" } else { "no" },
                b.verified,
                b.sha256
                    .as_deref()
                    .map(|s| &s[..s.len().min(12)])
                    .unwrap_or("-"),
                if b.kept_by.is_empty() {
                    "(expired: retention deletes it on the next backup)".to_string()
                } else {
                    b.kept_by.join(", ")
                }
            )?;
            if !b.offsite.is_empty() {
                let ago = |t: DateTime<Utc>| age(Utc::now().signed_duration_since(t).num_seconds());
                writeln!(
                    out,
                    "    off-site: {}",
                    super::backups_offsite::human(&b.offsite, ago)
                )?;
            }
            if let Some(d) = &b.drill {
                writeln!(out, "    {}", drill_line(d))?;
            }
        }
        if !d.points.is_empty() {
            writeln!(out, "  incremental points:")?;
        }
        for p in &d.points {
            writeln!(
                out,
                "{}  #{:<4} {:>7} pages changed  after {}{}",
                when_and_size(zone, p.created_at, p.age_seconds, p.size),
                p.sequence,
                p.pages_changed,
                p.base,
                if p.restorable {
                    ""
                } else {
                    "  (NOT restorable: a link back to its base is missing; restore stops before it)"
                }
            )?;
        }
        for w in &d.warnings {
            writeln!(out, "  warning: {w}")?;
        }
        writeln!(
            out,
            "  total: {} backup{}, {}{}",
            d.count,
            if d.count == 1 { "" } else { "s" },
            human_bytes(d.total_bytes),
            if d.expired > 0 {
                format!("; {} expired", d.expired)
            } else {
                String::new()
            }
        )?;
        out.flush()?;
    }
    Ok(())
}

fn to_json(
    db: &Database,
    dir: &Path,
    plan: &[Planned],
    now: DateTime<Utc>,
    mut offsite: std::collections::HashMap<String, Vec<super::backups_offsite::OffsiteJson>>,
) -> DatabaseJson {
    let backups: Vec<BackupJson> = plan
        .iter()
        .map(|p| BackupJson {
            file: p.found.file(),
            path: p.found.path.display().to_string(),
            series: p.found.name.series.clone(),
            created_at: p.found.name.time,
            age_seconds: now.signed_duration_since(p.found.name.time).num_seconds(),
            size: p.found.size,
            compressed: p.found.name.compressed,
            verified: if p.found.name.failed {
                "failed".into()
            } else {
                match &p.entry {
                    Some(e) => serde_json::to_value(e.verified)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_else(|| "unknown".into()),
                    None => "unknown".into(),
                }
            },
            sha256: p.entry.as_ref().map(|e| e.sha256.clone()),
            kept_by: p
                .decision
                .reasons
                .iter()
                .map(|r| r.as_str().to_string())
                .collect(),
            warning: p.warning(),
            drill: p.entry.as_ref().and_then(|e| e.drill.clone()),
            offsite: offsite.remove(&p.found.file()).unwrap_or_default(),
        })
        .collect();
    DatabaseJson {
        database: db.name.clone(),
        dir: dir.display().to_string(),
        count: backups.len(),
        total_bytes: backups.iter().map(|b| b.size).sum(),
        expired: backups.iter().filter(|b| b.kept_by.is_empty()).count(),
        error: None,
        warnings: plan_warnings(plan),
        backups,
        points: points_json(db, dir, now),
    }
}

fn points_json(db: &Database, dir: &Path, now: DateTime<Utc>) -> Vec<PointJson> {
    let Ok(manifest) = crate::archive::Manifest::load(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PointJson> = manifest
        .deltas
        .iter()
        .filter(|d| d.database == db.name)
        .map(|d| PointJson {
            file: d.file.clone(),
            series: d.series.clone(),
            created_at: d.created_at,
            age_seconds: now.signed_duration_since(d.created_at).num_seconds(),
            base: d.base.clone(),
            prev: d.prev.clone(),
            sequence: d.sequence,
            size: d.size,
            page_count: d.page_count,
            pages_changed: d.pages_changed,
            sha256: d.sha256.clone(),
            image_sha256: d.image_sha256.clone(),
            restorable: crate::chain::way_to(dir, &manifest, d).is_some_and(|w| w.broken.is_none()),
        })
        .collect();
    out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.file.cmp(&b.file)));
    out
}

/// "3d 4h", "17h", "12m", "40s"; "future" for a backup dated after now.
/// The first columns of a row of the human listing: time, age, size.
fn when_and_size(zone: &Zone, at: DateTime<Utc>, age_seconds: i64, size: u64) -> String {
    format!(
        "  {:<27} {:>8} {:>10}",
        zone.format(at),
        age(age_seconds),
        human_bytes(size)
    )
}

/// "drill: failed 3m ago: why" — a copy's last drill, local or remote.
pub(super) fn drill_line(d: &crate::archive::DrillMark) -> String {
    let ago = age(Utc::now().signed_duration_since(d.at).num_seconds());
    match &d.error {
        Some(e) => format!("drill: {} {ago} ago: {e}", d.verdict.as_str()),
        None => format!("drill: {} {ago} ago", d.verdict.as_str()),
    }
}

fn age(secs: i64) -> String {
    if secs < -(crate::retention::FUTURE_SLACK.num_seconds()) {
        return "future".into();
    }
    let s = secs.max(0);
    match s {
        s if s >= 86400 => format!("{}d {}h", s / 86400, s % 86400 / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn databases(n: usize) -> Vec<DatabaseJson> {
        (0..n)
            .map(|i| {
                let backups: Vec<BackupJson> = (0..i % 3)
                    .map(|j| BackupJson {
                        file: format!("t{i}-2026112{j}-010002.db.zst"),
                        path: format!("/var/backups/t{i}/t{i}-2026112{j}-010002.db.zst"),
                        series: format!("t{i}"),
                        created_at: utc("2026-11-25T01:00:02Z"),
                        age_seconds: 65169,
                        size: 20971520,
                        compressed: j == 0,
                        verified: "quick".into(),
                        sha256: (j == 0).then(|| "99ab27678f350989e810b6ed83b3924c".into()),
                        kept_by: if j == 0 {
                            vec!["last".into(), "newest".into()]
                        } else {
                            vec![]
                        },
                        warning: (j == 1).then(|| "dated in the future".into()),
                        drill: (j == 0).then(|| crate::archive::DrillMark {
                            at: utc("2026-11-25T04:30:00Z"),
                            verdict: crate::domain::DrillVerdict::Failed,
                            error: Some("assert[0] \"SELECT 0\": returned 0".into()),
                        }),
                        offsite: if j == 0 {
                            vec![super::super::backups_offsite::OffsiteJson {
                                remote: "offsite".into(),
                                state: "pending",
                                at: Some(utc("2026-11-25T01:00:03Z")),
                                attempts: Some(2),
                                error: Some("remote \"offsite\": timeout".into()),
                            }]
                        } else {
                            vec![]
                        },
                    })
                    .collect();
                DatabaseJson {
                    database: format!("tenant-t{i}"),
                    dir: format!("/var/backups/\"t{i}\""),
                    count: backups.len(),
                    total_bytes: backups.iter().map(|b| b.size).sum(),
                    expired: backups.iter().filter(|b| b.kept_by.is_empty()).count(),
                    error: (i == 3).then(|| "a \"bad\"\nerror".into()),
                    warnings: vec![format!("w{i}"); i % 2],
                    backups,
                    points: (0..i % 2)
                        .map(|j| PointJson {
                            file: format!("chat-2026010{j}-000000.delta.zst"),
                            series: "chat".into(),
                            created_at: utc("2026-01-01T00:10:00Z"),
                            age_seconds: 60,
                            base: "chat-20260101-000000.db.zst".into(),
                            prev: "chat-20260101-000000.db.zst".into(),
                            sequence: 1,
                            size: 300,
                            page_count: 10,
                            pages_changed: 2,
                            sha256: "ab".into(),
                            image_sha256: "cd".into(),
                            restorable: j == 0,
                        })
                        .collect(),
                }
            })
            .collect()
    }

    #[test]
    fn streamed_json_is_byte_identical_to_the_whole_document() {
        let now = utc("2026-11-25T19:16:11.5Z");
        for n in [0, 1, 2, 7] {
            let whole = serde_json::to_string_pretty(&ListJson {
                generated_at: now,
                timezone: "Europe/Berlin".into(),
                databases: databases(n),
            })
            .unwrap()
                + "\n";
            let mut out = Vec::new();
            write_json(
                &mut out,
                now,
                "Europe/Berlin",
                databases(n).into_iter().map(Ok),
            )
            .unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), whole, "{n} databases");
        }
    }
}
