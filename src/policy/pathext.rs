//! Path helpers for policies, registered with every policy engine as regorus
//! extensions (functions implemented in Rust that Rego code calls by name). The
//! compiled fast path, whose VM cannot call extensions, answers its programs' calls
//! to them through [`call`] (see [`crate::policy::compiled`]).
//!
//! | call | value |
//! |---|---|
//! | `path.clean(p)` | `p` cleaned lexically (see [`clean`]) |
//! | `path.is_beneath(p, root)` | `true` iff `p` is a strict descendant of `root` (see [`is_beneath`]) |
//! | `path.is_within(p, root)` | `true` iff `p` is `root` itself or a descendant of it (see [`is_within`]) |
//!
//! Everything is lexical: the guest filesystem is never consulted, so symbolic
//! links are not resolved. Both arguments of the comparisons are cleaned first, so
//! `/run/a/../../etc` is not beneath `/run/a` and `/run/ab` is not beneath `/run/a`
//! (components are compared, not prefixes of strings). A relative path is never
//! beneath or within an absolute one, nor the other way round.
//!
//! An argument that is not a string is an evaluation error, not `false`: if these
//! helpers returned `false` or undefined, `not path.is_beneath(x, root)` would be
//! true for a malformed `x`. The error aborts the evaluation, and agent-warden
//! denies a request whose evaluation fails. An undefined argument makes the call
//! undefined (regorus does not call an extension with undefined arguments).

use regorus::{Engine, Value};

/// A helper's implementation: its arguments as regorus passes them to an extension.
type HelperFn = fn(Vec<Value>) -> anyhow::Result<Value>;

/// The helpers: Rego name, number of arguments, implementation. The one table both
/// the interpreter's extensions ([`register`]) and the compiled fast path ([`call`])
/// are built from.
pub const HELPERS: [(&str, u8, HelperFn); 3] = [
    ("path.clean", 1, ext_clean),
    ("path.is_beneath", 2, ext_is_beneath),
    ("path.is_within", 2, ext_is_within),
];

/// Registers the path helpers with `engine`. A fresh engine always accepts them; if
/// registration failed anyway, a policy that calls them fails to evaluate, and its
/// requests are denied.
pub fn register(engine: &mut Engine) {
    for (name, arity, f) in HELPERS {
        if let Err(e) = engine.add_extension(name.to_string(), arity, Box::new(f)) {
            tracing::error!(helper = name, error = %e, "cannot register the policy path helper");
        }
    }
}

/// Calls helper `name` (one of [`HELPERS`]) as regorus would call the extension;
/// `None` for any other name. The compiled fast path uses this for the calls its
/// programs hand back to the host (see [`crate::policy::compiled`]).
pub(crate) fn call(name: &str, params: Vec<Value>) -> Option<anyhow::Result<Value>> {
    HELPERS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, f)| f(params))
}

fn string_arg(helper: &str, params: &[Value], index: usize) -> anyhow::Result<String> {
    match params.get(index) {
        Some(Value::String(s)) => Ok(s.to_string()),
        Some(other) => anyhow::bail!(
            "{helper}: argument {} must be a string, got {}",
            index + 1,
            type_name(other)
        ),
        None => anyhow::bail!("{helper}: argument {} is missing", index + 1),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Set(_) => "a set",
        Value::Object(_) => "an object",
        Value::Undefined => "undefined",
    }
}

fn ext_clean(params: Vec<Value>) -> anyhow::Result<Value> {
    let p = string_arg("path.clean", &params, 0)?;
    Ok(Value::from(clean(&p)))
}

fn ext_is_beneath(params: Vec<Value>) -> anyhow::Result<Value> {
    let p = string_arg("path.is_beneath", &params, 0)?;
    let root = string_arg("path.is_beneath", &params, 1)?;
    Ok(Value::from(is_beneath(&p, &root)))
}

fn ext_is_within(params: Vec<Value>) -> anyhow::Result<Value> {
    let p = string_arg("path.is_within", &params, 0)?;
    let root = string_arg("path.is_within", &params, 1)?;
    Ok(Value::from(is_within(&p, &root)))
}

/// A cleaned path: absolute or not, and its components (no `.`, no empty ones;
/// `..` only at the start of a relative path).
#[derive(Debug, PartialEq, Eq)]
struct Cleaned<'a> {
    absolute: bool,
    parts: Vec<&'a str>,
}

fn components(p: &str) -> Cleaned<'_> {
    let absolute = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                // `..` at the root stays at the root.
                _ if absolute => {}
                // A relative path keeps the `..` it cannot resolve.
                _ => parts.push(".."),
            },
            name => parts.push(name),
        }
    }
    Cleaned { absolute, parts }
}

