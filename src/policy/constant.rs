//! Rules whose value is the same whatever the request says: `default R := true` or
//! `default R := false` where the policy defines `R` nowhere else.
//!
//! genpolicy writes most of the requests a running pod sends this way: StartContainer,
//! WaitProcess, GetOOMEvent, GuestDetails, … are `true`; ReadStream (every
//! ReadStdout/ReadStderr poll of a container's log pipes) is `false`. Their value
//! depends on neither input nor data, so [`crate::policy`] finds them once, by reading
//! the parsed policy, and decides them without building an input value or running an
//! engine. The decision is the one the engine would reach: allow, or deny with "the
//! policy returned false" (a lone default prints nothing).
//!
//! The check is deliberately narrow: every module must be `package agent_policy`, and
//! a name counts once for every rule whose head starts with it (`R`, `R.x`, `R[k]`,
//! `R(x)`, defaults included), so a constant is a name with exactly one rule, a
//! `default` without arguments whose value is the literal `true` or `false`.

use std::collections::HashMap;

use regorus::unstable::{Expr, Rule, RuleHead};
use regorus::{Engine, Value};

/// The rules of `data.agent_policy` whose value is a bool whatever the input and data.
pub(crate) fn constant_rules(engine: &mut Engine) -> HashMap<String, bool> {
    let mut rules: HashMap<String, (usize, Option<bool>)> = HashMap::new();
    for module in engine.get_modules() {
        if head_path(&module.package.refr).as_deref() != Some(&["agent_policy".to_string()][..]) {
            return HashMap::new();
        }
        for rule in &module.policy {
            let (refr, constant) = match rule.as_ref() {
                Rule::Default {
                    refr, args, value, ..
                } => match value.as_ref() {
                    Expr::Bool {
                        value: Value::Bool(b),
                        ..
                    } if args.is_empty() => (refr, Some(*b)),
                    _ => (refr, None),
                },
                Rule::Spec { head, .. } => match head {
                    RuleHead::Compr { refr, .. }
                    | RuleHead::Set { refr, .. }
                    | RuleHead::Func { refr, .. } => (refr, None),
                },
            };
            // A head we cannot name is a reason to trust nothing.
            let Some(name) = head_path(refr).and_then(|p| p.into_iter().next()) else {
                return HashMap::new();
            };
            let entry = rules.entry(name).or_insert((0, None));
            entry.0 += 1;
            entry.1 = constant;
        }
    }
    rules
        .into_iter()
        .filter_map(|(name, (count, constant))| match (count, constant) {
            (1, Some(b)) => Some((name, b)),
            _ => None,
        })
        .collect()
}

/// Whether a module of the policy defines a rule named `name` (any head starting
/// with it, defaults included). Used at load, so that an optional rule such as
/// `log_mask` costs nothing when absent.
pub(crate) fn defines(engine: &mut Engine, name: &str) -> bool {
    engine.get_modules().iter().any(|module| {
        module.policy.iter().any(|rule| {
            head_path(rule_ref(rule))
                .and_then(|p| p.into_iter().next())
                .is_some_and(|n| n == name)
        })
    })
}

/// The reference a rule defines (its head's `refr`), whatever kind of rule it is.
pub(crate) fn rule_ref(rule: &Rule) -> &Expr {
    match rule {
        Rule::Default { refr, .. } => refr,
        Rule::Spec { head, .. } => match head {
            RuleHead::Compr { refr, .. }
            | RuleHead::Set { refr, .. }
            | RuleHead::Func { refr, .. } => refr,
        },
    }
}

/// The components of a reference written with names only (`a`, `a.b`, `a[k]` → `a`…);
/// `None` for anything else.
fn head_path(e: &Expr) -> Option<Vec<String>> {
    match e {
        Expr::Var { span, .. } => Some(vec![span.text().to_string()]),
        Expr::RefDot { refr, field, .. } => {
            let mut p = head_path(refr)?;
            p.push(field.0.text().to_string());
            Some(p)
        }
        Expr::RefBrack { refr, .. } => head_path(refr),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn constants(v0: bool, text: &str) -> Vec<(String, bool)> {
        let mut e = Engine::new();
        e.set_rego_v0(v0);
        e.add_policy("t.rego".into(), text.into()).unwrap();
        let mut names: Vec<(String, bool)> = constant_rules(&mut e).into_iter().collect();
        names.sort();
        names
    }

    fn named(v: &[(&str, bool)]) -> Vec<(String, bool)> {
        v.iter().map(|(n, b)| (n.to_string(), *b)).collect()
    }

    #[test]
    fn only_a_lone_default_bool_is_constant() {
        let text = r#"package agent_policy

default StartContainerRequest := true
default WaitProcessRequest = true
default CreateContainerRequest := false
CreateContainerRequest { input.x == 1 }
default ExecProcessRequest := true
ExecProcessRequest := false { input.y }
default ReadStreamRequest := false
default CopyFileRequest := true
CopyFileRequest.extra := 1
default UpdateRoutesRequest := true
UpdateRoutesRequest[x] { x := 1 }
default f(x) := true
default OneRequest := 1
default ObjRequest := {"allowed": true}
"#;
        assert_eq!(
            constants(true, text),
            named(&[
                ("ReadStreamRequest", false),
                ("StartContainerRequest", true),
                ("WaitProcessRequest", true)
            ])
        );
    }

    #[test]
    fn rego_v1_and_the_shipped_allow_all() {
        let text = "package agent_policy\nimport rego.v1\ndefault A := true\ndefault B := true\nB if input.z\n";
        assert_eq!(constants(false, text), named(&[("A", true)]));
        let all = constants(false, crate::policy::sources::ALLOW_ALL_POLICY);
        assert!(
            all.contains(&("StartContainerRequest".to_string(), true)),
            "{all:?}"
        );
        assert!(all.contains(&("CreateContainerRequest".to_string(), true)));
        assert!(all.iter().all(|(_, b)| *b));
    }

    #[test]
    fn another_package_disables_the_shortcut() {
        let mut e = Engine::new();
        e.add_policy(
            "a.rego".into(),
            "package agent_policy\ndefault A := true\n".into(),
        )
        .unwrap();
        e.add_policy("b.rego".into(), "package agent_policy.A\nx := 1\n".into())
            .unwrap();
        assert!(constant_rules(&mut e).is_empty());
    }

    #[test]
    fn policy_answers_constant_rules_without_evaluating() {
        use crate::policy::{Decision, Policy, RegoVersion};
        // The compiled fast path covers request types (compiled at load): compiles the request types' rules at load.
        let text = "package agent_policy\ndefault A := true\ndefault CreateContainerRequest := false\nCreateContainerRequest { input.ok }\n";
        let p = Policy::load("t.rego", text, RegoVersion::V0).unwrap();
        let odd = serde_json::json!({"anything": [1, {"x": null}]});
        assert_eq!(p.decide("A", &odd), Decision::Allow);
        assert_eq!(
            p.decide("CreateContainerRequest", &serde_json::json!({"ok": true})),
            Decision::Allow
        );
        assert!(matches!(
            p.decide("CreateContainerRequest", &odd),
            Decision::Deny { .. }
        ));
        assert_eq!((p.constant_allows(), p.fast_allows()), (1, 1));
        // Off together with the compiled fast path: the interpreter decides alone.
        let p = Policy::load("t.rego", text, RegoVersion::V0)
            .unwrap()
            .without_fast_path();
        assert_eq!(p.decide("A", &odd), Decision::Allow);
        assert_eq!(p.constant_allows(), 0);
    }
}
