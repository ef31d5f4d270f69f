//! The arguments of `testrig run` and `testrig plan` that say how Nix evaluates tests.

use std::path::PathBuf;

use clap::Args;

/// How tests are evaluated: shared by `testrig run` and `testrig plan`.
#[derive(Debug, Clone, Default, Args)]
pub struct NixArgs {
    /// The attribute of a FILE.nix to evaluate (like nix-build's -A); may be given several times.
    #[arg(short = 'A', long = "attr", value_name = "ATTR")]
    pub attrs: Vec<String>,

    /// testrig's Nix plugin (default: libtestrig.so next to the binary, or in ../lib or ../plugin from it).
    #[arg(long = "plugin", value_name = "PATH", env = "TESTRIG_PLUGIN")]
    pub plugin: Option<PathBuf>,

    /// Evaluate with the pure-Nix extractor (nix/plan.nix), even when the plugin is there.
    #[arg(long = "no-plugin", conflicts_with = "plugin")]
    pub no_plugin: bool,

    /// Passed to a FILE.nix that is a function, as `nix eval --arg NAME EXPR`.
    #[arg(long = "arg", num_args = 2, value_names = ["NAME", "EXPR"], action = clap::ArgAction::Append)]
    pub arg: Vec<String>,

    /// Passed to a FILE.nix that is a function, as `nix eval --argstr NAME STRING`.
    #[arg(long = "argstr", num_args = 2, value_names = ["NAME", "STRING"], action = clap::ArgAction::Append)]
    pub argstr: Vec<String>,
}
