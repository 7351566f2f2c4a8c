//! `agent-warden log verify`: replays decision-log files (in order, rotated ones
//! first) and checks the chain: each record's sequence number follows the one before,
//! its `prev_hash` is the sha256 of the previous line's bytes, the genesis record is
//! the first, and optionally that the genesis binds the expected policy digest and
//! nonce and that the measured records' hashes give the register's value.
//!
//! The first bad record is named by file, line and seq, with what is wrong.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{line_hash, FORMAT, OWN};
use crate::attestation::measure::{self, RegisterKind};
use crate::attestation::{decode_hex, to_hex};

/// What to check beyond the chain itself.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// The register's value now (e.g. read from a quote): the log must account for it.
    pub register: Option<Vec<u8>>,
    /// The register's value before the genesis was extended (overrides the genesis).
    pub register_start: Option<Vec<u8>>,
    /// The measured policy digest the genesis must bind.
    pub policy_digest: Option<String>,
    /// The boot's nonce the genesis must carry.
    pub nonce: Option<String>,
}

/// A record that fails a check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {}{message}", file.display(), seq.map(|s| format!("record seq {s}: ")).unwrap_or_default())]
pub struct Bad {
    pub file: PathBuf,
    pub line: usize,
    pub seq: Option<u64>,
    pub message: String,
}

/// Why verification failed: a bad record, or a check of the whole log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Record(#[from] Bad),
    #[error("cannot read {}: {message}", file.display())]
    Read { file: PathBuf, message: String },
    #[error("{0}")]
    Log(String),
}

/// The genesis record's bindings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Genesis {
    /// sha256 of the policy text.
    pub policy_digest: String,
    /// What attestation measured (the initdata digest, or the policy's sha256).
    pub attested_digest: String,
    pub nonce: String,
    pub instance: String,
    /// The register's description, kind and start value, when the log had one.
    pub register: Option<(String, RegisterKind, Option<Vec<u8>>)>,
}

/// What a verified log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub genesis: Option<Genesis>,
    /// The measured records' hashes, in order (failed extensions left out).
    pub measured: Vec<[u8; 32]>,
    /// The last measured record's seq.
    pub last_measured: Option<u64>,
    /// The register value the measured hashes give (with a register and a start value).
    pub expected_register: Option<Vec<u8>>,
    /// SetPolicy replacements: (seq, old digest, new digest).
    pub policy_changes: Vec<(u64, String, String)>,
    pub decisions: u64,
}

impl Report {
    /// A few lines for the user.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "chain ok: {} records (seq {}..={}), {} decisions\n",
            self.records, self.first_seq, self.last_seq, self.decisions
        );
        match &self.genesis {
            Some(g) => s.push_str(&format!(
                "genesis: policy digest {} (attested digest {}), nonce {}, instance {}\n",
                g.policy_digest, g.attested_digest, g.nonce, g.instance
            )),
            None => s.push_str(&format!(
                "no genesis record: the files start at seq {} (earlier files are missing), so the policy digest, nonce and register cannot be checked\n",
                self.first_seq
            )),
        }
        for (seq, old, new) in &self.policy_changes {
            s.push_str(&format!(
                "seq {seq}: SetPolicy replaced policy {old} with {new}\n"
            ));
        }
        if let Some(v) = &self.expected_register {
            s.push_str(&format!(
                "register: {} measured records give {}\n",
                self.measured.len(),
                to_hex(v)
            ));
            if let Some(last) = self.last_measured {
                if last < self.last_seq {
                    s.push_str(&format!(
                        "note: the {} records after seq {last} are not yet covered by the register\n",
                        self.last_seq - last
                    ));
                }
            }
        }
        s
    }
}

/// Reads and checks the files, in the order given.
pub fn verify(files: &[PathBuf], expect: &Expect) -> Result<Report, VerifyError> {
    let mut state = State::default();
    for file in files {
        let bytes = std::fs::read(file).map_err(|e| VerifyError::Read {
            file: file.clone(),
            message: e.to_string(),
        })?;
        state.file(file, &bytes)?;
    }
    state.finish(expect)
}

#[derive(Default)]
struct State {
    prev: Option<([u8; 32], u64, PathBuf, usize)>,
    first_seq: Option<u64>,
    records: u64,
    decisions: u64,
    genesis: Option<Genesis>,
    measured: Vec<(u64, [u8; 32])>,
    failed: Vec<u64>,
    policy_changes: Vec<(u64, String, String)>,
}

