//! Policy tools: `agent-warden policy check|eval|test|replay|hash`.
//!
//! Offline helpers for policy authors. They load policies exactly as `serve` does
//! ([`Policy::load`]: same Rego version handling, same error messages, same path
//! helpers) and decide requests with the same rules: `true` or `{"allowed": true}`
//! allows; anything else denies. docs/POLICY.md describes each command and its output.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use regorus::Engine;

use crate::codec::{self, InputShape};
use crate::methods;
use crate::policy::{Decision, Policy, RegoVersion, MAX_REASON};
use crate::server::DEFAULT_POLICY;

/// Name under which the embedded default policy is reported.
pub const DEFAULT_POLICY_NAME: &str = "embedded coco-default.rego";

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
    Check(CheckArgs),
    /// Decide one request and print the decision as JSON.
    Eval(EvalArgs),
    /// Run the `test_*` rules of *_test.rego files (each loaded with the policy beside it).
    Test(TestArgs),
    /// Re-decide captured requests (JSON lines: {"kind": "<RequestType>", "request": {...}}).
    Replay(ReplayArgs),
    /// Print the digest of a policy file (sha256 of its bytes, lowercase hex).
    Hash(HashArgs),
}

/// Flags of `policy check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The policy file (Rego, package agent_policy).
    pub file: PathBuf,
    /// Rego version of the policy.
    #[arg(long, value_enum, default_value = "v0")]
    pub rego: RegoVersion,
}

/// Flags of `policy eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The request type (policy rule), e.g. CreateContainerRequest.
    #[arg(long = "type", value_name = "REQUEST_TYPE")]
    pub request_type: String,
    /// The policy input (JSON, as kata-agent builds it for this request type).
    #[arg(long)]
    pub input: PathBuf,
    /// A data document (JSON object) merged under `data`, e.g. {"pstate": {...}}.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Policy file [default: the embedded coco-default policy].
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Rego version of the policy.
    #[arg(long, value_enum, default_value = "v0")]
    pub rego: RegoVersion,
}

/// Flags of `policy test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Test files, or directories searched (recursively) for *_test.rego files.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Rego version of the test files and the policies they are loaded with.
    #[arg(long, value_enum, default_value = "v0")]
    pub rego: RegoVersion,
}

/// Flags of `policy replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The capture: one JSON object per line, {"kind": "<RequestType>", "request": <input>}.
    pub capture: PathBuf,
    /// Policy file [default: the embedded coco-default policy].
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Rego version of the policy.
    #[arg(long, value_enum, default_value = "v0")]
    pub rego: RegoVersion,
}

/// Flags of `policy hash`.
#[derive(Debug, Args)]
pub struct HashArgs {
    /// The file to digest.
    pub file: PathBuf,
}

/// Runs a policy tool; returns the process exit code.
pub fn run_cli(args: PolicyArgs) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    match args.command {
        PolicyCommand::Check(a) => check(&a, &mut out),
        PolicyCommand::Eval(a) => eval(&a, &mut out),
        PolicyCommand::Test(a) => test(&a, &mut out),
        PolicyCommand::Replay(a) => replay(&a, &mut out),
        PolicyCommand::Hash(a) => hash(&a, &mut out),
    }
}

// ---------------------------------------------------------------------------
// Shared pieces

fn read_text(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {what} {}: {e}", path.display()))
}

fn read_json(path: &Path, what: &str) -> anyhow::Result<serde_json::Value> {
    let text = read_text(path, what)?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{what} {} is not valid JSON: {e}", path.display()))
}

/// The policy named on the command line, or the embedded default: (name, text).
fn policy_text(file: Option<&PathBuf>) -> anyhow::Result<(String, String)> {
    match file {
        Some(path) => Ok((path.display().to_string(), read_text(path, "policy")?)),
        None => Ok((DEFAULT_POLICY_NAME.to_string(), DEFAULT_POLICY.to_string())),
    }
}

