//! Logging setup: human-readable or JSON lines on stderr (filter from `--log` or
//! RUST_LOG), and optionally the decision log — one JSON line per policy decision
//! (tracing target `agent_warden::decision`) — in a file of its own.

use std::path::Path;

use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The tracing target of decision events.
pub const DECISION_TARGET: &str = "agent_warden::decision";

/// Installs the global subscriber (a second call is a no-op). `json` selects JSON
/// lines on stderr; `decision_log` adds a file that receives only decision events,
/// as JSON lines.
pub fn init(filter: &str, json: bool, decision_log: Option<&Path>) -> anyhow::Result<()> {
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
    let decisions = match decision_log {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("cannot open decision log {}: {e}", path.display()))?;
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::sync::Mutex::new(file))
                    .with_filter(Targets::new().with_target(DECISION_TARGET, tracing::Level::INFO)),
            )
        }
        None => None,
    };
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(decisions)
        .try_init();
    Ok(())
}
