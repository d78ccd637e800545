//! A database's `[database.drill]` section: where copies come from (`from`), which are
//! drilled (`pick`), the key for encrypted copies (`identity`), the assertions run on the
//! restored copy, `max_age` for `status --check`, and the scratch directory.

use super::Checker;
use crate::config::raw::RawDrill;
use crate::config::{Daemon, Drill, DrillPick, DrillSource, Identity, KeyPath};

/// The prefix of an `identity` naming a systemd credential (`LoadCredential=`).
const CREDENTIAL: &str = "credential:";

pub(super) fn drill(
    c: &mut Checker,
    key: &KeyPath,
    d: &RawDrill,
    backup_dir: Option<&std::path::Path>,
    remotes: &[String],
    daemon: &Daemon,
) -> Drill {
    let from = sources(c, key, d, backup_dir.is_some(), remotes);
    let identity = identity(c, key, d, &from);
    let asserts = asserts(c, key, d);
    Drill {
        timing: c.timing(
            key,
            d.schedule.as_ref(),
            d.jitter.as_ref(),
            d.ping.as_ref(),
            d.ping_timeout.as_ref(),
        ),
        from,
        pick: c.choice(
            &key.key("pick"),
            d.pick.as_ref(),
            &[
                ("newest", DrillPick::Newest),
                ("newest+random", DrillPick::NewestAndRandom),
                ("all", DrillPick::All),
            ],
            DrillPick::Newest,
        ),
        identity,
        asserts,
        max_age: c.opt_duration(&key.key("max_age"), d.max_age.as_ref()),
        scratch_dir: scratch_dir(c, key, d, backup_dir, daemon),
    }
}

/// `from`: "local" and this database's remotes, each once ("local" needs a backup directory).
fn sources(
    c: &mut Checker,
    key: &KeyPath,
    d: &RawDrill,
    has_backup: bool,
    remotes: &[String],
) -> Vec<DrillSource> {
    let from_key = key.key("from");
    let mut from = Vec::new();
    match &d.from {
        None => from.push(DrillSource::Local),
        Some(list) if list.is_empty() => c.fail(
            &from_key,
            "expected at least one source, e.g. [\"local\"]",
            Some("[]".into()),
        ),
        Some(list) => {
            for name in list {
                let source = match name.as_str() {
                    "local" => DrillSource::Local,
                    r if remotes.iter().any(|k| k == r) => DrillSource::Remote(r.to_string()),
                    _ => {
                        let known = if remotes.is_empty() {
                            "\"local\" (the backup directory); this database's backup has no \
                             remotes"
                                .to_string()
                        } else {
                            format!(
                                "\"local\" or a remote of backup.remotes: {}",
                                remotes.join(", ")
                            )
                        };
                        c.fail(
                            &from_key,
                            format!("unknown source; expected {known}"),
                            Some(name.clone()),
                        );
                        continue;
                    }
                };
                if from.contains(&source) {
                    c.fail(&from_key, "source named twice", Some(name.clone()));
                } else {
                    from.push(source);
                }
            }
        }
    }
    if from.contains(&DrillSource::Local) && !has_backup {
        c.fail(
            &from_key,
            "the \"local\" source is the backup directory: add a [database.backup] section \
             (its dir is where the drill finds the copies)",
            Some("local".into()),
        );
    }
    from
}

/// `identity`: an age identity file or `credential:NAME`; required when a source is a remote
/// (its copies are always encrypted).
fn identity(
    c: &mut Checker,
    key: &KeyPath,
    d: &RawDrill,
    from: &[DrillSource],
) -> Option<Identity> {
    let identity = d
        .identity
        .as_ref()
        .map(|text| match text.strip_prefix(CREDENTIAL) {
            Some(name) => {
                let ok = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
                    && !name.starts_with('.');
                if !ok {
                    c.fail(
                        &key.key("identity"),
                        "expected a credential name of letters, digits, '_', '-' and '.' \
                     (\"credential:drill-age\", from LoadCredential=)",
                        Some(text.clone()),
                    );
                }
                Identity::Credential(name.to_string())
            }
            None => Identity::File(c.abs_path(&key.key("identity"), text)),
        });
    if identity.is_none() {
        if let Some(r) = from.iter().find(|s| matches!(s, DrillSource::Remote(_))) {
            c.fail(
                &key.key("identity"),
                format!(
                    "a drill from remote {:?} needs the age identity that decrypts its copies \
                     (they are always encrypted): identity = \"/etc/litekeeper/drill.age\" or \
                     \"credential:NAME\"",
                    r.name()
                ),
                None,
            );
        }
    }
    identity
}

/// `assert`: SQL queries that must each return one true row.
fn asserts(c: &mut Checker, key: &KeyPath, d: &RawDrill) -> Vec<String> {
    let mut asserts = Vec::new();
    for (i, sql) in d.asserts.iter().flatten().enumerate() {
        let k = key.key("assert").index(i);
        if sql.trim().trim_end_matches(';').trim().is_empty() {
            c.fail(
                &k,
                "expected an SQL query returning one row, e.g. \"SELECT count(*) > 0 FROM user\"",
                Some(sql.clone()),
            );
        } else if sql.contains('\0') {
            c.fail(&k, "must not contain a NUL character", Some(sql.clone()));
        }
        asserts.push(sql.clone());
    }
    asserts
}

/// The scratch directory: never inside the backup directory (which holds only backups, and
/// which `restore --to` refuses) nor the backup directory inside it (a drill empties it).
fn scratch_dir(
    c: &mut Checker,
    key: &KeyPath,
    d: &RawDrill,
    backup_dir: Option<&std::path::Path>,
    daemon: &Daemon,
) -> std::path::PathBuf {
    let Some(text) = &d.scratch_dir else {
        return daemon.state_dir.join("drill");
    };
    let k = key.key("scratch_dir");
    let p = c.abs_path(&k, text);
    if let Some(b) = backup_dir.filter(|b| p.starts_with(b) || b.starts_with(&p)) {
        c.fail(
            &k,
            format!(
                "the scratch directory and the backup directory ({}) must not contain each \
                 other: the drill empties its scratch directory; point it elsewhere",
                b.display()
            ),
            Some(text.clone()),
        );
    }
    p
}