/// A regorus engine set up like the one [`Policy::load`] uses (Rego version, the
/// large-policy limits genpolicy policies need, gathered prints, lenient builtin
/// errors, path helpers). The tools need their own engine where `Policy` has no
/// API: to add a data document, to read a rule's raw value and prints, to list
/// declared rules, and to load several modules (tests).
fn tool_engine(version: RegoVersion) -> Engine {
    let mut engine = Engine::new();
    engine.set_rego_v0(version == RegoVersion::V0);
    engine.set_policy_length_config(regorus::utils::limits::PolicyLengthConfig {
        max_col: std::num::NonZeroU32::MAX,
        max_file_bytes: std::num::NonZeroUsize::new(64 << 20).unwrap_or(std::num::NonZeroUsize::MAX),
        max_lines: std::num::NonZeroUsize::new(4_000_000).unwrap_or(std::num::NonZeroUsize::MAX),
    });
    engine.set_gather_prints(true);
    engine.set_strict_builtin_errors(false);
    crate::pathext::register(&mut engine);
    engine
}

/// Identifiers in `text` (candidate rule names), in order of first appearance.
fn identifiers(text: &str) -> Vec<&str> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            // Skip the tail of a longer token such as `1e5x` or a field after a digit.
            let preceded_by_digit = start > 0 && bytes[start - 1].is_ascii_digit();
            let word = &text[start..i];
            if !preceded_by_digit && seen.insert(word) {
                out.push(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The names among `candidates` that `source` (a module loaded into `engine` under
/// that name) declares as rules (a rule, a default, or rules beneath that name).
fn declared<'a>(engine: &Engine, source: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    candidates
        .into_iter()
        .filter(|name| engine.has_declared_rule_rooted_at(source, name).unwrap_or(false))
        .collect()
}

// ---------------------------------------------------------------------------
// check

/// The request types a policy defines (declares a rule or default for) and those
/// it leaves undefined, plus rules named like request types that no request queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    pub defined: Vec<String>,
    pub undefined: Vec<String>,
    pub unknown: Vec<String>,
}

/// Checks `text` as `serve` would, then lists its request types.
pub fn coverage(source_name: &str, text: &str, version: RegoVersion) -> anyhow::Result<Coverage> {
    Policy::load(source_name, text, version)?;
    let mut engine = tool_engine(version);
    engine
        .add_policy(source_name.to_string(), text.to_string())
        .map_err(|e| anyhow::anyhow!("policy {source_name}: {e}"))?;
    // Analysis (unsafe variables, recursion, bad imports) happens before the first
    // evaluation: a policy that fails it would fail every request.
    engine
        .eval_query("true".to_string(), false)
        .map_err(|e| anyhow::anyhow!("policy {source_name} parses but does not compile: {e}"))?;
    let types = methods::table().policy_request_types();
    let defined: BTreeSet<&str> = declared(&engine, source_name, types.iter().copied()).into_iter().collect();
    let looks_like_request =
        |w: &&str| w.starts_with(|c: char| c.is_ascii_uppercase()) && (w.ends_with("Request") || w.ends_with("Config"));
    let mut unknown: Vec<String> = declared(
        &engine,
        source_name,
        identifiers(text).into_iter().filter(looks_like_request).filter(|w| !types.contains(w)),
    )
    .into_iter()
    .map(String::from)
    .collect();
    unknown.sort();
    Ok(Coverage {
        defined: types.iter().filter(|t| defined.contains(*t)).map(|t| t.to_string()).collect(),
        undefined: types.iter().filter(|t| !defined.contains(*t)).map(|t| t.to_string()).collect(),
        unknown,
    })
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

fn check(a: &CheckArgs, out: &mut impl std::io::Write) -> anyhow::Result<i32> {
    let name = a.file.display().to_string();
    let text = read_text(&a.file, "policy")?;
    let c = coverage(&name, &text, a.rego)?;
    let rego = match a.rego {
        RegoVersion::V0 => "v0",
        RegoVersion::V1 => "v1",
    };
    writeln!(out, "{name}: ok (Rego {rego}, package agent_policy, sha256 {})", crate::policy::sha256_hex(text.as_bytes()))?;
    writeln!(out, "defined ({}): {}", c.defined.len(), list(&c.defined))?;
    writeln!(out, "undefined, always denied ({}): {}", c.undefined.len(), list(&c.undefined))?;
    if !c.unknown.is_empty() {
        writeln!(out, "not request types, never queried ({}): {}", c.unknown.len(), list(&c.unknown))?;
    }
    Ok(0)
}

// ---------------------------------------------------------------------------
// eval

/// A policy loaded for offline evaluation, with an optional data document.
pub struct Evaluator {
    policy: Policy,
    /// The same policy (and the data document, which `Policy` cannot hold), for
    /// the rule's raw value and prints.
    engine: Engine,
    has_data: bool,
}

impl std::fmt::Debug for Evaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluator").field("policy", &self.policy).field("has_data", &self.has_data).finish()
    }
}

