//! The initdata document, its block-device image, and the scan for that device.
//!
//! Document (TOML; the digest covers these exact bytes):
//! ```toml
//! version = "0.1.0"
//! algorithm = "sha384"            # or "sha256", "sha512"
//! [data]
//! "policy.rego" = '''package agent_policy ...'''
//! "agent-warden.toml" = '''listen = "vsock://-1:1024"'''   # optional
//! "aa.toml" = '''...'''                                     # passed through untouched
//! ```
//! Image (a virtio-blk / virtio-scsi disk, or a file): `b"initdata"`, a u64 little-endian
//! length N, then N bytes of gzip-compressed TOML; anything after that is ignored.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256, Sha384, Sha512};

use super::{read_file_bounded, to_hex, AttestationError};

/// The 8 bytes an initdata image starts with.
pub const INITDATA_MAGIC: &[u8; 8] = b"initdata";
/// The only initdata version this code (and kata) accepts.
pub const INITDATA_VERSION: &str = "0.1.0";
/// Largest compressed payload read from an image (16 MiB).
pub const MAX_COMPRESSED_LEN: u64 = 16 << 20;
/// Largest decompressed TOML accepted (64 MiB); also the cap for plain files read here.
pub const MAX_DECOMPRESSED_LEN: u64 = 64 << 20;
/// The `[data]` key holding the policy text.
pub const POLICY_KEY: &str = "policy.rego";
/// The `[data]` key holding agent-warden's configuration (a TOML document as a string).
pub const WARDEN_CONFIG_KEY: &str = "agent-warden.toml";
/// The pod annotation kata's runtime reads initdata from (kata-types `annotations/mod.rs`).
pub const INITDATA_ANNOTATION: &str = "io.katacontainers.config.hypervisor.cc_init_data";

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const HEADER_LEN: u64 = 16;

/// The digest algorithms initdata may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl Algorithm {
    /// The name used in initdata (`"sha256"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Looks up an initdata algorithm name (exact, lower case, as kata compares it).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        match name {
            "sha256" => Some(Algorithm::Sha256),
            "sha384" => Some(Algorithm::Sha384),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha384 => 48,
            Algorithm::Sha512 => 64,
        }
    }

    /// The digest of `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Algorithm::Sha256 => Sha256::digest(data).to_vec(),
            Algorithm::Sha384 => Sha384::digest(data).to_vec(),
            Algorithm::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = AttestationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::from_name(s).ok_or_else(|| AttestationError::UnsupportedAlgorithm {
            origin: "algorithm".into(),
            found: s.to_string(),
        })
    }
}

/// A parsed initdata document.
#[derive(Debug, Clone, PartialEq)]
pub struct Initdata {
    /// Always [`INITDATA_VERSION`] once parsed.
    pub version: String,
    pub algorithm: Algorithm,
    /// The exact TOML bytes (decompressed); the digest covers these.
    pub raw: Vec<u8>,
    /// `[data]."policy.rego"`.
    pub policy: Option<String>,
    /// `[data]."agent-warden.toml"`, unparsed.
    pub warden_config: Option<String>,
    /// The whole `[data]` table, every entry untouched.
    pub data: toml::Table,
}

impl Initdata {
    /// The digest attestation measured: `algorithm` over [`Initdata::raw`].
    pub fn digest(&self) -> Vec<u8> {
        self.algorithm.digest(&self.raw)
    }

    /// The policy text, or [`AttestationError::MissingPolicy`].
    pub fn require_policy(&self) -> Result<&str, AttestationError> {
        self.policy
            .as_deref()
            .ok_or_else(|| AttestationError::MissingPolicy {
                origin: "initdata".into(),
            })
    }
}

/// Parses an initdata TOML document (the decompressed bytes).
///
/// Checks: UTF-8, valid TOML, `version` is `"0.1.0"`, `algorithm` is one of the three, `[data]`
/// is a table, and `policy.rego` / `agent-warden.toml` (when present) are strings. A missing
/// `policy.rego` is not an error here (see [`Initdata::require_policy`]). Other top-level keys
/// are ignored, as kata ignores them.
pub fn parse_initdata(raw: &[u8]) -> Result<Initdata, AttestationError> {
    parse_with_origin(raw, "initdata")
}

pub(crate) fn parse_with_origin(raw: &[u8], origin: &str) -> Result<Initdata, AttestationError> {
    let table = parse_toml_table(raw, origin)?;
    initdata_from_table(raw, table, origin)
}

