//! The ttrpc envelope decoders (`envelope::decode_request`, `decode_response`) on
//! arbitrary bytes. Whatever decodes must encode and decode to the same message, and
//! the response helpers must produce frames that decode to what they were given.
#![no_main]

use agent_warden::wire::envelope::{self, Code};
use agent_warden::wire::frame::TYPE_RESPONSE;
use libfuzzer_sys::fuzz_target;
use protobuf::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = envelope::decode_request(data) {
        let again = req.write_to_bytes().expect("re-encode request");
        let back = envelope::decode_request(&again).expect("re-encoded request decodes");
        assert_eq!(back, req);
        // What the relay does with a request it cannot place.
        let _ = agent_warden::wire::methods::table().lookup(&req.service, &req.method);
    }
    if let Ok(resp) = envelope::decode_response(data) {
        let code = envelope::status_code(&resp);
        let f = envelope::response_frame(5, &resp);
        assert_eq!(f.header.kind, TYPE_RESPONSE);
        assert_eq!(f.header.stream_id, 5);
        assert_eq!(f.body().len(), f.header.length as usize);
        let back = envelope::decode_response(f.body()).expect("response frame decodes");
        assert_eq!(back, resp);
        assert_eq!(envelope::status_code(&back), code);
        // The agent's answer with its data blanked, as the relay does for a denied
        // ReadStdout/ReadStderr.
        let mut blank = resp.clone();
        blank.payload = Vec::new();
        let b = envelope::decode_response(envelope::response_frame(5, &blank).body())
            .expect("blanked response decodes");
        assert!(b.payload.is_empty());
        assert_eq!(envelope::status_code(&b), code);
    }
    // Error replies carry host-influenced text (service/method names).
    let msg = String::from_utf8_lossy(data);
    let f = envelope::error_frame(7, Code::INVALID_ARGUMENT, msg.as_ref());
    let r = envelope::decode_response(f.body()).expect("error frame decodes");
    assert_eq!(envelope::status_code(&r), Code::INVALID_ARGUMENT as i32);
    assert_eq!(r.status.message, msg);
    let ok = envelope::decode_response(envelope::ok_frame(9, data).body()).expect("ok frame decodes");
    assert_eq!(envelope::status_code(&ok), 0);
    assert_eq!(ok.payload, data);
});
