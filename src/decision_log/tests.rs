//! The writer with an in-memory register (a test double of
//! [`crate::attestation::measure::Register`]), read back by the verifier.

use std::sync::{Arc, Mutex};

use super::verify::{verify, Expect, VerifyError};
use super::*;
use crate::attestation::measure::{self, MeasureError, RegisterKind};

/// A register in memory: extends as `measure::expected` models a sha256 PCR; can be
/// told to fail.
#[derive(Clone, Default)]
struct Memory {
    value: Arc<Mutex<Vec<u8>>>,
    fail: Arc<Mutex<bool>>,
}

impl Register for Memory {
    fn describe(&self) -> String {
        "memory:test".into()
    }
    fn kind(&self) -> RegisterKind {
        RegisterKind::Tpm
    }
    fn read(&mut self) -> Result<Option<Vec<u8>>, MeasureError> {
        let mut v = self.value.lock().unwrap();
        if v.is_empty() {
            *v = vec![0; 32];
        }
        Ok(Some(v.clone()))
    }
    fn extend(&mut self, h: &[u8; 32]) -> Result<(), MeasureError> {
        if *self.fail.lock().unwrap() {
            return Err(MeasureError::Device {
                register: self.describe(),
                message: "test failure".into(),
            });
        }
        let mut v = self.value.lock().unwrap();
        *v = measure::expected(RegisterKind::Tpm, &v, &[*h]);
        Ok(())
    }
}

fn settings(dir: &std::path::Path) -> LogSettings {
    LogSettings {
        path: dir.join("log.jsonl"),
        max_bytes: 0,
        keep: 3,
        measure_every: 1,
    }
}

fn decided(n: u64) -> Decided {
    Decided {
        decision_id: n,
        kind: "ExecProcessRequest".into(),
        conn: 1,
        stream: 2 * n as u32 + 1,
        input: json!({"process": {"Env": ["A=secret"]}, "data": [1]}),
        mask: Vec::new(),
        result: Some(json!(true)),
        allowed: true,
        reason: String::new(),
        eval_ns: 1000,
        policy_digest: "ab".into(),
        timestamp: record::now_rfc3339(),
    }
}

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Whether the log at `path` verifies against the register's value now.
fn register_agrees(path: &std::path::Path, reg: &Memory) -> bool {
    let expect = Expect {
        register: Some(reg.value.lock().unwrap().clone()),
        ..Default::default()
    };
    verify(&[path.to_path_buf()], &expect).is_ok()
}

#[test]
fn every_record_measured_gives_the_register_value() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Memory::default();
    let s = settings(dir.path());
    let log = DecisionLog::open(s.clone(), "ab", "cd", Some(Box::new(reg.clone()))).unwrap();
    for n in 1..=3 {
        log.decision(decided(n), &Outcome::Forwarded(0));
    }
    log.flush();
    let recs = lines(&s.path);
    assert_eq!(recs.len(), 4);
    assert_eq!(recs[0][OWN]["type"], "genesis");
    assert_eq!(recs[0][OWN]["register"]["describe"], "memory:test");
    assert!(recs.iter().all(|r| r[OWN]["measured"] == true));
    // Secrets stay out by default, and OPA's fields are there.
    assert_eq!(
        recs[1]["input"],
        json!({"process": {"Env": ["A=<masked>"]}})
    );
    assert_eq!(recs[1]["erased"], json!(["/input/data"]));
    assert_eq!(recs[1]["path"], "agent_policy/ExecProcessRequest");
    assert_eq!(recs[1]["bundles"]["agent_policy"]["revision"], "ab");
    assert_eq!(recs[1]["metrics"]["timer_rego_query_eval_ns"], 1000);
    let pcr = reg.value.lock().unwrap().clone();
    let expect = Expect {
        register: Some(pcr.clone()),
        ..Default::default()
    };
    let report = verify(std::slice::from_ref(&s.path), &expect).unwrap();
    assert_eq!(report.records, 4);
    assert_eq!(report.expected_register, Some(pcr.clone()));
    // The tail cut: the chain alone is fine, the register is not.
    let text = std::fs::read_to_string(&s.path).unwrap();
    let cut: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(&s.path, cut.join("\n") + "\n").unwrap();
    assert!(verify(std::slice::from_ref(&s.path), &Expect::default()).is_ok());
    let e = verify(std::slice::from_ref(&s.path), &expect).unwrap_err();
    assert!(e.to_string().contains("register mismatch"), "{e}");
}

