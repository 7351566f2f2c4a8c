//! Measurement registers: where the decision log's chain head is extended so that an
//! attestation quote covers it (TPM 2.0 PCR, TDX RTMR, the CoCo attestation-agent's
//! runtime-measurement API).
//!
//! The decision log hands a register each 32-byte
//! chain hash it wants measured; the register maps it to its own bank (a TPM sha256 PCR
//! takes the hash as it is; wider banks take a digest of it, see [`RegisterKind::event`])
//! and extends. `agent-warden log verify` recomputes the register with [`expected`].

use std::fmt;

/// Why a register could not be opened, read or extended.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("measurement register {spec:?}: {message}")]
    Spec { spec: String, message: String },
    #[error("{register}: {message}")]
    Device { register: String, message: String },
}

/// The kinds of register, and how each turns a chain hash into what it extends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterKind {
    /// A TPM 2.0 PCR in the sha256 bank.
    Tpm,
    /// A TDX runtime measurement register (sha384).
    Tdx,
    /// The CoCo attestation-agent's ExtendRuntimeMeasurement (its own event log).
    Aa,
}

impl fmt::Display for RegisterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RegisterKind::Tpm => "tpm",
            RegisterKind::Tdx => "tdx",
            RegisterKind::Aa => "aa",
        })
    }
}

/// A register that the decision log extends.
pub trait Register: Send {
    /// What and where, for logs and the log's genesis record (e.g. `tpm:pcr=23`).
    fn describe(&self) -> String;
    /// Which kind it is (so `log verify` knows how to recompute it).
    fn kind(&self) -> RegisterKind;
    /// The register's value now, if it can be read.
    fn read(&mut self) -> Result<Option<Vec<u8>>, MeasureError>;
    /// Extends the register with one 32-byte chain hash.
    fn extend(&mut self, chain_hash: &[u8; 32]) -> Result<(), MeasureError>;
}

/// Opens a register from its spec (`tpm:pcr=23`, `tdx:rtmr=2`, `aa:...`).
pub fn open(spec: &str) -> Result<Box<dyn Register>, MeasureError> {
    Err(MeasureError::Spec {
        spec: spec.to_string(),
        message: "no register kinds are built yet".into(),
    })
}

/// The register's value after `start` was extended with each of `chain_hashes` in turn.
pub fn expected(kind: RegisterKind, start: &[u8], chain_hashes: &[[u8; 32]]) -> Vec<u8> {
    let _ = kind;
    let mut value = start.to_vec();
    for h in chain_hashes {
        use sha2::Digest;
        let mut d = sha2::Sha256::new();
        d.update(&value);
        d.update(h);
        value = d.finalize().to_vec();
    }
    value
}
