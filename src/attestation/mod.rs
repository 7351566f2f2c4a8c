//! Attestation binding: the policy agent-warden enforces must be the one the TEE measured.
//!
//! Three pieces, used in this order by `serve` (before the listener opens):
//!
//! 1. **initdata** ([`initdata`]): the CoCo initdata TOML document
//!    (`version = "0.1.0"`, `algorithm = "sha256" | "sha384" | "sha512"`, a `[data]` table whose
//!    `"policy.rego"` entry is the policy text and whose optional `"agent-warden.toml"` entry is
//!    agent-warden's own configuration; other entries such as `aa.toml` / `cdh.toml` are kept
//!    untouched in [`Initdata::data`]). It arrives as a file, or on a block device laid out as
//!    `b"initdata"` + u64 little-endian length + that many bytes of gzip-compressed TOML.
//!    [`scan_for_initdata`] looks for such a device among `vd*` / `sd*` under a /dev root.
//!    Reads are bounded ([`MAX_COMPRESSED_LEN`], [`MAX_DECOMPRESSED_LEN`]).
//! 2. **digest** ([`digest`](mod@digest)): the initdata's named algorithm over the raw
//!    decompressed TOML bytes (what kata's shim and the attestation agent hash), or sha256 of a
//!    plain policy file. [`DigestForms`] gives the hypervisor forms: hex, SNP HOSTDATA (32 bytes,
//!    truncated or zero-padded), TDX MRCONFIGID (48 bytes, likewise), and base64 for QEMU's
//!    `host-data=` / `mrconfigid=`. [`hash_report`] renders `agent-warden policy hash`.
//! 3. **evidence** ([`evidence`]): [`check_evidence`] compares the digest with what the TEE
//!    reports, from an [`EvidenceSource`] (CLI syntax in [`EvidenceSource`]'s `FromStr`):
//!    SNP HOSTDATA from a configfs-tsm report, TDX MRCONFIGID from the TDREPORT
//!    (`/dev/tdx_guest`), the tsm-mr sysfs file, or a configfs-tsm TD quote, or a file of
//!    expected bytes. A mismatch or unreadable evidence is an error naming both values in hex.
//!
//! Public API (all re-exported here):
//! - [`Algorithm`], [`Initdata`], [`parse_initdata`], [`read_initdata_device`],
//!   [`decode_initdata_image`], [`scan_for_initdata`], [`build_initdata_image`],
//!   [`render_initdata`], [`initdata_annotation_value`], [`INITDATA_ANNOTATION`],
//!   [`load_initdata`], [`MeasuredDocument`], [`load_measured_document`];
//! - [`digest()`], [`fit`], [`DigestForms`], [`hash_report`], [`to_hex`], [`decode_hex`];
//! - [`EvidenceSource`], [`TsmReportDir`], [`check_evidence`], [`read_evidence`],
//!   [`evidence_report_data`], the pure parsers [`snp_report_fields`], [`tdx_quote_fields`],
//!   [`tdreport_fields`], and the layout constants they use;
//! - [`AttestationError`], the one error type; [`EvidenceError`] is its detail when a TEE's
//!   report or value cannot be read or parsed (the parsers return it).
//!
//! Layout facts (offsets in bytes): SNP ATTESTATION_REPORT (AMD SEV-SNP ABI): 0x4A0 long,
//! REPORT_DATA at 0x50 (64), HOST_DATA at 0xC0 (32). TD quote v4: 48-byte header
//! (version u16, attestation key type u16, TEE type u32 = 0x81 for TDX, ...), then the TD report
//! body (584); v5 puts a body type (u16) and size (u32) between header and body. In the body,
//! MRCONFIGID is at 184 (48) and REPORTDATA at 520 (64). TDREPORT (1024, from
//! `TDX_CMD_GET_REPORT0`): REPORTMACSTRUCT (256; REPORTDATA at 128), TEE_TCB_INFO (239),
//! reserved (17), TDINFO at 512: ATTRIBUTES, XFAM, MRTD, then MRCONFIGID at 576 (48).

