//! From what the user named (a plan file, nixpkgs' driverConfiguration.json, or the old driver's flags) to a plan
//! that can run: validated, with relative paths resolved, the test script read and every start script checked.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use testrig_bridge::{cache_key, parse_plan, sha256_hex, Plan};

use crate::nix::realise::Needs;
use thiserror::Error;

/// Input the runner cannot use. Always exit status 2, with a message that names what was wrong.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct BadInput(pub String);

fn bad(message: impl Into<String>) -> BadInput {
    BadInput(message.into())
}

/// A plan ready to run.
#[derive(Debug, Clone)]
pub struct LoadedPlan {
    pub plan: Plan,
    /// The test's name: the plan's `name`, else the file's.
    pub name: String,
    pub test_script_text: String,
    /// Where the script came from, for tracebacks.
    pub test_script_name: String,
    pub start_scripts: BTreeMap<String, PathBuf>,
    pub cache_key: String,
    pub warnings: Vec<String>,
}

/// Reads a plan or driverConfiguration.json; relative paths in it are relative to the file.
pub fn load_plan_file(
    path: &Path,
    test_script_override: Option<&Path>,
) -> Result<LoadedPlan, BadInput> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad(format!("cannot read plan {}: {e}", path.display())))?;
    let parsed =
        parse_plan(&text).map_err(|e| bad(format!("invalid plan {}: {e}", path.display())))?;
    // Start scripts run in their state dir, so relative paths must become absolute here.
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = std::path::absolute(parent)
        .map_err(|e| bad(format!("cannot resolve {}: {e}", path.display())))?;
    let base = base.as_path();
    let fallback_name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| s != "driverConfiguration" && s != "plan")
        .or_else(|| base.file_name().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "nixos-test".into());
    finish(
        parsed.plan,
        parsed.warnings,
        base,
        &fallback_name,
        test_script_override,
    )
}

/// The pre-26.05 driver's flags: `--start-scripts`, `--vlans`, `--global-timeout` and a test script path.
pub fn plan_from_flags(
    machines: &[(String, PathBuf)],
    vlans: &[u32],
    global_timeout: Option<u64>,
    test_script: &Path,
) -> Result<LoadedPlan, BadInput> {
    let mut vms = serde_json::Map::new();
    for (name, script) in machines {
        if vms.contains_key(name) {
            return Err(bad(format!("two start scripts are for machine `{name}`")));
        }
        vms.insert(
            name.clone(),
            serde_json::json!({"name": name, "start_script": script, "vlans": vlans}),
        );
    }
    let document = serde_json::json!({
        "vms": vms,
        "vlans": vlans,
        "global_timeout": global_timeout.unwrap_or(testrig_bridge::DEFAULT_GLOBAL_TIMEOUT),
        "test_script": test_script,
    });
    let parsed = parse_plan(&document.to_string())
        .map_err(|e| bad(format!("invalid driver arguments: {e}")))?;
    finish(
        parsed.plan,
        parsed.warnings,
        Path::new("."),
        "nixos-test",
        None,
    )
}

/// A plan that Nix evaluated (see `nix::eval`): already validated; its start scripts are store paths.
pub fn load_evaluated_plan(
    plan: Plan,
    fallback_name: &str,
    test_script_override: Option<&Path>,
) -> Result<LoadedPlan, BadInput> {
    finish(
        plan,
        Vec::new(),
        Path::new("."),
        fallback_name,
        test_script_override,
    )
}

/// The machines of the old driver's flags: `--start-scripts` (names from the scripts' file names, up to nixpkgs
/// 25.11) or `--vm-start-scripts` with or without `--vm-names` (2025 to early 2026; without names, each comes from
/// its script's `run-<name>-vm`, as nixpkgs' driver does).
pub fn machines_from_flags(
    start_scripts: &[PathBuf],
    vm_names: &[String],
    vm_start_scripts: &[PathBuf],
) -> Result<Vec<(String, PathBuf)>, BadInput> {
    if !vm_start_scripts.is_empty() || !vm_names.is_empty() {
        if !start_scripts.is_empty() {
            return Err(bad(
                "give --start-scripts or --vm-names with --vm-start-scripts, not both",
            ));
        }
        if vm_names.is_empty() {
            let machines = vm_start_scripts
                .iter()
                .map(|script| {
                    let name = strict_machine_name(script).ok_or_else(|| {
                        bad(format!(
                            "cannot name the machine of start script {}: without --vm-names, a start script must be \
                             named run-<name>-vm (as NixOS's are); give --vm-names",
                            script.display()
                        ))
                    })?;
                    Ok((name, script.clone()))
                })
                .collect::<Result<Vec<_>, BadInput>>()?;
            return unique_names(machines);
        }
        if vm_names.len() != vm_start_scripts.len() {
            return Err(bad(format!(
                "the number of vm names and vm start scripts must be the same: {} names ({}) and {} start scripts",
                vm_names.len(),
                vm_names.join(" "),
                vm_start_scripts.len()
            )));
        }
        return unique_names(
            vm_names
                .iter()
                .cloned()
                .zip(vm_start_scripts.iter().cloned())
                .collect(),
        );
    }
    unique_names(
        start_scripts
            .iter()
            .map(|script| (machine_name_from_start_script(script), script.clone()))
            .collect(),
    )
}

