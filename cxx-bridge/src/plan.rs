//! The plan's types. Field names are the wire names (snake_case, as in nixpkgs' driverConfiguration.json); maps are
//! `BTreeMap`s so that serialisation is deterministic; absent optional fields are left out, never written as null.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// The schema version this crate reads and writes.
pub const SCHEMA: &str = "testrig-plan/1";

/// nixpkgs' default for `globalTimeout`, in seconds.
pub const DEFAULT_GLOBAL_TIMEOUT: u64 = 3600;

/// A test plan. Invariants after [`crate::parse_plan`]: every `vms` key equals its `name`; machine names and
/// their Python identifiers are unique; every node has a `node_number` (1..=254, unique) and `vlans`; `vlans` is the
/// sorted union of the nodes' vlans; `test_script` or `test_script_text` is present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// `testrig-plan/1`; absent in nixpkgs' driverConfiguration.json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// The test's `name` (derivation `vm-test-run-<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The `vm-test-run-<name>` derivation, for reference and reports; not part of the cache key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_drv: Option<String>,
    /// Seconds for the whole test.
    #[serde(default = "default_global_timeout")]
    pub global_timeout: u64,
    #[serde(default)]
    pub enable_ssh_backdoor: bool,
    /// Path of the file holding the test script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_script: Option<String>,
    /// The test script itself; wins over `test_script` when both are present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_script_text: Option<String>,
    /// Derivation outputs the test script names (`DRV^OUTPUT`, from its string context), such as a package whose
    /// binary the script runs on the host: the test's derivation has them as inputs, so they are built before the
    /// test runs. Not part of the cache key: their output paths are in the script text, which is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test_script_inputs: Vec<String>,
    #[serde(default)]
    pub vlans: Vec<u32>,
    #[serde(deserialize_with = "unique_keys")]
    pub vms: BTreeMap<String, Vm>,
    /// systemd-nspawn machines (nixpkgs 26.05); read so that the error can name them, not run yet.
    #[serde(
        default,
        deserialize_with = "unique_keys",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub containers: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_driver_args: Vec<String>,
    #[serde(default)]
    pub enable_ocr: bool,
    /// nixpkgs' `qemu.forceAccel` (26.05): the test must not fall back to TCG; it is refused where KVM does not
    /// really work.
    #[serde(default, skip_serializing_if = "is_false")]
    pub force_accel: bool,
    /// The Python interpreter that runs the test script; `python3` from `PATH` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    /// The derivation that builds `python` (the test's `extraPythonPackages`, see nix/python-env.nix), built when
    /// `python` is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python_drv: Option<String>,
    /// The key computed when the plan was made (informational: the runner computes its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
}

/// One QEMU machine of a test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub name: String,
    /// `.../bin/run-<name>-vm`: the script that execs QEMU with the driver's arguments appended.
    pub start_script: String,
    /// The derivation that builds the start script (`system.build.vm`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlans: Option<Vec<u32>>,
    /// `virtualisation.test.nodeNumber`: the 1-based index of the node among all machine names, sorted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_number: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
}

fn is_false(b: &bool) -> bool {
    !b
}

fn default_global_timeout() -> u64 {
    DEFAULT_GLOBAL_TIMEOUT
}

/// The name under which a test script sees a machine: nixpkgs'
/// `re.sub(r"^[^A-Za-z_]|[^A-Za-z0-9_]", "_", name)`.
pub fn python_identifier(name: &str) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            let ok = c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit());
            if ok {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Deserialises a JSON object into a `BTreeMap`, rejecting a key that appears twice (serde_json would silently keep
/// the last one, and a duplicated machine name is a mistake worth naming).
fn unique_keys<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct UniqueKeys<V>(PhantomData<V>);

    impl<'de, V: Deserialize<'de>> Visitor<'de> for UniqueKeys<V> {
        type Value = BTreeMap<String, V>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object of machines keyed by name")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!(
                        "duplicate machine name `{key}`"
                    )));
                }
                let value = map.next_value()?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_map(UniqueKeys(PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_identifier_matches_nixpkgs() {
        assert_eq!(python_identifier("machine"), "machine");
        assert_eq!(python_identifier("web-server"), "web_server");
        assert_eq!(python_identifier("1st"), "_st");
        assert_eq!(python_identifier("node1.example"), "node1_example");
    }
}
