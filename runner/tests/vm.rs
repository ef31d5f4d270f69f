//! End-to-end tests that boot the Debian test guest (tests/guest) under the real runner. They need the guest built
//! (`tests/guest/build.sh`) and QEMU, so they are ignored by a plain `cargo test`; `tests/run-all` runs them with
//! `--ignored --test-threads=1` (two cores fit about two guests at once).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn testrig_command(args: &[&str], scratch: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_testrig"));
    command
        .args(args)
        .current_dir(repo())
        .env("TESTRIG_CACHE_DIR", scratch.join("cache"))
        .env("TESTRIG_STATE_DIR", scratch.join("state"))
        .env_remove("QEMU_KERNEL_PARAMS");
    command
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let scratch = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut command = testrig_command(args, scratch.path());
    command.envs(env.iter().copied());
    let out = command.output().expect("testrig runs");
    (out, started.elapsed())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// PIDs named in the runner's `QEMU running (pid N)` lines.
fn qemu_pids(log: &str) -> Vec<i32> {
    log.lines()
        .filter_map(|l| l.split("QEMU running (pid ").nth(1))
        .filter_map(|rest| rest.trim_end_matches(')').parse().ok())
        .collect()
}

fn alive(pid: i32) -> bool {
    // A zombie is as good as gone: it holds no resources but its PID, and init reaps it.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn children_of(parent: i32) -> BTreeSet<i32> {
    let mut children = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if fields.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(parent) {
            children.insert(pid);
        }
    }
    children
}

fn assert_all_gone(pids: &BTreeSet<i32>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left: Vec<_> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes still alive after {within:?}: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "boots VMs: run by tests/run-all"]
fn two_node_example_passes_with_junit_and_leaves_nothing_running() {
    let out_dir = tempfile::tempdir().unwrap();
    let junit = out_dir.path().join("junit.xml");
    let (out, took) = run(
        &[
            "run",
            "tests/examples/two-node/plan.json",
            "-o",
            out_dir.path().to_str().unwrap(),
            "--junit-xml",
            junit.to_str().unwrap(),
        ],
        &[],
    );
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("two-node: passed in"), "{log}");
    assert!(log.contains("server # "), "serial lines are in the log");
    assert!(
        log.contains("(finished: waiting for unit nginx.service, in "),
        "{log}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("name=\"client reaches the server by name over vlan 1\""),
        "{xml}"
    );
    assert!(xml.contains("failures=\"0\""), "{xml}");
    let pids: BTreeSet<i32> = qemu_pids(&log).into_iter().collect();
    assert_eq!(pids.len(), 2, "{log}");
    assert_all_gone(&pids, Duration::from_secs(1));
    eprintln!("two-node example: {took:?}");
}

