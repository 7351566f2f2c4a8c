//! agent-warden between a real ttrpc client (the host) and a real ttrpc server
//! (the agent): decisions, passthrough, blanking, concurrency, byte-exact forwarding,
//! and hostile frames on raw sockets.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use agent_warden::wire::envelope;
use agent_warden::wire::frame::{self, Frame, Header, TYPE_DATA, TYPE_REQUEST};
use agent_warden::wire::protocols::{agent, health, health_ttrpc, oci};
use common::*;
use protobuf::{Message, MessageField};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POLICY: &str = r#"package agent_policy
import rego.v1
default CreateContainerRequest := true
default StartContainerRequest := true
default WaitProcessRequest := true
default GetOOMEventRequest := true
default CreateSandboxRequest := true
default ExecProcessRequest := false
ExecProcessRequest if {
    print("checking exec of", concat(" ", input.process.Args))
    input.process.Args == ["/bin/ls"]
}
default ReadStreamRequest := false
ReadStreamRequest if input.container_id == "open"
"#;

fn exec(args: &[&str]) -> agent::ExecProcessRequest {
    let process = oci::Process {
        Args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    agent::ExecProcessRequest {
        container_id: "c1".into(),
        exec_id: "e1".into(),
        process: MessageField::some(process),
        ..Default::default()
    }
}

fn create(id: &str) -> agent::CreateContainerRequest {
    agent::CreateContainerRequest {
        container_id: id.into(),
        ..Default::default()
    }
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_request_reaches_agent_byte_for_byte() {
    let h = Harness::start(POLICY).await;
    let c = h.agent_client().await;
    c.create_container(ctx(), &create("c1")).await.unwrap();
    c.exec_process(ctx(), &exec(&["/bin/ls"])).await.unwrap();
    settle().await;
    assert_eq!(h.agent.calls(), vec!["CreateContainer", "ExecProcess"]);
    let sent = h.host_tap.sent_to_server();
    assert!(!sent.is_empty());
    assert_eq!(
        h.agent_tap.sent_to_server(),
        sent,
        "the agent must receive exactly the host's bytes"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_request_gets_permission_denied_and_never_reaches_agent() {
    let h = Harness::start(POLICY).await;
    let c = h.agent_client().await;
    let (code, msg) = status(c.exec_process(ctx(), &exec(&["sh", "-c", "id"])).await);
    assert_eq!(code, 7);
    assert_eq!(
        msg,
        "ExecProcessRequest is blocked by policy: test.rego:11: input.process.Args == [\"/bin/ls\"] (in ExecProcessRequest)"
    );
    settle().await;
    assert!(h.agent.calls().is_empty());
    assert!(h.agent_tap.sent_to_server().is_empty());
    assert_eq!(
        h.guard.policy().fast_denials(),
        1,
        "decided by the fast path"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_deny_message_sends_what_the_policy_printed_as_kata_agent_does() {
    let options = agent_warden::policy::LoadOptions {
        deny_message: agent_warden::policy::DenyMessage::Full,
        ..Default::default()
    };
    let policy = agent_warden::policy::Policy::load_with(
        "test.rego",
        POLICY,
        agent_warden::policy::RegoVersion::V0,
        options,
    )
    .unwrap();
    let h = Harness::start_guard(agent_warden::serve::judge::Guard::new(
        policy,
        agent_warden::wire::input::InputShape::Current,
    ))
    .await;
    let c = h.agent_client().await;
    let (code, msg) = status(c.exec_process(ctx(), &exec(&["sh", "-c", "id"])).await);
    assert_eq!(code, 7);
    assert!(
        msg.starts_with("ExecProcessRequest is blocked by policy: "),
        "{msg}"
    );
    assert!(msg.contains("checking exec of sh -c id"), "{msg}");
    settle().await;
    assert!(h.agent.calls().is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undefined_rule_is_denied() {
    let h = Harness::start(POLICY).await;
    let c = h.agent_client().await;
    let req = agent::CopyFileRequest {
        path: "/run/x".into(),
        ..Default::default()
    };
    let (code, msg) = status(c.copy_file(ctx(), &req).await);
    assert_eq!(code, 7);
    assert!(
        msg.contains("CopyFileRequest is blocked by policy") && msg.contains("undefined"),
        "{msg}"
    );
    h.stop().await;
}

/// The stderr `decision` events of this test process (every test's decisions), as
/// JSON lines.
fn decision_log() -> Arc<Mutex<Vec<u8>>> {
    use tracing_subscriber::layer::{Layer, SubscriberExt};
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_writer(move || LogSink(sink.clone()))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target(agent_warden::logging::DECISION_TARGET, tracing::Level::INFO),
            );
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .unwrap();
        buf
    })
    .clone()
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// kata-agent refuses a CopyFile symlink whose target is not UTF-8 before its policy
/// runs (it cannot build the input); agent-warden refuses it too, whatever the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_file_symlink_target_not_utf8_is_refused_before_the_policy() {
    let log = decision_log();
    let h = Harness::start(&allow_all()).await;
    let c = h.agent_client().await;
    let link = |data: &[u8]| agent::CopyFileRequest {
        path: "/run/kata-containers/shared/containers/c1-cm/key".into(),
        file_mode: 0o120777,
        file_size: data.len() as i64,
        data: data.to_vec(),
        ..Default::default()
    };
    let (code, msg) = status(c.copy_file(ctx(), &link(&[b'a', 0xff, b'/'])).await);
    assert_eq!(code, 3, "{msg}");
    assert!(
        msg.starts_with("CopyFileRequest: refused before policy evaluation")
            && msg.contains("symlink target (data) is not valid UTF-8"),
        "{msg}"
    );
    // A UTF-8 target, and non-UTF-8 data in a regular file, are up to the policy.
    c.copy_file(ctx(), &link(b"..data/key")).await.unwrap();
    let mut file = link(&[0xff, 0xfe]);
    file.file_mode = 0o100644;
    c.copy_file(ctx(), &file).await.unwrap();
    assert_eq!(h.agent.calls(), vec!["CopyFile", "CopyFile"]);
    let text = String::from_utf8(log.lock().unwrap().clone()).unwrap();
    let refusal = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|d| {
            d["fields"]["kind"] == "CopyFileRequest"
                && d["fields"]["request_type"] == "CopyFileRequest"
                && d["fields"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("not valid UTF-8"))
        })
        .unwrap_or_else(|| panic!("no refusal in the decision log:\n{text}"));
    assert_eq!(refusal["fields"]["allowed"], false, "{refusal}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_method_and_service_are_unimplemented_and_not_forwarded() {
    let h = Harness::start(&allow_all()).await;
    let c = h.client().await;
    for (service, method) in [
        ("grpc.AgentService", "Bogus"),
        ("grpc.Other", "CreateContainer"),
        ("", ""),
    ] {
        let req = ttrpc::proto::Request {
            timeout_nano: 5_000_000_000,
            ..envelope::request(service, method, Vec::new())
        };
        let resp = c.request(req).await;
        let (code, msg) = status(resp);
        assert_eq!(code, 12, "{service}/{method}: {msg}");
        assert!(msg.contains("unknown service or method"), "{msg}");
    }
    settle().await;
    assert!(h.agent.calls().is_empty());
    assert!(h.agent_tap.sent_to_server().is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_passes_without_policy() {
    // A policy that allows nothing: health must still pass, as in kata.
    let h = Harness::start("package agent_policy\n").await;
    let c = health_ttrpc::HealthClient::new(h.client().await);
    let r = c.check(ctx(), &health::CheckRequest::new()).await.unwrap();
    assert_eq!(
        r.status.enum_value(),
        Ok(health::health_check_response::ServingStatus::SERVING)
    );
    assert_eq!(h.agent.calls(), vec!["Check"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_read_stdout_is_forwarded_and_blanked() {
    let h = Harness::start(POLICY).await;
    let c = h.agent_client().await;
    let read = |cid: &str| agent::ReadStreamRequest {
        container_id: cid.into(),
        len: 100,
        ..Default::default()
    };
    let denied = c.read_stdout(ctx(), &read("closed")).await.unwrap();
    assert!(denied.data.is_empty(), "denied read must come back empty");
    let denied_err = c.read_stderr(ctx(), &read("closed")).await.unwrap();
    assert!(denied_err.data.is_empty());
    let allowed = c.read_stdout(ctx(), &read("open")).await.unwrap();
    assert_eq!(allowed.data, STDOUT_DATA);
    assert_eq!(
        h.agent.calls(),
        vec!["ReadStdout", "ReadStderr", "ReadStdout"],
        "the agent still performs the reads"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_calls_with_long_polls_do_not_block_each_other() {
    let h = Harness::start(POLICY).await;
    let c = h.agent_client().await;
    let mut polls = Vec::new();
    for i in 0..10 {
        let c = c.clone();
        polls.push(tokio::spawn(async move {
            if i % 2 == 0 {
                let req = agent::WaitProcessRequest {
                    container_id: "c1".into(),
                    ..Default::default()
                };
                c.wait_process(ctx(), &req).await.map(|r| r.status)
            } else {
                c.get_oom_event(ctx(), &agent::GetOOMEventRequest::new())
                    .await
                    .map(|_| 42)
            }
        }));
    }
    let mut quick = Vec::new();
    for i in 0..90 {
        let c = c.clone();
        quick.push(tokio::spawn(async move {
            if i % 3 == 0 {
                c.exec_process(ctx(), &exec(&["rm", "-rf", "/"]))
                    .await
                    .is_err()
            } else {
                c.create_container(ctx(), &create(&format!("c{i}")))
                    .await
                    .is_ok()
            }
        }));
    }
    // All 90 quick calls finish while the 10 long polls are still parked in the agent.
    for q in quick {
        assert!(tokio::time::timeout(Duration::from_secs(20), q)
            .await
            .expect("quick call stuck")
            .unwrap());
    }
    assert!(
        polls.iter().all(|p| !p.is_finished()),
        "long polls must still be waiting"
    );
    h.agent.release(10);
    for p in polls {
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(20), p)
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
            42
        );
    }
    let calls = h.agent.calls();
    assert_eq!(calls.iter().filter(|c| *c == "CreateContainer").count(), 60);
    assert_eq!(calls.iter().filter(|c| *c == "ExecProcess").count(), 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_receives_exactly_the_allowed_frames() {
    let h = Harness::start(POLICY).await;
    let c = h.agent_client().await;
    c.create_container(ctx(), &create("a")).await.unwrap();
    assert!(c.exec_process(ctx(), &exec(&["bash"])).await.is_err());
    c.start_container(
        ctx(),
        &agent::StartContainerRequest {
            container_id: "a".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(c
        .exec_process(ctx(), &exec(&["cat", "/etc/shadow"]))
        .await
        .is_err());
    c.exec_process(ctx(), &exec(&["/bin/ls"])).await.unwrap();
    settle().await;
    let sent = frames(&h.host_tap.sent_to_server()).await;
    assert_eq!(sent.len(), 5);
    let expected: Vec<u8> = [0, 2, 4]
        .iter()
        .flat_map(|&i| sent[i].raw().to_vec())
        .collect();
    assert_eq!(h.agent_tap.sent_to_server(), expected);
    h.stop().await;
}

// ---- hostile input on raw sockets -------------------------------------------------

fn request_frame(stream: u32, flags: u8, service: &str, method: &str, payload: Vec<u8>) -> Frame {
    envelope::request_frame(stream, flags, &envelope::request(service, method, payload))
}

fn create_frame(stream: u32) -> Frame {
    request_frame(
        stream,
        0,
        "grpc.AgentService",
        "CreateContainer",
        create("x").write_to_bytes().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frame_is_refused_without_closing_the_connection() {
    let h = Harness::start(&allow_all()).await;
    let mut s = raw(&h).await;
    let len = frame::MAX_BODY + 1;
    let mut wire = Header {
        length: len as u32,
        stream_id: 1,
        kind: TYPE_REQUEST,
        flags: 0,
    }
    .encode()
    .to_vec();
    wire.resize(frame::HEADER_LEN + len, 0x5a);
    s.write_all(&wire).await.unwrap();
    let (id, code, msg) = read_reply(&mut s).await.expect("a reply");
    assert_eq!((id, code), (1, 3));
    assert!(msg.contains("exceeds the maximum message size"), "{msg}");
    // The connection still works.
    s.write_all(create_frame(3).raw()).await.unwrap();
    assert_eq!(read_reply(&mut s).await.map(|r| (r.0, r.1)), Some((3, 0)));
    assert_eq!(h.agent.calls(), vec!["CreateContainer"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_frames_and_streaming_flags_get_invalid_argument() {
    let h = Harness::start(&allow_all()).await;
    let mut s = raw(&h).await;
    s.write_all(Frame::new(1, TYPE_DATA, 0, b"xyz").raw())
        .await
        .unwrap();
    let (id, code, msg) = read_reply(&mut s).await.unwrap();
    assert_eq!((id, code), (1, 3));
    assert!(msg.contains("data frames are not supported"), "{msg}");
    let mut f = create_frame(3);
    f = Frame::new(3, TYPE_REQUEST, frame::FLAG_REMOTE_OPEN, f.body());
    s.write_all(f.raw()).await.unwrap();
    let (id, code, msg) = read_reply(&mut s).await.unwrap();
    assert_eq!((id, code), (3, 3));
    assert!(
        msg.contains("streaming requests are not supported"),
        "{msg}"
    );
    settle().await;
    assert!(h.agent.calls().is_empty());
    assert!(h.agent_tap.sent_to_server().is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn even_stream_id_closes_the_connection() {
    let h = Harness::start(&allow_all()).await;
    let mut s = raw(&h).await;
    s.write_all(create_frame(2).raw()).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "connection must be closed");
    assert!(h.agent.calls().is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_protobuf_gets_invalid_argument() {
    let h = Harness::start(&allow_all()).await;
    let mut s = raw(&h).await;
    // A valid envelope around a payload that is not a CreateContainerRequest.
    s.write_all(
        request_frame(
            1,
            0,
            "grpc.AgentService",
            "CreateContainer",
            vec![0x0a, 0xff, 0xff],
        )
        .raw(),
    )
    .await
    .unwrap();
    let (id, code, msg) = read_reply(&mut s).await.unwrap();
    assert_eq!((id, code), (1, 3));
    assert!(
        msg.starts_with("CreateContainerRequest: malformed request payload"),
        "{msg}"
    );
    // An envelope that is not a ttrpc Request at all.
    s.write_all(Frame::new(3, TYPE_REQUEST, 0, &[0xff; 7]).raw())
        .await
        .unwrap();
    let (id, code, msg) = read_reply(&mut s).await.unwrap();
    assert_eq!((id, code), (3, 3));
    assert!(msg.contains("malformed ttrpc request envelope"), "{msg}");
    // Invalid UTF-8 in the method name.
    let mut env = Vec::new();
    env.extend_from_slice(&[0x0a, 17]);
    env.extend_from_slice(b"grpc.AgentService");
    env.extend_from_slice(&[0x12, 2, 0xc3, 0x28]);
    s.write_all(Frame::new(5, TYPE_REQUEST, 0, &env).raw())
        .await
        .unwrap();
    let (id, code, _) = read_reply(&mut s).await.unwrap();
    assert_eq!((id, code), (5, 3));
    settle().await;
    assert!(h.agent.calls().is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_never_reach_the_agent_and_the_server_survives() {
    let h = Harness::start(&allow_all()).await;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20 {
        let mut s = raw(&h).await;
        let garbage: Vec<u8> = (0..4096)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed & 0xff) as u8
            })
            .collect();
        let _ = s.write_all(&garbage).await;
        let _ = s.shutdown().await;
        // Drain whatever comes back until the server closes.
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
    }
    settle().await;
    assert!(h.agent.calls().is_empty());
    assert!(h.agent_tap.sent_to_server().is_empty());
    // The server still serves.
    let c = h.agent_client().await;
    c.create_container(ctx(), &create("after")).await.unwrap();
    h.stop().await;
}
