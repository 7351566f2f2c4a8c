//! The server: resolves what `serve` needs (configuration layers, the policy and
//! where it came from, the evidence check, the scratch disk), binds the listener, and
//! pairs every accepted host connection with a fresh connection to the agent. On
//! SIGTERM/SIGINT it stops accepting, drains, and tears the scratch disk down.

pub mod address;
pub mod audit;
pub mod judge;
pub mod limits;
pub mod relay;
pub mod sdnotify;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::attestation::{self, EvidenceSource};
use crate::config::{
    Config, SetPolicySetting, DEFAULT_AGENT, DEFAULT_LISTEN, DEFAULT_MAX_CONNECTIONS,
};
use crate::policy::sources::{self, Loaded, Origin};
use crate::policy::LoadOptions;
use crate::storage::{self, Report, SetupAt, StorageConfig, StorageError};
use crate::wire::input::InputShape;
use address::{Address, Listener};
use judge::{Guard, Hook, SetPolicyMode};

/// Everything `serve` needs besides the policy, resolved from the configuration layers.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub listen: Address,
    pub agent: Address,
    pub input_shape: InputShape,
    pub set_policy: SetPolicySetting,
    pub require_evidence: Option<EvidenceSource>,
    /// Capture file, and whether it keeps env values and payloads unmasked.
    pub capture: Option<(PathBuf, bool)>,
    /// Most host connections served at once.
    pub max_connections: usize,
    /// Most requests in flight per host connection.
    pub max_in_flight: usize,
    /// Time limit of one policy evaluation.
    pub eval_timeout: Duration,
    /// The scratch disk, when `[storage]` names a device.
    pub storage: Option<StorageConfig>,
    /// The decision log, when `[decision_log] file` is set.
    pub decision_log: Option<crate::decision_log::LogSettings>,
    /// The measurement register the decision log extends (`[decision_log] measure`).
    pub measure: Option<String>,
    /// A measured checkpoint record every this often (when records are unmeasured).
    pub checkpoint: Option<Duration>,
}

impl ServeSettings {
    /// Resolves and checks the settings of a (merged) configuration.
    pub fn from_config(cfg: &Config) -> anyhow::Result<ServeSettings> {
        let listen = cfg.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let agent = cfg.agent.as_deref().unwrap_or(DEFAULT_AGENT);
        let require_evidence = match &cfg.policy.require_evidence {
            Some(spec) => Some(
                spec.parse::<EvidenceSource>()
                    .map_err(|e| anyhow::anyhow!("require_evidence: {e}"))?,
            ),
            None => None,
        };
        let storage = match &cfg.storage {
            Some(section) => {
                let sc = section.resolve()?;
                if sc.device.is_some() {
                    sc.validate(true)
                        .map_err(|e| anyhow::anyhow!("invalid [storage]: {e}"))?;
                    Some(sc)
                } else {
                    None
                }
            }
            None => None,
        };
        if cfg.limits.max_connections == Some(0) || cfg.limits.max_in_flight == Some(0) {
            anyhow::bail!("[limits]: max_connections and max_in_flight must be at least 1");
        }
        if cfg.limits.eval_timeout_ms == Some(0) {
            anyhow::bail!("[limits]: eval_timeout_ms must be at least 1");
        }
        Ok(ServeSettings {
            listen: listen
                .parse::<Address>()
                .map_err(|e| anyhow::anyhow!("listen: {e}"))?,
            agent: agent
                .parse::<Address>()
                .map_err(|e| anyhow::anyhow!("agent: {e}"))?,
            input_shape: cfg.policy.shape(),
            set_policy: cfg.policy.set_policy.unwrap_or_default(),
            require_evidence,
            capture: cfg
                .audit
                .capture
                .clone()
                .map(|p| (p, cfg.audit.capture_unmasked.unwrap_or(false))),
            max_connections: cfg.max_connections(),
            max_in_flight: cfg.max_in_flight(),
            eval_timeout: cfg.eval_timeout(),
            storage,
            decision_log: cfg.decision_log.settings()?,
            measure: cfg.decision_log.measure.clone(),
            checkpoint: cfg
                .decision_log
                .checkpoint_ms
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
        })
    }
}

/// What `serve` prepared before listening: the settings, the policy and its origin.
pub struct Prepared {
    pub settings: ServeSettings,
    pub loaded: Loaded,
}

