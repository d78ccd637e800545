//! One integration-test binary: every test runs the real `litekeeper` executable in a temp dir.

mod util;

mod backup;
mod bad_db;
mod catch_up;
mod check;
mod config_errors;
mod config_examples;
mod config_files;
mod daemon;
mod demo_run;
mod hostile;
mod journal;
mod prune;
mod retention;
mod run_lock;
mod soak;
mod status;
mod units;
mod vacuum;