/// The shortest path lexically equivalent to `p`: duplicate slashes, `.` and
/// trailing slashes removed, `name/..` resolved, `..` at the root dropped (`/..` is
/// `/`). A relative path stays relative and keeps the leading `..` it cannot resolve
/// (`a/../../b` is `../b`). The empty path, and a relative path that resolves to
/// nothing, is `.`.
pub fn clean(p: &str) -> String {
    let c = components(p);
    let joined = c.parts.join("/");
    match (c.absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Where `p` lies relative to `root` after cleaning both: `Some(depth)` if `p` is
/// `root` (0) or below it (the number of extra components), `None` otherwise.
fn depth_below(p: &str, root: &str) -> Option<usize> {
    let p = components(p);
    let root = components(root);
    if p.absolute != root.absolute || !p.parts.starts_with(&root.parts) {
        return None;
    }
    let rest = p.parts.get(root.parts.len()..)?;
    // Relative paths only: `../x` is not below `.` (it starts above it).
    if rest.contains(&"..") {
        return None;
    }
    Some(rest.len())
}

/// `true` iff `p` is a strict descendant of `root`, comparing cleaned components:
/// `/run/a/b` is beneath `/run/a`; `/run/a` itself, `/run/ab` and `/run/a/../b` are
/// not. A relative `p` is never beneath an absolute `root` (nor the reverse).
pub fn is_beneath(p: &str, root: &str) -> bool {
    matches!(depth_below(p, root), Some(d) if d > 0)
}

/// Like [`is_beneath`], but `root` itself (after cleaning) also counts.
pub fn is_within(p: &str, root: &str) -> bool {
    depth_below(p, root).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_cases() {
        let cases = [
            ("", "."),
            (".", "."),
            ("./", "."),
            ("/", "/"),
            ("//", "/"),
            ("/..", "/"),
            ("/../..", "/"),
            ("/../a", "/a"),
            ("/a/b/../c", "/a/c"),
            ("/a//b///c/", "/a/b/c"),
            ("/a/./b/.", "/a/b"),
            ("/run/a/../../etc", "/etc"),
            ("/run/a/../../../../etc/passwd", "/etc/passwd"),
            ("a", "a"),
            ("a/", "a"),
            ("a/..", "."),
            ("a/../..", ".."),
            ("a/../../b", "../b"),
            ("../../a", "../../a"),
            ("./a/./b", "a/b"),
            ("..", ".."),
            ("../..", "../.."),
            ("../a/..", ".."),
        ];
        for (input, want) in cases {
            assert_eq!(clean(input), want, "clean({input:?})");
            // Cleaning is idempotent.
            assert_eq!(clean(&clean(input)), want, "clean(clean({input:?}))");
        }
    }

    #[test]
    fn beneath_and_within_cases() {
        // (p, root, is_beneath, is_within)
        let cases = [
            ("/run/a/b", "/run/a", true, true),
            ("/run/a/b/c", "/run/a/", true, true),
            ("/run/a//b/./c", "/run/a", true, true),
            ("/run/a", "/run/a", false, true),
            ("/run/a/", "/run/a", false, true),
            ("/run/a/b/..", "/run/a", false, true),
            ("/run/a/../../etc", "/run/a", false, false),
            ("/run/a/../b", "/run/a", false, false),
            ("/run/ab", "/run/a", false, false),
            ("/run", "/run/a", false, false),
            ("/", "/run/a", false, false),
            ("/x", "/", true, true),
            ("/", "/", false, true),
            ("/..", "/", false, true),
            ("/../etc", "/", true, true),
            ("run/a/b", "/run/a", false, false),
            ("a/b", "a", true, true),
            ("/a/b", "a", false, false),
            ("../x", ".", false, false),
            ("x", ".", true, true),
            ("x", "", true, true),
            ("../x", "..", true, true),
            ("../../x", "..", false, false),
            ("../a/b", "../a", true, true),
            ("", "", false, true),
            ("", "/", false, false),
        ];
        for (p, root, beneath, within) in cases {
            assert_eq!(is_beneath(p, root), beneath, "is_beneath({p:?}, {root:?})");
            assert_eq!(is_within(p, root), within, "is_within({p:?}, {root:?})");
        }
    }

    /// An engine with the helpers and a policy calling them.
    fn engine() -> Engine {
        let mut engine = Engine::new();
        register(&mut engine);
        engine
            .add_policy(
                "helpers.rego".to_string(),
                r#"package t
import rego.v1
clean := path.clean(input.p)
beneath := path.is_beneath(input.p, input.root)
within := path.is_within(input.p, input.root)
default allowed := false
allowed if path.is_beneath(input.p, "/run/kata-containers/shared/containers")
denied if not path.is_beneath(input.p, "/run/kata-containers/shared/containers")
"#
                .to_string(),
            )
            .unwrap();
        engine
    }

    fn eval(engine: &mut Engine, rule: &str, input: serde_json::Value) -> anyhow::Result<Value> {
        engine.set_input(serde_json::from_value(input).unwrap());
        engine.eval_rule(format!("data.t.{rule}"))
    }

    #[test]
    fn helpers_are_callable_from_rego() {
        let mut e = engine();
        let v = eval(
            &mut e,
            "clean",
            serde_json::json!({"p": "/run/a/../../etc//x/"}),
        )
        .unwrap();
        assert_eq!(v, Value::from("/etc/x"));
        let v = eval(&mut e, "clean", serde_json::json!({"p": ""})).unwrap();
        assert_eq!(v, Value::from("."));
        for (p, root, beneath, within) in [
            ("/run/a/b", "/run/a", true, true),
            ("/run/a", "/run/a", false, true),
            ("/run/a/../../etc", "/run/a", false, false),
            ("/run/ab", "/run/a", false, false),
            ("run/a/b", "/run/a", false, false),
        ] {
            let input = serde_json::json!({"p": p, "root": root});
            assert_eq!(
                eval(&mut e, "beneath", input.clone()).unwrap(),
                Value::from(beneath),
                "{p} {root}"
            );
            assert_eq!(
                eval(&mut e, "within", input).unwrap(),
                Value::from(within),
                "{p} {root}"
            );
        }
    }

    #[test]
    fn helpers_work_in_rego_v0_modules_too() {
        let mut engine = Engine::new();
        engine.set_rego_v0(true);
        register(&mut engine);
        engine
            .add_policy(
                "v0.rego".to_string(),
                "package t\nok { path.is_beneath(input.p, \"/a\") }\nc = path.clean(input.p)\n"
                    .to_string(),
            )
            .unwrap();
        assert_eq!(
            eval(&mut engine, "ok", serde_json::json!({"p": "/a/b"})).unwrap(),
            Value::from(true)
        );
        assert_eq!(
            eval(&mut engine, "ok", serde_json::json!({"p": "/a/../b"})).unwrap(),
            Value::Undefined
        );
        assert_eq!(
            eval(&mut engine, "c", serde_json::json!({"p": "a//b/"})).unwrap(),
            Value::from("a/b")
        );
    }

    #[test]
    fn non_string_arguments_are_errors_not_false() {
        let mut e = engine();
        for bad in [
            serde_json::json!(5),
            serde_json::json!(null),
            serde_json::json!(["/run"]),
            serde_json::json!({}),
        ] {
            let input = serde_json::json!({"p": bad, "root": "/run"});
            for rule in ["clean", "beneath", "within", "allowed", "denied"] {
                let r = eval(&mut e, rule, input.clone());
                let err = r
                    .expect_err(&format!("{rule} with p = {bad} must fail"))
                    .to_string();
                assert!(err.contains("must be a string"), "{rule}: {err}");
            }
            let input = serde_json::json!({"p": "/run/x", "root": bad});
            assert!(eval(&mut e, "beneath", input).is_err());
        }
    }

    #[test]
    fn non_string_argument_denies_through_the_agent_policy_engine() {
        // The engine agent-warden really uses (lenient builtin errors included).
        use crate::policy::{Decision, Policy, RegoVersion};
        let src = "package agent_policy\nimport rego.v1\ndefault CopyFileRequest := false\n\
                   CopyFileRequest if path.is_beneath(input.path, \"/run/kata-containers/shared/containers\")\n\
                   default ExecProcessRequest := true\n\
                   ExecProcessRequest := false if not path.is_within(input.path, \"/run\")\n";
        for version in [RegoVersion::V0, RegoVersion::V1] {
            let p = Policy::load("helpers.rego", src, version).unwrap();
            let ok =
                serde_json::json!({"path": "/run/kata-containers/shared/containers/c1/rootfs"});
            assert_eq!(p.decide("CopyFileRequest", &ok), Decision::Allow);
            let escape = serde_json::json!({"path": "/run/kata-containers/shared/containers/../../../etc/passwd"});
            assert!(matches!(
                p.decide("CopyFileRequest", &escape),
                Decision::Deny { .. }
            ));
            let bad = serde_json::json!({"path": 7});
            let d = p.decide("CopyFileRequest", &bad);
            assert!(
                matches!(&d, Decision::Error(e) if e.contains("must be a string")),
                "{d:?}"
            );
            // `not helper(bad)` must not turn into an allow.
            let d = p.decide("ExecProcessRequest", &bad);
            assert!(
                matches!(&d, Decision::Error(e) if e.contains("must be a string")),
                "{d:?}"
            );
        }
    }

    #[test]
    fn undefined_argument_makes_the_call_undefined() {
        let mut e = engine();
        assert_eq!(
            eval(&mut e, "clean", serde_json::json!({})).unwrap(),
            Value::Undefined
        );
        assert_eq!(
            eval(&mut e, "allowed", serde_json::json!({})).unwrap(),
            Value::from(false)
        );
    }

    #[test]
    fn a_policy_function_of_the_same_name_takes_precedence() {
        // Registering the helpers cannot change the meaning of a policy that defines
        // its own `path.clean` (regorus looks up policy functions first).
        let mut engine = Engine::new();
        register(&mut engine);
        engine
            .add_policy(
                "own.rego".to_string(),
                "package t\nimport rego.v1\npath.clean(x) := \"mine\"\nc := path.clean(\"/a/..\")\n".to_string(),
            )
            .unwrap();
        assert_eq!(
            engine.eval_rule("data.t.c".to_string()).unwrap(),
            Value::from("mine")
        );
    }

    #[test]
    fn registering_twice_is_harmless() {
        let mut e = engine();
        register(&mut e);
        assert_eq!(
            eval(&mut e, "clean", serde_json::json!({"p": "/a/./b"})).unwrap(),
            Value::from("/a/b")
        );
    }
}
