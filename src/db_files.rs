//! The files of one SQLite database: the main file and the sidecars SQLite keeps beside it
//! (`-wal`, `-shm`, `-journal`). The one place their paths are made.

use std::path::{Path, PathBuf};

/// The files SQLite opens beside a database: its WAL, shared-memory index and rollback
/// journal.
pub(crate) const SIDECARS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// `path` with a sidecar suffix (`-wal`…).
pub(crate) fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// The size of the file at `p` (links followed); None when it cannot be read, e.g. absent.
pub(crate) fn file_len(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

/// True when `name` ends like a sidecar of some database (`x.db-wal`).
pub(crate) fn is_sidecar_name(name: &str) -> bool {
    SIDECARS.iter().any(|s| name.ends_with(s))
}

/// A database's main file and its sidecars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DbFiles {
    pub main: PathBuf,
    pub wal: PathBuf,
    pub shm: PathBuf,
    pub journal: PathBuf,
}

impl DbFiles {
    pub(crate) fn of(main: &Path) -> DbFiles {
        DbFiles {
            main: main.to_path_buf(),
            wal: sidecar(main, "-wal"),
            shm: sidecar(main, "-shm"),
            journal: sidecar(main, "-journal"),
        }
    }

    /// The sidecars with their suffixes, in [`SIDECARS`] order.
    pub(crate) fn sidecars(&self) -> [(&'static str, &Path); 3] {
        [
            ("-wal", &self.wal),
            ("-shm", &self.shm),
            ("-journal", &self.journal),
        ]
    }

    /// The main file, then the sidecars.
    pub(crate) fn all(&self) -> [&Path; 4] {
        [&self.main, &self.wal, &self.shm, &self.journal]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecars_follow_the_main_name_byte_for_byte() {
        let f = DbFiles::of(Path::new("/d/chat.db"));
        assert_eq!(f.wal, Path::new("/d/chat.db-wal"));
        assert_eq!(f.all()[2], Path::new("/d/chat.db-shm"));
        let got: Vec<&str> = f.sidecars().iter().map(|(s, _)| *s).collect();
        assert_eq!(got, SIDECARS);
        assert_eq!(f.sidecars()[2].1, Path::new("/d/chat.db-journal"));
        assert!(is_sidecar_name("x.db-journal") && !is_sidecar_name("x.db"));
    }
}
