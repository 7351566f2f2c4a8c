//! Why a request was denied, read from the evaluation itself: which rule of the request
//! type failed and at which expression (file:line and its policy text), never from what
//! the policy printed nor from a hand-written `reason` rule.
//!
//! [`super::Policy`] evaluates a denied request once more in the interpreter with
//! regorus's coverage on: the set of policy lines on which an expression was evaluated.
//! [`explain`] then walks the parsed policy from the request type's rule:
//!
//! - of each body (all bodies of all definitions of the name, `else` included) the last
//!   statement with a covered line is where that body stopped; the body that got furthest
//!   is followed (ties: the first), and how many bodies were tried is said;
//! - if that statement is an `every`, the walk goes on inside its body;
//! - if it calls rules or functions of the policy (positively: a `not` stops the walk),
//!   the walk descends into the last of them that was entered and none of whose bodies
//!   ran to the end. A callee with a completed body held at least once (for another
//!   element of an iteration, say), so the call itself is reported, not a line inside.
//!
//! Coverage is a union over the whole evaluation (every iteration of `some x in xs`, every
//! call of a helper), so the point reported is the furthest any attempt reached: for a
//! request that matches nothing, the policy entry that came closest. The reason names
//! policy text only, no input values, so it may go to the host.

use std::collections::{BTreeSet, HashMap};

use regorus::unstable::{Expr, Literal, LiteralStmt, Query, Rule, RuleHead};
use regorus::Engine;

/// Lines on which an expression was evaluated, per policy file.
pub(crate) type Covered = HashMap<String, BTreeSet<u32>>;

/// Longest policy text quoted for one expression.
const MAX_TEXT: usize = 100;

/// How deep the walk descends (Rego forbids recursion; this only bounds the work).
const MAX_DEPTH: usize = 64;

/// One point of the walk: a rule and the statement of it where evaluation stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The rule or function name.
    pub rule: String,
    pub file: String,
    pub line: u32,
    /// The statement's policy text (its first line, shortened).
    pub text: String,
    /// How many bodies the name has (the furthest one was followed).
    pub bodies: usize,
}

/// Where a denied request's evaluation stopped: the chain from the request type's rule
/// down to the deepest statement that can be told to have failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub request_type: String,
    /// From the request type's rule to the deepest point; empty when nothing could be
    /// told (see `note`).
    pub steps: Vec<Step>,
    /// What the walk says besides the steps (e.g. only a default applied).
    pub note: Option<String>,
}

impl Explanation {
    /// The deepest point.
    pub fn failed_at(&self) -> Option<&Step> {
        self.steps.last()
    }
}

impl std::fmt::Display for Explanation {
    /// `file:line: expression (in rule; via R:l → f:l)`, then the note.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some((last, callers)) = self.steps.split_last() else {
            return match &self.note {
                Some(n) => write!(f, "{n}"),
                None => write!(f, "data.agent_policy.{} is false", self.request_type),
            };
        };
        write!(
            f,
            "{}:{}: {} (in {}",
            last.file, last.line, last.text, last.rule
        )?;
        if last.bodies > 1 {
            write!(f, ", furthest of {} bodies", last.bodies)?;
        }
        if !callers.is_empty() {
            write!(f, "; via ")?;
            for (i, s) in callers.iter().enumerate() {
                if i > 0 {
                    write!(f, " → ")?;
                }
                write!(f, "{}:{}", s.rule, s.line)?;
            }
        }
        write!(f, ")")?;
        if let Some(n) = &self.note {
            write!(f, "; {n}")?;
        }
        Ok(())
    }
}

/// A definition of a name: the rule and its source.
struct Definitions<'a> {
    rules: HashMap<String, Vec<&'a Rule>>,
}

impl<'a> Definitions<'a> {
    fn new(modules: &'a [regorus::unstable::Ref<regorus::unstable::Module>]) -> Self {
        let mut rules: HashMap<String, Vec<&'a Rule>> = HashMap::new();
        for module in modules {
            for rule in &module.policy {
                if let Some(name) = head_name(super::constant::rule_ref(rule)) {
                    rules.entry(name).or_default().push(rule.as_ref());
                }
            }
        }
        Definitions { rules }
    }

