//! Rewrites of the policy text that the compiled fast path ([`super::compiled`]) runs;
//! the interpreter, the referee, always runs the tenant's text unchanged.
//!
//! **Membership** (a speed-up): in a rule body, the two statements
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
//!
//! **Iteration guards** (a correctness fix): `some x in C` where `C` is defined but not
//! an array, set or object (a string, a number, `null`) fails the interpreter's
//! evaluation, and kata-agent refuses the request; regorus's VM iterates nothing, so a
//! `not` of the rule allowed it. Every such `C` that is not a collection by its form (a
//! literal or a comprehension) is compiled as `regex.match(ITERATION_TRAP, C)`, which our
//! `regex.match` answers with `C` itself when it is a collection or undefined, and with
//! a limit error (the program fails; the interpreter decides) when it is not. A
//! membership pair's `e in C` gets the same guard. One native call per loop entry.
//!
//! **Conflicts** (a correctness fix): a complete rule or function that gives two
//! different values for one input fails the evaluation in the interpreter and in
//! kata-agent (`rule conflicts`, `function produced multiple outputs`), and kata-agent
//! refuses the request. regorus 0.14.1's VM does not fail: two definitions that
//! disagree make the value undefined, and one body with several solutions gives the
//! last one. Under `not`, in another body, in a comprehension or behind a default that
//! turns into an allow (`ExecProcessRequest if { not deny_reason }` with two
//! `deny_reason := "..."` that both hold: kata refuses, the VM allowed). So every rule
//! that could give two values (two or more definitions whose values are not one and
//! the same literal, or one definition with a value that is not a literal and a body
//! that iterates) is compiled from a rewritten form that gathers all its values and
//! stops the program when there is more than one:
//!
//! ```rego
//! R(p) := __aw_r if { __aw_r := __aw_one(__aw_vals_R(p)) }
//! __aw_vals_R(p) := {(v1) | body1} | {(v2) | body2}
//! ```
//!
//! `__aw_one` gives the one value, or calls `regex.match` with [`CONFLICT_TRAP`], which
//! the compiled programs' `regex.match` answers with a limit error, the kind of error
//! the VM never turns into undefined: the program fails, and the interpreter decides
//! the request (and fails it, as kata-agent does). The original definitions are
//! blanked in place (line numbers stay) and the rewritten ones appended. What the
//! rewrite cannot express keeps the whole policy on the interpreter ([`Unsupported`]):
//! such a rule with an `else`, with parameters that are not plain names or differ
//! between definitions, or with a dotted head; partial object rules and object
//! comprehensions (a key given two values fails the same way). Tests hold the
//! rewritten programs to the interpreter and to kata-agent's decisions
//! (`tests::conflicts_fail_the_compiled_program_as_they_fail_the_interpreter`,
//! `tests::iteration_over_a_non_collection_fails_the_compiled_program`,
//! tests/kata_oracle.rs).

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;

use regorus::unstable::{
    AssignOp, BoolOp, Expr, Literal, LiteralStmt, Module, Query, Ref, Rule, RuleBody, RuleHead,
};

use super::engine::RegoVersion;

/// The `regex.match` pattern of the conflict trap (module comment). Not a valid
/// pattern: where our `regex.match` is not in place, regorus's fails on it (undefined,
/// as the VM's own conflict handling), never matches.
pub(crate) const CONFLICT_TRAP: &str = "(agent-warden: a rule gave conflicting values";

/// The `regex.match` pattern of the iteration guard (module comment); not a valid
/// pattern either.
pub(crate) const ITERATION_TRAP: &str =
    "(agent-warden: some .. in a value that is not a collection";

/// One text edit: bytes `start..end` replaced.
type Edit = (usize, usize, String);

/// Why a policy's conflicts cannot be rewritten (the policy then stays on the
/// interpreter): where (file:line), and what.
pub(crate) type Unsupported = super::trust::Unproven;

