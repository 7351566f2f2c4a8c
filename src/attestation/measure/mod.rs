//! Measurement registers: where the decision log's chain head is extended so that an
//! attestation quote covers it (TPM 2.0 PCR, TDX RTMR, the CoCo attestation-agent's
//! runtime-measurement API).
//!
//! The decision log hands a register each 32-byte chain hash it wants measured; the register
//! maps it to its own bank with [`RegisterKind::event`] (a TPM sha256 PCR takes the hash as it
//! is; a TDX RTMR, 48 bytes wide, takes sha384 of it) and extends. `agent-warden log verify`
//! recomputes the register with [`expected`], and checks a TPM quote with
//! [`quote::pcr_digest_matches`].
//!
//! Specs ([`open`]):
//! - `tpm:pcr=N[,device=PATH]`: a TPM 2.0 PCR, sha256 bank ([`tpm`]); N defaults to
//!   [`tpm::DEFAULT_PCR`], PATH to [`tpm::DEFAULT_DEVICE`] or may be an swtpm unix socket.
//! - `tdx:rtmr=N[,dir=PATH]`: a TDX RTMR through Linux's tsm-mr sysfs files ([`tdx`]); N
//!   defaults to [`tdx::DEFAULT_RTMR`], PATH to [`tdx::DEFAULT_MEASUREMENTS_DIR`].
//!   Not yet run on TDX hardware.
//! - `aa:[socket=PATH][,pcr=N]`: the CoCo attestation-agent's `ExtendRuntimeMeasurement`
//!   ([`aa`]); PATH defaults to [`aa::DEFAULT_SOCKET`], N to the agent's own default. Its
//!   register value is the agent's business: verify its event log, not [`expected`].

pub mod aa;
pub mod quote;
pub mod tdx;
pub mod tpm;

use sha2::Digest;
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
    /// The CoCo attestation-agent's ExtendRuntimeMeasurement (its own event log; the
    /// register and hash are the agent's configuration, so [`expected`] has no model).
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

impl RegisterKind {
    /// The register's width in bytes (its hash's output length).
    pub fn width(self) -> usize {
        match self {
            RegisterKind::Tpm | RegisterKind::Aa => 32,
            RegisterKind::Tdx => 48,
        }
    }

    /// What the register is extended with for one chain hash: the hash itself for a sha256
    /// PCR, sha384 of it for a 48-byte RTMR.
    pub fn event(self, chain_hash: &[u8; 32]) -> Vec<u8> {
        match self {
            RegisterKind::Tpm | RegisterKind::Aa => chain_hash.to_vec(),
            RegisterKind::Tdx => sha2::Sha384::digest(chain_hash).to_vec(),
        }
    }

    /// One extend: `H(value || event)` with the register's hash.
    pub fn extend_value(self, value: &[u8], event: &[u8]) -> Vec<u8> {
        match self {
            RegisterKind::Tpm | RegisterKind::Aa => {
                let mut d = sha2::Sha256::new();
                d.update(value);
                d.update(event);
                d.finalize().to_vec()
            }
            RegisterKind::Tdx => {
                let mut d = sha2::Sha384::new();
                d.update(value);
                d.update(event);
                d.finalize().to_vec()
            }
        }
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

/// Opens a register from its spec (`tpm:pcr=23`, `tpm:pcr=23,device=/run/swtpm.sock`,
/// `tdx:rtmr=3`). Opening checks that the register can be read, so that a wrong device or
/// index fails at startup rather than at the first measured record.
pub fn open(spec: &str) -> Result<Box<dyn Register>, MeasureError> {
    let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
    let params = Params::parse(spec, rest)?;
    let mut reg: Box<dyn Register> = match kind {
        "tpm" => Box::new(tpm::TpmPcr::from_params(spec, &params)?),
        "tdx" => Box::new(tdx::TdxRtmr::from_params(spec, &params)?),
        "aa" => Box::new(aa::AttestationAgent::from_params(spec, &params)?),
        _ => {
            return Err(spec_error(
                spec,
                format!("unknown register kind {kind:?} (expected tpm:pcr=N[,device=PATH], tdx:rtmr=N[,dir=PATH] or aa:[socket=PATH][,pcr=N])"),
            ))
        }
    };
    reg.read()?;
    Ok(reg)
}

/// The register's value after `start` was extended with each of `chain_hashes` in turn.
///
/// For [`RegisterKind::Aa`] the value depends on the attestation-agent's configured hash and
/// register, which the log does not know: the answer is empty, which matches no register
/// (verify the agent's event log instead).
pub fn expected(kind: RegisterKind, start: &[u8], chain_hashes: &[[u8; 32]]) -> Vec<u8> {
    if kind == RegisterKind::Aa {
        return Vec::new();
    }
    chain_hashes.iter().fold(start.to_vec(), |value, h| {
        kind.extend_value(&value, &kind.event(h))
    })
}

fn spec_error(spec: &str, message: impl Into<String>) -> MeasureError {
    MeasureError::Spec {
        spec: spec.to_string(),
        message: message.into(),
    }
}

/// A spec's `key=value` list after the kind, each key at most once.
pub(crate) struct Params<'a> {
    spec: &'a str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Params<'a> {
    pub(crate) fn parse(spec: &'a str, rest: &'a str) -> Result<Self, MeasureError> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for item in rest.split(',').filter(|s| !s.is_empty()) {
            let Some((k, v)) = item.split_once('=') else {
                return Err(spec_error(spec, format!("{item:?} is not key=value")));
            };
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(spec_error(spec, format!("{k:?} given twice")));
            }
            pairs.push((k, v));
        }
        Ok(Params { spec, pairs })
    }

