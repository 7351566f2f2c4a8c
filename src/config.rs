//! Configuration: a TOML document, in layers. From lowest to highest precedence: the
//! defaults, the `--config` file, the `agent-warden.toml` entry of attested initdata,
//! the command-line flags (which are turned into a [`Config`] layer of their own).
//!
//! ```toml
//! listen = "vsock://-1:1024"                 # where the host connects (kata's port)
//! agent = "unix:///run/kata-agent.sock"      # where the real kata-agent listens
//! [policy]
//! initdata = "/run/initdata.toml"            # initdata document (file, gzip or image)
//! initdata_scan = "/dev"                     # or: look for an initdata disk under /dev
//! file = "/etc/agent-warden/policy.rego"     # a plain policy file
//! endpoints = "/etc/agent-warden/endpoints.toml"  # legacy `[endpoints] allowed = [...]`
//! rego = "v0"                                # or "v1"
//! input_shape = "current"                    # or "legacy" (older kata-agent inputs)
//! set_policy = "auto"                        # "auto" | "policy" | "forbid"
//! require_evidence = "snp"                   # compare the digest with the TEE's before serving
//! [audit]
//! capture = "/run/agent-warden/capture.jsonl"  # every decided input, replayable
//! capture_unmasked = false
//! [limits]
//! max_connections = 64
//! max_in_flight = 1024                       # per host connection
//! eval_timeout_ms = 1000                     # per policy evaluation
//! [storage]                                  # the encrypted scratch disk (see storage/)
//! device = "/dev/vdb"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::policy::RegoVersion;
use crate::wire::input::InputShape;

/// Default listening address: kata-agent's own vsock port.
pub const DEFAULT_LISTEN: &str = "vsock://-1:1024";
/// Default agent address: where kata-agent listens when moved aside.
pub const DEFAULT_AGENT: &str = "unix:///run/kata-agent.sock";

/// The whole configuration document.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: Option<String>,
    pub agent: Option<String>,
    #[serde(default)]
    pub policy: PolicySection,
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default)]
    pub limits: LimitsSection,
    /// The `[storage]` table (see the storage module, which validates it).
    pub storage: Option<toml::Table>,
}

/// Whether SetPolicy may replace the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SetPolicySetting {
    /// `forbid` when the policy came from initdata (the measured policy must stay the
    /// enforced one), `policy` otherwise.
    #[default]
    Auto,
    /// The policy in force decides (its `SetPolicyRequest` rule), as in kata.
    Policy,
    /// SetPolicy is always refused.
    Forbid,
}

/// The `[policy]` table: where the policy comes from and how it is read.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    pub initdata: Option<PathBuf>,
    pub initdata_scan: Option<PathBuf>,
    pub file: Option<PathBuf>,
    pub endpoints: Option<PathBuf>,
    pub rego: Option<RegoVersion>,
    pub input_shape: Option<InputShape>,
    pub set_policy: Option<SetPolicySetting>,
    pub require_evidence: Option<String>,
}

/// The `[audit]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    pub capture: Option<PathBuf>,
    pub capture_unmasked: Option<bool>,
}

/// The `[limits]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub max_connections: Option<usize>,
    pub max_in_flight: Option<usize>,
    pub eval_timeout_ms: Option<u64>,
}

/// `upper` if set, else `lower`.
fn pick<T>(lower: Option<T>, upper: Option<T>) -> Option<T> {
    upper.or(lower)
}