/// The text the fast path compiles: `text` (print-free, parsed as `modules`) with both
/// rewrites; how many membership pairs and how many conflict-capable rules were
/// rewritten. `Err` when the policy has a rule that could give two values in a form
/// the conflict rewrite cannot express.
pub(crate) fn for_fast_path(
    text: &str,
    modules: &[Ref<Module>],
    version: RegoVersion,
) -> Result<Rewritten, Unsupported> {
    let pairs = membership_edits(modules);
    let members = pairs.len();
    // The statements the membership rewrite replaces (their collection is guarded in
    // the replacement).
    let taken: Vec<(usize, usize)> = pairs.iter().map(|[first, _]| (first.0, first.1)).collect();
    let guards: Vec<Edit> = guard_edits(text, modules)
        .into_iter()
        .filter(|g| !taken.iter().any(|(s, e)| (*s..*e).contains(&g.0)))
        .collect();
    let guarded = guards.len();
    let mut inner: Vec<Edit> = pairs.into_iter().flatten().collect();
    inner.extend(guards);
    let conflicts = conflict_rewrite(text, modules, version, &inner)?;
    let blanked: Vec<(usize, usize)> = conflicts.edits.iter().map(|e| (e.0, e.1)).collect();
    let inside = |at: usize| blanked.iter().any(|(s, e)| (*s..*e).contains(&at));
    // Edits inside a rule the conflict rewrite replaces went into its copy.
    let mut edits: Vec<Edit> = inner.into_iter().filter(|e| !inside(e.0)).collect();
    edits.extend(conflicts.edits);
    let Some(mut out) = apply(text, edits) else {
        return Err(Unsupported {
            file: String::new(),
            line: 0,
            text: "two guarded `some .. in` collections nest (the rewrites overlap)".to_string(),
        });
    };
    out.push_str(&conflicts.appended);
    Ok(Rewritten {
        text: out,
        members,
        guarded,
        conflicts: conflicts.rules,
    })
}

/// The text the fast path compiles, and what was rewritten in it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Rewritten {
    pub text: String,
    /// Membership pairs made one comparison.
    pub members: usize,
    /// `some .. in C` whose `C` is checked to be a collection.
    pub guarded: usize,
    /// Rules that could give two values, gathered.
    pub conflicts: usize,
}

impl Rewritten {
    /// Whether the text differs from the one given.
    pub fn changed(&self) -> bool {
        self.members + self.guarded + self.conflicts > 0
    }
}

/// `C` of `some .. in C` guarded: its value when it is an array, set or object, the
/// program failed otherwise (our `regex.match` answers [`ITERATION_TRAP`]; undefined
/// stays undefined). The interpreter fails the evaluation on such a `C`, and kata-agent
/// refuses the request; the VM would iterate nothing.
fn guarded(collection: &str) -> String {
    let trap = serde_json::Value::String(ITERATION_TRAP.to_string());
    format!("regex.match({trap}, {collection})")
}

/// An edit guarding the collection of every `some .. in C` in `modules` (rule bodies,
/// `else` bodies, comprehensions, `every` bodies) whose `C` is not a collection by its
/// form (a literal or a comprehension).
fn guard_edits(text: &str, modules: &[Ref<Module>]) -> Vec<Edit> {
    let mut edits = Vec::new();
    let mut guard = |seen: Seen| {
        let Seen::Collection(c) = seen else {
            return;
        };
        if matches!(
            c,
            Expr::Array { .. }
                | Expr::Set { .. }
                | Expr::Object { .. }
                | Expr::ArrayCompr { .. }
                | Expr::SetCompr { .. }
                | Expr::ObjectCompr { .. }
        ) {
            return;
        }
        let span = c.span();
        let (start, end) = (span.start as usize, span_end(text, span.end as usize));
        if let Some(t) = text.get(start..end) {
            edits.push((start, end, guarded(t)));
        }
    };
    for module in modules {
        for rule in &module.policy {
            let Rule::Spec { head, bodies, .. } = rule.as_ref() else {
                continue;
            };
            walk_rule(head_value(head), bodies, &mut guard);
        }
    }
    edits
}

/// `text` with every membership pattern rewritten (module comment), and how many were.
/// `modules` are `text` parsed (spans index into it).
#[cfg(test)]
pub(crate) fn membership(text: &str, modules: &[Ref<Module>]) -> (String, usize) {
    let pairs = membership_edits(modules);
    let count = pairs.len();
    match apply(text, pairs.into_iter().flatten().collect()) {
        Some(out) if count > 0 => (out, count),
        _ => (text.to_string(), 0),
    }
}

/// The edit pairs of every membership pattern in `modules`.
fn membership_edits(modules: &[Ref<Module>]) -> Vec<[Edit; 2]> {
    let mut pairs = Vec::new();
    for module in modules {
        for rule in &module.policy {
            let Rule::Spec { span, bodies, .. } = rule.as_ref() else {
                continue;
            };
            let rule_text = span.text();
            for body in bodies {
                for pair in body.query.stmts.windows(2) {
                    if let [first, second] = pair {
                        pairs.extend(membership_pair(first, second, rule_text));
                    }
                }
            }
        }
    }
    pairs
}

