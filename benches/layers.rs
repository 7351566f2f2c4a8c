//! layers: how a CreateContainerRequest's decision cost grows with the pod, ours beside
//! kata-agent's own, in one run. The scenarios come from tests/scale (generated in the
//! shape genpolicy emits, checked against kata's code by tests/kata_oracle.rs):
//! - `layers`: the 2024 family (`--kata 2024`, Rego v0), an app image of N layers;
//! - `env`, `mounts`, `containers`: today's genpolicy rules with N env vars, N mounts,
//!   N app containers (the last one's CreateContainerRequest is measured).
//!
//! For each N, measured:
//! - cold: a fresh `agent-warden serve` (cold::run_ours) gets the pod's requests up to
//!   and including the grown one; its decision time is that request's `eval_us` in the
//!   decision log. The same with the grown request replaced by a mutation kata denies
//!   (cold deny). kata's own: a fresh oracle process given the same lines, its `us`,
//!   with `RUST_BACKTRACE=full` (as kata-agent sets it for itself in a guest) and unset
//!   (the engine alone);
//! - warm: the grown request sent again `WARM` times to the same process, the median
//!   (ours and kata's with the variable unset).
//!
//! Each cold figure is the median of `LAYERS_ROUNDS` (default 3) fresh processes. Then
//! per dimension: the fitted growth (least squares: µs per added unit), the exponent
//! of the growth beyond the smallest N (log-log slope of t(N) − t(N₀) against N − N₀:
//! 1 is linear, 2 quadratic), and kata÷ours at each N.
//!
//! Only under `cargo bench` (the `--bench` argument); as a test target it returns at
//! once. `LAYERS_ONLY=layers|env|mounts|containers` runs one dimension; `POD_BIN=path`
//! measures another agent-warden binary (before/after); `LAYERS_KEEP=DIR` also writes
//! each point's policy and grown request there (`<dim>-<N>.rego`, `.json`), for
//! `examples/decide_profile` and callgrind.

mod cold;
#[path = "../tests/scale/mod.rs"]
mod scale;

use std::path::Path;

use agent_warden::wire::input::InputShape;
use cold::{run_kata, run_ours, shared, Backtrace, Pod, BIN};
use serde_json::Value;

/// Repeats of the grown request in one process, for the warm figure.
const WARM: usize = 5;

/// One point of a dimension: a pod whose `measured` request grew to size `n`.
struct Point {
    n: usize,
    policy: String,
    requests: Vec<(String, Value)>,
    measured: usize,
    /// A variant of the measured request that kata denies.
    denied: Value,
}

struct Dimension {
    name: &'static str,
    unit: &'static str,
    rego: &'static str,
    shape: InputShape,
    points: Vec<Point>,
}

impl Point {
    fn new(n: usize, s: scale::Scenario) -> Point {
        Point {
            n,
            denied: s.mutations[0].1.clone(),
            policy: s.policy,
            requests: s.requests,
            measured: s.measured,
        }
    }
}

