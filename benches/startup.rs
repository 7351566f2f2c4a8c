//! startup: the `agent-warden` binary from process start to accepting connections, with a
//! ~60 KB policy, including loading, checking and digesting it. Two policies:
//!   generated-60KB  testdata/policy-60k.rego (our exec-allowlist grown to 60 KB)
//!   genpolicy-60KB  ../shared/peers/kata-genpolicy/web/policy.rego (55 KB), padded to
//!                   60 KB with a trailing comment, written to a temporary directory
//! Then the footprint of that process (genpolicy policy): resident memory idle, and
//! under 64 requests in flight on one connection (a recorded CreateContainerRequest and
//! StartContainerRequest, both allowed by the policy) against a demo agent; and idle
//! with the generated policy.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_warden::tools::demo::{start_demo_agent, DemoAgent};
use agent_warden::wire::encode;
use agent_warden::wire::input::InputShape;
use agent_warden::wire::methods;
use agent_warden::wire::protocols::{agent, agent_ttrpc};
use criterion::{criterion_group, criterion_main, Criterion};
use protobuf::Message;

const BIN: &str = env!("CARGO_BIN_EXE_agent-warden");

fn peer_policy_path() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/peers/kata-genpolicy/web/policy.rego");
    p.is_file().then_some(p)
}

fn generated_policy_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/policy-60k.rego")
}

/// The peer policy padded to 60,000 bytes with a trailing comment, in `dir`.
fn padded_peer_policy(dir: &Path) -> Option<PathBuf> {
    let mut text = std::fs::read_to_string(peer_policy_path()?).ok()?;
    text.push_str("\n# padding to a 60 KB policy for the start-up benchmark\n");
    while text.len() < 60_000 {
        text.push_str("# ..............................................................\n");
    }
    let p = dir.join("genpolicy-60k.rego");
    std::fs::write(&p, text).ok()?;
    Some(p)
}

fn spawn(policy: &Path, shape: &str, sock: &Path, agent: &Path) -> Child {
    let _ = std::fs::remove_file(sock);
    Command::new(BIN)
        // Rego v0: genpolicy's policies are v0 (the generated one imports rego.v1).
        .args([
            "--log",
            "warn",
            "serve",
            "--rego",
            "v0",
            "--input-shape",
            shape,
        ])
        .arg("--listen")
        .arg(format!("unix://{}", sock.display()))
        .arg("--agent")
        .arg(format!("unix://{}", agent.display()))
        .arg("--policy")
        .arg(policy)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent-warden")
}

