//! Rewrites of the policy text that the compiled fast path ([`super::compiled`]) runs;
//! the interpreter, the referee, always runs the tenant's text unchanged.
//!
//! One rewrite so far, membership: in a rule body, the two statements
//!
//! ```rego
//! some x in C
//! x == e
//! ```
//!
//! become `e in C` and `true`, when `x` appears nowhere else in the rule, `e` and `C`
//! are plain references or literals, and each statement is one line (so line numbers
//! stay). regorus's VM runs the first form as a loop of several VM instructions per
//! element of `C` (~180 ns each), the second as one instruction that compares natively;
//! genpolicy's `allow_var` does this for every env var of a container against the
//! policy's list, `allow_readonly_path` for every masked path, the exec rules for
//! every allowed command. Both forms hold exactly when some element (a value of an
//! array, set or object) equals `e`, and neither holds when `C` or `e` is undefined or
//! `C` is not a collection (the VM treats `some .. in` over a scalar as no element,
//! and `in` over a scalar as false). `x` names nothing afterwards, so nothing else in
//! the rule can tell the forms apart. Tests hold the rewritten program to the
//! interpreter (`tests::rewritten_programs_decide_as_the_interpreter`).

use regorus::unstable::{BoolOp, Expr, Literal, LiteralStmt, Module, Ref, Rule};

/// `text` with every membership pattern rewritten (module comment), and how many were.
/// `modules` are `text` parsed (spans index into it).
pub(crate) fn membership(text: &str, modules: &[Ref<Module>]) -> (String, usize) {
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    for module in modules {
        for rule in &module.policy {
            let Rule::Spec { span, bodies, .. } = rule.as_ref() else {
                continue;
            };
            let rule_text = span.text();
            for body in bodies {
                for pair in body.query.stmts.windows(2) {
                    if let [first, second] = pair {
                        edits.extend(
                            membership_pair(first, second, rule_text)
                                .into_iter()
                                .flatten(),
                        );
                    }
                }
            }
        }
    }
    if edits.is_empty() {
        return (text.to_string(), 0);
    }
    edits.sort_by_key(|e| e.0);
    // Overlapping edits (`some x in C; x == y; some z in D; z == ...` never overlap, but
    // be sure): keep the first, drop the pair the other belongs to.
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    let mut count = 0;
    for (start, end, replacement) in &edits {
        if *start < at || *end > text.len() || !text.is_char_boundary(*start) {
            return (text.to_string(), 0);
        }
        out.push_str(&text[at..*start]);
        out.push_str(replacement);
        at = *end;
        count += 1;
    }
    out.push_str(&text[at..]);
    (out, count / 2)
}

/// The two edits for `some x in C` followed by `x == e` (or `e == x`), if the pair is
/// one the rewrite may take.
fn membership_pair(
    first: &LiteralStmt,
    second: &LiteralStmt,
    rule_text: &str,
) -> Option<[(usize, usize, String); 2]> {
    if !first.with_mods.is_empty() || !second.with_mods.is_empty() {
        return None;
    }
    let Literal::SomeIn {
        key: None,
        value,
        collection,
        ..
    } = &first.literal
    else {
        return None;
    };
    let Expr::Var { span: var, .. } = value.as_ref() else {
        return None;
    };
    let x = var.text();
    if x == "_" {
        return None;
    }
    let Literal::Expr { expr, .. } = &second.literal else {
        return None;
    };
    let Expr::BoolExpr {
        op: BoolOp::Eq,
        lhs,
        rhs,
        ..
    } = expr.as_ref()
    else {
        return None;
    };
    let is_x = |e: &Expr| matches!(e, Expr::Var { span, .. } if span.text() == x);
    let other = match (is_x(lhs), is_x(rhs)) {
        (true, false) => rhs,
        (false, true) => lhs,
        _ => return None,
    };
    if !plain(other) || !plain(collection) {
        return None;
    }
    // `x` twice in the whole rule (head, every body): here and in `x == e`.
    if occurrences(rule_text, x) != 2 {
        return None;
    }
    let one_line = |s: &LiteralStmt| !s.span.text().contains('\n');
    if !one_line(first) || !one_line(second) {
        return None;
    }
    let member = format!(
        "{} in {}",
        other.span().text(),
        collection.as_ref().span().text()
    );
    Some([
        (first.span.start as usize, first.span.end as usize, member),
        (
            second.span.start as usize,
            second.span.end as usize,
            "true".to_string(),
        ),
    ])
}

/// A term that needs no parentheses on either side of `in`: a variable, a reference
/// made of names, literal keys and variables, or a scalar literal.
fn plain(e: &Expr) -> bool {
    match e {
        Expr::Var { .. }
        | Expr::String { .. }
        | Expr::RawString { .. }
        | Expr::Number { .. }
        | Expr::Bool { .. }
        | Expr::Null { .. } => true,
        Expr::RefDot { refr, .. } => plain(refr),
        Expr::RefBrack { refr, index, .. } => plain(refr) && plain(index),
        _ => false,
    }
}

