//! `agent-warden policy hash FILE`: the digest attestation should report for a policy or
//! an initdata document, with its TEE forms.
use std::path::PathBuf;

use clap::Args;

/// Flags of `policy hash`.
#[derive(Debug, Args)]
pub struct HashArgs {
    /// An initdata document (TOML, gzip, or block-device image) or a plain policy file.
    pub file: PathBuf,
    /// Print only the digest in hex (scripts), not the report with the TEE forms.
    #[arg(long)]
    pub hex: bool,
}

/// `policy hash FILE`: the digest attestation should report for FILE (the initdata
/// digest, or sha256 of a plain policy), with the SNP / TDX / QEMU forms; `--hex` prints
/// the bare hex digest.
pub(super) fn hash(a: &HashArgs, out: &mut impl std::io::Write) -> anyhow::Result<i32> {
    let doc = crate::attestation::load_measured_document(&a.file)?;
    if a.hex {
        writeln!(out, "{}", crate::attestation::to_hex(&doc.digest()))?;
    } else {
        write!(out, "{}", crate::attestation::render_report(&a.file, &doc))?;
    }
    Ok(0)
}
