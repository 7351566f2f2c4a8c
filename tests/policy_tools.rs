//! `agent-warden policy ...`: the built binary run on the shipped policies and on
//! the sample inputs in testdata/.

mod common;

use std::path::Path;

use common::{run_warden as run, stderr, stdout, ROOT};

/// The names after `<label> (N): ` on the line starting with `label`.
fn listed(out: &str, label: &str) -> Vec<String> {
    let line = out
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{out}"));
    let (head, names) = line.split_once("): ").unwrap();
    let n: usize = head.rsplit('(').next().unwrap().parse().unwrap();
    let names: Vec<String> = if names == "none" {
        Vec::new()
    } else {
        names.split(", ").map(String::from).collect()
    };
    assert_eq!(names.len(), n, "{line}");
    names
}

fn all_request_types() -> Vec<String> {
    agent_warden::wire::methods::table()
        .policy_request_types()
        .into_iter()
        .map(String::from)
        .collect()
}

fn eval_json(args: &[&str]) -> serde_json::Value {
    let mut full = vec!["policy", "eval"];
    full.extend_from_slice(args);
    let o = run(&full);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", stdout(&o)))
}

#[test]
fn check_lists_defined_and_undefined_request_types_of_each_shipped_policy() {
    for policy in [
        "policies/allow-all.rego",
        "policies/coco-default.rego",
        "policies/exec-allowlist.rego",
    ] {
        for rego in ["v0", "v1"] {
            let o = run(&["policy", "check", policy, "--rego", rego]);
            let out = stdout(&o);
            assert_eq!(o.status.code(), Some(0), "{policy} {rego}: {}", stderr(&o));
            assert!(
                out.starts_with(&format!(
                    "{policy}: ok (Rego {rego}, package agent_policy, sha256 "
                )),
                "{out}"
            );
            assert_eq!(listed(&out, "defined"), all_request_types(), "{policy}");
            assert_eq!(
                listed(&out, "undefined, always denied"),
                Vec::<String>::new(),
                "{policy}"
            );
            assert!(!out.contains("never queried"), "{out}");
        }
    }
}

#[test]
fn check_lists_what_a_partial_policy_leaves_undefined() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("partial.rego");
    std::fs::write(
        &p,
        "package agent_policy\nimport rego.v1\ndefault CreateContainerRequest := true\n\
         ExecProcessRequest if input.container_id == \"x\"\nStartContainerRequests := true\n",
    )
    .unwrap();
    let o = run(&["policy", "check", p.to_str().unwrap()]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        listed(&out, "defined"),
        vec!["CreateContainerRequest", "ExecProcessRequest"]
    );
    let undefined = listed(&out, "undefined, always denied");
    let mut expected = all_request_types();
    expected.retain(|t| t != "CreateContainerRequest" && t != "ExecProcessRequest");
    assert_eq!(undefined, expected);
    assert_eq!(
        listed(&out, "not request types, never queried"),
        vec!["StartContainerRequests"]
    );
}