#[test]
#[ignore = "boots VMs: run by tests/run-all"]
fn protocol_details_against_a_real_guest() {
    let (out, _) = run(&["run", "tests/vm/protocol/plan.json"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
#[ignore = "boots VMs: run by tests/run-all"]
fn ocr_reads_back_a_line_typed_on_tty1() {
    // tests/vm/ocr/test.py logs in on tty1 with send_chars, runs a command there and reads its output back with
    // wait_for_text, get_screen_text and get_screen_text_variants (real tesseract and ImageMagick on the host).
    let out_dir = tempfile::tempdir().unwrap();
    let (out, took) = run(
        &[
            "run",
            "tests/vm/ocr/plan.json",
            "-o",
            out_dir.path().to_str().unwrap(),
        ],
        &[],
    );
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.contains("waiting for TYPED\\s*ON\\s*TTY to appear on screen"),
        "{log}"
    );
    assert!(out_dir.path().join("tty1.png").is_file());
    eprintln!("ocr: {took:?}");
}

#[test]
#[ignore = "boots VMs: run by tests/run-all"]
fn failing_example_exits_1_naming_machine_command_and_line() {
    let (out, _) = run(&["run", "tests/examples/failing/plan.json"], &[]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("failing/test.py\", line 4, in <module>"),
        "{log}"
    );
    assert!(
        log.contains(
            "machine: command `test -e /etc/this-file-does-not-exist` failed (exit code 1)"
        ),
        "{log}"
    );
    assert!(log.contains("error: failing: failed after"), "{log}");
}

#[test]
#[ignore = "boots VMs: run by tests/run-all"]
fn kernel_panic_at_boot_fails_fast() {
    // No usable init or root: the kernel panics at once, `panic=-1` reboots, `-no-reboot` makes QEMU exit.
    let (out, took) = run(
        &["run", "tests/examples/failing/plan.json"],
        &[(
            "QEMU_KERNEL_PARAMS",
            "rdinit=/nonexistent root=/dev/nonexistent",
        )],
    );
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("before the guest's backdoor shell started"),
        "{log}"
    );
    assert!(took < Duration::from_secs(120), "took {took:?}");
}

#[test]
#[ignore = "boots VMs: run by tests/run-all"]
fn hung_boot_fails_at_the_boot_deadline() {
    // The guest boots but its backdoor never starts: the runner gives up at --boot-timeout, not never.
    let (out, took) = run(
        &[
            "run",
            "--boot-timeout",
            "45",
            "tests/examples/failing/plan.json",
        ],
        &[("QEMU_KERNEL_PARAMS", "systemd.mask=backdoor.service")],
    );
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("did not start its backdoor shell within 45s"),
        "{log}"
    );
    assert!(took < Duration::from_secs(90), "took {took:?}");
    let pids: BTreeSet<i32> = qemu_pids(&log).into_iter().collect();
    assert_all_gone(&pids, Duration::from_secs(1));
}

