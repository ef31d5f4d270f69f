//! `testrig run`: load each test, run it (or answer from the result cache, see `run::cached`), report. Exit 0 when
//! all passed, 1 when one failed, 2 on bad input.

use std::path::PathBuf;

use crate::cache::{Cache, Lookup};
use crate::cli::RunArgs;
use crate::nix::eval;
use crate::nix::realise::{self, Needs};
use crate::plan::from_nix;
use crate::plan::load::{
    load_plan_file, machines_from_flags, plan_from_flags, BadInput, LoadedPlan,
};
use crate::run::cached;
use crate::run::schedule;
use crate::support::{exit, log};

pub async fn run(args: RunArgs) -> u8 {
    log::init(args.verbosity(), args.log_format);
    let cache = open_cache(&args);
    let plans = match load_plans(&args, cache.as_ref()).await {
        Ok(plans) => plans,
        Err(e) => {
            eprintln!("testrig: {e}");
            return exit::BAD_INPUT;
        }
    };
    let several = plans.len() > 1;
    // A prompt needs the terminal to itself.
    let budget = schedule::Budget::of_machine(if args.prompts() { Some(1) } else { args.jobs });
    log::prefix_test_names(several && budget.jobs > 1);
    let codes = schedule::run_all(&plans, budget, |plan| {
        cached::run_plan(&args, plan, several, cache.as_ref())
    })
    .await;
    let failed: Vec<&str> = plans
        .iter()
        .zip(&codes)
        .filter(|(_, &code)| code != 0)
        .map(|(plan, _)| plan.name.as_str())
        .collect();
    let worst = codes.iter().copied().max().unwrap_or(0);
    if several {
        // One line to end a long log with: how many, and which to look at.
        let passed = plans.len() - failed.len();
        let mut summary = format!("testrig: {passed} of {} tests passed", plans.len());
        if !failed.is_empty() {
            summary.push_str(&format!("; not passed: {}", failed.join(", ")));
        }
        log::line(None, &summary);
    }
    worst
}

/// The result cache, unless disabled; a cache that cannot be located only costs a warning.
fn open_cache(args: &RunArgs) -> Option<Cache> {
    if args.no_cache {
        return None;
    }
    match Cache::from_env() {
        Ok(cache) => Some(cache),
        Err(e) => {
            tracing::warn!("running without the result cache: {e}");
            None
        }
    }
}

/// Whether `run::cached` will answer `plan` from the cache without running it (so its VMs need not be built).
fn answered_from_cache(args: &RunArgs, cache: Option<&Cache>, plan: &LoadedPlan) -> bool {
    let skip_allowed = !args.rerun && !args.keep_vm_state;
    skip_allowed
        && cache.is_some_and(|cache| {
            matches!(cache.lookup(&plan.cache_key), Lookup::Found(found) if found.entry.is_skippable_pass())
        })
}

async fn load_plans(args: &RunArgs, cache: Option<&Cache>) -> Result<Vec<LoadedPlan>, BadInput> {
    let mut plans = Vec::new();
    let containers = args.containers();
    if !containers.is_empty() {
        return Err(BadInput(format!(
            "systemd-nspawn containers are not supported yet ({})",
            containers.join(", ")
        )));
    }
    if args.dump_vsocks.is_some() {
        tracing::warn!("--dump-vsocks: the ssh backdoor is not supported; ignored");
    }
    let machines = machines_from_flags(
        &args.start_scripts,
        &args.vm_names(),
        &args.vm_start_scripts(),
    )?;
    if !machines.is_empty() {
        let script = match (&args.test_script, args.plans.as_slice()) {
            (Some(script), []) => script.clone(),
            (None, [script]) => script.clone(),
            _ => return Err(BadInput(
                "with start scripts given as flags, give exactly one test script (positional or --test-script)"
                    .into(),
            )),
        };
        plans.push(plan_from_flags(
            &machines,
            &args.vlans(),
            args.global_timeout,
            &script,
        )?);
        return Ok(plans);
    }
    let files: Vec<PathBuf> = args
        .config
        .iter()
        .chain(args.plans.iter())
        .cloned()
        .collect();
    if files.is_empty() {
        return Err(BadInput(
            "nothing to run: name a test (FILE.nix -A ATTR, FLAKEREF#ATTR), a plan file, or --config driverConfiguration.json".into(),
        ));
    }
    let nix_refs: Vec<String> = args
        .plans
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| eval::is_nix_reference(p))
        .collect();
    if !args.nix.attrs.is_empty() && nix_refs.is_empty() {
        return Err(BadInput(
            "-A names an attribute of a FILE.nix, but no .nix file is given".into(),
        ));
    }
    let mut from_files = Vec::new();
    for file in files {
        let text = file.to_string_lossy();
        let loaded = if nix_refs.iter().any(|r| *r == text) {
            let answered = |plan: &LoadedPlan| answered_from_cache(args, cache, plan);
            from_nix::load_nix_plans(&args.nix, &text, args.test_script.as_deref(), &answered)
                .await?
        } else {
            from_files.push(plans.len());
            vec![load_plan_file(&file, args.test_script.as_deref())?]
        };
        for mut plan in loaded {
            if let Some(timeout) = args.global_timeout {
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
        .filter(|plan| !answered_from_cache(args, cache, plan))
        .collect();
    let needs: Vec<Needs> = to_build.iter().map(|plan| plan.needs()).collect();
    realise::realise_plan_files(&needs)
        .await
        .map_err(|e| BadInput(e.to_string()))?;
    Ok(plans)
}
