//! Comparing the measured digest with what the TEE reports.
//!
//! Sources ([`EvidenceSource`]; CLI syntax in its `FromStr`):
//! - `snp[:ROOT]`: SNP HOST_DATA from an attestation report obtained through the Linux
//!   configfs-tsm interface (`ROOT` defaults to `/sys/kernel/config/tsm`): a fresh directory is
//!   made under `ROOT/report`, its `provider` must read `sev_guest`, `privlevel` is raised to
//!   `privlevel_floor` when that is non-zero, 64 bytes go to `inblob`,
//!   `outblob` is the report, `generation` must not move while we read, and the directory is
//!   removed afterwards. `snp-report:DIR` uses an existing report directory instead and leaves
//!   it in place (for an administrator's pre-made directory, and for tests on a plain
//!   filesystem, where mkdir cannot conjure configfs attributes).
//! - `tdx[:DEVICE]`: TDX MRCONFIGID from the TDREPORT the TDX module returns through the
//!   `TDX_CMD_GET_REPORT0` ioctl on `/dev/tdx_guest`. Produced inside the guest; the host
//!   cannot alter it.
//! - `tdx-sysfs[:PATH]`: MRCONFIGID from the tsm-mr file (Linux 6.16+,
//!   `/sys/class/misc/tdx_guest/measurements/mrconfigid`), raw 48 bytes or hex.
//! - `tdx-quote[:ROOT]` / `tdx-quote-report:DIR`: MRCONFIGID from a TD quote (v4 or v5) obtained
//!   through configfs-tsm (provider `tdx_guest`). The host's quoting service produces that quote
//!   and its signature is not verified here, so a hostile host could hand back a forged one:
//!   use `tdx` or `tdx-sysfs` where possible.
//! - `file:PATH`: a file with the expected field bytes (32, 48 or 64 raw bytes, or hex), for
//!   tests and vTPM-only platforms.
//!
//! Every report-based source writes [`evidence_report_data`] (derived from the expected digest)
//! as REPORT_DATA and checks the report carries it back, so a stale or foreign report is
//! refused. The digest is fitted to the field ([`fit`]) before comparing: truncated or
//! zero-padded, the way the host placed it there.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha512};

use super::digest::fit;
use super::{decode_hex, read_file_bounded, to_hex, AttestationError};

/// Where configfs-tsm lives on a guest.
pub const DEFAULT_TSM_ROOT: &str = "/sys/kernel/config/tsm";
/// The TDX guest driver's device node.
pub const DEFAULT_TDX_GUEST_DEVICE: &str = "/dev/tdx_guest";
/// The tsm-mr sysfs file for MRCONFIGID (Linux 6.16+).
pub const DEFAULT_TDX_MRCONFIGID_SYSFS: &str = "/sys/class/misc/tdx_guest/measurements/mrconfigid";
/// configfs-tsm `provider` for SEV-SNP.
pub const SNP_PROVIDER: &str = "sev_guest";
/// configfs-tsm `provider` for TDX.
pub const TDX_PROVIDER: &str = "tdx_guest";

/// Size of the SNP ATTESTATION_REPORT structure.
pub const SNP_REPORT_LEN: usize = 0x4A0;
/// Offset of REPORT_DATA (64 bytes) in the SNP report.
pub const SNP_REPORT_DATA_OFFSET: usize = 0x50;
/// Offset of HOST_DATA in the SNP report.
pub const SNP_HOSTDATA_OFFSET: usize = 0xC0;
/// Length of HOST_DATA.
pub const SNP_HOSTDATA_LEN: usize = 32;

/// Length of the TD quote header (v4 and v5).
pub const TDX_QUOTE_HEADER_LEN: usize = 48;
/// Length of the TD 1.0 report body (the v4 body; the first part of every v5 body).
pub const TDX_TD10_BODY_LEN: usize = 584;
/// Offset of MRCONFIGID in the TD report body.
pub const TDX_BODY_MRCONFIGID_OFFSET: usize = 184;
/// Offset of REPORTDATA (64 bytes) in the TD report body.
pub const TDX_BODY_REPORTDATA_OFFSET: usize = 520;
/// Length of MRCONFIGID.
pub const TDX_MRCONFIGID_LEN: usize = 48;
/// Length of a TDREPORT.
pub const TDREPORT_LEN: usize = 1024;
/// Offset of REPORTDATA in a TDREPORT (inside REPORTMACSTRUCT).
pub const TDREPORT_REPORTDATA_OFFSET: usize = 128;
/// Offset of MRCONFIGID in a TDREPORT (TDINFO starts at 512).
pub const TDREPORT_MRCONFIGID_OFFSET: usize = 576;

