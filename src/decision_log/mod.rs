//! The decision log (`[decision_log]`, `serve --decision-log FILE`): one JSON line per
//! decided request in OPA's decision-log shape ([`record`]), hash-chained so that a
//! cut or edited log is detected by `agent-warden log verify` ([`verify`]).
//!
//! Every line carries, in its `agent_warden` object, a sequence number and the sha256
//! (hex) of the previous line's exact bytes; the first line of a boot (seq 0, the
//! genesis record) binds the policy digest, a random per-boot nonce, the instance id
//! and the measurement register. Files rotate by size and the chain continues across
//! them. With a measurement register ([`crate::attestation::measure`]), the hashes of
//! some records (genesis always; then every `measure_every`-th record, or a checkpoint
//! record written by a timer) are extended into it, and each record says whether its
//! hash was (`"measured": true`).
//!
//! Records are written by one writer thread that owns the chain (file, sequence, previous
//! hash, register): a request hands its record over in order through a bounded queue and
//! goes on, so neither the serialization, the hash, the `write` nor the register's extend
//! (tens of µs on a TPM) sits on the request's path. The queue is bounded
//! ([`QUEUE`] records): a writer that falls behind slows the requests down, it never
//! drops a record. [`DecisionLog::flush`] waits until everything handed over is written
//! and measured (serve calls it at shutdown; dropping the log does it too).

pub mod record;
pub mod verify;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::attestation::measure::Register;
use crate::attestation::to_hex;

/// The chain format this build writes (`agent_warden.format` of every record).
pub const FORMAT: u64 = 1;
/// The name of the extra object that holds agent-warden's own facts in each record.
pub const OWN: &str = "agent_warden";
/// The OPA path prefix of decisions (`agent_policy/<RequestType>`).
pub const PACKAGE: &str = "agent_policy";

/// How the decision log is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub path: PathBuf,
    /// Rotate before a line would make the file larger than this (0: never).
    pub max_bytes: u64,
    /// How many rotated files (`FILE.1` newest … `FILE.N`) are kept.
    pub keep: usize,
    /// With a register: measure every N-th record (1: every record).
    pub measure_every: u64,
}

/// One decided request, as it goes into the log (input already masked).
#[derive(Debug, Clone)]
pub struct Decided {
    /// `<instance>-<n>`, the same n as the stderr `decision` line's `decision_id`.
    pub decision_id: u64,
    pub kind: String,
    pub conn: u64,
    pub stream: u32,
    /// The request's policy input as decided (`Null`: none), masked by the writer thread
    /// (defaults, then `mask`, the policy's `log_mask`).
    pub input: Value,
    pub mask: Vec<record::MaskOp>,
    /// The decision's value: `true`/`false` (or the `{"allowed", "ops"}` object); `None`
    /// for an evaluation error.
    pub result: Option<Value>,
    pub allowed: bool,
    /// Why it was denied or failed (empty when allowed).
    pub reason: String,
    pub eval_ns: u64,
    pub policy_digest: String,
    pub timestamp: String,
}

/// What finally happened to a decided request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered in the agent's place (not forwarded) with this ttrpc status code:
    /// `refused`, or `answered` for OK (an applied SetPolicy).
    NotForwarded(i32),
    /// Forwarded; the agent answered with this ttrpc status code.
    Forwarded(i32),
    /// Forwarded; the connection closed (or the answer was unusable) before an answer
    /// went back: the text says which.
    Unanswered(&'static str),
}

/// How many records may wait for the writer thread before a request handing one over
/// waits for it.
pub const QUEUE: usize = 4096;

/// The open log, shared by every connection: the queue to the writer thread, which owns
/// the chain.
pub struct DecisionLog {
    queue: Option<SyncSender<Job>>,
    writer: Option<JoinHandle<()>>,
    instance: String,
}

