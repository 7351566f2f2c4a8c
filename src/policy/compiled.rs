//! The compiled fast path of [`crate::policy`]: each request type's rule compiled once,
//! when the policy is loaded ([`Compiled::compile_ahead`], so that no request pays for
//! parsing and compiling), to a regorus RVM program, run without the engine lock in a
//! VM of its own. VMs that finished cleanly are kept (a few per request
//! type) and reused, without the last request's input and data: regorus resets a VM's
//! execution state (registers, rule cache, stacks, counters) at the start of every
//! run, and building and loading a VM was about a quarter of a small rule's decision.
//!
//! The VM answers first because it is several times faster. Its allow is the decision,
//! and so is its denial, whose reason (and prints) the interpreter then finds
//! ([`super::explain`]). Whenever it does not produce a decision (an
//! error, the time limit, a value that is not a decision, a rule it cannot compile) the
//! interpreter decides. tests/kata_oracle.rs holds both to kata-agent's own decisions.
//! The VM has no instruction limit (regorus's default of 25,000 is a size, not a time:
//! genpolicy's layer-storage rule went past it at 9 layers); the time limit bounds it,
//! as it bounds the interpreter. The RVM has no `print`, so the
//! program is compiled from the policy text with its print statements removed (a line
//! that is only `print(...)`); print always succeeds in Rego, so removing it cannot
//! change a value. A line the removal would break makes compilation fail, and that
//! rule stays on the interpreter.
//!
//! The RVM cannot call engine extensions. Calls to our `path.*` helpers are compiled
//! as calls back to the host (regorus's host-await builtins, see
//! [`compile_with_path_helpers`]); such a program runs in the VM's suspendable mode,
//! and each suspension is answered with [`crate::policy::pathext::call`]. A helper that fails
//! ends the attempt, so the interpreter decides (and fails as the extension does).
//!
//! `regex.match` in a compiled program is our [`regex_match`], not regorus's: regorus
//! keeps compiled patterns in a cache but hands out a clone per call, and a cloned
//! `Regex` starts with an empty matching cache (its lazy DFA is rebuilt state by state
//! on every call; on genpolicy's CreateContainer that was almost half of all
//! instructions). Ours keeps each compiled pattern, with its warm matching caches, in
//! a bounded cache ([`RegexCache`]). It answers only the common case (two strings, a
//! pattern that compiles); anything else goes to regorus's own `regex.match`, so
//! errors and undefined results are regorus's. A pattern is built as `regex::Regex`
//! builds it (the same syntax and size limit, so the same patterns compile and the
//! same strings match) but without the DFAs that `regex` also builds for each pattern
//! ([`build_regex`]): most patterns of a pod are new to the process (they are made
//! from its sandbox and container IDs) and are met a handful of times, and building
//! them was most of a first CreateContainer's cost. Texts over 4 KiB, which a pod's
//! requests do not have but a host can send, get the DFA-backed build ([`Pattern`]).
//!
//! The program is compiled from the print-free text rewritten by [`super::rewrite`]:
//! membership loops as one comparison; `some .. in C` with `C` guarded, and every rule
//! that could give two values for one input gathered, so that what fails the
//! interpreter's evaluation fails the program too (our `regex.match` answers
//! [`super::rewrite::ITERATION_TRAP`] and [`super::rewrite::CONFLICT_TRAP`] with a
//! limit error, which the VM never turns into undefined). A policy whose conflicts
//! cannot be rewritten has no fast path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use regex_automata::meta::Regex;
use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::vm::{ExecutionMode, ExecutionState, SuspendReason};
use regorus::rvm::{Program, RegoVM};
use regorus::unstable::{BuiltinFcn, Expr, Ref, Span};
use regorus::{Engine, Value};

/// Idle VMs kept per request type: enough for the decisions that run at once (one per
/// connection task, on a few worker threads).
const IDLE_VMS: usize = 8;

/// Compiled programs of one policy, by request type.
pub(crate) struct Compiled {
    /// An engine over the print-free text, used only to compile; dropped once
    /// [`Compiled::compile_ahead`] has compiled every request type (its parsed policy
    /// is a few MiB that no decision needs).
    engine: Mutex<Option<Engine>>,
    programs: Mutex<HashMap<String, Option<Arc<Program>>>>,
    /// Idle VMs with a rule's program loaded, by request type (at most [`IDLE_VMS`]
    /// each), so that a request does not pay for building and loading a VM.
    idle: Mutex<HashMap<String, Vec<RegoVM>>>,
    timeout: Duration,
}

/// The policy text with statement-only `print(...)` lines blanked (line numbers kept).
pub(crate) fn strip_prints(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if is_print_statement(line.trim()) {
            if line.ends_with('\n') {
                out.push('\n');
            }
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Whether `t` is exactly one `print(...)` call: the parenthesis opened by `print(`
/// closes at the last character (strings skipped). `print(a); deny(b)` or
/// `print(a) == x` are not, so removing the line can only ever drop a print.
fn is_print_statement(t: &str) -> bool {
    let Some(rest) = t.strip_prefix("print(") else {
        return false;
    };
    let mut depth = 1usize;
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => loop {
                match chars.next() {
                    Some((_, '\\')) => {
                        chars.next();
                    }
                    Some((_, '"')) => break,
                    Some(_) => {}
                    None => return false,
                }
            },
            '`' => loop {
                match chars.next() {
                    Some((_, '`')) => break,
                    Some(_) => {}
                    None => return false,
                }
            },
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    return i + c.len_utf8() == rest.len();
                }
            }
            _ => {}
        }
    }
    false
}

