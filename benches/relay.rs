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
}

criterion_group!(benches, bench);
criterion_main!(benches);
