//! Test doubles and harness shared by the integration tests: a recording kata agent
//! (a real ttrpc server), byte taps on unix sockets, and agent-warden in between.
#![allow(dead_code)]

pub mod oracle;
pub mod peers;

/// The built `agent-warden` binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_agent-warden");
/// The repository root: commands run from it, so relative paths (policies/, testdata/)
/// resolve.
pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `agent-warden ARGS`, to be run from the repository root without the caller's RUST_LOG.
pub fn warden_command<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Command {
    let mut c = std::process::Command::new(BIN);
    c.args(args).current_dir(ROOT).env_remove("RUST_LOG");
    c
}

/// Runs `agent-warden ARGS` to completion.
pub fn run_warden(args: &[&str]) -> std::process::Output {
    warden_command(args).output().expect("run agent-warden")
}

/// A command's stdout, as text.
pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command's stderr, as text.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_warden::policy::{Policy, RegoVersion};
use agent_warden::serve::address::{Address, Listener};
use agent_warden::serve::judge::Guard;
use agent_warden::wire::envelope;
use agent_warden::wire::input::InputShape;
use agent_warden::wire::protocols::{agent, agent_ttrpc, empty::Empty, health, health_ttrpc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Semaphore;
use ttrpc::r#async::TtrpcContext;

/// What the recording agent sends back from ReadStdout/ReadStderr.
pub const STDOUT_DATA: &[u8] = b"container output";

/// A kata agent double: records each method that reached it; WaitProcess and
/// GetOOMEvent block (long polls) until `release` is called.
pub struct RecordingAgent {
    pub calls: Mutex<Vec<String>>,
    pub long_polls: Semaphore,
}

impl Default for RecordingAgent {
    fn default() -> Self {
        RecordingAgent {
            calls: Mutex::new(Vec::new()),
            long_polls: Semaphore::new(0),
        }
    }
}

impl RecordingAgent {
    fn saw(&self, m: &str) {
        self.calls.lock().unwrap().push(m.to_string());
    }
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    /// Lets `n` blocked long polls complete.
    pub fn release(&self, n: usize) {
        self.long_polls.add_permits(n);
    }
}

#[async_trait::async_trait]
impl agent_ttrpc::AgentService for RecordingAgent {
    async fn create_container(
        &self,
        _: &TtrpcContext,
        r: agent::CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.saw("CreateContainer");
        if r.container_id.starts_with("fail") {
            return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::INTERNAL,
                "agent: create failed",
            )));
        }
        Ok(Empty::new())
    }
    async fn start_container(
        &self,
        _: &TtrpcContext,
        _: agent::StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.saw("StartContainer");
        Ok(Empty::new())
    }
    async fn exec_process(
        &self,
        _: &TtrpcContext,
        _: agent::ExecProcessRequest,
    ) -> ttrpc::Result<Empty> {
        self.saw("ExecProcess");
        Ok(Empty::new())
    }
    async fn remove_container(
        &self,
        _: &TtrpcContext,
        _: agent::RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.saw("RemoveContainer");
        Ok(Empty::new())
    }
    async fn copy_file(&self, _: &TtrpcContext, _: agent::CopyFileRequest) -> ttrpc::Result<Empty> {
        self.saw("CopyFile");
        Ok(Empty::new())
    }
    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        _: agent::CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        self.saw("CreateSandbox");
        Ok(Empty::new())
    }
    async fn destroy_sandbox(
        &self,
        _: &TtrpcContext,
        _: agent::DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        self.saw("DestroySandbox");
        Ok(Empty::new())
    }
    async fn update_interface(
        &self,
        _: &TtrpcContext,
        r: agent::UpdateInterfaceRequest,
    ) -> ttrpc::Result<agent_warden::wire::protocols::types::Interface> {
        self.saw("UpdateInterface");
        Ok(r.interface.unwrap_or_default())
    }
    async fn update_routes(
        &self,
        _: &TtrpcContext,
        r: agent::UpdateRoutesRequest,
    ) -> ttrpc::Result<agent::Routes> {
        self.saw("UpdateRoutes");
        Ok(r.routes.unwrap_or_default())
    }
    async fn update_ephemeral_mounts(
        &self,
        _: &TtrpcContext,
        _: agent::UpdateEphemeralMountsRequest,
    ) -> ttrpc::Result<Empty> {
        self.saw("UpdateEphemeralMounts");
        Ok(Empty::new())
    }
    async fn online_cpu_mem(
        &self,
        _: &TtrpcContext,
        _: agent::OnlineCPUMemRequest,
    ) -> ttrpc::Result<Empty> {
        self.saw("OnlineCPUMem");
        Ok(Empty::new())
    }
    async fn get_guest_details(
        &self,
        _: &TtrpcContext,
        _: agent::GuestDetailsRequest,
    ) -> ttrpc::Result<agent::GuestDetailsResponse> {
        self.saw("GetGuestDetails");
        Ok(agent::GuestDetailsResponse::default())
    }
    async fn read_stdout(
        &self,
        _: &TtrpcContext,
        r: agent::ReadStreamRequest,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        self.saw("ReadStdout");
        // Large reads get that many bytes (to fill socket buffers in backpressure tests).
        let data = if r.len >= 65536 {
            vec![b'x'; r.len as usize]
        } else {
            STDOUT_DATA.to_vec()
        };
        Ok(agent::ReadStreamResponse {
            data,
            ..Default::default()
        })
    }
    async fn read_stderr(
        &self,
        _: &TtrpcContext,
        _: agent::ReadStreamRequest,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        self.saw("ReadStderr");
        Ok(agent::ReadStreamResponse {
            data: STDOUT_DATA.to_vec(),
            ..Default::default()
        })
    }
    async fn wait_process(
        &self,
        _: &TtrpcContext,
        _: agent::WaitProcessRequest,
    ) -> ttrpc::Result<agent::WaitProcessResponse> {
        self.saw("WaitProcess");
        if let Ok(p) = self.long_polls.acquire().await {
            p.forget();
        }
        Ok(agent::WaitProcessResponse {
            status: 42,
            ..Default::default()
        })
    }
    async fn get_oom_event(
        &self,
        _: &TtrpcContext,
        _: agent::GetOOMEventRequest,
    ) -> ttrpc::Result<agent::OOMEvent> {
        self.saw("GetOOMEvent");
        if let Ok(p) = self.long_polls.acquire().await {
            p.forget();
        }
        Ok(agent::OOMEvent {
            container_id: "c1".into(),
            ..Default::default()
        })
    }
}