/// Loads the policy from the configured source and, when it came from initdata that
/// carries an `agent-warden.toml`, puts that configuration between the file and the
/// flags. Nothing is listened on or set up yet.
pub fn prepare(file: Config, flags: Config) -> anyhow::Result<Prepared> {
    let base = file.clone().overlay(flags.clone())?;
    let source = sources::read(&base.policy.sources())?;
    let cfg = match &source.initdata_config {
        Some(text) => {
            let layer = Config::parse(text, "from initdata (agent-warden.toml)")?;
            layer.check_initdata_layer()?;
            tracing::info!("configuration from initdata applied (flags still override it)");
            file.overlay(layer)?.overlay(flags)?
        }
        None => base,
    };
    let settings = ServeSettings::from_config(&cfg)?;
    // Compiled only now that the initdata layer is known: it may set the time limit.
    let options = LoadOptions {
        eval_timeout: settings.eval_timeout,
        deny_message: cfg.policy.deny_message.unwrap_or_default(),
        fast_path: cfg.policy.fast_path.unwrap_or(true),
        ..LoadOptions::default()
    };
    let loaded = source.load(options)?;
    tracing::info!(
        origin = %loaded.origin,
        policy_digest = loaded.policy.digest(),
        expected_evidence = %attestation::to_hex(&loaded.expected_digest()),
        "policy loaded"
    );
    Ok(Prepared { settings, loaded })
}

/// Compares the policy's expected digest with what the TEE reports; an error names
/// both values and refuses to serve.
pub fn check_evidence(src: &EvidenceSource, loaded: &Loaded) -> anyhow::Result<()> {
    let expected = loaded.expected_digest();
    attestation::check_evidence(src, &expected).map_err(|e| {
        anyhow::anyhow!("refusing to serve: the policy is not the one attestation measured: {e}")
    })?;
    tracing::info!(evidence = %src, digest = %attestation::to_hex(&expected), "evidence matches the policy digest");
    Ok(())
}

/// Builds the guard for a prepared policy: SetPolicy mode, endpoint-list answers,
/// capture, limits, and the scratch-disk teardown after DestroySandbox.
pub fn build_guard(
    settings: &ServeSettings,
    loaded: Loaded,
    teardown: Option<Hook>,
) -> anyhow::Result<Guard> {
    let set_policy = match (settings.set_policy, &loaded.origin) {
        (SetPolicySetting::Forbid, _) | (SetPolicySetting::Auto, Origin::Initdata { .. }) => {
            SetPolicyMode::Forbidden
        }
        _ => SetPolicyMode::PolicyDecides,
    };
    let endpoint_list = matches!(loaded.origin, Origin::EndpointList(_));
    let expected = loaded.expected_digest();
    let mut guard = Guard::new(loaded.policy, settings.input_shape)
        .with_set_policy(set_policy)
        .with_endpoint_list(endpoint_list)
        .with_max_in_flight(settings.max_in_flight);
    if let Some((path, unmasked)) = &settings.capture {
        let capture = crate::serve::audit::Capture::create(path, *unmasked)
            .map_err(|e| anyhow::anyhow!("cannot create capture file {}: {e}", path.display()))?;
        guard = guard.with_capture(capture);
    }
    if let Some(hook) = teardown {
        guard = guard.with_hook("DestroySandboxRequest", hook);
    }
    if let Some(log) = &settings.decision_log {
        let register = match &settings.measure {
            Some(spec) => Some(
                crate::attestation::measure::open(spec)
                    .map_err(|e| anyhow::anyhow!("decision log: {e}"))?,
            ),
            None => None,
        };
        let log = crate::decision_log::DecisionLog::open(
            log.clone(),
            guard.policy().digest(),
            &attestation::to_hex(&expected),
            register,
        )?;
        guard = guard.with_decision_log(Arc::new(log));
    }
    Ok(guard)
}

/// A storage operation (the real one, or a test double's).
pub type StorageOp = Arc<dyn Fn(&StorageConfig) -> Result<Report, StorageError> + Send + Sync>;

/// The hook run after the agent answered DestroySandbox successfully: tear the
/// scratch disk down (on a blocking thread) and log what was done.
pub fn teardown_hook(cfg: StorageConfig, teardown: StorageOp) -> Hook {
    Arc::new(move || match teardown(&cfg) {
        Ok(r) => {
            tracing::info!(report = %r.summary(), "scratch disk torn down after DestroySandbox")
        }
        Err(e) => tracing::error!(error = %e, "scratch disk teardown after DestroySandbox failed"),
    })
}

