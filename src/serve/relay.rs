//! The relay: one host connection paired with one agent connection.
//!
//! Two loops run side by side. Host → agent: each frame is judged (`Guard::judge`)
//! and either forwarded as the exact bytes received, answered in the agent's place
//! with a ttrpc error, or — for protocol violations — the connection is closed.
//! Agent → host: responses are relayed unchanged, except that a ReadStdout/ReadStderr
//! the policy denied gets its `data` blanked. Many requests may be in flight on one
//! connection; nothing waits for a slow (long-poll) answer. When either side closes,
//! the other is closed; requests still in flight when the agent goes away are answered
//! UNAVAILABLE.
//!
//! Both directions and the host writer run in the connection's one task. Frames are
//! read through a buffer ([`FrameReader`]: one `read` for all the frames a peer has
//! queued) and written in batches: allowed requests that arrived together go to the
//! agent in one write once no further frame is buffered (an allowed request waits at
//! most `BATCH_WAIT`, 100 µs, for the decisions of those behind it), and answers
//! queued for the host go out together. Under many requests in flight this saves most
//! system calls and wake-ups; a lone request is written as soon as it is decided.
//!
//! Limits per connection: at most `max_in_flight` requests forwarded and not yet
//! answered ([`Guard::with_max_in_flight`], default [`crate::config::DEFAULT_MAX_IN_FLIGHT`]); a
//! request beyond it is answered RESOURCE_EXHAUSTED (8) `too many requests in flight
//! on this connection (limit N)` and not forwarded. Answers waiting for a host that
//! does not read are bounded (32 frames, 8 MiB); beyond that the agent side is not
//! read, so the agent's writes block instead of agent-warden's memory growing. There
//! is no idle timeout: a long poll (WaitProcess, GetOOMEvent) may last as long as the
//! container runs, as with kata-agent itself.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::judge::{Answer, Guard, Pending, Verdict, Violation};
use crate::decision_log::Outcome;
use crate::serve::address::{Conn, ReadHalf, WriteHalf};
use crate::wire::envelope::{self, Code};
use crate::wire::frame::{Frame, FrameError, FrameReader, Read, MAX_BODY, TYPE_RESPONSE};

/// Why a connection was closed (logged).
#[derive(Debug, thiserror::Error)]
enum CloseReason {
    #[error("host closed the connection")]
    HostClosed,
    #[error("agent closed the connection")]
    AgentClosed,
    #[error("host: {0}")]
    HostRead(FrameError),
    #[error("agent: {0}")]
    AgentRead(FrameError),
    #[error("agent write failed: {0}")]
    AgentWrite(std::io::Error),
    #[error("host write failed")]
    HostWrite,
    #[error("host writer gone")]
    HostWriterGone,
    #[error(transparent)]
    Violation(Violation),
}

/// Responses queued for a host that does not read, by count and by bytes: when
/// either is reached the reader of the agent side waits (and with it the agent)
/// rather than buffering without bound. A single larger frame is still let through
/// alone.
const HOST_QUEUE: usize = 32;
const HOST_QUEUE_BYTES: usize = 8 << 20;

/// The connection's in-flight table (stream id → what to do with the answer). Both
/// directions use it from the connection's one task, so the lock is never contended;
/// it is a `Mutex` rather than a `RefCell` because the connection's future must be
/// `Send` (it is spawned), and a `RefCell` shared by the two halves of its `select!`
/// would make it not so.
type Inflight = Mutex<HashMap<u32, Pending>>;

/// The queue to the task that writes to the host, bounded by frames and by bytes.
struct HostQueue {
    tx: mpsc::Sender<(Bytes, OwnedSemaphorePermit)>,
    bytes: Arc<Semaphore>,
}

/// The host writer is gone.
struct HostGone;

impl HostQueue {
    fn new() -> (HostQueue, mpsc::Receiver<(Bytes, OwnedSemaphorePermit)>) {
        let (tx, rx) = mpsc::channel(HOST_QUEUE);
        let q = HostQueue {
            tx,
            bytes: Arc::new(Semaphore::new(HOST_QUEUE_BYTES)),
        };
        (q, rx)
    }

    /// Queues one frame for the host, waiting while the queue is full.
    async fn send(&self, b: Bytes) -> Result<(), HostGone> {
        let n = b.len().clamp(1, HOST_QUEUE_BYTES) as u32;
        let permit = self
            .bytes
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| HostGone)?;
        self.tx.send((b, permit)).await.map_err(|_| HostGone)
    }
}