/// Waits until the socket accepts a connection; returns the time since `t0`.
fn until_listening(sock: &Path, t0: Instant) -> Duration {
    loop {
        if std::os::unix::net::UnixStream::connect(sock).is_ok() {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "never listened");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn stop(mut c: Child) {
    // SIGTERM, as a guest's init would. A SIGTERM that arrives in the instant after the
    // socket starts accepting can be lost (serve registers its signal handlers only
    // once it runs the accept loop); then SIGKILL after 3 s instead of hanging.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!(
        "startup: agent-warden ignored SIGTERM sent right after it started listening; killed"
    );
    let _ = c.kill();
    let _ = c.wait();
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The web scenario's first recorded CreateContainerRequest, as protobuf.
fn recorded_create() -> Option<agent::CreateContainerRequest> {
    let dir = peer_policy_path()?.parent()?.to_path_buf();
    let inputs = std::fs::read_to_string(dir.join("inputs.txt")).ok()?;
    let js = inputs.lines().find_map(|l| {
        l.trim()
            .strip_prefix("[\"ep\":\"CreateContainerRequest\",")?
            .trim_end_matches(',')
            .strip_suffix(']')
            .map(str::to_string)
    })?;
    let input: serde_json::Value = serde_json::from_str(&js).ok()?;
    let desc = methods::table().request_descriptor("CreateContainerRequest")?;
    let bytes = encode::from_policy_input(desc, &input, InputShape::LegacyStreamPorts)
        .ok()?
        .write_to_bytes_dyn()
        .ok()?;
    agent::CreateContainerRequest::parse_from_bytes(&bytes).ok()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("warden.sock");
    let agent_sock = dir.path().join("agent.sock");
    // (label, policy file, input shape)
    let mut policies = vec![("generated-60KB", generated_policy_path(), "current")];
    let peer = padded_peer_policy(dir.path());
    match &peer {
        Some(p) => policies.push(("genpolicy-60KB", p.clone(), "legacy-stream-ports")),
        None => eprintln!("startup: no peer policy under ../shared/peers; genpolicy case skipped"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _agent = rt.block_on(async {
        start_demo_agent(&agent_sock, Arc::new(DemoAgent::default()))
            .await
            .unwrap()
    });

    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); policies.len()];
    let mut g = c.benchmark_group("startup");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_millis(500));
    for ((label, policy, shape), times) in policies.iter().zip(times.iter_mut()) {
        g.bench_function(format!("start-to-listening/{label}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t0 = Instant::now();
                    let child = spawn(policy, shape, &sock, &agent_sock);
                    let d = until_listening(&sock, t0);
                    total += d;
                    times.push(d);
                    stop(child);
                }
                total
            })
        });
    }
    g.finish();
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!();
    for ((label, policy, _), times) in policies.iter().zip(times.iter_mut()) {
        times.sort();
        println!(
            "startup: start to listening, {label} ({} bytes): median {:.1} ms (min {:.1}, max {:.1}) over {} starts",
            std::fs::metadata(policy).map(|m| m.len()).unwrap_or(0),
            ms(times[times.len() / 2]),
            ms(times[0]),
            ms(times[times.len() - 1]),
            times.len()
        );
    }

    // Footprint idle, each policy.
    for (label, policy, shape) in &policies {
        let child = spawn(policy, shape, &sock, &agent_sock);
        until_listening(&sock, Instant::now());
        std::thread::sleep(Duration::from_millis(500));
        println!(
            "footprint: VmRSS idle, {label}: {:.1} MiB",
            mib(rss_kib(child.id()))
        );
        stop(child);
    }

    // Footprint under load: genpolicy policy, 64 in flight on one connection, RSS
    // sampled every 2 ms by a separate thread.
    let Some(peer) = peer else { return };
    let child = spawn(&peer, "legacy-stream-ports", &sock, &agent_sock);
    until_listening(&sock, Instant::now());
    std::thread::sleep(Duration::from_millis(300));
    let create = recorded_create().expect("a recorded CreateContainerRequest");
    let pid = child.id();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        })
    };
    let calls = rt.block_on(async {
        let client = agent_ttrpc::AgentServiceClient::new(
            ttrpc::r#async::Client::connect(&format!("unix://{}", sock.display()))
                .await
                .unwrap(),
        );
        let start = agent::StartContainerRequest {
            container_id: "c1".into(),
            ..Default::default()
        };
        let ctx = || ttrpc::context::with_timeout(0);
        let mut calls = 0usize;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            let creates = (0..32).map(|_| client.create_container(ctx(), &create));
            let starts = (0..32).map(|_| client.start_container(ctx(), &start));
            let (a, b) = futures::future::join(
                futures::future::join_all(creates),
                futures::future::join_all(starts),
            )
            .await;
            for r in a {
                r.expect("CreateContainer allowed");
            }
            for r in b {
                r.expect("StartContainer allowed");
            }
            calls += 64;
        }
        calls
    });
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap_or(0);
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib(pid);
    stop(child);
    println!(
        "footprint: VmRSS under 64 in flight (genpolicy-60KB, 32 CreateContainer + 32 StartContainer per round): peak {:.1} MiB ({} calls in 3 s); after {:.1} MiB",
        mib(peak),
        calls,
        mib(after)
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
