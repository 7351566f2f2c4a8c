//! The measured digest and the forms each hypervisor takes it in.

use std::path::Path;

use base64::Engine as _;

use super::initdata::{load_measured_document, Algorithm, MeasuredDocument};
use super::{to_hex, AttestationError};

/// `algorithm` over `raw` (for initdata: the decompressed TOML bytes, exactly as kata's shim
/// and the attestation agent hash them).
pub fn digest(algorithm: Algorithm, raw: &[u8]) -> Vec<u8> {
    algorithm.digest(raw)
}

/// `digest` truncated, or zero-padded on the right, to `len` bytes: how a digest is placed in
/// a fixed-size TEE field (SNP HOSTDATA 32, TDX MRCONFIGID 48).
pub fn fit(digest: &[u8], len: usize) -> Vec<u8> {
    let mut v = digest.get(..len).unwrap_or(digest).to_vec();
    v.resize(len, 0);
    v
}

fn fit_array<const N: usize>(digest: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    for (dst, src) in a.iter_mut().zip(digest) {
        *dst = *src;
    }
    a
}

/// One digest in every form a hypervisor or verifier may want.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestForms {
    /// The full digest.
    pub digest: Vec<u8>,
    /// Hex of the full digest.
    pub hex: String,
    /// SNP HOST_DATA: the digest truncated or zero-padded to 32 bytes.
    pub snp_hostdata: [u8; 32],
    /// TDX MRCONFIGID: the digest truncated or zero-padded to 48 bytes.
    pub tdx_mrconfigid: [u8; 48],
    /// Base64 (standard, padded) of `snp_hostdata`: QEMU `sev-snp-guest,host-data=`.
    pub qemu_host_data_b64: String,
    /// Base64 of `tdx_mrconfigid`: QEMU `tdx-guest,mrconfigid=`.
    pub qemu_mrconfigid_b64: String,
}

impl DigestForms {
    pub fn new(digest: &[u8]) -> DigestForms {
        let snp_hostdata = fit_array::<32>(digest);
        let tdx_mrconfigid = fit_array::<48>(digest);
        let b64 = base64::engine::general_purpose::STANDARD;
        DigestForms {
            digest: digest.to_vec(),
            hex: to_hex(digest),
            snp_hostdata,
            tdx_mrconfigid,
            qemu_host_data_b64: b64.encode(snp_hostdata),
            qemu_mrconfigid_b64: b64.encode(tdx_mrconfigid),
        }
    }
}

/// The `agent-warden policy hash` report for `path`, an initdata document (TOML, gzip, or
/// image) or a plain policy file: one labelled form per line.
pub fn hash_report(path: &Path) -> Result<String, AttestationError> {
    let doc = load_measured_document(path)?;
    Ok(render_report(path, &doc))
}

/// The report text for an already-loaded document.
pub fn render_report(path: &Path, doc: &MeasuredDocument) -> String {
    let forms = DigestForms::new(&doc.digest());
    let mut out = String::new();
    let mut line = |label: &str, value: &str| {
        out.push_str(label);
        out.push_str(": ");
        out.push_str(value);
        out.push('\n');
    };
    line("file", &path.display().to_string());
    match doc {
        MeasuredDocument::Initdata(i) => {
            line(
                "kind",
                &format!("initdata {} (digest of the decompressed TOML)", i.version),
            );
            let policy = match &i.policy {
                Some(p) => format!("present ({} bytes)", p.len()),
                None => "absent".to_string(),
            };
            line("policy.rego", &policy);
            let config = if i.warden_config.is_some() {
                "present"
            } else {
                "absent"
            };
            line("agent-warden.toml", config);
        }
        MeasuredDocument::PlainPolicy(_) => {
            line("kind", "plain policy (sha256 of the file's bytes)");
        }
    }
    line("algorithm", doc.algorithm().name());
    line("digest (hex)", &forms.hex);
    line("snp hostdata (hex, 32 bytes)", &to_hex(&forms.snp_hostdata));
    line(
        "tdx mrconfigid (hex, 48 bytes)",
        &to_hex(&forms.tdx_mrconfigid),
    );
    line("qemu host-data (base64)", &forms.qemu_host_data_b64);
    line("qemu mrconfigid (base64)", &forms.qemu_mrconfigid_b64);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_truncates_and_pads() {
        assert_eq!(fit(&[1, 2, 3], 2), vec![1, 2]);
        assert_eq!(fit(&[1, 2, 3], 5), vec![1, 2, 3, 0, 0]);
        assert_eq!(fit(&[], 3), vec![0, 0, 0]);
        assert_eq!(fit(&[9; 4], 4), vec![9; 4]);
    }

    #[test]
    fn forms_of_each_length() {
        for len in [32usize, 48, 64] {
            let d: Vec<u8> = (1..=len as u8).collect();
            let f = DigestForms::new(&d);
            assert_eq!(f.hex.len(), 2 * len);
            assert_eq!(&f.snp_hostdata[..], &d[..32]);
            assert_eq!(&f.tdx_mrconfigid[..len.min(48)], &d[..len.min(48)]);
            assert!(f.tdx_mrconfigid[len.min(48)..].iter().all(|b| *b == 0));
            assert_eq!(f.qemu_host_data_b64.len(), 44);
            assert_eq!(f.qemu_mrconfigid_b64.len(), 64);
        }
    }
}
