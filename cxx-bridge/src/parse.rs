//! Reading a plan document: schema check first (a future version may have another shape), then the typed parse,
//! then validation and normalisation.

use serde::Deserialize;

use crate::error::PlanError;
use crate::plan::{Plan, SCHEMA};
use crate::validate::validate_and_normalise;

/// A plan that passed validation, with what was worth a warning (fields this version does not know, in a
/// driverConfiguration.json from a newer nixpkgs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedPlan {
    pub plan: Plan,
    pub warnings: Vec<String>,
}

#[derive(Deserialize)]
struct SchemaProbe {
    #[serde(default)]
    schema: Option<serde_json::Value>,
}

/// Parses, validates and normalises a plan document (a `testrig-plan/1` plan or nixpkgs' driverConfiguration.json).
///
/// An unknown field is an error in a `testrig-plan/1` document (it is most likely a typo) and a warning in a
/// driverConfiguration.json (nixpkgs may add fields before testrig knows them).
pub fn parse_plan(text: &str) -> Result<ParsedPlan, PlanError> {
    let probe: SchemaProbe =
        serde_json::from_str(text).map_err(|e| PlanError::Syntax(e.to_string()))?;
    let strict = match probe.schema {
        None => false,
        Some(serde_json::Value::String(s)) if s == SCHEMA => true,
        Some(serde_json::Value::String(s)) => return Err(PlanError::UnsupportedSchema(s)),
        Some(other) => {
            return Err(PlanError::field(
                "schema",
                format!("must be the string \"{SCHEMA}\", found {other}"),
            ))
        }
    };

    let mut unknown = Vec::new();
    let mut de = serde_json::Deserializer::from_str(text);
    let plan: Plan = serde_ignored::deserialize(&mut de, |path| unknown.push(path.to_string()))
        .map_err(|e| PlanError::Syntax(e.to_string()))?;
    de.end().map_err(|e| PlanError::Syntax(e.to_string()))?;

    if strict {
        if let Some(field) = unknown.first() {
            return Err(PlanError::field(
                field.clone(),
                format!("is not a field of {SCHEMA}"),
            ));
        }
    }
    let warnings = unknown
        .into_iter()
        .map(|f| format!("ignoring unknown field `{f}`"))
        .collect();
    Ok(ParsedPlan {
        plan: validate_and_normalise(plan)?,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRIVER_CONFIGURATION: &str = r#"{
      "vms": { "machine": { "name": "machine", "start_script": "/nix/store/aaaa-nixos-vm/bin/run-machine-vm" } },
      "containers": {},
      "vlans": [1],
      "global_timeout": 3600,
      "enable_ssh_backdoor": false,
      "test_script": "/nix/store/bbbb-test-script"
    }"#;

    fn err(text: &str) -> String {
        parse_plan(text).unwrap_err().to_string()
    }

    #[test]
    fn reads_driver_configuration_as_it_is() {
        let parsed = parse_plan(DRIVER_CONFIGURATION).unwrap();
        let vm = &parsed.plan.vms["machine"];
        assert_eq!(vm.node_number, Some(1));
        assert_eq!(vm.vlans.as_deref(), Some(&[1][..]));
        assert_eq!(parsed.plan.schema, None);
        assert!(parsed.warnings.is_empty());
    }

    #[test]
    fn unknown_fields_warn_in_driver_configuration_and_fail_in_plans() {
        let with_extra = DRIVER_CONFIGURATION.replacen('{', r#"{"log_level": "info","#, 1);
        let parsed = parse_plan(&with_extra).unwrap();
        assert_eq!(parsed.warnings, ["ignoring unknown field `log_level`"]);

        let plan = with_extra.replacen('{', r#"{"schema": "testrig-plan/1","#, 1);
        assert_eq!(err(&plan), "`log_level` is not a field of testrig-plan/1");
    }

    #[test]
    fn names_the_problem() {
        assert!(err(r#"{"vlans": []}"#).contains("missing field `vms`"));
        assert!(err(r#"{"vms": {}, "global_timeout": "soon"}"#)
            .contains("invalid type: string \"soon\""));
        assert!(err(r#"{"schema": "testrig-plan/9", "vms": {}}"#)
            .contains("unsupported schema `testrig-plan/9`"));
        let dup = r#"{"test_script": "/t", "vms": {
            "a": {"name": "a", "start_script": "/a"}, "a": {"name": "a", "start_script": "/b"}}}"#;
        assert!(
            err(dup).contains("duplicate machine name `a`"),
            "{}",
            err(dup)
        );
        assert!(err("{").contains("EOF"));
        assert!(err(r#"{"vms": {}} trailing"#).contains("trailing characters"));
    }
}
