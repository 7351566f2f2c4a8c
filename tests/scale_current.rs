//! The growing pods of tests/scale/current.rs (today's genpolicy rules and data, issue
//! 21) against kata-agent's own policy code (`kata-policy-oracle`, ../shared/kata-reference):
//! every request of each pod is sent in protobuf form, as the kata runtime sends it, and
//! must be allowed; each mutation of the measured CreateContainer, sent after the same
//! prefix, must be denied. The JSON kata builds from those bytes (the oracle's echo) must
//! equal agent-warden's input for them and the generator's JSON: the generator writes
//! exactly the input kata-agent gives its policy.
//!
//! Without the oracle or ../shared/peers/kata-genpolicy-current these tests skip; under
//! `CI=true` they fail.

mod common;
mod scale;

use std::path::{Path, PathBuf};

use agent_warden::wire::input::InputShape;
use common::json_differences;
use common::oracle::{oracle_binary, Oracle};
use common::peers::{decode, encode};
use scale::current::{scenario, Dim};
use serde_json::Value;

fn shared_dir(test: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if dir
        .join("peers/kata-genpolicy-current/rules.rego")
        .is_file()
    {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{test}: today's genpolicy rules missing at {} (required when CI=true)",
            dir.join("peers/kata-genpolicy-current").display()
        );
    }
    eprintln!("{test}: SKIPPED: no ../shared/peers/kata-genpolicy-current");
    None
}

fn bytes(ty: &str, input: &Value) -> Vec<u8> {
    encode(ty, input, InputShape::Current).unwrap_or_else(|e| panic!("{ty}: cannot encode: {e}"))
}

/// The oracle's echo, agent-warden's input and the generated input are one JSON.
fn assert_same_input(
    what: &str,
    ty: &str,
    generated: &Value,
    payload: &[u8],
    echo: &Option<String>,
) {
    let ours = decode(ty, payload, InputShape::Current);
    let kata: Value = serde_json::from_str(echo.as_deref().expect("the oracle echoes its input"))
        .expect("the echo is JSON");
    let d = json_differences(&kata, &ours, "");
    assert!(
        d.is_empty(),
        "{what}: kata's input vs agent-warden's:\n{}",
        d.join("\n")
    );
    let d = json_differences(&kata, generated, "");
    assert!(
        d.is_empty(),
        "{what}: kata's input vs the generated one:\n{}",
        d.join("\n")
    );
}

/// Each size of `dim`: the pod allowed request by request, every mutation denied.
/// Returns (requests checked, mutations checked).
fn check(dim: Dim) -> (usize, usize) {
    let test = format!("scale_current {}", dim.name());
    let (Some(bin), Some(shared)) = (oracle_binary(&test), shared_dir(&test)) else {
        return (0, 0);
    };
    let (mut requests, mut mutations) = (0, 0);
    for &n in dim.sizes() {
        let sc = scenario(&shared, dim, n);
        assert_eq!(sc.requests[sc.measured].0, "CreateContainerRequest");
        assert!(sc.mutations.len() >= 3, "{}: too few mutations", sc.name);
        let mut oracle = Oracle::start(&bin, &sc.policy, false);
        let encoded: Vec<(String, Vec<u8>)> = sc
            .requests
            .iter()
            .map(|(ty, input)| (ty.clone(), bytes(ty, input)))
            .collect();

        // The prefix, then the mutations (a denial leaves the policy state as it was),
        // then the measured request and the rest of the pod.
        // Each of `requests[range]` allowed, with kata's input equal to ours.
        let allowed_as_generated = |oracle: &mut Oracle, range: std::ops::Range<usize>| {
            let start = range.start;
            for (j, a) in oracle.ask_all(&encoded[range]).iter().enumerate() {
                let i = start + j;
                let (ty, input) = &sc.requests[i];
                assert_eq!(
                    a.allowed,
                    Some(true),
                    "{} request {i} ({ty}) not allowed: {a:?}",
                    sc.name
                );
                assert_same_input(
                    &format!("{} request {i}", sc.name),
                    ty,
                    input,
                    &encoded[i].1,
                    &a.input,
                );
            }
        };
        allowed_as_generated(&mut oracle, 0..sc.measured);
        for (label, input) in &sc.mutations {
            let payload = bytes("CreateContainerRequest", input);
            let a = oracle.ask("CreateContainerRequest", &payload);
            assert_eq!(
                a.allowed,
                Some(false),
                "{}: mutation {label:?} not denied: {a:?}",
                sc.name
            );
            mutations += 1;
        }
        allowed_as_generated(&mut oracle, sc.measured..sc.requests.len());
        requests += sc.requests.len();
        eprintln!(
            "{}: {} requests allowed, {} mutations denied",
            sc.name,
            sc.requests.len(),
            sc.mutations.len()
        );
    }
    (requests, mutations)
}

#[test]
fn env_vars_grow_as_genpolicy_emits_them_and_kata_agrees() {
    check(Dim::Env);
}

#[test]
fn mounts_grow_as_genpolicy_emits_them_and_kata_agrees() {
    check(Dim::Mounts);
}

#[test]
fn containers_grow_as_genpolicy_emits_them_and_kata_agrees() {
    check(Dim::Containers);
}

#[test]
fn scenarios_are_deterministic_and_grow_with_n() {
    let Some(shared) = shared_dir("scale_current deterministic") else {
        return;
    };
    for dim in Dim::ALL {
        let sizes = dim.sizes();
        let a = scenario(&shared, dim, sizes[1]);
        let b = scenario(&shared, dim, sizes[1]);
        assert_eq!(a.policy, b.policy);
        assert_eq!(a.requests, b.requests);
        assert_eq!(a.mutations, b.mutations);
        let small = scenario(&shared, dim, sizes[0]);
        let big = scenario(&shared, dim, *sizes.last().unwrap());
        assert!(big.policy.len() > small.policy.len(), "{}", dim.name());
        let len = |s: &scale::Scenario| s.requests[s.measured].1.to_string().len();
        assert!(
            len(&big) > len(&small) || big.requests.len() > small.requests.len(),
            "{}",
            dim.name()
        );
    }
}