    /// The bodies of every non-default definition of `name`: the query, the definition,
    /// and whether the value a body gives is something other than `true` (`R := false
    /// if {...}`, `R := {"allowed": false} if {...}`).
    fn bodies(&self, name: &str) -> Vec<(&'a Query, &'a Rule, bool)> {
        let mut out = Vec::new();
        for rule in self.rules.get(name).into_iter().flatten() {
            let Rule::Spec { head, bodies, .. } = rule else {
                continue;
            };
            let head_value = match head {
                RuleHead::Compr { assign, .. } | RuleHead::Func { assign, .. } => {
                    assign.as_ref().map(|a| a.value.as_ref())
                }
                RuleHead::Set { .. } => None,
            };
            for b in bodies {
                let value = b.assign.as_ref().map(|a| a.value.as_ref()).or(head_value);
                let not_true = value.is_some_and(|v| {
                    !matches!(
                        v,
                        Expr::Bool {
                            value: regorus::Value::Bool(true),
                            ..
                        }
                    )
                });
                out.push((b.query.as_ref(), *rule, not_true));
            }
        }
        out
    }

    fn defaults(&self, name: &str) -> Vec<&'a Rule> {
        self.rules
            .get(name)
            .into_iter()
            .flatten()
            .filter(|r| matches!(r, Rule::Default { .. }))
            .copied()
            .collect()
    }

    fn specs(&self, name: &str) -> Vec<&'a Rule> {
        self.rules
            .get(name)
            .into_iter()
            .flatten()
            .filter(|r| matches!(r, Rule::Spec { .. }))
            .copied()
            .collect()
    }
}

/// The first component of a rule head (`R`, `R.x`, `R[k]` → `R`).
pub(crate) fn head_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Var { span, .. } => Some(span.text().to_string()),
        Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => head_name(refr),
        _ => None,
    }
}

/// The first line of `text`, trimmed and at most [`MAX_TEXT`] bytes.
pub(crate) fn short(text: &str) -> String {
    let first = text.lines().next().unwrap_or("").trim();
    let multi = text.trim().contains('\n');
    if first.len() <= MAX_TEXT && !multi {
        return first.to_string();
    }
    let mut end = first.len().min(MAX_TEXT);
    while !first.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} …", &first[..end])
}

/// A statement's policy text, shortened. regorus ends a span where its last token ends,
/// and a string token ends before its closing quote: the quote is put back.
fn stmt_text(stmt: &LiteralStmt) -> String {
    let span = &stmt.span;
    let contents = span.source.contents();
    let start = usize::try_from(span.start).unwrap_or(usize::MAX);
    let mut end = usize::try_from(span.end).unwrap_or(usize::MAX);
    if let Some(q @ ('"' | '`')) = contents.get(end..).and_then(|t| t.chars().next()) {
        end += q.len_utf8();
    }
    match contents.get(start..end) {
        Some(t) => short(t),
        None => short(span.text()),
    }
}

/// The lines a statement spans.
fn lines_of(stmt: &LiteralStmt) -> (u32, u32) {
    let start = stmt.span.line;
    let extra = stmt.span.text().matches('\n').count();
    (
        start,
        start.saturating_add(u32::try_from(extra).unwrap_or(u32::MAX)),
    )
}

fn file_of(stmt: &LiteralStmt) -> String {
    stmt.span.source.file().to_string()
}

fn is_covered(stmt: &LiteralStmt, covered: &Covered) -> bool {
    if matches!(stmt.literal, Literal::SomeVars { .. }) {
        return false;
    }
    let Some(lines) = covered.get(stmt.span.source.file().as_str()) else {
        return false;
    };
    let (start, end) = lines_of(stmt);
    lines.range(start..=end).next().is_some()
}

/// Where a query stopped: the index of its last covered statement, and whether every
/// statement that evaluates something was covered (the body ran to its end).
fn stop_in(query: &Query, covered: &Covered) -> Option<(usize, bool)> {
    let last = query.stmts.iter().rposition(|s| is_covered(s, covered))?;
    let complete = query
        .stmts
        .iter()
        .all(|s| matches!(s.literal, Literal::SomeVars { .. }) || is_covered(s, covered));
    Some((last, complete))
}

