//! The Nix arguments of `testrig run` and `testrig plan`, as the evaluator's options.

use crate::cli::NixArgs;
use crate::nix::eval::EvalOptions;

pub fn eval_options(nix: &NixArgs) -> EvalOptions {
    // clap takes `--arg` and `--argstr` two values at a time, so the lists are pairs.
    let pairs = |values: &[String]| {
        values
            .chunks_exact(2)
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect()
    };
    EvalOptions {
        plugin: nix.plugin.clone(),
        no_plugin: nix.no_plugin,
        args: pairs(&nix.arg),
        argstrs: pairs(&nix.argstr),
    }
}