/// One evaluated request.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub decision: Decision,
    /// The rule's value; `None` when undefined or when the evaluation failed.
    pub value: Option<serde_json::Value>,
    /// What the policy printed during the evaluation.
    pub prints: Vec<String>,
}

impl Evaluator {
    /// Loads `text` as `serve` would; `data` (a JSON object), if any, becomes `data`.
    pub fn new(
        source_name: &str,
        text: &str,
        version: RegoVersion,
        data: Option<&serde_json::Value>,
    ) -> anyhow::Result<Evaluator> {
        let policy = Policy::load(source_name, text, version)?;
        let mut engine = tool_engine(version);
        engine
            .add_policy(source_name.to_string(), text.to_string())
            .map_err(|e| anyhow::anyhow!("policy {source_name}: {e}"))?;
        if let Some(data) = data {
            if !data.is_object() {
                anyhow::bail!("the data document must be a JSON object");
            }
            let value: regorus::Value = serde_json::from_value(data.clone())?;
            engine.add_data(value).map_err(|e| anyhow::anyhow!("cannot add the data document: {e}"))?;
        }
        Ok(Evaluator { policy, engine, has_data: data.is_some() })
    }

    /// The loaded policy (name, digest).
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Decides one request. Without a data document the decision is
    /// [`Policy::decide`]'s, i.e. exactly what `serve` answers; with one, the same
    /// rules are applied to the value computed with the data.
    pub fn evaluate(&mut self, request_type: &str, input: &serde_json::Value) -> Outcome {
        let raw = self.raw(request_type, input);
        let decision = if self.has_data {
            match &raw {
                Ok((value, prints)) => interpret(request_type, value.clone(), prints),
                Err(e) => Decision::Error(e.clone()),
            }
        } else {
            self.policy.decide(request_type, input)
        };
        let (value, prints) = match raw {
            Ok((value, prints)) => (value.and_then(|v| serde_json::to_value(v).ok()), prints),
            Err(_) => (None, Vec::new()),
        };
        Outcome { decision, value, prints }
    }

    fn raw(&mut self, request_type: &str, input: &serde_json::Value) -> Result<(Option<regorus::Value>, Vec<String>), String> {
        let input: regorus::Value =
            serde_json::from_value(input.clone()).map_err(|e| format!("cannot convert input for the engine: {e}"))?;
        self.engine.set_input(input);
        let result = self.engine.eval_query(format!("data.agent_policy.{request_type}"), false);
        let prints = self.engine.take_prints().unwrap_or_default();
        let results = result.map_err(|e| e.to_string())?;
        let value = results
            .result
            .into_iter()
            .next()
            .and_then(|r| r.expressions.into_iter().next())
            .map(|e| e.value)
            .filter(|v| *v != regorus::Value::Undefined);
        Ok((value, prints))
    }
}

/// The decision for a rule's value, by the rules [`Policy::decide`] applies
/// (checked against it in the tests below).
fn interpret(request_type: &str, value: Option<regorus::Value>, prints: &[String]) -> Decision {
    let allowed = match &value {
        Some(regorus::Value::Bool(b)) => Some(*b),
        Some(v @ regorus::Value::Object(_)) => match &v["allowed"] {
            regorus::Value::Bool(b) => Some(*b),
            _ => None,
        },
        _ => None,
    };
    if allowed == Some(true) {
        return Decision::Allow;
    }
    let reason = match (&value, allowed) {
        (None, _) => format!("rule data.agent_policy.{request_type} is undefined (denied by default)"),
        (Some(_), None) => "the rule's value is neither a bool nor an object with a bool `allowed`".to_string(),
        (Some(_), Some(_)) if !prints.is_empty() => shorten(prints),
        _ => "the policy returned false".to_string(),
    };
    Decision::Deny { reason, detail: prints.join("\n") }
}

fn shorten(prints: &[String]) -> String {
    let joined = prints.iter().map(|p| p.trim()).filter(|p| !p.is_empty()).collect::<Vec<_>>().join("; ");
    if joined.len() <= MAX_REASON {
        return joined;
    }
    let mut start = joined.len() - MAX_REASON;
    while !joined.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &joined[start..])
}

