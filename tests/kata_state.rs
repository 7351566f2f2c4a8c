//! Policy state as kata-agent keeps it (issue 12, 3(d)): one sequence of requests goes
//! through agent-warden (a real ttrpc client as the host, the recording agent behind
//! it) and through one kata-policy-oracle process (kata-agent's own AgentPolicy, which
//! keeps `data.pstate` and a policy replaced by SetPolicy across lines). At every step
//! both must decide the same: the request runs, or it does not.
//!
//! The first policy keeps state the way kata's genpolicy rules.rego does:
//! CreateContainerRequest answers `{"allowed": true, "ops": [...]}` and records the
//! index of the policy container a container id matched (`state_allows`: add the key
//! if it is new, accept the same value again, refuse another); ExecProcessRequest
//! looks the container up in the state; RemoveContainerRequest removes it (an `ops`
//! that cannot be applied, e.g. removing an unknown key, makes kata-agent answer with
//! an error). A SetPolicy then replaces the policy, and the state starts over. The
//! third policy is in audit mode (AllowRequestsFailingPolicy): ops of a result that is
//! not `allowed` are not applied, even though the request runs.
//!
//! About 0.05 s. Without the oracle the test skips with a message, except under CI=true.
mod common;

use agent_warden::policy::RegoVersion;
use agent_warden::wire::input::InputShape;
use agent_warden::wire::protocols::{agent, agent_ttrpc::AgentServiceClient, oci};
use common::oracle::{oracle_binary, Oracle};
use common::*;
use protobuf::Message;

/// kata's rules.rego, reduced to its state handling.
const STATEFUL: &str = r#"package agent_policy
import rego.v1

default CreateContainerRequest := {"allowed": false}
default ExecProcessRequest := false
default RemoveContainerRequest := {"allowed": false}
default SetPolicyRequest := true

policy_containers := [
	{"name": "pause", "exec": []},
	{"name": "app", "exec": [["/bin/ls"], ["/bin/sh", "-c", "date"]]},
]

CreateContainerRequest := {"ops": ops, "allowed": true} if {
	some idx, p_container in policy_containers
	p_container.name == input.OCI.Annotations["io.kubernetes.cri.container-name"]
	add_container := state_allows(input.container_id, idx)
	ops := concat_op_if_not_null([], add_container)
}

ExecProcessRequest if {
	idx := data.pstate[input.container_id]
	input.process.Args in policy_containers[idx].exec
}

RemoveContainerRequest := {"ops": [state_del_key(input.container_id)], "allowed": true}

# As rules.rego: a new key is added, the same value again needs no op, another value
# leaves the rule undefined.
state_allows(key, value) := action if {
	not data.pstate[key]
	action := {"op": "add", "path": concat("/", ["/pstate", key]), "value": value}
}

state_allows(key, value) := action if {
	value == data.pstate[key]
	action := null
}

state_del_key(key) := {"op": "remove", "path": concat("/", ["/pstate", key])}

concat_op_if_not_null(ops, op) := ops if op == null

concat_op_if_not_null(ops, op) := array.concat(ops, [op]) if op != null
"#;

/// The policy a SetPolicy installs: exec by command, or into the container it created.
const REPLACEMENT: &str = r#"package agent_policy
import rego.v1

default CreateContainerRequest := {"allowed": false}
default ExecProcessRequest := false
default SetPolicyRequest := true

CreateContainerRequest := {"allowed": true, "ops": [{"op": "add", "path": "/pstate/created", "value": input.container_id}]} if {
	input.container_id == "c2"
}

ExecProcessRequest if input.process.Args == ["/bin/date"]

ExecProcessRequest if data.pstate.created == input.container_id

ExecProcessRequest if data.pstate[input.container_id] == 0
"#;

/// Audit mode: everything runs, but the ops of a denying result are not applied.
const AUDIT: &str = r#"package agent_policy
import rego.v1

default AllowRequestsFailingPolicy := true
default SetPolicyRequest := true

CreateContainerRequest := {"allowed": false, "ops": [{"op": "add", "path": "/pstate/sneaky", "value": true}]}

RemoveContainerRequest := {"allowed": true, "ops": [{"op": "remove", "path": "/pstate/sneaky"}]}
"#;

