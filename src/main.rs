//! The `litekeeper` binary: parse the command line, set up logging, run, map to an exit code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = litekeeper::cli::Cli::parse();
    if let Err(e) = litekeeper::logging::init(&cli.log) {
        eprintln!("litekeeper: warning: {e}");
    }
    match litekeeper::commands::run(cli) {
        Ok(code) => std::process::ExitCode::from(code.code()),
        Err(failure) => {
            eprintln!("litekeeper: error: {failure}");
            std::process::ExitCode::from(failure.code.code())
        }
    }
}
