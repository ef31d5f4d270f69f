//! QEMU's human monitor (HMP), which QEMU connects to as a client of the runner's `monitor` socket.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const PROMPT: &[u8] = b"(qemu) ";

pub struct Monitor<S> {
    stream: S,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Monitor<S> {
    /// Takes a connected monitor and reads its greeting up to the first prompt.
    pub async fn connect(stream: S) -> io::Result<Self> {
        let mut monitor = Monitor { stream };
        monitor.read_until_prompt().await?;
        Ok(monitor)
    }

    /// Sends one command and returns what QEMU printed before the next prompt.
    pub async fn command(&mut self, command: &str) -> io::Result<String> {
        self.stream
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        self.stream.flush().await?;
        self.read_until_prompt().await
    }

    /// Sends a command after which QEMU exits (`quit`), so no prompt follows.
    pub async fn command_without_reply(&mut self, command: &str) -> io::Result<()> {
        self.stream
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        self.stream.flush().await
    }

    async fn read_until_prompt(&mut self) -> io::Result<String> {
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.ends_with(PROMPT) {
            let n = self.stream.read(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "QEMU closed the monitor connection",
                ));
            }
            answer.extend_from_slice(&buf[..n]);
        }
        answer.truncate(answer.len() - PROMPT.len());
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }
}
