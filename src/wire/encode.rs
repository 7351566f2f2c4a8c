//! The inverse of [`crate::wire::input`]: a policy input (JSON) back to the protobuf
//! request it describes, for the tools (`policy eval --request`), tests and benches.
//!
//! [`from_policy_input`] rejects keys that the message does not have in the requested
//! shape (naming message and key), rejects values of the wrong JSON type, and treats a
//! missing key as the field's default. No function here panics on any input.

use protobuf::reflect::{
    FieldDescriptor, MessageDescriptor, OneofDescriptor, ReflectValueBox, RuntimeFieldType,
    RuntimeType,
};
use protobuf::{MessageDyn, MessageFull};
use serde_json::{Map, Value};

use crate::wire::input::{
    copy_file_link_key, copy_file_type, field_key, is_nullable, oneof_variant_name, rust_ident,
    InputShape, COPY_FILE_REQUEST, MAX_DEPTH,
};
use crate::wire::protocols::agent::CopyFileRequest;

/// A policy input that does not describe a request of the asked type. The text names
/// the message, key or JSON path at fault; it goes to a tool's user, a test or a
/// bench, never to the host.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EncodeError(pub String);

/// Inverse of [`to_policy_input`]: the request `desc` that has this policy
/// input. Unknown keys, wrong JSON types and out-of-range numbers are errors;
/// missing keys leave the field at its default.
pub fn from_policy_input(
    desc: &MessageDescriptor,
    input: &Value,
    shape: InputShape,
) -> Result<Box<dyn MessageDyn>, EncodeError> {
    json_to_message(desc, input, shape, desc.full_name(), 0)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn mismatch(path: &str, expected: &str, found: &Value) -> EncodeError {
    let shown = match found {
        Value::Number(n) => format!("{} ({n})", json_type(found)),
        _ => json_type(found).to_owned(),
    };
    EncodeError(format!("{path}: expected {expected}, found {shown}"))
}

pub(crate) fn json_to_message(
    desc: &MessageDescriptor,
    v: &Value,
    shape: InputShape,
    path: &str,
    depth: usize,
) -> Result<Box<dyn MessageDyn>, EncodeError> {
    if depth > MAX_DEPTH {
        return Err(EncodeError(format!(
            "{path}: messages nested deeper than {MAX_DEPTH}"
        )));
    }
    let obj = v
        .as_object()
        .ok_or_else(|| mismatch(path, &format!("an object ({})", desc.full_name()), v))?;
    if desc.is_map_entry() {
        return Err(EncodeError(format!(
            "{path}: {} is a map entry, not a message",
            desc.full_name()
        )));
    }
    if *desc == CopyFileRequest::descriptor() {
        return Ok(Box::new(copy_file_from_json(obj, shape, path)?));
    }
    let mut msg = desc.new_instance();
    for (key, val) in obj {
        let child = format!("{path}.{key}");
        if let Some(field) = desc
            .fields()
            .filter(|f| f.containing_oneof().is_none())
            .find(|f| field_key(desc.full_name(), f, shape).as_deref() == Some(key.as_str()))
        {
            set_field(&mut *msg, &field, val, shape, &child, depth)?;
        } else if let Some(oneof) = desc.oneofs().find(|o| rust_ident(o.name()) == key.as_str()) {
            set_oneof(&mut *msg, &oneof, val, shape, &child, depth)?;
        } else {
            let shape_name = shape.name();
            return Err(EncodeError(format!(
                "{path}: message {} has no key `{key}` in the {shape_name} input shape",
                desc.full_name()
            )));
        }
    }
    Ok(msg)
}

fn set_field(
    msg: &mut dyn MessageDyn,
    field: &FieldDescriptor,
    val: &Value,
    shape: InputShape,
    path: &str,
    depth: usize,
) -> Result<(), EncodeError> {
    match field.runtime_field_type() {
        RuntimeFieldType::Singular(rt) => {
            if val.is_null() && is_nullable(field, &rt) {
                return Ok(());
            }
            let b = json_to_value(&rt, val, shape, path, depth)?;
            field.set_singular_field(msg, b);
        }
        RuntimeFieldType::Repeated(rt) => {
            let items = val
                .as_array()
                .ok_or_else(|| mismatch(path, "an array", val))?;
            let mut values = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                values.push(json_to_value(
                    &rt,
                    item,
                    shape,
                    &format!("{path}[{i}]"),
                    depth,
                )?);
            }
            let mut repeated = field.mut_repeated(msg);
            for b in values {
                repeated.push(b);
            }
        }
        RuntimeFieldType::Map(kt, vt) => {
            let entries = val
                .as_object()
                .ok_or_else(|| mismatch(path, "an object (map)", val))?;
            let mut values = Vec::with_capacity(entries.len());
            for (k, item) in entries {
                let child = format!("{path}[{k:?}]");
                values.push((
                    map_key_from_str(&kt, k, &child)?,
                    json_to_value(&vt, item, shape, &child, depth)?,
                ));
            }
            let mut map = field.mut_map(msg);
            for (k, b) in values {
                map.insert(k, b);
            }
        }
    }
    Ok(())
}