/// Starts the two-node example, waits until both QEMUs run, sends `signal` to the runner, and checks that every
/// child it had (QEMUs, vde_switch, Python) is gone.
fn signal_mid_run(signal: i32) -> Option<i32> {
    let scratch = tempfile::tempdir().unwrap();
    let mut child: Child = testrig_command(
        &["run", "tests/examples/two-node/plan.json"],
        scratch.path(),
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let runner = child.id() as i32;
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut started = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while started < 2 {
        let line = lines.next().expect("runner log ended early").unwrap();
        started += qemu_pids(&line).len();
        assert!(Instant::now() < deadline, "QEMUs did not start");
    }
    // Let the guests get into their boot.
    std::thread::sleep(Duration::from_secs(3));
    let children = children_of(runner);
    assert!(
        children.len() >= 4,
        "expected python, vde_switch and two QEMUs, found {children:?}"
    );
    unsafe { libc_kill(runner, signal) };
    // Keep draining the log so the runner never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    let status = child.wait().unwrap();
    assert_all_gone(&children, Duration::from_secs(15));
    status.code()
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
#[ignore = "boots VMs: run by tests/run-all"]
fn sigkill_of_the_runner_leaves_no_process() {
    assert_eq!(signal_mid_run(9), None);
}

#[test]
#[ignore = "boots VMs: run by tests/run-all"]
fn sigint_tears_everything_down() {
    assert_eq!(signal_mid_run(2), Some(130));
}

/// A one-machine test in `dir` whose start script wraps the one-node example's; `variant` changes the script's
/// content (and so the node's identity) without changing what it boots.
fn one_machine_plan(dir: &Path, script: &str, variant: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let start = dir.join("run-machine-vm");
    let example = repo().join("tests/examples/one-node/run-machine-vm");
    std::fs::write(
        &start,
        format!(
            "#!/bin/sh\n# variant {variant}\nexec {} \"$@\"\n",
            example.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&start, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("test.py"), script).unwrap();
    let plan = dir.join("plan.json");
    std::fs::write(
        &plan,
        r#"{"schema": "testrig-plan/1", "name": "kept", "test_script": "test.py",
            "vms": {"machine": {"name": "machine", "start_script": "run-machine-vm"}}}"#,
    )
    .unwrap();
    plan
}

fn run_in(scratch: &Path, args: &[&str]) -> Output {
    testrig_command(args, scratch)
        .output()
        .expect("testrig runs")
}

#[test]
#[ignore = "boots VMs: run by tests/run-all"]
fn a_passed_test_is_answered_from_the_cache_until_asked_to_rerun() {
    let scratch = tempfile::tempdir().unwrap();
    let plan = "tests/examples/one-node/plan.json";
    let first = run_in(scratch.path(), &["run", plan]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_eq!(qemu_pids(&stderr(&first)).len(), 1);

    // Again, and with another Python interpreter (a driver change): answered from the cache, nothing booted.
    for args in [
        &["run", plan][..],
        &["run", "--python", "/usr/bin/python3", plan][..],
    ] {
        let started = Instant::now();
        let again = run_in(scratch.path(), args);
        let took = started.elapsed();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&again.stdout),
            stderr(&again)
        );
        assert_eq!(again.status.code(), Some(0), "{log}");
        assert!(log.contains("one-node: passed (cached, "), "{log}");
        assert!(qemu_pids(&log).is_empty(), "a cached run booted: {log}");
        assert!(took < Duration::from_secs(2), "cached answer took {took:?}");
    }

    let rerun = run_in(scratch.path(), &["run", "--rerun", plan]);
    assert_eq!(rerun.status.code(), Some(0), "{}", stderr(&rerun));
    assert_eq!(qemu_pids(&stderr(&rerun)).len(), 1, "--rerun must boot");
}

#[test]
#[ignore = "boots VMs: run by tests/run-all"]
fn kept_state_survives_and_a_changed_node_starts_from_a_fresh_disk() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = "machine.succeed('echo kept > /root/state-file && sync')\nmachine.shutdown()\n";
    let plan = one_machine_plan(dir.path(), write, 1);
    let plan = plan.to_str().unwrap();
    let out = run_in(scratch.path(), &["run", "-K", plan]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let read = "t.assertEqual(machine.succeed('cat /root/state-file'), 'kept\\n')\n";
    one_machine_plan(dir.path(), read, 1);
    let out = run_in(scratch.path(), &["run", "-K", plan]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the file did not survive: {}",
        stderr(&out)
    );

    // A changed node: the old disk is not reused, and the run says so.
    let absent = "machine.fail('test -e /root/state-file')\n";
    one_machine_plan(dir.path(), absent, 2);
    let out = run_in(scratch.path(), &["run", "-K", plan]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.contains("machine") && log.contains("changed"),
        "no message about the changed node: {log}"
    );
}

#[test]
#[ignore = "boots VMs: run by tests/run-all"]
fn concurrent_runs_of_one_test_boot_once_and_a_changed_script_runs_again() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plan = one_machine_plan(dir.path(), "machine.succeed('true')\n", 1);
    let plan = plan.to_str().unwrap();

    // Two runs of the same test at once: one boots; the other waits for it and answers from its result.
    let spawn = || {
        testrig_command(&["run", plan], scratch.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    let outputs = [
        first.wait_with_output().unwrap(),
        second.wait_with_output().unwrap(),
    ];
    let logs: Vec<String> = outputs
        .iter()
        .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(o)))
        .collect();
    for (out, log) in outputs.iter().zip(&logs) {
        assert_eq!(out.status.code(), Some(0), "{log}");
    }
    let boots: usize = logs.iter().map(|l| qemu_pids(l).len()).sum();
    assert_eq!(boots, 1, "expected exactly one boot: {logs:#?}");
    assert!(
        logs.iter().any(|l| l.contains("kept: passed (cached, ")),
        "{logs:#?}"
    );

    // A changed test script is another key: it runs (and boots) again.
    one_machine_plan(
        dir.path(),
        "machine.succeed('true')\nmachine.succeed('true')\n",
        1,
    );
    let out = run_in(scratch.path(), &["run", plan]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        qemu_pids(&stderr(&out)).len(),
        1,
        "a changed script must run: {}",
        stderr(&out)
    );
}

