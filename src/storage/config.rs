//! Configuration of the encrypted scratch disk: the `[storage]` table resolved, defaults
//! filled in ([`StorageConfig`]), and its validation. The table's layers and flags are
//! `crate::config::StorageSection`. Nothing here touches the system.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::StorageError;

/// Default mount point: where the Kata agent keeps pulled container images.
pub const DEFAULT_MOUNT_POINT: &str = "/run/kata-containers/image";
/// Default state directory; must be memory-backed (tmpfs or ramfs).
pub const DEFAULT_STATE_DIR: &str = "/run/agent-warden/storage";
/// Default device-mapper name of the opened scratch disk.
pub const DEFAULT_MAPPER_NAME: &str = "agent-warden-scratch";
/// Default smallest device accepted: 64 MiB.
pub const DEFAULT_MIN_SIZE_BYTES: u64 = 64 << 20;

/// When the scratch disk is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SetupAt {
    /// At agent-warden start-up, before the listener opens.
    #[default]
    Startup,
    /// Only when asked (`agent-warden storage setup`).
    OnDemand,
}

impl std::fmt::Display for SetupAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SetupAt::Startup => "startup",
            SetupAt::OnDemand => "on-demand",
        })
    }
}

impl std::str::FromStr for SetupAt {
    type Err = String;

    /// `startup` or `on-demand`, as the `setup_at` key takes them.
    fn from_str(s: &str) -> Result<SetupAt, String> {
        match s {
            "startup" => Ok(SetupAt::Startup),
            "on-demand" => Ok(SetupAt::OnDemand),
            _ => Err(format!("expected startup or on-demand, got {s:?}")),
        }
    }
}

/// The `[storage]` section, resolved: every key of the table
/// (`crate::config::StorageSection`, the one definition of the keys and their flags)
/// with its default filled in. Every field has a default; only `device` must be set for
/// `setup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// The host-provided disk: a path (`/dev/vdb`) or `MAJ:MIN` (`254:16`), which is
    /// resolved through /sys/dev/block.
    pub device: Option<String>,
    /// Where the filesystem is mounted.
    pub mount_point: PathBuf,
    /// Extra mount options (`noatime`, ...). `nodev,nosuid` are always added, last.
    pub fs_options: Vec<String>,
    /// Extra mkfs.ext4 arguments. `-E` options are merged with the ones the plan needs.
    pub mkfs_options: Vec<String>,
    /// dm-integrity (hmac-sha256) under dm-crypt: host tampering reads as I/O errors.
    pub integrity: bool,
    /// Set up at start-up (before the listener opens) or on demand.
    pub setup_at: SetupAt,
    /// Devices smaller than this are refused.
    pub min_size_bytes: u64,
    /// Memory-backed directory for the state file and the detached LUKS2 header.
    pub state_dir: PathBuf,
    /// Device-mapper name; the filesystem lives on /dev/mapper/<mapper_name>.
    pub mapper_name: String,
    /// The cryptsetup program (looked up in PATH unless absolute).
    pub cryptsetup: PathBuf,
    /// The mkfs.ext4 program.
    pub mkfs: PathBuf,
    /// The mount program.
    pub mount: PathBuf,
    /// The umount program.
    pub umount: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            device: None,
            mount_point: PathBuf::from(DEFAULT_MOUNT_POINT),
            fs_options: Vec::new(),
            mkfs_options: Vec::new(),
            integrity: true,
            setup_at: SetupAt::Startup,
            min_size_bytes: DEFAULT_MIN_SIZE_BYTES,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            mapper_name: DEFAULT_MAPPER_NAME.to_string(),
            cryptsetup: PathBuf::from("cryptsetup"),
            mkfs: PathBuf::from("mkfs.ext4"),
            mount: PathBuf::from("mount"),
            umount: PathBuf::from("umount"),
        }
    }
}

/// File names inside `state_dir`.
pub const STATE_FILE: &str = "state.json";
pub const HEADER_FILE: &str = "header.luks2";
pub const LOCK_FILE: &str = "lock";

