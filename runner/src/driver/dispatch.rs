//! From a Python request (`op`, `machine`, `args`) to a machine operation and back to JSON.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::session::{ScriptResult, Session, SubtestRecord};
use crate::log::{self, Section};
use crate::machine::{shell_quote, Machine, OpError, OpResult};

/// nixpkgs' default for every wait.
const DEFAULT_TIMEOUT: f64 = 900.0;

#[derive(Debug, Deserialize)]
pub struct Request {
    pub id: u64,
    pub op: String,
    #[serde(default)]
    pub machine: Option<String>,
    #[serde(default)]
    pub args: Value,
}

struct Args<'a>(&'a Value);

impl Args<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }
    fn str(&self, name: &str) -> OpResult<&str> {
        self.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| OpError::BadRequest(format!("argument `{name}` must be a string")))
    }
    fn opt_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }
    fn opt_f64(&self, name: &str) -> OpResult<Option<f64>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| OpError::BadRequest(format!("argument `{name}` must be a number"))),
        }
    }
    fn f64_or(&self, name: &str, default: f64) -> OpResult<f64> {
        Ok(self.opt_f64(name)?.unwrap_or(default))
    }
    fn bool_or(&self, name: &str, default: bool) -> bool {
        self.get(name).and_then(Value::as_bool).unwrap_or(default)
    }
    fn port(&self, name: &str) -> OpResult<u16> {
        self.get(name)
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| OpError::BadRequest(format!("argument `{name}` must be a port number")))
    }
    fn strings(&self, name: &str) -> OpResult<Vec<String>> {
        self.get(name)
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_owned)).collect())
            .ok_or_else(|| {
                OpError::BadRequest(format!("argument `{name}` must be a list of strings"))
            })
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub async fn dispatch(session: &Session, request: &Request) -> OpResult<Value> {
    let args = Args(&request.args);
    match &request.machine {
        None => global_op(session, &request.op, &args).await,
        Some(name) => {
            let machine = session.machine(name).ok_or_else(|| {
                OpError::BadRequest(format!("no machine named `{name}` in this test"))
            })?;
            machine_op(session, machine, &request.op, &args).await
        }
    }
}

async fn global_op(session: &Session, op: &str, args: &Args<'_>) -> OpResult<Value> {
    match op {
        "start_all" => {
            let _section = Section::begin(None, "starting all VMs");
            let starts = session.machines.values().map(|m| m.start(false));
            for result in futures::future::join_all(starts).await {
                result?;
            }
            Ok(Value::Null)
        }
        "join_all" => {
            let _section = Section::begin(None, "waiting for all VMs to finish");
            for machine in session.machines.values() {
                machine
                    .wait_for_shutdown(Duration::from_secs(24 * 3600))
                    .await?;
            }
            Ok(Value::Null)
        }
        "log" => {
            log::line(None, args.str("message")?);
            Ok(Value::Null)
        }
        "nested_begin" => {
            let section = Section::begin(args.opt_str("machine"), args.str("message")?);
            session.open_sections.lock().unwrap().push(section);
            Ok(Value::Null)
        }
        "nested_end" => {
            session.open_sections.lock().unwrap().pop();
            Ok(Value::Null)
        }
        "subtest_begin" => {
            let name = args.str("name")?.to_owned();
            let section = Section::begin(None, format!("subtest: {name}"));
            session
                .open_subtests
                .lock()
                .unwrap()
                .push((name, Instant::now(), section));
            Ok(Value::Null)
        }
        "subtest_end" => {
            let name = args.str("name")?;
            let mut open = session.open_subtests.lock().unwrap();
            let position = open
                .iter()
                .rposition(|(n, _, _)| n == name)
                .ok_or_else(|| OpError::BadRequest(format!("subtest `{name}` was not begun")))?;
            let (name, started, section) = open.remove(position);
            drop(section);
            let failure = (!args.bool_or("ok", true))
                .then(|| args.opt_str("message").unwrap_or("failed").to_owned());
            session.subtests.lock().unwrap().push(SubtestRecord {
                name,
                duration: started.elapsed(),
                failure,
            });
            Ok(Value::Null)
        }
        "debug_prompt" => {
            session
                .debugging
                .store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::warn!(
                "the test script failed; a debugging prompt is open with its machines still running (the global \
                 timeout is stopped; Ctrl-D ends the run)"
            );
            Ok(Value::Null)
        }
        "result" => {
            *session.result.lock().unwrap() = Some(ScriptResult {
                ok: args.bool_or("ok", false),
                message: args.opt_str("message").unwrap_or_default().to_owned(),
                traceback: args.opt_str("traceback").unwrap_or_default().to_owned(),
            });
            Ok(Value::Null)
        }
        other => Err(OpError::BadRequest(format!("unknown operation `{other}`"))),
    }
}

