//! A database's `[database.backup]` section: directory, method, compression, verification,
//! retention (`keep`, `max_age`).

use super::Checker;
use crate::config::raw::{RawBackup, RawKeep};
use crate::config::{Backup, BackupMethod, Compression, Daemon, Keep, KeyPath, Verify};

pub(super) fn backup(
    c: &mut Checker,
    key: &KeyPath,
    b: &RawBackup,
    name: &str,
    daemon: &Daemon,
) -> Backup {
    if b.compress_level.is_some() && b.compress.as_deref() != Some("zstd") {
        c.fail(
            &key.key("compress_level"),
            "`compress_level` applies only with compress = \"zstd\" (the default is \"none\")",
            b.compress_level.map(|l| l.to_string()),
        );
    }
    let level = match b.compress_level {
        None => 3,
        Some(l) if (1..=22).contains(&l) => l as i32,
        Some(l) => {
            c.fail(
                &key.key("compress_level"),
                "expected a zstd level from 1 to 22",
                Some(l.to_string()),
            );
            3
        }
    };
    let keep = keep_counts(
        c,
        &key.key("keep"),
        b.keep.as_ref(),
        Keep {
            daily: 7,
            ..Keep::default()
        },
    );
    let remote_keep = keep_counts(c, &key.key("remote_keep"), b.remote_keep.as_ref(), keep);
    Backup {
        timing: c.timing(
            key,
            b.schedule.as_ref(),
            b.jitter.as_ref(),
            b.ping.as_ref(),
            b.ping_timeout.as_ref(),
        ),
        dir: match &b.dir {
            Some(p) => c.abs_path(&key.key("dir"), p),
            None => daemon.state_dir.join("backups").join(name),
        },
        method: c.choice(
            &key.key("method"),
            b.method.as_ref(),
            &[
                ("backup", BackupMethod::Online),
                ("vacuum_into", BackupMethod::VacuumInto),
            ],
            BackupMethod::Online,
        ),
        compression: c.choice(
            &key.key("compress"),
            b.compress.as_ref(),
            &[
                ("none", Compression::None),
                ("zstd", Compression::Zstd { level }),
            ],
            Compression::None,
        ),
        verify: c.choice(
            &key.key("verify"),
            b.verify.as_ref(),
            &[
                ("none", Verify::None),
                ("quick", Verify::Quick),
                ("full", Verify::Full),
            ],
            Verify::Quick,
        ),
        keep,
        max_age: c.opt_duration(&key.key("max_age"), b.max_age.as_ref()),
        incremental: b
            .incremental
            .as_ref()
            .map(|i| c.incremental(&key.key("incremental"), i)),
        remotes: b.remotes.clone().unwrap_or_default(),
        remote_keep,
    }
}

/// A `keep`-style table of counts; `default` when it is absent.
fn keep_counts(c: &mut Checker, kk: &KeyPath, raw: Option<&RawKeep>, default: Keep) -> Keep {
    match raw {
        None => default,
        Some(k) => Keep {
            last: c.count(&kk.key("last"), k.last, 0),
            hourly: c.count(&kk.key("hourly"), k.hourly, 0),
            daily: c.count(&kk.key("daily"), k.daily, 0),
            weekly: c.count(&kk.key("weekly"), k.weekly, 0),
            monthly: c.count(&kk.key("monthly"), k.monthly, 0),
            yearly: c.count(&kk.key("yearly"), k.yearly, 0),
        },
    }
}