impl StorageConfig {
    /// Reads the `[storage]` table of a TOML document; a document without one gives
    /// the defaults. Other tables are ignored (they belong to other parts).
    pub fn from_toml_str(text: &str) -> Result<Self, StorageError> {
        let doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| StorageError::Config(format!("TOML: {e}")))?;
        match doc.get("storage") {
            None => Ok(StorageConfig::default()),
            Some(v) => v
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| StorageError::Config(format!("[storage]: {e}"))),
        }
    }

    /// Reads the `[storage]` table of a TOML file.
    pub fn from_toml_file(path: &Path) -> Result<Self, StorageError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StorageError::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml_str(&text)
    }

    /// The detached LUKS2 header: `<state_dir>/header.luks2`.
    pub fn header_path(&self) -> PathBuf {
        self.state_dir.join(HEADER_FILE)
    }

    /// The state file: `<state_dir>/state.json`.
    pub fn state_path(&self) -> PathBuf {
        self.state_dir.join(STATE_FILE)
    }

    /// The lock file serialising setup and teardown: `<state_dir>/lock`.
    pub fn lock_path(&self) -> PathBuf {
        self.state_dir.join(LOCK_FILE)
    }

    /// The opened mapping: `/dev/mapper/<mapper_name>`.
    pub fn mapping_path(&self) -> PathBuf {
        Path::new("/dev/mapper").join(&self.mapper_name)
    }

    /// Checks what can be checked without touching the system. `need_device` is set for
    /// setup, which cannot proceed without one.
    pub fn validate(&self, need_device: bool) -> Result<(), StorageError> {
        let bad = |m: String| Err(StorageError::Config(m));
        if need_device {
            match &self.device {
                None => {
                    return bad(
                        "no device configured (set storage.device: `serve --storage-device` or `storage --device`)"
                            .into(),
                    )
                }
                Some(d) if d.trim().is_empty() => return bad("storage.device is empty".into()),
                Some(_) => {}
            }
        }
        for (name, p) in [
            ("mount_point", &self.mount_point),
            ("state_dir", &self.state_dir),
        ] {
            if !p.is_absolute() {
                return bad(format!(
                    "{name} must be an absolute path, got {}",
                    p.display()
                ));
            }
            if p.to_str().is_none() {
                return bad(format!("{name} must be valid UTF-8"));
            }
            if p == Path::new("/") {
                return bad(format!("{name} must not be /"));
            }
        }
        if self.mount_point.starts_with(&self.state_dir)
            || self.state_dir.starts_with(&self.mount_point)
        {
            return bad("mount_point and state_dir must not contain one another".into());
        }
        let name = &self.mapper_name;
        if name.is_empty()
            || name.len() > 100
            || name == "."
            || name == ".."
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
        {
            return bad(format!(
                "mapper_name {name:?} must be 1-100 characters from [A-Za-z0-9._+-]"
            ));
        }
        for o in &self.fs_options {
            if o.is_empty() || o.contains(',') || o.contains(char::is_whitespace) {
                return bad(format!("fs_options entry {o:?}: give one option per entry"));
            }
            if matches!(
                o.as_str(),
                "dev" | "suid" | "defaults" | "remount" | "bind" | "rbind" | "move"
            ) {
                return bad(format!(
                    "fs_options entry {o:?} is not allowed (the mount is always nodev,nosuid)"
                ));
            }
        }
        if self.min_size_bytes == 0 {
            return bad("min_size_bytes must be positive".into());
        }
        Ok(())
    }
}

/// The device as configured: a path, or a `MAJ:MIN` pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    Path(PathBuf),
    Number { major: u32, minor: u32 },
}

