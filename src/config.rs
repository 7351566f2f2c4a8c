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
//! kata = "current"                          # kata-agent generation guarded: "current" or "2024"
//! rego = "v1"                                # overrides kata's: "v0" or "v1"
//! input_shape = "current"                    # overrides kata's: "legacy", "legacy-stream-ports"
//! set_policy = "auto"                        # "auto" | "policy" | "forbid"
//! deny_message = "reason"                    # what a denial says: "reason" | "full"
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

use serde::{Deserialize, Serialize};

use crate::policy::{DenyMessage, RegoVersion};
use crate::wire::input::InputShape;

/// Default listening address: kata-agent's own vsock port.
pub const DEFAULT_LISTEN: &str = "vsock://-1:1024";
/// Default agent address: where kata-agent listens when moved aside.
pub const DEFAULT_AGENT: &str = "unix:///run/kata-agent.sock";
/// Default most host connections served at once (each costs two sockets and a task).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Default most requests in flight per host connection; beyond it a request is
/// answered RESOURCE_EXHAUSTED and not forwarded.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// Default time limit of one policy evaluation, in milliseconds
/// ([`crate::policy::DEFAULT_EVAL_TIMEOUT`]).
pub const DEFAULT_EVAL_TIMEOUT_MS: u64 = crate::policy::DEFAULT_EVAL_TIMEOUT.as_millis() as u64;

/// A flag's help text with its default, as clap would print a `default_value` (the
/// settings have no clap defaults: an unset flag must not hide the lower layers).
fn defaulted(help: &str, default: impl std::fmt::Display) -> String {
    format!("{help} [default: {default}]")
}

/// The name of an enum setting's default value, as the flag takes it.
fn default_name<T: clap::ValueEnum + Default>() -> String {
    T::default()
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

// Every setting is defined once, below: its TOML key (the field, in its table), its
// `serve` flag (clap derives it from the same field; `--config` sections are
// flattened), its help text and its default. The layers are documents of this one
// type, merged key by key ([`Config::overlay`]).

/// The whole configuration document, and `serve`'s flags.
#[derive(Debug, Clone, Default, Deserialize, Serialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[arg(long, value_name = "ADDR", help = defaulted("Where the host connects (vsock://CID:PORT or unix:///path)", DEFAULT_LISTEN))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[arg(long, value_name = "ADDR", help = defaulted("Where kata-agent listens", DEFAULT_AGENT))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default)]
    #[command(flatten)]
    pub policy: PolicySection,
    #[serde(default)]
    #[command(flatten)]
    pub audit: AuditSection,
    #[serde(default)]
    #[command(flatten)]
    pub limits: LimitsSection,
    /// The `[storage]` table (see the storage module, which validates it); the flag
    /// `--storage-device` sets its `device`.
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<toml::Table>,
}

/// The kata-agent generation agent-warden stands in for: it sets the Rego version and
/// the policy input shape together. `rego` and `input_shape` override the value it
/// gives when set in the same layer or a higher one; a layer that sets `kata` replaces
/// the lower layers' `rego` and `input_shape`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
pub enum KataAgent {
    /// Today's kata-agent: built from kata-containers since April 2026 (3.x/4.x with
    /// regorus >= 0.3; checked against 4.1.0 at 7c6ba40c). Rego v1, current input.
    #[default]
    #[serde(rename = "current")]
    #[value(name = "current")]
    Current,
    /// The kata-agents whose policy engine was regorus 0.2.x (kata-containers 3.x, 2024
    /// until April 2026), which recorded the genpolicy peer data. Rego v0, the
    /// `legacy-stream-ports` input; the oldest of those builds (no stdio ports in
    /// CreateContainer/ExecProcess) also need `input_shape = "legacy"`.
    #[serde(rename = "2024")]
    #[value(name = "2024")]
    Regorus02,
}

impl KataAgent {
    /// The Rego version this kata-agent parses policies as.
    pub fn rego(self) -> RegoVersion {
        match self {
            KataAgent::Current => RegoVersion::V1,
            KataAgent::Regorus02 => RegoVersion::V0,
        }
    }

    /// The policy input this kata-agent builds.
    pub fn input_shape(self) -> InputShape {
        match self {
            KataAgent::Current => InputShape::Current,
            KataAgent::Regorus02 => InputShape::LegacyStreamPorts,
        }
    }
}

