//! A TPM 2.0 PCR (sha256 bank) as a measurement register: TPM2_PCR_Extend and TPM2_PCR_Read
//! sent as raw command buffers to the kernel's resource manager (`/dev/tpmrm0`) or to an swtpm
//! unix socket (`swtpm socket --tpm2 --server type=unixio,path=...`, which carries the same
//! raw command bytes).
//!
//! Why raw commands and not a TSS crate: the two commands are small fixed structures (an
//! extend is 65 bytes, a read 20), and the rust TSS (`tss-esapi`) links the tpm2-tss C
//! libraries (libtss2-esys and friends), which a minimal confidential guest image would then
//! have to carry and keep patched. Every response code is checked; an error names the PCR,
//! the device and the TPM's response code.
//!
//! A device is opened once and kept open (the kernel resource manager multiplexes clients).
//! An swtpm socket is connected per command, because swtpm serves one client at a time and a
//! held connection would lock out `tpm2_pcrread`/`tpm2_quote`.

use super::{MeasureError, Params, Register, RegisterKind};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The kernel's TPM resource manager device.
pub const DEFAULT_DEVICE: &str = "/dev/tpmrm0";
/// PCR 23, the TCG PC Client profile's "application support" PCR (docs/SECURITY.md says why).
pub const DEFAULT_PCR: u32 = 23;
/// The highest PCR index a PC Client TPM has.
pub const MAX_PCR: u32 = 23;

const TPM_ST_NO_SESSIONS: u16 = 0x8001;
const TPM_ST_SESSIONS: u16 = 0x8002;
const TPM_CC_PCR_EXTEND: u32 = 0x0000_0182;
const TPM_CC_PCR_READ: u32 = 0x0000_017E;
/// The password authorization session handle.
const TPM_RS_PW: u32 = 0x4000_0009;
const TPM_ALG_SHA256: u16 = 0x000B;
/// Responses here are far smaller; a larger declared size is a broken peer.
const MAX_RESPONSE: usize = 4096;
/// How long an swtpm socket may take to answer one command.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// Response codes that mean "try again" (TPM_RC_RETRY, TPM_RC_YIELDED, TPM_RC_TESTING).
const RETRY_CODES: [u32; 3] = [0x922, 0x908, 0x90A];

enum Transport {
    Device(File),
    Socket(PathBuf),
}

/// One PCR of a TPM's sha256 bank.
pub struct TpmPcr {
    pcr: u32,
    device: PathBuf,
    transport: Transport,
}

impl TpmPcr {
    pub(crate) fn from_params(spec: &str, params: &Params<'_>) -> Result<Self, MeasureError> {
        params.only(&["pcr", "device"])?;
        let pcr = params.index("pcr", MAX_PCR, DEFAULT_PCR)?;
        let device = params.get("device").unwrap_or(DEFAULT_DEVICE);
        if device.is_empty() {
            return Err(super::spec_error(spec, "device= is empty"));
        }
        Self::open(pcr, Path::new(device))
    }

    /// Opens PCR `pcr` on a TPM character device or an swtpm unix socket.
    pub fn open(pcr: u32, device: &Path) -> Result<Self, MeasureError> {
        let register = format!("tpm:pcr={pcr},device={}", device.display());
        let err = |message: String| MeasureError::Device {
            register: register.clone(),
            message,
        };
        if pcr > MAX_PCR {
            return Err(err(format!("PCR {pcr} is out of range (0 to {MAX_PCR})")));
        }
        let meta = std::fs::metadata(device)
            .map_err(|e| err(format!("PCR {pcr}: cannot open the TPM device: {e}")))?;
        let transport = if meta.file_type().is_socket() {
            Transport::Socket(device.to_path_buf())
        } else {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(device)
                .map_err(|e| err(format!("PCR {pcr}: cannot open the TPM device: {e}")))?;
            Transport::Device(file)
        };
        Ok(TpmPcr {
            pcr,
            device: device.to_path_buf(),
            transport,
        })
    }

    /// The PCR index.
    pub fn pcr(&self) -> u32 {
        self.pcr
    }

    fn error(&self, message: String) -> MeasureError {
        MeasureError::Device {
            register: self.describe(),
            message,
        }
    }