impl DeviceSpec {
    pub fn parse(s: &str) -> Result<Self, StorageError> {
        let s = s.trim();
        if let Some((a, b)) = s.split_once(':') {
            if !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
            {
                let major = a
                    .parse()
                    .map_err(|_| StorageError::Config(format!("device {s:?}: bad major number")))?;
                let minor = b
                    .parse()
                    .map_err(|_| StorageError::Config(format!("device {s:?}: bad minor number")))?;
                return Ok(DeviceSpec::Number { major, minor });
            }
        }
        if !s.starts_with('/') {
            return Err(StorageError::Config(format!(
                "device {s:?} must be an absolute path or MAJ:MIN"
            )));
        }
        Ok(DeviceSpec::Path(PathBuf::from(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_issue() {
        let c = StorageConfig::default();
        assert_eq!(c.mount_point, Path::new("/run/kata-containers/image"));
        assert!(c.integrity);
        assert_eq!(c.setup_at, SetupAt::Startup);
        assert_eq!(c.state_dir, Path::new("/run/agent-warden/storage"));
        assert_eq!(
            c.header_path(),
            Path::new("/run/agent-warden/storage/header.luks2")
        );
        assert_eq!(
            c.mapping_path(),
            Path::new("/dev/mapper/agent-warden-scratch")
        );
    }

    #[test]
    fn toml_storage_table_is_read_and_others_ignored() {
        let c = StorageConfig::from_toml_str(
            r#"
            [policy]
            file = "x.rego"
            [storage]
            device = "254:16"
            integrity = false
            setup_at = "on-demand"
            fs_options = ["noatime"]
            min_size_bytes = 1048576
            "#,
        )
        .expect("parses");
        assert_eq!(c.device.as_deref(), Some("254:16"));
        assert!(!c.integrity);
        assert_eq!(c.setup_at, SetupAt::OnDemand);
        assert_eq!(c.fs_options, vec!["noatime".to_string()]);
        assert_eq!(c.min_size_bytes, 1 << 20);
        assert_eq!(c.mount_point, Path::new(DEFAULT_MOUNT_POINT));

        assert_eq!(
            StorageConfig::from_toml_str("").expect("empty"),
            StorageConfig::default()
        );
        let e = StorageConfig::from_toml_str("[storage]\nbogus = 1\n").expect_err("unknown key");
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = StorageConfig::from_toml_str("[storage]\nsetup_at = \"later\"\n")
            .expect_err("bad enum");
        assert!(
            e.to_string().contains("setup_at") || e.to_string().contains("later"),
            "{e}"
        );
    }

    #[test]
    fn validation_catches_bad_values() {
        let mut c = StorageConfig::default();
        assert!(c.validate(false).is_ok());
        assert!(c.validate(true).is_err(), "setup needs a device");
        c.device = Some("/dev/vdb".into());
        assert!(c.validate(true).is_ok());
        for name in ["", "a/b", "..", "x y"] {
            let mut d = c.clone();
            d.mapper_name = name.into();
            assert!(d.validate(true).is_err(), "{name:?}");
        }
        for opt in ["suid", "dev", "a,b", ""] {
            let mut d = c.clone();
            d.fs_options = vec![opt.into()];
            assert!(d.validate(true).is_err(), "{opt:?}");
        }
        let mut d = c.clone();
        d.mount_point = "relative".into();
        assert!(d.validate(true).is_err());
        let mut d = c.clone();
        d.mount_point = "/run/agent-warden/storage/mnt".into();
        assert!(d.validate(true).is_err());
    }

    #[test]
    fn device_spec_parses_paths_and_numbers() {
        assert_eq!(
            DeviceSpec::parse("254:16").expect("num"),
            DeviceSpec::Number {
                major: 254,
                minor: 16
            }
        );
        assert_eq!(
            DeviceSpec::parse("/dev/vdb").expect("path"),
            DeviceSpec::Path("/dev/vdb".into())
        );
        assert!(DeviceSpec::parse("vdb").is_err());
        assert!(DeviceSpec::parse("1:x").is_err());
        assert!(DeviceSpec::parse("99999999999:1").is_err());
    }
}
