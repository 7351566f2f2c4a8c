//! Configuration: a TOML document, in layers. From lowest to highest precedence: the
//! defaults, the `--config` file, the `agent-warden.toml` entry of attested initdata,
//! the command-line flags (which are turned into a [`Config`] layer of their own).
//!
//! Every key, each set to its default, or (marked "e.g.") to an example where it has
//! none:
//!
//! ```toml
//! listen = "vsock://-1:1024"                 # where the host connects (kata's port)
//! agent = "unix:///run/kata-agent.sock"      # where the real kata-agent listens
//! [policy]                                   # sources, highest first; none: the embedded default
//! initdata = "/run/initdata.toml"            # e.g.: initdata document (file, gzip or image)
//! initdata_scan = "/dev"                     # e.g.: look for an initdata disk under /dev
//! file = "/etc/agent-warden/policy.rego"     # e.g.: a plain policy file
//! endpoints = "/etc/agent-warden/endpoints.toml"  # e.g.: legacy `[endpoints] allowed = [...]`
//! kata = "current"                           # kata-agent generation guarded: "current" or "2024"
//! rego = "v1"                                # from kata; overrides it: "v0" or "v1"
//! input_shape = "current"                    # from kata; overrides it: "legacy", "legacy-stream-ports"
//! set_policy = "auto"                        # "auto" | "policy" | "forbid"
//! deny_message = "reason"                    # what the host is told of a denial: "reason" | "full" | "code"
//! fast_path = true                           # compiled programs decide where they may (false: the interpreter alone, as kata-agent)
//! require_evidence = "snp"                   # e.g. (default: none): check the TEE's digest first
//! [audit]
//! capture = "/run/agent-warden/capture.jsonl"  # e.g. (default: none): every decided input
//! capture_unmasked = false
//! [decision_log]                             # the OPA-format, hash-chained decision log
//! file = "/run/agent-warden/decisions.jsonl"  # e.g. (default: none)
//! max_bytes = 67108864                       # rotate at this size (0: never)
//! keep = 4                                   # rotated files kept (FILE.1 … FILE.4)
//! measure = "tpm:pcr=23"                     # e.g. (default: none): register the chain extends
//! measure_every = 1                          # measure every N-th record
//! checkpoint_ms = 0                          # with measure_every > 1: a measured checkpoint every MS (0: none)
//! [limits]
//! max_connections = 256
//! max_in_flight = 1024                       # per host connection
//! eval_timeout_ms = 2000                     # per policy evaluation
//! [storage]                                  # the encrypted scratch disk: `storage --help`
//! device = "/dev/vdb"                        # e.g. (default: none, no scratch disk)
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::policy::sources::PolicySources;
use crate::policy::{DenyMessage, RegoVersion};
use crate::storage;
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
    #[serde(default)]
    #[command(flatten)]
    pub decision_log: DecisionLogSection,
    /// The `[storage]` table (the scratch disk; `serve --storage-device` sets its
    /// `device`, `agent-warden storage` takes every key as a flag).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSection>,
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
    #[arg(long, value_enum, help = defaulted("What the host is told of a denial (the decision log always has the whole reason). reason: where the evaluation failed, the request type's rule and the failing expression as file:line, no input values. full: kata-agent's text, what the policy printed. code: the status code only, an empty message", default_name::<DenyMessage>()))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny_message: Option<DenyMessage>,
    /// Decide with regorus's compiled programs where the policy allows it (true, the
    /// default: the same decisions, several times faster), or with the interpreter
    /// alone, as kata-agent does (false: kata's exact behaviour also where the compiled
    /// programs differ, e.g. rules that give two values; see docs/SECURITY.md).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<bool>,
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

    /// Where the policy is read from (highest first: initdata, a policy file, an endpoint
    /// list, the embedded default) and its Rego version: the one place the table becomes
    /// [`PolicySources`], for `serve` and the tools alike.
    pub fn sources(&self) -> PolicySources {
        PolicySources {
            initdata: self.initdata.clone(),
            initdata_scan: self.initdata_scan.clone(),
            policy_file: self.file.clone(),
            endpoint_list: self.endpoints.clone(),
            rego: self.rego_version(),
        }
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

/// Default size at which the decision log rotates.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 64 << 20;
/// Default number of rotated decision-log files kept.
pub const DEFAULT_LOG_KEEP: usize = 4;
/// Default: with a register, every record is measured.
pub const DEFAULT_MEASURE_EVERY: u64 = 1;

/// The `[decision_log]` table: the OPA-format, hash-chained decision log
/// ([`crate::decision_log`]). From initdata, these settings are measured too.
#[derive(Debug, Clone, Default, Deserialize, Serialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct DecisionLogSection {
    /// Write one OPA-format, hash-chained JSON record per decision to FILE.
    #[arg(id = "decision_log_file", long = "decision-log", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[arg(id = "decision_log_max_bytes", long = "decision-log-max-bytes", value_name = "SIZE", value_parser = parse_size, help = defaulted("Rotate the decision log before it grows past SIZE (bytes, or K/M/G suffix; 0: never)", size_text(DEFAULT_LOG_MAX_BYTES)))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    #[arg(id = "decision_log_keep", long = "decision-log-keep", value_name = "N", help = defaulted("Rotated decision-log files kept (FILE.1 newest)", DEFAULT_LOG_KEEP))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep: Option<usize>,
    /// Measurement register the log's chain extends (tpm:pcr=N, tdx:rtmr=N, aa:...).
    #[arg(long, value_name = "SPEC")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measure: Option<String>,
    #[arg(long, value_name = "N", help = defaulted("Extend the register with every N-th record's hash", DEFAULT_MEASURE_EVERY))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measure_every: Option<u64>,
    #[arg(long = "measure-checkpoint-ms", value_name = "MS", help = defaulted("With --measure-every > 1: a measured checkpoint record every MS when records are unmeasured (0: none)", 0))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_ms: Option<u64>,
}

