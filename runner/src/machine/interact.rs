//! `shell_interact(address)`: the backdoor shell's socket handed to `socat <address> FD:<n>`, as nixpkgs' driver
//! does, so that whoever connects to that address (`tcp-listen:4444,reuseaddr`, `unix-listen:/tmp/sh.sock`) talks
//! to the guest's root shell directly until they disconnect.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::support::process::{GroupChild, TERMINATE_GRACE};

/// How socat ended.
#[derive(Debug)]
pub enum Forwarded {
    Exited {
        status: ExitStatus,
        stderr: String,
    },
    /// The deadline passed; socat was terminated.
    TimedOut,
}

/// Runs `socat <address> FD:<n>` on a duplicate of `socket` until it exits or `deadline` passes. The caller must
/// hold the connection (nothing else may read or write it meanwhile), since the socket is switched to blocking mode
/// for socat for that time.
pub async fn socat(socket: RawFd, address: &str, deadline: Duration) -> io::Result<Forwarded> {
    // CLOEXEC in the runner, so no other child started meanwhile inherits the shell; cleared in socat's child only.
    // SAFETY: fcntl on a descriptor the caller keeps open; the result is a new descriptor owned here.
    let duplicate = unsafe {
        let fd = libc::fcntl(socket, libc::F_DUPFD_CLOEXEC, 3);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(fd)
    };
    let fd = duplicate.as_raw_fd();
    // The runtime made the socket non-blocking, a flag of the open file that the duplicate shares. socat expects a
    // descriptor as a program gets it; only this task touches the socket until the guard restores the flag.
    let _blocking = Blocking::set(socket)?;

    let mut command = Command::new("socat");
    // `shut-none`: at the end, socat must not shut down the shell's socket, which would end the connection to QEMU
    // for good. socat 1.7.4 shuts down only the sockets it opened itself (checked with strace); the option says
    // so explicitly, in case another version treats an FD address otherwise.
    command
        .arg(address)
        .arg(format!("FD:{fd},shut-none"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: one async-signal-safe fcntl between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = GroupChild::spawn(&mut command, format!("socat {address}"))?;
    drop(duplicate);
    let mut stderr_pipe = child.child_mut().stderr.take().expect("piped");
    let collect = async {
        let mut stderr = Vec::new();
        let _ = (&mut stderr_pipe)
            .take(64 * 1024)
            .read_to_end(&mut stderr)
            .await;
        stderr
    };
    let run = async { tokio::join!(child.wait(), collect) };
    match tokio::time::timeout(deadline, run).await {
        Ok((status, stderr)) => Ok(Forwarded::Exited {
            status: status?,
            stderr: String::from_utf8_lossy(&stderr).trim_end().to_owned(),
        }),
        Err(_) => {
            let _ = child.terminate(TERMINATE_GRACE).await;
            Ok(Forwarded::TimedOut)
        }
    }
}

/// Whether socat's complaint only says the visitor went away while output was on its way to them (socat exits 1
/// with `write(...): Broken pipe` then), which is how such a session normally ends, not a failure.
pub fn visitor_left(stderr: &str) -> bool {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(" E ")).collect();
    !errors.is_empty()
        && errors
            .iter()
            .all(|l| l.contains("Broken pipe") || l.contains("Connection reset by peer"))
}

/// Clears `O_NONBLOCK` on a descriptor until dropped.
struct Blocking {
    fd: RawFd,
    flags: libc::c_int,
}

impl Blocking {
    fn set(fd: RawFd) -> io::Result<Self> {
        // SAFETY: plain fcntl calls on an open descriptor.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Blocking { fd, flags })
        }
    }
}

