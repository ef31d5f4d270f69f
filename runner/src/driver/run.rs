//! Running one loaded plan from start to teardown.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use super::python::{self, PythonSetup};
use super::rpc;
use super::session::{MachineSetup, Session, SubtestRecord};
use super::vlan::VdeSwitch;
use crate::machine::{Machine, Timeouts, VmConfig};
use crate::plan::load::LoadedPlan;
use crate::support::exit;
use crate::support::log;
use crate::support::process::TERMINATE_GRACE;

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub out_dir: PathBuf,
    /// Where each machine's state dir lives across runs; `None` for a fresh dir per run.
    pub state_dirs: Option<BTreeMap<String, PathBuf>>,
    pub python: String,
    pub timeouts: Timeouts,
    /// `-I`: a Python prompt instead of the script; no global timeout, and Ctrl-C belongs to the prompt.
    pub interactive: bool,
    /// `--debug-on-failure`: the script runs with Python in the foreground (Ctrl-C belongs to it) and a failure
    /// opens a prompt, which stops the global timeout.
    pub debug_on_failure: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// The script failed; the message says where and why.
    Failed(String),
    TimedOut(Duration),
    Interrupted(&'static str),
}

impl Outcome {
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Passed => exit::OK,
            Outcome::Failed(_) | Outcome::TimedOut(_) => exit::FAILED,
            Outcome::Interrupted("SIGINT") => exit::SIGINT,
            Outcome::Interrupted(_) => exit::SIGTERM,
        }
    }
}

pub struct RunResult {
    pub outcome: Outcome,
    pub duration: Duration,
    pub subtests: Vec<SubtestRecord>,
}

/// Runs the test; returns its outcome once every machine, switch and Python process is gone.
pub async fn run_test(plan: &LoadedPlan, options: &RunOptions) -> Result<RunResult> {
    let started = Instant::now();
    // Decided (and, for TCG, said) once per run, before the test's log sections open.
    crate::machine::host_accel();
    let run_dir = tempfile::Builder::new()
        .prefix("testrig-")
        .tempdir_in(runtime_dir())
        .context("failed to create the run's temporary dir")?;
    let shared_dir = run_dir.path().join("shared-xchg");
    std::fs::create_dir_all(&shared_dir)?;
    std::fs::create_dir_all(&options.out_dir)
        .with_context(|| format!("failed to create output dir {}", options.out_dir.display()))?;

    let mut switches = Vec::new();
    for &vlan in &plan.plan.vlans {
        switches.push(VdeSwitch::start(vlan, run_dir.path()).await?);
    }
    let vde_sockets: Vec<_> = switches
        .iter()
        .map(|s| (s.vlan, s.socket_dir.clone()))
        .collect();

    let machines: BTreeMap<String, Arc<Machine>> = plan
        .start_scripts
        .iter()
        .map(|(name, script)| {
            let kept = options.state_dirs.as_ref().and_then(|dirs| dirs.get(name));
            let config = VmConfig {
                name: name.clone(),
                start_script: script.clone(),
                start_command: None,
                state_dir: kept
                    .cloned()
                    .unwrap_or_else(|| run_dir.path().join(format!("vm-state-{name}"))),
                shared_dir: shared_dir.clone(),
                vde_sockets: vde_sockets.clone(),
                keep_state: kept.is_some(),
            };
            (
                name.clone(),
                Arc::new(Machine::new(config, options.timeouts)),
            )
        })
        .collect();
    let global_timeout = Duration::from_secs(plan.plan.global_timeout);
    let session = Arc::new(
        Session::new(machines, options.out_dir.clone(), shared_dir.clone())
            .with_machine_setup(
                MachineSetup {
                    run_dir: run_dir.path().to_owned(),
                    vde_sockets: vde_sockets.clone(),
                    timeouts: options.timeouts,
                },
                (!options.interactive).then_some(global_timeout),
            )
            .with_ocr(plan.ocr_allowed()),
    );

    let rpc_socket = run_dir.path().join("rpc.sock");
    let server = rpc::serve(&rpc_socket, session.clone())
        .context("failed to open the Python bridge socket")?;
    let mut python = python::spawn(&PythonSetup {
        python: &options.python,
        run_dir: run_dir.path(),
        rpc_socket: &rpc_socket,
        machines: session.machines.values().map(|m| m.config()).collect(),
        vlans: &plan.plan.vlans,
        test_script_text: &plan.test_script_text,
        test_script_name: &plan.test_script_name,
        out_dir: &options.out_dir,
        interactive: options.interactive,
        debug_on_failure: options.debug_on_failure,
    })?;

    // With a prompt possible, Python has the terminal and takes Ctrl-C itself.
    let foreground = options.interactive || options.debug_on_failure;
    let output = python::forward_output(&mut python);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let outcome = tokio::select! {
        status = python.wait() => {
            let status = status.context("failed to wait for Python")?;
            let result = session.result.lock().unwrap().clone();
            match result {
                Some(r) if r.ok && status.success() => Outcome::Passed,
                Some(r) if !r.ok => {
                    if !r.traceback.is_empty() {
                        log::line(None, r.traceback.trim_end());
                    }
                    Outcome::Failed(r.message)
                }
                _ => Outcome::Failed(format!("the Python test driver exited ({status}) without reporting a result")),
            }
        }
        _ = global_deadline(global_timeout, &session), if !options.interactive => Outcome::TimedOut(global_timeout),
        _ = sigint.recv(), if !foreground => Outcome::Interrupted("SIGINT"),
        _ = sigterm.recv() => Outcome::Interrupted("SIGTERM"),
    };
    match &outcome {
        Outcome::TimedOut(t) => log::line(
            None,
            &format!("global timeout of {} seconds reached", t.as_secs()),
        ),
        Outcome::Interrupted(sig) => log::line(None, &format!("{sig} received, stopping")),
        _ => {}
    }

    teardown(&session, &mut python, server, switches, &outcome).await;
    // Python is gone, so its pipes close; the bound only guards against a grandchild holding them open.
    let _ = tokio::time::timeout(Duration::from_secs(2), output).await;
    let subtests = session.subtests.lock().unwrap().clone();
    drop(run_dir);
    Ok(RunResult {
        outcome,
        duration: started.elapsed(),
        subtests,
    })
}

/// Ends when the global timeout is reached, unless a debugging prompt opened before then: the time a person spends
/// at the prompt is not the test's.
async fn global_deadline(timeout: Duration, session: &Session) {
    tokio::time::sleep(timeout).await;
    if session.debugging.load(std::sync::atomic::Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
}

/// Python first (it may be mid-request), then every machine (synced if the run ended normally), then the
/// switches. Each step is bounded, so teardown cannot hang.
async fn teardown(
    session: &Session,
    python: &mut crate::support::process::GroupChild,
    server: tokio::task::JoinHandle<()>,
    switches: Vec<VdeSwitch>,
    outcome: &Outcome,
) {
    let _ = python.terminate(TERMINATE_GRACE).await;
    server.abort();
    let sync = matches!(outcome, Outcome::Passed | Outcome::Failed(_));
    // The script's own machines (`create_machine`) too; the list is taken once, Python is gone, so no more come.
    let machines = session.all_machines();
    let releases = machines.iter().map(|m| m.release(sync));
    futures::future::join_all(releases).await;
    for switch in switches {
        switch.stop().await;
    }
}

/// nixpkgs puts run state in `$XDG_RUNTIME_DIR` when set, else the temp dir; socket paths must stay short.
fn runtime_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}