fn lock(m: &Inflight) -> std::sync::MutexGuard<'_, HashMap<u32, Pending>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Applies what a pending request asked for to the agent's answer, and writes its
/// decision-log record with the agent's status (before the answer goes back).
fn finish(mut p: Pending, f: Frame) -> Frame {
    if !p.blank_data && p.hook.is_none() && p.ops.is_none() && p.record.is_none() {
        return f;
    }
    let Ok(mut resp) = envelope::decode_response(f.body()) else {
        if let Some(r) = p.record.take() {
            r.close(Outcome::Unanswered(
                "the agent's answer was not a ttrpc response",
            ));
        }
        return f;
    };
    let status = envelope::status_code(&resp);
    if let Some(r) = p.record.take() {
        r.close(Outcome::Forwarded(status));
    }
    let ok = status == 0;
    if ok {
        if let Some((policy, ops)) = &p.ops {
            if let Err(e) = policy.apply_ops(ops) {
                tracing::error!(error = %e, "policy state not updated");
            }
        }
        if let Some(hook) = p.hook {
            tokio::task::spawn_blocking(move || hook());
        }
    }
    if p.blank_data && ok {
        // An empty ReadStreamResponse encodes to zero bytes.
        resp.payload = Vec::new();
        return envelope::response_frame(f.header.stream_id, &resp);
    }
    f
}

/// Relays one host connection to one agent connection until either side closes.
pub async fn relay(guard: Arc<Guard>, host: Conn, agent: Conn) {
    let conn = guard.next_conn.fetch_add(1, Ordering::Relaxed);
    tracing::info!(conn, host = %host.peer, agent = %agent.peer, "connection opened");
    let Conn {
        read: host_read,
        write: host_write,
        ..
    } = host;
    let Conn {
        read: agent_read,
        write: mut agent_write,
        ..
    } = agent;
    let mut host_read = FrameReader::new(host_read, MAX_BODY);
    let mut agent_read = FrameReader::new(agent_read, MAX_BODY);
    let inflight: Inflight = Mutex::new(HashMap::new());
    let (tx, rx) = HostQueue::new();
    // The host writer runs in this task too: handing it a frame is then a wake of the
    // running task, not of another thread.
    let writer = write_host(host_write, rx);
    tokio::pin!(writer);

    let (why, agent_gone, writer_done) = tokio::select! {
        why = host_to_agent(&guard, conn, &mut host_read, &mut agent_write, &inflight, &tx) => (why, false, false),
        why = agent_to_host(&mut agent_read, &inflight, &tx) => (why, true, false),
        () = &mut writer => (CloseReason::HostWrite, false, true),
    };
    let _ = agent_write.shutdown().await;
    if !writer_done {
        // Requests the agent will never answer get UNAVAILABLE; then the writer sends
        // what is queued and closes the host side.
        let left: Vec<u32> = if agent_gone {
            lock(&inflight).drain().map(|(id, _)| id).collect()
        } else {
            Vec::new()
        };
        let last = async move {
            for id in left {
                let f = Answer::new(
                    Code::UNAVAILABLE,
                    "agent connection closed before it answered",
                )
                .frame(id);
                let _ = tx.send(f.raw().clone()).await;
            }
            drop(tx);
        };
        tokio::join!(last, &mut writer);
    }
    tracing::info!(conn, reason = %why, "connection closed");
}

