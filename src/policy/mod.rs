//! The policy: a Rego module (package `agent_policy`) evaluated with regorus.
//!
//! From outside it is three verbs, like regorus itself: [`Policy::load`] parses and
//! checks a policy, [`Policy::decide`] answers one request with a [`Decision`], and
//! [`Policy::digest`] names what was loaded. The relay never sees regorus types.
//!
//! A request of type `T` is decided by `data.agent_policy.T`: `true`, or an object
//! whose `allowed` is `true`, allows; `false`, an undefined rule, or anything else
//! denies (fail closed). The reason for a denial is where the evaluation failed
//! ([`explain`]: the rule, the failing expression as file:line); how much of it (or of
//! the policy's prints) the host gets is [`DenyMessage`]'s choice.
//!
//! Of the wire, the policy reads one thing: the method table's request types
//! (`wire::methods::table().policy_request_types()`), which are its rule names. At
//! load the fast path is compiled ahead for exactly those rules, and [`sources`] checks
//! a legacy endpoint list against them. Protobuf, frames and sockets stay outside.

pub mod compiled;
pub mod constant;
pub mod engine;
pub mod explain;
pub mod pathext;
pub mod rewrite;
pub mod sources;
pub mod trust;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use regorus::Engine;

pub use engine::RegoVersion;

/// Longest denial reason sent to the host; the full text goes to the log.
pub const MAX_REASON: usize = 256;

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow,
    /// Denied. `reason` is where the evaluation failed, from the evaluation itself
    /// ([`explain`]: the request type's rule, the failing expression as file:line and its
    /// policy text, no input values); `detail` is everything the policy printed. Loggers
    /// get both; the host gets what [`DenyMessage::host_text`] allows.
    Deny {
        reason: String,
        detail: String,
    },
    /// The engine failed; the request is denied.
    Error(String),
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// A failure to load a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {source_name}: {message}")]
    Invalid {
        source_name: String,
        message: String,
    },
}

/// A failure to change the policy state (`data.pstate`).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("policy state lock poisoned")]
    Poisoned,
    #[error("cannot apply policy state operations: {0}")]
    Patch(#[source] json_patch::PatchError),
}

/// A result's `ops` that are not state operations the policy may ask for.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("policy ops: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("policy ops are not a JSON patch: {0}")]
    NotAPatch(#[source] serde_json::Error),
    #[error("policy ops may only change /pstate, not {path}")]
    OutsideState { path: String },
}

/// A failure of the engine to evaluate a rule.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("policy engine lock poisoned")]
    Poisoned,
    /// The policy state could not be given to the engine as `data.pstate`.
    #[error("policy state: {0}")]
    State(#[source] anyhow::Error),
    /// regorus failed (a runtime error, the time limit, ...); its own text.
    #[error(transparent)]
    Engine(anyhow::Error),
}

/// A request's JSON that the engine cannot take as input.
#[derive(Debug, thiserror::Error)]
#[error("cannot convert input for the engine: {0}")]
pub struct InputError(#[source] serde_json::Error);

/// The state generation of an engine that has not been prepared yet.
const UNPREPARED: u64 = u64::MAX;

/// regorus's `eval_rule` error for a path that names no rule.
/// The rule that says what the decision log leaves out of a request's input.
pub const LOG_MASK: &str = "log_mask";

const NOT_A_RULE: &str = "not a valid rule path";

/// A loaded, checked policy.
pub struct Policy {
    /// The engine, and the state generation its `data.pstate` reflects.
    engine: Mutex<(Engine, u64)>,
    /// Bumped by every [`Policy::apply_ops`]; the engine's data is refreshed (which makes
    /// regorus re-prepare the policy) only when it changed.
    state_gen: AtomicU64,
    digest: String,
    source_name: String,
    text: String,
    version: RegoVersion,
    /// `data.agent_policy.AllowRequestsFailingPolicy` (evaluated with input `{}` at load).
    permissive: bool,
    /// Kata's stateful policies keep their state under `data.pstate`; it starts as `{}`
    /// and changes only through [`Policy::apply_ops`]. It belongs to this policy: a
    /// replaced policy starts over.
    state: Mutex<serde_json::Value>,
    /// The compiled fast path, built at load (`None` inside: not available).
    compiled: std::sync::OnceLock<Option<crate::policy::compiled::Compiled>>,
    options: LoadOptions,
    /// How many allows came from the compiled fast path.
    fast_allows: AtomicU64,
    /// How many denials came from the compiled fast path.
    fast_denials: AtomicU64,
    /// How many allows came from constant rules.
    constant_allows: AtomicU64,
    /// Rules whose value is a bool whatever the request (see [`crate::policy::constant`]).
    constant: std::collections::HashMap<String, bool>,
    /// Whether the policy defines `log_mask` (what the decision log leaves out).
    log_mask: bool,
}

/// RFC 6902 operations a policy asked for (on `/pstate/...`), to apply once the agent
/// has answered the request successfully.
pub type StateOps = json_patch::Patch;

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("source", &self.source_name)
            .field("digest", &self.digest)
            .finish()
    }
}

/// Default time limit of one policy evaluation. genpolicy's CreateContainerRequest takes
/// a few ms natively; the limit only stops a policy (or an input crafted against it)
/// that would hold the connection for good.
pub const DEFAULT_EVAL_TIMEOUT: Duration = Duration::from_secs(2);