/// What the writer thread is asked to do, in order.
enum Job {
    /// A record (the chain fields are added by the writer).
    Record(Map<String, Value>, Map<String, Value>),
    /// A decided request and its outcome: masked and made a record by the writer.
    Decision(Box<Decided>, Outcome),
    /// A measured checkpoint record if records are unmeasured; says whether one was
    /// written.
    Checkpoint(Option<SyncSender<bool>>),
    /// Answers once everything before it is written.
    Flush(SyncSender<()>),
    /// Answers, once everything before it is written, with the chain's state.
    State(SyncSender<LogState>),
}

/// Where the chain stands (after everything handed over is written): for the line serve
/// logs at shutdown, which lets an operator compare the register with `log verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogState {
    /// Records written (the next record's seq).
    pub records: u64,
    /// The last record's hash (hex).
    pub head: String,
    /// The register's description and its value read now (hex; `None` when it cannot
    /// be read, e.g. the attestation-agent's), or why reading failed.
    pub register: Option<(String, Result<Option<String>, String>)>,
}

struct Chain {
    settings: LogSettings,
    file: File,
    size: u64,
    seq: u64,
    prev: [u8; 32],
    register: Option<Box<dyn Register>>,
    /// Records written since the last measured one.
    unmeasured: u64,
    /// The instance id (checkpoint records' labels).
    instance: String,
    /// Lines appended but not yet written (the batch).
    pending: Vec<u8>,
    /// Seq and hash of the batch's measured records, extended once it is written.
    to_extend: Vec<(u64, [u8; 32])>,
}

/// What a flush or checkpoint waits for: its answer, given once the batch is written.
enum Answer {
    Flush(SyncSender<()>),
    Checkpoint(SyncSender<bool>, bool),
    State(SyncSender<LogState>),
}

impl Answer {
    fn give(self, chain: &mut Chain) {
        match self {
            Answer::State(a) => {
                let register = chain.register.as_mut().map(|r| {
                    let value = r
                        .read()
                        .map(|v| v.map(|v| to_hex(&v)))
                        .map_err(|e| e.to_string());
                    (r.describe(), value)
                });
                let _ = a.send(LogState {
                    records: chain.seq,
                    head: to_hex(&chain.prev),
                    register,
                });
            }
            Answer::Flush(a) => {
                let _ = a.send(());
            }
            Answer::Checkpoint(a, written) => {
                let _ = a.send(written);
            }
        }
    }
}

/// The most jobs one batch takes from the queue.
pub const MAX_BATCH: usize = 512;

/// How long the writer gathers records after the first one of a batch, so that a burst
/// of requests costs one wake-up and one `write` (and records reach the file at most
/// this much later).
pub const GATHER: std::time::Duration = std::time::Duration::from_millis(2);

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLog")
            .field("instance", &self.instance)
            .finish()
    }
}

/// 32 random bytes as hex.
fn random_hex(n: usize) -> anyhow::Result<String> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b)
        .map_err(|e| anyhow::anyhow!("no randomness for the decision log: {e}"))?;
    Ok(to_hex(&b))
}

/// sha256 of a line's bytes (without its newline).
pub fn line_hash(line: &[u8]) -> [u8; 32] {
    Sha256::digest(line).into()
}