fn parse_toml_table(raw: &[u8], origin: &str) -> Result<toml::Table, AttestationError> {
    let text = std::str::from_utf8(raw).map_err(|err| AttestationError::NotUtf8 {
        origin: origin.to_string(),
        err,
    })?;
    text.parse::<toml::Table>()
        .map_err(|e| AttestationError::Toml {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })
}

fn initdata_from_table(
    raw: &[u8],
    mut table: toml::Table,
    origin: &str,
) -> Result<Initdata, AttestationError> {
    let o = || origin.to_string();
    let wrong = |key: &str, expected: &'static str| AttestationError::WrongType {
        origin: o(),
        key: key.to_string(),
        expected,
    };
    let version = match table.get("version") {
        None => {
            return Err(AttestationError::MissingKey {
                origin: o(),
                key: "version",
            })
        }
        Some(toml::Value::String(v)) => v.clone(),
        Some(_) => return Err(wrong("version", "a string")),
    };
    if version != INITDATA_VERSION {
        return Err(AttestationError::UnsupportedVersion {
            origin: o(),
            found: version,
        });
    }
    let algorithm = match table.get("algorithm") {
        None => {
            return Err(AttestationError::MissingKey {
                origin: o(),
                key: "algorithm",
            })
        }
        Some(toml::Value::String(a)) => {
            Algorithm::from_name(a).ok_or_else(|| AttestationError::UnsupportedAlgorithm {
                origin: o(),
                found: a.clone(),
            })?
        }
        Some(_) => return Err(wrong("algorithm", "a string")),
    };
    let data = match table.remove("data") {
        None => {
            return Err(AttestationError::MissingKey {
                origin: o(),
                key: "data",
            })
        }
        Some(toml::Value::Table(t)) => t,
        Some(_) => return Err(wrong("data", "a table")),
    };
    let string_entry = |key: &str| -> Result<Option<String>, AttestationError> {
        match data.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(wrong(&format!("data.\"{key}\""), "a string")),
        }
    };
    let policy = string_entry(POLICY_KEY)?;
    let warden_config = string_entry(WARDEN_CONFIG_KEY)?;
    Ok(Initdata {
        version,
        algorithm,
        raw: raw.to_vec(),
        policy,
        warden_config,
        data,
    })
}

/// Reads an initdata image (block device or file) and returns the decompressed TOML bytes.
///
/// Errors: too short for the header, bad magic, declared length 0, over
/// [`MAX_COMPRESSED_LEN`], beyond the end of the device, gzip errors, and output over
/// [`MAX_DECOMPRESSED_LEN`].
pub fn read_initdata_device(path: &Path) -> Result<Vec<u8>, AttestationError> {
    let mut file = File::open(path).map_err(AttestationError::io(path, "open"))?;
    // Block devices report a metadata length of 0; seeking to the end gives their size.
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(AttestationError::io(path, "seek"))?;
    file.seek(SeekFrom::Start(0))
        .map_err(AttestationError::io(path, "seek"))?;
    if size < HEADER_LEN {
        return Err(AttestationError::ImageTooShort {
            path: path.to_path_buf(),
            size,
        });
    }
    let mut header = [0u8; HEADER_LEN as usize];
    file.read_exact(&mut header)
        .map_err(AttestationError::io(path, "read the initdata header"))?;
    let declared = check_header(path, &header, size)?;
    let mut compressed = Vec::new();
    (&mut file)
        .take(declared)
        .read_to_end(&mut compressed)
        .map_err(AttestationError::io(path, "read the compressed initdata"))?;
    if (compressed.len() as u64) < declared {
        return Err(AttestationError::LengthBeyondDevice {
            path: path.to_path_buf(),
            declared,
            available: compressed.len() as u64,
        });
    }
    gunzip_bounded(&compressed, &path.display().to_string())
}

/// Like [`read_initdata_device`] for an image already in memory; `path` only names it in errors.
pub fn decode_initdata_image(image: &[u8], path: &Path) -> Result<Vec<u8>, AttestationError> {
    let size = image.len() as u64;
    let Some(header) = image
        .get(..HEADER_LEN as usize)
        .and_then(|h| <&[u8; 16]>::try_from(h).ok())
    else {
        return Err(AttestationError::ImageTooShort {
            path: path.to_path_buf(),
            size,
        });
    };
    let declared = check_header(path, header, size)?;
    // check_header guarantees HEADER_LEN + declared <= size, which fits in usize here.
    let end = (HEADER_LEN + declared) as usize;
    let compressed = image.get(HEADER_LEN as usize..end).unwrap_or_default();
    gunzip_bounded(compressed, &path.display().to_string())
}

