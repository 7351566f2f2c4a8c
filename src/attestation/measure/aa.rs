//! The CoCo attestation-agent's runtime-measurement API as a measurement register: each chain
//! hash is sent as ttrpc `attestation_agent.AttestationAgentService/ExtendRuntimeMeasurement`
//! (protos/attestation-agent.proto: Domain = 1, Operation = 2, Content = 3, optional
//! RegisterIndex = 4) on the agent's unix socket, default
//! [`DEFAULT_SOCKET`]. The attestation-agent appends the event
//! `agent-warden decision-log <hex chain hash>` to its event log (AAEL) and extends that
//! entry's digest, with its configured hash, into the register it maps the PCR index to (a
//! vTPM PCR, or an RTMR on TDX; its default index is 17).
//!
//! The register's value therefore depends on the attestation-agent's configuration, and it
//! offers no call to read it: [`Register::read`] answers `None`, and
//! [`super::expected`] has no model for this kind (it answers an empty value, which matches
//! nothing). A verifier checks the agent's event log, as the CoCo attestation service does,
//! and finds these entries in it in order. Tested against a ttrpc server playing the
//! attestation-agent (tests/measure_aa.rs), not against the real one.

use super::{MeasureError, Params, Register, RegisterKind};
use std::time::Duration;

/// The attestation-agent's ttrpc socket in CoCo guests.
pub const DEFAULT_SOCKET: &str =
    "/run/confidential-containers/attestation-agent/attestation-agent.sock";
/// The event's Domain (no white space, per the AAEL format).
pub const DOMAIN: &str = "agent-warden";
/// The event's Operation.
pub const OPERATION: &str = "decision-log";
/// The ttrpc service and method.
pub const SERVICE: &str = "attestation_agent.AttestationAgentService";
pub const METHOD: &str = "ExtendRuntimeMeasurement";
/// How long one extend may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Generated messages and ttrpc stubs for protos/attestation-agent.proto (the server side is
/// what tests use to play the attestation-agent).
pub mod protocols {
    #![allow(
        clippy::all,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic,
        missing_docs,
        unused_qualifications,
        non_camel_case_types,
        dead_code,
        unused_imports,
        unused_attributes,
        unknown_lints,
        non_upper_case_globals,
        trivial_casts,
        unused_results,
        unused_mut,
        non_snake_case
    )]
    pub mod attestation_agent {
        include!(concat!(env!("OUT_DIR"), "/protocols/attestation_agent.rs"));
    }
    pub mod attestation_agent_ttrpc {
        include!(concat!(
            env!("OUT_DIR"),
            "/protocols/attestation_agent_ttrpc.rs"
        ));
    }
}

use protocols::attestation_agent::{
    ExtendRuntimeMeasurementRequest, ExtendRuntimeMeasurementResponse,
};

/// A connection to the attestation-agent.
pub struct AttestationAgent {
    socket: String,
    pcr: Option<u64>,
    client: ttrpc::Client,
}

impl AttestationAgent {
    pub(crate) fn from_params(spec: &str, params: &Params<'_>) -> Result<Self, MeasureError> {
        params.only(&["socket", "pcr"])?;
        let pcr = match params.get("pcr") {
            None => None,
            Some(_) => Some(u64::from(params.index("pcr", super::tpm::MAX_PCR, 0)?)),
        };
        let socket = params.get("socket").unwrap_or(DEFAULT_SOCKET);
        if socket.is_empty() {
            return Err(super::spec_error(spec, "socket= is empty"));
        }
        Self::connect(socket, pcr)
    }

    /// Connects to the attestation-agent on `socket` (a path); `pcr` is the RegisterIndex to
    /// send, or `None` for the agent's default.
    pub fn connect(socket: &str, pcr: Option<u64>) -> Result<Self, MeasureError> {
        let client = ttrpc::Client::connect(&format!("unix://{socket}")).map_err(|e| {
            MeasureError::Device {
                register: describe(socket, pcr),
                message: format!("cannot connect to the attestation-agent: {e}"),
            }
        })?;
        Ok(AttestationAgent {
            socket: socket.to_string(),
            pcr,
            client,
        })
    }
}

fn describe(socket: &str, pcr: Option<u64>) -> String {
    let mut s = "aa:".to_string();
    if socket != DEFAULT_SOCKET {
        s.push_str(&format!("socket={socket}"));
    }
    if let Some(p) = pcr {
        if s.len() > 3 {
            s.push(',');
        }
        s.push_str(&format!("pcr={p}"));
    }
    s
}

/// The request agent-warden sends for one chain hash.
pub fn request_for(chain_hash: &[u8; 32], pcr: Option<u64>) -> ExtendRuntimeMeasurementRequest {
    ExtendRuntimeMeasurementRequest {
        Domain: DOMAIN.into(),
        Operation: OPERATION.into(),
        Content: crate::attestation::to_hex(chain_hash),
        RegisterIndex: pcr,
        ..Default::default()
    }
}

impl Register for AttestationAgent {
    fn describe(&self) -> String {
        describe(&self.socket, self.pcr)
    }

    fn kind(&self) -> RegisterKind {
        RegisterKind::Aa
    }

    /// The attestation-agent has no call that reads a register.
    fn read(&mut self) -> Result<Option<Vec<u8>>, MeasureError> {
        Ok(None)
    }

    fn extend(&mut self, chain_hash: &[u8; 32]) -> Result<(), MeasureError> {
        use protobuf::Message;
        let fail = |message: String| MeasureError::Device {
            register: self.describe(),
            message,
        };
        let payload = request_for(chain_hash, self.pcr)
            .write_to_bytes()
            .map_err(|e| fail(format!("cannot encode the request: {e}")))?;
        let req = ttrpc::Request {
            service: SERVICE.into(),
            method: METHOD.into(),
            timeout_nano: TIMEOUT.as_nanos() as i64,
            payload,
            ..Default::default()
        };
        let resp = self.client.request(req).map_err(|e| {
            fail(format!(
                "{METHOD} failed (the chain hash is not measured): {e}"
            ))
        })?;
        ExtendRuntimeMeasurementResponse::parse_from_bytes(&resp.payload)
            .map_err(|e| fail(format!("{METHOD}: undecodable response: {e}")))?;
        Ok(())
    }
}
