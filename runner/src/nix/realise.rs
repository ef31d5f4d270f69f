//! Building what a test needs before it runs, with `nix build`: the start scripts that are not in the store (from
//! their derivations, `vms.<n>.drv`), the derivation outputs the test script names (`test_script_inputs`) when
//! one of them is missing, and the Python of the test's `extraPythonPackages` (`python_drv`). Plans made by the builtin or `testrig plan` build nothing, so this is where their VMs
//! come into being; a plan whose files are all there never calls `nix`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use testrig_bridge::Plan;
use tokio::process::Command;

use super::command::{command_line, common_options, find_nix, spawn_error, NixError};
use crate::support::process::GroupChild;

/// What one test may need from the store before it runs: its plan's start scripts, Python and test script inputs.
#[derive(Debug, Clone, Copy)]
pub struct Needs<'a> {
    /// The test's name, for the log.
    pub name: &'a str,
    pub plan: &'a Plan,
    /// The script that will run (`--test-script` may replace the plan's).
    pub test_script_text: &'a str,
}

/// What `nix build` is asked for: installables (`DRV^OUTPUT`) and, for the log, whom each is for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Wanted {
    start_scripts: Vec<(String, String)>,
    script_inputs: Vec<(String, String)>,
}

impl Wanted {
    fn of(plans: &[Needs]) -> Wanted {
        let mut wanted = Wanted::default();
        let add = |list: &mut Vec<(String, String)>, installable: String, whom: &str| {
            if !list.iter().any(|(i, _)| *i == installable) {
                list.push((installable, whom.to_owned()));
            }
        };
        let mut missing_without_drv = Vec::new();
        for loaded in plans {
            for vm in loaded.plan.vms.values() {
                if Path::new(&vm.start_script).exists() {
                    continue;
                }
                match &vm.drv {
                    Some(drv) => add(&mut wanted.start_scripts, format!("{drv}^out"), &vm.name),
                    None => missing_without_drv.push(vm.start_script.clone()),
                }
            }
            if let (Some(python), Some(drv)) = (&loaded.plan.python, &loaded.plan.python_drv) {
                if !Path::new(python).exists() {
                    add(&mut wanted.script_inputs, format!("{drv}^out"), loaded.name);
                }
            }
            let inputs = &loaded.plan.test_script_inputs;
            if !inputs.is_empty() && missing_store_paths(loaded.test_script_text, inputs) {
                for input in inputs {
                    add(&mut wanted.script_inputs, input.clone(), loaded.name);
                }
            }
        }
        if !missing_without_drv.is_empty() {
            // The run names the missing file when it checks the start scripts.
            tracing::debug!(
                "no derivation is known for {}",
                missing_without_drv.join(", ")
            );
        }
        wanted
    }

    fn is_empty(&self) -> bool {
        self.start_scripts.is_empty() && self.script_inputs.is_empty()
    }

    /// `2 start scripts (client, server) and 1 test script input (of login)`.
    fn describe(&self) -> String {
        let part = |list: &[(String, String)], what: &str, of: &str| {
            let mut whom: Vec<&str> = list.iter().map(|(_, w)| w.as_str()).collect();
            whom.dedup();
            let plural = if list.len() == 1 { "" } else { "s" };
            format!("{} {what}{plural} ({of}{})", list.len(), whom.join(", "))
        };
        let mut parts = Vec::new();
        if !self.start_scripts.is_empty() {
            parts.push(part(&self.start_scripts, "start script", ""));
        }
        if !self.script_inputs.is_empty() {
            parts.push(part(&self.script_inputs, "test script input", "of "));
        }
        parts.join(" and ")
    }
}