impl Compiled {
    /// Prepares the compiling engine; `engine` must already hold the stripped text.
    pub(crate) fn new(engine: Engine, timeout: Duration) -> Compiled {
        Compiled {
            engine: Mutex::new(Some(engine)),
            programs: Mutex::new(HashMap::new()),
            idle: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    /// The fast path for a policy: its text without print statements, parsed by an
    /// engine set up as the interpreter's; `None` when that text does not parse.
    pub(crate) fn build(
        source_name: &str,
        text: &str,
        version: super::engine::RegoVersion,
        timeout: Duration,
    ) -> Option<Compiled> {
        let mut engine = super::engine::new_engine(version, timeout);
        let stripped = strip_prints(text);
        if let Err(e) = engine.add_policy(source_name.to_string(), stripped.clone()) {
            tracing::debug!(error = %e, "no compiled fast path for this policy");
            return None;
        }
        // The rewrites (super::rewrite), compiled from a second parse. A policy with a
        // rule that could give two values in a form the conflict rewrite cannot
        // express has no fast path; if the rewritten text does not parse, the
        // stripped text is compiled as it is only when nothing but membership pairs
        // was rewritten (a speed-up; the guards and the conflict rewrite are not).
        let rewritten = match super::rewrite::for_fast_path(
            &stripped,
            engine.get_modules(),
            version,
        ) {
            Ok(r) => r,
            Err(at) => {
                tracing::info!(
                    source = source_name,
                    %at,
                    "compiled fast path off: where this policy's evaluation can fail in kata-agent, the compiled programs cannot be made to fail alike; the interpreter decides every request"
                );
                return None;
            }
        };
        if rewritten.changed() {
            let (members, guarded, conflicts) =
                (rewritten.members, rewritten.guarded, rewritten.conflicts);
            let mut again = super::engine::new_engine(version, timeout);
            match again.add_policy(source_name.to_string(), rewritten.text) {
                Ok(_) => {
                    tracing::debug!(
                        members,
                        guarded,
                        conflicts,
                        "policy text rewritten for the fast path"
                    );
                    engine = again;
                }
                // The guards and the conflict rewrite are not speed-ups: without them
                // the programs could allow what the interpreter refuses.
                Err(e) if guarded + conflicts > 0 => {
                    tracing::info!(source = source_name, error = %e, "compiled fast path off: the policy text rewritten for the compiled programs did not parse; the interpreter decides every request");
                    return None;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "rewritten text did not parse; compiled unchanged")
                }
            }
        }
        Some(Compiled::new(engine, timeout))
    }

    /// Compiles, ahead of any request, the program of every rule in `request_types`
    /// that is not a constant (those are decided without an engine), and readies one
    /// VM for each: a type's first request then costs what its tenth does. A rule the
    /// policy does not define, or that does not compile, is remembered as such. This
    /// changes when the work is done, never a decision: a rule is decided the same
    /// whether its program was compiled ahead, on its first request, or not at all.
    pub(crate) fn compile_ahead(&self, request_types: &[&str]) {
        let constant = match self.engine.lock().as_deref_mut() {
            Ok(Some(engine)) => super::constant::constant_rules(engine),
            _ => return,
        };
        let started = std::time::Instant::now();
        let mut compiled = 0;
        let shared = self.compile_shared(request_types, &constant);
        for ty in request_types {
            if constant.contains_key(*ty) {
                continue;
            }
            if let Some(program) = self.program(ty) {
                let mut vm = RegoVM::new();
                vm.load_program(program);
                self.put_idle(ty, vm);
                compiled += 1;
            }
        }
        tracing::debug!(
            compiled,
            shared,
            constant = constant.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "fast path compiled ahead"
        );
        // Every request type now has its program, or is known to have none.
        if let Ok(mut engine) = self.engine.lock() {
            *engine = None;
        }
    }

    /// One program for every rule of `request_types` that the policy defines and that
    /// is not constant, compiled in one pass: regorus redoes its whole-policy analysis
    /// (loop hoisting) for each compilation, and each per-rule program compiles the
    /// helper rules the request types share again; on genpolicy's policies that was
    /// most of the start-up time. Each of those request types then runs its own entry
    /// point of this program. Returns whether it was built; if not (a rule that does
    /// not compile, or calls to our path helpers, which [`compile_with_path_helpers`]
    /// finds rule by rule), nothing is recorded and each rule is compiled on its own,
    /// as before. Either way a rule is compiled from the same text by the same
    /// compiler, so its program decides alike.
    fn compile_shared(&self, request_types: &[&str], constant: &HashMap<String, bool>) -> bool {
        let Ok(mut engine) = self.engine.lock() else {
            return false;
        };
        let Some(engine) = engine.as_mut() else {
            return false;
        };
        let types: Vec<&str> = request_types
            .iter()
            .copied()
            .filter(|ty| !constant.contains_key(*ty) && super::constant::defines(engine, ty))
            .collect();
        if types.len() < 2 {
            return false;
        }
        let entries: Vec<String> = types
            .iter()
            .map(|ty| format!("data.agent_policy.{ty}"))
            .collect();
        let entry_refs: Vec<&str> = entries.iter().map(String::as_str).collect();
        let Some(first) = entries.first() else {
            return false;
        };
        let program = engine
            .compile_with_entrypoint(&first.as_str().into())
            .map_err(|e| e.to_string())
            .and_then(|c| {
                Compiler::compile_from_policy_with_host_await(&c, &entry_refs, &[])
                    .map_err(|e| e.to_string())
            });
        let program = match program {
            Ok(p) => with_our_builtins(p),
            Err(e) => {
                tracing::debug!(error = %e, "no shared program; each rule is compiled on its own");
                return false;
            }
        };
        if let Ok(mut m) = self.programs.lock() {
            for ty in types {
                m.insert(ty.to_string(), Some(program.clone()));
            }
            return true;
        }
        false
    }

    fn program(&self, request_type: &str) -> Option<Arc<Program>> {
        if let Some(p) = self.programs.lock().ok()?.get(request_type) {
            return p.clone();
        }
        let entry = format!("data.agent_policy.{request_type}");
        let program = match self.engine.lock().ok()?.as_mut() {
            Some(engine) => engine
                .compile_with_entrypoint(&entry.as_str().into())
                .map_err(|e| e.to_string())
                .and_then(|c| compile_with_path_helpers(&c, &entry)),
            None => Err("not one of the request types compiled ahead".to_string()),
        };
        let program = match program {
            Ok(p) => Some(with_our_builtins(p)),
            Err(e) => {
                tracing::debug!(request_type, error = %e, "rule not compiled; the interpreter decides it");
                None
            }
        };
        if let Ok(mut m) = self.programs.lock() {
            m.insert(request_type.to_string(), program.clone());
        }
        program
    }

    /// The rule's value from the compiled program, or `None` when the program cannot
    /// say (not compiled, or the VM failed).
    pub(crate) fn eval(
        &self,
        request_type: &str,
        input: &Value,
        data: Option<&Value>,
    ) -> Option<Value> {
        let timeout = self.timeout;
        let mut vm = match self.take_idle(request_type) {
            Some(vm) => vm,
            None => {
                let mut vm = RegoVM::new();
                vm.load_program(self.program(request_type)?);
                vm
            }
        };
        vm.set_execution_timer_config(Some(super::engine::timer_config(timeout)));
        // The time limit is the bound, as for the interpreter (module comment).
        vm.set_max_instructions(usize::MAX);
        vm.set_data(data.cloned().unwrap_or(Value::Null)).ok()?;
        vm.set_input(input.clone());
        let host_calls = program_has_host_calls(&vm);
        vm.set_execution_mode(if host_calls {
            ExecutionMode::Suspendable
        } else {
            ExecutionMode::RunToCompletion
        });
        let mut result =
            vm.execute_entry_point_by_name(&format!("data.agent_policy.{request_type}"));
        // Each suspension is one path-helper call (the only host calls compiled in);
        // its answer resumes the program. A helper's error (a non-string argument)
        // ends the attempt: the interpreter decides, and fails as the extension does.
        while host_calls && result.is_ok() {
            let (name, args) = match vm.execution_state() {
                ExecutionState::Suspended {
                    reason:
                        SuspendReason::HostAwait {
                            argument: Value::Array(args),
                            identifier: Value::String(name),
                            ..
                        },
                    ..
                } => (name.clone(), args.to_vec()),
                ExecutionState::Suspended { .. } => return None,
                _ => break,
            };
            let value = match crate::policy::pathext::call(&name, args)? {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(request_type, error = %e, "path helper failed; the interpreter decides");
                    return None;
                }
            };
            result = vm.resume(Some(value));
        }
        match result {
            Ok(v) => {
                self.put_idle(request_type, vm);
                Some(v)
            }
            Err(e) => {
                tracing::debug!(request_type, error = %e, "compiled evaluation failed; the interpreter decides");
                None
            }
        }
    }

