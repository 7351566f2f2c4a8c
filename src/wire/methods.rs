//! The method table: every RPC agent-warden knows, derived from the service
//! definitions in protos/ (grpc.AgentService and grpc.Health).
//!
//! One row per RPC: fully qualified service name, method name, the request message
//! (its descriptor decodes the payload; its type name is the policy entry point, as in
//! kata-agent: ReadStdout and ReadStderr both query `ReadStreamRequest`), the
//! response type, and how the relay treats it. The decoder, the policy query and
//! `agent-warden endpoints` all read this table; nothing else lists methods.

use std::collections::HashMap;
use std::sync::OnceLock;

use protobuf::reflect::{FileDescriptor, MessageDescriptor};

use crate::wire::protocols::{agent, health};

/// How the relay treats a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// Decide with the policy; forward if allowed, answer PERMISSION_DENIED if not.
    Policy,
    /// Decide with the policy, but always forward: when denied, the agent's answer is
    /// returned with empty `data` so that container log pipes keep draining
    /// (kata-agent does the same for ReadStdout/ReadStderr).
    PolicyBlankDataOnDeny,
    /// Forward without a policy decision (grpc.Health, as in kata).
    Passthrough,
    /// Decide with the policy, and if allowed replace the policy: agent-warden owns
    /// the policy, so SetPolicy is answered here and never forwarded.
    SetPolicy,
}

/// One RPC.
#[derive(Debug, Clone)]
pub struct Method {
    /// Fully qualified service name as it appears on the wire, e.g. `grpc.AgentService`.
    pub service: String,
    /// Method name, e.g. `CreateContainer`.
    pub name: String,
    /// The request message type name, which is also the policy rule name.
    pub request_type: String,
    /// The response message type name (informational).
    pub response_type: String,
    /// Descriptor used to decode the request payload.
    pub request: MessageDescriptor,
    /// What the relay does with it.
    pub handling: Handling,
}

/// All known methods, indexed by (service, method).
#[derive(Debug)]
pub struct MethodTable {
    methods: Vec<Method>,
    index: HashMap<String, HashMap<String, usize>>,
}

/// Methods whose handling differs from the service default.
const SPECIAL: &[(&str, Handling)] = &[
    ("ReadStdout", Handling::PolicyBlankDataOnDeny),
    ("ReadStderr", Handling::PolicyBlankDataOnDeny),
    ("SetPolicy", Handling::SetPolicy),
];

impl MethodTable {
    fn build(files: &[(&FileDescriptor, Handling)]) -> MethodTable {
        let mut methods = Vec::new();
        let mut index: HashMap<String, HashMap<String, usize>> = HashMap::new();
        for (file, default) in files {
            for service in file.services() {
                let service_name = format!("{}.{}", file.package(), service.proto().name());
                for m in service.methods() {
                    let name = m.proto().name().to_string();
                    let handling = SPECIAL
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, h)| *h)
                        .unwrap_or(*default);
                    let request = m.input_type();
                    index
                        .entry(service_name.clone())
                        .or_default()
                        .insert(name.clone(), methods.len());
                    methods.push(Method {
                        service: service_name.clone(),
                        name,
                        request_type: request.name().to_string(),
                        response_type: m.output_type().full_name().to_string(),
                        request,
                        handling,
                    });
                }
            }
        }
        MethodTable { methods, index }
    }

    /// Looks up a method by its wire service and method names.
    pub fn lookup(&self, service: &str, method: &str) -> Option<&Method> {
        let i = *self.index.get(service)?.get(method)?;
        self.methods.get(i)
    }

    /// All methods, in protos/ order.
    pub fn all(&self) -> &[Method] {
        &self.methods
    }

    /// The distinct request types that go through the policy (the policy's rule names).
    pub fn policy_request_types(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .methods
            .iter()
            .filter(|m| m.handling != Handling::Passthrough)
            .map(|m| m.request_type.as_str())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The (first) method whose request is `request_type`.
    pub fn by_request_type(&self, request_type: &str) -> Option<&Method> {
        self.methods.iter().find(|m| m.request_type == request_type)
    }

    /// The request message descriptor for a policy request type name.
    pub fn request_descriptor(&self, request_type: &str) -> Option<&MessageDescriptor> {
        self.by_request_type(request_type).map(|m| &m.request)
    }
}

/// The table of this build's protocol.
pub fn table() -> &'static MethodTable {
    static TABLE: OnceLock<MethodTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        MethodTable::build(&[
            (agent::file_descriptor(), Handling::Policy),
            (health::file_descriptor(), Handling::Passthrough),
        ])
    })
}

/// The `agent-warden endpoints` listing: one line per RPC.
pub fn listing() -> String {
    let mut out = String::new();
    for m in table().all() {
        let how = match m.handling {
            Handling::Policy => "policy",
            Handling::PolicyBlankDataOnDeny => "policy (deny blanks data)",
            Handling::Passthrough => "no policy",
            Handling::SetPolicy => "policy, answered by agent-warden",
        };
        out.push_str(&format!(
            "{}/{}\t{}\t{}\n",
            m.service, m.name, m.request_type, how
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_all_42_agent_rpcs_and_2_health_rpcs() {
        let t = table();
        let agent = t
            .all()
            .iter()
            .filter(|m| m.service == "grpc.AgentService")
            .count();
        let health = t
            .all()
            .iter()
            .filter(|m| m.service == "grpc.Health")
            .count();
        assert_eq!((agent, health), (42, 2));
    }

    #[test]
    fn policy_entry_point_is_the_request_message_type() {
        let t = table();
        let cases = [
            ("ReadStdout", "ReadStreamRequest"),
            ("ReadStderr", "ReadStreamRequest"),
            ("WriteStdin", "WriteStreamRequest"),
            ("GetGuestDetails", "GuestDetailsRequest"),
            ("GetVolumeStats", "VolumeStatsRequest"),
            ("MemAgentMemcgSet", "MemAgentMemcgConfig"),
            ("MemAgentCompactSet", "MemAgentCompactConfig"),
            ("CreateContainer", "CreateContainerRequest"),
        ];
        for (method, ty) in cases {
            assert_eq!(
                t.lookup("grpc.AgentService", method).unwrap().request_type,
                ty,
                "{method}"
            );
        }
    }

    #[test]
    fn handling_health_passthrough_and_read_stream_blanking() {
        let t = table();
        assert_eq!(
            t.lookup("grpc.Health", "Check").unwrap().handling,
            Handling::Passthrough
        );
        assert_eq!(
            t.lookup("grpc.Health", "Version").unwrap().handling,
            Handling::Passthrough
        );
        assert_eq!(
            t.lookup("grpc.AgentService", "ReadStderr")
                .unwrap()
                .handling,
            Handling::PolicyBlankDataOnDeny
        );
        assert_eq!(
            t.lookup("grpc.AgentService", "ExecProcess")
                .unwrap()
                .handling,
            Handling::Policy
        );
        assert!(t.lookup("grpc.AgentService", "Nope").is_none());
        assert!(t.lookup("grpc.Other", "CreateContainer").is_none());
    }

    #[test]
    fn listing_has_one_line_per_rpc() {
        assert_eq!(listing().lines().count(), 44);
        assert!(listing().contains(
            "grpc.AgentService/ReadStdout\tReadStreamRequest\tpolicy (deny blanks data)"
        ));
    }
}
