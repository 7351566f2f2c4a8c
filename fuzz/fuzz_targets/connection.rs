//! The whole per-connection state machine (`relay::relay`) fed an arbitrary host byte
//! stream.
//!
//! Byte 0 chooses the guard (allow-all or the default policy, input shape, SetPolicy
//! forbidden, a small in-flight limit) and how the in-memory agent peer behaves
//! (see `fuzz_support::AgentMode`); the rest is what the host sends, after which the
//! host closes its side while still reading. The host side and the agent side are
//! `tokio::io::duplex` pipes. Each run must end on its own (bounded by a timeout),
//! and:
//! * the agent receives only request frames (type 1, odd stream id, no streaming
//!   flags) with a decodable envelope naming a known method, each exactly as the
//!   host sent it;
//! * SetPolicy never reaches the agent; under the default policy ExecProcess and
//!   WriteStdin never do either, and CopyFile only with a clean path strictly
//!   beneath the shared containers directory;
//! * under the default policy (ReadStreamRequest denied) the agent's ReadStdout /
//!   ReadStderr data never reaches the host;
//! * everything the host receives is a sequence of whole response frames.
#![no_main]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_warden::serve::address::Conn;
use agent_warden::wire::envelope::{self, Code};
use agent_warden::wire::frame::{
    self, Frame, Read, FLAG_NO_DATA, FLAG_REMOTE_OPEN, MAX_BODY, TYPE_DATA, TYPE_REQUEST,
    TYPE_RESPONSE,
};
use agent_warden::wire::methods;
use agent_warden::wire::protocols::agent::{CopyFileRequest, ReadStreamResponse};
use fuzz_support::{guard, runtime, AgentMode, ConnFlags, PolicyKind, AGENT_SECRET};
use libfuzzer_sys::fuzz_target;
use protobuf::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What policies/coco-default.rego lets CopyFile write beneath.
const SHARED_DIR: &str = "/run/kata-containers/shared/containers/";

/// Generous: a run normally takes well under a millisecond per request.
const RUN_LIMIT: Duration = Duration::from_secs(20);

fn conn(s: tokio::io::DuplexStream, peer: &str) -> Conn {
    let (r, w) = tokio::io::split(s);
    Conn {
        read: Box::new(r),
        write: Box::new(w),
        peer: peer.to_string(),
    }
}

fn secret_payload() -> Vec<u8> {
    ReadStreamResponse {
        data: AGENT_SECRET.to_vec(),
        ..Default::default()
    }
    .write_to_bytes()
    .expect("encode ReadStreamResponse")
}

/// Checks one frame that reached the agent; returns its method name.
fn check_forwarded(f: &Frame, host_input: &[u8], flags: ConnFlags) -> String {
    let h = f.header;
    assert_eq!(h.kind, TYPE_REQUEST, "agent got a non-request frame: {h:?}");
    assert_eq!(h.stream_id % 2, 1, "agent got an even stream id: {h:?}");
    assert_eq!(h.flags & (FLAG_REMOTE_OPEN | FLAG_NO_DATA), 0, "agent got streaming flags: {h:?}");
    let req = envelope::decode_request(f.body()).expect("agent got an undecodable envelope");
    let m = methods::table()
        .lookup(&req.service, &req.method)
        .unwrap_or_else(|| panic!("agent got an unknown method {}/{}", req.service, req.method));
    assert_ne!(m.name, "SetPolicy", "SetPolicy was forwarded to the agent");
    if flags.key.policy == PolicyKind::Default {
        assert!(
            m.name != "ExecProcess" && m.name != "WriteStdin",
            "{} passed the default policy",
            m.name
        );
    }
    if flags.key.policy == PolicyKind::Default && m.name == "CopyFile" {
        let r = CopyFileRequest::parse_from_bytes(&req.payload).expect("forwarded CopyFile decodes");
        let rel = r
            .path
            .strip_prefix(SHARED_DIR)
            .unwrap_or_else(|| panic!("CopyFile outside {SHARED_DIR} passed the default policy: {:?}", r.path));
        assert!(
            !rel.is_empty()
                && !rel.ends_with('/')
                && rel.split('/').all(|c| !c.is_empty() && c != "." && c != ".."),
            "CopyFile path not clean and strictly beneath {SHARED_DIR} passed the default policy: {:?}",
            r.path
        );
    }
    assert!(
        host_input.windows(f.raw().len()).any(|w| w == f.raw().as_ref()),
        "agent got bytes the host never sent"
    );
    m.name.clone()
}

