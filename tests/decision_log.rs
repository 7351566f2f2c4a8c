//! The decision log end to end: the real `agent-warden serve` between a ttrpc client
//! (the host) and a ttrpc server (the agent) writes OPA-format, chained records;
//! `agent-warden log verify` accepts the log as written and names what is wrong with
//! a log that was cut, edited, reordered, mixed with another boot's or written under
//! another policy; and, measured into a real software TPM (swtpm), that the PCR read by
//! `tpm2_pcrread` and a `tpm2_quote` of it say whether the log is complete.

mod common;
mod swtpm;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_warden::attestation::measure::{self, MeasureError, Register, RegisterKind};
use agent_warden::decision_log::{record, Decided, DecisionLog, LogSettings, Outcome};
use agent_warden::wire::protocols::{agent, agent_ttrpc};
use common::{ctx, status};
use serde_json::Value;
use sha2::Digest;

const POLICY: &str = r#"package agent_policy
import rego.v1
default CreateContainerRequest := true
default StartContainerRequest := true
default CopyFileRequest := true
default SetPolicyRequest := true
default ExecProcessRequest := false
default WriteStreamRequest := true
log_mask contains "/input/container_id" if input.container_id == "secret-c"
"#;

const NEW_POLICY: &str =
    "package agent_policy\nimport rego.v1\ndefault StartContainerRequest := true\n";

fn sha256_hex(text: &str) -> String {
    agent_warden::attestation::to_hex(&sha2::Sha256::digest(text.as_bytes()))
}

/// A serving agent-warden with its decision log, in a temporary directory.
struct Served {
    dir: Option<tempfile::TempDir>,
    child: Option<Child>,
    _agent: ttrpc::r#async::Server,
    client: Option<agent_ttrpc::AgentServiceClient>,
}