/// Whether SetPolicy may replace the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
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
#[derive(Debug, Clone, Default, Deserialize, Serialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// Initdata document holding the policy (TOML, gzip, or the block-device image).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initdata: Option<PathBuf>,
    /// Look for an initdata block device (vd*, sd*) under DIR [default when given bare: /dev].
    #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = "/dev")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initdata_scan: Option<PathBuf>,
    #[arg(long = "policy", value_name = "FILE", help = defaulted("Policy file (Rego, package agent_policy)", "the embedded coco-default policy"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Legacy endpoint list (TOML `[endpoints] allowed = [...]`) instead of a policy.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<PathBuf>,
    #[arg(long, value_enum, help = defaulted("The kata-agent guarded; sets --rego and --input-shape together. current: kata-agent since April 2026 (3.x/4.x, regorus >= 0.3): Rego v1, current input. 2024: kata-agent 3.x with regorus 0.2.x (2024 to April 2026): Rego v0, legacy-stream-ports input", default_name::<KataAgent>()))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kata: Option<KataAgent>,
    #[arg(long, value_enum, help = defaulted("Rego version of the policy, overrides --kata (v1: today's kata-agent; v0: kata-agents with regorus 0.2.x)", default_name::<RegoVersion>()))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rego: Option<RegoVersion>,
    #[arg(long, value_enum, help = defaulted("Policy input shape, overrides --kata: current kata-agent, or the 2024 kata-agents that recorded the genpolicy data (legacy-stream-ports; legacy: their older builds, without stdio ports)", default_name::<InputShape>()))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_shape: Option<InputShape>,
    #[arg(long, value_enum, help = defaulted("Whether SetPolicy may replace the policy (auto = forbid for initdata policies, else the policy decides)", default_name::<SetPolicySetting>()))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_policy: Option<SetPolicySetting>,
    #[arg(long, value_enum, help = defaulted("What a denial says to the host and the decision log. reason: the rule that denied, no input values (the compiled fast path decides denials too). full: kata-agent's text, what the policy printed (the interpreter evaluates every denial again for its prints)", default_name::<DenyMessage>()))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny_message: Option<DenyMessage>,
    /// Refuse to serve unless the TEE reports the policy's digest: snp[:TSM_ROOT],
    /// snp-report:DIR, tdx[:DEVICE], tdx-sysfs[:PATH], tdx-quote[:TSM_ROOT], file:PATH.
    #[arg(long, value_name = "SOURCE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_evidence: Option<String>,
}

impl PolicySection {
    /// The Rego version to parse the policy as: `rego`, else `kata`'s, else v1.
    pub fn rego_version(&self) -> RegoVersion {
        self.rego
            .unwrap_or_else(|| self.kata.unwrap_or_default().rego())
    }

    /// The policy input shape: `input_shape`, else `kata`'s, else current.
    pub fn shape(&self) -> InputShape {
        self.input_shape
            .unwrap_or_else(|| self.kata.unwrap_or_default().input_shape())
    }
}

/// The `[audit]` table.
#[derive(Debug, Clone, Default, Deserialize, Serialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Record every decided input to FILE (JSON lines, for `policy replay`).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture: Option<PathBuf>,
    /// Keep env values and byte payloads in the capture (masked by default).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_unmasked: Option<bool>,
}

/// The `[limits]` table.
#[derive(Debug, Clone, Default, Deserialize, Serialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    #[arg(long, value_name = "N", help = defaulted("Most host connections served at once", DEFAULT_MAX_CONNECTIONS))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    #[arg(long, value_name = "N", help = defaulted("Most requests in flight per host connection", DEFAULT_MAX_IN_FLIGHT))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    #[arg(long, value_name = "MS", help = defaulted("Time limit of one policy evaluation, in milliseconds", DEFAULT_EVAL_TIMEOUT_MS))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_timeout_ms: Option<u64>,
}

