//! Scenarios that grow along one dimension, shaped as genpolicy emits them, for the
//! kata oracle test (tests/kata_oracle.rs) and the growth bench (benches/layers.rs):
//! - [`layers`]: the 2024 family (one dm-verity block storage per image layer);
//! - [`current`]: today's genpolicy rules (../shared/peers/kata-genpolicy-current) with
//!   a generated `policy_data`: env vars, mounts, containers per pod.
//!
//! Everything is read from ../shared at run time; nothing of it is copied here.

#![allow(dead_code)]

pub mod current;
pub mod layers;

/// One generated pod.
pub struct Scenario {
    /// e.g. "layers-12", "env-256".
    pub name: String,
    /// The full policy text: the rules, then `policy_data := {...}`.
    pub policy: String,
    /// The pod's requests in order: (request type, kata's policy input).
    pub requests: Vec<(String, serde_json::Value)>,
    /// Index in `requests` of the CreateContainerRequest that grows with n.
    pub measured: usize,
    /// Variants of `requests[measured]` that kata denies (after `requests[..measured]`),
    /// each with what was changed.
    pub mutations: Vec<(String, serde_json::Value)>,
}

/// Parses a recording's inputs.txt: one `["ep":"<Type>",{...}],` per non-empty line.
pub fn parse_inputs(text: &str) -> Vec<(String, serde_json::Value)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (ty, rest) = l
                .strip_prefix("[\"ep\":\"")
                .and_then(|r| r.split_once("\","))
                .unwrap_or_else(|| panic!("not a recorded request line: {l:.80}"));
            let json = rest
                .trim_end_matches(',')
                .strip_suffix(']')
                .unwrap_or_else(|| panic!("line does not end with ]: {l:.80}"));
            let input = serde_json::from_str(json).unwrap_or_else(|e| panic!("{ty}: {e}"));
            (ty.to_string(), input)
        })
        .collect()
}
