//! Load and memory: 100 host connections × 10 requests in flight with long polls mixed
//! in, for a fixed time; and a huge frame body streamed through the warden. Both
//! assert that file descriptors come back and memory stays within a bound afterwards.
//!
//! The tests of this file measure the whole process (`/proc/self`), so they run one
//! at a time (`SERIAL`). `AGENT_WARDEN_SOAK_SECS` sets the length of the main phase
//! (default 8 s; CI keeps the default).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_warden::wire::envelope;
use agent_warden::wire::frame::{self, Frame, Header, Read, TYPE_REQUEST};
use agent_warden::wire::protocols::{agent, agent_ttrpc};
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CONNECTIONS: usize = 100;
const IN_FLIGHT: usize = 10;
/// Memory the process may keep after a phase, over what it held before it.
const RSS_BOUND_KIB: u64 = 64 * 1024;

fn soak_secs() -> u64 {
    std::env::var("AGENT_WARDEN_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

struct Counts {
    calls: AtomicU64,
    long_polls: AtomicU64,
}

/// One phase: `CONNECTIONS` ttrpc hosts, each with `IN_FLIGHT` workers issuing calls
/// back to back until `secs` have passed; worker 0 of each connection does long polls
/// (WaitProcess), which a releaser lets finish a few at a time. Every call must
/// succeed. Returns when every host connection is closed.
async fn phase(warden: &std::path::Path, agent: &Arc<RecordingAgent>, secs: u64) -> Arc<Counts> {
    let counts = Arc::new(Counts {
        calls: AtomicU64::new(0),
        long_polls: AtomicU64::new(0),
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let releaser = {
        let agent = agent.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if agent.long_polls.available_permits() < 20 {
                    agent.release(20);
                }
            }
        })
    };
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let c = ttrpc::r#async::Client::connect(&format!("unix://{}", warden.display()))
            .await
            .unwrap();
        let client = agent_ttrpc::AgentServiceClient::new(c);
        for w in 0..IN_FLIGHT {
            let client = client.clone();
            let counts = counts.clone();
            workers.spawn(async move {
                let mut i = 0u64;
                while tokio::time::Instant::now() < deadline {
                    let r = if w == 0 {
                        counts.long_polls.fetch_add(1, Ordering::Relaxed);
                        client
                            .wait_process(ctx(), &agent::WaitProcessRequest::new())
                            .await
                            .map(|r| assert_eq!(r.status, 42))
                    } else {
                        match i % 3 {
                            0 => client
                                .start_container(
                                    ctx(),
                                    &agent::StartContainerRequest {
                                        container_id: format!("c{w}"),
                                        ..Default::default()
                                    },
                                )
                                .await
                                .map(drop),
                            1 => client
                                .read_stdout(
                                    ctx(),
                                    &agent::ReadStreamRequest {
                                        container_id: "c1".into(),
                                        exec_id: "e1".into(),
                                        len: 1024,
                                        ..Default::default()
                                    },
                                )
                                .await
                                .map(|r| assert_eq!(r.data, STDOUT_DATA)),
                            _ => client
                                .create_container(
                                    ctx(),
                                    &agent::CreateContainerRequest {
                                        container_id: format!("soak-{w}-{i}"),
                                        exec_id: format!("soak-{w}-{i}"),
                                        ..Default::default()
                                    },
                                )
                                .await
                                .map(drop),
                        }
                    };
                    if let Err(e) = r {
                        panic!("call failed under load: {e:?}");
                    }
                    counts.calls.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
        }
    }
    // Let every long poll still waiting finish, then collect the workers.
    let finisher = {
        let agent = agent.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            agent.release(100_000);
        })
    };
    while let Some(r) = workers.join_next().await {
        r.expect("worker");
    }
    finisher.await.unwrap();
    releaser.abort();
    counts
}

/// The descriptor count once it has not changed for 300 ms (≤ 10 s).
async fn settled_fds() -> usize {
    let mut last = open_fds();
    let mut same = 0;
    for _ in 0..1000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let n = open_fds();
        same = if n == last { same + 1 } else { 0 };
        last = n;
        if same >= 30 {
            break;
        }
    }
    last
}

