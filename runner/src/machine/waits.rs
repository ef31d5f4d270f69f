//! The test-script operations built on `execute`: commands that must succeed or fail, and the waits. Semantics
//! and default timeouts are nixpkgs'; polling is faster (see `Machine::poll`).

use std::collections::BTreeMap;
use std::time::Duration;

use super::error::{OpError, OpResult};
use super::handle::Machine;
use super::shell::shell_quote;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn secs(timeout: f64) -> Duration {
    Duration::from_secs_f64(timeout.max(0.0))
}

impl Machine {
    /// Runs each command in turn; all must exit 0. Returns their outputs joined.
    pub async fn succeed(&self, commands: &[String], timeout: Option<f64>) -> OpResult<Vec<u8>> {
        let mut all = Vec::new();
        for command in commands {
            let _section = self.section(format!("must succeed: {command}"));
            let out = self.execute(command, timeout).await?;
            if out.status != 0 {
                self.log(&format!("output: {}", text(&out.stdout)));
                return Err(OpError::Failure(format!(
                    "{}: command `{command}` failed (exit code {})",
                    self.name, out.status
                )));
            }
            all.extend_from_slice(&out.stdout);
        }
        Ok(all)
    }

    /// Runs each command in turn; all must exit non-zero. Returns their outputs joined.
    pub async fn fail(&self, commands: &[String], timeout: Option<f64>) -> OpResult<Vec<u8>> {
        let mut all = Vec::new();
        for command in commands {
            let _section = self.section(format!("must fail: {command}"));
            let out = self.execute(command, timeout).await?;
            if out.status == 0 {
                return Err(OpError::Failure(format!(
                    "{}: command `{command}` unexpectedly succeeded",
                    self.name
                )));
            }
            all.extend_from_slice(&out.stdout);
        }
        Ok(all)
    }

    pub async fn wait_until_succeeds(&self, command: &str, timeout: f64) -> OpResult<Vec<u8>> {
        let _section = self.section(format!("waiting for success: {command}"));
        self.poll(
            &format!("`{command}` to succeed"),
            secs(timeout),
            || async {
                let out = self.execute(command, Some(timeout)).await?;
                Ok((out.status == 0).then_some(out.stdout))
            },
        )
        .await
    }

    pub async fn wait_until_fails(&self, command: &str, timeout: f64) -> OpResult<Vec<u8>> {
        let _section = self.section(format!("waiting for failure: {command}"));
        self.poll(&format!("`{command}` to fail"), secs(timeout), || async {
            let out = self.execute(command, Some(timeout)).await?;
            Ok((out.status != 0).then_some(out.stdout))
        })
        .await
    }

    /// `systemctl <q>`, as root or as `user` (through their user manager).
    pub async fn systemctl(&self, q: &str, user: Option<&str>) -> OpResult<(i32, Vec<u8>)> {
        let command = match user {
            Some(user) => {
                let inner = format!("XDG_RUNTIME_DIR=/run/user/`id -u` systemctl --user {q}");
                format!(
                    "su -l {} --shell /bin/sh -c {}",
                    shell_quote(user),
                    shell_quote(&inner)
                )
            }
            None => format!("systemctl {q}"),
        };
        let out = self.execute(&command, Some(900.0)).await?;
        Ok((out.status, out.stdout))
    }

