//! The host side of NixOS's backdoor shell: a `bash` reading commands from `/dev/hvc0` in the guest.
//!
//! One round trip per command. The Python driver sends the command, reads the base64 of its stdout, then sends
//! `echo ${PIPESTATUS[0]}` and reads the status; here both go in one line (see `output_and_status_line`), since
//! bash runs them in order and `PIPESTATUS` still holds the pipeline's statuses when the second part expands it.
//! The guest shell is stock: nothing here needs more than bash, coreutils `cat`, `timeout` and `base64`.
//!
//! What costs time in a guest under TCG, measured (tests/bench/RESULTS.md): starting a program (fork and exec,
//! about 12 ms; a fork alone about 5 ms) and every write to `/dev/hvc0` (each is one trip through QEMU's virtio
//! console, however small). So a command runs in a subshell of the backdoor's bash (`eval` of its text, no
//! `bash -c`), and what goes back to the host goes through one `cat` started once per boot ([`WRITER_SETUP`]),
//! which turns base64's line-by-line writes (a tty makes its stdout line buffered) into writes as large as the
//! pipe holds. Those replies reach the host through a file QEMU appends to, not a socket ([`Drained`]).

use std::io;

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// What the guest prints when its backdoor shell is about to read commands.
pub const READY_MARKER: &str = "Spawning backdoor root shell...";

/// One command's result, stdout byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    pub status: i32,
    pub stdout: Vec<u8>,
}

/// How a command and its exit status travel. `OneRoundTrip` is testrig's; `TwoRoundTrips` is nixpkgs' driver's
/// (the command, then `echo ${PIPESTATUS[0]}` once its output has arrived), kept to measure the two side by side
/// (`TESTRIG_SHELL_FRAMING=nixpkgs`, see tests/bench/run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    OneRoundTrip,
    TwoRoundTrips,
}

impl Framing {
    pub fn from_env() -> Self {
        match std::env::var("TESTRIG_SHELL_FRAMING").as_deref() {
            Ok("nixpkgs") => Framing::TwoRoundTrips,
            _ => Framing::OneRoundTrip,
        }
    }
}

pub struct Shell<R, W> {
    reader: BufReader<R>,
    writer: W,
    ready: bool,
    framing: Framing,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Shell<R, W> {
    pub fn new(reader: R, writer: W, framing: Framing) -> Self {
        Shell {
            // Large reads: QEMU drops console data its socket cannot take (see `read_wrapped_output`), so the
            // host drains whatever is there in one go rather than 8 KiB at a time.
            reader: BufReader::with_capacity(READ_BUFFER, reader),
            writer,
            ready: false,
            framing,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// The guest is rebooting: the next command waits for a new ready marker.
    pub fn expect_new_boot(&mut self) {
        self.ready = false;
    }

    /// Reads until the ready marker (anything before it is boot noise). The caller bounds this with a deadline.
    pub async fn wait_until_ready(&mut self) -> io::Result<()> {
        let mut line = Vec::new();
        while !self.ready {
            line.clear();
            if self.reader.read_until(b'\n', &mut line).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the shell connection closed before the backdoor was ready",
                ));
            }
            self.ready = String::from_utf8_lossy(&line).contains(READY_MARKER);
        }
        Ok(())
    }

    /// Runs `command` under `set -euo pipefail`, optionally with a guest-side `timeout` (exit status 124 when it
    /// fires). The caller bounds the call with a host-side deadline, since a command that leaves its stdout open
    /// (a daemon started without redirection) never lets the reply finish.
    pub async fn run(
        &mut self,
        command: &str,
        guest_timeout_secs: Option<f64>,
    ) -> io::Result<CommandOutput> {
        let stdout = match self.framing {
            Framing::OneRoundTrip => {
                self.send(&output_and_status_line(command, guest_timeout_secs))
                    .await?;
                self.read_wrapped_output().await?
            }
            Framing::TwoRoundTrips => {
                self.send(&output_line(command, guest_timeout_secs)).await?;
                let stdout = self.read_output().await?;
                self.send(STATUS_COMMAND).await?;
                stdout
            }
        };
        let status_line = self.read_reply_line().await?;
        let status = status_line.trim().parse().map_err(|_| {
            protocol_error(format!("expected an exit status, got {status_line:.80}"))
        })?;
        Ok(CommandOutput { status, stdout })
    }

