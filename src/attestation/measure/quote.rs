//! TPM 2.0 quotes: parses the TPMS_ATTEST that `tpm2_quote -m FILE` writes (the bytes the
//! attestation key signs) into its quoted PCR selection and pcrDigest, and checks an expected
//! PCR value against it.
//!
//! This checks the digest only. Whether the TPMS_ATTEST was really signed by a trusted
//! attestation key (and carries the verifier's nonce in `extraData`) is the signature
//! check's job: `tpm2_checkquote -u ak.pub -m msg -s sig -q NONCE`, or the verifier's own.
//! `log verify` combines the two: the signature says the TPM produced this digest, this module
//! says the digest is the PCR value the decision log predicts.
//!
//! Layout (TPM 2.0 Part 2, 10.12.12): magic u32 (`TPM_GENERATED_VALUE`), type u16
//! (`TPM_ST_ATTEST_QUOTE`), qualifiedSigner TPM2B_NAME, extraData TPM2B_DATA, clockInfo
//! (clock u64, resetCount u32, restartCount u32, safe u8), firmwareVersion u64, then
//! TPMS_QUOTE_INFO: pcrSelect TPML_PCR_SELECTION, pcrDigest TPM2B_DIGEST. All big-endian.

use sha2::Digest;

/// `TPM_GENERATED_VALUE`, the first four bytes of anything the TPM signs.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
/// `TPM_ALG_SHA256`.
pub const TPM_ALG_SHA256: u16 = 0x000B;
/// `TPM_ALG_SHA384`.
pub const TPM_ALG_SHA384: u16 = 0x000C;

/// Why a quote could not be parsed or checked.
#[derive(Debug, thiserror::Error)]
pub enum QuoteError {
    #[error("TPM quote: {0}")]
    Malformed(String),
    #[error("TPM quote: {0}")]
    Unsupported(String),
    #[error("TPM quote: {0}")]
    Mismatch(String),
}

/// One bank's part of a PCR selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    /// The bank's hash algorithm (`TPM_ALG_*`).
    pub hash_alg: u16,
    /// The selected PCR indices, ascending.
    pub pcrs: Vec<u32>,
}

/// The fields of a quote's TPMS_ATTEST that a verifier needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// The attestation key's qualified name.
    pub qualified_signer: Vec<u8>,
    /// The caller's qualifying data (the verifier's nonce).
    pub extra_data: Vec<u8>,
    /// TPMS_CLOCK_INFO.resetCount: a verifier can tell a TPM reset between two quotes.
    pub reset_count: u32,
    /// TPMS_CLOCK_INFO.restartCount.
    pub restart_count: u32,
    /// The quoted PCRs, bank by bank in the order the digest covers them.
    pub selection: Vec<PcrSelection>,
    /// The hash (with the signing scheme's algorithm) over the selected PCR values,
    /// concatenated in selection order.
    pub pcr_digest: Vec<u8>,
}

/// A bounds-checked big-endian reader over a TPM structure.
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, at: 0 }
    }
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    pub(crate) fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    /// A TPM2B: u16 size, then that many bytes.
    pub(crate) fn sized(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n as usize)
    }
    fn at(&self) -> usize {
        self.at
    }
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.at)
    }
}

/// Reads a TPML_PCR_SELECTION.
pub(crate) fn read_selection(r: &mut Cursor<'_>) -> Result<Vec<PcrSelection>, String> {
    let at = r.at();
    let count = r
        .u32()
        .ok_or_else(|| format!("truncated PCR selection count at byte {at}"))?;
    // TPM2 allows at most HASH_COUNT banks; 16 is generous and bounds the loop.
    if count > 16 {
        return Err(format!(
            "PCR selection count {count} at byte {at} is implausible"
        ));
    }
    let mut out = Vec::new();
    for _ in 0..count {
        let at = r.at();
        let short = || format!("truncated PCR selection at byte {at}");
        let hash_alg = r.u16().ok_or_else(short)?;
        let size = r.u8().ok_or_else(short)?;
        let bits = r.take(size as usize).ok_or_else(short)?;
        let pcrs = bits
            .iter()
            .enumerate()
            .flat_map(|(i, b)| {
                (0..8)
                    .filter(move |k| b & (1 << k) != 0)
                    .map(move |k| (i * 8 + k) as u32)
            })
            .collect();
        out.push(PcrSelection { hash_alg, pcrs });
    }
    Ok(out)
}

