//! One test of `testrig run`, through the result cache and the kept state.
//!
//! In order: a cached pass answers at once (no lock, no VM, no Python); with `-K` the nodes' state dirs are locked
//! and checked; the key's lock is taken (a second run of the same key waits for the first, then finds its pass);
//! the test runs with its log, report and output dir inside a staging dir of the cache; the staging dir becomes
//! the key's entry in one rename; the outputs are copied to where the user asked.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::execute::execute;
use super::options::{ExecOptions, OutputOptions, RunOptions};
use crate::cache::{self, Cache, Entry, EntryPaths, Lookup, Staging};
use crate::driver::{Outcome, RunResult, SubtestRecord};
use crate::plan::load::LoadedPlan;
use crate::run::report;
use crate::state::{self, KeepOptions, KeptState, NodeSpec};
use crate::support::copy_tree::copy_tree;
use crate::support::exit;
use crate::support::lock::{LockError, LockGuard};
use crate::support::log;
use crate::support::xdg;
use tracing::Instrument;

/// How long past the first run's global timeout a second run of the same key waits for it.
const KEY_WAIT_GRACE: Duration = Duration::from_secs(300);

/// Runs (or answers from the cache) one test; returns its exit status.
pub async fn run_plan(
    options: &RunOptions,
    plan: &LoadedPlan,
    several: bool,
    cache: Option<&Cache>,
) -> u8 {
    // Everything of this test, including the tasks it spawns, logs inside its run span (see `log`).
    let (run, span) = log::run_span(&plan.name);
    run_plan_in_span(options, plan, several, cache, run)
        .instrument(span)
        .await
}

async fn run_plan_in_span(
    options: &RunOptions,
    plan: &LoadedPlan,
    several: bool,
    cache: Option<&Cache>,
    run: u64,
) -> u8 {
    let user_out = user_out_dir(&options.output, plan, several);
    // See `CachePolicy` for when a pass may answer and when a run is recorded at all.
    let skip_allowed = options.cache.answer_with_pass;
    let cache = cache.filter(|_| options.cache.record);
    if let Some(cache) = cache.filter(|_| skip_allowed) {
        match cache.lookup(&plan.cache_key) {
            Lookup::Ignored { dir, reason } => tracing::warn!(
                "ignoring cache entry {}: {reason}; running the test",
                dir.display()
            ),
            Lookup::Found(found) if found.entry.is_skippable_pass() => {
                if let Some(code) =
                    answer_from(plan, &found.entry, &found.paths, &options.output, &user_out)
                {
                    return code;
                }
            }
            Lookup::Found(_) | Lookup::Miss => {}
        }
    }

    if let Err(e) = plan.check_start_scripts() {
        eprintln!("testrig: {e}");
        return exit::BAD_INPUT;
    }
    if plan.plan.force_accel && crate::machine::host_accel() == crate::machine::Accel::Tcg {
        eprintln!(
            "testrig: {}: the test sets qemu.forceAccel (no fallback to TCG), but {}; TESTRIG_ACCEL=kvm runs it \
             on KVM anyway",
            plan.name,
            crate::machine::KVM_NOT_REAL
        );
        return exit::BAD_INPUT;
    }
    let kept = match unless_interrupted(keep_state(options.keep_state, plan)).await {
        Err(interrupted) => return interrupted.exit_code(),
        Ok(Ok(kept)) => kept,
        Ok(Err(message)) => {
            tracing::error!("{}: {message}", plan.name);
            return exit::BAD_INPUT;
        }
    };
    let Some(cache) = cache else {
        return run_uncached(options, plan, user_out, kept).await;
    };
    if let Err(e) = cache.ensure() {
        // A cache that cannot be written (a read-only home, the Nix sandbox) must not stop the test.
        tracing::warn!(
            "cannot create the result cache in {}: {e}; running without it",
            cache.root().display()
        );
        return run_uncached(options, plan, user_out, kept).await;
    }
    let key_lock = match unless_interrupted(lock_key(cache, plan)).await {
        Err(interrupted) => return interrupted.exit_code(),
        Ok(Ok(lock)) => lock,
        Ok(Err(e @ LockError::Busy { .. })) => {
            tracing::error!(
                "{}: cannot lock cache key {}: {e}",
                plan.name,
                plan.cache_key
            );
            return exit::BAD_INPUT;
        }
        Ok(Err(e)) => {
            tracing::warn!("cannot use the result cache: {e}; running without it");
            return run_uncached(options, plan, user_out, kept).await;
        }
    };
    if skip_allowed {
        // The run we waited for may have just recorded a pass.
        if let Lookup::Found(found) = cache.lookup(&plan.cache_key) {
            if found.entry.is_skippable_pass() {
                if let Some(code) =
                    answer_from(plan, &found.entry, &found.paths, &options.output, &user_out)
                {
                    return code;
                }
            }
        }
    }
    let staging = match Staging::begin(cache, &plan.cache_key, &key_lock)
        .and_then(|s| log::tee_to_file(run, &s.paths().log()).map(|()| s))
    {
        Ok(staging) => staging,
        Err(e) => {
            tracing::warn!(
                "cannot record the result in {}: {e}; running without the cache",
                cache.root().display()
            );
            return run_uncached(options, plan, user_out, kept).await;
        }
    };
    run_recorded(
        options, plan, cache, staging, &key_lock, user_out, kept, run,
    )
    .await
}

