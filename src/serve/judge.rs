//! The judgement of one host frame: the frame's own faults
//! ([`crate::wire::frame::Header::request_fault`]), stream reuse and the in-flight
//! limit, the ttrpc envelope and method table, the policy input, the policy's decision,
//! and then serve's own rules on top of it (SetPolicy mode, AllowRequestsFailingPolicy,
//! legacy endpoint lists). The result is a [`Verdict`]: forward the frame as received,
//! [`Answer`] in the agent's place (`{code, message}`, whose frame is built in one
//! place), or close the connection ([`Violation`]). [`Guard`] holds what every
//! connection shares.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::decision_log::{record, Decided, DecisionLog, OpenRecord, Outcome};
use crate::policy::{Decision, Policy, StateOps};
use crate::wire::envelope::{self, Code};
use crate::wire::frame::{Frame, RequestFault};
use crate::wire::input::{self, InputShape};
use crate::wire::methods::{self, Handling, Method};

/// An action run (on a blocking thread) after the agent answered a request of a given
/// type successfully, e.g. scratch-disk teardown after DestroySandbox.
pub type Hook = Arc<dyn Fn() + Send + Sync>;

/// What every connection shares: the policy, the input shape, hooks, counters.
pub struct Guard {
    policy: RwLock<Arc<Policy>>,
    shape: InputShape,
    hooks: HashMap<String, Hook>,
    next_decision: AtomicU64,
    pub(super) next_conn: AtomicU64,
    set_policy: SetPolicyMode,
    endpoint_list: bool,
    capture: Option<crate::serve::audit::Capture>,
    decision_log: Option<Arc<DecisionLog>>,
    max_in_flight: usize,
}

/// Whether SetPolicy may replace the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetPolicyMode {
    /// The current policy decides (`SetPolicyRequest` rule), as in kata.
    PolicyDecides,
    /// Refused outright: the policy came from attested initdata, and replacing it
    /// would make the measured digest describe a policy no longer enforced.
    Forbidden,
}

/// A request forwarded to the agent and not yet answered: what to do with its answer.
pub struct Pending {
    /// A denied read: the answer's `data` is blanked.
    pub blank_data: bool,
    /// Run after a successful answer (e.g. scratch-disk teardown after DestroySandbox).
    pub hook: Option<Hook>,
    /// State operations to apply (to the policy that decided) once the agent succeeds.
    pub ops: Option<(Arc<Policy>, StateOps)>,
    /// The decision-log record, written with the agent's status when its answer
    /// passes back (or as unanswered when the connection closes first).
    pub record: Option<OpenRecord>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("blank_data", &self.blank_data)
            .field("hook", &self.hook.is_some())
            .field("ops", &self.ops.as_ref().map(|(_, ops)| ops))
            .field("record", &self.record)
            .finish()
    }
}

/// An answer given in the agent's place: a refusal, or `OK` for an applied SetPolicy
/// (and the relay's own: oversize frames, requests the agent never answered).
/// [`Answer::frame`] is the one place such a response frame is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub code: Code,
    pub message: String,
}

impl Answer {
    pub(super) fn new(code: Code, message: impl Into<String>) -> Answer {
        Answer {
            code,
            message: message.into(),
        }
    }

    /// The response frame on `stream_id`: status `code` with `message`, no payload.
    pub fn frame(&self, stream_id: u32) -> Frame {
        envelope::error_frame(stream_id, self.code, self.message.as_str())
    }
}

/// A protocol violation by the host: the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error(transparent)]
    Frame(RequestFault),
    #[error("stream id {0} reused while a request on it is still in flight")]
    StreamReused(u32),
}

/// What to do with one frame from the host, or with one decided request.
#[derive(Debug)]
pub enum Verdict {
    /// Forward the request as received; [`Pending`] says what to do with the answer.
    Forward(Pending),
    /// Answer in the agent's place; the request is not forwarded.
    Answer(Answer),
    /// Close the connection ([`Guard::judge`] only).
    Close(Violation),
}

