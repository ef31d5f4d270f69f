//! Tests named by a Nix reference (`FILE.nix [-A ATTR]`, `FLAKEREF#ATTR`) become plans: `nix eval` with testrig's
//! plugin (`builtins.nixosTestPlan`), or with the pure-Nix extractor `nix/plan.nix` when there is no plugin (what
//! they need is then built by `realise`, see `plan::from_nix`).
//!
//! Both extractors give the same plans; whatever comes back is validated and completed here by the same code
//! (`plan_from_facts`), so a plan never depends on which one made it. Nothing here assumes a particular Nix
//! installation: `nix` comes from `TESTRIG_NIX` or `PATH`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use testrig_bridge::{plan_from_facts, plans_from_facts_set, Plan};

use super::command::{common_options, find_nix, run_captured, NixError};

/// The pure-Nix extractor, passed to `nix eval --apply` as text so that it works from any installed location.
const PLAN_NIX: &str = include_str!("../../../nix/plan.nix");

/// Adds the Python of a test's `extraPythonPackages` to its plan, after either extractor.
const PYTHON_ENV_NIX: &str = include_str!("../../../nix/python-env.nix");

/// The plugin's file name, looked for next to the `testrig` binary.
const PLUGIN_FILE: &str = "libtestrig.so";

/// Said by the `--apply` expression when the plugin loaded but registered no builtin (a plugin built for another
/// Nix does that, after printing why).
const NOT_REGISTERED: &str = "testrig: builtins.nixosTestPlan is not available";

/// How tests are evaluated (`--plugin`, `--no-plugin`, `--arg`, `--argstr`).
#[derive(Debug, Clone, Default)]
pub struct EvalOptions {
    /// testrig's Nix plugin; `None`: `libtestrig.so` looked for next to the binary.
    pub plugin: Option<PathBuf>,
    /// Evaluate with the pure-Nix extractor (nix/plan.nix) even when the plugin is there.
    pub no_plugin: bool,
    /// `NAME EXPR` pairs passed to a FILE.nix that is a function, as `nix eval --arg` passes them.
    pub args: Vec<(String, String)>,
    /// `NAME STRING` pairs, as `nix eval --argstr` passes them.
    pub argstrs: Vec<(String, String)>,
}

/// A test (or a set of tests) named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestRef {
    /// A Nix file and an attribute path in it (empty: the whole file).
    File { path: PathBuf, attr: String },
    /// `FLAKEREF#ATTR`, evaluated as `nix eval` evaluates it.
    Flake(String),
}

impl std::fmt::Display for TestRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TestRef::File { path, attr } if attr.is_empty() => write!(f, "{}", path.display()),
            TestRef::File { path, attr } => write!(f, "{} -A {attr}", path.display()),
            TestRef::Flake(reference) => f.write_str(reference),
        }
    }
}

/// Whether a command-line argument names a Nix expression (`*.nix`, a directory with a default.nix, or
/// `FLAKEREF#ATTR`) rather than a plan file.
pub fn is_nix_reference(arg: &str) -> bool {
    let path = Path::new(arg);
    arg.contains('#')
        || path.extension().is_some_and(|e| e == "nix")
        || (path.is_dir() && path.join("default.nix").is_file())
}

/// The tests an argument names, with the `-A` attributes applied to a file (each one a test or a set of tests).
pub fn references(arg: &str, attrs: &[String]) -> Result<Vec<TestRef>, String> {
    if arg.contains('#') {
        if !attrs.is_empty() {
            return Err(format!(
                "-A applies to a FILE.nix, not to the flake reference {arg}: write FLAKEREF#ATTR"
            ));
        }
        return Ok(vec![TestRef::Flake(arg.to_owned())]);
    }
    let path = PathBuf::from(arg);
    if attrs.is_empty() {
        return Ok(vec![TestRef::File {
            path,
            attr: String::new(),
        }]);
    }
    Ok(attrs
        .iter()
        .map(|attr| TestRef::File {
            path: path.clone(),
            attr: attr.clone(),
        })
        .collect())
}

/// What evaluating a reference gave: one plan, or the plans of a set with the attributes that were not tests.
#[derive(Debug)]
pub enum Evaluated {
    One(Box<Plan>),
    Set {
        plans: Vec<(String, Plan)>,
        skipped: Vec<(String, String)>,
    },
}

