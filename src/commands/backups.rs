//! `litekeeper backups list [DB] [--json]` (being built for issue #4).

use std::path::Path;

use crate::cli::BackupsListArgs;
use crate::exit::{ExitCode, Failure};

pub fn list(_path: &Path, _args: BackupsListArgs) -> Result<ExitCode, Failure> {
    Err(Failure::new(
        ExitCode::Failed,
        anyhow::anyhow!("`backups list` is not built yet"),
    ))
}