fn set_oneof(
    msg: &mut dyn MessageDyn,
    oneof: &OneofDescriptor,
    val: &Value,
    shape: InputShape,
    path: &str,
    depth: usize,
) -> Result<(), EncodeError> {
    let variants: Vec<String> = oneof
        .fields()
        .map(|f| oneof_variant_name(f.name()))
        .collect();
    let expected = || format!("null or an object with one key of {}", variants.join(", "));
    let tagged = match val {
        Value::Null => return Ok(()),
        Value::Object(o) if o.len() == 1 => o,
        _ => return Err(mismatch(path, &expected(), val)),
    };
    for (tag, inner) in tagged {
        let Some(field) = oneof
            .fields()
            .find(|f| oneof_variant_name(f.name()) == *tag)
        else {
            return Err(EncodeError(format!(
                "{path}: oneof {} has no variant `{tag}` (expected one of {})",
                oneof.full_name(),
                variants.join(", ")
            )));
        };
        let RuntimeFieldType::Singular(rt) = field.runtime_field_type() else {
            return Err(EncodeError(format!(
                "{path}: oneof member {} is not singular",
                field.full_name()
            )));
        };
        let b = json_to_value(&rt, inner, shape, &format!("{path}.{tag}"), depth)?;
        field.set_singular_field(msg, b);
    }
    Ok(())
}

pub(crate) fn json_to_value(
    rt: &RuntimeType,
    v: &Value,
    shape: InputShape,
    path: &str,
    depth: usize,
) -> Result<ReflectValueBox, EncodeError> {
    Ok(match rt {
        RuntimeType::I32 => ReflectValueBox::I32(int(v, path, "an i32")?),
        RuntimeType::I64 => ReflectValueBox::I64(int(v, path, "an i64")?),
        RuntimeType::U32 => ReflectValueBox::U32(uint(v, path, "a u32")?),
        RuntimeType::U64 => ReflectValueBox::U64(uint(v, path, "a u64")?),
        // serde_json writes a non-finite float as null; read it back as NaN.
        RuntimeType::F32 => ReflectValueBox::F32(float(v, path)? as f32),
        RuntimeType::F64 => ReflectValueBox::F64(float(v, path)?),
        RuntimeType::Bool => {
            ReflectValueBox::Bool(v.as_bool().ok_or_else(|| mismatch(path, "a boolean", v))?)
        }
        RuntimeType::String => ReflectValueBox::String(string(v, path)?.to_owned()),
        RuntimeType::VecU8 => ReflectValueBox::Bytes(bytes(v, path)?),
        RuntimeType::Enum(e) => {
            ReflectValueBox::Enum(e.clone(), int(v, path, "an enum number (i32)")?)
        }
        RuntimeType::Message(m) => {
            ReflectValueBox::Message(json_to_message(m, v, shape, path, depth + 1)?)
        }
    })
}

fn int<T: TryFrom<i64>>(v: &Value, path: &str, what: &str) -> Result<T, EncodeError> {
    v.as_i64()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| mismatch(path, what, v))
}

