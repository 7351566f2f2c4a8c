//! The per-evaluation time limit: a policy evaluation that runs over it fails closed
//! with INTERNAL, and nothing reaches the agent. (Its own test binary: the limit is
//! process-wide.)

mod common;

use std::time::{Duration, Instant};

use agent_warden::policy::{self, Decision, Policy, RegoVersion};
use agent_warden::wire::protocols::agent;
use common::{ctx, status, Harness};

/// ExecProcessRequest loops ~25 million times before failing; the rest is quick.
const SLOW: &str = r#"package agent_policy
default ExecProcessRequest := false
ExecProcessRequest {
    some i, j
    numbers.range(1, 5000)[i]
    numbers.range(1, 5000)[j]
    i * j == -1
}
default StartContainerRequest := true
"#;

#[tokio::test]
async fn an_evaluation_over_the_time_limit_is_internal_and_not_forwarded() {
    policy::set_eval_timeout(Duration::from_millis(100));
    assert_eq!(policy::eval_timeout(), Duration::from_millis(100));

    let p = Policy::load("slow.rego", SLOW, RegoVersion::V0).unwrap();
    let t = Instant::now();
    match p.decide("ExecProcessRequest", &serde_json::json!({})) {
        Decision::Error(e) => assert!(e.to_lowercase().contains("time limit"), "{e}"),
        d => panic!("expected an error, got {d:?}"),
    }
    // Stopped near the limit, far before the loop would finish.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    let h = Harness::start(SLOW).await;
    let c = h.agent_client().await;
    let (code, msg) = status(
        c.exec_process(ctx(), &agent::ExecProcessRequest::new())
            .await,
    );
    assert_eq!(code, 13, "{msg}");
    assert!(
        msg.starts_with("ExecProcessRequest: internal error:")
            && msg.to_lowercase().contains("time limit"),
        "{msg}"
    );
    // The engine is usable afterwards.
    c.start_container(ctx(), &agent::StartContainerRequest::new())
        .await
        .unwrap();
    assert_eq!(h.agent.calls(), vec!["StartContainer".to_string()]);
    h.stop().await;
}
