//! JSON identity with kata-agent: for the same protobuf bytes,
//! agent-warden's current-shape policy input equals, value by value, the input JSON
//! that kata-agent's own code builds (the kata-policy-oracle of ../shared/kata-reference,
//! which echoes it). Every AgentService request type of the method table is built
//! from its message descriptor: left empty, and with every field set to a non-default
//! value (nested messages, repeated fields and maps with two entries, proto3
//! `optional` scalars, one oneof member per case until every member was used), in three
//! value sets (ordinary values; extremes such as u64::MAX, i64::MIN, unknown enum
//! numbers, escapes and non-ASCII text; zero values that are set, so that `optional`
//! fields and nested messages are present with 0, false, "" and {}). CopyFile also gets one case per file type,
//! including a symlink whose target is not UTF-8, which both sides must refuse.
//!
//! One oracle process answers the whole batch (~0.1 s). Without the oracle the test
//! skips with a message, except under CI=true, where it fails.
mod common;

use std::collections::{BTreeMap, BTreeSet};

use agent_warden::wire::input::{decode_request, to_policy_input, InputShape};
use agent_warden::wire::methods;
use agent_warden::wire::protocols::agent;
use common::json_differences;
use common::oracle::{oracle_binary, Oracle};
use protobuf::reflect::{MessageDescriptor, ReflectValueBox, RuntimeFieldType, RuntimeType};
use protobuf::{Message, MessageDyn};
use serde_json::Value;

/// Messages nested deeper than this are left unset (the protos are not recursive;
/// this only bounds the filler).
const MAX_DEPTH: usize = 12;

/// Which values a filled message gets.
#[derive(Clone, Copy, Debug)]
enum Values {
    Ordinary,
    Extreme,
    /// Every scalar at its zero value, but set: proto3 `optional` fields present with
    /// 0/false/"", nested messages present and empty, lists of zeros.
    Zero,
}

/// Fills messages field by field from their descriptors.
struct Filler {
    values: Values,
    /// Which member of each (non-synthetic) oneof is set: `pick % members`.
    pick: usize,
    /// Makes strings, map keys and numbers differ from field to field.
    n: u64,
    /// Oneof members set so far (`oneof full name`, member name).
    oneofs_set: BTreeSet<(String, String)>,
}

impl Filler {
    fn next(&mut self) -> u64 {
        self.n += 1;
        self.n
    }