impl DecisionLog {
    /// Opens the log for a new boot: a non-empty file at the path is rotated out first
    /// (it belongs to another chain), then the genesis record binds `policy_digest`
    /// (sha256 of the policy text), `attested_digest` (what attestation measures: the
    /// initdata digest, or the policy's sha256), a fresh nonce and `register` (its
    /// description and start value), and is measured.
    pub fn open(
        settings: LogSettings,
        policy_digest: &str,
        attested_digest: &str,
        register: Option<Box<dyn Register>>,
    ) -> anyhow::Result<DecisionLog> {
        let instance = random_hex(16)?;
        let nonce = random_hex(32)?;
        let path = settings.path.clone();
        if std::fs::metadata(&path)
            .map(|m| m.len() > 0)
            .unwrap_or(false)
        {
            shift(&path, settings.keep)?;
        }
        let file = create(&path)?;
        let mut register = register;
        let described = match register.as_mut() {
            Some(r) => {
                let start = r.read().map_err(|e| {
                    anyhow::anyhow!("decision log: cannot read the measurement register: {e}")
                })?;
                json!({"describe": r.describe(), "kind": r.kind(), "start": start.map(|s| to_hex(&s))})
            }
            None => Value::Null,
        };
        let mut chain = Chain {
            settings,
            file,
            size: 0,
            seq: 0,
            prev: [0; 32],
            register,
            unmeasured: 0,
            instance: instance.clone(),
            pending: Vec::new(),
            to_extend: Vec::new(),
        };
        let mut own = Map::new();
        own.insert("type".into(), json!("genesis"));
        own.insert("nonce".into(), json!(nonce));
        own.insert("instance".into(), json!(instance));
        own.insert("policy_digest".into(), json!(policy_digest));
        own.insert("attested_digest".into(), json!(attested_digest));
        own.insert("register".into(), described);
        let mut rec = base(&instance, None);
        rec.insert("bundles".into(), bundles(policy_digest));
        // The genesis is written and measured before anything is served.
        chain.append(rec, own, true)?;
        chain.commit()?;
        let (queue, jobs) = sync_channel(QUEUE);
        let writer = std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || chain.run(jobs))
            .map_err(|e| anyhow::anyhow!("decision log: cannot start its writer thread: {e}"))?;
        tracing::info!(path = %path.display(), instance = %instance, nonce = %nonce, "decision log opened");
        Ok(DecisionLog {
            queue: Some(queue),
            writer: Some(writer),
            instance,
        })
    }

    /// This process's instance id (`labels.id` of every record).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The fields every record has: labels and timestamp.
    fn base(&self) -> Map<String, Value> {
        base(&self.instance, None)
    }

    /// Hands a job to the writer thread (waiting while its queue is full). A writer that
    /// is gone (it panicked) is an error in the log: the record is lost, and said so.
    fn send(&self, job: Job) -> bool {
        match self.queue.as_ref().map(|q| q.send(job)) {
            Some(Ok(())) => true,
            _ => {
                tracing::error!("decision log: the writer thread is gone; record not written");
                false
            }
        }
    }

    /// Waits until every record handed over so far is written (and measured), then
    /// tells where the chain stands, the register read back.
    pub fn state(&self) -> Option<LogState> {
        let (done, wait) = sync_channel(1);
        if self.send(Job::State(done)) {
            wait.recv().ok()
        } else {
            None
        }
    }

    /// Waits until every record handed over so far is written (and measured).
    pub fn flush(&self) {
        let (done, wait) = sync_channel(1);
        if self.send(Job::Flush(done)) {
            let _ = wait.recv();
        }
    }

    /// Writes one decided request with its final outcome (handed to the writer thread,
    /// which masks the input and builds the record).
    pub fn decision(&self, d: Decided, outcome: &Outcome) {
        self.send(Job::Decision(Box::new(d), outcome.clone()));
    }

    /// Writes that SetPolicy replaced the policy `old` with `new`.
    pub fn policy_replaced(&self, old: &str, new: &str) {
        let mut rec = self.base();
        rec.insert("bundles".into(), bundles(new));
        let mut own = Map::new();
        own.insert("type".into(), json!("set_policy"));
        own.insert("old_policy_digest".into(), json!(old));
        own.insert("policy_digest".into(), json!(new));
        self.write_or_warn(rec, own);
    }

    /// With a register and records written since the last measured one: a checkpoint
    /// record, measured. Waits for the writer; returns whether one was written.
    pub fn checkpoint(&self) -> bool {
        let (done, wait) = sync_channel(1);
        self.send(Job::Checkpoint(Some(done))) && wait.recv().unwrap_or(false)
    }

    /// [`DecisionLog::checkpoint`] without waiting (the timer's tick).
    pub fn request_checkpoint(&self) {
        self.send(Job::Checkpoint(None));
    }

    fn write_or_warn(&self, rec: Map<String, Value>, own: Map<String, Value>) {
        self.send(Job::Record(rec, own));
    }
}