/// The in-memory kata-agent.
async fn agent_peer(
    s: tokio::io::DuplexStream,
    host_input: &[u8],
    flags: ConnFlags,
    seen: &Mutex<Vec<String>>,
) {
    let (mut r, mut w) = tokio::io::split(s);
    let secret = secret_payload();
    let answer = |f: &Frame, name: &str| -> Frame {
        let id = f.header.stream_id;
        match flags.agent {
            AgentMode::Error => envelope::error_frame(id, Code::INTERNAL, "agent failed"),
            _ if name == "ReadStdout" || name == "ReadStderr" => envelope::ok_frame(id, &secret),
            _ => envelope::ok_frame(id, &[]),
        }
    };
    let mut held: Vec<Frame> = Vec::new();
    loop {
        let f = match frame::read_frame(&mut r, MAX_BODY).await {
            Ok(Read::Frame(f)) => f,
            Ok(Read::Oversize(h)) => panic!("agent got an oversize frame {h:?}"),
            Ok(Read::Closed) => break,
            Err(e) => panic!("agent got a broken frame stream: {e}"),
        };
        let name = check_forwarded(&f, host_input, flags);
        seen.lock().unwrap().push(name.clone());
        let out: Vec<Frame> = match flags.agent {
            AgentMode::Ok | AgentMode::Error => vec![answer(&f, &name)],
            AgentMode::CloseAfterOne => return,
            AgentMode::Batched => {
                held.push(answer(&f, &name));
                if held.len() < 3 {
                    continue;
                }
                let mut out = vec![
                    Frame::new(f.header.stream_id, TYPE_DATA, 0, b"stray"),
                    envelope::ok_frame(f.header.stream_id.wrapping_add(2), &[]),
                ];
                out.extend(held.drain(..).rev());
                out
            }
        };
        for o in out {
            if w.write_all(o.raw()).await.is_err() {
                return;
            }
        }
    }
}

/// Checks what the host received: whole response frames, no secret.
fn check_host_output(out: &[u8], flags: ConnFlags) {
    let mut rest = out;
    while !rest.is_empty() {
        assert!(rest.len() >= frame::HEADER_LEN, "host got a partial frame header");
        let mut hb = [0u8; frame::HEADER_LEN];
        hb.copy_from_slice(&rest[..frame::HEADER_LEN]);
        let h = frame::Header::parse(&hb);
        assert_eq!(h.kind, TYPE_RESPONSE, "host got a non-response frame {h:?}");
        let end = frame::HEADER_LEN + h.length as usize;
        assert!(rest.len() >= end, "host got a partial frame body");
        envelope::decode_response(&rest[frame::HEADER_LEN..end]).expect("host got an undecodable response");
        rest = &rest[end..];
    }
    if flags.key.policy == PolicyKind::Default {
        assert!(
            !out.windows(AGENT_SECRET.len()).any(|w| w == AGENT_SECRET),
            "ReadStdout/ReadStderr data reached the host under the default policy"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&fb, host_input)) = data.split_first() else {
        return;
    };
    let flags = ConnFlags::from_byte(fb);
    let guard = guard(flags.key);
    let seen = Mutex::new(Vec::new());
    let out = runtime().block_on(async {
        let (host_peer, host_side) = tokio::io::duplex(64 << 10);
        let (agent_peer_end, agent_side) = tokio::io::duplex(64 << 10);
        let (mut host_r, mut host_w) = tokio::io::split(host_peer);
        let relay = agent_warden::serve::relay::relay(
            Arc::clone(&guard),
            conn(host_side, "fuzz-host"),
            conn(agent_side, "fuzz-agent"),
        );
        let host_send = async {
            let _ = host_w.write_all(host_input).await;
            let _ = host_w.shutdown().await;
        };
        let host_recv = async {
            let mut out = Vec::new();
            let _ = host_r.read_to_end(&mut out).await;
            out
        };
        let agent = agent_peer(agent_peer_end, host_input, flags, &seen);
        let run = async {
            let ((), (), out, ()) = tokio::join!(relay, host_send, host_recv, agent);
            out
        };
        tokio::time::timeout(RUN_LIMIT, run)
            .await
            .unwrap_or_else(|_| panic!("connection did not finish within {RUN_LIMIT:?}"))
    });
    check_host_output(&out, flags);
});