const TDX_TEE_TYPE: u32 = 0x81;
const OUTBLOB_LIMIT: u64 = 1 << 20;
const SMALL_FILE_LIMIT: u64 = 4096;
const FILE_EVIDENCE_LENGTHS: [usize; 3] = [32, 48, 64];

/// Which configfs-tsm report directory to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TsmReportDir {
    /// Make a fresh directory under `root/report`, use it, and remove it (the normal case).
    Fresh { root: PathBuf },
    /// Use this existing report directory and leave it in place.
    Existing { dir: PathBuf },
}

impl std::fmt::Display for TsmReportDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TsmReportDir::Fresh { root } => write!(f, "{}", root.join("report").display()),
            TsmReportDir::Existing { dir } => write!(f, "{}", dir.display()),
        }
    }
}

/// Where the TEE's view of the measured digest comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvidenceSource {
    /// SNP HOST_DATA from a configfs-tsm attestation report.
    SnpConfigfsTsm { tsm: TsmReportDir },
    /// TDX MRCONFIGID from a configfs-tsm TD quote (host-produced; see the module comment).
    TdxConfigfsTsm { tsm: TsmReportDir },
    /// TDX MRCONFIGID from the TDREPORT (`TDX_CMD_GET_REPORT0` on this device).
    TdxReport { device: PathBuf },
    /// TDX MRCONFIGID from a sysfs measurement file (raw 48 bytes or hex).
    TdxSysfs { path: PathBuf },
    /// A file holding the expected field bytes (32, 48 or 64 raw bytes, or hex).
    File { path: PathBuf },
}

impl EvidenceSource {
    /// The field compared, and its size where the source fixes it.
    fn field(&self) -> (&'static str, Option<usize>) {
        match self {
            EvidenceSource::SnpConfigfsTsm { .. } => ("HOSTDATA", Some(SNP_HOSTDATA_LEN)),
            EvidenceSource::TdxConfigfsTsm { .. }
            | EvidenceSource::TdxReport { .. }
            | EvidenceSource::TdxSysfs { .. } => ("MRCONFIGID", Some(TDX_MRCONFIGID_LEN)),
            EvidenceSource::File { .. } => ("value", None),
        }
    }
}

impl std::fmt::Display for EvidenceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvidenceSource::SnpConfigfsTsm { tsm } => {
                write!(f, "SNP HOSTDATA via configfs-tsm ({tsm})")
            }
            EvidenceSource::TdxConfigfsTsm { tsm } => {
                write!(f, "TDX MRCONFIGID from a TD quote via configfs-tsm ({tsm})")
            }
            EvidenceSource::TdxReport { device } => {
                write!(f, "TDX MRCONFIGID from the TDREPORT ({})", device.display())
            }
            EvidenceSource::TdxSysfs { path } => {
                write!(f, "TDX MRCONFIGID from sysfs ({})", path.display())
            }
            EvidenceSource::File { path } => write!(f, "evidence file {}", path.display()),
        }
    }
}

impl std::str::FromStr for EvidenceSource {
    type Err = AttestationError;