impl DecisionLogSection {
    /// The writer's settings, when a file is configured.
    pub fn settings(&self) -> anyhow::Result<Option<crate::decision_log::LogSettings>> {
        let Some(path) = &self.file else {
            if self.measure.is_some() {
                anyhow::bail!(
                    "[decision_log]: measure needs a decision log file (`file`, --decision-log)"
                );
            }
            return Ok(None);
        };
        if self.measure_every == Some(0) {
            anyhow::bail!("[decision_log]: measure_every must be at least 1");
        }
        Ok(Some(crate::decision_log::LogSettings {
            path: path.clone(),
            max_bytes: self.max_bytes.unwrap_or(DEFAULT_LOG_MAX_BYTES),
            keep: self.keep.unwrap_or(DEFAULT_LOG_KEEP),
            measure_every: self.measure_every.unwrap_or(DEFAULT_MEASURE_EVERY),
        }))
    }
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

/// The `[storage]` table: the encrypted scratch disk. Each key is also a flag of
/// `agent-warden storage` (the same name; defaults and meaning in
/// [`crate::storage::StorageConfig`], which [`StorageSection::resolve`] fills in).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// The scratch disk: a path (/dev/vdb) or MAJ:MIN (254:16).
    #[arg(
        long,
        global = true,
        value_name = "PATH|MAJ:MIN",
        visible_alias = "storage-device"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[arg(long, global = true, value_name = "DIR", help = defaulted("Mount point", storage_default(|c| c.mount_point.display().to_string())))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount_point: Option<PathBuf>,
    /// Extra mount option (repeatable; replaces the configured list). nodev,nosuid are always added.
    #[arg(
        long = "fs-options",
        visible_alias = "fs-option",
        global = true,
        value_name = "OPT"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs_options: Option<Vec<String>>,
    /// Extra mkfs.ext4 argument (repeatable, e.g. --mkfs-options=-m --mkfs-options=0;
    /// replaces the configured list).
    #[arg(
        long = "mkfs-options",
        visible_alias = "mkfs-option",
        global = true,
        value_name = "ARG",
        allow_hyphen_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mkfs_options: Option<Vec<String>>,
    #[arg(long, global = true, value_name = "on|off", value_parser = parse_on_off, help = defaulted("dm-integrity under dm-crypt: on or off", storage_default(|c| if c.integrity { "on" } else { "off" })))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integrity: Option<bool>,
    #[arg(long, global = true, value_name = "startup|on-demand", value_parser = <storage::SetupAt as std::str::FromStr>::from_str, help = defaulted("When setup happens: startup (before serve listens) or on-demand", storage_default(|c| c.setup_at)))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup_at: Option<storage::SetupAt>,
    #[arg(long = "min-size-bytes", visible_alias = "min-size", global = true, value_name = "SIZE", value_parser = parse_size, help = defaulted("Smallest device accepted (bytes, or with K/M/G/T suffix)", storage_default(|c| size_text(c.min_size_bytes))))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_size_bytes: Option<u64>,
    #[arg(long, global = true, value_name = "DIR", help = defaulted("Memory-backed state directory", storage_default(|c| c.state_dir.display().to_string())))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    #[arg(long, global = true, value_name = "NAME", help = defaulted("Device-mapper name", storage_default(|c| c.mapper_name.clone())))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapper_name: Option<String>,
    #[arg(long, global = true, value_name = "PROGRAM", help = defaulted("cryptsetup program, from PATH unless absolute", storage_default(|c| c.cryptsetup.display().to_string())))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cryptsetup: Option<PathBuf>,
    #[arg(long, global = true, value_name = "PROGRAM", help = defaulted("mkfs.ext4 program, from PATH unless absolute", storage_default(|c| c.mkfs.display().to_string())))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mkfs: Option<PathBuf>,
    #[arg(long, global = true, value_name = "PROGRAM", help = defaulted("mount program, from PATH unless absolute", storage_default(|c| c.mount.display().to_string())))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount: Option<PathBuf>,
    #[arg(long, global = true, value_name = "PROGRAM", help = defaulted("umount program, from PATH unless absolute", storage_default(|c| c.umount.display().to_string())))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub umount: Option<PathBuf>,
}

impl StorageSection {
    /// The scratch-disk configuration: the keys set here over the defaults.
    pub fn resolve(&self) -> anyhow::Result<storage::StorageConfig> {
        let table =
            toml::Table::try_from(self).map_err(|e| anyhow::anyhow!("invalid [storage]: {e}"))?;
        toml::Value::Table(table)
            .try_into()
            .map_err(|e| anyhow::anyhow!("invalid [storage]: {e}"))
    }
}

/// A `[storage]` key's default, read from [`storage::StorageConfig::default`] (for help
/// texts: the defaults are not typed twice).
fn storage_default<T: std::fmt::Display>(key: impl Fn(&storage::StorageConfig) -> T) -> String {
    key(&storage::StorageConfig::default()).to_string()
}

/// A size as [`parse_size`] reads it, in the largest binary unit that divides it.
fn size_text(n: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if n != 0 && n.trailing_zeros() >= shift {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
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
    fn decision_log_section_resolves_and_checks() {
        let c = Config::parse(
            "[decision_log]\nfile = \"/l\"\nmax_bytes = 1000\nkeep = 2\nmeasure = \"tpm:pcr=23\"\nmeasure_every = 5\ncheckpoint_ms = 100\n",
            "t",
        )
        .unwrap();
        let s = c.decision_log.settings().unwrap().unwrap();
        assert_eq!((s.max_bytes, s.keep, s.measure_every), (1000, 2, 5));
        assert_eq!(s.path, Path::new("/l"));
        let d = Config::parse("[decision_log]\nfile = \"/l\"\n", "t").unwrap();
        let s = d.decision_log.settings().unwrap().unwrap();
        assert_eq!(
            (s.max_bytes, s.keep, s.measure_every),
            (DEFAULT_LOG_MAX_BYTES, DEFAULT_LOG_KEEP, 1)
        );
        for bad in [
            "[decision_log]\nmeasure = \"tpm:pcr=23\"\n",
            "[decision_log]\nfile = \"/l\"\nmeasure_every = 0\n",
        ] {
            let c = Config::parse(bad, "t").unwrap();
            assert!(c.decision_log.settings().is_err(), "{bad}");
        }
        assert!(Config::parse("[decision_log]\nsize = 3\n", "t").is_err());
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
        assert_eq!(s.device.as_deref(), Some("/dev/vdb"));
        assert_eq!(s.integrity, Some(true));
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

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2 k"), Ok(2048));
        assert!(parse_size("M").is_err());
        assert!(parse_size("1Q").is_err());
        assert!(parse_size("99999999999T").is_err());
        for n in [4096, 64 << 20, 1 << 30, 3 << 40, 1000, 0] {
            assert_eq!(parse_size(&size_text(n)), Ok(n), "{}", size_text(n));
        }
        assert_eq!(size_text(64 << 20), "64M");
    }

    #[test]
    fn on_off_parses() {
        assert_eq!(parse_on_off("on"), Ok(true));
        assert_eq!(parse_on_off("OFF"), Ok(false));
        assert_eq!(parse_on_off("false"), Ok(false));
        assert!(parse_on_off("maybe").is_err());
    }

    #[test]
    fn storage_section_resolves_over_the_defaults() {
        let s = Config::parse(
            "[storage]\ndevice = \"/dev/vdb\"\nmin_size_bytes = 4096\n",
            "t",
        )
        .unwrap()
        .storage
        .unwrap();
        let c = s.resolve().unwrap();
        assert_eq!(c.device.as_deref(), Some("/dev/vdb"));
        assert_eq!(c.min_size_bytes, 4096);
        assert_eq!(
            StorageSection::default().resolve().unwrap(),
            storage::StorageConfig::default()
        );
        assert!(Config::parse("[storage]\nbogus = 1\n", "t").is_err());
    }
}
