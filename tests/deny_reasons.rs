//! Denial reasons on real genpolicy policies (../shared/peers/kata-genpolicy): recorded
//! requests are mutated the ways a host would be refused (another image, an extra
//! environment variable, an extra mount, a command not in the policy), and the reason
//! must name the check that failed: the rule, and a line of the policy that holds the
//! expression quoted. No input value may appear in it (it goes to the host).

mod common;
mod scale;

use agent_warden::policy::explain::Explanation;
use agent_warden::policy::{Decision, LoadOptions, Policy};
use common::peers::*;
use serde_json::{json, Value};

/// Loaded as serve loads it, except that a denial's explanation may take a minute: a
/// debug build on a loaded 2-core machine can need more than serve's 1 s.
fn load(s: &Scenario) -> Policy {
    let options = LoadOptions {
        explain_timeout: Some(std::time::Duration::from_secs(60)),
        ..LoadOptions::default()
    };
    Policy::load_with("policy.rego", &s.policy, s.rego, options).unwrap()
}

/// The denial's reason and the walk it came from.
fn denial(p: &Policy, ty: &str, input: &Value) -> (String, Explanation) {
    let reason = match p.decide(ty, input) {
        Decision::Deny { reason, .. } => reason,
        d => panic!("{ty} not denied: {d:?}"),
    };
    let value: regorus::Value = serde_json::from_value(input.clone()).unwrap();
    let (explanation, _) = p.explained(ty, value).unwrap();
    assert_eq!(reason, explanation.to_string());
    (reason, explanation)
}

/// The deepest step is `rule`, its text contains `check`, and the policy's line it
/// names holds that text.
fn assert_points_at(policy: &str, e: &Explanation, rule: &str, check: &str, what: &str) {
    let last = e
        .failed_at()
        .unwrap_or_else(|| panic!("{what}: no step: {e}"));
    assert_eq!(last.rule, rule, "{what}: {e}");
    assert!(last.text.contains(check), "{what}: {e}");
    let line = policy
        .lines()
        .nth(last.line as usize - 1)
        .unwrap_or_default();
    let quoted = last.text.trim_end_matches(" …");
    assert!(
        line.contains(quoted),
        "{what}: line {} is {line:?}",
        last.line
    );
    assert_eq!(
        e.steps.first().map(|s| s.rule.as_str()),
        Some(e.request_type.as_str()),
        "{what}: the chain starts at the request type's rule: {e}"
    );
}

fn is_app_container(input: &Value) -> bool {
    input["OCI"]["Annotations"]["io.kubernetes.cri.container-type"] == "container"
}

#[test]
fn genpolicy_denials_name_the_check_that_failed() {
    let Some(dir) = peers_dir() else { return };
    let (mut containers, mut execs) = (0, 0);
    for s in scenarios(&dir) {
        let p = load(&s);
        for (ty, input) in s.requests() {
            if ty == "CreateContainerRequest" && is_app_container(input) {
                containers += 1;
                let what = |m: &str| format!("{}: {m}", s.name);
                assert!(p.decide(ty, input).is_allowed(), "{}", what("recorded"));

                // Another image: a layer whose dm-verity root hash the policy does not have.
                let mut image = input.clone();
                let layer = image["storages"]
                    .as_array_mut()
                    .unwrap()
                    .iter_mut()
                    .find(|st| {
                        st["options"].as_array().is_some_and(|o| {
                            o.iter()
                                .any(|x| x.as_str().unwrap_or("").contains("root-hash="))
                        })
                    });
                if let Some(layer) = layer {
                    for o in layer["options"].as_array_mut().unwrap() {
                        if o.as_str().unwrap_or("").contains("root-hash=") {
                            *o = json!(format!(
                                "io.katacontainers.fs-opt.root-hash={}",
                                "0".repeat(64)
                            ));
                        }
                    }
                    let (reason, e) = denial(&p, ty, &image);
                    assert_points_at(
                        &s.policy,
                        &e,
                        "allow_storage_options",
                        "hash",
                        &what("image"),
                    );
                    assert!(!reason.contains("0000000000"), "{reason}");
                }

                // An extra environment variable.
                let mut env = input.clone();
                env["OCI"]["Process"]["Env"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!("INJECTED=1"));
                let (reason, e) = denial(&p, ty, &env);
                assert_points_at(&s.policy, &e, "allow_env", "allow_var(", &what("env"));
                assert!(!reason.contains("INJECTED"), "{reason}");

                // An extra mount: the host's root, writable.
                let mut mount = input.clone();
                mount["OCI"]["Mounts"].as_array_mut().unwrap().push(json!({
                    "destination": "/injected", "source": "/", "type_": "bind",
                    "options": ["rbind", "rw"]
                }));
                let (reason, e) = denial(&p, ty, &mount);
                assert_points_at(
                    &s.policy,
                    &e,
                    "allow_by_bundle_or_sandbox_id",
                    "allow_mount(",
                    &what("mount"),
                );
                assert!(!reason.contains("injected"), "{reason}");
            }
            if ty == "ExecProcessRequest" {
                execs += 1;
                let mut exec = input.clone();
                exec["process"]["Args"] = json!(["/bin/sh", "-c", "cat /etc/shadow"]);
                let (reason, e) = denial(&p, ty, &exec);
                assert_points_at(
                    &s.policy,
                    &e,
                    "ExecProcessRequest",
                    "p_command == i_command",
                    &format!("{}: exec", s.name),
                );
                assert!(!reason.contains("shadow"), "{reason}");
            }
        }
    }
    assert!(containers >= 6, "{containers} containers");
    assert!(execs >= 1, "{execs} execs");
}

/// The same on today's genpolicy rules (Rego v1, ../shared/peers/kata-genpolicy-current,
/// a generated pod with its state built by the recorded requests before it): each
/// mutation of the app container's CreateContainerRequest is explained at its check.
#[test]
fn current_genpolicy_denials_name_the_check_that_failed() {
    use scale::current::{scenario, Dim};
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if !shared.join("peers/kata-genpolicy-current").is_dir() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "peer data missing"
        );
        return;
    }
    let g = scenario(&shared, Dim::Containers, 1);
    let p = Policy::load(
        "rules.rego",
        &g.policy,
        agent_warden::policy::RegoVersion::V1,
    )
    .unwrap();
    for (ty, v) in &g.requests[..g.measured] {
        let (d, ops) = p.decide_with_ops(ty, v);
        assert!(d.is_allowed(), "{ty}: {d:?}");
        if let Some(o) = ops {
            p.apply_ops(&o).unwrap();
        }
    }
    let expected = [
        ("extra env var not in the policy", "allow_env", "allow_var("),
        (
            "other command line",
            "allow_args",
            "count(p_process.Args) == count(i_process.Args)",
        ),
        (
            "extra host bind mount",
            "allow_by_bundle_or_sandbox_id",
            "count(i_oci.Mounts)",
        ),
        (
            "container name not in the policy",
            "allow_container_annotation",
            "p_value == i_value",
        ),
    ];
    for (label, rule, check) in expected {
        let (_, input) = g
            .mutations
            .iter()
            .find(|(l, _)| l == label)
            .unwrap_or_else(|| panic!("no mutation {label:?}"));
        let (_, e) = denial(&p, "CreateContainerRequest", input);
        assert_points_at(&g.policy, &e, rule, check, label);
    }
}