enum Req {
    Create(&'static str, &'static str),
    Exec(&'static str, &'static [&'static str]),
    Remove(&'static str),
    SetPolicy(&'static str),
}

impl Req {
    fn label(&self) -> String {
        match self {
            Req::Create(id, name) => format!("CreateContainer {id} (policy container {name:?})"),
            Req::Exec(id, args) => format!("ExecProcess {id} {args:?}"),
            Req::Remove(id) => format!("RemoveContainer {id}"),
            Req::SetPolicy(p) if *p == REPLACEMENT => "SetPolicy (replacement policy)".into(),
            Req::SetPolicy(_) => "SetPolicy (audit-mode policy)".into(),
        }
    }

    fn create(id: &str, name: &str) -> agent::CreateContainerRequest {
        let mut spec = oci::Spec::new();
        spec.Annotations
            .insert("io.kubernetes.cri.container-name".into(), name.into());
        agent::CreateContainerRequest {
            container_id: id.into(),
            OCI: Some(spec).into(),
            ..Default::default()
        }
    }

    fn exec(id: &str, args: &[&str]) -> agent::ExecProcessRequest {
        let mut process = oci::Process::new();
        process.Args = args.iter().map(|a| a.to_string()).collect();
        agent::ExecProcessRequest {
            container_id: id.into(),
            exec_id: "e1".into(),
            process: Some(process).into(),
            ..Default::default()
        }
    }

    fn remove(id: &str) -> agent::RemoveContainerRequest {
        agent::RemoveContainerRequest {
            container_id: id.into(),
            ..Default::default()
        }
    }

    fn set_policy(p: &str) -> agent::SetPolicyRequest {
        agent::SetPolicyRequest {
            policy: p.into(),
            ..Default::default()
        }
    }

    /// The request type and its protobuf bytes.
    fn wire(&self) -> (&'static str, Vec<u8>) {
        match self {
            Req::Create(id, name) => (
                "CreateContainerRequest",
                Self::create(id, name).write_to_bytes().unwrap(),
            ),
            Req::Exec(id, args) => (
                "ExecProcessRequest",
                Self::exec(id, args).write_to_bytes().unwrap(),
            ),
            Req::Remove(id) => (
                "RemoveContainerRequest",
                Self::remove(id).write_to_bytes().unwrap(),
            ),
            Req::SetPolicy(p) => (
                "SetPolicyRequest",
                Self::set_policy(p).write_to_bytes().unwrap(),
            ),
        }
    }

    /// Sends it through agent-warden: `Ok(())` if it ran, else the status.
    async fn send(&self, c: &AgentServiceClient) -> Result<(), (i32, String)> {
        let r = match self {
            Req::Create(id, name) => c.create_container(ctx(), &Self::create(id, name)).await,
            Req::Exec(id, args) => c.exec_process(ctx(), &Self::exec(id, args)).await,
            Req::Remove(id) => c.remove_container(ctx(), &Self::remove(id)).await,
            Req::SetPolicy(p) => c.set_policy(ctx(), &Self::set_policy(p)).await,
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) => Err(status::<()>(Err(e))),
        }
    }
}

/// The sequence, and what kata-agent decides at each step (checked against the oracle
/// too, so that a change of the sequence cannot silently stop testing state).
const SEQUENCE: &[(Req, bool)] = &[
    (Req::Exec("c1", &["/bin/ls"]), false), // unknown container
    (Req::Create("c1", "app"), true),       // state: c1 -> 1
    (Req::Exec("c1", &["/bin/ls"]), true),
    (Req::Exec("c1", &["/bin/rm", "-rf", "/"]), false), // not a command of c1
    (Req::Exec("c9", &["/bin/ls"]), false),             // unknown container
    (Req::Create("c1", "app"), true),                   // the same again: no op
    (Req::Create("c1", "pause"), false),                // c1 is already another container
    (Req::Create("c2", "pause"), true),                 // state: c2 -> 0
    (Req::Create("c2", "pause"), true),                 // 0 == 0 (`not 0` is false)
    (Req::Remove("c9"), false), // removing an unknown key fails: kata answers an error
    (Req::Remove("c1"), true),  // state: c1 gone
    (Req::Exec("c1", &["/bin/ls"]), false),
    (Req::Create("c1", "pause"), true), // c1 is new again
    (Req::SetPolicy(REPLACEMENT), true),
    (Req::Exec("c2", &["/bin/ls"]), false), // the state started over with the new policy
    (Req::Exec("c2", &["/bin/date"]), true),
    (Req::Create("c2", "app"), true), // state: created -> c2
    (Req::Exec("c2", &["/bin/ls"]), true),
    (Req::Remove("c2"), false), // the new policy has no RemoveContainerRequest rule
    (Req::SetPolicy(AUDIT), true),
    (Req::Create("c3", "app"), true), // denied but audited: runs, its ops are not applied
    (Req::Remove("c3"), false),       // so there is no /pstate/sneaky to remove: error
];

fn shown(kata: &common::oracle::Answer) -> String {
    match (kata.allowed, &kata.error) {
        (Some(true), _) => "runs".into(),
        (Some(false), _) => "denied".into(),
        (None, Some(e)) => format!("error: {}", e.chars().take(60).collect::<String>()),
        (None, None) => "error".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_state_and_set_policy_follow_kata_agent() {
    let Some(bin) = oracle_binary("kata_state") else {
        return;
    };
    let mut oracle = Oracle::start(&bin, STATEFUL, false);
    let h = Harness::start_with(STATEFUL, RegoVersion::V1, InputShape::Current).await;
    let c = h.agent_client().await;

    let mut table = vec![format!(
        "{:<4} {:<48} {:<28} agent-warden",
        "step", "request", "kata-agent (oracle)"
    )];
    let mut mismatches = Vec::new();
    let mut expected_calls = Vec::new();
    for (i, (req, expected)) in SEQUENCE.iter().enumerate() {
        let (kind, bytes) = req.wire();
        let kata = oracle.ask(kind, &bytes);
        let ours = req.send(&c).await;
        let ours_shown = match &ours {
            Ok(()) => "runs".to_string(),
            Err((code, msg)) => {
                format!("code {code}: {}", msg.chars().take(60).collect::<String>())
            }
        };
        table.push(format!(
            "{:<4} {:<48} {:<28} {ours_shown}",
            i + 1,
            req.label(),
            shown(&kata)
        ));
        if kata.runs() != ours.is_ok() || kata.runs() != *expected {
            mismatches.push(format!(
                "step {}: {}: kata {} (expected {}), agent-warden {ours_shown}",
                i + 1,
                req.label(),
                shown(&kata),
                if *expected { "runs" } else { "does not run" }
            ));
        }
        if ours.is_ok() && !matches!(req, Req::SetPolicy(_)) {
            expected_calls.push(kind.trim_end_matches("Request").to_string());
        }
    }
    println!("{}", table.join("\n"));
    assert!(
        mismatches.is_empty(),
        "decisions differ:\n{}\n\n{}",
        mismatches.join("\n"),
        table.join("\n")
    );
    // What ran reached the agent, in order; nothing else did (SetPolicy is answered by
    // agent-warden itself).
    assert_eq!(h.agent.calls(), expected_calls);
    h.stop().await;
}