impl Drop for DecisionLog {
    /// Everything handed over is written before the log closes.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(w) = self.writer.take() {
            if w.join().is_err() {
                tracing::error!("decision log: the writer thread panicked");
            }
        }
    }
}

/// The fields every record has: labels and timestamp (`None`: now).
fn base(instance: &str, timestamp: Option<String>) -> Map<String, Value> {
    let mut rec = Map::new();
    rec.insert(
        "labels".into(),
        json!({"id": instance, "version": env!("CARGO_PKG_VERSION"), "app": "agent-warden"}),
    );
    let timestamp = timestamp.unwrap_or_else(record::now_rfc3339);
    rec.insert("timestamp".into(), Value::String(timestamp));
    rec
}

/// A decided request's record (its input masked here) and its `agent_warden` facts.
fn decision_record(
    instance: &str,
    d: Decided,
    outcome: &Outcome,
) -> (Map<String, Value>, Map<String, Value>) {
    let mut rec = base(instance, Some(d.timestamp));
    rec.insert(
        "decision_id".into(),
        json!(format!("{instance}-{}", d.decision_id)),
    );
    rec.insert("path".into(), json!(format!("{PACKAGE}/{}", d.kind)));
    let masked = record::mask_owned(d.input, &d.mask);
    if !masked.input.is_null() {
        rec.insert("input".into(), masked.input);
    }
    if let Some(r) = d.result {
        rec.insert("result".into(), r);
    }
    if !masked.erased.is_empty() {
        rec.insert("erased".into(), json!(masked.erased));
    }
    if !masked.masked.is_empty() {
        rec.insert("masked".into(), json!(masked.masked));
    }
    rec.insert(
        "metrics".into(),
        json!({"timer_rego_query_eval_ns": d.eval_ns}),
    );
    rec.insert("bundles".into(), bundles(&d.policy_digest));
    let mut own = Map::new();
    own.insert("type".into(), json!("decision"));
    own.insert("kind".into(), json!(d.kind));
    own.insert("conn".into(), json!(d.conn));
    own.insert("stream".into(), json!(d.stream));
    own.insert("allowed".into(), json!(d.allowed));
    if !d.reason.is_empty() {
        own.insert("reason".into(), json!(d.reason));
    }
    match outcome {
        Outcome::NotForwarded(code) => {
            let said = if *code == 0 { "answered" } else { "refused" };
            own.insert("outcome".into(), json!(said));
            own.insert("status".into(), json!(code));
        }
        Outcome::Forwarded(code) => {
            own.insert("outcome".into(), json!("forwarded"));
            own.insert("status".into(), json!(code));
        }
        Outcome::Unanswered(why) => {
            own.insert("outcome".into(), json!("unanswered"));
            own.insert("detail".into(), json!(why));
        }
    }
    (rec, own)
}

impl Chain {
    /// The writer thread: jobs in order until the log is dropped.
    fn run(mut self, jobs: Receiver<Job>) {
        // Sleeps until a job comes, then gathers what else arrives within GATHER and
        // writes it all at once: one wake-up and one `write` per batch, not per record.
        while let Ok(first) = jobs.recv() {
            let mut answers = Vec::new();
            self.handle(first, &mut answers);
            std::thread::sleep(GATHER);
            // At most MAX_BATCH jobs: under a steady stream the batch is still written
            // (and its memory bounded), the rest waits in the queue for the next one.
            for job in jobs.try_iter().take(MAX_BATCH - 1) {
                self.handle(job, &mut answers);
            }
            self.commit_or_warn();
            for a in answers {
                a.give(&mut self);
            }
        }
        self.commit_or_warn();
    }

