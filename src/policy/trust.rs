//! What the compiled fast path ([`super::compiled`]) must not decide: policies whose
//! evaluation can fail in a way regorus's VM does not report.
//!
//! The interpreter, like kata-agent's engine, fails the whole evaluation on a run-time
//! error, and kata-agent then refuses the request. regorus 0.14.1's VM instead treats an
//! error inside a rule body as that body not holding, so the rule (or a `not` of it, or
//! another body of its caller) can come out the other way: a request kata refuses could
//! be allowed. In non-strict mode (builtin failures are undefined in both) the run-time
//! errors a policy can raise are arithmetic on a value that is not a number (`"x" + 1`),
//! set operations on values that are not sets, `some .. in` over a value that is not a
//! collection, and a rule or function giving two values for one input (a conflict).
//! This module finds the first two: every `+ - * / %`, unary minus, `|` and `&` whose
//! operands are not provably numbers (or, for `- | &`, sets),
//! print arguments included (a print's failing argument fails the evaluation too). A
//! policy that has one is decided by the interpreter alone. Conflicts, and `some .. in`
//! over a value that is not a collection (also an error), are made to fail the compiled
//! programs by [`super::rewrite`].
//!
//! "Provably" is a small inference over one body of a rule definition: number literals,
//! `count`, `to_number` and the other numeric builtins, arithmetic on numbers; array and
//! set literals and comprehensions, `split` and the array builtins; a variable all of
//! whose bindings in the body (`x := e`, `x = e`, or the index of `some i, _ in xs` /
//! `every i, _ in xs` over a provable array) are of one such kind (a parameter is not).
//! Everything else is unknown, and unknown operands are not trusted. genpolicy's rules
//! (both families) pass.

use std::collections::{HashMap, HashSet};

use regorus::unstable::{
    ArithOp, AssignOp, Expr, Literal, LiteralStmt, Module, Query, Ref, Rule, RuleHead, Span,
};

/// A place in the policy the fast path cannot be trusted with (here: arithmetic; for
/// [`super::rewrite`]: a rule it cannot make fail as the interpreter fails).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unproven {
    pub file: String,
    pub line: u32,
    /// What is there: the expression's text (first line, shortened), or a description.
    pub text: String,
}

impl Unproven {
    /// `text` at `span`'s file and line.
    pub(crate) fn at(span: &Span, text: String) -> Unproven {
        Unproven {
            file: span.source.file().to_string(),
            line: span.line,
            text,
        }
    }
}

impl std::fmt::Display for Unproven {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.text)
    }
}

/// The first arithmetic or set operation in `modules` whose operands are not provably
/// of the kind it needs (module comment); `None` when there is none.
pub(crate) fn first_unproven(modules: &[Ref<Module>]) -> Option<Unproven> {
    let defined: HashSet<String> = modules
        .iter()
        .flat_map(|m| m.policy.iter())
        .filter_map(|r| match r.as_ref() {
            Rule::Spec {
                head:
                    RuleHead::Compr { refr, .. }
                    | RuleHead::Set { refr, .. }
                    | RuleHead::Func { refr, .. },
                ..
            }
            | Rule::Default { refr, .. } => super::explain::head_name(refr),
        })
        .collect();
    let check_all = |d: &mut Definition, exprs: &[&Expr]| exprs.iter().find_map(|e| d.check(e));
    for module in modules {
        for rule in &module.policy {
            match rule.as_ref() {
                Rule::Spec { head, bodies, .. } => {
                    let params: &[Ref<Expr>] = match head {
                        RuleHead::Func { args, .. } => args,
                        _ => &[],
                    };
                    let (refr, value) = match head {
                        RuleHead::Compr { refr, assign, .. }
                        | RuleHead::Func { refr, assign, .. } => {
                            (refr, assign.as_ref().map(|a| a.value.as_ref()))
                        }
                        RuleHead::Set { refr, key, .. } => (refr, key.as_ref().map(|k| k.as_ref())),
                    };
                    if bodies.is_empty() {
                        let mut d = Definition::new(&defined, params);
                        let exprs: Vec<&Expr> = [refr.as_ref()].into_iter().chain(value).collect();
                        if let Some(u) = check_all(&mut d, &exprs) {
                            return Some(u);
                        }
                    }
                    // Each body in its own bindings (a name can be bound differently in
                    // an `else`), with the head's value for a body that is not an `else`
                    // and an `else`'s own value.
                    for body in bodies {
                        let mut d = Definition::new(&defined, params);
                        d.bind_query(&body.query);
                        if let Some(u) = d.check_query(&body.query) {
                            return Some(u);
                        }
                        let own = body.assign.as_ref().map(|a| a.value.as_ref());
                        let exprs: Vec<&Expr> = [refr.as_ref()]
                            .into_iter()
                            .chain(if body.is_else { None } else { value })
                            .chain(own)
                            .collect();
                        if let Some(u) = check_all(&mut d, &exprs) {
                            return Some(u);
                        }
                    }
                }
                Rule::Default { args, value, .. } => {
                    let mut d = Definition::new(&defined, &[]);
                    let exprs: Vec<&Expr> = args
                        .iter()
                        .map(|a| a.as_ref())
                        .chain([value.as_ref()])
                        .collect();
                    if let Some(u) = check_all(&mut d, &exprs) {
                        return Some(u);
                    }
                }
            }
        }
    }
    None
}

