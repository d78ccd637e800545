//! A `[[database]]` stanza: a plain database, or a fleet's template (a path with a wildcard,
//! checked once with a sample stem); its own keys (`path`, `attach`, `on_busy`,
//! `journal_mode`, `keep_history`) and its job sections.

use std::collections::HashSet;
use std::sync::Arc;

use super::backup::backup;
use super::drill::drill;
use super::prune::prune;
use super::vacuum::vacuum;
use super::{has_control_chars, is_db_name, is_identifier, Checker, NAME_RULE};
use crate::config::fleet::{is_glob, member_name, substitute};
use crate::config::raw::{RawConfig, RawDatabase};
use crate::config::{
    Attachment, Daemon, Database, Fleet, JournalMode, KeyPath, OnBusy, FLEET_KEEP_HISTORY,
};

/// Every stanza in order: the plain databases, and the fleets (handles not yet settled, no
/// members yet).
pub(super) fn stanzas(
    c: &mut Checker,
    raw: &RawConfig,
    daemon: &Daemon,
) -> (Vec<Arc<Database>>, Vec<Fleet>) {
    let mut databases: Vec<Arc<Database>> = Vec::new();
    let mut plain_names = HashSet::new();
    let mut fleets = Vec::new();
    for (i, rd) in raw.database.iter().enumerate() {
        let key = KeyPath::root().key("database").index(i);
        if is_glob(&rd.path) {
            fleets.push(fleet_template(c, &key, i, rd, daemon));
            continue;
        }
        if !is_db_name(&rd.name) {
            c.fail(&key.key("name"), NAME_RULE, Some(rd.name.clone()));
        } else if !plain_names.insert(rd.name.as_str()) {
            c.fail(
                &key.key("name"),
                "duplicate database name",
                Some(rd.name.clone()),
            );
        }
        databases.push(Arc::new(database(c, &key, rd, daemon)));
    }
    (databases, fleets)
}

/// A fleet: the stanza is checked once with a sample stem, members come from the file system
/// (now, and again on every tick and reload).
fn fleet_template(
    c: &mut Checker,
    key: &KeyPath,
    i: usize,
    rd: &RawDatabase,
    daemon: &Daemon,
) -> Fleet {
    if !rd.name.contains("{stem}") {
        c.fail(
            &key.key("name"),
            "a path with a wildcard makes one database per file: the name must contain \
             {stem}, e.g. \"tenant-{stem}\"",
            Some(rd.name.clone()),
        );
    }
    if let Some(dir) = rd.backup.as_ref().and_then(|b| b.dir.as_ref()) {
        if !dir.contains("{stem}") && !dir.contains("{name}") {
            c.fail(
                &key.key("backup").key("dir"),
                "every database of a fleet needs its own backup directory: put {name} \
                 or {stem} in it, e.g. \"/var/backups/tenants/{name}\"",
                Some(dir.clone()),
            );
        }
    }
    let sample = member_name(&rd.name, "sample");
    if has_control_chars(&rd.name) {
        c.fail(
            &key.key("name"),
            crate::config::CONTROL_CHARS,
            Some(rd.name.clone()),
        );
    } else if !is_db_name(&sample) {
        c.fail(
            &key.key("name"),
            "expected a name template of lower-case letters, digits, '_', '-' and \
             {stem}, not starting with '-'",
            Some(rd.name.clone()),
        );
    }
    let template = substitute(
        rd,
        "sample",
        &sample,
        &rd.path.replace(['*', '?', '[', ']'], "x"),
    );
    let mut db = database(c, key, &template, daemon);
    db.fleet = Some(rd.name.clone());
    if rd.keep_history.is_none() {
        db.keep_history = daemon.keep_history.min(FLEET_KEEP_HISTORY);
    }
    Fleet {
        index: i,
        name: rd.name.clone(),
        handle: super::handles::fleet_handle(&rd.name, &rd.path, i),
        raw: rd.clone(),
        template: Arc::new(db),
        rejected: Vec::new(),
    }
}

/// One database from its stanza: a plain one, a fleet's template, or a fleet member (from
/// `config/fleet.rs`, with the member's stem substituted).
pub(in crate::config) fn database(
    c: &mut Checker,
    key: &KeyPath,
    rd: &RawDatabase,
    daemon: &Daemon,
) -> Database {
    let path = c.abs_path(&key.key("path"), &rd.path);
    let mut attach = Vec::new();
    for (i, (alias, p)) in rd.attach.iter().enumerate() {
        let k = key.key("attach").key(alias);
        // SQLite's schema names ignore ASCII case: `Main` is `main`, `Files` is `files`.
        if !is_identifier(alias)
            || alias.eq_ignore_ascii_case("main")
            || alias.eq_ignore_ascii_case("temp")
        {
            c.fail(
                &k,
                "an attach alias must be an SQL identifier other than main/temp",
                Some(alias.clone()),
            );
        } else if let Some(other) = rd
            .attach
            .keys()
            .take(i)
            .find(|o| o.eq_ignore_ascii_case(alias))
        {
            c.fail(
                &k,
                format!("attach aliases differ only in case from {other:?}; SQLite sees one name"),
                Some(alias.clone()),
            );
        }
        attach.push(Attachment {
            alias: alias.clone(),
            path: c.abs_path(&k, p),
        });
    }
    let wait_timeout = c.opt_duration(&key.key("wait_timeout"), rd.wait_timeout.as_ref());
    if rd.wait_timeout.is_some() && rd.on_busy.as_deref() != Some("wait") {
        c.fail(
            &key.key("wait_timeout"),
            "`wait_timeout` applies only with on_busy = \"wait\" (the default, \"skip\", never waits)",
            rd.wait_timeout.clone(),
        );
    }
    let on_busy = c.choice(
        &key.key("on_busy"),
        rd.on_busy.as_ref(),
        &[("skip", OnBusy::Skip), ("wait", OnBusy::Wait(wait_timeout))],
        OnBusy::Skip,
    );
    let journal_mode = c.choice(
        &key.key("journal_mode"),
        rd.journal_mode.as_ref(),
        &[("wal", JournalMode::Wal), ("keep", JournalMode::Keep)],
        JournalMode::Wal,
    );
    let aliases: Vec<&str> = rd.attach.keys().map(String::as_str).collect();
    let keep_history = c.duration(
        &key.key("keep_history"),
        rd.keep_history.as_ref(),
        daemon.keep_history,
    );
    let prune = rd
        .prune
        .as_ref()
        .map(|p| prune(c, &key.key("prune"), p, &aliases));
    let vacuum = rd.vacuum.as_ref().map(|v| vacuum(c, &key.key("vacuum"), v));
    let backup = rd
        .backup
        .as_ref()
        .map(|b| backup(c, &key.key("backup"), b, &rd.name, daemon));
    Database {
        name: rd.name.clone(),
        path,
        attach,
        on_busy,
        journal_mode,
        prune,
        vacuum,
        drill: rd.drill.as_ref().map(|d| {
            let dir = backup.as_ref().map(|b| b.dir.as_path());
            let remotes = backup.as_ref().map_or(&[][..], |b| &b.remotes[..]);
            drill(c, &key.key("drill"), d, dir, remotes, daemon)
        }),
        backup,
        fleet: None,
        keep_history,
        scanned: None,
    }
}
