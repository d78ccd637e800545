//! One integration-test binary: every test runs the real `litekeeper` executable in a temp dir.

mod util;

mod architecture;
mod archive;
mod backup;
mod bad_config;
mod bad_db;
mod catch_up;
mod check;
mod config_errors;
mod config_examples;
mod config_files;
mod config_load;
mod daemon;
mod demo_run;
mod edges;
mod fleet;
mod fleet_names;
mod hostile;
mod injection;
mod journal;
mod kill;
mod metrics;
mod pings;
mod prune;
mod prune_fk;
mod restore;
mod retention;
mod run_lock;
mod soak;
mod state_db;
mod status;
mod status_check;
mod systemd_e2e;
mod units;
mod vacuum;
