//! Children that cannot outlive the runner: each runs in its own process group, gets SIGKILL from the kernel
//! when the runner dies (even by SIGKILL), and is terminated in stages (SIGTERM to the group, a grace period,
//! SIGKILL to the group, reap) when its owner is done with it or dropped.

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::{Child, Command};

/// How long a group gets between SIGTERM and SIGKILL.
pub const TERMINATE_GRACE: Duration = Duration::from_secs(5);

/// A spawned child leading its own process group.
#[derive(Debug)]
pub struct GroupChild {
    child: Child,
    /// The leader's PID, which is the group's ID when `own_group`.
    pgid: i32,
    own_group: bool,
    what: String,
}

impl GroupChild {
    /// Spawns `command` as the leader of a new process group with the parent-death signal set.
    ///
    /// The runner runs on a single-threaded runtime so that the thread which forks (and whose exit the kernel
    /// watches for the parent-death signal) lives as long as the runner.
    pub fn spawn(command: &mut Command, what: impl Into<String>) -> io::Result<Self> {
        Self::spawn_with(command, what, true)
    }

    /// Like [`GroupChild::spawn`], but the child stays in the runner's process group: for a child that reads the
    /// terminal (the interactive Python prompt), which only the foreground group may do. The parent-death signal
    /// still applies; termination signals the child alone.
    pub fn spawn_in_foreground(command: &mut Command, what: impl Into<String>) -> io::Result<Self> {
        Self::spawn_with(command, what, false)
    }

    fn spawn_with(
        command: &mut Command,
        what: impl Into<String>,
        own_group: bool,
    ) -> io::Result<Self> {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if own_group && libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The runner may have died between fork and prctl: then nobody would ever signal us.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        command.kill_on_drop(true);
        let child = command.spawn()?;
        let leader = child.id().map(|id| id as i32).unwrap_or(0);
        Ok(GroupChild {
            child,
            pgid: leader,
            own_group,
            what: what.into(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.pgid
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits for the leader to exit (the rest of the group is dealt with by [`GroupChild::terminate`]).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// SIGTERM to the group, `grace` to exit, then SIGKILL to the group; always reaps the leader.
    pub async fn terminate(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            self.kill_group(libc::SIGKILL);
            return Ok(status);
        }
        self.kill_group(libc::SIGTERM);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => {
                self.kill_group(libc::SIGKILL);
                status
            }
            Err(_) => {
                tracing::debug!(what = %self.what, "did not exit within {grace:?} of SIGTERM; killing");
                self.kill_group(libc::SIGKILL);
                self.child.wait().await
            }
        }
    }

    fn kill_group(&self, signal: libc::c_int) {
        if self.pgid > 0 {
            // SAFETY: plain syscalls; ESRCH (already gone) is fine. Without a group of its own, only the child
            // itself is signalled (never the runner's group).
            unsafe {
                if self.own_group {
                    libc::killpg(self.pgid, signal);
                } else if self.child.id().is_some() {
                    libc::kill(self.pgid, signal);
                }
            }
        }
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        // The leader is killed by kill_on_drop; take the rest of its group with it.
        self.kill_group(libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn terminate_takes_the_whole_group() {
        // A shell that ignores SIGTERM and has a grandchild.
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "trap '' TERM; sleep 300 & echo $!; wait"])
            .stdout(std::process::Stdio::piped());
        let mut child = GroupChild::spawn(&mut cmd, "test shell").unwrap();
        let mut out = child.child_mut().stdout.take().unwrap();
        let mut buf = [0u8; 32];
        let n = tokio::io::AsyncReadExt::read(&mut out, &mut buf)
            .await
            .unwrap();
        let grandchild: i32 = std::str::from_utf8(&buf[..n])
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        child.terminate(Duration::from_millis(200)).await.unwrap();
        // The grandchild was in the group, so SIGKILL reached it; give the kernel a moment to reap it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let alive = unsafe { libc::kill(grandchild, 0) } == 0
            && std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false);
        assert!(!alive, "grandchild {grandchild} survived");
    }
}
