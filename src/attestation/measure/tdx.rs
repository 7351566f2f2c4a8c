//! A TDX runtime measurement register (RTMR) as a measurement register, through Linux's
//! tsm-mr sysfs files (Linux 6.16+, `CONFIG_TSM_MEASUREMENTS`; ABI documented in
//! `Documentation/ABI/testing/sysfs-devices-virtual-misc-tdx_guest`):
//! `/sys/devices/virtual/misc/tdx_guest/measurements/rtmr<N>:sha384` (also reachable as
//! `/sys/class/misc/tdx_guest/measurements/...`). A read returns the RTMR's 48 bytes; a
//! write of exactly 48 bytes at offset 0 extends them into it (`RTMR = SHA384(RTMR || data)`);
//! partial writes fail with EINVAL.
//!
//! A 32-byte chain hash becomes the 48-byte extend value `sha384(chain_hash)`
//! ([`RegisterKind::event`]), which [`super::expected`] models.
//!
//! **Not yet run on TDX hardware**: built and tested against a directory standing in for
//! sysfs only.

use super::{MeasureError, Params, Register, RegisterKind};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Where the kernel publishes the TDX measurement registers.
pub const DEFAULT_MEASUREMENTS_DIR: &str = "/sys/class/misc/tdx_guest/measurements";
/// RTMR 3: RTMR 0 and 1 hold firmware measurements, RTMR 2 the boot loader's and kernel's
/// (and IMA's where it uses RTMRs); RTMR 3 is left to the workload.
pub const DEFAULT_RTMR: u32 = 3;
/// The width of an RTMR (sha384).
pub const RTMR_LEN: usize = 48;

/// One RTMR, through its sysfs file.
pub struct TdxRtmr {
    rtmr: u32,
    dir: PathBuf,
    file: PathBuf,
}

impl TdxRtmr {
    pub(crate) fn from_params(spec: &str, params: &Params<'_>) -> Result<Self, MeasureError> {
        params.only(&["rtmr", "dir"])?;
        let rtmr = params.index("rtmr", 3, DEFAULT_RTMR)?;
        let dir = params.get("dir").unwrap_or(DEFAULT_MEASUREMENTS_DIR);
        if dir.is_empty() {
            return Err(super::spec_error(spec, "dir= is empty"));
        }
        Ok(Self::new(rtmr, Path::new(dir)))
    }

    /// RTMR `rtmr` (0 to 3) under a measurements directory.
    pub fn new(rtmr: u32, dir: &Path) -> Self {
        TdxRtmr {
            rtmr,
            dir: dir.to_path_buf(),
            file: dir.join(format!("rtmr{rtmr}:sha384")),
        }
    }

    fn error(&self, message: String) -> MeasureError {
        MeasureError::Device {
            register: self.describe(),
            message: format!("{}: {message}", self.file.display()),
        }
    }
}

impl Register for TdxRtmr {
    fn describe(&self) -> String {
        if self.dir == Path::new(DEFAULT_MEASUREMENTS_DIR) {
            format!("tdx:rtmr={}", self.rtmr)
        } else {
            format!("tdx:rtmr={},dir={}", self.rtmr, self.dir.display())
        }
    }

    fn kind(&self) -> RegisterKind {
        RegisterKind::Tdx
    }

    fn read(&mut self) -> Result<Option<Vec<u8>>, MeasureError> {
        let file = std::fs::File::open(&self.file).map_err(|e| {
            self.error(format!(
                "cannot open RTMR {} (needs Linux 6.16+ with CONFIG_TSM_MEASUREMENTS in a TDX guest): {e}",
                self.rtmr
            ))
        })?;
        let mut value = Vec::with_capacity(2 * RTMR_LEN + 2);
        file.take(2 * RTMR_LEN as u64 + 2)
            .read_to_end(&mut value)
            .map_err(|e| self.error(format!("cannot read RTMR {}: {e}", self.rtmr)))?;
        // The ABI gives the 48 raw bytes; 96 hex digits (and a newline) are taken too.
        if value.len() > RTMR_LEN {
            if let Some(decoded) = std::str::from_utf8(&value)
                .ok()
                .and_then(crate::attestation::decode_hex)
                .filter(|d| d.len() == RTMR_LEN)
            {
                value = decoded;
            }
        }
        if value.len() != RTMR_LEN {
            return Err(self.error(format!(
                "RTMR {} read as {} bytes, expected {RTMR_LEN}",
                self.rtmr,
                value.len()
            )));
        }
        Ok(Some(value))
    }

    fn extend(&mut self, chain_hash: &[u8; 32]) -> Result<(), MeasureError> {
        let event = RegisterKind::Tdx.event(chain_hash);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.file)
            .map_err(|e| self.error(format!("cannot open RTMR {} to extend it: {e}", self.rtmr)))?;
        // One write of all 48 bytes: the kernel refuses partial writes.
        let n = file
            .write(&event)
            .map_err(|e| self.error(format!("extending RTMR {} failed: {e}", self.rtmr)))?;
        if n != RTMR_LEN {
            return Err(self.error(format!(
                "extending RTMR {} wrote {n} of {RTMR_LEN} bytes",
                self.rtmr
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    /// A directory standing in for the measurements sysfs directory: regular files cannot
    /// extend, so the test checks what was written (the event) and reads the start value.
    #[test]
    fn reads_and_writes_the_documented_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rtmr3:sha384");
        std::fs::write(&file, [0x11u8; 48]).unwrap();
        let spec = format!("tdx:rtmr=3,dir={}", dir.path().display());
        let mut reg = super::super::open(&spec).unwrap();
        assert_eq!(reg.kind(), RegisterKind::Tdx);
        assert_eq!(reg.describe(), spec);
        assert_eq!(reg.read().unwrap(), Some(vec![0x11u8; 48]));
        reg.extend(&[5u8; 32]).unwrap();
        assert_eq!(
            std::fs::read(&file).unwrap(),
            sha2::Sha384::digest([5u8; 32]).to_vec()
        );
    }

    #[test]
    fn wrong_sizes_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = super::super::open(&format!("tdx:rtmr=2,dir={}", dir.path().display()))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("rtmr2:sha384") && err.contains("6.16"),
            "{err}"
        );
        std::fs::write(dir.path().join("rtmr2:sha384"), [0u8; 47]).unwrap();
        let mut reg = TdxRtmr::new(2, dir.path());
        let err = reg.read().unwrap_err().to_string();
        assert!(err.contains("47 bytes"), "{err}");
        std::fs::write(dir.path().join("rtmr2:sha384"), [0u8; 49]).unwrap();
        assert!(reg.read().is_err());
        // Hex text is read too (48 bytes of 0xab as 96 digits and a newline).
        std::fs::write(
            dir.path().join("rtmr2:sha384"),
            format!("{}\n", "ab".repeat(48)),
        )
        .unwrap();
        assert_eq!(reg.read().unwrap(), Some(vec![0xab; 48]));
        std::fs::write(dir.path().join("rtmr2:sha384"), "ab".repeat(47)).unwrap();
        assert!(reg.read().is_err());
    }
}