#[test]
#[ignore = "boots VMs: run by tests/run-all"]
fn two_one_node_tests_boot_side_by_side() {
    let (out, took) = run(
        &[
            "run",
            "tests/examples/one-node/plan.json",
            "tests/vm/protocol/plan.json",
        ],
        &[],
    );
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("testrig: 2 of 2 tests passed"), "{log}");
    // Both QEMUs were up before either test finished.
    let first_end = log
        .lines()
        .position(|l| l.contains("one-node: passed in") || l.contains("protocol: passed in"))
        .expect("a pass line");
    let boots_before_end = log
        .lines()
        .take(first_end)
        .filter(|l| l.contains("QEMU running (pid "))
        .count();
    assert_eq!(boots_before_end, 2, "the tests did not overlap:\n{log}");
    eprintln!("two one-node tests side by side: {took:?}");
}

#[test]
#[ignore = "boots VMs: run by tests/run-all"]
fn a_nixos_style_start_script_gets_tcg_where_kvm_does_not_really_work() {
    // NixOS start scripts leave the accelerator to QEMU (`-machine type=q35,accel=kvm:tcg`), which takes any
    // /dev/kvm that opens. This one is that, without a guest (QEMU sits in the firmware): the monitor answers as
    // soon as QEMU has connected, and says which accelerator QEMU picked.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let start = dir.path().join("run-machine-vm");
    std::fs::write(
        &start,
        "#!/bin/sh\nexec qemu-system-x86_64 -machine type=q35,accel=kvm:tcg -cpu max -m 64 -display none $QEMU_OPTS \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&start, std::fs::Permissions::from_mode(0o755)).unwrap();
    let kvm_works = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
        && std::fs::read_to_string("/proc/cpuinfo")
            .unwrap()
            .split_whitespace()
            .any(|flag| flag == "vmx" || flag == "svm");
    let expected = if kvm_works { "enabled" } else { "disabled" };
    std::fs::write(
        dir.path().join("test.py"),
        format!(
            "machine.start()\nanswer = machine.send_monitor_command('info kvm')\nprint('MONITOR', answer)\n\
             assert 'kvm support: {expected}' in answer, answer\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("plan.json"),
        r#"{"schema": "testrig-plan/1", "name": "accel", "test_script": "test.py", "global_timeout": 60,
            "vms": {"machine": {"name": "machine", "start_script": "run-machine-vm"}}}"#,
    )
    .unwrap();
    let plan = dir.path().join("plan.json");
    let out = run_in(dir.path(), &["run", "--no-cache", plan.to_str().unwrap()]);
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains(&format!("kvm support: {expected}")), "{log}");

    // TESTRIG_ACCEL=tcg forces TCG whatever the host has.
    let out = testrig_command(&["run", "--no-cache", plan.to_str().unwrap()], dir.path())
        .env("TESTRIG_ACCEL", "tcg")
        .output()
        .unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    if kvm_works {
        assert_eq!(out.status.code(), Some(1), "{log}");
        assert!(log.contains("kvm support: disabled"), "{log}");
    } else {
        assert_eq!(out.status.code(), Some(0), "{log}");
    }
}

#[test]
#[ignore = "boots VMs: run by tests/run-all"]
fn send_console_and_console_interact_reach_the_serial_console() {
    // What is typed to console_interact() reaches the guest's ttyS0 (QEMU's stdin, `-serial stdio`), as does
    // send_console(). --debug-on-failure gives Python the terminal, here a pipe.
    use std::io::Write;
    let scratch = tempfile::tempdir().unwrap();
    let plan = one_machine_plan(
        scratch.path(),
        "machine.succeed('stty -F /dev/ttyS0 -echo; (head -c 12 /dev/ttyS0 > /tmp/got) >/dev/null 2>&1 &')\n\
         machine.console_interact()\n\
         machine.send_console('world\\n')\n\
         machine.wait_until_succeeds('test $(wc -c < /tmp/got) = 12', timeout=60)\n\
         t.assertEqual(machine.succeed('cat /tmp/got'), 'hello\\nworld\\n')\n",
        9,
    );
    let mut child = testrig_command(
        &[
            "run",
            "--debug-on-failure",
            "--no-cache",
            plan.to_str().unwrap(),
        ],
        scratch.path(),
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("Terminal is ready"), "{log}");
}

