//! The one place a regorus engine is set up, and the [`RegoVersion`] it parses as. The
//! interpreter ([`super::Policy`]), the compiled fast path ([`super::compiled`]) and the
//! policy tools all start from [`new_engine`], so a policy parses and evaluates the same
//! way everywhere.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use regorus::Engine;

/// The Rego language version a policy is written in.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum RegoVersion {
    /// Rego v0, as the kata-agents whose policy engine was regorus 0.2.x parsed it (until
    /// April 2026; `import rego.v1` opts a module into v1).
    V0,
    /// Rego v1 (OPA 1.0 syntax: `if`, `contains` required), as today's kata-agent parses
    /// it (regorus >= 0.3, which kata creates without `set_rego_v0`).
    #[default]
    V1,
}

impl RegoVersion {
    /// The other version (a parse error says whether the policy parses as it).
    pub fn other(self) -> RegoVersion {
        match self {
            RegoVersion::V0 => RegoVersion::V1,
            RegoVersion::V1 => RegoVersion::V0,
        }
    }
    /// `v0` or `v1`, as the flag and the configuration key take it.
    pub fn name(self) -> &'static str {
        match self {
            RegoVersion::V0 => "v0",
            RegoVersion::V1 => "v1",
        }
    }
}

/// regorus's execution timer for a time limit (checked every 64 work units), used by
/// the interpreter and the compiled fast path alike.
pub(crate) fn timer_config(limit: Duration) -> regorus::utils::limits::ExecutionTimerConfig {
    regorus::utils::limits::ExecutionTimerConfig {
        limit,
        check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
    }
}

/// A regorus engine for Rego `version` whose evaluations stop after `eval_timeout`,
/// with the settings kata-agent's policies need: large-policy limits, gathered prints,
/// lenient builtin errors, and the path helpers.
pub fn new_engine(version: RegoVersion, eval_timeout: Duration) -> Engine {
    let mut engine = Engine::new();
    engine.set_execution_timer_config(timer_config(eval_timeout));
    engine.set_rego_v0(version == RegoVersion::V0);
    // genpolicy policies have lines over 1,024 columns and, with large data
    // sections, exceed 1 MiB / 20,000 lines: regorus's defaults would refuse them.
    engine.set_policy_length_config(regorus::utils::limits::PolicyLengthConfig {
        max_col: NonZeroU32::MAX,
        max_file_bytes: NonZeroUsize::new(64 << 20).unwrap_or(NonZeroUsize::MAX),
        max_lines: NonZeroUsize::new(4_000_000).unwrap_or(NonZeroUsize::MAX),
    });
    engine.set_gather_prints(true);
    // As in OPA (and as the kata-agent recordings show): a builtin that fails on its
    // input, e.g. to_number("abc") in genpolicy's is_ip(), makes the expression
    // undefined instead of aborting the whole evaluation.
    engine.set_strict_builtin_errors(false);
    super::pathext::register(&mut engine);
    engine
}