    /// `snp[:TSM_ROOT]`, `snp-report:DIR`, `tdx[:DEVICE]`, `tdx-sysfs[:PATH]`,
    /// `tdx-quote[:TSM_ROOT]`, `tdx-quote-report:DIR`, `file:PATH`.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| AttestationError::BadEvidenceSpec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let (kind, arg) = match spec.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (spec, None),
        };
        if arg == Some("") {
            return Err(bad("empty path after ':'"));
        }
        let path_or = |default: &str| PathBuf::from(arg.unwrap_or(default));
        let required = || {
            arg.map(PathBuf::from)
                .ok_or_else(|| bad("needs a path: KIND:PATH"))
        };
        let fresh = || TsmReportDir::Fresh {
            root: path_or(DEFAULT_TSM_ROOT),
        };
        Ok(match kind {
            "snp" => EvidenceSource::SnpConfigfsTsm { tsm: fresh() },
            "snp-report" => EvidenceSource::SnpConfigfsTsm {
                tsm: TsmReportDir::Existing { dir: required()? },
            },
            "tdx" => EvidenceSource::TdxReport {
                device: path_or(DEFAULT_TDX_GUEST_DEVICE),
            },
            "tdx-sysfs" => EvidenceSource::TdxSysfs {
                path: path_or(DEFAULT_TDX_MRCONFIGID_SYSFS),
            },
            "tdx-quote" => EvidenceSource::TdxConfigfsTsm { tsm: fresh() },
            "tdx-quote-report" => EvidenceSource::TdxConfigfsTsm {
                tsm: TsmReportDir::Existing { dir: required()? },
            },
            "file" => EvidenceSource::File { path: required()? },
            _ => {
                return Err(bad(
                    "expected snp[:TSM_ROOT], snp-report:DIR, tdx[:DEVICE], tdx-sysfs[:PATH], \
                     tdx-quote[:TSM_ROOT], tdx-quote-report:DIR or file:PATH",
                ))
            }
        })
    }
}

/// Why a source's report or value could not be read or understood: the `detail` of
/// [`AttestationError::EvidenceUnavailable`], which adds the source and the expected value.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("SNP report is {len} bytes, expected at least {SNP_REPORT_LEN}")]
    SnpTooShort { len: usize },
    #[error("TD quote is {len} bytes, too short for its header")]
    QuoteHeaderTooShort { len: usize },
    #[error("quote TEE type is {found:#x}, expected {TDX_TEE_TYPE:#x} (TDX)")]
    QuoteTeeType { found: u32 },
    #[error("TD quote version {found}, expected 4 or 5")]
    QuoteVersion { found: u16 },
    #[error("TD quote v5 is too short for its body descriptor")]
    QuoteDescriptorTooShort,
    #[error("TD quote v5 body type is {found}, expected 2 or 3 (TD report)")]
    QuoteBodyType { found: u16 },
    #[error("TD quote v5 body size is {size}, expected at least {TDX_TD10_BODY_LEN}")]
    QuoteBodySize { size: u32 },
    #[error(
        "TD quote is {len} bytes, too short for a {TDX_TD10_BODY_LEN}-byte report body at {body}"
    )]
    QuoteBodyTooShort { len: usize, body: usize },
    #[error("TDREPORT is {len} bytes, expected {TDREPORT_LEN}")]
    TdreportTooShort { len: usize },
    #[error("TDREPORT type is {found:#04x}, expected 0x81 (TDX)")]
    TdreportType { found: u8 },
    /// `found` and `written` in hex.
    #[error(
        "the report carries REPORT_DATA {found} instead of the {written} written for this \
         request (a stale report, or another process using the same report directory)"
    )]
    ReportDataMismatch { found: String, written: String },
    #[error(
        "holds {len} bytes that are neither {} raw bytes nor hex of that many",
        .wanted.iter().map(usize::to_string).collect::<Vec<_>>().join(" or ")
    )]
    FieldLength { len: usize, wanted: Vec<usize> },
    #[error(
        "{} is not a directory: no configfs-tsm (is configfs mounted at \
         /sys/kernel/config and the TEE guest driver loaded?)",
        .reports.display()
    )]
    NoTsm { reports: PathBuf },
    #[error("{} is missing: not a configfs-tsm report directory", .provider.display())]
    NotReportDir { provider: PathBuf },
    #[error("{} is {found:?}, expected {expected:?} (wrong TEE for this evidence source)", .path.display())]
    WrongProvider {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
    #[error(
        "{} changed from {} to {} while the report was read (another writer)",
        .path.display(),
        .before.as_deref().unwrap_or("?"),
        .after.as_deref().unwrap_or("?")
    )]
    GenerationChanged {
        path: PathBuf,
        before: Option<String>,
        after: Option<String>,
    },
    #[error("cannot {action} {}: {err}", .path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        err: std::io::Error,
    },
    #[error("TDX_CMD_GET_REPORT0 on {} failed: {err}", .device.display())]
    Ioctl {
        device: PathBuf,
        #[source]
        err: std::io::Error,
    },
    /// A bounded read of an attribute, report or evidence file failed.
    #[error(transparent)]
    Read(Box<AttestationError>),
}

