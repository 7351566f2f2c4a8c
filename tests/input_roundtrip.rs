//! Round trips of every request input that a real (older) kata-agent recorded
//! in the genpolicy peer data: recorded JSON → protobuf request → wire bytes →
//! decoded request → JSON must give back exactly the recorded JSON.
mod common;

use std::path::{Path, PathBuf};

use agent_warden::wire::encode::from_policy_input;
use agent_warden::wire::input::{decode_request, to_policy_input, InputShape};
use agent_warden::wire::protocols::agent;
use protobuf::reflect::MessageDescriptor;
use serde_json::Value;

/// One recorded request: where it came from, its request type and its input.
struct Recorded {
    origin: String,
    ep: String,
    input: Value,
}

fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/kata-genpolicy")
}

/// Parses `["ep":"<RequestType>",{<input JSON>}],` (the trailing comma is optional).
fn parse_line(line: &str) -> Result<(String, Value), String> {
    let rest = line
        .strip_prefix("[\"ep\":\"")
        .ok_or("line does not start with [\"ep\":\"")?;
    let (ep, rest) = rest.split_once("\",").ok_or("no end of the ep name")?;
    let rest = rest.trim_end();
    let rest = rest.strip_suffix(',').unwrap_or(rest);
    let json = rest.strip_suffix(']').ok_or("line does not end with ]")?;
    let input = serde_json::from_str(json).map_err(|e| format!("input is not JSON: {e}"))?;
    Ok((ep.to_owned(), input))
}

/// All recorded requests by scenario, or `None` if the peer data is absent.
fn load() -> Option<Vec<(String, Vec<Recorded>)>> {
    let dir = peer_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "peer data missing at {} (required when CI=true)",
                dir.display()
            );
        }
        eprintln!(
            "note: {} not found; skipping the recorded-input round trips",
            dir.display()
        );
        return None;
    };
    let mut scenarios = Vec::new();
    let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    dirs.sort();
    for scenario in dirs {
        let file = scenario.join("inputs.txt");
        if !file.is_file() {
            continue;
        }
        let name = scenario
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let mut lines = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let origin = format!("{name}/inputs.txt:{}", i + 1);
            let (ep, input) = parse_line(line).unwrap_or_else(|e| panic!("{origin}: {e}"));
            if ep == "AllowRequestsFailingPolicy" {
                continue;
            }
            lines.push(Recorded { origin, ep, input });
        }
        scenarios.push((name, lines));
    }
    Some(scenarios)
}

fn descriptor(ep: &str, origin: &str) -> MessageDescriptor {
    agent::file_descriptor()
        .message_by_package_relative_name(ep)
        .unwrap_or_else(|| panic!("{origin}: no message grpc.{ep} in agent.proto"))
}

/// JSON → request → bytes → request → JSON, all in `shape`.
fn through_the_wire(
    desc: &MessageDescriptor,
    input: &Value,
    shape: InputShape,
) -> Result<Value, String> {
    let msg = from_policy_input(desc, input, shape).map_err(|e| e.to_string())?;
    let bytes = msg
        .write_to_bytes_dyn()
        .map_err(|e| format!("encode: {e}"))?;
    let back = decode_request(desc, &bytes).map_err(|e| e.to_string())?;
    to_policy_input(&*back, shape).map_err(|e| e.to_string())
}

/// The first differing path between two JSON values, for readable failures.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    common::json_differences(a, b, path).into_iter().next()
}

/// Round trips one recorded line in `shape`; `Err` says where it differs.
fn check_exact(r: &Recorded, shape: InputShape) -> Result<(), String> {
    let desc = descriptor(&r.ep, &r.origin);
    let got = through_the_wire(&desc, &r.input, shape).map_err(|e| format!("{}: {e}", r.origin))?;
    match first_difference(&got, &r.input, &r.ep) {
        None => Ok(()),
        Some(d) => Err(format!(
            "{}: round trip differs (got vs recorded) at {d}",
            r.origin
        )),
    }
}

