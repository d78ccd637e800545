//! `litekeeper demo [DIR]`: placeholder until the demo lands in this session.

use crate::cli::DemoArgs;
use crate::exit::{ExitCode, Failure};

pub fn run(_args: DemoArgs) -> Result<ExitCode, Failure> {
    Err(Failure::new(
        ExitCode::Failed,
        anyhow::anyhow!("demo not built yet"),
    ))
}
