//! relay: one small unary call (allow-all policy) through agent-warden vs straight to
//! the same ttrpc agent, on unix sockets; and 64 calls in flight on one connection.

use std::sync::Arc;

use agent_warden::address::{Address, Listener};
use agent_warden::codec::InputShape;
use agent_warden::demo::{start_demo_agent, DemoAgent};
use agent_warden::policy::{Policy, RegoVersion};
use agent_warden::protocols::{agent, agent_ttrpc};
use agent_warden::relay::Guard;
use agent_warden::server::{self, ALLOW_ALL_POLICY};
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
    let (direct, proxied, _server) = rt.block_on(async {
        let server = start_demo_agent(&agent_sock, Arc::new(DemoAgent::default()))
            .await
            .unwrap();
        let policy = Policy::load("allow-all.rego", ALLOW_ALL_POLICY, RegoVersion::V0).unwrap();
        let guard = Arc::new(Guard::new(policy, InputShape::Current));
        let listener = Listener::bind(&Address::Unix(warden_sock.clone()))
            .await
            .unwrap();
        tokio::spawn(server::run(
            listener,
            Address::Unix(agent_sock.clone()),
            guard,
            std::future::pending(),
        ));
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
        (direct, proxied, server)
    });
    let req = agent::StartContainerRequest {
        container_id: "c1".into(),
        ..Default::default()
    };
    let ctx = || ttrpc::context::with_timeout(0);
    let mut g = c.benchmark_group("relay");
    for (name, client) in [("direct", &direct), ("agent-warden", &proxied)] {
        g.bench_function(format!("unary/{name}"), |b| {
            b.iter(|| rt.block_on(client.start_container(ctx(), &req)).unwrap())
        });
    }
    for (name, client) in [("direct", &direct), ("agent-warden", &proxied)] {
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
    let (mut d, mut p) = (Vec::new(), Vec::new());
    let (mut dblocks, mut pblocks) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        for (client, all, blocks) in [
            (&direct, &mut d, &mut dblocks),
            (&proxied, &mut p, &mut pblocks),
        ] {
            let mut block = Vec::new();
            for i in 0..210 {
                let t = Instant::now();
                rt.block_on(client.start_container(ctx(), &req)).unwrap();
                if i >= 10 {
                    block.push(t.elapsed());
                }
            }
            all.extend_from_slice(&block);
            blocks.push(median(&mut block));
        }
    }
    let ratios: Vec<f64> = dblocks
        .iter()
        .zip(&pblocks)
        .map(|(d, p)| us(*p) / us(*d))
        .collect();
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let (dmin, dmax) = (*d.iter().min().unwrap(), *d.iter().max().unwrap());
    let (pmin, pmax) = (*p.iter().min().unwrap(), *p.iter().max().unwrap());
    let (dm, pm) = (median(&mut d), median(&mut p));
    println!();
    println!(
        "relay unary: direct median {:.1} µs (min {:.1}, max {:.0}); agent-warden median {:.1} µs (min {:.1}, max {:.0}); ratio {:.2}x (per-block min {:.2}x, max {:.2}x); added {:.1} µs",
        us(dm), us(dmin), us(dmax), us(pm), us(pmin), us(pmax),
        us(pm) / us(dm),
        sorted[0],
        sorted[sorted.len() - 1],
        us(pm) - us(dm)
    );
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
    let (mut dblocks, mut pblocks) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        for (client, blocks) in [(&direct, &mut dblocks), (&proxied, &mut pblocks)] {
            let _ = burst(client);
            let mut block: Vec<Duration> = (0..20).map(|_| burst(client)).collect();
            blocks.push(median(&mut block));
        }
    }
    let mut tput: Vec<f64> = dblocks
        .iter()
        .zip(&pblocks)
        .map(|(d, p)| d.as_secs_f64() / p.as_secs_f64())
        .collect();
    tput.sort_by(f64::total_cmp);
    let (dm, pm) = (median(&mut dblocks), median(&mut pblocks));
    println!(
        "relay 64 in flight: direct {:.0} calls/s, agent-warden {:.0} calls/s; throughput ratio {:.2} (per-block min {:.2}, max {:.2})",
        64.0 / dm.as_secs_f64(),
        64.0 / pm.as_secs_f64(),
        dm.as_secs_f64() / pm.as_secs_f64(),
        tput[0],
        tput[tput.len() - 1]
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