/// Builds what `plans` need that is not in the store yet with the `nix` at `nix`, showing Nix's progress.
pub async fn realise(nix: &Path, plans: &[Needs<'_>]) -> Result<(), NixError> {
    let wanted = Wanted::of(plans);
    if wanted.is_empty() {
        tracing::debug!("everything the tests need is in the store already");
        return Ok(());
    }
    build(nix, &wanted).await
}

/// [`realise`] for plans read from files: `nix` (`TESTRIG_NIX` or `PATH`) is only looked for when something is
/// missing and its derivation is known.
pub async fn realise_plan_files(plans: &[Needs<'_>]) -> Result<(), NixError> {
    let wanted = Wanted::of(plans);
    if wanted.is_empty() {
        return Ok(());
    }
    let nix = find_nix().map_err(|e| {
        NixError::NixNotFound(format!(
            "{} must be built from their derivations, but no nix was found: {e}",
            wanted.describe()
        ))
    })?;
    build(&nix, &wanted).await
}

async fn build(nix: &Path, wanted: &Wanted) -> Result<(), NixError> {
    tracing::info!("building {} with nix build", wanted.describe());
    let started = Instant::now();
    let mut argv = common_options();
    argv.extend(["build".into(), "--no-link".into()]);
    argv.extend(
        wanted
            .start_scripts
            .iter()
            .chain(&wanted.script_inputs)
            .map(|(installable, _)| installable.clone()),
    );
    let mut command = Command::new(nix);
    command
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let what = command_line(nix, &argv[..argv.len().min(6)]);
    let mut child =
        GroupChild::spawn(&mut command, what.clone()).map_err(|e| spawn_error(nix, e))?;
    let status = child.wait().await.map_err(|e| NixError::Spawn {
        command: what.clone(),
        message: e.to_string(),
    })?;
    if !status.success() {
        return Err(NixError::Build {
            command: what,
            message: format!("nix build exited with {status} (its messages are above)"),
        });
    }
    tracing::info!("built them in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Whether a store path that `script` mentions, in the store of the derivations in `inputs`, is missing. The
/// outputs of `inputs` are among those paths, so when none is missing there is nothing to build (and no `nix`
/// call to pay for).
fn missing_store_paths(script: &str, inputs: &[String]) -> bool {
    let store_dirs: BTreeSet<&str> = inputs
        .iter()
        .filter_map(|input| Path::new(input.split('^').next()?).parent()?.to_str())
        .collect();
    store_dirs.iter().any(|dir| {
        let prefix = format!("{dir}/");
        script.match_indices(&prefix).any(|(at, _)| {
            let rest = &script[at + prefix.len()..];
            // A store path's base name: nix-base32 hash, `-`, then name characters.
            let name_len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || "+-._?=".contains(c)))
                .unwrap_or(rest.len());
            let name = &rest[..name_len];
            name.len() > 33
                && name.as_bytes()[32] == b'-'
                && !Path::new(&prefix).join(name).exists()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_script_input_is_built_only_when_a_path_it_names_is_missing() {
        let store = tempfile::tempdir().unwrap();
        let dir = store.path().display();
        let present = format!("{dir}/{}-hello-2.12", "a".repeat(32));
        std::fs::write(&present, "").unwrap();
        let absent = format!("{dir}/{}-greeting", "b".repeat(32));
        let inputs = [format!("{dir}/{}-hello.drv^out", "c".repeat(32))];

        let script = |paths: &[&str]| {
            paths
                .iter()
                .map(|p| format!("machine.succeed(\"{p}/bin/hello\")\n"))
                .collect::<String>()
        };
        assert!(!missing_store_paths(&script(&[&present]), &inputs));
        assert!(missing_store_paths(&script(&[&present, &absent]), &inputs));
        // Not store paths: too short a name, or another directory.
        assert!(!missing_store_paths(&format!("open('{dir}/abc')"), &inputs));
        assert!(!missing_store_paths(
            &script(&["/elsewhere/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-x"]),
            &inputs
        ));
    }

    #[test]
    fn the_log_says_what_is_built_and_for_whom() {
        let wanted = Wanted {
            start_scripts: vec![
                ("/s/a.drv^out".into(), "client".into()),
                ("/s/b.drv^out".into(), "server".into()),
            ],
            script_inputs: vec![("/s/c.drv^out".into(), "login".into())],
        };
        assert_eq!(
            wanted.describe(),
            "2 start scripts (client, server) and 1 test script input (of login)"
        );
    }
}
