//! `agent-warden demo`: the newcomer's first run.
//!
//! Starts a small built-in demo agent (a real ttrpc server speaking AgentService)
//! and agent-warden in front of it, both on temporary unix sockets, then plays a
//! short scripted session as the host would (a real ttrpc client) and prints each
//! request with the answer it got. Nothing here is used by `serve`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use protobuf::{Message, MessageField};
use ttrpc::r#async::{Service, TtrpcContext};

use crate::serve;
use crate::serve::address::{Address, Listener};
use crate::serve::judge::Guard;
use crate::wire::envelope;
use crate::wire::protocols::{agent, health, oci};

/// The demo agent: a ttrpc server that answers the calls of the demo session and counts
/// what reached it. It is a table (service, method → answer), not an implementation of
/// AgentService: it answers every call it knows OK with a fixed payload, and any other
/// UNIMPLEMENTED, as ttrpc does for a method no service registers.
#[derive(Default)]
pub struct DemoAgent {
    /// Requests that reached the agent.
    pub seen: AtomicUsize,
}

/// What the demo agent's ReadStdout returns: the workload's output, which the default
/// policy keeps from the host.
const DEMO_STDOUT: &[u8] = b"secret output of the workload\n";

/// The calls the demo agent answers, each with the payload of its OK answer (an empty
/// response message encodes to no bytes).
fn demo_answers() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let serving = health::HealthCheckResponse {
        status: health::health_check_response::ServingStatus::SERVING.into(),
        ..Default::default()
    };
    let stdout = agent::ReadStreamResponse {
        data: DEMO_STDOUT.to_vec(),
        ..Default::default()
    };
    let encoded = |m: &dyn protobuf::MessageDyn| m.write_to_bytes_dyn().unwrap_or_default();
    let mut answers = vec![
        ("grpc.Health", "Check", encoded(&serving)),
        ("grpc.AgentService", "ReadStdout", encoded(&stdout)),
    ];
    for method in [
        "CreateSandbox",
        "CreateContainer",
        "StartContainer",
        "ExecProcess",
        "CopyFile",
        "SetPolicy",
    ] {
        answers.push(("grpc.AgentService", method, Vec::new()));
    }
    answers
}

/// One method of the demo agent: counts the call, answers OK with `payload`.
struct DemoMethod {
    agent: Arc<DemoAgent>,
    payload: Vec<u8>,
}

#[async_trait::async_trait]
impl ttrpc::r#async::MethodHandler for DemoMethod {
    async fn handler(
        &self,
        _: TtrpcContext,
        _: ttrpc::proto::Request,
    ) -> ttrpc::Result<ttrpc::proto::Response> {
        self.agent.seen.fetch_add(1, Ordering::SeqCst);
        Ok(ttrpc::proto::Response {
            status: protobuf::MessageField::some(ttrpc::get_status(ttrpc::Code::OK, "")),
            payload: self.payload.clone(),
            ..Default::default()
        })
    }
}

/// Starts a demo agent on `socket` (a filesystem path); returns the running server.
pub async fn start_demo_agent(
    socket: &std::path::Path,
    agent: Arc<DemoAgent>,
) -> anyhow::Result<ttrpc::r#async::Server> {
    let mut services: HashMap<String, Service> = HashMap::new();
    for (service, method, payload) in demo_answers() {
        let handler = DemoMethod {
            agent: agent.clone(),
            payload,
        };
        services
            .entry(service.to_string())
            .or_insert_with(|| Service {
                methods: HashMap::new(),
                streams: HashMap::new(),
            })
            .methods
            .insert(method.to_string(), Box::new(handler));
    }
    let mut server = ttrpc::r#async::Server::new()
        .bind(&format!("unix://{}", socket.display()))
        .map_err(|e| anyhow::anyhow!("demo agent cannot listen on {}: {e}", socket.display()))?
        .register_service(services);
    server
        .start()
        .await
        .map_err(|e| anyhow::anyhow!("demo agent failed to start: {e}"))?;
    Ok(server)
}

/// One request of the scripted host session: its line in the transcript, the call,
/// and how an OK answer's payload is shown.
struct Step {
    label: &'static str,
    service: &'static str,
    method: &'static str,
    payload: Vec<u8>,
    show: fn(&[u8]) -> String,
}

impl Step {
    /// A call of `grpc.AgentService/<method>` whose answer is shown as nothing.
    fn agent(label: &'static str, method: &'static str, req: &dyn protobuf::MessageDyn) -> Step {
        Step {
            label,
            service: "grpc.AgentService",
            method,
            payload: req.write_to_bytes_dyn().unwrap_or_default(),
            show: |_| String::new(),
        }
    }
}

