//! `testrig run`'s arguments: testrig's own, and nixos-test-driver's of every generation (flags and environment).

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, ValueEnum};

use super::NixArgs;
use crate::cache::parse_duration;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Tests: FILE.nix (with -A ATTR) or FLAKEREF#ATTR, evaluated with Nix; or plan files (testrig-plan/1 or
    /// driverConfiguration.json). With `--start-scripts`, the test script instead.
    #[arg(value_name = "TEST")]
    pub plans: Vec<PathBuf>,

    #[command(flatten)]
    pub nix: NixArgs,

    /// nixpkgs 26.05's driver configuration (driverConfiguration.json).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// A test script that replaces the plan's.
    #[arg(long = "test-script", value_name = "PATH", env = "testScript")]
    pub test_script: Option<PathBuf>,

    /// Start scripts, one per machine (the driver before 26.05; the machine name comes from `run-<name>-vm`).
    #[arg(long = "start-scripts", num_args = 1.., value_name = "PATH", env = "startScripts", value_delimiter = ' ')]
    pub start_scripts: Vec<PathBuf>,

    /// Machine names, in the order of `--vm-start-scripts` (the driver of 2025 to early 2026).
    #[arg(long = "vm-names", num_args = 0.., value_name = "NAME", env = "vmNames", value_delimiter = ' ', value_parser = parse_listed)]
    pub vm_names: Vec<Option<String>>,

    /// Start scripts, one per name of `--vm-names` (the driver of 2025 to early 2026).
    #[arg(long = "vm-start-scripts", num_args = 0.., value_name = "PATH", env = "vmStartScripts", value_delimiter = ' ', value_parser = parse_listed)]
    pub vm_start_scripts: Vec<Option<String>>,

    /// systemd-nspawn container names (the driver of 2025 to early 2026): not supported yet, refused when given.
    #[arg(long = "container-names", num_args = 0.., value_name = "NAME", env = "containerNames", value_delimiter = ' ', value_parser = parse_listed)]
    pub container_names: Vec<Option<String>>,

    /// systemd-nspawn container start scripts: not supported yet, refused when given.
    #[arg(
        long = "container-start-scripts",
        num_args = 0..,
        value_name = "PATH",
        env = "containerStartScripts",
        value_delimiter = ' ',
        value_parser = parse_listed
    )]
    pub container_start_scripts: Vec<Option<String>>,

    /// Vlans to create (with `--start-scripts`).
    #[arg(long = "vlans", num_args = 0.., value_name = "N", env = "vlans", value_delimiter = ' ', value_parser = parse_vlan)]
    pub vlans: Vec<Option<u32>>,

    /// Seconds the whole test may take (overrides the plan's).
    #[arg(long = "global-timeout", value_name = "SECONDS", env = "globalTimeout")]
    pub global_timeout: Option<u64>,

    /// Where screenshots, copied files and the log go.
    #[arg(
        short = 'o',
        long = "output-directory",
        alias = "output_directory",
        value_name = "DIR"
    )]
    pub output_directory: Option<PathBuf>,

    /// Keep each machine's state (its disk) between runs, under $XDG_STATE_HOME/testrig/<test>/<machine>.
    /// The test always runs (its result depends on the kept disks).
    #[arg(short = 'K', long = "keep-vm-state", alias = "keep-machine-state")]
    pub keep_vm_state: bool,

    /// With -K: refuse to run (exit 2) when a machine changed since its state was kept, instead of starting it
    /// from a fresh disk.
    #[arg(long = "strict-state")]
    pub strict_state: bool,

    /// With -K: how long to wait for another run that uses the same kept state (0: fail at once). `30`, `90s`,
    /// `5m`.
    #[arg(long = "lock-timeout", value_name = "DURATION", default_value = "0", value_parser = parse_duration)]
    pub lock_timeout: Duration,

    /// Run even when the same test (same cache key) passed before, and replace its cache entry.
    #[arg(long = "rerun")]
    pub rerun: bool,

    /// Run tests whose last run failed (always the case: only a pass is ever skipped).
    #[arg(long = "rerun-failed")]
    pub rerun_failed: bool,

    /// Neither look up nor record results; outputs go straight to -o (the current dir without it).
    #[arg(long = "no-cache", env = "TESTRIG_NO_CACHE", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_cache: bool,

    /// Write a JUnit XML report.
    #[arg(long = "junit-xml", value_name = "PATH")]
    pub junit_xml: Option<PathBuf>,

    /// The Python interpreter for the test script (default: the plan's `python`, else `python3`).
    #[arg(long = "python", value_name = "PATH", env = "TESTRIG_PYTHON")]
    pub python: Option<String>,

    /// How many tests may run at once (default: as many as fit the machine's cores and available memory, by the
    /// plans' `cores` and `memory_mb`; two runs of one test never overlap).
    #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,

    /// Seconds from QEMU's start to the guest's backdoor shell before the boot counts as hung.
    #[arg(long = "boot-timeout", value_name = "SECONDS", default_value_t = 600)]
    pub boot_timeout: u64,

    /// More log (-v: the runner's own debugging).
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,

    /// Less log (-q: warnings and the result only).
    #[arg(short = 'q', long = "quiet", action = ArgAction::Count)]
    pub quiet: u8,

    #[arg(long = "log-format", value_enum, default_value = "human")]
    pub log_format: LogFormatArg,

    /// Accepted for compatibility with nixpkgs' driver of 2025 (the ssh backdoor's vsock offset); ignored, with a
    /// warning: the ssh backdoor is not supported.
    #[arg(long = "dump-vsocks", value_name = "OFFSET", hide = true)]
    pub dump_vsocks: Option<u32>,

    /// Accepted for compatibility with nixpkgs' driver (which sets its own log level); use -v/-q.
    #[arg(long = "log-level", value_name = "LEVEL", hide = true)]
    pub log_level: Option<String>,

    /// Accepted for compatibility with nixpkgs' driver; ignored.
    #[arg(
        long = "debug-hook-attach",
        alias = "debug-hook",
        value_name = "CMD",
        hide = true
    )]
    pub debug_hook_attach: Option<String>,

    /// A Python prompt with the test's globals instead of running the script (`test_script()` runs it); no global
    /// timeout, and the run is not cached.
    #[arg(short = 'I', long = "interactive")]
    pub interactive: bool,

    /// When the test script fails (an exception, a failed command, Ctrl-C), a Python prompt with the test's
    /// globals while its machines still run: the exception is `exc`, `pm()` opens the post-mortem debugger, and
    /// the global timeout stops counting. The run still fails when the prompt ends, and is not cached.
    #[arg(long = "debug-on-failure", conflicts_with = "interactive")]
    pub debug_on_failure: bool,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Human,
    Json,
}

