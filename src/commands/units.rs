//! `litekeeper systemd-units [--out DIR] [--user] [--with-units]`: write the drop-ins that make
//! the shipped units follow the configuration (timer schedules, writable paths), and with
//! `--with-units` the unit files themselves (for installs without the package).

use std::path::{Path, PathBuf};

use crate::cli::UnitsArgs;
use crate::exit::{ExitCode, Failure, OrExit};
use crate::units::{self, UnitFile};

/// The shipped system units, as in `systemd/`.
const SYSTEM_UNITS: &[(&str, &str)] = &[
    (
        "litekeeper.service",
        include_str!("../../systemd/litekeeper.service"),
    ),
    (
        "litekeeper-prune@.service",
        include_str!("../../systemd/litekeeper-prune@.service"),
    ),
    (
        "litekeeper-vacuum@.service",
        include_str!("../../systemd/litekeeper-vacuum@.service"),
    ),
    (
        "litekeeper-backup@.service",
        include_str!("../../systemd/litekeeper-backup@.service"),
    ),
    (
        "litekeeper-incremental@.service",
        include_str!("../../systemd/litekeeper-incremental@.service"),
    ),
    (
        "litekeeper-drill@.service",
        include_str!("../../systemd/litekeeper-drill@.service"),
    ),
];

/// The timers, the same for both managers.
const TIMERS: &[(&str, &str)] = &[
    (
        "litekeeper-prune@.timer",
        include_str!("../../systemd/litekeeper-prune@.timer"),
    ),
    (
        "litekeeper-vacuum@.timer",
        include_str!("../../systemd/litekeeper-vacuum@.timer"),
    ),
    (
        "litekeeper-backup@.timer",
        include_str!("../../systemd/litekeeper-backup@.timer"),
    ),
    (
        "litekeeper-incremental@.timer",
        include_str!("../../systemd/litekeeper-incremental@.timer"),
    ),
    (
        "litekeeper-drill@.timer",
        include_str!("../../systemd/litekeeper-drill@.timer"),
    ),
];

/// The user-manager variants (no User=, no system-only sandboxing).
const USER_UNITS: &[(&str, &str)] = &[
    (
        "litekeeper.service",
        include_str!("../../systemd/user/litekeeper.service"),
    ),
    (
        "litekeeper-prune@.service",
        include_str!("../../systemd/user/litekeeper-prune@.service"),
    ),
    (
        "litekeeper-vacuum@.service",
        include_str!("../../systemd/user/litekeeper-vacuum@.service"),
    ),
    (
        "litekeeper-backup@.service",
        include_str!("../../systemd/user/litekeeper-backup@.service"),
    ),
    (
        "litekeeper-incremental@.service",
        include_str!("../../systemd/user/litekeeper-incremental@.service"),
    ),
    (
        "litekeeper-drill@.service",
        include_str!("../../systemd/user/litekeeper-drill@.service"),
    ),
];

fn default_dir(user: bool) -> Result<PathBuf, Failure> {
    if !user {
        return Ok(PathBuf::from("/etc/systemd/system"));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .ok_or_else(|| {
            Failure::new(
                ExitCode::Usage,
                anyhow::anyhow!("neither XDG_CONFIG_HOME nor HOME is set; pass --out DIR"),
            )
        })?;
    Ok(base.join("systemd/user"))
}

pub fn run(path: &Path, args: UnitsArgs) -> Result<ExitCode, Failure> {
    let config = super::load_config(path)?;
    let out = match &args.out {
        Some(d) => d.clone(),
        None => default_dir(args.user)?,
    };
    let config_error = |e: String| Failure::new(ExitCode::Config, anyhow::anyhow!("{e}"));
    let mut files = units::drop_ins(&config, chrono::Utc::now()).map_err(config_error)?;
    // A `-c FILE` other than the default must reach the units too, as an absolute path (the
    // services do not run in this directory).
    let file = std::path::absolute(&config.file).or_exit(ExitCode::Config)?;
    let default_config = crate::paths::Defaults::for_current_user().config_file;
    if file != default_config {
        files.extend(units::config_drop_ins(&file).map_err(config_error)?);
    }
    if args.with_units {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/litekeeper"));
        let set = if args.user { USER_UNITS } else { SYSTEM_UNITS };
        for (name, text) in set.iter().chain(TIMERS) {
            files.push(UnitFile {
                path: PathBuf::from(name),
                text: units::with_executable(text, &exe).map_err(config_error)?,
            });
        }
    }
    for f in &files {
        let target = out.join(&f.path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).or_exit(ExitCode::CantCreate)?;
        }
        crate::archive::write_atomic(&target, f.text.as_bytes()).or_exit(ExitCode::CantCreate)?;
        // Unit files are world-readable by convention; write_atomic creates 0600.
        std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .or_exit(ExitCode::CantCreate)?;
        println!("wrote {}", target.display());
    }
    // ReadWritePaths=-DIR is dropped by systemd while DIR does not exist, and then the
    // sandboxed job cannot create it. A user manager's paths are the user's own: make the
    // missing ones (0700) now. For the system units, say so rather than fail at the first run.
    for p in units::writable_paths(&config).into_keys() {
        if p.exists() {
            continue;
        }
        if args.user {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&p)
                .or_exit(ExitCode::CantCreate)?;
            println!("created {}", p.display());
        } else {
            println!(
                "warning: {} does not exist yet; create it (owned by the service's user) before \
                 starting, or the sandboxed jobs cannot write there",
                p.display()
            );
        }
    }
    let ctl = if args.user {
        "systemctl --user"
    } else {
        "systemctl"
    };
    println!("next: {ctl} daemon-reload, then either {ctl} enable --now litekeeper.service");
    let timers: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let s = f.path.to_string_lossy();
            // Single-quoted for the shell: escaped instance names hold backslashes.
            s.strip_suffix(".timer.d/schedule.conf")
                .map(|t| format!("'{t}.timer'"))
        })
        .collect();
    if !timers.is_empty() {
        println!(
            "      or (timers instead of the daemon) {ctl} enable --now {}",
            timers.join(" ")
        );
    }
    Ok(ExitCode::Ok)
}