/// The host's session: a pod's first requests, two that the default policy refuses,
/// a read whose data it blanks, and an attempt to replace it.
fn session() -> Vec<Step> {
    let cid = "c0ffee";
    let process = |args: &[&str]| oci::Process {
        Args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    };
    let sandbox = agent::CreateSandboxRequest {
        hostname: "demo".into(),
        sandbox_id: "demo-sandbox".into(),
        ..Default::default()
    };
    let create = agent::CreateContainerRequest {
        container_id: cid.into(),
        OCI: MessageField::some(oci::Spec {
            Process: MessageField::some(process(&["/pause"])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let start = agent::StartContainerRequest {
        container_id: cid.into(),
        ..Default::default()
    };
    let resolv = agent::CopyFileRequest {
        path: format!("/run/kata-containers/shared/containers/{cid}-resolv.conf"),
        file_mode: 0o100644,
        data: b"nameserver 10.0.0.10\n".to_vec(),
        file_size: 21,
        ..Default::default()
    };
    let escape = agent::CopyFileRequest {
        path: "/run/kata-containers/shared/containers/../../../etc/passwd".into(),
        file_mode: 0o100644,
        ..Default::default()
    };
    let exec = agent::ExecProcessRequest {
        container_id: cid.into(),
        exec_id: "e1".into(),
        process: MessageField::some(process(&["sh", "-c", "cat /etc/shadow"])),
        ..Default::default()
    };
    let read = agent::ReadStreamRequest {
        container_id: cid.into(),
        exec_id: cid.into(),
        len: 1024,
        ..Default::default()
    };
    let set_policy = agent::SetPolicyRequest {
        policy: "package agent_policy\ndefault ExecProcessRequest := true\n".into(),
        ..Default::default()
    };
    vec![
        Step {
            label: "Health.Check",
            service: "grpc.Health",
            method: "Check",
            payload: health::CheckRequest::new()
                .write_to_bytes()
                .unwrap_or_default(),
            show: |p| {
                let r = health::HealthCheckResponse::parse_from_bytes(p).unwrap_or_default();
                format!("status {:?}", r.status)
            },
        },
        Step::agent("CreateSandbox", "CreateSandbox", &sandbox),
        Step::agent("CreateContainer /pause", "CreateContainer", &create),
        Step::agent("StartContainer", "StartContainer", &start),
        Step::agent(
            "CopyFile .../shared/containers/…-resolv.conf",
            "CopyFile",
            &resolv,
        ),
        Step::agent(
            "CopyFile .../shared/containers/../../../etc/passwd",
            "CopyFile",
            &escape,
        ),
        Step::agent("ExecProcess sh -c 'cat /etc/shadow'", "ExecProcess", &exec),
        Step {
            show: |p| {
                let r = agent::ReadStreamResponse::parse_from_bytes(p).unwrap_or_default();
                format!(
                    "{} bytes of data (the agent sent 30; denied reads are blanked)",
                    r.data.len()
                )
            },
            ..Step::agent("ReadStdout", "ReadStdout", &read)
        },
        Step::agent("SetPolicy (allow exec)", "SetPolicy", &set_policy),
    ]
}

/// Runs the demo with `guard` (the policy named on the command line, or the embedded
/// default: [`crate::tools::serve_guard`]) and returns the transcript (one line per request).
pub async fn run_demo(guard: Guard) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let agent_sock = dir.path().join("kata-agent.sock");
    let warden_sock = dir.path().join("agent-warden.sock");
    let demo_agent = Arc::new(DemoAgent::default());
    let mut agent_server = start_demo_agent(&agent_sock, demo_agent.clone()).await?;

    let policy = guard.policy();
    let mut out = format!(
        "policy: {} (sha256 {})\n",
        policy.source_name(),
        policy.digest()
    );
    let guard = Arc::new(guard);
    let listener = Listener::bind(&Address::Unix(warden_sock.clone())).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let warden = tokio::spawn(serve::run(
        listener,
        Address::Unix(agent_sock.clone()),
        guard,
        async {
            let _ = stop_rx.await;
        },
    ));

    let client = ttrpc::r#async::Client::connect(&format!("unix://{}", warden_sock.display()))
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to agent-warden: {e}"))?;
    for step in session() {
        let req = ttrpc::proto::Request {
            timeout_nano: 5_000_000_000,
            ..envelope::request(step.service, step.method, step.payload)
        };
        let result = match client.request(req).await {
            Ok(r) => format!("answered  {}", (step.show)(&r.payload)),
            Err(ttrpc::Error::RpcStatus(s)) => format!("refused   {:?}: {}", s.code(), s.message),
            Err(e) => format!("failed    {e}"),
        };
        out.push_str(&format!("{:<44} {result}\n", step.label));
    }
    out.push_str(&format!(
        "requests that reached the agent: {}\n",
        demo_agent.seen.load(Ordering::SeqCst)
    ));
    // Hang up first, as the host would, so that agent-warden has nothing to drain.
    drop(client);
    let _ = stop_tx.send(());
    let _ = warden.await;
    let _ = agent_server.shutdown().await;
    Ok(out)
}
