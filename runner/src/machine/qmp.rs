//! QEMU's machine protocol (QMP): connected as soon as QEMU runs, as nixpkgs' driver does, so that the events of the
//! whole boot are there for `wait_for_qmp_event`. One reader task owns the receiving side: it hands each command's
//! reply to the caller waiting for it (matched by the `id` QMP echoes) and queues every event, in order.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

/// At most this many unread events are kept; older ones are dropped (with a warning), so a guest that floods QMP
/// with events nobody waits for cannot grow the runner without bound. A boot emits a handful.
const MAX_QUEUED_EVENTS: usize = 10_000;

pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped whenever an event is queued or the connection closes, to wake `next_event`.
    changed: watch::Sender<()>,
}

#[derive(Default)]
struct State {
    /// Callers waiting for the reply to the command of this id.
    replies: HashMap<u64, oneshot::Sender<Value>>,
    events: VecDeque<Value>,
    dropped_events: u64,
    /// Why the connection ended (QEMU exited, or sent something that is not QMP); the queued events stay readable.
    closed: Option<String>,
}

impl Qmp {
    /// Connects to QEMU's QMP server socket and leaves capabilities negotiation mode. The caller bounds this with a
    /// deadline.
    pub async fn connect(path: &Path) -> io::Result<Self> {
        Self::from_stream(UnixStream::connect(path).await?).await
    }

    pub async fn from_stream(stream: UnixStream) -> io::Result<Self> {
        let (read, writer) = stream.into_split();
        let mut reader = BufReader::new(read);
        let greeting = read_message(&mut reader).await?;
        if greeting.get("QMP").is_none() {
            return Err(protocol_error(format!(
                "expected QMP's greeting, got {greeting:.200}"
            )));
        }
        let (changed, _) = watch::channel(());
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed,
        });
        let task = tokio::spawn(read_messages(reader, shared.clone()).in_current_span());
        let qmp = Qmp {
            writer: tokio::sync::Mutex::new(writer),
            shared,
            next_id: AtomicU64::new(1),
            reader: task,
        };
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value. The caller bounds this with a deadline; a reply that comes
    /// after the caller gave up is dropped.
    pub async fn execute(&self, command: &str, arguments: Value) -> io::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.shared.state.lock().unwrap();
            if let Some(why) = &state.closed {
                return Err(closed_error(why));
            }
            state.replies.insert(id, tx);
        }
        let request = json!({"execute": command, "arguments": arguments, "id": id});
        let sent = async {
            let mut writer = self.writer.lock().await;
            writer.write_all(format!("{request}\n").as_bytes()).await?;
            writer.flush().await
        }
        .await;
        if let Err(e) = sent {
            self.shared.state.lock().unwrap().replies.remove(&id);
            return Err(e);
        }
        let reply = rx.await.map_err(|_| {
            let state = self.shared.state.lock().unwrap();
            closed_error(state.closed.as_deref().unwrap_or("QEMU closed QMP"))
        })?;
        if let Some(ret) = reply.get("return") {
            return Ok(ret.clone());
        }
        let desc = reply
            .pointer("/error/desc")
            .and_then(Value::as_str)
            .unwrap_or("unknown error");
        Err(io::Error::other(format!("QMP `{command}` failed: {desc}")))
    }

    /// The oldest event not read yet, waiting up to `timeout` for one: `Ok(None)` when none came in time, an error
    /// when every event has been read and the connection is closed (no event can come any more).
    pub async fn next_event(&self, timeout: Duration) -> Result<Option<Value>, String> {
        // Subscribed before looking, so an event queued between the look and the wait still wakes it.
        let mut changed = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let mut state = self.shared.state.lock().unwrap();
                if let Some(event) = state.events.pop_front() {
                    return Ok(Some(event));
                }
                if let Some(why) = &state.closed {
                    return Err(why.clone());
                }
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => continue,
                // The sender lives as long as `self`; an error cannot happen, but would mean no more events.
                Ok(Err(_)) => return Err("QMP reader stopped".into()),
                Err(_) => return Ok(None),
            }
        }
    }
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The reader task: routes replies, queues events, and on EOF or garbage marks the connection closed and fails
/// the callers still waiting for a reply.
async fn read_messages(mut reader: BufReader<impl AsyncRead + Unpin>, shared: Arc<Shared>) {
    let why = loop {
        let message = match read_message(&mut reader).await {
            Ok(message) => message,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                break "QEMU closed QMP".to_owned()
            }
            Err(e) => break format!("reading QMP: {e}"),
        };
        let mut state = shared.state.lock().unwrap();
        if message.get("event").is_some() {
            if state.events.len() >= MAX_QUEUED_EVENTS {
                state.events.pop_front();
                state.dropped_events += 1;
                if state.dropped_events == 1 {
                    tracing::warn!(
                        "more than {MAX_QUEUED_EVENTS} QMP events unread; dropping the oldest"
                    );
                }
            }
            state.events.push_back(message);
            drop(state);
            shared.changed.send_replace(());
        } else if message.get("return").is_some() || message.get("error").is_some() {
            // QMP echoes the id; an error for a request it could not parse may lack it, and QMP answers in order,
            // so that one belongs to the oldest waiting caller.
            let id = message
                .get("id")
                .and_then(Value::as_u64)
                .or_else(|| state.replies.keys().min().copied());
            if let Some(tx) = id.and_then(|id| state.replies.remove(&id)) {
                let _ = tx.send(message);
            } else {
                tracing::debug!(%message, "QMP reply nobody waits for");
            }
        } else {
            tracing::debug!(%message, "unexpected QMP message");
        }
    };
    let mut state = shared.state.lock().unwrap();
    state.closed = Some(why);
    // Dropping the senders wakes their callers with an error.
    state.replies.clear();
    drop(state);
    shared.changed.send_replace(());
}