/// The legacy shape under which every line of a scenario round-trips
/// exactly (the recordings come from two older agent builds).
fn scenario_shape(name: &str, lines: &[Recorded]) -> InputShape {
    let mut failures = Vec::new();
    for shape in LEGACY_SHAPES {
        match lines.iter().try_for_each(|r| check_exact(r, shape)) {
            Ok(()) => return shape,
            Err(e) => failures.push(format!("  as {}: {e}", shape.name())),
        }
    }
    panic!(
        "scenario {name} does not round-trip in any legacy shape:\n{}",
        failures.join("\n")
    );
}

const LEGACY_SHAPES: [InputShape; 2] = [InputShape::Legacy, InputShape::LegacyStreamPorts];

fn assert_coverage(scenarios: usize, lines: usize) {
    assert!(scenarios >= 6, "only {scenarios} scenarios checked");
    assert!(lines >= 150, "only {lines} recorded requests checked");
}

#[test]
fn recorded_legacy_inputs_round_trip_exactly() {
    let Some(scenarios) = load() else { return };
    let mut checked = 0;
    let mut checked_scenarios = 0;
    let mut used = std::collections::BTreeSet::new();
    for (name, lines) in &scenarios {
        if lines.is_empty() {
            continue;
        }
        let shape = scenario_shape(name, lines);
        eprintln!(
            "{name}: {} lines round-trip exactly as {}",
            lines.len(),
            shape.name()
        );
        used.insert(shape.name());
        checked_scenarios += 1;
        checked += lines.len();
    }
    eprintln!("checked {checked} recorded requests in {checked_scenarios} scenarios");
    assert_coverage(checked_scenarios, checked);
    // Both older agents are represented in the peer data.
    assert_eq!(used.len(), 2, "{used:?}");
}

#[test]
fn recorded_inputs_round_trip_losslessly_in_current_shape() {
    let Some(scenarios) = load() else { return };
    let mut checked = 0;
    let mut checked_scenarios = 0;
    for (name, lines) in &scenarios {
        if lines.is_empty() {
            continue;
        }
        let legacy = scenario_shape(name, lines);
        checked_scenarios += 1;
        for r in lines {
            let fail = |e: String| -> ! { panic!("{}: {e}", r.origin) };
            let desc = descriptor(&r.ep, &r.origin);
            let msg =
                from_policy_input(&desc, &r.input, legacy).unwrap_or_else(|e| fail(e.to_string()));
            let current =
                to_policy_input(&*msg, InputShape::Current).unwrap_or_else(|e| fail(e.to_string()));
            let again =
                through_the_wire(&desc, &current, InputShape::Current).unwrap_or_else(|e| fail(e));
            if let Some(d) = first_difference(&again, &current, &r.ep) {
                fail(format!("current-shape round trip differs at {d}"));
            }
            // The current shape carries every field, so it holds the same request.
            let back = from_policy_input(&desc, &current, InputShape::Current)
                .unwrap_or_else(|e| fail(e.to_string()));
            assert!(
                desc.eq(&*msg, &*back),
                "{}: current shape lost information",
                r.origin
            );
            checked += 1;
        }
    }
    assert_coverage(checked_scenarios, checked);
}

#[test]
fn recorded_inputs_are_rejected_when_read_as_current_shape_where_they_differ() {
    // The legacy renames are real: at least the Interface (pciPath) and the
    // CopyFile (symlink_src) inputs do not parse as the current shape.
    let Some(scenarios) = load() else { return };
    let mut rejected = std::collections::BTreeSet::new();
    for (_name, lines) in &scenarios {
        for r in lines {
            let desc = descriptor(&r.ep, &r.origin);
            if from_policy_input(&desc, &r.input, InputShape::Current).is_err() {
                rejected.insert(r.ep.clone());
            }
        }
    }
    assert!(rejected.contains("UpdateInterfaceRequest"), "{rejected:?}");
    assert!(rejected.contains("CopyFileRequest"), "{rejected:?}");
}