/// A test script in the style of today's nixpkgs driver (mid-2026): durations as `timedelta`, the Machine
/// attributes scripts read, renamed keywords; bare numbers still work and warn.
const TODAYS_SCRIPT: &str = r#"
from datetime import timedelta
start_all()
machine.wait_for_unit("multi-user.target", timeout=timedelta(minutes=5))
t.assertTrue(machine.booted)
t.assertTrue(machine.connected)
t.assertIsInstance(machine.pid, int)
t.assertEqual(machine.process.pid, machine.pid)
t.assertIsNone(machine.process.poll())
t.assertTrue(machine.state_dir.is_dir())
t.assertTrue(machine.shell_path.exists())
t.assertEqual(machine.qmp_path, machine.state_dir / "qmp")
t.assertEqual(machine.start_command.machine_name, "machine")
t.assertFalse(machine.keep_machine_state)
t.assertEqual(machine.succeed("echo hi", timeout=timedelta(seconds=60)), "hi\n")
t.assertEqual(machine.execute("exit 3", timeout=timedelta(seconds=60)), (3, ""))
machine.sleep(timedelta(milliseconds=100))
machine.sleep(secs=0.1)
machine.wait_for_file("/etc/hostname", timeout=timedelta(seconds=60))
machine.wait_until_succeeds("touch /tmp/ok", timeout=timedelta(seconds=60))
machine.wait_until_fails("test -e /tmp/missing", timeout=timedelta(seconds=60))
retry(lambda last: machine.succeed("test -e /tmp/ok") == "", timeout=timedelta(seconds=30))

@polling_condition(interval=timedelta(seconds=1))
def shell_answers():
    machine.succeed("true")

with shell_answers:
    machine.succeed("true", timeout=timedelta(seconds=30))
machine.succeed("true", timeout=30)
try:
    machine.succeed("true", timeout=True)
except TypeError as e:
    log.info(f"refused as nixpkgs does: {e}")
else:
    raise Exception("timeout=True was taken")
machine.shutdown()
t.assertFalse(machine.booted)
t.assertEqual(machine.process.returncode, 0)
"#;

#[test]
#[ignore = "boots VMs: run by tests/run-all"]
fn todays_test_scripts_run_through_config_and_through_unnamed_vm_start_scripts() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let start = repo().join("tests/examples/one-node/run-machine-vm");
    // A start script named like NixOS's, so that --vm-start-scripts alone names the machine.
    let named = dir.join("bin/run-machine-vm");
    std::fs::create_dir_all(named.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&start, &named).unwrap();
    let script = dir.join("test-script");
    std::fs::write(&script, TODAYS_SCRIPT).unwrap();
    let config = dir.join("driverConfiguration.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "vms": {"machine": {"name": "machine", "start_script": named}},
            "containers": {},
            "vlans": [1],
            "global_timeout": 900,
            "enable_ssh_backdoor": false,
            "test_script": script,
        })
        .to_string(),
    )
    .unwrap();
    let through_config = ["run", "--no-cache", "--config", config.to_str().unwrap()];
    let through_flags = [
        "run",
        "--no-cache",
        script.to_str().unwrap(),
        "--vm-start-scripts",
        named.to_str().unwrap(),
        "--vlans",
        "1",
    ];
    for args in [&through_config[..], &through_flags[..]] {
        let out = run_in(dir, args);
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert_eq!(out.status.code(), Some(0), "{args:?}: {log}");
        assert!(
            log.contains("refused as nixpkgs does: expected a duration, got bool: True"),
            "{log}"
        );
        // The bare number warns once, naming the script's line, as nixpkgs' driver warns.
        assert_eq!(
            log.matches("succeed(): passing a bare int/float as a duration is deprecated")
                .count(),
            1,
            "{log}"
        );
        assert!(
            log.contains("sleep(): The 'secs' argument is deprecated"),
            "{log}"
        );
        for pid in qemu_pids(&log) {
            assert!(!alive(pid), "QEMU {pid} outlived the run");
        }
    }
}