impl Config {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read configuration {}: {e}", path.display()))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses a configuration document; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Config> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("invalid configuration {origin}: {e}"))
    }

    /// This layer with `upper` on top: every key `upper` sets wins; `[storage]` is merged
    /// key by key.
    pub fn overlay(self, upper: Config) -> Config {
        let (p, q) = (self.policy, upper.policy);
        let (a, b) = (self.audit, upper.audit);
        let (l, m) = (self.limits, upper.limits);
        let storage = match (self.storage, upper.storage) {
            (Some(mut lower), Some(upper)) => {
                lower.extend(upper);
                Some(lower)
            }
            (lower, upper) => upper.or(lower),
        };
        Config {
            listen: pick(self.listen, upper.listen),
            agent: pick(self.agent, upper.agent),
            policy: PolicySection {
                initdata: pick(p.initdata, q.initdata),
                initdata_scan: pick(p.initdata_scan, q.initdata_scan),
                file: pick(p.file, q.file),
                endpoints: pick(p.endpoints, q.endpoints),
                rego: pick(p.rego, q.rego),
                input_shape: pick(p.input_shape, q.input_shape),
                set_policy: pick(p.set_policy, q.set_policy),
                require_evidence: pick(p.require_evidence, q.require_evidence),
            },
            audit: AuditSection {
                capture: pick(a.capture, b.capture),
                capture_unmasked: pick(a.capture_unmasked, b.capture_unmasked),
            },
            limits: LimitsSection {
                max_connections: pick(l.max_connections, m.max_connections),
                max_in_flight: pick(l.max_in_flight, m.max_in_flight),
                eval_timeout_ms: pick(l.eval_timeout_ms, m.eval_timeout_ms),
            },
            storage,
        }
    }

    /// Checks a configuration carried inside initdata: it cannot name another policy
    /// source (the policy is the initdata's own `policy.rego`) nor change how the
    /// policy text is read after it was measured.
    pub fn check_initdata_layer(&self) -> anyhow::Result<()> {
        let p = &self.policy;
        let forbidden = [
            ("policy.initdata", p.initdata.is_some()),
            ("policy.initdata_scan", p.initdata_scan.is_some()),
            ("policy.file", p.file.is_some()),
            ("policy.endpoints", p.endpoints.is_some()),
            ("policy.rego", p.rego.is_some()),
        ];
        let set: Vec<&str> = forbidden
            .iter()
            .filter(|(_, yes)| *yes)
            .map(|(k, _)| *k)
            .collect();
        if !set.is_empty() {
            anyhow::bail!(
                "the initdata entry agent-warden.toml sets {}: the policy comes from the initdata's own policy.rego, so these keys are not allowed there",
                set.join(", ")
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_sections() {
        let c: Config = toml::from_str(
            "listen = \"unix:///tmp/a\"\n[policy]\nrego = \"v1\"\ninput_shape = \"legacy\"\nset_policy = \"forbid\"\nrequire_evidence = \"file:/x\"\n[audit]\ncapture = \"/c\"\n[limits]\nmax_connections = 3\n[storage]\ndevice = \"/dev/vdb\"\n",
        )
        .unwrap();
        assert_eq!(c.listen.as_deref(), Some("unix:///tmp/a"));
        assert_eq!(c.policy.rego, Some(RegoVersion::V1));
        assert_eq!(c.policy.input_shape, Some(InputShape::Legacy));
        assert_eq!(c.policy.set_policy, Some(SetPolicySetting::Forbid));
        assert_eq!(c.policy.require_evidence.as_deref(), Some("file:/x"));
        assert_eq!(c.audit.capture.as_deref(), Some(Path::new("/c")));
        assert_eq!(c.limits.max_connections, Some(3));
        assert!(c.storage.is_some());
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<Config>("lisen = \"x\"").is_err());
        assert!(toml::from_str::<Config>("[policy]\nfiel = \"x\"").is_err());
        assert!(toml::from_str::<Config>("[limits]\nmax = 1").is_err());
    }

    #[test]
    fn upper_layer_wins_key_by_key() {
        let lower = Config::parse(
            "listen = \"unix:///l\"\nagent = \"unix:///a\"\n[policy]\nset_policy = \"policy\"\n[storage]\ndevice = \"/dev/vdb\"\nintegrity = false\n",
            "lower",
        )
        .unwrap();
        let upper = Config::parse(
            "listen = \"unix:///u\"\n[storage]\nintegrity = true\n",
            "upper",
        )
        .unwrap();
        let c = lower.overlay(upper);
        assert_eq!(c.listen.as_deref(), Some("unix:///u"));
        assert_eq!(c.agent.as_deref(), Some("unix:///a"));
        assert_eq!(c.policy.set_policy, Some(SetPolicySetting::Policy));
        let s = c.storage.unwrap();
        assert_eq!(s.get("device").and_then(|v| v.as_str()), Some("/dev/vdb"));
        assert_eq!(s.get("integrity").and_then(|v| v.as_bool()), Some(true));
    }

    #[test]
    fn initdata_layer_cannot_name_another_policy() {
        let c = Config::parse("[policy]\nfile = \"/p.rego\"\nrego = \"v1\"\n", "i").unwrap();
        let e = c.check_initdata_layer().unwrap_err().to_string();
        assert!(e.contains("policy.file, policy.rego"), "{e}");
        let ok = Config::parse("[policy]\nset_policy = \"policy\"\n", "i").unwrap();
        assert!(ok.check_initdata_layer().is_ok());
    }
}
