//! From a Python request (`op`, `machine`, `args`) to a machine operation and back to JSON.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use super::request::{GlobalOp, MachineOp, PortWait, Request, Seconds};
use super::session::{ScriptResult, Session, SubtestRecord};
use crate::machine::{shell_quote, Machine, OpError, OpResult};
use crate::support::log::{self, Section};

/// nixpkgs' default for every wait.
const DEFAULT_TIMEOUT: f64 = 900.0;
/// nixpkgs' default for `wait_for_qmp_event`.
const DEFAULT_QMP_EVENT_TIMEOUT: f64 = 600.0;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn done(_: ()) -> Value {
    Value::Null
}

fn seconds_or(timeout: Seconds, default: f64) -> f64 {
    timeout.unwrap_or(default)
}

pub async fn dispatch(session: &Session, request: Request) -> OpResult<Value> {
    match request {
        Request::Global(op) => global_op(session, op).await,
        Request::Machine { name, op } => {
            let machine = session.machine(&name).ok_or_else(|| {
                OpError::BadRequest(format!("no machine named `{name}` in this test"))
            })?;
            machine_op(session, &machine, op).await
        }
    }
}

async fn global_op(session: &Session, op: GlobalOp) -> OpResult<Value> {
    match op {
        GlobalOp::StartAll {} => {
            let _section = Section::begin(None, "starting all VMs");
            let starts = session.machines.values().map(|m| m.start(false));
            for result in futures::future::join_all(starts).await {
                result?;
            }
            Ok(Value::Null)
        }
        GlobalOp::JoinAll {} => {
            let _section = Section::begin(None, "waiting for all VMs to finish");
            for machine in session.machines.values() {
                machine
                    .wait_for_shutdown(Duration::from_secs(24 * 3600))
                    .await?;
            }
            Ok(Value::Null)
        }
        GlobalOp::Log { message } => {
            log::line(None, &message);
            Ok(Value::Null)
        }
        GlobalOp::NestedBegin { message, machine } => {
            let section = Section::begin(machine.as_deref(), message);
            session.open_sections.lock().unwrap().push(section);
            Ok(Value::Null)
        }
        GlobalOp::NestedEnd {} => {
            session.open_sections.lock().unwrap().pop();
            Ok(Value::Null)
        }
        GlobalOp::SubtestBegin { name } => {
            let section = Section::begin(None, format!("subtest: {name}"));
            session
                .open_subtests
                .lock()
                .unwrap()
                .push((name, Instant::now(), section));
            Ok(Value::Null)
        }
        GlobalOp::SubtestEnd { name, ok, message } => {
            let mut open = session.open_subtests.lock().unwrap();
            let position = open
                .iter()
                .rposition(|(n, _, _)| *n == name)
                .ok_or_else(|| OpError::BadRequest(format!("subtest `{name}` was not begun")))?;
            let (name, started, section) = open.remove(position);
            drop(section);
            let failure =
                (!ok.unwrap_or(true)).then(|| message.unwrap_or_else(|| "failed".to_owned()));
            session.subtests.lock().unwrap().push(SubtestRecord {
                name,
                duration: started.elapsed(),
                failure,
            });
            Ok(Value::Null)
        }
        GlobalOp::DebugPrompt {} => {
            session
                .debugging
                .store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::warn!(
                "the test script failed; a debugging prompt is open with its machines still running (the global \
                 timeout is stopped; Ctrl-D ends the run)"
            );
            Ok(Value::Null)
        }
        GlobalOp::CreateMachine {
            start_command,
            name,
            keep_machine_state,
        } => {
            let machine = session.create_machine(
                &start_command,
                name.as_deref(),
                keep_machine_state.unwrap_or(false),
            )?;
            machine.log(&format!("created from the start command `{start_command}`"));
            Ok(super::python::machine_info(machine.config()))
        }
        GlobalOp::Result {
            ok,
            message,
            traceback,
        } => {
            *session.result.lock().unwrap() = Some(ScriptResult {
                ok: ok.unwrap_or(false),
                message: message.unwrap_or_default(),
                traceback: traceback.unwrap_or_default(),
            });
            Ok(Value::Null)
        }
    }
}

