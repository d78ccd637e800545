//! One module per subcommand, dispatched from `run`. Each returns the exit code to use.

pub mod backups;
mod backups_offsite;
pub mod check;
mod check_remote;
pub mod daemon;
pub mod demo;
mod offsite_health;
pub mod push;
pub mod remote_list;
mod remote_retry;
pub mod restore;
pub mod run;
pub mod schedule;
pub mod status;
pub mod stream_json;
pub mod units;

use std::path::PathBuf;
use std::sync::Arc;

use crate::cli::{BackupsCommand, Cli, Command};
use crate::config::{self, Config, Database};
use crate::exit::{ExitCode, Failure};
use crate::paths::Defaults;

/// Run the parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let path = config_path(cli.config.clone());
    if !matches!(cli.command, Command::Daemon) {
        // `litekeeper schedule | head` should end quietly, as Unix tools do.
        // SAFETY: setting a signal disposition to its default has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        Command::Daemon => daemon::run(&path),
        Command::Run(args) => run::run(&path, args),
        Command::Drill(args) => run::run_with(
            &path,
            crate::cli::RunArgs {
                database: args.database,
                job: crate::cli::JobArg::Drill,
                dry_run: false,
                wait: None,
            },
            crate::jobs::drill::Ask {
                from: args.from,
                backup: args.backup,
            },
        ),
        Command::Check(args) => check::run(&path, args),
        Command::Status(args) => status::run(&path, args),
        Command::Schedule(args) => schedule::run(&path, args),
        Command::Backups(BackupsCommand::List(args)) => backups::list(&path, args),
        Command::Backups(BackupsCommand::Push(args)) => push::run(&path, args),
        Command::Restore(args) => restore::run(&path, args),
        Command::Demo(args) => demo::run(args),
        Command::SystemdUnits(args) => units::run(&path, args),
        Command::Completions(args) => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(args.shell, &mut cmd, "litekeeper", &mut std::io::stdout());
            Ok(ExitCode::Ok)
        }
        Command::Manpage => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(|e| Failure::new(ExitCode::IoErr, anyhow::anyhow!("man page: {e}")))?;
            Ok(ExitCode::Ok)
        }
    }
}

/// `-c FILE`, else `$LITEKEEPER_CONFIG` (handled by clap), else the per-user default.
pub fn config_path(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| Defaults::for_current_user().config_file)
}

/// Load the configuration, mapping problems to exit 78.
pub fn load_config(path: &std::path::Path) -> Result<Config, Failure> {
    Ok(crate::scheduler::roster::with_members(config::load(path)?))
}

/// The database `name` of the configuration, or a usage error naming it and the file.
pub fn database_named<'c>(config: &'c Config, name: &str) -> Result<&'c Arc<Database>, Failure> {
    config.database(name).ok_or_else(|| {
        Failure::new(
            ExitCode::Usage,
            anyhow::anyhow!("no database named {name:?} in {}", config.file.display()),
        )
    })
}

/// The databases named on the command line (a fleet's handle names all its current members);
/// None when no name was given (all of them). An unknown name is a usage error.
pub fn selected(
    config: &Config,
    names: &[String],
) -> Result<Option<std::collections::HashSet<String>>, Failure> {
    if names.is_empty() {
        return Ok(None);
    }
    let mut set = std::collections::HashSet::new();
    for name in names {
        if config.database(name).is_some() {
            set.insert(name.clone());
        } else if let Some(fleet) = config.fleet_by_handle(name) {
            set.extend(config.members(fleet).map(|d| d.name.clone()));
        } else {
            return Err(Failure::new(
                ExitCode::Usage,
                anyhow::anyhow!(
                    "no {} named {name:?} in {}",
                    what_is_named(config),
                    config.file.display()
                ),
            ));
        }
    }
    Ok(Some(set))
}

/// "database", or "database or fleet" when fleets are configured (for "no … named").
pub fn what_is_named(config: &Config) -> &'static str {
    if config.fleets.is_empty() {
        "database"
    } else {
        "database or fleet"
    }
}

/// A runtime for the one-shot commands: blocking threads do the SQLite work.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            Failure::new(
                ExitCode::IoErr,
                anyhow::anyhow!("cannot start the async runtime: {e}"),
            )
        })
}