#[test]
fn check_fails_clearly_on_a_policy_that_does_not_parse() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.rego");
    std::fs::write(&p, "package agent_policy\nCreateContainerRequest { true \n").unwrap();
    let o = run(&["policy", "check", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("failed to parse as Rego v1"),
        "{}",
        stderr(&o)
    );

    // Parses only as v0 (v1, today's kata-agent's, is the default): the error says so.
    std::fs::write(
        &p,
        "package agent_policy\nCreateContainerRequest { true }\n",
    )
    .unwrap();
    let o = run(&["policy", "check", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("it does parse as Rego v0"),
        "{}",
        stderr(&o)
    );

    let o = run(&["policy", "check", "no/such/policy.rego"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot read policy no/such/policy.rego"),
        "{}",
        stderr(&o)
    );
}

/// `(passed, failed)` from the summary line.
fn summary(out: &str) -> (usize, usize) {
    let line = out.lines().last().unwrap_or_default();
    let (p, rest) = line
        .split_once(" passed, ")
        .unwrap_or_else(|| panic!("no summary in:\n{out}"));
    let f = rest.split(' ').next().unwrap();
    (p.parse().unwrap(), f.parse().unwrap())
}

#[test]
fn test_runs_the_shipped_policy_tests() {
    for rego in ["v0", "v1"] {
        let o = run(&["policy", "test", "--rego", rego, "policies/"]);
        let out = stdout(&o);
        assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
        let (passed, failed) = summary(&out);
        assert!(passed > 0 && failed == 0, "{out}");
        assert_eq!(
            out.lines().filter(|l| l.starts_with("PASS ")).count(),
            passed,
            "{out}"
        );
        assert!(!out.contains("FAIL"), "{out}");
        for file in [
            "allow-all_test.rego",
            "coco-default_test.rego",
            "exec-allowlist_test.rego",
        ] {
            assert!(
                out.contains(&format!(
                    "PASS agent_policy.test_lifecycle_allowed (policies/{file})"
                )),
                "{out}"
            );
        }
    }
    // A single test file works too.
    let o = run(&["policy", "test", "policies/coco-default_test.rego"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("PASS agent_policy.test_copy_file_dot_dot_escapes_denied"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn test_reports_a_failing_test_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(ROOT).join("policies/coco-default.rego"),
        dir.path().join("mine.rego"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("mine_test.rego"),
        r#"package agent_policy
import rego.v1
test_create_allowed if CreateContainerRequest with input as {"container_id": "c1"}
test_exec_allowed if ExecProcessRequest with input as {"container_id": "c1", "process": {"Args": ["sh"]}}
test_not_bool := 3
"#,
    )
    .unwrap();
    let o = run(&["policy", "test", dir.path().to_str().unwrap()]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert_eq!(summary(&out), (1, 2), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("PASS agent_policy.test_create_allowed (")),
        "{out}"
    );
    let fail = out
        .lines()
        .find(|l| l.starts_with("FAIL agent_policy.test_exec_allowed ("))
        .expect(&out);
    assert!(
        fail.ends_with(
            "mine_test.rego): undefined (an expression in its body is false or undefined)"
        ),
        "{fail}"
    );
    // What the policy printed while the test ran is shown under it.
    assert!(
        out.contains("    print: ") && out.contains("exec into container c1 is not allowed: sh"),
        "{out}"
    );
    assert!(
        out.contains("FAIL agent_policy.test_not_bool") && out.contains("value 3"),
        "{out}"
    );
}

#[test]
fn test_with_no_tests_or_an_unloadable_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.rego"),
        "package agent_policy\nimport rego.v1\nx := 1\n",
    )
    .unwrap();
    let o = run(&["policy", "test", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("0 passed, 0 failed"), "{}", stdout(&o));
    assert!(stderr(&o).contains("no tests found"), "{}", stderr(&o));

    std::fs::write(
        dir.path().join("p_test.rego"),
        "package agent_policy\nimport rego.v1\ntest_x if {\n",
    )
    .unwrap();
    let o = run(&["policy", "test", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with("ERROR ") && l.contains("p_test.rego")),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("0 passed, 0 failed, 1 test files not loaded"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn eval_allows_and_denies_with_reason() {
    let v = eval_json(&[
        "--type",
        "CreateContainerRequest",
        "--input",
        "testdata/create-container.json",
    ]);
    assert_eq!(v["policy"], "embedded coco-default.rego");
    assert_eq!(
        (v["decision"].as_str(), v["allowed"].as_bool()),
        (Some("allow"), Some(true)),
        "{v}"
    );
    assert_eq!(v["reason"], serde_json::Value::Null);
    assert_eq!(v["value"], true);

    let v = eval_json(&[
        "--type",
        "ExecProcessRequest",
        "--input",
        "testdata/exec-ls-debug.json",
    ]);
    assert_eq!(
        (v["decision"].as_str(), v["allowed"].as_bool()),
        (Some("deny"), Some(false)),
        "{v}"
    );
    // The reason is where the evaluation failed; the host gets it (as serve's default
    // `--deny-message reason`), never the prints, which hold input values.
    assert_eq!(
        v["reason"],
        "embedded coco-default.rego:65: ExecProcessRequest := false if { … (in ExecProcessRequest); that body held and its value denied",
        "{v}"
    );
    assert_eq!(
        v["serve"],
        format!(
            "answer PERMISSION_DENIED: ExecProcessRequest is blocked by policy: {}",
            v["reason"].as_str().unwrap()
        ),
        "{v}"
    );
    assert_eq!(v["prints"].as_array().unwrap().len(), 1, "{v}");
    assert!(
        v["prints"][0]
            .as_str()
            .unwrap()
            .contains("exec into container debug-1 is not allowed"),
        "{v}"
    );
    // What the host gets follows --deny-message, as serve's flag.
    for (says, host) in [
        (
            "full",
            "answer PERMISSION_DENIED: ExecProcessRequest is blocked by policy: embedded coco-default.rego:66: exec into container debug-1 is not allowed: /bin/ls",
        ),
        ("code", "answer PERMISSION_DENIED"),
    ] {
        let v = eval_json(&[
            "--type",
            "ExecProcessRequest",
            "--input",
            "testdata/exec-ls-debug.json",
            "--deny-message",
            says,
        ]);
        assert_eq!(v["serve"], host, "{v}");
        assert!(v["reason"].as_str().unwrap().contains("coco-default.rego:65"), "{v}");
    }

    let v = eval_json(&[
        "--type",
        "CopyFileRequest",
        "--input",
        "testdata/copy-file-escape.json",
    ]);
    assert_eq!(v["decision"], "deny", "{v}");
    let v = eval_json(&[
        "--type",
        "CopyFileRequest",
        "--input",
        "testdata/copy-file-ok.json",
    ]);
    assert_eq!(v["decision"], "allow", "{v}");

    let allowlist = ["--policy", "policies/exec-allowlist.rego"];
    let v = eval_json(
        &[
            &[
                "--type",
                "ExecProcessRequest",
                "--input",
                "testdata/exec-ls-debug.json",
            ][..],
            &allowlist,
        ]
        .concat(),
    );
    assert_eq!(v["decision"], "allow", "{v}");
    assert_eq!(v["policy"], "policies/exec-allowlist.rego");
    let v = eval_json(
        &[
            &[
                "--type",
                "ExecProcessRequest",
                "--input",
                "testdata/exec-shell.json",
            ][..],
            &allowlist,
        ]
        .concat(),
    );
    assert_eq!(v["decision"], "deny", "{v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("(in exec_command_listed; via ExecProcessRequest:111)"),
        "{v}"
    );

    // A container recorded in the policy state (--data) is known.
    let exec_c1 = [
        "--type",
        "ExecProcessRequest",
        "--input",
        "testdata/exec-ls-c1.json",
    ];
    let v = eval_json(&[&exec_c1[..], &allowlist].concat());
    assert_eq!(v["decision"], "deny", "{v}");
    let v = eval_json(
        &[
            &exec_c1[..],
            &allowlist,
            &["--data", "testdata/pstate.json"],
        ]
        .concat(),
    );
    assert_eq!(v["decision"], "allow", "{v}");

    // CreateContainer asks to record the container.
    let v = eval_json(
        &[
            &[
                "--type",
                "CreateContainerRequest",
                "--input",
                "testdata/create-container.json",
            ][..],
            &allowlist,
        ]
        .concat(),
    );
    assert_eq!(v["decision"], "allow", "{v}");
    assert_eq!(
        v["ops"],
        serde_json::json!([{"op": "add", "path": "/pstate/containers", "value": {"c1": true}}])
    );
}

#[test]
fn eval_refuses_unknown_types_and_bad_files() {
    let o = run(&[
        "policy",
        "eval",
        "--type",
        "CreateContainer",
        "--input",
        "testdata/create-container.json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("unknown request type \"CreateContainer\""),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "policy",
        "eval",
        "--type",
        "CreateContainerRequest",
        "--input",
        "testdata/capture.jsonl",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is not valid JSON"), "{}", stderr(&o));
    let o = run(&[
        "policy",
        "eval",
        "--type",
        "ExecProcessRequest",
        "--input",
        "testdata/exec-ls-c1.json",
        "--data",
        "testdata/create-container.json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("may only have a \"pstate\" key"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn replay_reports_each_line_and_a_summary() {
    let o = run(&[
        "policy",
        "replay",
        "testdata/capture.jsonl",
        "--policy",
        "policies/exec-allowlist.rego",
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(
        out.starts_with("policy: policies/exec-allowlist.rego (sha256 "),
        "{out}"
    );
    assert!(
        out.contains("line 2: CreateContainerRequest: allow (state: 1 operation applied)\n"),
        "{out}"
    );
    // Exec into c1 is allowed because line 2 recorded it.
    assert!(out.contains("line 4: ExecProcessRequest: allow\n"), "{out}");
    assert!(out.contains("line 5: ExecProcessRequest: deny: "), "{out}");
    assert!(!out.contains("line 6:"), "blank lines are skipped: {out}");
    assert!(out.contains("line 9: CopyFileRequest: deny: "), "{out}");
    assert!(
        out.ends_with("11 requests: 8 allowed, 3 denied, 0 errors; 0 malformed lines\n"),
        "{out}"
    );

    let o = run(&["policy", "replay", "testdata/capture.jsonl"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout(&o).contains("line 4: ExecProcessRequest: deny: "),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).ends_with("11 requests: 6 allowed, 5 denied, 0 errors; 0 malformed lines\n"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn replay_exits_non_zero_on_malformed_lines() {
    let o = run(&["policy", "replay", "testdata/capture-malformed.jsonl"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("line 2: malformed: unknown request type"),
        "{out}"
    );
    assert!(out.contains("line 3: malformed: not JSON"), "{out}");
    assert!(
        out.contains("line 4: malformed: not a capture record"),
        "{out}"
    );
    assert!(
        out.ends_with("2 requests: 1 allowed, 1 denied, 0 errors; 3 malformed lines\n"),
        "{out}"
    );
}

#[test]
fn hash_prints_the_sha256_of_a_plain_policy_with_the_tee_forms() {
    let bytes = std::fs::read(Path::new(ROOT).join("policies/coco-default.rego")).unwrap();
    use agent_warden::attestation::{digest, to_hex, Algorithm};
    let hex = to_hex(&digest(Algorithm::Sha256, &bytes));
    let o = run(&["policy", "hash", "--hex", "policies/coco-default.rego"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{hex}\n"));
    let o = run(&["policy", "hash", "policies/coco-default.rego"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(&format!("digest (hex): {hex}\n")), "{out}");
    assert!(out.contains("kind: plain policy"), "{out}");
    // SNP HOSTDATA is the 32-byte digest itself; MRCONFIGID pads it with 16 zero bytes.
    assert!(
        out.contains(&format!("snp hostdata (hex, 32 bytes): {hex}\n")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "tdx mrconfigid (hex, 48 bytes): {hex}{}\n",
            "0".repeat(32)
        )),
        "{out}"
    );
}

#[test]
fn hash_of_initdata_is_over_the_decompressed_toml() {
    let dir = tempfile::tempdir().unwrap();
    let toml = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"policy.rego\" = '''\npackage agent_policy\n'''\n";
    let image = agent_warden::attestation::build_initdata_image(toml.as_bytes()).unwrap();
    let path = dir.path().join("initdata.img");
    std::fs::write(&path, image).unwrap();
    let o = run(&["policy", "hash", "--hex", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let want = agent_warden::attestation::to_hex(&agent_warden::attestation::digest(
        agent_warden::attestation::Algorithm::Sha384,
        toml.as_bytes(),
    ));
    assert_eq!(stdout(&o), format!("{want}\n"));
}

/// `policy eval` and `policy replay` decide through serve's own function: a policy
/// with `AllowRequestsFailingPolicy := true` forwards what it denies, and a legacy
/// endpoint list answers UNIMPLEMENTED `<Type> is blocked`, in both tools.
#[test]
fn eval_and_replay_apply_serves_rules_on_top_of_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let permissive = dir.path().join("permissive.rego");
    std::fs::write(
        &permissive,
        "package agent_policy\n\ndefault AllowRequestsFailingPolicy := true\n\
         default ExecProcessRequest := false\ndefault CreateContainerRequest := true\n",
    )
    .unwrap();
    let list = dir.path().join("endpoints.toml");
    std::fs::write(
        &list,
        "[endpoints]\nallowed = [\"CreateContainerRequest\"]\n",
    )
    .unwrap();
    let input = "testdata/exec-ls-c1.json";
    let permissive = permissive.to_str().unwrap();
    let list = list.to_str().unwrap();

    let v = eval_json(&[
        "--type",
        "ExecProcessRequest",
        "--input",
        input,
        "--policy",
        permissive,
    ]);
    assert_eq!(
        (v["decision"].as_str(), v["allowed"].as_bool()),
        (Some("allow"), Some(true)),
        "{v}"
    );
    assert_eq!(v["overridden_by"], "AllowRequestsFailingPolicy", "{v}");
    assert_eq!(v["serve"], "forward", "{v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .ends_with("permissive.rego:4: default ExecProcessRequest := false (no other rule defines ExecProcessRequest)"),
        "{v}"
    );

    let v = eval_json(&[
        "--type",
        "ExecProcessRequest",
        "--input",
        input,
        "--endpoints",
        list,
    ]);
    assert_eq!(
        (v["decision"].as_str(), v["allowed"].as_bool()),
        (Some("deny"), Some(false)),
        "{v}"
    );
    assert_eq!(
        v["serve"], "answer UNIMPLEMENTED: ExecProcessRequest is blocked",
        "{v}"
    );
    assert_eq!(v["overridden_by"], serde_json::Value::Null, "{v}");

    let capture = dir.path().join("capture.jsonl");
    let exec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(input).unwrap()).unwrap();
    let line = serde_json::json!({"kind": "ExecProcessRequest", "request": exec});
    std::fs::write(&capture, format!("{line}\n")).unwrap();
    let capture = capture.to_str().unwrap();

    let o = run(&["policy", "replay", capture, "--policy", permissive]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("line 1: ExecProcessRequest: allow (AllowRequestsFailingPolicy; the policy said deny: ")
            && out.contains("permissive.rego:4: default ExecProcessRequest := false (no other rule defines ExecProcessRequest))"),
        "{out}"
    );
    assert!(out.contains("1 requests: 1 allowed, 0 denied"), "{out}");

    let o = run(&["policy", "replay", capture, "--endpoints", list]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("line 1: ExecProcessRequest: deny"), "{out}");
    assert!(out.contains("1 requests: 0 allowed, 1 denied"), "{out}");
}

/// A capture (written by serve's own capture writer) → `policy replay --write-cases` →
/// `policy test`: the cases pass with the policy they were written with, and fail,
/// naming the case and the reason, once the policy changes.
#[test]
fn replay_writes_cases_that_policy_test_passes_and_a_changed_policy_fails() {
    let dir = tempfile::tempdir().unwrap();
    let capture_path = dir.path().join("capture.jsonl");
    {
        let capture = agent_warden::serve::audit::Capture::create(&capture_path, false).unwrap();
        for input in ["testdata/exec-ls-c1.json", "testdata/exec-shell.json"] {
            let v: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(Path::new(ROOT).join(input)).unwrap(),
            )
            .unwrap();
            capture.record("ExecProcessRequest", &v);
        }
    }
    let capture = capture_path.to_str().unwrap();
    let cases = dir.path().join("prod.cases.json");
    let policy = dir.path().join("exec.rego");
    std::fs::write(
        &policy,
        "package agent_policy\nimport rego.v1\ndefault ExecProcessRequest := false\n\
         ExecProcessRequest if input.process.Args == [\"/bin/ls\"]\n",
    )
    .unwrap();
    let policy = policy.to_str().unwrap();
    let o = run(&[
        "policy",
        "replay",
        capture,
        "--policy",
        policy,
        "--write-cases",
        cases.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("2 test cases written to"),
        "{}",
        stdout(&o)
    );
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cases).unwrap()).unwrap();
    assert_eq!(
        written
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["kind"].as_str().unwrap(), c["allowed"].as_bool().unwrap()))
            .collect::<Vec<_>>(),
        [("ExecProcessRequest", true), ("ExecProcessRequest", false)]
    );

    // Found in a directory by its name, decided with the same policy: both pass.
    let o = run(&[
        "policy",
        "test",
        dir.path().to_str().unwrap(),
        "--policy",
        policy,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("2 passed, 0 failed"), "{}", stdout(&o));

    // The policy changes (no exec at all): the allowed capture now fails.
    let changed = dir.path().join("changed.rego");
    std::fs::write(
        &changed,
        "package agent_policy\nimport rego.v1\ndefault ExecProcessRequest := false\n",
    )
    .unwrap();
    let o = run(&[
        "policy",
        "test",
        cases.to_str().unwrap(),
        "--policy",
        changed.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(out.contains("1 passed, 1 failed"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("FAIL ")
            && l.contains("case 1: ")
            && l.contains("capture.jsonl line 1: ExecProcessRequest")
            && l.contains("expected allowed, denied (ExecProcessRequest)")
            && l.contains("changed.rego:3: default ExecProcessRequest := false")),
        "{out}"
    );
}

/// Test cases in genpolicy's format on a real genpolicy policy (Rego v0): recorded
/// requests are allowed, a mutated one is denied; a wrong expectation fails with the
/// description and the reason; a malformed file is an error naming it.
#[test]
fn policy_test_runs_genpolicy_format_cases() {
    let peers = Path::new(ROOT).join("../shared/peers/kata-genpolicy/pod-exec");
    if !peers.is_dir() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "peer data missing"
        );
        return;
    }
    let recorded = std::fs::read_to_string(peers.join("inputs.txt")).unwrap();
    let exec: serde_json::Value = recorded
        .lines()
        .filter_map(|l| {
            let rest = l
                .trim()
                .trim_end_matches(',')
                .strip_prefix("[\"ep\":\"ExecProcessRequest\",")?;
            serde_json::from_str(rest.strip_suffix(']')?).ok()
        })
        .next()
        .unwrap();
    let mut shell = exec.clone();
    shell["process"]["Args"] = serde_json::json!(["/bin/sh", "-c", "cat /etc/shadow"]);
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("testcases.json");
    let write = |denied_expected: bool| {
        std::fs::write(
            &cases,
            serde_json::json!([
                {"description": "recorded exec", "allowed": true, "kind": "ExecProcessRequest", "request": exec},
                {"description": "a shell reading /etc/shadow", "allowed": !denied_expected, "kind": "ExecProcessRequest", "request": shell},
            ])
            .to_string(),
        )
        .unwrap();
    };
    let policy = peers.join("policy.rego");
    let args = [
        "policy",
        "test",
        cases.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--kata",
        "2024",
    ];
    write(true);
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("PASS "), "{}", stdout(&o));
    assert!(stdout(&o).contains("2 passed, 0 failed"), "{}", stdout(&o));

    write(false);
    let o = run(&args);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.lines().any(|l| l.starts_with("FAIL ")
            && l.contains("case 2: a shell reading /etc/shadow: expected allowed, denied (ExecProcessRequest): ")
            && l.contains("p_command == i_command (in ExecProcessRequest")),
        "{out}"
    );

    std::fs::write(
        &cases,
        "[{\"description\": \"no kind\", \"allowed\": true}]",
    )
    .unwrap();
    let o = run(&args);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with("ERROR ") && l.contains("testcases.json")),
        "{}",
        stdout(&o)
    );
}