/// One request decided as `serve` decides it.
#[derive(Debug)]
pub struct Judgement {
    /// The decision (the policy's, or a SetPolicy refused by the SetPolicy mode).
    pub decision: Decision,
    /// A denial the policy's `AllowRequestsFailingPolicy` turned into forwarding.
    pub overridden: bool,
    /// What `serve` does with the request: forward it or answer it.
    pub verdict: Verdict,
}

impl Guard {
    pub fn new(policy: Policy, shape: InputShape) -> Guard {
        Guard {
            policy: RwLock::new(Arc::new(policy)),
            shape,
            hooks: HashMap::new(),
            next_decision: AtomicU64::new(1),
            next_conn: AtomicU64::new(1),
            set_policy: SetPolicyMode::PolicyDecides,
            endpoint_list: false,
            capture: None,
            decision_log: None,
            max_in_flight: crate::config::DEFAULT_MAX_IN_FLIGHT,
        }
    }

    /// Writes every decision, with its outcome, to the (chained) decision log.
    pub fn with_decision_log(mut self, log: Arc<DecisionLog>) -> Guard {
        self.decision_log = Some(log);
        self
    }

    /// The decision log, if one is written.
    pub fn decision_log(&self) -> Option<Arc<DecisionLog>> {
        self.decision_log.clone()
    }

    /// Sets the most requests in flight on one host connection (at least 1).
    pub fn with_max_in_flight(mut self, n: usize) -> Guard {
        self.max_in_flight = n.max(1);
        self
    }

    /// Sets whether SetPolicy may replace the policy.
    pub fn with_set_policy(mut self, mode: SetPolicyMode) -> Guard {
        self.set_policy = mode;
        self
    }

    /// Marks the policy as generated from a legacy endpoint list: denials are then
    /// answered UNIMPLEMENTED `<Type> is blocked`, as kata-agent did.
    pub fn with_endpoint_list(mut self, yes: bool) -> Guard {
        self.endpoint_list = yes;
        self
    }

    /// Records every decided input to a capture file.
    pub fn with_capture(mut self, capture: crate::serve::audit::Capture) -> Guard {
        self.capture = Some(capture);
        self
    }