/// How many times `name` occurs in `text` as a whole identifier (in strings and
/// comments too: that only makes the rewrite more careful).
fn occurrences(text: &str, name: &str) -> usize {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut n = 0;
    let mut from = 0;
    while let Some(i) = text[from..].find(name) {
        let start = from + i;
        let end = start + name.len();
        let before = text[..start].chars().next_back().is_some_and(ident);
        let after = text[end..].chars().next().is_some_and(ident);
        if !before && !after {
            n += 1;
        }
        from = end;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::compiled::Compiled;
    use crate::policy::engine::{new_engine, RegoVersion};
    use regorus::Value;
    use std::time::Duration;

    fn rewrite(text: &str) -> (String, usize) {
        let mut e = new_engine(RegoVersion::V1, Duration::from_secs(5));
        e.add_policy("t.rego".into(), text.into()).unwrap();
        membership(text, e.get_modules())
    }

    const POLICY: &str = r#"package agent_policy
import rego.v1
default A := false
A if {
    some p in input.list
    p == input.want
}
default B := false
B if {
    some p in data.objs.m
    input.v == p
    input.ok
}
default C := false
C if { not missing(input.v) }
missing(v) if {
    some q in input.list
    q == v
}
default D := false
D if {
    some p in input.list
    p == input.want
    count(p) > 0
}
default E := false
E if {
    some p in input.list
    p == concat("", [input.want])
}
default F := false
F if {
    some p in
        input.list
    p == input.want
}
"#;

    #[test]
    fn rewrites_only_the_pattern_it_can_prove() {
        let (text, count) = rewrite(POLICY);
        assert_eq!(count, 3, "{text}");
        assert!(text.contains("    input.want in input.list\n    true\n}\ndefault B"));
        assert!(text.contains("    input.v in data.objs.m\n    true\n    input.ok"));
        assert!(text.contains("    v in input.list\n    true\n}"));
        // D uses p again, E compares with a call, F spans two lines: unchanged.
        assert!(text.contains("    some p in input.list\n    p == input.want\n    count(p)"));
        assert!(text.contains("    p == concat("));
        assert!(text.contains("    some p in\n        input.list\n"));
        assert_eq!(text.lines().count(), POLICY.lines().count());
        // Nothing to rewrite: the text unchanged.
        let plain = "package agent_policy\nimport rego.v1\ndefault A := false\nA if input.x\n";
        assert_eq!(rewrite(plain), (plain.to_string(), 0));
    }

    #[test]
    fn rewritten_programs_decide_as_the_interpreter() {
        // The compiled fast path of POLICY (rewritten) against the interpreter on the
        // tenant's text, on inputs where the forms could differ: missing and
        // non-collection lists, numbers of two spellings, nested values, objects.
        let compiled =
            Compiled::build("t.rego", POLICY, RegoVersion::V1, Duration::from_secs(5)).unwrap();
        let mut interp = new_engine(RegoVersion::V1, Duration::from_secs(5));
        interp.add_policy("t.rego".into(), POLICY.into()).unwrap();
        let data: Value = serde_json::from_value(serde_json::json!({
            "objs": {"m": {"a": 1, "b": [1, 2], "c": "x"}}
        }))
        .unwrap();
        interp.add_data(data.clone()).unwrap();
        let mut compared = 0;
        let mut allowed = 0;
        for input in [
            serde_json::json!({"list": ["a", "b"], "want": "b", "v": "x", "ok": true}),
            serde_json::json!({"list": ["a", "b"], "want": "c", "v": 1, "ok": true}),
            serde_json::json!({"list": [1, 2.0], "want": 2, "v": 1.0, "ok": true}),
            serde_json::json!({"list": [[1, 2], {"k": "v"}], "want": {"k": "v"}, "v": [1, 2], "ok": true}),
            serde_json::json!({"list": {"x": "b"}, "want": "b", "v": [1, 2], "ok": false}),
            serde_json::json!({"list": [], "want": "b", "v": "y"}),
            serde_json::json!({"want": "b", "v": "c", "ok": true}),
            serde_json::json!({"list": ["a", null], "v": null, "ok": true}),
            serde_json::json!({"list": ["", "b"], "want": ""}),
        ] {
            let input: Value = serde_json::from_value(input).unwrap();
            for rule in ["A", "B", "C", "D", "E", "F"] {
                let fast = compiled.eval(rule, &input, Some(&data));
                interp.set_input(input.clone());
                let slow = interp
                    .eval_rule(format!("data.agent_policy.{rule}"))
                    .unwrap();
                assert_eq!(fast, Some(slow.clone()), "{rule} {input}");
                allowed += usize::from(slow == Value::from(true));
                compared += 1;
            }
        }
        assert_eq!(compared, 54);
        assert!(allowed >= 15, "{allowed}");
    }
}