impl EvidenceError {
    fn io<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(std::io::Error) -> Self + 'a {
        move |err| EvidenceError::Io {
            path: path.to_path_buf(),
            action,
            err,
        }
    }
}

impl From<AttestationError> for EvidenceError {
    fn from(e: AttestationError) -> Self {
        EvidenceError::Read(Box::new(e))
    }
}

/// The measured field and the REPORT_DATA found in a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFields {
    pub measured: Vec<u8>,
    pub report_data: [u8; 64],
}

/// What a source reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedValue {
    /// `HOSTDATA`, `MRCONFIGID` or `value` (file).
    pub field: &'static str,
    pub bytes: Vec<u8>,
}

/// The 64 bytes written as REPORT_DATA when asking for a report, derived from the expected
/// digest: SHA-512 over a fixed label and the digest. A report that does not carry them back
/// was not made for this request.
pub fn evidence_report_data(expected: &[u8]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(b"agent-warden initdata check v1\0");
    h.update(expected);
    h.finalize().into()
}

fn slice_array<const N: usize>(buf: &[u8], offset: usize) -> Option<[u8; N]> {
    buf.get(offset..offset.checked_add(N)?)?.try_into().ok()
}

fn u16_le(buf: &[u8], offset: usize) -> Option<u16> {
    slice_array::<2>(buf, offset).map(u16::from_le_bytes)
}

fn u32_le(buf: &[u8], offset: usize) -> Option<u32> {
    slice_array::<4>(buf, offset).map(u32::from_le_bytes)
}

/// HOST_DATA and REPORT_DATA of an SNP ATTESTATION_REPORT (as configfs-tsm's `outblob`).
pub fn snp_report_fields(report: &[u8]) -> Result<ReportFields, EvidenceError> {
    let too_short = EvidenceError::SnpTooShort { len: report.len() };
    if report.len() < SNP_REPORT_LEN {
        return Err(too_short);
    }
    let measured = slice_array::<SNP_HOSTDATA_LEN>(report, SNP_HOSTDATA_OFFSET);
    let report_data = slice_array::<64>(report, SNP_REPORT_DATA_OFFSET);
    match (measured, report_data) {
        (Some(m), Some(r)) => Ok(ReportFields {
            measured: m.to_vec(),
            report_data: r,
        }),
        _ => Err(too_short),
    }
}

/// MRCONFIGID and REPORTDATA of a TD quote, version 4 or 5.
pub fn tdx_quote_fields(quote: &[u8]) -> Result<ReportFields, EvidenceError> {
    let header_too_short = || EvidenceError::QuoteHeaderTooShort { len: quote.len() };
    let (Some(version), Some(tee_type)) = (u16_le(quote, 0), u32_le(quote, 4)) else {
        return Err(header_too_short());
    };
    if quote.len() < TDX_QUOTE_HEADER_LEN {
        return Err(header_too_short());
    }
    if tee_type != TDX_TEE_TYPE {
        return Err(EvidenceError::QuoteTeeType { found: tee_type });
    }
    let body = match version {
        4 => TDX_QUOTE_HEADER_LEN,
        5 => {
            let (Some(body_type), Some(size)) = (
                u16_le(quote, TDX_QUOTE_HEADER_LEN),
                u32_le(quote, TDX_QUOTE_HEADER_LEN + 2),
            ) else {
                return Err(EvidenceError::QuoteDescriptorTooShort);
            };
            if !(body_type == 2 || body_type == 3) {
                return Err(EvidenceError::QuoteBodyType { found: body_type });
            }
            if (size as usize) < TDX_TD10_BODY_LEN {
                return Err(EvidenceError::QuoteBodySize { size });
            }
            TDX_QUOTE_HEADER_LEN + 6
        }
        found => return Err(EvidenceError::QuoteVersion { found }),
    };
    let body_too_short = EvidenceError::QuoteBodyTooShort {
        len: quote.len(),
        body,
    };
    if quote.len() < body + TDX_TD10_BODY_LEN {
        return Err(body_too_short);
    }
    let measured = slice_array::<TDX_MRCONFIGID_LEN>(quote, body + TDX_BODY_MRCONFIGID_OFFSET);
    let report_data = slice_array::<64>(quote, body + TDX_BODY_REPORTDATA_OFFSET);
    match (measured, report_data) {
        (Some(m), Some(r)) => Ok(ReportFields {
            measured: m.to_vec(),
            report_data: r,
        }),
        _ => Err(body_too_short),
    }
}

