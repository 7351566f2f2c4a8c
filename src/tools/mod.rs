//! The policy author's tools, `agent-warden policy check|eval|test|replay|hash`, one
//! file per command, and what they share: the flags naming a policy ([`PolicyChoice`],
//! [`RegoChoice`]), the guard that decides as `serve` does, and rule-name helpers.
//!
//! Offline helpers for policy authors. `eval` and `replay` load the policy (or a legacy
//! endpoint list) from the same sources as `serve` and decide through the same function,
//! [`Guard::decide`]: the policy's decision and serve's rules on top of it
//! (AllowRequestsFailingPolicy, endpoint-list answers, blanked reads, SetPolicy).
//! `check` loads with [`crate::policy::Policy::load`]. `test` loads several modules at
//! once, which `Policy` cannot, so it uses an engine from
//! [`crate::policy::engine::new_engine`]. docs/POLICY.md describes each command and its
//! output. `demo` and `initdata` are commands of their own.

pub mod cases;
pub mod check;
pub mod demo;
pub mod eval;
pub mod hash;
pub mod initdata;
pub mod log;
pub mod replay;
pub mod storage;
pub mod test;

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use regorus::Engine;

use crate::config::{KataAgent, PolicySection};
use crate::policy::sources::Origin;
use crate::policy::{Decision, LoadOptions, RegoVersion};
use crate::serve::judge::Guard;
use crate::wire::input::InputShape;
use crate::wire::methods;

pub use check::{coverage, Coverage};
pub use eval::{evaluate, seed_state, Outcome};
pub use replay::ReplaySummary;
pub use test::{find_test_files, run_test_file, LoadFailure, TestResult};

/// `agent-warden policy ...`
#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// The policy tools.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Parse a policy; list the request types it defines and those it leaves undefined (always denied).
    Check(check::CheckArgs),
    /// Decide one request and print the decision as JSON.
    Eval(eval::EvalArgs),
    /// Run the `test_*` rules of *_test.rego files (each loaded with the policy beside it).
    Test(test::TestArgs),
    /// Re-decide captured requests (JSON lines: {"kind": "<RequestType>", "request": {...}}).
    Replay(replay::ReplayArgs),
    /// Print the digest of a policy file (sha256 of its bytes, lowercase hex).
    Hash(hash::HashArgs),
}

/// How a policy's text is read, for every tool that reads one: the kata-agent it is
/// written for, or its Rego version directly (as `serve --kata`, `--rego`).
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct RegoChoice {
    /// The kata-agent the policy is written for: current (Rego v1) or 2024 (Rego v0).
    #[arg(long, value_enum)]
    pub kata: Option<KataAgent>,
    /// Rego version of the policy, overrides --kata (v1: today's kata-agent; v0:
    /// kata-agents with regorus 0.2.x) [default: v1].
    #[arg(long, value_enum)]
    pub rego: Option<RegoVersion>,
}

impl RegoChoice {
    /// The Rego version: `--rego`, else `--kata`'s, else v1 (as `serve` resolves it).
    pub fn version(&self) -> RegoVersion {
        self.section().rego_version()
    }

    /// The choice as (part of) `serve`'s `[policy]` table.
    fn section(&self) -> PolicySection {
        PolicySection {
            kata: self.kata,
            rego: self.rego,
            ..PolicySection::default()
        }
    }
}

/// Which policy a tool decides with: a policy file, a legacy endpoint list, or the
/// embedded default, read as `serve` reads them.
#[derive(Debug, Clone, Default, Args)]
pub struct PolicyChoice {
    /// Policy file [default: the embedded coco-default policy].
    #[arg(long, conflicts_with = "endpoints")]
    pub policy: Option<PathBuf>,
    /// A legacy endpoint list (TOML `[endpoints] allowed = [...]`) instead of a policy,
    /// decided and answered as `serve --endpoints` does.
    #[arg(long)]
    pub endpoints: Option<PathBuf>,
    #[command(flatten)]
    pub rego: RegoChoice,
    /// What the host is told of a denial, as `serve --deny-message` (reason, full, code)
    /// [default: reason]. The tools' own output always has the whole reason.
    #[arg(long, value_enum)]
    pub deny_message: Option<crate::policy::DenyMessage>,
}

impl PolicyChoice {
    /// The choice as `serve`'s `[policy]` table, which says where the policy is read from.
    pub fn section(&self) -> PolicySection {
        PolicySection {
            file: self.policy.clone(),
            endpoints: self.endpoints.clone(),
            deny_message: self.deny_message,
            ..self.rego.section()
        }
    }
}

