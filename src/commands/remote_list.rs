//! `litekeeper backups list [DB] --remote NAME [--verify] [--json]`: the copies the remote's
//! manifests list for each database using it, each checked against the store: `ok`,
//! `missing` (listed, not stored: deleted by hand), `size-differs`, and with `--verify`
//! `damaged` (read back, SHA-256 differs); the deltas of incremental chains the same way,
//! as `points`; each copy's last restore drill (`drill: failed …`); the host that owns the
//! database's copies there (`owner`, said in the text when it is not this host). Exit 65
//! when any copy or point is flagged.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{Config, Database};
use crate::domain::human_bytes;
use crate::exit::{ExitCode, Failure};
use crate::remote::{self, RemoteManifest, Store};

#[derive(Serialize)]
struct RemoteListJson {
    remote: String,
    url: String,
    databases: Vec<DbJson>,
}

#[derive(Serialize)]
struct DbJson {
    database: String,
    /// The host that writes the database's remote manifest (null: none recorded yet).
    owner: Option<String>,
    count: usize,
    total_bytes: u64,
    /// Why the remote could not be listed for this database (null when all is well).
    error: Option<String>,
    copies: Vec<CopyJson>,
    /// Deltas of incremental chains, newest first (absent when there are none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    points: Vec<PointJson>,
}

#[derive(Serialize)]
struct PointJson {
    object: String,
    local_file: String,
    series: String,
    /// The chain's full backup (local file name), this point's place in it, the point before.
    base: String,
    sequence: u64,
    prev: String,
    backup_time: DateTime<Utc>,
    size: u64,
    sha256: String,
    image_sha256: String,
    /// ok | missing | size-differs | damaged
    state: &'static str,
}

#[derive(Serialize)]
struct CopyJson {
    object: String,
    local_file: String,
    series: String,
    backup_time: DateTime<Utc>,
    created_at: DateTime<Utc>,
    size: u64,
    sha256: String,
    source_sha256: String,
    /// ok | missing | size-differs | damaged
    state: &'static str,
    /// The last restore drill of this copy (null when never drilled).
    drill: Option<crate::archive::DrillMark>,
}

pub fn run(
    config: &Config,
    remote: &str,
    only: Option<&str>,
    json: bool,
    verify: bool,
) -> Result<ExitCode, Failure> {
    let usage = |m: String| Failure::new(ExitCode::Usage, anyhow::anyhow!(m));
    let r = config
        .remotes
        .iter()
        .find(|r| r.name == remote)
        .ok_or_else(|| {
            usage(format!(
                "no [[remote]] named {remote:?} in {}",
                config.file.display()
            ))
        })?;
    let dbs: Vec<&Database> = config
        .databases
        .iter()
        .filter(|d| only.is_none_or(|o| d.name == o))
        .filter(|d| {
            d.backup
                .as_ref()
                .is_some_and(|b| b.remotes.contains(&r.name))
        })
        .map(|d| d.as_ref())
        .collect();
    if let Some(o) = only.filter(|_| dbs.is_empty()) {
        return Err(usage(format!(
            "database {o:?} does not copy to remote {remote:?}"
        )));
    }
    let store = Store::open(r.clone()).map_err(|e| Failure::new(e.code, anyhow::anyhow!(e)))?;
    let this_host = r.host.clone();
    let mut out = RemoteListJson {
        remote: r.name.clone(),
        url: r.url.clone(),
        databases: Vec::new(),
    };
    let mut flagged = false;
    let mut failed = None;
    for db in dbs {
        let entry = match list_one(&store, &db.name, verify) {
            Ok((copies, points, owner)) => DbJson {
                database: db.name.clone(),
                owner,
                count: copies.len(),
                total_bytes: copies.iter().map(|c| c.size).sum(),
                error: None,
                copies,
                points,
            },
            Err(e) => {
                failed.get_or_insert(e.code);
                DbJson {
                    database: db.name.clone(),
                    owner: None,
                    count: 0,
                    total_bytes: 0,
                    error: Some(e.to_string()),
                    copies: Vec::new(),
                    points: Vec::new(),
                }
            }
        };
        flagged |= entry.copies.iter().any(|c| c.state != "ok")
            || entry.points.iter().any(|p| p.state != "ok");
        out.databases.push(entry);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serializes")
        );
    } else {
        print_text(&out, &this_host);
    }
    Ok(match (failed, flagged) {
        (Some(code), _) => code,
        (None, true) => ExitCode::DataErr,
        (None, false) => ExitCode::Ok,
    })
}

