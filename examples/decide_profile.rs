//! A small driver for profiling one request type's decisions (callgrind, perf):
//!
//! ```sh
//! cargo build --release --example decide_profile
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='decide_profile::measured' \
//!     target/release/examples/decide_profile ../shared/peers/kata-genpolicy/web CreateContainerRequest 5
//! ```
//!
//! `--toggle-collect='decide_profile::first_measured'` counts the first decisions
//! instead (each input decided once, right after load: what a pod pays).
//!
//! The first argument is a genpolicy scenario directory (policy.rego + inputs.txt) or
//! a .rego file with a testdata input as the third; every recorded input of the type
//! is decided once to warm up (this compiles the fast path), then `ROUNDS` more times
//! inside `measured`, the full relay path: protobuf bytes → decode → policy input →
//! decision. Prints the decisions, the fast-path allows and the time per decision.
//! With `DECIDE_INTERPRETER=1` the compiled fast path is off; `DECIDE_TIMEOUT_S` sets the
//! evaluation time limit (raise it under callgrind, or big pods time out).

use std::path::Path;
use std::time::Instant;

use agent_warden::policy::{LoadOptions, Policy, RegoVersion};
use agent_warden::wire::encode;
use agent_warden::wire::input::{self, InputShape};
use agent_warden::wire::methods;
use protobuf::reflect::MessageDescriptor;

struct Case {
    desc: MessageDescriptor,
    bytes: Vec<u8>,
    shape: InputShape,
}

fn cases_from_scenario(dir: &Path, ty: &str) -> (String, Vec<Case>) {
    let text = std::fs::read_to_string(dir.join("policy.rego")).expect("policy.rego");
    let inputs = std::fs::read_to_string(dir.join("inputs.txt")).expect("inputs.txt");
    let shape = if text.contains("stdin_port") {
        InputShape::LegacyStreamPorts
    } else {
        InputShape::Legacy
    };
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for l in inputs.lines() {
        let Some(rest) = l.trim().strip_prefix("[\"ep\":\"") else {
            continue;
        };
        let Some((t, rest)) = rest.split_once("\",") else {
            continue;
        };
        let Some(js) = rest.trim_end_matches(',').strip_suffix(']') else {
            continue;
        };
        if t != ty || !seen.insert(js.to_string()) {
            continue;
        }
        let input: serde_json::Value = serde_json::from_str(js).expect("input json");
        let shape = if input.get("stdin_port").is_some() {
            InputShape::LegacyStreamPorts
        } else {
            shape
        };
        out.push(case(ty, &input, shape));
    }
    (text, out)
}

fn case(ty: &str, input: &serde_json::Value, shape: InputShape) -> Case {
    let desc = methods::table()
        .request_descriptor(ty)
        .expect("request type")
        .clone();
    let bytes = encode::from_policy_input(&desc, input, shape)
        .expect("encode")
        .write_to_bytes_dyn()
        .expect("bytes");
    Case { desc, bytes, shape }
}

fn decide(p: &Policy, ty: &str, c: &Case) -> bool {
    let msg = input::decode_request(&c.desc, &c.bytes).expect("decode");
    let input = input::to_policy_input(&*msg, c.shape).expect("policy input");
    p.decide(ty, &input).is_allowed()
}

/// A first decision (what a pod pays), apart for callgrind's `--toggle-collect`.
#[inline(never)]
fn first_measured(p: &Policy, ty: &str, c: &Case) -> bool {
    decide(p, ty, c)
}

#[inline(never)]
fn measured(p: &Policy, ty: &str, cases: &[Case], rounds: usize) -> usize {
    let mut allowed = 0;
    for _ in 0..rounds {
        for c in cases {
            allowed += usize::from(decide(p, ty, c));
        }
    }
    allowed
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(src), Some(ty)) = (args.get(1), args.get(2)) else {
        eprintln!(
            "usage: decide_profile SCENARIO_DIR|POLICY.rego TYPE [ROUNDS|INPUT.json] [ROUNDS]"
        );
        std::process::exit(2);
    };
    let src = Path::new(src);
    let (text, cases, rounds) = if src.is_dir() {
        let (t, c) = cases_from_scenario(src, ty);
        (t, c, args.get(3))
    } else {
        let text = std::fs::read_to_string(src).expect("policy");
        let input_file = args.get(3).expect("input file");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(input_file).expect("input"))
                .expect("json");
        let input = v.get("request").cloned().unwrap_or(v);
        (
            text,
            vec![case(ty, &input, InputShape::Current)],
            args.get(4),
        )
    };
    let rounds: usize = rounds.map(|r| r.parse().expect("rounds")).unwrap_or(20);
    let options = LoadOptions {
        fast_path: std::env::var_os("DECIDE_INTERPRETER").is_none_or(|v| v != "1"),
        // Under callgrind a big pod's decision can pass the default time limit, and the
        // count would then be of a timed-out decision: DECIDE_TIMEOUT_S raises it.
        eval_timeout: std::env::var("DECIDE_TIMEOUT_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(std::time::Duration::from_secs)
            .unwrap_or(LoadOptions::default().eval_timeout),
        ..LoadOptions::default()
    };
    let policy = Policy::load_with("policy.rego", &text, RegoVersion::V0, options).expect("load");
    // The first decision of each input (after load, nothing decided yet): what a pod pays.
    let mut first_us = Vec::new();
    let warm: Vec<bool> = cases
        .iter()
        .map(|c| {
            let t = Instant::now();
            let allowed = first_measured(&policy, ty, c);
            first_us.push(format!("{:.0}", t.elapsed().as_secs_f64() * 1e6));
            allowed
        })
        .collect();
    println!("first decisions, µs: {}", first_us.join(" "));
    let t = Instant::now();
    let allowed = measured(&policy, ty, &cases, rounds);
    let n = rounds * cases.len();
    println!(
        "{} inputs, decisions {warm:?}, {allowed}/{n} allowed, fast-path allows {}, {:.1} µs per decision",
        cases.len(),
        policy.fast_allows(),
        t.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64
    );
}
