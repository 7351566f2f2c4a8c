//! What one decision-log record says, in OPA's decision-log shape: the masking of its
//! `input` (agent-warden's defaults, then the policy's `log_mask` rule, reported in
//! `erased` / `masked` as OPA reports them), and the RFC 3339 timestamp.
//!
//! Default masking keeps secrets out whatever the policy says: byte payloads (`data`
//! of CopyFile and WriteStdin, any `data` byte array) are erased, environment values
//! (`Env`/`env` entries) keep their name only (`NAME=<masked>`).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// The masked input, and the JSON pointers (under `/input`) that were erased or masked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Masked {
    pub input: Value,
    pub erased: Vec<String>,
    pub masked: Vec<String>,
}

/// One entry of a policy's `log_mask` value: a JSON pointer under `/input` to erase, or
/// OPA's `{"op": "upsert", "path": ..., "value": ...}` (also `{"op": "remove", ...}`).
#[derive(Debug, Clone, PartialEq)]
pub enum MaskOp {
    Erase(String),
    Upsert(String, Value),
}

/// Reads a `log_mask` value (a set or array of entries). Entries that are not pointers
/// under `/input` are an error naming them: a mask the policy author got wrong must
/// not silently leave data in the log.
pub fn mask_ops(value: &Value) -> Result<Vec<MaskOp>, String> {
    let items = match value {
        Value::Array(a) => a.as_slice(),
        other => {
            return Err(format!(
                "log_mask must be a set of JSON pointers, got {other}"
            ))
        }
    };
    let mut ops = Vec::new();
    for item in items {
        let (path, upsert) = match item {
            Value::String(p) => (p.clone(), None),
            Value::Object(o) => {
                let path = o
                    .get("path")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("log_mask entry {item} has no string `path`"))?;
                match o.get("op").and_then(Value::as_str).unwrap_or("remove") {
                    "remove" => (path.to_string(), None),
                    "upsert" => (
                        path.to_string(),
                        Some(o.get("value").cloned().unwrap_or(Value::Null)),
                    ),
                    op => return Err(format!("log_mask entry {item}: unknown op {op:?}")),
                }
            }
            other => return Err(format!("log_mask entry {other} is not a JSON pointer")),
        };
        if path != "/input" && !path.starts_with("/input/") {
            return Err(format!(
                "log_mask entry {path:?} is not a JSON pointer under /input"
            ));
        }
        ops.push(match upsert {
            Some(v) => MaskOp::Upsert(path, v),
            None => MaskOp::Erase(path),
        });
    }
    Ok(ops)
}

/// `input` with the default masking, then `ops` (the policy's), applied.
pub fn mask(input: &Value, ops: &[MaskOp]) -> Masked {
    mask_owned(input.clone(), ops)
}

/// [`mask`] of an input the caller gives away: masked in place, nothing copied (the
/// decision log's writer thread masks the request's own input this way).
pub fn mask_owned(input: Value, ops: &[MaskOp]) -> Masked {
    let mut out = Masked::default();
    let mut doc = input;
    default_mask(&mut doc, None, &mut out);
    for op in ops {
        match op {
            MaskOp::Erase(path) => {
                if path == "/input" {
                    doc = Value::Null;
                    out.erased.push(path.clone());
                } else if remove(&mut doc, rest(path)) {
                    out.erased.push(path.clone());
                }
            }
            MaskOp::Upsert(path, value) => {
                if path == "/input" {
                    doc = value.clone();
                    out.masked.push(path.clone());
                } else if upsert(&mut doc, rest(path), value.clone()) {
                    out.masked.push(path.clone());
                }
            }
        }
    }
    out.input = doc;
    out
}

/// The part of a pointer under `/input` (`/input/a/b` → `/a/b`).
fn rest(path: &str) -> &str {
    path.strip_prefix("/input").unwrap_or(path)
}

/// A pointer component escaped as RFC 6901 says (`~` → `~0`, `/` → `~1`).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The default masking of `v` in place; `at` is its place under `/input` (a pointer
/// string is only built for what is masked).
fn default_mask(v: &mut Value, at: Option<&Place<'_>>, out: &mut Masked) {
    match v {
        Value::Object(o) => o.retain(|k, v| {
            let here = Place {
                parent: at,
                key: Key::Name(k),
            };
            match (k.as_str(), v) {
                ("data", Value::Array(_)) => {
                    out.erased.push(here.pointer());
                    false
                }
                ("Env" | "env", Value::Array(a)) => {
                    out.masked.push(here.pointer());
                    a.iter_mut().for_each(mask_env);
                    true
                }
                (_, v) => {
                    default_mask(v, Some(&here), out);
                    true
                }
            }
        }),
        Value::Array(a) => {
            for (i, v) in a.iter_mut().enumerate() {
                let here = Place {
                    parent: at,
                    key: Key::Index(i),
                };
                default_mask(v, Some(&here), out);
            }
        }
        _ => {}
    }
}