/// Writes the queued frames to the host. Frames that are queued together go out in
/// one write (small ones copied into one buffer), so a burst of answers costs one
/// system call rather than one per frame. Each frame's permit is held until the
/// frame is written.
async fn write_host(mut w: WriteHalf, mut rx: mpsc::Receiver<(Bytes, OwnedSemaphorePermit)>) {
    let mut out = Batch::default();
    let mut permits = Vec::new();
    while let Some((b, permit)) = rx.recv().await {
        let mut next = Some((b, permit));
        while let Some((b, permit)) = next.take() {
            if out.push(&mut w, &b).await.is_err() {
                return;
            }
            permits.push(permit);
            if out.len() < BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if out.flush(&mut w).await.is_err() {
            return;
        }
        permits.clear();
    }
    let _ = w.shutdown().await;
}

/// Frames bigger than this are written on their own, never copied into a batch.
const BATCH_FRAME_MAX: usize = 16 << 10;
/// A batch is written once it holds this many bytes.
const BATCH_BYTES: usize = 64 << 10;
/// Longest time an allowed request waits in a batch for the decisions of requests
/// that arrived with it.
const BATCH_WAIT: std::time::Duration = std::time::Duration::from_micros(100);

/// Frames waiting to be written together: small frames are copied into one buffer,
/// which is written when the caller has nothing more to add right now.
#[derive(Default)]
struct Batch {
    buf: BytesMut,
    since: Option<Instant>,
}

impl Batch {
    fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether the batch should go out before more is added: big enough, or its
    /// oldest frame has waited [`BATCH_WAIT`].
    fn due(&self) -> bool {
        self.buf.len() >= BATCH_BYTES || self.since.is_some_and(|t| t.elapsed() >= BATCH_WAIT)
    }

    /// Adds one frame; a big frame is written at once (after what is batched).
    async fn push(&mut self, w: &mut WriteHalf, frame: &[u8]) -> std::io::Result<()> {
        if frame.len() > BATCH_FRAME_MAX {
            self.flush(w).await?;
            return w.write_all(frame).await;
        }
        self.buf.extend_from_slice(frame);
        self.since.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Writes what is batched.
    async fn flush(&mut self, w: &mut WriteHalf) -> std::io::Result<()> {
        self.since = None;
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = w.write_all(&self.buf).await;
        self.buf.clear();
        r
    }
}

/// Judges the host's frames and forwards the allowed ones. Allowed frames that
/// arrived together are written to the agent together: the batch goes out as soon
/// as no further frame is already buffered (or it is due), and before the loop ends.
async fn host_to_agent(
    guard: &Guard,
    conn: u64,
    host: &mut FrameReader<ReadHalf>,
    agent: &mut WriteHalf,
    inflight: &Inflight,
    tx: &HostQueue,
) -> CloseReason {
    let mut out = Batch::default();
    let why = judge_and_forward(guard, conn, host, agent, &mut out, inflight, tx).await;
    if let Err(e) = out.flush(agent).await {
        tracing::warn!(conn, reason = %why, error = %e, "agent write failed while closing");
    }
    why
}

async fn judge_and_forward(
    guard: &Guard,
    conn: u64,
    host: &mut FrameReader<ReadHalf>,
    agent: &mut WriteHalf,
    out: &mut Batch,
    inflight: &Inflight,
    tx: &HostQueue,
) -> CloseReason {
    loop {
        if out.len() > 0 && (!host.has_frame() || out.due()) {
            if let Err(e) = out.flush(agent).await {
                return CloseReason::AgentWrite(e);
            }
        }
        let f = match host.next().await {
            Ok(Read::Frame(f)) => f,
            Ok(Read::Closed) => return CloseReason::HostClosed,
            Ok(Read::Oversize(h)) => {
                tracing::warn!(
                    conn,
                    stream = h.stream_id,
                    length = h.length,
                    "oversize frame discarded"
                );
                let msg = format!(
                    "message length {} exceeds the maximum message size of {MAX_BODY}",
                    h.length
                );
                let f = Answer::new(Code::INVALID_ARGUMENT, msg).frame(h.stream_id);
                if let Err(why) = reply(out, agent, tx, f).await {
                    return why;
                }
                continue;
            }
            Err(e) => return CloseReason::HostRead(e),
        };
        let id = f.header.stream_id;
        let (busy, in_flight) = {
            let t = lock(inflight);
            (t.contains_key(&id), t.len())
        };
        match guard.judge(conn, &f, busy, in_flight) {
            Verdict::Forward(p) => {
                lock(inflight).insert(id, p);
                if let Err(e) = out.push(agent, f.raw()).await {
                    return CloseReason::AgentWrite(e);
                }
            }
            Verdict::Answer(a) => {
                if let Err(why) = reply(out, agent, tx, a.frame(id)).await {
                    return why;
                }
            }
            Verdict::Close(why) => {
                tracing::warn!(conn, stream = id, %why, "protocol violation, closing the connection");
                return CloseReason::Violation(why);
            }
        }
    }
}

/// Answers the host in the agent's place. What is batched for the agent goes out
/// first: allowed requests never wait for a host that is slow to read its answers.
async fn reply(
    out: &mut Batch,
    agent: &mut WriteHalf,
    tx: &HostQueue,
    f: Frame,
) -> Result<(), CloseReason> {
    out.flush(agent).await.map_err(CloseReason::AgentWrite)?;
    tx.send(f.raw().clone())
        .await
        .map_err(|_| CloseReason::HostWriterGone)
}

async fn agent_to_host(
    agent: &mut FrameReader<ReadHalf>,
    inflight: &Inflight,
    tx: &HostQueue,
) -> CloseReason {
    loop {
        let f = match agent.next().await {
            Ok(Read::Frame(f)) => f,
            Ok(Read::Closed) => return CloseReason::AgentClosed,
            Ok(Read::Oversize(h)) => {
                let Some(mut p) = lock(inflight).remove(&h.stream_id) else {
                    tracing::warn!(
                        stream = h.stream_id,
                        length = h.length,
                        "oversize agent frame for no request in flight, dropped"
                    );
                    continue;
                };
                if let Some(r) = p.record.take() {
                    r.close(Outcome::Unanswered(
                        "the agent's answer exceeded the maximum message size (INTERNAL sent)",
                    ));
                }
                let f = Answer::new(
                    Code::INTERNAL,
                    "agent response exceeded the maximum message size",
                )
                .frame(h.stream_id);
                if tx.send(f.raw().clone()).await.is_err() {
                    return CloseReason::HostWriterGone;
                }
                continue;
            }
            Err(e) => return CloseReason::AgentRead(e),
        };
        if f.header.kind != TYPE_RESPONSE {
            tracing::warn!(
                stream = f.header.stream_id,
                kind = f.header.kind,
                "unexpected frame type from the agent, dropped"
            );
            continue;
        }
        let Some(p) = lock(inflight).remove(&f.header.stream_id) else {
            tracing::warn!(
                stream = f.header.stream_id,
                "agent answered a stream with no request in flight, dropped"
            );
            continue;
        };
        let out = finish(p, f);
        if tx.send(out.raw().clone()).await.is_err() {
            return CloseReason::HostWriterGone;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Policy, RegoVersion};
    use crate::wire::frame::{self, Header};
    use crate::wire::input::InputShape;
    use tokio::io::{AsyncWriteExt, DuplexStream};

    fn conn(s: DuplexStream) -> Conn {
        let (r, w) = tokio::io::split(s);
        Conn {
            read: Box::new(r),
            write: Box::new(w),
            peer: "test".into(),
        }
    }

    fn start_request(id: u32) -> Frame {
        let req = envelope::request("grpc.AgentService", "StartContainer", Vec::new());
        envelope::request_frame(id, 0, &req)
    }

    async fn oversize(w: &mut DuplexStream, id: u32) {
        let len = MAX_BODY + 1;
        let h = Header {
            length: len as u32,
            stream_id: id,
            kind: TYPE_RESPONSE,
            flags: 0,
        };
        w.write_all(&h.encode()).await.unwrap();
        w.write_all(&vec![0u8; len]).await.unwrap();
    }

    /// Regression: an oversize agent frame for a stream with nothing in flight used to
    /// be answered to the host anyway (an unsolicited INTERNAL response).
    #[tokio::test]
    async fn oversize_agent_frames_answer_only_streams_in_flight() {
        let policy = Policy::load(
            "allow-all.rego",
            crate::policy::sources::ALLOW_ALL_POLICY,
            RegoVersion::V0,
        )
        .unwrap();
        let guard = Arc::new(Guard::new(policy, InputShape::Current));
        let (mut host, host_side) = tokio::io::duplex(1 << 16);
        let (mut agent, agent_side) = tokio::io::duplex(1 << 16);
        let relay = tokio::spawn(relay(guard, conn(host_side), conn(agent_side)));
        host.write_all(start_request(1).raw()).await.unwrap();
        match frame::read_frame(&mut agent, MAX_BODY).await.unwrap() {
            Read::Frame(f) => assert_eq!(f, start_request(1)),
            other => panic!("unexpected {other:?}"),
        }
        oversize(&mut agent, 7).await;
        oversize(&mut agent, 1).await;
        match frame::read_frame(&mut host, MAX_BODY).await.unwrap() {
            Read::Frame(f) => {
                assert_eq!(
                    f.header.stream_id, 1,
                    "only the stream in flight is answered"
                );
                let r = envelope::decode_response(f.body()).unwrap();
                assert_eq!(envelope::status_code(&r), Code::INTERNAL as i32);
            }
            other => panic!("unexpected {other:?}"),
        }
        drop(host);
        relay.await.unwrap();
    }
}