async fn machine_op(session: &Session, m: &Machine, op: MachineOp) -> OpResult<Value> {
    let output = |bytes: Vec<u8>| json!({"output_b64": b64(&bytes)});
    match op {
        MachineOp::Start { allow_reboot } => m.start(allow_reboot.unwrap_or(false)).await.map(done),
        MachineOp::Shutdown {} => m.shutdown().await.map(done),
        MachineOp::Crash {} => m.crash().await.map(done),
        MachineOp::IsUp {} => Ok(Value::Bool(m.is_up().await)),
        MachineOp::Status {} => Ok(json!(m.status().await)),
        MachineOp::WaitForShutdown { timeout } => m
            .wait_for_shutdown(Duration::from_secs_f64(seconds_or(
                timeout,
                DEFAULT_TIMEOUT,
            )))
            .await
            .map(done),
        MachineOp::Execute {
            command,
            timeout,
            check_output,
            check_return,
        } => {
            let _section = m.section(format!("running command: {command}"));
            // nixpkgs' statuses for what was not waited for: -2 without output, -1 without status.
            if !check_output.unwrap_or(true) {
                m.execute_partially(&command, timeout, false).await?;
                return Ok(json!({"status": -2, "output_b64": ""}));
            }
            if !check_return.unwrap_or(true) {
                let out = m.execute_partially(&command, timeout, true).await?;
                return Ok(json!({"status": -1, "output_b64": b64(&out)}));
            }
            let out = m.execute(&command, timeout).await?;
            Ok(json!({"status": out.status, "output_b64": b64(&out.stdout)}))
        }
        MachineOp::Reboot {} => m.reboot().await.map(done),
        MachineOp::Release {} => {
            m.kill().await;
            Ok(Value::Null)
        }
        MachineOp::Succeed { commands, timeout } => m.succeed(&commands, timeout).await.map(output),
        MachineOp::Fail { commands, timeout } => m.fail(&commands, timeout).await.map(output),
        MachineOp::WaitUntilSucceeds { command, timeout } => m
            .wait_until_succeeds(&command, seconds_or(timeout, DEFAULT_TIMEOUT))
            .await
            .map(output),
        MachineOp::WaitUntilFails { command, timeout } => m
            .wait_until_fails(&command, seconds_or(timeout, DEFAULT_TIMEOUT))
            .await
            .map(output),
        MachineOp::WaitForUnit {
            unit,
            user,
            timeout,
        } => m
            .wait_for_unit(&unit, user.as_deref(), seconds_or(timeout, DEFAULT_TIMEOUT))
            .await
            .map(done),
        MachineOp::GetUnitInfo { unit, user } => m
            .get_unit_info(&unit, user.as_deref())
            .await
            .map(|info| json!(info)),
        MachineOp::GetUnitProperty {
            unit,
            property,
            user,
        } => m
            .get_unit_property(&unit, &property, user.as_deref())
            .await
            .map(Value::String),
        MachineOp::Systemctl { q, user } => {
            let (status, out) = m.systemctl(&q, user.as_deref()).await?;
            Ok(json!({"status": status, "output_b64": b64(&out)}))
        }
        MachineOp::RequireUnitState { unit, state } => m
            .require_unit_state(&unit, state.as_deref().unwrap_or("active"))
            .await
            .map(done),
        MachineOp::WaitForFile { path, timeout } => m
            .wait_for_file(&path, seconds_or(timeout, DEFAULT_TIMEOUT))
            .await
            .map(done),
        MachineOp::WaitForOpenPort(wait) => wait_for_port(m, wait, true).await,
        MachineOp::WaitForClosedPort(wait) => wait_for_port(m, wait, false).await,
        MachineOp::WaitForOpenUnixSocket {
            path,
            is_datagram,
            timeout,
        } => m
            .wait_for_open_unix_socket(
                &path,
                is_datagram.unwrap_or(false),
                seconds_or(timeout, DEFAULT_TIMEOUT),
            )
            .await
            .map(done),
        MachineOp::Sleep { secs } => m.sleep(secs.unwrap_or(0.0)).await.map(done),
        MachineOp::SendMonitorCommand { command } => {
            m.monitor_command(&command).await.map(Value::String)
        }
        MachineOp::WaitForConsoleText { regex, timeout } => {
            let compiled = regex::Regex::new(&regex)
                .map_err(|e| OpError::BadRequest(format!("bad console regex `{regex}`: {e}")))?;
            let timeout = timeout.map(Duration::from_secs_f64);
            let _section = m.section(format!("waiting for `{regex}` to appear on the console"));
            m.start(false).await?;
            m.console
                .wait_for(&compiled, timeout)
                .await
                .map(Value::String)
        }
        MachineOp::GetConsoleLog {} => Ok(Value::String(m.console.text())),
        MachineOp::Screenshot { name } => screenshot(session, m, &name).await,
        MachineOp::CopyFromHost { source, target } => {
            copy_from_host(session, m, &source, &target).await
        }
        MachineOp::CopyFromMachine { source, target_dir } => {
            copy_from_machine(session, m, &source, target_dir.as_deref().unwrap_or("")).await
        }
        MachineOp::ForwardPort {
            host_port,
            guest_port,
        } => {
            m.monitor_command(&format!("hostfwd_add tcp::{host_port}-:{guest_port}"))
                .await?;
            Ok(Value::Null)
        }
        MachineOp::Block {} => set_vlan_link(m, "block", "off").await,
        MachineOp::Unblock {} => set_vlan_link(m, "unblock", "on").await,
        MachineOp::SendConsole { chars } => m.send_console(&chars).await.map(done),
        MachineOp::SendKey { key } => {
            m.monitor_command(&format!("sendkey {key}")).await?;
            Ok(Value::Null)
        }
        MachineOp::SendChars { chars } => {
            for c in chars.chars() {
                let key = key_for_char(c)
                    .ok_or_else(|| OpError::BadRequest(format!("send_chars: no key for `{c}`")))?;
                m.monitor_command(&format!("sendkey {key}")).await?;
            }
            Ok(Value::Null)
        }
        MachineOp::GetScreenText { variants } => {
            // nixpkgs refuses OCR unless the test sets `enableOCR`.
            if !session.ocr_allowed {
                return Err(OpError::Failure(crate::machine::OCR_NOT_ENABLED.into()));
            }
            let variants = variants.unwrap_or(false);
            let _section = m.section(if variants {
                "reading the screen by OCR (3 variants)"
            } else {
                "reading the screen by OCR"
            });
            m.screen_text(variants).await.map(|texts| json!(texts))
        }
        MachineOp::ShellInteract { address } => {
            // Waits on a person: bounded by the run's global timeout (a day at the -I prompt, which has none).
            let deadline = session
                .global_timeout
                .unwrap_or(Duration::from_secs(24 * 3600));
            m.shell_interact(&address, deadline).await.map(done)
        }
        MachineOp::NextQmpEvent { timeout } => {
            let timeout = seconds_or(timeout, DEFAULT_QMP_EVENT_TIMEOUT).max(0.0);
            match m.next_qmp_event(Duration::from_secs_f64(timeout)).await? {
                Some(event) => Ok(event),
                None => Err(OpError::Timeout(format!(
                    "{}: no QMP event within {timeout} seconds",
                    m.name
                ))),
            }
        }
    }
}

