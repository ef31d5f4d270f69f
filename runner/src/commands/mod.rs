//! The subcommands: each turns its parsed arguments into the typed options of the layers below, calls them, and
//! returns the exit status.

pub mod cache;
mod nix_args;
pub mod plan;
pub mod run;