#[async_trait::async_trait]
impl health_ttrpc::Health for RecordingAgent {
    async fn check(
        &self,
        _: &TtrpcContext,
        _: health::CheckRequest,
    ) -> ttrpc::Result<health::HealthCheckResponse> {
        self.saw("Check");
        Ok(health::HealthCheckResponse {
            status: health::health_check_response::ServingStatus::SERVING.into(),
            ..Default::default()
        })
    }
}

/// Records the bytes that pass through a unix-socket hop, in each direction.
#[derive(Default)]
pub struct Tap {
    pub to_server: Arc<Mutex<Vec<u8>>>,
    pub to_client: Arc<Mutex<Vec<u8>>>,
}

impl Tap {
    /// Listens on `front` and forwards each connection to `back`, recording bytes.
    pub async fn start(front: &Path, back: PathBuf) -> Arc<Tap> {
        Tap::start_with(front, move || tokio::net::UnixStream::connect(back.clone())).await
    }

    /// Listens on `front` and forwards each connection to the stream `connect` opens (e.g.
    /// a hybrid-vsock connection after its CONNECT handshake), recording bytes.
    pub async fn start_with<F, Fut>(front: &Path, connect: F) -> Arc<Tap>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = std::io::Result<UnixStream>> + Send,
    {
        let tap = Arc::new(Tap::default());
        let listener = tokio::net::UnixListener::bind(front).unwrap();
        let t = tap.clone();
        tokio::spawn(async move {
            while let Ok((c, _)) = listener.accept().await {
                let s = connect().await.unwrap();
                let (cr, cw) = c.into_split();
                let (sr, sw) = s.into_split();
                tokio::spawn(copy(cr, sw, t.to_server.clone()));
                tokio::spawn(copy(sr, cw, t.to_client.clone()));
            }
        });
        tap
    }
    pub fn sent_to_server(&self) -> Vec<u8> {
        self.to_server.lock().unwrap().clone()
    }
}