/// What a denial says to the host (`[policy] deny_message`). The decision log always has
/// the whole reason (where the evaluation failed) and, at debug level, the prints.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum DenyMessage {
    /// Where the evaluation failed: the request type's rule, the failing expression as
    /// file:line and its policy text (no input values; see [`explain`]).
    #[default]
    Reason,
    /// kata-agent's text: what the policy printed (the last lines, ≤ 256 bytes), which
    /// may hold input values.
    Full,
    /// The status code only (PERMISSION_DENIED), with an empty message.
    Code,
}

impl DenyMessage {
    /// What the host is told of a denial whose reason is `reason` and whose prints are
    /// `detail`: `None` for the status code alone.
    pub fn host_text(self, reason: &str, detail: &str) -> Option<String> {
        match self {
            DenyMessage::Code => None,
            DenyMessage::Reason => Some(reason.to_string()),
            DenyMessage::Full => {
                let lines: Vec<String> = detail.lines().map(str::to_string).collect();
                let printed = shorten(&lines);
                Some(if printed.is_empty() {
                    reason.to_string()
                } else {
                    printed
                })
            }
        }
    }
}

/// How a policy is loaded, besides its text and Rego version. Passed at load and kept
/// by the policy (a policy replaced by SetPolicy is loaded with the same options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Time limit of one evaluation (`[limits] eval_timeout_ms`). An evaluation that runs
    /// over fails closed: the request gets INTERNAL `<T>: internal error: … time limit …`
    /// and never reaches the agent.
    pub eval_timeout: Duration,
    /// The compiled fast path (see [`compiled`]) and constant rules (see [`constant`]).
    /// Decisions are the same either way, so turning them off exists for measurements
    /// and as an escape hatch.
    pub fast_path: bool,
    /// What the host is told of a denial (every denial is explained by the interpreter
    /// whatever this says: the decision log gets the whole reason).
    pub deny_message: DenyMessage,
    /// Time limit of a denial's explanation; `None`: [`explain_budget`] of
    /// `eval_timeout`. (Tests on slow debug builds raise it.)
    pub explain_timeout: Option<Duration>,
}

impl Default for LoadOptions {
    fn default() -> LoadOptions {
        LoadOptions {
            eval_timeout: DEFAULT_EVAL_TIMEOUT,
            fast_path: true,
            deny_message: DenyMessage::Reason,
            explain_timeout: None,
        }
    }
}

/// sha256 of the policy text, lowercase hex: the digest attestation expects of a plain
/// policy ([`crate::attestation::digest`]).
fn sha256_hex(bytes: &[u8]) -> String {
    use crate::attestation::{digest, to_hex, Algorithm};
    to_hex(&digest(Algorithm::Sha256, bytes))
}

impl Policy {
    /// [`Policy::load_with`] with the default [`LoadOptions`].
    pub fn load(
        source_name: &str,
        text: &str,
        version: RegoVersion,
    ) -> Result<Policy, PolicyError> {
        Policy::load_with(source_name, text, version, LoadOptions::default())
    }

    /// Parses `text` (named `source_name` in messages) as Rego `version` and checks that
    /// it declares `package agent_policy`. With the fast path on, also compiles it
    /// (see [`compiled`]) so that no request pays for that.
    pub fn load_with(
        source_name: &str,
        text: &str,
        version: RegoVersion,
        options: LoadOptions,
    ) -> Result<Policy, PolicyError> {
        // The compiled fast path is built beside the interpreter (a second parse, of the
        // print-free text, and a program per request type), on a thread of its own: on
        // two cores, load takes about as long as without it.
        let (loaded, compiled) = std::thread::scope(|scope| {
            let ahead = options.fast_path.then(|| {
                std::thread::Builder::new()
                    .name("policy-compile".into())
                    .spawn_scoped(scope, || {
                        let compiled = compiled::Compiled::build(
                            source_name,
                            text,
                            version,
                            options.eval_timeout,
                        );
                        if let Some(c) = &compiled {
                            c.compile_ahead(&crate::wire::methods::table().policy_request_types());
                        }
                        compiled
                    })
            });
            let loaded = Policy::load_interpreter(source_name, text, version, options);
            // A thread that could not start or failed leaves the fast path to be built
            // on first use.
            let compiled = match ahead {
                Some(Ok(handle)) => handle.join().ok(),
                _ => None,
            };
            (loaded, compiled)
        });
        let policy = loaded?;
        // Already set (to none) when `trust` keeps the policy on the interpreter.
        if let Some(c) = compiled {
            let _ = policy.compiled.set(c);
        }
        Ok(policy)
    }

