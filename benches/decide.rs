//! decide: the full decision path (protobuf bytes → policy input → regorus → decision)
//! per request type, on the genpolicy peer scenarios and our own policies, next to the
//! kata-agent way (JSON string → set_input_json → eval_query with prints gathered, one
//! engine). Three variants per request:
//!   agent-warden              the shipped path (compiled fast path, interpreter otherwise)
//!   agent-warden-interpreter  the same with the fast path off
//!   kata-baseline             what kata-agent does
//! After criterion, `cargo bench --bench decide` prints a table: median per variant over
//! interleaved runs, and the ratio baseline / agent-warden per request type.

use std::path::Path;
use std::time::{Duration, Instant};

use agent_warden::policy::{Policy, RegoVersion};
use agent_warden::wire::encode;
use agent_warden::wire::input::{self, InputShape};
use agent_warden::wire::methods;
use criterion::{criterion_group, criterion_main, Criterion};
use protobuf::reflect::MessageDescriptor;
use serde_json::Value;

/// One request to decide: where it is from, its type, its protobuf bytes, its JSON.
struct Case {
    label: String,
    ty: String,
    desc: MessageDescriptor,
    bytes: Vec<u8>,
    shape: InputShape,
    json: String,
}

struct Subject {
    name: String,
    ours: Policy,
    interp: Policy,
    kata: regorus::Engine,
    cases: Vec<Case>,
}

fn kata_engine(text: &str, v0: bool) -> regorus::Engine {
    let mut kata = regorus::Engine::new();
    kata.set_rego_v0(v0);
    kata.set_strict_builtin_errors(false);
    kata.set_gather_prints(true);
    kata.set_policy_length_config(regorus::utils::limits::PolicyLengthConfig {
        max_col: std::num::NonZeroU32::new(1 << 20).unwrap(),
        max_file_bytes: std::num::NonZeroUsize::new(64 << 20).unwrap(),
        max_lines: std::num::NonZeroUsize::new(1 << 22).unwrap(),
    });
    agent_warden::policy::pathext::register(&mut kata);
    kata.add_policy("policy.rego".into(), text.to_string())
        .unwrap();
    // As kata-agent does at start-up: one query prepares the engine.
    let _ = kata.eval_query("data.agent_policy.AllowRequestsFailingPolicy".into(), false);
    kata
}

fn case(label: String, ty: &str, input: &Value, shape: InputShape) -> Option<Case> {
    let desc = methods::table().request_descriptor(ty)?.clone();
    let bytes = encode::from_policy_input(&desc, input, shape)
        .ok()?
        .write_to_bytes_dyn()
        .ok()?;
    Some(Case {
        label,
        ty: ty.to_string(),
        desc,
        bytes,
        shape,
        json: input.to_string(),
    })
}

/// Every recorded request of the peer scenarios, each distinct (type, input) once.
fn peer_subjects() -> Vec<Subject> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/kata-genpolicy");
    let Ok(entries) = std::fs::read_dir(&root) else {
        eprintln!("decide: no peer data at {}", root.display());
        return Vec::new();
    };
    let mut dirs: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("policy.rego").is_file())
        .collect();
    dirs.sort();
    let mut out = Vec::new();
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(dir.join("policy.rego")).unwrap();
        let inputs = std::fs::read_to_string(dir.join("inputs.txt")).unwrap();
        let shape = if text.contains("stdin_port") {
            InputShape::LegacyStreamPorts
        } else {
            InputShape::Legacy
        };
        let mut seen = std::collections::HashSet::new();
        let mut cases = Vec::new();
        let mut n_by_type = std::collections::HashMap::<String, usize>::new();
        for l in inputs.lines() {
            let Some(rest) = l.trim().strip_prefix("[\"ep\":\"") else {
                continue;
            };
            let Some((ty, rest)) = rest.split_once("\",") else {
                continue;
            };
            let Some(js) = rest.trim_end_matches(',').strip_suffix(']') else {
                continue;
            };
            if ty == "AllowRequestsFailingPolicy" || !seen.insert(format!("{ty}{js}")) {
                continue;
            }
            let Ok(input) = serde_json::from_str::<Value>(js) else {
                continue;
            };
            let shape = if input.get("stdin_port").is_some() {
                InputShape::LegacyStreamPorts
            } else {
                shape
            };
            let k = n_by_type.entry(ty.to_string()).or_default();
            *k += 1;
            if let Some(c) = case(format!("{name}/{ty}#{k}"), ty, &input, shape) {
                cases.push(c);
            }
        }
        out.push(Subject {
            ours: Policy::load("policy.rego", &text, RegoVersion::V0).unwrap(),
            interp: Policy::load("policy.rego", &text, RegoVersion::V0)
                .unwrap()
                .without_fast_path(),
            kata: kata_engine(&text, true),
            name,
            cases,
        });
    }
    out
}