/// `text` with `edits` made; `None` if two overlap or one is out of the text (the
/// edits come from one parse and never do, but be sure).
fn apply(text: &str, mut edits: Vec<Edit>) -> Option<String> {
    edits.sort_by_key(|e| e.0);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end, replacement) in &edits {
        if *start < at
            || *end > text.len()
            || !text.is_char_boundary(*start)
            || !text.is_char_boundary(*end)
        {
            return None;
        }
        out.push_str(&text[at..*start]);
        out.push_str(replacement);
        at = *end;
    }
    out.push_str(&text[at..]);
    Some(out)
}

/// The conflict rewrite of a policy: its original definitions blanked, the rewritten
/// ones to append, and how many rules that is.
#[derive(Default)]
struct ConflictRewrite {
    edits: Vec<Edit>,
    appended: String,
    rules: usize,
}

/// One way a rule gets a value: a body (or none: `R := v`) and the value it gives.
struct Source<'a> {
    value: Option<&'a Expr>,
    /// Where the value's text is (`None`: the head has none, the value is `true`).
    value_at: Option<Range<usize>>,
    query: Option<&'a Query>,
    is_else: bool,
}

/// All definitions of one complete rule or function (by head text).
#[derive(Default)]
struct Group<'a> {
    rules: Vec<&'a Rule>,
    sources: Vec<Source<'a>>,
    /// Parameter texts of each definition (functions).
    params: Vec<Vec<&'a Expr>>,
    is_function: bool,
    /// The head is a plain name (not `a.b` or `a[k]`).
    plain: bool,
    first_line: u32,
    file: String,
}