/// One step of a JSON pointer.
enum Key<'a> {
    Name(&'a str),
    Index(usize),
}

/// A place in the input: its key and its parent's place (none: the input itself).
struct Place<'a> {
    parent: Option<&'a Place<'a>>,
    key: Key<'a>,
}

impl Place<'_> {
    /// `/input/...` for this place.
    fn pointer(&self) -> String {
        let mut keys = Vec::new();
        let mut p = Some(self);
        while let Some(place) = p {
            keys.push(&place.key);
            p = place.parent;
        }
        let mut s = String::from("/input");
        for k in keys.iter().rev() {
            s.push('/');
            match k {
                Key::Name(n) => s.push_str(&escape(n)),
                Key::Index(i) => s.push_str(&i.to_string()),
            }
        }
        s
    }
}

/// An environment entry `NAME=value` as `NAME=<masked>` (anything else unchanged).
pub(crate) fn mask_env(e: &mut Value) {
    if let Some((name, _)) = e.as_str().and_then(|s| s.split_once('=')) {
        *e = Value::String(format!("{name}=<masked>"));
    }
}

/// Splits `/a/b` into its parent pointer `/a` and unescaped last key `b`.
fn parent_and_key(pointer: &str) -> Option<(&str, String)> {
    let i = pointer.rfind('/')?;
    let key = pointer.get(i + 1..)?.replace("~1", "/").replace("~0", "~");
    Some((pointer.get(..i)?, key))
}

fn remove(doc: &mut Value, pointer: &str) -> bool {
    let Some((parent, key)) = parent_and_key(pointer) else {
        return false;
    };
    match doc.pointer_mut(parent) {
        Some(Value::Object(o)) => o.remove(&key).is_some(),
        Some(Value::Array(a)) => match key.parse::<usize>() {
            Ok(i) if i < a.len() => {
                a.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

fn upsert(doc: &mut Value, pointer: &str, value: Value) -> bool {
    let Some((parent, key)) = parent_and_key(pointer) else {
        return false;
    };
    match doc.pointer_mut(parent) {
        Some(Value::Object(o)) => {
            o.insert(key, value);
            true
        }
        Some(Value::Array(a)) => match key.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
            Some(slot) => {
                *slot = value;
                true
            }
            None => false,
        },
        _ => false,
    }
}

/// Now as RFC 3339 in UTC with nanoseconds (`2026-12-03T01:02:03.123456789Z`), as OPA
/// writes `timestamp`.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_nanos())
}

/// Seconds since the epoch as an RFC 3339 UTC date and time.
pub fn rfc3339(secs: u64, nanos: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian, era-based).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_erase_payloads_and_mask_env_values() {
        let input = json!({"OCI": {"Process": {"Env": ["PATH=/bin", "SECRET=x", "NOEQ"], "Args": ["sh"]}},
                           "data": [1, 2, 3], "path": "/run/x"});
        let m = mask(&input, &[]);
        assert_eq!(
            m.input,
            json!({"OCI": {"Process": {"Env": ["PATH=<masked>", "SECRET=<masked>", "NOEQ"], "Args": ["sh"]}}, "path": "/run/x"})
        );
        assert_eq!(m.erased, vec!["/input/data"]);
        assert_eq!(m.masked, vec!["/input/OCI/Process/Env"]);
    }

    #[test]
    fn policy_masks_erase_and_upsert_pointers() {
        let v = json!(["/input/path", {"op": "upsert", "path": "/input/OCI/Hostname", "value": "x"}, "/input/absent"]);
        let ops = mask_ops(&v).unwrap();
        let m = mask(
            &json!({"path": "/secret", "OCI": {"Hostname": "h"}, "a/b": 1}),
            &ops,
        );
        assert_eq!(m.input, json!({"OCI": {"Hostname": "x"}, "a/b": 1}));
        assert_eq!(m.erased, vec!["/input/path"]);
        assert_eq!(m.masked, vec!["/input/OCI/Hostname"]);
        let m = mask(
            &json!({"a/b": 1, "c": 2}),
            &[MaskOp::Erase("/input/a~1b".into())],
        );
        assert_eq!(m.input, json!({"c": 2}));
    }

    #[test]
    fn masks_outside_input_are_refused() {
        for bad in [
            json!(["/data/x"]),
            json!("/input"),
            json!([{"op": "add", "path": "/input/x"}]),
            json!([3]),
        ] {
            assert!(mask_ops(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_796_259_723, 0), "2026-12-03T01:02:03.000000000Z");
    }
}
