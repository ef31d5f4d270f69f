//! The functions the C++ plugin calls. One JSON string in, one out: `Option` and nested structs do not cross cxx
//! well, and JSON keeps the C++ side to walking Nix values. Every function returns `Result` and catches panics,
//! because a panic unwinding into C++ would abort the whole `nix` process.

use std::panic::{catch_unwind, UnwindSafe};

#[cxx::bridge(namespace = "testrig")]
mod ffi {
    // Rust exposed to C++.
    extern "Rust" {
        /// Facts of one test (a plan document without `schema`) to a complete `testrig-plan/1` plan.
        fn plan_from_facts_json(facts: &str) -> Result<String>;
        /// `{"tests": {name: facts}, "skipped": {name: reason}}` to `{"plans": {...}, "skipped": {...}}`.
        fn plans_from_facts_set_json(set: &str) -> Result<String>;
        /// The plan schema this build writes, for the plugin's messages.
        fn plan_schema_version() -> String;
    }
}

fn plan_from_facts_json(facts: &str) -> Result<String, String> {
    guarded(|| {
        let value = serde_json::from_str(facts).map_err(|e| e.to_string())?;
        let plan = crate::plan_from_facts(value).map_err(|e| e.to_string())?;
        serde_json::to_string(&plan).map_err(|e| e.to_string())
    })
}

fn plans_from_facts_set_json(set: &str) -> Result<String, String> {
    guarded(|| {
        let value = serde_json::from_str(set).map_err(|e| e.to_string())?;
        let plans = crate::plans_from_facts_set(value).map_err(|e| e.to_string())?;
        serde_json::to_string(&plans).map_err(|e| e.to_string())
    })
}

fn plan_schema_version() -> String {
    crate::SCHEMA.to_owned()
}

fn guarded(f: impl FnOnce() -> Result<String, String> + UnwindSafe) -> Result<String, String> {
    catch_unwind(f)
        .unwrap_or_else(|_| Err("internal error in testrig's plan builder (a bug)".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_come_back_as_text() {
        let err = plan_from_facts_json("[]").unwrap_err();
        assert!(err.contains("must be an object"), "{err}");
        let ok = plan_from_facts_json(
            r#"{"test_script_text": "x", "vms": {"m": {"name": "m", "start_script": "/nix/store/a/bin/run-m-vm"}}}"#,
        )
        .unwrap();
        assert!(ok.starts_with(r#"{"schema":"testrig-plan/1""#), "{ok}");
    }
}
