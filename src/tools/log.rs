//! `agent-warden log verify FILE...`: checks the hash chain of decision-log files
//! ([`crate::decision_log::verify`]) and, given the register's value, whether the log
//! is complete. Prints a summary; a failed check is an error naming the first bad
//! record (file:line, seq) and what is wrong with it.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::attestation::decode_hex;
use crate::attestation::measure::{quote, tpm, RegisterKind};
use crate::decision_log::verify::{verify, Expect, Report};

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
    /// A TPM 2.0 quote of the register (the TPMS_ATTEST that `tpm2_quote -m FILE` writes):
    /// its pcrDigest must be the digest of the PCR value the log predicts. Check the
    /// quote's signature and nonce with `tpm2_checkquote` (or your verifier); this checks
    /// what the signed digest says about the log.
    #[arg(long, value_name = "FILE", conflicts_with = "pcr")]
    pub quote: Option<PathBuf>,
    /// The PCR the quote covers; default: the one the genesis record names.
    #[arg(long, value_name = "N", requires = "quote")]
    pub quote_pcr: Option<u32>,
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
    // Every check before any output: a failed one is only its error.
    let quoted = match &a.quote {
        Some(path) => Some(check_quote(&report, path, a.quote_pcr)?),
        None => None,
    };
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
    if let Some(pcr) = quoted {
        writeln!(
            out,
            "quote: sha256 PCR {pcr} matches: the log is complete up to its last measured record (check the quote's signature and nonce with tpm2_checkquote)"
        )?;
    }
    Ok(0)
}

/// `--quote`: the quote's pcrDigest against the register value the log predicts. Returns
/// the PCR checked.
fn check_quote(report: &Report, path: &std::path::Path, pcr: Option<u32>) -> anyhow::Result<u32> {
    let fail = |m: String| anyhow::anyhow!("log verify: --quote {}: {m}", path.display());
    let attest = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let Some(genesis) = &report.genesis else {
        return Err(fail(
            "the genesis record is not in the files given: the register cannot be recomputed; give the older rotated files first".into(),
        ));
    };
    let Some((describe, kind, _)) = &genesis.register else {
        return Err(fail(
            "the log was written without a measurement register: nothing to compare the quote with"
                .into(),
        ));
    };
    if *kind != RegisterKind::Tpm {
        return Err(fail(format!(
            "the log measured into {describe}, not a TPM PCR: a TPM quote does not cover it"
        )));
    }
    let pcr = match pcr.or_else(|| tpm::pcr_of(describe)) {
        Some(p) => p,
        None => {
            return Err(fail(format!(
                "the genesis register {describe:?} names no PCR: give --quote-pcr"
            )))
        }
    };
    let Some(want) = &report.expected_register else {
        return Err(fail(
            "the register's start value is unknown (the genesis has none): give --register-start"
                .into(),
        ));
    };
    quote::require_pcr_digest(&attest, pcr, want).map_err(|e| match e {
        quote::QuoteError::Mismatch(m) => fail(format!(
            "register mismatch: {m}: the {} measured records in these files (last seq {}) do not account for the quoted PCR: records were cut from the end of the log (or removed, or this is not the register that log extended)",
            report.measured.len(),
            report.last_measured.map(|s| s.to_string()).unwrap_or_else(|| "none".into())
        )),
        other => fail(other.to_string()),
    })?;
    Ok(pcr)
}

/// Dispatches `agent-warden log ...`.
pub fn run_cli(args: LogArgs) -> anyhow::Result<i32> {
    match args.command {
        LogCommand::Verify(a) => verify_cli(&a, &mut std::io::stdout()),
    }
}
