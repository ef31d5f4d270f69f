//! The checks a plan must pass beyond its JSON shape, and the values nixpkgs derives when a plan leaves them out.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::PlanError;
use crate::plan::{python_identifier, Plan};

/// QEMU MACs (`52:54:00:12:<vlan>:<node>`) and addresses (`192.168.<vlan>.<node>`) give each one byte.
const MAX_VLAN: u32 = 255;
const MAX_NODE_NUMBER: u32 = 254;

pub(crate) fn validate_and_normalise(mut plan: Plan) -> Result<Plan, PlanError> {
    if plan.vms.is_empty() {
        return Err(if plan.containers.is_empty() {
            PlanError::field("vms", "is empty: a test needs at least one machine")
        } else {
            containers_unsupported(&plan)
        });
    }
    if !plan.containers.is_empty() {
        return Err(containers_unsupported(&plan));
    }
    if plan.global_timeout == 0 {
        return Err(PlanError::field(
            "global_timeout",
            "must be at least 1 second",
        ));
    }
    if plan.test_script.is_none() && plan.test_script_text.is_none() {
        return Err(PlanError::field(
            "test_script",
            "is missing (give `test_script` or `test_script_text`)",
        ));
    }
    if let Some(s) = &plan.test_script {
        if s.is_empty() {
            return Err(PlanError::field("test_script", "is empty"));
        }
    }
    if let Some(drv) = &plan.python_drv {
        if !(drv.starts_with('/') && drv.ends_with(".drv")) {
            return Err(PlanError::field(
                "python_drv",
                format!("is `{drv}`, not a derivation (`/nix/store/…-name.drv`)"),
            ));
        }
        if plan.python.is_none() {
            return Err(PlanError::field(
                "python_drv",
                "is given without `python`, the interpreter it builds",
            ));
        }
    }
    for (i, input) in plan.test_script_inputs.iter().enumerate() {
        check_derivation_output(&format!("test_script_inputs[{i}]"), input)?;
    }
    for &vlan in &plan.vlans {
        check_vlan("vlans", vlan)?;
    }

    let mut identifiers: BTreeMap<String, &str> = BTreeMap::new();
    for (key, vm) in &plan.vms {
        let at = |field: &str| format!("vms.{key}.{field}");
        if vm.name != *key {
            return Err(PlanError::field(
                at("name"),
                format!("is `{}` but the machine's key is `{key}`", vm.name),
            ));
        }
        check_machine_name(key)?;
        if let Some(other) = identifiers.insert(python_identifier(key), key) {
            return Err(PlanError::field(
                format!("vms.{key}"),
                format!(
                    "and `vms.{other}` are both called `{}` in the test script",
                    python_identifier(key)
                ),
            ));
        }
        if vm.start_script.is_empty() {
            return Err(PlanError::field(at("start_script"), "is empty"));
        }
        for &vlan in vm.vlans.iter().flatten() {
            check_vlan(&at("vlans"), vlan)?;
        }
        if vm.memory_mb == Some(0) {
            return Err(PlanError::field(at("memory_mb"), "must be positive"));
        }
        if vm.cores == Some(0) {
            return Err(PlanError::field(at("cores"), "must be positive"));
        }
    }

    assign_node_numbers(&mut plan)?;
    assign_vlans(&mut plan);
    Ok(plan)
}

fn containers_unsupported(plan: &Plan) -> PlanError {
    let names: Vec<&str> = plan.containers.keys().map(String::as_str).collect();
    PlanError::field(
        "containers",
        format!(
            "lists systemd-nspawn machines ({}), which testrig does not run yet",
            names.join(", ")
        ),
    )
}

fn check_vlan(field: &str, vlan: u32) -> Result<(), PlanError> {
    if vlan > MAX_VLAN {
        return Err(PlanError::field(
            field,
            format!("has vlan {vlan}, more than {MAX_VLAN}"),
        ));
    }
    Ok(())
}

/// `/nix/store/…-name.drv^out`: what `nix build` takes to build one output of a derivation.
fn check_derivation_output(field: &str, input: &str) -> Result<(), PlanError> {
    let well_formed = input.split_once(".drv^").is_some_and(|(drv, output)| {
        drv.starts_with('/') && !output.is_empty() && !output.contains(['/', '^'])
    });
    if !well_formed {
        return Err(PlanError::field(
            field,
            format!("is `{input}`, not a derivation output (`/nix/store/…-name.drv^out`)"),
        ));
    }
    Ok(())
}

/// Names become file names (state dirs, sockets) and log prefixes.
fn check_machine_name(name: &str) -> Result<(), PlanError> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.chars().any(|c| c == '/' || c.is_control());
    if bad {
        return Err(PlanError::field(
            format!("vms.{name}"),
            "is not a usable machine name (empty, `.`, `..`, or with `/` or control characters)",
        ));
    }
    Ok(())
}

/// nixpkgs numbers nodes 1, 2, ... in the sorted order of all machine names; a plan may also give them.
fn assign_node_numbers(plan: &mut Plan) -> Result<(), PlanError> {
    let mut seen: BTreeMap<u32, String> = BTreeMap::new();
    for (index, (name, vm)) in plan.vms.iter_mut().enumerate() {
        let number = *vm.node_number.get_or_insert(index as u32 + 1);
        if !(1..=MAX_NODE_NUMBER).contains(&number) {
            return Err(PlanError::field(
                format!("vms.{name}.node_number"),
                format!("is {number}, not within 1..={MAX_NODE_NUMBER}"),
            ));
        }
        if let Some(other) = seen.insert(number, name.clone()) {
            return Err(PlanError::field(
                format!("vms.{name}.node_number"),
                format!("is {number}, the same as `vms.{other}.node_number`"),
            ));
        }
    }
    Ok(())
}