/// `wait_for_open_port` (`open`) and `wait_for_closed_port`.
async fn wait_for_port(m: &Machine, wait: PortWait, open: bool) -> OpResult<Value> {
    let addr = wait.addr.as_deref().unwrap_or("localhost");
    m.wait_for_port(
        wait.port,
        addr,
        open,
        seconds_or(wait.timeout, DEFAULT_TIMEOUT),
    )
    .await
    .map(done)
}

/// `block()`/`unblock()`: the link of the first vlan NIC, which QEMU names `virtio-net-pci.1` when the start script
/// puts the user-networking NIC first, as NixOS's do.
async fn set_vlan_link(m: &Machine, op: &str, state: &str) -> OpResult<Value> {
    let answer = m
        .monitor_command(&format!("set_link virtio-net-pci.1 {state}"))
        .await?;
    if answer.contains("not found") {
        return Err(OpError::Failure(format!(
            "{}: {op}: no vlan NIC `virtio-net-pci.1` (the start script must put the user-networking NIC first)",
            m.name
        )));
    }
    Ok(Value::Null)
}

async fn screenshot(session: &Session, m: &Machine, name: &str) -> OpResult<Value> {
    let mut path = if name.contains('/') {
        PathBuf::from(name)
    } else {
        session.out_dir.join(name)
    };
    if path.extension().is_none() {
        path.set_extension("png");
    }
    let _section = m.section(format!("making screenshot {}", path.display()));
    m.qmp("screendump", json!({"filename": path, "format": "png"}))
        .await?;
    Ok(Value::String(path.display().to_string()))
}