    /// One job: records are appended to the batch; answers wait for its commit.
    fn handle(&mut self, job: Job, answers: &mut Vec<Answer>) {
        match job {
            Job::Record(rec, own) => self.append_or_warn(rec, own),
            Job::Decision(d, outcome) => {
                let (rec, own) = decision_record(&self.instance, *d, &outcome);
                self.append_or_warn(rec, own);
            }
            Job::Checkpoint(answer) => {
                let written = self.checkpoint();
                if let Some(a) = answer {
                    answers.push(Answer::Checkpoint(a, written));
                }
            }
            Job::Flush(done) => answers.push(Answer::Flush(done)),
            Job::State(done) => answers.push(Answer::State(done)),
        }
    }

    fn commit_or_warn(&mut self) {
        if let Err(e) = self.commit() {
            tracing::error!(error = %e, "decision log: records not written");
        }
    }

    /// Writes the batch (one `write`), then extends the register with the hashes of its
    /// measured records, in order (a record is in the file before its hash is in the
    /// register). A failed extension appends a `measure_failed` record, written too.
    fn commit(&mut self) -> anyhow::Result<()> {
        loop {
            if !self.pending.is_empty() {
                let written = self.file.write_all(&self.pending);
                self.pending.clear();
                written.map_err(|e| {
                    anyhow::anyhow!(
                        "cannot write decision log {}: {e}",
                        self.settings.path.display()
                    )
                })?;
            }
            let measure = std::mem::take(&mut self.to_extend);
            if measure.is_empty() {
                return Ok(());
            }
            for (seq, hash) in measure {
                let Some(register) = self.register.as_mut() else {
                    break;
                };
                if let Err(e) = register.extend(&hash) {
                    // The register lags the log from here: say so in the log itself, so
                    // that `log verify` knows this hash is not in the register.
                    tracing::error!(seq, register = %register.describe(), error = %e, "decision log: MEASUREMENT FAILED, the register does not cover this record");
                    let mut rec = Map::new();
                    rec.insert("timestamp".into(), json!(record::now_rfc3339()));
                    let mut own = Map::new();
                    own.insert("type".into(), json!("measure_failed"));
                    own.insert("failed_seq".into(), json!(seq));
                    own.insert("error".into(), json!(e.to_string()));
                    self.append_unmeasured(rec, own)?;
                }
            }
        }
    }

    fn append_or_warn(&mut self, rec: Map<String, Value>, own: Map<String, Value>) {
        if let Err(e) = self.append(rec, own, false) {
            tracing::error!(error = %e, "decision log: record not written");
        }
    }