async fn machine_op(session: &Session, m: &Machine, op: &str, args: &Args<'_>) -> OpResult<Value> {
    let output = |bytes: Vec<u8>| json!({"output_b64": b64(&bytes)});
    match op {
        "start" => m
            .start(args.bool_or("allow_reboot", false))
            .await
            .map(|_| Value::Null),
        "shutdown" => m.shutdown().await.map(|_| Value::Null),
        "crash" => m.crash().await.map(|_| Value::Null),
        "is_up" => Ok(Value::Bool(m.is_up().await)),
        "wait_for_shutdown" => m
            .wait_for_shutdown(Duration::from_secs_f64(
                args.f64_or("timeout", DEFAULT_TIMEOUT)?,
            ))
            .await
            .map(|_| Value::Null),
        "execute" => {
            let command = args.str("command")?;
            let timeout = args.opt_f64("timeout")?;
            let _section = m.section(format!("running command: {command}"));
            // nixpkgs' statuses for what was not waited for: -2 without output, -1 without status.
            if !args.bool_or("check_output", true) {
                m.execute_partially(command, timeout, false).await?;
                return Ok(json!({"status": -2, "output_b64": ""}));
            }
            if !args.bool_or("check_return", true) {
                let out = m.execute_partially(command, timeout, true).await?;
                return Ok(json!({"status": -1, "output_b64": b64(&out)}));
            }
            let out = m.execute(command, timeout).await?;
            Ok(json!({"status": out.status, "output_b64": b64(&out.stdout)}))
        }
        "reboot" => m.reboot().await.map(|_| Value::Null),
        "release" => {
            m.kill().await;
            Ok(Value::Null)
        }
        "succeed" => m
            .succeed(&args.strings("commands")?, args.opt_f64("timeout")?)
            .await
            .map(output),
        "fail" => m
            .fail(&args.strings("commands")?, args.opt_f64("timeout")?)
            .await
            .map(output),
        "wait_until_succeeds" => m
            .wait_until_succeeds(
                args.str("command")?,
                args.f64_or("timeout", DEFAULT_TIMEOUT)?,
            )
            .await
            .map(output),
        "wait_until_fails" => m
            .wait_until_fails(
                args.str("command")?,
                args.f64_or("timeout", DEFAULT_TIMEOUT)?,
            )
            .await
            .map(output),
        "wait_for_unit" => m
            .wait_for_unit(
                args.str("unit")?,
                args.opt_str("user"),
                args.f64_or("timeout", DEFAULT_TIMEOUT)?,
            )
            .await
            .map(|_| Value::Null),
        "get_unit_info" => m
            .get_unit_info(args.str("unit")?, args.opt_str("user"))
            .await
            .map(|info| json!(info)),
        "get_unit_property" => m
            .get_unit_property(
                args.str("unit")?,
                args.str("property")?,
                args.opt_str("user"),
            )
            .await
            .map(Value::String),
        "systemctl" => {
            let (status, out) = m.systemctl(args.str("q")?, args.opt_str("user")).await?;
            Ok(json!({"status": status, "output_b64": b64(&out)}))
        }
        "require_unit_state" => m
            .require_unit_state(args.str("unit")?, args.opt_str("state").unwrap_or("active"))
            .await
            .map(|_| Value::Null),
        "wait_for_file" => m
            .wait_for_file(args.str("path")?, args.f64_or("timeout", DEFAULT_TIMEOUT)?)
            .await
            .map(|_| Value::Null),
        "wait_for_open_port" | "wait_for_closed_port" => m
            .wait_for_port(
                args.port("port")?,
                args.opt_str("addr").unwrap_or("localhost"),
                op == "wait_for_open_port",
                args.f64_or("timeout", DEFAULT_TIMEOUT)?,
            )
            .await
            .map(|_| Value::Null),
        "wait_for_open_unix_socket" => m
            .wait_for_open_unix_socket(
                args.str("path")?,
                args.bool_or("is_datagram", false),
                args.f64_or("timeout", DEFAULT_TIMEOUT)?,
            )
            .await
            .map(|_| Value::Null),
        "sleep" => m
            .sleep(args.f64_or("secs", 0.0)?)
            .await
            .map(|_| Value::Null),
        "send_monitor_command" => m
            .monitor_command(args.str("command")?)
            .await
            .map(Value::String),
        "wait_for_console_text" => {
            let pattern = args.str("regex")?;
            let regex = regex::Regex::new(pattern)
                .map_err(|e| OpError::BadRequest(format!("bad console regex `{pattern}`: {e}")))?;
            let timeout = args.opt_f64("timeout")?.map(Duration::from_secs_f64);
            let _section = m.section(format!("waiting for `{pattern}` to appear on the console"));
            m.start(false).await?;
            m.console.wait_for(&regex, timeout).await.map(Value::String)
        }
        "get_console_log" => Ok(Value::String(m.console.text())),
        "screenshot" => screenshot(session, m, args.str("name")?).await,
        "copy_from_host" => {
            copy_from_host(session, m, args.str("source")?, args.str("target")?).await
        }
        "copy_from_machine" => {
            copy_from_machine(
                session,
                m,
                args.str("source")?,
                args.opt_str("target_dir").unwrap_or(""),
            )
            .await
        }
        "forward_port" => {
            let (host, guest) = (args.port("host_port")?, args.port("guest_port")?);
            m.monitor_command(&format!("hostfwd_add tcp::{host}-:{guest}"))
                .await?;
            Ok(Value::Null)
        }
        "block" | "unblock" => {
            let state = if op == "block" { "off" } else { "on" };
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
        "get_screen_text" => {
            // nixpkgs refuses OCR unless the test sets `enableOCR`.
            if !session.ocr_allowed {
                return Err(OpError::Failure(crate::machine::OCR_NOT_ENABLED.into()));
            }
            let variants = args.bool_or("variants", false);
            let _section = m.section(if variants {
                "reading the screen by OCR (3 variants)"
            } else {
                "reading the screen by OCR"
            });
            m.screen_text(variants).await.map(|texts| json!(texts))
        }
        "send_console" => m
            .send_console(args.str("chars")?)
            .await
            .map(|_| Value::Null),
        "send_key" => {
            m.monitor_command(&format!("sendkey {}", args.str("key")?))
                .await?;
            Ok(Value::Null)
        }
        "send_chars" => {
            for c in args.str("chars")?.chars() {
                let key = key_for_char(c)
                    .ok_or_else(|| OpError::BadRequest(format!("send_chars: no key for `{c}`")))?;
                m.monitor_command(&format!("sendkey {key}")).await?;
            }
            Ok(Value::Null)
        }
        other => Err(OpError::BadRequest(format!(
            "`{other}` is not supported by testrig yet"
        ))),
    }
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