#[test]
#[ignore = "boots VMs: run by tests/run-all"]
fn a_bad_duration_fails_the_test_cleanly_with_nixpkgs_type_error() {
    let scratch = tempfile::tempdir().unwrap();
    let plan = one_machine_plan(
        scratch.path(),
        "start_all()\nmachine.wait_for_unit('multi-user.target', timeout='5')\n",
        10,
    );
    let out = run_in(
        scratch.path(),
        &["run", "--no-cache", plan.to_str().unwrap()],
    );
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("TypeError: expected a timedelta, int, or float duration, got str"),
        "{log}"
    );
    assert!(log.contains("test.py:2"), "{log}");
    let pids = qemu_pids(&log);
    assert!(!pids.is_empty(), "start_all() started no QEMU: {log}");
    for pid in pids {
        assert!(!alive(pid), "QEMU {pid} outlived the run");
    }
}

/// Runs `script` as the one-machine test of `one_machine_plan` (a fresh result cache, so it always runs) and
/// returns the run's log after checking it passed.
fn run_script_passes(script: &str) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let plan = one_machine_plan(scratch.path(), script, 11);
    let out = run_in(
        scratch.path(),
        &["run", "--no-cache", plan.to_str().unwrap()],
    );
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{log}");
    log
}

#[test]
#[ignore = "boots VMs: run by tests/run-all"]
fn wait_for_qmp_event_sees_the_shutdown_of_a_poweroff_after_qemu_exited() {
    // The events are read from the QMP connection made when QEMU started, and stay there after QEMU exits: the
    // script waits for the exit first, then asks for the event. Once they are all read, asking again is an error at
    // once, not a ten-minute wait.
    let log = run_script_passes(
        "import datetime\n\
         machine.succeed('true')\n\
         machine.execute('poweroff', check_return=False)\n\
         machine.wait_for_shutdown()\n\
         seen = []\n\
         def is_shutdown(event):\n    seen.append(event['event'])\n    return event['event'] == 'SHUTDOWN'\n\
         event = machine.wait_for_qmp_event(is_shutdown, timeout=datetime.timedelta(minutes=2))\n\
         print('QMP-EVENTS', seen, event)\n\
         assert event['data']['guest'] is True, event\n\
         try:\n    machine.wait_for_qmp_event(lambda e: False, timeout=datetime.timedelta(minutes=5))\n\
         except Exception as e:\n    print('AFTER-THE-LAST', type(e).__name__, e)\n\
         else:\n    raise AssertionError('an event after the last one')\n",
    );
    assert!(log.contains("QMP-EVENTS"), "{log}");
    assert!(log.contains("'event': 'SHUTDOWN'"), "{log}");
    assert!(
        log.contains("AFTER-THE-LAST MachineError machine: no more QMP events can come"),
        "{log}"
    );
}