impl Evaluated {
    /// The plans with the names to give them when they have none (a set's attribute names).
    pub fn plans(&self) -> Vec<(Option<&str>, &Plan)> {
        match self {
            Evaluated::One(plan) => vec![(None, &**plan)],
            Evaluated::Set { plans, .. } => {
                plans.iter().map(|(n, p)| (Some(n.as_str()), p)).collect()
            }
        }
    }

    /// The JSON `testrig plan` prints: a plan, or `{"plans": ..., "skipped": ...}`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Evaluated::One(plan) => serde_json::to_value(plan).expect("a plan serialises"),
            Evaluated::Set { plans, skipped } => serde_json::json!({
                "plans": plans.iter().map(|(n, p)| (n.clone(), serde_json::to_value(p).expect("a plan serialises")))
                    .collect::<serde_json::Map<_, _>>(),
                "skipped": skipped.iter().map(|(n, r)| (n.clone(), serde_json::Value::from(r.as_str())))
                    .collect::<serde_json::Map<_, _>>(),
            }),
        }
    }
}

/// Which extractor evaluates the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extractor {
    Plugin(PathBuf),
    PureNix,
}

/// A `nix` to evaluate with and the extractor it uses.
#[derive(Debug)]
pub struct Evaluator {
    nix: PathBuf,
    extractor: Extractor,
    options: EvalOptions,
}