    /// Sends a line written by [`wait_slice_line`] and reads its reply (the same wire format as a command's).
    pub async fn run_wait_slice(&mut self, line: &str) -> io::Result<CommandOutput> {
        self.send(line).await?;
        let stdout = self.read_wrapped_output().await?;
        let status_line = self.read_reply_line().await?;
        let status = status_line.trim().parse().map_err(|_| {
            protocol_error(format!("expected an exit status, got {status_line:.80}"))
        })?;
        Ok(CommandOutput { status, stdout })
    }

    /// Runs `command` and reads its output but not its status (nixpkgs' `check_return=False`), for commands
    /// after which the shell may not answer again.
    pub async fn run_output_only(
        &mut self,
        command: &str,
        guest_timeout_secs: Option<f64>,
    ) -> io::Result<Vec<u8>> {
        self.send(&output_line(command, guest_timeout_secs)).await?;
        self.read_output().await
    }

    async fn read_output(&mut self) -> io::Result<Vec<u8>> {
        let encoded = self.read_reply_line().await?;
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim_end())
            .map_err(|e| protocol_error(format!("output is not base64 ({e}): {encoded:.80}")))
    }

    /// Reads the output of `output_and_status_line`: base64 in lines of [`WRAP`] characters, ended by an empty
    /// line. QEMU's virtio console drops what its host side cannot take at once (hw/char/virtio-console.c), and a
    /// base64 line with bytes missing can still decode; the fixed line length makes such a loss an error instead
    /// of wrong output, unless exactly a multiple of 77 bytes went, or a multiple of 4 characters of the last line.
    async fn read_wrapped_output(&mut self) -> io::Result<Vec<u8>> {
        let mut encoded = String::new();
        let mut short_line: Option<(usize, usize)> = None;
        for number in 1.. {
            let line = self.read_reply_line().await?;
            if line.is_empty() {
                break;
            }
            if let Some((at, len)) = short_line {
                return Err(damaged(at, len));
            }
            if line.len() != WRAP {
                if line.len() > WRAP || line.len() % 4 != 0 {
                    return Err(damaged(number, line.len()));
                }
                // Only the last line may be shorter.
                short_line = Some((number, line.len()));
            }
            encoded.push_str(&line);
        }
        base64::engine::general_purpose::STANDARD
            .decode(&encoded)
            .map_err(|e| protocol_error(format!("output is not base64 ({e}): {encoded:.80}")))
    }

    /// Sends one line to the guest's bash; nothing is read (`poweroff` gets no reply).
    pub async fn send(&mut self, line: &str) -> io::Result<()> {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await?;
        self.writer.flush().await
    }

    async fn read_reply_line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        if self.reader.read_until(b'\n', &mut line).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the backdoor shell closed its connection",
            ));
        }
        // Only base64 and digits are expected, so a lossy conversion loses nothing that matters.
        Ok(String::from_utf8_lossy(&line)
            .trim_end_matches(['\n', '\r'])
            .to_owned())
    }
}

/// The guest's replies as the host reads them: QEMU writes what the guest sends to `/dev/hvc0` into a regular file
/// (`-chardev file`, see vm.rs), read here on a thread of its own as it grows. Not a socket, as nixpkgs uses: on a
/// socket QEMU drops console data it cannot write at once (hw/char/virtio-console.c), about 200 KB of backlog,
/// which a guest printing megabytes in a fraction of a second fills while the host waits for a CPU (8 MB
/// arrived damaged on a loaded machine, with a reader thread of its own). A file takes every write.
pub struct Drained {
    chunks: tokio::sync::mpsc::UnboundedReceiver<io::Result<Vec<u8>>>,
    pending: Vec<u8>,
    at: usize,
}