/// Names a statement refers to that may be rules, in evaluation order.
fn referenced(stmt: &LiteralStmt) -> Vec<String> {
    let mut names = Vec::new();
    match &stmt.literal {
        Literal::SomeVars { .. } | Literal::NotExpr { .. } => {}
        Literal::SomeIn {
            key,
            value,
            collection,
            ..
        } => {
            names_in(collection, &mut names);
            if let Some(k) = key {
                names_in(k, &mut names);
            }
            names_in(value, &mut names);
        }
        Literal::Expr { expr, .. } => names_in(expr, &mut names),
        Literal::Every { domain, .. } => names_in(domain, &mut names),
    }
    names
}

fn names_in(e: &Expr, out: &mut Vec<String>) {
    match e {
        Expr::Var { span, .. } => out.push(span.text().to_string()),
        Expr::Call { fcn, params, .. } => {
            for p in params {
                names_in(p, out);
            }
            if let Some(name) = call_name(fcn) {
                out.push(name);
            }
        }
        Expr::RefDot { refr, field, .. } => {
            // data.agent_policy.X names the rule X.
            if let Expr::RefDot {
                refr: inner,
                field: pkg,
                ..
            } = refr.as_ref()
            {
                if matches!(inner.as_ref(), Expr::Var { span, .. } if span.text() == "data")
                    && pkg.0.text() == "agent_policy"
                {
                    out.push(field.0.text().to_string());
                    return;
                }
            }
            names_in(refr, out);
        }
        Expr::RefBrack { refr, index, .. } => {
            names_in(refr, out);
            names_in(index, out);
        }
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            for i in items {
                names_in(i, out);
            }
        }
        Expr::Object { fields, .. } => {
            for (_, k, v) in fields {
                names_in(k, out);
                names_in(v, out);
            }
        }
        Expr::UnaryExpr { expr, .. } => names_in(expr, out),
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => {
            names_in(lhs, out);
            names_in(rhs, out);
        }
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => {
            names_in(collection, out);
            if let Some(k) = key {
                names_in(k, out);
            }
            names_in(value, out);
        }
        // Comprehensions are evaluated as a whole: the walk stops at them.
        _ => {}
    }
}

/// The name a call is made to, when it is one of the policy's (`f`, `data.agent_policy.f`).
fn call_name(fcn: &Expr) -> Option<String> {
    let mut v = Vec::new();
    names_in(fcn, &mut v);
    match fcn {
        Expr::Var { .. } => v.pop(),
        Expr::RefDot { .. } if v.len() == 1 => v.pop(),
        _ => None,
    }
}

/// Explains a denial of `request_type` from the coverage of its evaluation, with the
/// parsed policy of `engine`.
pub(crate) fn explain(engine: &mut Engine, request_type: &str, covered: &Covered) -> Explanation {
    let defs = Definitions::new(engine.get_modules());
    let mut steps = Vec::new();
    let note = walk_rule(&defs, request_type, covered, &mut steps, 0);
    Explanation {
        request_type: request_type.to_string(),
        steps,
        note,
    }
}

/// The reason a rule that is a `default` and nothing else denies, without evaluating.
pub(crate) fn default_only(engine: &mut Engine, request_type: &str) -> Explanation {
    let defs = Definitions::new(engine.get_modules());
    Explanation {
        request_type: request_type.to_string(),
        steps: Vec::new(),
        note: Some(default_note(&defs, request_type)),
    }
}

fn default_note(defs: &Definitions, name: &str) -> String {
    match defs.defaults(name).first() {
        Some(d) => {
            let span = d.span();
            format!(
                "{}:{}: {} (no other rule defines {name})",
                span.source.file(),
                span.line,
                short(span.text())
            )
        }
        None => format!("rule data.agent_policy.{name} is undefined (denied by default)"),
    }
}

