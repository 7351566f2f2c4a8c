//! Command-line interface: the clap definitions and the dispatch to library code.
//! `main.rs` only calls [`run`]; every subcommand's behaviour lives in its module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::address::Address;
use crate::codec::InputShape;
use crate::config::{Config, DEFAULT_AGENT, DEFAULT_LISTEN};
use crate::policy::RegoVersion;
use crate::server::ServeSettings;

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
}

/// Flags of `agent-warden serve` (each overrides the configuration file).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where the host connects [default: vsock://-1:1024].
    #[arg(long)]
    pub listen: Option<String>,
    /// Where kata-agent listens [default: unix:///run/kata-agent.sock].
    #[arg(long)]
    pub agent: Option<String>,
    /// Policy file (Rego, package agent_policy) [default: embedded coco-default].
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Rego version of the policy [default: v0, as kata-agent].
    #[arg(long, value_enum)]
    pub rego: Option<RegoVersion>,
    /// Policy input shape: current kata-agent, or an older kata-agent's (legacy, legacy-stream-ports).
    #[arg(long, value_enum)]
    pub input_shape: Option<InputShape>,
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
    /// Merges flags over the configuration file over the defaults.
    pub fn settings(&self) -> anyhow::Result<ServeSettings> {
        let cfg = match &self.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        let listen = self
            .listen
            .clone()
            .or(cfg.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let agent = self
            .agent
            .clone()
            .or(cfg.agent)
            .unwrap_or_else(|| DEFAULT_AGENT.to_string());
        let shape = self
            .input_shape
            .or(cfg.policy.input_shape)
            .unwrap_or_default();
        Ok(ServeSettings {
            listen: listen
                .parse::<Address>()
                .map_err(|e| anyhow::anyhow!("--listen: {e}"))?,
            agent: agent
                .parse::<Address>()
                .map_err(|e| anyhow::anyhow!("--agent: {e}"))?,
            policy_file: self.policy.clone().or(cfg.policy.file),
            rego: self.rego.or(cfg.policy.rego).unwrap_or_default(),
            input_shape: shape,
        })
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
    let default_log = if matches!(cli.command, Command::Demo(_)) {
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
            .settings()
            .and_then(|s| runtime()?.block_on(crate::server::serve(s)))
            .map(|_| 0),
        Command::Endpoints => {
            print!("{}", crate::methods::listing());
            Ok(0)
        }
        Command::Demo(args) => runtime().and_then(|rt| {
            rt.block_on(async {
                let policy = match &args.policy {
                    Some(p) => Some(crate::server::load_policy(Some(p), args.rego)?),
                    None => None,
                };
                print!("{}", crate::demo::run_demo(policy).await?);
                Ok(0)
            })
        }),
        // Dispatch arms are added below by each area.
        Command::Policy(args) => crate::tools::run_cli(args),
        Command::Storage(args) => crate::storage::run_cli(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agent-warden: error: {e:#}");
            1
        }
    }
}
