//! decide: the full decision path (protobuf bytes → policy input → regorus → decision)
//! per request type on the genpolicy peer scenarios, next to the kata-agent way
//! (JSON string → set_input_json → eval_query with prints gathered, one engine).

use std::path::Path;

use agent_warden::codec::{self, InputShape};
use agent_warden::methods;
use agent_warden::policy::{Policy, RegoVersion};
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::Value;

fn scenario_inputs(dir: &Path) -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(dir.join("inputs.txt")).unwrap();
    let mut seen = std::collections::HashSet::new();
    text.lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("[\"ep\":\"")?;
            let (ty, rest) = rest.split_once("\",")?;
            let json: Value =
                serde_json::from_str(rest.trim_end_matches(',').strip_suffix(']')?).ok()?;
            (ty != "AllowRequestsFailingPolicy" && seen.insert(ty.to_string()))
                .then(|| (ty.to_string(), json))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/kata-genpolicy");
    let Ok(entries) = std::fs::read_dir(&root) else {
        eprintln!("decide: no peer data at {}", root.display());
        return;
    };
    let mut dirs: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let mut g = c.benchmark_group("decide");
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(dir.join("policy.rego")).unwrap();
        let policy = Policy::load("policy.rego", &text, RegoVersion::V0).unwrap();
        let mut kata = regorus::Engine::new();
        kata.set_rego_v0(true);
        kata.set_strict_builtin_errors(false);
        kata.set_gather_prints(true);
        kata.set_policy_length_config(regorus::utils::limits::PolicyLengthConfig {
            max_col: std::num::NonZeroU32::new(1 << 20).unwrap(),
            max_file_bytes: std::num::NonZeroUsize::new(64 << 20).unwrap(),
            max_lines: std::num::NonZeroUsize::new(1 << 22).unwrap(),
        });
        kata.add_policy("policy.rego".into(), text.clone()).unwrap();
        let shape = if text.contains("stdin_port") {
            InputShape::LegacyStreamPorts
        } else {
            InputShape::Legacy
        };
        for (ty, input) in scenario_inputs(&dir) {
            let desc = methods::table().request_descriptor(&ty).unwrap().clone();
            let shape = if input.get("stdin_port").is_some() {
                InputShape::LegacyStreamPorts
            } else {
                shape
            };
            let bytes = codec::from_policy_input(&desc, &input, shape)
                .unwrap()
                .write_to_bytes_dyn()
                .unwrap();
            g.bench_function(format!("{name}/{ty}/agent-warden"), |b| {
                b.iter(|| {
                    let msg = codec::decode_request(&desc, &bytes).unwrap();
                    let input = codec::to_policy_input(&*msg, shape);
                    policy.decide(&ty, &input)
                })
            });
            let json = input.to_string();
            let query = format!("data.agent_policy.{ty}");
            let rule = query.clone();
            g.bench_function(format!("{name}/{ty}/eval-rule"), |b| {
                b.iter(|| {
                    kata.set_input_json(&json).unwrap();
                    let r = kata.eval_rule(rule.clone()).unwrap();
                    let _ = kata.take_prints();
                    r
                })
            });
            g.bench_function(format!("{name}/{ty}/kata-baseline"), |b| {
                b.iter(|| {
                    kata.set_input_json(&json).unwrap();
                    let r = kata.eval_query(query.clone(), false).unwrap();
                    let _ = kata.take_prints();
                    r
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