    fn take_idle(&self, request_type: &str) -> Option<RegoVM> {
        self.idle.lock().ok()?.get_mut(request_type)?.pop()
    }

    /// Keeps a VM that finished cleanly for the next request of its type, without the
    /// request's input and data (each run also resets the VM's own state).
    fn put_idle(&self, request_type: &str, mut vm: RegoVM) {
        vm.set_input(Value::Null);
        if vm.set_data(Value::Null).is_err() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            let vms = idle.entry(request_type.to_string()).or_default();
            if vms.len() < IDLE_VMS {
                vms.push(vm);
            }
        }
    }
}

/// Whether the VM's program calls back to the host (our path helpers).
fn program_has_host_calls(vm: &RegoVM) -> bool {
    vm.get_program().has_host_await()
}

/// Compiles `entry`. The RVM cannot call engine extensions; a call to one of our path
/// helpers ([`crate::policy::pathext::HELPERS`]) that the policy does not define itself is
/// reported by the compiler as an unknown function, and is then compiled as a call
/// back to the host (a regorus "host-await builtin", answered in
/// [`Compiled::eval`]). Only names the compiler found unknown are registered:
/// registration would also take precedence over a policy function of that name, and
/// in the interpreter the policy's own function wins.
fn compile_with_path_helpers(
    policy: &regorus::CompiledPolicy,
    entry: &str,
) -> Result<Arc<Program>, String> {
    let mut helpers: Vec<(&str, usize)> = Vec::new();
    loop {
        match Compiler::compile_from_policy_with_host_await(policy, &[entry], &helpers) {
            Ok(p) => return Ok(p),
            Err(e) => {
                let message = e.to_string();
                let unknown = crate::policy::pathext::HELPERS.iter().find(|(name, _, _)| {
                    message.contains(&format!("Unknown function: '{name}'"))
                        && !helpers.iter().any(|(h, _)| h == name)
                });
                match unknown {
                    Some(&(name, arity, _)) => helpers.push((name, usize::from(arity))),
                    None => return Err(message),
                }
            }
        }
    }
}

/// `program` made cheaper to run (unchanged if it is already shared, which a freshly
/// compiled one never is):
///
/// - its `regex.match` calls resolved to [`regex_match`];
/// - its rule descriptions slimmed. regorus 0.14.1's VM clones a rule's `RuleInfo` on
///   every call of the rule (cached or not): its name, parameter names and per-
///   definition tables, a handful of allocations each time (~8% of the instructions
///   on genpolicy's CreateContainer). The VM never reads the names, and reads the
///   tables with `get(..)`, where a missing entry means `None`/`false`; so names are
///   emptied, and a table that holds only `None`/`false` is replaced by an empty one.
///   `tests::slimmed_programs_decide_as_the_interpreter` exercises what they encode.
fn with_our_builtins(mut program: Arc<Program>) -> Arc<Program> {
    if let Some(p) = Arc::get_mut(&mut program) {
        for info in &mut p.rule_infos {
            info.name = String::new();
            if let Some(f) = info.function_info.as_mut() {
                f.param_names = Vec::new();
            }
            if info.destructuring_blocks.iter().all(Option::is_none) {
                info.destructuring_blocks = Vec::new();
            }
            if info.else_bodies.iter().flatten().all(|e| !e) {
                info.else_bodies = Vec::new();
            }
        }
        for (info, resolved) in p
            .builtin_info_table
            .iter()
            .zip(p.resolved_builtins.iter_mut())
        {
            if info.name == "regex.match" && info.num_args == 2 {
                *resolved = (regex_match, 2);
            }
        }
    }
    program
}

