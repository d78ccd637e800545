//! The real binary run to its end: its output, its exit code checked, `restore … --to`.

use std::path::Path;
use std::process::Output;

use super::{both, TestEnv};

impl TestEnv {
    /// `litekeeper -c CONFIG ARGS`, run to its end.
    pub fn output(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// `litekeeper -c CONFIG ARGS`, which must exit with `code` (else fails with its output).
    pub fn run_code(&self, args: &[&str], code: i32) -> Output {
        let o = self.output(args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", both(&o));
        o
    }

    /// `litekeeper -c CONFIG ARGS` as the unprivileged user (see [`super::unprivileged`]), run
    /// to its end.
    pub fn nobody_output(&self, args: &[&str]) -> Output {
        super::unprivileged(self)
            .arg("-c")
            .arg(self.config_path())
            .args(args)
            .output()
            .unwrap()
    }

    /// `litekeeper -c CONFIG restore ARGS --to TO`, run to its end.
    pub fn restore_to(&self, args: &[&str], to: &Path) -> Output {
        self.cmd()
            .arg("restore")
            .args(args)
            .arg("--to")
            .arg(to)
            .output()
            .unwrap()
    }

    /// [`TestEnv::restore_to`], which must exit 0 (else fails with its output).
    pub fn restore_ok(&self, args: &[&str], to: &Path) -> Output {
        let o = self.restore_to(args, to);
        assert_eq!(o.status.code(), Some(0), "restore {args:?}: {}", both(&o));
        o
    }
}

/// SHA-256 of a file's bytes, in lowercase hex.
pub fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
