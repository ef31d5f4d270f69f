//! `testrig run`: load each test, run it, report. Exit 0 when all passed, 1 when one failed, 2 on bad input.

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::RunArgs;
use crate::driver::{run_test, Outcome, RunOptions};
use crate::log;
use crate::machine::Timeouts;
use crate::plan_load::{load_plan_file, plan_from_flags, BadInput, LoadedPlan};

pub const EXIT_BAD_INPUT: u8 = 2;

pub async fn run(args: RunArgs) -> u8 {
    log::init(args.verbosity(), args.log_format);
    if args.interactive {
        eprintln!("testrig: interactive mode (-I) is not supported yet");
        return EXIT_BAD_INPUT;
    }
    let plans = match load_plans(&args) {
        Ok(plans) => plans,
        Err(e) => {
            eprintln!("testrig: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    let mut worst = 0;
    for plan in &plans {
        let code = run_one(&args, plan, plans.len() > 1).await;
        worst = worst.max(code);
    }
    worst
}

fn load_plans(args: &RunArgs) -> Result<Vec<LoadedPlan>, BadInput> {
    let mut plans = Vec::new();
    if !args.start_scripts.is_empty() {
        let script = match (&args.test_script, args.plans.as_slice()) {
            (Some(script), []) => script.clone(),
            (None, [script]) => script.clone(),
            _ => return Err(BadInput(
                "with --start-scripts, give exactly one test script (positional or --test-script)"
                    .into(),
            )),
        };
        plans.push(plan_from_flags(
            &args.start_scripts,
            &args.vlans,
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
            "nothing to run: name a plan file, or --config driverConfiguration.json".into(),
        ));
    }
    for file in files {
        let mut plan = load_plan_file(&file, args.test_script.as_deref())?;
        if let Some(timeout) = args.global_timeout {
            plan.plan.global_timeout = timeout;
        }
        plans.push(plan);
    }
    Ok(plans)
}

async fn run_one(args: &RunArgs, plan: &LoadedPlan, several: bool) -> u8 {
    for warning in &plan.warnings {
        tracing::warn!("{}: {warning}", plan.name);
    }
    let out_dir = match (&args.output_directory, several) {
        (Some(dir), false) => dir.clone(),
        (Some(dir), true) => dir.join(&plan.name),
        (None, _) => PathBuf::from("."),
    };
    let options = RunOptions {
        out_dir,
        state_dirs: None,
        junit_xml: args.junit_xml.clone(),
        python: args
            .python
            .clone()
            .or_else(|| plan.plan.python.clone())
            .unwrap_or_else(|| "python3".into()),
        timeouts: Timeouts {
            boot: Duration::from_secs(args.boot_timeout),
            ..Timeouts::default()
        },
    };
    match run_test(plan, &options).await {
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
            result.outcome.exit_code()
        }
        Err(e) => {
            tracing::error!("{}: {e:#}", plan.name);
            EXIT_BAD_INPUT
        }
    }
}