/// Through the shared dir (`/tmp/shared` in the guest), as nixpkgs does.
async fn copy_from_host(
    session: &Session,
    m: &Machine,
    source: &str,
    target: &str,
) -> OpResult<Value> {
    let _section = m.section(format!("copying {source} from the host to {target}"));
    let name = Path::new(source).file_name().ok_or_else(|| {
        OpError::BadRequest(format!("copy_from_host: `{source}` has no file name"))
    })?;
    let staged = session.shared_dir.join(name);
    let status = tokio::process::Command::new("cp")
        .args(["-r", "--"])
        .arg(source)
        .arg(&staged)
        .status()
        .await
        .map_err(|e| OpError::Failure(format!("copy_from_host: {e}")))?;
    if !status.success() {
        return Err(OpError::Failure(format!(
            "copy_from_host: cannot copy `{source}` on the host"
        )));
    }
    let guest_source = format!("/tmp/shared/{}", name.to_string_lossy());
    let parent = Path::new(target)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let command = format!(
        "mkdir -p {} && cp -r {} {}",
        shell_quote(if parent.is_empty() { "." } else { &parent }),
        shell_quote(&guest_source),
        shell_quote(target)
    );
    m.succeed(&[command], None).await?;
    let _ = std::fs::remove_dir_all(&staged).or_else(|_| std::fs::remove_file(&staged));
    Ok(Value::Null)
}

async fn copy_from_machine(
    session: &Session,
    m: &Machine,
    source: &str,
    target_dir: &str,
) -> OpResult<Value> {
    let _section = m.section(format!(
        "copying {source} from the machine to the output dir"
    ));
    let name = Path::new(source)
        .file_name()
        .ok_or_else(|| {
            OpError::BadRequest(format!("copy_from_machine: `{source}` has no file name"))
        })?
        .to_string_lossy()
        .into_owned();
    let staging = format!("/tmp/shared/.copy-{}", std::process::id());
    m.succeed(
        &[format!(
            "mkdir -p {s} && cp -r {} {s}/",
            shell_quote(source),
            s = shell_quote(&staging)
        )],
        None,
    )
    .await?;
    let host_staged = session
        .shared_dir
        .join(format!(".copy-{}", std::process::id()))
        .join(&name);
    let target = session.out_dir.join(target_dir);
    std::fs::create_dir_all(&target)
        .map_err(|e| OpError::Failure(format!("copy_from_machine: {e}")))?;
    std::fs::rename(&host_staged, target.join(&name)).map_err(|e| {
        OpError::Failure(format!("copy_from_machine: {}: {e}", host_staged.display()))
    })?;
    let _ = std::fs::remove_dir_all(host_staged.parent().unwrap_or(Path::new("/nonexistent")));
    Ok(Value::Null)
}

/// QEMU `sendkey` names for the characters of `send_chars`.
fn key_for_char(c: char) -> Option<String> {
    let named = match c {
        ' ' => "spc",
        '\n' => "ret",
        '\t' => "tab",
        '-' => "minus",
        '=' => "equal",
        '.' => "dot",
        ',' => "comma",
        '/' => "slash",
        ';' => "semicolon",
        '\'' => "apostrophe",
        '_' => "shift-minus",
        ':' => "shift-semicolon",
        '|' => "shift-backslash",
        '\\' => "backslash",
        '>' => "shift-dot",
        '<' => "shift-comma",
        _ => "",
    };
    if !named.is_empty() {
        return Some(named.to_owned());
    }
    if c.is_ascii_lowercase() || c.is_ascii_digit() {
        Some(c.to_string())
    } else if c.is_ascii_uppercase() {
        Some(format!("shift-{}", c.to_ascii_lowercase()))
    } else {
        None
    }
}
