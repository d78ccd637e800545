//! Process exit codes (sysexits where one fits) and the error type that carries one to `main`.
//!
//! Every command returns `Result<ExitCode, Failure>`; `main` prints the failure once and exits
//! with its code. The table is documented in README.md ("Exit codes") and must stay in sync.

use std::fmt;

pub use crate::domain::ExitCode;

/// An error on its way to `main`: what to print and which exit code to use.
#[derive(Debug)]
pub struct Failure {
    pub code: ExitCode,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn new(code: ExitCode, error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code,
            error: error.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line: the error and its causes joined, as ripgrep does.
        write!(f, "{}", self.error)?;
        for cause in self.error.chain().skip(1) {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

/// Attach an exit code to any error: `result.or_exit(ExitCode::IoErr)?`.
pub trait OrExit<T> {
    fn or_exit(self, code: ExitCode) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> OrExit<T> for Result<T, E> {
    fn or_exit(self, code: ExitCode) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(code, e))
    }
}