/// `upper` merged into `lower`: every key `upper` sets wins, tables are merged key by
/// key.
fn merge(lower: &mut toml::Table, upper: toml::Table) {
    for (key, value) in upper {
        match (lower.get_mut(&key), value) {
            (Some(toml::Value::Table(l)), toml::Value::Table(u)) => merge(l, u),
            (_, value) => {
                lower.insert(key, value);
            }
        }
    }
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

    /// This layer with `upper` on top: every key `upper` sets wins; tables (`[storage]`
    /// too) are merged key by key.
    pub fn overlay(mut self, upper: Config) -> anyhow::Result<Config> {
        if upper.policy.kata.is_some() {
            // A layer naming the kata-agent generation replaces the lower layers' choice
            // of Rego version and input shape (its own single keys still override it).
            (self.policy.rego, self.policy.input_shape) = (None, None);
        }
        let table = |c: Config| {
            toml::Table::try_from(c).map_err(|e| {
                anyhow::anyhow!("a configuration value cannot be written as TOML: {e}")
            })
        };
        let mut lower = table(self)?;
        merge(&mut lower, table(upper)?);
        toml::Value::Table(lower)
            .try_into()
            .map_err(|e| anyhow::anyhow!("invalid configuration after layering: {e}"))
    }

    /// Most host connections at once.
    pub fn max_connections(&self) -> usize {
        self.limits
            .max_connections
            .unwrap_or(DEFAULT_MAX_CONNECTIONS)
    }

    /// Most requests in flight per host connection.
    pub fn max_in_flight(&self) -> usize {
        self.limits.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT)
    }

    /// Time limit of one policy evaluation.
    pub fn eval_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.limits
                .eval_timeout_ms
                .unwrap_or(DEFAULT_EVAL_TIMEOUT_MS),
        )
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
            ("policy.kata", p.kata.is_some()),
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
    fn kata_sets_rego_and_shape_and_the_single_keys_override_it() {
        let p = |text: &str| Config::parse(text, "t").unwrap().policy;
        let default = p("");
        assert_eq!(
            (default.rego_version(), default.shape()),
            (RegoVersion::V1, InputShape::Current)
        );
        let old = p("[policy]\nkata = \"2024\"\n");
        assert_eq!(
            (old.rego_version(), old.shape()),
            (RegoVersion::V0, InputShape::LegacyStreamPorts)
        );
        let mixed = p("[policy]\nkata = \"2024\"\nrego = \"v1\"\ninput_shape = \"legacy\"\n");
        assert_eq!(
            (mixed.rego_version(), mixed.shape()),
            (RegoVersion::V1, InputShape::Legacy)
        );
        // An upper layer's kata replaces a lower layer's single keys; its own stay.
        let file = || {
            Config::parse(
                "[policy]\nrego = \"v0\"\ninput_shape = \"legacy\"\n",
                "file",
            )
            .unwrap()
        };
        let layer = |text: &str| Config::parse(text, "flags").unwrap();
        let c = file()
            .overlay(layer("[policy]\nkata = \"current\"\n"))
            .unwrap();
        assert_eq!(
            (c.policy.rego_version(), c.policy.shape()),
            (RegoVersion::V1, InputShape::Current)
        );
        let c = file()
            .overlay(layer("[policy]\nkata = \"current\"\nrego = \"v0\"\n"))
            .unwrap();
        assert_eq!(
            (c.policy.rego_version(), c.policy.shape()),
            (RegoVersion::V0, InputShape::Current)
        );
        let c = file().overlay(layer("listen = \"unix:///x\"\n")).unwrap();
        assert_eq!(
            (c.policy.rego_version(), c.policy.shape()),
            (RegoVersion::V0, InputShape::Legacy)
        );
        assert!(Config::parse("[policy]\nkata = \"2023\"\n", "t").is_err());
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
        let c = lower.overlay(upper).unwrap();
        assert_eq!(c.listen.as_deref(), Some("unix:///u"));
        assert_eq!(c.agent.as_deref(), Some("unix:///a"));
        assert_eq!(c.policy.set_policy, Some(SetPolicySetting::Policy));
        let s = c.storage.unwrap();
        assert_eq!(s.get("device").and_then(|v| v.as_str()), Some("/dev/vdb"));
        assert_eq!(s.get("integrity").and_then(|v| v.as_bool()), Some(true));
    }

    #[test]
    fn initdata_layer_cannot_name_another_policy() {
        let c = Config::parse(
            "[policy]\nfile = \"/p.rego\"\nrego = \"v1\"\nkata = \"2024\"\n",
            "i",
        )
        .unwrap();
        let e = c.check_initdata_layer().unwrap_err().to_string();
        assert!(e.contains("policy.file, policy.rego, policy.kata"), "{e}");
        let ok = Config::parse("[policy]\nset_policy = \"policy\"\n", "i").unwrap();
        assert!(ok.check_initdata_layer().is_ok());
    }
}
