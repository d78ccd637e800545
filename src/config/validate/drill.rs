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
    has_backup: bool,
    daemon: &Daemon,
) -> Drill {
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
                    _ => {
                        c.fail(
                            &from_key,
                            "unknown source: remotes are not configured; the only source is \
                             \"local\" (the backup directory)",
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
        scratch_dir: match &d.scratch_dir {
            Some(p) => c.abs_path(&key.key("scratch_dir"), p),
            None => daemon.state_dir.join("drill"),
        },
    }
}
