//! kata-agent's own policy decision as a test referee: the prebuilt
//! `kata-policy-oracle` of ../shared/kata-reference (its README describes the line
//! protocol). One process is one agent: it keeps the policy state and a policy
//! replaced by SetPolicy across lines, so a test starts one per independent sequence.
//! Every answer carries the exact input JSON kata-agent built (`KATA_REAL_ECHO=1`).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use base64::Engine as _;

/// Where the oracle is: `$KATA_REFERENCE/bin/kata-policy-oracle` when that variable
/// is set, else ../shared/kata-reference beside the checkout. `None` (with a message)
/// when it is missing; under `CI=true` a missing oracle fails the test instead.
pub fn oracle_binary(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("KATA_REFERENCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/kata-reference")
        });
    let bin = dir.join("bin/kata-policy-oracle");
    if bin.is_file() {
        return Some(bin);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{test}: kata-agent policy oracle missing at {} (required when CI=true; set KATA_REFERENCE to its directory)",
            bin.display()
        );
    }
    eprintln!(
        "{test}: SKIPPED: no kata-agent policy oracle at {} (set KATA_REFERENCE to ../shared/kata-reference)",
        bin.display()
    );
    None
}

/// One oracle answer.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Answer {
    /// `Some(true|false)`: kata-agent's decision; `None`: kata-agent answers with an
    /// error before or while evaluating (the request does not run).
    pub allowed: Option<bool>,
    pub error: Option<String>,
    /// The exact JSON text kata-agent gave its policy engine.
    pub input: Option<String>,
}

impl Answer {
    /// Whether kata-agent would run the request.
    pub fn runs(&self) -> bool {
        self.allowed == Some(true)
    }
}

/// A running oracle (one agent's policy and state).
pub struct Oracle {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    _policy: tempfile::NamedTempFile,
}

impl Oracle {
    /// Starts the oracle on `policy` (Rego v1 as today's kata-agent, or v0).
    pub fn start(bin: &std::path::Path, policy: &str, v0: bool) -> Oracle {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(policy.as_bytes()).unwrap();
        let mut child = Command::new(bin)
            .arg(file.path())
            .arg(if v0 { "--v0" } else { "--v1" })
            .env("KATA_REAL_ECHO", "1")
            .env_remove("KATA_REAL_PRINTS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Oracle {
            child,
            stdin,
            stdout,
            _policy: file,
        }
    }

    /// The line asking about request `kind` with these protobuf bytes.
    fn line(kind: &str, payload: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(payload);
        format!("{}\n", serde_json::json!({"kind": kind, "b64": b64}))
    }

    fn read_answer(&mut self) -> Answer {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).unwrap();
        assert!(n > 0, "the oracle stopped answering (see its stderr above)");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("oracle answer {line:?}: {e}"))
    }

    /// kata-agent's answer to one request (its protobuf bytes).
    pub fn ask(&mut self, kind: &str, payload: &[u8]) -> Answer {
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(Self::line(kind, payload).as_bytes())
            .unwrap();
        stdin.flush().unwrap();
        self.read_answer()
    }

    /// kata-agent's answer to a policy input given as JSON, evaluated as it is
    /// (request mode: for inputs of older kata-agents, which today's protos would not
    /// rebuild).
    pub fn ask_input(&mut self, kind: &str, input: &serde_json::Value) -> Answer {
        let stdin = self.stdin.as_mut().unwrap();
        let line = serde_json::json!({"kind": kind, "request": input});
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        self.read_answer()
    }

    /// Answers to many requests in order, written by a second thread while the
    /// answers are read (neither pipe can fill up and stall the other).
    pub fn ask_all(&mut self, requests: &[(String, Vec<u8>)]) -> Vec<Answer> {
        let text: String = requests.iter().map(|(k, b)| Self::line(k, b)).collect();
        let mut stdin = self.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            stdin.write_all(text.as_bytes()).unwrap();
            stdin.flush().unwrap();
            stdin
        });
        let answers = requests.iter().map(|_| self.read_answer()).collect();
        self.stdin = Some(writer.join().unwrap());
        answers
    }
}

impl Drop for Oracle {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
