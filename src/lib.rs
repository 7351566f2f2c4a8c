//! agent-warden: a policy-enforcing ttrpc interposer for the Kata Containers guest agent.
//!
//! Data flows one way: `server` accepts a host connection and pairs it with an agent
//! connection; `relay` moves `frame::Frame`s between them; each request frame is opened
//! by `envelope`, looked up in `methods`, decoded to kata's policy input by `codec`,
//! decided by `policy`, and either forwarded byte-for-byte or answered with an error.
//! `storage` owns the encrypted scratch disk. See docs/ARCHITECTURE.md.

pub mod address;
pub mod attestation;
pub mod audit;
pub mod cli;
pub mod codec;
pub(crate) mod compiled;
pub mod config;
pub(crate) mod constant;
pub mod demo;
pub mod envelope;
pub mod frame;
pub mod limits;
pub mod logging;
pub mod methods;
pub mod pathext;
pub mod policy;
pub mod protocols;
pub mod relay;
pub mod sdnotify;
pub mod server;
pub mod sources;
pub mod storage;
pub mod tenant;
pub mod tools;
