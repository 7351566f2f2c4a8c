//! `agent-warden storage setup|teardown|status`: the scratch disk by hand. Its flags are
//! the `[storage]` keys, defined once ([`StorageSection`]); the layers are merged as
//! TOML, as `serve`'s are: defaults < the `--config` file's `[storage]` < the flags.

use std::path::PathBuf;

use crate::config::{Config, StorageSection};
use crate::storage::{self, StorageConfig};

/// `agent-warden storage <setup|teardown|status> [flags]`.
#[derive(Debug, Clone, clap::Args)]
pub struct StorageArgs {
    #[command(subcommand)]
    pub action: StorageAction,

    /// Configuration file (TOML, as `serve --config` takes it): its [storage] table.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub settings: StorageSection,
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
    pub fn config(&self) -> anyhow::Result<StorageConfig> {
        let file = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        let flags = Config {
            storage: Some(self.settings.clone()),
            ..Config::default()
        };
        file.overlay(flags)?.storage.unwrap_or_default().resolve()
    }
}

/// Runs a storage command: prints the report or status and returns the exit code
/// (status: 0 active, 3 inactive, 4 partial).
pub fn run_cli(args: StorageArgs) -> anyhow::Result<i32> {
    let cfg = args.config()?;
    match args.action {
        StorageAction::Setup => {
            let r = storage::setup(&cfg)?;
            print!("{r}");
            Ok(0)
        }
        StorageAction::Teardown => {
            let r = storage::teardown(&cfg)?;
            print!("{r}");
            Ok(0)
        }
        StorageAction::Status => {
            let s = storage::status(&cfg)?;
            print!("{s}");
            Ok(s.exit_code())
        }
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
    fn flags_are_the_keys_and_the_old_names_still_work() {
        let cli = TestCli::try_parse_from([
            "x",
            "status",
            "--storage-device",
            "/dev/vdd",
            "--min-size-bytes",
            "2M",
            "--fs-options",
            "noatime",
            "--setup-at",
            "on-demand",
        ])
        .expect("parses");
        let c = cli.args.config().expect("config");
        assert_eq!(c.device.as_deref(), Some("/dev/vdd"));
        assert_eq!(c.min_size_bytes, 2 << 20);
        assert_eq!(c.fs_options, vec!["noatime"]);
        assert_eq!(c.setup_at, storage::SetupAt::OnDemand);
        assert!(TestCli::try_parse_from(["x", "status", "--setup-at", "later"]).is_err());
    }
}