fn conflict_rewrite(
    text: &str,
    modules: &[Ref<Module>],
    version: RegoVersion,
    inner: &[Edit],
) -> Result<ConflictRewrite, Unsupported> {
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for module in modules {
        for rule in &module.policy {
            let Rule::Spec { head, bodies, span } = rule.as_ref() else {
                continue;
            };
            // Object comprehensions anywhere in any rule (partial sets included).
            let head_value = head_value(head);
            let mut found = None;
            let mut visit = |seen: Seen| {
                if let (None, Seen::Expr(Expr::ObjectCompr { span, .. })) = (&found, seen) {
                    found = Some(span.clone());
                }
            };
            walk_rule(head_value, bodies, &mut visit);
            if let Some(at) = found {
                return Err(Unsupported::at(
                    &at,
                    "an object comprehension (a key given two values would fail the evaluation)"
                        .to_string(),
                ));
            }
            let (refr, assign, params, is_function) = match head {
                RuleHead::Compr { refr, assign, .. } => (refr, assign, Vec::new(), false),
                RuleHead::Func {
                    refr, args, assign, ..
                } => (
                    refr,
                    assign,
                    args.iter().map(|a| a.as_ref()).collect(),
                    true,
                ),
                RuleHead::Set { .. } => continue,
            };
            let value = assign.as_ref().map(|a| a.value.as_ref());
            let value_at = assign.as_ref().map(|a| assign_range(text, a));
            if matches!(refr.as_ref(), Expr::RefBrack { .. }) && !is_function && assign.is_some() {
                return Err(Unsupported::at(
                    span,
                    "a partial object rule (a key given two values would fail the evaluation)"
                        .to_string(),
                ));
            }
            let g = groups.entry(refr.span().text().to_string()).or_default();
            if g.rules.is_empty() {
                g.first_line = span.line;
                g.file = span.source.file().to_string();
            }
            g.rules.push(rule.as_ref());
            g.params.push(params);
            g.is_function = is_function;
            g.plain = matches!(refr.as_ref(), Expr::Var { .. });
            if bodies.is_empty() {
                g.sources.push(Source {
                    value,
                    value_at: value_at.clone(),
                    query: None,
                    is_else: false,
                });
            }
            for body in bodies {
                let (value, value_at) = match (&body.assign, body.is_else) {
                    (Some(a), true) => (Some(a.value.as_ref()), Some(assign_range(text, a))),
                    (None, true) => (None, None),
                    _ => (value, value_at.clone()),
                };
                g.sources.push(Source {
                    value,
                    value_at,
                    query: Some(&body.query),
                    is_else: body.is_else,
                });
            }
        }
    }
    // Rule bodies need `if` in Rego v1 (also a v0 engine's module that imports rego.v1).
    let when = if version == RegoVersion::V1 || modules.iter().any(|m| m.rego_v1) {
        " if"
    } else {
        ""
    };
    let mut out = ConflictRewrite::default();
    for (name, g) in &groups {
        if !could_conflict(text, g) {
            continue;
        }
        let at = |what: &str| Unsupported {
            file: g.file.clone(),
            line: g.first_line,
            text: format!("`{name}` could give two values, {what}"),
        };
        if !g.plain {
            return Err(at("and its head is not a plain name"));
        }
        if name.starts_with("__aw_") {
            return Err(at("and its name is one the rewrite uses"));
        }
        if g.sources.iter().any(|s| s.is_else) {
            return Err(at("and has an `else`"));
        }
        let params: Vec<&str> = match g.params.first() {
            Some(p) => p.iter().map(|e| e.span().text()).collect(),
            None => Vec::new(),
        };
        let same = g.params.iter().all(|p| {
            p.len() == params.len()
                && p.iter()
                    .zip(&params)
                    .all(|(e, t)| matches!(e, Expr::Var { .. }) && e.span().text() == *t)
        });
        if !same || params.contains(&"_") {
            return Err(at(
                "and its parameters are not the same plain names in every definition",
            ));
        }
        for rule in &g.rules {
            if let Rule::Spec { span, .. } = rule {
                let (start, end) = (span.start as usize, span_end(text, span.end as usize));
                let Some(original) = text.get(start..end) else {
                    return Err(at("and its text could not be located"));
                };
                let blank: String = original
                    .chars()
                    .map(|c| if c == '\n' { c } else { ' ' })
                    .collect();
                out.edits.push((start, end, blank));
            }
        }
        let sets: Vec<String> = g
            .sources
            .iter()
            .map(|s| {
                let value = s
                    .value_at
                    .clone()
                    .map_or_else(|| "true".to_string(), |r| rendered(text, r, inner));
                let body = s.query.map_or_else(
                    || "true".to_string(),
                    |q| rendered(text, query_range(text, q), inner),
                );
                format!("{{({value}) |\n{body}\n}}")
            })
            .collect();
        let args = if g.is_function {
            format!("({})", params.join(", "))
        } else {
            String::new()
        };
        out.appended.push_str(&format!(
            "\n{name}{args} = __aw_r{when} {{ __aw_r := __aw_one(__aw_vals_{name}{args}) }}\n\
             __aw_vals_{name}{args} = __aw_s{when} {{ __aw_s := {} }}\n",
            sets.join(" | ")
        ));
        out.rules += 1;
    }
    if out.rules > 0 {
        let trap = serde_json::Value::String(CONFLICT_TRAP.to_string());
        out.appended.push_str(&format!(
            "\n__aw_one(s) = v{when} {{ count(s) == 1; v := s[_] }}\n\
             __aw_one(s) = x{when} {{ count(s) > 1; x := regex.match({trap}, \"\") }}\n"
        ));
    }
    Ok(out)
}

/// Where a span really ends in `text`: regorus 0.14.1 ends a string literal's span (and
/// so a rule's or an assignment's that ends with one) before its closing quote. Nothing
/// else can follow a rule or an assigned value directly with a quote.
fn span_end(text: &str, end: usize) -> usize {
    match text.get(end..).and_then(|t| t.chars().next()) {
        Some('"' | '`') => end + 1,
        _ => end,
    }
}

/// `text[at]` with the `edits` that lie inside it made.
fn rendered(text: &str, at: Range<usize>, edits: &[Edit]) -> String {
    let part = text.get(at.clone()).unwrap_or_default();
    let within: Vec<Edit> = edits
        .iter()
        .filter(|e| at.start <= e.0 && e.1 <= at.end)
        .map(|(s, e, r)| (s - at.start, e - at.start, r.clone()))
        .collect();
    apply(part, within).unwrap_or_else(|| part.to_string())
}

/// Where an assignment's value is (`:= v` / `= v` without the operator, trimmed). From
/// the assignment's span, not the value's: regorus 0.14.1 gives an object literal a
/// span that starts at its last key, and a string one without its quotes.
fn assign_range(text: &str, a: &regorus::unstable::RuleAssign) -> Range<usize> {
    let mut at = trim_range(
        text,
        a.span.start as usize..span_end(text, a.span.end as usize),
    );
    let t = text.get(at.clone()).unwrap_or_default();
    at.start += if t.starts_with(":=") {
        2
    } else {
        usize::from(t.starts_with('='))
    };
    trim_range(text, at)
}