/// Validates the 16-byte header against the image size; returns the declared length.
fn check_header(path: &Path, header: &[u8; 16], size: u64) -> Result<u64, AttestationError> {
    let mut magic = [0u8; 8];
    let mut len = [0u8; 8];
    magic.copy_from_slice(&header[..8]);
    len.copy_from_slice(&header[8..]);
    if &magic != INITDATA_MAGIC {
        return Err(AttestationError::BadMagic {
            path: path.to_path_buf(),
            found: to_hex(&magic),
        });
    }
    let declared = u64::from_le_bytes(len);
    if declared == 0 {
        return Err(AttestationError::EmptyImage {
            path: path.to_path_buf(),
        });
    }
    if declared > MAX_COMPRESSED_LEN {
        return Err(AttestationError::CompressedTooLarge {
            path: path.to_path_buf(),
            declared,
            limit: MAX_COMPRESSED_LEN,
        });
    }
    let available = size.saturating_sub(HEADER_LEN);
    if declared > available {
        return Err(AttestationError::LengthBeyondDevice {
            path: path.to_path_buf(),
            declared,
            available,
        });
    }
    Ok(declared)
}

/// Decompresses one gzip member, refusing output over [`MAX_DECOMPRESSED_LEN`].
fn gunzip_bounded(compressed: &[u8], origin: &str) -> Result<Vec<u8>, AttestationError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(compressed)
        .take(MAX_DECOMPRESSED_LEN + 1)
        .read_to_end(&mut out)
        .map_err(|err| AttestationError::Gzip {
            origin: origin.to_string(),
            err,
        })?;
    if out.len() as u64 > MAX_DECOMPRESSED_LEN {
        return Err(AttestationError::DecompressedTooLarge {
            origin: origin.to_string(),
            limit: MAX_DECOMPRESSED_LEN,
        });
    }
    Ok(out)
}

/// One gzip member of `data` (default level, no file name), as kata's Go runtime writes it.
fn gzip(data: &[u8], origin: &str) -> Result<Vec<u8>, AttestationError> {
    let gz_err = |err| AttestationError::Gzip {
        origin: origin.to_string(),
        err,
    };
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).map_err(gz_err)?;
    enc.finish().map_err(gz_err)
}

/// Builds an initdata image from TOML bytes: magic, u64 LE length, gzip data, zero-padded to
/// a multiple of 512 bytes (kata's sector size) so it can back a disk directly.
pub fn build_initdata_image(toml: &[u8]) -> Result<Vec<u8>, AttestationError> {
    let compressed = gzip(toml, "building an initdata image")?;
    let mut image = Vec::with_capacity(compressed.len() + 512 + HEADER_LEN as usize);
    image.extend_from_slice(INITDATA_MAGIC);
    image.extend_from_slice(&(compressed.len() as u64).to_le_bytes());
    image.extend_from_slice(&compressed);
    image.resize(image.len().div_ceil(512) * 512, 0);
    Ok(image)
}

/// The value of the pod annotation [`INITDATA_ANNOTATION`]: the TOML bytes gzip-compressed,
/// then standard base64 (padded), as kata's runtime decodes it.
pub fn initdata_annotation_value(toml: &[u8]) -> Result<String, AttestationError> {
    use base64::Engine as _;
    let compressed = gzip(toml, "building the initdata annotation")?;
    Ok(base64::engine::general_purpose::STANDARD.encode(compressed))
}

/// Writes an initdata TOML document: `version`, `algorithm`, then `[data]` with `entries` in
/// the given order (keys quoted). Values are multi-line literal strings (`'''`) when TOML
/// allows that for the text, escaped one-line strings otherwise. The result parses back with
/// [`parse_initdata`] to the same entries (checked here: an error otherwise).
pub fn render_initdata(
    algorithm: Algorithm,
    entries: &[(&str, &str)],
) -> Result<String, AttestationError> {
    let mut out = format!(
        "version = {}\nalgorithm = {}\n\n[data]\n",
        toml_string(INITDATA_VERSION),
        toml_string(algorithm.name())
    );
    for (key, value) in entries {
        out.push_str(&toml_string(key));
        out.push_str(" = ");
        if literal_fits(value) {
            out.push_str("'''\n");
            out.push_str(value);
            out.push_str("'''\n");
        } else {
            out.push_str(&toml_string(value));
            out.push('\n');
        }
    }
    let parsed = parse_with_origin(out.as_bytes(), "the written initdata")?;
    for (key, value) in entries {
        if parsed.data.get(*key).and_then(|v| v.as_str()) != Some(*value) {
            return Err(AttestationError::Toml {
                origin: "the written initdata".into(),
                message: format!("entry {key:?} does not read back as written"),
            });
        }
    }
    Ok(out)
}

