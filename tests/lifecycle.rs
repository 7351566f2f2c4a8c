//! Policy lifecycle through the relay: SetPolicy, policy state, audit mode, the
//! legacy endpoint list, and the capture file.

mod common;

use std::time::Duration;

use agent_warden::policy::sources::endpoint_list_policy;
use agent_warden::policy::{Policy, RegoVersion};
use agent_warden::serve::audit::Capture;
use agent_warden::serve::judge::{Guard, SetPolicyMode};
use agent_warden::wire::input::InputShape;
use agent_warden::wire::protocols::{agent, oci};
use common::*;
use protobuf::MessageField;

const SWAPPABLE: &str = r#"package agent_policy
import rego.v1
default SetPolicyRequest := true
default ExecProcessRequest := false
default WaitProcessRequest := true
default CreateContainerRequest := true
"#;

const PERMISSIVE_EXEC: &str = r#"package agent_policy
import rego.v1
default SetPolicyRequest := false
default ExecProcessRequest := true
default WaitProcessRequest := false
"#;

fn exec(cid: &str) -> agent::ExecProcessRequest {
    let process = oci::Process {
        Args: vec!["/bin/ls".into()],
        Env: vec!["TOKEN=s3cret".into()],
        ..Default::default()
    };
    agent::ExecProcessRequest {
        container_id: cid.into(),
        process: MessageField::some(process),
        ..Default::default()
    }
}

fn guard(policy: &str) -> Guard {
    Guard::new(
        Policy::load("test.rego", policy, RegoVersion::V0).unwrap(),
        InputShape::Current,
    )
}

