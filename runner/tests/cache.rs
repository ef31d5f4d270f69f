//! The result cache and kept state through the real binary, on tests whose script never boots a machine: the
//! script leaves a marker when it runs (so a cached answer is seen to run nothing) and is steered by environment
//! variables, which are not part of the cache key. The start script leaves a marker too, and must never run.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SCRIPT: &str = r#"import os, time
open(os.environ["TR_MARK"], "a").write("ran\n")
(driver.out_dir / "artefact.txt").write_text("from the run")
if os.environ.get("TR_STARTED"):
    open(os.environ["TR_STARTED"], "w").write("started")
time.sleep(float(os.environ.get("TR_SLEEP", "0")))
assert os.environ.get("TR_FAIL") != "1", "asked to fail"
"#;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        let script = env.path().join("run-machine-vm");
        std::fs::write(
            &script,
            "#!/bin/sh\ntouch \"$(dirname \"$0\")/VM-STARTED\"\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        env.write_plan("plan.json", "cached", SCRIPT);
        env
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn cache_dir(&self) -> PathBuf {
        self.path().join("cache")
    }

    fn write_plan(&self, file: &str, name: &str, script: &str) {
        let plan = serde_json::json!({
            "schema": "testrig-plan/1",
            "name": name,
            "test_script_text": script,
            "vms": {"machine": {"name": "machine", "start_script": "run-machine-vm"}},
        });
        std::fs::write(self.path().join(file), plan.to_string()).unwrap();
    }

    fn command(&self, args: &[&str], vars: &[(&str, &str)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_testrig"));
        command
            .args(args)
            .current_dir(self.path())
            .env("TESTRIG_CACHE_DIR", self.cache_dir())
            .env("TESTRIG_STATE_DIR", self.path().join("state"))
            .env("TR_MARK", self.path().join("RAN"))
            .env_remove("TESTRIG_NO_CACHE");
        for (k, v) in vars {
            command.env(k, v);
        }
        command
    }

    fn run(&self, args: &[&str], vars: &[(&str, &str)]) -> Run {
        let out = self.command(args, vars).output().unwrap();
        Run::from(out)
    }

    fn spawn(&self, args: &[&str], vars: &[(&str, &str)]) -> Child {
        self.command(args, vars)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// How many times a test script ran since the last call.
    fn runs(&self) -> usize {
        let mark = self.path().join("RAN");
        let n = std::fs::read_to_string(&mark)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        let _ = std::fs::remove_file(mark);
        n
    }

    fn ls(&self) -> Vec<serde_json::Value> {
        let run = self.run(&["cache", "ls", "--json"], &[]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        serde_json::from_str::<serde_json::Value>(&run.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    fn wait_for(&self, file: &str) {
        let path = self.path().join(file);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !path.exists() {
            assert!(
                Instant::now() < deadline,
                "{file} did not appear within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        assert!(
            !self.path().join("VM-STARTED").exists(),
            "a start script ran"
        );
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

fn cached_line_of(run: &Run) -> &str {
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "stdout: {}\nstderr: {}",
        run.stdout,
        run.stderr
    );
    lines[0]
}

#[test]
fn a_passed_test_is_answered_from_the_cache_without_running() {
    let env = Env::new();
    let first = env.run(&["run", "plan.json", "-o", "out1"], &[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(env.runs(), 1);

    let second = env.run(
        &["run", "plan.json", "-o", "out2", "--junit-xml", "j.xml"],
        &[],
    );
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(env.runs(), 0, "the test script ran again");
    let line = cached_line_of(&second);
    let entry = &env.ls()[0];
    let log = Path::new(entry["dir"].as_str().unwrap()).join("log.txt");
    assert!(
        line.starts_with("cached: passed (cached, ")
            && line.contains(" s); log: ")
            && line.ends_with(&log.display().to_string()),
        "{line}"
    );
    assert!(second.stderr.is_empty(), "{}", second.stderr);
    // The log of the run that passed, and its outputs, delivered again.
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("cached: passed in"));
    assert_eq!(
        std::fs::read_to_string(env.path().join("out2/artefact.txt")).unwrap(),
        "from the run"
    );
    assert!(std::fs::read_to_string(env.path().join("j.xml"))
        .unwrap()
        .contains("<testsuite name=\"cached\""));
}

#[test]
fn rerun_runs_again_and_replaces_the_entry() {
    let env = Env::new();
    assert_eq!(env.run(&["run", "plan.json"], &[]).code, 0);
    let before = env.ls();
    std::thread::sleep(Duration::from_millis(1100));
    let rerun = env.run(&["run", "--rerun", "plan.json"], &[]);
    assert_eq!(rerun.code, 0, "{}", rerun.stderr);
    assert_eq!(env.runs(), 2);
    let after = env.ls();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["key"], before[0]["key"]);
    assert!(after[0]["started_at"].as_u64() > before[0]["started_at"].as_u64());
}

#[test]
fn failed_runs_are_recorded_and_never_skip() {
    let env = Env::new();
    let failed = env.run(&["run", "plan.json"], &[("TR_FAIL", "1")]);
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    let entries = env.ls();
    assert_eq!(entries[0]["outcome"], "failed");
    let again = env.run(&["run", "--rerun-failed", "plan.json"], &[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(env.runs(), 2);
    assert_eq!(env.ls()[0]["outcome"], "passed");
}

#[test]
fn a_changed_test_script_runs_again() {
    let env = Env::new();
    assert_eq!(env.run(&["run", "plan.json"], &[]).code, 0);
    env.write_plan("plan.json", "cached", &format!("{SCRIPT}# changed\n"));
    assert_eq!(env.run(&["run", "plan.json"], &[]).code, 0);
    assert_eq!(env.runs(), 2);
    assert_eq!(env.ls().len(), 2);
}

#[test]
fn a_corrupted_entry_is_ignored_with_a_warning_and_the_test_runs() {
    let env = Env::new();
    assert_eq!(env.run(&["run", "plan.json"], &[]).code, 0);
    let dir = PathBuf::from(env.ls()[0]["dir"].as_str().unwrap());
    std::fs::write(dir.join("entry.json"), "{\"format\": \"testrig-cache/1\", ").unwrap();
    let run = env.run(&["run", "plan.json"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("ignoring cache entry {}", dir.display())),
        "{}",
        run.stderr
    );
    assert_eq!(env.runs(), 2);
    // The run replaced it with a whole entry.
    assert_eq!(env.ls()[0]["outcome"], "passed");
}

#[test]
fn many_plans_at_once() {
    let env = Env::new();
    for i in 0..5 {
        env.write_plan(
            &format!("p{i}.json"),
            &format!("t{i}"),
            &format!("{SCRIPT}# {i}\n"),
        );
    }
    let plans: Vec<String> = (0..5).map(|i| format!("p{i}.json")).collect();
    let mut args = vec!["run"];
    args.extend(plans.iter().map(String::as_str));
    assert_eq!(env.run(&args, &[]).code, 0);
    assert_eq!(env.runs(), 5);
    let cached = env.run(&args, &[]);
    assert_eq!(cached.code, 0, "{}", cached.stderr);
    assert_eq!(env.runs(), 0);
    let lines: Vec<&str> = cached.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{}", cached.stdout);
    for (i, line) in lines.iter().enumerate() {
        assert!(
            line.starts_with(&format!("t{i}: passed (cached, ")),
            "{line}"
        );
    }
}

#[test]
fn two_runs_of_the_same_test_at_once_run_it_once() {
    let env = Env::new();
    let vars = [("TR_SLEEP", "3")];
    let a = env.spawn(&["run", "plan.json"], &vars);
    let b = env.spawn(&["run", "plan.json"], &vars);
    let (a, b) = (
        Run::from(a.wait_with_output().unwrap()),
        Run::from(b.wait_with_output().unwrap()),
    );
    assert_eq!((a.code, b.code), (0, 0), "{}\n{}", a.stderr, b.stderr);
    assert_eq!(env.runs(), 1, "both runs ran the test");
    let waited = if a.stdout.contains("(cached, ") {
        &a
    } else {
        &b
    };
    cached_line_of(waited);
    assert!(
        waited.stderr.contains("is running the same test; waiting"),
        "{}",
        waited.stderr
    );
    let entries = env.ls();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["outcome"], "passed");
}

#[test]
fn ctrl_c_ends_a_wait_for_the_same_test_at_once() {
    let env = Env::new();
    let started = env.path().join("STARTED");
    let holder = env.spawn(
        &["run", "plan.json"],
        &[
            ("TR_SLEEP", "20"),
            ("TR_STARTED", started.to_str().unwrap()),
        ],
    );
    env.wait_for("STARTED");
    let waiter = env.spawn(&["run", "plan.json"], &[]);
    std::thread::sleep(Duration::from_millis(1500));
    let interrupted_at = Instant::now();
    let kill = Command::new("kill")
        .args(["-INT", &waiter.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let waited = Run::from(waiter.wait_with_output().unwrap());
    let took = interrupted_at.elapsed();
    assert_eq!(waited.code, 130, "{}", waited.stderr);
    assert!(
        waited.stderr.contains("is running the same test; waiting")
            && waited.stderr.contains("SIGINT received while waiting"),
        "{}",
        waited.stderr
    );
    // Before the holder's test ended (it sleeps 20 s): the wait was not in the way of the signal.
    let mut holder = holder;
    assert!(
        holder.try_wait().unwrap().is_none(),
        "the waiter ended only after the holder ({took:?} after the signal)"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &holder.id().to_string()])
        .status();
    let _ = holder.wait();
    assert_eq!(env.runs(), 1, "the interrupted waiter ran the test too");
}

#[test]
fn kill_9_never_leaves_an_entry_that_claims_a_pass() {
    let env = Env::new();
    // A failed entry first, then runs of the same key killed at different points while they run and record.
    assert_eq!(env.run(&["run", "plan.json"], &[("TR_FAIL", "1")]).code, 1);
    for delay_ms in [0u64, 150, 300, 450, 600, 750] {
        let mut child = env.spawn(&["run", "--rerun", "plan.json"], &[]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        let entries = env.ls();
        assert_eq!(entries.len(), 1);
        let entry = &entries[0];
        assert_ne!(entry["outcome"], "unreadable", "{entry}");
        if entry["outcome"] == "passed" {
            // Only a run that got to its end may have recorded a pass; its log says so.
            let log = Path::new(entry["dir"].as_str().unwrap()).join("log.txt");
            assert!(std::fs::read_to_string(log)
                .unwrap()
                .contains("cached: passed in"));
            // Back to a failed entry for the next kill.
            let reset = env.run(&["run", "--rerun", "plan.json"], &[("TR_FAIL", "1")]);
            assert_eq!(reset.code, 1, "{}", reset.stderr);
        }
    }
    // The killed runs' unfinished entries are cleaned by gc; the real entry stays.
    let gc = env.run(&["cache", "gc"], &[]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    let names: Vec<_> = std::fs::read_dir(env.cache_dir().join("entries"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn kill_9_in_the_middle_of_a_run_keeps_the_old_entry() {
    let env = Env::new();
    assert_eq!(env.run(&["run", "plan.json"], &[("TR_FAIL", "1")]).code, 1);
    let started = env.path().join("STARTED");
    let mut child = env.spawn(
        &["run", "--rerun", "plan.json"],
        &[
            ("TR_SLEEP", "30"),
            ("TR_STARTED", started.to_str().unwrap()),
        ],
    );
    env.wait_for("STARTED");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(env.ls()[0]["outcome"], "failed");
    // The next run is not blocked by the dead one's lock, and runs.
    let run = env.run(&["run", "plan.json"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stdout.contains("(cached"));
}

#[test]
fn cache_ls_show_rm_gc() {
    let env = Env::new();
    env.write_plan("other.json", "other", &format!("{SCRIPT}# other\n"));
    assert_eq!(env.run(&["run", "plan.json", "-o", "o"], &[]).code, 0);
    assert_eq!(env.run(&["run", "other.json"], &[]).code, 0);
    assert_eq!(env.ls().len(), 2);

    let ls = env.run(&["cache", "ls"], &[]);
    assert!(
        ls.stdout.starts_with("NAME")
            && ls.stdout.contains("cached")
            && ls.stdout.contains("other"),
        "{}",
        ls.stdout
    );

    let show = env.run(&["cache", "show", "cached", "--json"], &[]);
    assert_eq!(show.code, 0, "{}", show.stderr);
    let shown: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(shown["name"], "cached");
    assert!(Path::new(shown["log"].as_str().unwrap()).is_file());
    assert_eq!(shown["artefacts"][0]["path"], "artefact.txt");
    let human = env.run(&["cache", "show", "cached"], &[]);
    assert!(human.stdout.contains("artefact.txt"), "{}", human.stdout);

    let rm = env.run(&["cache", "rm", "cached", "nope"], &[]);
    assert_eq!(rm.code, 1, "{}", rm.stderr);
    assert!(rm.stdout.contains("removed"), "{}", rm.stdout);
    assert!(rm.stderr.contains("`nope`"), "{}", rm.stderr);
    assert_eq!(env.ls().len(), 1);

    let dry = env.run(&["cache", "gc", "--max-size", "0", "--dry-run"], &[]);
    assert!(dry.stdout.contains("would remove"), "{}", dry.stdout);
    assert_eq!(env.ls().len(), 1);
    let gc = env.run(&["cache", "--json", "gc", "--max-size", "0"], &[]);
    let report: serde_json::Value = serde_json::from_str(&gc.stdout).unwrap();
    assert_eq!(report["removed"][0]["name"], "other");
    assert!(env.ls().is_empty());
}

#[test]
fn kept_state_is_locked_naming_the_pid() {
    let env = Env::new();
    let started = env.path().join("STARTED");
    let holder = env.spawn(
        &["run", "-K", "plan.json"],
        &[("TR_SLEEP", "4"), ("TR_STARTED", started.to_str().unwrap())],
    );
    env.wait_for("STARTED");
    let second = env.run(&["run", "--keep-machine-state", "plan.json"], &[]);
    assert_eq!(second.code, 2, "{}", second.stderr);
    assert!(
        second.stderr.contains(&format!("PID {}", holder.id()))
            && second.stderr.contains("machine `machine`"),
        "{}",
        second.stderr
    );
    // Waiting is allowed: this one starts once the first is done (and runs: -K never skips).
    let waiting = env.run(&["run", "-K", "--lock-timeout", "30s", "plan.json"], &[]);
    assert_eq!(waiting.code, 0, "{}", waiting.stderr);
    assert_eq!(Run::from(holder.wait_with_output().unwrap()).code, 0);
    assert_eq!(env.runs(), 2);
}

#[test]
fn a_changed_node_does_not_reuse_its_kept_state() {
    let env = Env::new();
    assert_eq!(env.run(&["run", "-K", "plan.json"], &[]).code, 0);
    let state = env.path().join("state/cached");
    assert!(state.join("machine.identity.json").is_file());
    // QEMU would have made the dir and a disk in it.
    std::fs::create_dir_all(state.join("machine")).unwrap();
    std::fs::write(state.join("machine/machine.qcow2"), "disk").unwrap();
    let kept = env.run(&["run", "-K", "plan.json"], &[]);
    assert!(
        kept.stderr.contains("reusing its kept state"),
        "{}",
        kept.stderr
    );
    assert!(state.join("machine/machine.qcow2").exists());

    // A changed start script (no `drv` in this plan): refused with --strict-state, discarded without.
    let script = env.path().join("run-machine-vm");
    let text = std::fs::read_to_string(&script).unwrap();
    std::fs::write(&script, format!("{text}# changed\n")).unwrap();
    let strict = env.run(&["run", "-K", "--strict-state", "plan.json"], &[]);
    assert_eq!(strict.code, 2, "{}", strict.stderr);
    assert!(
        strict.stderr.contains("machine `machine` changed"),
        "{}",
        strict.stderr
    );
    assert!(state.join("machine/machine.qcow2").exists());
    let fresh = env.run(&["run", "-K", "plan.json"], &[]);
    assert_eq!(fresh.code, 0, "{}", fresh.stderr);
    assert!(
        fresh
            .stderr
            .contains("machine `machine` changed since its state was kept"),
        "{}",
        fresh.stderr
    );
    assert!(!state.join("machine/machine.qcow2").exists());
}

#[test]
fn no_cache_records_nothing() {
    let env = Env::new();
    assert_eq!(env.run(&["run", "--no-cache", "plan.json"], &[]).code, 0);
    assert_eq!(env.run(&["run", "--no-cache", "plan.json"], &[]).code, 0);
    assert_eq!(env.runs(), 2);
    assert!(env.path().join("artefact.txt").exists());
    assert!(env.ls().is_empty());
}

#[test]
fn a_cache_that_cannot_be_created_does_not_stop_the_test() {
    let env = Env::new();
    std::fs::write(
        env.path().join("cache"),
        "a file where the cache dir would be",
    )
    .unwrap();
    let run = env.run(&["run", "plan.json"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot create the result cache")
            && run.stderr.contains("running without it"),
        "{}",
        run.stderr
    );
    assert_eq!(env.runs(), 1);
    assert!(env.path().join("artefact.txt").exists());
}