async fn copy(
    mut r: tokio::net::unix::OwnedReadHalf,
    mut w: tokio::net::unix::OwnedWriteHalf,
    rec: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                rec.lock().unwrap().extend_from_slice(&buf[..n]);
                if w.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = w.shutdown().await;
}

/// host (ttrpc client) → [host tap] → agent-warden → [agent tap] → recording agent.
pub struct Harness {
    pub dir: tempfile::TempDir,
    /// Where a host connects (through the host tap).
    pub host_sock: PathBuf,
    /// agent-warden's own listening socket (no tap), for raw-socket tests.
    pub warden_sock: PathBuf,
    pub agent: Arc<RecordingAgent>,
    pub host_tap: Arc<Tap>,
    pub agent_tap: Arc<Tap>,
    pub guard: Arc<Guard>,
    server: ttrpc::r#async::Server,
}

impl Harness {
    pub async fn start(policy: &str) -> Harness {
        Self::start_with(policy, RegoVersion::V0, InputShape::Current).await
    }

    pub async fn start_with(policy: &str, rego: RegoVersion, shape: InputShape) -> Harness {
        let policy = Policy::load("test.rego", policy, rego).expect("test policy loads");
        Self::start_guard(Guard::new(policy, shape)).await
    }

    pub async fn start_guard(guard: Guard) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let agent_sock = dir.path().join("agent.sock");
        let agent_front = dir.path().join("agent-tap.sock");
        let warden_sock = dir.path().join("warden.sock");
        let host_sock = dir.path().join("host-tap.sock");
        let agent = Arc::new(RecordingAgent::default());
        let mut services = agent_ttrpc::create_agent_service(agent.clone());
        services.extend(health_ttrpc::create_health(agent.clone()));
        let mut server = ttrpc::r#async::Server::new()
            .bind(&format!("unix://{}", agent_sock.display()))
            .unwrap()
            .register_service(services);
        server.start().await.unwrap();
        let agent_tap = Tap::start(&agent_front, agent_sock).await;
        let guard = Arc::new(guard);
        let listener = Listener::bind(&Address::Unix(warden_sock.clone()))
            .await
            .unwrap();
        tokio::spawn(agent_warden::serve::run(
            listener,
            Address::Unix(agent_front),
            guard.clone(),
            std::future::pending::<()>(),
        ));
        let host_tap = Tap::start(&host_sock, warden_sock.clone()).await;
        Harness {
            dir,
            host_sock,
            warden_sock,
            agent,
            host_tap,
            agent_tap,
            guard,
            server,
        }
    }

    /// A real ttrpc client (the host), through the host tap.
    pub async fn client(&self) -> ttrpc::r#async::Client {
        ttrpc::r#async::Client::connect(&format!("unix://{}", self.host_sock.display()))
            .await
            .unwrap()
    }

    pub async fn agent_client(&self) -> agent_ttrpc::AgentServiceClient {
        agent_ttrpc::AgentServiceClient::new(self.client().await)
    }

    pub async fn stop(mut self) {
        let _ = self.server.shutdown().await;
    }
}

/// A ttrpc context with a 10 s timeout.
pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(10).as_nanos() as i64)
}

/// The status code and message of a failed call.
pub fn status<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> (i32, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code.value(), s.message),
        other => panic!("expected an RPC status error, got {other:?}"),
    }
}

/// The allow-all policy shipped in policies/.
pub fn allow_all() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/policies/allow-all.rego"
    ))
    .unwrap()
}

// ---- additions for the fault, soak and backpressure tests -------------------------

/// Starts a recording agent (a real ttrpc server) on the unix socket `path`.
pub async fn start_agent_server(path: &Path) -> (Arc<RecordingAgent>, ttrpc::r#async::Server) {
    let agent = Arc::new(RecordingAgent::default());
    let mut services = agent_ttrpc::create_agent_service(agent.clone());
    services.extend(health_ttrpc::create_health(agent.clone()));
    let mut server = ttrpc::r#async::Server::new()
        .bind(&format!("unix://{}", path.display()))
        .unwrap()
        .register_service(services);
    server.start().await.unwrap();
    (agent, server)
}