impl Evaluator {
    /// Finds `nix` and the plugin, and says which extractor will be used.
    pub fn locate(options: &EvalOptions) -> Result<Self, NixError> {
        let nix = find_nix()?;
        let extractor = if options.no_plugin {
            tracing::info!(
                "evaluating with the pure-Nix extractor (nix/plan.nix), as asked (--no-plugin)"
            );
            Extractor::PureNix
        } else if let Some(path) = &options.plugin {
            if !path.is_file() {
                return Err(NixError::Plugin {
                    path: path.clone(),
                    message: "no such file (given by --plugin or TESTRIG_PLUGIN)".into(),
                });
            }
            Extractor::Plugin(std::path::absolute(path).unwrap_or_else(|_| path.clone()))
        } else {
            let candidates = plugin_candidates();
            match candidates.iter().find(|p| p.is_file()) {
                Some(found) => Extractor::Plugin(found.clone()),
                None => {
                    tracing::info!(
                        "testrig's Nix plugin was not found (looked for {}); evaluating with the pure-Nix \
                         extractor (nix/plan.nix) instead",
                        candidates
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    Extractor::PureNix
                }
            }
        };
        if let Extractor::Plugin(path) = &extractor {
            tracing::info!("evaluating with testrig's Nix plugin {}", path.display());
        }
        Ok(Evaluator {
            nix,
            extractor,
            options: options.clone(),
        })
    }

    /// The `nix` it evaluates with.
    pub fn nix(&self) -> &Path {
        &self.nix
    }

    /// Evaluates one reference to its plans (validated, with their cache keys).
    pub async fn evaluate(&self, reference: &TestRef) -> Result<Evaluated, NixError> {
        let started = Instant::now();
        let argv = self.eval_argv(reference);
        let output = run_captured(&self.nix, &argv).await?;
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if !output.success {
            return Err(self.classify_failure(reference, &stderr));
        }
        // Nix's warnings and traces are the user's to see.
        if !stderr.trim().is_empty() {
            eprint!("{stderr}");
        }
        let value: serde_json::Value =
            serde_json::from_slice(&output.stdout).map_err(|e| NixError::BadPlan {
                reference: reference.to_string(),
                message: format!("`nix eval --json` printed no JSON: {e}"),
            })?;
        let evaluated = completed(value).map_err(|message| NixError::BadPlan {
            reference: reference.to_string(),
            message,
        })?;
        tracing::info!(
            "evaluated {reference} in {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            describe(&evaluated)
        );
        Ok(evaluated)
    }

    fn eval_argv(&self, reference: &TestRef) -> Vec<String> {
        let mut argv = Vec::new();
        if let Extractor::Plugin(path) = &self.extractor {
            // `plugin-files` must come before the subcommand: plugins load before it is parsed.
            argv.extend([
                "--option".into(),
                "plugin-files".into(),
                path.display().to_string(),
            ]);
        }
        argv.extend(common_options());
        argv.extend(["eval".into(), "--json".into()]);
        match reference {
            TestRef::File { path, attr } => {
                // A file may read the environment (getEnv, currentSystem) as nix-build allows. `--expr` rather
                // than `--file`, so that a file that is a function is called even without an attribute path.
                argv.extend([
                    "--impure".into(),
                    "--expr".into(),
                    self.file_expression(path),
                ]);
                if !attr.is_empty() {
                    argv.push(attr.clone());
                }
            }
            TestRef::Flake(reference) => argv.push(reference.clone()),
        }
        argv.push("--apply".into());
        argv.push(self.apply_expression());
        argv
    }

    /// `import FILE`, called like nix-build calls a file that is a function: with the `--arg`/`--argstr` values it
    /// names, its other arguments left to their defaults.
    fn file_expression(&self, path: &Path) -> String {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let mut args = String::new();
        for (name, expr) in &self.options.args {
            args += &format!("{} = ({expr}); ", nix_string(name));
        }
        for (name, value) in &self.options.argstrs {
            args += &format!("{} = {}; ", nix_string(name), nix_string(value));
        }
        format!(
            "let f = import (/. + {}); in if builtins.isFunction f then f (builtins.intersectAttrs (builtins.functionArgs f) {{ {args}}}) else f",
            nix_string(&absolute.display().to_string())
        )
    }

    fn apply_expression(&self) -> String {
        let extract = match &self.extractor {
            Extractor::Plugin(path) => format!(
                "if builtins ? nixosTestPlan then builtins.nixosTestPlan v else throw \"{NOT_REGISTERED}: the plugin {} loaded but did not register it\"",
                path.display()
            ),
            Extractor::PureNix => format!("(\n{PLAN_NIX}\n) {{ test = v; }}"),
        };
        format!("v: (\n{PYTHON_ENV_NIX}\n) v ({extract})")
    }

    fn classify_failure(&self, reference: &TestRef, stderr: &str) -> NixError {
        let mut message = stderr.trim_end().to_owned();
        // Nix quotes the `--apply` expression's source in traces, so only its error line counts.
        let not_registered = stderr.contains(&format!("error: {NOT_REGISTERED}"));
        if let Extractor::Plugin(path) = &self.extractor {
            if not_registered {
                // What the plugin said when it declined is the useful part, not the trace of our `throw`.
                let said: Vec<&str> = stderr
                    .lines()
                    .take_while(|l| !l.starts_with("error:"))
                    .collect();
                message = format!(
                    "{}it loaded but did not register builtins.nixosTestPlan",
                    said.iter().map(|l| format!("{l}\n")).collect::<String>()
                );
            }
            if not_registered || stderr.contains("could not dynamically open plugin file") {
                return NixError::Plugin {
                    path: path.clone(),
                    message: format!(
                        "{message}\n(is it built for this Nix, {}? rebuild it with plugin/build.sh, or evaluate \
                         without it: --no-plugin)",
                        self.nix.display()
                    ),
                };
            }
        }
        NixError::Evaluation {
            reference: reference.to_string(),
            message,
        }
    }
}

/// A Nix string literal.
fn nix_string(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace("${", "\\${");
    format!("\"{escaped}\"")
}

/// Where the plugin may be, relative to the (resolved) binary: beside it; `../lib` (an installed package);
/// `../plugin` (cargo's target dir, where plugin/build.sh puts it).
fn plugin_candidates() -> Vec<PathBuf> {
    let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.canonicalize().ok())
        .and_then(|exe| exe.parent().map(Path::to_owned))
    else {
        return Vec::new();
    };
    vec![
        dir.join(PLUGIN_FILE),
        dir.join("../lib").join(PLUGIN_FILE),
        dir.join("../lib/testrig").join(PLUGIN_FILE),
        dir.join("../plugin").join(PLUGIN_FILE),
    ]
    .into_iter()
    .map(|p| p.canonicalize().unwrap_or(p))
    .collect()
}

/// What either extractor returned, validated and completed by the same code.
fn completed(value: serde_json::Value) -> Result<Evaluated, String> {
    let is_set = value.get("plans").is_some() && value.get("vms").is_none();
    if !is_set {
        return plan_from_facts(value)
            .map(|plan| Evaluated::One(Box::new(plan)))
            .map_err(|e| e.to_string());
    }
    let facts = serde_json::json!({
        "tests": value.get("plans").cloned().unwrap_or_default(),
        "skipped": value.get("skipped").cloned().unwrap_or_else(|| serde_json::json!({})),
    });
    let set = plans_from_facts_set(facts).map_err(|e| e.to_string())?;
    Ok(Evaluated::Set {
        plans: set.plans.into_iter().collect(),
        skipped: set.skipped.into_iter().collect(),
    })
}

