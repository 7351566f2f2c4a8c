//! Protobuf request ⇄ the JSON that kata-agent hands to its policy engine.
//!
//! kata-agent builds the policy input for a request by serialising the
//! rust-protobuf generated struct with serde. genpolicy policies are written
//! against that exact shape, so this module reproduces it generically, with
//! rust-protobuf's reflection API, for any message in `protos/`:
//!
//! * keys are the field names as spelled in the `.proto` file; a name that is
//!   a Rust keyword gets a trailing underscore (`type` → `type_`), because that
//!   is the struct field name rust-protobuf generates;
//! * every field is present, proto3 zero values included (`""`, `0`, `false`,
//!   `[]`, `{}`);
//! * an unset singular message field is `null`, a set one is an object;
//! * a proto3 `optional` scalar is `null` when unset and its value when set;
//! * enums are integers, 64-bit integers are exact JSON numbers, `bytes` are
//!   arrays of numbers, maps are objects keyed by strings, floats are numbers
//!   (a non-finite float becomes `null`, as serde_json writes it);
//! * a (non-synthetic) oneof is one key named after the oneof whose value is
//!   serde's external tagging, `{"<Variant>": value}`, or `null` when unset.
//!   `<Variant>` is rust-protobuf's enum variant name for the member field
//!   (the field name in CamelCase). Member fields have no keys of their own;
//! * `CopyFileRequest` is special: kata-agent never shows the file data to the
//!   policy, only a summary (see [`copy_file_type`] and the shapes below). In
//!   the current shape `symlink_target` is `null` unless the file is a symlink,
//!   and a symlink whose target is not UTF-8 has no input at all: kata-agent
//!   refuses it before evaluating the policy, and so does [`to_policy_input`].
//!
//! [`InputShape::Legacy`] and [`InputShape::LegacyStreamPorts`] reproduce the
//! input of the two older kata-agent builds that recorded the genpolicy peer
//! data; the differences are listed, field by field, in [`LEGACY_FIELDS`].
//!
//! [`crate::wire::encode`] holds the inverse. No function here panics on any input.
use std::borrow::Cow;

use protobuf::descriptor::field_descriptor_proto::Label;
use protobuf::reflect::{
    FieldDescriptor, MessageDescriptor, OneofDescriptor, ReflectValueRef, RuntimeFieldType,
    RuntimeType, Syntax,
};
use protobuf::MessageDyn;
use serde_json::{Map, Value};

use crate::wire::protocols::agent::CopyFileRequest;

/// Which kata-agent version's input shape to reproduce.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum InputShape {
    /// Current kata-agent (protos/ as they are; CopyFile with file_type/symlink_target).
    #[default]
    Current,
    /// Older kata-agent, as recorded in the genpolicy peer data (scenarios
    /// pod-cm1, pod-exec, pod-lifecycle, web): see [`LEGACY_FIELDS`];
    /// CopyFile with symlink_src.
    Legacy,
    /// A slightly later older kata-agent, as recorded in the genpolicy peer
    /// data scenarios k8s-policy-job and k8s-policy-pod: like [`Legacy`]
    /// except that requests already carry the stdin/stdout/stderr vsock ports.
    ///
    /// [`Legacy`]: InputShape::Legacy
    LegacyStreamPorts,
}

impl InputShape {
    /// Every shape, oldest agent last.
    pub const ALL: [InputShape; 3] = [
        InputShape::Current,
        InputShape::LegacyStreamPorts,
        InputShape::Legacy,
    ];

    /// The name used in configuration (serde, kebab-case).
    pub fn name(self) -> &'static str {
        match self {
            InputShape::Current => "current",
            InputShape::Legacy => "legacy",
            InputShape::LegacyStreamPorts => "legacy-stream-ports",
        }
    }

    fn is_legacy(self) -> bool {
        self != InputShape::Current
    }
}

/// A request payload that is not the message its method names.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{name} is a map entry, not a request")]
    MapEntry { name: String },
    #[error("cannot decode {name}: {err}")]
    Malformed {
        name: String,
        #[source]
        err: protobuf::Error,
    },
}

/// A request kata-agent refuses before its policy runs: it has no policy input, and
/// must be denied.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(
        "{COPY_FILE_REQUEST}: the symlink target (data) is not valid UTF-8 ({0}); \
         kata-agent refuses such a CopyFile before evaluating its policy"
    )]
    SymlinkNotUtf8(#[source] std::str::Utf8Error),
}

/// One field whose JSON key differs from protos/ in older agents' input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegacyField {
    /// Full protobuf name of the message (`package.Message`).
    pub message: &'static str,
    /// Field number (the wire identity, unchanged between versions).
    pub number: u32,
    /// The old kata-agent's JSON key for this field, or `None` when the old
    /// protocol did not have the field at all (the key is then omitted).
    pub legacy_key: Option<&'static str>,
    /// The input shapes this difference belongs to.
    pub shapes: &'static [InputShape],
}

const BOTH: &[InputShape] = &[InputShape::Legacy, InputShape::LegacyStreamPorts];
const OLDEST: &[InputShape] = &[InputShape::Legacy];

