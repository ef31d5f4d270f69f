//! What a run owns while its test script runs: the machines by name, the output dir and the subtest records.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::machine::{Machine, OpError, OpResult, Timeouts, VmConfig};
use crate::support::log::Section;

/// One `subtest(...)` of the script: a JUnit testcase.
#[derive(Debug, Clone)]
pub struct SubtestRecord {
    pub name: String,
    pub duration: Duration,
    pub failure: Option<String>,
}

/// The script's final word (`result` op).
#[derive(Debug, Clone, Default)]
pub struct ScriptResult {
    pub ok: bool,
    pub message: String,
    pub traceback: String,
}

/// What a machine the script makes (`create_machine`) shares with the plan's: the run dir its state dir goes in,
/// the vlans' switches, the deadlines.
#[derive(Debug, Clone)]
pub struct MachineSetup {
    pub run_dir: PathBuf,
    pub vde_sockets: Vec<(u32, PathBuf)>,
    pub timeouts: Timeouts,
}

pub struct Session {
    /// The plan's machines: the ones `start_all` and `join_all` mean, fixed for the run.
    pub machines: BTreeMap<String, Arc<Machine>>,
    /// Machines the script made with `create_machine`: addressed by name and torn down like the plan's, but not
    /// in `machines`, as in nixpkgs (its `create_machine` does not add them to `driver.machines`). Locked only to
    /// look up or insert, never across an await.
    created: Mutex<BTreeMap<String, Arc<Machine>>>,
    /// `None` when `create_machine` is not available (a session without a run dir, in unit tests).
    machine_setup: Option<MachineSetup>,
    /// The run's global timeout, `None` for `-I`: the bound of what waits on a person (`shell_interact`).
    pub global_timeout: Option<Duration>,
    pub out_dir: PathBuf,
    pub shared_dir: PathBuf,
    pub subtests: Mutex<Vec<SubtestRecord>>,
    /// Open subtests by name, with their start time and log section.
    pub open_subtests: Mutex<Vec<(String, Instant, Section)>>,
    /// Log sections the script opened with `log.nested(...)`.
    pub open_sections: Mutex<Vec<Section>>,
    pub result: Mutex<Option<ScriptResult>>,
    /// Set when `--debug-on-failure` opened its prompt: the global timeout no longer applies.
    pub debugging: AtomicBool,
    /// Whether the test may use OCR (`get_screen_text`, `wait_for_text`): see
    /// [`crate::plan::load::LoadedPlan::ocr_allowed`].
    pub ocr_allowed: bool,
}

impl Session {
    pub fn new(
        machines: BTreeMap<String, Arc<Machine>>,
        out_dir: PathBuf,
        shared_dir: PathBuf,
    ) -> Self {
        Session {
            machines,
            created: Mutex::default(),
            machine_setup: None,
            global_timeout: None,
            out_dir,
            shared_dir,
            subtests: Mutex::default(),
            open_subtests: Mutex::default(),
            open_sections: Mutex::default(),
            result: Mutex::default(),
            debugging: AtomicBool::new(false),
            ocr_allowed: false,
        }
    }

    /// Lets the script make machines (`create_machine`) set up like the plan's, and bounds waits on a person.
    pub fn with_machine_setup(
        mut self,
        setup: MachineSetup,
        global_timeout: Option<Duration>,
    ) -> Self {
        self.machine_setup = Some(setup);
        self.global_timeout = global_timeout;
        self
    }

    pub fn with_ocr(mut self, allowed: bool) -> Self {
        self.ocr_allowed = allowed;
        self
    }

    /// A machine of the plan or one the script made.
    pub fn machine(&self, name: &str) -> Option<Arc<Machine>> {
        if let Some(machine) = self.machines.get(name) {
            return Some(machine.clone());
        }
        self.created.lock().unwrap().get(name).cloned()
    }

    /// Every machine of the run, the plan's and the script's, for teardown.
    pub fn all_machines(&self) -> Vec<Arc<Machine>> {
        let mut all: Vec<_> = self.machines.values().cloned().collect();
        all.extend(self.created.lock().unwrap().values().cloned());
        all
    }

    /// `create_machine`: a machine started from `start_command` (a shell command line, as nixpkgs runs it), with
    /// a state dir of its own in the run dir (emptied unless `keep_state`). Not started here: like nixpkgs', the
    /// machine starts on `start()` or its first command.
    pub fn create_machine(
        &self,
        start_command: &str,
        name: Option<&str>,
        keep_state: bool,
    ) -> OpResult<Arc<Machine>> {
        let setup = self.machine_setup.as_ref().ok_or_else(|| {
            OpError::BadRequest("create_machine is not available in this session".into())
        })?;
        if start_command.trim().is_empty() {
            return Err(OpError::BadRequest(
                "create_machine: the start command is empty".into(),
            ));
        }
        let name = match name {
            Some(name) => name.to_owned(),
            None => machine_name_from_command(start_command),
        };
        check_machine_name(&name)?;
        let mut created = self.created.lock().unwrap();
        if self.machines.contains_key(&name) || created.contains_key(&name) {
            return Err(OpError::BadRequest(format!(
                "create_machine: there is a machine named `{name}` already; pass another name=..."
            )));
        }
        let config = VmConfig {
            name: name.clone(),
            start_script: PathBuf::from("/bin/sh"),
            start_command: Some(start_command.to_owned()),
            state_dir: setup.run_dir.join(format!("vm-state-{name}")),
            shared_dir: self.shared_dir.clone(),
            vde_sockets: setup.vde_sockets.clone(),
            keep_state,
        };
        let machine = Arc::new(Machine::new(config, setup.timeouts));
        created.insert(name, machine.clone());
        Ok(machine)
    }
}

