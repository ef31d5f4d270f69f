//! Where testrig keeps what outlives a run: results under the XDG cache dir, kept VM state under the XDG state
//! dir, each with an environment variable that overrides it (for tests, and for users who want them elsewhere).

use std::ffi::OsString;
use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
#[error("cannot tell where the {what} lives: set {override_var}, {xdg_var} or HOME")]
pub struct NoHome {
    what: &'static str,
    override_var: &'static str,
    xdg_var: &'static str,
}

/// `$TESTRIG_CACHE_DIR`, else `$XDG_CACHE_HOME/testrig`, else `~/.cache/testrig`.
pub fn cache_root() -> Result<PathBuf, NoHome> {
    root(
        "result cache",
        "TESTRIG_CACHE_DIR",
        "XDG_CACHE_HOME",
        ".cache",
        &|name| std::env::var_os(name),
    )
}

/// `$TESTRIG_STATE_DIR`, else `$XDG_STATE_HOME/testrig`, else `~/.local/state/testrig`.
pub fn state_root() -> Result<PathBuf, NoHome> {
    root(
        "kept VM state",
        "TESTRIG_STATE_DIR",
        "XDG_STATE_HOME",
        ".local/state",
        &|name| std::env::var_os(name),
    )
}

fn root(
    what: &'static str,
    override_var: &'static str,
    xdg_var: &'static str,
    home_default: &str,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<PathBuf, NoHome> {
    let absolute = |name: &str| env(name).map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(dir) = absolute(override_var) {
        return Ok(dir);
    }
    // The XDG spec: a relative value is invalid and must be ignored.
    if let Some(dir) = absolute(xdg_var) {
        return Ok(dir.join("testrig"));
    }
    if let Some(home) = absolute("HOME") {
        return Ok(home.join(home_default).join("testrig"));
    }
    Err(NoHome {
        what,
        override_var,
        xdg_var,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<PathBuf, NoHome> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        root(
            "result cache",
            "TESTRIG_CACHE_DIR",
            "XDG_CACHE_HOME",
            ".cache",
            &|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.into()),
        )
    }

    #[test]
    fn override_then_xdg_then_home() {
        let all = [
            ("TESTRIG_CACHE_DIR", "/t"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(with(&all).unwrap(), PathBuf::from("/t"));
        assert_eq!(with(&all[1..]).unwrap(), PathBuf::from("/x/testrig"));
        assert_eq!(with(&all[2..]).unwrap(), PathBuf::from("/h/.cache/testrig"));
        assert!(with(&[]).unwrap_err().to_string().contains("HOME"));
    }

    #[test]
    fn relative_values_are_ignored() {
        assert_eq!(
            with(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/h")]).unwrap(),
            PathBuf::from("/h/.cache/testrig")
        );
    }
}
