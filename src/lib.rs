//! agent-warden: a policy-enforcing ttrpc interposer for the Kata Containers guest agent.
//!
//! The tree follows a request's path, and dependencies run one way (`serve` →
//! `policy`, `wire`; `policy` reads only the method table's request types of `wire`;
//! `tools` → `serve`, `policy`, `wire`; docs/ARCHITECTURE.md lists them all):
//! - [`wire`]: what the host sends. A ttrpc [`wire::frame`] is opened by
//!   [`wire::envelope`], named by [`wire::methods`], and decoded by [`wire::input`] into
//!   the JSON that kata-agent gives its policy engine.
//! - [`policy`]: that JSON decided by a Rego policy with regorus, and where policies
//!   come from.
//! - [`serve`]: start-up, the accept loop, the per-request judgement and the socket
//!   relay that forwards allowed frames byte-for-byte.
//! - [`attestation`] binds the policy to the measured initdata; [`storage`] owns the
//!   encrypted scratch disk; [`tools`] are the commands besides `serve`: the policy
//!   tools, the tenant's `initdata pack`, `storage` and the demo.
//!
//! [`config`] and [`cli`] turn files and flags into settings. See docs/ARCHITECTURE.md.

// The library's lints, in one place. Host data, files and policy text reach nearly all
// of it, so nothing may unwrap, expect, index or panic; clippy.toml allows them in
// tests. They are set here rather than in Cargo.toml's [lints], which would also
// hold benches, examples and integration-test helpers, where a panic is the right
// way to fail. CI runs `cargo clippy --all-targets -- -D warnings`.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub mod attestation;
pub mod cli;
pub mod config;
pub mod decision_log;
pub mod logging;
pub mod policy;
pub mod serve;
pub mod storage;
pub mod tools;
pub mod wire;