async fn read_message(reader: &mut BufReader<impl AsyncRead + Unpin>) -> io::Result<Value> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "QEMU closed QMP",
        ));
    }
    serde_json::from_str(&line)
        .map_err(|e| protocol_error(format!("not JSON ({e}): {:.200}", line.trim_end())))
}

fn protocol_error(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("QMP: {message}"))
}

fn closed_error(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, why.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    /// QEMU's side of the socket: reads requests, writes what the test says, as JSON lines.
    struct Server {
        lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
        write: OwnedWriteHalf,
    }

    impl Server {
        async fn send(&mut self, message: Value) {
            self.write
                .write_all(format!("{message}\n").as_bytes())
                .await
                .unwrap();
        }

        async fn request(&mut self) -> Value {
            let line = self.lines.next_line().await.unwrap().expect("a request");
            serde_json::from_str(&line).unwrap()
        }

        /// Answers the next request with `{"return": ret}`, echoing its id; returns the request.
        async fn answer(&mut self, ret: Value) -> Value {
            let request = self.request().await;
            self.send(json!({"return": ret, "id": request["id"]})).await;
            request
        }
    }

    async fn connected() -> (Qmp, Server) {
        let (client, server) = UnixStream::pair().unwrap();
        let (read, write) = server.into_split();
        let mut server = Server {
            lines: BufReader::new(read).lines(),
            write,
        };
        let serve = async {
            server
                .send(json!({"QMP": {"version": {}, "capabilities": []}}))
                .await;
            let request = server.answer(json!({})).await;
            assert_eq!(request["execute"], "qmp_capabilities");
        };
        let (qmp, ()) = tokio::join!(Qmp::from_stream(client), serve);
        (qmp.unwrap(), server)
    }

    fn event(name: &str, n: u64) -> Value {
        json!({"event": name, "data": {"n": n}, "timestamp": {"seconds": n, "microseconds": 0}})
    }

    #[tokio::test(flavor = "current_thread")]
    async fn replies_reach_their_callers_and_events_queue_in_order_between_them() {
        let (qmp, mut server) = connected().await;
        let serve = async {
            let request = server.request().await;
            assert_eq!(request["execute"], "query-status");
            // Events before and after the reply are queued, not taken for it.
            server.send(event("RTC_CHANGE", 1)).await;
            server
                .send(json!({"return": {"status": "running"}, "id": request["id"]}))
                .await;
            server.send(event("STOP", 2)).await;
            let request = server.request().await;
            server
                .send(json!({"error": {"class": "GenericError", "desc": "no such thing"}, "id": request["id"]}))
                .await;
        };
        let calls = async {
            let status = qmp.execute("query-status", json!({})).await.unwrap();
            assert_eq!(status["status"], "running");
            let err = qmp.execute("bogus", json!({})).await.unwrap_err();
            assert_eq!(err.to_string(), "QMP `bogus` failed: no such thing");
        };
        tokio::join!(serve, calls);
        let first = qmp.next_event(Duration::ZERO).await.unwrap().unwrap();
        assert_eq!(first, event("RTC_CHANGE", 1));
        let second = qmp.next_event(Duration::ZERO).await.unwrap().unwrap();
        assert_eq!(second, event("STOP", 2));
        assert_eq!(qmp.next_event(Duration::ZERO).await, Ok(None));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_commands_get_their_own_replies_even_out_of_order() {
        let (qmp, mut server) = connected().await;
        let serve = async {
            let a = server.request().await;
            let b = server.request().await;
            // Answered in reverse, each echoing its id.
            server
                .send(json!({"return": b["execute"], "id": b["id"]}))
                .await;
            server
                .send(json!({"return": a["execute"], "id": a["id"]}))
                .await;
        };
        let (_, a, b) = tokio::join!(
            serve,
            qmp.execute("first", json!({})),
            qmp.execute("second", json!({}))
        );
        assert_eq!(a.unwrap(), "first");
        assert_eq!(b.unwrap(), "second");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiting_reader_wakes_for_a_later_event_and_times_out_without_one() {
        let (qmp, mut server) = connected().await;
        assert_eq!(
            qmp.next_event(Duration::from_millis(50)).await,
            Ok(None),
            "no event yet"
        );
        let later = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            server.send(event("SHUTDOWN", 3)).await;
        };
        let (got, ()) = tokio::join!(qmp.next_event(Duration::from_secs(30)), later);
        assert_eq!(got, Ok(Some(event("SHUTDOWN", 3))));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn events_stay_readable_after_qemu_closes_then_the_end_is_an_error() {
        let (qmp, mut server) = connected().await;
        server.send(event("SHUTDOWN", 1)).await;
        server.send(event("STOP", 2)).await;
        drop(server);
        assert_eq!(
            qmp.next_event(Duration::from_secs(30)).await,
            Ok(Some(event("SHUTDOWN", 1)))
        );
        assert_eq!(
            qmp.next_event(Duration::from_secs(30)).await,
            Ok(Some(event("STOP", 2)))
        );
        assert_eq!(
            qmp.next_event(Duration::from_secs(30)).await,
            Err("QEMU closed QMP".to_owned())
        );
        let err = qmp.execute("query-status", json!({})).await.unwrap_err();
        assert_eq!(err.to_string(), "QEMU closed QMP");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_command_waiting_when_qemu_exits_fails_instead_of_hanging() {
        let (qmp, mut server) = connected().await;
        let serve = async {
            server.request().await;
            drop(server);
        };
        let (result, ()) = tokio::join!(qmp.execute("query-status", json!({})), serve);
        assert_eq!(result.unwrap_err().to_string(), "QEMU closed QMP");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn something_that_is_not_qmp_is_an_error() {
        let (client, mut server) = UnixStream::pair().unwrap();
        server.write_all(b"SSH-2.0-OpenSSH\n").await.unwrap();
        let err = Qmp::from_stream(client).await.err().unwrap();
        assert!(err.to_string().starts_with("QMP: not JSON"), "{err}");
    }
}