/// `"allow"`, `"deny"` or `"error"`, and the reason (none for allow).
fn verdict(d: &Decision) -> (&'static str, Option<&str>) {
    match d {
        Decision::Allow => ("allow", None),
        Decision::Deny { reason, .. } => ("deny", Some(reason)),
        Decision::Error(e) => ("error", Some(e)),
    }
}

fn known_request_type(request_type: &str) -> anyhow::Result<()> {
    if methods::table().policy_request_types().contains(&request_type) {
        Ok(())
    } else {
        anyhow::bail!("unknown request type {request_type:?} (`agent-warden endpoints` lists them)")
    }
}

/// A note when `input` is not what kata-agent would send for `request_type` in
/// any input shape (a misspelt key, a wrong type): the policy still sees it as is.
fn input_warning(request_type: &str, input: &serde_json::Value) -> Option<String> {
    let desc = methods::table().request_descriptor(request_type)?;
    let mut first_error = None;
    for shape in InputShape::ALL {
        match codec::from_policy_input(desc, input, shape) {
            Ok(_) => return None,
            Err(e) if shape == InputShape::Current => first_error = Some(e.to_string()),
            Err(_) => {}
        }
    }
    first_error
}

fn eval(a: &EvalArgs, out: &mut impl std::io::Write) -> anyhow::Result<i32> {
    known_request_type(&a.request_type)?;
    let input = read_json(&a.input, "input")?;
    let data = a.data.as_ref().map(|p| read_json(p, "data document")).transpose()?;
    let (name, text) = policy_text(a.policy.as_ref())?;
    let mut evaluator = Evaluator::new(&name, &text, a.rego, data.as_ref())?;
    if let Some(w) = input_warning(&a.request_type, &input) {
        eprintln!("agent-warden: warning: the input is not a {} kata-agent would send: {w}", a.request_type);
    }
    let o = evaluator.evaluate(&a.request_type, &input);
    let (decision, reason) = verdict(&o.decision);
    let report = serde_json::json!({
        "type": a.request_type,
        "policy": name,
        "policy_sha256": evaluator.policy().digest(),
        "allowed": o.decision.is_allowed(),
        "decision": decision,
        "reason": reason,
        "value": o.value,
        "prints": o.prints,
    });
    writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    Ok(0)
}

// ---------------------------------------------------------------------------
// test

/// One test rule's result.
#[derive(Debug, Clone, PartialEq)]
pub struct TestResult {
    /// The test file.
    pub file: PathBuf,
    /// The rule, e.g. `data.agent_policy.test_exec_denied`.
    pub rule: String,
    /// `None` when the rule's value is `true`; otherwise why it failed.
    pub failure: Option<String>,
    pub prints: Vec<String>,
}

/// A test file that could not be loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadFailure {
    pub file: PathBuf,
    pub error: String,
}

fn is_test_file(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with("_test.rego"))
}

fn is_rego(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "rego")
}

fn sorted_entries(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut v = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot read directory {}: {e}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("cannot read directory {}: {e}", dir.display()))?;
    v.sort();
    Ok(v)
}

/// Test files: the files named, and the *_test.rego files beneath the directories
/// named (hidden directories skipped), each once, in order.
pub fn find_test_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        for p in sorted_entries(dir)? {
            let hidden = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
            if p.is_dir() {
                if !hidden {
                    walk(&p, found)?;
                }
            } else if is_test_file(&p) {
                found.push(p);
            }
        }
        Ok(())
    }
    let mut found = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut found)?;
        } else if p.is_file() {
            found.push(p.clone());
        } else {
            anyhow::bail!("{}: no such file or directory", p.display());
        }
    }
    let mut seen = BTreeSet::new();
    found.retain(|p| seen.insert(p.clone()));
    Ok(found)
}

/// The package a module declares, or why it does not parse.
fn package_of(name: &str, text: &str, version: RegoVersion) -> anyhow::Result<String> {
    tool_engine(version).add_policy(name.to_string(), text.to_string()).map_err(|e| anyhow::anyhow!("{name}: {e}"))
}

