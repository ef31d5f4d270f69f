//! Starting the Python interpreter that runs the test script with testrig's driver module.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;
use tokio::process::Command;

use crate::machine::VmConfig;
use crate::support::process::GroupChild;
use testrig_bridge::python_identifier;
use tracing::Instrument;

/// The test-script side of the bridge, shipped inside the binary so that a run needs no install step.
const DRIVER_MODULE: &str = include_str!("../../python/testrig_driver.py");

pub struct PythonSetup<'a> {
    pub python: &'a str,
    pub run_dir: &'a Path,
    pub rpc_socket: &'a Path,
    pub machines: Vec<&'a VmConfig>,
    pub vlans: &'a [u32],
    pub test_script_text: &'a str,
    pub test_script_name: &'a str,
    pub out_dir: &'a Path,
    /// A Python prompt on the runner's terminal instead of the script (`-I`).
    pub interactive: bool,
    /// The script on the runner's terminal, with a prompt when it fails (`--debug-on-failure`).
    pub debug_on_failure: bool,
}

/// What Python's Machine object knows of a machine from the start (PROTOCOL.md, the session's `machines`).
pub fn machine_info(config: &VmConfig) -> serde_json::Value {
    let start_command = match &config.start_command {
        Some(line) => line.clone(),
        None => config.start_script.display().to_string(),
    };
    json!({
        "name": config.name,
        "python_name": python_identifier(&config.name),
        "start_command": start_command,
        "state_dir": config.state_dir,
        "shared_dir": config.shared_dir,
        "keep_machine_state": config.keep_state,
    })
}

/// Writes the driver module, the script and the session file into the run dir and starts Python.
pub fn spawn(setup: &PythonSetup) -> Result<GroupChild> {
    let module = setup.run_dir.join("testrig_driver.py");
    std::fs::write(&module, DRIVER_MODULE).context("failed to write the Python driver module")?;
    let script = setup.run_dir.join("test-script.py");
    std::fs::write(&script, setup.test_script_text).context("failed to write the test script")?;
    let session_path: PathBuf = setup.run_dir.join("session.json");
    let machines: Vec<_> = setup
        .machines
        .iter()
        .map(|config| machine_info(config))
        .collect();
    let session = json!({
        "protocol": "testrig-rpc/1",
        "machines": machines,
        "vlans": setup.vlans,
        "test_script": script,
        "test_script_name": setup.test_script_name,
        "out_dir": setup.out_dir,
        "interactive": setup.interactive,
        "debug_on_failure": setup.debug_on_failure,
    });
    std::fs::write(&session_path, session.to_string())
        .context("failed to write the session file")?;

    let mut command = Command::new(setup.python);
    command
        .arg("-u")
        .arg("-B")
        .arg(&module)
        .env("TESTRIG_RPC_SOCKET", setup.rpc_socket)
        .env("TESTRIG_SESSION", &session_path)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let spawned = if setup.interactive || setup.debug_on_failure {
        // The prompt needs the terminal, line by line and unbuffered: stdio is the runner's own, and Python stays
        // in the foreground process group so that it may read the terminal and gets Ctrl-C itself.
        GroupChild::spawn_in_foreground(&mut command, "python prompt")
    } else {
        command
            .stdin(std::process::Stdio::null())
            // Piped so that what the script prints is in the run's log file too (see `forward_output`).
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        GroupChild::spawn(&mut command, "python test script")
    };
    spawned.with_context(|| format!("failed to start the Python interpreter `{}`", setup.python))
}

/// Passes what the script prints through to the runner's stdout/stderr and into the log file; the returned task
/// ends when Python's pipes close.
pub fn forward_output(python: &mut GroupChild) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let stdout = python.child_mut().stdout.take();
    let stderr = python.child_mut().stderr.take();
    tokio::spawn(
        async move {
            let pump = |stream: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>,
                        to_stderr: bool| async move {
                let Some(stream) = stream else { return };
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    crate::support::log::script_output(&line, to_stderr);
                }
            };
            tokio::join!(
                pump(stdout.map(|s| Box::new(s) as _), false),
                pump(stderr.map(|s| Box::new(s) as _), true)
            );
        }
        .in_current_span(),
    )
}
