//! `testrig run`: load each test, run it (or answer from the result cache, see `cached_run`), report. Exit 0 when
//! all passed, 1 when one failed, 2 on bad input.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::cache::{Cache, Lookup};
use crate::cli::RunArgs;
use crate::driver::{run_test, Outcome, RunOptions, RunResult};
use crate::machine::Timeouts;
use crate::nix::eval;
use crate::nix::realise;
use crate::plan::load::{
    load_plan_file, machines_from_flags, plan_from_flags, BadInput, LoadedPlan,
};
use crate::run::cached;
use crate::run::schedule;
use crate::support::log;

pub const EXIT_BAD_INPUT: u8 = 2;

pub async fn run(args: RunArgs) -> u8 {
    log::init(args.verbosity(), args.log_format);
    let cache = open_cache(&args);
    let plans = match load_plans(&args, cache.as_ref()).await {
        Ok(plans) => plans,
        Err(e) => {
            eprintln!("testrig: {e}");
            return EXIT_BAD_INPUT;
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

/// Whether `cached_run` will answer `plan` from the cache without running it (so its VMs need not be built).
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
            eval::load_nix_plans(&args.nix, &text, args.test_script.as_deref(), &answered).await?
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
    realise::realise_plan_files(&to_build)
        .await
        .map_err(|e| BadInput(e.to_string()))?;
    Ok(plans)
}

/// Runs the test with its outputs in `out_dir` and logs the outcome.
pub async fn execute(
    args: &RunArgs,
    plan: &LoadedPlan,
    out_dir: PathBuf,
    state_dirs: Option<BTreeMap<String, PathBuf>>,
) -> anyhow::Result<RunResult> {
    let options = RunOptions {
        out_dir,
        state_dirs,
        python: args
            .python
            .clone()
            .or_else(|| plan.plan.python.clone())
            .unwrap_or_else(|| "python3".into()),
        timeouts: Timeouts {
            boot: Duration::from_secs(args.boot_timeout),
            ..Timeouts::default()
        },
        interactive: args.interactive,
        debug_on_failure: args.debug_on_failure,
    };
    let result = run_test(plan, &options).await;
    match &result {
        Ok(result) => {
            let secs = result.duration.as_secs_f64();
            match &result.outcome {
                Outcome::Passed => {
                    log::line(None, &format!("{}: passed in {secs:.1} s", plan.name))
                }
                Outcome::Failed(message) => {
                    tracing::error!("{}: failed after {secs:.1} s: {message}", plan.name)
                }
                Outcome::TimedOut(t) => {
                    tracing::error!("{}: global timeout of {} s reached", plan.name, t.as_secs())
                }
                Outcome::Interrupted(sig) => tracing::error!("{}: interrupted by {sig}", plan.name),
            }
        }
        Err(e) => tracing::error!("{}: {e:#}", plan.name),
    }
    result
}