pub mod digest;
pub mod evidence;
pub mod initdata;
pub mod measure;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use digest::{digest, fit, hash_report, render_report, DigestForms};
pub use evidence::{
    check_evidence, evidence_report_data, read_evidence, snp_report_fields, tdreport_fields,
    tdx_quote_fields, EvidenceError, EvidenceSource, ReportFields, ReportedValue, TsmReportDir,
    DEFAULT_TDX_GUEST_DEVICE, DEFAULT_TDX_MRCONFIGID_SYSFS, DEFAULT_TSM_ROOT, SNP_HOSTDATA_LEN,
    SNP_HOSTDATA_OFFSET, SNP_PROVIDER, SNP_REPORT_DATA_OFFSET, SNP_REPORT_LEN, TDREPORT_LEN,
    TDREPORT_MRCONFIGID_OFFSET, TDREPORT_REPORTDATA_OFFSET, TDX_BODY_MRCONFIGID_OFFSET,
    TDX_BODY_REPORTDATA_OFFSET, TDX_MRCONFIGID_LEN, TDX_PROVIDER, TDX_QUOTE_HEADER_LEN,
    TDX_TD10_BODY_LEN,
};
pub use initdata::{
    build_initdata_image, decode_initdata_image, initdata_annotation_value, load_initdata,
    load_measured_document, parse_initdata, read_initdata_device, render_initdata,
    scan_for_initdata, Algorithm, Initdata, MeasuredDocument, INITDATA_ANNOTATION, INITDATA_MAGIC,
    INITDATA_VERSION, MAX_COMPRESSED_LEN, MAX_DECOMPRESSED_LEN, POLICY_KEY, WARDEN_CONFIG_KEY,
};

/// Everything that can go wrong in this module. Each message names the file, device or
/// evidence source and what was wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    #[error("{}: cannot {action}: {err}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        err: std::io::Error,
    },
    #[error("{}: larger than the {limit}-byte limit for {what}", path.display())]
    FileTooLarge {
        path: PathBuf,
        what: &'static str,
        limit: u64,
    },
    #[error("{}: {size} bytes, too short for the 16-byte initdata header (magic + length)", path.display())]
    ImageTooShort { path: PathBuf, size: u64 },
    #[error("{}: bad magic: the first 8 bytes are {found} (hex), expected \"initdata\"", path.display())]
    BadMagic { path: PathBuf, found: String },
    #[error("{}: the initdata header declares a length of 0", path.display())]
    EmptyImage { path: PathBuf },
    #[error(
        "{}: the initdata header declares {declared} bytes of compressed data, over the {limit}-byte limit",
        path.display()
    )]
    CompressedTooLarge {
        path: PathBuf,
        declared: u64,
        limit: u64,
    },
    #[error(
        "{}: the initdata header declares {declared} bytes of compressed data but only {available} bytes follow the header",
        path.display()
    )]
    LengthBeyondDevice {
        path: PathBuf,
        declared: u64,
        available: u64,
    },
    #[error("{origin}: gzip error: {err}")]
    Gzip {
        origin: String,
        #[source]
        err: std::io::Error,
    },
    #[error("{origin}: decompressed initdata is larger than the {limit}-byte limit")]
    DecompressedTooLarge { origin: String, limit: u64 },
    #[error("{origin}: not UTF-8 text: {err}")]
    NotUtf8 {
        origin: String,
        #[source]
        err: std::str::Utf8Error,
    },
    #[error("{origin}: TOML error: {message}")]
    Toml { origin: String, message: String },
    #[error("{origin}: missing `{key}`")]
    MissingKey { origin: String, key: &'static str },
    #[error("{origin}: `{key}` must be {expected}")]
    WrongType {
        origin: String,
        key: String,
        expected: &'static str,
    },
    #[error("{origin}: unsupported initdata version {found:?} (supported: \"0.1.0\")")]
    UnsupportedVersion { origin: String, found: String },
    #[error(
        "{origin}: unsupported algorithm {found:?} (supported: \"sha256\", \"sha384\", \"sha512\")"
    )]
    UnsupportedAlgorithm { origin: String, found: String },
    #[error("{origin}: no \"policy.rego\" entry in [data]")]
    MissingPolicy { origin: String },
    #[error("invalid evidence source {spec:?}: {reason}")]
    BadEvidenceSpec { spec: String, reason: String },
    #[error("cannot read evidence from {evidence}: {detail} (expected {field} {expected} from the policy/initdata)")]
    EvidenceUnavailable {
        evidence: String,
        field: &'static str,
        expected: String,
        #[source]
        detail: Box<EvidenceError>,
    },
    #[error(
        "attestation mismatch: expected {field} {expected} (from the policy/initdata{note}) but {evidence} reported {reported}"
    )]
    EvidenceMismatch {
        evidence: String,
        field: &'static str,
        expected: String,
        reported: String,
        /// Empty, or how `expected` was derived from a digest of another length.
        note: String,
    },
}