fn uint<T: TryFrom<u64>>(v: &Value, path: &str, what: &str) -> Result<T, EncodeError> {
    v.as_u64()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| mismatch(path, what, v))
}

fn float(v: &Value, path: &str) -> Result<f64, EncodeError> {
    match v {
        Value::Null => Ok(f64::NAN),
        _ => v.as_f64().ok_or_else(|| mismatch(path, "a number", v)),
    }
}

fn string<'a>(v: &'a Value, path: &str) -> Result<&'a str, EncodeError> {
    v.as_str().ok_or_else(|| mismatch(path, "a string", v))
}

fn bytes(v: &Value, path: &str) -> Result<Vec<u8>, EncodeError> {
    let items = v
        .as_array()
        .ok_or_else(|| mismatch(path, "an array of bytes", v))?;
    items
        .iter()
        .enumerate()
        .map(|(i, x)| uint(x, &format!("{path}[{i}]"), "a byte (0..=255)"))
        .collect()
}

fn map_key_from_str(kt: &RuntimeType, k: &str, path: &str) -> Result<ReflectValueBox, EncodeError> {
    let bad = || EncodeError(format!("{path}: map key {k:?} is not a valid {kt:?}"));
    Ok(match kt {
        RuntimeType::String => ReflectValueBox::String(k.to_owned()),
        RuntimeType::I32 => ReflectValueBox::I32(k.parse().map_err(|_| bad())?),
        RuntimeType::I64 => ReflectValueBox::I64(k.parse().map_err(|_| bad())?),
        RuntimeType::U32 => ReflectValueBox::U32(k.parse().map_err(|_| bad())?),
        RuntimeType::U64 => ReflectValueBox::U64(k.parse().map_err(|_| bad())?),
        RuntimeType::Bool => ReflectValueBox::Bool(k.parse().map_err(|_| bad())?),
        _ => return Err(bad()),
    })
}

fn copy_file_from_json(
    obj: &Map<String, Value>,
    shape: InputShape,
    path: &str,
) -> Result<CopyFileRequest, EncodeError> {
    let link_key = copy_file_link_key(shape);
    let mut req = CopyFileRequest::new();
    let mut file_type: Option<&str> = None;
    let mut link: Option<&str> = None;
    let mut link_null = false;
    for (key, v) in obj {
        let child = format!("{path}.{key}");
        match key.as_str() {
            "path" => req.path = string(v, &child)?.to_owned(),
            "file_size" => req.file_size = int(v, &child, "an i64")?,
            "file_mode" => req.file_mode = uint(v, &child, "a u32")?,
            "dir_mode" => req.dir_mode = uint(v, &child, "a u32")?,
            "uid" => req.uid = int(v, &child, "an i32")?,
            "gid" => req.gid = int(v, &child, "an i32")?,
            "offset" => req.offset = int(v, &child, "an i64")?,
            "file_type" if shape == InputShape::Current => file_type = Some(string(v, &child)?),
            // Current shape: null unless a symlink.
            k if k == link_key && shape == InputShape::Current && v.is_null() => link_null = true,
            k if k == link_key => link = Some(string(v, &child)?),
            _ => {
                return Err(EncodeError(format!(
                    "{path}: message {COPY_FILE_REQUEST} has no key `{key}` in the {} input shape",
                    shape.name()
                )))
            }
        }
    }
    let derived = copy_file_type(req.file_mode);
    if let Some(t) = file_type {
        if t != derived {
            return Err(EncodeError(format!(
                "{path}.file_type: {t:?} contradicts file_mode {:#o} ({derived})",
                req.file_mode
            )));
        }
    }
    match link {
        Some(target) if derived == "Symlink" => req.data = target.as_bytes().to_vec(),
        Some(target) if !target.is_empty() => {
            return Err(EncodeError(format!(
                "{path}.{link_key}: set, but file_mode {:#o} is not a symlink",
                req.file_mode
            )))
        }
        None if link_null && derived == "Symlink" => {
            return Err(EncodeError(format!(
                "{path}.{link_key}: null, but file_mode {:#o} is a symlink",
                req.file_mode
            )))
        }
        _ => {}
    }
    Ok(req)
}