/// Parses a TPMS_ATTEST of type quote. A TPM2B_ATTEST (the same bytes after a u16 size, as
/// some tools save it) is accepted too.
pub fn parse_quote(attest: &[u8]) -> Result<Quote, QuoteError> {
    let body = match attest {
        [a, b, rest @ ..]
            if rest.len() >= 4
                && u16::from_be_bytes([*a, *b]) as usize == rest.len()
                && rest.starts_with(&TPM_GENERATED_VALUE.to_be_bytes()) =>
        {
            rest
        }
        _ => attest,
    };
    let mut r = Cursor::new(body);
    let bad =
        |what: &str, at: usize| QuoteError::Malformed(format!("truncated {what} at byte {at}"));
    let magic = r.u32().ok_or_else(|| bad("magic", 0))?;
    if magic != TPM_GENERATED_VALUE {
        return Err(QuoteError::Malformed(format!(
            "magic is {magic:#010x}, not TPM_GENERATED_VALUE {TPM_GENERATED_VALUE:#010x} (is this the -m message file of tpm2_quote?)"
        )));
    }
    let kind = r.u16().ok_or_else(|| bad("type", 4))?;
    if kind != TPM_ST_ATTEST_QUOTE {
        return Err(QuoteError::Malformed(format!(
            "attestation type is {kind:#06x}, not a quote ({TPM_ST_ATTEST_QUOTE:#06x})"
        )));
    }
    let qualified_signer = r.sized().ok_or_else(|| bad("qualifiedSigner", 6))?.to_vec();
    let at = r.at();
    let extra_data = r.sized().ok_or_else(|| bad("extraData", at))?.to_vec();
    let at = r.at();
    r.skip(8).ok_or_else(|| bad("clockInfo.clock", at))?;
    let reset_count = r.u32().ok_or_else(|| bad("clockInfo.resetCount", at + 8))?;
    let restart_count = r
        .u32()
        .ok_or_else(|| bad("clockInfo.restartCount", at + 12))?;
    r.skip(1).ok_or_else(|| bad("clockInfo.safe", at + 16))?;
    r.skip(8).ok_or_else(|| bad("firmwareVersion", at + 17))?;
    let selection = read_selection(&mut r).map_err(QuoteError::Malformed)?;
    let at = r.at();
    let pcr_digest = r.sized().ok_or_else(|| bad("pcrDigest", at))?.to_vec();
    if r.remaining() != 0 {
        return Err(QuoteError::Malformed(format!(
            "{} bytes follow the pcrDigest",
            r.remaining()
        )));
    }
    Ok(Quote {
        qualified_signer,
        extra_data,
        reset_count,
        restart_count,
        selection,
        pcr_digest,
    })
}

/// The pcrDigest a quote carries for `values` (the selected PCRs' values in selection
/// order), with the hash a `digest_len`-byte pcrDigest implies (32: sha256, 48: sha384).
pub fn pcr_digest(values: &[&[u8]], digest_len: usize) -> Result<Vec<u8>, QuoteError> {
    match digest_len {
        32 => {
            let mut d = sha2::Sha256::new();
            values.iter().for_each(|v| d.update(v));
            Ok(d.finalize().to_vec())
        }
        48 => {
            let mut d = sha2::Sha384::new();
            values.iter().for_each(|v| d.update(v));
            Ok(d.finalize().to_vec())
        }
        n => Err(QuoteError::Unsupported(format!(
            "a {n}-byte pcrDigest (only sha256 and sha384 signing schemes are supported)"
        ))),
    }
}

/// Whether the quote in `attest` (a TPMS_ATTEST, as `tpm2_quote -m` writes it) covers exactly
/// sha256 PCR `pcr_index` and its pcrDigest is the digest of `expected_pcr_value`.
///
/// `Ok(false)` is a well-formed quote of that PCR whose digest differs (the log and the
/// register disagree); an error is a quote that cannot answer the question (malformed, or a
/// selection other than that one PCR: select only it, `tpm2_quote -l sha256:N`).
/// This does not check the signature (see the module comment).
pub fn pcr_digest_matches(
    attest: &[u8],
    pcr_index: u32,
    expected_pcr_value: &[u8],
) -> Result<bool, QuoteError> {
    let q = parse_quote(attest)?;
    let only_that_pcr = match q
        .selection
        .iter()
        .filter(|s| !s.pcrs.is_empty())
        .collect::<Vec<_>>()[..]
    {
        [s] => s.hash_alg == TPM_ALG_SHA256 && s.pcrs == [pcr_index],
        _ => false,
    };
    if !only_that_pcr {
        return Err(QuoteError::Unsupported(format!(
            "the quote selects {}, not exactly sha256 PCR {pcr_index} (quote with -l sha256:{pcr_index})",
            describe_selection(&q.selection)
        )));
    }
    if expected_pcr_value.len() != 32 {
        return Err(QuoteError::Unsupported(format!(
            "the expected value of sha256 PCR {pcr_index} is {} bytes, not 32",
            expected_pcr_value.len()
        )));
    }
    Ok(pcr_digest(&[expected_pcr_value], q.pcr_digest.len())? == q.pcr_digest)
}