    /// Replaces the policy; requests already decided keep their decision.
    pub fn swap_policy(&self, new: Policy) -> Arc<Policy> {
        let new = Arc::new(new);
        let mut slot = self.policy.write().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *slot, new)
    }

    /// Runs `hook` after each successful agent answer to a `request_type` request.
    pub fn with_hook(mut self, request_type: &str, hook: Hook) -> Guard {
        self.hooks.insert(request_type.to_string(), hook);
        self
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Judges one frame from the host. `busy` says whether its stream id is in flight;
    /// `in_flight` is how many requests of this connection are.
    pub(super) fn judge(&self, conn: u64, f: &Frame, busy: bool, in_flight: usize) -> Verdict {
        let id = f.header.stream_id;
        if let Err(refused) = self.admit(conn, f, busy, in_flight) {
            return refused;
        }
        let (m, input) = match self.policy_input(conn, id, f.body()) {
            Ok((m, Some(input))) => (m, input),
            Ok((m, None)) => {
                return Verdict::Forward(Pending {
                    blank_data: false,
                    hook: self.hook(m),
                    ops: None,
                    record: None,
                })
            }
            Err(refused) => return refused,
        };
        if let Some(capture) = &self.capture {
            capture.record(&m.request_type, &input);
        }
        self.decide_input(m, Cow::Owned(input), conn, id).verdict
    }

    /// Whether the frame is taken in at all. In this order: its own faults (a data
    /// frame is answered, a wrong type or an even stream id closes), stream reuse
    /// (closes), the in-flight limit, streaming flags.
    fn admit(&self, conn: u64, f: &Frame, busy: bool, in_flight: usize) -> Result<(), Verdict> {
        let id = f.header.stream_id;
        let fault = f.header.request_fault();
        match fault {
            Some(fault) if fault.closes_connection() => {
                return Err(Verdict::Close(Violation::Frame(fault)))
            }
            Some(fault @ RequestFault::Data) => return Err(refuse(Code::INVALID_ARGUMENT, fault)),
            _ => {}
        }
        if busy {
            return Err(Verdict::Close(Violation::StreamReused(id)));
        }
        if in_flight >= self.max_in_flight {
            let limit = self.max_in_flight;
            tracing::warn!(
                conn,
                stream = id,
                limit,
                "too many requests in flight, not forwarded"
            );
            return Err(refuse(
                Code::RESOURCE_EXHAUSTED,
                format!("too many requests in flight on this connection (limit {limit})"),
            ));
        }
        match fault {
            Some(fault) => Err(refuse(Code::INVALID_ARGUMENT, fault)),
            None => Ok(()),
        }
    }

    /// The method a request body calls and its policy input, `None` for a passthrough
    /// method (forwarded undecided). A body that is no request, an unknown method, a
    /// malformed payload or one kata-agent refuses before its policy runs is answered.
    fn policy_input(
        &self,
        conn: u64,
        id: u32,
        body: &[u8],
    ) -> Result<(&'static Method, Option<serde_json::Value>), Verdict> {
        let req = envelope::decode_request(body).map_err(|e| refuse(Code::INVALID_ARGUMENT, e))?;
        let Some(m) = methods::table().lookup(&req.service, &req.method) else {
            tracing::warn!(conn, stream = id, service = %req.service, method = %req.method, "unknown method, not forwarded");
            let (service, method) = (&req.service, &req.method);
            return Err(refuse(
                Code::UNIMPLEMENTED,
                format!("{service}/{method}: unknown service or method (not forwarded)"),
            ));
        };
        if m.handling == Handling::Passthrough {
            tracing::debug!(conn, stream = id, service = %m.service, method = %m.name, "passthrough");
            return Ok((m, None));
        }
        let ty = m.request_type.as_str();
        let msg = input::decode_request(&m.request, &req.payload).map_err(|e| {
            tracing::warn!(conn, stream = id, kind = ty, error = %e, "malformed payload, not forwarded");
            refuse(
                Code::INVALID_ARGUMENT,
                format!("{ty}: malformed request payload: {e}"),
            )
        })?;
        let input = input::to_policy_input(&*msg, self.shape).map_err(|e| {
            // kata-agent refuses such a request before its policy runs: fail closed.
            let reason = e.to_string();
            let policy = self.policy();
            let decision_id = self.log_decision(m, conn, id, Err(&reason), policy.digest(), 0);
            if let Some(log) = &self.decision_log {
                let d = Decided {
                    decision_id,
                    kind: ty.to_string(),
                    conn,
                    stream: id,
                    input: serde_json::Value::Null,
                    mask: Vec::new(),
                    result: None,
                    allowed: false,
                    reason: format!("refused before policy evaluation: {reason}"),
                    eval_ns: 0,
                    policy_digest: policy.digest().to_string(),
                    timestamp: record::now_rfc3339(),
                };
                log.decision(d, &Outcome::NotForwarded(Code::INVALID_ARGUMENT as i32));
            }
            refuse(
                Code::INVALID_ARGUMENT,
                format!("{ty}: refused before policy evaluation: {e}"),
            )
        })?;
        Ok((m, Some(input)))
    }

    /// The hook to run after a successful answer to a request of `m`'s type.
    fn hook(&self, m: &Method) -> Option<Hook> {
        self.hooks.get(&m.request_type).cloned()
    }

    /// Writes one decision-log line (every decided or refused request gets exactly one)
    /// and returns its decision id. `outcome` is `Err(reason)` for a denial. The request
    /// type is `kind`, as in the capture and in kata-agent's own log; `request_type`
    /// repeats it for readers of the older log lines.
    fn log_decision(
        &self,
        m: &Method,
        conn: u64,
        stream: u32,
        outcome: Result<(), &str>,
        policy: &str,
        eval_us: u64,
    ) -> u64 {
        let decision_id = self.next_decision.fetch_add(1, Ordering::Relaxed);
        let (allowed, reason) = match outcome {
            Ok(()) => (true, ""),
            Err(reason) => (false, reason),
        };
        tracing::info!(
            target: crate::logging::DECISION_TARGET,
            decision_id, conn, stream, service = %m.service, method = %m.name,
            kind = %m.request_type, request_type = %m.request_type, allowed, reason, policy, eval_us,
            "decision"
        );
        decision_id
    }

    /// Decides one request's policy input as `serve` does: the policy's decision, then
    /// serve's own rules on top (SetPolicy mode, AllowRequestsFailingPolicy, blanked
    /// reads, endpoint-list answers), logged as one decision line. An allowed
    /// SetPolicy replaces the policy here. The policy tools (`policy eval`, `policy
    /// replay`) decide through this function too. `conn` and `stream` only label the
    /// log line.
    pub fn decide(
        &self,
        m: &Method,
        input: &serde_json::Value,
        conn: u64,
        stream: u32,
    ) -> Judgement {
        self.decide_input(m, Cow::Borrowed(input), conn, stream)
    }

    /// [`Guard::decide`] of an input that the decision log may keep (serve's own, given
    /// away: the log's writer thread masks it in place, nothing is copied on the request's
    /// path) or borrow (copied for the log).
    fn decide_input(
        &self,
        m: &Method,
        input: Cow<'_, serde_json::Value>,
        conn: u64,
        stream: u32,
    ) -> Judgement {
        let input_ref: &serde_json::Value = &input;
        let ty = m.request_type.as_str();
        let policy = self.policy();
        let timestamp = self.decision_log.as_ref().map(|_| record::now_rfc3339());
        let started = Instant::now();
        let (mut decision, ops) = policy.decide_with_ops(ty, input_ref);
        let eval_ns = started.elapsed().as_nanos() as u64;
        let eval_us = eval_ns / 1000;
        if m.handling == Handling::SetPolicy && self.set_policy == SetPolicyMode::Forbidden {
            decision = Decision::Deny {
                reason: "SetPolicy is disabled: the policy came from attested initdata".into(),
                detail: String::new(),
            };
        }
        let (allowed, reason) = match &decision {
            Decision::Allow => (true, ""),
            Decision::Deny { reason, .. } => (false, reason.as_str()),
            Decision::Error(e) => (false, e.as_str()),
        };
        // As kata-agent: audit mode forgives denials, not errors (evaluation errors,
        // unreadable values, state operations that do not apply).
        let overridden = matches!(decision, Decision::Deny { .. })
            && policy.is_permissive()
            && m.handling != Handling::SetPolicy;
        let outcome = if allowed { Ok(()) } else { Err(reason) };
        let decision_id = self.log_decision(m, conn, stream, outcome, policy.digest(), eval_us);
        if let Decision::Deny { detail, .. } = &decision {
            if !detail.is_empty() {
                tracing::debug!(decision_id, kind = ty, policy_output = %detail, "policy output for denial");
            }
        }
        if overridden {
            tracing::warn!(
                decision_id,
                kind = ty,
                reason,
                "AllowRequestsFailingPolicy: denied request allowed"
            );
        }
        // The decision log's `result` (nothing is built without a log).
        let result = match (&self.decision_log, &decision, &ops) {
            (None, ..) | (_, Decision::Error(_), _) => None,
            (_, _, Some(ops)) => Some(serde_json::json!({"allowed": allowed, "ops": ops})),
            _ => Some(serde_json::Value::Bool(allowed)),
        };
        let ops = ops.map(|o| (policy.clone(), o));
        let mut verdict = self.verdict(m, &decision, overridden, ops, input_ref);
        if let (Some(log), Some(timestamp)) = (&self.decision_log, timestamp) {
            let d = Decided {
                decision_id,
                kind: ty.to_string(),
                conn,
                stream,
                mask: log_mask(&policy, input_ref),
                input: input.into_owned(),
                result,
                allowed,
                reason: reason.to_string(),
                eval_ns,
                policy_digest: policy.digest().to_string(),
                timestamp,
            };
            match &mut verdict {
                Verdict::Forward(p) => p.record = Some(OpenRecord::new(log.clone(), d)),
                Verdict::Answer(a) => {
                    log.decision(d, &Outcome::NotForwarded(a.code as i32));
                    let now = self.policy();
                    if m.handling == Handling::SetPolicy && !Arc::ptr_eq(&now, &policy) {
                        log.policy_replaced(policy.digest(), now.digest());
                    }
                }
                Verdict::Close(_) => {}
            }
        }
        Judgement {
            decision,
            overridden,
            verdict,
        }
    }

    /// What `serve` does with a decided request: forward it (state `ops` to apply once
    /// the agent succeeds; a denied read's answer blanked), apply an allowed SetPolicy,
    /// or refuse it with the code and text kata-agent would use.
    fn verdict(
        &self,
        m: &Method,
        decision: &Decision,
        overridden: bool,
        ops: Option<(Arc<Policy>, StateOps)>,
        input: &serde_json::Value,
    ) -> Verdict {
        let ty = m.request_type.as_str();
        let forward = |blank_data: bool, ops| {
            Verdict::Forward(Pending {
                blank_data,
                hook: self.hook(m),
                ops,
                record: None,
            })
        };
        match decision {
            Decision::Allow if m.handling == Handling::SetPolicy => self.set_policy(input),
            Decision::Allow => forward(false, ops),
            _ if overridden => forward(false, ops),
            _ if m.handling == Handling::PolicyBlankDataOnDeny => forward(true, None),
            Decision::Deny { .. } if self.endpoint_list => {
                refuse(Code::UNIMPLEMENTED, format!("{ty} is blocked"))
            }
            // The host gets what `deny_message` allows; the log has the whole reason.
            Decision::Deny { reason, detail } => {
                match self
                    .policy()
                    .options()
                    .deny_message
                    .host_text(reason, detail)
                {
                    Some(text) => refuse(
                        Code::PERMISSION_DENIED,
                        format!("{ty} is blocked by policy: {text}"),
                    ),
                    None => refuse(Code::PERMISSION_DENIED, ""),
                }
            }
            Decision::Error(e) => refuse(Code::INTERNAL, format!("{ty}: internal error: {e}")),
        }
    }

    /// Answers an allowed SetPolicy: compile the new policy completely, then swap.
    fn set_policy(&self, input: &serde_json::Value) -> Verdict {
        let text = input
            .get("policy")
            .and_then(|p| p.as_str())
            .unwrap_or_default();
        let old = self.policy();
        match Policy::load_with("SetPolicy", text, old.version(), old.options()) {
            Ok(new) => {
                let new_digest = new.digest().to_string();
                self.swap_policy(new);
                tracing::warn!(old = %old.digest(), new = %new_digest, "policy replaced by SetPolicy");
                refuse(Code::OK, "")
            }
            Err(e) => {
                tracing::warn!(error = %e, "SetPolicy: new policy rejected, old policy stays");
                refuse(Code::INVALID_ARGUMENT, format!("SetPolicyRequest: {e}"))
            }
        }
    }
}

