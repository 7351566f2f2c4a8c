//! `agent-warden policy test PATH...`: run the `test_*` rules of *_test.rego files, each
//! loaded with the policy modules beside it, and test cases in kata genpolicy's format
//! (`testcases.json`, `*.cases.json`: see [`super::cases`]), each decided as `serve`
//! decides it with the policy of `--policy` / `--endpoints` (default: the embedded one).
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::Args;

use super::cases::{is_case_file, read_cases, run_cases};
use super::{declared, identifiers, serve_guard, PolicyChoice};
use crate::policy::sources::read_text;
use crate::policy::RegoVersion;

/// Flags of `policy test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Test files (*_test.rego, or JSON test cases in genpolicy's format), or directories
    /// searched (recursively) for *_test.rego, testcases.json and *.cases.json files.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// The policy test cases are decided with (as `serve` reads it), and how the test
    /// files and the policies they are loaded with are read (`--rego`, `--kata`).
    #[command(flatten)]
    pub source: PolicyChoice,
}

/// One test rule's result.
#[derive(Debug, Clone, PartialEq)]
pub struct TestResult {
    /// The test file.
    pub file: PathBuf,
    /// The rule, e.g. `data.agent_policy.test_exec_denied`.
    pub rule: String,
    /// `None` when the rule's value is `true`; otherwise why it failed.
    pub failure: Option<String>,
    pub prints: Vec<String>,
}

/// A test file that could not be loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadFailure {
    pub file: PathBuf,
    pub error: String,
}

fn is_test_file(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with("_test.rego"))
}

fn is_rego(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "rego")
}

fn sorted_entries(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut v = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot read directory {}: {e}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("cannot read directory {}: {e}", dir.display()))?;
    v.sort();
    Ok(v)
}

/// Test files: the files named (a .rego file is a Rego test file, any other a case
/// file), and the *_test.rego, testcases.json and *.cases.json files beneath the
/// directories named (hidden directories skipped), each once, in order.
pub fn find_test_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        for p in sorted_entries(dir)? {
            let hidden = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if p.is_dir() {
                if !hidden {
                    walk(&p, found)?;
                }
            } else if is_test_file(&p) || is_case_file(&p) {
                found.push(p);
            }
        }
        Ok(())
    }
    let mut found = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut found)?;
        } else if p.is_file() {
            found.push(p.clone());
        } else {
            anyhow::bail!("{}: no such file or directory", p.display());
        }
    }
    let mut seen = BTreeSet::new();
    found.retain(|p| seen.insert(p.clone()));
    Ok(found)
}

/// The package a module declares, or why it does not parse.
fn package_of(name: &str, text: &str, version: RegoVersion) -> anyhow::Result<String> {
    crate::policy::engine::new_engine(version, crate::policy::DEFAULT_EVAL_TIMEOUT)
        .add_policy(name.to_string(), text.to_string())
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))
}

/// The modules a test file is loaded with: the non-test .rego files beside it. When
/// `<name>.rego` is beside `<name>_test.rego`, the other files that declare the same
/// package are alternatives to it (every shipped policy is a whole `package
/// agent_policy`) and are left out.
fn companions(test_file: &Path, version: RegoVersion) -> anyhow::Result<Vec<(String, String)>> {
    let dir = match test_file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut files = Vec::new();
    for p in sorted_entries(&dir)? {
        if p.is_file() && is_rego(&p) && !is_test_file(&p) && p.file_name() != test_file.file_name()
        {
            let text = read_text(&p, "policy")?;
            files.push((p, text));
        }
    }
    let subject = test_file
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix("_test.rego"))
        .map(|stem| format!("{stem}.rego"));
    let subject = files
        .iter()
        .find(|(p, _)| p.file_name().and_then(|n| n.to_str()) == subject.as_deref());
    let Some((subject_path, subject_text)) = subject else {
        return Ok(files
            .into_iter()
            .map(|(p, t)| (p.display().to_string(), t))
            .collect());
    };
    let subject_path = subject_path.clone();
    let subject_package = package_of(&subject_path.display().to_string(), subject_text, version)?;
    let mut kept = Vec::new();
    for (p, text) in files {
        let name = p.display().to_string();
        if p == subject_path || package_of(&name, &text, version)? != subject_package {
            kept.push((name, text));
        }
    }
    Ok(kept)
}

