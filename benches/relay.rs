//! relay: one small unary call (allow-all policy) through agent-warden vs straight to
//! the same ttrpc agent, on unix sockets; and 64 calls in flight on one connection.
//! A third variant runs agent-warden with a policy whose StartContainerRequest rule is
//! evaluated on every request (allow-all's rules are constants, decided without any
//! evaluation), to show what a decision adds.

use std::sync::Arc;

use agent_warden::policy::sources::ALLOW_ALL_POLICY;
use agent_warden::policy::{Policy, RegoVersion};
use agent_warden::serve;
use agent_warden::serve::address::{Address, Listener};
use agent_warden::serve::judge::Guard;
use agent_warden::tools::demo::{start_demo_agent, DemoAgent};
use agent_warden::wire::input::InputShape;
use agent_warden::wire::protocols::{agent, agent_ttrpc};
use criterion::{criterion_group, criterion_main, Criterion};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent_sock = dir.path().join("agent.sock");
    let warden_sock = dir.path().join("warden.sock");
    let evaluated_sock = dir.path().join("evaluated.sock");
    let (direct, proxied, evaluated, _server) = rt.block_on(async {
        let server = start_demo_agent(&agent_sock, Arc::new(DemoAgent::default()))
            .await
            .unwrap();
        // agent-warden with `policy` on `sock`, in front of the demo agent.
        let serve = |name: &str, policy: &str, sock: &std::path::Path| {
            let policy = Policy::load(name, policy, RegoVersion::V0).unwrap();
            let guard = Arc::new(Guard::new(policy, InputShape::Current));
            let (sock, agent) = (sock.to_path_buf(), agent_sock.clone());
            async move {
                let listener = Listener::bind(&Address::Unix(sock)).await.unwrap();
                tokio::spawn(serve::run(
                    listener,
                    Address::Unix(agent),
                    guard,
                    std::future::pending(),
                ));
            }
        };
        serve("allow-all.rego", ALLOW_ALL_POLICY, &warden_sock).await;
        serve("evaluated.rego", EVALUATED_POLICY, &evaluated_sock).await;
        let connect = |p: &std::path::Path| format!("unix://{}", p.display());
        let direct = agent_ttrpc::AgentServiceClient::new(
            ttrpc::r#async::Client::connect(&connect(&agent_sock))
                .await
                .unwrap(),
        );
        let proxied = agent_ttrpc::AgentServiceClient::new(
            ttrpc::r#async::Client::connect(&connect(&warden_sock))
                .await
                .unwrap(),
        );
        let evaluated = agent_ttrpc::AgentServiceClient::new(
            ttrpc::r#async::Client::connect(&connect(&evaluated_sock))
                .await
                .unwrap(),
        );
        (direct, proxied, evaluated, server)
    });
    let req = agent::StartContainerRequest {
        container_id: "c1".into(),
        ..Default::default()
    };
    let ctx = || ttrpc::context::with_timeout(0);
    let mut g = c.benchmark_group("relay");
    let variants = [
        ("direct", &direct),
        ("agent-warden", &proxied),
        ("agent-warden-evaluated", &evaluated),
    ];
    for (name, client) in variants {
        g.bench_function(format!("unary/{name}"), |b| {
            b.iter(|| rt.block_on(client.start_container(ctx(), &req)).unwrap())
        });
    }
    for (name, client) in variants {
        g.bench_function(format!("64-in-flight/{name}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let calls = (0..64).map(|_| client.start_container(ctx(), &req));
                    for r in futures::future::join_all(calls).await {
                        r.unwrap();
                    }
                })
            })
        });
    }
    g.finish();
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }

    // Ratios from interleaved runs in this process (same agent, same load). Interleaved
    // in blocks, not call by call: the tail of a proxied call (the relay's writer and
    // log work after the answer went out) would otherwise land on the next direct call
    // and make "direct" look slower than it is. The first calls of each block are
    // dropped for the same reason.
    use std::time::{Duration, Instant};
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let us = |x: Duration| x.as_secs_f64() * 1e6;
    // Per variant: all call times, and the median of each block.
    let mut calls: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    let mut blocks: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    for _ in 0..20 {
        for (v, (_, client)) in variants.iter().enumerate() {
            let mut block = Vec::new();
            for i in 0..210 {
                let t = Instant::now();
                rt.block_on(client.start_container(ctx(), &req)).unwrap();
                if i >= 10 {
                    block.push(t.elapsed());
                }
            }
            calls[v].extend_from_slice(&block);
            blocks[v].push(median(&mut block));
        }
    }
    println!();
    let dm = median(&mut calls[0]);
    println!(
        "relay unary: direct median {:.1} µs (min {:.1}, max {:.0})",
        us(dm),
        us(*calls[0].iter().min().unwrap()),
        us(*calls[0].iter().max().unwrap())
    );
    for v in 1..variants.len() {
        let mut ratios: Vec<f64> = blocks[0]
            .iter()
            .zip(&blocks[v])
            .map(|(d, p)| us(*p) / us(*d))
            .collect();
        ratios.sort_by(f64::total_cmp);
        let pm = median(&mut calls[v]);
        println!(
            "relay unary: {} median {:.1} µs (min {:.1}, max {:.0}); ratio {:.2}x (per-block min {:.2}x, max {:.2}x); added {:.1} µs",
            variants[v].0,
            us(pm),
            us(*calls[v].iter().min().unwrap()),
            us(*calls[v].iter().max().unwrap()),
            us(pm) / us(dm),
            ratios[0],
            ratios[ratios.len() - 1],
            us(pm) - us(dm)
        );
    }
    let burst = |client: &agent_ttrpc::AgentServiceClient| {
        let t = Instant::now();
        rt.block_on(async {
            let calls = (0..64).map(|_| client.start_container(ctx(), &req));
            for r in futures::future::join_all(calls).await {
                r.unwrap();
            }
        });
        t.elapsed()
    };
    let mut blocks: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    for _ in 0..15 {
        for (v, (_, client)) in variants.iter().enumerate() {
            let _ = burst(client);
            let mut block: Vec<Duration> = (0..20).map(|_| burst(client)).collect();
            blocks[v].push(median(&mut block));
        }
    }
    let dm = median(&mut blocks[0].clone());
    println!(
        "relay 64 in flight: direct {:.0} calls/s",
        64.0 / dm.as_secs_f64()
    );
    for v in 1..variants.len() {
        let mut tput: Vec<f64> = blocks[0]
            .iter()
            .zip(&blocks[v])
            .map(|(d, p)| d.as_secs_f64() / p.as_secs_f64())
            .collect();
        tput.sort_by(f64::total_cmp);
        let pm = median(&mut blocks[v].clone());
        println!(
            "relay 64 in flight: {} {:.0} calls/s; throughput ratio {:.2} (per-block min {:.2}, max {:.2})",
            variants[v].0,
            64.0 / pm.as_secs_f64(),
            dm.as_secs_f64() / pm.as_secs_f64(),
            tput[0],
            tput[tput.len() - 1]
        );
    }
}

/// StartContainerRequest is a rule evaluated per request (compiled fast path).
const EVALUATED_POLICY: &str = r#"package agent_policy

default StartContainerRequest := false
StartContainerRequest { input.container_id != "" }
"#;

criterion_group!(benches, bench);
criterion_main!(benches);