/// agent-warden (`serve::run`) listening on `listen`, relaying to the agent at
/// `agent`, until the returned sender is dropped or sent to.
pub async fn start_warden(
    listen: &Path,
    agent: &Path,
    guard: Arc<Guard>,
) -> tokio::sync::oneshot::Sender<()> {
    let listener = Listener::bind(&Address::Unix(listen.to_path_buf()))
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(agent_warden::serve::run(
        listener,
        Address::Unix(agent.to_path_buf()),
        guard,
        async move {
            let _ = stopped.await;
        },
    ));
    stop
}

/// A guard running the allow-all policy.
pub fn allow_all_guard() -> Guard {
    let policy = Policy::load("allow-all.rego", &allow_all(), RegoVersion::V0).unwrap();
    Guard::new(policy, InputShape::Current)
}

/// A kata agent double on raw frames that can crash: it answers each request OK at
/// once (ReadStdout with `read_len` bytes of data), except WaitProcess, which waits
/// for a `release`. It counts the bytes it has written, and `crash` drops every
/// connection and the listener at once, as a dying process would.
pub struct RawAgent {
    pub path: PathBuf,
    /// Method names received, in order.
    pub seen: Arc<Mutex<Vec<String>>>,
    /// Bytes written to agent-warden so far.
    pub written: Arc<std::sync::atomic::AtomicU64>,
    long_polls: Arc<Semaphore>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl RawAgent {
    pub async fn start(path: &Path, read_len: usize) -> RawAgent {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let agent = RawAgent {
            path: path.to_path_buf(),
            seen: Arc::default(),
            written: Arc::default(),
            long_polls: Arc::new(Semaphore::new(0)),
            tasks: Arc::default(),
        };
        let (seen, written, polls, tasks) = (
            agent.seen.clone(),
            agent.written.clone(),
            agent.long_polls.clone(),
            agent.tasks.clone(),
        );
        let t = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let c = tokio::spawn(raw_agent_conn(
                    s,
                    read_len,
                    seen.clone(),
                    written.clone(),
                    polls.clone(),
                    t.clone(),
                ));
                t.lock().unwrap().push(c.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        agent
    }

    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    pub fn written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Lets `n` blocked WaitProcess calls complete.
    pub fn release(&self, n: usize) {
        self.long_polls.add_permits(n);
    }

    /// Every connection and the listener go away at once; the socket file is removed.
    pub fn crash(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for RawAgent {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

async fn raw_agent_conn(
    s: tokio::net::UnixStream,
    read_len: usize,
    seen: Arc<Mutex<Vec<String>>>,
    written: Arc<std::sync::atomic::AtomicU64>,
    polls: Arc<Semaphore>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
) {
    use agent_warden::wire::frame::{self, Read};
    use protobuf::Message;
    let (mut r, mut w) = s.into_split();
    // Answers are built by the writer, so an agent whose writes block holds only
    // (stream, method) pairs, as a real agent's queue would.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u32, String)>();
    let reader = async move {
        loop {
            let f = match frame::read_frame(&mut r, frame::MAX_BODY).await {
                Ok(Read::Frame(f)) => f,
                _ => return,
            };
            let method = envelope::decode_request(f.body())
                .map(|r| r.method)
                .unwrap_or_default();
            seen.lock().unwrap().push(method.clone());
            let id = f.header.stream_id;
            if method == "WaitProcess" {
                let (tx, polls) = (tx.clone(), polls.clone());
                let t = tokio::spawn(async move {
                    if let Ok(p) = polls.acquire().await {
                        p.forget();
                    }
                    let _ = tx.send((id, method));
                });
                tasks.lock().unwrap().push(t.abort_handle());
            } else if tx.send((id, method)).is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((id, method)) = rx.recv().await {
            let payload = match method.as_str() {
                "ReadStdout" | "ReadStderr" => agent::ReadStreamResponse {
                    data: vec![b'x'; read_len],
                    ..Default::default()
                }
                .write_to_bytes()
                .unwrap(),
                "WaitProcess" => agent::WaitProcessResponse {
                    status: 42,
                    ..Default::default()
                }
                .write_to_bytes()
                .unwrap(),
                _ => Vec::new(),
            };
            let f = envelope::ok_frame(id, &payload);
            if w.write_all(f.raw()).await.is_err() {
                return;
            }
            written.fetch_add(f.raw().len() as u64, std::sync::atomic::Ordering::SeqCst);
        }
    };
    tokio::join!(reader, writer);
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Resident set size of this process in KiB (`VmRSS`).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Polls `cond` every 10 ms for up to `secs` seconds; panics with `what` if it never holds.
pub async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Splits a recorded byte stream (what a tap saw) into its whole frames, in order.
pub async fn frames(bytes: &[u8]) -> Vec<agent_warden::wire::frame::Frame> {
    use agent_warden::wire::frame::{self, Read};
    let mut r = bytes;
    let mut out = Vec::new();
    while let Ok(Read::Frame(f)) = frame::read_frame(&mut r, frame::MAX_BODY).await {
        out.push(f);
    }
    out
}

/// The exact bytes of every whole frame in `bytes`, in order.
pub async fn raw_frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    frames(bytes)
        .await
        .iter()
        .map(|f| f.raw().to_vec())
        .collect()
}

/// A request frame for `grpc.AgentService/<method>` (flags 0).
pub fn request_frame(
    stream: u32,
    method: &str,
    payload: Vec<u8>,
) -> agent_warden::wire::frame::Frame {
    let req = envelope::request("grpc.AgentService", method, payload);
    envelope::request_frame(stream, 0, &req)
}

/// StartContainer of `c1`.
pub fn start_frame(stream: u32) -> agent_warden::wire::frame::Frame {
    let r = agent::StartContainerRequest {
        container_id: "c1".into(),
        ..Default::default()
    };
    request_frame(
        stream,
        "StartContainer",
        protobuf::Message::write_to_bytes(&r).unwrap(),
    )
}

/// WaitProcess (a long poll on the recording agent).
pub fn wait_frame(stream: u32) -> agent_warden::wire::frame::Frame {
    request_frame(
        stream,
        "WaitProcess",
        protobuf::Message::write_to_bytes(&agent::WaitProcessRequest::new()).unwrap(),
    )
}

/// The next answer on a raw host socket as (stream, status code, message); `None`
/// when the connection closed or nothing came within 10 s. An undecodable answer panics.
pub async fn read_reply(s: &mut UnixStream) -> Option<(u32, i32, String)> {
    match tokio::time::timeout(
        Duration::from_secs(10),
        agent_warden::wire::frame::read_frame(s, agent_warden::wire::frame::MAX_BODY),
    )
    .await
    .ok()?
    {
        Ok(agent_warden::wire::frame::Read::Frame(f)) => {
            let r = agent_warden::wire::envelope::decode_response(f.body()).unwrap();
            Some((
                f.header.stream_id,
                agent_warden::wire::envelope::status_code(&r),
                r.status.message.clone(),
            ))
        }
        _ => None,
    }
}

/// A raw host connection straight to agent-warden (no tap).
pub async fn raw(h: &Harness) -> UnixStream {
    UnixStream::connect(&h.warden_sock).await.unwrap()
}

/// Every place where two JSON values differ, value by value (`null` is not `""`, a
/// missing key is not a zero), as `path: left vs right` lines.
pub fn json_differences(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Vec<String> {
    use serde_json::Value;
    let mut out = Vec::new();
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => out.extend(json_differences(u, v, &p)),
                    (u, v) => out.push(format!(
                        "{p}: {} vs {}",
                        u.map_or("(absent)".into(), Value::to_string),
                        v.map_or("(absent)".into(), Value::to_string)
                    )),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                out.extend(json_differences(u, v, &format!("{path}[{i}]")));
            }
        }
        _ if a == b => {}
        _ => out.push(format!("{path}: {a} vs {b}")),
    }
    out
}