/// What a value is known to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    Array,
    Set,
    Unknown,
}

/// How a variable of the body gets its value.
enum Binding<'a> {
    /// `x := e`, `x = e` (or `e = x`).
    Value(&'a Expr),
    /// The key (index) of `some x, _ in c` / `every x, _ in c`.
    KeyOf(&'a Expr),
    /// Anything else (an element of a collection, a destructuring, ...).
    Unknown,
}

/// One body of a rule definition: its variables' bindings, everywhere in it (nested
/// queries included: a name bound differently in two places is unknown).
struct Definition<'a> {
    bindings: HashMap<String, Vec<Binding<'a>>>,
    /// Names the policy defines (a rule named like a builtin is not the builtin).
    defined: &'a HashSet<String>,
    /// Variables being resolved (a cycle is unknown).
    visiting: HashSet<String>,
}

fn var_name(e: &Expr) -> Option<&str> {
    match e {
        Expr::Var { span, .. } => Some(span.text()),
        _ => None,
    }
}

fn unproven(span: &Span) -> Unproven {
    Unproven::at(span, super::explain::short(span.text()))
}

impl<'a> Definition<'a> {
    /// A body of a definition with parameters `params`: bound by the caller, so of no
    /// known kind (a body's `param = count(x)` is then a comparison, not a binding).
    fn new(defined: &'a HashSet<String>, params: &'a [Ref<Expr>]) -> Definition<'a> {
        let mut d = Definition {
            bindings: HashMap::new(),
            defined,
            visiting: HashSet::new(),
        };
        for name in params.iter().filter_map(|p| var_name(p)) {
            d.bind(name, Binding::Unknown);
        }
        d
    }

    fn bind(&mut self, name: &str, b: Binding<'a>) {
        if name != "_" {
            self.bindings.entry(name.to_string()).or_default().push(b);
        }
    }

    fn bind_query(&mut self, q: &'a Query) {
        for stmt in &q.stmts {
            self.bind_stmt(stmt);
        }
    }

    fn bind_stmt(&mut self, stmt: &'a LiteralStmt) {
        match &stmt.literal {
            Literal::SomeVars { .. } => {}
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => {
                if let Some(k) = key.as_ref().and_then(|k| var_name(k)) {
                    self.bind(k, Binding::KeyOf(collection));
                }
                if let Some(v) = var_name(value) {
                    self.bind(v, Binding::Unknown);
                }
                self.bind_expr(collection);
            }
            Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => self.bind_expr(expr),
            Literal::Every {
                key,
                value,
                domain,
                query,
                ..
            } => {
                if let Some(k) = key {
                    self.bind(k.text(), Binding::KeyOf(domain));
                }
                self.bind(value.text(), Binding::Unknown);
                self.bind_expr(domain);
                self.bind_query(query);
            }
        }
    }

    /// Bindings made by `e` (assignments, and those inside comprehensions).
    fn bind_expr(&mut self, e: &'a Expr) {
        match e {
            Expr::AssignExpr { op, lhs, rhs, .. } => {
                if let Some(name) = var_name(lhs) {
                    self.bind(name, Binding::Value(rhs));
                } else if *op == AssignOp::Eq {
                    if let Some(name) = var_name(rhs) {
                        self.bind(name, Binding::Value(lhs));
                    }
                }
                self.bind_expr(lhs);
                self.bind_expr(rhs);
            }
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                self.bind_query(query);
                self.bind_expr(term);
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => {
                self.bind_query(query);
                self.bind_expr(key);
                self.bind_expr(value);
            }
            _ => {}
        }
    }

    fn kind(&mut self, e: &Expr) -> Kind {
        match e {
            Expr::Number { .. } => Kind::Number,
            Expr::Array { .. } | Expr::ArrayCompr { .. } => Kind::Array,
            Expr::Set { .. } | Expr::SetCompr { .. } => Kind::Set,
            Expr::ArithExpr { op, lhs, rhs, .. } => match (op, self.kind(lhs), self.kind(rhs)) {
                (_, Kind::Number, Kind::Number) => Kind::Number,
                (ArithOp::Sub, Kind::Set, Kind::Set) => Kind::Set,
                _ => Kind::Unknown,
            },
            Expr::UnaryExpr { expr, .. } if self.kind(expr) == Kind::Number => Kind::Number,
            Expr::BinExpr { lhs, rhs, .. }
                if self.kind(lhs) == Kind::Set && self.kind(rhs) == Kind::Set =>
            {
                Kind::Set
            }
            Expr::Call { fcn, .. } => {
                let name = fcn.span().text();
                if self.defined.contains(name) {
                    return Kind::Unknown;
                }
                match name {
                    "count" | "to_number" | "sum" | "product" | "abs" | "ceil" | "floor"
                    | "round" | "indexof" | "strings.count" | "time.now_ns" => Kind::Number,
                    "split" | "array.concat" | "array.slice" | "array.reverse" | "sort"
                    | "strings.split" => Kind::Array,
                    _ => Kind::Unknown,
                }
            }
            Expr::Var { span, .. } => self.var_kind(span.text()),
            _ => Kind::Unknown,
        }
    }

    /// The kind every binding of `name` gives, if they agree (and there is one).
    fn var_kind(&mut self, name: &str) -> Kind {
        if !self.visiting.insert(name.to_string()) {
            return Kind::Unknown;
        }
        // The bindings' expressions (they live as long as the policy, not the map).
        let sources: Vec<(bool, Option<&'a Expr>)> = self
            .bindings
            .get(name)
            .map(|bs| {
                bs.iter()
                    .map(|b| match b {
                        Binding::Value(e) => (false, Some(*e)),
                        Binding::KeyOf(c) => (true, Some(*c)),
                        Binding::Unknown => (false, None),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut kind = None;
        for (key_of, e) in sources {
            let k = match (key_of, e) {
                (false, Some(e)) => self.kind(e),
                (true, Some(c)) if self.kind(c) == Kind::Array => Kind::Number,
                _ => Kind::Unknown,
            };
            kind = match kind {
                None => Some(k),
                Some(prev) if prev == k => Some(k),
                Some(_) => Some(Kind::Unknown),
            };
        }
        self.visiting.remove(name);
        kind.unwrap_or(Kind::Unknown)
    }

    fn check_query(&mut self, q: &Query) -> Option<Unproven> {
        q.stmts.iter().find_map(|s| self.check_stmt(s))
    }

    fn check_stmt(&mut self, stmt: &LiteralStmt) -> Option<Unproven> {
        let found = match &stmt.literal {
            Literal::SomeVars { .. } => None,
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => self.check_in(key, value, collection),
            Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => self.check(expr),
            Literal::Every { domain, query, .. } => {
                self.check(domain).or_else(|| self.check_query(query))
            }
        };
        found.or_else(|| {
            stmt.with_mods
                .iter()
                .find_map(|w| self.check(&w.refr).or_else(|| self.check(&w.r#as)))
        })
    }

    /// The first operation in `e` (itself included) whose operands are not provable.
    fn check(&mut self, e: &Expr) -> Option<Unproven> {
        match e {
            Expr::ArithExpr {
                span, op, lhs, rhs, ..
            } => {
                let ok = matches!(
                    (op, self.kind(lhs), self.kind(rhs)),
                    (_, Kind::Number, Kind::Number) | (ArithOp::Sub, Kind::Set, Kind::Set)
                );
                if !ok {
                    return Some(unproven(span));
                }
                self.check(lhs).or_else(|| self.check(rhs))
            }
            Expr::UnaryExpr { span, expr, .. } => {
                if self.kind(expr) != Kind::Number {
                    return Some(unproven(span));
                }
                self.check(expr)
            }
            Expr::BinExpr { span, lhs, rhs, .. } => {
                if self.kind(lhs) != Kind::Set || self.kind(rhs) != Kind::Set {
                    return Some(unproven(span));
                }
                self.check(lhs).or_else(|| self.check(rhs))
            }
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                items.iter().find_map(|i| self.check(i))
            }
            Expr::Object { fields, .. } => fields
                .iter()
                .find_map(|(_, k, v)| self.check(k).or_else(|| self.check(v))),
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                self.check_query(query).or_else(|| self.check(term))
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => self
                .check_query(query)
                .or_else(|| self.check(key))
                .or_else(|| self.check(value)),
            Expr::Call { fcn, params, .. } => self
                .check(fcn)
                .or_else(|| params.iter().find_map(|p| self.check(p))),
            Expr::RefDot { refr, .. } => self.check(refr),
            Expr::RefBrack { refr, index, .. } => self.check(refr).or_else(|| self.check(index)),
            Expr::BoolExpr { lhs, rhs, .. } | Expr::AssignExpr { lhs, rhs, .. } => {
                self.check(lhs).or_else(|| self.check(rhs))
            }
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => self.check_in(key, value, collection),
            _ => None,
        }
    }

    /// `key, value in collection` (of `some` or a membership test).
    fn check_in(
        &mut self,
        key: &Option<Ref<Expr>>,
        value: &Expr,
        collection: &Expr,
    ) -> Option<Unproven> {
        key.iter()
            .map(|k| k.as_ref())
            .chain([value, collection])
            .find_map(|e| self.check(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(policy: &str) -> Option<String> {
        let mut engine = regorus::Engine::new();
        engine.add_policy("t.rego".into(), policy.into()).unwrap();
        first_unproven(engine.get_modules()).map(|u| u.to_string())
    }

    const HEAD: &str = "package agent_policy\nimport rego.v1\n";

    #[test]
    fn arithmetic_on_counts_indexes_and_sets_is_proven() {
        let p = format!(
            "{HEAD}A if {{
    parts := split(input.s, \":\")
    n := count(parts)
    last := parts[count(parts) - 1]
    every i, part in parts {{
        part == input.p[i + 1]
    }}
    n == count(input.q) + 3
    total := n * 2
    neg := -total
    neg < 0
    a := {{x | x := input.a[_]}}
    b := {{x | x = input.b[_]}}
    extra := a - b
    both := a | b
    count(both & extra) == 0
    print(\"last\", input.o[n - 2])
}}
"
        );
        assert_eq!(first(&p), None);
    }

    #[test]
    fn arithmetic_on_what_the_host_sends_is_not() {
        for (body, line) in [
            ("input.a + 1 > 0", "input.a + 1"),
            ("x := input.a\n    x * 2 == 4", "x * 2"),
            ("print(input.a - 1)", "input.a - 1"),
            ("not input.a % 2 == 0", "input.a % 2"),
            ("some v in input.list\n    v + 1 == 2", "v + 1"),
            ("some k, v in input.obj\n    k + 1 == 2", "k + 1"),
            ("y := input.s | {1}", "input.s | {1}"),
            ("m := -input.n", "-input.n"),
        ] {
            let p = format!("{HEAD}A if {{\n    {body}\n}}\n");
            let got = first(&p).unwrap_or_else(|| panic!("{body}: not found"));
            assert!(got.contains(line), "{body}: {got}");
            assert!(got.starts_with("t.rego:"), "{got}");
        }
    }

    #[test]
    fn parameters_and_mixed_bindings_are_unknown() {
        let f = format!("{HEAD}f(x) := x + 1\n");
        assert!(first(&f).unwrap().contains("x + 1"));
        // `n = count(...)` on a parameter compares, it does not make `n` a number.
        let param = format!("{HEAD}f(n) if {{\n    n + 1 > 0\n    n = count(input.a)\n}}\n");
        assert!(first(&param).unwrap().contains("n + 1"));
        let mixed =
            format!("{HEAD}A if {{\n    x = count(input.a)\n    x = input.b\n    x - 1 > 0\n}}\n");
        assert!(first(&mixed).unwrap().contains("x - 1"));
        // A name bound in one body says nothing of the same name in an `else`.
        let other_body = format!(
            "{HEAD}A if {{\n    i := count(input.a)\n    i > 0\n}} else if {{\n    input.m[i]\n    i + 1 > 2\n}}\n"
        );
        assert!(first(&other_body).unwrap().contains("i + 1"));
        // A rule named like a builtin is not the builtin.
        let shadow = format!("{HEAD}A if {{\n    sum(input.a) + 1 > 0\n}}\nsum(x) := x\n");
        assert!(first(&shadow).unwrap().contains("sum(input.a) + 1"));
    }
}
