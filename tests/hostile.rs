//! A hostile host on raw sockets and real ttrpc clients: limits, frames a host must not
//! send, slow and non-reading hosts. For each: the documented answer, other
//! connections unaffected, and the recording agent saw nothing that was not allowed.

mod common;

use std::time::{Duration, Instant};

use agent_warden::policy::{Decision, LoadOptions, Policy, RegoVersion};
use agent_warden::serve::judge::Guard;
use agent_warden::wire::envelope;
use agent_warden::wire::frame::{self, Frame, Read, TYPE_REQUEST, TYPE_RESPONSE};
use agent_warden::wire::input::InputShape;
use agent_warden::wire::protocols::agent;
use common::*;
use protobuf::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// Another connection still gets an allowed request through.
async fn others_unaffected(h: &Harness) {
    let mut s = raw(h).await;
    s.write_all(start_frame(1).raw()).await.unwrap();
    assert_eq!(read_reply(&mut s).await.map(|r| (r.0, r.1)), Some((1, 0)));
}

async fn wait_calls(h: &Harness, n: usize) {
    eventually(10, "the agent to see the expected calls", || {
        h.agent.calls().len() >= n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_in_flight_limit_are_resource_exhausted() {
    let policy = Policy::load("allow-all.rego", &allow_all(), RegoVersion::V0).unwrap();
    let h =
        Harness::start_guard(Guard::new(policy, InputShape::Current).with_max_in_flight(2)).await;
    let mut s = raw(&h).await;
    s.write_all(wait_frame(1).raw()).await.unwrap();
    s.write_all(wait_frame(3).raw()).await.unwrap();
    wait_calls(&h, 2).await;
    s.write_all(start_frame(5).raw()).await.unwrap();
    let (id, code, msg) = read_reply(&mut s).await.unwrap();
    assert_eq!((id, code), (5, 8), "{msg}");
    assert!(msg.contains("limit 2"), "{msg}");
    assert_eq!(h.agent.calls(), vec!["WaitProcess", "WaitProcess"]);
    // One long poll completes: there is room again on the same connection.
    h.agent.release(1);
    assert_eq!(read_reply(&mut s).await.map(|r| r.1), Some(0));
    s.write_all(start_frame(7).raw()).await.unwrap();
    assert_eq!(read_reply(&mut s).await.map(|r| (r.0, r.1)), Some((7, 0)));
    h.agent.release(1);
    assert_eq!(read_reply(&mut s).await.map(|r| r.1), Some(0));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_frame_from_the_host_closes_its_connection_only() {
    let h = Harness::start(&allow_all()).await;
    let mut s = raw(&h).await;
    let resp = ttrpc::proto::Response::new().write_to_bytes().unwrap();
    s.write_all(Frame::new(1, TYPE_RESPONSE, 0, &resp).raw())
        .await
        .unwrap();
    assert_eq!(read_reply(&mut s).await, None, "closed without an answer");
    others_unaffected(&h).await;
    assert_eq!(h.agent.calls(), vec!["StartContainer"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_id_reused_while_in_flight_closes_the_connection() {
    let h = Harness::start(&allow_all()).await;
    let mut s = raw(&h).await;
    s.write_all(wait_frame(1).raw()).await.unwrap();
    wait_calls(&h, 1).await;
    s.write_all(start_frame(1).raw()).await.unwrap();
    // The in-flight long poll is answered UNAVAILABLE or dropped; either way the
    // connection ends and the second request never reaches the agent.
    loop {
        match read_reply(&mut s).await {
            None => break,
            Some((1, code, _)) => assert_ne!(code, 0),
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(h.agent.calls(), vec!["WaitProcess"]);
    h.agent.release(1);
    others_unaffected(&h).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_header_then_close_reaches_nothing() {
    let h = Harness::start(&allow_all()).await;
    let mut s = raw(&h).await;
    s.write_all(&start_frame(1).raw()[..5]).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_reply(&mut s).await, None);
    // A truncated body, too.
    let mut s = raw(&h).await;
    let f = start_frame(1);
    s.write_all(&f.raw()[..f.raw().len() - 3]).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_reply(&mut s).await, None);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(h.agent.calls().is_empty(), "{:?}", h.agent.calls());
    others_unaffected(&h).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_sending_byte_by_byte_is_served_and_blocks_nobody() {
    let h = Harness::start(&allow_all()).await;
    let mut slow = raw(&h).await;
    let f = start_frame(1);
    let bytes = f.raw().clone();
    let (half, rest) = bytes.split_at(bytes.len() / 2);
    for b in half {
        slow.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Half a frame is pending on the slow connection: others are served meanwhile.
    others_unaffected(&h).await;
    for b in rest {
        slow.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        read_reply(&mut slow).await.map(|r| (r.0, r.1)),
        Some((1, 0))
    );
    assert_eq!(h.agent.calls(), vec!["StartContainer", "StartContainer"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_stops_reading_blocks_nobody_and_loses_nothing() {
    let h = Harness::start(&allow_all()).await;
    let mut s = raw(&h).await;
    // 300 requests whose answers carry 64 KiB each (~19 MiB: far more than socket
    // buffers and the warden's queue hold), and the host does not read.
    let n: u32 = 300;
    let read = agent::ReadStreamRequest {
        container_id: "c1".into(),
        exec_id: "e1".into(),
        len: 65536,
        ..Default::default()
    };
    let payload = read.write_to_bytes().unwrap();
    let mut wire = Vec::new();
    for i in 0..n {
        wire.extend_from_slice(request_frame(2 * i + 1, "ReadStdout", payload.clone()).raw());
    }
    s.write_all(&wire).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Other hosts are served while this one does not read.
    others_unaffected(&h).await;
    // Now it reads: every request has exactly one answer, in any order.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..n {
        let (id, code, msg) = read_reply(&mut s)
            .await
            .expect("an answer for every request");
        assert_eq!(code, 0, "{msg}");
        assert!(seen.insert(id), "stream {id} answered twice");
    }
    assert_eq!(seen.len(), n as usize);
    h.stop().await;
}

async fn closed(s: &mut UnixStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn envelope_bytes(service: &[u8], method: &[u8]) -> Vec<u8> {
    // Request { service = 1, method = 2 } written by hand so the strings can be
    // anything, valid UTF-8 or not.
    let mut env = vec![0x0a, service.len() as u8];
    env.extend_from_slice(service);
    env.push(0x12);
    env.push(method.len() as u8);
    env.extend_from_slice(method);
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_and_unknown_names_are_answered_and_the_connection_goes_on() {
    let h = Harness::start(&allow_all()).await;
    let mut s = raw(&h).await;
    // Invalid UTF-8 in the service name (the method-name case is in tests/relay.rs).
    let env = envelope_bytes(b"grpc.Agent\xffService", b"StartContainer");
    s.write_all(Frame::new(1, TYPE_REQUEST, 0, &env).raw())
        .await
        .unwrap();
    let (id, code, msg) = read_reply(&mut s).await.unwrap();
    assert_eq!((id, code), (1, 3), "{msg}");
    assert!(msg.contains("malformed ttrpc request envelope"), "{msg}");
    // An unknown service with a known method name, and an empty service.
    for (stream, service) in [(3, &b"grpc.Evil"[..]), (5, &b""[..])] {
        let env = envelope_bytes(service, b"StartContainer");
        s.write_all(Frame::new(stream, TYPE_REQUEST, 0, &env).raw())
            .await
            .unwrap();
        let (id, code, msg) = read_reply(&mut s).await.unwrap();
        assert_eq!((id, code), (stream, 12), "{msg}");
        assert!(
            msg.ends_with("unknown service or method (not forwarded)"),
            "{msg}"
        );
    }
    // The connection still serves; only that request reached the agent.
    s.write_all(start_frame(7).raw()).await.unwrap();
    assert_eq!(read_reply(&mut s).await.map(|r| (r.0, r.1)), Some((7, 0)));
    others_unaffected(&h).await;
    assert_eq!(h.agent.calls(), vec!["StartContainer", "StartContainer"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_flags_are_refused_and_unknown_frame_types_close() {
    let h = Harness::start(&allow_all()).await;
    let mut s = raw(&h).await;
    let body = start_frame(1).body().to_vec();
    for (stream, flags) in [
        (1, frame::FLAG_NO_DATA),
        (3, frame::FLAG_REMOTE_OPEN | frame::FLAG_NO_DATA),
        (5, 0xff),
    ] {
        s.write_all(Frame::new(stream, TYPE_REQUEST, flags, &body).raw())
            .await
            .unwrap();
        let (id, code, msg) = read_reply(&mut s).await.unwrap();
        assert_eq!((id, code), (stream, 3), "{msg}");
        assert!(
            msg.contains("streaming requests are not supported"),
            "{msg}"
        );
    }
    // A data frame on an even stream id is still just refused (it is not a request).
    s.write_all(Frame::new(2, frame::TYPE_DATA, 0, b"x").raw())
        .await
        .unwrap();
    assert_eq!(read_reply(&mut s).await.map(|r| (r.0, r.1)), Some((2, 3)));
    // A frame type ttrpc does not have closes the connection.
    s.write_all(Frame::new(7, 0x7f, 0, &body).raw())
        .await
        .unwrap();
    assert!(closed(&mut s).await, "connection must be closed");
    others_unaffected(&h).await;
    assert_eq!(h.agent.calls(), vec!["StartContainer"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn even_stream_ids_close_only_that_connection() {
    let h = Harness::start(&allow_all()).await;
    let mut bystander = raw(&h).await;
    bystander.write_all(wait_frame(1).raw()).await.unwrap();
    wait_calls(&h, 1).await;
    for id in [0u32, 2, u32::MAX - 1] {
        let mut s = raw(&h).await;
        s.write_all(start_frame(id).raw()).await.unwrap();
        assert!(
            closed(&mut s).await,
            "stream id {id}: connection must close"
        );
    }
    // The bystander's long poll is still in flight and completes normally.
    h.agent.release(1);
    assert_eq!(
        read_reply(&mut bystander).await.map(|r| (r.0, r.1)),
        Some((1, 0))
    );
    others_unaffected(&h).await;
    assert_eq!(h.agent.calls(), vec!["WaitProcess", "StartContainer"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_id_may_be_used_again_once_answered() {
    let h = Harness::start(&allow_all()).await;
    let mut s = raw(&h).await;
    for _ in 0..3 {
        s.write_all(start_frame(u32::MAX).raw()).await.unwrap();
        assert_eq!(
            read_reply(&mut s).await.map(|r| (r.0, r.1)),
            Some((u32::MAX, 0))
        );
    }
    assert_eq!(h.agent.calls().len(), 3);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_frame_cut_short_closes_without_reaching_the_agent() {
    let h = Harness::start(&allow_all()).await;
    let mut s = raw(&h).await;
    let mut wire = frame::Header {
        length: u32::MAX,
        stream_id: 1,
        kind: TYPE_REQUEST,
        flags: 0,
    }
    .encode()
    .to_vec();
    wire.extend_from_slice(&vec![0u8; 1 << 20]);
    s.write_all(&wire).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_reply(&mut s).await, None);
    others_unaffected(&h).await;
    assert_eq!(h.agent.calls(), vec!["StartContainer"]);
    assert_eq!(
        h.agent_tap.sent_to_server(),
        start_frame(1).raw().to_vec(),
        "the agent received exactly the bystander's request"
    );
    h.stop().await;
}

/// A host that sends 100 ReadStdout requests whose answers are 1 MiB each and does
/// not read: agent-warden buffers a bounded amount of answers and then stops reading
/// the agent, so the agent's writes block (its problem to buffer, as with a direct
/// host). Other connections are served meanwhile; when the host reads, every answer
/// arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_stops_reading_backpressures_the_agent_instead_of_buffering() {
    const N: u32 = 100;
    const LEN: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let agent_sock = dir.path().join("agent.sock");
    let warden_sock = dir.path().join("warden.sock");
    let raw_agent = RawAgent::start(&agent_sock, LEN).await;
    let _stop = start_warden(
        &warden_sock,
        &agent_sock,
        std::sync::Arc::new(allow_all_guard()),
    )
    .await;
    let mut s = UnixStream::connect(&warden_sock).await.unwrap();
    let payload = agent::ReadStreamRequest {
        container_id: "c1".into(),
        exec_id: "e1".into(),
        len: LEN as u32,
        ..Default::default()
    }
    .write_to_bytes()
    .unwrap();
    let mut wire = Vec::new();
    for i in 0..N {
        wire.extend_from_slice(request_frame(2 * i + 1, "ReadStdout", payload.clone()).raw());
    }
    s.write_all(&wire).await.unwrap();
    eventually(10, "the agent received every request", || {
        raw_agent.seen().len() == N as usize
    })
    .await;
    // Give the agent every chance to push its answers through.
    let mut last = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let w = raw_agent.written();
        if w == last && w > 0 {
            break;
        }
        last = w;
    }
    let written = raw_agent.written();
    let total = N as u64 * LEN as u64;
    // Bound: the warden's host queue (8 MiB) + a frame in each hand (2 MiB) + what the
    // two unix sockets buffer (their send buffers; 208 KiB each by default).
    let sndbuf: u64 = std::fs::read_to_string("/proc/sys/net/core/wmem_default")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    let bound = 12 * LEN as u64 + 4 * sndbuf;
    assert!(
        written <= bound,
        "the agent wrote {written} of {total} bytes (bound {bound}) to a host that does not read"
    );
    // Another host is served meanwhile (a fresh agent connection of its own).
    let mut other = UnixStream::connect(&warden_sock).await.unwrap();
    other.write_all(start_frame(1).raw()).await.unwrap();
    assert_eq!(
        read_reply(&mut other).await.map(|r| (r.0, r.1)),
        Some((1, 0))
    );
    // The host reads: each request is answered exactly once, in full.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..N {
        let f = match tokio::time::timeout(
            Duration::from_secs(10),
            frame::read_frame(&mut s, frame::MAX_BODY),
        )
        .await
        .unwrap()
        .unwrap()
        {
            Read::Frame(f) => f,
            other => panic!("expected an answer, got {other:?}"),
        };
        let r = envelope::decode_response(f.body()).unwrap();
        assert_eq!(envelope::status_code(&r), 0);
        let data = agent::ReadStreamResponse::parse_from_bytes(&r.payload).unwrap();
        assert_eq!(data.data.len(), LEN);
        assert!(seen.insert(f.header.stream_id));
    }
    // Everything the agent wrote arrived: N answers, plus the other host's one.
    let other_answer = envelope::ok_frame(1, &[]).raw().len() as u64;
    assert_eq!(
        raw_agent.written(),
        total + reply_overhead(N) + other_answer
    );
}

/// Bytes of framing and envelope around N answers of the backpressure test.
fn reply_overhead(n: u32) -> u64 {
    let mut sum = 0u64;
    for i in 0..n {
        let payload = agent::ReadStreamResponse {
            data: vec![b'x'; 1 << 20],
            ..Default::default()
        }
        .write_to_bytes()
        .unwrap();
        sum += envelope::ok_frame(2 * i + 1, &payload).raw().len() as u64 - (1 << 20);
    }
    sum
}

// The per-evaluation time limit: a policy evaluation that runs over it fails closed
// with INTERNAL, and nothing reaches the agent.

/// ExecProcessRequest loops ~25 million times before failing; the rest is quick.
const SLOW: &str = r#"package agent_policy
default ExecProcessRequest := false
ExecProcessRequest {
    some i, j
    numbers.range(1, 5000)[i]
    numbers.range(1, 5000)[j]
    i * j == -1
}
default StartContainerRequest := true
"#;

#[tokio::test]
async fn an_evaluation_over_the_time_limit_is_internal_and_not_forwarded() {
    let limit = LoadOptions {
        eval_timeout: Duration::from_millis(100),
        ..LoadOptions::default()
    };
    let load = || Policy::load_with("slow.rego", SLOW, RegoVersion::V0, limit).unwrap();
    let p = load();
    let t = Instant::now();
    match p.decide("ExecProcessRequest", &serde_json::json!({})) {
        Decision::Error(e) => assert!(e.to_lowercase().contains("time limit"), "{e}"),
        d => panic!("expected an error, got {d:?}"),
    }
    // Stopped near the limit, far before the loop would finish.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    let h = Harness::start_guard(Guard::new(load(), InputShape::Current)).await;
    let c = h.agent_client().await;
    let (code, msg) = status(
        c.exec_process(ctx(), &agent::ExecProcessRequest::new())
            .await,
    );
    assert_eq!(code, 13, "{msg}");
    assert!(
        msg.starts_with("ExecProcessRequest: internal error:")
            && msg.to_lowercase().contains("time limit"),
        "{msg}"
    );
    // The engine is usable afterwards.
    c.start_container(ctx(), &agent::StartContainerRequest::new())
        .await
        .unwrap();
    assert_eq!(h.agent.calls(), vec!["StartContainer".to_string()]);
    h.stop().await;
}