/// Where a body's statements are, without its braces (`if x == "a"` has none, and its
/// span ends before the last quote: [`span_end`]).
fn query_range(text: &str, q: &Query) -> Range<usize> {
    let at = trim_range(
        text,
        q.span.start as usize..span_end(text, q.span.end as usize),
    );
    let t = text.get(at.clone()).unwrap_or_default();
    if at.len() >= 2 && t.starts_with('{') && t.ends_with('}') {
        return trim_range(text, at.start + 1..at.end - 1);
    }
    at
}

/// `at` without the white space at either end of `text[at]`.
fn trim_range(text: &str, at: Range<usize>) -> Range<usize> {
    let t = text.get(at.clone()).unwrap_or_default();
    let start = at.start + (t.len() - t.trim_start().len());
    start..start + t.trim().len()
}

/// Whether a rule could give two values for one input (module comment).
fn could_conflict(text: &str, g: &Group) -> bool {
    // A literal value's text, quotes included (`1` and `"1"` differ).
    let literal = |s: &Source| match s.value {
        None => Some("true"),
        Some(
            Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. },
        ) => s.value_at.clone().and_then(|r| text.get(r)),
        Some(_) => None,
    };
    let values: Vec<Option<&str>> = g.sources.iter().map(literal).collect();
    if let Some(Some(first)) = values.first() {
        if values.iter().all(|v| v == &Some(*first)) {
            return false;
        }
    }
    let independent = g.sources.iter().filter(|s| !s.is_else).count();
    if independent >= 2 {
        return true;
    }
    let params: HashSet<&str> = g
        .params
        .iter()
        .flatten()
        .filter_map(|e| match e {
            Expr::Var { span, .. } => Some(span.text()),
            _ => None,
        })
        .collect();
    g.sources
        .iter()
        .filter(|s| literal(s).is_none())
        .filter_map(|s| s.query)
        .any(|q| iterates(q, &params))
}

/// Whether a body can hold more than once: `some`, an index that is not a parameter or
/// a name the body assigns with `:=`, `walk`. Comprehensions, `every` and `not` iterate
/// inside themselves only.
fn iterates(q: &Query, params: &HashSet<&str>) -> bool {
    let mut bound: HashSet<&str> = params.clone();
    for stmt in &q.stmts {
        if let Literal::Expr { expr, .. } = &stmt.literal {
            if let Expr::AssignExpr {
                op: AssignOp::ColEq,
                lhs,
                ..
            } = expr.as_ref()
            {
                if let Expr::Var { span, .. } = lhs.as_ref() {
                    bound.insert(span.text());
                }
            }
        }
    }
    let mut found = false;
    for stmt in &q.stmts {
        match &stmt.literal {
            Literal::SomeVars { .. } | Literal::SomeIn { .. } => return true,
            Literal::Expr { expr, .. } => walk_shallow(expr, &mut |e| match e {
                Expr::RefBrack { index, .. } => {
                    if let Expr::Var { span, .. } = index.as_ref() {
                        if !bound.contains(span.text()) {
                            found = true;
                        }
                    }
                }
                Expr::Call { fcn, .. } if fcn.span().text() == "walk" => found = true,
                _ => {}
            }),
            Literal::NotExpr { .. } | Literal::Every { .. } => {}
        }
    }
    found
}

/// Calls `f` on `e` and every expression inside it, comprehensions excluded (what they
/// iterate stays inside them).
fn walk_shallow<'a>(e: &'a Expr, f: &mut dyn FnMut(&'a Expr)) {
    f(e);
    match e {
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            items.iter().for_each(|i| walk_shallow(i, f))
        }
        Expr::Object { fields, .. } => fields.iter().for_each(|(_, k, v)| {
            walk_shallow(k, f);
            walk_shallow(v, f);
        }),
        Expr::Call { fcn, params, .. } => {
            walk_shallow(fcn, f);
            params.iter().for_each(|p| walk_shallow(p, f));
        }
        Expr::UnaryExpr { expr, .. } => walk_shallow(expr, f),
        Expr::RefDot { refr, .. } => walk_shallow(refr, f),
        Expr::RefBrack { refr, index, .. } => {
            walk_shallow(refr, f);
            walk_shallow(index, f);
        }
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => {
            walk_shallow(lhs, f);
            walk_shallow(rhs, f);
        }
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => {
            if let Some(k) = key {
                walk_shallow(k, f);
            }
            walk_shallow(value, f);
            walk_shallow(collection, f);
        }
        _ => {}
    }
}

