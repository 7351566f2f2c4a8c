//! Protobuf request ⇄ the JSON that kata-agent hands to its policy engine.
//! (Placeholder signatures; the implementation is being written.)
use protobuf::reflect::MessageDescriptor;
use protobuf::MessageDyn;
use serde_json::Value;

/// Which kata-agent version's input shape to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputShape {
    /// Current kata-agent (protos/ as they are; CopyFile with file_type/symlink_target).
    #[default]
    Current,
    /// Older kata-agent, as recorded in the genpolicy peer data.
    Legacy,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

pub fn decode_request(desc: &MessageDescriptor, payload: &[u8]) -> Result<Box<dyn MessageDyn>, CodecError> {
    desc.parse_from_bytes(payload).map_err(|e| CodecError(e.to_string()))
}

pub fn to_policy_input(_msg: &dyn MessageDyn, _shape: InputShape) -> Value {
    Value::Null
}

pub fn from_policy_input(_desc: &MessageDescriptor, _input: &Value, _shape: InputShape) -> Result<Box<dyn MessageDyn>, CodecError> {
    Err(CodecError("not yet".into()))
}
