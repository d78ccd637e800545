//! Default locations, which follow the user: system paths as root, XDG paths otherwise
//! (so the same binary works under `systemctl --user`).

use std::path::PathBuf;

/// Where litekeeper looks and writes when the configuration does not say.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub config_file: PathBuf,
    pub state_dir: PathBuf,
    pub lock_dir: PathBuf,
}

/// True when running as root (uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl Defaults {
    pub fn for_current_user() -> Self {
        if is_root() {
            return Defaults {
                config_file: PathBuf::from("/etc/litekeeper/litekeeper.toml"),
                state_dir: PathBuf::from("/var/lib/litekeeper"),
                lock_dir: PathBuf::from("/run/litekeeper"),
            };
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"));
        let xdg = |var: &str, fallback: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .unwrap_or_else(|| home.join(fallback))
        };
        let state_dir = xdg("XDG_STATE_HOME", ".local/state").join("litekeeper");
        let lock_dir = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .map(|p| p.join("litekeeper"))
            .unwrap_or_else(|| state_dir.join("locks"));
        Defaults {
            config_file: xdg("XDG_CONFIG_HOME", ".config").join("litekeeper/litekeeper.toml"),
            state_dir,
            lock_dir,
        }
    }
}
