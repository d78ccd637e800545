//! What a fleet is called as a whole (its handle, the one name `run`, `status`, `check`,
//! `backups list` and timer units use for all its members), and the rule that no two names
//! collide.

use super::{is_db_name, Checker};
use crate::config::fleet::member_name;
use crate::config::{Database, Fleet, KeyPath};
use std::sync::Arc;

/// What a fleet is called as a whole: its name template without `{stem}` and the separators
/// around it (`tenant-{stem}` → `tenant`); for a bare `{stem}`, the name of the directory the
/// pattern starts in (`/srv/app/tenants/*.db` → `tenants`), else `fleet<N>`. (`validate`
/// moves a directory's name that is taken to `fleet<N>`.)
pub fn fleet_handle(template: &str, pattern: &str, index: usize) -> String {
    template_handle(template)
        .or_else(|| dir_handle(pattern))
        .unwrap_or_else(|| format!("fleet{index}"))
}

/// The handle a name template gives (`tenant-{stem}` → `tenant`), if any; also used to
/// clean a directory's name.
fn template_handle(text: &str) -> Option<String> {
    let mut h = member_name(text, "").trim_matches(['-', '_']).to_string();
    while h.contains("--") {
        h = h.replace("--", "-");
    }
    Some(h).filter(|h| !h.is_empty() && is_db_name(h))
}

/// The name of the directory a fleet's pattern starts in.
fn dir_handle(pattern: &str) -> Option<String> {
    let fixed = &pattern[..pattern.find(['*', '?', '[']).unwrap_or(pattern.len())];
    let dir = fixed.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    template_handle(dir.rsplit('/').next().unwrap_or(""))
}

/// A fleet's handle names the whole fleet in `run`, `status` and timer units: one made from
/// the name template must be free; one made from the directory (a bare `{stem}` template)
/// falls back to `fleet<N>` when taken. Two fleets with one name template are refused.
pub(super) fn settle(c: &mut Checker, databases: &[Arc<Database>], fleets: &mut [Fleet]) {
    for n in 0..fleets.len() {
        let taken = |h: &str, fleets: &[Fleet]| {
            databases.iter().any(|d| d.name == h) || fleets[..n].iter().any(|o| o.handle == h)
        };
        let key = KeyPath::root()
            .key("database")
            .index(fleets[n].index)
            .key("name");
        let template = fleets[n].name.clone();
        if fleets[..n].iter().any(|o| o.name == template) {
            c.fail(
                &key,
                "another fleet has the same name template; give each its own (e.g. \"a-{stem}\" \
                 and \"b-{stem}\")",
                Some(template),
            );
            continue;
        }
        let handle = fleets[n].handle.clone();
        if !taken(&handle, fleets) {
            continue;
        }
        if template_handle(&template).is_some() {
            c.fail(
                &key,
                format!(
                    "this fleet is called {handle:?} in `run`, `status` and timer units (its name \
                     without {{stem}}), and that name is taken by another database or fleet; \
                     rename one of them"
                ),
                Some(template),
            );
            continue;
        }
        let fallback = format!("fleet{}", fleets[n].index);
        if taken(&fallback, fleets) {
            c.fail(
                &key,
                format!(
                    "this fleet needs a name for `run`, `status` and timer units and {fallback} \
                     is taken: put a prefix in its name, e.g. \"t-{{stem}}\""
                ),
                Some(template),
            );
        } else {
            fleets[n].handle = fallback;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_handles() {
        assert_eq!(fleet_handle("tenant-{stem}", "/srv/t/*.db", 0), "tenant");
        assert_eq!(fleet_handle("{stem}_Data", "/srv/t/*.db", 0), "data");
        assert_eq!(
            fleet_handle("{stem}", "/srv/app/tenants/*.db", 0),
            "tenants"
        );
        assert_eq!(fleet_handle("{stem}", "/srv/app/tenant-*.db", 0), "app");
        assert_eq!(fleet_handle("{stem}", "/*/app.db", 3), "fleet3");
    }
}