/// nixpkgs' name for a machine made from a start command: what `run-(.+)-vm$` captures, searched in the whole
/// command line (so `/nix/store/...-run-x-vm/bin/run-x-vm` gives nixpkgs' own odd `x-vm/bin/run-x`, which
/// `check_machine_name` then refuses), else `machine`.
fn machine_name_from_command(command: &str) -> String {
    static PATTERN: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let pattern = PATTERN.get_or_init(|| regex::Regex::new("run-(.+)-vm$").expect("valid"));
    pattern
        .captures(command)
        .map(|c| c[1].to_owned())
        .unwrap_or_else(|| "machine".to_owned())
}

/// A machine name becomes a state dir name and a log prefix: no path separators, nothing empty or hidden.
fn check_machine_name(name: &str) -> OpResult<()> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\0', '\n']) {
        return Err(OpError::BadRequest(format!(
            "create_machine: `{name}` cannot be a machine name (no `/`, newline or leading `.`); pass name=..."
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(run_dir: &std::path::Path, plan: &[&str]) -> Session {
        let setup = MachineSetup {
            run_dir: run_dir.to_owned(),
            vde_sockets: vec![(1, run_dir.join("vde1"))],
            timeouts: Timeouts::default(),
        };
        let machines = plan
            .iter()
            .map(|name| {
                let config = VmConfig {
                    name: (*name).to_owned(),
                    start_script: run_dir.join(format!("run-{name}-vm")),
                    start_command: None,
                    state_dir: run_dir.join(format!("vm-state-{name}")),
                    shared_dir: run_dir.join("shared-xchg"),
                    vde_sockets: vec![],
                    keep_state: false,
                };
                (
                    (*name).to_owned(),
                    Arc::new(Machine::new(config, Timeouts::default())),
                )
            })
            .collect();
        Session::new(machines, run_dir.join("out"), run_dir.join("shared-xchg"))
            .with_machine_setup(setup, Some(Duration::from_secs(60)))
    }

    #[test]
    fn names_come_from_the_command_as_in_nixpkgs() {
        assert_eq!(
            machine_name_from_command("/tmp/x/bin/run-installed-vm"),
            "installed"
        );
        assert_eq!(
            machine_name_from_command("QEMU_OPTS=-m 512 ./run-a-b-vm"),
            "a-b"
        );
        assert_eq!(machine_name_from_command("qemu-kvm -m 512"), "machine");
        assert_eq!(
            machine_name_from_command("/nix/store/abc-run-x-vm/bin/run-x-vm"),
            "x-vm/bin/run-x"
        );
    }

    #[test]
    fn created_machines_are_found_torn_down_and_not_in_the_plans_machines() {
        let dir = tempfile::tempdir().unwrap();
        let session = session(dir.path(), &["server"]);
        let made = session
            .create_machine("/opt/vms/bin/run-target-vm", None, false)
            .unwrap();
        assert_eq!(made.name, "target");
        assert!(Arc::ptr_eq(&session.machine("target").unwrap(), &made));
        assert!(session.machine("server").is_some());
        assert_eq!(
            session.machines.len(),
            1,
            "start_all and join_all do not see it"
        );
        let mut all: Vec<_> = session
            .all_machines()
            .iter()
            .map(|m| m.name.clone())
            .collect();
        all.sort();
        assert_eq!(all, ["server", "target"]);
        let named = session
            .create_machine("/opt/vms/bin/run-target-vm", Some("second"), true)
            .unwrap();
        assert_eq!(named.name, "second");
    }

    #[test]
    fn a_second_machine_of_a_name_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let session = session(dir.path(), &["server"]);
        session.create_machine("run-x-vm", None, false).unwrap();
        for (command, name) in [
            ("run-x-vm", None),
            ("anything", Some("x")),
            ("run-server-vm", None),
        ] {
            let err = session.create_machine(command, name, false).err().unwrap();
            assert!(
                err.to_string().contains("there is a machine named"),
                "{err}"
            );
        }
    }

    #[test]
    fn names_that_cannot_be_a_state_dir_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let session = session(dir.path(), &[]);
        for (command, name) in [
            ("/nix/store/abc-run-x-vm/bin/run-x-vm", None),
            ("run-x-vm", Some("")),
            ("run-x-vm", Some("..")),
            ("run-x-vm", Some("a/b")),
        ] {
            let err = session.create_machine(command, name, false).err().unwrap();
            assert!(
                err.to_string().contains("cannot be a machine name"),
                "{err}"
            );
        }
        let err = session.create_machine("  ", None, false).err().unwrap();
        assert!(err.to_string().contains("empty"), "{err}");
    }
}