/// [`pcr_digest_matches`] as a check: a mismatch is an error naming the PCR, the expected
/// value, the digest it gives and the quote's pcrDigest (for `log verify --quote`).
pub fn require_pcr_digest(
    attest: &[u8],
    pcr_index: u32,
    expected_pcr_value: &[u8],
) -> Result<(), QuoteError> {
    if pcr_digest_matches(attest, pcr_index, expected_pcr_value)? {
        return Ok(());
    }
    let q = parse_quote(attest)?;
    let want = pcr_digest(&[expected_pcr_value], q.pcr_digest.len())?;
    Err(QuoteError::Mismatch(format!(
        "the quote's pcrDigest is {} but sha256 PCR {pcr_index} = {} (what the log predicts) gives {}",
        crate::attestation::to_hex(&q.pcr_digest),
        crate::attestation::to_hex(expected_pcr_value),
        crate::attestation::to_hex(&want)
    )))
}

/// `sha256:[23] sha384:[0, 1]`, for messages.
pub fn describe_selection(selection: &[PcrSelection]) -> String {
    let parts: Vec<String> = selection
        .iter()
        .filter(|s| !s.pcrs.is_empty())
        .map(|s| {
            let bank = match s.hash_alg {
                0x0004 => "sha1".to_string(),
                TPM_ALG_SHA256 => "sha256".to_string(),
                TPM_ALG_SHA384 => "sha384".to_string(),
                0x000D => "sha512".to_string(),
                other => format!("alg {other:#06x}"),
            };
            format!("{bank}:{:?}", s.pcrs)
        })
        .collect();
    if parts.is_empty() {
        "no PCRs".into()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A quote of sha256 PCR 23 as swtpm 0.7 produced it through `tpm2_quote -m`
    /// (PCR 23 extended once with 32 bytes of 0x01, qualifying data abcd).
    const SWTPM_QUOTE: &str = "ff54434780180022000b83064668501c7ba0fd83ebd7c1a528f666fcab338559bca13c82b5f06890ff8b0002abcd0000000000002175000000010000000001201910230016363600000001000b030000800020705ede9d42476fc3e5a978b042ce790a193678f46d19f47ec4ab46539c47b76d";

    fn quote_bytes() -> Vec<u8> {
        crate::attestation::decode_hex(SWTPM_QUOTE).unwrap()
    }

    fn pcr23_value() -> Vec<u8> {
        let mut d = sha2::Sha256::new();
        d.update([0u8; 32]);
        d.update([1u8; 32]);
        d.finalize().to_vec()
    }

    #[test]
    fn parses_a_real_quote() {
        let q = parse_quote(&quote_bytes()).unwrap();
        assert_eq!(q.extra_data, vec![0xab, 0xcd]);
        assert_eq!(q.reset_count, 1);
        assert_eq!(
            q.selection,
            vec![PcrSelection {
                hash_alg: TPM_ALG_SHA256,
                pcrs: vec![23]
            }]
        );
        assert_eq!(q.pcr_digest, pcr_digest(&[&pcr23_value()], 32).unwrap());
    }

    #[test]
    fn matches_the_right_value_only() {
        let quote = quote_bytes();
        assert!(pcr_digest_matches(&quote, 23, &pcr23_value()).unwrap());
        assert!(!pcr_digest_matches(&quote, 23, &[0u8; 32]).unwrap());
        require_pcr_digest(&quote, 23, &pcr23_value()).unwrap();
        let err = require_pcr_digest(&quote, 23, &[0u8; 32])
            .unwrap_err()
            .to_string();
        assert!(err.contains("705ede9d") && err.contains("PCR 23"), "{err}");
        let err = pcr_digest_matches(&quote, 16, &pcr23_value()).unwrap_err();
        assert!(err.to_string().contains("sha256:[23]"), "{err}");
        // The TPM2B form is accepted too.
        let mut sized = (quote.len() as u16).to_be_bytes().to_vec();
        sized.extend_from_slice(&quote);
        assert!(pcr_digest_matches(&sized, 23, &pcr23_value()).unwrap());
    }

    #[test]
    fn malformed_quotes_are_errors() {
        let quote = quote_bytes();
        for cut in [0, 3, 5, 30, 60, quote.len() - 1] {
            let err = parse_quote(&quote[..cut]).unwrap_err();
            assert!(err.to_string().contains("truncated"), "cut {cut}: {err}");
        }
        let mut long = quote.clone();
        long.push(0);
        assert!(parse_quote(&long)
            .unwrap_err()
            .to_string()
            .contains("follow"));
        let mut bad_magic = quote.clone();
        bad_magic[0] = 0;
        assert!(parse_quote(&bad_magic)
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let mut certify = quote;
        certify[5] = 0x17; // TPM_ST_ATTEST_CERTIFY
        assert!(parse_quote(&certify)
            .unwrap_err()
            .to_string()
            .contains("not a quote"));
    }
}
