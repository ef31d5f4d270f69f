//! `Machine`: what a test script's machine object does, on the runner's side. Every operation has a deadline and
//! fails fast, naming the machine, when QEMU exits under it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::console::Console;
use super::error::{OpError, OpResult};
use super::shell::{wait_slice_line, CommandOutput};
use super::vm::{RunningVm, VmConfig};
use crate::log::{self, Section};

/// The deadlines of a run, in one place.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From QEMU's start to the backdoor's ready marker.
    pub boot: Duration,
    /// Extra time the host gives a command beyond its guest-side `timeout`, before it declares the guest hung.
    pub host_grace: Duration,
    /// For commands with no timeout of their own: how long the host waits before declaring the guest hung.
    pub untimed_command: Duration,
    /// `shutdown()`: from `poweroff` to QEMU's exit.
    pub shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            boot: Duration::from_secs(600),
            host_grace: Duration::from_secs(30),
            untimed_command: Duration::from_secs(3600),
            shutdown: Duration::from_secs(120),
        }
    }
}

pub struct Machine {
    pub name: String,
    config: VmConfig,
    pub timeouts: Timeouts,
    pub console: Arc<Console>,
    /// The current boot; `None` before the first start and after a shutdown. Held only to start or stop, never
    /// across a command.
    vm: Mutex<Option<Arc<RunningVm>>>,
}

impl Machine {
    pub fn new(config: VmConfig, timeouts: Timeouts) -> Self {
        Machine {
            name: config.name.clone(),
            config,
            timeouts,
            console: Arc::new(Console::default()),
            vm: Mutex::new(None),
        }
    }

    pub fn log(&self, message: &str) {
        log::line(Some(&self.name), message);
    }

    pub fn section(&self, message: impl Into<String>) -> Section {
        Section::begin(Some(&self.name), message)
    }

    fn failure(&self, message: impl std::fmt::Display) -> OpError {
        OpError::Failure(format!("{}: {message}", self.name))
    }

    fn timeout(&self, message: impl std::fmt::Display) -> OpError {
        OpError::Timeout(format!("{}: {message}", self.name))
    }

    /// Starts QEMU unless it is running.
    pub async fn start(&self, allow_reboot: bool) -> OpResult<()> {
        let mut vm = self.vm.lock().await;
        if let Some(running) = vm.as_ref() {
            if running.exit_status().is_none() {
                return Ok(());
            }
        }
        let _section = self.section("starting vm");
        let running = RunningVm::start(&self.config, allow_reboot, self.console.clone())
            .await
            .map_err(|e| self.failure(format!("{e:#}")))?;
        self.log(&format!("QEMU running (pid {})", running.pid));
        *vm = Some(Arc::new(running));
        Ok(())
    }

    pub async fn is_up(&self) -> bool {
        match self.vm.lock().await.as_ref() {
            Some(vm) => {
                vm.exit_status().is_none()
                    && vm.shell.try_lock().map(|s| s.is_ready()).unwrap_or(true)
            }
            None => false,
        }
    }

    pub async fn is_running(&self) -> bool {
        matches!(self.vm.lock().await.as_ref(), Some(vm) if vm.exit_status().is_none())
    }

    /// The running VM, started first if needed (as nixpkgs' driver does on a machine's first command).
    async fn running(&self) -> OpResult<Arc<RunningVm>> {
        if !self.is_running().await {
            self.start(false).await?;
        }
        Ok(self.vm.lock().await.clone().expect("started"))
    }

    /// Waits for the backdoor's ready marker (once per boot).
    async fn ready_vm(&self) -> OpResult<Arc<RunningVm>> {
        let vm = self.running().await?;
        {
            let mut shell = vm.shell.lock().await;
            if !shell.is_ready() {
                let _section = self.section("waiting for the VM to finish booting");
                let boot = self.timeouts.boot;
                tokio::select! {
                    ready = tokio::time::timeout(boot, shell.wait_until_ready()) => match ready {
                        Ok(Ok(())) => self.log("connected to guest root shell"),
                        Ok(Err(e)) => {
                            // The shell closes when QEMU exits; say why, if QEMU is exiting.
                            if let Ok(status) = tokio::time::timeout(Duration::from_secs(5), vm.wait_exit()).await {
                                return Err(self.exited_while_booting(status));
                            }
                            return Err(self.failure(format!("backdoor shell: {e}")));
                        }
                        Err(_) => return Err(self.timeout(format!(
                            "the guest did not start its backdoor shell within {boot:?} (see its console above)"))),
                    },
                    status = vm.wait_exit() => return Err(self.exited_while_booting(status)),
                }
            }
        }
        Ok(vm)
    }

