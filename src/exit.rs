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
        // One line: the error and its causes joined, as ripgrep does; a cause the line
        // already says (an error whose message includes its source) is not said twice.
        let mut line = self.error.to_string();
        for cause in self.error.chain().skip(1) {
            let cause = cause.to_string();
            if !line.contains(&cause) {
                line.push_str(": ");
                line.push_str(&cause);
            }
        }
        f.write_str(&line)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("creating {path}: {source}")]
    struct SaysItsSource {
        path: &'static str,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("restoring chat")]
    struct Outer(#[source] SaysItsSource);

    #[test]
    fn a_cause_the_line_already_says_is_not_repeated() {
        let inner = SaysItsSource {
            path: "/b/x.tmp",
            source: std::io::Error::from_raw_os_error(17),
        };
        let line = Failure::new(ExitCode::CantCreate, Outer(inner)).to_string();
        let cause = std::io::Error::from_raw_os_error(17).to_string();
        assert_eq!(line, format!("restoring chat: creating /b/x.tmp: {cause}"));
    }

    #[test]
    fn causes_the_line_does_not_say_are_joined() {
        let e = anyhow::anyhow!(std::io::Error::from_raw_os_error(2)).context("reading /etc/x");
        let line = Failure::new(ExitCode::NoInput, e).to_string();
        assert!(line.starts_with("reading /etc/x: "), "{line}");
        assert!(line.contains("(os error 2)"), "{line}");
    }
}