/// Walks the bodies of `name`; pushes the steps taken; returns a note when the walk
/// could not point at a statement of `name`.
fn walk_rule(
    defs: &Definitions,
    name: &str,
    covered: &Covered,
    steps: &mut Vec<Step>,
    depth: usize,
) -> Option<String> {
    let bodies = defs.bodies(name);
    if defs.specs(name).is_empty() {
        return Some(default_note(defs, name));
    }
    // A body that ran to its end and gives a value other than `true`: its value is
    // what denied (e.g. `R := false if {...}`).
    let valued = bodies.iter().find(|(q, _, not_true)| {
        *not_true && stop_in(q, covered).is_some_and(|(_, complete)| complete)
    });
    if let Some((valued_query, rule, _)) = valued {
        let span = rule.span();
        // And where the other bodies (those that would have allowed) stopped.
        let other = bodies
            .iter()
            .filter(|(q, _, _)| !std::ptr::eq(*q, *valued_query))
            .filter_map(|(q, _, _)| Some((stop_in(q, covered)?.0, *q)))
            .fold(None::<(usize, &Query)>, |best, (i, q)| match best {
                Some((b, _)) if b >= i => best,
                _ => Some((i, q)),
            })
            .and_then(|(i, q)| q.stmts.get(i));
        steps.push(Step {
            rule: name.to_string(),
            file: span.source.file().to_string(),
            line: span.line,
            text: short(span.text()),
            bodies: 1,
        });
        return Some(match other {
            Some(o) => format!(
                "that body held and its value denied; the other bodies got furthest at line {}: {}",
                o.span.line,
                stmt_text(o)
            ),
            None => "that body held and its value denied".to_string(),
        });
    }
    // The furthest body: the highest index of a last covered statement (ties: the first).
    let mut best: Option<(&Query, usize)> = None;
    for (q, _, _) in &bodies {
        if let Some((idx, _)) = stop_in(q, covered) {
            if best.is_none_or(|(_, b)| idx > b) {
                best = Some((q, idx));
            }
        }
    }
    let Some((query, idx)) = best else {
        // No body was entered (or the rule has none: `R := value`): the rule's head.
        let rule = defs.specs(name).into_iter().next()?;
        let span = rule.span();
        steps.push(Step {
            rule: name.to_string(),
            file: span.source.file().to_string(),
            line: span.line,
            text: short(span.text()),
            bodies: bodies.len(),
        });
        return (!bodies.is_empty()).then(|| format!("no body of {name} was entered"));
    };
    let stmt = query.stmts.get(idx)?;
    // A body whose every statement was evaluated is reported at its last one (coverage
    // does not say whether that one held).
    let always_failed = idx + 1 < query.stmts.len();
    walk_stmt(
        defs,
        name,
        bodies.len(),
        stmt,
        always_failed,
        covered,
        steps,
        depth,
    )
}

/// Pushes the step for `stmt` (of rule `name`) and descends from it; returns the deepest
/// rule's note, if any. `always_failed`: the
/// statement is known to have failed every time it was evaluated (a later statement of
/// its body was never reached), so a call it makes failed every time too.
#[allow(clippy::too_many_arguments)]
fn walk_stmt(
    defs: &Definitions,
    name: &str,
    bodies: usize,
    stmt: &LiteralStmt,
    always_failed: bool,
    covered: &Covered,
    steps: &mut Vec<Step>,
    depth: usize,
) -> Option<String> {
    steps.push(Step {
        rule: name.to_string(),
        file: file_of(stmt),
        line: stmt.span.line,
        text: stmt_text(stmt),
        bodies,
    });
    if depth >= MAX_DEPTH {
        return None;
    }
    if let Literal::Every { query, .. } = &stmt.literal {
        if let Some((idx, _)) = stop_in(query, covered) {
            if let Some(inner) = query.stmts.get(idx) {
                // The `every` is replaced by the statement inside it where it stopped.
                steps.pop();
                let always_failed = idx + 1 < query.stmts.len();
                return walk_stmt(
                    defs,
                    name,
                    bodies,
                    inner,
                    always_failed,
                    covered,
                    steps,
                    depth,
                );
            }
        }
        return None;
    }
    // A callee is descended into when it was entered and did not hold: the statement
    // always failed and is a call or a reference and nothing else, or no body of the callee ran to its
    // end. (A body that ran to its end may have held, for another element of an
    // iteration say, or failed at its last statement: coverage does not tell.)
    let bare_call = matches!(&stmt.literal, Literal::Expr { expr, .. }
        if matches!(expr.as_ref(), Expr::Call { .. } | Expr::Var { .. } | Expr::RefDot { .. }));
    let callee = referenced(stmt).into_iter().rev().find(|n| {
        n != name && steps.iter().all(|s| s.rule != *n) && {
            let qs = defs.bodies(n);
            let stops: Vec<_> = qs
                .iter()
                .filter_map(|(q, _, _)| stop_in(q, covered))
                .collect();
            // A body with a value other than `true` that ran to its end: the callee's
            // value is what made this statement fail.
            let valued = qs.iter().any(|(q, _, not_true)| {
                *not_true && stop_in(q, covered).is_some_and(|(_, complete)| complete)
            });
            !stops.is_empty()
                && ((bare_call && (always_failed || valued))
                    || stops.iter().all(|(_, complete)| !complete))
        }
    });
    walk_rule(defs, &callee?, covered, steps, depth + 1)
}

