//! Shared pieces of the agent-warden fuzz targets: the tokio runtime, the cached
//! guards for the connection target, the in-memory agent peer, and the encoders the
//! seed generator uses. See fuzz/README.md.

use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use agent_warden::wire::input::InputShape;
use agent_warden::wire::envelope::{self, Request};
use agent_warden::wire::frame::Frame;
use agent_warden::wire::methods;
use agent_warden::policy::{Policy, RegoVersion};
use agent_warden::serve::judge::{Guard, SetPolicyMode};
use agent_warden::policy::sources::{ALLOW_ALL_POLICY, DEFAULT_POLICY};
use protobuf::Message;
use tokio::io::{AsyncRead, ReadBuf};

/// One current-thread runtime per process, reused by every run.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// An `AsyncRead` over a byte slice that hands out at most `chunk` bytes per read
/// (and, when `pending_every` is n > 0, returns `Pending` before every n-th read,
/// waking itself — never twice in a row, so a run always progresses), so that
/// the frame reader sees short reads at every offset.
pub struct Chunked<'a> {
    pub data: &'a [u8],
    pub chunk: usize,
    pub pending_every: usize,
    reads: usize,
}

impl<'a> Chunked<'a> {
    pub fn new(data: &'a [u8], chunk: usize, pending_every: usize) -> Chunked<'a> {
        Chunked {
            data,
            chunk: chunk.max(1),
            pending_every,
            reads: 0,
        }
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.reads += 1;
        // Regression: `reads % pending_every` with pending_every = 1 returned Pending on
        // every poll, a harness hang (fuzz/regressions/frame/pending-every-read).
        if self.pending_every > 0 && self.reads % (self.pending_every + 1) == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = self.chunk.min(buf.remaining()).min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = tail;
        Poll::Ready(Ok(()))
    }
}

/// Which embedded policy a connection runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    AllowAll,
    Default,
}

/// The guard configuration of one connection run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardKey {
    pub policy: PolicyKind,
    pub shape: InputShape,
    pub set_policy_forbidden: bool,
    pub small_in_flight: bool,
}

/// In-flight limit used when `small_in_flight` is set (so RESOURCE_EXHAUSTED is
/// reachable with short inputs).
pub const SMALL_IN_FLIGHT: usize = 2;

fn policy_text(kind: PolicyKind) -> (&'static str, &'static str) {
    match kind {
        PolicyKind::AllowAll => ("allow-all.rego", ALLOW_ALL_POLICY),
        PolicyKind::Default => ("coco-default.rego", DEFAULT_POLICY),
    }
}

fn build_guard(key: GuardKey) -> Arc<Guard> {
    let (name, text) = policy_text(key.policy);
    let policy = Policy::load(name, text, RegoVersion::V0).expect("embedded policy loads");
    let mut guard = Guard::new(policy, key.shape);
    if key.set_policy_forbidden {
        guard = guard.with_set_policy(SetPolicyMode::Forbidden);
    }
    if key.small_in_flight {
        guard = guard.with_max_in_flight(SMALL_IN_FLIGHT);
    }
    Arc::new(guard)
}

struct Cached {
    guard: Arc<Guard>,
    digest: String,
}

/// The guard for `key`, built once and reused. A guard whose policy was replaced
/// (an allowed SetPolicy) or whose policy state changed is rebuilt, so every run
/// starts from the same state and a crash input reproduces on its own.
pub fn guard(key: GuardKey) -> Arc<Guard> {
    // At most 24 keys: a list is enough (InputShape is not Hash).
    static CACHE: OnceLock<Mutex<Vec<(GuardKey, Cached)>>> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let slot = cache.iter().position(|(k, _)| *k == key);
    if let Some(i) = slot {
        let c = &cache[i].1;
        let p = c.guard.policy();
        if p.digest() == c.digest && p.state() == serde_json::json!({}) {
            return c.guard.clone();
        }
    }
    let guard = build_guard(key);
    let digest = guard.policy().digest().to_string();
    let fresh = Cached {
        guard: guard.clone(),
        digest,
    };
    match slot {
        Some(i) => cache[i].1 = fresh,
        None => cache.push((key, fresh)),
    }
    guard
}

