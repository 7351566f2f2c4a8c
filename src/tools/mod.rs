//! Policy tools: `agent-warden policy check|eval|test|replay|hash`.
//!
//! Offline helpers for policy authors. `eval` and `replay` load the policy (or a legacy
//! endpoint list) from the same sources as `serve` and decide through the same function,
//! [`Guard::decide`]: the policy's decision and serve's rules on top of it
//! (AllowRequestsFailingPolicy, endpoint-list answers, blanked reads, SetPolicy).
//! `check` loads with [`Policy::load`]. `test` loads several modules at once, which
//! `Policy` cannot, so it uses an engine from [`crate::policy::engine::new_engine`].
//! docs/POLICY.md describes each command and its output.

pub mod demo;
pub mod initdata;

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use regorus::Engine;

use crate::policy::sources::{read_text, Origin, PolicySources};
use crate::policy::{Decision, LoadOptions, Policy, RegoVersion};
use crate::serve::judge::{Action, Guard, Judgement};
use crate::wire::encode;
use crate::wire::input::InputShape;
use crate::wire::methods;

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
    /// Rego version of the policy (v1: today's kata-agent; v0: kata-agents with regorus 0.2.x).
    #[arg(long, value_enum, default_value_t = RegoVersion::default())]
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
    #[command(flatten)]
    pub source: PolicyChoice,
}

/// Which policy `eval` and `replay` decide with: a policy file, a legacy endpoint list,
/// or the embedded default, read as `serve` reads them.
#[derive(Debug, Args)]
pub struct PolicyChoice {
    /// Policy file [default: the embedded coco-default policy].
    #[arg(long, conflicts_with = "endpoints")]
    pub policy: Option<PathBuf>,
    /// A legacy endpoint list (TOML `[endpoints] allowed = [...]`) instead of a policy,
    /// decided and answered as `serve --endpoints` does.
    #[arg(long)]
    pub endpoints: Option<PathBuf>,
    /// Rego version of the policy (v1: today's kata-agent; v0: kata-agents with regorus 0.2.x).
    #[arg(long, value_enum, default_value_t = RegoVersion::default())]
    pub rego: RegoVersion,
}

/// Flags of `policy test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Test files, or directories searched (recursively) for *_test.rego files.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Rego version of the test files and the policies they are loaded with (v1: today's
    /// kata-agent; v0: kata-agents with regorus 0.2.x).
    #[arg(long, value_enum, default_value_t = RegoVersion::default())]
    pub rego: RegoVersion,
}

/// Flags of `policy replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The capture: one JSON object per line, {"kind": "<RequestType>", "request": <input>}.
    pub capture: PathBuf,
    #[command(flatten)]
    pub source: PolicyChoice,
}