/// The policy's `log_mask` for this input, as masking operations (the decision log's
/// writer applies them after agent-warden's default masking). A `log_mask` that fails
/// or says something unreadable erases the whole input (fail closed: the author meant
/// to keep something out).
fn log_mask(policy: &Policy, input: &serde_json::Value) -> Vec<record::MaskOp> {
    let ops = match policy.log_mask(input) {
        Ok(None) => Vec::new(),
        Ok(Some(v)) => match record::mask_ops(&v) {
            Ok(ops) => ops,
            Err(e) => {
                tracing::error!(error = %e, "decision log: log_mask unreadable, input erased");
                vec![record::MaskOp::Erase("/input".into())]
            }
        },
        Err(e) => {
            tracing::error!(error = %e, "decision log: log_mask failed, input erased");
            vec![record::MaskOp::Erase("/input".into())]
        }
    };
    ops
}

/// Answers in the agent's place with `code` and `message` (not forwarded).
fn refuse(code: Code, message: impl ToString) -> Verdict {
    Verdict::Answer(Answer::new(code, message.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ok_answer_is_the_ok_frame() {
        let ok = Answer::new(Code::OK, "");
        assert_eq!(ok.frame(3), envelope::ok_frame(3, &[]));
        let denied = Answer::new(Code::PERMISSION_DENIED, "no").frame(5);
        let r = envelope::decode_response(denied.body()).unwrap();
        assert_eq!(envelope::status_code(&r), Code::PERMISSION_DENIED as i32);
        assert_eq!(r.status.message, "no");
    }
}