    /// [`Policy::load_with`] without the compiled fast path: parse, check, find the
    /// constant rules, and prepare the interpreter.
    fn load_interpreter(
        source_name: &str,
        text: &str,
        version: RegoVersion,
        options: LoadOptions,
    ) -> Result<Policy, PolicyError> {
        let invalid = |message: String| PolicyError::Invalid {
            source_name: source_name.to_string(),
            message,
        };
        let mut engine = engine::new_engine(version, options.eval_timeout);
        let package = match engine.add_policy(source_name.to_string(), text.to_string()) {
            Ok(p) => p,
            Err(e) => {
                let other = version.other();
                let hint = if engine::new_engine(other, options.eval_timeout)
                    .add_policy(source_name.to_string(), text.to_string())
                    .is_ok()
                {
                    format!(
                        " (it does parse as Rego {0}: set `rego = \"{0}\"` / `--rego {0}`)",
                        other.name()
                    )
                } else {
                    String::new()
                };
                return Err(invalid(format!(
                    "failed to parse as Rego {}: {e}{hint}",
                    version.name()
                )));
            }
        };
        if package != "data.agent_policy" {
            return Err(invalid(format!(
                "declares {package}, but agent-warden needs `package agent_policy`"
            )));
        }
        let constant = crate::policy::constant::constant_rules(&mut engine);
        let log_mask = crate::policy::constant::defines(&mut engine, LOG_MASK);
        // A policy whose evaluation can fail where the VM would not say so stays on the
        // interpreter (see `trust`): checked here, on the tenant's text (prints
        // included), beside the compile thread; no fast path is ever set for it.
        let compiled = std::sync::OnceLock::new();
        let unproven = options
            .fast_path
            .then(|| trust::first_unproven(engine.get_modules()))
            .flatten();
        if let Some(at) = unproven {
            tracing::info!(
                source = source_name,
                at = %at,
                "compiled fast path off: arithmetic on a value not known to be a number (or a set operation on one not known to be a set) can fail the evaluation, which the compiled programs would not report; the interpreter decides every request"
            );
            let _ = compiled.set(None);
        }
        let mut policy = Policy {
            // Not prepared yet: the first evaluation (below, at load) prepares it.
            engine: Mutex::new((engine, UNPREPARED)),
            state_gen: AtomicU64::new(0),
            digest: sha256_hex(text.as_bytes()),
            source_name: source_name.to_string(),
            text: text.to_string(),
            version,
            permissive: false,
            state: Mutex::new(serde_json::json!({})),
            compiled,
            options,
            fast_allows: AtomicU64::new(0),
            fast_denials: AtomicU64::new(0),
            constant_allows: AtomicU64::new(0),
            constant,
            log_mask,
        };
        // Evaluating once at load also prepares the engine, so the first real request
        // does not pay for it.
        policy.permissive =
            match policy.eval("AllowRequestsFailingPolicy", regorus::Value::new_object()) {
                Ok((Some(regorus::Value::Bool(b)), _)) => b,
                Ok(_) => false,
                Err(e) => return Err(invalid(format!("does not compile: {e}"))),
            };
        if policy.permissive {
            tracing::warn!(
                source = source_name,
                "AllowRequestsFailingPolicy is true: denials will be logged and allowed"
            );
        }
        Ok(policy)
    }

    /// The options the policy was loaded with.
    pub fn options(&self) -> LoadOptions {
        self.options
    }

    /// The Rego version the policy was loaded as.
    pub fn version(&self) -> RegoVersion {
        self.version
    }

    /// True when the policy sets `AllowRequestsFailingPolicy` (audit mode).
    pub fn is_permissive(&self) -> bool {
        self.permissive
    }

