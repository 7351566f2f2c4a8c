//! `agent-warden demo`: the newcomer's first run.
//!
//! Starts a small built-in demo agent (a real ttrpc server speaking AgentService)
//! and agent-warden in front of it, both on temporary unix sockets, then plays a
//! short scripted session as the host would (a real ttrpc client) and prints each
//! request with the answer it got. Nothing here is used by `serve`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use protobuf::MessageField;
use ttrpc::r#async::{Service, TtrpcContext};

use crate::serve;
use crate::serve::address::{Address, Listener};
use crate::serve::judge::Guard;
use crate::wire::protocols::{agent, agent_ttrpc, health, health_ttrpc, oci};

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

fn outcome<T>(r: ttrpc::Result<T>, show: impl Fn(T) -> String) -> String {
    match r {
        Ok(v) => format!("answered  {}", show(v)),
        Err(ttrpc::Error::RpcStatus(s)) => format!("refused   {:?}: {}", s.code(), s.message),
        Err(e) => format!("failed    {e}"),
    }
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
    let agent = agent_ttrpc::AgentServiceClient::new(client.clone());
    let health = health_ttrpc::HealthClient::new(client);
    let ctx = || ttrpc::context::with_timeout(5_000_000_000);
    let cid = "c0ffee".to_string();
    let shared = format!("/run/kata-containers/shared/containers/{cid}-resolv.conf");
    let mut line = |what: &str, result: String| out.push_str(&format!("{what:<44} {result}\n"));

    line(
        "Health.Check",
        outcome(
            health.check(ctx(), &health::CheckRequest::new()).await,
            |r| format!("status {:?}", r.status),
        ),
    );
    let req = agent::CreateSandboxRequest {
        hostname: "demo".into(),
        sandbox_id: "demo-sandbox".into(),
        ..Default::default()
    };
    line(
        "CreateSandbox",
        outcome(agent.create_sandbox(ctx(), &req).await, |_| String::new()),
    );
    let spec = oci::Spec {
        Process: MessageField::some(oci::Process {
            Args: vec!["/pause".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let req = agent::CreateContainerRequest {
        container_id: cid.clone(),
        OCI: MessageField::some(spec),
        ..Default::default()
    };
    line(
        "CreateContainer /pause",
        outcome(agent.create_container(ctx(), &req).await, |_| String::new()),
    );
    let req = agent::StartContainerRequest {
        container_id: cid.clone(),
        ..Default::default()
    };
    line(
        "StartContainer",
        outcome(agent.start_container(ctx(), &req).await, |_| String::new()),
    );
    let req = agent::CopyFileRequest {
        path: shared,
        file_mode: 0o100644,
        data: b"nameserver 10.0.0.10\n".to_vec(),
        file_size: 21,
        ..Default::default()
    };
    line(
        "CopyFile .../shared/containers/…-resolv.conf",
        outcome(agent.copy_file(ctx(), &req).await, |_| String::new()),
    );
    let req = agent::CopyFileRequest {
        path: "/run/kata-containers/shared/containers/../../../etc/passwd".into(),
        file_mode: 0o100644,
        ..Default::default()
    };
    line(
        "CopyFile .../shared/containers/../../../etc/passwd",
        outcome(agent.copy_file(ctx(), &req).await, |_| String::new()),
    );
    let process = oci::Process {
        Args: vec!["sh".into(), "-c".into(), "cat /etc/shadow".into()],
        ..Default::default()
    };
    let req = agent::ExecProcessRequest {
        container_id: cid.clone(),
        exec_id: "e1".into(),
        process: MessageField::some(process),
        ..Default::default()
    };
    line(
        "ExecProcess sh -c 'cat /etc/shadow'",
        outcome(agent.exec_process(ctx(), &req).await, |_| String::new()),
    );
    let req = agent::ReadStreamRequest {
        container_id: cid.clone(),
        exec_id: cid.clone(),
        len: 1024,
        ..Default::default()
    };
    line(
        "ReadStdout",
        outcome(agent.read_stdout(ctx(), &req).await, |r| {
            format!(
                "{} bytes of data (the agent sent 30; denied reads are blanked)",
                r.data.len()
            )
        }),
    );
    let req = agent::SetPolicyRequest {
        policy: "package agent_policy\ndefault ExecProcessRequest := true\n".into(),
        ..Default::default()
    };
    line(
        "SetPolicy (allow exec)",
        outcome(agent.set_policy(ctx(), &req).await, |_| String::new()),
    );

    out.push_str(&format!(
        "requests that reached the agent: {}\n",
        demo_agent.seen.load(Ordering::SeqCst)
    ));
    // Hang up first, as the host would, so that agent-warden has nothing to drain.
    drop(agent);
    drop(health);
    let _ = stop_tx.send(());
    let _ = warden.await;
    let _ = agent_server.shutdown().await;
    Ok(out)
}