/// regorus's own `regex.match` (the fallback of ours).
fn regorus_regex_match() -> Option<BuiltinFcn> {
    regorus::unstable::BUILTINS.get("regex.match").copied()
}

/// regorus's limit on a compiled pattern (`REGEX_SIZE_LIMIT` in its builtins/regex.rs):
/// the same builder settings give the same `Regex`, so the same answers.
const REGEX_SIZE_LIMIT: usize = 100 * 1024;

/// Patterns kept per generation of [`RegexCache`] (so at most twice as many in all).
const REGEX_CACHE_GENERATION: usize = 256;

/// Compiled patterns, bounded: lookups hit the current generation or promote from the
/// previous one; when the current one is full it becomes the previous one (dropping
/// the older), so patterns built from request data cannot grow it without bound.
struct RegexCache {
    current: HashMap<Box<str>, Arc<Pattern>>,
    previous: HashMap<Box<str>, Arc<Pattern>>,
}

impl RegexCache {
    fn get(&mut self, pattern: &str) -> Option<Arc<Pattern>> {
        if let Some(re) = self.current.get(pattern) {
            return Some(re.clone());
        }
        let (key, re) = self.previous.remove_entry(pattern)?;
        self.insert(key, re.clone());
        Some(re)
    }

    fn insert(&mut self, key: Box<str>, re: Arc<Pattern>) {
        if self.current.len() >= REGEX_CACHE_GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, re);
    }
}

static REGEX_CACHE: std::sync::LazyLock<Mutex<RegexCache>> = std::sync::LazyLock::new(|| {
    Mutex::new(RegexCache {
        current: HashMap::new(),
        previous: HashMap::new(),
    })
});

/// The compiled `pattern` from the cache, compiled (and cached) on first use; `None`
/// if it does not compile.
fn cached_regex(pattern: &str) -> Option<Arc<Pattern>> {
    if let Some(re) = REGEX_CACHE.lock().ok()?.get(pattern) {
        return Some(re);
    }
    let re = Arc::new(Pattern::new(pattern)?);
    if let Ok(mut cache) = REGEX_CACHE.lock() {
        cache.insert(pattern.into(), re.clone());
    }
    Some(re)
}

/// Texts longer than this are matched by the pattern's DFA-backed twin
/// ([`Pattern::long_texts`]): without a DFA a match costs ~25 ns per byte (the PikeVM)
/// instead of ~2, which on a text of a few KiB outweighs building the lazy DFA.
const LONG_TEXT: usize = 4 * 1024;

/// A compiled `regex.match` pattern: built without DFAs ([`build_regex`]), which is
/// what a pod's short texts (IDs, paths, environment entries) want; a text longer than
/// [`LONG_TEXT`] (which the host can send: up to a frame's 4 MiB) is matched by the
/// same pattern as `regex::Regex` builds it, built the first time one comes. Both
/// are regex's engines for one pattern, so which one answers changes only the time.
struct Pattern {
    short_texts: Regex,
    long_texts: std::sync::OnceLock<Option<regex::Regex>>,
}

impl Pattern {
    fn new(pattern: &str) -> Option<Pattern> {
        Some(Pattern {
            short_texts: build_regex(pattern)?,
            long_texts: std::sync::OnceLock::new(),
        })
    }

    /// Whether `pattern` (the one this was built from) matches `text`.
    fn is_match(&self, pattern: &str, text: &str) -> bool {
        if text.len() > LONG_TEXT {
            let long = self.long_texts.get_or_init(|| {
                regex::RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .ok()
            });
            if let Some(re) = long {
                return re.is_match(text);
            }
        }
        self.short_texts.is_match(text)
    }
}

/// `pattern` compiled as `regex::RegexBuilder::new(pattern).size_limit(REGEX_SIZE_LIMIT)
/// .build()` compiles it (regorus's `regex.match`): regex 1.x builds a `Regex` as this
/// meta regex, with this syntax (UTF-8), match kind, empty-match rule and NFA size
/// limit, so it fails on the same patterns and `is_match` answers the same. What
/// differs is which of regex's equivalent engines answer: not the fully determinized
/// DFA (`dfa(false)`) nor the lazy DFA (`hybrid(false)`), which regex builds or
/// prepares for every pattern, but the one-pass DFA, the bounded backtracker or the
/// PikeVM, which it keeps for the cases the DFAs cannot take. For genpolicy's pods,
/// replaying the `regex.match` calls of their CreateContainer requests: a new pattern
/// plus its first matches cost 40-60% less (k8s-policy-job 1.60 → 0.64 ms per pod, web
/// 2.70 → 1.17, pod-exec 2.15 → 0.98); a warm match costs more (+0.2-0.3 µs a call),
/// and a long text much more (hence [`Pattern`]).
/// `tests::our_regex_answers_as_regex_does` holds the two side by side.
fn build_regex(pattern: &str) -> Option<Regex> {
    let config = regex_automata::meta::Config::new()
        .match_kind(regex_automata::MatchKind::LeftmostFirst)
        .utf8_empty(true)
        .nfa_size_limit(Some(REGEX_SIZE_LIMIT))
        .dfa(false)
        .hybrid(false);
    regex_automata::meta::Builder::new()
        .configure(config)
        .syntax(regex_automata::util::syntax::Config::new().utf8(true))
        .build(pattern)
        .ok()
}

/// `regex.match(pattern, value)` for compiled programs: the match on a cached pattern
/// when both arguments are strings and the pattern compiles, regorus's `regex.match`
/// for everything else (its errors, its non-strict undefined).
fn regex_match(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    strict: bool,
) -> anyhow::Result<Value> {
    if let Some(answer) = trap(args) {
        return answer;
    }
    if let [Value::String(pattern), Value::String(value)] = args {
        if let Some(re) = cached_regex(pattern) {
            return Ok(Value::Bool(re.is_match(pattern, value)));
        }
    }
    match regorus_regex_match() {
        Some((f, _)) => f(span, params, args, strict),
        // Cannot happen (the program was compiled against it): the evaluation fails
        // (closed).
        None => Err(program_failure()),
    }
}