    /// A measured checkpoint record, when records are unmeasured.
    fn checkpoint(&mut self) -> bool {
        if self.register.is_none() || self.unmeasured == 0 {
            return false;
        }
        let mut own = Map::new();
        own.insert("type".into(), json!("checkpoint"));
        let rec = base(&self.instance, None);
        match self.append(rec, own, true) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "decision log: checkpoint not written");
                false
            }
        }
    }

    /// Adds the chain fields to `own` and appends the line to the batch (committing the
    /// batch and rotating first if it would overflow the file); a measured record
    /// (`force`, or every `measure_every`-th record) has its hash extended when the batch
    /// is committed.
    fn append(
        &mut self,
        rec: Map<String, Value>,
        own: Map<String, Value>,
        force: bool,
    ) -> anyhow::Result<()> {
        let measured = self.register.is_some()
            && (force || self.unmeasured + 1 >= self.settings.measure_every.max(1));
        let (seq, hash) = self.push(rec, own, measured)?;
        if measured {
            self.unmeasured = 0;
            self.to_extend.push((seq, hash));
        } else {
            self.unmeasured += 1;
        }
        Ok(())
    }

    /// [`Chain::append`] of a record that is never measured.
    fn append_unmeasured(
        &mut self,
        rec: Map<String, Value>,
        own: Map<String, Value>,
    ) -> anyhow::Result<()> {
        self.push(rec, own, false)?;
        self.unmeasured += 1;
        Ok(())
    }

    /// Chains the record (format, seq, prev_hash, measured) and adds its line to the
    /// batch; returns its seq and hash.
    fn push(
        &mut self,
        mut rec: Map<String, Value>,
        mut own: Map<String, Value>,
        measured: bool,
    ) -> anyhow::Result<(u64, [u8; 32])> {
        own.insert("format".into(), json!(FORMAT));
        own.insert("seq".into(), json!(self.seq));
        own.insert("prev_hash".into(), json!(to_hex(&self.prev)));
        own.insert("measured".into(), json!(measured));
        rec.insert(OWN.into(), Value::Object(own));
        let mut line = serde_json::to_vec(&rec)?;
        let hash = line_hash(&line);
        line.push(b'\n');
        let max = self.settings.max_bytes;
        if max > 0 && self.size > 0 && self.size + line.len() as u64 > max {
            self.commit()?;
            self.rotate()?;
        }
        self.pending.extend_from_slice(&line);
        self.size += line.len() as u64;
        let seq = self.seq;
        self.seq += 1;
        self.prev = hash;
        Ok((seq, hash))
    }

    /// Closes the current file, shifts the rotated ones and starts a new one.
    fn rotate(&mut self) -> anyhow::Result<()> {
        let _ = self.file.flush();
        shift(&self.settings.path, self.settings.keep)?;
        self.file = create(&self.settings.path)?;
        self.size = 0;
        Ok(())
    }
}

/// `FILE.1` … `FILE.keep` shift up by one (the oldest is deleted), `FILE` becomes
/// `FILE.1` (with `keep` 0, `FILE` is deleted).
fn shift(path: &Path, keep: usize) -> anyhow::Result<()> {
    let numbered = |n: usize| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    };
    let gone = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    let err =
        |e: std::io::Error| anyhow::anyhow!("cannot rotate decision log {}: {e}", path.display());
    if keep == 0 {
        return gone(std::fs::remove_file(path)).map_err(err);
    }
    gone(std::fs::remove_file(numbered(keep))).map_err(err)?;
    for n in (1..keep).rev() {
        gone(std::fs::rename(numbered(n), numbered(n + 1))).map_err(err)?;
    }
    gone(std::fs::rename(path, numbered(1))).map_err(err)
}

fn create(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot open decision log {}: {e}", path.display()))
}

fn bundles(digest: &str) -> Value {
    json!({ PACKAGE: {"revision": digest} })
}

/// A decided request whose record waits for its outcome (the agent's answer). Dropped
/// without [`OpenRecord::close`] (the connection went away first), it is written as
/// unanswered.
pub struct OpenRecord {
    log: Arc<DecisionLog>,
    decided: Option<Box<Decided>>,
}

impl std::fmt::Debug for OpenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenRecord")
            .field("decided", &self.decided.as_ref().map(|d| d.decision_id))
            .finish()
    }
}

impl OpenRecord {
    pub fn new(log: Arc<DecisionLog>, decided: Decided) -> OpenRecord {
        OpenRecord {
            log,
            decided: Some(Box::new(decided)),
        }
    }

    /// Writes the record with its outcome.
    pub fn close(mut self, outcome: Outcome) {
        if let Some(d) = self.decided.take() {
            self.log.decision(*d, &outcome);
        }
    }
}

impl Drop for OpenRecord {
    fn drop(&mut self) {
        if let Some(d) = self.decided.take() {
            self.log.decision(
                *d,
                &Outcome::Unanswered("the connection closed before the agent answered"),
            );
        }
    }
}

#[cfg(test)]
mod tests;