/// The first byte of a connection input: the guard and how the agent peer behaves.
#[derive(Debug, Clone, Copy)]
pub struct ConnFlags {
    pub key: GuardKey,
    pub agent: AgentMode,
}

/// How the in-memory agent peer answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentMode {
    /// Answers each request at once with OK.
    Ok,
    /// Answers each request at once with an INTERNAL error status.
    Error,
    /// Collects up to 3 requests, then answers them in reverse order, preceded by a
    /// stray data frame and an OK answer for stream id + 2 (usually not in flight).
    Batched,
    /// Reads one request and then closes the connection without answering.
    CloseAfterOne,
}

impl ConnFlags {
    pub fn from_byte(b: u8) -> ConnFlags {
        let policy = if b & 1 == 0 {
            PolicyKind::AllowAll
        } else {
            PolicyKind::Default
        };
        let shape = match (b >> 1) & 3 {
            1 => InputShape::Legacy,
            2 => InputShape::LegacyStreamPorts,
            _ => InputShape::Current,
        };
        let agent = match (b >> 3) & 3 {
            0 => AgentMode::Ok,
            1 => AgentMode::Error,
            2 => AgentMode::Batched,
            _ => AgentMode::CloseAfterOne,
        };
        ConnFlags {
            key: GuardKey {
                policy,
                shape,
                set_policy_forbidden: b & 0x20 != 0,
                small_in_flight: b & 0x40 != 0,
            },
            agent,
        }
    }

    /// The inverse of [`ConnFlags::from_byte`] for the seeds (bit 7 unused).
    pub fn to_byte(self) -> u8 {
        let mut b = match self.key.policy {
            PolicyKind::AllowAll => 0,
            PolicyKind::Default => 1,
        };
        b |= match self.key.shape {
            InputShape::Current => 0,
            InputShape::Legacy => 1,
            InputShape::LegacyStreamPorts => 2,
        } << 1;
        b |= match self.agent {
            AgentMode::Ok => 0,
            AgentMode::Error => 1,
            AgentMode::Batched => 2,
            AgentMode::CloseAfterOne => 3,
        } << 3;
        if self.key.set_policy_forbidden {
            b |= 0x20;
        }
        if self.key.small_in_flight {
            b |= 0x40;
        }
        b
    }
}

/// What the agent peer answers to ReadStdout/ReadStderr: a ReadStreamResponse whose
/// data is not valid UTF-8, so it can never appear inside an error message
/// agent-warden builds from host input. Under the default policy (which denies
/// ReadStreamRequest) the host must never see these bytes.
pub const AGENT_SECRET: &[u8] = b"\xff\xfe\x00AGENT-STDOUT-SECRET\xc0\xff";

/// Encodes a request envelope for `service`/`method` with `payload`.
pub fn request_body(service: &str, method: &str, payload: &[u8]) -> Vec<u8> {
    host_request(service, method, payload)
        .write_to_bytes()
        .expect("encode request envelope")
}

/// The request the host's client sends for `service`/`method` (10 s timeout).
fn host_request(service: &str, method: &str, payload: &[u8]) -> Request {
    Request {
        timeout_nano: 10_000_000_000,
        ..envelope::request(service, method, payload.to_vec())
    }
}

/// A complete request frame for the method-table row `m` on `stream_id`.
pub fn request_frame(m: &methods::Method, stream_id: u32, payload: &[u8]) -> Frame {
    envelope::request_frame(stream_id, 0, &host_request(&m.service, &m.name, payload))
}

/// Decodes a request frame body to (service, method), if it is one.
pub fn request_names(body: &[u8]) -> Option<(String, String)> {
    envelope::decode_request(body)
        .ok()
        .map(|r| (r.service, r.method))
}
