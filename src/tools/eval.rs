//! `agent-warden policy eval --type T --input FILE`: decide one request as `serve` would
//! and print the decision as JSON.
use std::path::{Path, PathBuf};

use clap::Args;

use super::{known_request_type, serve_guard, verdict, PolicyChoice, PERMISSIVE_RULE};
use crate::policy::sources::read_text;
use crate::policy::{Decision, Policy};
use crate::serve::judge::{Answer, Judgement, Pending, Verdict};
use crate::wire::encode;
use crate::wire::input::InputShape;
use crate::wire::methods;

/// Flags of `policy eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The request type (policy rule), e.g. CreateContainerRequest: the `kind` of a
    /// capture line.
    #[arg(long, visible_alias = "type", value_name = "REQUEST_TYPE")]
    pub kind: String,
    /// The policy input (JSON, as kata-agent builds it for this request type).
    #[arg(long)]
    pub input: PathBuf,
    /// A data document (JSON object) merged under `data`, e.g. {"pstate": {...}}.
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub source: PolicyChoice,
}

fn read_json(path: &Path, what: &str) -> anyhow::Result<serde_json::Value> {
    let text = read_text(path, what)?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{what} {} is not valid JSON: {e}", path.display()))
}

/// What `serve` does with a request, in words: `forward`, `forward, answer data
/// blanked`, or the status it answers with.
fn serve_action(j: &Judgement) -> String {
    match &j.verdict {
        Verdict::Forward(Pending {
            blank_data: true, ..
        }) => "forward, answer data blanked".to_string(),
        Verdict::Forward(_) => "forward".to_string(),
        Verdict::Answer(Answer { code, message }) if message.is_empty() => {
            format!("answer {code:?}")
        }
        Verdict::Answer(Answer { code, message }) => format!("answer {code:?}: {message}"),
        Verdict::Close(why) => format!("close the connection: {why}"),
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
    kind: &'a str,
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

pub(super) fn eval(a: &EvalArgs, out: &mut impl std::io::Write) -> anyhow::Result<i32> {
    known_request_type(&a.kind)?;
    let input = read_json(&a.input, "input")?;
    let guard = serve_guard(&a.source)?;
    let policy = guard.policy();
    let name = policy.source_name().to_string();
    if let Some(path) = &a.data {
        seed_state(&policy, &read_json(path, "data document")?)
            .map_err(|e| anyhow::anyhow!("data document {}: {e:#}", path.display()))?;
    }
    if let Some(w) = input_warning(&a.kind, &input) {
        eprintln!(
            "agent-warden: warning: the input is not a {} kata-agent would send: {w}",
            a.kind
        );
    }
    let method = methods::table()
        .by_request_type(&a.kind)
        .ok_or_else(|| anyhow::anyhow!("unknown request type {:?}", a.kind))?;
    let o = evaluate(&policy, &a.kind, &input);
    let judged = guard.decide(method, &input, 0, 0);
    let (decision, reason) = verdict(&judged.decision);
    let report = EvalReport {
        kind: &a.kind,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::RegoVersion;
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
                matches!(&o.decision, Decision::Deny { reason, .. } if reason == "t.rego:5: CreateContainerRequest := false if { … (in CreateContainerRequest); that body held and its value denied; the other bodies got furthest at line 4: input.container_id == \"ok\"")
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
    fn input_warning_names_a_misspelt_key() {
        assert_eq!(
            input_warning("CreateContainerRequest", &json!({"container_id": "c"})),
            None
        );
        let w = input_warning("CreateContainerRequest", &json!({"containerid": "c"})).unwrap();
        assert!(w.contains("containerid"), "{w}");
    }
}
