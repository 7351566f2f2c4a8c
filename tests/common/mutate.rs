//! Seeded, type-preserving random mutations of requests (shared by kata_oracle.rs and
//! deny_reasons.rs): a string for a string, a number for a number, a flipped bool, a list
//! one longer or shorter or empty, a map key renamed.

use serde_json::{json, Value};

/// A small deterministic generator (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Strings a mutation may put in: path tricks, shell, env, unicode, control bytes.
pub const STRINGS: &[&str] = &[
    "",
    "/etc/passwd",
    "../../etc/shadow",
    "/run/kata-containers/shared/containers/../../../etc/shadow",
    "$(id)",
    "LD_PRELOAD=/tmp/evil.so",
    "sh",
    "-c",
    "0",
    "true",
    "ünï©ødé",
    "a\nb",
    "a\u{0}b",
    "*",
    ".*",
    "rw",
    "bind",
];

/// Every node of a JSON value, as a path of object keys and array indices.
fn paths(v: &Value, at: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                at.push(json!(k));
                paths(c, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                at.push(json!(i));
                paths(c, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn node<'a>(v: &'a mut Value, path: &[Value]) -> &'a mut Value {
    path.iter().fold(v, |v, k| match k {
        Value::String(k) => &mut v[k.as_str()],
        Value::Number(i) => &mut v[i.as_u64().unwrap() as usize],
        _ => unreachable!(),
    })
}

/// Strings found anywhere in `v` (a mutation may move one to another place).
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Object(m) => m.values().for_each(|c| strings(c, out)),
        Value::Array(a) => a.iter().for_each(|c| strings(c, out)),
        _ => {}
    }
}

/// One type-preserving change at a random node: a string for a string, a number for
/// a number, a flipped bool, a list one longer or shorter or empty, a map with a key
/// renamed (a message's key renamed is refused by the encoder, and retried).
pub fn mutate_once(rng: &mut Rng, v: &mut Value) {
    let mut all = Vec::new();
    paths(v, &mut Vec::new(), &mut all);
    let mut pool = Vec::new();
    strings(v, &mut pool);
    let path = rng.pick(&all).clone();
    let n = node(v, &path);
    match n {
        Value::String(s) => {
            *s = match rng.below(6) {
                0 => rng.pick(STRINGS).to_string(),
                1 if !pool.is_empty() => rng.pick(&pool).clone(),
                2 => format!("{s}{}", rng.pick(&["x", "/", "/..", " ", "="])),
                3 => s.chars().take(s.chars().count() / 2).collect(),
                4 if !s.is_empty() => {
                    let mut c: Vec<char> = s.chars().collect();
                    let i = rng.below(c.len());
                    c[i] = *rng.pick(&['a', 'Z', '0', '/', '.', '-', '_', '$']);
                    c.into_iter().collect()
                }
                _ => String::new(),
            }
        }
        Value::Number(x) => {
            *n = if let Some(u) = x.as_u64() {
                json!(*rng.pick(&[
                    0,
                    1,
                    u.wrapping_add(1),
                    u.saturating_sub(1),
                    u.saturating_mul(2),
                    u / 2,
                    u64::from(u32::MAX),
                    1 << 40,
                ]))
            } else if let Some(i) = x.as_i64() {
                json!(*rng.pick(&[0, -1, i.wrapping_add(1), i.wrapping_sub(1), i64::MIN]))
            } else {
                json!(x.as_f64().unwrap_or(0.0) * 2.0 + 0.5)
            }
        }
        Value::Bool(b) => *b = !*b,
        Value::Array(a) => match rng.below(3) {
            0 if !a.is_empty() => {
                a.remove(rng.below(a.len()));
            }
            1 if !a.is_empty() => {
                let i = rng.below(a.len());
                a.insert(i, a[i].clone());
            }
            _ => a.clear(),
        },
        Value::Object(m) if !m.is_empty() => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = rng.pick(&keys).clone();
            let c = m.remove(&k).unwrap();
            m.insert(format!("{k}{}", rng.pick(&["x", ".io", "/"])), c);
        }
        _ => {}
    }
}

/// In the legacy CopyFile input, `symlink_src` is set only for a symlink (file_mode's
/// type bits): a mutation that breaks this is made consistent again, either way.
pub fn copy_file_consistent(rng: &mut Rng, v: &mut Value) {
    const S_IFMT: u64 = 0o170000;
    const S_IFLNK: u64 = 0o120000;
    let mode = v["file_mode"].as_u64().unwrap_or(0);
    let link = v["symlink_src"].as_str().unwrap_or("");
    if mode & S_IFMT != S_IFLNK && !link.is_empty() {
        if rng.below(2) == 0 {
            v["symlink_src"] = json!("");
        } else {
            v["file_mode"] = json!(S_IFLNK | (mode & 0o7777));
        }
    }
}