impl AttestationError {
    pub(crate) fn io<'a>(
        path: &'a Path,
        action: &'static str,
    ) -> impl FnOnce(std::io::Error) -> Self + 'a {
        move |err| AttestationError::Io {
            path: path.to_path_buf(),
            action,
            err,
        }
    }
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    // A nibble is 0..=15: `from_digit` never answers None for it.
    let digit = |n: u8| char::from_digit(u32::from(n), 16).unwrap_or('?');
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(digit(b >> 4));
        s.push(digit(b & 0xf));
    }
    s
}

/// Decodes hex text (either case; surrounding ASCII whitespace and an optional `0x` prefix
/// are ignored). `None` unless every remaining character is a hex digit and there is an even,
/// non-zero number of them.
pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let t = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let t = t.strip_prefix("0x").unwrap_or(t);
    if t.is_empty() || t.len() % 2 != 0 {
        return None;
    }
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    t.as_bytes()
        .chunks_exact(2)
        .map(|p| match p {
            [hi, lo] => Some((nibble(*hi)? << 4) | nibble(*lo)?),
            _ => None,
        })
        .collect()
}

/// Reads at most `limit` bytes of a file; a longer file is an error, not a truncation.
pub(crate) fn read_file_bounded(
    path: &Path,
    limit: u64,
    what: &'static str,
) -> Result<Vec<u8>, AttestationError> {
    let file = std::fs::File::open(path).map_err(AttestationError::io(path, "open"))?;
    let mut buf = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(AttestationError::io(path, "read"))?;
    if buf.len() as u64 > limit {
        return Err(AttestationError::FileTooLarge {
            path: path.to_path_buf(),
            what,
            limit,
        });
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let bytes = [0x00, 0x01, 0xab, 0xff, 0x7f];
        assert_eq!(to_hex(&bytes), "0001abff7f");
        assert_eq!(decode_hex("0001abff7f").as_deref(), Some(&bytes[..]));
        assert_eq!(decode_hex(" 0x0001ABFF7F\n").as_deref(), Some(&bytes[..]));
    }

    #[test]
    fn hex_rejects_garbage() {
        for bad in ["", "0", "abc", "zz", "00 11", "0x", "\u{e9}\u{e9}"] {
            assert_eq!(decode_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bounded_read_refuses_long_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, [7u8; 11]).unwrap();
        assert_eq!(read_file_bounded(&p, 11, "test").unwrap().len(), 11);
        let err = read_file_bounded(&p, 10, "test").unwrap_err();
        assert!(
            matches!(err, AttestationError::FileTooLarge { limit: 10, .. }),
            "{err}"
        );
        let err = read_file_bounded(&dir.path().join("missing"), 10, "test").unwrap_err();
        assert!(err.to_string().contains("cannot open"), "{err}");
    }
}
