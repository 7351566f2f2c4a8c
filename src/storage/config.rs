//! Configuration of the encrypted scratch disk: the `[storage]` TOML table
//! ([`StorageConfig`]), the command-line flags that override it ([`StorageArgs`]), and
//! their validation. Nothing here touches the system.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SetupAt {
    /// At agent-warden start-up, before the listener opens.
    #[default]
    Startup,
    /// Only when asked (`agent-warden storage setup`).
    OnDemand,
}

/// The `[storage]` section. Every field has a default; only `device` must be set for
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
                None => return bad("no device configured (set storage.device or --device)".into()),
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

/// Parses a size: plain bytes, or with a binary suffix K, M, G, T (optionally followed
/// by `iB` or `B`): `64M`, `1GiB`, `4096`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(format!("size {s:?}: expected a number"));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?}: number too large"))?;
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        other => return Err(format!("size {s:?}: unknown suffix {other:?}")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?}: too large"))
}

/// Parses `on`/`off` (and the usual synonyms: true/false, yes/no, 1/0).
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("expected on or off, got {s:?}")),
    }
}

/// `agent-warden storage <setup|teardown|status> [flags]`. Flags override the
/// `[storage]` table of `--config FILE`, which overrides the defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct StorageArgs {
    #[command(subcommand)]
    pub action: StorageAction,

    /// TOML file whose [storage] table gives the configuration.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The scratch disk: a path or MAJ:MIN.
    #[arg(long, global = true, value_name = "PATH|MAJ:MIN")]
    pub device: Option<String>,

    /// Mount point [default: /run/kata-containers/image].
    #[arg(long, global = true, value_name = "DIR")]
    pub mount_point: Option<PathBuf>,

    /// Extra mount option (repeatable); replaces the configured list.
    #[arg(long = "fs-option", global = true, value_name = "OPT")]
    pub fs_options: Vec<String>,

    /// Extra mkfs.ext4 argument (repeatable, e.g. --mkfs-option=-m --mkfs-option=0);
    /// replaces the configured list.
    #[arg(
        long = "mkfs-option",
        global = true,
        value_name = "ARG",
        allow_hyphen_values = true
    )]
    pub mkfs_options: Vec<String>,

    /// dm-integrity under dm-crypt: on or off [default: on].
    #[arg(long, global = true, value_name = "on|off", value_parser = parse_on_off)]
    pub integrity: Option<bool>,

    /// When setup happens [default: startup].
    #[arg(long, global = true, value_enum)]
    pub setup_at: Option<SetupAt>,

    /// Smallest device accepted (bytes, or with K/M/G/T suffix) [default: 64M].
    #[arg(long, global = true, value_name = "SIZE", value_parser = parse_size)]
    pub min_size: Option<u64>,

    /// Memory-backed state directory [default: /run/agent-warden/storage].
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Device-mapper name [default: agent-warden-scratch].
    #[arg(long, global = true, value_name = "NAME")]
    pub mapper_name: Option<String>,

    /// cryptsetup program [default: cryptsetup from PATH].
    #[arg(long, global = true, value_name = "PROGRAM")]
    pub cryptsetup: Option<PathBuf>,

    /// mkfs.ext4 program [default: mkfs.ext4 from PATH].
    #[arg(long, global = true, value_name = "PROGRAM")]
    pub mkfs: Option<PathBuf>,
}

/// The storage subcommands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum StorageAction {
    /// Format, open, mkfs and mount the scratch disk (idempotent).
    Setup,
    /// Unmount, close, destroy the header (idempotent).
    Teardown,
    /// Show what is set up. Exit code 0: active, 3: inactive, 4: partial or inconsistent.
    Status,
}

impl StorageArgs {
    /// The effective configuration: defaults, then `--config`, then the flags.
    pub fn config(&self) -> Result<StorageConfig, StorageError> {
        let mut cfg = match &self.config {
            Some(path) => StorageConfig::from_toml_file(path)?,
            None => StorageConfig::default(),
        };
        if let Some(d) = &self.device {
            cfg.device = Some(d.clone());
        }
        if let Some(p) = &self.mount_point {
            cfg.mount_point = p.clone();
        }
        if !self.fs_options.is_empty() {
            cfg.fs_options = self.fs_options.clone();
        }
        if !self.mkfs_options.is_empty() {
            cfg.mkfs_options = self.mkfs_options.clone();
        }
        if let Some(i) = self.integrity {
            cfg.integrity = i;
        }
        if let Some(s) = self.setup_at {
            cfg.setup_at = s;
        }
        if let Some(m) = self.min_size {
            cfg.min_size_bytes = m;
        }
        if let Some(d) = &self.state_dir {
            cfg.state_dir = d.clone();
        }
        if let Some(n) = &self.mapper_name {
            cfg.mapper_name = n.clone();
        }
        if let Some(c) = &self.cryptsetup {
            cfg.cryptsetup = c.clone();
        }
        if let Some(m) = &self.mkfs {
            cfg.mkfs = m.clone();
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        args: StorageArgs,
    }

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
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("warden.toml");
        std::fs::write(
            &file,
            "[storage]\ndevice = \"/dev/vdb\"\nintegrity = true\nmapper_name = \"a\"\n",
        )
        .expect("write");
        let cli = TestCli::try_parse_from([
            "x",
            "setup",
            "--config",
            file.to_str().expect("utf8"),
            "--integrity",
            "off",
            "--min-size",
            "1G",
            "--mkfs-option=-m",
            "--mkfs-option",
            "0",
            "--fs-option",
            "noatime",
        ])
        .expect("parses");
        assert_eq!(cli.args.action, StorageAction::Setup);
        let c = cli.args.config().expect("config");
        assert_eq!(c.device.as_deref(), Some("/dev/vdb"));
        assert!(!c.integrity);
        assert_eq!(c.min_size_bytes, 1 << 30);
        assert_eq!(c.mapper_name, "a");
        assert_eq!(c.mkfs_options, vec!["-m", "0"]);
        assert_eq!(c.fs_options, vec!["noatime"]);
    }

    #[test]
    fn flags_may_precede_the_subcommand() {
        let cli = TestCli::try_parse_from(["x", "--device", "/dev/vdc", "status"]).expect("parses");
        assert_eq!(cli.args.action, StorageAction::Status);
        assert_eq!(
            cli.args.config().expect("config").device.as_deref(),
            Some("/dev/vdc")
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

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2 k"), Ok(2048));
        assert!(parse_size("M").is_err());
        assert!(parse_size("1Q").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn on_off_parses() {
        assert_eq!(parse_on_off("on"), Ok(true));
        assert_eq!(parse_on_off("OFF"), Ok(false));
        assert_eq!(parse_on_off("false"), Ok(false));
        assert!(parse_on_off("maybe").is_err());
    }
}
