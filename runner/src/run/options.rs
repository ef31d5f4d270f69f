//! How the tests of one `testrig run` run, decided once from the command line (`commands::run` builds these):
//! the layers below never read a flag, so a caller without a command line (the Nix check wrapper, a daemon) fills
//! these in directly.

use std::path::PathBuf;
use std::time::Duration;

use crate::state::KeepOptions;

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub cache: CachePolicy,
    /// `-K`: each machine's state dir (its disk) lives on between runs, locked and checked against the node's
    /// identity. `None`: a fresh state dir per run.
    pub keep_state: Option<KeepOptions>,
    pub output: OutputOptions,
    pub execution: ExecOptions,
}

/// What the result cache may do for each test.
#[derive(Debug, Clone, Copy)]
pub struct CachePolicy {
    /// Whether there is a cache at all (`--no-cache` turns it off: outputs go straight to the output dir).
    pub enabled: bool,
    /// Whether a recorded pass answers the test without running it. Not with `--rerun` (which replaces the
    /// entry), nor with `-K` (the result depends on the kept disks, which the key does not cover).
    pub answer_with_pass: bool,
    /// Whether the run is looked up in and recorded in the cache at all. Not for a run with a prompt (`-I`,
    /// `--debug-on-failure`), whose result depends on what was typed.
    pub record: bool,
}

/// Where a test's outputs go besides the cache.
#[derive(Debug, Clone, Default)]
pub struct OutputOptions {
    /// `-o`: screenshots, copied files, the log (with several tests, a subdir per test).
    pub dir: Option<PathBuf>,
    /// `--junit-xml`: a JUnit report.
    pub junit_xml: Option<PathBuf>,
}

/// How one test executes.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// The Python for the test script, instead of the plan's (`python3` when neither says).
    pub python: Option<String>,
    /// From QEMU's start to the guest's backdoor shell, before the boot counts as hung.
    pub boot_timeout: Duration,
    /// `-I`: a Python prompt instead of the script.
    pub interactive: bool,
    /// `--debug-on-failure`: a Python prompt when the script fails.
    pub debug_on_failure: bool,
}