/// The modules a test file is loaded with: the non-test .rego files beside it. When
/// `<name>.rego` is beside `<name>_test.rego`, the other files that declare the same
/// package are alternatives to it (every shipped policy is a whole `package
/// agent_policy`) and are left out.
fn companions(test_file: &Path, version: RegoVersion) -> anyhow::Result<Vec<(String, String)>> {
    let dir = match test_file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut files = Vec::new();
    for p in sorted_entries(&dir)? {
        if p.is_file() && is_rego(&p) && !is_test_file(&p) && p.file_name() != test_file.file_name() {
            let text = read_text(&p, "policy")?;
            files.push((p, text));
        }
    }
    let subject = test_file
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix("_test.rego"))
        .map(|stem| format!("{stem}.rego"));
    let subject = files.iter().find(|(p, _)| p.file_name().and_then(|n| n.to_str()) == subject.as_deref());
    let Some((subject_path, subject_text)) = subject else {
        return Ok(files.into_iter().map(|(p, t)| (p.display().to_string(), t)).collect());
    };
    let subject_path = subject_path.clone();
    let subject_package = package_of(&subject_path.display().to_string(), subject_text, version)?;
    let mut kept = Vec::new();
    for (p, text) in files {
        let name = p.display().to_string();
        if p == subject_path || package_of(&name, &text, version)? != subject_package {
            kept.push((name, text));
        }
    }
    Ok(kept)
}

/// Runs the `test_*` rules of one test file: a rule passes if its value is `true`.
pub fn run_test_file(test_file: &Path, version: RegoVersion) -> Result<Vec<TestResult>, LoadFailure> {
    let fail = |error: String| LoadFailure { file: test_file.to_path_buf(), error };
    let name = test_file.display().to_string();
    let text = read_text(test_file, "test file").map_err(|e| fail(e.to_string()))?;
    let mut engine = tool_engine(version);
    for (module, module_text) in companions(test_file, version).map_err(|e| fail(format!("{e:#}")))? {
        engine.add_policy(module.clone(), module_text).map_err(|e| fail(format!("{module}: {e}")))?;
    }
    let package = engine.add_policy(name.clone(), text.clone()).map_err(|e| fail(format!("{name}: {e}")))?;
    let tests = declared(&engine, &name, identifiers(&text).into_iter().filter(|w| w.starts_with("test_")));
    let mut results = Vec::new();
    for test in tests {
        let rule = format!("{package}.{test}");
        let value = engine.eval_rule(rule.clone());
        let prints = engine.take_prints().unwrap_or_default();
        let failure = match value {
            Ok(regorus::Value::Bool(true)) => None,
            Ok(regorus::Value::Undefined) => Some("undefined".to_string()),
            Ok(v) => Some(format!("value {}", v.to_json_str().unwrap_or_else(|_| "?".to_string()).trim())),
            Err(e) => Some(format!("error: {e}")),
        };
        results.push(TestResult { file: test_file.to_path_buf(), rule, failure, prints });
    }
    Ok(results)
}

fn test(a: &TestArgs, out: &mut impl std::io::Write) -> anyhow::Result<i32> {
    let files = find_test_files(&a.paths)?;
    let (mut passed, mut failed, mut errors) = (0usize, 0usize, 0usize);
    for file in &files {
        match run_test_file(file, a.rego) {
            Err(f) => {
                errors += 1;
                writeln!(out, "ERROR {}: {}", f.file.display(), f.error)?;
            }
            Ok(results) => {
                for r in results {
                    let rule = r.rule.strip_prefix("data.").unwrap_or(&r.rule);
                    match &r.failure {
                        None => {
                            passed += 1;
                            writeln!(out, "PASS {rule} ({})", r.file.display())?;
                        }
                        Some(why) => {
                            failed += 1;
                            writeln!(out, "FAIL {rule} ({}): {why}", r.file.display())?;
                            for p in &r.prints {
                                writeln!(out, "    print: {p}")?;
                            }
                        }
                    }
                }
            }
        }
    }
    let mut summary = format!("{passed} passed, {failed} failed");
    if errors > 0 {
        summary.push_str(&format!(", {errors} test files not loaded"));
    }
    writeln!(out, "{summary}")?;
    if passed + failed == 0 && errors == 0 {
        let where_ = a.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" ");
        eprintln!("agent-warden: error: no tests found in {where_}");
        return Ok(1);
    }
    Ok(if failed == 0 && errors == 0 && passed > 0 { 0 } else { 1 })
}