/// A node without vlans is on `[1]` (nixpkgs' `virtualisation.vlans` default); the plan's vlans are the union.
fn assign_vlans(plan: &mut Plan) {
    let mut all: BTreeSet<u32> = plan.vlans.iter().copied().collect();
    for vm in plan.vms.values_mut() {
        let vlans = vm.vlans.get_or_insert_with(|| vec![1]);
        vlans.sort_unstable();
        vlans.dedup();
        all.extend(vlans.iter().copied());
    }
    plan.vlans = all.into_iter().collect();
}

#[cfg(test)]
mod tests {
    use crate::parse_plan;

    fn plan_with_vms(vms: &str) -> String {
        format!(r#"{{"test_script_text": "start_all()", "vms": {{{vms}}}}}"#)
    }

    fn err(text: &str) -> String {
        parse_plan(text).unwrap_err().to_string()
    }

    #[test]
    fn python_drv_is_a_derivation_of_the_python_given() {
        let plan = |fields: &str| {
            format!(
                r#"{{"test_script_text": "x", {fields}
                     "vms": {{"a": {{"name": "a", "start_script": "/a"}}}}}}"#
            )
        };
        let ok =
            r#""python": "/nix/store/p-env/bin/python3", "python_drv": "/nix/store/p-env.drv","#;
        assert!(parse_plan(&plan(ok)).is_ok());
        let err = parse_plan(&plan(
            r#""python": "/p", "python_drv": "/nix/store/p-env","#,
        ))
        .unwrap_err();
        assert!(err.to_string().contains("not a derivation"), "{err}");
        let err = parse_plan(&plan(r#""python_drv": "/nix/store/p-env.drv","#)).unwrap_err();
        assert!(err.to_string().contains("without `python`"), "{err}");
    }

    #[test]
    fn test_script_inputs_must_be_derivation_outputs() {
        let with_inputs = |inputs: &str| {
            format!(
                r#"{{"test_script_text": "x", "test_script_inputs": {inputs},
                     "vms": {{"a": {{"name": "a", "start_script": "/a"}}}}}}"#
            )
        };
        let ok = parse_plan(&with_inputs(
            r#"["/nix/store/aaaa-hello.drv^out", "/s/b.drv^bin"]"#,
        ));
        assert_eq!(ok.unwrap().plan.test_script_inputs.len(), 2);
        for bad in [
            r#"["/nix/store/aaaa-hello"]"#,
            r#"["/nix/store/aaaa-hello.drv^"]"#,
            r#"["hello.drv^out"]"#,
        ] {
            let err = parse_plan(&with_inputs(bad)).unwrap_err().to_string();
            assert!(
                err.starts_with("`test_script_inputs[0]` is `")
                    && err.contains("not a derivation output"),
                "{err}"
            );
        }
    }

    #[test]
    fn numbers_nodes_in_name_order_and_unites_vlans() {
        let text = plan_with_vms(
            r#""server": {"name": "server", "start_script": "/s", "vlans": [2, 1, 2]},
               "client": {"name": "client", "start_script": "/c"}"#,
        );
        let plan = parse_plan(&text).unwrap().plan;
        assert_eq!(plan.vms["client"].node_number, Some(1));
        assert_eq!(plan.vms["server"].node_number, Some(2));
        assert_eq!(plan.vms["server"].vlans, Some(vec![1, 2]));
        assert_eq!(plan.vms["client"].vlans, Some(vec![1]));
        assert_eq!(plan.vlans, vec![1, 2]);
    }

    #[test]
    fn an_explicitly_empty_vlan_list_means_no_vlan() {
        let text = plan_with_vms(r#""a": {"name": "a", "start_script": "/a", "vlans": []}"#);
        let plan = parse_plan(&text).unwrap().plan;
        assert_eq!(plan.vms["a"].vlans, Some(vec![]));
        assert!(plan.vlans.is_empty());
    }

    #[test]
    fn rejects_bad_machines() {
        assert_eq!(
            err(&plan_with_vms(
                r#""a": {"name": "b", "start_script": "/a"}"#
            )),
            "`vms.a.name` is `b` but the machine's key is `a`"
        );
        assert_eq!(
            err(&plan_with_vms(
                r#""a-b": {"name": "a-b", "start_script": "/a"}, "a_b": {"name": "a_b", "start_script": "/b"}"#
            )),
            "`vms.a_b` and `vms.a-b` are both called `a_b` in the test script"
        );
        assert_eq!(
            err(&plan_with_vms(r#""a": {"name": "a", "start_script": ""}"#)),
            "`vms.a.start_script` is empty"
        );
        assert!(err(&plan_with_vms(
            r#""a/b": {"name": "a/b", "start_script": "/a"}"#
        ))
        .contains("not a usable machine name"));
        assert_eq!(
            err(&plan_with_vms(
                r#""a": {"name": "a", "start_script": "/a", "node_number": 255}"#
            )),
            "`vms.a.node_number` is 255, not within 1..=254"
        );
        assert!(err(&plan_with_vms(
            r#""a": {"name": "a", "start_script": "/a", "vlans": [256]}"#
        ))
        .contains("has vlan 256"));
        assert!(err(&plan_with_vms("")).contains("`vms` is empty"));
    }

    #[test]
    fn rejects_missing_script_and_containers() {
        assert!(
            err(r#"{"vms": {"a": {"name": "a", "start_script": "/a"}}}"#)
                .contains("`test_script` is missing")
        );
        let text = r#"{"test_script": "/t", "vms": {"a": {"name": "a", "start_script": "/a"}},
                       "containers": {"c": {}}}"#;
        assert!(err(text).contains("systemd-nspawn machines (c)"));
    }
}
