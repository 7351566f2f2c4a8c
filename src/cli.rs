//! Command-line interface: the clap definitions and the dispatch to library code.
//! `main.rs` only calls [`run`]; every subcommand's behaviour lives in its module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;

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
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Listen for the host and relay policy-checked requests to kata-agent.
    Serve(ServeArgs),
    /// List every RPC agent-warden knows, with its policy rule (request type).
    Endpoints,
    /// Run a demo: a built-in agent behind agent-warden, and a scripted host session.
    Demo(DemoArgs),
    /// Policy tools: check, eval, test, replay, hash.
    Policy(crate::tools::PolicyArgs),
    /// Encrypted scratch disk: setup, teardown, status
    Storage(crate::tools::storage::StorageArgs),
    /// The tenant's initdata: pack a policy into the pod annotation, TEE digests and disk image.
    Initdata(crate::tools::initdata::InitdataArgs),
    /// Decision-log tools: verify the hash chain (and the register) of `serve --decision-log` files.
    Log(crate::tools::log::LogArgs),
}

/// Flags of `agent-warden serve`. Each setting is a configuration key too (defined
/// once, in [`crate::config`]); a flag overrides the configuration file and the
/// configuration carried in initdata.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML; see src/config.rs for every key).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Config,
    /// Scratch disk device (sets [storage] device): a path or MAJ:MIN.
    #[arg(long, value_name = "PATH|MAJ:MIN")]
    pub storage_device: Option<String>,
}

/// Flags of `agent-warden demo`: the policy to demo (the embedded default unless named).
#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub source: crate::tools::PolicyChoice,
}

impl ServeArgs {
    /// The configuration file (or an empty layer) and the flags as a layer of their own.
    pub fn layers(&self) -> anyhow::Result<(Config, Config)> {
        let file = match &self.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        let storage = self
            .storage_device
            .as_ref()
            .map(|d| crate::config::StorageSection {
                device: Some(d.clone()),
                ..Default::default()
            });
        let flags = Config {
            storage,
            ..self.settings.clone()
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
    if let Err(e) = crate::logging::init(cli.log.as_deref().unwrap_or(default_log), cli.log_json) {
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
                let guard = crate::tools::serve_guard(&args.source)?;
                print!("{}", crate::tools::demo::run_demo(guard).await?);
                Ok(0)
            })
        }),
        Command::Policy(args) => crate::tools::run_cli(args),
        Command::Storage(args) => crate::tools::storage::run_cli(args),
        Command::Initdata(args) => crate::tools::initdata::run_cli(args),
        Command::Log(args) => crate::tools::log::run_cli(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agent-warden: error: {e:#}");
            1
        }
    }
}