/// Waits (≤ 10 s) until the process has at most `limit` descriptors open.
async fn fds_back_to(limit: usize) -> usize {
    let mut n = open_fds();
    for _ in 0..1000 {
        if n <= limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        n = open_fds();
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_connections_ten_in_flight_with_long_polls_no_errors_no_leaks() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let agent_sock = dir.path().join("agent.sock");
    let warden_sock = dir.path().join("warden.sock");
    let (agent, _server) = start_agent_server(&agent_sock).await;
    let _stop = start_warden(&warden_sock, &agent_sock, Arc::new(allow_all_guard())).await;

    // Warm-up: thread pools, allocator arenas and the policy engine reach their
    // steady state; the baseline is taken after it, with no connection open.
    let warm = phase(&warden_sock, &agent, 1).await;
    assert!(warm.calls.load(Ordering::Relaxed) > 0);
    let fds_before = settled_fds().await;
    agent.calls.lock().unwrap().clear();
    let rss_before = rss_kib();

    let secs = soak_secs();
    let counts = phase(&warden_sock, &agent, secs).await;
    let calls = counts.calls.load(Ordering::Relaxed);
    let long_polls = counts.long_polls.load(Ordering::Relaxed);
    // Each worker completed at least one call; every call reached the agent once.
    assert!(calls >= (CONNECTIONS * IN_FLIGHT) as u64, "{calls} calls");
    assert!(long_polls >= CONNECTIONS as u64, "{long_polls} long polls");
    assert_eq!(agent.calls().len() as u64, calls);

    // Every connection (host side and agent side) is gone again.
    let fds_after = fds_back_to(fds_before).await;
    assert!(
        fds_after <= fds_before,
        "file descriptors grew from {fds_before} to {fds_after}"
    );
    agent.calls.lock().unwrap().clear();
    let rss_after = rss_kib();
    assert!(
        rss_after <= rss_before + RSS_BOUND_KIB,
        "resident memory grew from {rss_before} KiB to {rss_after} KiB after {calls} calls"
    );
    eprintln!(
        "soak: {secs} s, {CONNECTIONS} connections x {IN_FLIGHT} in flight: {calls} calls \
         ({long_polls} long polls), fds {fds_before} -> {fds_after}, \
         VmRSS {rss_before} -> {rss_after} KiB"
    );
}

/// A frame claiming 256 MiB is streamed in full: agent-warden discards the body as it
/// arrives (memory stays flat), answers INVALID_ARGUMENT, and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_frame_body_is_discarded_without_being_buffered() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let agent_sock = dir.path().join("agent.sock");
    let warden_sock = dir.path().join("warden.sock");
    let (agent, _server) = start_agent_server(&agent_sock).await;
    let _stop = start_warden(&warden_sock, &agent_sock, Arc::new(allow_all_guard())).await;

    let mut s = UnixStream::connect(&warden_sock).await.unwrap();
    const CLAIMED: usize = 256 << 20;
    let chunk = vec![0x5au8; 1 << 20];
    let rss_before = rss_kib();
    let mut rss_max = rss_before;
    s.write_all(
        &Header {
            length: CLAIMED as u32,
            stream_id: 1,
            kind: TYPE_REQUEST,
            flags: 0,
        }
        .encode(),
    )
    .await
    .unwrap();
    for _ in 0..CLAIMED / chunk.len() {
        s.write_all(&chunk).await.unwrap();
        rss_max = rss_max.max(rss_kib());
    }
    let f = match tokio::time::timeout(
        Duration::from_secs(30),
        frame::read_frame(&mut s, frame::MAX_BODY),
    )
    .await
    .unwrap()
    .unwrap()
    {
        Read::Frame(f) => f,
        other => panic!("expected a reply, got {other:?}"),
    };
    let r = envelope::decode_response(f.body()).unwrap();
    assert_eq!((f.header.stream_id, envelope::status_code(&r)), (1, 3));
    assert!(
        r.status
            .message
            .contains("exceeds the maximum message size"),
        "{}",
        r.status.message
    );
    assert!(
        rss_max <= rss_before + RSS_BOUND_KIB,
        "resident memory rose from {rss_before} KiB to {rss_max} KiB while a \
         {CLAIMED}-byte body streamed through"
    );
    // The same connection still serves, and the agent saw only that request.
    s.write_all(start_frame(3).raw()).await.unwrap();
    match frame::read_frame(&mut s, frame::MAX_BODY).await.unwrap() {
        Read::Frame(f) => {
            let r = envelope::decode_response(f.body()).unwrap();
            assert_eq!((f.header.stream_id, envelope::status_code(&r)), (3, 0));
        }
        other => panic!("expected a reply, got {other:?}"),
    }
    assert_eq!(agent.calls(), vec!["StartContainer"]);
}