    fn exited_while_booting(&self, status: std::process::ExitStatus) -> OpError {
        self.failure(format!(
            "QEMU exited ({status}) before the guest's backdoor shell started (a kernel panic or a boot failure; see its console above)"
        ))
    }

    /// Runs one command in the guest. `timeout` is the guest-side `timeout` (seconds); the host gives up a grace
    /// period later, or after `untimed_command` when there is no timeout.
    pub async fn execute(&self, command: &str, timeout: Option<f64>) -> OpResult<CommandOutput> {
        let host_deadline = match timeout {
            Some(secs) => Duration::from_secs_f64(secs.max(0.0)) + self.timeouts.host_grace,
            None => self.timeouts.untimed_command,
        };
        self.in_shell(command, host_deadline, ShellOp::Command(command, timeout))
            .await
    }

    /// Runs `op` on the ready shell, bounded by `host_deadline` and by QEMU's exit. `what` names it in errors.
    async fn in_shell(
        &self,
        what: &str,
        host_deadline: Duration,
        op: ShellOp<'_>,
    ) -> OpResult<CommandOutput> {
        let vm = self.ready_vm().await?;
        let mut shell = vm.shell.lock().await;
        let run = async {
            match op {
                ShellOp::Command(command, timeout) => shell.run(command, timeout).await,
                ShellOp::WaitSlice(line) => shell.run_wait_slice(line).await,
            }
        };
        tokio::select! {
            result = tokio::time::timeout(host_deadline, run) => match result {
                Ok(Ok(output)) => Ok(output),
                Ok(Err(e)) => Err(self.failure(format!("while running `{what}`: {e}"))),
                Err(_) => Err(self.timeout(format!(
                    "no reply to `{what}` within {host_deadline:?}; the guest is hung, or the command left its stdout open (redirect a background daemon's output)"))),
            },
            status = vm.wait_exit() => Err(self.failure(format!("QEMU exited ({status}) while running `{what}`"))),
        }
    }

    /// Sends a command and waits for nothing (`check_output=False`), or for its output only (`check_return=False`).
    pub async fn execute_partially(
        &self,
        command: &str,
        timeout: Option<f64>,
        read_output: bool,
    ) -> OpResult<Vec<u8>> {
        let vm = self.ready_vm().await?;
        let mut shell = vm.shell.lock().await;
        if !read_output {
            shell
                .send(&super::shell::output_line(command, timeout))
                .await
                .map_err(|e| self.failure(format!("while sending `{command}`: {e}")))?;
            return Ok(Vec::new());
        }
        let deadline =
            Duration::from_secs_f64(timeout.unwrap_or(0.0).max(0.0)) + self.timeouts.host_grace;
        tokio::select! {
            result = tokio::time::timeout(deadline, shell.run_output_only(command, timeout)) => match result {
                Ok(Ok(output)) => Ok(output),
                Ok(Err(e)) => Err(self.failure(format!("while running `{command}`: {e}"))),
                Err(_) => Err(self.timeout(format!("no output from `{command}` within {deadline:?}"))),
            },
            _ = vm.wait_exit() => Ok(Vec::new()),
        }
    }

    /// Ctrl-Alt-Delete; the next command waits for the rebooted guest's backdoor (QEMU exits instead when the
    /// machine was started without `allow_reboot`, as in nixpkgs).
    pub async fn reboot(&self) -> OpResult<()> {
        let vm = self.running().await?;
        let _section = self.section("rebooting");
        vm.shell.lock().await.expect_new_boot();
        self.monitor_command("sendkey ctrl-alt-delete").await?;
        Ok(())
    }

    /// Stops QEMU without a clean shutdown (SIGTERM, then SIGKILL).
    pub async fn kill(&self) {
        if let Some(vm) = self.vm.lock().await.clone() {
            let _section = self.section("releasing the VM");
            vm.terminate().await;
        }
    }

    /// `poweroff`, then wait for QEMU to exit.
    pub async fn shutdown(&self) -> OpResult<()> {
        let Some(vm) = self.vm.lock().await.clone() else {
            return Ok(());
        };
        if vm.exit_status().is_some() {
            return Ok(());
        }
        let _section = self.section("shutting down");
        // `poweroff` needs the backdoor; a machine still booting gets there first.
        let vm = self.ready_vm().await?;
        vm.shell
            .lock()
            .await
            .send("poweroff")
            .await
            .map_err(|e| self.failure(format!("failed to send poweroff: {e}")))?;
        self.wait_for_exit(&vm, self.timeouts.shutdown).await
    }

    /// Waits (up to `deadline`) for the current boot's QEMU to exit.
    async fn wait_for_exit(&self, vm: &RunningVm, deadline: Duration) -> OpResult<()> {
        match tokio::time::timeout(deadline, vm.wait_exit()).await {
            Ok(status) => {
                self.log(&format!("QEMU exited ({status})"));
                Ok(())
            }
            Err(_) => Err(self.timeout(format!("QEMU did not exit within {deadline:?}"))),
        }
    }