fn dimensions(shared: &Path) -> Vec<Dimension> {
    let mut dims = vec![Dimension {
        name: "layers",
        unit: "layer",
        rego: "v0",
        shape: InputShape::Legacy,
        points: scale::layers::LAYERS
            .iter()
            .map(|&n| Point::new(n, scale::layers::scenario(shared, n)))
            .collect(),
    }];
    for (dim, unit) in [
        (scale::current::Dim::Env, "env var"),
        (scale::current::Dim::Mounts, "mount"),
        (scale::current::Dim::Containers, "container"),
    ] {
        dims.push(Dimension {
            name: dim.name(),
            unit,
            rego: "v1",
            shape: InputShape::Current,
            points: dim
                .sizes()
                .iter()
                .map(|&n| Point::new(n, scale::current::scenario(shared, dim, n)))
                .collect(),
        });
    }
    dims
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Least-squares slope of `y` against `x`.
fn slope(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let var: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
    cov / var
}

/// The exponent of the growth beyond the first point: the log-log slope of
/// t(N) − t(N₀) against N − N₀ (points where the growth is positive).
fn growth_exponent(ns: &[usize], t: &[f64]) -> f64 {
    let (n0, t0) = (ns[0] as f64, t[0]);
    let (x, y): (Vec<f64>, Vec<f64>) = ns
        .iter()
        .zip(t)
        .skip(1)
        .filter(|(_, &ti)| ti > t0)
        .map(|(&n, &ti)| ((n as f64 - n0).ln(), (ti - t0).ln()))
        .unzip();
    if x.len() < 2 {
        return 0.0;
    }
    slope(&x, &y)
}

struct Row {
    n: usize,
    ours_allow: f64,
    ours_deny: f64,
    ours_warm: f64,
    kata_allow_bt: f64,
    kata_allow: f64,
    kata_deny_bt: f64,
    kata_warm: f64,
    /// Start to listening of the cold allow runs, ms, and the policy's size.
    listening: f64,
    policy_kb: f64,
}

fn ms(us: f64) -> f64 {
    us / 1e3
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds = cold::env_usize("LAYERS_ROUNDS", 3);
    let only = std::env::var("LAYERS_ONLY").ok();
    let keep = std::env::var("LAYERS_KEEP").ok();
    let bin = std::env::var_os("POD_BIN").unwrap_or_else(|| BIN.into());
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = cold::runtime();
    let shared = shared();
    println!(
        "layers: {rounds} rounds, load average before: {}",
        cold::load()
    );
    for dim in dimensions(&shared) {
        if only.as_deref().is_some_and(|o| o != dim.name) {
            continue;
        }
        println!(
            "\n### {} (CreateContainerRequest, ms; kata bt = RUST_BACKTRACE=full as in a guest, kata = unset)\n",
            dim.name
        );
        println!("| N | ours cold allow | ours cold deny | ours warm | kata bt cold allow | kata cold allow | kata bt cold deny | kata warm | kata bt ÷ ours (allow) | kata ÷ ours (allow) | kata bt ÷ ours (deny) | ours start to listening ms (policy KB) |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        let mut rows = Vec::new();
        for p in &dim.points {
            let policy = tmp.path().join(format!("{}-{}.rego", dim.name, p.n));
            std::fs::write(&policy, &p.policy).expect("write policy");
            if let Some(dir) = &keep {
                // For examples/decide_profile: the policy and the grown request.
                let base = Path::new(dir).join(format!("{}-{}", dim.name, p.n));
                std::fs::write(base.with_extension("rego"), &p.policy).expect("keep policy");
                let input = serde_json::to_string(&p.requests[p.measured].1).expect("json");
                std::fs::write(base.with_extension("json"), input).expect("keep input");
            }
            let upto = &p.requests[..=p.measured];
            let mut denied = p.requests[..p.measured].to_vec();
            denied.push((p.requests[p.measured].0.clone(), p.denied.clone()));
            let mut warm = upto.to_vec();
            for _ in 0..WARM {
                warm.push(p.requests[p.measured].clone());
            }
            let pod = |requests| Pod {
                name: dim.name,
                policy: &policy,
                rego: dim.rego,
                shape: dim.shape,
                requests,
            };
            let (allow_pod, deny_pod, warm_pod) = (pod(upto), pod(&denied), pod(&warm));
            let last_ours = |pod: &Pod, want: bool| {
                let o = rt.block_on(run_ours(pod, tmp.path(), &bin, true));
                let (ty, us, allowed) = o.decisions[p.measured].clone();
                assert_eq!(allowed, want, "{} N={}: ours {ty}", dim.name, p.n);
                (us as f64, o)
            };
            let last_kata = |pod: &Pod, bt, want: bool| {
                let k = run_kata(pod, bt);
                assert_eq!(k[p.measured].2, Some(want), "{} N={}: kata", dim.name, p.n);
                (k[p.measured].1, k)
            };
            let (mut oa, mut od, mut kab, mut ka, mut kdb, mut listening) = (
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
            );
            for round in 0..rounds {
                // Alternate which side goes first.
                if round % 2 == 1 {
                    kab.push(last_kata(&allow_pod, Backtrace::Full, true).0);
                    ka.push(last_kata(&allow_pod, Backtrace::Unset, true).0);
                    kdb.push(last_kata(&deny_pod, Backtrace::Full, false).0);
                }
                let (us, o) = last_ours(&allow_pod, true);
                oa.push(us);
                listening.push(o.listening.as_secs_f64() * 1e3);
                od.push(last_ours(&deny_pod, false).0);
                if round % 2 == 0 {
                    kab.push(last_kata(&allow_pod, Backtrace::Full, true).0);
                    ka.push(last_kata(&allow_pod, Backtrace::Unset, true).0);
                    kdb.push(last_kata(&deny_pod, Backtrace::Full, false).0);
                }
            }
            let (_, o) = last_ours(&warm_pod, true);
            let ours_warm = median(
                o.decisions[p.measured + 1..]
                    .iter()
                    .map(|d| d.1 as f64)
                    .collect(),
            );
            let (_, k) = last_kata(&warm_pod, Backtrace::Unset, true);
            let kata_warm = median(k[p.measured + 1..].iter().map(|d| d.1).collect());
            let r = Row {
                n: p.n,
                ours_allow: median(oa),
                ours_deny: median(od),
                ours_warm,
                kata_allow_bt: median(kab),
                kata_allow: median(ka),
                kata_deny_bt: median(kdb),
                kata_warm,
                listening: median(listening),
                policy_kb: p.policy.len() as f64 / 1024.0,
            };
            println!(
                "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1}× | {:.1}× | {:.1}× | {:.1} ({:.0}) |",
                r.n,
                ms(r.ours_allow),
                ms(r.ours_deny),
                ms(r.ours_warm),
                ms(r.kata_allow_bt),
                ms(r.kata_allow),
                ms(r.kata_deny_bt),
                ms(r.kata_warm),
                r.kata_allow_bt / r.ours_allow.max(1.0),
                r.kata_allow / r.ours_allow.max(1.0),
                r.kata_deny_bt / r.ours_deny.max(1.0),
                r.listening,
                r.policy_kb,
            );
            rows.push(r);
        }
        let ns: Vec<usize> = rows.iter().map(|r| r.n).collect();
        let x: Vec<f64> = ns.iter().map(|&n| n as f64).collect();
        for (what, t) in [
            (
                "ours cold allow",
                rows.iter().map(|r| r.ours_allow).collect::<Vec<_>>(),
            ),
            ("ours cold deny", rows.iter().map(|r| r.ours_deny).collect()),
            ("ours warm", rows.iter().map(|r| r.ours_warm).collect()),
            (
                "kata bt cold allow",
                rows.iter().map(|r| r.kata_allow_bt).collect(),
            ),
            (
                "kata cold allow",
                rows.iter().map(|r| r.kata_allow).collect(),
            ),
            (
                "kata bt cold deny",
                rows.iter().map(|r| r.kata_deny_bt).collect(),
            ),
        ] {
            let e = growth_exponent(&ns, &t);
            let verdict = if e <= 1.3 {
                "linear"
            } else if e < 1.7 {
                "superlinear"
            } else {
                "quadratic or worse"
            };
            println!(
                "layers: {}: {what}: {:.1} µs per added {}; growth exponent {e:.2} ({verdict})",
                dim.name,
                slope(&x, &t),
                dim.unit
            );
        }
    }
    println!("layers: load average after: {}", cold::load());
}