    /// The current `data.pstate` document.
    pub fn state(&self) -> serde_json::Value {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Applies state operations (paths under `/pstate`) from an earlier decision.
    pub fn apply_ops(&self, ops: &StateOps) -> Result<(), StateError> {
        let mut state = self.state.lock().map_err(|_| StateError::Poisoned)?;
        *state = patched(&state, ops).map_err(StateError::Patch)?;
        self.state_gen.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// sha256 of the policy text, lowercase hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Where the policy came from (file name, "embedded default", ...).
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// The policy text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// This policy without the compiled fast path and constant rules: every decision by
    /// the interpreter.
    pub fn without_fast_path(mut self) -> Policy {
        self.options.fast_path = false;
        self
    }

    /// How many allows the compiled fast path has given.
    pub fn fast_allows(&self) -> u64 {
        self.fast_allows.load(Ordering::Relaxed)
    }

    /// How many denials the compiled fast path has given.
    pub fn fast_denials(&self) -> u64 {
        self.fast_denials.load(Ordering::Relaxed)
    }

    /// How many allows came from constant rules (see [`crate::policy::constant`]) without any
    /// evaluation.
    pub fn constant_allows(&self) -> u64 {
        self.constant_allows.load(Ordering::Relaxed)
    }

    /// The compiled fast path (built at load; here only if that could not be done).
    fn compiled(&self) -> Option<&crate::policy::compiled::Compiled> {
        if !self.options.fast_path {
            return None;
        }
        self.compiled
            .get_or_init(|| {
                compiled::Compiled::build(
                    &self.source_name,
                    &self.text,
                    self.version,
                    self.options.eval_timeout,
                )
            })
            .as_ref()
    }

    /// A decision of the compiled fast path: an allow, or a denial (explained afterwards
    /// by [`Policy::explained`]); `None` when the interpreter must decide (the program
    /// failed or was not compiled, its value is not a decision).
    fn fast(
        &self,
        request_type: &str,
        input: &regorus::Value,
    ) -> Option<(Decision, Option<StateOps>)> {
        let compiled = self.compiled()?;
        let data = if self.state_gen.load(Ordering::SeqCst) > 0 {
            Some(
                serde_json::from_value::<regorus::Value>(
                    serde_json::json!({ "pstate": self.state() }),
                )
                .ok()?,
            )
        } else {
            None
        };
        let value = compiled.eval(request_type, input, data.as_ref())?;
        // Only a value that says no is the program's denial. regorus's VM gives an
        // undefined value where the interpreter (and kata-agent) fail, e.g. for a
        // complete rule whose bodies disagree: an error, which audit mode
        // (AllowRequestsFailingPolicy) must not forgive as it forgives a denial.
        let says_no = match &value {
            regorus::Value::Bool(b) => !*b,
            v @ regorus::Value::Object(_) => v["allowed"] == regorus::Value::Bool(false),
            _ => false,
        };
        let (decision, ops) = conclude(request_type, Some(value), Vec::new());
        match decision {
            Decision::Allow => self.fast_allows.fetch_add(1, Ordering::Relaxed),
            Decision::Deny { .. } if says_no => self.fast_denials.fetch_add(1, Ordering::Relaxed),
            _ => return None,
        };
        Some((decision, ops))
    }

    /// The policy's `log_mask` for one request's input (as OPA's `system.log.mask`):
    /// `Ok(None)` when the policy has no such rule (checked at load: nothing is
    /// evaluated then) or it is undefined for this input; else its value as JSON (a
    /// set of JSON pointers under `/input`, or upsert objects).
    pub fn log_mask(&self, input: &serde_json::Value) -> Result<Option<serde_json::Value>, String> {
        if !self.log_mask {
            return Ok(None);
        }
        let input = engine_value(input).map_err(|e| e.to_string())?;
        match self.eval(LOG_MASK, input) {
            Ok((None, _)) => Ok(None),
            Ok((Some(v), _)) => serde_json::to_value(&v)
                .map(Some)
                .map_err(|e| format!("{LOG_MASK} is not JSON: {e}")),
            Err(e) => Err(format!("{LOG_MASK}: {e}")),
        }
    }

    /// The shared engine, brought up to date with the policy state, cloned.
    ///
    /// The shared engine is only locked to bring its `data.pstate` up to date and to
    /// clone it (a prepared regorus engine clones in about a microsecond, sharing the
    /// compiled policy); the evaluation runs on the clone, so decisions on different
    /// connections do not wait for each other.
    fn engine(&self) -> Result<Engine, EvalError> {
        let mut slot = self.engine.lock().map_err(|_| EvalError::Poisoned)?;
        let (engine, seen_gen) = &mut *slot;
        let gen = self.state_gen.load(Ordering::SeqCst);
        if gen != *seen_gen {
            // State generation 0 is the initial `{}`: no `data.pstate` at all yet.
            if gen != 0 {
                let state = self.state();
                let data = serde_json::from_value::<regorus::Value>(
                    serde_json::json!({ "pstate": state }),
                )
                .map_err(|e| EvalError::State(e.into()))?;
                engine.clear_data();
                engine.add_data(data).map_err(EvalError::State)?;
            }
            // Prepare (analyse, schedule) the shared engine itself, so that the
            // clones below start prepared instead of each paying for it.
            engine
                .eval_query("true".to_string(), false)
                .map_err(EvalError::Engine)?;
            let _ = engine.take_prints();
            *seen_gen = gen;
        }
        Ok(engine.clone())
    }

    /// Where the evaluation of a denied `request_type` failed, and what the policy
    /// printed: the rule evaluated again in the interpreter with coverage on, and the
    /// parsed policy walked along the covered lines ([`explain`]). Only denials pay for
    /// this; allows never come here.
    pub fn explained(
        &self,
        request_type: &str,
        input: regorus::Value,
    ) -> Result<(explain::Explanation, Vec<String>), EvalError> {
        let mut engine = self.engine()?;
        if self.constant.get(request_type) == Some(&false) {
            return Ok((explain::default_only(&mut engine, request_type), Vec::new()));
        }
        engine.set_enable_coverage(true);
        // A denial costs at most this much more than its decision.
        let budget = self
            .options
            .explain_timeout
            .unwrap_or_else(|| explain_budget(self.options.eval_timeout));
        engine.set_execution_timer_config(engine::timer_config(budget));
        engine.set_input(input);
        let evaluated = engine.eval_rule(format!("data.agent_policy.{request_type}"));
        let prints = engine.take_prints().unwrap_or_default();
        let covered = match evaluated {
            Ok(_) => engine
                .get_coverage_report()
                .map(|r| explain::covered_lines(&r))
                .map_err(EvalError::Engine)?,
            // Not a rule path: the request type is undefined, nothing to cover.
            Err(e) if e.to_string() == NOT_A_RULE => explain::Covered::new(),
            // The time limit, or an error the decision did not meet: not explained.
            Err(e) => return Err(EvalError::Engine(e)),
        };
        Ok((
            explain::explain(&mut engine, request_type, &covered),
            prints,
        ))
    }

    /// Evaluates `data.agent_policy.<name>` with `input`; `Ok(None)` when undefined.
    ///
    /// The evaluation runs on a clone of the shared engine ([`Policy::engine`]). The rule
    /// is evaluated with `eval_rule` (no query to parse and schedule, ~25 µs less per
    /// request than `eval_query`); a name that is not a rule path falls back to
    /// `eval_query`, which gives exactly kata-agent's answer for it (undefined, or a
    /// sub-package's document).
    pub fn eval(
        &self,
        name: &str,
        input: regorus::Value,
    ) -> Result<(Option<regorus::Value>, Vec<String>), EvalError> {
        let mut engine = self.engine()?;
        engine.set_input(input);
        let path = format!("data.agent_policy.{name}");
        let value = match engine.eval_rule(path.clone()) {
            Ok(v) => Ok(Some(v).filter(|v| *v != regorus::Value::Undefined)),
            Err(e) if e.to_string() == NOT_A_RULE => {
                let _ = engine.take_prints();
                engine.eval_query(path, false).map(|results| {
                    results
                        .result
                        .into_iter()
                        .next()
                        .and_then(|r| r.expressions.into_iter().next())
                        .map(|e| e.value)
                })
            }
            Err(e) => Err(e),
        };
        let prints = engine.take_prints().unwrap_or_default();
        value.map(|v| (v, prints)).map_err(EvalError::Engine)
    }

    /// Decides one request of type `request_type` with `input` (kata's policy JSON).
    pub fn decide(&self, request_type: &str, input: &serde_json::Value) -> Decision {
        self.decide_with_ops(request_type, input).0
    }

    /// Like [`Policy::decide`], and also returns the state operations an allowing
    /// `{"allowed": true, "ops": [...]}` result asked for (`None` when there are none).
    ///
    /// As in kata-agent, whose policy applies them while deciding, operations that do
    /// not apply to the current state (e.g. `remove` of a key that is not there) make
    /// the decision an error: the request does not run. They are applied later, with
    /// [`Policy::apply_ops`], once the agent has answered the request successfully.
    pub fn decide_with_ops(
        &self,
        request_type: &str,
        input: &serde_json::Value,
    ) -> (Decision, Option<StateOps>) {
        match self.decide_unchecked(request_type, input) {
            (decision, Some(ops)) => {
                let state = self.state();
                match patched(&state, &ops) {
                    Ok(_) => (decision, Some(ops)),
                    Err(e) => (
                        Decision::Error(format!(
                            "{request_type}: the policy's state operations do not apply: {e}"
                        )),
                        None,
                    ),
                }
            }
            undecided_or_without_ops => undecided_or_without_ops,
        }
    }

    /// The decision and its ops, before checking that the ops apply.
    fn decide_unchecked(
        &self,
        request_type: &str,
        input: &serde_json::Value,
    ) -> (Decision, Option<StateOps>) {
        // A rule whose value is the same whatever the request needs no input and no
        // engine; a constant `false` is denied exactly as the engine would deny it.
        if let Some(&value) = self
            .constant
            .get(request_type)
            .filter(|_| self.options.fast_path)
        {
            if value {
                self.constant_allows.fetch_add(1, Ordering::Relaxed);
                return (Decision::Allow, None);
            }
            let (decision, ops) =
                conclude(request_type, Some(regorus::Value::Bool(false)), Vec::new());
            return (self.explain_denial(request_type, decision, None), ops);
        }
        let started = Instant::now();
        // Converted from the borrowed document: no copy of the input first.
        let input = match engine_value(input) {
            Ok(v) => v,
            Err(e) => return (Decision::Error(e.to_string()), None),
        };
        if let Some((decision, ops)) = self.fast(request_type, &input) {
            return (
                self.explain_denial(request_type, decision, Some(input)),
                ops,
            );
        }
        let result = match self.eval(request_type, input.clone()) {
            Err(e) => (Decision::Error(e.to_string()), None),
            Ok((value, prints)) => {
                let (decision, ops) = conclude(request_type, value, prints);
                (
                    self.explain_denial(request_type, decision, Some(input)),
                    ops,
                )
            }
        };
        tracing::trace!(
            request_type,
            elapsed_us = started.elapsed().as_micros() as u64,
            "evaluated"
        );
        result
    }

    /// A denial with its reason taken from the evaluation ([`Policy::explained`]) and the
    /// policy's prints; any other decision as it is. If the explanation fails, the
    /// denial stands with the rule's name.
    fn explain_denial(
        &self,
        request_type: &str,
        decision: Decision,
        input: Option<regorus::Value>,
    ) -> Decision {
        let Decision::Deny { reason, detail } = decision else {
            return decision;
        };
        let input = input.unwrap_or_else(regorus::Value::new_object);
        match self.explained(request_type, input) {
            Ok((explanation, prints)) => Decision::Deny {
                reason: explanation.to_string(),
                detail: if prints.is_empty() {
                    detail
                } else {
                    prints.join("\n")
                },
            },
            Err(e) => {
                tracing::debug!(request_type, error = %e, "denial not explained");
                let why = e.to_string();
                let why = why.lines().next().unwrap_or_default();
                Decision::Deny {
                    reason: format!("{reason} (not explained: {why})"),
                    detail,
                }
            }
        }
    }
}

/// Longest a denial's explanation may run ([`Policy::explained`]).
pub const MAX_EXPLAIN: Duration = Duration::from_secs(1);

/// The time limit of a denial's explanation: half the evaluation time limit, at most
/// [`MAX_EXPLAIN`], so that a denial costs at most that much more than its decision.
/// Past it the reason says the denial was not explained.
pub fn explain_budget(eval_timeout: Duration) -> Duration {
    (eval_timeout / 2).min(MAX_EXPLAIN)
}

/// Key by which serde_json marks an arbitrary-precision number inside a map; regorus's
/// deserialiser reads an object whose first key it is as a number.
const SERDE_JSON_NUMBER_KEY: &str = "$serde_json::private::Number";

/// `v` as a regorus value: the same value regorus's own deserialiser makes of it
/// (`tests::engine_value_is_regorus_deserialisation`), with fewer allocations (a
/// string is copied once, not twice) and without serde's visitor machinery. Anything
/// unusual (a float that is not finite, an object that regorus would read as a number)
/// is handed to regorus's deserialiser.
fn engine_value(v: &serde_json::Value) -> Result<regorus::Value, InputError> {
    use serde_json::Value as J;
    let by_regorus =
        |v: &J| <regorus::Value as serde::Deserialize>::deserialize(v).map_err(InputError);
    Ok(match v {
        J::Null => regorus::Value::Null,
        J::Bool(b) => regorus::Value::Bool(*b),
        J::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => regorus::Value::from(u),
            (None, Some(i), _) => regorus::Value::from(i),
            (None, None, Some(f)) if f.is_finite() => regorus::Value::from(f),
            _ => by_regorus(v)?,
        },
        J::String(s) => regorus::Value::from(s.as_str()),
        J::Array(items) => regorus::Value::from(
            items
                .iter()
                .map(engine_value)
                .collect::<Result<Vec<_>, _>>()?,
        ),
        J::Object(map) => match map.keys().next() {
            None => regorus::Value::new_object(),
            Some(k) if k == SERDE_JSON_NUMBER_KEY => by_regorus(v)?,
            Some(_) => regorus::Value::from(
                map.iter()
                    .map(|(k, v)| Ok((regorus::Value::from(k.as_str()), engine_value(v)?)))
                    .collect::<Result<std::collections::BTreeMap<_, _>, InputError>>()?,
            ),
        },
    })
}

/// A rule's value (and prints) as a decision and the state operations it asked for.
fn conclude(
    request_type: &str,
    value: Option<regorus::Value>,
    prints: Vec<String>,
) -> (Decision, Option<StateOps>) {
    // kata-agent reads the result as {allowed, ops: Option<Patch>}: a missing or null
    // `ops` is none, and only an allowing result's ops are applied.
    let ops = match &value {
        Some(v @ regorus::Value::Object(_))
            if !matches!(v["ops"], regorus::Value::Undefined | regorus::Value::Null) =>
        {
            Some(&v["ops"])
        }
        _ => None,
    };
    match ops.map(ops_from_value) {
        Some(Err(e)) => (Decision::Error(format!("{request_type}: {e}")), None),
        Some(Ok(ops)) => {
            let decision = interpret(request_type, value, prints);
            let ops = Some(ops).filter(|o| decision == Decision::Allow && !o.0.is_empty());
            (decision, ops)
        }
        None => (interpret(request_type, value, prints), None),
    }
}

/// `state` (the `data.pstate` document) with `ops` applied, as kata-agent patches its
/// engine data `{"pstate": ...}`; an operation that does not apply is an error.
fn patched(
    state: &serde_json::Value,
    ops: &StateOps,
) -> Result<serde_json::Value, json_patch::PatchError> {
    let mut doc = serde_json::json!({ "pstate": state.clone() });
    json_patch::patch(&mut doc, ops)?;
    Ok(doc
        .get_mut("pstate")
        .map(serde_json::Value::take)
        .unwrap_or_default())
}

/// Reads the `ops` of a result as an RFC 6902 patch confined to `/pstate`.
fn ops_from_value(v: &regorus::Value) -> Result<StateOps, OpsError> {
    let json = serde_json::to_value(v).map_err(OpsError::NotJson)?;
    let patch: StateOps = serde_json::from_value(json).map_err(OpsError::NotAPatch)?;
    for op in &patch.0 {
        let path = match op {
            json_patch::PatchOperation::Add(o) => &o.path,
            json_patch::PatchOperation::Remove(o) => &o.path,
            json_patch::PatchOperation::Replace(o) => &o.path,
            json_patch::PatchOperation::Move(o) => &o.path,
            json_patch::PatchOperation::Copy(o) => &o.path,
            json_patch::PatchOperation::Test(o) => &o.path,
        };
        let path = path.to_string();
        if !path.starts_with("/pstate") {
            return Err(OpsError::OutsideState { path });
        }
    }
    Ok(patch)
}

/// Turns a rule's value into a decision (fail closed on anything unexpected).
fn interpret(request_type: &str, value: Option<regorus::Value>, prints: Vec<String>) -> Decision {
    let allowed = match &value {
        Some(regorus::Value::Bool(b)) => Some(*b),
        Some(v @ regorus::Value::Object(_)) => match &v["allowed"] {
            regorus::Value::Bool(b) => Some(*b),
            _ => None,
        },
        _ => None,
    };
    match allowed {
        Some(true) => Decision::Allow,
        // kata-agent cannot read such a value either: it answers with an error, which
        // (unlike a denial) AllowRequestsFailingPolicy does not turn into an allow.
        None if value.as_ref().is_some_and(|v| *v != regorus::Value::Undefined) => {
            Decision::Error(format!(
                "the value of data.agent_policy.{request_type} is neither a bool nor an object with a bool `allowed`"
            ))
        }
        _ => {
            let detail = prints.join("\n");
            // The reason until the evaluation explains it ([`Policy::explained`]).
            let reason = match &value {
                None | Some(regorus::Value::Undefined) => {
                    format!(
                        "rule data.agent_policy.{request_type} is undefined (denied by default)"
                    )
                }
                Some(_) => format!("data.agent_policy.{request_type} is false"),
            };
            Decision::Deny { reason, detail }
        }
    }
}

/// A short reason from the policy's prints: the last lines, up to [`MAX_REASON`] bytes.
fn shorten(prints: &[String]) -> String {
    let joined = prints
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if joined.len() <= MAX_REASON {
        return joined;
    }
    let mut start = joined.len() - MAX_REASON;
    while !joined.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &joined[start..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const V1: &str = r#"package agent_policy
import rego.v1
default CreateContainerRequest := false
CreateContainerRequest if input.container_id == "ok"
ExecProcessRequest := {"allowed": true, "ops": []}
ReadStreamRequest := 5
StartContainerRequest if {
    print("start is not allowed for", input.container_id)
    false
}
"#;

    fn load() -> Policy {
        Policy::load("t.rego", V1, RegoVersion::V0).unwrap()
    }

    #[test]
    fn bool_true_allows_false_denies() {
        let p = load();
        assert_eq!(
            p.decide("CreateContainerRequest", &json!({"container_id": "ok"})),
            Decision::Allow
        );
        assert!(
            matches!(p.decide("CreateContainerRequest", &json!({"container_id": "x"})),
            Decision::Deny { reason, .. } if reason == r#"t.rego:4: input.container_id == "ok" (in CreateContainerRequest)"#)
        );
    }

    #[test]
    fn object_with_allowed_true_allows() {
        assert_eq!(
            load().decide("ExecProcessRequest", &json!({})),
            Decision::Allow
        );
    }

    #[test]
    fn undefined_rule_denies() {
        let d = load().decide("CopyFileRequest", &json!({}));
        assert!(
            matches!(d, Decision::Deny { ref reason, .. } if reason.contains("undefined")),
            "{d:?}"
        );
    }

    #[test]
    fn undefined_body_denies_at_the_expression_that_failed() {
        let d = load().decide("StartContainerRequest", &json!({"container_id": "c1"}));
        assert!(
            matches!(d, Decision::Deny { ref reason, ref detail } if reason == "t.rego:9: false (in StartContainerRequest)" && detail.contains("start is not allowed for c1")),
            "{d:?}"
        );
    }

    #[test]
    fn non_bool_value_is_an_error() {
        let d = load().decide("ReadStreamRequest", &json!({}));
        assert!(
            matches!(d, Decision::Error(ref e) if e.contains("neither a bool")),
            "{d:?}"
        );
    }

    /// A request type's rule (only those are compiled for the fast path) that prints.
    const PRINTING: &str = "package agent_policy\nimport rego.v1\ndefault ExecProcessRequest := false\nExecProcessRequest if {\n print(\"checking\", input.a)\n input.a == 1\n}\n";

    #[test]
    fn full_deny_message_tells_the_host_the_prints() {
        let full = LoadOptions {
            deny_message: DenyMessage::Full,
            ..LoadOptions::default()
        };
        let p = Policy::load_with("p.rego", PRINTING, RegoVersion::V1, full).unwrap();
        match p.decide("ExecProcessRequest", &json!({"a": 2})) {
            Decision::Deny { reason, detail } => {
                assert_eq!(reason, "p.rego:6: input.a == 1 (in ExecProcessRequest)");
                assert!(detail.contains("checking 2"));
                let host = DenyMessage::Full.host_text(&reason, &detail).unwrap();
                assert!(host.contains("checking 2"), "{host}");
                assert_eq!(
                    DenyMessage::Reason.host_text(&reason, &detail),
                    Some(reason)
                );
                assert_eq!(DenyMessage::Code.host_text("r", &detail), None);
            }
            d => panic!("{d:?}"),
        }
        assert_eq!(
            p.fast_denials(),
            1,
            "the fast path decides, the interpreter explains"
        );
        assert_eq!(
            p.decide("ExecProcessRequest", &json!({"a": 1})),
            Decision::Allow
        );
        assert_eq!(p.fast_allows(), 1);
    }

    #[test]
    fn rules_whose_bodies_disagree_are_errors_from_either_path_and_audit_mode_cannot_forgive_them()
    {
        // The VM's value for a conflicting complete rule is undefined; the interpreter's
        // is an error (as kata-agent's): the fast path must not turn it into a denial.
        let src = "package agent_policy\nimport rego.v1\nAllowRequestsFailingPolicy := true\nExecProcessRequest := true if input.a == 1\nExecProcessRequest := false if input.b == 1\n";
        for p in [
            Policy::load("p.rego", src, RegoVersion::V1).unwrap(),
            Policy::load("p.rego", src, RegoVersion::V1)
                .unwrap()
                .without_fast_path(),
        ] {
            let d = p.decide("ExecProcessRequest", &json!({"a": 1, "b": 1}));
            assert!(matches!(d, Decision::Error(_)), "{d:?}");
            assert_eq!(p.fast_denials(), 0);
            assert_eq!(
                p.decide("ExecProcessRequest", &json!({"a": 2, "b": 1})),
                Decision::Deny {
                    reason: "p.rego:5: ExecProcessRequest := false if input.b == 1 (in ExecProcessRequest); that body held and its value denied; the other bodies got furthest at line 4: input.a == 1"
                        .into(),
                    detail: String::new(),
                }
            );
        }
    }

    #[test]
    fn a_denial_names_the_failing_expression_whichever_path_decides() {
        let p = Policy::load("p.rego", PRINTING, RegoVersion::V1).unwrap();
        let slow = Policy::load("p.rego", PRINTING, RegoVersion::V1)
            .unwrap()
            .without_fast_path();
        for policy in [&p, &slow] {
            match policy.decide("ExecProcessRequest", &json!({"a": 2})) {
                Decision::Deny { reason, detail } => {
                    assert_eq!(reason, "p.rego:6: input.a == 1 (in ExecProcessRequest)");
                    assert!(detail.contains("checking 2"), "{detail}");
                }
                d => panic!("{d:?}"),
            }
        }
        assert_eq!((p.fast_denials(), p.fast_allows()), (1, 0));
        assert_eq!(slow.fast_denials(), 0);
        // An undefined rule says so, whichever side decides.
        match p.decide("Nowhere", &json!({})) {
            Decision::Deny { reason, .. } => assert!(reason.contains("undefined"), "{reason}"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn parse_error_suggests_other_version() {
        let broken = "package agent_policy\nX { true \n";
        let e = Policy::load("p.rego", broken, RegoVersion::V0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("failed to parse as Rego v0") && !e.contains("it does parse"),
            "{e}"
        );
        let v0_only = "package agent_policy\nX { true }\n";
        let e = Policy::load("p.rego", v0_only, RegoVersion::V1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("failed to parse as Rego v1") && e.contains("set `rego = \"v0\"`"),
            "{e}"
        );
    }

    #[test]
    fn wrong_package_is_refused() {
        let e = Policy::load("p.rego", "package other\nx := 1\n", RegoVersion::V0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("package agent_policy"), "{e}");
    }

    #[test]
    fn ops_outside_pstate_or_not_a_patch_are_errors() {
        let outside = ops_from_value(
            &engine_value(&json!([{"op": "add", "path": "/other", "value": 1}])).unwrap(),
        )
        .unwrap_err();
        assert!(
            matches!(&outside, OpsError::OutsideState { path } if path == "/other"),
            "{outside:?}"
        );
        assert_eq!(
            outside.to_string(),
            "policy ops may only change /pstate, not /other"
        );
        let not_patch =
            ops_from_value(&engine_value(&json!([{"op": "jump"}])).unwrap()).unwrap_err();
        assert!(matches!(not_patch, OpsError::NotAPatch(_)), "{not_patch:?}");
        assert!(std::error::Error::source(&not_patch).is_some());
        // Through a decision, the text names the request type and fails closed.
        let src = "package agent_policy\nimport rego.v1\nX := {\"allowed\": true, \"ops\": [{\"op\": \"add\", \"path\": \"/x\", \"value\": 1}]}\n";
        let p = Policy::load("p.rego", src, RegoVersion::V1).unwrap();
        assert_eq!(
            p.decide_with_ops("X", &json!({})),
            (
                Decision::Error("X: policy ops may only change /pstate, not /x".to_string()),
                None
            )
        );
    }

    #[test]
    fn failing_state_ops_leave_the_state_alone() {
        let p = load();
        let ops: StateOps =
            serde_json::from_value(json!([{"op": "remove", "path": "/pstate/missing"}])).unwrap();
        let e = p.apply_ops(&ops).unwrap_err();
        assert!(matches!(e, StateError::Patch(_)), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("cannot apply policy state operations: "),
            "{e}"
        );
        assert_eq!(p.state(), json!({}));
    }

    #[test]
    fn long_reason_is_trimmed_to_tail() {
        let prints: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
        let r = shorten(&prints);
        assert!(r.len() <= MAX_REASON + 3 && r.ends_with("line 99"), "{r}");
    }

    #[test]
    fn engine_value_is_regorus_deserialisation() {
        let mut docs = vec![
            json!(null),
            json!(true),
            json!(0),
            json!(-0.0),
            json!(1.5),
            json!(1e300),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(-1),
            json!("ä\u{0}\"x"),
            json!([]),
            json!({}),
            json!([1, [2, [3, {"a": []}]], {"b": {}}]),
            json!({"$serde_json::private::Number": "12", "x": 1}),
            json!({"$serde_json::private::Number": "no"}),
            json!({"$serde_json::private::Number": 5}),
            json!({"$a": "12", "A": 1, "a": null, "": 0, "é": [true]}),
            json!({"OCI": {"Annotations": {"$serde_json::private::Number": "7"}}}),
        ];
        // Every recorded genpolicy input too, when the peer data is there.
        let peers =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/kata-genpolicy");
        for dir in std::fs::read_dir(peers).into_iter().flatten().flatten() {
            let Ok(text) = std::fs::read_to_string(dir.path().join("inputs.txt")) else {
                continue;
            };
            for line in text.lines() {
                if let Some((_, js)) = line.split_once("\",") {
                    let js = js.trim().trim_end_matches(',').trim_end_matches(']');
                    if let Ok(v) = serde_json::from_str(js) {
                        docs.push(v);
                    }
                }
            }
        }
        for doc in &docs {
            let ours = engine_value(doc);
            let theirs = <regorus::Value as serde::Deserialize>::deserialize(doc);
            match (ours, theirs) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "{doc}");
                    // Same representation too (e.g. 1 vs 1.0), not only equal values.
                    assert_eq!(
                        serde_json::to_string(&a).unwrap(),
                        serde_json::to_string(&b).unwrap(),
                        "{doc}"
                    );
                    assert_eq!(format!("{a:?}"), format!("{b:?}"), "{doc}");
                }
                (Err(_), Err(_)) => {}
                (a, b) => panic!("{doc}: {a:?} vs {b:?}"),
            }
        }
    }

    #[test]
    fn digest_is_sha256_of_text() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(load().digest(), sha256_hex(V1.as_bytes()));
    }
}