/// Prints the cached line and delivers the cached outputs; `None` (the test then runs) if they cannot be copied.
fn answer_from(
    plan: &LoadedPlan,
    entry: &Entry,
    paths: &EntryPaths,
    output: &OutputOptions,
    user_out: &Option<PathBuf>,
) -> Option<u8> {
    if let Err(e) = deliver(paths, user_out.as_deref(), output.junit_xml.as_deref()) {
        tracing::warn!(
            "cannot copy the cached outputs of {} from {}: {e}; running the test",
            plan.name,
            paths.dir.display()
        );
        return None;
    }
    println!(
        "{}",
        cache::cached_line(&plan.name, entry, &paths.log(), cache::now_secs())
    );
    Some(exit::OK)
}

#[allow(clippy::too_many_arguments)] // the pieces of one recorded run, each owned by a different module
async fn run_recorded(
    options: &RunOptions,
    plan: &LoadedPlan,
    cache: &Cache,
    staging: Staging,
    key_lock: &LockGuard,
    user_out: Option<PathBuf>,
    kept: Option<KeptState>,
    run: u64,
) -> u8 {
    let started_at = cache::now_secs();
    let Summary {
        outcome,
        subtests,
        code,
        duration,
        error,
    } = execute_with_state(&options.execution, plan, staging.paths().out(), kept).await;
    log::stop_tee(run);
    let junit = staging.paths().junit();
    if let Err(e) = report::write_junit(&junit, &plan.name, &outcome, duration, &subtests) {
        tracing::warn!("failed to write JUnit report {}: {e}", junit.display());
    }
    let (entry_outcome, message) = match error {
        None => cache::outcome_of(&outcome),
        Some(message) => (cache::EntryOutcome::Error, Some(message)),
    };
    let entry = Entry {
        format: cache::FORMAT.into(),
        key: plan.cache_key.clone(),
        name: plan.name.clone(),
        outcome: entry_outcome,
        message,
        started_at,
        duration_secs: duration.as_secs_f64(),
        plan: serde_json::to_value(&plan.plan).unwrap_or_default(),
        subtests: cache::subtests_of(&subtests),
        kept_state: options.keep_state.is_some(),
        testrig_version: env!("CARGO_PKG_VERSION").into(),
    };
    let paths = match staging.commit(&entry, key_lock) {
        Ok(paths) => paths,
        Err(e) => {
            tracing::warn!(
                "failed to record the result in {}: {e}",
                cache.root().display()
            );
            return code;
        }
    };
    tracing::debug!("{}: recorded in {}", plan.name, paths.dir.display());
    if let Err(e) = deliver(
        &paths,
        user_out.as_deref(),
        options.output.junit_xml.as_deref(),
    ) {
        tracing::error!(
            "{}: failed to copy the outputs from {}: {e}",
            plan.name,
            paths.dir.display()
        );
        return code.max(exit::BAD_INPUT);
    }
    keep_cache_in_bounds(cache);
    code
}

/// The test without the cache (`--no-cache`, or a cache that cannot be written): outputs go straight to `-o`.
async fn run_uncached(
    options: &RunOptions,
    plan: &LoadedPlan,
    user_out: Option<PathBuf>,
    kept: Option<KeptState>,
) -> u8 {
    let out_dir = user_out.unwrap_or_else(|| PathBuf::from("."));
    let Summary {
        outcome,
        subtests,
        code,
        duration,
        ..
    } = execute_with_state(&options.execution, plan, out_dir, kept).await;
    if let Some(path) = &options.output.junit_xml {
        if let Err(e) = report::write_junit(path, &plan.name, &outcome, duration, &subtests) {
            tracing::error!("failed to write JUnit report {}: {e}", path.display());
            return code.max(exit::BAD_INPUT);
        }
    }
    code
}

/// What a run (or its failure to run) amounts to, for the report, the cache entry and the exit status.
struct Summary {
    outcome: Outcome,
    subtests: Vec<SubtestRecord>,
    code: u8,
    duration: Duration,
    /// Why the test could not run at all (not a test failure).
    error: Option<String>,
}

/// Runs the test with its kept state dirs, which are released as soon as the machines are gone, and sums it up.
async fn execute_with_state(
    exec: &ExecOptions,
    plan: &LoadedPlan,
    out_dir: PathBuf,
    kept: Option<KeptState>,
) -> Summary {
    log_preamble(plan, kept.as_ref());
    let started = Instant::now();
    let state_dirs = kept.as_ref().map(|k| k.dirs.clone());
    let result = execute(exec, plan, out_dir, state_dirs).await;
    // Every machine is gone once `execute` returns: the state dirs are free.
    drop(kept);
    match result {
        Ok(RunResult {
            outcome,
            duration,
            subtests,
        }) => Summary {
            code: outcome.exit_code(),
            outcome,
            subtests,
            duration,
            error: None,
        },
        Err(e) => Summary {
            outcome: Outcome::Failed(format!("{e:#}")),
            subtests: Vec::new(),
            code: exit::BAD_INPUT,
            duration: started.elapsed(),
            error: Some(format!("{e:#}")),
        },
    }
}

