//! Virtual networks: one `vde_switch` hub per vlan, as nixpkgs' driver makes them. Machines reach a switch through
//! `QEMU_VDE_SOCKET_<n>`; the switch dies with the runner.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::{ChildStdin, Command};

use crate::support::process::{GroupChild, TERMINATE_GRACE};

/// How long a switch may take to create its control socket.
const SWITCH_START_DEADLINE: Duration = Duration::from_secs(10);

pub struct VdeSwitch {
    pub vlan: u32,
    pub socket_dir: PathBuf,
    process: GroupChild,
    /// vde_switch reads management commands from stdin and exits at EOF, so the pipe stays open while it runs.
    _stdin: ChildStdin,
}

impl VdeSwitch {
    #[tracing::instrument(skip_all, fields(vlan))]
    pub async fn start(vlan: u32, run_dir: &Path) -> Result<Self> {
        let socket_dir = run_dir.join(format!("vde{vlan}.ctl"));
        let mut cmd = Command::new("vde_switch");
        cmd.arg("--sock")
            .arg(&socket_dir)
            .args(["--dirmode", "0700", "--hub"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut process = GroupChild::spawn(&mut cmd, format!("vde_switch for vlan {vlan}"))
            .context("failed to start `vde_switch` (is the vde2 package installed?)")?;
        let stdin = process.child_mut().stdin.take().expect("stdin is piped");

        let ctl = socket_dir.join("ctl");
        let deadline = tokio::time::Instant::now() + SWITCH_START_DEADLINE;
        while !ctl.exists() {
            if let Some(status) = process.try_wait()? {
                let mut stderr = String::new();
                if let Some(mut err) = process.child_mut().stderr.take() {
                    let _ = tokio::io::AsyncReadExt::read_to_string(&mut err, &mut stderr).await;
                }
                bail!(
                    "vde_switch for vlan {vlan} exited with {status}: {}",
                    stderr.trim()
                );
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "vde_switch for vlan {vlan} did not create {} within {SWITCH_START_DEADLINE:?}",
                    ctl.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::debug!(socket = %socket_dir.display(), "vlan switch up");
        Ok(VdeSwitch {
            vlan,
            socket_dir,
            process,
            _stdin: stdin,
        })
    }

    pub async fn stop(mut self) {
        let _ = self.process.terminate(TERMINATE_GRACE).await;
    }
}
