//! A pod's requests decided cold, as a guest decides them: through a fresh release
//! `agent-warden serve` process (in front of an agent that answers every request OK),
//! and, beside it, through a fresh kata-agent policy oracle
//! (../shared/kata-reference/bin/kata-policy-oracle, kata-agent's own policy code).
//! Shared by benches/pod.rs and benches/layers.rs.
//!
//! Ours: each decision's time comes from the decision log (OPA's
//! `metrics.timer_rego_query_eval_ns`, in µs here: converting the input and
//! evaluating; not decoding, not masking, not the relay). Kata's: the `us` the oracle
//! reports (time in kata's `allow_request`). Policy load is counted on neither side;
//! ours is reported separately as start to listening.
//!
//! agent-warden runs without `RUST_BACKTRACE`, as its unit does in a guest. kata-agent
//! sets `RUST_BACKTRACE=full` for itself at start (its main.rs), so its engine runs with
//! it in a guest; [`Backtrace`] chooses which way a kata figure is taken.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_warden::wire::encode;
use agent_warden::wire::envelope;
use agent_warden::wire::frame::{self, FrameReader, Read};
use agent_warden::wire::input::InputShape;
use agent_warden::wire::methods;
use tokio::io::AsyncWriteExt;

pub const BIN: &str = env!("CARGO_BIN_EXE_agent-warden");

pub fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

/// A pod: a policy file and the requests (policy input JSON) sent in order.
pub struct Pod<'a> {
    pub name: &'a str,
    pub policy: &'a Path,
    /// `v0` or `v1`.
    pub rego: &'a str,
    pub shape: InputShape,
    pub requests: &'a [(String, serde_json::Value)],
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
pub struct Ours {
    pub listening: Duration,
    /// (request type, evaluation µs, allowed) per decision, in order (empty without
    /// the decision log).
    pub decisions: Vec<(String, u64, bool)>,
    pub wall: Duration,
    /// Each request's round trip as the host saw it, in order.
    pub round_trips: Vec<Duration>,
    /// CPU time agent-warden's threads used from the first request until the last answer
    /// (and, with the decision log, until every record is in the file).
    pub cpu: Duration,
}

