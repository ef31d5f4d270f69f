//! The result cache key: a hash of what actually runs, and nothing else.
//!
//! In: each node's start script (a store path, whose hash is the hash of the VM derivation that built it, so a
//! change to a node's configuration changes it), the test script's text, vlans, node numbers, the global timeout and
//! the options that change how the test runs, and the Python of the test's `extraPythonPackages` when it has any.
//! Out on purpose: the test driver (Python or testrig itself), the `vm-test-run` derivation (it depends on the
//! driver package), any other Python interpreter, and `drv` paths (the
//! output path already carries the derivation's hash, and keeping `drv` out lets a driverConfiguration.json and a
//! plugin-made plan of the same test share results). A start script outside `/nix/store` has no such hash, so the
//! caller hashes its contents (`local_digest`).

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::plan::Plan;

/// Bumped whenever the key material changes shape, so old entries are never mistaken for new ones.
const KEY_VERSION: u32 = 1;
const STORE_DIR: &str = "/nix/store/";

#[derive(Serialize)]
struct KeyMaterial<'a> {
    key_version: u32,
    test_script_sha256: String,
    global_timeout: u64,
    enable_ssh_backdoor: bool,
    enable_ocr: bool,
    extra_driver_args: &'a [String],
    vlans: &'a [u32],
    vms: BTreeMap<&'a str, VmMaterial<'a>>,
    /// The Python of the test's `extraPythonPackages` (a store path, so it carries the packages' hash): what the
    /// script imports is the test's, unlike the driver's interpreter. Absent for other tests, whose keys stay
    /// as they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    test_python: Option<&'a str>,
}

#[derive(Serialize)]
struct VmMaterial<'a> {
    start_script: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_script_sha256: Option<String>,
    vlans: &'a [u32],
    node_number: Option<u32>,
}

/// Computes the key of a validated plan (32 characters of Nix's base32, like a store path hash).
///
/// `local_digest` is asked for the content hash of each start script outside `/nix/store`; it returns `None` when
/// the file cannot be read (the key then covers only the path, and running will report the missing file).
pub fn cache_key(
    plan: &Plan,
    test_script_text: &str,
    local_digest: &dyn Fn(&str) -> Option<String>,
) -> String {
    let vms = plan
        .vms
        .iter()
        .map(|(name, vm)| {
            let material = VmMaterial {
                start_script: &vm.start_script,
                start_script_sha256: if vm.start_script.starts_with(STORE_DIR) {
                    None
                } else {
                    local_digest(&vm.start_script)
                },
                vlans: vm.vlans.as_deref().unwrap_or(&[]),
                node_number: vm.node_number,
            };
            (name.as_str(), material)
        })
        .collect();
    let material = KeyMaterial {
        key_version: KEY_VERSION,
        test_script_sha256: sha256_hex(test_script_text.as_bytes()),
        global_timeout: plan.global_timeout,
        enable_ssh_backdoor: plan.enable_ssh_backdoor,
        enable_ocr: plan.enable_ocr,
        extra_driver_args: &plan.extra_driver_args,
        vlans: &plan.vlans,
        vms,
        test_python: plan.python_drv.as_ref().and(plan.python.as_deref()),
    };
    let bytes = serde_json::to_vec(&material).expect("key material serialises");
    let digest = Sha256::digest(&bytes);
    nix_base32::to_nix_base32(&digest[..20])
}

/// Lowercase hex SHA-256, for local start scripts and test scripts.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_plan;

    fn plan(extra: &str) -> Plan {
        let text = format!(
            r#"{{"test_script_text": "x", {extra} "vms": {{
                "a": {{"name": "a", "start_script": "/nix/store/aaaa-vm/bin/run-a-vm"}}}}}}"#
        );
        parse_plan(&text).unwrap().plan
    }

    fn key(plan: &Plan, script: &str) -> String {
        cache_key(plan, script, &|_| None)
    }

    #[test]
    fn the_python_of_extra_python_packages_is_keyed_and_another_interpreter_is_not() {
        let key = |fields: &str| {
            let text = format!(
                r#"{{"test_script_text": "x", {fields} "vms": {{"a": {{"name": "a", "start_script": "/nix/store/a-vm/bin/run-a-vm"}}}}}}"#
            );
            let plan = parse_plan(&text).unwrap().plan;
            cache_key(&plan, "x", &|_| None)
        };
        let plain = key("");
        assert_eq!(plain, key(r#""python": "/usr/bin/python3.12","#));
        let env = |hash: &str| {
            format!(
                r#""python": "/nix/store/{hash}-python3-env/bin/python3", "python_drv": "/nix/store/{hash}-python3-env.drv","#
            )
        };
        assert_ne!(plain, key(&env("aaaa")));
        assert_ne!(key(&env("aaaa")), key(&env("bbbb")));
    }

    #[test]
    fn is_stable_and_store_path_shaped() {
        let k = key(&plan(""), "start_all()");
        assert_eq!(k.len(), 32);
        assert_eq!(k, key(&plan(""), "start_all()"));
    }

    #[test]
    fn changes_with_what_runs_and_not_with_references() {
        let base = key(&plan(""), "start_all()");
        assert_ne!(base, key(&plan(""), "start_all() "));
        assert_ne!(base, key(&plan(r#""global_timeout": 10,"#), "start_all()"));
        assert_ne!(base, key(&plan(r#""enable_ocr": true,"#), "start_all()"));
        assert_eq!(
            base,
            key(
                &plan(
                    r#""test_drv": "/nix/store/x-vm-test-run-a.drv", "python": "/usr/bin/python3","#
                ),
                "start_all()"
            )
        );
    }

    #[test]
    fn local_start_scripts_are_keyed_by_content() {
        let text = r#"{"test_script_text": "x", "vms": {"a": {"name": "a", "start_script": "./run-a-vm"}}}"#;
        let p = parse_plan(text).unwrap().plan;
        let one = cache_key(&p, "x", &|_| Some("1".into()));
        let two = cache_key(&p, "x", &|_| Some("2".into()));
        assert_ne!(one, two);
    }
}