/// Whether `text` can be a TOML multi-line literal string verbatim: no `'''`, no trailing
/// quote (it would merge with the closing delimiter), no control characters but tab and
/// newline (CR only before LF).
fn literal_fits(text: &str) -> bool {
    let bytes = text.as_bytes();
    !text.contains("'''")
        && !text.ends_with('\'')
        && bytes.iter().enumerate().all(|(i, &b)| match b {
            b'\t' | b'\n' => true,
            b'\r' => bytes.get(i + 1) == Some(&b'\n'),
            0..=0x1f | 0x7f => false,
            _ => true,
        })
}

/// A one-line TOML string (the toml crate picks the quoting and escapes), also valid as a key.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// Looks under `dev_root` (normally `/dev`) for the first `vd*` or `sd*` entry (vd before sd,
/// then by name) that is a block device or regular file starting with [`INITDATA_MAGIC`], and
/// returns its path and decompressed TOML. Entries that cannot be opened or are shorter than
/// 8 bytes are skipped; a device with the magic but a bad body is an error. `Ok(None)` when
/// none has the magic.
pub fn scan_for_initdata(dev_root: &Path) -> Result<Option<(PathBuf, Vec<u8>)>, AttestationError> {
    let entries = std::fs::read_dir(dev_root).map_err(AttestationError::io(dev_root, "list"))?;
    let mut candidates: Vec<(u8, String, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(AttestationError::io(dev_root, "list"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rank = if name.starts_with("vd") {
            0
        } else if name.starts_with("sd") {
            1
        } else {
            continue;
        };
        candidates.push((rank, name, entry.path()));
    }
    candidates.sort();
    let mut found: Option<PathBuf> = None;
    for (_, _, path) in candidates {
        if !is_block_device_or_file(&path) || !has_magic(&path) {
            continue;
        }
        match &found {
            None => found = Some(path),
            Some(first) => tracing::warn!(
                first = %first.display(),
                other = %path.display(),
                "more than one device carries initdata; using the first"
            ),
        }
    }
    match found {
        None => Ok(None),
        Some(path) => {
            let toml = read_initdata_device(&path)?;
            Ok(Some((path, toml)))
        }
    }
}

fn is_block_device_or_file(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(m) => m.file_type().is_block_device() || m.file_type().is_file(),
        Err(_) => false,
    }
}

fn has_magic(path: &Path) -> bool {
    let mut magic = [0u8; 8];
    match File::open(path).and_then(|mut f| f.read_exact(&mut magic)) {
        Ok(()) => &magic == INITDATA_MAGIC,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "not an initdata candidate");
            false
        }
    }
}

/// What `policy hash` and `serve --initdata/--policy` measure: an initdata document, or a
/// plain policy file (sha256 of its bytes).
#[derive(Debug, Clone, PartialEq)]
pub enum MeasuredDocument {
    Initdata(Initdata),
    PlainPolicy(Vec<u8>),
}

impl MeasuredDocument {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            MeasuredDocument::Initdata(i) => i.algorithm,
            MeasuredDocument::PlainPolicy(_) => Algorithm::Sha256,
        }
    }

    /// The digest attestation should report (before fitting to a TEE field).
    pub fn digest(&self) -> Vec<u8> {
        match self {
            MeasuredDocument::Initdata(i) => i.digest(),
            MeasuredDocument::PlainPolicy(p) => Algorithm::Sha256.digest(p),
        }
    }
}

/// Loads initdata from a file: an image (starts with the magic), a gzip stream, or the TOML
/// itself. The document must parse as initdata (see [`parse_initdata`]).
pub fn load_initdata(path: &Path) -> Result<Initdata, AttestationError> {
    let toml = initdata_bytes_from_file(path)?;
    parse_with_origin(&toml, &path.display().to_string())
}

