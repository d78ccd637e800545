//! Off-site copies (`[[remote]]`): configuration, upload to real S3 servers on 127.0.0.1
//! (moto) and to `file://` directories, failures, listing, restore and retention.

mod chains;
mod config;
mod drill;
mod faults;
pub mod fixture;
mod fleet;
mod hosts;
mod ops;
mod restore;
mod retention;
mod s3sfs;
mod upload;