// The list flags of nixpkgs' driver also come from its wrapper's environment variables (`vlans=`, `vmNames=`...),
// where an empty variable is an empty list, as the driver's `.split()` makes it. clap splits it into one empty
// value, so these parsers make that value `None`, and the accessors below leave it out.

/// An entry of a list flag; empty is none.
fn parse_listed(value: &str) -> Result<Option<String>, String> {
    Ok(Some(value.to_owned()).filter(|v| !v.is_empty()))
}

/// A vlan number; empty is none.
fn parse_vlan(value: &str) -> Result<Option<u32>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| format!("`{value}` is not a vlan number"))
}

impl RunArgs {
    /// The vlans of `--vlans` (or `vlans=`), without empty entries.
    pub fn vlans(&self) -> Vec<u32> {
        self.vlans.iter().flatten().copied().collect()
    }

    /// The machine names of `--vm-names` (or `vmNames=`), without empty entries.
    pub fn vm_names(&self) -> Vec<String> {
        self.vm_names.iter().flatten().cloned().collect()
    }

    /// The start scripts of `--vm-start-scripts` (or `vmStartScripts=`), without empty entries.
    pub fn vm_start_scripts(&self) -> Vec<PathBuf> {
        self.vm_start_scripts
            .iter()
            .flatten()
            .map(PathBuf::from)
            .collect()
    }

    /// The names and start scripts of nspawn containers given, without empty entries.
    pub fn containers(&self) -> Vec<&str> {
        let given = self
            .container_names
            .iter()
            .chain(&self.container_start_scripts);
        given.flatten().map(String::as_str).collect()
    }

    /// Whether the test script's Python may take the terminal for a prompt (`-I`, `--debug-on-failure`): such a
    /// run is not cached, and tests run one at a time.
    pub fn prompts(&self) -> bool {
        self.interactive || self.debug_on_failure
    }

    pub fn verbosity(&self) -> i8 {
        self.verbose as i8 - self.quiet as i8
    }
}
