//! Generated protobuf messages and ttrpc stubs for kata-agent's protocol (protos/).
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
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/protocols/agent.rs"));
}
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/protocols/agent_ttrpc.rs"));
}
pub mod oci {
    include!(concat!(env!("OUT_DIR"), "/protocols/oci.rs"));
}
pub mod types {
    include!(concat!(env!("OUT_DIR"), "/protocols/types.rs"));
}
pub mod csi {
    include!(concat!(env!("OUT_DIR"), "/protocols/csi.rs"));
}
pub mod health {
    include!(concat!(env!("OUT_DIR"), "/protocols/health.rs"));
}
pub mod health_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/protocols/health_ttrpc.rs"));
}
pub mod empty {
    pub use protobuf::well_known_types::empty::Empty;
}