#[test]
#[ignore = "boots VMs: run by tests/run-all"]
fn create_machine_boots_a_start_command_and_leaves_no_qemu() {
    // A node made inside the script from a NixOS-style start script (with a vlan, so QEMU_VDE_SOCKET_1 must reach
    // it), run as a shell command line (`exec ...`), named from run-<name>-vm. The plan's own machine is never
    // started, so only the created one boots.
    let dir = tempfile::tempdir().unwrap();
    let made = Command::new(repo().join("tests/guest/make-start-script"))
        .args(["extra", "2", "1", "extra:2"])
        .arg(dir.path().join("extra"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    let start = String::from_utf8(made.stdout).unwrap().trim().to_owned();
    assert!(start.ends_with("/bin/run-extra-vm"), "{start}");
    let log = run_script_passes(&format!(
        "extra = create_machine('exec {start}')\n\
         assert extra.name == 'extra', extra.name\n\
         assert extra not in machines\n\
         print('HOSTNAME', extra.succeed('hostname').strip())\n\
         extra.succeed('ip link show eth1')\n\
         assert extra.booted and extra.state_dir.is_dir() and extra.state_dir.name == 'vm-state-extra'\n\
         assert extra.start_command.machine_name == 'extra', extra.start_command\n\
         try:\n    create_machine('{start}')\n\
         except RuntimeError as e:\n    print('SECOND', e)\n\
         else:\n    raise AssertionError('a second machine named extra')\n"
    ));
    assert!(log.contains("HOSTNAME extra"), "{log}");
    assert!(
        log.contains("there is a machine named `extra` already"),
        "{log}"
    );
    let pids: BTreeSet<i32> = qemu_pids(&log).into_iter().collect();
    assert_eq!(pids.len(), 1, "only the created machine boots: {log}");
    assert_all_gone(&pids, Duration::from_secs(1));
}

#[test]
#[ignore = "boots VMs: run by tests/run-all"]
fn shell_interact_hands_the_shell_to_a_socket_and_takes_it_back() {
    // A visitor (a thread of the script) connects to the socat address, runs a command, reads its line and leaves;
    // then the script's own commands work again.
    let sockets = tempfile::tempdir().unwrap();
    let path = sockets.path().join("sh.sock");
    let log = run_script_passes(&format!(
        "import socket, threading, time\n\
         machine.succeed('true')\n\
         got = []\n\
         def visitor():\n\
         \x20   deadline = time.monotonic() + 120\n\
         \x20   while True:\n\
         \x20       s = socket.socket(socket.AF_UNIX)\n\
         \x20       try:\n\
         \x20           s.connect('{path}')\n\
         \x20           break\n\
         \x20       except OSError:\n\
         \x20           s.close()\n\
         \x20           if time.monotonic() > deadline: raise\n\
         \x20           time.sleep(0.1)\n\
         \x20   s.settimeout(120)\n\
         \x20   s.sendall(b'echo hi-from-socat $((6 * 7))\\n')\n\
         \x20   data = b''\n\
         \x20   while not data.endswith(b'\\n'):\n\
         \x20       chunk = s.recv(100)\n\
         \x20       if not chunk: break\n\
         \x20       data += chunk\n\
         \x20   got.append(data)\n\
         \x20   s.close()\n\
         thread = threading.Thread(target=visitor)\n\
         thread.start()\n\
         machine.shell_interact('unix-listen:{path}')\n\
         thread.join(120)\n\
         print('VISITOR-GOT', got)\n\
         assert got == [b'hi-from-socat 42\\n'], got\n\
         t.assertEqual(machine.succeed('echo back'), 'back\\n')\n\
         machine.succeed('true')\n",
        path = path.display()
    ));
    assert!(
        log.contains("VISITOR-GOT [b'hi-from-socat 42\\n']"),
        "{log}"
    );
    assert!(
        log.contains("forwarding the backdoor shell to unix-listen:"),
        "{log}"
    );
}

#[test]
#[ignore = "boots VMs: run by tests/run-all"]
fn a_restarted_machine_keeps_its_disk() {
    // nixpkgs empties a machine's state dir once per run, not at every start: a file written before shutdown() is
    // there after start() (installer and upgrade tests rely on it).
    let log = run_script_passes(
        "machine.succeed('echo kept > /root/restart-file && sync')\n\
         machine.shutdown()\n\
         machine.start()\n\
         t.assertEqual(machine.succeed('cat /root/restart-file'), 'kept\\n')\n",
    );
    assert_eq!(qemu_pids(&log).len(), 2, "{log}");
}
