//! The `litekeeper` binary: parse the command line, set up logging, run, map to an exit code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = match litekeeper::cli::Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version go to stdout and succeed; every other command-line mistake
        // (unknown subcommand or flag, missing or invalid argument, bare `litekeeper`) is
        // a usage error: EX_USAGE (64) as README documents, not clap's default 2.
        Err(e) => {
            let _ = e.print();
            return std::process::ExitCode::from(if e.use_stderr() {
                litekeeper::exit::ExitCode::Usage.code()
            } else {
                litekeeper::exit::ExitCode::Ok.code()
            });
        }
    };
    if matches!(cli.command, litekeeper::cli::Command::Demo(_))
        && std::env::var_os("LITEKEEPER_LOG").is_none()
    {
        // The demo prints its own report; job events would only repeat it.
        std::env::set_var("LITEKEEPER_LOG", "off");
    }
    if let Err(e) = litekeeper::logging::init(&log_settings(&cli.log)) {
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

/// The logging settings the command line asks for.
fn log_settings(args: &litekeeper::cli::LogArgs) -> litekeeper::logging::Settings {
    use litekeeper::cli::{LogFormat, LogTarget};
    use litekeeper::logging as log;
    log::Settings {
        log_target: match args.log_target {
            LogTarget::Auto => log::LogTarget::Auto,
            LogTarget::Journald => log::LogTarget::Journald,
            LogTarget::Stderr => log::LogTarget::Stderr,
        },
        log_format: match args.log_format {
            LogFormat::Human => log::LogFormat::Human,
            LogFormat::Json => log::LogFormat::Json,
        },
        quiet: args.quiet,
    }
}