/// The covered lines of a coverage report.
pub(crate) fn covered_lines(report: &regorus::coverage::Report) -> Covered {
    report
        .files
        .iter()
        .map(|f| (f.path.clone(), f.covered.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::policy::{Decision, Policy, RegoVersion};
    use serde_json::json;

    /// A small policy in the shape of genpolicy's: helpers with several definitions,
    /// iteration, `every`, `not`.
    const POLICY: &str = r#"package agent_policy
import rego.v1
default CreateContainerRequest := false
CreateContainerRequest if {
    some p in data.agent_policy.containers
    p.name == input.name
    allow_env(p, input)
    not forbidden(input)
}
containers := [{"name": "a", "env": ["X=1", "Y=2"]}, {"name": "b", "env": []}]
allow_env(p, i) if {
    every v in i.env {
        allow_var(p, v)
    }
}
allow_var(p, v) if {
    v in p.env
    print("allow_var 1: true")
}
allow_var(p, v) if {
    startswith(v, "TRACE_")
    v != "TRACE_OFF"
    print("allow_var 2: true")
}
forbidden(i) if {
    i.privileged == true
}
"#;

    fn reason(input: serde_json::Value) -> String {
        let p = Policy::load("e.rego", POLICY, RegoVersion::V1).unwrap();
        match p.decide("CreateContainerRequest", &input) {
            Decision::Deny { reason, .. } => reason,
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn an_unmatched_iteration_stops_at_the_comparison() {
        assert_eq!(
            reason(json!({"name": "c", "env": []})),
            "e.rego:6: p.name == input.name (in CreateContainerRequest)"
        );
    }

    #[test]
    fn a_helper_that_never_held_is_descended_into_through_every() {
        // The furthest of allow_var's two bodies: the second got to its second line.
        assert_eq!(
            reason(json!({"name": "a", "env": ["TRACE_OFF"]})),
            "e.rego:22: v != \"TRACE_OFF\" (in allow_var, furthest of 2 bodies; via CreateContainerRequest:7 → allow_env:13)"
        );
    }

    #[test]
    fn a_helper_that_held_for_another_element_is_reported_at_its_call() {
        // allow_var held for X=1 and failed for Z=3: coverage cannot say which line of
        // allow_var failed for Z=3, so the call inside `every` is the point.
        assert_eq!(
            reason(json!({"name": "a", "env": ["X=1", "Z=3"]})),
            "e.rego:13: allow_var(p, v) (in allow_env; via CreateContainerRequest:7)"
        );
    }

    #[test]
    fn a_negation_is_not_descended_into() {
        assert_eq!(
            reason(json!({"name": "b", "env": [], "privileged": true})),
            "e.rego:8: not forbidden(input) (in CreateContainerRequest)"
        );
    }

    #[test]
    fn a_default_alone_is_named_without_evaluating() {
        let p = Policy::load(
            "d.rego",
            "package agent_policy\nimport rego.v1\ndefault ReadStreamRequest := false\n",
            RegoVersion::V1,
        )
        .unwrap();
        assert_eq!(
            p.decide("ReadStreamRequest", &json!({})),
            Decision::Deny {
                reason: "d.rego:3: default ReadStreamRequest := false (no other rule defines ReadStreamRequest)".into(),
                detail: String::new(),
            }
        );
    }
}