async fn storage_op(cfg: &StorageConfig, op: &StorageOp) -> Result<Report, StorageError> {
    let (cfg, op) = (cfg.clone(), op.clone());
    match tokio::task::spawn_blocking(move || op(&cfg)).await {
        Ok(r) => r,
        Err(e) => Err(StorageError::Config(format!("storage task failed: {e}"))),
    }
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

/// [`run_with`] with [`DEFAULT_MAX_CONNECTIONS`].
pub async fn run(
    listener: Listener,
    agent: Address,
    guard: Arc<Guard>,
    shutdown: impl Future<Output = ()>,
) {
    run_with(listener, agent, guard, shutdown, DEFAULT_MAX_CONNECTIONS).await
}

/// Accepts host connections on `listener` until `shutdown` completes; each one is
/// relayed to a new connection to `agent`. A connection beyond `max_connections` is
/// closed at once (logged at warn). After shutdown no new connection is accepted and
/// open ones get up to [`DRAIN`] to finish before they are dropped.
pub async fn run_with(
    listener: Listener,
    agent: Address,
    guard: Arc<Guard>,
    shutdown: impl Future<Output = ()>,
    max_connections: usize,
) {
    tokio::pin!(shutdown);
    let limiter = crate::serve::limits::ConnectionLimiter::new(max_connections);
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
        while conns.try_join_next().is_some() {}
        // Beyond the limit the connection is closed at once (refusals are logged,
        // at most once a second).
        let Some(permit) = limiter.try_acquire() else {
            drop(host);
            continue;
        };
        let guard = guard.clone();
        let agent = agent.clone();
        conns.spawn(async move {
            let _permit = permit;
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

/// `agent-warden serve` with the real storage operations. See [`serve_with`].
pub async fn serve(file: Config, flags: Config) -> anyhow::Result<()> {
    let setup: StorageOp = Arc::new(storage::setup);
    let teardown: StorageOp = Arc::new(storage::teardown);
    serve_with(file, flags, setup, teardown, shutdown_signal()).await
}

/// `agent-warden serve`: load and check the policy (and the evidence, if required),
/// set the scratch disk up (if configured for start-up), then listen — never without
/// a policy. After `shutdown`: drain, then tear the scratch disk down.
pub async fn serve_with(
    file: Config,
    flags: Config,
    setup: StorageOp,
    teardown: StorageOp,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Prepared { settings, loaded } = prepare(file, flags)?;
    if let Some(src) = &settings.require_evidence {
        check_evidence(src, &loaded)?;
    }
    let storage = settings.storage.clone();
    if let Some(sc) = &storage {
        if sc.setup_at == SetupAt::Startup {
            let r = storage_op(sc, &setup)
                .await
                .map_err(|e| anyhow::anyhow!("scratch disk setup failed: {e}"))?;
            tracing::info!(report = %r.summary(), seconds = r.total.as_secs_f64(), "scratch disk ready");
        }
    }
    let hook = storage
        .clone()
        .map(|sc| teardown_hook(sc, teardown.clone()));
    let started = build_guard(&settings, loaded, hook).map(Arc::new);
    let bound = match started {
        Ok(guard) => Listener::bind(&settings.listen)
            .await
            .map(|l| (l, guard))
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen)),
        Err(e) => Err(e),
    };
    let (listener, guard) = match bound {
        Ok(v) => v,
        Err(e) => {
            // Do not leave the disk set up behind a warden that never served.
            if let Some(sc) = &storage {
                if let Err(t) = storage_op(sc, &teardown).await {
                    tracing::error!(error = %t, "scratch disk teardown after a failed start failed");
                }
            }
            return Err(e);
        }
    };
    let checkpoints = match (settings.checkpoint, guard.decision_log()) {
        (Some(every), Some(log)) => Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                log.request_checkpoint();
            }
        })),
        _ => None,
    };
    let decision_log = guard.decision_log();
    tracing::info!(listen = %settings.listen, agent = %settings.agent, "agent-warden is serving");
    sdnotify::notify_logged("READY=1");
    run_with(
        listener,
        settings.agent.clone(),
        guard,
        shutdown,
        settings.max_connections,
    )
    .await;
    sdnotify::notify_logged("STOPPING=1");
    tracing::info!("shutting down");
    if let Some(task) = checkpoints {
        task.abort();
    }
    if let Some(log) = decision_log {
        // What was handed over is written before the process says it stopped; the
        // register's value then is logged, for comparing with `log verify --pcr`.
        if let Ok(Some(st)) = tokio::task::spawn_blocking(move || log.state()).await {
            let (register, value) = match &st.register {
                None => ("none".to_string(), "-".to_string()),
                Some((d, Ok(Some(v)))) => (d.clone(), v.clone()),
                Some((d, Ok(None))) => (d.clone(), "unreadable".to_string()),
                Some((d, Err(e))) => (d.clone(), format!("read failed: {e}")),
            };
            tracing::info!(records = st.records, head = %st.head, register = %register, register_value = %value, "decision log closed");
        }
    }
    if let Some(sc) = &storage {
        let r = storage_op(sc, &teardown)
            .await
            .map_err(|e| anyhow::anyhow!("scratch disk teardown at shutdown failed: {e}"))?;
        tracing::info!(report = %r.summary(), "scratch disk torn down at shutdown");
    }
    Ok(())
}

/// Completes on SIGTERM or SIGINT. The handlers are installed when this is called (not
/// when the future is first polled), so a signal that arrives while the policy loads or
/// the scratch disk is set up is not lost: serving then stops as soon as it starts.
/// Must be called inside the tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let streams = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match streams {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => {
                tracing::warn!("cannot install SIGTERM/SIGINT handlers; stop with SIGKILL");
                std::future::pending::<()>().await
            }
        }
    }
}
