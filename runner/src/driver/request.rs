//! The requests of the Python bridge (testrig-rpc/1, python/PROTOCOL.md) as types: an op the runner does not know,
//! or an argument of the wrong type, is a decoding error that names it, answered as `bad_request` to the request's
//! own id; the dispatcher then matches on variants, never on strings.

use serde::Deserialize;
use serde_json::Value;

use crate::machine::OpError;

/// One line from Python: the envelope, decoded first so that a bad op can still be answered to its id.
#[derive(Debug, Deserialize)]
pub struct Envelope {
    pub id: u64,
    pub op: String,
    #[serde(default)]
    pub machine: Option<String>,
    #[serde(default)]
    pub args: Value,
}

/// A request, addressed to the run or to one machine.
#[derive(Debug)]
pub enum Request {
    Global(GlobalOp),
    Machine { name: String, op: MachineOp },
}

impl Envelope {
    /// The typed request; `bad_request` naming the op or the argument that does not fit.
    pub fn request(&self) -> Result<Request, OpError> {
        let args = match &self.args {
            Value::Null => Value::Object(Default::default()),
            args => args.clone(),
        };
        let tagged = serde_json::json!({"op": self.op, "args": args});
        let bad = |e: serde_json::Error| OpError::BadRequest(format!("op `{}`: {e}", self.op));
        match &self.machine {
            None => serde_json::from_value(tagged)
                .map(Request::Global)
                .map_err(bad),
            Some(name) => serde_json::from_value(tagged)
                .map(|op| Request::Machine {
                    name: name.clone(),
                    op,
                })
                .map_err(bad),
        }
    }
}

/// Ops of the run as a whole (no `machine`).
#[derive(Debug, Deserialize)]
#[serde(
    tag = "op",
    content = "args",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum GlobalOp {
    StartAll {},
    JoinAll {},
    Log {
        message: String,
    },
    NestedBegin {
        message: String,
        #[serde(default)]
        machine: Option<String>,
    },
    NestedEnd {},
    SubtestBegin {
        name: String,
    },
    SubtestEnd {
        name: String,
        #[serde(default)]
        ok: Option<bool>,
        #[serde(default)]
        message: Option<String>,
    },
    DebugPrompt {},
    CreateMachine {
        start_command: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        keep_machine_state: Option<bool>,
    },
    Result {
        #[serde(default)]
        ok: Option<bool>,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        traceback: Option<String>,
    },
}

/// A timeout in seconds; null or absent means the op's default.
pub type Seconds = Option<f64>;

/// The arguments of `wait_for_open_port` and `wait_for_closed_port`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortWait {
    pub port: u16,
    #[serde(default)]
    pub addr: Option<String>,
    #[serde(default)]
    pub timeout: Seconds,
}