/// MRCONFIGID and REPORTDATA of a TDREPORT.
pub fn tdreport_fields(report: &[u8]) -> Result<ReportFields, EvidenceError> {
    let too_short = EvidenceError::TdreportTooShort { len: report.len() };
    if report.len() < TDREPORT_LEN {
        return Err(too_short);
    }
    match report.first() {
        Some(0x81) => {}
        kind => {
            return Err(EvidenceError::TdreportType {
                found: kind.copied().unwrap_or_default(),
            })
        }
    }
    let measured = slice_array::<TDX_MRCONFIGID_LEN>(report, TDREPORT_MRCONFIGID_OFFSET);
    let report_data = slice_array::<64>(report, TDREPORT_REPORTDATA_OFFSET);
    match (measured, report_data) {
        (Some(m), Some(r)) => Ok(ReportFields {
            measured: m.to_vec(),
            report_data: r,
        }),
        _ => Err(too_short),
    }
}

/// Reads what `src` reports, asking for a report bound to `expected` where the source makes
/// reports. Errors are [`AttestationError::EvidenceUnavailable`].
pub fn read_evidence(
    src: &EvidenceSource,
    expected: &[u8],
) -> Result<ReportedValue, AttestationError> {
    let (field, len) = src.field();
    let unavailable = |detail: EvidenceError| AttestationError::EvidenceUnavailable {
        evidence: src.to_string(),
        field,
        expected: to_hex(&len.map_or_else(|| expected.to_vec(), |l| fit(expected, l))),
        detail: Box::new(detail),
    };
    let report_data = evidence_report_data(expected);
    let fields =
        |parsed: Result<ReportFields, EvidenceError>| -> Result<Vec<u8>, AttestationError> {
            let f = parsed.map_err(&unavailable)?;
            if f.report_data != report_data {
                return Err(unavailable(EvidenceError::ReportDataMismatch {
                    found: to_hex(&f.report_data),
                    written: to_hex(&report_data),
                }));
            }
            Ok(f.measured)
        };
    let bytes = match src {
        EvidenceSource::SnpConfigfsTsm { tsm } => {
            let blob = tsm_outblob(tsm, SNP_PROVIDER, &report_data).map_err(&unavailable)?;
            fields(snp_report_fields(&blob))?
        }
        EvidenceSource::TdxConfigfsTsm { tsm } => {
            let blob = tsm_outblob(tsm, TDX_PROVIDER, &report_data).map_err(&unavailable)?;
            let m = fields(tdx_quote_fields(&blob))?;
            tracing::warn!(
                source = %src,
                "MRCONFIGID taken from a TD quote the host returned; its signature is not checked \
                 here, so prefer the `tdx` (TDREPORT) or `tdx-sysfs` evidence source"
            );
            m
        }
        EvidenceSource::TdxReport { device } => {
            let report = tdx_get_report(device, &report_data).map_err(&unavailable)?;
            fields(tdreport_fields(&report))?
        }
        EvidenceSource::TdxSysfs { path } => {
            let raw = read_file_bounded(path, SMALL_FILE_LIMIT, "a measurement register")
                .map_err(|e| unavailable(e.into()))?;
            decode_field_bytes(&raw, &[TDX_MRCONFIGID_LEN]).map_err(&unavailable)?
        }
        EvidenceSource::File { path } => {
            let raw = read_file_bounded(path, SMALL_FILE_LIMIT, "an evidence file")
                .map_err(|e| unavailable(e.into()))?;
            decode_field_bytes(&raw, &FILE_EVIDENCE_LENGTHS).map_err(&unavailable)?
        }
    };
    Ok(ReportedValue { field, bytes })
}

