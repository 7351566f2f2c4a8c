//! Logging setup: human-readable or JSON lines on stderr (filter from `--log` or
//! RUST_LOG). Each decision is also a short event with target
//! `agent_warden::decision` here; the tamper-evident decision log file is
//! [`crate::decision_log`]'s.

use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The tracing target of decision events.
pub const DECISION_TARGET: &str = "agent_warden::decision";

/// Installs the global subscriber (a second call is a no-op). `json` selects JSON
/// lines on stderr.
pub fn init(filter: &str, json: bool) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let stderr = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    };
    let _ = tracing_subscriber::registry().with(stderr).try_init();
    Ok(())
}
