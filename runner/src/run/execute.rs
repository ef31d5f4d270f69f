//! Executing one test: the driver's options from the run's, and the outcome in the log.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::options::ExecOptions;
use crate::driver::{self, run_test, Outcome, RunResult};
use crate::machine::Timeouts;
use crate::plan::load::LoadedPlan;
use crate::support::log;

/// Runs the test with its outputs in `out_dir` and logs the outcome.
pub async fn execute(
    exec: &ExecOptions,
    plan: &LoadedPlan,
    out_dir: PathBuf,
    state_dirs: Option<BTreeMap<String, PathBuf>>,
) -> anyhow::Result<RunResult> {
    let options = driver::RunOptions {
        out_dir,
        state_dirs,
        python: exec
            .python
            .clone()
            .or_else(|| plan.plan.python.clone())
            .unwrap_or_else(|| "python3".into()),
        timeouts: Timeouts {
            boot: exec.boot_timeout,
            ..Timeouts::default()
        },
        interactive: exec.interactive,
        debug_on_failure: exec.debug_on_failure,
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
