//! Plans from tests named by a Nix reference: evaluated (see `nix::eval`), loaded as plan files are, and built.

use std::path::Path;

use crate::nix::eval::{references, EvalOptions, Evaluated, Evaluator, TestRef};
use crate::nix::realise::{realise, Needs};
use crate::plan::load::{load_evaluated_plan, BadInput, LoadedPlan};

/// `testrig run`'s way in: evaluates `arg` (with the `-A` attributes), loads the plans as plan files are loaded,
/// and builds the start scripts of those that will run: a test the cache will answer (`answered`) needs no VM, so
/// a cached pass costs no build even after its VMs were garbage-collected. A set's plans are named by their
/// attributes when they have no name.
pub async fn load_nix_plans(
    attrs: &[String],
    eval: &EvalOptions,
    arg: &str,
    test_script_override: Option<&Path>,
    answered: &dyn Fn(&LoadedPlan) -> bool,
) -> Result<Vec<LoadedPlan>, BadInput> {
    let refs = references(arg, attrs).map_err(BadInput)?;
    let evaluator = Evaluator::locate(eval).map_err(|e| BadInput(e.to_string()))?;
    let mut loaded = Vec::new();
    for reference in &refs {
        let result = evaluator
            .evaluate(reference)
            .await
            .map_err(|e| BadInput(e.to_string()))?;
        if let Evaluated::Set { skipped, .. } = &result {
            for (name, reason) in skipped {
                tracing::info!("{reference}: skipping `{name}`: {reason}");
            }
        }
        for (name, plan) in result.plans() {
            let fallback = name.map(str::to_owned).unwrap_or_else(|| match reference {
                TestRef::File { attr, .. } if !attr.is_empty() => attr.clone(),
                _ => "nixos-test".into(),
            });
            loaded.push(load_evaluated_plan(
                plan.clone(),
                &fallback,
                test_script_override,
            )?);
        }
    }
    let to_build: Vec<&LoadedPlan> = loaded.iter().filter(|plan| !answered(plan)).collect();
    if to_build.len() < loaded.len() {
        tracing::debug!(
            "{} of {} tests will be answered from the cache; not building their VMs",
            loaded.len() - to_build.len(),
            loaded.len()
        );
    }
    let needs: Vec<Needs> = to_build.iter().map(|plan| plan.needs()).collect();
    realise(evaluator.nix(), &needs)
        .await
        .map_err(|e| BadInput(e.to_string()))?;
    Ok(loaded)
}