/// Two machines of one name would be one machine twice; nixpkgs' driver makes that mistake silently.
fn unique_names(machines: Vec<(String, PathBuf)>) -> Result<Vec<(String, PathBuf)>, BadInput> {
    let mut seen = std::collections::BTreeSet::new();
    for (name, script) in &machines {
        if !seen.insert(name) {
            return Err(bad(format!(
                "two machines are named `{name}` (the second from {}); give each start script its own name",
                script.display()
            )));
        }
    }
    Ok(machines)
}

/// nixpkgs' rule: `run-(.+)-vm$`, else `machine`.
fn machine_name_from_start_script(path: &Path) -> String {
    strict_machine_name(path).unwrap_or_else(|| "machine".to_owned())
}

/// The `<name>` of a start script named `run-<name>-vm`.
fn strict_machine_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_string_lossy().into_owned();
    file.strip_prefix("run-")
        .and_then(|rest| rest.strip_suffix("-vm"))
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
}

fn finish(
    mut plan: Plan,
    warnings: Vec<String>,
    base: &Path,
    fallback_name: &str,
    test_script_override: Option<&Path>,
) -> Result<LoadedPlan, BadInput> {
    if let Some(script) = test_script_override {
        plan.test_script = Some(script.display().to_string());
        plan.test_script_text = None;
    }
    let (test_script_text, test_script_name) = match (&plan.test_script_text, &plan.test_script) {
        (Some(text), _) => (text.clone(), "testScript".to_owned()),
        (None, Some(path)) => {
            let path = resolve(base, path);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                bad(format!(
                    "cannot read the test script {}: {e}",
                    path.display()
                ))
            })?;
            (text, path.display().to_string())
        }
        (None, None) => unreachable!("validation requires a test script"),
    };

    let mut start_scripts = BTreeMap::new();
    for (name, vm) in &plan.vms {
        start_scripts.insert(name.clone(), resolve(base, &vm.start_script));
    }

    // Only start scripts outside the store are asked for (a store path carries its derivation's hash), so the
    // common case reads no file here.
    let key = cache_key(&plan, &test_script_text, &|script| {
        let bytes = std::fs::read(resolve(base, script)).ok()?;
        Some(sha256_hex(&bytes))
    });

    Ok(LoadedPlan {
        name: plan
            .name
            .clone()
            .unwrap_or_else(|| fallback_name.to_owned()),
        plan,
        test_script_text,
        test_script_name,
        start_scripts,
        cache_key: key,
        warnings,
    })
}

impl LoadedPlan {
    /// What it needs from the store before it runs (see `nix::realise`).
    pub fn needs(&self) -> Needs<'_> {
        Needs {
            name: &self.name,
            plan: &self.plan,
            test_script_text: &self.test_script_text,
        }
    }

    /// Whether the test may use OCR. A testrig plan says so in `enable_ocr` (nixpkgs' `enableOCR`). nixpkgs' own
    /// inputs (a driverConfiguration.json, the old driver's flags) do not carry it: there `enableOCR` only puts
    /// tesseract on the driver's PATH, so OCR is allowed and fails if tesseract is missing, as in nixpkgs.
    pub fn ocr_allowed(&self) -> bool {
        self.plan.enable_ocr || self.plan.schema.is_none()
    }

    /// Every start script is an executable file. Checked when the test is about to run, not when it is loaded,
    /// so that a cached pass is answered even after its store paths were garbage-collected.
    pub fn check_start_scripts(&self) -> Result<(), BadInput> {
        self.start_scripts
            .iter()
            .try_for_each(|(machine, path)| check_executable(machine, path))
    }
}

