//! pod: a pod's whole life, cold. For each genpolicy scenario in
//! ../shared/peers/kata-genpolicy, a fresh release `agent-warden serve` process with
//! that scenario's policy (Rego v0) and input shape, in front of an agent that answers
//! every request OK; the scenario's recorded requests are sent once, in order, each
//! after the previous answer, over a real ttrpc client. Measured:
//! - start to listening (process spawn until the socket accepts a connection);
//! - every decision's time, from the decision log (`eval_us`: decide_with_ops, i.e.
//!   converting the input and evaluating; not decoding, not the relay);
//! - the pod's total (sum of decisions) and its slowest decision;
//! - wall time from sending the first request to receiving the last answer.
//!
//! Beside it, in the same run, kata-agent's own evaluation of the same requests:
//! ../shared/kata-reference/bin/kata-policy-oracle (a fresh process per pod, `--v0`,
//! request mode), summing the `us` it reports per request (time in kata's
//! `allow_request`). Policy load is counted on neither side: the oracle's `us` starts
//! after `set_policy`, and ours is reported separately as start to listening (which
//! includes loading the policy). The `AllowRequestsFailingPolicy` lines of the
//! recordings are probes, not requests: sent to neither side.
//!
//! agent-warden runs without `RUST_BACKTRACE`, as its unit runs it in a guest. kata's
//! oracle is run both ways: unset (the engine alone; the `kata total` column and the
//! ratios before it) and with `RUST_BACKTRACE=full`, as kata-agent sets it for itself
//! at start, so as its policy engine runs in a guest (with it, every builtin error that
//! non-strict mode turns into undefined captures a backtrace).
//!
//! Only under `cargo bench` (the `--bench` argument); as a test target it returns at
//! once. `POD_ROUNDS` (default 3) repeats the whole table; `POD_DETAIL=1` also prints
//! every decision's time; `POD_BIN=path` measures another agent-warden binary (an
//! older build, for a before/after in the same conditions).
//!
//! `POD_LOG_COST=N` instead measures what the decision log costs: each scenario's pod
//! N times without `--decision-log`, with it (chained, masked), and with it measured into
//! a real software TPM (swtpm, PCR 23) every record and every 8th record (+ a checkpoint
//! after 50 ms; `POD_LOG_TPM=0` leaves those out), interleaved. It prints the median wall
//! time first→last and the median CPU time of agent-warden's threads (first request →
//! last record in the file) of each, and their difference to "off" as a share of the
//! pod's decision total (the evaluation times, which do not include the record).
//! `POD_DETAIL=1` adds the requests whose round trip grew most with the log on.

mod cold;
#[path = "../tests/swtpm/mod.rs"]
mod swtpm;

use std::path::PathBuf;

use agent_warden::wire::input::InputShape;
use cold::{run_kata, run_ours, run_ours_with, shared, Backtrace, Pod, BIN};

/// A recorded scenario: its policy, request lines (type, input) and input shape.
struct Scenario {
    name: String,
    /// The scenario's policy.rego.
    policy: PathBuf,
    requests: Vec<(String, serde_json::Value)>,
    shape: InputShape,
}

impl Scenario {
    /// The pod the cold runners take (the recorded policies are Rego v0).
    fn pod(&self) -> Pod<'_> {
        Pod {
            name: &self.name,
            policy: &self.policy,
            rego: "v0",
            shape: self.shape,
            requests: &self.requests,
        }
    }
}

/// Reads inputs.txt: one `["ep":"<Type>",{...}],` per non-empty line (as tests/compat.rs).
fn parse_inputs(text: &str) -> Vec<(String, serde_json::Value)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (ty, rest) = l.strip_prefix("[\"ep\":\"")?.split_once("\",")?;
            let json = rest.trim_end_matches(',').strip_suffix(']')?;
            Some((ty.to_string(), serde_json::from_str(json).ok()?))
        })
        .collect()
}

fn scenarios() -> Vec<Scenario> {
    let dir = shared().join("peers/kata-genpolicy");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("pod: {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("policy.rego").is_file())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let text = std::fs::read_to_string(dir.join("inputs.txt")).expect("inputs.txt");
            let requests: Vec<_> = parse_inputs(&text)
                .into_iter()
                .filter(|(ty, _)| ty != "AllowRequestsFailingPolicy")
                .collect();
            // As tests/compat.rs: the later recordings already sent the stdio ports.
            let shape = if requests
                .iter()
                .any(|(ty, v)| ty == "CreateContainerRequest" && v.get("stdin_port").is_some())
            {
                InputShape::LegacyStreamPorts
            } else {
                InputShape::Legacy
            };
            Scenario {
                name: dir.file_name().unwrap().to_string_lossy().into_owned(),
                policy: dir.join("policy.rego"),
                requests,
                shape,
            }
        })
        .collect()
}

fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

/// How a pod runs in the log-cost comparison: serve's decision-log flags.
struct LogVariant {
    name: &'static str,
    log: bool,
    extra: Vec<String>,
}

