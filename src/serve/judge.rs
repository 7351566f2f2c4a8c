//! The judgement of one host frame: protocol checks (frame type, stream ids, flags,
//! in-flight limit), the ttrpc envelope and method table, the policy input, the
//! policy's decision, and then serve's own rules on top of it (SetPolicy mode,
//! AllowRequestsFailingPolicy, legacy endpoint lists). The result is a [`Verdict`]:
//! forward the frame as received, answer in the agent's place, or close the
//! connection. [`Guard`] holds what every connection shares.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::policy::{Decision, Policy, StateOps};
use crate::wire::envelope::{self, Code};
use crate::wire::frame::{Frame, FLAG_NO_DATA, FLAG_REMOTE_OPEN, TYPE_DATA, TYPE_REQUEST};
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

/// A request forwarded to the agent and not yet answered.
pub(super) struct Pending {
    pub(super) blank_data: bool,
    pub(super) hook: Option<Hook>,
    /// State operations to apply (to the policy that decided) once the agent succeeds.
    pub(super) ops: Option<(Arc<Policy>, StateOps)>,
}

impl Pending {
    pub(super) fn plain(hook: Option<Hook>) -> Pending {
        Pending {
            blank_data: false,
            hook,
            ops: None,
        }
    }
}

/// What `serve` does with one decided request.
#[derive(Debug)]
pub enum Action {
    /// Forward the request as received. `blank_data`: a denied read whose answer's data
    /// is blanked; `ops`: state operations for the deciding policy, applied once the
    /// agent has answered successfully.
    Forward {
        blank_data: bool,
        ops: Option<(Arc<Policy>, StateOps)>,
    },
    /// Answer in the agent's place with this status (`OK` for an applied SetPolicy).
    Answer { code: Code, message: String },
}

/// One request decided as `serve` decides it.
#[derive(Debug)]
pub struct Judgement {
    /// The decision (the policy's, or a SetPolicy refused by the SetPolicy mode).
    pub decision: Decision,
    /// A denial the policy's `AllowRequestsFailingPolicy` turned into forwarding.
    pub overridden: bool,
    pub action: Action,
}

