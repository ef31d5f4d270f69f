//! `testrig plan`'s arguments.

use clap::{ArgAction, Args};

use super::NixArgs;

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// FILE.nix (with -A ATTR), or FLAKEREF#ATTR: a NixOS test, or an attribute set of them.
    #[arg(value_name = "REFERENCE")]
    pub reference: String,

    #[command(flatten)]
    pub nix: NixArgs,

    /// One line of JSON instead of an indented document.
    #[arg(long = "compact")]
    pub compact: bool,

    /// More log on stderr.
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,

    /// Less log on stderr (only errors).
    #[arg(short = 'q', long = "quiet", action = ArgAction::Count)]
    pub quiet: u8,
}
