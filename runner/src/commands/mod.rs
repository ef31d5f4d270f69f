//! The subcommands: each takes its parsed arguments to the core and returns the exit status.

pub mod cache;
pub mod plan;
pub mod run;
