//! `agent-warden policy check FILE`: parse a policy as `serve` would; list the request
//! types it defines, those it leaves undefined (always denied) and capitalised rules no
//! request queries.
use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Args;

use super::{declared, identifiers, RegoChoice, PERMISSIVE_RULE};
use crate::policy::sources::read_text;
use crate::policy::{Policy, RegoVersion};
use crate::wire::methods;

/// Flags of `policy check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The policy file (Rego, package agent_policy).
    pub file: PathBuf,
    #[command(flatten)]
    pub rego: RegoChoice,
}

/// What `policy check` reports about a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// Request types the policy declares a rule (or a default) for.
    pub defined: Vec<String>,
    /// Request types it does not declare: every such request is denied.
    pub undefined: Vec<String>,
    /// Declared rules whose name starts with a capital letter but that no request
    /// queries (a misspelt request type, say).
    pub unknown: Vec<String>,
    /// `AllowRequestsFailingPolicy` is true: denials are logged, then allowed.
    pub permissive: bool,
}

/// Loads `text` as `serve` would (parse, package, compile), then lists its request types.
pub fn coverage(source_name: &str, text: &str, version: RegoVersion) -> anyhow::Result<Coverage> {
    let policy = Policy::load(source_name, text, version)?;
    let mut engine =
        crate::policy::engine::new_engine(version, crate::policy::DEFAULT_EVAL_TIMEOUT);
    engine
        .add_policy(source_name.to_string(), text.to_string())
        .map_err(|e| anyhow::anyhow!("policy {source_name}: {e}"))?;
    let types = methods::table().policy_request_types();
    let defined: BTreeSet<&str> = declared(&engine, source_name, types.iter().copied())
        .into_iter()
        .collect();
    let capitalised = |w: &&str| w.starts_with(|c: char| c.is_ascii_uppercase());
    let mut unknown: Vec<String> = declared(
        &engine,
        source_name,
        identifiers(text)
            .into_iter()
            .filter(capitalised)
            .filter(|w| !types.contains(w) && *w != PERMISSIVE_RULE),
    )
    .into_iter()
    .map(String::from)
    .collect();
    unknown.sort();
    Ok(Coverage {
        defined: types
            .iter()
            .filter(|t| defined.contains(*t))
            .map(|t| t.to_string())
            .collect(),
        undefined: types
            .iter()
            .filter(|t| !defined.contains(*t))
            .map(|t| t.to_string())
            .collect(),
        unknown,
        permissive: policy.is_permissive(),
    })
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

pub(super) fn check(a: &CheckArgs, out: &mut impl std::io::Write) -> anyhow::Result<i32> {
    let name = a.file.display().to_string();
    let text = read_text(&a.file, "policy")?;
    let c = coverage(&name, &text, a.rego.version())?;
    let sha = crate::attestation::to_hex(&crate::attestation::digest(
        crate::attestation::Algorithm::Sha256,
        text.as_bytes(),
    ));
    writeln!(
        out,
        "{name}: ok (Rego {}, package agent_policy, sha256 {sha})",
        RegoVersion::name(a.rego.version())
    )?;
    writeln!(out, "defined ({}): {}", c.defined.len(), list(&c.defined))?;
    writeln!(
        out,
        "undefined, always denied ({}): {}",
        c.undefined.len(),
        list(&c.undefined)
    )?;
    if !c.unknown.is_empty() {
        writeln!(
            out,
            "not request types, never queried ({}): {}",
            c.unknown.len(),
            list(&c.unknown)
        )?;
    }
    if c.permissive {
        writeln!(
            out,
            "{PERMISSIVE_RULE} is true: denied requests are logged, then allowed"
        )?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_lists_defined_undefined_and_misnamed_rules() {
        let src =
            "package agent_policy\nimport rego.v1\n# ExecProcessRequest is not defined here\n\
                   default CreateContainerRequest := true\nStartContainerRequest if input.x\n\
                   CreateContainerRequests := true\nhelper := 1\n";
        let c = coverage("p.rego", src, RegoVersion::V0).unwrap();
        assert_eq!(
            c.defined,
            vec!["CreateContainerRequest", "StartContainerRequest"]
        );
        assert_eq!(
            c.undefined.len(),
            methods::table().policy_request_types().len() - 2
        );
        assert!(c.undefined.contains(&"ExecProcessRequest".to_string()));
        assert_eq!(c.unknown, vec!["CreateContainerRequests"]);
        assert!(!c.permissive);
        let c = coverage(
            "p.rego",
            "package agent_policy\ndefault AllowRequestsFailingPolicy := true\n",
            RegoVersion::V0,
        )
        .unwrap();
        assert!(
            c.permissive && c.defined.is_empty() && c.unknown.is_empty(),
            "{c:?}"
        );
    }

    #[test]
    fn coverage_reports_parse_and_compile_errors() {
        let e = coverage(
            "p.rego",
            "package agent_policy\nimport rego.v1\nCreateContainerRequest if x == 1\n",
            RegoVersion::V0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("does not compile"), "{e}");
        let e = coverage(
            "p.rego",
            "package agent_policy\nX { true \n",
            RegoVersion::V0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("failed to parse as Rego v0"), "{e}");
    }
}
