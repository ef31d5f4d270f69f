//! `testrig plan REFERENCE [-A ATTR]`: prints the plan of a NixOS test named by a Nix reference (a FILE.nix and
//! an attribute, or FLAKEREF#ATTR) as JSON on stdout, without building or running anything. A set of tests (a
//! flake's `checks.<system>`) gives `{"plans": {<name>: plan}, "skipped": {<name>: reason}}`. Exit 0, or 2 when
//! Nix cannot be found, the plugin cannot be used, or the evaluation fails.

use super::nix_args::eval_options;
use crate::cli::PlanArgs;
use crate::nix::eval::{references, Evaluator};
use crate::support::exit;
use crate::support::log::{self, LogFormat};

pub async fn run(args: PlanArgs) -> u8 {
    log::init(args.verbose as i8 - args.quiet as i8, LogFormat::Human);
    match plan(&args).await {
        Ok(json) => {
            println!("{json}");
            exit::OK
        }
        Err(message) => {
            eprintln!("testrig: {message}");
            exit::BAD_INPUT
        }
    }
}

async fn plan(args: &PlanArgs) -> Result<String, String> {
    let refs = references(&args.reference, &args.nix.attrs)?;
    let [reference] = refs.as_slice() else {
        return Err("testrig plan prints one test or one set of tests: give at most one -A".into());
    };
    let evaluator = Evaluator::locate(&eval_options(&args.nix)).map_err(|e| e.to_string())?;
    let evaluated = evaluator
        .evaluate(reference)
        .await
        .map_err(|e| e.to_string())?;
    let json = evaluated.to_json();
    Ok(if args.compact {
        json.to_string()
    } else {
        serde_json::to_string_pretty(&json).expect("JSON values serialise")
    })
}