    /// Sends one command and returns the response after checking its header and response
    /// code. Retries a few times on the TPM's "try again" codes.
    fn command(&mut self, name: &str, cmd: &[u8]) -> Result<Vec<u8>, MeasureError> {
        let mut attempts = 0;
        loop {
            let resp = self
                .transact(cmd)
                .map_err(|e| self.error(format!("{name} on PCR {}: {e}", self.pcr)))?;
            let rc = be_u32(&resp, 6).unwrap_or(u32::MAX);
            if rc == 0 {
                return Ok(resp);
            }
            attempts += 1;
            if RETRY_CODES.contains(&rc) && attempts < 5 {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            return Err(self.error(format!(
                "{name} on PCR {}: the TPM answered with response code {rc:#010x} ({})",
                self.pcr,
                describe_rc(rc)
            )));
        }
    }

    /// Writes `cmd`, reads one whole response (at least the 10-byte header, and as many bytes
    /// as the header declares).
    fn transact(&mut self, cmd: &[u8]) -> Result<Vec<u8>, String> {
        match &mut self.transport {
            Transport::Device(file) => {
                // One write per command, one read per response: how the TPM character
                // devices want to be driven.
                file.write_all(cmd).map_err(|e| format!("write: {e}"))?;
                read_response(file)
            }
            Transport::Socket(path) => {
                let mut s = UnixStream::connect(&*path)
                    .map_err(|e| format!("connect to the swtpm socket: {e}"))?;
                s.set_read_timeout(Some(SOCKET_TIMEOUT))
                    .and_then(|()| s.set_write_timeout(Some(SOCKET_TIMEOUT)))
                    .map_err(|e| format!("set socket timeouts: {e}"))?;
                s.write_all(cmd).map_err(|e| format!("write: {e}"))?;
                read_response(&mut s)
            }
        }
    }
}

fn read_response(r: &mut impl Read) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; MAX_RESPONSE];
    let mut have = 0;
    loop {
        let want = if have >= 10 {
            let size = be_u32(&buf, 2).unwrap_or(0) as usize;
            if !(10..=MAX_RESPONSE).contains(&size) {
                return Err(format!(
                    "the response header declares {size} bytes (expected 10 to {MAX_RESPONSE})"
                ));
            }
            size
        } else {
            10
        };
        if have >= want {
            if have > want {
                return Err(format!("{have} bytes arrived for a {want}-byte response"));
            }
            buf.truncate(want);
            let tag = buf
                .get(..2)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u16::from_be_bytes);
            if tag != TPM_ST_NO_SESSIONS && tag != TPM_ST_SESSIONS {
                return Err(format!(
                    "the response has tag {tag:#06x}, not a TPM 2.0 one"
                ));
            }
            return Ok(buf);
        }
        let rest = buf.get_mut(have..).unwrap_or_default();
        let n = r
            .read(rest)
            .map_err(|e| format!("read after {have} bytes of the response: {e}"))?;
        if n == 0 {
            return Err(format!(
                "the TPM closed the connection after {have} bytes of the response"
            ));
        }
        have += n;
    }
}