/// Everything the older kata-agents (the ones that recorded the genpolicy
/// peer data) put differently into the policy input, relative to protos/.
///
/// Found by converting every recorded input to protobuf and back
/// (tests/input_roundtrip.rs). The recordings show only the messages they
/// contain, so a message that is always `null` or absent there (e.g. `Hooks`,
/// `LinuxSeccomp`, `StringUser`) could not be checked. ExecProcessRequest was
/// recorded only by the [`InputShape::Legacy`] agent; that the later agent
/// sends its ports too is inferred (the ports came with CreateContainerRequest's).
#[rustfmt::skip]
pub const LEGACY_FIELDS: &[LegacyField] = &[
    // Interface field 6 was called `pciPath` before it became `devicePath`.
    LegacyField { message: "types.Interface", number: 6, legacy_key: Some("pciPath"), shapes: BOTH },
    // Route had no `flags` (7) and no `mtu` (8).
    LegacyField { message: "types.Route", number: 7, legacy_key: None, shapes: BOTH },
    LegacyField { message: "types.Route", number: 8, legacy_key: None, shapes: BOTH },
    // Storage had no `shared` (8).
    LegacyField { message: "grpc.Storage", number: 8, legacy_key: None, shapes: BOTH },
    // The oldest agent had no stdin_port/stdout_port/stderr_port.
    LegacyField { message: "grpc.CreateContainerRequest", number: 9, legacy_key: None, shapes: OLDEST },
    LegacyField { message: "grpc.CreateContainerRequest", number: 10, legacy_key: None, shapes: OLDEST },
    LegacyField { message: "grpc.CreateContainerRequest", number: 11, legacy_key: None, shapes: OLDEST },
    LegacyField { message: "grpc.ExecProcessRequest", number: 5, legacy_key: None, shapes: OLDEST },
    LegacyField { message: "grpc.ExecProcessRequest", number: 6, legacy_key: None, shapes: OLDEST },
    LegacyField { message: "grpc.ExecProcessRequest", number: 7, legacy_key: None, shapes: OLDEST },
];

/// Full protobuf name of the request whose policy input is a summary.
pub const COPY_FILE_REQUEST: &str = "grpc.CopyFileRequest";

/// Deepest message nesting [`crate::wire::encode::from_policy_input`] accepts (the protobuf parser
/// used by [`decode_request`] has the same limit on the wire side).
pub const MAX_DEPTH: usize = 100;

/// Rust keywords (strict and reserved, all editions) plus the older reserved
/// words rust-protobuf also escapes. A field with one of these names is
/// generated as `<name>_`, and serde uses that name as the JSON key. Sorted by
/// bytes (looked up by binary search for every field of every request).
const RUST_KEYWORDS: &[&str] = &[
    "Self", "_", "abstract", "alignof", "as", "async", "await", "become", "box", "break", "const",
    "continue", "crate", "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for",
    "gen", "if", "impl", "in", "let", "loop", "macro", "match", "mod", "move", "mut", "offsetof",
    "override", "priv", "proc", "pub", "pure", "ref", "return", "self", "sizeof", "static",
    "struct", "super", "trait", "true", "try", "type", "typeof", "unsafe", "unsized", "use",
    "virtual", "where", "while", "yield",
];

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

/// Decodes a request payload (protobuf wire format) as the message `desc`.
pub fn decode_request(
    desc: &MessageDescriptor,
    payload: &[u8],
) -> Result<Box<dyn MessageDyn>, DecodeError> {
    let name = || desc.full_name().to_string();
    if desc.is_map_entry() {
        return Err(DecodeError::MapEntry { name: name() });
    }
    desc.parse_from_bytes(payload)
        .map_err(|err| DecodeError::Malformed { name: name(), err })
}

/// The JSON kata-agent evaluates its policy on for this request, or why
/// kata-agent refuses the request before any evaluation (the request must then
/// be denied: it has no policy input).
pub fn to_policy_input(msg: &dyn MessageDyn, shape: InputShape) -> Result<Value, Refused> {
    match msg.downcast_ref::<CopyFileRequest>() {
        Some(req) => copy_file_to_json(req, shape),
        None => Ok(message_to_json(msg, shape)),
    }
}

/// `file_type` of a CopyFile policy input: what `file_mode & S_IFMT` says.
pub fn copy_file_type(file_mode: u32) -> &'static str {
    match file_mode & S_IFMT {
        S_IFREG => "Regular",
        S_IFDIR => "Directory",
        S_IFLNK => "Symlink",
        _ => "Unknown",
    }
}

/// The JSON key of a field name or oneof name: the rust-protobuf struct field.
pub(crate) fn rust_ident(name: &str) -> Cow<'_, str> {
    if RUST_KEYWORDS.binary_search(&name).is_ok() {
        Cow::Owned(format!("{name}_"))
    } else {
        Cow::Borrowed(name)
    }
}

/// rust-protobuf's enum variant name for a oneof member field: CamelCase of
/// the field name (`_` dropped, the letter after it and the first upper-cased).
pub(crate) fn oneof_variant_name(field_name: &str) -> String {
    let mut out = String::with_capacity(field_name.len());
    let mut upper_next = true;
    for c in field_name.chars() {
        if c == '_' {
            upper_next = true;
        } else if upper_next {
            out.push(c.to_ascii_uppercase());
            upper_next = false;
        } else {
            out.push(c);
        }
    }
    rust_ident(&out).into_owned()
}

/// JSON key of a regular (non-oneof) field in `shape`; `None` if the field
/// has no key in that shape.
pub(crate) fn field_key<'a>(
    message: &str,
    field: &'a FieldDescriptor,
    shape: InputShape,
) -> Option<Cow<'a, str>> {
    if shape.is_legacy() {
        let number = u32::try_from(field.number()).ok();
        if let Some(diff) = LEGACY_FIELDS
            .iter()
            .find(|d| Some(d.number) == number && d.message == message && d.shapes.contains(&shape))
        {
            return diff.legacy_key.map(Cow::Borrowed);
        }
    }
    Some(rust_ident(field.name()))
}

