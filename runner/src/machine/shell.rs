//! The host side of NixOS's backdoor shell: a `bash` reading commands from `/dev/hvc0` in the guest.
//!
//! One round trip per command. The Python driver sends the command, reads the base64 of its stdout, then sends
//! `echo ${PIPESTATUS[0]}` and reads the status; here both go in one line (see `output_and_status_line`), since
//! bash runs them in order and `PIPESTATUS` still holds the pipeline's statuses when the second part expands it.
//! The guest shell is stock: nothing here needs more than bash, coreutils `timeout` and `base64`.

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
    /// Something other than this driver used the connection (`shell_interact(address)`): before the next command,
    /// what it left unread is skipped (`resync`).
    needs_resync: bool,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Shell<R, W> {
    pub fn new(reader: R, writer: W, framing: Framing) -> Self {
        Shell {
            reader: BufReader::new(reader),
            writer,
            ready: false,
            framing,
            needs_resync: false,
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

    /// The connection is about to be used by someone else (`shell_interact(address)`): what is buffered here is
    /// theirs to see, and the next command first skips whatever they leave unread. Set before handing the
    /// connection over, so that an interaction that is cancelled half-way still leaves the shell usable.
    pub fn hand_over(&mut self) {
        let buffered = self.reader.buffer().len();
        self.reader.consume(buffered);
        self.needs_resync = true;
    }

    /// Brings the connection back in step after someone else used it: sends a line that prints a fresh marker and
    /// skips everything up to the marker's line (output the other user left unread, and the marker command's own
    /// echo if the tty echoes: the command's text is not the marker). The caller bounds this with a deadline.
    pub async fn resync(&mut self) -> io::Result<()> {
        let token = format!(
            "{}-{}",
            std::process::id(),
            RESYNC_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        self.send(&format!("printf 'testrig-resync-%s\\n' {token}"))
            .await?;
        let marker = format!("testrig-resync-{token}");
        loop {
            let line = self.read_reply_line().await?;
            if line == marker {
                self.needs_resync = false;
                return Ok(());
            }
        }
    }

    async fn resync_if_needed(&mut self) -> io::Result<()> {
        if self.needs_resync {
            self.resync().await?;
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
        self.resync_if_needed().await?;
        let (stdout, status_line) = match self.framing {
            Framing::OneRoundTrip => {
                self.send(&output_and_status_line(command, guest_timeout_secs))
                    .await?;
                let (stdout, received) = self.read_wrapped_output().await?;
                let status_line = self.read_reply_line().await?;
                let received = received + status_line.len();
                let sent = self.read_reply_line().await?;
                if sent.trim().parse::<usize>().ok() != Some(received) {
                    return Err(protocol_error(format!(
                        "the command's output arrived damaged ({received} characters of its reply arrived, the guest \
                         sent {sent:.20}): QEMU's virtio console dropped data because the host side fell behind; the \
                         command's output is not trustworthy"
                    )));
                }
                (stdout, status_line)
            }
            Framing::TwoRoundTrips => {
                self.send(&output_line(command, guest_timeout_secs)).await?;
                let stdout = self.read_output().await?;
                self.send(STATUS_COMMAND).await?;
                (stdout, self.read_reply_line().await?)
            }
        };
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
        self.resync_if_needed().await?;
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
    async fn read_wrapped_output(&mut self) -> io::Result<(Vec<u8>, usize)> {
        let mut encoded = String::new();
        // Characters of the reply read so far, newlines included, to compare with the count the guest sends.
        let mut received = 0;
        let mut short_line: Option<(usize, usize)> = None;
        for number in 1.. {
            let line = self.read_reply_line().await?;
            received += line.len() + 1;
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
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&encoded)
            .map_err(|e| protocol_error(format!("output is not base64 ({e}): {encoded:.80}")))?;
        Ok((decoded, received))
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

impl<W> Shell<tokio::net::unix::OwnedReadHalf, W> {
    /// The socket of the connection, to hand to another process (`shell_interact(address)`).
    pub fn socket_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        let stream: &tokio::net::UnixStream = self.reader.get_ref().as_ref();
        stream.as_raw_fd()
    }
}

/// Makes each resync marker of the process unique.
static RESYNC_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

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

/// The command as the guest's bash runs it: under `bash -c` with `set -euo pipefail`, maybe under `timeout`.
fn guarded_command(command: &str, guest_timeout_secs: Option<f64>) -> String {
    let script = shell_quote(&format!("set -euo pipefail; {command}"));
    match guest_timeout_secs {
        Some(secs) => format!("timeout {secs} bash -c {script}"),
        None => format!("bash -c {script}"),
    }
}

/// nixpkgs' line for one command: its stdout as one line of base64 (the status is asked for separately).
pub fn output_line(command: &str, guest_timeout_secs: Option<f64>) -> String {
    format!(
        "{} | (base64 -w 0; echo)",
        guarded_command(command, guest_timeout_secs)
    )
}

/// testrig's line for one command, in one round trip: the base64 of its stdout in lines of 76, an empty line, the
/// status line, then the number of characters of all that. The reply is captured in the shell (`$(...)`, one fork,
/// no new program) and written by the `printf` builtin at once: base64 writing to the guest's tty itself would be
/// line buffered, one write per 77 bytes, each a trip through QEMU's virtio console, an order of magnitude slower
/// for megabytes. QEMU drops whole writes when its socket is full, so the count (`${#...}` is the length bash
/// already knows) is what tells the reader that something was lost (`Shell::run`); the fixed line width catches a
/// cut line before the count is read.
fn output_and_status_line(command: &str, guest_timeout_secs: Option<f64>) -> String {
    format!(
        "{REPLY}=$({} | base64 -w {WRAP}; printf '\\n%s' \"${{PIPESTATUS[0]}}\"); printf '%s\\n%s\\n' \"${REPLY}\" \"${{#{REPLY}}}\"; unset {REPLY}",
        guarded_command(command, guest_timeout_secs)
    )
}

/// The backdoor shell's variable that holds a reply while it is written.
const REPLY: &str = "__testrig_reply";

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;
    use tokio::process::{Child, ChildStdin, ChildStdout, Command};

    /// A real `bash --norc` reading commands from a pipe, as the guest's reads them from /dev/hvc0.
    async fn bash_shell(framing: Framing) -> (Child, Shell<ChildStdout, ChildStdin>) {
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
            r#"__testrig_reply=$(bash -c 'set -euo pipefail; true' | base64 -w 76; printf '\n%s' "${PIPESTATUS[0]}"); printf '%s\n%s\n' "$__testrig_reply" "${#__testrig_reply}"; unset __testrig_reply"#
        );
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

    /// The guest's reply to `output_and_status_line`: the base64 lines, an empty line, the status, and the count
    /// of characters before it.
    fn reply_of(data: &[u8], status: i32) -> (Vec<u8>, usize) {
        let mut reply = wrapped(data);
        reply.extend_from_slice(format!("\n{status}").as_bytes());
        let count = reply.len();
        reply.extend_from_slice(format!("\n{count}\n").as_bytes());
        (reply, count)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn output_the_console_lost_bytes_of_is_an_error_not_wrong_output() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (whole, count) = reply_of(&data, 0);
        assert_eq!(read_reply(&whole).await.unwrap().stdout, data);
        let (empty, _) = reply_of(b"", 3);
        assert_eq!(
            read_reply(&empty).await.unwrap(),
            CommandOutput {
                status: 3,
                stdout: vec![]
            }
        );

        // Drops of every size up to five lines, anywhere in the reply before the count, whole lines included
        // (QEMU drops whole writes, and base64 on a tty wrote one line per write): each is an error.
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
            count - 2 * 77 - 400,
            count - 401,
        ] {
            for len in 1..=400 {
                let mut cut = whole[..at].to_vec();
                cut.extend_from_slice(&whole[at + len..]);
                match read_reply(&cut).await {
                    Err(e) => {
                        let e = e.to_string();
                        assert!(
                            e.contains("damaged")
                                || e.contains("not base64")
                                || e.contains("expected an exit status")
                                || e.contains("closed its connection"),
                            "{e}"
                        );
                        noticed += 1;
                    }
                    Ok(_) => panic!("a drop of {len} bytes at {at} went unnoticed"),
                }
            }
        }
        assert_eq!(noticed, 11 * 400);
    }
}
