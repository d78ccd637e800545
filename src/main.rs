//! The `litekeeper` binary: parse the command line, set up logging, run, map to an exit code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = litekeeper::cli::Cli::parse();
    if matches!(cli.command, litekeeper::cli::Command::Demo(_))
        && std::env::var_os("LITEKEEPER_LOG").is_none()
    {
        // The demo prints its own report; job events would only repeat it.
        std::env::set_var("LITEKEEPER_LOG", "off");
    }
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
