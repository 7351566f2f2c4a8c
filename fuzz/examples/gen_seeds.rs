//! Writes the seed corpora fuzz/seeds/<target>/ from real requests: every recorded
//! input of ../shared/peers/kata-genpolicy/*/inputs.txt (as tests/compat.rs reads
//! them) and the request inputs in testdata/, turned into protobuf with
//! `encode::from_policy_input`.
//!
//!     cd fuzz && cargo run --example gen_seeds [-- <repo root>]
//!
//! Seeds are named by a content hash (FNV-1a), so rerunning is idempotent.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use agent_warden::wire::encode;
use agent_warden::wire::input::{self, InputShape};
use agent_warden::wire::envelope::{self, Code};
use agent_warden::wire::frame::{Frame, Header, TYPE_DATA, TYPE_REQUEST, TYPE_RESPONSE};
use agent_warden::wire::methods;
use fuzz_support::{request_body, request_frame, AgentMode, ConnFlags, GuardKey, PolicyKind};
use serde_json::Value;

/// One real request: where from, its request type, its payload bytes.
#[allow(dead_code)]
struct Real {
    origin: String,
    ty: String,
    payload: Vec<u8>,
}

/// Largest connection seed: whole scenarios are cut into pieces of about this size.
const MAX_CONN_SEED: usize = 48 << 10;

fn fnv(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn write(dir: &Path, prefix: &str, bytes: &[u8]) {
    let path = dir.join(format!("{prefix}-{:016x}", fnv(bytes)));
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Parses `["ep":"<Type>",{...}],` (tests/compat.rs, tests/input_roundtrip.rs).
fn parse_line(line: &str) -> Option<(String, Value)> {
    let rest = line.strip_prefix("[\"ep\":\"")?;
    let (ty, rest) = rest.split_once("\",")?;
    let json = rest.trim_end().trim_end_matches(',').strip_suffix(']')?;
    Some((ty.to_string(), serde_json::from_str(json).ok()?))
}

/// The payload for a policy input, in the first shape that accepts it.
fn encode(ty: &str, input: &Value) -> Option<Vec<u8>> {
    let desc = methods::table().request_descriptor(ty)?;
    for shape in [
        InputShape::Legacy,
        InputShape::LegacyStreamPorts,
        InputShape::Current,
    ] {
        if let Ok(msg) = encode::from_policy_input(desc, input, shape) {
            return msg.write_to_bytes_dyn().ok();
        }
    }
    None
}

fn load_peers(root: &Path, scenarios: &mut BTreeMap<String, Vec<Real>>) {
    let dir = root.join("../shared/peers/kata-genpolicy");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("note: {} not found; peer seeds skipped", dir.display());
        return;
    };
    let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    dirs.sort();
    for d in dirs {
        let Ok(text) = std::fs::read_to_string(d.join("inputs.txt")) else {
            continue;
        };
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        let mut reqs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            let Some((ty, input)) = parse_line(line) else {
                continue;
            };
            if ty == "AllowRequestsFailingPolicy" {
                continue;
            }
            let origin = format!("{name}/inputs.txt:{}", i + 1);
            match encode(&ty, &input) {
                Some(payload) => reqs.push(Real { origin, ty, payload }),
                None => eprintln!("{origin}: {ty} does not encode, skipped"),
            }
        }
        scenarios.insert(name, reqs);
    }
}

fn load_testdata(root: &Path, scenarios: &mut BTreeMap<String, Vec<Real>>) {
    let td = root.join("testdata");
    let mut reqs = Vec::new();
    for (file, ty) in [
        ("exec-ls-c1.json", "ExecProcessRequest"),
        ("exec-ls-debug.json", "ExecProcessRequest"),
        ("exec-shell.json", "ExecProcessRequest"),
        ("create-container.json", "CreateContainerRequest"),
        ("copy-file-ok.json", "CopyFileRequest"),
        ("copy-file-escape.json", "CopyFileRequest"),
    ] {
        let path = td.join(file);
        let input: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match encode(ty, &input) {
            Some(payload) => reqs.push(Real {
                origin: format!("testdata/{file}"),
                ty: ty.into(),
                payload,
            }),
            None => eprintln!("testdata/{file}: does not encode, skipped"),
        }
    }
    let capture = std::fs::read_to_string(td.join("capture.jsonl")).unwrap();
    for (i, line) in capture.lines().enumerate() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let (Some(ty), Some(input)) = (v["kind"].as_str(), v.get("request")) else {
            continue;
        };
        if let Some(payload) = encode(ty, input) {
            reqs.push(Real {
                origin: format!("testdata/capture.jsonl:{}", i + 1),
                ty: ty.into(),
                payload,
            });
        }
    }
    scenarios.insert("testdata".into(), reqs);
}