    pub async fn get_unit_info(
        &self,
        unit: &str,
        user: Option<&str>,
    ) -> OpResult<BTreeMap<String, String>> {
        let (status, out) = self
            .systemctl(&format!("--no-pager show {}", shell_quote(unit)), user)
            .await?;
        if status != 0 {
            return Err(OpError::Failure(format!(
                "{}: cannot get unit info for `{unit}` (systemctl exit code {status}): {}",
                self.name,
                text(&out)
            )));
        }
        Ok(text(&out)
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    pub async fn get_unit_property(
        &self,
        unit: &str,
        property: &str,
        user: Option<&str>,
    ) -> OpResult<String> {
        let (status, out) = self
            .systemctl(
                &format!(
                    "--no-pager show {} --property={}",
                    shell_quote(unit),
                    shell_quote(property)
                ),
                user,
            )
            .await?;
        if status != 0 {
            return Err(OpError::Failure(format!(
                "{}: cannot get property `{property}` of unit `{unit}` (exit code {status})",
                self.name
            )));
        }
        let out = text(&out);
        let prefix = format!("{property}=");
        out.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(str::to_owned)
            .ok_or_else(|| {
                OpError::Failure(format!(
                    "{}: unit `{unit}` has no property `{property}`",
                    self.name
                ))
            })
    }

    /// Waits until `unit` is active; fails as soon as it has failed, or is inactive with no job pending.
    pub async fn wait_for_unit(
        &self,
        unit: &str,
        user: Option<&str>,
        timeout: f64,
    ) -> OpResult<()> {
        let who = user.map(|u| format!(" for user {u}")).unwrap_or_default();
        let _section = self.section(format!("waiting for unit {unit}{who}"));
        self.poll(&format!("unit {unit}{who} to be active"), secs(timeout), || async {
            let info = self.get_unit_info(unit, user).await?;
            let state = info.get("ActiveState").map(String::as_str).unwrap_or("");
            match state {
                "active" => Ok(Some(())),
                "failed" => Err(OpError::Failure(format!(
                    "{}: unit `{unit}` reached state `failed`",
                    self.name
                ))),
                "inactive" => {
                    let (_, jobs) = self.systemctl("list-jobs --full 2>&1", user).await?;
                    let jobs = text(&jobs);
                    if jobs.contains("No jobs") || !jobs.contains(unit) {
                        let load = info.get("LoadState").map(String::as_str).unwrap_or("?");
                        return Err(OpError::Failure(format!(
                            "{}: unit `{unit}` is inactive and there are no pending jobs (LoadState={load})",
                            self.name
                        )));
                    }
                    Ok(None)
                }
                _ => Ok(None),
            }
        })
        .await
    }

    pub async fn require_unit_state(&self, unit: &str, state: &str) -> OpResult<()> {
        let _section = self.section(format!(
            "checking if unit `{unit}` has reached state `{state}`"
        ));
        let info = self.get_unit_info(unit, None).await?;
        let actual = info.get("ActiveState").cloned().unwrap_or_default();
        if actual != state {
            return Err(OpError::Failure(format!(
                "{}: expected unit `{unit}` to be in state `{state}` but it is in state `{actual}`",
                self.name
            )));
        }
        Ok(())
    }

    pub async fn wait_for_file(&self, path: &str, timeout: f64) -> OpResult<()> {
        let _section = self.section(format!("waiting for file `{path}`"));
        let command = format!("test -e {}", shell_quote(path));
        self.poll(&format!("file `{path}`"), secs(timeout), || async {
            Ok((self.execute(&command, Some(timeout)).await?.status == 0).then_some(()))
        })
        .await
    }

    /// `open`: wait for the port to accept connections, or (false) to refuse them. Uses `nc -z`, as nixpkgs does.
    pub async fn wait_for_port(
        &self,
        port: u16,
        addr: &str,
        open: bool,
        timeout: f64,
    ) -> OpResult<()> {
        let what = if open { "open" } else { "closed" };
        let _section = self.section(format!(
            "waiting for TCP port {port} on {addr} to be {what}"
        ));
        let command = format!("nc -z {} {port}", shell_quote(addr));
        self.poll(
            &format!("TCP port {port} on {addr} to be {what}"),
            secs(timeout),
            || async {
                let status = self.execute(&command, Some(timeout)).await?.status;
                Ok(((status == 0) == open).then_some(()))
            },
        )
        .await
    }

    pub async fn wait_for_open_unix_socket(
        &self,
        path: &str,
        is_datagram: bool,
        timeout: f64,
    ) -> OpResult<()> {
        let _section = self.section(format!("waiting for UNIX socket `{path}`"));
        let flags = if is_datagram { "-uU" } else { "-U" };
        let command = format!("nc -z {flags} {}", shell_quote(path));
        self.poll(&format!("UNIX socket `{path}`"), secs(timeout), || async {
            Ok((self.execute(&command, Some(timeout)).await?.status == 0).then_some(()))
        })
        .await
    }

    /// Sleeps in guest time, as nixpkgs does.
    pub async fn sleep(&self, secs: f64) -> OpResult<()> {
        let out = self
            .execute(&format!("sleep {secs}"), Some(secs + 60.0))
            .await?;
        if out.status != 0 {
            return Err(OpError::Failure(format!(
                "{}: `sleep {secs}` failed",
                self.name
            )));
        }
        Ok(())
    }
}