fn set_policy(text: &str) -> agent::SetPolicyRequest {
    agent::SetPolicyRequest {
        policy: text.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_set_policy_swaps_and_is_not_forwarded() {
    let h = Harness::start(SWAPPABLE).await;
    let c = h.agent_client().await;
    assert_eq!(status(c.exec_process(ctx(), &exec("c1")).await).0, 7);
    let old = h.guard.policy().digest().to_string();
    c.set_policy(ctx(), &set_policy(PERMISSIVE_EXEC))
        .await
        .unwrap();
    assert_ne!(h.guard.policy().digest(), old);
    c.exec_process(ctx(), &exec("c1")).await.unwrap();
    // The new policy denies SetPolicy: no way back.
    assert_eq!(
        status(c.set_policy(ctx(), &set_policy(SWAPPABLE)).await).0,
        7
    );
    assert_eq!(
        h.agent.calls(),
        vec!["ExecProcess"],
        "SetPolicy never reaches the agent"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_set_policy_keeps_the_old_policy() {
    let h = Harness::start(PERMISSIVE_EXEC).await;
    let c = h.agent_client().await;
    let old = h.guard.policy().digest().to_string();
    let (code, msg) = status(c.set_policy(ctx(), &set_policy(SWAPPABLE)).await);
    assert_eq!(code, 7);
    assert!(
        msg.starts_with("SetPolicyRequest is blocked by policy"),
        "{msg}"
    );
    assert_eq!(h.guard.policy().digest(), old);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_policy_is_kept_out() {
    let h = Harness::start(SWAPPABLE).await;
    let c = h.agent_client().await;
    let old = h.guard.policy().digest().to_string();
    let (code, msg) = status(
        c.set_policy(ctx(), &set_policy("package agent_policy\nx {"))
            .await,
    );
    assert_eq!(code, 3, "{msg}");
    assert!(msg.contains("failed to parse"), "{msg}");
    let (code, _) = status(
        c.set_policy(ctx(), &set_policy("package other\nx := 1\n"))
            .await,
    );
    assert_eq!(code, 3);
    assert_eq!(h.guard.policy().digest(), old);
    assert_eq!(
        status(c.exec_process(ctx(), &exec("c1")).await).0,
        7,
        "old policy still enforced"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_under_the_old_policy() {
    let h = Harness::start(SWAPPABLE).await;
    let c = h.agent_client().await;
    let c2 = c.clone();
    let wait = tokio::spawn(async move {
        c2.wait_process(
            ctx(),
            &agent::WaitProcessRequest {
                container_id: "c1".into(),
                ..Default::default()
            },
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.agent.calls(), vec!["WaitProcess"]);
    c.set_policy(ctx(), &set_policy(PERMISSIVE_EXEC))
        .await
        .unwrap();
    // The new policy denies WaitProcess, but the one in flight was decided before.
    assert_eq!(
        status(
            c.wait_process(ctx(), &agent::WaitProcessRequest::default())
                .await
        )
        .0,
        7
    );
    h.agent.release(1);
    assert_eq!(wait.await.unwrap().unwrap().status, 42);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_policy_is_refused_when_forbidden() {
    let h = Harness::start_guard(guard(SWAPPABLE).with_set_policy(SetPolicyMode::Forbidden)).await;
    let c = h.agent_client().await;
    let (code, msg) = status(c.set_policy(ctx(), &set_policy(PERMISSIVE_EXEC)).await);
    assert_eq!(code, 7);
    assert!(msg.contains("attested initdata"), "{msg}");
    h.stop().await;
}

const STATEFUL: &str = r#"package agent_policy
import rego.v1
CreateContainerRequest := {"allowed": true, "ops": ops} if {
    not data.pstate.containers
    ops := [{"op": "add", "path": "/pstate/containers", "value": {input.container_id: true}}]
}
CreateContainerRequest := {"allowed": true, "ops": ops} if {
    data.pstate.containers
    ops := [{"op": "add", "path": sprintf("/pstate/containers/%s", [input.container_id]), "value": true}]
}
default ExecProcessRequest := false
ExecProcessRequest if data.pstate.containers[input.container_id]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_follows_successful_creates_only() {
    let h = Harness::start(STATEFUL).await;
    let c = h.agent_client().await;
    let create = |id: &str| agent::CreateContainerRequest {
        container_id: id.into(),
        ..Default::default()
    };
    assert_eq!(
        status(c.exec_process(ctx(), &exec("c1")).await).0,
        7,
        "unknown container"
    );
    c.create_container(ctx(), &create("c1")).await.unwrap();
    c.exec_process(ctx(), &exec("c1")).await.unwrap();
    c.create_container(ctx(), &create("c2")).await.unwrap();
    c.exec_process(ctx(), &exec("c2")).await.unwrap();
    assert_eq!(
        status(c.exec_process(ctx(), &exec("c3")).await).0,
        7,
        "never created"
    );
    // The agent fails this create: no state may be left behind.
    assert_eq!(
        status(c.create_container(ctx(), &create("fail-1")).await).0,
        13
    );
    assert_eq!(status(c.exec_process(ctx(), &exec("fail-1")).await).0, 7);
    assert_eq!(
        h.guard.policy().state(),
        serde_json::json!({"containers": {"c1": true, "c2": true}})
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_requests_failing_policy_forwards_denials() {
    let policy = "package agent_policy\nimport rego.v1\ndefault AllowRequestsFailingPolicy := true\ndefault ExecProcessRequest := false\n";
    let h = Harness::start(policy).await;
    assert!(h.guard.policy().is_permissive());
    let c = h.agent_client().await;
    c.exec_process(ctx(), &exec("c1")).await.unwrap();
    assert_eq!(h.agent.calls(), vec!["ExecProcess"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_endpoint_list_blocks_with_unimplemented() {
    let rego =
        endpoint_list_policy("[endpoints]\nallowed = [\"CreateContainerRequest\"]\n").unwrap();
    let h = Harness::start_guard(guard(&rego).with_endpoint_list(true)).await;
    let c = h.agent_client().await;
    c.create_container(ctx(), &agent::CreateContainerRequest::default())
        .await
        .unwrap();
    let (code, msg) = status(c.exec_process(ctx(), &exec("c1")).await);
    assert_eq!((code, msg.as_str()), (12, "ExecProcessRequest is blocked"));
    assert_eq!(h.agent.calls(), vec!["CreateContainer"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_records_masked_replayable_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capture.jsonl");
    let h =
        Harness::start_guard(guard(SWAPPABLE).with_capture(Capture::create(&path, false).unwrap()))
            .await;
    let c = h.agent_client().await;
    let _ = c.exec_process(ctx(), &exec("c1")).await;
    let text = std::fs::read_to_string(&path).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["kind"], "ExecProcessRequest");
    assert_eq!(
        line["request"]["process"]["Env"],
        serde_json::json!(["TOKEN=<masked>"])
    );
    assert!(!text.contains("s3cret"));
    h.stop().await;
}
