//! The TPM 2.0 PCR register against a real software TPM (swtpm on a unix socket): extends
//! through `attestation::measure`, reads back through it and through `tpm2_pcrread`, and
//! checks a `tpm2_quote` of the PCR with the quote parser (and its signature with
//! `tpm2_checkquote`). Without swtpm/tpm2-tools the tests skip with a reason, except under
//! CI=true, where they fail.

mod swtpm;

use agent_warden::attestation::measure::{self, quote, RegisterKind};
use sha2::Digest;
use swtpm::Swtpm;

use swtpm::QUOTE_TOOLS as TOOLS;

fn chain(n: u8) -> Vec<[u8; 32]> {
    (0..n)
        .map(|i| sha2::Sha256::digest(format!("decision record {i}")).into())
        .collect()
}

#[test]
fn extends_read_back_by_the_register_tpm2_tools_and_a_quote() {
    if let Some(reason) = swtpm::missing_tools(TOOLS) {
        return swtpm::unavailable("measure_tpm", &reason);
    }
    let tpm = Swtpm::start();
    let spec = format!("tpm:pcr=23,device={}", tpm.socket().display());
    let mut reg = measure::open(&spec).unwrap();
    assert_eq!(reg.kind(), RegisterKind::Tpm);
    assert_eq!(reg.describe(), spec);
    let start = reg.read().unwrap().expect("a TPM PCR can be read");
    assert_eq!(start, vec![0u8; 32], "a fresh swtpm's PCR 23 is zero");

    let hashes = chain(5);
    for h in &hashes {
        reg.extend(h).unwrap();
    }
    let want = measure::expected(RegisterKind::Tpm, &start, &hashes);
    assert_ne!(want, start);
    assert_eq!(
        reg.read().unwrap(),
        Some(want.clone()),
        "read back through the register"
    );

    // The same value through tpm2-tools.
    tpm.tool("tpm2_pcrread", &["sha256:23", "-o", "pcr23.bin"]);
    let by_tools = std::fs::read(tpm.dir().join("pcr23.bin")).unwrap();
    assert_eq!(by_tools, want, "tpm2_pcrread disagrees with expected()");
    // A cut chain predicts another value.
    assert_ne!(
        measure::expected(RegisterKind::Tpm, &start, &hashes[..4]),
        by_tools
    );

    // A quote of PCR 23 by an attestation key, its signature checked by tpm2_checkquote.
    let nonce = "5eed0123456789ab";
    let attest = tpm.quote(23, nonce);
    let q = quote::parse_quote(&attest).unwrap();
    assert_eq!(
        q.extra_data,
        agent_warden::attestation::decode_hex(nonce).unwrap()
    );
    assert_eq!(
        q.selection,
        vec![quote::PcrSelection {
            hash_alg: quote::TPM_ALG_SHA256,
            pcrs: vec![23]
        }]
    );
    assert_eq!(q.pcr_digest, sha2::Sha256::digest(&want).to_vec());
    assert!(quote::pcr_digest_matches(&attest, 23, &want).unwrap());
    let cut = measure::expected(RegisterKind::Tpm, &start, &hashes[..4]);
    assert!(!quote::pcr_digest_matches(&attest, 23, &cut).unwrap());
    let err = quote::require_pcr_digest(&attest, 23, &cut).unwrap_err();
    assert!(matches!(err, quote::QuoteError::Mismatch(_)), "{err}");
    assert_eq!(measure::tpm::pcr_of(&reg.describe()), Some(23));
}

#[test]
fn refused_extends_name_the_pcr_and_the_response_code() {
    if let Some(reason) = swtpm::missing_tools(&[]) {
        return swtpm::unavailable("measure_tpm", &reason);
    }
    let tpm = Swtpm::start();
    // PCR 17 (DRTM) cannot be extended from locality 0.
    let spec = format!("tpm:pcr=17,device={}", tpm.socket().display());
    let mut reg = measure::open(&spec).unwrap();
    let err = reg.extend(&[1u8; 32]).unwrap_err().to_string();
    assert!(err.contains("PCR 17"), "{err}");
    assert!(err.contains("TPM2_PCR_Extend"), "{err}");
    assert!(err.contains("response code 0x"), "{err}");
    assert!(err.contains("LOCALITY"), "{err}");
}

#[test]
fn a_dead_tpm_is_an_error_not_a_hang() {
    if let Some(reason) = swtpm::missing_tools(&[]) {
        return swtpm::unavailable("measure_tpm", &reason);
    }
    let tpm = Swtpm::start();
    let socket = tpm.socket().to_path_buf();
    let mut reg = measure::open(&format!("tpm:pcr=23,device={}", socket.display())).unwrap();
    drop(tpm);
    let err = reg.extend(&[1u8; 32]).unwrap_err().to_string();
    assert!(
        err.contains("PCR 23") && err.contains("swtpm socket"),
        "{err}"
    );
}
