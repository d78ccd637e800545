//! Fleet membership, its one owner: which files each fleet has now, scanned at load
//! (`with_members`: every command's configuration and the daemon's reloads go through it) and
//! on every tick of a fleet's timers (`scan`; the walk in `scan.rs`, the member rule in
//! `config::fleet`), and what changed since the last scan (a member that appeared or
//! vanished, a refused file) so each change is logged once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::fleet::Rejected;
use crate::config::{Config, Database};

mod scan;
pub use scan::{with_members, Scan};

/// Fleet members as last scanned. Lives in the scheduler's `State`.
#[derive(Default)]
pub(crate) struct Roster {
    /// Members found at the latest scan, by name (their jobs are dispatched by name).
    members: HashMap<String, Arc<Database>>,
    /// Member names (and paths) per fleet at the latest scan: a vanished one is reported once.
    known: HashMap<String, BTreeMap<String, String>>,
    /// Files each fleet's latest scan refused: one is logged when it appears, not every tick.
    rejected: HashMap<String, Vec<Rejected>>,
}

/// What a fleet's new scan changed: members (name, path) that appeared or vanished, and files
/// refused now that were not before (a file that goes and comes back counts again).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Changes {
    pub appeared: Vec<(String, String)>,
    pub vanished: Vec<(String, String)>,
    pub refused: Vec<Rejected>,
}

impl Changes {
    pub(crate) fn log(&self, fleet: &str) {
        for r in &self.refused {
            r.log(fleet);
        }
        for (name, path) in &self.appeared {
            tracing::info!("fleet {fleet}: new database {name} ({path})");
        }
        for (name, path) in &self.vanished {
            tracing::warn!("fleet {fleet}: database {name} ({path}) is gone; no longer scheduled");
        }
    }
}

/// Scan fleet `fleet` of `config` again (blocking: it walks directories). As at load, a
/// member may not take the name of a plain database or of a fleet, and a name two files make
/// (in this fleet or another) is refused for both.
pub(crate) fn scan(config: &Config, fleet: &str) -> Option<Scan> {
    let n = config.fleets.iter().position(|f| f.name == fleet)?;
    let taken = |name: &str| {
        config.database(name).is_some_and(|d| d.fleet.is_none())
            || config.fleet_by_handle(name).is_some()
    };
    Some(scan::scan(&config.fleets, n, &config.daemon, &taken))
}

impl Roster {
    /// A member by name, as last scanned.
    pub(crate) fn member(&self, name: &str) -> Option<Arc<Database>> {
        self.members.get(name).cloned()
    }

    /// Take the members a (re)loaded configuration's scan found; members of fleets no longer
    /// configured are forgotten. Returns what changed, per fleet.
    pub(crate) fn load(&mut self, config: &Config) -> Vec<(String, Changes)> {
        self.members
            .retain(|_, d| d.fleet.as_ref().is_some_and(|f| config.fleet(f).is_some()));
        config
            .fleets
            .iter()
            .map(|fleet| {
                let members: Vec<Arc<Database>> = config.members(fleet).cloned().collect();
                let changes = self.update(&fleet.name, &members, &fleet.rejected);
                (fleet.name.clone(), changes)
            })
            .collect()
    }

    /// Take a tick's scan of `fleet`; returns what changed since the previous one.
    pub(crate) fn apply(&mut self, fleet: &str, scan: &Scan) -> Changes {
        self.update(fleet, &scan.members, &scan.rejected)
    }

    fn update(&mut self, fleet: &str, members: &[Arc<Database>], rejected: &[Rejected]) -> Changes {
        let mut changes = Changes::default();
        let before = self.rejected.remove(fleet).unwrap_or_default();
        changes.refused = rejected
            .iter()
            .filter(|r| before.binary_search(r).is_err())
            .cloned()
            .collect();
        self.rejected.insert(fleet.to_string(), rejected.to_vec());

        let now: BTreeMap<String, String> = members
            .iter()
            .map(|d| (d.name.clone(), d.path.display().to_string()))
            .collect();
        if let Some(before) = self.known.get(fleet) {
            changes.appeared = now
                .iter()
                .filter(|(name, _)| !before.contains_key(*name))
                .map(|(n, p)| (n.clone(), p.clone()))
                .collect();
            changes.vanished = before
                .iter()
                .filter(|(name, _)| !now.contains_key(*name))
                .map(|(n, p)| (n.clone(), p.clone()))
                .collect();
        }
        self.known.insert(fleet.to_string(), now);

        self.members
            .retain(|_, d| d.fleet.as_deref() != Some(fleet));
        for m in members {
            self.members.insert(m.name.clone(), m.clone());
        }
        changes
    }
}
