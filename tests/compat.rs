//! Compatibility suite on the real genpolicy scenarios in ../shared/peers/kata-genpolicy.
//!
//! Each recorded input is turned back into its protobuf request, sent over ttrpc
//! through agent-warden (that scenario's policy, under the profile of the kata-agent that
//! recorded it: `kata = "2024"`, Rego v0, a legacy input shape), and the
//! decision must equal outputs.json. Because every recorded decision is an allow,
//! hostile variants of the recorded requests are derived too; their expected decision
//! comes from evaluating the same policy the way kata-agent does (a fresh regorus
//! engine, the input as a JSON string, `data.agent_policy.<Type>`).

mod common;

use agent_warden::policy::Decision;
use agent_warden::wire::methods;
use common::peers::*;
use common::*;
use serde_json::{json, Value};

/// kata-agent's way: regorus, input as a JSON string, eval_query on the rule.
struct KataReference(regorus::Engine);

impl KataReference {
    fn new(policy: &str) -> Self {
        let mut e = regorus::Engine::new();
        e.set_rego_v0(true);
        e.set_strict_builtin_errors(false);
        e.set_policy_length_config(regorus::utils::limits::PolicyLengthConfig {
            max_col: std::num::NonZeroU32::new(1 << 20).unwrap(),
            max_file_bytes: std::num::NonZeroUsize::new(64 << 20).unwrap(),
            max_lines: std::num::NonZeroUsize::new(1 << 22).unwrap(),
        });
        e.add_policy("policy.rego".into(), policy.into()).unwrap();
        KataReference(e)
    }
    fn allowed(&self, ty: &str, input: &Value) -> bool {
        let mut e = self.0.clone();
        e.set_input_json(&input.to_string()).unwrap();
        let r = e
            .eval_query(format!("data.agent_policy.{ty}"), false)
            .unwrap();
        match r
            .result
            .first()
            .and_then(|r| r.expressions.first())
            .map(|e| &e.value)
        {
            Some(regorus::Value::Bool(b)) => *b,
            Some(v @ regorus::Value::Object(_)) => v["allowed"] == regorus::Value::Bool(true),
            _ => false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_scenarios_decide_as_recorded_and_hostile_variants_as_kata_would() {
    let Some(dir) = peers_dir() else { return };
    let scenarios = scenarios(&dir);
    let (mut recorded, mut hostile, mut hostile_denied, mut fast_allows, mut constant_allows) =
        (0, 0, 0, 0, 0);
    let mut every_type = 0;
    for scenario in &scenarios {
        let Scenario {
            name,
            policy,
            inputs,
            outputs,
            rego,
            shape,
            ..
        } = scenario;
        let shape = *shape;
        let h = Harness::start_with(policy, *rego, shape).await;
        h.agent.release(100_000); // long polls in the recordings answer at once
        let client = h.client().await;
        let reference = KataReference::new(policy);
        let mut seen_types = std::collections::HashSet::new();
        for (i, ((ty, input), expected)) in inputs.iter().zip(outputs.iter()).enumerate() {
            if ty == "AllowRequestsFailingPolicy" {
                let (v, _) = h
                    .guard
                    .policy()
                    .eval(ty, regorus::Value::new_object())
                    .unwrap();
                assert_eq!(
                    v == Some(regorus::Value::Bool(true)),
                    *expected,
                    "{name} line {i}: {ty}"
                );
                continue;
            }
            assert_eq!(
                send(&client, shape, ty, input).await,
                *expected,
                "{name} line {i}: {ty}"
            );
            recorded += 1;
            if !seen_types.insert(ty.clone()) {
                continue; // one set of variants per request type and scenario
            }
            for (label, variant) in variants(ty, input) {
                let want = reference.allowed(ty, &variant);
                let got = send(&client, shape, ty, &variant).await;
                assert_eq!(
                    got, want,
                    "{name}: variant {label:?} of line {i}: agent-warden {got}, kata-style {want}"
                );
                hostile += 1;
                hostile_denied += usize::from(!got);
            }
        }
        // Every request type with an empty input, decided by the policy itself against
        // kata's evaluation: covers the constant rules, allowed and denied, also for
        // types the recordings never sent.
        for ty in methods::table().policy_request_types() {
            let empty = json!({});
            let got = h.guard.policy().decide(ty, &empty) == Decision::Allow;
            assert_eq!(
                got,
                reference.allowed(ty, &empty),
                "{name}: {ty} with input {{}}"
            );
            every_type += 1;
        }
        // Many allows came from the compiled fast path and from constant rules: these
        // decisions checked both against kata's.
        let fast = h.guard.policy().fast_allows();
        let constant = h.guard.policy().constant_allows();
        assert!(
            fast >= 3 && constant >= 5,
            "{name}: only {fast} allows from the compiled fast path, {constant} from constant rules"
        );
        fast_allows += fast;
        constant_allows += constant;
        h.stop().await;
    }
    eprintln!("compat: {recorded} recorded requests, {every_type} request types with an empty input, {hostile} hostile variants ({hostile_denied} denied), {fast_allows} allows from the compiled fast path, {constant_allows} from constant rules");
    assert!(recorded >= 150, "only {recorded} recorded requests checked");
    assert!(every_type >= 6 * 40, "{every_type} empty-input decisions");
    assert!(
        fast_allows >= 60 && constant_allows >= 60,
        "{fast_allows} compiled and {constant_allows} constant allows"
    );
    assert!(
        hostile >= 30 && hostile_denied >= 25,
        "{hostile} variants, {hostile_denied} denied"
    );
}
