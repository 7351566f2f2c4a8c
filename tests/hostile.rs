//! A hostile host on raw sockets and real ttrpc clients: limits, frames a host must not
//! send, slow and non-reading hosts. For each: the documented answer, other
//! connections unaffected, and the recording agent saw nothing that was not allowed.

mod common;

use std::time::Duration;

use agent_warden::codec::InputShape;
use agent_warden::envelope;
use agent_warden::frame::{self, Frame, Read, TYPE_REQUEST, TYPE_RESPONSE};
use agent_warden::policy::{Policy, RegoVersion};
use agent_warden::protocols::agent;
use agent_warden::relay::Guard;
use common::*;
use protobuf::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

fn request_frame(stream: u32, method: &str, payload: Vec<u8>) -> Frame {
    let req = ttrpc::proto::Request {
        service: "grpc.AgentService".into(),
        method: method.into(),
        payload,
        ..Default::default()
    };
    Frame::new(stream, TYPE_REQUEST, 0, &req.write_to_bytes().unwrap())
}

fn start_frame(stream: u32) -> Frame {
    let r = agent::StartContainerRequest {
        container_id: "c1".into(),
        ..Default::default()
    };
    request_frame(stream, "StartContainer", r.write_to_bytes().unwrap())
}

fn wait_frame(stream: u32) -> Frame {
    request_frame(
        stream,
        "WaitProcess",
        agent::WaitProcessRequest::new().write_to_bytes().unwrap(),
    )
}

/// The next frame from the warden as (stream, status code, message); None when the
/// connection closed (or nothing came within 10 s).
async fn reply(s: &mut UnixStream) -> Option<(u32, i32, String)> {
    match tokio::time::timeout(
        Duration::from_secs(10),
        frame::read_frame(s, frame::MAX_BODY),
    )
    .await
    .ok()?
    {
        Ok(Read::Frame(f)) => {
            let r = envelope::decode_response(f.body()).ok()?;
            Some((
                f.header.stream_id,
                envelope::status_code(&r),
                r.status.message.clone(),
            ))
        }
        _ => None,
    }
}

async fn raw(h: &Harness) -> UnixStream {
    UnixStream::connect(&h.warden_sock).await.unwrap()
}

/// Another connection still gets an allowed request through.
async fn others_unaffected(h: &Harness) {
    let mut s = raw(h).await;
    s.write_all(start_frame(1).raw()).await.unwrap();
    assert_eq!(reply(&mut s).await.map(|r| (r.0, r.1)), Some((1, 0)));
}

async fn wait_calls(h: &Harness, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.agent.calls().len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent saw {:?}, expected {n} calls",
            h.agent.calls()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
    let (id, code, msg) = reply(&mut s).await.unwrap();
    assert_eq!((id, code), (5, 8), "{msg}");
    assert!(msg.contains("limit 2"), "{msg}");
    assert_eq!(h.agent.calls(), vec!["WaitProcess", "WaitProcess"]);
    // One long poll completes: there is room again on the same connection.
    h.agent.release(1);
    assert_eq!(reply(&mut s).await.map(|r| r.1), Some(0));
    s.write_all(start_frame(7).raw()).await.unwrap();
    assert_eq!(reply(&mut s).await.map(|r| (r.0, r.1)), Some((7, 0)));
    h.agent.release(1);
    assert_eq!(reply(&mut s).await.map(|r| r.1), Some(0));
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
    assert_eq!(reply(&mut s).await, None, "closed without an answer");
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
        match reply(&mut s).await {
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
    assert_eq!(reply(&mut s).await, None);
    // A truncated body, too.
    let mut s = raw(&h).await;
    let f = start_frame(1);
    s.write_all(&f.raw()[..f.raw().len() - 3]).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(reply(&mut s).await, None);
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
    assert_eq!(reply(&mut slow).await.map(|r| (r.0, r.1)), Some((1, 0)));
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
        let (id, code, msg) = reply(&mut s).await.expect("an answer for every request");
        assert_eq!(code, 0, "{msg}");
        assert!(seen.insert(id), "stream {id} answered twice");
    }
    assert_eq!(seen.len(), n as usize);
    h.stop().await;
}
