//! Agent faults: the agent socket missing at start, the agent crashing mid-request,
//! the agent coming back. agent-warden runs as `serve` runs it (`serve::run`), with
//! no tap between it and the agent.

mod common;

use std::sync::Arc;
use std::time::Duration;

use agent_warden::wire::envelope;
use agent_warden::wire::frame::{self, Read};
use agent_warden::wire::protocols::{agent, agent_ttrpc};
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

const UNAVAILABLE: i32 = 14;

/// The next frame as (stream, status code, message); None once the connection closed.
async fn reply(s: &mut UnixStream) -> Option<(u32, i32, String)> {
    match tokio::time::timeout(
        Duration::from_secs(15),
        frame::read_frame(s, frame::MAX_BODY),
    )
    .await
    .expect("the warden answers or closes within 15 s")
    {
        Ok(Read::Frame(f)) => {
            let r = envelope::decode_response(f.body()).unwrap();
            Some((
                f.header.stream_id,
                envelope::status_code(&r),
                r.status.message.clone(),
            ))
        }
        _ => None,
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    warden: std::path::PathBuf,
    agent: std::path::PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let warden = dir.path().join("warden.sock");
    let agent = dir.path().join("agent.sock");
    let stop = start_warden(&warden, &agent, Arc::new(allow_all_guard())).await;
    Setup {
        _dir: dir,
        warden,
        agent,
        _stop: stop,
    }
}

impl Setup {
    async fn raw(&self) -> UnixStream {
        UnixStream::connect(&self.warden).await.unwrap()
    }
    async fn client(&self) -> agent_ttrpc::AgentServiceClient {
        let c = ttrpc::r#async::Client::connect(&format!("unix://{}", self.warden.display()))
            .await
            .unwrap();
        agent_ttrpc::AgentServiceClient::new(c)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_socket_missing_at_start_then_appearing_is_retried() {
    let s = setup().await;
    assert!(!s.agent.exists());
    // The host connects and sends before the agent exists: the warden retries the
    // agent connection with backoff instead of failing the host.
    let mut host = s.raw().await;
    host.write_all(start_frame(1).raw()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (agent, server) = start_agent_server(&s.agent).await;
    assert_eq!(reply(&mut host).await.map(|r| (r.0, r.1)), Some((1, 0)));
    assert_eq!(agent.calls(), vec!["StartContainer"]);
    // And a real ttrpc host on a fresh connection.
    let c = s.client().await;
    c.start_container(ctx(), &agent::StartContainerRequest::new())
        .await
        .unwrap();
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_that_never_appears_closes_the_host_connection_unanswered() {
    let s = setup().await;
    let mut host = s.raw().await;
    host.write_all(start_frame(1).raw()).await.unwrap();
    // Retries (≈ 5.5 s in all) run out: the host connection is closed without an
    // answer so that the runtime reconnects; nothing else is sent to it.
    assert_eq!(reply(&mut host).await, None);
    // The listener still accepts, and a host gets through once the agent is there.
    let (agent, _server) = start_agent_server(&s.agent).await;
    let mut host = s.raw().await;
    host.write_all(start_frame(1).raw()).await.unwrap();
    assert_eq!(reply(&mut host).await.map(|r| (r.0, r.1)), Some((1, 0)));
    assert_eq!(agent.calls(), vec!["StartContainer"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_crash_mid_request_answers_unavailable_closes_and_recovers() {
    let s = setup().await;
    let raw_agent = RawAgent::start(&s.agent, 16).await;

    // Host A (raw): two long polls in flight, one request answered before the crash.
    let mut a = s.raw().await;
    a.write_all(start_frame(1).raw()).await.unwrap();
    assert_eq!(reply(&mut a).await.map(|r| (r.0, r.1)), Some((1, 0)));
    a.write_all(wait_frame(3).raw()).await.unwrap();
    a.write_all(wait_frame(5).raw()).await.unwrap();
    // Host B (real ttrpc client): one long poll in flight.
    let b = s.client().await;
    let b_wait = {
        let b = b.clone();
        tokio::spawn(async move {
            b.wait_process(ctx(), &agent::WaitProcessRequest::new())
                .await
        })
    };
    // Host C: connected, idle.
    let mut c = s.raw().await;
    eventually(10, "the agent saw 3 long polls", || {
        raw_agent
            .seen()
            .iter()
            .filter(|m| *m == "WaitProcess")
            .count()
            == 3
    })
    .await;
    // C's agent connection exists once C's relay runs; make sure it does.
    c.write_all(start_frame(1).raw()).await.unwrap();
    assert_eq!(reply(&mut c).await.map(|r| (r.0, r.1)), Some((1, 0)));

    raw_agent.crash();

    // Every request in flight is answered UNAVAILABLE, then the connection closes.
    let mut answered = Vec::new();
    while let Some((id, code, msg)) = reply(&mut a).await {
        assert_eq!(code, UNAVAILABLE, "{msg}");
        assert!(msg.contains("agent connection closed"), "{msg}");
        answered.push(id);
    }
    answered.sort();
    assert_eq!(answered, vec![3, 5]);
    let (code, msg) = status(b_wait.await.unwrap());
    assert_eq!(code, UNAVAILABLE, "{msg}");
    // B's connection is closed too: its next call fails without an answer from an agent.
    assert!(b
        .start_container(ctx(), &agent::StartContainerRequest::new())
        .await
        .is_err());
    // The idle connection C is closed (nothing was in flight, nothing is sent).
    assert_eq!(reply(&mut c).await, None);

    // The agent comes back: new host connections work, through a real ttrpc client.
    let (agent, _server) = start_agent_server(&s.agent).await;
    let d = s.client().await;
    d.start_container(ctx(), &agent::StartContainerRequest::new())
        .await
        .unwrap();
    let mut e = s.raw().await;
    e.write_all(start_frame(1).raw()).await.unwrap();
    assert_eq!(reply(&mut e).await.map(|r| (r.0, r.1)), Some((1, 0)));
    assert_eq!(agent.calls(), vec!["StartContainer", "StartContainer"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restarting_while_a_host_connects_is_bridged_by_the_retry() {
    let s = setup().await;
    let first = RawAgent::start(&s.agent, 16).await;
    let mut a = s.raw().await;
    a.write_all(start_frame(1).raw()).await.unwrap();
    assert_eq!(reply(&mut a).await.map(|r| (r.0, r.1)), Some((1, 0)));
    first.crash();
    assert_eq!(
        reply(&mut a).await,
        None,
        "A's connection closes with its agent's"
    );
    // The runtime reconnects while the agent is still down; the agent is back 300 ms
    // later and the request goes through.
    let mut b = s.raw().await;
    b.write_all(start_frame(1).raw()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = RawAgent::start(&s.agent, 16).await;
    assert_eq!(reply(&mut b).await.map(|r| (r.0, r.1)), Some((1, 0)));
    assert_eq!(first.seen(), vec!["StartContainer"]);
    assert_eq!(second.seen(), vec!["StartContainer"]);
}
