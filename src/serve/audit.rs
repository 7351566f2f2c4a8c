//! Audit records: the capture file of decided inputs, replayable with
//! `agent-warden policy replay`. (The per-decision records are
//! [`crate::decision_log`]'s; the short stderr line is a tracing event with target
//! `agent_warden::decision`.)
//!
//! Capture lines are [`CaptureLine`]s, `{"kind": "<RequestType>", "request": <input>}`. Unless asked
//! otherwise, container environment values and byte payloads are masked: `Env`
//! entries keep their name (`NAME=<masked>`), `data` byte arrays become `[]`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;

use serde_json::Value;

/// One line of a capture file, as `serve` writes it and `policy replay` reads it back.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureLine {
    /// The request type (the policy rule), as kata-agent's log names it.
    pub kind: String,
    /// The policy input, masked unless the capture is unmasked.
    pub request: Value,
}

/// An open capture file.
pub struct Capture {
    out: Mutex<BufWriter<File>>,
    unmasked: bool,
}

impl Capture {
    /// Creates (truncates) the capture file at `path`.
    pub fn create(path: &Path, unmasked: bool) -> std::io::Result<Capture> {
        let f = File::create(path)?;
        Ok(Capture {
            out: Mutex::new(BufWriter::new(f)),
            unmasked,
        })
    }

    /// Appends one decided input.
    pub fn record(&self, kind: &str, input: &Value) {
        let request = if self.unmasked {
            input.clone()
        } else {
            mask(input)
        };
        let line = CaptureLine {
            kind: kind.to_string(),
            request,
        };
        if let Ok(mut out) = self.out.lock() {
            let ok = serde_json::to_writer(&mut *out, &line).is_ok()
                && out.write_all(b"\n").is_ok()
                && out.flush().is_ok();
            if !ok {
                tracing::warn!("capture file write failed");
            }
        }
    }
}

/// Masks environment values and byte payloads in a policy input.
pub fn mask(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let masked = match (k.as_str(), v) {
                        ("Env" | "env", Value::Array(a)) => {
                            let mut a = a.clone();
                            a.iter_mut().for_each(crate::decision_log::record::mask_env);
                            Value::Array(a)
                        }
                        ("data", Value::Array(_)) => Value::Array(Vec::new()),
                        _ => mask(v),
                    };
                    (k.clone(), masked)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(mask).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_env_values_and_byte_payloads_only() {
        let input = json!({"OCI": {"Process": {"Env": ["PATH=/bin", "SECRET=hunter2", "NOEQ"], "Args": ["sh"]}},
                           "data": [1, 2, 3], "path": "/run/x"});
        let m = mask(&input);
        assert_eq!(
            m["OCI"]["Process"]["Env"],
            json!(["PATH=<masked>", "SECRET=<masked>", "NOEQ"])
        );
        assert_eq!(m["OCI"]["Process"]["Args"], json!(["sh"]));
        assert_eq!(m["data"], json!([]));
        assert_eq!(m["path"], json!("/run/x"));
    }

    #[test]
    fn capture_lines_are_replayable_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cap.jsonl");
        let c = Capture::create(&path, false).unwrap();
        c.record("ExecProcessRequest", &json!({"process": {"Env": ["A=b"]}}));
        c.record("CopyFileRequest", &json!({"path": "/x"}));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            json!({"kind": "ExecProcessRequest", "request": {"process": {"Env": ["A=<masked>"]}}})
        );
    }
}