    pub async fn wait_for_shutdown(&self, deadline: Duration) -> OpResult<()> {
        let Some(vm) = self.vm.lock().await.clone() else {
            return Ok(());
        };
        let _section = self.section("waiting for the VM to power off");
        self.wait_for_exit(&vm, deadline).await
    }

    /// Simulates a power cut: the monitor's `quit`.
    pub async fn crash(&self) -> OpResult<()> {
        let Some(vm) = self.vm.lock().await.clone() else {
            return Ok(());
        };
        let _section = self.section("simulating a crash");
        let _ = vm.monitor.lock().await.command_without_reply("quit").await;
        self.wait_for_exit(&vm, Duration::from_secs(30)).await
    }

    /// Writes `chars` to QEMU's stdin, the input of the serial console (nixpkgs' `send_console`).
    pub async fn send_console(&self, chars: &str) -> OpResult<()> {
        use tokio::io::AsyncWriteExt;
        let vm = self.running().await?;
        let mut input = vm.serial_input.lock().await;
        let input = input
            .as_mut()
            .ok_or_else(|| self.failure("QEMU's stdin is closed"))?;
        let write = async {
            input.write_all(chars.as_bytes()).await?;
            input.flush().await
        };
        tokio::time::timeout(Duration::from_secs(60), write)
            .await
            .map_err(|_| self.timeout("QEMU did not read its serial console input within 60 s"))?
            .map_err(|e| self.failure(format!("writing to the serial console: {e}")))
    }

    pub async fn monitor_command(&self, command: &str) -> OpResult<String> {
        let vm = self.running().await?;
        let mut monitor = vm.monitor.lock().await;
        tokio::time::timeout(Duration::from_secs(60), monitor.command(command))
            .await
            .map_err(|_| self.timeout(format!("monitor command `{command}` got no reply")))?
            .map_err(|e| self.failure(format!("monitor command `{command}`: {e}")))
    }

    pub async fn qmp(
        &self,
        command: &str,
        arguments: serde_json::Value,
    ) -> OpResult<serde_json::Value> {
        let vm = self.running().await?;
        tokio::time::timeout(Duration::from_secs(60), vm.qmp(command, arguments))
            .await
            .map_err(|_| self.timeout(format!("QMP `{command}` got no reply")))?
            .map_err(|e| self.failure(format!("{e:#}")))
    }

    /// Teardown at the end of a run: `sync` in a running guest (bounded), then terminate QEMU.
    pub async fn release(&self, sync_first: bool) {
        let Some(vm) = self.vm.lock().await.take() else {
            return;
        };
        if vm.exit_status().is_none() && sync_first {
            if let Ok(mut shell) =
                tokio::time::timeout(Duration::from_secs(5), vm.shell.lock()).await
            {
                if shell.is_ready() {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(30),
                        shell.run("sync", Some(25.0)),
                    )
                    .await;
                }
            }
        }
        vm.terminate().await;
    }

    /// Waits in the guest until `check` (the body of a bash function, see [`wait_slice_line`]) returns something
    /// other than 1 (not yet), and returns that reply. The loop runs in the guest, so the reaction is a fraction of
    /// a second (it looks every 50 ms where a builtin can look); it comes back to the host at least once a second
    /// (a slice), so the deadline is the host's and exact: slices go on while time is left, and the last one is
    /// cut to what is left (it still checks once, nixpkgs' last try). A check that hangs (a command of
    /// `wait_until_succeeds`) is bounded by the time left plus the host's grace period, as a command with a timeout.
    pub async fn wait_in_guest(
        &self,
        what: &str,
        timeout: Duration,
        check: &str,
    ) -> OpResult<CommandOutput> {
        let deadline = Instant::now() + timeout;
        let mut first = true;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = wait_slice_line(check, first, left.min(WAIT_SLICE));
            first = false;
            let reply = self
                .in_shell(
                    what,
                    left + self.timeouts.host_grace,
                    ShellOp::WaitSlice(&line),
                )
                .await?;
            if reply.status != 1 {
                return Ok(reply);
            }
            if Instant::now() >= deadline {
                return Err(self.timeout(format!("timed out after {timeout:?} waiting for {what}")));
            }
        }
    }
}

/// What `Machine::in_shell` runs: a command (with its guest-side timeout), or a line of `wait_slice_line`.
enum ShellOp<'a> {
    Command(&'a str, Option<f64>),
    WaitSlice(&'a str),
}

/// The longest the guest's wait loop goes without coming back to the host.
const WAIT_SLICE: Duration = Duration::from_secs(1);