fn describe(evaluated: &Evaluated) -> String {
    match evaluated {
        Evaluated::One(plan) => format!(
            "test `{}` with {} machine{}",
            plan.name.as_deref().unwrap_or("?"),
            plan.vms.len(),
            if plan.vms.len() == 1 { "" } else { "s" }
        ),
        Evaluated::Set { plans, skipped } => {
            let mut text = format!(
                "{} test{}",
                plans.len(),
                if plans.len() == 1 { "" } else { "s" }
            );
            if !skipped.is_empty() {
                let names: Vec<&str> = skipped.iter().map(|(n, _)| n.as_str()).collect();
                text += &format!(", skipped (not NixOS tests): {}", names.join(", "));
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_nix_references_from_plan_files() {
        assert!(is_nix_reference(".#checks.x86_64-linux"));
        assert!(is_nix_reference("github:owner/repo#tests"));
        assert!(is_nix_reference("tests/fixtures/default.nix"));
        assert!(!is_nix_reference("plan.json"));
        assert!(!is_nix_reference("driverConfiguration.json"));
    }

    #[test]
    fn attributes_apply_to_files() {
        let refs = references("f.nix", &["a".into(), "b.c".into()]).unwrap();
        assert_eq!(
            refs,
            [
                TestRef::File {
                    path: "f.nix".into(),
                    attr: "a".into()
                },
                TestRef::File {
                    path: "f.nix".into(),
                    attr: "b.c".into()
                },
            ]
        );
        assert_eq!(
            references(".#x", &[]).unwrap(),
            [TestRef::Flake(".#x".into())]
        );
        assert!(references(".#x", &["y".into()])
            .unwrap_err()
            .contains("FLAKEREF#ATTR"));
        assert_eq!(refs[1].to_string(), "f.nix -A b.c");
    }

    #[test]
    fn the_pure_nix_extractor_is_one_expression() {
        let evaluator = Evaluator {
            nix: "nix".into(),
            extractor: Extractor::PureNix,
            options: EvalOptions::default(),
        };
        let apply = evaluator.apply_expression();
        // The Python of extraPythonPackages added to what plan.nix gives.
        assert!(apply.starts_with(&format!("v: (\n{PYTHON_ENV_NIX}\n) v (")));
        assert!(apply.ends_with(&format!("(\n{PLAN_NIX}\n) {{ test = v; }})")));
        let argv = evaluator.eval_argv(&TestRef::File {
            path: "t.nix".into(),
            attr: "x".into(),
        });
        assert_eq!(
            argv[..2],
            ["--extra-experimental-features", "nix-command flakes"]
        );
        let expr = argv.iter().position(|a| a == "--expr").unwrap();
        assert!(argv[expr + 1].contains("import (/. + \"/") && argv[expr + 2] == "x");
        assert_eq!(nix_string("a\"b${c}\\"), r#""a\"b\${c}\\""#);
    }

    #[test]
    fn the_plugin_comes_before_the_subcommand() {
        let evaluator = Evaluator {
            nix: "nix".into(),
            extractor: Extractor::Plugin("/p/libtestrig.so".into()),
            options: EvalOptions::default(),
        };
        let argv = evaluator.eval_argv(&TestRef::Flake(".#t".into()));
        assert_eq!(argv[..3], ["--option", "plugin-files", "/p/libtestrig.so"]);
        let eval = argv.iter().position(|a| a == "eval").unwrap();
        assert!(eval > 2);
        assert!(
            !argv.contains(&"--impure".to_owned()),
            "flakes evaluate purely"
        );
    }

    #[test]
    fn sets_and_single_plans_are_completed_alike() {
        let plan = serde_json::json!({
            "schema": "testrig-plan/1", "name": "t", "test_script_text": "pass",
            "vms": {"m": {"name": "m", "start_script": "/nix/store/x-nixos-vm/bin/run-m-vm"}}
        });
        let Evaluated::One(one) = completed(plan.clone()).unwrap() else {
            panic!("not one plan")
        };
        assert_eq!(one.cache_key.as_ref().map(String::len), Some(32));
        let set = completed(
            serde_json::json!({"plans": {"t": plan}, "skipped": {"fmt": "a derivation"}}),
        )
        .unwrap();
        let Evaluated::Set { plans, skipped } = set else {
            panic!("not a set")
        };
        assert_eq!(plans[0].1, *one);
        assert_eq!(skipped, [("fmt".to_owned(), "a derivation".to_owned())]);
    }
}
