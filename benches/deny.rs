//! deny: what a denial costs now that its reason comes from the evaluation (the
//! interpreter with coverage on, [`agent_warden::policy::explain`]), on a genpolicy
//! CreateContainerRequest (pod-exec, an extra environment variable) and ExecProcessRequest
//! (a command not in the policy) and WriteStreamRequest (a one-line rule, denied):
//!   allow                 the recorded request (fast path; unchanged by explanations)
//!   deny, warm            `Policy::decide` of the denied request, repeated
//!   deny, cold            the first denial after the policy is loaded
//!   explanation alone     `Policy::explained` (the second evaluation, coverage on)
//!   interpreter, prints   one interpreter evaluation without coverage (what
//!                         `deny_message = "full"` paid before)
//! Prints medians (µs); `cargo bench --bench deny`.

use std::path::Path;
use std::time::Instant;

use agent_warden::policy::{Policy, RegoVersion};
use serde_json::{json, Value};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn time(n: usize, mut f: impl FnMut()) -> f64 {
    median(
        (0..n)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect(),
    )
}

fn inputs(text: &str, ty: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim().trim_end_matches(',');
            let rest = l.strip_prefix("[\"ep\":\"")?;
            let (ep, body) = rest.split_once("\",")?;
            (ep == ty).then(|| serde_json::from_str(body.strip_suffix(']')?).ok())?
        })
        .collect()
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/kata-genpolicy/pod-exec");
    let Ok(policy) = std::fs::read_to_string(dir.join("policy.rego")) else {
        eprintln!("skipping: no peer data at {}", dir.display());
        return;
    };
    let recorded = std::fs::read_to_string(dir.join("inputs.txt")).unwrap();
    let create = inputs(&recorded, "CreateContainerRequest")
        .into_iter()
        .find(|i| i["OCI"]["Annotations"]["io.kubernetes.cri.container-type"] == "container")
        .unwrap();
    let mut env = create.clone();
    env["OCI"]["Process"]["Env"]
        .as_array_mut()
        .unwrap()
        .push(json!("INJECTED=1"));
    let mut exec = inputs(&recorded, "ExecProcessRequest").remove(0);
    exec["process"]["Args"] = json!(["/bin/sh", "-c", "cat /etc/shadow"]);

    // A write to a process's stdin, which genpolicy denies by its request_defaults.
    let write = json!({"container_id": "c", "exec_id": "e", "data": []});
    let load = || Policy::load("policy.rego", &policy, RegoVersion::V0).unwrap();
    let p = load();
    let n = 30;
    println!("{:<46} {:>12}", "pod-exec (median of runs)", "µs");
    for (label, ty, allowed, denied) in [
        (
            "CreateContainerRequest",
            "CreateContainerRequest",
            Some(&create),
            &env,
        ),
        ("ExecProcessRequest", "ExecProcessRequest", None, &exec),
        ("WriteStreamRequest", "WriteStreamRequest", None, &write),
    ] {
        if let Some(a) = allowed {
            assert!(p.decide(ty, a).is_allowed());
            println!(
                "{:<46} {:>12.0}",
                format!("{label}: allow"),
                time(n, || {
                    p.decide(ty, a);
                })
            );
        }
        assert!(!p.decide(ty, denied).is_allowed());
        println!(
            "{:<46} {:>12.0}",
            format!("{label}: deny, warm"),
            time(n, || {
                p.decide(ty, denied);
            })
        );
        let cold: Vec<f64> = (0..5)
            .map(|_| {
                let fresh = load();
                let t = Instant::now();
                fresh.decide(ty, denied);
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        println!(
            "{:<46} {:>12.0}",
            format!("{label}: deny, cold (first after load)"),
            median(cold)
        );
        let v: regorus::Value = serde_json::from_value(denied.clone()).unwrap();
        println!(
            "{:<46} {:>12.0}",
            format!("{label}: explanation alone"),
            time(n, || {
                p.explained(ty, v.clone()).unwrap();
            })
        );
        println!(
            "{:<46} {:>12.0}",
            format!("{label}: interpreter, prints, no coverage"),
            time(n, || {
                p.eval(ty, v.clone()).unwrap();
            })
        );
    }
}
