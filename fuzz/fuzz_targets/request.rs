//! Request payload decoding and policy-input building for every request type.
//!
//! Byte 0 picks a row of the method table (all 44 RPCs; the request type is the
//! row's), the rest is that request's protobuf payload. For every input shape the
//! policy JSON is built, and what `wire::input` and `wire::encode` promise is checked:
//! * the JSON it builds is accepted back by `from_policy_input` in the same shape;
//! * JSON → request → wire bytes → request → JSON gives the same JSON (the round
//!   trip tests/input_roundtrip.rs checks on the recorded requests);
//! * the request rebuilt from the JSON encodes to wire bytes that decode to the
//!   same JSON again (so the policy would decide the rebuilt request the same way).
#![no_main]

use agent_warden::wire::encode;
use agent_warden::wire::input::{self, InputShape};
use agent_warden::wire::methods;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let rows = methods::table().all();
    let m = &rows[pick as usize % rows.len()];
    let desc = &m.request;
    let Ok(msg) = input::decode_request(desc, payload) else {
        return;
    };
    for shape in InputShape::ALL {
        // Only a CopyFile symlink whose target is not UTF-8 has no input (kata refuses it).
        let Ok(json) = input::to_policy_input(&*msg, shape) else {
            assert_eq!(m.request_type, "CopyFileRequest");
            continue;
        };
        // kata-agent hands the input to regorus as a JSON string.
        let text = serde_json::to_string(&json).expect("policy input serialises");
        let reparsed: serde_json::Value = serde_json::from_str(&text).expect("policy input reparses");
        assert_eq!(reparsed, json, "{}: JSON text round trip ({})", m.request_type, shape.name());

        let back = encode::from_policy_input(desc, &json, shape).unwrap_or_else(|e| {
            panic!("{}: own policy input rejected ({}): {e}", m.request_type, shape.name())
        });
        let again = input::to_policy_input(&*back, shape).expect("rebuilt request has an input");
        assert_eq!(again, json, "{}: JSON → request → JSON differs ({})", m.request_type, shape.name());

        let bytes = back.write_to_bytes_dyn().expect("encode rebuilt request");
        let wired = input::decode_request(desc, &bytes).unwrap_or_else(|e| {
            panic!("{}: rebuilt request does not decode ({}): {e}", m.request_type, shape.name())
        });
        assert_eq!(
            input::to_policy_input(&*wired, shape).ok(),
            Some(json),
            "{}: through the wire differs ({})",
            m.request_type,
            shape.name()
        );
    }
});