/// The decision log's cost: median wall time first→last without it, with it, and with it
/// measured into swtpm's PCR 23 (every record; every 8th record plus a checkpoint after
/// 50 ms), the variants interleaved.
fn log_cost(
    scenarios: &[Scenario],
    n: usize,
    rt: &tokio::runtime::Runtime,
    tmp: &std::path::Path,
    bin: &std::ffi::OsStr,
) {
    let tpm = match swtpm::missing_tools(&[]) {
        // POD_LOG_TPM=0: off and on only (e.g. a POD_BIN from before the registers).
        _ if std::env::var("POD_LOG_TPM").is_ok_and(|v| v == "0") => None,
        None => Some(swtpm::Swtpm::start()),
        Some(why) => {
            println!("pod: log cost without the TPM variants: {why}");
            None
        }
    };
    let mut variants = vec![
        LogVariant {
            name: "off",
            log: false,
            extra: vec![],
        },
        LogVariant {
            name: "on",
            log: true,
            extra: vec![],
        },
    ];
    if let Some(t) = &tpm {
        let spec = format!("tpm:pcr=23,device={}", t.socket().display());
        let measured = |every: &str| {
            vec![
                "--measure".to_string(),
                spec.clone(),
                "--measure-every".into(),
                every.into(),
                "--measure-checkpoint-ms".into(),
                "50".into(),
            ]
        };
        variants.push(LogVariant {
            name: "tpm every record",
            log: true,
            extra: measured("1"),
        });
        variants.push(LogVariant {
            name: "tpm every 8th + 50 ms",
            log: true,
            extra: measured("8"),
        });
    }
    let names: Vec<&str> = variants.iter().map(|v| v.name).collect();
    println!(
        "median wall ms first→last, {n} pods per variant, interleaved; decision total = the pod's evaluation times (log on)"
    );
    let header = format!(
        "| scenario | requests | {} | decision total ms | {} |\n|---|---|{}---|{}",
        names.join(" | "),
        names[1..]
            .iter()
            .map(|v| format!("({v} − off) / decision total"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(names.len()),
        "---|".repeat(names.len() - 1)
    );
    println!("{header}");
    let mut sums = vec![0.0; variants.len()];
    let mut cpu_sums = vec![0.0; variants.len()];
    let mut cpu_rows = Vec::new();
    let mut total_sum = 0.0;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for s in scenarios {
        let pod = s.pod();
        let mut walls = vec![Vec::new(); variants.len()];
        let mut cpus = vec![Vec::new(); variants.len()];
        let mut trips: Vec<Vec<Vec<f64>>> =
            vec![vec![Vec::new(); s.requests.len()]; variants.len()];
        let mut totals = Vec::new();
        for i in 0..n {
            // Rotate the order, so that the machine's drift hits every variant alike.
            for k in 0..variants.len() {
                let j = (i + k) % variants.len();
                let v = &variants[j];
                let o = rt.block_on(run_ours_with(&pod, tmp, bin, v.log, &v.extra));
                walls[j].push(o.wall.as_secs_f64() * 1e3);
                cpus[j].push(o.cpu.as_secs_f64() * 1e3);
                for (r, t) in o.round_trips.iter().enumerate() {
                    trips[j][r].push(t.as_secs_f64() * 1e6);
                }
                if j == 1 {
                    totals.push(o.decisions.iter().map(|d| d.1).sum::<u64>() as f64 / 1e3);
                }
            }
        }
        let meds: Vec<f64> = walls.iter_mut().map(&median).collect();
        if std::env::var("POD_DETAIL").is_ok_and(|v| v == "1") {
            // Where "on" differs from "off": each request's median round trip.
            let mut deltas: Vec<(f64, usize)> = (0..s.requests.len())
                .map(|r| (median(&mut trips[1][r]) - median(&mut trips[0][r]), r))
                .collect();
            deltas.sort_by(|a, b| b.0.total_cmp(&a.0));
            let shown: Vec<String> = deltas
                .iter()
                .take(8)
                .map(|(d, r)| {
                    format!(
                        "#{r} {} {d:+.0} µs",
                        s.requests[*r].0.trim_end_matches("Request")
                    )
                })
                .collect();
            let sum: f64 = deltas.iter().map(|d| d.0).sum();
            println!(
                "pod: {}: round trip on − off, largest: {}; sum of medians {sum:+.0} µs",
                s.name,
                shown.join(", ")
            );
        }
        let total = median(&mut totals);
        let cpu: Vec<f64> = cpus.iter_mut().map(&median).collect();
        for (sum, m) in sums.iter_mut().zip(&meds) {
            *sum += m;
        }
        for (sum, m) in cpu_sums.iter_mut().zip(&cpu) {
            *sum += m;
        }
        total_sum += total;
        println!("{}", row(&s.name, s.requests.len(), &meds, total));
        cpu_rows.push(row(&s.name, s.requests.len(), &cpu, total));
    }
    println!("{}", row("all (sums of medians)", 0, &sums, total_sum));
    println!(
        "\nCPU ms of agent-warden's threads, first request → last answer (log on: → last record in the file), medians"
    );
    println!("{header}");
    for r in cpu_rows {
        println!("{r}");
    }
    println!("{}", row("all (sums of medians)", 0, &cpu_sums, total_sum));
}

/// `| name | requests | v0 | v1 … | total | (v1 − v0) / total … |`
fn row(name: &str, requests: usize, values: &[f64], total: f64) -> String {
    let show = |v: &[f64]| {
        v.iter()
            .map(|m| format!("{m:.2}"))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let shares = values[1..]
        .iter()
        .map(|m| format!("{:+.1}%", (m - values[0]) / total * 100.0))
        .collect::<Vec<_>>()
        .join(" | ");
    let requests = if requests == 0 {
        String::new()
    } else {
        requests.to_string()
    };
    format!(
        "| {name} | {requests} | {} | {total:.2} | {shares} |",
        show(values)
    )
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // Test mode (`cargo test --all-targets`): the heavy run is for `cargo bench` only.
        return;
    }
    let rounds = cold::env_usize("POD_ROUNDS", 3);
    let detail = std::env::var("POD_DETAIL").is_ok_and(|v| v == "1");
    let bin = std::env::var_os("POD_BIN").unwrap_or_else(|| BIN.into());
    let scenarios = scenarios();
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = cold::runtime();
    if let Some(n) = std::env::var("POD_LOG_COST")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        log_cost(&scenarios, n, &rt, tmp.path(), &bin);
        return;
    }
    for round in 1..=rounds {
        println!(
            "\npod: round {round} of {rounds}, load average before: {}",
            cold::load()
        );
        println!(
            "| scenario | requests | start to listening ms | ours total ms | ours slowest ms | kata total ms | kata slowest ms | kata/ours total | kata/ours slowest | kata total ms, RUST_BACKTRACE=full | kata (full)/ours total | wall first→last ms |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        let mut ratios = Vec::new();
        let mut ratios_bt = Vec::new();
        for s in &scenarios {
            // Alternate which side goes first, so the machine's state hits both alike.
            let pod = s.pod();
            let ours = || rt.block_on(run_ours(&pod, tmp.path(), &bin, true));
            let (ours, kata, kata_bt) = if round % 2 == 1 {
                let o = ours();
                let k = run_kata(&pod, Backtrace::Unset);
                (o, k, run_kata(&pod, Backtrace::Full))
            } else {
                let kb = run_kata(&pod, Backtrace::Full);
                let k = run_kata(&pod, Backtrace::Unset);
                (ours(), k, kb)
            };
            let kbtotal: f64 = kata_bt.iter().map(|d| d.1).sum();
            for (i, ((ty, _, a), (_, _, k))) in ours.decisions.iter().zip(&kata).enumerate() {
                if Some(*a) != *k {
                    println!(
                        "pod: {}: request {i} ({ty}): agent-warden allowed={a}, kata {k:?}",
                        s.name
                    );
                }
            }
            let total: u64 = ours.decisions.iter().map(|d| d.1).sum();
            let slow = ours
                .decisions
                .iter()
                .max_by_key(|d| d.1)
                .expect("decisions");
            let ktotal: f64 = kata.iter().map(|d| d.1).sum();
            let kslow = kata
                .iter()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .expect("answers");
            let ratio = ktotal / total.max(1) as f64;
            let ratio_bt = kbtotal / total.max(1) as f64;
            ratios_bt.push(ratio_bt);
            ratios.push(ratio);
            println!(
                "| {} | {} | {:.1} | {:.2} | {:.2} ({}) | {:.2} | {:.2} ({}) | {:.1}× | {:.1}× | {:.2} | {:.1}× | {:.1} |",
                s.name,
                s.requests.len(),
                ours.listening.as_secs_f64() * 1e3,
                ms(total),
                ms(slow.1),
                slow.0.trim_end_matches("Request"),
                ktotal / 1e3,
                kslow.1 / 1e3,
                kslow.0.trim_end_matches("Request"),
                ratio,
                kslow.1 / slow.1.max(1) as f64,
                kbtotal / 1e3,
                ratio_bt,
                ours.wall.as_secs_f64() * 1e3,
            );
            if detail {
                let us: Vec<String> = ours
                    .decisions
                    .iter()
                    .zip(&kata)
                    .map(|((ty, us, _), (_, k, _))| {
                        format!("{}:{us}/{k:.0}", ty.trim_end_matches("Request"))
                    })
                    .collect();
                println!("pod: {} decisions µs (ours/kata): {}", s.name, us.join(" "));
            }
        }
        ratios.sort_by(f64::total_cmp);
        ratios_bt.sort_by(f64::total_cmp);
        println!(
            "pod: round {round}: kata/ours per-pod total min {:.1}×, max {:.1}× (kata with RUST_BACKTRACE=full: min {:.1}×, max {:.1}×); load average after: {}",
            ratios.first().copied().unwrap_or(0.0),
            ratios.last().copied().unwrap_or(0.0),
            ratios_bt.first().copied().unwrap_or(0.0),
            ratios_bt.last().copied().unwrap_or(0.0),
            cold::load()
        );
    }
}