/// Our shipped default and exec-allowlist policies on the sample inputs in testdata/.
fn own_subjects() -> Vec<Subject> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for (policy, files) in [
        (
            "coco-default.rego",
            &[
                "create-container.json",
                "copy-file-ok.json",
                "exec-ls-c1.json",
            ][..],
        ),
        (
            "exec-allowlist.rego",
            &[
                "create-container.json",
                "exec-ls-c1.json",
                "exec-shell.json",
            ][..],
        ),
    ] {
        let text = std::fs::read_to_string(root.join("policies").join(policy)).unwrap();
        let mut cases = Vec::new();
        for f in files {
            let Ok(t) = std::fs::read_to_string(root.join("testdata").join(f)) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(&t) else {
                continue;
            };
            // Sample files are {"kind": T, "request": input} or a bare input.
            let (ty, input) = match (v.get("kind").and_then(|k| k.as_str()), v.get("request")) {
                (Some(k), Some(r)) => (k.to_string(), r.clone()),
                _ if f.starts_with("create") => ("CreateContainerRequest".into(), v.clone()),
                _ if f.starts_with("copy") => ("CopyFileRequest".into(), v.clone()),
                _ => ("ExecProcessRequest".into(), v.clone()),
            };
            if let Some(c) = case(
                format!("{policy}/{ty}/{f}"),
                &ty,
                &input,
                InputShape::Current,
            ) {
                cases.push(c);
            }
        }
        out.push(Subject {
            ours: Policy::load(policy, &text, RegoVersion::V0).unwrap(),
            interp: Policy::load(policy, &text, RegoVersion::V0)
                .unwrap()
                .without_fast_path(),
            kata: kata_engine(&text, true),
            name: policy.to_string(),
            cases,
        });
    }
    out
}

fn ours(p: &Policy, c: &Case) -> bool {
    let msg = input::decode_request(&c.desc, &c.bytes).unwrap();
    let input = input::to_policy_input(&*msg, c.shape).expect("policy input");
    p.decide(&c.ty, &input).is_allowed()
}

fn kata(e: &mut regorus::Engine, c: &Case) -> bool {
    e.set_input_json(&c.json).unwrap();
    let r = e
        .eval_query(format!("data.agent_policy.{}", c.ty), false)
        .unwrap();
    let _ = e.take_prints();
    r.result
        .first()
        .and_then(|r| r.expressions.first())
        .map(|e| {
            e.value == regorus::Value::Bool(true)
                || e.value["allowed"] == regorus::Value::Bool(true)
        })
        .unwrap_or(false)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Interleaved timing of the three variants; prints one row per request type (the
/// slowest input of that type, by baseline median) and the CreateContainer summary.
fn summary(subjects: &mut [Subject]) {
    println!();
    println!("decide: median µs per decision (interleaved, 31 rounds); ratio = kata-baseline / agent-warden");
    println!(
        "{:<48} {:>10} {:>12} {:>10} {:>7}",
        "scenario/request", "ours", "interpreter", "kata", "ratio"
    );
    let mut cc_ratios = Vec::new();
    let mut cc_ours = Vec::new();
    for s in subjects.iter_mut() {
        let mut rows: std::collections::BTreeMap<String, (f64, f64, f64)> = Default::default();
        for c in &s.cases {
            let (mut a, mut b, mut k) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..31 {
                let t = Instant::now();
                ours(&s.ours, c);
                a.push(t.elapsed());
                let t = Instant::now();
                ours(&s.interp, c);
                b.push(t.elapsed());
                let t = Instant::now();
                kata(&mut s.kata, c);
                k.push(t.elapsed());
            }
            let (a, b, k) = (us(median(a)), us(median(b)), us(median(k)));
            if c.ty == "CreateContainerRequest" {
                cc_ratios.push(k / a);
                cc_ours.push(a);
            }
            let key = format!("{}/{}", s.name, c.ty);
            let e = rows.entry(key).or_insert((a, b, k));
            if k > e.2 {
                *e = (a, b, k);
            }
        }
        for (key, (a, b, k)) in rows {
            println!("{key:<48} {a:>10.1} {b:>12.1} {k:>10.1} {:>6.1}x", k / a);
        }
    }
    if !cc_ratios.is_empty() {
        cc_ratios.sort_by(f64::total_cmp);
        cc_ours.sort_by(f64::total_cmp);
        println!(
            "CreateContainerRequest over {} inputs: ratio median {:.1}x (min {:.1}x, max {:.1}x); agent-warden median {:.0} µs (max {:.0} µs)",
            cc_ratios.len(),
            cc_ratios[cc_ratios.len() / 2],
            cc_ratios[0],
            cc_ratios[cc_ratios.len() - 1],
            cc_ours[cc_ours.len() / 2],
            cc_ours[cc_ours.len() - 1]
        );
    }
}

fn bench(c: &mut Criterion) {
    let mut subjects = peer_subjects();
    subjects.extend(own_subjects());
    // Decisions first: the three variants must agree on every case.
    for s in subjects.iter_mut() {
        for case in &s.cases {
            let (a, b) = (ours(&s.ours, case), ours(&s.interp, case));
            let k = kata(&mut s.kata, case);
            assert!(a == b && b == k, "{}: {a} {b} {k}", case.label);
        }
    }
    let mut g = c.benchmark_group("decide");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    for s in subjects.iter_mut() {
        // Criterion series for the slowest kinds; the summary covers every type.
        for case in s.cases.iter().filter(|c| {
            matches!(
                c.ty.as_str(),
                "CreateContainerRequest" | "ExecProcessRequest" | "CopyFileRequest"
            )
        }) {
            g.bench_function(format!("{}/agent-warden", case.label), |b| {
                b.iter(|| ours(&s.ours, case))
            });
            g.bench_function(format!("{}/kata-baseline", case.label), |b| {
                b.iter(|| kata(&mut s.kata, case))
            });
        }
    }
    g.finish();
    if std::env::args().any(|a| a == "--bench") {
        summary(&mut subjects);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
