//! `litekeeper backups list [DB] [--json]`: every backup on disk with its time, age, size,
//! compression, verification, SHA-256 prefix and the retention rules keeping it, plus totals
//! per database. Reads only the backup directories and their manifests: no daemon needed.
//! The JSON shape is a documented contract (README.md, "backups list --json").

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::cli::BackupsListArgs;
use crate::config::Database;
use crate::exit::{ExitCode, Failure, OrExit};
use crate::jobs::backup::{human_bytes, retention_plan, Planned};

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
    backups: Vec<BackupJson>,
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
}

pub fn list(path: &Path, args: BackupsListArgs) -> Result<ExitCode, Failure> {
    let config = super::load_config(path)?;
    let now = Utc::now();
    let zone = &config.daemon.timezone;
    let dbs: Vec<&Database> = match &args.database {
        Some(name) => {
            let db = config.database(name).ok_or_else(|| {
                Failure::new(
                    ExitCode::Usage,
                    anyhow::anyhow!("no database named {name:?} in {}", config.file.display()),
                )
            })?;
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
    let mut out = Vec::new();
    for db in dbs {
        let cfg = db.backup.as_ref().expect("filtered above");
        let plan = retention_plan(db, cfg, zone, now, None).or_exit(ExitCode::IoErr)?;
        out.push(to_json(db, &cfg.dir, &plan, now));
    }
    if args.json {
        let doc = ListJson {
            generated_at: now,
            timezone: zone.to_string(),
            databases: out,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).or_exit(ExitCode::Failed)?
        );
        return Ok(ExitCode::Ok);
    }
    if out.is_empty() {
        println!(
            "no database in {} has a [database.backup] section",
            config.file.display()
        );
    }
    for (i, d) in out.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("{} ({})", d.database, d.dir);
        if d.backups.is_empty() {
            println!("  no backups yet");
            continue;
        }
        println!(
            "  {:<27} {:>8} {:>10}  {:<4} {:<8} {:<12}  kept by",
            "time", "age", "size", "zstd", "verified", "sha256"
        );
        for b in &d.backups {
            println!(
                "  {:<27} {:>8} {:>10}  {:<4} {:<8} {:<12}  {}",
                zone.format(b.created_at),
                age(b.age_seconds),
                human_bytes(b.size),
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
            );
        }
        println!(
            "  total: {} backup{}, {}{}",
            d.count,
            if d.count == 1 { "" } else { "s" },
            human_bytes(d.total_bytes),
            if d.expired > 0 {
                format!("; {} expired", d.expired)
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::Ok)
}

fn to_json(db: &Database, dir: &Path, plan: &[Planned], now: DateTime<Utc>) -> DatabaseJson {
    let backups: Vec<BackupJson> = plan
        .iter()
        .map(|p| BackupJson {
            file: p.found.name.file_name(),
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
        })
        .collect();
    DatabaseJson {
        database: db.name.clone(),
        dir: dir.display().to_string(),
        count: backups.len(),
        total_bytes: backups.iter().map(|b| b.size).sum(),
        expired: backups.iter().filter(|b| b.kept_by.is_empty()).count(),
        backups,
    }
}

/// "3d 4h", "17h", "12m", "40s".
fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        s if s >= 86400 => format!("{}d {}h", s / 86400, s % 86400 / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