/// Flags of `policy hash`.
#[derive(Debug, Args)]
pub struct HashArgs {
    /// An initdata document (TOML, gzip, or block-device image) or a plain policy file.
    pub file: PathBuf,
    /// Print only the digest in hex (scripts), not the report with the TEE forms.
    #[arg(long)]
    pub hex: bool,
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

fn read_json(path: &Path, what: &str) -> anyhow::Result<serde_json::Value> {
    let text = read_text(path, what)?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{what} {} is not valid JSON: {e}", path.display()))
}

/// Identifiers in `text` (candidate rule names), in order of first appearance.
fn identifiers(text: &str) -> Vec<&str> {
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

// ---------------------------------------------------------------------------
// check

/// The rule kata-agent (and agent-warden) reads once at load: audit mode.
const PERMISSIVE_RULE: &str = "AllowRequestsFailingPolicy";

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

fn check(a: &CheckArgs, out: &mut impl std::io::Write) -> anyhow::Result<i32> {
    let name = a.file.display().to_string();
    let text = read_text(&a.file, "policy")?;
    let c = coverage(&name, &text, a.rego)?;
    let sha = crate::attestation::to_hex(&crate::attestation::digest(
        crate::attestation::Algorithm::Sha256,
        text.as_bytes(),
    ));
    writeln!(
        out,
        "{name}: ok (Rego {}, package agent_policy, sha256 {sha})",
        RegoVersion::name(a.rego)
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

// ---------------------------------------------------------------------------
// eval

/// A [`Guard`] that decides as `serve` does with the policy (or endpoint list) named on
/// the command line, or the embedded default.
fn serve_guard(choice: &PolicyChoice) -> anyhow::Result<Guard> {
    let loaded = crate::policy::sources::load(
        &PolicySources {
            policy_file: choice.policy.clone(),
            endpoint_list: choice.endpoints.clone(),
            rego: choice.rego,
            ..PolicySources::default()
        },
        // The author's tools show what the policy printed for a denial.
        LoadOptions {
            deny_message: crate::policy::DenyMessage::Full,
            ..LoadOptions::default()
        },
    )?;
    let endpoint_list = matches!(loaded.origin, Origin::EndpointList(_));
    Ok(Guard::new(loaded.policy, InputShape::Current).with_endpoint_list(endpoint_list))
}

/// What `serve` does with a request, in words: `forward`, `forward, answer data
/// blanked`, or the status it answers with.
fn serve_action(j: &Judgement) -> String {
    match &j.action {
        Action::Forward {
            blank_data: true, ..
        } => "forward, answer data blanked".to_string(),
        Action::Forward { .. } => "forward".to_string(),
        Action::Answer { code, message } if message.is_empty() => format!("answer {code:?}"),
        Action::Answer { code, message } => format!("answer {code:?}: {message}"),
    }
}

/// One evaluated request.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// What `serve` would answer ([`Policy::decide`]).
    pub decision: Decision,
    /// The state operations an allowing result asks for (a JSON patch), if any.
    pub ops: Option<serde_json::Value>,
    /// The rule's value; `None` when undefined or when the evaluation failed.
    pub value: Option<serde_json::Value>,
    /// What the policy printed during the evaluation.
    pub prints: Vec<String>,
}

/// Sets the policy state (`data.pstate`) from a data document `{"pstate": {...}}`.
/// agent-warden's policies see no other data, so no other key is accepted.
pub fn seed_state(policy: &Policy, data: &serde_json::Value) -> anyhow::Result<()> {
    let Some(obj) = data.as_object() else {
        anyhow::bail!("the data document must be a JSON object like {{\"pstate\": {{...}}}}");
    };
    if let Some(other) = obj.keys().find(|k| *k != "pstate") {
        anyhow::bail!(
            "the data document has a key {other:?}: agent-warden policies only see data.pstate (the policy state), \
             so the document may only have a \"pstate\" key"
        );
    }
    if let Some(state) = obj.get("pstate") {
        if !state.is_object() {
            anyhow::bail!("data.pstate must be a JSON object");
        }
        let ops: crate::policy::StateOps = serde_json::from_value(
            serde_json::json!([{"op": "add", "path": "/pstate", "value": state}]),
        )?;
        policy
            .apply_ops(&ops)
            .map_err(|e| anyhow::anyhow!("cannot set the policy state: {e}"))?;
    }
    Ok(())
}

/// Decides one request with `policy` as `serve` would, and also returns the rule's
/// raw value and what the policy printed. Nothing is applied to the policy state.
pub fn evaluate(policy: &Policy, request_type: &str, input: &serde_json::Value) -> Outcome {
    let (decision, ops) = policy.decide_with_ops(request_type, input);
    let (value, prints) = match serde_json::from_value::<regorus::Value>(input.clone()) {
        Ok(v) => match policy.eval(request_type, v) {
            Ok((value, prints)) => {
                let value = value.filter(|v| *v != regorus::Value::Undefined);
                (value.and_then(|v| serde_json::to_value(v).ok()), prints)
            }
            Err(_) => (None, Vec::new()),
        },
        Err(_) => (None, Vec::new()),
    };
    let ops = ops.and_then(|o| serde_json::to_value(o).ok());
    Outcome {
        decision,
        ops,
        value,
        prints,
    }
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
    if methods::table()
        .policy_request_types()
        .contains(&request_type)
    {
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
        match encode::from_policy_input(desc, input, shape) {
            Ok(_) => return None,
            Err(e) if shape == InputShape::Current => first_error = Some(e.to_string()),
            Err(_) => {}
        }
    }
    first_error
}

/// What `policy eval` prints (as JSON, keys in this order).
#[derive(Debug, serde::Serialize)]
struct EvalReport<'a> {
    #[serde(rename = "type")]
    request_type: &'a str,
    policy: &'a str,
    policy_sha256: &'a str,
    /// "allow", "deny" or "error".
    decision: &'a str,
    allowed: bool,
    /// Why it was denied (or the engine error); null when allowed.
    reason: Option<&'a str>,
    /// What `serve` does with it: `forward`, `forward, answer data blanked`, or
    /// `answer <CODE>: <message>`.
    serve: String,
    /// `AllowRequestsFailingPolicy` when that rule turned a denial into forwarding.
    overridden_by: Option<&'static str>,
    /// The rule's value; null when undefined.
    value: Option<&'a serde_json::Value>,
    /// State operations an allowing result asks for; null when none.
    ops: Option<&'a serde_json::Value>,
    prints: &'a [String],
}

fn eval(a: &EvalArgs, out: &mut impl std::io::Write) -> anyhow::Result<i32> {
    known_request_type(&a.request_type)?;
    let input = read_json(&a.input, "input")?;
    let guard = serve_guard(&a.source)?;
    let policy = guard.policy();
    let name = policy.source_name().to_string();
    if let Some(path) = &a.data {
        seed_state(&policy, &read_json(path, "data document")?)
            .map_err(|e| anyhow::anyhow!("data document {}: {e:#}", path.display()))?;
    }
    if let Some(w) = input_warning(&a.request_type, &input) {
        eprintln!(
            "agent-warden: warning: the input is not a {} kata-agent would send: {w}",
            a.request_type
        );
    }
    let method = methods::table()
        .by_request_type(&a.request_type)
        .ok_or_else(|| anyhow::anyhow!("unknown request type {:?}", a.request_type))?;
    let o = evaluate(&policy, &a.request_type, &input);
    let judged = guard.decide(method, &input, 0, 0);
    let (decision, reason) = verdict(&judged.decision);
    let report = EvalReport {
        request_type: &a.request_type,
        policy: &name,
        policy_sha256: policy.digest(),
        decision: if judged.overridden { "allow" } else { decision },
        allowed: judged.decision.is_allowed() || judged.overridden,
        reason,
        serve: serve_action(&judged),
        overridden_by: judged.overridden.then_some(PERMISSIVE_RULE),
        value: o.value.as_ref(),
        ops: o.ops.as_ref(),
        prints: &o.prints,
    };
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
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with("_test.rego"))
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
            let hidden = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
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
    crate::policy::engine::new_engine(version, crate::policy::DEFAULT_EVAL_TIMEOUT)
        .add_policy(name.to_string(), text.to_string())
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))
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
        if p.is_file() && is_rego(&p) && !is_test_file(&p) && p.file_name() != test_file.file_name()
        {
            let text = read_text(&p, "policy")?;
            files.push((p, text));
        }
    }
    let subject = test_file
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix("_test.rego"))
        .map(|stem| format!("{stem}.rego"));
    let subject = files
        .iter()
        .find(|(p, _)| p.file_name().and_then(|n| n.to_str()) == subject.as_deref());
    let Some((subject_path, subject_text)) = subject else {
        return Ok(files
            .into_iter()
            .map(|(p, t)| (p.display().to_string(), t))
            .collect());
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
pub fn run_test_file(
    test_file: &Path,
    version: RegoVersion,
) -> Result<Vec<TestResult>, LoadFailure> {
    let fail = |error: String| LoadFailure {
        file: test_file.to_path_buf(),
        error,
    };
    let name = test_file.display().to_string();
    let text = read_text(test_file, "test file").map_err(|e| fail(e.to_string()))?;
    let mut engine =
        crate::policy::engine::new_engine(version, crate::policy::DEFAULT_EVAL_TIMEOUT);
    for (module, module_text) in
        companions(test_file, version).map_err(|e| fail(format!("{e:#}")))?
    {
        engine
            .add_policy(module.clone(), module_text)
            .map_err(|e| fail(format!("{module}: {e}")))?;
    }
    let package = engine
        .add_policy(name.clone(), text.clone())
        .map_err(|e| fail(format!("{name}: {e}")))?;
    let tests = declared(
        &engine,
        &name,
        identifiers(&text)
            .into_iter()
            .filter(|w| w.starts_with("test_")),
    );
    let mut results = Vec::new();
    for test in tests {
        let rule = format!("{package}.{test}");
        let value = engine.eval_rule(rule.clone());
        let prints = engine.take_prints().unwrap_or_default();
        let failure = match value {
            Ok(regorus::Value::Bool(true)) => None,
            Ok(regorus::Value::Undefined) => {
                Some("undefined (an expression in its body is false or undefined)".to_string())
            }
            Ok(v) => Some(format!(
                "value {}",
                v.to_json_str().unwrap_or_else(|_| "?".to_string()).trim()
            )),
            Err(e) => Some(format!("error: {e}")),
        };
        results.push(TestResult {
            file: test_file.to_path_buf(),
            rule,
            failure,
            prints,
        });
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
        let where_ = a
            .paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ");
        eprintln!("agent-warden: error: no tests found in {where_}");
        return Ok(1);
    }
    Ok(if failed == 0 && errors == 0 && passed > 0 {
        0
    } else {
        1
    })
}

// ---------------------------------------------------------------------------
// replay

/// One line of a capture file (see `audit::Capture`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptureLine {
    kind: String,
    request: serde_json::Value,
}

