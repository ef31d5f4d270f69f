//! The command line. `testrig run` also takes nixos-test-driver's flags (all three generations), so testrig can
//! stand in for the driver in a derivation; with no subcommand, or when called as `nixos-test-driver`, the
//! arguments are `run`'s.

use clap::{Parser, Subcommand};

use super::{CacheArgs, PlanArgs, RunArgs};

#[derive(Debug, Parser)]
#[command(
    name = "testrig",
    version,
    about = "Run NixOS VM tests fast, with a result cache keyed on derivation hashes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// One value, parsed once: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run tests: FILE.nix -A ATTR or FLAKEREF#ATTR (evaluated with Nix), plan files, nixpkgs'
    /// driverConfiguration.json, or the old driver's flags.
    Run(RunArgs),
    /// Print the plan of a test named by FILE.nix -A ATTR or FLAKEREF#ATTR, as JSON.
    Plan(PlanArgs),
    /// Inspect and clean the result cache.
    Cache(CacheArgs),
}

const SUBCOMMANDS: &[&str] = &[
    "run",
    "plan",
    "cache",
    "help",
    "--help",
    "-h",
    "--version",
    "-V",
];

/// Parses the command line, treating `nixos-test-driver ARGS` and `testrig ARGS` without a subcommand as
/// `testrig run ARGS`.
pub fn parse() -> Cli {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let called_as_driver = args
        .first()
        .and_then(|a| {
            std::path::Path::new(a)
                .file_name()
                .map(|f| f.to_string_lossy().contains("nixos-test-driver"))
        })
        .unwrap_or(false);
    let has_subcommand = args
        .get(1)
        .map(|a| SUBCOMMANDS.contains(&a.to_string_lossy().as_ref()))
        .unwrap_or(false);
    if called_as_driver || !has_subcommand {
        args.insert(1, "run".into());
    }
    Cli::parse_from(args)
}