/// Compares `expected` (the full digest of the policy or initdata) with what `src` reports,
/// after fitting it to the reported field's size. Call before the listener opens.
pub fn check_evidence(src: &EvidenceSource, expected: &[u8]) -> Result<(), AttestationError> {
    let reported = read_evidence(src, expected)?;
    let len = reported.bytes.len();
    let want = fit(expected, len);
    if want == reported.bytes {
        tracing::info!(source = %src, field = reported.field, value = %to_hex(&want), "attestation evidence matches");
        return Ok(());
    }
    let note = if expected.len() > len {
        format!(": digest {} truncated to {len} bytes", to_hex(expected))
    } else if expected.len() < len {
        format!(": digest {} zero-padded to {len} bytes", to_hex(expected))
    } else {
        String::new()
    };
    Err(AttestationError::EvidenceMismatch {
        evidence: src.to_string(),
        field: reported.field,
        expected: to_hex(&want),
        reported: to_hex(&reported.bytes),
        note,
    })
}

/// Raw bytes of one of `lengths`, or hex text decoding to one of them.
fn decode_field_bytes(raw: &[u8], lengths: &[usize]) -> Result<Vec<u8>, EvidenceError> {
    if let Some(decoded) = std::str::from_utf8(raw).ok().and_then(decode_hex) {
        if lengths.contains(&decoded.len()) {
            return Ok(decoded);
        }
    }
    if lengths.contains(&raw.len()) {
        return Ok(raw.to_vec());
    }
    Err(EvidenceError::FieldLength {
        len: raw.len(),
        wanted: lengths.to_vec(),
    })
}

static NEXT_REPORT: AtomicU64 = AtomicU64::new(0);

/// Removes a report directory we made (configfs: rmdir releases the report).
struct FreshReportDir(PathBuf);

impl Drop for FreshReportDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "cannot remove configfs-tsm report directory");
        }
    }
}

