//! kata-agent's own code as the referee of decisions: `kata-policy-oracle` from
//! ../shared/kata-reference (kata's policy crate and regorus at the revision kata pins)
//! decides the same requests as agent-warden, and the decisions must be equal.
//!
//! - Recorded: every line of the six genpolicy scenarios, as recorded (request mode,
//!   Rego v0), against agent-warden over ttrpc under the scenario's legacy profile.
//! - Mutated: seeded, type-preserving random mutations of the recorded requests and of
//!   compat.rs's hostile variants (strings, numbers, bools, list lengths, map keys),
//!   at least 2,000 per run, through agent-warden over ttrpc with the compiled and
//!   constant fast paths on. `KATA_ORACLE_SEED` and `KATA_ORACLE_MUTATIONS` override
//!   the seed and the count.
//!
//! - Generated: the growth scenarios of tests/scale (image layers, env vars, mounts,
//!   containers), each pod's requests and mutations of its grown request.
//!
//! The oracle is found at `$KATA_REFERENCE/bin/kata-policy-oracle` (default
//! ../shared/kata-reference); without it the tests fail under CI=true and skip otherwise.

mod common;
mod scale;

use agent_warden::policy::{LoadOptions, Policy, RegoVersion};
use agent_warden::serve::judge::Guard;
use common::oracle::{oracle_binary, Oracle};
use common::peers::*;
use common::Harness;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_genpolicy_requests_decide_as_kata_agent_decides() {
    let (Some(bin), Some(dir)) = (oracle_binary("kata_oracle"), peers_dir()) else {
        return;
    };
    let (mut equal, mut total, mut as_recorded) = (0, 0, 0);
    let mut disagreements = Vec::new();
    for s in scenarios(&dir) {
        // One oracle process per scenario: one kata-agent's life.
        let mut oracle = Oracle::start(&bin, &s.policy, s.rego == RegoVersion::V0);
        let h = warden(&s).await;
        h.agent.release(100_000); // long polls in the recordings answer at once
        let client = h.client().await;
        for (i, ((ty, input), recorded)) in s.inputs.iter().zip(&s.outputs).enumerate() {
            let kata = decide(&mut oracle, ty, input);
            let ours = if ty == "AllowRequestsFailingPolicy" {
                // Read by the policy itself, never sent by the host.
                if h.guard.policy().is_permissive() {
                    Outcome::Allow
                } else {
                    Outcome::Deny
                }
            } else {
                let payload = encode(ty, input, s.shape)
                    .unwrap_or_else(|e| panic!("{} line {i}: {ty}: {e}", s.name));
                send_bytes(&client, ty, payload).await
            };
            total += 1;
            as_recorded += usize::from((kata == Outcome::Allow) == *recorded);
            if ours == kata {
                equal += 1;
            } else {
                disagreements.push(format!(
                    "{} line {i}: {ty}: agent-warden {ours:?}, kata {kata:?}\n  request: {input}",
                    s.name
                ));
            }
        }
        h.stop().await;
    }
    eprintln!("kata oracle, recorded genpolicy requests: decisions equal {equal}/{total} (the oracle matched outputs.json on {as_recorded}/{total})");
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    assert_eq!(as_recorded, total, "the oracle differs from outputs.json");
    assert!(total >= 190, "only {total} recorded lines");
}

/// agent-warden with the scenario's policy and profile, fast paths on, behind a
/// recording agent. A debug build on a loaded CI machine must not turn a slow denial
/// into a time-limit error, so the evaluation time limit is a minute.
async fn warden(s: &Scenario) -> Harness {
    let options = LoadOptions {
        eval_timeout: std::time::Duration::from_secs(60),
        // Denials decided by the compiled programs too (the default), held to kata's.
        ..LoadOptions::default()
    };
    let policy = Policy::load_with(&s.name, &s.policy, s.rego, options).unwrap();
    Harness::start_guard(Guard::new(policy, s.shape)).await
}

/// kata-agent's decision on this policy input (request mode); the oracle is a blocking
/// child process.
fn decide(oracle: &mut Oracle, ty: &str, input: &Value) -> Outcome {
    tokio::task::block_in_place(|| Outcome::from(&oracle.ask_input(ty, input)))
}

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|e| panic!("{name}={v:?}: {e}")))
        .unwrap_or(default)
}

