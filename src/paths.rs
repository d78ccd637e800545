//! Default locations, which follow the user: system paths as root, XDG paths otherwise
//! (so the same binary works under `systemctl --user`).

use std::path::{Path, PathBuf};

/// Where litekeeper looks and writes when the configuration does not say.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub config_file: PathBuf,
    pub state_dir: PathBuf,
    pub lock_dir: PathBuf,
}

/// True when running as root (uid 0).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The first path of a systemd-provided directory variable (`STATE_DIRECTORY=/var/lib/x`,
/// possibly `:`-separated), when set and absolute.
fn systemd_dir(var: &str) -> Option<PathBuf> {
    let v = std::env::var(var).ok()?;
    let first = PathBuf::from(v.split(':').next()?);
    first.is_absolute().then_some(first)
}

impl Defaults {
    /// systemd's `StateDirectory=`, `RuntimeDirectory=` and `ConfigurationDirectory=` (as
    /// `$STATE_DIRECTORY` …) come first: a service running as the `litekeeper` user gets the
    /// directories its unit created. Then root's system paths, then the XDG paths.
    pub fn for_current_user() -> Self {
        let mut d = Self::by_user();
        if let Some(p) = systemd_dir("STATE_DIRECTORY") {
            d.state_dir = p;
        }
        if let Some(p) = systemd_dir("RUNTIME_DIRECTORY") {
            d.lock_dir = p;
        }
        if let Some(p) = systemd_dir("CONFIGURATION_DIRECTORY") {
            d.config_file = p.join("litekeeper.toml");
        }
        d
    }

    fn by_user() -> Self {
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

/// Create the state directory (and its parents) when it is missing, the new ones 0700: what
/// it holds (run history, the daemon's pid) names databases and paths. An existing directory
/// is left as it is.
pub fn ensure_state_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