impl Drop for Served {
    /// A test that failed half-way leaves no server behind.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Served {
    async fn start(extra: &[&str]) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("warden.sock");
        let agent_sock = dir.path().join("agent.sock");
        let policy = dir.path().join("policy.rego");
        std::fs::write(&policy, POLICY).unwrap();
        let (_, agent) = common::start_agent_server(&agent_sock).await;
        let mut cmd = common::warden_command(&["--log", "warn", "serve"]);
        cmd.arg("--listen")
            .arg(format!("unix://{}", sock.display()))
            .arg("--agent")
            .arg(format!("unix://{}", agent_sock.display()))
            .arg("--policy")
            .arg(&policy)
            .arg("--decision-log")
            .arg(dir.path().join("log.jsonl"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("agent-warden exited early with {st}");
            }
            assert!(Instant::now() < deadline, "never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let c = ttrpc::r#async::Client::connect(&format!("unix://{}", sock.display()))
            .await
            .unwrap();
        Served {
            dir: Some(dir),
            child: Some(child),
            _agent: agent,
            client: Some(agent_ttrpc::AgentServiceClient::new(c)),
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.as_ref().unwrap().path().join("log.jsonl")
    }

    fn client(&self) -> &agent_ttrpc::AgentServiceClient {
        self.client.as_ref().unwrap()
    }

    /// A pod's worth of requests: allowed, denied, a payload, a masked field, SetPolicy.
    async fn session(&self) {
        let c = self.client();
        let start = |id: &str| agent::StartContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        c.start_container(ctx(), &start("c1")).await.unwrap();
        c.start_container(ctx(), &start("secret-c")).await.unwrap();
        let exec = agent::ExecProcessRequest {
            container_id: "c1".into(),
            ..Default::default()
        };
        assert_eq!(status(c.exec_process(ctx(), &exec).await).0, 7);
        let copy = agent::CopyFileRequest {
            path: "/run/kata-containers/shared/containers/c1-cm/key".into(),
            file_mode: 0o100644,
            data: b"the tenant's secret".to_vec(),
            file_size: 19,
            ..Default::default()
        };
        c.copy_file(ctx(), &copy).await.unwrap();
        let stdin = agent::WriteStreamRequest {
            container_id: "c1".into(),
            data: b"the tenant's password".to_vec(),
            ..Default::default()
        };
        // The recording agent does not implement WriteStdin: its status is logged.
        assert_ne!(status(c.write_stdin(ctx(), &stdin).await).0, 0);
        let set = agent::SetPolicyRequest {
            policy: NEW_POLICY.into(),
            ..Default::default()
        };
        c.set_policy(ctx(), &set).await.unwrap();
        c.start_container(ctx(), &start("c2")).await.unwrap();
    }

    /// Closes the connection, SIGTERM, then waits for the process (the log is complete
    /// once it exited).
    fn stop(mut self) -> tempfile::TempDir {
        drop(self.client.take());
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let st = child.wait().unwrap();
        assert!(st.success(), "agent-warden exited with {st}");
        self.dir.take().unwrap()
    }
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `agent-warden log verify ARGS`: (success, stdout + stderr).
fn verify(args: &[&str]) -> (bool, String) {
    let mut all = vec!["log", "verify"];
    all.extend_from_slice(args);
    let o = common::run_warden(&all);
    (o.status.success(), common::stdout(&o) + &common::stderr(&o))
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_log_is_opa_shaped_masked_and_verifies() {
    let s = Served::start(&[]).await;
    s.session().await;
    let log = s.log();
    let dir = s.stop();
    let recs = records(&log);
    let own = |r: &Value| r["agent_warden"].clone();
    // Genesis, 7 decisions, the policy replacement.
    assert_eq!(recs.len(), 9, "{recs:#?}");
    let g = own(&recs[0]);
    assert_eq!(g["type"], "genesis");
    assert_eq!(g["seq"], 0);
    assert_eq!(g["policy_digest"], sha256_hex(POLICY));
    assert_eq!(g["nonce"].as_str().unwrap().len(), 64);
    let nonce = g["nonce"].as_str().unwrap().to_string();
    let decisions: Vec<&Value> = recs
        .iter()
        .filter(|r| own(r)["type"] == "decision")
        .collect();
    assert_eq!(decisions.len(), 7);
    for d in &decisions {
        for field in [
            "decision_id",
            "path",
            "timestamp",
            "metrics",
            "labels",
            "bundles",
        ] {
            assert!(d.get(field).is_some(), "no {field} in {d}");
        }
        assert!(d["metrics"]["timer_rego_query_eval_ns"].is_u64(), "{d}");
        assert_eq!(d["labels"]["id"], g["instance"]);
    }
    let start = decisions[0];
    assert_eq!(start["path"], "agent_policy/StartContainerRequest");
    assert_eq!(start["result"], true);
    assert_eq!(start["input"]["container_id"], "c1");
    assert_eq!(
        start["bundles"]["agent_policy"]["revision"],
        sha256_hex(POLICY)
    );
    assert_eq!(own(start)["outcome"], "forwarded");
    assert_eq!(own(start)["status"], 0);
    // The policy's log_mask erased this container's id.
    let secret = decisions[1];
    assert!(secret["input"].get("container_id").is_none(), "{secret}");
    assert_eq!(secret["erased"], serde_json::json!(["/input/container_id"]));
    let exec = decisions[2];
    assert_eq!(exec["result"], false);
    assert_eq!(own(exec)["outcome"], "refused");
    assert_eq!(own(exec)["status"], 7);
    assert!(own(exec)["reason"]
        .as_str()
        .unwrap()
        .contains("ExecProcessRequest"));
    // CopyFile's payload is not in kata's input; WriteStdin's is erased by default,
    // and the agent's own status is logged.
    let copy = decisions[3];
    assert_eq!(copy["path"], "agent_policy/CopyFileRequest");
    assert!(copy["input"].get("data").is_none(), "{copy}");
    let stdin = decisions[4];
    assert_eq!(stdin["path"], "agent_policy/WriteStreamRequest");
    assert!(stdin["input"].get("data").is_none(), "{stdin}");
    assert_eq!(stdin["erased"], serde_json::json!(["/input/data"]));
    assert_eq!(own(stdin)["outcome"], "forwarded");
    assert!(own(stdin)["status"].as_i64().unwrap() > 0, "{stdin}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("secret\"") && !text.contains("password"));
    // SetPolicy: its decision, then the replacement, then decisions under the new policy.
    let decisions = &decisions[1..];
    assert_eq!(decisions[4]["path"], "agent_policy/SetPolicyRequest");
    assert_eq!(own(decisions[4])["outcome"], "answered");
    let swap = recs
        .iter()
        .find(|r| own(r)["type"] == "set_policy")
        .unwrap();
    assert_eq!(own(swap)["old_policy_digest"], sha256_hex(POLICY));
    assert_eq!(own(swap)["policy_digest"], sha256_hex(NEW_POLICY));
    assert_eq!(
        decisions[5]["bundles"]["agent_policy"]["revision"],
        sha256_hex(NEW_POLICY)
    );
    let path = log.to_str().unwrap();
    let (ok, out) = verify(&[
        path,
        "--policy-digest",
        &sha256_hex(POLICY),
        "--nonce",
        &nonce,
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("chain ok: 9 records") && out.contains("7 decisions"),
        "{out}"
    );
    assert!(out.contains("SetPolicy replaced policy"), "{out}");
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_edited_reordered_foreign_and_damaged_logs_are_named() {
    let s = Served::start(&[]).await;
    s.session().await;
    let log = s.log();
    let dir = s.stop();
    let good = lines(&log);
    let bad = dir.path().join("bad.jsonl");
    let bad_s = bad.to_str().unwrap().to_string();
    let check = |lines: &[String], extra: &[&str], want: &[&str]| {
        write_lines(&bad, lines);
        let mut args = vec![bad_s.as_str()];
        args.extend_from_slice(extra);
        let (ok, out) = verify(&args);
        assert!(!ok, "verified: {out}");
        for w in want {
            assert!(out.contains(w), "expected {w:?} in:\n{out}");
        }
        assert!(!out.contains("panicked"), "{out}");
    };
    // A dropped line: the record after the gap is named.
    let mut dropped = good.clone();
    dropped.remove(3);
    check(
        &dropped,
        &[],
        &[
            "bad.jsonl:4: record seq 4",
            "1 record(s) missing",
            "seq 3..=3 were removed",
        ],
    );
    // An edited field: the denial turned into an allow.
    let mut edited = good.clone();
    edited[3] = edited[3].replace("\"allowed\":false", "\"allowed\":true");
    assert_ne!(edited[3], good[3]);
    check(
        &edited,
        &[],
        &[
            "bad.jsonl:5: record seq 4",
            "bad.jsonl:4, seq 3",
            "was changed after it was written",
        ],
    );
    // Reordered lines.
    let mut reordered = good.clone();
    reordered.swap(2, 3);
    check(&reordered, &[], &["bad.jsonl:3: record seq 3", "missing"]);
    check(&reordered, &[], &["removed or reordered"]);
    // A record repeated.
    let mut repeated = good.clone();
    repeated.insert(3, good[2].clone());
    check(
        &repeated,
        &[],
        &["bad.jsonl:4: record seq 2", "out of order"],
    );
    // Another boot's log (its nonce is not this boot's), and another policy.
    check(
        &good,
        &["--nonce", &"ab".repeat(32)],
        &["nonce mismatch", "from another boot"],
    );
    check(
        &good,
        &["--policy-digest", &sha256_hex(NEW_POLICY)],
        &["policy digest mismatch", &sha256_hex(POLICY)],
    );
    // Two boots in one file.
    let mut two = good.clone();
    two.extend(good.iter().take(2).cloned());
    check(
        &two,
        &[],
        &["bad.jsonl:10", "a new chain starts here", "different boots"],
    );
    // Not a log at all, a line cut in half, an unknown format version.
    check(
        &["hello".to_string()],
        &[],
        &["bad.jsonl:1", "not a JSON record"],
    );
    check(
        &["{\"a\": 1}".to_string()],
        &[],
        &["bad.jsonl:1", "not an agent-warden decision log"],
    );
    let mut v9 = good.clone();
    v9[0] = v9[0].replace("\"format\":1", "\"format\":9");
    check(&v9, &[], &["bad.jsonl:1", "unknown log format version 9"]);
    let text = good.join("\n") + "\n";
    std::fs::write(&bad, &text[..text.len() - 20]).unwrap();
    let (ok, out) = verify(&[&bad_s]);
    assert!(
        !ok && out.contains("bad.jsonl:9") && out.contains("cut off"),
        "{out}"
    );
    let (ok, out) = verify(&[dir.path().join("none").to_str().unwrap()]);
    assert!(!ok && out.contains("cannot read"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_files_verify_as_one_chain() {
    let s = Served::start(&[
        "--decision-log-max-bytes",
        "1500",
        "--decision-log-keep",
        "20",
    ])
    .await;
    for n in 0..20 {
        let req = agent::StartContainerRequest {
            container_id: format!("c{n}"),
            ..Default::default()
        };
        s.client().start_container(ctx(), &req).await.unwrap();
    }
    let log = s.log();
    let dir = s.stop();
    let mut files: Vec<PathBuf> = (1..20)
        .rev()
        .map(|n| dir.path().join(format!("log.jsonl.{n}")))
        .filter(|p| p.exists())
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    files.push(log.clone());
    for f in &files {
        assert!(
            std::fs::metadata(f).unwrap().len() <= 1500,
            "{}",
            f.display()
        );
    }
    let nonce = records(&files[0])[0]["agent_warden"]["nonce"]
        .as_str()
        .unwrap()
        .to_string();
    let mut args: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(["--nonce", nonce.as_str()]);
    let (ok, out) = verify(&args);
    assert!(ok, "{out}");
    assert!(out.contains("20 decisions"), "{out}");
    // A middle file left out is named.
    let mut gap: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();
    gap.remove(1);
    let (ok, out) = verify(&gap);
    assert!(!ok && out.contains("missing"), "{out}");
}

#[test]
fn a_register_spec_that_cannot_be_opened_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let o = common::run_warden(&[
        "serve",
        "--listen",
        &format!("unix://{}", dir.path().join("s").display()),
        "--decision-log",
        dir.path().join("log").to_str().unwrap(),
        "--measure",
        "nothing:at-all",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = common::stderr(&o);
    assert!(
        err.contains("decision log") && err.contains("nothing:at-all"),
        "{err}"
    );
    assert!(!dir.path().join("s").exists());
}

/// A register in memory (the test double of a TPM PCR), shared with the test.
#[derive(Clone, Default)]
struct Memory(Arc<Mutex<Vec<u8>>>);

impl Register for Memory {
    fn describe(&self) -> String {
        "memory:test".into()
    }
    fn kind(&self) -> RegisterKind {
        RegisterKind::Tpm
    }
    fn read(&mut self) -> Result<Option<Vec<u8>>, MeasureError> {
        Ok(Some(vec![0; 32]))
    }
    fn extend(&mut self, h: &[u8; 32]) -> Result<(), MeasureError> {
        let mut v = self.0.lock().unwrap();
        if v.is_empty() {
            *v = vec![0; 32];
        }
        *v = measure::expected(RegisterKind::Tpm, &v, &[*h]);
        Ok(())
    }
}

/// The truncated tail: the chain of what is left is intact, only the register's value
/// shows that records were cut.
#[test]
fn a_truncated_tail_is_caught_against_the_register() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.jsonl");
    let reg = Memory::default();
    let settings = LogSettings {
        path: path.clone(),
        max_bytes: 0,
        keep: 1,
        measure_every: 1,
    };
    let log = DecisionLog::open(settings, "ab", "ab", Some(Box::new(reg.clone()))).unwrap();
    for n in 1..=5 {
        let d = Decided {
            decision_id: n,
            kind: "StartContainerRequest".into(),
            conn: 1,
            stream: 1,
            input: serde_json::json!({"container_id": "c"}),
            mask: Vec::new(),
            result: Some(Value::Bool(true)),
            allowed: true,
            reason: String::new(),
            eval_ns: 1,
            policy_digest: "ab".into(),
            timestamp: record::now_rfc3339(),
        };
        log.decision(d, &Outcome::Forwarded(0));
    }
    drop(log);
    let pcr = agent_warden::attestation::to_hex(&reg.0.lock().unwrap());
    let p = path.to_str().unwrap();
    let (ok, out) = verify(&[p, "--pcr", &pcr]);
    assert!(ok && out.contains("register: matches"), "{out}");
    let all = lines(&path);
    write_lines(&path, &all[..4]);
    let (ok, out) = verify(&[p]);
    assert!(ok, "without the register the cut is invisible: {out}");
    let (ok, out) = verify(&[p, "--pcr", &pcr]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("register mismatch") && out.contains("cut from the end"),
        "{out}"
    );
    let (ok, out) = verify(&[p, "--pcr", "zz"]);
    assert!(!ok && out.contains("--pcr \"zz\" is not hex"), "{out}");
}

/// The whole path: `serve --measure tpm:...` extends each record into swtpm's PCR 23;
/// tpm2-tools read the PCR and quote it; `log verify` accepts the log against both, and
/// names the cut when the last record is dropped (which the chain alone cannot see).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_measured_into_swtpm_is_complete_by_pcrread_and_by_quote() {
    let test = "a_log_measured_into_swtpm_is_complete_by_pcrread_and_by_quote";
    if let Some(why) = swtpm::missing_tools(swtpm::QUOTE_TOOLS) {
        swtpm::unavailable(test, &why);
        return;
    }
    let tpm = swtpm::Swtpm::start();
    let spec = format!("tpm:pcr=23,device={}", tpm.socket().display());
    let s = Served::start(&["--measure", &spec]).await;
    s.session().await;
    let log = s.log();
    let dir = s.stop();
    let recs = records(&log);
    assert!(
        recs.iter().all(|r| r["agent_warden"]["measured"] == true),
        "every record is extended by default: {recs:#?}"
    );
    tpm.tool("tpm2_pcrread", &["sha256:23", "-o", "pcr23.bin"]);
    let pcr =
        agent_warden::attestation::to_hex(&std::fs::read(tpm.dir().join("pcr23.bin")).unwrap());
    let attest = tpm.quote(23, "0badc0de");
    let quote = dir.path().join("quote.msg");
    std::fs::write(&quote, attest).unwrap();
    let q = quote.to_str().unwrap();
    let p = log.to_str().unwrap();
    let (ok, out) = verify(&[p, "--pcr", &pcr]);
    assert!(ok && out.contains("register: matches"), "{out}");
    let (ok, out) = verify(&[p, "--quote", q]);
    assert!(ok && out.contains("quote: sha256 PCR 23 matches"), "{out}");

    // The truncated tail: the chain of what is left is intact; the PCR and the quote
    // both say records are missing.
    let all = lines(&log);
    let cut = dir.path().join("cut.jsonl");
    write_lines(&cut, &all[..all.len() - 1]);
    let c = cut.to_str().unwrap();
    let (ok, out) = verify(&[c]);
    assert!(ok, "the chain alone cannot see a cut tail: {out}");
    let (ok, out) = verify(&[c, "--pcr", &pcr]);
    assert!(
        !ok && out.contains("register mismatch") && out.contains("cut from the end"),
        "{out}"
    );
    let (ok, out) = verify(&[c, "--quote", q]);
    assert!(
        !ok && out.contains("register mismatch")
            && out.contains("pcrDigest")
            && out.contains("cut from the end"),
        "{out}"
    );
    // A quote of another PCR cannot answer.
    let (ok, out) = verify(&[p, "--quote", q, "--quote-pcr", "16"]);
    assert!(!ok && out.contains("not exactly sha256 PCR 16"), "{out}");
    // Not a quote.
    let (ok, out) = verify(&[p, "--quote", p]);
    assert!(
        !ok && out.contains("--quote") && out.contains("TPM quote"),
        "{out}"
    );
}
