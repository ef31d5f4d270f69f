//! Running `nix`: where it is, the options every call gets, its command lines for messages, and its errors.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::support::process::GroupChild;

#[derive(Debug, Error)]
pub enum NixError {
    #[error("cannot find `nix`: {0}")]
    NixNotFound(String),
    #[error("cannot use the plugin {}: {message}", .path.display())]
    Plugin { path: PathBuf, message: String },
    #[error("evaluating {reference} failed:\n{message}")]
    Evaluation { reference: String, message: String },
    #[error("evaluating {reference} gave a plan testrig cannot use: {message}")]
    BadPlan { reference: String, message: String },
    #[error("building the start scripts failed ({command}):\n{message}")]
    Build { command: String, message: String },
    #[error("cannot run {command}: {message}")]
    Spawn { command: String, message: String },
}

/// Options every `nix` call gets: the new CLI and flakes, whatever the user's nix.conf says.
pub fn common_options() -> Vec<String> {
    vec![
        "--extra-experimental-features".into(),
        "nix-command flakes".into(),
    ]
}

/// `TESTRIG_NIX`, else `nix` on `PATH`.
pub fn find_nix() -> Result<PathBuf, NixError> {
    if let Some(nix) = std::env::var_os("TESTRIG_NIX").filter(|v| !v.is_empty()) {
        let nix = PathBuf::from(nix);
        if !nix.is_file() {
            return Err(NixError::NixNotFound(format!(
                "TESTRIG_NIX is {}, which is not a file",
                nix.display()
            )));
        }
        return Ok(nix);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("nix"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            NixError::NixNotFound(
                "it is not on PATH and TESTRIG_NIX is not set (testrig evaluates tests with Nix 2.18 or later)"
                    .into(),
            )
        })
}

pub struct Captured {
    pub success: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

pub async fn run_captured(program: &Path, argv: &[String]) -> Result<Captured, NixError> {
    let mut command = Command::new(program);
    command
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = command_line(program, &argv[..argv.len().min(8)]);
    tracing::debug!("running {}", command_line(program, argv));
    let mut child =
        GroupChild::spawn(&mut command, what.clone()).map_err(|e| spawn_error(program, e))?;
    let mut stdout = child.child_mut().stdout.take().expect("stdout is piped");
    let mut stderr = child.child_mut().stderr.take().expect("stderr is piped");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (read_out, read_err, status) = tokio::join!(
        stdout.read_to_end(&mut out),
        stderr.read_to_end(&mut err),
        child.wait()
    );
    let io = |e: std::io::Error| NixError::Spawn {
        command: what.clone(),
        message: e.to_string(),
    };
    read_out.map_err(io)?;
    read_err.map_err(io)?;
    let status = status.map_err(io)?;
    Ok(Captured {
        success: status.success(),
        stdout: out,
        stderr: err,
    })
}

pub fn spawn_error(program: &Path, e: std::io::Error) -> NixError {
    if e.kind() == std::io::ErrorKind::NotFound {
        NixError::NixNotFound(format!("{}: {e}", program.display()))
    } else {
        NixError::Spawn {
            command: program.display().to_string(),
            message: e.to_string(),
        }
    }
}

/// A command line for messages (arguments with spaces quoted; the long `--apply` text shortened).
pub fn command_line(program: &Path, argv: &[String]) -> String {
    let mut line = program.display().to_string();
    for arg in argv {
        line.push(' ');
        if arg.len() > 120 {
            line.push_str("'...'");
        } else if arg.contains([' ', '\n', '"', '\'']) || arg.is_empty() {
            line.push_str(&format!("'{arg}'"));
        } else {
            line.push_str(arg);
        }
    }
    line
}
