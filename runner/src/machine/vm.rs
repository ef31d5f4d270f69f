//! One boot of one machine: the state dir, the sockets the driver listens on, the start script with the driver's
//! arguments, and the tasks that read its console and notice its exit.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::Command;
use tokio::sync::{oneshot, watch, Mutex};

use super::accel;
use super::console::Console;
use super::monitor::Monitor;
use super::qmp::Qmp;
use super::shell::{Drained, Framing, Shell};
use crate::log;
use crate::process::{GroupChild, TERMINATE_GRACE};
use tracing::Instrument;

/// How long QEMU may take to connect to the monitor socket after its start script runs.
const CONNECT_DEADLINE: Duration = Duration::from_secs(60);

/// Everything needed to boot a machine, fixed for the run.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub name: String,
    pub start_script: PathBuf,
    pub state_dir: PathBuf,
    pub shared_dir: PathBuf,
    /// `(vlan, vde switch socket dir)` for every vlan of the run, as `QEMU_VDE_SOCKET_<vlan>`.
    pub vde_sockets: Vec<(u32, PathBuf)>,
    /// Keep the state dir (and so the disk) from an earlier boot.
    pub keep_state: bool,
}

pub type ShellConn = Shell<Drained, tokio::net::unix::pipe::Sender>;

/// A machine whose QEMU is running (or has just exited).
pub struct RunningVm {
    pub shell: Mutex<ShellConn>,
    /// QEMU's stdin: the serial console's input (`-serial stdio`), for `send_console`.
    pub serial_input: Mutex<Option<tokio::process::ChildStdin>>,
    pub monitor: Mutex<Monitor<UnixStream>>,
    qmp: Mutex<Option<Qmp>>,
    qmp_path: PathBuf,
    pub pid: i32,
    exited: watch::Receiver<Option<ExitStatus>>,
    terminate: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

impl RunningVm {
    /// Starts the machine's QEMU and returns once QEMU has connected to the monitor socket (not when
    /// the guest has booted: that is the shell's ready marker, awaited by the first command).
    pub async fn start(
        config: &VmConfig,
        allow_reboot: bool,
        console: Arc<Console>,
    ) -> Result<Self> {
        prepare_state_dir(&config.state_dir, config.keep_state)?;
        let monitor_path = config.state_dir.join("monitor");
        let (shell_out, shell_in) = shell_paths(&config.state_dir);
        let qmp_path = config.state_dir.join("qmp");
        for stale in [&monitor_path, &shell_out, &shell_in, &qmp_path] {
            let _ = std::fs::remove_file(stale);
        }
        let monitor_listener = UnixListener::bind(&monitor_path)
            .with_context(|| format!("failed to listen on {}", monitor_path.display()))?;
        // The backdoor shell's channel (see `Drained`): QEMU appends what the guest writes to a file, and reads
        // what the host writes from a FIFO, which the host opens first (read-write, so that neither open waits
        // for the other side).
        std::fs::File::create(&shell_out)
            .with_context(|| format!("failed to create {}", shell_out.display()))?;
        let c_in = std::ffi::CString::new(shell_in.as_os_str().as_encoded_bytes())?;
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::mkfifo(c_in.as_ptr(), 0o600) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("failed to create the FIFO {}", shell_in.display()));
        }
        let shell_writer = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(&shell_in)
            .with_context(|| format!("failed to open {}", shell_in.display()))?;
        let shell_reader = Drained::tail(&shell_out, &config.name)
            .with_context(|| format!("failed to follow {}", shell_out.display()))?;

