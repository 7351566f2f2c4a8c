//! The attestation-agent register against a real ttrpc server (the `ttrpc` crate's async
//! server with stubs generated from protos/attestation-agent.proto) playing the CoCo
//! attestation-agent: what arrives for each extend, in order, and how a refusal or a missing
//! agent reads.

use std::sync::{Arc, Mutex};

use agent_warden::attestation::measure::aa::protocols::attestation_agent::{
    ExtendRuntimeMeasurementRequest, ExtendRuntimeMeasurementResponse,
};
use agent_warden::attestation::measure::aa::protocols::attestation_agent_ttrpc::{
    create_attestation_agent_service, AttestationAgentService,
};
use agent_warden::attestation::measure::{self, RegisterKind};

/// Records every request; refuses (PERMISSION_DENIED) once `refuse_after` were accepted.
struct PlayedAgent {
    seen: Mutex<Vec<ExtendRuntimeMeasurementRequest>>,
    refuse_after: usize,
}

#[async_trait::async_trait]
impl AttestationAgentService for PlayedAgent {
    async fn extend_runtime_measurement(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: ExtendRuntimeMeasurementRequest,
    ) -> ttrpc::Result<ExtendRuntimeMeasurementResponse> {
        let mut seen = self.seen.lock().unwrap();
        if seen.len() >= self.refuse_after {
            return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::PERMISSION_DENIED,
                "event log is full",
            )));
        }
        seen.push(req);
        Ok(ExtendRuntimeMeasurementResponse::default())
    }
}

fn start(
    rt: &tokio::runtime::Runtime,
    socket: &std::path::Path,
    agent: Arc<PlayedAgent>,
) -> ttrpc::r#async::Server {
    rt.block_on(async {
        let mut server = ttrpc::r#async::Server::new()
            .bind(&format!("unix://{}", socket.display()))
            .unwrap()
            .register_service(create_attestation_agent_service(agent));
        server.start().await.unwrap();
        server
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn each_extend_is_one_event_with_the_hash_in_order() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("attestation-agent.sock");
    let agent = Arc::new(PlayedAgent {
        seen: Mutex::new(Vec::new()),
        refuse_after: usize::MAX,
    });
    let _server = start(&rt, &socket, agent.clone());

    let spec = format!("aa:socket={},pcr=23", socket.display());
    let mut reg = measure::open(&spec).unwrap();
    assert_eq!(reg.kind(), RegisterKind::Aa);
    assert_eq!(reg.describe(), spec);
    assert_eq!(reg.read().unwrap(), None, "the agent offers no read");
    let hashes: Vec<[u8; 32]> = (1..=3u8).map(|i| [i; 32]).collect();
    for h in &hashes {
        reg.extend(h).unwrap();
    }
    let seen = agent.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    for (req, h) in seen.iter().zip(&hashes) {
        assert_eq!(req.Domain, "agent-warden");
        assert_eq!(req.Operation, "decision-log");
        assert_eq!(req.Content, agent_warden::attestation::to_hex(h));
        assert_eq!(req.RegisterIndex, Some(23));
    }
    // Without pcr= the agent's default register is used: no RegisterIndex on the wire.
    let mut default_reg = measure::open(&format!("aa:socket={}", socket.display())).unwrap();
    default_reg.extend(&[9u8; 32]).unwrap();
    assert_eq!(
        agent.seen.lock().unwrap().last().unwrap().RegisterIndex,
        None
    );
    // expected() has no model for the agent's register: it matches nothing.
    assert!(measure::expected(RegisterKind::Aa, &[0u8; 32], &hashes).is_empty());
}

#[test]
fn a_refusal_is_an_error_naming_the_register_and_the_status() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("aa.sock");
    let agent = Arc::new(PlayedAgent {
        seen: Mutex::new(Vec::new()),
        refuse_after: 1,
    });
    let _server = start(&rt, &socket, agent.clone());
    let spec = format!("aa:socket={}", socket.display());
    let mut reg = measure::open(&spec).unwrap();
    reg.extend(&[1u8; 32]).unwrap();
    let err = reg.extend(&[2u8; 32]).unwrap_err().to_string();
    assert!(err.contains(&spec), "{err}");
    assert!(err.contains("ExtendRuntimeMeasurement"), "{err}");
    assert!(err.contains("event log is full"), "{err}");
    assert_eq!(agent.seen.lock().unwrap().len(), 1);
}

#[test]
fn a_missing_agent_fails_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("aa:socket={}", dir.path().join("none.sock").display());
    let err = measure::open(&spec).err().unwrap().to_string();
    assert!(
        err.contains("cannot connect to the attestation-agent"),
        "{err}"
    );
}
