//! The command line: clap's types, and the parsing that lets testrig stand in for nixos-test-driver.

mod args;

pub use args::{parse, CacheArgs, CacheCommand, Command, PlanArgs, RunArgs};