/// What to do with one frame from the host.
pub(super) enum Verdict {
    Forward(Pending),
    Reply(Frame),
    Close(String),
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
            max_in_flight: crate::config::DEFAULT_MAX_IN_FLIGHT,
        }
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
        let h = f.header;
        let id = h.stream_id;
        if h.kind != TYPE_REQUEST {
            if h.kind == TYPE_DATA {
                return Verdict::Reply(envelope::error_frame(
                    id,
                    Code::INVALID_ARGUMENT,
                    "data frames are not supported: AgentService has no streaming methods",
                ));
            }
            return Verdict::Close(format!(
                "unexpected frame type {} from the host on stream {id}",
                h.kind
            ));
        }
        if id.is_multiple_of(2) {
            return Verdict::Close(format!(
                "stream id {id} is even; host stream ids must be odd"
            ));
        }
        if busy {
            return Verdict::Close(format!(
                "stream id {id} reused while a request on it is still in flight"
            ));
        }
        if in_flight >= self.max_in_flight {
            tracing::warn!(
                conn,
                stream = id,
                limit = self.max_in_flight,
                "too many requests in flight, not forwarded"
            );
            return Verdict::Reply(envelope::error_frame(
                id,
                Code::RESOURCE_EXHAUSTED,
                format!(
                    "too many requests in flight on this connection (limit {})",
                    self.max_in_flight
                ),
            ));
        }
        if h.flags & (FLAG_REMOTE_OPEN | FLAG_NO_DATA) != 0 {
            return Verdict::Reply(envelope::error_frame(
                id,
                Code::INVALID_ARGUMENT,
                format!(
                    "streaming requests are not supported (frame flags {:#04x})",
                    h.flags
                ),
            ));
        }
        let req = match envelope::decode_request(f.body()) {
            Ok(r) => r,
            Err(e) => {
                return Verdict::Reply(envelope::error_frame(
                    id,
                    Code::INVALID_ARGUMENT,
                    e.to_string(),
                ))
            }
        };
        let Some(m) = methods::table().lookup(&req.service, &req.method) else {
            tracing::warn!(conn, stream = id, service = %req.service, method = %req.method, "unknown method, not forwarded");
            return Verdict::Reply(envelope::error_frame(
                id,
                Code::UNIMPLEMENTED,
                format!(
                    "{}/{}: unknown service or method (not forwarded)",
                    req.service, req.method
                ),
            ));
        };
        let hook = self.hooks.get(&m.request_type).cloned();
        if m.handling == Handling::Passthrough {
            tracing::debug!(conn, stream = id, service = %m.service, method = %m.name, "passthrough");
            return Verdict::Forward(Pending::plain(hook));
        }
        let ty = m.request_type.as_str();
        let msg = match input::decode_request(&m.request, &req.payload) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(conn, stream = id, request_type = ty, error = %e, "malformed payload, not forwarded");
                return Verdict::Reply(envelope::error_frame(
                    id,
                    Code::INVALID_ARGUMENT,
                    format!("{ty}: malformed request payload: {e}"),
                ));
            }
        };
        let input = match input::to_policy_input(&*msg, self.shape) {
            Ok(input) => input,
            Err(e) => {
                // kata-agent refuses such a request before its policy runs: fail closed.
                let reason = e.to_string();
                self.log_decision(m, conn, id, Err(&reason), self.policy().digest(), 0);
                return Verdict::Reply(envelope::error_frame(
                    id,
                    Code::INVALID_ARGUMENT,
                    format!("{ty}: refused before policy evaluation: {e}"),
                ));
            }
        };
        if let Some(capture) = &self.capture {
            capture.record(ty, &input);
        }
        match self.decide(m, &input, conn, id).action {
            Action::Forward { blank_data, ops } => Verdict::Forward(Pending {
                blank_data,
                hook,
                ops,
            }),
            Action::Answer { code: Code::OK, .. } => Verdict::Reply(envelope::ok_frame(id, &[])),
            Action::Answer { code, message } => {
                Verdict::Reply(envelope::error_frame(id, code, message))
            }
        }
    }

    /// Writes one decision-log line (every decided or refused request gets exactly one)
    /// and returns its decision id. `outcome` is `Err(reason)` for a denial.
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
            request_type = %m.request_type, allowed, reason, policy, eval_us,
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
        let ty = m.request_type.as_str();
        let policy = self.policy();
        let started = Instant::now();
        let (mut decision, ops) = policy.decide_with_ops(ty, input);
        let eval_us = started.elapsed().as_micros() as u64;
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
                tracing::debug!(decision_id, request_type = ty, policy_output = %detail, "policy output for denial");
            }
        }
        if overridden {
            tracing::warn!(
                decision_id,
                request_type = ty,
                reason,
                "AllowRequestsFailingPolicy: denied request allowed"
            );
        }
        let ops = ops.map(|o| (policy.clone(), o));
        let action = match &decision {
            Decision::Allow if m.handling == Handling::SetPolicy => self.set_policy(input),
            Decision::Allow => Action::Forward {
                blank_data: false,
                ops,
            },
            _ if overridden => Action::Forward {
                blank_data: false,
                ops,
            },
            _ if m.handling == Handling::PolicyBlankDataOnDeny => Action::Forward {
                blank_data: true,
                ops: None,
            },
            Decision::Deny { .. } if self.endpoint_list => Action::Answer {
                code: Code::UNIMPLEMENTED,
                message: format!("{ty} is blocked"),
            },
            Decision::Deny { reason, .. } => Action::Answer {
                code: Code::PERMISSION_DENIED,
                message: format!("{ty} is blocked by policy: {reason}"),
            },
            Decision::Error(e) => Action::Answer {
                code: Code::INTERNAL,
                message: format!("{ty}: internal error: {e}"),
            },
        };
        Judgement {
            decision,
            overridden,
            action,
        }
    }

    /// Answers an allowed SetPolicy: compile the new policy completely, then swap.
    fn set_policy(&self, input: &serde_json::Value) -> Action {
        let text = input
            .get("policy")
            .and_then(|p| p.as_str())
            .unwrap_or_default();
        let old = self.policy();
        match Policy::load_with("SetPolicy", text, old.version(), old.options()) {
            Ok(new) => {
                let new_digest = new.digest().to_string();
                self.swap_policy(new);
                tracing::warn!(old = old.digest(), new = %new_digest, "policy replaced by SetPolicy");
                Action::Answer {
                    code: Code::OK,
                    message: String::new(),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "SetPolicy: new policy rejected, old policy stays");
                Action::Answer {
                    code: Code::INVALID_ARGUMENT,
                    message: format!("SetPolicyRequest: {e}"),
                }
            }
        }
    }
}