/// Strings a mutation may put in: path tricks, shell, env, unicode, control bytes.
const STRINGS: &[&str] = &[
    "",
    "/etc/passwd",
    "../../etc/shadow",
    "/run/kata-containers/shared/containers/../../../etc/shadow",
    "$(id)",
    "LD_PRELOAD=/tmp/evil.so",
    "sh",
    "-c",
    "0",
    "true",
    "ünï©ødé",
    "a\nb",
    "a\u{0}b",
    "*",
    ".*",
    "rw",
    "bind",
];

/// Every node of a JSON value, as a path of object keys and array indices.
fn paths(v: &Value, at: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                at.push(json!(k));
                paths(c, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                at.push(json!(i));
                paths(c, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn node<'a>(v: &'a mut Value, path: &[Value]) -> &'a mut Value {
    path.iter().fold(v, |v, k| match k {
        Value::String(k) => &mut v[k.as_str()],
        Value::Number(i) => &mut v[i.as_u64().unwrap() as usize],
        _ => unreachable!(),
    })
}

/// Strings found anywhere in `v` (a mutation may move one to another place).
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Object(m) => m.values().for_each(|c| strings(c, out)),
        Value::Array(a) => a.iter().for_each(|c| strings(c, out)),
        _ => {}
    }
}

/// One type-preserving change at a random node: a string for a string, a number for
/// a number, a flipped bool, a list one longer or shorter or empty, a map with a key
/// renamed (a message's key renamed is refused by the encoder, and retried).
fn mutate_once(rng: &mut Rng, v: &mut Value) {
    let mut all = Vec::new();
    paths(v, &mut Vec::new(), &mut all);
    let mut pool = Vec::new();
    strings(v, &mut pool);
    let path = rng.pick(&all).clone();
    let n = node(v, &path);
    match n {
        Value::String(s) => {
            *s = match rng.below(6) {
                0 => rng.pick(STRINGS).to_string(),
                1 if !pool.is_empty() => rng.pick(&pool).clone(),
                2 => format!("{s}{}", rng.pick(&["x", "/", "/..", " ", "="])),
                3 => s.chars().take(s.chars().count() / 2).collect(),
                4 if !s.is_empty() => {
                    let mut c: Vec<char> = s.chars().collect();
                    let i = rng.below(c.len());
                    c[i] = *rng.pick(&['a', 'Z', '0', '/', '.', '-', '_', '$']);
                    c.into_iter().collect()
                }
                _ => String::new(),
            }
        }
        Value::Number(x) => {
            *n = if let Some(u) = x.as_u64() {
                json!(*rng.pick(&[
                    0,
                    1,
                    u.wrapping_add(1),
                    u.saturating_sub(1),
                    u.saturating_mul(2),
                    u / 2,
                    u64::from(u32::MAX),
                    1 << 40,
                ]))
            } else if let Some(i) = x.as_i64() {
                json!(*rng.pick(&[0, -1, i.wrapping_add(1), i.wrapping_sub(1), i64::MIN]))
            } else {
                json!(x.as_f64().unwrap_or(0.0) * 2.0 + 0.5)
            }
        }
        Value::Bool(b) => *b = !*b,
        Value::Array(a) => match rng.below(3) {
            0 if !a.is_empty() => {
                a.remove(rng.below(a.len()));
            }
            1 if !a.is_empty() => {
                let i = rng.below(a.len());
                a.insert(i, a[i].clone());
            }
            _ => a.clear(),
        },
        Value::Object(m) if !m.is_empty() => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = rng.pick(&keys).clone();
            let c = m.remove(&k).unwrap();
            m.insert(format!("{k}{}", rng.pick(&["x", ".io", "/"])), c);
        }
        _ => {}
    }
}