/// The method-table rows that take request type `ty` (ReadStreamRequest has two).
fn rows(ty: &str) -> Vec<(usize, &'static methods::Method)> {
    methods::table()
        .all()
        .iter()
        .enumerate()
        .filter(|(_, m)| m.request_type == ty)
        .collect()
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    let seeds = root.join("fuzz/seeds");
    for t in ["frame", "envelope", "request", "connection"] {
        let d = seeds.join(t);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
    }
    let mut scenarios = BTreeMap::new();
    load_peers(&root, &mut scenarios);
    load_testdata(&root, &mut scenarios);
    let total: usize = scenarios.values().map(Vec::len).sum();
    eprintln!("{total} real requests from {} sources", scenarios.len());

    // request: one seed per distinct (row, payload).
    let mut n = [0usize; 4];
    let mut distinct = BTreeMap::new();
    for r in scenarios.values().flatten() {
        for (i, _) in rows(&r.ty) {
            let mut s = vec![i as u8];
            s.extend_from_slice(&r.payload);
            distinct.insert(fnv(&s), s);
        }
    }
    // Every row with an empty payload (the default request), too.
    for i in 0..methods::table().all().len() {
        distinct.insert(fnv(&[i as u8]), vec![i as u8]);
    }
    for s in distinct.values() {
        write(&seeds.join("request"), "req", s);
        n[2] += 1;
    }

    // envelope: request envelopes of the distinct requests, and responses.
    let mut envs = BTreeMap::new();
    for r in scenarios.values().flatten() {
        let (_, m) = rows(&r.ty)[0];
        let b = request_body(&m.service, &m.name, &r.payload);
        envs.insert(fnv(&b), b);
    }
    let health = methods::table()
        .all()
        .iter()
        .find(|m| m.service == "grpc.Health")
        .unwrap();
    for b in [
        request_body(&health.service, &health.name, &[]),
        request_body("grpc.AgentService", "NoSuchMethod", &[]),
        envelope::ok_frame(1, b"").body().to_vec(),
        envelope::ok_frame(1, b"\x0a\x05hello").body().to_vec(),
        envelope::error_frame(3, Code::PERMISSION_DENIED, "ExecProcessRequest is blocked by policy")
            .body()
            .to_vec(),
        envelope::error_frame(5, Code::UNAVAILABLE, "agent connection closed").body().to_vec(),
    ] {
        envs.insert(fnv(&b), b);
    }
    for b in envs.values() {
        write(&seeds.join("envelope"), "env", b);
        n[1] += 1;
    }

    // frame: [limit byte, read-shape byte] + frames.
    let one = |r: &Real, id: u32| request_frame(rows(&r.ty)[0].1, id, &r.payload);
    let mut frames = BTreeMap::new();
    let small: Vec<&Real> = scenarios
        .values()
        .flatten()
        .filter(|r| r.payload.len() < 2048)
        .collect();
    for (k, r) in small.iter().enumerate().step_by(7) {
        let mut s = vec![0u8, (k % 16) as u8];
        s.extend_from_slice(one(r, 2 * k as u32 + 1).raw());
        frames.insert(fnv(&s), s);
    }
    {
        // Back-to-back frames of every kind, with a small body limit (oversize path).
        let mut s = vec![0x80 | 64, 0x23];
        for (k, r) in small.iter().take(6).enumerate() {
            s.extend_from_slice(one(r, 2 * k as u32 + 1).raw());
        }
        s.extend_from_slice(Frame::new(13, TYPE_DATA, 0, b"data").raw());
        s.extend_from_slice(envelope::ok_frame(15, b"").raw());
        s.extend_from_slice(
            &Header {
                length: 5 << 20,
                stream_id: 17,
                kind: TYPE_REQUEST,
                flags: 0,
            }
            .encode(),
        );
        frames.insert(fnv(&s), s);
    }
    for s in frames.values() {
        write(&seeds.join("frame"), "frame", s);
        n[0] += 1;
    }

    // connection: each source as host streams (stream ids 1, 3, 5, ...), cut to
    // MAX_CONN_SEED, under both policies and several guard/agent settings.
    let settings = [
        (PolicyKind::Default, InputShape::Current, AgentMode::Ok, false, false),
        (PolicyKind::AllowAll, InputShape::Current, AgentMode::Ok, false, false),
        (PolicyKind::Default, InputShape::Legacy, AgentMode::Batched, false, false),
        (PolicyKind::AllowAll, InputShape::LegacyStreamPorts, AgentMode::Error, true, false),
        (PolicyKind::Default, InputShape::Current, AgentMode::Batched, false, true),
        (PolicyKind::AllowAll, InputShape::Legacy, AgentMode::CloseAfterOne, false, false),
    ];
    let flag = |k: usize| {
        let (policy, shape, agent, forbidden, small) = settings[k % settings.len()];
        ConnFlags {
            key: GuardKey {
                policy,
                shape,
                set_policy_forbidden: forbidden,
                small_in_flight: small,
            },
            agent,
        }
        .to_byte()
    };
    let mut conns = BTreeMap::new();
    let mut k = 0;
    for reqs in scenarios.values() {
        let mut s = vec![flag(k)];
        let mut id = 1u32;
        for r in reqs {
            let f = one(r, id);
            id += 2;
            if s.len() + f.raw().len() > MAX_CONN_SEED && s.len() > 1 {
                conns.insert(fnv(&s), std::mem::replace(&mut s, vec![flag(k)]));
                k += 1;
                s[0] = flag(k);
            }
            s.extend_from_slice(f.raw());
        }
        if s.len() > 1 {
            conns.insert(fnv(&s), s);
            k += 1;
        }
    }
    // Every request type once on its own, under the default policy and allow-all,
    // plus ReadStdout with the agent's data (checked to be blanked).
    let mut seen = std::collections::BTreeSet::new();
    for r in scenarios.values().flatten() {
        if !seen.insert(r.ty.clone()) {
            continue;
        }
        for (i, m) in rows(&r.ty) {
            let mut s = vec![flag(i)];
            s.extend_from_slice(request_frame(m, 1, &r.payload).raw());
            conns.insert(fnv(&s), s);
        }
    }
    {
        // Protocol violations in one stream: data frame, streaming flags, oversize,
        // undecodable envelope, unknown method, response frame, even stream id.
        let (_, rs) = rows("ReadStreamRequest")[0];
        let mut s = vec![flag(0)];
        s.extend_from_slice(request_frame(rs, 1, b"").raw());
        s.extend_from_slice(Frame::new(3, TYPE_DATA, 0, b"x").raw());
        s.extend_from_slice(Frame::new(5, TYPE_REQUEST, 2, &request_body(&rs.service, &rs.name, b"")).raw());
        s.extend_from_slice(Frame::new(7, TYPE_REQUEST, 0, b"\xff\xff\xff").raw());
        s.extend_from_slice(Frame::new(9, TYPE_REQUEST, 0, &request_body("grpc.AgentService", "Nope", b"")).raw());
        s.extend_from_slice(Frame::new(11, TYPE_REQUEST, 0, &request_body(&rs.service, &rs.name, b"\x0a")).raw());
        s.extend_from_slice(Frame::new(13, TYPE_RESPONSE, 0, b"").raw());
        s.extend_from_slice(request_frame(rs, 14, b"").raw());
        conns.insert(fnv(&s), s);
    }
    for s in conns.values() {
        write(&seeds.join("connection"), "conn", s);
        n[3] += 1;
    }
    eprintln!(
        "seeds: frame {}, envelope {}, request {}, connection {}",
        n[0], n[1], n[2], n[3]
    );
}
