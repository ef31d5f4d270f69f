//! The test-script operations built on `execute`: commands that must succeed or fail, and the waits. Semantics
//! and default timeouts are nixpkgs'. Each wait is a loop in the guest (`Machine::wait_in_guest`): builtins look
//! every 50 ms where they can (a file, a TCP connection, `/proc/net/unix`, a unit's invocation link), and the
//! programs nixpkgs runs (`nc -z`, `systemctl`, the script's command) run paced, at most as often as nixpkgs'
//! once-a-second polling starts programs, and at once when a builtin sees a change.

use std::collections::BTreeMap;
use std::time::Duration;

use super::error::{OpError, OpResult};
use super::handle::Machine;
use super::shell::{ansi_c_quote, shell_quote};

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

    /// nixpkgs' `wait_until_succeeds`: returns the output of the attempt that succeeded.
    pub async fn wait_until_succeeds(&self, command: &str, timeout: f64) -> OpResult<Vec<u8>> {
        let _section = self.section(format!("waiting for success: {command}"));
        let check = until_check(command, true);
        let what = format!("`{command}` to succeed");
        Ok(self
            .wait_in_guest(&what, secs(timeout), &check)
            .await?
            .stdout)
    }

    /// nixpkgs' `wait_until_fails`: returns the output of the attempt that failed.
    pub async fn wait_until_fails(&self, command: &str, timeout: f64) -> OpResult<Vec<u8>> {
        let _section = self.section(format!("waiting for failure: {command}"));
        let check = until_check(command, false);
        let what = format!("`{command}` to fail");
        Ok(self
            .wait_in_guest(&what, secs(timeout), &check)
            .await?
            .stdout)
    }

    /// `systemctl <q>`, as root or as `user` (through their user manager).
    pub async fn systemctl(&self, q: &str, user: Option<&str>) -> OpResult<(i32, Vec<u8>)> {
        let out = self
            .execute(&systemctl_command(q, user), Some(900.0))
            .await?;
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

    /// Waits until `unit` is active; fails as soon as it has failed, or is inactive with no job pending (for it).
    /// In the guest: `systemctl show` paced (100 ms, doubling to 1 s), and at once when the unit's invocation
    /// link in /run/systemd/units appears or goes (systemd makes it when a unit starts; system units only).
    pub async fn wait_for_unit(
        &self,
        unit: &str,
        user: Option<&str>,
        timeout: f64,
    ) -> OpResult<()> {
        let who = user.map(|u| format!(" for user {u}")).unwrap_or_default();
        let _section = self.section(format!("waiting for unit {unit}{who}"));
        let check = unit_check(unit, user);
        let reply = self
            .wait_in_guest(
                &format!("unit {unit}{who} to be active"),
                secs(timeout),
                &check,
            )
            .await?;
        let said = text(&reply.stdout);
        let load = said
            .lines()
            .find_map(|l| l.strip_prefix("LoadState="))
            .unwrap_or("?");
        match reply.status {
            0 => Ok(()),
            2 => Err(OpError::Failure(format!(
                "{}: unit `{unit}` reached state `failed`",
                self.name
            ))),
            3 => Err(OpError::Failure(format!(
                "{}: unit `{unit}` is inactive and there are no pending jobs (LoadState={load})",
                self.name
            ))),
            status => Err(OpError::Failure(format!(
                "{}: cannot get unit info for `{unit}` (systemctl exit code {status}): {}",
                self.name,
                said.trim_end()
            ))),
        }
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

    /// nixpkgs' `test -e`, as the builtin it is, every 50 ms.
    pub async fn wait_for_file(&self, path: &str, timeout: f64) -> OpResult<()> {
        let _section = self.section(format!("waiting for file `{path}`"));
        let check = file_check(path);
        self.wait_in_guest(&format!("file `{path}`"), secs(timeout), &check)
            .await
            .map(drop)
    }

    /// `open`: wait for the port to accept connections, or (false) to refuse them. A connection through bash's
    /// `/dev/tcp` (no program started): every 50 ms while waiting for an open port, paced to 4 a second while
    /// waiting for a closed one (each reaches the service); `nc -z`, as nixpkgs uses, decides what bash cannot:
    /// a port is closed only when `nc -z` says so too, and it is also tried once a second for an open port, for a
    /// bash built without `/dev/tcp`.
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
        let check = port_check(addr, port, open);
        self.wait_in_guest(
            &format!("TCP port {port} on {addr} to be {what}"),
            secs(timeout),
            &check,
        )
        .await
        .map(drop)
    }

    /// `nc -z -U`, as nixpkgs; paced (100 ms doubling to 1 s), and at once when the path appears in
    /// /proc/net/unix (read by a builtin every 50 ms).
    pub async fn wait_for_open_unix_socket(
        &self,
        path: &str,
        is_datagram: bool,
        timeout: f64,
    ) -> OpResult<()> {
        let _section = self.section(format!("waiting for UNIX socket `{path}`"));
        let check = unix_socket_check(path, is_datagram);
        self.wait_in_guest(&format!("UNIX socket `{path}`"), secs(timeout), &check)
            .await
            .map(drop)
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

/// The pace of the tries of `wait_until_succeeds`/`fails`: 100 ms doubling to 500 ms, so two tries a second at
/// most, each a subshell and the command's programs: no more programs a second than nixpkgs' one try (`bash -c`,
/// `base64`, a subshell and the command's own).
const PACE_ATTEMPTS: &str = "testrig_due || return 1; testrig_backoff 500";

/// One try of a command of `wait_until_succeeds`/`fails`, as `execute` runs it, its stdout into the wait's file.
fn attempt(command: &str) -> String {
    format!(
        r#"(set -euo pipefail; eval {}) 8<&- 9>&- >"$testrig_f""#,
        ansi_c_quote(command)
    )
}

/// `systemctl <q>` as root, or as `user` through their user manager, as nixpkgs runs it.
fn systemctl_command(q: &str, user: Option<&str>) -> String {
    match user {
        Some(user) => {
            let inner = format!("XDG_RUNTIME_DIR=/run/user/`id -u` systemctl --user {q}");
            format!(
                "su -l {} --shell /bin/sh -c {}",
                shell_quote(user),
                shell_quote(&inner)
            )
        }
        None => format!("systemctl {q}"),
    }
}

/// The check of `wait_until_succeeds` (`succeed`) or `wait_until_fails`: one paced try of the command.
fn until_check(command: &str, succeed: bool) -> String {
    let (ok, not_yet) = if succeed { (0, 1) } else { (1, 0) };
    format!(
        "{PACE_ATTEMPTS}; {} && return {ok}; return {not_yet}",
        attempt(command)
    )
}

/// The check of `wait_for_unit`. Statuses: 0 active, 2 failed, 3 inactive with no job for it, 4 `systemctl show`
/// failed; the wait's file gets what systemctl said, for the message.
fn unit_check(unit: &str, user: Option<&str>) -> String {
    let show = systemctl_command(
        &format!(
            "--no-pager show -p ActiveState -p LoadState {}",
            shell_quote(unit)
        ),
        user,
    );
    let jobs = systemctl_command("list-jobs --full 2>&1", user);
    let probe = match user {
        None => format!(
            r#"if [[ -L {} ]]; then testrig_x=1; else testrig_x=0; fi; [[ $testrig_x == "$testrig_p" ]] || {{ testrig_p=$testrig_x; testrig_g=0; }}; "#,
            shell_quote(&format!("/run/systemd/units/invocation:{unit}"))
        ),
        Some(_) => String::new(),
    };
    format!(
        concat!(
            "{probe}testrig_due || return 1; testrig_backoff 1000; ",
            r#"testrig_o=$({show} 2>&1 8<&- 9>&-) || {{ printf '%s\n' "$testrig_o" >"$testrig_f"; return 4; }}; "#,
            r#"case $'\n'$testrig_o$'\n' in *$'\nActiveState=active\n'*) return 0;; "#,
            r#"*$'\nActiveState=failed\n'*) return 2;; "#,
            r#"*$'\nActiveState=inactive\n'*) testrig_j=$({jobs} 8<&- 9>&-); "#,
            r#"if [[ $testrig_j == *"No jobs"* || $testrig_j != *{unit}* ]]; then printf '%s\n' "$testrig_o" >"$testrig_f"; return 3; fi;; "#,
            "esac; return 1"
        ),
        probe = probe,
        show = show,
        jobs = jobs,
        unit = shell_quote(unit),
    )
}

/// The check of `wait_for_file`.
fn file_check(path: &str) -> String {
    format!("[ -e {} ]", shell_quote(path))
}

/// The check of `wait_for_open_port` (`open`) and `wait_for_closed_port`.
fn port_check(addr: &str, port: u16, open: bool) -> String {
    let tcp = format!(
        "{{ : <>{}; }} 2>/dev/null",
        shell_quote(&format!("/dev/tcp/{addr}/{port}"))
    );
    let nc = format!(
        "nc -z {} {port} </dev/null >/dev/null 2>&1 8<&- 9>&-",
        shell_quote(addr)
    );
    if open {
        // Connections to a closed port cost nothing (refused by the kernel): every 50 ms.
        format!("{tcp} && return 0; testrig_due || return 1; testrig_g=1000; {nc} && return 0; return 1")
    } else {
        // Each connection to an open port reaches the service (and maybe its log): paced, up to 4 a second.
        // testrig_p: nc found the port open where bash could not connect (no /dev/tcp): from then on, nc
        // once a second.
        format!(
            "testrig_due || return 1; if [ -n \"$testrig_p\" ]; then testrig_g=1000; else testrig_backoff 250; fi; \
             if [ -z \"$testrig_p\" ] && {tcp}; then return 1; fi; \
             if {nc}; then testrig_p=1; return 1; fi; return 0"
        )
    }
}

/// The check of `wait_for_open_unix_socket`.
fn unix_socket_check(path: &str, is_datagram: bool) -> String {
    let flags = if is_datagram { "-uU" } else { "-U" };
    format!(
        concat!(
            r#"testrig_t=; read -r -d '' testrig_t </proc/net/unix; "#,
            r#"if [[ $testrig_t == *" "{q}$'\n'* ]]; then testrig_x=1; else testrig_x=0; fi; "#,
            r#"[[ $testrig_x == "$testrig_p" ]] || {{ testrig_p=$testrig_x; testrig_g=0; }}; "#,
            "testrig_due || return 1; testrig_backoff 1000; ",
            "nc -z {flags} {q} </dev/null >/dev/null 2>&1 8<&- 9>&- && return 0; return 1"
        ),
        q = shell_quote(path),
        flags = flags,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::shell::test_support::bash_shell;
    use crate::machine::shell::{wait_slice_line, CommandOutput, Framing};
    use std::time::Duration;

    /// The wait loops against a real local bash (as the guest's backdoor runs them): statuses, the output of the
    /// try that ended the wait, real TCP and unix sockets, and the shell still in step after each.
    #[tokio::test(flavor = "current_thread")]
    async fn wait_loops_in_a_real_bash() {
        let (_child, mut shell) = bash_shell(Framing::OneRoundTrip).await;
        shell.wait_until_ready().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name).display().to_string();
        let long = Duration::from_secs(30);
        let slice = |check: &str, budget: Duration| wait_slice_line(check, true, budget);
        let in_step = |out: CommandOutput| out.stdout == b"in step\n";

        // A file that appears later; one that never does (not yet: status 1, after the budget).
        shell
            .run(
                &format!("(sleep 0.3; touch {}) >/dev/null 2>&1 &", at("later")),
                None,
            )
            .await
            .unwrap();
        let out = shell
            .run_wait_slice(&slice(&file_check(&at("later")), long))
            .await
            .unwrap();
        assert_eq!(
            out,
            CommandOutput {
                status: 0,
                stdout: vec![]
            }
        );
        let out = shell
            .run_wait_slice(&slice(
                &file_check(&at("never")),
                Duration::from_millis(200),
            ))
            .await
            .unwrap();
        assert_eq!(out.status, 1);
        assert!(in_step(shell.run("echo in step", None).await.unwrap()));

        // wait_until_succeeds: the output is that of the try that succeeded (it counts the tries), every byte.
        let count = at("count");
        let command = format!(
            "n=$(( $(cat {count} 2>/dev/null || echo 0) + 1 )); echo $n >{count}; echo try $n; \
             printf '\\x00\\xff'; test $n -ge 3"
        );
        let out = shell
            .run_wait_slice(&slice(&until_check(&command, true), long))
            .await
            .unwrap();
        assert_eq!(out.status, 0);
        assert_eq!(out.stdout, b"try 3\n\x00\xff");
        // wait_until_fails, the same way round; and a try that `exit`s leaves the shell alone.
        let out = shell
            .run_wait_slice(&slice(
                &until_check(&format!("cat {count}; test $(cat {count}) -lt 3"), false),
                long,
            ))
            .await
            .unwrap();
        assert_eq!(
            out,
            CommandOutput {
                status: 0,
                stdout: b"3\n".to_vec()
            }
        );
        let out = shell
            .run_wait_slice(&slice(
                &until_check("echo no; exit 3", true),
                Duration::from_millis(300),
            ))
            .await
            .unwrap();
        assert_eq!(
            out,
            CommandOutput {
                status: 1,
                stdout: vec![]
            }
        );
        assert!(in_step(shell.run("echo in step", None).await.unwrap()));

        // A real TCP port: open, then closed; and not closed while it is open.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let out = shell
            .run_wait_slice(&slice(&port_check("127.0.0.1", port, true), long))
            .await
            .unwrap();
        assert_eq!(out.status, 0);
        let out = shell
            .run_wait_slice(&slice(
                &port_check("127.0.0.1", port, false),
                Duration::from_millis(300),
            ))
            .await
            .unwrap();
        assert_eq!(out.status, 1);
        drop(listener);
        let out = shell
            .run_wait_slice(&slice(&port_check("127.0.0.1", port, false), long))
            .await
            .unwrap();
        assert_eq!(out.status, 0);

        // A unix socket that appears later (bound by a thread of this test).
        let path = at("sock");
        let bind = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                std::os::unix::net::UnixListener::bind(path).unwrap()
            })
        };
        let out = shell
            .run_wait_slice(&slice(&unix_socket_check(&path, false), long))
            .await
            .unwrap();
        assert_eq!(out.status, 0);
        drop(bind.join().unwrap());
        assert!(in_step(shell.run("echo in step", None).await.unwrap()));
    }
}
