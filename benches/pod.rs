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
//! Both processes run without `RUST_BACKTRACE`, as in a guest (with it, every builtin
//! error that non-strict mode turns into undefined captures a backtrace).
//!
//! Only under `cargo bench` (the `--bench` argument); as a test target it returns at
//! once. `POD_ROUNDS` (default 3) repeats the whole table; `POD_DETAIL=1` also prints
//! every decision's time; `POD_BIN=path` measures another agent-warden binary (an
//! older build, for a before/after in the same conditions).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_warden::wire::encode;
use agent_warden::wire::envelope;
use agent_warden::wire::frame::{self, FrameReader, Read};
use agent_warden::wire::input::InputShape;
use agent_warden::wire::methods;
use tokio::io::AsyncWriteExt;

const BIN: &str = env!("CARGO_BIN_EXE_agent-warden");

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

/// A recorded scenario: its directory, request lines (type, input) and input shape.
struct Scenario {
    name: String,
    dir: PathBuf,
    requests: Vec<(String, serde_json::Value)>,
    shape: InputShape,
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
                dir,
                requests,
                shape,
            }
        })
        .collect()
}

/// An agent that answers every request frame OK with an empty payload.
async fn ok_agent(sock: &Path) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::UnixListener::bind(sock).expect("bind agent socket");
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = conn.into_split();
                let mut reader = FrameReader::new(r, frame::MAX_BODY);
                while let Ok(Read::Frame(f)) = reader.next().await {
                    if f.header.kind == frame::TYPE_REQUEST {
                        let answer = envelope::ok_frame(f.header.stream_id, &[]);
                        if w.write_all(answer.raw()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    })
}

/// One pod through agent-warden.
struct Ours {
    listening: Duration,
    /// (request type, eval_us, allowed) per decision, in order.
    decisions: Vec<(String, u64, bool)>,
    wall: Duration,
}

async fn run_ours(s: &Scenario, tmp: &Path) -> Ours {
    let sock = tmp.join("warden.sock");
    let agent_sock = tmp.join("agent.sock");
    let log = tmp.join("decisions.jsonl");
    for p in [&sock, &agent_sock, &log] {
        let _ = std::fs::remove_file(p);
    }
    let agent = ok_agent(&agent_sock).await;
    let t0 = Instant::now();
    let bin = std::env::var_os("POD_BIN").unwrap_or_else(|| BIN.into());
    let mut child = Command::new(bin)
        .args(["--log", "warn", "--decision-log"])
        .arg(&log)
        .args(["serve", "--rego", "v0", "--input-shape", s.shape.name()])
        .arg("--listen")
        .arg(format!("unix://{}", sock.display()))
        .arg("--agent")
        .arg(format!("unix://{}", agent_sock.display()))
        .arg("--policy")
        .arg(s.dir.join("policy.rego"))
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn agent-warden");
    let listening = loop {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            break t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "never listened");
        tokio::time::sleep(Duration::from_micros(200)).await;
    };
    let client = ttrpc::r#async::Client::connect(&format!("unix://{}", sock.display()))
        .await
        .expect("connect");
    // Requests are encoded before the clock starts.
    let reqs: Vec<ttrpc::proto::Request> = s
        .requests
        .iter()
        .map(|(ty, input)| {
            let m = methods::table()
                .all()
                .iter()
                .find(|m| m.request_type == *ty)
                .unwrap_or_else(|| panic!("{ty}: unknown request type"));
            let msg = encode::from_policy_input(&m.request, input, s.shape)
                .unwrap_or_else(|e| panic!("{}: {ty}: cannot encode: {e}", s.name));
            ttrpc::proto::Request {
                timeout_nano: 10_000_000_000,
                ..envelope::request(
                    &m.service,
                    &m.name,
                    msg.write_to_bytes_dyn().expect("encode"),
                )
            }
        })
        .collect();
    let first = Instant::now();
    for req in reqs {
        match client.request(req).await {
            Ok(_) | Err(ttrpc::Error::RpcStatus(_)) => {}
            Err(e) => panic!("{}: transport error {e}", s.name),
        }
    }
    let wall = first.elapsed();
    // Closed before SIGTERM, so that serve need not wait for the connection to drain.
    drop(client);
    // One decision-log line per request (written before the answer left).
    let mut decisions = Vec::new();
    for _ in 0..200 {
        decisions = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                let f = v.get("fields")?;
                Some((
                    f.get("request_type")?.as_str()?.to_string(),
                    f.get("eval_us")?.as_u64()?,
                    f.get("allowed")?.as_bool()?,
                ))
            })
            .collect();
        if decisions.len() >= s.requests.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    agent.abort();
    assert_eq!(
        decisions.len(),
        s.requests.len(),
        "{}: decision log lines",
        s.name
    );
    Ours {
        listening,
        decisions,
        wall,
    }
}

/// One pod through kata's own policy code: (type, us, allowed) per request.
fn run_kata(s: &Scenario) -> Vec<(String, f64, Option<bool>)> {
    let oracle = shared().join("kata-reference/bin/kata-policy-oracle");
    let mut lines = String::new();
    for (ty, input) in &s.requests {
        lines.push_str(&serde_json::json!({"kind": ty, "request": input}).to_string());
        lines.push('\n');
    }
    let mut child = Command::new(&oracle)
        .arg(s.dir.join("policy.rego"))
        .arg("--v0")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", oracle.display()));
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(lines.as_bytes())
            .expect("write oracle input");
    }
    let out = child.wait_with_output().expect("oracle output");
    let answers: Vec<_> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect();
    assert_eq!(
        answers.len(),
        s.requests.len(),
        "{}: oracle answers",
        s.name
    );
    s.requests
        .iter()
        .zip(answers)
        .map(|((ty, _), a)| {
            (
                ty.clone(),
                a["us"].as_f64().unwrap_or(0.0),
                a["allowed"].as_bool(),
            )
        })
        .collect()
}

fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // Test mode (`cargo test --all-targets`): the heavy run is for `cargo bench` only.
        return;
    }
    let rounds: usize = std::env::var("POD_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let detail = std::env::var("POD_DETAIL").is_ok_and(|v| v == "1");
    let scenarios = scenarios();
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    for round in 1..=rounds {
        println!(
            "\npod: round {round} of {rounds}, load average before: {}",
            load()
        );
        println!(
            "| scenario | requests | start to listening ms | ours total ms | ours slowest ms | kata total ms | kata slowest ms | kata/ours total | kata/ours slowest | wall first→last ms |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        let mut ratios = Vec::new();
        for s in &scenarios {
            // Alternate which side goes first, so the machine's state hits both alike.
            let (ours, kata) = if round % 2 == 1 {
                let o = rt.block_on(run_ours(s, tmp.path()));
                (o, run_kata(s))
            } else {
                let k = run_kata(s);
                (rt.block_on(run_ours(s, tmp.path())), k)
            };
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
            ratios.push(ratio);
            println!(
                "| {} | {} | {:.1} | {:.2} | {:.2} ({}) | {:.2} | {:.2} ({}) | {:.1}× | {:.1}× | {:.1} |",
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
        println!(
            "pod: round {round}: kata/ours per-pod total min {:.1}×, max {:.1}×; load average after: {}",
            ratios.first().copied().unwrap_or(0.0),
            ratios.last().copied().unwrap_or(0.0),
            load()
        );
    }
}
