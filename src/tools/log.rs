//! `agent-warden log verify FILE...`: checks the hash chain of decision-log files
//! ([`crate::decision_log::verify`]) and, given the register's value, whether the log
//! is complete. Prints a summary; a failed check is an error naming the first bad
//! record (file:line, seq) and what is wrong with it.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::attestation::decode_hex;
use crate::decision_log::verify::{verify, Expect};

/// `agent-warden log ...`
#[derive(Debug, Args)]
pub struct LogArgs {
    #[command(subcommand)]
    pub command: LogCommand,
}

/// The decision-log tools.
#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Replay decision-log files (oldest first: FILE.2 FILE.1 FILE) and check the chain.
    Verify(VerifyArgs),
}

/// Flags of `log verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The log files, in order (rotated files first, oldest first).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The measurement register's current value (hex): the log must account for it.
    #[arg(long, value_name = "HEX")]
    pub pcr: Option<String>,
    /// The register's value before the genesis record was extended (hex); default: the
    /// start value the genesis record gives.
    #[arg(long, value_name = "HEX")]
    pub register_start: Option<String>,
    /// The measured policy digest (hex): the genesis record must bind it (the policy's
    /// sha256, or the initdata digest).
    #[arg(long, value_name = "HEX")]
    pub policy_digest: Option<String>,
    /// This boot's nonce (hex), as the genesis record of the current boot says.
    #[arg(long, value_name = "HEX")]
    pub nonce: Option<String>,
    // A `--quote FILE` (the register's value taken from a signed attestation quote)
    // belongs here once attestation::measure reads quotes.
}

fn hex_arg(flag: &str, v: &Option<String>) -> anyhow::Result<Option<Vec<u8>>> {
    match v {
        Some(text) => decode_hex(text)
            .map(Some)
            .ok_or_else(|| anyhow::anyhow!("{flag} {text:?} is not hex")),
        None => Ok(None),
    }
}

/// `log verify`: 0 when every check passes; a failed check is an error.
pub fn verify_cli(a: &VerifyArgs, out: &mut impl std::io::Write) -> anyhow::Result<i32> {
    let expect = Expect {
        register: hex_arg("--pcr", &a.pcr)?,
        register_start: hex_arg("--register-start", &a.register_start)?,
        policy_digest: a.policy_digest.clone(),
        nonce: a.nonce.clone(),
    };
    let report = verify(&a.files, &expect).map_err(|e| anyhow::anyhow!("log verify: {e}"))?;
    write!(out, "{}", report.summary())?;
    if expect.policy_digest.is_some() {
        writeln!(out, "policy digest: matches")?;
    }
    if expect.nonce.is_some() {
        writeln!(out, "nonce: matches (this boot's log)")?;
    }
    if expect.register.is_some() {
        writeln!(
            out,
            "register: matches: the log is complete up to its last measured record"
        )?;
    }
    Ok(0)
}

/// Dispatches `agent-warden log ...`.
pub fn run_cli(args: LogArgs) -> anyhow::Result<i32> {
    match args.command {
        LogCommand::Verify(a) => verify_cli(&a, &mut std::io::stdout()),
    }
}
