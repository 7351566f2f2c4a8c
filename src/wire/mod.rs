//! The wire: everything about what the host sends, up to the policy input.
//!
//! [`frame`] reads and writes ttrpc frames; [`envelope`] opens a request frame's
//! ttrpc `Request` (service, method, payload) and builds error answers; [`methods`] is
//! the table of AgentService methods and how each is handled; [`input`] decodes the
//! protobuf payload into the JSON that kata-agent gives its policy engine, and
//! [`encode`] is its inverse (for tools, tests and benches). [`protocols`] holds the
//! generated kata-agent protobuf types.

pub mod encode;
pub mod envelope;
pub mod frame;
pub mod input;
pub mod methods;
pub mod protocols;
