//! Turning the facts the Nix plugin gathered from an evaluated test into a plan.
//!
//! "Facts" are a plan document without `schema` and `cache_key`, in the same field names: the plugin only walks
//! Nix values and writes what it found; everything that needs judgement (validation, defaults, the key) is here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cache_key::cache_key;
use crate::error::PlanError;
use crate::parse::parse_plan;
use crate::plan::{Plan, SCHEMA};

/// Plans for an attribute set of tests (a flake's `checks.<system>`), with the attributes that were not tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSet {
    pub plans: BTreeMap<String, Plan>,
    /// Attribute name to why it is not a test.
    #[serde(default)]
    pub skipped: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FactsSet {
    tests: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    skipped: BTreeMap<String, String>,
}

/// Validates one test's facts and returns the complete plan (with `schema` and, when the script text is known,
/// `cache_key`).
pub fn plan_from_facts(facts: serde_json::Value) -> Result<Plan, PlanError> {
    let serde_json::Value::Object(mut object) = facts else {
        return Err(PlanError::Syntax(format!(
            "the facts of a test must be an object, found {facts}"
        )));
    };
    object.insert("schema".into(), SCHEMA.into());
    object.remove("cache_key");
    let text = serde_json::Value::Object(object).to_string();
    let mut plan = parse_plan(&text)?.plan;
    if let Some(script) = &plan.test_script_text {
        // Every start script of an evaluated test is a store path, so no local digest is needed.
        plan.cache_key = Some(cache_key(&plan, script, &|_| None));
    }
    Ok(plan)
}

/// The same for a set of tests; an error names the test it is about.
pub fn plans_from_facts_set(set: serde_json::Value) -> Result<PlanSet, PlanError> {
    let set: FactsSet =
        serde_json::from_value(set).map_err(|e| PlanError::Syntax(e.to_string()))?;
    let mut plans = BTreeMap::new();
    for (name, facts) in set.tests {
        let plan = plan_from_facts(facts).map_err(|e| PlanError::Field {
            field: name.clone(),
            problem: format!("is not a usable test: {e}"),
        })?;
        plans.insert(name, plan);
    }
    Ok(PlanSet {
        plans,
        skipped: set.skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts() -> serde_json::Value {
        json!({
            "name": "login",
            "test_script_text": "start_all()",
            "vms": {"machine": {"name": "machine", "start_script": "/nix/store/a-vm/bin/run-machine-vm",
                                "drv": "/nix/store/a-vm.drv"}}
        })
    }

    #[test]
    fn completes_a_plan() {
        let plan = plan_from_facts(facts()).unwrap();
        assert_eq!(plan.schema.as_deref(), Some(SCHEMA));
        assert_eq!(plan.cache_key.as_ref().map(String::len), Some(32));
        assert_eq!(plan.vms["machine"].node_number, Some(1));
    }

    #[test]
    fn set_keeps_skipped_and_names_the_bad_test() {
        let set = plans_from_facts_set(json!({
            "tests": {"login": facts()},
            "skipped": {"fmt": "not a NixOS test (a derivation without `config.nodes`)"}
        }))
        .unwrap();
        assert_eq!(set.plans.len(), 1);
        assert_eq!(set.skipped.len(), 1);

        let err = plans_from_facts_set(json!({"tests": {"bad": {"vms": {}}}})).unwrap_err();
        assert!(
            err.to_string().starts_with("`bad` is not a usable test: "),
            "{err}"
        );
    }
}
