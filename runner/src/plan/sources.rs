//! Every way `testrig run` is told what to run, to plans that can run: the old driver's flags (start scripts and a
//! test script), plan files and driverConfiguration.json (see `load`), and Nix references (see `from_nix`); then
//! what the plans need from the store is built.

use std::path::PathBuf;

use super::from_nix;
use super::load::{load_plan_file, machines_from_flags, plan_from_flags, BadInput, LoadedPlan};
use crate::nix::eval::{self, EvalOptions};
use crate::nix::realise::{self, Needs};

/// What to run, as the command line named it.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// FILE.nix or FLAKEREF#ATTR (evaluated), plan files, driverConfiguration.json; with start scripts given as
    /// flags, the test script.
    pub tests: Vec<PathBuf>,
    /// nixpkgs 26.05's driverConfiguration.json (`--config`).
    pub config: Option<PathBuf>,
    /// A test script that replaces the plans' (`--test-script`).
    pub test_script: Option<PathBuf>,
    /// The machines of the old driver's flags: `--start-scripts`, or `--vm-names` with `--vm-start-scripts`.
    pub start_scripts: Vec<PathBuf>,
    pub vm_names: Vec<String>,
    pub vm_start_scripts: Vec<PathBuf>,
    /// Vlans of a plan made from start scripts.
    pub vlans: Vec<u32>,
    /// Seconds the whole test may take, replacing every plan's.
    pub global_timeout: Option<u64>,
    /// The attributes of a FILE.nix to evaluate (`-A`).
    pub attrs: Vec<String>,
    pub eval: EvalOptions,
}

/// Loads every test `sources` names. A test that `answered` says the cache will answer is not built: a cached
/// pass costs no build even after its VMs were garbage-collected.
pub async fn load_plans(
    sources: &Sources,
    answered: &dyn Fn(&LoadedPlan) -> bool,
) -> Result<Vec<LoadedPlan>, BadInput> {
    let mut plans = Vec::new();
    let machines = machines_from_flags(
        &sources.start_scripts,
        &sources.vm_names,
        &sources.vm_start_scripts,
    )?;
    if !machines.is_empty() {
        let script = match (&sources.test_script, sources.tests.as_slice()) {
            (Some(script), []) => script.clone(),
            (None, [script]) => script.clone(),
            _ => return Err(BadInput(
                "with start scripts given as flags, give exactly one test script (positional or --test-script)"
                    .into(),
            )),
        };
        plans.push(plan_from_flags(
            &machines,
            &sources.vlans,
            sources.global_timeout,
            &script,
        )?);
        return Ok(plans);
    }
    let files: Vec<PathBuf> = sources
        .config
        .iter()
        .chain(sources.tests.iter())
        .cloned()
        .collect();
    if files.is_empty() {
        return Err(BadInput(
            "nothing to run: name a test (FILE.nix -A ATTR, FLAKEREF#ATTR), a plan file, or --config driverConfiguration.json".into(),
        ));
    }
    let nix_refs: Vec<String> = sources
        .tests
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| eval::is_nix_reference(p))
        .collect();
    if !sources.attrs.is_empty() && nix_refs.is_empty() {
        return Err(BadInput(
            "-A names an attribute of a FILE.nix, but no .nix file is given".into(),
        ));
    }
    let mut from_files = Vec::new();
    for file in files {
        let text = file.to_string_lossy();
        let loaded = if nix_refs.iter().any(|r| *r == text) {
            from_nix::load_nix_plans(
                &sources.attrs,
                &sources.eval,
                &text,
                sources.test_script.as_deref(),
                answered,
            )
            .await?
        } else {
            from_files.push(plans.len());
            vec![load_plan_file(&file, sources.test_script.as_deref())?]
        };
        for mut plan in loaded {
            if let Some(timeout) = sources.global_timeout {
                plan.plan.global_timeout = timeout;
            }
            plans.push(plan);
        }
    }
    // A plan file made by the builtin or `testrig plan` names start scripts nothing has built yet (Nix references
    // are built as they are evaluated). What the cache will answer needs nothing.
    let to_build: Vec<&LoadedPlan> = from_files
        .iter()
        .map(|&i| &plans[i])
        .filter(|plan| !answered(plan))
        .collect();
    let needs: Vec<Needs> = to_build.iter().map(|plan| plan.needs()).collect();
    realise::realise_plan_files(&needs)
        .await
        .map_err(|e| BadInput(e.to_string()))?;
    Ok(plans)
}
