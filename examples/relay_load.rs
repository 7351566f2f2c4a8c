//! CPU cost per call of agent-warden running as its own process (docs/PERFORMANCE.md).
//!
//!   relay_load AGENT_SOCK TARGET_SOCK SECONDS
//!
//! Starts the demo agent on AGENT_SOCK, waits 1.5 s (start agent-warden in front of it
//! meanwhile, or pass TARGET_SOCK = AGENT_SOCK for the direct run), then sends bursts of
//! 64 StartContainer calls on one connection to TARGET_SOCK for SECONDS and prints the
//! calls per second and this process's CPU time (client + agent) per call. Read the
//! proxy's CPU time from /proc/PID/stat (utime + stime) before and after.
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_warden::tools::demo::{start_demo_agent, DemoAgent};
use agent_warden::wire::protocols::{agent, agent_ttrpc};

/// utime + stime of this process, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, agent_sock, target, secs] = &args[..] else {
        eprintln!("usage: relay_load AGENT_SOCK TARGET_SOCK SECONDS");
        std::process::exit(2);
    };
    let secs: u64 = secs.parse().expect("SECONDS");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let _ = std::fs::remove_file(agent_sock);
        let _agent = start_demo_agent(
            std::path::Path::new(agent_sock),
            Arc::new(DemoAgent::default()),
        )
        .await
        .expect("demo agent");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let client = agent_ttrpc::AgentServiceClient::new(
            ttrpc::r#async::Client::connect(&format!("unix://{target}"))
                .await
                .expect("connect"),
        );
        let req = agent::StartContainerRequest {
            container_id: "c1".into(),
            ..Default::default()
        };
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let mut calls = 0u64;
        while t0.elapsed() < Duration::from_secs(secs) {
            let burst =
                (0..64).map(|_| client.start_container(ttrpc::context::with_timeout(0), &req));
            for r in futures::future::join_all(burst).await {
                r.expect("call");
            }
            calls += 64;
        }
        println!(
            "{:.0} calls/s; client + agent CPU {:.2} µs per call",
            calls as f64 / t0.elapsed().as_secs_f64(),
            (cpu_seconds() - c0) / calls as f64 * 1e6
        );
    });
}