/// The listing as text: per database its copies and incremental points, one line each.
fn print_text(out: &RemoteListJson, this_host: &str) {
    for d in &out.databases {
        println!(
            "remote {:?} ({}) database {}: {} cop{}, {}",
            out.remote,
            out.url,
            d.database,
            d.count,
            if d.count == 1 { "y" } else { "ies" },
            human_bytes(d.total_bytes)
        );
        if let Some(owner) = d.owner.as_deref().filter(|o| *o != this_host) {
            println!("  owner: host {owner:?} (not this host {this_host:?}: its copies, restorable here; pushes from here are refused)");
        }
        if let Some(e) = &d.error {
            println!("  error: {e}");
        }
        for c in &d.copies {
            println!(
                "  {:<44} {}  {:>10}  {}",
                c.object,
                c.backup_time.format("%Y-%m-%d %H:%M:%S"),
                human_bytes(c.size),
                state_text(c.state)
            );
            if let Some(d) = &c.drill {
                println!("    {}", super::backups::drill_line(d));
            }
        }
        if !d.points.is_empty() {
            println!("  incremental points: {}", d.points.len());
        }
        for p in &d.points {
            println!(
                "    {:<42} {}  {:>10}  point {} after {}  {}",
                p.object,
                p.backup_time.format("%Y-%m-%d %H:%M:%S"),
                human_bytes(p.size),
                p.sequence,
                p.base,
                state_text(p.state)
            );
        }
    }
}

fn state_text(state: &str) -> &'static str {
    match state {
        "ok" => "ok",
        "missing" => "MISSING: listed in the manifest, not in the store",
        "size-differs" => "SIZE DIFFERS from the manifest: damaged or replaced",
        _ => "DAMAGED: SHA-256 differs from the manifest",
    }
}

type Listed = (Vec<CopyJson>, Vec<PointJson>, Option<String>);

fn list_one(store: &Store, database: &str, verify: bool) -> Result<Listed, remote::RemoteError> {
    let m = RemoteManifest::load(store, database)?;
    let stored: HashMap<String, u64> = store.list(database)?.into_iter().collect();
    let state_of = |c: &remote::Copy| {
        let key = store.key(database, &c.object);
        match stored.get(&key) {
            None => "missing",
            Some(&size) if size != c.size => "size-differs",
            Some(_) if verify => match remote::read_back(store, &key) {
                Ok((sha, _)) if sha == c.sha256 => "ok",
                Ok(_) => "damaged",
                Err(_) => "missing",
            },
            Some(_) => "ok",
        }
    };
    let mut out = Vec::new();
    for c in m.copies.iter().rev() {
        let state = state_of(c);
        out.push(CopyJson {
            object: c.object.clone(),
            local_file: c.local_file.clone(),
            series: c.series.clone(),
            backup_time: c.backup_time,
            created_at: c.created_at,
            size: c.size,
            sha256: c.sha256.clone(),
            source_sha256: c.source_sha256.clone(),
            state,
            drill: c.drill.clone(),
        });
    }
    let points = m
        .deltas
        .iter()
        .rev()
        .map(|d| PointJson {
            object: d.copy.object.clone(),
            local_file: d.copy.local_file.clone(),
            series: d.copy.series.clone(),
            base: d.base.clone(),
            sequence: d.sequence,
            prev: d.prev.clone(),
            backup_time: d.copy.backup_time,
            size: d.copy.size,
            sha256: d.copy.sha256.clone(),
            image_sha256: d.image_sha256.clone(),
            state: state_of(&d.copy),
        })
        .collect();
    Ok((out, points, m.host))
}