// ---------------------------------------------------------------------------
// replay

/// One line of a capture file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptureLine {
    kind: String,
    request: serde_json::Value,
}

fn parse_capture_line(line: &str) -> Result<CaptureLine, String> {
    let c: CaptureLine = serde_json::from_str(line).map_err(|e| format!("not a capture record: {e}"))?;
    known_request_type(&c.kind).map_err(|e| e.to_string())?;
    if !c.request.is_object() {
        return Err("`request` is not a JSON object".to_string());
    }
    Ok(c)
}

fn replay(a: &ReplayArgs, out: &mut impl std::io::Write) -> anyhow::Result<i32> {
    let (name, text) = policy_text(a.policy.as_ref())?;
    let policy = Policy::load(&name, &text, a.rego)?;
    let file = std::fs::File::open(&a.capture)
        .map_err(|e| anyhow::anyhow!("cannot read capture {}: {e}", a.capture.display()))?;
    let (mut allowed, mut denied, mut errors, mut malformed) = (0usize, 0usize, 0usize, 0usize);
    writeln!(out, "policy: {name} (sha256 {})", policy.digest())?;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| anyhow::anyhow!("cannot read capture {}: {e}", a.capture.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let c = match parse_capture_line(&line) {
            Ok(c) => c,
            Err(e) => {
                malformed += 1;
                writeln!(out, "line {n}: malformed: {e}")?;
                continue;
            }
        };
        let d = policy.decide(&c.kind, &c.request);
        match &d {
            Decision::Allow => allowed += 1,
            Decision::Deny { .. } => denied += 1,
            Decision::Error(_) => errors += 1,
        }
        match verdict(&d) {
            (v, None) => writeln!(out, "line {n}: {}: {v}", c.kind)?,
            (v, Some(reason)) => writeln!(out, "line {n}: {}: {v}: {reason}", c.kind)?,
        }
    }
    writeln!(
        out,
        "{} requests: {allowed} allowed, {denied} denied, {errors} errors; {malformed} malformed lines",
        allowed + denied + errors
    )?;
    Ok(if malformed > 0 { 1 } else { 0 })
}

// ---------------------------------------------------------------------------
// hash

/// The digest `policy hash` prints: sha256 of the bytes, lowercase hex.
pub fn file_digest(bytes: &[u8]) -> String {
    crate::policy::sha256_hex(bytes)
}