/// Runs the `test_*` rules of one test file: a rule passes if its value is `true`.
pub fn run_test_file(
    test_file: &Path,
    version: RegoVersion,
) -> Result<Vec<TestResult>, LoadFailure> {
    let fail = |error: String| LoadFailure {
        file: test_file.to_path_buf(),
        error,
    };
    let name = test_file.display().to_string();
    let text = read_text(test_file, "test file").map_err(|e| fail(e.to_string()))?;
    let mut engine =
        crate::policy::engine::new_engine(version, crate::policy::DEFAULT_EVAL_TIMEOUT);
    for (module, module_text) in
        companions(test_file, version).map_err(|e| fail(format!("{e:#}")))?
    {
        engine
            .add_policy(module.clone(), module_text)
            .map_err(|e| fail(format!("{module}: {e}")))?;
    }
    let package = engine
        .add_policy(name.clone(), text.clone())
        .map_err(|e| fail(format!("{name}: {e}")))?;
    let tests = declared(
        &engine,
        &name,
        identifiers(&text)
            .into_iter()
            .filter(|w| w.starts_with("test_")),
    );
    let mut results = Vec::new();
    for test in tests {
        let rule = format!("{package}.{test}");
        let value = engine.eval_rule(rule.clone());
        let prints = engine.take_prints().unwrap_or_default();
        let failure = match value {
            Ok(regorus::Value::Bool(true)) => None,
            Ok(regorus::Value::Undefined) => {
                Some("undefined (an expression in its body is false or undefined)".to_string())
            }
            Ok(v) => Some(format!(
                "value {}",
                v.to_json_str().unwrap_or_else(|_| "?".to_string()).trim()
            )),
            Err(e) => Some(format!("error: {e}")),
        };
        results.push(TestResult {
            file: test_file.to_path_buf(),
            rule,
            failure,
            prints,
        });
    }
    Ok(results)
}

pub(super) fn test(a: &TestArgs, out: &mut impl std::io::Write) -> anyhow::Result<i32> {
    let files = find_test_files(&a.paths)?;
    let (mut passed, mut failed, mut errors) = (0usize, 0usize, 0usize);
    for file in &files {
        if !is_rego(file) {
            // Test cases: a fresh guard per file (the state starts empty, as in a new pod).
            let cases = match read_cases(file) {
                Ok(c) => c,
                Err(e) => {
                    errors += 1;
                    writeln!(out, "ERROR {e:#}")?;
                    continue;
                }
            };
            let guard = serve_guard(&a.source)?;
            for (i, r) in run_cases(&guard, cases).into_iter().enumerate() {
                let n = i + 1;
                let said = if r.allowed { "allowed" } else { "denied" };
                if r.passed() {
                    passed += 1;
                    writeln!(
                        out,
                        "PASS {} case {n}: {}",
                        file.display(),
                        r.case.description
                    )?;
                } else {
                    failed += 1;
                    let expected = if r.case.allowed { "allowed" } else { "denied" };
                    let why = r.reason.map(|w| format!(": {w}")).unwrap_or_default();
                    writeln!(
                        out,
                        "FAIL {} case {n}: {}: expected {expected}, {said} ({}){why}",
                        file.display(),
                        r.case.description,
                        r.case.kind
                    )?;
                }
            }
            continue;
        }
        match run_test_file(file, a.source.rego.version()) {
            Err(f) => {
                errors += 1;
                writeln!(out, "ERROR {}: {}", f.file.display(), f.error)?;
            }
            Ok(results) => {
                for r in results {
                    let rule = r.rule.strip_prefix("data.").unwrap_or(&r.rule);
                    match &r.failure {
                        None => {
                            passed += 1;
                            writeln!(out, "PASS {rule} ({})", r.file.display())?;
                        }
                        Some(why) => {
                            failed += 1;
                            writeln!(out, "FAIL {rule} ({}): {why}", r.file.display())?;
                            for p in &r.prints {
                                writeln!(out, "    print: {p}")?;
                            }
                        }
                    }
                }
            }
        }
    }
    let mut summary = format!("{passed} passed, {failed} failed");
    if errors > 0 {
        summary.push_str(&format!(", {errors} test files not loaded"));
    }
    writeln!(out, "{summary}")?;
    if passed + failed == 0 && errors == 0 {
        let where_ = a
            .paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ");
        eprintln!("agent-warden: error: no tests found in {where_}");
        return Ok(1);
    }
    Ok(if failed == 0 && errors == 0 && passed > 0 {
        0
    } else {
        1
    })
}
