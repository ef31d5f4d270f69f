//! A machine's serial console: every line QEMU printed, kept for `get_console_log` and `wait_for_console_text`.

use std::sync::Mutex;
use std::time::Duration;

use regex::Regex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::error::{OpError, OpResult};

/// More than this is dropped from the front; a runaway guest must not eat the host's memory.
const MAX_CONSOLE_BYTES: usize = 64 << 20;

#[derive(Default)]
pub struct Console {
    inner: Mutex<Inner>,
    changed: Notify,
}

#[derive(Default)]
struct Inner {
    text: String,
    /// Where the next `wait_for_console_text` starts matching: just after the previous match.
    cursor: usize,
    closed: bool,
}

impl Console {
    pub fn push_line(&self, line: &str) {
        let mut inner = self.inner.lock().unwrap();
        inner.text.push_str(line);
        inner.text.push('\n');
        if inner.text.len() > MAX_CONSOLE_BYTES {
            let mut cut = inner.text.len() - MAX_CONSOLE_BYTES / 2;
            while !inner.text.is_char_boundary(cut) {
                cut += 1;
            }
            inner.text.drain(..cut);
            inner.cursor = inner.cursor.saturating_sub(cut);
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    /// The console has no more writers (QEMU exited).
    pub fn close(&self) {
        self.inner.lock().unwrap().closed = true;
        self.changed.notify_waiters();
    }

    /// Reopens for a new boot of the same machine; the text stays.
    pub fn reopen(&self) {
        self.inner.lock().unwrap().closed = false;
    }

    pub fn text(&self) -> String {
        self.inner.lock().unwrap().text.clone()
    }

    /// Waits until `regex` matches console text printed since the previous successful wait.
    pub async fn wait_for(&self, regex: &Regex, timeout: Option<Duration>) -> OpResult<String> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let notified = self.changed.notified();
            {
                let mut inner = self.inner.lock().unwrap();
                let start = inner.cursor.min(inner.text.len());
                if let Some(m) = regex.find(&inner.text[start..]) {
                    let found = m.as_str().to_owned();
                    inner.cursor = start + m.end();
                    return Ok(found);
                }
                if inner.closed {
                    return Err(OpError::Failure(format!(
                        "the machine stopped before its console matched `{regex}`"
                    )));
                }
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Err(OpError::Timeout(format!(
                            "console did not match `{regex}` within {:?}",
                            timeout.unwrap_or_default()
                        )));
                    }
                }
                None => notified.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn matches_each_text_once_and_times_out() {
        let console = std::sync::Arc::new(Console::default());
        console.push_line("booting");
        console.push_line("login: ready");
        let re = Regex::new("ready").unwrap();
        assert_eq!(console.wait_for(&re, None).await.unwrap(), "ready");
        // The same text does not match twice.
        let err = console
            .wait_for(&re, Some(Duration::from_millis(50)))
            .await
            .unwrap_err();
        assert!(matches!(err, OpError::Timeout(_)));
        // A later line does.
        let c = console.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            c.push_line("ready again");
        });
        assert_eq!(
            console
                .wait_for(&re, Some(Duration::from_secs(5)))
                .await
                .unwrap(),
            "ready"
        );
        console.close();
        assert!(matches!(
            console.wait_for(&re, None).await.unwrap_err(),
            OpError::Failure(_)
        ));
    }
}