impl Drained {
    /// Follows `path` from its start (like `tail -f`, woken by inotify). The thread ends on an error, or within
    /// [`TAIL_RECHECK_MS`] of the `Drained` being dropped.
    pub fn tail(path: &std::path::Path, name: &str) -> io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        let file = std::fs::File::open(path)?;
        // SAFETY: plain syscalls; the descriptor is owned right away.
        let inotify = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if inotify < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `inotify` is a fresh descriptor no one else owns.
        let inotify =
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(inotify) };
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: valid descriptor and NUL-terminated path.
        let watch = unsafe {
            libc::inotify_add_watch(
                std::os::fd::AsRawFd::as_raw_fd(&inotify),
                c_path.as_ptr(),
                libc::IN_MODIFY,
            )
        };
        if watch < 0 {
            return Err(io::Error::last_os_error());
        }
        let (tx, chunks) = tokio::sync::mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name(format!("shell reader {name}"))
            .spawn(move || follow(file, inotify, tx))?;
        Ok(Drained {
            chunks,
            pending: Vec::new(),
            at: 0,
        })
    }
}

/// How often the reader thread looks whether its `Drained` is still there when nothing is written.
const TAIL_RECHECK_MS: i32 = 200;

fn follow(
    mut file: std::fs::File,
    inotify: std::os::fd::OwnedFd,
    tx: tokio::sync::mpsc::UnboundedSender<io::Result<Vec<u8>>>,
) {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; READ_BUFFER];
    let mut events = [0u8; 4096];
    loop {
        match file.read(&mut buf) {
            Ok(0) => {
                if tx.is_closed() {
                    return;
                }
                // Wait for a write (the watch was set before the first read, so none is missed).
                let mut pfd = libc::pollfd {
                    fd: inotify.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; `events` is a valid buffer for the read.
                unsafe {
                    if libc::poll(&mut pfd, 1, TAIL_RECHECK_MS) > 0 {
                        libc::read(
                            inotify.as_raw_fd(),
                            events.as_mut_ptr().cast(),
                            events.len(),
                        );
                    }
                }
            }
            Ok(n) => {
                if tx.send(Ok(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
}

impl AsyncRead for Drained {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.at == this.pending.len() {
            match this.chunks.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(Some(Ok(chunk))) => {
                    this.pending = chunk;
                    this.at = 0;
                }
            }
        }
        let n = out.remaining().min(this.pending.len() - this.at);
        out.put_slice(&this.pending[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

/// The width of testrig's base64 lines (`base64 -w 76`).
const WRAP: usize = 76;

fn damaged(line: usize, len: usize) -> io::Error {
    protocol_error(format!(
        "the command's output arrived damaged (line {line} of its base64 has {len} characters, not {WRAP}): QEMU's \
         virtio console dropped data because the host side fell behind; the command's output is not trustworthy"
    ))
}

fn protocol_error(message: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("backdoor protocol: {message}"),
    )
}

/// How much the host reads from the shell's socket at once.
const READ_BUFFER: usize = 1 << 20;

/// The command as nixpkgs' driver has the guest's bash run it: under `bash -c` with `set -euo pipefail`, maybe
/// under `timeout`.
fn guarded_command(command: &str, guest_timeout_secs: Option<f64>) -> String {
    let script = shell_quote(&format!("set -euo pipefail; {command}"));
    match guest_timeout_secs {
        Some(secs) => format!("timeout {secs} bash -c {script}"),
        None => format!("bash -c {script}"),
    }
}

/// The command as testrig has the guest's bash run it: in a subshell, with `set -euo pipefail`, as `bash -c` would
/// (the same isolation: variables, `cd`, `exit` and traps stay in the subshell) but without starting a program.
/// A guest-side timeout still needs one (`timeout` runs a program and reports 124 when it fires, which scripts
/// test for), so a command with a timeout runs as nixpkgs runs it. The subshell does not get testrig's
/// descriptors 8 and 9 ([`WRITER_SETUP`]): a daemon it starts must not hold the host's reply open.
fn isolated_command(command: &str, guest_timeout_secs: Option<f64>) -> String {
    match guest_timeout_secs {
        Some(_) => format!("{} 8<&- 9>&-", guarded_command(command, guest_timeout_secs)),
        None => format!(
            "(set -euo pipefail; eval {}) 8<&- 9>&-",
            ansi_c_quote(command)
        ),
    }
}

/// nixpkgs' line for one command: its stdout as one line of base64 (the status is asked for separately).
pub fn output_line(command: &str, guest_timeout_secs: Option<f64>) -> String {
    format!(
        "{} | (base64 -w 0; echo)",
        guarded_command(command, guest_timeout_secs)
    )
}

/// Run first on each of testrig's lines; does something once per boot of the backdoor's bash. Descriptor 9: a pipe
/// to a `cat` writing to the console; whatever testrig's lines send back goes through it, so that the console
/// gets writes as large as the pipe holds instead of one per base64 line (base64's stdout on the console itself
/// is line buffered, a tty, and each write is one slow trip through QEMU's virtio console under TCG: 3 MB took
/// 6 s that way, 0.4 s this way). Descriptor 8: a pipe nothing ever writes to, so that `read -t` on it is a
/// sleep without starting a program (the wait loops'). `kill -0` starts the writer again if it has gone.
pub const WRITER_SETUP: &str = r#"{ kill -0 "${testrig_writer-}" 2>/dev/null || { exec 8<> <(:) 9> >(exec cat); testrig_writer=$!; }; }"#;

/// testrig's line for one command: the base64 in lines of 76, an empty line, then the status line, in one round
/// trip, all through the writer. `printf` is a bash builtin and `PIPESTATUS` is expanded before it runs. The
/// fixed line width lets the reader notice data the console lost (`read_wrapped_output`).
fn output_and_status_line(command: &str, guest_timeout_secs: Option<f64>) -> String {
    format!(
        "{WRITER_SETUP}; {} | base64 -w {WRAP} >&9; printf '\\n%s\\n' \"${{PIPESTATUS[0]}}\" >&9",
        isolated_command(command, guest_timeout_secs)
    )
}

/// How often a wait loop in the guest looks at a condition a bash builtin can check (`[ -e ]`, a `/dev/tcp`
/// connection, a read of `/proc/net/unix`): cheap enough to do 20 times a second without starting a program.
pub const WAIT_TICK_SECS: f64 = 0.05;

/// One slice of a wait, run by the backdoor's bash itself: it calls `check` (the body of a bash function) every
/// [`WAIT_TICK_SECS`] until it returns something other than 1, or until `budget` has passed (then the reply's
/// status is 1: not yet). The reply has a command's wire format: the base64 of the file `$testrig_f` when
/// `check` left something in it (a command's output), then the status. The host sends slices of a second or
/// less until its deadline, so a wait ends on time and the host hears from the guest every second.
///
/// The loop runs in the backdoor's bash, not in a subshell, so that the state of the checks' pacing (`testrig_n`,
/// when the last paced check ran, and `testrig_g`, the pause before the next) carries over from one slice to the
/// next; `first` resets it. Checks that start programs pace themselves with `testrig_due` (is the pause over?)
/// and `testrig_backoff CAP_MS` (the next pause: 100 ms, doubled each time up to CAP_MS), so that a long wait
/// starts no more programs per second than nixpkgs' once-a-second polling, whose every attempt starts three or
/// four. `read -t` on descriptor 8 is the pause (see [`WRITER_SETUP`]); `sleep` only if that descriptor is broken.
pub fn wait_slice_line(check: &str, first: bool, budget: std::time::Duration) -> String {
    let reset = if first {
        r#"testrig_n=0; testrig_g=0; testrig_p=; : >"$testrig_f"; "#
    } else {
        ""
    };
    format!(
        concat!(
            "{setup}; testrig_f=/dev/shm/testrig-wait; [ -w /dev/shm ] || testrig_f=/tmp/testrig-wait; {reset}",
            "testrig_due() {{ (( testrig_now - testrig_n >= testrig_g * 1000 )) || return 1; testrig_n=$testrig_now; }}; ",
            "testrig_backoff() {{ testrig_g=$(( testrig_g ? testrig_g * 2 : 100 )); (( testrig_g <= $1 )) || testrig_g=$1; }}; ",
            "testrig_c() {{ {check}; }}; ",
            "testrig_end=$(( ${{EPOCHREALTIME/[.,]/}} + {budget_us} )); ",
            "while :; do testrig_now=${{EPOCHREALTIME/[.,]/}}; testrig_c; testrig_s=$?; ",
            "(( testrig_s == 1 && testrig_now < testrig_end )) || break; ",
            "read -t {tick} -u 8 || (( $? > 128 )) || sleep {tick}; done; ",
            r#"if (( testrig_s != 1 )) && [ -s "$testrig_f" ]; then base64 -w {wrap} <"$testrig_f" >&9; fi; "#,
            r#"printf '\n%s\n' "$testrig_s" >&9"#
        ),
        setup = WRITER_SETUP,
        reset = reset,
        check = check,
        budget_us = budget.as_micros(),
        tick = WAIT_TICK_SECS,
        wrap = WRAP,
    )
}

/// Quotes a string as bash's `$'...'`, on one line: a multi-line command is still one line on the wire.
pub fn ansi_c_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str("$'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Prints the exit status of the command of the previous line (the first element of its pipeline).
const STATUS_COMMAND: &str = "echo ${PIPESTATUS[0]}";

/// Quotes a string for a POSIX shell, as Python's `shlex.quote` does.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c));
    if safe {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r#"'"'"'"#))
    }
}

/// A real `bash` standing in for the guest's backdoor, for the tests here and in waits.rs.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use std::process::Stdio;
    use tokio::process::{Child, ChildStdin, ChildStdout, Command};

    /// A real `bash --norc` reading commands from a pipe, as the guest's reads them from /dev/hvc0.
    pub(crate) async fn bash_shell(framing: Framing) -> (Child, Shell<ChildStdout, ChildStdin>) {
        let mut child = Command::new("bash")
            .args([
                "--norc",
                "-c",
                &format!("echo '{READY_MARKER}'; exec bash --norc"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let shell = Shell::new(
            child.stdout.take().unwrap(),
            child.stdin.take().unwrap(),
            framing,
        );
        (child, shell)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::bash_shell;
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn exact_output_and_status() {
        for framing in [Framing::OneRoundTrip, Framing::TwoRoundTrips] {
            exact_output_and_status_with(framing).await;
        }
    }

    async fn exact_output_and_status_with(framing: Framing) {
        let (_child, mut shell) = bash_shell(framing).await;
        shell.wait_until_ready().await.unwrap();

        let out = shell.run("echo hello", None).await.unwrap();
        assert_eq!(
            out,
            CommandOutput {
                status: 0,
                stdout: b"hello\n".to_vec()
            }
        );

        let out = shell.run("true", None).await.unwrap();
        assert_eq!(
            out,
            CommandOutput {
                status: 0,
                stdout: vec![]
            }
        );

        let out = shell.run("echo partial; exit 3", None).await.unwrap();
        assert_eq!(
            out,
            CommandOutput {
                status: 3,
                stdout: b"partial\n".to_vec()
            }
        );

        // set -euo pipefail: a failing step fails the command.
        let out = shell
            .run("false | cat; echo unreachable", None)
            .await
            .unwrap();
        assert_eq!(out.status, 1);
        assert!(out.stdout.is_empty());

        let out = shell
            .run("echo 'it'\"'\"'s'; printf 'a\\x00\\xff\\r\\nb'", None)
            .await
            .unwrap();
        assert_eq!(out.stdout, b"it's\na\x00\xff\r\nb");

        let out = shell
            .run("head -c 1500000 /dev/zero | tr '\\0' x", None)
            .await
            .unwrap();
        assert_eq!(out.stdout.len(), 1_500_000);
        assert!(out.stdout.iter().all(|&b| b == b'x'));

        let out = shell.run("sleep 5", Some(0.2)).await.unwrap();
        assert_eq!(out.status, 124);

        // The shell is still in step after all that.
        let out = shell.run("echo $((6 * 7))", None).await.unwrap();
        assert_eq!(out.stdout, b"42\n");
    }

    /// `Drained` follows a file that another writer appends to, as QEMU's `-chardev file` does, from its start.
    #[tokio::test(flavor = "current_thread")]
    async fn drained_follows_a_growing_file() {
        use std::io::Write;
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shell.out");
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(b"before\n").unwrap();
        let mut drained = Drained::tail(&path, "test").unwrap();
        let writer = std::thread::spawn(move || {
            for i in 0..50u32 {
                std::thread::sleep(std::time::Duration::from_millis(2));
                file.write_all(format!("line {i}\n").as_bytes()).unwrap();
            }
        });
        let expected: String = std::iter::once("before\n".to_owned())
            .chain((0..50).map(|i| format!("line {i}\n")))
            .collect();
        let mut got = vec![0u8; expected.len()];
        drained.read_exact(&mut got).await.unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), expected);
        writer.join().unwrap();
    }

    #[test]
    fn quoting_matches_shlex() {
        assert_eq!(shell_quote("abc"), "abc");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r#"'it'"'"'s'"#);
        assert_eq!(
            output_line("true", Some(5.0)),
            "timeout 5 bash -c 'set -euo pipefail; true' | (base64 -w 0; echo)"
        );
        assert_eq!(
            output_and_status_line("true", None),
            format!(
                r#"{WRITER_SETUP}; (set -euo pipefail; eval $'true') 8<&- 9>&- | base64 -w 76 >&9; printf '\n%s\n' "${{PIPESTATUS[0]}}" >&9"#
            )
        );
        assert_eq!(ansi_c_quote("it's a\\b\nc\td"), r"$'it\'s a\\b\nc\x09d'");
    }

    /// What the shell reads when the guest's reply is `reply`.
    async fn read_reply(reply: &[u8]) -> io::Result<CommandOutput> {
        let (mut guest, host) = tokio::io::duplex(1 << 20);
        guest.write_all(reply).await.unwrap();
        // The guest says no more (EOF for the shell) but still takes what the shell sends.
        guest.shutdown().await.unwrap();
        let (reader, writer) = tokio::io::split(host);
        let mut shell = Shell::new(reader, writer, Framing::OneRoundTrip);
        let result = shell.run("true", None).await;
        drop(guest);
        result
    }

    fn wrapped(data: &[u8]) -> Vec<u8> {
        let encoded = base64::engine::general_purpose::STANDARD.encode(data);
        let mut out = Vec::new();
        for chunk in encoded.as_bytes().chunks(WRAP) {
            out.extend_from_slice(chunk);
            out.push(b'\n');
        }
        out
    }

    #[tokio::test(flavor = "current_thread")]
    async fn output_the_console_lost_bytes_of_is_an_error_not_wrong_output() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut whole = wrapped(&data);
        let base64_len = whole.len();
        whole.extend_from_slice(b"\n0\n");
        assert_eq!(read_reply(&whole).await.unwrap().stdout, data);

        // Drops of every size up to five lines, anywhere but in the last two lines (where a loss of a multiple of
        // 4 characters can leave a well-formed shorter last line): each is an error, except the length of a whole
        // number of lines (77 bytes each, wherever it starts), which leaves well-formed base64 behind.
        let mut noticed = 0;
        for at in [
            0,
            1,
            5,
            75,
            76,
            77,
            78,
            1000,
            4096,
            base64_len - 2 * 77 - 400,
        ] {
            for len in 1..=400 {
                let mut cut = whole[..at].to_vec();
                cut.extend_from_slice(&whole[at + len..]);
                let whole_lines = len % 77 == 0;
                match read_reply(&cut).await {
                    // Mostly "damaged"; a drop that empties a line ends the base64 early, and the status line
                    // that follows is then not a number.
                    Err(e) => {
                        let e = e.to_string();
                        assert!(
                            e.contains("damaged") || e.contains("expected an exit status"),
                            "{e}"
                        );
                        noticed += 1;
                    }
                    Ok(_) => assert!(whole_lines, "a drop of {len} bytes at {at} went unnoticed"),
                }
            }
        }
        assert!(noticed > 3900, "{noticed}");
    }
}