impl Drop for Blocking {
    fn drop(&mut self) {
        // SAFETY: as above; the descriptor is still open (its owner outlives this guard).
        unsafe {
            libc::fcntl(self.fd, libc::F_SETFL, self.flags);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::shell::{Framing, Shell, READY_MARKER};
    use std::io::{BufRead, BufReader, Write};
    use tokio::net::UnixStream;

    /// A real bash on one end of a socket pair, as the guest's backdoor is behind QEMU's chardev; the runner's shell
    /// connection on the other.
    fn shell_over_socket() -> (
        std::process::Child,
        Shell<tokio::net::unix::OwnedReadHalf, tokio::net::unix::OwnedWriteHalf>,
    ) {
        let (host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
        let guest_in: OwnedFd = guest.try_clone().unwrap().into();
        let guest_out: OwnedFd = guest.into();
        let bash = std::process::Command::new("bash")
            .args([
                "--norc",
                "-c",
                &format!("echo '{READY_MARKER}'; exec bash --norc"),
            ])
            .stdin(Stdio::from(guest_in))
            .stdout(Stdio::from(guest_out))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        host.set_nonblocking(true).unwrap();
        let (read, write) = UnixStream::from_std(host).unwrap().into_split();
        (bash, Shell::new(read, write, Framing::OneRoundTrip))
    }

    /// A visitor on a unix socket sends `input`, reads one line, and leaves; then the driver's commands work again.
    async fn visit(input: &'static [u8]) -> String {
        let (mut bash, mut shell) = shell_over_socket();
        shell.wait_until_ready().await.unwrap();
        assert_eq!(
            shell.run("echo before", None).await.unwrap().stdout,
            b"before\n"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sh.sock");
        // The visitor: a plain blocking client in a thread, as a person with `socat - unix:...` would be.
        let visitor_path = path.clone();
        let visitor = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut stream = loop {
                match std::os::unix::net::UnixStream::connect(&visitor_path) {
                    Ok(stream) => break stream,
                    Err(_) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => panic!("socat never listened: {e}"),
                }
            };
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            stream.write_all(input).unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            line
        });
        shell.hand_over();
        let fd = shell.socket_fd();
        let address = format!("unix-listen:{}", path.display());
        match socat(fd, &address, Duration::from_secs(60)).await.unwrap() {
            // The visitor may close while output it did not read is on its way: socat's EPIPE, not a failure.
            Forwarded::Exited { status, stderr } => {
                assert!(status.success() || visitor_left(&stderr), "{stderr}")
            }
            Forwarded::TimedOut => panic!("socat did not end when the visitor left"),
        }
        let seen = visitor.join().unwrap();

        // The driver's next command skips what was left and gets exactly its own output.
        let out = shell.run("echo after", None).await.unwrap();
        assert_eq!((out.status, out.stdout), (0, b"after\n".to_vec()));
        let out = shell.run("echo $((6 * 7))", None).await.unwrap();
        assert_eq!(out.stdout, b"42\n");
        bash.kill().unwrap();
        bash.wait().unwrap();
        seen
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_visitor_who_reads_everything_leaves_the_shell_open() {
        // socat sees the visitor's EOF first, then ends; had it shut the shell's socket down, the guest's bash
        // would read EOF and exit, and the driver's commands after it would fail.
        assert_eq!(visit(b"echo hi-from-socat\n").await, "hi-from-socat\n");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn output_a_visitor_leaves_unread_does_not_reach_the_driver() {
        assert_eq!(
            visit(b"echo hi-from-socat; sleep 0.2; echo left-unread\n").await,
            "hi-from-socat\n"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn nobody_connecting_ends_at_the_deadline() {
        let (mut bash, mut shell) = shell_over_socket();
        shell.wait_until_ready().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        shell.hand_over();
        let address = format!("unix-listen:{}", dir.path().join("sh.sock").display());
        let forwarded = socat(shell.socket_fd(), &address, Duration::from_millis(500))
            .await
            .unwrap();
        assert!(matches!(forwarded, Forwarded::TimedOut), "{forwarded:?}");
        assert_eq!(
            shell.run("echo still", None).await.unwrap().stdout,
            b"still\n"
        );
        bash.kill().unwrap();
        bash.wait().unwrap();
    }

    #[test]
    fn a_visitor_leaving_is_told_from_other_socat_errors() {
        assert!(visitor_left(
            "2026/12/03 20:33:00 socat[12716] E write(7, 0x55c98753e000, 12): Broken pipe"
        ));
        assert!(!visitor_left(""));
        assert!(!visitor_left(
            "2026/12/03 20:33:00 socat[1] E unknown device/address \"no-such-address-type\""
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_bad_address_is_socats_error() {
        let (mut bash, shell) = shell_over_socket();
        let forwarded = socat(
            shell.socket_fd(),
            "no-such-address-type:x",
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        match forwarded {
            Forwarded::Exited { status, stderr } => {
                assert!(!status.success());
                assert!(stderr.contains("no-such-address-type"), "{stderr}");
            }
            Forwarded::TimedOut => panic!("socat hung on a bad address"),
        }
        bash.kill().unwrap();
        bash.wait().unwrap();
    }
}