/// The cache's size cap when nothing else is asked for (`testrig cache gc --max-size` has the same default).
const DEFAULT_CACHE_MAX_SIZE: u64 = 1 << 30;

/// After recording a run: the oldest entries go while the cache is over its cap (`TESTRIG_CACHE_MAX_SIZE`, e.g.
/// `200MiB`, else 1 GiB), so that it cannot grow without bound. Entries of running tests are never removed.
fn keep_cache_in_bounds(cache: &Cache) {
    let max_size = match std::env::var("TESTRIG_CACHE_MAX_SIZE") {
        Ok(text) => match cache::parse_size(&text) {
            Ok(size) => size,
            Err(e) => {
                tracing::warn!("ignoring TESTRIG_CACHE_MAX_SIZE={text}: {e}");
                DEFAULT_CACHE_MAX_SIZE
            }
        },
        Err(_) => DEFAULT_CACHE_MAX_SIZE,
    };
    let policy = cache::GcPolicy {
        max_age: None,
        max_size,
    };
    match cache::gc(cache, &policy, cache::now_secs(), false) {
        Ok(report) => {
            for removed in &report.removed {
                tracing::debug!("cache over {max_size} bytes: removed entry {}", removed.key);
            }
        }
        Err(e) => tracing::warn!("could not trim the result cache: {e}"),
    }
}

fn log_preamble(plan: &LoadedPlan, kept: Option<&KeptState>) {
    for warning in &plan.warnings {
        tracing::warn!("{}: {warning}", plan.name);
    }
    for note in kept.iter().flat_map(|k| &k.notes) {
        if note.is_warning() {
            tracing::warn!("{}: {note}", plan.name);
        } else {
            log::line(None, &format!("{}: {note}", plan.name));
        }
    }
}

/// With `-K`: the nodes' kept state dirs, locked and checked against the nodes' identities.
async fn keep_state(
    keep: Option<KeepOptions>,
    plan: &LoadedPlan,
) -> Result<Option<KeptState>, String> {
    let Some(options) = keep else {
        return Ok(None);
    };
    let root = xdg::state_root().map_err(|e| e.to_string())?;
    let nodes: Vec<NodeSpec> = plan
        .start_scripts
        .iter()
        .map(|(name, script)| NodeSpec {
            name: name.clone(),
            drv: plan.plan.vms.get(name).and_then(|vm| vm.drv.clone()),
            start_script: script.clone(),
        })
        .collect();
    state::prepare(&root, &plan.name, &nodes, options)
        .await
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The key's lock. A run that holds it is running the same test: wait for it (bounded by its global timeout).
async fn lock_key(cache: &Cache, plan: &LoadedPlan) -> Result<LockGuard, LockError> {
    let key = &plan.cache_key;
    if let Some(lock) = cache.try_lock_key(key)? {
        return Ok(lock);
    }
    let wait = Duration::from_secs(plan.plan.global_timeout) + KEY_WAIT_GRACE;
    let holder = crate::support::lock::holder(&cache.lock_path(key))
        .map(|pid| format!("PID {pid}"))
        .unwrap_or_else(|| "PID unknown".into());
    log::line(
        None,
        &format!(
            "{}: another testrig run ({holder}) is running the same test; waiting for it (at most {} s)",
            plan.name,
            wait.as_secs()
        ),
    );
    cache.lock_key(key, wait).await
}

/// `wait`, unless SIGINT or SIGTERM comes first: waiting for another run's lock may take as long as its test, and
/// Ctrl-C must end it at once (the lock is never taken then, and nothing was started yet).
async fn unless_interrupted<T>(wait: impl std::future::Future<Output = T>) -> Result<T, Outcome> {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut sigint), Ok(mut sigterm)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return Ok(wait.await);
    };
    tokio::select! {
        done = wait => Ok(done),
        _ = sigint.recv() => Err(interrupted("SIGINT")),
        _ = sigterm.recv() => Err(interrupted("SIGTERM")),
    }
}

fn interrupted(signal: &'static str) -> Outcome {
    log::line(None, &format!("{signal} received while waiting, stopping"));
    Outcome::Interrupted(signal)
}

fn user_out_dir(output: &OutputOptions, plan: &LoadedPlan, several: bool) -> Option<PathBuf> {
    output.dir.as_ref().map(|dir| {
        if several {
            dir.join(&plan.name)
        } else {
            dir.clone()
        }
    })
}

/// Copies an entry's output dir to `-o` and its JUnit report to `--junit-xml`, when given.
fn deliver(paths: &EntryPaths, out: Option<&Path>, junit: Option<&Path>) -> std::io::Result<()> {
    if let Some(out) = out {
        copy_tree(&paths.out(), out)?;
    }
    if let Some(junit) = junit {
        std::fs::copy(paths.junit(), junit)?;
    }
    Ok(())
}