/// What the walkers show: every expression, and (also) the collection of every
/// `some .. in`.
#[derive(Clone, Copy)]
enum Seen<'a> {
    Expr(&'a Expr),
    Collection(&'a Expr),
}

/// Calls `f` on `e` and every expression inside it, comprehensions included.
fn walk_expr<'a>(e: &'a Expr, f: &mut dyn FnMut(Seen<'a>)) {
    walk_shallow(e, &mut |inner| {
        f(Seen::Expr(inner));
        match inner {
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                walk_expr(term, f);
                walk_query(query, f);
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => {
                walk_expr(key, f);
                walk_expr(value, f);
                walk_query(query, f);
            }
            _ => {}
        }
    });
}

/// The value a rule's head gives (`R := v`, `f(x) := v`, `s contains v`), if written.
fn head_value(head: &RuleHead) -> Option<&Expr> {
    match head {
        RuleHead::Compr { assign, .. } | RuleHead::Func { assign, .. } => {
            assign.as_ref().map(|a| a.value.as_ref())
        }
        RuleHead::Set { key, .. } => key.as_ref().map(|k| k.as_ref()),
    }
}

/// [`walk_expr`] over a rule: its head's value, and every body with its own value.
fn walk_rule<'a>(value: Option<&'a Expr>, bodies: &'a [RuleBody], f: &mut dyn FnMut(Seen<'a>)) {
    if let Some(v) = value {
        walk_expr(v, f);
    }
    for body in bodies {
        if let Some(a) = &body.assign {
            walk_expr(&a.value, f);
        }
        walk_query(&body.query, f);
    }
}

