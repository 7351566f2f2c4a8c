//! Command-line interface: the clap definitions and the dispatch to library code.
//! `main.rs` only calls [`run`]; every subcommand's behaviour lives in its module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{AuditSection, Config, LimitsSection, PolicySection, SetPolicySetting};
use crate::policy::RegoVersion;
use crate::wire::input::InputShape;

/// agent-warden: guards the Kata Containers guest agent with a Rego policy.
#[derive(Debug, Parser)]
#[command(name = "agent-warden", version, about)]
pub struct Cli {
    /// Log filter (tracing env-filter syntax) [default: info; warn for demo]. RUST_LOG overrides it.
    #[arg(long, global = true)]
    pub log: Option<String>,
    /// Log lines on stderr as JSON.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// Also write one JSON line per policy decision to this file.
    #[arg(long, global = true)]
    pub decision_log: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Listen for the host and relay policy-checked requests to kata-agent.
    Serve(ServeArgs),
    /// List every RPC agent-warden knows, with its policy rule (request type).
    Endpoints,
    /// Run a demo: a built-in agent behind agent-warden, and a scripted host session.
    Demo(DemoArgs),
    // Subcommand variants are added below by each area.
    /// Policy tools: check, eval, test, replay, hash.
    Policy(crate::tools::PolicyArgs),
    /// Encrypted scratch disk: setup, teardown, status
    Storage(crate::storage::StorageArgs),
    /// The tenant's initdata: pack a policy into the pod annotation, TEE digests and disk image.
    Initdata(crate::tenant::InitdataArgs),
}

/// Flags of `agent-warden serve` (each overrides the configuration file and the
/// configuration carried in initdata).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML; see src/config.rs for every key).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where the host connects [default: vsock://-1:1024].
    #[arg(long)]
    pub listen: Option<String>,
    /// Where kata-agent listens [default: unix:///run/kata-agent.sock].
    #[arg(long)]
    pub agent: Option<String>,
    /// Initdata document holding the policy (TOML, gzip, or the block-device image).
    #[arg(long, value_name = "FILE")]
    pub initdata: Option<PathBuf>,
    /// Look for an initdata block device (vd*, sd*) under DIR.
    #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = "/dev")]
    pub initdata_scan: Option<PathBuf>,
    /// Policy file (Rego, package agent_policy) [default: embedded coco-default].
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Legacy endpoint list (TOML `[endpoints] allowed = [...]`) instead of a policy.
    #[arg(long, value_name = "FILE")]
    pub endpoints: Option<PathBuf>,
    /// Rego version of the policy [default: v0, as kata-agent].
    #[arg(long, value_enum)]
    pub rego: Option<RegoVersion>,
    /// Policy input shape: current kata-agent, or an older kata-agent's (legacy, legacy-stream-ports).
    #[arg(long, value_enum)]
    pub input_shape: Option<InputShape>,
    /// Whether SetPolicy may replace the policy [default: auto = forbid for initdata policies].
    #[arg(long, value_enum)]
    pub set_policy: Option<SetPolicySetting>,
    /// Refuse to serve unless the TEE reports the policy's digest: snp[:TSM_ROOT],
    /// snp-report:DIR, tdx[:DEVICE], tdx-sysfs[:PATH], tdx-quote[:TSM_ROOT], file:PATH.
    #[arg(long, value_name = "SOURCE")]
    pub require_evidence: Option<String>,
    /// Record every decided input to FILE (JSON lines, for `policy replay`).
    #[arg(long, value_name = "FILE")]
    pub capture: Option<PathBuf>,
    /// Keep env values and byte payloads in the capture (masked by default).
    #[arg(long)]
    pub capture_unmasked: bool,
    /// Most host connections served at once.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most requests in flight per host connection.
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// Time limit of one policy evaluation, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub eval_timeout_ms: Option<u64>,
    /// Scratch disk device (sets [storage] device): a path or MAJ:MIN.
    #[arg(long, value_name = "PATH|MAJ:MIN")]
    pub storage_device: Option<String>,
}

/// Flags of `agent-warden demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Policy file to demo instead of the embedded default.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Rego version of --policy.
    #[arg(long, value_enum, default_value = "v0")]
    pub rego: RegoVersion,
}

impl ServeArgs {
    /// The configuration file (or an empty layer) and the flags as a layer of their own.
    pub fn layers(&self) -> anyhow::Result<(Config, Config)> {
        let file = match &self.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        let storage = self.storage_device.as_ref().map(|d| {
            let mut t = toml::Table::new();
            t.insert("device".into(), toml::Value::String(d.clone()));
            t
        });
        let flags = Config {
            listen: self.listen.clone(),
            agent: self.agent.clone(),
            policy: PolicySection {
                initdata: self.initdata.clone(),
                initdata_scan: self.initdata_scan.clone(),
                file: self.policy.clone(),
                endpoints: self.endpoints.clone(),
                rego: self.rego,
                input_shape: self.input_shape,
                set_policy: self.set_policy,
                require_evidence: self.require_evidence.clone(),
            },
            audit: AuditSection {
                capture: self.capture.clone(),
                capture_unmasked: self.capture_unmasked.then_some(true),
            },
            limits: LimitsSection {
                max_connections: self.max_connections,
                max_in_flight: self.max_in_flight,
                eval_timeout_ms: self.eval_timeout_ms,
            },
            storage,
        };
        Ok((file, flags))
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}

/// Parses the process arguments, runs the subcommand and returns the exit code.
pub fn run() -> i32 {
    let cli = Cli::parse();
    let default_log = if matches!(cli.command, Command::Demo(_) | Command::Initdata(_)) {
        "warn"
    } else {
        "info"
    };
    if let Err(e) = crate::logging::init(
        cli.log.as_deref().unwrap_or(default_log),
        cli.log_json,
        cli.decision_log.as_deref(),
    ) {
        eprintln!("agent-warden: error: {e:#}");
        return 1;
    }
    let result: anyhow::Result<i32> = match cli.command {
        Command::Serve(args) => args
            .layers()
            .and_then(|(file, flags)| runtime()?.block_on(crate::serve::serve(file, flags)))
            .map(|_| 0),
        Command::Endpoints => {
            print!("{}", crate::wire::methods::listing());
            Ok(0)
        }
        Command::Demo(args) => runtime().and_then(|rt| {
            rt.block_on(async {
                let policy = match &args.policy {
                    Some(p) => Some(crate::serve::load_policy(Some(p), args.rego)?),
                    None => None,
                };
                print!("{}", crate::tools::demo::run_demo(policy).await?);
                Ok(0)
            })
        }),
        // Dispatch arms are added below by each area.
        Command::Policy(args) => crate::tools::run_cli(args),
        Command::Storage(args) => crate::storage::run_cli(args),
        Command::Initdata(args) => crate::tenant::run_cli(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agent-warden: error: {e:#}");
            1
        }
    }
}