/// True if rust-protobuf generates this singular field as an `Option`/
/// `MessageField`, i.e. it is `null` when unset.
pub(crate) fn is_nullable(field: &FieldDescriptor, rt: &RuntimeType) -> bool {
    matches!(rt, RuntimeType::Message(_))
        || field.containing_oneof_including_synthetic().is_some()
        || (field.containing_message().file_descriptor().syntax() == Syntax::Proto2
            && field.proto().label() == Label::LABEL_OPTIONAL)
}

// ---------------------------------------------------------------------------
// protobuf → JSON

fn message_to_json(msg: &dyn MessageDyn, shape: InputShape) -> Value {
    let desc = msg.descriptor_dyn();
    let mut out = Map::new();
    for field in desc.fields() {
        if field.containing_oneof().is_some() {
            continue;
        }
        if let Some(key) = field_key(desc.full_name(), &field, shape) {
            out.insert(key.into_owned(), field_to_json(msg, &field, shape));
        }
    }
    for oneof in desc.oneofs() {
        out.insert(
            rust_ident(oneof.name()).into_owned(),
            oneof_to_json(msg, &oneof, shape),
        );
    }
    Value::Object(out)
}

fn field_to_json(msg: &dyn MessageDyn, field: &FieldDescriptor, shape: InputShape) -> Value {
    match field.runtime_field_type() {
        RuntimeFieldType::Singular(rt) => match field.get_singular(msg) {
            Some(v) => value_to_json(v, shape),
            None if is_nullable(field, &rt) => Value::Null,
            None => value_to_json(field.get_singular_field_or_default(msg), shape),
        },
        RuntimeFieldType::Repeated(_) => Value::Array(
            field
                .get_repeated(msg)
                .into_iter()
                .map(|v| value_to_json(v, shape))
                .collect(),
        ),
        RuntimeFieldType::Map(..) => {
            let map = field.get_map(msg);
            let mut out = Map::new();
            for (k, v) in &map {
                out.insert(map_key_to_string(&k), value_to_json(v, shape));
            }
            Value::Object(out)
        }
    }
}

fn oneof_to_json(msg: &dyn MessageDyn, oneof: &OneofDescriptor, shape: InputShape) -> Value {
    for field in oneof.fields() {
        if let Some(v) = field.get_singular(msg) {
            let mut tagged = Map::new();
            tagged.insert(oneof_variant_name(field.name()), value_to_json(v, shape));
            return Value::Object(tagged);
        }
    }
    Value::Null
}

fn value_to_json(v: ReflectValueRef<'_>, shape: InputShape) -> Value {
    match v {
        ReflectValueRef::U32(n) => Value::from(n),
        ReflectValueRef::U64(n) => Value::from(n),
        ReflectValueRef::I32(n) => Value::from(n),
        ReflectValueRef::I64(n) => Value::from(n),
        ReflectValueRef::F32(n) => serde_json::to_value(n).unwrap_or(Value::Null),
        ReflectValueRef::F64(n) => serde_json::to_value(n).unwrap_or(Value::Null),
        ReflectValueRef::Bool(b) => Value::Bool(b),
        ReflectValueRef::String(s) => Value::String(s.to_owned()),
        ReflectValueRef::Bytes(b) => Value::Array(b.iter().map(|&x| Value::from(x)).collect()),
        ReflectValueRef::Enum(_, n) => Value::from(n),
        ReflectValueRef::Message(m) => message_to_json(&*m, shape),
    }
}

/// serde_json writes map keys as strings: integers in decimal, bools as words.
fn map_key_to_string(k: &ReflectValueRef<'_>) -> String {
    match k {
        ReflectValueRef::String(s) => (*s).to_owned(),
        ReflectValueRef::U32(n) => n.to_string(),
        ReflectValueRef::U64(n) => n.to_string(),
        ReflectValueRef::I32(n) => n.to_string(),
        ReflectValueRef::I64(n) => n.to_string(),
        ReflectValueRef::Bool(b) => b.to_string(),
        // protobuf allows no other key types; keep a deterministic text anyway.
        other => format!("{other:?}"),
    }
}

/// Key of the symlink target in a CopyFile input. (No CopyFile was recorded
/// by the [`InputShape::LegacyStreamPorts`] agent; it is taken to be as in
/// [`InputShape::Legacy`].)
pub(crate) fn copy_file_link_key(shape: InputShape) -> &'static str {
    match shape {
        InputShape::Current => "symlink_target",
        InputShape::Legacy | InputShape::LegacyStreamPorts => "symlink_src",
    }
}

