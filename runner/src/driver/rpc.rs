//! The runner's end of the Python bridge: a unix socket where each Python thread has a connection, one JSON
//! request per line, one response per request (see python/PROTOCOL.md).

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::dispatch::dispatch;
use super::request::{Envelope, MachineOp, Request};
use super::session::Session;

/// Serves requests until the returned task is aborted (every connection task with it).
pub fn serve(path: &Path, session: Arc<Session>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = UnixListener::bind(path)?;
    Ok(tokio::spawn(
        async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(serve_connection(stream, session.clone()).in_current_span());
            }
        }
        .in_current_span(),
    ))
}

async fn serve_connection(stream: UnixStream, session: Arc<Session>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let response = match serde_json::from_str::<Envelope>(&line) {
            Ok(envelope) => {
                tracing::trace!(op = %envelope.op, machine = ?envelope.machine, "python request");
                let id = envelope.id;
                let result = match envelope.request() {
                    Err(e) => Some(Err(e)),
                    Ok(request) => answer(&session, request, &mut lines).await,
                };
                let Some(result) = result else { break };
                match result {
                    Ok(result) => json!({"id": id, "ok": result}),
                    Err(e) => {
                        json!({"id": id, "error": {"kind": e.kind(), "message": e.to_string()}})
                    }
                }
            }
            Err(e) => {
                json!({"id": Value::Null, "error": {"kind": "bad_request", "message": format!("malformed request: {e}")}})
            }
        };
        let mut text = response.to_string();
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() {
            break;
        }
    }
}

/// Runs one request; `None` when Python gave up on it (closed the connection) and nothing is to be answered.
async fn answer<R: tokio::io::AsyncBufRead + Unpin>(
    session: &Session,
    request: Request,
    lines: &mut tokio::io::Lines<R>,
) -> Option<crate::machine::OpResult<Value>> {
    let waits_on_a_person = matches!(
        request,
        Request::Machine {
            op: MachineOp::ShellInteract { .. },
            ..
        }
    );
    if waits_on_a_person {
        // Only this op ends when Python gives up on it (Ctrl-C at the -I prompt closes the connection): it waits
        // on a person, and dropping it stops socat, after which the next command resyncs the shell. Other ops run
        // to their end, so the guest shell stays in step.
        tokio::select! {
            result = dispatch(session, request) => Some(result),
            _ = lines.next_line() => None,
        }
    } else {
        Some(dispatch(session, request).await)
    }
}