fn resolve(base: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

fn check_executable(machine: &str, path: &Path) -> Result<(), BadInput> {
    let meta = std::fs::metadata(path).map_err(|e| {
        let hint = if path.starts_with("/nix/store") && e.kind() == std::io::ErrorKind::NotFound {
            " (not built yet? `nix-store --realise` its derivation, or let `testrig run` evaluate the test)"
        } else {
            ""
        };
        bad(format!("machine `{machine}`: start script {}: {e}{hint}", path.display()))
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(bad(format!(
            "machine `{machine}`: start script {} is not an executable file",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_names_from_start_scripts() {
        assert_eq!(
            machine_name_from_start_script(Path::new("/nix/store/x/bin/run-server-vm")),
            "server"
        );
        assert_eq!(
            machine_name_from_start_script(Path::new("/x/run-my-vm-vm")),
            "my-vm"
        );
        assert_eq!(
            machine_name_from_start_script(Path::new("/x/start")),
            "machine"
        );
        assert_eq!(strict_machine_name(Path::new("/x/start")), None);
        assert_eq!(strict_machine_name(Path::new("/x/run--vm")), None);
        assert_eq!(
            strict_machine_name(Path::new("/x/run-a-vm")).as_deref(),
            Some("a")
        );
    }

    #[test]
    fn vm_start_scripts_alone_name_their_machines_or_say_which_cannot() {
        let scripts = [
            PathBuf::from("/s/run-server-vm"),
            PathBuf::from("/s/run-client-vm"),
        ];
        let machines = machines_from_flags(&[], &[], &scripts).unwrap();
        assert_eq!(
            machines,
            vec![
                ("server".to_owned(), scripts[0].clone()),
                ("client".to_owned(), scripts[1].clone())
            ]
        );
        let err = machines_from_flags(&[], &[], &[PathBuf::from("/s/qemu.sh")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/s/qemu.sh") && err.contains("--vm-names"),
            "{err}"
        );
        let err = machines_from_flags(
            &[PathBuf::from("/a/run-x-vm"), PathBuf::from("/b/run-x-vm")],
            &[],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("two machines are named `x`"), "{err}");
    }

    #[test]
    fn ocr_is_allowed_by_enable_ocr_in_a_testrig_plan_and_always_for_nixpkgs_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let load = |doc: &str| {
            let plan = dir.path().join("plan.json");
            std::fs::write(&plan, doc).unwrap();
            load_plan_file(&plan, None).unwrap().ocr_allowed()
        };
        let vms = r#""vms": {"a": {"name": "a", "start_script": "run-a-vm"}}"#;
        let testrig = |extra: &str| {
            format!(r#"{{"schema": "testrig-plan/1", "test_script_text": "pass", {extra}{vms}}}"#)
        };
        assert!(!load(&testrig("")));
        assert!(!load(&testrig(r#""enable_ocr": false, "#)));
        assert!(load(&testrig(r#""enable_ocr": true, "#)));
        // nixpkgs' driverConfiguration.json has no such field, nor have the old driver's flags.
        assert!(load(&format!(r#"{{"test_script_text": "pass", {vms}}}"#)));
        let script = dir.path().join("test.py");
        std::fs::write(&script, "pass").unwrap();
        let flags =
            plan_from_flags(&[("a".into(), "run-a-vm".into())], &[1], None, &script).unwrap();
        assert!(flags.ocr_allowed());
    }

    #[test]
    fn names_the_missing_or_unusable_start_script() {
        let dir = tempfile::tempdir().unwrap();
        let plan = dir.path().join("plan.json");
        let write = |vms: &str| {
            std::fs::write(
                &plan,
                format!(r#"{{"test_script_text": "pass", "vms": {{{vms}}}}}"#),
            )
            .unwrap();
        };
        write(r#""a": {"name": "a", "start_script": "run-a-vm"}"#);
        let err = load_plan_file(&plan, None)
            .unwrap()
            .check_start_scripts()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("machine `a`: start script") && err.contains("No such file"),
            "{err}"
        );

        std::fs::write(dir.path().join("run-a-vm"), "#!/bin/sh\n").unwrap();
        let err = load_plan_file(&plan, None)
            .unwrap()
            .check_start_scripts()
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not an executable file"), "{err}");

        std::fs::set_permissions(
            dir.path().join("run-a-vm"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let loaded = load_plan_file(&plan, None).unwrap();
        loaded.check_start_scripts().unwrap();
        assert_eq!(loaded.start_scripts["a"], dir.path().join("run-a-vm"));

        // Local start scripts are keyed by content.
        std::fs::write(dir.path().join("run-a-vm"), "#!/bin/sh\n# changed\n").unwrap();
        assert_ne!(
            load_plan_file(&plan, None).unwrap().cache_key,
            loaded.cache_key
        );
    }
}