/// Runs one configfs-tsm request and returns `outblob`.
fn tsm_outblob(
    tsm: &TsmReportDir,
    provider: &'static str,
    inblob: &[u8; 64],
) -> Result<Vec<u8>, EvidenceError> {
    let (_guard, dir) = match tsm {
        TsmReportDir::Fresh { root } => {
            let reports = root.join("report");
            if !reports.is_dir() {
                return Err(EvidenceError::NoTsm { reports });
            }
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let n = NEXT_REPORT.fetch_add(1, Ordering::Relaxed);
            let dir = reports.join(format!("agent-warden-{}-{nanos}-{n}", std::process::id()));
            std::fs::create_dir(&dir).map_err(EvidenceError::io(&dir, "create"))?;
            (Some(FreshReportDir(dir.clone())), dir)
        }
        TsmReportDir::Existing { dir } => (None, dir.clone()),
    };
    let attr = |name: &str| dir.join(name);
    let text = |name: &str| -> Result<Option<String>, EvidenceError> {
        match read_file_bounded(&attr(name), SMALL_FILE_LIMIT, "a configfs-tsm attribute") {
            Ok(b) => Ok(Some(String::from_utf8_lossy(&b).trim().to_string())),
            Err(AttestationError::Io { err, .. }) if err.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    };
    let found = text("provider")?.ok_or_else(|| EvidenceError::NotReportDir {
        provider: attr("provider"),
    })?;
    if found != provider {
        return Err(EvidenceError::WrongProvider {
            path: attr("provider"),
            found,
            expected: provider,
        });
    }
    // A guest running above VMPL0 (SNP under an SVSM) cannot get a report at a more
    // privileged level than its own; ask at the floor the provider advertises.
    if let Some(floor) = text("privlevel_floor")? {
        if !floor.is_empty() && floor != "0" {
            std::fs::write(attr("privlevel"), &floor)
                .map_err(EvidenceError::io(&attr("privlevel"), "write"))?;
        }
    }
    std::fs::write(attr("inblob"), inblob).map_err(EvidenceError::io(&attr("inblob"), "write"))?;
    let before = text("generation")?;
    let outblob = read_file_bounded(&attr("outblob"), OUTBLOB_LIMIT, "a configfs-tsm outblob")?;
    let after = text("generation")?;
    if before != after {
        return Err(EvidenceError::GenerationChanged {
            path: attr("generation"),
            before,
            after,
        });
    }
    Ok(outblob)
}

/// `TDX_CMD_GET_REPORT0` on the TDX guest device: the TDREPORT for `report_data`.
fn tdx_get_report(device: &Path, report_data: &[u8; 64]) -> Result<Vec<u8>, EvidenceError> {
    use std::os::fd::AsRawFd;

    /// `struct tdx_report_req` from linux/tdx-guest.h.
    #[repr(C)]
    struct TdxReportReq {
        reportdata: [u8; 64],
        tdreport: [u8; TDREPORT_LEN],
    }
    const _: () = assert!(std::mem::size_of::<TdxReportReq>() == 64 + TDREPORT_LEN);
    /// `_IOWR('T', 1, struct tdx_report_req)`: dir 3 << 30 | size 1088 << 16 | 'T' << 8 | 1.
    const TDX_CMD_GET_REPORT0: u64 =
        (3 << 30) | ((64 + TDREPORT_LEN as u64) << 16) | ((b'T' as u64) << 8) | 1;

    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(EvidenceError::io(device, "open"))?;
    let mut req = TdxReportReq {
        reportdata: *report_data,
        tdreport: [0; TDREPORT_LEN],
    };
    // SAFETY: `req` is a live, exclusively borrowed `struct tdx_report_req` (same layout, size
    // checked above) for the whole call; the kernel reads `reportdata` and writes `tdreport`
    // within it. The fd stays open because `file` lives past the call.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            TDX_CMD_GET_REPORT0 as _,
            &mut req as *mut TdxReportReq,
        )
    };
    if rc < 0 {
        return Err(EvidenceError::Ioctl {
            device: device.to_path_buf(),
            err: std::io::Error::last_os_error(),
        });
    }
    Ok(req.tdreport.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_number_matches_the_uapi() {
        // _IOWR('T', 1, struct tdx_report_req) with sizeof == 1088.
        assert_eq!((3u64 << 30) | (1088 << 16) | (0x54 << 8) | 1, 0xC440_5401);
    }

    #[test]
    fn field_bytes_decoding() {
        let raw48 = [0xabu8; 48];
        assert_eq!(decode_field_bytes(&raw48, &[48]).unwrap(), raw48.to_vec());
        let hex = format!("{}\n", to_hex(&raw48));
        assert_eq!(
            decode_field_bytes(hex.as_bytes(), &[48]).unwrap(),
            raw48.to_vec()
        );
        assert!(decode_field_bytes(&[1, 2, 3], &[48]).is_err());
        assert!(decode_field_bytes(to_hex(&[1u8; 32]).as_bytes(), &[48]).is_err());
        // 32 ASCII 'a's: hex of 16 bytes (not allowed) but a valid raw 32-byte value.
        assert_eq!(
            decode_field_bytes(&[b'a'; 32], &[32, 48, 64]).unwrap(),
            vec![b'a'; 32]
        );
    }

    #[test]
    fn tdreport_parsing() {
        let mut r = vec![0u8; TDREPORT_LEN];
        r[0] = 0x81;
        r[TDREPORT_MRCONFIGID_OFFSET..TDREPORT_MRCONFIGID_OFFSET + 48].fill(7);
        r[TDREPORT_REPORTDATA_OFFSET..TDREPORT_REPORTDATA_OFFSET + 64].fill(9);
        let f = tdreport_fields(&r).unwrap();
        assert_eq!(f.measured, vec![7; 48]);
        assert_eq!(f.report_data, [9; 64]);
        r[0] = 0;
        let e = tdreport_fields(&r).unwrap_err();
        assert!(
            matches!(e, EvidenceError::TdreportType { found: 0 }),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "TDREPORT type is 0x00, expected 0x81 (TDX)");
        assert!(matches!(
            tdreport_fields(&r[..100]),
            Err(EvidenceError::TdreportTooShort { len: 100 })
        ));
        assert!(tdreport_fields(&[]).is_err());
    }

    #[test]
    fn tdx_ioctl_on_a_regular_file_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tdx_guest");
        std::fs::write(&p, b"").unwrap();
        let err = tdx_get_report(&p, &[0; 64]).unwrap_err();
        assert!(matches!(err, EvidenceError::Ioctl { .. }), "{err:?}");
        assert!(err.to_string().contains("TDX_CMD_GET_REPORT0"), "{err}");
        let err = tdx_get_report(&dir.path().join("none"), &[0; 64]).unwrap_err();
        assert!(
            matches!(&err, EvidenceError::Io { action: "open", err, .. }
                if err.kind() == std::io::ErrorKind::NotFound),
            "{err:?}"
        );
        assert!(err.to_string().contains("cannot open"), "{err}");
    }
}