#[test]
fn every_nth_record_and_checkpoints_are_measured() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Memory::default();
    let s = LogSettings {
        measure_every: 3,
        ..settings(dir.path())
    };
    let log = DecisionLog::open(s.clone(), "ab", "cd", Some(Box::new(reg.clone()))).unwrap();
    for n in 1..=4 {
        log.decision(decided(n), &Outcome::Forwarded(0));
    }
    assert!(log.checkpoint());
    assert!(!log.checkpoint(), "nothing unmeasured: no checkpoint");
    let measured: Vec<bool> = lines(&s.path)
        .iter()
        .map(|r| r[OWN]["measured"].as_bool().unwrap())
        .collect();
    assert_eq!(measured, vec![true, false, false, true, false, true]);
    assert!(register_agrees(&s.path, &reg));
}

#[test]
fn a_failed_extension_is_recorded_and_left_out_of_the_register() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Memory::default();
    let s = settings(dir.path());
    let log = DecisionLog::open(s.clone(), "ab", "cd", Some(Box::new(reg.clone()))).unwrap();
    *reg.fail.lock().unwrap() = true;
    log.decision(decided(1), &Outcome::Forwarded(0));
    // The writer extends asynchronously: let it meet the failing register first.
    log.flush();
    *reg.fail.lock().unwrap() = false;
    log.decision(decided(2), &Outcome::NotForwarded(7));
    log.flush();
    let recs = lines(&s.path);
    assert_eq!(recs[2][OWN]["type"], "measure_failed");
    assert_eq!(recs[2][OWN]["failed_seq"], 1);
    assert_eq!(recs[3][OWN]["outcome"], "refused");
    assert!(register_agrees(&s.path, &reg));
}

#[test]
fn rotation_continues_the_chain_and_keeps_n_files() {
    let dir = tempfile::tempdir().unwrap();
    let s = LogSettings {
        max_bytes: 1500,
        keep: 2,
        ..settings(dir.path())
    };
    let log = DecisionLog::open(s.clone(), "ab", "cd", None).unwrap();
    for n in 1..=12 {
        log.decision(decided(n), &Outcome::Forwarded(0));
    }
    log.flush();
    let p1 = dir.path().join("log.jsonl.1");
    let p2 = dir.path().join("log.jsonl.2");
    assert!(p2.exists() && !dir.path().join("log.jsonl.3").exists());
    for p in [&p2, &p1, &s.path] {
        assert!(std::fs::metadata(p).unwrap().len() <= 1500);
    }
    // The kept files verify as one chain from wherever they start.
    let report = verify(
        &[p2.clone(), p1.clone(), s.path.clone()],
        &Expect::default(),
    )
    .unwrap();
    assert_eq!(report.last_seq, 12);
    // Out of order, they do not.
    let e = verify(&[p1, p2, s.path.clone()], &Expect::default()).unwrap_err();
    assert!(matches!(e, VerifyError::Record(_)), "{e}");
    // Without the genesis, nothing bound to it can be checked.
    let e = verify(
        std::slice::from_ref(&s.path),
        &Expect {
            nonce: Some("00".into()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("genesis record (seq 0) is not in the files"),
        "{e}"
    );
}

#[test]
fn reopening_rotates_the_old_boot_out() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let first = DecisionLog::open(s.clone(), "ab", "cd", None).unwrap();
    first.decision(decided(1), &Outcome::Forwarded(0));
    drop(first);
    let second = DecisionLog::open(s.clone(), "ab", "cd", None).unwrap();
    drop(second);
    let old = dir.path().join("log.jsonl.1");
    assert_eq!(lines(&old).len(), 2);
    assert_eq!(lines(&s.path).len(), 1);
    let e = verify(&[old, s.path.clone()], &Expect::default()).unwrap_err();
    assert!(e.to_string().contains("different boots"), "{e}");
}

#[test]
fn unanswered_records_are_written_when_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let log = Arc::new(DecisionLog::open(s.clone(), "ab", "cd", None).unwrap());
    drop(OpenRecord::new(log.clone(), decided(1)));
    OpenRecord::new(log.clone(), decided(2)).close(Outcome::Forwarded(5));
    log.flush();
    let recs = lines(&s.path);
    assert_eq!(recs[1][OWN]["outcome"], "unanswered");
    assert_eq!(recs[2][OWN]["outcome"], "forwarded");
    assert_eq!(recs[2][OWN]["status"], 5);
}

#[test]
fn a_burst_larger_than_a_batch_is_written_whole_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let log = DecisionLog::open(s.clone(), "ab", "cd", None).unwrap();
    let n = 3 * super::MAX_BATCH as u64 + 7;
    for i in 1..=n {
        log.decision(decided(i), &Outcome::Forwarded(0));
    }
    log.flush();
    let recs = lines(&s.path);
    assert_eq!(recs.len() as u64, n + 1);
    assert!(recs
        .iter()
        .enumerate()
        .all(|(i, r)| r[OWN]["seq"] == i as u64));
    assert!(verify(std::slice::from_ref(&s.path), &Expect::default()).is_ok());
}