/// [`walk_expr`] over every statement of `q`, nested queries (`every`, comprehensions)
/// included.
fn walk_query<'a>(q: &'a Query, f: &mut dyn FnMut(Seen<'a>)) {
    for stmt in &q.stmts {
        match &stmt.literal {
            Literal::SomeVars { .. } => {}
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => {
                f(Seen::Collection(collection));
                if let Some(k) = key {
                    walk_expr(k, f);
                }
                walk_expr(value, f);
                walk_expr(collection, f);
            }
            Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => walk_expr(expr, f),
            Literal::Every { domain, query, .. } => {
                walk_expr(domain, f);
                walk_query(query, f);
            }
        }
        for w in &stmt.with_mods {
            walk_expr(&w.refr, f);
            walk_expr(&w.r#as, f);
        }
    }
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
    // A string literal's span leaves out its quotes (regorus 0.14.1): not taken.
    if !plain(other)
        || !plain(collection)
        || matches!(other.as_ref(), Expr::String { .. } | Expr::RawString { .. })
    {
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
    // `some x in C` over a value that is not a collection fails the interpreter's
    // evaluation; `e in C` does not: the collection is guarded (module comment).
    let member = format!(
        "{} in {}",
        other.span().text(),
        guarded(collection.as_ref().span().text())
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
        let list = guarded("input.list");
        assert!(text.contains(&format!(
            "    input.want in {list}\n    true\n}}\ndefault B"
        )));
        let m = guarded("data.objs.m");
        assert!(text.contains(&format!("    input.v in {m}\n    true\n    input.ok")));
        assert!(text.contains(&format!("    v in {list}\n    true\n}}")));
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

    /// Rules that can give two values for one input, in both Rego versions.
    const CONFLICTS_V1: &str = r#"package agent_policy
import rego.v1
default A := false
A if { not deny_reason }
deny_reason := "no shells" if { input.args[0] == "sh" }
deny_reason := "no root" if { input.uid == 0 }
default B := false
B if { not f(input.a) == 1 }
f(x) := v if { some v in x }
default C := false
C if {
    g(input.n) != "big"
    input.ok
    not h(input.n) == 2
}
g(n) := "big" if { n > 10 }
g(n) := "small" if { n < 20 }
g(n) := "small" if { n < 5 }
h(x) := 1 if { x > 0 }
h(x) := "1" if { x > 1 }
default E := false
E if { k(input.n) == false }
k(x) := false if { x > 0 }
k(x) := true if { x < 0 }
default D := false
D := {"allowed": true, "ops": [i]} if {
    some i, c in input.cs
    c == "x"
}
"#;

    const CONFLICTS_V0: &str = r#"package agent_policy
default A = false
A { not deny_reason }
deny_reason = "no shells" { input.args[0] == "sh" }
deny_reason = "no root" { input.uid == 0 }
default B = false
B { not f(input.a) == 1 }
f(x) = v { v := x[_] }
default C = false
C {
    g(input.n) != "big"
    input.ok
    not h(input.n) == 2
}
g(n) = "big" { n > 10 }
g(n) = "small" { n < 20 }
g(n) = "small" { n < 5 }
h(x) = 1 { x > 0 }
h(x) = "1" { x > 1 }
default E = false
E { k(input.n) == false }
k(x) = false { x > 0 }
k(x) = true { x < 0 }
default D = false
D = {"allowed": true, "ops": [i]} {
    input.cs[i] == "x"
}
"#;

    #[test]
    fn conflicts_fail_the_compiled_program_as_they_fail_the_interpreter() {
        // The last: a v0 engine reading a module that imports rego.v1 (`if` needed).
        for (version, policy) in [
            (RegoVersion::V1, CONFLICTS_V1),
            (RegoVersion::V0, CONFLICTS_V0),
            (RegoVersion::V0, CONFLICTS_V1),
        ] {
            let compiled = Compiled::build("t.rego", policy, version, Duration::from_secs(5))
                .expect("rewritten and compiled");
            let mut interp = new_engine(version, Duration::from_secs(5));
            interp.add_policy("t.rego".into(), policy.into()).unwrap();
            let (mut failed, mut allowed) = (0, 0);
            for input in [
                serde_json::json!({"args": ["sh"], "uid": 0}),
                serde_json::json!({"args": ["sh"], "uid": 1}),
                serde_json::json!({"args": ["ls"], "uid": 1}),
                serde_json::json!({"a": [1, 2]}),
                serde_json::json!({"a": [2]}),
                serde_json::json!({"a": [1]}),
                serde_json::json!({"a": [1, 1]}),
                serde_json::json!({"n": 15, "ok": true}),
                serde_json::json!({"n": 3, "ok": true}),
                serde_json::json!({"n": 30, "ok": true}),
                serde_json::json!({"n": 7, "ok": true}),
                serde_json::json!({"cs": ["x", "y"]}),
                serde_json::json!({"cs": ["x", "x"]}),
                serde_json::json!({"cs": []}),
            ] {
                let input: Value = serde_json::from_value(input).unwrap();
                for rule in ["A", "B", "C", "D", "E"] {
                    let fast = compiled.eval(rule, &input, None);
                    interp.set_input(input.clone());
                    let slow = interp.eval_rule(format!("data.agent_policy.{rule}"));
                    match slow {
                        // The interpreter (and kata-agent) fail: the program must not
                        // give a value (the interpreter then decides, and fails).
                        Err(e) => {
                            assert_eq!(fast, None, "{version:?} {rule} {input}: {e}");
                            failed += 1;
                        }
                        Ok(v) => {
                            assert_eq!(fast, Some(v.clone()), "{version:?} {rule} {input}");
                            allowed += usize::from(v != Value::from(false));
                        }
                    }
                }
            }
            // A: sh as root; B: [1, 2]; C: 15 (g), 30 and 7 (h: 1 and "1"); D: two "x".
            assert_eq!(failed, 6, "{version:?}");
            assert!(allowed >= 10, "{version:?}: {allowed}");
        }
    }

    fn rewritten(policy: &str) -> Result<Rewritten, Unsupported> {
        let mut e = new_engine(RegoVersion::V1, Duration::from_secs(5));
        e.add_policy("t.rego".into(), policy.into()).unwrap();
        for_fast_path(policy, e.get_modules(), RegoVersion::V1)
    }

    #[test]
    fn rules_that_cannot_give_two_values_are_left_alone() {
        let policy = r#"package agent_policy
import rego.v1
default A := false
A if { ok(input.x); n(input.y) == 2; kind == "a" }
ok(x) if { some y in x; y == 1 }
ok(x) if { x == "one" }
n(y) := count(y)
n2(y) := c if { c := count(y) }
kind := "a" if { input.t == 1 }
kind := "a" if { input.u == 1 }
ns(t) := "mnt" if { lower(t) == "mount" } else := t
"#;
        let Rewritten {
            text, conflicts, ..
        } = rewritten(policy).unwrap();
        assert_eq!(conflicts, 0, "{text}");
        assert!(!text.contains("__aw_"), "{text}");
        assert_eq!(text.lines().count(), policy.lines().count());
        // A Rego v0 partial set (`s[x] { … }`) accumulates: nothing to rewrite.
        let v0 = "package agent_policy\ns[x] { x := input.a[_] }\nA { s[input.b] }\n";
        let mut e = new_engine(RegoVersion::V0, Duration::from_secs(5));
        e.add_policy("t.rego".into(), v0.into()).unwrap();
        let r = for_fast_path(v0, e.get_modules(), RegoVersion::V0).unwrap();
        assert_eq!(r.text, v0);
        assert!(!r.changed());
    }

    #[test]
    fn forms_the_rewrite_cannot_express_keep_the_policy_on_the_interpreter() {
        let head =
            "package agent_policy\nimport rego.v1\ndefault A := false\nA if { not r(input.x) }\n";
        for (rules, what) in [
            (
                "r(x) := 1 if { x > 1 } else := 2 if { x > 0 }\nr(x) := 3 if { x < 0 }\n",
                "else",
            ),
            (
                "r(x) := 1 if { x > 1 }\nr(y) := 2 if { y < 0 }\n",
                "parameters",
            ),
            (
                "r(x) := o.a if { o := {k: v | some k, v in x} }\n",
                "object comprehension",
            ),
            (
                "s contains o.a if { o := {k: v | some k, v in input.m} }\nr(x) if { s[x] }\n",
                "object comprehension",
            ),
            (
                "o[k] := v if { some k, v in input.m }\nr(x) if { o[x] }\n",
                "partial object",
            ),
        ] {
            let policy = format!("{head}{rules}");
            let e = rewritten(&policy).expect_err(what);
            assert!(e.to_string().contains(what), "{what}: {e}");
            assert!(e.to_string().starts_with("t.rego:"), "{e}");
            assert!(
                Compiled::build("t.rego", &policy, RegoVersion::V1, Duration::from_secs(5))
                    .is_none(),
                "{what}"
            );
        }
    }

    #[test]
    fn iteration_over_a_non_collection_fails_the_compiled_program() {
        let policy = r#"package agent_policy
import rego.v1
default A := false
A if { not bad }
bad if {
    some x in input.c
    x == "evil"
}
default B := false
B if { not member }
member if {
    some x in input.c
    x == input.w
}
default C := false
C if {
    found := [x | some x in input.c; x == "evil"]
    count(found) == 0
}
default D := false
D if {
    every y in ["evil"] {
        not has(y)
    }
}
has(y) if {
    some k, v in input.c
    v == y
}
default E := false
E if {
    some x in ["a", "b"]
    x == input.w
}
"#;
        let compiled = Compiled::build("t.rego", policy, RegoVersion::V1, Duration::from_secs(5))
            .expect("compiled");
        let mut interp = new_engine(RegoVersion::V1, Duration::from_secs(5));
        interp.add_policy("t.rego".into(), policy.into()).unwrap();
        let (mut failed, mut allowed) = (0, 0);
        for input in [
            serde_json::json!({"c": "evil", "w": "e"}),
            serde_json::json!({"c": 5, "w": 5}),
            serde_json::json!({"c": null, "w": "a"}),
            serde_json::json!({"c": true}),
            serde_json::json!({"c": ["ok"], "w": "a"}),
            serde_json::json!({"c": ["evil"], "w": "evil"}),
            serde_json::json!({"c": {"k": "evil"}, "w": "b"}),
            serde_json::json!({"c": ["ok"], "w": "ok"}),
            serde_json::json!({"w": "a"}),
        ] {
            let input: Value = serde_json::from_value(input).unwrap();
            for rule in ["A", "B", "C", "D", "E"] {
                let fast = compiled.eval(rule, &input, None);
                interp.set_input(input.clone());
                match interp.eval_rule(format!("data.agent_policy.{rule}")) {
                    Err(e) => {
                        assert_eq!(fast, None, "{rule} {input}: {e}");
                        failed += 1;
                    }
                    Ok(v) => {
                        assert_eq!(fast, Some(v.clone()), "{rule} {input}");
                        allowed += usize::from(v == Value::from(true));
                    }
                }
            }
        }
        // A, B, C, D on each of the four scalars; E never iterates input.
        assert_eq!(failed, 16);
        assert!(allowed >= 15, "{allowed}");
    }
}
