//! Configuration: a TOML file (`--config`), overridden by command-line flags.
//!
//! ```toml
//! listen = "vsock://-1:1024"                 # where the host connects (kata's port)
//! agent = "unix:///run/kata-agent.sock"      # where the real kata-agent listens
//! [policy]
//! file = "/etc/agent-warden/policy.rego"     # default: the embedded coco-default
//! rego = "v0"                                # or "v1"
//! input_shape = "current"                    # or "legacy" (older kata-agent inputs)
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::codec::InputShape;
use crate::policy::RegoVersion;

/// Default listening address: kata-agent's own vsock port.
pub const DEFAULT_LISTEN: &str = "vsock://-1:1024";
/// Default agent address: where kata-agent listens when moved aside.
pub const DEFAULT_AGENT: &str = "unix:///run/kata-agent.sock";

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: Option<String>,
    pub agent: Option<String>,
    #[serde(default)]
    pub policy: PolicySection,
    /// The `[storage]` table (see the storage module).
    pub storage: Option<toml::Table>,
}

/// The `[policy]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    pub file: Option<PathBuf>,
    pub rego: Option<RegoVersion>,
    pub input_shape: Option<InputShape>,
}

impl Config {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read configuration {}: {e}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("invalid configuration {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_sections() {
        let c: Config = toml::from_str(
            "listen = \"unix:///tmp/a\"\n[policy]\nrego = \"v1\"\ninput_shape = \"legacy\"\n[storage]\ndevice = \"/dev/vdb\"\n",
        )
        .unwrap();
        assert_eq!(c.listen.as_deref(), Some("unix:///tmp/a"));
        assert_eq!(c.policy.rego, Some(RegoVersion::V1));
        assert_eq!(c.policy.input_shape, Some(InputShape::Legacy));
        assert!(c.storage.is_some());
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<Config>("lisen = \"x\"").is_err());
        assert!(toml::from_str::<Config>("[policy]\nfiel = \"x\"").is_err());
    }
}
