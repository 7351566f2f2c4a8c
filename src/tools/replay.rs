//! `agent-warden policy replay CAPTURE`: re-decide the requests of a capture file
//! (`serve --capture`) as `serve` would, line by line, state and SetPolicy included;
//! with `--write-cases FILE`, write them as test cases in genpolicy's format with their
//! current decision ([`super::cases`]), for `policy test`.
use std::io::BufRead;
use std::path::PathBuf;

use clap::Args;

use super::cases::{allowed, Case};
use super::{known_request_type, serve_guard, verdict, PolicyChoice, PERMISSIVE_RULE};
use crate::policy::Decision;
use crate::serve::audit::CaptureLine;
use crate::serve::judge::{Pending, Verdict};
use crate::wire::methods;

/// Flags of `policy replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The capture: one JSON object per line, {"kind": "<RequestType>", "request": <input>}.
    pub capture: PathBuf,
    #[command(flatten)]
    pub source: PolicyChoice,
    /// Also write every well-formed captured request, with its decision now, as test
    /// cases (genpolicy's testcases.json format) to FILE, for `policy test`.
    #[arg(long, value_name = "FILE")]
    pub write_cases: Option<PathBuf>,
}

fn parse_capture_line(line: &str) -> Result<CaptureLine, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    if !v.is_object() {
        return Err("not a JSON object".to_string());
    }
    let c: CaptureLine =
        serde_json::from_value(v).map_err(|e| format!("not a capture record: {e}"))?;
    known_request_type(&c.kind).map_err(|e| e.to_string())?;
    if !c.request.is_object() {
        return Err("`request` is not a JSON object".to_string());
    }
    Ok(c)
}

/// Counts of a replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    pub allowed: usize,
    pub denied: usize,
    pub errors: usize,
    pub malformed: usize,
}

pub(super) fn replay(a: &ReplayArgs, out: &mut impl std::io::Write) -> anyhow::Result<i32> {
    let guard = serve_guard(&a.source)?;
    let name = guard.policy().source_name().to_string();
    let file = std::fs::File::open(&a.capture)
        .map_err(|e| anyhow::anyhow!("cannot read capture {}: {e}", a.capture.display()))?;
    let mut sum = ReplaySummary::default();
    let mut cases = Vec::new();
    writeln!(out, "policy: {name} (sha256 {})", guard.policy().digest())?;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line =
            line.map_err(|e| anyhow::anyhow!("cannot read capture {}: {e}", a.capture.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let c = match parse_capture_line(&line) {
            Ok(c) => c,
            Err(e) => {
                sum.malformed += 1;
                writeln!(out, "line {n}: malformed: {e}")?;
                continue;
            }
        };
        let Some(method) = methods::table().by_request_type(&c.kind) else {
            sum.malformed += 1;
            writeln!(
                out,
                "line {n}: malformed: unknown request type {:?}",
                c.kind
            )?;
            continue;
        };
        let judged = guard.decide(method, &c.request, 0, n as u32);
        if a.write_cases.is_some() {
            let said = match &judged.decision {
                _ if judged.overridden => "allowed (audit mode)",
                Decision::Allow => "allowed",
                Decision::Deny { .. } => "denied",
                Decision::Error(_) => "error",
            };
            cases.push(Case {
                description: format!(
                    "{} line {n}: {} ({said} when written)",
                    a.capture.display(),
                    c.kind
                ),
                allowed: allowed(&judged),
                kind: c.kind.clone(),
                request: c.request.clone(),
            });
        }
        // As `serve` does once the agent has answered: a forwarded request's state
        // operations are applied (the capture does not say whether the agent
        // succeeded; it is assumed to have). An allowed SetPolicy has replaced the
        // policy for the lines after it.
        let state_note = match &judged.verdict {
            Verdict::Forward(Pending {
                ops: Some((policy, ops)),
                ..
            }) => match policy.apply_ops(ops) {
                Ok(()) if ops.0.len() == 1 => " (state: 1 operation applied)".to_string(),
                Ok(()) => format!(" (state: {} operations applied)", ops.0.len()),
                Err(e) => format!(" (state not changed: {e})"),
            },
            _ => String::new(),
        };
        match &judged.decision {
            _ if judged.overridden => sum.allowed += 1,
            Decision::Allow => sum.allowed += 1,
            Decision::Deny { .. } => sum.denied += 1,
            Decision::Error(_) => sum.errors += 1,
        }
        match verdict(&judged.decision) {
            (v, Some(reason)) if judged.overridden => writeln!(
                out,
                "line {n}: {}: allow ({PERMISSIVE_RULE}; the policy said {v}: {reason}){state_note}",
                c.kind
            )?,
            (v, None) => writeln!(out, "line {n}: {}: {v}{state_note}", c.kind)?,
            (v, Some(reason)) => writeln!(out, "line {n}: {}: {v}: {reason}", c.kind)?,
        }
    }
    writeln!(
        out,
        "{} requests: {} allowed, {} denied, {} errors; {} malformed lines",
        sum.allowed + sum.denied + sum.errors,
        sum.allowed,
        sum.denied,
        sum.errors,
        sum.malformed
    )?;
    if let Some(path) = &a.write_cases {
        super::cases::write_cases(path, &cases)?;
        writeln!(
            out,
            "{} test cases written to {}",
            cases.len(),
            path.display()
        )?;
    }
    Ok(if sum.malformed > 0 { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_lines_are_checked() {
        assert!(parse_capture_line(r#"{"kind": "CreateContainerRequest", "request": {}}"#).is_ok());
        for bad in [
            "not json",
            r#"{"kind": "NoSuchRequest", "request": {}}"#,
            r#"{"kind": "CreateContainerRequest"}"#,
            r#"{"kind": "CreateContainerRequest", "request": 5}"#,
            r#"{"kind": "CreateContainerRequest", "request": {}, "extra": 1}"#,
            r#"["CreateContainerRequest", {}]"#,
        ] {
            assert!(parse_capture_line(bad).is_err(), "{bad}");
        }
    }
}