    fn value(&mut self, rt: &RuntimeType, depth: usize) -> Option<ReflectValueBox> {
        let n = self.next();
        let odd = n % 2 == 1;
        if let Values::Zero = self.values {
            return match rt {
                RuntimeType::Message(m) if depth < MAX_DEPTH => {
                    Some(ReflectValueBox::Message(self.message(m, depth + 1)))
                }
                RuntimeType::Message(_) => None,
                RuntimeType::Enum(e) => Some(ReflectValueBox::Enum(e.clone(), 0)),
                RuntimeType::I32 => Some(ReflectValueBox::I32(0)),
                RuntimeType::I64 => Some(ReflectValueBox::I64(0)),
                RuntimeType::U32 => Some(ReflectValueBox::U32(0)),
                RuntimeType::U64 => Some(ReflectValueBox::U64(0)),
                RuntimeType::F32 => Some(ReflectValueBox::F32(0.0)),
                RuntimeType::F64 => Some(ReflectValueBox::F64(0.0)),
                RuntimeType::Bool => Some(ReflectValueBox::Bool(false)),
                RuntimeType::String => Some(ReflectValueBox::String(String::new())),
                RuntimeType::VecU8 => Some(ReflectValueBox::Bytes(Vec::new())),
            };
        }
        Some(match (rt, self.values) {
            (_, Values::Zero) => unreachable!("handled above"),
            (RuntimeType::I32, Values::Ordinary) => ReflectValueBox::I32(-7 - n as i32),
            (RuntimeType::I32, Values::Extreme) => {
                ReflectValueBox::I32(if odd { i32::MIN } else { i32::MAX })
            }
            (RuntimeType::I64, Values::Ordinary) => ReflectValueBox::I64(-(1 << 40) - n as i64),
            (RuntimeType::I64, Values::Extreme) => {
                ReflectValueBox::I64(if odd { i64::MIN } else { i64::MAX })
            }
            (RuntimeType::U32, Values::Ordinary) => ReflectValueBox::U32(1000 + n as u32),
            (RuntimeType::U32, Values::Extreme) => ReflectValueBox::U32(u32::MAX),
            (RuntimeType::U64, Values::Ordinary) => ReflectValueBox::U64((1 << 53) + n),
            (RuntimeType::U64, Values::Extreme) => ReflectValueBox::U64(u64::MAX),
            (RuntimeType::F32, _) => ReflectValueBox::F32(1.5 + n as f32),
            (RuntimeType::F64, _) => ReflectValueBox::F64(-2.25 - n as f64),
            (RuntimeType::Bool, _) => ReflectValueBox::Bool(true),
            (RuntimeType::String, Values::Ordinary) => ReflectValueBox::String(format!("s{n}")),
            (RuntimeType::String, Values::Extreme) => {
                ReflectValueBox::String(format!("ü\"\\\n\t\u{0}\u{1F600}</>{n}"))
            }
            (RuntimeType::VecU8, Values::Ordinary) => ReflectValueBox::Bytes(vec![n as u8, 1, 2]),
            (RuntimeType::VecU8, Values::Extreme) => ReflectValueBox::Bytes(vec![0, 0xff, 0x80]),
            (RuntimeType::Enum(e), Values::Ordinary) => {
                // A defined non-zero value when there is one.
                let v = e.values().map(|v| v.value()).find(|&v| v != 0).unwrap_or(5);
                ReflectValueBox::Enum(e.clone(), v)
            }
            (RuntimeType::Enum(e), Values::Extreme) => ReflectValueBox::Enum(e.clone(), 77),
            (RuntimeType::Message(m), _) => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                ReflectValueBox::Message(self.message(m, depth + 1))
            }
        })
    }

    fn message(&mut self, desc: &MessageDescriptor, depth: usize) -> Box<dyn MessageDyn> {
        let mut msg = desc.new_instance();
        for field in desc.fields() {
            if let Some(oneof) = field.containing_oneof() {
                let members: Vec<_> = oneof.fields().collect();
                let chosen = &members[self.pick % members.len()];
                if chosen.name() != field.name() {
                    continue;
                }
                self.oneofs_set
                    .insert((oneof.full_name().to_string(), field.name().to_string()));
            }
            match field.runtime_field_type() {
                RuntimeFieldType::Singular(rt) => {
                    if let Some(v) = self.value(&rt, depth) {
                        field.set_singular_field(&mut *msg, v);
                    }
                }
                RuntimeFieldType::Repeated(rt) => {
                    for _ in 0..2 {
                        if let Some(v) = self.value(&rt, depth) {
                            field.mut_repeated(&mut *msg).push(v);
                        }
                    }
                }
                RuntimeFieldType::Map(kt, vt) => {
                    for _ in 0..2 {
                        let k = self.value(&kt, depth);
                        let v = self.value(&vt, depth);
                        if let (Some(k), Some(v)) = (k, v) {
                            field.mut_map(&mut *msg).insert(k, v);
                        }
                    }
                }
            }
        }
        msg
    }
}

/// Every oneof (not the synthetic ones of proto3 `optional`) reachable from `desc`,
/// with its member names.
fn oneofs(desc: &MessageDescriptor, depth: usize, out: &mut BTreeMap<String, Vec<String>>) {
    if depth > MAX_DEPTH {
        return;
    }
    for oneof in desc.oneofs() {
        out.insert(
            oneof.full_name().to_string(),
            oneof.fields().map(|f| f.name().to_string()).collect(),
        );
    }
    for field in desc.fields() {
        let rt = match field.runtime_field_type() {
            RuntimeFieldType::Singular(rt) | RuntimeFieldType::Repeated(rt) => rt,
            RuntimeFieldType::Map(_, vt) => vt,
        };
        if let RuntimeType::Message(m) = rt {
            oneofs(&m, depth + 1, out);
        }
    }
}

/// How many values (scalars, nulls, empty arrays and objects) a JSON document has.
fn leaves(v: &Value) -> usize {
    match v {
        Value::Array(a) if !a.is_empty() => a.iter().map(leaves).sum(),
        Value::Object(o) if !o.is_empty() => o.values().map(leaves).sum(),
        _ => 1,
    }
}

/// One request to compare.
struct Case {
    request_type: String,
    name: String,
    payload: Vec<u8>,
}

/// The CopyFile cases kata-agent summarises differently: one per file type.
fn copy_file_cases() -> Vec<Case> {
    let files: [(&str, u32, &[u8]); 6] = [
        ("regular file", 0o100644, b"data"),
        ("directory", 0o040755, b""),
        ("symlink", 0o120777, b"..data/key"),
        ("symlink, empty target", 0o120777, b""),
        ("fifo", 0o010600, b"x"),
        ("symlink, target not UTF-8", 0o120777, &[b'a', 0xff, 0xfe]),
    ];
    files
        .iter()
        .map(|&(name, mode, data)| {
            let req = agent::CopyFileRequest {
                path: "/run/kata-containers/shared/containers/c1/f".into(),
                file_size: data.len() as i64,
                file_mode: mode,
                dir_mode: 0o750,
                uid: 1000,
                gid: -1,
                offset: 7,
                data: data.to_vec(),
                ..Default::default()
            };
            Case {
                request_type: "CopyFileRequest".into(),
                name: name.into(),
                payload: req.write_to_bytes().unwrap(),
            }
        })
        .collect()
}

