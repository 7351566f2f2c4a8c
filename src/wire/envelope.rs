//! The ttrpc envelope inside a frame body: `Request {service, method, payload,
//! timeout_nano, metadata}` and `Response {status, payload}`: request frames (as the
//! host builds them: tools, tests, benches, fuzzing), and the responses agent-warden
//! sends in the agent's place.

use protobuf::{EnumOrUnknown, Message, MessageField};
pub use ttrpc::proto::{Code, Request, Response, Status};

use crate::wire::frame::{Frame, TYPE_REQUEST, TYPE_RESPONSE};

/// A frame body that is not a ttrpc envelope. The text is what the host is told.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("malformed ttrpc request envelope: {0}")]
    Request(#[source] protobuf::Error),
    #[error("malformed ttrpc response envelope: {0}")]
    Response(#[source] protobuf::Error),
}

/// A request for `service`/`method` carrying `payload`, as the host's ttrpc client
/// sends it (no timeout, no metadata: set them with `Request { timeout_nano, ..request(…) }`).
pub fn request(service: &str, method: &str, payload: Vec<u8>) -> Request {
    Request {
        service: service.to_string(),
        method: method.to_string(),
        payload,
        ..Default::default()
    }
}

/// Encodes a request frame for `stream_id` with frame `flags` (0 for a unary call).
pub fn request_frame(stream_id: u32, flags: u8, req: &Request) -> Frame {
    // As in `response_frame`: encoding only fails beyond 2 GiB.
    let body = req.write_to_bytes().unwrap_or_default();
    Frame::new(stream_id, TYPE_REQUEST, flags, &body)
}

/// Decodes a request frame's body.
pub fn decode_request(body: &[u8]) -> Result<Request, EnvelopeError> {
    Request::parse_from_bytes(body).map_err(EnvelopeError::Request)
}

/// Decodes a response frame's body.
pub fn decode_response(body: &[u8]) -> Result<Response, EnvelopeError> {
    Response::parse_from_bytes(body).map_err(EnvelopeError::Response)
}

/// The status code of a response (OK when no status is set).
pub fn status_code(resp: &Response) -> i32 {
    resp.status.as_ref().map(|s| s.code.value()).unwrap_or(0)
}

/// Encodes a response frame for `stream_id`.
pub fn response_frame(stream_id: u32, resp: &Response) -> Frame {
    // Encoding an in-memory message only fails on size overflow (> 2 GiB), which a
    // response built from a ≤ 4 MiB frame cannot reach; fall back to an empty body.
    let body = resp.write_to_bytes().unwrap_or_default();
    Frame::new(stream_id, TYPE_RESPONSE, 0, &body)
}

/// A successful response frame carrying `payload`.
pub fn ok_frame(stream_id: u32, payload: &[u8]) -> Frame {
    let status = Status {
        code: EnumOrUnknown::new(Code::OK),
        ..Default::default()
    };
    let resp = Response {
        status: MessageField::some(status),
        payload: payload.to_vec(),
        ..Default::default()
    };
    response_frame(stream_id, &resp)
}

/// An error response frame: status `code` with `message`, no payload.
pub fn error_frame(stream_id: u32, code: Code, message: impl Into<String>) -> Frame {
    let status = Status {
        code: EnumOrUnknown::new(code),
        message: message.into(),
        ..Default::default()
    };
    let resp = Response {
        status: MessageField::some(status),
        ..Default::default()
    };
    response_frame(stream_id, &resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_frame_carries_code_and_message() {
        let f = error_frame(9, Code::PERMISSION_DENIED, "no");
        assert_eq!(f.header.stream_id, 9);
        assert_eq!(f.header.kind, TYPE_RESPONSE);
        let r = decode_response(f.body()).unwrap();
        assert_eq!(status_code(&r), 7);
        assert_eq!(r.status.message, "no");
        assert!(r.payload.is_empty());
    }

    #[test]
    fn request_frame_round_trips() {
        let req = Request {
            timeout_nano: 5,
            ..request("grpc.AgentService", "StartContainer", vec![1, 2])
        };
        let f = request_frame(3, 0, &req);
        assert_eq!(
            (f.header.stream_id, f.header.kind, f.header.flags),
            (3, TYPE_REQUEST, 0)
        );
        assert_eq!(decode_request(f.body()).unwrap(), req);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let e = decode_request(&[0xff, 0xff, 0xff]).unwrap_err();
        assert!(matches!(e, EnvelopeError::Request(_)), "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with("malformed ttrpc request envelope: "),
            "{text}"
        );
        assert!(std::error::Error::source(&e).is_some());
    }
}
