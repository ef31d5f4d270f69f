//! `testrig run` on inputs that never boot a VM: malformed plans (exit 2, naming the problem) and test scripts that
//! fail before touching a machine (exit 1, naming the line). Runs the real binary and a real python3.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn testrig(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_testrig"))
        .args(args)
        .current_dir(dir)
        .env("TESTRIG_CACHE_DIR", dir.join("cache"))
        .env("TESTRIG_STATE_DIR", dir.join("state"))
        .output()
        .expect("testrig runs")
}

/// A start script that must never run in these tests: it leaves a marker if it does.
fn write_start_script(dir: &Path, name: &str) {
    let path = dir.join(name);
    std::fs::write(
        &path,
        "#!/bin/sh\ntouch \"$(dirname \"$0\")/STARTED\"\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn run_plan(plan: &str) -> (i32, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    write_start_script(dir.path(), "run-machine-vm");
    std::fs::write(dir.path().join("plan.json"), plan).unwrap();
    let out = testrig(dir.path(), &["run", "plan.json"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr, dir)
}

fn assert_bad_input(plan: &str, expected: &str) {
    let (code, stderr, dir) = run_plan(plan);
    assert_eq!(code, 2, "plan {plan}\nstderr: {stderr}");
    assert!(
        stderr.contains(expected),
        "expected `{expected}` in: {stderr}"
    );
    assert!(
        !dir.path().join("STARTED").exists(),
        "a start script ran for a bad plan"
    );
}

const VM: &str = r#""machine": {"name": "machine", "start_script": "run-machine-vm"}"#;

#[test]
fn a_plan_file_whose_start_script_must_be_built_without_a_nix_names_both() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let plan = serde_json::json!({
        "schema": "testrig-plan/1",
        "name": "login",
        "test_script_text": "start_all()",
        "vms": {"server": {
            "name": "server",
            "start_script": format!("{}/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-vm/bin/run-server-vm", store.display()),
            "drv": format!("{}/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-vm.drv", store.display()),
        }},
    });
    std::fs::write(dir.path().join("plan.json"), plan.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_testrig"))
        .args(["run", "plan.json"])
        .current_dir(dir.path())
        .env("TESTRIG_CACHE_DIR", dir.path().join("cache"))
        .env("TESTRIG_NIX", dir.path().join("no-nix-here"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "1 start script (server) must be built from their derivations, but no nix was found"
        ) && stderr.contains("no-nix-here"),
        "{stderr}"
    );
}

#[test]
fn malformed_plans_exit_2_naming_the_problem() {
    assert_bad_input(
        r#"{"schema": "testrig-plan/1", "test_script_text": "pass"}"#,
        "missing field `vms`",
    );
    assert_bad_input(
        &format!(
            r#"{{"schema": "testrig-plan/1", "test_script_text": "pass", "global_timeout": "1h", "vms": {{{VM}}}}}"#
        ),
        "invalid type: string \"1h\", expected u64",
    );
    assert_bad_input(
        &format!(r#"{{"schema": "testrig-plan/7", "test_script_text": "pass", "vms": {{{VM}}}}}"#),
        "unsupported schema `testrig-plan/7`",
    );
    assert_bad_input(
        &format!(r#"{{"test_script_text": "pass", "vms": {{{VM}, {VM}}}}}"#),
        "duplicate machine name `machine`",
    );
    assert_bad_input(
        r#"{"test_script_text": "pass", "vms": {"machine": {"name": "machine", "start_script": "run-absent-vm"}}}"#,
        "machine `machine`: start script",
    );
    assert_bad_input(
        "{ not json",
        "invalid plan plan.json: key must be a string at line 1 column 3",
    );
}

#[test]
fn non_executable_start_script_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("run-machine-vm"), "#!/bin/sh\n").unwrap();
    std::fs::write(
        dir.path().join("plan.json"),
        format!(r#"{{"test_script_text": "pass", "vms": {{{VM}}}}}"#),
    )
    .unwrap();
    let out = testrig(dir.path(), &["run", "plan.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an executable file"));
}

#[test]
fn missing_plan_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = testrig(dir.path(), &["run", "absent.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read plan absent.json"));
}

fn script_plan(script: &str) -> String {
    let script = serde_json::to_string(script).unwrap();
    format!(r#"{{"test_script_text": {script}, "vms": {{{VM}}}}}"#)
}

#[test]
fn syntax_error_exits_1_with_its_line() {
    let (code, stderr, dir) = run_plan(&script_plan("x = 1\ny = 2\nif x = y:\n    pass\n"));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("File \"testScript\", line 3"), "{stderr}");
    assert!(stderr.contains("SyntaxError"), "{stderr}");
    assert!(!dir.path().join("STARTED").exists());
}

#[test]
fn exception_exits_1_with_its_line_and_only_script_frames() {
    let script = "def helper():\n    raise ValueError('boom')\n\nhelper()\n";
    let (code, stderr, _dir) = run_plan(&script_plan(script));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("File \"testScript\", line 4, in <module>"),
        "{stderr}"
    );
    assert!(
        stderr.contains("File \"testScript\", line 2, in helper"),
        "{stderr}"
    );
    assert!(stderr.contains("ValueError: boom"), "{stderr}");
    assert!(
        !stderr.contains("testrig_driver.py"),
        "driver frames leaked: {stderr}"
    );
}

#[test]
fn passing_script_without_machines_used_exits_0() {
    let (code, stderr, dir) = run_plan(&script_plan("t.assertEqual(machine.name, 'machine')\n"));
    assert_eq!(code, 0, "{stderr}");
    assert!(!dir.path().join("STARTED").exists());
}

#[test]
fn ocr_without_enable_ocr_fails_as_in_nixpkgs_before_booting() {
    let script = serde_json::to_string("machine.wait_for_text('login:')\n").unwrap();
    let plan =
        format!(r#"{{"schema": "testrig-plan/1", "test_script_text": {script}, "vms": {{{VM}}}}}"#);
    let (code, stderr, dir) = run_plan(&plan);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("OCR requested but enableOCR is false"),
        "{stderr}"
    );
    assert!(stderr.contains("testScript:1"), "{stderr}");
    assert!(!dir.path().join("STARTED").exists());
}

#[test]
fn ocr_without_tesseract_on_path_names_the_package() {
    // nixpkgs' driverConfiguration.json does not carry enableOCR: OCR is allowed and needs tesseract on PATH.
    let dir = tempfile::tempdir().unwrap();
    write_start_script(dir.path(), "run-machine-vm");
    // The test's Python by absolute path (the plan's `python`) and an empty PATH; no vlan, so that the run needs
    // no vde_switch from PATH.
    let python = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    let python = String::from_utf8(python.stdout).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(
        dir.path().join("plan.json"),
        format!(
            r#"{{"test_script_text": "machine.get_screen_text()\n", "python": {},
                "vms": {{"machine": {{"name": "machine", "start_script": "run-machine-vm", "vlans": []}}}}}}"#,
            serde_json::to_string(python.trim()).unwrap()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_testrig"))
        .args(["run", "plan.json"])
        .current_dir(dir.path())
        .env("TESTRIG_CACHE_DIR", dir.path().join("cache"))
        .env("TESTRIG_STATE_DIR", dir.path().join("state"))
        .env("PATH", &bin)
        .output()
        .expect("testrig runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("OCR requested but `tesseract` is not available"),
        "{stderr}"
    );
    assert!(stderr.contains("tesseract-ocr"), "{stderr}");
    assert!(!dir.path().join("STARTED").exists());
}

#[test]
fn a_start_script_that_fails_is_a_test_failure_naming_it() {
    let (code, stderr, dir) = run_plan(&script_plan("machine.succeed('true')\n"));
    assert_eq!(code, 1, "{stderr}");
    assert!(dir.path().join("STARTED").exists());
    assert!(
        stderr.contains("run-machine-vm exited (exit status: 1) before QEMU connected"),
        "{stderr}"
    );
    assert!(stderr.contains("testScript:1"), "{stderr}");
}

#[test]
fn driver_configuration_with_legacy_flags() {
    // The pre-26.05 driver's flags: --start-scripts, --vlans and a positional test script.
    let dir = tempfile::tempdir().unwrap();
    write_start_script(dir.path(), "run-web-vm");
    std::fs::write(
        dir.path().join("script.py"),
        "t.assertEqual(web.name, 'web')\nt.assertEqual([v.nr for v in vlans], [1])\n",
    )
    .unwrap();
    let out = testrig(
        dir.path(),
        &["script.py", "--start-scripts", "run-web-vm", "--vlans", "1"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The old wrapper's environment; `vlans=` (a test without vlans) is no vlan.
    std::fs::write(dir.path().join("novlan.py"), "t.assertEqual(vlans, [])\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_testrig"))
        .current_dir(dir.path())
        .env("TESTRIG_CACHE_DIR", dir.path().join("cache"))
        .env("startScripts", "run-web-vm")
        .env("vlans", "")
        .env("testScript", "novlan.py")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn vm_start_scripts_without_names_are_named_by_their_file_names() {
    // nixpkgs' driver of 2025-26 takes --vm-start-scripts alone and names each machine from `run-<name>-vm`.
    let dir = tempfile::tempdir().unwrap();
    write_start_script(dir.path(), "run-server-vm");
    write_start_script(dir.path(), "run-client-vm");
    write_start_script(dir.path(), "start-a");
    std::fs::write(
        dir.path().join("script.py"),
        "t.assertEqual(sorted(m.name for m in machines), ['client', 'server'])\n\
         t.assertEqual(server.start_command.machine_name, 'server')\n",
    )
    .unwrap();
    let flags = [
        "script.py",
        "--vm-start-scripts",
        "run-server-vm",
        "run-client-vm",
    ];
    let out = testrig(dir.path(), &flags);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let refused = |scripts: &[&str], expected: &str| {
        let mut args = vec!["script.py", "--vm-start-scripts"];
        args.extend_from_slice(scripts);
        let out = testrig(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    };
    refused(
        &["run-server-vm", "start-a"],
        "cannot name the machine of start script start-a: without --vm-names, a start script must be named \
         run-<name>-vm",
    );
    refused(
        &["run-server-vm", "./run-server-vm"],
        "two machines are named `server`",
    );
    assert!(!dir.path().join("STARTED").exists());
}

#[test]
fn driver_flags_of_2025_name_the_machines() {
    // --vm-names with --vm-start-scripts (or the wrapper's env vars): the names need not match the file names.
    let dir = tempfile::tempdir().unwrap();
    write_start_script(dir.path(), "start-a");
    write_start_script(dir.path(), "start-b");
    std::fs::write(
        dir.path().join("script.py"),
        "t.assertEqual(sorted(m.name for m in machines), ['client', 'server'])\nt.assertEqual(server.name, 'server')\n",
    )
    .unwrap();
    let flags = [
        "script.py",
        "--vm-names",
        "server",
        "client",
        "--vm-start-scripts",
        "start-a",
        "start-b",
    ];
    let out = testrig(dir.path(), &flags);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(env!("CARGO_BIN_EXE_testrig"))
        .current_dir(dir.path())
        .env("TESTRIG_CACHE_DIR", dir.path().join("cache"))
        .env("vmNames", "server client")
        .env("vmStartScripts", "start-a start-b")
        // Empty variables are empty lists, as nixpkgs' `.split()` makes them.
        .env("containerNames", "")
        .env("containerStartScripts", "")
        .env("testScript", "script.py")
        .args(["--rerun"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let refused = |extra: &[&str], expected: &str| {
        let mut args = vec![
            "script.py",
            "--vm-names",
            "server",
            "--vm-start-scripts",
            "start-a",
        ];
        args.extend_from_slice(extra);
        let out = testrig(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    };
    refused(
        &["start-b"],
        "the number of vm names and vm start scripts must be the same",
    );
    refused(
        &["--container-names", "box"],
        "systemd-nspawn containers are not supported yet (box)",
    );
    assert!(!dir.path().join("STARTED").exists());
}

#[test]
fn what_the_script_prints_reaches_stdout_and_the_cached_log() {
    let dir = tempfile::tempdir().unwrap();
    write_start_script(dir.path(), "run-machine-vm");
    std::fs::write(
        dir.path().join("plan.json"),
        script_plan(
            "print('hello from the script')\nimport sys\nprint('to stderr', file=sys.stderr)\n",
        ),
    )
    .unwrap();
    let out = testrig(dir.path(), &["run", "plan.json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from the script"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("to stderr"));
    let entries = dir.path().join("cache/entries");
    let entry = std::fs::read_dir(&entries)
        .unwrap()
        .flatten()
        .next()
        .expect("a cache entry");
    let log = std::fs::read_to_string(entry.path().join("log.txt")).unwrap();
    assert!(
        log.contains("hello from the script") && log.contains("to stderr"),
        "{log}"
    );
}

#[test]
fn a_cached_pass_is_answered_after_its_store_start_script_is_gone() {
    // As after `nix-collect-garbage` removed a passed test's VM. A store path stands for its derivation in the
    // key, so the answer needs no start script. (Local scripts are keyed by content: a missing one is a miss.)
    let store = Path::new("/nix/store");
    let dir = tempfile::Builder::new().prefix("testrig-cli-test-").tempdir_in(store).expect(
        "these tests run as root on a machine with /nix/store (tests/env/bootstrap.sh makes it)",
    );
    write_start_script(dir.path(), "run-machine-vm");
    let plan = dir.path().join("plan.json");
    let start = dir.path().join("run-machine-vm");
    std::fs::write(
        &plan,
        format!(
            r#"{{"test_script_text": "pass", "vms": {{"machine": {{"name": "machine", "start_script": "{}"}}}}}}"#,
            start.display()
        ),
    )
    .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let first = testrig(scratch.path(), &["run", plan.to_str().unwrap()]);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    std::fs::remove_file(&start).unwrap();
    let out = testrig(scratch.path(), &["run", plan.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("passed (cached, "), "{text}");
    // Running it for real still names the missing script.
    let out = testrig(scratch.path(), &["run", "--rerun", plan.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("machine `machine`: start script"));
}

/// `testrig ARGS` in `dir` with `input` on its stdin (as typed at a prompt), its own result cache in `dir/cache`.
fn run_with_input(dir: &Path, args: &[&str], input: &[u8]) -> (Option<i32>, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_testrig"))
        .args(args)
        .current_dir(dir)
        .env("TESTRIG_CACHE_DIR", dir.join("cache"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A scratch dir with `plan.json`, a plan of one machine whose start script must not run, and `script`.
fn dir_with_plan(script: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_start_script(dir.path(), "run-machine-vm");
    std::fs::write(dir.path().join("plan.json"), script_plan(script)).unwrap();
    dir
}

fn cache_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("cache/entries")).map_or(true, |mut d| d.next().is_none())
}

#[test]
fn interactive_mode_gives_a_prompt_with_the_test_globals_and_caches_nothing() {
    let dir = dir_with_plan("raise SystemExit(3)\n");
    // The script is not run unless asked; an exception at the prompt does not end the session.
    let (code, stdout, stderr) = run_with_input(
        dir.path(),
        &["run", "-I", "plan.json"],
        b"print('name:', machine.name, len(machines))\n1/0\nprint('still here')\n",
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("name: machine 1") && stdout.contains("still here"),
        "{stdout}\n{stderr}"
    );
    assert!(stderr.contains("ZeroDivisionError"), "{stderr}");
    assert!(!dir.path().join("STARTED").exists());
    assert!(cache_is_empty(dir.path()));
}

#[test]
fn debug_on_failure_opens_a_prompt_that_stops_the_global_timeout_and_the_run_still_fails() {
    let dir = tempfile::tempdir().unwrap();
    write_start_script(dir.path(), "run-machine-vm");
    let script = serde_json::to_string("print('before')\nraise RuntimeError('boom')\n").unwrap();
    std::fs::write(
        dir.path().join("plan.json"),
        format!(r#"{{"test_script_text": {script}, "global_timeout": 2, "vms": {{{VM}}}}}"#),
    )
    .unwrap();
    // Longer at the prompt than the whole test may take: the prompt's time is not the test's.
    let (code, stdout, stderr) = run_with_input(
        dir.path(),
        &["run", "--debug-on-failure", "plan.json"],
        b"import time; time.sleep(3)\nprint('exc is', repr(exc), machine.name)\npm()\nq\n",
    );
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("before") && stdout.contains("exc is RuntimeError('boom') machine"),
        "{stdout}\n{stderr}"
    );
    // The post-mortem debugger starts on the script's line.
    assert!(
        stdout.contains("-> raise RuntimeError('boom')") && stdout.contains("(Pdb)"),
        "{stdout}\n{stderr}"
    );
    assert!(stderr.contains("a debugging prompt is open"), "{stderr}");
    assert!(
        stderr.contains("testScript:2: RuntimeError: boom"),
        "{stderr}"
    );
    assert!(!stderr.contains("global timeout of"), "{stderr}");
    assert!(cache_is_empty(dir.path()));
}

#[test]
fn breakpoint_stops_where_python_has_the_terminal_and_is_skipped_elsewhere() {
    let dir = dir_with_plan("x = 41 + 1\nbreakpoint()\nprint('after', x)\n");
    // --debug-on-failure gives Python the terminal: pdb stops at the line after breakpoint().
    let (code, stdout, stderr) = run_with_input(
        dir.path(),
        &["run", "--debug-on-failure", "plan.json"],
        b"p x * 10\nc\n",
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("(Pdb) 420") && stdout.contains("after 42"),
        "{stdout}"
    );

    // A run without a terminal (as in a Nix build) goes on, saying where the breakpoint was.
    let (code, stdout, stderr) = run_with_input(dir.path(), &["run", "--rerun", "plan.json"], b"");
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("after 42"), "{stdout}");
    assert!(
        stderr.contains("breakpoint() at testScript:2 skipped"),
        "{stderr}"
    );
}

#[test]
fn the_cache_is_trimmed_to_its_size_cap_after_each_run() {
    let dir = tempfile::tempdir().unwrap();
    write_start_script(dir.path(), "run-machine-vm");
    let entries = dir.path().join("cache/entries");
    let count = || {
        std::fs::read_dir(&entries)
            .map(|d| d.flatten().count())
            .unwrap_or(0)
    };
    for i in 0..3 {
        std::fs::write(
            dir.path().join("plan.json"),
            script_plan(&format!("pass  # {i}\n")),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_testrig"))
            .args(["run", "plan.json"])
            .current_dir(dir.path())
            .env("TESTRIG_CACHE_DIR", dir.path().join("cache"))
            .env("TESTRIG_CACHE_MAX_SIZE", "1")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Over a 1-byte cap, only the entry of the run that just finished (locked while recording) is left.
        assert_eq!(count(), 1, "after run {i}");
    }
    // Without the cap, entries accumulate.
    std::fs::write(dir.path().join("plan.json"), script_plan("pass  # other\n")).unwrap();
    let out = testrig(dir.path(), &["run", "plan.json"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(count(), 2);
}

#[test]
fn several_tests_end_with_a_summary_naming_the_failures() {
    let dir = tempfile::tempdir().unwrap();
    write_start_script(dir.path(), "run-machine-vm");
    for (name, script) in [("good", "pass"), ("bad", "raise ValueError('no')")] {
        let plan =
            format!(r#"{{"name": "{name}", "test_script_text": "{script}", "vms": {{{VM}}}}}"#);
        std::fs::write(dir.path().join(format!("{name}.json")), plan).unwrap();
    }
    let out = testrig(dir.path(), &["run", "good.json", "bad.json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("testrig: 1 of 2 tests passed; not passed: bad"),
        "{stderr}"
    );
}

#[test]
fn tests_run_side_by_side_each_with_its_own_log() {
    // Side by side, proven without a clock: each test marks that it started and then waits (up to a minute) for the
    // other's mark, which it can only see if the two run at once.
    let dir = tempfile::tempdir().unwrap();
    write_start_script(dir.path(), "run-machine-vm");
    for (name, other) in [("alpha", "beta"), ("beta", "alpha")] {
        let marks = dir.path().display();
        let script = format!(
            "import os, time\nlog.info('{name} starts')\nopen('{marks}/{name}.started', 'w').close()\n\
             deadline = time.monotonic() + 60\n\
             while not os.path.exists('{marks}/{other}.started'):\n\
             \x20   assert time.monotonic() < deadline, '{other} never ran beside {name}'\n\
             \x20   time.sleep(0.05)\n\
             print('{name} printed')\n"
        );
        let plan = format!(
            r#"{{"name": "{name}", "test_script_text": {}, "vms": {{{VM}}}}}"#,
            serde_json::to_string(&script).unwrap()
        );
        std::fs::write(dir.path().join(format!("{name}.json")), plan).unwrap();
    }
    let out = testrig(dir.path(), &["run", "alpha.json", "beta.json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("[alpha] alpha starts") && stderr.contains("[beta] beta starts"),
        "{stderr}"
    );
    assert!(stdout.contains("[alpha] alpha printed"), "{stdout}");
    // Each cache entry's log has its own test's lines only.
    let entries = dir.path().join("cache/entries");
    let mut logs: Vec<String> = std::fs::read_dir(&entries)
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path().join("log.txt")).unwrap())
        .collect();
    logs.sort();
    assert_eq!(logs.len(), 2);
    assert!(
        logs[0].contains("alpha starts") && logs[0].contains("alpha printed"),
        "{}",
        logs[0]
    );
    assert!(
        !logs[0].contains("beta"),
        "alpha's log has beta's lines: {}",
        logs[0]
    );
    assert!(
        logs[1].contains("beta starts") && !logs[1].contains("alpha"),
        "{}",
        logs[1]
    );

    // -j 1: one after the other, seen in the order of their marks in one file: no start between another's start
    // and end.
    let events = dir.path().join("events");
    for name in ["first", "second"] {
        let script = format!(
            "import time\nopen('{e}', 'a').write('{name} start\\n')\ntime.sleep(0.3)\n\
             open('{e}', 'a').write('{name} end\\n')\n",
            e = events.display()
        );
        let plan = format!(
            r#"{{"name": "{name}", "test_script_text": {}, "vms": {{{VM}}}}}"#,
            serde_json::to_string(&script).unwrap()
        );
        std::fs::write(dir.path().join(format!("{name}.json")), plan).unwrap();
    }
    let out = testrig(dir.path(), &["run", "-j", "1", "first.json", "second.json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let order = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<&str> = order.lines().collect();
    assert_eq!(lines.len(), 4, "{order}");
    for pair in lines.chunks(2) {
        let name = pair[0]
            .strip_suffix(" start")
            .unwrap_or_else(|| panic!("-j 1 overlapped: {order}"));
        assert_eq!(pair[1], format!("{name} end"), "-j 1 overlapped: {order}");
    }
}
