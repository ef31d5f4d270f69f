//! `testrig run`: its arguments become typed options here, at the door (`run::RunOptions`, `plan::sources::Sources`);
//! then each test is loaded, run (or answered from the result cache, see `run::cached`) and reported. Exit 0 when
//! all passed, 1 when one failed, 2 on bad input.

use std::time::Duration;

use super::nix_args::eval_options;
use crate::cache::{Cache, Lookup};
use crate::cli::{LogFormatArg, RunArgs};
use crate::plan::load::{BadInput, LoadedPlan};
use crate::plan::sources::{load_plans as load_sources, Sources};
use crate::run::cached;
use crate::run::options::{CachePolicy, ExecOptions, OutputOptions, RunOptions};
use crate::run::schedule;
use crate::state::KeepOptions;
use crate::support::exit;
use crate::support::log::{self, LogFormat};

pub async fn run(args: RunArgs) -> u8 {
    log::init(args.verbosity(), log_format(args.log_format));
    let options = run_options(&args);
    let cache = open_cache(&options.cache);
    let plans = match load_plans(&args, &options.cache, cache.as_ref()).await {
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
        cached::run_plan(&options, plan, several, cache.as_ref())
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
fn open_cache(policy: &CachePolicy) -> Option<Cache> {
    if !policy.enabled {
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
fn answered_from_cache(policy: &CachePolicy, cache: Option<&Cache>, plan: &LoadedPlan) -> bool {
    may_answer_from_cache(policy)
        && cache.is_some_and(|cache| {
            matches!(cache.lookup(&plan.cache_key), Lookup::Found(found) if found.entry.is_skippable_pass())
        })
}

/// As `run::cached` decides: a recorded pass answers only a run that uses the cache at all (not one with a prompt,
/// `-I` or `--debug-on-failure`, which always runs and so needs its VMs built).
fn may_answer_from_cache(policy: &CachePolicy) -> bool {
    policy.answer_with_pass && policy.record
}

fn log_format(arg: LogFormatArg) -> LogFormat {
    match arg {
        LogFormatArg::Human => LogFormat::Human,
        LogFormatArg::Json => LogFormat::Json,
    }
}

/// The run's options, from its flags.
fn run_options(args: &RunArgs) -> RunOptions {
    RunOptions {
        cache: CachePolicy {
            enabled: !args.no_cache,
            answer_with_pass: !args.rerun && !args.keep_vm_state,
            record: !args.prompts(),
        },
        keep_state: args.keep_vm_state.then_some(KeepOptions {
            strict: args.strict_state,
            lock_timeout: args.lock_timeout,
        }),
        output: OutputOptions {
            dir: args.output_directory.clone(),
            junit_xml: args.junit_xml.clone(),
        },
        execution: ExecOptions {
            python: args.python.clone(),
            boot_timeout: Duration::from_secs(args.boot_timeout),
            interactive: args.interactive,
            debug_on_failure: args.debug_on_failure,
        },
    }
}

/// What to run, from the positional arguments and the driver's flags.
fn sources(args: &RunArgs) -> Sources {
    Sources {
        tests: args.plans.clone(),
        config: args.config.clone(),
        test_script: args.test_script.clone(),
        start_scripts: args.start_scripts.clone(),
        vm_names: args.vm_names(),
        vm_start_scripts: args.vm_start_scripts(),
        vlans: args.vlans(),
        global_timeout: args.global_timeout,
        attrs: args.nix.attrs.clone(),
        eval: eval_options(&args.nix),
    }
}

async fn load_plans(
    args: &RunArgs,
    policy: &CachePolicy,
    cache: Option<&Cache>,
) -> Result<Vec<LoadedPlan>, BadInput> {
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
    let answered = |plan: &LoadedPlan| answered_from_cache(policy, cache, plan);
    load_sources(&sources(args), &answered).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_with_a_prompt_is_never_answered_from_the_cache() {
        let policy = |answer_with_pass, record| CachePolicy {
            enabled: true,
            answer_with_pass,
            record,
        };
        assert!(may_answer_from_cache(&policy(true, true)));
        assert!(!may_answer_from_cache(&policy(true, false)));
        assert!(!may_answer_from_cache(&policy(false, true)));
    }
}