fn parse_capture_line(line: &str) -> Result<CaptureLine, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    if !v.is_object() {
        return Err("not a JSON object".to_string());
    }
    let c: CaptureLine =
        serde_json::from_value(v).map_err(|e| format!("not a capture record: {e}"))?;
    known_request_type(&c.kind).map_err(|e| e.to_string())?;
    if !c.request.is_object() {
        return Err("`request` is not a JSON object".to_string());
    }
    Ok(c)
}

/// Counts of a replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    pub allowed: usize,
    pub denied: usize,
    pub errors: usize,
    pub malformed: usize,
}

fn replay(a: &ReplayArgs, out: &mut impl std::io::Write) -> anyhow::Result<i32> {
    let guard = serve_guard(&a.source)?;
    let name = guard.policy().source_name().to_string();
    let file = std::fs::File::open(&a.capture)
        .map_err(|e| anyhow::anyhow!("cannot read capture {}: {e}", a.capture.display()))?;
    let mut sum = ReplaySummary::default();
    writeln!(out, "policy: {name} (sha256 {})", guard.policy().digest())?;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line =
            line.map_err(|e| anyhow::anyhow!("cannot read capture {}: {e}", a.capture.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let c = match parse_capture_line(&line) {
            Ok(c) => c,
            Err(e) => {
                sum.malformed += 1;
                writeln!(out, "line {n}: malformed: {e}")?;
                continue;
            }
        };
        let Some(method) = methods::table().by_request_type(&c.kind) else {
            sum.malformed += 1;
            writeln!(
                out,
                "line {n}: malformed: unknown request type {:?}",
                c.kind
            )?;
            continue;
        };
        let judged = guard.decide(method, &c.request, 0, n as u32);
        // As `serve` does once the agent has answered: a forwarded request's state
        // operations are applied (the capture does not say whether the agent
        // succeeded; it is assumed to have). An allowed SetPolicy has replaced the
        // policy for the lines after it.
        let state_note = match &judged.action {
            Action::Forward {
                ops: Some((policy, ops)),
                ..
            } => match policy.apply_ops(ops) {
                Ok(()) if ops.0.len() == 1 => " (state: 1 operation applied)".to_string(),
                Ok(()) => format!(" (state: {} operations applied)", ops.0.len()),
                Err(e) => format!(" (state not changed: {e})"),
            },
            _ => String::new(),
        };
        match &judged.decision {
            _ if judged.overridden => sum.allowed += 1,
            Decision::Allow => sum.allowed += 1,
            Decision::Deny { .. } => sum.denied += 1,
            Decision::Error(_) => sum.errors += 1,
        }
        match verdict(&judged.decision) {
            (v, Some(reason)) if judged.overridden => writeln!(
                out,
                "line {n}: {}: allow ({PERMISSIVE_RULE}; the policy said {v}: {reason}){state_note}",
                c.kind
            )?,
            (v, None) => writeln!(out, "line {n}: {}: {v}{state_note}", c.kind)?,
            (v, Some(reason)) => writeln!(out, "line {n}: {}: {v}: {reason}", c.kind)?,
        }
    }
    writeln!(
        out,
        "{} requests: {} allowed, {} denied, {} errors; {} malformed lines",
        sum.allowed + sum.denied + sum.errors,
        sum.allowed,
        sum.denied,
        sum.errors,
        sum.malformed
    )?;
    Ok(if sum.malformed > 0 { 1 } else { 0 })
}

// ---------------------------------------------------------------------------
// hash

/// `policy hash FILE`: the digest attestation should report for FILE (the initdata
/// digest, or sha256 of a plain policy), with the SNP / TDX / QEMU forms; `--hex` prints
/// the bare hex digest.
fn hash(a: &HashArgs, out: &mut impl std::io::Write) -> anyhow::Result<i32> {
    let doc = crate::attestation::load_measured_document(&a.file)?;
    if a.hex {
        writeln!(out, "{}", crate::attestation::to_hex(&doc.digest()))?;
    } else {
        write!(out, "{}", crate::attestation::render_report(&a.file, &doc))?;
    }
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
ExecProcessRequest := {"allowed": true, "ops": [{"op": "add", "path": "/pstate/x", "value": 1}]}
ReadStreamRequest := 5
default CopyFileRequest := false
CopyFileRequest if path.is_beneath(input.path, "/run/kata-containers/shared/containers")
default SignalProcessRequest := false
SignalProcessRequest if input.container_id in object.keys(data.pstate.containers)
"#;

    fn load(version: RegoVersion) -> Policy {
        Policy::load("t.rego", POLICY, version).unwrap()
    }

    #[test]
    fn outcome_is_the_policy_decision_with_value_prints_and_ops() {
        for version in [RegoVersion::V0, RegoVersion::V1] {
            let p = load(version);
            for (ty, input) in [
                ("CreateContainerRequest", json!({"container_id": "ok"})),
                ("CreateContainerRequest", json!({"container_id": "bad"})),
                ("ReadStreamRequest", json!({})),
                (
                    "CopyFileRequest",
                    json!({"path": "/run/kata-containers/shared/containers/../x"}),
                ),
                ("CopyFileRequest", json!({"path": 5})),
                ("UpdateRoutesRequest", json!({})),
            ] {
                assert_eq!(
                    evaluate(&p, ty, &input).decision,
                    p.decide(ty, &input),
                    "{ty} {input}"
                );
            }
            let o = evaluate(
                &p,
                "CreateContainerRequest",
                &json!({"container_id": "bad"}),
            );
            assert_eq!(o.value, Some(json!(false)));
            assert!(
                o.prints
                    .iter()
                    .any(|l| l.contains("container bad is not ok")),
                "{:?}",
                o.prints
            );
            assert!(
                matches!(&o.decision, Decision::Deny { reason, .. } if reason == "data.agent_policy.CreateContainerRequest is false")
            );
            let o = evaluate(&p, "ExecProcessRequest", &json!({}));
            assert_eq!(o.decision, Decision::Allow);
            assert_eq!(
                o.ops,
                Some(json!([{"op": "add", "path": "/pstate/x", "value": 1}]))
            );
            assert_eq!(evaluate(&p, "UpdateRoutesRequest", &json!({})).value, None);
            // Evaluating applies nothing.
            assert_eq!(p.state(), json!({}));
        }
    }

    #[test]
    fn data_document_becomes_the_policy_state() {
        let p = load(RegoVersion::V0);
        let input = json!({"container_id": "c1"});
        assert!(!evaluate(&p, "SignalProcessRequest", &input)
            .decision
            .is_allowed());
        seed_state(&p, &json!({"pstate": {"containers": {"c1": true}}})).unwrap();
        assert_eq!(
            evaluate(&p, "SignalProcessRequest", &input).decision,
            Decision::Allow
        );
        assert!(
            !evaluate(&p, "SignalProcessRequest", &json!({"container_id": "c2"}))
                .decision
                .is_allowed()
        );
        for bad in [json!([1]), json!({"other": {}}), json!({"pstate": 3})] {
            assert!(seed_state(&p, &bad).is_err(), "{bad}");
        }
    }

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

    #[test]
    fn identifiers_are_found_once_in_order() {
        assert_eq!(
            identifiers("test_a if { x.test_b == 1e5 }\ntest_a"),
            vec!["test_a", "if", "x", "test_b"]
        );
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
        assert_eq!(
            input_warning("CreateContainerRequest", &json!({"container_id": "c"})),
            None
        );
        let w = input_warning("CreateContainerRequest", &json!({"containerid": "c"})).unwrap();
        assert!(w.contains("containerid"), "{w}");
    }
}