/// The big-endian u32 at `at`, if the buffer holds it.
fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        buf.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The PCR index of a `tpm:` spec or [`Register::describe`] text (`tpm:pcr=23,device=...`;
/// [`DEFAULT_PCR`] when it names none); `None` for other kinds or a bad index.
pub fn pcr_of(spec: &str) -> Option<u32> {
    let rest = spec.strip_prefix("tpm:")?;
    let params = Params::parse(spec, rest).ok()?;
    params.index("pcr", MAX_PCR, DEFAULT_PCR).ok()
}

/// A short reading of a TPM 2.0 response code (Part 2, 6.6): the common cases by name,
/// else its format and number.
pub fn describe_rc(rc: u32) -> String {
    let named = match rc {
        0x100 => Some("TPM_RC_INITIALIZE: TPM2_Startup has not been run"),
        0x101 => Some("TPM_RC_FAILURE: the TPM is in failure mode"),
        0x143 => Some("TPM_RC_COMMAND_CODE: command not supported"),
        0x902 => Some("TPM_RC_OBJECT_MEMORY: out of object slots"),
        0x907 => Some("TPM_RC_LOCALITY: this PCR cannot be changed from this locality"),
        0x908 => Some("TPM_RC_YIELDED"),
        0x90A => Some("TPM_RC_TESTING: the TPM is self-testing"),
        0x921 => Some("TPM_RC_LOCKOUT"),
        0x922 => Some("TPM_RC_RETRY"),
        _ => None,
    };
    if let Some(n) = named {
        return n.to_string();
    }
    if rc & 0x80 != 0 {
        // Format 1: the error number, and which handle, session or parameter it is about.
        let number = 0x80 | (rc & 0x3f);
        let what = match number {
            0x84 => "TPM_RC_VALUE",
            0x8B => "TPM_RC_HANDLE",
            0x8E => "TPM_RC_AUTH_FAIL",
            0x95 => "TPM_RC_SIZE",
            0x9B => "TPM_RC_SIGNATURE",
            0xA2 => "TPM_RC_BAD_AUTH",
            0x83 => "TPM_RC_HASH: the hash algorithm is not supported",
            _ => "format-1 error",
        };
        let n = (rc >> 8) & 0x7;
        let place = if rc & 0x40 != 0 {
            format!("parameter {}", (rc >> 8) & 0xf)
        } else if rc & 0x800 != 0 {
            format!("session {n}")
        } else {
            format!("handle {n}")
        };
        format!("{what} {number:#05x}, {place}")
    } else if rc & 0x800 != 0 {
        format!("warning {:#05x}", rc & 0x7f)
    } else {
        format!("error {:#05x}", rc & 0x7f)
    }
}

/// TPM2_PCR_Extend(pcr, sha256 = digest) with an empty password session.
pub fn extend_command(pcr: u32, digest: &[u8; 32]) -> Vec<u8> {
    let mut c = Vec::with_capacity(65);
    c.extend_from_slice(&TPM_ST_SESSIONS.to_be_bytes());
    c.extend_from_slice(&65u32.to_be_bytes());
    c.extend_from_slice(&TPM_CC_PCR_EXTEND.to_be_bytes());
    c.extend_from_slice(&pcr.to_be_bytes()); // @pcrHandle: a PCR's handle is its index
    c.extend_from_slice(&9u32.to_be_bytes()); // authorizationSize
    c.extend_from_slice(&TPM_RS_PW.to_be_bytes()); // sessionHandle
    c.extend_from_slice(&0u16.to_be_bytes()); // nonce: empty
    c.push(0); // sessionAttributes
    c.extend_from_slice(&0u16.to_be_bytes()); // hmac: the empty password
    c.extend_from_slice(&1u32.to_be_bytes()); // TPML_DIGEST_VALUES.count
    c.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    c.extend_from_slice(digest);
    c
}

/// TPM2_PCR_Read of one PCR in the sha256 bank.
pub fn read_command(pcr: u32) -> Vec<u8> {
    let mut select = [0u8; 3];
    if let Some(byte) = select.get_mut((pcr / 8) as usize) {
        *byte = 1 << (pcr % 8);
    }
    let mut c = Vec::with_capacity(20);
    c.extend_from_slice(&TPM_ST_NO_SESSIONS.to_be_bytes());
    c.extend_from_slice(&20u32.to_be_bytes());
    c.extend_from_slice(&TPM_CC_PCR_READ.to_be_bytes());
    c.extend_from_slice(&1u32.to_be_bytes()); // TPML_PCR_SELECTION.count
    c.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    c.push(3); // sizeofSelect
    c.extend_from_slice(&select);
    c
}

/// The sha256 value of `pcr` from a successful TPM2_PCR_Read response.
pub fn parse_read_response(pcr: u32, resp: &[u8]) -> Result<Vec<u8>, String> {
    let mut r = super::quote::Cursor::new(resp);
    let short = |what: &str| format!("TPM2_PCR_Read response too short for {what}");
    r.skip(10).ok_or_else(|| short("the header"))?;
    r.u32().ok_or_else(|| short("pcrUpdateCounter"))?;
    let selections =
        super::quote::read_selection(&mut r).map_err(|e| format!("TPM2_PCR_Read response: {e}"))?;
    let count = r.u32().ok_or_else(|| short("the digest count"))?;
    let selected = selections
        .iter()
        .any(|s| s.hash_alg == TPM_ALG_SHA256 && s.pcrs.contains(&pcr));
    if count == 0 || !selected {
        return Err(format!(
            "the TPM returned no sha256 value for PCR {pcr} (is the sha256 bank allocated?)"
        ));
    }
    if count != 1 {
        return Err(format!("the TPM returned {count} values for one PCR"));
    }
    let value = r.sized().ok_or_else(|| short("the PCR value"))?;
    if value.len() != 32 {
        return Err(format!(
            "the TPM returned a {}-byte value for a sha256 PCR",
            value.len()
        ));
    }
    Ok(value.to_vec())
}

impl Register for TpmPcr {
    fn describe(&self) -> String {
        if self.device == Path::new(DEFAULT_DEVICE) {
            format!("tpm:pcr={}", self.pcr)
        } else {
            format!("tpm:pcr={},device={}", self.pcr, self.device.display())
        }
    }

    fn kind(&self) -> RegisterKind {
        RegisterKind::Tpm
    }

    fn read(&mut self) -> Result<Option<Vec<u8>>, MeasureError> {
        let resp = self.command("TPM2_PCR_Read", &read_command(self.pcr))?;
        parse_read_response(self.pcr, &resp)
            .map(Some)
            .map_err(|e| self.error(e))
    }

    fn extend(&mut self, chain_hash: &[u8; 32]) -> Result<(), MeasureError> {
        self.command("TPM2_PCR_Extend", &extend_command(self.pcr, chain_hash))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_have_their_declared_sizes() {
        let e = extend_command(23, &[0xab; 32]);
        assert_eq!(e.len(), 65);
        assert_eq!(u32::from_be_bytes([e[2], e[3], e[4], e[5]]), 65);
        assert_eq!(&e[10..14], &23u32.to_be_bytes());
        assert_eq!(&e[e.len() - 32..], &[0xab; 32]);
        let r = read_command(23);
        assert_eq!(r.len(), 20);
        assert_eq!(&r[17..20], &[0, 0, 0x80]);
        assert_eq!(&read_command(0)[17..20], &[1, 0, 0]);
        assert_eq!(&read_command(10)[17..20], &[0, 4, 0]);
    }

    #[test]
    fn read_response_parses_and_refuses_an_empty_bank() {
        let mut ok = vec![0x80, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
        ok.extend_from_slice(&5u32.to_be_bytes()); // update counter
        ok.extend_from_slice(&1u32.to_be_bytes());
        ok.extend_from_slice(&[0x00, 0x0b, 3, 0, 0, 0x80]);
        ok.extend_from_slice(&1u32.to_be_bytes());
        ok.extend_from_slice(&32u16.to_be_bytes());
        ok.extend_from_slice(&[9u8; 32]);
        assert_eq!(parse_read_response(23, &ok).unwrap(), vec![9u8; 32]);
        // PCR 22 was not in the returned selection.
        assert!(parse_read_response(22, &ok).is_err());

        let mut empty = vec![0x80, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
        empty.extend_from_slice(&5u32.to_be_bytes());
        empty.extend_from_slice(&0u32.to_be_bytes());
        empty.extend_from_slice(&0u32.to_be_bytes());
        let err = parse_read_response(23, &empty).unwrap_err();
        assert!(err.contains("sha256 bank"), "{err}");
        assert!(parse_read_response(23, &ok[..40]).is_err());
    }

    #[test]
    fn response_reader_checks_sizes() {
        let mut ok: &[u8] = &[0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0];
        assert_eq!(read_response(&mut ok).unwrap().len(), 10);
        let mut short: &[u8] = &[0x80, 0x01, 0, 0, 0, 12, 0, 0, 0, 0];
        assert!(read_response(&mut short).unwrap_err().contains("closed"));
        let mut huge: &[u8] = &[0x80, 0x01, 0xff, 0, 0, 12, 0, 0, 0, 0];
        assert!(read_response(&mut huge).unwrap_err().contains("declares"));
        let mut tag: &[u8] = &[0x00, 0xc4, 0, 0, 0, 10, 0, 0, 0, 0];
        assert!(read_response(&mut tag).unwrap_err().contains("tag"));
    }

    #[test]
    fn pcr_of_reads_specs_and_descriptions() {
        assert_eq!(pcr_of("tpm:pcr=16,device=/run/swtpm.sock"), Some(16));
        assert_eq!(pcr_of("tpm:"), Some(DEFAULT_PCR));
        assert_eq!(pcr_of("tpm:pcr=24"), None);
        assert_eq!(pcr_of("tdx:rtmr=3"), None);
    }

    #[test]
    fn response_codes_are_named() {
        assert!(describe_rc(0x907).contains("LOCALITY"));
        assert!(describe_rc(0x100).contains("Startup"));
        // TPM_RC_VALUE on parameter 1.
        assert!(
            describe_rc(0x1c4).contains("TPM_RC_VALUE"),
            "{}",
            describe_rc(0x1c4)
        );
        assert!(
            describe_rc(0x1c4).contains("parameter 1"),
            "{}",
            describe_rc(0x1c4)
        );
    }
}