/// Runs a policy tool; returns the process exit code.
pub fn run_cli(args: PolicyArgs) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    match args.command {
        PolicyCommand::Check(a) => check::check(&a, &mut out),
        PolicyCommand::Eval(a) => eval::eval(&a, &mut out),
        PolicyCommand::Test(a) => test::test(&a, &mut out),
        PolicyCommand::Replay(a) => replay::replay(&a, &mut out),
        PolicyCommand::Hash(a) => hash::hash(&a, &mut out),
    }
}

// ---------------------------------------------------------------------------
// Shared pieces

/// The rule kata-agent (and agent-warden) reads once at load: audit mode.
pub(super) const PERMISSIVE_RULE: &str = "AllowRequestsFailingPolicy";

/// A [`Guard`] that decides as `serve` does with the policy (or endpoint list) named on
/// the command line, or the embedded default.
pub fn serve_guard(choice: &PolicyChoice) -> anyhow::Result<Guard> {
    // What the host is told of a denial, as `serve` resolves it (`--deny-message`).
    let section = choice.section();
    let options = LoadOptions {
        deny_message: section.deny_message.unwrap_or_default(),
        ..LoadOptions::default()
    };
    let loaded = crate::policy::sources::load(&section.sources(), options)?;
    let endpoint_list = matches!(loaded.origin, Origin::EndpointList(_));
    Ok(Guard::new(loaded.policy, InputShape::Current).with_endpoint_list(endpoint_list))
}

/// `"allow"`, `"deny"` or `"error"`, and the reason (none for allow).
pub(super) fn verdict(d: &Decision) -> (&'static str, Option<&str>) {
    match d {
        Decision::Allow => ("allow", None),
        Decision::Deny { reason, .. } => ("deny", Some(reason)),
        Decision::Error(e) => ("error", Some(e)),
    }
}

/// An error unless `request_type` is one of the method table's (a policy rule name).
pub(super) fn known_request_type(request_type: &str) -> anyhow::Result<()> {
    if methods::table()
        .policy_request_types()
        .contains(&request_type)
    {
        Ok(())
    } else {
        anyhow::bail!("unknown request type {request_type:?} (`agent-warden endpoints` lists them)")
    }
}

/// Identifiers in `text` (candidate rule names), in order of first appearance.
pub(super) fn identifiers(text: &str) -> Vec<&str> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let word_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut prev = None;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c.is_ascii_alphabetic() || c == '_' {
            let len = rest.find(|c: char| !word_char(c)).unwrap_or(rest.len());
            let (word, tail) = rest.split_at(len);
            // Skip the tail of a longer token such as `1e5x` or a field after a digit.
            let preceded_by_digit = prev.is_some_and(|p: char| p.is_ascii_digit());
            if !preceded_by_digit && seen.insert(word) {
                out.push(word);
            }
            prev = word.chars().last();
            rest = tail;
        } else {
            prev = Some(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The names among `candidates` that `source` (a module loaded into `engine` under
/// that name) declares as rules (a rule, a default, or rules beneath that name).
fn declared<'a>(
    engine: &Engine,
    source: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Vec<&'a str> {
    candidates
        .into_iter()
        .filter(|name| {
            engine
                .has_declared_rule_rooted_at(source, name)
                .unwrap_or(false)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_found_once_in_order() {
        assert_eq!(
            identifiers("test_a if { x.test_b == 1e5 }\ntest_a"),
            vec!["test_a", "if", "x", "test_b"]
        );
    }

    #[derive(Debug, clap::Parser)]
    struct TestCli {
        #[command(subcommand)]
        command: PolicyCommand,
    }

    #[test]
    fn kind_is_the_request_type_flag_and_type_still_works() {
        use clap::Parser;
        for flag in ["--kind", "--type"] {
            let cli = TestCli::try_parse_from([
                "x",
                "eval",
                flag,
                "ExecProcessRequest",
                "--input",
                "i.json",
            ])
            .unwrap();
            let PolicyCommand::Eval(a) = cli.command else {
                panic!("not eval")
            };
            assert_eq!(a.kind, "ExecProcessRequest");
        }
    }

    #[test]
    fn kata_sets_the_rego_version_and_rego_overrides_it() {
        let choice = |kata, rego| RegoChoice { kata, rego }.version();
        assert_eq!(choice(None, None), RegoVersion::V1);
        assert_eq!(choice(Some(KataAgent::Regorus02), None), RegoVersion::V0);
        assert_eq!(
            choice(Some(KataAgent::Regorus02), Some(RegoVersion::V1)),
            RegoVersion::V1
        );
        let section = PolicyChoice {
            policy: Some("p.rego".into()),
            endpoints: None,
            rego: RegoChoice {
                kata: Some(KataAgent::Regorus02),
                rego: None,
            },
            deny_message: None,
        }
        .section();
        let sources = section.sources();
        assert_eq!(sources.policy_file, Some(PathBuf::from("p.rego")));
        assert_eq!(sources.rego, RegoVersion::V0);
    }
}