/// Ops of one machine (`machine` names it).
#[derive(Debug, Deserialize)]
#[serde(
    tag = "op",
    content = "args",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum MachineOp {
    Start {
        #[serde(default)]
        allow_reboot: Option<bool>,
    },
    Shutdown {},
    Crash {},
    Reboot {},
    Release {},
    IsUp {},
    Status {},
    WaitForShutdown {
        #[serde(default)]
        timeout: Seconds,
    },
    Execute {
        command: String,
        #[serde(default)]
        timeout: Seconds,
        #[serde(default)]
        check_output: Option<bool>,
        #[serde(default)]
        check_return: Option<bool>,
    },
    Succeed {
        commands: Vec<String>,
        #[serde(default)]
        timeout: Seconds,
    },
    Fail {
        commands: Vec<String>,
        #[serde(default)]
        timeout: Seconds,
    },
    WaitUntilSucceeds {
        command: String,
        #[serde(default)]
        timeout: Seconds,
    },
    WaitUntilFails {
        command: String,
        #[serde(default)]
        timeout: Seconds,
    },
    WaitForUnit {
        unit: String,
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        timeout: Seconds,
    },
    GetUnitInfo {
        unit: String,
        #[serde(default)]
        user: Option<String>,
    },
    GetUnitProperty {
        unit: String,
        property: String,
        #[serde(default)]
        user: Option<String>,
    },
    Systemctl {
        q: String,
        #[serde(default)]
        user: Option<String>,
    },
    RequireUnitState {
        unit: String,
        #[serde(default)]
        state: Option<String>,
    },
    WaitForFile {
        path: String,
        #[serde(default)]
        timeout: Seconds,
    },
    WaitForOpenPort(PortWait),
    WaitForClosedPort(PortWait),
    WaitForOpenUnixSocket {
        path: String,
        #[serde(default)]
        is_datagram: Option<bool>,
        #[serde(default)]
        timeout: Seconds,
    },
    Sleep {
        #[serde(default)]
        secs: Seconds,
    },
    SendMonitorCommand {
        command: String,
    },
    WaitForConsoleText {
        regex: String,
        #[serde(default)]
        timeout: Seconds,
    },
    GetConsoleLog {},
    Screenshot {
        name: String,
    },
    CopyFromHost {
        source: String,
        target: String,
    },
    CopyFromMachine {
        source: String,
        #[serde(default)]
        target_dir: Option<String>,
    },
    ForwardPort {
        host_port: u16,
        guest_port: u16,
    },
    Block {},
    Unblock {},
    SendConsole {
        chars: String,
    },
    SendKey {
        key: String,
    },
    SendChars {
        chars: String,
    },
    ShellInteract {
        address: String,
    },
    GetScreenText {
        #[serde(default)]
        variants: Option<bool>,
    },
    NextQmpEvent {
        #[serde(default)]
        timeout: Seconds,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn envelope(line: &str) -> Envelope {
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn decodes_typed_arguments_and_defaults() {
        let request = envelope(
            r#"{"id": 3, "op": "execute", "machine": "server", "args": {"command": "true", "timeout": null}}"#,
        )
        .request()
        .unwrap();
        match request {
            Request::Machine {
                name,
                op:
                    MachineOp::Execute {
                        command,
                        timeout,
                        check_output,
                        check_return,
                    },
            } => {
                assert_eq!(
                    (name.as_str(), command.as_str(), timeout),
                    ("server", "true", None)
                );
                assert_eq!((check_output, check_return), (None, None));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            envelope(r#"{"id": 1, "op": "start_all"}"#).request(),
            Ok(Request::Global(GlobalOp::StartAll {}))
        ));
    }

    #[test]
    fn an_unknown_op_or_a_wrong_argument_is_named() {
        let err = |line: &str| envelope(line).request().unwrap_err().to_string();
        let unknown = err(r#"{"id": 1, "op": "fly", "machine": "m", "args": {}}"#);
        assert!(
            unknown.contains("op `fly`: unknown variant `fly`"),
            "{unknown}"
        );
        let wrong =
            err(r#"{"id": 1, "op": "wait_for_open_port", "machine": "m", "args": {"port": "x"}}"#);
        assert!(
            wrong.contains("op `wait_for_open_port`") && wrong.contains("invalid type"),
            "{wrong}"
        );
        let too_big = err(
            r#"{"id": 1, "op": "forward_port", "machine": "m", "args": {"host_port": 70000, "guest_port": 1}}"#,
        );
        assert!(too_big.contains("70000"), "{too_big}");
        let missing = err(r#"{"id": 1, "op": "succeed", "machine": "m", "args": {}}"#);
        assert!(missing.contains("missing field `commands`"), "{missing}");
        let extra = err(r#"{"id": 1, "op": "is_up", "machine": "m", "args": {"x": 1}}"#);
        assert!(extra.contains("unknown field `x`"), "{extra}");
        // A machine op without a machine is not a global op.
        let global = err(r#"{"id": 1, "op": "execute", "args": {"command": "true"}}"#);
        assert!(global.contains("unknown variant `execute`"), "{global}");
    }

    /// The names serde lists when it meets an unknown variant: every op the enum has.
    fn ops_of<T: serde::de::DeserializeOwned + std::fmt::Debug>() -> BTreeSet<String> {
        let message = serde_json::from_value::<T>(serde_json::json!({"op": "?", "args": {}}))
            .unwrap_err()
            .to_string();
        let list = message
            .split("expected one of ")
            .nth(1)
            .unwrap_or_else(|| panic!("{message}"));
        list.split(", ")
            .map(|name| {
                name.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .to_owned()
            })
            .collect()
    }

    /// The ops PROTOCOL.md documents in a table: first cells of the form `` `name` `` (or `` `a` / `b` ``) in the
    /// section of that heading.
    fn documented_ops(section: &str) -> BTreeSet<String> {
        let doc = include_str!("../../python/PROTOCOL.md");
        let start = doc
            .find(section)
            .unwrap_or_else(|| panic!("PROTOCOL.md has no `{section}`"));
        let mut ops = BTreeSet::new();
        let mut in_table = false;
        for line in doc[start..].lines().skip(1) {
            if let Some(row) = line.strip_prefix("| `") {
                in_table = true;
                let cell = row.split(" |").next().unwrap_or("");
                for name in cell.split(" / ") {
                    ops.insert(name.trim_matches('`').to_owned());
                }
            } else if in_table && !line.starts_with('|') {
                break;
            }
        }
        ops
    }

    #[test]
    fn protocol_md_documents_exactly_the_ops_the_runner_takes() {
        assert_eq!(
            documented_ops("Global (no `machine`):"),
            ops_of::<GlobalOp>()
        );
        assert_eq!(
            documented_ops("Machine (`machine` = machine name"),
            ops_of::<MachineOp>()
        );
    }
}