fn hash(a: &HashArgs, out: &mut impl std::io::Write) -> anyhow::Result<i32> {
    let bytes = std::fs::read(&a.file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", a.file.display()))?;
    writeln!(out, "{}", file_digest(&bytes))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const POLICY: &str = r#"package agent_policy
import rego.v1
default CreateContainerRequest := false
CreateContainerRequest if input.container_id == "ok"
CreateContainerRequest := false if {
    input.container_id != "ok"
    print("container", input.container_id, "is not ok")
}
ExecProcessRequest := {"allowed": true, "ops": []}
ReadStreamRequest := 5
StartContainerRequest if {
    print("start is not allowed for", input.container_id)
    false
}
default CopyFileRequest := false
CopyFileRequest if path.is_beneath(input.path, "/run/kata-containers/shared/containers")
default SignalProcessRequest := false
SignalProcessRequest if not to_number(input.exec_id) == 3
WaitProcessRequest := {"allowed": false}
"#;

    #[test]
    fn decisions_match_the_policy_engine() {
        let mut with_data = Evaluator::new("t.rego", POLICY, RegoVersion::V0, Some(&json!({"x": 1}))).unwrap();
        let mut without = Evaluator::new("t.rego", POLICY, RegoVersion::V0, None).unwrap();
        let policy = Policy::load("t.rego", POLICY, RegoVersion::V0).unwrap();
        let cases = [
            ("CreateContainerRequest", json!({"container_id": "ok"})),
            ("CreateContainerRequest", json!({"container_id": "bad"})),
            ("ExecProcessRequest", json!({})),
            ("ReadStreamRequest", json!({})),
            ("StartContainerRequest", json!({"container_id": "c1"})),
            ("CopyFileRequest", json!({"path": "/run/kata-containers/shared/containers/a"})),
            ("CopyFileRequest", json!({"path": "/run/kata-containers/shared/containers/../x"})),
            ("CopyFileRequest", json!({"path": 5})),
            ("SignalProcessRequest", json!({"exec_id": "abc"})),
            ("WaitProcessRequest", json!({})),
            ("UpdateRoutesRequest", json!({})),
        ];
        for (ty, input) in cases {
            let want = policy.decide(ty, &input);
            assert_eq!(with_data.evaluate(ty, &input).decision, want, "{ty} {input}");
            assert_eq!(without.evaluate(ty, &input).decision, want, "{ty} {input}");
        }
    }

    #[test]
    fn outcome_carries_value_and_prints() {
        let mut e = Evaluator::new("t.rego", POLICY, RegoVersion::V1, None).unwrap();
        let o = e.evaluate("CreateContainerRequest", &json!({"container_id": "bad"}));
        assert_eq!(o.value, Some(json!(false)));
        assert!(o.prints.iter().any(|p| p.contains("container bad is not ok")), "{:?}", o.prints);
        let o = e.evaluate("ExecProcessRequest", &json!({}));
        assert_eq!(o.value, Some(json!({"allowed": true, "ops": []})));
        let o = e.evaluate("UpdateRoutesRequest", &json!({}));
        assert_eq!(o.value, None);
    }

    #[test]
    fn data_document_is_visible_to_the_policy() {
        let src = "package agent_policy\nimport rego.v1\ndefault ExecProcessRequest := false\n\
                   ExecProcessRequest if input.container_id in data.pstate.containers\n";
        let data = json!({"pstate": {"containers": ["c1"]}});
        let mut e = Evaluator::new("p.rego", src, RegoVersion::V0, Some(&data)).unwrap();
        assert_eq!(e.evaluate("ExecProcessRequest", &json!({"container_id": "c1"})).decision, Decision::Allow);
        assert!(!e.evaluate("ExecProcessRequest", &json!({"container_id": "c2"})).decision.is_allowed());
        assert!(Evaluator::new("p.rego", src, RegoVersion::V0, Some(&json!([1]))).is_err());
    }

    #[test]
    fn coverage_lists_defined_undefined_and_misnamed_rules() {
        let src = "package agent_policy\nimport rego.v1\n# ExecProcessRequest is not defined here\n\
                   default CreateContainerRequest := true\nStartContainerRequest if input.x\n\
                   CreateContainerRequests := true\nhelper := 1\n";
        let c = coverage("p.rego", src, RegoVersion::V0).unwrap();
        assert_eq!(c.defined, vec!["CreateContainerRequest", "StartContainerRequest"]);
        assert_eq!(c.undefined.len(), methods::table().policy_request_types().len() - 2);
        assert!(c.undefined.contains(&"ExecProcessRequest".to_string()));
        assert_eq!(c.unknown, vec!["CreateContainerRequests"]);
    }

    #[test]
    fn coverage_reports_compile_errors() {
        let src = "package agent_policy\nimport rego.v1\nCreateContainerRequest if x == 1\n";
        let e = coverage("p.rego", src, RegoVersion::V0).unwrap_err().to_string();
        assert!(e.contains("does not compile"), "{e}");
    }

    #[test]
    fn identifiers_are_found_once_in_order() {
        assert_eq!(identifiers("test_a if { x.test_b == 1e5 }\ntest_a"), vec!["test_a", "if", "x", "test_b"]);
    }

    #[test]
    fn capture_lines_are_checked() {
        assert!(parse_capture_line(r#"{"kind": "CreateContainerRequest", "request": {}}"#).is_ok());
        for bad in [
            "not json",
            r#"{"kind": "NoSuchRequest", "request": {}}"#,
            r#"{"kind": "CreateContainerRequest"}"#,
            r#"{"kind": "CreateContainerRequest", "request": 5}"#,
            r#"{"kind": "CreateContainerRequest", "request": {}, "extra": 1}"#,
            r#"["CreateContainerRequest", {}]"#,
        ] {
            assert!(parse_capture_line(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn input_warning_names_a_misspelt_key() {
        assert_eq!(input_warning("CreateContainerRequest", &json!({"container_id": "c"})), None);
        let w = input_warning("CreateContainerRequest", &json!({"containerid": "c"})).unwrap();
        assert!(w.contains("containerid"), "{w}");
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(file_digest(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