    /// Refuses keys other than `known`.
    pub(crate) fn only(&self, known: &[&str]) -> Result<(), MeasureError> {
        match self.pairs.iter().find(|(k, _)| !known.contains(k)) {
            Some((k, _)) => Err(spec_error(
                self.spec,
                format!("unknown key {k:?} (known: {})", known.join(", ")),
            )),
            None => Ok(()),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// A register index in `0..=max`, or `default` when the key is absent.
    pub(crate) fn index(&self, key: &str, max: u32, default: u32) -> Result<u32, MeasureError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.parse::<u32>() {
                Ok(n) if n <= max => Ok(n),
                _ => Err(spec_error(
                    self.spec,
                    format!("{key}={v:?} is not a number from 0 to {max}"),
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_tpm_is_sha256_chain() {
        let start = [0u8; 32];
        let h1 = [1u8; 32];
        let h2 = [2u8; 32];
        let mut d = sha2::Sha256::new();
        d.update(start);
        d.update(h1);
        let v1 = d.finalize();
        let mut d = sha2::Sha256::new();
        d.update(v1);
        d.update(h2);
        let v2 = d.finalize().to_vec();
        assert_eq!(expected(RegisterKind::Tpm, &start, &[h1, h2]), v2);
        assert_eq!(expected(RegisterKind::Tpm, &start, &[]), start.to_vec());
    }

    #[test]
    fn expected_tdx_extends_sha384_of_the_hash() {
        let start = [0u8; 48];
        let h = [7u8; 32];
        let event = sha2::Sha384::digest(h);
        let mut d = sha2::Sha384::new();
        d.update(start);
        d.update(event);
        let want = d.finalize().to_vec();
        let got = expected(RegisterKind::Tdx, &start, &[h]);
        assert_eq!(got.len(), 48);
        assert_eq!(got, want);
        // Not the sha256 model under another name.
        assert_ne!(got[..32], expected(RegisterKind::Tpm, &[0u8; 32], &[h])[..]);
    }

    #[test]
    fn bad_specs_are_refused_with_reasons() {
        for (spec, needle) in [
            ("tpm:pcr=24", "0 to 23"),
            ("tpm:pcr=x", "0 to 23"),
            ("tpm:pcr=1,pcr=2", "twice"),
            ("tpm:bank=sha1", "unknown key"),
            ("tpm:pcr", "key=value"),
            ("tdx:rtmr=4", "0 to 3"),
            ("aa:socket=/nonexistent/aa.sock", "cannot connect"),
            ("aa:pcr=99", "0 to 23"),
            ("aa:rtmr=1", "unknown key"),
            ("sgx:x=1", "unknown register kind"),
        ] {
            let err = open(spec).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(needle), "{spec}: {err}");
            assert!(err.contains(spec), "{spec}: {err}");
        }
    }

    #[test]
    fn a_missing_device_fails_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("tpmrm0");
        let err = open(&format!("tpm:pcr=23,device={}", dev.display()))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("tpmrm0") && err.contains("PCR 23"), "{err}");
    }
}