/// Loads a file and decides what it is: an initdata image or gzip stream is initdata; a TOML
/// document with any of `version`, `algorithm`, `data` at top level is initdata (and must then
/// be valid initdata); anything else is a plain policy.
pub fn load_measured_document(path: &Path) -> Result<MeasuredDocument, AttestationError> {
    let bytes = read_file_bounded(path, MAX_DECOMPRESSED_LEN, "a policy or initdata file")?;
    let origin = path.display().to_string();
    if bytes.starts_with(INITDATA_MAGIC) {
        let toml = decode_initdata_image(&bytes, path)?;
        return parse_with_origin(&toml, &origin).map(MeasuredDocument::Initdata);
    }
    if bytes.starts_with(&GZIP_MAGIC) {
        let toml = gunzip_bounded(&bytes, &origin)?;
        return parse_with_origin(&toml, &origin).map(MeasuredDocument::Initdata);
    }
    let table = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok());
    match table {
        Some(t)
            if ["version", "algorithm", "data"]
                .iter()
                .any(|k| t.contains_key(*k)) =>
        {
            initdata_from_table(&bytes, t, &origin).map(MeasuredDocument::Initdata)
        }
        _ => Ok(MeasuredDocument::PlainPolicy(bytes)),
    }
}

fn initdata_bytes_from_file(path: &Path) -> Result<Vec<u8>, AttestationError> {
    let mut head = Vec::with_capacity(8);
    File::open(path)
        .and_then(|f| f.take(8).read_to_end(&mut head))
        .map_err(AttestationError::io(path, "read"))?;
    if head == INITDATA_MAGIC {
        return read_initdata_device(path);
    }
    let bytes = read_file_bounded(path, MAX_DECOMPRESSED_LEN, "an initdata file")?;
    if bytes.starts_with(&GZIP_MAGIC) {
        return gunzip_bounded(&bytes, &path.display().to_string());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"policy.rego\" = '''\npackage agent_policy\ndefault AllowRequestsFailingPolicy := true\n'''\n\"aa.toml\" = '''\n[token_configs]\n'''\n";

    #[test]
    fn parses_a_document() {
        let i = parse_initdata(DOC.as_bytes()).unwrap();
        assert_eq!(i.version, "0.1.0");
        assert_eq!(i.algorithm, Algorithm::Sha384);
        assert_eq!(i.raw, DOC.as_bytes());
        assert!(i
            .policy
            .as_deref()
            .unwrap()
            .starts_with("package agent_policy"));
        assert_eq!(i.warden_config, None);
        assert_eq!(
            i.data.get("aa.toml").and_then(|v| v.as_str()),
            Some("[token_configs]\n")
        );
        assert_eq!(i.require_policy().unwrap(), i.policy.as_deref().unwrap());
    }

    #[test]
    fn header_checks() {
        let p = Path::new("img");
        let mut h = *b"initdata\0\0\0\0\0\0\0\0";
        assert!(matches!(
            check_header(p, &h, 100),
            Err(AttestationError::EmptyImage { .. })
        ));
        h[8..].copy_from_slice(&(MAX_COMPRESSED_LEN + 1).to_le_bytes());
        assert!(matches!(
            check_header(p, &h, u64::MAX),
            Err(AttestationError::CompressedTooLarge { .. })
        ));
        h[8..].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(check_header(p, &h, u64::MAX).is_err());
        h[8..].copy_from_slice(&85u64.to_le_bytes());
        assert!(matches!(
            check_header(p, &h, 100),
            Err(AttestationError::LengthBeyondDevice {
                declared: 85,
                available: 84,
                ..
            })
        ));
        assert_eq!(check_header(p, &h, 101).unwrap(), 85);
    }

    #[test]
    fn image_round_trip_in_memory() {
        let img = build_initdata_image(DOC.as_bytes()).unwrap();
        assert_eq!(img.len() % 512, 0);
        assert_eq!(
            decode_initdata_image(&img, Path::new("mem")).unwrap(),
            DOC.as_bytes()
        );
        assert!(decode_initdata_image(&img[..10], Path::new("mem")).is_err());
    }

    #[test]
    fn gzip_bomb_is_bounded() {
        // 65 MiB of zeros compresses to ~65 KiB; the decoder must stop at the limit.
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..65 {
            enc.write_all(&chunk).unwrap();
        }
        let gz = enc.finish().unwrap();
        let err = gunzip_bounded(&gz, "bomb").unwrap_err();
        assert!(
            matches!(err, AttestationError::DecompressedTooLarge { .. }),
            "{err}"
        );
    }

    #[test]
    fn algorithm_names() {
        for a in [Algorithm::Sha256, Algorithm::Sha384, Algorithm::Sha512] {
            assert_eq!(Algorithm::from_name(a.name()), Some(a));
            assert_eq!(a.digest(b"").len(), a.digest_len());
            assert_eq!(a.to_string().parse::<Algorithm>().unwrap(), a);
        }
        assert_eq!(Algorithm::from_name("SHA256"), None);
        assert!("md5".parse::<Algorithm>().is_err());
    }
}