/// CPU time used so far by all threads of process `pid` (the first field of each
/// thread's /proc schedstat, ns); zero where /proc cannot say.
pub fn cpu_of(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// Sends the pod's requests, each after the previous answer, through a fresh
/// agent-warden (`bin`: this build, or `POD_BIN` for another) and reads its decisions.
pub async fn run_ours(
    pod: &Pod<'_>,
    tmp: &Path,
    bin: &std::ffi::OsStr,
    decision_log: bool,
) -> Ours {
    run_ours_with(pod, tmp, bin, decision_log, &[]).await
}

/// [`run_ours`] with `extra` serve flags (e.g. `--measure SPEC`).
pub async fn run_ours_with(
    pod: &Pod<'_>,
    tmp: &Path,
    bin: &std::ffi::OsStr,
    decision_log: bool,
    extra: &[String],
) -> Ours {
    let sock = tmp.join("warden.sock");
    let agent_sock = tmp.join("agent.sock");
    let log = tmp.join("decisions.jsonl");
    for p in [&sock, &agent_sock, &log] {
        let _ = std::fs::remove_file(p);
    }
    let agent = ok_agent(&agent_sock).await;
    let t0 = Instant::now();
    let mut cmd = Command::new(bin);
    cmd.args([
        "--log",
        "warn",
        "serve",
        "--rego",
        pod.rego,
        "--input-shape",
        pod.shape.name(),
    ]);
    if decision_log {
        cmd.arg("--decision-log").arg(&log);
    }
    cmd.args(extra);
    let mut child = cmd
        .arg("--listen")
        .arg(format!("unix://{}", sock.display()))
        .arg("--agent")
        .arg(format!("unix://{}", agent_sock.display()))
        .arg("--policy")
        .arg(pod.policy)
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
    let reqs: Vec<ttrpc::proto::Request> = pod
        .requests
        .iter()
        .map(|(ty, input)| {
            let m = methods::table()
                .all()
                .iter()
                .find(|m| m.request_type == *ty)
                .unwrap_or_else(|| panic!("{ty}: unknown request type"));
            let msg = encode::from_policy_input(&m.request, input, pod.shape)
                .unwrap_or_else(|e| panic!("{}: {ty}: cannot encode: {e}", pod.name));
            ttrpc::proto::Request {
                timeout_nano: 60_000_000_000,
                ..envelope::request(
                    &m.service,
                    &m.name,
                    msg.write_to_bytes_dyn().expect("encode"),
                )
            }
        })
        .collect();
    let cpu_before = cpu_of(child.id());
    let first = Instant::now();
    let mut round_trips = Vec::with_capacity(reqs.len());
    for req in reqs {
        let sent = Instant::now();
        match client.request(req).await {
            Ok(_) | Err(ttrpc::Error::RpcStatus(_)) => {}
            Err(e) => panic!("{}: transport error {e}", pod.name),
        }
        round_trips.push(sent.elapsed());
    }
    let wall = first.elapsed();
    // Closed before SIGTERM, so that serve need not wait for the connection to drain.
    drop(client);
    // One decision record per request (written before the answer left): the request
    // type from OPA's `path`, the evaluation time from `metrics`, and agent-warden's
    // `allowed`.
    let mut decisions = Vec::new();
    for _ in 0..200 {
        if !decision_log {
            break;
        }
        decisions = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                // A POD_BIN from before the OPA-format log wrote tracing events.
                if let Some(f) = v.get("fields") {
                    return Some((
                        f.get("request_type")?.as_str()?.to_string(),
                        f.get("eval_us")?.as_u64()?,
                        f.get("allowed")?.as_bool()?,
                    ));
                }
                let own = v.get("agent_warden")?;
                Some((
                    v.get("path")?
                        .as_str()?
                        .strip_prefix("agent_policy/")?
                        .to_string(),
                    v.get("metrics")?
                        .get("timer_rego_query_eval_ns")?
                        .as_u64()?
                        / 1000,
                    own.get("allowed")?.as_bool()?,
                ))
            })
            .collect();
        if decisions.len() >= pod.requests.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu = cpu_of(child.id()).saturating_sub(cpu_before);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    agent.abort();
    if decision_log {
        assert_eq!(
            decisions.len(),
            pod.requests.len(),
            "{}: decision log records",
            pod.name
        );
    }
    Ours {
        listening,
        decisions,
        wall,
        round_trips,
        cpu,
    }
}

/// How kata's oracle runs: `RUST_BACKTRACE=full` as kata-agent sets it for itself in
/// a guest, or unset (the engine alone).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backtrace {
    Full,
    Unset,
}

/// One pod through kata's own policy code: (type, us, allowed) per request.
pub fn run_kata(pod: &Pod<'_>, backtrace: Backtrace) -> Vec<(String, f64, Option<bool>)> {
    let oracle = shared().join("kata-reference/bin/kata-policy-oracle");
    let mut lines = String::new();
    for (ty, input) in pod.requests {
        lines.push_str(&serde_json::json!({"kind": ty, "request": input}).to_string());
        lines.push('\n');
    }
    let mut cmd = Command::new(&oracle);
    cmd.arg(pod.policy)
        .arg(format!("--{}", pod.rego))
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    if backtrace == Backtrace::Full {
        cmd.env("RUST_BACKTRACE", "full");
    }
    let mut child = cmd
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
        pod.requests.len(),
        "{}: oracle answers",
        pod.name
    );
    pod.requests
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

/// The load average, for the record of each run.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A number from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The runtime the client side runs on (two workers, as the machine has two cores).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}
