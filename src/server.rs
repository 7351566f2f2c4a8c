//! The server: loads what `serve` needs, binds the listener, and pairs every
//! accepted host connection with a fresh connection to the agent.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::address::{self, Address, Listener};
use crate::codec::InputShape;
use crate::policy::{Policy, RegoVersion};
use crate::relay::{self, Guard};

/// The embedded default policy (policies/coco-default.rego).
pub const DEFAULT_POLICY: &str = include_str!("../policies/coco-default.rego");
/// The embedded allow-all policy (policies/allow-all.rego).
pub const ALLOW_ALL_POLICY: &str = include_str!("../policies/allow-all.rego");

/// Everything `serve` needs, resolved from configuration and flags.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub listen: Address,
    pub agent: Address,
    pub policy_file: Option<PathBuf>,
    pub rego: RegoVersion,
    pub input_shape: InputShape,
}

/// Loads the configured policy (or the embedded default) and checks it.
pub fn load_policy(file: Option<&PathBuf>, rego: RegoVersion) -> anyhow::Result<Policy> {
    let policy = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read policy {}: {e}", path.display()))?;
            Policy::load(&path.display().to_string(), &text, rego)?
        }
        None => Policy::load(
            "embedded coco-default.rego",
            DEFAULT_POLICY,
            RegoVersion::V0,
        )?,
    };
    tracing::info!(
        source = policy.source_name(),
        digest = policy.digest(),
        "policy loaded"
    );
    Ok(policy)
}

/// How many times, and how far apart, a new host connection tries to reach the agent.
const AGENT_CONNECT_TRIES: u32 = 10;
const AGENT_CONNECT_BACKOFF: Duration = Duration::from_millis(50);

async fn connect_agent(agent: &Address) -> std::io::Result<address::Conn> {
    let mut delay = AGENT_CONNECT_BACKOFF;
    let mut tries = 1;
    loop {
        match address::connect(agent).await {
            Ok(c) => return Ok(c),
            Err(e) if tries >= AGENT_CONNECT_TRIES => return Err(e),
            Err(e) => {
                tracing::warn!(agent = %agent, error = %e, attempt = tries, "agent not reachable yet, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
                tries += 1;
            }
        }
    }
}

/// How long, after a shutdown signal, connections may take to finish their requests.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Accepts host connections on `listener` until `shutdown` completes; each one is
/// relayed to a new connection to `agent`. After shutdown no new connection is
/// accepted and open ones get up to [`DRAIN`] to finish before they are dropped.
pub async fn run(
    listener: Listener,
    agent: Address,
    guard: Arc<Guard>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let host = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let guard = guard.clone();
        let agent = agent.clone();
        conns.spawn(async move {
            match connect_agent(&agent).await {
                Ok(a) => relay::relay(guard, host, a).await,
                Err(e) => tracing::error!(agent = %agent, error = %e, "cannot reach the agent; closing the host connection"),
            }
        });
    }
    drop(listener);
    if !conns.is_empty() {
        tracing::info!(
            connections = conns.len(),
            "waiting for open connections to finish"
        );
        if tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::warn!(
                connections = conns.len(),
                "drain deadline passed; dropping open connections"
            );
            conns.abort_all();
        }
    }
}

/// `agent-warden serve`: load and check the policy, then listen (never without a policy).
pub async fn serve(s: ServeSettings) -> anyhow::Result<()> {
    let policy = load_policy(s.policy_file.as_ref(), s.rego)?;
    let guard = Arc::new(Guard::new(policy, s.input_shape));
    let listener = Listener::bind(&s.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", s.listen))?;
    tracing::info!(listen = %s.listen, agent = %s.agent, "agent-warden is serving");
    run(listener, s.agent, guard, shutdown_signal()).await;
    tracing::info!("shutting down");
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