/// A policy under which kata-agent allows every request type (the decision does not
/// matter here, only the echoed input).
fn allow_everything(types: &[&str]) -> String {
    let mut p = String::from("package agent_policy\n\n");
    for t in types {
        p.push_str(&format!("default {t} := true\n"));
    }
    p
}

#[test]
fn current_input_equals_kata_agents_for_every_request_type() {
    let Some(bin) = oracle_binary("kata_input") else {
        return;
    };
    let table = methods::table();
    let types = table.policy_request_types();
    assert_eq!(types.len(), 41, "AgentService request types: {types:?}");

    let mut cases = Vec::new();
    let mut reachable = BTreeMap::new();
    let mut oneofs_set = BTreeSet::new();
    for ty in &types {
        let desc = table.request_descriptor(ty).unwrap();
        let case = |name: String, msg: &dyn MessageDyn| Case {
            request_type: ty.to_string(),
            name,
            payload: msg.write_to_bytes_dyn().unwrap(),
        };
        cases.push(case("empty".into(), &*desc.new_instance()));
        let mut here = BTreeMap::new();
        oneofs(desc, 0, &mut here);
        let picks = here.values().map(Vec::len).max().unwrap_or(1);
        for values in [Values::Ordinary, Values::Extreme, Values::Zero] {
            for pick in 0..picks {
                let mut filler = Filler {
                    values,
                    pick,
                    n: 0,
                    oneofs_set: BTreeSet::new(),
                };
                let msg = filler.message(desc, 0);
                oneofs_set.extend(filler.oneofs_set);
                cases.push(case(
                    format!("{values:?} values, oneof member #{pick}"),
                    &*msg,
                ));
            }
        }
        reachable.extend(here);
    }
    cases.extend(copy_file_cases());

    // Every oneof member of every request type was set in some case.
    let reachable: BTreeSet<(String, String)> = reachable
        .into_iter()
        .flat_map(|(o, members)| members.into_iter().map(move |m| (o.clone(), m)))
        .collect();
    assert!(
        !reachable.is_empty(),
        "no oneof found: the filler is broken"
    );
    let unset: Vec<_> = reachable.difference(&oneofs_set).collect();
    assert!(unset.is_empty(), "oneof members never set: {unset:?}");

    let mut oracle = Oracle::start(&bin, &allow_everything(&types), false);
    let asked: Vec<(String, Vec<u8>)> = cases
        .iter()
        .map(|c| (c.request_type.clone(), c.payload.clone()))
        .collect();
    let answers = oracle.ask_all(&asked);

    // request type -> (identical, compared, JSON values compared)
    let mut counts: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    for (c, a) in cases.iter().zip(&answers) {
        let desc = table.request_descriptor(&c.request_type).unwrap();
        let msg = decode_request(desc, &c.payload).unwrap();
        let ours = to_policy_input(&*msg, InputShape::Current);
        let theirs = a
            .input
            .as_deref()
            .map(|t| serde_json::from_str::<Value>(t).unwrap());
        let what = format!("{} ({})", c.request_type, c.name);
        let values = theirs.as_ref().map_or(0, leaves);
        let diffs = match (ours, theirs) {
            (Ok(ours), Some(theirs)) => json_differences(&theirs, &ours, "input")
                .into_iter()
                .map(|d| format!("{what}: {d}   [kata vs agent-warden]"))
                .collect(),
            // Both refuse before evaluation (CopyFile symlink not UTF-8).
            (Err(_), None) if a.allowed.is_none() => Vec::new(),
            (Err(e), None) => vec![format!(
                "{what}: agent-warden refuses ({e}), kata answers {:?}",
                a.allowed
            )],
            (Err(e), Some(t)) => vec![format!(
                "{what}: agent-warden refuses ({e}), kata builds {t}"
            )],
            (Ok(ours), None) => vec![format!(
                "{what}: kata refuses ({:?}), agent-warden builds {ours}",
                a.error
            )],
        };
        let entry = counts.entry(c.request_type.as_str()).or_default();
        entry.1 += 1;
        entry.2 += values;
        if diffs.is_empty() {
            entry.0 += 1;
        }
        failures.extend(diffs);
    }

    println!("JSON identity with kata-agent (current shape), per request type:");
    for (ty, (same, all, values)) in &counts {
        println!("  {ty:<40} {same}/{all} identical ({values} JSON values)");
    }
    let same: usize = counts.values().map(|c| c.0).sum();
    let values: usize = counts.values().map(|c| c.2).sum();
    println!(
        "  total: {same}/{} identical over {} request types, {values} JSON values; oneof members covered: {}",
        cases.len(),
        counts.len(),
        oneofs_set.len()
    );
    assert_eq!(counts.len(), 41);
    assert!(
        failures.is_empty(),
        "{} differences:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(same, cases.len());
}