/// The answer to a call of one of the rewrites' traps (super::rewrite), `None` for any
/// other `regex.match`: a guarded `some .. in` collection is itself when it is an
/// array, set or object (or undefined), and fails the program otherwise, as it fails
/// the interpreter's evaluation; a rule that gave two values fails the program.
fn trap(args: &[Value]) -> Option<anyhow::Result<Value>> {
    let [Value::String(pattern), arg] = args else {
        return None;
    };
    match pattern.as_ref() {
        super::rewrite::ITERATION_TRAP => Some(match arg {
            Value::Array(_) | Value::Set(_) | Value::Object(_) | Value::Undefined => {
                Ok(arg.clone())
            }
            _ => Err(program_failure()),
        }),
        super::rewrite::CONFLICT_TRAP => Some(Err(program_failure())),
        _ => None,
    }
}

/// An error of the kind regorus's VM never turns into undefined (a limit error): the
/// program fails, and the interpreter decides.
fn program_failure() -> anyhow::Error {
    regorus::LimitError::RegexSizeLimitExceeded {
        limit: REGEX_SIZE_LIMIT,
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_print_statements_only() {
        let t = "a {\n    print(\"x\", y)\n    y == 1\n}\nprint_it := 1\n  print(z) # no\n";
        assert_eq!(
            strip_prints(t),
            "a {\n\n    y == 1\n}\nprint_it := 1\n  print(z) # no\n"
        );
    }

    #[test]
    fn keeps_lines_where_print_is_not_the_whole_statement() {
        for keep in [
            "print(a); not allowed(input)",
            "print(a) == x",
            "print(\"(\", x) ; y(z)",
            "print(f(x)) ; g(y)",
            "print(\"unterminated",
            "print(a",
        ] {
            assert!(!is_print_statement(keep), "{keep}");
        }
        for strip in [
            "print(a)",
            "print(\"x)\", concat(\",\", [a, b]))",
            "print(`raw ) text`, {\"k\": f(x)})",
            "print(\"esc \\\" )\", y)",
        ] {
            assert!(is_print_statement(strip), "{strip}");
        }
    }

    /// One rule evaluated by the compiled program and by the interpreter.
    fn both(policy: &str, rule: &str, input: serde_json::Value) -> (Option<Value>, Value) {
        let (fast, slow) = both_or_error(policy, rule, input);
        (fast, slow.unwrap())
    }

    /// An interpreter for `policy`, set up as agent-warden's engines, and the compiled
    /// fast path over the same engine.
    fn engines(policy: &str) -> (Engine, Compiled) {
        let mut engine = Engine::new();
        // As agent-warden's engines: a failing builtin makes its expression undefined.
        engine.set_strict_builtin_errors(false);
        crate::policy::pathext::register(&mut engine);
        engine.add_policy("t.rego".into(), policy.into()).unwrap();
        let interp = engine.clone();
        (interp, Compiled::new(engine, Duration::from_secs(5)))
    }

    /// Like [`both`], the interpreter's error kept.
    fn both_or_error(
        policy: &str,
        rule: &str,
        input: serde_json::Value,
    ) -> (Option<Value>, anyhow::Result<Value>) {
        let (mut interp, compiled) = engines(policy);
        let input: Value = serde_json::from_value(input).unwrap();
        let fast = compiled.eval(rule, &input, None);
        interp.set_input(input);
        let slow = interp.eval_rule(format!("data.agent_policy.{rule}"));
        (fast, slow)
    }

    #[test]
    fn path_helpers_run_in_compiled_programs_as_extensions_do() {
        let policy = r#"package agent_policy
import rego.v1
shared := "/run/kata-containers/shared/containers/"
default C := false
C if {
    input.path == path.clean(input.path)
    path.is_beneath(input.path, shared)
}
default W := false
W if path.is_within(input.path, input.root)
default N := true
N := false if not path.is_beneath(input.path, shared)
"#;
        for rule in ["C", "W", "N"] {
            let program = Compiled::new(
                {
                    let mut e = Engine::new();
                    crate::policy::pathext::register(&mut e);
                    e.add_policy("t.rego".into(), policy.into()).unwrap();
                    e
                },
                Duration::from_secs(5),
            )
            .program(rule);
            assert!(program.is_some_and(|p| p.has_host_await()), "{rule}");
        }
        let mut allowed = 0;
        for input in [
            serde_json::json!({"path": "/run/kata-containers/shared/containers/c1/x", "root": "/run"}),
            serde_json::json!({"path": "/run/kata-containers/shared/containers/c1/../x", "root": "/run"}),
            serde_json::json!({"path": "/run/kata-containers/shared/containers/../../../etc/passwd", "root": "/run"}),
            serde_json::json!({"path": "/run/kata-containers/shared/containers", "root": "/run/kata-containers/shared/containers/"}),
            serde_json::json!({"path": "/run/kata-containers/shared/containersX/y", "root": "/"}),
            serde_json::json!({"path": "relative/x", "root": "relative"}),
            serde_json::json!({"root": "/run"}),
        ] {
            for rule in ["C", "W", "N"] {
                let (fast, slow) = both(policy, rule, input.clone());
                assert_eq!(fast, Some(slow.clone()), "{rule} {input}");
                allowed += usize::from(slow == Value::from(true));
            }
        }
        assert!(allowed >= 5, "{allowed}");
        // A helper that fails (non-string argument) makes the interpreter fail; the
        // compiled program gives no answer, so it is the interpreter's error.
        for bad in [
            serde_json::json!(7),
            serde_json::json!(null),
            serde_json::json!(["/run"]),
        ] {
            for rule in ["C", "W", "N"] {
                let (fast, slow) =
                    both_or_error(policy, rule, serde_json::json!({"path": bad, "root": "/"}));
                assert_eq!(fast, None, "{rule} {bad}");
                assert!(slow.is_err(), "{rule} {bad}");
            }
        }
    }

    #[test]
    fn a_policy_defined_path_function_is_not_taken_for_the_helper() {
        // The policy's own path.clean wins in the interpreter; the compiled program
        // must call it too, and still hand path.is_beneath to the host.
        let policy = r#"package agent_policy
import rego.v1
path.clean(x) := "/run/kata-containers/shared/containers/ok"
default C := false
C if {
    p := path.clean(input.path)
    path.is_beneath(p, "/run/kata-containers/shared/containers")
}
"#;
        for input in [
            serde_json::json!({"path": "/etc/passwd"}),
            serde_json::json!({"path": 5}),
        ] {
            let (fast, slow) = both(policy, "C", input.clone());
            assert_eq!(slow, Value::from(true), "{input}");
            assert_eq!(fast, Some(slow), "{input}");
        }
    }

    #[test]
    fn regex_match_in_compiled_programs_is_ours_and_agrees_with_regorus() {
        let policy = r#"package agent_policy
import rego.v1
default M := false
M if regex.match(input.p, input.s)
default N := false
N if not regex.match(input.p, input.s)
"#;
        let program = Compiled::new(
            {
                let mut e = Engine::new();
                e.add_policy("t.rego".into(), policy.into()).unwrap();
                e
            },
            Duration::from_secs(5),
        )
        .program("M")
        .unwrap();
        let ours: BuiltinFcn = (regex_match, 2);
        assert!(program
            .builtin_info_table
            .iter()
            .zip(&program.resolved_builtins)
            .any(|(i, r)| i.name == "regex.match" && r.0 as usize == ours.0 as usize));
        for input in [
            serde_json::json!({"p": "^a+$", "s": "aaa"}),
            serde_json::json!({"p": "^a+$", "s": "aab"}),
            serde_json::json!({"p": "^\\p{L}+$", "s": "äbc"}),
            // Not a regex: regorus makes the call undefined (non-strict), so
            // `not regex.match` is true; ours must agree.
            serde_json::json!({"p": "(", "s": "x"}),
            serde_json::json!({"p": 5, "s": "x"}),
            serde_json::json!({"p": "x", "s": ["x"]}),
            serde_json::json!({"s": "x"}),
        ] {
            for rule in ["M", "N"] {
                let (fast, slow) = both(policy, rule, input.clone());
                assert_eq!(fast, Some(slow), "{rule} {input}");
            }
        }
    }

    /// Patterns of the genpolicy policies (after their substitutions), and patterns
    /// where engines could differ: Unicode classes and word boundaries (the lazy DFA
    /// gives up on non-ASCII text there), empty matches, anchors, flags, look-arounds
    /// regex does not support, size limits.
    const REGEX_CASES: &[&str] = &[
        r"^[a-z0-9]{64}$",
        r"^/run/kata-containers/shared/containers/[a-z0-9]{64}-[a-z0-9]{16}-resolv.conf$",
        r"^[A-Z0-9_\.\-]+_PORT_[0-9]{1,5}_TCP=tcp://((25[0-5]|(2[0-4]|1\d|[1-9]|)\d)\.?\b){4}:[0-9]{1,5}$",
        r"^[A-Z_\.\-]+_SERVICE_HOST=(([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])\.){3}([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])$",
        r"^AZURE_CLIENT_ID=[A-Fa-f0-9-]*$",
        r"^HOSTNAME=[a-zA-Z0-9_\.\-]+$",
        r"\bword\b",
        r"\B",
        r"(?-u:\b)x",
        r"\w+\s\d",
        r"\p{Greek}+",
        r"^$",
        r"",
        r"a*",
        r"(?m)^b$",
        r"(?i)straße",
        r"(?s).",
        r".",
        r"x|",
        r"^(a|ab)(c|bcd)(d*)$",
        r"[^a]",
        r"\x{FFFF}",
        r"(",
        r"a{2,1}",
        r"(?=x)",
        r"\1",
        r"[[:alpha:]]+",
        // Around regorus's 100 KiB size limit: the first compiles, the others
        // only under a larger limit, the last under none.
        r"a{1000}",
        r"a{5000}",
        r"\w{10}",
        r"((((a{100}){100}){100}){100})",
    ];

    const REGEX_TEXTS: &[&str] = &[
        "",
        "x",
        "a",
        "aa",
        "b",
        "a\nb",
        "\n",
        "word",
        "a word here",
        "wordy",
        "éword",
        "word é",
        "καλημέρα",
        "x κ x",
        "STRASSE",
        "straße",
        "abcd",
        "é",
        "\u{FFFF}",
        "5 \u{0663}",
        "_ \u{0664}",
        "KUBERNETES_PORT_443_TCP=tcp://10.0.0.1:443",
        "KUBERNETES_PORT_443_TCP=tcp://10.0.0.1٣:443",
        "KUBERNETES_SERVICE_HOST=10.0.0.1",
        "AZURE_CLIENT_ID=",
        "AZURE_CLIENT_ID=abc-DEF",
        "HOSTNAME=web-0",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "/run/kata-containers/shared/containers/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef-0123456789abcdef-resolv.conf",
    ];

    #[test]
    fn our_regex_answers_as_regex_does() {
        // regorus's regex.match is `RegexBuilder::new(p).size_limit(100 KiB).build()`
        // then `is_match`: ours must compile the same patterns and match the same texts.
        // Long texts too, for every pattern: one just past LONG_TEXT, and one beyond
        // what the bounded backtracker takes (the PikeVM answers).
        let long = format!("{} word 5 {}", "a".repeat(300_000), "κ".repeat(1000));
        let just_long = format!("{} word", "é".repeat(LONG_TEXT / 2));
        let mut compared = 0;
        for pattern in REGEX_CASES {
            let theirs = regex::RegexBuilder::new(pattern)
                .size_limit(REGEX_SIZE_LIMIT)
                .build();
            let ours = build_regex(pattern);
            let cached = Pattern::new(pattern);
            assert_eq!(theirs.is_ok(), ours.is_some(), "{pattern:?} compiles");
            assert_eq!(ours.is_some(), cached.is_some(), "{pattern:?} compiles");
            let (Ok(theirs), Some(ours), Some(cached)) = (theirs, ours, cached) else {
                continue;
            };
            let texts = REGEX_TEXTS.iter().copied();
            for text in texts.chain([long.as_str(), just_long.as_str()]) {
                // Twice: the second answer comes from warm matching caches.
                for _ in 0..2 {
                    let want = theirs.is_match(text);
                    assert_eq!(want, ours.is_match(text), "{pattern:?} on {text:?}");
                    assert_eq!(
                        want,
                        cached.is_match(pattern, text),
                        "{pattern:?} on {text:?}"
                    );
                    compared += 1;
                }
            }
        }
        assert!(compared > 1000, "{compared}");
    }

    #[test]
    fn long_texts_are_matched_by_the_dfa_twin_built_when_first_needed() {
        let p = r"^HOSTNAME=[a-zA-Z0-9_\.\-]+$";
        let pattern = Pattern::new(p).unwrap();
        assert!(pattern.is_match(p, "HOSTNAME=web-0"));
        assert!(pattern.long_texts.get().is_none(), "built for a short text");
        let long = format!("HOSTNAME={}", "a".repeat(LONG_TEXT));
        assert!(pattern.is_match(p, &long));
        assert!(matches!(pattern.long_texts.get(), Some(Some(_))));
        assert!(!pattern.is_match(p, &format!("{long}!")));
    }

    #[test]
    fn regex_cache_is_bounded() {
        let mut cache = RegexCache {
            current: HashMap::new(),
            previous: HashMap::new(),
        };
        let re = Arc::new(Pattern::new("x").unwrap());
        for i in 0..(5 * REGEX_CACHE_GENERATION) {
            cache.insert(format!("p{i}").into(), re.clone());
            assert!(cache.current.len() + cache.previous.len() <= 2 * REGEX_CACHE_GENERATION);
        }
        // A recently used pattern survives a generation change.
        let last = format!("p{}", 5 * REGEX_CACHE_GENERATION - 1);
        assert!(cache.get(&last).is_some());
        assert!(cache.get("p0").is_none());
    }

    #[test]
    fn slimmed_programs_decide_as_the_interpreter() {
        // Else chains, destructuring (function arguments, `some [a, b] in`), partial
        // sets and objects with several bodies, functions with several definitions:
        // what the emptied RuleInfo tables would otherwise describe.
        let policy = r#"package agent_policy
import rego.v1
grade(n) := "high" if n > 10
else := "mid" if n > 5
else := "low"
first([a, _]) := a
pairs contains x if { some [x, _] in input.pairs }
pairs contains "extra" if input.extra
obj[k] := v if { some k, v in input.o; v > 1 }
f(1) := "one"
f(2) := "two"
default R := false
R if {
    grade(input.n) == input.want
    first(input.l) == "a"
    count(pairs) == input.npairs
    count(obj) == input.nobj
    f(input.k) == input.fk
}
"#;
        let ok = serde_json::json!({
            "n": 7, "want": "mid", "l": ["a", "b"], "pairs": [[1, 2], [3, 4]],
            "extra": true, "npairs": 3, "o": {"a": 1, "b": 2, "c": 3}, "nobj": 2,
            "k": 2, "fk": "two"
        });
        let mut inputs = vec![ok.clone()];
        for (k, v) in [
            ("n", serde_json::json!(11)),
            ("n", serde_json::json!(1)),
            ("want", serde_json::json!("low")),
            ("l", serde_json::json!(["b", "a"])),
            ("l", serde_json::json!(["a"])),
            ("extra", serde_json::json!(false)),
            ("npairs", serde_json::json!(2)),
            ("o", serde_json::json!({"a": 5})),
            ("k", serde_json::json!(3)),
        ] {
            let mut i = ok.clone();
            i[k] = v;
            inputs.push(i);
        }
        let mut allowed = 0;
        for input in inputs {
            let (fast, slow) = both(policy, "R", input.clone());
            assert_eq!(fast, Some(slow.clone()), "{input}");
            allowed += usize::from(slow == Value::from(true));
        }
        assert_eq!(allowed, 1);
    }

    #[test]
    fn compile_ahead_readies_every_evaluated_request_type_then_drops_the_engine() {
        let policy = r#"package agent_policy
import rego.v1
default CreateContainerRequest := false
CreateContainerRequest if input.ok
default StartContainerRequest := true
"#;
        let (_, compiled) = engines(policy);
        compiled.compile_ahead(&[
            "CreateContainerRequest",
            "StartContainerRequest",
            "ExecProcessRequest",
        ]);
        {
            let programs = compiled.programs.lock().unwrap();
            assert!(programs.get("CreateContainerRequest").unwrap().is_some());
            // Not defined by the policy: known to have no program.
            assert!(programs.get("ExecProcessRequest").unwrap().is_none());
            // A constant rule is decided without an engine: not compiled.
            assert!(!programs.contains_key("StartContainerRequest"));
            let idle = compiled.idle.lock().unwrap();
            assert_eq!(idle.get("CreateContainerRequest").map(Vec::len), Some(1));
        }
        assert!(compiled.engine.lock().unwrap().is_none());
        let v = |j: serde_json::Value| -> Value { serde_json::from_value(j).unwrap() };
        let ok = v(serde_json::json!({"ok": true}));
        assert_eq!(
            compiled.eval("CreateContainerRequest", &ok, None),
            Some(Value::Bool(true))
        );
        assert_eq!(
            compiled.eval("CreateContainerRequest", &v(serde_json::json!({})), None),
            Some(Value::Bool(false))
        );
        // Not a request type compiled ahead: no answer, the interpreter decides.
        assert_eq!(compiled.eval("Other", &ok, None), None);
    }

    #[test]
    fn compile_ahead_builds_one_program_for_all_rules_that_decides_as_the_interpreter() {
        // Three rules sharing helpers (a function with several definitions, a partial
        // set), one constant, one undefined: one program, compiled once, whose entry
        // points decide each rule as the interpreter does.
        let policy = r#"package agent_policy
import rego.v1
ok_name(n) if startswith(n, "a")
ok_name(n) if n == "zed"
names contains n if { some n in input.names; ok_name(n) }
default CreateContainerRequest := false
CreateContainerRequest if { count(names) == count(input.names); input.n > 1 }
default ExecProcessRequest := false
ExecProcessRequest if { some c in input.cmds; c == input.want }
default CopyFileRequest := false
CopyFileRequest if { not ok_name(input.path) }
default StartContainerRequest := true
"#;
        let types = [
            "CreateContainerRequest",
            "ExecProcessRequest",
            "CopyFileRequest",
            "StartContainerRequest",
            "RemoveContainerRequest",
        ];
        let (mut interp, compiled) = engines(policy);
        compiled.compile_ahead(&types);
        {
            let programs = compiled.programs.lock().unwrap();
            let create = programs.get(types[0]).unwrap().clone().unwrap();
            for ty in &types[1..3] {
                let p = programs.get(*ty).unwrap().clone().unwrap();
                assert!(Arc::ptr_eq(&create, &p), "{ty} has a program of its own");
            }
            assert!(!programs.contains_key("StartContainerRequest"));
            assert!(programs.get("RemoveContainerRequest").unwrap().is_none());
        }
        let v = |j: serde_json::Value| -> Value { serde_json::from_value(j).unwrap() };
        let mut allowed = 0;
        for input in [
            serde_json::json!({"names": ["ab", "zed"], "n": 2, "cmds": ["x", "y"], "want": "y", "path": "q"}),
            serde_json::json!({"names": ["ab", "b"], "n": 2, "cmds": ["x"], "want": "y", "path": "abc"}),
            serde_json::json!({"names": [], "n": 1, "cmds": [], "want": "x", "path": "zed"}),
            serde_json::json!({"names": ["zed"], "n": 5, "cmds": {"k": "y"}, "want": "y", "path": 3}),
            serde_json::json!({}),
        ] {
            for ty in &types[..3] {
                let fast = compiled.eval(ty, &v(input.clone()), None);
                interp.set_input(v(input.clone()));
                let slow = interp.eval_rule(format!("data.agent_policy.{ty}")).unwrap();
                assert_eq!(fast, Some(slow.clone()), "{ty} {input}");
                allowed += usize::from(slow == Value::from(true));
            }
        }
        assert!(allowed >= 5, "{allowed}");
    }

    #[test]
    fn rules_calling_path_helpers_are_compiled_one_by_one() {
        let policy = r#"package agent_policy
import rego.v1
default CreateContainerRequest := false
CreateContainerRequest if path.is_beneath(input.p, "/shared")
default ExecProcessRequest := false
ExecProcessRequest if input.ok
"#;
        let (_, compiled) = engines(policy);
        compiled.compile_ahead(&["CreateContainerRequest", "ExecProcessRequest"]);
        {
            let programs = compiled.programs.lock().unwrap();
            let a = programs
                .get("CreateContainerRequest")
                .unwrap()
                .clone()
                .unwrap();
            let b = programs.get("ExecProcessRequest").unwrap().clone().unwrap();
            assert!(!Arc::ptr_eq(&a, &b));
            assert!(a.has_host_await() && !b.has_host_await());
        }
        let v = |j: serde_json::Value| -> Value { serde_json::from_value(j).unwrap() };
        assert_eq!(
            compiled.eval(
                "CreateContainerRequest",
                &v(serde_json::json!({"p": "/shared/x"})),
                None
            ),
            Some(Value::Bool(true))
        );
        assert_eq!(
            compiled.eval(
                "ExecProcessRequest",
                &v(serde_json::json!({"ok": true})),
                None
            ),
            Some(Value::Bool(true))
        );
    }

    #[test]
    fn reused_vms_carry_nothing_from_one_decision_to_the_next() {
        // One Compiled, many decisions in a row on the same idle VMs: each answer must be
        // what a fresh VM gives, whatever the previous input, data, result or failure.
        let policy = r#"package agent_policy
import rego.v1
default R := false
R if {
    input.n > 2
    not data.pstate.blocked
    count([x | some x in input.l; x == "a"]) == 1
}
default P := false
P if path.is_beneath(input.p, "/shared")
"#;
        let (_, compiled) = engines(policy);
        let v = |j: serde_json::Value| -> Value { serde_json::from_value(j).unwrap() };
        let blocked = v(serde_json::json!({"pstate": {"blocked": true}}));
        let ok = v(serde_json::json!({"n": 3, "l": ["a", "b"]}));
        let cases = [
            ("R", v(serde_json::json!({"n": 1, "l": ["a"]})), None, false),
            ("R", ok.clone(), None, true),
            ("R", ok.clone(), Some(&blocked), false),
            ("R", ok.clone(), None, true),
            (
                "R",
                v(serde_json::json!({"n": 3, "l": ["a", "a"]})),
                None,
                false,
            ),
            ("R", ok.clone(), None, true),
            ("P", v(serde_json::json!({"p": "/shared/x"})), None, true),
            ("P", v(serde_json::json!({"p": 5})), None, false),
            ("P", v(serde_json::json!({"p": "/etc"})), None, false),
            ("P", v(serde_json::json!({"p": "/shared/y"})), None, true),
        ];
        for round in 0..3 {
            for (i, (rule, input, data, allowed)) in cases.iter().enumerate() {
                let got = compiled.eval(rule, input, *data);
                assert_eq!(
                    got == Some(Value::Bool(true)),
                    *allowed,
                    "round {round} case {i}: {got:?}"
                );
            }
        }
        let idle = compiled.idle.lock().unwrap();
        assert!(idle
            .get("R")
            .is_some_and(|v| !v.is_empty() && v.len() <= IDLE_VMS));
    }
}