        let mut command = Command::new(&config.start_script);
        command
            .args(driver_arguments(&config.state_dir, allow_reboot))
            .current_dir(&config.state_dir)
            .env("TMPDIR", &config.state_dir)
            .env("USE_TMPDIR", "1")
            .env("SHARED_DIR", &config.shared_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (vlan, socket) in &config.vde_sockets {
            command.env(format!("QEMU_VDE_SOCKET_{vlan}"), socket);
        }
        let mut process = GroupChild::spawn(&mut command, format!("QEMU of {}", config.name))
            .with_context(|| {
                format!(
                    "failed to run start script {}",
                    config.start_script.display()
                )
            })?;
        let pid = process.pid();
        tracing::debug!(machine = %config.name, pid, "start script running");

        console.reopen();
        let serial_input = process.child_mut().stdin.take();
        let stdout = process.child_mut().stdout.take().expect("piped");
        let stderr = process.child_mut().stderr.take().expect("piped");
        let readers = [
            spawn_console_reader(config.name.clone(), stdout, console.clone()),
            spawn_console_reader(config.name.clone(), stderr, console.clone()),
        ];

        let (exit_tx, exited) = watch::channel(None);
        let (terminate_tx, terminate_rx) = oneshot::channel();
        tokio::spawn(supervise(process, terminate_rx, exit_tx, readers, console).in_current_span());

        let vm_exit = exited.clone();
        let connect = async {
            let (monitor, _) = monitor_listener.accept().await?;
            anyhow::Ok(monitor)
        };
        let monitor = tokio::select! {
            result = tokio::time::timeout(CONNECT_DEADLINE, connect) => match result {
                Ok(conns) => conns.context("failed to accept QEMU's connection")?,
                Err(_) => bail!("QEMU did not connect to the monitor socket within {CONNECT_DEADLINE:?}"),
            },
            status = wait_exit(vm_exit) => bail!(
                "the start script {} exited ({status}) before QEMU connected; its output is in the log above",
                config.start_script.display()
            ),
        };
        let monitor = tokio::time::timeout(CONNECT_DEADLINE, Monitor::connect(monitor))
            .await
            .context("QEMU's monitor gave no prompt")?
            .context("failed to read QEMU's monitor prompt")?;
        Ok(RunningVm {
            shell: Mutex::new(Shell::new(shell_reader, shell_writer, Framing::from_env())),
            serial_input: Mutex::new(serial_input),
            monitor: Mutex::new(monitor),
            qmp: Mutex::new(None),
            qmp_path,
            pid,
            exited,
            terminate: std::sync::Mutex::new(Some(terminate_tx)),
        })
    }

    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exited.borrow()
    }

    /// Resolves when QEMU has exited.
    pub async fn wait_exit(&self) -> ExitStatus {
        wait_exit(self.exited.clone()).await
    }

    /// Asks the supervisor to terminate QEMU (SIGTERM, grace, SIGKILL) and waits for it.
    pub async fn terminate(&self) -> ExitStatus {
        if let Some(tx) = self.terminate.lock().unwrap().take() {
            let _ = tx.send(());
        }
        self.wait_exit().await
    }

    /// Runs a QMP command, connecting on first use.
    pub async fn qmp(
        &self,
        command: &str,
        arguments: serde_json::Value,
    ) -> Result<serde_json::Value> {
        let mut qmp = self.qmp.lock().await;
        if qmp.is_none() {
            *qmp = Some(
                Qmp::connect(&self.qmp_path)
                    .await
                    .context("failed to connect to QMP")?,
            );
        }
        Ok(qmp
            .as_mut()
            .expect("connected")
            .execute(command, arguments)
            .await?)
    }
}

async fn wait_exit(mut exited: watch::Receiver<Option<ExitStatus>>) -> ExitStatus {
    loop {
        if let Some(status) = *exited.borrow_and_update() {
            return status;
        }
        if exited.changed().await.is_err() {
            // The supervisor is gone without a status: treat as killed.
            return std::os::unix::process::ExitStatusExt::from_raw(libc::SIGKILL);
        }
    }
}

/// The arguments nixpkgs' driver appends to every start script, and `-machine accel=tcg` where KVM does not really
/// work (see `accel`).
fn driver_arguments(state_dir: &Path, allow_reboot: bool) -> Vec<String> {
    let at = |name: &str| state_dir.join(name).display().to_string();
    let mut args = vec![
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", at("qmp")),
        "-monitor".into(),
        format!("unix:{}", at("monitor")),
        "-chardev".into(),
        {
            let (out, input) = shell_paths(state_dir);
            format!(
                "file,id=shell,path={},input-path={},append=on",
                out.display(),
                input.display()
            )
        },
        "-device".into(),
        "virtio-serial".into(),
        "-device".into(),
        "virtconsole,chardev=shell".into(),
        "-device".into(),
        "virtio-rng-pci".into(),
        "-serial".into(),
        "stdio".into(),
    ];
    if !allow_reboot {
        args.push("-no-reboot".into());
    }
    if std::env::var_os("DISPLAY").is_none() {
        args.push("-nographic".into());
    }
    // Last, so that it wins over the script's own `-machine accel=kvm:tcg`.
    args.extend(accel::start_script_args(accel::host_accel()));
    args
}

/// The backdoor shell's output file and input FIFO in a state dir.
fn shell_paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    (state_dir.join("shell.out"), state_dir.join("shell.in"))
}

fn prepare_state_dir(dir: &Path, keep: bool) -> Result<()> {
    if dir.exists() && !keep {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("failed to remove old state {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

fn spawn_console_reader(
    name: String,
    stream: impl AsyncRead + Unpin + Send + 'static,
    console: Arc<Console>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(
        async move {
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line);
                        let text = text.trim_end_matches(['\n', '\r']);
                        log::serial(&name, text);
                        console.push_line(text);
                    }
                }
            }
        }
        .in_current_span(),
    )
}

/// Owns the QEMU process: waits for it to exit or for a request to terminate it, then publishes the status once
/// the console is drained.
async fn supervise(
    mut process: GroupChild,
    terminate: oneshot::Receiver<()>,
    exit_tx: watch::Sender<Option<ExitStatus>>,
    readers: [tokio::task::JoinHandle<()>; 2],
    console: Arc<Console>,
) {
    let status = tokio::select! {
        status = process.wait() => {
            // The start script may have left children in the group (a script that did not exec QEMU).
            process.terminate(TERMINATE_GRACE).await.ok().or(status.ok())
        }
        _ = terminate => process.terminate(TERMINATE_GRACE).await.ok(),
    };
    for reader in readers {
        let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
    }
    console.close();
    let status =
        status.unwrap_or_else(|| std::os::unix::process::ExitStatusExt::from_raw(libc::SIGKILL));
    let _ = exit_tx.send(Some(status));
}