/// In the legacy CopyFile input, `symlink_src` is set only for a symlink (file_mode's
/// type bits): a mutation that breaks this is made consistent again, either way.
fn copy_file_consistent(rng: &mut Rng, v: &mut Value) {
    const S_IFMT: u64 = 0o170000;
    const S_IFLNK: u64 = 0o120000;
    let mode = v["file_mode"].as_u64().unwrap_or(0);
    let link = v["symlink_src"].as_str().unwrap_or("");
    if mode & S_IFMT != S_IFLNK && !link.is_empty() {
        if rng.below(2) == 0 {
            v["symlink_src"] = json!("");
        } else {
            v["file_mode"] = json!(S_IFLNK | (mode & 0o7777));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_requests_through_ttrpc_decide_as_kata_agent_decides() {
    let (Some(bin), Some(dir)) = (oracle_binary("kata_oracle"), peers_dir()) else {
        return;
    };
    let seed = env_or("KATA_ORACLE_SEED", 12);
    let wanted = env_or("KATA_ORACLE_MUTATIONS", 2_004) as usize;
    let scenarios = scenarios(&dir);
    let per_scenario = wanted.div_ceil(scenarios.len());
    let mut rng = Rng(seed);
    let (mut equal, mut total, mut refused_by_encoder, mut denied) = (0, 0, 0, 0);
    let (mut fast, mut constant, mut fast_denied) = (0, 0, 0);
    let mut disagreements = Vec::new();
    for s in &scenarios {
        let mut oracle = Oracle::start(&bin, &s.policy, s.rego == RegoVersion::V0);
        let h = warden(s).await;
        h.agent.release(1_000_000); // long polls answer at once
        let client = h.client().await;
        // The bases: the recorded requests, and compat.rs's hostile variants of them.
        let mut bases: Vec<(String, Value)> = s.requests().cloned().collect();
        for (ty, input) in s.requests() {
            for (_, v) in variants(ty, input) {
                bases.push((ty.clone(), v));
            }
        }
        let hostile_from = s.requests().count();
        let mut cases = 0;
        while cases < per_scenario + (bases.len() - hostile_from) {
            // Each hostile variant once as it is, then mutated requests.
            let (ty, request) = if cases < bases.len() - hostile_from {
                bases[hostile_from + cases].clone()
            } else {
                let (ty, base) = rng.pick(&bases).clone();
                let mut v = base;
                for _ in 0..1 + rng.below(3) {
                    mutate_once(&mut rng, &mut v);
                }
                if ty == "CopyFileRequest" {
                    copy_file_consistent(&mut rng, &mut v);
                }
                (ty, v)
            };
            let payload = match encode(&ty, &request, s.shape) {
                Ok(p) => p,
                Err(_) => {
                    // Not a request of this type (an out-of-range number, a renamed
                    // message key): the host could not have sent it. Try another.
                    refused_by_encoder += 1;
                    continue;
                }
            };
            cases += 1;
            // The oracle gets the policy input decoded from the very bytes sent, in
            // request mode: its bytes mode builds today's (current-shape) input, but
            // these Rego v0 policies were written for the input of the 2024 kata-agent
            // that recorded them (symlink_src, pciPath, no Route flags, ...), which is
            // what the legacy profile decodes the bytes to. Both sides thus judge the
            // same JSON: what is compared is the decision logic.
            let input = decode(&ty, &payload, s.shape);
            let kata = decide(&mut oracle, &ty, &input);
            let ours = send_bytes(&client, &ty, payload).await;
            total += 1;
            denied += usize::from(kata != Outcome::Allow);
            if ours == kata {
                equal += 1;
            } else {
                disagreements.push(format!(
                    "{}: {ty}: agent-warden {ours:?}, kata {kata:?}\n  request: {input}",
                    s.name
                ));
            }
        }
        fast += h.guard.policy().fast_allows();
        fast_denied += h.guard.policy().fast_denials();
        constant += h.guard.policy().constant_allows();
        h.stop().await;
    }
    eprintln!("kata oracle, mutated requests over ttrpc (seed {seed}): decisions equal {equal}/{total} ({denied} not allowed by kata; {refused_by_encoder} mutations not encodable, redrawn; {fast} allows and {fast_denied} denials from the compiled fast path, {constant} allows from constant rules)");
    assert!(
        disagreements.is_empty(),
        "{} disagreements (seed {seed}):\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    assert!(total >= wanted, "only {total} mutated requests");
    // Both outcomes and both fast paths were exercised.
    assert!(
        denied >= total / 20 && total - denied >= total / 20,
        "{denied} of {total} denied"
    );
    assert!(
        fast > 0 && constant > 0 && fast_denied > 0,
        "{fast} compiled allows, {fast_denied} compiled denials, {constant} constant allows"
    );
}

/// The generated growth scenarios (tests/scale): the 2024 family at every layer count
/// (Rego v0, legacy input) and today's rules growing in env vars, mounts and
/// containers (Rego v1, current input). Every request of each pod is allowed by
/// kata-agent's own code, every mutation of its grown request (sent after the same
/// prefix) is denied, and agent-warden (over ttrpc, fast paths on) decides each
/// exactly as kata does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_growth_scenarios_decide_as_kata_agent_decides() {
    let (Some(bin), Some(_)) = (oracle_binary("kata_oracle"), peers_dir()) else {
        return;
    };
    use agent_warden::wire::input::InputShape;
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let mut pods = Vec::new();
    for n in scale::layers::LAYERS {
        pods.push((
            scale::layers::scenario(&shared, n),
            RegoVersion::V0,
            InputShape::Legacy,
        ));
    }
    for dim in scale::current::Dim::ALL {
        for &n in dim.sizes() {
            let g = scale::current::scenario(&shared, dim, n);
            pods.push((g, RegoVersion::V1, InputShape::Current));
        }
    }
    let (mut allowed, mut denied, mut fast_denials) = (0, 0, 0);
    let mut disagreements = Vec::new();
    for (g, rego, shape) in &pods {
        let s = Scenario {
            name: g.name.clone(),
            policy: g.policy.clone(),
            inputs: g.requests.clone(),
            outputs: Vec::new(),
            rego: *rego,
            shape: *shape,
        };
        let mut oracle = Oracle::start(&bin, &s.policy, *rego == RegoVersion::V0);
        let h = warden(&s).await;
        h.agent.release(1_000_000);
        let client = h.client().await;
        // The prefix, the mutations (denied: the state stays the prefix's), then the
        // grown request and the rest.
        let request =
            |(ty, v): &(String, Value)| (format!("{} {ty}", g.name), ty.clone(), v.clone(), true);
        let cases = g.requests[..g.measured]
            .iter()
            .map(request)
            .chain(g.mutations.iter().map(|(label, v)| {
                (
                    label.clone(),
                    "CreateContainerRequest".to_string(),
                    v.clone(),
                    false,
                )
            }))
            .chain(g.requests[g.measured..].iter().map(request));
        for (label, ty, input, allow) in cases {
            let payload = encode(&ty, &input, s.shape).unwrap_or_else(|e| panic!("{label}: {e}"));
            let kata = decide(&mut oracle, &ty, &decode(&ty, &payload, s.shape));
            let want = if allow { Outcome::Allow } else { Outcome::Deny };
            assert_eq!(
                kata, want,
                "{label}: kata-agent's decision is not the generator's"
            );
            let ours = send_bytes(&client, &ty, payload).await;
            if ours == kata {
                if allow {
                    allowed += 1;
                } else {
                    denied += 1;
                }
            } else {
                disagreements.push(format!("{label}: agent-warden {ours:?}, kata {kata:?}"));
            }
        }
        // Every generated pod's policy (today's rules too) keeps the compiled fast path
        // (`policy::trust` finds its arithmetic safe).
        assert!(
            h.guard.policy().fast_allows() > 0,
            "{}: no allow came from the compiled fast path",
            g.name
        );
        fast_denials += h.guard.policy().fast_denials();
        h.stop().await;
    }
    eprintln!("kata oracle, generated growth scenarios ({} pods): {allowed} allowed and {denied} denied as kata decides ({fast_denials} denials from the compiled fast path)", pods.len());
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    assert!(denied >= 3 * pods.len() - 1, "{denied} mutations");
    assert!(
        fast_denials > 0,
        "no denial came from the compiled fast path"
    );
}

/// Policies whose evaluation fails at run time, which kata-agent answers with an error
/// (the request does not run). regorus's compiled programs would treat the failing body
/// as not holding and allow through `not`, another body, or a print's argument:
/// - arithmetic on a string the host sent: agent-warden keeps such a policy on the
///   interpreter (`policy::trust`), whatever the settings;
/// - a function giving two values for one input (a conflict), here with
///   `fast_path = false` (with it on: `a_rule_giving_two_values_is_refused_as_kata_agent_refuses`).
///
/// Numbers, and inputs without a conflict, decide as kata too.
#[test]
fn a_policy_whose_evaluation_fails_is_refused_as_kata_agent_refuses() {
    use agent_warden::policy::LoadOptions;
    let Some(bin) = oracle_binary("kata_oracle") else {
        return;
    };
    let head = "package agent_policy\nimport rego.v1\ndefault ExecProcessRequest := false\n";
    let interpreted = LoadOptions {
        fast_path: false,
        ..LoadOptions::default()
    };
    let cases = [
        // Under `not`.
        ("ExecProcessRequest if {\n    not too_big(input.a)\n}\ntoo_big(x) if {\n    x + 1 > 5\n}\n", LoadOptions::default()),
        // In another body than the one that holds.
        ("ExecProcessRequest if input.ok\nExecProcessRequest if {\n    input.a * 2 == 4\n}\n", LoadOptions::default()),
        // In a print's argument.
        ("ExecProcessRequest if {\n    print(\"a + 1 =\", input.a + 1)\n    input.ok\n}\n", LoadOptions::default()),
        // A conflict under `not`, without the fast path.
        ("ExecProcessRequest if {\n    not size(input.ok)\n}\nsize(x) := 1 if x\nsize(x) := 2 if x\n", interpreted),
    ];
    for (body, options) in cases {
        let policy = format!("{head}{body}");
        let ours = Policy::load_with("p.rego", &policy, RegoVersion::V1, options).unwrap();
        let inputs = [
            json!({"a": "x", "ok": true}),
            json!({"a": 2, "ok": true}),
            json!({"a": 7, "ok": false}),
        ];
        exec_decided_as_kata(&bin, &policy, &ours, &inputs);
        assert_eq!(
            ours.fast_allows() + ours.fast_denials(),
            0,
            "{body}: the fast path decided"
        );
    }
}

/// A rule that gives two values for one input fails kata-agent's evaluation (the request
/// is refused); regorus's VM made the value undefined (or took the last one), which
/// `not` turned into an allow. With the fast path on, such a request must still be
/// refused, and the requests without a conflict still decided by the fast path.
#[test]
fn a_rule_giving_two_values_is_refused_as_kata_agent_refuses() {
    let Some(bin) = oracle_binary("kata_oracle") else {
        return;
    };
    let head = "package agent_policy\nimport rego.v1\ndefault ExecProcessRequest := false\n";
    let cases = [
        // Two complete definitions that both hold: a request bad in two ways.
        "ExecProcessRequest if {\n    not deny_reason\n}\ndeny_reason := \"no shells\" if input.args[0] == \"sh\"\ndeny_reason := \"no root\" if input.uid == 0\n",
        // One function body with two solutions.
        "ExecProcessRequest if {\n    not first(input.args) == \"sh\"\n}\nfirst(xs) := x if {\n    some x in xs\n    x != \"\"\n}\n",
        // Two function definitions, compared with `!=`.
        "ExecProcessRequest if {\n    kind(input.uid) != \"root\"\n}\nkind(u) := \"root\" if u == 0\nkind(u) := \"user\" if u < 1000\n",
    ];
    let inputs = [
        json!({"args": ["sh"], "uid": 0}),
        json!({"args": ["sh"], "uid": 1}),
        json!({"args": ["ls"], "uid": 1}),
        json!({"args": ["ls", "sh"], "uid": 5000}),
        json!({"args": ["sh", "sh"], "uid": 0}),
    ];
    let mut errors = 0;
    for body in cases {
        let policy = format!("{head}{body}");
        let ours = Policy::load("p.rego", &policy, RegoVersion::V1).unwrap();
        errors += exec_decided_as_kata(&bin, &policy, &ours, &inputs);
        assert!(
            ours.fast_allows() + ours.fast_denials() > 0,
            "{body}: the fast path was turned off instead"
        );
    }
    // deny_reason: sh as root, twice; first: two args; kind: uid 0.
    assert_eq!(errors, 5);
}

/// `some x in C` over a string, a number or null fails kata-agent's evaluation (the
/// request is refused); regorus's VM iterated nothing, which `not` turned into an allow.
#[test]
fn iteration_over_a_non_collection_is_refused_as_kata_agent_refuses() {
    let Some(bin) = oracle_binary("kata_oracle") else {
        return;
    };
    let policy = "package agent_policy\nimport rego.v1\ndefault ExecProcessRequest := false\nExecProcessRequest if {\n    not uses_shell\n}\nuses_shell if {\n    some arg in input.args\n    arg == \"sh\"\n}\n";
    let ours = Policy::load("p.rego", policy, RegoVersion::V1).unwrap();
    let inputs = [
        json!({"args": ["ls"]}),
        json!({"args": ["sh"]}),
        json!({"args": "sh"}),
        json!({"args": 5}),
        json!({"args": null}),
        json!({"args": {"a": "sh"}}),
        json!({}),
    ];
    assert_eq!(exec_decided_as_kata(&bin, policy, &ours, &inputs), 3);
    assert!(
        ours.fast_allows() > 0,
        "the fast path was turned off instead"
    );
}

/// kata-agent's regorus has only some builtin families (no `time.*`, `net.*`, `glob.*`,
/// …): a policy that calls one fails kata's evaluation, and must fail ours, also under
/// a `not` (which a builtin that answers would turn into an allow or a denial).
#[test]
fn a_builtin_kata_agent_does_not_have_fails_as_in_kata_agent() {
    let Some(bin) = oracle_binary("kata_oracle") else {
        return;
    };
    let head = "package agent_policy\nimport rego.v1\ndefault ExecProcessRequest := false\n";
    let mut errors = 0;
    for body in [
        "ExecProcessRequest if {\n    not net.cidr_contains(\"10.0.0.0/8\", input.ip)\n}\n",
        "ExecProcessRequest if {\n    not time.parse_rfc3339_ns(input.t) > 0\n}\n",
        "ExecProcessRequest if {\n    not glob.match(\"a*\", [], input.s)\n}\n",
        "ExecProcessRequest if {\n    startswith(input.s, \"a\")\n    input.ip != \"\"\n}\n",
    ] {
        let policy = format!("{head}{body}");
        let ours = Policy::load("p.rego", &policy, RegoVersion::V1).unwrap();
        let inputs = [
            json!({"ip": "10.1.2.3", "t": "zz", "s": "ab"}),
            json!({"ip": "192.168.0.1", "t": "2026-12-03T00:00:00Z", "s": "b"}),
        ];
        errors += exec_decided_as_kata(&bin, &policy, &ours, &inputs);
    }
    // The three missing builtins on both inputs; the core ones answer.
    assert_eq!(errors, 6);
}

/// Each of `inputs` decided as an ExecProcessRequest by kata's own code (a fresh oracle on
/// `policy`) and by `ours`; the first difference fails the test. Returns how many kata
/// answered with an error.
fn exec_decided_as_kata(
    bin: &std::path::Path,
    policy: &str,
    ours: &Policy,
    inputs: &[Value],
) -> usize {
    let mut oracle = Oracle::start(bin, policy, false);
    let mut errors = 0;
    for input in inputs {
        let kata = decide_blocking(&mut oracle, "ExecProcessRequest", input);
        let got = outcome(ours.decide("ExecProcessRequest", input));
        assert_eq!(got, kata, "{policy}\ninput {input}");
        errors += usize::from(kata == Outcome::Error);
    }
    errors
}

/// A decision of agent-warden's policy as the outcome kata's would be compared with.
fn outcome(d: agent_warden::policy::Decision) -> Outcome {
    use agent_warden::policy::Decision;
    match d {
        Decision::Allow => Outcome::Allow,
        Decision::Deny { .. } => Outcome::Deny,
        Decision::Error(_) => Outcome::Error,
    }
}

fn decide_blocking(oracle: &mut Oracle, ty: &str, input: &Value) -> Outcome {
    Outcome::from(&oracle.ask_input(ty, input))
}
