//! Test cases in kata genpolicy's format: a JSON file holding an array of
//! `{"description", "allowed", "kind", "request"}` (genpolicy's own
//! tests/policy/testdata/*/testcases.json). `policy test` decides each case as `serve`
//! would ([`Guard::decide`], cases in file order, sharing the policy state as one agent
//! does); `policy replay --write-cases` writes the cases of a capture with their current
//! decision, so that a request seen in production becomes a regression test.

use std::path::Path;

use crate::policy::Decision;
use crate::serve::judge::{Guard, Judgement, Pending, Verdict};
use crate::wire::methods;

/// One test case.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub description: String,
    /// Whether the request is allowed: the policy allows it, or audit mode
    /// (AllowRequestsFailingPolicy) lets it through.
    pub allowed: bool,
    /// The request type (policy rule), e.g. `CreateContainerRequest`.
    pub kind: String,
    /// The policy input, as kata-agent builds it.
    pub request: serde_json::Value,
}

/// Whether a file is a case file: `testcases.json` (genpolicy's name) or `*.cases.json`.
pub fn is_case_file(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == "testcases.json" || n.ends_with(".cases.json"))
}

/// Reads a case file; the error names the file (and, from the JSON parser, the line).
pub fn read_cases(path: &Path) -> anyhow::Result<Vec<Case>> {
    let text = crate::policy::sources::read_text(path, "test cases")?;
    let cases: Vec<Case> = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a JSON array of {{description, allowed, kind, request}}: {e}",
            path.display()
        )
    })?;
    for (i, c) in cases.iter().enumerate() {
        if methods::table().by_request_type(&c.kind).is_none() {
            anyhow::bail!(
                "{}: case {} ({:?}): unknown request type {:?}",
                path.display(),
                i + 1,
                c.description,
                c.kind
            );
        }
    }
    Ok(cases)
}

/// Whether `serve` lets a judged request reach the agent as the policy's allow (an
/// allow, or a denial forgiven by audit mode).
pub fn allowed(j: &Judgement) -> bool {
    j.decision.is_allowed() || j.overridden
}

/// Decides `kind` with `request` as `serve` does and, as `serve` does once the agent
/// has answered (assumed successfully), applies a forwarded request's state operations.
/// `None` for a request type the method table does not know.
pub fn decide(guard: &Guard, kind: &str, request: &serde_json::Value, n: u32) -> Option<Judgement> {
    let method = methods::table().by_request_type(kind)?;
    let judged = guard.decide(method, request, 0, n);
    if let Verdict::Forward(Pending {
        ops: Some((policy, ops)),
        ..
    }) = &judged.verdict
    {
        if let Err(e) = policy.apply_ops(ops) {
            tracing::debug!(kind, error = %e, "state operations not applied");
        }
    }
    Some(judged)
}

/// One case's result.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseResult {
    pub case: Case,
    /// What was decided (`allowed` as in [`allowed`]).
    pub allowed: bool,
    /// The denial's reason or the error, when not allowed.
    pub reason: Option<String>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.allowed == self.case.allowed
    }
}

/// Runs `cases` in order with `guard` (its state carries from case to case).
pub fn run_cases(guard: &Guard, cases: Vec<Case>) -> Vec<CaseResult> {
    cases
        .into_iter()
        .enumerate()
        .map(|(i, case)| {
            let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let judged = decide(guard, &case.kind, &case.request, n);
            let (allowed, reason) = match judged {
                None => (false, Some(format!("unknown request type {:?}", case.kind))),
                Some(j) => {
                    let reason = match &j.decision {
                        Decision::Allow => None,
                        Decision::Deny { reason, .. } => Some(reason.clone()),
                        Decision::Error(e) => Some(format!("error: {e}")),
                    };
                    (allowed(&j), reason)
                }
            };
            CaseResult {
                case,
                allowed,
                reason,
            }
        })
        .collect()
}

/// Writes `cases` as a genpolicy test-case file (a pretty-printed JSON array).
pub fn write_cases(path: &Path, cases: &[Case]) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(cases)?;
    text.push('\n');
    std::fs::write(path, text)
        .map_err(|e| anyhow::anyhow!("cannot write test cases {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("testcases.json");
        std::fs::write(
            &good,
            r#"[{"description": "d", "allowed": true, "kind": "CopyFileRequest", "request": {"path": "/x"}}]"#,
        )
        .unwrap();
        assert_eq!(read_cases(&good).unwrap().len(), 1);
        for bad in [
            r#"{"description": "d"}"#,
            r#"[{"description": "d", "kind": "CopyFileRequest", "request": {}}]"#,
            r#"[{"description": "d", "allowed": true, "kind": "NoSuchRequest", "request": {}}]"#,
            r#"[{"description": "d", "allowed": "yes", "kind": "CopyFileRequest", "request": {}}]"#,
        ] {
            std::fs::write(&good, bad).unwrap();
            let e = read_cases(&good).unwrap_err().to_string();
            assert!(e.contains("testcases.json"), "{e}");
        }
        assert!(is_case_file(Path::new("a/testcases.json")));
        assert!(is_case_file(Path::new("prod.cases.json")));
        assert!(!is_case_file(Path::new("input.json")));
    }
}