/// Hosts that announce 4 MiB frames and then send almost nothing must not make
/// agent-warden hold 4 MiB each: the body buffer grows with the bytes that arrive,
/// not with the length the header claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_but_unsent_bodies_do_not_reserve_memory() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let agent_sock = dir.path().join("agent.sock");
    let warden_sock = dir.path().join("warden.sock");
    let (agent, _server) = start_agent_server(&agent_sock).await;
    let _stop = start_warden(&warden_sock, &agent_sock, Arc::new(allow_all_guard())).await;
    const HOSTS: usize = 128;
    // A few near-limit frames first, read, refused and freed: the allocator now has
    // 4 MiB blocks to hand out again (they would be touched if zeroed up front).
    let mut s = UnixStream::connect(&warden_sock).await.unwrap();
    for id in [1u32, 3, 5, 7] {
        let big = Frame::new(id, TYPE_REQUEST, 0, &vec![0xffu8; frame::MAX_BODY]);
        s.write_all(big.raw()).await.unwrap();
        match frame::read_frame(&mut s, frame::MAX_BODY).await.unwrap() {
            Read::Frame(f) => assert_eq!(f.header.stream_id, id),
            other => panic!("expected a reply, got {other:?}"),
        }
    }
    drop(s);
    let rss_before = rss_kib();
    let mut hosts = Vec::new();
    for _ in 0..HOSTS {
        let mut s = UnixStream::connect(&warden_sock).await.unwrap();
        let mut wire = Header {
            length: frame::MAX_BODY as u32,
            stream_id: 1,
            kind: TYPE_REQUEST,
            flags: 0,
        }
        .encode()
        .to_vec();
        wire.extend_from_slice(&[0x0a; 100]);
        s.write_all(&wire).await.unwrap();
        hosts.push(s);
    }
    // Every host is being read (each connection is one relay waiting for its body):
    // a further host is still served.
    let mut s = UnixStream::connect(&warden_sock).await.unwrap();
    s.write_all(start_frame(1).raw()).await.unwrap();
    match frame::read_frame(&mut s, frame::MAX_BODY).await.unwrap() {
        Read::Frame(f) => assert_eq!(f.header.stream_id, 1),
        other => panic!("expected a reply, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss = rss_kib();
    // 128 × 4 MiB = 512 MiB if the announced lengths were reserved and touched.
    assert!(
        rss <= rss_before + RSS_BOUND_KIB,
        "resident memory rose from {rss_before} KiB to {rss} KiB for {HOSTS} hosts \
         that announced 4 MiB frames and sent 100 bytes each"
    );
    drop(hosts);
    assert_eq!(agent.calls(), vec!["StartContainer"]);
}