impl State {
    fn file(&mut self, file: &Path, bytes: &[u8]) -> Result<(), VerifyError> {
        let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        // The text after the last newline: empty for a whole file.
        let tail = lines.pop().unwrap_or_default();
        if !tail.is_empty() {
            return Err(Bad {
                file: file.to_path_buf(),
                line: lines.len() + 1,
                seq: None,
                message: "the last line is cut off (no newline at its end): the file was truncated in the middle of a record".into(),
            }
            .into());
        }
        if lines.is_empty() {
            return Err(VerifyError::Log(format!(
                "{}: the file is empty: not a decision log",
                file.display()
            )));
        }
        for (i, line) in lines.into_iter().enumerate() {
            self.line(file, i + 1, line)?;
        }
        Ok(())
    }

    fn line(&mut self, file: &Path, n: usize, line: &[u8]) -> Result<(), VerifyError> {
        let bad = |seq: Option<u64>, message: String| Bad {
            file: file.to_path_buf(),
            line: n,
            seq,
            message,
        };
        let v: Value = serde_json::from_slice(line).map_err(|e| {
            bad(
                None,
                format!("not a JSON record ({e}): not a decision log, or a damaged line"),
            )
        })?;
        let Some(own) = v.get(OWN).and_then(Value::as_object) else {
            return Err(bad(
                None,
                format!("no `{OWN}` object: not an agent-warden decision log record"),
            )
            .into());
        };
        match own.get("format").and_then(Value::as_u64) {
            Some(FORMAT) => {}
            Some(f) => {
                return Err(bad(
                    None,
                    format!(
                        "unknown log format version {f} (this agent-warden reads version {FORMAT})"
                    ),
                )
                .into())
            }
            None => {
                return Err(bad(
                    None,
                    "no format version: not an agent-warden decision log record".into(),
                )
                .into())
            }
        }
        let seq = own
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad(None, "no sequence number (`seq`)".into()))?;
        let prev_hash = own
            .get("prev_hash")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(Some(seq), "no `prev_hash`".into()))?;
        let kind = own.get("type").and_then(Value::as_str).unwrap_or_default();
        let text = |k: &str| {
            own.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        match &self.prev {
            None => {
                if seq == 0 && prev_hash != to_hex(&[0; 32]) {
                    return Err(bad(
                        Some(seq),
                        "the genesis record's prev_hash is not zero".into(),
                    )
                    .into());
                }
                self.first_seq = Some(seq);
            }
            Some((hash, prev_seq, pfile, pline)) => {
                let at = format!("{}:{pline}", pfile.display());
                if kind == "genesis" || seq == 0 {
                    return Err(bad(Some(seq), format!("a new chain starts here (a genesis record after seq {prev_seq} at {at}): the files mix the logs of different boots")).into());
                }
                if seq > prev_seq + 1 {
                    let missing = seq - prev_seq - 1;
                    return Err(bad(Some(seq), format!("{missing} record(s) missing before this one: the record before it ({at}) is seq {prev_seq}, so seq {}..={} were removed or reordered", prev_seq + 1, seq - 1)).into());
                }
                if seq <= *prev_seq {
                    return Err(bad(Some(seq), format!("out of order: it follows seq {prev_seq} ({at}); records were reordered or repeated")).into());
                }
                if prev_hash != to_hex(hash) {
                    return Err(bad(Some(seq), format!("prev_hash {prev_hash} is not the hash of the record before it ({at}, seq {prev_seq}, hash {}): that record was changed after it was written", to_hex(hash))).into());
                }
            }
        }
        let hash = line_hash(line);
        match kind {
            "genesis" => {
                let register = match own.get("register") {
                    Some(Value::Object(r)) => {
                        let kind: RegisterKind = serde_json::from_value(
                            r.get("kind").cloned().unwrap_or(Value::Null),
                        )
                        .map_err(|e| bad(Some(seq), format!("genesis register kind: {e}")))?;
                        let start = match r.get("start").and_then(Value::as_str) {
                            Some(h) => Some(decode_hex(h).ok_or_else(|| {
                                bad(
                                    Some(seq),
                                    format!("genesis register start {h:?} is not hex"),
                                )
                            })?),
                            None => None,
                        };
                        let describe = r
                            .get("describe")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string();
                        Some((describe, kind, start))
                    }
                    _ => None,
                };
                self.genesis = Some(Genesis {
                    policy_digest: text("policy_digest"),
                    attested_digest: text("attested_digest"),
                    nonce: text("nonce"),
                    instance: text("instance"),
                    register,
                });
            }
            "decision" => self.decisions += 1,
            "set_policy" => {
                self.policy_changes
                    .push((seq, text("old_policy_digest"), text("policy_digest")))
            }
            "measure_failed" => {
                if let Some(f) = own.get("failed_seq").and_then(Value::as_u64) {
                    self.failed.push(f);
                }
            }
            _ => {}
        }
        if own.get("measured").and_then(Value::as_bool) == Some(true) {
            self.measured.push((seq, hash));
        }
        self.records += 1;
        self.prev = Some((hash, seq, file.to_path_buf(), n));
        Ok(())
    }

    fn finish(self, expect: &Expect) -> Result<Report, VerifyError> {
        let Some((_, last_seq, _, _)) = self.prev else {
            return Err(VerifyError::Log("no records".into()));
        };
        let first_seq = self.first_seq.unwrap_or_default();
        let genesis = self.genesis;
        let need_genesis =
            expect.policy_digest.is_some() || expect.nonce.is_some() || expect.register.is_some();
        if need_genesis && genesis.is_none() {
            return Err(VerifyError::Log(format!(
                "the genesis record (seq 0) is not in the files given (they start at seq {first_seq}): the policy digest, nonce and register cannot be checked; give the older rotated files first"
            )));
        }
        if let (Some(want), Some(g)) = (&expect.policy_digest, &genesis) {
            if !want.eq_ignore_ascii_case(&g.policy_digest)
                && !want.eq_ignore_ascii_case(&g.attested_digest)
            {
                return Err(VerifyError::Log(format!(
                    "policy digest mismatch: the log was written under policy {} (attested digest {}), but the measured one is {want}",
                    g.policy_digest, g.attested_digest
                )));
            }
        }
        if let (Some(want), Some(g)) = (&expect.nonce, &genesis) {
            if !want.eq_ignore_ascii_case(&g.nonce) {
                return Err(VerifyError::Log(format!(
                    "nonce mismatch: the log's genesis has nonce {}, this boot's is {want}: the log is from another boot",
                    g.nonce
                )));
            }
        }
        let measured: Vec<(u64, [u8; 32])> = self
            .measured
            .into_iter()
            .filter(|(s, _)| !self.failed.contains(s))
            .collect();
        let last_measured = measured.last().map(|(s, _)| *s);
        let hashes: Vec<[u8; 32]> = measured.iter().map(|(_, h)| *h).collect();
        let register = genesis.as_ref().and_then(|g| g.register.clone());
        let start = expect
            .register_start
            .clone()
            .or_else(|| register.as_ref().and_then(|(_, _, s)| s.clone()));
        let expected_register = match (&register, &start) {
            (Some((_, kind, _)), Some(start)) => Some(measure::expected(*kind, start, &hashes)),
            (None, Some(start)) if expect.register_start.is_some() => {
                Some(measure::expected(RegisterKind::Tpm, start, &hashes))
            }
            _ => None,
        };
        if let Some(have) = &expect.register {
            let Some(want) = &expected_register else {
                return Err(VerifyError::Log(if register.is_none() {
                    "the log was written without a measurement register: nothing to compare the register value with".into()
                } else {
                    "the register's start value is unknown (the genesis has none): give --register-start".into()
                }));
            };
            if have != want {
                return Err(VerifyError::Log(format!(
                    "register mismatch: the register holds {} but the {} measured records in these files (last seq {}) give {}: records were cut from the end of the log (or removed, or this is not the register that log extended)",
                    to_hex(have),
                    hashes.len(),
                    last_measured.map(|s| s.to_string()).unwrap_or_else(|| "none".into()),
                    to_hex(want)
                )));
            }
        }
        Ok(Report {
            records: self.records,
            first_seq,
            last_seq,
            genesis,
            measured: hashes,
            last_measured,
            expected_register,
            policy_changes: self.policy_changes,
            decisions: self.decisions,
        })
    }
}