fn copy_file_to_json(req: &CopyFileRequest, shape: InputShape) -> Result<Value, Refused> {
    let is_link = req.file_mode & S_IFMT == S_IFLNK;
    let link = match shape {
        // kata's PolicyCopyFileRequest: an Option<String>, None unless a symlink;
        // a target that is not UTF-8 fails its conversion, before the policy runs.
        InputShape::Current if is_link => match std::str::from_utf8(&req.data) {
            Ok(target) => Value::String(target.to_owned()),
            Err(e) => return Err(Refused::SymlinkNotUtf8(e)),
        },
        InputShape::Current => Value::Null,
        // The older agents' symlink_src: a string, "" unless a symlink.
        InputShape::Legacy | InputShape::LegacyStreamPorts if is_link => {
            Value::String(String::from_utf8_lossy(&req.data).into_owned())
        }
        InputShape::Legacy | InputShape::LegacyStreamPorts => Value::String(String::new()),
    };
    let mut out = Map::new();
    out.insert("path".into(), Value::String(req.path.clone()));
    if shape == InputShape::Current {
        out.insert(
            "file_type".into(),
            Value::String(copy_file_type(req.file_mode).into()),
        );
    }
    out.insert("file_size".into(), Value::from(req.file_size));
    out.insert("file_mode".into(), Value::from(req.file_mode));
    out.insert("dir_mode".into(), Value::from(req.dir_mode));
    out.insert("uid".into(), Value::from(req.uid));
    out.insert("gid".into(), Value::from(req.gid));
    out.insert("offset".into(), Value::from(req.offset));
    out.insert(copy_file_link_key(shape).into(), link);
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode::{from_policy_input, json_to_message, json_to_value};
    use crate::wire::protocols::{agent, oci, types};
    use protobuf::reflect::ReflectValueBox;
    use protobuf::MessageFull;
    use serde_json::json;

    fn input(m: &dyn MessageDyn, shape: InputShape) -> Value {
        to_policy_input(m, shape).unwrap()
    }

    fn current<M: MessageFull>(m: &M) -> Value {
        input(m, InputShape::Current)
    }

    /// JSON → message → bytes → message → JSON gives the same JSON back.
    fn round_trip<M: MessageFull>(v: &Value, shape: InputShape) {
        let desc = M::descriptor();
        let msg = from_policy_input(&desc, v, shape).expect("from_policy_input");
        let bytes = msg.write_to_bytes_dyn().expect("encode");
        let back = decode_request(&desc, &bytes).expect("decode");
        assert_eq!(&input(&*back, shape), v);
    }

    #[test]
    fn rust_keywords_are_sorted_for_binary_search() {
        assert!(RUST_KEYWORDS.windows(2).all(|w| w[0] < w[1]));
        for k in RUST_KEYWORDS {
            assert_eq!(rust_ident(k), format!("{k}_"));
        }
        for name in ["type_", "types", "Type", "container_id", ""] {
            assert_eq!(rust_ident(name), name);
        }
    }

    #[test]
    fn field_names_are_spelled_as_in_the_proto() {
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = "c".into();
        let mut spec = oci::Spec::new();
        let mut process = oci::Process::new();
        process.Args = vec!["/pause".into()];
        spec.Process = Some(process).into();
        req.OCI = Some(spec).into();
        let v = current(&req);
        assert_eq!(v["container_id"], "c");
        assert_eq!(v["OCI"]["Process"]["Args"], json!(["/pause"]));
        let mut iface = types::Interface::new();
        iface.hwAddr = "aa:bb".into();
        iface.raw_flags = 7;
        let v = current(&iface);
        assert_eq!(v["hwAddr"], "aa:bb");
        assert_eq!(v["raw_flags"], 7);
        assert_eq!(v["devicePath"], "");
        assert_eq!(v["IPAddresses"], json!([]));
    }

    #[test]
    fn rust_keyword_field_names_get_a_trailing_underscore() {
        let mut iface = types::Interface::new();
        iface.type_ = "veth".into();
        let v = current(&iface);
        assert_eq!(v["type_"], "veth");
        assert!(v.get("type").is_none());
        let mut mount = oci::Mount::new();
        mount.type_ = "bind".into();
        assert_eq!(current(&mount)["type_"], "bind");
        assert_eq!(rust_ident("type"), "type_");
        assert_eq!(rust_ident("try"), "try_");
        assert_eq!(rust_ident("Self"), "Self_");
        assert_eq!(rust_ident("types"), "types");
        round_trip::<types::Interface>(&v, InputShape::Current);
    }

    #[test]
    fn every_field_is_present_with_proto3_zero_values() {
        let v = current(&agent::CreateContainerRequest::new());
        assert_eq!(
            v,
            json!({
                "container_id": "", "exec_id": "", "string_user": null, "devices": [], "storages": [],
                "OCI": null, "sandbox_pidns": false, "shared_mounts": [],
                "stdin_port": 0, "stdout_port": 0, "stderr_port": 0
            })
        );
        let v = current(&oci::Spec::new());
        assert_eq!(v["Annotations"], json!({}));
        assert_eq!(v["Version"], "");
        assert_eq!(v.as_object().map(|o| o.len()), Some(10));
        round_trip::<oci::Spec>(&v, InputShape::Current);
    }

    #[test]
    fn unset_message_is_null_and_set_message_is_object() {
        let mut req = agent::CreateContainerRequest::new();
        assert_eq!(current(&req)["OCI"], Value::Null);
        req.OCI = Some(oci::Spec::new()).into();
        let v = current(&req);
        assert!(v["OCI"].is_object());
        assert_eq!(v["OCI"]["Process"], Value::Null);
        round_trip::<agent::CreateContainerRequest>(&v, InputShape::Current);
        let back = from_policy_input(
            &agent::CreateContainerRequest::descriptor(),
            &v,
            InputShape::Current,
        )
        .unwrap();
        let back = back
            .downcast_ref::<agent::CreateContainerRequest>()
            .unwrap();
        assert!(back.OCI.is_some());
        assert!(back.OCI.Process.is_none());
    }

    #[test]
    fn proto3_optional_scalars_are_null_when_unset() {
        let mut cfg = agent::MemAgentMemcgConfig::new();
        cfg.swap = Some(false);
        cfg.period_secs = Some(u64::MAX);
        let v = current(&cfg);
        assert_eq!(
            v,
            json!({
                "disabled": null, "swap": false, "swappiness_max": null, "period_secs": u64::MAX,
                "period_psi_percent_limit": null, "eviction_psi_percent_limit": null,
                "eviction_run_aging_count_min": null
            })
        );
        round_trip::<agent::MemAgentMemcgConfig>(&v, InputShape::Current);
        let back = from_policy_input(
            &agent::MemAgentMemcgConfig::descriptor(),
            &v,
            InputShape::Current,
        )
        .unwrap();
        let back = back.downcast_ref::<agent::MemAgentMemcgConfig>().unwrap();
        assert_eq!(back.swap, Some(false));
        assert_eq!(back.disabled, None);
    }

    #[test]
    fn enums_are_integers() {
        let mut addr = types::IPAddress::new();
        addr.family = types::IPFamily::v6.into();
        let v = current(&addr);
        assert_eq!(v["family"], 1);
        round_trip::<types::IPAddress>(&v, InputShape::Current);
        let bad = json!({"family": "v6"});
        assert!(
            from_policy_input(&types::IPAddress::descriptor(), &bad, InputShape::Current).is_err()
        );
    }

    #[test]
    fn sixty_four_bit_integers_are_exact_numbers() {
        let mut cpu = oci::LinuxCPU::new();
        cpu.Shares = u64::MAX;
        cpu.Quota = i64::MIN;
        cpu.Period = (1 << 53) + 1;
        let v = current(&cpu);
        assert_eq!(v["Shares"].as_u64(), Some(u64::MAX));
        assert_eq!(v["Quota"].as_i64(), Some(i64::MIN));
        assert_eq!(v["Period"].as_u64(), Some((1 << 53) + 1));
        assert_eq!(
            serde_json::to_string(&v["Shares"]).unwrap(),
            "18446744073709551615"
        );
        round_trip::<oci::LinuxCPU>(&v, InputShape::Current);
    }

    #[test]
    fn bytes_are_arrays_of_numbers() {
        let mut req = agent::WriteStreamRequest::new();
        req.data = vec![0, 1, 255];
        let v = current(&req);
        assert_eq!(v["data"], json!([0, 1, 255]));
        round_trip::<agent::WriteStreamRequest>(&v, InputShape::Current);
        assert_eq!(
            current(&agent::WriteStreamRequest::new())["data"],
            json!([])
        );
        let bad = json!({"data": [256]});
        let err = from_policy_input(
            &agent::WriteStreamRequest::descriptor(),
            &bad,
            InputShape::Current,
        )
        .unwrap_err();
        assert!(err.0.contains("data[0]"), "{err}");
    }

    #[test]
    fn maps_are_objects_keyed_by_strings() {
        let mut spec = oci::Spec::new();
        spec.Annotations
            .insert("io.kubernetes.cri.container-type".into(), "sandbox".into());
        spec.Annotations.insert("b".into(), "".into());
        let v = current(&spec);
        assert_eq!(
            v["Annotations"],
            json!({"io.kubernetes.cri.container-type": "sandbox", "b": ""})
        );
        round_trip::<oci::Spec>(&v, InputShape::Current);
        let mut stats = agent::MemoryStats::new();
        stats.stats.insert("rss".into(), u64::MAX);
        let v = current(&stats);
        assert_eq!(v["stats"], json!({"rss": u64::MAX}));
        round_trip::<agent::MemoryStats>(&v, InputShape::Current);
    }

    #[test]
    fn oneof_is_one_externally_tagged_key() {
        let mut sc = oci::LinuxSyscall::new();
        sc.Names = vec!["read".into()];
        let v = current(&sc);
        assert_eq!(v["ErrnoRet"], Value::Null);
        assert!(v.get("errnoret").is_none());
        sc.set_errnoret(5);
        let v = current(&sc);
        assert_eq!(
            v,
            json!({"Names": ["read"], "Action": "", "ErrnoRet": {"Errnoret": 5}, "Args": []})
        );
        round_trip::<oci::LinuxSyscall>(&v, InputShape::Current);
        // A zero value is still "set" for a oneof member.
        sc.set_errnoret(0);
        assert_eq!(current(&sc)["ErrnoRet"], json!({"Errnoret": 0}));
        let desc = oci::LinuxSyscall::descriptor();
        let err = from_policy_input(
            &desc,
            &json!({"ErrnoRet": {"errnoret": 5}}),
            InputShape::Current,
        )
        .unwrap_err();
        assert!(err.0.contains("Errnoret"), "{err}");
        assert!(from_policy_input(&desc, &json!({"errnoret": 5}), InputShape::Current).is_err());
        assert!(from_policy_input(&desc, &json!({"ErrnoRet": 5}), InputShape::Current).is_err());
        assert_eq!(oneof_variant_name("errnoret"), "Errnoret");
        assert_eq!(oneof_variant_name("pci_path_x"), "PciPathX");
        assert_eq!(oneof_variant_name("self"), "Self_");
    }

    #[test]
    fn floats_are_numbers() {
        // No message in protos/ has a float field; check the value conversion.
        assert_eq!(
            value_to_json(ReflectValueRef::F64(1.5), InputShape::Current),
            json!(1.5)
        );
        assert_eq!(
            value_to_json(ReflectValueRef::F32(0.25), InputShape::Current),
            json!(0.25)
        );
        assert_eq!(
            value_to_json(ReflectValueRef::F64(f64::NAN), InputShape::Current),
            Value::Null
        );
        let b = json_to_value(&RuntimeType::F64, &json!(2), InputShape::Current, "x", 0).unwrap();
        assert!(matches!(b, ReflectValueBox::F64(x) if x == 2.0));
    }

    fn copy_file(mode: u32, data: &[u8]) -> agent::CopyFileRequest {
        let mut req = agent::CopyFileRequest::new();
        req.path = "/run/kata-containers/shared/containers/x".into();
        req.file_size = data.len() as i64;
        req.file_mode = mode;
        req.dir_mode = 0o750;
        req.uid = -1;
        req.gid = 7;
        req.offset = 4096;
        req.data = data.to_vec();
        req
    }

    #[test]
    fn copy_file_current_shape_summarises_the_file() {
        for (mode, data, file_type, target) in [
            (0o100644, &b"file contents"[..], "Regular", Value::Null),
            (0o040755, &b""[..], "Directory", Value::Null),
            (0o120777, &b"../target"[..], "Symlink", json!("../target")),
            (0o120777, &b""[..], "Symlink", json!("")),
            (0o010644, &b"fifo?"[..], "Unknown", Value::Null),
        ] {
            let req = copy_file(mode, data);
            let v = current(&req);
            assert_eq!(
                v,
                json!({
                    "path": req.path, "file_type": file_type, "symlink_target": target,
                    "file_size": data.len(), "file_mode": mode, "dir_mode": 0o750,
                    "uid": -1, "gid": 7, "offset": 4096
                })
            );
            round_trip::<agent::CopyFileRequest>(&v, InputShape::Current);
        }
    }

    #[test]
    fn copy_file_symlink_target_not_utf8_has_no_current_input() {
        let req = copy_file(0o120777, &[b'a', 0xff]);
        let err = to_policy_input(&req, InputShape::Current).unwrap_err();
        assert!(
            matches!(err, Refused::SymlinkNotUtf8(_))
                && err.to_string().contains("CopyFileRequest")
                && err.to_string().contains("not valid UTF-8"),
            "{err}"
        );
        // Not a symlink: the data is never looked at.
        assert!(to_policy_input(&copy_file(0o100644, &[0xff]), InputShape::Current).is_ok());
        // The older agents' shape keeps its lossy symlink_src.
        assert_eq!(input(&req, InputShape::Legacy)["symlink_src"], "a\u{fffd}");
    }

    #[test]
    fn copy_file_legacy_shape_has_symlink_src() {
        for (mode, data, src) in [
            (0o100644, &b"file contents"[..], ""),
            (0o040755, &b""[..], ""),
            (0o120777, &b"/etc/target"[..], "/etc/target"),
            (0o060600, &b""[..], ""),
        ] {
            let req = copy_file(mode, data);
            let v = input(&req, InputShape::Legacy);
            assert_eq!(
                v,
                json!({
                    "path": req.path, "file_size": data.len(), "file_mode": mode, "dir_mode": 0o750,
                    "uid": -1, "gid": 7, "offset": 4096, "symlink_src": src
                })
            );
            round_trip::<agent::CopyFileRequest>(&v, InputShape::Legacy);
        }
    }

    #[test]
    fn copy_file_input_rejects_inconsistent_or_foreign_keys() {
        let desc = agent::CopyFileRequest::descriptor();
        let cur = InputShape::Current;
        let leg = InputShape::Legacy;
        let ok = from_policy_input(
            &desc,
            &json!({"file_mode": 0o120777, "symlink_target": "x"}),
            cur,
        )
        .unwrap();
        assert_eq!(
            ok.downcast_ref::<agent::CopyFileRequest>().unwrap().data,
            b"x"
        );
        assert!(from_policy_input(
            &desc,
            &json!({"file_mode": 0o100644, "file_type": "Symlink"}),
            cur
        )
        .is_err());
        assert!(from_policy_input(
            &desc,
            &json!({"file_mode": 0o100644, "symlink_target": "x"}),
            cur
        )
        .is_err());
        assert!(from_policy_input(
            &desc,
            &json!({"file_mode": 0o120777, "symlink_target": null}),
            cur
        )
        .is_err());
        let regular = json!({"file_mode": 0o100644, "symlink_target": null});
        assert!(from_policy_input(&desc, &regular, cur).is_ok());
        assert!(from_policy_input(&desc, &json!({"symlink_target": null}), leg).is_err());
        assert!(from_policy_input(&desc, &json!({"symlink_src": null}), leg).is_err());
        assert!(from_policy_input(&desc, &json!({"symlink_src": ""}), cur).is_err());
        assert!(from_policy_input(&desc, &json!({"file_type": "Regular"}), leg).is_err());
        assert!(from_policy_input(&desc, &json!({"data": []}), cur).is_err());
        assert!(from_policy_input(&desc, &json!({"uid": 1u64 << 40}), cur).is_err());
    }

    #[test]
    fn legacy_shape_renames_and_omits_fields() {
        let mut iface = types::Interface::new();
        iface.devicePath = "0000:00:02.0".into();
        let v = input(&iface, InputShape::Legacy);
        assert_eq!(v["pciPath"], "0000:00:02.0");
        assert!(v.get("devicePath").is_none());
        round_trip::<types::Interface>(&v, InputShape::Legacy);
        let desc = types::Interface::descriptor();
        let err =
            from_policy_input(&desc, &json!({"devicePath": ""}), InputShape::Legacy).unwrap_err();
        assert!(
            err.0.contains("types.Interface") && err.0.contains("devicePath"),
            "{err}"
        );
        assert!(from_policy_input(&desc, &json!({"pciPath": ""}), InputShape::Current).is_err());

        let v = input(&agent::Storage::new(), InputShape::Legacy);
        assert!(v.get("shared").is_none());
        assert!(v.get("fs_group").is_some());
        let v = input(&types::Route::new(), InputShape::Legacy);
        assert!(v.get("flags").is_none() && v.get("mtu").is_none());
        let v = input(&agent::ExecProcessRequest::new(), InputShape::Legacy);
        assert_eq!(
            v,
            json!({"container_id": "", "exec_id": "", "string_user": null, "process": null})
        );
        let v = input(&agent::CreateContainerRequest::new(), InputShape::Legacy);
        assert!(v.get("stdin_port").is_none() && v.get("stderr_port").is_none());
        assert!(v.get("shared_mounts").is_some());

        // The later legacy agent already had the stream ports, nothing else changed.
        let later = InputShape::LegacyStreamPorts;
        let v = input(&agent::CreateContainerRequest::new(), later);
        assert_eq!(v["stdin_port"], 0);
        assert!(input(&agent::ExecProcessRequest::new(), later)
            .get("stdout_port")
            .is_some());
        assert_eq!(input(&iface, later)["pciPath"], "0000:00:02.0");
        assert!(input(&agent::Storage::new(), later).get("shared").is_none());
        let req = copy_file(0o120777, b"t");
        assert_eq!(input(&req, later), input(&req, InputShape::Legacy));
        let ports = json!({"stdin_port": 3});
        let ccr = agent::CreateContainerRequest::descriptor();
        assert!(from_policy_input(&ccr, &ports, later).is_ok());
        let err = from_policy_input(&ccr, &ports, InputShape::Legacy).unwrap_err();
        assert!(
            err.0.contains("`stdin_port`") && err.0.contains("legacy"),
            "{err}"
        );

        // Every table entry names a real field.
        for d in LEGACY_FIELDS {
            let found = [
                agent::file_descriptor(),
                types::file_descriptor(),
                oci::file_descriptor(),
            ]
            .iter()
            .filter_map(|f| f.message_by_full_name(&format!(".{}", d.message)))
            .any(|m| m.field_by_number(d.number).is_some());
            assert!(found, "{d:?}");
        }
    }

    #[test]
    fn unknown_keys_and_type_mismatches_are_clear_errors() {
        let desc = agent::CreateContainerRequest::descriptor();
        let err = from_policy_input(&desc, &json!({"container_idx": ""}), InputShape::Current)
            .unwrap_err();
        assert!(
            err.0.contains("grpc.CreateContainerRequest") && err.0.contains("`container_idx`"),
            "{err}"
        );
        let err = from_policy_input(
            &desc,
            &json!({"OCI": {"Process": {"Args": [1]}}}),
            InputShape::Current,
        )
        .unwrap_err();
        assert!(
            err.0.contains("OCI.Process.Args[0]") && err.0.contains("string"),
            "{err}"
        );
        for bad in [
            json!([]),
            json!(null),
            json!({"container_id": null}),
            json!({"stdin_port": -1}),
            json!({"stdin_port": 1.5}),
            json!({"stdin_port": 1u64 << 32}),
            json!({"storages": {}}),
            json!({"storages": [null]}),
            json!({"OCI": []}),
            json!({"OCI": {"Annotations": {"a": 1}}}),
            json!({"sandbox_pidns": "true"}),
        ] {
            assert!(
                from_policy_input(&desc, &bad, InputShape::Current).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn deep_nesting_and_garbage_payloads_do_not_panic() {
        // No message in protos/ is recursive, so probe the limit directly.
        let desc = oci::Spec::descriptor();
        let v = json!({"Process": {}});
        assert!(json_to_message(&desc, &v, InputShape::Current, "x", MAX_DEPTH - 1).is_ok());
        let err = json_to_message(&desc, &v, InputShape::Current, "x", MAX_DEPTH).unwrap_err();
        assert!(err.0.contains("deeper"), "{err}");
        let entry = oci::Spec::descriptor()
            .nested_messages()
            .find(|m| m.is_map_entry())
            .unwrap();
        let err = decode_request(&entry, &[]).unwrap_err();
        assert!(matches!(err, DecodeError::MapEntry { .. }), "{err:?}");
        assert!(
            err.to_string().ends_with("is a map entry, not a request"),
            "{err}"
        );
        let err = decode_request(
            &agent::CreateContainerRequest::descriptor(),
            &[0xff, 0xff, 0xff],
        )
        .unwrap_err();
        assert!(matches!(err, DecodeError::Malformed { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("cannot decode grpc.CreateContainerRequest: "),
            "{err}"
        );
        assert!(from_policy_input(&entry, &json!({}), InputShape::Current).is_err());
        for payload in [
            &[0xff_u8, 0xff, 0xff][..],
            &[0x0a, 0x05, b'a'],
            &[0x32, 0x80],
        ] {
            if let Ok(m) = decode_request(&agent::CreateContainerRequest::descriptor(), payload) {
                let _ = to_policy_input(&*m, InputShape::Current);
            }
        }
    }

    #[test]
    fn input_shape_serde_is_kebab_case_and_defaults_to_current() {
        assert_eq!(InputShape::default(), InputShape::Current);
        assert_eq!(
            serde_json::to_value(InputShape::Legacy).unwrap(),
            json!("legacy")
        );
        assert_eq!(
            serde_json::from_value::<InputShape>(json!("current")).unwrap(),
            InputShape::Current
        );
        for shape in InputShape::ALL {
            assert_eq!(serde_json::to_value(shape).unwrap(), json!(shape.name()));
            assert_eq!(
                serde_json::from_value::<InputShape>(json!(shape.name())).unwrap(),
                shape
            );
        }
        assert_eq!(InputShape::LegacyStreamPorts.name(), "legacy-stream-ports");
    }

    /// Small deterministic generator for the property test below.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
            xs[self.below(xs.len() as u64) as usize]
        }
    }

    fn random_value(rt: &RuntimeType, rng: &mut Rng, depth: usize) -> Option<ReflectValueBox> {
        Some(match rt {
            RuntimeType::I32 => {
                ReflectValueBox::I32(rng.pick(&[0, 1, -1, i32::MIN, i32::MAX, 4242]))
            }
            RuntimeType::I64 => {
                ReflectValueBox::I64(rng.pick(&[0, -1, i64::MIN, i64::MAX, 1 << 60]))
            }
            RuntimeType::U32 => ReflectValueBox::U32(rng.pick(&[0, 1, u32::MAX, 0o120777])),
            RuntimeType::U64 => ReflectValueBox::U64(rng.pick(&[0, 1, u64::MAX, (1 << 53) + 1])),
            RuntimeType::F32 => ReflectValueBox::F32(rng.pick(&[0.0, -1.5, 3.25])),
            RuntimeType::F64 => ReflectValueBox::F64(rng.pick(&[0.0, -1.5, 1e300])),
            RuntimeType::Bool => ReflectValueBox::Bool(rng.below(2) == 1),
            RuntimeType::String => ReflectValueBox::String(
                rng.pick(&["", "a", "type", "ü\u{0}\"\\", "/run/x"])
                    .to_owned(),
            ),
            RuntimeType::VecU8 => {
                ReflectValueBox::Bytes(rng.pick(&[&b""[..], b"\0\xff", b"abc"]).to_vec())
            }
            RuntimeType::Enum(e) => ReflectValueBox::Enum(e.clone(), rng.pick(&[0, 1, 2, 77, -3])),
            RuntimeType::Message(m) => {
                if depth > 3 {
                    return None;
                }
                ReflectValueBox::Message(random_message(m, rng, depth + 1))
            }
        })
    }

    fn random_message(
        desc: &MessageDescriptor,
        rng: &mut Rng,
        depth: usize,
    ) -> Box<dyn MessageDyn> {
        let mut msg = desc.new_instance();
        for field in desc.fields() {
            if rng.below(3) == 0 {
                continue;
            }
            match field.runtime_field_type() {
                RuntimeFieldType::Singular(rt) => {
                    if let Some(v) = random_value(&rt, rng, depth) {
                        field.set_singular_field(&mut *msg, v);
                    }
                }
                RuntimeFieldType::Repeated(rt) => {
                    for _ in 0..rng.below(3) {
                        if let Some(v) = random_value(&rt, rng, depth) {
                            field.mut_repeated(&mut *msg).push(v);
                        }
                    }
                }
                RuntimeFieldType::Map(kt, vt) => {
                    for _ in 0..rng.below(3) {
                        if let (Some(k), Some(v)) =
                            (random_value(&kt, rng, depth), random_value(&vt, rng, depth))
                        {
                            field.mut_map(&mut *msg).insert(k, v);
                        }
                    }
                }
            }
        }
        msg
    }

    #[test]
    fn random_messages_of_every_type_round_trip_through_every_shape() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let files = [
            agent::file_descriptor(),
            oci::file_descriptor(),
            types::file_descriptor(),
            crate::wire::protocols::csi::file_descriptor(),
        ];
        let mut count = 0;
        for file in files {
            for desc in file.messages().flat_map(|m| {
                let mut all = vec![m.clone()];
                all.extend(m.nested_messages());
                all
            }) {
                if desc.is_map_entry() {
                    continue;
                }
                for _ in 0..40 {
                    let msg = random_message(&desc, &mut rng, 0);
                    let bytes = msg.write_to_bytes_dyn().unwrap();
                    let msg = decode_request(&desc, &bytes).unwrap();
                    for shape in InputShape::ALL {
                        let Ok(v) = to_policy_input(&*msg, shape) else {
                            // Only a CopyFile symlink whose target is not UTF-8.
                            assert_eq!(desc.full_name(), COPY_FILE_REQUEST);
                            assert_eq!(shape, InputShape::Current);
                            continue;
                        };
                        let back = from_policy_input(&desc, &v, shape)
                            .unwrap_or_else(|e| panic!("{} {shape:?}: {e}\n{v}", desc.full_name()));
                        assert_eq!(input(&*back, shape), v, "{}", desc.full_name());
                        if shape == InputShape::Current && desc.full_name() != COPY_FILE_REQUEST {
                            assert!(
                                desc.eq(&*msg, &*back),
                                "{} lost information:\n{v}",
                                desc.full_name()
                            );
                        }
                    }
                    count += 1;
                }
            }
        }
        assert!(count > 1000, "{count}");
    }
}
